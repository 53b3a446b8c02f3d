/* The OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models, /tokenize,
 * /detokenize, /health and /metrics. Requests are validated field by field; every bad input
 * gets a 4xx with an OpenAI-shaped error {"error":{"message","type","param","code"}} naming the
 * field or the limit. Generation is handed to the scheduler; its callbacks (scheduler thread)
 * only push events into a mutex-protected queue and wake the loop with uv_async_send, and
 * everything that touches a connection happens here on the loop thread. A generation (gen_t)
 * lives from submit until its on_done event has been handled, whatever happens to its client.
 */
#include "coordinator/coord.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "wire/wire.h"

#define MAX_STOP 16       /* stop strings per request */
#define MAX_STOP_LEN 256  /* bytes per stop string */
#define MAX_TOP 20        /* top_logprobs */

typedef struct gen gen_t;

/* One scheduler callback, carried to the loop. */
typedef struct ev {
    struct ev *next;
    gen_t *g;
    bool done;
    double t;               /* wire_now() when it happened */
    int32_t id;
    float logprob;
    int n_top;
    int32_t top_ids[MAX_TOP];
    float top_lp[MAX_TOP];
    coord_finish_t why;
    coord_gen_stats_t st;
} ev_t;

struct gen {
    coord_api_t *api;
    gen_t *prev, *next;     /* the api's live list */
    coord_http_req_t *req;  /* NULL once the client is gone */
    int64_t id;             /* scheduler request id */
    atomic_bool cancel;     /* read by on_token on the scheduler thread */
    bool chat, stream, include_usage, stopped, sent_role;
    int top_logprobs;       /* < 0: no logprobs */
    char rid[48];           /* "chatcmpl-..." */
    long long created;      /* unix seconds */
    model_detok_t *detok;
    char *stop[MAX_STOP];
    int n_stop;
    char *held;             /* (held_len) text not yet sent: it may begin a stop string */
    size_t held_len;
    char *text;             /* (text_len) whole output of a non-streamed request */
    size_t text_len;
    json_t *lp;             /* logprob entries not yet sent (chat: array; completions: object) */
    size_t text_offset;     /* bytes of output so far, for completions' text_offset */
    int n_prompt, n_gen;
    double t_start, t_last;
};

struct coord_api {
    uv_async_t async;
    coord_api_params_t p;
    coord_metrics_t *metrics;
    coord_api_stack_t st;
    /* Copies for /metrics and /health, sized at set_stack (loop thread). */
    bool *moe_layer;           /* (n_layer) layers with routed experts */
    uint64_t *expert_tokens;   /* (n_layer, n_expert) */
    coord_node_stats_t *nodes; /* (n_nodes) */
    int n_nodes;
    bool ready;
    char status[200];
    const char *chat_tmpl;  /* template name or Jinja text for model_chat_apply */
    uv_mutex_t mu;          /* guards the event queue */
    ev_t *head, *tail;
    gen_t *live;
    int n_live;
    unsigned long long next_rid;
    long long created;
};

/* ---- responses ---- */

/* jansson refuses invalid UTF-8; a model can emit any bytes, so those become U+FFFD. */
static json_t *jstr(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    if (j) return j;
    char *o = xmalloc(n * 3 + 1);
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
                               : (c & 0xf8) == 0xf0 ? 4 : 0;
        bool ok = len > 0 && i + len <= n;
        for (size_t m = 1; ok && m < len; m++) ok = ((unsigned char)s[i + m] & 0xc0) == 0x80;
        if (ok && len > 1) {
            json_t *t = json_stringn(s + i, len);
            ok = t != NULL;
            json_decref(t);
        }
        if (ok && c != 0) {
            memcpy(o + k, s + i, len);
            k += len, i += len;
        } else {
            memcpy(o + k, "\xef\xbf\xbd", 3);
            k += 3, i += 1;
        }
    }
    j = json_stringn(o, k);
    free(o);
    CHECK(j);
    return j;
}

static void send_json(coord_api_t *a, coord_http_req_t *req, int status, json_t *j,
                      const char *extra)
{
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    CHECK(s);
    /* A final newline keeps a shell prompt off the JSON when curl prints it. */
    size_t n = strlen(s);
    s = xrealloc(s, n + 2);
    memcpy(s + n, "\n", 2);
    coord_metrics_request(a->metrics, status);
    coord_http_respond(req, status, "application/json", s, n + 1, extra);
    free(s);
}

/* msg may quote the client (a path, say), so it goes through jstr: json_pack's "s" refuses
 * invalid UTF-8, and a NULL here would take the server down. */
static json_t *error_obj(const char *type, const char *param, const char *code, const char *msg)
{
    return json_pack("{s:{s:o,s:s,s:o,s:o}}", "error", "message", jstr(msg, strlen(msg)), "type",
                     type, "param",
                     param ? json_string(param) : json_null(), "code",
                     code ? json_string(code) : json_null());
}

__attribute__((format(printf, 6, 7))) static void send_error(coord_api_t *a,
                                                              coord_http_req_t *req, int status,
                                                              const char *param, const char *code,
                                                              const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    const char *type = status == 401   ? "authentication_error"
                       : status == 404 ? "not_found_error"
                       : status == 429 ? "rate_limit_error"
                       : status >= 500 ? (status == 503 ? "unavailable_error" : "server_error")
                                       : "invalid_request_error";
    const char *extra = status == 429 || status == 503 ? "Retry-After: 1\r\n" : NULL;
    send_json(a, req, status, error_obj(type, param, code, msg), extra);
}

/* ---- request fields ----
 * Each getter leaves *out alone when the key is absent or null, returns false after filling the
 * error when the value has the wrong type or range. */
typedef struct {
    char param[64];
    char msg[256];
} verr_t;

__attribute__((format(printf, 3, 4))) static bool bad(verr_t *e, const char *param,
                                                      const char *fmt, ...)
{
    snprintf(e->param, sizeof(e->param), "%s", param);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    return false;
}

