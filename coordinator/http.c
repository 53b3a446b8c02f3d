/* HTTP/1.1 server connections on the loop thread: accept, llhttp parsing, limits, keep-alive,
 * and response writing (whole or chunked). Invariants: a connection handles one request at a
 * time — the parser pauses at the end of each message and resumes only when its response has
 * ended, so pipelined requests are answered in order; bytes that arrive meanwhile are buffered
 * (bounded) so a client closing the socket is still noticed and aborts its request. A client
 * has timeout_ms from the end of the previous response (or accept) to send a whole request,
 * however slowly it trickles bytes. Connections are freed in the close callback of their last
 * handle; the server in the close callback of its last handle.
 */
#include "coordinator/coord.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <jansson.h>
#include <uv.h>

#include "llhttp.h"
#include "wire/wire.h"

typedef struct coord__conn conn_t;
struct coord__conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    int n_open;               /* handles not yet closed */
    coord_http_t *h;
    conn_t *prev, *next;      /* the server's list */
    llhttp_t parser;
    char *in;                 /* (in_len) bytes received and not yet parsed */
    size_t in_len, in_cap;
    bool reading;
    /* The request being parsed. */
    char *url, *body, *hval;
    size_t url_len, body_len, hval_len, hbytes;
    char hname[32];
    size_t hname_len;
    char *auth, *origin;
    bool expect_continue;
    bool started;             /* bytes of the current request seen */
    int err_status;           /* a limit that failed while parsing, 0 none */
    const char *err_msg;
    /* The request being answered. */
    bool busy, streaming, keep_alive, closing, in_pump;
    bool done;                /* no further request will be read */
    bool broken;              /* a write failed or backed up: closing on the next tick */
    int pending_writes;
    coord_http_req_t req;
};

struct coord_http {
    uv_tcp_t listener;
    bool listening;
    coord_http_params_t p;
    llhttp_settings_t settings;
    conn_t *conns;
    int n_conns;              /* connections in the list (not closing) */
    int n_alive;              /* connections not yet freed */
    bool draining, freeing;
};

typedef struct {
    uv_write_t w;
    char data[]; /* the bytes being written */
} wreq_t;

coord_http_params_t coord_http_params_default(void)
{
    return (coord_http_params_t){
        .host = "127.0.0.1",
        .port = 8080,
        .max_header_bytes = 16384,
        .max_body_bytes = 1 << 20,
        .max_conns = 256,
        .timeout_ms = 30000,
    };
}

static const char *reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

/* ---- closing ---- */

static void on_handle_closed(uv_handle_t *hd)
{
    conn_t *c = hd->data;
    if (--c->n_open > 0) return;
    coord_http_t *h = c->h;
    free(c->in), free(c->url), free(c->body), free(c->hval), free(c->auth), free(c->origin);
    free(c);
    h->n_alive--;
    if (h->freeing && h->n_alive == 0 && !h->listening) free(h);
}

static void on_listener_closed(uv_handle_t *hd)
{
    coord_http_t *h = hd->data;
    h->listening = false;
    if (h->freeing && h->n_alive == 0) free(h);
}

