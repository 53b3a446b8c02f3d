/* Tests for the tokenizer (model/tok*.c): the two segmentation algorithms on small hand-built
 * vocabularies, the pre-tokenizer table, special-token partition, and exactness against
 * llama.cpp / Hugging Face on the real vocabularies in ../shared/tokenizer and the golden
 * prompts in ../shared/golden; a seeded fuzz pass checks that any bytes encode without harm
 * and decode back. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "model/tok-int.h"

#define SHARED "../shared/"

/* ---- helpers ---- */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    cr_assert_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    b[n] = 0;
    fclose(f);
    if (len) *len = (size_t)n;
    return b;
}

static model_tok_t *load(const char *path)
{
    model_gguf_t *g = NULL;
    cr_assert_eq(model_gguf_open(path, &g), 0, "open %s", path);
    model_tok_t *t = NULL;
    cr_assert_eq(model_tok_new(g, &t), 0, "tokenizer of %s", path);
    model_gguf_free(g);
    return t;
}

/* Encodes s; returns a malloc'd id array and its length in *n. */
static int32_t *enc(const model_tok_t *t, const char *s, size_t len, bool bos, bool special,
                    int64_t *n)
{
    int64_t k = model_tok_encode(t, s, len, bos, special, NULL, 0);
    cr_assert_geq(k, 0);
    int32_t *ids = malloc((size_t)(k + 1) * sizeof(*ids));
    cr_assert_eq(model_tok_encode(t, s, len, bos, special, ids, k), k);
    *n = k;
    return ids;
}

/* Concatenated pieces of ids (special tokens rendered when special); malloc'd, *len bytes. */
static char *dec(const model_tok_t *t, const int32_t *ids, int64_t n, bool special, size_t *len)
{
    size_t cap = 64, used = 0;
    char *out = malloc(cap);
    for (int64_t i = 0; i < n; i++) {
        int k = model_tok_piece(t, ids[i], special, NULL, 0);
        cr_assert_geq(k, 0);
        while (used + (size_t)k + 1 > cap) out = realloc(out, cap *= 2);
        cr_assert_eq(model_tok_piece(t, ids[i], special, out + used, k), k);
        used += (size_t)k;
    }
    out[used] = 0;
    *len = used;
    return out;
}

static void expect_ids(const model_tok_t *t, const char *s, bool bos, bool special,
                       const int32_t *want, int64_t n_want)
{
    int64_t n;
    int32_t *ids = enc(t, s, strlen(s), bos, special, &n);
    cr_expect_eq(n, n_want, "'%s': %lld ids, want %lld", s, (long long)n, (long long)n_want);
    for (int64_t i = 0; i < n && i < n_want; i++)
        cr_expect_eq(ids[i], want[i], "'%s' id %lld: %d, want %d", s, (long long)i, ids[i],
                     want[i]);
    free(ids);
}

/* ---- hand-built vocabularies ---- */

/* SentencePiece: <unk> <s> </s>, two byte tokens, then scored pieces. */
static model_tok_t *tiny_spm(bool with_bytes)
{
    static const char *tokens[] = {"<unk>", "<s>", "</s>", "<0x0A>", "<0xC3>", "<0xA9>",
                                   "\xE2\x96\x81", "a", "b", "c", "ab", "bc", "\xE2\x96\x81" "a",
                                   "\xE2\x96\x81" "ab", "abc"};
    static const float scores[] = {0, 0, 0, 0, 0, 0, -1, -2, -2, -2, -3, -1, -4, -5, -9};
    int32_t types[15];
    for (int i = 0; i < 15; i++) types[i] = MODEL__TT_NORMAL;
    types[0] = MODEL__TT_UNKNOWN;
    types[1] = types[2] = MODEL__TT_CONTROL;
    types[3] = types[4] = types[5] = with_bytes ? MODEL__TT_BYTE : MODEL__TT_UNUSED;
    model__tok_spec_t sp = {.model = "llama", .n_vocab = 15, .tokens = tokens, .scores = scores,
                            .types = types, .bos = -1, .eos = -1, .unk = -1, .pad = -1,
                            .eot = -1, .eom = -1, .add_bos = -1, .add_eos = -1,
                            .add_space_prefix = -1};
    static const char *nobytes[15];
    if (!with_bytes) {
        memcpy(nobytes, tokens, sizeof(tokens));
        nobytes[3] = "x0A";
        nobytes[4] = "xC3";
        nobytes[5] = "xA9";
        sp.tokens = nobytes;
    }
    model_tok_t *t = NULL;
    cr_assert_eq(model__tok_build(&sp, &t), 0);
    return t;
}

