/* Tests for coordinator/sched.c: greedy requests reproduce llama.cpp's golden continuations;
 * concurrent sequences of different lengths joining at different times (chunked prefill, fewer
 * slots than requests) each give what they give alone; cancel frees the slot for a queued
 * request; a full queue answers -EBUSY at once; malformed requests -EINVAL; on_done runs
 * exactly once per request, also when the scheduler is freed with requests pending.
 *
 * Callbacks run on the scheduler thread; each request's collector has its own mutex and
 * condition variable, so the test thread waits without polling and reads results race-free.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coordinator/coord.h"
#include "wire/wire.h"

#define GOLDEN "../shared/golden/"
#define QWEN GOLDEN "qwen3moe-tiny-f32"
#define STORIES GOLDEN "stories260k-f32"
#define MAX_IDS 512

/* ---- fixture: model, pool, experts, engine, scheduler ---- */

typedef struct {
    model_t *m;
    kern_pool_t *pool;
    coord_experts_t *ex;
    coord_engine_t *e;
    coord_sched_t *s;
} fixture_t;

static void fx_init(fixture_t *f, const char *base, int slots, int batch, int ctx, int queue,
                    int draft)
{
    char path[256];
    snprintf(path, sizeof(path), "%s.gguf", base);
    memset(f, 0, sizeof(*f));
    cr_assert_eq(model_load(path, &f->m), 0, "%s", path);
    f->pool = kern_pool_new(2);
    if (f->m->hp.n_expert) f->ex = coord_experts_local_new(f->m, f->pool, batch);
    coord_engine_params_t ep = coord_engine_params_default();
    ep.n_ctx = ctx;
    ep.n_slots = slots;
    ep.n_batch = batch;
    f->e = coord_engine_new(f->m, f->ex, f->pool, &ep);
    cr_assert_not_null(f->e);
    coord_sched_params_t sp = coord_sched_params_default();
    sp.max_queue = queue;
    sp.n_draft = draft;
    f->s = coord_sched_new(f->e, f->m, &sp);
    cr_assert_not_null(f->s);
}

static void fx_deinit(fixture_t *f)
{
    coord_sched_free(f->s);
    coord_engine_free(f->e);
    coord_experts_free(f->ex);
    kern_pool_free(f->pool);
    model_free(f->m);
}

/* ---- a request's collector ---- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t ids[MAX_IDS];
    float lp[MAX_IDS];
    int n;
    int n_done;
    coord_finish_t why;
    coord_gen_stats_t st;
    int stop_after;   /* on_token returns false at this many tokens (0: never) */
    int gate_at;      /* on_token waits at this many tokens until gate_open (0: never) */
    bool gate_open;
    bool top_ok;      /* every token's top list was sorted and began with the argmax */
} coll_t;

static void coll_init(coll_t *c)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->top_ok = true;
}

static void coll_deinit(coll_t *c)
{
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
}

static bool on_token(void *ud, const coord_token_t *t)
{
    coll_t *c = ud;
    pthread_mutex_lock(&c->mu);
    if (c->n < MAX_IDS) c->lp[c->n] = t->logprob, c->ids[c->n++] = t->id;
    for (int j = 1; j < t->n_top; j++)
        if (t->top_logprobs[j] > t->top_logprobs[j - 1]) c->top_ok = false;
    if (t->n_top > 0 && t->top_logprobs[0] < t->logprob) c->top_ok = false;
    bool go = !(c->stop_after && c->n >= c->stop_after);
    pthread_cond_broadcast(&c->cv);
    /* Only tests hold the scheduler thread like this, to make a state last. */
    while (c->gate_at && c->n == c->gate_at && !c->gate_open) pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
    return go;
}

