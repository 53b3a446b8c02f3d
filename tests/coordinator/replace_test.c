/* Live re-placement (coordinator/replace.c). The diff step on synthetic placements: which
 * (pair, node) copies move, and waves that keep every node within its memory. Then with real
 * processes on 127.0.0.1 and a model with skewed routing (moemesh-model gen --router-skew):
 * three expert nodes of unequal declared capacity, a greedy stream during which POST
 * /admin/rebalance moves experts, checked to end with the text of local experts and of the
 * cluster before the move, with the move visible in the metrics (bytes streamed, node expert
 * counts changed, imbalance lowered); and a node killed mid-move (--replicas 2): the move
 * aborts, the table stays, the stream still ends with the local text. Children die with the
 * test (tproc.c); their logs and the model are removed at the end.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "coordinator/coord-int.h"
#include "tproc.h"
#include "wire/wire.h"

/* ---- the diff, on synthetic tables ---- */

#define MB (1u << 20)

/* One layer of E experts, pairs of pb bytes: experts [0, E/2) on node 0, the rest on node 1. */
static void halves(int *own, int l, int E, int a, int b)
{
    for (int e = 0; e < E; e++) own[l * E + e] = e < E / 2 ? a : b;
}

Test(replace_diff, names_the_copies_that_move)
{
    enum { L = 2, E = 4, N = 2 };
    int old[L * E], next[L * E];
    uint64_t pb[L * E], mem[N] = {UINT64_MAX, UINT64_MAX};
    for (int i = 0; i < L * E; i++) pb[i] = MB;
    halves(old, 0, E, 0, 0), halves(old, 1, E, 0, 1);
    halves(next, 0, E, 0, 1), halves(next, 1, E, 0, 1); /* layer 0: experts 2, 3 to node 1 */
    coord__replace_diff_t d;
    char why[200];
    cr_assert_eq(coord__replace_diff(L, E, 1, N, old, next, pb, mem, &d, why, sizeof(why)), 0);
    cr_expect_eq(d.n_waves, 1);
    cr_expect_eq(d.wave[0], 0);
    cr_expect_eq(d.wave[1], -1, "an unchanged layer needs no wave");
    cr_expect_eq(d.adds, 2);
    cr_expect_eq(d.drops, 2);
    cr_expect_eq(d.bytes_in[0], 0);
    cr_expect_eq(d.bytes_in[1], 2 * MB);
    cr_expect_eq(d.bytes, 2 * MB);
    coord__replace_diff_deinit(&d);
}

/* A new primary order with the same holders changes the table but moves no bytes. */
Test(replace_diff, reordered_replicas_swap_without_bytes)
{
    enum { L = 1, E = 2, N = 3, R = 2 };
    int old[] = {0, 1, 1, 2}, next[] = {1, 0, 1, 2};
    uint64_t pb[] = {MB, MB}, mem[N] = {UINT64_MAX, UINT64_MAX, UINT64_MAX};
    coord__replace_diff_t d;
    char why[200];
    cr_assert_eq(coord__replace_diff(L, E, R, N, old, next, pb, mem, &d, why, sizeof(why)), 0);
    cr_expect_eq(d.n_waves, 1);
    cr_expect_eq(d.wave[0], 0);
    cr_expect_eq(d.adds + d.drops, 0);
    cr_expect_eq(d.bytes, 0);
    coord__replace_diff_deinit(&d);
}

/* Every layer swaps its halves between two nodes. With room for the old pairs plus one
 * layer's new ones, each layer is a wave of its own; with room for two layers' new ones, the
 * layers pair up; with less than one layer's, the move is refused, naming the layer. Every
 * node's peak (what it holds, plus what its wave adds) stays within its memory. */
