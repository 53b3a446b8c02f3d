/* Tests for kernels/types.c and kernels/quant.c: the type table, fp16/bf16 conversions (against
 * the CPU's own F16C instructions), the block layout of every type (a hand-built block against
 * a naive per-element formula written from the layout description, not from the dequantizer's
 * loops), and the error of quantize -> dequantize on seeded data with 1, 7 and 4097 blocks.
 *
 * Real data (../shared/golden, read with model/gguf.c): one Qwen3-MoE model stored as f32, f16,
 * bf16 and Q8_0 with weights exactly representable in all four, so dequantizing must reproduce
 * the f32 file bit for bit; and one model quantized by llama-quantize to eight types, whose
 * dequantized tensors must stay close to the Q8_0 one (bounds at that test).
 *
 * Layout bound: the naive formula does the same 2-4 f32 roundings in another order, so results
 * agree to a few ulp; 1e-6 relative to the magnitude of the terms (~16 ulp) is far below the
 * smallest layout mistake (one quantization step, >= 1/64 of the block scale).
 */
#include <criterion/criterion.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern-int.h"
#include "model/model.h"

#include "trand.h"
static void fill_bytes(void *p, size_t n)
{
    for (size_t i = 0; i < n; i++) ((uint8_t *)p)[i] = (uint8_t)trand_u64();
}
static uint16_t rand_half(float lo, float hi) /* a positive fp16 scale in [lo, hi) */
{
    return kern_fp32_to_fp16(lo + (hi - lo) * (frand() + 1) / 2);
}
static float h2f(uint16_t h) { return kern_fp16_to_fp32(h); }

/* ---------------- type table ---------------- */

Test(kern_types, table_matches_ggml_sizes_and_dot_types)
{
    static const struct { int t, block; size_t bytes; int dot; } want[] = {
        {KERN_F32, 1, 4, KERN_F32},       {KERN_F16, 1, 2, KERN_F16},
        {KERN_BF16, 1, 2, KERN_BF16},     {KERN_Q4_0, 32, 18, KERN_Q8_0},
        {KERN_Q4_1, 32, 20, KERN_Q8_1},   {KERN_Q5_0, 32, 22, KERN_Q8_0},
        {KERN_Q5_1, 32, 24, KERN_Q8_1},   {KERN_Q8_0, 32, 34, KERN_Q8_0},
        {KERN_Q8_1, 32, 36, KERN_Q8_1},   {KERN_Q2_K, 256, 84, KERN_Q8_K},
        {KERN_Q3_K, 256, 110, KERN_Q8_K}, {KERN_Q4_K, 256, 144, KERN_Q8_K},
        {KERN_Q5_K, 256, 176, KERN_Q8_K}, {KERN_Q6_K, 256, 210, KERN_Q8_K},
        {KERN_Q8_K, 256, 292, KERN_Q8_K},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const kern_type_info_t *ti = kern_type_info(want[i].t);
        cr_assert_not_null(ti, "type %d", want[i].t);
        cr_assert_eq(ti->block, want[i].block, "%s", ti->name);
        cr_assert_eq(ti->block_bytes, want[i].bytes, "%s", ti->name);
        cr_assert_eq((int)ti->dot_type, want[i].dot, "%s", ti->name);
    }
    cr_assert_str_eq(kern_type_info(KERN_Q4_K)->name, "Q4_K");
    /* 4, 5 (removed Q4_2/Q4_3), 16.. (IQ types) and out-of-range ids are unknown. */
    const int unknown[] = {-1, 4, 5, 16, 20, 29, 31, KERN_TYPE_COUNT, 1000};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
        cr_assert_null(kern_type_info(unknown[i]), "id %d", unknown[i]);
    cr_assert_eq(kern_row_bytes(KERN_Q4_K, 4096), 16 * 144);
    cr_assert_eq(kern_row_bytes(KERN_F16, 7), 14);
}

Test(kern_types, set_isa_caps_to_best_and_names)
{
    kern_isa_t best = kern_isa_best();
    cr_assert_eq(kern_set_isa(KERN_ISA_SCALAR), KERN_ISA_SCALAR);
    cr_assert_eq(kern__isa, KERN_ISA_SCALAR);
    cr_assert_eq(kern_set_isa(KERN_ISA_AVX512), best, "capped to what the CPU has");
    cr_assert_str_eq(kern_isa_name(KERN_ISA_AVX2), "avx2");
    cr_assert_str_eq(kern_isa_name(KERN_ISA_SCALAR), "scalar");
}

/* ---------------- fp16 / bf16 ---------------- */

