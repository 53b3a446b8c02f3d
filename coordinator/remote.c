/* Remote routed experts: coord_experts_t over a cluster of expert nodes (protocol steps 6-8).
 * One call groups each token's selected experts by the node that owns them, sends one FORWARD
 * per node with work (only the tokens that have an expert there), waits for every RESULT, and
 * adds the nodes' partial sums into out in ascending node order.
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
 * the local one. Every wait is bounded by the cluster's timeout_ms; a RESULT or ERROR whose
 * request id is not the one in flight for that node belongs to a call already given up and
 * is dropped with a log line. Runs on the cluster's thread only.
 */
#include "coordinator/coord-int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

typedef struct {
    coord_experts_t base;
    coord_cluster_t *c;
    int max_tok;   /* tokens per call */
    int slice;     /* tokens per FORWARD: min(max_tok, the wire's max_tokens) */
    int k_max;     /* the model's top-k */
    int n_embd;
    /* Per node, for the slice in flight: */
    int *ntok;         /* (n_nodes) tokens sent to the node */
    uint32_t *tot;     /* (n_nodes) expert selections sent */
    int32_t *rows;     /* (n_nodes, slice) token (index in the slice) of each row sent */
    uint32_t *n_sel;   /* (n_nodes, slice) experts of that row on the node */
    uint32_t *expert;  /* (n_nodes, slice * k_max) token by token */
    float *gate;       /* (n_nodes, slice * k_max) */
    float *res;        /* (n_nodes, slice, n_embd) the node's RESULT rows */
    uint64_t *req;     /* (n_nodes) request id in flight, 0 when none */
    double *t_sent;    /* (n_nodes) wire_now() at send */
    float *xbuf;       /* (slice, n_embd) gathered activation rows */
} remote_t;

/* Sends node o its FORWARD for the slice; rows of x are gathered into xbuf first. */
static int send_forward(remote_t *R, int o, int layer, int mb, const float *x, double deadline)
{
    coord_cluster_t *c = R->c;
    coord__node_t *n = &c->nodes[o];
    const int S = R->slice, E = R->n_embd;
    const int32_t *rows = R->rows + (size_t)o * S;
    for (int r = 0; r < R->ntok[o]; r++)
        memcpy(R->xbuf + (size_t)r * E, x + (size_t)rows[r] * E, sizeof(float) * E);
    R->req[o] = c->next_request++;
    wire_msg_t m;
    wire_msg_init(&m, WIRE_KIND_FORWARD);
    m.u.forward = (wire_forward_t){
        .request_id = R->req[o],
        .layer = (uint32_t)layer,
        .micro_batch = (uint32_t)mb,
        .n_tokens = (uint32_t)R->ntok[o],
        .n_sel = R->n_sel + (size_t)o * S,
        .n_total = R->tot[o],
        .expert = R->expert + (size_t)o * S * R->k_max,
        .gate = R->gate + (size_t)o * S * R->k_max,
        .result_dtype = c->cfg.wire_type,
    };
    int err = wire_msg_add_act(&m, c->cfg.wire_type, R->xbuf, (uint32_t)R->ntok[o], (uint32_t)E);
    if (err) {
        wire_msg_deinit(&m);
        LOG_ERR("expert node %d (%s): cannot encode activations as %s: %s", o, n->endpoint,
                wire_dtype_name(c->cfg.wire_type), wire_strerror(err));
        return err;
    }
    if (!(err = coord__node_set_sndtimeo(n, coord__ms_left(deadline))))
        err = wire_msg_send(n->sock, &m);
    else
        wire_msg_deinit(&m);
    if (err) {
        LOG_ERR("expert node %d (%s): cannot send FORWARD %llu (layer %d): %s", o, n->endpoint,
                (unsigned long long)R->req[o], layer,
                err == -EAGAIN ? "not connected within the deadline (node down?)"
                               : wire_strerror(err));
        R->req[o] = 0;
        coord__node_failed(c, o, "cannot send: %s",
                           err == -EAGAIN ? "not connected (node down?)" : wire_strerror(err));
        return err == -EAGAIN ? -EHOSTUNREACH : err;
    }
    R->t_sent[o] = wire_now();
    coord__node_sent(c, o, R->ntok[o],
                     wire_dtype_row_bytes(c->cfg.wire_type, E) * R->ntok[o] + 4u * R->ntok[o] +
                         8u * R->tot[o]);
    return 0;
}

/* Handles one message from node o while its request is in flight. Returns 1 when its RESULT
 * has been taken, 0 for something to ignore, or a negative error (logged). */
