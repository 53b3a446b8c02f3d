/* Golden tests: every model in ../shared/golden (or $MOEMESH_GOLDEN) against llama.cpp's logits,
 * by the rule of that folder's README section 3: teacher-forced logits within T standard
 * deviations at every position (a few outlier positions allowed for rounded weight types), the
 * reference argmax kept wherever its margin is clear, and for f32/f16 files the greedy
 * continuation reproduced exactly by our own one-token-at-a-time decoding. The directory is
 * listed at run time, so models added later are tested too.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/coord.h"
#include "wire/wire.h"

typedef struct {
    int n_vocab, n_prompt, n_greedy;
    int32_t *ids;   /* (n_prompt + n_greedy) */
    float *logits;  /* (n_prompt + n_greedy, n_vocab) */
} golden_t;

static const char *golden_dir(void)
{
    const char *d = getenv("MOEMESH_GOLDEN");
    return d ? d : "../shared/golden";
}

static int read_ids(char *line, const char *tag, int32_t *dst, int cap)
{
    size_t tl = strlen(tag);
    if (strncmp(line, tag, tl) != 0) return -1;
    char *p = line + tl, *end;
    long n = strtol(p, &end, 10);
    if (n < 0 || n > cap) return -1;
    for (long i = 0; i < n; i++) dst[i] = (int32_t)strtol(end, &end, 10);
    return (int)n;
}

static void golden_load(const char *path, golden_t *g)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "cannot open %s", path);
    size_t cap = 1 << 20;
    char *line = malloc(cap);
    memset(g, 0, sizeof(*g));
    int32_t tmp[4096];
    int pos = 0;
    while (fgets(line, (int)cap, f)) {
        if (strncmp(line, "n_vocab ", 8) == 0) g->n_vocab = atoi(line + 8);
        int n;
        if ((n = read_ids(line, "prompt_ids ", tmp, 4096)) >= 0) {
            g->n_prompt = n;
            g->ids = malloc(sizeof(int32_t) * 8192);
            memcpy(g->ids, tmp, sizeof(int32_t) * n);
        }
        if ((n = read_ids(line, "greedy_ids ", tmp, 4096)) >= 0) {
            g->n_greedy = n;
            memcpy(g->ids + g->n_prompt, tmp, sizeof(int32_t) * n);
            g->logits = malloc(sizeof(float) * (size_t)(g->n_prompt + n) * g->n_vocab);
        }
        if (strncmp(line, "logits ", 7) == 0) {
            char *end;
            int p = (int)strtol(line + 7, &end, 10);
            cr_assert_eq(p, pos, "%s: logits lines out of order", path);
            for (int v = 0; v < g->n_vocab; v++)
                g->logits[(size_t)p * g->n_vocab + v] = strtof(end, &end);
            pos++;
        }
    }
    free(line);
    fclose(f);
    cr_assert(g->n_vocab > 0 && g->n_prompt > 0 && pos == g->n_prompt + g->n_greedy,
              "%s: incomplete golden file", path);
}

/* Tolerance T and allowed outliers by general.file_type (README section 3). */
static void tolerance(const model_t *m, double *tol, int *outliers)
{
    int64_t ft = 0;
    model_gguf_get_int(m->gguf, "general.file_type", &ft);
    switch (ft) {
    case 0: *tol = 5e-4; *outliers = 0; break;
    case 1: *tol = 0.02; *outliers = 2; break;
    case 32: *tol = 0.1; *outliers = 2; break;
    case 7: *tol = 0.2; *outliers = 2; break;
    default: *tol = 0.25; *outliers = 2; break;
    }
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

typedef struct {
    char name[128];
} case_t;

ParameterizedTestParameters(golden, matches_llama_cpp)
{
    static case_t none[1];
    DIR *d = opendir(golden_dir());
    if (!d) return cr_make_param_array(case_t, none, 0);
    case_t *cases = cr_malloc(sizeof(case_t) * 256);
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < 256) {
        size_t l = strlen(de->d_name);
        if (l > 7 && l < 120 && strcmp(de->d_name + l - 7, ".golden") == 0) {
            memset(&cases[n], 0, sizeof(case_t));
            memcpy(cases[n].name, de->d_name, l - 7);
            n++;
        }
    }
    closedir(d);
    return cr_make_param_array(case_t, cases, n);
}

