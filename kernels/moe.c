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

#include <stdatomic.h>

#include "kernels/kern-int.h"
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

/* The one-token path's scratch after ys: the activation rounded for gate and for up (with f32
 * block scales), every expert's gate and up outputs (k, n_ff), and the k hidden vectors rounded
 * for down with their scales. */
static size_t one_work(const kern_expert_t *t, int n_embd, int n_ff, int k)
{
    const size_t D = (size_t)n_embd, F = (size_t)n_ff, K = (size_t)k;
    const kern_type_t gd = kern_type_info(t->gate_type)->dot_type;
    const kern_type_t ud = kern_type_info(t->up_type)->dot_type;
    const kern_type_t dd = kern_type_info(t->down_type)->dot_type;
    return a64(kern_row_bytes(gd, n_embd)) + a64(kern_row_bytes(ud, n_embd)) +
           2 * a64(sizeof(float) * (D / 32)) + 2 * a64(sizeof(float) * K * F) +
           K * a64(kern_row_bytes(dd, n_ff)) + K * a64(sizeof(float) * (F / 32));
}

size_t kern_moe_work_size(const kern_expert_t *types, int n_embd, int n_ff, int max_tok, int k)
{
    const size_t T = (size_t)max_tok, D = (size_t)n_embd, F = (size_t)n_ff, K = (size_t)k;
    const size_t mm = mm_work(types, n_embd, n_ff, max_tok), one = one_work(types, n_embd, n_ff, k);
    return a64(sizeof(int32_t) * T * K) + a64(sizeof(int32_t) * (MOE_MAX_EXPERTS + 1)) +
           a64(sizeof(float) * T * D) * 2 + a64(sizeof(float) * T * F) * 2 +
           a64(sizeof(float) * T * K * D) + a64(mm > one ? mm : one);
}

/* ---- one token (decode): all experts' products in two pool runs ----
 * kern_matmul per matrix would cost 3k pool runs per layer, each ending with threads waiting
 * for the last chunk of a 768-row product. Here every expert's gate and up rows form one run
 * and every down row a second, the activation rounded once per dot type. Each row's dot is the
 * kernel kern_matmul uses for m = 1, so results are bit-identical to the grouped path. */
typedef struct {
    const uint8_t *w;   /* rows of n elements, ws bytes apart */
    size_t ws;
    kern_type_t wt;
    const void *xq;     /* the activation in wt's dot type */
    const float *xd;    /* its f32 block scales (Q8_0 dot type) */
    float *out;
} mv_t;

typedef struct {
    mv_t mv[2 * 256];
    int n_mv;
    int64_t rows, n;    /* rows of each product, elements per row */
    int64_t chunk, per; /* rows per grab, grabs per product */
    atomic_llong next;  /* next grab */
} mv_task_t;

static void mv_cb(void *arg, int ith, int nth)
{
    (void)ith, (void)nth;
    mv_task_t *t = arg;
    for (;;) {
        const int64_t g = atomic_fetch_add_explicit(&t->next, 1, memory_order_relaxed);
        if (g >= t->n_mv * t->per) return;
        const mv_t *m = &t->mv[g / t->per];
        const int64_t r0 = g % t->per * t->chunk;
        const int64_t r1 = r0 + t->chunk < t->rows ? r0 + t->chunk : t->rows;
        const kern__gemm_fn gemm = kern__isa >= KERN_ISA_AVX2 ? kern__gemm_avx2[m->wt] : NULL;
        if (gemm) {
            gemm(t->n, m->w + r0 * m->ws, m->ws, r1 - r0, m->xq, 0, m->xd, 1, m->out + r0, 0);
            continue;
        }
        const kern__dot_fn dot = kern__isa >= KERN_ISA_AVX2 && kern__dot_avx2[m->wt]
                                     ? kern__dot_avx2[m->wt]
                                     : kern__dot_scalar[m->wt];
        for (int64_t r = r0; r < r1; r++) m->out[r] = dot(t->n, m->w + r * m->ws, m->xq);
    }
}

/* x (n) rounded to type dt into q, with f32 block scales into d when dt is Q8_0. */
static void round_act(kern_type_t dt, const float *x, int64_t n, void *q, float *d)
{
    kern_quantize_act(dt, x, q, n);
    if (dt != KERN_Q8_0) return;
    const kern_block_q8_0 *b = q;
    for (int64_t i = 0; i < n / 32; i++) d[i] = kern_fp16_to_fp32(b[i].d);
}

