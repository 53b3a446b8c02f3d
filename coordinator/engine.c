/* The forward pass: embeddings, attention with a slot-per-sequence KV cache, router, experts
 * (through coord_experts_t), shared experts, output head. It follows llama.cpp's graph for each
 * architecture operation by operation, because its logits are our reference: RMSNorm then
 * weight, activations rounded to each weight's dot type inside kern_matmul, softmax-then-top-k
 * routing, expert outputs weighted and summed in top-k order.
 *
 * Buffers are sized once for n_batch tokens, one row per token of the batch; decode never
 * allocates. The batch is processed layer by layer, as one run of tokens or as a pipeline of
 * micro-batches (consecutive runs, see coord_engine_decode): every weight matrix is read once
 * per micro-batch. Each micro-batch owns its rows of the per-token buffers, so one can wait for
 * its routed experts while the next uses the shared scratch (h1, h2, router, work).
 */
#include "coordinator/coord.h"

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/mla.h"
#include "wire/wire.h"

/* Adaptive micro-batching (n_micro 0) splits batches of at least this many tokens. */
#define MB_SPLIT_TOKENS 4

struct coord_engine {
    const model_t *m;
    coord_experts_t *ex;
    kern_pool_t *pool;
    coord_engine_params_t p;
    coord__mla_t *mla;      /* deepseek2: attention and its latent cache (mla.c); else NULL */
    int kv_dim, kv_dim_v;   /* n_head_kv * head_dim (_v) */
    int q_dim, o_dim;       /* n_head * head_dim, n_head * head_dim_v */
    size_t kv_elt;          /* bytes per cached value: 4 or 2 */
    uint8_t *k_cache;       /* (n_layer, n_slots, n_ctx, kv_dim) f32 or f16 */
    uint8_t *v_cache;       /* (n_layer, n_slots, n_ctx, kv_dim_v) */
    int32_t *slot_len;      /* (n_slots) positions held */
    /* scratch for n_batch tokens */
    float *x;               /* (n_batch, n_embd) residual stream */
    float *xn;              /* (n_batch, n_embd) normalised input of a block */
    float *q;               /* (n_batch, q_dim) */
    float *k;               /* (n_batch, kv_dim) */
    float *v;               /* (n_batch, kv_dim_v) */
    float *att;             /* (n_batch, o_dim) attention output */
    float *att_w;           /* (n_threads, kern_attn_work_size of a GQA group) */
    float *ff;              /* (n_batch, n_embd) block output */
    float *h1, *h2;         /* (n_batch, max ff width) */
    float *router;          /* (n_batch, n_expert) */
    int32_t *ids;           /* (n_batch, top-k) */
    float *gw;              /* (n_batch, top-k) */
    float *sh;              /* (n_batch, n_embd) shared expert output */
    float *shg;             /* (n_batch) shared expert gate logits */
    void *work;             /* kern_matmul scratch */
    /* (n_layer, n_expert) tokens the router sent to each expert since start-up: written by
     * the decoding thread, read by any thread, both with relaxed atomics (counters only). */
    _Atomic uint64_t *expert_tokens;
    bool has_moe;           /* some layer has routed experts */
    coord_engine_stats_t st;
};

coord_engine_params_t coord_engine_params_default(void)
{
    return (coord_engine_params_t){
        .n_ctx = 0, .n_slots = 1, .n_batch = 512, .kv_f16 = false, .n_micro = 0, .trace = NULL};
}

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

/* A run of consecutive tokens of one slot (a prompt chunk) is attended in blocks of about this
 * many query rows (tokens x GQA group) by kern_attn_causal, which reads each cached key and
 * value once per block instead of once per token; with 128 rows of head dim 128 the block's
 * queries and outputs take 128 KiB, next to a 64 KiB tile of keys and values: all in L2. */
#define ATTN_BLOCK_ROWS 128

static int attn_block_tokens(const model_hparams_t *hp)
{
    const int T = ATTN_BLOCK_ROWS / (hp->n_head / hp->n_head_kv);
    return T < 2 ? 2 : T;
}

/* Floats of attention scratch per thread: a token's full row of scores or a block's tiles. */
static size_t attn_work_floats(const model_hparams_t *hp, int n_ctx)
{
    const int group = hp->n_head / hp->n_head_kv;
    return max_sz(kern_attn_work_size(group, n_ctx, hp->head_dim),
                  kern_attn_causal_work_size(group, attn_block_tokens(hp), hp->head_dim,
                                             hp->head_dim_v));
}

