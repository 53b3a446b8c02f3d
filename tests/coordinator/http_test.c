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
#include "tsrv.h"
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
        /* The last chunk's read takes the empty line that ends the body. */
        while (tc_read_chunk(c, &r.body, &r.body_len) > 0) continue;
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

/* Prometheus text format, line by line: blank, a comment, or `name{label="v",...} value`.
 * Not static: http_cluster_test.c checks its /metrics with it too. */
bool tc_prometheus_ok(const char *text, char *why, size_t cap);
bool tc_prometheus_ok(const char *text, char *why, size_t cap)
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

static coord_server_params_t params(void)
{
    coord_server_params_t p = tsrv_params(MODEL);
    p.timeout_ms = 5000;
    p.grace_ms = 2000;
    return p;
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

/* One request (as tc_request) whose answer must have status. */
static void expect_status(int port, const char *method, const char *path, const char *body,
                          const char *extra, int status)
{
    tc_resp_t r = tc_request(port, method, path, body, extra);
    cr_assert_eq(r.status, status, "%s %s: %.*s", method, path, (int)r.body_len, r.body);
    tc_resp_free(&r);
}

/* One request (as tc_request) answered with an OpenAI-shaped error (expect_error). */
static void expect_request_error(int port, const char *method, const char *path,
                                 const char *body, const char *extra, int status,
                                 const char *param)
{
    tc_resp_t r = tc_request(port, method, path, body, extra);
    expect_error(&r, status, param);
    tc_resp_free(&r);
}

/* The JSON body of one request (as tc_request) answered with status (< 0: any). */
static json_t *answer_json(int port, const char *method, const char *path, const char *body,
                           int status)
{
    tc_resp_t r = tc_request(port, method, path, body, NULL);
    if (status >= 0)
        cr_assert_eq(r.status, status, "%s %s: %.*s", method, path, (int)r.body_len, r.body);
    json_t *j = body_json(&r);
    tc_resp_free(&r);
    return j;
}

/* Raw bytes on a fresh connection answered with an OpenAI-shaped error of status. */
static void expect_raw_error(int port, const char *raw, int status)
{
    tc_conn_t c = tc_connect(port);
    tc_send(&c, raw);
    tc_resp_t r = tc_read(&c);
    expect_error(&r, status, NULL);
    tc_resp_free(&r);
    tc_close(&c);
}

/* The server with p, once /health says 200 (10 s at most; only 503 before). */
static void start_with(tsrv_t *x, const coord_server_params_t *p)
{
    tsrv_start(x, p, 10, true);
}

/* The server with params(). */
static void start(tsrv_t *x)
{
    coord_server_params_t p = params();
    start_with(x, &p);
}

/* ---- tests ---- */

Test(http, health_models_tokenize_roundtrip, .timeout = 60)
{
    tsrv_t x;
    start(&x);
    json_t *j = answer_json(x.port, "GET", "/health", NULL, 200);
    cr_assert_str_eq(json_string_value(json_object_get(j, "status")), "ok");
    json_decref(j);

    j = answer_json(x.port, "GET", "/v1/models", NULL, 200);
    cr_assert_str_eq(json_string_value(json_object_get(j, "object")), "list");
    json_t *m = json_array_get(json_object_get(j, "data"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(m, "id")), "stories-moe-f32.gguf");
    cr_assert_str_eq(json_string_value(json_object_get(m, "object")), "model");
    json_decref(j);

    const char *text = "Once upon a time, there was a little dog.";
    char body[256];
    snprintf(body, sizeof(body), "{\"content\": \"%s\"}", text);
    j = answer_json(x.port, "POST", "/tokenize", body, 200);
    json_t *toks = json_object_get(j, "tokens");
    cr_assert(json_array_size(toks) > 5);
    cr_assert_eq(json_integer_value(json_array_get(toks, 0)), 1, "BOS first");
    char *dump = json_dumps(j, JSON_COMPACT);
    json_decref(j);

    /* {"tokens":[...]} is exactly what /detokenize takes. */
    j = answer_json(x.port, "POST", "/detokenize", dump, 200);
    free(dump);
    cr_assert_str_eq(json_string_value(json_object_get(j, "content")), text);
    json_decref(j);

    j = answer_json(x.port, "POST", "/tokenize", "{\"content\": \"a b\", \"add_special\": false}",
                    -1);
    cr_assert_neq(json_integer_value(json_array_get(json_object_get(j, "tokens"), 0)), 1);
    json_decref(j);
    tsrv_stop(&x);
}

Test(http, bad_input_gets_4xx_and_server_stays_up, .timeout = 60)
{
    tsrv_t x;
    start(&x);
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
        expect_request_error(x.port, "POST", cases[i].path, cases[i].body, NULL,
                             cases[i].status, cases[i].param);
    }
    expect_request_error(x.port, "GET", "/tokenize", NULL, NULL, 405, NULL);
    /* Not HTTP at all: 400 and the connection closes. */
    tc_conn_t c = tc_connect(x.port);
    tc_send(&c, "HELLO THERE\r\n\r\n");
    tc_resp_t r = tc_read(&c);
    expect_error(&r, 400, NULL);
    tc_resp_free(&r);
    cr_assert(tc_eof(&c), "connection left open after a malformed request");
    tc_close(&c);
    /* Upgrades are answered and the connection closed; nothing after them is parsed. */
    c = tc_connect(x.port);
    tc_send(&c, "GET /health HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
                "Upgrade: websocket\r\n\r\nGET /health HTTP/1.1\r\n\r\n");
    r = tc_read(&c);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.headers, "Connection: close"));
    tc_resp_free(&r);
    cr_assert(tc_eof(&c));
    tc_close(&c);
    expect_status(x.port, "GET", "/health", NULL, NULL, 200);
    tsrv_stop(&x);
}

