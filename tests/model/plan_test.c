/* Tests for model/plan.c: weight accounting against a direct count over the tensors, and expert
 * placement invariants (every expert placed once, or on R distinct nodes with replicas; balance,
 * memory limits, refusals) and the `plan` command's --replicas. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"
#include "wire/wire.h"

static model_gguf_t *open_golden(const char *name)
{
    char path[256];
    snprintf(path, sizeof(path), "../shared/golden/%s.gguf", name);
    model_gguf_t *g;
    cr_assert_eq(model_gguf_open(path, &g), 0, "%s", path);
    return g;
}

Test(model_plan, weights_info_matches_a_direct_count)
{
    static const char *const files[] = {"qwen2moe-tiny-q8_0", "mixtral-tiny-f32",
                                        "deepseek2-tiny-f32", "qwen3moe-kq-q4_k_m"};
    for (int k = 0; k < 4; k++) {
        model_gguf_t *g = open_golden(files[k]);
        model_weights_t w;
        model_weights_info(g, &w);
        uint64_t total = 0, exp_b = 0, exp_p = 0, total_p = 0;
        for (int i = 0; i < model_gguf_tensor_count(g); i++) {
            const model_tensor_t *t = model_gguf_tensor(g, i);
            uint64_t n = (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
            total += t->nbytes;
            total_p += n;
            if (strstr(t->name, "_exps")) exp_b += t->nbytes, exp_p += n;
        }
        cr_assert_eq(w.total_bytes, total);
        cr_assert_eq(w.total_params, total_p);
        cr_assert_eq(w.expert_bytes, exp_b, "%s", files[k]);
        cr_assert_eq(w.expert_params, exp_p);
        cr_assert_eq(w.n_expert, 8);
        cr_assert_eq(w.n_expert_used, 2);
        cr_assert_eq(w.active_params, total_p - exp_p + exp_p / 4);
        model_gguf_free(g);
    }
}

Test(model_plan, kv_cache_uses_key_and_value_lengths)
{
    model_gguf_t *g = open_golden("qwen3moe-tiny-f32");
    int64_t layers, kvh, kl, vl;
    cr_assert(model_gguf_get_int(g, "qwen3moe.block_count", &layers));
    cr_assert(model_gguf_get_int(g, "qwen3moe.attention.head_count_kv", &kvh));
    cr_assert(model_gguf_get_int(g, "qwen3moe.attention.key_length", &kl));
    cr_assert(model_gguf_get_int(g, "qwen3moe.attention.value_length", &vl));
    model_plan_t *p;
    cr_assert_eq(model_plan_new(g, 2, NULL, 101, &p), 0);
    cr_assert_eq(p->coord_kv_bytes, (uint64_t)(layers * kvh * (kl + vl) * 2 * 101));
    cr_assert_eq(p->n_ctx, 101);
    model_plan_free(p);
    cr_assert_eq(model_plan_new(g, 1, NULL, 0, &p), 0);
    int64_t ctx;
    cr_assert(model_gguf_get_int(g, "qwen3moe.context_length", &ctx));
    cr_assert_eq(p->n_ctx, ctx, "defaults to the model's context");
    model_plan_free(p);
    model_gguf_free(g);
}

/* Every (layer, expert) once, bytes add up, each node within its limit, and with unlimited
 * nodes the per-layer counts differ by at most one and node bytes by at most one expert. */
