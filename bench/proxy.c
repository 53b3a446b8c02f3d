/* `moemesh-bench proxy`: runs wire/proxy.c's relay on its own loop until SIGINT or SIGTERM, so a
 * coordinator and an expert node can be put behind a delay and a rate cap by hand or by a
 * benchmark script (netem is missing on these kernels). Prints `listening on HOST:PORT` once
 * ready and the byte counters at exit.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "bench/bench.h"
#include "wire/wire.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: moemesh-bench proxy --listen HOST:PORT --to HOST:PORT [--delay-ms D]\n"
               "                           [--jitter-ms J] [--rate-mbit R] [--seed S]\n"
               "  one-way delay D ms (+- J ms uniform, order kept) and R Mbit/s, each direction\n");
}

/* Splits "HOST:PORT" or "[V6]:PORT" into host (copied into buf) and port; 0 or -EINVAL. */
static int split_hostport(const char *s, char *buf, size_t buf_len, int *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s) return -EINVAL;
    const char *h = s;
    size_t n = (size_t)(colon - s);
    if (h[0] == '[' && n >= 2 && h[n - 1] == ']') {
        h++;
        n -= 2;
    }
    if (n == 0 || n >= buf_len) return -EINVAL;
    memcpy(buf, h, n);
    buf[n] = '\0';
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || p < 0 || p > 65535) return -EINVAL;
    *port = (int)p;
    return 0;
}

static int parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    *out = strtod(s, &end);
    return errno || *end || end == s ? -EINVAL : 0;
}

typedef struct {
    wire_proxy_t *px;
    uv_signal_t sig[2];
} run_t;

static void on_signal(uv_signal_t *h, int signum)
{
    run_t *r = h->data;
    (void)signum;
    if (!r->px) return;
    wire_proxy_stats_t st = wire_proxy_stats(r->px);
    printf("bytes to target %llu, to client %llu, connections %llu\n",
           (unsigned long long)st.to_target, (unsigned long long)st.to_client,
           (unsigned long long)st.accepted);
    fflush(stdout);
    wire_proxy_close(r->px, NULL, NULL);
    r->px = NULL;
    for (int i = 0; i < 2; i++)
        uv_close((uv_handle_t *)&r->sig[i], NULL);
}

int bench_proxy_main(int argc, char **argv)
{
    char listen_host[256] = "", target_host[256] = "";
    wire_proxy_config_t cfg = {.seed = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (!v) {
            bad = 1;
        } else if (strcmp(a, "--listen") == 0) {
            bad = split_hostport(v, listen_host, sizeof(listen_host), &cfg.listen_port);
        } else if (strcmp(a, "--to") == 0) {
            bad = split_hostport(v, target_host, sizeof(target_host), &cfg.target_port);
        } else if (strcmp(a, "--delay-ms") == 0) {
            bad = parse_double(v, &cfg.delay_ms);
        } else if (strcmp(a, "--jitter-ms") == 0) {
            bad = parse_double(v, &cfg.jitter_ms);
        } else if (strcmp(a, "--rate-mbit") == 0) {
            bad = parse_double(v, &cfg.rate_mbit);
        } else if (strcmp(a, "--seed") == 0) {
            char *end;
            cfg.seed = strtoull(v, &end, 10);
            bad = *end != '\0';
        } else {
            bad = 1;
        }
        if (bad) {
            fprintf(stderr, "moemesh-bench proxy: bad option '%s'%s%s\n", a, v ? " " : "",
                    v ? v : "");
            usage(stderr);
            return 2;
        }
        i++;
    }
    if (!listen_host[0] || !target_host[0]) {
        usage(stderr);
        return 2;
    }
    cfg.listen_host = listen_host;
    cfg.target_host = target_host;

    /* A peer that resets would otherwise kill the relay on its next write. */
    signal(SIGPIPE, SIG_IGN);
    uv_loop_t loop;
    uv_loop_init(&loop);
    run_t r = {0};
    r.px = wire_proxy_new(&loop, &cfg);
    if (!r.px) {
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        return 1;
    }
    int sigs[2] = {SIGINT, SIGTERM};
    for (int i = 0; i < 2; i++) {
        uv_signal_init(&loop, &r.sig[i]);
        r.sig[i].data = &r;
        uv_signal_start(&r.sig[i], on_signal, sigs[i]);
    }
    printf("listening on %s:%d\n", listen_host, wire_proxy_port(r.px));
    fflush(stdout);
    uv_run(&loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&loop);
    return rc == 0 ? 0 : 1;
}
