/* tok-int.h — what the tokenizer files (tok*.c, detok.c, cli_tok.c) share and nothing else
 * needs: the tokenizer object's layout, the string hash map, the pre-tokenizer, the two
 * segmentation algorithms and the in-memory vocabulary description that tests build by hand.
 *
 * Invariants: a built model_tok_t is read-only; every token id in it is in [0, n_vocab); every
 * token's text is non-empty and NUL-terminated inside t->text; encode functions append to a
 * model__ids_t and never fail except for the pre-tokenizer's regex engine giving up.
 */
#ifndef MOEMESH_MODEL_TOK_INT_H
#define MOEMESH_MODEL_TOK_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

/* GGUF tokenizer.ggml.token_type values (llama.cpp's llama_token_type). */
enum {
    MODEL__TT_NORMAL = 1,
    MODEL__TT_UNKNOWN = 2,
    MODEL__TT_CONTROL = 3,
    MODEL__TT_USER_DEFINED = 4,
    MODEL__TT_UNUSED = 5,
    MODEL__TT_BYTE = 6,
};

/* Per-token attribute bits, derived from the type (and a few model-specific fixes). */
enum {
    MODEL__A_NORMAL = 1 << 0,
    MODEL__A_UNKNOWN = 1 << 1,
    MODEL__A_UNUSED = 1 << 2,
    MODEL__A_CONTROL = 1 << 3,
    MODEL__A_USER = 1 << 4,
    MODEL__A_BYTE = 1 << 5,
    MODEL__A_LSTRIP = 1 << 6, /* special token eats whitespace on its left */
    MODEL__A_RSTRIP = 1 << 7, /* ... and on its right */
};

/* ---- string -> int32 hash map (tok_map.c) ----
 * Open addressing over keys that live in a caller-owned arena (the map stores offsets), so a
 * 152k-token vocabulary costs one allocation. */
typedef struct {
    uint64_t h;   /* full hash, 0 marks an empty slot */
    uint32_t off; /* key bytes: arena[off .. off+len) */
    uint32_t len;
    int32_t val;
} model__map_slot_t;

typedef struct {
    model__map_slot_t *slot; /* (mask + 1) */
    uint32_t mask;
    uint32_t n;
    const char *arena; /* borrowed; must stay put while the map is used */
} model__map_t;

void model__map_init(model__map_t *m, const char *arena, uint32_t n_keys);
void model__map_deinit(model__map_t *m);
/* Inserts key arena[off..off+len) -> val. An existing key keeps its value unless overwrite. */
void model__map_put(model__map_t *m, uint32_t off, uint32_t len, int32_t val, bool overwrite);
/* Value of key s (n bytes), or -1. */
int32_t model__map_get(const model__map_t *m, const char *s, size_t n);
/* Value of key a + ' ' + b (BPE merge lookup without building the string), or -1. */
int32_t model__map_get_pair(const model__map_t *m, const char *a, size_t na, const char *b,
                            size_t nb);

/* ---- growable id and span vectors ---- */
typedef struct {
    int32_t *v;
    int64_t n, cap;
} model__ids_t;
void model__ids_push(model__ids_t *ids, int32_t id);

typedef struct {
    size_t off, len; /* bytes of the text being split */
} model__span_t;
typedef struct {
    model__span_t *v;
    size_t n, cap;
} model__spans_t;
void model__spans_push(model__spans_t *s, size_t off, size_t len);

/* ---- bigram priority queue (tok_map.c) ----
 * Both segmenters merge the best adjacent pair first: highest key, ties to the leftmost. */
typedef struct {
    double key;          /* SPM: merged token's score; BPE: -rank */
    int32_t left, right; /* symbol indices */
    uint32_t size;       /* bytes of the merged text, to detect stale entries */
} model__bigram_t;
typedef struct {
    model__bigram_t *v;
    size_t n, cap;
} model__heap_t;
void model__heap_push(model__heap_t *h, model__bigram_t b);
/* Removes the best entry into *out; false when empty. */
bool model__heap_pop(model__heap_t *h, model__bigram_t *out);

/* A symbol of a segmentation in progress: a byte range of the text, in a doubly linked list. */
typedef struct {
    int32_t prev, next; /* -1 at the ends */
    uint32_t off, n;    /* n == 0 once merged into its left neighbour */
} model__sym_t;

/* ---- pre-tokenizers (tok_pre.c) ----
 * A pre-tokenizer is an ordered list of regexes from the family's tokenizer.json; each splits
 * every piece left by the previous one into matches and the gaps between them (both kept). */
typedef struct model__pre model__pre_t;

/* Compiles the pre-tokenizer named name (tokenizer.ggml.pre); NULL name means "default".
 * Returns 0, or MODEL_E_VOCAB for an unknown name (logged with the supported names). */
