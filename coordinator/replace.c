/* Re-placement at run time: moving routed experts between expert nodes while they serve.
 *
 * A move starts from a plan (plan(): on demand through coord_replace_request, e.g. the HTTP
 * API's POST /admin/rebalance, or every rebalance_every_s when the rolling window's imbalance
 * exceeds rebalance_above). The plan is the load-aware placement of cluster.c's place()
 * (model_plan_new_load) for the tokens routed over the window (coord_load_t, sampled from the
 * counts remote.c reports), the nodes' capacities and memory; a plain cluster with replicas
 * keeps every expert on `replicas` nodes. It is taken only when it lowers the imbalance.
 *
 * The move is make-before-break, one wave of layers at a time (coord__replace_diff: a wave is
 * as many layers as fit, for every node, beside what it already holds):
 *   1. GROW     every node that gains pairs in the wave gets an ASSIGN of what it holds plus
 *               them. A node keeps the pairs it holds across an ASSIGN (expert-node/shard.c), so
 *               it serves them throughout; the new ones wait for their shards.
 *   2. STREAM   SHARD_CHUNKs of the new pairs, at most rebalance_step_kb per call of
 *               coord__replace_step, which runs only between forward passes (nothing in
 *               flight), so forward passes keep flowing in between. Every new pair is sent,
 *               even to a node that could load it from its own -m model or cache (WELCOME's
 *               list is not asked again): correct, only wasteful for such nodes.
 *   3. READY    every such node's READY (with the new count) says each new pair is complete
 *               and verified on it.
 *   4. SWAP     the owners table takes the wave's layers of the new plan, under st_mu. Nothing
 *               is in flight at that moment, so no request was routed by the old table and
 *               none can be routed to a pair that is not complete where it goes.
 *   5. RELEASE  nodes that lose pairs get an ASSIGN of their new set (they drop the rest) and
 *               answer READY. Then the next wave, or done.
 * A node failure (its error count moves), an ERROR answer, or no progress for timeout_ms
 * before a wave's swap aborts the move: that wave's layers (and later ones) keep their owners
 * and the nodes that grew get an ASSIGN of their old set back. A swapped wave stays swapped (a
 * node that died afterwards gets its new set when it rejoins, cluster.c).
 *
 * Threads: everything but coord_replace_request/stats/owners runs on the cluster's thread.
 * mu guards the state word, the load window, the pending plan and the stats; the owners table
 * changes only in SWAP, while the state is not idle, so a request (which plans only when idle,
 * under mu) reads a stable table.
 */
#include "coordinator/coord-int.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define SAMPLE_S 0.2         /* the load window takes a sample at most this often */
#define GAIN 0.99            /* a plan must bring the imbalance below this share of today's */
#define CHUNK_MAX (4u << 20) /* bytes of one SHARD_CHUNK, as at start-up */
#define IDLE_STEPS 32        /* an idle call streams this many steps' worth */
#define ASSIGN_MS 100        /* the longest an ASSIGN of a move may wait to be queued */

typedef enum { ST_IDLE, ST_PENDING, ST_STREAM, ST_READY, ST_RELEASE, ST_CLEANUP } state_t;

struct coord__replace {
    coord_cluster_t *c;
    pthread_mutex_t mu;
    state_t state;             /* under mu */
    coord_load_t *load;        /* under mu: windows over count */
    coord_replace_stats_t st;  /* under mu */
    _Atomic uint64_t *count;   /* (pairs) tokens routed to each pair: written by the cluster's
                                  thread, sampled by any (relaxed: each value exact) */
    uint64_t *snap;            /* (pairs) under mu: the counts of the sample being taken */
    double *base_cap;          /* (N) capacities the plans weigh, fixed at creation */
    uint64_t *pair_bytes;      /* (pairs) bytes of one copy of each pair (the plan's) */
    double sampled;            /* under mu: wire_now() of the last sample */
    double checked;            /* wire_now() of the last periodic check */
    /* The move (pending or running). */
    int *next;                 /* (pairs * R) the target owners table */
    double *cap;               /* (N) capacities the target was planned for */
    coord__replace_diff_t diff;
    double before, after;
    int wave;
    int64_t *want;             /* (N) n_experts of the READY awaited from each node, -1: none */
    bool *grown;               /* (N) got a GROW ASSIGN in this wave */
    int cn, ck;                /* stream cursor: node, slice kind */
    size_t cp;                 /* ... pair */
    uint64_t coff;             /* ... offset in the slice */
    uint32_t ccrc;             /* CRC-32C of the cursor's slice */
    double progress;           /* wire_now() of the last chunk sent or READY taken */
    double t0;                 /* wire_now() when the move began */
    uint64_t errors0;          /* the nodes' error counts summed when the move began */
    bool failed;               /* a node answered the move with ERROR */
    uint64_t moved;            /* bytes streamed by this move */
};

