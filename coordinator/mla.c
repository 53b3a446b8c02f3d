/* Multi-head latent attention (DeepSeek-V2/V3, Kimi K2) as llama.cpp computes it with the
 * absorbed weights attn_k_b / attn_v_b: MLA becomes multi-query attention over one cached row
 * per token, [latent (kv_lora_rank), k_pe (n_rot)], and queries [attn_k_b q_nope, q_pe].
 * The value of a position is its latent (the first kv_lora_rank values of the same row), so V
 * costs no extra memory. Per head, the weighted latent goes through attn_v_b, and the heads'
 * outputs through attn_output.
 *
 * Files converted before llama.cpp split attn_kv_b into attn_k_b / attn_v_b are absorbed the
 * same way from attn_kv_b (its key rows read transposed, its value rows as they are): the same
 * arithmetic as llama.cpp's decompressed path up to rounding, with the small cache.
 *
 * RoPE rotates adjacent pairs of q_pe and k_pe; with YaRN scaling it follows ggml's rope_yarn
 * and llama.cpp's deepseek2 graph: the rotated parts keep the file's attention factor and the
 * log-multiplier's mscale goes squared into the kq scale.
 */
#include "coordinator/mla.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct coord__mla {
    const model_t *m;
    kern_pool_t *pool;
    int n_slots, n_ctx, n_batch;
    bool f16;
    int R, rot, row;        /* kv_lora_rank, n_rot, R + rot values per cached row */
    int H, K, nope, V;      /* heads, q/k head (nope + rot), nope, v head */
    size_t elt;             /* bytes per cached value: 4 or 2 */
    uint8_t *cache;         /* (n_layer, n_slots, n_ctx, row) f32 or f16 */
    /* scratch for n_batch tokens */
    float *qa;              /* (n_batch, q_lora_rank) */
    float *q;               /* (n_batch, H * K) */
    float *ckv;             /* (n_batch, row) latent and k_pe of each token */
    float *qm;              /* (n_batch, H, row) absorbed queries */
    float *tmp_in;          /* (n_batch, max(nope, R)) one head's rows, gathered */
    float *tmp_out;         /* (n_batch, max(R, V)) */
    float *lat;             /* (n_batch, H, R) attention output in latent space */
    float *att;             /* (n_batch, H * V) heads' outputs */
    float *wk;              /* (nope, R) one head's key rows of attn_kv_b as f32 (old files) */
    float *attn_w;          /* (n_threads, kern_attn_work_size(H, n_ctx, row)) */
    size_t attn_w_stride;   /* floats per thread */
    void *work;             /* kern_matmul scratch */
    float kq_scale;
};

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

uint64_t coord__mla_cache_bytes_per_token(const model_hparams_t *hp, bool kv_f16)
{
    if (hp->kv_lora_rank <= 0) return 0;
    return (uint64_t)hp->n_layer * (uint64_t)(hp->kv_lora_rank + hp->n_rot) * (kv_f16 ? 2 : 4);
}

float coord__mla_kq_scale(const model_hparams_t *hp)
{
    float mscale = 1.0f;
    if (hp->rope_yarn)
        mscale = hp->yarn_attn_factor *
                 (1.0f + 0.1f * hp->yarn_log_mul * logf(1.0f / hp->rope_scale));
    return mscale * mscale / sqrtf((float)hp->mla_head_k);
}

/* ggml's YaRN correction range: the dims whose wavelength fits beta times into the original
 * context are extrapolated, the rest interpolated, with a linear ramp between. */
static float corr_dim(int n_dims, int n_ctx_orig, float beta, float base)
{
    return (float)n_dims * logf((float)n_ctx_orig / (beta * 2.0f * 3.14159265358979f)) /
           (2.0f * logf(base));
}