static void check_plan(const model_gguf_t *g, const model_plan_t *p, const uint64_t *cap)
{
    model_weights_t w;
    model_weights_info(g, &w);
    uint64_t sum = 0, placed = 0;
    for (int n = 0; n < p->n_nodes; n++) {
        sum += p->node_bytes[n];
        if (cap) cr_assert_leq(p->node_bytes[n], cap[n]);
    }
    cr_assert_eq(sum, w.expert_bytes);
    cr_assert_eq(p->coord_weight_bytes, w.total_bytes - w.expert_bytes);
    uint64_t max_expert = 0;
    for (int l = 0; l < p->n_layers; l++) {
        int count[16] = {0};
        for (int e = 0; e < p->n_expert; e++) {
            int o = p->owner[l * p->n_expert + e];
            uint64_t b = p->expert_bytes[l * p->n_expert + e];
            if (b == 0) {
                cr_assert_eq(o, -1);
                continue;
            }
            cr_assert(o >= 0 && o < p->n_nodes);
            count[o]++;
            placed += b;
            if (b > max_expert) max_expert = b;
        }
        if (!cap) {
            int lo = 1 << 30, hi = 0;
            for (int n = 0; n < p->n_nodes; n++) {
                lo = count[n] < lo ? count[n] : lo;
                hi = count[n] > hi ? count[n] : hi;
            }
            cr_assert_leq(hi - lo, 1, "layer %d spread", l);
        }
    }
    cr_assert_eq(placed, sum);
    if (!cap) {
        uint64_t lo = UINT64_MAX, hi = 0;
        for (int n = 0; n < p->n_nodes; n++) {
            lo = p->node_bytes[n] < lo ? p->node_bytes[n] : lo;
            hi = p->node_bytes[n] > hi ? p->node_bytes[n] : hi;
        }
        cr_assert_leq(hi - lo, max_expert);
    }
}

Test(model_plan, unlimited_nodes_are_balanced)
{
    static const char *const files[] = {"qwen3moe-tiny-f32", "deepseek2-tiny-f32",
                                        "stories-moe-f32", "qwen3moe-kq-q5_k_m"};
    for (int k = 0; k < 4; k++) {
        model_gguf_t *g = open_golden(files[k]);
        for (int nodes = 1; nodes <= 7; nodes += 2) {
            model_plan_t *p;
            cr_assert_eq(model_plan_new(g, nodes, NULL, 0, &p), 0);
            check_plan(g, p, NULL);
            model_plan_free(p);
        }
        model_gguf_free(g);
    }
}

Test(model_plan, memory_limits_are_honoured_or_refused)
{
    wire__log_level = -1;
    model_gguf_t *g = open_golden("qwen3moe-kq-q4_k_m"); /* experts of mixed types and sizes */
    model_weights_t w;
    model_weights_info(g, &w);
    /* Room for everything, split 3:1: the big node takes about three quarters. */
    uint64_t cap[2] = {w.expert_bytes * 3 / 4 + w.expert_bytes / 16,
                       w.expert_bytes / 4 + w.expert_bytes / 16};
    model_plan_t *p;
    cr_assert_eq(model_plan_new(g, 2, cap, 0, &p), 0);
    check_plan(g, p, cap);
    cr_assert_gt(p->node_bytes[0], 2 * p->node_bytes[1]);
    model_plan_free(p);

    /* Not enough in total. */
    uint64_t small[2] = {w.expert_bytes / 2, w.expert_bytes / 2 - 1};
    cr_assert_eq(model_plan_new(g, 2, small, 0, &p), -ENOSPC);
    cr_assert_null(p);
    /* Enough in total, but the second node cannot hold a single expert. */
    uint64_t frag[2] = {w.expert_bytes - w.expert_bytes / 64, w.expert_bytes / 32};
    cr_assert_eq(model_plan_new(g, 2, frag, 0, &p), -ENOSPC);
    cr_assert_eq(model_plan_new(g, 0, NULL, 0, &p), -EINVAL);
    model_gguf_free(g);
}

Test(model_plan, dense_model_keeps_everything_on_the_coordinator)
{
    model_gguf_t *g = open_golden("stories260k-f32");
    model_plan_t *p;
    cr_assert_eq(model_plan_new(g, 3, NULL, 0, &p), 0);
    cr_assert_eq(p->n_expert, 0);
    model_weights_t w;
    model_weights_info(g, &w);
    cr_assert_eq(w.active_params, w.total_params);
    cr_assert_eq(p->coord_weight_bytes, w.total_bytes);
    for (int n = 0; n < 3; n++) cr_assert_eq(p->node_bytes[n], 0);
    model_plan_free(p);
    model_gguf_free(g);
}

