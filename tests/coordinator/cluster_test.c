/* Expert parallelism end to end: real moemesh-expert processes on 127.0.0.1 ephemeral ports
 * (the program beside this test binary, so SAN tests run SAN nodes), the coordinator's cluster
 * and remote experts, and the engine. Teacher-forced logits over the golden token ids with
 * remote experts must equal the local path: within 1e-5 of each position's logit sd with f32
 * on the wire (the only difference is the order partial sums of different nodes are added),
 * within the golden tolerance of f16/bf16/q8_0 files for those wire types; greedy decoding one
 * token per call must give the same tokens. Failures must be loud and bounded: a killed node,
 * a node that never existed, a corrupted shard chunk.
 *
 * Every node is started with PR_SET_PDEATHSIG, and killed and reaped in the suite's fini, so no
 * process outlives a test even when an assertion fails or Criterion kills the test. Node logs
 * go to /dev/null; MOEMESH_TEST_NODE_LOG=DIR keeps them as DIR/node-PID.log.
 */
#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/coord.h"
#include "tlogits.h"
#include "tproc.h"
#include "wire/wire.h"

#define GOLDEN "../shared/golden"
#define MAX_NODES 4

/* ---------------------------------------------------------------- node processes */

static tproc_t nodes[MAX_NODES];
static char node_ep[MAX_NODES][128]; /* from each node's "listening on" line */
static int n_nodes;

/* The moemesh-expert beside this binary; MOEMESH_TEST_EXPERT names another (debugging). */
static void expert_path(char *out, size_t cap)
{
    if (getenv("MOEMESH_TEST_EXPERT"))
        snprintf(out, cap, "%s", getenv("MOEMESH_TEST_EXPERT"));
    else
        tproc_prog_path("moemesh-expert", out, cap);
}

static void reap_all(void)
{
    tproc_reap(nodes, n_nodes, false);
    n_nodes = 0;
}

/* Starts one node (model: NULL to have its shard streamed; curve: a --curve-keys DIR or NULL)
 * and waits up to 10 s for its "listening on tcp://127.0.0.1:PORT" line; returns that
 * endpoint. */
static const char *spawn_node_curve(const char *model, const char *curve)
{
    cr_assert_lt(n_nodes, MAX_NODES);
    char prog[PATH_MAX];
    expert_path(prog, sizeof(prog));
    const char *argv[8];
    int a = 0;
    argv[a++] = prog;
    argv[a++] = "-l";
    argv[a++] = "tcp://127.0.0.1:*";
    if (model) argv[a++] = "-m", argv[a++] = model;
    if (curve) argv[a++] = "--curve-keys", argv[a++] = curve;
    argv[a] = NULL;
    char *ep = node_ep[n_nodes];
    tproc_spawn(&nodes[n_nodes++], argv, ep, sizeof(node_ep[0]), 10);
    cr_assert(strncmp(ep, "tcp://127.0.0.1:", 16) == 0, "endpoint %s", ep);
    return ep;
}

static const char *spawn_node(const char *model)
{
    return spawn_node_curve(model, NULL);
}

static void setup(void)
{
    memset(nodes, 0, sizeof(nodes));
    n_nodes = 0;
    signal(SIGPIPE, SIG_IGN);
}

TestSuite(cluster, .init = setup, .fini = reap_all);

/* ---------------------------------------------------------------- stderr capture */

static int saved_fd = -1;
static FILE *captured;

/* The log goes to fd 2 with write(2): pointing fd 2 at a file lets a test read the message. */
static void capture_begin(void)
{
    captured = tmpfile();
    cr_assert_not_null(captured);
    fflush(stderr);
    saved_fd = dup(2);
    dup2(fileno(captured), 2);
}

static char *capture_end(void)
{
    fflush(stderr);
    dup2(saved_fd, 2);
    close(saved_fd);
    long n = ftell(captured);
    char *s = malloc((size_t)(n > 0 ? n : 0) + 1);
    rewind(captured);
    size_t got = fread(s, 1, (size_t)(n > 0 ? n : 0), captured);
    s[got] = 0;
    fclose(captured);
    fprintf(stderr, "%s", s); /* keep it visible in the test output */
    return s;
}

