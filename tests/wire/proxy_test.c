/* Tests for wire/proxy.c: bytes arrive whole and in order both ways (with jitter), the added delay
 * and the rate cap are within stated tolerances, EOF and refused connections propagate, and a real
 * ZeroMQ DEALER/ROUTER pair talks through the relay. Each test runs its own libuv loop in the test
 * thread with a target server on 127.0.0.1 port 0, and ends with uv_loop_close(&loop) == 0.
 *
 * Timing bounds are loose because Criterion runs two tests at once on two shared cores: the relay
 * must never be early (lower bounds are exact), and may be late by scheduling noise only.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include <zmq.h>

#include "wire/wire.h"

#define MS 1000000ull /* nanoseconds */

enum { SERVER_ECHO, SERVER_CLOSE_ON_DATA, SERVER_STALL_THEN_SINK };

typedef struct {
    uv_loop_t loop;
    wire_proxy_t *px;
    int mode;
    /* target server */
    uv_tcp_t server;
    uv_tcp_t sconn;
    bool sconn_used;
    int server_port;
    /* client, connected to the proxy */
    uv_tcp_t client;
    uv_connect_t creq;
    uv_shutdown_t cshut, sshut;
    uint8_t *data; /* (len) bytes the client sends */
    size_t len;
    size_t s_got, c_got; /* bytes received by server and client, checked against data */
    bool s_eof, c_eof;
    int c_err; /* client read error (negative) */
    bool mismatch;
    uint64_t s_first_ns, s_last_ns, c_first_ns, c_last_ns;
    /* ping mode */
    int pings, pings_done;
    uint64_t sent_ns;
    double one_way_ms[64], rtt_ms[64];
    uv_timer_t poll;
    uv_timer_t stall;     /* SERVER_STALL_THEN_SINK: when the server starts reading */
    size_t stalled_queue; /* client bytes libuv still held when the server started */
    wire_proxy_stats_t final;
    bool ended;
} env_t;

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint8_t *seeded(size_t n, uint64_t seed)
{
    uint8_t *p = xmalloc(n);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(splitmix(&seed) >> 56);
    return p;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    buf->base = xmalloc(suggested);
    buf->len = suggested;
}

typedef struct {
    uv_write_t req;
    void *owned;
} wr_t;

static void on_written(uv_write_t *req, int status)
{
    (void)status;
    wr_t *w = (wr_t *)req;
    free(w->owned);
    free(w);
}

/* Writes n bytes of p (taken: freed after the write) on s. */
static void write_owned(uv_stream_t *s, void *p, size_t n)
{
    wr_t *w = xcalloc(1, sizeof(*w));
    w->owned = p;
    uv_buf_t b = uv_buf_init(p, (unsigned)n);
    cr_assert_eq(uv_write(&w->req, s, &b, 1, on_written), 0);
}

/* Closes every handle of the test; the proxy last (its counters are kept first). */
static void end_all(env_t *e)
{
    if (e->ended) return;
    e->ended = true;
    e->final = wire_proxy_stats(e->px);
    if (!uv_is_closing((uv_handle_t *)&e->client)) uv_close((uv_handle_t *)&e->client, NULL);
    if (e->sconn_used && !uv_is_closing((uv_handle_t *)&e->sconn))
        uv_close((uv_handle_t *)&e->sconn, NULL);
    uv_close((uv_handle_t *)&e->server, NULL);
    if (e->poll.loop) uv_close((uv_handle_t *)&e->poll, NULL);
    if (e->stall.loop) uv_close((uv_handle_t *)&e->stall, NULL);
    wire_proxy_close(e->px, NULL, NULL);
}

static void on_server_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    env_t *e = s->data;
    if (nread > 0) {
        uint64_t now = uv_hrtime();
        if (e->s_got == 0) e->s_first_ns = now;
        e->s_last_ns = now;
        if (e->pings) {
            e->one_way_ms[e->pings_done] = (double)(now - e->sent_ns) / 1e6;
        } else if (e->s_got + (size_t)nread > e->len ||
                   memcmp(buf->base, e->data + e->s_got, (size_t)nread) != 0) {
            e->mismatch = true;
        }
        e->s_got += (size_t)nread;
        if (e->mode == SERVER_STALL_THEN_SINK) {
            free(buf->base);
            return;
        }
        if (e->mode == SERVER_CLOSE_ON_DATA) {
            free(buf->base);
            uv_close((uv_handle_t *)s, NULL);
            return;
        }
        write_owned(s, buf->base, (size_t)nread);
        return;
    }
    free(buf->base);
    if (nread == UV_EOF) {
        /* Half-close came through: answer with ours once the echoes are out. */
        e->s_eof = true;
        cr_assert_eq(uv_shutdown(&e->sshut, s, NULL), 0);
    }
}