Test(replace_diff, waves_keep_every_node_within_its_memory)
{
    enum { L = 4, E = 4, N = 2 };
    int old[L * E], next[L * E];
    uint64_t pb[L * E];
    for (int l = 0; l < L; l++) halves(old, l, E, 0, 1), halves(next, l, E, 1, 0);
    for (int i = 0; i < L * E; i++) pb[i] = MB;
    const uint64_t held = (uint64_t)L * E / 2 * MB; /* each node's pairs before and after */
    const struct {
        uint64_t mem;
        int waves;
    } cases[] = {{held + 2 * MB, 4}, {held + 4 * MB, 2}, {held + 8 * MB, 1}, {UINT64_MAX, 1}};
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        uint64_t mem[N] = {cases[c].mem, cases[c].mem};
        coord__replace_diff_t d;
        char why[200];
        cr_assert_eq(coord__replace_diff(L, E, 1, N, old, next, pb, mem, &d, why, sizeof(why)),
                     0, "case %zu: %s", c, why);
        cr_expect_eq(d.n_waves, cases[c].waves, "case %zu", c);
        cr_expect_eq(d.adds, L * E);
        /* Replay the waves: grow, then release, layer by layer as the move does. */
        for (int n = 0; n < N; n++) {
            uint64_t h = held;
            for (int w = 0; w < d.n_waves; w++) {
                uint64_t grow = 0, shrink = 0;
                for (int l = 0; l < L; l++) {
                    if (l > 0 && d.wave[l] >= 0) cr_expect_geq(d.wave[l], d.wave[l - 1]);
                    if (d.wave[l] != w) continue;
                    grow += 2 * MB, shrink += 2 * MB; /* per layer each node gains and loses 2 */
                }
                cr_expect_leq(h + grow, cases[c].mem, "case %zu node %d wave %d", c, n, w);
                h = h + grow - shrink;
            }
        }
        coord__replace_diff_deinit(&d);
    }
    uint64_t tight[N] = {held + MB, held + MB};
    coord__replace_diff_t d;
    char why[200] = "";
    cr_expect_eq(coord__replace_diff(L, E, 1, N, old, next, pb, tight, &d, why, sizeof(why)),
                 -ENOSPC);
    cr_expect_not_null(strstr(why, "layer 0"), "%s", why);
}

/* ---- processes ---- */

#define MAX_TOKENS 160
#define PROMPT "Once upon a time"

enum { COORD = 0, NODE0, NODE1, NODE2, REF, N_PROC };
static tproc_t procs[N_PROC];
static char model_path[128];

static void fini(void)
{
    /* REPLACE_TEST_KEEP_LOGS=1 keeps the logs for a post-mortem. */
    tproc_reap(procs, N_PROC, getenv("REPLACE_TEST_KEEP_LOGS") != NULL);
    if (model_path[0]) unlink(model_path);
}

/* A small qwen3moe with skewed routing: 4 layers of 8 experts, 96 KiB per expert, so a move
 * streams a few MiB and, at 16 KiB per step, spans many forward passes. */
static void init(void)
{
    signal(SIGPIPE, SIG_IGN);
    char gen[512], cmd[1024];
    tproc_prog_path("moemesh-model", gen, sizeof(gen));
    snprintf(model_path, sizeof(model_path), "/tmp/moemesh-replace-%d.gguf", (int)getpid());
    snprintf(cmd, sizeof(cmd),
             "%s gen --arch qwen3moe --layers 4 --dim 64 --heads 4 --kv-heads 2 --experts 8 "
             "--top-k 2 --expert-ff 128 --vocab 512 --type f32 --router-skew 3 -o %s "
             ">/dev/null 2>&1", gen, model_path);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
}

TestSuite(replace, .init = init, .fini = fini);

static void start_proc(int slot, const char *const *argv, char *addr)
{
    tproc_start(&procs[slot], "replace", slot, argv, addr, 128, 15);
}

static int port_of(const char *addr)
{
    int port = 0;
    cr_assert_eq(sscanf(addr, "http://127.0.0.1:%d", &port), 1, "%s", addr);
    return port;
}

