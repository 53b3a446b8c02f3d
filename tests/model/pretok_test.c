/* Tests for the glm4 and kimi-k2 pre-tokenizers (model/tok_pre.c) and what the vocabulary
 * builder does differently for them (model/tok.c): hand-derived splits of tricky text, a seeded
 * differential run against scanners written here from llama.cpp's description of the two
 * families (unicode.cpp's custom llama3 and kimi_k2 splitters), and tiny byte-level BPE GGUF
 * vocabularies written to disk and loaded the way a real model is.
 *
 * There are no llama.cpp reference tokenizations of GLM-4.5 or Kimi K2 vocabularies in
 * ../shared/tokenizer, so every expected split below is derived by hand from the rules; the
 * comment at each case says why it splits that way.
 *
 * Rules (glm4, = llama.cpp's chatglm-bpe / Llama 3 split), at each position the first that fits:
 *   'contraction ('s 't 're 've 'm 'll 'd, ASCII case-insensitive) | optional lead (not CR, LF,
 *   letter, digit) + letters | 1-3 digits | optional space + run of non-space non-letter
 *   non-digit + CR/LF run | whitespace to its last CR/LF | whitespace minus the last one when
 *   more follows | whitespace.
 * kimi-k2 (llama.cpp's custom scanner): first a run of Han (fixed CJK blocks); words are runs
 * of non-Han letters and keep a following contraction; no standalone contraction; the rest as
 * glm4.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "model/model.h"
#include "model/tok-int.h"
#include "wire/wire.h"

/* UTF-8 of the characters the cases use (concatenated literals keep hex escapes apart). */
#define NI             "\xE4\xBD\xA0" /* 你 U+4F60 Han */
#define HAO            "\xE5\xA5\xBD" /* 好 U+597D Han */
#define FW_COMMA       "\xEF\xBC\x8C" /* ， U+FF0C punctuation */
#define KONNICHIWA     "\xE3\x81\x93\xE3\x82\x93\xE3\x81\xAB\xE3\x81\xA1\xE3\x81\xAF" /* hiragana */
#define SEKAI          "\xE4\xB8\x96\xE7\x95\x8C" /* 世界 Han */
#define KANJI          "\xE6\xBC\xA2\xE5\xAD\x97" /* 漢字 Han */
#define KANA           "\xE3\x82\xAB\xE3\x83\x8A" /* カナ katakana (letters, not Han) */
#define ITER           "\xE3\x80\x85" /* 々 U+3005: script Han, but outside llama.cpp's blocks */
#define EXT_B          "\xF0\xA0\xAE\xB7" /* 𠮷 U+20BB7 CJK Extension B */
#define NO             "\xE9\x87\x8E"     /* 野 U+91CE Han */
#define UNASSIGNED_HAN "\xEF\xAB\x9A"     /* U+FADA: unassigned, inside the compatibility block */
#define LLAMA          "\xF0\x9F\xA6\x99" /* 🦙 U+1F999 symbol */
#define MAN            "\xF0\x9F\x91\xA8" /* 👨 */
#define ZWJ            "\xE2\x80\x8D"     /* U+200D format character, not whitespace */
#define WOMAN          "\xF0\x9F\x91\xA9" /* 👩 */
#define ACUTE          "\xCC\x81"         /* U+0301 combining mark */
#define MVS            "\xE1\xA0\x8E"     /* U+180E: PCRE2's \s takes it, White_Space does not */
#define FW_DIGITS      "\xEF\xBC\x91\xEF\xBC\x92\xEF\xBC\x93\xEF\xBC\x94" /* １２３４ */

/* ---- splitting helpers ---- */

typedef struct {
    const char *s;
    const char *want[24]; /* NULL-terminated */
} split_case_t;