Test(model_tok_spm, merges_highest_score_first_and_prefixes_a_space)
{
    model_tok_t *t = tiny_spm(true);
    /* "▁abc": candidates ▁a(-4) ab(-3) bc(-1): bc wins, then ▁a (-4), giving ▁a + bc;
     * abc is never reachable because ab lost to bc. */
    expect_ids(t, "abc", false, false, (int32_t[]){12, 11}, 2);
    /* With BOS, and the default add_space_prefix of SentencePiece vocabularies. */
    expect_ids(t, "ab", true, false, (int32_t[]){1, 13}, 2);
    cr_expect(model_tok_wants_bos(t));
    model_tok_free(t);
}

Test(model_tok_spm, unknown_characters_use_byte_fallback_or_unk)
{
    model_tok_t *t = tiny_spm(true);
    /* é (C3 A9) is not a piece: its bytes become <0xC3> <0xA9>; the newline is <0x0A>. */
    expect_ids(t, "\xC3\xA9\n", false, false, (int32_t[]){6, 4, 5, 3}, 4);
    model_tok_free(t);
    t = tiny_spm(false);
    /* Without byte tokens each unknown character is one <unk>. */
    expect_ids(t, "\xC3\xA9\n", false, false, (int32_t[]){6, 0, 0}, 3);
    model_tok_free(t);
}

Test(model_tok_spm, pieces_unescape_spaces_and_bytes_and_hide_control)
{
    model_tok_t *t = tiny_spm(true);
    char b[16];
    cr_expect_eq(model_tok_piece(t, 13, false, b, sizeof(b)), 3);
    cr_expect_eq(memcmp(b, " ab", 3), 0);
    cr_expect_eq(model_tok_piece(t, 4, false, b, sizeof(b)), 1);
    cr_expect_eq((unsigned char)b[0], 0xC3);
    cr_expect_eq(model_tok_piece(t, 1, false, b, sizeof(b)), 0, "control hidden");
    cr_expect_eq(model_tok_piece(t, 1, true, b, sizeof(b)), 3);
    cr_expect_eq(model_tok_piece(t, 99, true, b, sizeof(b)), -EINVAL);
    cr_expect_eq(model_tok_piece(t, 13, false, b, 1), 3, "needed length when cap is short");
    model_tok_free(t);
}

Test(model_tok_spm, control_text_is_special_only_when_asked)
{
    model_tok_t *t = tiny_spm(true);
    int64_t n;
    int32_t *ids = enc(t, "a</s>a", 6, false, true, &n);
    /* ▁a </s> ▁a: the text after a special token gets the leading space again. */
    cr_expect_eq(n, 3);
    cr_expect_eq(ids[0], 12);
    cr_expect_eq(ids[1], 2);
    cr_expect_eq(ids[2], 12);
    free(ids);
    ids = enc(t, "a</s>a", 6, false, false, &n);
    for (int64_t i = 0; i < n; i++) cr_expect_neq(ids[i], 2);
    free(ids);
    model_tok_free(t);
}

