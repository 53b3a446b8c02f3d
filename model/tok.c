/* tok.c — the tokenizer object: built from a vocabulary description (model__tok_build; the GGUF
 * side is tok_gguf.c), then read-only. Encoding follows llama.cpp's llama_vocab::tokenize:
 *   1. special-token partition: the text of special tokens is cut out before any segmentation.
 *      Candidates are tokens of type CONTROL, USER_DEFINED and UNKNOWN, longest text first;
 *      each one in turn splits every remaining raw fragment at all its occurrences. USER_DEFINED
 *      tokens are always cut out; CONTROL and UNKNOWN only with parse_special (Hugging Face
 *      treats added non-special tokens the same way);
 *   2. raw fragments go to SentencePiece (with "▁" escapes and a leading space after BOS/any
 *      special token, when add_space_prefix) or to the pre-tokenizer and byte-level BPE.
 * Decoded pieces of every token are computed once at build time, so model_tok_piece is a copy.
 *
 * Invariants: ids stored anywhere in the object are < n_vocab or -1; token texts are unique keys
 * in by_text (a duplicated text maps to its last id, as in llama.cpp).
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tok-int.h"
#include "wire/wire.h"

/* ---- build ---- */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes
 * take code points 256, 257, ... in byte order. */
static void init_byte_level(model_tok_t *t)
{
    int next = 256;
    for (int b = 0; b < 256; b++) {
        bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        int cp = self ? b : next++;
        if (cp < 0x80) {
            t->bl_char[b][0] = (char)cp;
            t->bl_len[b] = 1;
        } else {
            t->bl_char[b][0] = (char)(0xC0 | (cp >> 6));
            t->bl_char[b][1] = (char)(0x80 | (cp & 0x3F));
            t->bl_len[b] = 2;
        }
    }
}

/* Byte of the GPT-2 alphabet character cp, or -1. */
static int byte_of_cp(uint32_t cp)
{
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp < 256 || cp >= 256 + 68) return -1;
    int n = 256;
    for (int b = 0; b < 256; b++) {
        bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        if (!self && n++ == (int)cp) return b;
    }
    return -1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

typedef struct {
    char *v;
    size_t n, cap;
} buf_t;

static void buf_add(buf_t *b, const void *s, size_t n)
{
    if (b->n + n > b->cap) {
        while (b->n + n > b->cap) b->cap = b->cap ? 2 * b->cap : 4096;
        b->v = xrealloc(b->v, b->cap);
    }
    memcpy(b->v + b->n, s, n);
    b->n += n;
}

/* The bytes token id stands for with special = true (llama.cpp's token_to_piece). */
static void decode_token(const model_tok_t *t, int32_t id, buf_t *out)
{
    const char *s = t->text + t->off[id];
    uint32_t n = t->len[id];
    uint8_t a = t->attr[id];
    if (a & (MODEL__A_UNKNOWN | MODEL__A_CONTROL | MODEL__A_USER)) {
        buf_add(out, s, n);
        return;
    }
    if (t->kind == MODEL__TOK_SPM) {
        if (a & MODEL__A_NORMAL) {
            for (uint32_t i = 0; i < n;) {
                if (n - i >= 3 && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
                    buf_add(out, " ", 1);
                    i += 3;
                } else {
                    buf_add(out, s + i++, 1);
                }
            }
        } else if (a & MODEL__A_BYTE) {
            int hi = n == 6 ? hexval(s[3]) : -1, lo = n == 6 ? hexval(s[4]) : -1;
            if (hi >= 0 && lo >= 0) {
                char c = (char)(hi * 16 + lo);
                buf_add(out, &c, 1);
            } else {
                buf_add(out, s, n);
            }
        }
        return;
    }
    if (!(a & MODEL__A_NORMAL)) return;
    /* Byte-level: every character is one byte of the GPT-2 alphabet; anything else is shown the
     * way llama.cpp shows it, so a broken vocabulary is visible rather than silently dropped. */
    const unsigned char *u = (const unsigned char *)s;
    for (uint32_t i = 0; i < n;) {
        size_t k = model__utf8_valid(u + i, n - i);
        uint32_t cp = 0;
        if (k == 1) cp = u[i];
        else if (k == 2) cp = ((u[i] & 0x1Fu) << 6) | (u[i + 1] & 0x3Fu);
        int b = k ? byte_of_cp(cp) : -1;
        if (b >= 0) {
            char c = (char)b;
            buf_add(out, &c, 1);
        } else {
            if (k == 0) k = 1;
            char tmp[16];
            buf_add(out, "[UNK_BYTE_0x", 12);
            for (size_t j = 0; j < k; j++) {
                snprintf(tmp, sizeof(tmp), "%02x", u[i + j]);
                buf_add(out, tmp, 2);
            }
            buf_add(out, s, n);
            buf_add(out, "]", 1);
        }
        i += k;
    }
}

