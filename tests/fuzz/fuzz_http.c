/* libFuzzer target: the coordinator's HTTP request path — llhttp parsing and the limits of
 * coordinator/http.c, then routing, authentication and JSON body validation in api.c, and for
 * requests that pass, prompt building, tokenizing and submission to the scheduler. The real
 * server runs as in `moemesh-coordinator serve` (a small model, 2 slots, API key set) on its
 * loop thread; each input is sent as the bytes of one TCP connection, which the client then
 * half-closes, and the target reads until the server closes it. A server that never closes
 * or stops answering /health afterwards is a failure too.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "coordinator/coord.h"
#include "wire/wire.h"

#define MODEL "../shared/golden/stories-moe-f32.gguf" /* relative to the repository root */

static uv_loop_t loop;
static coord_server_t *srv;
static uv_thread_t th;
static int port;

static void run_loop(void *arg)
{
    (void)arg;
    uv_run(&loop, UV_RUN_DEFAULT);
}

/* One connection: sends n bytes, half-closes, collects the reply into buf (cap bytes, the
 * rest dropped). Returns the bytes kept, or -1 when the server did not close within 60 s (a
 * generous bound: on a machine loaded 8x over, 10 s was once missed with no bug behind it). */
static long exchange(const void *data, size_t n, char *buf, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        perror("fuzz_http: connect");
        abort();
    }
    size_t off = 0;
    while (off < n) {
        ssize_t k = send(fd, (const char *)data + off, n - off, MSG_NOSIGNAL);
        if (k <= 0) break; /* the server may close early (a limit, a bad request line) */
        off += (size_t)k;
    }
    shutdown(fd, SHUT_WR);
    size_t got = 0;
    for (;;) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 60000) != 1) {
            close(fd);
            return -1;
        }
        char tmp[4096];
        ssize_t k = recv(fd, tmp, sizeof(tmp), 0);
        if (k <= 0) break;
        size_t keep = got + (size_t)k <= cap ? (size_t)k : cap - got;
        memcpy(buf + got, tmp, keep);
        got += keep;
    }
    close(fd);
    return (long)got;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    wire__log_level = -1; /* every bad request would be logged */
    coord_server_params_t p = coord_server_params_default();
    p.model = MODEL;
    p.port = 0;
    p.n_slots = 2;
    p.n_threads = 1;
    p.n_ctx = 128;
    p.max_tokens = 4;
    p.max_prompt = 64;
    p.max_body = 8192;
    p.max_header = 2048;
    p.timeout_ms = 2000;
    p.api_key = "fuzz-key";
    if (uv_loop_init(&loop) != 0 || !(srv = coord_server_new(&loop, &p))) abort();
    port = coord_server_port(srv);
    if (uv_thread_create(&th, run_loop, NULL) != 0) abort();
    static const char health[] = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    char buf[256];
    for (int i = 0; i < 1000; i++) { /* the model loads on a thread: wait for 200 */
        long n = exchange(health, sizeof(health) - 1, buf, sizeof(buf) - 1);
        if (n >= 12 && !memcmp(buf, "HTTP/1.1 200", 12)) return 0;
        usleep(10000);
    }
    fprintf(stderr, "fuzz_http: the server did not become ready\n");
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char buf[1 << 16];
    if (exchange(data, size, buf, sizeof(buf)) < 0) {
        fprintf(stderr, "fuzz_http: the server kept a half-closed connection open 60 s\n");
        abort();
    }
    /* Every 256 inputs: the server still answers a legitimate request. */
    static unsigned n_inputs;
    if (++n_inputs % 256 == 0) {
        static const char health[] = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
        long n = exchange(health, sizeof(health) - 1, buf, sizeof(buf) - 1);
        if (n < 12 || memcmp(buf, "HTTP/1.1 200", 12) != 0) {
            fprintf(stderr, "fuzz_http: /health no longer answers 200\n");
            abort();
        }
    }
    return 0;
}
