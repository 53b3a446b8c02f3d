/* AVX2/FMA/F16C body of kern_attn_causal (reference and dispatch in kernels/attn_block.c): all
 * query rows of the run (n_tok tokens x nq heads, row r = token r / nq, head r % nq) go through
 * the cache one tile of KERN_ATTN_TILE positions at a time. Per tile the keys are transposed
 * (and widened from f16) into a (hd, tile) block, so the scores of MR = 6 query rows against 16
 * keys are a register-blocked product: per dimension two key loads and six query broadcasts
 * feed twelve multiply-adds. The weights then multiply the tile's values in blocks of 6 rows x
 * 16 dimensions. A tile that lies in L1/L2 thus serves every query of the run instead of being
 * fetched again for each token, as kern_attn does.
 *
 * Causal mask and sliding window: token t at p = pos0 + t sees positions [lo(p), p], both ends
 * nondecreasing in t, so a block of rows (consecutive tokens) sees a contiguous key range of the
 * tile too: ranges before the diagonal are whole tiles (no mask), the diagonal tile is cut per
 * row, and tiles after the last token are never visited. Masked weights are exactly 0.
 *
 * Same math as kern_attn's AVX2 body up to summation order: the queries are rounded to f16 for
 * an F16 cache, products of f16 values are exact in f32, the exponential is kern__exp_neg8; the
 * online rescaling adds one rounding per tile to each running sum.
 */
#include <immintrin.h>
#include <math.h>

#include "kernels/kern-avx2.h"
#include "kernels/kern-int.h"

#define T KERN_ATTN_TILE
#define MR KERN__ATTN_MR

/* Eight elements starting at element i of a row of f32 or f16 (f16 a compile-time constant at
 * every call site once inlined). */
static inline __attribute__((always_inline)) __m256 ld8(const void *row, int i, const bool f16)
{
    if (f16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i)));
    return _mm256_loadu_ps((const float *)row + i);
}

/* In place: r[i] (row i of an 8 x 8 block) becomes column i. */
static inline void transpose8(__m256 r[8])
{
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

/* kt (hd, T) = keys [0, nc) of the tile at k (rows k_stride bytes apart), transposed; keys from
 * nk to nc (a multiple of 8) are zero. */
static inline __attribute__((always_inline)) void load_keys(
    float *kt, const uint8_t *k, size_t k_stride, int nk, int nc, int hd, const bool f16)
{
    for (int j = 0; j < nc; j += 8)
        for (int c = 0; c < hd; c += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++)
                r[i] = j + i < nk ? ld8(k + (size_t)(j + i) * k_stride, c, f16)
                                  : _mm256_setzero_ps();
            transpose8(r);
            for (int i = 0; i < 8; i++) _mm256_storeu_ps(kt + (size_t)(c + i) * T + j, r[i]);
        }
}

/* s (MR rows, T apart), columns [c, c + 16) = scale * qr (MR rows of hd) . kt columns. */
static inline void scores_block(float *s, const float *qr, const float *kt, int c, int hd,
                                float scale)
{
    __m256 a[MR][2];
    #pragma GCC unroll 6
    for (int r = 0; r < MR; r++) a[r][0] = a[r][1] = _mm256_setzero_ps();
    for (int d = 0; d < hd; d++) {
        const __m256 b0 = _mm256_loadu_ps(kt + (size_t)d * T + c);
        const __m256 b1 = _mm256_loadu_ps(kt + (size_t)d * T + c + 8);
        #pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            const __m256 x = _mm256_broadcast_ss(qr + (size_t)r * hd + d);
            a[r][0] = _mm256_fmadd_ps(x, b0, a[r][0]);
            a[r][1] = _mm256_fmadd_ps(x, b1, a[r][1]);
        }
    }
    const __m256 sc = _mm256_set1_ps(scale);
    #pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        _mm256_storeu_ps(s + (size_t)r * T + c, _mm256_mul_ps(a[r][0], sc));
        _mm256_storeu_ps(s + (size_t)r * T + c + 8, _mm256_mul_ps(a[r][1], sc));
    }
}

/* o (MR rows of hv), dims [c, c + 8 * nv) = alpha[r] * o + weights p (MR rows, T apart) of keys
 * [ja, jb) times value rows vt + j * vs (floats). */