static json_t *field(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return v && !json_is_null(v) ? v : NULL;
}

static bool get_num(json_t *o, const char *key, double lo, double hi, float *out, verr_t *e)
{
    json_t *v = field(o, key);
    if (!v) return true;
    if (!json_is_number(v)) return bad(e, key, "'%s' must be a number", key);
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi)) return bad(e, key, "'%s' must be between %g and %g", key, lo, hi);
    *out = (float)d;
    return true;
}

static bool get_int(json_t *o, const char *key, long long lo, long long hi, long long *out,
                    verr_t *e)
{
    json_t *v = field(o, key);
    if (!v) return true;
    if (!json_is_integer(v)) return bad(e, key, "'%s' must be an integer", key);
    long long i = json_integer_value(v);
    if (i < lo || i > hi) return bad(e, key, "'%s' must be between %lld and %lld", key, lo, hi);
    *out = i;
    return true;
}

static bool get_bool(json_t *o, const char *key, bool *out, verr_t *e)
{
    json_t *v = field(o, key);
    if (!v) return true;
    if (!json_is_boolean(v)) return bad(e, key, "'%s' must be a boolean", key);
    *out = json_is_true(v);
    return true;
}

static bool body_object(coord_api_t *a, coord_http_req_t *req, json_t **out)
{
    json_error_t jerr;
    json_t *j = json_loadb(req->body, req->body_len, 0, &jerr);
    if (!j) {
        send_error(a, req, 400, NULL, NULL, "invalid JSON body: %s (line %d, column %d)",
                   jerr.text, jerr.line, jerr.column);
        return false;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        send_error(a, req, 400, NULL, NULL, "the request body must be a JSON object");
        return false;
    }
    *out = j;
    return true;
}

/* ---- simple routes ---- */

/* Health with expert nodes: 503 naming the nodes that are down and the experts that are
 * therefore unavailable (every copy down), 200 otherwise. A node is down from the moment a
 * call to it fails (it answered ERROR, gave no RESULT within the node timeout, could not be sent to, or sent
 * something unreadable) or it has been silent for the cluster's heartbeat_ms (noticed between
 * requests too: the scheduler tends the cluster about once a second while idle), until it has
 * been given its shard again (coord_cluster_tend) or answers a call with a RESULT. */
static void route_health(coord_api_t *a, coord_http_req_t *req)
{
    /* With replicas a node may be down while every expert still has a live copy: that is
     * still service (remote.c fails over), so only a missing expert turns /health 503. */
    char msg[1024];
    if (a->ready && a->st.cluster && coord_cluster_missing(a->st.cluster, msg, sizeof(msg)) > 0) {
        send_json(a, req, 503, json_pack("{s:s,s:s}", "status", "error", "message", msg),
                  "Retry-After: 1\r\n");
        return;
    }
    if (a->ready)
        send_json(a, req, 200, json_pack("{s:s}", "status", "ok"), NULL);
    else if (!strcmp(a->status, "loading"))
        send_json(a, req, 503, json_pack("{s:s}", "status", "loading"), "Retry-After: 1\r\n");
    else
        send_json(a, req, 503, json_pack("{s:s,s:s}", "status", "error", "message", a->status),
                  NULL);
}

static void route_models(coord_api_t *a, coord_http_req_t *req)
{
    json_t *m = json_pack("{s:s,s:s,s:I,s:s}", "id", a->p.model_id, "object", "model", "created",
                          (json_int_t)a->created, "owned_by", "moemesh");
    if (a->ready)
        json_object_set_new(m, "meta",
                            json_pack("{s:i,s:i,s:i,s:i}", "n_vocab", a->st.m->hp.n_vocab,
                                      "n_ctx", a->st.n_ctx, "n_expert", a->st.m->hp.n_expert,
                                      "n_slots", a->st.n_slots));
    send_json(a, req, 200, json_pack("{s:s,s:[o]}", "object", "list", "data", m), NULL);
}

static void route_metrics(coord_api_t *a, coord_http_req_t *req)
{
    coord_metrics_gauges_t g = {.ready = a->ready};
    if (a->ready) {
        coord_sched_stats_t ss;
        coord_sched_stats(a->st.sched, &ss);
        g.queue_length = ss.queued;
        g.slots_busy = ss.slots_busy;
        g.slots_total = a->st.n_slots;
        g.kv_usage = ss.kv_capacity > 0 ? (double)ss.kv_used / (double)ss.kv_capacity : 0;
        if (a->st.cluster) {
            coord_cluster_snapshot(a->st.cluster, a->nodes, a->n_nodes);
            g.nodes = a->nodes;
            g.n_nodes = a->n_nodes;
        }
        if (a->st.eng && a->expert_tokens) {
            const model_hparams_t *hp = &a->st.m->hp;
            coord_engine_expert_tokens(a->st.eng, a->expert_tokens, hp->n_layer * hp->n_expert);
            g.expert_tokens = a->expert_tokens;
            g.moe_layer = a->moe_layer;
            g.n_layers = hp->n_layer;
            g.n_expert = hp->n_expert;
            g.cluster = a->st.cluster;
        }
    }
    coord_metrics_request(a->metrics, 200);
    char *text;
    size_t n = coord_metrics_render(a->metrics, &g, &text);
    coord_http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, n, NULL);
    free(text);
}

static bool need_ready(coord_api_t *a, coord_http_req_t *req)
{
    if (a->ready) return true;
    send_error(a, req, 503, NULL, "model_not_ready", "the model is not ready (%s)", a->status);
    return false;
}

/* POST /admin/rebalance [{"force": bool}]: plans a live re-placement of the experts for the
 * last minute's load (coordinator/replace.c) and says what it will move; 409 while one is
 * running. */
