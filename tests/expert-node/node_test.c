/* Tests for the expert node, driven the way a coordinator drives it: a raw DEALER speaking the
 * wire protocol (wire_msg_send/recv) to a node on a tcp://127.0.0.1 ephemeral port. The node
 * runs in-process (xnode_new + xnode_run on a thread) or as the moemesh-expert program beside
 * this test binary. Weights come from the golden qwen3moe-tiny-f32.gguf; every RESULT is
 * compared with kern_moe_ffn run here on the same slices.
 *
 * Every receive is bounded (ZMQ_RCVTIMEO); node processes get PR_SET_PDEATHSIG and are killed
 * and reaped in the suite's fini, so nothing outlives a failed test.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "expert-node/xnode.h"
#include "kernels/kern.h"
#include "model/model.h"
#include "wire/wire.h"

#define MODEL_PATH "../shared/golden/qwen3moe-tiny-f32.gguf"
#define TIMEOUT_MS 5000

/* ---------------------------------------------------------------- the node under test */

typedef struct {
    xnode_t *xn;
    pthread_t thread;
    int rc;
} inproc_t;

static void *run_thread(void *arg)
{
    inproc_t *n = arg;
    n->rc = xnode_run(n->xn);
    return NULL;
}

static void inproc_start(inproc_t *n, const xnode_config_t *cfg)
{
    n->xn = xnode_new(cfg);
    cr_assert_not_null(n->xn);
    cr_assert_eq(pthread_create(&n->thread, NULL, run_thread, n), 0);
}

static void inproc_stop(inproc_t *n)
{
    xnode_stop(n->xn);
    cr_assert_eq(pthread_join(n->thread, NULL), 0);
    cr_assert_eq(n->rc, 0);
    xnode_free(n->xn);
}

static xnode_config_t local_cfg(void)
{
    xnode_config_t cfg = xnode_config_default();
    cfg.listen = "tcp://127.0.0.1:*";
    cfg.name = "test-node";
    return cfg;
}

/* ---- as a process */

static pid_t child = -1;
static int child_out = -1;

static void kill_child(void)
{
    if (child > 0) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        child = -1;
    }
    if (child_out >= 0) close(child_out);
    child_out = -1;
}

static void expert_path(char *out, size_t cap)
{
    char self[PATH_MAX - 64];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    cr_assert(n > 0);
    self[n] = 0;
    *strrchr(self, '/') = 0; /* .../tests */
    *strrchr(self, '/') = 0; /* build or build/san */
    snprintf(out, cap, "%s/bin/moemesh-expert", self);
    cr_assert_eq(access(out, X_OK), 0, "%s is missing: run make first", out);
}

/* Runs moemesh-expert with args (NULL-terminated after the program name); returns its endpoint
 * from the one stdout line. */
