/* Expert load: rolling windows over cumulative counters, imbalance against a placement, routing
 * collapse warnings, load profiles and the replica chooser (coord.h, "expert load").
 *
 * The counters (the engine's per-(layer, expert) tokens, the nodes' busy seconds) only grow, so
 * a window needs no per-event bookkeeping: keep snapshots and subtract. Two rings of snapshots
 * hold them: one gets every sample (the step window), the other at most one sample per
 * window_s / 60 seconds (the time window: 61 snapshots span window_s whatever the sample rate).
 * Memory is (window_steps + 63) snapshots of n_layers * n_expert counters, bounded at creation.
 */
#include "coordinator/coord.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "wire/wire.h"

#define TIME_SLOTS 62 /* 60 intervals of window_s / 60, plus both ends, plus one spare */
#define MAX_SNAPSHOT_BYTES (256u << 20)

typedef struct {
    double t;          /* seconds, the sample's now_s */
    uint64_t *tokens;  /* (n_layers, n_expert) cumulative */
    double *busy;      /* (n_nodes) cumulative seconds */
} snap_t;

typedef struct {
    snap_t *s; /* (cap) */
    int cap, n, head; /* head: next slot written; n: valid ones, the newest at head - 1 */
} ring_t;

struct coord_load {
    coord_load_config_t cfg;
    size_t pairs;
    ring_t steps, time;
    snap_t last;        /* the newest sample */
    int n_samples;
    double t0;          /* the first sample's time */
    /* Placement for imbalance: (pairs, replicas) owners and shares, (n_nodes) capacity. */
    int *owners;
    double *share, *cap;
    int replicas;
    bool *collapsed;    /* (n_layers) state last logged */
    int *dominant;      /* (n_layers) expert with the largest share over the time window */
    double *dom_share;  /* (n_layers) its share */
};

coord_load_config_t coord_load_config_default(void)
{
    return (coord_load_config_t){.window_s = 60, .window_steps = 64, .collapse_share = 0.5,
                                 .collapse_min_tokens = 256};
}

static void snap_init(snap_t *s, const coord_load_t *ld)
{
    s->t = 0;
    s->tokens = xcalloc(ld->pairs + 1, sizeof(uint64_t));
    s->busy = xcalloc((size_t)ld->cfg.n_nodes + 1, sizeof(double));
}

static void snap_copy(snap_t *d, const snap_t *s, const coord_load_t *ld)
{
    d->t = s->t;
    memcpy(d->tokens, s->tokens, ld->pairs * sizeof(uint64_t));
    memcpy(d->busy, s->busy, (size_t)ld->cfg.n_nodes * sizeof(double));
}

static void ring_init(ring_t *r, int cap, const coord_load_t *ld)
{
    r->s = xcalloc((size_t)cap, sizeof(snap_t));
    r->cap = cap;
    for (int i = 0; i < cap; i++) snap_init(&r->s[i], ld);
}

static void ring_deinit(ring_t *r)
{
    for (int i = 0; r->s && i < r->cap; i++) free(r->s[i].tokens), free(r->s[i].busy);
    free(r->s);
}

/* The k-th newest snapshot (0 = newest); k < r->n. */
static const snap_t *ring_at(const ring_t *r, int k)
{
    return &r->s[((r->head - 1 - k) % r->cap + r->cap) % r->cap];
}

static void ring_push(ring_t *r, const snap_t *s, const coord_load_t *ld)
{
    snap_copy(&r->s[r->head], s, ld);
    r->head = (r->head + 1) % r->cap;
    if (r->n < r->cap) r->n++;
}

coord_load_t *coord_load_new(const coord_load_config_t *cfg)
{
    if (cfg->n_layers < 0 || cfg->n_expert < 0 || cfg->n_nodes < 0 || cfg->n_nodes > 65536 ||
        (uint64_t)cfg->n_layers * (uint64_t)cfg->n_expert > (1u << 24) ||
        cfg->window_steps < 1 || cfg->window_steps > 4096 || !(cfg->window_s > 0) ||
        !isfinite(cfg->window_s)) {
        LOG_ERR("expert load: %d layers x %d experts, %d nodes, windows of %g s and %d steps: "
                "out of range (steps 1..4096, seconds > 0)", cfg->n_layers, cfg->n_expert,
                cfg->n_nodes, cfg->window_s, cfg->window_steps);
        return NULL;
    }
    uint64_t snap_bytes = (uint64_t)cfg->n_layers * cfg->n_expert * 8 + (uint64_t)cfg->n_nodes * 8;
    if (snap_bytes * (uint64_t)(cfg->window_steps + 1 + TIME_SLOTS) > MAX_SNAPSHOT_BYTES) {
        LOG_ERR("expert load: %d-step windows of %llu-byte snapshots exceed %u MiB; use fewer "
                "steps", cfg->window_steps, (unsigned long long)snap_bytes,
                MAX_SNAPSHOT_BYTES >> 20);
        return NULL;
    }
    coord_load_t *ld = xcalloc(1, sizeof(*ld));
    ld->cfg = *cfg;
    ld->pairs = (size_t)cfg->n_layers * (size_t)cfg->n_expert;
    ring_init(&ld->steps, cfg->window_steps + 1, ld);
    ring_init(&ld->time, TIME_SLOTS, ld);
    snap_init(&ld->last, ld);
    ld->collapsed = xcalloc((size_t)cfg->n_layers + 1, sizeof(bool));
    ld->dominant = xcalloc((size_t)cfg->n_layers + 1, sizeof(int));
    ld->dom_share = xcalloc((size_t)cfg->n_layers + 1, sizeof(double));
    return ld;
}

