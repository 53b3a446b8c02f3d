/* Upcycling: a llama2.c legacy (version 0) checkpoint plus its tokenizer.bin become a GGUF in
 * llama.cpp's `llama` layout, dense or as a Mixtral-style MoE whose experts are copies of the
 * dense FFN. The output follows what llama.cpp's llama2c converter writes (metadata keys, their
 * order, tensor names and order, the SentencePiece vocabulary), so the dense file matches it
 * tensor for tensor.
 *
 * Invariants:
 * - The checkpoint's size must equal exactly what its header implies, and every header value is
 *   bounded before any size is computed, so no allocation or mapping is larger than the files.
 * - llama2.c stores matrices [out][in] row-major, which is GGUF's ne = {in, out}; its wq/wk rows
 *   are already in the adjacent-pair RoPE order that arch `llama` uses, so weights are copied
 *   without permutation (checked against llama.cpp's converter output in the tests).
 * - The checkpoint is mapped read-only and tensor bytes are streamed to the writer, so memory
 *   stays at the mapping plus one writer chunk whatever the number of experts.
 */
#include "model/model.h"
#include "wire/wire.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEADER_BYTES 28
/* Bounds far above any llama2.c model (the largest, Llama-2 7B, has dim 4096, hidden 11008,
 * 32 layers, vocab 32000) that keep every size product below 2^50. */
#define MAX_DIM (1 << 16)
#define MAX_HIDDEN (1 << 18)
#define MAX_LAYERS (1 << 10)
#define MAX_VOCAB (1 << 22)
#define MAX_SEQ (1 << 22)
#define MAX_EXPERTS 256
#define MAX_PIECE 4096
/* SentencePiece vocabularies from llama2.c hold <unk>, <s>, </s> and the 256 byte tokens first. */
#define N_FIXED_TOKENS 259

enum { TOK_NORMAL = 1, TOK_UNKNOWN = 2, TOK_CONTROL = 3, TOK_BYTE = 6 };

typedef struct {
    int32_t dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len;
    bool shared_cls;   /* classifier tied to the token embedding (positive vocab in the header) */
    int32_t raw_vocab; /* as in the file, for messages */
} header_t;

/* Where one output tensor's floats come from: n_copies back-to-back copies of src (n floats),
 * copy c multiplied by scales[c] when scales is set. */
typedef struct {
    const float *src;
    size_t n;
    int n_copies;
    const double *scales;
} plan_t;

typedef struct {
    plan_t *plan; /* (number of tensors added) */
} fill_ctx_t;

/* ---- the two input files ---- */

static int check_header(const char *path, const header_t *h, uint64_t size, uint64_t *n_floats)
{
    int32_t vocab = h->vocab;
    if (h->dim <= 0 || h->dim > MAX_DIM || h->hidden <= 0 || h->hidden > MAX_HIDDEN ||
        h->n_layers <= 0 || h->n_layers > MAX_LAYERS || h->n_heads <= 0 || h->n_heads > h->dim ||
        h->n_kv_heads <= 0 || h->n_kv_heads > h->n_heads || vocab <= 0 || vocab > MAX_VOCAB ||
        h->seq_len <= 0 || h->seq_len > MAX_SEQ) {
        LOG_ERR("%s: header values out of range (dim %d, hidden_dim %d, n_layers %d, n_heads %d, "
                "n_kv_heads %d, vocab_size %d, seq_len %d)",
                path, h->dim, h->hidden, h->n_layers, h->n_heads, h->n_kv_heads,
                h->raw_vocab, h->seq_len);
        return MODEL_E_LIMIT;
    }
    if (h->dim % h->n_heads || h->n_heads % h->n_kv_heads || (h->dim / h->n_heads) % 2) {
        LOG_ERR("%s: inconsistent heads: dim %d, n_heads %d, n_kv_heads %d (need dim divisible "
                "by n_heads into an even head size, n_heads divisible by n_kv_heads)",
                path, h->dim, h->n_heads, h->n_kv_heads);
        return MODEL_E_LIMIT;
    }
    uint64_t d = (uint64_t)h->dim, f = (uint64_t)h->hidden, l = (uint64_t)h->n_layers;
    uint64_t v = (uint64_t)vocab, head = d / (uint64_t)h->n_heads;
    uint64_t kv = head * (uint64_t)h->n_kv_heads;
    uint64_t n = v * d                 /* token embedding */
                 + l * d               /* rms_att */
                 + l * d * d * 2       /* wq, wo */
                 + l * kv * d * 2      /* wk, wv */
                 + l * d               /* rms_ffn */
                 + l * f * d * 3       /* w1, w2, w3 */
                 + d                   /* rms_final */
                 + (uint64_t)h->seq_len * head /* freq_cis real and imaginary halves */
                 + (h->shared_cls ? 0 : v * d);
    uint64_t want = HEADER_BYTES + 4 * n;
    if (size < want) {
        LOG_ERR("%s: truncated: %llu bytes, the header implies %llu", path,
                (unsigned long long)size, (unsigned long long)want);
        return MODEL_E_TRUNCATED;
    }
    if (size > want) {
        LOG_ERR("%s: %llu bytes, the header implies %llu: not a legacy llama2.c checkpoint of "
                "these dimensions", path, (unsigned long long)size, (unsigned long long)want);
        return MODEL_E_LAYOUT;
    }
    *n_floats = n;
    return 0;
}

