/* MXFP4, the type gpt-oss ships its expert weights in (ggml type 39), and gpt-oss's gated unit.
 *
 * A block of 32 values is one E8M0 byte e (a power of two, no mantissa) and 16 bytes of 4-bit
 * e2m1 codes: byte j holds element j in its low nibble and element j + 16 in its high one, as
 * ggml's block_mxfp4 does. ggml stores the e2m1 values doubled as small integers
 * (0, 1, 2, 3, 4, 6, 8, 12 and their negatives) and halves the scale instead: value =
 * kv[code] * 2^(e - 128). Keeping the table integral lets the dot product with Q8_0 activations
 * (the dot type ggml uses for MXFP4) run as integer sums inside a block, like the other
 * 32-blocks.
 */
#include <math.h>
#include <string.h>

#include "kernels/kern-int.h"

static const int8_t kv_mxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* 2^(e - 128): half the E8M0 value, exact for every byte (e = 0 and 1 are f32 subnormals). */
static float e8m0_half(uint8_t e)
{
    uint32_t bits = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

void kern__deq_mxfp4(const void *src, float *dst, int64_t n)
{
    const kern_block_mxfp4 *b = src;
    for (int64_t i = 0; i < n / KERN_QK32; i++, dst += KERN_QK32) {
        const float d = e8m0_half(b[i].e);
        for (int j = 0; j < 16; j++) {
            dst[j] = kv_mxfp4[b[i].qs[j] & 0xf] * d;
            dst[j + 16] = kv_mxfp4[b[i].qs[j] >> 4] * d;
        }
    }
}

/* The code whose value (kv * d) is nearest to x; the lower code on ties, so 0 is +0. */
static uint8_t nearest(float x, float d)
{
    uint8_t best = 0;
    float err = fabsf(x);
    for (uint8_t c = 1; c < 16; c++) {
        float e = fabsf(x - kv_mxfp4[c] * d);
        if (e < err) {
            err = e;
            best = c;
        }
    }
    return best;
}

/* ggml's scheme: the exponent puts the block's largest magnitude within the top code's reach
 * (floor(log2 amax) - 2 + 127, so 12 * 2^(e-128) = 1.5 * 2^floor(log2 amax) >= amax), then
 * every value rounds to the nearest code. Clamped to the byte for extreme inputs. */
void kern__q_mxfp4(const float *src, void *dst, int64_t n)
{
    kern_block_mxfp4 *b = dst;
    for (int64_t i = 0; i < n / KERN_QK32; i++, src += KERN_QK32) {
        float amax = 0.0f;
        for (int j = 0; j < KERN_QK32; j++) amax = fmaxf(amax, fabsf(src[j]));
        int e = 0;
        if (amax > 0.0f && isfinite(amax)) {
            e = (int)floorf(log2f(amax)) - 2 + 127;
            e = e < 0 ? 0 : e > 254 ? 254 : e;
        }
        b[i].e = (uint8_t)e;
        const float d = e8m0_half((uint8_t)e);
        for (int j = 0; j < 16; j++)
            b[i].qs[j] = (uint8_t)(nearest(src[j], d) | nearest(src[j + 16], d) << 4);
    }
}

float kern__dot_mxfp4(int64_t n, const void *w, const void *xq)
{
    const kern_block_mxfp4 *a = w;
    const kern_block_q8_0 *x = xq;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / KERN_QK32; i++) {
        int s = 0;
        for (int j = 0; j < 16; j++)
            s += kv_mxfp4[a[i].qs[j] & 0xf] * x[i].qs[j] + kv_mxfp4[a[i].qs[j] >> 4] * x[i].qs[j + 16];
        sum += e8m0_half(a[i].e) * kern_fp16_to_fp32(x[i].d) * (float)s;
    }
    return sum;
}

void kern_swiglu_oai(float *out, const float *gate, const float *up, int64_t n, float alpha,
                     float limit)
{
    for (int64_t i = 0; i < n; i++) {
        const float g = fminf(gate[i], limit);
        const float u = fminf(fmaxf(up[i], -limit), limit);
        out[i] = g / (1.0f + expf(-alpha * g)) * (u + 1.0f);
    }
}
