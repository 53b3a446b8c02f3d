/* Tests for kernels/mxfp4.c (MXFP4 dequantize / quantize / dot against Q8_0, swiglu_oai) and
 * the bias-aware grouped expert FFN of kernels/moe.c (kern_moe_ffn_ex).
 *
 * Decoding is checked exactly on hand-made blocks (every code, scales at both ends of the
 * byte). The dot is compared with a double sum of the dequantized operands: integer sums inside
 * each block are exact, the n_blocks f32 products and sums round by 2^-24 each, so the error
 * stays below (n_blocks + 4) * 2^-24 * sum|w x|; we allow 1e-5 of sum|w x| (>= 4x margin for
 * 129 blocks). The expert FFN is compared with a naive double-precision version; the only
 * differences are the Q8_0 rounding of activations (which the reference repeats) and f32
 * accumulation, bounded here by 1e-4 relative to the output's scale.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern-int.h"

#include "trand.h"

/* The e2m1 value of a code, from its bits (sign, 2 exponent bits, 1 mantissa bit), written
 * independently of the kernel's table. */
static double e2m1(int c)
{
    int s = c >> 3, e = (c >> 1) & 3, m = c & 1;
    double v = e == 0 ? 0.5 * m : ldexp(1.0 + 0.5 * m, e - 1);
    return s ? -v : v;
}

Test(kern_mxfp4, type_traits)
{
    const kern_type_info_t *ti = kern_type_info(KERN_MXFP4);
    cr_assert_not_null(ti);
    cr_assert_str_eq(ti->name, "MXFP4");
    cr_assert_eq(ti->block, 32);
    cr_assert_eq(ti->block_bytes, 17);
    cr_assert_eq(ti->dot_type, KERN_Q8_0);
    cr_assert_eq(kern_row_bytes(KERN_MXFP4, 2880), 90 * 17);
}

Test(kern_mxfp4, decodes_hand_made_blocks_exactly)
{
    const uint8_t exps[] = {0, 1, 2, 100, 127, 128, 130, 200, 254};
    for (size_t k = 0; k < sizeof exps; k++) {
        kern_block_mxfp4 b;
        b.e = exps[k];
        /* Element j gets code j % 16, element j + 16 code 15 - j. */
        for (int j = 0; j < 16; j++) b.qs[j] = (uint8_t)(j | (15 - j) << 4);
        float y[32];
        kern_dequantize(KERN_MXFP4, &b, y, 32);
        const double scale = ldexp(1.0, (int)exps[k] - 127); /* E8M0: 2^(e - 127) */
        for (int j = 0; j < 16; j++) {
            /* As f32, like ggml: codes above 1.0 overflow to infinity at e = 254. */
            cr_assert_eq(y[j], (float)(e2m1(j) * scale), "e %u code %d: %g", exps[k], j, y[j]);
            cr_assert_eq(y[j + 16], (float)(e2m1(15 - j) * scale), "e %u code %d", exps[k],
                         15 - j);
        }
    }
    /* A concrete block: e = 127 (scale 1), bytes 0x21: element 0 = 0.5, element 16 = 1. */
    kern_block_mxfp4 b = {127, {0x21, 0xf7}};
    float y[32];
    kern_dequantize(KERN_MXFP4, &b, y, 32);
    cr_assert_eq(y[0], 0.5f);
    cr_assert_eq(y[16], 1.0f);
    cr_assert_eq(y[1], 6.0f);   /* code 7 */
    cr_assert_eq(y[17], -6.0f); /* code 15 */
    cr_assert_eq(y[2], 0.0f);
}

Test(kern_mxfp4, quantize_round_trips_representable_values)
{
    /* Values that are codes times one power of two come back exactly. */
    float x[64], y[64];
    rng_state = 7;
    for (int i = 0; i < 64; i++) x[i] = (float)(e2m1((int)((frand() + 1) * 8) & 15) * 0.25);
    x[5] = 1.5f; /* largest code (6) * 0.25, so the block's exponent is fixed */
    x[40] = -1.5f;
    kern_block_mxfp4 q[2];
    kern_quantize(KERN_MXFP4, x, q, 64);
    kern_dequantize(KERN_MXFP4, q, y, 64);
    for (int i = 0; i < 64; i++) cr_assert_eq(y[i], x[i], "element %d: %g vs %g", i, y[i], x[i]);
    /* Arbitrary values: within half a code step (at most amax / 6 here) of the input. */
    for (int i = 0; i < 64; i++) x[i] = frand() * 3.0f;
    kern_quantize(KERN_MXFP4, x, q, 64);
    kern_dequantize(KERN_MXFP4, q, y, 64);
    for (int b = 0; b < 2; b++) {
        float amax = 0;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[32 * b + i]));
        for (int i = 0; i < 32; i++)
            cr_assert_leq(fabsf(y[32 * b + i] - x[32 * b + i]), amax / 6 + 1e-6f);
    }
    /* All zeros: scale byte 0 and zero codes. */
    memset(x, 0, sizeof x);
    kern_quantize(KERN_MXFP4, x, q, 32);
    cr_assert_eq(q[0].e, 0);
    for (int j = 0; j < 16; j++) cr_assert_eq(q[0].qs[j], 0);
}