/* ---------------------------------------------------------------- replicas */

/* Every placed pair on R distinct nodes with the primary first, the counts and bytes adding up
 * to R copies of everything, each node within its limit; unlimited, each layer's copies and
 * primaries differ by at most one between nodes and node bytes by at most one expert. */
static void check_replicas(const model_gguf_t *g, const model_plan_t *p, int R,
                           const uint64_t *cap)
{
    model_weights_t w;
    model_weights_info(g, &w);
    cr_assert_eq(p->replicas, R);
    uint64_t sum = 0;
    int pairs = 0, held = 0;
    for (int n = 0; n < p->n_nodes; n++) {
        sum += p->node_bytes[n];
        held += p->node_experts[n];
        if (cap) cr_assert_leq(p->node_bytes[n], cap[n]);
    }
    cr_assert_eq(sum, w.expert_bytes * (uint64_t)R);
    uint64_t max_expert = 0;
    for (int l = 0; l < p->n_layers; l++) {
        int copies[16] = {0}, primaries[16] = {0};
        for (int e = 0; e < p->n_expert; e++) {
            size_t i = (size_t)l * p->n_expert + e;
            const int *o = p->owners + i * R;
            if (p->expert_bytes[i] == 0) {
                cr_assert_eq(p->owner[i], -1);
                for (int r = 0; r < R; r++) cr_assert_eq(o[r], -1);
                continue;
            }
            pairs++;
            if (p->expert_bytes[i] > max_expert) max_expert = p->expert_bytes[i];
            cr_assert_eq(p->owner[i], o[0], "the primary is the first owner");
            primaries[o[0]]++;
            for (int r = 0; r < R; r++) {
                cr_assert(o[r] >= 0 && o[r] < p->n_nodes);
                copies[o[r]]++;
                for (int q = 0; q < r; q++)
                    cr_assert_neq(o[q], o[r], "layer %d expert %d: copies %d and %d on node %d",
                                  l, e, q, r, o[r]);
            }
        }
        if (!cap) {
            int lo = 1 << 30, hi = 0, plo = 1 << 30, phi = 0;
            for (int n = 0; n < p->n_nodes; n++) {
                lo = copies[n] < lo ? copies[n] : lo;
                hi = copies[n] > hi ? copies[n] : hi;
                plo = primaries[n] < plo ? primaries[n] : plo;
                phi = primaries[n] > phi ? primaries[n] : phi;
            }
            cr_assert_leq(hi - lo, 1, "layer %d copies spread", l);
            cr_assert_leq(phi - plo, 1, "layer %d primaries spread", l);
        }
    }
    cr_assert_eq(held, pairs * R);
    if (!cap) {
        uint64_t lo = UINT64_MAX, hi = 0;
        for (int n = 0; n < p->n_nodes; n++) {
            lo = p->node_bytes[n] < lo ? p->node_bytes[n] : lo;
            hi = p->node_bytes[n] > hi ? p->node_bytes[n] : hi;
        }
        cr_assert_leq(hi - lo, max_expert);
    }
}

Test(model_plan, replicas_put_every_expert_on_distinct_nodes)
{
    static const char *const files[] = {"qwen3moe-tiny-f32", "mixtral-tiny-f32",
                                        "deepseek2-tiny-f32", "qwen3moe-kq-q5_k_m"};
    for (int k = 0; k < 4; k++) {
        model_gguf_t *g = open_golden(files[k]);
        for (int nodes = 1; nodes <= 7; nodes++)
            for (int R = 1; R <= nodes && R <= 3; R++) {
                model_plan_t *p;
                cr_assert_eq(model_plan_new_r(g, nodes, NULL, 0, R, &p), 0, "%s %d/%d",
                             files[k], nodes, R);
                check_replicas(g, p, R, NULL);
                model_plan_free(p);
            }
        model_gguf_free(g);
    }
}

