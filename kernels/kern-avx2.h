/* kernels-internal helpers for the AVX2 files only (included after <immintrin.h> by files
 * compiled with the AVX2 flags): small vector routines more than one kernel uses.
 */
#ifndef MOEMESH_KERN_AVX2_H
#define MOEMESH_KERN_AVX2_H

#include <immintrin.h>

/* e^x for x <= 0: x = n ln2 + r with |r| <= ln2/2, e^r by its Taylor polynomial to degree 7
 * (remainder below 2^-27 relative), scaled by 2^n through the exponent bits. Inputs below
 * -87.3 are clamped there, giving about 1e-38 instead of a denormal or 0: nothing next to the
 * largest term, which is 1. */
static inline __m256 kern__exp_neg8(__m256 x)
{
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
                                                         _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

#endif
