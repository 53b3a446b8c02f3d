/* Tests for kernels/dot.c: activation rounding against the formulas of ggml-cpu's x86 path, and
 * kern_vec_dot for every compute weight type against a naive double-precision sum of the
 * dequantized operands, at the scalar ISA and at the best one (which exercises the AVX2 kernels
 * of kernels/dot_avx2.c once they exist).
 *
 * Dot bound: the kernel sums exact integer block sums and then n_blocks f32 products; each f32
 * step rounds by at most 2^-24 relative, so the error is below about (n_blocks + 4) * 2^-24 *
 * sum|w_i x_i| <= 37 * 6e-8 ~ 2.2e-6 of sum|w_i x_i| for 33 blocks. We allow 1e-5 (5x margin).
 * Q4_1/Q5_1 also use Q8_1's s = fp16(d * sum q) in place of the dequantized fp16(d) * sum q: two
 * fp16 roundings, so |m_w| * |d sum q| * 2 * 2^-11 more per block.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern-int.h"

#include "trand.h"

static const kern_type_t weight_types[] = {KERN_F32,  KERN_F16,  KERN_BF16, KERN_Q4_0, KERN_Q4_1,
                                           KERN_Q5_0, KERN_Q5_1, KERN_Q8_0, KERN_Q2_K, KERN_Q3_K,
                                           KERN_Q4_K, KERN_Q5_K, KERN_Q6_K};
#define N_WT (sizeof weight_types / sizeof weight_types[0])

/* ---------------- activation rounding ---------------- */

/* The x86 formula, written out independently: d = amax/127 (fp16), id = 127/amax,
 * q = nearbyint(x * id) (ties to even under the default rounding mode). */
Test(kern_act, q8_0_matches_x86_formula)
{
    const int64_t sizes[] = {1, 7, 4097};
    for (size_t s = 0; s < 3; s++) {
        const int64_t nb = sizes[s], n = nb * 32;
        float *x = malloc(n * sizeof(float));
        kern_block_q8_0 *q = malloc(nb * sizeof *q);
        rng_state = 100 + s;
        for (int64_t i = 0; i < n; i++) x[i] = frand() * (1 + (i / 32) % 13);
        for (int isa = 0; isa <= 1; isa++) {
            kern_set_isa(isa ? kern_isa_best() : KERN_ISA_SCALAR);
            kern_quantize_act(KERN_Q8_0, x, q, n);
            for (int64_t b = 0; b < nb; b++) {
                float amax = 0;
                for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
                const float id = amax != 0 ? 127.f / amax : 0.f;
                cr_assert_eq(q[b].d, kern_fp32_to_fp16(amax / 127.f), "block %ld", (long)b);
                for (int j = 0; j < 32; j++)
                    cr_assert_eq(q[b].qs[j], (int8_t)nearbyintf(x[b * 32 + j] * id),
                                 "isa %d block %ld elem %d", isa, (long)b, j);
            }
        }
        free(x);
        free(q);
    }
}

/* With amax = 127, id = 1 exactly: x.5 values are ties, which the x86 path sends to even (and
 * the reference quantizer away from zero). */
Test(kern_act, q8_0_ties_round_to_even)
{
    float x[32] = {127, 2.5f, -2.5f, 3.5f, 0.5f, -0.5f};
    kern_block_q8_0 q;
    kern_quantize_act(KERN_Q8_0, x, &q, 32);
    cr_assert_eq(q.qs[1], 2);
    cr_assert_eq(q.qs[2], -2);
    cr_assert_eq(q.qs[3], 4);
    cr_assert_eq(q.qs[4], 0);
    cr_assert_eq(q.qs[5], 0);
}

Test(kern_act, q8_1_sum_is_unrounded_d_times_sum_of_q)
{
    const int64_t nb = 7, n = nb * 32;
    float x[7 * 32];
    kern_block_q8_1 q[7];
    kern_block_q8_0 q0[7];
    rng_state = 3;
    for (int64_t i = 0; i < n; i++) x[i] = frand() * 3;
    kern_quantize_act(KERN_Q8_1, x, q, n);
    kern_quantize_act(KERN_Q8_0, x, q0, n);
    for (int64_t b = 0; b < nb; b++) {
        float amax = 0;
        int sum = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        for (int j = 0; j < 32; j++) sum += q[b].qs[j];
        cr_assert_eq(q[b].d, q0[b].d);
        cr_assert_arr_eq(q[b].qs, q0[b].qs, 32, "same quants as Q8_0");
        cr_assert_eq(q[b].s, kern_fp32_to_fp16(amax / 127.f * (float)sum), "block %ld", (long)b);
    }
}

