/* Routers: the gate of every MoE layer, in llama.cpp's order of operations (build_moe_ffn):
 * probabilities from the logits (softmax, or sigmoid for DeepSeek-V3 and GLM-4.5), a selection
 * score that adds the score-correction bias, group-limited choice (keep the n_group_used groups
 * whose two best scores sum highest, mask the rest), top-k on the selection score, weights from
 * the unbiased probabilities, optional renormalisation and a constant scale. With the defaults
 * (softmax, no bias, one group, scale 1) this is exactly what engine.c did before.
 */
#include "coordinator/mla.h"

#include <math.h>
#include <string.h>

void coord__router_select(const model_hparams_t *hp, const float *bias, float *p, int *ids,
                          float *w)
{
    const int E = hp->n_expert, K = hp->n_expert_used;
    CHECK(E >= 1 && E <= COORD__ROUTER_MAX_EXPERT && K >= 1 && K <= E);
    if (hp->gating == MODEL_GATING_SIGMOID)
        for (int i = 0; i < E; i++) p[i] = 1.0f / (1.0f + expf(-p[i]));
    else
        kern_softmax(p, E);

    const float *sel = p;
    float s[COORD__ROUTER_MAX_EXPERT];
    if (bias || hp->n_expert_groups > 1) {
        for (int i = 0; i < E; i++) s[i] = p[i] + (bias ? bias[i] : 0.0f);
        sel = s;
    }
    if (hp->n_expert_groups > 1) {
        /* Score each group by the sum of its two best selection scores, keep the best
         * n_group_used groups and take the others out of the running. */
        const int G = hp->n_expert_groups, per = E / G;
        float gs[COORD__ROUTER_MAX_EXPERT];
        int top2[2], keep[COORD__ROUTER_MAX_EXPERT];
        for (int g = 0; g < G; g++) {
            kern_topk(s + (size_t)g * per, per, 2, top2);
            gs[g] = s[g * per + top2[0]] + s[g * per + top2[1]];
        }
        kern_topk(gs, G, hp->n_group_used, keep);
        bool used[COORD__ROUTER_MAX_EXPERT];
        memset(used, 0, sizeof(bool) * (size_t)G);
        for (int j = 0; j < hp->n_group_used; j++) used[keep[j]] = true;
        for (int g = 0; g < G; g++)
            if (!used[g])
                for (int i = 0; i < per; i++) s[g * per + i] = -INFINITY;
    }
    kern_topk(sel, E, K, ids);
    float sum = 0.0f;
    for (int j = 0; j < K; j++) {
        w[j] = p[ids[j]];
        sum += w[j];
    }
    if (hp->expert_norm) {
        /* llama.cpp clamps the sum away from zero (sigmoid weights can all be tiny). */
        if (sum < 6.103515625e-5f) sum = 6.103515625e-5f;
        for (int j = 0; j < K; j++) w[j] /= sum;
    }
    if (hp->expert_scale != 1.0f)
        for (int j = 0; j < K; j++) w[j] *= hp->expert_scale;
}
