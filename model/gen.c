/* Synthetic model generator: random-weight MoE models (qwen3moe, qwen2moe, Mixtral-style llama,
 * olmoe) with the metadata keys, tensor names, shapes and types llama.cpp's converters write,
 * and a small byte-level BPE vocabulary, so the files exercise every loader and engine path
 * without shipping real weights.
 *
 * Invariants: the output depends only on the parameters (no time, no addresses): every tensor
 * row is generated from a PRNG seeded by (seed, tensor name, row), which also lets rows be made
 * in any chunking the writer asks for. Weights are uniform with the variance of a 1/sqrt(fan_in)
 * init, so activations keep their scale through the layers and logits are well-conditioned.
 * Memory is one row of floats per thread plus the writer's chunk, whatever the model size.
 */
#include "model/model.h"
#include "wire/wire.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- deterministic randomness ---- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t hash_str(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* ---- vocabulary: byte-level BPE learned from this text ---- */

static const char train_text[] =
    "A mixture of experts model replaces the dense feed forward block of a transformer with "
    "many smaller experts and a router. For every token the router scores the experts, keeps "
    "the best few, and mixes their outputs with the softmax weights of those scores. The other "
    "experts do no work for that token, so the model holds far more parameters than it uses "
    "at each step. That is why the experts of a large model can live on other machines: the "
    "coordinator keeps the attention, the embeddings and the router, and sends each token's "
    "hidden state to the machines that hold its chosen experts. Those machines run the expert "
    "networks and send the results back, and the coordinator adds them to the residual stream "
    "before the next layer. When the network is fast and the batches are large, the time spent "
    "on the wire is small next to the time the experts spend computing.\n"
    "The quick brown fox jumps over the lazy dog. Once upon a time there was a little model "
    "that wanted to learn. It read the words of the world one token at a time, and every "
    "expert in it learned a different part of the story. Some experts knew numbers like 1, 2, "
    "3, 10, 42 and 100; others knew names, places, and the shapes of sentences. Together they "
    "wrote text that was better than any one of them could write alone.\n"
    "Quantization stores the weights in fewer bits: blocks of thirty two or two hundred and "
    "fifty six values share a scale, and each value keeps four, five, six or eight bits. The "
    "machine then computes dot products on the small integers and scales the sum once per "
    "block, which saves memory and time while the results stay close to the full precision "
    "ones. These are the tokens, the experts, the machines and the models of this text.";

typedef struct {
    char **tok;      /* (n) token strings in GPT-2 byte-to-unicode form */
    int32_t *type;   /* (n) 1 normal, 3 control, 5 unused */
    int n, cap;
    char **merges;   /* (n_merges) "a b" */
    int n_merges;
    int bos, eos, pad;
} vocab_t;

static void vocab_push(vocab_t *v, char *s, int32_t type)
{
    if (v->n == v->cap) {
        v->cap = v->cap * 2 + 512;
        v->tok = xrealloc(v->tok, (size_t)v->cap * sizeof(*v->tok));
        v->type = xrealloc(v->type, (size_t)v->cap * sizeof(*v->type));
    }
    v->tok[v->n] = s;
    v->type[v->n++] = type;
}

static void vocab_free(vocab_t *v)
{
    for (int i = 0; i < v->n; i++) free(v->tok[i]);
    for (int i = 0; i < v->n_merges; i++) free(v->merges[i]);
    free(v->tok);
    free(v->type);
    free(v->merges);
}

/* GPT-2's printable stand-in for byte b, as UTF-8 (out holds 3 bytes). Printable bytes stand
 * for themselves; the others map, in order, to U+0100 onwards. */
static void byte_symbol(unsigned b, char *out)
{
    unsigned cp = b;
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    if (!printable) {
        unsigned n = 0;
        for (unsigned x = 0; x < b; x++)
            n += !((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255));
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        out[2] = 0;
    }
}

typedef struct {
    int *sym; /* token ids */
    int len;
    int count;
} word_t;

typedef struct {
    int a, b, count;
} pair_t;

static int cmp_pair(const void *x, const void *y)
{
    const pair_t *p = x, *q = y;
    if (p->a != q->a) return p->a < q->a ? -1 : 1;
    return (p->b > q->b) - (p->b < q->b);
}

static int char_class(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return 1;
    if (c >= '0' && c <= '9') return 2;
    if (c == ' ' || c == '\n' || c == '\t') return 0;
    return 3;
}

/* Splits the text the way GPT-2's pre-tokenizer does for ASCII: an optional leading space and
 * a run of letters, of digits or of other symbols; whitespace on its own. Equal words merge. */
static int split_words(word_t **out)
{
    word_t *w = NULL;
    int n = 0, cap = 0;
    const unsigned char *t = (const unsigned char *)train_text;
    size_t len = strlen(train_text), i = 0;
    while (i < len) {
        size_t start = i;
        if (t[i] == ' ' && i + 1 < len && char_class(t[i + 1]) != 0) i++;
        int cls = char_class(t[i]);
        while (i < len && char_class(t[i]) == cls && (cls != 0 || i == start)) i++;
        if (cls == 0 && i == start) i++;
        size_t wl = i - start;
        int found = -1;
        for (int k = 0; k < n && found < 0; k++) {
            if ((size_t)w[k].len != wl) continue;
            bool same = true;
            for (size_t j = 0; j < wl && same; j++) same = w[k].sym[j] == t[start + j];
            if (same) found = k;
        }
        if (found >= 0) {
            w[found].count++;
            continue;
        }
        if (n == cap) {
            cap = cap * 2 + 64;
            w = xrealloc(w, (size_t)cap * sizeof(*w));
        }
        w[n].sym = xmalloc(wl * sizeof(int));
        for (size_t j = 0; j < wl; j++) w[n].sym[j] = t[start + j]; /* byte = its token id */
        w[n].len = (int)wl;
        w[n].count = 1;
        n++;
    }
    *out = w;
    return n;
}

/* Learns merges greedily (most frequent adjacent pair, ties to the lower ids) until max_new
 * tokens were added or no pair occurs twice. */