/* Maps path read-only after validating its header; *map (*map_size bytes) must be unmapped. */
static int open_checkpoint(const char *path, header_t *h, void **map, size_t *map_size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int err = -errno;
        LOG_ERR("%s: %s", path, strerror(-err));
        return err;
    }
    struct stat st;
    int32_t raw[7];
    int rc = 0;
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        LOG_ERR("%s: %s", path, strerror(-rc));
        goto out;
    }
    if (st.st_size < HEADER_BYTES) {
        LOG_ERR("%s: truncated: %lld bytes, shorter than the 28-byte header", path,
                (long long)st.st_size);
        rc = MODEL_E_TRUNCATED;
        goto out;
    }
    if (pread(fd, raw, sizeof(raw), 0) != (ssize_t)sizeof(raw)) {
        rc = -EIO;
        LOG_ERR("%s: cannot read the header", path);
        goto out;
    }
    if (memcmp(raw, "ak42", 4) == 0) {
        LOG_ERR("%s: a llama2.c version-1+ export (magic ak42); only the legacy version-0 "
                "format is supported", path);
        rc = MODEL_E_VERSION;
        goto out;
    }
    *h = (header_t){raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[5] > 0, raw[5]};
    /* A negative vocab_size flags an untied classifier; INT32_MIN has no positive twin. */
    h->vocab = raw[5] == INT32_MIN ? 0 : raw[5] < 0 ? -raw[5] : raw[5];
    uint64_t n_floats;
    rc = check_header(path, h, (uint64_t)st.st_size, &n_floats);
    if (rc) goto out;
    *map_size = (size_t)st.st_size;
    *map = mmap(NULL, *map_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (*map == MAP_FAILED) {
        rc = -errno;
        *map = NULL;
        LOG_ERR("%s: mmap: %s", path, strerror(-rc));
    }
out:
    close(fd);
    return rc;
}

static int read_file(const char *path, size_t limit, unsigned char **buf, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        int err = -errno;
        LOG_ERR("%s: %s", path, strerror(-err));
        return err;
    }
    struct stat st;
    int rc = 0;
    if (fstat(fileno(f), &st) < 0) {
        rc = -errno;
        LOG_ERR("%s: %s", path, strerror(-rc));
    } else if ((uint64_t)st.st_size > limit) {
        LOG_ERR("%s: %lld bytes, more than a tokenizer of this vocabulary can take (%zu)", path,
                (long long)st.st_size, limit);
        rc = MODEL_E_VOCAB;
    } else {
        *len = (size_t)st.st_size;
        *buf = xmalloc(*len);
        if (fread(*buf, 1, *len, f) != *len) {
            rc = -EIO;
            LOG_ERR("%s: short read", path);
            free(*buf);
            *buf = NULL;
        }
    }
    fclose(f);
    return rc;
}