static int32_t find_text(const model_tok_t *t, const char *s)
{
    return model__map_get(&t->by_text, s, strlen(s));
}

static bool in_set(const char *const *set, const char *s, size_t n)
{
    for (; *set; set++)
        if (strlen(*set) == n && memcmp(*set, s, n) == 0) return true;
    return false;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static const model_tok_t *sort_tok; /* qsort has no context argument; build is single-threaded */
static int cmp_special(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint32_t lx = sort_tok->len[x], ly = sort_tok->len[y];
    if (lx != ly) return lx > ly ? -1 : 1;
    return (x > y) - (x < y);
}

/* End-of-turn, end-of-generation and FIM texts llama.cpp recognises when the metadata lacks ids;
 * such tokens are forced to CONTROL as llama.cpp does. */
static const char *const eot_texts[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                                        "<|endoftext|>", "<EOT>", "_<EOT>", "[EOT]",
                                        "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence"
                                        "\xEF\xBD\x9C>", "<|end_of_text|>", NULL};
static const char *const eog_texts[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>",
                                        "<|call|>", "<end_of_turn>", "<|endoftext|>",
                                        "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
                                        "<|end_of_text|>", "<end_of_utterance>", NULL};
static const char *const fim_eog_texts[] = {"<|fim_pad|>", "<fim-pad>", "<PAD>", "[PAD]",
                                            "<|fim_repo|>", "<|repo_name|>", "<fim-repo>",
                                            "<REPO>", "<|file_sep|>", NULL};

static void add_eog(model_tok_t *t, int32_t id)
{
    if (id < 0) return;
    for (int i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id) return;
    t->eog = xrealloc(t->eog, (size_t)(t->n_eog + 1) * sizeof(*t->eog));
    t->eog[t->n_eog++] = id;
}

static int32_t special_id(const model_tok_t *t, int64_t given, int32_t dflt, const char *what)
{
    if (given >= 0 && given < t->n_vocab) return (int32_t)given;
    /* llama.cpp's converters write -1 stored as u32 (0xFFFFFFFF) for "no such token". */
    if (given >= 0 && given != 0xFFFFFFFFll)
        LOG_WARN("%s id %lld is outside the vocabulary of %d tokens; using the default", what,
                 (long long)given, t->n_vocab);
    return dflt < t->n_vocab ? dflt : -1;
}

int model__tok_build(const model__tok_spec_t *sp, model_tok_t **out)
{
    *out = NULL;
    model_tok_t *t = xcalloc(1, sizeof(*t));
    buf_t arena = {0}, pieces = {0};
    int rc = MODEL_E_VOCAB;

    if (sp->model && strcmp(sp->model, "llama") == 0) {
        t->kind = MODEL__TOK_SPM;
    } else if (sp->model && strcmp(sp->model, "gpt2") == 0) {
        t->kind = MODEL__TOK_BPE;
    } else {
        LOG_ERR("unsupported tokenizer.ggml.model '%s' (supported: llama, gpt2)",
                sp->model ? sp->model : "(missing)");
        goto fail;
    }
    if (sp->n_vocab < 1 || sp->n_vocab > (1 << 28) || !sp->tokens) {
        LOG_ERR("vocabulary size %lld is out of range", (long long)sp->n_vocab);
        goto fail;
    }
    t->n_vocab = (int32_t)sp->n_vocab;

    /* Token texts into one arena; empty ones get llama.cpp's placeholder name. */
    t->off = xmalloc((size_t)t->n_vocab * sizeof(*t->off));
    t->len = xmalloc((size_t)t->n_vocab * sizeof(*t->len));
    for (int32_t i = 0; i < t->n_vocab; i++) {
        const char *s = sp->tokens[i] ? sp->tokens[i] : "";
        uint64_t n = sp->token_len ? sp->token_len[i] : strlen(s);
        char ph[32];
        if (n == 0) {
            n = (uint64_t)snprintf(ph, sizeof(ph), "[EMPTY_%d]", i);
            s = ph;
        }
        if (n > (1u << 20) || arena.n + n + 1 > UINT32_MAX) {
            LOG_ERR("token %d is %llu bytes long; the vocabulary is not plausible", i,
                    (unsigned long long)n);
            goto fail;
        }
        t->off[i] = (uint32_t)arena.n;
        t->len[i] = (uint32_t)n;
        buf_add(&arena, s, n);
        buf_add(&arena, "", 1);
    }
    t->text = arena.v;
    arena.v = NULL;
    model__map_init(&t->by_text, t->text, (uint32_t)t->n_vocab);
    for (int32_t i = 0; i < t->n_vocab; i++)
        model__map_put(&t->by_text, t->off[i], t->len[i], i, true);

    t->score = xcalloc((size_t)t->n_vocab, sizeof(*t->score));
    if (sp->scores) memcpy(t->score, sp->scores, (size_t)t->n_vocab * sizeof(*t->score));
    t->attr = xcalloc((size_t)t->n_vocab, 1);
    for (int32_t i = 0; i < t->n_vocab; i++) {
        int ty = sp->types ? sp->types[i] : MODEL__TT_NORMAL;
        static const uint8_t of_type[7] = {0,
                                           MODEL__A_NORMAL,
                                           MODEL__A_UNKNOWN,
                                           MODEL__A_CONTROL,
                                           MODEL__A_USER,
                                           MODEL__A_UNUSED,
                                           MODEL__A_BYTE};
        t->attr[i] = (ty >= 1 && ty <= 6) ? of_type[ty] : 0;
    }

    /* Type defaults, then the metadata (llama.cpp's load order). */
    bool spm = t->kind == MODEL__TOK_SPM;
    if (!spm) {
        if (!sp->pre || !*sp->pre)
            LOG_WARN("no tokenizer.ggml.pre; using the 'default' pre-tokenizer, which is "
                     "probably not what this model was trained with");
        if ((rc = model__pre_new(sp->pre, &t->pre)) != 0) goto fail;
        rc = MODEL_E_VOCAB;
    }
    t->bos = special_id(t, sp->bos, spm ? 1 : model__pre_no_default_bos(t->pre) ? -1 : 11, "BOS");
    t->eos = special_id(t, sp->eos, spm ? 2 : 11, "EOS");
    t->unk = special_id(t, sp->unk, spm ? 0 : -1, "UNK");
    t->pad = special_id(t, sp->pad, -1, "PAD");
    t->eot = special_id(t, sp->eot, -1, "EOT");
    t->eom = special_id(t, sp->eom, -1, "EOM");
    t->add_space_prefix = spm;
    t->add_bos = spm ? true : model__pre_add_bos(t->pre);
    t->add_eos = false;
    t->ignore_merges = spm ? false : model__pre_ignore_merges(t->pre);
    if (sp->add_space_prefix >= 0) t->add_space_prefix = sp->add_space_prefix;
    if (sp->add_bos >= 0) t->add_bos = sp->add_bos;
    if (sp->add_eos >= 0) t->add_eos = sp->add_eos;

    if (!spm) {
        if (!sp->merges && sp->n_merges == 0 && model__pre_merges_optional(t->pre)) {
            /* llama.cpp loads such a vocabulary too; every word then splits into its
             * characters' tokens. */
            LOG_WARN("no tokenizer.ggml.merges; pre-tokenizer '%s' allows that, words will not "
                     "merge", sp->pre);
        } else if (!sp->merges || sp->n_merges < 0) {
            LOG_ERR("byte-level BPE vocabulary without tokenizer.ggml.merges");
            goto fail;
        }
        buf_t m = {0};
        uint32_t *moff = xmalloc((size_t)(sp->n_merges ? sp->n_merges : 1) * sizeof(*moff));
        uint32_t *mlen = xmalloc((size_t)(sp->n_merges ? sp->n_merges : 1) * sizeof(*mlen));
        bool ok = true;
        for (int64_t i = 0; i < sp->n_merges && ok; i++) {
            const char *s = sp->merges[i] ? sp->merges[i] : "";
            uint64_t n = sp->merge_len ? sp->merge_len[i] : strlen(s);
            if (n > (1u << 20) || m.n + n + 1 > UINT32_MAX || i > INT32_MAX) {
                LOG_ERR("merge %lld is not plausible", (long long)i);
                ok = false;
                break;
            }
            moff[i] = (uint32_t)m.n;
            mlen[i] = (uint32_t)n;
            buf_add(&m, s, n);
            buf_add(&m, "", 1);
        }
        t->merges = m.v ? m.v : xstrdup("");
        model__map_init(&t->by_pair, t->merges, (uint32_t)sp->n_merges);
        for (int64_t i = 0; i < sp->n_merges && ok; i++) {
            /* llama.cpp splits at the first space after the first byte and skips lines without
             * one; the first occurrence of a pair keeps its rank. */
            const char *s = t->merges + moff[i];
            const char *sp1 = mlen[i] > 1 ? memchr(s + 1, ' ', mlen[i] - 1) : NULL;
            if (sp1) model__map_put(&t->by_pair, moff[i], mlen[i], (int32_t)i, false);
        }
        free(moff);
        free(mlen);
        if (!ok) goto fail;
    }

    /* Model-specific attribute fixes llama.cpp applies by name. */
    for (int32_t i = 0; i < t->n_vocab; i++) {
        const char *s = t->text + t->off[i];
        if (t->eot < 0 && in_set(eot_texts, s, t->len[i])) t->eot = i;
        if (t->eom < 0 && t->len[i] == 10 && memcmp(s, "<|eom_id|>", 10) == 0) t->eom = i;
    }
    for (int32_t i = 0; i < t->n_vocab; i++) {
        const char *s = t->text + t->off[i];
        if (in_set(fim_eog_texts, s, t->len[i]) || in_set(eog_texts, s, t->len[i])) {
            add_eog(t, i);
            t->attr[i] = MODEL__A_CONTROL;
        }
    }
    if (t->eot >= 0) t->attr[t->eot] = MODEL__A_CONTROL;
    if (t->eom >= 0) t->attr[t->eom] = MODEL__A_CONTROL;
    add_eog(t, t->eos);
    add_eog(t, t->eot);
    add_eog(t, t->eom);
    if (t->eog) qsort(t->eog, (size_t)t->n_eog, sizeof(*t->eog), cmp_i32);

    t->special = xmalloc((size_t)t->n_vocab * sizeof(*t->special));
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (t->attr[i] & (MODEL__A_CONTROL | MODEL__A_USER | MODEL__A_UNKNOWN))
            t->special[t->n_special++] = i;
    sort_tok = t;
    qsort(t->special, (size_t)t->n_special, sizeof(*t->special), cmp_special);
    for (int i = 0; i < t->n_special; i++)
        t->special_first[(unsigned char)t->text[t->off[t->special[i]]]] = 1;

    if (sp->name) {
        char low[256];
        size_t n = strlen(sp->name);
        if (n >= sizeof(low)) n = sizeof(low) - 1;
        for (size_t i = 0; i < n; i++) low[i] = (char)tolower((unsigned char)sp->name[i]);
        low[n] = 0;
        if (strstr(low, "phi-3") || strstr(low, "phi3")) {
            /* Phi-3's special tokens swallow the whitespace after them. */
            for (int i = 0; i < t->n_special; i++) t->attr[t->special[i]] |= MODEL__A_RSTRIP;
            int32_t id = find_text(t, "</s>");
            if (id >= 0) t->attr[id] |= MODEL__A_RSTRIP;
            const char *keep[] = {"<unk>", "<s>", "<|endoftext|>"};
            for (int i = 0; i < 3; i++)
                if ((id = find_text(t, keep[i])) >= 0) t->attr[id] &= (uint8_t)~MODEL__A_RSTRIP;
        }
    }

    init_byte_level(t);
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof(name), "<0x%02X>", b);
        int32_t id = find_text(t, name);
        if (id < 0) {
            char one = (char)b;
            id = model__map_get(&t->by_text, &one, 1);
        }
        t->byte_tok[b] = spm ? id : -1;
    }

    if (spm) model__spm_init(t);

    t->piece_off = xmalloc(((size_t)t->n_vocab + 1) * sizeof(*t->piece_off));
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if (pieces.n > UINT32_MAX / 2) {
            LOG_ERR("decoded vocabulary is too large");
            goto fail;
        }
        t->piece_off[i] = (uint32_t)pieces.n;
        decode_token(t, i, &pieces);
    }
    t->piece_off[t->n_vocab] = (uint32_t)pieces.n;
    t->piece = pieces.v ? pieces.v : xstrdup("");
    pieces.v = NULL;

    *out = t;
    return 0;