static void spawn_node(const char *const *args, char *endpoint, size_t cap)
{
    char prog[PATH_MAX];
    expert_path(prog, sizeof(prog));
    const char *argv[32] = {prog};
    int n = 1;
    while (args[n - 1] && n < 31) argv[n] = args[n - 1], n++;
    argv[n] = NULL;
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t parent = getpid();
    child = fork();
    cr_assert(child >= 0);
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execv(prog, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    child_out = fds[0];
    char line[120];
    size_t got = 0;
    while (got < sizeof(line) - 1) {
        struct pollfd p = {child_out, POLLIN, 0};
        cr_assert_gt(poll(&p, 1, 10000), 0, "node printed nothing in 10 s");
        ssize_t r = read(child_out, line + got, 1);
        cr_assert_eq(r, 1, "node exited before listening");
        if (line[got] == '\n') break;
        got++;
    }
    line[got] = 0;
    cr_assert(!strncmp(line, "listening on ", 13), "first line: %s", line);
    snprintf(endpoint, cap, "%s", line + 13);
}

/* SIGTERM, then the exit status within 5 s. */
static int stop_child(void)
{
    kill(child, SIGTERM);
    int status = -1;
    for (int i = 0; i < 500; i++) {
        pid_t r = waitpid(child, &status, WNOHANG);
        if (r == child) {
            child = -1;
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        usleep(10000);
    }
    cr_assert_fail("node did not stop within 5 s of SIGTERM");
    return -1;
}

TestSuite(xnode, .fini = kill_child, .timeout = 60);

/* ---------------------------------------------------------------- the coordinator side */

typedef struct {
    void *ctx, *sock;
} client_t;

static void client_open(client_t *c, const char *endpoint, const wire_keypair_t *kp,
                        const char *server_pub)
{
    c->ctx = zmq_ctx_new();
    c->sock = wire_sock_coord_new(c->ctx, NULL);
    cr_assert_not_null(c->sock);
    int ms = TIMEOUT_MS;
    zmq_setsockopt(c->sock, ZMQ_RCVTIMEO, &ms, sizeof(ms));
    zmq_setsockopt(c->sock, ZMQ_SNDTIMEO, &ms, sizeof(ms));
    if (kp) cr_assert_eq(wire_curve_client_setup(c->sock, kp, server_pub), 0);
    cr_assert_eq(zmq_connect(c->sock, endpoint), 0);
}

static void client_close(client_t *c)
{
    wire_sock_close(c->sock);
    zmq_ctx_term(c->ctx);
}

static void send_ok(client_t *c, wire_msg_t *m)
{
    int rc = wire_msg_send(c->sock, m);
    cr_assert_eq(rc, 0, "send: %s", wire_strerror(rc));
}

/* The next message that is not a HEARTBEAT; rc of wire_msg_recv. */
static int recv_msg(client_t *c, wire_msg_t *m)
{
    for (;;) {
        int rc = wire_msg_recv(c->sock, NULL, m);
        if (rc || m->kind != WIRE_KIND_HEARTBEAT) return rc;
        wire_msg_deinit(m);
    }
}

static void expect_kind(client_t *c, wire_msg_t *m, wire_kind_t kind)
{
    int rc = recv_msg(c, m);
    cr_assert_eq(rc, 0, "recv: %s", wire_strerror(rc));
    cr_assert_eq(m->kind, kind, "got %s (%s: %s), want %s", wire_kind_name(m->kind),
                 m->kind == WIRE_KIND_ERROR ? wire_strerror(m->u.error.code) : "",
                 m->kind == WIRE_KIND_ERROR ? m->u.error.message : "", wire_kind_name(kind));
}

/* Expects ERROR code (and request id) next. */
static void expect_error(client_t *c, int code, uint64_t request_id)
{
    wire_msg_t m;
    expect_kind(c, &m, WIRE_KIND_ERROR);
    cr_assert_eq(m.u.error.code, code, "got %s (%s), want %s", wire_strerror(m.u.error.code),
                 m.u.error.message, wire_strerror(code));
    cr_assert_eq(m.u.error.request_id, request_id);
    cr_assert(m.u.error.message && m.u.error.message[0]);
    wire_msg_deinit(&m);
}

static void hello(client_t *c, wire_msg_t *welcome)
{
    wire_msg_t m;
    wire_msg_init(&m, WIRE_KIND_HELLO);
    m.u.hello = (wire_hello_t){"test-coord", 2, 1u << 30, 1u << WIRE_DTYPE_F32, 0, NULL, NULL,
                               "", 0};
    send_ok(c, &m);
    expect_kind(c, welcome, WIRE_KIND_WELCOME);
}

/* ---------------------------------------------------------------- model and shard */

typedef struct {
    model_t *m;
    char fp[64];
    int n_pairs;
    uint32_t layer[64], expert[64]; /* the pairs the test assigns */
    uint64_t bytes;
} fixture_t;

static const model_tensor_t *slice_tensor(const model_t *m, uint32_t l, int kind)
{
    const model_layer_t *ly = &m->layers[l];
    return kind == WIRE_SHARD_GATE ? ly->gate_exps : kind == WIRE_SHARD_UP ? ly->up_exps
                                                                           : ly->down_exps;
}

static const uint8_t *slice(const model_t *m, uint32_t l, uint32_t e, int kind, size_t *bytes)
{
    const model_tensor_t *t = slice_tensor(m, l, kind);
    *bytes = model_expert_stride(t);
    return (const uint8_t *)t->data + *bytes * e;
}

/* Loads the model; assigns the odd experts of every layer. */
static void fixture_init(fixture_t *f)
{
    memset(f, 0, sizeof(*f));
    cr_assert_eq(model_load(MODEL_PATH, &f->m), 0);
    model_fingerprint(f->m->gguf, f->fp, sizeof(f->fp));
    for (int l = 0; l < f->m->hp.n_layer; l++)
        for (int e = 1; e < f->m->hp.n_expert; e += 2) {
            f->layer[f->n_pairs] = (uint32_t)l;
            f->expert[f->n_pairs] = (uint32_t)e;
            for (int k = 0; k < 3; k++) {
                size_t b;
                slice(f->m, (uint32_t)l, (uint32_t)e, k, &b);
                f->bytes += b;
            }
            f->n_pairs++;
        }
}

static void fixture_deinit(fixture_t *f) { model_free(f->m); }

static void send_assign(client_t *c, const fixture_t *f, const char *fp)
{
    wire_msg_t m;
    wire_msg_init(&m, WIRE_KIND_ASSIGN);
    const model_hparams_t *hp = &f->m->hp;
    m.u.assign = (wire_assign_t){fp,
                                 (uint32_t)hp->n_layer,
                                 (uint32_t)hp->n_expert,
                                 (uint32_t)f->n_pairs,
                                 f->layer,
                                 f->expert,
                                 (uint32_t)hp->n_embd,
                                 (uint32_t)hp->n_ff_exp,
                                 f->bytes, 0};
    send_ok(c, &m);
}

static void no_free(void *data, void *hint) { (void)data, (void)hint; }

/* Streams one slice in chunks of `chunk` bytes; crc_xor spoils the announced CRC. */
static void send_slice(client_t *c, const model_t *m, uint32_t l, uint32_t e, int kind,
                       size_t chunk, uint32_t crc_xor)
{
    size_t bytes;
    const uint8_t *p = slice(m, l, e, kind, &bytes);
    uint32_t crc = wire_crc32c(0, p, bytes) ^ crc_xor;
    const model_tensor_t *t = slice_tensor(m, l, kind);
    for (size_t off = 0; off < bytes; off += chunk) {
        size_t n = bytes - off < chunk ? bytes - off : chunk;
        wire_msg_t msg;
        wire_msg_init(&msg, WIRE_KIND_SHARD_CHUNK);
        msg.u.chunk = (wire_shard_chunk_t){t->name, l, e, (wire_shard_kind_t)kind,
                                           (uint32_t)t->type, off, bytes, crc};
        cr_assert_eq(wire_msg_add_tensor(&msg, WIRE_DTYPE_BYTES, 1, (uint32_t)n,
                                         (void *)(p + off), n, no_free, NULL),
                     0);
        send_ok(c, &msg);
    }
}

static void send_shard(client_t *c, const fixture_t *f, size_t chunk)
{
    for (int i = 0; i < f->n_pairs; i++)
        for (int k = 0; k < 3; k++) send_slice(c, f->m, f->layer[i], f->expert[i], k, chunk, 0);
}

static void expect_ready(client_t *c, const fixture_t *f)
{
    wire_msg_t m;
    expect_kind(c, &m, WIRE_KIND_READY);
    cr_assert_eq(m.u.ready.n_experts, (uint32_t)f->n_pairs);
    cr_assert_eq(m.u.ready.bytes, f->bytes);
    wire_msg_deinit(&m);
}

/* ---------------------------------------------------------------- FORWARD and reference */

enum { N_TOK = 7, MAX_K = 2 };

typedef struct {
    uint32_t layer;
    uint32_t n_sel[N_TOK];
    uint32_t expert[N_TOK * MAX_K];
    float gate[N_TOK * MAX_K];
    uint32_t n_total;
    float *x; /* (N_TOK, n_embd) */
} fwd_t;

/* Tokens of layer `layer` with one or two of the assigned experts each (token 3: none). */
static void fwd_make(fwd_t *w, const fixture_t *f, uint32_t layer, uint32_t seed)
{
    int n_embd = f->m->hp.n_embd;
    memset(w, 0, sizeof(*w));
    w->layer = layer;
    uint32_t s = seed * 2654435761u + 1;
    w->x = malloc(sizeof(float) * N_TOK * (size_t)n_embd);
    for (int i = 0; i < N_TOK * n_embd; i++) {
        s = s * 1664525u + 1013904223u;
        w->x[i] = ((float)(s >> 8) / (float)(1 << 24) - 0.5f) * 4.0f;
    }
    uint32_t odd[32], n_odd = 0;
    for (int i = 0; i < f->n_pairs; i++)
        if (f->layer[i] == layer) odd[n_odd++] = f->expert[i];
    for (uint32_t t = 0; t < N_TOK; t++) {
        w->n_sel[t] = t == 3 ? 0 : 1 + t % 2;
        for (uint32_t j = 0; j < w->n_sel[t]; j++) {
            w->expert[w->n_total] = odd[(t + 3 * j) % n_odd];
            w->gate[w->n_total] = 0.25f + 0.5f * (float)j + 0.01f * (float)t;
            w->n_total++;
        }
    }
}

static void send_forward(client_t *c, const fwd_t *w, const fixture_t *f, uint64_t id,
                         wire_dtype_t in_dt, wire_dtype_t out_dt)
{
    wire_msg_t m;
    wire_msg_init(&m, WIRE_KIND_FORWARD);
    m.u.forward = (wire_forward_t){id,      w->layer, 0,       N_TOK,  w->n_sel,
                                   w->n_total, w->expert, w->gate, out_dt};
    cr_assert_eq(wire_msg_add_act(&m, in_dt, w->x, N_TOK, (uint32_t)f->m->hp.n_embd), 0);
    send_ok(c, &m);
}

/* What the node must answer: kern_moe_ffn on the activations as the node decodes them, the
 * result encoded and decoded as the coordinator will. */
static void reference(const fwd_t *w, const fixture_t *f, wire_dtype_t in_dt, wire_dtype_t out_dt,
                      float *out)
{
    const model_hparams_t *hp = &f->m->hp;
    const int D = hp->n_embd, F = hp->n_ff_exp, E = hp->n_expert;
    size_t in_bytes = wire_dtype_row_bytes(in_dt, (uint64_t)D) * N_TOK;
    void *enc = xmalloc_aligned(64, in_bytes);
    float *x = xmalloc(sizeof(float) * N_TOK * (size_t)D);
    cr_assert_eq(wire_act_pack(in_dt, w->x, N_TOK, (uint32_t)D, enc, in_bytes), 0);
    cr_assert_eq(wire_act_unpack(in_dt, enc, in_bytes, N_TOK, (uint32_t)D, x), 0);

    kern_expert_t *ex = xcalloc((size_t)E, sizeof(*ex));
    for (int e = 0; e < E; e++) {
        size_t b;
        ex[e] = (kern_expert_t){
            slice_tensor(f->m, w->layer, 0)->type, slice_tensor(f->m, w->layer, 1)->type,
            slice_tensor(f->m, w->layer, 2)->type, slice(f->m, w->layer, (uint32_t)e, 0, &b),
            slice(f->m, w->layer, (uint32_t)e, 1, &b), slice(f->m, w->layer, (uint32_t)e, 2, &b)};
    }
    int32_t ids[N_TOK * MAX_K];
    float g[N_TOK * MAX_K];
    for (uint32_t t = 0, i = 0; t < N_TOK; t++)
        for (uint32_t j = 0; j < MAX_K; j++) {
            ids[t * MAX_K + j] = j < w->n_sel[t] ? (int32_t)w->expert[i] : -1;
            g[t * MAX_K + j] = j < w->n_sel[t] ? w->gate[i] : 0.0f;
            if (j < w->n_sel[t]) i++;
        }
    size_t ws = kern_moe_work_size(ex, D, F, N_TOK, MAX_K);
    void *work = xmalloc_aligned(64, ws);
    float *y = xmalloc(sizeof(float) * N_TOK * (size_t)D);
    kern_moe_ffn(NULL, ex, E, D, F, N_TOK, MAX_K, x, ids, g, y, work, ws);
    size_t out_bytes = wire_dtype_row_bytes(out_dt, (uint64_t)D) * N_TOK;
    void *enc2 = xmalloc_aligned(64, out_bytes);
    cr_assert_eq(wire_act_pack(out_dt, y, N_TOK, (uint32_t)D, enc2, out_bytes), 0);
    cr_assert_eq(wire_act_unpack(out_dt, enc2, out_bytes, N_TOK, (uint32_t)D, out), 0);
    free(enc);
    free(enc2);
    free(x);
    free(ex);
    free(work);
    free(y);
}

/* Sends one FORWARD and checks its RESULT equals the reference exactly; returns the largest
 * deviation from the all-f32 result relative to that result's largest magnitude. */
static double forward_check(client_t *c, const fixture_t *f, uint32_t layer, uint64_t id,
                            wire_dtype_t dt)
{
    const int D = f->m->hp.n_embd;
    fwd_t w;
    fwd_make(&w, f, layer, (uint32_t)id);
    send_forward(c, &w, f, id, dt, dt);
    float *want = xmalloc(sizeof(float) * N_TOK * (size_t)D);
    float *exact = xmalloc(sizeof(float) * N_TOK * (size_t)D);
    float *got = xmalloc(sizeof(float) * N_TOK * (size_t)D);
    reference(&w, f, dt, dt, want);
    reference(&w, f, WIRE_DTYPE_F32, WIRE_DTYPE_F32, exact);

    wire_msg_t m;
    expect_kind(c, &m, WIRE_KIND_RESULT);
    cr_assert_eq(m.u.result.request_id, id);
    cr_assert_eq(m.u.result.layer, layer);
    cr_assert_eq(m.u.result.n_tokens, N_TOK);
    cr_assert_eq(m.n_tensors, 1);
    cr_assert_eq(m.tensors[0].dtype, dt);
    cr_assert_eq(m.tensors[0].cols, (uint32_t)D);
    cr_assert_eq(wire_act_unpack(dt, m.tensors[0].data, m.tensors[0].bytes, N_TOK, (uint32_t)D,
                                 got),
                 0);
    wire_msg_deinit(&m);
    double maxabs = 0, maxdev = 0;
    for (int i = 0; i < N_TOK * D; i++) {
        cr_assert_eq(got[i], want[i], "%s: element %d: %.9g, want %.9g", wire_dtype_name(dt), i,
                     got[i], want[i]);
        maxabs = fmax(maxabs, fabs(exact[i]));
        maxdev = fmax(maxdev, fabs((double)got[i] - exact[i]));
    }
    for (int i = 3 * D; i < 4 * D; i++) cr_assert_eq(got[i], 0.0f, "token without experts");
    cr_assert_gt(maxabs, 0.0);
    free(want);
    free(exact);
    free(got);
    free(w.x);
    return maxdev / maxabs;
}

/* ---------------------------------------------------------------- tests */

Test(xnode, hello_is_welcomed_and_another_version_refused)
{
    xnode_config_t cfg = local_cfg();
    cfg.mem_limit = UINT64_C(3) << 30;
    cfg.threads = 2;
    inproc_t n;
    inproc_start(&n, &cfg);
    client_t c;
    client_open(&c, xnode_endpoint(n.xn), NULL, NULL);
    wire_msg_t m;
    hello(&c, &m);
    cr_assert_str_eq(m.u.hello.name, "test-node");
    cr_assert_eq(m.u.hello.cores, 2);
    cr_assert_eq(m.u.hello.mem_bytes, UINT64_C(3) << 30);
    cr_assert_eq(m.u.hello.dtypes, 0x1e, "f32, f16, bf16, q8_0");
    cr_assert_eq(m.u.hello.n_pairs, 0, "nothing held without -m or cache");
    cr_assert_str_eq(m.u.hello.model, "");
    wire_msg_deinit(&m);

    /* {version: 2, hello: {name: "x"}} */
    cr_assert_eq(zmq_send(c.sock, "\x08\x02\x52\x03\x0a\x01x", 7, 0), 7);
    expect_error(&c, WIRE_E_VERSION, 0);
    client_close(&c);
    xnode_counters_t k;
    xnode_counters(n.xn, &k);
    cr_assert_eq(k.malformed, 1);
    inproc_stop(&n);
}

Test(xnode, streamed_shard_is_ready_and_serves_every_wire_dtype)
{
    fixture_t f;
    fixture_init(&f);
    inproc_t n;
    xnode_config_t cfg = local_cfg();
    inproc_start(&n, &cfg);
    client_t c;
    client_open(&c, xnode_endpoint(n.xn), NULL, NULL);
    wire_msg_t m;
    hello(&c, &m);
    wire_msg_deinit(&m);
    send_assign(&c, &f, f.fp);
    send_shard(&c, &f, 1000); /* odd chunk size: slices arrive in several pieces */
    expect_ready(&c, &f);

    cr_assert_eq(forward_check(&c, &f, 0, 11, WIRE_DTYPE_F32), 0.0, "f32 is exact");
    /* Input and result both rounded: bf16 keeps 8 bits, q8_0 about 7, f16 11. */
    cr_assert_lt(forward_check(&c, &f, 1, 12, WIRE_DTYPE_F16), 2e-3);
    cr_assert_lt(forward_check(&c, &f, 2, 13, WIRE_DTYPE_BF16), 2e-2);
    cr_assert_lt(forward_check(&c, &f, 3, 14, WIRE_DTYPE_Q8_0), 4e-2);

    /* STATS counts what was done. */
    wire_msg_init(&m, WIRE_KIND_STATS);
    send_ok(&c, &m);
    expect_kind(&c, &m, WIRE_KIND_STATS);
    cr_assert_eq(m.u.stats.requests, 4);
    cr_assert_eq(m.u.stats.tokens, 4 * N_TOK);
    cr_assert_gt(m.u.stats.bytes_in, f.bytes);
    cr_assert_gt(m.u.stats.bytes_out, 0);
    wire_msg_deinit(&m);
    client_close(&c);
    inproc_stop(&n);
    fixture_deinit(&f);
}

Test(xnode, model_node_offers_every_pair_and_is_ready_without_chunks)
{
    fixture_t f;
    fixture_init(&f);
    inproc_t n;
    xnode_config_t cfg = local_cfg();
    cfg.model = MODEL_PATH;
    inproc_start(&n, &cfg);
    client_t c;
    client_open(&c, xnode_endpoint(n.xn), NULL, NULL);
    wire_msg_t m;
    hello(&c, &m);
    cr_assert_str_eq(m.u.hello.model, f.fp);
    cr_assert_eq(m.u.hello.n_pairs, (uint32_t)(f.m->hp.n_layer * f.m->hp.n_expert));
    wire_msg_deinit(&m);
    send_assign(&c, &f, f.fp);
    expect_ready(&c, &f);
    cr_assert_eq(forward_check(&c, &f, 2, 21, WIRE_DTYPE_F32), 0.0);
    xnode_counters_t k;
    xnode_counters(n.xn, &k);
    cr_assert_eq(k.chunks, 0);

    /* Another fingerprint: the model's pairs do not count, the shard must be streamed. */
    send_assign(&c, &f, "0badf00d-1");
    send_shard(&c, &f, 4u << 20);
    expect_ready(&c, &f);
    xnode_counters(n.xn, &k);
    cr_assert_eq(k.chunks, (uint64_t)f.n_pairs * 3);
    cr_assert_eq(forward_check(&c, &f, 1, 22, WIRE_DTYPE_F32), 0.0);
    client_close(&c);
    inproc_stop(&n);
    fixture_deinit(&f);
}

Test(xnode, bad_checksum_is_refused_and_a_resend_accepted)
{
    fixture_t f;
    fixture_init(&f);
    inproc_t n;
    xnode_config_t cfg = local_cfg();
    inproc_start(&n, &cfg);
    client_t c;
    client_open(&c, xnode_endpoint(n.xn), NULL, NULL);
    send_assign(&c, &f, f.fp);
    send_slice(&c, f.m, f.layer[0], f.expert[0], WIRE_SHARD_UP, 4096, 0x1);
    expect_error(&c, WIRE_E_CHECKSUM, 0);
    send_shard(&c, &f, 4096);
    expect_ready(&c, &f);
    cr_assert_eq(forward_check(&c, &f, 0, 31, WIRE_DTYPE_F32), 0.0);
    client_close(&c);
    inproc_stop(&n);
    fixture_deinit(&f);
}

/* Each hostile message gets its ERROR (with the request id when it got that far) and the node
 * answers the valid FORWARD that follows. */
Test(xnode, hostile_inputs_get_errors_and_the_node_keeps_serving)
{
    fixture_t f;
    fixture_init(&f);
    inproc_t n;
    xnode_config_t cfg = local_cfg();
    cfg.model = MODEL_PATH;
    inproc_start(&n, &cfg);
    client_t c;
    client_open(&c, xnode_endpoint(n.xn), NULL, NULL);
    const int D = f.m->hp.n_embd;

    /* FORWARD before ASSIGN. */
    fwd_t w;
    fwd_make(&w, &f, 0, 1);
    send_forward(&c, &w, &f, 40, WIRE_DTYPE_F32, WIRE_DTYPE_F32);
    expect_error(&c, WIRE_E_FIELD, 40);
    send_assign(&c, &f, f.fp);
    expect_ready(&c, &f);

    /* Junk header frame; junk with a junk tensor frame. */
    cr_assert_eq(zmq_send(c.sock, "\xff\xff\xff\xff", 4, 0), 4);
    expect_error(&c, WIRE_E_PROTO, 0);
    cr_assert_eq(zmq_send(c.sock, "\x08\x01\x8a\x01\x00", 5, ZMQ_SNDMORE), 5); /* heartbeat */
    cr_assert_eq(zmq_send(c.sock, "abc", 3, 0), 3);
    expect_error(&c, WIRE_E_FRAMES, 0);

    /* An expert not assigned here (even ids are not). */
    w.expert[0] = 2;
    send_forward(&c, &w, &f, 41, WIRE_DTYPE_F32, WIRE_DTYPE_F32);
    expect_error(&c, WIRE_E_FIELD, 41);
    /* An expert id beyond the model. */
    w.expert[0] = 99;
    send_forward(&c, &w, &f, 42, WIRE_DTYPE_F32, WIRE_DTYPE_F32);
    expect_error(&c, WIRE_E_FIELD, 42);
    /* The same expert twice for one token (token 1 has two). */
    free(w.x);
    fwd_make(&w, &f, 0, 1);
    w.expert[2] = w.expert[1];
    send_forward(&c, &w, &f, 43, WIRE_DTYPE_F32, WIRE_DTYPE_F32);
    expect_error(&c, WIRE_E_FIELD, 43);
    /* A layer beyond the model. */
    free(w.x);
    fwd_make(&w, &f, 0, 1);
    w.layer = 9;
    send_forward(&c, &w, &f, 44, WIRE_DTYPE_F32, WIRE_DTYPE_F32);
    expect_error(&c, WIRE_E_FIELD, 44);

    /* Rows of the wrong length. */
    free(w.x);
    fwd_make(&w, &f, 0, 1);
    wire_msg_t m;
    wire_msg_init(&m, WIRE_KIND_FORWARD);
    m.u.forward = (wire_forward_t){45, 0, 0, N_TOK, w.n_sel, w.n_total, w.expert, w.gate,
                                   WIRE_DTYPE_F32};
    cr_assert_eq(wire_msg_add_act(&m, WIRE_DTYPE_F32, w.x, N_TOK, (uint32_t)D / 2), 0);
    send_ok(&c, &m);
    expect_error(&c, WIRE_E_SIZE, 45);

    /* More tokens than the limit (1024). */
    enum { BIG = 1025 };
    uint32_t *sel = xcalloc(BIG, sizeof(uint32_t));
    float *x = xcalloc((size_t)BIG * (size_t)D, sizeof(float));
    wire_msg_init(&m, WIRE_KIND_FORWARD);
    m.u.forward = (wire_forward_t){46, 0, 0, BIG, sel, 0, NULL, NULL, WIRE_DTYPE_F32};
    cr_assert_eq(wire_msg_add_act(&m, WIRE_DTYPE_F32, x, BIG, (uint32_t)D), 0);
    send_ok(&c, &m);
    expect_error(&c, WIRE_E_LIMIT, 46);
    free(sel);
    free(x);

    /* Chunks for a pair not assigned, and a message only a node sends. */
    send_slice(&c, f.m, 0, 0, WIRE_SHARD_GATE, 1u << 20, 0);
    expect_error(&c, WIRE_E_FIELD, 0);
    wire_msg_init(&m, WIRE_KIND_READY);
    send_ok(&c, &m);
    expect_error(&c, WIRE_E_KIND, 0);

    free(w.x);
    cr_assert_eq(forward_check(&c, &f, 3, 47, WIRE_DTYPE_F32), 0.0, "still serving");
    xnode_counters_t k;
    xnode_counters(n.xn, &k);
    cr_assert_eq(k.malformed, 3, "junk, junk frames, too many tokens");
    cr_assert_eq(k.errors, 11);
    cr_assert_eq(k.requests, 1);
    client_close(&c);
    inproc_stop(&n);
    fixture_deinit(&f);
}

Test(xnode, assignment_beyond_mem_limit_is_refused)
{
    fixture_t f;
    fixture_init(&f);
    for (int with_model = 0; with_model < 2; with_model++) {
        inproc_t n;
        xnode_config_t cfg = local_cfg();
        cfg.mem_limit = f.bytes - 1;
        cfg.model = with_model ? MODEL_PATH : NULL;
        inproc_start(&n, &cfg);
        client_t c;
        client_open(&c, xnode_endpoint(n.xn), NULL, NULL);
        send_assign(&c, &f, f.fp);
        wire_msg_t m;
        expect_kind(&c, &m, WIRE_KIND_ERROR);
        cr_assert_eq(m.u.error.code, -ENOSPC);
        char want[64];
        snprintf(want, sizeof(want), "needs %llu bytes", (unsigned long long)f.bytes);
        cr_assert(strstr(m.u.error.message, want), "%s", m.u.error.message);
        wire_msg_deinit(&m);

        /* Without the announced total, the slice that would cross the limit is refused. */
        if (!with_model) {
            wire_msg_init(&m, WIRE_KIND_ASSIGN);
            m.u.assign = (wire_assign_t){f.fp,    4, 8, (uint32_t)f.n_pairs, f.layer, f.expert,
                                         0,       0, 0, 0};
            send_ok(&c, &m);
            send_shard(&c, &f, 1u << 20);
            expect_error(&c, -ENOSPC, 0);
        }
        client_close(&c);
        inproc_stop(&n);
    }
    fixture_deinit(&f);
}

/* A shard received with --cache-dir is offered by the next node on that directory, which is
 * then ready without a transfer. A coordinator that goes away leaves the shard in place. */
Test(xnode, cache_dir_keeps_the_shard_across_restarts)
{
    fixture_t f;
    fixture_init(&f);
    char dir[] = "/tmp/xnode-cache-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    xnode_config_t cfg = local_cfg();
    cfg.cache_dir = dir;

    inproc_t n;
    inproc_start(&n, &cfg);
    client_t c;
    client_open(&c, xnode_endpoint(n.xn), NULL, NULL);
    send_assign(&c, &f, f.fp);
    send_shard(&c, &f, 1u << 20);
    expect_ready(&c, &f);
    client_close(&c);
    /* A new coordinator: the node still holds the shard and says so. */
    client_open(&c, xnode_endpoint(n.xn), NULL, NULL);
    wire_msg_t m;
    hello(&c, &m);
    cr_assert_str_eq(m.u.hello.model, f.fp);
    cr_assert_eq(m.u.hello.n_pairs, (uint32_t)f.n_pairs);
    wire_msg_deinit(&m);
    client_close(&c);
    inproc_stop(&n);

    inproc_start(&n, &cfg);
    client_open(&c, xnode_endpoint(n.xn), NULL, NULL);
    hello(&c, &m);
    cr_assert_str_eq(m.u.hello.model, f.fp);
    cr_assert_eq(m.u.hello.n_pairs, (uint32_t)f.n_pairs);
    for (int i = 0; i < f.n_pairs; i++)
        cr_assert(m.u.hello.layer[i] == f.layer[i] && m.u.hello.expert[i] == f.expert[i]);
    wire_msg_deinit(&m);
    send_assign(&c, &f, f.fp);
    expect_ready(&c, &f);
    cr_assert_eq(forward_check(&c, &f, 1, 51, WIRE_DTYPE_F32), 0.0);
    xnode_counters_t k;
    xnode_counters(n.xn, &k);
    cr_assert_eq(k.chunks, 0);
    client_close(&c);
    inproc_stop(&n);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
    fixture_deinit(&f);
}

/* Heartbeats come every second to a coordinator that spoke; one that vanished is dropped
 * without disturbing anyone else. */
Test(xnode, heartbeats_reach_coordinators_and_vanished_ones_are_dropped)
{
    inproc_t n;
    xnode_config_t cfg = local_cfg();
    inproc_start(&n, &cfg);
    client_t a, b;
    client_open(&a, xnode_endpoint(n.xn), NULL, NULL);
    client_open(&b, xnode_endpoint(n.xn), NULL, NULL);
    wire_msg_t m;
    hello(&a, &m);
    wire_msg_deinit(&m);
    hello(&b, &m);
    wire_msg_deinit(&m);
    client_close(&a);
    double t0 = wire_now();
    for (int beats = 0; beats < 3;) {
        cr_assert_eq(wire_msg_recv(b.sock, NULL, &m), 0, "heartbeat within 5 s");
        if (m.kind == WIRE_KIND_HEARTBEAT) beats++;
        wire_msg_deinit(&m);
    }
    cr_assert_lt(wire_now() - t0, 4.5);
    xnode_counters_t k;
    xnode_counters(n.xn, &k);
    cr_assert_eq(k.peers_dropped, 1);
    client_close(&b);
    inproc_stop(&n);
}

/* The program: endpoint on stdout, -m, a FORWARD, SIGTERM ends it with status 0; the command
 * line wins over the environment. */
Test(xnode, program_serves_and_stops_on_sigterm)
{
    fixture_t f;
    fixture_init(&f);
    setenv("MOEMESH_THREADS", "bogus", 1); /* would fail if the command line did not win */
    const char *args[] = {"-l", "tcp://127.0.0.1:*", "-m", MODEL_PATH, "-t", "2",
                          "--name", "proc-node", "--log-level", "warn", NULL};
    char ep[128];
    spawn_node(args, ep, sizeof(ep));
    unsetenv("MOEMESH_THREADS");
    client_t c;
    client_open(&c, ep, NULL, NULL);
    wire_msg_t m;
    hello(&c, &m);
    cr_assert_str_eq(m.u.hello.name, "proc-node");
    cr_assert_eq(m.u.hello.cores, 2);
    wire_msg_deinit(&m);
    send_assign(&c, &f, f.fp);
    expect_ready(&c, &f);
    cr_assert_eq(forward_check(&c, &f, 0, 61, WIRE_DTYPE_F32), 0.0);
    client_close(&c);
    cr_assert_eq(stop_child(), 0);
    fixture_deinit(&f);
}

/* CURVE: the coordinator key in DIR is served, any other key gets no answer at all. */
Test(xnode, curve_serves_the_coordinator_key_only)
{
    char dir[] = "/tmp/xnode-keys-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char prog[PATH_MAX], cmd[PATH_MAX + 256];
    expert_path(prog, sizeof(prog));
    snprintf(cmd, sizeof(cmd), "%s keygen %s 2>/dev/null", prog, dir);
    cr_assert_eq(system(cmd), 0);
    char other[] = "/tmp/xnode-other-XXXXXX";
    cr_assert_not_null(mkdtemp(other));
    cr_assert_eq(wire_curve_keygen(other, "coordinator"), 0);

    const char *args[] = {"-l", "tcp://127.0.0.1:*", "--curve-keys", dir, NULL};
    char ep[128];
    spawn_node(args, ep, sizeof(ep));
    wire_keypair_t node, coord, stranger;
    cr_assert_eq(wire_curve_load(dir, "node", false, &node), 0);
    cr_assert_eq(wire_curve_load(dir, "coordinator", true, &coord), 0);
    cr_assert_eq(wire_curve_load(other, "coordinator", true, &stranger), 0);

    client_t c;
    client_open(&c, ep, &stranger, node.public_z85);
    int ms = 1500;
    zmq_setsockopt(c.sock, ZMQ_RCVTIMEO, &ms, sizeof(ms));
    zmq_setsockopt(c.sock, ZMQ_SNDTIMEO, &ms, sizeof(ms));
    wire_msg_t m;
    wire_msg_init(&m, WIRE_KIND_HELLO);
    int rc = wire_msg_send(c.sock, &m);
    if (rc == 0) rc = wire_msg_recv(c.sock, NULL, &m);
    cr_assert_eq(rc, -EAGAIN, "an unknown key is never answered");
    client_close(&c);

    client_open(&c, ep, &coord, node.public_z85);
    hello(&c, &m);
    wire_msg_deinit(&m);
    client_close(&c);
    cr_assert_eq(stop_child(), 0);
    snprintf(cmd, sizeof(cmd), "rm -rf %s %s", dir, other);
    cr_assert_eq(system(cmd), 0);
}
