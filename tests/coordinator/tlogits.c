/* See tlogits.h. */
#include "tlogits.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tlogits_run(const model_t *m, coord_experts_t *ex, kern_pool_t *pool, tlogits_opts_t o,
                 const int32_t *ids, int n, int n_prompt, float *logits, int32_t *greedy)
{
    const int V = m->hp.n_vocab;
    coord_engine_params_t p = coord_engine_params_default();
    p.n_ctx = n + 8;
    p.n_batch = n;
    p.kv_f16 = o.kv_f16;
    p.n_micro = o.n_micro;
    coord_engine_t *e = coord_engine_new(m, ex, pool, &p);
    cr_assert_not_null(e);
    int32_t *pos = malloc(sizeof(int32_t) * n), *slot = calloc((size_t)n, sizeof(int32_t));
    bool *want = malloc(sizeof(bool) * n);
    for (int i = 0; i < n; i++) pos[i] = i, want[i] = true;
    coord_batch_t b = {.n = n, .tok = ids, .pos = pos, .slot = slot, .want = want};
    cr_assert_eq(coord_engine_decode(e, &b, logits), 0);
    coord_engine_clear_slot(e, 0);
    if (o.steps) {
        for (int i = 0; i < n; i++) {
            b = (coord_batch_t){.n = 1, .tok = ids + i, .pos = pos + i, .slot = slot};
            cr_assert_eq(coord_engine_decode(e, &b, o.steps + (size_t)i * V), 0);
        }
        coord_engine_clear_slot(e, 0);
    }
    float *l = malloc(sizeof(float) * V);
    b = (coord_batch_t){.n = n_prompt, .tok = ids, .pos = pos, .slot = slot};
    cr_assert_eq(coord_engine_decode(e, &b, l), 0);
    for (int i = 0; i < n - n_prompt; i++) {
        int32_t next = 0;
        for (int v = 1; v < V; v++)
            if (l[v] > l[next]) next = v;
        greedy[i] = next;
        int32_t ps = n_prompt + i;
        b = (coord_batch_t){.n = 1, .tok = &next, .pos = &ps, .slot = slot};
        cr_assert_eq(coord_engine_decode(e, &b, l), 0);
    }
    free(l), free(pos), free(slot), free(want);
    coord_engine_free(e);
}

double tlogits_compare(const model_t *m, coord_experts_t *a, coord_experts_t *b,
                       kern_pool_t *pool, tlogits_opts_t o, const int32_t *ids, int n,
                       int n_prompt, double tol, int *over, int32_t *ga, int32_t *gb)
{
    const size_t nv = (size_t)n * m->hp.n_vocab;
    float *la = malloc(sizeof(float) * nv), *lb = malloc(sizeof(float) * nv);
    double *ref = malloc(sizeof(double) * nv);
    tlogits_run(m, a, pool, o, ids, n, n_prompt, la, ga);
    tlogits_run(m, b, pool, o, ids, n, n_prompt, lb, gb);
    for (size_t i = 0; i < nv; i++) ref[i] = la[i];
    double worst = tlogits_err(ref, lb, n, m->hp.n_vocab, tol, over);
    free(la), free(lb), free(ref);
    return worst;
}

coord_cluster_t *tlogits_cluster(const model_t *m, const char *const *eps, int n)
{
    coord_cluster_config_t cc = coord_cluster_config_default();
    cc.n_nodes = n;
    cc.endpoints = eps;
    cc.wire_type = WIRE_DTYPE_F32;
    cc.progress = false;
    coord_cluster_t *c = coord_cluster_new(&cc, m);
    cr_assert_not_null(c, "cluster did not start");
    return c;
}

double tlogits_err(const double *ref, const float *out, int n, int V, double tol, int *over)
{
    double worst = 0;
    if (over) *over = 0;
    for (int p = 0; p < n; p++) {
        const double *r = ref + (size_t)p * V;
        double mean = 0, var = 0, maxd = 0;
        for (int v = 0; v < V; v++) mean += r[v];
        mean /= V;
        for (int v = 0; v < V; v++) var += (r[v] - mean) * (r[v] - mean);
        for (int v = 0; v < V; v++) maxd = fmax(maxd, fabs(out[(size_t)p * V + v] - r[v]));
        double e = maxd / sqrt(var / V);
        if (over && e > tol) (*over)++;
        worst = fmax(worst, e);
    }
    return worst;
}

void tlogits_ids(int32_t *ids, int n, uint64_t seed, int mod)
{
    uint64_t s = seed;
    for (int i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((s >> 33) % (uint64_t)mod);
    }
}

int tlogits_golden_ids(const char *name, int32_t *ids, int cap, int *n_prompt)
{
    char path[512];
    snprintf(path, sizeof(path), "../shared/golden/%s.golden", name);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "cannot open %s", path);
    char *line = malloc(1 << 20);
    int n = 0;
    *n_prompt = 0;
    while (fgets(line, 1 << 20, f)) {
        bool prompt = !strncmp(line, "prompt_ids ", 11), greedy = !strncmp(line, "greedy_ids ", 11);
        if (!prompt && !greedy) continue;
        char *end;
        long c = strtol(line + 11, &end, 10);
        for (long i = 0; i < c && n < cap; i++) ids[n++] = (int32_t)strtol(end, &end, 10);
        if (prompt) *n_prompt = n;
    }
    free(line);
    fclose(f);
    cr_assert(n > *n_prompt && *n_prompt > 0, "%s: no ids", path);
    return n;
}
