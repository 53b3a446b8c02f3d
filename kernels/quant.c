/* kernels/quant.c — conversion between f32 and every GGUF block type: kern_dequantize (what
 * ggml's dequantize_row_* computes) and kern_quantize (ggml's reference quantizers
 * quantize_row_*_ref, the ones llama-quantize uses without an importance matrix).
 *
 * Both follow ggml's arithmetic operation by operation, in the same order and in f32, so the
 * results are bit-exact with llama.cpp's; where a line looks roundabout (the float-to-int casts
 * of the legacy quantizers, the 8-bit scale packing of Q4_K/Q5_K) that is why. Everything here
 * works on whole blocks (n a multiple of the block size, CHECKed), touches only the caller's
 * buffers, and uses fixed-size stack scratch of at most one super-block.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "kernels/kern-int.h"
#include "wire/wire.h"

#define QK KERN_QK32
#define QK_K KERN_QK_K
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* Groups whose largest magnitude is below this are treated as all zero (ggml's GROUP_MAX_EPS),
 * so that 1/max cannot overflow. */
#define GROUP_EPS 1e-15f

static inline float h2f(uint16_t h) { return kern_fp16_to_fp32(h); }
static inline uint16_t f2h(float f) { return kern_fp32_to_fp16(f); }

/* Round to nearest, ties to even, for |f| < 2^22: adding 1.5 * 2^23 leaves the integer in the
 * low mantissa bits. ggml uses exactly this (not lrintf), so ties round the same way. */
static inline int nearest_int(float f)
{
    float v = f + 12582912.f;
    int32_t i;
    memcpy(&i, &v, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

/* Scale j (6 bits) and min j (6 bits) of the 12 packed bytes of a Q4_K/Q5_K super-block:
 * entries 0..3 sit in the low 6 bits of bytes 0..3 (scales) and 4..7 (mins); entries 4..7 take
 * their low 4 bits from a nibble of bytes 8..11 and their top 2 bits from the spare high bits
 * of bytes 0..7. */
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

/* ======================= dequantize ======================= */

static void deq_q4_0(const kern_block_q4_0 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += QK) {
        const float d = h2f(b[i].d);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = ((b[i].qs[j] & 0x0F) - 8) * d;
            y[j + QK / 2] = ((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void deq_q4_1(const kern_block_q4_1 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += QK) {
        const float d = h2f(b[i].d), m = h2f(b[i].m);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (b[i].qs[j] & 0x0F) * d + m;
            y[j + QK / 2] = (b[i].qs[j] >> 4) * d + m;
        }
    }
}

/* Q5: bit j of qh is the fifth bit of element j (j = 0..31). */
static void deq_q5_0(const kern_block_q5_0 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += QK) {
        const float d = h2f(b[i].d);
        uint32_t qh;
        memcpy(&qh, b[i].qh, sizeof qh);
        for (int j = 0; j < QK / 2; j++) {
            const int h0 = ((qh >> j) << 4) & 0x10;
            const int h1 = (qh >> (j + 12)) & 0x10;
            y[j] = (((b[i].qs[j] & 0x0F) | h0) - 16) * d;
            y[j + QK / 2] = (((b[i].qs[j] >> 4) | h1) - 16) * d;
        }
    }
}

static void deq_q5_1(const kern_block_q5_1 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += QK) {
        const float d = h2f(b[i].d), m = h2f(b[i].m);
        uint32_t qh;
        memcpy(&qh, b[i].qh, sizeof qh);
        for (int j = 0; j < QK / 2; j++) {
            const int h0 = ((qh >> j) << 4) & 0x10;
            const int h1 = (qh >> (j + 12)) & 0x10;
            y[j] = ((b[i].qs[j] & 0x0F) | h0) * d + m;
            y[j + QK / 2] = ((b[i].qs[j] >> 4) | h1) * d + m;
        }
    }
}

static void deq_q8_0(const kern_block_q8_0 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += QK) {
        const float d = h2f(b[i].d);
        for (int j = 0; j < QK; j++) y[j] = b[i].qs[j] * d;
    }
}

static void deq_q8_1(const kern_block_q8_1 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += QK) {
        const float d = h2f(b[i].d);
        for (int j = 0; j < QK; j++) y[j] = b[i].qs[j] * d;
    }
}

/* Q2_K: 16 groups of 16; byte j of scales holds the group's 4-bit scale (low) and min (high).
 * qs packs four 2-bit values per byte: within each 128-element half, byte l holds elements
 * l, l+32, l+64, l+96 at shifts 0, 2, 4, 6. */
