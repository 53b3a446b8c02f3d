/* libFuzzer target: the wire decoder (wire/msg.c wire_msg_recv) on arbitrary multipart
 * messages, through real ZeroMQ sockets as an expert node receives them: a DEALER sends the
 * frames over inproc to the node's ROUTER (wire_sock_node_new), which decodes and validates.
 * The input is the frames joined by the 4-byte separator SEP: header, then tensor frames (more
 * than a message may hold is allowed, to test draining). On success the target reads what the
 * checks promise is there (arrays, tensors, activations); on failure it checks the socket is
 * left at a message boundary by sending a valid HEARTBEAT after it.
 */
#include <stddef.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "wire/wire.h"

static const uint8_t SEP[4] = {0xfe, 0xfd, 0xfc, 0xfb};
#define MAX_FRAMES 5

static void *ctx, *router, *dealer;

/* Seeds: one valid message of each kind as the bytes this target reads, written to dir when
 * FUZZ_WIRE_SEEDS=dir is set (tests/fuzz/corpus/wire was made so). Goes through the same socket
 * pair in the other direction, so the bytes are exactly what wire_msg_send puts on the wire. */
static void write_seeds(const char *dir)
{
    static const uint32_t layer[] = {1, 1, 2}, expert[] = {0, 3, 7}, n_sel[] = {2, 1};
    static const float gate[] = {0.5f, 0.25f, 1.0f};
    float act[2 * 32];
    for (int i = 0; i < 64; i++) act[i] = (float)i / 8 - 4;
    wire_msg_t m[16];
    int n = 0;
    wire_msg_init(&m[n], WIRE_KIND_HELLO);
    m[n++].u.hello = (wire_hello_t){"node-a", 4, 1 << 30, 15, 3, layer, expert, "abc-123"};
    wire_msg_init(&m[n], WIRE_KIND_WELCOME);
    m[n++].u.hello = (wire_hello_t){"coord", 0, 0, 15, 0, NULL, NULL, ""};
    wire_msg_init(&m[n], WIRE_KIND_ASSIGN);
    m[n++].u.assign = (wire_assign_t){"abc-123", 4, 8, 3, layer, expert, 32, 64, 123456};
    wire_msg_init(&m[n], WIRE_KIND_SHARD_CHUNK);
    m[n].u.chunk = (wire_shard_chunk_t){"blk.1.ffn_up_exps.weight", 1, 3, WIRE_SHARD_UP, 0, 8, 24,
                                        wire_crc32c(0, "x", 1)};
    uint8_t *chunk = malloc(16);
    memset(chunk, 7, 16);
    wire_msg_add_tensor(&m[n++], WIRE_DTYPE_BYTES, 1, 16, chunk, 16, NULL, NULL);
    wire_msg_init(&m[n], WIRE_KIND_READY);
    m[n++].u.ready = (wire_ready_t){3, 123456};
    for (int dt = WIRE_DTYPE_F32; dt < WIRE_DTYPE_COUNT; dt++) {
        wire_msg_init(&m[n], WIRE_KIND_FORWARD);
        m[n].u.forward = (wire_forward_t){42, 1, 0, 2, n_sel, 3, expert, gate, (wire_dtype_t)dt};
        wire_msg_add_act(&m[n++], (wire_dtype_t)dt, act, 2, 32);
    }
    wire_msg_init(&m[n], WIRE_KIND_RESULT);
    m[n].u.result = (wire_result_t){42, 1, 0, 2, 10, 20};
    wire_msg_add_act(&m[n++], WIRE_DTYPE_F16, act, 2, 32);
    wire_msg_init(&m[n], WIRE_KIND_HEARTBEAT);
    m[n++].u.heartbeat = (wire_heartbeat_t){7, 123456789, 2};
    wire_msg_init(&m[n], WIRE_KIND_ERROR);
    m[n++].u.error = (wire_error_t){WIRE_E_LIMIT, "too many tokens", 42};
    wire_msg_init(&m[n], WIRE_KIND_STATS);
    m[n++].u.stats = (wire_stats_t){1, 2, 3, 4, 5, 6, 7};
    for (int i = 0; i < n; i++) {
        if (wire_msg_send(dealer, &m[i]) != 0) abort();
        char path[512];
        snprintf(path, sizeof(path), "%s/seed-%02d", dir, i);
        FILE *f = fopen(path, "wb");
        if (!f) abort();
        zmq_msg_t part;
        zmq_msg_init(&part);
        zmq_msg_recv(&part, router, 0); /* the routing identity: not part of the input */
        for (int k = 0; zmq_msg_more(&part); k++) {
            zmq_msg_recv(&part, router, 0);
            if (k) fwrite(SEP, 1, sizeof(SEP), f);
            fwrite(zmq_msg_data(&part), 1, zmq_msg_size(&part), f);
        }
        zmq_msg_close(&part);
        fclose(f);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    wire__log_level = -1; /* bad messages are the point here; their logs are noise */
    ctx = zmq_ctx_new();
    router = wire_sock_node_new(ctx, NULL);
    dealer = wire_sock_coord_new(ctx, NULL);
    int ms = 5000; /* a frame that does not arrive is a bug in this target, not a hang */
    if (!router || !dealer || zmq_setsockopt(router, ZMQ_RCVTIMEO, &ms, sizeof(ms)) ||
        zmq_setsockopt(dealer, ZMQ_RCVTIMEO, &ms, sizeof(ms)) ||
        zmq_bind(router, "inproc://fuzz-wire") || zmq_connect(dealer, "inproc://fuzz-wire")) {
        fprintf(stderr, "fuzz_wire: socket set-up failed: %s\n", zmq_strerror(zmq_errno()));
        abort();
    }
    const char *seeds = getenv("FUZZ_WIRE_SEEDS");
    if (seeds) {
        write_seeds(seeds);
        exit(0);
    }
    return 0;
}

static void touch(const void *p, size_t n)
{
    if (!n) return;
    volatile uint8_t x = ((const uint8_t *)p)[0];
    x = ((const uint8_t *)p)[n - 1];
    (void)x;
}

static void read_msg(const wire_msg_t *m)
{
    switch (m->kind) {
    case WIRE_KIND_HELLO:
    case WIRE_KIND_WELCOME:
        touch(m->u.hello.layer, m->u.hello.n_pairs * sizeof(uint32_t));
        touch(m->u.hello.expert, m->u.hello.n_pairs * sizeof(uint32_t));
        if (strlen(m->u.hello.name) + strlen(m->u.hello.model) > 2 * 256) abort();
        break;
    case WIRE_KIND_ASSIGN:
        touch(m->u.assign.layer, m->u.assign.n_pairs * sizeof(uint32_t));
        touch(m->u.assign.expert, m->u.assign.n_pairs * sizeof(uint32_t));
        break;
    case WIRE_KIND_FORWARD:
        touch(m->u.forward.n_sel, m->u.forward.n_tokens * sizeof(uint32_t));
        touch(m->u.forward.expert, m->u.forward.n_total * sizeof(uint32_t));
        touch(m->u.forward.gate, m->u.forward.n_total * sizeof(float));
        /* fall through: the activations */
    case WIRE_KIND_RESULT: {
        const wire_tensor_t *t = &m->tensors[0];
        float *x = malloc((size_t)t->rows * t->cols * sizeof(float) + 1);
        if (wire_act_unpack(t->dtype, t->data, t->bytes, t->rows, t->cols, x) != 0) abort();
        free(x);
        break;
    }
    default: break;
    }
    for (int i = 0; i < m->n_tensors; i++) touch(m->tensors[i].data, m->tensors[i].bytes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *start[MAX_FRAMES];
    size_t len[MAX_FRAMES];
    int n = 0;
    const uint8_t *p = data, *end = data + size;
    while (n < MAX_FRAMES - 1) {
        const uint8_t *s = memmem(p, (size_t)(end - p), SEP, sizeof(SEP));
        if (!s) break;
        start[n] = p, len[n] = (size_t)(s - p), n++;
        p = s + sizeof(SEP);
    }
    start[n] = p, len[n] = (size_t)(end - p), n++;
    for (int i = 0; i < n; i++)
        if (zmq_send(dealer, start[i], len[i], i + 1 < n ? ZMQ_SNDMORE : 0) < 0) abort();

    wire_msg_t m;
    int err = wire_msg_recv(router, NULL, &m);
    if (err == -EAGAIN) abort(); /* the message was sent: it must arrive */
    if (err == 0) read_msg(&m);
    else if (m.kind != WIRE_KIND_NONE || m.own) abort(); /* errors own nothing */
    wire_msg_deinit(&m);

    /* The next message must decode cleanly: recv consumed the whole bad one. */
    wire_msg_t hb;
    wire_msg_init(&hb, WIRE_KIND_HEARTBEAT);
    hb.u.heartbeat.seq = 1;
    if (wire_msg_send(dealer, &hb) != 0) abort();
    if (wire_msg_recv(router, NULL, &hb) != 0 || hb.kind != WIRE_KIND_HEARTBEAT) abort();
    wire_msg_deinit(&hb);
    return 0;
}
