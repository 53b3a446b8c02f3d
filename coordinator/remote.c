/* Remote routed experts: coord_experts_t over a cluster of expert nodes (protocol steps 6-8),
 * asynchronous so the engine can pipeline micro-batches, with replica failover and re-routing
 * around slow nodes.
 *
 *   submit(mb)   gives each token's selected experts to a node each (pick_owner), builds each
 *                node's part of the micro-batch (rows of tokens with their selections) and
 *                sends its FORWARDs (more than one when a part exceeds the wire's max_tokens)
 *                right away, then returns. ZeroMQ's I/O thread moves the bytes while the caller
 *                computes. Each submit first takes the RESULTs that arrived meanwhile.
 *   collect(mb)  reads RESULTs as they arrive — of any micro-batch, in arrival order — into
 *                that micro-batch's per-node buffers until all of mb's are in, then combines.
 *
 * Per node there is a table of requests in flight (id, micro-batch, rows, send time,
 * deadline), at most FLIGHT_MAX long; rows beyond it wait in their part (nsent) and leave as
 * answers come.
 *
 * Owner choice (pick_owner, the one place that decides): among the copies of the pair
 * (coord_cluster_owners, primary first; -1 slots skipped) that are up and not avoided as slow,
 * the one whose queue in this micro-batch finishes first (coord_load_choose: pairs already
 * given to the node + 1, over its capacity; ties to the earlier copy), so a hot replicated
 * expert's tokens are split between its copies as their speeds allow; when every live copy is
 * slow, the first live one. Which copy serves a pair never changes the sum (per-pair rows,
 * below), so the split costs no reproducibility.
 *
 * Two row layouts. With one copy of every expert (replicas 1) a row is a token with all its
 * selections on that node, the node sums them in top-k order, and collect adds the nodes'
 * partial sums in ascending node order: the bytes of a token's activations go once per node.
 * With replicas, which node serves a pair may change mid-run (failover, re-routing), and a
 * node's partial sum would then group the terms differently; so each row is one pair (token,
 * top-k slot j), the node returns gate * expert(x) for it, and collect sums every token's
 * pairs in j order, which is exactly the local path's arithmetic (kern_moe_ffn: o = 0, then
 * o += y_j * w_j). The result is thus independent of which node served a pair, and bitwise
 * the local one whenever an expert's output row does not depend on the other rows it is
 * batched with — true on the kernels' dot path (fewer than 16 rows of one expert in one
 * FORWARD for f32 and types without a multi-row kernel, 128 otherwise; decode micro-batches),
 * up to float summation order beyond it. The price: a token's activations travel once per
 * pair instead of once per node.
 *
 * Failover: when a node fails during a call — ERROR, a malformed or mismatched answer, a send
 * that fails, no RESULT by a request's deadline (the cluster's timeout_ms), or no HEARTBEAT nor
 * RESULT for heartbeat_ms while requests are out — it is marked down and every row it has not
 * answered (in flight, or not yet sent) of every micro-batch goes to the next live copy of its
 * pair; rows it answered are kept. Its requests leave the table, so a RESULT that comes later
 * is stale by request id and dropped, never counted twice. Without a live copy (replicas 1, or
 * every copy down) the call fails and every micro-batch is abandoned, as before.
 *
 * Slow nodes (replicas > 1): each node's recent RTT is the median of its last RTT_WIN (8)
 * RESULTs' (a median, so one descheduled moment on a loaded host does not count). A node with
 * a full window is slow when that exceeds SLOW_X (4) times the median of its live peers' and
 * SLOW_MIN_S (5 ms); then the pairs whose first live copy it is go to their next live copy
 * instead (re-routing, never a duplicate). Once every PROBE_S (0.5 s) a call routes to it
 * normally as a probe, with its window emptied first, so the probe's answers alone judge it:
 * it is normal again when they are within BACK_X (2) times the peers' median (or under 5 ms).
 *
 * coord_cluster_tend runs at the start of a submit that finds nothing in flight (the cluster
 * also refuses to tend while requests are out: tending reads the sockets). Runs on the
 * cluster's thread only.
 */
#include "coordinator/coord-int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

/* Requests in flight per node: micro-batches (at most COORD_MICRO_BATCHES_MAX) times slices of
 * a node's part; beyond it rows wait. The node queues what it cannot compute yet. */
#define FLIGHT_MAX 16

#define RTT_WIN 8        /* a node's recent RTT is the median of its last RTT_WIN */
#define SLOW_X 4.0       /* slow above this multiple of the peers' median... */
#define SLOW_MIN_S 0.005 /* ...and above this (seconds): a loaded host's jitter is not slowness */
#define BACK_X 2.0       /* normal again at or below this multiple */
#define PROBE_S 0.5      /* a slow node gets one normally routed call this often */

