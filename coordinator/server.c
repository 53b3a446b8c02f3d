/* The serve command: one libuv loop thread owns the HTTP server, timers and signals; the model
 * loads on a thread of its own so the port answers (/health: 503 loading) from the first moment.
 * Stopping drains: no new connections, running requests get grace_ms to finish, then whatever
 * is left is cut and every handle closes so uv_run returns. The stack (model, tokenizer, pool,
 * experts, engine, scheduler) is built by the loader thread and, once handed over through an
 * async handle, belongs to the loop thread.
 */
#include "coordinator/coord.h"
#include "coordinator/coordinator-int.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "wire/wire.h"

struct coord_server {
    uv_loop_t *loop;
    coord_server_params_t p;
    char model_id[128];
    coord_http_t *http;
    coord_api_t *api;
    uv_async_t stop_async, loaded_async;
    uv_timer_t drain_timer;
    int n_open;               /* handles above not yet closed */
    uv_thread_t loader;
    bool loader_running;
    /* Written by the loader thread before it signals loaded_async. */
    model_t *m;
    model_tok_t *tok;
    kern_pool_t *pool;
    coord_cluster_t *cluster; /* NULL: local experts */
    coord_experts_t *ex;
    coord_engine_t *eng;
    coord_sched_t *sched;
    coord_trace_t *trace;     /* --trace, owned; written and freed by coord_server_free */
    int n_ctx;
    char load_error[160];     /* "" when the load worked */
    bool stopping, torn_down, failed;
    double t_stop;
};

coord_server_params_t coord_server_params_default(void)
{
    return (coord_server_params_t){
        .host = "127.0.0.1",
        .port = 8080,
        .n_slots = 4,
        .n_ctx = 0,
        .n_batch = 512,
        .n_threads = 2,
        .max_queue = 64,
        .max_body = 1 << 20,
        .max_header = 16384,
        .max_conns = 256,
        .timeout_ms = 30000,
        .grace_ms = 5000,
        .max_tokens = 2048,
        .max_prompt = 32768,
        .wire_type = "f32",
        .node_timeout_ms = 10000,
        .rebalance_above = 1.15,
        .rebalance_step = 1024,
        .replicas = 1,
    };
}

/* ---- loading (loader thread) ---- */

static void load(void *arg)
{
    coord_server_t *s = arg;
    const coord_server_params_t *p = &s->p;
    int err = model_load(p->model, &s->m);
    if (err) {
        snprintf(s->load_error, sizeof(s->load_error), "cannot load %s: %s", p->model,
                 model_strerror(err));
        goto out;
    }
    if ((err = model_tok_new(s->m->gguf, &s->tok)) != 0) {
        snprintf(s->load_error, sizeof(s->load_error), "cannot build the tokenizer: %s",
                 model_strerror(err));
        goto out;
    }
    s->pool = kern_pool_new(p->n_threads);
    if (s->m->hp.n_expert > 0 && p->n_expert_nodes > 0) {
        /* The cluster's sockets are created here and, once the scheduler thread starts, used
         * by that thread alone (thread creation orders the hand-over), as in `run`. */
        coord_cluster_config_t cc = coord_cluster_config_default();
        cc.n_nodes = p->n_expert_nodes;
        cc.endpoints = p->expert_nodes;
        CHECK(wire_dtype_parse(p->wire_type, &cc.wire_type) == 0);
        cc.timeout_ms = cc.connect_ms = p->node_timeout_ms;
        cc.curve_dir = p->curve_keys;
        cc.replicas = p->replicas;
        cc.load_profile = p->load_profile, cc.node_cap = p->node_cap, cc.balance = p->balance;
        cc.rebalance_every_s = p->rebalance_every, cc.rebalance_above = p->rebalance_above;
        cc.rebalance_step_kb = p->rebalance_step;
        cc.progress = false;
        s->cluster = coord_cluster_new(&cc, s->m);
        if (!s->cluster) {
            snprintf(s->load_error, sizeof(s->load_error),
                     "cannot start the expert nodes (reason logged above)");
            goto out;
        }
        /* The guard tends the nodes (heartbeats, rejoining) and fails calls to a down node
         * at once instead of at a deadline. */
        s->ex = coord_cluster_guard_new(s->cluster,
                                        coord_experts_remote_new(s->cluster, p->n_batch));
    } else if (s->m->hp.n_expert > 0) {
        s->ex = coord_experts_local_new(s->m, s->pool, p->n_batch);
    }
    if (s->ex) coord_experts_set_trace(s->ex, s->trace);
    coord_engine_params_t ep = coord_engine_params_default();
    ep.n_ctx = p->n_ctx;
    ep.n_slots = p->n_slots;
    ep.n_batch = p->n_batch;
    ep.kv_f16 = p->kv_f16;
    ep.n_micro = p->n_micro;
    ep.trace = s->trace;
    s->eng = coord_engine_new(s->m, s->ex, s->pool, &ep);
    if (!s->eng) {
        snprintf(s->load_error, sizeof(s->load_error), "the engine parameters do not fit");
        goto out;
    }
    s->n_ctx = coord_engine_params(s->eng)->n_ctx;
    coord_sched_params_t sp = coord_sched_params_default();
    sp.n_slots = p->n_slots;
    sp.n_batch = p->n_batch;
    sp.n_ctx = s->n_ctx;
    sp.max_queue = p->max_queue;
    sp.n_threads = p->n_threads;
    sp.n_draft = p->n_draft;
    s->sched = coord_sched_new(s->eng, s->m, &sp);
    if (!s->sched) snprintf(s->load_error, sizeof(s->load_error), "cannot start the scheduler");
out:
    uv_async_send(&s->loaded_async);
}

