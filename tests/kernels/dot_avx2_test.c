/* Tests for kernels/dot_avx2.c: the AVX2 activation rounding equals the scalar one bit for bit,
 * and every AVX2 dot equals the scalar dot (kern_set_isa(KERN_ISA_SCALAR)) up to float summation
 * order, on seeded rows of 1, 7, 33 and 97 blocks.
 *
 * Bound: both sides sum the same exact integer block sums scaled in f32, in different orders, so
 * each differs from the exact sum by at most (additions + a few roundings per term) * u * B,
 * u = 2^-24, B = sum of |terms|. B is bounded by 4 * amax(|w| in the block) * |x_i| summed over
 * elements: scale part <= 2 amax (Q4_1/K mins shift the range), min part <= amax, Q6_K's
 * unsigned form <= 2 amax. Hence |avx2 - scalar| <= 2 * (nb + 16) * u * B. A wrong nibble, bit
 * or scale moves the result by about amax * |x|, far above this for nb <= 97. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern-int.h"

#include "trand.h"

static void need_avx2(void)
{
    if (kern_set_isa(KERN_ISA_AVX2) < KERN_ISA_AVX2) cr_skip_test("CPU has no AVX2");
}

/* Values whose scale and offset change every 16 elements, so per-block scales and mins differ. */
static void fill(float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        int64_t g = i / 16;
        v[i] = frand() * (float)(1 + g % 5) + 0.4f * (float)(g % 3) - 0.2f;
    }
}

/* The bound of the header comment for one row: 2 * (nb + 16) * 2^-24 * B. */
static double order_bound(kern_type_t wt, const void *wq, const void *xq, int64_t n)
{
    const kern_type_info_t *ti = kern_type_info(wt);
    const int64_t blk = ti->block < 32 ? 32 : ti->block;
    float *wd = malloc(n * sizeof(float)), *xd = malloc(n * sizeof(float));
    kern_dequantize(wt, wq, wd, n);
    kern_dequantize(ti->dot_type, xq, xd, n);
    double b = 0;
    for (int64_t i0 = 0; i0 < n; i0 += blk) {
        double amax = 0;
        for (int64_t i = i0; i < i0 + blk && i < n; i++) amax = fmax(amax, fabs(wd[i]));
        for (int64_t i = i0; i < i0 + blk && i < n; i++) b += 4 * amax * fabs(xd[i]);
    }
    free(wd), free(xd);
    return 2.0 * (double)(n / ti->block + 16) * 0x1p-24 * b;
}

static const kern_type_t dot_types[] = {
    KERN_F32,  KERN_F16,  KERN_BF16, KERN_Q8_0, KERN_Q4_0, KERN_Q5_0,
    KERN_Q4_1, KERN_Q5_1, KERN_Q4_K, KERN_Q5_K, KERN_Q6_K,
};
static const int64_t n_blocks[] = {1, 7, 33, 97};

Test(kern_dot_avx2, every_table_entry_is_filled)
{
    for (size_t t = 0; t < sizeof(dot_types) / sizeof(dot_types[0]); t++)
        cr_assert_not_null(kern__dot_avx2[dot_types[t]], "%s", kern_type_info(dot_types[t])->name);
    cr_assert_not_null(kern__quant_act_avx2[KERN_Q8_0]);
    cr_assert_not_null(kern__quant_act_avx2[KERN_Q8_1]);
    cr_assert_not_null(kern__quant_act_avx2[KERN_F16]);
}

Test(kern_dot_avx2, dot_equals_scalar_up_to_summation_order)
{
    need_avx2();
    rng_state = 11;
    for (size_t t = 0; t < sizeof(dot_types) / sizeof(dot_types[0]); t++) {
        const kern_type_t wt = dot_types[t];
        const kern_type_info_t *ti = kern_type_info(wt);
        for (size_t b = 0; b < sizeof(n_blocks) / sizeof(n_blocks[0]); b++) {
            const int64_t n = n_blocks[b] * ti->block;
            float *w = malloc(n * sizeof(float)), *x = malloc(n * sizeof(float));
            void *wq = malloc(kern_row_bytes(wt, n)), *xq = malloc(kern_row_bytes(ti->dot_type, n));
            fill(w, n), fill(x, n);
            kern_quantize(wt, w, wq, n);
            kern_set_isa(KERN_ISA_SCALAR);
            kern_quantize_act(ti->dot_type, x, xq, n);
            const float s = kern_vec_dot(wt, n, wq, xq);
            kern_set_isa(KERN_ISA_AVX2);
            const float v = kern_vec_dot(wt, n, wq, xq);

            const double bound = order_bound(wt, wq, xq, n);
            cr_assert(fabs((double)v - s) <= bound, "%s n=%ld: avx2 %.9g scalar %.9g bound %.3g",
                      ti->name, (long)n, v, s, bound);
            free(w), free(x), free(wq), free(xq);
        }
    }
}

static void check_act_bit_exact(kern_type_t t, const float *x, int64_t n)
{
    size_t bytes = kern_row_bytes(t, n);
    unsigned char *a = malloc(bytes), *b = malloc(bytes);
    kern_set_isa(KERN_ISA_SCALAR);
    kern_quantize_act(t, x, a, n);
    kern_set_isa(KERN_ISA_AVX2);
    kern_quantize_act(t, x, b, n);
    for (size_t i = 0; i < bytes; i++)
        cr_assert_eq(a[i], b[i], "%s n=%ld byte %zu", kern_type_info(t)->name, (long)n, i);
    free(a), free(b);
}

