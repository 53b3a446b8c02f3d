/* Tests for wire/msg.c: every kind round-trips over inproc and tcp://127.0.0.1 with tensor
 * frames of every dtype; hostile frames sent raw by a test peer give the specific error code and
 * leave the receiving socket usable; sending always consumes the message. Each test makes its
 * own context and closes everything; receives are bounded by ZMQ_RCVTIMEO. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "wire/wire.h"

#define TIMEOUT_MS 3000

static void set_timeouts(void *s, int ms)
{
    cr_assert_eq(zmq_setsockopt(s, ZMQ_RCVTIMEO, &ms, sizeof(ms)), 0);
    cr_assert_eq(zmq_setsockopt(s, ZMQ_SNDTIMEO, &ms, sizeof(ms)), 0);
}

/* A node ROUTER bound at base (inproc name or tcp://127.0.0.1:*) and a coordinator DEALER
 * connected to it. */
typedef struct {
    void *ctx, *node, *coord;
    char ep[256];
} pair_t;

static void pair_open(pair_t *p, const char *base, const wire_limits_t *lim)
{
    p->ctx = zmq_ctx_new();
    cr_assert_not_null(p->ctx);
    p->node = wire_sock_node_new(p->ctx, lim);
    p->coord = wire_sock_coord_new(p->ctx, lim);
    cr_assert(p->node && p->coord);
    set_timeouts(p->node, TIMEOUT_MS);
    set_timeouts(p->coord, TIMEOUT_MS);
    cr_assert_eq(wire_sock_bind(p->node, base, p->ep, sizeof(p->ep)), 0);
    cr_assert_eq(zmq_connect(p->coord, p->ep), 0);
}

static void pair_close(pair_t *p)
{
    wire_sock_close(p->coord);
    wire_sock_close(p->node);
    cr_assert_eq(zmq_ctx_term(p->ctx), 0);
}

/* ---------------------------------------------------------------- fixtures */

static const uint32_t LAYERS[] = {0, 0, 3, 47};
static const uint32_t EXPERTS[] = {1, 5, 7, 127};
enum { N_TOK = 3, ROW = 64 };
static const uint32_t N_SEL[N_TOK] = {2, 0, 1};
static const uint32_t SEL[] = {4, 9, 17};
static const float GATES[] = {0.75f, 0.25f, 1.0f};

static float act[N_TOK * ROW];

static void fill_act(void)
{
    for (int i = 0; i < N_TOK * ROW; i++) act[i] = (float)((i * 37) % 101 - 50) / 16.0f;
}

/* A message of kind k; activation tensors in dtype dt. */
static void make(wire_msg_t *m, wire_kind_t k, wire_dtype_t dt)
{
    wire_msg_init(m, k);
    switch (k) {
    case WIRE_KIND_HELLO:
    case WIRE_KIND_WELCOME:
        m->u.hello = (wire_hello_t){"node-a", 16, UINT64_C(1) << 36, 0x1e, 4, LAYERS, EXPERTS,
                                    "moe-fp-0123456789abcdef", 0};
        break;
    case WIRE_KIND_ASSIGN:
        m->u.assign = (wire_assign_t){"olmoe-1b-7b", 48, 128, 4, LAYERS, EXPERTS, 2048, 1024,
                                      UINT64_C(5) << 33, 0};
        break;
    case WIRE_KIND_SHARD_CHUNK: {
        uint8_t *b = xmalloc(100);
        for (int i = 0; i < 100; i++) b[i] = (uint8_t)(i ^ 0x5a);
        m->u.chunk = (wire_shard_chunk_t){"blk.3.ffn_up_exps", 3, 7, WIRE_SHARD_UP, 8, 200, 1000,
                                          0xdeadbeef};
        cr_assert_eq(wire_msg_add_tensor(m, WIRE_DTYPE_BYTES, 1, 100, b, 100, NULL, NULL), 0);
        break;
    }
    case WIRE_KIND_READY: m->u.ready = (wire_ready_t){4, 123456789}; break;
    case WIRE_KIND_FORWARD:
        m->u.forward = (wire_forward_t){77, 3, 2, N_TOK, N_SEL, 3, SEL, GATES, dt};
        cr_assert_eq(wire_msg_add_act(m, dt, act, N_TOK, ROW), 0);
        break;
    case WIRE_KIND_RESULT:
        m->u.result = (wire_result_t){77, 3, 2, N_TOK, 11, 222};
        cr_assert_eq(wire_msg_add_act(m, dt, act, N_TOK, ROW), 0);
        break;
    case WIRE_KIND_HEARTBEAT: m->u.heartbeat = (wire_heartbeat_t){9, 1234567, 2}; break;
    case WIRE_KIND_ERROR: m->u.error = (wire_error_t){WIRE_E_LIMIT, "too many tokens", 77}; break;
    case WIRE_KIND_STATS: m->u.stats = (wire_stats_t){1, 2, 3, 4, 5, 6, 7}; break;
    default: cr_assert_fail("no fixture for kind %d", k);
    }
}