static inline __attribute__((always_inline)) void values_block(
    float *o, int hv, const float *p, const float *alpha, const float *vt, size_t vs, int ja,
    int jb, int c, const int nv)
{
    __m256 a[MR][2];
    #pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        const __m256 al = _mm256_broadcast_ss(alpha + r);
        #pragma GCC unroll 2
        for (int u = 0; u < nv; u++)
            a[r][u] = _mm256_mul_ps(_mm256_loadu_ps(o + (size_t)r * hv + c + 8 * u), al);
    }
    for (int j = ja; j < jb; j++) {
        __m256 v[2];
        #pragma GCC unroll 2
        for (int u = 0; u < nv; u++) v[u] = _mm256_loadu_ps(vt + (size_t)j * vs + c + 8 * u);
        #pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            const __m256 x = _mm256_broadcast_ss(p + (size_t)r * T + j);
            #pragma GCC unroll 2
            for (int u = 0; u < nv; u++) a[r][u] = _mm256_fmadd_ps(x, v[u], a[r][u]);
        }
    }
    #pragma GCC unroll 6
    for (int r = 0; r < MR; r++)
        #pragma GCC unroll 2
        for (int u = 0; u < nv; u++) _mm256_storeu_ps(o + (size_t)r * hv + c + 8 * u, a[r][u]);
}

/* The online softmax step of one row over its keys [a, b) of the tile (a < b): scores s (in
 * place, becoming weights over [ga, gb) with 0 outside [a, b)), running max *m and sum *l;
 * returns the factor earlier sums and outputs are rescaled by. */
static float online_row(float *s, int a, int b, int ga, int gb, float *m, float *l)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i va = _mm256_set1_epi32(a - 1), vb = _mm256_set1_epi32(b);
    __m256 vm = _mm256_set1_ps(-INFINITY);
    for (int c = a & ~7; c < b; c += 8) {
        const __m256i idx = _mm256_add_epi32(lane, _mm256_set1_epi32(c));
        const __m256 in = _mm256_castsi256_ps(
            _mm256_and_si256(_mm256_cmpgt_epi32(idx, va), _mm256_cmpgt_epi32(vb, idx)));
        vm = _mm256_max_ps(vm, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY),
                                                _mm256_loadu_ps(s + c), in));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vm), _mm256_extractf128_ps(vm, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float mt = _mm_cvtss_f32(m4), mn = mt > *m ? mt : *m;
    const float alpha = *m == -INFINITY ? 0.0f : expf(*m - mn);
    const __m256 vmn = _mm256_set1_ps(mn);
    __m256 vs = _mm256_setzero_ps();
    for (int c = ga & ~7; c < gb; c += 8) {
        const __m256i idx = _mm256_add_epi32(lane, _mm256_set1_epi32(c));
        const __m256 in = _mm256_castsi256_ps(
            _mm256_and_si256(_mm256_cmpgt_epi32(idx, va), _mm256_cmpgt_epi32(vb, idx)));
        /* Outside [a, b) the score may be stale or never computed: the mask makes it 0. */
        const __m256 e =
            _mm256_and_ps(kern__exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(s + c), vmn)), in);
        _mm256_storeu_ps(s + c, e);
        vs = _mm256_add_ps(vs, e);
    }
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(vs), _mm256_extractf128_ps(vs, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    *l = *l * alpha + _mm_cvtss_f32(s4);
    *m = mn;
    return alpha;
}

static inline int clampi(int x, int lo, int hi) { return x < lo ? lo : x > hi ? hi : x; }

