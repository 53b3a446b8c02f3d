/* The commands: `run` generates text from a prompt, `eval` prints teacher-forced logits. Both
 * build the same stack the server will: model, thread pool, routed experts, engine. The routed
 * experts are local, or on expert nodes when any is given (--expert-node, --expert-nodes,
 * --expert-dns): then the stack also holds the cluster those experts talk through.
 */
#include "coordinator/coord.h"
#include "coordinator/coordinator-int.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire/wire.h"

typedef struct {
    model_t *m;
    model_tok_t *tok;
    kern_pool_t *pool;
    coord_cluster_t *cluster; /* NULL: experts are local */
    coord_experts_t *ex;
    coord_engine_t *eng;
    coord__endpoints_t eps;   /* the nodes' "tcp://..." endpoints */
    coord_trace_t *trace;     /* --trace, NULL: none */
    const char *record_load;  /* --record-load, written by stack_free */
} run_stack_t;

/* The engine flags run and eval share beyond the cluster's. */
typedef struct {
    int micro_batches;        /* --micro-batches, 0: adaptive */
    const char *trace;        /* --trace FILE or NULL */
} run_engine_flags_t;

#define RUN_ENGINE_OPTS(ef)                                                                        \
    {"micro-batches", 0, "MOEMESH_MICRO_BATCHES", COORD_OPT_INT, &(ef).micro_batches, "N",         \
     "micro-batches per step, pipelined against the expert nodes (0: adaptive, the default; "    \
     "1: off; at most 8)"},                                                                        \
    {"trace", 0, "MOEMESH_TRACE", COORD_OPT_STR, &(ef).trace, "FILE",                              \
     "write a Chrome/Perfetto trace (JSON) of the run's layers, micro-batches and node requests"}

/* The trace is written however the command ends: a partial one shows where it stopped. */
static void stack_free(run_stack_t *s)
{
    coord_trace_write(s->trace);
    coord_trace_free(s->trace);
    if (s->record_load && s->eng) coord_load_record(s->eng, s->m, s->record_load);
    coord_engine_free(s->eng);
    coord_experts_free(s->ex);
    coord_cluster_free(s->cluster);
    kern_pool_free(s->pool);
    model_tok_free(s->tok);
    model_free(s->m);
    coord__endpoints_free(&s->eps);
}

static int stack_init(run_stack_t *s, const char *path, int threads, int ctx, int batch,
                      bool kv_f16, const coord__cluster_flags_t *cf, const run_engine_flags_t *ef)
{
    memset(s, 0, sizeof(*s));
    if (!path) {
        fprintf(stderr, "no model given (-m FILE.gguf or MOEMESH_MODEL)\n");
        return -EINVAL;
    }
    if (ef->micro_batches < 0 || ef->micro_batches > COORD_MICRO_BATCHES_MAX) {
        fprintf(stderr, "bad --micro-batches %d (0 adaptive, or 1..%d)\n", ef->micro_batches,
                COORD_MICRO_BATCHES_MAX);
        return -EINVAL;
    }
    if (ef->trace && !(s->trace = coord_trace_new(ef->trace, 0))) return -EIO;
    coord_cluster_config_t cc = coord_cluster_config_default();
    s->record_load = cf->record_load;
    int err = coord__cluster_flags_check(cf, &s->eps);
    if (err) return err;
    CHECK(wire_dtype_parse(cf->wire_type, &cc.wire_type) == 0);
    if ((err = model_load(path, &s->m)) != 0) {
        fprintf(stderr, "cannot load %s: %s\n", path, model_strerror(err));
        return err;
    }
    if ((err = model_tok_new(s->m->gguf, &s->tok)) != 0) {
        fprintf(stderr, "cannot build the tokenizer of %s: %s\n", path, model_strerror(err));
        return err;
    }
    if (threads < 1 || threads > 256 || batch < 1 || batch > 65536 || ctx < 0) {
        fprintf(stderr, "bad --threads, --batch or --ctx value\n");
        return -EINVAL;
    }
    s->pool = kern_pool_new(threads);
    if (s->m->hp.n_expert > 0 && s->eps.n > 0) {
        cc.n_nodes = s->eps.n;
        cc.endpoints = (const char *const *)s->eps.v;
        cc.timeout_ms = cc.connect_ms = cf->node_timeout;
        cc.curve_dir = cf->curve_keys;
        cc.replicas = cf->replicas;
        cc.load_profile = cf->load_profile, cc.node_cap = cf->node_cap, cc.balance = cf->balance;
        cc.rebalance_every_s = cf->rebalance_every, cc.rebalance_above = cf->rebalance_above;
        cc.rebalance_step_kb = cf->rebalance_step;
        s->cluster = coord_cluster_new(&cc, s->m);
        if (!s->cluster) {
            fprintf(stderr, "cannot start the expert nodes (reason above)\n");
            return -EIO;
        }
        s->ex = coord_experts_remote_new(s->cluster, batch);
    } else if (s->m->hp.n_expert > 0) {
        s->ex = coord_experts_local_new(s->m, s->pool, batch);
    } else if (s->eps.n > 0) {
        fprintf(stderr, "%s is a dense model: no experts for the nodes; running locally\n", path);
    }
    if (s->ex) coord_experts_set_trace(s->ex, s->trace);
    coord_engine_params_t p = coord_engine_params_default();
    p.n_ctx = ctx;
    p.n_batch = batch;
    p.kv_f16 = kv_f16;
    p.n_micro = ef->micro_batches;
    p.trace = s->trace;
    s->eng = coord_engine_new(s->m, s->ex, s->pool, &p);
    return s->eng ? 0 : -EINVAL;
}

