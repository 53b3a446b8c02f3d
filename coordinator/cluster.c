/* The coordinator's side of the expert nodes at start-up: one DEALER per node, then the
 * conversation of wire/proto/moemesh.proto steps 1-5 — HELLO/WELCOME, placement with
 * model_plan_new_r within each node's memory (R copies of every pair on distinct nodes), ASSIGN
 * of every pair a node holds, SHARD_CHUNKs for the pairs a node does not already hold for this
 * very file (same model_fingerprint), and READY from every node. After start-up,
 * coord_cluster_tend keeps the nodes' liveness (heartbeat age) and brings a lost node back by
 * running steps 1-5 again for it alone; coord_cluster_guard_new puts that in front of the
 * remote experts.
 *
 * Invariants: every wait has a deadline (connect_ms until all WELCOMEs, then timeout_ms without
 * progress), so a dead or silent node fails start-up with a message naming it instead of
 * hanging; the cluster's sockets are touched only by the thread that created it; shard frames
 * point into the model's mapping zero-copy, which is why the model must outlive the cluster
 * (coord_cluster_free ends the ZeroMQ context, and with it every frame, before returning).
 */
#include "coordinator/coord-int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define CHUNK_MAX (4u << 20) /* protocol bound on one SHARD_CHUNK's data */

const double coord_rtt_bounds[COORD_RTT_BUCKETS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};

static const char *kind_names[WIRE_SHARD_KIND_COUNT] = {"gate", "up", "down", "gate bias",
                                                         "up bias", "down bias"};

coord_cluster_config_t coord_cluster_config_default(void)
{
    return (coord_cluster_config_t){
        .wire_type = WIRE_DTYPE_F32,
        .replicas = 1,
        .connect_ms = 10000,
        .timeout_ms = 10000,
        .progress = true,
        .test_corrupt_chunk = -1,
        .heartbeat_ms = 3000,
        .rebalance_above = 1.15,
        .rebalance_step_kb = 1024,
    };
}

int coord__ms_left(double deadline)
{
    double ms = (deadline - wire_now()) * 1e3;
    return ms <= 0 ? 0 : ms > 1e9 ? 1000000000 : (int)ms + 1;
}

int coord__node_set_sndtimeo(coord__node_t *n, int ms)
{
    return zmq_setsockopt(n->sock, ZMQ_SNDTIMEO, &ms, sizeof(ms)) ? -zmq_errno() : 0;
}

/* Logs one start-up failure about node i: every message names the node the same way. A macro
 * so the log line carries the caller's function name. */
#define NODE_ERR(c, i, fmt, ...)                                                                   \
    LOG_ERR("expert node %d (%s): " fmt, (i), (c)->nodes[(i)].endpoint, ##__VA_ARGS__)

/* True when node i holds pair p (layer * n_expert + expert), as primary or replica. */
static bool holds(const coord_cluster_t *c, size_t p, int i)
{
    for (int r = 0; r < c->replicas; r++)
        if (c->owners[p * (size_t)c->replicas + r] == i) return true;
    return false;
}

/* Turns an ERROR from node i into a start-up message; what kind of refusal it is decides the
 * wording so the operator knows whether to upgrade, free memory or suspect the network. */
static void report_node_error(const coord_cluster_t *c, int i, const wire_error_t *e)
{
    const char *msg = e->message && *e->message ? e->message : "(no message)";
    if (e->code == WIRE_E_VERSION)
        NODE_ERR(c, i, "protocol version mismatch (we speak %d): %s", WIRE_PROTO_VERSION, msg);
    else if (e->code == WIRE_E_CHECKSUM)
        NODE_ERR(c, i, "checksum failure on shard data: %s", msg);
    else
        NODE_ERR(c, i, "refused: %s (%s)", msg, wire_strerror(e->code));
}

/* Receives node i's next message other than HEARTBEAT, waiting until deadline. Returns 0 with
 * *m owned by the caller, -ETIMEDOUT, or a receive error (logged). ERROR messages are
 * returned like any other. */
static int recv_until(coord_cluster_t *c, int i, double deadline, wire_msg_t *m)
{
    coord__node_t *n = &c->nodes[i];
    for (;;) {
        zmq_pollitem_t it = {n->sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&it, 1, coord__ms_left(deadline));
        if (rc < 0 && zmq_errno() != EINTR) return -zmq_errno();
        if (rc <= 0) {
            if (coord__ms_left(deadline) == 0) return -ETIMEDOUT;
            continue;
        }
        int err = wire_msg_recv(n->sock, &c->lim, m);
        if (err == -EAGAIN) continue;
        if (err) {
            if (err == WIRE_E_VERSION)
                NODE_ERR(c, i, "protocol version mismatch (we speak %d)", WIRE_PROTO_VERSION);
            else
                NODE_ERR(c, i, "malformed message: %s", wire_strerror(err));
            return err;
        }
        if (m->kind != WIRE_KIND_HEARTBEAT) return 0;
        wire_msg_deinit(m);
    }
}

/* Non-blocking, after ASSIGN: reads everything node i has queued. HEARTBEATs are dropped; a
 * READY is kept in n->ready for wait_ready, because it arrives whenever the node has its last
 * slice — often while we are still reading for errors after that very chunk, or streaming to
 * another node — and dropping it would leave start-up waiting for a READY already received.
 * An ERROR (say, a checksum failure in the middle of streaming) fails start-up at the first
 * problem; so does anything else, which a node has no reason to send now. Reading every node
 * now and then also keeps its receive queue below the HWM: a full queue stops ZeroMQ reading
 * that connection, ZMTP pings go unanswered, and after HEARTBEAT_TIMEOUT the connection is
 * dropped with whatever was queued on it. Returns 0 or an error (logged). */
static int drain_node(coord_cluster_t *c, int i)
{
    coord__node_t *n = &c->nodes[i];
    /* Once serving, only the node being rejoined is held to the start-up rules; the others may
     * still have late answers or WELCOMEs to probes on the way, which are not errors. */
    const bool strict = !c->started || i == c->rejoining;
    for (;;) {
        wire_msg_t m;
        int err = wire_msg_recv(n->sock, &c->lim, &m);
        if (err == -EAGAIN) return 0;
        if (err) {
            NODE_ERR(c, i, "malformed message: %s", wire_strerror(err));
            if (!strict) continue;
            return err;
        }
        if (m.kind == WIRE_KIND_HEARTBEAT) n->last_heard = wire_now();
        /* Even the node being rejoined may still answer a probe twice or a request given up
         * before it stalled: those are dropped, not failures. */
        bool stray = c->started && (m.kind == WIRE_KIND_WELCOME || m.kind == WIRE_KIND_RESULT ||
                                    (m.kind == WIRE_KIND_ERROR && m.u.error.request_id != 0));
        if (!strict || stray) {
            if (m.kind == WIRE_KIND_RESULT || m.kind == WIRE_KIND_ERROR) coord__node_stale(c, i);
            wire_msg_deinit(&m);
            continue;
        }
        if (m.kind == WIRE_KIND_READY) {
            n->ready = m.u.ready.n_experts;
        } else if (m.kind == WIRE_KIND_ERROR) {
            report_node_error(c, i, &m.u.error);
            err = m.u.error.code ? m.u.error.code : -EPROTO;
        } else if (m.kind != WIRE_KIND_HEARTBEAT) {
            NODE_ERR(c, i, "sent %s while we waited for READY", wire_kind_name(m.kind));
            err = -EPROTO;
        }
        wire_msg_deinit(&m);
        if (err) return err;
    }
}

static int drain_all(coord_cluster_t *c)
{
    int err = 0;
    for (int i = 0; i < c->n_nodes && !err; i++) err = drain_node(c, i);
    return err;
}

static int open_node(coord_cluster_t *c, int i, const wire_keypair_t *me, const char *server)
{
    coord__node_t *n = &c->nodes[i];
    n->sock = wire_sock_coord_new(c->ctx, &c->lim);
    if (!n->sock) return -EIO;
    int zero = 0, one = 1;
    int rc = zmq_setsockopt(n->sock, ZMQ_RCVTIMEO, &zero, sizeof(zero));
    /* A bracketed host is IPv6; ZeroMQ refuses those unless asked (--expert-dns gives them). */
    if (!rc && strchr(n->endpoint, '[')) rc = zmq_setsockopt(n->sock, ZMQ_IPV6, &one, sizeof(one));
    if (rc) return -zmq_errno();
    if (me) {
        int err = wire_curve_client_setup(n->sock, me, server);
        if (err) {
            NODE_ERR(c, i, "CURVE set-up failed: %s", wire_strerror(err));
            return err;
        }
    }
    if (zmq_connect(n->sock, n->endpoint) != 0) {
        int err = -zmq_errno();
        NODE_ERR(c, i, "cannot connect: %s (expected tcp://HOST:PORT)", wire_strerror(err));
        return err;
    }
    return 0;
}

/* Loads our key pair and the nodes' public key from dir for CURVE. */
static int load_keys(const char *dir, wire_keypair_t *me, wire_keypair_t *node)
{
    int err = wire_curve_load(dir, "coordinator", true, me);
    if (err) {
        LOG_ERR("--curve-keys %s: cannot load coordinator.pub/.key: %s", dir, wire_strerror(err));
        return err;
    }
    err = wire_curve_load(dir, "node", false, node);
    if (err) LOG_ERR("--curve-keys %s: cannot load node.pub: %s", dir, wire_strerror(err));
    return err;
}

static uint64_t physical_memory(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size : 0;
}

/* Marks in have (n_nodes, pairs) the pairs node i's WELCOME h offers of the file with
 * fingerprint fp; false (nothing marked) when they belong to another file. */
static bool mark_held(const coord_cluster_t *c, int i, const wire_hello_t *h, const char *fp,
                      uint8_t *have)
{
    const size_t pairs = (size_t)c->n_layers * c->n_expert;
    bool same = h->model && !strcmp(h->model, fp);
    for (uint32_t p = 0; same && p < h->n_pairs; p++)
        if (h->layer[p] < (uint32_t)c->n_layers && h->expert[p] < (uint32_t)c->n_expert)
            have[(size_t)i * pairs + (size_t)h->layer[p] * c->n_expert + h->expert[p]] = 1;
    return same;
}

static wire_hello_t our_hello(const coord_cluster_t *c)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return (wire_hello_t){.name = c->cfg.name ? c->cfg.name : "coord",
                          .cores = cores > 0 ? (uint32_t)cores : 1,
                          .mem_bytes = physical_memory(),
                          .dtypes = ((1u << WIRE_DTYPE_COUNT) - 1) & ~1u};
}

