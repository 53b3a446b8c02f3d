/* tok_pre.c — pre-tokenizers of byte-level BPE vocabularies: tokenizer.ggml.pre names a
 * family, the family's published split regexes (tokenizer.json, as llama.cpp lists them per
 * pre value in llama-vocab.cpp) cut text into words, and BPE then runs inside each word.
 *
 * Rules, as Hugging Face's Split(behavior=Isolated) and llama.cpp's unicode_regex_split apply
 * them: the regexes run in order; each one splits every piece left by the previous one into
 * its matches and the gaps between them, keeping both; every regex sees one piece as its whole
 * subject (so `$` and `(?!\S)` stop at the piece's end). PCRE2 runs with UTF + UCP so \p{L},
 * \p{N} and \s have their Unicode meanings, and DOLLAR_ENDONLY so `$` never matches before a
 * final newline.
 *
 * Invalid UTF-8: llama.cpp decodes each invalid byte as U+FFFD. We classify the text the same
 * way (regexes run on a copy with U+FFFD in place of each invalid byte) but report spans of the
 * original bytes, so the byte-level BPE after us stays lossless.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

#include "model/tok-int.h"
#include "wire/wire.h"

/* ---- the regex table ---- */

/* GPT-2's split (OpenAI encoder.py; HF ByteLevel's regex). */
#define RE_GPT2                                                                                    \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

/* Llama 3 (tiktoken cl100k style). The published form starts with (?i:'s|'t|...); it is written
 * with explicit ASCII case pairs, as llama.cpp does, so Unicode case folding (U+017F long s,
 * U+212A Kelvin) cannot make a contraction. */
#define RE_CONTRACTIONS "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define RE_LLAMA3                                                                                  \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"    \
                    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* Qwen2: as Llama 3 but one digit per number piece. */
#define RE_QWEN2                                                                                   \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"         \
                    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

/* DeepSeek LLM / V2: cased letters (Unicode "LC" ranges as DeepSeek's tokenizer.json lists them),
 * ASCII and full-width punctuation, trailing whitespace, CJK / Hangul runs, digit runs. */
#define RE_DS_LETTERS                                                                              \
    "\\s?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}"            \
    "\\x{1C4}-\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}"         \
    "\\x{37F}\\x{386}\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}" \
    "\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}"  \
    "\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}"                 \
    "\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}"                 \
    "\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}"         \
    "\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}"        \
    "\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}"                 \
    "\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}"         \
    "\\x{2124}\\x{2126}\\x{2128}\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}\\x{2139}"                   \
    "\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}"         \
    "\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}"                  \
    "\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}"                 \
    "\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}"                 \
    "\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}"           \
    "\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}]+"
#define RE_DS_PUNCT                                                                                \
    "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+"
#define RE_DS_CJK "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+"

/* DeepSeek V3: digit triples, CJK + kana runs, then a cl100k-like rule set with \p{P}\p{S}. */
#define RE_DS3_MAIN                                                                                \
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?"           \
    "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

/* BLOOM-style: words are runs of anything but whitespace and a few sentence marks. */
#define RE_BLOOM " ?[^(\\s|.,!?\\x{2026}\\x{3002}\\x{FF0C}\\x{3001}\\x{0964}\\x{06D4}\\x{060C})]+"

/* Mistral Tekken and tiktoken o200k (GPT-4o, Llama 4): case-aware word splitting. */
#define RE_UPPER "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]"
#define RE_LOWER "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]"
#define RE_TEKKEN                                                                                  \
    "[^\\r\\n\\p{L}\\p{N}]?" RE_UPPER "*" RE_LOWER "+|[^\\r\\n\\p{L}\\p{N}]?" RE_UPPER "+"    \
    RE_LOWER "*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_O200K                                                                                   \
    "[^\\r\\n\\p{L}\\p{N}]?" RE_UPPER "*" RE_LOWER "+" RE_CONTRACTIONS "?|[^\\r\\n\\p{L}\\p{N}]?" \
    RE_UPPER "+" RE_LOWER "*" RE_CONTRACTIONS "?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*"      \
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

