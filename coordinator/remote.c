/* Remote routed experts: coord_experts_t over a cluster of expert nodes (protocol steps 6-8),
 * asynchronous so the engine can pipeline micro-batches.
 *
 *   submit(mb)   groups each token's selected experts by the node that owns them and sends
 *                each node its FORWARD (only the tokens that have an expert there; more than
 *                one when a node's part exceeds the wire's max_tokens) right away, then returns.
 *                ZeroMQ's I/O thread moves the bytes while the caller computes. Each submit
 *                first takes the RESULTs that arrived meanwhile (without waiting).
 *   collect(mb)  reads RESULTs as they arrive — of any micro-batch, in arrival order — into
 *                that micro-batch's per-node buffers until all of mb's are in, then adds the
 *                nodes' partial sums into out in ascending node order.
 *
 * Per node there is a table of requests in flight (id, micro-batch, rows, send time,
 * deadline), at most FLIGHT_MAX long: a submit that would pass it first waits for answers.
 * That table is what a failover policy would act on (which node, which rows, since when).
 *
 * Replicas: every expert may live on several nodes (coord_cluster_owners). The policy here is
 * the primary owner, always: each token's expert goes to the first node of its owner list, so
 * a given routing always reaches the same nodes and the sum is reproducible; the planner deals
 * the primaries out evenly, so the work stays balanced. The other owners are standby copies —
 * failover and hedged requests are meant to pick among them (the list stays in the cluster).
 *
 * Invariants: the combine order is fixed by node index, never by arrival, so results are
 * reproducible run to run; each node sums its experts in the token's top-k order, exactly as
 * the local path does, so with one node (or k = 2) and f32 on the wire the result is bitwise
 * the local one for the same rows. Every wait is bounded by the earliest deadline in flight
 * (send time + the cluster's timeout_ms); a RESULT or ERROR whose request id is not in the
 * node's table belongs to a call already given up and is dropped with a log line. Any failure
 * abandons every micro-batch (their tables are emptied, so late answers are stale). Runs on
 * the cluster's thread only.
 */
#include "coordinator/coord-int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

/* Requests in flight per node: micro-batches (at most COORD_MICRO_BATCHES_MAX) times slices of
 * a node's part; beyond it submit waits. The node queues what it cannot compute yet. */
#define FLIGHT_MAX 16

typedef struct {
    uint64_t id;       /* request id (never 0) */
    int mb, layer;
    int r0, n;         /* rows [r0, r0 + n) of the node's part of micro-batch mb */
    double t_sent;     /* wire_now() */
    double deadline;   /* t_sent + timeout */
} flight_t;

/* One node's share of one micro-batch. Arrays grow to the largest part seen (<= max_tok rows). */
typedef struct {
    int ntok;          /* rows: tokens with at least one expert on the node */
    uint32_t tot;      /* expert selections over those rows */
    int pending;       /* FORWARDs of this part not yet answered */
    int cap;           /* rows the arrays hold */
    int32_t *rows;     /* (cap) token (index in the micro-batch) of each row */
    uint32_t *n_sel;   /* (cap) experts of that row on the node */
    uint32_t *expert;  /* (cap * k_max) row by row */
    float *gate;       /* (cap * k_max) */
    float *res;        /* (cap, n_embd) the node's RESULT rows */
} part_t;

typedef struct {
    bool active;       /* submitted, not yet collected */
    int layer, n_tok;
    float *out;        /* (n_tok, n_embd) the caller's, until collect */
    part_t *part;      /* (n_nodes) */
} mbatch_t;

typedef struct {
    coord_experts_t base;
    coord_cluster_t *c;
    int max_tok;       /* tokens per micro-batch */
    int slice;         /* tokens per FORWARD: min(max_tok, the wire's max_tokens) */
    int k_max;         /* the model's top-k */
    int n_embd;
    mbatch_t mb[COORD_MICRO_BATCHES_MAX];
    flight_t *fl;      /* (n_nodes, FLIGHT_MAX) each node's requests in flight */
    int *n_fl;         /* (n_nodes) entries used */
    int in_flight;     /* sum of n_fl */
    float *xbuf;       /* (slice, n_embd) gathered activation rows */
    zmq_pollitem_t *items; /* (n_nodes) poll scratch */
    int *who;          /* (n_nodes) node of each poll item */
    int *last;         /* (n_nodes) submit scratch: last token counted for each node */
    coord_experts_stats_t st;
    double t_busy0;    /* wire_now() when in_flight last rose from 0 */
    coord_trace_t *named; /* the trace whose node lanes carry names */
} remote_t;