static void route_rebalance(coord_api_t *a, coord_http_req_t *req)
{
    if (!need_ready(a, req)) return;
    if (!a->st.cluster) {
        send_error(a, req, 400, NULL, "no_expert_nodes", "the experts are local: nothing to move");
        return;
    }
    bool force = false;
    if (req->body_len) {
        json_t *j;
        verr_t e = {0};
        if (!body_object(a, req, &j)) return;
        bool ok = get_bool(j, "force", &force, &e);
        json_decref(j);
        if (!ok) {
            send_error(a, req, 400, e.param, NULL, "%s", e.msg);
            return;
        }
    }
    coord_replace_plan_t pl;
    if (coord_replace_request(a->st.cluster, force, &pl) == -EBUSY) {
        send_error(a, req, 409, NULL, "rebalance_running", "%s", pl.reason);
        return;
    }
    send_json(a, req, 200,
              json_pack("{s:b,s:f,s:f,s:I,s:i,s:i,s:i,s:s}", "started", pl.started,
                        "imbalance_before", pl.before, "imbalance_after", pl.after,
                        "bytes_to_move", (json_int_t)pl.bytes, "pairs_added", pl.adds,
                        "pairs_released", pl.drops, "waves", pl.waves, "reason", pl.reason),
              NULL);
}

/* Generation needs every routed expert: while a node is down, refuse at once (503, naming the
 * missing experts, Retry-After) rather than admit a request that would fail at its first
 * layer. */
static bool need_experts(coord_api_t *a, coord_http_req_t *req)
{
    if (!a->st.cluster) return true;
    char msg[1024];
    if (coord_cluster_missing(a->st.cluster, msg, sizeof(msg)) == 0) return true;
    send_error(a, req, 503, NULL, "experts_unavailable", "%s", msg);
    return false;
}

/* Encodes text; *ids is malloc'd. Returns the count or a negative error. */
static int64_t encode(const model_tok_t *t, const char *s, size_t n, bool bos, bool special,
                      int32_t **ids)
{
    int64_t cap = (int64_t)n + 8;
    *ids = xmalloc(sizeof(int32_t) * (size_t)cap);
    int64_t k = model_tok_encode(t, s, n, bos, special, *ids, cap);
    if (k > cap) {
        *ids = xrealloc(*ids, sizeof(int32_t) * (size_t)k);
        k = model_tok_encode(t, s, n, bos, special, *ids, k);
    }
    return k;
}

static void route_tokenize(coord_api_t *a, coord_http_req_t *req)
{
    json_t *j;
    if (!need_ready(a, req) || !body_object(a, req, &j)) return;
    verr_t e;
    bool add_special = true, parse_special = false;
    json_t *content = json_object_get(j, "content");
    if (!json_is_string(content)) {
        bad(&e, "content", "'content' is required and must be a string");
    } else if (get_bool(j, "add_special", &add_special, &e) &&
               get_bool(j, "parse_special", &parse_special, &e)) {
        int32_t *ids;
        int64_t n = encode(a->st.tok, json_string_value(content), json_string_length(content),
                           add_special && model_tok_wants_bos(a->st.tok), parse_special, &ids);
        json_t *arr = json_array();
        for (int64_t i = 0; i < n; i++) json_array_append_new(arr, json_integer(ids[i]));
        free(ids);
        json_decref(j);
        if (n < 0) {
            json_decref(arr);
            send_error(a, req, 400, "content", NULL, "cannot tokenize: %s", model_strerror((int)n));
            return;
        }
        send_json(a, req, 200, json_pack("{s:o}", "tokens", arr), NULL);
        return;
    }
    json_decref(j);
    send_error(a, req, 400, e.param, NULL, "%s", e.msg);
}

static void route_detokenize(coord_api_t *a, coord_http_req_t *req)
{
    json_t *j;
    if (!need_ready(a, req) || !body_object(a, req, &j)) return;
    json_t *toks = json_object_get(j, "tokens");
    if (!json_is_array(toks)) {
        json_decref(j);
        send_error(a, req, 400, "tokens", NULL, "'tokens' is required and must be an array");
        return;
    }
    const int32_t V = model_tok_n_vocab(a->st.tok);
    model_detok_t *d = model_detok_new(a->st.tok, MODEL_DETOK_STRIP_SPACE);
    char *out = NULL;
    size_t len = 0;
    size_t i;
    json_t *v;
    json_array_foreach(toks, i, v) {
        json_int_t id = json_is_integer(v) ? json_integer_value(v) : -1;
        if (id < 0 || id >= V) {
            model_detok_free(d);
            free(out);
            json_decref(j);
            send_error(a, req, 400, "tokens", NULL,
                       "tokens[%zu] must be an integer token id in 0..%d", i, V - 1);
            return;
        }
        /* BOS renders as nothing; skipping it lets the first word lose the space the
         * tokenizer added, so tokenize and detokenize round-trip. */
        if (i == 0 && id == model_tok_bos(a->st.tok)) continue;
        const char *s;
        size_t n;
        CHECK(model_detok_push(d, (int32_t)id, &s, &n) == 0);
        out = xrealloc(out, len + n + 1);
        memcpy(out + len, s, n);
        len += n;
    }
    const char *s;
    size_t n;
    model_detok_flush(d, &s, &n);
    out = xrealloc(out, len + n + 1);
    memcpy(out + len, s, n);
    len += n;
    model_detok_free(d);
    json_decref(j);
    send_json(a, req, 200, json_pack("{s:o}", "content", jstr(out, len)), NULL);
    free(out);
}

/* ---- generation: output ---- */

static void gen_free(gen_t *g)
{
    coord_api_t *a = g->api;
    if (g->prev) g->prev->next = g->next;
    else a->live = g->next;
    if (g->next) g->next->prev = g->prev;
    a->n_live--;
    model_detok_free(g->detok);
    for (int i = 0; i < g->n_stop; i++) free(g->stop[i]);
    free(g->held);
    free(g->text);
    json_decref(g->lp);
    free(g);
}

static json_t *usage(int n_prompt, int n_gen)
{
    return json_pack("{s:i,s:i,s:i}", "prompt_tokens", n_prompt, "completion_tokens", n_gen,
                     "total_tokens", n_prompt + n_gen);
}