/* Largest matmul scratch any weight of the model needs for n_batch rows. */
static size_t work_size(const model_t *m, int n_batch)
{
    const model_hparams_t *hp = &m->hp;
    size_t ws = kern_matmul_work_size(m->output->type, n_batch, hp->n_embd);
    for (int il = 0; il < hp->n_layer; il++) {
        const model_layer_t *ly = &m->layers[il];
        const model_tensor_t *ts[] = {ly->wq, ly->wk, ly->wv, ly->wo, ly->ffn_gate, ly->ffn_up,
                                      ly->ffn_down, ly->gate_inp, ly->gate_shexp, ly->up_shexp,
                                      ly->down_shexp, ly->gate_inp_shexp};
        for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]); i++)
            if (ts[i]) ws = max_sz(ws, kern_matmul_work_size(ts[i]->type, n_batch, ts[i]->ne[0]));
    }
    return ws;
}

coord_engine_t *coord_engine_new(const model_t *m, coord_experts_t *ex, kern_pool_t *pool,
                                 const coord_engine_params_t *p)
{
    const model_hparams_t *hp = &m->hp;
    coord_engine_params_t P = *p;
    if (P.n_ctx <= 0) P.n_ctx = hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    if (P.n_slots < 1 || P.n_batch < 1 || P.n_ctx > (1 << 24) || P.n_slots > 4096 ||
        P.n_micro < 0 || P.n_micro > COORD_MICRO_BATCHES_MAX) {
        LOG_ERR("bad engine parameters: ctx %d, slots %d, batch %d, micro-batches %d (0..%d)",
                P.n_ctx, P.n_slots, P.n_batch, P.n_micro, COORD_MICRO_BATCHES_MAX);
        return NULL;
    }
    if (hp->n_expert > 0 && !ex) {
        LOG_ERR("the model has routed experts but no expert implementation was given");
        return NULL;
    }
    coord_engine_t *e = xcalloc(1, sizeof(*e));
    e->m = m;
    e->ex = ex;
    e->pool = pool;
    e->p = P;
    e->kv_dim = hp->n_head_kv * hp->head_dim;
    e->kv_dim_v = hp->n_head_kv * hp->head_dim_v;
    e->q_dim = hp->n_head * hp->head_dim;
    e->o_dim = hp->n_head * hp->head_dim_v;
    e->kv_elt = P.kv_f16 ? 2 : 4;
    if (hp->kv_lora_rank > 0) { /* MLA keeps its own, much smaller, cache and scratch */
        e->mla = coord__mla_new(m, pool, P.n_slots, P.n_ctx, P.n_batch, P.kv_f16);
        e->kv_dim = e->kv_dim_v = e->q_dim = e->o_dim = 0;
    }
    for (int il = 0; il < hp->n_layer; il++) e->has_moe |= m->layers[il].gate_inp != NULL;
    size_t cells = (size_t)hp->n_layer * P.n_slots * P.n_ctx;
    e->k_cache = xcalloc(cells, e->kv_elt * e->kv_dim);
    e->v_cache = xcalloc(cells, e->kv_elt * e->kv_dim_v);
    e->slot_len = xcalloc((size_t)P.n_slots, sizeof(int32_t));
    e->expert_tokens = xcalloc((size_t)hp->n_layer * (size_t)(hp->n_expert > 0 ? hp->n_expert : 0) + 1,
                               sizeof(*e->expert_tokens));

    const size_t B = (size_t)P.n_batch, D = (size_t)hp->n_embd;
    int nth = pool ? kern_pool_size(pool) : 1;
    size_t ffw = max_sz(max_sz((size_t)hp->n_ff, (size_t)hp->n_ff_shexp), 1);
    for (int il = 0; il < hp->n_layer; il++)
        if (m->layers[il].ffn_gate) ffw = max_sz(ffw, (size_t)m->layers[il].ffn_gate->ne[1]);
    int k = hp->n_expert_used > 0 ? hp->n_expert_used : 1;
    e->x = xmalloc(sizeof(float) * B * D);
    e->xn = xmalloc(sizeof(float) * B * D);
    e->q = xmalloc(sizeof(float) * B * e->q_dim);
    e->k = xmalloc(sizeof(float) * B * e->kv_dim);
    e->v = xmalloc(sizeof(float) * B * e->kv_dim_v);
    e->att = xmalloc(sizeof(float) * B * e->o_dim);
    e->att_w = xmalloc(sizeof(float) * (size_t)nth * attn_work_floats(hp, P.n_ctx));
    e->ff = xmalloc(sizeof(float) * B * D);
    e->h1 = xmalloc(sizeof(float) * B * ffw);
    e->h2 = xmalloc(sizeof(float) * B * ffw);
    e->router = xmalloc(sizeof(float) * B * (size_t)(hp->n_expert > 0 ? hp->n_expert : 1));
    e->ids = xmalloc(sizeof(int32_t) * B * k);
    e->gw = xmalloc(sizeof(float) * B * k);
    e->sh = xmalloc(sizeof(float) * B * D);
    e->shg = xmalloc(sizeof(float) * B);
    e->work = xmalloc_aligned(64, work_size(m, P.n_batch) + 64);
    return e;
}