/* Steps 1-2: HELLO to every node, then every WELCOME by the connect deadline. have (n_nodes,
 * n_layers * n_expert) receives the pairs each node holds for this very file. */
static int hello_all(coord_cluster_t *c, const char *fp, uint8_t *have)
{
    double deadline = wire_now() + c->cfg.connect_ms / 1e3;
    for (int i = 0; i < c->n_nodes; i++) {
        coord__node_t *n = &c->nodes[i];
        int err = coord__node_set_sndtimeo(n, coord__ms_left(deadline));
        wire_msg_t m;
        wire_msg_init(&m, WIRE_KIND_HELLO);
        m.u.hello = our_hello(c);
        if (!err) err = wire_msg_send(n->sock, &m);
        else wire_msg_deinit(&m);
        if (err == -EAGAIN) {
            NODE_ERR(c, i, "unreachable: no connection within %d ms (is moemesh-expert running "
                     "there%s?)",
                     c->cfg.connect_ms, c->cfg.curve_dir ? ", with our CURVE keys" : "");
            return -ETIMEDOUT;
        }
        if (err) {
            NODE_ERR(c, i, "cannot send HELLO: %s", wire_strerror(err));
            return err;
        }
    }
    for (int i = 0; i < c->n_nodes; i++) {
        coord__node_t *n = &c->nodes[i];
        wire_msg_t m;
        int err = recv_until(c, i, deadline, &m);
        if (err == -ETIMEDOUT) {
            NODE_ERR(c, i, "connected but no WELCOME within %d ms", c->cfg.connect_ms);
            return err;
        }
        if (err) return err;
        if (m.kind == WIRE_KIND_ERROR) {
            report_node_error(c, i, &m.u.error);
            wire_msg_deinit(&m);
            return -EPROTO;
        }
        if (m.kind != WIRE_KIND_WELCOME) {
            NODE_ERR(c, i, "answered HELLO with %s instead of WELCOME", wire_kind_name(m.kind));
            wire_msg_deinit(&m);
            return -EPROTO;
        }
        const wire_hello_t *h = &m.u.hello;
        snprintf(n->name, sizeof(n->name), "%s", h->name);
        n->cores = h->cores, n->mem_bytes = h->mem_bytes, n->dtypes = h->dtypes;
        n->capacity = h->capacity;
        bool same = mark_held(c, i, h, fp, have);
        LOG_INFO("expert node %d (%s): '%s', %u cores, %.1f MiB, holds %u pairs%s", i,
                 n->endpoint, n->name, n->cores, n->mem_bytes / 1048576.0, h->n_pairs,
                 h->n_pairs ? (same ? " of this model" : " of another model") : "");
        wire_msg_deinit(&m);
        if (n->dtypes && !(n->dtypes & (1u << c->cfg.wire_type))) {
            NODE_ERR(c, i, "does not accept %s activations", wire_dtype_name(c->cfg.wire_type));
            return -EPROTO;
        }
    }
    return 0;
}