static json_t *chunk_base(const gen_t *g)
{
    return json_pack("{s:s,s:s,s:I,s:s}", "id", g->rid, "object",
                     g->chat ? "chat.completion.chunk" : "text_completion", "created",
                     (json_int_t)g->created, "model", g->api->p.model_id);
}

static void sse(gen_t *g, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    size_t n = strlen(s);
    char *buf = xmalloc(n + 8);
    memcpy(buf, "data: ", 6);
    memcpy(buf + 6, s, n);
    memcpy(buf + 6 + n, "\n\n", 2);
    coord_http_stream_write(g->req, buf, n + 8);
    free(buf);
    free(s);
}

/* The pending logprob entries in the request's format (steals them), or null. */
static json_t *take_logprobs(gen_t *g)
{
    if (g->top_logprobs < 0) return json_null();
    json_t *lp = g->lp;
    g->lp = NULL;
    if (g->chat) return json_pack("{s:o}", "content", lp ? lp : json_array());
    return lp ? lp
              : json_pack("{s:[],s:[],s:[],s:[]}", "tokens", "token_logprobs", "top_logprobs",
                          "text_offset");
}

/* One streamed chunk carrying text (may be empty) and, when finish is set, the finish reason. */
static void send_chunk(gen_t *g, const char *text, size_t n, const char *finish)
{
    json_t *c = chunk_base(g);
    json_t *choice;
    json_t *fin = finish ? json_string(finish) : json_null();
    if (g->chat) {
        json_t *delta = json_object();
        if (!g->sent_role) {
            json_object_set_new(delta, "role", json_string("assistant"));
            g->sent_role = true;
        }
        if (n || !finish) json_object_set_new(delta, "content", jstr(text, n));
        choice = json_pack("{s:i,s:o,s:o,s:o}", "index", 0, "delta", delta, "logprobs",
                           take_logprobs(g), "finish_reason", fin);
    } else {
        choice = json_pack("{s:o,s:i,s:o,s:o}", "text", jstr(text, n), "index", 0, "logprobs",
                           take_logprobs(g), "finish_reason", fin);
    }
    json_object_set_new(c, "choices", json_pack("[o]", choice));
    if (g->include_usage) json_object_set_new(c, "usage", json_null());
    sse(g, c);
}

/* Text that is final (no stop string can begin in it) goes to the client or the buffer. */
static void emit(gen_t *g, const char *s, size_t n)
{
    if (!n && !(g->stream && g->lp)) return;
    g->text_offset += n;
    if (g->stream) {
        send_chunk(g, s, n, NULL);
        return;
    }
    g->text = xrealloc(g->text, g->text_len + n + 1);
    memcpy(g->text + g->text_len, s, n);
    g->text_len += n;
    g->text[g->text_len] = 0;
}

/* Sends what of the held text can no longer be part of a stop string; at the end (final) all
 * of it. Returns true when a stop string was found (the text before it is sent). */
static bool release(gen_t *g, bool final)
{
    size_t cut = g->held_len, keep_from = g->held_len;
    bool hit = false;
    for (int i = 0; i < g->n_stop; i++) {
        const char *p = memmem(g->held, g->held_len, g->stop[i], strlen(g->stop[i]));
        if (p && (size_t)(p - g->held) < cut) cut = (size_t)(p - g->held), hit = true;
    }
    if (hit) {
        emit(g, g->held, cut);
        g->held_len = 0;
        return true;
    }
    if (!final) {
        /* Hold back the longest tail that is the beginning of some stop string. */
        for (int i = 0; i < g->n_stop; i++) {
            size_t L = strlen(g->stop[i]);
            for (size_t k = L - 1; k > 0; k--) {
                if (k <= g->held_len && g->held_len - k < keep_from &&
                    !memcmp(g->held + g->held_len - k, g->stop[i], k)) {
                    keep_from = g->held_len - k;
                    break;
                }
            }
        }
    }
    emit(g, g->held, keep_from);
    memmove(g->held, g->held + keep_from, g->held_len - keep_from);
    g->held_len -= keep_from;
    return false;
}

static void add_logprob(gen_t *g, const ev_t *e)
{
    const model_tok_t *t = g->api->st.tok;
    char piece[256];
    int n = model_tok_piece(t, e->id, false, piece, sizeof(piece));
    n = n < 0 ? 0 : n > (int)sizeof(piece) ? (int)sizeof(piece) : n;
    if (g->chat) {
        json_t *top = json_array();
        for (int i = 0; i < e->n_top; i++) {
            char p2[256];
            int m = model_tok_piece(t, e->top_ids[i], false, p2, sizeof(p2));
            m = m < 0 ? 0 : m > (int)sizeof(p2) ? (int)sizeof(p2) : m;
            json_t *bytes = json_array();
            for (int b = 0; b < m; b++) json_array_append_new(bytes, json_integer((uint8_t)p2[b]));
            json_array_append_new(top, json_pack("{s:o,s:f,s:o}", "token", jstr(p2, (size_t)m),
                                                 "logprob", (double)e->top_lp[i], "bytes", bytes));
        }
        json_t *bytes = json_array();
        for (int b = 0; b < n; b++) json_array_append_new(bytes, json_integer((uint8_t)piece[b]));
        if (!g->lp) g->lp = json_array();
        json_array_append_new(g->lp, json_pack("{s:o,s:f,s:o,s:o}", "token",
                                               jstr(piece, (size_t)n), "logprob",
                                               (double)e->logprob, "bytes", bytes,
                                               "top_logprobs", top));
    } else {
        if (!g->lp)
            g->lp = json_pack("{s:[],s:[],s:[],s:[]}", "tokens", "token_logprobs",
                              "top_logprobs", "text_offset");
        json_array_append_new(json_object_get(g->lp, "tokens"), jstr(piece, (size_t)n));
        json_array_append_new(json_object_get(g->lp, "token_logprobs"), json_real(e->logprob));
        json_t *top = json_object();
        for (int i = 0; i < e->n_top; i++) {
            char p2[256];
            int m = model_tok_piece(t, e->top_ids[i], false, p2, sizeof(p2));
            m = m < 0 ? 0 : m > (int)sizeof(p2) ? (int)sizeof(p2) : m;
            json_t *k = jstr(p2, (size_t)m);
            json_object_set_new(top, json_string_value(k), json_real(e->top_lp[i]));
            json_decref(k);
        }
        json_array_append_new(json_object_get(g->lp, "top_logprobs"), top);
        json_array_append_new(json_object_get(g->lp, "text_offset"),
                              json_integer((json_int_t)(g->text_offset + g->held_len)));
    }
}

