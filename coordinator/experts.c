/* Local routed experts: the "all experts in this process" implementation of coord_experts_t.
 * The arithmetic is kern_moe_ffn, the same function expert nodes run, so local and distributed
 * paths differ only in how partial sums across nodes are added. Also the coord_experts_*
 * calls every implementation shares: submit/collect fall back to compute for implementations
 * without their own (this one: the work runs on the caller's thread and pool either way, so
 * there is nothing to overlap it with).
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
    int max_tok;
    kern_expert_t *experts; /* (n_layer, n_expert) views into the model's expert tensors */
    kern_expert_bias_t *bias; /* (n_layer, n_expert) gpt-oss's expert biases, else NULL */
    kern_act_t act;
    void *work;             /* kern_moe_ffn scratch */
    size_t work_size;
} local_t;

static int local_compute(coord_experts_t *ex, int layer, int n_tok, int k, const float *x,
                         const int32_t *ids, const float *w, float *out)
{
    local_t *L = (local_t *)ex;
    const model_hparams_t *hp = &L->m->hp;
    if (layer < 0 || layer >= hp->n_layer || !L->m->layers[layer].gate_exps || n_tok < 0 ||
        n_tok > L->max_tok || k < 1 || k > hp->n_expert_used)
        return -EINVAL;
    for (int i = 0; i < n_tok * k; i++)
        if (ids[i] >= hp->n_expert) return -EINVAL;
    double t0 = ex->trace ? wire_now() : 0;
    const size_t off = (size_t)layer * hp->n_expert;
    kern_moe_ffn_ex(L->pool, L->experts + off, L->bias ? L->bias + off : NULL, L->act,
                    hp->n_expert, hp->n_embd, hp->n_ff_exp, n_tok, k, x, ids, w, out, L->work,
                    L->work_size);
    coord_trace_event(ex->trace, COORD_TRACE_COORD, 0, "local experts", t0, wire_now(), layer,
                      -1, n_tok);
    return 0;
}

static void local_free(coord_experts_t *ex)
{
    local_t *L = (local_t *)ex;
    free(L->experts);
    free(L->bias);
    free(L->work);
    free(L);
}

static const coord_experts_vt_t local_vt = {.compute = local_compute, .free = local_free};

coord_experts_t *coord_experts_local_new(const model_t *m, kern_pool_t *pool, int max_tok)
{
    const model_hparams_t *hp = &m->hp;
    CHECK(max_tok >= 1 && hp->n_expert > 0);
    local_t *L = xcalloc(1, sizeof(*L));
    L->base.vt = &local_vt;
    L->m = m;
    L->pool = pool;
    L->max_tok = max_tok;
    L->experts = xcalloc((size_t)hp->n_layer * hp->n_expert, sizeof(kern_expert_t));
    for (int il = 0; il < hp->n_layer; il++) {
        const model_layer_t *ly = &m->layers[il];
        if (!ly->gate_exps) continue;
        for (int e = 0; e < hp->n_expert; e++) {
            kern_expert_t *x = &L->experts[(size_t)il * hp->n_expert + e];
            x->gate_type = ly->gate_exps->type;
            x->up_type = ly->up_exps->type;
            x->down_type = ly->down_exps->type;
            x->gate = (const uint8_t *)ly->gate_exps->data + model_expert_stride(ly->gate_exps) * e;
            x->up = (const uint8_t *)ly->up_exps->data + model_expert_stride(ly->up_exps) * e;
            x->down = (const uint8_t *)ly->down_exps->data + model_expert_stride(ly->down_exps) * e;
            if (!ly->gate_exps_b) continue;
            /* gpt-oss: row e of each (width, n_expert) bias tensor belongs to expert e. */
            if (!L->bias)
                L->bias = xcalloc((size_t)hp->n_layer * hp->n_expert, sizeof(*L->bias));
            kern_expert_bias_t *b = &L->bias[(size_t)il * hp->n_expert + e];
            b->gate = (const float *)ly->gate_exps_b->data + (size_t)hp->n_ff_exp * e;
            b->up = (const float *)ly->up_exps_b->data + (size_t)hp->n_ff_exp * e;
            b->down = (const float *)ly->down_exps_b->data + (size_t)hp->n_embd * e;
        }
        size_t ws = kern_moe_work_size(&L->experts[(size_t)il * hp->n_expert], hp->n_embd,
                                       hp->n_ff_exp, max_tok, hp->n_expert_used);
        if (ws > L->work_size) L->work_size = ws;
    }
    L->act = hp->arch == MODEL_ARCH_GPTOSS ? KERN_ACT_SWIGLU_OAI : KERN_ACT_SWIGLU;
    L->work = xmalloc_aligned(64, L->work_size);
    return &L->base;
}

void coord_experts_free(coord_experts_t *ex)
{
    if (ex) ex->vt->free(ex);
}

int coord_experts_submit(coord_experts_t *ex, int layer, int mb, int n_tok, int k,
                         const float *x, const int32_t *ids, const float *w, float *out)
{
    CHECK(mb >= 0 && mb < COORD_MICRO_BATCHES_MAX);
    if (ex->vt->submit) return ex->vt->submit(ex, layer, mb, n_tok, k, x, ids, w, out);
    return ex->vt->compute(ex, layer, n_tok, k, x, ids, w, out);
}

int coord_experts_collect(coord_experts_t *ex, int mb)
{
    CHECK(mb >= 0 && mb < COORD_MICRO_BATCHES_MAX);
    return ex->vt->collect ? ex->vt->collect(ex, mb) : 0;
}

bool coord_experts_async(const coord_experts_t *ex)
{
    return ex && ex->vt->submit != NULL;
}

void coord_experts_stats(const coord_experts_t *ex, coord_experts_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    if (ex && ex->vt->stats) ex->vt->stats(ex, out);
}

void coord_experts_set_trace(coord_experts_t *ex, coord_trace_t *tr)
{
    ex->trace = tr;
}