static void begin_stop(coord_server_t *s);

static void on_loaded(uv_async_t *h)
{
    coord_server_t *s = h->data;
    if (s->loader_running) {
        uv_thread_join(&s->loader);
        s->loader_running = false;
    }
    if (s->torn_down) return;
    if (s->load_error[0]) {
        LOG_ERR("%s", s->load_error);
        coord_api_set_status(s->api, s->load_error);
        s->failed = true;
        begin_stop(s);
        return;
    }
    coord_api_stack_t st = {.m = s->m, .tok = s->tok, .sched = s->sched, .n_ctx = s->n_ctx,
                            .n_slots = s->p.n_slots, .eng = s->eng, .cluster = s->cluster};
    coord_api_set_stack(s->api, &st);
    LOG_INFO("model %s ready: %d slots of %d positions", s->model_id, s->p.n_slots, s->n_ctx);
}

/* ---- stopping (loop thread) ---- */

static void on_closed(uv_handle_t *h)
{
    coord_server_t *s = h->data;
    s->n_open--;
}

static void teardown(coord_server_t *s)
{
    s->torn_down = true;
    uv_timer_stop(&s->drain_timer);
    coord_http_free(s->http); /* cancels whatever still runs */
    s->http = NULL;
    if (s->loader_running) {
        uv_thread_join(&s->loader);
        s->loader_running = false;
    }
    if (s->sched) coord_sched_free(s->sched); /* every on_done it owes is queued by now */
    s->sched = NULL;
    coord_api_free(s->api);
    s->api = NULL;
    uv_close((uv_handle_t *)&s->stop_async, on_closed);
    uv_close((uv_handle_t *)&s->loaded_async, on_closed);
    uv_close((uv_handle_t *)&s->drain_timer, on_closed);
}

static void on_drain_tick(uv_timer_t *t)
{
    coord_server_t *s = t->data;
    bool idle = coord_http_busy(s->http) == 0 && coord_api_live(s->api) == 0;
    if (idle || wire_now() - s->t_stop > s->p.grace_ms / 1000.0) {
        if (!idle) LOG_WARN("grace period over: cutting the requests still running");
        teardown(s);
    }
}

static void begin_stop(coord_server_t *s)
{
    if (s->stopping) return;
    s->stopping = true;
    s->t_stop = wire_now();
    coord_http_drain(s->http);
    uv_timer_start(&s->drain_timer, on_drain_tick, 0, 20);
}

static void on_stop(uv_async_t *h)
{
    begin_stop(h->data);
}

void coord_server_stop(coord_server_t *s)
{
    uv_async_send(&s->stop_async);
}

/* ---- lifecycle ---- */