static void on_token_ev(gen_t *g, const ev_t *e)
{
    coord_api_t *a = g->api;
    if (g->n_gen == 0) coord_metrics_observe(a->metrics, COORD_HIST_TTFT, e->t - g->t_start);
    else coord_metrics_observe(a->metrics, COORD_HIST_ITL, e->t - g->t_last);
    g->n_gen++;
    g->t_last = e->t;
    if (!g->req || g->stopped) return;
    if (g->top_logprobs >= 0) add_logprob(g, e);
    if (model_tok_is_eog(a->st.tok, e->id)) return;
    const char *s;
    size_t n;
    if (model_detok_push(g->detok, e->id, &s, &n) != 0) return;
    g->held = xrealloc(g->held, g->held_len + n + 1);
    memcpy(g->held + g->held_len, s, n);
    g->held_len += n;
    if (release(g, false)) {
        g->stopped = true;
        atomic_store(&g->cancel, true);
        coord_sched_cancel(a->st.sched, g->id);
    }
}

static void on_done_ev(gen_t *g, const ev_t *e)
{
    coord_api_t *a = g->api;
    int n_gen = e->st.n_generated > 0 ? e->st.n_generated : g->n_gen;
    coord_metrics_tokens(a->metrics, g->n_prompt, n_gen);
    coord_metrics_observe(a->metrics, COORD_HIST_E2E, e->t - g->t_start);
    if (g->req && !g->stopped) {
        const char *s;
        size_t n;
        model_detok_flush(g->detok, &s, &n);
        g->held = xrealloc(g->held, g->held_len + n + 1);
        memcpy(g->held + g->held_len, s, n);
        g->held_len += n;
        if (release(g, true)) g->stopped = true;
    }
    if (g->req) {
        const char *finish = g->stopped || e->why != COORD_FINISH_LENGTH ? "stop" : "length";
        bool failed = e->why == COORD_FINISH_ERROR && !g->stopped;
        const char *msg = e->st.message[0] ? e->st.message : "generation failed";
        /* A failure while experts are missing is the cluster's, not the request's: say which
         * experts, with 503 (retry later) instead of 500. */
        char missing[1024];
        bool unavailable = failed && a->st.cluster &&
                           coord_cluster_missing(a->st.cluster, missing, sizeof(missing)) > 0;
        if (unavailable) msg = missing;
        if (g->stream) {
            if (failed) {
                sse(g, error_obj(unavailable ? "unavailable_error" : "server_error", NULL,
                                 unavailable ? "experts_unavailable" : NULL, msg));
            } else {
                send_chunk(g, "", 0, finish);
                if (g->include_usage) {
                    json_t *c = chunk_base(g);
                    json_object_set_new(c, "choices", json_array());
                    json_object_set_new(c, "usage", usage(g->n_prompt, n_gen));
                    sse(g, c);
                }
            }
            coord_http_stream_write(g->req, "data: [DONE]\n\n", 14);
            coord_http_stream_end(g->req);
        } else if (failed) {
            send_error(a, g->req, unavailable ? 503 : 500, NULL,
                       unavailable ? "experts_unavailable" : NULL, "%s", msg);
        } else {
            json_t *choice;
            json_t *text = jstr(g->text ? g->text : "", g->text_len);
            if (g->chat)
                choice = json_pack("{s:i,s:{s:s,s:o},s:o,s:s}", "index", 0, "message", "role",
                                   "assistant", "content", text, "logprobs", take_logprobs(g),
                                   "finish_reason", finish);
            else
                choice = json_pack("{s:o,s:i,s:o,s:s}", "text", text, "index", 0, "logprobs",
                                   take_logprobs(g), "finish_reason", finish);
            json_t *r = json_pack("{s:s,s:s,s:I,s:s,s:[o],s:o}", "id", g->rid, "object",
                                  g->chat ? "chat.completion" : "text_completion", "created",
                                  (json_int_t)g->created, "model", a->p.model_id, "choices",
                                  choice, "usage", usage(g->n_prompt, n_gen));
            send_json(a, g->req, 200, r, NULL);
        }
        g->req = NULL;
    }
    gen_free(g);
}

static void on_async(uv_async_t *h)
{
    coord_api_t *a = h->data;
    uv_mutex_lock(&a->mu);
    ev_t *e = a->head;
    a->head = a->tail = NULL;
    uv_mutex_unlock(&a->mu);
    while (e) {
        ev_t *next = e->next;
        if (e->done) on_done_ev(e->g, e);
        else on_token_ev(e->g, e);
        free(e);
        e = next;
    }
}

/* ---- generation: scheduler callbacks (scheduler thread) ---- */

static void push(coord_api_t *a, ev_t *e)
{
    e->t = wire_now();
    e->next = NULL;
    uv_mutex_lock(&a->mu);
    if (a->tail) a->tail->next = e;
    else a->head = e;
    a->tail = e;
    uv_mutex_unlock(&a->mu);
    uv_async_send(&a->async);
}

static bool cb_token(void *ud, const coord_token_t *tok)
{
    gen_t *g = ud;
    ev_t *e = xcalloc(1, sizeof(*e));
    e->g = g;
    e->id = tok->id;
    e->logprob = tok->logprob;
    e->n_top = tok->n_top < 0 ? 0 : tok->n_top > MAX_TOP ? MAX_TOP : tok->n_top;
    for (int i = 0; i < e->n_top; i++) e->top_ids[i] = tok->top_ids[i], e->top_lp[i] = tok->top_logprobs[i];
    push(g->api, e);
    return !atomic_load(&g->cancel);
}