/* Pieces of s as "[a|b|c]" with control bytes escaped, for failure messages (static buffer). */
static const char *show(const char *s, const model__spans_t *sp)
{
    static char buf[2048];
    size_t o = 0;
    buf[o++] = '[';
    for (size_t i = 0; i < sp->n && o < sizeof(buf) - 16; i++) {
        if (i) buf[o++] = '|';
        for (size_t k = 0; k < sp->v[i].len && o < sizeof(buf) - 16; k++) {
            unsigned char c = (unsigned char)s[sp->v[i].off + k];
            if (c == '\n')
                o += (size_t)snprintf(buf + o, 8, "\\n");
            else if (c == '\r')
                o += (size_t)snprintf(buf + o, 8, "\\r");
            else if (c == '\t')
                o += (size_t)snprintf(buf + o, 8, "\\t");
            else
                buf[o++] = (char)c;
        }
    }
    buf[o++] = ']';
    buf[o] = 0;
    return buf;
}

static model__spans_t split(const char *pre, const char *s, size_t len)
{
    model__pre_t *p = NULL;
    cr_assert_eq(model__pre_new(pre, &p), 0, "%s", pre);
    model__spans_t sp = {0};
    cr_assert_eq(model__pre_split(p, s, len, &sp), 0);
    model__pre_free(p);
    return sp;
}

static void expect_cases(const char *pre, const split_case_t *cases, int n)
{
    for (int c = 0; c < n; c++) {
        const char *s = cases[c].s;
        model__spans_t sp = split(pre, s, strlen(s));
        int n_want = 0;
        while (cases[c].want[n_want])
            n_want++;
        bool same = (int)sp.n == n_want;
        for (int i = 0; same && i < n_want; i++)
            same = sp.v[i].len == strlen(cases[c].want[i]) &&
                   memcmp(s + sp.v[i].off, cases[c].want[i], sp.v[i].len) == 0;
        cr_expect(same, "%s case %d: got %s (%d pieces, want %d)", pre, c, show(s, &sp), (int)sp.n,
                  n_want);
        free(sp.v);
    }
}

/* Whether two pre-tokenizers cut s identically. */
static bool same_split(const char *a, const char *b, const char *s)
{
    model__spans_t x = split(a, s, strlen(s)), y = split(b, s, strlen(s));
    bool same = x.n == y.n;
    for (size_t i = 0; same && i < x.n; i++)
        same = x.v[i].off == y.v[i].off && x.v[i].len == y.v[i].len;
    free(x.v);
    free(y.v);
    return same;
}

/* ---- hand-derived splits ---- */

/* Cases where glm4 and kimi-k2 agree. */
static const split_case_t common_cases[] = {
    /* Digit runs go in threes from the left; a space before digits stands alone, because the
     * lead character only attaches to letters and " ?" only to punctuation. */
    {"1 12 123 1234 12345 123456 1234567",
     {"1", " ", "12", " ", "123", " ", "123", "4", " ", "123", "45", " ", "123", "456", " ", "123",
      "456", "7", NULL}},
    /* Letters and digits alternate; full-width digits are \p{N} too, so also go in threes. */
    {"abc123def4567x" FW_DIGITS,
     {"abc", "123", "def", "456", "7", "x", "\xEF\xBC\x91\xEF\xBC\x92\xEF\xBC\x93", "\xEF\xBC\x94",
      NULL}},
    /* Emoji are symbols: the space joins them as " ?" of a punctuation run, which swallows the
     * "!" and then the newlines after it. */
    {"hi " LLAMA LLAMA "!\n\nok", {"hi", " " LLAMA LLAMA "!\n\n", "ok", NULL}},
    /* An emoji right before a letter is that word's lead character. */
    {LLAMA "y", {LLAMA "y", NULL}},
    /* ZWJ is a format character (not whitespace), so the whole ZWJ sequence is one run; the
     * run stops at the letter. */
    {"x" MAN ZWJ WOMAN "y", {"x", MAN ZWJ WOMAN, "y", NULL}},
    /* Whitespace: 4 blanks before "b" give 3 + " b" (the last blank leads the word); a run
     * holding newlines ends at its last newline; the 2 blanks before "c" give " " + " c";
     * the trailing run goes whole. */
    {"a  \t b\n \n  c   ", {"a", "  \t", " b", "\n \n", " ", " c", "   ", NULL}},
    /* Punctuation runs: "!!!" stops at the space; " ...?!" takes its space; " (" stops at the
     * letter (the space cannot lead: the next character is not a letter), ")" stands alone,
     * and "." leads "b". */
    {"wow!!! ...?! (x) a.b", {"wow", "!!!", " ...?!", " (", "x", ")", " a", ".b", NULL}},
    /* CR LF pairs after punctuation belong to it. */
    {"ok.\r\n\r\nnext", {"ok", ".\r\n\r\n", "next", NULL}},
    /* Case is ignored inside words (o200k / Moonshot's pat_str would cut at capitals). */
    {"getUserName iPhone HTTPServer", {"getUserName", " iPhone", " HTTPServer", NULL}},
    /* A combining mark is not a letter here: it ends "cafe" and leads "s". */
    {"cafe" ACUTE "s", {"cafe", ACUTE "s", NULL}},
    /* U+180E is not whitespace for llama.cpp, so it sits inside the punctuation run (PCRE2's
     * own \s would have cut "!", U+180E, "!"). */
    {"x!" MVS "!", {"x", "!" MVS "!", NULL}},
    /* CR and LF never lead a word: they stand alone (whitespace up to the last newline). */
    {"x\nyz\r\n", {"x", "\n", "yz", "\r\n", NULL}},
    /* NBSP is whitespace and, not being CR/LF, a valid lead. */
    {"a\xC2\xA0"
     "b",
     {"a",
      "\xC2\xA0"
      "b",
      NULL}},
};