static void expect_act(const wire_msg_t *m, wire_dtype_t dt)
{
    cr_assert_eq(m->n_tensors, 1);
    const wire_tensor_t *t = &m->tensors[0];
    cr_assert_eq(t->dtype, dt);
    cr_assert_eq(t->rows, N_TOK);
    cr_assert_eq(t->cols, ROW);
    cr_assert_eq((uintptr_t)t->data % (dt == WIRE_DTYPE_F32 ? 4 : 2), 0, "aligned for dtype");
    /* The bytes must equal what the sender packed: compare with a local pack. */
    size_t bytes = wire_dtype_row_bytes(dt, ROW) * N_TOK;
    cr_assert_eq(t->bytes, bytes);
    void *ref = xmalloc(bytes);
    cr_assert_eq(wire_act_pack(dt, act, N_TOK, ROW, ref, bytes), 0);
    cr_assert_eq(memcmp(ref, t->data, bytes), 0, "tensor bytes survive the trip");
    free(ref);
}

static void expect(const wire_msg_t *m, wire_kind_t k, wire_dtype_t dt)
{
    cr_assert_eq(m->kind, k, "got %s, want %s", wire_kind_name(m->kind), wire_kind_name(k));
    switch (k) {
    case WIRE_KIND_HELLO:
    case WIRE_KIND_WELCOME: {
        const wire_hello_t *h = &m->u.hello;
        cr_assert_str_eq(h->name, "node-a");
        cr_assert(h->cores == 16 && h->mem_bytes == UINT64_C(1) << 36 && h->dtypes == 0x1e);
        cr_assert_eq(h->n_pairs, 4);
        cr_assert_arr_eq(h->layer, LAYERS, sizeof(LAYERS));
        cr_assert_arr_eq(h->expert, EXPERTS, sizeof(EXPERTS));
        cr_assert_str_eq(h->model, "moe-fp-0123456789abcdef");
        cr_assert_eq(m->n_tensors, 0);
        break;
    }
    case WIRE_KIND_ASSIGN: {
        const wire_assign_t *a = &m->u.assign;
        cr_assert_str_eq(a->model, "olmoe-1b-7b");
        cr_assert(a->n_layers == 48 && a->n_experts == 128 && a->n_pairs == 4);
        cr_assert(a->n_embd == 2048 && a->n_ff == 1024 && a->bytes == UINT64_C(5) << 33);
        cr_assert_arr_eq(a->layer, LAYERS, sizeof(LAYERS));
        cr_assert_arr_eq(a->expert, EXPERTS, sizeof(EXPERTS));
        break;
    }
    case WIRE_KIND_SHARD_CHUNK: {
        const wire_shard_chunk_t *c = &m->u.chunk;
        cr_assert_str_eq(c->tensor, "blk.3.ffn_up_exps");
        cr_assert(c->layer == 3 && c->expert == 7 && c->kind == WIRE_SHARD_UP);
        cr_assert(c->ggml_type == 8 && c->offset == 200 && c->total == 1000);
        cr_assert_eq(c->crc32c, 0xdeadbeef);
        cr_assert_eq(m->n_tensors, 1);
        cr_assert(m->tensors[0].dtype == WIRE_DTYPE_BYTES && m->tensors[0].bytes == 100);
        const uint8_t *b = m->tensors[0].data;
        for (int i = 0; i < 100; i++) cr_assert_eq(b[i], (uint8_t)(i ^ 0x5a));
        break;
    }
    case WIRE_KIND_READY:
        cr_assert(m->u.ready.n_experts == 4 && m->u.ready.bytes == 123456789);
        break;
    case WIRE_KIND_FORWARD: {
        const wire_forward_t *f = &m->u.forward;
        cr_assert(f->request_id == 77 && f->layer == 3 && f->micro_batch == 2);
        cr_assert(f->n_tokens == N_TOK && f->n_total == 3 && f->result_dtype == dt);
        cr_assert_arr_eq(f->n_sel, N_SEL, sizeof(N_SEL));
        cr_assert_arr_eq(f->expert, SEL, sizeof(SEL));
        cr_assert_arr_eq(f->gate, GATES, sizeof(GATES));
        expect_act(m, dt);
        break;
    }
    case WIRE_KIND_RESULT: {
        const wire_result_t *r = &m->u.result;
        cr_assert(r->request_id == 77 && r->layer == 3 && r->micro_batch == 2);
        cr_assert(r->n_tokens == N_TOK && r->queue_us == 11 && r->compute_us == 222);
        expect_act(m, dt);
        break;
    }
    case WIRE_KIND_HEARTBEAT:
        cr_assert(m->u.heartbeat.seq == 9 && m->u.heartbeat.time_us == 1234567);
        cr_assert_eq(m->u.heartbeat.inflight, 2);
        break;
    case WIRE_KIND_ERROR:
        cr_assert(m->u.error.code == WIRE_E_LIMIT && m->u.error.request_id == 77);
        cr_assert_str_eq(m->u.error.message, "too many tokens");
        break;
    case WIRE_KIND_STATS: {
        const wire_stats_t *s = &m->u.stats;
        cr_assert(s->requests == 1 && s->tokens == 2 && s->bytes_in == 3 && s->bytes_out == 4);
        cr_assert(s->compute_us == 5 && s->queue_us == 6 && s->inflight == 7);
        break;
    }
    default: cr_assert_fail();
    }
}