__attribute__((target("f16c"))) static uint16_t hw_f2h(float f)
{
    return (uint16_t)_cvtss_sh(f, 0);
}
__attribute__((target("f16c"))) static float hw_h2f(uint16_t h)
{
    return _cvtsh_ss(h);
}
static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

Test(kern_types, fp16_to_fp32_equals_f16c_for_every_half)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("f16c")) cr_skip_test("no F16C on this CPU");
    for (uint32_t h = 0; h < 65536; h++)
        cr_assert_eq(bits_of(kern_fp16_to_fp32((uint16_t)h)), bits_of(hw_h2f((uint16_t)h)),
                     "half 0x%04x", h);
}

Test(kern_types, fp32_to_fp16_equals_f16c_on_a_sweep_of_all_floats)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("f16c")) cr_skip_test("no F16C on this CPU");
    /* Every 251st bit pattern (all exponents, signs, NaNs, subnormals), plus every pattern in
     * the ranges where rounding is delicate: around the smallest subnormal half, the
     * subnormal/normal boundary, and the overflow threshold 65520. */
    for (uint64_t u = 0; u < (1ull << 32); u += 251) {
        float f = float_of((uint32_t)u);
        cr_assert_eq(kern_fp32_to_fp16(f), hw_f2h(f), "float bits 0x%08x", (unsigned)u);
    }
    const uint32_t centres[] = {0x33000000, 0x33800000, 0x38800000, 0x387fc000, 0x477fe000,
                                0x477ff000, 0x3f800000};
    for (size_t c = 0; c < sizeof centres / sizeof centres[0]; c++) {
        for (uint32_t u = centres[c] - 70000; u < centres[c] + 70000; u++) {
            for (int s = 0; s < 2; s++) {
                float f = float_of(u | (s ? 0x80000000u : 0));
                cr_assert_eq(kern_fp32_to_fp16(f), hw_f2h(f), "float bits 0x%08x", u);
            }
        }
    }
}

Test(kern_types, bf16_rounds_to_nearest_even_and_quiets_nan)
{
    cr_assert_eq(kern_fp32_to_bf16(1.0f), 0x3f80);
    cr_assert_eq(kern_fp32_to_bf16(float_of(0x3f808000)), 0x3f80, "tie goes to even");
    cr_assert_eq(kern_fp32_to_bf16(float_of(0x3f818000)), 0x3f82, "tie goes to even");
    cr_assert_eq(kern_fp32_to_bf16(float_of(0x3f808001)), 0x3f81, "above the tie rounds up");
    cr_assert_eq(kern_fp32_to_bf16(float_of(0x7f800001)), 0x7fc0, "signalling NaN is quieted");
    cr_assert_eq(kern_fp32_to_bf16(float_of(0xff800000)), 0xff80, "-inf stays -inf");
    cr_assert_eq(kern_fp32_to_bf16(float_of(0x7f7fffff)), 0x7f80, "max float rounds to inf");
    cr_assert_eq(kern_fp32_to_bf16(float_of(0x00018000)), 0x0002, "subnormals are kept");
    cr_assert_eq(kern_bf16_to_fp32(0xc040), -3.0f);
    /* Round trip and nearest property on seeded values. */
    rng_state = 7;
    for (int i = 0; i < 100000; i++) {
        float f = frand() * 1e4f;
        float g = kern_bf16_to_fp32(kern_fp32_to_bf16(f));
        cr_assert_leq(fabsf(g - f), fabsf(f) * 0x1p-8f, "%g -> %g", f, g);
        cr_assert_eq(kern_fp32_to_bf16(g), kern_fp32_to_bf16(f));
    }
}

/* ---------------- layouts: hand-built blocks against naive formulas ---------------- */

typedef double (*naive_fn)(const uint8_t *blk, int i, double *mag);

