/* proxy — a TCP relay that adds one-way delay, jitter and a rate cap per direction, standing in
 * for netem on kernels without it (tests and `moemesh-bench proxy`).
 *
 * Each accepted connection (client) gets one connection to the target; each of the two
 * directions (dir_t: up = client -> target, down = target -> client) is a FIFO of chunks, one per
 * read, stamped with a release time. The pump writes the head chunk once its release time has
 * come and, under a rate cap, the emulated link has carried it, slicing chunks into ~1 ms writes.
 *
 * Invariants:
 * - Release times never decrease along a queue, so jitter cannot reorder bytes.
 * - dir_t.queued counts bytes read and not yet written to the kernel (queued or in a uv_write);
 *   reading stops above QUEUE_HIGH and resumes below QUEUE_LOW, so memory per direction is
 *   bounded by QUEUE_HIGH + one read, and a slow receiver slows the sender (back-pressure).
 * - Wake-ups use a timerfd per direction (libuv timers only have millisecond resolution, too
 *   coarse for a 0.25 ms one-way delay).
 * - A conn owns four handles (two sockets, two timerfd polls) and is freed in the last close
 *   callback. Write, shutdown and connect callbacks run (with UV_ECANCELED) before close
 *   callbacks, so they may still touch it.
 */
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include <uv.h>

#include "wire/wire.h"

#define READ_BYTES (64 * 1024)   /* one read buffer */
#define QUEUE_HIGH (1024 * 1024) /* bytes per direction before reading stops */
#define QUEUE_LOW  (QUEUE_HIGH / 2)
#define WRITE_MAX  (64 * 1024) /* most bytes handed to one uv_write */
#define SLICE_MIN  1460        /* smallest write under a rate cap (one Ethernet payload) */

typedef struct chunk {
    struct chunk *next;
    uint64_t release_ns; /* uv_hrtime() from which these bytes may leave */
    size_t len;          /* bytes in data; 0 marks the source's EOF */
    size_t off;          /* bytes already handed to uv_write */
    char data[];
} chunk_t;

typedef struct conn conn_t;

typedef struct {
    conn_t *c;
    uv_stream_t *src, *dst;
    uv_poll_t wake; /* readable when tfd expires */
    int tfd;        /* timerfd, CLOCK_MONOTONIC like uv_hrtime */
    uv_shutdown_t shut;
    chunk_t *head, *tail;
    size_t queued; /* bytes read, not yet written to the kernel */
    uint64_t last_release_ns;
    uint64_t link_free_ns; /* uv_hrtime() at which the capped link finished its last slice */
    bool reading;          /* uv_read_start is in effect on src */
    bool eof_read;         /* src gave EOF (or reading ended for good) */
    bool done;             /* EOF passed on: dst shut down */
    bool up;               /* client -> target */
} dir_t;

struct conn {
    wire_proxy_t *px;
    conn_t *prev, *next;
    uv_tcp_t client, target;
    uv_connect_t connect;
    dir_t up, down;
    int n_open; /* handles not yet closed */
    bool connected, closing;
};

struct wire_proxy {
    uv_loop_t *loop;
    uv_tcp_t listener;
    struct sockaddr_storage target;
    uint64_t delay_ns, jitter_ns;
    double rate_bpns; /* bytes per nanosecond; 0: no cap */
    size_t slice;     /* bytes per write under a rate cap: about 1 ms of the link */
    uint64_t rng;     /* splitmix64 state */
    conn_t *conns;
    wire_proxy_stats_t st;
    int port;
    bool closing;
    wire_proxy_close_cb *close_cb;
    void *close_arg;
};

typedef struct {
    uv_write_t req;
    dir_t *d;
    chunk_t *owned; /* freed when this write completes: the last slice of its chunk */
    size_t len;
} wreq_t;

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void maybe_free_proxy(wire_proxy_t *px)
{
    /* The listener's close callback clears its data pointer once it has run. */
    if (!px->closing || px->conns || px->listener.data) return;
    wire_proxy_close_cb *cb = px->close_cb;
    void *arg = px->close_arg;
    free(px);
    if (cb) cb(arg);
}

static void free_queue(dir_t *d)
{
    while (d->head) {
        chunk_t *k = d->head;
        d->head = k->next;
        free(k);
    }
    d->tail = NULL;
}

/* One of c's handles has closed; the last one frees c. */
static void conn_handle_closed(conn_t *c)
{
    if (--c->n_open > 0) return;
    wire_proxy_t *px = c->px;
    free_queue(&c->up);
    free_queue(&c->down);
    if (c->prev)
        c->prev->next = c->next;
    else
        px->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    px->st.open--;
    free(c);
    maybe_free_proxy(px);
}

