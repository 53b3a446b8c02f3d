/* Grouped expert FFN: the routed-expert step on one machine (see kern.h). Shared by the
 * coordinator's local experts and by expert nodes, so both compute bit-identical results for
 * the same tokens.
 *
 * work layout, each part 64-byte aligned: rows (n_tok*k int32, (token, j) pairs grouped by
 * expert), starts (n_expert+1 int32, group offsets), xg (max_tok, n_embd) gathered inputs,
 * gate and up (max_tok, n_ff), y (max_tok, n_embd) one expert's outputs, ys (max_tok*k, n_embd)
 * every pair's output, then the kern_matmul scratch.
 */
#include <string.h>

#include "kernels/kern.h"
#include "wire/wire.h"

static size_t a64(size_t b) { return (b + 63) & ~(size_t)63; }

static size_t mm_work(const kern_expert_t *t, int n_embd, int n_ff, int max_tok)
{
    size_t a = kern_matmul_work_size(t->gate_type, max_tok, n_embd);
    size_t b = kern_matmul_work_size(t->up_type, max_tok, n_embd);
    size_t c = kern_matmul_work_size(t->down_type, max_tok, n_ff);
    return a > b ? (a > c ? a : c) : (b > c ? b : c);
}

/* Expert count is not known here, so starts is sized for the largest id the caller may use. */
#define MOE_MAX_EXPERTS 4096

size_t kern_moe_work_size(const kern_expert_t *types, int n_embd, int n_ff, int max_tok, int k)
{
    const size_t T = (size_t)max_tok, D = (size_t)n_embd, F = (size_t)n_ff, K = (size_t)k;
    return a64(sizeof(int32_t) * T * K) + a64(sizeof(int32_t) * (MOE_MAX_EXPERTS + 1)) +
           a64(sizeof(float) * T * D) * 2 + a64(sizeof(float) * T * F) * 2 +
           a64(sizeof(float) * T * K * D) + a64(mm_work(types, n_embd, n_ff, max_tok));
}

void kern_moe_ffn(kern_pool_t *pool, const kern_expert_t *experts, int n_expert, int n_embd,
                  int n_ff, int n_tok, int k, const float *x, const int32_t *ids, const float *w,
                  float *out, void *work, size_t work_size)
{
    kern_moe_ffn_ex(pool, experts, NULL, KERN_ACT_SWIGLU, n_expert, n_embd, n_ff, n_tok, k, x,
                    ids, w, out, work, work_size);
}

/* rows (c, n) += b (n), when there is a bias. */
static void add_rows(float *rows, const float *b, int c, size_t n)
{
    if (!b) return;
    for (int i = 0; i < c; i++)
        for (size_t j = 0; j < n; j++) rows[(size_t)i * n + j] += b[j];
}

void kern_moe_ffn_ex(kern_pool_t *pool, const kern_expert_t *experts,
                     const kern_expert_bias_t *bias, kern_act_t act, int n_expert, int n_embd,
                     int n_ff, int n_tok, int k, const float *x, const int32_t *ids,
                     const float *w, float *out, void *work, size_t work_size)
{
    CHECK(n_expert >= 1 && n_expert <= MOE_MAX_EXPERTS && n_tok >= 0 && k >= 1);
    const size_t T = (size_t)n_tok, D = (size_t)n_embd, F = (size_t)n_ff, K = (size_t)k;
    uint8_t *p = work;
    int32_t *rows = (int32_t *)p;
    p += a64(sizeof(int32_t) * T * K);
    int32_t *starts = (int32_t *)p;
    p += a64(sizeof(int32_t) * (MOE_MAX_EXPERTS + 1));
    float *xg = (float *)p;
    p += a64(sizeof(float) * T * D);
    float *y = (float *)p;
    p += a64(sizeof(float) * T * D);
    float *gate = (float *)p;
    p += a64(sizeof(float) * T * F);
    float *up = (float *)p;
    p += a64(sizeof(float) * T * F);
    float *ys = (float *)p;
    p += a64(sizeof(float) * T * K * D);
    CHECK((size_t)(p - (uint8_t *)work) <= work_size);
    void *mmw = p;

    /* Counting sort of the (token, j) pairs by expert; absent pairs (id < 0) are left out. */
    memset(starts, 0, sizeof(int32_t) * (size_t)(n_expert + 1));
    for (size_t i = 0; i < T * K; i++) {
        CHECK(ids[i] < n_expert);
        if (ids[i] >= 0) starts[ids[i] + 1]++;
    }
    for (int e = 0; e < n_expert; e++) starts[e + 1] += starts[e];
    for (size_t i = 0; i < T * K; i++)
        if (ids[i] >= 0) rows[starts[ids[i]]++] = (int32_t)i;
    /* starts[e] now holds the end of group e; shift back to starts. */
    for (int e = n_expert; e > 0; e--) starts[e] = starts[e - 1];
    starts[0] = 0;

    for (int e = 0; e < n_expert; e++) {
        int c = starts[e + 1] - starts[e];
        if (c == 0) continue;
        const kern_expert_t *ex = &experts[e];
        CHECK(ex->gate && ex->up && ex->down);
        const int32_t *r = rows + starts[e];
        for (int i = 0; i < c; i++)
            memcpy(xg + (size_t)i * D, x + (size_t)(r[i] / k) * D, sizeof(float) * D);
        kern_matmul(pool, gate, ex->gate, kern_row_bytes(ex->gate_type, D), ex->gate_type, xg, c,
                    D, F, mmw);
        kern_matmul(pool, up, ex->up, kern_row_bytes(ex->up_type, D), ex->up_type, xg, c, D, F,
                    mmw);
        const kern_expert_bias_t *bb = bias ? &bias[e] : NULL;
        if (bb) {
            add_rows(gate, bb->gate, c, F);
            add_rows(up, bb->up, c, F);
        }
        if (act == KERN_ACT_SWIGLU_OAI)
            kern_swiglu_oai(gate, gate, up, (int64_t)c * F, 1.702f, 7.0f);
        else
            kern_swiglu(gate, gate, up, (int64_t)c * F);
        kern_matmul(pool, y, ex->down, kern_row_bytes(ex->down_type, F), ex->down_type, gate, c,
                    F, D, mmw);
        if (bb) add_rows(y, bb->down, c, D);
        for (int i = 0; i < c; i++)
            memcpy(ys + (size_t)r[i] * D, y + (size_t)i * D, sizeof(float) * D);
    }
    for (size_t t = 0; t < T; t++) {
        float *o = out + t * D;
        memset(o, 0, sizeof(float) * D);
        for (size_t j = 0; j < K; j++) {
            if (ids[t * K + j] < 0) continue;
            const float *yj = ys + (t * K + j) * D;
            const float wj = w[t * K + j];
            for (size_t d = 0; d < D; d++) o[d] += yj[d] * wj;
        }
    }
}