static void learn_merges(vocab_t *v, int max_new)
{
    word_t *w;
    int n_words = split_words(&w);
    int total = 0;
    for (int k = 0; k < n_words; k++) total += w[k].len;
    pair_t *pairs = xmalloc(((size_t)total + 1) * sizeof(*pairs));
    v->merges = xmalloc(((size_t)max_new + 1) * sizeof(char *));
    while (v->n_merges < max_new) {
        int np = 0;
        for (int k = 0; k < n_words; k++)
            for (int j = 0; j + 1 < w[k].len; j++)
                pairs[np++] = (pair_t){w[k].sym[j], w[k].sym[j + 1], w[k].count};
        qsort(pairs, (size_t)np, sizeof(*pairs), cmp_pair);
        pair_t best = {-1, -1, 1};
        for (int i = 0; i < np;) {
            pair_t acc = pairs[i];
            int j = i + 1;
            for (; j < np && pairs[j].a == acc.a && pairs[j].b == acc.b; j++)
                acc.count += pairs[j].count;
            if (acc.count > best.count) best = acc;
            i = j;
        }
        if (best.a < 0 || best.count < 2) break;
        const char *sa = v->tok[best.a], *sb = v->tok[best.b];
        size_t la = strlen(sa), lb = strlen(sb);
        char *tok = xmalloc(la + lb + 1), *merge = xmalloc(la + lb + 2);
        memcpy(tok, sa, la);
        memcpy(tok + la, sb, lb + 1);
        memcpy(merge, sa, la);
        merge[la] = ' ';
        memcpy(merge + la + 1, sb, lb + 1);
        int id = v->n;
        vocab_push(v, tok, 1);
        v->merges[v->n_merges++] = merge;
        for (int k = 0; k < n_words; k++) {
            int o = 0;
            for (int j = 0; j < w[k].len; j++) {
                if (j + 1 < w[k].len && w[k].sym[j] == best.a && w[k].sym[j + 1] == best.b) {
                    w[k].sym[o++] = id;
                    j++;
                } else {
                    w[k].sym[o++] = w[k].sym[j];
                }
            }
            w[k].len = o;
        }
    }
    for (int k = 0; k < n_words; k++) free(w[k].sym);
    free(w);
    free(pairs);
}

typedef struct {
    const char *arch;
    const char *pre;          /* tokenizer.ggml.pre */
    const char *const *special; /* control tokens, placed last */
    int n_special;
    int bos, eos, pad;        /* indices into special; -1: none */
    bool add_bos;
    float rms_eps;
    const char *chat_template;
} arch_t;

static const char *const qwen_special[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
static const char *const llama_special[] = {"<|begin_of_text|>", "<|end_of_text|>",
                                            "<|start_header_id|>", "<|end_header_id|>",
                                            "<|eot_id|>"};
static const char *const olmo_special[] = {"<|endoftext|>", "<|padding|>"};
static const char *const deepseek_special[] = {"<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
                                               "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"};
static const char *const glm_special[] = {"<|endoftext|>", "[gMASK]", "<sop>", "<|user|>",
                                          "<|assistant|>"};

/* gpt-oss's o200k_harmony control tokens (a subset); <|return|> ends generation, as in the
 * real files, and <|end|> ends a turn. */
static const char *const oss_special[] = {"<|startoftext|>", "<|endoftext|>", "<|return|>",
                                          "<|constrain|>",   "<|channel|>",   "<|start|>",
                                          "<|end|>",         "<|message|>",   "<|call|>"};

/* ChatML for qwen, the Llama 3 header format for llama; olmoe files carry none. */
static const char chatml[] =
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{'<|im_start|>assistant\\n'}}{% endif %}";
static const char llama3_chat[] =
    "{{ bos_token }}{% for m in messages %}{{'<|start_header_id|>' + m['role'] + "
    "'<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|start_header_id|>assistant<|end_header_id|>\\n\\n'}}"
    "{% endif %}";

/* A short stand-in for gpt-oss's harmony template with the markers chat.c recognises. */
static const char harmony_chat[] =
    "{% for m in messages %}{{'<|start|>' + m['role'] + '<|message|>' + m['content'] + "
    "('<|return|>' if m['role'] == 'assistant' else '<|end|>')}}{% endfor %}"
    "{# <|channel|>final #}{% if add_generation_prompt %}{{'<|start|>assistant'}}{% endif %}";

static const arch_t archs[] = {
    {"qwen3moe", "qwen2", qwen_special, 3, 0, 2, 0, false, 1e-6f, chatml},
    {"qwen2moe", "qwen2", qwen_special, 3, 0, 2, 0, false, 1e-6f, chatml},
    {"llama", "llama-bpe", llama_special, 5, 0, 4, -1, true, 1e-5f, llama3_chat},
    {"olmoe", "olmo", olmo_special, 2, 0, 0, 1, false, 1e-5f, NULL},
    {"deepseek2", "deepseek-llm", deepseek_special, 2, 0, 1, -1, true, 1e-6f, NULL},
    {"glm4moe", "glm4", glm_special, 5, 1, 0, 0, false, 1e-5f, NULL},
    {"gpt-oss", "gpt-4o", oss_special, 9, 0, 2, 1, false, 1e-5f, harmony_chat},
};

static bool is_oss(const char *arch) { return strcmp(arch, "gpt-oss") == 0; }

static bool is_family(const char *arch)
{
    return strcmp(arch, "deepseek2") == 0 || strcmp(arch, "glm4moe") == 0;
}

/* 256 byte tokens, learned merges, "[PAD<i>]" fillers (type UNUSED, as llama.cpp's converter
 * pads vocabularies), then the architecture's control tokens: n_vocab tokens in all. */
static void build_vocab(vocab_t *v, const arch_t *a, int n_vocab)
{
    memset(v, 0, sizeof(*v));
    for (unsigned b = 0; b < 256; b++) {
        char s[3];
        byte_symbol(b, s);
        vocab_push(v, xstrdup(s), 1);
    }
    learn_merges(v, n_vocab - 256 - a->n_special);
    while (v->n < n_vocab - a->n_special) {
        char s[32];
        snprintf(s, sizeof(s), "[PAD%d]", v->n);
        vocab_push(v, xstrdup(s), 5);
    }
    int first = v->n;
    for (int i = 0; i < a->n_special; i++) vocab_push(v, xstrdup(a->special[i]), 3);
    v->bos = a->bos >= 0 ? first + a->bos : -1;
    v->eos = a->eos >= 0 ? first + a->eos : -1;
    v->pad = a->pad >= 0 ? first + a->pad : -1;
}

/* ---- tensors ---- */

/* INIT_WIDE: gpt-oss's sinks and router / expert biases, wide enough (+-1) to move results. */
typedef enum { INIT_MATRIX, INIT_NORM, INIT_BIAS, INIT_WIDE } init_t;

typedef struct {
    char name[64];
    kern_type_t type;
    int n_dims;
    int64_t ne[4];
    init_t init;
} gtensor_t;

typedef struct {
    gtensor_t *t;
    int n, cap;
    uint64_t seed;
    double router_skew; /* model_gen_params_t.router_skew */
    bool random_blocks; /* model_gen_params_t.random_blocks */
    int n_expert, n_embd;
    kern_pool_t *pool; /* splits each chunk's rows across threads */
    float **row;       /* (pool size) scratch rows of (max ne0) floats, one per thread */
} gen_t;

static void add(gen_t *g, const char *name, kern_type_t type, init_t init, int n_dims,
                int64_t ne0, int64_t ne1, int64_t ne2)
{
    if (g->n == g->cap) {
        g->cap = g->cap * 2 + 64;
        g->t = xrealloc(g->t, (size_t)g->cap * sizeof(*g->t));
    }
    gtensor_t *t = &g->t[g->n++];
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->type = type;
    t->init = init;
    t->n_dims = n_dims;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->ne[2] = ne2;
    t->ne[3] = 1;
}

static void list_family_tensors(gen_t *g, const model_gen_params_t *p, int head_dim);

