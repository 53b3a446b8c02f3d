/* Names shared between files of coordinator/ and its tests, not part of the public API
 * (STYLE.md: folder-internal names carry the coord__ prefix). */
#ifndef MOEMESH_COORDINATOR_INT_H
#define MOEMESH_COORDINATOR_INT_H

#include <stdint.h>

/* ---- speculative drafts (coordinator/spec.c) ---- */

/* Longest n-gram the prompt-lookup draft tries to match (then shorter ones, down to 1). */
#define COORD__DRAFT_NGRAM_MAX 3

/* Prompt lookup: finds the most recent earlier occurrence of the last n ids of ctx (n_ctx ids),
 * for n from max_ngram down to 1, and writes the ids that followed it into out (at most
 * n_draft). When the continuation runs into the end of ctx, it carries on with what was just
 * drafted, so a text repeating with a short period drafts whole periods. Returns the number
 * of ids drafted: 0 when nothing recurs. */
int coord__draft_lookup(const int32_t *ctx, int n_ctx, int max_ngram, int n_draft, int32_t *out);

#endif
