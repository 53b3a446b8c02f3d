/* The expert node's socket thread: one ROUTER, polled together with two eventfds (stop, and
 * "replies are ready" from the compute thread). It answers HELLO, ASSIGN, SHARD_CHUNK and
 * STATS itself, checks FORWARDs and queues them for the compute thread, sends the replies,
 * and sends a HEARTBEAT every second to each coordinator it has heard from.
 *
 * Invariants: the socket is used only by the thread in xnode_run (xnode_new creates and binds
 * it; pthread_create/join order the hand-over). This thread never runs a kernel. Every message
 * that fails a check gets an ERROR reply (with its request id when known) and a counter; the
 * loop never stops for a peer's mistake. A send to a vanished peer fails at once
 * (ZMQ_ROUTER_MANDATORY) and the peer is forgotten; other sends wait at most SEND_MS.
 */
#include "expert-node/xnode-int.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <zmq.h>

#define MAX_PEERS 64     /* coordinators we send heartbeats to; the least recent is evicted */
#define SEND_MS 100      /* longest a send may wait on a full queue before the reply is lost */
#define RECV_BATCH 256   /* messages handled per wake-up before replies get their turn */
#define HEARTBEAT_S 1.0
#define ERRMSG_CAP 512

typedef struct {
    wire_route_t route;
    double last_seen;
} peer_t;

struct xnode {
    xnode_config_t cfg;
    char *name, *listen, *model, *cache_dir, *curve_dir; /* owned copies of cfg's strings */
    char endpoint[256];
    void *ctx, *sock;
    wire_zap_t *zap;
    int stop_fd;
    bool ran;
    xnode__shard_t shard;
    xnode__compute_t compute;
    xnode__counters_t ctr;
    peer_t peers[MAX_PEERS];
    int n_peers;
    float capacity; /* WELCOME's, measured at the first HELLO (expert-node/probe.c) */
    uint64_t hb_seq;
    /* The coordinator whose ASSIGN we are loading, and whether it has had its READY. */
    wire_route_t assign_route;
    bool ready_due;
    uint32_t *stamp;         /* (n_experts) last token that listed each expert, for duplicates */
    size_t stamp_cap;
    const xnode__pair_t **distinct; /* (distinct experts of one FORWARD) */
    size_t distinct_cap;
};

xnode_config_t xnode_config_default(void)
{
    return (xnode_config_t){
        .threads = 1,
        .max_queue = 64,
        .max_work_bytes = UINT64_C(1) << 30,
        .limits = wire_limits_default(),
    };
}

const char *xnode_endpoint(const xnode_t *xn) { return xn->endpoint; }

void xnode_counters(const xnode_t *xn, xnode_counters_t *o)
{
    const xnode__counters_t *c = &xn->ctr;
    *o = (xnode_counters_t){
        atomic_load(&c->requests),   atomic_load(&c->tokens),     atomic_load(&c->errors),
        atomic_load(&c->malformed),  atomic_load(&c->chunks),     atomic_load(&c->bytes_in),
        atomic_load(&c->bytes_out),  atomic_load(&c->compute_us), atomic_load(&c->queue_us),
        atomic_load(&c->heartbeats), atomic_load(&c->peers_dropped), atomic_load(&c->ready),
    };
}

static uint64_t phys_ram(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size : UINT64_C(1) << 32;
}

/* Resident set size from /proc/self/statm (second field, in pages); 0 when unreadable. */
static uint64_t resident_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long size = 0, res = 0;
    if (!f) return 0;
    int n = fscanf(f, "%llu %llu", &size, &res);
    fclose(f);
    return n == 2 ? res * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

/* ---------------------------------------------------------------- CURVE */

/* Loads our server key pair and every DIR/coordinator*.pub, starts the ZAP handler and makes
 * the socket a CURVE server. Before bind. */
