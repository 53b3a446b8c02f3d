/* Tests for kernels/matmul.c against a naive product of the dequantized weights with the
 * dequantized rounded activations (what both paths multiply), summed in double, for every
 * compute type, m on both sides of the BLAS thresholds (16, and 128 for types with a multi-row
 * kernel), pools of 1 and 2 threads and a NULL pool, strided weight rows.
 *
 * Bound: the dot path sums n/block block terms in f32, sgemm n products in f32; each is within
 * (n + 16) * u * B of the exact sum, u = 2^-24, B = sum |terms| <= sum 4 * amax(block of w) *
 * |x_i| (see dot_avx2_test.c for the factor 4). For n ~ 800 that is ~5e-5 * B, while results are
 * ~B / sqrt(n) ~ 0.03 B: a wrong row, column or activation row is far outside it. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern.h"

#include "trand.h"

static const kern_type_t types[] = {
    KERN_F32,  KERN_F16,  KERN_BF16, KERN_Q4_0, KERN_Q4_1, KERN_Q5_0, KERN_Q5_1,
    KERN_Q8_0, KERN_Q2_K, KERN_Q3_K, KERN_Q4_K, KERN_Q5_K, KERN_Q6_K,
};

static void check_type(kern_type_t wt, int64_t m, kern_pool_t *pool)
{
    const kern_type_info_t *ti = kern_type_info(wt);
    /* d above the 64-row BLAS tile, so out's leading dimension and tile offsets matter. */
    const int64_t blk = ti->block, n = blk == 1 ? 801 : blk == 32 ? 25 * 32 : 3 * 256, d = 101;
    const size_t rb = kern_row_bytes(wt, n), stride = rb + 40; /* padded rows */
    float *wf = malloc(d * n * sizeof(float)), *x = malloc(m * n * sizeof(float));
    float *wd = malloc(d * n * sizeof(float)), *xd = malloc(m * n * sizeof(float));
    float *out = malloc(m * d * sizeof(float));
    unsigned char *w = calloc(d, stride), *xq = malloc(kern_row_bytes(ti->dot_type, n));
    for (int64_t i = 0; i < d * n; i++)
        wf[i] = frand() * (float)(1 + (i / 16) % 4) + 0.1f * (float)((i / 32) % 3);
    for (int64_t i = 0; i < m * n; i++) x[i] = frand();
    for (int64_t r = 0; r < d; r++) {
        kern_quantize(wt, wf + r * n, w + r * stride, n);
        kern_dequantize(wt, w + r * stride, wd + r * n, n);
    }
    for (int64_t i = 0; i < m; i++) {
        kern_quantize_act(ti->dot_type, x + i * n, xq, n);
        kern_dequantize(ti->dot_type, xq, xd + i * n, n);
    }
    void *work = aligned_alloc(64, (kern_matmul_work_size(wt, m, n) + 63) & ~(size_t)63);
    for (int64_t i = 0; i < m * d; i++) out[i] = NAN; /* every element must be written */
    kern_matmul(pool, out, w, stride, wt, x, m, n, d, work);
    const int64_t eb = blk < 32 ? 32 : blk;
    for (int64_t i = 0; i < m; i++) {
        for (int64_t r = 0; r < d; r++) {
            double s = 0, b = 0;
            for (int64_t k0 = 0; k0 < n; k0 += eb) {
                double amax = 0;
                for (int64_t k = k0; k < k0 + eb && k < n; k++)
                    amax = fmax(amax, fabs(wd[r * n + k]));
                for (int64_t k = k0; k < k0 + eb && k < n; k++) {
                    s += (double)wd[r * n + k] * xd[i * n + k];
                    b += 4 * amax * fabs(xd[i * n + k]);
                }
            }
            const double bound = (double)(n + 16) * 0x1p-24 * b, got = out[i * d + r];
            cr_assert(fabs(got - s) <= bound, "%s m=%ld threads=%d out[%ld][%ld] %.9g want %.9g",
                      ti->name, (long)m, kern_pool_size(pool), (long)i, (long)r, got, s);
        }
    }
    free(wf), free(x), free(wd), free(xd), free(out), free(w), free(xq), free(work);
}

static void check_all(kern_pool_t *pool)
{
    rng_state = 21;
    const int64_t ms[] = {1, 3, 7, 40, 130};
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++)
        for (size_t j = 0; j < 5; j++) check_type(types[t], ms[j], pool);
}

Test(kern_matmul, matches_naive_without_pool) { check_all(NULL); }

Test(kern_matmul, matches_naive_with_one_thread)
{
    kern_pool_t *pool = kern_pool_new(1);
    check_all(pool);
    kern_pool_free(pool);
}

Test(kern_matmul, matches_naive_with_two_threads)
{
    kern_pool_t *pool = kern_pool_new(2);
    check_all(pool);
    kern_pool_free(pool);
}

Test(kern_matmul, matches_naive_on_the_scalar_path)
{
    kern_set_isa(KERN_ISA_SCALAR);
    kern_pool_t *pool = kern_pool_new(2);
    check_all(pool);
    kern_pool_free(pool);
}