void coord_engine_free(coord_engine_t *e)
{
    if (!e) return;
    coord__mla_free(e->mla);
    void *bufs[] = {e->k_cache, e->v_cache, e->slot_len, e->x,  e->xn,     e->q,   e->k,
                    e->v,       e->att,     e->att_w,    e->ff, e->h1,     e->h2,  e->router,
                    e->ids,     e->gw,      e->sh,     e->shg,  e->work, (void *)e->expert_tokens};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) free(bufs[i]);
    free(e);
}

void coord_engine_stats(const coord_engine_t *e, coord_engine_stats_t *out) { *out = e->st; }

void coord_engine_idle(coord_engine_t *e)
{
    if (e->ex && e->ex->vt->idle) e->ex->vt->idle(e->ex);
}

const coord_engine_params_t *coord_engine_params(const coord_engine_t *e) { return &e->p; }
void coord_engine_clear_slot(coord_engine_t *e, int slot) { e->slot_len[slot] = 0; }
int coord_engine_slot_len(const coord_engine_t *e, int slot) { return e->slot_len[slot]; }

int coord_engine_expert_tokens(const coord_engine_t *e, uint64_t *out, int cap)
{
    const model_hparams_t *hp = &e->m->hp;
    const int n = hp->n_expert > 0 ? hp->n_layer * hp->n_expert : 0;
    for (int i = 0; i < n && i < cap; i++)
        out[i] = atomic_load_explicit(&e->expert_tokens[i], memory_order_relaxed);
    return n;
}

void coord_engine_truncate_slot(coord_engine_t *e, int slot, int len)
{
    /* Rows at len and beyond stay in memory; the next decode of the slot overwrites them,
     * and attention never reads past a token's own position. */
    CHECK(slot >= 0 && slot < e->p.n_slots && len >= 0);
    if (len < e->slot_len[slot]) e->slot_len[slot] = len;
}

/* out (n, rows of w) = x (n, cols of w) @ w^T, w a plain 2-D tensor. */
static void mm(coord_engine_t *e, float *out, const model_tensor_t *w, const float *x, int n)
{
    kern_matmul(e->pool, out, w->data, kern_row_bytes(w->type, w->ne[0]), w->type, x, n,
                w->ne[0], w->ne[1], e->work);
}

/* Trace helpers: cheap when tracing is off (no clock read). trace() records [*t, now] on the
 * coordinator lane and moves *t to now. */
static double trace_now(const coord_engine_t *e) { return e->p.trace ? wire_now() : 0; }

static void trace(coord_engine_t *e, const char *name, double *t, int il, int mb, int n)
{
    if (!e->p.trace) return;
    double now = wire_now();
    coord_trace_event(e->p.trace, COORD_TRACE_COORD, 0, name, *t, now, il, mb, n);
    *t = now;
}

static void add_bias(float *x, const model_tensor_t *b, int n, int dim)
{
    if (!b) return;
    const float *bb = b->data;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < dim; i++) x[(size_t)t * dim + i] += bb[i];
}

static uint8_t *kv_at(const coord_engine_t *e, uint8_t *base, int dim, int il, int slot, int pos)
{
    size_t cell = ((size_t)il * e->p.n_slots + slot) * e->p.n_ctx + pos;
    return base + cell * e->kv_elt * dim;
}

static void kv_store(coord_engine_t *e, uint8_t *dst, const float *src, int dim)
{
    if (!e->p.kv_f16) {
        memcpy(dst, src, sizeof(float) * dim);
        return;
    }
    uint16_t *h = (uint16_t *)dst;
    for (int i = 0; i < dim; i++) h[i] = kern_fp32_to_fp16(src[i]);
}

