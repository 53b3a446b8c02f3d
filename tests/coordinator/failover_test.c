/* Replica failover and slow-node re-routing with real processes on 127.0.0.1: three
 * moemesh-expert nodes, moemesh-coordinator serve --replicas 2 over them, and several greedy
 * streams at once through the scheduler while a node is killed (SIGKILL), stopped (SIGSTOP), or
 * sits behind an in-process wire proxy that delays every byte. Checked: every stream completes
 * with exactly the text the coordinator computes with local experts (which remote.c's per-pair
 * combine reproduces bitwise), /health stays 200 throughout, the metrics show the failover or
 * the re-routing, the stall a failover causes stays within its bound, and a stopped node's late
 * RESULTs are dropped. Children get PR_SET_PDEATHSIG and are killed and reaped in the suite's
 * fini; their logs go to files named after this process, removed at the end.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "tproc.h"
#include "wire/wire.h"

#define MODEL "../shared/golden/stories-moe-f32.gguf"
#define N_STREAMS 4
#define MAX_TOKENS 96

static const char *const prompts[N_STREAMS] = {"Once upon a time", "Lily and Tom went",
                                               "The little dog", "One day, a bird"};

enum { COORD = 0, NODE0, NODE1, NODE2, REF, N_PROC };
static tproc_t procs[N_PROC];

static void start_proc(int slot, const char *const *argv, char *addr)
{
    tproc_start(&procs[slot], "failover", slot, argv, addr, 128, 15);
}

static bool log_has(int slot, const char *needle)
{
    return tproc_log_count(&procs[slot], needle) > 0;
}

static void assert_alive(int slot)
{
    tproc_assert_alive(&procs[slot]);
}

static void fini(void)
{
    /* FAILOVER_TEST_KEEP_LOGS=1 keeps the logs for a post-mortem. */
    tproc_reap(procs, N_PROC, getenv("FAILOVER_TEST_KEEP_LOGS") != NULL);
}

static void init(void)
{
    signal(SIGPIPE, SIG_IGN);
}

TestSuite(failover, .init = init, .fini = fini);

static void start_node(int slot, char *ep)
{
    const char *argv[] = {"moemesh-expert", "-l", "tcp://127.0.0.1:*", NULL};
    start_proc(slot, argv, ep);
}

static void body_of(char *json, size_t cap, int i, bool stream)
{
    snprintf(json, cap, "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0%s}", prompts[i],
             MAX_TOKENS, stream ? ",\"stream\":true" : "");
}

/* The greedy completion of prompts[i], not streamed. */
static char *complete(int port, int i)
{
    char body[256];
    body_of(body, sizeof(body), i, false);
    char *r = tproc_request(port, "/v1/completions", body, 60);
    char *t = tproc_completion_text(r);
    free(r);
    return t;
}

/* The text of an SSE answer: every "data: {..}" event's choices[0].text in order; NULL when
 * an event is an error or does not parse, or [DONE] is missing. */
static char *stream_text(const char *r)
{
    size_t cap = strlen(r) + 1, len = 0;
    char *text = calloc(1, cap);
    bool done = false;
    for (const char *p = strstr(r, "\ndata: "); p; p = strstr(p + 1, "\ndata: ")) {
        const char *d = p + 7, *e = strchr(d, '\n');
        if (!e) break;
        if (!strncmp(d, "[DONE]", 6)) {
            done = true;
            break;
        }
        json_t *j = json_loadb(d, (size_t)(e - d), 0, NULL);
        json_t *ch = j ? json_array_get(json_object_get(j, "choices"), 0) : NULL;
        const char *t = ch ? json_string_value(json_object_get(ch, "text")) : NULL;
        if (!t || json_object_get(j, "error")) {
            json_decref(j);
            free(text);
            return NULL;
        }
        size_t n = strlen(t);
        CHECK(len + n < cap);
        memcpy(text + len, t, n + 1);
        len += n;
        json_decref(j);
    }
    if (!done) {
        free(text);
        return NULL;
    }
    return text;
}

