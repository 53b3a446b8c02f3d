/* tok_gguf.c — model_tok_new: reads a GGUF file's tokenizer.* metadata into a vocabulary
 * description and builds the tokenizer from it (tok.c). Everything from the file is checked
 * here (array types and lengths); ids out of range fall back to the type's defaults with a
 * warning, as llama.cpp does.
 */
#include <stdlib.h>

#include "model/tok-int.h"
#include "wire/wire.h"

/* Count of array key, or -1 when absent; an array of the wrong element type is an error (-2). */
static int64_t arr_count(const model_gguf_t *g, const char *key, model_gguf_type_t want,
                         bool int_ok, const model_gguf_value_t **out)
{
    *out = model_gguf_get_arr(g, key, -1);
    if (!*out) return model_gguf_get(g, key) ? -2 : -1;
    model_gguf_type_t et = (*out)->arr.type;
    bool ok = et == want || (int_ok && et != MODEL_GGUF_STRING && et != MODEL_GGUF_ARRAY &&
                             et != MODEL_GGUF_BOOL);
    if (!ok) return -2;
    return (int64_t)(*out)->arr.n;
}

static int64_t get_id(const model_gguf_t *g, const char *key)
{
    int64_t v;
    return model_gguf_get_int(g, key, &v) && v >= 0 ? v : -1;
}

static int get_flag(const model_gguf_t *g, const char *key)
{
    bool b;
    return model_gguf_get_bool(g, key, &b) ? (int)b : -1;
}

int model_tok_new(const model_gguf_t *g, model_tok_t **out)
{
    *out = NULL;
    const char *path = model_gguf_path(g);
    model__tok_spec_t sp = {
        .model = model_gguf_get_str(g, "tokenizer.ggml.model"),
        .pre = model_gguf_get_str(g, "tokenizer.ggml.pre"),
        .name = model_gguf_get_str(g, "general.name"),
        .bos = get_id(g, "tokenizer.ggml.bos_token_id"),
        .eos = get_id(g, "tokenizer.ggml.eos_token_id"),
        .unk = get_id(g, "tokenizer.ggml.unknown_token_id"),
        .pad = get_id(g, "tokenizer.ggml.padding_token_id"),
        .eot = get_id(g, "tokenizer.ggml.eot_token_id"),
        .eom = get_id(g, "tokenizer.ggml.eom_token_id"),
        .add_bos = get_flag(g, "tokenizer.ggml.add_bos_token"),
        .add_eos = get_flag(g, "tokenizer.ggml.add_eos_token"),
        .add_space_prefix = get_flag(g, "tokenizer.ggml.add_space_prefix"),
    };
    const model_gguf_value_t *tok, *sc, *ty, *mg;
    int64_t n = arr_count(g, "tokenizer.ggml.tokens", MODEL_GGUF_STRING, false, &tok);
    int64_t n_sc = arr_count(g, "tokenizer.ggml.scores", MODEL_GGUF_FLOAT32, true, &sc);
    int64_t n_ty = arr_count(g, "tokenizer.ggml.token_type", MODEL_GGUF_INT32, true, &ty);
    int64_t n_mg = arr_count(g, "tokenizer.ggml.merges", MODEL_GGUF_STRING, false, &mg);
    if (!sp.model || n < 1 || n > (1 << 28) || n_sc == -2 || n_ty == -2 || n_mg == -2 ||
        (n_sc >= 0 && n_sc != n) || (n_ty >= 0 && n_ty != n)) {
        LOG_ERR("%s: tokenizer metadata missing or inconsistent (model %s, %lld tokens, %lld "
                "scores, %lld types, %lld merges)",
                path, sp.model ? sp.model : "absent", (long long)n, (long long)n_sc,
                (long long)n_ty, (long long)n_mg);
        return MODEL_E_VOCAB;
    }

    const char **tokens = xmalloc((size_t)n * sizeof(*tokens));
    uint64_t *token_len = xmalloc((size_t)n * sizeof(*token_len));
    float *scores = n_sc >= 0 ? xmalloc((size_t)n * sizeof(*scores)) : NULL;
    int32_t *types = n_ty >= 0 ? xmalloc((size_t)n * sizeof(*types)) : NULL;
    const char **merges = n_mg > 0 ? xmalloc((size_t)n_mg * sizeof(*merges)) : NULL;
    uint64_t *merge_len = n_mg > 0 ? xmalloc((size_t)n_mg * sizeof(*merge_len)) : NULL;
    for (int64_t i = 0; i < n; i++) {
        tokens[i] = tok->arr.v[i].str.s;
        token_len[i] = tok->arr.v[i].str.len;
        double f = 0;
        int64_t k = MODEL__TT_NORMAL;
        if (scores) scores[i] = model_gguf_value_float(&sc->arr.v[i], &f) ? (float)f : 0.0f;
        if (types) types[i] = model_gguf_value_int(&ty->arr.v[i], &k) ? (int32_t)k : 0;
    }
    for (int64_t i = 0; i < n_mg; i++) {
        merges[i] = mg->arr.v[i].str.s;
        merge_len[i] = mg->arr.v[i].str.len;
    }
    sp.n_vocab = n;
    sp.tokens = tokens;
    sp.token_len = token_len;
    sp.scores = scores;
    sp.types = types;
    sp.n_merges = n_mg > 0 ? n_mg : 0;
    sp.merges = n_mg >= 0 ? (merges ? merges : tokens) : NULL; /* present but empty is fine */
    sp.merge_len = merge_len;

    /* The builder logs why it refuses; the caller knows the file. */
    int rc = model__tok_build(&sp, out);
    free(tokens);
    free(token_len);
    free(scores);
    free(types);
    free(merges);
    free(merge_len);
    return rc;
}