/* ---------------------------------------------------------------- clusters */

/* The configuration of a cluster of the n nodes at eps, without progress lines. */
static coord_cluster_config_t config(int n, const char **eps)
{
    coord_cluster_config_t cc = coord_cluster_config_default();
    cc.n_nodes = n;
    cc.endpoints = eps;
    cc.progress = false;
    return cc;
}

/* coord_cluster_new(cc, m), the seconds it took in *dt and what it logged in *log (malloc'd),
 * each unless NULL. */
static coord_cluster_t *start_cluster(const coord_cluster_config_t *cc, const model_t *m,
                                      double *dt, char **log)
{
    if (log) capture_begin();
    double t0 = wire_now();
    coord_cluster_t *c = coord_cluster_new(cc, m);
    if (dt) *dt = wire_now() - t0;
    if (log) *log = capture_end();
    return c;
}

/* ---------------------------------------------------------------- engine runs */

#define MAX_TOK 128

/* Remote experts rx against local lx over ids: the worst distance in sd and how many positions
 * exceed tol, the greedy tokens of each. One micro-batch: remote and local then run matrix
 * products of the same shapes, so only the order the nodes' sums are added differs
 * (tests/coordinator/overlap_test.c compares micro-batched runs with this plain path). */
static double compare(const model_t *m, coord_experts_t *lx, coord_experts_t *rx,
                      kern_pool_t *pool, const int32_t *ids, int n, int n_prompt, double tol,
                      int *over, int32_t *gref, int32_t *gout)
{
    return tlogits_compare(m, lx, rx, pool, (tlogits_opts_t){.n_micro = 1}, ids, n, n_prompt,
                           tol, over, gref, gout);
}

/* Starts n nodes (from the file when from_file, else streamed) for golden model name, places
 * every expert on `replicas` of them, and checks remote against local with wire type wt: within
 * tol sd at every position but `outliers`, and the same greedy tokens when exact_greedy. */