static void on_stall_end(uv_timer_t *t)
{
    env_t *e = t->data;
    e->stalled_queue = uv_stream_get_write_queue_size((uv_stream_t *)&e->client);
    uv_read_start((uv_stream_t *)&e->sconn, on_alloc, on_server_read);
}

static void on_server_conn(uv_stream_t *server, int status)
{
    env_t *e = server->data;
    cr_assert_eq(status, 0);
    cr_assert(!e->sconn_used, "one connection per test");
    uv_tcp_init(&e->loop, &e->sconn);
    e->sconn_used = true;
    e->sconn.data = e;
    cr_assert_eq(uv_accept(server, (uv_stream_t *)&e->sconn), 0);
    uv_tcp_nodelay(&e->sconn, 1);
    if (e->mode == SERVER_STALL_THEN_SINK) {
        uv_timer_init(&e->loop, &e->stall);
        e->stall.data = e;
        uv_timer_start(&e->stall, on_stall_end, 500, 0);
        return;
    }
    uv_read_start((uv_stream_t *)&e->sconn, on_alloc, on_server_read);
}

static void send_ping(env_t *e)
{
    e->sent_ns = uv_hrtime();
    write_owned((uv_stream_t *)&e->client, xstrdup("p"), 1);
}

static void on_poll(uv_timer_t *t)
{
    env_t *e = t->data;
    if (wire_proxy_stats(e->px).open == 0) end_all(e);
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    env_t *e = s->data;
    if (nread > 0) {
        uint64_t now = uv_hrtime();
        if (e->c_got == 0) e->c_first_ns = now;
        e->c_last_ns = now;
        if (e->pings) {
            e->rtt_ms[e->pings_done++] = (double)(now - e->sent_ns) / 1e6;
            if (e->pings_done < e->pings)
                send_ping(e);
            else
                cr_assert_eq(uv_shutdown(&e->cshut, s, NULL), 0);
        } else if (e->c_got + (size_t)nread > e->len ||
                   memcmp(buf->base, e->data + e->c_got, (size_t)nread) != 0) {
            e->mismatch = true;
        }
        e->c_got += (size_t)nread;
        free(buf->base);
        return;
    }
    free(buf->base);
    if (nread == 0) return;
    if (nread == UV_EOF)
        e->c_eof = true;
    else
        e->c_err = (int)nread;
    /* The client's side is over: close it, then wait for the relay to close its connection. */
    uv_close((uv_handle_t *)s, NULL);
    uv_timer_init(&e->loop, &e->poll);
    e->poll.data = e;
    uv_timer_start(&e->poll, on_poll, 5, 5);
}

static void on_client_connected(uv_connect_t *req, int status)
{
    env_t *e = req->data;
    cr_assert_eq(status, 0);
    uv_tcp_nodelay(&e->client, 1);
    uv_read_start((uv_stream_t *)&e->client, on_alloc, on_client_read);
    if (e->pings) {
        send_ping(e);
    } else if (e->len) {
        /* One write of everything: libuv keeps the rest while the relay pushes back. */
        uv_buf_t b = uv_buf_init((char *)e->data, (unsigned)e->len);
        static uv_write_t wreq;
        cr_assert_eq(uv_write(&wreq, (uv_stream_t *)&e->client, &b, 1, NULL), 0);
        cr_assert_eq(uv_shutdown(&e->cshut, (uv_stream_t *)&e->client, NULL), 0);
    } else {
        write_owned((uv_stream_t *)&e->client, xstrdup("bye"), 3);
    }
}

static int bound_port(uv_tcp_t *t)
{
    struct sockaddr_in a;
    int len = sizeof(a);
    cr_assert_eq(uv_tcp_getsockname(t, (struct sockaddr *)&a, &len), 0);
    return ntohs(a.sin_port);
}