Test(kern_act, q8_k_scale_extreme_and_bsums)
{
    const int64_t sizes[] = {1, 7, 33};
    for (size_t s = 0; s < 3; s++) {
        const int64_t nb = sizes[s], n = nb * 256;
        float *x = malloc(n * sizeof(float));
        kern_block_q8_k *q = malloc(nb * sizeof *q);
        rng_state = 200 + s;
        for (int64_t i = 0; i < n; i++) x[i] = frand() * 5;
        kern_quantize_act(KERN_Q8_K, x, q, n);
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + b * 256;
            int imax = 0;
            for (int j = 1; j < 256; j++)
                if (fabsf(xb[j]) > fabsf(xb[imax])) imax = j;
            /* The signed extreme maps to -127 and d = 1 / (-127 / max). */
            cr_assert_eq(q[b].qs[imax], -127);
            cr_assert_eq(q[b].d, 1 / (-127.f / xb[imax]));
            for (int g = 0; g < 16; g++) {
                int sum = 0;
                for (int j = 0; j < 16; j++) sum += q[b].qs[16 * g + j];
                cr_assert_eq(q[b].bsums[g], sum, "block %ld group %d", (long)b, g);
            }
            for (int j = 0; j < 256; j++)
                cr_assert(fabsf(q[b].qs[j] * q[b].d - xb[j]) <= fabsf(q[b].d) * 0.5001f);
        }
        free(x);
        free(q);
    }
}

Test(kern_act, float_types_round_elementwise)
{
    float x[7], f[7];
    uint16_t h[7];
    rng_state = 4;
    for (int i = 0; i < 7; i++) x[i] = frand() * 1000;
    kern_quantize_act(KERN_F16, x, h, 7);
    for (int i = 0; i < 7; i++) cr_assert_eq(h[i], kern_fp32_to_fp16(x[i]));
    kern_quantize_act(KERN_BF16, x, h, 7);
    for (int i = 0; i < 7; i++) cr_assert_eq(h[i], kern_fp32_to_bf16(x[i]));
    kern_quantize_act(KERN_F32, x, f, 7);
    cr_assert_arr_eq(f, x, sizeof x);
}

/* ---------------- dot products ---------------- */

typedef struct {
    void *w, *xq;
    double ref, bound;
} dot_case;

/* Builds a weight row of type t (n elements) and activations rounded to its dot type, and the
 * naive reference with its error bound (see the comment at the top). */
static dot_case make_case(kern_type_t t, int64_t n, uint64_t seed)
{
    const kern_type_info_t *ti = kern_type_info(t);
    float *wf = malloc(n * sizeof(float)), *xf = malloc(n * sizeof(float));
    float *wd = malloc(n * sizeof(float)), *xd = malloc(n * sizeof(float));
    dot_case c = {malloc(kern_row_bytes(t, n)), malloc(kern_row_bytes(ti->dot_type, n)), 0, 0};
    rng_state = seed;
    /* Weights with a nonzero mean so Q4_1/Q5_1 mins and K-quant mins matter. */
    for (int64_t i = 0; i < n; i++) wf[i] = 0.02f * frand() + 0.005f;
    for (int64_t i = 0; i < n; i++) xf[i] = 2 * frand() + 0.3f;
    kern_quantize(t, wf, c.w, n);
    kern_quantize_act(ti->dot_type, xf, c.xq, n);
    kern_dequantize(t, c.w, wd, n);
    kern_dequantize(ti->dot_type, c.xq, xd, n);
    double sabs = 0;
    for (int64_t i = 0; i < n; i++) {
        c.ref += (double)wd[i] * xd[i];
        sabs += fabs((double)wd[i] * xd[i]);
    }
    c.bound = 1e-5 * sabs;
    if (ti->dot_type == KERN_Q8_1) {
        for (int64_t b = 0; b < n / 32; b++) {
            const kern_block_q8_1 *xb = (const kern_block_q8_1 *)c.xq + b;
            const uint16_t m = t == KERN_Q4_1 ? ((const kern_block_q4_1 *)c.w)[b].m
                                              : ((const kern_block_q5_1 *)c.w)[b].m;
            c.bound += fabs(kern_fp16_to_fp32(m) * kern_fp16_to_fp32(xb->s)) * 2 * 0x1p-11;
        }
    }
    free(wf);
    free(xf);
    free(wd);
    free(xd);
    return c;
}