/* Every kind, every activation dtype, coordinator -> node and back to the route. Over tcp,
 * ZeroMQ hands some tensor frames over at odd offsets of its receive buffer, so this also runs
 * the aligned-copy path of wire_msg_recv (seen for the f16/bf16/f32 frames). */
static void round_trip_all(const char *base)
{
    fill_act();
    pair_t p;
    pair_open(&p, base, NULL);
    for (int k = WIRE_KIND_HELLO; k < WIRE_KIND_COUNT; k++) {
        for (int dt = WIRE_DTYPE_F32; dt < WIRE_DTYPE_COUNT; dt++) {
            bool has_act = k == WIRE_KIND_FORWARD || k == WIRE_KIND_RESULT;
            if (!has_act && dt != WIRE_DTYPE_F32) continue;
            wire_msg_t m, r;
            make(&m, (wire_kind_t)k, (wire_dtype_t)dt);
            cr_assert_eq(wire_msg_send(p.coord, &m), 0, "%s", wire_kind_name(k));
            cr_assert_eq(m.own, NULL, "send consumed the message");
            int rc = wire_msg_recv(p.node, NULL, &r);
            cr_assert_eq(rc, 0, "%s/%s: %s", wire_kind_name(k), wire_dtype_name(dt),
                         wire_strerror(rc));
            expect(&r, (wire_kind_t)k, (wire_dtype_t)dt);
            cr_assert_gt(r.route.len, 0, "ROUTER keeps the sender's identity");

            /* The reply goes back to the route the request came from. */
            make(&m, (wire_kind_t)k, (wire_dtype_t)dt);
            m.route = r.route;
            wire_msg_deinit(&r);
            cr_assert_eq(wire_msg_send(p.node, &m), 0);
            cr_assert_eq(wire_msg_recv(p.coord, NULL, &r), 0);
            expect(&r, (wire_kind_t)k, (wire_dtype_t)dt);
            cr_assert_eq(r.route.len, 0, "a DEALER has no routes");
            wire_msg_deinit(&r);
            wire_msg_deinit(&r); /* idempotent */
        }
    }
    pair_close(&p);
}

