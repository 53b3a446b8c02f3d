/* The ZAP handler (ZeroMQ RFC 27): authenticates CURVE clients for every socket of one context.
 * libzmq asks inproc://zeromq.zap.01 about each handshake; a thread of its own answers on a
 * REP socket, "200" for a CURVE public key in the allowed set, "400" for anything else.
 *
 * Invariants: the endpoint is bound before wire_zap_new returns, so no server socket of the
 * context ever handshakes without the handler (libzmq would then accept any key). The REP
 * socket and the thread's end of the control pair are used only by the handler thread after
 * pthread_create (which orders the hand-over); the owner only touches its end of the pair. Every
 * request gets exactly one reply, malformed or not, or REP's lockstep would wedge the handler.
 */
#include "wire/wire.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define MAX_FRAMES 8 /* 6 fixed frames + 1 credential for CURVE; more are drained */

struct wire_zap {
    pthread_t thread;
    bool started;
    void *rep;      /* handler thread only */
    void *ctl_back; /* handler thread only */
    void *ctl;      /* owner only: a message here stops the handler */
    uint8_t (*keys)[32];
    int n_keys;
    atomic_uint_fast64_t accepted, denied;
};

static bool frame_is(const zmq_msg_t *f, const char *s)
{
    size_t n = strlen(s);
    return zmq_msg_size((zmq_msg_t *)f) == n && memcmp(zmq_msg_data((zmq_msg_t *)f), s, n) == 0;
}

static bool allowed(const wire_zap_t *z, const uint8_t *key)
{
    for (int i = 0; i < z->n_keys; i++)
        if (memcmp(z->keys[i], key, 32) == 0) return true;
    return false;
}

/* Reads one request and answers it. */
static void handle(wire_zap_t *z)
{
    zmq_msg_t f[MAX_FRAMES];
    int n = 0;
    int more = 1;
    while (more) {
        zmq_msg_t tmp;
        zmq_msg_init(&tmp);
        if (zmq_msg_recv(&tmp, z->rep, 0) < 0) {
            zmq_msg_close(&tmp);
            break;
        }
        more = zmq_msg_more(&tmp);
        if (n < MAX_FRAMES) f[n++] = tmp;
        else zmq_msg_close(&tmp);
    }
    /* Frames: version, request id, domain, address, routing id, mechanism, credentials. */
    bool ok = n == 7 && frame_is(&f[0], "1.0") && frame_is(&f[5], "CURVE") &&
              zmq_msg_size(&f[6]) == 32 && allowed(z, zmq_msg_data(&f[6]));
    char user[41] = "";
    if (ok) zmq_z85_encode(user, zmq_msg_data(&f[6]), 32);
    atomic_fetch_add(ok ? &z->accepted : &z->denied, 1);

    const char *status = ok ? "200" : "400";
    const char *text = ok ? "OK" : "key not allowed";
    zmq_send(z->rep, "1.0", 3, ZMQ_SNDMORE);
    if (n >= 2) zmq_send(z->rep, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), ZMQ_SNDMORE);
    else zmq_send(z->rep, "", 0, ZMQ_SNDMORE);
    zmq_send(z->rep, status, 3, ZMQ_SNDMORE);
    zmq_send(z->rep, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(z->rep, user, strlen(user), ZMQ_SNDMORE); /* User-Id of accepted messages */
    zmq_send(z->rep, "", 0, 0);                         /* no metadata */
    for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
}

static void *run(void *arg)
{
    wire_zap_t *z = arg;
    for (;;) {
        zmq_pollitem_t items[2] = {{z->rep, 0, ZMQ_POLLIN, 0}, {z->ctl_back, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, -1) < 0) {
            if (zmq_errno() == EINTR) continue;
            break; /* ETERM: the context is going away */
        }
        if (items[1].revents & ZMQ_POLLIN) break;
        if (items[0].revents & ZMQ_POLLIN) handle(z);
    }
    zmq_close(z->rep);
    zmq_close(z->ctl_back);
    return NULL;
}

wire_zap_t *wire_zap_new(void *ctx, const char *const *allowed_keys, int n)
{
    wire_zap_t *z = xcalloc(1, sizeof(*z));
    z->keys = xcalloc((size_t)(n > 0 ? n : 1), sizeof(*z->keys));
    for (int i = 0; i < n; i++) {
        if (!allowed_keys[i] || strlen(allowed_keys[i]) != 40 ||
            !zmq_z85_decode(z->keys[i], allowed_keys[i])) {
            LOG_ERR("allowed key %d is not a 40-character Z85 key", i);
            goto fail;
        }
    }
    z->n_keys = n;
    char ctl_ep[64];
    snprintf(ctl_ep, sizeof(ctl_ep), "inproc://wire-zap-ctl-%p", (void *)z);
    z->rep = zmq_socket(ctx, ZMQ_REP);
    z->ctl_back = zmq_socket(ctx, ZMQ_PAIR);
    z->ctl = zmq_socket(ctx, ZMQ_PAIR);
    if (!z->rep || !z->ctl_back || !z->ctl) {
        LOG_ERR("zmq_socket: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    int zero = 0;
    zmq_setsockopt(z->ctl, ZMQ_LINGER, &zero, sizeof(zero));
    if (zmq_bind(z->rep, ZAP_ENDPOINT) != 0) {
        LOG_ERR("bind %s: %s (another handler in this context?)", ZAP_ENDPOINT,
                zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (zmq_bind(z->ctl_back, ctl_ep) != 0 || zmq_connect(z->ctl, ctl_ep) != 0) {
        LOG_ERR("control pair: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (pthread_create(&z->thread, NULL, run, z) != 0) {
        LOG_ERR("pthread_create failed");
        goto fail;
    }
    z->started = true;
    return z;
fail:
    wire_zap_free(z);
    return NULL;
}

void wire_zap_counts(const wire_zap_t *zap, uint64_t *accepted, uint64_t *denied)
{
    wire_zap_t *z = (wire_zap_t *)zap;
    if (accepted) *accepted = atomic_load(&z->accepted);
    if (denied) *denied = atomic_load(&z->denied);
}

void wire_zap_free(wire_zap_t *z)
{
    if (!z) return;
    if (z->started) {
        zmq_send(z->ctl, "", 0, 0);
        pthread_join(z->thread, NULL);
    } else {
        /* The thread never ran: its sockets are still ours to close. */
        if (z->rep) zmq_close(z->rep);
        if (z->ctl_back) zmq_close(z->ctl_back);
    }
    if (z->ctl) zmq_close(z->ctl);
    explicit_bzero(z->keys, sizeof(*z->keys) * (size_t)(z->n_keys > 0 ? z->n_keys : 1));
    free(z->keys);
    free(z);
}