/* Byte-level BPE over a GPT-2 alphabet: the 256 byte characters as tokens 0..255, then merges. */
static model_tok_t *tiny_bpe(const char *pre)
{
    static char store[256][3];
    static const char *tokens[264];
    model_tok_t *probe = NULL;
    int32_t types[264];
    /* Write the byte alphabet by hand: printable Latin-1 maps to itself, the rest to U+0100.. */
    int next = 256;
    for (int b = 0; b < 256; b++) {
        bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        int cp = self ? b : next++;
        if (cp < 0x80) {
            store[b][0] = (char)cp;
        } else {
            store[b][0] = (char)(0xC0 | (cp >> 6));
            store[b][1] = (char)(0x80 | (cp & 0x3F));
        }
        tokens[b] = store[b];
        types[b] = MODEL__TT_NORMAL;
    }
    const char *extra[8] = {"he", "ll", "hell", "hello", "\xC4\xA0w", "<|end|>", "[X]", "lo"};
    int32_t etypes[8] = {1, 1, 1, 1, 1, MODEL__TT_CONTROL, MODEL__TT_USER_DEFINED, 1};
    for (int i = 0; i < 8; i++) {
        tokens[256 + i] = extra[i];
        types[256 + i] = etypes[i];
    }
    static const char *merges[] = {"h e", "l l", "he ll", "hell o", "\xC4\xA0 w", "l o"};
    model__tok_spec_t sp = {.model = "gpt2", .pre = pre, .n_vocab = 264, .tokens = tokens,
                            .types = types, .n_merges = 6, .merges = merges, .bos = 263,
                            .eos = 261, .unk = -1, .pad = -1, .eot = -1, .eom = -1,
                            .add_bos = -1, .add_eos = -1, .add_space_prefix = -1};
    cr_assert_eq(model__tok_build(&sp, &probe), 0);
    return probe;
}

Test(model_tok_bpe, merges_by_rank_over_byte_characters)
{
    model_tok_t *t = tiny_bpe("gpt-2");
    /* hello: h e -> he (0), l l -> ll (1), he ll -> hell (2), hell o -> hello (3). "lo" (rank 5)
     * never forms because ll took the l first. " w" maps the space to Ġ. */
    expect_ids(t, "hello w", false, false, (int32_t[]){259, 260}, 2);
    /* "llo": ll (rank 1) beats lo (rank 5). */
    expect_ids(t, "llo", false, false, (int32_t[]){257, 'o' - 0x21 + 0x21}, 2);
    cr_expect(!model_tok_wants_bos(t), "gpt-2 family adds no BOS by default");
    model_tok_free(t);
}

Test(model_tok_bpe, user_defined_always_split_control_only_with_parse_special)
{
    model_tok_t *t = tiny_bpe("gpt-2");
    int64_t n;
    int32_t *ids = enc(t, "a[X]b<|end|>", 12, false, false, &n);
    /* [X] (USER_DEFINED) is cut out even without parse_special; <|end|> stays text. */
    cr_expect_eq(ids[1], 262);
    for (int64_t i = 0; i < n; i++) cr_expect_neq(ids[i], 261);
    free(ids);
    ids = enc(t, "a[X]b<|end|>", 12, false, true, &n);
    cr_expect_eq(n, 4);
    cr_expect_eq(ids[3], 261);
    free(ids);
    cr_expect(model_tok_is_eog(t, 261), "<|end|> ends generation");
    cr_expect(!model_tok_is_eog(t, 5));
    model_tok_free(t);
}

Test(model_tok_bpe, llama3_takes_whole_word_tokens_and_wants_bos)
{
    model_tok_t *t = tiny_bpe("llama-bpe");
    cr_expect(model_tok_wants_bos(t));
    /* "lo" is a token: ignore_merges takes it whole although merging would give l + o. */
    expect_ids(t, "lo", false, false, (int32_t[]){263}, 1);
    model_tok_free(t);
    t = tiny_bpe("gpt-2");
    expect_ids(t, "lo", false, false, (int32_t[]){263}, 1);
    model_tok_free(t);
}

Test(model_tok_bpe, invalid_utf8_bytes_round_trip)
{
    model_tok_t *t = tiny_bpe("qwen2");
    const char s[] = "a\xFF\xC3(\x80hello\xE2\x82";
    int64_t n;
    int32_t *ids = enc(t, s, sizeof(s) - 1, false, false, &n);
    size_t len;
    char *back = dec(t, ids, n, false, &len);
    cr_expect_eq(len, sizeof(s) - 1);
    cr_expect_eq(memcmp(back, s, len), 0);
    free(back);
    free(ids);
    model_tok_free(t);
}