static inline __attribute__((always_inline)) void causal(
    float *out, size_t out_stride, const float *q, size_t q_stride, int nq, int n_tok, int pos0,
    const kern_kv_t *kv, int window, const float *sinks, float scale, float *work, const bool f16)
{
    const int hd = kv->hd, hv = kv->hv, R = n_tok * nq, RP = (R + MR - 1) / MR * MR;
    float *qr = work;                    /* (RP, hd) queries, rounded for an f16 cache */
    float *o = qr + (size_t)RP * hd;     /* (RP, hv) outputs, not yet divided by the sums */
    float *s = o + (size_t)RP * hv;      /* (MR, T) scores, then weights, of a row block */
    float *m = s + (size_t)MR * T;       /* (RP) running max of each row */
    float *l = m + RP;                   /* (RP) running sum */
    float *al = l + RP;                  /* (RP) rescale factor of the current tile */
    float *kt = al + RP;                 /* (hd, T) the tile's keys, transposed */
    float *vt = kt + (size_t)hd * T;     /* (T, hv) the tile's values widened (f16 only) */
    for (int r = 0; r < RP; r++) {
        const int t = r / nq, g = r % nq;
        for (int c = 0; c < hd; c += 8) {
            __m256 x = _mm256_setzero_ps(); /* padding rows: zero queries, never stored */
            if (r < R) x = _mm256_loadu_ps(q + (size_t)t * q_stride + (size_t)g * hd + c);
            if (f16) x = _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
            _mm256_storeu_ps(qr + (size_t)r * hd + c, x);
        }
        for (int c = 0; c < hv; c++) o[(size_t)r * hv + c] = 0.0f;
        m[r] = sinks && r < R ? sinks[g] : -INFINITY;
        l[r] = sinks && r < R ? 1.0f : 0.0f;
    }
#define LO(p) (window > 0 && (p) + 1 > window ? (p) + 1 - window : 0)
    const int last = pos0 + n_tok - 1;
    for (int j0 = LO(pos0); j0 <= last; j0 += T) {
        const int nk = last + 1 - j0 < T ? last + 1 - j0 : T;
        const uint8_t *k = (const uint8_t *)kv->k + (size_t)j0 * kv->k_stride;
        const uint8_t *v = (const uint8_t *)kv->v + (size_t)j0 * kv->v_stride;
        load_keys(kt, k, kv->k_stride, nk, (nk + 15) & ~15, hd, f16);
        const float *vrows = (const float *)v;
        size_t vs = kv->v_stride / sizeof(float);
        if (f16) {
            for (int j = 0; j < nk; j++)
                for (int c = 0; c < hv; c += 8)
                    _mm256_storeu_ps(vt + (size_t)j * hv + c, ld8(v + (size_t)j * kv->v_stride,
                                                                  c, true));
            vrows = vt, vs = (size_t)hv;
        }
        for (int r0 = 0; r0 < R; r0 += MR) {
            /* Keys of this tile some row of the block sees: [ga, gb), tile-relative. */
            const int t0 = r0 / nq, t1 = ((r0 + MR < R ? r0 + MR : R) - 1) / nq;
            const int ga = clampi(LO(pos0 + t0) - j0, 0, nk);
            const int gb = clampi(pos0 + t1 + 1 - j0, 0, nk);
            if (ga >= gb) continue;
            for (int c = ga & ~15; c < gb; c += 16)
                scores_block(s, qr + (size_t)r0 * hd, kt, c, hd, scale);
            for (int i = 0; i < MR; i++) {
                const int r = r0 + i, p = pos0 + r / nq;
                const int a = clampi(LO(p) - j0, 0, nk), b = clampi(p + 1 - j0, 0, nk);
                float *si = s + (size_t)i * T;
                if (r >= R || a >= b) { /* padding, or a row that sees none of these keys */
                    for (int j = ga; j < gb; j++) si[j] = 0.0f;
                    al[r] = 1.0f;
                    continue;
                }
                al[r] = online_row(si, a, b, ga, gb, &m[r], &l[r]);
            }
            float *ob = o + (size_t)r0 * hv;
            int c = 0;
            for (; c + 16 <= hv; c += 16)
                values_block(ob, hv, s, al + r0, vrows, vs, ga, gb, c, 2);
            if (c < hv) values_block(ob, hv, s, al + r0, vrows, vs, ga, gb, c, 1);
        }
    }
#undef LO
    for (int r = 0; r < R; r++) {
        const __m256 inv = _mm256_set1_ps(1.0f / l[r]);
        float *dst = out + (size_t)(r / nq) * out_stride + (size_t)(r % nq) * hv;
        for (int c = 0; c < hv; c += 8)
            _mm256_storeu_ps(dst + c, _mm256_mul_ps(_mm256_loadu_ps(o + (size_t)r * hv + c), inv));
    }
}

void kern__attn_causal_avx2(float *out, size_t out_stride, const float *q, size_t q_stride,
                            int nq, int n_tok, int pos0, const kern_kv_t *kv, int window,
                            const float *sinks, float scale, float *work)
{
    if (kv->type == KERN_F16)
        causal(out, out_stride, q, q_stride, nq, n_tok, pos0, kv, window, sinks, scale, work,
               true);
    else
        causal(out, out_stride, q, q_stride, nq, n_tok, pos0, kv, window, sinks, scale, work,
               false);
}