typedef struct {
    char **tokens;  /* (n) NUL-terminated, SentencePiece spelling */
    float *scores;  /* (n) */
    int32_t *types; /* (n) llama.cpp token types */
    int n;
} vocab_t;

static void vocab_deinit(vocab_t *v)
{
    for (int i = 0; v->tokens && i < v->n; i++) free(v->tokens[i]);
    free(v->tokens);
    free(v->scores);
    free(v->types);
    *v = (vocab_t){0};
}

/* Copies a llama2.c piece in SentencePiece spelling: every space becomes U+2581 "▁", as
 * llama.cpp's converter writes it and its tokenizer expects. */
static char *spm_piece(const unsigned char *p, int len)
{
    int spaces = 0;
    for (int i = 0; i < len; i++) spaces += p[i] == ' ';
    char *s = xmalloc((size_t)len + 2 * (size_t)spaces + 1), *o = s;
    for (int i = 0; i < len; i++) {
        if (p[i] == ' ') {
            memcpy(o, "\xe2\x96\x81", 3);
            o += 3;
        } else {
            *o++ = (char)p[i];
        }
    }
    *o = 0;
    return s;
}

/* Reads tokenizer.bin: int32 max_token_length, then n records (f32 score, int32 len, bytes). The
 * file has no count, so n comes from the checkpoint, and the file must end after record n. */
static int read_vocab(const char *path, int n, vocab_t *v)
{
    /* Each record is at most 8 + MAX_PIECE bytes, which bounds the file before it is read. */
    unsigned char *buf = NULL;
    size_t len = 0;
    int rc = read_file(path, 4 + (size_t)n * (8 + MAX_PIECE), &buf, &len);
    if (rc) return rc;
    if (n < N_FIXED_TOKENS) {
        LOG_ERR("%s: vocabulary of %d tokens; a llama2.c SentencePiece vocabulary starts with "
                "<unk>, <s>, </s> and 256 byte tokens", path, n);
        rc = MODEL_E_VOCAB;
        goto out;
    }
    int32_t max_len;
    size_t pos = 4;
    if (len < 4) {
        LOG_ERR("%s: truncated: %zu bytes", path, len);
        rc = MODEL_E_TRUNCATED;
        goto out;
    }
    memcpy(&max_len, buf, 4);
    if (max_len <= 0 || max_len > MAX_PIECE) {
        LOG_ERR("%s: max_token_length %d out of range 1..%d", path, max_len, MAX_PIECE);
        rc = MODEL_E_VOCAB;
        goto out;
    }
    v->n = n;
    v->tokens = xcalloc((size_t)n, sizeof(*v->tokens));
    v->scores = xmalloc((size_t)n * sizeof(*v->scores));
    v->types = xmalloc((size_t)n * sizeof(*v->types));
    for (int i = 0; i < n; i++) {
        int32_t plen;
        if (len - pos < 8) {
            LOG_ERR("%s: truncated at token %d of %d", path, i, n);
            rc = MODEL_E_TRUNCATED;
            goto out;
        }
        memcpy(&v->scores[i], buf + pos, 4);
        memcpy(&plen, buf + pos + 4, 4);
        pos += 8;
        if (plen < 0 || plen > max_len) {
            LOG_ERR("%s: token %d has length %d (max_token_length %d)", path, i, plen, max_len);
            rc = MODEL_E_VOCAB;
            goto out;
        }
        if (len - pos < (size_t)plen) {
            LOG_ERR("%s: truncated in token %d of %d", path, i, n);
            rc = MODEL_E_TRUNCATED;
            goto out;
        }
        if (memchr(buf + pos, 0, (size_t)plen)) {
            LOG_ERR("%s: token %d contains a NUL byte, which GGUF token strings cannot carry",
                    path, i);
            rc = MODEL_E_VOCAB;
            goto out;
        }
        /* llama2.c spells BOS and EOS "\n<s>\n" and "\n</s>\n"; GGUF uses the plain names. */
        static const char *const fixed[3] = {"<unk>", "<s>", "</s>"};
        v->tokens[i] = i < 3 ? xstrdup(fixed[i]) : spm_piece(buf + pos, plen);
        v->types[i] = i == 0 ? TOK_UNKNOWN : i < 3 ? TOK_CONTROL
                      : i < N_FIXED_TOKENS ? TOK_BYTE : TOK_NORMAL;
        pos += (size_t)plen;
    }
    if (pos != len) {
        LOG_ERR("%s: %zu bytes left after the %d tokens the checkpoint's vocab_size asks for",
                path, len - pos, n);
        rc = MODEL_E_VOCAB;
    }
out:
    free(buf);
    if (rc) vocab_deinit(v);
    return rc;
}