/* Kimi K2 ("kimi-k2"). Moonshot's tiktoken pat_str splits Han runs first, then case-aware words
 * without Han, digit triples, punctuation, whitespace. llama.cpp does not run that pattern: its
 * pre type names the trigger "\p{Han}+", which unicode.cpp replaces by a hand-written scanner
 * (unicode_regex_split_custom_kimi_k2), and the scanner is what llama.cpp tokenizes with. We
 * reproduce the scanner, not the pat_str; the two differ in two ways:
 *   - Han is a fixed list of code point blocks (CJK Unified Ideographs and Extensions A..F,
 *     Compatibility Ideographs and their Supplement), not the Unicode Han script: U+3005 and
 *     U+3007 and the radicals are ordinary letters here, and unassigned points inside those
 *     blocks still count as Han;
 *   - a word is any run of non-Han letters, case ignored ("getUserName" is one word; the
 *     pat_str would cut get|User|Name), and marks (\p{M}) are not part of words.
 * The scanner's steps at each position, in order, are these leftmost-first alternatives:
 *   Han run | optional lead (not CR, LF, letter, digit) + non-Han letters + optional ASCII
 *   case-insensitive 's 't 're 've 'm 'll 'd | 1-3 digits | optional space + run of
 *   non-whitespace non-letter non-digit + CR/LF run | whitespace up to its last CR/LF |
 *   whitespace not followed by non-whitespace | whitespace.
 * One regex says the same: no alternative can match where an earlier one could, and each
 * takes what the scanner's greedy loop takes. */
#define RE_K2_HAN                                                                                  \
    "\\x{3400}-\\x{4DBF}\\x{4E00}-\\x{9FFF}\\x{F900}-\\x{FAFF}\\x{20000}-\\x{2A6DF}"               \
    "\\x{2A700}-\\x{2EBEF}\\x{2F800}-\\x{2FA1F}"
#define RE_KIMI_K2                                                                                 \
    "[" RE_K2_HAN "]+|[^\\r\\n\\p{L}\\p{N}]?[^\\P{L}" RE_K2_HAN "]+" RE_CONTRACTIONS "?"           \
    "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

/* llama.cpp's whitespace (\s) is Unicode White_Space: its is_whitespace table, and std::regex
 * on text where it maps other whitespace to \v. PCRE2 10.42's \s also takes U+180E MONGOLIAN
 * VOWEL SEPARATOR, so every \s and \S of the table is spelled out with this set (spell_ws). */
#define WS_SET                                                                                     \
    "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}"       \
    "\\x{3000}"

typedef struct {
    const char *names; /* tokenizer.ggml.pre values, ',' separated */
    const char *re[7]; /* NULL-terminated */
    unsigned flags;    /* F_* */
} family_t;

/* llama.cpp's per-family settings. */
enum {
    F_IGNORE_MERGES = 1 << 0,   /* a word that is itself a token skips merging */
    F_ADD_BOS = 1 << 1,         /* BOS added by default */
    F_NO_DEFAULT_BOS = 1 << 2,  /* no BOS id unless the metadata names one (special_bos_id =
                                 * LLAMA_TOKEN_NULL) instead of byte-level BPE's default 11 */
    F_MERGES_OPTIONAL = 1 << 3, /* the vocabulary loads without tokenizer.ggml.merges */
};

