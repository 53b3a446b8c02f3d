/* Sampling: one logit vector in, one token id out, following llama.cpp's default chain
 * (penalties, top-k, top-p, min-p, temperature, draw) with a PRNG of our own so results depend
 * only on the seed and the accepted history, never on libc.
 *
 * Invariants:
 * - Every buffer is allocated in coord_sampler_new; sampling never allocates.
 * - The candidate order is total (higher logit first, then lower id), so partial selection and
 *   sorting are deterministic and ties always favour the lowest id.
 * - counts[id] is the number of times id occurs in the history ring (the last penalty_last_n
 *   accepted tokens), kept up to date on every accept.
 */
#include "coordinator/coord.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "wire/wire.h"

/* A history longer than any context window would only cost memory: params are caller-supplied,
 * so the ring's size is bounded before it is allocated. */
#define HISTORY_MAX (1 << 20)
/* First prefix length sorted while looking for the nucleus; doubled until the mass is reached. */
#define NUCLEUS_CHUNK 64

typedef struct {
    float logit;
    int32_t id;
} cand_t;

struct coord_sampler {
    coord_sampler_params_t p;
    int32_t n_vocab;
    cand_t *cand;     /* (n_vocab) working candidates of one sample call */
    int32_t *counts;  /* (n_vocab) occurrences of each id in the history ring */
    int32_t *ring;    /* (ring_cap) last accepted ids, oldest at ring_head once full */
    int ring_cap;
    int ring_len;
    int ring_head;
    uint64_t rng[4];  /* xoshiro256** state */
};

/* ---- PRNG: xoshiro256** seeded through splitmix64 (Blackman & Vigna) ---- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t s[4])
{
    uint64_t out = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

/* Uniform in [0, 1) with 53 random bits, the full precision of a double. */
static double rng_uniform(uint64_t s[4]) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

static void rng_seed(uint64_t s[4], uint64_t seed)
{
    /* splitmix64 never yields four zero words from one seed, which xoshiro cannot leave. */
    for (int i = 0; i < 4; i++) s[i] = splitmix64(&seed);
}

/* ---- candidate ordering, partial selection and sorting ---- */

static inline bool before(cand_t a, cand_t b)
{
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

static int cmp_cand(const void *x, const void *y)
{
    cand_t a = *(const cand_t *)x, b = *(const cand_t *)y;
    return before(a, b) ? -1 : before(b, a) ? 1 : 0;
}

static inline void swap(cand_t *a, cand_t *b)
{
    cand_t t = *a;
    *a = *b;
    *b = t;
}

/* Rearranges c (n) so that its first k elements are the k best in any order (Hoare quickselect,
 * median-of-three pivot). O(n) on average, which is what keeps top-k cheap at 152k entries. */
static void select_top(cand_t *c, int n, int k)
{
    if (k <= 0 || k >= n) return;
    int lo = 0, hi = n - 1, target = k - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (before(c[mid], c[lo])) swap(&c[mid], &c[lo]);
        if (before(c[hi], c[lo])) swap(&c[hi], &c[lo]);
        if (before(c[hi], c[mid])) swap(&c[hi], &c[mid]);
        cand_t pivot = c[mid];
        int i = lo, j = hi;
        while (i <= j) {
            while (before(c[i], pivot)) i++;
            while (before(pivot, c[j])) j--;
            if (i <= j) swap(&c[i++], &c[j--]);
        }
        if (target <= j) hi = j;
        else if (target >= i) lo = i;
        else break; /* target sits between the halves, equal to the pivot: in place */
    }
}

/* Grows the sorted prefix of c (n) to m elements. Invariant kept: c[0..*sorted) are the best
 * *sorted candidates in order, and everything after them ranks below. */
static void sort_prefix(cand_t *c, int n, int *sorted, int m)
{
    if (m > n) m = n;
    if (m <= *sorted) return;
    select_top(c + *sorted, n - *sorted, m - *sorted);
    qsort(c + *sorted, (size_t)(m - *sorted), sizeof(*c), cmp_cand);
    *sorted = m;
}

static float max_logit(const cand_t *c, int n, int sorted)
{
    if (sorted > 0) return c[0].logit;
    float m = c[0].logit;
    for (int i = 1; i < n; i++)
        if (c[i].logit > m) m = c[i].logit;
    return m;
}

/* ---- the chain ---- */

coord_sampler_params_t coord_sampler_params_default(void)
{
    /* llama.cpp's common defaults. */
    return (coord_sampler_params_t){
        .temperature = 0.8f,
        .top_k = 40,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .repeat_penalty = 1.0f,
        .presence_penalty = 0.0f,
        .frequency_penalty = 0.0f,
        .penalty_last_n = 64,
        .seed = 0x6d6f656d657368ull, /* "moemesh" */
    };
}

coord_sampler_t *coord_sampler_new(const coord_sampler_params_t *p, int32_t n_vocab)
{
    CHECK(p && n_vocab >= 1);
    coord_sampler_t *s = xcalloc(1, sizeof(*s));
    s->p = *p;
    s->n_vocab = n_vocab;
    s->cand = xmalloc((size_t)n_vocab * sizeof(*s->cand));
    s->counts = xcalloc((size_t)n_vocab, sizeof(*s->counts));
    s->ring_cap = p->penalty_last_n < 0 ? 0
                  : p->penalty_last_n > HISTORY_MAX ? HISTORY_MAX : p->penalty_last_n;
    s->ring = xmalloc((size_t)(s->ring_cap ? s->ring_cap : 1) * sizeof(*s->ring));
    rng_seed(s->rng, p->seed);
    return s;
}