int model__pre_new(const char *name, model__pre_t **out);
void model__pre_free(model__pre_t *p);
/* llama.cpp's per-family flags: whole words that are tokens skip merging; BOS by default. */
bool model__pre_ignore_merges(const model__pre_t *p);
bool model__pre_add_bos(const model__pre_t *p);
/* Whether the family has no default BOS id (only the metadata's), as llama.cpp's chatglm/glm4. */
bool model__pre_no_default_bos(const model__pre_t *p);
/* Whether llama.cpp accepts the family's vocabulary without tokenizer.ggml.merges (kimi-k2). */
bool model__pre_merges_optional(const model__pre_t *p);
/* Comma-separated supported names (static string). */
const char *model__pre_names(void);
/* Appends the pieces of text (len bytes, any bytes) to out, as spans covering the text in
 * order. Invalid UTF-8 bytes are classified as U+FFFD would be (as llama.cpp replaces them)
 * but the spans still address the original bytes, so nothing is lost. 0 or -ENOSPC when the
 * regex engine hit its limits. */
int model__pre_split(const model__pre_t *p, const char *text, size_t len, model__spans_t *out);

/* ---- the tokenizer object ---- */
typedef enum { MODEL__TOK_SPM = 1, MODEL__TOK_BPE = 2 } model__tok_kind_t;

struct model_tok {
    model__tok_kind_t kind;
    int32_t n_vocab;
    char *text;     /* all token texts, each NUL-terminated */
    uint32_t *off;  /* (n_vocab) start of token i in text */
    uint32_t *len;  /* (n_vocab) bytes */
    float *score;   /* (n_vocab) SentencePiece scores (0 when absent) */
    uint8_t *attr;  /* (n_vocab) MODEL__A_* */
    model__map_t by_text;

    char *merges;         /* BPE: merge strings "a b", each NUL-terminated */
    model__map_t by_pair; /* "a b" -> rank */
    model__pre_t *pre;    /* BPE only */

    int32_t bos, eos, unk, pad, eot, eom; /* -1 when none */
    bool add_bos, add_eos, add_space_prefix, ignore_merges;

    int32_t *special; /* (n_special) CONTROL/USER/UNKNOWN ids, longest text first */
    int n_special;
    uint8_t special_first[256]; /* bytes that start some special token's text */
    int32_t *eog;               /* (n_eog) sorted ids that end generation */
    int n_eog;

    char *piece;        /* decoded bytes of every token (special form), concatenated */
    uint32_t *piece_off; /* (n_vocab + 1) token i's bytes: piece[piece_off[i]..piece_off[i+1]) */
    int32_t byte_tok[256]; /* SPM: token for byte fallback of each byte, -1 when none */
    uint64_t *pairs;       /* SPM: set of adjacent character pairs inside tokens (spm_pair_key) */
    uint32_t pairs_mask;   /* table size - 1 */
    bool pairs_zero;       /* the key 0 (two NUL characters) is in the set */
    char bl_char[256][3];  /* BPE: GPT-2 bytes_to_unicode of each byte, UTF-8, NUL-ended */
    uint8_t bl_len[256];
};

/* Description of a vocabulary as the GGUF metadata gives it. Every array is borrowed. */
typedef struct {
    const char *model;         /* tokenizer.ggml.model: "llama" or "gpt2" */
    const char *pre;           /* tokenizer.ggml.pre, or NULL */
    const char *name;          /* general.name, or NULL (a phi-3 fix depends on it) */
    int64_t n_vocab;
    const char *const *tokens; /* (n_vocab) */
    const uint64_t *token_len; /* (n_vocab) bytes, or NULL for NUL-terminated */
    const float *scores;       /* (n_vocab) or NULL */
    const int32_t *types;      /* (n_vocab) MODEL__TT_* or NULL */
    int64_t n_merges;
    const char *const *merges; /* (n_merges) "left right" */
    const uint64_t *merge_len; /* (n_merges) or NULL */
    /* Special ids as stored, or -1 when the key is absent (then the type's default). */
    int64_t bos, eos, unk, pad, eot, eom;
    /* -1 absent, else 0/1. */
    int add_bos, add_eos, add_space_prefix;
} model__tok_spec_t;

/* Builds a tokenizer from spec. 0 or MODEL_E_VOCAB with the reason logged. */
int model__tok_build(const model__tok_spec_t *spec, model_tok_t **out);

/* Builds t->pairs from the token texts (SentencePiece only). */
void model__spm_init(model_tok_t *t);

/* Tokenizes one raw fragment (no special tokens inside) and appends ids. */
void model__spm_encode(const model_tok_t *t, const char *text, size_t len, model__ids_t *out);
int model__bpe_encode(const model_tok_t *t, const char *text, size_t len, model__ids_t *out);

/* Length of the UTF-8 sequence a lead byte announces, llama.cpp's way (1 for stray bytes). */
static inline size_t model__utf8_len(unsigned char c)
{
    static const uint8_t lut[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lut[c >> 4];
}
/* Length of the valid UTF-8 sequence at s (n bytes available), 0 when invalid there. Strict:
 * no overlongs, surrogates or code points above U+10FFFF. */
size_t model__utf8_valid(const unsigned char *s, size_t n);

#endif
