/* Blocked quantized GEMM for batches (prefill, experts with many tokens): a tile of RM weight
 * rows x RN activation rows is computed block by block, so every loaded weight block is used
 * for RN tokens and every activation block for RM rows, and the per-block float scales of the
 * activations come pre-converted (xd) instead of being widened from fp16 for every pair.
 *
 * Q8_0 x Q8_0, per pair and block of 32: the sign of the weight moved onto the activation
 * (vpsignb), unsigned |w| times signed x by maddubs, pairs widened by madd, then scaled in
 * float, exactly the integer sums of kern__dot_avx2's dot_q8_0 (so results differ from the
 * scalar table only by the order of float additions).
 *
 * A single activation row (decode) takes a streaming row kernel instead (gemv_row_q8_0).
 *
 * Loop order: rows in slices of SLICE_ROWS (their blocks stay in L1/L2) times activations in
 * slices of SLICE_TOK tokens (in L2), tiles inside. With RM = 2 and RN = 4 the eight
 * accumulators, two |w| vectors and the temporaries fit AVX2's sixteen registers.
 */
#include <immintrin.h>

#include "kernels/kern-int.h"

#define QK KERN_QK32
#define RM 2
#define RN 4
#define SLICE_ROWS 32
#define SLICE_TOK 64

static inline float hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One tile of nr <= RM rows by nx <= RN activations; constants in each instance so the
 * accumulators live in registers. */
static inline __attribute__((always_inline)) void tile_q8_0(int64_t nb, const uint8_t *w,
                                                             size_t ws, const uint8_t *xq,
                                                             size_t xs, const float *xd,
                                                             size_t xds, float *out, size_t os,
                                                             const int nr, const int nx)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[RM][RN];
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nx; j++) acc[r][j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        __m256i q[RM], aq[RM];
        __m256 dw[RM];
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            const kern_block_q8_0 *b = (const kern_block_q8_0 *)(w + r * ws) + i;
            q[r] = _mm256_loadu_si256((const __m256i *)b->qs);
            aq[r] = _mm256_sign_epi8(q[r], q[r]);
            dw[r] = _mm256_set1_ps(_cvtsh_ss(b->d));
        }
#pragma GCC unroll 4
        for (int j = 0; j < nx; j++) {
            const kern_block_q8_0 *b = (const kern_block_q8_0 *)(xq + j * xs) + i;
            const __m256i y = _mm256_loadu_si256((const __m256i *)b->qs);
            const __m256 dx = _mm256_broadcast_ss(xd + j * xds + i);
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) {
                __m256i p = _mm256_maddubs_epi16(aq[r], _mm256_sign_epi8(y, q[r]));
                p = _mm256_madd_epi16(p, ones);
                acc[r][j] = _mm256_fmadd_ps(_mm256_mul_ps(dw[r], dx), _mm256_cvtepi32_ps(p),
                                            acc[r][j]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nx; j++) out[j * os + r] = hsum_ps(acc[r][j]);
}

#define TILE_CASE(NR, NX) \
    case (NR) * 8 + (NX): tile_q8_0(nb, w, ws, xq, xs, xd, xds, out, os, NR, NX); break;

static void tile_any(int64_t nb, const uint8_t *w, size_t ws, const uint8_t *xq, size_t xs,
                     const float *xd, size_t xds, float *out, size_t os, int nr, int nx)
{
    switch (nr * 8 + nx) {
        TILE_CASE(2, 4) TILE_CASE(2, 3) TILE_CASE(2, 2) TILE_CASE(2, 1)
        TILE_CASE(1, 4) TILE_CASE(1, 3) TILE_CASE(1, 2) default: tile_q8_0(nb, w, ws, xq, xs, xd,
                                                                            xds, out, os, 1, 1);
    }
}
_Static_assert(RM == 2 && RN == 4, "tile_any covers 1..RM x 1..RN");

/* One weight row against one activation (decode): the weights stream from DRAM once, so the
 * loop is the single-row dot of dot_avx2.c with the activation scales pre-converted (xd) and
 * each weight scale widened alone, which measured ~20 against ~16 GB/s on L2-resident rows,
 * and software prefetch 2 KiB ahead covering every line of the 136 bytes a pass consumes
 * (the hardware prefetcher stops at 4 KiB pages). */
static float gemv_row_q8_0(int64_t nb, const kern_block_q8_0 *w, const kern_block_q8_0 *x,
                           const float *xd)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 4 <= nb; i += 4) {
        const char *pf = (const char *)(w + i) + 2048;
        _mm_prefetch(pf, _MM_HINT_T0);
        _mm_prefetch(pf + 64, _MM_HINT_T0);
        _mm_prefetch(pf + 128, _MM_HINT_T0);
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)w[i + k].qs);
            const __m256i y = _mm256_loadu_si256((const __m256i *)x[i + k].qs);
            __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q));
            p = _mm256_madd_epi16(p, ones);
            const __m256 s = _mm256_mul_ps(_mm256_broadcast_ss(xd + i + k),
                                           _mm256_set1_ps(_cvtsh_ss(w[i + k].d)));
            a[k] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(p), a[k]);
        }
    }
    for (; i < nb; i++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)w[i].qs);
        const __m256i y = _mm256_loadu_si256((const __m256i *)x[i].qs);
        __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q));
        p = _mm256_madd_epi16(p, ones);
        const __m256 s = _mm256_set1_ps(xd[i] * _cvtsh_ss(w[i].d));
        a[0] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(p), a[0]);
    }
    return hsum_ps(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
}

static void gemm_q8_0(int64_t n, const void *wv, size_t ws, int64_t nr, const void *xv,
                      size_t xs, const float *xd, int64_t nx, float *out, size_t os)
{
    const int64_t nb = n / QK;
    const uint8_t *w = wv, *xq = xv;
    if (nx == 1) {
        for (int64_t r = 0; r < nr; r++)
            out[r] = gemv_row_q8_0(nb, (const kern_block_q8_0 *)(w + r * ws), xv, xd);
        return;
    }
    for (int64_t r0 = 0; r0 < nr; r0 += SLICE_ROWS) {
        const int64_t r1 = r0 + SLICE_ROWS < nr ? r0 + SLICE_ROWS : nr;
        for (int64_t j0 = 0; j0 < nx; j0 += SLICE_TOK) {
            const int64_t j1 = j0 + SLICE_TOK < nx ? j0 + SLICE_TOK : nx;
            for (int64_t r = r0; r < r1; r += RM) {
                const int mr = r1 - r < RM ? (int)(r1 - r) : RM;
                for (int64_t j = j0; j < j1; j += RN) {
                    const int mx = j1 - j < RN ? (int)(j1 - j) : RN;
                    tile_any(nb, w + r * ws, ws, xq + j * xs, xs, xd + j * nb, (size_t)nb,
                             out + j * os + r, os, mr, mx);
                }
            }
        }
    }
}

const kern__gemm_fn kern__gemm_avx2[KERN_TYPE_COUNT] = {
    [KERN_Q8_0] = gemm_q8_0,
    [KERN_Q4_K] = kern__gemm_q4_k_avx2,
    [KERN_Q5_K] = kern__gemm_q5_k_avx2,
    [KERN_Q6_K] = kern__gemm_q6_k_avx2,
    [KERN_Q4_0] = kern__gemm_q4_0_avx2,
};