/* mag receives the magnitude of the terms, for the relative bound. */
static double n_q4_0(const uint8_t *b, int i, double *mag)
{
    const kern_block_q4_0 *x = (const void *)b;
    int nib = i < 16 ? x->qs[i] & 15 : x->qs[i - 16] >> 4;
    double v = (nib - 8) * (double)h2f(x->d);
    *mag = fabs(v);
    return v;
}
static double n_q4_1(const uint8_t *b, int i, double *mag)
{
    const kern_block_q4_1 *x = (const void *)b;
    int nib = i < 16 ? x->qs[i] & 15 : x->qs[i - 16] >> 4;
    double a = nib * (double)h2f(x->d), m = h2f(x->m);
    *mag = fabs(a) + fabs(m);
    return a + m;
}
static int q5_value(const uint8_t *qs, const uint8_t *qh, int i)
{
    uint32_t h;
    memcpy(&h, qh, 4);
    int nib = i < 16 ? qs[i] & 15 : qs[i - 16] >> 4;
    return nib | (int)(((h >> i) & 1) << 4);
}
static double n_q5_0(const uint8_t *b, int i, double *mag)
{
    const kern_block_q5_0 *x = (const void *)b;
    double v = (q5_value(x->qs, x->qh, i) - 16) * (double)h2f(x->d);
    *mag = fabs(v);
    return v;
}
static double n_q5_1(const uint8_t *b, int i, double *mag)
{
    const kern_block_q5_1 *x = (const void *)b;
    double a = q5_value(x->qs, x->qh, i) * (double)h2f(x->d), m = h2f(x->m);
    *mag = fabs(a) + fabs(m);
    return a + m;
}
static double n_q8_0(const uint8_t *b, int i, double *mag)
{
    const kern_block_q8_0 *x = (const void *)b;
    double v = x->qs[i] * (double)h2f(x->d);
    *mag = fabs(v);
    return v;
}
static double n_q8_1(const uint8_t *b, int i, double *mag)
{
    const kern_block_q8_1 *x = (const void *)b;
    double v = x->qs[i] * (double)h2f(x->d);
    *mag = fabs(v);
    return v;
}
/* K-quants: element i sits in 128-half h, run k (32 elements) and lane l. */
static double n_q2_k(const uint8_t *b, int i, double *mag)
{
    const kern_block_q2_k *x = (const void *)b;
    int h = i / 128, k = (i % 128) / 32, l = i % 32;
    int q = (x->qs[32 * h + l] >> (2 * k)) & 3;
    int sc = x->scales[i / 16] & 15, mn = x->scales[i / 16] >> 4;
    double a = (double)h2f(x->d) * sc * q, m = (double)h2f(x->dmin) * mn;
    *mag = fabs(a) + fabs(m);
    return a - m;
}
static int scale6_q3(const uint8_t *s, int g) /* 4 low bits + 2 high bits, stored +32 */
{
    int lo = (s[g % 8] >> (4 * (g / 8))) & 15;
    int hi = (s[8 + g % 4] >> (2 * (g / 4))) & 3;
    return (lo | hi << 4) - 32;
}
static double n_q3_k(const uint8_t *b, int i, double *mag)
{
    const kern_block_q3_k *x = (const void *)b;
    int h = i / 128, k = (i % 128) / 32, l = i % 32;
    int q = (x->qs[32 * h + l] >> (2 * k)) & 3;
    int high = (x->hmask[i % 32] >> (i / 32)) & 1;
    double v = (double)h2f(x->d) * scale6_q3(x->scales, i / 16) * (q - (high ? 0 : 4));
    *mag = fabs(v);
    return v;
}
static void scale_min_6(const uint8_t *s, int g, int *sc, int *mn)
{
    if (g < 4) {
        *sc = s[g] & 63;
        *mn = s[g + 4] & 63;
    } else { /* low 4 bits in byte g+4 (scale low nibble, min high), top 2 in bytes g-4 / g */
        *sc = (s[g + 4] & 15) | (s[g - 4] >> 6) << 4;
        *mn = (s[g + 4] >> 4) | (s[g] >> 6) << 4;
    }
}
static double n_q4_k(const uint8_t *b, int i, double *mag)
{
    const kern_block_q4_k *x = (const void *)b;
    int g = i / 32, byte = x->qs[32 * (i / 64) + i % 32];
    int q = g % 2 ? byte >> 4 : byte & 15, sc, mn;
    scale_min_6(x->scales, g, &sc, &mn);
    double a = (double)h2f(x->d) * sc * q, m = (double)h2f(x->dmin) * mn;
    *mag = fabs(a) + fabs(m);
    return a - m;
}
static double n_q5_k(const uint8_t *b, int i, double *mag)
{
    const kern_block_q5_k *x = (const void *)b;
    int g = i / 32, byte = x->qs[32 * (i / 64) + i % 32];
    int q = (g % 2 ? byte >> 4 : byte & 15) | ((x->qh[i % 32] >> g) & 1) << 4, sc, mn;
    scale_min_6(x->scales, g, &sc, &mn);
    double a = (double)h2f(x->d) * sc * q, m = (double)h2f(x->dmin) * mn;
    *mag = fabs(a) + fabs(m);
    return a - m;
}
static double n_q6_k(const uint8_t *b, int i, double *mag)
{
    const kern_block_q6_k *x = (const void *)b;
    int h = i / 128, k = (i % 128) / 32, l = i % 32;
    int byte = x->ql[64 * h + 32 * (k & 1) + l];
    int lo = k < 2 ? byte & 15 : byte >> 4;
    int hi = (x->qh[32 * h + l] >> (2 * k)) & 3;
    double v = (double)h2f(x->d) * x->scales[i / 16] * ((lo | hi << 4) - 32);
    *mag = fabs(v);
    return v;
}
static double n_q8_k(const uint8_t *b, int i, double *mag)
{
    const kern_block_q8_k *x = (const void *)b;
    double v = (double)x->d * x->qs[i];
    *mag = fabs(v);
    return v;
}

