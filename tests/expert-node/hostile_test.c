/* Hostile peers against a moemesh-expert process on 127.0.0.1, with CURVE and without: a
 * plaintext ZeroMQ peer and a peer with an unknown key against a CURVE node, raw TCP junk,
 * and half-open connections (a partial ZMTP greeting, then silence) — each must be refused or
 * dropped (the handshake deadline is 5 s, wire/sock.c), while a legitimate coordinator client
 * keeps getting answers to HELLO throughout. The node runs as a child process (PDEATHSIG,
 * killed and reaped in the suite's fini); keys live in a temporary directory removed at the end.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "wire/wire.h"

static pid_t node = -1;
static char keydir[64], otherdir[64];

static void cleanup(void)
{
    if (node > 0) kill(node, SIGKILL), waitpid(node, NULL, 0);
    node = -1;
    char cmd[256];
    if (keydir[0]) snprintf(cmd, sizeof(cmd), "rm -rf %s %s", keydir, otherdir), system(cmd);
    keydir[0] = 0;
}

TestSuite(hostile, .init = NULL, .fini = cleanup, .timeout = 90);

static void prog(char *out, size_t cap)
{
    char self[PATH_MAX - 64];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    cr_assert(n > 0);
    self[n] = 0;
    *strrchr(self, '/') = 0;
    *strrchr(self, '/') = 0;
    snprintf(out, cap, "%s/bin/moemesh-expert", self);
}

/* Starts the node (with CURVE keys in keydir when curve) and returns its TCP port. */
static int start_node(bool curve)
{
    char p[PATH_MAX];
    prog(p, sizeof(p));
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t parent = getpid();
    node = fork();
    cr_assert_geq(node, 0);
    if (node == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        dup2(fds[1], 1);
        close(fds[0]), close(fds[1]);
        freopen("/dev/null", "w", stderr);
        if (curve) execl(p, p, "-l", "tcp://127.0.0.1:*", "--curve-keys", keydir, (char *)NULL);
        else execl(p, p, "-l", "tcp://127.0.0.1:*", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char line[160];
    size_t len = 0;
    while (len < sizeof(line) - 1) {
        struct pollfd pf = {fds[0], POLLIN, 0};
        cr_assert_eq(poll(&pf, 1, 10000), 1, "no 'listening on' line");
        cr_assert_eq(read(fds[0], line + len, 1), 1, "node exited");
        if (line[len] == '\n') break;
        len++;
    }
    close(fds[0]);
    line[len] = 0;
    int port = 0;
    cr_assert_eq(sscanf(line, "listening on tcp://127.0.0.1:%d", &port), 1, "%s", line);
    return port;
}

typedef struct {
    void *ctx, *sock;
} zc_t;

/* A coordinator-side socket; kp/server_pub NULL for plaintext. */
static zc_t zc_open(int port, const wire_keypair_t *kp, const char *server_pub)
{
    zc_t c = {zmq_ctx_new(), NULL};
    c.sock = wire_sock_coord_new(c.ctx, NULL);
    int ms = 1500;
    zmq_setsockopt(c.sock, ZMQ_RCVTIMEO, &ms, sizeof(ms));
    zmq_setsockopt(c.sock, ZMQ_SNDTIMEO, &ms, sizeof(ms));
    if (kp) cr_assert_eq(wire_curve_client_setup(c.sock, kp, server_pub), 0);
    char ep[64];
    snprintf(ep, sizeof(ep), "tcp://127.0.0.1:%d", port);
    cr_assert_eq(zmq_connect(c.sock, ep), 0);
    return c;
}

static void zc_close(zc_t *c)
{
    wire_sock_close(c->sock);
    zmq_ctx_term(c->ctx);
}

/* HELLO, then the first non-HEARTBEAT answer: 0 and WELCOME, or -EAGAIN when none came. */
static int zc_hello(zc_t *c)
{
    wire_msg_t m;
    wire_msg_init(&m, WIRE_KIND_HELLO);
    m.u.hello = (wire_hello_t){.name = "t", .dtypes = 1u << WIRE_DTYPE_F32, .model = ""};
    int rc = wire_msg_send(c->sock, &m);
    while (rc == 0) {
        rc = wire_msg_recv(c->sock, NULL, &m);
        if (rc) break;
        wire_kind_t k = m.kind;
        wire_msg_deinit(&m);
        if (k == WIRE_KIND_WELCOME) return 0;
        if (k != WIRE_KIND_HEARTBEAT) return -EPROTO;
    }
    return rc;
}

static int tcp_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "%s", strerror(errno));
    return fd;
}