/* Parses "1 2 3" (spaces or commas) into ids; returns the count or -EINVAL. */
static int parse_ids(const char *s, int32_t *ids, int cap, int n_vocab)
{
    int n = 0;
    while (*s) {
        while (*s == ' ' || *s == ',' || *s == '\n' || *s == '\t') s++;
        if (!*s) break;
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v >= n_vocab || n >= cap) return -EINVAL;
        ids[n++] = (int32_t)v;
        s = end;
    }
    return n;
}

/* llama.cpp spells the slot count -np, one dash and two letters, which coord_opts_parse would
 * read as an unknown short flag: it becomes --parallel in a copy of argv. */
static int run_parse(const coord_opt_t *opts, int n_opts, int argc, char **argv)
{
    char **av = xmalloc(sizeof(char *) * (size_t)(argc + 1));
    for (int i = 0; i < argc; i++) av[i] = strcmp(argv[i], "-np") ? argv[i] : (char *)"--parallel";
    av[argc] = NULL;
    int r = coord_opts_parse(opts, n_opts, "run", argc, av, 2);
    free(av);
    return r;
}

/* The one request of `run`: tokens stream to stdout as they come (on the scheduler thread),
 * and the main thread sleeps until on_done. */
typedef struct {
    model_detok_t *detok;
    bool ids_out;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;              /* guarded by mu */
    coord_finish_t why;
    coord_gen_stats_t st;
} run_gen_t;

static bool run_on_token(void *ud, const coord_token_t *t)
{
    run_gen_t *g = ud;
    if (g->ids_out) {
        printf("%d\n", t->id);
    } else {
        const char *out;
        size_t n;
        if (model_detok_push(g->detok, t->id, &out, &n) == 0 && n) fwrite(out, 1, n, stdout);
    }
    fflush(stdout);
    return true;
}