/* Starts the target server and the relay in front of it (cfg's addresses are filled in), then
 * connects the client to the relay. */
static void env_start(env_t *e, wire_proxy_config_t cfg)
{
    signal(SIGPIPE, SIG_IGN);
    cr_assert_eq(uv_loop_init(&e->loop), 0);
    uv_tcp_init(&e->loop, &e->server);
    e->server.data = e;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    cr_assert_eq(uv_tcp_bind(&e->server, (const struct sockaddr *)&a, 0), 0);
    cr_assert_eq(uv_listen((uv_stream_t *)&e->server, 8, on_server_conn), 0);
    e->server_port = bound_port(&e->server);
    cfg.listen_host = "127.0.0.1";
    cfg.listen_port = 0;
    cfg.target_host = "127.0.0.1";
    if (cfg.target_port == 0) cfg.target_port = e->server_port;
    e->px = wire_proxy_new(&e->loop, &cfg);
    cr_assert(e->px);
    cr_assert_gt(wire_proxy_port(e->px), 0);
    uv_tcp_init(&e->loop, &e->client);
    e->client.data = e;
    e->creq.data = e;
    uv_ip4_addr("127.0.0.1", wire_proxy_port(e->px), &a);
    cr_assert_eq(
        uv_tcp_connect(&e->creq, &e->client, (const struct sockaddr *)&a, on_client_connected), 0);
}

static void env_finish(env_t *e)
{
    cr_assert_eq(uv_run(&e->loop, UV_RUN_DEFAULT), 0);
    cr_assert(e->ended, "the test ended with everything closed");
    cr_assert_eq(uv_loop_close(&e->loop), 0);
    free(e->data);
}

static double median(double *v, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return v[n / 2];
}

Test(wire_proxy, bytes_out_equal_bytes_in_both_ways, .timeout = 30)
{
    /* 4 MiB each way with 2 +- 2 ms jitter per chunk: the release order must still hold. */
    static env_t e;
    e.len = 4u << 20;
    e.data = seeded(e.len, 42);
    env_start(&e, (wire_proxy_config_t){.delay_ms = 2, .jitter_ms = 2, .seed = 7});
    env_finish(&e);
    cr_assert(!e.mismatch, "bytes changed or reordered");
    cr_assert_eq(e.s_got, e.len);
    cr_assert_eq(e.c_got, e.len);
    cr_assert(e.s_eof && e.c_eof, "half-close passed on both ways");
    cr_assert_eq(e.c_err, 0);
    cr_assert_eq(e.final.to_target, e.len);
    cr_assert_eq(e.final.to_client, e.len);
    cr_assert_eq(e.final.accepted, 1);
    cr_assert_eq(e.final.open, 0);
}

Test(wire_proxy, delay_is_added_each_way, .timeout = 30)
{
    /* Bounds: never early (every sample >= delay); the median late by at most 20 ms one way and
     * a round trip. The median, not the maximum, because other jobs share the two cores and a
     * single sample can stall for tens of ms; a relay adding too much still fails. */
    static env_t e;
    const double delay = 10;
    e.pings = 20;
    env_start(&e, (wire_proxy_config_t){.delay_ms = delay});
    env_finish(&e);
    cr_assert_eq(e.pings_done, e.pings);
    double lo = 1e9, hi = 0, rlo = 1e9, rhi = 0;
    for (int i = 0; i < e.pings; i++) {
        lo = e.one_way_ms[i] < lo ? e.one_way_ms[i] : lo;
        hi = e.one_way_ms[i] > hi ? e.one_way_ms[i] : hi;
        rlo = e.rtt_ms[i] < rlo ? e.rtt_ms[i] : rlo;
        rhi = e.rtt_ms[i] > rhi ? e.rtt_ms[i] : rhi;
    }
    fprintf(stderr,
            "proxy delay %.0f ms: one-way min %.3f median %.3f max %.3f ms; "
            "rtt min %.3f median %.3f max %.3f ms\n",
            delay, lo, median(e.one_way_ms, e.pings), hi, rlo, median(e.rtt_ms, e.pings), rhi);
    cr_assert_geq(lo, delay, "one way %.3f ms", lo);
    cr_assert_geq(rlo, 2 * delay, "round trip %.3f ms", rlo);
    double med = median(e.one_way_ms, e.pings), rmed = median(e.rtt_ms, e.pings);
    cr_assert_leq(med, delay + 20, "one way median %.3f ms", med);
    cr_assert_leq(rmed, 2 * delay + 20, "round trip median %.3f ms", rmed);
}

