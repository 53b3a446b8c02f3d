/* `moemesh-bench model`: prompt-processing and generation speed of the single-process engine on
 * one GGUF file, in llama-bench's terms (pp = a prompt of P tokens as one batch, tg = N tokens
 * decoded one at a time), for each thread count asked for. Token ids are drawn from a seeded
 * PRNG: speed depends on shapes and types, not on what the tokens say.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "coordinator/coord.h"
#include "wire/wire.h"

/* Weight bytes one decoded token reads (bench/limit.c, shared with the sweep's limit model). */
static double active_bytes(const model_t *m) { return bench_limit_active_bytes(m); }

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* One thread count: pp and tg are separate tests from an empty context each repeat, as
 * llama-bench runs them (tg does not follow the prompt, so it measures short-context decode). */
static int run_once(const model_t *m, int threads, int pp, int tg, int reps, double *pp_tps,
                    double *tg_tps, double *bw)
{
    kern_pool_t *pool = kern_pool_new(threads);
    *bw = bench__read_bandwidth(pool);
    int batch = pp > 1 ? pp : 1;
    coord_experts_t *ex = m->hp.n_expert ? coord_experts_local_new(m, pool, batch) : NULL;
    coord_engine_params_t p = coord_engine_params_default();
    p.n_ctx = (pp > tg ? pp : tg) + 1;
    p.n_batch = batch;
    coord_engine_t *e = coord_engine_new(m, ex, pool, &p);
    if (!e) {
        coord_experts_free(ex);
        kern_pool_free(pool);
        return -1;
    }
    int32_t *tok = xmalloc(sizeof(int32_t) * batch), *pos = xmalloc(sizeof(int32_t) * batch);
    int32_t *slot = xcalloc(batch, sizeof(int32_t));
    float *logits = xmalloc(sizeof(float) * (size_t)m->hp.n_vocab);
    double *pps = xcalloc((size_t)reps, sizeof(double));
    double *tgs = xcalloc((size_t)reps, sizeof(double));
    uint64_t s = 0x9e3779b97f4a7c15ull;
    int err = 0;
    for (int r = 0; r < reps && !err; r++) {
        for (int i = 0; i < batch; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            tok[i] = (int32_t)((s >> 33) % (uint64_t)m->hp.n_vocab);
            pos[i] = i;
        }
        coord_engine_clear_slot(e, 0);
        double t0 = wire_now();
        if (pp > 0) {
            coord_batch_t b = {.n = pp, .tok = tok, .pos = pos, .slot = slot};
            err = coord_engine_decode(e, &b, logits);
        }
        double t1 = wire_now();
        coord_engine_clear_slot(e, 0);
        double t2 = wire_now();
        for (int i = 0; i < tg && !err; i++) {
            int32_t ps = i;
            coord_batch_t b = {.n = 1, .tok = &tok[i % batch], .pos = &ps, .slot = slot};
            err = coord_engine_decode(e, &b, logits);
        }
        double t3 = wire_now();
        pps[r] = pp > 0 ? pp / (t1 - t0) : 0;
        tgs[r] = tg > 0 ? tg / (t3 - t2) : 0;
    }
    *pp_tps = median(pps, reps);
    *tg_tps = median(tgs, reps);
    free(pps), free(tgs);
    free(tok), free(pos), free(slot), free(logits);
    coord_engine_free(e);
    coord_experts_free(ex);
    kern_pool_free(pool);
    return err;
}

int bench_model_main(int argc, char **argv)
{
    const char *path = NULL, *threads = "1,2";
    int pp = 512, tg = 128, reps = 2;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-m") && v) path = v, i++;
        else if (!strcmp(a, "-p") && v) pp = atoi(v), i++;
        else if (!strcmp(a, "-n") && v) tg = atoi(v), i++;
        else if (!strcmp(a, "-t") && v) threads = v, i++;
        else if (!strcmp(a, "-r") && v) reps = atoi(v), i++;
        else if (!strcmp(a, "--json")) json = true;
        else {
            fprintf(stderr, "usage: moemesh-bench model -m MODEL [-p PROMPT_TOKENS (512)] "
                            "[-n GEN_TOKENS (128)] [-t THREADS,... (1,2)] [-r REPEATS (2)] "
                            "[--json]\n");
            return 2;
        }
    }
    if (!path || pp < 0 || tg < 0 || reps < 1) {
        fprintf(stderr, "model: -m MODEL is required; -p, -n >= 0, -r >= 1\n");
        return 2;
    }
    model_t *m = NULL;
    int err = model_load(path, &m);
    if (err) {
        fprintf(stderr, "model: cannot load %s: %s\n", path, model_strerror(err));
        return 1;
    }
    const double abytes = active_bytes(m);
    if (!json) {
        printf("model %s: %s, %d layers, dim %d, %d experts (top-%d), vocab %d; "
               "%.3f GB of weights read per decoded token\n",
               path, m->hp.arch_name, m->hp.n_layer, m->hp.n_embd, m->hp.n_expert,
               m->hp.n_expert_used, m->hp.n_vocab, abytes / 1e9);
        printf("medians of %d runs; floor = read bandwidth / bytes per token\n", reps);
        printf("| threads | pp%d tok/s | tg%d tok/s | read GB/s | tg floor tok/s | of floor |\n"
               "|---|---|---|---|---|---|\n",
               pp, tg);
    }
    char *list = xstrdup(threads), *save = NULL;
    int rc = 0;
    for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int nt = atoi(t);
        double a, b, bw;
        if (nt < 1 || run_once(m, nt, pp, tg, reps, &a, &b, &bw) != 0) {
            fprintf(stderr, "model: run with %s threads failed\n", t);
            rc = 1;
            break;
        }
        const double floor_tps = bw * 1e9 / abytes;
        if (json)
            printf("{\"pp\": %.2f, \"tg\": %.2f, \"threads\": %d, \"read_gbs\": %.2f, "
                   "\"tg_floor\": %.2f, \"tg_of_floor\": %.3f}\n",
                   a, b, nt, bw, floor_tps, b / floor_tps);
        else
            printf("| %d | %.1f | %.1f | %.1f | %.1f | %.0f%% |\n", nt, a, b, bw, floor_tps,
                   100 * b / floor_tps);
        fflush(stdout);
    }
    free(list);
    model_free(m);
    return rc;
}
