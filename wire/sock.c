/* Sockets for the expert-parallel protocol, with every option chosen on purpose. The socket
 * pattern itself (one DEALER per node on the coordinator, a ROUTER on each node) is argued in
 * wire/proto/moemesh.proto. Sockets come back unbound and unconnected so CURVE options, which
 * must precede bind/connect, can be set in between.
 */
#include "wire/wire.h"

#include <errno.h>
#include <string.h>
#include <zmq.h>

/* Queued messages per peer and direction. With ZMQ_MAXMSGSIZE bounding each frame, memory a
 * peer can pin is about HWM x frames x max_frame_bytes; 16 FORWARDs in flight per node is
 * already more pipelining than a layer's micro-batches need. */
#define HWM 16
/* Close waits at most this long for unsent messages: a dead peer must not hang shutdown,
 * and nothing in flight is worth more than that once we are closing. */
#define LINGER_MS 200
/* ZMTP PING every second; a peer silent for 5 s is disconnected (TCP alone can take minutes
 * to notice a vanished host); TTL asks the peer to drop us after 10 s of our silence. */
#define HEARTBEAT_IVL_MS 1000
#define HEARTBEAT_TIMEOUT_MS 5000
#define HEARTBEAT_TTL_MS 10000
/* A handshake (CURVE included) that has not finished in this time is dropped, so a client
 * that connects and stalls cannot hold a connection slot forever. */
#define HANDSHAKE_MS 5000

static int set_int(void *s, int opt, int v) { return zmq_setsockopt(s, opt, &v, sizeof(v)); }

static void *common(void *ctx, int type, const wire_limits_t *lim)
{
    wire_limits_t def = wire_limits_default();
    if (!lim) lim = &def;
    void *s = zmq_socket(ctx, type);
    if (!s) {
        LOG_ERR("zmq_socket: %s", zmq_strerror(zmq_errno()));
        return NULL;
    }
    /* The largest frame we accept; the header limit is smaller and checked after receive.
     * A peer sending more is disconnected by ZeroMQ before the frame is buffered whole. */
    int64_t max = lim->max_frame_bytes > INT64_MAX ? -1 : (int64_t)lim->max_frame_bytes;
    int rc = zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &max, sizeof(max));
    rc |= set_int(s, ZMQ_SNDHWM, HWM);
    rc |= set_int(s, ZMQ_RCVHWM, HWM);
    rc |= set_int(s, ZMQ_LINGER, LINGER_MS);
    rc |= set_int(s, ZMQ_HEARTBEAT_IVL, HEARTBEAT_IVL_MS);
    rc |= set_int(s, ZMQ_HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS);
    rc |= set_int(s, ZMQ_HEARTBEAT_TTL, HEARTBEAT_TTL_MS);
    rc |= set_int(s, ZMQ_HANDSHAKE_IVL, HANDSHAKE_MS);
    if (rc != 0) {
        LOG_ERR("zmq_setsockopt: %s", zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    return s;
}

void *wire_sock_node_new(void *ctx, const wire_limits_t *lim)
{
    void *s = common(ctx, ZMQ_ROUTER, lim);
    if (!s) return NULL;
    /* A reply to a coordinator that has gone fails with EHOSTUNREACH instead of vanishing,
     * so the node can log it and drop that request's state. */
    if (set_int(s, ZMQ_ROUTER_MANDATORY, 1) != 0) {
        LOG_ERR("ZMQ_ROUTER_MANDATORY: %s", zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    return s;
}

void *wire_sock_coord_new(void *ctx, const wire_limits_t *lim)
{
    void *s = common(ctx, ZMQ_DEALER, lim);
    if (!s) return NULL;
    /* Queue only on a completed connection: while the node is down, sends fail (EAGAIN after
     * ZMQ_SNDTIMEO) and the coordinator knows at once, instead of FORWARDs piling up and
     * arriving stale when the node comes back. */
    if (set_int(s, ZMQ_IMMEDIATE, 1) != 0) {
        LOG_ERR("ZMQ_IMMEDIATE: %s", zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    return s;
}

int wire_sock_bind(void *sock, const char *endpoint, char *out, size_t out_len)
{
    if (zmq_bind(sock, endpoint) != 0) return -zmq_errno();
    if (!out || out_len == 0) return 0;
    char buf[256];
    size_t len = sizeof(buf);
    if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, buf, &len) != 0) return -zmq_errno();
    if (len > out_len) return -ENAMETOOLONG; /* len counts the NUL */
    memcpy(out, buf, len);
    return 0;
}

void wire_sock_close(void *sock)
{
    if (sock) zmq_close(sock);
}
