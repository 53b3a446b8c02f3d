/* trand.h: the kernels tests' deterministic random numbers. Each test file seeds rng_state
 * itself, so a failure reproduces from the file alone. */
#ifndef MOEMESH_TESTS_KERNELS_TRAND_H
#define MOEMESH_TESTS_KERNELS_TRAND_H

#include <stdint.h>

static uint64_t rng_state;

/* splitmix64's next output. */
static inline uint64_t trand_u64(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1), from the top 53 bits. */
static inline float frand(void)
{
    return (float)((double)(trand_u64() >> 11) / 4503599627370496.0 - 1.0);
}

#endif
