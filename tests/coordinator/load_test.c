/* Tests for coordinator/load.c: the engine's expert counters add up to tokens x top-k per MoE
 * layer and the windows built on them subtract exactly; time and step windows, restarts,
 * imbalance against a placement (plain and balanced plans), collapse detection, the replica
 * chooser, and load profiles (round trip, refusals).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/coord.h"
#include "wire/wire.h"

#define MODEL "../shared/golden/qwen3moe-tiny-f32.gguf"

Test(coord_load, engine_counts_add_up_to_tokens_times_top_k)
{
    model_t *m;
    cr_assert_eq(model_load(MODEL, &m), 0);
    const model_hparams_t *hp = &m->hp;
    const int L = hp->n_layer, E = hp->n_expert, K = hp->n_expert_used;
    kern_pool_t *pool = kern_pool_new(2);
    enum { N = 24 };
    coord_experts_t *ex = coord_experts_local_new(m, pool, N);
    coord_engine_params_t p = coord_engine_params_default();
    p.n_ctx = 64;
    p.n_slots = 1;
    p.n_batch = N;
    coord_engine_t *eng = coord_engine_new(m, ex, pool, &p);
    cr_assert_not_null(eng);
    coord_load_config_t cfg = coord_load_config_default();
    cfg.n_layers = L, cfg.n_expert = E, cfg.window_steps = 4;
    coord_load_t *ld = coord_load_new(&cfg);
    cr_assert_not_null(ld);

    uint64_t *cum = calloc((size_t)L * E, sizeof(uint64_t));
    uint64_t *win = calloc((size_t)L * E, sizeof(uint64_t));
    float *logits = malloc(sizeof(float) * (size_t)N * hp->n_vocab);
    int32_t tok[N], pos[N], sl[N];
    bool want[N];
    int fed = 0;
    /* A prompt of 16 in one batch, then 8 single tokens: one sample after each step. */
    coord_engine_expert_tokens(eng, cum, L * E);
    coord_load_sample(ld, 0, cum, NULL);
    for (int step = 0; step < 9; step++) {
        int n = step == 0 ? 16 : 1;
        for (int i = 0; i < n; i++) {
            tok[i] = (int32_t)((fed * 37 + 11) % hp->n_vocab);
            pos[i] = fed++, sl[i] = 0, want[i] = i == n - 1;
        }
        coord_batch_t b = {.n = n, .tok = tok, .pos = pos, .slot = sl, .want = want};
        cr_assert_eq(coord_engine_decode(eng, &b, logits), 0);
        coord_engine_expert_tokens(eng, cum, L * E);
        coord_load_sample(ld, step + 1, cum, NULL);
        /* The step window (4 samples = 3 steps back, or fewer at the start). */
        coord_load_tokens(ld, COORD_LOAD_RECENT_STEPS, win);
        int in_window = 0;
        for (int s = step; s >= 0 && s > step - 4; s--) in_window += s == 0 ? 16 : 1;
        for (int l = 0; l < L; l++) {
            uint64_t sum = 0, wsum = 0;
            for (int e = 0; e < E; e++) sum += cum[l * E + e], wsum += win[l * E + e];
            bool moe = m->layers[l].gate_exps != NULL;
            cr_assert_eq(sum, moe ? (uint64_t)fed * K : 0, "layer %d: %llu", l,
                         (unsigned long long)sum);
            cr_assert_eq(wsum, moe ? (uint64_t)in_window * K : 0, "layer %d step %d", l, step);
        }
    }
    coord_load_tokens(ld, COORD_LOAD_ALL, win);
    cr_assert_arr_eq(win, cum, sizeof(uint64_t) * L * E);
    free(cum), free(win), free(logits);
    coord_load_free(ld);
    coord_engine_free(eng);
    coord_experts_free(ex);
    kern_pool_free(pool);
    model_free(m);
}

