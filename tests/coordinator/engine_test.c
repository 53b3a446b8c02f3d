/* Tests for coordinator/engine.c beyond the golden comparison: batching must not change the
 * math (one batch, chunks, token by token, two sequences interleaved in one batch all give the
 * same logits), the f16 KV cache stays close to f32, and malformed batches are refused without
 * touching the cache.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "coordinator/coord.h"

#define MODEL "../shared/golden/qwen3moe-tiny-f32.gguf"
#define N 20

typedef struct {
    model_t *m;
    kern_pool_t *pool;
    coord_experts_t *ex;
    coord_engine_t *e;
} fixture_t;

static void fx_init(fixture_t *f, int slots, int batch, bool kv_f16)
{
    cr_assert_eq(model_load(MODEL, &f->m), 0);
    f->pool = kern_pool_new(2);
    f->ex = coord_experts_local_new(f->m, f->pool, batch);
    coord_engine_params_t p = coord_engine_params_default();
    p.n_ctx = 64;
    p.n_slots = slots;
    p.n_batch = batch;
    p.kv_f16 = kv_f16;
    f->e = coord_engine_new(f->m, f->ex, f->pool, &p);
    cr_assert_not_null(f->e);
}

static void fx_deinit(fixture_t *f)
{
    coord_engine_free(f->e);
    coord_experts_free(f->ex);
    kern_pool_free(f->pool);
    model_free(f->m);
}

static void ids(int32_t *t)
{
    for (int i = 0; i < N; i++) t[i] = (int32_t)((i * 37 + 11) % 320);
}

/* Logits at every position, feeding the sequence in chunks of `chunk` tokens. */
static void run_chunks(fixture_t *f, int slot, int chunk, float *out)
{
    int32_t tok[N], pos[N], sl[N];
    bool want[N];
    ids(tok);
    for (int i = 0; i < N; i++) pos[i] = i, sl[i] = slot, want[i] = true;
    const int V = f->m->hp.n_vocab;
    for (int i = 0; i < N; i += chunk) {
        int c = N - i < chunk ? N - i : chunk;
        coord_batch_t b = {.n = c, .tok = tok + i, .pos = pos + i, .slot = sl + i, .want = want};
        cr_assert_eq(coord_engine_decode(f->e, &b, out + (size_t)i * V), 0);
    }
}

static double max_err_sd(const float *a, const float *b, int n, int V)
{
    double worst = 0;
    for (int p = 0; p < n; p++) {
        double mean = 0, var = 0, d = 0;
        for (int v = 0; v < V; v++) mean += a[p * V + v];
        mean /= V;
        for (int v = 0; v < V; v++) {
            var += (a[p * V + v] - mean) * (a[p * V + v] - mean);
            d = fmax(d, fabs(a[p * V + v] - b[p * V + v]));
        }
        worst = fmax(worst, d / sqrt(var / V));
    }
    return worst;
}

Test(coord_engine, chunked_prefill_and_decode_equal_one_batch)
{
    fixture_t f;
    fx_init(&f, 1, N, false);
    const int V = f.m->hp.n_vocab;
    float *one = malloc(sizeof(float) * N * V), *other = malloc(sizeof(float) * N * V);
    run_chunks(&f, 0, N, one);
    int chunks[] = {1, 3, 7};
    for (int c = 0; c < 3; c++) {
        coord_engine_clear_slot(f.e, 0);
        run_chunks(&f, 0, chunks[c], other);
        /* Same math, other batch shapes: only the matmul path and summation order may differ. */
        cr_assert_leq(max_err_sd(one, other, N, V), 1e-5, "chunk %d", chunks[c]);
    }
    free(one), free(other);
    fx_deinit(&f);
}