static void conn_close(conn_t *c)
{
    if (c->closing) return;
    c->closing = true;
    coord_http_t *h = c->h;
    if (c->prev) c->prev->next = c->next;
    else h->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    h->n_conns--;
    /* The handler learns first, so it never writes to a connection being torn down. */
    if (c->busy && c->req.on_abort) {
        void (*abort_cb)(coord_http_req_t *) = c->req.on_abort;
        c->req.on_abort = NULL;
        abort_cb(&c->req);
    }
    c->busy = false;
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

/* ---- writing ---- */

static void pump(conn_t *c);
static void on_timeout(uv_timer_t *t);

static void on_written(uv_write_t *w, int status)
{
    conn_t *c = w->data;
    free(w);
    c->pending_writes--;
    if (c->closing) return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    /* A response that asked to close leaves only once its bytes are out. */
    if (!c->busy && !c->keep_alive && c->pending_writes == 0) conn_close(c);
}

/* Handlers call the writers below from their own code, where the connection must not vanish
 * under them: a broken connection is closed from a fresh loop callback instead. */
static void close_soon(conn_t *c)
{
    c->broken = c->done = true;
    c->keep_alive = false;
    uv_timer_start(&c->timer, on_timeout, 0, 0);
}

/* Bytes a client may leave unread before it counts as gone (a stream it does not read). */
#define MAX_UNSENT (8u << 20)

static void conn_write(conn_t *c, const char *a, size_t na, const char *b, size_t nb)
{
    if (c->closing || c->broken) return;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > MAX_UNSENT) {
        LOG_WARN("a client left %u bytes unread: closing its connection", MAX_UNSENT);
        close_soon(c);
        return;
    }
    wreq_t *w = xmalloc(sizeof(*w) + na + nb);
    memcpy(w->data, a, na);
    if (nb) memcpy(w->data + na, b, nb);
    w->w.data = c;
    uv_buf_t buf = uv_buf_init(w->data, (unsigned)(na + nb));
    c->pending_writes++;
    int err = uv_write(&w->w, (uv_stream_t *)&c->tcp, &buf, 1, on_written);
    if (err) {
        c->pending_writes--;
        free(w);
        close_soon(c);
    }
}

/* Status line and common headers into buf (cap bytes); returns the length. */
static size_t head(conn_t *c, char *buf, size_t cap, int status, const char *ctype,
                   const char *extra, long long content_length)
{
    size_t n = (size_t)snprintf(buf, cap, "HTTP/1.1 %d %s\r\n", status, reason(status));
    if (ctype) n += (size_t)snprintf(buf + n, cap - n, "Content-Type: %s\r\n", ctype);
    if (content_length >= 0)
        n += (size_t)snprintf(buf + n, cap - n, "Content-Length: %lld\r\n", content_length);
    else
        n += (size_t)snprintf(buf + n, cap - n, "Transfer-Encoding: chunked\r\n");
    if (!c->keep_alive) n += (size_t)snprintf(buf + n, cap - n, "Connection: close\r\n");
    if (c->h->p.cors_origin)
        n += (size_t)snprintf(buf + n, cap - n,
                              "Access-Control-Allow-Origin: %s\r\n"
                              "Access-Control-Allow-Headers: Authorization, Content-Type\r\n"
                              "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n",
                              c->h->p.cors_origin);
    if (extra) n += (size_t)snprintf(buf + n, cap - n, "%s", extra);
    n += (size_t)snprintf(buf + n, cap - n, "\r\n");
    CHECK(n < cap);
    return n;
}

static void conn_read_more(conn_t *c);

/* The response has ended: next request, or close. */
static void finish(conn_t *c)
{
    c->busy = false;
    c->streaming = false;
    c->req.on_abort = NULL;
    if (c->closing) return;
    if (!c->keep_alive || c->h->draining) {
        c->keep_alive = false;
        c->done = true;
        if (c->pending_writes == 0 && !c->broken) conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, (uint64_t)c->h->p.timeout_ms, 0);
    if (!c->in_pump) {
        pump(c);
        conn_read_more(c);
    }
}

void coord_http_respond(coord_http_req_t *req, int status, const char *ctype, const char *body,
                        size_t len, const char *extra)
{
    conn_t *c = req->conn;
    CHECK(c->busy && !c->streaming);
    if (c->h->draining) c->keep_alive = false;
    char hb[1024];
    size_t n = head(c, hb, sizeof(hb), status, ctype, extra, (long long)len);
    conn_write(c, hb, n, body, len);
    finish(c);
}