Test(model_plan, one_replica_is_the_plain_plan)
{
    model_gguf_t *g = open_golden("qwen3moe-kq-q4_k_m");
    model_plan_t *a, *b;
    cr_assert_eq(model_plan_new(g, 3, NULL, 0, &a), 0);
    cr_assert_eq(model_plan_new_r(g, 3, NULL, 0, 1, &b), 0);
    cr_assert_eq(a->replicas, 1);
    size_t pairs = (size_t)a->n_layers * a->n_expert;
    cr_assert_arr_eq(a->owner, b->owner, pairs * sizeof(int));
    cr_assert_arr_eq(a->owner, a->owners, pairs * sizeof(int));
    cr_assert_arr_eq(a->node_bytes, b->node_bytes, 3 * sizeof(uint64_t));
    model_plan_free(a);
    model_plan_free(b);
    model_gguf_free(g);
}

Test(model_plan, replicas_are_deterministic)
{
    model_gguf_t *g = open_golden("qwen3moe-kq-q4_k_m");
    model_plan_t *a, *b;
    cr_assert_eq(model_plan_new_r(g, 5, NULL, 0, 3, &a), 0);
    cr_assert_eq(model_plan_new_r(g, 5, NULL, 0, 3, &b), 0);
    size_t pairs = (size_t)a->n_layers * a->n_expert;
    cr_assert_arr_eq(a->owners, b->owners, pairs * 3 * sizeof(int));
    model_plan_free(a);
    model_plan_free(b);
    model_gguf_free(g);
}

Test(model_plan, replicas_honour_memory_or_are_refused)
{
    wire__log_level = -1;
    model_gguf_t *g = open_golden("qwen3moe-kq-q4_k_m"); /* experts of mixed types and sizes */
    model_weights_t w;
    model_weights_info(g, &w);
    model_plan_t *p = NULL;
    /* Two copies on three nodes with room for 2.4 copies in all: placed within every limit. */
    uint64_t cap[3] = {w.expert_bytes * 4 / 5, w.expert_bytes * 4 / 5, w.expert_bytes * 4 / 5};
    cr_assert_eq(model_plan_new_r(g, 3, cap, 0, 2, &p), 0);
    check_replicas(g, p, 2, cap);
    model_plan_free(p);
    /* Room for 1.8 copies: one copy fits, two do not. */
    uint64_t small[3] = {w.expert_bytes * 3 / 5, w.expert_bytes * 3 / 5, w.expert_bytes * 3 / 5};
    cr_assert_eq(model_plan_new_r(g, 3, small, 0, 1, &p), 0);
    model_plan_free(p);
    cr_assert_eq(model_plan_new_r(g, 3, small, 0, 2, &p), -ENOSPC);
    cr_assert_null(p);
    /* Enough in total, but one node holds almost everything: a second copy has nowhere to go. */
    uint64_t lop[2] = {w.expert_bytes * 3 / 2, w.expert_bytes * 3 / 4};
    cr_assert_eq(model_plan_new_r(g, 2, lop, 0, 2, &p), -ENOSPC);
    cr_assert_null(p);
    /* Each copy needs its own node. */
    cr_assert_eq(model_plan_new_r(g, 2, NULL, 0, 3, &p), -EINVAL);
    cr_assert_eq(model_plan_new_r(g, 2, NULL, 0, 0, &p), -EINVAL);
    cr_assert_null(p);
    model_gguf_free(g);
}

