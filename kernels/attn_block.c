/* Causal attention of a run of consecutive tokens of one sequence (kern_attn_causal): the
 * prefill counterpart of kern_attn. Where kern_attn reads every cached key and value once per
 * token, this reads them once per run, tile by tile, and keeps a running max and sum per query
 * instead of the whole row of scores (the online softmax of FlashAttention): after a tile with
 * larger scores, what was accumulated is rescaled by exp(old max - new max). The scratch is
 * then tile-sized whatever the context length.
 *
 * This file holds the scalar reference and the dispatch; the AVX2 body that blocks the queries
 * of the whole run in registers is kernels/attn_block_avx2.c. The reference goes query by query
 * through the same tiles, in the element order of kern_attn's reference.
 */
#include "kernels/kern-int.h"

#include <math.h>

#include "wire/wire.h"

#define MR KERN__ATTN_MR

size_t kern_attn_causal_work_size(int nq, int n_tok, int hd, int hv)
{
    const size_t rp = ((size_t)nq * (size_t)n_tok + MR - 1) / MR * MR;
    const size_t T = KERN_ATTN_TILE;
    /* queries, outputs, a row block's scores, max/sum/rescale, key and value tiles */
    return rp * (size_t)hd + rp * (size_t)hv + MR * T + 3 * rp + (size_t)hd * T + T * (size_t)hv;
}

static float kv_elt(const void *row, int i, bool f16)
{
    return f16 ? kern_fp16_to_fp32(((const uint16_t *)row)[i]) : ((const float *)row)[i];
}

void kern_attn_causal(float *out, size_t out_stride, const float *q, size_t q_stride, int nq,
                      int n_tok, int pos0, const kern_kv_t *kv, int window, const float *sinks,
                      float scale, float *work)
{
    const size_t es = kv->type == KERN_F16 ? 2 : 4;
    CHECK((kv->type == KERN_F32 || kv->type == KERN_F16) && nq >= 1 && n_tok >= 1 &&
          pos0 >= 0 && window >= 0 && kv->k_stride % es == 0 && kv->v_stride % es == 0);
    if (kern__isa >= KERN_ISA_AVX2 && kv->hd % 8 == 0 && kv->hv % 8 == 0) {
        kern__attn_causal_avx2(out, out_stride, q, q_stride, nq, n_tok, pos0, kv, window, sinks,
                               scale, work);
        return;
    }
    const bool f16 = kv->type == KERN_F16;
    const int hd = kv->hd, hv = kv->hv, T = KERN_ATTN_TILE;
    float *s = work, *qr = work + T; /* (T) scores of a tile, (hd) the rounded query */
    for (int t = 0; t < n_tok; t++) {
        const int p = pos0 + t, lo = window > 0 && p + 1 > window ? p + 1 - window : 0;
        for (int g = 0; g < nq; g++) {
            const float *qg = q + (size_t)t * q_stride + (size_t)g * hd;
            for (int i = 0; i < hd; i++)
                qr[i] = f16 ? kern_fp16_to_fp32(kern_fp32_to_fp16(qg[i])) : qg[i];
            float *o = out + (size_t)t * out_stride + (size_t)g * hv;
            for (int i = 0; i < hv; i++) o[i] = 0.0f;
            /* A sink is a logit with no value: it starts the running max and adds 1 to the sum. */
            float m = sinks ? sinks[g] : -INFINITY, l = sinks ? 1.0f : 0.0f;
            for (int j0 = lo; j0 <= p; j0 += T) {
                const int nk = p + 1 - j0 < T ? p + 1 - j0 : T;
                float mt = -INFINITY;
                for (int j = 0; j < nk; j++) {
                    const uint8_t *kr = (const uint8_t *)kv->k + (size_t)(j0 + j) * kv->k_stride;
                    float d = 0.0f;
                    for (int i = 0; i < hd; i++) d += qr[i] * kv_elt(kr, i, f16);
                    s[j] = d * scale;
                    mt = s[j] > mt ? s[j] : mt;
                }
                const float mn = mt > m ? mt : m;
                const float alpha = m == -INFINITY ? 0.0f : expf(m - mn);
                l *= alpha;
                for (int i = 0; i < hv; i++) o[i] *= alpha;
                for (int j = 0; j < nk; j++) {
                    const uint8_t *vr = (const uint8_t *)kv->v + (size_t)(j0 + j) * kv->v_stride;
                    const float w = expf(s[j] - mn);
                    l += w;
                    for (int i = 0; i < hv; i++) o[i] += w * kv_elt(vr, i, f16);
                }
                m = mn;
            }
            const float inv = 1.0f / l;
            for (int i = 0; i < hv; i++) o[i] *= inv;
        }
    }
}
