/* `moemesh-bench sweep`: end-to-end runs of the real programs over a grid of link and serving
 * settings, each point repeated, with the limit model (bench/limit.c) beside every median.
 *
 * For each (nodes, RTT, rate) the "links" are set up once: either deploy/local/cluster.sh puts
 * every expert node in its own network namespace behind a tc-tbf-shaped veth and a delaying
 * proxy (root only), or, on loopback, each node gets a `moemesh-bench proxy` in front of it.
 * For each remaining point a fresh `moemesh-coordinator serve` talks to those nodes and
 * `moemesh-bench serve` loads it; tokens/s, TTFT and ITL come from the load client, round trips
 * and wire bytes from the coordinator's /metrics before and after. Flags an older coordinator
 * does not know (--micro-batches, --draft) make the point "skipped" with the coordinator's own
 * words, not a failed sweep. Every child dies with the sweep (PR_SET_PDEATHSIG) and is reaped.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "coordinator/coord.h"
#include "kernels/kern.h"
#include "wire/wire.h"

#define AXIS_MAX 16
#define NODES_MAX 16
#define POINTS_MAX 100000
#define REPEAT_MAX 100
#define DRAFT_TOKENS 4

typedef enum { AX_NODES, AX_RTT, AX_RATE, AX_CONC, AX_DTYPE, AX_MB, AX_SPEC, AX_COUNT } axis_id_t;

static const char *const axis_names[AX_COUNT] = {"nodes", "rtt",    "rate", "conc",
                                                 "dtype", "mb",     "spec"};
static const char *const dtype_names[] = {"f32", "f16", "bf16", "q8_0"};

typedef struct {
    int n;
    double v[AXIS_MAX]; /* dtype: index into dtype_names; rate: Mbit/s, 0 = unlimited */
} axis_t;

/* One measured quantity over the repeats of a point. */
typedef struct {
    double med, min, max;
    bool ok;
} stat_t;

typedef struct {
    double nodes, rtt, rate, conc, dtype, mb, spec;
    const char *status; /* "ok", "skipped", "failed" */
    char reason[256];
    int repeats;
    stat_t tok_s, ttft_ms, itl_ms, rt_per_tok, bytes_per_tok, link_bytes_per_tok, tpt_ms;
    double overlap;     /* NAN when there is no RTT or no RTT-0 reference point */
    bench_limit_t lim;
} point_t;

typedef struct {
    const char *model, *bin, *out, *script, *baseline;
    char state[PATH_MAX];
    int repeat, requests, prompt_len, max_tokens, threads;
    bool netns;
    double bw_gbs, active_bytes;
    int n_layers;
    axis_t ax[AX_COUNT];
} sweep_t;

/* The links of one (nodes, RTT, rate): endpoints the coordinator dials, and what serves them. */
typedef struct {
    int n;
    char ep[NODES_MAX][64];  /* "HOST:PORT" */
    pid_t pids[2 * NODES_MAX];
    int n_pids;
    bool netns_up;
    int home_ns;             /* our own network namespace while we sit in the cluster's; or -1 */
} links_t;

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) { (void)sig, g_stop = 1; }

/* ---- child processes ---- */

/* Starts argv with stdout and stderr into log; the child dies with us. -1 on failure. */
static pid_t spawn(char *const argv[], const char *log)
{
    const pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127); /* we died before prctl took effect */
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd >= 0) dup2(fd, 1), dup2(fd, 2);
        signal(SIGINT, SIG_IGN); /* Ctrl-C is ours to handle; we stop the children in order */
        execv(argv[0], argv);
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    return pid;
}

/* Waits up to timeout_s for pid; its exit status, or -1 when still running (or stopped by us). */
static int wait_for(pid_t pid, double timeout_s)
{
    double t0 = wire_now();
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (r < 0 && errno != EINTR) return -1;
        if (wire_now() - t0 > timeout_s || g_stop) return -1;
        usleep(20000);
    }
}

/* SIGTERM, up to 5 s of grace, then SIGKILL; always reaps. */
static void stop(pid_t pid)
{
    if (pid <= 0) return;
    kill(pid, SIGTERM);
    double t0 = wire_now();
    int st;
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (wire_now() - t0 > 5) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return;
        }
        usleep(20000);
    }
}

/* A port nothing listens on now (the kernel's choice); 0 on failure. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

static bool port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    if (fd >= 0) close(fd);
    return ok;
}

/* The whole of a small file (at most cap - 1 bytes, NUL-terminated); false when unreadable. */
static bool slurp(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) return false;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = 0;
    fclose(f);
    return true;
}

/* The last non-empty line of a log, for a reason string. */
static void log_tail(const char *path, char *out, size_t cap)
{
    static char buf[1 << 16];
    out[0] = 0;
    if (!slurp(path, buf, sizeof(buf))) return;
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) buf[--n] = 0;
    char *nl = strrchr(buf, '\n');
    snprintf(out, cap, "%s", nl ? nl + 1 : buf);
}

/* One HTTP/1.0 GET on 127.0.0.1:port into buf (head and body); the status code, or -1. */
static int http_get(int port, const char *path, char *buf, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: sweep\r\nConnection: close\r\n\r\n",
                     path);
    size_t len = 0;
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) == n) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        while (len < cap - 1 && poll(&pf, 1, 10000) == 1) {
            ssize_t k = recv(fd, buf + len, cap - 1 - len, 0);
            if (k <= 0) break;
            len += (size_t)k;
        }
    }
    close(fd);
    buf[len] = 0;
    int status = -1;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1) return -1;
    return status;
}

/* ---- links: expert nodes behind proxies (loopback) or in namespaces (cluster.sh) ---- */

