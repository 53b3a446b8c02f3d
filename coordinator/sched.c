/* The scheduler: continuous batching over a fixed set of sequence slots. One thread owns the
 * engine and runs step after step; each step
 *   1. takes cancelled requests out and admits queued ones into free slots (FIFO),
 *   2. builds one batch: the next token of every generating sequence first (plus its
 *      speculative drafts, for greedy requests with --draft), then chunks of pending prompts,
 *      oldest request first, up to n_batch tokens (chunked prefill),
 *   3. decodes it, asking for logits only where a token is sampled,
 *   4. samples, streams each token to its request, and retires finished sequences, whose slots
 *      are cleared and reused by the next step.
 *
 * Threads: submit, cancel and stats run on any thread and touch only the fields marked
 * "guarded by mu"; everything else belongs to the scheduler thread. A slot's req pointer is
 * written by the scheduler thread under mu (so cancel can find active requests) and read by it
 * without the lock. Callbacks run on the scheduler thread with mu released, so they may call
 * submit and cancel.
 *
 * Invariants of an active slot: ctx holds n_tok ids (prompt, then generated); the engine holds
 * n_past positions of it; while the prompt is pending n_past < n_tok = n_prompt, afterwards
 * n_past == n_tok - 1 (the last sampled id is fed by the next step).
 */
#include "coordinator/coord.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coordinator/coordinator-int.h"
#include "wire/wire.h"

#define TOP_LOGPROBS_MAX 20
/* Drafts beyond this many per step rarely pay off and would only grow the logits buffer. */
#define DRAFT_MAX 32

typedef struct req {
    struct req *next;   /* queue link, guarded by mu */
    int64_t id;
    coord_gen_req_t r;  /* r.prompt points at prompt below */
    int32_t *prompt;    /* (n_prompt) owned copy */
    bool cancel;        /* guarded by mu */
    double t_queued;    /* wire_now() seconds */
} req_t;

typedef struct {
    req_t *req;         /* NULL when free; see the threads note above */
    int32_t *ctx;       /* (n_ctx) prompt then generated ids */
    int n_tok;          /* ids in ctx */
    int n_past;         /* positions the engine holds */
    int n_gen;          /* ids generated */
    coord_sampler_t *smp;
    bool greedy;        /* temperature <= 0: drafts allowed */
    double t_first;     /* wire_now() of the first token, 0 before */
    /* this step */
    int b_first, b_n;   /* tokens [b_first, b_first + b_n) of the batch */
    int row;            /* first logits row, -1 when none */
    int n_draft;        /* drafted ids after the fed one */
} slot_t;

struct coord_sched {
    coord_engine_t *eng;
    model_tok_t *tok;
    coord_sched_params_t p;
    int V;
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* guarded by mu */
    bool stop;
    req_t *q_head, *q_tail;
    int n_queued;
    int64_t next_id;
    coord_sched_stats_t st;   /* counters; slots_busy and queued are computed when read */
    /* scheduler thread only */
    slot_t *slots;            /* (n_slots) */
    int n_rows;               /* most logits rows one step can want */
    int32_t *b_tok, *b_pos, *b_slot; /* (n_batch) */
    bool *b_want;             /* (n_batch) */
    float *logits;            /* (n_rows, V) */
    int *top;                 /* (TOP_LOGPROBS_MAX) ids of the best alternatives */
    int32_t *top_ids;         /* (TOP_LOGPROBS_MAX) */
    float *top_lp;            /* (TOP_LOGPROBS_MAX) */
    int rr;                   /* slot the next step starts with, for fairness when n_batch
                                 is smaller than the generating slots */
    uint64_t step_prompt, step_gen, step_passes, step_proposed, step_accepted;
};

coord_sched_params_t coord_sched_params_default(void)
{
    return (coord_sched_params_t){
        .n_slots = 0, .n_batch = 0, .n_ctx = 0, .max_queue = 64, .n_threads = 2, .n_draft = 0};
}

/* ---- finishing ---- */

static const char *err_name(int err)
{
    return err >= WIRE_E_FIRST && err <= WIRE_E_LAST ? wire_strerror(err) : model_strerror(err);
}