static int on_message(remote_t *R, int o, int layer, wire_msg_t *m)
{
    coord_cluster_t *c = R->c;
    coord__node_t *n = &c->nodes[o];
    const int E = R->n_embd;
    switch (m->kind) {
    case WIRE_KIND_HEARTBEAT:
        return 0;
    case WIRE_KIND_ERROR: {
        const wire_error_t *e = &m->u.error;
        if (e->request_id != 0 && e->request_id != R->req[o]) {
            coord__node_stale(c, o);
            LOG_WARN("expert node %d (%s): dropping ERROR for old request %llu: %s", o,
                     n->endpoint, (unsigned long long)e->request_id, e->message);
            return 0;
        }
        LOG_ERR("expert node %d (%s) failed request %llu (layer %d): %s (%s)", o, n->endpoint,
                (unsigned long long)R->req[o], layer, e->message && *e->message ? e->message : "",
                wire_strerror(e->code));
        coord__node_failed(c, o, "answered ERROR: %s",
                           e->message && *e->message ? e->message : wire_strerror(e->code));
        return e->code < 0 ? e->code : -EPROTO;
    }
    case WIRE_KIND_RESULT: {
        const wire_result_t *r = &m->u.result;
        if (r->request_id != R->req[o]) {
            coord__node_stale(c, o);
            LOG_WARN("expert node %d (%s): dropping RESULT of old request %llu", o, n->endpoint,
                     (unsigned long long)r->request_id);
            return 0;
        }
        const wire_tensor_t *t = &m->tensors[0];
        if (r->layer != (uint32_t)layer || r->n_tokens != (uint32_t)R->ntok[o] ||
            m->n_tensors != 1 || t->rows != r->n_tokens || t->cols != (uint32_t)E) {
            LOG_ERR("expert node %d (%s): RESULT %llu does not match its FORWARD (layer %u, %u "
                    "tokens; expected layer %d, %d tokens of %d)", o, n->endpoint,
                    (unsigned long long)r->request_id, r->layer, r->n_tokens, layer, R->ntok[o],
                    E);
            coord__node_failed(c, o, "RESULT does not match its FORWARD");
            return -EPROTO;
        }
        int err = wire_act_unpack(t->dtype, t->data, t->bytes, t->rows, t->cols,
                                  R->res + (size_t)o * R->slice * E);
        if (err) {
            LOG_ERR("expert node %d (%s): RESULT %llu unreadable: %s", o, n->endpoint,
                    (unsigned long long)r->request_id, wire_strerror(err));
            coord__node_failed(c, o, "unreadable RESULT: %s", wire_strerror(err));
            return err;
        }
        coord__node_result(c, o, wire_now() - R->t_sent[o], t->bytes);
        R->req[o] = 0;
        return 1;
    }
    default:
        LOG_WARN("expert node %d (%s): unexpected %s, dropped", o, n->endpoint,
                 wire_kind_name(m->kind));
        return 0;
    }
}

/* Waits for the RESULT of every node with a request in flight, until deadline. */
static int wait_results(remote_t *R, int layer, double deadline)
{
    coord_cluster_t *c = R->c;
    zmq_pollitem_t *items = xmalloc(sizeof(*items) * c->n_nodes);
    int *who = xmalloc(sizeof(int) * c->n_nodes);
    int err = 0;
    for (;;) {
        int np = 0;
        for (int o = 0; o < c->n_nodes; o++)
            if (R->req[o]) items[np] = (zmq_pollitem_t){c->nodes[o].sock, 0, ZMQ_POLLIN, 0},
                           who[np++] = o;
        if (np == 0) break;
        int left = coord__ms_left(deadline);
        int rc = left ? zmq_poll(items, np, left) : 0;
        if (rc < 0 && zmq_errno() == EINTR) continue;
        if (rc < 0) {
            err = -zmq_errno();
            LOG_ERR("zmq_poll: %s", zmq_strerror(-err));
            break;
        }
        if (rc == 0 && coord__ms_left(deadline) == 0) {
            for (int j = 0; j < np; j++) {
                LOG_ERR("expert node %d (%s): no RESULT for request %llu (layer %d) within "
                        "%d ms; node down or stuck",
                        who[j], c->nodes[who[j]].endpoint, (unsigned long long)R->req[who[j]],
                        layer, c->cfg.timeout_ms);
                coord__node_failed(c, who[j], "no answer within %d ms", c->cfg.timeout_ms);
            }
            err = -ETIMEDOUT;
            break;
        }
        for (int j = 0; j < np && !err; j++) {
            int o = who[j];
            /* Drain: ZeroMQ readiness is about the socket, not one message. */
            while (R->req[o] && !err) {
                wire_msg_t m;
                int e = wire_msg_recv(c->nodes[o].sock, &c->lim, &m);
                if (e == -EAGAIN) break;
                if (e) {
                    LOG_ERR("expert node %d (%s): malformed message: %s", o,
                            c->nodes[o].endpoint, wire_strerror(e));
                    coord__node_failed(c, o, "malformed message: %s", wire_strerror(e));
                    err = e;
                    break;
                }
                int r = on_message(R, o, layer, &m);
                wire_msg_deinit(&m);
                if (r < 0) err = r;
            }
        }
        if (err) break;
    }
    free(items);
    free(who);
    return err;
}