static void links_down(const sweep_t *s, links_t *l)
{
    for (int i = l->n_pids - 1; i >= 0; i--) stop(l->pids[i]);
    l->n_pids = 0;
    if (l->home_ns >= 0) {
        CHECK(setns(l->home_ns, CLONE_NEWNET) == 0);
        close(l->home_ns);
        l->home_ns = -1;
    }
    if (l->netns_up) {
        char log[PATH_MAX + 32];
        snprintf(log, sizeof(log), "%s/cluster-down.log", s->state);
        char *argv[] = {"/bin/sh", (char *)s->script, "down", "--state", (char *)s->state, NULL};
        pid_t p = spawn(argv, log);
        /* A Ctrl-C must not leave namespaces behind: wait for `down` even when stopping. */
        int st;
        if (p > 0) waitpid(p, &st, 0);
        l->netns_up = false;
    }
    l->n = 0;
}

static int links_up_loopback(const sweep_t *s, links_t *l, int nodes, double rtt, double rate,
                             char *why, size_t cap)
{
    char log[PATH_MAX + 64], listen[64], to[64], delay[32], rbuf[32];
    int xports[NODES_MAX], pports[NODES_MAX];
    for (int i = 0; i < nodes; i++) {
        char bin[PATH_MAX + 32], name[32];
        snprintf(bin, sizeof(bin), "%s/moemesh-expert", s->bin);
        xports[i] = free_port();
        snprintf(listen, sizeof(listen), "tcp://127.0.0.1:%d", xports[i]);
        snprintf(name, sizeof(name), "node-%d", i);
        snprintf(log, sizeof(log), "%s/expert-%d.log", s->state, i);
        char *argv[] = {bin, "-l", listen, "-m", (char *)s->model, "-t", "1", "--name", name,
                        NULL};
        pid_t p = spawn(argv, log);
        if (p < 0) return snprintf(why, cap, "cannot start %.200s", bin), -1;
        l->pids[l->n_pids++] = p;
        const bool proxied = rtt > 0 || rate > 0;
        pports[i] = proxied ? free_port() : xports[i];
        snprintf(l->ep[i], sizeof(l->ep[i]), "127.0.0.1:%d", pports[i]);
        if (!proxied) continue;
        snprintf(bin, sizeof(bin), "%s/moemesh-bench", s->bin);
        snprintf(listen, sizeof(listen), "127.0.0.1:%d", pports[i]);
        snprintf(to, sizeof(to), "127.0.0.1:%d", xports[i]);
        snprintf(delay, sizeof(delay), "%g", rtt / 2); /* the proxy delays each direction */
        snprintf(rbuf, sizeof(rbuf), "%g", rate);
        snprintf(log, sizeof(log), "%s/proxy-%d.log", s->state, i);
        char *pargv[] = {bin,        "proxy", "--listen", listen, "--to", to, "--delay-ms", delay,
                         rate > 0 ? "--rate-mbit" : NULL, rbuf, NULL};
        if ((p = spawn(pargv, log)) < 0) return snprintf(why, cap, "cannot start %.200s", bin), -1;
        l->pids[l->n_pids++] = p;
    }
    l->n = nodes;
    /* Ready when every node's port (and every proxy's) accepts a connection. */
    for (int i = 0; i < nodes; i++) {
        double t0 = wire_now();
        while (!(port_open(xports[i]) && port_open(pports[i]))) {
            if (wire_now() - t0 > 30 || g_stop) {
                snprintf(log, sizeof(log), "%s/expert-%d.log", s->state, i);
                char tail[200];
                log_tail(log, tail, sizeof(tail));
                return snprintf(why, cap, "node %d not listening after 30 s: %s", i, tail), -1;
            }
            usleep(50000);
        }
    }
    return 0;
}

static int links_up_netns(const sweep_t *s, links_t *l, int nodes, double rtt, double rate,
                          char *why, size_t cap)
{
    char log[PATH_MAX + 32], n[16], r[32], rt[32], path[PATH_MAX + 32];
    snprintf(n, sizeof(n), "%d", nodes);
    snprintf(rt, sizeof(rt), "%g", rtt);
    snprintf(r, sizeof(r), "%g", rate);
    snprintf(log, sizeof(log), "%s/cluster-up.log", s->state);
    char *argv[] = {"/bin/sh", (char *)s->script, "up",    n,       "--rtt",         rt,
                    "--rate",  rate > 0 ? r : "0",  "--model", (char *)s->model, "--bin",
                    (char *)s->bin,    "--state", (char *)s->state, NULL};
    pid_t p = spawn(argv, log);
    l->netns_up = true; /* even a failed `up` may have made something for `down` to remove */
    int st = p > 0 ? wait_for(p, 120) : -1;
    if (st != 0) {
        if (p > 0 && st < 0) stop(p);
        char tail[200];
        log_tail(log, tail, sizeof(tail));
        return snprintf(why, cap, "cluster.sh up failed: %s", tail), -1;
    }
    snprintf(path, sizeof(path), "%s/endpoints", s->state);
    FILE *f = fopen(path, "r");
    if (!f) return snprintf(why, cap, "cluster.sh wrote no %.200s", path), -1;
    while (l->n < nodes && fscanf(f, "%63s", l->ep[l->n]) == 1) l->n++;
    fclose(f);
    if (l->n != nodes) return snprintf(why, cap, "cluster.sh listed %d of %d nodes", l->n, nodes), -1;
    /* The nodes are reachable from the coordinator namespace only (no address outside the
     * namespaces cluster.sh made): we move there, and so do the coordinator and load client we
     * start (children inherit it). The sweep is single-threaded here, so setns moves it all. */
    char env[4096], ns[PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/cluster.env", s->state);
    const char *id = slurp(path, env, sizeof(env)) ? strstr(env, "ID=\"") : NULL;
    if (!id) return snprintf(why, cap, "cluster.sh wrote no cluster id"), -1;
    snprintf(ns, sizeof(ns), "/run/netns/%.*s-c", (int)strcspn(id + 4, "\""), id + 4);
    int fd = open(ns, O_RDONLY | O_CLOEXEC);
    l->home_ns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || l->home_ns < 0 || setns(fd, CLONE_NEWNET) != 0) {
        snprintf(why, cap, "cannot enter %.200s: %s", ns, strerror(errno));
        if (fd >= 0) close(fd);
        if (l->home_ns >= 0) close(l->home_ns);
        l->home_ns = -1;
        return -1;
    }
    close(fd);
    return 0;
}