/* Random bytes for every field, then sane positive fp16 scales (random bits could be NaN). */
static void fix_scales(kern_type_t t, uint8_t *b)
{
    switch (t) {
    case KERN_Q4_0: ((kern_block_q4_0 *)b)->d = rand_half(0.01f, 2); break;
    case KERN_Q5_0: ((kern_block_q5_0 *)b)->d = rand_half(0.01f, 2); break;
    case KERN_Q8_0: ((kern_block_q8_0 *)b)->d = rand_half(0.01f, 2); break;
    case KERN_Q4_1:
        ((kern_block_q4_1 *)b)->d = rand_half(0.01f, 2);
        ((kern_block_q4_1 *)b)->m = kern_fp32_to_fp16(frand());
        break;
    case KERN_Q5_1:
        ((kern_block_q5_1 *)b)->d = rand_half(0.01f, 2);
        ((kern_block_q5_1 *)b)->m = kern_fp32_to_fp16(frand());
        break;
    case KERN_Q8_1: ((kern_block_q8_1 *)b)->d = rand_half(0.01f, 2); break;
    case KERN_Q2_K:
        ((kern_block_q2_k *)b)->d = rand_half(0.01f, 2);
        ((kern_block_q2_k *)b)->dmin = rand_half(0.01f, 2);
        break;
    case KERN_Q3_K: ((kern_block_q3_k *)b)->d = rand_half(0.01f, 2); break;
    case KERN_Q4_K:
        ((kern_block_q4_k *)b)->d = rand_half(0.01f, 2);
        ((kern_block_q4_k *)b)->dmin = rand_half(0.01f, 2);
        break;
    case KERN_Q5_K:
        ((kern_block_q5_k *)b)->d = rand_half(0.01f, 2);
        ((kern_block_q5_k *)b)->dmin = rand_half(0.01f, 2);
        break;
    case KERN_Q6_K: ((kern_block_q6_k *)b)->d = rand_half(0.01f, 2); break;
    case KERN_Q8_K: ((kern_block_q8_k *)b)->d = 0.37f * frand(); break;
    default: break;
    }
}

static void check_layout(kern_type_t t, naive_fn naive)
{
    const kern_type_info_t *ti = kern_type_info(t);
    const int nblk = 7;
    uint8_t *raw = malloc(nblk * ti->block_bytes);
    float *out = malloc(nblk * ti->block * sizeof(float));
    rng_state = 1000 + t;
    fill_bytes(raw, nblk * ti->block_bytes);
    for (int b = 0; b < nblk; b++) fix_scales(t, raw + b * ti->block_bytes);
    kern_dequantize(t, raw, out, (int64_t)nblk * ti->block);
    for (int b = 0; b < nblk; b++) {
        for (int i = 0; i < ti->block; i++) {
            double mag, want = naive(raw + b * ti->block_bytes, i, &mag);
            double got = out[b * ti->block + i];
            cr_assert(fabs(got - want) <= 1e-6 * mag, "%s block %d elem %d: got %.9g want %.9g",
                      ti->name, b, i, got, want);
        }
    }
    free(raw);
    free(out);
}

Test(kern_quant, layout_q4_0) { check_layout(KERN_Q4_0, n_q4_0); }
Test(kern_quant, layout_q4_1) { check_layout(KERN_Q4_1, n_q4_1); }
Test(kern_quant, layout_q5_0) { check_layout(KERN_Q5_0, n_q5_0); }
Test(kern_quant, layout_q5_1) { check_layout(KERN_Q5_1, n_q5_1); }
Test(kern_quant, layout_q8_0) { check_layout(KERN_Q8_0, n_q8_0); }
Test(kern_quant, layout_q8_1) { check_layout(KERN_Q8_1, n_q8_1); }
Test(kern_quant, layout_q2_k) { check_layout(KERN_Q2_K, n_q2_k); }
Test(kern_quant, layout_q3_k) { check_layout(KERN_Q3_K, n_q3_k); }
Test(kern_quant, layout_q4_k) { check_layout(KERN_Q4_K, n_q4_k); }
Test(kern_quant, layout_q5_k) { check_layout(KERN_Q5_K, n_q5_k); }
Test(kern_quant, layout_q6_k) { check_layout(KERN_Q6_K, n_q6_k); }
Test(kern_quant, layout_q8_k) { check_layout(KERN_Q8_K, n_q8_k); }