static int curve_setup(xnode_t *xn)
{
    const char *dir = xn->curve_dir;
    wire_keypair_t kp;
    int err = wire_curve_load(dir, "node", true, &kp);
    if (err) {
        LOG_ERR("cannot load %s/node.key: %s", dir, wire_strerror(err));
        return err;
    }
    DIR *d = opendir(dir);
    if (!d) {
        wire_keypair_wipe(&kp);
        return -errno;
    }
    char **allowed = NULL;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL && n < 1024) {
        size_t len = strlen(de->d_name);
        if (strncmp(de->d_name, "coordinator", 11) != 0 || len < 4 ||
            strcmp(de->d_name + len - 4, ".pub") != 0)
            continue;
        char stem[256];
        snprintf(stem, sizeof(stem), "%.*s", (int)(len - 4), de->d_name);
        wire_keypair_t pub;
        if (wire_curve_load(dir, stem, false, &pub) != 0) {
            LOG_WARN("ignoring %s/%s: not a public key", dir, de->d_name);
            continue;
        }
        allowed = xrealloc(allowed, sizeof(char *) * (size_t)(n + 1));
        allowed[n++] = xstrdup(pub.public_z85);
    }
    closedir(d);
    if (n == 0) {
        LOG_ERR("no coordinator*.pub in %s: no coordinator could connect", dir);
        err = -ENOENT;
    } else {
        xn->zap = wire_zap_new(xn->ctx, (const char *const *)allowed, n);
        err = xn->zap ? wire_curve_server_setup(xn->sock, &kp) : -EINVAL;
        if (!err) LOG_INFO("CURVE on, %d coordinator key(s) allowed", n);
    }
    for (int i = 0; i < n; i++) free(allowed[i]);
    free(allowed);
    wire_keypair_wipe(&kp);
    return err;
}

/* ---------------------------------------------------------------- life cycle */

xnode_t *xnode_new(const xnode_config_t *cfg)
{
    xnode_t *xn = xcalloc(1, sizeof(*xn));
    xn->stop_fd = -1;
    xn->cfg = *cfg;
    xn->name = xstrdup(cfg->name ? cfg->name : "xnode");
    xn->listen = cfg->listen ? xstrdup(cfg->listen) : NULL;
    xn->model = cfg->model ? xstrdup(cfg->model) : NULL;
    xn->cache_dir = cfg->cache_dir ? xstrdup(cfg->cache_dir) : NULL;
    xn->curve_dir = cfg->curve_dir ? xstrdup(cfg->curve_dir) : NULL;
    if (!xn->cfg.mem_limit) xn->cfg.mem_limit = phys_ram();
    if (!xn->listen || cfg->threads < 1 || cfg->threads > 1024 || cfg->max_queue < 1) {
        LOG_ERR("bad configuration: listen endpoint, threads (1..1024), max_queue (>= 1)");
        goto fail;
    }
    /* Chunks are at most 4 MiB by the protocol; the default limits must let them in. */
    if (xn->cfg.limits.max_chunk_bytes < (4u << 20)) xn->cfg.limits.max_chunk_bytes = 4u << 20;
    if (xnode__shard_init(&xn->shard, xn->model, xn->cache_dir, xn->cfg.mem_limit) != 0)
        goto fail;
    xn->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (xn->stop_fd < 0) {
        LOG_ERR("eventfd: %s", strerror(errno));
        goto fail;
    }
    xn->ctx = zmq_ctx_new();
    if (!xn->ctx) goto fail;
    xn->sock = wire_sock_node_new(xn->ctx, &xn->cfg.limits);
    if (!xn->sock) goto fail;
    int ms = SEND_MS, zero = 0;
    if (zmq_setsockopt(xn->sock, ZMQ_SNDTIMEO, &ms, sizeof(ms)) != 0 ||
        zmq_setsockopt(xn->sock, ZMQ_RCVTIMEO, &zero, sizeof(zero)) != 0)
        goto fail;
    if (xn->curve_dir && curve_setup(xn) != 0) goto fail;
    int err = wire_sock_bind(xn->sock, xn->listen, xn->endpoint, sizeof(xn->endpoint));
    if (err) {
        LOG_ERR("cannot listen on %s: %s", xn->listen, wire_strerror(err));
        goto fail;
    }
    LOG_INFO("%s listening on %s (%d threads, limit %" PRIu64 " bytes)", xn->name, xn->endpoint,
             cfg->threads, xn->cfg.mem_limit);
    return xn;
fail:
    xnode_free(xn);
    return NULL;
}

void xnode_stop(xnode_t *xn)
{
    uint64_t one = 1;
    ssize_t w = write(xn->stop_fd, &one, sizeof(one));
    (void)w; /* only fails on counter overflow, when it is readable anyway */
}