Test(coord_load, time_window_covers_the_last_window_seconds)
{
    coord_load_config_t cfg = coord_load_config_default();
    cfg.n_layers = 1, cfg.n_expert = 2, cfg.n_nodes = 2, cfg.window_s = 60;
    coord_load_t *ld = coord_load_new(&cfg);
    uint64_t tok[2] = {0, 0}, out[2];
    double busy[2] = {0, 0}, b[2];
    /* 10 tokens and 0.5 s of work on node 1 every second, for 200 s, sampled 4 times a second. */
    for (int q = 0; q <= 800; q++) {
        double t = q * 0.25;
        tok[0] = (uint64_t)(10 * (q / 4)), tok[1] = (uint64_t)q;
        busy[1] = 0.5 * (q / 4);
        coord_load_sample(ld, t, tok, busy);
    }
    double secs = coord_load_tokens(ld, COORD_LOAD_RECENT_S, out);
    cr_assert(secs >= 60 && secs <= 62, "%g s", secs);
    cr_assert(out[0] >= 600 && out[0] <= 620, "%llu", (unsigned long long)out[0]);
    cr_assert_eq(out[1], (uint64_t)(secs * 4 + 0.5));
    coord_load_busy(ld, COORD_LOAD_RECENT_S, b);
    cr_assert_float_eq(b[0], 0, 1e-12);
    cr_assert(b[1] >= 30 && b[1] <= 31, "%g", b[1]);
    /* A counter going backwards starts over: one sample, empty windows. */
    tok[0] = 1;
    coord_load_sample(ld, 201, tok, busy);
    cr_assert_eq(coord_load_samples(ld), 1);
    cr_assert_eq(coord_load_tokens(ld, COORD_LOAD_RECENT_S, out), 0);
    cr_assert_eq(out[0], 0);
    coord_load_free(ld);
}

Test(coord_load, imbalance_follows_the_placement)
{
    enum { L = 2, E = 4, N = 2 };
    coord_load_config_t cfg = coord_load_config_default();
    cfg.n_layers = L, cfg.n_expert = E, cfg.n_nodes = N;
    cfg.collapse_share = 1; /* not tested here */
    coord_load_t *ld = coord_load_new(&cfg);
    cr_assert_eq(coord_load_imbalance(ld, COORD_LOAD_ALL, 0), 0); /* no placement yet */
    uint64_t tok[L * E] = {60, 20, 10, 10, 25, 25, 25, 25};
    coord_load_sample(ld, 1, tok, NULL);
    /* Experts 0, 1 on node 0, 2, 3 on node 1: layer 0 is 80 vs 20 (mean 50), layer 1 even. */
    int owners[L * E] = {0, 0, 1, 1, 0, 0, 1, 1};
    coord_load_set_placement(ld, owners, NULL, 1, NULL);
    cr_assert_float_eq(coord_load_imbalance(ld, COORD_LOAD_ALL, 0), 1.6, 1e-12);
    cr_assert_float_eq(coord_load_imbalance(ld, COORD_LOAD_ALL, 1), 1.0, 1e-12);
    /* Node 0 four times as fast: layer 0 takes 80/4 = 20 vs 20/1: the perfect split is
     * 100/5 = 20, node 1's 20 is the max: 1.0. */
    const double cap[N] = {4, 1};
    coord_load_set_placement(ld, owners, NULL, 1, cap);
    cr_assert_float_eq(coord_load_imbalance(ld, COORD_LOAD_ALL, 0), 1.0, 1e-12);
    /* Expert 0 of layer 0 split 50/50 over both nodes, equal capacity: 50 vs 50. */
    int own2[L * E * 2] = {0, 1, 0, -1, 1, -1, 1, -1, 0, -1, 0, -1, 1, -1, 1, -1};
    double sh2[L * E * 2] = {0.5, 0.5, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0};
    coord_load_set_placement(ld, own2, sh2, 2, NULL);
    cr_assert_float_eq(coord_load_imbalance(ld, COORD_LOAD_ALL, 0), 1.0, 1e-12);
    cr_assert_eq(coord_load_imbalance(ld, COORD_LOAD_ALL, 5), 0);
    coord_load_free(ld);
}

Test(coord_load, collapse_is_flagged_once_and_cleared)
{
    coord_load_config_t cfg = coord_load_config_default();
    cfg.n_layers = 2, cfg.n_expert = 4, cfg.window_s = 10, cfg.collapse_min_tokens = 100;
    coord_load_t *ld = coord_load_new(&cfg);
    uint64_t tok[8] = {0};
    int ex;
    double share;
    for (int s = 0; s <= 20; s++) {
        /* Layer 0: expert 2 gets 7 of every 10 tokens; layer 1 is even. */
        tok[2] += 7, tok[0] += 1, tok[1] += 1, tok[3] += 1;
        for (int e = 4; e < 8; e++) tok[e] += 3;
        coord_load_sample(ld, s, tok, NULL);
    }
    cr_assert(coord_load_collapsed(ld, 0, &ex, &share));
    cr_assert_eq(ex, 2);
    cr_assert_float_eq(share, 0.7, 1e-9);
    cr_assert_not(coord_load_collapsed(ld, 1, NULL, NULL));
    /* Routing evens out: once the window has forgotten the skew, the flag clears. */
    for (int s = 21; s <= 40; s++) {
        for (int e = 0; e < 8; e++) tok[e] += 3;
        coord_load_sample(ld, s, tok, NULL);
    }
    cr_assert_not(coord_load_collapsed(ld, 0, &ex, &share));
    cr_assert_float_eq(share, 0.25, 1e-9);
    cr_assert_not(coord_load_collapsed(ld, 9, NULL, NULL));
    coord_load_free(ld);
}