void coord_http_stream_begin(coord_http_req_t *req, int status, const char *ctype,
                             const char *extra)
{
    conn_t *c = req->conn;
    CHECK(c->busy && !c->streaming);
    if (c->h->draining) c->keep_alive = false;
    char hb[1024];
    size_t n = head(c, hb, sizeof(hb), status, ctype, extra, -1);
    conn_write(c, hb, n, NULL, 0);
    c->streaming = true;
}

void coord_http_stream_write(coord_http_req_t *req, const char *data, size_t len)
{
    conn_t *c = req->conn;
    CHECK(c->busy && c->streaming);
    if (len == 0) return; /* a zero-length chunk would end the body */
    char pre[32];
    int np = snprintf(pre, sizeof(pre), "%zx\r\n", len);
    char *tmp = xmalloc(len + 2);
    memcpy(tmp, data, len);
    memcpy(tmp + len, "\r\n", 2);
    conn_write(c, pre, (size_t)np, tmp, len + 2);
    free(tmp);
}

void coord_http_stream_end(coord_http_req_t *req)
{
    conn_t *c = req->conn;
    CHECK(c->busy && c->streaming);
    conn_write(c, "0\r\n\r\n", 5, NULL, 0);
    finish(c);
}

/* An error found while reading a request: answer it and close, since the rest of the byte
 * stream can no longer be trusted. */
static void fail(conn_t *c, int status, const char *msg)
{
    char body[512];
    const char *type = status == 401 ? "authentication_error" : "invalid_request_error";
    json_t *j = json_pack("{s:{s:s,s:s,s:n,s:n}}", "error", "message", msg, "type", type,
                          "param", "code");
    size_t n = json_dumpb(j, body, sizeof(body), JSON_COMPACT);
    json_decref(j);
    if (n > sizeof(body)) n = 0;
    if (c->h->p.metrics) coord_metrics_request(c->h->p.metrics, status);
    c->busy = true;
    c->keep_alive = false;
    c->req.conn = c;
    coord_http_respond(&c->req, status, "application/json", body, n, NULL);
}

/* ---- parsing ---- */

static int grow_append(char **buf, size_t *len, const char *at, size_t n)
{
    *buf = xrealloc(*buf, *len + n + 1);
    memcpy(*buf + *len, at, n);
    *len += n;
    (*buf)[*len] = 0;
    return 0;
}

static int limit(conn_t *c, int status, const char *msg)
{
    c->err_status = status;
    c->err_msg = msg;
    return -1;
}

static int count_header(conn_t *c, size_t n)
{
    c->hbytes += n;
    if (c->hbytes > c->h->p.max_header_bytes)
        return limit(c, 431, "request line and headers exceed the server's max header size");
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    conn_t *c = p->data;
    c->started = true;
    c->url_len = c->body_len = c->hval_len = c->hname_len = c->hbytes = 0;
    free(c->auth), free(c->origin);
    c->auth = c->origin = NULL;
    c->expect_continue = false;
    grow_append(&c->url, &c->url_len, "", 0);
    grow_append(&c->body, &c->body_len, "", 0);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    if (count_header(c, n)) return -1;
    return grow_append(&c->url, &c->url_len, at, n);
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    if (count_header(c, n)) return -1;
    /* Only short names matter here; longer ones are kept truncated and never match. */
    for (size_t i = 0; i < n && c->hname_len < sizeof(c->hname) - 1; i++)
        c->hname[c->hname_len++] = at[i];
    c->hname[c->hname_len] = 0;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    if (count_header(c, n)) return -1;
    return grow_append(&c->hval, &c->hval_len, at, n);
}

