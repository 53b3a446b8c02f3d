/* tok_spm.c — SentencePiece BPE (tokenizer.ggml.model "llama"), as llama.cpp's
 * llm_tokenizer_spm does it. The caller has already put the "▁" (U+2581) escapes in place of
 * spaces and the optional leading space.
 *   1. the fragment starts as one symbol per UTF-8 character (each invalid byte alone);
 *   2. repeatedly, the adjacent pair whose concatenation is a token with the highest score is
 *      merged (ties: leftmost);
 *   3. each final symbol is its token, or else its bytes as byte-fallback tokens <0xNN>; a
 *      vocabulary without byte tokens gives the unknown token instead (SentencePiece's rule
 *      without byte_fallback).
 * Unlike BPE there is no pre-split: the whole fragment is one segmentation, O(n log n).
 */
#include <stdlib.h>

#include "model/tok-int.h"
#include "wire/wire.h"

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

void model__spm_encode(const model_tok_t *t, const char *text, size_t len, model__ids_t *out)
{
    if (len == 0) return;
    model__sym_t *sym = xmalloc(len * sizeof(*sym));
    int32_t n_sym = 0;
    for (size_t o = 0; o < len;) {
        /* Valid sequences are one symbol each, as in llama.cpp. An invalid byte is a symbol of
         * its own: llama.cpp would let a stray lead byte swallow the next bytes, including the
         * escaped "▁" of a space, and byte fallback would then emit the escape's bytes instead
         * of the space. Valid UTF-8 is unaffected. */
        size_t k = model__utf8_valid((const unsigned char *)text + o, len - o);
        if (k == 0) k = 1;
        sym[n_sym] = (model__sym_t){.prev = n_sym - 1, .next = -1, .off = (uint32_t)o,
                                    .n = (uint32_t)k};
        if (n_sym > 0) sym[n_sym - 1].next = n_sym;
        n_sym++;
        o += k;
    }

    model__heap_t heap = {0};
    for (int32_t i = 1; i < n_sym; i++) try_pair(t, text, sym, &heap, i - 1, i);
    model__bigram_t b;
    while (model__heap_pop(&heap, &b)) {
        model__sym_t *l = &sym[b.left], *r = &sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = b.left;
        try_pair(t, text, sym, &heap, l->prev, b.left);
        try_pair(t, text, sym, &heap, b.left, l->next);
    }

    for (int32_t i = 0; i >= 0; i = sym[i].next) {
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
    free(heap.v);
    free(sym);
}
