/* Tests for coordinator/spec.c and speculative decoding in the scheduler: the prompt-lookup
 * draft finds the most recent n-gram and extends periodic text; greedy generation with drafts
 * gives exactly the ids of plain greedy decoding (golden models, and a repetitive text on the
 * TinyStories MoE, where drafts are accepted often), with several sequences side by side.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/coord.h"
#include "coordinator/coordinator-int.h"
#include "wire/wire.h"

#define GOLDEN "../shared/golden/"

Test(coord_spec, draft_follows_the_latest_ngram)
{
    int32_t ctx[] = {1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3}, out[8];
    /* "2 3" last occurred before 7 8 (the "1 2 3" trigram does not end the context). */
    int n = coord__draft_lookup(ctx, 12, 3, 3, out);
    cr_assert_eq(n, 3);
    cr_assert(out[0] == 7 && out[1] == 8 && out[2] == 5);
    int32_t none[] = {1, 2, 3, 4};
    cr_assert_eq(coord__draft_lookup(none, 4, 3, 4, out), 0);
    cr_assert_eq(coord__draft_lookup(ctx, 12, 3, 0, out), 0);
    cr_assert_eq(coord__draft_lookup(ctx, 1, 3, 4, out), 0);
}

Test(coord_spec, draft_extends_a_periodic_text)
{
    int32_t ctx[] = {4, 5, 6, 4, 5, 6, 4}, out[7];
    cr_assert_eq(coord__draft_lookup(ctx, 7, 3, 7, out), 7);
    int32_t want[] = {5, 6, 4, 5, 6, 4, 5};
    for (int i = 0; i < 7; i++) cr_assert_eq(out[i], want[i], "draft %d", i);
    int32_t same[] = {3, 3}, o2[4];
    cr_assert_eq(coord__draft_lookup(same, 2, 3, 4, o2), 4);
    for (int i = 0; i < 4; i++) cr_assert_eq(o2[i], 3);
}

/* ---- through the scheduler ---- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t ids[512];
    int n;
    bool done;
} coll_t;

static bool on_token(void *ud, const coord_token_t *t)
{
    coll_t *c = ud;
    pthread_mutex_lock(&c->mu);
    if (c->n < 512) c->ids[c->n++] = t->id;
    pthread_mutex_unlock(&c->mu);
    return true;
}

static void on_done(void *ud, coord_finish_t why, const coord_gen_stats_t *st)
{
    (void)why, (void)st;
    coll_t *c = ud;
    pthread_mutex_lock(&c->mu);
    c->done = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* Generates greedily for each prompt at once (n_slots = n_prompts) with `draft` speculative
 * tokens; out[k] receives the ids, *tps the tokens per sequence step. */
static void generate(const char *model, int n_prompts, int32_t *const *prompts, const int *np,
                     int max_tokens, int draft, coll_t *out, double *tps)
{
    model_t *m;
    cr_assert_eq(model_load(model, &m), 0);
    kern_pool_t *pool = kern_pool_new(2);
    coord_experts_t *ex = m->hp.n_expert ? coord_experts_local_new(m, pool, 32) : NULL;
    coord_engine_params_t ep = coord_engine_params_default();
    ep.n_ctx = 320, ep.n_slots = n_prompts, ep.n_batch = 32;
    coord_engine_t *e = coord_engine_new(m, ex, pool, &ep);
    coord_sched_params_t sp = coord_sched_params_default();
    sp.n_draft = draft;
    coord_sched_t *s = coord_sched_new(e, m, &sp);
    cr_assert_not_null(s);
    for (int k = 0; k < n_prompts; k++) {
        memset(&out[k], 0, sizeof(out[k]));
        pthread_mutex_init(&out[k].mu, NULL);
        pthread_cond_init(&out[k].cv, NULL);
        coord_gen_req_t r = {.prompt = prompts[k], .n_prompt = np[k], .max_tokens = max_tokens,
                             .sampling = coord_sampler_params_default(), .top_logprobs = -1,
                             .on_token = on_token, .on_done = on_done, .ud = &out[k]};
        r.sampling.temperature = 0;
        cr_assert_gt(coord_sched_submit(s, &r), 0);
    }
    for (int k = 0; k < n_prompts; k++) {
        pthread_mutex_lock(&out[k].mu);
        while (!out[k].done) pthread_cond_wait(&out[k].cv, &out[k].mu);
        pthread_mutex_unlock(&out[k].mu);
    }
    coord_sched_stats_t st;
    coord_sched_stats(s, &st);
    *tps = (double)st.tokens_generated / (double)st.gen_passes;
    if (draft)
        cr_log_info("%s draft %d: %llu of %llu drafts accepted, %.2f tokens per step", model,
                    draft, (unsigned long long)st.draft_accepted,
                    (unsigned long long)st.draft_proposed, *tps);
    coord_sched_free(s);
    coord_engine_free(e);
    coord_experts_free(ex);
    kern_pool_free(pool);
    model_free(m);
}