/* glm4: the Llama 3 rules, where every letter is a letter and contractions stand alone. */
static const split_case_t glm4_cases[] = {
    /* Contractions are their own pieces, in any ASCII case. */
    {"It's IT'S we'LL they're", {"It", "'s", " IT", "'S", " we", "'LL", " they", "'re", NULL}},
    /* "'t" then "x"; " '" is a punctuation run (the quote cannot start "'d": the space took
     * it), then "d". */
    {"don'tx 'd", {"don", "'t", "x", " '", "d", NULL}},
    /* Han, kana and Latin are all \p{L}: one word up to the full-width comma, which then leads
     * the next word. */
    {NI HAO "world" FW_COMMA KONNICHIWA SEKAI "abc" KANJI KANA,
     {NI HAO "world", FW_COMMA KONNICHIWA SEKAI "abc" KANJI KANA, NULL}},
    {"a" EXT_B NO "b", {"a" EXT_B NO "b", NULL}},
};

/* kimi-k2: Han runs first, words of other letters keep their contraction. */
static const split_case_t kimi_cases[] = {
    /* The contraction stays on its word. */
    {"It's IT'S we'LL they're", {"It's", " IT'S", " we'LL", " they're", NULL}},
    /* "don't" then "x" (a new word); " '" as for glm4: no standalone contraction exists, so
     * the quote goes with the space's punctuation run. */
    {"don'tx 'd", {"don't", "x", " '", "d", NULL}},
    /* At the start, a quote is just a lead character. */
    {"'sup", {"'sup", NULL}},
    /* Han runs split from everything: "你好" | "world"; the full-width comma leads the kana
     * word, which stops at Han; "abc" stops at Han; katakana is not Han. */
    {NI HAO "world" FW_COMMA KONNICHIWA SEKAI "abc" KANJI KANA,
     {NI HAO, "world", FW_COMMA KONNICHIWA, SEKAI, "abc", KANJI, KANA, NULL}},
    /* Extension B is in the blocks. */
    {"a" EXT_B NO "b", {"a", EXT_B NO, "b", NULL}},
    /* 々 is script Han but outside the blocks: a one-letter word between two Han runs. */
    {KANJI ITER KANJI, {KANJI, ITER, KANJI, NULL}},
    /* An unassigned point inside the blocks counts as Han (it is no letter, so the Unicode
     * Han script, or \p{L}, would not take it). */
    {UNASSIGNED_HAN "!", {UNASSIGNED_HAN, "!", NULL}},
    /* A space before Han cannot lead (Han is not a word letter). */
    {"a " NI, {"a", " ", NI, NULL}},
};