/* Runs the plan command with stdout in a file; returns its status and *out (malloc'd). */
static int run_plan(int argc, char **argv, char **out)
{
    char path[64];
    snprintf(path, sizeof(path), "/tmp/moemesh-plan-test-%d.out", (int)getpid());
    fflush(stdout);
    int saved = dup(1), fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    cr_assert(saved >= 0 && fd >= 0);
    dup2(fd, 1);
    close(fd);
    int rc = model_cli_plan(argc, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *out = malloc((size_t)n + 1);
    cr_assert_eq(fread(*out, 1, (size_t)n, f), (size_t)n);
    (*out)[n] = 0;
    fclose(f);
    unlink(path);
    return rc;
}

Test(model_plan, plan_command_shows_replicas)
{
    wire__log_level = -1;
    char *out;
    /* mixtral-tiny: 4 layers of 8 experts, 2 copies on 4 nodes: 16 pairs per node. */
    char *ok[] = {"plan", "../shared/golden/mixtral-tiny-f32.gguf", "--nodes", "4", "--replicas",
                  "2", NULL};
    cr_assert_eq(run_plan(6, ok, &out), 0);
    cr_assert_not_null(strstr(out, "replicas     2"), "%s", out);
    cr_assert_not_null(strstr(out, "16 (layer, expert) pairs"), "%s", out);
    cr_assert_not_null(strstr(out, "*"), "%s", out);
    free(out);
    char *too_many[] = {"plan", "../shared/golden/mixtral-tiny-f32.gguf", "--nodes", "2",
                        "--replicas", "3", NULL};
    cr_assert_eq(run_plan(6, too_many, &out), 2);
    free(out);
    char *zero[] = {"plan", "../shared/golden/mixtral-tiny-f32.gguf", "--nodes", "2",
                    "--replicas", "0", NULL};
    cr_assert_eq(run_plan(6, zero, &out), 2);
    free(out);
}

/* ---- load- and capacity-aware placement (model_plan_balance) ---- */

/* A skewed synthetic profile: layer l's expert e gets tokens ~ 1 / (1 + ((e + 3l) mod E))^s,
 * so every layer has its own hot experts (Zipf with exponent s). */
static void zipf(double *load, int L, int E, double s)
{
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++)
            load[l * E + e] = 1000.0 / pow(1.0 + (double)((e + 3 * l) % E), s);
}

/* Every used copy on a distinct valid node, shares summing to 1, unused slots -1, node totals
 * matching the copies, and every node within its memory. */
static void check_balanced(const model_plan_t *p, const uint64_t *bytes, const uint64_t *mem)
{
    const int R = p->replicas;
    uint64_t *nb = calloc((size_t)p->n_nodes, sizeof(uint64_t));
    for (int i = 0; i < p->n_layers * p->n_expert; i++) {
        if (!bytes[i]) {
            cr_assert_eq(p->copies[i], 0);
            continue;
        }
        cr_assert(p->copies[i] >= 1 && p->copies[i] <= R, "pair %d copies %d", i, p->copies[i]);
        double s = 0;
        for (int q = 0; q < R; q++) {
            int n = p->owners[i * R + q];
            if (q >= p->copies[i]) {
                cr_assert_eq(n, -1);
                continue;
            }
            cr_assert(n >= 0 && n < p->n_nodes);
            for (int k = 0; k < q; k++) cr_assert_neq(p->owners[i * R + k], n);
            s += p->share[i * R + q];
            nb[n] += bytes[i];
        }
        cr_assert_float_eq(s, 1.0, 1e-9);
        cr_assert_eq(p->owner[i], p->owners[i * R]);
    }
    for (int n = 0; n < p->n_nodes; n++) {
        cr_assert_eq(nb[n], p->node_bytes[n]);
        if (mem) cr_assert_leq(p->node_bytes[n], mem[n], "node %d", n);
    }
    free(nb);
}

/* Round-robin: expert e of every layer on node e mod N, what a byte-balanced plan of equal
 * experts amounts to. */
static double round_robin_worst(int L, int E, int N, const double *load, const double *cap)
{
    uint64_t *bytes = malloc(sizeof(uint64_t) * (size_t)(L * E));
    for (int i = 0; i < L * E; i++) bytes[i] = 1;
    model_balance_t b = {.n_nodes = N, .n_layers = L, .n_expert = E, .expert_bytes = bytes,
                         .max_replicas = 1};
    model_plan_t *p;
    cr_assert_eq(model_plan_balance(&b, &p), 0);
    for (int i = 0; i < L * E; i++) {
        p->owner[i] = p->owners[i] = i % E % N;
    }
    double worst = 0;
    for (int l = 0; l < L; l++) {
        double x = model_plan_imbalance(p, l, load, cap);
        worst = x > worst ? x : worst;
    }
    model_plan_free(p);
    free(bytes);
    return worst;
}