/* ---- the diff: which pairs go where, in waves that fit ---- */

static bool in(const int *own, int R, size_t p, int n)
{
    for (int r = 0; r < R; r++)
        if (own[p * (size_t)R + r] == n) return true;
    return false;
}

void coord__replace_diff_deinit(coord__replace_diff_t *d)
{
    free(d->wave);
    free(d->bytes_in);
    memset(d, 0, sizeof(*d));
}

int coord__replace_diff(int L, int E, int R, int N, const int *old, const int *next,
                        const uint64_t *pair_bytes, const uint64_t *mem,
                        coord__replace_diff_t *d, char *why, size_t cap)
{
    memset(d, 0, sizeof(*d));
    d->wave = xmalloc(sizeof(int) * ((size_t)L + 1));
    d->bytes_in = xcalloc((size_t)N + 1, sizeof(uint64_t));
    uint64_t *held = xcalloc((size_t)N + 1, sizeof(uint64_t));
    uint64_t *grow = xcalloc((size_t)N + 1, sizeof(uint64_t));   /* adds of the open wave */
    uint64_t *shrink = xcalloc((size_t)N + 1, sizeof(uint64_t)); /* its releases */
    uint64_t *add = xcalloc((size_t)N + 1, sizeof(uint64_t));    /* one layer's adds */
    uint64_t *drop = xcalloc((size_t)N + 1, sizeof(uint64_t));
    const size_t pairs = (size_t)L * E;
    for (size_t p = 0; p < pairs; p++)
        for (int r = 0; r < R; r++)
            if (old[p * R + r] >= 0 && old[p * R + r] < N) held[old[p * R + r]] += pair_bytes[p];
    int err = 0, w = 0;
    bool open = false;
    for (int l = 0; l < L && !err; l++) {
        bool changed = false;
        memset(add, 0, sizeof(uint64_t) * N);
        memset(drop, 0, sizeof(uint64_t) * N);
        for (size_t p = (size_t)l * E; p < (size_t)(l + 1) * E; p++) {
            changed |= memcmp(old + p * R, next + p * R, sizeof(int) * R) != 0;
            for (int n = 0; n < N; n++) {
                bool a = in(old, R, p, n), b = in(next, R, p, n);
                if (b && !a) add[n] += pair_bytes[p], d->adds++;
                if (a && !b) drop[n] += pair_bytes[p], d->drops++;
            }
        }
        d->wave[l] = -1;
        if (!changed) continue;
        for (int pass = 0; pass < 2; pass++) {
            int over = -1;
            for (int n = 0; n < N && over < 0; n++)
                if (held[n] + grow[n] + add[n] > mem[n]) over = n;
            if (over < 0) break;
            if (pass == 1 || !open) {
                snprintf(why, cap, "layer %d does not fit: node %d would hold %llu bytes "
                         "during the move, its memory is %llu", l, over,
                         (unsigned long long)(held[over] + grow[over] + add[over]),
                         (unsigned long long)mem[over]);
                err = -ENOSPC;
                break;
            }
            /* Close the open wave: its old pairs are released before the next one grows. */
            for (int n = 0; n < N; n++) held[n] = held[n] + grow[n] - shrink[n];
            memset(grow, 0, sizeof(uint64_t) * N);
            memset(shrink, 0, sizeof(uint64_t) * N);
            w++;
            open = false;
        }
        if (err) break;
        d->wave[l] = w;
        open = true;
        for (int n = 0; n < N; n++) {
            grow[n] += add[n], shrink[n] += drop[n];
            d->bytes_in[n] += add[n];
            d->bytes += add[n];
        }
    }
    d->n_waves = open ? w + 1 : w;
    free(held), free(grow), free(shrink), free(add), free(drop);
    if (err) coord__replace_diff_deinit(d);
    return err;
}

/* ---- planning (under mu) ---- */

/* Takes a sample of the counts into the load window. Under mu, which also orders the samples'
 * times (a window's clock must not go backwards). */
static void take_sample(coord__replace_t *r)
{
    const size_t pairs = (size_t)r->c->n_layers * r->c->n_expert;
    for (size_t p = 0; p < pairs; p++)
        r->snap[p] = atomic_load_explicit(&r->count[p], memory_order_relaxed);
    r->sampled = wire_now();
    coord_load_sample(r->load, r->sampled, r->snap, NULL);
}

static void sample(coord__replace_t *r, double now)
{
    pthread_mutex_lock(&r->mu);
    if (now - r->sampled >= SAMPLE_S) take_sample(r);
    pthread_mutex_unlock(&r->mu);
}

/* The step time of placement p over every layer against a perfect split: the sum over layers
 * of the busiest node's time (load / capacity) over the sum of sum(load) / sum(capacity). What
 * one forward pass waits for, relative to the best any placement could do; 0 without load. */