/* ---- q4_k_m: llama.cpp's Q4_K_M mix (llama_tensor_get_type), a pseudo type for --type ----
 * Matrices Q4_K, except output Q6_K, and attn_v and ffn_down(_exps) Q6_K in the layers where
 * llama.cpp's use_more_bits holds (the first and last eighth, every third in between: about
 * half). Its Q8_0 attn_v and Q5_K attn_output apply to 8-expert models only, left out here. */
#define GEN_Q4_K_M 1000

static bool q4km_more_bits(int i, int n)
{
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

/* The type of one matrix: the file's type, or the mix's choice for it. */
static kern_type_t mat_type(const model_gen_params_t *p, const char *role, int layer)
{
    if ((int)p->type != GEN_Q4_K_M) return p->type;
    if (!strcmp(role, "output")) return KERN_Q6_K;
    if ((!strcmp(role, "attn_v") || !strcmp(role, "ffn_down")) &&
        q4km_more_bits(layer, p->n_layers))
        return KERN_Q6_K;
    return KERN_Q4_K;
}

/* gpt-oss as llama.cpp's converter writes it: biased attention with per-head sinks, the post-
 * attention norm before the FFN, a biased router and MXFP4 experts with f32 bias rows. */
static void list_oss_tensors(gen_t *g, const model_gen_params_t *p, int head_dim)
{
    const kern_type_t T = p->type, F = KERN_F32, X = KERN_MXFP4;
    const int64_t d = p->n_embd, q = (int64_t)p->n_head * head_dim;
    const int64_t kv = (int64_t)p->n_head_kv * head_dim, E = p->n_expert, ff = p->expert_ff;
    char n[64];
    add(g, "token_embd.weight", T, INIT_MATRIX, 2, d, p->n_vocab, 1);
    for (int l = 0; l < p->n_layers; l++) {
#define NAME(s) (snprintf(n, sizeof(n), "blk.%d." s, l), n)
        add(g, NAME("attn_norm.weight"), F, INIT_NORM, 1, d, 1, 1);
        add(g, NAME("attn_q.weight"), T, INIT_MATRIX, 2, d, q, 1);
        add(g, NAME("attn_q.bias"), F, INIT_BIAS, 1, q, 1, 1);
        add(g, NAME("attn_k.weight"), T, INIT_MATRIX, 2, d, kv, 1);
        add(g, NAME("attn_k.bias"), F, INIT_BIAS, 1, kv, 1, 1);
        add(g, NAME("attn_v.weight"), T, INIT_MATRIX, 2, d, kv, 1);
        add(g, NAME("attn_v.bias"), F, INIT_BIAS, 1, kv, 1, 1);
        add(g, NAME("attn_output.weight"), T, INIT_MATRIX, 2, q, d, 1);
        add(g, NAME("attn_output.bias"), F, INIT_BIAS, 1, d, 1, 1);
        add(g, NAME("attn_sinks.weight"), F, INIT_WIDE, 1, p->n_head, 1, 1);
        add(g, NAME("post_attention_norm.weight"), F, INIT_NORM, 1, d, 1, 1);
        add(g, NAME("ffn_gate_inp.weight"), F, INIT_MATRIX, 2, d, E, 1);
        add(g, NAME("ffn_gate_inp.bias"), F, INIT_WIDE, 1, E, 1, 1);
        add(g, NAME("ffn_gate_exps.weight"), X, INIT_MATRIX, 3, d, ff, E);
        add(g, NAME("ffn_gate_exps.bias"), F, INIT_WIDE, 2, ff, E, 1);
        add(g, NAME("ffn_up_exps.weight"), X, INIT_MATRIX, 3, d, ff, E);
        add(g, NAME("ffn_up_exps.bias"), F, INIT_WIDE, 2, ff, E, 1);
        add(g, NAME("ffn_down_exps.weight"), X, INIT_MATRIX, 3, ff, d, E);
        add(g, NAME("ffn_down_exps.bias"), F, INIT_BIAS, 2, d, E, 1);
#undef NAME
    }
    add(g, "output_norm.weight", F, INIT_NORM, 1, d, 1, 1);
    add(g, "output.weight", T, INIT_MATRIX, 2, d, p->n_vocab, 1);
}

/* gpt-oss's checks: none of the deepseek2/glm4moe options, experts whole MXFP4 blocks. */
static int check_oss(const model_gen_params_t *p)
{
    if (p->n_dense_lead || p->n_shared || p->kv_lora_rank || p->q_lora_rank || p->gating ||
        p->n_groups || p->rope_dim || p->v_head_dim || p->expert_scale || p->dense_ff ||
        p->expert_norm || p->yarn_log_mul) {
        LOG_ERR("gpt-oss takes none of the deepseek2/glm4moe options (only --yarn-factor)");
        return -EINVAL;
    }
    if (p->n_embd % 32 || p->expert_ff % 32) {
        LOG_ERR("gpt-oss experts are MXFP4: dim %d and expert_ff %d must be multiples of 32",
                p->n_embd, p->expert_ff);
        return -EINVAL;
    }
    if (p->sliding_window < 0 || p->sliding_window > (1 << 24) ||
        !(p->yarn_factor == 0.0f || (p->yarn_factor > 1.0f && p->yarn_factor < 1e4f))) {
        LOG_ERR("sliding_window %d (0..2^24), yarn_factor %g (0 or > 1) out of range",
                p->sliding_window, p->yarn_factor);
        return -EINVAL;
    }
    return 0;
}

/* gpt-oss's keys beyond the common ones, as the converter writes them. */
static void oss_metadata(model_gguf_writer_t *w, const model_gen_params_t *p)
{
    char key[128];
#define K(s) (snprintf(key, sizeof(key), "gpt-oss." s), key)
    model_gguf_writer_set_u32(w, K("expert_feed_forward_length"), (uint32_t)p->expert_ff);
    model_gguf_writer_set_u32(w, K("attention.sliding_window"),
                              (uint32_t)(p->sliding_window ? p->sliding_window : 128));
    model_gguf_writer_set_f32(w, K("rope.freq_base"), 150000.0f);
    if (p->yarn_factor > 1.0f) {
        int64_t ctx = p->n_ctx ? p->n_ctx : 4096;
        model_gguf_writer_set_str(w, K("rope.scaling.type"), "yarn");
        model_gguf_writer_set_f32(w, K("rope.scaling.factor"), p->yarn_factor);
        model_gguf_writer_set_u32(w, K("rope.scaling.original_context_length"),
                                  (uint32_t)(ctx / p->yarn_factor));
    }
#undef K
}

/* The tensor list in the order llama.cpp's converters write it. */
static void list_tensors(gen_t *g, const model_gen_params_t *p, int head_dim)
{
    const kern_type_t T = mat_type(p, "", 0), F = KERN_F32;
    const int64_t d = p->n_embd, q = (int64_t)p->n_head * head_dim;
    const int64_t kv = (int64_t)p->n_head_kv * head_dim, E = p->n_expert, ff = p->expert_ff;
    bool qwen2 = strcmp(p->arch, "qwen2moe") == 0, qwen3 = strcmp(p->arch, "qwen3moe") == 0;
    bool olmoe = strcmp(p->arch, "olmoe") == 0;
    char n[64];
    if (is_family(p->arch)) {
        list_family_tensors(g, p, head_dim);
        return;
    }
    if (is_oss(p->arch)) {
        list_oss_tensors(g, p, head_dim);
        return;
    }
    add(g, "token_embd.weight", T, INIT_MATRIX, 2, d, p->n_vocab, 1);
    for (int l = 0; l < p->n_layers; l++) {
#define NAME(s) (snprintf(n, sizeof(n), "blk.%d." s, l), n)
        add(g, NAME("attn_norm.weight"), F, INIT_NORM, 1, d, 1, 1);
        add(g, NAME("attn_q.weight"), T, INIT_MATRIX, 2, d, q, 1);
        add(g, NAME("attn_k.weight"), T, INIT_MATRIX, 2, d, kv, 1);
        add(g, NAME("attn_v.weight"), mat_type(p, "attn_v", l), INIT_MATRIX, 2, d, kv, 1);
        if (qwen2) {
            add(g, NAME("attn_q.bias"), F, INIT_BIAS, 1, q, 1, 1);
            add(g, NAME("attn_k.bias"), F, INIT_BIAS, 1, kv, 1, 1);
            add(g, NAME("attn_v.bias"), F, INIT_BIAS, 1, kv, 1, 1);
        }
        if (qwen3 || olmoe) {
            /* qwen3moe normalises each head, olmoe the whole q and k vectors. */
            add(g, NAME("attn_q_norm.weight"), F, INIT_NORM, 1, qwen3 ? head_dim : q, 1, 1);
            add(g, NAME("attn_k_norm.weight"), F, INIT_NORM, 1, qwen3 ? head_dim : kv, 1, 1);
        }
        add(g, NAME("attn_output.weight"), T, INIT_MATRIX, 2, q, d, 1);
        add(g, NAME("ffn_norm.weight"), F, INIT_NORM, 1, d, 1, 1);
        add(g, NAME("ffn_gate_inp.weight"), F, INIT_MATRIX, 2, d, E, 1);
        add(g, NAME("ffn_gate_exps.weight"), T, INIT_MATRIX, 3, d, ff, E);
        add(g, NAME("ffn_up_exps.weight"), T, INIT_MATRIX, 3, d, ff, E);
        add(g, NAME("ffn_down_exps.weight"), mat_type(p, "ffn_down", l), INIT_MATRIX, 3, ff, d,
            E);
        if (qwen2) {
            add(g, NAME("ffn_gate_inp_shexp.weight"), F, INIT_MATRIX, 1, d, 1, 1);
            add(g, NAME("ffn_gate_shexp.weight"), T, INIT_MATRIX, 2, d, p->shared_ff, 1);
            add(g, NAME("ffn_up_shexp.weight"), T, INIT_MATRIX, 2, d, p->shared_ff, 1);
            add(g, NAME("ffn_down_shexp.weight"), mat_type(p, "ffn_down", l), INIT_MATRIX, 2,
                p->shared_ff, d, 1);
        }
#undef NAME
    }
    add(g, "output_norm.weight", F, INIT_NORM, 1, d, 1, 1);
    add(g, "output.weight", mat_type(p, "output", 0), INIT_MATRIX, 2, d, p->n_vocab, 1);
}


/* deepseek2 and glm4moe in the order llama.cpp's converter writes them: attention (MLA for
 * deepseek2, biased GQA with partial RoPE for glm4moe), then a dense FFN in the leading blocks,
 * router, selection bias (sigmoid gating), routed and shared experts in the others. */
static void list_family_tensors(gen_t *g, const model_gen_params_t *p, int head_dim)
{
    const kern_type_t T = p->type, F = KERN_F32;
    const int64_t d = p->n_embd, H = p->n_head, E = p->n_expert, ff = p->expert_ff;
    const int64_t sff = p->shared_ff, dff = p->dense_ff;
    const bool ds = strcmp(p->arch, "deepseek2") == 0;
    const int64_t R = p->kv_lora_rank, rot = p->rope_dim, nope = head_dim - rot;
    const int64_t q = H * head_dim, kv = (int64_t)p->n_head_kv * head_dim;
    char n[64];
    add(g, "token_embd.weight", T, INIT_MATRIX, 2, d, p->n_vocab, 1);
    for (int l = 0; l < p->n_layers; l++) {
#define NAME(s) (snprintf(n, sizeof(n), "blk.%d." s, l), n)
        add(g, NAME("attn_norm.weight"), F, INIT_NORM, 1, d, 1, 1);
        if (ds) {
            if (p->q_lora_rank) {
                add(g, NAME("attn_q_a.weight"), T, INIT_MATRIX, 2, d, p->q_lora_rank, 1);
                add(g, NAME("attn_q_a_norm.weight"), F, INIT_NORM, 1, p->q_lora_rank, 1, 1);
                add(g, NAME("attn_q_b.weight"), T, INIT_MATRIX, 2, p->q_lora_rank, q, 1);
            } else {
                add(g, NAME("attn_q.weight"), T, INIT_MATRIX, 2, d, q, 1);
            }
            add(g, NAME("attn_kv_a_mqa.weight"), T, INIT_MATRIX, 2, d, R + rot, 1);
            add(g, NAME("attn_kv_a_norm.weight"), F, INIT_NORM, 1, R, 1, 1);
            add(g, NAME("attn_k_b.weight"), T, INIT_MATRIX, 3, nope, R, H);
            add(g, NAME("attn_v_b.weight"), T, INIT_MATRIX, 3, R, p->v_head_dim, H);
            add(g, NAME("attn_output.weight"), T, INIT_MATRIX, 2, H * p->v_head_dim, d, 1);
            add(g, NAME("ffn_norm.weight"), F, INIT_NORM, 1, d, 1, 1);
        } else {
            add(g, NAME("attn_q.weight"), T, INIT_MATRIX, 2, d, q, 1);
            add(g, NAME("attn_k.weight"), T, INIT_MATRIX, 2, d, kv, 1);
            add(g, NAME("attn_v.weight"), T, INIT_MATRIX, 2, d, kv, 1);
            add(g, NAME("attn_q.bias"), F, INIT_BIAS, 1, q, 1, 1);
            add(g, NAME("attn_k.bias"), F, INIT_BIAS, 1, kv, 1, 1);
            add(g, NAME("attn_v.bias"), F, INIT_BIAS, 1, kv, 1, 1);
            add(g, NAME("attn_output.weight"), T, INIT_MATRIX, 2, q, d, 1);
            add(g, NAME("post_attention_norm.weight"), F, INIT_NORM, 1, d, 1, 1);
        }
        if (l < p->n_dense_lead) {
            add(g, NAME("ffn_gate.weight"), T, INIT_MATRIX, 2, d, dff, 1);
            add(g, NAME("ffn_up.weight"), T, INIT_MATRIX, 2, d, dff, 1);
            add(g, NAME("ffn_down.weight"), T, INIT_MATRIX, 2, dff, d, 1);
            continue;
        }
        add(g, NAME("ffn_gate_inp.weight"), F, INIT_MATRIX, 2, d, E, 1);
        if (p->gating == MODEL_GATING_SIGMOID)
            add(g, NAME("exp_probs_b.bias"), F, INIT_BIAS, 1, E, 1, 1);
        add(g, NAME("ffn_gate_exps.weight"), T, INIT_MATRIX, 3, d, ff, E);
        add(g, NAME("ffn_up_exps.weight"), T, INIT_MATRIX, 3, d, ff, E);
        add(g, NAME("ffn_down_exps.weight"), T, INIT_MATRIX, 3, ff, d, E);
        if (sff) {
            add(g, NAME("ffn_gate_shexp.weight"), T, INIT_MATRIX, 2, d, sff, 1);
            add(g, NAME("ffn_up_shexp.weight"), T, INIT_MATRIX, 2, d, sff, 1);
            add(g, NAME("ffn_down_shexp.weight"), T, INIT_MATRIX, 2, sff, d, 1);
        }
#undef NAME
    }
    add(g, "output_norm.weight", F, INIT_NORM, 1, d, 1, 1);
    add(g, "output.weight", T, INIT_MATRIX, 2, d, p->n_vocab, 1);
}

/* The defaults of the family options (a copy of the caller's parameters is changed). */
static void family_defaults(model_gen_params_t *p)
{
    if (!p->arch || !is_family(p->arch)) return;
    const bool ds = strcmp(p->arch, "deepseek2") == 0;
    const int hd = p->head_dim ? p->head_dim : (p->n_head > 0 ? p->n_embd / p->n_head : 0);
    if (p->n_head_kv == 0) p->n_head_kv = ds ? 1 : p->n_head;
    if (p->rope_dim == 0) p->rope_dim = hd / 2;
    if (p->v_head_dim == 0 && ds) p->v_head_dim = hd - p->rope_dim;
    if (p->dense_ff == 0) p->dense_ff = 4 * p->expert_ff;
    if (p->shared_ff == 0) p->shared_ff = p->n_shared * p->expert_ff;
    if (p->gating == 0) p->gating = ds ? MODEL_GATING_SOFTMAX : MODEL_GATING_SIGMOID;
}

/* Family checks beyond the common ones; every matrix row must be whole blocks (block). */
static int check_family(const model_gen_params_t *p, int head_dim, int block)
{
    const bool ds = strcmp(p->arch, "deepseek2") == 0;
#define FAIL(...)                                                                                  \
    do {                                                                                           \
        LOG_ERR(__VA_ARGS__);                                                                      \
        return -EINVAL;                                                                            \
    } while (0)
    if (is_oss(p->arch)) return check_oss(p);
    if (p->sliding_window) FAIL("sliding_window is gpt-oss's");
    if (!is_family(p->arch)) {
        if (p->n_dense_lead || p->n_shared || p->kv_lora_rank || p->q_lora_rank || p->gating ||
            p->n_groups || p->rope_dim || p->v_head_dim || p->yarn_factor || p->expert_scale ||
            p->dense_ff || p->expert_norm)
            FAIL("%s takes none of the deepseek2/glm4moe options", p->arch);
        return 0;
    }
    if (p->n_dense_lead < 0 || p->n_dense_lead > p->n_layers || p->n_shared < 0 ||
        p->n_shared > 64 || p->dense_ff < 1 || p->dense_ff > (1 << 20) ||
        p->shared_ff != p->n_shared * p->expert_ff)
        FAIL("bad dense/shared sizes: %d leading dense of %d layers (width %d), %d shared "
             "experts (width %d = shared * expert_ff)", p->n_dense_lead, p->n_layers,
             p->dense_ff, p->n_shared, p->shared_ff);
    if (p->gating != MODEL_GATING_SOFTMAX && p->gating != MODEL_GATING_SIGMOID)
        FAIL("gating %d: 1 (softmax) or 2 (sigmoid)", p->gating);
    if (p->n_groups < 0 || p->n_group_used < 0 ||
        (p->n_groups > 1 &&
         (p->n_expert % p->n_groups || p->n_expert / p->n_groups < 2 || p->n_group_used < 1 ||
          p->n_group_used > p->n_groups ||
          p->n_group_used * (p->n_expert / p->n_groups) < p->n_expert_used)))
        FAIL("groups %d (used %d) must split %d experts evenly, >= 2 each, and leave top-%d",
             p->n_groups, p->n_group_used, p->n_expert, p->n_expert_used);
    if (p->rope_dim < 2 || p->rope_dim % 2 || p->rope_dim > head_dim ||
        (ds && p->rope_dim >= head_dim))
        FAIL("rope_dim %d: even, >= 2 and below the head size %d", p->rope_dim, head_dim);
    if (!(p->expert_scale >= 0.0f && p->expert_scale < 1e4f) ||
        !(p->yarn_factor == 0.0f || (p->yarn_factor > 1.0f && p->yarn_factor < 1e4f)) ||
        !(p->yarn_log_mul >= 0.0f && p->yarn_log_mul < 100.0f))
        FAIL("expert_scale %g, yarn_factor %g (0 or > 1), yarn_log_mul %g out of range",
             p->expert_scale, p->yarn_factor, p->yarn_log_mul);
    if (ds) {
        if (p->kv_lora_rank < 1 || p->kv_lora_rank > (1 << 16) || p->q_lora_rank < 0 ||
            p->q_lora_rank > (1 << 16) || p->v_head_dim < 1 || p->v_head_dim > (1 << 16) ||
            p->n_head_kv != 1)
            FAIL("deepseek2 needs kv_lora_rank >= 1, q_lora_rank >= 0, v_head_dim >= 1 and one "
                 "kv head (got %d, %d, %d, %d)", p->kv_lora_rank, p->q_lora_rank,
                 p->v_head_dim, p->n_head_kv);
    } else if (p->kv_lora_rank || p->q_lora_rank || p->v_head_dim) {
        FAIL("glm4moe has no latent attention options");
    }
    const int64_t rows[] = {p->dense_ff, p->shared_ff ? p->shared_ff : block,
                            ds ? p->kv_lora_rank : block, p->q_lora_rank ? p->q_lora_rank : block,
                            ds ? head_dim - p->rope_dim : block,
                            ds ? (int64_t)p->n_head * p->v_head_dim : block};
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        if (rows[i] % block)
            FAIL("a row of %lld elements is not whole blocks of %d", (long long)rows[i], block);
#undef FAIL
    return 0;
}

/* Metadata of the families as llama.cpp's converter writes it (after the common keys, some of
 * which are replaced here). */
static void family_metadata(model_gguf_writer_t *w, const model_gen_params_t *p, int head_dim)
{
    if (!is_family(p->arch)) return;
    const bool ds = strcmp(p->arch, "deepseek2") == 0;
    char key[128];
#define K(s) (snprintf(key, sizeof(key), "%s." s, p->arch), key)
    model_gguf_writer_set_u32(w, K("feed_forward_length"), (uint32_t)p->dense_ff);
    model_gguf_writer_set_u32(w, K("expert_feed_forward_length"), (uint32_t)p->expert_ff);
    model_gguf_writer_set_u32(w, K("rope.dimension_count"), (uint32_t)p->rope_dim);
    if (ds) {
        /* The absorbed form: one kv "head" of latent + rope, values are the latent. */
        model_gguf_writer_set_u32(w, K("attention.head_count_kv"), 1);
        model_gguf_writer_set_u32(w, K("attention.key_length"),
                                  (uint32_t)(p->kv_lora_rank + p->rope_dim));
        model_gguf_writer_set_u32(w, K("attention.value_length"), (uint32_t)p->kv_lora_rank);
        model_gguf_writer_set_u32(w, K("attention.key_length_mla"), (uint32_t)head_dim);
        model_gguf_writer_set_u32(w, K("attention.value_length_mla"), (uint32_t)p->v_head_dim);
        model_gguf_writer_set_u32(w, K("attention.q_lora_rank"), (uint32_t)p->q_lora_rank);
        model_gguf_writer_set_u32(w, K("attention.kv_lora_rank"), (uint32_t)p->kv_lora_rank);
    }
    model_gguf_writer_set_u32(w, K("leading_dense_block_count"), (uint32_t)p->n_dense_lead);
    model_gguf_writer_set_u32(w, K("expert_shared_count"), (uint32_t)p->n_shared);
    model_gguf_writer_set_f32(w, K("expert_weights_scale"),
                              p->expert_scale > 0.0f ? p->expert_scale : 1.0f);
    model_gguf_writer_set_bool(w, K("expert_weights_norm"), p->expert_norm);
    model_gguf_writer_set_u32(w, K("expert_gating_func"), (uint32_t)p->gating);
    if (p->n_groups > 1) {
        model_gguf_writer_set_u32(w, K("expert_group_count"), (uint32_t)p->n_groups);
        model_gguf_writer_set_u32(w, K("expert_group_used_count"), (uint32_t)p->n_group_used);
    }
    if (p->yarn_factor > 1.0f) {
        int64_t ctx = p->n_ctx ? p->n_ctx : 4096;
        model_gguf_writer_set_str(w, K("rope.scaling.type"), "yarn");
        model_gguf_writer_set_f32(w, K("rope.scaling.factor"), p->yarn_factor);
        model_gguf_writer_set_u32(w, K("rope.scaling.original_context_length"),
                                  (uint32_t)(ctx / p->yarn_factor));
        if (ds)
            model_gguf_writer_set_f32(w, K("rope.scaling.yarn_log_multiplier"),
                                      0.1f * p->yarn_log_mul); /* as the converter does */
    }
#undef K
}

/* --router-skew S: routing with a known bias. Dimension 0 of the residual stream becomes a
 * constant feature: every token embedding gets SKEW_FEATURE there (its other entries have a
 * norm of about 1) and no other matrix reading the stream (attention, experts, head) sees it
 * (their weight 0), so it stays in every hidden state. After the norm it reads about
 * sqrt(n_embd) * c / sqrt(c^2 + 1) while the token's own part gives router logits a spread of
 * about 1 / sqrt(c^2 + 1). Router row e of layer l has S * f / (c * sqrt(n_embd)) there,
 * f = 1 - rank / (E - 1), rank = (e - l) mod E: expert e's logit moves up by about S * f times
 * that spread, so expert l mod E is the hottest, the next ones less and less, and S sets how
 * uneven it gets. What the layers add to the stream dilutes the feature, so deeper layers feel
 * less of it (and a larger c would let their common part swamp the tokens' own). */
#define SKEW_FEATURE 1.0
static void router_skew(const gen_t *g, const gtensor_t *t, int64_t r, float *row)
{
    if (g->router_skew == 0 || t->init != INIT_MATRIX || t->ne[0] != g->n_embd) return;
    if (strcmp(t->name, "token_embd.weight") == 0) {
        row[0] += (float)SKEW_FEATURE;
        return;
    }
    const char *suffix = ".ffn_gate_inp.weight";
    size_t n = strlen(t->name), k = strlen(suffix);
    int l;
    if (n < k || strcmp(t->name + n - k, suffix) != 0 || sscanf(t->name, "blk.%d.", &l) != 1) {
        row[0] = 0; /* blind to the bias feature */
        return;
    }
    const int E = g->n_expert;
    int rank = (int)(((r - l) % E + E) % E);
    double f = E > 1 ? 1.0 - (double)rank / (E - 1) : 0;
    row[0] = (float)(g->router_skew * f / (SKEW_FEATURE * sqrt((double)t->ne[0])));
}

/* Row r of tensor t as floats: uniform on [-a, a], a = sqrt(3 / fan_in) (variance 1/fan_in)
 * for matrices, 1 +- 0.05 for norm weights, +-0.02 for biases. */
static void gen_row(const gen_t *g, const gtensor_t *t, int64_t r, float *out)
{
    uint64_t s = g->seed ^ hash_str(t->name);
    s = splitmix64(&s) + (uint64_t)r * 0xd1342543de82ef95ull;
    float scale = t->init == INIT_MATRIX ? sqrtf(3.0f / (float)t->ne[0])
                  : t->init == INIT_NORM ? 0.05f : t->init == INIT_WIDE ? 1.0f : 0.02f;
    float base = t->init == INIT_NORM ? 1.0f : 0.0f;
    for (int64_t i = 0; i < t->ne[0]; i++) {
        float u = (float)(splitmix64(&s) >> 40) * (1.0f / 16777216.0f); /* [0, 1) */
        out[i] = base + scale * (2.0f * u - 1.0f);
    }
    router_skew(g, t, r, out);
}

/* --random-blocks: row r of a quantized tensor written as blocks directly, without floats or
 * a quantizer. Quants and packed sub-block scales are random bytes (every bit pattern of those
 * fields is a valid value); the fields that would otherwise make a block non-finite or
 * unrealistic are set: fp16 scales (d, and dmin / m) to what quantizing gen_row's uniform
 * +-a rows gives, times a random factor in [0.5, 1); MXFP4's E8M0 exponent likewise (the byte
 * 0xFF would be NaN); Q8_0 quants -128 become -127, which the quantizer never writes. So every
 * value dequantizes finite and about as large as in a float-generated file, and speed, which
 * depends only on shapes and types, is measured on bytes written at disk speed. */
static void set_f16(uint8_t *p, float v)
{
    const uint16_t h = kern_fp32_to_fp16(v);
    memcpy(p, &h, 2);
}

static void random_row(const gen_t *g, const gtensor_t *t, int64_t r, uint8_t *dst)
{
    const kern_type_info_t *ti = kern_type_info(t->type);
    const size_t rb = kern_row_bytes(t->type, t->ne[0]), bb = ti->block_bytes;
    uint64_t s = g->seed ^ hash_str(t->name);
    s = splitmix64(&s) + (uint64_t)r * 0xd1342543de82ef95ull;
    for (size_t i = 0; i < rb; i += 8) {
        const uint64_t v = splitmix64(&s);
        memcpy(dst + i, &v, rb - i < 8 ? rb - i : 8);
    }
    const float a = sqrtf(3.0f / (float)t->ne[0]); /* gen_row's range for matrices */
    for (size_t b = 0; b < rb / bb; b++) {
        uint8_t *q = dst + b * bb;
        const float f = 0.5f + 0.5f * (float)(splitmix64(&s) >> 40) * (1.0f / 16777216.0f);
        switch (t->type) {
        case KERN_Q8_0: /* d, int8 qs[32] */
            set_f16(q, f * a / 127);
            for (int k = 2; k < 34; k++) q[k] = q[k] == 0x80 ? 0x81 : q[k];
            break;
        case KERN_Q4_0: set_f16(q, f * a / 8); break;   /* d */
        case KERN_Q5_0: set_f16(q, f * a / 16); break;  /* d */
        case KERN_Q4_1: /* d, m: w = d q + m, q in 0..15 */
        case KERN_Q5_1: /* the same with q in 0..31 */
            set_f16(q, f * 2 * a / (t->type == KERN_Q4_1 ? 15 : 31));
            set_f16(q + 2, -f * a);
            break;
        case KERN_Q4_K: /* d, dmin scale the 6-bit sub-block scales and mins */
        case KERN_Q5_K:
            set_f16(q, f * 2 * a / (t->type == KERN_Q4_K ? 15 : 31) / 63);
            set_f16(q + 2, f * a / 63);
            break;
        case KERN_Q6_K: set_f16(q + 208, f * a / 32 / 127); break; /* d after ql, qh, scales */
        case KERN_MXFP4: /* 2^(e - 128) times codes up to 12 */
            q[0] = (uint8_t)(128 + (int)floorf(log2f(f * a / 12)));
            break;
        default: CHECK(!"random_row: a type without its fields listed");
        }
    }
}

typedef struct {
    const gen_t *g;
    const gtensor_t *t;
    int64_t row0, n_rows; /* rows of the tensor this chunk holds */
    size_t row_bytes;
    unsigned char *buf;   /* (n_rows * row_bytes) */
} chunk_job_t;

/* Thread ith of nth makes rows ith, ith + nth, ...: any split gives the same bytes, since a
 * row depends only on its index. */
static void chunk_rows(void *arg, int ith, int nth)
{
    const chunk_job_t *j = arg;
    const bool quantized = kern_type_info(j->t->type)->block > 1;
    for (int64_t r = ith; r < j->n_rows; r += nth) {
        if (j->g->random_blocks && quantized) {
            random_row(j->g, j->t, j->row0 + r, j->buf + (size_t)r * j->row_bytes);
            continue;
        }
        gen_row(j->g, j->t, j->row0 + r, j->g->row[ith]);
        kern_quantize(j->t->type, j->g->row[ith], j->buf + (size_t)r * j->row_bytes,
                      j->t->ne[0]);
    }
}

static int fill_cb(void *arg, int idx, uint64_t off, void *buf, size_t len)
{
    const gen_t *g = arg;
    const gtensor_t *t = &g->t[idx];
    size_t rb = kern_row_bytes(t->type, t->ne[0]);
    chunk_job_t j = {g, t, (int64_t)(off / rb), (int64_t)(len / rb), rb, buf};
    kern_pool_run(g->pool, chunk_rows, &j);
    return 0;
}

/* ---- parameters ---- */

static const struct {
    const char *name;
    kern_type_t type;
    uint32_t file_type; /* llama_ftype for a file whose matrices are all this type */
} gen_types[] = {
    {"f32", KERN_F32, 0},    {"f16", KERN_F16, 1},    {"bf16", KERN_BF16, 32},
    {"q8_0", KERN_Q8_0, 7},  {"q4_0", KERN_Q4_0, 2},  {"q4_1", KERN_Q4_1, 3},
    {"q5_0", KERN_Q5_0, 8},  {"q5_1", KERN_Q5_1, 9},  {"q4_k", KERN_Q4_K, 14},
    {"q5_k", KERN_Q5_K, 16}, {"q6_k", KERN_Q6_K, 18},
    {"q4_k_m", (kern_type_t)GEN_Q4_K_M, 15}, /* the mix above; Q4_K's blocks of 256 */
};
enum { N_GEN_TYPES = sizeof(gen_types) / sizeof(gen_types[0]) };

int model_gen_type_from_name(const char *name)
{
    for (int i = 0; i < N_GEN_TYPES; i++)
        if (strcasecmp(name, gen_types[i].name) == 0) return (int)gen_types[i].type;
    return -1;
}

static int check_params(const model_gen_params_t *p, const arch_t **arch, int *head_dim,
                        uint32_t *file_type)
{
    *arch = NULL;
    for (size_t i = 0; i < sizeof(archs) / sizeof(archs[0]); i++)
        if (p->arch && strcmp(p->arch, archs[i].arch) == 0) *arch = &archs[i];
    if (!*arch) {
        LOG_ERR("unknown architecture '%s' (qwen3moe, qwen2moe, llama, olmoe, deepseek2, "
                "glm4moe, gpt-oss)",
                p->arch ? p->arch : "");
        return -EINVAL;
    }
    int ti = -1;
    for (int i = 0; i < N_GEN_TYPES; i++)
        if (gen_types[i].type == p->type) ti = i;
    if (ti < 0) {
        LOG_ERR("type %d is not one the generator writes", (int)p->type);
        return -EINVAL;
    }
    *file_type = gen_types[ti].file_type;
#define RANGE(x, lo, hi)                                                                           \
    if ((x) < (lo) || (x) > (hi)) {                                                                \
        LOG_ERR(#x " = %lld: must be %lld..%lld", (long long)(x), (long long)(lo),                 \
                (long long)(hi));                                                                  \
        return -EINVAL;                                                                            \
    }
    RANGE(p->n_layers, 1, 1024);
    RANGE(p->n_embd, 1, 1 << 20);
    RANGE(p->n_head, 1, 4096);
    RANGE(p->n_head_kv, 1, p->n_head);
    RANGE(p->n_expert, 1, 4096);
    RANGE(p->n_expert_used, 1, p->n_expert);
    RANGE(p->expert_ff, 1, 1 << 20);
    RANGE(p->n_vocab, 256 + (*arch)->n_special, 1 << 22);
    RANGE(p->n_ctx, 0, (int64_t)1 << 30);
    RANGE(p->head_dim, 0, 1 << 16);
    RANGE(p->n_threads, 0, 256);
#undef RANGE
    if (!(p->router_skew >= 0 && p->router_skew <= 20)) {
        LOG_ERR("router_skew = %g: must be 0..20", p->router_skew);
        return -EINVAL;
    }
    if (p->random_blocks && p->router_skew != 0) {
        LOG_ERR("router_skew shapes float rows of the embedding: not with random_blocks");
        return -EINVAL;
    }
    *head_dim = p->head_dim ? p->head_dim : p->n_embd / p->n_head;
    if (!p->head_dim && p->n_embd % p->n_head) {
        LOG_ERR("n_embd %d is not a multiple of %d heads: give head_dim", p->n_embd, p->n_head);
        return -EINVAL;
    }
    if (p->n_head % p->n_head_kv) {
        LOG_ERR("%d heads cannot share %d kv heads evenly", p->n_head, p->n_head_kv);
        return -EINVAL;
    }
    bool qwen2 = strcmp(p->arch, "qwen2moe") == 0;
    if (qwen2 ? p->shared_ff < 1 || p->shared_ff > (1 << 20)
              : p->shared_ff != 0 && !is_family(p->arch)) {
        LOG_ERR(qwen2 ? "qwen2moe needs a shared expert width (shared_ff)"
                      : "%s has no shared expert: shared_ff must be 0", p->arch);
        return -EINVAL;
    }
    if (strcmp(p->arch, "olmoe") == 0 &&
        (p->n_head * *head_dim != p->n_embd || p->n_head_kv != p->n_head)) {
        LOG_ERR("olmoe normalises whole q and k vectors: needs heads * head_dim = n_embd and "
                "kv heads = heads");
        return -EINVAL;
    }
    if ((int)p->type == GEN_Q4_K_M && (is_family(p->arch) || is_oss(p->arch))) {
        LOG_ERR("the q4_k_m mix is written for the llama/qwen/olmoe layouts only, not %s: "
                "give a single type", p->arch);
        return -EINVAL;
    }
    /* Every matrix row must be whole blocks of the type. */
    int block = kern_type_info((int)p->type == GEN_Q4_K_M ? KERN_Q4_K : p->type)->block;
    const int64_t rows[] = {p->n_embd, (int64_t)p->n_head * *head_dim, p->expert_ff,
                            qwen2 ? p->shared_ff : block};
    for (int i = 0; i < 4; i++) {
        if (rows[i] % block) {
            LOG_ERR("a row of %lld elements is not whole %s blocks of %d: choose dimensions "
                    "that are multiples of %d", (long long)rows[i], gen_types[ti].name, block,
                    block);
            return -EINVAL;
        }
    }
    return check_family(p, *head_dim, block);
}

int model_gen_write(const model_gen_params_t *params, const char *path)
{
    const arch_t *a;
    int head_dim;
    uint32_t file_type;
    model_gen_params_t fp = *params;
    family_defaults(&fp);
    const model_gen_params_t *p = &fp;
    int err = check_params(p, &a, &head_dim, &file_type);
    if (err) return err;

    model_gguf_writer_t *w = model_gguf_writer_new();
    char key[128], name[96];
#define K(s) (snprintf(key, sizeof(key), "%s." s, a->arch), key)
    model_gguf_writer_set_str(w, "general.architecture", a->arch);
    snprintf(name, sizeof(name), "%s-synthetic", a->arch);
    model_gguf_writer_set_str(w, "general.name", p->name ? p->name : name);
    model_gguf_writer_set_u32(w, "general.file_type", file_type);
    model_gguf_writer_set_u32(w, "general.quantization_version", 2);
    model_gguf_writer_set_u32(w, K("context_length"), p->n_ctx ? (uint32_t)p->n_ctx : 4096);
    model_gguf_writer_set_u32(w, K("embedding_length"), (uint32_t)p->n_embd);
    model_gguf_writer_set_u32(w, K("block_count"), (uint32_t)p->n_layers);
    /* MoE loaders read the expert width from expert_feed_forward_length where the architecture
     * has it; feed_forward_length is then the dense width the converter reports. */
    bool qwen = strncmp(a->arch, "qwen", 4) == 0;
    uint32_t ff = qwen ? (uint32_t)(p->shared_ff ? p->shared_ff : p->n_embd)
                       : (uint32_t)p->expert_ff;
    model_gguf_writer_set_u32(w, K("feed_forward_length"), ff);
    model_gguf_writer_set_u32(w, K("attention.head_count"), (uint32_t)p->n_head);
    model_gguf_writer_set_u32(w, K("attention.head_count_kv"), (uint32_t)p->n_head_kv);
    model_gguf_writer_set_u32(w, K("attention.key_length"), (uint32_t)head_dim);
    model_gguf_writer_set_u32(w, K("attention.value_length"), (uint32_t)head_dim);
    model_gguf_writer_set_f32(w, K("rope.freq_base"), 1e6f);
    model_gguf_writer_set_f32(w, K("attention.layer_norm_rms_epsilon"), a->rms_eps);
    model_gguf_writer_set_u32(w, K("expert_count"), (uint32_t)p->n_expert);
    model_gguf_writer_set_u32(w, K("expert_used_count"), (uint32_t)p->n_expert_used);
    if (qwen) model_gguf_writer_set_u32(w, K("expert_feed_forward_length"), (uint32_t)p->expert_ff);
    if (p->shared_ff)
        model_gguf_writer_set_u32(w, K("expert_shared_feed_forward_length"),
                                  (uint32_t)p->shared_ff);
    if (strcmp(a->arch, "llama") == 0) {
        model_gguf_writer_set_u32(w, K("vocab_size"), (uint32_t)p->n_vocab);
        model_gguf_writer_set_u32(w, K("rope.dimension_count"), (uint32_t)head_dim);
    }
#undef K
    family_metadata(w, p, head_dim);
    if (is_oss(a->arch)) oss_metadata(w, p);

    vocab_t v;
    build_vocab(&v, a, p->n_vocab);
    model_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    model_gguf_writer_set_str(w, "tokenizer.ggml.pre", a->pre);
    model_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v.tok,
                                  (size_t)v.n);
    model_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", MODEL_GGUF_INT32, v.type,
                              (size_t)v.n);
    model_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)v.merges,
                                  (size_t)v.n_merges);
    model_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v.bos);
    model_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v.eos);
    if (v.pad >= 0)
        model_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)v.pad);
    model_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", a->add_bos);
    if (a->chat_template) model_gguf_writer_set_str(w, "tokenizer.chat_template", a->chat_template);
    vocab_free(&v);

    gen_t g = {.seed = p->seed, .router_skew = p->router_skew,
               .random_blocks = p->random_blocks, .n_expert = p->n_expert,
               .n_embd = p->n_embd};
    list_tensors(&g, p, head_dim);
    int64_t max_row = 0;
    for (int i = 0; i < g.n && !err; i++) {
        const gtensor_t *t = &g.t[i];
        int idx = model_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne);
        CHECK(idx == i); /* shapes were validated above */
        if (t->ne[0] > max_row) max_row = t->ne[0];
    }
    g.pool = kern_pool_new(p->n_threads > 1 ? p->n_threads : 1);
    int nth = kern_pool_size(g.pool);
    g.row = xmalloc((size_t)nth * sizeof(float *));
    for (int i = 0; i < nth; i++) g.row[i] = xmalloc((size_t)max_row * sizeof(float));
    err = model_gguf_writer_write(w, path, fill_cb, &g);
    for (int i = 0; i < nth; i++) free(g.row[i]);
    free(g.row);
    kern_pool_free(g.pool);
    free(g.t);
    model_gguf_writer_free(w);
    return err;
}
