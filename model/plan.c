/* Memory planner: how much of a model is routed experts, and which expert nodes (one, or R
 * distinct ones with replicas) hold which (layer, expert) pair. The coordinator (attention,
 * routers, shared experts, embeddings, head, KV cache) and `moemesh-model plan` both use it.
 *
 * A routed-expert tensor is a `blk.<L>.*_exps*` tensor of 2+ dims whose last dimension is the
 * model's expert count; expert e owns the e-th slice of that last dimension, nbytes/n_expert
 * bytes. Everything else stays on the coordinator. The file is validated by the reader, but
 * names and counts are still outside input: sizes allocated here are bounded before use.
 */
#include "model/model.h"
#include "wire/wire.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PLAN_MAX_PAIRS (1 << 24) /* (layer, expert) pairs; far beyond any real model */

/* An integer key of the architecture, or def. Per-layer arrays give their largest element. */
static int64_t arch_int(const model_gguf_t *g, const char *arch, const char *key, int64_t def)
{
    char full[160];
    snprintf(full, sizeof(full), "%s.%s", arch, key);
    int64_t v;
    if (model_gguf_get_int(g, full, &v)) return v;
    const model_gguf_value_t *a = model_gguf_get_arr(g, full, -1);
    if (!a) return def;
    int64_t best = def;
    bool any = false;
    for (uint64_t i = 0; i < a->arr.n; i++)
        if (model_gguf_value_int(&a->arr.v[i], &v) && (!any || v > best)) best = v, any = true;
    return best;
}

/* Layer index of a `blk.<L>.` name, or -1. */
static int layer_of(const char *name)
{
    if (strncmp(name, "blk.", 4) != 0) return -1;
    char *end;
    long l = strtol(name + 4, &end, 10);
    if (end == name + 4 || *end != '.' || l < 0 || l > (1 << 20)) return -1;
    return (int)l;
}

static bool is_expert_tensor(const model_tensor_t *t, int n_expert)
{
    return n_expert > 0 && t->n_dims >= 2 && t->ne[t->n_dims - 1] == n_expert &&
           strstr(t->name, "_exps") != NULL && layer_of(t->name) >= 0;
}

static uint64_t elements(const model_tensor_t *t)
{
    return (uint64_t)t->ne[0] * (uint64_t)t->ne[1] * (uint64_t)t->ne[2] * (uint64_t)t->ne[3];
}

void model_weights_info(const model_gguf_t *g, model_weights_t *out)
{
    memset(out, 0, sizeof(*out));
    const char *arch = model_gguf_get_str(g, "general.architecture");
    out->arch = arch ? arch : "";
    int64_t n_layers = arch_int(g, out->arch, "block_count", 0);
    int64_t n_expert = arch_int(g, out->arch, "expert_count", 0);
    int64_t n_used = arch_int(g, out->arch, "expert_used_count", 0);
    out->n_ctx = arch_int(g, out->arch, "context_length", 0);
    out->n_layers = n_layers > 0 && n_layers <= (1 << 20) ? (int)n_layers : 0;
    out->n_expert = n_expert > 0 && n_expert <= (1 << 20) ? (int)n_expert : 0;
    out->n_expert_used = n_used > 0 && n_used <= out->n_expert ? (int)n_used : out->n_expert;

    int64_t n_embd = arch_int(g, out->arch, "embedding_length", 0);
    int64_t n_head = arch_int(g, out->arch, "attention.head_count", 0);
    int64_t n_head_kv = arch_int(g, out->arch, "attention.head_count_kv", n_head);
    int64_t head_dim = n_head > 0 ? n_embd / n_head : 0;
    int64_t k_len = arch_int(g, out->arch, "attention.key_length", head_dim);
    int64_t v_len = arch_int(g, out->arch, "attention.value_length", head_dim);
    if (n_head_kv > 0 && k_len >= 0 && v_len >= 0 && n_head_kv < (1 << 20) && k_len < (1 << 24) &&
        v_len < (1 << 24))
        out->kv_bytes_per_token = (uint64_t)out->n_layers * (uint64_t)n_head_kv *
                                  (uint64_t)(k_len + v_len) * 2;
    /* MLA caches one row per token and layer, the latent and the shared rotated key part; the
     * values are the latent itself. */
    int64_t kv_lora = arch_int(g, out->arch, "attention.kv_lora_rank", 0);
    int64_t rope = arch_int(g, out->arch, "rope.dimension_count", 0);
    if (kv_lora > 0 && kv_lora < (1 << 24) && rope >= 0 && rope < (1 << 24)) {
        out->kv_latent = (int)(kv_lora + rope);
        out->kv_bytes_per_token = (uint64_t)out->n_layers * (uint64_t)out->kv_latent * 2;
    }

    for (int i = 0; i < model_gguf_tensor_count(g); i++) {
        const model_tensor_t *t = model_gguf_tensor(g, i);
        out->total_params += elements(t);
        out->total_bytes += t->nbytes;
        if (strstr(t->name, "_shexp.")) out->shared_bytes += t->nbytes;
        if (is_expert_tensor(t, out->n_expert)) {
            out->expert_params += elements(t);
            out->expert_bytes += t->nbytes;
        }
    }
    out->active_params = out->total_params - out->expert_params;
    if (out->n_expert > 0)
        out->active_params += (uint64_t)((double)out->expert_params * out->n_expert_used /
                                         out->n_expert + 0.5);
}