static void check_model_r(const char *name, int n, int replicas, bool from_file, wire_dtype_t wt,
                          double tol, int outliers, bool exact_greedy)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s.gguf", GOLDEN, name);
    model_t *m = NULL;
    cr_assert_eq(model_load(path, &m), 0, "%s", path);
    int32_t ids[MAX_TOK];
    int n_prompt, N = tlogits_golden_ids(name, ids, MAX_TOK, &n_prompt);
    const int G = N - n_prompt;

    const char *eps[MAX_NODES];
    for (int i = 0; i < n; i++) eps[i] = spawn_node(from_file ? path : NULL);
    coord_cluster_config_t cc = config(n, eps);
    cc.wire_type = wt;
    cc.replicas = replicas;
    coord_cluster_t *c = coord_cluster_new(&cc, m);
    cr_assert_not_null(c, "%s: cluster of %d did not start", name, n);
    cr_assert_eq(coord_cluster_replicas(c), replicas);
    int moe_layers = 0;
    for (int l = 0; l < m->hp.n_layer; l++) moe_layers += m->layers[l].gate_exps != NULL;
    /* Each node holds its share of the copies: R/n of all pairs, rounded either way. */
    const int copies = replicas * moe_layers * m->hp.n_expert;
    int total = 0;
    for (int i = 0; i < n; i++) {
        coord_node_stats_t st;
        coord_cluster_node_stats(c, i, &st);
        total += st.experts;
        cr_assert(st.experts >= copies / n && st.experts <= (copies + n - 1) / n,
                  "%s: node %d holds %d pairs; %d copies over %d nodes", name, i, st.experts,
                  copies, n);
        cr_assert(from_file || st.shard_bytes > 0 || st.experts == 0,
                  "%s: node %d has experts but nothing was streamed", name, i);
        cr_assert(!from_file || st.shard_bytes == 0, "%s: node %d holds the file yet got %llu "
                  "bytes streamed", name, i, (unsigned long long)st.shard_bytes);
    }
    cr_assert_eq(total, copies, "every pair placed exactly %d time(s)", replicas);
    for (int l = 0; l < m->hp.n_layer; l++) {
        const int *o = coord_cluster_owners(c, l, 0);
        cr_assert_eq(o != NULL, m->layers[l].gate_exps != NULL, "layer %d owners", l);
        for (int e = 0; o && e < m->hp.n_expert; e++) {
            o = coord_cluster_owners(c, l, e);
            cr_assert_eq(o[0], coord_cluster_owner(c, l, e), "the primary comes first");
            for (int r = 0; r < replicas; r++) {
                cr_assert(o[r] >= 0 && o[r] < n);
                for (int q = 0; q < r; q++) cr_assert_neq(o[q], o[r], "distinct owners");
            }
        }
    }

    kern_pool_t *pool = kern_pool_new(2);
    coord_experts_t *lx = coord_experts_local_new(m, pool, N);
    coord_experts_t *rx = coord_experts_remote_new(c, N);
    int32_t gref[MAX_TOK], gout[MAX_TOK];
    int over;
    double worst = compare(m, lx, rx, pool, ids, N, n_prompt, tol, &over, gref, gout);
    cr_log_info("%s, %d node(s)%s, %d replica(s), %s wire: worst %.3g sd (tol %.3g), %d over",
                name, n, from_file ? " with -m" : "", replicas, wire_dtype_name(wt), worst, tol,
                over);
    cr_expect_leq(over, outliers, "%s, %d nodes, %s: %d positions beyond %.3g sd (worst %.3g)",
                  name, n, wire_dtype_name(wt), over, tol, worst);
    if (exact_greedy)
        for (int i = 0; i < G; i++)
            cr_expect_eq(gout[i], gref[i], "%s, %d nodes: greedy token %d is %d, local %d", name,
                         n, i, gout[i], gref[i]);
    uint64_t reqs = 0;
    for (int i = 0; i < n; i++) {
        coord_node_stats_t st;
        coord_cluster_node_stats(c, i, &st);
        reqs += st.requests;
        cr_expect_eq(st.stale, 0);
        /* The planner spreads the primaries, so no copy holder sits idle. */
        if (replicas > 1)
            cr_expect_gt(st.requests, 0, "%s: node %d holds primaries yet served nothing", name,
                         i);
    }
    cr_expect_geq(reqs, (uint64_t)moe_layers * (1 + G), "every layer of every call went out");
    coord_experts_free(rx);
    coord_experts_free(lx);
    kern_pool_free(pool);
    coord_cluster_free(c);
    model_free(m);
    reap_all();
}

static void check_model(const char *name, int n, bool from_file, wire_dtype_t wt, double tol,
                        int outliers, bool exact_greedy)
{
    check_model_r(name, n, 1, from_file, wt, tol, outliers, exact_greedy);
}

static const char *const f32_models[] = {"qwen3moe-tiny-f32", "mixtral-tiny-f32",
                                         "qwen2moe-tiny-f32", "olmoe-tiny-f32", "stories-moe-f32",
                                         "qwen3moe-tiny-q8_0", "mixtral-tiny-q8_0"};
#define N_MODELS (int)(sizeof(f32_models) / sizeof(f32_models[0]))

Test(cluster, one_streamed_node_equals_local_path, .timeout = 240)
{
    for (int i = 0; i < N_MODELS; i++)
        check_model(f32_models[i], 1, false, WIRE_DTYPE_F32, 1e-5, 0, true);
}

Test(cluster, two_nodes_with_the_file_equal_local_path, .timeout = 240)
{
    for (int i = 0; i < N_MODELS; i++)
        check_model(f32_models[i], 2, true, WIRE_DTYPE_F32, 1e-5, 0, true);
}