fail:
    free(arena.v);
    free(pieces.v);
    model_tok_free(t);
    return rc;
}

void model_tok_free(model_tok_t *t)
{
    if (!t) return;
    model__map_deinit(&t->by_text);
    model__map_deinit(&t->by_pair);
    model__pre_free(t->pre);
    free(t->text);
    free(t->off);
    free(t->len);
    free(t->score);
    free(t->attr);
    free(t->merges);
    free(t->special);
    free(t->eog);
    free(t->piece);
    free(t->piece_off);
    free(t->pairs);
    free(t);
}

/* ---- accessors ---- */

int32_t model_tok_n_vocab(const model_tok_t *t) { return t->n_vocab; }
int32_t model_tok_bos(const model_tok_t *t) { return t->bos; }
int32_t model_tok_eos(const model_tok_t *t) { return t->eos; }
bool model_tok_wants_bos(const model_tok_t *t) { return t->add_bos && t->bos >= 0; }

bool model_tok_is_eog(const model_tok_t *t, int32_t id)
{
    return id >= 0 && t->eog &&
           bsearch(&id, t->eog, (size_t)t->n_eog, sizeof(*t->eog), cmp_i32) != NULL;
}

int model_tok_piece(const model_tok_t *t, int32_t id, bool special, char *buf, int cap)
{
    if (id < 0 || id >= t->n_vocab || cap < 0 || (cap > 0 && !buf)) return -EINVAL;
    if (!special && (t->attr[id] & (MODEL__A_UNKNOWN | MODEL__A_CONTROL))) return 0;
    uint32_t n = t->piece_off[id + 1] - t->piece_off[id];
    uint32_t k = n < (uint32_t)cap ? n : (uint32_t)cap;
    if (k > 0) memcpy(buf, t->piece + t->piece_off[id], k);
    return (int)n;
}