Test(wire_msg, every_kind_round_trips_over_inproc) { round_trip_all("inproc://wire-msg-rt"); }

Test(wire_msg, every_kind_round_trips_over_tcp, .timeout = 20)
{
    round_trip_all("tcp://127.0.0.1:*");
}

/* The model fingerprint of HELLO/WELCOME is optional: NULL travels as "" and an older peer
 * that never sets it reads as "" too, never NULL; a fingerprint past max_string is refused by the receiver. */
Test(wire_msg, hello_model_is_optional_and_bounded)
{
    pair_t p;
    pair_open(&p, "inproc://wire-msg-hello-model", NULL);
    wire_msg_t m, r;
    wire_msg_init(&m, WIRE_KIND_WELCOME);
    m.u.hello = (wire_hello_t){"n", 1, 2, 0x2, 0, NULL, NULL, NULL, 0};
    cr_assert_eq(wire_msg_send(p.coord, &m), 0);
    cr_assert_eq(wire_msg_recv(p.node, NULL, &r), 0);
    cr_assert_eq(r.kind, WIRE_KIND_WELCOME);
    cr_assert_not_null(r.u.hello.model);
    cr_assert_str_eq(r.u.hello.model, "");
    cr_assert_eq(r.u.hello.n_pairs, 0);
    wire_msg_deinit(&r);

    wire_limits_t lim = wire_limits_default();
    char *big = xmalloc(lim.max_string + 2);
    memset(big, 'f', lim.max_string + 1);
    big[lim.max_string + 1] = 0;
    wire_msg_init(&m, WIRE_KIND_HELLO);
    m.u.hello = (wire_hello_t){"n", 1, 2, 0x2, 0, NULL, NULL, big, 0};
    cr_assert_eq(wire_msg_send(p.coord, &m), 0, "the sender checks without limits");
    free(big);
    cr_assert_eq(wire_msg_recv(p.node, NULL, &r), WIRE_E_LIMIT, "the receiver refuses it");
    cr_assert_eq(r.kind, WIRE_KIND_NONE);
    pair_close(&p);
}

/* ---------------------------------------------------------------- sending consumes */

static atomic_int freed;
static void count_free(void *data, void *hint)
{
    (void)hint;
    free(data);
    atomic_fetch_add(&freed, 1);
}

Test(wire_msg, send_consumes_frames_on_error)
{
    pair_t p;
    pair_open(&p, "inproc://wire-msg-consume", NULL);
    atomic_store(&freed, 0);

    /* Inconsistent: the sum of n_sel (3) does not match n_total (2). */
    wire_msg_t m;
    fill_act();
    make(&m, WIRE_KIND_FORWARD, WIRE_DTYPE_F32);
    m.u.forward.n_total = 2;
    cr_assert_eq(wire_msg_send(p.coord, &m), WIRE_E_FIELD);
    cr_assert_null(m.own);

    /* A tensor of the wrong size is refused and its buffer freed at once. */
    wire_msg_init(&m, WIRE_KIND_RESULT);
    cr_assert_eq(wire_msg_add_tensor(&m, WIRE_DTYPE_F32, 2, 4, xmalloc(31), 31, count_free, NULL),
                 WIRE_E_SIZE);
    cr_assert_eq(atomic_load(&freed), 1);

    /* ROUTER to a peer that does not exist: EHOSTUNREACH, and the tensor is still freed. */
    wire_msg_init(&m, WIRE_KIND_RESULT);
    m.u.result = (wire_result_t){1, 0, 0, 2, 0, 0};
    cr_assert_eq(wire_msg_add_tensor(&m, WIRE_DTYPE_F32, 2, 4, xmalloc(32), 32, count_free, NULL),
                 0);
    m.route.len = 3;
    memcpy(m.route.id, "who", 3);
    cr_assert_eq(wire_msg_send(p.node, &m), -EHOSTUNREACH);
    cr_assert_null(m.own);
    cr_assert_eq(atomic_load(&freed), 2);

    /* ROUTER without a route. */
    wire_msg_init(&m, WIRE_KIND_HEARTBEAT);
    cr_assert_eq(wire_msg_send(p.node, &m), WIRE_E_ROUTE);

    /* Too many tensors. */
    wire_msg_init(&m, WIRE_KIND_HEARTBEAT);
    for (int i = 0; i < WIRE_MAX_TENSORS; i++)
        cr_assert_eq(wire_msg_add_tensor(&m, WIRE_DTYPE_BYTES, 1, 1, xmalloc(1), 1, count_free,
                                         NULL),
                     0);
    cr_assert_eq(wire_msg_add_tensor(&m, WIRE_DTYPE_BYTES, 1, 1, xmalloc(1), 1, count_free, NULL),
                 WIRE_E_FRAMES);
    cr_assert_eq(atomic_load(&freed), 3);
    wire_msg_deinit(&m);
    cr_assert_eq(atomic_load(&freed), 3 + WIRE_MAX_TENSORS, "close frees attached tensors");
    pair_close(&p);
}

