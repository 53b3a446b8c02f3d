/* tok_bpe.c — byte-level BPE (tokenizer.ggml.model "gpt2"), as llama.cpp's llm_tokenizer_bpe
 * does it:
 *   1. the pre-tokenizer cuts the fragment into words;
 *   2. each word's bytes are written in GPT-2's printable alphabet (bytes_to_unicode), which is
 *      how the vocabulary and merges spell them;
 *   3. with ignore_merges (Llama 3), a word that is itself a token is taken whole;
 *   4. otherwise the word starts as one symbol per character and the adjacent pair with the
 *      lowest merge rank is merged (ties: leftmost) until no pair has a rank;
 *   5. each final symbol is its token; a symbol missing from the vocabulary (only possible with
 *      inconsistent merges) falls back to the tokens of its single bytes, skipping bytes that
 *      have none, as llama.cpp does.
 * Because every byte has a printable character, any byte sequence round-trips through a
 * vocabulary that holds the 256 byte characters.
 */
#include <stdlib.h>
#include <string.h>

#include "model/tok-int.h"
#include "wire/wire.h"

typedef struct {
    char *w;            /* mapped word, UTF-8 */
    size_t wcap;
    model__sym_t *sym;  /* (n_sym) */
    size_t scap;
    model__heap_t heap;
} scratch_t;

static void try_pair(const model_tok_t *t, scratch_t *s, int32_t l, int32_t r)
{
    if (l < 0 || r < 0) return;
    const model__sym_t *a = &s->sym[l], *b = &s->sym[r];
    int32_t rank = model__map_get_pair(&t->by_pair, s->w + a->off, a->n, s->w + b->off, b->n);
    if (rank < 0) return;
    model__heap_push(&s->heap, (model__bigram_t){.key = -(double)rank, .left = l, .right = r,
                                                 .size = a->n + b->n});
}

static void encode_word(const model_tok_t *t, scratch_t *s, const char *word, size_t len,
                        model__ids_t *out)
{
    /* Step 2: at most 2 bytes of GPT-2 alphabet per input byte (code points below U+0144). */
    if (2 * len > s->wcap) {
        s->wcap = 2 * len;
        s->w = xrealloc(s->w, s->wcap);
    }
    size_t wn = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)word[i];
        memcpy(s->w + wn, t->bl_char[c], t->bl_len[c]);
        wn += t->bl_len[c];
    }

    if (t->ignore_merges) {
        int32_t id = model__map_get(&t->by_text, s->w, wn);
        if (id >= 0) {
            model__ids_push(out, id);
            return;
        }
    }

    if (wn > s->scap) {
        s->scap = wn;
        s->sym = xrealloc(s->sym, s->scap * sizeof(*s->sym));
    }
    int32_t n_sym = 0;
    for (size_t o = 0; o < wn;) {
        size_t k = model__utf8_len((unsigned char)s->w[o]);
        if (k > wn - o) k = wn - o;
        s->sym[n_sym] = (model__sym_t){.prev = n_sym - 1, .next = -1, .off = (uint32_t)o,
                                       .n = (uint32_t)k};
        if (n_sym > 0) s->sym[n_sym - 1].next = n_sym;
        n_sym++;
        o += k;
    }

    s->heap.n = 0;
    for (int32_t i = 1; i < n_sym; i++) try_pair(t, s, i - 1, i);
    model__bigram_t b;
    while (model__heap_pop(&s->heap, &b)) {
        model__sym_t *l = &s->sym[b.left], *r = &s->sym[b.right];
        /* A queued pair is stale once either side merged with something else. */
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) s->sym[r->next].prev = b.left;
        try_pair(t, s, l->prev, b.left);
        try_pair(t, s, b.left, l->next);
    }

    for (int32_t i = 0; i >= 0 && n_sym > 0; i = s->sym[i].next) {
        const model__sym_t *y = &s->sym[i];
        int32_t id = model__map_get(&t->by_text, s->w + y->off, y->n);
        if (id >= 0) {
            model__ids_push(out, id);
            continue;
        }
        for (uint32_t j = 0; j < y->n; j++) {
            int32_t bid = model__map_get(&t->by_text, s->w + y->off + j, 1);
            if (bid >= 0) model__ids_push(out, bid);
        }
    }
}

int model__bpe_encode(const model_tok_t *t, const char *text, size_t len, model__ids_t *out)
{
    model__spans_t words = {0};
    int rc = model__pre_split(t->pre, text, len, &words);
    if (rc == 0) {
        /* Words repeat a lot in real text, and a word's ids depend on the word alone: each
         * distinct word is merged once per call. The cache's keys are spans of text itself. */
        scratch_t s = {0};
        model__map_t seen;
        model__map_init(&seen, text, (uint32_t)(words.n < (1u << 30) ? words.n : (1u << 30)));
        model__span_t *where = xmalloc((words.n ? words.n : 1) * sizeof(*where)); /* ids in out */
        size_t n_where = 0;
        for (size_t i = 0; i < words.n; i++) {
            const char *w = text + words.v[i].off;
            size_t wl = words.v[i].len;
            int32_t c = model__map_get(&seen, w, wl);
            if (c >= 0) {
                for (size_t k = 0; k < where[c].len; k++)
                    model__ids_push(out, out->v[where[c].off + k]);
                continue;
            }
            int64_t before = out->n;
            encode_word(t, &s, w, wl, out);
            if (seen.n + 1 <= seen.mask / 2) {
                where[n_where] = (model__span_t){(size_t)before, (size_t)(out->n - before)};
                model__map_put(&seen, (uint32_t)words.v[i].off, (uint32_t)wl,
                               (int32_t)n_where++, false);
            }
        }
        free(where);
        model__map_deinit(&seen);
        free(s.w);
        free(s.sym);
        free(s.heap.v);
    }
    free(words.v);
    return rc;
}