Test(coord_load, chooser_prefers_the_queue_that_drains_first)
{
    const int owners[3] = {2, 0, 1};
    int inflight[3] = {0, 0, 0};
    cr_assert_eq(coord_load_choose(owners, 3, inflight, NULL), 0); /* idle: the primary */
    inflight[2] = 1;
    cr_assert_eq(coord_load_choose(owners, 3, inflight, NULL), 1);
    inflight[0] = 1;
    cr_assert_eq(coord_load_choose(owners, 3, inflight, NULL), 2);
    /* Node 2 three times as fast: two queued there (3/3) beat one queued on node 0 (2/1). */
    inflight[2] = 2, inflight[1] = 1;
    const double cap[3] = {1, 1, 3};
    cr_assert_eq(coord_load_choose(owners, 3, inflight, cap), 0);
    const int none[2] = {-1, -1};
    cr_assert_eq(coord_load_choose(none, 2, inflight, cap), -1);
    /* Over many calls that each stay queued, the split follows the capacities (3:1:1). */
    int q[3] = {0, 0, 0}, got[3] = {0, 0, 0};
    for (int i = 0; i < 500; i++) {
        int k = coord_load_choose(owners, 3, q, cap);
        got[k]++;
        q[owners[k]]++;
    }
    cr_assert(got[0] >= 290 && got[0] <= 310, "%d %d %d", got[0], got[1], got[2]);
    cr_assert(got[1] >= 90 && got[1] <= 110 && got[2] >= 90 && got[2] <= 110);
}

Test(coord_load, profile_round_trip_and_refusals)
{
    wire__log_level = -1;
    char path[64];
    snprintf(path, sizeof(path), "/tmp/moemesh-load-%d.json", (int)getpid());
    uint64_t tok[6] = {5, 0, 7, 1, 2, 3};
    cr_assert_eq(coord_load_profile_write(path, "abc-123", 2, 3, tok), 0);
    double out[6];
    cr_assert_eq(coord_load_profile_read(path, 2, 3, out), 0);
    for (int i = 0; i < 6; i++) cr_assert_float_eq(out[i], (double)tok[i], 0);
    cr_assert_eq(coord_load_profile_read(path, 3, 2, out), -EINVAL); /* other shape */
    static const char *const bad[] = {
        "not json",
        "{\"moemesh_load_profile\":2,\"n_layers\":1,\"n_expert\":1,\"tokens\":[[1]]}",
        "{\"moemesh_load_profile\":1,\"n_layers\":2,\"n_expert\":3,\"tokens\":[[1,2,3]]}",
        "{\"moemesh_load_profile\":1,\"n_layers\":2,\"n_expert\":3,\"tokens\":[[1,2,3],[1,2]]}",
        "{\"moemesh_load_profile\":1,\"n_layers\":2,\"n_expert\":3,\"tokens\":[[1,2,3],[1,-2,3]]}",
        "{\"moemesh_load_profile\":1,\"n_layers\":2,\"n_expert\":3,\"tokens\":[[1,2,3],[1,\"x\",3]]}",
    };
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        FILE *f = fopen(path, "w");
        fputs(bad[k], f);
        fclose(f);
        cr_assert_eq(coord_load_profile_read(path, 2, 3, out), -EINVAL, "%s", bad[k]);
    }
    unlink(path);
    cr_assert_eq(coord_load_profile_read(path, 2, 3, out), -ENOENT);
    coord_load_config_t cfg = coord_load_config_default();
    cfg.n_layers = 1, cfg.n_expert = 1, cfg.window_steps = 0;
    cr_assert_null(coord_load_new(&cfg));
    cfg.window_steps = 4096, cfg.n_layers = 4096, cfg.n_expert = 4096;
    cr_assert_null(coord_load_new(&cfg));
}