static void run_on_done(void *ud, coord_finish_t why, const coord_gen_stats_t *st)
{
    run_gen_t *g = ud;
    pthread_mutex_lock(&g->mu);
    g->done = true;
    g->why = why;
    g->st = *st;
    pthread_cond_signal(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

int coord_cmd_run(int argc, char **argv)
{
    const char *model = NULL, *prompt = NULL, *prompt_ids = NULL;
    int n_predict = 128, threads = 2, ctx = 0, batch = 512, seed = -1, n_par = 1, draft = 0;
    bool ids_out = false, kv_f16 = false, quiet = false;
    coord_sampler_params_t sp = coord_sampler_params_default();
    float temp = sp.temperature, top_p = sp.top_p, min_p = sp.min_p, rep = sp.repeat_penalty;
    int top_k = sp.top_k;
    coord__cluster_flags_t cf = coord__cluster_flags_default();
    run_engine_flags_t ef = {0};
    const coord_opt_t opts[] = {
        {"model", 'm', "MOEMESH_MODEL", COORD_OPT_STR, &model, "FILE", "GGUF model"},
        {"prompt", 'p', "MOEMESH_PROMPT", COORD_OPT_STR, &prompt, "TEXT", "prompt text"},
        {"prompt-ids", 0, "MOEMESH_PROMPT_IDS", COORD_OPT_STR, &prompt_ids, "IDS",
         "prompt as token ids (\"1 2 3\") instead of text"},
        {"n-predict", 'n', "MOEMESH_N_PREDICT", COORD_OPT_INT, &n_predict, "N",
         "tokens to generate (default 128)"},
        {"threads", 't', "MOEMESH_THREADS", COORD_OPT_INT, &threads, "N", "threads (default 2)"},
        {"ctx-size", 'c', "MOEMESH_CTX_SIZE", COORD_OPT_INT, &ctx, "N",
         "context length (default: the model's, at most 4096)"},
        {"batch", 'b', "MOEMESH_BATCH", COORD_OPT_INT, &batch, "N",
         "tokens per forward step (default 512)"},
        {"temp", 0, "MOEMESH_TEMP", COORD_OPT_FLOAT, &temp, "T", "temperature (0: greedy)"},
        {"top-k", 0, "MOEMESH_TOP_K", COORD_OPT_INT, &top_k, "K", "top-k (0: off)"},
        {"top-p", 0, "MOEMESH_TOP_P", COORD_OPT_FLOAT, &top_p, "P", "top-p (1: off)"},
        {"min-p", 0, "MOEMESH_MIN_P", COORD_OPT_FLOAT, &min_p, "P", "min-p (0: off)"},
        {"repeat-penalty", 0, "MOEMESH_REPEAT_PENALTY", COORD_OPT_FLOAT, &rep, "R",
         "repetition penalty (1: off)"},
        {"seed", 's', "MOEMESH_SEED", COORD_OPT_INT, &seed, "S", "sampling seed (-1: random)"},
        {"ids", 0, "MOEMESH_IDS", COORD_OPT_BOOL, &ids_out, NULL, "print token ids, one per line"},
        {"kv-f16", 0, "MOEMESH_KV_F16", COORD_OPT_BOOL, &kv_f16, NULL, "f16 KV cache"},
        {"quiet", 'q', "MOEMESH_QUIET", COORD_OPT_BOOL, &quiet, NULL, "no timings on stderr"},
        COORD__CLUSTER_OPTS(cf),
        {"parallel", 0, "MOEMESH_PARALLEL", COORD_OPT_INT, &n_par, "N",
         "sequence slots, also -np (default 1)"},
        {"draft", 0, "MOEMESH_DRAFT", COORD_OPT_INT, &draft, "N",
         "speculative tokens per step from the context, greedy only (0: off)"},
        RUN_ENGINE_OPTS(ef),
    };
    int n_opts = (int)(sizeof(opts) / sizeof(opts[0]));
    int r = run_parse(opts, n_opts, argc, argv);
    if (r) return r > 0 ? 0 : 2;
    if (!prompt && !prompt_ids) prompt = "";
    if (n_predict < 0) {
        fprintf(stderr, "run: -n must be >= 0\n");
        return 2;
    }
    run_stack_t s;
    if (stack_init(&s, model, threads, ctx, batch, kv_f16, &cf, &ef) != 0) {
        stack_free(&s);
        return 1;
    }
    const int n_ctx = coord_engine_params(s.eng)->n_ctx, V = s.m->hp.n_vocab;
    int32_t *ids = xmalloc(sizeof(int32_t) * (size_t)n_ctx);
    int64_t n;
    if (prompt_ids) {
        n = parse_ids(prompt_ids, ids, n_ctx, V);
        if (n < 0) fprintf(stderr, "run: bad --prompt-ids (ids must be 0..%d, at most %d)\n", V - 1, n_ctx);
    } else {
        n = model_tok_encode(s.tok, prompt, strlen(prompt), model_tok_wants_bos(s.tok), false, ids,
                             n_ctx);
        if (n > n_ctx) fprintf(stderr, "run: prompt of %lld tokens exceeds the context %d\n",
                               (long long)n, n_ctx), n = -1;
    }
    int rc = 1;
    if (n <= 0) {
        if (n == 0) fprintf(stderr, "run: empty prompt and the model has no BOS token\n");
        goto out;
    }
    if (!ids_out && !prompt_ids) fputs(prompt, stdout);
    fflush(stdout);
    sp.temperature = temp, sp.top_k = top_k, sp.top_p = top_p, sp.min_p = min_p;
    sp.repeat_penalty = rep;
    sp.seed = seed >= 0 ? (uint64_t)seed : (uint64_t)(wire_now() * 1e9);
    /* The engine gets -np slots (one request here; `serve` fills them) and the scheduler runs
     * the generation. */
    coord_engine_params_t ep = *coord_engine_params(s.eng);
    if (n_par != ep.n_slots) {
        ep.n_slots = n_par;
        coord_engine_free(s.eng);
        if (!(s.eng = coord_engine_new(s.m, s.ex, s.pool, &ep))) goto out;
    }
    coord_sched_params_t schp = coord_sched_params_default();
    schp.n_threads = threads;
    schp.n_draft = draft;
    coord_sched_t *sch = coord_sched_new(s.eng, s.m, &schp);
    if (!sch) goto out;
    run_gen_t g = {.detok = model_detok_new(s.tok, 0), .ids_out = ids_out};
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    int max_tokens = n_predict < n_ctx - n ? n_predict : (int)(n_ctx - n);
    coord_gen_req_t req = {.prompt = ids, .n_prompt = (int)n, .max_tokens = max_tokens,
                           .sampling = sp, .top_logprobs = -1, .on_token = run_on_token,
                           .on_done = run_on_done, .ud = &g};
    double t0 = wire_now();
    int64_t id = max_tokens > 0 ? coord_sched_submit(sch, &req) : 0;
    if (id < 0) fprintf(stderr, "run: the scheduler refused the request: %s\n",
                        wire_strerror((int)id));
    pthread_mutex_lock(&g.mu);
    while (id > 0 && !g.done) pthread_cond_wait(&g.cv, &g.mu);
    pthread_mutex_unlock(&g.mu);
    coord_sched_stats_t sst;
    coord_sched_stats(sch, &sst);
    coord_sched_free(sch);
    const char *tail;
    size_t tail_n;
    model_detok_flush(g.detok, &tail, &tail_n);
    if (tail_n) fwrite(tail, 1, tail_n, stdout);
    model_detok_free(g.detok);
    pthread_mutex_destroy(&g.mu);
    pthread_cond_destroy(&g.cv);
    if (!ids_out) printf("\n");
    fflush(stdout);
    if (id < 0) goto out;
    if (id > 0 && g.why == COORD_FINISH_ERROR) {
        fprintf(stderr, "run: %s\n", g.st.message);
        goto out;
    }
    /* Prompt time runs to the first token (its sampling included), generation from there. */
    int gen = id > 0 ? g.st.n_generated : 0;
    double t1 = id > 0 && gen > 0 ? g.st.t_first_token : wire_now(), t2 = id > 0 ? g.st.t_done : t1;
    if (!quiet && draft > 0 && sst.gen_passes > 0)
        fprintf(stderr, "draft: %llu of %llu drafted tokens accepted; %.2f tokens per step\n",
                (unsigned long long)sst.draft_accepted, (unsigned long long)sst.draft_proposed,
                (double)sst.tokens_generated / (double)sst.gen_passes);
    if (!quiet)
        fprintf(stderr, "prompt: %lld tokens in %.3f s (%.1f tok/s); generation: %d tokens in "
                        "%.3f s (%.1f tok/s)\n",
                (long long)n, t1 - t0, n / (t1 - t0 + 1e-9), gen, t2 - t1,
                gen / (t2 - t1 + 1e-9));
    if (!quiet && s.cluster) coord_cluster_print_summary(s.cluster, stderr, n + gen);
    rc = 0;
out:
    free(ids);
    stack_free(&s);
    return rc;
}

int coord_cmd_eval(int argc, char **argv)
{
    const char *model = NULL, *idstr = NULL;
    int top = 5, threads = 2, batch = 0;
    coord__cluster_flags_t cf = coord__cluster_flags_default();
    run_engine_flags_t ef = {0};
    const coord_opt_t opts[] = {
        {"model", 'm', "MOEMESH_MODEL", COORD_OPT_STR, &model, "FILE", "GGUF model"},
        {"ids", 0, "MOEMESH_IDS", COORD_OPT_STR, &idstr, "IDS", "token ids, \"1 2 3\""},
        {"top", 0, "MOEMESH_TOP", COORD_OPT_INT, &top, "K", "logits printed per position"},
        {"threads", 't', "MOEMESH_THREADS", COORD_OPT_INT, &threads, "N", "threads (default 2)"},
        {"batch", 'b', "MOEMESH_BATCH", COORD_OPT_INT, &batch, "N",
         "tokens per forward step (default 0: all ids in one)"},
        COORD__CLUSTER_OPTS(cf),
        RUN_ENGINE_OPTS(ef),
    };
    int r = coord_opts_parse(opts, (int)(sizeof(opts) / sizeof(opts[0])), "eval", argc, argv, 2);
    if (r) return r > 0 ? 0 : 2;
    if (!idstr || top < 1 || batch < 0) {
        fprintf(stderr, "eval: --ids is required, --top must be >= 1 and --batch >= 0\n");
        return 2;
    }
    /* The id count sizes the stack; the ids go through in steps of --batch (all at once by
     * default). */
    int cap = (int)strlen(idstr) / 2 + 1;
    if (batch == 0 || batch > cap) batch = cap;
    run_stack_t s;
    if (stack_init(&s, model, threads, cap + 1, batch, false, &cf, &ef) != 0) {
        stack_free(&s);
        return 1;
    }
    const int V = s.m->hp.n_vocab;
    int32_t *ids = xmalloc(sizeof(int32_t) * cap), *pos = xmalloc(sizeof(int32_t) * cap);
    int32_t *slot = xcalloc(cap, sizeof(int32_t));
    bool *want = xmalloc((size_t)cap);
    int n = parse_ids(idstr, ids, cap, V);
    int rc = 1;
    float *logits = NULL;
    if (n <= 0) {
        fprintf(stderr, "eval: bad --ids (ids must be 0..%d)\n", V - 1);
        goto out;
    }
    for (int i = 0; i < n; i++) pos[i] = i, want[i] = true;
    logits = xmalloc(sizeof(float) * (size_t)n * V);
    int err = 0;
    for (int i0 = 0; i0 < n && !err; i0 += batch) {
        coord_batch_t b = {.n = n - i0 < batch ? n - i0 : batch, .tok = ids + i0, .pos = pos + i0,
                           .slot = slot + i0, .want = want + i0};
        err = coord_engine_decode(s.eng, &b, logits + (size_t)i0 * V);
    }
    if (err) {
        fprintf(stderr, "eval: forward pass failed: %s\n", model_strerror(err));
        goto out;
    }
    if (top > V) top = V;
    int *best = xmalloc(sizeof(int) * top);
    for (int i = 0; i < n; i++) {
        const float *l = logits + (size_t)i * V;
        kern_topk(l, V, top, best);
        printf("%d", i);
        for (int j = 0; j < top; j++) printf(" %d:%.6g", best[j], l[best[j]]);
        printf("\n");
    }
    free(best);
    rc = 0;
out:
    free(logits), free(ids), free(pos), free(slot), free(want);
    stack_free(&s);
    return rc;
}
