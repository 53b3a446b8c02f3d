/* Elementwise and small reductions of one decode step: RMS norm, rotary position embedding,
 * softmax, SwiGLU, top-k expert selection, and attention of a GQA group (its reference here, the
 * AVX2 body in attn_avx2.c). Each follows ggml's CPU operator in the order of its float
 * operations (double accumulators where ggml uses ggml_float), because our logits
 * are compared with llama.cpp's; they are cheap next to the matrix products, so they stay
 * plain C that the compiler may vectorise where it does not change the result.
 */
#include "kernels/kern-int.h"

#include <math.h>

#include "wire/wire.h"

void kern_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
    /* ggml squares in float and accumulates in double, then rounds the mean to float. */
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / (double)n);
    const float scale = 1.0f / sqrtf(mean + eps);
    /* Scale first, weight after: ggml runs rms_norm and mul as two operators, so the product is
     * rounded in that order. */
    if (w) {
        for (int64_t i = 0; i < n; i++) out[i] = (x[i] * scale) * w[i];
    } else {
        for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale;
    }
}

void kern_rope(float *x, int n_heads, int head_dim, int n_rot, int pos, float freq_base,
               float freq_scale, bool neox)
{
    const float theta_scale = powf(freq_base, -2.0f / (float)n_rot);
    const int half = n_rot / 2;
    /* ggml builds theta by repeated multiplication (not powf per pair) and applies freq_scale
     * last; the angle of pair i is the same for every head, so it is computed once per pair. */
    float theta_base = (float)pos;
    for (int i = 0; i < half; i++) {
        const float theta = freq_scale * theta_base;
        const float c = cosf(theta), s = sinf(theta);
        theta_base *= theta_scale;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (int64_t)h * head_dim;
            const int a = neox ? i : 2 * i;
            const int b = neox ? i + half : 2 * i + 1;
            const float x0 = v[a], x1 = v[b];
            v[a] = x0 * c - x1 * s;
            v[b] = x0 * s + x1 * c;
        }
    }
}

void kern_softmax(float *x, int64_t n)
{
    float max = -INFINITY;
    for (int64_t i = 0; i < n; i++) max = x[i] > max ? x[i] : max;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += (double)x[i];
    }
    /* ggml scales by the float-rounded reciprocal rather than dividing each element. */
    const float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

void kern_swiglu(float *out, const float *gate, const float *up, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void kern_topk(const float *x, int n, int k, int *idx)
{
    /* Insertion into a sorted list of the k best so far: k is a handful (2..8 experts) and n a
     * few hundred, so this beats a heap or a full sort. Strict '>' keeps the earlier index first
     * among equal values, since candidates arrive in index order. */
    int len = 0;
    for (int i = 0; i < n; i++) {
        if (len == k && !(x[i] > x[idx[k - 1]])) continue;
        int j = len < k ? len++ : k - 1;
        while (j > 0 && x[i] > x[idx[j - 1]]) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = i;
    }
}

size_t kern_attn_work_size(int nq, int n_kv, int hd)
{
    return (size_t)nq * ((size_t)n_kv + (size_t)hd);
}

static float kv_elt(const void *row, int i, bool f16)
{
    return f16 ? kern_fp16_to_fp32(((const uint16_t *)row)[i]) : ((const float *)row)[i];
}

void kern_attn(float *out, size_t out_stride, const float *q, int nq, const void *k,
               size_t k_stride, const void *v, size_t v_stride, kern_type_t kv_type, int n_kv,
               int hd, int hv, float scale, float *work)
{
    CHECK((kv_type == KERN_F32 || kv_type == KERN_F16) && nq >= 1 && n_kv >= 1);
    if (kern__isa >= KERN_ISA_AVX2 && hd % 8 == 0 && hv % 8 == 0) {
        kern__attn_avx2(out, out_stride, q, nq, k, k_stride, v, v_stride, kv_type, n_kv, hd, hv,
                        scale, work);
        return;
    }
    /* The reference: one query at a time, dot products in element order. */
    const bool f16 = kv_type == KERN_F16;
    float *w = work, *qr = work + n_kv;
    for (int r = 0; r < nq; r++) {
        for (int i = 0; i < hd; i++) {
            const float x = q[(size_t)r * hd + i];
            qr[i] = f16 ? kern_fp16_to_fp32(kern_fp32_to_fp16(x)) : x;
        }
        for (int j = 0; j < n_kv; j++) {
            const uint8_t *kr = (const uint8_t *)k + (size_t)j * k_stride;
            float s = 0.0f;
            for (int i = 0; i < hd; i++) s += qr[i] * kv_elt(kr, i, f16);
            w[j] = s * scale;
        }
        kern_softmax(w, n_kv);
        float *o = out + (size_t)r * out_stride;
        for (int i = 0; i < hv; i++) o[i] = 0.0f;
        for (int j = 0; j < n_kv; j++) {
            const uint8_t *vr = (const uint8_t *)v + (size_t)j * v_stride;
            for (int i = 0; i < hv; i++) o[i] += w[j] * kv_elt(vr, i, f16);
        }
    }
}