Test(http, limits_body_and_headers, .timeout = 60)
{
    tsrv_t x;
    coord_server_params_t p = params();
    p.max_body = 4096;
    p.max_header = 1024;
    start_with(&x, &p);
    /* Declared too large: refused before the body is read. */
    expect_raw_error(x.port,
                     "POST /tokenize HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n",
                     413);
    /* Chunked, growing past the limit. */
    tc_conn_t c = tc_connect(x.port);
    tc_send(&c, "POST /tokenize HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    char chunk[1100];
    snprintf(chunk, sizeof(chunk), "400\r\n%01024d\r\n", 0);
    for (int i = 0; i < 5; i++) tc_send(&c, chunk);
    tc_resp_t r = tc_read(&c);
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
    expect_raw_error(x.port, big, 431);
    expect_status(x.port, "GET", "/health", NULL, NULL, 200);
    tsrv_stop(&x);
}

Test(http, slowloris_closed_after_timeout, .timeout = 60)
{
    tsrv_t x;
    coord_server_params_t p = params();
    p.timeout_ms = 300;
    start_with(&x, &p);
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
    tsrv_stop(&x);
}

Test(http, api_key, .timeout = 60)
{
    tsrv_t x;
    coord_server_params_t p = params();
    p.api_key = "sekrit-key";
    start_with(&x, &p);
    expect_request_error(x.port, "GET", "/v1/models", NULL, NULL, 401, NULL);
    expect_request_error(x.port, "GET", "/v1/models", NULL,
                         "Authorization: Bearer sekrit-kez\r\n", 401, NULL);
    expect_request_error(x.port, "GET", "/v1/models", NULL,
                         "Authorization: Bearer sekrit-key2\r\n", 401, NULL);
    expect_request_error(x.port, "POST", "/tokenize", "{\"content\":\"a\"}",
                         "Authorization: Bearer sekrit\r\n", 401, NULL);
    expect_status(x.port, "GET", "/v1/models", NULL, "Authorization: Bearer sekrit-key\r\n",
                  200);
    expect_request_error(x.port, "GET", "/metrics", NULL, NULL, 401, NULL);
    expect_status(x.port, "GET", "/health", NULL, NULL, 200);
    tsrv_stop(&x);
}

Test(http, keepalive_pipelined_in_order, .timeout = 60)
{
    tsrv_t x;
    coord_server_params_t p = params();
    p.cors_origin = "https://example.org";
    start_with(&x, &p);
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
    tsrv_stop(&x);
}

Test(http, connection_limit, .timeout = 60)
{
    tsrv_t x;
    coord_server_params_t p = params();
    p.max_conns = 2;
    start_with(&x, &p);
    tc_conn_t a = tc_connect(x.port), b = tc_connect(x.port);
    /* Both held open: the server has taken them once the first answers. */
    tc_send(&a, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    tc_resp_t r = tc_read(&a);
    cr_assert_eq(r.status, 200);
    tc_resp_free(&r);
    tc_send(&b, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    r = tc_read(&b);
    cr_assert_eq(r.status, 200);
    tc_resp_free(&r);
    tc_conn_t c = tc_connect(x.port);
    r = tc_read(&c);
    expect_error(&r, 503, NULL);
    tc_resp_free(&r);
    cr_assert(tc_eof(&c));
    tc_close(&c);
    tc_close(&a);
    tc_close(&b);
    /* Room again once the server has seen them go. */
    double t0 = wire_now();
    for (;;) {
        r = tc_request(x.port, "GET", "/health", NULL, NULL);
        int st = r.status;
        tc_resp_free(&r);
        if (st == 200) break;
        cr_assert_eq(st, 503);
        cr_assert_lt(wire_now() - t0, 5.0);
        usleep(10000);
    }
    tsrv_stop(&x);
}

Test(http, metrics_are_prometheus_text, .timeout = 60)
{
    tsrv_t x;
    start(&x);
    tc_resp_t r = post(x.port, "/tokenize", "{");
    tc_resp_free(&r);
    tc_conn_t c = tc_connect(x.port);
    tc_send(&c, "NOT HTTP\r\n\r\n");
    r = tc_read(&c);
    cr_assert_eq(r.status, 400);
    tc_resp_free(&r);
    tc_close(&c);
    r = tc_request(x.port, "GET", "/metrics", NULL, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.headers, "text/plain"));
    char why[256];
    cr_assert(tc_prometheus_ok(r.body, why, sizeof(why)), "%s", why);
    static const char *names[] = {
        "moemesh:requests_total{status=\"400\"} 2",
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
    tsrv_stop(&x);
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
    tsrv_t x;
    start(&x);
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    coord_server_params_t q = params();
    q.port = x.port;
    cr_assert_null(coord_server_new(&loop, &q));
    cr_assert_eq(uv_loop_close(&loop), 0);
    tsrv_stop(&x);
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

/* ---- generation (needs the scheduler, coordinator/sched.c) ---- */

/* The smallest generation works before a test relies on more. */
static void need_generation(int port)
{
    expect_status(port, "POST", "/v1/completions", "{\"prompt\":\"a\",\"max_tokens\":1}", NULL,
                  200);
}

typedef struct {
    char *text;            /* concatenated content of every chunk */
    char finish[16];
    int n_chunks, prompt_tokens, completion_tokens; /* usage: -1 when absent */
    bool done;             /* data: [DONE] seen */
    bool leaked;           /* some chunk text contained the `watch` string */
} stream_t;

/* Sends a streamed request on c and reads the SSE events to the end. */
static stream_t read_stream(tc_conn_t *c, const char *path, const char *body, bool chat,
                            const char *watch)
{
    char req[4096];
    snprintf(req, sizeof(req),
             "POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n%s", path, strlen(body),
             body);
    tc_send(c, req);
    tc_resp_t h = tc_read_head(c);
    cr_assert_eq(h.status, 200);
    cr_assert(strstr(h.headers, "text/event-stream"));
    cr_assert(strstr(h.headers, "Transfer-Encoding: chunked"));
    tc_resp_free(&h);
    stream_t s = {.text = calloc(1, 1), .prompt_tokens = -1, .completion_tokens = -1};
    size_t tlen = 0;
    char *raw = NULL;
    size_t rlen = 0;
    cr_assert(tc_read_chunk(c, &raw, &rlen) > 0);
    while (tc_read_chunk(c, &raw, &rlen) > 0) continue;
    /* Events are "data: ...\n\n", whatever the chunking. */
    for (char *ev = raw; ev && *ev;) {
        char *end = strstr(ev, "\n\n");
        cr_assert_not_null(end, "unterminated event");
        *end = 0;
        cr_assert(!strncmp(ev, "data: ", 6), "event '%s'", ev);
        const char *d = ev + 6;
        if (!strcmp(d, "[DONE]")) {
            s.done = true;
        } else {
            cr_assert(!s.done, "data after [DONE]");
            json_t *j = json_loads(d, 0, NULL);
            cr_assert_not_null(j, "bad chunk %s", d);
            cr_assert_str_eq(json_string_value(json_object_get(j, "object")),
                             chat ? "chat.completion.chunk" : "text_completion");
            json_t *u = json_object_get(j, "usage");
            if (json_is_object(u)) {
                s.prompt_tokens = (int)json_integer_value(json_object_get(u, "prompt_tokens"));
                s.completion_tokens =
                    (int)json_integer_value(json_object_get(u, "completion_tokens"));
            }
            json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
            if (ch) {
                json_t *t = chat ? json_object_get(json_object_get(ch, "delta"), "content")
                                 : json_object_get(ch, "text");
                if (json_is_string(t)) {
                    size_t n = json_string_length(t);
                    if (watch && strstr(json_string_value(t), watch)) s.leaked = true;
                    s.text = realloc(s.text, tlen + n + 1);
                    memcpy(s.text + tlen, json_string_value(t), n + 1);
                    tlen += n;
                }
                json_t *f = json_object_get(ch, "finish_reason");
                if (json_is_string(f)) snprintf(s.finish, sizeof(s.finish), "%s",
                                                json_string_value(f));
            }
            s.n_chunks++;
            json_decref(j);
        }
        ev = end + 2;
    }
    free(raw);
    return s;
}

typedef struct {
    char *text;
    char finish[16];
    int prompt_tokens, completion_tokens;
} whole_t;

static whole_t complete(int port, const char *path, const char *body, bool chat)
{
    json_t *j = answer_json(port, "POST", path, body, 200);
    cr_assert_str_eq(json_string_value(json_object_get(j, "object")),
                     chat ? "chat.completion" : "text_completion");
    cr_assert(json_is_string(json_object_get(j, "id")));
    cr_assert(json_is_integer(json_object_get(j, "created")));
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    cr_assert_eq(json_integer_value(json_object_get(ch, "index")), 0);
    json_t *t = chat ? json_object_get(json_object_get(ch, "message"), "content")
                     : json_object_get(ch, "text");
    whole_t w = {.text = strdup(json_string_value(t))};
    snprintf(w.finish, sizeof(w.finish), "%s",
             json_string_value(json_object_get(ch, "finish_reason")));
    json_t *u = json_object_get(j, "usage");
    w.prompt_tokens = (int)json_integer_value(json_object_get(u, "prompt_tokens"));
    w.completion_tokens = (int)json_integer_value(json_object_get(u, "completion_tokens"));
    cr_assert_eq(json_integer_value(json_object_get(u, "total_tokens")),
                 w.prompt_tokens + w.completion_tokens);
    json_decref(j);
    return w;
}

static int count_tokens(int port, const char *text)
{
    char body[512];
    snprintf(body, sizeof(body), "{\"content\":\"%s\"}", text);
    json_t *j = answer_json(port, "POST", "/tokenize", body, -1);
    int n = (int)json_array_size(json_object_get(j, "tokens"));
    json_decref(j);
    return n;
}

Test(http_gen, streamed_equals_whole_and_usage, .timeout = 120)
{
    tsrv_t x;
    start(&x);
    need_generation(x.port);
    const char *body = "{\"prompt\":\"Once upon a time\",\"max_tokens\":24,\"temperature\":0}";
    whole_t w = complete(x.port, "/v1/completions", body, false);
    cr_assert_str_eq(w.finish, "length");
    cr_assert_eq(w.completion_tokens, 24);
    cr_assert_eq(w.prompt_tokens, count_tokens(x.port, "Once upon a time"));
    cr_assert_gt(strlen(w.text), 10);
    tc_conn_t c = tc_connect(x.port);
    stream_t s = read_stream(&c,
                             "/v1/completions",
                             "{\"prompt\":\"Once upon a time\",\"max_tokens\":24,\"temperature\":0,"
                             "\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
                             false, NULL);
    cr_assert(s.done);
    cr_assert_str_eq(s.text, w.text);
    cr_assert_str_eq(s.finish, "length");
    cr_assert_eq(s.prompt_tokens, w.prompt_tokens);
    cr_assert_eq(s.completion_tokens, 24);
    cr_assert_gt(s.n_chunks, 3, "the text came in one piece");
    free(s.text);
    /* The connection is still usable after a stream. */
    tc_send(&c, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    tc_resp_t r = tc_read(&c);
    cr_assert_eq(r.status, 200);
    tc_resp_free(&r);
    free(w.text);

    /* Chat, with the model's (ChatML fallback) template. */
    const char *chat = "{\"model\":\"x\",\"messages\":[{\"role\":\"system\",\"content\":\"Be kind.\"},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Tell a story\"}]}],"
                       "\"max_tokens\":16,\"temperature\":0,\"user\":\"u1\",\"unknown_field\":[1]";
    char b1[1024], b2[1024];
    snprintf(b1, sizeof(b1), "%s}", chat);
    snprintf(b2, sizeof(b2), "%s,\"stream\":true}", chat);
    w = complete(x.port, "/v1/chat/completions", b1, true);
    s = read_stream(&c, "/v1/chat/completions", b2, true, NULL);
    cr_assert_str_eq(s.text, w.text);
    cr_assert_str_eq(s.finish, w.finish);
    cr_assert_eq(s.completion_tokens, -1, "usage only when asked for");
    cr_assert(s.done);
    free(s.text);
    free(w.text);
    tc_close(&c);
    tsrv_stop(&x);
}

Test(http_gen, stop_string_never_leaks, .timeout = 120)
{
    tsrv_t x;
    start(&x);
    need_generation(x.port);
    whole_t w = complete(x.port, "/v1/completions",
                         "{\"prompt\":\"Once upon a time\",\"max_tokens\":40,\"temperature\":0}",
                         false);
    size_t len = strlen(w.text);
    cr_assert_gt(len, 30);
    /* A stop string from the middle of the greedy text, likely spanning two tokens. */
    char stop[8];
    snprintf(stop, sizeof(stop), "%.5s", w.text + len / 2);
    cr_assert(!strchr(stop, '"') && !strchr(stop, '\\') && !strchr(stop, '\n'));
    size_t cut = (size_t)(strstr(w.text, stop) - w.text);
    char body[512];
    snprintf(body, sizeof(body),
             "{\"prompt\":\"Once upon a time\",\"max_tokens\":40,\"temperature\":0,"
             "\"stop\":[\"zzzz\",\"%s\"]%s}", stop, "");
    whole_t s1 = complete(x.port, "/v1/completions", body, false);
    cr_assert_eq(strlen(s1.text), cut, "'%s' stopped at '%s'", s1.text, stop);
    cr_assert(!strncmp(s1.text, w.text, cut));
    cr_assert_str_eq(s1.finish, "stop");
    snprintf(body, sizeof(body),
             "{\"prompt\":\"Once upon a time\",\"max_tokens\":40,\"temperature\":0,"
             "\"stop\":\"%s\",\"stream\":true}", stop);
    tc_conn_t c = tc_connect(x.port);
    stream_t s = read_stream(&c, "/v1/completions", body, false, stop);
    cr_assert_str_eq(s.text, s1.text);
    cr_assert_str_eq(s.finish, "stop");
    cr_assert(!s.leaked);
    free(s.text), free(s1.text), free(w.text);
    tc_close(&c);
    tsrv_stop(&x);
}

Test(http_gen, bad_generation_fields, .timeout = 120)
{
    tsrv_t x;
    coord_server_params_t p = params();
    p.max_prompt = 8;
    p.max_tokens = 50;
    start_with(&x, &p);
    need_generation(x.port);
    static const struct {
        const char *path, *body, *param;
    } cases[] = {
        {"/v1/completions", "{\"prompt\":\"a\",\"n\":2}", "n"},
        {"/v1/completions", "{\"prompt\":\"a\",\"temperature\":\"hot\"}", "temperature"},
        {"/v1/completions", "{\"prompt\":\"a\",\"temperature\":9}", "temperature"},
        {"/v1/completions", "{\"prompt\":\"a\",\"max_tokens\":0}", "max_tokens"},
        {"/v1/completions", "{\"prompt\":\"a\",\"max_tokens\":51}", "max_tokens"},
        {"/v1/completions", "{\"prompt\":\"a\",\"max_tokens\":1.5}", "max_tokens"},
        {"/v1/completions", "{\"prompt\":\"a\",\"stop\":5}", "stop"},
        {"/v1/completions", "{\"prompt\":\"a\",\"stop\":[\"\"]}", "stop"},
        {"/v1/completions", "{\"prompt\":\"a\",\"top_k\":\"3\"}", "top_k"},
        {"/v1/completions", "{\"prompt\":\"a\",\"top_p\":2}", "top_p"},
        {"/v1/completions", "{\"prompt\":\"a\",\"seed\":\"1\"}", "seed"},
        {"/v1/completions", "{\"prompt\":\"a\",\"stream\":1}", "stream"},
        {"/v1/completions", "{\"prompt\":\"a\",\"stream_options\":3}", "stream_options"},
        {"/v1/completions", "{\"prompt\":\"a\",\"logprobs\":50}", "logprobs"},
        {"/v1/completions", "{\"prompt\":\"a\",\"presence_penalty\":3}", "presence_penalty"},
        {"/v1/completions", "{\"prompt\":[\"a\",\"b\"]}", "prompt"},
        {"/v1/completions", "{\"prompt\":[1,100000]}", "prompt"},
        {"/v1/completions", "{}", "prompt"},
        {"/v1/completions", "{\"prompt\":\"one two three four five six seven eight nine ten\"}",
         "prompt"},
        {"/v1/chat/completions", "{\"messages\":[]}", "messages"},
        {"/v1/chat/completions", "{\"messages\":[{\"content\":\"hi\"}]}", "messages[0].role"},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":7}]}",
         "messages[0].content"},
        {"/v1/chat/completions",
         "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"top_logprobs\":21}",
         "top_logprobs"},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"model\":1}",
         "model"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        expect_request_error(x.port, "POST", cases[i].path, cases[i].body, NULL, 400,
                             cases[i].param);
    }
    /* Nulls count as absent, unknown fields are ignored. */
    whole_t w = complete(x.port, "/v1/completions",
                         "{\"prompt\":[1,403],\"max_tokens\":3,\"temperature\":null,"
                         "\"stop\":null,\"frobnicate\":{}}", false);
    cr_assert_eq(w.prompt_tokens, 2);
    free(w.text);
    tsrv_stop(&x);
}

static int metric(int port, const char *name)
{
    tc_resp_t r = tc_request(port, "GET", "/metrics", NULL, NULL);
    /* At a line start, so the # HELP line naming it does not count. */
    char key[256];
    snprintf(key, sizeof(key), "\n%s", name);
    const char *p = strstr(r.body, key);
    int v = p ? atoi(p + strlen(key)) : -1;
    tc_resp_free(&r);
    return v;
}

Test(http_gen, disconnect_mid_stream_frees_the_slot, .timeout = 120)
{
    tsrv_t x;
    coord_server_params_t p = params();
    p.n_slots = 1;
    start_with(&x, &p);
    need_generation(x.port);
    int gen0 = metric(x.port, "moemesh:generation_tokens_total ");
    tc_conn_t c = tc_connect(x.port);
    const char *body = "{\"prompt\":\"Once upon a time\",\"max_tokens\":110,\"stream\":true,"
                       "\"temperature\":0}";
    char req[512];
    snprintf(req, sizeof(req), "POST /v1/completions HTTP/1.1\r\nHost: t\r\n"
             "Content-Length: %zu\r\n\r\n%s", strlen(body), body);
    tc_send(&c, req);
    tc_resp_t h = tc_read_head(&c);
    cr_assert_eq(h.status, 200);
    tc_resp_free(&h);
    char *raw = NULL;
    size_t n = 0;
    cr_assert_gt(tc_read_chunk(&c, &raw, &n), 0);
    free(raw);
    tc_close(&c);
    /* The only slot comes free, and long before the 110 tokens were made: the metrics count
     * the tokens of a request once it has ended. */
    double t0 = wire_now();
    while (metric(x.port, "moemesh:slots_busy ") != 0 ||
           metric(x.port, "moemesh:generation_tokens_total ") == gen0) {
        cr_assert_lt(wire_now() - t0, 10.0, "slot still busy");
        usleep(10000);
    }
    int made = metric(x.port, "moemesh:generation_tokens_total ") - gen0;
    cr_assert(made >= 1 && made < 100, "%d tokens made for a client that left", made);
    whole_t w = complete(x.port, "/v1/completions", "{\"prompt\":\"a\",\"max_tokens\":2}", false);
    free(w.text);
    tsrv_stop(&x);
}

#define N_CLIENTS 24

typedef struct {
    int port, status;
    bool retry_after, good_body;
} client_t;

/* A client thread: no Criterion asserts off the main thread, only results. */
static void client_run(void *arg)
{
    client_t *k = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)k->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        k->status = -1;
        if (fd >= 0) close(fd);
        return;
    }
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":8}";
    char req[512];
    snprintf(req, sizeof(req), "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n"
             "Connection: close\r\nContent-Length: %zu\r\n\r\n%s", strlen(body), body);
    send(fd, req, strlen(req), MSG_NOSIGNAL);
    char buf[8192];
    size_t len = 0;
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    while (len < sizeof(buf) - 1 && poll(&pf, 1, 30000) == 1) {
        ssize_t r = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
        if (r <= 0) break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = 0;
    if (sscanf(buf, "HTTP/1.1 %d", &k->status) != 1) k->status = -2;
    k->retry_after = strstr(buf, "Retry-After:") != NULL;
    char *b = strstr(buf, "\r\n\r\n");
    json_t *j = b ? json_loads(b + 4, 0, NULL) : NULL;
    k->good_body = j && (k->status == 200 ? json_is_array(json_object_get(j, "choices"))
                                          : json_is_object(json_object_get(j, "error")));
    json_decref(j);
}

Test(http_gen, many_clients_on_two_slots, .timeout = 180)
{
    tsrv_t x;
    coord_server_params_t p = params();
    p.n_slots = 2;
    p.max_queue = 6;
    start_with(&x, &p);
    need_generation(x.port);
    client_t k[N_CLIENTS];
    uv_thread_t th[N_CLIENTS];
    for (int i = 0; i < N_CLIENTS; i++) {
        k[i] = (client_t){.port = x.port};
        cr_assert_eq(uv_thread_create(&th[i], client_run, &k[i]), 0);
    }
    int ok = 0, busy = 0;
    for (int i = 0; i < N_CLIENTS; i++) {
        uv_thread_join(&th[i]);
        cr_assert(k[i].status == 200 || k[i].status == 429, "client %d got %d", i, k[i].status);
        cr_assert(k[i].good_body, "client %d: bad body", i);
        if (k[i].status == 429) {
            cr_assert(k[i].retry_after);
            busy++;
        } else {
            ok++;
        }
    }
    /* The two slots and the queue of six are always served. */
    cr_assert_geq(ok, 8, "only %d answered, %d busy", ok, busy);
    cr_assert_eq(ok + busy, N_CLIENTS);
    /* Still serving afterwards, with nothing left running. */
    whole_t w = complete(x.port, "/v1/completions", "{\"prompt\":\"a\",\"max_tokens\":2}", false);
    free(w.text);
    cr_assert_eq(metric(x.port, "moemesh:slots_busy "), 0);
    cr_assert_geq(metric(x.port, "moemesh:generation_tokens_total "), ok);
    cr_assert_geq(metric(x.port, "moemesh:time_to_first_token_seconds_count "), ok);
    cr_assert_geq(metric(x.port, "moemesh:requests_total{status=\"200\"} "), ok);
    if (busy) cr_assert_eq(metric(x.port, "moemesh:requests_total{status=\"429\"} "), busy);
    tsrv_stop(&x);
}

/* ---- http.c alone, with a handler that answers later ---- */

typedef struct {
    uv_loop_t loop;
    uv_async_t stop;
    coord_http_t *h;
    coord_api_t *api;  /* when set, requests go to the api instead */
    uv_thread_t th;
    int port;
} bare_t;

typedef struct {
    uv_timer_t t;
    coord_http_req_t *req; /* NULL once the client went away */
    int step;
} later_t;

static void later_closed(uv_handle_t *h)
{
    free(h->data);
}

static void later_abort(coord_http_req_t *req)
{
    later_t *l = req->ud;
    l->req = NULL;
}

static void later_fire(uv_timer_t *t)
{
    later_t *l = t->data;
    if (l->req && l->step == 0) { /* /slow */
        coord_http_respond(l->req, 200, "text/plain", "slow", 4, NULL);
    } else if (l->req && l->step == 1) { /* /stream, second half */
        coord_http_stream_write(l->req, "b", 1);
        coord_http_stream_end(l->req);
    }
    uv_close((uv_handle_t *)t, later_closed);
}

static void bare_handle(void *ud, coord_http_req_t *req)
{
    bare_t *b = ud;
    if (b->api) {
        coord_api_handle(b->api, req);
        return;
    }
    bool slow = !strcmp(req->path, "/slow"), stream = !strcmp(req->path, "/stream");
    if (!slow && !stream) {
        coord_http_respond(req, 200, "text/plain", req->path, strlen(req->path), NULL);
        return;
    }
    later_t *l = calloc(1, sizeof(*l));
    l->req = req;
    l->step = stream;
    req->ud = l;
    req->on_abort = later_abort;
    uv_timer_init(&b->loop, &l->t);
    l->t.data = l;
    uv_timer_start(&l->t, later_fire, 100, 0);
    if (stream) {
        coord_http_stream_begin(req, 200, "text/plain", NULL);
        coord_http_stream_write(req, "a", 1);
    }
}

static void bare_stop(uv_async_t *a)
{
    bare_t *b = a->data;
    coord_http_free(b->h);
    coord_api_free(b->api);
    uv_close((uv_handle_t *)a, NULL);
}

static void bare_run(void *arg)
{
    bare_t *b = arg;
    uv_run(&b->loop, UV_RUN_DEFAULT);
}

static void bare_start(bare_t *b, bool with_api)
{
    memset(b, 0, sizeof(*b));
    cr_assert_eq(uv_loop_init(&b->loop), 0);
    coord_http_params_t hp = coord_http_params_default();
    hp.port = 0;
    hp.on_request = bare_handle;
    hp.ud = b;
    if (with_api) {
        coord_api_params_t ap = {.model_id = "m", .max_prompt_tokens = 100, .max_tokens = 100};
        b->api = coord_api_new(&b->loop, &ap);
    }
    b->h = coord_http_new(&b->loop, &hp);
    cr_assert_not_null(b->h);
    b->port = coord_http_port(b->h);
    uv_async_init(&b->loop, &b->stop, bare_stop);
    b->stop.data = b;
    cr_assert_eq(uv_thread_create(&b->th, bare_run, b), 0);
}

static void bare_finish(bare_t *b)
{
    uv_async_send(&b->stop);
    cr_assert_eq(uv_thread_join(&b->th), 0);
    cr_assert_eq(uv_loop_close(&b->loop), 0);
}

Test(http_conn, pipelined_answers_keep_order_when_late, .timeout = 30)
{
    bare_t b;
    bare_start(&b, false);
    tc_conn_t c = tc_connect(b.port);
    tc_send(&c, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /fast HTTP/1.1\r\nHost: t\r\n\r\n"
                "GET /stream HTTP/1.1\r\nHost: t\r\n\r\nGET /fast2 HTTP/1.1\r\nHost: t\r\n\r\n");
    static const char *want[] = {"slow", "/fast", "ab", "/fast2"};
    for (int i = 0; i < 4; i++) {
        tc_resp_t r = tc_read(&c);
        cr_assert_eq(r.status, 200);
        cr_assert_str_eq(r.body, want[i]);
        tc_resp_free(&r);
    }
    /* A client that leaves during a late answer: the handler is told, nothing is written. */
    tc_send(&c, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    tc_close(&c);
    usleep(200000);
    tc_resp_t r = tc_request(b.port, "GET", "/after", NULL, NULL);
    cr_assert_str_eq(r.body, "/after");
    tc_resp_free(&r);
    bare_finish(&b);
}

Test(http_conn, health_says_loading_until_the_stack_is_set, .timeout = 30)
{
    bare_t b;
    bare_start(&b, true);
    json_t *j = answer_json(b.port, "GET", "/health", NULL, 503);
    cr_assert_str_eq(json_string_value(json_object_get(j, "status")), "loading");
    json_decref(j);
    expect_request_error(b.port, "POST", "/tokenize", "{\"content\":\"a\"}", NULL, 503, NULL);
    expect_request_error(b.port, "POST", "/v1/chat/completions", "{\"messages\":[]}", NULL, 503,
                         NULL);
    expect_status(b.port, "GET", "/v1/models", NULL, NULL, 200);
    tc_resp_t r = tc_request(b.port, "GET", "/metrics", NULL, NULL);
    cr_assert_eq(r.status, 200);
    cr_assert(strstr(r.body, "\nmoemesh:ready 0\n"));
    tc_resp_free(&r);
    bare_finish(&b);
}

Test(http_conn, expect_100_continue, .timeout = 30)
{
    bare_t b;
    bare_start(&b, false);
    tc_conn_t c = tc_connect(b.port);
    tc_send(&c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                "Expect: 100-continue\r\n\r\n");
    tc_resp_t r = tc_read(&c);
    cr_assert_eq(r.status, 100, "curl waits for this before sending a large body");
    tc_resp_free(&r);
    tc_send(&c, "abc");
    r = tc_read(&c);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body, "/echo");
    tc_resp_free(&r);
    tc_close(&c);
    bare_finish(&b);
}

Test(http_gen, logprobs_shapes, .timeout = 120)
{
    tsrv_t x;
    start(&x);
    need_generation(x.port);
    json_t *j = answer_json(x.port, "POST", "/v1/chat/completions",
                            "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                            "\"max_tokens\":5,\"logprobs\":true,\"top_logprobs\":3,"
                            "\"temperature\":0}",
                            200);
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    json_t *content = json_object_get(json_object_get(ch, "logprobs"), "content");
    int n_gen = (int)json_integer_value(
        json_object_get(json_object_get(j, "usage"), "completion_tokens"));
    cr_assert_eq((int)json_array_size(content), n_gen);
    size_t i;
    json_t *e;
    json_array_foreach(content, i, e) {
        cr_assert(json_is_string(json_object_get(e, "token")));
        cr_assert(json_is_array(json_object_get(e, "bytes")));
        double lp = json_number_value(json_object_get(e, "logprob"));
        cr_assert(lp <= 0);
        json_t *top = json_object_get(e, "top_logprobs");
        cr_assert_eq(json_array_size(top), 3);
        /* Greedy: the chosen token is the best alternative. */
        cr_assert_float_eq(json_number_value(json_object_get(json_array_get(top, 0), "logprob")),
                           lp, 1e-6);
    }
    json_decref(j);
    j = answer_json(x.port, "POST", "/v1/completions",
                    "{\"prompt\":\"Once\",\"max_tokens\":4,\"logprobs\":2,\"temperature\":0}", 200);
    json_t *lp = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs");
    cr_assert_eq(json_array_size(json_object_get(lp, "tokens")), 4);
    cr_assert_eq(json_array_size(json_object_get(lp, "token_logprobs")), 4);
    cr_assert_eq(json_array_size(json_object_get(lp, "text_offset")), 4);
    json_t *top0 = json_array_get(json_object_get(lp, "top_logprobs"), 0);
    cr_assert(json_is_object(top0) && json_object_size(top0) >= 1);
    json_decref(j);
    tsrv_stop(&x);
}