void xnode_free(xnode_t *xn)
{
    if (!xn) return;
    xnode__compute_stop(&xn->compute);
    wire_sock_close(xn->sock);
    wire_zap_free(xn->zap);
    if (xn->ctx) zmq_ctx_term(xn->ctx);
    if (xn->stop_fd >= 0) close(xn->stop_fd);
    xnode__shard_deinit(&xn->shard);
    free(xn->stamp);
    free(xn->distinct);
    free(xn->name);
    free(xn->listen);
    free(xn->model);
    free(xn->cache_dir);
    free(xn->curve_dir);
    free(xn);
}

/* ---------------------------------------------------------------- peers and sending */

static bool route_eq(const wire_route_t *a, const wire_route_t *b)
{
    return a->len == b->len && memcmp(a->id, b->id, a->len) == 0;
}

static void peer_seen(xnode_t *xn, const wire_route_t *r)
{
    double now = wire_now();
    int oldest = 0;
    for (int i = 0; i < xn->n_peers; i++) {
        if (route_eq(&xn->peers[i].route, r)) {
            xn->peers[i].last_seen = now;
            return;
        }
        if (xn->peers[i].last_seen < xn->peers[oldest].last_seen) oldest = i;
    }
    int slot = xn->n_peers < MAX_PEERS ? xn->n_peers++ : oldest;
    xn->peers[slot] = (peer_t){*r, now};
    LOG_INFO("coordinator connected (%d known)", xn->n_peers);
}

static void peer_drop(xnode_t *xn, const wire_route_t *r)
{
    for (int i = 0; i < xn->n_peers; i++) {
        if (route_eq(&xn->peers[i].route, r)) {
            xn->peers[i] = xn->peers[--xn->n_peers];
            atomic_fetch_add(&xn->ctr.peers_dropped, 1);
            LOG_INFO("coordinator gone (%d known)", xn->n_peers);
            return;
        }
    }
}

/* Sends m (consumed); a peer that has gone is forgotten. Returns wire_msg_send's code. */
static int send_msg(xnode_t *xn, wire_msg_t *m)
{
    wire_route_t route = m->route;
    wire_kind_t kind = m->kind;
    uint64_t out = 0;
    for (int i = 0; i < m->n_tensors; i++) out += m->tensors[i].bytes;
    int err = wire_msg_send(xn->sock, m);
    if (err == -EHOSTUNREACH) {
        peer_drop(xn, &route);
    } else if (err) {
        LOG_WARN("%s not sent: %s", wire_kind_name(kind), wire_strerror(err));
    } else {
        atomic_fetch_add(&xn->ctr.bytes_out, out);
    }
    return err;
}

static void send_error(xnode_t *xn, const wire_route_t *route, int code, uint64_t request_id,
                       const char *text)
{
    atomic_fetch_add(&xn->ctr.errors, 1);
    LOG_WARN("ERROR %s (request %" PRIu64 "): %s", wire_strerror(code), request_id, text);
    if (!route->len) return;
    wire_msg_t m;
    wire_msg_init(&m, WIRE_KIND_ERROR);
    m.route = *route;
    m.u.error = (wire_error_t){code, text, request_id};
    send_msg(xn, &m);
}

/* ---------------------------------------------------------------- handlers */

static void on_hello(xnode_t *xn, const wire_msg_t *req)
{
    if (!xn->capacity) xn->capacity = xnode__probe_capacity(xn->cfg.threads); /* once */
    uint32_t *layer, *expert, n;
    const char *fp = xnode__shard_held(&xn->shard, &layer, &expert, &n);
    if (n > xn->cfg.limits.max_pairs) n = 0; /* the peer could not take it; transfer instead */
    wire_msg_t m;
    wire_msg_init(&m, WIRE_KIND_WELCOME);
    m.route = req->route;
    m.u.hello = (wire_hello_t){xn->name,
                               (uint32_t)xn->cfg.threads,
                               xn->cfg.mem_limit,
                               (1u << WIRE_DTYPE_F32) | (1u << WIRE_DTYPE_F16) |
                                   (1u << WIRE_DTYPE_BF16) | (1u << WIRE_DTYPE_Q8_0),
                               n,
                               layer,
                               expert,
                               fp,
                               xn->capacity};
    LOG_INFO("HELLO from %s: offering %u experts of %s", req->u.hello.name, n, fp[0] ? fp : "-");
    send_msg(xn, &m);
    free(layer);
    free(expert);
}

/* Sends READY once the assignment is complete. The coordinator waits for it with nothing else
 * to go on, so it is due until sent: a send that timed out on a full queue is tried again at
 * the next heartbeat; only a coordinator that has gone (EHOSTUNREACH) is given up on. */