Test(model_plan, balanced_beats_round_robin_on_skewed_profiles)
{
    enum { L = 4, E = 16, N = 3 };
    double load[L * E];
    uint64_t bytes[L * E];
    for (int i = 0; i < L * E; i++) bytes[i] = 1000;
    static const double caps[][N] = {{1, 1, 1}, {1, 2, 4}, {3, 1, 1.5}};
    for (int c = 0; c < 3; c++) {
        for (double s = 0.5; s <= 2.0; s += 0.5) {
            zipf(load, L, E, s);
            model_balance_t b = {.n_nodes = N, .n_layers = L, .n_expert = E,
                                 .expert_bytes = bytes, .load = load, .node_cap = caps[c],
                                 .max_replicas = N};
            model_plan_t *p;
            cr_assert_eq(model_plan_balance(&b, &p), 0);
            check_balanced(p, bytes, NULL);
            double rr = round_robin_worst(L, E, N, load, caps[c]), worst = 0;
            for (int l = 0; l < L; l++) {
                double x = model_plan_imbalance(p, l, load, caps[c]);
                cr_assert_geq(x, 1.0 - 1e-9);
                worst = x > worst ? x : worst;
            }
            cr_assert_lt(worst, rr, "caps %d skew %.1f: %.3f vs round-robin %.3f", c, s, worst,
                         rr);
            cr_assert_leq(worst, 1.15, "caps %d skew %.1f: imbalance %.3f", c, s, worst);
            model_plan_free(p);
        }
    }
}

Test(model_plan, balanced_is_deterministic_and_replicates_only_hot_experts)
{
    enum { L = 3, E = 8, N = 4 };
    double load[L * E];
    uint64_t bytes[L * E];
    for (int i = 0; i < L * E; i++) bytes[i] = 4096 + (uint64_t)(i % 3);
    zipf(load, L, E, 2.0);
    const double cap[N] = {2, 1, 1, 1};
    model_balance_t b = {.n_nodes = N, .n_layers = L, .n_expert = E, .expert_bytes = bytes,
                         .load = load, .node_cap = cap, .max_replicas = 3};
    model_plan_t *p, *q;
    cr_assert_eq(model_plan_balance(&b, &p), 0);
    cr_assert_eq(model_plan_balance(&b, &q), 0);
    check_balanced(p, bytes, NULL);
    cr_assert_arr_eq(p->owners, q->owners, sizeof(int) * L * E * 3);
    cr_assert_arr_eq(p->copies, q->copies, sizeof(int) * L * E);
    for (int l = 0; l < L; l++) {
        int hottest = 0, coldest = 0;
        for (int e = 0; e < E; e++) {
            if (load[l * E + e] > load[l * E + hottest]) hottest = e;
            if (load[l * E + e] < load[l * E + coldest]) coldest = e;
        }
        cr_assert_gt(p->copies[l * E + hottest], 1, "layer %d", l);
        cr_assert_eq(p->copies[l * E + coldest], 1, "layer %d", l);
    }
    model_plan_free(p);
    model_plan_free(q);
}