Test(model_pretok, glm4_splits_as_derived)
{
    expect_cases("glm4", common_cases, sizeof(common_cases) / sizeof(common_cases[0]));
    expect_cases("glm4", glm4_cases, sizeof(glm4_cases) / sizeof(glm4_cases[0]));
}

Test(model_pretok, kimi_k2_splits_as_derived)
{
    expect_cases("kimi-k2", common_cases, sizeof(common_cases) / sizeof(common_cases[0]));
    expect_cases("kimi-k2", kimi_cases, sizeof(kimi_cases) / sizeof(kimi_cases[0]));
}

Test(model_pretok, new_names_differ_from_existing_families)
{
    /* glm4 cuts digits in threes where qwen2 cuts single digits, and is llama-bpe's split. */
    cr_expect(!same_split("glm4", "qwen2", "x 12345"));
    cr_expect(same_split("glm4", "llama-bpe", "It's 12345 " NI HAO "!\n"));
    cr_expect(same_split("glm4", "chatglm-bpe", "It's 12345 " NI HAO "!\n"));
    /* kimi-k2 differs from glm4/llama3 on contractions and Han, from qwen2 on digits, and
     * from o200k (gpt-4o) on capitals. */
    cr_expect(!same_split("kimi-k2", "glm4", "It's"));
    cr_expect(!same_split("kimi-k2", "glm4", "abc" NI HAO));
    cr_expect(!same_split("kimi-k2", "qwen2", "123"));
    cr_expect(!same_split("kimi-k2", "gpt-4o", "getUserName"));
}

/* ---- differential: scanners written from llama.cpp's description ---- */

/* Code point classes, from PCRE2's Unicode tables (the regexes use the same tables). */
typedef struct {
    uint32_t cp;
    bool letter, number;
} cls_t;

static bool is_han(uint32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2EBEF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

static bool is_ws(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == ' ' || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static char lower(uint32_t c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c + 32) : (char)c;
}

/* Length (in code points) of a contraction at c[i], 0 if none. */
static size_t contraction(const cls_t *c, size_t i, size_t n)
{
    if (c[i].cp != '\'' || i + 1 >= n) return 0;
    char a = lower(c[i + 1].cp);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (i + 2 >= n) return 0;
    char b = lower(c[i + 2].cp);
    return ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) ? 3 : 0;
}

/* Cuts c[0..n) into pieces (ends written to cut, count returned), the scanner's way. */
static size_t scan(bool k2, const cls_t *c, size_t n, size_t *cut)
{
    size_t n_cut = 0;
#define OTHER(i) (!is_ws(c[i].cp) && !c[i].letter && !c[i].number)
#define WORD(i)  (c[i].letter && !(k2 && is_han(c[i].cp)))
#define LEAD(i)  (c[i].cp != '\r' && c[i].cp != '\n' && !c[i].letter && !c[i].number)
    for (size_t p = 0; p < n; cut[n_cut++] = p) {
        if (k2 && is_han(c[p].cp)) {
            while (p < n && is_han(c[p].cp))
                p++;
            continue;
        }
        size_t k = k2 ? 0 : contraction(c, p, n);
        if (k) {
            p += k;
            continue;
        }
        if (WORD(p) || (LEAD(p) && p + 1 < n && WORD(p + 1))) {
            if (!WORD(p)) p++;
            while (p < n && WORD(p))
                p++;
            if (k2 && p < n) p += contraction(c, p, n);
            continue;
        }
        if (c[p].number) {
            for (int d = 0; d < 3 && p < n && c[p].number; d++)
                p++;
            continue;
        }
        if (OTHER(p) || (c[p].cp == ' ' && p + 1 < n && OTHER(p + 1))) {
            if (c[p].cp == ' ') p++;
            while (p < n && OTHER(p))
                p++;
            while (p < n && (c[p].cp == '\r' || c[p].cp == '\n'))
                p++;
            continue;
        }
        size_t m = 0, last_nl = 0;
        while (p + m < n && is_ws(c[p + m].cp)) {
            if (c[p + m].cp == '\r' || c[p + m].cp == '\n') last_nl = p + m + 1;
            m++;
        }
        cr_assert_gt(m, 0, "scanner stuck at U+%04X", c[p].cp);
        p = last_nl ? last_nl : (m > 1 && p + m < n) ? p + m - 1 : p + m;
    }
#undef OTHER
#undef WORD
#undef LEAD
    return n_cut;
}