void coord_load_free(coord_load_t *ld)
{
    if (!ld) return;
    ring_deinit(&ld->steps);
    ring_deinit(&ld->time);
    free(ld->last.tokens);
    free(ld->last.busy);
    free(ld->owners);
    free(ld->share);
    free(ld->cap);
    free(ld->collapsed);
    free(ld->dominant);
    free(ld->dom_share);
    free(ld);
}

int coord_load_samples(const coord_load_t *ld)
{
    return ld->n_samples;
}

/* The oldest snapshot window w starts from, or NULL when there is none to subtract. */
static const snap_t *window_start(const coord_load_t *ld, coord_load_window_t w)
{
    if (w == COORD_LOAD_RECENT_STEPS) {
        if (ld->steps.n < 2) return NULL;
        return ring_at(&ld->steps, ld->steps.n - 1);
    }
    if (w == COORD_LOAD_RECENT_S) {
        /* The newest snapshot at least window_s old, else the oldest kept. */
        if (ld->time.n < 1 || ld->n_samples < 2) return NULL;
        for (int k = 0; k < ld->time.n; k++) {
            const snap_t *s = ring_at(&ld->time, k);
            if (s->t <= ld->last.t - ld->cfg.window_s) return s;
        }
        const snap_t *s = ring_at(&ld->time, ld->time.n - 1);
        return s->t < ld->last.t ? s : NULL;
    }
    return NULL;
}

double coord_load_tokens(const coord_load_t *ld, coord_load_window_t w, uint64_t *out)
{
    if (w == COORD_LOAD_ALL) {
        memcpy(out, ld->last.tokens, ld->pairs * sizeof(uint64_t));
        return ld->n_samples ? ld->last.t - ld->t0 : 0;
    }
    const snap_t *s = window_start(ld, w);
    for (size_t i = 0; i < ld->pairs; i++) out[i] = s ? ld->last.tokens[i] - s->tokens[i] : 0;
    return s ? ld->last.t - s->t : 0;
}

double coord_load_busy(const coord_load_t *ld, coord_load_window_t w, double *out)
{
    const int N = ld->cfg.n_nodes;
    if (w == COORD_LOAD_ALL) {
        memcpy(out, ld->last.busy, (size_t)N * sizeof(double));
        return ld->n_samples ? ld->last.t - ld->t0 : 0;
    }
    const snap_t *s = window_start(ld, w);
    for (int i = 0; i < N; i++) out[i] = s ? ld->last.busy[i] - s->busy[i] : 0;
    return s ? ld->last.t - s->t : 0;
}

/* Dominant expert of every layer over the time window; logs collapse changes. */
static void check_collapse(coord_load_t *ld)
{
    const int L = ld->cfg.n_layers, E = ld->cfg.n_expert;
    uint64_t *tok = xmalloc((ld->pairs + 1) * sizeof(uint64_t));
    double secs = coord_load_tokens(ld, COORD_LOAD_RECENT_S, tok);
    for (int l = 0; l < L; l++) {
        uint64_t sum = 0;
        int top = 0;
        for (int e = 0; e < E; e++) {
            sum += tok[(size_t)l * E + e];
            if (tok[(size_t)l * E + e] > tok[(size_t)l * E + top]) top = e;
        }
        double share = sum ? (double)tok[(size_t)l * E + top] / (double)sum : 0;
        ld->dominant[l] = top;
        ld->dom_share[l] = share;
        if (sum < ld->cfg.collapse_min_tokens) continue; /* too little to tell */
        bool now = share > ld->cfg.collapse_share;
        if (now && !ld->collapsed[l])
            LOG_WARN("routing collapse in layer %d: expert %d took %.0f%% of its %llu tokens "
                     "over the last %.0f s (warning above %.0f%%); its node sets the pace of "
                     "every step", l, top, 100 * share, (unsigned long long)sum, secs,
                     100 * ld->cfg.collapse_share);
        else if (!now && ld->collapsed[l])
            LOG_INFO("layer %d routing recovered: its busiest expert %d now takes %.0f%%", l, top,
                     100 * share);
        ld->collapsed[l] = now;
    }
    free(tok);
}