typedef struct {
    uint64_t id;       /* request id (never 0) */
    int mb, layer;
    int r0, n;         /* rows [r0, r0 + n) of the node's part of micro-batch mb */
    double t_sent;     /* wire_now() */
    double deadline;   /* t_sent + timeout */
} flight_t;

/* One node's share of one micro-batch. Arrays grow (keeping their contents) as rows come. */
typedef struct {
    int ntok;          /* rows */
    int nsent;         /* rows [0, nsent) sent (answered or in flight); the rest wait */
    uint32_t tot;      /* selections over the rows */
    int pending;       /* FORWARDs of this part not yet answered */
    int cap;           /* rows the arrays hold */
    int32_t *rows;     /* (cap) token (index in the micro-batch) of each row */
    int32_t *slot;     /* (cap) top-k slot j of the row's pair; per-pair layout only */
    uint32_t *n_sel;   /* (cap) selections of that row */
    uint32_t *first;   /* (cap) index of the row's first selection in expert/gate */
    uint32_t *expert;  /* (cap * k_max) row by row */
    float *gate;       /* (cap * k_max) */
    float *res;        /* (cap, n_embd) the node's RESULT rows */
} part_t;

typedef struct {
    int node, row;     /* where pair (t, j) was sent; node -1: no expert in that slot */
} src_t;

typedef struct {
    bool active;       /* submitted, not yet collected */
    int layer, n_tok, k;
    float *out;        /* (n_tok, n_embd) the caller's, until collect */
    float *x;          /* (xcap, n_embd) copy of the activations, for sends after submit */
    int xcap;
    src_t *src;        /* (max_tok * k_max) per-pair layout: each pair's node and row */
    part_t *part;      /* (n_nodes) */
} mbatch_t;

typedef struct {
    coord_experts_t base;
    coord_cluster_t *c;
    int max_tok;       /* tokens per micro-batch */
    int slice;         /* rows per FORWARD: min(max_tok, the wire's max_tokens) */
    int k_max;         /* the model's top-k */
    int n_embd;
    bool per_pair;     /* row layout: one pair per row (replicas > 1), else one token */
    mbatch_t mb[COORD_MICRO_BATCHES_MAX];
    flight_t *fl;      /* (n_nodes, FLIGHT_MAX) each node's requests in flight */
    int *n_fl;         /* (n_nodes) entries used */
    int in_flight;     /* sum of n_fl */
    double *busy_since; /* (n_nodes) wire_now() when n_fl rose from 0: heartbeat age floor */
    bool *down;        /* (n_nodes) snapshot of the cluster's down flags, and nodes lost since */
    bool *slow;        /* (n_nodes) judged slow */
    bool *avoid;       /* (n_nodes) slow and not probed in this call */
    double *probe_at;  /* (n_nodes) last normally routed call while slow */
    double *rtt;       /* (n_nodes) recent RTT (s): the ring's median, as of judge_speed */
    double *win;       /* (n_nodes, RTT_WIN) ring of each node's last RTTs (s) */
    int *n_rtt;        /* (n_nodes) RTTs in the ring (<= RTT_WIN) */
    int *w_at;         /* (n_nodes) ring slot the next RTT goes to */
    int *queued;       /* (n_nodes) pairs given to each node in the submit being built */
    int *cand;         /* (replicas) pick_owner's scratch */
    double *cap;       /* (n_nodes) capacities (coord_cluster_capacity, 0: unknown = equal) */
    uint64_t *rerouted; /* (n_nodes) pairs re-routed away from each, not yet in its stats */
    uint64_t *failed_over; /* (n_nodes) pairs routed around each while down, likewise */
    float *xbuf;       /* (slice, n_embd) gathered activation rows */
    double *scratch;   /* (max(n_nodes, RTT_WIN)) median scratch */
    void **mon;        /* (n_nodes) PAIR sockets with each node socket's connection events
                          (replicas > 1 only; NULL entries: none) */
    zmq_pollitem_t *items; /* (2 * n_nodes) poll scratch: node sockets, then monitors */
    int *who;          /* (2 * n_nodes) node of each poll item */
    coord_experts_stats_t st;
    double t_busy0;    /* wire_now() when in_flight last rose from 0 */
    coord_trace_t *named; /* the trace whose node lanes carry names */
} remote_t;