static double imbalance(const model_plan_t *p, const double *load, const double *cap)
{
    double worst = 0, ideal = 0, caps = 0;
    for (int n = 0; n < p->n_nodes; n++) caps += cap[n] > 0 ? cap[n] : 1;
    for (int l = 0; l < p->n_layers; l++) {
        double sum = 0, w = 0;
        for (int e = 0; e < p->n_expert; e++)
            if (p->copies[(size_t)l * p->n_expert + e]) sum += load[(size_t)l * p->n_expert + e];
        if (!(sum > 0)) continue;
        for (int n = 0; n < p->n_nodes; n++) {
            double t = model_plan_node_time(p, l, n, load, cap);
            if (t > w) w = t;
        }
        worst += w;
        ideal += sum / caps;
    }
    return ideal > 0 ? worst / ideal : 0;
}

/* A plan holding the cluster's table (owners as they are), shares split as the queue-depth
 * chooser would split load. */
static model_plan_t *plan_of_table(const coord_cluster_t *c, const int *own, const double *load,
                                   const double *cap)
{
    const int R = c->replicas;
    const size_t pairs = (size_t)c->n_layers * c->n_expert;
    model_plan_t *p = xcalloc(1, sizeof(*p));
    p->n_nodes = c->n_nodes, p->n_layers = c->n_layers, p->n_expert = c->n_expert;
    p->replicas = R;
    p->owner = xmalloc(sizeof(int) * (pairs + 1));
    p->owners = xmalloc(sizeof(int) * (pairs * R + 1));
    p->expert_bytes = xcalloc(pairs + 1, sizeof(uint64_t));
    p->node_bytes = xcalloc((size_t)c->n_nodes, sizeof(uint64_t));
    p->node_experts = xcalloc((size_t)c->n_nodes, sizeof(int));
    p->copies = xcalloc(pairs + 1, sizeof(int));
    p->share = xcalloc(pairs * R + 1, sizeof(double));
    memcpy(p->owners, own, sizeof(int) * pairs * R);
    for (size_t i = 0; i < pairs; i++) {
        p->owner[i] = own[i * R];
        while (p->copies[i] < R && own[i * R + p->copies[i]] >= 0) p->copies[i]++;
        for (int r = 0; r < p->copies[i]; r++) p->share[i * R + r] = 1.0 / p->copies[i];
    }
    if (R > 1) model_plan_split(p, load, cap);
    return p;
}

/* A plain cluster promised `replicas` copies of every expert (failover): the load-aware plan
 * gives cold experts one, so the missing copies go, memory allowing, to the nodes with the
 * most room that do not hold the pair. */
static void fill_copies(model_plan_t *p, const uint64_t *mem)
{
    const int R = p->replicas, E = p->n_expert;
    for (int l = 0; l < p->n_layers; l++)
        for (int e = 0; e < E; e++) {
            const size_t i = (size_t)l * E + e;
            while (p->copies[i] > 0 && p->copies[i] < R) {
                int best = -1;
                for (int n = 0; n < p->n_nodes; n++) {
                    bool has = false;
                    for (int r = 0; r < p->copies[i]; r++) has |= p->owners[i * R + r] == n;
                    if (has || p->node_bytes[n] + p->expert_bytes[i] > mem[n]) continue;
                    if (best < 0 || mem[n] - p->node_bytes[n] > mem[best] - p->node_bytes[best])
                        best = n;
                }
                if (best < 0) break;
                p->owners[i * R + p->copies[i]++] = best;
                p->node_bytes[best] += p->expert_bytes[i];
                p->node_experts[best]++;
            }
        }
}

static void reason(coord_replace_plan_t *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void reason(coord_replace_plan_t *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->reason, sizeof(out->reason), fmt, ap);
    va_end(ap);
}

/* Plans a move from the load of the last window; on success with a better placement (or any
 * other, with force) the move is pending (state ST_PENDING, r->next/cap/diff set). Under mu. 0 (out says whether a move
 * starts and why not), or -EBUSY while a move is pending or running. */