static void part_reserve(remote_t *R, part_t *p, int rows)
{
    if (rows <= p->cap) return;
    /* Contents need not survive: parts are refilled from scratch by every submit. */
    free(p->rows), free(p->n_sel), free(p->expert), free(p->gate), free(p->res);
    p->cap = rows;
    p->rows = xmalloc(sizeof(int32_t) * (size_t)rows);
    p->n_sel = xmalloc(sizeof(uint32_t) * (size_t)rows);
    p->expert = xmalloc(sizeof(uint32_t) * (size_t)rows * R->k_max);
    p->gate = xmalloc(sizeof(float) * (size_t)rows * R->k_max);
    p->res = xmalloc(sizeof(float) * (size_t)rows * R->n_embd);
}

static void flight_add(remote_t *R, int o, const flight_t *f)
{
    CHECK(R->n_fl[o] < FLIGHT_MAX);
    R->fl[(size_t)o * FLIGHT_MAX + R->n_fl[o]++] = *f;
    if (R->in_flight++ == 0) R->t_busy0 = f->t_sent;
    R->mb[f->mb].part[o].pending++;
}

/* Takes entry i of node o's table out (order does not matter: lookups are by id). */
static void flight_remove(remote_t *R, int o, int i, double now)
{
    flight_t *t = R->fl + (size_t)o * FLIGHT_MAX;
    R->mb[t[i].mb].part[o].pending--;
    t[i] = t[--R->n_fl[o]];
    if (--R->in_flight == 0) R->st.t_comm_s += now - R->t_busy0;
}

static int flight_find(const remote_t *R, int o, uint64_t id)
{
    for (int i = 0; i < R->n_fl[o]; i++)
        if (R->fl[(size_t)o * FLIGHT_MAX + i].id == id) return i;
    return -1;
}

/* Abandons every micro-batch: whatever is in flight belongs to a failed call and its answers,
 * should they come, are stale. */
static void fail_all(remote_t *R)
{
    if (R->in_flight > 0) R->st.t_comm_s += wire_now() - R->t_busy0;
    R->in_flight = 0;
    for (int o = 0; o < R->c->n_nodes; o++) R->n_fl[o] = 0;
    for (int m = 0; m < COORD_MICRO_BATCHES_MAX; m++) {
        R->mb[m].active = false;
        for (int o = 0; o < R->c->n_nodes; o++) R->mb[m].part[o].pending = 0;
    }
}

static void name_lanes(remote_t *R)
{
    coord_trace_t *tr = R->base.trace;
    if (!tr || R->named == tr) return;
    for (int o = 0; o < R->c->n_nodes; o++) coord_trace_node_name(tr, o, R->c->nodes[o].endpoint);
    R->named = tr;
}

/* ---- receiving ---- */

/* Handles one message from node o. Returns 0 (taken or ignored) or a negative error (logged,
 * node marked failed). */