static size_t put_utf8(uint32_t c, char *o)
{
    if (c < 0x80) return o[0] = (char)c, 1;
    if (c < 0x800) return o[0] = (char)(0xC0 | c >> 6), o[1] = (char)(0x80 | (c & 63)), 2;
    if (c < 0x10000) {
        o[0] = (char)(0xE0 | c >> 12), o[1] = (char)(0x80 | ((c >> 6) & 63));
        o[2] = (char)(0x80 | (c & 63));
        return 3;
    }
    o[0] = (char)(0xF0 | c >> 18), o[1] = (char)(0x80 | ((c >> 12) & 63));
    o[2] = (char)(0x80 | ((c >> 6) & 63)), o[3] = (char)(0x80 | (c & 63));
    return 4;
}

static bool pcre_is(const char *re, uint32_t cp)
{
    int err;
    PCRE2_SIZE at;
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)re, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                                     &err, &at, NULL);
    cr_assert_not_null(code);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(code, NULL);
    char s[4];
    size_t n = put_utf8(cp, s);
    bool yes = pcre2_match(code, (PCRE2_SPTR)s, n, 0, 0, md, NULL) > 0;
    pcre2_match_data_free(md);
    pcre2_code_free(code);
    return yes;
}

Test(model_pretok, regexes_agree_with_scanners_on_random_text)
{
    /* Characters that sit on some rule's edge: contraction letters, quote, every kind of
     * whitespace (NBSP, NEL, U+180E, ideographic space, LS), digits of several kinds, marks,
     * ZWJ, Han inside and outside llama.cpp's blocks, kana, Hangul, symbols, a control. */
    static const uint32_t pool[] = {
        'a',    'b',    'Z',    'I',    's',    'S',     't',     'T',     'r',    'R',    'e',
        'E',    'v',    'l',    'L',    'm',    'd',     'D',     '\'',    '\'',   ' ',    ' ',
        ' ',    '\n',   '\r',   '\t',   0x0B,   '0',     '5',     '9',     '!',    '.',    '(',
        '-',    '/',    0xA0,   0x85,   0x180E, 0x3000,  0x2028,  0x200D,  0x0301, 0xE9,   0x416,
        0x4F60, 0x597D, 0x3005, 0x3007, 0xFADA, 0xF900,  0x20BB7, 0x2A6E0, 0x3053, 0x30AB, 0xD55C,
        0x661,  0xBC,   0x216B, 0xFF11, 0xFF0C, 0x1F999, 0x1F468, 0xFFFD,  0x01,   0x2E80, 0x1C};
    enum { N_POOL = sizeof(pool) / sizeof(pool[0]) };
    static cls_t cls[N_POOL];
    for (int i = 0; i < N_POOL; i++)
        cls[i] = (cls_t){pool[i], pcre_is("^\\p{L}$", pool[i]), pcre_is("^\\p{N}$", pool[i])};

    const char *names[2] = {"glm4", "kimi-k2"};
    model__pre_t *pre[2];
    for (int f = 0; f < 2; f++)
        cr_assert_eq(model__pre_new(names[f], &pre[f]), 0);
    uint64_t x = 0x9E3779B97F4A7C15ull; /* fixed seed: failures reproduce */
    int mismatches = 0;
    for (int iter = 0; iter < 4000 && mismatches < 5; iter++) {
        cls_t c[32];
        size_t off[33], n = 1 + (size_t)(iter % 31);
        char s[32 * 4];
        size_t len = 0;
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            c[i] = cls[x % N_POOL];
            off[i] = len;
            len += put_utf8(c[i].cp, s + len);
        }
        off[n] = len;
        for (int f = 0; f < 2; f++) {
            size_t cut[32];
            size_t n_cut = scan(f == 1, c, n, cut);
            model__spans_t sp = {0};
            cr_assert_eq(model__pre_split(pre[f], s, len, &sp), 0);
            bool same = sp.n == n_cut;
            for (size_t i = 0; same && i < n_cut; i++)
                same = sp.v[i].off + sp.v[i].len == off[cut[i]];
            if (!same) {
                mismatches++;
                cr_expect(same, "%s: regex gives %s, scanner %zu pieces (iteration %d)", names[f],
                          show(s, &sp), n_cut, iter);
            }
            free(sp.v);
        }
    }
    for (int f = 0; f < 2; f++)
        model__pre_free(pre[f]);
}

