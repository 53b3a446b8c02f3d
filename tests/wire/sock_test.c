/* Tests for wire/sock.c: the options the protocol relies on are really set, ephemeral binds
 * report their port, and ZMQ_MAXMSGSIZE drops a TCP peer that sends an oversized frame while
 * other peers carry on. Sockets only on tcp://127.0.0.1 and inproc. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "wire/wire.h"

static int get_int(void *s, int opt)
{
    int v = -1;
    size_t len = sizeof(v);
    cr_assert_eq(zmq_getsockopt(s, opt, &v, &len), 0, "option %d", opt);
    return v;
}

Test(wire_sock, options_are_set_and_bind_reports_the_port)
{
    void *ctx = zmq_ctx_new();
    wire_limits_t lim = wire_limits_default();
    lim.max_frame_bytes = 123456;
    void *node = wire_sock_node_new(ctx, &lim);
    void *coord = wire_sock_coord_new(ctx, &lim);
    cr_assert(node && coord);
    void *socks[] = {node, coord};
    for (int i = 0; i < 2; i++) {
        int64_t max = 0;
        size_t len = sizeof(max);
        cr_assert_eq(zmq_getsockopt(socks[i], ZMQ_MAXMSGSIZE, &max, &len), 0);
        cr_assert_eq(max, 123456);
        cr_assert(get_int(socks[i], ZMQ_SNDHWM) > 0 && get_int(socks[i], ZMQ_SNDHWM) <= 1000);
        cr_assert(get_int(socks[i], ZMQ_RCVHWM) > 0 && get_int(socks[i], ZMQ_RCVHWM) <= 1000);
        cr_assert(get_int(socks[i], ZMQ_LINGER) >= 0 && get_int(socks[i], ZMQ_LINGER) <= 1000);
        cr_assert_gt(get_int(socks[i], ZMQ_HEARTBEAT_IVL), 0);
        cr_assert_gt(get_int(socks[i], ZMQ_HEARTBEAT_TIMEOUT), get_int(socks[i],
                                                                       ZMQ_HEARTBEAT_IVL));
    }
    cr_assert_eq(get_int(node, ZMQ_TYPE), ZMQ_ROUTER);
    cr_assert_eq(get_int(coord, ZMQ_TYPE), ZMQ_DEALER);
    cr_assert_eq(get_int(coord, ZMQ_IMMEDIATE), 1);

    char ep[256];
    cr_assert_eq(wire_sock_bind(node, "tcp://127.0.0.1:*", ep, sizeof(ep)), 0);
    cr_assert_eq(strncmp(ep, "tcp://127.0.0.1:", 16), 0, "%s", ep);
    cr_assert_gt(atoi(ep + 16), 0, "an ephemeral port was chosen: %s", ep);
    char tiny[8];
    cr_assert_eq(wire_sock_bind(coord, "tcp://127.0.0.1:*", tiny, sizeof(tiny)), -ENAMETOOLONG);

    wire_sock_close(coord);
    wire_sock_close(node);
    wire_sock_close(NULL);
    cr_assert_eq(zmq_ctx_term(ctx), 0);
}

Test(wire_sock, maxmsgsize_drops_an_oversized_tcp_sender, .timeout = 20)
{
    void *ctx = zmq_ctx_new();
    wire_limits_t lim = wire_limits_default();
    lim.max_frame_bytes = 4096;
    void *node = wire_sock_node_new(ctx, &lim);
    char ep[256];
    cr_assert_eq(wire_sock_bind(node, "tcp://127.0.0.1:*", ep, sizeof(ep)), 0);
    int ms = 1000;
    zmq_setsockopt(node, ZMQ_RCVTIMEO, &ms, sizeof(ms));

    /* A plain DEALER: what a hostile or buggy peer can do. */
    void *bad = zmq_socket(ctx, ZMQ_DEALER);
    cr_assert_eq(zmq_connect(bad, ep), 0);
    char *big = xcalloc(1, 8192);
    cr_assert_eq(zmq_send(bad, big, 8192, 0), 8192);
    free(big);
    wire_msg_t m;
    cr_assert_eq(wire_msg_recv(node, &lim, &m), -EAGAIN, "the oversized frame never arrives");

    void *good = wire_sock_coord_new(ctx, &lim);
    zmq_setsockopt(good, ZMQ_SNDTIMEO, &ms, sizeof(ms));
    cr_assert_eq(zmq_connect(good, ep), 0);
    wire_msg_init(&m, WIRE_KIND_HEARTBEAT);
    m.u.heartbeat.seq = 5;
    cr_assert_eq(wire_msg_send(good, &m), 0);
    ms = 3000;
    zmq_setsockopt(node, ZMQ_RCVTIMEO, &ms, sizeof(ms));
    cr_assert_eq(wire_msg_recv(node, &lim, &m), 0);
    cr_assert_eq(m.u.heartbeat.seq, 5);
    wire_msg_deinit(&m);

    int zero = 0;
    zmq_setsockopt(bad, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_close(bad);
    wire_sock_close(good);
    wire_sock_close(node);
    cr_assert_eq(zmq_ctx_term(ctx), 0);
}