Test(wire_msg, recv_times_out_with_eagain)
{
    pair_t p;
    pair_open(&p, "inproc://wire-msg-eagain", NULL);
    set_timeouts(p.node, 50);
    wire_msg_t m;
    cr_assert_eq(wire_msg_recv(p.node, NULL, &m), -EAGAIN);
    cr_assert_null(m.own);
    pair_close(&p);
}

/* ---------------------------------------------------------------- hostile input */

/* The frames a legitimate message turns into, captured through a PAIR. */
typedef struct {
    int n;
    size_t len[4];
    unsigned char *data[4];
} frames_t;

static void capture(void *ctx, wire_msg_t *m, frames_t *out)
{
    void *a = zmq_socket(ctx, ZMQ_PAIR), *b = zmq_socket(ctx, ZMQ_PAIR);
    cr_assert_eq(zmq_bind(b, "inproc://wire-msg-capture"), 0);
    cr_assert_eq(zmq_connect(a, "inproc://wire-msg-capture"), 0);
    cr_assert_eq(wire_msg_send(a, m), 0);
    out->n = 0;
    int more = 1;
    while (more) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        cr_assert_geq(zmq_msg_recv(&f, b, 0), 0);
        cr_assert_lt(out->n, 4);
        out->len[out->n] = zmq_msg_size(&f);
        out->data[out->n] = xmalloc(zmq_msg_size(&f));
        memcpy(out->data[out->n], zmq_msg_data(&f), zmq_msg_size(&f));
        out->n++;
        more = zmq_msg_more(&f);
        zmq_msg_close(&f);
    }
    zmq_close(a);
    zmq_close(b);
}

static void frames_free(frames_t *f)
{
    for (int i = 0; i < f->n; i++) free(f->data[i]);
}

/* Sends n raw frames from the test peer. */
static void send_raw(void *s, int n, const void *const *data, const size_t *len)
{
    for (int i = 0; i < n; i++)
        cr_assert_geq(zmq_send(s, data[i], len[i], i + 1 < n ? ZMQ_SNDMORE : 0), 0);
}

/* The node gets code for the raw message, then a legitimate HEARTBEAT still comes through. */
static void expect_refused(pair_t *p, const wire_limits_t *lim, int n, const void *const *data,
                           const size_t *len, int code)
{
    send_raw(p->coord, n, data, len);
    wire_msg_t m;
    int rc = wire_msg_recv(p->node, lim, &m);
    cr_assert_eq(rc, code, "got %d (%s), want %d (%s)", rc, wire_strerror(rc), code,
                 wire_strerror(code));
    cr_assert_null(m.own, "nothing owned after an error");
    cr_assert_eq(m.u.error.code, code);
    cr_assert_gt(m.route.len, 0, "the sender is known, to answer ERROR");

    wire_msg_t hb;
    make(&hb, WIRE_KIND_HEARTBEAT, WIRE_DTYPE_F32);
    cr_assert_eq(wire_msg_send(p->coord, &hb), 0);
    cr_assert_eq(wire_msg_recv(p->node, lim, &m), 0, "socket still in step");
    cr_assert_eq(m.kind, WIRE_KIND_HEARTBEAT);
    wire_msg_deinit(&m);
}