/* ---- router generator: splitmix64 stream, Box-Muller normals ---- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Fills r (n) with normals of standard deviation sd, each rounded to a multiple of
 * 2^(floor(log2 sd) - 6): exact in F16 and BF16 too, so converting or quantizing the file later
 * cannot change the routing. */
static void fill_router(float *r, size_t n, double sd, uint64_t *state)
{
    int ex;
    frexp(sd, &ex);
    double step = ldexp(1.0, ex - 1 - 6);
    for (size_t i = 0; i < n; i++) {
        /* u1 in (0, 1] keeps log finite. */
        double u1 = (double)((splitmix64(state) >> 11) + 1) * 0x1.0p-53;
        double u2 = (double)(splitmix64(state) >> 11) * 0x1.0p-53;
        double z = sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
        r[i] = (float)(nearbyint(z * sd / step) * step);
    }
}

/* ---- writing ---- */

static int fill(void *arg, int tensor, uint64_t off, void *buf, size_t len)
{
    const plan_t *pl = &((fill_ctx_t *)arg)->plan[tensor];
    float *out = buf;
    size_t k = (size_t)(off / 4), n = len / 4;
    while (n > 0) {
        size_t copy = k / pl->n, at = k % pl->n;
        size_t run = pl->n - at < n ? pl->n - at : n;
        if (pl->scales) {
            /* The factor multiplies in double and rounds once, as numpy's float64 scalar does. */
            double s = pl->scales[copy];
            for (size_t i = 0; i < run; i++) out[i] = (float)((double)pl->src[at + i] * s);
        } else {
            memcpy(out, pl->src + at, run * sizeof(*out));
        }
        out += run;
        k += run;
        n -= run;
    }
    return 0;
}

typedef struct {
    model_gguf_writer_t *w;
    plan_t *plans; /* (capacity fixed by the caller from the layer count) */
    int n_plans;
    int rc;        /* first refusal; later adds are skipped */
    const char *out;
} adder_t;

static void add(adder_t *a, const char *name, int n_dims, int64_t ne0, int64_t ne1, int64_t ne2,
                plan_t plan)
{
    if (a->rc) return;
    int64_t ne[3] = {ne0, ne1, ne2};
    /* Shapes come from the checkpoint and the expert count; the writer has the last word on
     * what a GGUF can hold, so its refusal is an error, not a bug. */
    int idx = model_gguf_writer_add_tensor(a->w, name, KERN_F32, n_dims, ne);
    if (idx < 0) {
        LOG_ERR("%s: cannot add tensor %s [%lld, %lld, %lld]: %s", a->out, name, (long long)ne0,
                (long long)ne1, (long long)ne2, model_strerror(idx));
        a->rc = idx;
        return;
    }
    CHECK(idx == a->n_plans);
    a->plans[a->n_plans++] = plan;
}

model_upcycle_params_t model_upcycle_params_default(void)
{
    return (model_upcycle_params_t){.n_experts = 4, .n_used = 2, .seed = 1};
}

double model_upcycle_default_scale(int e, int n)
{
    static const double four[4] = {0.9, 0.97, 1.03, 1.1};
    if (n == 4) return four[e];
    if (n <= 1) return 1.0;
    return 0.9 + 0.2 * e / (n - 1);
}