static int on_message(remote_t *R, int o, wire_msg_t *m, double t_recv)
{
    coord_cluster_t *c = R->c;
    coord__node_t *n = &c->nodes[o];
    const int E = R->n_embd;
    switch (m->kind) {
    case WIRE_KIND_HEARTBEAT: /* read here, not by the cluster's tend: liveness still counts */
        c->nodes[o].last_heard = wire_now();
        return 0;
    case WIRE_KIND_ERROR: {
        const wire_error_t *e = &m->u.error;
        int i = e->request_id ? flight_find(R, o, e->request_id) : -1;
        if (e->request_id != 0 && i < 0) {
            coord__node_stale(c, o);
            LOG_WARN("expert node %d (%s): dropping ERROR for old request %llu: %s", o,
                     n->endpoint, (unsigned long long)e->request_id, e->message);
            return 0;
        }
        const char *what = e->message && *e->message ? e->message : "";
        LOG_ERR("expert node %d (%s) failed request %llu (layer %d): %s (%s)", o, n->endpoint,
                (unsigned long long)e->request_id, i >= 0 ? R->fl[(size_t)o * FLIGHT_MAX + i].layer : -1,
                what, wire_strerror(e->code));
        coord__node_failed(c, o, "answered ERROR: %s", *what ? what : wire_strerror(e->code));
        return e->code < 0 ? e->code : -EPROTO;
    }
    case WIRE_KIND_RESULT: {
        const wire_result_t *r = &m->u.result;
        int i = flight_find(R, o, r->request_id);
        if (i < 0) {
            coord__node_stale(c, o);
            LOG_WARN("expert node %d (%s): dropping RESULT of old request %llu", o, n->endpoint,
                     (unsigned long long)r->request_id);
            return 0;
        }
        const flight_t f = R->fl[(size_t)o * FLIGHT_MAX + i];
        const wire_tensor_t *t = &m->tensors[0];
        if (r->layer != (uint32_t)f.layer || r->n_tokens != (uint32_t)f.n ||
            r->micro_batch != (uint32_t)f.mb || m->n_tensors != 1 || t->rows != r->n_tokens ||
            t->cols != (uint32_t)E) {
            LOG_ERR("expert node %d (%s): RESULT %llu does not match its FORWARD (layer %u, "
                    "micro-batch %u, %u tokens; expected layer %d, micro-batch %d, %d tokens of "
                    "%d)", o, n->endpoint, (unsigned long long)r->request_id, r->layer,
                    r->micro_batch, r->n_tokens, f.layer, f.mb, f.n, E);
            coord__node_failed(c, o, "RESULT does not match its FORWARD");
            return -EPROTO;
        }
        part_t *p = &R->mb[f.mb].part[o];
        int err = wire_act_unpack(t->dtype, t->data, t->bytes, t->rows, t->cols,
                                  p->res + (size_t)f.r0 * E);
        if (err) {
            LOG_ERR("expert node %d (%s): RESULT %llu unreadable: %s", o, n->endpoint,
                    (unsigned long long)r->request_id, wire_strerror(err));
            coord__node_failed(c, o, "unreadable RESULT: %s", wire_strerror(err));
            return err;
        }
        double now = wire_now();
        coord__node_result(c, o, t_recv - f.t_sent, t->bytes);
        flight_remove(R, o, i, now);
        if (R->base.trace) {
            coord_trace_t *tr = R->base.trace;
            coord_trace_event(tr, COORD_TRACE_COORD, 0, "receive", t_recv, now, f.layer, f.mb,
                              f.n);
            coord_trace_event(tr, COORD_TRACE_REQUEST, o, "forward", f.t_sent, t_recv, f.layer,
                              f.mb, f.n);
            /* The node's clock is not ours: place its compute inside the round trip, after
             * half of the time the wire took and its queueing. */
            double rtt = t_recv - f.t_sent, busy = (r->queue_us + r->compute_us) / 1e6;
            double wire = rtt > busy ? rtt - busy : 0;
            double c0 = f.t_sent + wire / 2 + r->queue_us / 1e6;
            coord_trace_event(tr, COORD_TRACE_REMOTE, o, "remote compute", c0,
                              c0 + r->compute_us / 1e6, f.layer, f.mb, f.n);
        }
        return 0;
    }
    default:
        LOG_WARN("expert node %d (%s): unexpected %s, dropped", o, n->endpoint,
                 wire_kind_name(m->kind));
        return 0;
    }
}

/* Waits once for messages from the nodes with requests in flight (until the earliest of their
 * deadlines; not at all unless block) and handles every message waiting. 0, or a negative
 * error (logged). */