static void same_with_and_without(const char *model, int n_prompts, int32_t *const *prompts,
                                  const int *np, int max_tokens, int draft, double min_tps)
{
    coll_t plain[4], spec[4];
    double t0, t1;
    generate(model, n_prompts, prompts, np, max_tokens, 0, plain, &t0);
    generate(model, n_prompts, prompts, np, max_tokens, draft, spec, &t1);
    for (int k = 0; k < n_prompts; k++) {
        cr_assert_eq(plain[k].n, spec[k].n, "prompt %d", k);
        for (int i = 0; i < plain[k].n; i++)
            cr_assert_eq(plain[k].ids[i], spec[k].ids[i], "%s prompt %d token %d", model, k, i);
        pthread_mutex_destroy(&plain[k].mu), pthread_cond_destroy(&plain[k].cv);
        pthread_mutex_destroy(&spec[k].mu), pthread_cond_destroy(&spec[k].cv);
    }
    cr_assert_float_eq(t0, 1.0, 1e-9, "without drafts one token per step");
    cr_assert_geq(t1, min_tps, "%s: %.2f tokens per step with drafts", model, t1);
}

static int golden_prompt(const char *base, int32_t *ids)
{
    char path[256], line[4096];
    snprintf(path, sizeof(path), GOLDEN "%s.golden", base);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    int n = 0;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "prompt_ids ", 11)) continue;
        char *end;
        n = (int)strtol(line + 11, &end, 10);
        for (int i = 0; i < n; i++) ids[i] = (int32_t)strtol(end, &end, 10);
        break;
    }
    fclose(f);
    cr_assert_gt(n, 0);
    return n;
}

Test(coord_spec, greedy_with_drafts_equals_plain_on_golden_models, .timeout = 300)
{
    const char *names[] = {"qwen3moe-tiny-f32", "stories260k-f32", "mixtral-tiny-f32"};
    for (int i = 0; i < 3; i++) {
        int32_t a[256], b[256];
        int n = golden_prompt(names[i], a);
        /* A second, repetitive prompt: the golden one three times. */
        for (int r = 0; r < 3; r++) memcpy(b + r * n, a, sizeof(int32_t) * n);
        int32_t *prompts[2] = {a, b};
        int np[2] = {n, 3 * n};
        char path[256];
        snprintf(path, sizeof(path), GOLDEN "%s.gguf", names[i]);
        same_with_and_without(path, 2, prompts, np, 64, 4, 1.0);
    }
}

Test(coord_spec, repetitive_text_accepts_drafts, .timeout = 300)
{
    const char *path = GOLDEN "stories-moe-f32.gguf";
    model_t *m;
    cr_assert_eq(model_load(path, &m), 0);
    model_tok_t *tok;
    cr_assert_eq(model_tok_new(m->gguf, &tok), 0);
    const char *text[2] = {
        "One, two, three, four. One, two, three, four. One, two, three, four. One, two,",
        "Tom said, \"I like the red ball.\" Sue said, \"I like the red ball.\" Tom said,"};
    int32_t p0[256], p1[256];
    int np[2];
    np[0] = (int)model_tok_encode(tok, text[0], strlen(text[0]), true, false, p0, 256);
    np[1] = (int)model_tok_encode(tok, text[1], strlen(text[1]), true, false, p1, 256);
    model_tok_free(tok);
    model_free(m);
    int32_t *prompts[2] = {p0, p1};
    /* Plain greedy on these prompts soon settles into loops that the drafts predict. */
    same_with_and_without(path, 2, prompts, np, 120, 4, 1.3);
    same_with_and_without(path, 1, prompts, np, 120, 8, 1.3);
}