void coord_load_sample(coord_load_t *ld, double now_s, const uint64_t *tokens,
                       const double *busy_s)
{
    bool restart = ld->n_samples > 0 && now_s < ld->last.t;
    for (size_t i = 0; i < ld->pairs && !restart; i++)
        restart = tokens[i] < ld->last.tokens[i];
    for (int i = 0; busy_s && i < ld->cfg.n_nodes && !restart; i++)
        restart = busy_s[i] < ld->last.busy[i];
    if (restart) {
        LOG_INFO("expert load: counters went backwards (restart); windows start over");
        ld->steps.n = ld->steps.head = ld->time.n = ld->time.head = 0;
        ld->n_samples = 0;
    }
    if (ld->n_samples == 0) ld->t0 = now_s;
    ld->last.t = now_s;
    memcpy(ld->last.tokens, tokens, ld->pairs * sizeof(uint64_t));
    for (int i = 0; i < ld->cfg.n_nodes; i++) ld->last.busy[i] = busy_s ? busy_s[i] : 0;
    ld->n_samples++;
    ring_push(&ld->steps, &ld->last, ld);
    if (ld->time.n == 0 || now_s - ring_at(&ld->time, 0)->t >= ld->cfg.window_s / 60)
        ring_push(&ld->time, &ld->last, ld);
    if (ld->cfg.collapse_share < 1) check_collapse(ld);
}

void coord_load_set_placement(coord_load_t *ld, const int *owners, const double *share,
                              int replicas, const double *node_cap)
{
    CHECK(replicas >= 1 && replicas <= 65536);
    const size_t n = ld->pairs * (size_t)replicas;
    ld->replicas = replicas;
    ld->owners = xrealloc(ld->owners, (n + 1) * sizeof(int));
    ld->share = xrealloc(ld->share, (n + 1) * sizeof(double));
    ld->cap = xrealloc(ld->cap, ((size_t)ld->cfg.n_nodes + 1) * sizeof(double));
    memcpy(ld->owners, owners, n * sizeof(int));
    for (size_t i = 0; i < n; i++)
        ld->share[i] = share ? share[i] : (i % (size_t)replicas == 0 ? 1 : 0);
    for (int i = 0; i < ld->cfg.n_nodes; i++)
        ld->cap[i] = node_cap && node_cap[i] > 0 ? node_cap[i] : 1;
}

double coord_load_imbalance(const coord_load_t *ld, coord_load_window_t w, int layer)
{
    const int E = ld->cfg.n_expert, N = ld->cfg.n_nodes, R = ld->replicas;
    if (!ld->owners || layer < 0 || layer >= ld->cfg.n_layers || N < 1) return 0;
    uint64_t *tok = xmalloc((ld->pairs + 1) * sizeof(uint64_t));
    double *t = xcalloc((size_t)N, sizeof(double));
    coord_load_tokens(ld, w, tok);
    double sum = 0, caps = 0, worst = 0;
    for (int e = 0; e < E; e++) {
        const size_t i = (size_t)layer * E + e;
        for (int q = 0; q < R; q++) {
            int o = ld->owners[i * R + q];
            if (o < 0 || o >= N) continue;
            t[o] += ld->share[i * R + q] * (double)tok[i];
            sum += ld->share[i * R + q] * (double)tok[i];
        }
    }
    for (int n = 0; n < N; n++) {
        caps += ld->cap[n];
        worst = t[n] / ld->cap[n] > worst ? t[n] / ld->cap[n] : worst;
    }
    free(tok);
    free(t);
    return sum > 0 ? worst / (sum / caps) : 0;
}

bool coord_load_collapsed(const coord_load_t *ld, int layer, int *expert, double *share)
{
    if (layer < 0 || layer >= ld->cfg.n_layers) return false;
    if (expert) *expert = ld->dominant[layer];
    if (share) *share = ld->dom_share[layer];
    return ld->collapsed[layer];
}

