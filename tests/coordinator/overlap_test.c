/* Micro-batch pipelining against real expert nodes (moemesh-expert processes beside this test
 * binary on 127.0.0.1 ephemeral ports, as in cluster_test.c), f32 on the wire:
 *   - greedy tokens with 1, 2, 3 and adaptive micro-batches over 2 nodes equal the local
 *     single-process path run one sequence at a time, and the prefill logits agree to float
 *     summation order;
 *   - many sequences of different lengths joining and leaving the scheduler's slots, each
 *     equal to running it alone;
 *   - behind relays adding delay and jitter (so RESULTs arrive in scrambled orders) the logits
 *     are bitwise those of the direct run: partial sums are added in node order, not arrival;
 *   - the --trace file is valid JSON with the expected events, no two overlapping on a lane,
 *     and shows a micro-batch computed while another's request was out.
 *
 * Nodes are started with PR_SET_PDEATHSIG and reaped in the suite's fini; relays run on a libuv
 * loop of their own thread and are closed before the test ends.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "coordinator/coord.h"
#include "tproc.h"
#include "wire/wire.h"

#define GOLDEN "../shared/golden"
#define MAX_NODES 3

/* ---------------------------------------------------------------- node processes */

static tproc_t nodes[MAX_NODES];
static char node_ep[MAX_NODES][128]; /* from each node's "listening on" line */
static int n_nodes;

static void reap_all(void)
{
    tproc_reap(nodes, n_nodes, false);
    n_nodes = 0;
}

/* Starts a moemesh-expert holding model (the file) and waits up to 10 s for its endpoint. */
static const char *spawn_node(const char *model)
{
    cr_assert_lt(n_nodes, MAX_NODES);
    const char *argv[] = {"moemesh-expert", "-l", "tcp://127.0.0.1:*", "-m", model, "-t", "1",
                          NULL};
    tproc_spawn(&nodes[n_nodes], argv, node_ep[n_nodes], sizeof(node_ep[0]), 10);
    return node_ep[n_nodes++];
}

static void setup(void)
{
    memset(nodes, 0, sizeof(nodes));
    n_nodes = 0;
    signal(SIGPIPE, SIG_IGN);
}

TestSuite(overlap, .init = setup, .fini = reap_all);

/* ---------------------------------------------------------------- relays (wire/proxy.c) */

typedef struct {
    uv_loop_t loop;
    uv_async_t stop;
    wire_proxy_t *px[MAX_NODES];
    int n;
    pthread_t th;
    char ep[MAX_NODES][64]; /* "tcp://127.0.0.1:PORT" of each relay */
} relays_t;

