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
#include <math.h>
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
    free(p->copies);
    free(p->share);
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
            p->copies[i] = R;
            p->share[i * (size_t)R] = 1; /* calls go to the primary alone */
            prim_layer[first]++;
            prim_bytes[first] += b;
        }
    }
    free(in_layer);
    free(prim_layer);
    free(prim_bytes);
    return err;
}

/* An empty plan: no owners (-1), no copies, no bytes. */
static model_plan_t *plan_alloc(int n_nodes, int n_layers, int n_expert, int replicas)
{
    model_plan_t *p = xcalloc(1, sizeof(*p));
    p->n_nodes = n_nodes;
    p->replicas = replicas;
    p->n_layers = n_layers;
    p->n_expert = n_expert;
    size_t pairs = (size_t)n_layers * (size_t)n_expert;
    p->owner = xmalloc((pairs + 1) * sizeof(int));
    for (size_t i = 0; i < pairs; i++) p->owner[i] = -1;
    p->owners = xmalloc((pairs * (size_t)replicas + 1) * sizeof(int));
    for (size_t i = 0; i < pairs * (size_t)replicas; i++) p->owners[i] = -1;
    p->expert_bytes = xcalloc(pairs + 1, sizeof(uint64_t));
    p->node_bytes = xcalloc((size_t)n_nodes, sizeof(uint64_t));
    p->node_experts = xcalloc((size_t)n_nodes, sizeof(int));
    p->copies = xcalloc(pairs + 1, sizeof(int));
    p->share = xcalloc(pairs * (size_t)replicas + 1, sizeof(double));
    return p;
}

int model_plan_new(const model_gguf_t *g, int n_nodes, const uint64_t *node_mem, int64_t n_ctx,
                   model_plan_t **out)
{
    return model_plan_new_r(g, n_nodes, node_mem, n_ctx, 1, out);
}

/* Checks the arguments and makes g's empty plan for n_nodes nodes and up to `replicas` copies:
 * expert bytes and the coordinator's share filled in, nobody placed. 0 or -EINVAL (logged). */
static int plan_from_gguf(const model_gguf_t *g, int n_nodes, int replicas, int64_t n_ctx,
                          model_plan_t **out)
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

    model_plan_t *p = plan_alloc(n_nodes, n_layers, n_layers ? w.n_expert : 0, replicas);
    size_t pairs = (size_t)p->n_layers * (size_t)p->n_expert;
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
    *out = p;
    return 0;
}