/* The capacities a load-aware placement weighs, pairs/s for this model's experts, into cap:
 * --node-cap when given, else each node's WELCOME capacity scaled from the reference expert by
 * the multiply-adds per pair (all 1 when any node did not measure). 0 or -EINVAL (logged). */
int coord__cluster_capacities(coord_cluster_t *c, double *cap)
{
    const int N = c->n_nodes;
    if (c->cfg.node_cap) {
        const char *p = c->cfg.node_cap;
        int k = 0;
        while (*p) {
            char *end;
            double v = strtod(p, &end);
            if (end == p || !(v > 0) || v > 1e15 || k == N) break;
            cap[k++] = v;
            p = *end == ',' ? end + 1 : end;
            if (*end && *end != ',') break;
        }
        if (*p || (k != 1 && k != N)) {
            LOG_ERR("--node-cap '%s': want 1 or %d positive numbers, comma-separated",
                    c->cfg.node_cap, N);
            return -EINVAL;
        }
        for (int i = k; i < N; i++) cap[i] = cap[0];
        return 0;
    }
    const model_hparams_t *hp = &c->m->hp;
    double scale = (double)WIRE_CAPACITY_REF_EMBD * WIRE_CAPACITY_REF_FF /
                   ((double)hp->n_embd * (hp->n_ff_exp > 0 ? hp->n_ff_exp : 1));
    bool all = true;
    for (int i = 0; i < N; i++) all &= c->nodes[i].capacity > 0;
    for (int i = 0; i < N; i++) cap[i] = all ? c->nodes[i].capacity * scale : 1;
    if (!all) LOG_WARN("a node did not report its capacity: placing as if all were equal");
    return 0;
}

/* Step 3: placement, logged node by node. Plain (model_plan_new_r: byte-balanced, every expert
 * on `replicas` nodes) unless a load profile, capacities or --balance ask for the load-aware
 * one (model_plan_new_load: up to `replicas` copies of hot experts, one of cold ones; unused
 * owner slots stay -1). */
static int place(coord_cluster_t *c)
{
    const model_t *m = c->m;
    const bool balanced = c->cfg.balance || c->cfg.load_profile || c->cfg.node_cap;
    uint64_t *mem = xmalloc(sizeof(uint64_t) * c->n_nodes);
    double *cap = xmalloc(sizeof(double) * c->n_nodes);
    double *load = NULL;
    for (int i = 0; i < c->n_nodes; i++)
        mem[i] = c->nodes[i].mem_bytes ? c->nodes[i].mem_bytes : UINT64_MAX;
    model_plan_t *p = NULL;
    int err = 0;
    if (balanced) {
        err = coord__cluster_capacities(c, cap);
        if (!err && c->cfg.load_profile) {
            load = xmalloc(sizeof(double) * ((size_t)c->n_layers * c->n_expert + 1));
            err = coord_load_profile_read(c->cfg.load_profile, c->n_layers, c->n_expert, load);
        }
        if (!err)
            err = model_plan_new_load(m->gguf, c->n_nodes, mem, cap, load, c->replicas, 0, &p);
    } else {
        err = model_plan_new_r(m->gguf, c->n_nodes, mem, 0, c->replicas, &p);
    }
    free(mem);
    free(load);
    if (err) {
        LOG_ERR("cannot place %d cop%s of the routed experts on %d node(s): %s", c->replicas,
                c->replicas == 1 ? "y" : "ies", c->n_nodes, wire_strerror(err));
        free(cap);
        return err;
    }
    for (int i = 0; i < c->n_nodes; i++) c->nodes[i].cap = balanced ? cap[i] : 0;
    free(cap);
    const int R = c->replicas;
    int extra = 0;
    for (int l = 0; l < c->n_layers && !err; l++) {
        if (!m->layers[l].gate_exps) continue;
        if (l >= p->n_layers || p->n_expert != c->n_expert || p->replicas != R) {
            LOG_ERR("the plan does not cover layer %d's experts", l);
            err = -EINVAL;
            break;
        }
        for (int e = 0; e < c->n_expert && !err; e++) {
            const size_t i = (size_t)l * c->n_expert + e;
            if (p->copies[i] < 1) {
                LOG_ERR("the plan leaves expert %d of layer %d without a node", e, l);
                err = -EINVAL;
                break;
            }
            extra += p->copies[i] - 1;
            for (int r = 0; r < p->copies[i]; r++) {
                int o = p->owners[i * R + r];
                if (o < 0 || o >= c->n_nodes) {
                    LOG_ERR("the plan leaves copy %d of expert %d of layer %d without a node",
                            r + 1, e, l);
                    err = -EINVAL;
                    break;
                }
                c->owners[i * R + r] = o;
                c->nodes[o].st.experts++;
                c->nodes[o].st.expert_bytes += p->expert_bytes[i];
            }
            c->owner[i] = c->owners[i * R];
        }
    }
    model_plan_free(p);
    if (balanced && !err)
        LOG_INFO("plan: load-aware (%s), %d extra cop%s of hot experts", c->cfg.load_profile
                 ? c->cfg.load_profile : "even load", extra, extra == 1 ? "y" : "ies");
    for (int i = 0; i < c->n_nodes && !err; i++) {
        if (balanced)
            LOG_INFO("plan: node %d (%s) holds %d experts, %.2f MiB, capacity %.0f pairs/s", i,
                     c->nodes[i].endpoint, c->nodes[i].st.experts,
                     c->nodes[i].st.expert_bytes / 1048576.0, c->nodes[i].cap);
        else
            LOG_INFO("plan: node %d (%s) holds %d experts (%d replica%s each), %.2f MiB", i,
                     c->nodes[i].endpoint, c->nodes[i].st.experts, R, R == 1 ? "" : "s",
                     c->nodes[i].st.expert_bytes / 1048576.0);
    }
    return err;
}

double coord_cluster_capacity(const coord_cluster_t *c, int node)
{
    return node >= 0 && node < c->n_nodes ? c->nodes[node].cap : 0;
}

