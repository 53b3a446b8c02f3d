/* Tests for coordinator/sample.c. Exact behaviours (greedy, ties, penalties, truncation) are
 * checked directly; the random draw is checked against a naive reference of the whole chain
 * (full sort, then each filter in llama.cpp's order) with a chi-square test on many seeded draws.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/coord.h"

/* Test inputs come from a fixed LCG so every run sees the same logits. */
static uint64_t lcg_state;
static double lcg_uniform(void)
{
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(lcg_state >> 11) * 0x1.0p-53;
}
static void fill_uniform(float *x, int n, float lo, float hi, uint64_t seed)
{
    lcg_state = seed;
    for (int i = 0; i < n; i++) x[i] = lo + (hi - lo) * (float)lcg_uniform();
}

static coord_sampler_params_t params_off(void)
{
    coord_sampler_params_t p = coord_sampler_params_default();
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repeat_penalty = 1.0f;
    p.presence_penalty = 0.0f;
    p.frequency_penalty = 0.0f;
    p.penalty_last_n = 64;
    p.seed = 1234;
    return p;
}

static int naive_argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 0; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* ---- naive reference of the chain: prob (n) = the distribution the draw should follow ---- */

static const float *ref_logits;
static int ref_cmp(const void *a, const void *b)
{
    int i = *(const int *)a, j = *(const int *)b;
    if (ref_logits[i] != ref_logits[j]) return ref_logits[i] > ref_logits[j] ? -1 : 1;
    return i - j;
}

