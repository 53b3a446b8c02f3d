/* `moemesh-bench load`: how unevenly a model routes, and what balancing buys. Runs a workload
 * through the single-process engine (seeded random token ids in sequences of --seq tokens,
 * prefilled --batch at a time), samples the engine's expert counters after every step into a
 * coord_load_t, and prints per layer the token counts and shares, the busiest expert, and the
 * imbalance factor of two placements over --nodes expert nodes of --node-cap capacities:
 *   before: model_plan_new_r (byte-balanced round robin, calls to the primary copy), what the
 *           coordinator does without a profile;
 *   cap:    model_plan_new_load without a profile, one copy each: capacities alone;
 *   after:  model_plan_new_load from the measured profile (or --load-profile FILE) with the
 *           capacities: hot experts replicated, cold ones packed.
 * Tokens/s is modelled, not measured on live nodes: one step's expert phase takes, per layer,
 * the largest (token, expert) pairs / capacity over the nodes (capacity in pairs per second),
 * so tokens/s = tokens / sum over layers of that. Capacities are declared (--node-cap), since
 * one shared machine cannot host nodes of really unequal speed. --json prints one object (the
 * input of bench_report_load); --report DIR also writes the heatmap there.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "coordinator/coord.h"
#include "wire/wire.h"

#define MAX_NODES 64

static int usage(void)
{
    fprintf(stderr,
            "usage: moemesh-bench load -m MODEL [--nodes N] [--node-cap C,C,...]\n"
            "         [--node-mem GiB,...] [--replicas R] [--tokens T] [--seq S] [--batch B]\n"
            "         [--threads T] [--seed S] [--load-profile FILE] [--record-load FILE]\n"
            "         [--report DIR] [--json]\n"
            "  --node-cap: (token, expert) pairs per second each node computes (default: equal)\n"
            "  --replicas: most copies of a hot expert in the balanced plan (default: nodes)\n");
    return 2;
}

/* "a,b,c" into n positive doubles (one value: all). 0 or -EINVAL. */
static int parse_list(const char *s, int n, double *out)
{
    int k = 0;
    const char *p = s;
    while (*p) {
        char *end;
        double v = strtod(p, &end);
        if (end == p || !(v > 0) || !isfinite(v) || k == n) return -EINVAL;
        out[k++] = v;
        if (*end == ',') end++;
        else if (*end) return -EINVAL;
        p = end;
    }
    if (k == 1)
        for (int i = 1; i < n; i++) out[i] = out[0];
    else if (k != n)
        return -EINVAL;
    return 0;
}

typedef struct {
    const char *model, *profile_in, *profile_out, *report_dir;
    int nodes, replicas, tokens, seq, batch, threads;
    uint64_t seed;
    bool json;
    double cap[MAX_NODES];
    uint64_t mem[MAX_NODES];
    bool has_mem;
} opts_t;

/* Runs the workload; fills counts (n_layer, n_expert) and the step-window imbalance trace. */
static int run_workload(const model_t *m, const opts_t *o, coord_load_t *ld, uint64_t *counts)
{
    const model_hparams_t *hp = &m->hp;
    kern_pool_t *pool = kern_pool_new(o->threads);
    coord_experts_t *ex = coord_experts_local_new(m, pool, o->batch);
    coord_engine_params_t p = coord_engine_params_default();
    p.n_ctx = o->seq;
    p.n_batch = o->batch;
    p.n_slots = 1;
    coord_engine_t *e = coord_engine_new(m, ex, pool, &p);
    if (!e) {
        coord_experts_free(ex);
        kern_pool_free(pool);
        return -EINVAL;
    }
    int32_t *tok = xmalloc(sizeof(int32_t) * (size_t)o->batch);
    int32_t *pos = xmalloc(sizeof(int32_t) * (size_t)o->batch);
    int32_t *slot = xcalloc((size_t)o->batch, sizeof(int32_t));
    bool *want = xcalloc((size_t)o->batch, sizeof(bool));
    float *logits = xmalloc(sizeof(float) * (size_t)hp->n_vocab);
    const int P = hp->n_layer * hp->n_expert;
    uint64_t s = o->seed * 0x9e3779b97f4a7c15ull + 1;
    int err = 0, done = 0, at = 0;
    double t0 = wire_now();
    coord_engine_expert_tokens(e, counts, P);
    coord_load_sample(ld, 0, counts, NULL);
    while (done < o->tokens && !err) {
        if (at == o->seq) coord_engine_clear_slot(e, 0), at = 0;
        int n = o->batch;
        if (n > o->seq - at) n = o->seq - at;
        if (n > o->tokens - done) n = o->tokens - done;
        for (int i = 0; i < n; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            tok[i] = (int32_t)((s >> 33) % (uint64_t)hp->n_vocab);
            pos[i] = at + i;
            want[i] = i == n - 1;
        }
        coord_batch_t b = {.n = n, .tok = tok, .pos = pos, .slot = slot, .want = want};
        err = coord_engine_decode(e, &b, logits);
        at += n, done += n;
        coord_engine_expert_tokens(e, counts, P);
        coord_load_sample(ld, wire_now() - t0, counts, NULL);
    }
    free(tok), free(pos), free(slot), free(want), free(logits);
    coord_engine_free(e);
    coord_experts_free(ex);
    kern_pool_free(pool);
    return err;
}

