/* `moemesh-bench wire`: what the protocol costs on top of the network. For each token count and
 * activation dtype it times FORWARD -> RESULT round trips over tcp://127.0.0.1 against a
 * responder that does everything an expert node does except the expert math (receive, validate,
 * unpack the activations, pack a result of the same shape, send), and a raw ZeroMQ ping of the
 * same bytes each way over the same kind of sockets. The ratio is the protocol's overhead: the
 * issue's target is dispatch + combine within 1.5x of the raw round trip.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "bench/bench.h"
#include "wire/wire.h"

#define N_EMBD 2048
#define K_NODE 4 /* experts of one token on this node (top-8 over two nodes) */

typedef struct {
    void *sock;         /* ROUTER, used by the thread only once it runs */
    char endpoint[128];
    bool raw;
    pthread_t th;
} responder_t;

/* Echo: every multipart message comes back with the same frames (identity first). */
static void raw_loop(void *s)
{
    for (;;) {
        zmq_msg_t parts[8];
        int n = 0, more = 1;
        while (more && n < 8) {
            zmq_msg_init(&parts[n]);
            if (zmq_msg_recv(&parts[n], s, 0) < 0) return;
            more = zmq_msg_more(&parts[n]);
            n++;
        }
        bool quit = n == 2 && zmq_msg_size(&parts[1]) == 1;
        for (int i = 0; i < n; i++) zmq_msg_send(&parts[i], s, i + 1 < n ? ZMQ_SNDMORE : 0);
        if (quit) return;
    }
}

/* Protocol: FORWARD in, RESULT of the same shape out; HEARTBEAT ends the loop. */
static void proto_loop(void *s)
{
    float *x = xmalloc(sizeof(float) * 1024 * N_EMBD);
    for (;;) {
        wire_msg_t in;
        if (wire_msg_recv(s, NULL, &in) != 0) continue;
        if (in.kind == WIRE_KIND_HEARTBEAT) {
            wire_msg_deinit(&in);
            break;
        }
        const wire_forward_t *f = &in.u.forward;
        const wire_tensor_t *t = &in.tensors[0];
        wire_act_unpack(t->dtype, t->data, t->bytes, t->rows, t->cols, x);
        wire_msg_t out;
        wire_msg_init(&out, WIRE_KIND_RESULT);
        out.route = in.route;
        out.u.result = (wire_result_t){.request_id = f->request_id, .layer = f->layer,
                                       .n_tokens = f->n_tokens};
        wire_msg_add_act(&out, f->result_dtype, x, t->rows, t->cols);
        wire_msg_deinit(&in);
        wire_msg_send(s, &out);
    }
    free(x);
}

static void *responder_main(void *arg)
{
    responder_t *r = arg;
    if (r->raw) raw_loop(r->sock);
    else proto_loop(r->sock);
    return NULL;
}

/* The socket is made and bound here and handed to the thread: pthread_create is the full
 * memory barrier ZeroMQ asks for when a socket moves between threads. */
static int start(responder_t *r, void *ctx, bool raw)
{
    memset(r, 0, sizeof(*r));
    r->raw = raw;
    r->sock = wire_sock_node_new(ctx, NULL);
    if (!r->sock || wire_sock_bind(r->sock, "tcp://127.0.0.1:*", r->endpoint,
                                   sizeof(r->endpoint)) != 0)
        return -1;
    return pthread_create(&r->th, NULL, responder_main, r) == 0 ? 0 : -1;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    double median_us, p90_us;
    uint64_t bytes; /* one way */
} rtt_t;

static void summarize(double *t, int n, uint64_t bytes, rtt_t *out)
{
    qsort(t, (size_t)n, sizeof(double), cmp_d);
    out->median_us = t[n / 2] * 1e6;
    out->p90_us = t[(n * 9) / 10] * 1e6;
    out->bytes = bytes;
}

/* FORWARD/RESULT round trips of n tokens in dtype for about `seconds`. */
static int time_proto(void *dealer, int n, wire_dtype_t dt, double seconds, double *t, int cap,
                      rtt_t *out)
{
    float *x = xmalloc(sizeof(float) * (size_t)n * N_EMBD), *y = xmalloc(sizeof(float) * (size_t)n * N_EMBD);
    uint32_t *n_sel = xmalloc(sizeof(uint32_t) * n), *ex = xmalloc(sizeof(uint32_t) * n * K_NODE);
    float *gate = xmalloc(sizeof(float) * n * K_NODE);
    uint64_t s = 7;
    for (size_t i = 0; i < (size_t)n * N_EMBD; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((int64_t)(s >> 40) - (1 << 23)) / (float)(1 << 23);
    }
    for (int i = 0; i < n; i++) {
        n_sel[i] = K_NODE;
        for (int j = 0; j < K_NODE; j++) ex[i * K_NODE + j] = (uint32_t)j, gate[i * K_NODE + j] = 0.25f;
    }
    int k = 0, err = 0;
    double t_end = wire_now() + seconds;
    while (k < cap && (k < 5 || wire_now() < t_end)) {
        double t0 = wire_now();
        wire_msg_t m;
        wire_msg_init(&m, WIRE_KIND_FORWARD);
        m.u.forward = (wire_forward_t){.request_id = (uint64_t)k + 1, .layer = 0,
                                       .n_tokens = (uint32_t)n, .n_sel = n_sel,
                                       .n_total = (uint32_t)n * K_NODE, .expert = ex,
                                       .gate = gate, .result_dtype = dt};
        if ((err = wire_msg_add_act(&m, dt, x, (uint32_t)n, N_EMBD)) != 0) {
            wire_msg_deinit(&m);
            break;
        }
        if ((err = wire_msg_send(dealer, &m)) != 0) break;
        wire_msg_t r;
        if ((err = wire_msg_recv(dealer, NULL, &r)) != 0) break;
        err = wire_act_unpack(r.tensors[0].dtype, r.tensors[0].data, r.tensors[0].bytes,
                              r.tensors[0].rows, r.tensors[0].cols, y);
        wire_msg_deinit(&r);
        if (err) break;
        t[k++] = wire_now() - t0;
    }
    if (!err && k == 0) err = -EIO;
    if (!err) summarize(t, k, (uint64_t)n * wire_dtype_row_bytes(dt, N_EMBD), out);
    free(x), free(y), free(n_sel), free(ex), free(gate);
    return err;
}

