/* AVX2/FMA/F16C attention of a GQA group (kern_attn, scalar reference in kernels/ops.c): the
 * query heads that share one kv head read each cached key and value once for all of them, so
 * the loops are small matrix products Q K^T and P V blocked in registers (4 queries x 2 keys
 * for the scores, 4 queries x 16 dimensions for the values) rather than one dot product per
 * (query, key) bound by its two loads per multiply-add.
 *
 * Same math as the reference up to float summation order: F16 keys and values are widened to
 * f32 (exact), the query is rounded to f16 first when the cache is F16, exactly as llama.cpp
 * does, and each product of f16 values is exact in f32. The exponential is a polynomial of
 * about 1 ulp instead of libm's expf (llama.cpp uses its own vector exp too).
 */
#include <immintrin.h>
#include <math.h>

#include "kernels/kern-int.h"
#include "kernels/kern-avx2.h"

static inline float hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Eight elements starting at element i of a row of f32 or f16 (f16 a compile-time constant at
 * every call site once inlined). */
static inline __attribute__((always_inline)) __m256 ld8(const void *row, int i, const bool f16)
{
    if (f16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i)));
    return _mm256_loadu_ps((const float *)row + i);
}

/* The sums of eight vectors, lane j of the result being the sum of a[j]. */
static inline __m256 hsum8(const __m256 a[8])
{
    __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    t0 = _mm256_hadd_ps(t0, t1);
    t2 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(t0, t2, 0x20),
                         _mm256_permute2f128_ps(t0, t2, 0x31));
}

/* s (n) = softmax(s), in place, n >= 1. */
static void softmax_row(float *s, int n)
{
    __m256 vm = _mm256_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(s + j));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vm), _mm256_extractf128_ps(vm, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float max = _mm_cvtss_f32(m4);
    for (; j < n; j++) max = s[j] > max ? s[j] : max;
    const __m256 vmax = _mm256_set1_ps(max);
    __m256 vs = _mm256_setzero_ps();
    for (j = 0; j + 8 <= n; j += 8) {
        __m256 v = kern__exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vmax));
        _mm256_storeu_ps(s + j, v);
        vs = _mm256_add_ps(vs, v);
    }
    float sum = hsum_ps(vs);
    if (j < n) {
        _Alignas(32) float t[8];
        for (int i = 0; i < 8; i++) t[i] = j + i < n ? s[j + i] - max : -INFINITY;
        _mm256_store_ps(t, kern__exp_neg8(_mm256_load_ps(t)));
        for (int i = 0; j + i < n; i++) {
            s[j + i] = t[i];
            sum += t[i];
        }
    }
    const __m256 inv = _mm256_set1_ps(1.0f / sum);
    for (j = 0; j + 8 <= n; j += 8)
        _mm256_storeu_ps(s + j, _mm256_mul_ps(_mm256_loadu_ps(s + j), inv));
    for (; j < n; j++) s[j] *= 1.0f / sum;
}

/* Scores of queries q (nr <= 4 rows of hd, hd apart) against keys j0, j0 + 1 (or only j0 when
 * two is false) into s rows (n_kv apart). */
static inline __attribute__((always_inline)) void scores_tile(
    const float *q, int nr, const uint8_t *k, size_t k_stride, int j0, bool two, int hd,
    float scale, float *s, int n_kv, const bool f16)
{
    const void *k0 = k + (size_t)j0 * k_stride, *k1 = two ? k + (size_t)(j0 + 1) * k_stride : k0;
    __m256 a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
    for (int c = 0; c < hd; c += 8) {
        const __m256 v0 = ld8(k0, c, f16), v1 = ld8(k1, c, f16);
        for (int r = 0; r < 4; r++) {
            if (r >= nr) break;
            const __m256 qv = _mm256_loadu_ps(q + (size_t)r * hd + c);
            a[2 * r] = _mm256_fmadd_ps(qv, v0, a[2 * r]);
            a[2 * r + 1] = _mm256_fmadd_ps(qv, v1, a[2 * r + 1]);
        }
    }
    _Alignas(32) float t[8];
    _mm256_store_ps(t, _mm256_mul_ps(hsum8(a), _mm256_set1_ps(scale)));
    for (int r = 0; r < nr; r++) {
        s[(size_t)r * n_kv + j0] = t[2 * r];
        if (two) s[(size_t)r * n_kv + j0 + 1] = t[2 * r + 1];
    }
}

static inline __attribute__((always_inline)) void attn_group(
    float *out, size_t out_stride, const float *q, int nq, const uint8_t *k, size_t k_stride,
    const uint8_t *v, size_t v_stride, int n_kv, int hd, int hv, float scale, float *work,
    const bool f16)
{
    float *s = work;                      /* (nq, n_kv) scores, then probabilities */
    float *qr = work + (size_t)nq * n_kv; /* (nq, hd) the queries, rounded for an f16 cache */
    for (int r = 0; r < nq; r++)
        for (int c = 0; c < hd; c += 8) {
            __m256 x = _mm256_loadu_ps(q + (size_t)r * hd + c);
            if (f16) x = _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
            _mm256_storeu_ps(qr + (size_t)r * hd + c, x);
        }
    for (int r0 = 0; r0 < nq; r0 += 4) {
        const int nr = nq - r0 < 4 ? nq - r0 : 4;
        int j = 0;
        for (; j + 2 <= n_kv; j += 2)
            scores_tile(qr + (size_t)r0 * hd, nr, k, k_stride, j, true, hd, scale,
                        s + (size_t)r0 * n_kv, n_kv, f16);
        if (j < n_kv)
            scores_tile(qr + (size_t)r0 * hd, nr, k, k_stride, j, false, hd, scale,
                        s + (size_t)r0 * n_kv, n_kv, f16);
    }
    for (int r = 0; r < nq; r++) softmax_row(s + (size_t)r * n_kv, n_kv);
    for (int r0 = 0; r0 < nq; r0 += 4) {
        const int nr = nq - r0 < 4 ? nq - r0 : 4;
        for (int c = 0; c < hv; c += 16) {
            const bool two = c + 16 <= hv;
            __m256 a[8];
            for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
            for (int j = 0; j < n_kv; j++) {
                const void *vr = v + (size_t)j * v_stride;
                const __m256 v0 = ld8(vr, c, f16), v1 = two ? ld8(vr, c + 8, f16) : v0;
                for (int r = 0; r < 4; r++) {
                    if (r >= nr) break;
                    const __m256 p = _mm256_broadcast_ss(s + (size_t)(r0 + r) * n_kv + j);
                    a[2 * r] = _mm256_fmadd_ps(p, v0, a[2 * r]);
                    a[2 * r + 1] = _mm256_fmadd_ps(p, v1, a[2 * r + 1]);
                }
            }
            for (int r = 0; r < nr; r++) {
                float *o = out + (size_t)(r0 + r) * out_stride + c;
                _mm256_storeu_ps(o, a[2 * r]);
                if (two) _mm256_storeu_ps(o + 8, a[2 * r + 1]);
            }
        }
    }
}

void kern__attn_avx2(float *out, size_t out_stride, const float *q, int nq, const void *k,
                     size_t k_stride, const void *v, size_t v_stride, kern_type_t kv_type,
                     int n_kv, int hd, int hv, float scale, float *work)
{
    if (kv_type == KERN_F16)
        attn_group(out, out_stride, q, nq, k, k_stride, v, v_stride, n_kv, hd, hv, scale, work,
                   true);
    else
        attn_group(out, out_stride, q, nq, k, k_stride, v, v_stride, n_kv, hd, hv, scale, work,
                   false);
}
