/* Tests for kern_attn_causal (kernels/attn_block.c reference, kernels/attn_block_avx2.c): a run
 * of tokens against the cache equals kern_attn of each token over its own causal range, on
 * seeded data, for F32 and F16 caches, group sizes 1, 4 and 8, head dims 64 and 128 (also a
 * value dim other than the key dim, one that is not a multiple of the 16-dim value blocks, and
 * an odd one that takes the reference), runs that start after earlier chunks (pos0 > 0) and
 * whose lengths and ends fall on both sides of the 64-position tile edges. Sliding windows and
 * sinks (which kern_attn lacks) are checked against a double-precision softmax.
 *
 * Tolerance: every output is a convex combination of value rows with |v| <= 1, so it moves by
 * at most max|v| * sum_j |dp_j|. The two kernels differ only in rounding: scores are summed in
 * another order (each off by ~sqrt(hd) * 2^-24 * sum_i |q_i k_i| * scale, about 1e-6 here),
 * the exponentials (kern__exp_neg8 against libm or the other polynomial call, a few ulp), and
 * the online rescaling (one rounding per tile, up to 4 tiles here). That bounds the weights'
 * relative error by a few 1e-6, hence TOL = 4e-6 * max|v|; the largest difference measured is
 * 8.5e-7 (both ISAs). A wrong mask, a missed tile or a key off by one changes an output by about
 * |v| / n_kv >= 2e-3 at these sizes, far above it.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "kernels/kern-int.h"

#define TOL 4e-6

#include "trand.h"

static double elt(const void *row, int i, kern_type_t t)
{
    return t == KERN_F16 ? kern_fp16_to_fp32(((const uint16_t *)row)[i])
                         : ((const float *)row)[i];
}

typedef struct {
    kern_type_t type;
    int nq, hd, hv, pos0, n_tok, window;
    bool sinks;
} case_t;

static double worst; /* largest difference seen against kern_attn, for the record */

static void check(kern_isa_t isa, case_t c)
{
    const int n = c.pos0 + c.n_tok, pad = 3;
    const size_t es = c.type == KERN_F16 ? 2 : 4;
    const size_t ks = es * (size_t)(c.hd + pad), vs = es * (size_t)(c.hv + pad);
    const size_t qs = (size_t)c.nq * c.hd + 5, os = (size_t)c.nq * c.hv + 3;
    uint8_t *k = malloc(ks * n), *v = malloc(vs * n);
    float *q = malloc(sizeof(float) * qs * c.n_tok), *out = malloc(sizeof(float) * os * c.n_tok);
    float *ref = malloc(sizeof(float) * c.nq * c.hv), sinks[8];
    float *work = malloc(sizeof(float) * kern_attn_causal_work_size(c.nq, c.n_tok, c.hd, c.hv));
    float *aw = malloc(sizeof(float) * kern_attn_work_size(c.nq, n, c.hd));
    double *s = malloc(sizeof(double) * n);
    for (int j = 0; j < n; j++) {
        for (int i = 0; i < c.hd; i++) {
            float a = 2 * frand();
            if (c.type == KERN_F16) ((uint16_t *)(k + j * ks))[i] = kern_fp32_to_fp16(a);
            else ((float *)(k + j * ks))[i] = a;
        }
        for (int i = 0; i < c.hv; i++) {
            float b = frand();
            if (c.type == KERN_F16) ((uint16_t *)(v + j * vs))[i] = kern_fp32_to_fp16(b);
            else ((float *)(v + j * vs))[i] = b;
        }
    }
    for (size_t i = 0; i < qs * c.n_tok; i++) q[i] = 2 * frand();
    for (int g = 0; g < 8; g++) sinks[g] = 3 * frand();
    const float scale = 1.0f / sqrtf((float)c.hd);
    const kern_kv_t kv = {k, v, ks, vs, c.type, c.hd, c.hv};
    kern_set_isa(isa);
    kern_attn_causal(out, os, q, qs, c.nq, c.n_tok, c.pos0, &kv, c.window,
                     c.sinks ? sinks : NULL, scale, work);
    for (int t = 0; t < c.n_tok; t++) {
        const int p = c.pos0 + t, lo = c.window > 0 && p + 1 > c.window ? p + 1 - c.window : 0;
        const float *qt = q + (size_t)t * qs, *ot = out + (size_t)t * os;
        if (!c.sinks) { /* the per-token kernel, same ISA, over the same range */
            kern_attn(ref, c.hv, qt, c.nq, k + (size_t)lo * ks, ks, v + (size_t)lo * vs, vs,
                      c.type, p + 1 - lo, c.hd, c.hv, scale, aw);
            for (int i = 0; i < c.nq * c.hv; i++) {
                const double d = fabs(ot[(i / c.hv) * c.hv + i % c.hv] - ref[i]);
                worst = fmax(worst, d);
                cr_assert(d <= TOL,
                          "isa %d type %d nq %d hd %d hv %d pos0 %d n_tok %d window %d: token "
                          "%d head %d dim %d = %.9g, kern_attn %.9g",
                          (int)isa, (int)c.type, c.nq, c.hd, c.hv, c.pos0, c.n_tok, c.window, t,
                          i / c.hv, i % c.hv, ot[i], ref[i]);
            }
        }
        for (int g = 0; g < c.nq; g++) { /* double precision, with the sink if any */
            double max = c.sinks ? sinks[g] : -INFINITY, sum = 0;
            for (int j = lo; j <= p; j++) {
                double d = 0;
                for (int i = 0; i < c.hd; i++) {
                    double x = qt[g * c.hd + i];
                    if (c.type == KERN_F16) x = kern_fp16_to_fp32(kern_fp32_to_fp16((float)x));
                    d += x * elt(k + j * ks, i, c.type);
                }
                s[j] = d * scale;
                max = fmax(max, s[j]);
            }
            if (c.sinks) sum = exp(sinks[g] - max);
            for (int j = lo; j <= p; j++) sum += s[j] = exp(s[j] - max);
            for (int i = 0; i < c.hv; i++) {
                double o = 0;
                for (int j = lo; j <= p; j++) o += s[j] / sum * elt(v + j * vs, i, c.type);
                cr_assert(fabs(ot[g * c.hv + i] - o) < 1e-5,
                          "isa %d type %d nq %d hd %d pos0 %d n_tok %d window %d sinks %d: "
                          "token %d head %d dim %d = %.9g, want %.9g",
                          (int)isa, (int)c.type, c.nq, c.hd, c.pos0, c.n_tok, c.window, c.sinks,
                          t, g, i, ot[g * c.hv + i], o);
            }
        }
    }
    kern_set_isa(kern_isa_best());
    free(k), free(v), free(q), free(out), free(ref), free(work), free(aw), free(s);
}

