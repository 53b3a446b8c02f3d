/* kernels/dot.c — dot products of one weight row with activations, and the activation rounding
 * that precedes them, as llama.cpp's CPU backend does it:
 *
 *   1. kern_quantize_act rounds f32 activations to the weight type's dot_type (Q8_0, Q8_1,
 *      Q8_K, F16, BF16 or F32), following ggml-cpu's x86 quantize_row_* (the AVX2 build).
 *   2. kern_vec_dot multiplies a weight row by those blocks: integer sums inside each block,
 *      then scale products in f32, like ggml's generic vec_dot_*.
 *
 * This file holds the scalar reference (kern__dot_scalar, kern__quant_act_scalar) and the two
 * dispatchers, which take the AVX2 entry (kernels/dot_avx2.c) when kern__isa allows it and the
 * entry exists, else the scalar one. Scalar results equal ggml's up to f32 summation order.
 */
#include <string.h>

#include "kernels/kern-int.h"
#include "wire/wire.h"

#define QK KERN_QK32
#define QK_K KERN_QK_K

static inline float h2f(uint16_t h) { return kern_fp16_to_fp32(h); }

/* ======================= activation rounding ======================= */

static void act_f32(const float *x, void *dst, int64_t n)
{
    memcpy(dst, x, (size_t)n * sizeof(float));
}

static void act_f16(const float *x, void *dst, int64_t n)
{
    uint16_t *y = dst;
    for (int64_t i = 0; i < n; i++) y[i] = kern_fp32_to_fp16(x[i]);
}

static void act_bf16(const float *x, void *dst, int64_t n)
{
    uint16_t *y = dst;
    for (int64_t i = 0; i < n; i++) y[i] = kern_fp32_to_bf16(x[i]);
}

/* Round to nearest, ties to even, as _mm256_round_ps(_MM_ROUND_NEAREST) does; valid for
 * |f| < 2^22, and activations scaled by 127/amax are within [-127, 127]. */
static inline int round_even(float f)
{
    float v = f + 12582912.f;
    int32_t i;
    memcpy(&i, &v, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

/* One block of ggml-cpu's x86 Q8_0/Q8_1 rounding. Unlike the reference quantizer, the
 * multiplier is 127/amax (not 1/d) and rounding is half-to-even; both change some q by one.
 * Returns d (unrounded) and stores the sum of q. */
static float act_q8_block(const float *x, uint16_t *d_out, int8_t *qs, int *sum)
{
    float amax = 0;
    for (int j = 0; j < QK; j++) {
        const float a = x[j] < 0 ? -x[j] : x[j];
        if (a > amax) amax = a;
    }
    const float d = amax / 127.f;
    const float id = amax != 0.0f ? 127.f / amax : 0.0f;
    *d_out = kern_fp32_to_fp16(d);
    int s = 0;
    for (int j = 0; j < QK; j++) {
        qs[j] = (int8_t)round_even(x[j] * id);
        s += qs[j];
    }
    *sum = s;
    return d;
}

static void act_q8_0(const float *x, void *dst, int64_t n)
{
    kern_block_q8_0 *y = dst;
    int sum;
    for (int64_t i = 0; i < n / QK; i++) act_q8_block(x + i * QK, &y[i].d, y[i].qs, &sum);
}

/* s = d * sum(q) with the unrounded f32 d, as the x86 path computes it (one fp16 rounding). */
static void act_q8_1(const float *x, void *dst, int64_t n)
{
    kern_block_q8_1 *y = dst;
    for (int64_t i = 0; i < n / QK; i++) {
        int sum;
        const float d = act_q8_block(x + i * QK, &y[i].d, y[i].qs, &sum);
        y[i].s = kern_fp32_to_fp16(d * (float)sum);
    }
}

/* ggml-cpu's x86 quantize_row_q8_K is the reference quantizer itself. */
static void act_q8_k(const float *x, void *dst, int64_t n)
{
    kern_quantize(KERN_Q8_K, x, dst, n);
}

const kern__quant_fn kern__quant_act_scalar[KERN_TYPE_COUNT] = {
    [KERN_F32] = act_f32,   [KERN_F16] = act_f16,   [KERN_BF16] = act_bf16,
    [KERN_Q8_0] = act_q8_0, [KERN_Q8_1] = act_q8_1, [KERN_Q8_K] = act_q8_k,
};

/* ======================= dot products: float types ======================= */

/* Float rows accumulate in double, as ggml's generic ggml_vec_dot_f32/f16/bf16 do (the products
 * themselves are f32). */
static float dot_f32(int64_t n, const void *vw, const void *vx)
{
    const float *w = vw, *x = vx;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)(w[i] * x[i]);
    return (float)sum;
}

static float dot_f16(int64_t n, const void *vw, const void *vx)
{
    const uint16_t *w = vw, *x = vx;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)(h2f(w[i]) * h2f(x[i]));
    return (float)sum;
}