/* Seconds until the peer closes fd (reads and drops what it sends), -1 after limit_s. */
static double closed_within(int fd, double limit_s)
{
    double t0 = wire_now();
    char buf[4096];
    while (wire_now() - t0 < limit_s) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 100) == 1) {
            ssize_t k = recv(fd, buf, sizeof(buf), 0);
            if (k <= 0) return wire_now() - t0;
        }
    }
    return -1;
}

#define N_HALF 32

/* Junk and half-open connections against the node on port; the legitimate client c (already
 * welcomed) must keep being answered. */
static void junk_and_half_open(int port, zc_t *legit)
{
    /* Half-open: the first 10 bytes of a ZMTP 3 greeting (signature and part of the version),
     * then nothing — many at once. */
    static const unsigned char greet[10] = {0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f};
    int half[N_HALF];
    for (int i = 0; i < N_HALF; i++) {
        half[i] = tcp_connect(port);
        cr_assert_eq(send(half[i], greet, sizeof(greet), MSG_NOSIGNAL), (ssize_t)sizeof(greet));
    }
    /* Junk: random bytes, which cannot be a greeting. */
    int junk = tcp_connect(port);
    unsigned char noise[4096];
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < sizeof(noise); i++) x ^= x << 13, x ^= x >> 7, x ^= x << 17,
                                                noise[i] = (unsigned char)x;
    send(junk, noise, sizeof(noise), MSG_NOSIGNAL);
    cr_assert_geq(closed_within(junk, 5), 0, "junk connection not closed within 5 s");
    close(junk);

    /* Meanwhile the legitimate client is served, several times over the handshake window. */
    for (int i = 0; i < 6; i++) {
        cr_assert_eq(zc_hello(legit), 0, "the legitimate client was not answered (round %d)", i);
        usleep(500000);
    }
    /* The half-open ones are dropped by the handshake deadline (5 s) plus slack. */
    for (int i = 0; i < N_HALF; i++) {
        cr_assert_geq(closed_within(half[i], 10), 0, "half-open connection %d still open", i);
        close(half[i]);
    }
    cr_assert_eq(zc_hello(legit), 0);
    cr_assert_eq(waitpid(node, NULL, WNOHANG), 0, "the node died");
}

Test(hostile, curve_node_refuses_strangers_and_junk_and_keeps_serving)
{
    signal(SIGPIPE, SIG_IGN);
    snprintf(keydir, sizeof(keydir), "/tmp/moemesh-hostile-%d", (int)getpid());
    snprintf(otherdir, sizeof(otherdir), "/tmp/moemesh-hostile-%d-other", (int)getpid());
    cr_assert_eq(mkdir(keydir, 0700), 0);
    cr_assert_eq(mkdir(otherdir, 0700), 0);
    cr_assert_eq(wire_curve_keygen(keydir, "node"), 0);
    cr_assert_eq(wire_curve_keygen(keydir, "coordinator"), 0);
    cr_assert_eq(wire_curve_keygen(otherdir, "coordinator"), 0);
    wire_keypair_t nodek, coord, stranger;
    cr_assert_eq(wire_curve_load(keydir, "node", false, &nodek), 0);
    cr_assert_eq(wire_curve_load(keydir, "coordinator", true, &coord), 0);
    cr_assert_eq(wire_curve_load(otherdir, "coordinator", true, &stranger), 0);
    int port = start_node(true);

    zc_t legit = zc_open(port, &coord, nodek.public_z85);
    cr_assert_eq(zc_hello(&legit), 0);

    zc_t plain = zc_open(port, NULL, NULL);
    cr_assert_eq(zc_hello(&plain), -EAGAIN, "a plaintext peer was answered");
    zc_close(&plain);
    zc_t unknown = zc_open(port, &stranger, nodek.public_z85);
    cr_assert_eq(zc_hello(&unknown), -EAGAIN, "an unknown key was answered");
    zc_close(&unknown);
    /* A client that has the right server key but a made-up key pair of its own. */
    wire_keypair_t wrong = coord;
    wrong.public_z85[0] = wrong.public_z85[0] == 'a' ? 'b' : 'a';
    zc_t forged = zc_open(port, &wrong, nodek.public_z85);
    cr_assert_eq(zc_hello(&forged), -EAGAIN, "a forged key was answered");
    zc_close(&forged);

    junk_and_half_open(port, &legit);
    zc_close(&legit);
    wire_keypair_wipe(&coord);
    wire_keypair_wipe(&stranger);
}

Test(hostile, plain_node_drops_junk_and_half_open_and_keeps_serving)
{
    signal(SIGPIPE, SIG_IGN);
    int port = start_node(false);
    zc_t legit = zc_open(port, NULL, NULL);
    cr_assert_eq(zc_hello(&legit), 0);
    junk_and_half_open(port, &legit);
    zc_close(&legit);
}