Test(kern_quant, float_types_convert_elementwise)
{
    rng_state = 5;
    float x[7], y[7];
    uint16_t h[7];
    for (int i = 0; i < 7; i++) x[i] = frand() * 100;
    kern_quantize(KERN_F16, x, h, 7);
    kern_dequantize(KERN_F16, h, y, 7);
    for (int i = 0; i < 7; i++) {
        cr_assert_eq(h[i], kern_fp32_to_fp16(x[i]));
        cr_assert_eq(y[i], kern_fp16_to_fp32(h[i]));
    }
    kern_quantize(KERN_BF16, x, h, 7);
    kern_dequantize(KERN_BF16, h, y, 7);
    for (int i = 0; i < 7; i++) cr_assert_eq(y[i], kern_bf16_to_fp32(kern_fp32_to_bf16(x[i])));
    float z[7];
    kern_quantize(KERN_F32, x, z, 7);
    kern_dequantize(KERN_F32, z, y, 7);
    cr_assert_arr_eq(y, x, sizeof x);
}

/* ---------------- quantize -> dequantize error ---------------- */

/* Data: uniform in [-1, 1) times a per-block scale spread over 10^lg_lo .. 10^lg_hi, so fp16
 * scales of many exponents (subnormal ones too) are exercised. Bounds per element are relative
 * to the block's largest |x| (amax) for the 32-blocks, whose rounding is per element; K-quants
 * optimise a weighted error with quantized scales, so they get a relative RMS bound per
 * super-block. */
static float *seeded_blocks(int64_t nblk, int block, uint64_t seed, float lg_lo, float lg_hi)
{
    float *x = malloc(nblk * block * sizeof(float));
    rng_state = seed;
    for (int64_t b = 0; b < nblk; b++) {
        float s = powf(10.f, lg_lo + (lg_hi - lg_lo) * (frand() + 1) / 2);
        for (int i = 0; i < block; i++) x[b * block + i] = s * frand();
    }
    return x;
}

static const int64_t nblocks[] = {1, 7, 4097};
#define H 0x1p-11 /* fp16 relative rounding error (half an ulp of an 11-bit significand) */

/* Rounding error of d when stored as fp16: relative H for normal halves, but an absolute 2^-25
 * (half the subnormal spacing) once d drops below 2^-14, as it does for amax ~ 1e-3. */
static double herr(double d)
{
    return fmax(fabs(d) * H, 0x1p-25);
}

/* Per-element bound in units of amax for the 32-block types, derived in each comment. */
static double bound_legacy(kern_type_t t, float amax, float mn, float mx)
{
    double range = (double)mx - mn;
    switch (t) {
    /* d = amax/127, error <= d/2 from rounding q plus 127 * d * H from rounding d to fp16. */
    case KERN_Q8_0:
    case KERN_Q8_1: return amax / 127.0 * 0.5 + 127 * herr(amax / 127.0);
    /* d = max/-8: the far side maps to +8, clamped to +7, so one full step d = amax/8 at worst
     * (elsewhere half a step), plus 8 * d * H for the fp16 scale. */
    case KERN_Q4_0: return amax / 8.0 + 8 * herr(amax / 8.0);
    case KERN_Q5_0: return amax / 16.0 + 16 * herr(amax / 16.0);
    /* d = range/15 (31): half a step, 15 (31) steps of fp16 error in d, and fp16 error in m. */
    case KERN_Q4_1: return range / 15 * 0.5 + 15 * herr(range / 15) + herr(mn);
    case KERN_Q5_1: return range / 31 * 0.5 + 31 * herr(range / 31) + herr(mn);
    default: return 0;
    }
}

static void check_roundtrip_legacy(kern_type_t t)
{
    const kern_type_info_t *ti = kern_type_info(t);
    for (size_t s = 0; s < sizeof nblocks / sizeof nblocks[0]; s++) {
        int64_t nb = nblocks[s], n = nb * ti->block;
        float *x = seeded_blocks(nb, ti->block, 42 + s, -3, 2), *y = malloc(n * sizeof(float));
        void *q = malloc(nb * ti->block_bytes);
        kern_quantize(t, x, q, n);
        kern_dequantize(t, q, y, n);
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + b * ti->block, *yb = y + b * ti->block;
            float amax = 0, mn = xb[0], mx = xb[0];
            for (int i = 0; i < ti->block; i++) {
                amax = fmaxf(amax, fabsf(xb[i]));
                mn = fminf(mn, xb[i]);
                mx = fmaxf(mx, xb[i]);
            }
            /* 1e-6 * amax covers the f32 arithmetic of quantizer and dequantizer. */
            double bound = bound_legacy(t, amax, mn, mx) + 1e-6 * amax;
            for (int i = 0; i < ti->block; i++)
                cr_assert(fabs((double)yb[i] - xb[i]) <= bound,
                          "%s n=%ld block %ld elem %d: x %.9g y %.9g bound %.3g", ti->name,
                          (long)n, (long)b, i, xb[i], yb[i], bound);
        }
        free(x);
        free(y);
        free(q);
    }
}

