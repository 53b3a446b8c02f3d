/* Tests for kern_attn (kernels/ops.c reference, kernels/attn_avx2.c): both paths equal a double
 * precision softmax(scale K q) V on seeded groups, for F32 and F16 caches, group sizes 1..8
 * (the AVX2 tiles take 4 queries and 2 keys at a time), odd and even key counts and head dims
 * of 8, 24 and 128 (the value tiles take 16 dimensions at a time).
 *
 * Bound: every output is a convex combination of values, so float rounding in the scores
 * (relative 2^-24 per addition over hd terms, times |scale q.k| <= 4 here), in the exponential
 * (a few ulp) and in the weighted sum (n_kv additions) stays below 1e-5 * max|v| for these
 * sizes; a wrong key, row or mask moves outputs by about |v|.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "kernels/kern-int.h"

#include "trand.h"

/* The value of element i of a cached row as the kernel sees it. */
static double elt(const void *row, int i, kern_type_t t)
{
    return t == KERN_F16 ? kern_fp16_to_fp32(((const uint16_t *)row)[i])
                         : ((const float *)row)[i];
}

static void check(kern_isa_t isa, kern_type_t t, int nq, int n_kv, int hd)
{
    const int hv = hd, pad = 3; /* rows padded apart, as in the engine's cache */
    const size_t es = t == KERN_F16 ? 2 : 4, stride = es * (size_t)(hd + pad);
    float *q = malloc(sizeof(float) * nq * hd), *out = malloc(sizeof(float) * nq * (hv + 1));
    uint8_t *k = malloc(stride * n_kv), *v = malloc(stride * n_kv);
    float *work = malloc(sizeof(float) * kern_attn_work_size(nq, n_kv, hd));
    double *s = malloc(sizeof(double) * n_kv);
    for (int i = 0; i < nq * hd; i++) q[i] = 2 * frand();
    for (int j = 0; j < n_kv; j++)
        for (int i = 0; i < hd; i++) {
            float a = 2 * frand(), b = frand();
            if (t == KERN_F16) {
                ((uint16_t *)(k + j * stride))[i] = kern_fp32_to_fp16(a);
                ((uint16_t *)(v + j * stride))[i] = kern_fp32_to_fp16(b);
            } else {
                ((float *)(k + j * stride))[i] = a;
                ((float *)(v + j * stride))[i] = b;
            }
        }
    const float scale = 1.0f / sqrtf((float)hd);
    kern_set_isa(isa);
    kern_attn(out, hv + 1, q, nq, k, stride, v, stride, t, n_kv, hd, hv, scale, work);
    kern_set_isa(kern_isa_best());
    for (int r = 0; r < nq; r++) {
        double max = -INFINITY, sum = 0;
        for (int j = 0; j < n_kv; j++) {
            double d = 0;
            for (int i = 0; i < hd; i++) {
                double x = q[r * hd + i];
                if (t == KERN_F16) x = kern_fp16_to_fp32(kern_fp32_to_fp16((float)x));
                d += x * elt(k + j * stride, i, t);
            }
            s[j] = d * scale;
            max = fmax(max, s[j]);
        }
        for (int j = 0; j < n_kv; j++) sum += s[j] = exp(s[j] - max);
        for (int i = 0; i < hv; i++) {
            double o = 0;
            for (int j = 0; j < n_kv; j++) o += s[j] / sum * elt(v + j * stride, i, t);
            cr_assert(fabs(out[r * (hv + 1) + i] - o) < 1e-5,
                      "isa %d type %d nq %d n_kv %d hd %d: out[%d][%d] = %.8g, want %.8g",
                      (int)isa, (int)t, nq, n_kv, hd, r, i, out[r * (hv + 1) + i], o);
        }
    }
    free(q), free(out), free(k), free(v), free(work), free(s);
}

static void check_all(kern_isa_t isa)
{
    rng_state = 42;
    const kern_type_t types[] = {KERN_F32, KERN_F16};
    const int nqs[] = {1, 3, 4, 8}, nkvs[] = {1, 2, 7, 64, 301}, hds[] = {8, 24, 128};
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 4; b++)
            for (int c = 0; c < 5; c++)
                for (int d = 0; d < 3; d++) check(isa, types[a], nqs[b], nkvs[c], hds[d]);
}

Test(kern_attn, scalar_matches_double_reference) { check_all(KERN_ISA_SCALAR); }

Test(kern_attn, avx2_matches_double_reference)
{
    if (kern_set_isa(KERN_ISA_AVX2) < KERN_ISA_AVX2) cr_skip_test("CPU has no AVX2");
    check_all(KERN_ISA_AVX2);
}

Test(kern_attn, odd_head_dims_take_the_reference)
{
    rng_state = 7;
    check(KERN_ISA_AVX2, KERN_F32, 3, 5, 6);
    check(KERN_ISA_AVX2, KERN_F16, 2, 9, 12);
}