Test(coord_engine, interleaved_sequences_equal_separate_runs)
{
    fixture_t f;
    fx_init(&f, 2, 2 * N, false);
    const int V = f.m->hp.n_vocab;
    float *alone = malloc(sizeof(float) * N * V), *mixed = malloc(sizeof(float) * 2 * N * V);
    run_chunks(&f, 0, N, alone);
    coord_engine_clear_slot(f.e, 0);
    /* Slot 0 gets the sequence, slot 1 another one, tokens alternating within one batch. */
    int32_t tok[2 * N], pos[2 * N], sl[2 * N], base[N];
    bool want[2 * N];
    ids(base);
    for (int i = 0; i < N; i++) {
        tok[2 * i] = base[i], pos[2 * i] = i, sl[2 * i] = 0;
        tok[2 * i + 1] = (base[i] + 101) % 320, pos[2 * i + 1] = i, sl[2 * i + 1] = 1;
        want[2 * i] = true, want[2 * i + 1] = false;
    }
    coord_batch_t b = {.n = 2 * N, .tok = tok, .pos = pos, .slot = sl, .want = want};
    cr_assert_eq(coord_engine_decode(f.e, &b, mixed), 0);
    cr_assert_leq(max_err_sd(alone, mixed, N, V), 1e-5, "the other sequence leaked in");
    cr_assert_eq(coord_engine_slot_len(f.e, 0), N);
    cr_assert_eq(coord_engine_slot_len(f.e, 1), N);
    free(alone), free(mixed);
    fx_deinit(&f);
}

Test(coord_engine, f16_kv_cache_stays_close_to_f32)
{
    fixture_t a, b;
    fx_init(&a, 1, N, false);
    fx_init(&b, 1, N, true);
    const int V = a.m->hp.n_vocab;
    float *x = malloc(sizeof(float) * N * V), *y = malloc(sizeof(float) * N * V);
    run_chunks(&a, 0, N, x);
    run_chunks(&b, 0, N, y);
    double e = max_err_sd(x, y, N, V);
    /* Rounding K and V to f16 (11-bit mantissa) moves logits by about what f16 weights do
     * (golden tolerance 0.02 sd); it must move them, or the cache is not really f16. */
    cr_assert_leq(e, 0.02);
    cr_assert_gt(e, 0.0);
    free(x), free(y);
    fx_deinit(&a);
    fx_deinit(&b);
}

Test(coord_engine, malformed_batches_are_refused_and_change_nothing)
{
    fixture_t f;
    fx_init(&f, 2, 4, false);
    float *out = malloc(sizeof(float) * 4 * f.m->hp.n_vocab);
    int32_t tok[5] = {1, 2, 3, 4, 5}, pos[5] = {0, 1, 2, 3, 4}, sl[5] = {0};
    coord_batch_t b = {.n = 5, .tok = tok, .pos = pos, .slot = sl};
    cr_assert_eq(coord_engine_decode(f.e, &b, out), -EINVAL, "more tokens than n_batch");
    b.n = 2;
    tok[1] = 320;
    cr_assert_eq(coord_engine_decode(f.e, &b, out), -EINVAL, "id outside the vocabulary");
    tok[1] = 2;
    pos[1] = 5;
    cr_assert_eq(coord_engine_decode(f.e, &b, out), -EINVAL, "a gap in positions");
    pos[1] = 1;
    sl[1] = 2;
    cr_assert_eq(coord_engine_decode(f.e, &b, out), -EINVAL, "slot out of range");
    sl[1] = 0;
    pos[0] = 64, pos[1] = 65;
    cr_assert_eq(coord_engine_decode(f.e, &b, out), -EINVAL, "position beyond the context");
    cr_assert_eq(coord_engine_slot_len(f.e, 0), 0, "refused batches leave the cache alone");
    pos[0] = 0, pos[1] = 1;
    cr_assert_eq(coord_engine_decode(f.e, &b, out), 0);
    cr_assert_eq(coord_engine_slot_len(f.e, 0), 2);
    free(out);
    fx_deinit(&f);
}
