/* Local routed experts: the "all experts in this process" implementation of coord_experts_t.
 * Tokens are grouped by expert so each expert's three matrices are read once per call and
 * multiplied with all its tokens in one batched product (kern_matmul), then every token's
 * outputs are weighted and summed in top-k order, as llama.cpp's graph does, so the result does
 * not depend on the order experts are visited in.
 */
#include "coordinator/coord.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "wire/wire.h"

typedef struct {
    coord_experts_t base;
    const model_t *m;
    kern_pool_t *pool;
    int max_tok;     /* tokens per call */
    int k_max;       /* top-k of the model */
    float *xg;       /* (max_tok, n_embd) tokens of one expert, gathered */
    float *gate;     /* (max_tok, n_ff_exp) */
    float *up;       /* (max_tok, n_ff_exp) */
    float *y;        /* (max_tok, n_embd) one expert's outputs */
    float *ys;       /* (max_tok, k, n_embd) every selected expert's output per token */
    int32_t *rows;   /* (max_tok * k) (token*k + j) entries grouped by expert */
    int32_t *count;  /* (n_expert + 1) group offsets */
    void *work;      /* kern_matmul scratch */
} local_t;

static int local_compute(coord_experts_t *ex, int layer, int n_tok, int k, const float *x,
                         const int32_t *ids, const float *w, float *out)
{
    local_t *L = (local_t *)ex;
    const model_hparams_t *hp = &L->m->hp;
    if (layer < 0 || layer >= hp->n_layer || n_tok < 0 || n_tok > L->max_tok || k < 1 ||
        k > L->k_max)
        return -EINVAL;
    const model_layer_t *ly = &L->m->layers[layer];
    if (!ly->gate_exps) return -EINVAL;
    const int E = hp->n_expert, D = hp->n_embd, F = hp->n_ff_exp;
    for (int i = 0; i < n_tok * k; i++)
        if (ids[i] < 0 || ids[i] >= E) return -EINVAL;

    /* Counting sort of the (token, j) pairs by expert. */
    memset(L->count, 0, sizeof(int32_t) * (size_t)(E + 1));
    for (int i = 0; i < n_tok * k; i++) L->count[ids[i] + 1]++;
    for (int e = 0; e < E; e++) L->count[e + 1] += L->count[e];
    int32_t *fill = L->count; /* reused as insertion cursor, restored below */
    for (int i = 0; i < n_tok * k; i++) L->rows[fill[ids[i]]++] = i;
    for (int e = E; e > 0; e--) L->count[e] = L->count[e - 1];
    L->count[0] = 0;

    const size_t sg = model_expert_stride(ly->gate_exps), su = model_expert_stride(ly->up_exps);
    const size_t sd = model_expert_stride(ly->down_exps);
    const size_t rg = kern_row_bytes(ly->gate_exps->type, D);
    const size_t ru = kern_row_bytes(ly->up_exps->type, D);
    const size_t rd = kern_row_bytes(ly->down_exps->type, F);
    for (int e = 0; e < E; e++) {
        int c = L->count[e + 1] - L->count[e];
        if (c == 0) continue;
        const int32_t *r = L->rows + L->count[e];
        for (int i = 0; i < c; i++)
            memcpy(L->xg + (size_t)i * D, x + (size_t)(r[i] / k) * D, sizeof(float) * D);
        const uint8_t *g = (const uint8_t *)ly->gate_exps->data + sg * e;
        const uint8_t *u = (const uint8_t *)ly->up_exps->data + su * e;
        const uint8_t *dn = (const uint8_t *)ly->down_exps->data + sd * e;
        kern_matmul(L->pool, L->gate, g, rg, ly->gate_exps->type, L->xg, c, D, F, L->work);
        kern_matmul(L->pool, L->up, u, ru, ly->up_exps->type, L->xg, c, D, F, L->work);
        kern_swiglu(L->gate, L->gate, L->up, (int64_t)c * F);
        kern_matmul(L->pool, L->y, dn, rd, ly->down_exps->type, L->gate, c, F, D, L->work);
        for (int i = 0; i < c; i++)
            memcpy(L->ys + (size_t)r[i] * D, L->y + (size_t)i * D, sizeof(float) * D);
    }
    for (int t = 0; t < n_tok; t++) {
        float *o = out + (size_t)t * D;
        for (int d = 0; d < D; d++) o[d] = 0.0f;
        for (int j = 0; j < k; j++) {
            const float *yj = L->ys + ((size_t)t * k + j) * D;
            const float wj = w[t * k + j];
            for (int d = 0; d < D; d++) o[d] += yj[d] * wj;
        }
    }
    return 0;
}

static void local_free(coord_experts_t *ex)
{
    local_t *L = (local_t *)ex;
    free(L->xg);
    free(L->gate);
    free(L->up);
    free(L->y);
    free(L->ys);
    free(L->rows);
    free(L->count);
    free(L->work);
    free(L);
}

static const coord_experts_vt_t local_vt = {local_compute, local_free};

coord_experts_t *coord_experts_local_new(const model_t *m, kern_pool_t *pool, int max_tok)
{
    const model_hparams_t *hp = &m->hp;
    CHECK(max_tok >= 1 && hp->n_expert > 0);
    local_t *L = xcalloc(1, sizeof(*L));
    L->base.vt = &local_vt;
    L->m = m;
    L->pool = pool;
    L->max_tok = max_tok;
    L->k_max = hp->n_expert_used;
    const size_t D = (size_t)hp->n_embd, F = (size_t)hp->n_ff_exp, T = (size_t)max_tok;
    L->xg = xmalloc(sizeof(float) * T * D);
    L->gate = xmalloc(sizeof(float) * T * F);
    L->up = xmalloc(sizeof(float) * T * F);
    L->y = xmalloc(sizeof(float) * T * D);
    L->ys = xmalloc(sizeof(float) * T * (size_t)L->k_max * D);
    L->rows = xmalloc(sizeof(int32_t) * T * (size_t)L->k_max);
    L->count = xmalloc(sizeof(int32_t) * (size_t)(hp->n_expert + 1));
    size_t ws = 0;
    for (int il = 0; il < hp->n_layer; il++) {
        const model_layer_t *ly = &m->layers[il];
        if (!ly->gate_exps) continue;
        size_t a = kern_matmul_work_size(ly->gate_exps->type, max_tok, hp->n_embd);
        size_t b = kern_matmul_work_size(ly->up_exps->type, max_tok, hp->n_embd);
        size_t c = kern_matmul_work_size(ly->down_exps->type, max_tok, hp->n_ff_exp);
        ws = a > ws ? a : ws;
        ws = b > ws ? b : ws;
        ws = c > ws ? c : ws;
    }
    L->work = xmalloc_aligned(64, ws + 64);
    return &L->base;
}

void coord_experts_free(coord_experts_t *ex)
{
    if (ex) ex->vt->free(ex);
}