Test(cluster, three_streamed_nodes_equal_local_path, .timeout = 240)
{
    for (int i = 0; i < N_MODELS; i++)
        check_model(f32_models[i], 3, false, WIRE_DTYPE_F32, 1e-5, 0, true);
}

/* Two copies of every expert over three nodes: each node holds 2/3 of the pairs, calls go to
 * the primaries, and the logits are the local ones within 1e-5 sd, streamed or from the file. */
Test(cluster, three_nodes_with_two_replicas_equal_local_path, .timeout = 240)
{
    check_model_r("qwen3moe-tiny-f32", 3, 2, false, WIRE_DTYPE_F32, 1e-5, 0, true);
    check_model_r("mixtral-tiny-f32", 3, 2, false, WIRE_DTYPE_F32, 1e-5, 0, true);
    check_model_r("qwen3moe-tiny-f32", 3, 2, true, WIRE_DTYPE_F32, 1e-5, 0, true);
    check_model_r("mixtral-tiny-f32", 3, 2, true, WIRE_DTYPE_F32, 1e-5, 0, true);
    check_model_r("olmoe-tiny-f32", 3, 3, false, WIRE_DTYPE_F32, 1e-5, 0, true);
}

/* Rounded activations on the wire: the error budget of a file of that type (golden README
 * section 3: f16 0.02, bf16 0.1, q8_0 0.2 sd, two outlier positions), measured against the
 * local path on the f32 model, whose only rounding is then the wire's. */
Test(cluster, rounded_wire_types_stay_within_their_tolerance, .timeout = 240)
{
    check_model("qwen3moe-tiny-f32", 2, false, WIRE_DTYPE_F16, 0.02, 2, false);
    check_model("qwen3moe-tiny-f32", 2, false, WIRE_DTYPE_BF16, 0.1, 2, false);
    check_model("qwen3moe-tiny-f32", 2, true, WIRE_DTYPE_Q8_0, 0.2, 2, false);
    check_model("stories-moe-f32", 3, false, WIRE_DTYPE_Q8_0, 0.2, 2, false);
}

/* ---------------------------------------------------------------- failures */

static model_t *load(const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s.gguf", GOLDEN, name);
    model_t *m = NULL;
    cr_assert_eq(model_load(path, &m), 0);
    return m;
}

/* A node SIGKILLed between two calls: the next call fails within the deadline (plus slack),
 * never hangs, and the log names the node and its address. */
Test(cluster, killed_node_fails_the_next_call_in_time, .timeout = 60)
{
    model_t *m = load("qwen3moe-tiny-f32");
    const char *eps[2] = {spawn_node(NULL), spawn_node(NULL)};
    coord_cluster_config_t cc = config(2, eps);
    cc.timeout_ms = 1000;
    coord_cluster_t *c = coord_cluster_new(&cc, m);
    cr_assert_not_null(c);
    kern_pool_t *pool = kern_pool_new(1);
    coord_experts_t *rx = coord_experts_remote_new(c, 16);
    coord_engine_params_t p = coord_engine_params_default();
    p.n_ctx = 64;
    p.n_batch = 16;
    coord_engine_t *e = coord_engine_new(m, rx, pool, &p);
    int32_t tok[16], pos[16], slot[16] = {0};
    for (int i = 0; i < 16; i++) tok[i] = 10 + 7 * i, pos[i] = i;
    float *l = malloc(sizeof(float) * m->hp.n_vocab);
    coord_batch_t b = {.n = 8, .tok = tok, .pos = pos, .slot = slot};
    cr_assert_eq(coord_engine_decode(e, &b, l), 0);

    char victim[192];
    snprintf(victim, sizeof(victim), "expert node 1 (%s)", node_ep[1]);
    tproc_kill(&nodes[1]);
    capture_begin();
    double t0 = wire_now();
    b = (coord_batch_t){.n = 8, .tok = tok + 8, .pos = pos + 8, .slot = slot};
    int err = coord_engine_decode(e, &b, l);
    double dt = wire_now() - t0;
    char *log = capture_end();
    cr_expect_neq(err, 0, "a call needing a dead node must fail");
    cr_expect_lt(dt, 3.0, "failed after %.2f s; the deadline is 1 s", dt);
    cr_expect_not_null(strstr(log, victim), "the error names '%s'", victim);
    free(log);
    free(l);
    coord_engine_free(e);
    coord_experts_free(rx);
    kern_pool_free(pool);
    coord_cluster_free(c);
    model_free(m);
}