static int pump(remote_t *R, bool block)
{
    coord_cluster_t *c = R->c;
    int np = 0;
    double deadline = 0;
    for (int o = 0; o < c->n_nodes; o++) {
        if (!R->n_fl[o]) continue;
        R->items[np] = (zmq_pollitem_t){c->nodes[o].sock, 0, ZMQ_POLLIN, 0};
        R->who[np++] = o;
        for (int i = 0; i < R->n_fl[o]; i++) {
            double d = R->fl[(size_t)o * FLIGHT_MAX + i].deadline;
            if (deadline == 0 || d < deadline) deadline = d;
        }
    }
    CHECK(np > 0);
    int left = block ? coord__ms_left(deadline) : 0;
    double t0 = wire_now();
    int rc = left || !block ? zmq_poll(R->items, np, left) : 0;
    if (block) {
        double t1 = wire_now();
        R->st.t_wait_s += t1 - t0;
        coord_trace_event(R->base.trace, COORD_TRACE_COORD, 0, "wait", t0, t1, -1, -1, -1);
    }
    if (rc < 0 && zmq_errno() == EINTR) return 0;
    if (rc < 0) {
        int err = -zmq_errno();
        LOG_ERR("zmq_poll: %s", zmq_strerror(-err));
        return err;
    }
    if (rc == 0 && !block) return 0;
    if (rc == 0 && coord__ms_left(deadline) == 0) {
        for (int j = 0; j < np; j++) {
            int o = R->who[j];
            for (int i = 0; i < R->n_fl[o]; i++) {
                const flight_t *f = &R->fl[(size_t)o * FLIGHT_MAX + i];
                if (coord__ms_left(f->deadline) > 0) continue;
                LOG_ERR("expert node %d (%s): no RESULT for request %llu (layer %d) within "
                        "%d ms; node down or stuck",
                        o, c->nodes[o].endpoint, (unsigned long long)f->id, f->layer,
                        c->cfg.timeout_ms);
                coord__node_failed(c, o, "no answer within %d ms", c->cfg.timeout_ms);
                break;
            }
        }
        return -ETIMEDOUT;
    }
    for (int j = 0; j < np; j++) {
        int o = R->who[j];
        /* Drain: readiness is about the socket, not one message. A node with nothing in
         * flight is left to the idle reader. */
        while (R->n_fl[o]) {
            wire_msg_t m;
            double tr0 = wire_now();
            int e = wire_msg_recv(c->nodes[o].sock, &c->lim, &m);
            if (e == -EAGAIN) break;
            if (e) {
                LOG_ERR("expert node %d (%s): malformed message: %s", o, c->nodes[o].endpoint,
                        wire_strerror(e));
                coord__node_failed(c, o, "malformed message: %s", wire_strerror(e));
                return e;
            }
            int r = on_message(R, o, &m, tr0);
            wire_msg_deinit(&m);
            if (r < 0) return r;
        }
    }
    return 0;
}

/* ---- sending ---- */

/* Sends node o the rows [r0, r0 + n) of its part of micro-batch mbi, whose selections start at
 * sel0; the rows of x (the micro-batch's activations) are gathered into xbuf first. */
static int send_forward(remote_t *R, int o, int mbi, int r0, int n, uint32_t sel0, uint32_t nsel,
                        const float *x)
{
    coord_cluster_t *c = R->c;
    coord__node_t *nd = &c->nodes[o];
    const mbatch_t *B = &R->mb[mbi];
    const part_t *p = &B->part[o];
    const int E = R->n_embd;
    /* Bounded in flight: make room by taking answers first. */
    while (R->n_fl[o] == FLIGHT_MAX) {
        int err = pump(R, true);
        if (err) return err;
    }
    double t0 = wire_now();
    for (int r = 0; r < n; r++)
        memcpy(R->xbuf + (size_t)r * E, x + (size_t)p->rows[r0 + r] * E, sizeof(float) * E);
    flight_t f = {.id = c->next_request++, .mb = mbi, .layer = B->layer, .r0 = r0, .n = n};
    wire_msg_t m;
    wire_msg_init(&m, WIRE_KIND_FORWARD);
    m.u.forward = (wire_forward_t){
        .request_id = f.id,
        .layer = (uint32_t)B->layer,
        .micro_batch = (uint32_t)mbi,
        .n_tokens = (uint32_t)n,
        .n_sel = p->n_sel + r0,
        .n_total = nsel,
        .expert = p->expert + sel0,
        .gate = p->gate + sel0,
        .result_dtype = c->cfg.wire_type,
    };
    int err = wire_msg_add_act(&m, c->cfg.wire_type, R->xbuf, (uint32_t)n, (uint32_t)E);
    if (err) {
        wire_msg_deinit(&m);
        LOG_ERR("expert node %d (%s): cannot encode activations as %s: %s", o, nd->endpoint,
                wire_dtype_name(c->cfg.wire_type), wire_strerror(err));
        return err;
    }
    /* A send waits only while ZeroMQ's queue to the node is full (the node not reading). */
    double deadline = t0 + c->cfg.timeout_ms / 1e3;
    if (!(err = coord__node_set_sndtimeo(nd, coord__ms_left(deadline))))
        err = wire_msg_send(nd->sock, &m);
    else
        wire_msg_deinit(&m);
    if (err) {
        LOG_ERR("expert node %d (%s): cannot send FORWARD %llu (layer %d): %s", o, nd->endpoint,
                (unsigned long long)f.id, B->layer,
                err == -EAGAIN ? "not connected within the deadline (node down?)"
                               : wire_strerror(err));
        coord__node_failed(c, o, "cannot send: %s",
                           err == -EAGAIN ? "not connected (node down?)" : wire_strerror(err));
        return err == -EAGAIN ? -EHOSTUNREACH : err;
    }
    f.t_sent = wire_now();
    f.deadline = f.t_sent + c->cfg.timeout_ms / 1e3;
    flight_add(R, o, &f);
    R->st.requests++;
    coord__node_sent(c, o, n,
                     wire_dtype_row_bytes(c->cfg.wire_type, E) * n + 4u * n + 8u * nsel);
    coord_trace_event(R->base.trace, COORD_TRACE_COORD, 0, "send", t0, f.t_sent, B->layer, mbi, n);
    return 0;
}