static void *relays_main(void *arg)
{
    relays_t *r = arg;
    uv_run(&r->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void on_relays_stop(uv_async_t *a)
{
    relays_t *r = a->data;
    for (int i = 0; i < r->n; i++) wire_proxy_close(r->px[i], NULL, NULL);
    uv_close((uv_handle_t *)a, NULL);
}

/* One relay per endpoint, delay_ms (+- jitter_ms) each way, on a loop thread of their own. */
static void relays_start(relays_t *r, const char *const *eps, int n, double delay_ms,
                         double jitter_ms)
{
    memset(r, 0, sizeof(*r));
    cr_assert_eq(uv_loop_init(&r->loop), 0);
    r->n = n;
    for (int i = 0; i < n; i++) {
        int port = atoi(strrchr(eps[i], ':') + 1);
        r->px[i] = wire_proxy_new(&r->loop, &(wire_proxy_config_t){
                                                .listen_host = "127.0.0.1",
                                                .target_host = "127.0.0.1",
                                                .target_port = port,
                                                .delay_ms = delay_ms,
                                                .jitter_ms = jitter_ms,
                                                .seed = 1234u + (uint64_t)i});
        cr_assert_not_null(r->px[i]);
        snprintf(r->ep[i], sizeof(r->ep[i]), "tcp://127.0.0.1:%d", wire_proxy_port(r->px[i]));
    }
    uv_async_init(&r->loop, &r->stop, on_relays_stop);
    r->stop.data = r;
    cr_assert_eq(pthread_create(&r->th, NULL, relays_main, r), 0);
}

static void relays_stop(relays_t *r)
{
    uv_async_send(&r->stop);
    pthread_join(r->th, NULL);
    cr_assert_eq(uv_loop_close(&r->loop), 0);
}

/* ---------------------------------------------------------------- runs */

static model_t *load(const char *name, char *path, size_t cap)
{
    snprintf(path, cap, "%s/%s.gguf", GOLDEN, name);
    model_t *m = NULL;
    cr_assert_eq(model_load(path, &m), 0, "%s", path);
    return m;
}

static coord_cluster_t *cluster(const model_t *m, const char *const *eps, int n)
{
    coord_cluster_config_t cc = coord_cluster_config_default();
    cc.n_nodes = n;
    cc.endpoints = eps;
    cc.progress = false;
    coord_cluster_t *c = coord_cluster_new(&cc, m);
    cr_assert_not_null(c, "cluster of %d did not start", n);
    return c;
}

/* Prompt s of a test: len ids spread over the vocabulary, different per s. */
static void prompt_ids(int s, int len, int V, int32_t *out)
{
    uint32_t x = 2654435761u * (uint32_t)(s + 1);
    for (int i = 0; i < len; i++) {
        x = x * 1664525u + 1013904223u;
        out[i] = (int32_t)(x >> 8) % V;
    }
}

static int32_t argmax(const float *l, int V)
{
    int32_t best = 0;
    for (int v = 1; v < V; v++)
        if (l[v] > l[best]) best = v;
    return best;
}

/* The plain path: sequence alone in a fresh engine over local experts, one micro-batch; the
 * prompt in one batch (its last logits into first, may be NULL), then g greedy tokens. */
static void run_alone(const model_t *m, coord_experts_t *lx, kern_pool_t *pool,
                      const int32_t *prompt, int np, int g, int32_t *out, float *first)
{
    const int V = m->hp.n_vocab;
    coord_engine_params_t p = coord_engine_params_default();
    p.n_ctx = np + g + 1;
    p.n_batch = np;
    p.n_micro = 1;
    coord_engine_t *e = coord_engine_new(m, lx, pool, &p);
    cr_assert_not_null(e);
    int32_t *pos = malloc(sizeof(int32_t) * np), *slot = calloc((size_t)np, sizeof(int32_t));
    for (int i = 0; i < np; i++) pos[i] = i;
    float *l = malloc(sizeof(float) * V);
    coord_batch_t b = {.n = np, .tok = prompt, .pos = pos, .slot = slot};
    cr_assert_eq(coord_engine_decode(e, &b, l), 0);
    if (first) memcpy(first, l, sizeof(float) * V);
    for (int i = 0; i < g; i++) {
        int32_t next = out[i] = argmax(l, V), ps = np + i;
        b = (coord_batch_t){.n = 1, .tok = &next, .pos = &ps, .slot = slot};
        cr_assert_eq(coord_engine_decode(e, &b, l), 0);
    }
    free(l), free(pos), free(slot);
    coord_engine_free(e);
}

#define S 3        /* sequences run together */
#define G 8        /* greedy tokens each */
#define PMAX 40    /* longest prompt */
static const int plen[S] = {17, 5, 29};

/* The S prompts together in e (slots 0..S-1, empty): one batch with all of them (so
 * micro-batches cut through sequences), then G steps of one token per sequence. Greedy tokens
 * into out (S, G), each sequence's prefill logits into first (S, V). */
static void run_together(coord_engine_t *e, int V, int32_t prompts[S][PMAX], int32_t *out,
                         float *first)
{
    int32_t tok[S * PMAX], pos[S * PMAX], slot[S * PMAX];
    bool want[S * PMAX];
    int n = 0;
    for (int s = 0; s < S; s++)
        for (int i = 0; i < plen[s]; i++) {
            tok[n] = prompts[s][i], pos[n] = i, slot[n] = s, want[n] = i == plen[s] - 1;
            n++;
        }
    coord_batch_t b = {.n = n, .tok = tok, .pos = pos, .slot = slot, .want = want};
    cr_assert_eq(coord_engine_decode(e, &b, first), 0);
    float *l = malloc(sizeof(float) * S * V);
    memcpy(l, first, sizeof(float) * S * V);
    for (int i = 0; i < G; i++) {
        for (int s = 0; s < S; s++) {
            tok[s] = out[s * G + i] = argmax(l + (size_t)s * V, V);
            pos[s] = plen[s] + i, slot[s] = s;
        }
        b = (coord_batch_t){.n = S, .tok = tok, .pos = pos, .slot = slot};
        for (int s = 0; s < S; s++) want[s] = true;
        b.want = want;
        cr_assert_eq(coord_engine_decode(e, &b, l), 0);
    }
    free(l);
}

/* Largest |a - ref| over a row, in units of the row's standard deviation. */
static double sd_diff(const float *ref, const float *a, int V)
{
    double mean = 0, var = 0, d = 0;
    for (int v = 0; v < V; v++) mean += ref[v];
    mean /= V;
    for (int v = 0; v < V; v++) var += (ref[v] - mean) * (ref[v] - mean), d = fmax(d, fabs(a[v] - ref[v]));
    return d / sqrt(var / V);
}

/* Engine over rx with n_micro micro-batches (and a trace, may be NULL). */
static coord_engine_t *engine(const model_t *m, coord_experts_t *rx, kern_pool_t *pool,
                              int n_micro, coord_trace_t *tr)
{
    coord_engine_params_t p = coord_engine_params_default();
    p.n_ctx = PMAX + G + 1;
    p.n_slots = S;
    p.n_batch = S * PMAX;
    p.n_micro = n_micro;
    p.trace = tr;
    coord_engine_t *e = coord_engine_new(m, rx, pool, &p);
    cr_assert_not_null(e);
    return e;
}

static void check_model(const char *name)
{
    char path[512];
    model_t *m = load(name, path, sizeof(path));
    const int V = m->hp.n_vocab;
    const char *eps[2] = {spawn_node(path), spawn_node(path)};
    coord_cluster_t *c = cluster(m, eps, 2);
    kern_pool_t *pool = kern_pool_new(2);
    coord_experts_t *lx = coord_experts_local_new(m, pool, S * PMAX);
    coord_experts_t *rx = coord_experts_remote_new(c, S * PMAX);
    int32_t prompts[S][PMAX], ref[S * G], out[S * G];
    float *ref_first = malloc(sizeof(float) * S * V), *first = malloc(sizeof(float) * S * V);
    for (int s = 0; s < S; s++) {
        prompt_ids(s, plen[s], V, prompts[s]);
        run_alone(m, lx, pool, prompts[s], plen[s], G, ref + s * G, ref_first + (size_t)s * V);
    }
    const int micro[] = {1, 2, 3, 0};
    for (size_t k = 0; k < sizeof(micro) / sizeof(micro[0]); k++) {
        coord_engine_t *e = engine(m, rx, pool, micro[k], NULL);
        coord_experts_stats_t x0, x1;
        coord_experts_stats(rx, &x0);
        run_together(e, V, prompts, out, first);
        coord_experts_stats(rx, &x1);
        for (int s = 0; s < S; s++) {
            double d = sd_diff(ref_first + (size_t)s * V, first + (size_t)s * V, V);
            cr_expect_leq(d, 1e-4, "%s, %d micro-batches: sequence %d's prefill logits %.3g sd "
                          "from the plain path", name, micro[k], s, d);
            for (int i = 0; i < G; i++)
                cr_expect_eq(out[s * G + i], ref[s * G + i],
                             "%s, %d micro-batches: sequence %d token %d is %d, alone %d", name,
                             micro[k], s, i, out[s * G + i], ref[s * G + i]);
        }
        /* The split really happened: the prefill batch (51 tokens) and the steps (S tokens). */
        coord_engine_stats_t st;
        coord_engine_stats(e, &st);
        const uint64_t steps = 1 + G;
        int want_mb = micro[k] ? micro[k] : coord_engine_micro_batches(e, S * PMAX);
        if (micro[k] > 0)
            cr_expect_eq(st.micro_batches, steps * (uint64_t)micro[k], "%s: %d micro-batches",
                         name, micro[k]);
        else
            cr_expect_gt(st.micro_batches, steps, "adaptive splits the prefill (%d)", want_mb);
        cr_expect_gt(x1.requests, x0.requests);
        cr_expect_gt(x1.t_comm_s, 0.0);
        coord_engine_free(e);
    }
    /* The adaptive choice: nothing to overlap with local experts, one token cannot split. */
    coord_engine_t *el = engine(m, lx, pool, 0, NULL), *er = engine(m, rx, pool, 0, NULL);
    cr_expect_eq(coord_engine_micro_batches(el, 64), 1);
    cr_expect_eq(coord_engine_micro_batches(er, 1), 1);
    cr_expect_geq(coord_engine_micro_batches(er, 64), 2);
    coord_engine_free(el), coord_engine_free(er);
    for (int i = 0; i < 2; i++) {
        coord_node_stats_t st;
        coord_cluster_node_stats(c, i, &st);
        cr_expect_eq(st.stale, 0);
        cr_expect_eq(st.errors, 0);
    }
    free(ref_first), free(first);
    coord_experts_free(rx), coord_experts_free(lx);
    kern_pool_free(pool);
    coord_cluster_free(c);
    model_free(m);
    reap_all();
}

Test(overlap, micro_batches_equal_the_plain_local_path, .timeout = 120)
{
    check_model("qwen3moe-tiny-f32");
    check_model("qwen2moe-tiny-f32"); /* shared experts computed while the routed ones are out */
}

/* ---------------------------------------------------------------- the scheduler */

#define NREQ 10

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t ids[64];
    int n;
    bool done;
    coord_finish_t why;
} coll_t;

static bool on_tok(void *ud, const coord_token_t *t)
{
    coll_t *c = ud;
    pthread_mutex_lock(&c->mu);
    if (c->n < 64) c->ids[c->n++] = t->id;
    pthread_mutex_unlock(&c->mu);
    return true;
}

static void on_done(void *ud, coord_finish_t why, const coord_gen_stats_t *st)
{
    (void)st;
    coll_t *c = ud;
    pthread_mutex_lock(&c->mu);
    c->done = true;
    c->why = why;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* Requests of different lengths through 4 slots with chunked prefill (12 tokens a step), so
 * they join and leave while others run: each one's tokens equal its run alone. */
Test(overlap, concurrent_sequences_each_equal_running_alone, .timeout = 120)
{
    char path[512];
    model_t *m = load("qwen3moe-tiny-f32", path, sizeof(path));
    const int V = m->hp.n_vocab;
    const char *eps[2] = {spawn_node(path), spawn_node(path)};
    coord_cluster_t *c = cluster(m, eps, 2);
    kern_pool_t *pool = kern_pool_new(2);
    coord_experts_t *lx = coord_experts_local_new(m, pool, 64);
    coord_experts_t *rx = coord_experts_remote_new(c, 12);
    int32_t prompt[NREQ][32], ref[NREQ][16];
    int np[NREQ], ng[NREQ];
    for (int r = 0; r < NREQ; r++) {
        np[r] = 2 + (r * 7) % 27;
        ng[r] = 3 + (r * 5) % 11;
        prompt_ids(100 + r, np[r], V, prompt[r]);
        run_alone(m, lx, pool, prompt[r], np[r], ng[r], ref[r], NULL);
    }
    const int micro[] = {2, 3, 0};
    for (size_t k = 0; k < sizeof(micro) / sizeof(micro[0]); k++) {
        coord_engine_params_t ep = coord_engine_params_default();
        ep.n_ctx = 48, ep.n_slots = 4, ep.n_batch = 12, ep.n_micro = micro[k];
        coord_engine_t *e = coord_engine_new(m, rx, pool, &ep);
        cr_assert_not_null(e);
        coord_sched_params_t sp = coord_sched_params_default();
        sp.max_queue = NREQ;
        coord_sched_t *sch = coord_sched_new(e, m, &sp);
        cr_assert_not_null(sch);
        coll_t col[NREQ];
        for (int r = 0; r < NREQ; r++) {
            memset(&col[r], 0, sizeof(col[r]));
            pthread_mutex_init(&col[r].mu, NULL);
            pthread_cond_init(&col[r].cv, NULL);
            coord_gen_req_t q = {.prompt = prompt[r], .n_prompt = np[r], .max_tokens = ng[r],
                                 .sampling = coord_sampler_params_default(), .top_logprobs = -1,
                                 .on_token = on_tok, .on_done = on_done, .ud = &col[r]};
            q.sampling.temperature = 0;
            cr_assert_gt(coord_sched_submit(sch, &q), 0);
        }
        for (int r = 0; r < NREQ; r++) {
            pthread_mutex_lock(&col[r].mu);
            while (!col[r].done) pthread_cond_wait(&col[r].cv, &col[r].mu);
            pthread_mutex_unlock(&col[r].mu);
        }
        coord_sched_free(sch);
        for (int r = 0; r < NREQ; r++) {
            cr_expect_eq(col[r].why, COORD_FINISH_LENGTH, "request %d finished %d", r, col[r].why);
            cr_expect_eq(col[r].n, ng[r], "request %d: %d tokens of %d", r, col[r].n, ng[r]);
            for (int i = 0; i < col[r].n && i < ng[r]; i++)
                cr_expect_eq(col[r].ids[i], ref[r][i],
                             "%d micro-batches: request %d token %d is %d, alone %d", micro[k], r,
                             i, col[r].ids[i], ref[r][i]);
            pthread_mutex_destroy(&col[r].mu);
            pthread_cond_destroy(&col[r].cv);
        }
        coord_engine_stats_t st;
        coord_engine_stats(e, &st);
        cr_expect_gt(st.micro_batches, st.decodes, "%d: some steps were split", micro[k]);
        coord_engine_free(e);
    }
    coord_experts_free(rx), coord_experts_free(lx);
    kern_pool_free(pool);
    coord_cluster_free(c);
    model_free(m);
}

/* ---------------------------------------------------------------- delay and the trace */

typedef struct {
    double t0, t1;
    const char *name;
    int mb;
} span_t;

static int by_start(const void *a, const void *b)
{
    const span_t *x = a, *y = b;
    return x->t0 < y->t0 ? -1 : x->t0 > y->t0;
}

/* Checks the trace file: its events, no overlap within a lane, and a micro-batch's attention
 * inside another micro-batch's request. */
static void check_trace(const char *file, bool want_shared)
{
    json_error_t jerr;
    json_t *root = json_load_file(file, 0, &jerr);
    cr_assert_not_null(root, "%s is not JSON: %s (line %d)", file, jerr.text, jerr.line);
    json_t *evs = json_object_get(root, "traceEvents");
    cr_assert(json_is_array(evs));
    cr_expect_eq(json_integer_value(json_object_get(json_object_get(root, "otherData"),
                                                    "dropped_events")), 0);
    const char *names[] = {"attention", "routing", "send", "forward", "remote compute",
                           "receive", "combine", "wait", "output", "decode, 2 micro-batches",
                           "shared experts"};
    const int n_names = want_shared ? 11 : 10;
    int seen[11] = {0};
    size_t n = json_array_size(evs);
    span_t *sp = malloc(sizeof(span_t) * n);
    int *tid = malloc(sizeof(int) * n);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *ev = json_array_get(evs, i);
        const char *ph = json_string_value(json_object_get(ev, "ph"));
        cr_assert_not_null(ph);
        if (strcmp(ph, "X") != 0) continue;
        const char *name = json_string_value(json_object_get(ev, "name"));
        cr_assert_not_null(name);
        for (int j = 0; j < n_names; j++) seen[j] += !strcmp(name, names[j]);
        json_t *mb = json_object_get(json_object_get(ev, "args"), "mb");
        sp[k] = (span_t){json_number_value(json_object_get(ev, "ts")), 0, name,
                         mb ? (int)json_integer_value(mb) : -1};
        sp[k].t1 = sp[k].t0 + json_number_value(json_object_get(ev, "dur"));
        tid[k++] = (int)json_integer_value(json_object_get(ev, "tid"));
    }
    for (int j = 0; j < n_names; j++) cr_expect_gt(seen[j], 0, "no '%s' event", names[j]);
    /* Per lane, sorted by start, each event ends before the next begins (ts and dur are exact
     * to the nanosecond in the file). */
    int lanes[64], n_lanes = 0;
    for (size_t i = 0; i < k; i++) {
        int l = 0;
        while (l < n_lanes && lanes[l] != tid[i]) l++;
        if (l == n_lanes && n_lanes < 64) lanes[n_lanes++] = tid[i];
    }
    span_t *lane = malloc(sizeof(span_t) * k);
    for (int l = 0; l < n_lanes; l++) {
        size_t m = 0;
        for (size_t i = 0; i < k; i++)
            if (tid[i] == lanes[l]) lane[m++] = sp[i];
        qsort(lane, m, sizeof(span_t), by_start);
        for (size_t i = 1; i < m; i++)
            cr_expect_leq(lane[i - 1].t1, lane[i].t0 + 1e-9,
                          "lane %d: '%s' [%.3f, %.3f] overlaps '%s' starting at %.3f", lanes[l],
                          lane[i - 1].name, lane[i - 1].t0, lane[i - 1].t1, lane[i].name,
                          lane[i].t0);
    }
    /* The point of it all: some attention of one micro-batch ran inside a request of another. */
    int inside = 0;
    for (size_t i = 0; i < k; i++) {
        if (strcmp(sp[i].name, "attention")) continue;
        for (size_t j = 0; j < k && !inside; j++)
            inside += !strcmp(sp[j].name, "forward") && sp[j].mb != sp[i].mb &&
                      sp[j].t0 <= sp[i].t0 && sp[i].t1 <= sp[j].t1;
    }
    cr_expect_gt(inside, 0, "no attention ran while another micro-batch's request was out");
    free(lane), free(sp), free(tid);
    json_decref(root);
}

/* Relays with 1 ms (+- 0.9 ms) each way in front of 3 nodes: results come back in scrambled
 * orders, yet the run is bitwise the direct run's, and the trace of it checks out. The model
 * is generated here with 4 experts per token, so a token's partial sums come from up to 3
 * nodes and adding them in arrival order would show in the bits (with 2 they commute). */
Test(overlap, delay_and_jitter_change_nothing_and_the_trace_shows_overlap, .timeout = 120)
{
    char path[128];
    snprintf(path, sizeof(path), "/tmp/moemesh-overlap-model-%d.gguf", (int)getpid());
    model_gen_params_t gp = {.arch = "qwen2moe", .n_layers = 3, .n_embd = 64, .n_head = 4,
                             .n_head_kv = 2, .n_expert = 12, .n_expert_used = 4, .expert_ff = 32,
                             .shared_ff = 64, .n_vocab = 320, .type = KERN_F32, .seed = 7};
    cr_assert_eq(model_gen_write(&gp, path), 0);
    model_t *m = NULL;
    cr_assert_eq(model_load(path, &m), 0);
    const int V = m->hp.n_vocab;
    const char *eps[3] = {spawn_node(path), spawn_node(path), spawn_node(path)};
    kern_pool_t *pool = kern_pool_new(2);
    int32_t prompts[S][PMAX], out_direct[S * G], out_relayed[S * G];
    for (int s = 0; s < S; s++) prompt_ids(s, plen[s], V, prompts[s]);
    float *f_direct = malloc(sizeof(float) * S * V), *f_relayed = malloc(sizeof(float) * S * V);

    coord_cluster_t *c = cluster(m, eps, 3);
    coord_experts_t *rx = coord_experts_remote_new(c, S * PMAX);
    coord_engine_t *e = engine(m, rx, pool, 2, NULL);
    run_together(e, V, prompts, out_direct, f_direct);
    coord_engine_free(e);
    coord_experts_free(rx);
    coord_cluster_free(c);

    relays_t r;
    relays_start(&r, eps, 3, 1.0, 0.9);
    const char *reps[3] = {r.ep[0], r.ep[1], r.ep[2]};
    char file[128];
    snprintf(file, sizeof(file), "/tmp/moemesh-overlap-trace-%d.json", (int)getpid());
    coord_trace_t *tr = coord_trace_new(file, 0);
    cr_assert_not_null(tr);
    c = cluster(m, reps, 3);
    rx = coord_experts_remote_new(c, S * PMAX);
    coord_experts_set_trace(rx, tr);
    e = engine(m, rx, pool, 2, tr);
    run_together(e, V, prompts, out_relayed, f_relayed);
    coord_engine_free(e);
    coord_experts_free(rx);
    coord_cluster_free(c);
    relays_stop(&r);
    cr_assert_eq(coord_trace_write(tr), 0);
    coord_trace_free(tr);

    cr_expect_eq(memcmp(f_direct, f_relayed, sizeof(float) * S * V), 0,
                 "prefill logits differ behind the relays");
    cr_expect_eq(memcmp(out_direct, out_relayed, sizeof(out_direct)), 0,
                 "greedy tokens differ behind the relays");
    check_trace(file, true);
    unlink(file);
    unlink(path);
    free(f_direct), free(f_relayed);
    kern_pool_free(pool);
    model_free(m);
}

/* A trace with room for a few events stays valid JSON and says how many it dropped; a path
 * that cannot be created fails at once. */
Test(overlap, trace_cap_drops_and_says_so, .timeout = 30)
{
    char path[512], file[128];
    model_t *m = load("qwen3moe-tiny-f32", path, sizeof(path));
    snprintf(file, sizeof(file), "/tmp/moemesh-overlap-cap-%d.json", (int)getpid());
    cr_assert_null(coord_trace_new("/nonexistent-dir/x.json", 0));
    coord_trace_t *tr = coord_trace_new(file, 10);
    cr_assert_not_null(tr);
    kern_pool_t *pool = kern_pool_new(1);
    coord_experts_t *lx = coord_experts_local_new(m, pool, 8);
    coord_experts_set_trace(lx, tr);
    coord_engine_params_t p = coord_engine_params_default();
    p.n_ctx = 16, p.n_batch = 8, p.n_micro = 2, p.trace = tr;
    coord_engine_t *e = coord_engine_new(m, lx, pool, &p);
    int32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8}, pos[8] = {0, 1, 2, 3, 4, 5, 6, 7}, slot[8] = {0};
    float *l = malloc(sizeof(float) * m->hp.n_vocab);
    coord_batch_t b = {.n = 8, .tok = tok, .pos = pos, .slot = slot};
    cr_assert_eq(coord_engine_decode(e, &b, l), 0);
    cr_assert_eq(coord_trace_write(tr), 0);
    coord_trace_free(tr);
    json_error_t jerr;
    json_t *root = json_load_file(file, 0, &jerr);
    cr_assert_not_null(root, "not JSON: %s", jerr.text);
    size_t x = 0;
    json_t *evs = json_object_get(root, "traceEvents"), *ev;
    size_t i;
    json_array_foreach(evs, i, ev) x += !strcmp(json_string_value(json_object_get(ev, "ph")), "X");
    cr_expect_eq(x, 10);
    cr_expect_gt(json_integer_value(json_object_get(json_object_get(root, "otherData"),
                                                    "dropped_events")), 0);
    json_decref(root);
    unlink(file);
    free(l);
    coord_engine_free(e);
    coord_experts_free(lx);
    kern_pool_free(pool);
    model_free(m);
}
