/* coordinator — the process users talk to: embeddings, attention with its KV cache, the router,
 * shared experts, output head and sampling run here; routed experts run locally or on expert
 * nodes. main.c parses the command line; everything else links into tests.
 */
#ifndef MOEMESH_COORD_H
#define MOEMESH_COORD_H

#include <stdbool.h>
#include <stdint.h>

/* ---- sampling (coordinator/sample.c) ----
 * Turns one logit vector into a token id. Deterministic for a given seed and history. The
 * order follows llama.cpp's default chain: penalties, top-k, top-p, min-p, temperature, draw. */
typedef struct {
    float temperature;       /* <= 0: greedy (argmax, lowest id on ties) */
    int top_k;               /* <= 0: off */
    float top_p;             /* >= 1: off */
    float min_p;             /* <= 0: off */
    float repeat_penalty;    /* 1: off; divides positive logits of recent tokens, multiplies negative */
    float presence_penalty;  /* 0: off; subtracted once from logits of recent tokens */
    float frequency_penalty; /* 0: off; subtracted per occurrence */
    int penalty_last_n;      /* how many recent tokens the penalties look at; 0 none */
    uint64_t seed;
} coord_sampler_params_t;

coord_sampler_params_t coord_sampler_params_default(void);

typedef struct coord_sampler coord_sampler_t;
/* NULL-free: aborts only on OOM. n_vocab >= 1. */
coord_sampler_t *coord_sampler_new(const coord_sampler_params_t *p, int32_t n_vocab);
void coord_sampler_free(coord_sampler_t *s); /* NULL-safe */
/* Records a token of the sequence (prompt or generated) for the penalties. */
void coord_sampler_accept(coord_sampler_t *s, int32_t id);
/* Picks the next id from logits (n_vocab, not modified). */
int32_t coord_sampler_sample(coord_sampler_t *s, const float *logits);
/* Forgets the history and reseeds. */
void coord_sampler_reset(coord_sampler_t *s);

#endif