Test(wire_proxy, rate_cap_each_way, .timeout = 30)
{
    /* 3 MB each way at 16 Mbit/s (2 MB/s) takes ~1.5 s; throughput within +-30% both ways.
     * The relay catches up after late wake-ups, so only starving it for ~0.45 s could fail this
     * from below; a cap that is not applied fails it from above. */
    static env_t e;
    const double mbit = 16;
    e.len = 3000000;
    e.data = seeded(e.len, 3);
    env_start(&e, (wire_proxy_config_t){.delay_ms = 1, .rate_mbit = mbit});
    env_finish(&e);
    cr_assert(!e.mismatch);
    cr_assert_eq(e.c_got, e.len);
    double up = (double)e.s_got * 8 / ((double)(e.s_last_ns - e.s_first_ns) / 1e9) / 1e6;
    double down = (double)e.c_got * 8 / ((double)(e.c_last_ns - e.c_first_ns) / 1e9) / 1e6;
    fprintf(stderr, "proxy rate %.0f Mbit/s: measured up %.2f, down %.2f Mbit/s\n", mbit, up, down);
    cr_assert(up >= 0.7 * mbit && up <= 1.3 * mbit, "up %.2f Mbit/s", up);
    cr_assert(down >= 0.7 * mbit && down <= 1.3 * mbit, "down %.2f Mbit/s", down);
}

Test(wire_proxy, back_pressure_holds_the_sender, .timeout = 30)
{
    /* The target reads nothing for 500 ms while the client offers 48 MB: kernel buffers and the
     * relay's bounded queue (~1 MiB per direction) fill, and the rest must stay with the sender.
     * Then the target drains everything, intact. */
    static env_t e;
    e.mode = SERVER_STALL_THEN_SINK;
    e.len = 48u << 20;
    e.data = seeded(e.len, 11);
    env_start(&e, (wire_proxy_config_t){0});
    env_finish(&e);
    fprintf(stderr, "proxy back-pressure: %zu of %zu bytes held by the sender during the stall\n",
            e.stalled_queue, e.len);
    cr_assert_gt(e.stalled_queue, 0, "the relay absorbed everything");
    cr_assert(!e.mismatch);
    cr_assert_eq(e.s_got, e.len);
    cr_assert_eq(e.final.to_target, e.len);
    cr_assert_eq(e.final.open, 0);
}

Test(wire_proxy, target_close_reaches_client, .timeout = 30)
{
    /* The target closes on the first bytes; the client must see EOF through the delay. */
    static env_t e;
    e.mode = SERVER_CLOSE_ON_DATA;
    env_start(&e, (wire_proxy_config_t){.delay_ms = 5});
    uint64_t t0 = uv_hrtime();
    env_finish(&e);
    cr_assert_eq(e.s_got, 3);
    cr_assert(e.c_eof, "client saw EOF (error %d)", e.c_err);
    cr_assert_eq(e.final.open, 0);
    cr_assert_lt(uv_hrtime() - t0, 5000 * MS);
}

Test(wire_proxy, refused_target_closes_client, .timeout = 30)
{
    /* Nothing listens on the target port: the relay closes the accepted connection. */
    static env_t e;
    uv_loop_t probe;
    uv_tcp_t t;
    struct sockaddr_in a;
    uv_loop_init(&probe);
    uv_tcp_init(&probe, &t);
    uv_ip4_addr("127.0.0.1", 0, &a);
    cr_assert_eq(uv_tcp_bind(&t, (const struct sockaddr *)&a, 0), 0);
    int dead_port = bound_port(&t);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&probe, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&probe), 0);
    env_start(&e, (wire_proxy_config_t){.target_port = dead_port});
    env_finish(&e);
    cr_assert(e.c_eof || e.c_err != 0);
    cr_assert_eq(e.s_got, 0);
    cr_assert_eq(e.final.accepted, 1);
    cr_assert_eq(e.final.open, 0);
}

/* ---- ZeroMQ through the relay: the sockets live on one thread, the relay's loop on another */