static void deq_q2_k(const kern_block_q2_k *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
        const uint8_t *q = b[i].qs;
        int is = 0;
        for (int n = 0; n < QK_K; n += 128, q += 32) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int half = 0; half < 2; half++) {
                    const uint8_t sc = b[i].scales[is++];
                    const float dl = d * (sc & 0xF), ml = dmin * (sc >> 4);
                    for (int l = 0; l < 16; l++)
                        *y++ = dl * ((q[l + 16 * half] >> shift) & 3) - ml;
                }
            }
        }
    }
}

/* Q3_K's 16 signed 6-bit scales (stored +32): low nibbles in bytes 0..7 (groups 0..7 low nibble,
 * 8..15 high nibble), top 2 bits in bytes 8..11 (group j at byte 8 + j%4, shift 2*(j/4)). */
static inline int q3k_scale(const uint8_t *s, int j)
{
    int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    return (lo | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
}

/* Q3_K: the low 2 bits laid out as in Q2_K; hmask bit k of byte l is the high bit of element
 * 32*k + l, and a clear high bit means "subtract 4". */
static void deq_q3_k(const kern_block_q3_k *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        const float d_all = h2f(b[i].d);
        const uint8_t *q = b[i].qs, *hm = b[i].hmask;
        uint8_t m = 1;
        int is = 0;
        for (int n = 0; n < QK_K; n += 128, q += 32) {
            for (int shift = 0; shift < 8; shift += 2, m <<= 1) {
                for (int half = 0; half < 2; half++) {
                    const float dl = d_all * q3k_scale(b[i].scales, is++);
                    for (int l = 16 * half; l < 16 * half + 16; l++)
                        *y++ = dl * (((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
                }
            }
        }
    }
}

/* Q4_K: 8 groups of 32 with 6-bit scales and mins; each 32-byte run of qs holds two groups,
 * the first in the low nibbles. */
static void deq_q4_k(const kern_block_q4_k *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
        const uint8_t *q = b[i].qs;
        for (int is = 0; is < 8; is += 2, q += 32) {
            uint8_t sc, m;
            scale_min_k4(is, b[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            scale_min_k4(is + 1, b[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (q[l] >> 4) - m2;
        }
    }
}

/* Q5_K: Q4_K plus a fifth bit; qh byte l bit 2k / 2k+1 belongs to element l of group 2k / 2k+1. */
static void deq_q5_k(const kern_block_q5_k *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
        const uint8_t *ql = b[i].qs, *qh = b[i].qh;
        uint8_t u1 = 1, u2 = 2;
        for (int is = 0; is < 8; is += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
            uint8_t sc, m;
            scale_min_k4(is, b[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            scale_min_k4(is + 1, b[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
        }
    }
}

/* Q6_K: per 128-element half, ql[l] and ql[l+32] carry the low nibbles of elements l, l+32
 * (low) and l+64, l+96 (high); qh[l] carries their top 2 bits at shifts 0, 2, 4, 6. 16 groups
 * of 16 with signed 8-bit scales; values are stored +32. */
static void deq_q6_k(const kern_block_q6_k *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        const float d = h2f(b[i].d);
        const uint8_t *ql = b[i].ql, *qh = b[i].qh;
        const int8_t *sc = b[i].scales;
        for (int n = 0; n < QK_K; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * sc[is] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
        }
    }
}

static void deq_q8_k(const kern_block_q8_k *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += QK_K)
        for (int j = 0; j < QK_K; j++) y[j] = b[i].d * b[i].qs[j];
}

void kern_dequantize(kern_type_t t, const void *src, float *dst, int64_t n)
{
    const kern_type_info_t *ti = kern_type_info(t);
    CHECK(ti != NULL && ti->compute && n >= 0 && n % ti->block == 0);
    const int64_t nb = n / ti->block;
    if (kern__isa >= KERN_ISA_AVX2 && kern__dequant_avx2[t]) {
        kern__dequant_avx2[t](src, dst, n);
        return;
    }
    switch (t) {
    case KERN_F32: memcpy(dst, src, (size_t)n * sizeof(float)); break;
    case KERN_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = h2f(((const uint16_t *)src)[i]);
        break;
    case KERN_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = kern_bf16_to_fp32(((const uint16_t *)src)[i]);
        break;
    case KERN_Q4_0: deq_q4_0(src, dst, nb); break;
    case KERN_Q4_1: deq_q4_1(src, dst, nb); break;
    case KERN_Q5_0: deq_q5_0(src, dst, nb); break;
    case KERN_Q5_1: deq_q5_1(src, dst, nb); break;
    case KERN_Q8_0: deq_q8_0(src, dst, nb); break;
    case KERN_Q8_1: deq_q8_1(src, dst, nb); break;
    case KERN_Q2_K: deq_q2_k(src, dst, nb); break;
    case KERN_Q3_K: deq_q3_k(src, dst, nb); break;
    case KERN_Q4_K: deq_q4_k(src, dst, nb); break;
    case KERN_Q5_K: deq_q5_k(src, dst, nb); break;
    case KERN_Q6_K: deq_q6_k(src, dst, nb); break;
    case KERN_Q8_K: deq_q8_k(src, dst, nb); break;
    case KERN_MXFP4: kern__deq_mxfp4(src, dst, n); break;
    default: CHECK(!"type marked compute without a dequantizer");
    }
}

/* ======================= quantize: legacy 32-blocks ======================= */

/* The value of largest magnitude, with its sign (the first one on ties). */
static float signed_absmax(const float *x, int n)
{
    float amax = 0, max = 0;
    for (int j = 0; j < n; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

/* Symmetric 4-bit: d = max/-8 so that the extreme maps to -8 exactly and the other side gets
 * up to +7; "(int)(v + 8.5f)" truncates, i.e. rounds half up, as ggml's cast does. */
static void q_q4_0(const float *x, kern_block_q4_0 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK) {
        const float d = signed_absmax(x, QK) / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        for (int j = 0; j < QK / 2; j++) {
            const int q0 = MIN(15, (int)(x[j] * id + 8.5f));
            const int q1 = MIN(15, (int)(x[j + QK / 2] * id + 8.5f));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void min_max(const float *x, int n, float *mn, float *mx)
{
    *mn = FLT_MAX;
    *mx = -FLT_MAX;
    for (int j = 0; j < n; j++) {
        if (x[j] < *mn) *mn = x[j];
        if (x[j] > *mx) *mx = x[j];
    }
}

static void q_q4_1(const float *x, kern_block_q4_1 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK) {
        float mn, mx;
        min_max(x, QK, &mn, &mx);
        const float d = (mx - mn) / 15;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        y[i].m = f2h(mn);
        for (int j = 0; j < QK / 2; j++) {
            const int q0 = MIN(15, (int)((x[j] - mn) * id + 0.5f));
            const int q1 = MIN(15, (int)((x[j + QK / 2] - mn) * id + 0.5f));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void q_q5_0(const float *x, kern_block_q5_0 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK) {
        const float d = signed_absmax(x, QK) / -16;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK / 2; j++) {
            const int q0 = MIN(31, (int)(x[j] * id + 16.5f));
            const int q1 = MIN(31, (int)(x[j + QK / 2] * id + 16.5f));
            y[i].qs[j] = (uint8_t)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= (uint32_t)((q0 >> 4) & 1) << j;
            qh |= (uint32_t)((q1 >> 4) & 1) << (j + QK / 2);
        }
        memcpy(y[i].qh, &qh, sizeof qh);
    }
}

static void q_q5_1(const float *x, kern_block_q5_1 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK) {
        float mn, mx;
        min_max(x, QK, &mn, &mx);
        const float d = (mx - mn) / 31;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        y[i].m = f2h(mn);
        uint32_t qh = 0;
        for (int j = 0; j < QK / 2; j++) {
            /* ggml has no MIN here; (x - min) * id cannot exceed 31 + rounding, and the 5-bit
             * masks below keep a stray 32 from spilling into the neighbour. */
            const int q0 = (int)((x[j] - mn) * id + 0.5f);
            const int q1 = (int)((x[j + QK / 2] - mn) * id + 0.5f);
            y[i].qs[j] = (uint8_t)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= (uint32_t)((q0 >> 4) & 1) << j;
            qh |= (uint32_t)((q1 >> 4) & 1) << (j + QK / 2);
        }
        memcpy(y[i].qh, &qh, sizeof qh);
    }
}

static float absmax(const float *x, int n)
{
    float amax = 0;
    for (int j = 0; j < n; j++) amax = MAX(amax, fabsf(x[j]));
    return amax;
}

/* The reference Q8_0/Q8_1 round half away from zero (roundf); the run-time activation path
 * in dot.c rounds half to even. */
static void q_q8_0(const float *x, kern_block_q8_0 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK) {
        const float d = absmax(x, QK) / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        for (int j = 0; j < QK; j++) y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

static void q_q8_1(const float *x, kern_block_q8_1 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK) {
        const float d = absmax(x, QK) / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            y[i].qs[j] = (int8_t)roundf(x[j] * id);
            sum += y[i].qs[j];
        }
        y[i].s = f2h(sum * d);
    }
}

/* ======================= quantize: K-quant helpers ======================= */

/* Symmetric quantization of n values to [-nmax, nmax-1] (stored +nmax in L), then a search of
 * 18 nearby scales for the one maximising (sum w x l)^2 / sum w l^2, i.e. the least weighted
 * squared error. w = x^2 (ggml's rmse_type 1 with no importance weights). Returns the scale. */
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L)
{
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        const float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = MAX(-nmax, MIN(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)(l + nmax);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            const int l = MAX(-nmax, MIN(nmax - 1, nearest_int(iscale * x[i])));
            const float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) {
                const int l = MAX(-nmax, MIN(nmax - 1, nearest_int(iscale * x[i])));
                L[i] = (int8_t)(nmax + l);
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Q3_K's group quantizer: symmetric to [-nmax, nmax-1], then up to 5 passes of coordinate
 * descent moving single values while (sum w x l)^2 / sum w l^2 grows (w = x^2). L gets l+nmax. */
static float make_q3_quants(int n, int nmax, const float *x, int8_t *L)
{
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        const float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    const float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = MAX(-nmax, MIN(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)l;
        const float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int itry = 0; itry < 5; itry++) {
        int n_changed = 0;
        for (int i = 0; i < n; i++) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * L[i] * L[i];
                int new_l = MAX(-nmax, MIN(nmax - 1, nearest_int(x[i] * sl2 / slx)));
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed++;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Asymmetric quantization x ~ scale * l - the_min, l in [0, nmax]: start from the plain
 * min/max fit, then try nstep+1 stretched grids (iscale = (nmax + rmin + rdelta*is)/range),
 * solve the weighted least-squares scale and min for each, and keep the grid with the least
 * weighted error (absolute error when use_mad). The min is clamped to <= 0, so the_min >= 0. */
static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                              float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep,
                              bool use_mad)
{
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        const float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; i++) {
        const int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)MAX(0, MIN(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_error += weights[i] * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            const int l = MAX(0, MIN(nmax, nearest_int(iscale * (x[i] - min))));
            Laux[i] = (uint8_t)l;
            const float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                cur_error += weights[i] * diff;
            }
            if (cur_error < best_error) {
                memcpy(L, Laux, (size_t)n);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* 2-bit values of one super-block into qs: within each 128 half, byte l gets elements
 * l, l+32, l+64, l+96 at shifts 0, 2, 4, 6 (shared by Q2_K and Q3_K). */
static void pack_2bit(const uint8_t *L, uint8_t *qs)
{
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; l++)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) |
                                      (L[j + l + 96] << 6));
}

/* ======================= quantize: K-quants ======================= */

static void q_q2_k(const float *x, kern_block_q2_k *y, int64_t nb)
{
    uint8_t L[QK_K], Laux[16];
    float weights[16], mins[QK_K / 16], scales[QK_K / 16];
    const float q4scale = 15.f;

    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            for (int l = 0; l < 16; l++) weights[l] = fabsf(x[16 * j + l]);
            scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux,
                                         -0.5f, 0.1f, 15, true);
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        if (max_scale > 0) {
            const float iscale = q4scale / max_scale;
            for (int j = 0; j < QK_K / 16; j++)
                y[i].scales[j] = (uint8_t)nearest_int(iscale * scales[j]);
            y[i].d = f2h(max_scale / q4scale);
        } else {
            memset(y[i].scales, 0, sizeof y[i].scales);
            y[i].d = f2h(0.f);
        }
        if (max_min > 0) {
            const float iscale = q4scale / max_min;
            for (int j = 0; j < QK_K / 16; j++)
                y[i].scales[j] |= (uint8_t)(nearest_int(iscale * mins[j]) << 4);
            y[i].dmin = f2h(max_min / q4scale);
        } else {
            y[i].dmin = f2h(0.f);
        }
        /* Requantize against the rounded 4-bit scales actually stored. */
        for (int j = 0; j < QK_K / 16; j++) {
            const float d = h2f(y[i].d) * (y[i].scales[j] & 0xF);
            if (!d) continue;
            const float dm = h2f(y[i].dmin) * (y[i].scales[j] >> 4);
            for (int ii = 0; ii < 16; ii++) {
                const int l = nearest_int((x[16 * j + ii] + dm) / d);
                L[16 * j + ii] = (uint8_t)MAX(0, MIN(3, l));
            }
        }
        pack_2bit(L, y[i].qs);
    }
}

static void q_q3_k(const float *x, kern_block_q3_k *y, int64_t nb)
{
    int8_t L[QK_K];
    float scales[QK_K / 16];

    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        float max_scale = 0, amax = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
            if (fabsf(scales[j]) > amax) {
                amax = fabsf(scales[j]);
                max_scale = scales[j];
            }
        }
        memset(y[i].scales, 0, sizeof y[i].scales);
        if (max_scale) {
            const float iscale = -32.f / max_scale;
            for (int j = 0; j < QK_K / 16; j++) {
                /* ggml keeps this in an int8_t before clamping; iscale*scale is within
                 * [-32, 32] so the narrowing never bites. */
                int l = (int8_t)nearest_int(iscale * scales[j]);
                l = MAX(-32, MIN(31, l)) + 32;
                if (j < 8)
                    y[i].scales[j] = (uint8_t)(l & 0xF);
                else
                    y[i].scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
                y[i].scales[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
            }
            y[i].d = f2h(1 / iscale);
        } else {
            y[i].d = f2h(0.f);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            const float d = h2f(y[i].d) * q3k_scale(y[i].scales, j);
            if (!d) continue;
            for (int ii = 0; ii < 16; ii++) {
                const int l = nearest_int(x[16 * j + ii] / d);
                L[16 * j + ii] = (int8_t)(MAX(-4, MIN(3, l)) + 4);
            }
        }
        /* High bit of element j goes to hmask[j % 32], bit j / 32. */
        memset(y[i].hmask, 0, sizeof y[i].hmask);
        for (int j = 0; j < QK_K; j++) {
            if (L[j] > 3) {
                y[i].hmask[j % 32] |= (uint8_t)(1 << (j / 32));
                L[j] -= 4;
            }
        }
        pack_2bit((const uint8_t *)L, y[i].qs);
    }
}

/* Shared by Q4_K and Q5_K: fit 8 groups of 32 with make_qkx2_quants (weights av|x| + |x|),
 * quantize their scales and mins to 6 bits against the largest of each, pack the 12 bytes, then
 * requantize every value against the stored scales. L receives values in [0, nmax]. */
static void qk_scales_mins(const float *x, int nmax, float rmin, int nstep, uint8_t *L,
                           uint8_t packed[12], uint16_t *d_out, uint16_t *dmin_out)
{
    uint8_t Laux[32];
    float weights[32], mins[QK_K / 32], scales[QK_K / 32];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++) sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++) weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = make_qkx2_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux,
                                     rmin, 0.1f, nstep, false);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < QK_K / 32; j++) {
        /* ggml narrows to uint8_t before the MIN; the values are 0..64, so that is harmless. */
        const uint8_t ls = (uint8_t)MIN(63, (uint8_t)nearest_int(inv_scale * scales[j]));
        const uint8_t lm = (uint8_t)MIN(63, (uint8_t)nearest_int(inv_min * mins[j]));
        if (j < 4) {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            packed[j - 4] |= (uint8_t)((ls >> 4) << 6);
            packed[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    *d_out = f2h(max_scale / 63.f);
    *dmin_out = f2h(max_min / 63.f);
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t sc, m;
        scale_min_k4(j, packed, &sc, &m);
        const float d = h2f(*d_out) * sc;
        if (!d) continue;
        const float dm = h2f(*dmin_out) * m;
        for (int ii = 0; ii < 32; ii++) {
            const int l = nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)MAX(0, MIN(nmax, l));
        }
    }
}

static void q_q4_k(const float *x, kern_block_q4_k *y, int64_t nb)
{
    uint8_t L[QK_K];
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        memset(y[i].scales, 0, sizeof y[i].scales);
        qk_scales_mins(x, 15, -1.f, 20, L, y[i].scales, &y[i].d, &y[i].dmin);
        uint8_t *q = y[i].qs;
        for (int j = 0; j < QK_K; j += 64, q += 32)
            for (int l = 0; l < 32; l++) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

static void q_q5_k(const float *x, kern_block_q5_k *y, int64_t nb)
{
    uint8_t L[QK_K];
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        memset(y[i].scales, 0, sizeof y[i].scales);
        qk_scales_mins(x, 31, -0.5f, 15, L, y[i].scales, &y[i].d, &y[i].dmin);
        uint8_t *ql = y[i].qs, *qh = y[i].qh;
        memset(qh, 0, QK_K / 8);
        uint8_t m1 = 1, m2 = 2;
        for (int n = 0; n < QK_K; n += 64, ql += 32, m1 <<= 2, m2 <<= 2) {
            for (int j = 0; j < 32; j++) {
                int l1 = L[n + j], l2 = L[n + j + 32];
                if (l1 > 15) {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                if (l2 > 15) {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[j] = (uint8_t)(l1 | (l2 << 4));
            }
        }
    }
}

static void q_q6_k(const float *x, kern_block_q6_k *y, int64_t nb)
{
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < QK_K / 16; ib++) {
            scales[ib] = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
            if (fabsf(scales[ib]) > max_abs_scale) {
                max_abs_scale = fabsf(scales[ib]);
                max_scale = scales[ib];
            }
        }
        if (max_abs_scale < GROUP_EPS) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float iscale = -128.f / max_scale;
        y[i].d = f2h(1 / iscale);
        for (int ib = 0; ib < QK_K / 16; ib++)
            y[i].scales[ib] = (int8_t)MIN(127, nearest_int(iscale * scales[ib]));
        for (int j = 0; j < QK_K / 16; j++) {
            const float d = h2f(y[i].d) * y[i].scales[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ii++) {
                const int l = nearest_int(x[16 * j + ii] / d);
                L[16 * j + ii] = (int8_t)(MAX(-32, MIN(31, l)) + 32);
            }
        }
        uint8_t *ql = y[i].ql, *qh = y[i].qh;
        for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; l++) {
                const int q1 = L[j + l], q2 = L[j + l + 32], q3 = L[j + l + 64],
                          q4 = L[j + l + 96];
                ql[l] = (uint8_t)((q1 & 0xF) | ((q3 & 0xF) << 4));
                ql[l + 32] = (uint8_t)((q2 & 0xF) | ((q4 & 0xF) << 4));
                qh[l] = (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) |
                                  ((q4 >> 4) << 6));
            }
        }
    }
}

/* Q8_K: the signed extreme maps to -127 (iscale = -127/max), so the other side may reach
 * +127 only through the MIN; d = 1/iscale is kept in f32. bsums are the sums of each 16. */
static void q_q8_k(const float *x, kern_block_q8_k *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        const float max = signed_absmax(x, QK_K);
        if (!max) {
            /* ggml leaves bsums stale here; zeroing them keeps every field defined. */
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; j++) y[i].qs[j] = (int8_t)MIN(127, nearest_int(iscale * x[j]));
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int ii = 0; ii < 16; ii++) sum += y[i].qs[16 * j + ii];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}