static const family_t families[] = {
    {"default", {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}, 0},
    {"gpt-2,gpt2,gpt-neox,mpt,olmo,jais,phi-2,roberta-bpe,jina-es,jina-de,jina-v1-en,"
     "jina-v2-es,jina-v2-de,jina-v2-code,gigachat",
     {RE_GPT2},
     0},
    {"llama3,llama-v3,llama-bpe,falcon3", {RE_LLAMA3}, F_IGNORE_MERGES | F_ADD_BOS},
    {"dbrx,smaug-bpe", {RE_LLAMA3}, 0},
    /* ChatGLM-4 and GLM-4.5 / 4.6 / Air: Llama 3's split, but neither its whole-word lookup nor
     * its BOS; GLM's [gMASK]<sop> prefix is the chat template's text, not the tokenizer's. */
    {"chatglm-bpe,glm4", {RE_LLAMA3}, F_NO_DEFAULT_BOS},
    {"qwen2,stablelm2,megrez,deepseek-r1-qwen", {RE_QWEN2}, 0},
    {"deepseek-llm", {"[\\r\\n]", RE_DS_LETTERS, RE_DS_PUNCT, "\\s+$", RE_DS_CJK, "\\p{N}+"}, 0},
    {"deepseek-coder", {"[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", RE_DS_CJK, "\\p{N}"}, 0},
    {"deepseek-v3",
     {"\\p{N}{1,3}", "[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+", RE_DS3_MAIN},
     0},
    {"falcon", {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]"}, 0},
    {"starcoder,refact,command-r,smollm,codeshell,exaone,minerva-7b", {"\\p{N}", RE_GPT2}, 0},
    {"poro-chat,bloom,gpt3-finnish", {RE_BLOOM}, 0},
    {"viking", {RE_BLOOM, "\\p{N}"}, 0},
    {"tekken", {RE_TEKKEN}, F_IGNORE_MERGES | F_ADD_BOS},
    {"gpt-4o", {RE_O200K}, 0},
    {"llama4", {RE_O200K}, F_IGNORE_MERGES | F_ADD_BOS},
    {"kimi-k2", {RE_KIMI_K2}, F_MERGES_OPTIONAL},
};
enum { N_FAMILIES = sizeof(families) / sizeof(families[0]) };

struct model__pre {
    const family_t *fam;
    int n_re;
    pcre2_code *code[7];
};

const char *model__pre_names(void)
{
    return "default, gpt-2, gpt2, gpt-neox, mpt, olmo, jais, phi-2, roberta-bpe, jina-*, "
           "gigachat, llama3, llama-v3, llama-bpe, falcon3, dbrx, smaug-bpe, chatglm-bpe, qwen2, "
           "stablelm2, megrez, deepseek-r1-qwen, deepseek-llm, deepseek-coder, deepseek-v3, "
           "falcon, starcoder, refact, command-r, smollm, codeshell, exaone, minerva-7b, "
           "poro-chat, bloom, gpt3-finnish, viking, tekken, gpt-4o, llama4, glm4, kimi-k2";
}

/* Whether name is one of the comma-separated names in list. */
static bool in_list(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t k = e ? (size_t)(e - p) : strlen(p);
        if (k == n && memcmp(p, name, n) == 0) return true;
        if (!e) break;
        p = e + 1;
    }
    return false;
}

/* Copy of regex re with each \s and \S written as a WS_SET class (malloc'd). Knows only what the
 * table uses: escapes are two characters or \x{...}/\p{...} whose tail is plain text, and
 * classes do not nest. \S inside a class would need set subtraction; the table has none. */
static char *spell_ws(const char *re)
{
    static const char ws[] = WS_SET;
    size_t n = strlen(re), k = sizeof(ws) - 1;
    /* Each 2-byte \s or \S grows to at most k + 3 bytes. */
    char *out = xmalloc(n / 2 * (k + 3) + n + 1), *o = out;
    bool in_class = false;
    for (const char *p = re; *p; p++) {
        if (p[0] == '\\' && (p[1] == 's' || p[1] == 'S')) {
            CHECK(!(in_class && p[1] == 'S'));
            if (!in_class) *o++ = '[';
            if (!in_class && p[1] == 'S') *o++ = '^';
            memcpy(o, ws, k);
            o += k;
            if (!in_class) *o++ = ']';
            p++;
        } else if (p[0] == '\\' && p[1]) {
            *o++ = *p++;
            *o++ = *p;
        } else if (p[0] == '[' && !in_class) {
            in_class = true;
            *o++ = *p;
            if (p[1] == '^') *o++ = *++p;
            if (p[1] == ']') *o++ = *++p; /* a leading ] is a literal */
        } else {
            if (p[0] == ']') in_class = false;
            *o++ = *p;
        }
    }
    *o = 0;
    return out;
}

int model__pre_new(const char *name, model__pre_t **out)
{
    *out = NULL;
    if (!name || !*name) name = "default";
    const family_t *fam = NULL;
    for (int i = 0; i < N_FAMILIES && !fam; i++)
        if (in_list(families[i].names, name)) fam = &families[i];
    if (!fam) {
        LOG_ERR("unknown pre-tokenizer '%s' (tokenizer.ggml.pre); supported: %s", name,
                model__pre_names());
        return MODEL_E_VOCAB;
    }
    model__pre_t *p = xcalloc(1, sizeof(*p));
    p->fam = fam;
    for (int i = 0; i < 7 && fam->re[i]; i++) {
        int err;
        PCRE2_SIZE at;
        char *re = spell_ws(fam->re[i]);
        p->code[i] = pcre2_compile((PCRE2_SPTR)re, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY, &err, &at, NULL);
        free(re);
        /* The table is ours: a regex that does not compile is a bug, not bad input. */
        CHECK(p->code[i] != NULL);
        /* JIT is an optimisation; without it (no JIT support) the interpreter runs. */
        (void)pcre2_jit_compile(p->code[i], PCRE2_JIT_COMPLETE);
        p->n_re = i + 1;
    }
    *out = p;
    return 0;
}

