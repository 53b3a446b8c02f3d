/* Tests for kernels/gemm_kq_avx2.c: every entry of the tiled Q4_K / Q5_K / Q6_K / Q4_0 product
 * equals the scalar reference dot of that weight row and activation row
 * (kern_set_isa(KERN_ISA_SCALAR)) up to float summation order, for every remainder of the
 * 2 x 4 tile (rows 1..5 and tokens 1..9), tokens across the 64-token slice (63, 64, 65, 131),
 * rows of 1..4 superblocks (Q4_0 also rows that end inside a superblock), odd strides; it writes
 * nothing outside the nr x nx block of out. Then kern_matmul with each path forced
 * (kern__matmul_path) gives the same products, so benchmarks compare equal work.
 *
 * Bound as in dot_avx2_test.c: both sides add the same exact integer sums scaled in f32, so
 * |gemm - scalar| <= 2 * (nb + 16) * 2^-24 * B, B = sum over elements of 4 * amax(|w| in the
 * block) * |x|, nb the number of blocks. Relative to B that is ~1e-6; a wrong quant, scale, min
 * or sign moves a result by about amax * |x| for that element, far outside it. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern-int.h"

#include "trand.h"

/* Scale and offset change every 16 elements, so sub-block scales and mins all differ; every
 * 7th row is shifted positive so Q4_K/Q5_K mins and Q6_K's top quants are exercised. */
static void fill(float *v, int64_t n, int row)
{
    for (int64_t i = 0; i < n; i++) {
        int64_t g = i / 16;
        v[i] = frand() * (float)(1 + g % 5) + 0.4f * (float)(g % 3) - 0.2f + (row % 7 == 3);
    }
}

static double order_bound(kern_type_t wt, const void *wq, const void *xq, int64_t n)
{
    const kern_type_info_t *ti = kern_type_info(wt);
    float *wd = malloc(n * sizeof(float)), *xd = malloc(n * sizeof(float));
    kern_dequantize(wt, wq, wd, n);
    kern_dequantize(ti->dot_type, xq, xd, n);
    double b = 0;
    for (int64_t i0 = 0; i0 < n; i0 += ti->block) {
        double amax = 0;
        for (int64_t i = i0; i < i0 + ti->block; i++) amax = fmax(amax, fabs(wd[i]));
        for (int64_t i = i0; i < i0 + ti->block; i++) b += 4 * amax * fabs(xd[i]);
    }
    free(wd), free(xd);
    return 2.0 * (double)(n / ti->block + 16) * 0x1p-24 * b;
}

static void need_avx2(void)
{
    if (kern_set_isa(KERN_ISA_AVX2) < KERN_ISA_AVX2) cr_skip_test("CPU has no AVX2");
}

static void check(kern_type_t wt, int64_t n, int64_t nr, int64_t nx)
{
    const kern_type_info_t *ti = kern_type_info(wt);
    const int64_t nb = n / 32;
    /* Odd strides, so rows start unaligned as slices of real tensors may, yet aligned for the
     * block structs' fields (Q8_K's f32 d: 4 bytes; fp16 fields: 2). */
    const size_t ws = kern_row_bytes(wt, n) + 6, xs = kern_row_bytes(ti->dot_type, n) + 12;
    const size_t os = (size_t)nr + 3;
    float *f = malloc(n * sizeof(float));
    unsigned char *wq = malloc(nr * ws), *xq = malloc(nx * xs);
    float *xd = malloc(nx * nb * sizeof(float)), *out = malloc(nx * os * sizeof(float));
    for (int64_t r = 0; r < nr; r++) fill(f, n, (int)r), kern_quantize(wt, f, wq + r * ws, n);
    for (int64_t j = 0; j < nx; j++) {
        fill(f, n, 0);
        kern_quantize_act(ti->dot_type, f, xq + j * xs, n);
        if (ti->dot_type == KERN_Q8_0) {
            const kern_block_q8_0 *b = (const kern_block_q8_0 *)(xq + j * xs);
            for (int64_t k = 0; k < nb; k++) xd[j * nb + k] = kern_fp16_to_fp32(b[k].d);
        }
    }
    for (size_t i = 0; i < nx * os; i++) out[i] = NAN;
    /* Q8_K activations carry f32 scales: their kernels must not need xd. */
    kern__gemm_avx2[wt](n, wq, ws, nr, xq, xs, ti->dot_type == KERN_Q8_0 ? xd : NULL, nx, out,
                        os);
    kern_set_isa(KERN_ISA_SCALAR);
    for (int64_t j = 0; j < nx; j++) {
        for (int64_t r = 0; r < nr; r++) {
            const float s = kern_vec_dot(wt, n, wq + r * ws, xq + j * xs);
            const double tol = order_bound(wt, wq + r * ws, xq + j * xs, n);
            cr_assert(fabs((double)out[j * os + r] - s) <= tol,
                      "%s n=%ld nr=%ld nx=%ld row %ld tok %ld: gemm %.9g scalar %.9g (tol %.3g)",
                      ti->name, (long)n, (long)nr, (long)nx, (long)r, (long)j, out[j * os + r], s,
                      tol);
        }
        for (size_t r = (size_t)nr; r < os; r++) cr_assert(isnan(out[j * os + r]), "wrote past nr");
    }
    kern_set_isa(KERN_ISA_AVX2);
    free(f), free(wq), free(xq), free(xd), free(out);
}