static void cb_done(void *ud, coord_finish_t why, const coord_gen_stats_t *st)
{
    gen_t *g = ud;
    ev_t *e = xcalloc(1, sizeof(*e));
    e->g = g;
    e->done = true;
    e->why = why;
    e->st = *st;
    push(g->api, e);
}

static void on_abort(coord_http_req_t *req)
{
    gen_t *g = req->ud;
    g->req = NULL;
    atomic_store(&g->cancel, true);
    coord_sched_cancel(g->api->st.sched, g->id);
}

/* ---- generation: requests ---- */

/* Appends the text of a message's content (a string or an array of text parts). */
static bool content_text(json_t *c, size_t idx, char **out, verr_t *e)
{
    char param[64];
    snprintf(param, sizeof(param), "messages[%zu].content", idx);
    if (!c) {
        *out = xstrdup("");
        return true;
    }
    if (json_is_string(c)) {
        *out = xstrndup(json_string_value(c), json_string_length(c));
        return true;
    }
    if (!json_is_array(c)) return bad(e, param, "'%s' must be a string or an array of parts", param);
    size_t len = 0, i;
    char *s = xstrdup("");
    json_t *part;
    json_array_foreach(c, i, part) {
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") ||
            !json_is_string(text)) {
            free(s);
            return bad(e, param, "'%s[%zu]' must be a {\"type\":\"text\",\"text\":...} part",
                       param, i);
        }
        size_t n = json_string_length(text);
        s = xrealloc(s, len + n + 1);
        memcpy(s + len, json_string_value(text), n);
        len += n;
        s[len] = 0;
    }
    *out = s;
    return true;
}

/* The prompt's ids (*ids malloc'd) from messages (chat) or prompt (completions). */
static bool build_prompt(coord_api_t *a, json_t *j, bool chat, int32_t **ids, int64_t *n,
                         verr_t *e)
{
    const model_tok_t *t = a->st.tok;
    *ids = NULL;
    if (chat) {
        json_t *msgs = json_object_get(j, "messages");
        if (!json_is_array(msgs) || json_array_size(msgs) == 0)
            return bad(e, "messages", "'messages' is required and must be a non-empty array");
        size_t nm = json_array_size(msgs), i;
        model_chat_msg_t *cm = xcalloc(nm, sizeof(*cm));
        char **texts = xcalloc(nm, sizeof(char *));
        bool ok = true;
        json_t *m;
        json_array_foreach(msgs, i, m) {
            json_t *role = json_object_get(m, "role");
            if (!json_is_object(m) || !json_is_string(role)) {
                char param[48];
                snprintf(param, sizeof(param), "messages[%zu].role", i);
                ok = bad(e, param, "'messages[%zu]' must be an object with a string 'role'", i);
                break;
            }
            if (!content_text(field(m, "content"), i, &texts[i], e)) {
                ok = false;
                break;
            }
            cm[i].role = json_string_value(role);
            cm[i].content = texts[i];
        }
        char *text = NULL;
        if (ok) {
            int err = model_chat_apply(a->chat_tmpl, cm, (int)nm, true, &text);
            if (err) ok = bad(e, "messages", "cannot apply the chat template: %s",
                              model_strerror(err));
        }
        for (i = 0; i < nm; i++) free(texts[i]);
        free(texts);
        free(cm);
        if (!ok) return false;
        *n = encode(t, text, strlen(text), model_tok_wants_bos(t), true, ids);
        free(text);
        return true;
    }
    json_t *p = json_object_get(j, "prompt");
    if (json_is_array(p) && json_array_size(p) == 1 && json_is_string(json_array_get(p, 0)))
        p = json_array_get(p, 0);
    if (json_is_string(p)) {
        *n = encode(t, json_string_value(p), json_string_length(p), model_tok_wants_bos(t),
                    false, ids);
        return true;
    }
    if (json_is_array(p) && json_array_size(p) > 0) {
        size_t np = json_array_size(p), i;
        const int32_t V = model_tok_n_vocab(t);
        *ids = xmalloc(sizeof(int32_t) * np);
        json_t *v;
        json_array_foreach(p, i, v) {
            json_int_t id = json_is_integer(v) ? json_integer_value(v) : -1;
            if (id < 0 || id >= V) {
                free(*ids);
                *ids = NULL;
                return bad(e, "prompt",
                           "'prompt' must be a string, one string in an array, or an array of "
                           "token ids in 0..%d (one prompt per request)", V - 1);
            }
            (*ids)[i] = (int32_t)id;
        }
        *n = (int64_t)np;
        return true;
    }
    return bad(e, "prompt", "'prompt' is required and must be a string or an array of token ids");
}

static bool parse_stop(json_t *j, gen_t *g, verr_t *e)
{
    json_t *s = field(j, "stop");
    if (!s) return true;
    json_t *arr = json_is_string(s) ? json_pack("[O]", s) : json_incref(s);
    bool ok = json_is_array(arr) ||
              bad(e, "stop", "'stop' must be a string or an array of strings");
    if (ok && json_array_size(arr) > MAX_STOP)
        ok = bad(e, "stop", "'stop' holds at most %d strings", MAX_STOP);
    size_t i;
    json_t *v;
    if (ok) {
        json_array_foreach(arr, i, v) {
            size_t n = json_is_string(v) ? json_string_length(v) : 0;
            if (n == 0 || n > MAX_STOP_LEN || strlen(json_string_value(v)) != n) {
                ok = bad(e, "stop", "'stop' entries must be non-empty strings of at most %d "
                         "bytes", MAX_STOP_LEN);
                break;
            }
            g->stop[g->n_stop++] = xstrdup(json_string_value(v));
        }
    }
    json_decref(arr);
    return ok;
}

