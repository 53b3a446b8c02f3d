/* Tests for the HTTP API (coordinator/http.c, api.c, metrics.c, server.c) over real sockets on
 * 127.0.0.1 with ephemeral ports. The server runs in-process: its loop on a thread of the test,
 * the test speaking HTTP through a tiny blocking client with receive timeouts, so every test is
 * bounded in time. Each test stops the server, joins its thread and closes its loop.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "coordinator/coord.h"
#include "wire/wire.h"

#define MODEL "../shared/golden/stories-moe-f32.gguf"

/* ---- a tiny blocking HTTP client: enough HTTP/1.1 to check the server byte by byte ---- */

typedef struct {
    int fd;
    char *buf; /* (len) bytes received and not yet consumed */
    size_t len, cap;
} tc_conn_t;

typedef struct {
    int status;    /* 0: no response (EOF or timeout) */
    char *headers; /* NUL-terminated header block */
    char *body;    /* (body_len) bytes, NUL-terminated */
    size_t body_len;
} tc_resp_t;

static tc_conn_t tc_connect(int port)
{
    tc_conn_t c = {.fd = socket(AF_INET, SOCK_STREAM, 0)};
    cr_assert_geq(c.fd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(c.fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "connect: %s",
                 strerror(errno));
    return c;
}

static void tc_close(tc_conn_t *c)
{
    close(c->fd);
    free(c->buf);
    c->fd = -1;
    c->buf = NULL;
}

static void tc_send(tc_conn_t *c, const char *s)
{
    size_t n = strlen(s), off = 0;
    while (off < n) {
        ssize_t k = send(c->fd, s + off, n - off, MSG_NOSIGNAL);
        if (k <= 0) return; /* the server may have closed already; reading tells */
        off += (size_t)k;
    }
}

/* Reads more bytes (waiting at most 10 s); false on EOF, error or timeout. */
static bool tc_fill(tc_conn_t *c)
{
    struct pollfd pf = {.fd = c->fd, .events = POLLIN};
    if (poll(&pf, 1, 10000) != 1) return false;
    if (c->cap - c->len < 4096) {
        c->cap = c->cap * 2 + 8192;
        c->buf = realloc(c->buf, c->cap);
    }
    ssize_t k = recv(c->fd, c->buf + c->len, c->cap - c->len - 1, 0);
    if (k <= 0) return false;
    c->len += (size_t)k;
    c->buf[c->len] = 0;
    return true;
}

static void consume(tc_conn_t *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

/* Index just past "\r\n" at or after from, waiting for it; -1 on EOF. */
static long tc_line(tc_conn_t *c, size_t from)
{
    for (;;) {
        for (size_t i = from; i + 1 < c->len; i++)
            if (c->buf[i] == '\r' && c->buf[i + 1] == '\n') return (long)(i + 2);
        if (!tc_fill(c)) return -1;
    }
}

static bool tc_need(tc_conn_t *c, size_t n)
{
    while (c->len < n)
        if (!tc_fill(c)) return false;
    return true;
}

/* One chunk of a chunked body into *out (appended, NUL-terminated); returns its size, 0 for
 * the last chunk, -1 on EOF. */
static long tc_read_chunk(tc_conn_t *c, char **out, size_t *out_len)
{
    long e = tc_line(c, 0);
    if (e < 0) return -1;
    size_t n = strtoul(c->buf, NULL, 16);
    consume(c, (size_t)e);
    if (!tc_need(c, n + 2)) return -1;
    *out = realloc(*out, *out_len + n + 1);
    memcpy(*out + *out_len, c->buf, n);
    *out_len += n;
    (*out)[*out_len] = 0;
    consume(c, n + 2);
    return (long)n;
}

/* Status line and headers; the body is left for the caller. */
static tc_resp_t tc_read_head(tc_conn_t *c)
{
    tc_resp_t r = {0};
    size_t end = 0;
    for (;;) {
        char *p = c->len ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL;
        if (p) {
            end = (size_t)(p - c->buf) + 4;
            break;
        }
        if (!tc_fill(c)) return r;
    }
    r.headers = strndup(c->buf, end);
    consume(c, end);
    if (sscanf(r.headers, "HTTP/1.1 %d", &r.status) != 1) r.status = -1;
    return r;
}

static tc_resp_t tc_read(tc_conn_t *c)
{
    tc_resp_t r = tc_read_head(c);
    r.body = calloc(1, 1);
    if (!r.headers) return r;
    const char *cl = strcasestr(r.headers, "\r\nContent-Length:");
    if (strcasestr(r.headers, "\r\nTransfer-Encoding: chunked")) {
        while (tc_read_chunk(c, &r.body, &r.body_len) > 0) continue;
        tc_line(c, 0), consume(c, 2); /* the empty trailer */
    } else if (cl) {
        size_t n = strtoul(cl + 17, NULL, 10);
        if (!tc_need(c, n)) n = c->len;
        r.body = realloc(r.body, n + 1);
        memcpy(r.body, c->buf, n);
        r.body[n] = 0;
        r.body_len = n;
        consume(c, n);
    }
    return r;
}

static void tc_resp_free(tc_resp_t *r)
{
    free(r->headers);
    free(r->body);
}

/* True when the server closes the connection (within 10 s) without sending anything more. */
static bool tc_eof(tc_conn_t *c)
{
    if (c->len) return false;
    struct pollfd pf = {.fd = c->fd, .events = POLLIN};
    if (poll(&pf, 1, 10000) != 1) return false;
    char b;
    return recv(c->fd, &b, 1, 0) <= 0;
}

/* One request on a fresh connection with Connection: close. */
static tc_resp_t tc_request(int port, const char *method, const char *path, const char *body,
                            const char *extra)
{
    tc_conn_t c = tc_connect(port);
    size_t n = body ? strlen(body) : 0;
    char *req = malloc(n + 1024);
    snprintf(req, n + 1024,
             "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s%s%s\r\n%s", method,
             path, extra ? extra : "", body ? "Content-Type: application/json\r\n" : "",
             body ? "Content-Length: " : "", "", body ? body : "");
    if (body) {
        snprintf(req, n + 1024,
                 "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s"
                 "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                 method, path, extra ? extra : "", n, body);
    }
    tc_send(&c, req);
    free(req);
    tc_resp_t r = tc_read(&c);
    tc_close(&c);
    return r;
}

/* Prometheus text format, line by line: blank, a comment, or `name{label="v",...} value`. */
static bool tc_prometheus_ok(const char *text, char *why, size_t cap)
{
    size_t len = strlen(text);
    if (len && text[len - 1] != '\n') {
        snprintf(why, cap, "no final newline");
        return false;
    }
    for (const char *l = text; *l;) {
        const char *e = strchr(l, '\n');
        const char *p = l;
        bool ok = true;
        if (*p != '#' && p != e) {
            if (!(isalpha((unsigned char)*p) || *p == '_' || *p == ':')) ok = false;
            while (ok && (isalnum((unsigned char)*p) || *p == '_' || *p == ':')) p++;
            if (ok && *p == '{') {
                p++;
                while (ok && *p != '}') {
                    if (!(isalpha((unsigned char)*p) || *p == '_')) ok = false;
                    while (ok && (isalnum((unsigned char)*p) || *p == '_')) p++;
                    if (ok && (p[0] != '=' || p[1] != '"')) ok = false;
                    if (ok) p += 2;
                    while (ok && *p != '"') {
                        if (p >= e) ok = false;
                        else if (*p == '\\') p += 2;
                        else p++;
                    }
                    if (ok) p++;
                    if (ok && *p == ',') p++;
                    else if (ok && *p != '}') ok = false;
                }
                if (ok) p++;
            }
            if (ok && *p != ' ') ok = false;
            if (ok) {
                char *end;
                p++;
                strtod(p, &end);
                if (end == p && strncmp(p, "+Inf", 4) && strncmp(p, "-Inf", 4) &&
                    strncmp(p, "NaN", 3))
                    ok = false;
                else if (end == p)
                    end = (char *)p + (p[0] == 'N' ? 3 : 4);
                if (ok && end != e) ok = false; /* no timestamps are written */
            }
        }
        if (!ok) {
            snprintf(why, cap, "bad line: %.*s", (int)(e - l), l);
            return false;
        }
        l = e + 1;
    }
    return true;
}

/* ---- server fixture ---- */

typedef struct {
    uv_loop_t loop;
    coord_server_t *s;
    uv_thread_t th;
    int port;
} srv_t;

static void run_loop(void *arg)
{
    srv_t *x = arg;
    uv_run(&x->loop, UV_RUN_DEFAULT);
}

static coord_server_params_t params(void)
{
    coord_server_params_t p = coord_server_params_default();
    p.model = MODEL;
    p.port = 0;
    p.n_slots = 2;
    p.n_threads = 1;
    p.timeout_ms = 5000;
    p.grace_ms = 2000;
    return p;
}

/* Starts the server and waits (at most 10 s) until /health says 200. */
static void srv_start(srv_t *x, const coord_server_params_t *p)
{
    cr_assert_eq(uv_loop_init(&x->loop), 0);
    x->s = coord_server_new(&x->loop, p);
    cr_assert_not_null(x->s);
    x->port = coord_server_port(x->s);
    cr_assert_gt(x->port, 0);
    cr_assert_eq(uv_thread_create(&x->th, run_loop, x), 0);
    double t0 = wire_now();
    for (;;) {
        tc_resp_t r = tc_request(x->port, "GET", "/health", NULL, NULL);
        int st = r.status;
        tc_resp_free(&r);
        if (st == 200) break;
        cr_assert(st == 503, "health said %d while loading", st);
        cr_assert_lt(wire_now() - t0, 10.0, "model not ready within 10 s");
        usleep(20000);
    }
}

static void srv_stop(srv_t *x)
{
    coord_server_stop(x->s);
    cr_assert_eq(uv_thread_join(&x->th), 0);
    cr_assert_eq(coord_server_free(x->s), 0);
    cr_assert_eq(uv_loop_close(&x->loop), 0);
}

static json_t *body_json(const tc_resp_t *r)
{
    json_error_t e;
    json_t *j = json_loadb(r->body, r->body_len, 0, &e);
    cr_assert_not_null(j, "response is not JSON: %.*s", (int)r->body_len, r->body);
    return j;
}

/* Asserts an OpenAI-shaped error with the status and, when given, the param. */
static void expect_error(const tc_resp_t *r, int status, const char *param)
{
    cr_assert_eq(r->status, status, "status %d, want %d: %.*s", r->status, status,
                 (int)r->body_len, r->body);
    json_t *j = body_json(r);
    json_t *e = json_object_get(j, "error");
    cr_assert(json_is_object(e));
    cr_assert(json_is_string(json_object_get(e, "message")));
    cr_assert(json_is_string(json_object_get(e, "type")));
    cr_assert_not_null(json_object_get(e, "param"));
    cr_assert_not_null(json_object_get(e, "code"));
    if (param) cr_assert_str_eq(json_string_value(json_object_get(e, "param")), param);
    json_decref(j);
}

static tc_resp_t post(int port, const char *path, const char *body)
{
    return tc_request(port, "POST", path, body, NULL);
}

/* ---- tests ---- */

Test(http, health_models_tokenize_roundtrip, .timeout = 60)
{
    srv_t x;
    coord_server_params_t p = params();
    srv_start(&x, &p);
    tc_resp_t r = tc_request(x.port, "GET", "/health", NULL, NULL);
    cr_assert_eq(r.status, 200);
    json_t *j = body_json(&r);
    cr_assert_str_eq(json_string_value(json_object_get(j, "status")), "ok");
    json_decref(j);
    tc_resp_free(&r);

    r = tc_request(x.port, "GET", "/v1/models", NULL, NULL);
    cr_assert_eq(r.status, 200);
    j = body_json(&r);
    cr_assert_str_eq(json_string_value(json_object_get(j, "object")), "list");
    json_t *m = json_array_get(json_object_get(j, "data"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(m, "id")), "stories-moe-f32.gguf");
    cr_assert_str_eq(json_string_value(json_object_get(m, "object")), "model");
    json_decref(j);
    tc_resp_free(&r);

    const char *text = "Once upon a time, there was a little dog.";
    char body[256];
    snprintf(body, sizeof(body), "{\"content\": \"%s\"}", text);
    r = post(x.port, "/tokenize", body);
    cr_assert_eq(r.status, 200);
    j = body_json(&r);
    json_t *toks = json_object_get(j, "tokens");
    cr_assert(json_array_size(toks) > 5);
    cr_assert_eq(json_integer_value(json_array_get(toks, 0)), 1, "BOS first");
    char *dump = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    tc_resp_free(&r);

    /* {"tokens":[...]} is exactly what /detokenize takes. */
    r = post(x.port, "/detokenize", dump);
    free(dump);
    cr_assert_eq(r.status, 200);
    j = body_json(&r);
    cr_assert_str_eq(json_string_value(json_object_get(j, "content")), text);
    json_decref(j);
    tc_resp_free(&r);

    r = post(x.port, "/tokenize", "{\"content\": \"a b\", \"add_special\": false}");
    j = body_json(&r);
    cr_assert_neq(json_integer_value(json_array_get(json_object_get(j, "tokens"), 0)), 1);
    json_decref(j);
    tc_resp_free(&r);
    srv_stop(&x);
}

Test(http, bad_input_gets_4xx_and_server_stays_up, .timeout = 60)
{
    srv_t x;
    coord_server_params_t p = params();
    srv_start(&x, &p);
    static const struct {
        const char *path, *body, *param;
        int status;
    } cases[] = {
        {"/tokenize", "{\"content\": ", NULL, 400},
        {"/tokenize", "[1, 2]", NULL, 400},
        {"/tokenize", "{\"content\": 42}", "content", 400},
        {"/tokenize", "{\"content\": \"x\", \"add_special\": \"yes\"}", "add_special", 400},
        {"/detokenize", "{\"tokens\": \"1 2\"}", "tokens", 400},
        {"/detokenize", "{\"tokens\": [1, 99999]}", "tokens", 400},
        {"/detokenize", "{\"tokens\": [1, -3]}", "tokens", 400},
        {"/detokenize", "{\"tokens\": [1.5]}", "tokens", 400},
        {"/tokenize", "", NULL, 400},
        {"/v1/nothing", "{}", NULL, 404},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tc_resp_t r = post(x.port, cases[i].path, cases[i].body);
        expect_error(&r, cases[i].status, cases[i].param);
        tc_resp_free(&r);
    }
    tc_resp_t r = tc_request(x.port, "GET", "/tokenize", NULL, NULL);
    expect_error(&r, 405, NULL);
    tc_resp_free(&r);
    /* Not HTTP at all: 400 and the connection closes. */
    tc_conn_t c = tc_connect(x.port);
    tc_send(&c, "HELLO THERE\r\n\r\n");
    r = tc_read(&c);
    expect_error(&r, 400, NULL);
    tc_resp_free(&r);
    cr_assert(tc_eof(&c), "connection left open after a malformed request");
    tc_close(&c);
    r = tc_request(x.port, "GET", "/health", NULL, NULL);
    cr_assert_eq(r.status, 200);
    tc_resp_free(&r);
    srv_stop(&x);
}

Test(http, limits_body_and_headers, .timeout = 60)
{
    srv_t x;
    coord_server_params_t p = params();
    p.max_body = 4096;
    p.max_header = 1024;
    srv_start(&x, &p);
    /* Declared too large: refused before the body is read. */
    tc_conn_t c = tc_connect(x.port);
    tc_send(&c, "POST /tokenize HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n");
    tc_resp_t r = tc_read(&c);
    expect_error(&r, 413, NULL);
    tc_resp_free(&r);
    tc_close(&c);
    /* Chunked, growing past the limit. */
    c = tc_connect(x.port);
    tc_send(&c, "POST /tokenize HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    char chunk[1100];
    snprintf(chunk, sizeof(chunk), "400\r\n%01024d\r\n", 0);
    for (int i = 0; i < 5; i++) tc_send(&c, chunk);
    r = tc_read(&c);
    expect_error(&r, 413, NULL);
    tc_resp_free(&r);
    tc_close(&c);
    /* A chunked body within the limit works. */
    c = tc_connect(x.port);
    tc_send(&c, "POST /tokenize HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                "c\r\n{\"content\": \r\n7\r\n\"hello\"\r\n1\r\n}\r\n0\r\n\r\n");
    r = tc_read(&c);
    cr_assert_eq(r.status, 200, "%.*s", (int)r.body_len, r.body);
    tc_resp_free(&r);
    tc_close(&c);
    /* Headers too large. */
    char big[2048];
    snprintf(big, sizeof(big), "GET /health HTTP/1.1\r\nX-Pad: %01500d\r\n\r\n", 0);
    c = tc_connect(x.port);
    tc_send(&c, big);
    r = tc_read(&c);
    expect_error(&r, 431, NULL);
    tc_resp_free(&r);
    tc_close(&c);
    r = tc_request(x.port, "GET", "/health", NULL, NULL);
    cr_assert_eq(r.status, 200);
    tc_resp_free(&r);
    srv_stop(&x);
}

Test(http, slowloris_closed_after_timeout, .timeout = 60)
{
    srv_t x;
    coord_server_params_t p = params();
    p.timeout_ms = 300;
    srv_start(&x, &p);
    tc_conn_t c = tc_connect(x.port);
    double t0 = wire_now();
    /* Bytes keep coming, but the request never completes. */
    tc_send(&c, "GET /health HTTP/1.1\r\n");
    usleep(150000);
    tc_send(&c, "Host: x\r\n");
    tc_resp_t r = tc_read(&c);
    double dt = wire_now() - t0;
    expect_error(&r, 408, NULL);
    tc_resp_free(&r);
    cr_assert(tc_eof(&c));
    cr_assert(dt >= 0.25 && dt < 3.0, "closed after %.3f s", dt);
    tc_close(&c);
    /* An idle keep-alive connection is closed quietly. */
    c = tc_connect(x.port);
    cr_assert(tc_eof(&c));
    tc_close(&c);
    srv_stop(&x);
}

Test(http, api_key, .timeout = 60)
{
    srv_t x;
    coord_server_params_t p = params();
    p.api_key = "sekrit-key";
    srv_start(&x, &p);
    tc_resp_t r = tc_request(x.port, "GET", "/v1/models", NULL, NULL);
    expect_error(&r, 401, NULL);
    tc_resp_free(&r);
    r = tc_request(x.port, "GET", "/v1/models", NULL, "Authorization: Bearer sekrit-kez\r\n");
    expect_error(&r, 401, NULL);
    tc_resp_free(&r);
    r = tc_request(x.port, "GET", "/v1/models", NULL, "Authorization: Bearer sekrit-key2\r\n");
    expect_error(&r, 401, NULL);
    tc_resp_free(&r);
    r = tc_request(x.port, "POST", "/tokenize", "{\"content\":\"a\"}",
                   "Authorization: Bearer sekrit\r\n");
    expect_error(&r, 401, NULL);
    tc_resp_free(&r);
    r = tc_request(x.port, "GET", "/v1/models", NULL, "Authorization: Bearer sekrit-key\r\n");
    cr_assert_eq(r.status, 200);
    tc_resp_free(&r);
    r = tc_request(x.port, "GET", "/metrics", NULL, NULL);
    expect_error(&r, 401, NULL);
    tc_resp_free(&r);
    r = tc_request(x.port, "GET", "/health", NULL, NULL);
    cr_assert_eq(r.status, 200);
    tc_resp_free(&r);
    srv_stop(&x);
}

Test(http, keepalive_pipelined_in_order, .timeout = 60)
{
    srv_t x;
    coord_server_params_t p = params();
    p.cors_origin = "https://example.org";
    srv_start(&x, &p);
    tc_conn_t c = tc_connect(x.port);
    /* Three requests in one write: answers must come back in request order. */
    tc_send(&c, "POST /tokenize HTTP/1.1\r\nHost: t\r\nContent-Length: 17\r\n\r\n"
                "{\"content\":\"hi\"}\n"
                "GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n"
                "POST /detokenize HTTP/1.1\r\nHost: t\r\nContent-Length: 18\r\n\r\n"
                "{\"tokens\":[1,403]");
    tc_resp_t r = tc_read(&c);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "\"tokens\""), "%s", r.body);
    cr_assert(strstr(r.headers, "Access-Control-Allow-Origin: https://example.org"));
    tc_resp_free(&r);
    r = tc_read(&c);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "\"list\""), "%s", r.body);
    tc_resp_free(&r);
    /* The third body was cut short: finishing it later on the same connection works. */
    tc_send(&c, "}");
    r = tc_read(&c);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "\"content\""), "%s", r.body);
    tc_resp_free(&r);
    /* Same connection, again; then a CORS preflight. */
    tc_send(&c, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    r = tc_read(&c);
    cr_assert_eq(r.status, 200);
    tc_resp_free(&r);
    tc_send(&c, "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: t\r\nOrigin: x\r\n\r\n");
    r = tc_read(&c);
    cr_assert_eq(r.status, 204);
    cr_assert(strstr(r.headers, "Access-Control-Allow-Headers:"));
    tc_resp_free(&r);
    /* Connection: close is honoured. */
    tc_send(&c, "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    r = tc_read(&c);
    cr_assert_eq(r.status, 200);
    tc_resp_free(&r);
    cr_assert(tc_eof(&c));
    tc_close(&c);
    srv_stop(&x);
}

Test(http, metrics_are_prometheus_text, .timeout = 60)
{
    srv_t x;
    coord_server_params_t p = params();
    srv_start(&x, &p);
    tc_resp_t r = post(x.port, "/tokenize", "{");
    tc_resp_free(&r);
    r = tc_request(x.port, "GET", "/metrics", NULL, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.headers, "text/plain"));
    char why[256];
    cr_assert(tc_prometheus_ok(r.body, why, sizeof(why)), "%s", why);
    static const char *names[] = {
        "moemesh:requests_total{status=\"400\"} 1",
        "moemesh:prompt_tokens_total ",
        "moemesh:generation_tokens_total ",
        "moemesh:time_to_first_token_seconds_bucket{le=\"+Inf\"} ",
        "moemesh:inter_token_latency_seconds_count ",
        "moemesh:e2e_request_latency_seconds_sum ",
        "moemesh:queue_length ",
        "moemesh:slots_busy ",
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        cr_assert(strstr(r.body, names[i]), "no '%s' in\n%s", names[i], r.body);
    tc_resp_free(&r);
    srv_stop(&x);
}

/* The checker itself must reject what is not the text format. */
Test(http, prometheus_checker_rejects_garbage)
{
    char why[256];
    cr_assert(tc_prometheus_ok("# HELP a b\n# TYPE a counter\na 1\nb{x=\"y\",z=\"w\"} 2.5\n\n",
                               why, sizeof(why)), "%s", why);
    cr_assert(!tc_prometheus_ok("a\n", why, sizeof(why)));
    cr_assert(!tc_prometheus_ok("a{x=y} 1\n", why, sizeof(why)));
    cr_assert(!tc_prometheus_ok("1a 1\n", why, sizeof(why)));
    cr_assert(!tc_prometheus_ok("a 1 2 3\n", why, sizeof(why)));
    cr_assert(!tc_prometheus_ok("a one\n", why, sizeof(why)));
    cr_assert(!tc_prometheus_ok("a 1", why, sizeof(why)), "no final newline");
}

Test(http, bad_model_stops_with_error, .timeout = 60)
{
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    coord_server_params_t p = params();
    p.model = "/nonexistent/model.gguf";
    coord_server_t *s = coord_server_new(&loop, &p);
    cr_assert_not_null(s);
    /* The load fails on its thread; the server closes everything by itself. */
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(coord_server_free(s), 1);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

Test(http, port_in_use_fails_cleanly, .timeout = 60)
{
    srv_t x;
    coord_server_params_t p = params();
    srv_start(&x, &p);
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    coord_server_params_t q = params();
    q.port = x.port;
    cr_assert_null(coord_server_new(&loop, &q));
    cr_assert_eq(uv_loop_close(&loop), 0);
    srv_stop(&x);
}

/* The serve command as a process: listening line, SIGTERM, exit status 0. */
Test(http, serve_command_sigterm_exits_zero, .timeout = 60)
{
    int pipefd[2];
    cr_assert_eq(pipe(pipefd), 0);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        dup2(pipefd[1], 1);
        close(pipefd[0]);
        char *argv[] = {"moemesh-coordinator", "serve", "-m", MODEL, "--port", "0", "-np", "2",
                        "-t", "1", NULL};
        exit(coord_cmd_serve(10, argv));
    }
    close(pipefd[1]);
    char line[256] = {0};
    size_t n = 0;
    struct pollfd pf = {.fd = pipefd[0], .events = POLLIN};
    while (n < sizeof(line) - 1 && !strchr(line, '\n') && poll(&pf, 1, 10000) == 1) {
        ssize_t k = read(pipefd[0], line + n, sizeof(line) - 1 - n);
        if (k <= 0) break;
        n += (size_t)k;
    }
    close(pipefd[0]);
    int port = 0;
    cr_assert_eq(sscanf(line, "listening on http://127.0.0.1:%d", &port), 1, "got '%s'", line);
    cr_assert_gt(port, 0);
    int st = 0;
    for (int i = 0; i < 500 && st != 200; i++) {
        tc_resp_t r = tc_request(port, "GET", "/health", NULL, NULL);
        st = r.status;
        tc_resp_free(&r);
        if (st != 200) usleep(20000);
    }
    cr_assert_eq(st, 200);
    cr_assert_eq(kill(pid, SIGTERM), 0);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
}