/* ---- encode ---- */

typedef struct {
    size_t off, len; /* raw text bytes, when tok < 0 */
    int32_t tok;
} frag_t;

typedef struct {
    frag_t *v;
    size_t n, cap;
} frags_t;

static void frag_push(frags_t *f, size_t off, size_t len, int32_t tok)
{
    if (f->n == f->cap) {
        f->cap = f->cap ? 2 * f->cap : 16;
        f->v = xrealloc(f->v, f->cap * sizeof(*f->v));
    }
    f->v[f->n++] = (frag_t){off, len, tok};
}

/* Bit i set: some special candidate with canonical id i occurs somewhere in the text. One pass
 * over the text replaces one search per special token (DeepSeek has 2400 of them). */
static uint8_t *specials_present(const model_tok_t *t, const char *text, size_t len)
{
    uint8_t *seen = xcalloc((size_t)t->n_vocab / 8 + 1, 1);
    uint32_t lens[64];
    int n_lens = 0;
    for (int i = 0; i < t->n_special && n_lens < 64; i++) {
        uint32_t l = t->len[t->special[i]];
        if (n_lens == 0 || lens[n_lens - 1] != l) lens[n_lens++] = l; /* sorted, descending */
    }
    bool all_lens = n_lens < 64;
    for (size_t p = 0; p < len; p++) {
        if (!t->special_first[(unsigned char)text[p]]) continue;
        if (all_lens) {
            for (int k = 0; k < n_lens; k++) {
                if (lens[k] > len - p) continue;
                int32_t id = model__map_get(&t->by_text, text + p, lens[k]);
                if (id >= 0) seen[id / 8] |= (uint8_t)(1 << (id % 8));
            }
        } else {
            /* Too many distinct lengths to probe: mark everything, the exact pass decides. */
            memset(seen, 0xFF, (size_t)t->n_vocab / 8 + 1);
            break;
        }
    }
    return seen;
}