static void maybe_ready(xnode_t *xn)
{
    if (!xn->ready_due || !xnode__shard_complete(&xn->shard)) return;
    wire_msg_t m;
    wire_msg_init(&m, WIRE_KIND_READY);
    m.route = xn->assign_route;
    m.u.ready = (wire_ready_t){xn->shard.n_pairs, xn->shard.held};
    int err = send_msg(xn, &m);
    if (err == -EAGAIN) return;
    xn->ready_due = false;
    if (err) return;
    atomic_fetch_add(&xn->ctr.ready, 1);
    LOG_INFO("READY: %u experts, %" PRIu64 " weight bytes, resident %.1f MiB", xn->shard.n_pairs,
             xn->shard.held, (double)resident_bytes() / (1 << 20));
}

static void on_assign(xnode_t *xn, const wire_msg_t *req)
{
    char msg[ERRMSG_CAP];
    int err = xnode__shard_assign(&xn->shard, &req->u.assign, msg, sizeof(msg));
    if (err) {
        send_error(xn, &req->route, err, 0, msg);
        return;
    }
    xn->assign_route = req->route;
    xn->ready_due = true;
    maybe_ready(xn);
}

static void on_chunk(xnode_t *xn, const wire_msg_t *req)
{
    char msg[ERRMSG_CAP];
    const wire_tensor_t *t = &req->tensors[0];
    atomic_fetch_add(&xn->ctr.bytes_in, t->bytes);
    int err = xnode__shard_chunk(&xn->shard, &req->u.chunk, t->data, t->bytes, msg, sizeof(msg));
    if (err) {
        send_error(xn, &req->route, err, 0, msg);
        return;
    }
    atomic_fetch_add(&xn->ctr.chunks, 1);
    /* READY answers the connection the shard arrived on: had the coordinator's connection
     * been re-established since ASSIGN, the old routing id would be gone. */
    if (xn->ready_due) xn->assign_route = req->route;
    maybe_ready(xn);
}

static void on_stats(xnode_t *xn, const wire_msg_t *req)
{
    xnode_counters_t c;
    xnode_counters(xn, &c);
    wire_msg_t m;
    wire_msg_init(&m, WIRE_KIND_STATS);
    m.route = req->route;
    m.u.stats = (wire_stats_t){c.requests,   c.tokens,   c.bytes_in, c.bytes_out,
                               c.compute_us, c.queue_us, atomic_load(&xn->compute.inflight)};
    send_msg(xn, &m);
}

/* Checks a FORWARD against the shard; on success fills *n_embd and *n_ff. Returns 0 or an error
 * code with text in msg. */