static void req_free(req_t *r)
{
    if (!r) return;
    free(r->prompt);
    free(r);
}

/* Calls on_done once and forgets r. n_gen and t_first are 0 for a request that never ran. */
static void req_done(req_t *r, coord_finish_t why, int n_gen, double t_first, int err,
                     const char *msg)
{
    coord_gen_stats_t st = {
        .n_prompt = r->r.n_prompt,
        .n_generated = n_gen,
        .t_queued = r->t_queued,
        .t_first_token = t_first,
        .t_done = wire_now(),
        .error = err,
    };
    if (msg) snprintf(st.message, sizeof(st.message), "%s", msg);
    if (r->r.on_done) r->r.on_done(r->r.ud, why, &st);
    req_free(r);
}

/* Moves this step's counters into the shared stats; mu held. Done before any on_done too, so
 * whoever learns that a request ended sees its tokens counted. */
static void flush_counters(coord_sched_t *s)
{
    s->st.tokens_prompt += s->step_prompt;
    s->st.tokens_generated += s->step_gen;
    s->st.gen_passes += s->step_passes;
    s->st.draft_proposed += s->step_proposed;
    s->st.draft_accepted += s->step_accepted;
    s->step_prompt = s->step_gen = s->step_passes = 0;
    s->step_proposed = s->step_accepted = 0;
    /* The engine is the scheduler thread's, like this function's caller. */
    int64_t used = 0;
    for (int i = 0; i < s->p.n_slots; i++) used += coord_engine_slot_len(s->eng, i);
    s->st.kv_used = used;
}

/* Retires the sequence of slot i: on_done, then the slot is empty and clean for the next. */
static void slot_finish(coord_sched_t *s, int i, coord_finish_t why, int err, const char *msg)
{
    slot_t *sl = &s->slots[i];
    req_t *r = sl->req;
    coord_engine_clear_slot(s->eng, i);
    coord_sampler_free(sl->smp);
    sl->smp = NULL;
    pthread_mutex_lock(&s->mu);
    sl->req = NULL;
    flush_counters(s);
    pthread_mutex_unlock(&s->mu);
    req_done(r, why, sl->n_gen, sl->t_first, err, msg);
}

static void slot_start(coord_sched_t *s, int i)
{
    slot_t *sl = &s->slots[i];
    const coord_gen_req_t *r = &sl->req->r;
    memcpy(sl->ctx, r->prompt, sizeof(int32_t) * (size_t)r->n_prompt);
    sl->n_tok = r->n_prompt;
    sl->n_past = 0;
    sl->n_gen = 0;
    sl->t_first = 0;
    sl->greedy = r->sampling.temperature <= 0;
    sl->smp = coord_sampler_new(&r->sampling, s->V);
    /* The prompt counts for the penalties, as in llama.cpp. */
    for (int j = 0; j < r->n_prompt; j++) coord_sampler_accept(sl->smp, r->prompt[j]);
    coord_engine_clear_slot(s->eng, i);
}

/* ---- one step ---- */

/* Fills the logprob fields of t from one logits row (n_vocab): log-softmax of the raw logits,
 * the model's own distribution before any sampling transform. */
static void logprobs(coord_sched_t *s, const float *row, int n_top, coord_token_t *t)
{
    float mx = row[0];
    for (int v = 1; v < s->V; v++)
        if (row[v] > mx) mx = row[v];
    double sum = 0;
    for (int v = 0; v < s->V; v++) sum += exp((double)row[v] - mx);
    const double lse = mx + log(sum);
    t->logprob = (float)(row[t->id] - lse);
    if (n_top > s->V) n_top = s->V;
    if (n_top > 0) kern_topk(row, s->V, n_top, s->top);
    for (int j = 0; j < n_top; j++) {
        s->top_ids[j] = s->top[j];
        s->top_lp[j] = (float)(row[s->top[j]] - lse);
    }
    t->n_top = n_top;
    t->top_ids = s->top_ids;
    t->top_logprobs = s->top_lp;
}

/* Appends id to slot i's sequence and hands it to the request. Returns the finish reason, or
 * -1 when the sequence goes on. */