static void hostile_all(const char *base)
{
    fill_act();
    pair_t p;
    pair_open(&p, base, NULL);
    /* The test peer writes raw frames through the coordinator's DEALER. */
    frames_t fw;
    wire_msg_t m;
    make(&m, WIRE_KIND_FORWARD, WIRE_DTYPE_F32);
    capture(p.ctx, &m, &fw);
    cr_assert_eq(fw.n, 2);
    const void *d[6];
    size_t l[6];

    /* Junk bytes as the header. */
    d[0] = "\xff\xff\xff\xff junk";
    l[0] = 10;
    expect_refused(&p, NULL, 1, d, l, WIRE_E_PROTO);

    /* An empty header (the version is required). */
    d[0] = "";
    l[0] = 0;
    expect_refused(&p, NULL, 1, d, l, WIRE_E_PROTO);

    /* A truncated protobuf header. */
    d[0] = fw.data[0];
    l[0] = fw.len[0] / 2;
    d[1] = fw.data[1];
    l[1] = fw.len[1];
    expect_refused(&p, NULL, 2, d, l, WIRE_E_PROTO);

    /* Wrong version: {version: 2, heartbeat: {}} written by hand. */
    d[0] = "\x08\x02\x8a\x01\x00";
    l[0] = 5;
    expect_refused(&p, NULL, 1, d, l, WIRE_E_VERSION);

    /* Unknown kind: {version: 1, field 99: ""}, and no body at all. */
    d[0] = "\x08\x01\x9a\x06\x00";
    l[0] = 5;
    expect_refused(&p, NULL, 1, d, l, WIRE_E_KIND);
    l[0] = 2;
    expect_refused(&p, NULL, 1, d, l, WIRE_E_KIND);

    /* Token count not matching the frame: 3 rows declared, 2 rows of bytes sent. */
    d[0] = fw.data[0];
    l[0] = fw.len[0];
    l[1] = fw.len[1] / N_TOK * 2;
    expect_refused(&p, NULL, 2, d, l, WIRE_E_SIZE);

    /* Missing tensor frame, one extra frame, and many extra frames. */
    expect_refused(&p, NULL, 1, d, l, WIRE_E_FRAMES);
    l[1] = fw.len[1];
    d[2] = "x";
    l[2] = 1;
    expect_refused(&p, NULL, 3, d, l, WIRE_E_FRAMES);
    for (int i = 3; i < 6; i++) d[i] = "y", l[i] = 1;
    expect_refused(&p, NULL, 6, d, l, WIRE_E_FRAMES);

    /* Over the configured limits: a frame bigger than max_frame_bytes, a header bigger than
     * max_header_bytes, and more tokens than max_tokens. */
    wire_limits_t lim = wire_limits_default();
    lim.max_frame_bytes = fw.len[1] - 1;
    expect_refused(&p, &lim, 2, d, l, WIRE_E_LIMIT);
    lim = wire_limits_default();
    lim.max_header_bytes = (uint32_t)fw.len[0] - 1;
    expect_refused(&p, &lim, 2, d, l, WIRE_E_LIMIT);
    lim = wire_limits_default();
    lim.max_tokens = N_TOK - 1;
    expect_refused(&p, &lim, 2, d, l, WIRE_E_LIMIT);
    lim = wire_limits_default();
    lim.max_row_len = ROW - 1;
    expect_refused(&p, &lim, 2, d, l, WIRE_E_LIMIT);
    lim = wire_limits_default();
    lim.max_expert_id = 17; /* SEL holds 17 */
    expect_refused(&p, &lim, 2, d, l, WIRE_E_LIMIT);

    /* The untouched frames still make a valid message, and the request id is reported on
     * error so the node can answer ERROR for that request. */
    lim = wire_limits_default();
    lim.max_experts_per_tok = 1;
    send_raw(p.coord, 2, d, l);
    cr_assert_eq(wire_msg_recv(p.node, &lim, &m), WIRE_E_LIMIT);
    cr_assert_eq(m.u.error.request_id, 77);
    send_raw(p.coord, 2, d, l);
    cr_assert_eq(wire_msg_recv(p.node, NULL, &m), 0);
    expect(&m, WIRE_KIND_FORWARD, WIRE_DTYPE_F32);
    wire_msg_deinit(&m);

    frames_free(&fw);
    pair_close(&p);
}