static void on_conn_closed(uv_handle_t *h)
{
    conn_handle_closed(h->data);
}

static void on_wake_closed(uv_handle_t *h)
{
    dir_t *d = h->data;
    close(d->tfd);
    conn_handle_closed(d->c);
}

/* Closes both sockets at once: the end of a connection, normal or not. */
static void conn_close(conn_t *c)
{
    if (c->closing) return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->client, on_conn_closed);
    uv_close((uv_handle_t *)&c->target, on_conn_closed);
    uv_close((uv_handle_t *)&c->up.wake, on_wake_closed);
    uv_close((uv_handle_t *)&c->down.wake, on_wake_closed);
}

/* Wakes the pump after ns nanoseconds. */
static void arm(dir_t *d, uint64_t ns)
{
    if (ns == 0) ns = 1;
    struct itimerspec its = {
        .it_value = {.tv_sec = (time_t)(ns / 1000000000u), .tv_nsec = (long)(ns % 1000000000u)}};
    if (timerfd_settime(d->tfd, 0, &its, NULL) != 0) {
        LOG_ERR("timerfd_settime: %s", strerror(errno));
        conn_close(d->c);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    chunk_t *k = xmalloc(sizeof(*k) + READ_BYTES);
    *buf = uv_buf_init(k->data, READ_BYTES);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void read_start(dir_t *d)
{
    if (d->reading || d->eof_read || d->c->closing) return;
    int rc = uv_read_start(d->src, on_alloc, on_read);
    if (rc != 0) {
        LOG_WARN("uv_read_start: %s", uv_strerror(rc));
        conn_close(d->c);
        return;
    }
    d->reading = true;
}

static void read_stop(dir_t *d)
{
    if (!d->reading) return;
    uv_read_stop(d->src);
    d->reading = false;
}

static void on_write(uv_write_t *req, int status);
static void on_shutdown(uv_shutdown_t *req, int status);

/* Writes every chunk whose time has come, as fast as the rate cap allows, then arms the
 * timer for the next one. Idempotent: called after every read, write and wake-up. */
static void pump(dir_t *d)
{
    conn_t *c = d->c;
    wire_proxy_t *px = c->px;
    if (c->closing || d->done) return;
    uint64_t now = uv_hrtime();
    while (d->head) {
        chunk_t *k = d->head;
        if (k->release_ns > now) {
            arm(d, k->release_ns - now);
            return;
        }
        if (k->len == 0) {
            /* EOF: uv_shutdown waits for the writes queued before it. */
            d->head = k->next;
            if (!d->head) d->tail = NULL;
            free(k);
            d->shut.data = d;
            int rc = uv_shutdown(&d->shut, d->dst, on_shutdown);
            if (rc != 0) conn_close(c);
            return;
        }
        size_t n = k->len - k->off;
        if (n > WRITE_MAX) n = WRITE_MAX;
        if (px->rate_bpns > 0) {
            /* A FIFO link of the capped rate behind the delay line: it starts on a slice once it
             * is free and the chunk is released, and the slice leaves when its last byte would
             * have crossed. Idle time earns no credit; a late wake-up catches up. */
            if (n > px->slice) n = px->slice;
            uint64_t start = d->link_free_ns > k->release_ns ? d->link_free_ns : k->release_ns;
            uint64_t finish = start + (uint64_t)ceil((double)n / px->rate_bpns);
            if (finish > now) {
                arm(d, finish - now);
                return;
            }
            d->link_free_ns = finish;
        }
        wreq_t *w = xcalloc(1, sizeof(*w));
        w->d = d;
        w->len = n;
        uv_buf_t buf = uv_buf_init(k->data + k->off, (unsigned)n);
        k->off += n;
        if (k->off == k->len) {
            /* Writes complete in order, so the last slice's callback frees the chunk. */
            d->head = k->next;
            if (!d->head) d->tail = NULL;
            w->owned = k;
        }
        int rc = uv_write(&w->req, d->dst, &buf, 1, on_write);
        if (rc != 0) {
            free(w->owned);
            free(w);
            conn_close(c);
            return;
        }
    }
}

static void on_write(uv_write_t *req, int status)
{
    wreq_t *w = (wreq_t *)req;
    dir_t *d = w->d;
    conn_t *c = d->c;
    size_t len = w->len;
    free(w->owned);
    free(w);
    if (status != 0) {
        conn_close(c);
        return;
    }
    d->queued -= len;
    if (d->up)
        c->px->st.to_target += len;
    else
        c->px->st.to_client += len;
    if (d->queued <= QUEUE_LOW) read_start(d);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    dir_t *d = req->data;
    conn_t *c = d->c;
    if (status != 0) {
        conn_close(c);
        return;
    }
    d->done = true;
    if (c->up.done && c->down.done) conn_close(c);
}

static void enqueue(dir_t *d, chunk_t *k, size_t len)
{
    wire_proxy_t *px = d->c->px;
    uint64_t delay = px->delay_ns;
    if (px->jitter_ns > 0) {
        int64_t j =
            (int64_t)(rng_next(&px->rng) % (2 * px->jitter_ns + 1)) - (int64_t)px->jitter_ns;
        delay = (int64_t)delay + j < 0 ? 0 : (uint64_t)((int64_t)delay + j);
    }
    k->release_ns = uv_hrtime() + delay;
    if (k->release_ns < d->last_release_ns) k->release_ns = d->last_release_ns;
    d->last_release_ns = k->release_ns;
    k->len = len;
    k->off = 0;
    k->next = NULL;
    if (d->tail)
        d->tail->next = k;
    else
        d->head = k;
    d->tail = k;
    d->queued += len;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = s->data;
    dir_t *d = s == (uv_stream_t *)&c->client ? &c->up : &c->down;
    chunk_t *k = buf->base ? (chunk_t *)(buf->base - offsetof(chunk_t, data)) : NULL;
    if (nread > 0) {
        /* Small reads give back the rest of the buffer so the bound on queued bytes is also
         * a bound on memory. */
        if ((size_t)nread < READ_BYTES / 4) k = xrealloc(k, sizeof(*k) + (size_t)nread);
        enqueue(d, k, (size_t)nread);
        if (d->queued > QUEUE_HIGH) read_stop(d);
        pump(d);
        return;
    }
    if (nread == UV_EOF) {
        read_stop(d);
        d->eof_read = true;
        enqueue(d, k ? k : xmalloc(sizeof(*k)), 0);
        pump(d);
        return;
    }
    free(k);
    if (nread < 0) conn_close(c);
}

static void on_wake(uv_poll_t *h, int status, int events)
{
    (void)events;
    dir_t *d = h->data;
    uint64_t expirations;
    if (status < 0) {
        conn_close(d->c);
        return;
    }
    if (read(d->tfd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN) {
        conn_close(d->c);
        return;
    }
    pump(d);
}

static void on_connect(uv_connect_t *req, int status)
{
    conn_t *c = req->data;
    if (status == UV_ECANCELED) return;
    if (status != 0) {
        LOG_WARN("connect to target: %s", uv_strerror(status));
        conn_close(c);
        return;
    }
    c->connected = true;
    uv_tcp_nodelay(&c->target, 1);
    read_start(&c->up);
    read_start(&c->down);
}

/* Makes d's timerfd and poll handle; returns 0 or a negated errno. On failure d holds no open
 * handle (a poll handle made is already closing). */
static int dir_init(wire_proxy_t *px, conn_t *c, dir_t *d, bool up)
{
    d->c = c;
    d->up = up;
    d->src = up ? (uv_stream_t *)&c->client : (uv_stream_t *)&c->target;
    d->dst = up ? (uv_stream_t *)&c->target : (uv_stream_t *)&c->client;
    d->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (d->tfd < 0) return -errno;
    int rc = uv_poll_init(px->loop, &d->wake, d->tfd);
    if (rc != 0) {
        close(d->tfd);
        return rc;
    }
    d->wake.data = d;
    c->n_open++;
    rc = uv_poll_start(&d->wake, UV_READABLE, on_wake);
    if (rc != 0) uv_close((uv_handle_t *)&d->wake, on_wake_closed);
    return rc;
}

static void on_connection(uv_stream_t *server, int status)
{
    wire_proxy_t *px = server->data;
    if (status != 0) {
        LOG_WARN("accept: %s", uv_strerror(status));
        return;
    }
    conn_t *c = xcalloc(1, sizeof(*c));
    c->px = px;
    uv_tcp_init(px->loop, &c->client);
    uv_tcp_init(px->loop, &c->target);
    c->client.data = c->target.data = c;
    c->n_open = 2;
    c->next = px->conns;
    if (px->conns) px->conns->prev = c;
    px->conns = c;
    px->st.accepted++;
    px->st.open++;
    int rc = uv_accept(server, (uv_stream_t *)&c->client);
    if (rc == 0) rc = dir_init(px, c, &c->up, true);
    if (rc == 0 && (rc = dir_init(px, c, &c->down, false)) != 0)
        uv_close((uv_handle_t *)&c->up.wake, on_wake_closed);
    if (rc != 0) {
        LOG_WARN("new connection: %s", uv_strerror(rc));
        c->closing = true;
        uv_close((uv_handle_t *)&c->client, on_conn_closed);
        uv_close((uv_handle_t *)&c->target, on_conn_closed);
        return;
    }
    uv_tcp_nodelay(&c->client, 1);
    c->connect.data = c;
    rc = uv_tcp_connect(&c->connect, &c->target, (const struct sockaddr *)&px->target, on_connect);
    if (rc != 0) {
        LOG_WARN("connect to target: %s", uv_strerror(rc));
        conn_close(c);
    }
}

static int resolve(const char *host, int port, struct sockaddr_storage *out)
{
    char serv[16];
    snprintf(serv, sizeof(serv), "%d", port);
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host, serv, &hints, &ai);
    if (rc != 0) {
        LOG_ERR("cannot resolve '%s': %s", host, gai_strerror(rc));
        return -EINVAL;
    }
    memcpy(out, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    return 0;
}

static void on_listener_closed(uv_handle_t *h)
{
    wire_proxy_t *px = h->data;
    h->data = NULL;
    maybe_free_proxy(px);
}

wire_proxy_t *wire_proxy_new(struct uv_loop_s *loop, const wire_proxy_config_t *cfg)
{
    if (!cfg->listen_host || !cfg->target_host || cfg->listen_port < 0 ||
        cfg->listen_port > 65535 || cfg->target_port <= 0 || cfg->target_port > 65535) {
        LOG_ERR("bad addresses (need HOST and PORT for --listen and --to)");
        return NULL;
    }
    if (!(cfg->delay_ms >= 0 && cfg->delay_ms <= 60000) ||
        !(cfg->jitter_ms >= 0 && cfg->jitter_ms <= 60000) ||
        !(cfg->rate_mbit >= 0 && cfg->rate_mbit <= 1e6)) {
        LOG_ERR("delay and jitter must be in [0, 60000] ms, rate in [0, 1e6] Mbit/s");
        return NULL;
    }
    struct sockaddr_storage listen_addr;
    wire_proxy_t *px = xcalloc(1, sizeof(*px));
    if (resolve(cfg->listen_host, cfg->listen_port, &listen_addr) != 0 ||
        resolve(cfg->target_host, cfg->target_port, &px->target) != 0) {
        free(px);
        return NULL;
    }
    px->loop = loop;
    px->delay_ns = (uint64_t)llround(cfg->delay_ms * 1e6);
    px->jitter_ns = (uint64_t)llround(cfg->jitter_ms * 1e6);
    px->rate_bpns = cfg->rate_mbit * 1e6 / 8 / 1e9;
    /* About 1 ms of the link per write: fine-grained pacing without a wake-up per packet. */
    double slice = px->rate_bpns * 1e6;
    px->slice = slice < SLICE_MIN ? SLICE_MIN : slice > WRITE_MAX ? WRITE_MAX : (size_t)slice;
    px->rng = cfg->seed;
    uv_tcp_init(loop, &px->listener);
    px->listener.data = px;
    int rc = uv_tcp_bind(&px->listener, (const struct sockaddr *)&listen_addr, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&px->listener, 128, on_connection);
    if (rc != 0) {
        LOG_ERR("listen on %s:%d: %s", cfg->listen_host, cfg->listen_port, uv_strerror(rc));
        px->closing = true;
        uv_close((uv_handle_t *)&px->listener, on_listener_closed);
        return NULL;
    }
    struct sockaddr_storage got;
    int len = sizeof(got);
    uv_tcp_getsockname(&px->listener, (struct sockaddr *)&got, &len);
    px->port = got.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&got)->sin6_port)
                                         : ntohs(((struct sockaddr_in *)&got)->sin_port);
    return px;
}

int wire_proxy_port(const wire_proxy_t *px)
{
    return px->port;
}

wire_proxy_stats_t wire_proxy_stats(const wire_proxy_t *px)
{
    return px->st;
}

void wire_proxy_close(wire_proxy_t *px, wire_proxy_close_cb *cb, void *arg)
{
    if (!px) return;
    CHECK(!px->closing);
    px->closing = true;
    px->close_cb = cb;
    px->close_arg = arg;
    for (conn_t *c = px->conns; c; c = c->next)
        conn_close(c);
    uv_close((uv_handle_t *)&px->listener, on_listener_closed);
}