/* Attention of tokens [t0, t0 + n) of the batch, split over the pool's threads as (run of
 * tokens, kv head) jobs (attn_cb). */
typedef struct {
    coord_engine_t *e;
    const coord_batch_t *b;
    int il, t0, n;
} attn_job_t;

/* gpt-oss's attention of one query head q (hd) over cached positions [lo, hi) of one kv head:
 * softmax(scale * K q) V with the head's sink logit in the denominator (ggml's soft_max with
 * sinks: the sink joins the max and the sum but has no value row). With an f16 cache the query
 * is rounded to f16 first, as llama.cpp does. s: (hi - lo + hd) floats of scratch. */
static void attn_sink_head(float *out, const float *q, const uint8_t *k, size_t k_stride,
                           const uint8_t *v, size_t v_stride, bool f16, int lo, int hi, int hd,
                           int hv, float scale, float sink, float *s)
{
    float *qr = s + (hi - lo);
    for (int i = 0; i < hd; i++) qr[i] = f16 ? kern_fp16_to_fp32(kern_fp32_to_fp16(q[i])) : q[i];
    float mx = sink;
    for (int p = lo; p < hi; p++) {
        const uint8_t *kr = k + (size_t)p * k_stride;
        float d = 0.0f;
        for (int i = 0; i < hd; i++)
            d += qr[i] * (f16 ? kern_fp16_to_fp32(((const uint16_t *)kr)[i])
                              : ((const float *)kr)[i]);
        s[p - lo] = d * scale;
        if (s[p - lo] > mx) mx = s[p - lo];
    }
    float sum = expf(sink - mx);
    for (int p = lo; p < hi; p++) sum += s[p - lo] = expf(s[p - lo] - mx);
    for (int i = 0; i < hv; i++) out[i] = 0.0f;
    for (int p = lo; p < hi; p++) {
        const uint8_t *vr = v + (size_t)p * v_stride;
        const float w = s[p - lo] / sum;
        for (int i = 0; i < hv; i++)
            out[i] += w * (f16 ? kern_fp16_to_fp32(((const uint16_t *)vr)[i])
                               : ((const float *)vr)[i]);
    }
}

/* Attention of tokens [t, t + len) of the batch, consecutive positions of one slot, for kv head
 * kvh: one token alone through kern_attn (or the sink path), a run through kern_attn_causal. */
static void attn_run(const attn_job_t *J, int t, int len, int kvh, float *w)
{
    coord_engine_t *e = J->e;
    const model_hparams_t *hp = &e->m->hp;
    const int hd = hp->head_dim, hv = hp->head_dim_v;
    const int group = hp->n_head / hp->n_head_kv;
    const float scale = 1.0f / sqrtf((float)hd);
    const kern_type_t kt = e->p.kv_f16 ? KERN_F16 : KERN_F32;
    const bool swa = model_layer_is_swa(hp, J->il);
    const model_tensor_t *sk = e->m->layers[J->il].attn_sinks;
    const float *sinks = sk ? (const float *)sk->data + kvh * group : NULL;
    const int slot = J->b->slot[t], pos = J->b->pos[t];
    const float *q = e->q + (size_t)t * e->q_dim + (size_t)kvh * group * hd;
    const uint8_t *k = kv_at(e, e->k_cache, e->kv_dim, J->il, slot, 0) + e->kv_elt * kvh * hd;
    const uint8_t *v = kv_at(e, e->v_cache, e->kv_dim_v, J->il, slot, 0) + e->kv_elt * kvh * hv;
    float *o = e->att + (size_t)t * e->o_dim + (size_t)kvh * group * hv;
    const size_t ks = e->kv_elt * e->kv_dim, vs = e->kv_elt * e->kv_dim_v;
    if (len > 1) {
        const kern_kv_t kv = {k, v, ks, vs, kt, hd, hv};
        kern_attn_causal(o, (size_t)e->o_dim, q, (size_t)e->q_dim, group, len, pos, &kv,
                         swa ? hp->n_swa : 0, sinks, scale, w);
        return;
    }
    /* A sliding-window layer sees only the n_swa latest positions; the cache keeps them all
     * and the window is a start offset into it. */
    const int lo = swa && pos + 1 > hp->n_swa ? pos + 1 - hp->n_swa : 0;
    if (sinks) {
        for (int g = 0; g < group; g++)
            attn_sink_head(o + (size_t)g * hv, q + (size_t)g * hd, k, ks, v, vs, e->p.kv_f16, lo,
                           pos + 1, hd, hv, scale, sinks[g], w);
        return;
    }
    kern_attn(o, (size_t)hv, q, group, k + (size_t)lo * ks, ks, v + (size_t)lo * vs, vs, kt,
              pos + 1 - lo, hd, hv, scale, w);
}