/* ---- the experts interface ---- */

static int check_args(const remote_t *R, int layer, int n_tok, int k, const int32_t *ids)
{
    const model_hparams_t *hp = &R->c->m->hp;
    if (layer < 0 || layer >= hp->n_layer || coord_cluster_owner(R->c, layer, 0) < 0 ||
        n_tok < 0 || n_tok > R->max_tok || k < 1 || k > R->k_max)
        return -EINVAL;
    for (int i = 0; i < n_tok * k; i++)
        if (ids[i] >= hp->n_expert) return -EINVAL;
    return 0;
}

static int remote_submit(coord_experts_t *ex, int layer, int mbi, int n_tok, int k,
                         const float *x, const int32_t *ids, const float *w, float *out)
{
    remote_t *R = (remote_t *)ex;
    coord_cluster_t *c = R->c;
    mbatch_t *B = &R->mb[mbi];
    CHECK(!B->active); /* one micro-batch of a number at a time: the caller's bug */
    int err = check_args(R, layer, n_tok, k, ids);
    if (err) {
        fail_all(R);
        return err;
    }
    name_lanes(R);
    /* The caller has computed since it last came here: take what has arrived meanwhile, so
     * RESULTs leave ZeroMQ's queue (and the in-flight time ends) about when they came. */
    if (R->in_flight && (err = pump(R, false)) != 0) {
        fail_all(R);
        return err;
    }
    *B = (mbatch_t){.active = true, .layer = layer, .n_tok = n_tok, .out = out, .part = B->part};
    /* Rows and selections per node, to size the parts before filling them. */
    for (int o = 0; o < c->n_nodes; o++) B->part[o].ntok = 0, R->last[o] = -1;
    for (int t = 0; t < n_tok; t++) {
        for (int j = 0; j < k; j++) {
            int32_t id = ids[t * k + j];
            if (id < 0) continue;
            int o = coord_cluster_owner(c, layer, id); /* the primary: see the top */
            if (o < 0) {
                fail_all(R);
                return -EINVAL;
            }
            if (R->last[o] != t) B->part[o].ntok++, R->last[o] = t;
        }
    }
    for (int o = 0; o < c->n_nodes; o++) {
        part_t *p = &B->part[o];
        part_reserve(R, p, p->ntok);
        p->ntok = 0, p->tot = 0;
    }
    for (int t = 0; t < n_tok; t++) {
        for (int j = 0; j < k; j++) {
            int32_t id = ids[t * k + j];
            if (id < 0) continue;
            part_t *p = &B->part[coord_cluster_owner(c, layer, id)];
            if (p->ntok == 0 || p->rows[p->ntok - 1] != t) {
                p->rows[p->ntok] = t;
                p->n_sel[p->ntok++] = 0;
            }
            p->n_sel[p->ntok - 1]++;
            p->expert[p->tot] = (uint32_t)id;
            p->gate[p->tot++] = w[t * k + j];
        }
    }
    /* Every node's FORWARDs leave now; none waits for another node's. */
    for (int o = 0; o < c->n_nodes && !err; o++) {
        const part_t *p = &B->part[o];
        uint32_t sel0 = 0;
        for (int r0 = 0; r0 < p->ntok && !err; r0 += R->slice) {
            int n = p->ntok - r0 < R->slice ? p->ntok - r0 : R->slice;
            uint32_t nsel = 0;
            for (int r = r0; r < r0 + n; r++) nsel += p->n_sel[r];
            err = send_forward(R, o, mbi, r0, n, sel0, nsel, x);
            sel0 += nsel;
        }
    }
    if (err) fail_all(R);
    return err;
}

