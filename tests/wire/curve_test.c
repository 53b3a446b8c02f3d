/* Tests for wire/curve.c and wire/zap.c: key files and their modes, refusal of a readable
 * secret, and over tcp://127.0.0.1 a client with an allowed key gets its message through while
 * one with an unknown key is refused by the ZAP handler (nothing delivered in a bounded wait). */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "wire/wire.h"

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof(dir), "/tmp/wire-curve-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(const char *const *names, int n)
{
    char path[256];
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/%s.pub", dir, names[i]);
        unlink(path);
        snprintf(path, sizeof(path), "%s/%s.key", dir, names[i]);
        unlink(path);
    }
    cr_assert_eq(rmdir(dir), 0, "every file made was removed");
}

static mode_t mode_of(const char *name, const char *ext)
{
    char path[256];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s.%s", dir, name, ext);
    cr_assert_eq(stat(path, &st), 0);
    return st.st_mode & 0777;
}

Test(wire_curve, keygen_writes_modes_and_never_overwrites)
{
    make_dir();
    cr_assert_eq(wire_curve_keygen(dir, "node"), 0);
    cr_assert_eq(mode_of("node", "key"), 0400);
    cr_assert(mode_of("node", "pub") & 0400);
    cr_assert_eq(wire_curve_keygen(dir, "node"), -EEXIST);

    wire_keypair_t kp;
    cr_assert_eq(wire_curve_load(dir, "node", true, &kp), 0);
    cr_assert_eq(strlen(kp.public_z85), 40);
    cr_assert_eq(strlen(kp.secret_z85), 40);
    /* The public key derives from the secret: the pair belongs together. */
    char derived[41];
    cr_assert_eq(zmq_curve_public(derived, kp.secret_z85), 0);
    cr_assert_str_eq(derived, kp.public_z85);
    wire_keypair_wipe(&kp);
    cr_assert_eq(kp.secret_z85[0], 0);

    /* A secret others can read is refused; so is a missing one. */
    char path[256];
    snprintf(path, sizeof(path), "%s/node.key", dir);
    cr_assert_eq(chmod(path, 0644), 0);
    cr_assert_eq(wire_curve_load(dir, "node", true, &kp), -EPERM);
    cr_assert_eq(wire_curve_load(dir, "node", false, &kp), 0, "public only still loads");
    cr_assert_eq(wire_curve_load(dir, "nobody", false, &kp), -ENOENT);

    /* A corrupt public key is refused. */
    snprintf(path, sizeof(path), "%s/bad.pub", dir);
    FILE *f = fopen(path, "w");
    fputs("not a key\n", f);
    fclose(f);
    cr_assert_eq(wire_curve_load(dir, "bad", false, &kp), -EINVAL);
    remove_dir((const char *[]){"node", "bad"}, 2);
}

/* Connects a client with keys kp to ep, sends one HEARTBEAT (the send itself may time out
 * when the handshake never completes, as ZMQ_IMMEDIATE holds it), returns the socket. */
static void *client(void *ctx, const wire_keypair_t *kp, const char *server_pub, const char *ep)
{
    void *s = wire_sock_coord_new(ctx, NULL);
    cr_assert_not_null(s);
    int ms = 1000;
    zmq_setsockopt(s, ZMQ_SNDTIMEO, &ms, sizeof(ms));
    cr_assert_eq(wire_curve_client_setup(s, kp, server_pub), 0);
    cr_assert_eq(zmq_connect(s, ep), 0);
    wire_msg_t m;
    wire_msg_init(&m, WIRE_KIND_HEARTBEAT);
    m.u.heartbeat.seq = 42;
    int rc = wire_msg_send(s, &m);
    cr_assert(rc == 0 || rc == -EAGAIN, "%s", wire_strerror(rc));
    return s;
}

Test(wire_zap, allowed_key_gets_through_and_unknown_key_is_refused, .timeout = 20)
{
    make_dir();
    const char *names[] = {"server", "good", "bad"};
    wire_keypair_t kp[3];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(wire_curve_keygen(dir, names[i]), 0);
        cr_assert_eq(wire_curve_load(dir, names[i], true, &kp[i]), 0);
    }

    void *ctx = zmq_ctx_new();
    const char *allowed[] = {kp[1].public_z85};
    wire_zap_t *zap = wire_zap_new(ctx, allowed, 1);
    cr_assert_not_null(zap);
    cr_assert_null(wire_zap_new(ctx, allowed, 1), "one handler per context");

    void *node = wire_sock_node_new(ctx, NULL);
    cr_assert_eq(wire_curve_server_setup(node, &kp[0]), 0);
    char ep[256];
    cr_assert_eq(wire_sock_bind(node, "tcp://127.0.0.1:*", ep, sizeof(ep)), 0);
    int ms = 3000;
    zmq_setsockopt(node, ZMQ_RCVTIMEO, &ms, sizeof(ms));

    /* Unknown key first: nothing may arrive, and the handler must have said no. */
    void *bad = client(ctx, &kp[2], kp[0].public_z85, ep);
    ms = 1500;
    zmq_setsockopt(node, ZMQ_RCVTIMEO, &ms, sizeof(ms));
    wire_msg_t m;
    cr_assert_eq(wire_msg_recv(node, NULL, &m), -EAGAIN, "no message from an unknown key");
    uint64_t acc, den;
    wire_zap_counts(zap, &acc, &den);
    cr_assert_geq(den, 1, "the ZAP handler refused the handshake");
    cr_assert_eq(acc, 0);

    /* The allowed key. */
    void *good = client(ctx, &kp[1], kp[0].public_z85, ep);
    ms = 3000;
    zmq_setsockopt(node, ZMQ_RCVTIMEO, &ms, sizeof(ms));
    cr_assert_eq(wire_msg_recv(node, NULL, &m), 0);
    cr_assert_eq(m.kind, WIRE_KIND_HEARTBEAT);
    cr_assert_eq(m.u.heartbeat.seq, 42);
    wire_msg_deinit(&m);
    wire_zap_counts(zap, &acc, &den);
    cr_assert_geq(acc, 1);

    wire_sock_close(bad);
    wire_sock_close(good);
    wire_sock_close(node);
    wire_zap_free(zap);
    cr_assert_eq(zmq_ctx_term(ctx), 0);
    for (int i = 0; i < 3; i++) wire_keypair_wipe(&kp[i]);
    remove_dir(names, 3);
}