static int plan(coord__replace_t *r, bool force, coord_replace_plan_t *out)
{
    coord_cluster_t *c = r->c;
    const int N = c->n_nodes, R = c->replicas, E = c->n_expert;
    const size_t pairs = (size_t)c->n_layers * E;
    memset(out, 0, sizeof(*out));
    if (r->state != ST_IDLE) {
        reason(out, "a re-placement is already running");
        return -EBUSY;
    }
    for (int i = 0; i < N; i++)
        if (coord_cluster_node_down(c, i)) {
            reason(out, "expert node %d (%s) is down", i, c->nodes[i].endpoint);
            return 0;
        }
    take_sample(r); /* up to now */
    uint64_t *tok = xmalloc(sizeof(uint64_t) * (pairs + 1));
    double *load = xmalloc(sizeof(double) * (pairs + 1));
    uint64_t *mem = xmalloc(sizeof(uint64_t) * N);
    double secs = coord_load_tokens(r->load, COORD_LOAD_RECENT_S, tok);
    double sum = 0;
    for (size_t p = 0; p < pairs; p++) sum += load[p] = (double)tok[p];
    free(tok);
    for (int i = 0; i < N; i++) mem[i] = c->nodes[i].mem_bytes ? c->nodes[i].mem_bytes : UINT64_MAX;
    model_plan_t *now = NULL, *p = NULL;
    int *next = NULL, err = 0;
    if (!(sum > 0)) {
        reason(out, "no routed tokens in the load window yet");
        goto out;
    }
    now = plan_of_table(c, c->owners, load, r->base_cap);
    out->before = imbalance(now, load, r->base_cap);
    if ((err = model_plan_new_load(c->m->gguf, N, mem, r->base_cap, load, R, 0, &p)) != 0) {
        reason(out, "no placement fits: %s", wire_strerror(err));
        err = 0;
        goto out;
    }
    const bool balanced = c->cfg.balance || c->cfg.load_profile || c->cfg.node_cap;
    if (!balanced && R > 1) {
        fill_copies(p, mem);
        model_plan_split(p, load, r->base_cap);
    }
    out->after = imbalance(p, load, r->base_cap);
    next = xmalloc(sizeof(int) * (pairs * R + 1));
    for (size_t i = 0; i < pairs * R; i++) next[i] = -1;
    for (int l = 0; l < c->n_layers && l < p->n_layers && p->n_expert == E; l++)
        for (int e = 0; c->m->layers[l].gate_exps && e < E; e++) {
            const size_t i = (size_t)l * E + e;
            for (int q = 0; q < p->copies[i]; q++) next[i * R + q] = p->owners[i * R + q];
            r->pair_bytes[i] = p->expert_bytes[i];
        }
    for (size_t i = 0; i < pairs; i++)
        if ((c->owners[i * R] >= 0) != (next[i * R] >= 0)) {
            reason(out, "the plan does not cover layer %d expert %d", (int)(i / E), (int)(i % E));
            goto out;
        }
    coord__replace_diff_t d;
    char why[sizeof(out->reason)];
    if (coord__replace_diff(c->n_layers, E, R, N, c->owners, next, r->pair_bytes, mem, &d, why,
                            sizeof(why)) != 0) {
        reason(out, "%s", why);
        goto out;
    }
    out->bytes = d.bytes, out->adds = d.adds, out->drops = d.drops, out->waves = d.n_waves;
    secs = secs > 0 ? secs : 0;
    if (d.n_waves == 0) {
        reason(out, "the placement already fits the load of the last %.0f s", secs);
    } else if (!force && !(out->after < out->before * GAIN)) {
        reason(out, "no better placement for the load of the last %.0f s (imbalance %.3f, "
               "best found %.3f)", secs, out->before, out->after);
    } else {
        out->started = true;
        reason(out, "moving %d pair copies, %.2f MiB, in %d wave%s", d.adds, d.bytes / 1048576.0,
               d.n_waves, d.n_waves == 1 ? "" : "s");
        r->state = ST_PENDING;
        free(r->next);
        r->next = next, next = NULL;
        memcpy(r->cap, r->base_cap, sizeof(double) * N);
        coord__replace_diff_deinit(&r->diff);
        r->diff = d;
        r->before = out->before, r->after = out->after;
        r->st.last_before = out->before, r->st.last_after = out->after;
        r->st.running = true;
    }
    if (!out->started) coord__replace_diff_deinit(&d);
out:
    model_plan_free(now);
    model_plan_free(p);
    free(next), free(load), free(mem);
    return err;
}

/* ---- the move (cluster's thread) ---- */

/* Node i's set in this wave: what the table gives it, plus (grow) the wave's new pairs. */
static bool member(const coord__replace_t *r, size_t p, int i, bool grow)
{
    const coord_cluster_t *c = r->c;
    if (in(c->owners, c->replicas, p, i)) return true;
    return grow && r->diff.wave[p / c->n_expert] == r->wave && in(r->next, c->replicas, p, i);
}

/* Sends node i an ASSIGN of its set (member) and awaits its READY. 0 or an error (logged). */
static int send_set(coord__replace_t *r, int i, bool grow)
{
    coord_cluster_t *c = r->c;
    const size_t pairs = (size_t)c->n_layers * c->n_expert;
    uint32_t *ls = xmalloc(sizeof(uint32_t) * (pairs + 1));
    uint32_t *es = xmalloc(sizeof(uint32_t) * (pairs + 1));
    uint32_t k = 0;
    uint64_t bytes = 0;
    for (size_t p = 0; p < pairs; p++)
        if (member(r, p, i, grow)) {
            ls[k] = (uint32_t)(p / c->n_expert), es[k++] = (uint32_t)(p % c->n_expert);
            bytes += r->pair_bytes[p];
        }
    /* Serving waits while this blocks: a queue that stays full this long fails the move. */
    int err = coord__assign_send(c, i, ls, es, k, bytes, ASSIGN_MS);
    free(ls);
    free(es);
    r->want[i] = err ? -1 : (int64_t)k;
    return err;
}