/* ---- tiny vocabularies as GGUF files ---- */

enum {
    T_IT = 256, /* "it" */
    T_ITQ,      /* "it'" */
    T_ITS,      /* "it's" */
    T_QS,       /* "'s" */
    T_GMASK,    /* [gMASK] */
    T_SOP,      /* <sop> */
    T_EOT,      /* [EOT] */
    T_EOS,      /* [EOS] */
    T_PAD,      /* [PAD] */
    T_ENDOFTEXT,
    N_TOK
};

typedef struct {
    const char *pre;
    bool merges; /* write tokenizer.ggml.merges */
    int64_t bos; /* tokenizer.ggml.bos_token_id, or -1 for none */
} vocab_opts_t;

/* Writes a byte-level BPE vocabulary (the 256 GPT-2 byte characters, four merged words,
 * control tokens) with the given options, loads it as a model would, and returns the
 * tokenizer (NULL with *rc set when loading refuses). */
static model_tok_t *load_vocab(vocab_opts_t o, int *rc)
{
    static char bytes[256][3];
    const char *tokens[N_TOK];
    int32_t types[N_TOK];
    int next = 256;
    for (int b = 0; b < 256; b++) {
        bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        int cp = self ? b : next++;
        memset(bytes[b], 0, 3);
        put_utf8((uint32_t)cp, bytes[b]);
        tokens[b] = bytes[b];
        types[b] = MODEL__TT_NORMAL;
    }
    const char *extra[] = {"it",    "it'",   "it's",  "'s",    "[gMASK]",
                           "<sop>", "[EOT]", "[EOS]", "[PAD]", "<|endoftext|>"};
    for (int i = T_IT; i < N_TOK; i++) {
        tokens[i] = extra[i - T_IT];
        types[i] = i >= T_GMASK ? MODEL__TT_CONTROL : MODEL__TT_NORMAL;
    }
    /* Ranks: i t, it ', it' s, ' s: "it's" builds up whole when it is one word. */
    const char *merges[] = {"i t", "it '", "it' s", "' s"};

    model_gguf_writer_t *w = model_gguf_writer_new();
    model_gguf_writer_set_str(w, "general.architecture", "llama");
    model_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    model_gguf_writer_set_str(w, "tokenizer.ggml.pre", o.pre);
    model_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", tokens, N_TOK);
    model_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", MODEL_GGUF_INT32, types, N_TOK);
    if (o.merges) model_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, 4);
    if (o.bos >= 0) model_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)o.bos);
    char path[96];
    snprintf(path, sizeof(path), "/tmp/moemesh-pretok-test-%d.gguf", (int)getpid());
    cr_assert_eq(model_gguf_writer_write(w, path, NULL, NULL), 0);
    model_gguf_writer_free(w);

    model_gguf_t *g = NULL;
    cr_assert_eq(model_gguf_open(path, &g), 0);
    model_tok_t *t = NULL;
    *rc = model_tok_new(g, &t);
    model_gguf_free(g);
    unlink(path);
    return t;
}