static int check_params(const model_upcycle_params_t *p)
{
    if (p->n_experts < 0 || p->n_experts > MAX_EXPERTS) {
        LOG_ERR("expert count %d out of range 0..%d", p->n_experts, MAX_EXPERTS);
        return -EINVAL;
    }
    if (p->n_experts > 0 && (p->n_used < 1 || p->n_used > p->n_experts)) {
        LOG_ERR("experts used per token %d out of range 1..%d", p->n_used, p->n_experts);
        return -EINVAL;
    }
    for (int e = 0; p->scales && e < p->n_experts; e++) {
        if (!isfinite(p->scales[e]) || p->scales[e] <= 0) {
            LOG_ERR("scale %g of expert %d is not a positive finite number", p->scales[e], e);
            return -EINVAL;
        }
    }
    if (p->context_length < 0 || p->context_length > UINT32_MAX) {
        LOG_ERR("context length %lld out of range", (long long)p->context_length);
        return -EINVAL;
    }
    return 0;
}

/* "<stem of path>-moe", lower case: stories260K.bin gives "stories260k-moe". */
static char *default_moe_name(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    size_t n = dot && dot != base ? (size_t)(dot - base) : strlen(base);
    char *s = xmalloc(n + 5);
    for (size_t i = 0; i < n; i++)
        s[i] = base[i] >= 'A' && base[i] <= 'Z' ? (char)(base[i] - 'A' + 'a') : base[i];
    memcpy(s + n, "-moe", 5);
    return s;
}

int model_upcycle(const char *checkpoint, const char *tokenizer, const char *out,
                  const model_upcycle_params_t *p)
{
    int rc = check_params(p);
    if (rc) return rc;
    header_t h = {0};
    void *map = NULL;
    size_t map_size = 0;
    rc = open_checkpoint(checkpoint, &h, &map, &map_size);
    if (rc) return rc;
    vocab_t vocab = {0};
    rc = read_vocab(tokenizer, h.vocab, &vocab);
    if (rc) {
        munmap(map, map_size);
        return rc;
    }

    const int E = p->n_experts, L = h.n_layers;
    const int64_t D = h.dim, F = h.hidden, V = h.vocab, head = D / h.n_heads;
    const int64_t KV = head * h.n_kv_heads;
    double *scales = NULL;
    float *router = NULL;
    char *name = NULL;
    if (E > 0) {
        scales = xmalloc((size_t)E * sizeof(*scales));
        for (int e = 0; e < E; e++)
            scales[e] = p->scales ? p->scales[e] : model_upcycle_default_scale(e, E);
        /* L * D floats are the checkpoint's rms_att, so the router is at most E / (3 * hidden)
         * times the checkpoint's size: bounded by the input, not by a header's claims. */
        router = xmalloc((size_t)L * (size_t)D * (size_t)E * sizeof(*router));
        uint64_t state = p->seed;
        fill_router(router, (size_t)L * (size_t)D * (size_t)E, 2.0 / sqrt((double)D), &state);
    }

    model_gguf_writer_t *w = model_gguf_writer_new();
    /* Keys in the order llama.cpp's converter writes them; the MoE file appends the expert
     * counts and then its name, as the reference upcycled file does. */
    model_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)vocab.tokens,
                                  (size_t)V);
    model_gguf_writer_set_arr(w, "tokenizer.ggml.scores", MODEL_GGUF_FLOAT32, vocab.scores,
                              (size_t)V);
    model_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", MODEL_GGUF_INT32, vocab.types,
                              (size_t)V);
    model_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
    model_gguf_writer_set_str(w, "general.architecture", "llama");
    if (E == 0) model_gguf_writer_set_str(w, "general.name", p->name ? p->name : "llama");
    model_gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    model_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
    model_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
    model_gguf_writer_set_u32(w, "tokenizer.ggml.seperator_token_id", UINT32_MAX);
    model_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", UINT32_MAX);
    model_gguf_writer_set_u32(w, "llama.context_length",
                              (uint32_t)(p->context_length ? p->context_length : h.seq_len));
    model_gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)D);
    model_gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)F);
    model_gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)h.n_heads);
    model_gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)h.n_kv_heads);
    model_gguf_writer_set_u32(w, "llama.block_count", (uint32_t)L);
    model_gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)head);
    model_gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    if (E > 0) {
        model_gguf_writer_set_u32(w, "llama.expert_count", (uint32_t)E);
        model_gguf_writer_set_u32(w, "llama.expert_used_count", (uint32_t)p->n_used);
        name = p->name ? xstrdup(p->name) : default_moe_name(checkpoint);
        model_gguf_writer_set_str(w, "general.name", name);
    }

    /* The checkpoint's arrays, in file order (check_header proved they all fit). */
    const float *x = (const float *)((const char *)map + HEADER_BYTES);
    const float *emb = x, *rms_att = emb + V * D, *wq = rms_att + L * D, *wk = wq + L * D * D;
    const float *wv = wk + L * KV * D, *wo = wv + L * KV * D, *rms_ffn = wo + L * D * D;
    const float *w1 = rms_ffn + L * D, *w2 = w1 + L * F * D, *w3 = w2 + L * D * F;
    const float *rms_final = w3 + L * F * D;
    const float *wcls = h.shared_cls ? emb : rms_final + D + (int64_t)h.seq_len * head;

    int n_tensors = 3 + L * (E > 0 ? 10 : 9);
    adder_t ad = {w, xmalloc((size_t)n_tensors * sizeof(plan_t)), 0, 0, out};