ParameterizedTest(case_t *c, golden, matches_llama_cpp, .timeout = 600)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s.gguf", golden_dir(), c->name);
    model_t *m = NULL;
    int err = model_load(path, &m);
    cr_assert_eq(err, 0, "%s: model_load failed: %s", c->name, model_strerror(err));
    snprintf(path, sizeof(path), "%s/%s.golden", golden_dir(), c->name);
    golden_t g;
    golden_load(path, &g);
    cr_assert_eq(g.n_vocab, m->hp.n_vocab);
    const int N = g.n_prompt + g.n_greedy, V = g.n_vocab;

    kern_pool_t *pool = kern_pool_new(2);
    coord_experts_t *ex = m->hp.n_expert ? coord_experts_local_new(m, pool, N) : NULL;
    coord_engine_params_t p = coord_engine_params_default();
    p.n_ctx = N + 8;
    p.n_batch = N;
    coord_engine_t *e = coord_engine_new(m, ex, pool, &p);
    cr_assert_not_null(e);

    /* Teacher forcing: the whole sequence as one batch, logits everywhere. */
    int32_t *pos = malloc(sizeof(int32_t) * N), *slot = calloc(N, sizeof(int32_t));
    bool *want = malloc(N);
    for (int i = 0; i < N; i++) pos[i] = i, want[i] = true;
    float *out = malloc(sizeof(float) * (size_t)N * V);
    coord_batch_t b = {.n = N, .tok = g.ids, .pos = pos, .slot = slot, .want = want};
    cr_assert_eq(coord_engine_decode(e, &b, out), 0);

    double tol;
    int allowed;
    tolerance(m, &tol, &allowed);
    int outliers = 0;
    double worst = 0;
    for (int p_ = 0; p_ < N; p_++) {
        const float *ref = g.logits + (size_t)p_ * V, *o = out + (size_t)p_ * V;
        double mean = 0, var = 0, maxd = 0;
        for (int v = 0; v < V; v++) mean += ref[v];
        mean /= V;
        for (int v = 0; v < V; v++) var += (ref[v] - mean) * (ref[v] - mean);
        double sd = sqrt(var / V);
        for (int v = 0; v < V; v++) maxd = fmax(maxd, fabs((double)o[v] - ref[v]));
        double errp = maxd / sd;
        if (errp > tol) {
            outliers++;
            continue;
        }
        worst = fmax(worst, errp);
        int a = argmax(ref, V);
        float second = -INFINITY;
        for (int v = 0; v < V; v++)
            if (v != a && ref[v] > second) second = ref[v];
        if (ref[a] - second > 2 * tol * sd)
            cr_expect_eq(argmax(o, V), a, "%s: top-1 differs at position %d", c->name, p_);
    }
    cr_log_info("%s: worst err %.3g sd (tol %.3g), %d outlier positions", c->name, worst, tol,
                outliers);
    cr_expect_leq(outliers, allowed, "%s: %d positions beyond %.3g sd", c->name, outliers, tol);

    /* Greedy decoding from the prompt, one token per call: exact for f32 and f16 files. */
    if (tol <= 0.02) {
        coord_engine_clear_slot(e, 0);
        b = (coord_batch_t){.n = g.n_prompt, .tok = g.ids, .pos = pos, .slot = slot};
        cr_assert_eq(coord_engine_decode(e, &b, out), 0);
        for (int i = 0; i < g.n_greedy; i++) {
            int32_t next = argmax(out, V);
            cr_assert_eq(next, g.ids[g.n_prompt + i], "%s: greedy token %d is %d, expected %d",
                         c->name, i, next, g.ids[g.n_prompt + i]);
            int32_t ps = g.n_prompt + i;
            b = (coord_batch_t){.n = 1, .tok = &next, .pos = &ps, .slot = slot};
            cr_assert_eq(coord_engine_decode(e, &b, out), 0);
        }
    }
    free(out), free(pos), free(slot), free(want), free(g.ids), free(g.logits);
    coord_engine_free(e);
    coord_experts_free(ex);
    kern_pool_free(pool);
    model_free(m);
}