static float dot_bf16(int64_t n, const void *vw, const void *vx)
{
    const uint16_t *w = vw, *x = vx;
    double sum = 0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)(kern_bf16_to_fp32(w[i]) * kern_bf16_to_fp32(x[i]));
    return (float)sum;
}

/* ======================= dot products: 32-blocks ======================= */

static float dot_q4_0(int64_t n, const void *vw, const void *vx)
{
    const kern_block_q4_0 *w = vw;
    const kern_block_q8_0 *x = vx;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++) {
            sumi += ((w[i].qs[j] & 0x0F) - 8) * x[i].qs[j];
            sumi += ((w[i].qs[j] >> 4) - 8) * x[i].qs[j + QK / 2];
        }
        sumf += sumi * (h2f(w[i].d) * h2f(x[i].d));
    }
    return sumf;
}

/* Q4_1 and Q5_1 store x ~ d*q + m, so dot = d_w d_x sum(q_w q_x) + m_w * (d_x sum q_x), and the
 * bracket is exactly what Q8_1's s holds. */
static float dot_q4_1(int64_t n, const void *vw, const void *vx)
{
    const kern_block_q4_1 *w = vw;
    const kern_block_q8_1 *x = vx;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++) {
            sumi += (w[i].qs[j] & 0x0F) * x[i].qs[j];
            sumi += (w[i].qs[j] >> 4) * x[i].qs[j + QK / 2];
        }
        sumf += (h2f(w[i].d) * h2f(x[i].d)) * sumi + h2f(w[i].m) * h2f(x[i].s);
    }
    return sumf;
}