int coord__assign_send(coord_cluster_t *c, int i, const uint32_t *ls, const uint32_t *es,
                       uint32_t k, uint64_t bytes, int ms)
{
    coord__node_t *n = &c->nodes[i];
    wire_msg_t m;
    wire_msg_init(&m, WIRE_KIND_ASSIGN);
    /* The wire struct only reads the arrays; the casts drop const for its fields. */
    m.u.assign = (wire_assign_t){.model = c->fp,
                                 .n_layers = c->n_layers,
                                 .n_experts = c->n_expert,
                                 .n_pairs = k,
                                 .layer = (uint32_t *)ls,
                                 .expert = (uint32_t *)es,
                                 .n_embd = c->m->hp.n_embd,
                                 .n_ff = c->m->hp.n_ff_exp,
                                 .bytes = bytes,
                                 .expert_act = c->m->hp.arch == MODEL_ARCH_GPTOSS
                                                   ? WIRE_EXPERT_ACT_SWIGLU_OAI
                                                   : WIRE_EXPERT_ACT_SWIGLU};
    int err = coord__node_set_sndtimeo(n, ms);
    if (!err) err = wire_msg_send(n->sock, &m);
    else wire_msg_deinit(&m);
    if (err) NODE_ERR(c, i, "cannot send ASSIGN: %s", wire_strerror(err));
    return err;
}

/* Step 3 for node i: every pair the table gives it. */
static int assign(coord_cluster_t *c, int i)
{
    coord__node_t *n = &c->nodes[i];
    uint32_t *ls = xmalloc(sizeof(uint32_t) * (n->st.experts + 1));
    uint32_t *es = xmalloc(sizeof(uint32_t) * (n->st.experts + 1));
    uint32_t k = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int e = 0; e < c->n_expert; e++)
            if (holds(c, (size_t)l * c->n_expert + e, i)) ls[k] = l, es[k++] = e;
    int err = coord__assign_send(c, i, ls, es, k, n->st.expert_bytes, c->cfg.timeout_ms);
    free(ls);
    free(es);
    return err;
}

/* Frames of shard data point into the model's mapping, which outlives the context. */
static void no_free(void *data, void *hint)
{
    (void)data, (void)hint;
}

typedef struct {
    uint64_t total, done;
    uint64_t node_left; /* bytes still to stream to the current node */
    double last;
    double drained;     /* wire_now() when every node's socket was last read */
    bool on;
    int chunks;         /* SHARD_CHUNKs sent so far, for the test hook */
} progress_t;

/* Every node's socket is read at least this often while we stream (see drain_node). */
#define DRAIN_ALL_S 0.1

static void progress_show(progress_t *pg, bool final)
{
    if (!pg->on || pg->total == 0) return;
    double now = wire_now();
    if (!final && now - pg->last < 0.1) return;
    pg->last = now;
    int w = 30, f = (int)(w * (double)pg->done / pg->total);
    char bar[40];
    for (int j = 0; j < w; j++) bar[j] = j < f ? '#' : ' ';
    bar[w] = 0;
    fprintf(stderr, "\rstreaming experts [%s] %3d%% %.1f/%.1f MiB%s", bar,
            (int)(100.0 * pg->done / pg->total), pg->done / 1048576.0, pg->total / 1048576.0,
            final ? "\n" : "");
}

/* Step 4 for one slice: the whole slice's CRC-32C repeated in every chunk, chunks in order. */
static int send_slice(coord_cluster_t *c, int i, int l, int e, wire_shard_kind_t kind,
                      const model_tensor_t *t, progress_t *pg)
{
    coord__node_t *n = &c->nodes[i];
    /* Weights: one (rows, cols) slice per expert; gpt-oss's biases: one F32 row each. */
    const size_t stride = kind <= WIRE_SHARD_DOWN ? model_expert_stride(t)
                                                  : kern_row_bytes(t->type, t->ne[0]);
    const uint8_t *data = (const uint8_t *)t->data + stride * (size_t)e;
    const uint32_t crc = wire_crc32c(0, data, stride);
    size_t chunk = c->lim.max_chunk_bytes < CHUNK_MAX ? c->lim.max_chunk_bytes : CHUNK_MAX;
    for (size_t off = 0; off < stride; off += chunk) {
        size_t len = stride - off < chunk ? stride - off : chunk;
        wire_msg_t m;
        wire_msg_init(&m, WIRE_KIND_SHARD_CHUNK);
        m.u.chunk = (wire_shard_chunk_t){.tensor = t->name,
                                          .layer = l,
                                          .expert = e,
                                          .kind = kind,
                                          .ggml_type = t->type,
                                          .offset = off,
                                          .total = stride,
                                          .crc32c = crc};
        int err;
        if (pg->chunks++ == c->cfg.test_corrupt_chunk) {
            uint8_t *bad = xmalloc(len);
            memcpy(bad, data + off, len);
            bad[0] ^= 0xff;
            LOG_WARN("test hook: chunk %d (%s expert %d) sent corrupted", pg->chunks - 1,
                     t->name, e);
            err = wire_msg_add_tensor(&m, WIRE_DTYPE_BYTES, 1, (uint32_t)len, bad, len, NULL,
                                      NULL);
        } else {
            /* ZeroMQ only reads the frame; the cast drops const for its API. */
            err = wire_msg_add_tensor(&m, WIRE_DTYPE_BYTES, 1, (uint32_t)len,
                                      (void *)(data + off), len, no_free, NULL);
        }
        if (!err) err = wire_msg_send(n->sock, &m);
        else wire_msg_deinit(&m);
        if (err == -EAGAIN) {
            NODE_ERR(c, i, "stopped taking shard data (no progress for %d ms)",
                     c->cfg.timeout_ms);
            return -ETIMEDOUT;
        }
        if (err) {
            NODE_ERR(c, i, "cannot send %s expert %d (%s): %s", t->name, e, kind_names[kind],
                     wire_strerror(err));
            return err;
        }
        n->st.shard_bytes += len;
        pg->done += len;
        pg->node_left -= len;
        progress_show(pg, false);
        if (pg->node_left == 0 && c->cfg.test_stall_ms > 0) usleep(c->cfg.test_stall_ms * 1000u);
        if ((err = drain_node(c, i))) return err;
        if (wire_now() - pg->drained >= DRAIN_ALL_S) {
            pg->drained = wire_now();
            if ((err = drain_all(c))) return err;
        }
    }
    return 0;
}