typedef struct {
    int port, i;
    atomic_int *first; /* raised at the stream's first bytes */
    char *raw;         /* the whole answer */
    double gap;        /* longest silence between reads (s) */
} stream_t;

static void *stream_run(void *arg)
{
    stream_t *s = arg;
    char body[256];
    body_of(body, sizeof(body), s->i, true);
    int fd = tproc_open_request(s->port, "/v1/completions", body);
    s->raw = fd < 0 ? strdup("") : tproc_read_all(fd, 60, &s->gap, s->first);
    return NULL;
}

/* Sum of every sample of series name whose labels contain label (NULL: any), -1 when none. */
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
        if (!label || strstr(p, label)) {
            const char *v = strrchr(p, ' ');
            sum = (sum < 0 ? 0 : sum) + atof(v + 1);
        }
        *e = '\n';
    }
    free(r);
    return sum;
}

/* The greedy texts with local experts: a coordinator without nodes. */
static void reference(char *want[N_STREAMS])
{
    char addr[128];
    const char *argv[] = {"moemesh-coordinator", "serve", "-m", MODEL, "--port", "0",
                          "--parallel", "1", "-t", "1", NULL};
    start_proc(REF, argv, addr);
    int port = 0;
    cr_assert_eq(sscanf(addr, "http://127.0.0.1:%d", &port), 1, "%s", addr);
    tproc_wait_health(port, 200, 30);
    for (int i = 0; i < N_STREAMS; i++) want[i] = complete(port, i);
    tproc_kill(&procs[REF]);
}

static int start_coord(const char *const eps[3])
{
    char addr[128];
    const char *argv[] = {"moemesh-coordinator", "serve", "-m", MODEL, "--port", "0",
                          "--parallel", "4", "-t", "1", "--node-timeout", "2000",
                          "--replicas", "2", "--expert-node", eps[0], "--expert-node", eps[1],
                          "--expert-node", eps[2], NULL};
    start_proc(COORD, argv, addr);
    int port = 0;
    cr_assert_eq(sscanf(addr, "http://127.0.0.1:%d", &port), 1, "%s", addr);
    tproc_wait_health(port, 200, 30);
    return port;
}

/* Runs the N_STREAMS streams at once; once each has its first bytes, fault() (if given) runs;
 * /health is polled every 50 ms until all end and must stay 200. Each stream's text must be
 * want's; returns the longest silence any stream saw. */
static double run_streams(int port, char *want[N_STREAMS], void (*fault)(void))
{
    atomic_int first = 0;
    stream_t st[N_STREAMS];
    pthread_t th[N_STREAMS];
    for (int i = 0; i < N_STREAMS; i++) {
        st[i] = (stream_t){.port = port, .i = i, .first = &first};
        cr_assert_eq(pthread_create(&th[i], NULL, stream_run, &st[i]), 0);
    }
    double t0 = wire_now();
    while (atomic_load(&first) < N_STREAMS && wire_now() - t0 < 30) usleep(1000);
    if (fault) fault();
    /* Every stream takes at least one silence of a failover; /health is checked meanwhile. */
    int polls = 0;
    for (int i = 0; i < 40; i++, polls++) {
        cr_assert_eq(tproc_health(port, NULL), 200, "/health left 200 during the fault");
        usleep(50000);
    }
    double gap = 0;
    for (int i = 0; i < N_STREAMS; i++) {
        pthread_join(th[i], NULL);
        cr_assert_eq(tproc_status(st[i].raw), 200, "%s", st[i].raw);
        char *got = stream_text(st[i].raw);
        cr_assert_not_null(got, "stream %d did not end cleanly: %s", i, st[i].raw);
        cr_expect_str_eq(got, want[i], "stream %d ('%s') differs", i, prompts[i]);
        if (st[i].gap > gap) gap = st[i].gap;
        free(got);
        free(st[i].raw);
    }
    cr_assert_eq(tproc_health(port, NULL), 200);
    (void)polls;
    return gap;
}

