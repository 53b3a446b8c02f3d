/* `moemesh-bench serve`: a small load client for the HTTP API, reporting what `vllm bench
 * serve` reports — successful and failed requests, request and token throughput, and mean,
 * median and p99 of time to first token (TTFT), time per output token (TPOT, after the first)
 * and inter-token latency (ITL, between streamed chunks). Each of -c threads sends streamed
 * /v1/completions requests one after another over keep-alive connections until -n requests have
 * been sent, or, with --duration, until that many seconds have passed (a soak). Prompts are
 * random token ids (so their length is exact) when the server reports its vocabulary in
 * /v1/models, else text. With --pid, a sampler thread reads the server's resident memory and
 * open file descriptors from /proc every --sample seconds and reports their growth after the
 * warm-up (the first --warmup seconds), which is what a leak shows as.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench/bench.h"
#include "coordinator/coord.h"
#include "wire/wire.h"

typedef struct {
    struct sockaddr_storage addr;
    socklen_t addr_len;
    const char *api_key;
    int n_req, prompt_len, max_tokens, n_vocab;
    double deadline;    /* wire_now() at which a --duration run stops sending; 0: -n counts */
    atomic_int next;
} cfg_t;

typedef struct {
    bool ok;
    double ttft, e2e;   /* seconds */
    int n_out, n_prompt;
    double *itl;        /* (n_itl) seconds between content chunks */
    int n_itl;
} result_t;

typedef struct {
    int fd;
    char *buf;          /* (len) bytes received, not yet used */
    size_t len, cap;
} conn_t;