void coord_sampler_free(coord_sampler_t *s)
{
    if (!s) return;
    free(s->cand);
    free(s->counts);
    free(s->ring);
    free(s);
}

void coord_sampler_accept(coord_sampler_t *s, int32_t id)
{
    /* Ids come from the tokenizer or from this sampler; anything else is a caller bug. */
    CHECK(id >= 0 && id < s->n_vocab);
    if (s->ring_cap == 0) return;
    if (s->ring_len == s->ring_cap) {
        s->counts[s->ring[s->ring_head]]--;
        s->ring[s->ring_head] = id;
        s->ring_head = (s->ring_head + 1) % s->ring_cap;
    } else {
        s->ring[(s->ring_head + s->ring_len) % s->ring_cap] = id;
        s->ring_len++;
    }
    s->counts[id]++;
}

void coord_sampler_reset(coord_sampler_t *s)
{
    for (int i = 0; i < s->ring_len; i++) s->counts[s->ring[i]] = 0;
    s->ring_len = 0;
    s->ring_head = 0;
    rng_seed(s->rng, s->p.seed);
}

static bool penalties_on(const coord_sampler_params_t *p)
{
    return p->repeat_penalty != 1.0f || p->presence_penalty != 0.0f ||
           p->frequency_penalty != 0.0f;
}

/* Draws from softmax(c / temp) with one uniform number. Sums run in double so that a 152k-entry
 * tail does not lose the small probabilities; dividing the difference to the maximum (never the
 * logit itself) by temp keeps a tiny temperature from overflowing. */
static int32_t draw(coord_sampler_t *s, cand_t *c, int n, float max, double temp)
{
    /* The weights replace the logits in place so that exp runs once per candidate. */
    double sum = 0;
    for (int i = 0; i < n; i++) {
        c[i].logit = (float)exp(((double)c[i].logit - max) / temp);
        sum += c[i].logit;
    }
    double u = rng_uniform(s->rng) * sum, cum = 0;
    for (int i = 0; i < n; i++) {
        cum += c[i].logit;
        if (u < cum) return c[i].id;
    }
    /* Rounding can leave u just above the final cum: the last candidate owns that sliver. */
    return c[n - 1].id;
}

int32_t coord_sampler_sample(coord_sampler_t *s, const float *logits)
{
    const coord_sampler_params_t *p = &s->p;
    cand_t *c = s->cand;
    int n = s->n_vocab;

    /* NaN would poison every comparison and sum below; it ranks below everything instead. */
    for (int i = 0; i < n; i++) c[i] = (cand_t){isnan(logits[i]) ? -INFINITY : logits[i], i};

    /* Penalties depend only on the original logit and the count, so applying them once per
     * ring entry (a token may appear many times) gives the same result as once per token. */
    if (penalties_on(p)) {
        for (int r = 0; r < s->ring_len; r++) {
            int32_t id = s->ring[r];
            float l = isnan(logits[id]) ? -INFINITY : logits[id];
            l = l <= 0 ? l * p->repeat_penalty : l / p->repeat_penalty;
            l -= (float)s->counts[id] * p->frequency_penalty + p->presence_penalty;
            c[id].logit = l;
        }
    }

    if (p->temperature <= 0 || p->top_k == 1) {
        /* Strict > on ascending ids keeps the lowest id among equal maxima. */
        int best = 0;
        for (int i = 1; i < n; i++)
            if (c[i].logit > c[best].logit) best = i;
        return c[best].id;
    }

    int sorted = 0;
    if (p->top_k > 0 && p->top_k < n) {
        sort_prefix(c, n, &sorted, p->top_k);
        n = p->top_k;
    }

    float max = max_logit(c, n, sorted);
    if (max == -INFINITY) return c[0].id; /* nothing has any probability: fall back to a fixed id */

    if (p->top_p < 1.0f && n > 1) {
        double sum = 0;
        for (int i = 0; i < n; i++) sum += exp((double)c[i].logit - max);
        /* Sort only as much of the head as the nucleus needs, doubling the prefix each time. */
        double cum = 0;
        int keep = 0;
        while (keep < n) {
            if (keep == sorted) sort_prefix(c, n, &sorted, sorted ? 2 * sorted : NUCLEUS_CHUNK);
            cum += exp((double)c[keep].logit - max) / sum;
            keep++;
            if (cum >= p->top_p) break;
        }
        n = keep;
    }

    if (p->min_p > 0.0f && n > 1) {
        /* p_i >= min_p * p_max  <=>  l_i >= l_max + log(min_p): one comparison per candidate,
         * no exp. The maximum always stays, even for min_p > 1. */
        double thr = (double)max + log((double)p->min_p);
        int keep = 0;
        for (int i = 0; i < n; i++)
            if (c[i].logit == max || (double)c[i].logit >= thr) c[keep++] = c[i];
        /* A sorted prefix loses only its tail, since the threshold is monotone in the logit. */
        if (sorted > keep) sorted = keep;
        n = keep;
    }

    return draw(s, c, n, max, p->temperature);
}