static void setup(char *want[N_STREAMS], char eps[3][128], int *port)
{
    reference(want);
    for (int i = 0; i < 3; i++) start_node(NODE0 + i, eps[i]);
    const char *e[3] = {eps[0], eps[1], eps[2]};
    *port = start_coord(e);
    /* Undisturbed: the cluster's text is the local one. */
    for (int i = 0; i < N_STREAMS; i++) {
        char *got = complete(*port, i);
        cr_assert_str_eq(got, want[i], "undisturbed '%s' differs from local experts", prompts[i]);
        free(got);
    }
}

static void kill_node1(void)
{
    kill(procs[NODE1].pid, SIGKILL);
}

static void stop_node1(void)
{
    kill(procs[NODE1].pid, SIGSTOP);
}

/* A node is killed while four streams generate: each ends with the undisturbed text, /health
 * stays 200, and the metrics count the failover. The lost connection is noticed at once
 * (ZeroMQ's monitor), else the node timeout (2 s) bounds it; 8 s allows for a loaded host. */
Test(failover, killed_node_mid_generation_is_served_by_replicas, .timeout = 120)
{
    char *want[N_STREAMS], eps[3][128];
    int port;
    setup(want, eps, &port);
    double gap = run_streams(port, want, kill_node1);
    waitpid(procs[NODE1].pid, NULL, 0);
    procs[NODE1].pid = 0;
    printf("failover: SIGKILL mid-generation, longest stall of a stream %.2f s\n", gap);
    cr_expect_lt(gap, 8.0, "a stream stalled %.1f s", gap);
    cr_expect(log_has(COORD, "re-sent to replicas") || log_has(COORD, "connection lost"));
    /* Later requests are served by the replicas alone. */
    for (int i = 0; i < N_STREAMS; i++) {
        char *got = complete(port, i);
        cr_expect_str_eq(got, want[i]);
        free(got);
        free(want[i]);
    }
    cr_expect_gt(metric(port, "moemesh:node_failovers_total", "node=\"1\""), 0,
                 "no failover counted");
    cr_expect_eq(metric(port, "moemesh:node_up", "node=\"1\""), 0);
    cr_expect_eq(tproc_health(port, NULL), 200);
    assert_alive(COORD);
}

/* A node is stopped while four streams generate: detected by the node timeout (2 s) or its
 * silence (3 s), its pairs re-sent to replicas, the same texts; when it resumes, RESULTs of the
 * requests given up are dropped by id, it rejoins, and answers stay the same. */
Test(failover, stopped_node_mid_generation_is_served_by_replicas, .timeout = 120)
{
    char *want[N_STREAMS], eps[3][128];
    int port;
    setup(want, eps, &port);
    double gap = run_streams(port, want, stop_node1);
    printf("failover: SIGSTOP mid-generation, longest stall of a stream %.2f s\n", gap);
    cr_expect_lt(gap, 8.0, "a stream stalled %.1f s", gap);
    /* Down by now (mid-call), or within the idle heartbeat bound should the streams have
     * ended first; the replicas serve meanwhile. */
    double t1 = wire_now();
    while (metric(port, "moemesh:node_up", "node=\"1\"") != 0) {
        cr_assert_lt(wire_now() - t1, 10.0, "the stopped node was never marked down");
        usleep(100000);
    }
    for (int i = 0; i < N_STREAMS; i++) {
        char *got = complete(port, i);
        cr_expect_str_eq(got, want[i]);
        free(got);
    }
    cr_expect_eq(tproc_health(port, NULL), 200);
    cr_expect_gt(metric(port, "moemesh:node_failovers_total", "node=\"1\""), 0);
    cr_assert_eq(kill(procs[NODE1].pid, SIGCONT), 0);
    /* Back: it is probed, answers, and is re-assigned (nothing to stream, it kept its shard). */
    double t0 = wire_now();
    while (!log_has(COORD, "expert node 1 (") || !log_has(COORD, "is back")) {
        cr_assert_lt(wire_now() - t0, 15.0, "the resumed node did not rejoin");
        usleep(100000);
    }
    /* When the stop caught requests in flight (the streams stalled), their RESULTs come late:
     * dropped by request id and counted stale, never combined. */
    if (gap > 1.0) {
        t0 = wire_now();
        while (metric(port, "moemesh:node_stale_total", "node=\"1\"") <= 0) {
            cr_assert_lt(wire_now() - t0, 10.0, "the late RESULT was not seen being dropped");
            usleep(100000);
        }
    }
    cr_expect_eq(metric(port, "moemesh:node_up", "node=\"1\""), 1);
    run_streams(port, want, NULL);
    for (int i = 0; i < N_STREAMS; i++) free(want[i]);
    assert_alive(COORD);
}