static void on_done(void *ud, coord_finish_t why, const coord_gen_stats_t *st)
{
    coll_t *c = ud;
    pthread_mutex_lock(&c->mu);
    c->n_done++;
    c->why = why;
    c->st = *st;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static void coll_wait_done(coll_t *c)
{
    pthread_mutex_lock(&c->mu);
    while (c->n_done == 0) pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

static void coll_wait_tokens(coll_t *c, int n)
{
    pthread_mutex_lock(&c->mu);
    while (c->n < n && c->n_done == 0) pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

static void coll_open(coll_t *c)
{
    pthread_mutex_lock(&c->mu);
    c->gate_open = true;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static coord_gen_req_t greedy_req(const int32_t *prompt, int n, int max_tokens, coll_t *c)
{
    coord_gen_req_t r = {.prompt = prompt, .n_prompt = n, .max_tokens = max_tokens,
                         .sampling = coord_sampler_params_default(), .top_logprobs = -1,
                         .on_token = on_token, .on_done = on_done, .ud = c};
    r.sampling.temperature = 0;
    return r;
}

/* ---- golden files: prompt_ids and greedy_ids lines ---- */

static int read_line_ids(const char *path, const char *tag, int32_t *out, int cap)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    static char line[1 << 16];
    int n = -1;
    size_t tl = strlen(tag);
    while (n < 0 && fgets(line, sizeof(line), f)) {
        if (strncmp(line, tag, tl) || line[tl] != ' ') continue;
        char *p = line + tl, *end;
        long k = strtol(p, &end, 10);
        cr_assert(k >= 0 && k <= cap);
        for (n = 0; n < k; n++) out[n] = (int32_t)strtol(end, &end, 10);
    }
    fclose(f);
    cr_assert_geq(n, 0, "%s: no %s line", path, tag);
    return n;
}

static void golden_case(const char *base, int draft)
{
    char path[256];
    snprintf(path, sizeof(path), "%s.golden", base);
    int32_t prompt[MAX_IDS], greedy[MAX_IDS];
    int np = read_line_ids(path, "prompt_ids", prompt, MAX_IDS);
    int ng = read_line_ids(path, "greedy_ids", greedy, MAX_IDS);
    fixture_t f;
    fx_init(&f, base, 2, 8, np + ng + 4, 4, draft);
    coll_t c;
    coll_init(&c);
    coord_gen_req_t r = greedy_req(prompt, np, ng, &c);
    r.top_logprobs = 3;
    int64_t id = coord_sched_submit(f.s, &r);
    cr_assert_gt(id, 0);
    coll_wait_done(&c);
    cr_assert_eq(c.why, COORD_FINISH_LENGTH);
    cr_assert_eq(c.n, ng);
    for (int i = 0; i < ng; i++)
        cr_assert_eq(c.ids[i], greedy[i], "%s draft %d: token %d is %d, expected %d", base,
                     draft, i, c.ids[i], greedy[i]);
    for (int i = 0; i < ng; i++) cr_assert(c.lp[i] <= 0 && c.lp[i] > -1e3);
    cr_assert(c.top_ok, "top logprobs sorted, the greedy token first");
    cr_assert_eq(c.st.n_prompt, np);
    cr_assert_eq(c.st.n_generated, ng);
    cr_assert(c.st.t_queued <= c.st.t_first_token && c.st.t_first_token <= c.st.t_done);
    coord_sched_stats_t st;
    coord_sched_stats(f.s, &st);
    cr_assert_eq(st.tokens_prompt, (uint64_t)np);
    cr_assert_eq(st.tokens_generated, (uint64_t)ng);
    cr_assert_eq(st.slots_busy, 0);
    cr_assert_eq(st.queued, 0);
    fx_deinit(&f);
    cr_assert_eq(c.n_done, 1);
    coll_deinit(&c);
}

Test(coord_sched, greedy_matches_golden_qwen3moe, .timeout = 120) { golden_case(QWEN, 0); }
Test(coord_sched, greedy_matches_golden_stories, .timeout = 120) { golden_case(STORIES, 0); }

/* ---- concurrency ---- */

#define N_REQ 7

typedef struct {
    int32_t prompt[64];
    int n_prompt, max_tokens;
    float temp;
    coll_t c;
} job_t;

static void make_jobs(job_t *jobs)
{
    for (int k = 0; k < N_REQ; k++) {
        job_t *j = &jobs[k];
        j->n_prompt = 3 + (k * 7) % 23;
        j->max_tokens = 4 + (k * 5) % 17;
        for (int i = 0; i < j->n_prompt; i++) j->prompt[i] = (int32_t)((k * 31 + i * 17 + 5) % 300);
        /* Two sampled requests: their seeds and histories are their own, so they are
         * reproducible whatever runs beside them. */
        j->temp = k % 3 == 2 ? 0.9f : 0.0f;
        coll_init(&j->c);
    }
}

static int64_t submit_job(coord_sched_t *s, job_t *j)
{
    coord_gen_req_t r = greedy_req(j->prompt, j->n_prompt, j->max_tokens, &j->c);
    r.sampling.temperature = j->temp;
    r.sampling.seed = 1234 + (uint64_t)j->n_prompt;
    return coord_sched_submit(s, &r);
}

typedef struct {
    coord_sched_t *s;
    job_t *jobs;
    int first, step;
} submitter_t;

static void *submitter(void *arg)
{
    submitter_t *t = arg;
    for (int k = t->first; k < N_REQ; k += t->step) {
        struct timespec d = {0, 2000000L * (k % 4)};
        nanosleep(&d, NULL);
        cr_assert_gt(submit_job(t->s, &t->jobs[k]), 0);
    }
    return NULL;
}

static void concurrent_case(const char *base, int slots, int batch, int draft)
{
    job_t *alone = calloc(N_REQ, sizeof(job_t)), *mixed = calloc(N_REQ, sizeof(job_t));
    make_jobs(alone);
    make_jobs(mixed);
    fixture_t f;
    /* Alone: one slot, one request at a time, prompts still in chunks of batch. */
    fx_init(&f, base, 1, batch, 64, 16, 0);
    for (int k = 0; k < N_REQ; k++) {
        cr_assert_gt(submit_job(f.s, &alone[k]), 0);
        coll_wait_done(&alone[k].c);
    }
    fx_deinit(&f);

    fx_init(&f, base, slots, batch, 64, N_REQ, draft);
    pthread_t th[3];
    submitter_t sub[3];
    for (int t = 0; t < 3; t++) {
        sub[t] = (submitter_t){f.s, mixed, t, 3};
        pthread_create(&th[t], NULL, submitter, &sub[t]);
    }
    for (int t = 0; t < 3; t++) pthread_join(th[t], NULL);
    for (int k = 0; k < N_REQ; k++) coll_wait_done(&mixed[k].c);
    coord_sched_stats_t st;
    coord_sched_stats(f.s, &st);
    fx_deinit(&f);
    uint64_t gen = 0;
    for (int k = 0; k < N_REQ; k++) {
        coll_t *a = &alone[k].c, *b = &mixed[k].c;
        cr_assert_eq(b->n_done, 1);
        cr_assert_eq(a->why, b->why, "request %d", k);
        cr_assert_eq(a->n, b->n, "request %d: %d tokens alone, %d beside others", k, a->n, b->n);
        for (int i = 0; i < a->n; i++)
            cr_assert_eq(a->ids[i], b->ids[i], "request %d token %d", k, i);
        gen += (uint64_t)b->n;
        coll_deinit(a);
        coll_deinit(b);
    }
    cr_assert_eq(st.tokens_generated, gen);
    free(alone);
    free(mixed);
}

Test(coord_sched, concurrent_sequences_equal_alone, .timeout = 300)
{
    concurrent_case(QWEN, 3, 5, 0);
}

Test(coord_sched, concurrent_sequences_equal_alone_stories, .timeout = 300)
{
    concurrent_case(STORIES, 4, 7, 0);
}

/* ---- cancel, queue, validation, shutdown ---- */

Test(coord_sched, cancel_frees_the_slot_for_a_queued_request, .timeout = 120)
{
    fixture_t f;
    fx_init(&f, QWEN, 1, 8, 128, 4, 0);
    int32_t p[5] = {16, 300, 32, 113, 117};
    coll_t a, b, c;
    coll_init(&a), coll_init(&b), coll_init(&c);
    a.gate_at = 3;
    coord_gen_req_t ra = greedy_req(p, 5, 100, &a), rb = greedy_req(p, 3, 10, &b);
    int64_t ia = coord_sched_submit(f.s, &ra);
    int64_t ib = coord_sched_submit(f.s, &rb);
    cr_assert(ia > 0 && ib > ia);
    coll_wait_tokens(&a, 3);
    coord_sched_stats_t st;
    coord_sched_stats(f.s, &st);
    cr_assert_eq(st.slots_busy, 1);
    cr_assert_eq(st.queued, 1, "b waits for the only slot");
    coord_sched_cancel(f.s, ia);
    coord_sched_cancel(f.s, 999); /* unknown ids are ignored */
    coll_open(&a);
    coll_wait_done(&a);
    cr_assert_eq(a.why, COORD_FINISH_CANCEL);
    cr_assert_eq(a.n, 3, "cancel takes effect at the next step");
    cr_assert_eq(a.st.n_generated, 3);
    coll_wait_done(&b);
    cr_assert_eq(b.why, COORD_FINISH_LENGTH);
    cr_assert_eq(b.n, 10);
    /* The token callback saying no cancels too. */
    c.stop_after = 2;
    coord_gen_req_t rc = greedy_req(p, 5, 10, &c);
    cr_assert_gt(coord_sched_submit(f.s, &rc), 0);
    coll_wait_done(&c);
    cr_assert_eq(c.why, COORD_FINISH_CANCEL);
    cr_assert_eq(c.n, 2);
    coord_sched_cancel(f.s, ia); /* already finished: ignored */
    coord_sched_stats(f.s, &st);
    cr_assert_eq(st.slots_busy, 0);
    fx_deinit(&f);
    cr_assert(a.n_done == 1 && b.n_done == 1 && c.n_done == 1);
    coll_deinit(&a), coll_deinit(&b), coll_deinit(&c);
}

Test(coord_sched, cancel_of_a_queued_request_ends_it_unrun, .timeout = 120)
{
    fixture_t f;
    fx_init(&f, QWEN, 1, 8, 128, 4, 0);
    int32_t p[3] = {16, 300, 32};
    coll_t a, b;
    coll_init(&a), coll_init(&b);
    a.gate_at = 1;
    coord_gen_req_t ra = greedy_req(p, 3, 5, &a), rb = greedy_req(p, 3, 5, &b);
    cr_assert_gt(coord_sched_submit(f.s, &ra), 0);
    coll_wait_tokens(&a, 1);
    int64_t ib = coord_sched_submit(f.s, &rb);
    coord_sched_cancel(f.s, ib);
    coll_open(&a);
    coll_wait_done(&b);
    cr_assert_eq(b.why, COORD_FINISH_CANCEL);
    cr_assert_eq(b.n, 0);
    coll_wait_done(&a);
    cr_assert_eq(a.why, COORD_FINISH_LENGTH);
    fx_deinit(&f);
    coll_deinit(&a), coll_deinit(&b);
}

Test(coord_sched, full_queue_says_ebusy_at_once, .timeout = 120)
{
    fixture_t f;
    fx_init(&f, QWEN, 1, 8, 64, 2, 0);
    int32_t p[3] = {16, 300, 32};
    coll_t a, q[3];
    coll_init(&a);
    for (int i = 0; i < 3; i++) coll_init(&q[i]);
    a.gate_at = 1;
    coord_gen_req_t ra = greedy_req(p, 3, 4, &a);
    cr_assert_gt(coord_sched_submit(f.s, &ra), 0);
    coll_wait_tokens(&a, 1); /* a holds the only slot, the scheduler thread is parked */
    coord_gen_req_t r0 = greedy_req(p, 3, 4, &q[0]), r1 = greedy_req(p, 3, 4, &q[1]);
    coord_gen_req_t r2 = greedy_req(p, 3, 4, &q[2]);
    cr_assert_gt(coord_sched_submit(f.s, &r0), 0);
    cr_assert_gt(coord_sched_submit(f.s, &r1), 0);
    double t0 = wire_now();
    cr_assert_eq(coord_sched_submit(f.s, &r2), -EBUSY);
    cr_assert_lt(wire_now() - t0, 0.05, "submit must not wait for room");
    coll_open(&a);
    coll_wait_done(&a), coll_wait_done(&q[0]), coll_wait_done(&q[1]);
    cr_assert(q[0].why == COORD_FINISH_LENGTH && q[1].why == COORD_FINISH_LENGTH);
    /* Room again. */
    cr_assert_gt(coord_sched_submit(f.s, &r2), 0);
    coll_wait_done(&q[2]);
    fx_deinit(&f);
    cr_assert_eq(q[2].n_done, 1);
    coll_deinit(&a);
    for (int i = 0; i < 3; i++) coll_deinit(&q[i]);
}

Test(coord_sched, invalid_requests_and_params_are_refused, .timeout = 60)
{
    fixture_t f;
    fx_init(&f, QWEN, 2, 8, 32, 4, 0);
    int32_t p[4] = {1, 2, 3, 4};
    coll_t c;
    coll_init(&c);
    coord_gen_req_t ok = greedy_req(p, 4, 4, &c), r;
    r = ok, r.prompt = NULL;
    cr_assert_eq(coord_sched_submit(f.s, &r), -EINVAL, "no prompt");
    r = ok, r.n_prompt = 0;
    cr_assert_eq(coord_sched_submit(f.s, &r), -EINVAL, "empty prompt");
    r = ok, r.max_tokens = 0;
    cr_assert_eq(coord_sched_submit(f.s, &r), -EINVAL, "max_tokens 0");
    r = ok, r.max_tokens = 29;
    cr_assert_eq(coord_sched_submit(f.s, &r), -EINVAL, "prompt + max_tokens beyond the context");
    r = ok, r.top_logprobs = 21;
    cr_assert_eq(coord_sched_submit(f.s, &r), -EINVAL, "too many top logprobs");
    int32_t bad[2] = {5, 320};
    r = ok, r.prompt = bad, r.n_prompt = 2;
    cr_assert_eq(coord_sched_submit(f.s, &r), -EINVAL, "id beyond the vocabulary");
    bad[1] = -1;
    cr_assert_eq(coord_sched_submit(f.s, &r), -EINVAL, "negative id");
    cr_assert_eq(coord_sched_submit(NULL, &ok), -EINVAL);
    cr_assert_eq(coord_sched_submit(f.s, NULL), -EINVAL);
    r = ok, r.max_tokens = 28;
    cr_assert_gt(coord_sched_submit(f.s, &r), 0, "exactly the context is fine");
    coll_wait_done(&c);
    cr_assert_eq(c.n, 28);
    coord_sched_params_t sp = coord_sched_params_default();
    sp.n_slots = 3;
    cr_assert_null(coord_sched_new(f.e, f.m, &sp), "more slots than the engine");
    sp = coord_sched_params_default(), sp.n_batch = 9;
    cr_assert_null(coord_sched_new(f.e, f.m, &sp), "larger batch than the engine");
    sp = coord_sched_params_default(), sp.n_ctx = 33;
    cr_assert_null(coord_sched_new(f.e, f.m, &sp), "longer context than the engine");
    sp = coord_sched_params_default(), sp.max_queue = -1;
    cr_assert_null(coord_sched_new(f.e, f.m, &sp));
    sp = coord_sched_params_default(), sp.n_draft = -1;
    cr_assert_null(coord_sched_new(f.e, f.m, &sp));
    fx_deinit(&f);
    coll_deinit(&c);
}

typedef struct {
    coll_t *c;
} opener_t;

static void *open_later(void *arg)
{
    struct timespec d = {0, 100000000L};
    nanosleep(&d, NULL);
    coll_open(((opener_t *)arg)->c);
    return NULL;
}

Test(coord_sched, free_ends_pending_requests_once, .timeout = 120)
{
    fixture_t f;
    fx_init(&f, QWEN, 2, 8, 128, 8, 0);
    int32_t p[3] = {16, 300, 32};
    coll_t c[5];
    for (int i = 0; i < 5; i++) coll_init(&c[i]);
    c[0].gate_at = 2;
    c[1].gate_at = 0;
    for (int i = 0; i < 5; i++) {
        coord_gen_req_t r = greedy_req(p, 3, 100, &c[i]);
        cr_assert_gt(coord_sched_submit(f.s, &r), 0);
    }
    coll_wait_tokens(&c[0], 2);
    /* The scheduler thread is parked in c[0]'s callback; free waits for it, and it must find
     * the stop flag when it comes back. */
    pthread_t th;
    opener_t o = {&c[0]};
    pthread_create(&th, NULL, open_later, &o);
    coord_sched_free(f.s);
    f.s = NULL;
    pthread_join(th, NULL);
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(c[i].n_done, 1, "request %d", i);
        cr_assert_eq(c[i].why, COORD_FINISH_CANCEL, "request %d", i);
    }
    cr_assert_eq(c[2].n, 0, "queued requests never ran");
    fx_deinit(&f);
    for (int i = 0; i < 5; i++) coll_deinit(&c[i]);
}

/* Threads of this process and their CPU ticks (utime + stime) from /proc; returns the count. */
static int task_ticks(int *tid, long *ticks, int cap)
{
    DIR *d = opendir("/proc/self/task");
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < cap) {
        if (de->d_name[0] == '.') continue;
        char path[300], buf[1024];
        snprintf(path, sizeof(path), "/proc/self/task/%s/stat", de->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t len = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[len] = 0;
        /* Fields after the parenthesised name: state is 3rd, utime 14th, stime 15th. */
        char *p = strrchr(buf, ')');
        long ut = 0, st = 0;
        if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld", &ut, &st) != 2)
            continue;
        tid[n] = atoi(de->d_name);
        ticks[n++] = ut + st;
    }
    closedir(d);
    return n;
}

Test(coord_sched, idle_scheduler_sleeps, .timeout = 60)
{
    fixture_t f;
    fx_init(&f, QWEN, 1, 8, 32, 4, 0);
    coord_sched_free(f.s);
    int before[64], after[64];
    long tb[64], ta[64];
    int nb = task_ticks(before, tb, 64);
    f.s = coord_sched_new(f.e, f.m, &(coord_sched_params_t){.max_queue = 4});
    cr_assert_not_null(f.s);
    struct timespec d = {0, 300000000L};
    nanosleep(&d, NULL);
    int na = task_ticks(after, ta, 64);
    coord_sched_stats_t st;
    coord_sched_stats(f.s, &st);
    cr_assert_eq(st.steps, 0);
    /* No busy loop: the scheduler's thread (the one that was not there before) sleeps on its
     * condition variable; a spinning thread would show ~30 ticks of 10 ms here. */
    int found = 0;
    for (int i = 0; i < na; i++) {
        bool old = false;
        for (int j = 0; j < nb; j++) old |= before[j] == after[i];
        if (old) continue;
        found++;
        cr_assert_leq(ta[i], 2, "thread %d used %ld ticks while idle", after[i], ta[i]);
    }
    cr_assert_eq(found, 1, "one scheduler thread");
    fx_deinit(&f);
}

/* ---- engine errors ---- */

/* Local experts that fail on demand, as a lost expert node would. */
typedef struct {
    coord_experts_t base;
    coord_experts_t *inner;
    _Atomic bool fail;
} flaky_t;

static int flaky_compute(coord_experts_t *ex, int layer, int n_tok, int k, const float *x,
                         const int32_t *ids, const float *w, float *out)
{
    flaky_t *f = (flaky_t *)ex;
    if (f->fail) return -EHOSTUNREACH;
    return f->inner->vt->compute(f->inner, layer, n_tok, k, x, ids, w, out);
}

static void flaky_free(coord_experts_t *ex) { (void)ex; }

static const coord_experts_vt_t flaky_vt = {.compute = flaky_compute, .free = flaky_free};

Test(coord_sched, engine_error_fails_active_requests_and_keeps_serving, .timeout = 120)
{
    fixture_t f;
    memset(&f, 0, sizeof(f));
    cr_assert_eq(model_load(QWEN ".gguf", &f.m), 0);
    f.pool = kern_pool_new(2);
    f.ex = coord_experts_local_new(f.m, f.pool, 8);
    flaky_t fl = {.base = {&flaky_vt}, .inner = f.ex};
    coord_engine_params_t ep = coord_engine_params_default();
    ep.n_ctx = 64, ep.n_slots = 2, ep.n_batch = 8;
    f.e = coord_engine_new(f.m, &fl.base, f.pool, &ep);
    coord_sched_params_t sp = coord_sched_params_default();
    f.s = coord_sched_new(f.e, f.m, &sp);
    int32_t p[5] = {16, 300, 32, 113, 117};
    coll_t a, b, c, ref;
    coll_init(&a), coll_init(&b), coll_init(&c), coll_init(&ref);
    coord_gen_req_t r = greedy_req(p, 5, 12, &ref);
    cr_assert_gt(coord_sched_submit(f.s, &r), 0);
    coll_wait_done(&ref);
    a.gate_at = 2;
    r = greedy_req(p, 5, 40, &a);
    cr_assert_gt(coord_sched_submit(f.s, &r), 0);
    coll_wait_tokens(&a, 2);
    r = greedy_req(p, 4, 40, &b);
    cr_assert_gt(coord_sched_submit(f.s, &r), 0);
    fl.fail = true;
    coll_open(&a);
    coll_wait_done(&a), coll_wait_done(&b);
    cr_assert(a.why == COORD_FINISH_ERROR && b.why == COORD_FINISH_ERROR);
    cr_assert_eq(a.st.error, -EHOSTUNREACH);
    cr_assert_eq(b.st.error, -EHOSTUNREACH);
    cr_assert(strstr(a.st.message, "forward pass failed"), "message: %s", a.st.message);
    fl.fail = false;
    r = greedy_req(p, 5, 12, &c);
    cr_assert_gt(coord_sched_submit(f.s, &r), 0);
    coll_wait_done(&c);
    cr_assert_eq(c.why, COORD_FINISH_LENGTH);
    cr_assert_eq(c.n, 12);
    for (int i = 0; i < 12; i++) cr_assert_eq(c.ids[i], ref.ids[i], "token %d after the error", i);
    fx_deinit(&f);
    coll_deinit(&a), coll_deinit(&b), coll_deinit(&c), coll_deinit(&ref);
}