static void attn_cb(void *arg, int ith, int nth)
{
    attn_job_t *J = arg;
    const model_hparams_t *hp = &J->e->m->hp;
    const int KV = hp->n_head_kv, TB = attn_block_tokens(hp), end = J->t0 + J->n;
    const int32_t *slot = J->b->slot, *pos = J->b->pos;
    float *w = J->e->att_w + (size_t)ith * attn_work_floats(hp, J->e->p.n_ctx);
    /* Jobs are (run, kv head), handed out in turn: a run is up to TB tokens of the batch that
     * continue one slot one position after another (a prompt), else a single token. */
    int job = 0;
    for (int t = J->t0, len; t < end; t += len) {
        for (len = 1; len < TB && t + len < end && slot[t + len] == slot[t] &&
                      pos[t + len] == pos[t] + len;)
            len++;
        for (int kvh = 0; kvh < KV; kvh++, job++)
            if (job % nth == ith) attn_run(J, t, len, kvh, w);
    }
}

/* ggml's YaRN rotation of the first n_rot dims of n_heads heads (head_dim apart) of one token,
 * NEOX or adjacent pairs as the model says: the angles of coord__mla_rope (same ramp between
 * the corrected dims, magnitude yarn_attn_factor), for the ordinary attention of gpt-oss and
 * any other architecture whose file asks for YaRN. */
static void rope_yarn(const model_hparams_t *hp, float *x, int n_heads, int pos)
{
    const int n = hp->n_rot, hd = hp->head_dim;
    const float pi = 3.14159265358979f;
    float lo = floorf((float)n * logf((float)hp->n_ctx_orig / (hp->yarn_beta_fast * 2 * pi)) /
                      (2 * logf(hp->rope_base)));
    float hi = ceilf((float)n * logf((float)hp->n_ctx_orig / (hp->yarn_beta_slow * 2 * pi)) /
                     (2 * logf(hp->rope_base)));
    lo = lo > 0.0f ? lo : 0.0f;
    hi = hi < (float)(n - 1) ? hi : (float)(n - 1);
    const float theta_scale = powf(hp->rope_base, -2.0f / (float)n);
    const float mscale = hp->yarn_attn_factor;
    float theta_extrap = (float)pos;
    for (int i0 = 0; i0 < n; i0 += 2) {
        float theta = hp->rope_scale * theta_extrap;
        if (hp->yarn_ext_factor != 0.0f) {
            float y = ((float)(i0 / 2) - lo) / fmaxf(0.001f, hi - lo);
            float ramp = (1.0f - fminf(1.0f, fmaxf(0.0f, y))) * hp->yarn_ext_factor;
            theta = theta * (1.0f - ramp) + theta_extrap * ramp;
        }
        const float c = cosf(theta) * mscale, s = sinf(theta) * mscale;
        const int a = hp->rope_neox ? i0 / 2 : i0, b = hp->rope_neox ? i0 / 2 + n / 2 : i0 + 1;
        for (int h = 0; h < n_heads; h++) {
            float *p = x + (size_t)h * hd;
            const float x0 = p[a], x1 = p[b];
            p[a] = x0 * c - x1 * s;
            p[b] = x0 * s + x1 * c;
        }
        theta_extrap *= theta_scale;
    }
}

/* The attention block of tokens [t0, t0 + n) at layer il, added to their residual stream.
 * Their K and V rows are stored before any of them attends, and tokens of earlier runs of the
 * batch (earlier positions of the same slot) have stored theirs already. */