static int check_forward(xnode_t *xn, const wire_msg_t *req, uint32_t *n_embd, uint32_t *n_ff,
                         char *msg, size_t cap)
{
    xnode__shard_t *sh = &xn->shard;
    const wire_forward_t *f = &req->u.forward;
    uint32_t D = req->tensors[0].cols;
    if (!sh->assigned) return snprintf(msg, cap, "FORWARD before ASSIGN"), WIRE_E_FIELD;
    if (f->layer >= sh->n_layers)
        return snprintf(msg, cap, "layer %u: the model has %u", f->layer, sh->n_layers),
               WIRE_E_FIELD;
    if (sh->n_embd && D != sh->n_embd)
        return snprintf(msg, cap, "rows of %u values, n_embd is %u", D, sh->n_embd), WIRE_E_SIZE;
    if (f->result_dtype == WIRE_DTYPE_Q8_0 && D % 32)
        return snprintf(msg, cap, "q8_0 results need n_embd a multiple of 32"), WIRE_E_DTYPE;

    if (xn->stamp_cap < sh->n_experts) {
        free(xn->stamp);
        xn->stamp_cap = sh->n_experts;
        xn->stamp = xmalloc(sizeof(uint32_t) * xn->stamp_cap);
    }
    memset(xn->stamp, 0, sizeof(uint32_t) * sh->n_experts);
    if (xn->distinct_cap < sh->n_experts) {
        free(xn->distinct);
        xn->distinct_cap = sh->n_experts;
        xn->distinct = xmalloc(sizeof(*xn->distinct) * xn->distinct_cap);
    }
    /* stamp[e]: 0 never seen; else (token + 1) of the last token listing e, with the high bit
     * set once e has been checked and added to distinct. */
    const uint32_t SEEN = 0x80000000u;
    int n_distinct = 0;
    uint32_t k = 1, ff = sh->n_ff, i = 0;
    for (uint32_t t = 0; t < f->n_tokens; t++) {
        if (f->n_sel[t] > k) k = f->n_sel[t];
        for (uint32_t j = 0; j < f->n_sel[t]; j++, i++) {
            uint32_t e = f->expert[i];
            if (e >= sh->n_experts)
                return snprintf(msg, cap, "expert %u: the model has %u", e, sh->n_experts),
                       WIRE_E_FIELD;
            if ((xn->stamp[e] & ~SEEN) == t + 1)
                return snprintf(msg, cap, "token %u lists expert %u twice", t, e), WIRE_E_FIELD;
            if (!(xn->stamp[e] & SEEN)) {
                const xnode__pair_t *p = xnode__shard_find(sh, f->layer, e);
                if (!p)
                    return snprintf(msg, cap, "layer %u expert %u is not served by this node",
                                    f->layer, e),
                           WIRE_E_FIELD;
                uint32_t pff;
                if (!xnode__pair_fits(p, D, &pff) || (ff && pff != ff))
                    return snprintf(msg, cap, "rows of %u values do not fit layer %u expert %u",
                                    D, f->layer, e),
                           WIRE_E_SIZE;
                ff = pff;
                xn->distinct[n_distinct++] = p;
            }
            xn->stamp[e] = (t + 1) | SEEN;
        }
    }
    uint64_t work = xnode__compute_work_bytes(xn->distinct, n_distinct, D, ff ? ff : 1,
                                              f->n_tokens, k);
    if (work > xn->cfg.max_work_bytes)
        return snprintf(msg, cap, "%" PRIu64 " bytes of scratch needed, at most %" PRIu64, work,
                        xn->cfg.max_work_bytes),
               WIRE_E_LIMIT;
    if (!sh->n_embd && n_distinct > 0) {
        /* Shapes not sent with ASSIGN: the first FORWARD that fits every slice fixes them. */
        pthread_rwlock_wrlock(&sh->lock);
        sh->n_embd = D;
        sh->n_ff = ff;
        pthread_rwlock_unlock(&sh->lock);
        LOG_INFO("n_embd %u, n_ff %u (from the first FORWARD)", D, ff);
    }
    *n_embd = D;
    *n_ff = ff ? ff : 1;
    return 0;
}

static void on_forward(xnode_t *xn, wire_msg_t *req, double t_recv)
{
    char msg[ERRMSG_CAP];
    uint32_t n_embd = 0, n_ff = 0;
    uint64_t id = req->u.forward.request_id;
    atomic_fetch_add(&xn->ctr.bytes_in, req->tensors[0].bytes);
    int err = check_forward(xn, req, &n_embd, &n_ff, msg, sizeof(msg));
    if (!err && !xn->shard.n_embd) {
        /* A FORWARD with no experts at all before the shapes are known: nothing to check the
         * row length against, so nothing can be computed either. */
        snprintf(msg, sizeof(msg), "n_embd not known yet");
        err = WIRE_E_FIELD;
    }
    if (err) {
        send_error(xn, &req->route, err, id, msg);
        return;
    }
    xnode__job_t *job = xcalloc(1, sizeof(*job));
    job->req = *req; /* the frames move with it */
    wire_msg_init(req, WIRE_KIND_NONE);
    job->t_recv = t_recv;
    job->n_embd = n_embd;
    job->n_ff = n_ff;
    if (xnode__compute_push(&xn->compute, job) != 0) {
        send_error(xn, &job->req.route, -EBUSY, id, "too many FORWARDs queued");
        xnode__job_free(job);
    }
}

static void handle(xnode_t *xn, wire_msg_t *m, double t_recv)
{
    peer_seen(xn, &m->route);
    switch (m->kind) {
    case WIRE_KIND_HELLO: on_hello(xn, m); break;
    case WIRE_KIND_ASSIGN: on_assign(xn, m); break;
    case WIRE_KIND_SHARD_CHUNK: on_chunk(xn, m); break;
    case WIRE_KIND_FORWARD: on_forward(xn, m, t_recv); break;
    case WIRE_KIND_STATS: on_stats(xn, m); break;
    case WIRE_KIND_HEARTBEAT: break;
    case WIRE_KIND_ERROR:
        LOG_WARN("coordinator reports %s: %s", wire_strerror(m->u.error.code),
                 m->u.error.message);
        break;
    default: {
        char msg[64];
        snprintf(msg, sizeof(msg), "%s is not a request", wire_kind_name(m->kind));
        send_error(xn, &m->route, WIRE_E_KIND, 0, msg);
    }
    }
}

