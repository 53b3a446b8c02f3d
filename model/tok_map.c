/* tok_map.c — the tokenizer's containers: a string -> id hash map whose keys live in an arena
 * (token texts, BPE merges), growable id/span vectors, and strict UTF-8 validation.
 *
 * Invariants: the map's table is a power of two at most half full, so probing ends; slot.h is
 * never 0 for a used slot (hashes of 0 are bumped to 1).
 */
#include <stdlib.h>
#include <string.h>

#include "model/tok-int.h"
#include "wire/wire.h"

#define FNV_OFF 1469598103934665603ull
#define FNV_MUL 1099511628211ull

static uint64_t fnv(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * FNV_MUL;
    return h;
}

static uint64_t fix(uint64_t h) { return h ? h : 1; }

void model__map_init(model__map_t *m, const char *arena, uint32_t n_keys)
{
    uint32_t cap = 16;
    /* Half full at most keeps linear probing short. */
    while (cap < 2ull * n_keys) cap *= 2;
    m->slot = xcalloc(cap, sizeof(*m->slot));
    m->mask = cap - 1;
    m->n = 0;
    m->arena = arena;
}

void model__map_deinit(model__map_t *m)
{
    free(m->slot);
    memset(m, 0, sizeof(*m));
}

void model__map_put(model__map_t *m, uint32_t off, uint32_t len, int32_t val, bool overwrite)
{
    CHECK(2ull * (m->n + 1) <= (uint64_t)m->mask + 1);
    uint64_t h = fix(fnv(FNV_OFF, m->arena + off, len));
    for (uint32_t i = (uint32_t)h & m->mask;; i = (i + 1) & m->mask) {
        model__map_slot_t *s = &m->slot[i];
        if (s->h == 0) {
            *s = (model__map_slot_t){.h = h, .off = off, .len = len, .val = val};
            m->n++;
            return;
        }
        if (s->h == h && s->len == len && memcmp(m->arena + s->off, m->arena + off, len) == 0) {
            if (overwrite) s->val = val;
            return;
        }
    }
}

int32_t model__map_get(const model__map_t *m, const char *s, size_t n)
{
    uint64_t h = fix(fnv(FNV_OFF, s, n));
    for (uint32_t i = (uint32_t)h & m->mask;; i = (i + 1) & m->mask) {
        const model__map_slot_t *e = &m->slot[i];
        if (e->h == 0) return -1;
        if (e->h == h && e->len == n && memcmp(m->arena + e->off, s, n) == 0) return e->val;
    }
}

int32_t model__map_get_pair(const model__map_t *m, const char *a, size_t na, const char *b,
                            size_t nb)
{
    uint64_t h = fnv(FNV_OFF, a, na);
    h = fnv(h, " ", 1);
    h = fix(fnv(h, b, nb));
    size_t n = na + 1 + nb;
    for (uint32_t i = (uint32_t)h & m->mask;; i = (i + 1) & m->mask) {
        const model__map_slot_t *e = &m->slot[i];
        if (e->h == 0) return -1;
        if (e->h == h && e->len == n) {
            const char *k = m->arena + e->off;
            if (memcmp(k, a, na) == 0 && k[na] == ' ' && memcmp(k + na + 1, b, nb) == 0)
                return e->val;
        }
    }
}

void model__ids_push(model__ids_t *ids, int32_t id)
{
    if (ids->n == ids->cap) {
        ids->cap = ids->cap ? 2 * ids->cap : 64;
        ids->v = xrealloc(ids->v, (size_t)ids->cap * sizeof(*ids->v));
    }
    ids->v[ids->n++] = id;
}

void model__spans_push(model__spans_t *s, size_t off, size_t len)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->v = xrealloc(s->v, s->cap * sizeof(*s->v));
    }
    s->v[s->n++] = (model__span_t){off, len};
}

size_t model__utf8_valid(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t k;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
        k = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        k = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        k = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < k) return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((k == 3 && cp < 0x800) || (k == 4 && cp < 0x10000)) return 0; /* overlong */
    if (cp >= 0xD800 && cp <= 0xDFFF) return 0;                       /* surrogate */
    if (cp > 0x10FFFF) return 0;
    return k;
}

/* a is better than b: higher key, or the same key further left. */
static bool better(const model__bigram_t *a, const model__bigram_t *b)
{
    return a->key > b->key || (a->key == b->key && a->left < b->left);
}

void model__heap_push(model__heap_t *h, model__bigram_t b)
{
    if (h->n == h->cap) {
        h->cap = h->cap ? 2 * h->cap : 64;
        h->v = xrealloc(h->v, h->cap * sizeof(*h->v));
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!better(&b, &h->v[up])) break;
        h->v[i] = h->v[up];
        i = up;
    }
    h->v[i] = b;
}

bool model__heap_pop(model__heap_t *h, model__bigram_t *out)
{
    if (h->n == 0) return false;
    *out = h->v[0];
    model__bigram_t last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && better(&h->v[c + 1], &h->v[c])) c++;
        if (!better(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = last;
    return true;
}