Test(wire_msg, hostile_frames_are_refused_over_inproc) { hostile_all("inproc://wire-msg-bad"); }

Test(wire_msg, hostile_frames_are_refused_over_tcp, .timeout = 20)
{
    hostile_all("tcp://127.0.0.1:*");
}

Test(wire_msg, hostile_field_values_are_refused)
{
    pair_t p;
    pair_open(&p, "inproc://wire-msg-fields", NULL);
    const void *d[2];
    size_t l[2];
    /* SHARD_CHUNK whose chunk runs past the tensor's end (offset 200 + 100 bytes > total
     * 250). wire_msg_send refuses to build it, so it is written by hand: {version 1,
     * tensors [{dtype 0, rows 1, cols 100}], shard_chunk {layer 3, expert 7, kind 1,
     * offset 200, total 250, crc32c 0}}. */
    static const unsigned char chunk[] = {
        0x08, 0x01,                         /* version 1 */
        0x12, 0x06, 0x08, 0x00, 0x10, 0x01, 0x18, 0x64, /* tensors: bytes, 1, 100 */
        0x6a, 0x11,                         /* shard_chunk (field 13), 17 bytes */
        0x10, 0x03, 0x18, 0x07, 0x20, 0x01, /* layer 3, expert 7, kind 1 */
        0x30, 0xc8, 0x01, 0x38, 0xfa, 0x01, /* offset 200, total 250 */
        0x45, 0x00, 0x00, 0x00, 0x00,       /* crc32c (fixed32) 0 */
    };
    unsigned char data[100] = {0};
    d[0] = chunk;
    l[0] = sizeof(chunk);
    d[1] = data;
    l[1] = sizeof(data);
    expect_refused(&p, NULL, 2, d, l, WIRE_E_FIELD);

    /* A tensor dtype beyond the enum: the same header with dtype 9. */
    unsigned char bad[sizeof(chunk)];
    memcpy(bad, chunk, sizeof(chunk));
    bad[5] = 0x09;
    d[0] = bad;
    expect_refused(&p, NULL, 2, d, l, WIRE_E_DTYPE);
    pair_close(&p);
}

/* Thousands of empty Tensor sub-messages cost protobuf-c 1.4 ~44 bytes per header byte; the
 * budgeted allocator stops the unpack (without it this would unpack and fail later, on the
 * frame count). */
Test(wire_msg, header_that_unpacks_large_is_refused_by_the_budget)
{
    pair_t p;
    pair_open(&p, "inproc://wire-msg-budget", NULL);
    enum { N = 20000 };
    unsigned char *h = xmalloc(2 + 2 * N + 3);
    h[0] = 0x08, h[1] = 0x01;
    for (int i = 0; i < N; i++) h[2 + 2 * i] = 0x12, h[3 + 2 * i] = 0x00;
    memcpy(h + 2 + 2 * N, "\x8a\x01\x00", 3); /* heartbeat {} */
    const void *d[1] = {h};
    size_t l[1] = {2 + 2 * N + 3};
    expect_refused(&p, NULL, 1, d, l, WIRE_E_PROTO);
    /* The same shape at a hundredth of the count fits the budget and fails where it should. */
    l[0] = 2 + 2 * (N / 100);
    memcpy(h + l[0], "\x8a\x01\x00", 3);
    l[0] += 3;
    expect_refused(&p, NULL, 1, d, l, WIRE_E_FRAMES);
    free(h);
    pair_close(&p);
}