/* ---- one point ---- */

typedef struct {
    double gen, req[NODES_MAX], bytes[NODES_MAX];
} counters_t;

/* Sums of the counters the limit model needs, from one /metrics page. */
static bool scrape(int port, counters_t *c)
{
    static char buf[1 << 20];
    memset(c, 0, sizeof(*c));
    if (http_get(port, "/metrics", buf, sizeof(buf)) != 200) return false;
    for (char *line = buf; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
        int node = -1;
        const char *lb = strstr(line, "{node=\"");
        const char *nl = strchr(line, '\n');
        if (lb && (!nl || lb < nl)) node = atoi(lb + 7);
        const char *sp = strchr(line, ' ');
        if (!sp || (nl && sp > nl) || line[0] == '#') continue;
        double v = strtod(sp + 1, NULL);
        if (!strncmp(line, "moemesh:generation_tokens_total ", 32)) c->gen = v;
        if (node < 0 || node >= NODES_MAX) continue;
        if (!strncmp(line, "moemesh:node_requests_total{", 28)) c->req[node] = v;
        else if (!strncmp(line, "moemesh:node_bytes_sent_total{", 30) ||
                 !strncmp(line, "moemesh:node_bytes_received_total{", 34))
            c->bytes[node] += v;
    }
    return true;
}

/* Value after a line starting with key in the load client's output; column col (0-based). */
static bool serve_value(const char *out, const char *key, int col, double *v)
{
    for (const char *p = out; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, key, strlen(key))) continue;
        const char *q = p + strlen(key);
        for (int c = 0; c <= col; c++) {
            char *end;
            double x = strtod(q, &end);
            if (end == q) return false;
            if (c == col) return *v = x, true;
            q = end;
        }
    }
    return false;
}

typedef struct {
    double tok_s, ttft_ms, itl_ms, rt_per_tok, bytes_per_tok, link_bytes_per_tok, tpt_ms;
} sample_t;

/* One load run against the coordinator on cport; 0, or -1 with why. */
static int measure(const sweep_t *s, int cport, int conc, int nodes, int idx, sample_t *o,
                   char *why, size_t cap)
{
    counters_t a, b;
    if (!scrape(cport, &a)) return snprintf(why, cap, "no /metrics before the run"), -1;
    char bin[PATH_MAX + 32], url[64], c[16], n[16], pl[16], mt[16], log[PATH_MAX + 32];
    snprintf(bin, sizeof(bin), "%s/moemesh-bench", s->bin);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", cport);
    snprintf(c, sizeof(c), "%d", conc);
    snprintf(n, sizeof(n), "%d", s->requests > 0 ? s->requests : 2 * conc);
    snprintf(pl, sizeof(pl), "%d", s->prompt_len);
    snprintf(mt, sizeof(mt), "%d", s->max_tokens);
    snprintf(log, sizeof(log), "%s/load-%d.log", s->state, idx);
    char *argv[] = {bin, "serve", "--url", url, "-c", c, "-n", n, "--prompt-len", pl,
                    "--max-tokens", mt, NULL};
    pid_t p = spawn(argv, log);
    int st = p > 0 ? wait_for(p, 900) : -1;
    if (st < 0 && p > 0) stop(p);
    static char out[1 << 16];
    if (!slurp(log, out, sizeof(out))) out[0] = 0;
    double ok = 0, failed = 0, dur = 0;
    serve_value(out, "successful requests", 0, &ok);
    serve_value(out, "failed requests", 0, &failed);
    if (st != 0 || failed > 0 || ok == 0) {
        char tail[200];
        log_tail(log, tail, sizeof(tail));
        return snprintf(why, cap, "load client: %.0f failed requests (%s)", failed, tail), -1;
    }
    if (!scrape(cport, &b)) return snprintf(why, cap, "no /metrics after the run"), -1;
    const double gen = b.gen - a.gen;
    if (gen <= 0) return snprintf(why, cap, "no tokens generated"), -1;
    memset(o, 0, sizeof(*o));
    serve_value(out, "duration (s)", 0, &dur);
    serve_value(out, "output throughput (tok/s)", 0, &o->tok_s);
    o->ttft_ms = o->itl_ms = NAN;
    serve_value(out, "TTFT (ms)", 1, &o->ttft_ms); /* columns: mean, median, p99 */
    serve_value(out, "ITL (ms)", 1, &o->itl_ms);
    double bytes = 0, max_req = 0, max_bytes = 0;
    for (int i = 0; i < nodes && i < NODES_MAX; i++) {
        double r = b.req[i] - a.req[i], by = b.bytes[i] - a.bytes[i];
        bytes += by;
        if (r > max_req) max_req = r;
        if (by > max_bytes) max_bytes = by;
    }
    /* Requests to different nodes of one layer run at once: the busiest node's count is the
     * number of round trips a generated token waits for in sequence. */
    o->rt_per_tok = max_req / gen;
    o->bytes_per_tok = bytes / gen;
    o->link_bytes_per_tok = max_bytes / gen;
    o->tpt_ms = dur > 0 ? dur / gen * 1e3 : NAN;
    return 0;
}

