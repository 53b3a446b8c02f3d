/* chat.c — chat templates: llama.cpp's built-in formats (llama-chat.cpp), picked by name or by
 * markers in a GGUF's tokenizer.chat_template, the way llm_chat_detect_template does; the
 * Jinja text itself is never interpreted.
 *
 * One deliberate difference: a template with <|user|> and <|assistant|> (and no <|end|>, which
 * marks Phi-3) is Tulu / OLMoE-Instruct here ("<|user|>\n...\n<|assistant|>\n...<|endoftext|>"),
 * the format OLMoE was trained with; llama.cpp's detection maps it to GLM-Edge or Falcon 3.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "wire/wire.h"

typedef enum {
    T_CHATML,
    T_LLAMA2,
    T_LLAMA2_SYS,
    T_LLAMA2_SYS_BOS,
    T_LLAMA2_SYS_STRIP,
    T_MISTRAL_V1,
    T_MISTRAL_V3,
    T_MISTRAL_V3_TEKKEN,
    T_MISTRAL_V7,
    T_LLAMA3,
    T_TULU,
    T_PHI3,
    T_DEEPSEEK2,
    T_DEEPSEEK3,
    T_ZEPHYR,
    T_HARMONY,
    T_COUNT
} tmpl_t;

static const char *const names[T_COUNT] = {
    "chatml",     "llama2",     "llama2-sys",        "llama2-sys-bos", "llama2-sys-strip",
    "mistral-v1", "mistral-v3", "mistral-v3-tekken", "mistral-v7",     "llama3",
    "tulu",       "phi3",       "deepseek2",         "deepseek3",      "zephyr",
    "gpt-oss",
};

#define FW_BAR "\xEF\xBD\x9C"  /* U+FF5C, DeepSeek's full-width bar */
#define SPM_SPC "\xE2\x96\x81" /* U+2581 */
#define DS_EOS "<" FW_BAR "end" SPM_SPC "of" SPM_SPC "sentence" FW_BAR ">"

static int detect(const char *s)
{
    for (int i = 0; i < T_COUNT; i++)
        if (strcmp(s, names[i]) == 0) return i;
#define HAS(x) (strstr(s, (x)) != NULL)
    /* gpt-oss's harmony format is the only one with channels. */
    if (HAS("<|channel|>") && HAS("<|start|>")) return T_HARMONY;
    if (HAS("<|im_start|>")) return HAS("<|im_sep|>") || HAS("<end_of_utterance>") ? -1 : T_CHATML;
    if (strncmp(s, "mistral", 7) == 0 || HAS("[INST]")) {
        if (HAS("[SYSTEM_PROMPT]")) return T_MISTRAL_V7;
        if (HAS("' [INST] ' + system_message") || HAS("[AVAILABLE_TOOLS]")) {
            if (HAS(" [INST]")) return T_MISTRAL_V1;
            if (HAS("\"[INST]\"")) return T_MISTRAL_V3_TEKKEN;
            return T_MISTRAL_V3;
        }
        if (HAS("content.strip()")) return T_LLAMA2_SYS_STRIP;
        if (HAS("bos_token + '[INST]")) return T_LLAMA2_SYS_BOS;
        if (HAS("<<SYS>>")) return T_LLAMA2_SYS;
        return T_LLAMA2;
    }
    if (HAS("<|assistant|>") && HAS("<|end|>")) return T_PHI3;
    if (HAS("<|assistant|>") && HAS("<|user|>")) return T_TULU;
    if (HAS("<|user|>") && HAS("<|endoftext|>")) return T_ZEPHYR;
    if (HAS("<|start_header_id|>") && HAS("<|end_header_id|>")) return T_LLAMA3;
    if (HAS("'Assistant: ' + message['content'] + eos_token")) return T_DEEPSEEK2;
    if (HAS("<" FW_BAR "Assistant" FW_BAR ">") && HAS("<" FW_BAR "User" FW_BAR ">") &&
        HAS(DS_EOS))
        return T_DEEPSEEK3;
#undef HAS
    return -1;
}

const char *model_chat_detect(const char *tmpl)
{
    if (!tmpl) return NULL;
    int t = detect(tmpl);
    return t < 0 ? NULL : names[t];
}