/* Modelled seconds of the expert phase for all the counted tokens under plan p. */
static double modelled_seconds(const model_plan_t *p, const double *load, const double *cap)
{
    double t = 0;
    for (int l = 0; l < p->n_layers; l++) {
        double worst = 0;
        for (int n = 0; n < p->n_nodes; n++) {
            double x = model_plan_node_time(p, l, n, load, cap);
            worst = x > worst ? x : worst;
        }
        t += worst;
    }
    return t;
}

static json_t *plan_json(model_plan_t *p, const double *load, const double *cap,
                         int tokens)
{
    json_t *imb = json_array();
    double worst = 0, mean = 0;
    int n = 0, extra = 0;
    for (int l = 0; l < p->n_layers; l++) {
        double x = model_plan_imbalance(p, l, load, cap);
        json_array_append_new(imb, json_real(x));
        if (x > 0) worst = x > worst ? x : worst, mean += x, n++;
    }
    for (int i = 0; i < p->n_layers * p->n_expert; i++)
        extra += p->copies[i] > 1 ? p->copies[i] - 1 : 0;
    json_t *nodes = json_array();
    for (int i = 0; i < p->n_nodes; i++)
        json_array_append_new(nodes, json_pack("{s:I,s:i}", "bytes", (json_int_t)p->node_bytes[i],
                                               "experts", p->node_experts[i]));
    double secs = modelled_seconds(p, load, cap);
    /* The same plan when every call goes to the primary copy, as remote.c does until it uses
     * coord_load_choose: the shares are then 1, 0, 0... */
    const size_t ns = (size_t)p->n_layers * p->n_expert * p->replicas;
    double *keep = xmalloc(sizeof(double) * (ns + 1));
    memcpy(keep, p->share, sizeof(double) * ns);
    for (size_t i = 0; i < ns; i++) p->share[i] = i % (size_t)p->replicas == 0;
    double prim = 0;
    for (int l = 0; l < p->n_layers; l++) {
        double x = model_plan_imbalance(p, l, load, cap);
        prim = x > prim ? x : prim;
    }
    double prim_secs = modelled_seconds(p, load, cap);
    /* And with the replicas' split following this very load, as a queue-depth chooser would
     * (the planned shares come from the profile, which may be another workload's). */
    memcpy(p->share, keep, sizeof(double) * ns);
    model_plan_split(p, load, cap);
    double split = 0;
    for (int l = 0; l < p->n_layers; l++) {
        double x = model_plan_imbalance(p, l, load, cap);
        split = x > split ? x : split;
    }
    double split_secs = modelled_seconds(p, load, cap);
    memcpy(p->share, keep, sizeof(double) * ns);
    free(keep);
    return json_pack("{s:o,s:f,s:f,s:i,s:f,s:f,s:f,s:f,s:f,s:o}", "imbalance", imb,
                     "max_imbalance", worst, "mean_imbalance", n ? mean / n : 0, "extra_copies",
                     extra, "modelled_tokens_per_s", secs > 0 ? tokens / secs : 0,
                     "primary_only_max_imbalance", prim, "primary_only_tokens_per_s",
                     prim_secs > 0 ? tokens / prim_secs : 0, "split_max_imbalance", split,
                     "split_tokens_per_s", split_secs > 0 ? tokens / split_secs : 0, "nodes",
                     nodes);
}