static void attention(coord_engine_t *e, const coord_batch_t *b, int il, int t0, int n)
{
    const model_hparams_t *hp = &e->m->hp;
    const model_layer_t *ly = &e->m->layers[il];
    const int D = hp->n_embd, hd = hp->head_dim;
    float *x = e->x + (size_t)t0 * D, *xn = e->xn + (size_t)t0 * D;
    float *Q = e->q + (size_t)t0 * e->q_dim, *K = e->k + (size_t)t0 * e->kv_dim;
    float *V = e->v + (size_t)t0 * e->kv_dim_v, *ff = e->ff + (size_t)t0 * D;
    for (int t = 0; t < n; t++)
        kern_rmsnorm(xn + (size_t)t * D, x + (size_t)t * D, ly->attn_norm->data, D, hp->rms_eps);
    if (e->mla) { /* the micro-batch as a batch of its own: the latent cache is written in order */
        const coord_batch_t sub = {n, b->tok + t0, b->pos + t0, b->slot + t0, NULL};
        coord__mla_forward(e->mla, &sub, il, xn, ff);
        goto residual;
    }
    mm(e, Q, ly->wq, xn, n);
    mm(e, K, ly->wk, xn, n);
    mm(e, V, ly->wv, xn, n);
    add_bias(Q, ly->bq, n, e->q_dim);
    add_bias(K, ly->bk, n, e->kv_dim);
    add_bias(V, ly->bv, n, e->kv_dim_v);
    for (int t = 0; t < n; t++) {
        float *q = Q + (size_t)t * e->q_dim, *k = K + (size_t)t * e->kv_dim;
        const int pos = b->pos[t0 + t], slot = b->slot[t0 + t];
        if (hp->qk_norm == 1) {
            for (int h = 0; h < hp->n_head; h++)
                kern_rmsnorm(q + (size_t)h * hd, q + (size_t)h * hd, ly->q_norm->data, hd,
                             hp->rms_eps);
            for (int h = 0; h < hp->n_head_kv; h++)
                kern_rmsnorm(k + (size_t)h * hd, k + (size_t)h * hd, ly->k_norm->data, hd,
                             hp->rms_eps);
        } else if (hp->qk_norm == 2) {
            kern_rmsnorm(q, q, ly->q_norm->data, e->q_dim, hp->rms_eps);
            kern_rmsnorm(k, k, ly->k_norm->data, e->kv_dim, hp->rms_eps);
        }
        if (hp->rope_yarn) {
            rope_yarn(hp, q, hp->n_head, pos);
            rope_yarn(hp, k, hp->n_head_kv, pos);
        } else {
            kern_rope(q, hp->n_head, hd, hp->n_rot, pos, hp->rope_base, hp->rope_scale,
                      hp->rope_neox);
            kern_rope(k, hp->n_head_kv, hd, hp->n_rot, pos, hp->rope_base, hp->rope_scale,
                      hp->rope_neox);
        }
        kv_store(e, kv_at(e, e->k_cache, e->kv_dim, il, slot, pos), k, e->kv_dim);
        kv_store(e, kv_at(e, e->v_cache, e->kv_dim_v, il, slot, pos), V + (size_t)t * e->kv_dim_v,
                 e->kv_dim_v);
    }
    attn_job_t job = {e, b, il, t0, n};
    kern_pool_run(e->pool, attn_cb, &job);
    mm(e, ff, ly->wo, e->att + (size_t)t0 * e->o_dim, n);
    add_bias(ff, ly->bo, n, D);
residual:
    for (size_t i = 0; i < (size_t)n * D; i++) x[i] += ff[i];
}

/* out (n, n_embd) = down(silu(gate x) * up x): the dense FFN and the shared expert. */
static void swiglu_ffn(coord_engine_t *e, float *out, const model_tensor_t *gate,
                       const model_tensor_t *up, const model_tensor_t *down, const float *x,
                       int n)
{
    mm(e, e->h1, gate, x, n);
    mm(e, e->h2, up, x, n);
    kern_swiglu(e->h1, e->h1, e->h2, (int64_t)n * gate->ne[1]);
    mm(e, out, down, e->h1, n);
}

