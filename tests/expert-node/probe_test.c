/* Tests for expert-node/probe.c and the capacity it puts in WELCOME: the probe measures a
 * positive rate, and wire_hello_t.capacity survives the wire (absent reads as 0, nonsense is
 * dropped to 0). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <unistd.h>
#include <zmq.h>

#include "expert-node/xnode-int.h"
#include "wire/wire.h"

Test(probe, capacity_is_measured_and_positive)
{
    float c1 = xnode__probe_capacity(1);
    cr_assert(c1 > 0 && isfinite(c1), "%g", c1);
}

/* One WELCOME with capacity cap through a node/coordinator socket pair; what arrives. */
static float round_trip(float cap)
{
    void *ctx = zmq_ctx_new();
    void *node = wire_sock_node_new(ctx, NULL), *coord = wire_sock_coord_new(ctx, NULL);
    int ms = 5000;
    zmq_setsockopt(coord, ZMQ_RCVTIMEO, &ms, sizeof(ms));
    zmq_setsockopt(node, ZMQ_RCVTIMEO, &ms, sizeof(ms));
    char base[64], ep[128];
    snprintf(base, sizeof(base), "inproc://probe-%d-%g", (int)getpid(), cap);
    cr_assert_eq(wire_sock_bind(node, base, ep, sizeof(ep)), 0);
    cr_assert_eq(zmq_connect(coord, ep), 0);
    wire_msg_t m, r;
    wire_msg_init(&m, WIRE_KIND_HELLO);
    m.u.hello = (wire_hello_t){.name = "x", .capacity = cap};
    cr_assert_eq(wire_msg_send(coord, &m), 0);
    cr_assert_eq(wire_msg_recv(node, NULL, &r), 0);
    float got = r.u.hello.capacity;
    wire_msg_deinit(&r);
    wire_sock_close(coord);
    wire_sock_close(node);
    zmq_ctx_term(ctx);
    return got;
}

Test(probe, capacity_travels_in_hello_and_welcome)
{
    cr_assert_float_eq(round_trip(12345.5f), 12345.5f, 0);
    cr_assert_float_eq(round_trip(0), 0, 0);
    cr_assert_float_eq(round_trip(-3), 0, 0);
    cr_assert_float_eq(round_trip(NAN), 0, 0);
}