void coord__mla_rope(const model_hparams_t *hp, float *x, int n_heads, int head_stride, int pos)
{
    const int n = hp->n_rot;
    if (!hp->rope_yarn) {
        kern_rope(x, n_heads, head_stride, n, pos, hp->rope_base, hp->rope_scale, false);
        return;
    }
    float lo = floorf(corr_dim(n, hp->n_ctx_orig, hp->yarn_beta_fast, hp->rope_base));
    float hi = ceilf(corr_dim(n, hp->n_ctx_orig, hp->yarn_beta_slow, hp->rope_base));
    lo = lo > 0.0f ? lo : 0.0f;
    hi = hi < (float)(n - 1) ? hi : (float)(n - 1);
    const float theta_scale = powf(hp->rope_base, -2.0f / (float)n);
    /* llama.cpp divides the attention factor by (1 + 0.1 ln(1/s)) and ggml's rope multiplies
     * it back (ext_factor != 0): the rotated values keep the file's factor. */
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
        for (int h = 0; h < n_heads; h++) {
            float *p = x + (size_t)h * head_stride + i0;
            const float a = p[0], b = p[1];
            p[0] = a * c - b * s;
            p[1] = a * s + b * c;
        }
        theta_extrap *= theta_scale;
    }
}

static size_t mm_ws(const model_tensor_t *t, int n)
{
    return t ? kern_matmul_work_size(t->type, n, t->ne[0]) : 0;
}

coord__mla_t *coord__mla_new(const model_t *m, kern_pool_t *pool, int n_slots, int n_ctx,
                             int n_batch, bool kv_f16)
{
    const model_hparams_t *hp = &m->hp;
    if (hp->kv_lora_rank <= 0) {
        LOG_ERR("MLA attention asked for a model without kv_lora_rank");
        return NULL;
    }
    coord__mla_t *a = xcalloc(1, sizeof(*a));
    a->m = m;
    a->pool = pool;
    a->n_slots = n_slots;
    a->n_ctx = n_ctx;
    a->n_batch = n_batch;
    a->f16 = kv_f16;
    a->R = hp->kv_lora_rank;
    a->rot = hp->n_rot;
    a->row = a->R + a->rot;
    a->H = hp->n_head;
    a->K = hp->mla_head_k;
    a->nope = a->K - a->rot;
    a->V = hp->mla_head_v;
    a->elt = kv_f16 ? 2 : 4;
    a->kq_scale = coord__mla_kq_scale(hp);
    a->cache = xcalloc((size_t)hp->n_layer * n_slots * n_ctx, a->elt * a->row);

    const size_t B = (size_t)n_batch, H = (size_t)a->H;
    a->qa = xmalloc(sizeof(float) * B * (size_t)(hp->q_lora_rank > 0 ? hp->q_lora_rank : 1));
    a->q = xmalloc(sizeof(float) * B * H * a->K);
    a->ckv = xmalloc(sizeof(float) * B * a->row);
    a->qm = xmalloc(sizeof(float) * B * H * a->row);
    a->tmp_in = xmalloc(sizeof(float) * B * max_sz(a->nope, a->R));
    a->tmp_out = xmalloc(sizeof(float) * B * max_sz(a->R, a->V));
    a->lat = xmalloc(sizeof(float) * B * H * a->R);
    a->att = xmalloc(sizeof(float) * B * H * a->V);
    a->wk = xmalloc(sizeof(float) * (size_t)a->nope * a->R);
    int nth = pool ? kern_pool_size(pool) : 1;
    a->attn_w_stride = kern_attn_work_size(a->H, n_ctx, a->row);
    a->attn_w = xmalloc(sizeof(float) * (size_t)nth * a->attn_w_stride);
    size_t ws = 0;
    for (int il = 0; il < hp->n_layer; il++) {
        const model_layer_t *ly = &m->layers[il];
        const model_tensor_t *ts[] = {ly->wq, ly->wq_a, ly->wq_b, ly->wkv_a_mqa, ly->wk_b,
                                      ly->wv_b, ly->wkv_b, ly->wo};
        for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]); i++) ws = max_sz(ws, mm_ws(ts[i], n_batch));
    }
    a->work = xmalloc_aligned(64, ws + 64);
    return a;
}

