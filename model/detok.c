/* detok.c — streaming detokenizer: ids in, whole UTF-8 out. Pieces come from model_tok_piece;
 * the bytes of a character split across tokens (SentencePiece byte fallback <0xE4><0xBD><0xA0>,
 * byte-level BPE tokens ending mid-character) wait in `pend` until the character is complete.
 *
 * Invariant: pend holds at most 3 bytes between calls, and only when they are the start of a
 * valid multi-byte sequence that more bytes could still complete.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "model/tok-int.h"
#include "wire/wire.h"

struct model_detok {
    const model_tok_t *t;
    unsigned flags;
    bool first;   /* no piece handed out yet (for MODEL_DETOK_STRIP_SPACE) */
    char *buf;    /* (cap) held-back bytes followed by the new piece */
    size_t n, cap;
    char *out;    /* (ocap) bytes returned by the last call */
    size_t ocap;
};

model_detok_t *model_detok_new(const model_tok_t *t, unsigned flags)
{
    model_detok_t *d = xcalloc(1, sizeof(*d));
    d->t = t;
    d->flags = flags;
    d->first = true;
    return d;
}

void model_detok_free(model_detok_t *d)
{
    if (!d) return;
    free(d->buf);
    free(d->out);
    free(d);
}

/* Bytes a lead byte announces, 0 for bytes that cannot start a valid sequence. */
static size_t need_of(unsigned char c)
{
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0;
}

/* Length of the prefix of s (n bytes) that no later byte can change. */
static size_t complete_prefix(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = u[n - back];
        if ((c & 0xC0) == 0x80) continue; /* continuation: keep looking for its lead */
        size_t need = need_of(c);
        /* A lead whose sequence is still short, followed only by continuations, may complete;
         * anything else is final (complete, or invalid and never going to be valid). */
        if (need > back && model__utf8_valid(u + n - back, back) == 0) {
            /* model__utf8_valid rejects short input; check the bytes so far could start a valid
             * sequence by padding them with the smallest continuation that keeps it valid. */
            unsigned char probe[4] = {0};
            memcpy(probe, u + n - back, back);
            for (size_t i = back; i < need; i++) probe[i] = 0x80;
            if (c == 0xE0 && back == 1) probe[1] = 0xA0;
            if (c == 0xF0 && back == 1) probe[1] = 0x90;
            if (model__utf8_valid(probe, need) == need) return n - back;
        }
        return n;
    }
    return n;
}

static void emit(model_detok_t *d, size_t k, const char **out, size_t *n)
{
    if (k > d->ocap) {
        d->ocap = k;
        d->out = xrealloc(d->out, d->ocap);
    }
    if (k > 0) {
        memcpy(d->out, d->buf, k);
        memmove(d->buf, d->buf + k, d->n - k);
        d->n -= k;
    }
    *out = d->out ? d->out : "";
    *n = k;
}

int model_detok_push(model_detok_t *d, int32_t id, const char **out, size_t *n)
{
    *out = "";
    *n = 0;
    bool special = d->flags & MODEL_DETOK_SPECIAL;
    int len = model_tok_piece(d->t, id, special, NULL, 0);
    if (len < 0) return len;
    if (d->n + (size_t)len > d->cap) {
        d->cap = d->n + (size_t)len + 16;
        d->buf = xrealloc(d->buf, d->cap);
    }
    if (len > 0) model_tok_piece(d->t, id, special, d->buf + d->n, len);
    /* llama.cpp's detokenize strips one leading space from the first token only, whatever
     * that token is (an empty control piece uses up the chance). */
    if (d->first && (d->flags & MODEL_DETOK_STRIP_SPACE) && d->t->add_space_prefix && len > 0 &&
        d->buf[d->n] == ' ') {
        memmove(d->buf + d->n, d->buf + d->n + 1, (size_t)len - 1);
        len--;
    }
    d->first = false;
    d->n += (size_t)len;
    emit(d, complete_prefix(d->buf, d->n), out, n);
    return 0;
}

void model_detok_flush(model_detok_t *d, const char **out, size_t *n)
{
    emit(d, d->n, out, n);
    d->first = true;
}