Test(kern_dot_avx2, activation_rounding_is_bit_exact)
{
    need_avx2();
    rng_state = 12;
    const kern_type_t ts[] = {KERN_Q8_0, KERN_Q8_1, KERN_F16};
    for (size_t t = 0; t < 3; t++) {
        for (size_t b = 0; b < sizeof(n_blocks) / sizeof(n_blocks[0]); b++) {
            const int64_t n = n_blocks[b] * (ts[t] == KERN_F16 ? 1 : 32);
            float *x = malloc(n * sizeof(float));
            fill(x, n);
            check_act_bit_exact(ts[t], x, n);
            free(x);
        }
    }
    /* Crafted blocks: amax 127 makes id exactly 1, so k + 0.5 are true ties that half-to-even
     * and half-away rounding disagree on; an all-zero block takes the id = 0 branch. */
    float x[96] = {0};
    for (int i = 0; i < 32; i++) x[i] = (i == 0) ? 127.0f : (float)(i % 9) - 4.5f;
    for (int i = 64; i < 96; i++) x[i] = (i % 2 ? -1 : 1) * (float)(i - 64) * 1e-3f;
    check_act_bit_exact(KERN_Q8_0, x, 96);
    check_act_bit_exact(KERN_Q8_1, x, 96);
    check_act_bit_exact(KERN_F16, x, 96);
}

Test(kern_dot_avx2, multi_row_dot_equals_single_row_dots)
{
    need_avx2();
    rng_state = 13;
    for (int t = 0; t < KERN_TYPE_COUNT; t++) {
        if (!kern__dotn_avx2[t]) continue;
        const kern_type_info_t *ti = kern_type_info(t);
        for (size_t b = 0; b < sizeof(n_blocks) / sizeof(n_blocks[0]); b++) {
            const int64_t n = n_blocks[b] * ti->block;
            const size_t xs = kern_row_bytes(ti->dot_type, n) + 8; /* odd stride: unaligned */
            float *w = malloc(n * sizeof(float)), *x = malloc(n * sizeof(float));
            void *wq = malloc(kern_row_bytes(t, n));
            unsigned char *xq = malloc(KERN__DOTN_MAX * xs);
            fill(w, n);
            kern_quantize(t, w, wq, n);
            float single[KERN__DOTN_MAX];
            for (int r = 0; r < KERN__DOTN_MAX; r++) {
                fill(x, n);
                kern_quantize_act(ti->dot_type, x, xq + r * xs, n);
                single[r] = kern__dot_avx2[t](n, wq, xq + r * xs);
            }
            for (int nx = 1; nx <= KERN__DOTN_MAX; nx++) {
                float out[2 * KERN__DOTN_MAX];
                for (int i = 0; i < 2 * KERN__DOTN_MAX; i++) out[i] = NAN;
                kern__dotn_avx2[t](n, wq, xq, xs, nx, out, 2); /* out stride 2 */
                for (int r = 0; r < nx; r++) {
                    /* Same exact block sums in another f32 order: the header's bound. */
                    const double tol = order_bound(t, wq, xq + r * xs, n);
                    cr_assert(fabs(out[2 * r] - single[r]) <= tol, "%s n=%ld nx=%d row %d: %g %g",
                              ti->name, (long)n, nx, r, out[2 * r], single[r]);
                }
                for (int r = nx; r < KERN__DOTN_MAX; r++)
                    cr_assert(isnan(out[2 * r]), "wrote past nx");
                for (int r = 0; r < KERN__DOTN_MAX; r++)
                    cr_assert(isnan(out[2 * r + 1]), "wrote between rows");
            }
            free(w), free(x), free(wq), free(xq);
        }
    }
}

/* The AVX2 bulk conversions must equal the scalar ones bit for bit: the wire codecs and BLAS
 * tiles use them, and an f16/bf16 value has exactly one f32 meaning. */
Test(kern_dot_avx2, dequantize_and_float_rounding_are_bit_exact)
{
    if (kern_isa_best() < KERN_ISA_AVX2) return;
    const int64_t n = 32 * 131;
    float *x = malloc(sizeof(float) * n), *a = malloc(sizeof(float) * n);
    float *b = malloc(sizeof(float) * n);
    uint8_t *qa = malloc(2 * n + 64), *qb = malloc(2 * n + 64);
    uint64_t s = 99;
    for (int64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = ldexpf((float)((int64_t)(s >> 40) - (1 << 23)), (int)((s >> 20) % 40) - 40);
    }
    x[3] = NAN, x[5] = INFINITY, x[7] = -0.0f, x[9] = 1e-42f; /* specials and a subnormal */
    const kern_type_t types[] = {KERN_F16, KERN_BF16};
    for (int t = 0; t < 2; t++) {
        kern_set_isa(KERN_ISA_SCALAR);
        kern_quantize_act(types[t], x, qa, n);
        kern_dequantize(types[t], qa, a, n);
        kern_set_isa(KERN_ISA_AVX2);
        kern_quantize_act(types[t], x, qb, n);
        kern_dequantize(types[t], qb, b, n);
        cr_assert_eq(memcmp(qa, qb, 2 * n), 0, "%s rounding differs", kern_type_info(types[t])->name);
        cr_assert_eq(memcmp(a, b, sizeof(float) * n), 0, "%s dequantize differs",
                     kern_type_info(types[t])->name);
    }
    for (int64_t i = 0; i < n; i++) x[i] = isfinite(x[i]) ? x[i] : 1.0f;
    kern_quantize_act(KERN_Q8_0, x, qa, n);
    kern_set_isa(KERN_ISA_SCALAR);
    kern_dequantize(KERN_Q8_0, qa, a, n);
    kern_set_isa(KERN_ISA_AVX2);
    kern_dequantize(KERN_Q8_0, qa, b, n);
    cr_assert_eq(memcmp(a, b, sizeof(float) * n), 0, "Q8_0 dequantize differs");
    free(x), free(a), free(b), free(qa), free(qb);
}