static int remote_collect(coord_experts_t *ex, int mbi)
{
    remote_t *R = (remote_t *)ex;
    coord_cluster_t *c = R->c;
    mbatch_t *B = &R->mb[mbi];
    CHECK(B->active);
    for (;;) {
        bool done = true;
        for (int o = 0; o < c->n_nodes && done; o++) done = B->part[o].pending == 0;
        if (done) break;
        int err = pump(R, true);
        if (err) {
            fail_all(R);
            return err;
        }
    }
    double t0 = wire_now();
    const int E = R->n_embd;
    memset(B->out, 0, sizeof(float) * (size_t)B->n_tok * E);
    for (int o = 0; o < c->n_nodes; o++) {
        const part_t *p = &B->part[o];
        for (int r = 0; r < p->ntok; r++) {
            float *dst = B->out + (size_t)p->rows[r] * E;
            const float *src = p->res + (size_t)r * E;
            for (int i = 0; i < E; i++) dst[i] += src[i];
        }
    }
    B->active = false;
    coord_trace_event(R->base.trace, COORD_TRACE_COORD, 0, "combine", t0, wire_now(), B->layer,
                      mbi, B->n_tok);
    return 0;
}

static int remote_compute(coord_experts_t *ex, int layer, int n_tok, int k, const float *x,
                          const int32_t *ids, const float *w, float *out)
{
    int err = remote_submit(ex, layer, 0, n_tok, k, x, ids, w, out);
    return err ? err : remote_collect(ex, 0);
}

static void remote_stats(const coord_experts_t *ex, coord_experts_stats_t *out)
{
    const remote_t *R = (const remote_t *)ex;
    *out = R->st;
    if (R->in_flight > 0) out->t_comm_s += wire_now() - R->t_busy0;
}

static void remote_free(coord_experts_t *ex)
{
    remote_t *R = (remote_t *)ex;
    for (int m = 0; m < COORD_MICRO_BATCHES_MAX; m++) {
        for (int o = 0; o < R->c->n_nodes; o++) {
            part_t *p = &R->mb[m].part[o];
            free(p->rows), free(p->n_sel), free(p->expert), free(p->gate), free(p->res);
        }
        free(R->mb[m].part);
    }
    free(R->fl), free(R->n_fl), free(R->xbuf), free(R->items), free(R->who), free(R->last);
    free(R);
}

/* Between requests nothing else reads the node sockets: drop heartbeats and late answers so a
 * node's pipe never fills (a full pipe stops ZeroMQ reading it, and its heartbeat timeout then
 * drops the connection). Bounded per call; the socket is non-blocking. */
static void remote_idle(coord_experts_t *ex)
{
    remote_t *R = (remote_t *)ex;
    coord_cluster_t *c = R->c;
    for (int o = 0; o < c->n_nodes; o++) {
        for (int i = 0; i < 256 && !R->n_fl[o]; i++) {
            wire_msg_t m;
            int e = wire_msg_recv(c->nodes[o].sock, &c->lim, &m);
            if (e == -EAGAIN) break;
            if (e) {
                LOG_WARN("expert node %d (%s): malformed message while idle: %s", o,
                         c->nodes[o].endpoint, wire_strerror(e));
                continue;
            }
            if (m.kind == WIRE_KIND_RESULT || m.kind == WIRE_KIND_ERROR) {
                coord__node_stale(c, o);
                LOG_WARN("expert node %d (%s): dropping late %s", o, c->nodes[o].endpoint,
                         wire_kind_name(m.kind));
            }
            wire_msg_deinit(&m);
        }
    }
}

static const coord_experts_vt_t remote_vt = {remote_compute, remote_free,    remote_idle,
                                             remote_submit,  remote_collect, remote_stats};

coord_experts_t *coord_experts_remote_new(coord_cluster_t *c, int max_tok)
{
    CHECK(c && max_tok >= 1);
    const model_hparams_t *hp = &c->m->hp;
    remote_t *R = xcalloc(1, sizeof(*R));
    R->base.vt = &remote_vt;
    R->c = c;
    R->max_tok = max_tok;
    R->slice = max_tok < (int)c->lim.max_tokens ? max_tok : (int)c->lim.max_tokens;
    R->k_max = hp->n_expert_used;
    R->n_embd = hp->n_embd;
    const size_t N = (size_t)c->n_nodes;
    for (int m = 0; m < COORD_MICRO_BATCHES_MAX; m++)
        R->mb[m].part = xcalloc(N, sizeof(part_t));
    R->fl = xcalloc(N * FLIGHT_MAX, sizeof(flight_t));
    R->n_fl = xcalloc(N, sizeof(int));
    R->xbuf = xcalloc((size_t)R->slice * R->n_embd, sizeof(float));
    R->items = xcalloc(N, sizeof(zmq_pollitem_t));
    R->who = xcalloc(N, sizeof(int));
    R->last = xcalloc(N, sizeof(int));
    return &R->base;
}