/* Router of tokens [t0, t0 + n): softmax, top-k, weights (renormalised when the model says). */
static void route(coord_engine_t *e, int il, int t0, int n)
{
    const model_hparams_t *hp = &e->m->hp;
    const int E = hp->n_expert, K = hp->n_expert_used;
    mm(e, e->router, e->m->layers[il].gate_inp, e->xn + (size_t)t0 * hp->n_embd, n);
    add_bias(e->router, e->m->layers[il].gate_inp_b, n, E);
    const float *bias = e->m->layers[il].exp_probs_b ? e->m->layers[il].exp_probs_b->data : NULL;
    _Atomic uint64_t *cnt = e->expert_tokens + (size_t)il * E;
    for (int t = 0; t < n; t++) {
        float *p = e->router + (size_t)t * E;
        int32_t *ids = e->ids + (size_t)(t0 + t) * K;
        float *gw = e->gw + (size_t)(t0 + t) * K;
        int top[256];
        if (hp->gating == MODEL_GATING_SOFTMAX_WEIGHT) {
            /* gpt-oss: the k largest logits, then a softmax over those k alone. */
            kern_topk(p, E, K, top);
            for (int j = 0; j < K; j++) gw[j] = p[top[j]];
            kern_softmax(gw, K);
        } else {
            coord__router_select(hp, bias, p, top, gw);
        }
        for (int j = 0; j < K; j++) {
            ids[j] = top[j];
            atomic_fetch_add_explicit(&cnt[top[j]], 1, memory_order_relaxed);
        }
    }
}

/* The FFN block of tokens [t0, t0 + n) (micro-batch mb) up to what needs the routed experts: a
 * dense FFN whole; else the router, then the routed experts submitted (remote ones are on the
 * wire when this returns), then the shared expert, computed while they are out. */
static int ffn_begin(coord_engine_t *e, int il, int mb, int t0, int n)
{
    const model_hparams_t *hp = &e->m->hp;
    const model_layer_t *ly = &e->m->layers[il];
    const int D = hp->n_embd;
    float *x = e->x + (size_t)t0 * D, *xn = e->xn + (size_t)t0 * D, *ff = e->ff + (size_t)t0 * D;
    double t = trace_now(e);
    for (int i = 0; i < n; i++)
        kern_rmsnorm(xn + (size_t)i * D, x + (size_t)i * D, ly->ffn_norm->data, D, hp->rms_eps);
    if (!ly->gate_inp) {
        swiglu_ffn(e, ff, ly->ffn_gate, ly->ffn_up, ly->ffn_down, xn, n);
        trace(e, "ffn", &t, il, mb, n);
        return 0;
    }
    const int K = hp->n_expert_used;
    route(e, il, t0, n);
    trace(e, "routing", &t, il, mb, n);
    int err = coord_experts_submit(e->ex, il, mb, n, K, xn, e->ids + (size_t)t0 * K,
                                   e->gw + (size_t)t0 * K, ff);
    if (err) return err;
    if (ly->gate_shexp) {
        t = trace_now(e);
        swiglu_ffn(e, e->sh + (size_t)t0 * D, ly->gate_shexp, ly->up_shexp, ly->down_shexp, xn,
                   n);
        if (ly->gate_inp_shexp) mm(e, e->shg + t0, ly->gate_inp_shexp, xn, n);
        trace(e, "shared experts", &t, il, mb, n);
    }
    return 0;
}

/* The rest of the FFN block of tokens [t0, t0 + n): waits for micro-batch mb's routed experts,
 * adds the shared expert (Qwen2-MoE: out += sigmoid(gate_inp_shexp . x) * shared_ffn(x)), and
 * adds the block's output to the residual stream. */
static int ffn_end(coord_engine_t *e, int il, int mb, int t0, int n)
{
    const model_hparams_t *hp = &e->m->hp;
    const model_layer_t *ly = &e->m->layers[il];
    const int D = hp->n_embd;
    float *x = e->x + (size_t)t0 * D, *ff = e->ff + (size_t)t0 * D;
    if (ly->gate_inp) {
        int err = coord_experts_collect(e->ex, mb);
        if (err) return err;
    }
    if (ly->gate_inp && ly->gate_shexp) {
        const float *sh = e->sh + (size_t)t0 * D, *shg = e->shg + t0;
        for (int t = 0; t < n; t++) {
            float g = ly->gate_inp_shexp ? 1.0f / (1.0f + expf(-shg[t])) : 1.0f;
            for (int d = 0; d < D; d++) ff[(size_t)t * D + d] += sh[(size_t)t * D + d] * g;
        }
    }
    for (size_t i = 0; i < (size_t)n * D; i++) x[i] += ff[i];
    return 0;
}

static int check_batch(const coord_engine_t *e, const coord_batch_t *b)
{
    if (b->n < 1 || b->n > e->p.n_batch) return -EINVAL;
    /* Each slot's positions must continue what it holds, one after another. */
    for (int t = 0; t < b->n; t++) {
        int s = b->slot[t];
        if (b->tok[t] < 0 || b->tok[t] >= e->m->hp.n_vocab || s < 0 || s >= e->p.n_slots ||
            b->pos[t] < 0 || b->pos[t] >= e->p.n_ctx)
            return -EINVAL;
        int expect = e->slot_len[s];
        for (int u = t - 1; u >= 0; u--)
            if (b->slot[u] == s) {
                expect = b->pos[u] + 1;
                break;
            }
        if (b->pos[t] != expect) return -EINVAL;
    }
    return 0;
}