void coord__mla_free(coord__mla_t *a)
{
    if (!a) return;
    void *bufs[] = {a->cache, a->qa,  a->q,   a->ckv,    a->qm,  a->tmp_in,
                    a->tmp_out, a->lat, a->att, a->wk, a->attn_w, a->work};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) free(bufs[i]);
    free(a);
}

/* out (n, rows) = x (n, ne0) @ w^T over rows row0.. of w (all rows of all slices counted). */
static void mm_rows(coord__mla_t *a, float *out, const model_tensor_t *w, int64_t row0,
                    int64_t rows, const float *x, int n)
{
    const size_t rb = kern_row_bytes(w->type, w->ne[0]);
    const uint8_t *base = (const uint8_t *)w->data + (size_t)row0 * rb;
    kern_matmul(a->pool, out, base, rb, w->type, x, n, w->ne[0], rows, a->work);
}

/* out (n, rows) = x (n, cols) @ w^T for a 2-D weight, or its slice `head` of a 3-D one. */
static void mm(coord__mla_t *a, float *out, const model_tensor_t *w, int head, const float *x,
               int n)
{
    mm_rows(a, out, w, (int64_t)head * w->ne[1], w->ne[1], x, n);
}

/* Head h of an old file's attn_kv_b: latent[r] = sum_i q_nope[i] * key row i [r], the
 * transposed product, on the head's nope key rows dequantized to f32. */
static void absorb_kv_b(coord__mla_t *a, const model_tensor_t *w, int h, int n)
{
    const size_t rb = kern_row_bytes(w->type, w->ne[0]);
    const uint8_t *base = (const uint8_t *)w->data + (size_t)h * (a->nope + a->V) * rb;
    for (int i = 0; i < a->nope; i++)
        kern_dequantize(w->type, base + (size_t)i * rb, a->wk + (size_t)i * a->R, a->R);
    for (int t = 0; t < n; t++) {
        const float *qn = a->tmp_in + (size_t)t * a->nope;
        float *o = a->tmp_out + (size_t)t * a->R;
        memset(o, 0, sizeof(float) * a->R);
        for (int i = 0; i < a->nope; i++) {
            const float *k = a->wk + (size_t)i * a->R;
            for (int r = 0; r < a->R; r++) o[r] += qn[i] * k[r];
        }
    }
}

static uint8_t *row_at(const coord__mla_t *a, int il, int slot, int pos)
{
    size_t cell = ((size_t)il * a->n_slots + slot) * a->n_ctx + pos;
    return a->cache + cell * a->elt * a->row;
}

typedef struct {
    coord__mla_t *a;
    const coord_batch_t *b;
    int il;
} job_t;

/* Jobs are (token, share of the heads): a decode step of one token still uses every thread,
 * and each job reads the cached rows once for all its heads. */
static void attn_cb(void *arg, int ith, int nth)
{
    job_t *J = arg;
    coord__mla_t *a = J->a;
    const int split = nth < a->H ? nth : a->H;
    const kern_type_t kt = a->f16 ? KERN_F16 : KERN_F32;
    float *w = a->attn_w + (size_t)ith * a->attn_w_stride;
    const size_t rbytes = a->elt * a->row;
    for (int job = ith; job < J->b->n * split; job += nth) {
        const int t = job / split, c = job % split;
        const int h0 = c * a->H / split, h1 = (c + 1) * a->H / split;
        if (h1 <= h0) continue;
        const uint8_t *rows = row_at(a, J->il, J->b->slot[t], 0);
        const float *q = a->qm + ((size_t)t * a->H + h0) * a->row;
        float *o = a->lat + ((size_t)t * a->H + h0) * a->R;
        kern_attn(o, (size_t)a->R, q, h1 - h0, rows, rbytes, rows, rbytes, kt,
                  J->b->pos[t] + 1, a->row, a->R, a->kq_scale, w);
    }
}