Test(kern_quant, roundtrip_q4_0_within_one_step) { check_roundtrip_legacy(KERN_Q4_0); }
Test(kern_quant, roundtrip_q4_1_within_half_step) { check_roundtrip_legacy(KERN_Q4_1); }
Test(kern_quant, roundtrip_q5_0_within_one_step) { check_roundtrip_legacy(KERN_Q5_0); }
Test(kern_quant, roundtrip_q5_1_within_half_step) { check_roundtrip_legacy(KERN_Q5_1); }
Test(kern_quant, roundtrip_q8_0_within_half_step) { check_roundtrip_legacy(KERN_Q8_0); }
Test(kern_quant, roundtrip_q8_1_within_half_step) { check_roundtrip_legacy(KERN_Q8_1); }

/* K-quants: for uniform data a b-bit uniform quantizer over a group's range has RMS error
 * range / (2^b - 1) / sqrt(12), i.e. amax / (2^b - 1) / sqrt(3) relative to amax. The limits
 * below are 1.5x that (6-bit scales and the fit add a little): Q2_K 0.29, Q3_K 0.124, Q4_K
 * 0.058, Q5_K 0.028, Q6_K 0.0138 (symmetric, 64 levels), Q8_K 0.5/127 max error per element
 * (d kept in f32). A wrong layout or scale packing gives errors of order amax. Block scales
 * stay above 0.5 here: Q6_K's d is about amax/4096, and below amax ~ 0.25 it becomes a
 * subnormal fp16 with few significant bits, which ggml's format simply cannot represent well. */
static void check_roundtrip_k(kern_type_t t, int bits)
{
    const kern_type_info_t *ti = kern_type_info(t);
    const double limit = 1.5 / ((1 << bits) - 1) / sqrt(3.0);
    for (size_t s = 0; s < sizeof nblocks / sizeof nblocks[0]; s++) {
        int64_t nb = nblocks[s], n = nb * ti->block;
        float *x = seeded_blocks(nb, ti->block, 77 + s, -0.3f, 2), *y = malloc(n * sizeof(float));
        void *q = malloc(nb * ti->block_bytes);
        kern_quantize(t, x, q, n);
        kern_dequantize(t, q, y, n);
        for (int64_t b = 0; b < nb; b++) {
            double amax = 0, se = 0, emax = 0;
            for (int i = 0; i < ti->block; i++) {
                double e = (double)y[b * ti->block + i] - x[b * ti->block + i];
                amax = fmax(amax, fabs(x[b * ti->block + i]));
                se += e * e;
                emax = fmax(emax, fabs(e));
            }
            double rms = sqrt(se / ti->block) / amax;
            if (t == KERN_Q8_K)
                cr_assert(emax <= amax * (0.5 / 127 + 1e-6), "%s block %ld: max error %.3g",
                          ti->name, (long)b, emax / amax);
            else
                cr_assert(rms <= limit, "%s n=%ld block %ld: rms/amax %.4g > %.4g", ti->name,
                          (long)n, (long)b, rms, limit);
        }
        free(x);
        free(y);
        free(q);
    }
}

Test(kern_quant, roundtrip_q2_k_rms) { check_roundtrip_k(KERN_Q2_K, 2); }
Test(kern_quant, roundtrip_q3_k_rms) { check_roundtrip_k(KERN_Q3_K, 3); }
Test(kern_quant, roundtrip_q4_k_rms) { check_roundtrip_k(KERN_Q4_K, 4); }
Test(kern_quant, roundtrip_q5_k_rms) { check_roundtrip_k(KERN_Q5_K, 5); }
Test(kern_quant, roundtrip_q6_k_rms) { check_roundtrip_k(KERN_Q6_K, 6); }
Test(kern_quant, roundtrip_q8_k_within_half_step) { check_roundtrip_k(KERN_Q8_K, 8); }