static int parse(int argc, char **argv, opts_t *o)
{
    *o = (opts_t){.nodes = 3, .tokens = 1024, .seq = 128, .batch = 32, .threads = 2, .seed = 1};
    const char *caps = NULL, *mems = NULL;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--json")) {
            o->json = true;
            continue;
        }
        if (i + 1 >= argc) return usage();
        const char *v = argv[++i];
        char *end;
        long x = strtol(v, &end, 10);
        bool num = end != v && !*end;
        if (!strcmp(f, "-m")) o->model = v;
        else if (!strcmp(f, "--node-cap")) caps = v;
        else if (!strcmp(f, "--node-mem")) mems = v;
        else if (!strcmp(f, "--load-profile")) o->profile_in = v;
        else if (!strcmp(f, "--record-load")) o->profile_out = v;
        else if (!strcmp(f, "--report")) o->report_dir = v;
        else if (!strcmp(f, "--nodes") && num && x >= 1 && x <= MAX_NODES) o->nodes = (int)x;
        else if (!strcmp(f, "--replicas") && num && x >= 1 && x <= MAX_NODES) o->replicas = (int)x;
        else if (!strcmp(f, "--tokens") && num && x >= 1 && x <= (1 << 24)) o->tokens = (int)x;
        else if (!strcmp(f, "--seq") && num && x >= 1 && x <= (1 << 16)) o->seq = (int)x;
        else if (!strcmp(f, "--batch") && num && x >= 1 && x <= 4096) o->batch = (int)x;
        else if (!strcmp(f, "--threads") && num && x >= 1 && x <= 256) o->threads = (int)x;
        else if (!strcmp(f, "--seed") && num && x >= 0) o->seed = (uint64_t)x;
        else return usage();
    }
    if (!o->model) return usage();
    if (!o->replicas) o->replicas = o->nodes;
    if (o->replicas > o->nodes) {
        fprintf(stderr, "moemesh-bench load: --replicas %d > --nodes %d\n", o->replicas, o->nodes);
        return 2;
    }
    for (int i = 0; i < o->nodes; i++) o->cap[i] = 1;
    if (caps && parse_list(caps, o->nodes, o->cap)) {
        fprintf(stderr, "moemesh-bench load: --node-cap wants 1 or %d positive numbers\n",
                o->nodes);
        return 2;
    }
    if (mems) {
        double g[MAX_NODES];
        if (parse_list(mems, o->nodes, g)) {
            fprintf(stderr, "moemesh-bench load: --node-mem wants 1 or %d GiB values\n",
                    o->nodes);
            return 2;
        }
        for (int i = 0; i < o->nodes; i++) o->mem[i] = (uint64_t)(g[i] * 1073741824.0);
        o->has_mem = true;
    }
    return 0;
}

static void print_table(const json_t *r)
{
    json_t *layers = json_object_get(r, "layers"), *lay;
    json_t *before = json_object_get(r, "before"), *after = json_object_get(r, "after");
    size_t i;
    printf("%s: %lld tokens, top-%lld, %lld nodes\n",
           json_string_value(json_object_get(r, "model")),
           (long long)json_integer_value(json_object_get(r, "tokens")),
           (long long)json_integer_value(json_object_get(r, "top_k")),
           (long long)json_array_size(json_object_get(r, "node_cap")));
    printf("layer  tokens  hottest  share   imbalance before  after\n");
    json_array_foreach(layers, i, lay) {
        json_t *ib = json_array_get(json_object_get(before, "imbalance"), i);
        json_t *ia = json_array_get(json_object_get(after, "imbalance"), i);
        printf("%5zu %7lld  %7lld  %5.1f%%  %16.3f %6.3f%s\n", i,
               (long long)json_integer_value(json_object_get(lay, "total")),
               (long long)json_integer_value(json_object_get(lay, "hottest")),
               100 * json_real_value(json_object_get(lay, "hottest_share")),
               json_real_value(ib), json_real_value(ia),
               json_is_true(json_object_get(lay, "collapsed")) ? "  collapsed" : "");
    }
    const char *what[3] = {"before", "cap", "after"};
    json_t *pl[3] = {before, json_object_get(r, "capacity_only"), after};
    for (int k = 0; k < 3; k++)
        printf("%-6s max imbalance %.3f, mean %.3f, extra copies %lld, modelled %.1f tokens/s"
               " (primary copies only: %.3f, %.1f; split by load: %.3f, %.1f)\n",
               what[k], json_real_value(json_object_get(pl[k], "max_imbalance")),
               json_real_value(json_object_get(pl[k], "mean_imbalance")),
               (long long)json_integer_value(json_object_get(pl[k], "extra_copies")),
               json_real_value(json_object_get(pl[k], "modelled_tokens_per_s")),
               json_real_value(json_object_get(pl[k], "primary_only_max_imbalance")),
               json_real_value(json_object_get(pl[k], "primary_only_tokens_per_s")),
               json_real_value(json_object_get(pl[k], "split_max_imbalance")),
               json_real_value(json_object_get(pl[k], "split_tokens_per_s")));
}