static float dot_q5_0(int64_t n, const void *vw, const void *vx)
{
    const kern_block_q5_0 *w = vw;
    const kern_block_q8_0 *x = vx;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        uint32_t qh;
        memcpy(&qh, w[i].qh, sizeof qh);
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++) {
            const int q0 = ((w[i].qs[j] & 0x0F) | (((qh >> j) & 1) << 4)) - 16;
            const int q1 = ((w[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
            sumi += q0 * x[i].qs[j] + q1 * x[i].qs[j + QK / 2];
        }
        sumf += sumi * (h2f(w[i].d) * h2f(x[i].d));
    }
    return sumf;
}

static float dot_q5_1(int64_t n, const void *vw, const void *vx)
{
    const kern_block_q5_1 *w = vw;
    const kern_block_q8_1 *x = vx;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        uint32_t qh;
        memcpy(&qh, w[i].qh, sizeof qh);
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++) {
            const int q0 = (w[i].qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
            const int q1 = (w[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
            sumi += q0 * x[i].qs[j] + q1 * x[i].qs[j + QK / 2];
        }
        sumf += (h2f(w[i].d) * h2f(x[i].d)) * sumi + h2f(w[i].m) * h2f(x[i].s);
    }
    return sumf;
}

static float dot_q8_0(int64_t n, const void *vw, const void *vx)
{
    const kern_block_q8_0 *w = vw;
    const kern_block_q8_0 *x = vx;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK; i++) {
        int sumi = 0;
        for (int j = 0; j < QK; j++) sumi += w[i].qs[j] * x[i].qs[j];
        sumf += sumi * (h2f(w[i].d) * h2f(x[i].d));
    }
    return sumf;
}

/* ======================= dot products: K-quants against Q8_K ======================= */

/* Same packing as in quant.c (6-bit scales and mins of Q4_K/Q5_K in 12 bytes). */
static inline void scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* Same packing as in quant.c (Q3_K's 16 signed 6-bit scales). */
static inline int q3k_scale(const uint8_t *s, int j)
{
    int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    return (lo | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
}

/* Asymmetric K-quants (Q2_K, Q4_K, Q5_K) subtract dmin * m_g per group g; summed against the
 * activations that is dmin * d_x * sum_g m_g * sum(q_x in g), and Q8_K's bsums (sums of 16)
 * supply the inner sums without touching qs again. All integer sums fit in int32: at most
 * 256 * 31 * 127 * 63 for Q5_K. */
static float dot_q2_k(int64_t n, const void *vw, const void *vx)
{
    const kern_block_q2_k *w = vw;
    const kern_block_q8_k *x = vx;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *q2 = w[i].qs, *sc = w[i].scales;
        const int8_t *q8 = x[i].qs;
        int summs = 0;
        for (int j = 0; j < 16; j++) summs += x[i].bsums[j] * (sc[j] >> 4);
        int isum = 0, is = 0;
        for (int k = 0; k < QK_K / 128; k++, q2 += 32) {
            for (int shift = 0; shift < 8; shift += 2, q8 += 32) {
                for (int half = 0; half < 2; half++) {
                    int s = 0;
                    for (int l = 16 * half; l < 16 * half + 16; l++)
                        s += q8[l] * ((q2[l] >> shift) & 3);
                    isum += (sc[is++] & 0xF) * s;
                }
            }
        }
        const float dall = x[i].d * h2f(w[i].d), dmin = x[i].d * h2f(w[i].dmin);
        sumf += dall * isum - dmin * summs;
    }
    return sumf;
}

static float dot_q3_k(int64_t n, const void *vw, const void *vx)
{
    const kern_block_q3_k *w = vw;
    const kern_block_q8_k *x = vx;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *q3 = w[i].qs, *hm = w[i].hmask;
        const int8_t *q8 = x[i].qs;
        uint8_t m = 1;
        int isum = 0, is = 0;
        for (int k = 0; k < QK_K / 128; k++, q3 += 32) {
            for (int shift = 0; shift < 8; shift += 2, q8 += 32, m <<= 1) {
                for (int half = 0; half < 2; half++) {
                    int s = 0;
                    for (int l = 16 * half; l < 16 * half + 16; l++)
                        s += q8[l] * (((q3[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
                    isum += q3k_scale(w[i].scales, is++) * s;
                }
            }
        }
        sumf += h2f(w[i].d) * x[i].d * isum;
    }
    return sumf;
}

static float dot_q4_k(int64_t n, const void *vw, const void *vx)
{
    const kern_block_q4_k *w = vw;
    const kern_block_q8_k *x = vx;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        uint8_t sc[8], mn[8];
        for (int j = 0; j < 8; j++) scale_min_k4(j, w[i].scales, &sc[j], &mn[j]);
        int summs = 0;
        for (int j = 0; j < 16; j++) summs += x[i].bsums[j] * mn[j / 2];
        const uint8_t *q4 = w[i].qs;
        const int8_t *q8 = x[i].qs;
        int isum = 0;
        for (int j = 0; j < 4; j++, q4 += 32, q8 += 64) {
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; l++) {
                s0 += (q4[l] & 0xF) * q8[l];
                s1 += (q4[l] >> 4) * q8[l + 32];
            }
            isum += sc[2 * j] * s0 + sc[2 * j + 1] * s1;
        }
        const float d = h2f(w[i].d) * x[i].d, dmin = h2f(w[i].dmin) * x[i].d;
        sumf += d * isum - dmin * summs;
    }
    return sumf;
}

static float dot_q5_k(int64_t n, const void *vw, const void *vx)
{
    const kern_block_q5_k *w = vw;
    const kern_block_q8_k *x = vx;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        uint8_t sc[8], mn[8];
        for (int j = 0; j < 8; j++) scale_min_k4(j, w[i].scales, &sc[j], &mn[j]);
        int summs = 0;
        for (int j = 0; j < 16; j++) summs += x[i].bsums[j] * mn[j / 2];
        const uint8_t *ql = w[i].qs, *qh = w[i].qh;
        const int8_t *q8 = x[i].qs;
        int isum = 0;
        for (int j = 0; j < 4; j++, ql += 32, q8 += 64) {
            const int b1 = 2 * j, b2 = 2 * j + 1; /* qh bits of the two groups */
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; l++) {
                s0 += ((ql[l] & 0xF) | (((qh[l] >> b1) & 1) << 4)) * q8[l];
                s1 += ((ql[l] >> 4) | (((qh[l] >> b2) & 1) << 4)) * q8[l + 32];
            }
            isum += sc[2 * j] * s0 + sc[2 * j + 1] * s1;
        }
        const float d = h2f(w[i].d) * x[i].d, dmin = h2f(w[i].dmin) * x[i].d;
        sumf += d * isum - dmin * summs;
    }
    return sumf;
}

static float dot_q6_k(int64_t n, const void *vw, const void *vx)
{
    const kern_block_q6_k *w = vw;
    const kern_block_q8_k *x = vx;
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *ql = w[i].ql, *qh = w[i].qh;
        const int8_t *sc = w[i].scales, *q8 = x[i].qs;
        int isum = 0;
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, q8 += 128) {
            /* Four runs of 32 (elements l, l+32, l+64, l+96), each two groups of 16. */
            int s[8] = {0};
            for (int l = 0; l < 32; l++) {
                const int g = l / 16;
                s[g + 0] += (((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32) * q8[l];
                s[g + 2] += (((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32) * q8[l + 32];
                s[g + 4] += (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32) * q8[l + 64];
                s[g + 6] += (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32) * q8[l + 96];
            }
            for (int g = 0; g < 8; g++) isum += sc[g] * s[g];
        }
        sumf += h2f(w[i].d) * x[i].d * isum;
    }
    return sumf;
}

const kern__dot_fn kern__dot_scalar[KERN_TYPE_COUNT] = {
    [KERN_F32] = dot_f32,   [KERN_F16] = dot_f16,   [KERN_BF16] = dot_bf16,
    [KERN_Q4_0] = dot_q4_0, [KERN_Q4_1] = dot_q4_1, [KERN_Q5_0] = dot_q5_0,
    [KERN_Q5_1] = dot_q5_1, [KERN_Q8_0] = dot_q8_0, [KERN_Q2_K] = dot_q2_k,
    [KERN_Q3_K] = dot_q3_k, [KERN_Q4_K] = dot_q4_k, [KERN_Q5_K] = dot_q5_k,
    [KERN_Q6_K] = dot_q6_k, [KERN_MXFP4] = kern__dot_mxfp4,
};

/* ======================= dispatch ======================= */

void kern_quantize_act(kern_type_t dot_type, const float *src, void *dst, int64_t n)
{
    const kern_type_info_t *ti = kern_type_info(dot_type);
    CHECK(ti != NULL && n >= 0 && n % ti->block == 0);
    kern__quant_fn fn = NULL;
    if (kern__isa >= KERN_ISA_AVX2) fn = kern__quant_act_avx2[dot_type];
    if (fn == NULL) fn = kern__quant_act_scalar[dot_type];
    CHECK(fn != NULL); /* a type that is never a dot_type */
    fn(src, dst, n);
}

float kern_vec_dot(kern_type_t wt, int64_t n, const void *w_row, const void *xq)
{
    const kern_type_info_t *ti = kern_type_info(wt);
    CHECK(ti != NULL && n >= 0 && n % ti->block == 0);
    kern__dot_fn fn = NULL;
    if (kern__isa >= KERN_ISA_AVX2) fn = kern__dot_avx2[wt];
    if (fn == NULL) fn = kern__dot_scalar[wt];
    CHECK(fn != NULL); /* Q8_1/Q8_K rows, or a type without compute */
    return fn(n, w_row, xq);
}