coord_server_t *coord_server_new(struct uv_loop_s *loop, const coord_server_params_t *p)
{
    if (!p->model || p->n_slots < 1 || p->n_slots > 1024 || p->n_batch < 1 ||
        p->n_batch > 65536 || p->n_ctx < 0 || p->n_threads < 1 || p->n_threads > 256 ||
        p->max_queue < 0 || p->max_body < 1 || p->max_header < 256 || p->max_conns < 1 ||
        p->timeout_ms < 1 || p->grace_ms < 0 || p->max_tokens < 1 || p->max_prompt < 1 ||
        p->n_expert_nodes < 0 || p->node_timeout_ms < 1 || p->replicas < 1 || p->n_draft < 0 ||
        p->n_micro < 0 || p->n_micro > COORD_MICRO_BATCHES_MAX) {
        LOG_ERR("bad server parameters (model, slots, batch, ctx, threads, draft, micro-batches "
                "or a limit)");
        return NULL;
    }
    coord_trace_t *trace = NULL;
    if (p->trace && !(trace = coord_trace_new(p->trace, 0))) return NULL;
    wire_dtype_t dt;
    if (!p->wire_type || wire_dtype_parse(p->wire_type, &dt) != 0 || dt == WIRE_DTYPE_BYTES) {
        LOG_ERR("bad wire type '%s' (f32, f16, bf16 or q8_0)", p->wire_type ? p->wire_type : "");
        return NULL;
    }
    /* A client closing its socket must not kill the process when we write to it. */
    signal(SIGPIPE, SIG_IGN);
    coord_server_t *s = xcalloc(1, sizeof(*s));
    s->loop = loop;
    s->p = *p;
    s->trace = trace;
    const char *base = strrchr(p->model, '/');
    snprintf(s->model_id, sizeof(s->model_id), "%s", p->alias ? p->alias : base ? base + 1 : p->model);
    coord_api_params_t ap = {.model_id = s->model_id, .api_key = p->api_key,
                             .max_prompt_tokens = p->max_prompt, .max_tokens = p->max_tokens};
    s->api = coord_api_new(loop, &ap);
    coord_http_params_t hp = coord_http_params_default();
    hp.host = p->host;
    hp.port = p->port;
    hp.max_header_bytes = (size_t)p->max_header;
    hp.max_body_bytes = (size_t)p->max_body;
    hp.max_conns = p->max_conns;
    hp.timeout_ms = p->timeout_ms;
    hp.cors_origin = p->cors_origin;
    hp.metrics = coord_api_metrics(s->api);
    hp.on_request = coord_api_handle;
    hp.ud = s->api;
    s->http = coord_http_new(loop, &hp);
    uv_async_init(loop, &s->stop_async, on_stop);
    uv_async_init(loop, &s->loaded_async, on_loaded);
    uv_timer_init(loop, &s->drain_timer);
    s->stop_async.data = s->loaded_async.data = s->drain_timer.data = s;
    s->n_open = 3;
    if (!s->http) {
        /* Close what was opened; the caller runs the loop once and frees. */
        s->failed = true;
        teardown(s);
        uv_run(loop, UV_RUN_DEFAULT);
        coord_server_free(s);
        return NULL;
    }
    if (uv_thread_create(&s->loader, load, s) != 0) {
        snprintf(s->load_error, sizeof(s->load_error), "cannot start the loader thread");
        uv_async_send(&s->loaded_async);
    } else {
        s->loader_running = true;
    }
    return s;
}

int coord_server_port(const coord_server_t *s)
{
    return s->http ? coord_http_port(s->http) : -1;
}

int coord_server_free(coord_server_t *s)
{
    if (!s) return 0;
    CHECK(s->n_open == 0 && !s->loader_running && !s->sched);
    /* The scheduler thread that recorded the trace has been joined. */
    coord_trace_write(s->trace);
    coord_trace_free(s->trace);
    if (s->p.record_load && s->eng) coord_load_record(s->eng, s->m, s->p.record_load);
    coord_engine_free(s->eng);
    coord_experts_free(s->ex);
    coord_cluster_free(s->cluster);
    kern_pool_free(s->pool);
    model_tok_free(s->tok);
    model_free(s->m);
    int rc = s->failed ? 1 : 0;
    free(s);
    return rc;
}

/* ---- the command ---- */

typedef struct {
    uv_signal_t sig[2];
    coord_server_t *s;
} sigs_t;

static void on_signal(uv_signal_t *h, int signum)
{
    sigs_t *g = h->data;
    LOG_INFO("signal %d: stopping", signum);
    coord_server_stop(g->s);
    /* A second signal gets the default action: the process ends at once. */
    for (int i = 0; i < 2; i++)
        if (!uv_is_closing((uv_handle_t *)&g->sig[i])) uv_close((uv_handle_t *)&g->sig[i], NULL);
}