static const char *body(bool stream)
{
    return stream ? "{\"prompt\":\"" PROMPT "\",\"max_tokens\":" "160"
                    ",\"temperature\":0,\"stream\":true}"
                  : "{\"prompt\":\"" PROMPT "\",\"max_tokens\":" "160" ",\"temperature\":0}";
}

static char *complete(int port)
{
    char *r = tproc_request(port, "/v1/completions", body(false), 60);
    char *t = tproc_completion_text(r);
    free(r);
    return t;
}

static int rebalance(int port, json_t **j);
static int rebalance_body(int port, const char *body, json_t **j);

/* The greedy text with local experts: a coordinator without nodes. */
static char *reference(void)
{
    char addr[128];
    const char *argv[] = {"moemesh-coordinator", "serve", "-m", model_path, "--port", "0",
                          "--parallel", "1", "-t", "1", NULL};
    start_proc(REF, argv, addr);
    int port = port_of(addr);
    tproc_wait_health(port, 200, 30);
    char *t = complete(port);
    json_t *j;
    cr_expect_eq(rebalance(port, &j), 400, "local experts: nothing to move");
    tproc_kill(&procs[REF]);
    return t;
}

/* Starts the nodes (with --mem-limit node_mem GiB unless NULL) and a coordinator over them with
 * extra flags (NULL-terminated). */
static int start_cluster_mem(const char *const *extra, const char *node_mem)
{
    char eps[3][128], addr[128];
    for (int i = 0; i < 3; i++) {
        const char *argv[] = {"moemesh-expert", "-l", "tcp://127.0.0.1:*", "--mem-limit", node_mem,
                              NULL};
        if (!node_mem) argv[3] = NULL;
        start_proc(NODE0 + i, argv, eps[i]);
    }
    const char *argv[40] = {"moemesh-coordinator", "serve", "-m", model_path, "--port", "0",
                            "--parallel", "1", "-t", "1", "--node-timeout", "2000",
                            "--rebalance-step", "16"};
    int n = 14;
    for (int i = 0; i < 3; i++) argv[n++] = "--expert-node", argv[n++] = eps[i];
    for (int i = 0; extra[i]; i++) argv[n++] = extra[i];
    argv[n] = NULL;
    start_proc(COORD, argv, addr);
    int port = port_of(addr);
    tproc_wait_health(port, 200, 30);
    return port;
}

static int start_cluster(const char *const *extra)
{
    return start_cluster_mem(extra, NULL);
}

/* The text of an SSE answer: every event's choices[0].text in order; NULL when an event is an
 * error or does not parse, or [DONE] is missing. */
static char *stream_text(const char *r)
{
    size_t cap = strlen(r) + 1, len = 0;
    char *text = calloc(1, cap);
    for (const char *p = strstr(r, "\ndata: "); p; p = strstr(p + 1, "\ndata: ")) {
        const char *d = p + 7, *e = strchr(d, '\n');
        if (!e) break;
        if (!strncmp(d, "[DONE]", 6)) return text;
        json_t *j = json_loadb(d, (size_t)(e - d), 0, NULL);
        json_t *ch = j ? json_array_get(json_object_get(j, "choices"), 0) : NULL;
        const char *t = ch ? json_string_value(json_object_get(ch, "text")) : NULL;
        if (!t || json_object_get(j, "error")) {
            json_decref(j);
            break;
        }
        size_t n = strlen(t);
        cr_assert_lt(len + n, cap);
        memcpy(text + len, t, n + 1);
        len += n;
        json_decref(j);
    }
    free(text);
    return NULL;
}

typedef struct {
    int port;
    atomic_int first, done;
    char *raw;
} stream_t;

static void *stream_run(void *arg)
{
    stream_t *s = arg;
    int fd = tproc_open_request(s->port, "/v1/completions", body(true));
    s->raw = fd < 0 ? strdup("") : tproc_read_all(fd, 90, NULL, &s->first);
    atomic_store(&s->done, 1);
    return NULL;
}