static void check_all(kern_isa_t isa)
{
    rng_state = 42;
    worst = 0;
    const kern_type_t types[] = {KERN_F32, KERN_F16};
    const int nqs[] = {1, 4, 8};
    const int dims[][2] = {{64, 64}, {128, 128}, {128, 64}, {64, 72}};
    /* (pos0, n_tok): a first chunk, chunks after cached ones, ends on and across tile edges */
    const int runs[][2] = {{0, 1}, {0, 17}, {0, 64}, {0, 70}, {37, 5}, {60, 10}, {64, 64},
                           {100, 29}, {130, 3}};
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 3; b++)
            for (int d = 0; d < 4; d++)
                for (int r = 0; r < 9; r++)
                    check(isa, (case_t){types[a], nqs[b], dims[d][0], dims[d][1], runs[r][0],
                                        runs[r][1], 0, false});
    cr_log_info("isa %d: largest difference from kern_attn %.3g", (int)isa, worst);
}

Test(kern_attn_causal, scalar_matches_kern_attn) { check_all(KERN_ISA_SCALAR); }

Test(kern_attn_causal, avx2_matches_kern_attn)
{
    if (kern_set_isa(KERN_ISA_AVX2) < KERN_ISA_AVX2) cr_skip_test("CPU has no AVX2");
    check_all(KERN_ISA_AVX2);
}

/* Sliding windows shorter than, equal to and longer than a tile, with and without sinks. */
static void check_window_sinks(kern_isa_t isa)
{
    rng_state = 9;
    const int windows[] = {1, 5, 64, 100};
    const int runs[][2] = {{0, 70}, {50, 40}, {130, 7}};
    for (int w = 0; w < 4; w++)
        for (int r = 0; r < 3; r++)
            for (int sk = 0; sk < 2; sk++) {
                check(isa, (case_t){KERN_F32, 4, 64, 64, runs[r][0], runs[r][1], windows[w],
                                    sk == 1});
                check(isa, (case_t){KERN_F16, 8, 64, 64, runs[r][0], runs[r][1], windows[w],
                                    sk == 1});
            }
    check(isa, (case_t){KERN_F32, 1, 64, 64, 0, 30, 0, true});
}

Test(kern_attn_causal, scalar_window_and_sinks) { check_window_sinks(KERN_ISA_SCALAR); }

Test(kern_attn_causal, avx2_window_and_sinks)
{
    if (kern_set_isa(KERN_ISA_AVX2) < KERN_ISA_AVX2) cr_skip_test("CPU has no AVX2");
    check_window_sinks(KERN_ISA_AVX2);
}

/* Head dims that are not multiples of 8 take the reference; 24 and 8 take the AVX2 body with
 * only a half value block (8 dims). */
Test(kern_attn_causal, odd_and_small_head_dims)
{
    rng_state = 7;
    check(KERN_ISA_AVX2, (case_t){KERN_F32, 3, 6, 6, 10, 70, 0, false});
    check(KERN_ISA_AVX2, (case_t){KERN_F16, 2, 12, 20, 61, 9, 0, false});
    check(KERN_ISA_AVX2, (case_t){KERN_F32, 4, 24, 8, 0, 80, 0, false});
}