static int cmp_d(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

static stat_t stat_of(const double *v, int n)
{
    double w[REPEAT_MAX];
    int k = 0;
    for (int i = 0; i < n; i++)
        if (!isnan(v[i])) w[k++] = v[i];
    if (k == 0) return (stat_t){0};
    qsort(w, (size_t)k, sizeof(double), cmp_d);
    return (stat_t){.med = k % 2 ? w[k / 2] : (w[k / 2 - 1] + w[k / 2]) / 2, .min = w[0],
                    .max = w[k - 1], .ok = true};
}

/* Starts the coordinator for pt, runs the repeats, stops it. */
static void run_point(const sweep_t *s, const links_t *l, point_t *pt, int idx)
{
    char bin[PATH_MAX + 32], port[16], par[16], thr[16], mt[16], mb[16], draft[16];
    char log[PATH_MAX + 32], eps[NODES_MAX * 64 + 1] = "";
    snprintf(bin, sizeof(bin), "%s/moemesh-coordinator", s->bin);
    const int cport = free_port();
    snprintf(port, sizeof(port), "%d", cport);
    snprintf(par, sizeof(par), "%d", (int)pt->conc);
    snprintf(thr, sizeof(thr), "%d", s->threads);
    snprintf(mt, sizeof(mt), "%d", s->max_tokens);
    snprintf(mb, sizeof(mb), "%d", (int)pt->mb);
    snprintf(draft, sizeof(draft), "%d", DRAFT_TOKENS);
    for (int i = 0; i < l->n; i++) {
        if (i) strcat(eps, ",");
        strcat(eps, l->ep[i]);
    }
    char *argv[32] = {bin,      "serve",   "-m",        (char *)s->model, "--host", "127.0.0.1",
                      "--port", port,      "--parallel", par,             "-t",     thr,
                      "--max-tokens", mt,  "--expert-nodes", eps,         "--wire-type",
                      (char *)dtype_names[(int)pt->dtype], "--log-level", "warn"};
    int an = 20;
    /* The defaults (one micro-batch, no drafts) are left out so older builds run them. */
    if (pt->mb > 1) argv[an++] = "--micro-batches", argv[an++] = mb;
    if (pt->spec > 0) argv[an++] = "--draft", argv[an++] = draft;
    argv[an] = NULL;
    snprintf(log, sizeof(log), "%s/coordinator-%d.log", s->state, idx);
    pid_t p = spawn(argv, log);
    pt->status = "failed";
    if (p < 0) {
        snprintf(pt->reason, sizeof(pt->reason), "cannot start %.200s", bin);
        return;
    }
    /* Ready when /health answers 200; an early exit is a refusal (unknown flag) or a failure. */
    double t0 = wire_now();
    static char buf[4096];
    for (;;) {
        int st = wait_for(p, 0);
        if (st >= 0) {
            char tail[200];
            log_tail(log, tail, sizeof(tail));
            bool refused = strstr(tail, "unknown option") != NULL;
            pt->status = refused ? "skipped" : "failed";
            snprintf(pt->reason, sizeof(pt->reason), "coordinator exited %d: %s", st, tail);
            return;
        }
        if (http_get(cport, "/health", buf, sizeof(buf)) == 200) break;
        if (wire_now() - t0 > 60 || g_stop) {
            stop(p);
            snprintf(pt->reason, sizeof(pt->reason), "coordinator not healthy after 60 s");
            return;
        }
        usleep(100000);
    }
    double v[7][REPEAT_MAX];
    int n = 0;
    for (int r = 0; r < s->repeat && !g_stop; r++) {
        sample_t o;
        if (measure(s, cport, (int)pt->conc, l->n, idx * REPEAT_MAX + r, &o, pt->reason,
                    sizeof(pt->reason)) != 0)
            break;
        double row[7] = {o.tok_s, o.ttft_ms, o.itl_ms, o.rt_per_tok, o.bytes_per_tok,
                         o.link_bytes_per_tok, o.tpt_ms};
        for (int k = 0; k < 7; k++) v[k][n] = row[k];
        n++;
    }
    stop(p);
    pt->repeats = n;
    if (n < s->repeat) {
        if (g_stop) snprintf(pt->reason, sizeof(pt->reason), "interrupted");
        return;
    }
    stat_t *dst[7] = {&pt->tok_s, &pt->ttft_ms, &pt->itl_ms, &pt->rt_per_tok,
                      &pt->bytes_per_tok, &pt->link_bytes_per_tok, &pt->tpt_ms};
    for (int k = 0; k < 7; k++) *dst[k] = stat_of(v[k], n);
    pt->status = "ok";
    pt->reason[0] = 0;
}

/* The limit model at a point's medians, and overlap against its RTT-0 twin (same everything
 * else): 1 when the added link delay costs nothing, 0 when every round trip's delay shows. */
static void explain(const sweep_t *s, point_t *pts, int n)
{
    for (int i = 0; i < n; i++) {
        point_t *p = &pts[i];
        p->overlap = NAN;
        if (strcmp(p->status, "ok")) continue;
        bench_limit_in_t in = {.active_bytes = s->active_bytes,
                               .bandwidth_gbs = s->bw_gbs,
                               .n_layers = s->n_layers,
                               .rtt_ms = p->rtt,
                               .rt_per_token = p->rt_per_tok.med,
                               .wire_bytes_per_token = p->link_bytes_per_tok.med,
                               .rate_mbit = p->rate,
                               .measured_s = p->tpt_ms.med * 1e-3};
        p->lim = bench_limit_compute(&in);
        if (p->rtt <= 0) continue;
        for (int j = 0; j < n; j++) {
            const point_t *q = &pts[j];
            if (q->rtt != 0 || strcmp(q->status, "ok") || q->nodes != p->nodes ||
                q->rate != p->rate || q->conc != p->conc || q->dtype != p->dtype ||
                q->mb != p->mb || q->spec != p->spec)
                continue;
            const double added = p->rt_per_tok.med * p->rtt; /* ms of delay per token */
            if (added > 0) p->overlap = 1 - (p->tpt_ms.med - q->tpt_ms.med) / added;
        }
    }
}

/* ---- baseline ---- */

/* Whether the first word of cmd names an executable (a path, or a name on PATH). */
static bool installed(const char *cmd, char *word, size_t cap)
{
    size_t n = strcspn(cmd, " \t");
    snprintf(word, cap, "%.*s", (int)n, cmd);
    if (strchr(word, '/')) return access(word, X_OK) == 0;
    const char *path = getenv("PATH");
    if (!path) return false;
    char dir[PATH_MAX], full[PATH_MAX * 2];
    for (const char *p = path; *p;) {
        size_t k = strcspn(p, ":");
        snprintf(dir, sizeof(dir), "%.*s", (int)k, p);
        snprintf(full, sizeof(full), "%s/%s", dir[0] ? dir : ".", word);
        if (access(full, X_OK) == 0) return true;
        p += k + (p[k] == ':');
    }
    return false;
}

/* Runs the baseline on the links of l: the command sees the node hosts and link settings in
 * MOEMESH_SWEEP_* variables; tokens/s is the last number before "t/s" or "tok/s" it prints. */
static json_t *run_baseline(const sweep_t *s, const links_t *l, int nodes, double rtt,
                            double rate, int idx)
{
    char log[PATH_MAX + 32], v[NODES_MAX * 64 + 1] = "";
    snprintf(log, sizeof(log), "%s/baseline-%d.log", s->state, idx);
    for (int i = 0; i < l->n; i++) {
        if (i) strcat(v, ",");
        strcat(v, l->ep[i]);
    }
    setenv("MOEMESH_SWEEP_NODES_LIST", v, 1);
    snprintf(v, sizeof(v), "%d", nodes), setenv("MOEMESH_SWEEP_NODES", v, 1);
    snprintf(v, sizeof(v), "%g", rtt), setenv("MOEMESH_SWEEP_RTT_MS", v, 1);
    snprintf(v, sizeof(v), "%g", rate), setenv("MOEMESH_SWEEP_RATE_MBIT", v, 1);
    setenv("MOEMESH_SWEEP_MODEL", s->model, 1);
    char *argv[] = {"/bin/sh", "-c", (char *)s->baseline, NULL};
    double t0 = wire_now();
    pid_t p = spawn(argv, log);
    int st = p > 0 ? wait_for(p, 900) : -1;
    if (st < 0 && p > 0) stop(p);
    double wall = wire_now() - t0, tps = NAN;
    static char out[1 << 16];
    if (slurp(log, out, sizeof(out)))
        for (char *q = out; (q = strstr(q, "/s")) != NULL; q++) {
            /* "12.5 t/s", "12.5 tok/s": back over the unit's letters, spaces, then the number. */
            char *b = q;
            while (b > out && (b[-1] == 't' || b[-1] == 'o' || b[-1] == 'k')) b--;
            if (b == q) continue;
            while (b > out && b[-1] == ' ') b--;
            char *e = b;
            while (b > out && b[-1] && strchr("0123456789.", b[-1])) b--;
            if (b < e && strchr("0123456789", *b)) tps = strtod(b, NULL);
        }
    return json_pack("{s:i,s:f,s:o,s:s,s:i,s:f,s:o}", "nodes", nodes, "rtt_ms", rtt, "rate_mbit",
                     rate > 0 ? json_real(rate) : json_null(), "status",
                     st == 0 ? "ok" : "failed", "exit", st, "wall_s", wall, "tokens_per_s",
                     isnan(tps) ? json_null() : json_real(tps));
}

/* ---- output ---- */

static json_t *jstat(const stat_t *st)
{
    if (!st->ok) return json_null();
    return json_pack("{s:f,s:f,s:f}", "median", st->med, "min", st->min, "max", st->max);
}

static json_t *jnum(double v) { return isnan(v) || isinf(v) ? json_null() : json_real(v); }

static json_t *point_json(const point_t *p)
{
    json_t *j = json_pack("{s:i,s:f,s:o,s:i,s:s,s:i,s:b,s:s,s:i}", "nodes", (int)p->nodes,
                          "rtt_ms", p->rtt, "rate_mbit", p->rate > 0 ? json_real(p->rate) : json_null(),
                          "concurrency", (int)p->conc, "dtype", dtype_names[(int)p->dtype],
                          "micro_batches", (int)p->mb, "speculation", p->spec > 0, "status",
                          p->status, "repeats", p->repeats);
    if (p->reason[0]) json_object_set_new(j, "reason", json_string(p->reason));
    if (strcmp(p->status, "ok")) return j;
    json_object_set_new(j, "tokens_per_s", jstat(&p->tok_s));
    json_object_set_new(j, "ttft_ms", jstat(&p->ttft_ms));
    json_object_set_new(j, "itl_ms", jstat(&p->itl_ms));
    json_object_set_new(j, "round_trips_per_token", jstat(&p->rt_per_tok));
    json_object_set_new(j, "bytes_per_token", jstat(&p->bytes_per_tok));
    json_object_set_new(j, "link_bytes_per_token", jstat(&p->link_bytes_per_tok));
    json_object_set_new(j, "time_per_token_ms", jstat(&p->tpt_ms));
    json_object_set_new(j, "overlap_efficiency", jnum(p->overlap));
    json_object_set_new(j, "limit",
                        json_pack("{s:o,s:o,s:o,s:o,s:o,s:s,s:o}", "tokens_per_round_trip",
                                  jnum(p->lim.tokens_per_rt), "compute_ms",
                                  jnum(p->lim.compute_s * 1e3), "latency_ms",
                                  jnum(p->lim.latency_s * 1e3), "wire_ms",
                                  jnum(p->lim.wire_s * 1e3), "limit_ms",
                                  jnum(p->lim.limit_s * 1e3), "bound", p->lim.bound,
                                  "measured_over_limit", jnum(p->lim.ratio)));
    return j;
}

static void csv_num(FILE *f, double v, bool ok)
{
    if (ok && !isnan(v) && !isinf(v)) fprintf(f, ",%.6g", v);
    else fputs(",", f);
}

static void write_csv(FILE *f, const point_t *pts, int n)
{
    fputs("nodes,rtt_ms,rate_mbit,concurrency,dtype,micro_batches,speculation,status,repeats,"
          "tokens_per_s,tokens_per_s_min,tokens_per_s_max,ttft_ms,itl_ms,round_trips_per_token,"
          "bytes_per_token,time_per_token_ms,overlap_efficiency,compute_ms,latency_ms,wire_ms,"
          "limit_ms,bound,measured_over_limit,reason\n",
          f);
    for (int i = 0; i < n; i++) {
        const point_t *p = &pts[i];
        bool ok = !strcmp(p->status, "ok");
        fprintf(f, "%d,%g,", (int)p->nodes, p->rtt);
        if (p->rate > 0) fprintf(f, "%g", p->rate);
        else fputs("unlimited", f);
        fprintf(f, ",%d,%s,%d,%s,%s,%d", (int)p->conc, dtype_names[(int)p->dtype], (int)p->mb,
                p->spec > 0 ? "on" : "off", p->status, p->repeats);
        csv_num(f, p->tok_s.med, ok), csv_num(f, p->tok_s.min, ok), csv_num(f, p->tok_s.max, ok);
        csv_num(f, p->ttft_ms.med, ok), csv_num(f, p->itl_ms.med, ok);
        csv_num(f, p->rt_per_tok.med, ok), csv_num(f, p->bytes_per_tok.med, ok);
        csv_num(f, p->tpt_ms.med, ok), csv_num(f, p->overlap, ok);
        csv_num(f, p->lim.compute_s * 1e3, ok), csv_num(f, p->lim.latency_s * 1e3, ok);
        csv_num(f, p->lim.wire_s * 1e3, ok), csv_num(f, p->lim.limit_s * 1e3, ok);
        fprintf(f, ",%s", ok ? p->lim.bound : "");
        csv_num(f, p->lim.ratio, ok);
        /* The reason is free text: quoted, its own quotes doubled. */
        fputs(",\"", f);
        for (const char *c = p->reason; *c; c++) fputs(*c == '"' ? "\"\"" : (char[2]){*c, 0}, f);
        fputs("\"\n", f);
    }
}

/* ---- grid ---- */

static int parse_axis(const char *spec, axis_t *ax)
{
    const char *eq = strchr(spec, '=');
    int id = -1;
    for (int k = 0; eq && k < AX_COUNT; k++)
        if (strlen(axis_names[k]) == (size_t)(eq - spec) && !strncmp(spec, axis_names[k], eq - spec))
            id = k;
    if (id < 0) return -1;
    axis_t a = {0};
    for (const char *p = eq + 1; *p;) {
        size_t len = strcspn(p, ",");
        char w[32];
        if (len == 0 || len >= sizeof(w) || a.n == AXIS_MAX) return -1;
        snprintf(w, sizeof(w), "%.*s", (int)len, p);
        double v = NAN;
        char *end;
        if (id == AX_DTYPE) {
            for (int d = 0; d < 4; d++)
                if (!strcmp(w, dtype_names[d])) v = d;
        } else if (id == AX_SPEC) {
            v = !strcmp(w, "on") || !strcmp(w, "1") ? 1 : !strcmp(w, "off") || !strcmp(w, "0") ? 0 : NAN;
        } else if (id == AX_RATE && (!strcmp(w, "unlimited") || !strcmp(w, "inf"))) {
            v = 0;
        } else {
            v = strtod(w, &end);
            if (*end) v = NAN;
        }
        const double lo[AX_COUNT] = {1, 0, 0, 1, 0, 1, 0};
        const double hi[AX_COUNT] = {NODES_MAX, 10000, 1e6, 256, 3, 16, 1};
        if (isnan(v) || v < lo[id] || v > hi[id]) return -1;
        if (id != AX_RTT && id != AX_RATE && v != floor(v)) return -1;
        a.v[a.n++] = v;
        p += len + (p[len] == ',');
    }
    if (a.n == 0) return -1;
    ax[id] = a;
    return 0;
}

static void set_axis(axis_t *a, int n, const double *v)
{
    a->n = n;
    memcpy(a->v, v, sizeof(double) * (size_t)n);
}

/* The full grid, or the quick one (a few minutes: 8 points, one repeat). */
static void default_grid(axis_t *ax, bool quick)
{
    if (quick) {
        set_axis(&ax[AX_NODES], 2, (double[]){1, 2});
        set_axis(&ax[AX_RTT], 2, (double[]){0, 2});
        set_axis(&ax[AX_RATE], 1, (double[]){0});
        set_axis(&ax[AX_CONC], 2, (double[]){1, 4});
        set_axis(&ax[AX_DTYPE], 1, (double[]){0});
        set_axis(&ax[AX_MB], 1, (double[]){1});
        set_axis(&ax[AX_SPEC], 1, (double[]){0});
        return;
    }
    set_axis(&ax[AX_NODES], 4, (double[]){1, 2, 3, 4});
    set_axis(&ax[AX_RTT], 5, (double[]){0, 0.2, 1, 2, 5});
    set_axis(&ax[AX_RATE], 3, (double[]){100, 1000, 0});
    set_axis(&ax[AX_CONC], 3, (double[]){1, 4, 16});
    set_axis(&ax[AX_DTYPE], 3, (double[]){0, 2, 3});
    set_axis(&ax[AX_MB], 2, (double[]){1, 2});
    set_axis(&ax[AX_SPEC], 2, (double[]){0, 1});
}

static void print_row(const point_t *p)
{
    char rate[32];
    if (p->rate > 0) snprintf(rate, sizeof(rate), "%g", p->rate);
    else snprintf(rate, sizeof(rate), "unl");
    printf("| %d | %g | %s | %d | %s | %d | %s | ", (int)p->nodes, p->rtt, rate, (int)p->conc,
           dtype_names[(int)p->dtype], (int)p->mb, p->spec > 0 ? "on" : "off");
    if (strcmp(p->status, "ok")) {
        printf("%s: %s |\n", p->status, p->reason);
    } else {
        printf("%.1f (%.1f-%.1f) | %.1f | %.2f | %.2f | %.0f | %.2f | %.3f %s | %.1fx |\n",
               p->tok_s.med, p->tok_s.min, p->tok_s.max, p->ttft_ms.med, p->itl_ms.med,
               p->rt_per_tok.med, p->bytes_per_tok.med, p->tpt_ms.med, p->lim.limit_s * 1e3,
               p->lim.bound, p->lim.ratio);
    }
    fflush(stdout);
}

/* A private directory for logs and cluster state, unless one was given. */
static int make_state(sweep_t *s, const char *given)
{
    if (given) {
        snprintf(s->state, sizeof(s->state), "%s", given);
        if (mkdir(s->state, 0755) != 0 && errno != EEXIST) return -errno;
        return 0;
    }
    snprintf(s->state, sizeof(s->state), "/tmp/moemesh-sweep-%d-XXXXXX", (int)getpid());
    return mkdtemp(s->state) ? 0 : -errno;
}

static void default_bin(sweep_t *s, char *buf, size_t cap)
{
    ssize_t n = readlink("/proc/self/exe", buf, cap - 1);
    if (n <= 0) n = 0;
    buf[n] = 0;
    char *slash = strrchr(buf, '/');
    if (slash) *slash = 0;
    s->bin = buf;
}

int bench_sweep_main(int argc, char **argv)
{
    sweep_t s = {.repeat = 3, .requests = 0, .prompt_len = 16, .max_tokens = 32, .threads = 1};
    const char *state = NULL, *mode = "auto";
    float bw = 0;
    bool quick = false, loopback = false;
    coord_opt_list_t grid = {0};
    static char bin_buf[PATH_MAX], script_buf[PATH_MAX + 64];
    s.out = "sweep";
    const coord_opt_t opts[] = {
        {"model", 'm', "MOEMESH_MODEL", COORD_OPT_STR, &s.model, "FILE", "GGUF model (required)"},
        {"quick", 0, NULL, COORD_OPT_BOOL, &quick, NULL, "small grid, one repeat: a few minutes"},
        {"grid", 0, NULL, COORD_OPT_LIST, &grid, "AXIS=V,V",
         "values of one axis (repeatable): nodes, rtt (ms), rate (Mbit/s or unlimited), conc, "
         "dtype (f32 f16 bf16 q8_0), mb (micro-batches), spec (off on)"},
        {"repeat", 'r', NULL, COORD_OPT_INT, &s.repeat, "N", "runs per point (3; --quick: 1)"},
        {"requests", 'n', NULL, COORD_OPT_INT, &s.requests, "N",
         "requests per run (default 2 x concurrency)"},
        {"prompt-len", 0, NULL, COORD_OPT_INT, &s.prompt_len, "N", "prompt tokens (16)"},
        {"max-tokens", 0, NULL, COORD_OPT_INT, &s.max_tokens, "N", "tokens per request (32)"},
        {"threads", 't', NULL, COORD_OPT_INT, &s.threads, "N", "coordinator threads (1)"},
        {"mode", 0, NULL, COORD_OPT_STR, &mode, "M",
         "netns (cluster.sh, root), loopback (proxies) or auto (netns when root)"},
        {"loopback", 0, NULL, COORD_OPT_BOOL, &loopback, NULL, "same as --mode loopback"},
        {"bandwidth", 0, NULL, COORD_OPT_FLOAT, &bw, "GB/S",
         "memory read bandwidth for the limit model (default: measure, ~2 s)"},
        {"bin", 0, NULL, COORD_OPT_STR, &s.bin, "DIR", "moemesh programs (default: ours)"},
        {"cluster-script", 0, NULL, COORD_OPT_STR, &s.script, "FILE",
         "deploy/local/cluster.sh (default: BIN/../../deploy/local/cluster.sh)"},
        {"state-dir", 0, NULL, COORD_OPT_STR, &state, "DIR", "logs and cluster state (a /tmp dir)"},
        {"baseline-cmd", 0, NULL, COORD_OPT_STR, &s.baseline, "CMD",
         "llama.cpp-style baseline run once per link setting (skipped when not installed)"},
        {"out", 'o', NULL, COORD_OPT_STR, &s.out, "PREFIX", "writes PREFIX.json, PREFIX.csv (sweep)"},
    };
    const int n_opts = (int)(sizeof(opts) / sizeof(opts[0]));
    g_stop = 0;
    int r = coord_opts_parse(opts, n_opts, "sweep", argc, argv, 1);
    if (r) return r > 0 ? 0 : 2;
    if (loopback) mode = "loopback";
    default_grid(s.ax, quick);
    for (int i = 0; i < grid.n; i++)
        if (parse_axis(grid.v[i], s.ax) != 0) {
            fprintf(stderr, "sweep: bad --grid '%s' (AXIS=V,V with AXIS one of nodes rtt rate "
                            "conc dtype mb spec, at most %d values in range)\n",
                    grid.v[i], AXIS_MAX);
            return 2;
        }
    if (quick && s.repeat == 3) s.repeat = 1;
    if (!s.model || s.repeat < 1 || s.repeat > REPEAT_MAX || s.requests < 0 ||
        s.requests > 100000 || s.prompt_len < 1 || s.prompt_len > 4096 || s.max_tokens < 1 ||
        s.max_tokens > 4096 || s.threads < 1 || s.threads > 256 || bw < 0) {
        fprintf(stderr, "sweep: -m MODEL is required; --repeat 1..%d, --prompt-len and "
                        "--max-tokens 1..4096, --threads 1..256\n",
                REPEAT_MAX);
        return 2;
    }
    if (!s.bin) default_bin(&s, bin_buf, sizeof(bin_buf));
    if (!s.script) {
        snprintf(script_buf, sizeof(script_buf), "%s/../../deploy/local/cluster.sh", s.bin);
        s.script = script_buf;
    }
    if (!strcmp(mode, "auto")) mode = geteuid() == 0 && access(s.script, R_OK) == 0 ? "netns" : "loopback";
    if (strcmp(mode, "netns") && strcmp(mode, "loopback")) {
        fprintf(stderr, "sweep: --mode is netns, loopback or auto\n");
        return 2;
    }
    s.netns = !strcmp(mode, "netns");
    if (s.netns && geteuid() != 0) {
        fprintf(stderr, "sweep: --mode netns needs root (network namespaces); use --loopback\n");
        return 2;
    }
    long total = 1;
    for (int k = 0; k < AX_COUNT; k++) total *= s.ax[k].n;
    if (total > POINTS_MAX) {
        fprintf(stderr, "sweep: %ld points is more than %d\n", total, POINTS_MAX);
        return 2;
    }
    model_t *m = NULL;
    int err = model_load(s.model, &m);
    if (err) {
        fprintf(stderr, "sweep: cannot load %s: %s\n", s.model, model_strerror(err));
        return 1;
    }
    if (m->hp.n_expert == 0) {
        fprintf(stderr, "sweep: %s is dense: no experts for the nodes\n", s.model);
        model_free(m);
        return 1;
    }
    s.active_bytes = bench_limit_active_bytes(m);
    s.n_layers = m->hp.n_layer;
    model_free(m);
    if (make_state(&s, state) != 0) {
        fprintf(stderr, "sweep: cannot make a state directory: %s\n", strerror(errno));
        return 1;
    }
    if (bw > 0) {
        s.bw_gbs = bw;
    } else {
        kern_pool_t *pool = kern_pool_new(s.threads);
        s.bw_gbs = bench__read_bandwidth(pool);
        kern_pool_free(pool);
    }
    struct sigaction sa = {.sa_handler = on_signal};
    struct sigaction old_int, old_term;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);

    printf("sweep: %ld points x %d repeats, %s links, model %s (%d layers, %.3f MB active per "
           "token), read bandwidth %.1f GB/s, logs in %s\n",
           total, s.repeat, mode, s.model, s.n_layers, s.active_bytes / 1e6, s.bw_gbs, s.state);
    printf("| nodes | RTT ms | Mbit/s | conc | dtype | mb | spec | tok/s (min-max) | TTFT ms | "
           "ITL ms | RT/tok | B/tok | ms/tok | limit ms | measured/limit |\n"
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    point_t *pts = xcalloc((size_t)total, sizeof(point_t));
    json_t *baseline = json_array();
    char word[256];
    const bool have_baseline = s.baseline && installed(s.baseline, word, sizeof(word));
    if (s.baseline && !have_baseline)
        printf("baseline: '%s' is not installed; skipped\n", word);
    int n = 0, failed = 0, env_idx = 0;
    const axis_t *ax = s.ax;
    for (int a = 0; a < ax[AX_NODES].n && !g_stop; a++)
        for (int b = 0; b < ax[AX_RTT].n && !g_stop; b++)
            for (int c = 0; c < ax[AX_RATE].n && !g_stop; c++) {
                const int nodes = (int)ax[AX_NODES].v[a];
                const double rtt = ax[AX_RTT].v[b], rate = ax[AX_RATE].v[c];
                links_t l = {.home_ns = -1};
                char why[256] = "";
                int up = s.netns ? links_up_netns(&s, &l, nodes, rtt, rate, why, sizeof(why))
                                 : links_up_loopback(&s, &l, nodes, rtt, rate, why, sizeof(why));
                if (up == 0 && have_baseline)
                    json_array_append_new(baseline, run_baseline(&s, &l, nodes, rtt, rate, env_idx));
                for (int d = 0; d < ax[AX_DTYPE].n; d++)
                    for (int e = 0; e < ax[AX_CONC].n; e++)
                        for (int f = 0; f < ax[AX_MB].n; f++)
                            for (int g = 0; g < ax[AX_SPEC].n && !g_stop; g++) {
                                point_t *p = &pts[n];
                                *p = (point_t){.nodes = nodes, .rtt = rtt, .rate = rate,
                                               .dtype = ax[AX_DTYPE].v[d],
                                               .conc = ax[AX_CONC].v[e], .mb = ax[AX_MB].v[f],
                                               .spec = ax[AX_SPEC].v[g]};
                                if (up == 0) {
                                    run_point(&s, &l, p, n);
                                } else {
                                    p->status = "failed";
                                    snprintf(p->reason, sizeof(p->reason), "%s", why);
                                }
                                failed += !strcmp(p->status, "failed");
                                explain(&s, p, 1);
                                print_row(p);
                                n++;
                            }
                links_down(&s, &l);
                env_idx++;
            }
    explain(&s, pts, n); /* again over all points: overlap needs each RTT-0 twin */

    json_t *cmd = json_array();
    for (int i = 0; i < argc; i++) json_array_append_new(cmd, json_string(argv[i]));
    char date[64];
    time_t now = time(NULL);
    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    struct utsname u;
    uname(&u);
    double load[3] = {0};
    getloadavg(load, 3);
    json_t *pj = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(pj, point_json(&pts[i]));
    json_t *root = json_pack(
        "{s:{s:o,s:s,s:s,s:i,s:s,s:s,s:i,s:f,s:f,s:i,s:i,s:i,s:i,s:i,s:f,s:i},s:o,s:o}", "meta",
        "command", cmd, "date", date, "host", u.nodename, "cpus", (int)sysconf(_SC_NPROCESSORS_ONLN),
        "mode", mode, "model", s.model, "n_layers", s.n_layers, "active_bytes", s.active_bytes,
        "bandwidth_gbs", s.bw_gbs, "repeat", s.repeat, "requests", s.requests,
        "prompt_len", s.prompt_len, "max_tokens", s.max_tokens, "threads", s.threads,
        "loadavg_1m", load[0], "interrupted", (int)g_stop, "points", pj, "baseline",
        s.baseline ? (have_baseline ? baseline : json_pack("{s:s,s:s}", "status", "skipped",
                                                           "reason", "not installed"))
                   : json_null());
    if (!s.baseline || !have_baseline) json_decref(baseline);
    char path[PATH_MAX + 16];
    int rc = failed ? 1 : 0;
    snprintf(path, sizeof(path), "%s.json", s.out);
    if (json_dump_file(root, path, JSON_INDENT(1) | JSON_REAL_PRECISION(6)) != 0) {
        fprintf(stderr, "sweep: cannot write %s\n", path);
        rc = 1;
    }
    json_decref(root);
    snprintf(path, sizeof(path), "%s.csv", s.out);
    FILE *f = fopen(path, "w");
    if (f) {
        write_csv(f, pts, n);
        fclose(f);
    } else {
        fprintf(stderr, "sweep: cannot write %s\n", path);
        rc = 1;
    }
    printf("sweep: %d points, %d failed%s; wrote %s.json and %s.csv\n", n, failed,
           g_stop ? " (interrupted)" : "", s.out, s.out);
    free(pts);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return g_stop ? 130 : rc;
}