Test(kern_dot, every_type_matches_double_reference)
{
    const int64_t nblk[] = {1, 7, 33};
    for (size_t k = 0; k < N_WT; k++) {
        const kern_type_t t = weight_types[k];
        const kern_type_info_t *ti = kern_type_info(t);
        /* Float types have block 1: use 1, 7 and 33 runs of 32 elements so sizes stay odd
         * multiples of something while covering a non-trivial length. */
        const int unit = ti->block == 1 ? 32 : ti->block;
        for (size_t s = 0; s < 3; s++) {
            const int64_t n = nblk[s] * unit - (ti->block == 1 && s == 1 ? 1 : 0);
            dot_case c = make_case(t, n, 300 + 7 * k + s);
            kern_set_isa(KERN_ISA_SCALAR);
            float got = kern_vec_dot(t, n, c.w, c.xq);
            cr_assert(fabs(got - c.ref) <= c.bound, "%s n=%ld: got %.9g want %.9g bound %.3g",
                      ti->name, (long)n, got, c.ref, c.bound);
            kern_set_isa(kern_isa_best());
            float best = kern_vec_dot(t, n, c.w, c.xq);
            cr_assert(fabs(best - c.ref) <= c.bound, "%s n=%ld at %s: got %.9g want %.9g",
                      ti->name, (long)n, kern_isa_name(kern_isa_best()), best, c.ref);
            free(c.w);
            free(c.xq);
        }
    }
}

/* Scalar and best-ISA activation rounding must agree bit for bit (same formula), and dots on
 * the same operands within the summation-order bound. */
Test(kern_dot, scalar_and_best_isa_agree)
{
    const int64_t n = 33 * 256;
    float *x = malloc(n * sizeof(float));
    uint8_t *a = malloc(4 * n), *b = malloc(4 * n); /* f32 is the largest encoding */
    rng_state = 11;
    for (int64_t i = 0; i < n; i++) x[i] = frand() * 4;
    const kern_type_t acts[] = {KERN_F32, KERN_F16, KERN_BF16, KERN_Q8_0, KERN_Q8_1, KERN_Q8_K};
    for (size_t k = 0; k < sizeof acts / sizeof acts[0]; k++) {
        size_t bytes = kern_row_bytes(acts[k], n);
        kern_set_isa(KERN_ISA_SCALAR);
        kern_quantize_act(acts[k], x, a, n);
        kern_set_isa(kern_isa_best());
        kern_quantize_act(acts[k], x, b, n);
        cr_assert_arr_eq(a, b, bytes, "%s", kern_type_info(acts[k])->name);
    }
    free(x);
    free(a);
    free(b);
}

/* A dot type whose weights are all zero gives exactly zero, and a single nonzero element
 * picks out d_w * q_w * d_x * q_x: guards against off-by-one block strides. */
Test(kern_dot, single_element_picks_its_product)
{
    for (size_t k = 0; k < N_WT; k++) {
        const kern_type_t t = weight_types[k];
        const kern_type_info_t *ti = kern_type_info(t);
        const int64_t n = 3 * (ti->block == 1 ? 32 : ti->block);
        float *wf = calloc(n, sizeof(float)), *xf = malloc(n * sizeof(float));
        float *wd = malloc(n * sizeof(float)), *xd = malloc(n * sizeof(float));
        void *w = malloc(kern_row_bytes(t, n)), *xq = malloc(kern_row_bytes(ti->dot_type, n));
        rng_state = 500 + k;
        for (int64_t i = 0; i < n; i++) xf[i] = frand();
        const int64_t pos = n - n / 3 + 5; /* inside the last block, not at its start */
        wf[pos] = 0.75f;
        kern_quantize(t, wf, w, n);
        kern_quantize_act(ti->dot_type, xf, xq, n);
        kern_dequantize(t, w, wd, n);
        kern_dequantize(ti->dot_type, xq, xd, n);
        double want = 0;
        for (int64_t i = 0; i < n; i++) want += (double)wd[i] * xd[i];
        cr_assert(fabs(wd[pos] - 0.75f) < 0.75f * 0.01f, "%s keeps the lone weight", ti->name);
        for (int isa = 0; isa <= 1; isa++) {
            kern_set_isa(isa ? kern_isa_best() : KERN_ISA_SCALAR);
            float got = kern_vec_dot(t, n, w, xq);
            cr_assert(fabs(got - want) <= 1e-5 * fabs(want) + 1e-7, "%s isa %d: %.9g vs %.9g",
                      ti->name, isa, got, want);
        }
        free(wf);
        free(xf);
        free(wd);
        free(xd);
        free(w);
        free(xq);
    }
}