/* A flipped byte in one streamed chunk: the node's CRC-32C check refuses the slice and
 * start-up fails with a message naming the node and the checksum. */
Test(cluster, corrupted_chunk_fails_start_up, .timeout = 60)
{
    model_t *m = load("mixtral-tiny-f32");
    const char *eps[2] = {spawn_node(NULL), spawn_node(NULL)};
    coord_cluster_config_t cc = config(2, eps);
    cc.timeout_ms = 5000;
    cc.test_corrupt_chunk = 7;
    double dt;
    char *log;
    coord_cluster_t *c = start_cluster(&cc, m, &dt, &log);
    cr_expect_null(c);
    cr_expect_lt(dt, 6.0);
    cr_expect_not_null(strstr(log, "checksum"), "the log says checksum");
    cr_expect_not_null(strstr(log, "expert node 0 ("), "the log names the node");
    free(log);
    coord_cluster_free(c);
    model_free(m);
}

/* A node's READY that is already queued when the coordinator next reads the node's socket —
 * it was preempted after queueing the last chunk — is start-up completing, not a message to
 * drop: the cluster starts, well within the deadline. The hook holds the coordinator long
 * enough after each node's last chunk for the READY to be there every time. */
Test(cluster, ready_queued_behind_the_last_chunk_is_kept, .timeout = 60)
{
    model_t *m = load("qwen3moe-tiny-f32");
    const char *eps[2] = {spawn_node(NULL), spawn_node(NULL)};
    coord_cluster_config_t cc = config(2, eps);
    cc.timeout_ms = 5000;
    cc.test_stall_ms = 500;
    double dt;
    coord_cluster_t *c = start_cluster(&cc, m, &dt, NULL);
    cr_expect_not_null(c, "start-up must see the READYs that came during the stalls");
    cr_expect_lt(dt, 4.0, "started after %.2f s: two 0.5 s stalls, no deadline", dt);
    for (int i = 0; c && i < 2; i++) {
        coord_node_stats_t st;
        coord_cluster_node_stats(c, i, &st);
        cr_expect_gt(st.shard_bytes, 0, "node %d was streamed", i);
    }
    coord_cluster_free(c);
    model_free(m);
}

/* More copies than nodes: refused before any connection, saying why. */
Test(cluster, more_replicas_than_nodes_are_refused, .timeout = 30)
{
    model_t *m = load("qwen3moe-tiny-f32");
    const char *eps[2] = {"tcp://127.0.0.1:1", "tcp://127.0.0.1:2"};
    coord_cluster_config_t cc = config(2, eps);
    cc.replicas = 3;
    double dt;
    char *log;
    coord_cluster_t *c = start_cluster(&cc, m, &dt, &log);
    cr_expect_null(c);
    cr_expect_lt(dt, 1.0, "refused at once, not at a deadline");
    cr_expect_not_null(strstr(log, "replicas must be 1..2"), "the log says why:\n%s", log);
    free(log);
    cc.replicas = 0;
    c = start_cluster(&cc, m, NULL, &log);
    free(log);
    cr_expect_null(c);
    model_free(m);
}

