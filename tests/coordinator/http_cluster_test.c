/* The HTTP API with expert parallelism: two real moemesh-expert processes (the program beside
 * this test binary) on 127.0.0.1 ephemeral ports, the server in-process with --expert-node for
 * each. At temperature 0 its completion must equal the local server's, streamed or not, with
 * the same usage. Nodes are started with PR_SET_PDEATHSIG and killed and reaped in the suite's
 * fini, so none outlives a test.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "coordinator/coord.h"
#include "wire/wire.h"

#define MODEL "../shared/golden/stories-moe-f32.gguf"

static pid_t node_pid[2];
static int node_out[2] = {-1, -1};

static void reap(void)
{
    for (int i = 0; i < 2; i++) {
        if (node_pid[i] > 0) kill(node_pid[i], SIGKILL), waitpid(node_pid[i], NULL, 0);
        if (node_out[i] >= 0) close(node_out[i]);
        node_pid[i] = 0, node_out[i] = -1;
    }
}

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
}

TestSuite(http_cluster, .init = setup, .fini = reap);

/* Starts node i and returns its endpoint from the "listening on" line (10 s at most). */
static void spawn(int i, char *endpoint, size_t cap)
{
    cr_assert_geq(cap, 128);
    char self[PATH_MAX - 32], prog[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    cr_assert(n > 0);
    self[n] = 0;
    *strrchr(self, '/') = 0; /* .../tests */
    *strrchr(self, '/') = 0; /* build or build/san */
    snprintf(prog, sizeof(prog), "%s/bin/moemesh-expert", self);
    cr_assert_eq(access(prog, X_OK), 0, "%s is missing: run make first", prog);
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        dup2(fds[1], 1);
        close(fds[0]), close(fds[1]);
        int dn = open("/dev/null", O_WRONLY);
        dup2(dn, 2);
        execl(prog, prog, "-l", "tcp://127.0.0.1:*", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    node_pid[i] = pid;
    node_out[i] = fds[0];
    char line[256];
    size_t len = 0;
    while (len < sizeof(line) - 1) {
        struct pollfd p = {fds[0], POLLIN, 0};
        cr_assert_eq(poll(&p, 1, 10000), 1, "node %d: no 'listening on' line", i);
        cr_assert_eq(read(fds[0], line + len, 1), 1, "node %d exited", i);
        if (line[len] == '\n') break;
        len++;
    }
    line[len] = 0;
    cr_assert_eq(sscanf(line, "listening on %127s", endpoint), 1, "node said '%s'", line);
}

typedef struct {
    uv_loop_t loop;
    coord_server_t *s;
    uv_thread_t th;
    int port;
} srv_t;

static void run_loop(void *arg)
{
    srv_t *x = arg;
    uv_run(&x->loop, UV_RUN_DEFAULT);
}

/* http_test.c's Prometheus text checker. */
bool tc_prometheus_ok(const char *text, char *why, size_t cap);

/* One request with Connection: close; the whole answer (head and body) into a string. */
static char *request(int port, const char *path, const char *body)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    char req[2048];
    if (body)
        snprintf(req, sizeof(req), "POST %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                 "Content-Length: %zu\r\n\r\n%s", path, strlen(body), body);
    else
        snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                 path);
    cr_assert_eq(send(fd, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
    size_t len = 0, cap = 1 << 20;
    char *out = malloc(cap);
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    while (len < cap - 1 && poll(&pf, 1, 30000) == 1) {
        ssize_t k = recv(fd, out + len, cap - 1 - len, 0);
        if (k <= 0) break;
        len += (size_t)k;
    }
    out[len] = 0;
    close(fd);
    return out;
}

static void start_t(srv_t *x, const char *const *eps, int n_eps, int node_timeout_ms)
{
    coord_server_params_t p = coord_server_params_default();
    p.node_timeout_ms = node_timeout_ms;
    p.model = MODEL;
    p.port = 0;
    p.n_slots = 2;
    p.n_threads = 1;
    p.expert_nodes = eps;
    p.n_expert_nodes = n_eps;
    cr_assert_eq(uv_loop_init(&x->loop), 0);
    x->s = coord_server_new(&x->loop, &p);
    cr_assert_not_null(x->s);
    x->port = coord_server_port(x->s);
    cr_assert_eq(uv_thread_create(&x->th, run_loop, x), 0);
    double t0 = wire_now();
    for (;;) {
        char *r = request(x->port, "/health", NULL);
        bool ok = !strncmp(r, "HTTP/1.1 200", 12);
        free(r);
        if (ok) break;
        cr_assert_lt(wire_now() - t0, 30.0, "not ready in 30 s");
        usleep(20000);
    }
}

static void start(srv_t *x, const char *const *eps, int n_eps)
{
    start_t(x, eps, n_eps, coord_server_params_default().node_timeout_ms);
}

static void stop(srv_t *x)
{
    coord_server_stop(x->s);
    cr_assert_eq(uv_thread_join(&x->th), 0);
    cr_assert_eq(coord_server_free(x->s), 0);
    cr_assert_eq(uv_loop_close(&x->loop), 0);
}

/* The text of a non-streamed completion, and its usage in *n_prompt / *n_gen. */
static char *complete(int port, int *n_prompt, int *n_gen)
{
    char *r = request(port, "/v1/completions",
                      "{\"prompt\":\"Once upon a time\",\"max_tokens\":24,\"temperature\":0}");
    cr_assert(!strncmp(r, "HTTP/1.1 200", 12), "%s", r);
    json_t *j = json_loads(strstr(r, "\r\n\r\n") + 4, 0, NULL);
    cr_assert_not_null(j);
    free(r);
    json_t *u = json_object_get(j, "usage");
    *n_prompt = (int)json_integer_value(json_object_get(u, "prompt_tokens"));
    *n_gen = (int)json_integer_value(json_object_get(u, "completion_tokens"));
    char *t = strdup(json_string_value(
        json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text")));
    json_decref(j);
    return t;
}

/* The streamed text: the "text" of every event, in order (chunk framing undone). */
static char *complete_streamed(int port)
{
    char *r = request(port, "/v1/completions",
                      "{\"prompt\":\"Once upon a time\",\"max_tokens\":24,\"temperature\":0,"
                      "\"stream\":true}");
    cr_assert(!strncmp(r, "HTTP/1.1 200", 12), "%s", r);
    char *text = calloc(1, 1);
    size_t tlen = 0;
    bool done = false;
    /* Events never span chunks (the server writes one per chunk): scan for "data: " lines. */
    for (char *p = strstr(r, "data: "); p; p = strstr(p + 1, "data: ")) {
        char *e = strstr(p, "\n\n");
        cr_assert_not_null(e);
        *e = 0;
        if (!strcmp(p + 6, "[DONE]")) {
            done = true;
        } else {
            json_t *j = json_loads(p + 6, 0, NULL);
            cr_assert_not_null(j, "bad event %s", p + 6);
            const char *t = json_string_value(
                json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text"));
            size_t n = t ? strlen(t) : 0;
            text = realloc(text, tlen + n + 1);
            memcpy(text + tlen, t ? t : "", n + 1);
            tlen += n;
            json_decref(j);
        }
        p = e;
    }
    cr_assert(done);
    free(r);
    return text;
}

Test(http_cluster, two_nodes_answer_like_the_local_server, .timeout = 120)
{
    srv_t x;
    start(&x, NULL, 0);
    int lp, lg;
    char *local = complete(x.port, &lp, &lg);
    stop(&x);

    char e0[128], e1[128];
    spawn(0, e0, sizeof(e0));
    spawn(1, e1, sizeof(e1));
    const char *eps[2] = {e0, e1};
    start(&x, eps, 2);
    int rp, rg;
    char *remote = complete(x.port, &rp, &rg);
    char *streamed = complete_streamed(x.port);
    cr_assert_str_eq(remote, local);
    cr_assert_str_eq(streamed, local);
    cr_assert_eq(rp, lp);
    cr_assert_eq(rg, lg);
    cr_assert_eq(rg, 24);
    free(local), free(remote), free(streamed);
    stop(&x);
}

/* The body of a GET /metrics that passed the Prometheus checker. */
static char *metrics(int port)
{
    char *r = request(port, "/metrics", NULL);
    cr_assert(!strncmp(r, "HTTP/1.1 200", 12), "%s", r);
    char *body = strdup(strstr(r, "\r\n\r\n") + 4);
    free(r);
    char why[256];
    cr_assert(tc_prometheus_ok(body, why, sizeof(why)), "%s", why);
    return body;
}

/* Sum of every sample of the series name (labels any) in a metrics body, -1 when none. */
static double series_sum(const char *body, const char *name)
{
    double sum = -1;
    size_t n = strlen(name);
    for (const char *l = body; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
        if (strncmp(l, name, n) || (l[n] != '{' && l[n] != ' ')) continue;
        const char *v = strchr(l, ' ');
        if (l[n] == '{') v = strchr(strchr(l, '}'), ' ');
        sum = (sum < 0 ? 0 : sum) + strtod(v + 1, NULL);
    }
    return sum;
}

Test(http_cluster, metrics_show_the_nodes_and_expert_load, .timeout = 120)
{
    char e0[128], e1[128];
    spawn(0, e0, sizeof(e0));
    spawn(1, e1, sizeof(e1));
    const char *eps[2] = {e0, e1};
    srv_t x;
    start(&x, eps, 2);
    char *before = metrics(x.port);
    int np, ng;
    free(complete(x.port, &np, &ng));
    char *after = metrics(x.port);
    for (int i = 0; i < 2; i++) {
        char want[512];
        snprintf(want, sizeof(want), "moemesh:node_rtt_seconds_bucket{node=\"%d\",addr=\"%s\","
                 "le=\"+Inf\"} ", i, i ? e1 : e0);
        cr_assert(strstr(after, want), "no '%s' in\n%s", want, after);
        snprintf(want, sizeof(want), "moemesh:node_errors_total{node=\"%d\",addr=\"%s\"} 0\n", i,
                 i ? e1 : e0);
        cr_assert(strstr(after, want), "no '%s' in\n%s", want, after);
    }
    cr_assert_gt(series_sum(after, "moemesh:node_bytes_sent_total"), 0);
    cr_assert_gt(series_sum(after, "moemesh:node_bytes_received_total"), 0);
    cr_assert_gt(series_sum(after, "moemesh:node_rtt_seconds_count"), 0);
    cr_assert_geq(series_sum(after, "moemesh:kv_cache_usage_ratio"), 0);
    cr_assert(strstr(after, "moemesh:expert_tokens_total{layer=\"0\",expert=\"0\"} "), "%s",
              after);
    /* Every token of the prompt and of the generation went through the router of every layer,
     * top-k experts each: the counts grow. */
    double t0 = series_sum(before, "moemesh:expert_tokens_total");
    double t1 = series_sum(after, "moemesh:expert_tokens_total");
    cr_assert_geq(t0, 0);
    cr_assert_gt(t1, t0, "expert tokens %g -> %g", t0, t1);
    /* The recent window spans the two scrapes: it holds exactly what the totals gained; the
     * placement's imbalance is at least 1 on every layer that saw tokens. */
    cr_assert_eq(series_sum(after, "moemesh:expert_tokens_recent"), t1 - t0);
    cr_assert(strstr(after, "moemesh:layer_imbalance{layer=\"0\"} "), "%s", after);
    cr_assert_geq(series_sum(after, "moemesh:layer_imbalance"), 1);
    cr_assert(strstr(after, "moemesh:node_busy_ratio{node=\"1\""), "%s", after);
    free(before), free(after);
    stop(&x);
}

/* /health's status and body. */
static int health(int port, char **body)
{
    char *r = request(port, "/health", NULL);
    int status = 0;
    sscanf(r, "HTTP/1.1 %d", &status);
    char *b = strstr(r, "\r\n\r\n");
    *body = strdup(b ? b + 4 : "");
    free(r);
    return status;
}

Test(http_cluster, health_says_which_node_failed, .timeout = 120)
{
    char e0[128], e1[128];
    spawn(0, e0, sizeof(e0));
    spawn(1, e1, sizeof(e1));
    const char *eps[2] = {e0, e1};
    srv_t x;
    start_t(&x, eps, 2, 1500);
    int np, ng;
    free(complete(x.port, &np, &ng));
    char *body;
    cr_assert_eq(health(x.port, &body), 200, "%s", body);
    free(body);

    /* Node 1 stops answering: the next request fails within the node timeout (503: experts
     * are missing) and /health names the node until it is back. */
    cr_assert_eq(kill(node_pid[1], SIGSTOP), 0);
    double t0 = wire_now();
    char *r = request(x.port, "/v1/completions",
                      "{\"prompt\":\"Once upon a time\",\"max_tokens\":8,\"temperature\":0}");
    cr_assert(!strncmp(r, "HTTP/1.1 503", 12), "%s", r);
    free(r);
    cr_assert_lt(wire_now() - t0, 10.0);
    cr_assert_eq(health(x.port, &body), 503, "%s", body);
    cr_assert(strstr(body, "expert node 1") && strstr(body, e1), "%s", body);
    free(body);

    /* Back: the coordinator's HELLO probe is answered, the node is re-assigned its (kept)
     * shard, and /health turns 200 again. */
    cr_assert_eq(kill(node_pid[1], SIGCONT), 0);
    t0 = wire_now();
    while (health(x.port, &body) != 200) {
        free(body);
        cr_assert_lt(wire_now() - t0, 15.0, "node 1 not back within 15 s");
        usleep(100000);
    }
    free(body);
    free(complete(x.port, &np, &ng));

    /* Killed: requests fail and /health stays 503 naming it. */
    cr_assert_eq(kill(node_pid[1], SIGKILL), 0);
    cr_assert_eq(waitpid(node_pid[1], NULL, 0), node_pid[1]);
    node_pid[1] = 0;
    t0 = wire_now();
    r = request(x.port, "/v1/completions",
                "{\"prompt\":\"Once upon a time\",\"max_tokens\":8,\"temperature\":0}");
    cr_assert(!strncmp(r, "HTTP/1.1 503", 12), "%s", r);
    free(r);
    cr_assert_lt(wire_now() - t0, 10.0);
    cr_assert_eq(health(x.port, &body), 503, "%s", body);
    cr_assert(strstr(body, "expert node 1"), "%s", body);
    free(body);
    char *m = metrics(x.port);
    cr_assert_geq(series_sum(m, "moemesh:node_errors_total"), 2, "%s", m);
    free(m);
    stop(&x);
}