static int emit(coord_sched_t *s, int i, int32_t id, const float *row)
{
    slot_t *sl = &s->slots[i];
    const coord_gen_req_t *r = &sl->req->r;
    coord_sampler_accept(sl->smp, id);
    sl->ctx[sl->n_tok++] = id;
    sl->n_gen++;
    s->step_gen++;
    if (sl->n_gen == 1) sl->t_first = wire_now();
    coord_token_t t = {.id = id};
    if (r->top_logprobs >= 0) logprobs(s, row, r->top_logprobs, &t);
    if (r->on_token && !r->on_token(r->ud, &t)) return COORD_FINISH_CANCEL;
    if (model_tok_is_eog(s->tok, id)) return COORD_FINISH_STOP;
    if (sl->n_gen >= r->max_tokens || sl->n_tok >= s->p.n_ctx) return COORD_FINISH_LENGTH;
    return -1;
}

static void push(coord_sched_t *s, int *n, int32_t tok, int pos, int slot, bool want)
{
    s->b_tok[*n] = tok;
    s->b_pos[*n] = pos;
    s->b_slot[*n] = slot;
    s->b_want[*n] = want;
    (*n)++;
}

/* Lays out the batch; returns its size (>= 1 when a slot is active). */
static int build_batch(coord_sched_t *s)
{
    const int NS = s->p.n_slots, B = s->p.n_batch;
    int n = 0, rows = 0, gen_idx[4096], n_genslots = 0;
    for (int i = 0; i < NS; i++) {
        slot_t *sl = &s->slots[i];
        sl->b_n = 0, sl->row = -1, sl->n_draft = 0;
    }
    /* Generating sequences first, each one token at least, in rotating order. */
    for (int k = 0; k < NS && n_genslots < B; k++) {
        int i = (s->rr + k) % NS;
        if (s->slots[i].req && s->slots[i].n_gen > 0) gen_idx[n_genslots++] = i;
    }
    s->rr = (s->rr + 1) % NS;
    int spare = B - n_genslots;
    for (int g = 0; g < n_genslots; g++) {
        int i = gen_idx[g];
        slot_t *sl = &s->slots[i];
        sl->b_first = n;
        sl->row = rows;
        push(s, &n, sl->ctx[sl->n_tok - 1], sl->n_tok - 1, i, true);
        int d = 0;
        if (s->p.n_draft > 0 && sl->greedy && spare > 0) {
            /* Each draft can become a token and the verified step adds one more: stay within
             * max_tokens, the context and the batch. */
            int cap = s->p.n_draft;
            int left = sl->req->r.max_tokens - sl->n_gen - 1;
            if (cap > left) cap = left;
            if (cap > s->p.n_ctx - sl->n_tok) cap = s->p.n_ctx - sl->n_tok;
            if (cap > spare) cap = spare;
            if (cap > 0) d = coord__draft_lookup(sl->ctx, sl->n_tok, COORD__DRAFT_NGRAM_MAX, cap,
                                                 s->b_tok + n);
            for (int j = 0; j < d; j++) push(s, &n, s->b_tok[n], sl->n_tok + j, i, true);
            spare -= d;
        }
        sl->n_draft = d;
        sl->b_n = 1 + d;
        rows += 1 + d;
    }
    /* Then pending prompts, the oldest request first, in chunks that fill the batch. */
    int pend[4096], n_pend = 0;
    for (int i = 0; i < NS; i++) {
        slot_t *sl = &s->slots[i];
        if (!sl->req || sl->n_gen > 0 || sl->n_past >= sl->n_tok) continue;
        int j = n_pend++;
        while (j > 0 && s->slots[pend[j - 1]].req->id > sl->req->id) {
            pend[j] = pend[j - 1];
            j--;
        }
        pend[j] = i;
    }
    for (int k = 0; k < n_pend && n < B; k++) {
        int i = pend[k];
        slot_t *sl = &s->slots[i];
        int c = sl->n_tok - sl->n_past;
        if (c > B - n) c = B - n;
        sl->b_first = n;
        sl->b_n = c;
        for (int j = 0; j < c; j++) {
            int pos = sl->n_past + j;
            bool last = pos == sl->n_tok - 1;
            push(s, &n, sl->ctx[pos], pos, i, last);
            if (last) sl->row = rows++;
        }
        s->step_prompt += (uint64_t)c;
    }
    CHECK(rows <= s->n_rows);
    return n;
}

