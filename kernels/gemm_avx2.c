/* Blocked quantized GEMM for batches (prefill, experts with many tokens): a tile of RM weight
 * rows x GT activation rows is computed block by block, so every loaded weight block is used
 * for GT tokens and every activation block for RM rows.
 *
 * Q8_0 x Q8_0, per pair and block of 32: the sign of the weight moved onto the activation
 * (vpsignb), unsigned |w| times signed x by maddubs, pairs widened by madd: exactly the integer
 * sums of kern__dot_avx2's dot_q8_0, so results differ from the scalar table only by the order
 * of float additions.
 *
 * The float side is where a plain tile loses: on this Zen core the multiplies (maddubs, madd,
 * mul, fma) share two pipes, and scaling each pair's eight partial sums on its own costs a
 * cvt, a mul and an fma per pair and block, half the multiplies of the block. Here the four
 * tokens' sums of one row are first folded into one vector (unpack + add, which run on the
 * other pipes): lanes j and j + 4 hold halves of token j's block sum. One cvt, one mul by the
 * row's weight scale times the four tokens' scales, and one fma then serve four pairs. Measured
 * on 512 x 2048 -> 768, one thread: 68-74 against 56-61 GFLOP/s for the 2 x 4 tile with a scale
 * per pair (the same run; the machine was shared, so only the ratio holds).
 *
 * The four tokens' scales of a block must sit side by side for that mul, so each slice of
 * SLICE_TOK tokens gets its scales regrouped on the stack (xg), KC blocks at a time; a row
 * longer than KC blocks is summed in KC-block chunks into out.
 *
 * A single activation row (decode) takes a streaming row kernel instead (gemv_row_q8_0).
 */
#include <immintrin.h>
#include <stdbool.h>

#include "kernels/kern-int.h"

#define QK KERN_QK32
#define RM 4          /* weight rows per tile */
#define GT 4          /* tokens per tile: one lane quad of the folded sums */
#define SLICE_TOK 16  /* tokens whose scales are regrouped at once */
#define KC 256        /* blocks per chunk of the regrouped scales: xg is 16 KiB */

static inline float hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Lane j of each 128-bit half: the sum of that half of t_j (a 4 x 4 transpose-add). */
static inline __m256i fold4(__m256i t0, __m256i t1, __m256i t2, __m256i t3)
{
    const __m256i s01 = _mm256_add_epi32(_mm256_unpacklo_epi32(t0, t1),
                                         _mm256_unpackhi_epi32(t0, t1));
    const __m256i s23 = _mm256_add_epi32(_mm256_unpacklo_epi32(t2, t3),
                                         _mm256_unpackhi_epi32(t2, t3));
    return _mm256_add_epi32(_mm256_unpacklo_epi64(s01, s23), _mm256_unpackhi_epi64(s01, s23));
}

/* maddubs + madd of |w| with x carrying w's sign: the exact int32 partial sums of a block. */
static inline __m256i pair_sums(__m256i aq, __m256i q, __m256i y)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(aq, _mm256_sign_epi8(y, q)),
                             _mm256_set1_epi16(1));
}

/* One tile: nr <= RM rows (ws bytes apart, already offset to the chunk's first block) by the
 * GT activations y[0..3] over nb blocks; xg holds block i's four token scales at
 * xg[i * SLICE_TOK]. Only the first nt tokens are stored (the others are padding that repeats
 * a real row); add sums into out instead of storing (later chunks of a long row). nr is a
 * constant in each instance so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void tile_q8_0(int64_t nb, const uint8_t *w,
                                                             size_t ws,
                                                             const kern_block_q8_0 *const y[GT],
                                                             const float *xg, float *out,
                                                             size_t os, const int nr, int nt,
                                                             bool add)
{
    __m256 acc[RM];
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const __m256i y0 = _mm256_loadu_si256((const __m256i *)y[0][i].qs);
        const __m256i y1 = _mm256_loadu_si256((const __m256i *)y[1][i].qs);
        const __m256i y2 = _mm256_loadu_si256((const __m256i *)y[2][i].qs);
        const __m256i y3 = _mm256_loadu_si256((const __m256i *)y[3][i].qs);
        const __m256 dx = _mm256_broadcast_ps((const __m128 *)(xg + i * SLICE_TOK));
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) {
            const kern_block_q8_0 *b = (const kern_block_q8_0 *)(w + r * ws) + i;
            const __m256i q = _mm256_loadu_si256((const __m256i *)b->qs);
            const __m256i aq = _mm256_sign_epi8(q, q);
            const __m256i h = fold4(pair_sums(aq, q, y0), pair_sums(aq, q, y1),
                                    pair_sums(aq, q, y2), pair_sums(aq, q, y3));
            const __m256 s = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(b->d)), dx);
            acc[r] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(h), acc[r]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++) {
        float v[8];
        _mm256_storeu_ps(v, acc[r]);
        for (int j = 0; j < nt; j++) {
            const float sum = v[j] + v[j + 4];
            out[j * os + r] = add ? out[j * os + r] + sum : sum;
        }
    }
}

static void tile_any(int64_t nb, const uint8_t *w, size_t ws, const kern_block_q8_0 *const y[GT],
                     const float *xg, float *out, size_t os, int nr, int nt, bool add)
{
    switch (nr) {
    case 4: tile_q8_0(nb, w, ws, y, xg, out, os, 4, nt, add); break;
    case 3: tile_q8_0(nb, w, ws, y, xg, out, os, 3, nt, add); break;
    case 2: tile_q8_0(nb, w, ws, y, xg, out, os, 2, nt, add); break;
    default: tile_q8_0(nb, w, ws, y, xg, out, os, 1, nt, add); break;
    }
}
_Static_assert(RM == 4, "tile_any covers 1..RM rows");

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
    float xg[KC * SLICE_TOK];
    for (int64_t k0 = 0; k0 < nb; k0 += KC) {
        const int64_t kb = nb - k0 < KC ? nb - k0 : KC;
        const size_t off = (size_t)k0 * sizeof(kern_block_q8_0);
        for (int64_t j0 = 0; j0 < nx; j0 += SLICE_TOK) {
            const int nt = nx - j0 < SLICE_TOK ? (int)(nx - j0) : SLICE_TOK;
            /* Padding tokens get scale 0 and repeat the slice's first row, so their lanes are
             * finite and every load stays inside x. */
            for (int64_t i = 0; i < kb; i++)
                for (int j = 0; j < SLICE_TOK; j++)
                    xg[i * SLICE_TOK + j] = j < nt ? xd[(j0 + j) * nb + k0 + i] : 0.0f;
            for (int64_t r = 0; r < nr; r += RM) {
                const int mr = nr - r < RM ? (int)(nr - r) : RM;
                for (int g = 0; g < nt; g += GT) {
                    const kern_block_q8_0 *y[GT];
                    for (int j = 0; j < GT; j++) {
                        const int64_t tok = j0 + (g + j < nt ? g + j : 0);
                        y[j] = (const kern_block_q8_0 *)(xq + tok * xs + off);
                    }
                    tile_any(kb, w + r * ws + off, ws, y, xg + g, out + (j0 + g) * os + r, os,
                             mr, nt - g < GT ? nt - g : GT, k0 > 0);
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