/* Encodes s (len bytes); malloc'd ids, count in *n. */
static int32_t *encode(const model_tok_t *t, const char *s, size_t len, bool special, int64_t *n)
{
    int64_t k = model_tok_encode(t, s, len, false, special, NULL, 0);
    cr_assert_geq(k, 0);
    int32_t *ids = malloc((size_t)(k + 1) * sizeof(*ids));
    cr_assert_eq(model_tok_encode(t, s, len, false, special, ids, k), k);
    *n = k;
    return ids;
}

static void expect_round_trip(const model_tok_t *t, const char *what, const char *s, size_t len,
                              bool special)
{
    int64_t n;
    int32_t *ids = encode(t, s, len, special, &n);
    char *back = malloc(len * 2 + 64);
    size_t used = 0;
    for (int64_t i = 0; i < n; i++) {
        int k = model_tok_piece(t, ids[i], special, back + used, (int)(len * 2 + 64 - used));
        cr_assert(k >= 0 && used + (size_t)k <= len * 2 + 64);
        used += (size_t)k;
    }
    cr_expect(used == len && memcmp(back, s, len) == 0, "%s: '%.*s' does not round-trip", what,
              (int)len, s);
    free(back);
    free(ids);
}

static void expect_ids(const model_tok_t *t, const char *s, const int32_t *want, int64_t n_want)
{
    int64_t n;
    int32_t *ids = encode(t, s, strlen(s), false, &n);
    bool same = n == n_want;
    for (int64_t i = 0; same && i < n; i++)
        same = ids[i] == want[i];
    cr_expect(same, "'%s': %lld ids (first %d), want %lld (first %d)", s, (long long)n,
              n ? ids[0] : -1, (long long)n_want, want[0]);
    free(ids);
}

static void round_trip_all(const model_tok_t *t, const char *what)
{
    const split_case_t *sets[3] = {common_cases, glm4_cases, kimi_cases};
    size_t sizes[3] = {sizeof(common_cases) / sizeof(common_cases[0]),
                       sizeof(glm4_cases) / sizeof(glm4_cases[0]),
                       sizeof(kimi_cases) / sizeof(kimi_cases[0])};
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < sizes[k]; i++)
            expect_round_trip(t, what, sets[k][i].s, strlen(sets[k][i].s), false);
    /* Invalid UTF-8 is classified as U+FFFD but kept byte for byte. */
    static const char bad[] = "it's\xFF\xC3(\x80" NI "\xE4\xBD";
    expect_round_trip(t, what, bad, sizeof(bad) - 1, false);
    /* Seeded random bytes, biased to the pieces the rules care about, round-trip too. */
    static const char *const bits[] = {
        "it",   "'s",           "'",        " ",     "\n",  "\r", "1", NI,
        ITER,   UNASSIGNED_HAN, LLAMA,      ZWJ,     ACUTE, MVS,  "!", "\xC3",
        "\xFF", "\x80",         "\xE4\xBD", "[EOT]", "\t"};
    uint64_t x = 0x2545F4914F6CDD1Dull;
    for (int iter = 0; iter < 300; iter++) {
        char s[256];
        size_t len = 0;
        for (int k = 0; k < 1 + iter % 40; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            const char *b = bits[x % (sizeof(bits) / sizeof(bits[0]))];
            memcpy(s + len, b, strlen(b));
            len += strlen(b);
        }
        expect_round_trip(t, what, s, len, (x >> 32) & 1);
    }
    /* Control-token text is plain text without parse_special, the token with it. */
    expect_round_trip(t, what, "[gMASK]<sop>it's[EOT]", 21, false);
    expect_round_trip(t, what, "[gMASK]<sop>it's[EOT]", 21, true);
}