static int conn_open(const cfg_t *c)
{
    int fd = socket(c->addr.ss_family, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    if (connect(fd, (const struct sockaddr *)&c->addr, c->addr_len) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* More bytes, waiting at most 120 s; false on EOF, error or timeout. */
static bool fill(conn_t *k)
{
    struct pollfd pf = {.fd = k->fd, .events = POLLIN};
    if (poll(&pf, 1, 120000) != 1) return false;
    if (k->cap - k->len < 4096) {
        k->cap = k->cap * 2 + 16384;
        k->buf = xrealloc(k->buf, k->cap);
    }
    ssize_t n = recv(k->fd, k->buf + k->len, k->cap - k->len - 1, 0);
    if (n <= 0) return false;
    k->len += (size_t)n;
    k->buf[k->len] = 0;
    return true;
}

static void eat(conn_t *k, size_t n)
{
    memmove(k->buf, k->buf + n, k->len - n);
    k->len -= n;
}

static bool send_all(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t k = send(fd, s, n, MSG_NOSIGNAL);
        if (k <= 0) return false;
        s += k, n -= (size_t)k;
    }
    return true;
}

/* One SSE event's JSON: counts content chunks and picks up usage. */
static void on_event(const char *data, double t, double t0, result_t *r, double *t_last)
{
    json_t *j = json_loads(data, 0, NULL);
    if (!j) return;
    json_t *u = json_object_get(j, "usage");
    if (json_is_object(u)) {
        r->n_out = (int)json_integer_value(json_object_get(u, "completion_tokens"));
        r->n_prompt = (int)json_integer_value(json_object_get(u, "prompt_tokens"));
    }
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    json_t *text = ch ? json_object_get(ch, "text") : NULL;
    if (json_is_string(text) && json_string_length(text) > 0) {
        if (*t_last < 0) r->ttft = t - t0;
        else r->itl[r->n_itl++] = t - *t_last;
        *t_last = t;
    }
    json_decref(j);
}

/* Sends one streamed request on k (reconnecting when needed) and reads the whole answer. */
static result_t one_request(const cfg_t *c, conn_t *k, unsigned seed)
{
    result_t r = {.itl = xcalloc((size_t)c->max_tokens + 4, sizeof(double))};
    json_t *body = json_pack("{s:i,s:b,s:{s:b},s:f}", "max_tokens", c->max_tokens, "stream", 1,
                             "stream_options", "include_usage", 1, "temperature", 1.0);
    if (c->n_vocab > 0) {
        json_t *ids = json_array();
        for (int i = 0; i < c->prompt_len; i++) {
            seed = seed * 1103515245u + 12345u;
            json_array_append_new(ids, json_integer(10 + (seed >> 8) % (unsigned)(c->n_vocab - 10)));
        }
        json_object_set_new(body, "prompt", ids);
    } else {
        char *t = xcalloc((size_t)c->prompt_len * 4 + 1, 1);
        for (int i = 0; i < c->prompt_len; i++) strcat(t, "the ");
        json_object_set_new(body, "prompt", json_string(t));
        free(t);
    }
    char *b = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    /* Head and body leave in one send: two small writes would meet Nagle's algorithm and the
     * server's delayed ACK, adding ~40 ms to every request. */
    size_t blen = strlen(b);
    char *head = xmalloc(blen + 512);
    int hn = snprintf(head, 512,
                      "POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: "
                      "application/json\r\nContent-Length: %zu\r\n%s%s%s\r\n",
                      strlen(b), c->api_key ? "Authorization: Bearer " : "",
                      c->api_key ? c->api_key : "", c->api_key ? "\r\n" : "");
    if (k->fd < 0) k->fd = conn_open(c);
    double t0 = wire_now(), t_last = -1;
    memcpy(head + hn, b, blen);
    bool sent = k->fd >= 0 && send_all(k->fd, head, (size_t)hn + blen);
    free(b);
    free(head);
    if (!sent) goto fail;
    /* Head. */
    char *end;
    while (!(end = k->len ? strstr(k->buf, "\r\n\r\n") : NULL))
        if (!fill(k)) goto fail;
    int status = 0;
    sscanf(k->buf, "HTTP/1.1 %d", &status);
    bool chunked = strstr(k->buf, "Transfer-Encoding: chunked") &&
                   strstr(k->buf, "Transfer-Encoding: chunked") < end;
    eat(k, (size_t)(end - k->buf) + 4);
    if (status != 200 || !chunked) goto fail;
    /* Chunks, each holding whole "data: ...\n\n" events as the server writes them. */
    for (;;) {
        char *nl;
        while (!(nl = k->len ? strstr(k->buf, "\r\n") : NULL))
            if (!fill(k)) goto fail;
        size_t n = strtoul(k->buf, NULL, 16);
        size_t hl = (size_t)(nl - k->buf) + 2;
        while (k->len < hl + n + 2)
            if (!fill(k)) goto fail;
        double t = wire_now();
        if (n == 0) {
            eat(k, hl + 2);
            break;
        }
        k->buf[hl + n] = 0;
        for (char *ev = k->buf + hl; ev && *ev;) {
            char *e2 = strstr(ev, "\n\n");
            if (e2) *e2 = 0;
            if (!strncmp(ev, "data: ", 6) && strcmp(ev + 6, "[DONE]"))
                on_event(ev + 6, t, t0, &r, &t_last);
            ev = e2 ? e2 + 2 : NULL;
        }
        eat(k, hl + n + 2);
    }
    r.e2e = wire_now() - t0;
    r.ok = r.n_out > 0 && t_last >= 0;
    return r;
fail:
    if (k->fd >= 0) close(k->fd);
    k->fd = -1;
    k->len = 0;
    r.ok = false;
    return r;
}

typedef struct {
    cfg_t *c;
    pthread_t th;
    result_t *res;      /* (n) requests this worker sent, in its order */
    int n, cap;
} worker_t;

static void *worker(void *arg)
{
    worker_t *w = arg;
    conn_t k = {.fd = -1};
    for (;;) {
        int i = atomic_fetch_add(&w->c->next, 1);
        if (w->c->deadline > 0 ? wire_now() >= w->c->deadline : i >= w->c->n_req) break;
        if (w->n == w->cap) {
            w->cap = w->cap * 2 + 64;
            w->res = xrealloc(w->res, sizeof(result_t) * (size_t)w->cap);
        }
        w->res[w->n++] = one_request(w->c, &k, (unsigned)i * 2654435761u + 1);
    }
    if (k.fd >= 0) close(k.fd);
    free(k.buf);
    return NULL;
}

/* ---- the server's footprint, sampled from /proc while the load runs ---- */

typedef struct {
    int pid;
    double every, warmup, t0;
    atomic_bool stop;
    pthread_t th;
    /* Filled by the sampler thread; read after it is joined. */
    int n;
    double rss_warm, rss_end, rss_max; /* MiB */
    int fd_warm, fd_end, fd_max;
    bool warm;
} sampler_t;

/* Resident MiB of pid from /proc/PID/statm, or -1. */
static double rss_mib(int pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/statm", pid);
    FILE *f = fopen(path, "r");
    unsigned long long size, res;
    int n = f ? fscanf(f, "%llu %llu", &size, &res) : 0;
    if (f) fclose(f);
    return n == 2 ? (double)res * (double)sysconf(_SC_PAGESIZE) / 1048576.0 : -1;
}

/* Open descriptors of pid (entries of /proc/PID/fd), or -1. */
static int fd_count(int pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", pid);
    DIR *d = opendir(path);
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static void *sampler(void *arg)
{
    sampler_t *s = arg;
    while (!atomic_load(&s->stop)) {
        double rss = rss_mib(s->pid);
        int fds = fd_count(s->pid);
        if (rss < 0 || fds < 0) break; /* the server is gone: the load reports the failures */
        double t = wire_now() - s->t0;
        if (!s->warm && t >= s->warmup) s->warm = true, s->rss_warm = rss, s->fd_warm = fds;
        if (rss > s->rss_max) s->rss_max = rss;
        if (fds > s->fd_max) s->fd_max = fds;
        s->rss_end = rss, s->fd_end = fds;
        s->n++;
        for (double slept = 0; slept < s->every && !atomic_load(&s->stop); slept += 0.1)
            usleep(100000);
    }
    return NULL;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void stats_row(const char *name, double *v, int n)
{
    if (n == 0) {
        printf("%-28s %10s %10s %10s\n", name, "-", "-", "-");
        return;
    }
    qsort(v, (size_t)n, sizeof(double), cmp_d);
    double sum = 0;
    for (int i = 0; i < n; i++) sum += v[i];
    double med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    int p99 = (int)(0.99 * (n - 1) + 0.5);
    printf("%-28s %10.2f %10.2f %10.2f\n", name, 1e3 * sum / n, 1e3 * med, 1e3 * v[p99]);
}

/* Resolves http://HOST:PORT into c->addr; 0 or -EINVAL. */
static int parse_url(const char *url, cfg_t *c)
{
    if (strncmp(url, "http://", 7)) return -EINVAL;
    char host[256];
    snprintf(host, sizeof(host), "%s", url + 7);
    char *slash = strchr(host, '/');
    if (slash) *slash = 0;
    char *colon = strrchr(host, ':');
    const char *port = "80";
    if (colon) *colon = 0, port = colon + 1;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(host, port, &hints, &ai) != 0) return -EINVAL;
    memcpy(&c->addr, ai->ai_addr, ai->ai_addrlen);
    c->addr_len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
}

/* n_vocab from /v1/models ("meta"), or 0. */
static int fetch_vocab(const cfg_t *c)
{
    conn_t k = {.fd = conn_open(c)};
    if (k.fd < 0) return -1;
    char req[512];
    int n = snprintf(req, sizeof(req),
                     "GET /v1/models HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n%s%s%s\r\n",
                     c->api_key ? "Authorization: Bearer " : "", c->api_key ? c->api_key : "",
                     c->api_key ? "\r\n" : "");
    send_all(k.fd, req, (size_t)n);
    while (fill(&k)) continue;
    close(k.fd);
    int v = 0;
    char *body = k.buf ? strstr(k.buf, "\r\n\r\n") : NULL;
    json_t *j = body ? json_loads(body + 4, 0, NULL) : NULL;
    json_t *m = json_array_get(json_object_get(j, "data"), 0);
    json_t *nv = json_object_get(json_object_get(m, "meta"), "n_vocab");
    if (json_is_integer(nv)) v = (int)json_integer_value(nv);
    json_decref(j);
    free(k.buf);
    return k.buf ? v : -1;
}

int bench_serve_main(int argc, char **argv)
{
    const char *url = NULL;
    int conc = 4, n_req = 32, prompt_len = 32, max_tokens = 64, pid = 0;
    float duration = 0, every = 5, warmup = 60;
    cfg_t c = {0};
    const coord_opt_t opts[] = {
        {"url", 0, "MOEMESH_BENCH_URL", COORD_OPT_STR, &url, "URL", "server, http://HOST:PORT"},
        {"concurrency", 'c', NULL, COORD_OPT_INT, &conc, "N", "requests in flight (4)"},
        {"requests", 'n', NULL, COORD_OPT_INT, &n_req, "N", "requests in all (32)"},
        {"prompt-len", 0, NULL, COORD_OPT_INT, &prompt_len, "N", "prompt tokens (32)"},
        {"max-tokens", 0, NULL, COORD_OPT_INT, &max_tokens, "N", "max_tokens per request (64)"},
        {"api-key", 0, "MOEMESH_API_KEY", COORD_OPT_STR, &c.api_key, "KEY", "bearer token"},
        {"duration", 0, NULL, COORD_OPT_FLOAT, &duration, "S",
         "send for S seconds instead of -n requests (a soak)"},
        {"pid", 0, NULL, COORD_OPT_INT, &pid, "PID",
         "sample this server's RSS and open fds during the run"},
        {"sample", 0, NULL, COORD_OPT_FLOAT, &every, "S", "seconds between samples (5)"},
        {"warmup", 0, NULL, COORD_OPT_FLOAT, &warmup, "S",
         "growth is measured from this many seconds in (60)"},
    };
    int r = coord_opts_parse(opts, (int)(sizeof(opts) / sizeof(opts[0])), "serve", argc, argv, 1);
    if (r) return r > 0 ? 0 : 2;
    if (!url || parse_url(url, &c) != 0 || conc < 1 || conc > 1024 || n_req < 1 ||
        prompt_len < 1 || prompt_len > 100000 || max_tokens < 1 || max_tokens > 100000 ||
        !(duration >= 0 && duration < 1e6) || pid < 0 || !(every >= 0.1) || !(warmup >= 0)) {
        fprintf(stderr, "serve: need --url http://HOST:PORT and positive -c, -n, --prompt-len, "
                        "--max-tokens (--duration >= 0, --sample >= 0.1, --warmup >= 0)\n");
        return 2;
    }
    if (pid > 0 && rss_mib(pid) < 0) {
        fprintf(stderr, "serve: --pid %d: no such process (or /proc not readable)\n", pid);
        return 2;
    }
    c.n_req = n_req, c.prompt_len = prompt_len, c.max_tokens = max_tokens;
    c.n_vocab = fetch_vocab(&c);
    if (c.n_vocab < 0) {
        fprintf(stderr, "serve: cannot reach %s\n", url);
        return 1;
    }
    worker_t *w = xcalloc((size_t)conc, sizeof(worker_t));
    sampler_t smp = {.pid = pid, .every = every, .warmup = warmup, .t0 = wire_now()};
    if (pid > 0) CHECK(pthread_create(&smp.th, NULL, sampler, &smp) == 0);
    double t0 = wire_now();
    if (duration > 0) c.deadline = t0 + duration;
    for (int i = 0; i < conc; i++) {
        w[i].c = &c;
        CHECK(pthread_create(&w[i].th, NULL, worker, &w[i]) == 0);
    }
    for (int i = 0; i < conc; i++) pthread_join(w[i].th, NULL);
    double dur = wire_now() - t0;
    if (pid > 0) {
        atomic_store(&smp.stop, true);
        pthread_join(smp.th, NULL);
    }
    /* Every worker's results in one array. */
    n_req = 0;
    for (int i = 0; i < conc; i++) n_req += w[i].n;
    result_t *res = xcalloc((size_t)n_req + 1, sizeof(result_t));
    for (int i = 0, k = 0; i < conc; i++) {
        if (w[i].n) memcpy(res + k, w[i].res, sizeof(result_t) * (size_t)w[i].n);
        k += w[i].n;
        free(w[i].res);
    }
    free(w);
    int ok = 0, n_itl = 0;
    long long out = 0, in = 0;
    double *ttft = xcalloc((size_t)n_req + 1, sizeof(double));
    double *tpot = xcalloc((size_t)n_req + 1, sizeof(double));
    int n_tpot = 0;
    for (int i = 0; i < n_req; i++) n_itl += res[i].n_itl;
    double *itl = xcalloc((size_t)n_itl + 1, sizeof(double));
    n_itl = 0;
    for (int i = 0; i < n_req; i++) {
        if (res[i].ok) {
            ttft[ok++] = res[i].ttft;
            out += res[i].n_out;
            in += res[i].n_prompt;
            if (res[i].n_out > 1) tpot[n_tpot++] = (res[i].e2e - res[i].ttft) / (res[i].n_out - 1);
            for (int j = 0; j < res[i].n_itl; j++) itl[n_itl++] = res[i].itl[j];
        }
        free(res[i].itl);
    }
    printf("concurrency %d, %d requests, prompt %d tokens, max_tokens %d\n", conc, n_req,
           prompt_len, max_tokens);
    printf("%-28s %10d\n", "successful requests", ok);
    printf("%-28s %10d\n", "failed requests", n_req - ok);
    printf("%-28s %10.2f\n", "duration (s)", dur);
    printf("%-28s %10.2f\n", "request throughput (req/s)", ok / dur);
    printf("%-28s %10.1f\n", "output throughput (tok/s)", out / dur);
    printf("%-28s %10.1f\n", "total throughput (tok/s)", (out + in) / dur);
    printf("%-28s %10s %10s %10s\n", "", "mean", "median", "p99");
    stats_row("TTFT (ms)", ttft, ok);
    stats_row("TPOT (ms)", tpot, n_tpot);
    stats_row("ITL (ms)", itl, n_itl);
    if (pid > 0 && smp.warm) {
        printf("server pid %d, %d samples every %.1f s; from %.0f s in (warm-up) to the end:\n",
               pid, smp.n, every, warmup);
        printf("%-28s %10.1f -> %.1f (%+.2f%%), max %.1f\n", "resident memory (MiB)",
               smp.rss_warm, smp.rss_end, 100.0 * (smp.rss_end - smp.rss_warm) / smp.rss_warm,
               smp.rss_max);
        printf("%-28s %10d -> %d (%+d), max %d\n", "open file descriptors", smp.fd_warm,
               smp.fd_end, smp.fd_end - smp.fd_warm, smp.fd_max);
    } else if (pid > 0) {
        printf("server pid %d: the run ended before the %.0f s warm-up; no growth figures\n", pid,
               warmup);
    }
    free(itl), free(ttft), free(tpot), free(res);
    return ok == n_req && n_req > 0 ? 0 : 1;
}