Test(model_tok_bpe, unknown_pre_tokenizer_is_refused)
{
    static const char *tokens[] = {"a"};
    static const char *merges[] = {"a a"};
    model__tok_spec_t sp = {.model = "gpt2", .pre = "no-such-family", .n_vocab = 1,
                            .tokens = tokens, .n_merges = 1, .merges = merges, .bos = -1,
                            .eos = -1, .unk = -1, .pad = -1, .eot = -1, .eom = -1, .add_bos = -1,
                            .add_eos = -1, .add_space_prefix = -1};
    model_tok_t *t = (model_tok_t *)1;
    cr_expect_eq(model__tok_build(&sp, &t), MODEL_E_VOCAB);
    cr_expect_null(t);
    sp.model = "wordpiece";
    cr_expect_eq(model__tok_build(&sp, &t), MODEL_E_VOCAB);
}

/* ---- pre-tokenizers ---- */

static void expect_split(const char *pre, const char *s, const char *const *want, int n_want)
{
    model__pre_t *p = NULL;
    cr_assert_eq(model__pre_new(pre, &p), 0);
    model__spans_t sp = {0};
    cr_assert_eq(model__pre_split(p, s, strlen(s), &sp), 0);
    cr_expect_eq((int)sp.n, n_want, "%s '%s': %d pieces, want %d", pre, s, (int)sp.n, n_want);
    for (int i = 0; i < n_want && i < (int)sp.n; i++) {
        cr_expect_eq(sp.v[i].len, strlen(want[i]), "%s piece %d", pre, i);
        cr_expect_eq(memcmp(s + sp.v[i].off, want[i], strlen(want[i])), 0, "%s piece %d", pre,
                     i);
    }
    free(sp.v);
    model__pre_free(p);
}

Test(model_tok_pre, families_split_as_published)
{
    expect_split("gpt-2", "Hello world's  12345!!", (const char *[]){"Hello", " world", "'s",
                 " ", " 12345", "!!"}, 6);
    expect_split("llama-bpe", "x 12345\n\n", (const char *[]){"x", " ", "123", "45", "\n\n"}, 5);
    expect_split("qwen2", "a123", (const char *[]){"a", "1", "2", "3"}, 4);
    expect_split("deepseek-llm", "Hi, 42 \xE4\xBD\xA0\xE5\xA5\xBD",
                 (const char *[]){"Hi", ",", " ", "42", " ", "\xE4\xBD\xA0\xE5\xA5\xBD"}, 6);
    expect_split("starcoder", "v12", (const char *[]){"v", "1", "2"}, 3);
    expect_split("deepseek-v3", "abc12345", (const char *[]){"abc", "123", "45"}, 3);
}

Test(model_tok_pre, every_listed_family_compiles)
{
    const char *names[] = {"default", "gpt-2", "gpt-neox", "mpt", "olmo", "llama-bpe", "qwen2",
                           "deepseek-llm", "deepseek-coder", "deepseek-v3", "falcon",
                           "starcoder", "refact", "bloom", "viking", "tekken", "gpt-4o",
                           "llama4", "dbrx", "chatglm-bpe", "command-r"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        model__pre_t *p = NULL;
        cr_expect_eq(model__pre_new(names[i], &p), 0, "%s", names[i]);
        model__spans_t sp = {0};
        cr_expect_eq(model__pre_split(p, "It's 2024 \xF0\x9F\xA6\x99!\n", 17, &sp), 0);
        size_t covered = 0;
        for (size_t k = 0; k < sp.n; k++) covered += sp.v[k].len;
        cr_expect_eq(covered, 17, "%s: pieces cover the text", names[i]);
        free(sp.v);
        model__pre_free(p);
    }
}

/* ---- real vocabularies ---- */

/* Runs every case of X.gguf.inp / .out: exact ids, and detokenized text equal to the input
 * (SentencePiece vocabularies may add one leading space). */
