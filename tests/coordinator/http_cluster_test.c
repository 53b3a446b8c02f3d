/* The HTTP API with expert parallelism: two real moemesh-expert processes (the program beside
 * this test binary) on 127.0.0.1 ephemeral ports, the server in-process with --expert-node for
 * each. At temperature 0 its completion must equal the local server's, streamed or not, with
 * the same usage. Nodes are started with PR_SET_PDEATHSIG and killed and reaped in the suite's
 * fini, so none outlives a test.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "coordinator/coord.h"
#include "tproc.h"
#include "tsrv.h"
#include "wire/wire.h"

#define MODEL "../shared/golden/stories-moe-f32.gguf"

static tproc_t nodes[2];

static void reap(void)
{
    tproc_reap(nodes, 2, false);
}

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
}

TestSuite(http_cluster, .init = setup, .fini = reap);

/* Starts both nodes and puts their endpoints from the "listening on" lines (10 s at most) in
 * ep. */
static void spawn_nodes(char ep[2][128])
{
    const char *argv[] = {"moemesh-expert", "-l", "tcp://127.0.0.1:*", NULL};
    for (int i = 0; i < 2; i++) tproc_spawn(&nodes[i], argv, ep[i], sizeof(ep[i]), 10);
}

/* http_test.c's Prometheus text checker. */
bool tc_prometheus_ok(const char *text, char *why, size_t cap);

/* One request with Connection: close; the whole answer (head and body) into a string. */
static char *request(int port, const char *path, const char *body)
{
    return tproc_request(port, path, body, 30);
}

static void start_t(tsrv_t *x, const char *const *eps, int n_eps, int node_timeout_ms)
{
    coord_server_params_t p = tsrv_params(MODEL);
    p.node_timeout_ms = node_timeout_ms;
    p.expert_nodes = eps;
    p.n_expert_nodes = n_eps;
    tsrv_start(x, &p, 30, false);
}

static void start(tsrv_t *x, const char *const *eps, int n_eps)
{
    start_t(x, eps, n_eps, coord_server_params_default().node_timeout_ms);
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
    tsrv_t x;
    start(&x, NULL, 0);
    int lp, lg;
    char *local = complete(x.port, &lp, &lg);
    tsrv_stop(&x);

    char ep[2][128];
    spawn_nodes(ep);
    const char *eps[2] = {ep[0], ep[1]};
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
    tsrv_stop(&x);
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
    char ep[2][128];
    spawn_nodes(ep);
    const char *eps[2] = {ep[0], ep[1]};
    tsrv_t x;
    start(&x, eps, 2);
    char *before = metrics(x.port);
    int np, ng;
    free(complete(x.port, &np, &ng));
    char *after = metrics(x.port);
    for (int i = 0; i < 2; i++) {
        char want[512];
        snprintf(want, sizeof(want), "moemesh:node_rtt_seconds_bucket{node=\"%d\",addr=\"%s\","
                 "le=\"+Inf\"} ", i, ep[i]);
        cr_assert(strstr(after, want), "no '%s' in\n%s", want, after);
        snprintf(want, sizeof(want), "moemesh:node_errors_total{node=\"%d\",addr=\"%s\"} 0\n", i,
                 ep[i]);
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
    tsrv_stop(&x);
}

Test(http_cluster, health_says_which_node_failed, .timeout = 120)
{
    char ep[2][128];
    spawn_nodes(ep);
    const char *eps[2] = {ep[0], ep[1]};
    tsrv_t x;
    start_t(&x, eps, 2, 1500);
    int np, ng;
    free(complete(x.port, &np, &ng));
    char *body;
    cr_assert_eq(tproc_health(x.port, &body), 200, "%s", body);
    free(body);

    /* Node 1 stops answering: the next request fails within the node timeout (503: experts
     * are missing) and /health names the node until it is back. */
    cr_assert_eq(kill(nodes[1].pid, SIGSTOP), 0);
    double t0 = wire_now();
    char *r = request(x.port, "/v1/completions",
                      "{\"prompt\":\"Once upon a time\",\"max_tokens\":8,\"temperature\":0}");
    cr_assert(!strncmp(r, "HTTP/1.1 503", 12), "%s", r);
    free(r);
    cr_assert_lt(wire_now() - t0, 10.0);
    cr_assert_eq(tproc_health(x.port, &body), 503, "%s", body);
    cr_assert(strstr(body, "expert node 1") && strstr(body, ep[1]), "%s", body);
    free(body);

    /* Back: the coordinator's HELLO probe is answered, the node is re-assigned its (kept)
     * shard, and /health turns 200 again. */
    cr_assert_eq(kill(nodes[1].pid, SIGCONT), 0);
    tproc_wait_health(x.port, 200, 15.0);
    free(complete(x.port, &np, &ng));

    /* Killed: requests fail and /health stays 503 naming it. */
    cr_assert_eq(kill(nodes[1].pid, SIGKILL), 0);
    cr_assert_eq(waitpid(nodes[1].pid, NULL, 0), nodes[1].pid);
    nodes[1].pid = 0;
    t0 = wire_now();
    r = request(x.port, "/v1/completions",
                "{\"prompt\":\"Once upon a time\",\"max_tokens\":8,\"temperature\":0}");
    cr_assert(!strncmp(r, "HTTP/1.1 503", 12), "%s", r);
    free(r);
    cr_assert_lt(wire_now() - t0, 10.0);
    cr_assert_eq(tproc_health(x.port, &body), 503, "%s", body);
    cr_assert(strstr(body, "expert node 1"), "%s", body);
    free(body);
    char *m = metrics(x.port);
    cr_assert_geq(series_sum(m, "moemesh:node_errors_total"), 2, "%s", m);
    free(m);
    tsrv_stop(&x);
}
