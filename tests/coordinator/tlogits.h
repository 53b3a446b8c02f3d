/* The engine's logits and greedy tokens for tests that compare it with another path (a naive
 * reference, remote experts): cluster_test.c, families_test.c, gptoss_test.c. Token ids come
 * from golden files or a fixed generator; distances are in units of each position's standard
 * deviation of the reference logits. Failures are Criterion assertions.
 */
#ifndef MOEMESH_TESTS_TLOGITS_H
#define MOEMESH_TESTS_TLOGITS_H

#include <stdbool.h>
#include <stdint.h>

#include "coordinator/coord.h"

typedef struct {
    bool kv_f16;  /* f16 KV cache */
    int n_micro;  /* micro-batches per decode; 0: the engine's default (adaptive) */
    float *steps; /* NULL, or (n, V): the same logits decoded one token per call */
} tlogits_opts_t;

/* Teacher-forced logits (n, V) of ids in one batch (context n + 8), then greedy tokens
 * (n - n_prompt) decoded one per call from the prompt, with experts ex. */
void tlogits_run(const model_t *m, coord_experts_t *ex, kern_pool_t *pool, tlogits_opts_t o,
                 const int32_t *ids, int n, int n_prompt, float *logits, int32_t *greedy);
/* ids (n) through m twice, with experts a (the reference) then b, as tlogits_run: returns the
 * worst distance of b's teacher-forced logits from a's (tlogits_err with tol and *over), and
 * each run's greedy tokens in ga and gb. */
double tlogits_compare(const model_t *m, coord_experts_t *a, coord_experts_t *b,
                       kern_pool_t *pool, tlogits_opts_t o, const int32_t *ids, int n,
                       int n_prompt, double tol, int *over, int32_t *ga, int32_t *gb);
/* A cluster of the n nodes at eps for m, f32 on the wire (remote results then differ from
 * local ones only in the order partial sums are added), without progress lines; fails the
 * test when it does not start. */
coord_cluster_t *tlogits_cluster(const model_t *m, const char *const *eps, int n);
/* Largest |out - ref| / sd(ref) over n positions of V logits; *over (may be NULL) gets how
 * many positions exceed tol. */
double tlogits_err(const double *ref, const float *out, int n, int V, double tol, int *over);
/* n ids in [0, mod) from a fixed generator seeded with seed. */
void tlogits_ids(int32_t *ids, int n, uint64_t seed, int mod);
/* prompt_ids then greedy_ids of ../shared/golden/NAME.golden into ids (cap); returns the count,
 * *n_prompt the prompt's. Fails unless both are there. */
int tlogits_golden_ids(const char *name, int32_t *ids, int cap, int *n_prompt);

#endif