Test(wire_msg, error_of_another_version_is_still_read)
{
    pair_t p;
    pair_open(&p, "inproc://wire-msg-olderr", NULL);
    /* {version: 9, error: {code: -10098 (zigzag 20195), request_id: 5}} */
    static const unsigned char e[] = {0x08, 0x09, 0x92, 0x01, 0x06, 0x08,
                                      0xe3, 0x9d, 0x01, 0x18, 0x05};
    const void *d[1] = {e};
    size_t l[1] = {sizeof(e)};
    send_raw(p.coord, 1, d, l);
    wire_msg_t m;
    cr_assert_eq(wire_msg_recv(p.node, NULL, &m), 0);
    cr_assert_eq(m.kind, WIRE_KIND_ERROR);
    cr_assert_eq(m.u.error.code, WIRE_E_VERSION);
    cr_assert_eq(m.u.error.request_id, 5);
    wire_msg_deinit(&m);
    pair_close(&p);
}

/* The first exchange: a HELLO of another version is refused with WIRE_E_VERSION, and the
 * node's ERROR answer reaches the coordinator. */
Test(wire_msg, version_mismatch_in_hello_is_answered_with_error)
{
    pair_t p;
    pair_open(&p, "inproc://wire-msg-hello", NULL);
    /* {version: 2, hello: {name: "x"}} */
    const void *d[1] = {"\x08\x02\x52\x03\x0a\x01x"};
    size_t l[1] = {7};
    send_raw(p.coord, 1, d, l);
    wire_msg_t m, r;
    int rc = wire_msg_recv(p.node, NULL, &m);
    cr_assert_eq(rc, WIRE_E_VERSION);
    wire_msg_init(&r, WIRE_KIND_ERROR);
    r.route = m.route;
    r.u.error = (wire_error_t){rc, wire_strerror(rc), m.u.error.request_id};
    cr_assert_eq(wire_msg_send(p.node, &r), 0);
    cr_assert_eq(wire_msg_recv(p.coord, NULL, &r), 0);
    cr_assert_eq(r.kind, WIRE_KIND_ERROR);
    cr_assert_eq(r.u.error.code, WIRE_E_VERSION);
    cr_assert_str_eq(r.u.error.message, "protocol version mismatch");
    wire_msg_deinit(&r);
    pair_close(&p);
}

/* The largest FORWARD the default limits allow in tokens (1024 tokens x 16 experts with ids
 * that take 2-byte varints) fits the header limit and the unpack budget. */
Test(wire_msg, largest_default_forward_header_is_accepted)
{
    pair_t p;
    pair_open(&p, "inproc://wire-msg-large", NULL);
    wire_limits_t lim = wire_limits_default();
    enum { T = 1024, K = 16, C = 32 };
    cr_assert_eq(lim.max_tokens, T);
    uint32_t *n_sel = xmalloc(sizeof(uint32_t) * T), *ex = xmalloc(sizeof(uint32_t) * T * K);
    float *gate = xmalloc(sizeof(float) * T * K), *x = xcalloc(T * C, sizeof(float));
    for (int i = 0; i < T; i++) n_sel[i] = K;
    for (int i = 0; i < T * K; i++) ex[i] = 128 + (uint32_t)i % 896, gate[i] = 1.0f / K;
    wire_msg_t m;
    wire_msg_init(&m, WIRE_KIND_FORWARD);
    m.u.forward = (wire_forward_t){1, 0, 0, T, n_sel, T * K, ex, gate, WIRE_DTYPE_F32};
    cr_assert_eq(wire_msg_add_act(&m, WIRE_DTYPE_BF16, x, T, C), 0);
    cr_assert_eq(wire_msg_send(p.coord, &m), 0);
    int rc = wire_msg_recv(p.node, &lim, &m);
    cr_assert_eq(rc, 0, "%s", wire_strerror(rc));
    cr_assert_eq(m.u.forward.n_total, T * K);
    cr_assert_arr_eq(m.u.forward.expert, ex, sizeof(uint32_t) * T * K);
    wire_msg_deinit(&m);
    free(n_sel);
    free(ex);
    free(gate);
    free(x);
    pair_close(&p);
}