static uint64_t errors_now(coord_cluster_t *c)
{
    uint64_t sum = 0;
    pthread_mutex_lock(&c->st_mu);
    for (int i = 0; i < c->n_nodes; i++) sum += c->nodes[i].st.errors;
    pthread_mutex_unlock(&c->st_mu);
    return sum;
}

static void set_state(coord__replace_t *r, state_t s)
{
    pthread_mutex_lock(&r->mu);
    r->state = s;
    pthread_mutex_unlock(&r->mu);
}

static bool is_add(const coord__replace_t *r, size_t p, int i)
{
    const coord_cluster_t *c = r->c;
    return r->diff.wave[p / c->n_expert] == r->wave && in(r->next, c->replicas, p, i) &&
           !in(c->owners, c->replicas, p, i);
}

/* Begins wave r->wave (the first with layers from there on): GROW. false when no wave is
 * left. A failed ASSIGN leaves r->failed set. */
static bool grow(coord__replace_t *r)
{
    coord_cluster_t *c = r->c;
    for (;; r->wave++) {
        if (r->wave >= r->diff.n_waves) return false;
        bool any = false;
        for (int l = 0; l < c->n_layers; l++) any |= r->diff.wave[l] == r->wave;
        if (any) break;
    }
    const size_t pairs = (size_t)c->n_layers * c->n_expert;
    for (int i = 0; i < c->n_nodes && !r->failed; i++) {
        r->grown[i] = false;
        r->want[i] = -1;
        bool gains = false;
        for (size_t p = 0; p < pairs && !gains; p++) gains = is_add(r, p, i);
        if (!gains) continue;
        r->grown[i] = true;
        if (coord_cluster_node_down(c, i) || send_set(r, i, true) != 0) r->failed = true;
    }
    r->cn = 0, r->cp = 0, r->ck = 0, r->coff = 0;
    r->progress = wire_now();
    set_state(r, ST_STREAM);
    return true;
}

static const model_tensor_t *slice_tensor(const model_layer_t *ly, int k)
{
    switch (k) {
    case WIRE_SHARD_GATE: return ly->gate_exps;
    case WIRE_SHARD_UP: return ly->up_exps;
    case WIRE_SHARD_DOWN: return ly->down_exps;
    case WIRE_SHARD_GATE_BIAS: return ly->gate_exps_b;
    case WIRE_SHARD_UP_BIAS: return ly->up_exps_b;
    default: return ly->down_exps_b;
    }
}

/* Frames of shard data point into the model's mapping, which outlives the context. */
static void no_free(void *data, void *hint)
{
    (void)data, (void)hint;
}

/* Streams the wave's new pairs from the cursor on, at most budget bytes. 1 when every chunk
 * is out, 0 to go on later (budget spent, or the node's queue is full), or an error (logged). */
static int stream(coord__replace_t *r, uint64_t budget)
{
    coord_cluster_t *c = r->c;
    const size_t pairs = (size_t)c->n_layers * c->n_expert;
    size_t chunk = c->lim.max_chunk_bytes < CHUNK_MAX ? c->lim.max_chunk_bytes : CHUNK_MAX;
    if (chunk > budget) chunk = budget < 4096 ? 4096 : (size_t)budget; /* the budget holds */
    uint64_t sent = 0;
    while (r->cn < c->n_nodes) {
        if (r->cp >= pairs) {
            r->cn++, r->cp = 0, r->ck = 0, r->coff = 0;
            continue;
        }
        const int l = (int)(r->cp / c->n_expert), e = (int)(r->cp % c->n_expert);
        const model_layer_t *ly = &c->m->layers[l];
        const int kinds = ly->gate_exps_b ? WIRE_SHARD_KIND_COUNT : WIRE_SHARD_DOWN + 1;
        if (!is_add(r, r->cp, r->cn) || r->ck >= kinds) {
            r->cp++, r->ck = 0, r->coff = 0;
            continue;
        }
        if (sent >= budget) return 0;
        const model_tensor_t *t = slice_tensor(ly, r->ck);
        const size_t stride = r->ck <= WIRE_SHARD_DOWN ? model_expert_stride(t)
                                                       : kern_row_bytes(t->type, t->ne[0]);
        const uint8_t *data = (const uint8_t *)t->data + stride * (size_t)e;
        if (r->coff == 0) r->ccrc = wire_crc32c(0, data, stride);
        size_t len = stride - r->coff < chunk ? stride - r->coff : chunk;
        wire_msg_t m;
        wire_msg_init(&m, WIRE_KIND_SHARD_CHUNK);
        m.u.chunk = (wire_shard_chunk_t){.tensor = t->name, .layer = l, .expert = e,
                                         .kind = r->ck, .ggml_type = t->type, .offset = r->coff,
                                         .total = stride, .crc32c = r->ccrc};
        /* ZeroMQ only reads the frame; the cast drops const for its API. */
        int err = wire_msg_add_tensor(&m, WIRE_DTYPE_BYTES, 1, (uint32_t)len,
                                      (void *)(data + r->coff), len, no_free, NULL);
        coord__node_t *n = &c->nodes[r->cn];
        if (!err) err = coord__node_set_sndtimeo(n, 0);
        if (!err) err = wire_msg_send(n->sock, &m);
        else wire_msg_deinit(&m);
        if (err == -EAGAIN) return 0; /* its queue is full: the next call goes on */
        if (err) {
            LOG_ERR("expert node %d (%s): cannot send layer %d expert %d: %s", r->cn,
                    n->endpoint, l, e, wire_strerror(err));
            return err;
        }
        pthread_mutex_lock(&c->st_mu);
        n->st.shard_bytes += len;
        pthread_mutex_unlock(&c->st_mu);
        r->moved += len, sent += len;
        pthread_mutex_lock(&r->mu);
        r->st.bytes += len;
        pthread_mutex_unlock(&r->mu);
        r->progress = wire_now();
        r->coff += len;
        if (r->coff == stride) r->ck++, r->coff = 0;
    }
    return 1;
}