int bench_load_main(int argc, char **argv)
{
    opts_t o;
    int rc = parse(argc, argv, &o);
    if (rc) return rc;
    model_t *m;
    if (model_load(o.model, &m)) return 1;
    const model_hparams_t *hp = &m->hp;
    const int L = hp->n_layer, E = hp->n_expert, P = L * E;
    if (E < 1) {
        fprintf(stderr, "moemesh-bench load: %s has no routed experts\n", o.model);
        model_free(m);
        return 1;
    }
    coord_load_config_t lc = coord_load_config_default();
    lc.n_layers = L, lc.n_expert = E;
    coord_load_t *ld = coord_load_new(&lc);
    uint64_t *counts = xcalloc((size_t)P, sizeof(uint64_t));
    double *load = xcalloc((size_t)P, sizeof(double)), *profile = NULL;
    model_plan_t *before = NULL, *after = NULL, *capacity = NULL;
    rc = 1;
    if (!ld || run_workload(m, &o, ld, counts)) goto out;
    for (int i = 0; i < P; i++) load[i] = (double)counts[i];
    if (o.profile_out) {
        char fp[64];
        model_fingerprint(m->gguf, fp, sizeof(fp));
        if (coord_load_profile_write(o.profile_out, fp, L, E, counts)) goto out;
    }
    if (o.profile_in) {
        profile = xcalloc((size_t)P, sizeof(double));
        if (coord_load_profile_read(o.profile_in, L, E, profile)) goto out;
    }
    const uint64_t *mem = o.has_mem ? o.mem : NULL;
    if (model_plan_new_r(m->gguf, o.nodes, mem, 0, 1, &before) ||
        model_plan_new_load(m->gguf, o.nodes, mem, o.cap, profile ? profile : load, o.replicas,
                            0, &after) ||
        model_plan_new_load(m->gguf, o.nodes, mem, o.cap, NULL, 1, 0, &capacity))
        goto out;

    json_t *layers = json_array();
    for (int l = 0; l < L; l++) {
        json_t *tok = json_array(), *share = json_array();
        uint64_t sum = 0;
        int top = 0;
        for (int e = 0; e < E; e++) {
            sum += counts[l * E + e];
            if (counts[l * E + e] > counts[l * E + top]) top = e;
        }
        for (int e = 0; e < E; e++) {
            json_array_append_new(tok, json_integer((json_int_t)counts[l * E + e]));
            json_array_append_new(share, json_real(sum ? (double)counts[l * E + e] / sum : 0));
        }
        json_array_append_new(
            layers, json_pack("{s:i,s:I,s:o,s:o,s:i,s:f,s:b}", "layer", l, "total",
                              (json_int_t)sum, "tokens", tok, "share", share, "hottest", top,
                              "hottest_share", sum ? (double)counts[l * E + top] / sum : 0,
                              "collapsed", coord_load_collapsed(ld, l, NULL, NULL)));
    }
    json_t *caps = json_array();
    for (int i = 0; i < o.nodes; i++) json_array_append_new(caps, json_real(o.cap[i]));
    json_t *r = json_pack("{s:s,s:i,s:i,s:i,s:o,s:o,s:o,s:o,s:o}", "model", o.model, "tokens",
                          o.tokens, "top_k", hp->n_expert_used, "n_expert", E, "node_cap", caps,
                          "layers", layers, "before", plan_json(before, load, o.cap, o.tokens),
                          "capacity_only", plan_json(capacity, load, o.cap, o.tokens),
                          "after", plan_json(after, load, o.cap, o.tokens));
    CHECK(r);
    if (o.json) {
        char *s = json_dumps(r, JSON_COMPACT);
        printf("%s\n", s);
        free(s);
    } else {
        print_table(r);
    }
    rc = 0;
    if (o.report_dir && bench_report_load(r, o.report_dir, stdout)) rc = 1;
    json_decref(r);
out:
    model_plan_free(before);
    model_plan_free(after);
    model_plan_free(capacity);
    free(counts), free(load), free(profile);
    coord_load_free(ld);
    model_free(m);
    return rc;
}