Test(kern_quant, zero_blocks_stay_zero)
{
    static const kern_type_t types[] = {KERN_Q4_0, KERN_Q4_1, KERN_Q5_0, KERN_Q5_1, KERN_Q8_0,
                                        KERN_Q8_1, KERN_Q2_K, KERN_Q3_K, KERN_Q4_K, KERN_Q5_K,
                                        KERN_Q6_K, KERN_Q8_K};
    float x[256] = {0}, y[256];
    uint8_t q[292];
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        const kern_type_info_t *ti = kern_type_info(types[k]);
        memset(y, 0xff, sizeof y);
        kern_quantize(types[k], x, q, ti->block);
        kern_dequantize(types[k], q, y, ti->block);
        for (int i = 0; i < ti->block; i++) cr_assert_eq(y[i], 0.0f, "%s elem %d", ti->name, i);
    }
}

/* Values k * 2^-e with |k| <= 127 and a block maximum of exactly 127 * 2^-e: d = 2^-e, 1/d and
 * every x/d are exact, so Q8_0 reproduces them bit for bit (e up to 24 keeps 2^-e a valid
 * fp16, normal or subnormal). */
Test(kern_quant, q8_0_exact_on_scaled_integers)
{
    rng_state = 9;
    for (size_t s = 0; s < sizeof nblocks / sizeof nblocks[0]; s++) {
        int64_t nb = nblocks[s], n = nb * 32;
        float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
        kern_block_q8_0 *q = malloc(nb * sizeof *q);
        for (int64_t b = 0; b < nb; b++) {
            float p = ldexpf(1.f, -(int)(trand_u64() % 25));
            for (int i = 0; i < 32; i++) x[b * 32 + i] = (float)((int)(trand_u64() % 255) - 127) * p;
            x[b * 32 + trand_u64() % 32] = (trand_u64() & 1 ? 127 : -127) * p;
        }
        kern_quantize(KERN_Q8_0, x, q, n);
        kern_dequantize(KERN_Q8_0, q, y, n);
        cr_assert_arr_eq(y, x, n * sizeof(float), "n=%ld", (long)n);
        free(x);
        free(y);
        free(q);
    }
}

/* Bit-level checks of the reference rounding that are easy to get subtly wrong. */
Test(kern_quant, reference_rounding_details)
{
    /* Q8_0's reference rounds half away from zero: with amax 127, d = 1 and x = 2.5 -> 3. */
    float x[32] = {127, 2.5f, -2.5f, 3.5f};
    kern_block_q8_0 q;
    kern_quantize(KERN_Q8_0, x, &q, 32);
    cr_assert_eq(q.qs[1], 3);
    cr_assert_eq(q.qs[2], -3);
    cr_assert_eq(q.qs[3], 4);
    /* Q4_0: the first value of largest magnitude (-4) fixes d = -4 / -8 = 0.5 and maps to
     * nibble 0; +4 would be nibble 16 and is clamped to 15; 1 -> 1/0.5 + 8.5 truncated = 10. */
    float y[32] = {0};
    y[0] = -4;
    y[17] = 4;
    y[5] = 1;
    kern_block_q4_0 b4;
    kern_quantize(KERN_Q4_0, y, &b4, 32);
    cr_assert_eq(kern_fp16_to_fp32(b4.d), 0.5f);
    cr_assert_eq(b4.qs[0] & 15, 0);
    cr_assert_eq(b4.qs[1] >> 4, 15);
    cr_assert_eq(b4.qs[5] & 15, 10);
}

/* ---------------- real files ---------------- */

#define GOLDEN "../shared/golden/"

static model_gguf_t *open_golden(const char *name)
{
    model_gguf_t *g = NULL;
    int rc = model_gguf_open(name, &g);
    cr_assert_eq(rc, 0, "%s: %s", name, model_strerror(rc));
    return g;
}

static int64_t n_elems(const model_tensor_t *t)
{
    return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
}

/* Every tensor of the encoded file dequantizes to exactly the f32 file's values. (The Q8_0 file
 * was written with power-of-two scales, not amax/127, so requantizing would not reproduce its
 * bytes; only the decoding is pinned down here.) */
static void check_exact_encoding(const char *file, kern_type_t type)
{
    model_gguf_t *g = open_golden(file), *ref = open_golden(GOLDEN "qwen3moe-tiny-f32.gguf");
    int checked = 0;
    for (int i = 0; i < model_gguf_tensor_count(g); i++) {
        const model_tensor_t *t = model_gguf_tensor(g, i);
        if (t->type != type) continue;
        const model_tensor_t *r = model_gguf_find_tensor(ref, t->name);
        cr_assert_not_null(r, "%s missing from the f32 file", t->name);
        cr_assert_eq(r->type, KERN_F32);
        const int64_t n = n_elems(t);
        cr_assert_eq(n, n_elems(r), "%s", t->name);
        float *y = malloc(n * sizeof(float));
        kern_dequantize(type, t->data, y, n);
        cr_assert_arr_eq(y, r->data, n * sizeof(float), "%s: %s differs", file, t->name);
        free(y);
        checked++;
    }
    cr_assert_eq(checked, 30, "%s: expected 30 %s tensors", file, kern_type_info(type)->name);
    model_gguf_free(g);
    model_gguf_free(ref);
}