/* Raw ZeroMQ: a header-sized frame and a payload frame, echoed back. */
static int time_raw(void *dealer, uint64_t header, uint64_t payload, double seconds, double *t,
                    int cap, rtt_t *out)
{
    char *h = xcalloc(1, header), *p = xcalloc(1, payload);
    int k = 0;
    double t_end = wire_now() + seconds;
    while (k < cap && (k < 5 || wire_now() < t_end)) {
        double t0 = wire_now();
        if (zmq_send(dealer, h, header, ZMQ_SNDMORE) < 0 || zmq_send(dealer, p, payload, 0) < 0) {
            free(h), free(p);
            return -1;
        }
        int more = 1;
        while (more) {
            zmq_msg_t mm;
            zmq_msg_init(&mm);
            if (zmq_msg_recv(&mm, dealer, 0) < 0) {
                zmq_msg_close(&mm);
                free(h), free(p);
                return -1;
            }
            more = zmq_msg_more(&mm);
            zmq_msg_close(&mm);
        }
        t[k++] = wire_now() - t0;
    }
    summarize(t, k, header + payload, out);
    free(h), free(p);
    return 0;
}

static void stop(responder_t *r, void *dealer)
{
    if (r->raw) {
        zmq_send(dealer, "", 0, ZMQ_SNDMORE);
        zmq_send(dealer, "q", 1, 0);
        char b[4];
        zmq_recv(dealer, b, sizeof(b), 0);
        zmq_recv(dealer, b, sizeof(b), 0);
    } else {
        wire_msg_t m;
        wire_msg_init(&m, WIRE_KIND_HEARTBEAT);
        wire_msg_send(dealer, &m);
    }
    pthread_join(r->th, NULL);
    wire_sock_close(r->sock);
}

int bench_wire_main(int argc, char **argv)
{
    double seconds = 0.3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: moemesh-bench wire [--seconds S (0.3 per point)]\n");
            return 2;
        }
    }
    if (seconds <= 0 || seconds > 60) seconds = 0.3;
    void *ctx = zmq_ctx_new();
    responder_t rp, rr;
    if (start(&rp, ctx, false) != 0 || start(&rr, ctx, true) != 0) {
        fprintf(stderr, "wire: cannot bind on 127.0.0.1\n");
        return 1;
    }
    void *dp = wire_sock_coord_new(ctx, NULL), *dr = wire_sock_coord_new(ctx, NULL);
    zmq_connect(dp, rp.endpoint);
    zmq_connect(dr, rr.endpoint);
    const int cap = 200000;
    double *t = xmalloc(sizeof(double) * cap);
    const int toks[] = {1, 8, 64, 512};
    const wire_dtype_t dts[] = {WIRE_DTYPE_F32, WIRE_DTYPE_F16, WIRE_DTYPE_BF16, WIRE_DTYPE_Q8_0};
    printf("moemesh-bench wire: tcp://127.0.0.1, rows of %d, %d experts per token on the node, "
           "%.2f s per point\n\n", N_EMBD, K_NODE, seconds);
    printf("tokens dtype |  bytes/way | FORWARD/RESULT med  p90 us |  raw zmq med  p90 us | "
           "ratio | MB/s (both ways)\n");
    int rc = 0;
    for (size_t a = 0; a < sizeof(toks) / sizeof(toks[0]); a++) {
        for (size_t b = 0; b < sizeof(dts) / sizeof(dts[0]); b++) {
            rtt_t p, r;
            if (time_proto(dp, toks[a], dts[b], seconds, t, cap, &p) != 0) {
                fprintf(stderr, "wire: FORWARD round trip failed\n");
                rc = 1;
                goto out;
            }
            /* The header carries ids, selections and gates: about 9 bytes per selection. */
            uint64_t header = 32 + (uint64_t)toks[a] * (1 + K_NODE * 9);
            if (time_raw(dr, header, p.bytes, seconds, t, cap, &r) != 0) {
                fprintf(stderr, "wire: raw round trip failed\n");
                rc = 1;
                goto out;
            }
            printf("%6d %-5s | %10llu | %18.1f %7.1f | %11.1f %7.1f | %5.2f | %8.1f\n", toks[a],
                   wire_dtype_name(dts[b]), (unsigned long long)p.bytes, p.median_us, p.p90_us,
                   r.median_us, r.p90_us, p.median_us / r.median_us,
                   2.0 * p.bytes / p.median_us);
            fflush(stdout);
        }
    }
out:
    stop(&rp, dp);
    stop(&rr, dr);
    wire_sock_close(dp);
    wire_sock_close(dr);
    zmq_ctx_term(ctx);
    free(t);
    return rc;
}
