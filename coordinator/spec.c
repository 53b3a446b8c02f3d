/* Speculative drafts without a second model (prompt lookup): text often repeats what its own
 * context already holds (code, lists, quoted passages, stories that reuse names), so the ids
 * that followed the last occurrence of the current n-gram are a cheap guess at what comes next.
 * The scheduler verifies the guess in the same forward pass as the real next token and keeps
 * the longest prefix the model agrees with, so a wrong guess costs compute but never changes
 * the output.
 */
#include "coordinator/coordinator-int.h"

#include <stdbool.h>
#include <string.h>

static bool same(const int32_t *a, const int32_t *b, int n)
{
    return memcmp(a, b, sizeof(int32_t) * (size_t)n) == 0;
}

int coord__draft_lookup(const int32_t *ctx, int n_ctx, int max_ngram, int n_draft, int32_t *out)
{
    if (n_draft <= 0) return 0;
    for (int n = max_ngram; n >= 1; n--) {
        if (n_ctx < n + 1) continue;
        const int32_t *pat = ctx + n_ctx - n;
        /* The most recent match first: nearby text predicts best, and a periodic text's most
         * recent match is one period back. */
        for (int i = n_ctx - n - 1; i >= 0; i--) {
            if (ctx[i] != pat[0] || !same(ctx + i, pat, n)) continue;
            int from = i + n; /* < n_ctx */
            for (int j = 0; j < n_draft; j++) {
                int k = from + j;
                /* Past the end of ctx the continuation is the draft itself: ctx followed by
                 * out is the sequence we predict, and index k of it sits at out[k - n_ctx]. */
                out[j] = k < n_ctx ? ctx[k] : out[k - n_ctx];
            }
            return n_draft;
        }
    }
    return 0;
}