Test(kern_quant_golden, q8_0_file_dequantizes_to_f32_file)
{
    check_exact_encoding(GOLDEN "qwen3moe-tiny-q8_0.gguf", KERN_Q8_0);
}
Test(kern_quant_golden, f16_file_dequantizes_to_f32_file)
{
    check_exact_encoding(GOLDEN "qwen3moe-tiny-f16.gguf", KERN_F16);
}
Test(kern_quant_golden, bf16_file_dequantizes_to_f32_file)
{
    check_exact_encoding(GOLDEN "qwen3moe-tiny-bf16.gguf", KERN_BF16);
}

/* llama-quantize's eight encodings of one model against its Q8_0 encoding, tensor by tensor
 * (every quantized tensor, including blk.0.ffn_gate_exps.weight). For roughly Gaussian weights
 * a b-bit grid over a block's extreme (about 2.1 sigma for 32 values) leaves a relative RMS
 * error near 2.1 / 2^(b-1) / sqrt(12): 0.076 for 4 bits, 0.038 for 5, 0.016 for 6 (16-value
 * groups); measured 0.055-0.066, 0.028-0.030 and 0.014. Limits are about 1.5x theory: 0.12,
 * 0.06, 0.03. Q8_0 tensors in the other files come from the same quantizer and must be
 * identical. A misread layout decorrelates the values, giving about 1.4. */
static double rel_rms_limit(kern_type_t t)
{
    switch (t) {
    case KERN_Q4_0: case KERN_Q4_1: case KERN_Q4_K: return 0.12;
    case KERN_Q5_0: case KERN_Q5_1: case KERN_Q5_K: return 0.06;
    case KERN_Q6_K: return 0.03;
    case KERN_Q8_0: return 1e-6; /* the same quantizer on the same f32: identical tensors */
    default: return 0;
    }
}

Test(kern_quant_golden, llama_quantize_types_stay_close_to_q8_0)
{
    static const struct { const char *suffix; kern_type_t main; } files[] = {
        {"q4_0", KERN_Q4_0}, {"q4_1", KERN_Q4_1}, {"q5_0", KERN_Q5_0},   {"q5_1", KERN_Q5_1},
        {"q4_k_m", KERN_Q4_K}, {"q5_k_m", KERN_Q5_K}, {"q6_k", KERN_Q6_K}, {"q8_0", KERN_Q8_0},
    };
    model_gguf_t *ref = open_golden(GOLDEN "qwen3moe-kq-q8_0.gguf");
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        char path[256];
        snprintf(path, sizeof path, GOLDEN "qwen3moe-kq-%s.gguf", files[f].suffix);
        model_gguf_t *g = open_golden(path);
        const model_tensor_t *gate = model_gguf_find_tensor(g, "blk.0.ffn_gate_exps.weight");
        cr_assert_not_null(gate);
        cr_assert_eq(gate->type, files[f].main, "%s: gate experts in the file's own type", path);
        int checked = 0;
        for (int i = 0; i < model_gguf_tensor_count(g); i++) {
            const model_tensor_t *t = model_gguf_tensor(g, i);
            if (t->type == KERN_F32) continue;
            const model_tensor_t *r = model_gguf_find_tensor(ref, t->name);
            cr_assert_not_null(r, "%s", t->name);
            const int64_t n = n_elems(t);
            float *y = malloc(n * sizeof(float)), *z = malloc(n * sizeof(float));
            kern_dequantize(t->type, t->data, y, n);
            kern_dequantize(r->type, r->data, z, n);
            double se = 0, ss = 0;
            for (int64_t k = 0; k < n; k++) {
                se += ((double)y[k] - z[k]) * ((double)y[k] - z[k]);
                ss += (double)z[k] * z[k];
            }
            const double rel = sqrt(se / ss), limit = rel_rms_limit(t->type);
            cr_assert(limit > 0, "%s: %s has unexpected type %d", path, t->name, t->type);
            cr_assert(rel < limit, "%s: %s (%s) relative RMS %.4f >= %.2f", path, t->name,
                      kern_type_info(t->type)->name, rel, limit);
            free(y);
            free(z);
            checked++;
        }
        cr_assert_geq(checked, 12, "%s", path);
        model_gguf_free(g);
    }
    model_gguf_free(ref);
}