/* ---- a slow node: behind a wire proxy that delays each direction ---- */

typedef struct {
    uv_loop_t loop;
    uv_async_t wake;
    atomic_int cmd;           /* for wake: 1 swap to a proxy without delay, 2 stop */
    wire_proxy_config_t cfg;
    wire_proxy_t *px;         /* NULL between a swap's close and the new one */
    atomic_int swapped;       /* 1 once the undelayed proxy listens, -1 if it could not */
    pthread_t th;
} proxy_box_t;

/* The delayed proxy is gone: the same port, no delay (the node's link "recovers"). */
static void on_closed(void *arg)
{
    proxy_box_t *b = arg;
    b->cfg.delay_ms = 0;
    b->px = wire_proxy_new(&b->loop, &b->cfg);
    atomic_store(&b->swapped, b->px ? 1 : -1);
}

static void on_wake(uv_async_t *a)
{
    proxy_box_t *b = a->data;
    int cmd = atomic_exchange(&b->cmd, 0);
    if (cmd == 1 && b->px) {
        wire_proxy_close(b->px, on_closed, b);
        b->px = NULL;
    } else if (cmd == 2) {
        if (b->px) wire_proxy_close(b->px, NULL, NULL);
        b->px = NULL;
        uv_close((uv_handle_t *)a, NULL);
    }
}