static void part_grow(remote_t *R, part_t *p, int rows)
{
    if (rows <= p->cap) return;
    int cap = p->cap ? p->cap : 16;
    while (cap < rows) cap *= 2;
    const size_t n = (size_t)cap;
    p->rows = xrealloc(p->rows, sizeof(int32_t) * n);
    p->slot = xrealloc(p->slot, sizeof(int32_t) * n);
    p->n_sel = xrealloc(p->n_sel, sizeof(uint32_t) * n);
    p->first = xrealloc(p->first, sizeof(uint32_t) * n);
    p->expert = xrealloc(p->expert, sizeof(uint32_t) * n * R->k_max);
    p->gate = xrealloc(p->gate, sizeof(float) * n * R->k_max);
    p->res = xrealloc(p->res, sizeof(float) * n * R->n_embd);
    p->cap = cap;
}

/* Adds selection (token t, slot j, expert id, gate w) to node o's part of micro-batch mbi: a
 * row of its own in the per-pair layout, else the token's row (the last one, as tokens come in
 * order). */
static void part_add(remote_t *R, int mbi, int o, int t, int j, int32_t id, float w)
{
    mbatch_t *B = &R->mb[mbi];
    part_t *p = &B->part[o];
    if (R->per_pair || p->ntok == 0 || p->rows[p->ntok - 1] != t) {
        part_grow(R, p, p->ntok + 1);
        p->rows[p->ntok] = t;
        p->slot[p->ntok] = j;
        p->n_sel[p->ntok] = 0;
        p->first[p->ntok++] = p->tot;
    }
    p->n_sel[p->ntok - 1]++;
    p->expert[p->tot] = (uint32_t)id;
    p->gate[p->tot++] = w;
    if (R->per_pair) B->src[t * B->k + j] = (src_t){o, p->ntok - 1};
}

static void set_busy(remote_t *R)
{
    R->c->busy = R->in_flight;
}

static void flight_add(remote_t *R, int o, const flight_t *f)
{
    CHECK(R->n_fl[o] < FLIGHT_MAX);
    if (R->n_fl[o] == 0) R->busy_since[o] = f->t_sent;
    R->fl[(size_t)o * FLIGHT_MAX + R->n_fl[o]++] = *f;
    if (R->in_flight++ == 0) R->t_busy0 = f->t_sent;
    R->mb[f->mb].part[o].pending++;
    set_busy(R);
}

/* Takes entry i of node o's table out (order does not matter: lookups are by id). */
static void flight_remove(remote_t *R, int o, int i, double now)
{
    flight_t *t = R->fl + (size_t)o * FLIGHT_MAX;
    R->mb[t[i].mb].part[o].pending--;
    t[i] = t[--R->n_fl[o]];
    if (--R->in_flight == 0) R->st.t_comm_s += now - R->t_busy0;
    set_busy(R);
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
    set_busy(R);
}

static void name_lanes(remote_t *R)
{
    coord_trace_t *tr = R->base.trace;
    if (!tr || R->named == tr) return;
    for (int o = 0; o < R->c->n_nodes; o++) coord_trace_node_name(tr, o, R->c->nodes[o].endpoint);
    R->named = tr;
}

/* Adds to node o's failover and re-route counters. */
static void node_count(remote_t *R, int o, uint64_t failovers, uint64_t reroutes)
{
    coord_cluster_t *c = R->c;
    pthread_mutex_lock(&c->st_mu);
    c->nodes[o].st.failovers += failovers;
    c->nodes[o].st.reroutes += reroutes;
    pthread_mutex_unlock(&c->st_mu);
}

/* ---- owner choice ---- */

/* The node that computes expert of layer now: the first copy that is up and not avoided as
 * slow, else the first copy that is up; -1 when every copy is down. The one routing policy:
 * everything else (failover, re-routing) goes through here. */