#define ONE(src, n) ((plan_t){(src), (size_t)(n), 1, NULL})
    add(&ad, "token_embd.weight", 2, D, V, 1, ONE(emb, V * D));
    add(&ad, "output_norm.weight", 1, D, 1, 1, ONE(rms_final, D));
    add(&ad, "output.weight", 2, D, V, 1, ONE(wcls, V * D));
    for (int l = 0; l < L; l++) {
        char nm[64];
#define NAME(what) (snprintf(nm, sizeof(nm), "blk.%d.%s.weight", l, (what)), nm)
        add(&ad, NAME("attn_q"), 2, D, D, 1, ONE(wq + l * D * D, D * D));
        add(&ad, NAME("attn_k"), 2, D, KV, 1, ONE(wk + l * KV * D, KV * D));
        add(&ad, NAME("attn_v"), 2, D, KV, 1, ONE(wv + l * KV * D, KV * D));
        add(&ad, NAME("attn_output"), 2, D, D, 1, ONE(wo + l * D * D, D * D));
        add(&ad, NAME("attn_norm"), 1, D, 1, 1, ONE(rms_att + l * D, D));
        const float *g = w1 + l * F * D, *dn = w2 + l * D * F, *u = w3 + l * F * D;
        if (E > 0) {
            add(&ad, NAME("ffn_gate_inp"), 2, D, E, 1,
                ONE(router + (size_t)l * (size_t)(D * E), D * E));
            add(&ad, NAME("ffn_gate_exps"), 3, D, F, E,
                (plan_t){g, (size_t)(F * D), E, NULL});
            add(&ad, NAME("ffn_down_exps"), 3, F, D, E,
                (plan_t){dn, (size_t)(D * F), E, scales});
            add(&ad, NAME("ffn_up_exps"), 3, D, F, E,
                (plan_t){u, (size_t)(F * D), E, NULL});
        } else {
            add(&ad, NAME("ffn_gate"), 2, D, F, 1, ONE(g, F * D));
            add(&ad, NAME("ffn_down"), 2, F, D, 1, ONE(dn, D * F));
            add(&ad, NAME("ffn_up"), 2, D, F, 1, ONE(u, F * D));
        }
        add(&ad, NAME("ffn_norm"), 1, D, 1, 1, ONE(rms_ffn + l * D, D));
#undef NAME
    }
#undef ONE
    CHECK(ad.rc || ad.n_plans == n_tensors);

    fill_ctx_t ctx = {ad.plans};
    rc = ad.rc ? ad.rc : model_gguf_writer_write(w, out, fill, &ctx);
    if (rc == 0)
        LOG_INFO("%s: %s model, %d layers, dim %lld, vocab %lld%s", out,
                 E ? "MoE" : "dense", L, (long long)D, (long long)V,
                 E ? " (experts copied from the dense FFN)" : "");

    model_gguf_writer_free(w);
    free(ad.plans);
    free(name);
    free(router);
    free(scales);
    vocab_deinit(&vocab);
    munmap(map, map_size);
    return rc;
}