static void run_vocab_file(const char *name, bool spm)
{
    char path[256];
    snprintf(path, sizeof(path), SHARED "tokenizer/%s", name);
    model_tok_t *t = load(path);
    char ip[300], op[300];
    snprintf(ip, sizeof(ip), "%s.inp", path);
    snprintf(op, sizeof(op), "%s.out", path);
    size_t in_len;
    char *in = slurp(ip, &in_len), *outs = slurp(op, NULL);
    const char *sep = "\n__ggml_vocab_test__\n";
    char *cur = in, *line = outs;
    int cases = 0;
    while (cur < in + in_len) {
        char *end = strstr(cur, sep);
        cr_assert(end);
        size_t len = (size_t)(end - cur);
        char *nl = strchr(line, '\n');
        cr_assert(nl);
        *nl = 0;
        int32_t want[4096];
        int64_t n_want = 0;
        for (char *p = line; *p;) {
            char *e;
            long v = strtol(p, &e, 10);
            if (e == p) break;
            want[n_want++] = (int32_t)v;
            p = e;
        }
        int64_t n;
        int32_t *ids = enc(t, cur, len, false, false, &n);
        bool same = n == n_want;
        for (int64_t i = 0; same && i < n; i++) same = ids[i] == want[i];
        cr_expect(same, "%s case %d ('%.*s'): got %lld ids, want %lld", name, cases, (int)len,
                  cur, (long long)n, (long long)n_want);
        size_t blen;
        char *back = dec(t, ids, n, false, &blen);
        const char *b = back;
        if (spm && blen == len + 1 && b[0] == ' ') b++, blen--;
        cr_expect(blen == len && memcmp(b, cur, len) == 0, "%s case %d round trip", name, cases);
        free(back);
        free(ids);
        cases++;
        cur = end + strlen(sep);
        line = nl + 1;
    }
    cr_expect_gt(cases, 40);
    free(in);
    free(outs);
    model_tok_free(t);
}

Test(model_tok_vocab, gpt2_matches_reference) { run_vocab_file("ggml-vocab-gpt-2.gguf", false); }
Test(model_tok_vocab, deepseek_llm_matches_reference)
{
    run_vocab_file("ggml-vocab-deepseek-llm.gguf", false);
}
Test(model_tok_vocab, llama_spm_matches_reference)
{
    run_vocab_file("ggml-vocab-llama-spm.gguf", true);
}
Test(model_tok_vocab, phi3_spm_matches_reference) { run_vocab_file("ggml-vocab-phi-3.gguf", true); }

/* ---- golden prompts ---- */

#include <glob.h>
#include <jansson.h>

Test(model_tok_vocab, golden_prompts_tokenize_exactly)
{
    glob_t gl;
    cr_assert_eq(glob(SHARED "golden/*.golden", 0, NULL, &gl), 0);
    cr_assert_geq(gl.gl_pathc, 20);
    for (size_t f = 0; f < gl.gl_pathc; f++) {
        char *txt = slurp(gl.gl_pathv[f], NULL);
        /* Header lines only: the logits that follow are not needed. */
        char *pt = strstr(txt, "\nprompt_text ");
        char *pi = strstr(txt, "\nprompt_ids ");
        cr_assert(pt && pi, "%s", gl.gl_pathv[f]);
        *strchr(pt + 1, '\n') = 0;
        *strchr(pi + 1, '\n') = 0;
        json_error_t jerr;
        json_t *js = json_loads(pt + 13, JSON_DECODE_ANY, &jerr);
        cr_assert(json_is_string(js), "%s: prompt_text", gl.gl_pathv[f]);
        char *end;
        long n_want = strtol(pi + 12, &end, 10);
        int32_t want[256];
        for (long i = 0; i < n_want && i < 256; i++) want[i] = (int32_t)strtol(end, &end, 10);

        char gguf[512];
        snprintf(gguf, sizeof(gguf), "%.*s.gguf", (int)(strlen(gl.gl_pathv[f]) - 7),
                 gl.gl_pathv[f]);
        model_tok_t *t = load(gguf);
        int64_t n;
        int32_t *ids = enc(t, json_string_value(js), json_string_length(js),
                           model_tok_wants_bos(t), false, &n);
        bool same = n == n_want;
        for (int64_t i = 0; same && i < n; i++) same = ids[i] == want[i];
        cr_expect(same, "%s: prompt ids differ (%lld vs %ld)", gguf, (long long)n, n_want);
        free(ids);
        model_tok_free(t);
        json_decref(js);
        free(txt);
    }
    globfree(&gl);
}