int model_plan_new_r(const model_gguf_t *g, int n_nodes, const uint64_t *node_mem, int64_t n_ctx,
                     int replicas, model_plan_t **out)
{
    model_plan_t *p;
    int err = plan_from_gguf(g, n_nodes, replicas, n_ctx, &p);
    if (err) return err;
    *out = NULL;
    if (node_mem) {
        uint64_t offered = 0, experts = 0;
        for (int n = 0; n < n_nodes; n++)
            offered = node_mem[n] > UINT64_MAX - offered ? UINT64_MAX : offered + node_mem[n];
        for (size_t i = 0; i < (size_t)p->n_layers * p->n_expert; i++)
            experts += p->expert_bytes[i];
        /* Saturating: replicas of a huge model must not wrap around and look small. */
        uint64_t need = experts > UINT64_MAX / (uint64_t)replicas
                            ? UINT64_MAX
                            : experts * (uint64_t)replicas;
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

/* ---- load-aware placement ---- */

/* One layer's work while balancing. Times are load / capacity; loads are the layer's token
 * shares (sum 1). */
typedef struct {
    const model_balance_t *b;
    model_plan_t *p;
    int l;
    const double *w;      /* (n_expert) share of the layer's tokens */
    const double *cap;    /* (n_nodes) capacity, all > 0 */
    const uint64_t *mem;  /* (n_nodes) limit */
    int *r;               /* (n_expert) copies wanted */
    int *piece;           /* (sum r) scratch: expert of each share, in dealing order */
    double *t;            /* (n_nodes) time of this layer's shares so far */
    uint64_t *lbytes;     /* (n_nodes) bytes of this layer so far */
    int *own;             /* (n_expert, replicas) trial owners */
    double *sh;           /* (n_expert, replicas) trial shares of the expert's tokens */
    double *base;         /* (replicas) scratch of water_fill */
} layer_t;

static const layer_t *sort_ctx; /* qsort has no context argument; balancing is one thread */

/* Largest share first, then the lower expert id: a total order, so dealing is deterministic. */
static int by_share(const void *a, const void *b)
{
    const layer_t *L = sort_ctx;
    int x = *(const int *)a, y = *(const int *)b;
    double sx = L->w[x] / L->r[x], sy = L->w[y] / L->r[y];
    if (sx != sy) return sx > sy ? -1 : 1;
    return (x > y) - (x < y);
}

/* Re-splits expert e's tokens between its copies so that their nodes' times come out as equal
 * as the rest of their load allows (water-filling): the split a queue-depth chooser converges
 * to, since a faster or idler copy drains its queue sooner and is picked more often. L->t is in
 * load units here (not yet divided by capacity). */
static void water_fill(layer_t *L, int e)
{
    const int R = L->p->replicas, r = L->r[e];
    const int *o = L->own + (size_t)e * R;
    double *sh = L->sh + (size_t)e * R;
    double *base = L->base, level_lo = 0;
    for (int q = 0; q < r; q++) base[q] = L->t[o[q]] - sh[q] * L->w[e];
    /* The level tau with sum max(0, tau * cap - base) = w: bisection on [min, max] bounds. */
    double hi = 0;
    for (int q = 0; q < r; q++) {
        double x = (base[q] + L->w[e]) / L->cap[o[q]];
        hi = x > hi ? x : hi;
    }
    double lo = level_lo;
    for (int it = 0; it < 60; it++) {
        double mid = 0.5 * (lo + hi), got = 0;
        for (int q = 0; q < r; q++) {
            double x = mid * L->cap[o[q]] - base[q];
            got += x > 0 ? x : 0;
        }
        if (got < L->w[e]) lo = mid;
        else hi = mid;
    }
    double sum = 0;
    for (int q = 0; q < r; q++) {
        double x = hi * L->cap[o[q]] - base[q];
        sh[q] = x > 0 ? x : 0;
        sum += sh[q];
    }
    for (int q = 0; q < r; q++) {
        sh[q] = sum > 0 ? sh[q] / sum : 1.0 / r;
        L->t[o[q]] = base[q] + sh[q] * L->w[e];
    }
}

/* Deals the layer's shares (expert e cut into r[e] equal ones) largest first, each to the node
 * without that expert, with room, whose time after it is least; shares without load go where
 * the memory is least full, so cold experts spread by bytes. Fills own, t and lbytes; returns
 * the layer's largest node time, or -1 when a share fits nowhere. */
static double deal(layer_t *L)
{
    const model_plan_t *p = L->p;
    const int E = p->n_expert, N = p->n_nodes, R = p->replicas;
    int np = 0;
    for (int e = 0; e < E; e++)
        for (int k = 0; k < L->r[e] && p->expert_bytes[(size_t)L->l * E + e]; k++)
            L->piece[np++] = e;
    sort_ctx = L;
    qsort(L->piece, (size_t)np, sizeof(int), by_share);
    for (int n = 0; n < N; n++) L->t[n] = 0, L->lbytes[n] = 0;
    for (int i = 0; i < E * R; i++) L->own[i] = -1;
    for (int k = 0; k < np; k++) {
        const int e = L->piece[k];
        const uint64_t b = p->expert_bytes[(size_t)L->l * E + e];
        const double sh = L->w[e] / L->r[e];
        int *o = L->own + (size_t)e * R, j = 0;
        while (j < R && o[j] >= 0) j++;
        int best = -1;
        double best_t = 0, best_fill = 0;
        for (int n = 0; n < N; n++) {
            bool has = false;
            for (int q = 0; q < j; q++) has |= o[q] == n;
            uint64_t used = p->node_bytes[n] + L->lbytes[n];
            if (has || used > L->mem[n] || b > L->mem[n] - used) continue;
            double t = (L->t[n] + sh) / L->cap[n];
            double fill = L->mem[n] == UINT64_MAX ? (double)(used + b)
                                                  : (double)(used + b) / (double)L->mem[n];
            bool better = best < 0 ||
                          (sh > 0 ? t < best_t || (t == best_t && fill < best_fill)
                                  : fill < best_fill || (fill == best_fill && t < best_t));
            if (better) best = n, best_t = t, best_fill = fill;
        }
        if (best < 0) return -1;
        o[j] = best;
        L->sh[(size_t)e * R + j] = 1.0 / L->r[e];
        L->t[best] += sh;
        L->lbytes[best] += b;
    }
    for (int pass = 0; pass < 8; pass++)
        for (int e = 0; e < E; e++)
            if (L->r[e] > 1 && L->w[e] > 0) water_fill(L, e);
    double worst = 0;
    for (int n = 0; n < N; n++) {
        L->t[n] /= L->cap[n];
        if (L->t[n] > worst) worst = L->t[n];
    }
    return worst;
}

/* Orders each replicated expert's copies so that its primary — the copy serving everything
 * while calls go to the primary alone, as remote.c does until it splits by queue depth — keeps
 * that case balanced too: single-copy experts load their node, then replicated ones, heaviest
 * first, make primary the holder whose time grows least. Shares move with their owners. */
static void choose_primaries(layer_t *L)
{
    model_plan_t *p = L->p;
    const int E = p->n_expert, N = p->n_nodes, R = p->replicas;
    const size_t base = (size_t)L->l * E;
    for (int n = 0; n < N; n++) L->t[n] = 0;
    int nrep = 0;
    for (int e = 0; e < E; e++) {
        const size_t i = base + e;
        if (p->copies[i] == 1) L->t[p->owners[i * R]] += L->w[e];
        else if (p->copies[i] > 1) L->piece[nrep++] = e;
    }
    for (int e = 0; e < E; e++) L->r[e] = 1; /* by_share then orders by w alone */
    sort_ctx = L;
    qsort(L->piece, (size_t)nrep, sizeof(int), by_share);
    for (int k = 0; k < nrep; k++) {
        const size_t i = base + L->piece[k];
        int *o = p->owners + i * R, best = 0;
        double *sh = p->share + i * R;
        for (int q = 1; q < p->copies[i]; q++)
            if ((L->t[o[q]] + L->w[L->piece[k]]) / L->cap[o[q]] <
                (L->t[o[best]] + L->w[L->piece[k]]) / L->cap[o[best]])
                best = q;
        int tn = o[best];
        double ts = sh[best];
        memmove(o + 1, o, sizeof(int) * (size_t)best);
        memmove(sh + 1, sh, sizeof(double) * (size_t)best);
        o[0] = tn, sh[0] = ts;
        p->owner[i] = tn;
        L->t[tn] += L->w[L->piece[k]];
    }
}

/* Balances layer l into p (owners, copies, shares, node totals). extra: bytes of copies beyond
 * the first this layer may use. 0 or -ENOSPC. */
static int balance_layer(layer_t *L, uint64_t extra)
{
    model_plan_t *p = L->p;
    const int E = p->n_expert, N = p->n_nodes, R = p->replicas;
    const size_t base = (size_t)L->l * E;
    int *best_r = xmalloc(sizeof(int) * (size_t)E);
    int *frozen = xcalloc((size_t)E, sizeof(int));
    for (int e = 0; e < E; e++) L->r[e] = 1;
    double best = deal(L);
    memcpy(best_r, L->r, sizeof(int) * (size_t)E);
    uint64_t used_extra = 0;
    double ideal = 0, caps = 0; /* the time of a perfect split */
    for (int e = 0; e < E; e++) ideal += p->expert_bytes[base + e] ? L->w[e] : 0;
    for (int n = 0; n < N; n++) caps += L->cap[n];
    ideal /= caps;
    /* Each round adds one copy, so E * (R - 1) rounds at most; none once the split is perfect,
     * since a copy then only costs memory. */
    for (int round = 0; best > ideal * (1 + 1e-9) && round < E * (R - 1); round++) {
        double worst = -1;
        int hot = -1;
        deal(L); /* the trial of L->r, to find its busiest node */
        for (int n = 0; n < N; n++)
            if (L->t[n] > worst) worst = L->t[n], hot = n;
        int pick = -1;
        for (int e = 0; e < E; e++) {
            if (frozen[e] || L->r[e] >= R || L->w[e] <= 0 || !p->expert_bytes[base + e]) continue;
            bool on_hot = false;
            for (int q = 0; q < R; q++) on_hot |= L->own[(size_t)e * R + q] == hot;
            if (on_hot && (pick < 0 || L->w[e] / L->r[e] > L->w[pick] / L->r[pick])) pick = e;
        }
        if (pick < 0 || used_extra + p->expert_bytes[base + pick] > extra) break;
        L->r[pick]++;
        double t = deal(L);
        if (t < 0) { /* no room for that copy: never try it again */
            L->r[pick]--;
            frozen[pick] = 1;
            continue;
        }
        used_extra += p->expert_bytes[base + pick];
        if (t < best * (1 - 1e-9)) {
            best = t;
            memcpy(best_r, L->r, sizeof(int) * (size_t)E);
        }
    }
    int err = 0;
    memcpy(L->r, best_r, sizeof(int) * (size_t)E);
    if (best < 0 || deal(L) < 0) {
        LOG_ERR("layer %d: its experts fit on no node within the memory left", L->l);
        err = -ENOSPC;
    }
    for (int e = 0; e < E && !err; e++) {
        const size_t i = base + e;
        if (!p->expert_bytes[i]) continue;
        /* A copy the water-filling left (next to) idle only costs memory: dropped. */
        int k = 0;
        for (int q = 0; q < L->r[e]; q++) {
            int n = L->own[(size_t)e * R + q];
            double sh = L->sh[(size_t)e * R + q];
            if (L->r[e] > 1 && sh < 1e-6) continue;
            p->owners[i * R + k] = n;
            p->share[i * R + k++] = sh;
            p->node_bytes[n] += p->expert_bytes[i];
            p->node_experts[n]++;
        }
        p->copies[i] = k;
        double sum = 0;
        for (int q = 0; q < k; q++) sum += p->share[i * R + q];
        for (int q = 0; q < k; q++) p->share[i * R + q] /= sum > 0 ? sum : 1;
        if (sum <= 0) p->share[i * R] = 1;
        p->owner[i] = p->owners[i * R];
    }
    if (!err) choose_primaries(L);
    free(best_r);
    free(frozen);
    return err;
}

/* Fills p from b: p is empty with p->expert_bytes set. */
static int balance(model_plan_t *p, const model_balance_t *b)
{
    const int N = p->n_nodes, E = p->n_expert, R = p->replicas;
    double *cap = xmalloc(sizeof(double) * (size_t)N);
    uint64_t *mem = xmalloc(sizeof(uint64_t) * (size_t)N);
    bool equal = !b->node_cap;
    for (int n = 0; n < N && !equal; n++) equal = !(b->node_cap[n] > 0) || !isfinite(b->node_cap[n]);
    for (int n = 0; n < N; n++) {
        cap[n] = equal ? 1.0 : b->node_cap[n];
        mem[n] = b->node_mem ? b->node_mem[n] : UINT64_MAX;
    }
    double *w = xmalloc(sizeof(double) * (size_t)(E + 1));
    layer_t L = {.b = b, .p = p, .w = w, .cap = cap, .mem = mem};
    L.r = xmalloc(sizeof(int) * (size_t)(E + 1));
    L.piece = xmalloc(sizeof(int) * (size_t)(E * R + 1));
    L.t = xmalloc(sizeof(double) * (size_t)N);
    L.lbytes = xmalloc(sizeof(uint64_t) * (size_t)N);
    L.own = xmalloc(sizeof(int) * (size_t)(E * R + 1));
    L.sh = xmalloc(sizeof(double) * (size_t)(E * R + 1));
    L.base = xmalloc(sizeof(double) * (size_t)R);

    /* Bytes of the single copies of every layer from l on: what replication must leave room
     * for. */
    uint64_t *rest = xcalloc((size_t)p->n_layers + 1, sizeof(uint64_t));
    for (int l = p->n_layers - 1; l >= 0; l--) {
        rest[l] = rest[l + 1];
        for (int e = 0; e < E; e++) rest[l] += p->expert_bytes[(size_t)l * E + e];
    }
    int err = 0;
    for (int l = 0; l < p->n_layers && !err; l++) {
        double sum = 0;
        for (int e = 0; e < E; e++) {
            double x = b->load ? b->load[(size_t)l * E + e] : 0;
            w[e] = x > 0 && isfinite(x) ? x : 0;
            sum += w[e];
        }
        for (int e = 0; e < E; e++) w[e] = sum > 0 ? w[e] / sum : 1.0 / E;
        /* Copies beyond the first share the memory left after every remaining layer's single
         * copies, evenly over those layers, so an early layer cannot starve a later one. */
        uint64_t free_b = 0;
        for (int n = 0; n < N; n++) {
            uint64_t f = mem[n] > p->node_bytes[n] ? mem[n] - p->node_bytes[n] : 0;
            free_b = f > UINT64_MAX - free_b ? UINT64_MAX : free_b + f;
        }
        uint64_t slack = free_b > rest[l] ? free_b - rest[l] : 0;
        L.l = l;
        err = balance_layer(&L, slack == UINT64_MAX ? slack : slack / (uint64_t)(p->n_layers - l));
    }
    free(rest);
    free(L.r);
    free(L.piece);
    free(L.t);
    free(L.lbytes);
    free(L.own);
    free(L.sh);
    free(L.base);
    free(w);
    free(cap);
    free(mem);
    return err;
}

int model_plan_balance(const model_balance_t *b, model_plan_t **out)
{
    *out = NULL;
    if (b->n_nodes < 1 || b->n_nodes > 65536 || b->n_layers < 0 || b->n_expert < 0 ||
        (uint64_t)b->n_layers * (uint64_t)b->n_expert > PLAN_MAX_PAIRS || !b->expert_bytes ||
        b->max_replicas < 1 || b->max_replicas > b->n_nodes) {
        LOG_ERR("balanced placement: %d nodes, %d layers of %d experts, %d replicas: need 1.."
                "65536 nodes, replicas 1..nodes", b->n_nodes, b->n_layers, b->n_expert,
                b->max_replicas);
        return -EINVAL;
    }
    model_plan_t *p = plan_alloc(b->n_nodes, b->n_layers, b->n_expert, b->max_replicas);
    memcpy(p->expert_bytes, b->expert_bytes,
           sizeof(uint64_t) * (size_t)b->n_layers * (size_t)b->n_expert);
    int err = balance(p, b);
    if (err) {
        model_plan_free(p);
        return err;
    }
    *out = p;
    return 0;
}

int model_plan_new_load(const model_gguf_t *g, int n_nodes, const uint64_t *node_mem,
                        const double *node_cap, const double *load, int max_replicas,
                        int64_t n_ctx, model_plan_t **out)
{
    model_plan_t *p;
    int err = plan_from_gguf(g, n_nodes, max_replicas, n_ctx, &p);
    if (err) return err;
    model_balance_t b = {.n_nodes = n_nodes, .n_layers = p->n_layers, .n_expert = p->n_expert,
                         .expert_bytes = p->expert_bytes, .load = load, .node_mem = node_mem,
                         .node_cap = node_cap, .max_replicas = max_replicas};
    err = balance(p, &b);
    if (err) {
        model_plan_free(p);
        return err;
    }
    *out = p;
    return 0;
}

double model_plan_node_time(const model_plan_t *p, int layer, int node, const double *load,
                            const double *node_cap)
{
    if (layer < 0 || layer >= p->n_layers || node < 0 || node >= p->n_nodes) return 0;
    const int E = p->n_expert, R = p->replicas;
    double t = 0;
    for (int e = 0; e < E; e++) {
        const size_t i = (size_t)layer * E + e;
        for (int q = 0; q < p->copies[i]; q++)
            if (p->owners[i * R + q] == node) t += p->share[i * R + q] * load[i];
    }
    double c = node_cap && node_cap[node] > 0 ? node_cap[node] : 1;
    return t / c;
}

double model_plan_imbalance(const model_plan_t *p, int layer, const double *load,
                            const double *node_cap)
{
    if (layer < 0 || layer >= p->n_layers) return 0;
    double sum = 0, caps = 0, worst = 0;
    for (int e = 0; e < p->n_expert; e++)
        if (p->copies[(size_t)layer * p->n_expert + e]) sum += load[(size_t)layer * p->n_expert + e];
    for (int n = 0; n < p->n_nodes; n++) {
        caps += node_cap && node_cap[n] > 0 ? node_cap[n] : 1;
        double t = model_plan_node_time(p, layer, n, load, node_cap);
        if (t > worst) worst = t;
    }
    if (!(sum > 0)) return 0;
    return worst / (sum / caps);
}

void model_plan_split(model_plan_t *p, const double *load, const double *node_cap)
{
    const int E = p->n_expert, N = p->n_nodes, R = p->replicas;
    double *cap = xmalloc(sizeof(double) * (size_t)N);
    for (int n = 0; n < N; n++) cap[n] = node_cap && node_cap[n] > 0 ? node_cap[n] : 1;
    layer_t L = {.p = p, .cap = cap};
    double *w = xmalloc(sizeof(double) * (size_t)(E + 1));
    L.w = w;
    L.r = xmalloc(sizeof(int) * (size_t)(E + 1));
    L.t = xmalloc(sizeof(double) * (size_t)N);
    L.base = xmalloc(sizeof(double) * (size_t)R);
    for (int l = 0; l < p->n_layers; l++) {
        const size_t base = (size_t)l * E;
        L.l = l;
        L.own = p->owners + base * R; /* the plan's own arrays, re-split in place */
        L.sh = p->share + base * R;
        for (int n = 0; n < N; n++) L.t[n] = 0;
        for (int e = 0; e < E; e++) {
            double x = load[base + e];
            w[e] = x > 0 && isfinite(x) ? x : 0;
            L.r[e] = p->copies[base + e];
            for (int q = 0; q < L.r[e]; q++)
                L.t[L.own[(size_t)e * R + q]] += L.sh[(size_t)e * R + q] * w[e];
        }
        for (int pass = 0; pass < 8; pass++)
            for (int e = 0; e < E; e++)
                if (L.r[e] > 1 && L.w[e] > 0) water_fill(&L, e);
    }
    free(w), free(L.r), free(L.t), free(L.base), free(cap);
}