/* Nothing listening: start-up gives up at the connect deadline, naming the address. */
Test(cluster, unreachable_node_fails_start_up_at_the_deadline, .timeout = 30)
{
    model_t *m = load("qwen3moe-tiny-f32");
    const char *ep = spawn_node(NULL);
    char live[128], dead[128];
    snprintf(live, sizeof(live), "%s", ep);
    /* A port that was just in use and is now closed: certainly nobody listens there. */
    snprintf(dead, sizeof(dead), "%s", ep);
    tproc_kill(&nodes[0]);
    const char *eps[1] = {dead};
    coord_cluster_config_t cc = config(1, eps);
    cc.connect_ms = 500;
    double dt;
    char *log;
    coord_cluster_t *c = start_cluster(&cc, m, &dt, &log);
    cr_expect_null(c);
    cr_expect(dt >= 0.4 && dt < 3.0, "gave up after %.2f s, deadline 0.5 s", dt);
    char want[192];
    snprintf(want, sizeof(want), "expert node 0 (%s): unreachable", live);
    cr_expect_not_null(strstr(log, want), "the log says '%s'", want);
    free(log);
    model_free(m);
}

/* ---------------------------------------------------------------- the command */

/* Runs cmd through sh and returns its stdout (malloc'd, at most 64 KiB); it must succeed. */
static char *run_cmd(const char *cmd)
{
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    size_t cap = 1 << 16, n = 0;
    char *s = malloc(cap);
    size_t r;
    while ((r = fread(s + n, 1, cap - 1 - n, p)) > 0) n += r;
    s[n] = 0;
    cr_assert_eq(pclose(p), 0, "'%s' failed", cmd);
    return s;
}

/* `moemesh-coordinator run` through two nodes tells the same story as without them, and ends
 * with the per-node summary. */
Test(cluster, run_command_through_two_nodes_tells_the_local_story, .timeout = 120)
{
    char coord[PATH_MAX], cmd[3 * PATH_MAX], errf[] = "/tmp/moemesh-run-XXXXXX";
    tproc_prog_path("moemesh-coordinator", coord, sizeof(coord));
    const char *a = spawn_node(NULL), *b = spawn_node(NULL);
    int fd = mkstemp(errf);
    cr_assert_geq(fd, 0);
    close(fd);
    const char *args = "-m " GOLDEN "/stories-moe-f32.gguf -p 'Once upon a time' -n 40 --seed 3 "
                       "--temp 0.8";
    snprintf(cmd, sizeof(cmd), "%s run %s 2>/dev/null", coord, args);
    char *local = run_cmd(cmd);
    snprintf(cmd, sizeof(cmd), "%s run %s --expert-node %s --expert-nodes %s --wire-type f32 "
             "2>%s", coord, args, a, b + 6, errf);
    char *remote = run_cmd(cmd);
    cr_expect_str_eq(remote, local);
    cr_expect_gt(strlen(local), 40);
    FILE *f = fopen(errf, "r");
    char *err = malloc(1 << 16);
    size_t n = fread(err, 1, (1 << 16) - 1, f);
    err[n] = 0;
    fclose(f);
    unlink(errf);
    char want[256];
    snprintf(want, sizeof(want), "node 1 %s", b);
    cr_expect_not_null(strstr(err, want), "summary names '%s':\n%s", want, err);
    cr_expect_not_null(strstr(err, "bytes per token"), "summary:\n%s", err);
    free(err), free(local), free(remote);
}

/* `run --replicas 2` (and its MOEMESH_REPLICAS twin) over two nodes tells the local story;
 * more replicas than nodes is a usage error that says so. */