/* Sum of the samples of series name whose labels contain label (NULL: any); -1 when none. */
static double metric(int port, const char *name, const char *label)
{
    char *r = tproc_request(port, "/metrics", NULL, 10);
    cr_assert_eq(tproc_status(r), 200);
    double sum = -1;
    size_t nl = strlen(name);
    for (char *p = strstr(r, name); p; p = strstr(p + 1, name)) {
        if (p[-1] != '\n' || (p[nl] != '{' && p[nl] != ' ')) continue;
        char *e = strchr(p, '\n');
        if (!e) break;
        *e = 0;
        if (!label || strstr(p, label)) sum = (sum < 0 ? 0 : sum) + atof(strrchr(p, ' ') + 1);
        *e = '\n';
    }
    free(r);
    return sum;
}

static void node_experts(int port, int out[3])
{
    char label[32];
    for (int i = 0; i < 3; i++) {
        snprintf(label, sizeof(label), "node=\"%d\"", i);
        out[i] = (int)metric(port, "moemesh:node_experts", label);
    }
}

/* POST /admin/rebalance with body: the status, and the JSON answer in *j (200 only). */
static int rebalance_body(int port, const char *body, json_t **j)
{
    char *r = tproc_request(port, "/admin/rebalance", body, 10);
    int status = tproc_status(r);
    const char *b = strstr(r, "\r\n\r\n");
    *j = status == 200 && b ? json_loads(b + 4, 0, NULL) : NULL;
    free(r);
    return status;
}

static int rebalance(int port, json_t **j)
{
    return rebalance_body(port, "{}", j);
}

/* Waits until the rebalance counter for outcome reaches want (limit_s at most). */
static void wait_moves(int port, const char *outcome, double want, double limit_s)
{
    char label[64];
    snprintf(label, sizeof(label), "outcome=\"%s\"", outcome);
    double t0 = wire_now();
    while (metric(port, "moemesh:rebalance_moves_total", label) < want) {
        cr_assert_lt(wire_now() - t0, limit_s, "no %s move within %.0f s", outcome, limit_s);
        usleep(20000);
    }
}

/* Starts a greedy stream and waits for its first bytes. */
static void stream_start(stream_t *s, pthread_t *th, int port)
{
    *s = (stream_t){.port = port};
    cr_assert_eq(pthread_create(th, NULL, stream_run, s), 0);
    double t0 = wire_now();
    while (!atomic_load(&s->first)) {
        cr_assert_lt(wire_now() - t0, 30, "the stream did not start");
        usleep(1000);
    }
}

static char *stream_end(stream_t *s, pthread_t th)
{
    pthread_join(th, NULL);
    cr_assert_eq(tproc_status(s->raw), 200, "%s", s->raw);
    char *t = stream_text(s->raw);
    cr_assert_not_null(t, "the stream did not end cleanly: %s", s->raw);
    free(s->raw);
    return t;
}

/* Three nodes declared 4:2:1 fast (capacity-aware placement for even load); the skewed
 * routing makes that placement uneven, so a move lowers the imbalance. The stream's text must
 * not change, nor later answers; the move must have streamed bytes and changed owners. */