/* Layer 0's counts over 96 random tokens of a generated model with the given router skew. */
static void layer0_counts(double skew, uint64_t *out16)
{
    char path[96];
    snprintf(path, sizeof(path), "/tmp/moemesh-skew-%d-%g.gguf", (int)getpid(), skew);
    model_gen_params_t g = {.arch = "qwen3moe", .n_layers = 2, .n_embd = 64, .n_head = 4,
                            .n_head_kv = 2, .n_expert = 16, .n_expert_used = 2,
                            .expert_ff = 32, .n_vocab = 512, .type = KERN_F32, .seed = 7,
                            .router_skew = skew};
    cr_assert_eq(model_gen_write(&g, path), 0);
    model_t *m;
    cr_assert_eq(model_load(path, &m), 0);
    unlink(path);
    enum { N = 96 };
    kern_pool_t *pool = kern_pool_new(1);
    coord_experts_t *ex = coord_experts_local_new(m, pool, N);
    coord_engine_params_t p = coord_engine_params_default();
    p.n_ctx = N, p.n_slots = 1, p.n_batch = N;
    coord_engine_t *eng = coord_engine_new(m, ex, pool, &p);
    int32_t tok[N], pos[N], sl[N];
    bool want[N];
    for (int i = 0; i < N; i++)
        tok[i] = (int32_t)((i * 131 + 17) % 512), pos[i] = i, sl[i] = 0, want[i] = i == N - 1;
    float *logits = malloc(sizeof(float) * 512);
    coord_batch_t b = {.n = N, .tok = tok, .pos = pos, .slot = sl, .want = want};
    cr_assert_eq(coord_engine_decode(eng, &b, logits), 0);
    uint64_t all[2 * 16];
    coord_engine_expert_tokens(eng, all, 2 * 16);
    memcpy(out16, all, 16 * sizeof(uint64_t));
    free(logits);
    coord_engine_free(eng);
    coord_experts_free(ex);
    kern_pool_free(pool);
    model_free(m);
}

Test(coord_load, router_skew_makes_routing_measurably_uneven)
{
    uint64_t plain[16], skewed[16];
    layer0_counts(0, plain);
    layer0_counts(12, skewed);
    uint64_t top_plain = 0, sum = 0;
    int hot = 0;
    for (int e = 0; e < 16; e++) {
        top_plain = plain[e] > top_plain ? plain[e] : top_plain;
        if (skewed[e] > skewed[hot]) hot = e;
        sum += skewed[e];
    }
    cr_assert_eq(sum, 96 * 2);
    /* Layer 0's hottest is expert 0 (rank 0), well above the even share (12 of 192) and above
     * the unskewed model's hottest; expert 15 (rank 15: no bias) is rarely chosen. */
    cr_assert_eq(hot, 0, "hottest %d", hot);
    cr_assert_gt(skewed[0], 3 * 12, "%llu", (unsigned long long)skewed[0]);
    cr_assert_gt(skewed[0], top_plain + 12);
    cr_assert_lt(skewed[15], skewed[0] / 4);
}

/* Sum of the samples of series name (any labels) in a metrics text. */
static double series(const char *text, const char *name)
{
    double sum = 0;
    size_t n = strlen(name);
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, name, n) || (l[n] != '{' && l[n] != ' ')) continue;
        const char *v = l[n] == '{' ? strchr(strchr(l, '}'), ' ') : l + n;
        sum += strtod(v + 1, NULL);
    }
    return sum;
}

Test(coord_load, metrics_show_the_recent_window)
{
    coord_metrics_t *m = coord_metrics_new();
    uint64_t tok[2 * 3] = {10, 0, 0, 0, 0, 0};
    bool moe[2] = {true, false};
    coord_metrics_gauges_t g = {.ready = true, .expert_tokens = tok, .moe_layer = moe,
                                .n_layers = 2, .n_expert = 3};
    char *t;
    coord_metrics_render(m, &g, &t);
    cr_assert_eq(series(t, "moemesh:expert_tokens_recent"), 0, "%s", t);
    free(t);
    tok[0] = 50, tok[1] = 5, tok[2] = 5; /* layer 0: 40 + 5 + 5 since the last scrape */
    coord_metrics_render(m, &g, &t);
    cr_assert_eq(series(t, "moemesh:expert_tokens_total"), 60);
    cr_assert_eq(series(t, "moemesh:expert_tokens_recent"), 50, "%s", t);
    cr_assert(strstr(t, "moemesh:expert_tokens_recent{layer=\"0\",expert=\"0\"} 40\n"));
    cr_assert_float_eq(series(t, "moemesh:layer_top_expert_share"), 0.8, 1e-6);
    cr_assert_null(strstr(t, "layer=\"1\""), "a layer without experts is not shown");
    cr_assert_null(strstr(t, "moemesh:layer_imbalance"), "no cluster, no placement");
    cr_assert_gt(series(t, "moemesh:expert_window_seconds"), 0);
    free(t);
    coord_metrics_free(m);
}