Test(kern_mxfp4, dot_matches_naive_sum)
{
    const int64_t sizes[] = {1, 7, 129};
    for (int isa = 0; isa <= 1; isa++) {
        kern_set_isa(isa ? kern_isa_best() : KERN_ISA_SCALAR);
        for (size_t s = 0; s < 3; s++) {
            const int64_t nb = sizes[s], n = nb * 32;
            float *w = malloc(n * sizeof(float)), *x = malloc(n * sizeof(float));
            float *wd = malloc(n * sizeof(float)), *xd = malloc(n * sizeof(float));
            kern_block_mxfp4 *wq = malloc(nb * sizeof *wq);
            kern_block_q8_0 *xq = malloc(nb * sizeof *xq);
            rng_state = 50 + s;
            for (int64_t i = 0; i < n; i++) {
                w[i] = frand() * (float)(1 + (i / 32) % 5);
                x[i] = frand();
            }
            kern_quantize(KERN_MXFP4, w, wq, n);
            kern_quantize_act(KERN_Q8_0, x, xq, n);
            kern_dequantize(KERN_MXFP4, wq, wd, n);
            kern_dequantize(KERN_Q8_0, xq, xd, n);
            double ref = 0, mag = 0;
            for (int64_t i = 0; i < n; i++) {
                ref += (double)wd[i] * xd[i];
                mag += fabs((double)wd[i] * xd[i]);
            }
            float got = kern_vec_dot(KERN_MXFP4, n, wq, xq);
            cr_assert_leq(fabs(got - ref), 1e-5 * mag + 1e-30, "n %lld: %g vs %g", (long long)n,
                          got, ref);
            /* kern_matmul takes the same path (rows of one weight, Q8_0 activations). */
            float out;
            size_t ws = kern_matmul_work_size(KERN_MXFP4, 1, n);
            void *work = aligned_alloc(64, (ws + 64) & ~(size_t)63);
            kern_matmul(NULL, &out, wq, kern_row_bytes(KERN_MXFP4, n), KERN_MXFP4, x, 1, n, 1,
                        work);
            cr_assert_leq(fabs(out - ref), 1e-5 * mag + 1e-30);
            free(work);
            free(w), free(x), free(wd), free(xd), free(wq), free(xq);
        }
    }
}

Test(kern_swiglu_oai, clamps_as_ggml)
{
    const float gate[] = {-3.0f, 0.0f, 1.0f, 6.9f, 8.0f, 20.0f};
    const float up[] = {-9.0f, 2.0f, -0.5f, 7.5f, 3.0f, -20.0f};
    float out[6];
    kern_swiglu_oai(out, gate, up, 6, 1.702f, 7.0f);
    for (int i = 0; i < 6; i++) {
        double g = fmin(gate[i], 7.0), u = fmax(fmin(up[i], 7.0), -7.0);
        double ref = g / (1.0 + exp(-1.702 * g)) * (u + 1.0);
        cr_assert_leq(fabs(out[i] - ref), 1e-5 * fabs(ref) + 1e-7, "i %d: %g vs %g", i, out[i],
                      ref);
    }
}

/* ---- kern_moe_ffn_ex against a naive double version ---- */

enum { D = 64, F = 96, E = 5, T = 7, K = 2 };

/* y (rows) = w (rows, cols) @ x, both from their stored forms as the kernel reads them. */
static void ref_mv(double *y, const float *wd, const float *xd, int rows, int cols)
{
    for (int r = 0; r < rows; r++) {
        double s = 0;
        for (int c = 0; c < cols; c++) s += (double)wd[(size_t)r * cols + c] * xd[c];
        y[r] = s;
    }
}

/* x rounded through Q8_0 as kern_matmul does before a dot with MXFP4 or Q8_0 rows. */
static void round_q8(const float *x, float *out, int n)
{
    kern_block_q8_0 q[8];
    kern_quantize_act(KERN_Q8_0, x, q, n);
    kern_dequantize(KERN_Q8_0, q, out, n);
}

