/* tok_spm.c — SentencePiece BPE (tokenizer.ggml.model "llama"), as llama.cpp's
 * llm_tokenizer_spm does it. The caller has already put the "▁" (U+2581) escapes in place of
 * spaces and the optional leading space.
 *   1. the fragment starts as one symbol per UTF-8 character (each invalid byte alone);
 *   2. repeatedly, the adjacent pair whose concatenation is a token with the highest score is
 *      merged (ties: leftmost);
 *   3. each final symbol is its token, or else its bytes as byte-fallback tokens <0xNN>; a
 *      vocabulary without byte tokens gives the unknown token instead (SentencePiece's rule
 *      without byte_fallback).
 * There is no pre-split as in BPE; the fragment is cut only where no token could ever span the
 * cut (see model__spm_init), which changes nothing but the speed.
 */
#include <stdlib.h>
#include <string.h>

#include "model/tok-int.h"
#include "wire/wire.h"

/* Key of two adjacent characters a (na bytes) and b (nb bytes), each at most 4 bytes. Distinct
 * pairs can share a key only through NUL padding, which makes the set claim more pairs than
 * exist: that only costs speed, never exactness. */
static uint64_t pair_key(const char *a, size_t na, const char *b, size_t nb)
{
    uint32_t x = 0, y = 0;
    memcpy(&x, a, na);
    memcpy(&y, b, nb);
    return ((uint64_t)x << 32) | y;
}

static uint64_t mix(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

static void pair_add(model_tok_t *t, uint64_t k)
{
    if (k == 0) {
        t->pairs_zero = true;
        return;
    }
    for (uint32_t i = (uint32_t)mix(k) & t->pairs_mask;; i = (i + 1) & t->pairs_mask) {
        if (t->pairs[i] == k) return;
        if (t->pairs[i] == 0) {
            t->pairs[i] = k;
            return;
        }
    }
}

static bool pair_has(const model_tok_t *t, uint64_t k)
{
    if (k == 0) return t->pairs_zero;
    for (uint32_t i = (uint32_t)mix(k) & t->pairs_mask;; i = (i + 1) & t->pairs_mask) {
        if (t->pairs[i] == k) return true;
        if (t->pairs[i] == 0) return false;
    }
}

/* Symbol length at s (n bytes left): a valid UTF-8 sequence, or one invalid byte. Valid
 * sequences are one symbol each, as in llama.cpp. An invalid byte is a symbol of its own:
 * llama.cpp would let a stray lead byte swallow the next bytes, including the escaped "▁" of a
 * space, and byte fallback would then emit the escape's bytes instead of the space. Valid UTF-8
 * is unaffected. */
static size_t sym_len(const char *s, size_t n)
{
    size_t k = model__utf8_valid((const unsigned char *)s, n);
    return k ? k : 1;
}

/* Every pair of adjacent characters inside any token. A merge can only join two symbols whose
 * boundary characters appear side by side in some token, so where a pair is absent the
 * segmentation splits into independent pieces: the result is the same, and each piece has its
 * own small queue instead of one queue over the whole text. */
void model__spm_init(model_tok_t *t)
{
    uint64_t n_pairs = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) n_pairs += t->len[i];
    uint32_t cap = 16;
    while (cap < 2 * n_pairs && cap < (1u << 30)) cap *= 2;
    t->pairs = xcalloc(cap, sizeof(*t->pairs));
    t->pairs_mask = cap - 1;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        const char *s = t->text + t->off[i];
        size_t n = t->len[i];
        for (size_t o = 0; o < n;) {
            size_t a = sym_len(s + o, n - o);
            if (o + a >= n) break;
            size_t b = sym_len(s + o + a, n - o - a);
            pair_add(t, pair_key(s + o, a, s + o + a, b));
            o += a;
        }
    }
}

static void try_pair(const model_tok_t *t, const char *text, model__sym_t *sym,
                     model__heap_t *heap, int32_t l, int32_t r)
{
    if (l < 0 || r < 0) return;
    uint32_t size = sym[l].n + sym[r].n;
    int32_t id = model__map_get(&t->by_text, text + sym[l].off, size);
    if (id < 0) return;
    model__heap_push(heap, (model__bigram_t){.key = t->score[id], .left = l, .right = r,
                                             .size = size});
}

/* Merges symbols first..last (a linked run) and appends their ids. */
static void segment(const model_tok_t *t, const char *text, model__sym_t *sym, int32_t first,
                    int32_t last, model__heap_t *heap, model__ids_t *out)
{
    heap->n = 0;
    for (int32_t i = first; i < last; i++) try_pair(t, text, sym, heap, i, i + 1);
    model__bigram_t b;
    while (model__heap_pop(heap, &b)) {
        model__sym_t *l = &sym[b.left], *r = &sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = b.left;
        try_pair(t, text, sym, heap, l->prev, b.left);
        try_pair(t, text, sym, heap, b.left, l->next);
    }

    for (int32_t i = first; i >= 0; i = sym[i].next) {
        int32_t id = model__map_get(&t->by_text, text + sym[i].off, sym[i].n);
        if (id >= 0) {
            model__ids_push(out, id);
            continue;
        }
        bool all_bytes = true;
        for (uint32_t j = 0; j < sym[i].n; j++)
            all_bytes = all_bytes && t->byte_tok[(unsigned char)text[sym[i].off + j]] >= 0;
        if (!all_bytes) {
            /* One unknown token per unknown character, as SentencePiece without fallback. */
            if (t->unk >= 0) model__ids_push(out, t->unk);
            continue;
        }
        for (uint32_t j = 0; j < sym[i].n; j++)
            model__ids_push(out, t->byte_tok[(unsigned char)text[sym[i].off + j]]);
    }
}

void model__spm_encode(const model_tok_t *t, const char *text, size_t len, model__ids_t *out)
{
    if (len == 0) return;
    model__sym_t *sym = xmalloc(len * sizeof(*sym));
    int32_t n_sym = 0;
    for (size_t o = 0; o < len;) {
        size_t k = sym_len(text + o, len - o);
        sym[n_sym] = (model__sym_t){.prev = -1, .next = -1, .off = (uint32_t)o, .n = (uint32_t)k};
        n_sym++;
        o += k;
    }
    model__heap_t heap = {0};
    int32_t first = 0;
    for (int32_t i = 0; i < n_sym; i++) {
        bool end = i + 1 == n_sym ||
                   !pair_has(t, pair_key(text + sym[i].off, sym[i].n, text + sym[i + 1].off,
                                         sym[i + 1].n));
        if (!end) {
            sym[i].next = i + 1;
            sym[i + 1].prev = i;
            continue;
        }
        segment(t, text, sym, first, i, &heap, out);
        first = i + 1;
    }
    free(heap.v);
    free(sym);
}