/* SWAP: the wave's layers of the table become the new plan's; node counters follow. */
static void swap(coord__replace_t *r)
{
    coord_cluster_t *c = r->c;
    const int R = c->replicas;
    const size_t pairs = (size_t)c->n_layers * c->n_expert;
    pthread_mutex_lock(&c->st_mu);
    for (size_t p = 0; p < pairs; p++) {
        if (r->diff.wave[p / c->n_expert] != r->wave) continue;
        memcpy(c->owners + p * R, r->next + p * R, sizeof(int) * R);
        c->owner[p] = c->owners[p * R];
    }
    for (int i = 0; i < c->n_nodes; i++) c->nodes[i].st.experts = 0, c->nodes[i].st.expert_bytes = 0;
    for (size_t p = 0; p < pairs; p++)
        for (int q = 0; q < R; q++) {
            int o = c->owners[p * R + q];
            if (o < 0) continue;
            c->nodes[o].st.experts++;
            c->nodes[o].st.expert_bytes += r->pair_bytes[p];
        }
    pthread_mutex_unlock(&c->st_mu);
    for (int i = 0; i < c->n_nodes; i++) c->nodes[i].cap = r->cap[i];
}

static bool all_ready(coord__replace_t *r)
{
    for (int i = 0; i < r->c->n_nodes; i++) {
        /* A node lost after the swap gets its set when it rejoins: nothing to wait for. */
        if (r->want[i] >= 0 && coord_cluster_node_down(r->c, i)) r->want[i] = -1;
        if (r->want[i] >= 0) return false;
    }
    return true;
}

static void finish(coord__replace_t *r, bool done)
{
    pthread_mutex_lock(&r->mu);
    if (done) r->st.finished++;
    else r->st.aborted++;
    r->st.running = false;
    r->state = ST_IDLE;
    pthread_mutex_unlock(&r->mu);
    if (done)
        LOG_INFO("re-placement done: %d pair copies added, %d released, %.2f MiB streamed in "
                 "%.2f s; imbalance %.3f -> %.3f", r->diff.adds, r->diff.drops,
                 r->moved / 1048576.0, wire_now() - r->t0, r->before, r->after);
}

/* Gives up the wave before its swap: its layers keep their owners (earlier waves' keep their
 * new ones), grown nodes get their set back. */
static void abort_move(coord__replace_t *r, const char *why)
{
    coord_cluster_t *c = r->c;
    LOG_WARN("re-placement aborted in wave %d of %d (%s): %s, %.2f MiB streamed", r->wave + 1,
             r->diff.n_waves, why, r->wave ? "the layers of earlier waves stay moved, the "
             "others as they were" : "the placement stays as it was", r->moved / 1048576.0);
    for (int i = 0; i < c->n_nodes; i++) {
        r->want[i] = -1;
        if (r->grown[i] && !coord_cluster_node_down(c, i)) send_set(r, i, false);
    }
    r->progress = wire_now();
    set_state(r, ST_CLEANUP);
}