static int pick_owner(const remote_t *R, int layer, int expert)
{
    const int *own = coord_cluster_owners(R->c, layer, expert);
    if (!own) return -1;
    int live = -1, n = 0, *cand = R->cand;
    for (int r = 0; r < R->c->replicas; r++) {
        int o = own[r];
        if (o < 0 || R->down[o]) continue;
        if (live < 0) live = o;
        if (!R->avoid[o]) cand[n++] = o;
    }
    if (n <= 1) return n ? cand[0] : live;
    return cand[coord_load_choose(cand, n, R->queued, R->cap)];
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The slow-node policy (see the top), once per submit: who is slow, who is avoided in this
 * call; the verdicts go to the nodes' stats. */
static void judge_speed(remote_t *R)
{
    coord_cluster_t *c = R->c;
    if (c->replicas < 2) return;
    const double now = wire_now();
    for (int o = 0; o < c->n_nodes; o++) {
        memcpy(R->scratch, R->win + (size_t)o * RTT_WIN, sizeof(double) * R->n_rtt[o]);
        R->rtt[o] = R->n_rtt[o] ? median(R->scratch, R->n_rtt[o]) : 0;
    }
    for (int o = 0; o < c->n_nodes; o++) {
        int np = 0;
        for (int q = 0; q < c->n_nodes; q++)
            if (q != o && !R->down[q] && R->n_rtt[q] >= RTT_WIN / 2) R->scratch[np++] = R->rtt[q];
        bool was = R->slow[o];
        if (R->down[o]) {
            R->slow[o] = false;
        } else if (np > 0) {
            double med = median(R->scratch, np);
            if (!was && R->n_rtt[o] == RTT_WIN && R->rtt[o] > SLOW_X * med &&
                R->rtt[o] > SLOW_MIN_S) {
                R->slow[o] = true;
                R->probe_at[o] = now;
                LOG_WARN("expert node %d (%s) is slow: recent RTT %.2f ms, peers' median %.2f ms; "
                         "its pairs go to their replicas", o, c->nodes[o].endpoint,
                         R->rtt[o] * 1e3, med * 1e3);
            } else if (was && R->n_rtt[o] > 0 &&
                       (R->rtt[o] <= BACK_X * med || R->rtt[o] <= SLOW_MIN_S)) {
                R->slow[o] = false;
                LOG_INFO("expert node %d (%s) is fast again: recent RTT %.2f ms, peers' median "
                         "%.2f ms", o, c->nodes[o].endpoint, R->rtt[o] * 1e3, med * 1e3);
            }
        }
        R->avoid[o] = R->slow[o];
        if (R->slow[o] && now - R->probe_at[o] >= PROBE_S) {
            /* This call probes it, and its answers alone will judge it. */
            R->avoid[o] = false;
            R->probe_at[o] = now;
            R->n_rtt[o] = R->w_at[o] = 0;
        }
        pthread_mutex_lock(&c->st_mu);
        c->nodes[o].st.slow = R->slow[o];
        c->nodes[o].st.rtt_recent_s = R->rtt[o];
        pthread_mutex_unlock(&c->st_mu);
    }
}

/* ---- failover ---- */

/* Gives row r of node o's part of micro-batch mbi (one pair) to the pair's next live copy.
 * 0, or -EHOSTUNREACH when there is none (logged). */
static int reroute_row(remote_t *R, int mbi, int o, int r)
{
    mbatch_t *B = &R->mb[mbi];
    const part_t *p = &B->part[o];
    const int t = p->rows[r], j = p->slot[r];
    const uint32_t s = p->first[r];
    const int32_t id = (int32_t)p->expert[s];
    const float w = p->gate[s];
    int o2 = pick_owner(R, B->layer, id);
    if (o2 < 0) {
        LOG_ERR("layer %d expert %d: every copy is down; failing the call", B->layer, id);
        return -EHOSTUNREACH;
    }
    CHECK(o2 != o);
    part_add(R, mbi, o2, t, j, id, w); /* may move B->part[o2]'s arrays, never o's */
    return 0;
}

/* Node o failed (already marked down, with its reason) with the error err: every row it has
 * not answered goes to the next live copy of its pair, and its requests leave the table (their
 * answers are stale from now on). 0 when all found a copy, else err (or -EHOSTUNREACH) and the
 * caller abandons the call. */
static int lose(remote_t *R, int o, int err)
{
    R->down[o] = true;
    /* Whatever it comes back as (restarted, another host, another link) is judged afresh. */
    R->slow[o] = R->avoid[o] = false;
    R->n_rtt[o] = R->w_at[o] = 0;
    if (!R->per_pair) return err; /* one copy of everything: nowhere to go */
    uint64_t moved = 0;
    int rc = 0;
    const flight_t *t = R->fl + (size_t)o * FLIGHT_MAX;
    for (int i = 0; i < R->n_fl[o] && !rc; i++)
        for (int r = t[i].r0; r < t[i].r0 + t[i].n && !rc; r++, moved++)
            rc = reroute_row(R, t[i].mb, o, r);
    for (int m = 0; m < COORD_MICRO_BATCHES_MAX && !rc; m++) {
        part_t *p = &R->mb[m].part[o];
        if (!R->mb[m].active) continue;
        for (int r = p->nsent; r < p->ntok && !rc; r++, moved++) rc = reroute_row(R, m, o, r);
        p->nsent = p->ntok;
    }
    double now = wire_now();
    while (R->n_fl[o]) flight_remove(R, o, R->n_fl[o] - 1, now);
    if (rc) return rc;
    node_count(R, o, moved, 0);
    LOG_WARN("expert node %d (%s) lost mid-call: %llu pair(s) it had not answered re-sent to "
             "replicas", o, R->c->nodes[o].endpoint, (unsigned long long)moved);
    return 0;
}

/* ---- connection events ----
 * With replicas, a node whose TCP connection drops (killed, host gone) is lost at once rather
 * than at the next deadline: ZeroMQ's monitor reports it. Events are read in order; what
 * counts is whether a DISCONNECTED came (its requests in flight are gone with the connection)
 * and whether the last event leaves it disconnected (nothing sent to it would leave). */

static void monitor_open(remote_t *R, int o)
{
    coord_cluster_t *c = R->c;
    char ep[96];
    snprintf(ep, sizeof(ep), "inproc://moemesh-remote-%p-%d", (void *)R, o);
    if (zmq_socket_monitor(c->nodes[o].sock, ep, ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED)) {
        LOG_WARN("expert node %d (%s): no connection monitor (%s); a lost node is noticed at "
                 "its deadline", o, c->nodes[o].endpoint, zmq_strerror(zmq_errno()));
        return;
    }
    void *m = zmq_socket(c->ctx, ZMQ_PAIR);
    int zero = 0;
    if (!m || zmq_setsockopt(m, ZMQ_LINGER, &zero, sizeof(zero)) || zmq_connect(m, ep)) {
        LOG_WARN("expert node %d (%s): no connection monitor (%s)", o, c->nodes[o].endpoint,
                 zmq_strerror(zmq_errno()));
        if (m) zmq_close(m);
        zmq_socket_monitor(c->nodes[o].sock, NULL, 0);
        return;
    }
    R->mon[o] = m;
}

static void monitor_close(remote_t *R, int o)
{
    if (!R->mon[o]) return;
    zmq_socket_monitor(R->c->nodes[o].sock, NULL, 0);
    zmq_close(R->mon[o]);
    R->mon[o] = NULL;
}

/* Reads node o's connection events so far: *dropped when a DISCONNECTED was among them;
 * returns true when the last one was a DISCONNECTED (false when none came). */
static bool monitor_read(remote_t *R, int o, bool *dropped)
{
    bool gone = false;
    *dropped = false;
    for (void *m = R->mon[o]; m;) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, m, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&f);
            break;
        }
        /* Frame 1: event (uint16) and value (uint32); frame 2: the endpoint. */
        uint16_t ev = 0;
        if (zmq_msg_size(&f) >= 2) memcpy(&ev, zmq_msg_data(&f), 2);
        if (ev == ZMQ_EVENT_DISCONNECTED) gone = *dropped = true;
        else if (ev == ZMQ_EVENT_CONNECTED) gone = false;
        bool more = zmq_msg_more(&f);
        zmq_msg_close(&f);
        while (more) {
            zmq_msg_init(&f);
            more = zmq_msg_recv(&f, m, 0) >= 0 && zmq_msg_more(&f);
            zmq_msg_close(&f);
        }
    }
    return gone;
}