void model_plan_free(model_plan_t *p)
{
    if (!p) return;
    free(p->owner);
    free(p->owners);
    free(p->expert_bytes);
    free(p->node_bytes);
    free(p->node_experts);
    free(p);
}

static double gib(uint64_t b)
{
    return (double)b / (1024.0 * 1024.0 * 1024.0);
}

/* True when node n already holds one of the first r copies of pair i. */
static bool holds(const model_plan_t *p, size_t i, int r, int n)
{
    for (int j = 0; j < r; j++)
        if (p->owners[i * (size_t)p->replicas + j] == n) return true;
    return false;
}

/* Spreads the experts: each copy of each (layer, expert) in order goes to the node, among those
 * not yet holding that pair, where it fits and that would be least full relative to its memory
 * afterwards, ties to the node with fewer experts of this layer, then the lower id. With equal
 * experts and nodes this deals each layer's copies out round-robin, so every node holds about
 * the same number of every layer's experts.
 *
 * Holding is not working: calls go to the primary copy only, so the primary is chosen apart,
 * among the pair's owners, as the one with the fewest primaries in this layer, then the fewest
 * primary bytes overall, then the earlier placed; it moves to the front of the owner list. With
 * placement alone, 4 nodes and 2 replicas would pair nodes (0, 1) and (2, 3) and make 0 and 2
 * the primaries of everything, leaving half the nodes idle. */
static int assign(model_plan_t *p, const uint64_t *cap)
{
    int *in_layer = xcalloc((size_t)p->n_nodes, sizeof(int));
    int *prim_layer = xcalloc((size_t)p->n_nodes, sizeof(int));
    uint64_t *prim_bytes = xcalloc((size_t)p->n_nodes, sizeof(uint64_t));
    const int R = p->replicas;
    int err = 0;
    for (int l = 0; l < p->n_layers && !err; l++) {
        memset(in_layer, 0, (size_t)p->n_nodes * sizeof(int));
        memset(prim_layer, 0, (size_t)p->n_nodes * sizeof(int));
        for (int e = 0; e < p->n_expert && !err; e++) {
            const size_t i = (size_t)l * p->n_expert + e;
            uint64_t b = p->expert_bytes[i];
            if (b == 0) continue;
            for (int r = 0; r < R && !err; r++) {
                int best = -1;
                double best_fill = 0;
                for (int n = 0; n < p->n_nodes; n++) {
                    if (holds(p, i, r, n)) continue;
                    if (cap && (p->node_bytes[n] > cap[n] || b > cap[n] - p->node_bytes[n]))
                        continue;
                    double fill = cap ? (double)(p->node_bytes[n] + b) / (double)cap[n]
                                      : (double)(p->node_bytes[n] + b);
                    if (best < 0 || fill < best_fill ||
                        (fill == best_fill && in_layer[n] < in_layer[best])) {
                        best = n;
                        best_fill = fill;
                    }
                }
                if (best < 0) {
                    uint64_t most_free = 0;
                    for (int n = 0; n < p->n_nodes; n++)
                        if (!holds(p, i, r, n) && cap[n] > p->node_bytes[n] &&
                            cap[n] - p->node_bytes[n] > most_free)
                            most_free = cap[n] - p->node_bytes[n];
                    LOG_ERR("layer %d expert %d (%llu bytes, %.3f GiB), copy %d of %d, fits on "
                            "no node that lacks it: the most free memory left on one is %llu "
                            "bytes (%.3f GiB); give the nodes more memory, add nodes or lower "
                            "--replicas", l, e, (unsigned long long)b, gib(b), r + 1, R,
                            (unsigned long long)most_free, gib(most_free));
                    err = -ENOSPC;
                    break;
                }
                p->owners[i * (size_t)R + r] = best;
                p->node_bytes[best] += b;
                p->node_experts[best]++;
                in_layer[best]++;
            }
            if (err) break;
            int *o = p->owners + i * (size_t)R, j = 0;
            for (int r = 1; r < R; r++)
                if (prim_layer[o[r]] < prim_layer[o[j]] ||
                    (prim_layer[o[r]] == prim_layer[o[j]] && prim_bytes[o[r]] < prim_bytes[o[j]]))
                    j = r;
            int first = o[j];
            memmove(o + 1, o, sizeof(int) * (size_t)j);
            o[0] = first;
            p->owner[i] = first;
            prim_layer[first]++;
            prim_bytes[first] += b;
        }
    }
    free(in_layer);
    free(prim_layer);
    free(prim_bytes);
    return err;
}