static void moe_case(kern_act_t act, bool with_bias)
{
    kern_set_isa(KERN_ISA_SCALAR);
    float *wg = malloc(sizeof(float) * E * F * D), *wu = malloc(sizeof(float) * E * F * D);
    float *wdn = malloc(sizeof(float) * E * D * F);
    float *bg = malloc(sizeof(float) * E * F), *bu = malloc(sizeof(float) * E * F);
    float *bd = malloc(sizeof(float) * E * D);
    rng_state = 99;
    for (int i = 0; i < E * F * D; i++) wg[i] = frand() * 0.3f, wu[i] = frand() * 0.3f;
    for (int i = 0; i < E * D * F; i++) wdn[i] = frand() * 0.2f;
    for (int i = 0; i < E * F; i++) bg[i] = frand(), bu[i] = frand();
    for (int i = 0; i < E * D; i++) bd[i] = frand() * 0.1f;
    const size_t rg = kern_row_bytes(KERN_MXFP4, D), rd = kern_row_bytes(KERN_MXFP4, F);
    uint8_t *qg = malloc(rg * E * F), *qu = malloc(rg * E * F), *qd = malloc(rd * E * D);
    kern_quantize(KERN_MXFP4, wg, qg, (int64_t)E * F * D);
    kern_quantize(KERN_MXFP4, wu, qu, (int64_t)E * F * D);
    kern_quantize(KERN_MXFP4, wdn, qd, (int64_t)E * D * F);
    /* The reference reads the weights as stored. */
    kern_dequantize(KERN_MXFP4, qg, wg, (int64_t)E * F * D);
    kern_dequantize(KERN_MXFP4, qu, wu, (int64_t)E * F * D);
    kern_dequantize(KERN_MXFP4, qd, wdn, (int64_t)E * D * F);
    kern_expert_t ex[E];
    kern_expert_bias_t bias[E];
    for (int e = 0; e < E; e++) {
        ex[e] = (kern_expert_t){KERN_MXFP4, KERN_MXFP4, KERN_MXFP4, qg + rg * F * e,
                                qu + rg * F * e, qd + rd * D * e};
        bias[e] = (kern_expert_bias_t){bg + F * e, bu + F * e, e == 3 ? NULL : bd + D * e};
    }
    float x[T * D], w[T * K], out[T * D];
    int32_t ids[T * K];
    for (int i = 0; i < T * D; i++) x[i] = frand() * 2;
    for (int t = 0; t < T; t++) {
        ids[t * K] = (t * 3) % E;
        ids[t * K + 1] = t == 4 ? -1 : (t * 3 + 1 + t % 2) % E;
        w[t * K] = 0.7f, w[t * K + 1] = 0.3f;
    }
    size_t ws = kern_moe_work_size(&ex[0], D, F, T, K);
    void *work = aligned_alloc(64, (ws + 63) & ~(size_t)63);
    kern_moe_ffn_ex(NULL, ex, with_bias ? bias : NULL, act, E, D, F, T, K, x, ids, w, out, work,
                    ws);
    for (int t = 0; t < T; t++) {
        double ref[D] = {0}, scale = 0;
        for (int j = 0; j < K; j++) {
            int e = ids[t * K + j];
            if (e < 0) continue;
            float xr[D], hr[F], h[F];
            double g[F], u[F], y[D];
            round_q8(x + t * D, xr, D);
            ref_mv(g, wg + (size_t)F * D * e, xr, F, D);
            ref_mv(u, wu + (size_t)F * D * e, xr, F, D);
            for (int i = 0; i < F; i++) {
                if (with_bias) g[i] += bg[F * e + i], u[i] += bu[F * e + i];
                if (act == KERN_ACT_SWIGLU_OAI) {
                    double gc = fmin(g[i], 7.0), uc = fmax(fmin(u[i], 7.0), -7.0);
                    h[i] = (float)(gc / (1 + exp(-1.702 * gc)) * (uc + 1));
                } else {
                    h[i] = (float)(g[i] / (1 + exp(-g[i])) * u[i]);
                }
            }
            round_q8(h, hr, F);
            ref_mv(y, wdn + (size_t)D * F * e, hr, D, F);
            for (int d = 0; d < D; d++) {
                double yd = y[d] + (with_bias && e != 3 ? bd[D * e + d] : 0);
                ref[d] += w[t * K + j] * yd;
            }
        }
        for (int d = 0; d < D; d++) scale = fmax(scale, fabs(ref[d]));
        /* The rounding of h to Q8_0 can differ by one step where the f32 and double h fall on
         * either side of a rounding boundary: a step is amax/127 of the block, times a weight
         * (<= 12 * its scale): bounded by 2e-3 of the output scale here, far below the effect
         * of a missing bias (0.1) or the other activation. */
        for (int d = 0; d < D; d++)
            cr_assert_leq(fabs(out[t * D + d] - ref[d]), 2e-3 * scale + 1e-5,
                          "token %d dim %d: %g vs %g", t, d, out[t * D + d], ref[d]);
    }
    free(work);
    free(wg), free(wu), free(wdn), free(bg), free(bu), free(bd), free(qg), free(qu), free(qd);
}

Test(kern_moe_ffn_ex, swiglu_oai_with_biases) { moe_case(KERN_ACT_SWIGLU_OAI, true); }
Test(kern_moe_ffn_ex, plain_swiglu_without_biases) { moe_case(KERN_ACT_SWIGLU, false); }