typedef struct {
    int proxy_port;
    void *ctx, *router;
    uv_async_t done;
    double rtt_ms[16];
    int n;
    int err;
} zmq_env_t;

static void *zmq_main(void *arg)
{
    zmq_env_t *z = arg;
    void *dealer = zmq_socket(z->ctx, ZMQ_DEALER);
    int linger = 0, timeout = 5000;
    zmq_setsockopt(dealer, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_setsockopt(dealer, ZMQ_RCVTIMEO, &timeout, sizeof(timeout));
    zmq_setsockopt(z->router, ZMQ_RCVTIMEO, &timeout, sizeof(timeout));
    char ep[64];
    snprintf(ep, sizeof(ep), "tcp://127.0.0.1:%d", z->proxy_port);
    if (zmq_connect(dealer, ep) != 0) z->err = 1;
    /* Round trip 0 includes the ZMTP handshake, which crosses the relay several times. */
    for (int i = 0; i < 11 && !z->err; i++) {
        char id[256], buf[16];
        uint64_t t0 = uv_hrtime();
        if (zmq_send(dealer, "ping", 4, 0) != 4) z->err = 2;
        int idn = zmq_recv(z->router, id, sizeof(id), 0);
        int n = zmq_recv(z->router, buf, sizeof(buf), 0);
        if (idn <= 0 || n != 4) {
            z->err = 3;
            break;
        }
        zmq_send(z->router, id, (size_t)idn, ZMQ_SNDMORE);
        zmq_send(z->router, "pong", 4, 0);
        if (zmq_recv(dealer, buf, sizeof(buf), 0) != 4 || memcmp(buf, "pong", 4) != 0) {
            z->err = 4;
            break;
        }
        if (i > 0) z->rtt_ms[z->n++] = (double)(uv_hrtime() - t0) / 1e6;
    }
    zmq_close(dealer);
    zmq_close(z->router);
    uv_async_send(&z->done);
    return NULL;
}

static void on_zmq_done(uv_async_t *a)
{
    wire_proxy_t *px = a->data;
    uv_close((uv_handle_t *)a, NULL);
    wire_proxy_close(px, NULL, NULL);
}

Test(wire_proxy, zeromq_round_trip_through_delay, .timeout = 30)
{
    const double delay = 5;
    static zmq_env_t z;
    signal(SIGPIPE, SIG_IGN);
    z.ctx = zmq_ctx_new();
    z.router = zmq_socket(z.ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(z.router, ZMQ_LINGER, &linger, sizeof(linger));
    cr_assert_eq(zmq_bind(z.router, "tcp://127.0.0.1:*"), 0);
    char ep[64];
    size_t ep_len = sizeof(ep);
    zmq_getsockopt(z.router, ZMQ_LAST_ENDPOINT, ep, &ep_len);
    int router_port = atoi(strrchr(ep, ':') + 1);

    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    wire_proxy_t *px = wire_proxy_new(&loop, &(wire_proxy_config_t){.listen_host = "127.0.0.1",
                                                                    .target_host = "127.0.0.1",
                                                                    .target_port = router_port,
                                                                    .delay_ms = delay});
    cr_assert(px);
    z.proxy_port = wire_proxy_port(px);
    uv_async_init(&loop, &z.done, on_zmq_done);
    z.done.data = px;
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, zmq_main, &z), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    zmq_ctx_term(z.ctx);
    cr_assert_eq(uv_loop_close(&loop), 0);

    cr_assert_eq(z.err, 0, "ZeroMQ exchange failed at step %d", z.err);
    cr_assert_eq(z.n, 10);
    double lo = 1e9, hi = 0;
    for (int i = 0; i < z.n; i++) {
        lo = z.rtt_ms[i] < lo ? z.rtt_ms[i] : lo;
        hi = z.rtt_ms[i] > hi ? z.rtt_ms[i] : hi;
    }
    fprintf(stderr, "proxy zmq delay %.0f ms: rtt min %.3f median %.3f max %.3f ms\n", delay, lo,
            median(z.rtt_ms, z.n), hi);
    /* As above: never early, the median at most 20 ms late. */
    double med = median(z.rtt_ms, z.n);
    cr_assert_geq(lo, 2 * delay, "round trip %.3f ms", lo);
    cr_assert_leq(med, 2 * delay + 20, "round trip median %.3f ms", med);
}