int model_plan_new(const model_gguf_t *g, int n_nodes, const uint64_t *node_mem, int64_t n_ctx,
                   model_plan_t **out)
{
    return model_plan_new_r(g, n_nodes, node_mem, n_ctx, 1, out);
}

int model_plan_new_r(const model_gguf_t *g, int n_nodes, const uint64_t *node_mem, int64_t n_ctx,
                     int replicas, model_plan_t **out)
{
    *out = NULL;
    if (n_nodes < 1 || n_nodes > 65536) {
        LOG_ERR("%d expert nodes: need 1..65536", n_nodes);
        return -EINVAL;
    }
    if (replicas < 1 || replicas > n_nodes) {
        LOG_ERR("%d replicas of every expert on %d expert node(s): each copy needs its own node, "
                "so replicas must be 1..%d", replicas, n_nodes, n_nodes);
        return -EINVAL;
    }
    model_weights_t w;
    model_weights_info(g, &w);

    /* Layers come from the expert tensors' names, bounded by the tensor count so a name cannot
     * size an allocation beyond what the file holds. */
    int n_layers = w.n_layers;
    for (int i = 0; i < model_gguf_tensor_count(g); i++) {
        const model_tensor_t *t = model_gguf_tensor(g, i);
        int l = layer_of(t->name);
        if (is_expert_tensor(t, w.n_expert) && l >= n_layers) n_layers = l + 1;
    }
    if (w.expert_bytes == 0) n_layers = 0; /* dense: nothing to place */
    if (n_layers > model_gguf_tensor_count(g) ||
        (uint64_t)n_layers * (uint64_t)w.n_expert > PLAN_MAX_PAIRS) {
        LOG_ERR("%s: %d layers of %d experts is implausible", model_gguf_path(g), n_layers,
                w.n_expert);
        return -EINVAL;
    }

    model_plan_t *p = xcalloc(1, sizeof(*p));
    p->n_nodes = n_nodes;
    p->replicas = replicas;
    p->n_layers = n_layers;
    p->n_expert = n_layers ? w.n_expert : 0;
    size_t pairs = (size_t)p->n_layers * (size_t)p->n_expert;
    p->owner = xmalloc((pairs + 1) * sizeof(int));
    for (size_t i = 0; i < pairs; i++) p->owner[i] = -1;
    p->owners = xmalloc((pairs * (size_t)replicas + 1) * sizeof(int));
    for (size_t i = 0; i < pairs * (size_t)replicas; i++) p->owners[i] = -1;
    p->expert_bytes = xcalloc(pairs + 1, sizeof(uint64_t));
    p->node_bytes = xcalloc((size_t)n_nodes, sizeof(uint64_t));
    p->node_experts = xcalloc((size_t)n_nodes, sizeof(int));
    p->n_ctx = n_ctx > 0 ? n_ctx : w.n_ctx;
    p->coord_weight_bytes = w.total_bytes - w.expert_bytes;
    p->coord_kv_bytes = w.kv_bytes_per_token * (uint64_t)(p->n_ctx > 0 ? p->n_ctx : 0);

    for (int i = 0; i < model_gguf_tensor_count(g) && pairs; i++) {
        const model_tensor_t *t = model_gguf_tensor(g, i);
        if (!is_expert_tensor(t, w.n_expert)) continue;
        int l = layer_of(t->name);
        for (int e = 0; e < p->n_expert; e++)
            p->expert_bytes[(size_t)l * p->n_expert + e] += t->nbytes / (size_t)p->n_expert;
    }

    int err = 0;
    if (node_mem) {
        uint64_t offered = 0;
        for (int n = 0; n < n_nodes; n++)
            offered = node_mem[n] > UINT64_MAX - offered ? UINT64_MAX : offered + node_mem[n];
        /* Saturating: replicas of a huge model must not wrap around and look small. */
        uint64_t need = w.expert_bytes > UINT64_MAX / (uint64_t)replicas
                            ? UINT64_MAX
                            : w.expert_bytes * (uint64_t)replicas;
        if (need > offered) {
            LOG_ERR("%s: %d cop%s of the routed experts need %llu bytes (%.3f GiB) but the %d "
                    "nodes offer %llu (%.3f GiB)", model_gguf_path(g), replicas,
                    replicas == 1 ? "y" : "ies", (unsigned long long)need, gib(need), n_nodes,
                    (unsigned long long)offered, gib(offered));
            err = -ENOSPC;
        }
    }
    if (!err) err = assign(p, node_mem);
    if (err) {
        model_plan_free(p);
        return err;
    }
    *out = p;
    return 0;
}
