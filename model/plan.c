/* Memory planner: how much of a model is routed experts, and which expert node serves which
 * (layer, expert) pair. The coordinator (attention, routers, shared experts, embeddings, head,
 * KV cache) and `moemesh-model plan` both use it.
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

    for (int i = 0; i < model_gguf_tensor_count(g); i++) {
        const model_tensor_t *t = model_gguf_tensor(g, i);
        out->total_params += elements(t);
        out->total_bytes += t->nbytes;
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
    free(p->expert_bytes);
    free(p->node_bytes);
    free(p->node_experts);
    free(p);
}

static double gib(uint64_t b)
{
    return (double)b / (1024.0 * 1024.0 * 1024.0);
}

/* Spreads the experts: each (layer, expert) in order goes to the node where it fits and that
 * would be least full relative to its memory afterwards, ties to the node with fewer experts of
 * this layer, then the lower id. With equal experts and nodes this deals each layer's experts
 * out round-robin, so every node does about the same work for every layer. */
static int assign(model_plan_t *p, const uint64_t *cap)
{
    int *in_layer = xcalloc((size_t)p->n_nodes, sizeof(int));
    int err = 0;
    for (int l = 0; l < p->n_layers && !err; l++) {
        memset(in_layer, 0, (size_t)p->n_nodes * sizeof(int));
        for (int e = 0; e < p->n_expert && !err; e++) {
            uint64_t b = p->expert_bytes[(size_t)l * p->n_expert + e];
            if (b == 0) continue;
            int best = -1;
            double best_fill = 0;
            for (int n = 0; n < p->n_nodes; n++) {
                if (cap && (p->node_bytes[n] > cap[n] || b > cap[n] - p->node_bytes[n])) continue;
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
                    if (cap[n] > p->node_bytes[n] && cap[n] - p->node_bytes[n] > most_free)
                        most_free = cap[n] - p->node_bytes[n];
                LOG_ERR("layer %d expert %d (%llu bytes, %.3f GiB) fits on no node: the most "
                        "free memory left on one node is %llu bytes (%.3f GiB); give the nodes "
                        "more memory or add nodes", l, e, (unsigned long long)b, gib(b),
                        (unsigned long long)most_free, gib(most_free));
                err = -ENOSPC;
                break;
            }
            p->owner[(size_t)l * p->n_expert + e] = best;
            p->node_bytes[best] += b;
            p->node_experts[best]++;
            in_layer[best]++;
        }
    }
    free(in_layer);
    return err;
}

int model_plan_new(const model_gguf_t *g, int n_nodes, const uint64_t *node_mem, int64_t n_ctx,
                   model_plan_t **out)
{
    *out = NULL;
    if (n_nodes < 1 || n_nodes > 65536) {
        LOG_ERR("%d expert nodes: need 1..65536", n_nodes);
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
    p->n_layers = n_layers;
    p->n_expert = n_layers ? w.n_expert : 0;
    size_t pairs = (size_t)p->n_layers * (size_t)p->n_expert;
    p->owner = xmalloc((pairs + 1) * sizeof(int));
    for (size_t i = 0; i < pairs; i++) p->owner[i] = -1;
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
        for (int n = 0; n < n_nodes; n++) offered += node_mem[n];
        if (w.expert_bytes > offered) {
            LOG_ERR("%s: the routed experts need %llu bytes (%.3f GiB) but the %d nodes offer "
                    "%llu (%.3f GiB)", model_gguf_path(g), (unsigned long long)w.expert_bytes,
                    gib(w.expert_bytes), n_nodes, (unsigned long long)offered, gib(offered));
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