static int on_header_value_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    const char *v = c->hval ? c->hval : "";
    if (!strcasecmp(c->hname, "authorization")) {
        free(c->auth);
        c->auth = xstrdup(v);
    } else if (!strcasecmp(c->hname, "origin")) {
        free(c->origin);
        c->origin = xstrdup(v);
    } else if (!strcasecmp(c->hname, "expect") && !strcasecmp(v, "100-continue")) {
        c->expect_continue = true;
    }
    c->hname_len = c->hval_len = 0;
    c->hname[0] = 0;
    if (c->hval) c->hval[0] = 0;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > c->h->p.max_body_bytes)
        return limit(c, 413, "request body exceeds the server's max body size (--max-body)");
    if (c->expect_continue) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        conn_write(c, cont, sizeof(cont) - 1, NULL, 0);
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    conn_t *c = p->data;
    if (c->body_len + n > c->h->p.max_body_bytes)
        return limit(c, 413, "request body exceeds the server's max body size (--max-body)");
    return grow_append(&c->body, &c->body_len, at, n);
}

static int on_message_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    /* Upgrades (WebSocket, CONNECT) are not spoken here: answer, then close. */
    c->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade && !c->h->draining;
    /* Pausing here is what keeps pipelined requests in order: pump resumes after the
     * response. */
    return HPE_PAUSED;
}

static void dispatch(conn_t *c)
{
    char *q = strchr(c->url, '?');
    if (q) *q = 0;
    c->started = false;
    c->busy = true;
    c->req = (coord_http_req_t){
        .method = llhttp_method_name((llhttp_method_t)c->parser.method),
        .path = c->url,
        .body = c->body,
        .body_len = c->body_len,
        .authorization = c->auth,
        .origin = c->origin,
        .conn = c,
    };
    uv_timer_stop(&c->timer);
    c->h->p.on_request(c->h->p.ud, &c->req);
}

/* Parses buffered bytes until a request is complete (then hands it out) or they run out. */
static void pump(conn_t *c)
{
    c->in_pump = true;
    size_t off = 0;
    while (!c->closing && !c->busy && !c->done && off < c->in_len) {
        const char *start = c->in + off;
        llhttp_errno_t e = llhttp_execute(&c->parser, start, c->in_len - off);
        if (e == HPE_OK) {
            off = c->in_len;
        } else if (e == HPE_PAUSED) {
            off += (size_t)(llhttp_get_error_pos(&c->parser) - start);
            llhttp_resume(&c->parser);
            dispatch(c);
        } else if (c->err_status) {
            fail(c, c->err_status, c->err_msg);
        } else {
            char msg[200];
            snprintf(msg, sizeof(msg), "malformed HTTP request: %s",
                     llhttp_get_error_reason(&c->parser));
            fail(c, 400, msg);
        }
    }
    if (!c->closing) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    c->in_pump = false;
}

/* ---- reading ---- */

static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *buf)
{
    conn_t *c = hd->data;
    (void)suggested;
    if (c->in_cap - c->in_len < 16384) {
        c->in_cap = c->in_len + 65536;
        c->in = xrealloc(c->in, c->in_cap);
    }
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(c->in_cap - c->in_len));
}

/* What a busy connection may buffer before it stops reading (backpressure). */
static size_t buffer_cap(const coord_http_t *h)
{
    return h->p.max_header_bytes + h->p.max_body_bytes + 65536;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    conn_t *c = s->data;
    (void)buf;
    if (n < 0) {
        /* EOF or error: a client that goes away aborts whatever it asked for. */
        conn_close(c);
        return;
    }
    c->in_len += (size_t)n;
    if (!c->busy && !c->done) pump(c);
    if (!c->closing && c->in_len > buffer_cap(c->h)) {
        uv_read_stop(s);
        c->reading = false;
    }
}

static void conn_read_more(conn_t *c)
{
    if (c->closing || c->reading || c->in_len > buffer_cap(c->h)) return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) c->reading = true;
}

static void on_timeout(uv_timer_t *t)
{
    conn_t *c = t->data;
    if (c->broken) {
        conn_close(c);
        return;
    }
    if (c->busy || c->closing || c->done) return;
    if (c->started || c->in_len > 0) {
        LOG_INFO("closing a connection that did not send a whole request in %d ms",
                 c->h->p.timeout_ms);
        fail(c, 408, "request not received in time");
    } else {
        conn_close(c);
    }
}

