/* The read-bandwidth probe of moemesh-bench kernels in AVX2: on this class of machine (Zen 3
 * under KVM) one thread streams ~2x faster with 32-byte loads than with SSE2's 16-byte ones, and
 * the kernels use 32-byte loads, so the yardstick must too. Called only when kern_isa_best()
 * reports AVX2. */
#include <immintrin.h>

#include "bench/bench.h"

uint64_t bench__read_sum_avx2(const uint64_t *buf, size_t words)
{
    /* Four independent chains so the loop is bound by loads, not by add latency. */
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 16 <= words; i += 16) {
        s0 = _mm256_add_epi64(s0, _mm256_loadu_si256((const __m256i *)(buf + i)));
        s1 = _mm256_add_epi64(s1, _mm256_loadu_si256((const __m256i *)(buf + i + 4)));
        s2 = _mm256_add_epi64(s2, _mm256_loadu_si256((const __m256i *)(buf + i + 8)));
        s3 = _mm256_add_epi64(s3, _mm256_loadu_si256((const __m256i *)(buf + i + 12)));
    }
    s0 = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
    uint64_t s = (uint64_t)_mm256_extract_epi64(s0, 0) + (uint64_t)_mm256_extract_epi64(s0, 1) +
                 (uint64_t)_mm256_extract_epi64(s0, 2) + (uint64_t)_mm256_extract_epi64(s0, 3);
    for (; i < words; i++) s += buf[i];
    return s;
}