/* Every slice of pair (l, e) for node i: the three weights, then gpt-oss's three bias rows. */
static int send_pair(coord_cluster_t *c, int i, int l, int e, progress_t *pg)
{
    const model_layer_t *ly = &c->m->layers[l];
    int err = send_slice(c, i, l, e, WIRE_SHARD_GATE, ly->gate_exps, pg);
    if (!err) err = send_slice(c, i, l, e, WIRE_SHARD_UP, ly->up_exps, pg);
    if (!err) err = send_slice(c, i, l, e, WIRE_SHARD_DOWN, ly->down_exps, pg);
    if (!err && ly->gate_exps_b) {
        err = send_slice(c, i, l, e, WIRE_SHARD_GATE_BIAS, ly->gate_exps_b, pg);
        if (!err) err = send_slice(c, i, l, e, WIRE_SHARD_UP_BIAS, ly->up_exps_b, pg);
        if (!err) err = send_slice(c, i, l, e, WIRE_SHARD_DOWN_BIAS, ly->down_exps_b, pg);
    }
    return err;
}

/* Step 5: READY from every node, with as many experts as it was assigned. Some may have come
 * already (drain_node kept them); the others are awaited together, every socket read on each
 * wake-up, with at most timeout_ms between one READY and the next. */
static int wait_ready(coord_cluster_t *c)
{
    zmq_pollitem_t *it = xmalloc(sizeof(*it) * c->n_nodes);
    int *who = xmalloc(sizeof(int) * c->n_nodes);
    double deadline = wire_now() + c->cfg.timeout_ms / 1e3;
    int err = drain_all(c);
    while (!err) {
        int np = 0;
        for (int i = 0; i < c->n_nodes; i++)
            if (c->nodes[i].ready < 0)
                it[np] = (zmq_pollitem_t){c->nodes[i].sock, 0, ZMQ_POLLIN, 0}, who[np++] = i;
        if (np == 0) break;
        int left = coord__ms_left(deadline);
        int rc = left ? zmq_poll(it, np, left) : 0;
        if (rc < 0 && zmq_errno() == EINTR) continue;
        if (rc < 0) {
            err = -zmq_errno();
            LOG_ERR("zmq_poll: %s", zmq_strerror(-err));
            break;
        }
        if (rc == 0 && coord__ms_left(deadline) == 0) {
            for (int j = 0; j < np; j++)
                NODE_ERR(c, who[j], "not READY within %d ms of its last shard",
                         c->cfg.timeout_ms);
            err = -ETIMEDOUT;
            break;
        }
        err = drain_all(c);
        for (int j = 0; j < np; j++)
            if (c->nodes[who[j]].ready >= 0) deadline = wire_now() + c->cfg.timeout_ms / 1e3;
    }
    for (int i = 0; i < c->n_nodes && !err; i++)
        if (c->nodes[i].ready != c->nodes[i].st.experts) {
            NODE_ERR(c, i, "READY with %lld experts, assigned %d", (long long)c->nodes[i].ready,
                     c->nodes[i].st.experts);
            err = -EPROTO;
        }
    free(it);
    free(who);
    return err;
}

/* Bytes of shard data node i needs: its pairs that have (n_nodes, pairs) does not mark. */
static uint64_t to_stream(const coord_cluster_t *c, const uint8_t *have, int i)
{
    const size_t pairs = (size_t)c->n_layers * c->n_expert;
    uint64_t bytes = 0;
    for (size_t p = 0; p < pairs; p++)
        if (holds(c, p, i) && !have[(size_t)i * pairs + p]) {
            const model_layer_t *ly = &c->m->layers[p / c->n_expert];
            bytes += model_expert_stride(ly->gate_exps) + model_expert_stride(ly->up_exps) +
                     model_expert_stride(ly->down_exps);
            if (ly->gate_exps_b) /* gpt-oss's bias rows */
                bytes += sizeof(float) * (2 * (uint64_t)ly->gate_exps_b->ne[0] +
                                          (uint64_t)ly->down_exps_b->ne[0]);
        }
    return bytes;
}

static int start(coord_cluster_t *c)
{
    const model_t *m = c->m;
    const char *fp = c->fp;
    model_fingerprint(m->gguf, c->fp, sizeof(c->fp));
    const size_t pairs = (size_t)c->n_layers * c->n_expert;
    uint8_t *have = xcalloc((size_t)c->n_nodes * pairs + 1, 1);
    int err = hello_all(c, fp, have);
    if (!err) err = place(c);
    for (int i = 0; i < c->n_nodes && !err; i++) err = assign(c, i);

    progress_t pg = {.on = c->cfg.progress && isatty(STDERR_FILENO)};
    for (int i = 0; i < c->n_nodes && !err; i++) pg.total += to_stream(c, have, i);
    pg.drained = wire_now();
    for (int i = 0; i < c->n_nodes && !err; i++) {
        pg.node_left = to_stream(c, have, i);
        for (size_t p = 0; p < pairs && !err; p++) {
            if (!holds(c, p, i) || have[(size_t)i * pairs + p]) continue;
            int l = (int)(p / c->n_expert), e = (int)(p % c->n_expert);
            err = send_pair(c, i, l, e, &pg);
        }
    }
    if (pg.total && pg.on) progress_show(&pg, true);
    if (!err) err = wait_ready(c);
    if (!err)
        for (int i = 0; i < c->n_nodes; i++)
            LOG_INFO("expert node %d (%s) ready: %d experts, %.2f MiB streamed", i,
                     c->nodes[i].endpoint, c->nodes[i].st.experts,
                     c->nodes[i].st.shard_bytes / 1048576.0);
    free(have);
    if (!err) {
        c->started = true;
        for (int i = 0; i < c->n_nodes; i++) c->nodes[i].last_heard = wire_now();
    }
    return err;
}