void model__pre_free(model__pre_t *p)
{
    if (!p) return;
    for (int i = 0; i < p->n_re; i++) pcre2_code_free(p->code[i]);
    free(p);
}

bool model__pre_ignore_merges(const model__pre_t *p) { return p->fam->flags & F_IGNORE_MERGES; }
bool model__pre_add_bos(const model__pre_t *p) { return p->fam->flags & F_ADD_BOS; }
bool model__pre_no_default_bos(const model__pre_t *p) { return p->fam->flags & F_NO_DEFAULT_BOS; }
bool model__pre_merges_optional(const model__pre_t *p)
{
    return p->fam->flags & F_MERGES_OPTIONAL;
}

/* Splits subject s (n bytes, valid UTF-8) with one regex, appending spans offset by base. */
static int split_one(const pcre2_code *re, pcre2_match_data *md, const char *s, size_t n,
                     size_t base, model__spans_t *out)
{
    size_t pos = 0, last = 0;
    while (pos < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
            rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md,
                             NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) return -ENOSPC;
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) {
            /* An empty match splits nothing; step over one character and search again. */
            pos = ms + 1;
            while (pos < n && ((unsigned char)s[pos] & 0xC0) == 0x80) pos++;
            continue;
        }
        if (ms > last) model__spans_push(out, base + last, ms - last);
        model__spans_push(out, base + ms, me - ms);
        last = pos = me;
    }
    if (last < n) model__spans_push(out, base + last, n - last);
    return 0;
}

int model__pre_split(const model__pre_t *p, const char *text, size_t len, model__spans_t *out)
{
    if (len == 0) return 0;
    /* Find invalid bytes first: the common all-valid case needs no copy. */
    const unsigned char *u = (const unsigned char *)text;
    size_t n_bad = 0;
    for (size_t i = 0; i < len;) {
        size_t k = u[i] < 0x80 ? 1 : model__utf8_valid(u + i, len - i);
        if (k == 0) {
            n_bad++;
            k = 1;
        }
        i += k;
    }
    const char *work = text;
    size_t wlen = len;
    char *copy = NULL;
    size_t *w2o = NULL; /* (wlen + 1) original offset of each work offset */
    if (n_bad) {
        wlen = len + 2 * n_bad;
        copy = xmalloc(wlen);
        w2o = xmalloc((wlen + 1) * sizeof(*w2o));
        size_t w = 0;
        for (size_t i = 0; i < len;) {
            size_t k = u[i] < 0x80 ? 1 : model__utf8_valid(u + i, len - i);
            if (k == 0) {
                memcpy(copy + w, "\xEF\xBF\xBD", 3);
                for (int j = 0; j < 3; j++) w2o[w + j] = i;
                w += 3;
                i += 1;
            } else {
                memcpy(copy + w, text + i, k);
                for (size_t j = 0; j < k; j++) w2o[w + j] = i + j;
                w += k;
                i += k;
            }
        }
        w2o[wlen] = len;
        work = copy;
    }

    int rc = 0;
    model__spans_t cur = {0}, next = {0};
    model__spans_push(&cur, 0, wlen);
    for (int r = 0; r < p->n_re && rc == 0; r++) {
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(p->code[r], NULL);
        CHECK(md != NULL);
        next.n = 0;
        for (size_t i = 0; i < cur.n && rc == 0; i++)
            rc = split_one(p->code[r], md, work + cur.v[i].off, cur.v[i].len, cur.v[i].off,
                           &next);
        pcre2_match_data_free(md);
        model__spans_t tmp = cur;
        cur = next;
        next = tmp;
    }
    if (rc == 0) {
        for (size_t i = 0; i < cur.n; i++) {
            size_t o = cur.v[i].off, e = o + cur.v[i].len;
            if (w2o) {
                o = w2o[o];
                e = w2o[e];
            }
            model__spans_push(out, o, e - o);
        }
    }
    free(cur.v);
    free(next.v);
    free(copy);
    free(w2o);
    return rc;
}