static void begin(coord__replace_t *r)
{
    coord_cluster_t *c = r->c;
    r->wave = 0, r->moved = 0, r->failed = false;
    r->t0 = r->progress = wire_now();
    r->errors0 = errors_now(c);
    pthread_mutex_lock(&r->mu);
    r->st.started++;
    pthread_mutex_unlock(&r->mu);
    LOG_INFO("re-placement started: %d pair copies to add, %d to release, %.2f MiB in %d "
             "wave%s; imbalance %.3f -> %.3f", r->diff.adds, r->diff.drops,
             r->diff.bytes / 1048576.0, r->diff.n_waves, r->diff.n_waves == 1 ? "" : "s",
             r->before, r->after);
    for (int i = 0; i < c->n_nodes; i++) {
        r->grown[i] = false;
        if (coord_cluster_node_down(c, i)) {
            abort_move(r, "an expert node is down");
            return;
        }
    }
    if (!grow(r)) finish(r, true);
}

/* The reason to give up before the swap, or NULL to go on. */
static const char *trouble(coord__replace_t *r, double now)
{
    if (r->failed) return "a node refused it";
    if (errors_now(r->c) != r->errors0) return "an expert node failed";
    if (now - r->progress > r->c->cfg.timeout_ms / 1e3) return "no progress within the timeout";
    return NULL;
}

static void periodic(coord__replace_t *r, double now)
{
    coord_cluster_t *c = r->c;
    if (!(c->cfg.rebalance_every_s > 0) || now - r->checked < c->cfg.rebalance_every_s) return;
    r->checked = now;
    coord_replace_plan_t pl;
    pthread_mutex_lock(&r->mu);
    /* Imbalance first: planning the cure costs more than measuring the symptom. */
    double before = 0;
    if (r->state == ST_IDLE) {
        const size_t pairs = (size_t)c->n_layers * c->n_expert;
        uint64_t *tok = xmalloc(sizeof(uint64_t) * (pairs + 1));
        double *load = xmalloc(sizeof(double) * (pairs + 1));
        coord_load_tokens(r->load, COORD_LOAD_RECENT_S, tok);
        for (size_t p = 0; p < pairs; p++) load[p] = (double)tok[p];
        model_plan_t *now_p = plan_of_table(c, c->owners, load, r->base_cap);
        before = imbalance(now_p, load, r->base_cap);
        model_plan_free(now_p);
        free(tok), free(load);
    }
    bool go = before > c->cfg.rebalance_above;
    if (go) plan(r, false, &pl);
    pthread_mutex_unlock(&r->mu);
    if (go && !pl.started)
        LOG_INFO("imbalance %.3f is above %.3f, not re-placing: %s", before,
                 c->cfg.rebalance_above, pl.reason);
}

/* SWAP, then RELEASE: nodes that hold pairs of the wave the new table does not give them get
 * an ASSIGN of their new set. */
static void release(coord__replace_t *r)
{
    coord_cluster_t *c = r->c;
    const size_t pairs = (size_t)c->n_layers * c->n_expert;
    bool *loses = xcalloc((size_t)c->n_nodes, sizeof(bool));
    for (size_t p = 0; p < pairs; p++)
        for (int i = 0; r->diff.wave[p / c->n_expert] == r->wave && i < c->n_nodes; i++)
            loses[i] |= in(c->owners, c->replicas, p, i) && !in(r->next, c->replicas, p, i);
    swap(r);
    LOG_INFO("re-placement wave %d of %d: the new pairs are ready on their nodes; owners "
             "swapped", r->wave + 1, r->diff.n_waves);
    for (int i = 0; i < c->n_nodes; i++) {
        r->want[i] = -1;
        if (loses[i] && !coord_cluster_node_down(c, i)) send_set(r, i, false);
    }
    free(loses);
}

void coord__replace_step(coord_cluster_t *c, bool idle)
{
    coord__replace_t *r = c->replace;
    if (!r || c->busy > 0 || !c->started) return;
    double now = wire_now();
    sample(r, now);
    periodic(r, now);
    pthread_mutex_lock(&r->mu);
    state_t s = r->state;
    pthread_mutex_unlock(&r->mu);
    uint64_t budget = (uint64_t)(c->cfg.rebalance_step_kb > 0 ? c->cfg.rebalance_step_kb : 1024)
                      << 10;
    if (idle) budget *= IDLE_STEPS;
    const char *why;
    switch (s) {
    case ST_IDLE: return;
    case ST_PENDING: begin(r); return;
    case ST_STREAM:
        if ((why = trouble(r, now)) != NULL) {
            abort_move(r, why);
            return;
        }
        int rc = stream(r, budget);
        if (rc < 0) {
            abort_move(r, "a shard could not be sent");
            return;
        }
        if (rc > 0) set_state(r, ST_READY);
        return;
    case ST_READY:
        if ((why = trouble(r, now)) != NULL) {
            abort_move(r, why);
            return;
        }
        if (!all_ready(r)) return;
        release(r);
        r->progress = now;
        set_state(r, ST_RELEASE);
        return;
    case ST_RELEASE:
    case ST_CLEANUP:
        if (!all_ready(r) && now - r->progress <= c->cfg.timeout_ms / 1e3) return;
        if (!all_ready(r))
            LOG_WARN("re-placement: a node did not confirm its new set within %d ms",
                     c->cfg.timeout_ms);
        if (s == ST_CLEANUP) {
            finish(r, false);
            return;
        }
        r->wave++;
        if (!grow(r)) finish(r, true);
        return;
    }
}