coord_cluster_t *coord_cluster_new(const coord_cluster_config_t *cfg, const model_t *m)
{
    if (cfg->n_nodes < 1 || cfg->n_nodes > 4096 || m->hp.n_expert < 1 ||
        (unsigned)cfg->wire_type >= WIRE_DTYPE_COUNT || cfg->wire_type == WIRE_DTYPE_BYTES ||
        cfg->connect_ms < 1 || cfg->timeout_ms < 1) {
        LOG_ERR("bad cluster configuration (%d nodes, model with %d experts, wire type %s)",
                cfg->n_nodes, m->hp.n_expert, wire_dtype_name(cfg->wire_type));
        return NULL;
    }
    if (cfg->replicas < 1 || cfg->replicas > cfg->n_nodes) {
        LOG_ERR("%d replicas of every expert on %d expert node(s): each copy needs its own node, "
                "so replicas must be 1..%d", cfg->replicas, cfg->n_nodes, cfg->n_nodes);
        return NULL;
    }
    if (wire_dtype_row_bytes(cfg->wire_type, (uint64_t)m->hp.n_embd) == 0) {
        LOG_ERR("wire type %s cannot carry rows of %d (q8_0 needs a multiple of 32)",
                wire_dtype_name(cfg->wire_type), m->hp.n_embd);
        return NULL;
    }
    coord_cluster_t *c = xcalloc(1, sizeof(*c));
    c->cfg = *cfg;
    c->cfg.endpoints = NULL;
    c->cfg.name = NULL;
    c->cfg.curve_dir = NULL;
    c->m = m;
    c->lim = wire_limits_default();
    c->n_nodes = cfg->n_nodes;
    c->n_layers = m->hp.n_layer;
    c->n_expert = m->hp.n_expert;
    c->next_request = 1;
    c->rejoining = -1;
    c->replicas = cfg->replicas;
    const size_t pairs = (size_t)c->n_layers * c->n_expert;
    c->owner = xmalloc(sizeof(int) * (pairs + 1));
    for (size_t p = 0; p < pairs; p++) c->owner[p] = -1;
    c->owners = xmalloc(sizeof(int) * (pairs * (size_t)c->replicas + 1));
    for (size_t p = 0; p < pairs * (size_t)c->replicas; p++) c->owners[p] = -1;
    CHECK(pthread_mutex_init(&c->st_mu, NULL) == 0);
    c->nodes = xcalloc((size_t)c->n_nodes, sizeof(coord__node_t));
    for (int i = 0; i < c->n_nodes; i++) {
        c->nodes[i].endpoint = xstrdup(cfg->endpoints[i]);
        c->nodes[i].st.endpoint = c->nodes[i].endpoint;
        c->nodes[i].st.name = c->nodes[i].name;
        c->nodes[i].ready = -1;
    }
    c->ctx = zmq_ctx_new();
    if (!c->ctx) {
        LOG_ERR("zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    wire_keypair_t me, node;
    bool curve = cfg->curve_dir != NULL;
    if (curve && load_keys(cfg->curve_dir, &me, &node) != 0) goto fail;
    int err = 0;
    for (int i = 0; i < c->n_nodes && !err; i++)
        err = open_node(c, i, curve ? &me : NULL, curve ? node.public_z85 : NULL);
    if (curve) wire_keypair_wipe(&me);
    if (err) goto fail;
    /* The names and the curve setting outlive cfg's strings only as flags. */
    c->cfg.name = "coord";
    c->cfg.curve_dir = curve ? "" : NULL;
    if (start(c) != 0) goto fail;
    c->replace = coord__replace_new(c);
    return c;
fail:
    coord_cluster_free(c);
    return NULL;
}

void coord_cluster_free(coord_cluster_t *c)
{
    if (!c) return;
    for (int i = 0; i < c->n_nodes; i++) {
        wire_sock_close(c->nodes[i].sock);
        free(c->nodes[i].endpoint);
    }
    if (c->ctx) zmq_ctx_term(c->ctx);
    coord__replace_free(c->replace);
    free(c->nodes);
    free(c->owner);
    free(c->owners);
    pthread_mutex_destroy(&c->st_mu);
    free(c);
}

int coord_cluster_n_nodes(const coord_cluster_t *c)
{
    return c->n_nodes;
}

int coord_cluster_owner(const coord_cluster_t *c, int layer, int expert)
{
    if (layer < 0 || layer >= c->n_layers || expert < 0 || expert >= c->n_expert) return -1;
    return c->owner[(size_t)layer * c->n_expert + expert];
}

int coord_cluster_replicas(const coord_cluster_t *c)
{
    return c->replicas;
}

const int *coord_cluster_owners(const coord_cluster_t *c, int layer, int expert)
{
    if (layer < 0 || layer >= c->n_layers || expert < 0 || expert >= c->n_expert) return NULL;
    const int *o = c->owners + ((size_t)layer * c->n_expert + expert) * (size_t)c->replicas;
    return o[0] < 0 ? NULL : o;
}

void coord_cluster_node_stats(const coord_cluster_t *c, int node, coord_node_stats_t *out)
{
    CHECK(node >= 0 && node < c->n_nodes);
    /* The mutex is not part of the observable state: locking it does not change c. */
    pthread_mutex_t *mu = (pthread_mutex_t *)&c->st_mu;
    pthread_mutex_lock(mu);
    *out = c->nodes[node].st;
    pthread_mutex_unlock(mu);
}

int coord_cluster_snapshot(const coord_cluster_t *c, coord_node_stats_t *out, int cap)
{
    pthread_mutex_t *mu = (pthread_mutex_t *)&c->st_mu;
    pthread_mutex_lock(mu);
    for (int i = 0; i < c->n_nodes && i < cap; i++) out[i] = c->nodes[i].st;
    pthread_mutex_unlock(mu);
    return c->n_nodes;
}

void coord__node_sent(coord_cluster_t *c, int node, int n_tok, uint64_t bytes)
{
    coord_node_stats_t *st = &c->nodes[node].st;
    pthread_mutex_lock(&c->st_mu);
    st->requests++;
    st->tokens += (uint64_t)n_tok;
    st->bytes_sent += bytes;
    pthread_mutex_unlock(&c->st_mu);
}

void coord__node_result(coord_cluster_t *c, int node, double rtt, uint64_t bytes)
{
    coord_node_stats_t *st = &c->nodes[node].st;
    int b = 0;
    while (b < COORD_RTT_BUCKETS && rtt > coord_rtt_bounds[b]) b++;
    pthread_mutex_lock(&c->st_mu);
    st->results++;
    st->rtt_sum_s += rtt;
    if (rtt > st->rtt_max_s) st->rtt_max_s = rtt;
    if (b < COORD_RTT_BUCKETS) st->rtt_bucket[b]++;
    st->bytes_recv += bytes;
    st->down = false; /* it answered: healthy again */
    st->failure[0] = 0;
    pthread_mutex_unlock(&c->st_mu);
    c->nodes[node].last_heard = wire_now();
}

void coord__node_stale(coord_cluster_t *c, int node)
{
    pthread_mutex_lock(&c->st_mu);
    c->nodes[node].st.stale++;
    pthread_mutex_unlock(&c->st_mu);
}

void coord__node_failed(coord_cluster_t *c, int node, const char *fmt, ...)
{
    coord_node_stats_t *st = &c->nodes[node].st;
    char why[sizeof(st->failure)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&c->st_mu);
    st->errors++;
    st->down = true;
    memcpy(st->failure, why, sizeof(why));
    pthread_mutex_unlock(&c->st_mu);
}

void coord_cluster_print_summary(const coord_cluster_t *c, FILE *f, int64_t n_tokens)
{
    uint64_t sent = 0, recv = 0;
    fprintf(f, "expert nodes (%s on the wire):\n", wire_dtype_name(c->cfg.wire_type));
    for (int i = 0; i < c->n_nodes; i++) {
        const coord_node_stats_t *s = &c->nodes[i].st;
        char which[256];
        int w = 0;
        /* Which experts: one "L<layer>:e,e,e" group per layer, cut short when long; with
         * replicas, '*' marks the ones this node is primary for (the ones it serves). */
        which[0] = 0;
        for (int l = 0; l < c->n_layers && w < (int)sizeof(which) - 16; l++) {
            const char *sep = w ? " " : "";
            for (int e = 0; e < c->n_expert && w < (int)sizeof(which) - 16; e++) {
                const size_t p = (size_t)l * c->n_expert + e;
                if (!holds(c, p, i)) continue;
                const char *star = c->replicas > 1 && c->owner[p] == i ? "*" : "";
                if (sep)
                    w += snprintf(which + w, sizeof(which) - w, "%sL%d:%d%s", sep, l, e, star);
                else
                    w += snprintf(which + w, sizeof(which) - w, ",%d%s", e, star);
                sep = NULL;
            }
        }
        if (w >= (int)sizeof(which) - 16) snprintf(which + w, sizeof(which) - w, " ...");
        fprintf(f,
                "  node %d %s (%s): %d experts [%s]\n"
                "    %llu requests, %llu tokens, RTT mean %.3f ms max %.3f ms, "
                "sent %.1f KiB, received %.1f KiB, shards %.1f KiB\n",
                i, s->endpoint, s->name, s->experts, which, (unsigned long long)s->requests,
                (unsigned long long)s->tokens,
                s->requests ? s->rtt_sum_s / s->requests * 1e3 : 0.0, s->rtt_max_s * 1e3,
                s->bytes_sent / 1024.0, s->bytes_recv / 1024.0, s->shard_bytes / 1024.0);
        sent += s->bytes_sent, recv += s->bytes_recv;
    }
    if (n_tokens > 0)
        fprintf(f, "  wire: %.1f KiB sent, %.1f KiB received, %.0f bytes per token\n",
                sent / 1024.0, recv / 1024.0, (double)(sent + recv) / n_tokens);
}

/* ---------------------------------------------------------------- after start-up */

#define PROBE_S 1.0 /* a down node is sent HELLO at most this often */

static void node_set_up(coord_cluster_t *c, int i)
{
    pthread_mutex_lock(&c->st_mu);
    c->nodes[i].st.down = false;
    c->nodes[i].st.failure[0] = 0;
    pthread_mutex_unlock(&c->st_mu);
    c->nodes[i].last_heard = wire_now();
}

bool coord_cluster_node_down(const coord_cluster_t *c, int node)
{
    CHECK(node >= 0 && node < c->n_nodes);
    pthread_mutex_t *mu = (pthread_mutex_t *)&c->st_mu;
    pthread_mutex_lock(mu);
    bool down = c->nodes[node].st.down;
    pthread_mutex_unlock(mu);
    return down;
}

/* Steps 3-5 again for node i alone, whose WELCOME h just came: ASSIGN of the pairs the plan
 * gives it, SHARD_CHUNKs for those it does not hold of this file, READY. Returns 0 or an
 * error (logged). */
static int rejoin(coord_cluster_t *c, int i, const wire_hello_t *h)
{
    coord__node_t *n = &c->nodes[i];
    const size_t pairs = (size_t)c->n_layers * c->n_expert;
    uint8_t *have = xcalloc((size_t)c->n_nodes * pairs + 1, 1);
    bool same = mark_held(c, i, h, c->fp, have);
    LOG_INFO("expert node %d (%s) answers again: '%s', holds %u pairs%s; re-assigning", i,
             n->endpoint, h->name, h->n_pairs,
             h->n_pairs ? (same ? " of this model" : " of another model") : "");
    c->rejoining = i;
    n->ready = -1;
    int err = assign(c, i);
    progress_t pg = {.drained = wire_now(), .node_left = to_stream(c, have, i)};
    uint64_t streamed = pg.node_left;
    for (size_t p = 0; p < pairs && !err; p++) {
        if (!holds(c, p, i) || have[(size_t)i * pairs + p]) continue;
        int l = (int)(p / c->n_expert), e = (int)(p % c->n_expert);
        err = send_pair(c, i, l, e, &pg);
    }
    if (!err) err = wait_ready(c);
    c->rejoining = -1;
    n->ready = n->st.experts; /* what wait_ready expects of a node that is not rejoining */
    free(have);
    if (err) return err;
    snprintf(n->name, sizeof(n->name), "%s", h->name);
    node_set_up(c, i);
    LOG_INFO("expert node %d (%s) is back: %d experts, %.2f MiB streamed", i, n->endpoint,
             n->st.experts, streamed / 1048576.0);
    return 0;
}

/* Sends a down node a HELLO without waiting: with ZMQ_IMMEDIATE it only leaves when a
 * connection is up, which is exactly the probe wanted. */
static void probe(coord_cluster_t *c, int i)
{
    coord__node_t *n = &c->nodes[i];
    n->probe_at = wire_now();
    wire_msg_t m;
    wire_msg_init(&m, WIRE_KIND_HELLO);
    m.u.hello = our_hello(c);
    if (coord__node_set_sndtimeo(n, 0) == 0) wire_msg_send(n->sock, &m);
    else wire_msg_deinit(&m);
}

void coord_cluster_tend(coord_cluster_t *c)
{
    /* Reading the sockets now would take in-flight answers away from remote.c (and rejoining
     * reads every socket), so liveness waits for the next moment with nothing out. */
    if (c->busy > 0) return;
    for (int i = 0; i < c->n_nodes; i++) {
        coord__node_t *n = &c->nodes[i];
        bool down = coord_cluster_node_down(c, i);
        /* Bounded per call, like the idle drain it replaces: the socket is non-blocking. */
        for (int k = 0; k < 256; k++) {
            wire_msg_t m;
            int err = wire_msg_recv(n->sock, &c->lim, &m);
            if (err == -EAGAIN) break;
            if (err) {
                LOG_WARN("expert node %d (%s): malformed message: %s", i, n->endpoint,
                         wire_strerror(err));
                continue;
            }
            if (m.kind == WIRE_KIND_HEARTBEAT) {
                n->last_heard = wire_now();
            } else if (m.kind == WIRE_KIND_WELCOME && down) {
                if (rejoin(c, i, &m.u.hello) == 0) down = false;
            } else if (coord__replace_take(c, i, &m)) {
                /* a re-placement's READY or refusal */
            } else if (m.kind == WIRE_KIND_RESULT || m.kind == WIRE_KIND_ERROR) {
                coord__node_stale(c, i);
                LOG_WARN("expert node %d (%s): dropping late %s", i, n->endpoint,
                         wire_kind_name(m.kind));
            }
            wire_msg_deinit(&m);
        }
        double now = wire_now();
        if (!down && c->cfg.heartbeat_ms > 0 && now - n->last_heard > c->cfg.heartbeat_ms / 1e3) {
            LOG_ERR("expert node %d (%s): nothing heard for %.1f s; marking it down", i,
                    n->endpoint, now - n->last_heard);
            coord__node_failed(c, i, "no heartbeat for %.1f s", now - n->last_heard);
            down = true;
        }
        if (down && now - n->probe_at >= PROBE_S) probe(c, i);
    }
    coord__replace_step(c, false);
}

/* True when pair p (layer * n_expert + expert) has copies and all of them are on nodes marked
 * down. Caller holds st_mu. */
static bool all_down(const coord_cluster_t *c, size_t p)
{
    const int *o = c->owners + p * (size_t)c->replicas;
    if (o[0] < 0) return false;
    for (int r = 0; r < c->replicas; r++) /* -1: a slot the load-aware plan left empty */
        if (o[r] >= 0 && !c->nodes[o[r]].st.down) return false;
    return true;
}

int coord_cluster_missing(const coord_cluster_t *c, char *buf, size_t cap)
{
    pthread_mutex_t *mu = (pthread_mutex_t *)&c->st_mu;
    size_t w = 0;
    int missing = 0;
    buf[0] = 0;
#define PUT(...)                                                                                   \
    do {                                                                                           \
        if (w < cap) {                                                                             \
            int k_ = snprintf(buf + w, cap - w, __VA_ARGS__);                                      \
            w = k_ < 0 ? cap : w + (size_t)k_;                                                     \
        }                                                                                          \
    } while (0)
    pthread_mutex_lock(mu);
    for (int i = 0; i < c->n_nodes; i++)
        if (c->nodes[i].st.down)
            PUT("%sexpert node %d (%s) down: %s", w ? "; " : "", i, c->nodes[i].endpoint,
                c->nodes[i].st.failure);
    /* Calls go to the first live copy (remote.c), so a pair is missing only when every copy
     * is down. */
    for (int l = 0; l < c->n_layers; l++) {
        bool first = true;
        for (int e = 0; e < c->n_expert; e++) {
            if (!all_down(c, (size_t)l * c->n_expert + e)) continue;
            missing++;
            if (first) PUT("%slayer %d experts %d", w ? "; " : "", l, e);
            else PUT(",%d", e);
            first = false;
        }
    }
    pthread_mutex_unlock(mu);
#undef PUT
    if (w >= cap && cap > 4) memcpy(buf + cap - 4, "...", 4);
    return missing;
}

/* ---- the guard: remote experts that check the cluster first ---- */

typedef struct {
    coord_experts_t base;
    coord_cluster_t *c;
    coord_experts_t *inner; /* owned */
    double warned;          /* wire_now() of the last "experts unavailable" log line */
} guard_t;

/* 0 when every pair the call routes to has a copy on a node that is up, else -EHOSTUNREACH
 * (logged at most once a second). */
static int guard_check(guard_t *g, int layer, int n_tok, int k, const int32_t *ids)
{
    coord_cluster_t *c = g->c;
    coord_cluster_tend(c); /* a no-op while requests are out (pipelined micro-batches) */
    bool any_down = false;
    for (int o = 0; o < c->n_nodes && !any_down; o++) any_down = coord_cluster_node_down(c, o);
    for (int i = 0; any_down && i < n_tok * k; i++) {
        if (ids[i] < 0 || ids[i] >= c->n_expert || !coord_cluster_owners(c, layer, ids[i]))
            continue;
        pthread_mutex_lock(&c->st_mu);
        bool gone = all_down(c, (size_t)layer * c->n_expert + ids[i]);
        pthread_mutex_unlock(&c->st_mu);
        if (!gone) continue;
        if (wire_now() - g->warned > 1.0) { /* one line a second, not one per request */
            g->warned = wire_now();
            char why[512];
            coord_cluster_missing(c, why, sizeof(why));
            LOG_ERR("every copy of layer %d expert %d is on a node that is down; failing the "
                    "call (%s)", layer, ids[i], why);
        }
        return -EHOSTUNREACH;
    }
    g->inner->trace = g->base.trace; /* the engine sets the trace on the guard it holds */
    return 0;
}

static int guard_compute(coord_experts_t *ex, int layer, int n_tok, int k, const float *x,
                         const int32_t *ids, const float *w, float *out)
{
    guard_t *g = (guard_t *)ex;
    int err = guard_check(g, layer, n_tok, k, ids);
    return err ? err : g->inner->vt->compute(g->inner, layer, n_tok, k, x, ids, w, out);
}

/* The pipelined path goes through the same check, then straight to the inner experts, so a
 * guarded cluster keeps its micro-batch overlap. */
static int guard_submit(coord_experts_t *ex, int layer, int mb, int n_tok, int k, const float *x,
                        const int32_t *ids, const float *w, float *out)
{
    guard_t *g = (guard_t *)ex;
    int err = guard_check(g, layer, n_tok, k, ids);
    return err ? err : coord_experts_submit(g->inner, layer, mb, n_tok, k, x, ids, w, out);
}

static int guard_collect(coord_experts_t *ex, int mb)
{
    return coord_experts_collect(((guard_t *)ex)->inner, mb);
}

static void guard_stats(const coord_experts_t *ex, coord_experts_stats_t *out)
{
    coord_experts_stats(((const guard_t *)ex)->inner, out);
}

static void guard_idle(coord_experts_t *ex)
{
    guard_t *g = (guard_t *)ex;
    coord_cluster_tend(g->c);
    coord__replace_step(g->c, true); /* nothing else to do: a move may go faster */
    if (g->inner->vt->idle) g->inner->vt->idle(g->inner);
}

static void guard_free(coord_experts_t *ex)
{
    guard_t *g = (guard_t *)ex;
    coord_experts_free(g->inner);
    free(g);
}

static const coord_experts_vt_t guard_vt = {
    .compute = guard_compute,
    .free = guard_free,
    .idle = guard_idle,
    .submit = guard_submit,
    .collect = guard_collect,
    .stats = guard_stats,
};

coord_experts_t *coord_cluster_guard_new(coord_cluster_t *c, coord_experts_t *inner)
{
    CHECK(c && inner);
    guard_t *g = xcalloc(1, sizeof(*g));
    g->base.vt = &guard_vt;
    g->c = c;
    g->inner = inner;
    return &g->base;
}