static void *proxy_run(void *arg)
{
    proxy_box_t *b = arg;
    uv_run(&b->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* A node slower than its peers (25 ms each way through the proxy) is judged slow once it has
 * answered enough, and the pairs it is first for go to their other copy: it is re-routed
 * around, the texts stay the local ones. Then its link recovers (the proxy is replaced on the
 * same port by one without delay; the connection drops and comes back): it is judged afresh,
 * is no longer slow, and serves its pairs again. */
Test(failover, slow_node_is_routed_around, .timeout = 120)
{
    char *want[N_STREAMS], eps[3][128];
    reference(want);
    for (int i = 0; i < 3; i++) start_node(NODE0 + i, eps[i]);
    int node_port = 0;
    cr_assert_eq(sscanf(eps[2], "tcp://127.0.0.1:%d", &node_port), 1, "%s", eps[2]);
    static proxy_box_t b; /* outlives nothing but this test; static keeps it off the stack */
    memset(&b, 0, sizeof(b));
    cr_assert_eq(uv_loop_init(&b.loop), 0);
    b.cfg = (wire_proxy_config_t){.listen_host = "127.0.0.1", .target_host = "127.0.0.1",
                                  .target_port = node_port, .delay_ms = 25, .seed = 1};
    b.px = wire_proxy_new(&b.loop, &b.cfg);
    cr_assert_not_null(b.px);
    b.cfg.listen_port = wire_proxy_port(b.px);
    cr_assert_eq(uv_async_init(&b.loop, &b.wake, on_wake), 0);
    b.wake.data = &b;
    char slow_ep[128];
    snprintf(slow_ep, sizeof(slow_ep), "tcp://127.0.0.1:%d", wire_proxy_port(b.px));
    cr_assert_eq(pthread_create(&b.th, NULL, proxy_run, &b), 0);

    const char *e[3] = {eps[0], eps[1], slow_ep};
    int port = start_coord(e);
    /* Enough tokens for the verdict (8 RTTs) and then for re-routing. */
    for (int i = 0; i < N_STREAMS; i++) {
        char *got = complete(port, i);
        cr_expect_str_eq(got, want[i], "'%s' differs from local experts", prompts[i]);
        free(got);
    }
    run_streams(port, want, NULL);
    double rr = metric(port, "moemesh:node_reroutes_total", "node=\"2\"");
    double slow = metric(port, "moemesh:node_slow", "node=\"2\"");
    double others = metric(port, "moemesh:node_reroutes_total", "node=\"0\"") +
                    metric(port, "moemesh:node_reroutes_total", "node=\"1\"");
    printf("failover: slow node re-routed %.0f pairs (others %.0f), slow gauge %.0f\n", rr,
           others, slow);
    cr_expect_gt(rr, 0, "no pair re-routed around the slow node");
    /* A loaded host may make a fast node look slow for a moment; never for long. */
    cr_expect_lt(others, rr / 4, "fast nodes were re-routed around (%.0f pairs)", others);
    cr_expect_eq(slow, 1);
    cr_expect(log_has(COORD, "expert node 2 (") && log_has(COORD, "is slow"));
    cr_expect_eq(metric(port, "moemesh:node_failovers_total", NULL), 0);

    /* Recovery. */
    atomic_store(&b.cmd, 1);
    uv_async_send(&b.wake);
    double t0 = wire_now();
    while (atomic_load(&b.swapped) == 0) {
        cr_assert_lt(wire_now() - t0, 10.0, "the proxy was not replaced");
        usleep(10000);
    }
    cr_assert_eq(atomic_load(&b.swapped), 1, "no proxy on port %d again", b.cfg.listen_port);
    t0 = wire_now();
    for (;;) {
        /* Traffic gives the coordinator the chance to notice the drop and the return. */
        char *got = complete(port, 0);
        cr_expect_str_eq(got, want[0]);
        free(got);
        if (metric(port, "moemesh:node_slow", "node=\"2\"") == 0 &&
            metric(port, "moemesh:node_up", "node=\"2\"") == 1)
            break;
        cr_assert_lt(wire_now() - t0, 20.0, "the recovered node stayed slow or down");
        usleep(200000);
    }
    printf("failover: recovered link judged normal after %.2f s\n", wire_now() - t0);
    double rr0 = metric(port, "moemesh:node_reroutes_total", "node=\"2\"");
    double req0 = metric(port, "moemesh:node_requests_total", "node=\"2\"");
    run_streams(port, want, NULL);
    /* Judged normal above; from here on it is routed to as a peer. Its link still runs through
     * an in-process relay, which a loaded host (the suite runs two tests at once) can make
     * look slow for a moment, as with the fast nodes above: a moment, never most of the run. */
    double again = metric(port, "moemesh:node_reroutes_total", "node=\"2\"") - rr0;
    cr_expect_lt(again, rr / 4, "still re-routed around after recovering (%.0f pairs)", again);
    cr_expect_gt(metric(port, "moemesh:node_requests_total", "node=\"2\""), req0,
                 "the recovered node serves nothing");
    for (int i = 0; i < N_STREAMS; i++) free(want[i]);
    assert_alive(COORD);

    tproc_kill(&procs[COORD]);
    atomic_store(&b.cmd, 2);
    uv_async_send(&b.wake);
    pthread_join(b.th, NULL);
    cr_assert_eq(uv_loop_close(&b.loop), 0);
}