static void run_mv(kern_pool_t *pool, mv_task_t *t, int64_t rows, int64_t n)
{
    t->rows = rows, t->n = n;
    /* Sized by bytes (kern__grab_rows), on the first product's row: the run's products share
     * their shape, and their types differ at most by a few bits per weight. */
    t->chunk = kern__grab_rows(kern_row_bytes(t->mv[0].wt, n));
    if (t->chunk > rows) t->chunk = rows;
    t->per = (rows + t->chunk - 1) / t->chunk;
    atomic_init(&t->next, 0);
    kern_pool_run(pool, mv_cb, t);
}

static bool moe_one(kern_pool_t *pool, const kern_expert_t *experts, int n_embd, int n_ff, int k,
                    const float *x, const int32_t *ids, float *ys, uint8_t *p)
{
    const size_t D = (size_t)n_embd, F = (size_t)n_ff;
    const kern_expert_t *e0 = &experts[ids[0] >= 0 ? ids[0] : 0];
    for (int j = 0; j < k; j++)
        if (ids[j] >= 0) e0 = &experts[ids[j]];
    /* The scratch is sized for one set of types: experts of mixed types take the grouped path. */
    for (int j = 0; j < k; j++) {
        if (ids[j] < 0) continue;
        const kern_expert_t *ex = &experts[ids[j]];
        CHECK(ex->gate && ex->up && ex->down);
        if (ex->gate_type != e0->gate_type || ex->up_type != e0->up_type ||
            ex->down_type != e0->down_type)
            return false;
    }
    const kern_type_t gd = kern_type_info(e0->gate_type)->dot_type;
    const kern_type_t ud = kern_type_info(e0->up_type)->dot_type;
    const kern_type_t dd = kern_type_info(e0->down_type)->dot_type;
    uint8_t *xg = p;
    p += a64(kern_row_bytes(gd, n_embd));
    uint8_t *xu = p;
    p += a64(kern_row_bytes(ud, n_embd));
    float *dg = (float *)p;
    p += a64(sizeof(float) * (D / 32));
    float *du = (float *)p;
    p += a64(sizeof(float) * (D / 32));
    float *g = (float *)p;
    p += a64(sizeof(float) * (size_t)k * F);
    float *u = (float *)p;
    p += a64(sizeof(float) * (size_t)k * F);
    const size_t hq_stride = a64(kern_row_bytes(dd, n_ff));
    const size_t hd_stride = a64(sizeof(float) * (F / 32));
    uint8_t *hq = p;
    p += (size_t)k * hq_stride;
    uint8_t *hd = p;

    round_act(gd, x, n_embd, xg, dg);
    if (ud == gd) xu = xg, du = dg;
    else round_act(ud, x, n_embd, xu, du);

    _Static_assert(sizeof(((mv_task_t *)0)->mv) / sizeof(mv_t) >= 2 * 256, "k <= 256");
    mv_task_t t;
    t.n_mv = 0;
    for (int j = 0; j < k; j++) {
        if (ids[j] < 0) continue;
        const kern_expert_t *ex = &experts[ids[j]];
        t.mv[t.n_mv++] = (mv_t){ex->gate, kern_row_bytes(ex->gate_type, D), ex->gate_type, xg, dg,
                                g + (size_t)j * F};
        t.mv[t.n_mv++] = (mv_t){ex->up, kern_row_bytes(ex->up_type, D), ex->up_type, xu, du,
                                u + (size_t)j * F};
    }
    if (t.n_mv == 0) return true;
    run_mv(pool, &t, n_ff, n_embd);

    t.n_mv = 0;
    for (int j = 0; j < k; j++) {
        if (ids[j] < 0) continue;
        const kern_expert_t *ex = &experts[ids[j]];
        float *h = g + (size_t)j * F;
        kern_swiglu(h, h, u + (size_t)j * F, n_ff);
        uint8_t *q = hq + (size_t)j * hq_stride;
        float *qd = (float *)(hd + (size_t)j * hd_stride);
        round_act(dd, h, n_ff, q, qd);
        t.mv[t.n_mv++] = (mv_t){ex->down, kern_row_bytes(ex->down_type, F), ex->down_type, q, qd,
                                ys + (size_t)j * D};
    }
    run_mv(pool, &t, n_embd, n_ff);
    return true;
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

    /* ids were checked against n_expert by the counting sort above. */
    /* The one-token path knows plain SwiGLU without biases only. */
    const bool one = n_tok == 1 && k <= 256 && !bias && act == KERN_ACT_SWIGLU &&
                     moe_one(pool, experts, n_embd, n_ff, k, x, ids, ys, mmw);
    for (int e = 0; e < n_expert && !one; e++) {
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
