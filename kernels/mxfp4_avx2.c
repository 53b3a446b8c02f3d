/* AVX2 dot product of MXFP4 rows with Q8_0 activations (kernels/mxfp4.c has the layout and the
 * scalar reference). The 16-entry table of doubled e2m1 values is a byte shuffle: each nibble
 * indexes it directly, so a block becomes 32 signed bytes with one pshufb per half, and the
 * integer block sum is exact, as in the scalar version; only the f32 accumulation order of the
 * per-block products differs (8 lanes, then a horizontal sum).
 */
#include <immintrin.h>
#include <string.h>

#include "kernels/kern-int.h"

static const int8_t kv_mxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

static inline float e8m0_half(uint8_t e)
{
    uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

float kern__dot_mxfp4_avx2(int64_t n, const void *wv, const void *xv)
{
    const kern_block_mxfp4 *w = wv;
    const kern_block_q8_0 *x = xv;
    const __m128i lut = _mm_loadu_si128((const __m128i *)kv_mxfp4);
    const __m128i m4 = _mm_set1_epi8(0x0f);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / KERN_QK32; i++) {
        const __m128i qs = _mm_loadu_si128((const __m128i *)w[i].qs);
        const __m128i lo = _mm_shuffle_epi8(lut, _mm_and_si128(qs, m4));
        const __m128i hi = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(qs, 4), m4));
        const __m256i q = _mm256_set_m128i(hi, lo); /* elements 0..15, then 16..31 */
        const __m256i y = _mm256_loadu_si256((const __m256i *)x[i].qs);
        /* |q| * (y with q's sign): unsigned times signed pairs, |q| <= 12 keeps int16 exact. */
        const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q));
        const __m256i p32 = _mm256_madd_epi16(p16, ones);
        const float d = e8m0_half(w[i].e) * _cvtsh_ss(x[i].d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(p32), acc);
    }
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