void coord__mla_forward(coord__mla_t *a, const coord_batch_t *b, int il, const float *xn,
                        float *out)
{
    const model_hparams_t *hp = &a->m->hp;
    const model_layer_t *ly = &a->m->layers[il];
    const int n = b->n, H = a->H, K = a->K, R = a->R, row = a->row;
    if (ly->wq) {
        mm(a, a->q, ly->wq, 0, xn, n);
    } else {
        const int QL = hp->q_lora_rank;
        mm(a, a->qa, ly->wq_a, 0, xn, n);
        for (int t = 0; t < n; t++)
            kern_rmsnorm(a->qa + (size_t)t * QL, a->qa + (size_t)t * QL, ly->q_a_norm->data, QL,
                         hp->rms_eps);
        mm(a, a->q, ly->wq_b, 0, a->qa, n);
    }
    mm(a, a->ckv, ly->wkv_a_mqa, 0, xn, n);
    for (int t = 0; t < n; t++) {
        float *q = a->q + (size_t)t * H * K, *c = a->ckv + (size_t)t * row;
        coord__mla_rope(hp, q + a->nope, H, K, b->pos[t]);
        coord__mla_rope(hp, c + R, 1, a->rot, b->pos[t]);
        kern_rmsnorm(c, c, ly->kv_a_norm->data, R, hp->rms_eps);
        uint8_t *dst = row_at(a, il, b->slot[t], b->pos[t]);
        if (a->f16)
            for (int i = 0; i < row; i++) ((uint16_t *)dst)[i] = kern_fp32_to_fp16(c[i]);
        else
            memcpy(dst, c, sizeof(float) * row);
        /* the rotated part of each absorbed query goes after its latent part */
        for (int h = 0; h < H; h++)
            memcpy(a->qm + ((size_t)t * H + h) * row + R, q + (size_t)h * K + a->nope,
                   sizeof(float) * a->rot);
    }
    /* q_nope of head h into the latent space: qm[t][h][0..R) = attn_k_b[h] q_nope[t][h]. */
    for (int h = 0; h < H; h++) {
        for (int t = 0; t < n; t++)
            memcpy(a->tmp_in + (size_t)t * a->nope, a->q + ((size_t)t * H + h) * K,
                   sizeof(float) * a->nope);
        if (ly->wk_b)
            mm(a, a->tmp_out, ly->wk_b, h, a->tmp_in, n);
        else
            absorb_kv_b(a, ly->wkv_b, h, n);
        for (int t = 0; t < n; t++)
            memcpy(a->qm + ((size_t)t * H + h) * row, a->tmp_out + (size_t)t * R,
                   sizeof(float) * R);
    }
    job_t job = {a, b, il};
    kern_pool_run(a->pool, attn_cb, &job);
    /* Each head's weighted latent back to its value size through attn_v_b[h]. */
    for (int h = 0; h < H; h++) {
        for (int t = 0; t < n; t++)
            memcpy(a->tmp_in + (size_t)t * R, a->lat + ((size_t)t * H + h) * R,
                   sizeof(float) * R);
        if (ly->wv_b)
            mm(a, a->tmp_out, ly->wv_b, h, a->tmp_in, n);
        else /* the value rows follow the head's key rows */
            mm_rows(a, a->tmp_out, ly->wkv_b, (int64_t)h * (a->nope + a->V) + a->nope, a->V,
                    a->tmp_in, n);
        for (int t = 0; t < n; t++)
            memcpy(a->att + ((size_t)t * H + h) * a->V, a->tmp_out + (size_t)t * a->V,
                   sizeof(float) * a->V);
    }
    mm(a, out, ly->wo, 0, a->att, n);
}