void kern_quantize(kern_type_t t, const float *src, void *dst, int64_t n)
{
    const kern_type_info_t *ti = kern_type_info(t);
    CHECK(ti != NULL && ti->compute && n >= 0 && n % ti->block == 0);
    const int64_t nb = n / ti->block;
    switch (t) {
    case KERN_F32: memcpy(dst, src, (size_t)n * sizeof(float)); break;
    case KERN_F16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = f2h(src[i]);
        break;
    case KERN_BF16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = kern_fp32_to_bf16(src[i]);
        break;
    case KERN_Q4_0: q_q4_0(src, dst, nb); break;
    case KERN_Q4_1: q_q4_1(src, dst, nb); break;
    case KERN_Q5_0: q_q5_0(src, dst, nb); break;
    case KERN_Q5_1: q_q5_1(src, dst, nb); break;
    case KERN_Q8_0: q_q8_0(src, dst, nb); break;
    case KERN_Q8_1: q_q8_1(src, dst, nb); break;
    case KERN_Q2_K: q_q2_k(src, dst, nb); break;
    case KERN_Q3_K: q_q3_k(src, dst, nb); break;
    case KERN_Q4_K: q_q4_k(src, dst, nb); break;
    case KERN_Q5_K: q_q5_k(src, dst, nb); break;
    case KERN_Q6_K: q_q6_k(src, dst, nb); break;
    case KERN_Q8_K: q_q8_k(src, dst, nb); break;
    case KERN_MXFP4: kern__q_mxfp4(src, dst, n); break;
    default: CHECK(!"type marked compute without a quantizer");
    }
}