/* Samples and streams the tokens of slot i after a successful decode. */
static void after_decode(coord_sched_t *s, int i)
{
    slot_t *sl = &s->slots[i];
    if (sl->b_n == 0) return;
    if (sl->n_gen == 0) {
        /* A prompt chunk; the last one samples the first token. */
        sl->n_past += sl->b_n;
        if (sl->row < 0) return;
        const float *row = s->logits + (size_t)sl->row * s->V;
        int why = emit(s, i, coord_sampler_sample(sl->smp, row), row);
        s->step_passes++;
        if (why >= 0) slot_finish(s, i, (coord_finish_t)why, 0, NULL);
        return;
    }
    /* The fed token and n_draft drafts: row j predicts the id after draft j - 1. Sampling the
     * rows in order with each id accepted before the next is exactly what one-token decoding
     * does, as long as every earlier draft equals the id sampled for its position. */
    const int base = sl->n_tok; /* ids before this step; the fed one is base - 1 */
    int accepted = 0, why = -1;
    for (int j = 0; j <= sl->n_draft; j++) {
        const float *row = s->logits + (size_t)(sl->row + j) * s->V;
        int32_t id = coord_sampler_sample(sl->smp, row);
        why = emit(s, i, id, row);
        if (why >= 0) break;
        if (j == sl->n_draft || id != s->b_tok[sl->b_first + 1 + j]) break;
        accepted++;
    }
    s->step_passes++;
    s->step_proposed += (uint64_t)sl->n_draft;
    s->step_accepted += (uint64_t)accepted;
    if (why >= 0) {
        slot_finish(s, i, (coord_finish_t)why, 0, NULL);
        return;
    }
    /* Positions of rejected drafts are forgotten; the next step overwrites them. */
    sl->n_past = base + accepted;
    coord_engine_truncate_slot(s->eng, i, sl->n_past);
}

static void step(coord_sched_t *s)
{
    int n = build_batch(s);
    if (n == 0) return;
    coord_batch_t b = {.n = n, .tok = s->b_tok, .pos = s->b_pos, .slot = s->b_slot,
                       .want = s->b_want};
    int err = coord_engine_decode(s->eng, &b, s->logits);
    if (err) {
        /* The cache of every slot in the batch may be half written; start all over clean. */
        char msg[160];
        snprintf(msg, sizeof(msg), "forward pass failed: %s", err_name(err));
        LOG_ERR("%s; failing %s", msg, "every active request");
        for (int i = 0; i < s->p.n_slots; i++)
            if (s->slots[i].req) slot_finish(s, i, COORD_FINISH_ERROR, err, msg);
        return;
    }
    for (int i = 0; i < s->p.n_slots; i++)
        if (s->slots[i].req) after_decode(s, i);
}

/* ---- the thread ---- */

static bool any_active(const coord_sched_t *s)
{
    for (int i = 0; i < s->p.n_slots; i++)
        if (s->slots[i].req) return true;
    return false;
}