int coord_load_choose(const int *owners, int n, const int *inflight, const double *node_cap)
{
    int best = -1;
    double best_t = 0;
    for (int q = 0; q < n; q++) {
        int o = owners[q];
        if (o < 0) continue;
        double c = node_cap && node_cap[o] > 0 ? node_cap[o] : 1;
        double t = (double)(inflight[o] + 1) / c;
        if (best < 0 || t < best_t) best = q, best_t = t;
    }
    return best;
}

int coord_load_profile_write(const char *path, const char *model, int n_layers, int n_expert,
                             const uint64_t *tokens)
{
    json_t *rows = json_array();
    for (int l = 0; l < n_layers; l++) {
        json_t *row = json_array();
        for (int e = 0; e < n_expert; e++)
            json_array_append_new(row, json_integer((json_int_t)tokens[(size_t)l * n_expert + e]));
        json_array_append_new(rows, row);
    }
    json_t *doc = json_pack("{s:i,s:s,s:i,s:i,s:o}", "moemesh_load_profile", 1, "model",
                            model ? model : "", "n_layers", n_layers, "n_expert", n_expert,
                            "tokens", rows);
    CHECK(doc);
    /* Through path.part and a rename, so a reader never sees half a profile. */
    char tmp[4096];
    int err = 0;
    if (snprintf(tmp, sizeof(tmp), "%s.part", path) >= (int)sizeof(tmp)) err = -ENAMETOOLONG;
    else if (json_dump_file(doc, tmp, JSON_COMPACT) != 0) err = -EIO;
    else if (rename(tmp, path) != 0) err = -errno;
    if (err) {
        LOG_ERR("cannot write the load profile %s: %s", path, wire_strerror(err));
        remove(tmp);
    }
    json_decref(doc);
    return err;
}

int coord_load_profile_read(const char *path, int n_layers, int n_expert, double *out)
{
    json_error_t je;
    /* A profile of the largest model is a few MB; refuse anything far beyond before parsing. */
    FILE *f = fopen(path, "rb");
    if (!f) {
        int err = -errno;
        LOG_ERR("cannot open the load profile %s: %s", path, wire_strerror(err));
        return err;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    if (size < 0 || size > (64L << 20)) {
        LOG_ERR("load profile %s: %ld bytes, more than a profile can be (64 MiB)", path, size);
        return -EINVAL;
    }
    json_t *doc = json_load_file(path, 0, &je);
    if (!doc) {
        LOG_ERR("load profile %s: not JSON (line %d: %s)", path, je.line, je.text);
        return -EINVAL;
    }
    int err = 0;
    json_t *rows = json_object_get(doc, "tokens");
    json_int_t L = json_integer_value(json_object_get(doc, "n_layers"));
    json_int_t E = json_integer_value(json_object_get(doc, "n_expert"));
    if (json_integer_value(json_object_get(doc, "moemesh_load_profile")) != 1 ||
        !json_is_array(rows)) {
        LOG_ERR("load profile %s: not a moemesh load profile (version 1 with a tokens array)",
                path);
        err = -EINVAL;
    } else if (L != n_layers || E != n_expert || json_array_size(rows) != (size_t)n_layers) {
        LOG_ERR("load profile %s is for %lld layers x %lld experts, the model has %d x %d", path,
                (long long)L, (long long)E, n_layers, n_expert);
        err = -EINVAL;
    }
    for (int l = 0; l < n_layers && !err; l++) {
        json_t *row = json_array_get(rows, (size_t)l);
        if (!json_is_array(row) || json_array_size(row) != (size_t)n_expert) {
            LOG_ERR("load profile %s: layer %d does not have %d counts", path, l, n_expert);
            err = -EINVAL;
            break;
        }
        for (int e = 0; e < n_expert; e++) {
            json_t *v = json_array_get(row, (size_t)e);
            double x = json_number_value(v);
            if (!json_is_number(v) || !(x >= 0) || !isfinite(x)) {
                LOG_ERR("load profile %s: layer %d expert %d is not a non-negative count", path,
                        l, e);
                err = -EINVAL;
                break;
            }
            out[(size_t)l * n_expert + e] = x;
        }
    }
    json_decref(doc);
    return err;
}

int coord_load_record(const coord_engine_t *e, const model_t *m, const char *path)
{
    const int L = m->hp.n_layer, E = m->hp.n_expert;
    uint64_t *tok = xcalloc((size_t)L * (E > 0 ? E : 0) + 1, sizeof(uint64_t));
    coord_engine_expert_tokens(e, tok, L * E);
    char fp[64];
    model_fingerprint(m->gguf, fp, sizeof(fp));
    int err = coord_load_profile_write(path, fp, L, E, tok);
    if (!err) LOG_INFO("load profile written to %s", path);
    free(tok);
    return err;
}