/* ---- receiving ---- */

static void note_rtt(remote_t *R, int o, double rtt)
{
    R->win[(size_t)o * RTT_WIN + R->w_at[o]] = rtt;
    R->w_at[o] = (R->w_at[o] + 1) % RTT_WIN;
    if (R->n_rtt[o] < RTT_WIN) R->n_rtt[o]++;
}

/* Handles one message from node o. Returns 0 (taken or ignored) or a negative error (logged,
 * node marked failed). */
static int on_message(remote_t *R, int o, wire_msg_t *m, double t_recv)
{
    coord_cluster_t *c = R->c;
    coord__node_t *n = &c->nodes[o];
    const int E = R->n_embd;
    if (coord__replace_take(c, o, m)) return 0; /* a re-placement's READY or refusal */
    switch (m->kind) {
    case WIRE_KIND_HEARTBEAT:
        n->last_heard = t_recv;
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
                (unsigned long long)e->request_id,
                i >= 0 ? R->fl[(size_t)o * FLIGHT_MAX + i].layer : -1, what,
                wire_strerror(e->code));
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
        note_rtt(R, o, t_recv - f.t_sent);
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

/* When node o, with requests in flight, counts as silent: heartbeat_ms after the later of what
 * was last heard from it and the moment it became busy (its socket is not read while idle
 * during a call, so older heartbeats may still wait there); 0 when heartbeats are off. */
static double silent_at(const remote_t *R, int o)
{
    const coord_cluster_t *c = R->c;
    if (c->cfg.heartbeat_ms <= 0) return 0;
    double h = c->nodes[o].last_heard > R->busy_since[o] ? c->nodes[o].last_heard
                                                         : R->busy_since[o];
    return h + c->cfg.heartbeat_ms / 1e3;
}

/* Waits once for messages from the nodes with requests in flight (until the earliest of their
 * deadlines and silence limits; not at all unless block) and handles every message waiting. A
 * node that fails is lost (its rows re-assigned, not sent). 0, or a negative error when the
 * call cannot go on (logged). */
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
        double s = silent_at(R, o);
        if (s > 0 && s < deadline) deadline = s;
    }
    const int nsock = np;
    for (int j = 0; j < nsock; j++)
        if (R->mon[R->who[j]]) {
            R->items[np] = (zmq_pollitem_t){R->mon[R->who[j]], 0, ZMQ_POLLIN, 0};
            R->who[np++] = R->who[j];
        }
    if (np == 0) return 0;
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
    for (int j = 0; j < nsock && rc > 0; j++) {
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
            } else {
                e = on_message(R, o, &m, tr0);
                wire_msg_deinit(&m);
            }
            if (e < 0 && (e = lose(R, o, e)) != 0) return e;
        }
    }
    /* Lost connections (after the answers that came before), deadlines and silence. */
    const double now = wire_now();
    for (int j = 0; j < nsock; j++) {
        int o = R->who[j];
        if (!R->n_fl[o]) continue;
        bool dropped;
        monitor_read(R, o, &dropped);
        if (dropped) {
            LOG_ERR("expert node %d (%s): connection lost with requests in flight", o,
                    c->nodes[o].endpoint);
            coord__node_failed(c, o, "connection lost");
            int e = lose(R, o, -ECONNRESET);
            if (e) return e;
            continue;
        }
        const flight_t *late = NULL;
        for (int i = 0; i < R->n_fl[o] && !late; i++)
            if (R->fl[(size_t)o * FLIGHT_MAX + i].deadline <= now)
                late = &R->fl[(size_t)o * FLIGHT_MAX + i];
        double s = silent_at(R, o);
        if (late) {
            LOG_ERR("expert node %d (%s): no RESULT for request %llu (layer %d) within %d ms; "
                    "node down or stuck", o, c->nodes[o].endpoint, (unsigned long long)late->id,
                    late->layer, c->cfg.timeout_ms);
            coord__node_failed(c, o, "no answer within %d ms", c->cfg.timeout_ms);
        } else if (s > 0 && s <= now) {
            LOG_ERR("expert node %d (%s): nothing heard for %d ms with requests in flight; "
                    "node down or stuck", o, c->nodes[o].endpoint, c->cfg.heartbeat_ms);
            coord__node_failed(c, o, "no heartbeat for %.1f s", c->cfg.heartbeat_ms / 1e3);
        } else {
            continue;
        }
        int e = lose(R, o, -ETIMEDOUT);
        if (e) return e;
    }
    return 0;
}

