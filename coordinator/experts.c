/* Local routed experts: the "all experts in this process" implementation of coord_experts_t.
 * The arithmetic is kern_moe_ffn, the same function expert nodes run, so local and distributed
 * paths differ only in how partial sums across nodes are added.
 */
#include "coordinator/coord.h"

#include <errno.h>
#include <stdlib.h>

#include "wire/wire.h"

typedef struct {
    coord_experts_t base;
    const model_t *m;
    kern_pool_t *pool;
    int max_tok;
    kern_expert_t *experts; /* (n_layer, n_expert) views into the model's expert tensors */
    void *work;             /* kern_moe_ffn scratch */
    size_t work_size;
} local_t;

static int local_compute(coord_experts_t *ex, int layer, int n_tok, int k, const float *x,
                         const int32_t *ids, const float *w, float *out)
{
    local_t *L = (local_t *)ex;
    const model_hparams_t *hp = &L->m->hp;
    if (layer < 0 || layer >= hp->n_layer || !L->m->layers[layer].gate_exps || n_tok < 0 ||
        n_tok > L->max_tok || k < 1 || k > hp->n_expert_used)
        return -EINVAL;
    for (int i = 0; i < n_tok * k; i++)
        if (ids[i] >= hp->n_expert) return -EINVAL;
    kern_moe_ffn(L->pool, L->experts + (size_t)layer * hp->n_expert, hp->n_expert, hp->n_embd,
                 hp->n_ff_exp, n_tok, k, x, ids, w, out, L->work, L->work_size);
    return 0;
}

static void local_free(coord_experts_t *ex)
{
    local_t *L = (local_t *)ex;
    free(L->experts);
    free(L->work);
    free(L);
}

static const coord_experts_vt_t local_vt = {local_compute, local_free, NULL};

coord_experts_t *coord_experts_local_new(const model_t *m, kern_pool_t *pool, int max_tok)
{
    const model_hparams_t *hp = &m->hp;
    CHECK(max_tok >= 1 && hp->n_expert > 0);
    local_t *L = xcalloc(1, sizeof(*L));
    L->base.vt = &local_vt;
    L->m = m;
    L->pool = pool;
    L->max_tok = max_tok;
    L->experts = xcalloc((size_t)hp->n_layer * hp->n_expert, sizeof(kern_expert_t));
    for (int il = 0; il < hp->n_layer; il++) {
        const model_layer_t *ly = &m->layers[il];
        if (!ly->gate_exps) continue;
        for (int e = 0; e < hp->n_expert; e++) {
            kern_expert_t *x = &L->experts[(size_t)il * hp->n_expert + e];
            x->gate_type = ly->gate_exps->type;
            x->up_type = ly->up_exps->type;
            x->down_type = ly->down_exps->type;
            x->gate = (const uint8_t *)ly->gate_exps->data + model_expert_stride(ly->gate_exps) * e;
            x->up = (const uint8_t *)ly->up_exps->data + model_expert_stride(ly->up_exps) * e;
            x->down = (const uint8_t *)ly->down_exps->data + model_expert_stride(ly->down_exps) * e;
        }
        size_t ws = kern_moe_work_size(&L->experts[(size_t)il * hp->n_expert], hp->n_embd,
                                       hp->n_ff_exp, max_tok, hp->n_expert_used);
        if (ws > L->work_size) L->work_size = ws;
    }
    L->work = xmalloc_aligned(64, L->work_size);
    return &L->base;
}

void coord_experts_free(coord_experts_t *ex)
{
    if (ex) ex->vt->free(ex);
}