Test(cluster, run_command_with_replicas_tells_the_local_story, .timeout = 120)
{
    char coord[PATH_MAX], cmd[3 * PATH_MAX];
    tproc_prog_path("moemesh-coordinator", coord, sizeof(coord));
    const char *a = spawn_node(NULL), *b = spawn_node(NULL);
    const char *args = "-m " GOLDEN "/stories-moe-f32.gguf -p 'Once upon a time' -n 24 --seed 5 "
                       "--temp 0.8";
    snprintf(cmd, sizeof(cmd), "%s run %s 2>/dev/null", coord, args);
    char *local = run_cmd(cmd);
    snprintf(cmd, sizeof(cmd), "%s run %s --expert-nodes %s,%s --replicas 2 2>/dev/null", coord,
             args, a, b);
    char *remote = run_cmd(cmd);
    cr_expect_str_eq(remote, local);
    free(remote);
    snprintf(cmd, sizeof(cmd), "MOEMESH_REPLICAS=2 %s run %s --expert-nodes %s,%s 2>/dev/null",
             coord, args, a, b);
    remote = run_cmd(cmd);
    cr_expect_str_eq(remote, local);
    free(remote);
    snprintf(cmd, sizeof(cmd), "%s run %s --expert-nodes %s,%s --replicas 3 2>&1", coord, args,
             a, b);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    char out[4096];
    size_t n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = 0;
    cr_expect_neq(pclose(p), 0, "3 replicas on 2 nodes must fail");
    cr_expect_not_null(strstr(out, "--replicas 3 needs at least 3 expert nodes"), "%s", out);
    free(local);
}

/* ---------------------------------------------------------------- CURVE */

/* With --curve-keys on both sides the cluster works; a coordinator whose public key the nodes
 * do not list is refused (start-up fails at the deadline, naming the node). */
Test(cluster, curve_keys_admit_ours_and_refuse_others, .timeout = 60)
{
    char prog[PATH_MAX], cmd[3 * PATH_MAX];
    expert_path(prog, sizeof(prog));
    char good[] = "/tmp/moemesh-curve-XXXXXX", bad[] = "/tmp/moemesh-curve-XXXXXX";
    cr_assert_not_null(mkdtemp(good));
    cr_assert_not_null(mkdtemp(bad));
    snprintf(cmd, sizeof(cmd), "'%s' keygen %s >/dev/null && '%s' keygen %s >/dev/null && "
             "cp %s/node.pub %s/node.pub", prog, good, prog, bad, good, bad);
    cr_assert_eq(system(cmd), 0, "%s", cmd);

    model_t *m = load("qwen2moe-tiny-f32");
    const char *eps[1] = {spawn_node_curve(NULL, good)};
    coord_cluster_config_t cc = config(1, eps);
    cc.connect_ms = 2000;
    cc.curve_dir = bad;
    char *log;
    coord_cluster_t *c = start_cluster(&cc, m, NULL, &log);
    cr_expect_null(c, "a coordinator key the node does not list must be refused");
    cr_expect_not_null(strstr(log, "expert node 0 ("), "the log names the node");
    free(log);
    coord_cluster_free(c);

    cc.curve_dir = good;
    c = coord_cluster_new(&cc, m);
    cr_assert_not_null(c, "our own keys are accepted");
    kern_pool_t *pool = kern_pool_new(1);
    coord_experts_t *rx = coord_experts_remote_new(c, 8);
    coord_experts_t *lx = coord_experts_local_new(m, pool, 8);
    const int E = m->hp.n_embd;
    float x[8 * 256], w[16], a[8 * 256], b[8 * 256];
    int32_t ids[16];
    for (int i = 0; i < 8 * E; i++) x[i] = (float)((i * 37) % 101 - 50) / 50.0f;
    for (int i = 0; i < 16; i++) ids[i] = (i * 3 + i / 2) % m->hp.n_expert, w[i] = 0.25f + i % 3;
    for (int t = 0; t < 8; t++)
        if (ids[2 * t] == ids[2 * t + 1]) ids[2 * t + 1] = (ids[2 * t] + 1) % m->hp.n_expert;
    cr_assert_eq(lx->vt->compute(lx, 1, 8, 2, x, ids, w, a), 0);
    cr_assert_eq(rx->vt->compute(rx, 1, 8, 2, x, ids, w, b), 0);
    cr_expect_arr_eq(a, b, sizeof(float) * 8 * E, "two experts per token: bitwise the local sum");
    coord_experts_free(rx);
    coord_experts_free(lx);
    kern_pool_free(pool);
    coord_cluster_free(c);
    model_free(m);
    snprintf(cmd, sizeof(cmd), "rm -rf %s %s", good, bad);
    cr_expect_eq(system(cmd), 0);
}