static void partition(const model_tok_t *t, const char *text, size_t len, bool parse_special,
                      frags_t *fr)
{
    fr->n = 0;
    if (len == 0) return;
    frag_push(fr, 0, len, -1);
    if (t->n_special == 0) return;
    uint8_t *seen = specials_present(t, text, len);
    frags_t next = {0};
    for (int si = 0; si < t->n_special; si++) {
        int32_t id = t->special[si];
        uint8_t a = t->attr[id];
        if (!parse_special && (a & (MODEL__A_CONTROL | MODEL__A_UNKNOWN))) continue;
        const char *st = t->text + t->off[id];
        size_t sl = t->len[id];
        int32_t canon = model__map_get(&t->by_text, st, sl);
        if (canon < 0 || !(seen[canon / 8] & (1 << (canon % 8)))) continue;
        next.n = 0;
        for (size_t fi = 0; fi < fr->n; fi++) {
            frag_t f = fr->v[fi];
            if (f.tok >= 0) {
                frag_push(&next, 0, 0, f.tok);
                continue;
            }
            size_t base = f.off, rem = f.len;
            while (rem > 0) {
                const char *m = memmem(text + base, rem, st, sl);
                if (!m) {
                    frag_push(&next, base, rem, -1);
                    break;
                }
                size_t mo = (size_t)(m - text), left = mo - base;
                if (a & MODEL__A_LSTRIP)
                    while (left > 0 && isspace((unsigned char)text[base + left - 1])) left--;
                if (left > 0) frag_push(&next, base, left, -1);
                frag_push(&next, 0, 0, id);
                size_t rb = mo + sl, rl = base + rem - rb;
                if (a & MODEL__A_RSTRIP)
                    while (rl > 0 && isspace((unsigned char)text[rb])) rb++, rl--;
                base = rb;
                rem = rl;
            }
        }
        frags_t tmp = *fr;
        *fr = next;
        next = tmp;
    }
    free(next.v);
    free(seen);
}