Test(model_pretok, glm4_vocabulary_tokenizes_and_round_trips)
{
    int rc;
    model_tok_t *t = load_vocab((vocab_opts_t){"glm4", true, -1}, &rc);
    cr_assert_eq(rc, 0);
    round_trip_all(t, "glm4");
    /* "it" and "'s" are separate words, so the "it's" token cannot form. */
    expect_ids(t, "it's", (int32_t[]){T_IT, T_QS}, 2);
    /* llama.cpp gives chatglm/glm4 no default BOS (byte-level BPE's default is id 11) and adds
     * none; [gMASK]<sop> comes from the chat template, parsed as special text. */
    cr_expect_eq(model_tok_bos(t), -1);
    cr_expect(!model_tok_wants_bos(t));
    int64_t n;
    int32_t *ids = encode(t, "[gMASK]<sop>it", 14, true, &n);
    cr_expect(n == 3 && ids[0] == T_GMASK && ids[1] == T_SOP && ids[2] == T_IT);
    free(ids);
    cr_expect(model_tok_is_eog(t, T_ENDOFTEXT));
    model_tok_free(t);

    /* The metadata's BOS still counts (GLM-4.5 files name [gMASK]); it is not added. */
    t = load_vocab((vocab_opts_t){"glm4", true, T_GMASK}, &rc);
    cr_assert_eq(rc, 0);
    cr_expect_eq(model_tok_bos(t), T_GMASK);
    cr_expect(!model_tok_wants_bos(t));
    model_tok_free(t);

    /* The same file as qwen2 keeps the default id 11: the difference is glm4's. */
    t = load_vocab((vocab_opts_t){"qwen2", true, -1}, &rc);
    cr_assert_eq(rc, 0);
    cr_expect_eq(model_tok_bos(t), 11);
    model_tok_free(t);

    /* glm4 needs its merges. */
    wire__log_level = -1;
    t = load_vocab((vocab_opts_t){"glm4", false, -1}, &rc);
    wire__log_level = WIRE_LOG_INFO;
    cr_expect_eq(rc, MODEL_E_VOCAB);
    cr_expect_null(t);
}

Test(model_pretok, kimi_k2_vocabulary_tokenizes_and_round_trips)
{
    int rc;
    model_tok_t *t = load_vocab((vocab_opts_t){"kimi-k2", true, -1}, &rc);
    cr_assert_eq(rc, 0);
    round_trip_all(t, "kimi-k2");
    /* "it's" is one word here, and merges all the way to its token. */
    expect_ids(t, "it's", (int32_t[]){T_ITS}, 1);
    /* " it": the space's byte token (token ids 0..255 are the bytes), then "it". */
    expect_ids(t, "it's it", (int32_t[]){T_ITS, ' ', T_IT}, 3);
    cr_expect(!model_tok_wants_bos(t));
    /* Kimi's end texts end generation, as llama.cpp marks them. */
    cr_expect(model_tok_is_eog(t, T_EOT));
    cr_expect(model_tok_is_eog(t, T_EOS));
    cr_expect(model_tok_is_eog(t, T_PAD));
    cr_expect(!model_tok_is_eog(t, T_GMASK));
    model_tok_free(t);

    /* llama.cpp loads a kimi-k2 vocabulary without merges; words then stay single
     * characters, and still round-trip. */
    t = load_vocab((vocab_opts_t){"kimi-k2", false, -1}, &rc);
    cr_assert_eq(rc, 0);
    expect_ids(t, "it's", (int32_t[]){'i', 't', '\'', 's'}, 4);
    round_trip_all(t, "kimi-k2 without merges");
    model_tok_free(t);
}

Test(model_pretok, unknown_name_is_refused_with_the_supported_list)
{
    char path[96];
    snprintf(path, sizeof(path), "/tmp/moemesh-pretok-test-%d.err", (int)getpid());
    fflush(stderr);
    int saved = dup(2), fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    cr_assert(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);
    int rc;
    model_tok_t *t = load_vocab((vocab_opts_t){"kimi-k3", true, -1}, &rc);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    cr_expect_eq(rc, MODEL_E_VOCAB);
    cr_expect_null(t);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    char log[8192] = {0};
    size_t got = fread(log, 1, sizeof(log) - 1, f);
    fclose(f);
    unlink(path);
    cr_expect_gt(got, 0);
    cr_expect_not_null(strstr(log, "unknown pre-tokenizer 'kimi-k3'"), "log: %s", log);
    cr_expect_not_null(strstr(log, "glm4"), "the supported list names glm4");
    cr_expect_not_null(strstr(log, "kimi-k2"), "the supported list names kimi-k2");
}