Test(replace, live_move_during_generation_keeps_greedy_output, .timeout = 180)
{
    char *want = reference();
    const char *extra[] = {"--node-cap", "4,2,1", NULL};
    int port = start_cluster(extra);
    char *before = complete(port); /* also the load the plan weighs */
    cr_assert_str_eq(before, want, "the cluster's text differs from local experts");
    int owners0[3], owners1[3];
    node_experts(port, owners0);

    stream_t s;
    pthread_t th;
    stream_start(&s, &th, port);
    json_t *j;
    cr_assert_eq(rebalance(port, &j), 200);
    cr_assert_not_null(j);
    cr_assert(json_is_true(json_object_get(j, "started")), "%s",
              json_string_value(json_object_get(j, "reason")));
    double ib = json_number_value(json_object_get(j, "imbalance_before"));
    double ia = json_number_value(json_object_get(j, "imbalance_after"));
    json_int_t bytes = json_integer_value(json_object_get(j, "bytes_to_move"));
    printf("replace: imbalance %.3f -> %.3f, %lld bytes to move\n", ib, ia, (long long)bytes);
    cr_expect_lt(ia, ib);
    cr_expect_gt(bytes, 0);
    json_decref(j);
    /* One move at a time. */
    cr_expect_eq(rebalance(port, &j), 409);
    json_decref(j);
    wait_moves(port, "finished", 1, 60);
    bool live = !atomic_load(&s.done);
    char *got = stream_end(&s, th);
    cr_expect_str_eq(got, want, "the stream's text changed across the move");
    free(got);
    printf("replace: the move finished %s the stream ended\n", live ? "before" : "after");
    cr_expect(live, "the move should finish while the stream still generates (16 KiB a step)");

    cr_expect_eq(metric(port, "moemesh:rebalance_moves_total", "outcome=\"aborted\""), 0);
    cr_expect_geq(metric(port, "moemesh:rebalance_bytes_total", NULL), (double)bytes);
    cr_expect_leq(metric(port, "moemesh:rebalance_imbalance", "after"),
                  metric(port, "moemesh:rebalance_imbalance", "before"));
    node_experts(port, owners1);
    cr_expect(owners0[0] != owners1[0] || owners0[1] != owners1[1] || owners0[2] != owners1[2],
              "no node's expert count changed");
    cr_expect_eq(tproc_log_count(&procs[COORD], "re-placement done"), 1);
    got = complete(port);
    cr_expect_str_eq(got, want, "the text after the move differs");
    free(got);
    free(before);
    free(want);
    tproc_assert_alive(&procs[COORD]);
}

/* --replicas 2 (every expert on two nodes): a node killed while the move streams aborts it;
 * the old table stays, the replicas serve, and the text does not change. Two copies of
 * everything leave little to gain (the queue-depth split evens the load), so the move is
 * forced; a body that is not a JSON object, or a force that is not a boolean, is a 400. */
Test(replace, node_killed_mid_move_aborts_and_service_continues, .timeout = 180)
{
    char *want = reference();
    const char *extra[] = {"--replicas", "2", "--rebalance-step", "4", NULL};
    int port = start_cluster(extra);
    char *before = complete(port);
    cr_assert_str_eq(before, want);
    int owners0[3], owners1[3];
    node_experts(port, owners0);

    json_t *j;
    cr_expect_eq(rebalance_body(port, "[1]", &j), 400);
    cr_expect_eq(rebalance_body(port, "{\"force\":1}", &j), 400);
    stream_t s;
    pthread_t th;
    stream_start(&s, &th, port);
    cr_assert_eq(rebalance_body(port, "{\"force\":true}", &j), 200);
    cr_assert(json_is_true(json_object_get(j, "started")), "%s",
              json_string_value(json_object_get(j, "reason")));
    json_decref(j);
    /* Mid-move: once shard data is on its way. */
    double t0 = wire_now();
    while (metric(port, "moemesh:rebalance_bytes_total", NULL) <= 0) {
        cr_assert_lt(wire_now() - t0, 30, "the move streamed nothing");
        usleep(2000);
    }
    kill(procs[NODE1].pid, SIGKILL);
    waitpid(procs[NODE1].pid, NULL, 0);
    procs[NODE1].pid = 0;
    wait_moves(port, "aborted", 1, 60);
    char *got = stream_end(&s, th);
    cr_expect_str_eq(got, want, "the stream's text changed");
    free(got);
    cr_expect_eq(metric(port, "moemesh:rebalance_moves_total", "outcome=\"finished\""), 0);
    cr_expect_gt(tproc_log_count(&procs[COORD], "re-placement aborted"), 0);
    node_experts(port, owners1);
    for (int i = 0; i < 3; i++) cr_expect_eq(owners1[i], owners0[i], "node %d's table changed", i);
    got = complete(port);
    cr_expect_str_eq(got, want, "the text after the aborted move differs");
    free(got);
    cr_expect_eq(tproc_health(port, NULL), 200);
    free(before);
    free(want);
    tproc_assert_alive(&procs[COORD]);
}