/* One slice of at most R->slice tokens. */
static int step(remote_t *R, int layer, int mb, int n_tok, int k, const float *x,
                const int32_t *ids, const float *w, float *out)
{
    coord_cluster_t *c = R->c;
    const int S = R->slice, E = R->n_embd, KM = R->k_max;
    memset(R->ntok, 0, sizeof(int) * c->n_nodes);
    memset(R->tot, 0, sizeof(uint32_t) * c->n_nodes);
    for (int t = 0; t < n_tok; t++) {
        for (int j = 0; j < k; j++) {
            int32_t id = ids[t * k + j];
            if (id < 0) continue;
            int o = coord_cluster_owner(c, layer, id); /* the primary: see the top */
            if (o < 0) return -EINVAL;
            int r = R->ntok[o];
            if (r == 0 || R->rows[(size_t)o * S + r - 1] != t) {
                R->rows[(size_t)o * S + r] = t;
                R->n_sel[(size_t)o * S + r] = 0;
                R->ntok[o] = ++r;
            }
            R->n_sel[(size_t)o * S + r - 1]++;
            R->expert[(size_t)o * S * KM + R->tot[o]] = (uint32_t)id;
            R->gate[(size_t)o * S * KM + R->tot[o]] = w[t * k + j];
            R->tot[o]++;
        }
    }
    double deadline = wire_now() + c->cfg.timeout_ms / 1e3;
    int err = 0;
    for (int o = 0; o < c->n_nodes && !err; o++)
        if (R->ntok[o]) err = send_forward(R, o, layer, mb, x, deadline);
    if (!err) err = wait_results(R, layer, deadline);
    if (err) {
        /* Whatever is still in flight belongs to a failed call: its answers are stale. */
        for (int o = 0; o < c->n_nodes; o++) R->req[o] = 0;
        return err;
    }
    memset(out, 0, sizeof(float) * (size_t)n_tok * E);
    for (int o = 0; o < c->n_nodes; o++) {
        const float *res = R->res + (size_t)o * S * E;
        for (int r = 0; r < R->ntok[o]; r++) {
            float *dst = out + (size_t)R->rows[(size_t)o * S + r] * E;
            const float *src = res + (size_t)r * E;
            for (int i = 0; i < E; i++) dst[i] += src[i];
        }
    }
    return 0;
}

static int remote_compute(coord_experts_t *ex, int layer, int n_tok, int k, const float *x,
                          const int32_t *ids, const float *w, float *out)
{
    remote_t *R = (remote_t *)ex;
    const model_hparams_t *hp = &R->c->m->hp;
    if (layer < 0 || layer >= hp->n_layer || coord_cluster_owner(R->c, layer, 0) < 0 ||
        n_tok < 0 || n_tok > R->max_tok || k < 1 || k > R->k_max)
        return -EINVAL;
    for (int i = 0; i < n_tok * k; i++)
        if (ids[i] >= hp->n_expert) return -EINVAL;
    int err = 0;
    for (int t0 = 0, mb = 0; t0 < n_tok && !err; t0 += R->slice, mb++) {
        int n = n_tok - t0 < R->slice ? n_tok - t0 : R->slice;
        err = step(R, layer, mb, n, k, x + (size_t)t0 * R->n_embd, ids + (size_t)t0 * k,
                   w + (size_t)t0 * k, out + (size_t)t0 * R->n_embd);
    }
    return err;
}

static void remote_free(coord_experts_t *ex)
{
    remote_t *R = (remote_t *)ex;
    free(R->ntok), free(R->tot), free(R->rows), free(R->n_sel), free(R->expert);
    free(R->gate), free(R->res), free(R->req), free(R->t_sent), free(R->xbuf);
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
        for (int i = 0; i < 256 && !R->req[o]; i++) {
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

static const coord_experts_vt_t remote_vt = {remote_compute, remote_free, remote_idle};

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
    const size_t N = (size_t)c->n_nodes, S = (size_t)R->slice;
    R->ntok = xcalloc(N, sizeof(int));
    R->tot = xcalloc(N, sizeof(uint32_t));
    R->rows = xcalloc(N * S, sizeof(int32_t));
    R->n_sel = xcalloc(N * S, sizeof(uint32_t));
    R->expert = xcalloc(N * S * R->k_max, sizeof(uint32_t));
    R->gate = xcalloc(N * S * R->k_max, sizeof(float));
    R->res = xcalloc(N * S * R->n_embd, sizeof(float));
    R->req = xcalloc(N, sizeof(uint64_t));
    R->t_sent = xcalloc(N, sizeof(double));
    R->xbuf = xcalloc(S * R->n_embd, sizeof(float));
    return &R->base;
}