static void *sched_main(void *arg)
{
    coord_sched_t *s = arg;
    const int NS = s->p.n_slots;
    bool *cancel = xcalloc((size_t)NS, sizeof(bool)), *fresh = xcalloc((size_t)NS, sizeof(bool));
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->stop && !s->q_head && !any_active(s)) {
            /* Idle: wake once a second so the experts can read their sockets (node
             * heartbeats would otherwise pile up until ZeroMQ drops the connection). */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) == ETIMEDOUT && !s->stop &&
                !s->q_head && !any_active(s)) {
                pthread_mutex_unlock(&s->mu);
                coord_engine_idle(s->eng);
                pthread_mutex_lock(&s->mu);
            }
        }
        if (s->stop) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        /* Cancelled requests still queued leave without ever taking a slot. */
        req_t *dropped = NULL, **pp = &s->q_head;
        s->q_tail = NULL;
        while (*pp) {
            req_t *r = *pp;
            if (r->cancel) {
                *pp = r->next;
                r->next = dropped;
                dropped = r;
                s->n_queued--;
            } else {
                s->q_tail = r;
                pp = &r->next;
            }
        }
        for (int i = 0; i < NS; i++) {
            fresh[i] = false;
            cancel[i] = s->slots[i].req && s->slots[i].req->cancel;
            if (!s->slots[i].req && s->q_head) {
                req_t *r = s->q_head;
                s->q_head = r->next;
                if (!s->q_head) s->q_tail = NULL;
                r->next = NULL;
                s->n_queued--;
                s->slots[i].req = r;
                fresh[i] = !r->cancel;
                cancel[i] = r->cancel;
            }
        }
        pthread_mutex_unlock(&s->mu);

        while (dropped) {
            req_t *r = dropped;
            dropped = r->next;
            req_done(r, COORD_FINISH_CANCEL, 0, 0, 0, NULL);
        }
        for (int i = 0; i < NS; i++) {
            if (fresh[i]) slot_start(s, i);
            if (cancel[i]) slot_finish(s, i, COORD_FINISH_CANCEL, 0, NULL);
        }
        if (!any_active(s)) continue;

        step(s);
        pthread_mutex_lock(&s->mu);
        s->st.steps++;
        flush_counters(s);
        pthread_mutex_unlock(&s->mu);
    }
    /* Stopping: everything still waiting or running ends as cancelled. submit refuses new
     * requests once stop is set, so the queue taken here is the last. */
    pthread_mutex_lock(&s->mu);
    req_t *q = s->q_head;
    s->q_head = s->q_tail = NULL;
    s->n_queued = 0;
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < NS; i++)
        if (s->slots[i].req) slot_finish(s, i, COORD_FINISH_CANCEL, 0, NULL);
    while (q) {
        req_t *r = q;
        q = r->next;
        req_done(r, COORD_FINISH_CANCEL, 0, 0, 0, NULL);
    }
    free(cancel);
    free(fresh);
    return NULL;
}

/* ---- public API ---- */

coord_sched_t *coord_sched_new(coord_engine_t *eng, const model_t *m,
                               const coord_sched_params_t *p)
{
    const coord_engine_params_t *ep = coord_engine_params(eng);
    coord_sched_params_t P = *p;
    if (P.n_slots == 0) P.n_slots = ep->n_slots;
    if (P.n_batch == 0) P.n_batch = ep->n_batch;
    if (P.n_ctx == 0) P.n_ctx = ep->n_ctx;
    if (P.n_slots < 1 || P.n_slots > ep->n_slots || P.n_slots > 4096 || P.n_batch < 1 ||
        P.n_batch > ep->n_batch || P.n_ctx < 2 || P.n_ctx > ep->n_ctx || P.max_queue < 0 ||
        P.n_draft < 0 || P.n_draft > DRAFT_MAX) {
        LOG_ERR("bad scheduler parameters: slots %d (engine %d), batch %d (engine %d), ctx %d "
                "(engine %d), queue %d, draft %d (0..%d)",
                P.n_slots, ep->n_slots, P.n_batch, ep->n_batch, P.n_ctx, ep->n_ctx, P.max_queue,
                P.n_draft, DRAFT_MAX);
        return NULL;
    }
    coord_sched_t *s = xcalloc(1, sizeof(*s));
    s->eng = eng;
    s->p = P;
    s->V = m->hp.n_vocab;
    s->next_id = 1;
    s->st.kv_capacity = (int64_t)P.n_slots * P.n_ctx;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->slots = xcalloc((size_t)P.n_slots, sizeof(slot_t));
    int err = model_tok_new(m->gguf, &s->tok);
    if (err) {
        LOG_ERR("the model's tokenizer is needed for end-of-generation ids: %s",
                model_strerror(err));
        goto fail;
    }
    for (int i = 0; i < P.n_slots; i++) s->slots[i].ctx = xmalloc(sizeof(int32_t) * P.n_ctx);
    /* Every generating slot wants 1 + n_draft rows, a prompt chunk at most one. */
    int64_t rows = (int64_t)P.n_slots * (1 + P.n_draft);
    s->n_rows = rows < P.n_batch ? (int)rows : P.n_batch;
    s->b_tok = xmalloc(sizeof(int32_t) * P.n_batch);
    s->b_pos = xmalloc(sizeof(int32_t) * P.n_batch);
    s->b_slot = xmalloc(sizeof(int32_t) * P.n_batch);
    s->b_want = xmalloc(sizeof(bool) * P.n_batch);
    s->logits = xmalloc(sizeof(float) * (size_t)s->n_rows * s->V);
    s->top = xmalloc(sizeof(int) * TOP_LOGPROBS_MAX);
    s->top_ids = xmalloc(sizeof(int32_t) * TOP_LOGPROBS_MAX);
    s->top_lp = xmalloc(sizeof(float) * TOP_LOGPROBS_MAX);
    for (int i = 0; i < P.n_slots; i++) coord_engine_clear_slot(eng, i);
    if ((err = pthread_create(&s->thread, NULL, sched_main, s)) != 0) {
        LOG_ERR("cannot start the scheduler thread: %s", strerror(err));
        goto fail;
    }
    s->started = true;
    return s;
fail:
    coord_sched_free(s);
    return NULL;
}