/* Load-aware placement (coordinator/cluster.c place() with a load profile and capacities,
 * model/plan.c model_plan_new_load): hot experts get extra copies on distinct nodes, unused
 * owner slots are -1, the capacities are the declared ones, and the answers do not change.
 * Then without --node-cap: every node measured and reported its capacity in WELCOME. */
Test(cluster, load_aware_placement_equals_local_path, .timeout = 240)
{
    const char *name = "qwen3moe-tiny-f32";
    char path[512], prof[64];
    snprintf(path, sizeof(path), "%s/%s.gguf", GOLDEN, name);
    snprintf(prof, sizeof(prof), "/tmp/moemesh-prof-%d.json", (int)getpid());
    model_t *m = NULL;
    cr_assert_eq(model_load(path, &m), 0);
    const int L = m->hp.n_layer, E = m->hp.n_expert;
    uint64_t *tok = calloc((size_t)L * E, sizeof(uint64_t));
    for (int l = 0; l < L; l++)
        for (int e = 0; m->layers[l].gate_exps && e < E; e++)
            tok[l * E + e] = 10000 / ((uint64_t)((e + l) % E) + 1) / ((uint64_t)((e + l) % E) + 1);
    cr_assert_eq(coord_load_profile_write(prof, "test", L, E, tok), 0);
    const char *eps[3];
    for (int i = 0; i < 3; i++) eps[i] = spawn_node(NULL);
    coord_cluster_config_t cc = config(3, eps);
    cc.replicas = 3;
    cc.load_profile = prof, cc.node_cap = "100,200,400";
    coord_cluster_t *c = coord_cluster_new(&cc, m);
    cr_assert_not_null(c);
    unlink(prof);
    for (int i = 0; i < 3; i++) cr_assert_float_eq(coord_cluster_capacity(c, i), 100 << i, 0);
    int extra = 0;
    for (int l = 0; l < L; l++) {
        for (int e = 0; m->layers[l].gate_exps && e < E; e++) {
            const int *o = coord_cluster_owners(c, l, e);
            cr_assert_not_null(o);
            int k = 1;
            while (k < 3 && o[k] >= 0) k++;
            for (int r = k; r < 3; r++) cr_assert_eq(o[r], -1, "used slots come first");
            for (int r = 0; r < k; r++)
                for (int q = 0; q < r; q++) cr_assert_neq(o[q], o[r]);
            extra += k - 1;
            if ((e + l) % E == 0) cr_assert_gt(k, 1, "layer %d's hottest has one copy", l);
        }
    }
    cr_assert_gt(extra, 0);
    int32_t ids[MAX_TOK];
    int n_prompt, N = tlogits_golden_ids(name, ids, MAX_TOK, &n_prompt);
    kern_pool_t *pool = kern_pool_new(2);
    coord_experts_t *lx = coord_experts_local_new(m, pool, N);
    coord_experts_t *rx = coord_experts_remote_new(c, N);
    int32_t gref[MAX_TOK], gout[MAX_TOK];
    int over;
    compare(m, lx, rx, pool, ids, N, n_prompt, 1e-5, &over, gref, gout);
    cr_expect_eq(over, 0);
    for (int i = 0; i < N - n_prompt; i++) cr_expect_eq(gout[i], gref[i]);
    coord_experts_free(rx);
    coord_cluster_free(c);

    /* No capacities given: the nodes' own measurements, scaled to this model's experts. */
    cc.node_cap = NULL, cc.load_profile = NULL, cc.balance = true, cc.replicas = 1;
    c = coord_cluster_new(&cc, m);
    cr_assert_not_null(c);
    for (int i = 0; i < 3; i++) cr_assert_gt(coord_cluster_capacity(c, i), 0, "node %d", i);
    coord_cluster_free(c);
    free(tok);
    coord_experts_free(lx);
    kern_pool_free(pool);
    model_free(m);
    reap_all();
}