static char *read_key_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "serve: cannot open --api-key-file %s\n", path);
        return NULL;
    }
    char buf[512];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) buf[--n] = 0;
    if (!n) {
        fprintf(stderr, "serve: --api-key-file %s is empty\n", path);
        return NULL;
    }
    return xstrdup(buf);
}

int coord_cmd_serve(int argc, char **argv)
{
    coord_server_params_t p = coord_server_params_default();
    const char *key_file = NULL, *log_level = NULL;
    int timeout_s = p.timeout_ms / 1000, grace_s = p.grace_ms / 1000;
    coord__cluster_flags_t cf = coord__cluster_flags_default();
    const coord_opt_t opts[] = {
        {"model", 'm', "MOEMESH_MODEL", COORD_OPT_STR, &p.model, "FILE", "GGUF model"},
        {"alias", 'a', "MOEMESH_ALIAS", COORD_OPT_STR, &p.alias, "NAME",
         "model name in the API (default: the file name)"},
        {"host", 0, "MOEMESH_HOST", COORD_OPT_STR, &p.host, "ADDR", "listen address (127.0.0.1)"},
        {"port", 0, "MOEMESH_PORT", COORD_OPT_INT, &p.port, "N", "listen port (8080; 0: any)"},
        {"parallel", 0, "MOEMESH_PARALLEL", COORD_OPT_INT, &p.n_slots, "N",
         "sequence slots, also -np (4)"},
        {"ctx-size", 'c', "MOEMESH_CTX_SIZE", COORD_OPT_INT, &p.n_ctx, "N",
         "positions per slot (default: the model's, at most 4096)"},
        {"batch", 'b', "MOEMESH_BATCH", COORD_OPT_INT, &p.n_batch, "N", "tokens per step (512)"},
        {"threads", 't', "MOEMESH_THREADS", COORD_OPT_INT, &p.n_threads, "N", "threads (2)"},
        {"max-queue", 0, "MOEMESH_MAX_QUEUE", COORD_OPT_INT, &p.max_queue, "N",
         "requests waiting for a slot before 429 (64)"},
        {"api-key", 0, "MOEMESH_API_KEY", COORD_OPT_STR, &p.api_key, "KEY",
         "require 'Authorization: Bearer KEY' (all but /health)"},
        {"api-key-file", 0, "MOEMESH_API_KEY_FILE", COORD_OPT_STR, &key_file, "FILE",
         "read the API key from FILE"},
        {"cors-origin", 0, "MOEMESH_CORS_ORIGIN", COORD_OPT_STR, &p.cors_origin, "ORIGIN",
         "send CORS headers allowing ORIGIN"},
        {"max-body", 0, "MOEMESH_MAX_BODY", COORD_OPT_INT, &p.max_body, "BYTES",
         "largest request body (1048576)"},
        {"max-header", 0, "MOEMESH_MAX_HEADER", COORD_OPT_INT, &p.max_header, "BYTES",
         "largest request line plus headers (16384)"},
        {"max-conns", 0, "MOEMESH_MAX_CONNS", COORD_OPT_INT, &p.max_conns, "N",
         "open connections (256)"},
        {"timeout", 0, "MOEMESH_TIMEOUT", COORD_OPT_INT, &timeout_s, "S",
         "seconds a client has to send a whole request (30)"},
        {"grace", 0, "MOEMESH_GRACE", COORD_OPT_INT, &grace_s, "S",
         "seconds running requests get to finish on SIGTERM (5)"},
        {"max-tokens", 0, "MOEMESH_MAX_TOKENS", COORD_OPT_INT, &p.max_tokens, "N",
         "largest max_tokens accepted, and the default (2048)"},
        {"max-prompt", 0, "MOEMESH_MAX_PROMPT", COORD_OPT_INT, &p.max_prompt, "N",
         "largest prompt in tokens (32768, and always below the context)"},
        {"kv-f16", 0, "MOEMESH_KV_F16", COORD_OPT_BOOL, &p.kv_f16, NULL, "f16 KV cache"},
        {"draft", 0, "MOEMESH_DRAFT", COORD_OPT_INT, &p.n_draft, "N",
         "speculative tokens per step from the context, greedy requests only (0: off)"},
        {"micro-batches", 0, "MOEMESH_MICRO_BATCHES", COORD_OPT_INT, &p.n_micro, "N",
         "micro-batches per step, pipelined against the expert nodes (0: adaptive; 1: off)"},
        {"trace", 0, "MOEMESH_TRACE", COORD_OPT_STR, &p.trace, "FILE",
         "write a Chrome/Perfetto trace (JSON) of every step when the server stops"},
        {"log-level", 0, "MOEMESH_LOG_LEVEL", COORD_OPT_STR, &log_level, "L",
         "error|warn|info|debug (info)"},
        COORD__CLUSTER_OPTS(cf),
    };
    /* llama.cpp's -np is two letters; it is spelled --parallel here. */
    char **av = xmalloc(sizeof(char *) * (size_t)(argc + 1));
    for (int i = 0; i < argc; i++) av[i] = strcmp(argv[i], "-np") ? argv[i] : "--parallel";
    av[argc] = NULL;
    int r = coord_opts_parse(opts, (int)(sizeof(opts) / sizeof(opts[0])), "serve", argc, av, 2);
    free(av);
    if (r) return r > 0 ? 0 : 2;
    if (log_level && wire_log_set_level_name(log_level) != 0) {
        fprintf(stderr, "serve: bad --log-level '%s'\n", log_level);
        return 2;
    }
    if (!p.model) {
        fprintf(stderr, "serve: no model given (-m FILE.gguf or MOEMESH_MODEL)\n");
        return 2;
    }
    if (timeout_s < 1 || timeout_s > 86400 || grace_s < 0 || grace_s > 86400) {
        fprintf(stderr, "serve: --timeout must be 1..86400 and --grace 0..86400 seconds\n");
        return 2;
    }
    p.timeout_ms = timeout_s * 1000;
    p.grace_ms = grace_s * 1000;
    if (key_file && p.api_key) {
        fprintf(stderr, "serve: give --api-key or --api-key-file, not both\n");
        return 2;
    }
    char *key = NULL;
    if (key_file) {
        if (!(key = read_key_file(key_file))) return 2;
        p.api_key = key;
    }
    /* The same checks and endpoint list as `run` (--expert-dns resolves here, before the
     * loop runs). */
    coord__endpoints_t eps = {0};
    if (coord__cluster_flags_check(&cf, &eps) != 0) {
        free(key);
        return 2;
    }
    p.expert_nodes = (const char *const *)eps.v;
    p.n_expert_nodes = eps.n;
    p.wire_type = cf.wire_type;
    p.node_timeout_ms = cf.node_timeout;
    p.curve_keys = cf.curve_keys;
    p.replicas = cf.replicas;
    p.load_profile = cf.load_profile, p.node_cap = cf.node_cap, p.balance = cf.balance;
    p.rebalance_every = cf.rebalance_every, p.rebalance_above = cf.rebalance_above;
    p.rebalance_step = cf.rebalance_step;
    p.record_load = cf.record_load;
    wire_log_set_role("coord");
    uv_loop_t loop;
    CHECK(uv_loop_init(&loop) == 0);
    coord_server_t *s = coord_server_new(&loop, &p);
    int rc = 1;
    if (s) {
        printf("listening on http://%s:%d\n", p.host, coord_server_port(s));
        fflush(stdout);
        sigs_t sg = {.s = s};
        for (int i = 0; i < 2; i++) {
            uv_signal_init(&loop, &sg.sig[i]);
            sg.sig[i].data = &sg;
            uv_signal_start(&sg.sig[i], on_signal, i ? SIGTERM : SIGINT);
            /* The signals alone do not keep the loop running once the server has closed. */
            uv_unref((uv_handle_t *)&sg.sig[i]);
        }
        uv_run(&loop, UV_RUN_DEFAULT);
        /* Stopped some other way (the model failed to load): the signals still listen. */
        for (int i = 0; i < 2; i++)
            if (!uv_is_closing((uv_handle_t *)&sg.sig[i])) uv_close((uv_handle_t *)&sg.sig[i], NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        rc = coord_server_free(s);
    }
    if (uv_loop_close(&loop) != 0) LOG_WARN("handles left open at exit");
    free(key);
    coord__endpoints_free(&eps);
    return rc;
}