static void route_generate(coord_api_t *a, coord_http_req_t *req, bool chat)
{
    json_t *j;
    if (!need_ready(a, req) || !need_experts(a, req) || !body_object(a, req, &j)) return;
    verr_t e;
    gen_t *g = xcalloc(1, sizeof(*g));
    g->api = a;
    g->chat = chat;
    g->top_logprobs = -1;
    g->t_start = wire_now();
    coord_sampler_params_t sp = coord_sampler_params_default();
    sp.seed = (uint64_t)(wire_now() * 1e9) ^ (a->next_rid * 0x9e3779b97f4a7c15ull);
    long long n_choices = 1, max_tokens = -1, top_k = sp.top_k, seed = -1, logprobs_n = -1;
    long long top_logprobs = 0;
    bool logprobs = false;
    int32_t *ids = NULL;
    int64_t n_prompt = 0;
    json_t *so = field(j, "stream_options"), *model = field(j, "model");
    json_t *user = field(j, "user");
    bool ok = true;
    if (model && !json_is_string(model)) ok = bad(&e, "model", "'model' must be a string");
    if (ok && user && !json_is_string(user)) ok = bad(&e, "user", "'user' must be a string");
    ok = ok && get_int(j, "n", 1, 1, &n_choices, &e);
    ok = ok && get_bool(j, "stream", &g->stream, &e);
    if (ok && so && !json_is_object(so))
        ok = bad(&e, "stream_options", "'stream_options' must be an object");
    ok = ok && (!so || get_bool(so, "include_usage", &g->include_usage, &e));
    ok = ok && get_int(j, "max_tokens", 1, a->p.max_tokens, &max_tokens, &e);
    if (chat) ok = ok && get_int(j, "max_completion_tokens", 1, a->p.max_tokens, &max_tokens, &e);
    ok = ok && get_num(j, "temperature", 0, 2, &sp.temperature, &e);
    ok = ok && get_num(j, "top_p", 0, 1, &sp.top_p, &e);
    ok = ok && get_int(j, "top_k", -1, 1 << 20, &top_k, &e);
    ok = ok && get_num(j, "min_p", 0, 1, &sp.min_p, &e);
    ok = ok && get_int(j, "seed", INT64_MIN, INT64_MAX, &seed, &e);
    ok = ok && get_num(j, "presence_penalty", -2, 2, &sp.presence_penalty, &e);
    ok = ok && get_num(j, "frequency_penalty", -2, 2, &sp.frequency_penalty, &e);
    ok = ok && get_num(j, "repetition_penalty", 0.01, 10, &sp.repeat_penalty, &e);
    ok = ok && get_num(j, "repeat_penalty", 0.01, 10, &sp.repeat_penalty, &e);
    if (chat) {
        ok = ok && get_bool(j, "logprobs", &logprobs, &e);
        ok = ok && get_int(j, "top_logprobs", 0, MAX_TOP, &top_logprobs, &e);
        if (logprobs) g->top_logprobs = (int)top_logprobs;
    } else {
        ok = ok && get_int(j, "logprobs", 0, MAX_TOP, &logprobs_n, &e);
        if (logprobs_n >= 0) g->top_logprobs = (int)logprobs_n;
    }
    ok = ok && parse_stop(j, g, &e);
    ok = ok && build_prompt(a, j, chat, &ids, &n_prompt, &e);
    json_decref(j);
    if (!ok) {
        send_error(a, req, 400, e.param, NULL, "%s", e.msg);
        goto drop;
    }
    if (n_prompt <= 0) {
        send_error(a, req, 400, chat ? "messages" : "prompt", NULL,
                   n_prompt == 0 ? "the prompt is empty" : "cannot tokenize the prompt: %s",
                   model_strerror((int)n_prompt));
        goto drop;
    }
    if (n_prompt > a->p.max_prompt_tokens || n_prompt >= a->st.n_ctx) {
        send_error(a, req, 400, chat ? "messages" : "prompt", "context_length_exceeded",
                   "the prompt has %lld tokens; this server accepts at most %d (context %d)",
                   (long long)n_prompt,
                   a->p.max_prompt_tokens < a->st.n_ctx - 1 ? a->p.max_prompt_tokens
                                                            : a->st.n_ctx - 1,
                   a->st.n_ctx);
        goto drop;
    }
    if (max_tokens < 0) max_tokens = a->p.max_tokens;
    if (max_tokens > a->st.n_ctx - n_prompt) max_tokens = a->st.n_ctx - n_prompt;
    sp.top_k = (int)top_k;
    if (seed >= 0 || seed < -1) sp.seed = (uint64_t)seed;
    g->n_prompt = (int)n_prompt;
    g->detok = model_detok_new(a->st.tok, 0);
    g->created = (long long)time(NULL);
    snprintf(g->rid, sizeof(g->rid), "%s-%08llx%08llx", chat ? "chatcmpl" : "cmpl",
             (unsigned long long)g->created & 0xffffffffull, ++a->next_rid);
    coord_gen_req_t gr = {
        .prompt = ids,
        .n_prompt = (int)n_prompt,
        .max_tokens = (int)max_tokens,
        .sampling = sp,
        .top_logprobs = g->top_logprobs,
        .on_token = cb_token,
        .on_done = cb_done,
        .ud = g,
    };
    int64_t id = coord_sched_submit(a->st.sched, &gr);
    free(ids);
    ids = NULL;
    if (id == -EBUSY) {
        send_error(a, req, 429, NULL, "queue_full",
                   "the server is busy: every slot is taken and the queue is full; retry later");
        goto drop;
    }
    if (id < 0) {
        send_error(a, req, 400, NULL, NULL, "the scheduler refused the request: %s",
                   model_strerror((int)id));
        goto drop;
    }
    g->id = id;
    g->req = req;
    req->ud = g;
    req->on_abort = on_abort;
    g->next = a->live;
    if (a->live) a->live->prev = g;
    a->live = g;
    a->n_live++;
    if (g->stream) {
        coord_metrics_request(a->metrics, 200);
        coord_http_stream_begin(req, 200, "text/event-stream",
                                "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n");
        if (chat) send_chunk(g, "", 0, NULL);
    }
    return;
drop:
    free(ids);
    /* Not in the live list yet: free the parts by hand. */
    model_detok_free(g->detok);
    for (int i = 0; i < g->n_stop; i++) free(g->stop[i]);
    free(g);
}