int coord_engine_micro_batches(const coord_engine_t *e, int n)
{
    int M = e->p.n_micro;
    if (M == 0) {
        /* Splitting pays only when there is something to overlap (routed experts that work
         * elsewhere) and the batch is big enough that a micro-batch costs clearly less to
         * compute than the whole: below that, every weight is read once per micro-batch
         * either way and the split only adds a round trip's worth of latency. */
        bool overlap = e->has_moe && coord_experts_async(e->ex);
        M = !overlap || n < MB_SPLIT_TOKENS ? 1 : n < 4 * MB_SPLIT_TOKENS ? 2 : 3;
    }
    return M < n ? M : n;
}

int coord_engine_decode(coord_engine_t *e, const coord_batch_t *b, float *logits)
{
    int err = check_batch(e, b);
    if (err) return err;
    const model_t *m = e->m;
    const model_hparams_t *hp = &m->hp;
    const int n = b->n, D = hp->n_embd;
    CHECK(hp->n_expert_used <= 256);
    const double t_start = wire_now();
    double t = t_start;
    const size_t erow = kern_row_bytes(m->tok_embd->type, D);
    for (int i = 0; i < n; i++)
        kern_dequantize(m->tok_embd->type, (const uint8_t *)m->tok_embd->data + erow * b->tok[i],
                        e->x + (size_t)i * D, D);
    /* Micro-batch j holds tokens [b0[j], b0[j + 1]), consecutive runs of about n / M. Layer by
     * layer each one finishes the previous layer's FFN, then starts this layer: while its
     * routed experts are out, the next micro-batch's attention and router run. Micro-batch j
     * of a layer always precedes j + 1, so a token's earlier positions in the batch have
     * written their K and V before it attends. */
    const int M = coord_engine_micro_batches(e, n);
    int b0[COORD_MICRO_BATCHES_MAX + 1];
    for (int j = 0; j <= M; j++) b0[j] = (int)((int64_t)n * j / M);
    for (int il = 0; il < hp->n_layer; il++) {
        for (int j = 0; j < M; j++) {
            const int t0 = b0[j], nj = b0[j + 1] - b0[j];
            if (il > 0 && (err = ffn_end(e, il - 1, j, t0, nj)) != 0) return err;
            t = trace_now(e);
            attention(e, b, il, t0, nj);
            trace(e, "attention", &t, il, j, nj);
            if ((err = ffn_begin(e, il, j, t0, nj)) != 0) return err;
        }
    }
    for (int j = 0; j < M; j++)
        if ((err = ffn_end(e, hp->n_layer - 1, j, b0[j], b0[j + 1] - b0[j])) != 0) return err;
    for (int i = 0; i < n; i++)
        if (b->pos[i] + 1 > e->slot_len[b->slot[i]]) e->slot_len[b->slot[i]] = b->pos[i] + 1;
    t = trace_now(e);
    int nw = 0;
    for (int i = 0; i < n; i++) {
        if (b->want ? !b->want[i] : i != n - 1) continue;
        kern_rmsnorm(e->xn + (size_t)nw * D, e->x + (size_t)i * D, m->output_norm->data, D,
                     hp->rms_eps);
        nw++;
    }
    if (nw > 0) mm(e, logits, m->output, e->xn, nw);
    trace(e, "output", &t, -1, -1, nw);
    const double t_end = wire_now();
    static const char *const step_name[COORD_MICRO_BATCHES_MAX + 1] = {
        "", "decode", "decode, 2 micro-batches", "decode, 3 micro-batches",
        "decode, 4 micro-batches", "decode, 5 micro-batches", "decode, 6 micro-batches",
        "decode, 7 micro-batches", "decode, 8 micro-batches"};
    coord_trace_event(e->p.trace, COORD_TRACE_STEP, 0, step_name[M], t_start, t_end, -1, -1, n);
    e->st.decodes++;
    e->st.tokens += (uint64_t)n;
    e->st.micro_batches += (uint64_t)M;
    e->st.t_decode_s += t_end - t_start;
    return 0;
}