int64_t model_tok_encode(const model_tok_t *t, const char *text, size_t len, bool add_bos,
                         bool parse_special, int32_t *ids, int64_t cap)
{
    if ((!text && len) || cap < 0 || (cap > 0 && !ids)) return -EINVAL;
    /* Symbol offsets are 32-bit and SentencePiece's escapes triple spaces. */
    if (len > ((size_t)1 << 30)) return -E2BIG;
    model__ids_t out = {0};
    frags_t fr = {0};
    int rc = 0;
    if (add_bos && t->bos >= 0) model__ids_push(&out, t->bos);
    partition(t, text, len, parse_special, &fr);

    if (t->kind == MODEL__TOK_SPM) {
        /* The leading space SentencePiece adds goes before the text and after every special
         * token; spaces become "▁" (3 bytes each, hence the buffer size). */
        bool prev_special = true;
        char *esc = NULL;
        size_t esc_cap = 0;
        for (size_t i = 0; i < fr.n; i++) {
            if (fr.v[i].tok >= 0) {
                model__ids_push(&out, fr.v[i].tok);
                prev_special = true;
                continue;
            }
            size_t need = 3 * (fr.v[i].len + 1);
            if (need > esc_cap) {
                esc_cap = need;
                esc = xrealloc(esc, esc_cap);
            }
            size_t n = 0;
            if (t->add_space_prefix && prev_special) {
                memcpy(esc, "\xE2\x96\x81", 3);
                n = 3;
            }
            const char *s = text + fr.v[i].off;
            for (size_t j = 0; j < fr.v[i].len; j++) {
                if (s[j] == ' ') {
                    memcpy(esc + n, "\xE2\x96\x81", 3);
                    n += 3;
                } else {
                    esc[n++] = s[j];
                }
            }
            model__spm_encode(t, esc, n, &out);
            prev_special = false;
        }
        free(esc);
    } else {
        for (size_t i = 0; i < fr.n && rc == 0; i++) {
            if (fr.v[i].tok >= 0)
                model__ids_push(&out, fr.v[i].tok);
            else
                rc = model__bpe_encode(t, text + fr.v[i].off, fr.v[i].len, &out);
        }
    }
    if (add_bos && t->add_eos && t->eos >= 0) model__ids_push(&out, t->eos);
    free(fr.v);

    int64_t n = out.n;
    /* out.v is NULL when nothing was produced, and memcpy's arguments must never be. */
    if (rc == 0 && cap > 0 && n > 0)
        memcpy(ids, out.v, (size_t)(n < cap ? n : cap) * sizeof(*ids));
    free(out.v);
    return rc ? rc : n;
}