void coord_sched_free(coord_sched_t *s)
{
    if (!s) return;
    if (s->started) {
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    for (int i = 0; i < s->p.n_slots; i++) {
        free(s->slots[i].ctx);
        coord_sampler_free(s->slots[i].smp);
    }
    free(s->slots);
    free(s->b_tok), free(s->b_pos), free(s->b_slot), free(s->b_want);
    free(s->logits), free(s->top), free(s->top_ids), free(s->top_lp);
    model_tok_free(s->tok);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

int64_t coord_sched_submit(coord_sched_t *s, const coord_gen_req_t *req)
{
    if (!s || !req || !req->prompt || req->n_prompt < 1 || req->max_tokens < 1 ||
        (int64_t)req->n_prompt + req->max_tokens > s->p.n_ctx || req->top_logprobs > 20)
        return -EINVAL;
    for (int i = 0; i < req->n_prompt; i++)
        if (req->prompt[i] < 0 || req->prompt[i] >= s->V) return -EINVAL;
    req_t *r = xcalloc(1, sizeof(*r));
    r->r = *req;
    r->prompt = xmalloc(sizeof(int32_t) * (size_t)req->n_prompt);
    memcpy(r->prompt, req->prompt, sizeof(int32_t) * (size_t)req->n_prompt);
    r->r.prompt = r->prompt;
    r->t_queued = wire_now();
    pthread_mutex_lock(&s->mu);
    /* A free slot takes a request at the next step boundary, so it does not count against
     * max_queue: only requests that will have to wait do. */
    int free_slots = 0;
    for (int i = 0; i < s->p.n_slots; i++) free_slots += !s->slots[i].req;
    if (s->stop || s->n_queued >= s->p.max_queue + free_slots) {
        pthread_mutex_unlock(&s->mu);
        req_free(r);
        return -EBUSY;
    }
    r->id = s->next_id++;
    int64_t id = r->id;
    if (s->q_tail) s->q_tail->next = r;
    else s->q_head = r;
    s->q_tail = r;
    s->n_queued++;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return id;
}

void coord_sched_cancel(coord_sched_t *s, int64_t id)
{
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    for (req_t *r = s->q_head; r; r = r->next)
        if (r->id == id) r->cancel = true;
    for (int i = 0; i < s->p.n_slots; i++)
        if (s->slots[i].req && s->slots[i].req->id == id) s->slots[i].req->cancel = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void coord_sched_stats(const coord_sched_t *s, coord_sched_stats_t *out)
{
    /* The mutex is not part of the observable state: locking it does not change s. */
    coord_sched_t *w = (coord_sched_t *)s;
    pthread_mutex_lock(&w->mu);
    *out = s->st;
    out->queued = s->n_queued;
    out->slots_busy = 0;
    for (int i = 0; i < s->p.n_slots; i++) out->slots_busy += s->slots[i].req != NULL;
    pthread_mutex_unlock(&w->mu);
}