Test(model_plan, balanced_respects_memory_or_is_refused)
{
    wire__log_level = -1;
    enum { L = 4, E = 8, N = 3 };
    double load[L * E];
    uint64_t bytes[L * E], total = 0;
    for (int i = 0; i < L * E; i++) bytes[i] = 100, total += 100;
    zipf(load, L, E, 1.5);
    /* The fastest node has room for a few experts only: capacity must give way to memory. */
    const double cap[N] = {10, 1, 1};
    uint64_t mem[N] = {300, total, total / 2};
    model_balance_t b = {.n_nodes = N, .n_layers = L, .n_expert = E, .expert_bytes = bytes,
                         .load = load, .node_cap = cap, .node_mem = mem, .max_replicas = 3};
    model_plan_t *p;
    cr_assert_eq(model_plan_balance(&b, &p), 0);
    check_balanced(p, bytes, mem);
    cr_assert_eq(p->node_bytes[0], 300);
    model_plan_free(p);
    /* Exactly enough for single copies: no room for any replica, still placed. */
    uint64_t tight[N] = {total / 2, total / 4, total / 4};
    b.node_mem = tight;
    cr_assert_eq(model_plan_balance(&b, &p), 0);
    check_balanced(p, bytes, tight);
    for (int i = 0; i < L * E; i++) cr_assert_eq(p->copies[i], 1);
    model_plan_free(p);
    uint64_t small[N] = {total / 4, total / 4, total / 4};
    b.node_mem = small;
    cr_assert_eq(model_plan_balance(&b, &p), -ENOSPC);
    cr_assert_null(p);
    b.node_mem = NULL;
    b.max_replicas = 4;
    cr_assert_eq(model_plan_balance(&b, &p), -EINVAL);
}

Test(model_plan, new_load_places_a_real_model_and_old_plans_report_shares)
{
    model_gguf_t *g = open_golden("qwen3moe-tiny-f32");
    model_plan_t *old, *p;
    cr_assert_eq(model_plan_new_r(g, 3, NULL, 0, 2, &old), 0);
    const int P = old->n_layers * old->n_expert;
    double *load = calloc((size_t)P, sizeof(double));
    zipf(load, old->n_layers, old->n_expert, 1.5);
    for (int i = 0; i < P; i++) {
        cr_assert_eq(old->copies[i], 2);
        cr_assert_float_eq(old->share[i * 2], 1.0, 0);
    }
    const double cap[3] = {1, 2, 3};
    cr_assert_eq(model_plan_new_load(g, 3, NULL, cap, load, 3, 0, &p), 0);
    check_balanced(p, p->expert_bytes, NULL);
    cr_assert_eq(p->coord_weight_bytes, old->coord_weight_bytes);
    for (int l = 0; l < p->n_layers; l++)
        cr_assert_lt(model_plan_imbalance(p, l, load, cap),
                     model_plan_imbalance(old, l, load, cap), "layer %d", l);
    free(load);
    model_plan_free(old);
    model_plan_free(p);
    model_gguf_free(g);
}

Test(model_plan, split_follows_a_new_load_without_moving_copies)
{
    enum { L = 2, E = 16, N = 3 };
    double prof[L * E], now[L * E];
    uint64_t bytes[L * E];
    for (int i = 0; i < L * E; i++) bytes[i] = 10;
    zipf(prof, L, E, 1.5);
    zipf(now, L, E, 1.2);
    for (int i = 0; i < L * E; i += 3) now[i] *= 1.7; /* another workload, other hot spots */
    const double cap[N] = {1, 2, 4};
    model_balance_t b = {.n_nodes = N, .n_layers = L, .n_expert = E, .expert_bytes = bytes,
                         .load = prof, .node_cap = cap, .max_replicas = N};
    model_plan_t *p;
    cr_assert_eq(model_plan_balance(&b, &p), 0);
    int owners[L * E * N], copies[L * E];
    memcpy(owners, p->owners, sizeof(owners));
    memcpy(copies, p->copies, sizeof(copies));
    double fixed[L];
    for (int l = 0; l < L; l++) fixed[l] = model_plan_imbalance(p, l, now, cap);
    model_plan_split(p, now, cap);
    check_balanced(p, bytes, NULL);
    cr_assert_arr_eq(owners, p->owners, sizeof(owners));
    cr_assert_arr_eq(copies, p->copies, sizeof(copies));
    for (int l = 0; l < L; l++)
        cr_assert_leq(model_plan_imbalance(p, l, now, cap), fixed[l] + 1e-9, "layer %d", l);
    model_plan_free(p);
}