/* ---- fuzz ---- */

static uint64_t rng_state;
static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

/* Random text: either raw bytes, or UTF-8 drawn from ASCII, whitespace, digits, Latin, CJK,
 * emoji and the specials' brackets. U+2581 is left out: SentencePiece decodes it as a space. */
static size_t random_text(char *s, size_t cap, bool raw)
{
    size_t n = rnd() % (cap / 4);
    if (raw) {
        for (size_t i = 0; i < n; i++) s[i] = (char)rnd();
        return n;
    }
    static const uint32_t pool[] = {' ', ' ', '\n', '\t', 'a', 'Z', '7', '\'', '<', '|', '>',
                                    '[', '.', 0xE9, 0x3B1, 0x4E2D, 0x1F999, 0x200D, 0x3000,
                                    0xFF01, 0xAC00};
    size_t o = 0;
    for (size_t i = 0; i < n && o + 4 < cap; i++) {
        uint32_t cp = rnd() % 3 ? pool[rnd() % (sizeof(pool) / sizeof(pool[0]))]
                                : 0x20 + rnd() % 0x2FFF;
        if (cp == 0x2581 || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 'x';
        if (cp < 0x80) {
            s[o++] = (char)cp;
        } else if (cp < 0x800) {
            s[o++] = (char)(0xC0 | (cp >> 6));
            s[o++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            s[o++] = (char)(0xE0 | (cp >> 12));
            s[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            s[o++] = (char)(0x80 | (cp & 0x3F));
        } else {
            s[o++] = (char)(0xF0 | (cp >> 18));
            s[o++] = (char)(0x80 | ((cp >> 12) & 0x3F));
            s[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            s[o++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    return o;
}

static void fuzz_vocab(const char *path, bool spm, bool no_high_bytes)
{
    model_tok_t *t = load(path);
    rng_state = 12345;
    char s[512];
    for (int it = 0; it < 600; it++) {
        size_t len = random_text(s, sizeof(s), it % 2 == 0);
        bool special = it % 3 == 0;
        int64_t n;
        int32_t *ids = enc(t, s, len, it % 5 == 0, special, &n);
        for (int64_t i = 0; i < n; i++)
            cr_assert(ids[i] >= 0 && ids[i] < model_tok_n_vocab(t));
        int64_t skip = (it % 5 == 0 && model_tok_bos(t) >= 0) ? 1 : 0;
        size_t blen;
        char *back = dec(t, ids + skip, n - skip, true, &blen);
        const char *b = back;
        if (spm && blen == len + 1 && b[0] == ' ') b++, blen--;
        /* DeepSeek's vocabulary has no byte tokens for C0, C1 and F5..FF (bytes valid UTF-8
         * never holds); their byte characters are placeholders that decode as text. */
        bool representable = true;
        for (size_t i = 0; no_high_bytes && i < len; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c == 0xC0 || c == 0xC1 || c >= 0xF5) representable = false;
        }
        if (!representable) {
            free(back);
            free(ids);
            continue;
        }
        size_t d = 0;
        while (d < len && d < blen && b[d] == s[d]) d++;
        cr_expect(blen == len && d == len,
                  "%s: iteration %d does not round-trip (%zu vs %zu bytes, first difference at "
                  "%zu: %02x vs %02x)",
                  path, it, blen, len, d, d < blen ? (unsigned char)b[d] : 0,
                  d < len ? (unsigned char)s[d] : 0);
        free(back);
        free(ids);
    }
    model_tok_free(t);
}

Test(model_tok_fuzz, gpt2_any_bytes_round_trip)
{
    fuzz_vocab(SHARED "tokenizer/ggml-vocab-gpt-2.gguf", false, false);
}
Test(model_tok_fuzz, deepseek_any_bytes_round_trip)
{
    fuzz_vocab(SHARED "tokenizer/ggml-vocab-deepseek-llm.gguf", false, true);
}
Test(model_tok_fuzz, llama_spm_any_bytes_round_trip)
{
    fuzz_vocab(SHARED "tokenizer/ggml-vocab-llama-spm.gguf", true, false);
}
Test(model_tok_fuzz, qwen_tiny_any_bytes_round_trip)
{
    fuzz_vocab(SHARED "golden/qwen3moe-tiny-f32.gguf", false, false);
}

/* ---- streaming detokenizer ---- */

Test(model_detok, holds_back_split_characters_until_complete)
{
    model_tok_t *t = load(SHARED "tokenizer/ggml-vocab-llama-spm.gguf");
    model_detok_t *d = model_detok_new(t, MODEL_DETOK_STRIP_SPACE);
    /* 你 is E4 BD A0: three byte-fallback tokens <0xE4> <0xBD> <0xA0> (ids 3 + byte). */
    const char *out;
    size_t n;
    cr_assert_eq(model_detok_push(d, 3 + 0xE4, &out, &n), 0);
    cr_expect_eq(n, 0);
    cr_assert_eq(model_detok_push(d, 3 + 0xBD, &out, &n), 0);
    cr_expect_eq(n, 0);
    cr_assert_eq(model_detok_push(d, 3 + 0xA0, &out, &n), 0);
    cr_expect_eq(n, 3);
    cr_expect_eq(memcmp(out, "\xE4\xBD\xA0", 3), 0);
    /* An incomplete character at the end comes out on flush. */
    cr_assert_eq(model_detok_push(d, 3 + 0xE4, &out, &n), 0);
    cr_expect_eq(n, 0);
    model_detok_flush(d, &out, &n);
    cr_expect_eq(n, 1);
    cr_expect_eq((unsigned char)out[0], 0xE4);
    cr_expect_eq(model_detok_push(d, -1, &out, &n), -EINVAL);
    model_detok_free(d);
    model_tok_free(t);
}

Test(model_detok, streams_the_same_bytes_as_pieces)
{
    model_tok_t *t = load(SHARED "tokenizer/ggml-vocab-gpt-2.gguf");
    const char *s = "Hello \xF0\x9F\xA6\x99 world, \xE4\xBD\xA0\xE5\xA5\xBD!";
    int64_t n;
    int32_t *ids = enc(t, s, strlen(s), false, false, &n);
    model_detok_t *d = model_detok_new(t, 0);
    char got[256];
    size_t used = 0;
    for (int64_t i = 0; i < n; i++) {
        const char *out;
        size_t k;
        cr_assert_eq(model_detok_push(d, ids[i], &out, &k), 0);
        /* Every chunk is whole UTF-8. */
        for (size_t j = 0; j < k;) {
            size_t v = model__utf8_valid((const unsigned char *)out + j, k - j);
            cr_assert_gt(v, 0, "chunk after token %lld is not whole UTF-8", (long long)i);
            j += v;
        }
        memcpy(got + used, out, k);
        used += k;
    }
    const char *out;
    size_t k;
    model_detok_flush(d, &out, &k);
    cr_expect_eq(k, 0);
    cr_expect_eq(used, strlen(s));
    cr_expect_eq(memcmp(got, s, used), 0);
    model_detok_free(d);
    free(ids);
    model_tok_free(t);
}

Test(model_detok, strips_the_prefix_space_only_when_asked)
{
    model_tok_t *t = load(SHARED "tokenizer/ggml-vocab-llama-spm.gguf");
    int64_t n;
    int32_t *ids = enc(t, "Hi there", 8, false, false, &n);
    for (int strip = 0; strip < 2; strip++) {
        model_detok_t *d = model_detok_new(t, strip ? MODEL_DETOK_STRIP_SPACE : 0);
        char got[64];
        size_t used = 0;
        for (int64_t i = 0; i < n; i++) {
            const char *out;
            size_t k;
            model_detok_push(d, ids[i], &out, &k);
            memcpy(got + used, out, k);
            used += k;
        }
        got[used] = 0;
        cr_expect_str_eq(got, strip ? "Hi there" : " Hi there");
        model_detok_free(d);
    }
    free(ids);
    model_tok_free(t);
}