/* The online trigger: checked every half second, the skewed load's imbalance (above 1.15)
 * starts a move by itself; greedy answers stay those of local experts. */
Test(replace, periodic_check_moves_when_imbalanced, .timeout = 180)
{
    char *want = reference();
    const char *extra[] = {"--node-cap", "4,2,1", "--rebalance-every", "0.5", NULL};
    int port = start_cluster(extra);
    char *got = complete(port);
    cr_assert_str_eq(got, want);
    free(got);
    wait_moves(port, "finished", 1, 60);
    cr_expect_gt(metric(port, "moemesh:rebalance_imbalance", "before"), 1.15);
    cr_expect_lt(metric(port, "moemesh:rebalance_imbalance", "after"),
                 metric(port, "moemesh:rebalance_imbalance", "before"));
    got = complete(port);
    cr_expect_str_eq(got, want, "the text after the move differs");
    free(got);
    /* Moves settle once the window stops changing. A check during the first stream plans on
     * the part of the load seen so far, so on a loaded host a second move may follow once the
     * rest arrives (CI saw one); what must not happen is moving on and on. */
    const char *started = "outcome=\"started\"";
    double t0 = wire_now(), n;
    while ((n = metric(port, "moemesh:rebalance_moves_total", started)) >
           metric(port, "moemesh:rebalance_moves_total", "outcome=\"finished\"") +
               metric(port, "moemesh:rebalance_moves_total", "outcome=\"aborted\"")) {
        cr_assert_lt(wire_now() - t0, 60, "a move did not end within 60 s");
        usleep(20000);
    }
    usleep(1500000);
    cr_expect_eq(metric(port, "moemesh:rebalance_moves_total", started), n,
                 "moves went on with an unchanged window");
    cr_expect_leq(n, 3, "%.0f moves for one load", n);
    free(want);
    tproc_assert_alive(&procs[COORD]);
}

/* Nodes whose memory (2.2 MiB of weights each, WELCOME says so) cannot hold their old and new
 * pairs of every layer at once: the move goes in waves of layers, each released before the
 * next grows (a node would refuse an ASSIGN beyond its limit), and the text stays the same.
 * With 1.8 MiB not even one layer fits beside the rest: refused, with the reason. */
Test(replace, tight_memory_moves_in_waves, .timeout = 180)
{
    char *want = reference();
    const char *extra[] = {"--node-cap", "4,2,1", NULL};
    int port = start_cluster_mem(extra, "0.0022");
    char *got = complete(port);
    cr_assert_str_eq(got, want);
    free(got);
    json_t *j;
    cr_assert_eq(rebalance(port, &j), 200);
    cr_assert(json_is_true(json_object_get(j, "started")), "%s",
              json_string_value(json_object_get(j, "reason")));
    cr_expect_geq(json_integer_value(json_object_get(j, "waves")), 2);
    json_decref(j);
    wait_moves(port, "finished", 1, 60);
    cr_expect_gt(tproc_log_count(&procs[COORD], "wave 2 of"), 0);
    for (int i = NODE0; i <= NODE2; i++)
        cr_expect_eq(tproc_log_count(&procs[i], "--mem-limit is"), 0, "node %d refused", i);
    got = complete(port);
    cr_expect_str_eq(got, want, "the text after the move differs");
    free(got);
    tproc_reap(procs, N_PROC, false);

    port = start_cluster_mem(extra, "0.0018");
    got = complete(port);
    free(got);
    cr_assert_eq(rebalance(port, &j), 200);
    cr_expect(json_is_false(json_object_get(j, "started")));
    const char *why = json_string_value(json_object_get(j, "reason"));
    cr_expect(why && strstr(why, "does not fit"), "%s", why ? why : "(none)");
    json_decref(j);
    free(want);
}