bool coord__replace_take(coord_cluster_t *c, int node, const wire_msg_t *m)
{
    coord__replace_t *r = c->replace;
    if (!r) return false;
    if (m->kind == WIRE_KIND_READY) {
        if (r->want[node] >= 0 && m->u.ready.n_experts == (uint64_t)r->want[node]) {
            r->want[node] = -1;
            r->progress = wire_now();
        }
        return true; /* the answer to an ASSIGN of ours, whenever it comes */
    }
    if (m->kind == WIRE_KIND_ERROR && m->u.error.request_id == 0 && r->want[node] >= 0) {
        LOG_ERR("expert node %d (%s) refused the re-placement: %s (%s)", node,
                c->nodes[node].endpoint, m->u.error.message ? m->u.error.message : "",
                wire_strerror(m->u.error.code));
        r->failed = true;
        return true;
    }
    return false;
}

void coord__replace_count(coord_cluster_t *c, int layer, int n_tok, int k, const int32_t *ids)
{
    coord__replace_t *r = c->replace;
    if (!r || layer < 0 || layer >= c->n_layers) return;
    _Atomic uint64_t *row = r->count + (size_t)layer * c->n_expert;
    for (int i = 0; i < n_tok * k; i++)
        if (ids[i] >= 0 && ids[i] < c->n_expert)
            atomic_fetch_add_explicit(&row[ids[i]], 1, memory_order_relaxed);
}

coord__replace_t *coord__replace_new(coord_cluster_t *c)
{
    coord_load_config_t lc = coord_load_config_default();
    lc.n_layers = c->n_layers, lc.n_expert = c->n_expert;
    lc.collapse_share = 1; /* metrics.c warns about collapse; once is enough */
    coord_load_t *ld = coord_load_new(&lc);
    if (!ld) return NULL;
    const size_t pairs = (size_t)c->n_layers * c->n_expert;
    const int N = c->n_nodes;
    coord__replace_t *r = xcalloc(1, sizeof(*r));
    r->c = c;
    r->load = ld;
    CHECK(pthread_mutex_init(&r->mu, NULL) == 0);
    r->count = xcalloc(pairs + 1, sizeof(*r->count)); /* all-zero bits: atomic zeros */
    r->snap = xcalloc(pairs + 1, sizeof(uint64_t));
    r->pair_bytes = xcalloc(pairs + 1, sizeof(uint64_t));
    r->base_cap = xcalloc((size_t)N, sizeof(double));
    r->cap = xcalloc((size_t)N, sizeof(double));
    r->want = xmalloc(sizeof(int64_t) * N);
    r->grown = xcalloc((size_t)N, sizeof(bool));
    for (int i = 0; i < N; i++) r->want[i] = -1;
    if (coord__cluster_capacities(c, r->base_cap) != 0)
        for (int i = 0; i < N; i++) r->base_cap[i] = 1;
    take_sample(r); /* the window starts at zero */
    r->checked = r->sampled;
    return r;
}

void coord__replace_free(coord__replace_t *r)
{
    if (!r) return;
    coord_load_free(r->load);
    pthread_mutex_destroy(&r->mu);
    coord__replace_diff_deinit(&r->diff);
    free((void *)r->count), free(r->snap), free(r->pair_bytes), free(r->base_cap), free(r->cap);
    free(r->want), free(r->grown), free(r->next);
    free(r);
}

/* ---- any thread ---- */

int coord_replace_request(const coord_cluster_t *c, bool force, coord_replace_plan_t *out)
{
    coord__replace_t *r = c->replace;
    if (!r) {
        memset(out, 0, sizeof(*out));
        snprintf(out->reason, sizeof(out->reason), "the expert nodes are not started");
        return 0;
    }
    pthread_mutex_lock(&r->mu);
    int err = plan(r, force, out);
    pthread_mutex_unlock(&r->mu);
    LOG_INFO("re-placement requested: %s (imbalance %.3f, planned %.3f)", out->reason,
             out->before, out->after);
    return err;
}

void coord_replace_stats(const coord_cluster_t *c, coord_replace_stats_t *out)
{
    coord__replace_t *r = c->replace;
    memset(out, 0, sizeof(*out));
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    *out = r->st;
    pthread_mutex_unlock(&r->mu);
}

void coord_replace_owners(const coord_cluster_t *c, int *out)
{
    pthread_mutex_t *mu = (pthread_mutex_t *)&c->st_mu; /* not part of the observable state */
    pthread_mutex_lock(mu);
    memcpy(out, c->owners, sizeof(int) * (size_t)c->n_layers * c->n_expert * c->replicas);
    pthread_mutex_unlock(mu);
}
