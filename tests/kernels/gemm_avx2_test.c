/* Tests for kernels/gemm_avx2.c: every entry of the tiled product equals the scalar reference
 * dot of that weight row and activation row (kern_set_isa(KERN_ISA_SCALAR)) up to float
 * summation order, for tile edges (rows and tokens not multiples of the 4 x 4 tile), token
 * counts across the 16-token slice, rows longer than the 256-block chunk of regrouped scales
 * (summed in chunks), and it writes nothing outside the nr x nx block of out.
 *
 * Bound as in dot_avx2_test.c: both sides add the same exact integer block sums scaled in f32,
 * so |gemm - scalar| <= 2 * (nb + 16) * 2^-24 * B, B = sum over elements of 4 * amax(|w| in
 * the block) * |x|. A wrong block, scale or sign moves a result by about amax * |x|. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern-int.h"

#include "trand.h"

static void fill(float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        int64_t g = i / 16;
        v[i] = frand() * (float)(1 + g % 5) + 0.4f * (float)(g % 3) - 0.2f;
    }
}

static double order_bound(kern_type_t wt, const void *wq, const void *xq, int64_t n)
{
    const kern_type_info_t *ti = kern_type_info(wt);
    float *wd = malloc(n * sizeof(float)), *xd = malloc(n * sizeof(float));
    kern_dequantize(wt, wq, wd, n);
    kern_dequantize(ti->dot_type, xq, xd, n);
    double b = 0;
    for (int64_t i0 = 0; i0 < n; i0 += 32) {
        double amax = 0;
        for (int64_t i = i0; i < i0 + 32; i++) amax = fmax(amax, fabs(wd[i]));
        for (int64_t i = i0; i < i0 + 32; i++) b += 4 * amax * fabs(xd[i]);
    }
    free(wd), free(xd);
    return 2.0 * (double)(n / 32 + 16) * 0x1p-24 * b;
}

static void check(kern_type_t wt, int64_t n, int64_t nr, int64_t nx)
{
    const kern_type_info_t *ti = kern_type_info(wt);
    const int64_t nb = n / 32;
    /* Odd strides: rows and activations start unaligned, as slices of real tensors may. */
    const size_t ws = kern_row_bytes(wt, n) + 6, xs = kern_row_bytes(ti->dot_type, n) + 10;
    const size_t os = (size_t)nr + 3;
    float *f = malloc(n * sizeof(float));
    unsigned char *wq = malloc(nr * ws), *xq = malloc(nx * xs);
    float *xd = malloc(nx * nb * sizeof(float)), *out = malloc(nx * os * sizeof(float));
    for (int64_t r = 0; r < nr; r++) fill(f, n), kern_quantize(wt, f, wq + r * ws, n);
    for (int64_t j = 0; j < nx; j++) {
        fill(f, n);
        kern_quantize_act(ti->dot_type, f, xq + j * xs, n);
        const kern_block_q8_0 *b = (const kern_block_q8_0 *)(xq + j * xs);
        for (int64_t k = 0; k < nb; k++) xd[j * nb + k] = kern_fp16_to_fp32(b[k].d);
    }
    for (size_t i = 0; i < nx * os; i++) out[i] = NAN;
    kern__gemm_avx2[wt](n, wq, ws, nr, xq, xs, xd, nx, out, os);
    kern_set_isa(KERN_ISA_SCALAR);
    for (int64_t j = 0; j < nx; j++) {
        for (int64_t r = 0; r < nr; r++) {
            const float s = kern_vec_dot(wt, n, wq + r * ws, xq + j * xs);
            const double tol = order_bound(wt, wq + r * ws, xq + j * xs, n);
            cr_assert(fabs((double)out[j * os + r] - s) <= tol,
                      "%s n=%ld nr=%ld nx=%ld row %ld tok %ld: gemm %.9g scalar %.9g", ti->name,
                      (long)n, (long)nr, (long)nx, (long)r, (long)j, out[j * os + r], s);
        }
        for (size_t r = (size_t)nr; r < os; r++) cr_assert(isnan(out[j * os + r]), "wrote past nr");
    }
    kern_set_isa(KERN_ISA_AVX2);
    free(f), free(wq), free(xq), free(xd), free(out);
}

Test(kern_gemm_avx2, tiles_equal_scalar_dots)
{
    if (kern_set_isa(KERN_ISA_AVX2) < KERN_ISA_AVX2) cr_skip_test("CPU has no AVX2");
    rng_state = 21;
    for (int t = 0; t < KERN_TYPE_COUNT; t++) {
        /* Q8_K activations (K-quant weights) are tested by gemm_kq_test.c. */
        if (!kern__gemm_avx2[t] || kern_type_info(t)->dot_type != KERN_Q8_0) continue;
        const int64_t shapes[][3] = {
            {32, 1, 1},   {96, 2, 4},  {224, 3, 5},  {64, 5, 7},    {1056, 7, 9},
            {160, 1, 70}, {128, 2, 131}, {96, 35, 6}, {3104, 33, 66},
            {64, 4, 16},  {64, 9, 17}, {32, 6, 15}, {8224, 5, 6}, /* 257 blocks: two chunks */
            {16384, 3, 19}, {8192, 2, 3},
            {1056, 7, 1}, {3104, 3, 1}, {2048, 40, 1}, /* m = 1: the streaming row kernel */
        };
        for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
            check((kern_type_t)t, shapes[s][0], shapes[s][1], shapes[s][2]);
    }
}

Test(kern_gemm_avx2, q8_0_has_a_tiled_kernel)
{
    cr_assert_not_null(kern__gemm_avx2[KERN_Q8_0]);
}