/* ---- routing ---- */

/* Compares the whole key whatever the input, so timing tells nothing about how much matched. */
static bool key_ok(const char *want, const char *auth)
{
    static const char pre[] = "Bearer ";
    if (!auth || strncmp(auth, pre, sizeof(pre) - 1) != 0) return false;
    const char *got = auth + sizeof(pre) - 1;
    size_t nw = strlen(want), ng = strlen(got);
    volatile unsigned char diff = (unsigned char)(nw != ng);
    for (size_t i = 0; i < nw; i++) diff |= (unsigned char)(want[i] ^ got[i < ng ? i : 0]);
    return diff == 0;
}

void coord_api_handle(void *ud, coord_http_req_t *req)
{
    coord_api_t *a = ud;
    const char *m = req->method, *p = req->path;
    bool get = !strcmp(m, "GET"), post = !strcmp(m, "POST");
    if (!strcmp(m, "OPTIONS")) { /* CORS preflight: the headers come from http.c */
        coord_metrics_request(a->metrics, 204);
        coord_http_respond(req, 204, NULL, "", 0, NULL);
        return;
    }
    /* Liveness (Kubernetes livenessProbe): the loop thread answering is all it says, so it
     * stays 200 while the model loads, a node is down or a long prefill holds the scheduler. */
    if (!strcmp(p, "/live")) {
        if (get) send_json(a, req, 200, json_pack("{s:s}", "status", "alive"), NULL);
        else send_error(a, req, 405, NULL, NULL, "%s needs GET", p);
        return;
    }
    if (!strcmp(p, "/health") || !strcmp(p, "/v1/health")) {
        if (get) route_health(a, req);
        else send_error(a, req, 405, NULL, NULL, "%s needs GET", p);
        return;
    }
    if (a->p.api_key && !key_ok(a->p.api_key, req->authorization)) {
        send_error(a, req, 401, NULL, "invalid_api_key",
                   "missing or invalid API key: send 'Authorization: Bearer KEY'");
        return;
    }
    static const struct {
        const char *path;
        bool post;
        int route;
    } routes[] = {
        {"/v1/models", false, 0},          {"/metrics", false, 1},
        {"/tokenize", true, 2},            {"/detokenize", true, 3},
        {"/v1/completions", true, 4},      {"/v1/chat/completions", true, 5},
        {"/completions", true, 4},         {"/chat/completions", true, 5},
        {"/models", false, 0},             {"/admin/rebalance", true, 6},
    };
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (strcmp(p, routes[i].path)) continue;
        if (routes[i].post ? !post : !get) {
            send_error(a, req, 405, NULL, NULL, "%s needs %s", p, routes[i].post ? "POST" : "GET");
            return;
        }
        switch (routes[i].route) {
        case 0: route_models(a, req); return;
        case 1: route_metrics(a, req); return;
        case 2: route_tokenize(a, req); return;
        case 3: route_detokenize(a, req); return;
        case 4: route_generate(a, req, false); return;
        case 6: route_rebalance(a, req); return;
        default: route_generate(a, req, true); return;
        }
    }
    send_error(a, req, 404, NULL, "not_found", "no route %s %s", m, p);
}

/* ---- lifecycle ---- */

coord_api_t *coord_api_new(struct uv_loop_s *loop, const coord_api_params_t *p)
{
    coord_api_t *a = xcalloc(1, sizeof(*a));
    a->p = *p;
    a->metrics = coord_metrics_new();
    a->created = (long long)time(NULL);
    snprintf(a->status, sizeof(a->status), "loading");
    CHECK(uv_mutex_init(&a->mu) == 0);
    CHECK(uv_async_init(loop, &a->async, on_async) == 0);
    a->async.data = a;
    return a;
}

void coord_api_set_stack(coord_api_t *a, const coord_api_stack_t *st)
{
    a->st = *st;
    const char *tmpl = model_gguf_get_str(st->m->gguf, "tokenizer.chat_template");
    a->chat_tmpl = tmpl ? model_chat_detect(tmpl) : NULL;
    if (tmpl && !a->chat_tmpl) LOG_WARN("unrecognised chat template; using chatml");
    if (!a->chat_tmpl) a->chat_tmpl = "chatml";
    const model_hparams_t *hp = &st->m->hp;
    if (hp->n_expert > 0) {
        a->moe_layer = xcalloc((size_t)hp->n_layer + 1, sizeof(bool));
        for (int l = 0; l < hp->n_layer; l++) a->moe_layer[l] = st->m->layers[l].gate_inp != NULL;
        a->expert_tokens = xcalloc((size_t)hp->n_layer * hp->n_expert, sizeof(uint64_t));
    }
    if (st->cluster) {
        a->n_nodes = coord_cluster_n_nodes(st->cluster);
        a->nodes = xcalloc((size_t)a->n_nodes, sizeof(coord_node_stats_t));
    }
    a->ready = true;
}

void coord_api_set_status(coord_api_t *a, const char *status)
{
    snprintf(a->status, sizeof(a->status), "%s", status);
}

int coord_api_live(const coord_api_t *a)
{
    return a->n_live;
}

coord_metrics_t *coord_api_metrics(coord_api_t *a)
{
    return a->metrics;
}

static void on_api_closed(uv_handle_t *h)
{
    coord_api_t *a = h->data;
    uv_mutex_destroy(&a->mu);
    coord_metrics_free(a->metrics);
    free(a->moe_layer);
    free(a->expert_tokens);
    free(a->nodes);
    free(a);
}

void coord_api_free(coord_api_t *a)
{
    if (!a) return;
    /* The scheduler is gone, so every on_done it owed is queued: handle them now. */
    on_async(&a->async);
    CHECK(a->n_live == 0);
    uv_close((uv_handle_t *)&a->async, on_api_closed);
}