/* ---- sending ---- */

/* Sends node o the rows [r0, r0 + n) of its part of micro-batch mbi, their activations
 * gathered from the micro-batch's copy into xbuf first. 0, or an error (logged; the node is
 * marked failed when the send itself failed). */
static int send_forward(remote_t *R, int o, int mbi, int r0, int n)
{
    coord_cluster_t *c = R->c;
    coord__node_t *nd = &c->nodes[o];
    const mbatch_t *B = &R->mb[mbi];
    const part_t *p = &B->part[o];
    const int E = R->n_embd;
    double t0 = wire_now();
    for (int r = 0; r < n; r++)
        memcpy(R->xbuf + (size_t)r * E, B->x + (size_t)p->rows[r0 + r] * E, sizeof(float) * E);
    const uint32_t sel0 = p->first[r0];
    const uint32_t nsel = (r0 + n < p->ntok ? p->first[r0 + n] : p->tot) - sel0;
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
    /* A send waits only while ZeroMQ's queue to the node is full or it has no connection; no
     * connection for heartbeat_ms is the liveness rule's "down", so it waits no longer than
     * that even when the call's deadline is further (a 30 s node timeout must not become a 30 s
     * stall of every request behind a node that is gone). */
    double deadline = t0 + c->cfg.timeout_ms / 1e3;
    int wait_ms = coord__ms_left(deadline);
    if (c->cfg.heartbeat_ms > 0 && wait_ms > c->cfg.heartbeat_ms) wait_ms = c->cfg.heartbeat_ms;
    if (!(err = coord__node_set_sndtimeo(nd, wait_ms)))
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

/* Sends every waiting row of every active micro-batch that fits in its node's table. A node
 * whose send fails is lost and its rows move on (and are sent in turn). 0, or an error when the
 * call cannot go on. */
static int flush_all(remote_t *R)
{
    const int N = R->c->n_nodes;
    bool again = true;
    while (again) {
        again = false;
        for (int m = 0; m < COORD_MICRO_BATCHES_MAX; m++) {
            if (!R->mb[m].active) continue;
            for (int o = 0; o < N; o++) {
                part_t *p = &R->mb[m].part[o];
                while (p->nsent < p->ntok && R->n_fl[o] < FLIGHT_MAX) {
                    int n = p->ntok - p->nsent < R->slice ? p->ntok - p->nsent : R->slice;
                    int err = send_forward(R, o, m, p->nsent, n);
                    /* A failed send marks the node down; an encoding failure does not. */
                    if (err && coord_cluster_node_down(R->c, o)) {
                        if ((err = lose(R, o, err)) != 0) return err;
                        again = true; /* its rows went to parts already passed */
                        break;
                    }
                    if (err) return err;
                    p->nsent += n;
                }
            }
        }
    }
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

static bool mb_done(const remote_t *R, const mbatch_t *B)
{
    for (int o = 0; o < R->c->n_nodes; o++)
        if (B->part[o].pending || B->part[o].nsent < B->part[o].ntok) return false;
    return true;
}

static bool mb_sent(const remote_t *R, const mbatch_t *B)
{
    for (int o = 0; o < R->c->n_nodes; o++)
        if (B->part[o].nsent < B->part[o].ntok) return false;
    return true;
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
    coord__replace_count(c, layer, n_tok, k, ids);
    /* Nothing out: the sockets are ours to tend (heartbeats, rejoining nodes). Else take what
     * has arrived meanwhile, so RESULTs leave ZeroMQ's queue (and the in-flight time ends)
     * about when they came. */
    if (R->in_flight == 0) coord_cluster_tend(c);
    else if ((err = pump(R, false)) != 0) {
        fail_all(R);
        return err;
    }
    for (int o = 0; o < c->n_nodes; o++) {
        bool dropped;
        /* A node without requests out whose connection is gone now: sends to it would wait for
         * a reconnection, so it is down (the cluster probes it and re-admits it when it
         * answers). One with requests out is the next pump's. */
        if (R->mon[o] && !R->n_fl[o] && monitor_read(R, o, &dropped) &&
            !coord_cluster_node_down(c, o)) {
            LOG_ERR("expert node %d (%s): connection lost", o, c->nodes[o].endpoint);
            coord__node_failed(c, o, "connection lost");
        }
        R->down[o] = coord_cluster_node_down(c, o);
        if (R->down[o]) R->n_rtt[o] = R->w_at[o] = 0; /* judged afresh when back, as in lose */
    }
    judge_speed(R);
    *B = (mbatch_t){.active = true, .layer = layer, .n_tok = n_tok, .k = k, .out = out,
                    .x = B->x, .xcap = B->xcap, .src = B->src, .part = B->part};
    for (int o = 0; o < c->n_nodes; o++) {
        part_t *p = &B->part[o];
        p->ntok = p->nsent = p->pending = 0;
        p->tot = 0;
        R->queued[o] = 0;
        R->cap[o] = coord_cluster_capacity(c, o);
    }
    if (n_tok > B->xcap) {
        B->xcap = n_tok;
        B->x = xrealloc(B->x, sizeof(float) * (size_t)n_tok * R->n_embd);
    }
    memcpy(B->x, x, sizeof(float) * (size_t)n_tok * R->n_embd);
    for (int t = 0; t < n_tok; t++) {
        for (int j = 0; j < k; j++) {
            int32_t id = ids[t * k + j];
            if (R->per_pair) B->src[t * k + j] = (src_t){-1, -1};
            if (id < 0) continue;
            int o = pick_owner(R, layer, id);
            if (o < 0) {
                fail_all(R);
                LOG_ERR("layer %d expert %d: every copy is down; failing the call", layer, id);
                return -EHOSTUNREACH;
            }
            /* Served elsewhere than the primary because of it: on its account, as a failover
             * while it is down, a re-route while it is slow (a queue-depth split is neither). */
            int p0 = coord_cluster_owners(c, layer, id)[0];
            if (o != p0 && (R->down[p0] || R->avoid[p0]))
                (R->down[p0] ? R->failed_over : R->rerouted)[p0]++;
            part_add(R, mbi, o, t, j, id, w[t * k + j]);
            R->queued[o]++;
        }
    }
    for (int o = 0; o < c->n_nodes; o++)
        if (R->rerouted[o] || R->failed_over[o]) {
            node_count(R, o, R->failed_over[o], R->rerouted[o]);
            R->rerouted[o] = R->failed_over[o] = 0;
        }
    /* Every node's FORWARDs leave now; none waits for another node's. A node whose table is
     * full makes submit wait for answers, as a bound on what is out. */
    err = flush_all(R);
    while (!err && !mb_sent(R, B))
        if (!(err = pump(R, true))) err = flush_all(R);
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
        int err = flush_all(R);
        if (!err && mb_done(R, B)) break;
        if (!err) err = pump(R, true);
        if (err) {
            fail_all(R);
            return err;
        }
    }
    double t0 = wire_now();
    const int E = R->n_embd;
    memset(B->out, 0, sizeof(float) * (size_t)B->n_tok * E);
    if (R->per_pair) {
        /* Each token's pairs in top-k order, wherever they were computed. */
        for (int t = 0; t < B->n_tok; t++) {
            float *dst = B->out + (size_t)t * E;
            for (int j = 0; j < B->k; j++) {
                const src_t s = B->src[t * B->k + j];
                if (s.node < 0) continue;
                const float *src = B->part[s.node].res + (size_t)s.row * E;
                for (int i = 0; i < E; i++) dst[i] += src[i];
            }
        }
    } else {
        for (int o = 0; o < c->n_nodes; o++) {
            const part_t *p = &B->part[o];
            for (int r = 0; r < p->ntok; r++) {
                float *dst = B->out + (size_t)p->rows[r] * E;
                const float *src = p->res + (size_t)r * E;
                for (int i = 0; i < E; i++) dst[i] += src[i];
            }
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
    fail_all(R); /* the cluster may be tended again */
    for (int o = 0; o < R->c->n_nodes; o++) monitor_close(R, o);
    for (int m = 0; m < COORD_MICRO_BATCHES_MAX; m++) {
        for (int o = 0; o < R->c->n_nodes; o++) {
            part_t *p = &R->mb[m].part[o];
            free(p->rows), free(p->slot), free(p->n_sel), free(p->first);
            free(p->expert), free(p->gate), free(p->res);
        }
        free(R->mb[m].part), free(R->mb[m].x), free(R->mb[m].src);
    }
    free(R->fl), free(R->n_fl), free(R->busy_since), free(R->down), free(R->slow);
    free(R->avoid), free(R->probe_at), free(R->rtt), free(R->n_rtt), free(R->rerouted);
    free(R->queued), free(R->cand), free(R->cap);
    free(R->win), free(R->w_at);
    free(R->failed_over);
    free(R->xbuf), free(R->scratch), free(R->items), free(R->who), free(R->mon);
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
            if (m.kind == WIRE_KIND_HEARTBEAT) c->nodes[o].last_heard = wire_now();
            if (coord__replace_take(c, o, &m)) {
                /* a re-placement's READY or refusal */
            } else if (m.kind == WIRE_KIND_RESULT || m.kind == WIRE_KIND_ERROR) {
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
    R->per_pair = c->replicas > 1;
    const size_t N = (size_t)c->n_nodes;
    for (int m = 0; m < COORD_MICRO_BATCHES_MAX; m++) {
        R->mb[m].part = xcalloc(N, sizeof(part_t));
        R->mb[m].src = xcalloc((size_t)max_tok * R->k_max, sizeof(src_t));
    }
    R->fl = xcalloc(N * FLIGHT_MAX, sizeof(flight_t));
    R->n_fl = xcalloc(N, sizeof(int));
    R->busy_since = xcalloc(N, sizeof(double));
    R->down = xcalloc(N, sizeof(bool));
    R->slow = xcalloc(N, sizeof(bool));
    R->avoid = xcalloc(N, sizeof(bool));
    R->probe_at = xcalloc(N, sizeof(double));
    R->rtt = xcalloc(N, sizeof(double));
    R->n_rtt = xcalloc(N, sizeof(int));
    R->win = xcalloc(N * RTT_WIN, sizeof(double));
    R->w_at = xcalloc(N, sizeof(int));
    R->queued = xcalloc(N, sizeof(int));
    R->cand = xcalloc((size_t)c->replicas, sizeof(int));
    R->cap = xcalloc(N, sizeof(double));
    R->rerouted = xcalloc(N, sizeof(uint64_t));
    R->failed_over = xcalloc(N, sizeof(uint64_t));
    R->xbuf = xcalloc((size_t)R->slice * R->n_embd, sizeof(float));
    R->scratch = xcalloc(N > RTT_WIN ? N : RTT_WIN, sizeof(double));
    R->items = xcalloc(2 * N, sizeof(zmq_pollitem_t));
    R->who = xcalloc(2 * N, sizeof(int));
    R->mon = xcalloc(N, sizeof(void *));
    for (int o = 0; R->per_pair && o < c->n_nodes; o++) monitor_open(R, o);
    return &R->base;
}