/* Handles up to RECV_BATCH messages. Returns 0, or a zmq error that ends the loop. */
static int drain_socket(xnode_t *xn)
{
    for (int n = 0; n < RECV_BATCH; n++) {
        wire_msg_t m;
        int err = wire_msg_recv(xn->sock, &xn->cfg.limits, &m);
        double now = wire_now();
        if (err == -EAGAIN) return 0;
        if (err == -EINTR) continue;
        if (err <= WIRE_E_LAST && err >= WIRE_E_FIRST) {
            atomic_fetch_add(&xn->ctr.malformed, 1);
            send_error(xn, &m.route, err, m.u.error.request_id, wire_strerror(err));
            continue;
        }
        if (err) return err;
        handle(xn, &m, now);
        wire_msg_deinit(&m);
    }
    return 0;
}

static void send_replies(xnode_t *xn)
{
    xnode__job_t *j = xnode__compute_take(&xn->compute);
    while (j) {
        xnode__job_t *next = j->next;
        if (j->reply.kind == WIRE_KIND_ERROR) {
            atomic_fetch_add(&xn->ctr.errors, 1);
            LOG_WARN("ERROR for request %" PRIu64 ": %s", j->reply.u.error.request_id,
                     j->reply.u.error.message);
        }
        send_msg(xn, &j->reply);
        xnode__job_free(j);
        j = next;
    }
}

static void heartbeat(xnode_t *xn)
{
    uint32_t inflight = atomic_load(&xn->compute.inflight);
    /* A beat never waits for room: a full queue means the peer is not reading, and what room
     * there is belongs to replies. */
    int zero = 0, ms = SEND_MS;
    CHECK(zmq_setsockopt(xn->sock, ZMQ_SNDTIMEO, &zero, sizeof(zero)) == 0);
    for (int i = xn->n_peers - 1; i >= 0; i--) {
        wire_msg_t m;
        wire_msg_init(&m, WIRE_KIND_HEARTBEAT);
        m.route = xn->peers[i].route;
        m.u.heartbeat = (wire_heartbeat_t){++xn->hb_seq, (uint64_t)(wire_now() * 1e6), inflight};
        /* A full queue (-EAGAIN) skips this beat; a vanished peer is dropped by send_msg. */
        if (send_msg(xn, &m) == 0) atomic_fetch_add(&xn->ctr.heartbeats, 1);
    }
    CHECK(zmq_setsockopt(xn->sock, ZMQ_SNDTIMEO, &ms, sizeof(ms)) == 0);
}

int xnode_run(xnode_t *xn)
{
    if (xn->ran) return -EINVAL;
    xn->ran = true;
    int err = xnode__compute_start(&xn->compute, xn->cfg.threads, xn->cfg.max_queue, &xn->shard,
                                   &xn->ctr);
    if (err) {
        LOG_ERR("cannot start the compute thread: %s", strerror(-err));
        return err;
    }
    double next_hb = wire_now() + HEARTBEAT_S;
    for (;;) {
        zmq_pollitem_t items[3] = {
            {xn->sock, 0, ZMQ_POLLIN, 0},
            {NULL, xn->stop_fd, ZMQ_POLLIN, 0},
            {NULL, xn->compute.done_fd, ZMQ_POLLIN, 0},
        };
        double wait = next_hb - wire_now();
        long ms = wait <= 0 ? 0 : (long)(wait * 1000) + 1;
        if (zmq_poll(items, 3, ms) < 0) {
            if (zmq_errno() == EINTR) continue;
            err = -zmq_errno();
            LOG_ERR("zmq_poll: %s", zmq_strerror(-err));
            break;
        }
        if (items[1].revents & ZMQ_POLLIN) break;
        if (items[2].revents & ZMQ_POLLIN) send_replies(xn);
        if (items[0].revents & ZMQ_POLLIN) {
            err = drain_socket(xn);
            if (err) {
                LOG_ERR("receive: %s", wire_strerror(err));
                break;
            }
        }
        if (wire_now() >= next_hb) {
            maybe_ready(xn);
            heartbeat(xn);
            next_hb = wire_now() + HEARTBEAT_S;
        }
    }
    xnode__compute_stop(&xn->compute);
    LOG_INFO("stopped");
    return err;
}