static void on_connection(uv_stream_t *ls, int status)
{
    coord_http_t *h = ls->data;
    if (status < 0) {
        LOG_WARN("accept failed: %s", uv_strerror(status));
        return;
    }
    conn_t *c = xcalloc(1, sizeof(*c));
    c->h = h;
    uv_tcp_init(ls->loop, &c->tcp);
    uv_timer_init(ls->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->n_open = 2;
    c->next = h->conns;
    if (h->conns) h->conns->prev = c;
    h->conns = c;
    h->n_conns++;
    h->n_alive++;
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    llhttp_init(&c->parser, HTTP_REQUEST, &h->settings);
    c->parser.data = c;
    c->keep_alive = true;
    if (h->n_conns > h->p.max_conns) {
        fail(c, 503, "too many connections");
        return;
    }
    uv_timer_start(&c->timer, on_timeout, (uint64_t)h->p.timeout_ms, 0);
    conn_read_more(c);
}

/* ---- the server ---- */

coord_http_t *coord_http_new(struct uv_loop_s *loop, const coord_http_params_t *p)
{
    CHECK(p->on_request && p->max_conns > 0 && p->timeout_ms > 0);
    coord_http_t *h = xcalloc(1, sizeof(*h));
    h->p = *p;
    llhttp_settings_init(&h->settings);
    h->settings.on_message_begin = on_message_begin;
    h->settings.on_url = on_url;
    h->settings.on_header_field = on_header_field;
    h->settings.on_header_value = on_header_value;
    h->settings.on_header_value_complete = on_header_value_complete;
    h->settings.on_headers_complete = on_headers_complete;
    h->settings.on_body = on_body;
    h->settings.on_message_complete = on_message_complete;
    struct sockaddr_storage sa;
    int err = uv_ip4_addr(p->host, p->port, (struct sockaddr_in *)&sa);
    if (err) err = uv_ip6_addr(p->host, p->port, (struct sockaddr_in6 *)&sa);
    if (err) {
        LOG_ERR("bad listen address '%s'", p->host);
        free(h);
        return NULL;
    }
    uv_tcp_init(loop, &h->listener);
    h->listener.data = h;
    h->listening = true;
    err = uv_tcp_bind(&h->listener, (const struct sockaddr *)&sa, 0);
    if (!err) err = uv_listen((uv_stream_t *)&h->listener, 511, on_connection);
    if (err) {
        LOG_ERR("cannot listen on %s:%d: %s", p->host, p->port, uv_strerror(err));
        h->freeing = true;
        uv_close((uv_handle_t *)&h->listener, on_listener_closed);
        return NULL;
    }
    return h;
}

int coord_http_port(const coord_http_t *h)
{
    struct sockaddr_storage sa;
    int len = sizeof(sa);
    if (uv_tcp_getsockname(&h->listener, (struct sockaddr *)&sa, &len) != 0) return -1;
    if (sa.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&sa)->sin6_port);
    return ntohs(((struct sockaddr_in *)&sa)->sin_port);
}

int coord_http_busy(const coord_http_t *h)
{
    int n = 0;
    for (const conn_t *c = h->conns; c; c = c->next) n += c->busy;
    return n;
}

static void stop_listening(coord_http_t *h)
{
    if (h->listening && !uv_is_closing((uv_handle_t *)&h->listener))
        uv_close((uv_handle_t *)&h->listener, on_listener_closed);
}

void coord_http_drain(coord_http_t *h)
{
    h->draining = true;
    stop_listening(h);
    for (conn_t *c = h->conns, *next; c; c = next) {
        next = c->next;
        if (!c->busy) conn_close(c);
    }
}

void coord_http_free(coord_http_t *h)
{
    if (!h) return;
    h->draining = h->freeing = true;
    stop_listening(h);
    while (h->conns) conn_close(h->conns);
    if (!h->listening && h->n_alive == 0) free(h);
}