static void ref_probs(const coord_sampler_params_t *p, const float *logits, int n,
                      const int32_t *hist, int n_hist, double *prob)
{
    float *l = malloc(n * sizeof(*l));
    int *order = malloc(n * sizeof(*order));
    memcpy(l, logits, n * sizeof(*l));
    int from = n_hist > p->penalty_last_n ? n_hist - p->penalty_last_n : 0;
    for (int id = 0; id < n; id++) {
        int count = 0;
        for (int h = from; h < n_hist; h++) count += hist[h] == id;
        if (!count) continue;
        l[id] = l[id] > 0 ? l[id] / p->repeat_penalty : l[id] * p->repeat_penalty;
        l[id] -= count * p->frequency_penalty + p->presence_penalty;
    }
    for (int i = 0; i < n; i++) order[i] = i;
    ref_logits = l;
    qsort(order, n, sizeof(*order), ref_cmp);
    int keep = p->top_k > 0 && p->top_k < n ? p->top_k : n;
    double max = l[order[0]], sum = 0, cum = 0;
    if (p->top_p < 1) {
        for (int i = 0; i < keep; i++) sum += exp(l[order[i]] - max);
        for (int i = 0; i < keep; i++) {
            cum += exp(l[order[i]] - max) / sum;
            if (cum >= p->top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0) {
        int k = 1;
        while (k < keep && exp(l[order[k]] - max) >= p->min_p) k++;
        keep = k;
    }
    memset(prob, 0, n * sizeof(*prob));
    sum = 0;
    for (int i = 0; i < keep; i++)
        sum += prob[order[i]] = exp((l[order[i]] - max) / p->temperature);
    for (int i = 0; i < keep; i++) prob[order[i]] /= sum;
    free(l);
    free(order);
}

/* Chi-square quantile at upper tail 1e-6 (Wilson-Hilferty, z = 4.753): with a fixed seed the
 * test is deterministic, and a correct sampler lands this far out only once in a million seeds,
 * while a wrong distribution (an off-by-one cut, a missing temperature) lands far beyond it. */
static double chi2_bound(int df)
{
    double a = 2.0 / (9.0 * df);
    double t = 1 - a + 4.753 * sqrt(a);
    return df * t * t * t;
}

/* Draws n_draws ids with history hist and asserts they follow ref_probs: no id outside the
 * support, and the chi-square statistic below chi2_bound. */
static void check_distribution(const coord_sampler_params_t *p, const float *logits, int n,
                               const int32_t *hist, int n_hist, int n_draws)
{
    double *prob = malloc(n * sizeof(*prob));
    long *count = calloc(n, sizeof(*count));
    ref_probs(p, logits, n, hist, n_hist, prob);
    coord_sampler_t *s = coord_sampler_new(p, n);
    for (int h = 0; h < n_hist; h++) coord_sampler_accept(s, hist[h]);
    for (int d = 0; d < n_draws; d++) {
        int32_t id = coord_sampler_sample(s, logits);
        cr_assert(id >= 0 && id < n);
        count[id]++;
    }
    double chi2 = 0;
    int support = 0;
    for (int i = 0; i < n; i++) {
        if (prob[i] == 0) {
            cr_assert_eq(count[i], 0, "id %d drawn %ld times outside the reference support", i,
                         count[i]);
            continue;
        }
        support++;
        double e = prob[i] * n_draws;
        chi2 += (count[i] - e) * (count[i] - e) / e;
    }
    /* With one bin, the support check above already says every draw was that id. */
    if (support > 1)
        cr_assert_lt(chi2, chi2_bound(support - 1), "chi2 %.1f over %d bins", chi2, support);
    coord_sampler_free(s);
    free(prob);
    free(count);
}

/* ---- exact behaviours ---- */

/* s picks the argmax of x (n) filled uniformly from [lo, hi) with each of 20 seeds. */
static void expect_argmax(coord_sampler_t *s, float *x, int n, float lo, float hi)
{
    for (uint64_t seed = 1; seed <= 20; seed++) {
        fill_uniform(x, n, lo, hi, seed);
        cr_assert_eq(coord_sampler_sample(s, x), naive_argmax(x, n));
    }
}

Test(coord_sampler, greedy_is_argmax_with_lowest_id_on_ties)
{
    enum { N = 1000 };
    float *x = malloc(N * sizeof(*x));
    coord_sampler_params_t p = coord_sampler_params_default();
    p.temperature = 0;
    coord_sampler_t *s = coord_sampler_new(&p, N);
    expect_argmax(s, x, N, -5, 5);
    /* A tie at the maximum, the later copy planted first in memory order of a scan. */
    fill_uniform(x, N, -5, 5, 99);
    x[700] = 9;
    x[300] = 9;
    cr_assert_eq(coord_sampler_sample(s, x), 300);
    coord_sampler_free(s);
    free(x);
}

Test(coord_sampler, same_seed_same_ids_other_seed_other_ids)
{
    enum { N = 50, DRAWS = 200 };
    float x[N];
    fill_uniform(x, N, 0, 2, 7);
    coord_sampler_params_t p = params_off();
    int32_t a[DRAWS], b[DRAWS], c[DRAWS];
    coord_sampler_t *s = coord_sampler_new(&p, N);
    for (int i = 0; i < DRAWS; i++) a[i] = coord_sampler_sample(s, x);
    coord_sampler_reset(s);
    for (int i = 0; i < DRAWS; i++) b[i] = coord_sampler_sample(s, x);
    coord_sampler_free(s);
    cr_assert_arr_eq(a, b, sizeof(a), "reset reseeds: the same ids again");

    p.seed++;
    s = coord_sampler_new(&p, N);
    for (int i = 0; i < DRAWS; i++) c[i] = coord_sampler_sample(s, x);
    coord_sampler_free(s);
    int differ = 0;
    for (int i = 0; i < DRAWS; i++) differ += a[i] != c[i];
    /* 50 ids of similar weight: two seeds agree on ~1/30 of draws, not on most of them. */
    cr_assert_gt(differ, DRAWS / 2);
}

Test(coord_sampler, top_k_one_is_greedy)
{
    enum { N = 4097 };
    float *x = malloc(N * sizeof(*x));
    coord_sampler_params_t p = params_off();
    p.top_k = 1;
    coord_sampler_t *s = coord_sampler_new(&p, N);
    expect_argmax(s, x, N, -1, 1);
    coord_sampler_free(s);
    free(x);
}

Test(coord_sampler, tiny_top_p_is_argmax)
{
    enum { N = 4097 };
    float *x = malloc(N * sizeof(*x));
    coord_sampler_params_t p = params_off();
    p.top_p = 1e-6f;
    coord_sampler_t *s = coord_sampler_new(&p, N);
    expect_argmax(s, x, N, -1, 1);
    coord_sampler_free(s);
    free(x);
}

Test(coord_sampler, min_p_keeps_exactly_ids_above_fraction_of_max)
{
    /* p_i / p_max = exp(l_i - l_max): ratios 1, 0.6, 0.45, 0.3, 0.1. */
    float x[5] = {0, logf(0.6f), logf(0.45f), logf(0.3f), logf(0.1f)};
    coord_sampler_params_t p = params_off();
    p.min_p = 0.4f;
    coord_sampler_t *s = coord_sampler_new(&p, 5);
    int count[5] = {0};
    for (int i = 0; i < 3000; i++) count[coord_sampler_sample(s, x)]++;
    coord_sampler_free(s);
    cr_assert(count[0] > 0 && count[1] > 0 && count[2] > 0, "ids at ratio >= 0.4 are drawn");
    cr_assert(count[3] == 0 && count[4] == 0, "ids at ratio < 0.4 never are");
    check_distribution(&p, x, 5, NULL, 0, 50000);
}

Test(coord_sampler, repeat_penalty_divides_positive_and_multiplies_negative)
{
    coord_sampler_params_t p = params_off();
    p.temperature = 0;
    p.repeat_penalty = 1.2f;
    coord_sampler_t *s = coord_sampler_new(&p, 4);
    float pos[4] = {2.0f, 1.9f, -3, -3}; /* 2.0 / 1.2 = 1.67 < 1.9 */
    cr_assert_eq(coord_sampler_sample(s, pos), 0);
    coord_sampler_accept(s, 0);
    cr_assert_eq(coord_sampler_sample(s, pos), 1);
    float neg[4] = {-1.0f, -1.1f, -3, -3}; /* -1.0 * 1.2 = -1.2 < -1.1 */
    cr_assert_eq(coord_sampler_sample(s, neg), 1);
    coord_sampler_reset(s);
    cr_assert_eq(coord_sampler_sample(s, neg), 0, "reset forgets the history");
    coord_sampler_free(s);
}

Test(coord_sampler, frequency_counts_occurrences_presence_does_not)
{
    float x[3] = {1.0f, 0.5f, -2};
    coord_sampler_params_t p = params_off();
    p.temperature = 0;

    p.frequency_penalty = 0.2f; /* 1 - 3 * 0.2 = 0.4 < 0.5 */
    coord_sampler_t *s = coord_sampler_new(&p, 3);
    for (int i = 0; i < 3; i++) coord_sampler_accept(s, 0);
    cr_assert_eq(coord_sampler_sample(s, x), 1);
    coord_sampler_free(s);

    p.frequency_penalty = 0.1f; /* 1 - 3 * 0.1 = 0.7 > 0.5 */
    s = coord_sampler_new(&p, 3);
    for (int i = 0; i < 3; i++) coord_sampler_accept(s, 0);
    cr_assert_eq(coord_sampler_sample(s, x), 0);
    coord_sampler_free(s);

    p.frequency_penalty = 0;
    p.presence_penalty = 0.4f; /* once, whatever the count: 0.6 > 0.5 */
    s = coord_sampler_new(&p, 3);
    for (int i = 0; i < 3; i++) coord_sampler_accept(s, 0);
    cr_assert_eq(coord_sampler_sample(s, x), 0);
    coord_sampler_free(s);

    p.presence_penalty = 0.6f; /* 0.4 < 0.5 */
    s = coord_sampler_new(&p, 3);
    coord_sampler_accept(s, 0);
    cr_assert_eq(coord_sampler_sample(s, x), 1);
    coord_sampler_free(s);
}

Test(coord_sampler, penalties_see_only_the_last_n_tokens)
{
    float x[3] = {1.0f, 0.9f, -2};
    coord_sampler_params_t p = params_off();
    p.temperature = 0;
    p.repeat_penalty = 2.0f;
    p.penalty_last_n = 2;
    coord_sampler_t *s = coord_sampler_new(&p, 3);
    coord_sampler_accept(s, 0);
    coord_sampler_accept(s, 2);
    cr_assert_eq(coord_sampler_sample(s, x), 1, "0 is within the last 2");
    coord_sampler_accept(s, 2);
    cr_assert_eq(coord_sampler_sample(s, x), 0, "0 has left the window");
    coord_sampler_free(s);

    p.penalty_last_n = 0;
    s = coord_sampler_new(&p, 3);
    coord_sampler_accept(s, 0);
    cr_assert_eq(coord_sampler_sample(s, x), 0, "last_n 0 disables the penalties");
    coord_sampler_free(s);
}

Test(coord_sampler, top_k_draws_only_the_k_best_of_a_large_vocabulary)
{
    enum { N = 152064, K = 40, DRAWS = 300 };
    float *x = malloc(N * sizeof(*x));
    /* A narrow range makes all 40 likely and puts many near-ties right at the cut. */
    fill_uniform(x, N, 0, 0.5f, 11);
    for (int i = 0; i < N; i++) x[i] = roundf(x[i] * 1000) / 1000;
    double *prob = malloc(N * sizeof(*prob));
    coord_sampler_params_t p = params_off();
    p.top_k = K;
    ref_probs(&p, x, N, NULL, 0, prob);
    coord_sampler_t *s = coord_sampler_new(&p, N);
    for (int d = 0; d < DRAWS; d++) {
        int32_t id = coord_sampler_sample(s, x);
        cr_assert_gt(prob[id], 0, "id %d (logit %g) is not among the top %d", id, x[id], K);
    }
    coord_sampler_free(s);
    free(prob);
    free(x);
}

/* ---- the draw follows the reference distribution ---- */

Test(coord_sampler, draws_follow_softmax_at_temperature_one)
{
    float x[8] = {1.5f, 0.2f, -0.7f, 2.1f, 0.0f, 1.0f, -1.5f, 0.6f};
    coord_sampler_params_t p = params_off();
    check_distribution(&p, x, 8, NULL, 0, 200000);
}

Test(coord_sampler, draws_follow_the_full_chain)
{
    enum { N = 300 };
    float x[N];
    int32_t hist[] = {5, 17, 17, 250, 3, 17, 299};
    fill_uniform(x, N, -1, 2, 3);

    coord_sampler_params_t p = params_off();
    p.temperature = 0.7f;
    check_distribution(&p, x, N, NULL, 0, 200000);

    p = params_off();
    p.top_k = 20;
    p.temperature = 1.3f;
    check_distribution(&p, x, N, NULL, 0, 100000);

    /* A nucleus of well over 64 ids makes the sampler grow its sorted prefix more than once. */
    p = params_off();
    p.top_p = 0.8f;
    check_distribution(&p, x, N, NULL, 0, 200000);

    p = coord_sampler_params_default();
    p.repeat_penalty = 1.3f;
    p.frequency_penalty = 0.1f;
    p.presence_penalty = 0.2f;
    p.penalty_last_n = 5;
    p.top_k = 60;
    p.top_p = 0.9f;
    p.min_p = 0.2f;
    check_distribution(&p, x, N, hist, 7, 100000);
}