static const kern_type_t kq_types[] = {KERN_Q4_K, KERN_Q5_K, KERN_Q6_K, KERN_Q4_0};

Test(kern_gemm_kq, registered_for_the_q4_k_m_types)
{
    for (size_t t = 0; t < sizeof(kq_types) / sizeof(kq_types[0]); t++)
        cr_assert_not_null(kern__gemm_avx2[kq_types[t]], "%s", kern_type_info(kq_types[t])->name);
}

Test(kern_gemm_kq, every_tile_remainder_equals_scalar_dots)
{
    need_avx2();
    rng_state = 5;
    for (size_t t = 0; t < sizeof(kq_types) / sizeof(kq_types[0]); t++)
        for (int64_t sb = 1; sb <= 4; sb++)
            for (int64_t nr = 1; nr <= 5; nr++)
                for (int64_t nx = 1; nx <= 9; nx++) check(kq_types[t], 256 * sb, nr, nx);
}

Test(kern_gemm_kq, token_slices_and_long_rows_equal_scalar_dots)
{
    need_avx2();
    rng_state = 6;
    const int64_t shapes[][3] = {
        {512, 3, 63}, {256, 2, 64}, {768, 5, 65}, {256, 1, 131}, {2048, 7, 10}, {4096, 2, 5},
    };
    for (size_t t = 0; t < sizeof(kq_types) / sizeof(kq_types[0]); t++)
        for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
            check(kq_types[t], shapes[s][0], shapes[s][1], shapes[s][2]);
}

/* Q4_0 rows are whole blocks of 32, not of 256: the last staged superblock is partial. */
Test(kern_gemm_kq, q4_0_rows_ending_inside_a_superblock)
{
    need_avx2();
    rng_state = 7;
    const int64_t ns[] = {32, 96, 224, 288, 800, 1056};
    for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++)
        for (int64_t nr = 1; nr <= 3; nr++)
            for (int64_t nx = 1; nx <= 5; nx++) check(KERN_Q4_0, ns[i], nr, nx);
    check(KERN_Q4_0, 800, 4, 70);
}

/* kern_matmul with the path forced to the multi-row dot, the tile and BLAS: the same products
 * within two order bounds of each other (each is within one of the exact sum). */
Test(kern_gemm_kq, forced_paths_agree)
{
    need_avx2();
    rng_state = 8;
    const int64_t n = 512, d = 37, m = 20;
    kern_pool_t *pool = kern_pool_new(2);
    for (size_t t = 0; t < sizeof(kq_types) / sizeof(kq_types[0]); t++) {
        const kern_type_t wt = kq_types[t];
        const kern_type_info_t *ti = kern_type_info(wt);
        const size_t rb = kern_row_bytes(wt, n);
        unsigned char *w = malloc(d * rb), *xq = malloc(kern_row_bytes(ti->dot_type, n));
        float *f = malloc(n * sizeof(float)), *x = malloc(m * n * sizeof(float));
        float *out[3];
        for (int64_t r = 0; r < d; r++) fill(f, n, (int)r), kern_quantize(wt, f, w + r * rb, n);
        for (int64_t j = 0; j < m; j++) fill(x + j * n, n, 0);
        void *work = aligned_alloc(64, (kern_matmul_work_size(wt, m, n) + 63) & ~(size_t)63);
        const kern__path_t paths[3] = {KERN__PATH_DOT, KERN__PATH_GEMM, KERN__PATH_BLAS};
        for (int p = 0; p < 3; p++) {
            out[p] = malloc(m * d * sizeof(float));
            kern__matmul_path = paths[p];
            kern_matmul(pool, out[p], w, rb, wt, x, m, n, d, work);
        }
        kern__matmul_path = KERN__PATH_AUTO;
        for (int64_t j = 0; j < m; j++) {
            kern_quantize_act(ti->dot_type, x + j * n, xq, n);
            for (int64_t r = 0; r < d; r++) {
                /* sgemm sums n products, not n / block block terms: its own bound. */
                const double tol = order_bound(wt, w + r * rb, xq, n) * (double)(n + 16) /
                                   (double)(n / ti->block + 16);
                for (int p = 1; p < 3; p++)
                    cr_assert(fabs((double)out[p][j * d + r] - out[0][j * d + r]) <= tol,
                              "%s path %d tok %ld row %ld: %.9g vs dot %.9g", ti->name, p,
                              (long)j, (long)r, out[p][j * d + r], out[0][j * d + r]);
            }
        }
        for (int p = 0; p < 3; p++) free(out[p]);
        free(w), free(xq), free(f), free(x), free(work);
    }
    kern_pool_free(pool);
}