typedef struct {
    char *v;
    size_t n, cap;
} sb_t;

static void put_n(sb_t *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        while (b->n + n + 1 > b->cap) b->cap = b->cap ? 2 * b->cap : 256;
        b->v = xrealloc(b->v, b->cap);
    }
    memcpy(b->v + b->n, s, n);
    b->n += n;
    b->v[b->n] = 0;
}

static void put(sb_t *b, const char *s) { put_n(b, s, strlen(s)); }

/* s without leading and trailing C-locale whitespace (llama.cpp's trim). */
static void put_trim(sb_t *b, const char *s)
{
    size_t n = strlen(s);
    while (n && isspace((unsigned char)*s)) s++, n--;
    while (n && isspace((unsigned char)s[n - 1])) n--;
    put_n(b, s, n);
}

static bool is(const char *role, const char *want) { return strcmp(role, want) == 0; }

static void format(tmpl_t t, const model_chat_msg_t *m, int n, bool add_ass, sb_t *b)
{
    switch (t) {
    case T_CHATML:
        for (int i = 0; i < n; i++) {
            put(b, "<|im_start|>");
            put(b, m[i].role);
            put(b, "\n");
            put(b, m[i].content);
            put(b, "<|im_end|>\n");
        }
        if (add_ass) put(b, "<|im_start|>assistant\n");
        break;
    case T_MISTRAL_V7:
        for (int i = 0; i < n; i++) {
            if (is(m[i].role, "system")) {
                put(b, "[SYSTEM_PROMPT] ");
                put(b, m[i].content);
                put(b, "[/SYSTEM_PROMPT]");
            } else if (is(m[i].role, "user")) {
                put(b, "[INST] ");
                put(b, m[i].content);
                put(b, "[/INST]");
            } else {
                put(b, " ");
                put(b, m[i].content);
                put(b, "</s>");
            }
        }
        break;
    case T_MISTRAL_V1:
    case T_MISTRAL_V3:
    case T_MISTRAL_V3_TEKKEN: {
        const char *lead = t == T_MISTRAL_V1 ? " " : "";
        const char *trail = t == T_MISTRAL_V3_TEKKEN ? "" : " ";
        bool in_turn = false;
        for (int i = 0; i < n; i++) {
            if (!in_turn) {
                put(b, lead);
                put(b, "[INST]");
                put(b, trail);
                in_turn = true;
            }
            if (is(m[i].role, "system")) {
                put(b, m[i].content);
                put(b, "\n\n");
            } else if (is(m[i].role, "user")) {
                put(b, m[i].content);
                put(b, lead);
                put(b, "[/INST]");
            } else {
                put(b, trail);
                if (t == T_MISTRAL_V3)
                    put_trim(b, m[i].content);
                else
                    put(b, m[i].content);
                put(b, "</s>");
                in_turn = false;
            }
        }
        break;
    }
    case T_LLAMA2:
    case T_LLAMA2_SYS:
    case T_LLAMA2_SYS_BOS:
    case T_LLAMA2_SYS_STRIP: {
        /* The first [INST] comes without <s>: BOS is the tokenizer's. */
        bool in_turn = true;
        put(b, "[INST] ");
        for (int i = 0; i < n; i++) {
            if (!in_turn) {
                in_turn = true;
                put(b, t == T_LLAMA2_SYS_BOS ? "<s>[INST] " : "[INST] ");
            }
            sb_t c = {0};
            if (t == T_LLAMA2_SYS_STRIP)
                put_trim(&c, m[i].content);
            else
                put(&c, m[i].content);
            const char *content = c.v ? c.v : "";
            if (is(m[i].role, "system")) {
                if (t != T_LLAMA2) {
                    put(b, "<<SYS>>\n");
                    put(b, content);
                    put(b, "\n<</SYS>>\n\n");
                } else {
                    put(b, content);
                    put(b, "\n");
                }
            } else if (is(m[i].role, "user")) {
                put(b, content);
                put(b, " [/INST]");
            } else {
                put(b, content);
                put(b, "</s>");
                in_turn = false;
            }
            free(c.v);
        }
        break;
    }
    case T_LLAMA3:
        for (int i = 0; i < n; i++) {
            put(b, "<|start_header_id|>");
            put(b, m[i].role);
            put(b, "<|end_header_id|>\n\n");
            put_trim(b, m[i].content);
            put(b, "<|eot_id|>");
        }
        if (add_ass) put(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case T_TULU:
        /* allenai OLMoE-1B-7B-0924-Instruct / Tulu: an assistant turn ends with EOS, and a
         * newline unless it is the last message. */
        for (int i = 0; i < n; i++) {
            if (is(m[i].role, "system") || is(m[i].role, "user")) {
                put(b, is(m[i].role, "system") ? "<|system|>\n" : "<|user|>\n");
                put(b, m[i].content);
                put(b, "\n");
            } else if (is(m[i].role, "assistant")) {
                put(b, "<|assistant|>\n");
                put(b, m[i].content);
                put(b, i + 1 < n ? "<|endoftext|>\n" : "<|endoftext|>");
            }
        }
        if (add_ass) put(b, "<|assistant|>\n");
        break;
    case T_PHI3:
        for (int i = 0; i < n; i++) {
            put(b, "<|");
            put(b, m[i].role);
            put(b, "|>\n");
            put(b, m[i].content);
            put(b, "<|end|>\n");
        }
        if (add_ass) put(b, "<|assistant|>\n");
        break;
    case T_ZEPHYR:
        for (int i = 0; i < n; i++) {
            put(b, "<|");
            put(b, m[i].role);
            put(b, "|>\n");
            put(b, m[i].content);
            put(b, "<|endoftext|>\n");
        }
        if (add_ass) put(b, "<|assistant|>\n");
        break;
    case T_DEEPSEEK2:
        for (int i = 0; i < n; i++) {
            if (is(m[i].role, "system")) {
                put(b, m[i].content);
                put(b, "\n\n");
            } else if (is(m[i].role, "user")) {
                put(b, "User: ");
                put(b, m[i].content);
                put(b, "\n\n");
            } else if (is(m[i].role, "assistant")) {
                put(b, "Assistant: ");
                put(b, m[i].content);
                put(b, DS_EOS);
            }
        }
        if (add_ass) put(b, "Assistant:");
        break;
    case T_DEEPSEEK3:
        for (int i = 0; i < n; i++) {
            if (is(m[i].role, "system")) {
                put(b, m[i].content);
                put(b, "\n\n");
            } else if (is(m[i].role, "user")) {
                put(b, "<" FW_BAR "User" FW_BAR ">");
                put(b, m[i].content);
            } else if (is(m[i].role, "assistant")) {
                put(b, "<" FW_BAR "Assistant" FW_BAR ">");
                put(b, m[i].content);
                put(b, DS_EOS);
            }
        }
        if (add_ass) put(b, "<" FW_BAR "Assistant" FW_BAR ">");
        break;
    case T_HARMONY:
        /* gpt-oss (OpenAI harmony), as llama.cpp renders it without tools or channels: every
         * turn "<|start|>ROLE<|message|>TEXT" closed by <|end|>, a finished assistant turn by
         * <|return|>. */
        for (int i = 0; i < n; i++) {
            put(b, "<|start|>");
            put(b, m[i].role);
            put(b, "<|message|>");
            put(b, m[i].content);
            put(b, is(m[i].role, "assistant") ? "<|return|>" : "<|end|>");
        }
        if (add_ass) put(b, "<|start|>assistant");
        break;
    case T_COUNT:
        break;
    }
}

int model_chat_apply(const char *tmpl, const model_chat_msg_t *msgs, int n, bool add_assistant,
                     char **out)
{
    if (!out || n < 0 || (n > 0 && !msgs)) return -EINVAL;
    *out = NULL;
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content) return -EINVAL;
    int t = tmpl ? detect(tmpl) : T_CHATML;
    if (t < 0) return -ENOTSUP;
    sb_t b = {0};
    put(&b, "");
    format((tmpl_t)t, msgs, n, add_assistant, &b);
    *out = b.v;
    return 0;
}
