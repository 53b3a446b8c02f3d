/* Tests for model/gguf.c and model/gguf_write.c: facts of every real file in ../shared,
 * malformed inputs built in memory (each must give its error code, never a crash: the SAN build
 * checks memory safety), and write -> read round trips down to identical bytes of real files. */
#include <criterion/criterion.h>
#include <errno.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"
#include "wire/wire.h"

/* Malformed-input tests log one error per case; thousands of lines would bury real failures. */
static void quiet(void)
{
    wire__log_level = -1;
}

static void *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc((size_t)n);
    cr_assert_eq(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return p;
}

/* ---- a tiny GGUF builder for hand-made files ---- */
typedef struct {
    unsigned char *p;
    size_t n, cap;
} buf_t;

static void put(buf_t *b, const void *v, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, v, n);
    b->n += n;
}
static void put_u32(buf_t *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf_t *b, uint64_t v) { put(b, &v, 8); }
static void put_str(buf_t *b, const char *s)
{
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void put_header(buf_t *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    put(b, "GGUF", 4);
    put_u32(b, version);
    put_u64(b, n_tensors);
    put_u64(b, n_kv);
}
static void put_kv_u32(buf_t *b, const char *key, uint32_t v)
{
    put_str(b, key);
    put_u32(b, MODEL_GGUF_UINT32);
    put_u32(b, v);
}
static void put_tensor(buf_t *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                       uint32_t type, uint64_t offset)
{
    put_str(b, name);
    put_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) put_u64(b, ne[i]);
    put_u32(b, type);
    put_u64(b, offset);
}
/* Pads to 32 and appends n data bytes (a pattern). */
static void put_data(buf_t *b, size_t n)
{
    while (b->n % 32) put(b, "", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)(i * 7);
        put(b, &c, 1);
    }
}

static int open_buf(const buf_t *b)
{
    model_gguf_t *g = NULL;
    int err = model_gguf_open_mem(b->p, b->n, "built", &g);
    cr_assert((err == 0) == (g != NULL));
    model_gguf_free(g);
    return err;
}

/* ---- real files ---- */
static const char *const file_globs[] = {
    "../shared/golden/*.gguf",
    "../shared/models/llama2-tiny-random-gguf/*.gguf",
    "../shared/tokenizer/*.gguf",
};

Test(model_gguf, opens_every_shared_file)
{
    int n_files = 0;
    for (size_t k = 0; k < sizeof(file_globs) / sizeof(file_globs[0]); k++) {
        glob_t gl;
        cr_assert_eq(glob(file_globs[k], 0, NULL, &gl), 0, "%s", file_globs[k]);
        for (size_t i = 0; i < gl.gl_pathc; i++) {
            model_gguf_t *g = NULL;
            int err = model_gguf_open(gl.gl_pathv[i], &g);
            cr_assert_eq(err, 0, "%s: %s", gl.gl_pathv[i], model_strerror(err));
            cr_assert_eq(model_gguf_version(g), 3);
            cr_assert_str_eq(model_gguf_path(g), gl.gl_pathv[i]);
            cr_assert(model_gguf_get_str(g, "general.architecture"));
            const model_gguf_value_t *tok = model_gguf_get_arr(g, "tokenizer.ggml.tokens",
                                                               MODEL_GGUF_STRING);
            cr_assert(tok && tok->arr.n > 0, "%s has tokens", gl.gl_pathv[i]);
            /* Every tensor lies in the file, and find_tensor finds each by name. */
            for (int t = 0; t < model_gguf_tensor_count(g); t++) {
                const model_tensor_t *ti = model_gguf_tensor(g, t);
                cr_assert_eq(model_gguf_find_tensor(g, ti->name), ti);
                const char *base = (const char *)model_gguf_tensor(g, 0)->data -
                                   model_gguf_tensor(g, 0)->offset - model_gguf_data_offset(g);
                cr_assert_leq((const char *)ti->data + ti->nbytes,
                              base + model_gguf_file_size(g));
            }
            cr_assert_null(model_gguf_find_tensor(g, "no.such.tensor"));
            model_gguf_free(g);
            n_files++;
        }
        globfree(&gl);
    }
    cr_assert_geq(n_files, 25);
}

Test(model_gguf, qwen3moe_facts)
{
    model_gguf_t *g;
    cr_assert_eq(model_gguf_open("../shared/golden/qwen3moe-tiny-f32.gguf", &g), 0);
    cr_assert_str_eq(model_gguf_get_str(g, "general.architecture"), "qwen3moe");
    int64_t v;
    cr_assert(model_gguf_get_int(g, "qwen3moe.block_count", &v));
    cr_assert_eq(v, 4);
    cr_assert(model_gguf_get_int(g, "qwen3moe.expert_count", &v));
    cr_assert_eq(v, 8);
    double f;
    cr_assert(model_gguf_get_float(g, "qwen3moe.rope.freq_base", &f));
    cr_assert_float_eq(f, 1e6, 1e-3);
    cr_assert_not(model_gguf_get_int(g, "general.architecture", &v), "a string is no int");
    cr_assert_null(model_gguf_get_str(g, "qwen3moe.block_count"));
    cr_assert_eq(model_gguf_alignment(g), 32);
    cr_assert_eq(model_gguf_data_offset(g) % 32, 0);
    const model_tensor_t *t = model_gguf_find_tensor(g, "blk.0.ffn_gate_exps.weight");
    cr_assert(t);
    cr_assert_eq(t->n_dims, 3);
    cr_assert_eq(t->ne[0], 128);
    cr_assert_eq(t->ne[1], 64);
    cr_assert_eq(t->ne[2], 8);
    cr_assert_eq(t->ne[3], 1);
    cr_assert_eq(t->type, KERN_F32);
    cr_assert_eq(t->nbytes, 128 * 64 * 8 * 4);
    const model_gguf_value_t *tok = model_gguf_get_arr(g, "tokenizer.ggml.tokens", -1);
    cr_assert_eq(tok->arr.n, 320);
    cr_assert_null(model_gguf_get_arr(g, "tokenizer.ggml.tokens", MODEL_GGUF_UINT32));
    model_gguf_free(g);
}

Test(model_gguf, quantized_tensor_sizes)
{
    model_gguf_t *g;
    cr_assert_eq(model_gguf_open("../shared/golden/qwen3moe-kq-q4_k_m.gguf", &g), 0);
    const model_tensor_t *t = model_gguf_find_tensor(g, "blk.0.ffn_up_exps.weight");
    cr_assert_eq(t->type, KERN_Q4_K);
    cr_assert_eq(t->nbytes, (size_t)(256 / 256) * 144 * 256 * 8);
    t = model_gguf_find_tensor(g, "output.weight");
    cr_assert_eq(t->type, KERN_Q6_K);
    model_gguf_free(g);
}

Test(model_gguf, llama2_spm_facts)
{
    model_gguf_t *g;
    const char *path = "../shared/models/llama2-tiny-random-gguf/llama-2-tiny-random.gguf";
    cr_assert_eq(model_gguf_open(path, &g), 0);
    cr_assert_eq(model_gguf_data_offset(g), 724416);
    const model_gguf_value_t *tok = model_gguf_get_arr(g, "tokenizer.ggml.tokens",
                                                       MODEL_GGUF_STRING);
    cr_assert_eq(tok->arr.n, 32000);
    cr_assert_str_eq(tok->arr.v[1].str.s, "<s>");
    const model_gguf_value_t *sc = model_gguf_get_arr(g, "tokenizer.ggml.scores",
                                                      MODEL_GGUF_FLOAT32);
    cr_assert_eq(sc->arr.n, 32000);
    const model_tensor_t *t = model_gguf_find_tensor(g, "token_embd.weight");
    cr_assert_eq(t->type, KERN_F16);
    cr_assert_eq(t->ne[0], 8);
    cr_assert_eq(t->ne[1], 32000);
    cr_assert_eq(t->offset, 0);
    cr_assert_eq(model_gguf_tensor_count(g), 12);
    model_gguf_free(g);
}

Test(model_gguf, vocab_only_files)
{
    static const struct {
        const char *path;
        uint64_t n_tokens;
        int64_t bos;
    } cases[] = {
        {"../shared/tokenizer/ggml-vocab-gpt-2.gguf", 50257, 50256},
        {"../shared/tokenizer/ggml-vocab-llama-spm.gguf", 32000, 1},
        {"../shared/tokenizer/ggml-vocab-phi-3.gguf", 32064, 1},
        {"../shared/tokenizer/ggml-vocab-deepseek-llm.gguf", 102400, 100000},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        model_gguf_t *g;
        cr_assert_eq(model_gguf_open(cases[i].path, &g), 0, "%s", cases[i].path);
        cr_assert_eq(model_gguf_tensor_count(g), 0);
        cr_assert_eq(model_gguf_get_arr(g, "tokenizer.ggml.tokens", -1)->arr.n, cases[i].n_tokens);
        int64_t bos;
        cr_assert(model_gguf_get_int(g, "tokenizer.ggml.bos_token_id", &bos));
        cr_assert_eq(bos, cases[i].bos);
        model_gguf_free(g);
    }
}

Test(model_gguf, missing_file_is_errno)
{
    quiet();
    model_gguf_t *g = (void *)1;
    int err = model_gguf_open("/nonexistent/x.gguf", &g);
    cr_assert_lt(err, 0);
    cr_assert_gt(err, -1000);
    cr_assert_null(g);
    cr_assert_str_neq(model_strerror(err), "unknown error");
}

/* Every prefix of a real file: an error exactly while the prefix ends before the last tensor's
 * data (each must be an error, none may crash), success from there on. The header is cut at
 * every byte; the data section at a stride, since each parse only reads the header. */
Test(model_gguf, every_truncation_is_an_error)
{
    quiet();
    size_t len;
    unsigned char *full = slurp("../shared/golden/qwen3moe-tiny-q8_0.gguf", &len);
    model_gguf_t *g;
    cr_assert_eq(model_gguf_open_mem(full, len, "full", &g), 0);
    size_t header = (size_t)model_gguf_data_offset(g);
    size_t end = 0;
    for (int i = 0; i < model_gguf_tensor_count(g); i++) {
        const model_tensor_t *t = model_gguf_tensor(g, i);
        size_t e = header + t->offset + t->nbytes;
        if (e > end) end = e;
    }
    model_gguf_free(g);
    cr_assert_leq(end, len);
    for (size_t n = 0; n < len; n += n < header + 64 ? 1 : 4093) {
        /* A fresh copy of exactly n bytes, so ASan sees any read past the prefix. */
        unsigned char *p = malloc(n ? n : 1);
        memcpy(p, full, n);
        int err = model_gguf_open_mem(p, n, "prefix", &g);
        if (n < end) {
            cr_assert_neq(err, 0, "prefix of %zu bytes accepted", n);
            /* A count read from a short prefix can exceed the whole prefix: LIMIT, not
             * TRUNCATED, is then the honest answer. */
            cr_assert(err == MODEL_E_TRUNCATED || err == MODEL_E_LIMIT ||
                          (n < 4 && err == MODEL_E_MAGIC),
                      "prefix %zu: %s", n, model_strerror(err));
        } else {
            cr_assert_eq(err, 0);
        }
        model_gguf_free(g);
        free(p);
    }
    unsigned char *p = malloc(end - 1);
    memcpy(p, full, end - 1);
    cr_assert_eq(model_gguf_open_mem(p, end - 1, "short", &g), MODEL_E_TRUNCATED);
    free(p);
    free(full);
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Random bit flips in the header of real files: each open returns 0 or a MODEL_E_* code. */
Test(model_gguf, random_bit_flips_never_crash, .timeout = 120)
{
    quiet();
    static const char *const files[] = {
        "../shared/golden/qwen2moe-tiny-q8_0.gguf",
        "../shared/golden/stories260k-f32.gguf",
        "../shared/golden/deepseek2-tiny-f32.gguf",
    };
    uint64_t seed = 12345;
    int n_ok = 0, n_err = 0;
    for (size_t k = 0; k < 3; k++) {
        size_t len;
        unsigned char *p = slurp(files[k], &len);
        model_gguf_t *g;
        cr_assert_eq(model_gguf_open_mem(p, len, files[k], &g), 0);
        size_t header = (size_t)model_gguf_data_offset(g);
        model_gguf_free(g);
        for (int it = 0; it < 1500; it++) {
            int nflip = 1 + (int)(splitmix(&seed) % 3);
            size_t pos[3];
            int bit[3];
            for (int j = 0; j < nflip; j++) {
                pos[j] = splitmix(&seed) % header;
                bit[j] = (int)(splitmix(&seed) % 8);
                p[pos[j]] ^= (unsigned char)(1u << bit[j]);
            }
            int err = model_gguf_open_mem(p, len, "flipped", &g);
            cr_assert(err == 0 || (err <= MODEL_E_MAGIC && err >= MODEL_E_VOCAB), "err %d", err);
            if (err == 0) {
                /* Whatever was accepted must hold the reader's invariants. */
                for (int t = 0; t < model_gguf_tensor_count(g); t++) {
                    const model_tensor_t *ti = model_gguf_tensor(g, t);
                    cr_assert_leq((const unsigned char *)ti->data + ti->nbytes, p + len);
                    cr_assert_eq(ti->offset % model_gguf_alignment(g), 0);
                }
                n_ok++;
            } else {
                n_err++;
            }
            model_gguf_free(g);
            for (int j = nflip - 1; j >= 0; j--) p[pos[j]] ^= (unsigned char)(1u << bit[j]);
        }
        free(p);
    }
    /* Flips inside string bytes are harmless and flips in lengths are not: expect both. */
    cr_assert_gt(n_ok, 0);
    cr_assert_gt(n_err, 0);
}

/* ---- hand-made files ---- */
Test(model_gguf, minimal_built_file_opens_v2_and_v3)
{
    for (uint32_t version = 2; version <= 3; version++) {
        buf_t b = {0};
        put_header(&b, version, 1, 1);
        put_kv_u32(&b, "a.b", 7);
        uint64_t ne[2] = {3, 5};
        put_tensor(&b, "w", 2, ne, KERN_F32, 0);
        put_data(&b, 60);
        model_gguf_t *g;
        cr_assert_eq(model_gguf_open_mem(b.p, b.n, "built", &g), 0);
        cr_assert_eq(model_gguf_version(g), version);
        const model_tensor_t *t = model_gguf_tensor(g, 0);
        cr_assert_eq(t->nbytes, 60);
        cr_assert_eq(((const unsigned char *)t->data)[1], 7);
        int64_t v;
        cr_assert(model_gguf_get_int(g, "a.b", &v) && v == 7);
        model_gguf_free(g);
        free(b.p);
    }
}

Test(model_gguf, bad_magic_and_versions)
{
    quiet();
    for (uint32_t version = 0; version <= 5; version++) {
        buf_t b = {0};
        put_header(&b, version, 0, 0);
        int want = version == 2 || version == 3 ? 0 : MODEL_E_VERSION;
        cr_assert_eq(open_buf(&b), want, "version %u", version);
        b.p[3] = 'X';
        cr_assert_eq(open_buf(&b), MODEL_E_MAGIC);
        free(b.p);
    }
}

Test(model_gguf, huge_counts_and_lengths_are_limits)
{
    quiet();
    buf_t b = {0};
    put_header(&b, 3, 0, 1ull << 60);
    put_kv_u32(&b, "a", 1);
    cr_assert_eq(open_buf(&b), MODEL_E_LIMIT, "kv count");
    free(b.p);

    b = (buf_t){0};
    put_header(&b, 3, 1ull << 40, 0);
    cr_assert_eq(open_buf(&b), MODEL_E_LIMIT, "tensor count");
    free(b.p);

    b = (buf_t){0};
    put_header(&b, 3, 0, 1);
    put_u64(&b, 1ull << 62); /* key length */
    put(&b, "abcdefgh", 8);
    cr_assert_eq(open_buf(&b), MODEL_E_LIMIT, "string length");
    free(b.p);

    b = (buf_t){0};
    put_header(&b, 3, 0, 1);
    put_str(&b, "arr");
    put_u32(&b, MODEL_GGUF_ARRAY);
    put_u32(&b, MODEL_GGUF_UINT8);
    put_u64(&b, UINT64_MAX);
    put(&b, "abcdefgh", 8);
    cr_assert_eq(open_buf(&b), MODEL_E_LIMIT, "array count");
    free(b.p);

    /* A count that the file could hold but the rest cannot: the file was cut short. */
    b = (buf_t){0};
    put_header(&b, 3, 0, 1);
    put_str(&b, "arr");
    put_u32(&b, MODEL_GGUF_ARRAY);
    put_u32(&b, MODEL_GGUF_UINT32);
    put_u64(&b, 10);
    put_u32(&b, 1);
    cr_assert_eq(open_buf(&b), MODEL_E_TRUNCATED, "short array");
    free(b.p);
}

Test(model_gguf, nested_arrays_and_depth_limit)
{
    quiet();
    /* arr[2] of arr[3] of i32, then a string array */
    buf_t b = {0};
    put_header(&b, 3, 0, 2);
    put_str(&b, "nest");
    put_u32(&b, MODEL_GGUF_ARRAY);
    put_u32(&b, MODEL_GGUF_ARRAY);
    put_u64(&b, 2);
    for (int i = 0; i < 2; i++) {
        put_u32(&b, MODEL_GGUF_INT32);
        put_u64(&b, 3);
        for (int j = 0; j < 3; j++) put_u32(&b, (uint32_t)(-(i * 3 + j)));
    }
    put_str(&b, "strs");
    put_u32(&b, MODEL_GGUF_ARRAY);
    put_u32(&b, MODEL_GGUF_STRING);
    put_u64(&b, 2);
    put_str(&b, "x");
    put_str(&b, "");
    model_gguf_t *g;
    cr_assert_eq(model_gguf_open_mem(b.p, b.n, "nest", &g), 0);
    const model_gguf_value_t *v = model_gguf_get_arr(g, "nest", MODEL_GGUF_ARRAY);
    cr_assert(v && v->arr.n == 2);
    cr_assert_eq(v->arr.v[1].arr.type, MODEL_GGUF_INT32);
    int64_t x;
    cr_assert(model_gguf_value_int(&v->arr.v[1].arr.v[2], &x));
    cr_assert_eq(x, -5);
    v = model_gguf_get_arr(g, "strs", MODEL_GGUF_STRING);
    cr_assert_str_eq(v->arr.v[0].str.s, "x");
    cr_assert_eq(v->arr.v[1].str.len, 0);
    model_gguf_free(g);
    free(b.p);

    /* 20 levels of single-element arrays is beyond the depth limit. */
    b = (buf_t){0};
    put_header(&b, 3, 0, 1);
    put_str(&b, "deep");
    put_u32(&b, MODEL_GGUF_ARRAY);
    for (int i = 0; i < 20; i++) {
        put_u32(&b, MODEL_GGUF_ARRAY);
        put_u64(&b, 1);
    }
    put_u32(&b, MODEL_GGUF_UINT8);
    put_u64(&b, 1);
    put(&b, "z", 1);
    cr_assert_eq(open_buf(&b), MODEL_E_LIMIT);
    free(b.p);
}

Test(model_gguf, unknown_value_type)
{
    quiet();
    buf_t b = {0};
    put_header(&b, 3, 0, 1);
    put_str(&b, "k");
    put_u32(&b, 13);
    put_u32(&b, 0);
    cr_assert_eq(open_buf(&b), MODEL_E_TYPE);
    free(b.p);
}

Test(model_gguf, duplicate_key)
{
    quiet();
    buf_t b = {0};
    put_header(&b, 3, 0, 3);
    put_kv_u32(&b, "a.x", 1);
    put_kv_u32(&b, "a.y", 2);
    put_kv_u32(&b, "a.x", 3);
    cr_assert_eq(open_buf(&b), MODEL_E_DUPLICATE);
    free(b.p);
}

Test(model_gguf, bad_alignment_values)
{
    quiet();
    const uint32_t bad[] = {0, 3, 48};
    for (int i = 0; i < 3; i++) {
        buf_t b = {0};
        put_header(&b, 3, 0, 1);
        put_kv_u32(&b, "general.alignment", bad[i]);
        cr_assert_eq(open_buf(&b), MODEL_E_LAYOUT, "alignment %u", bad[i]);
        free(b.p);
    }
    /* A valid non-default alignment moves the data section. */
    buf_t b = {0};
    put_header(&b, 3, 1, 1);
    put_kv_u32(&b, "general.alignment", 64);
    uint64_t ne[1] = {4};
    put_tensor(&b, "t", 1, ne, KERN_F32, 0);
    while (b.n % 64) put(&b, "", 1);
    size_t off = b.n;
    put_data(&b, 16);
    model_gguf_t *g;
    cr_assert_eq(model_gguf_open_mem(b.p, b.n, "a64", &g), 0);
    cr_assert_eq(model_gguf_data_offset(g), off);
    cr_assert_eq(model_gguf_alignment(g), 64);
    model_gguf_free(g);
    free(b.p);
}

/* One tensor with the given fields and enough data for 64 bytes; returns open's result. */
static int one_tensor(uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t offset)
{
    buf_t b = {0};
    put_header(&b, 3, 1, 0);
    put_tensor(&b, "t", n_dims, ne, type, offset);
    put_data(&b, 64);
    int err = open_buf(&b);
    free(b.p);
    return err;
}

Test(model_gguf, tensor_info_errors)
{
    quiet();
    uint64_t ne[5] = {4, 1, 1, 1, 1};
    cr_assert_eq(one_tensor(4, ne, KERN_F32, 0), 0);
    cr_assert_eq(one_tensor(5, ne, KERN_F32, 0), MODEL_E_LIMIT, "n_dims 5");
    cr_assert_eq(one_tensor(0, ne, KERN_F32, 0), MODEL_E_LIMIT, "n_dims 0");
    cr_assert_eq(one_tensor(1, ne, 99, 0), MODEL_E_TYPE, "type 99");
    cr_assert_eq(one_tensor(1, ne, 4, 0), MODEL_E_TYPE, "removed type 4");
    cr_assert_eq(one_tensor(1, ne, 0xffffffffu, 0), MODEL_E_TYPE, "type ~0");
    cr_assert_eq(one_tensor(1, ne, KERN_F32, 16), MODEL_E_LAYOUT, "misaligned");
    cr_assert_eq(one_tensor(1, ne, KERN_F32, 64), MODEL_E_TRUNCATED, "past end");
    cr_assert_eq(one_tensor(1, ne, KERN_F32, UINT64_MAX - 31), MODEL_E_TRUNCATED, "wraps");
    cr_assert_eq(one_tensor(1, ne, KERN_Q8_0, 0), MODEL_E_LAYOUT, "4 not a Q8_0 row");
    uint64_t zero[2] = {4, 0};
    cr_assert_eq(one_tensor(2, zero, KERN_F32, 0), MODEL_E_LIMIT, "dim 0");
    uint64_t neg[2] = {4, UINT64_MAX};
    cr_assert_eq(one_tensor(2, neg, KERN_F32, 0), MODEL_E_LIMIT, "dim -1");
    uint64_t big[3] = {1ull << 30, 1ull << 30, 1ull << 10};
    cr_assert_eq(one_tensor(3, big, KERN_F32, 0), MODEL_E_LIMIT, "element count overflow");
    uint64_t bytes[2] = {1ull << 31, 1ull << 31};
    cr_assert_eq(one_tensor(2, bytes, KERN_F32, 0), MODEL_E_LIMIT, "byte count overflow");
    uint64_t fits[2] = {1ull << 20, 1ull << 20};
    cr_assert_eq(one_tensor(2, fits, KERN_F32, 0), MODEL_E_TRUNCATED, "4 TiB in 64 bytes");
}

Test(model_gguf, overlapping_and_duplicate_tensors)
{
    quiet();
    uint64_t ne[1] = {8}; /* 32 bytes of F32 */
    const struct {
        const char *n1;
        uint64_t off1;
        int want;
    } cases[] = {
        {"b", 32, 0},
        {"b", 0, MODEL_E_LAYOUT},
        {"a", 32, MODEL_E_DUPLICATE},
    };
    for (int i = 0; i < 3; i++) {
        buf_t b = {0};
        put_header(&b, 3, 2, 0);
        put_tensor(&b, "a", 1, ne, KERN_F32, 0);
        put_tensor(&b, cases[i].n1, 1, ne, KERN_F32, cases[i].off1);
        put_data(&b, 64);
        cr_assert_eq(open_buf(&b), cases[i].want, "case %d", i);
        free(b.p);
    }
    /* A bigger tensor overlapping a later one that starts inside it. */
    buf_t b = {0};
    uint64_t ne2[1] = {16};
    put_header(&b, 3, 2, 0);
    put_tensor(&b, "late", 1, ne, KERN_F32, 32);
    put_tensor(&b, "big", 1, ne2, KERN_F32, 0);
    put_data(&b, 96);
    cr_assert_eq(open_buf(&b), MODEL_E_LAYOUT);
    free(b.p);
}

Test(model_gguf, strerror_names_codes)
{
    for (int e = MODEL_E_VOCAB; e <= MODEL_E_MAGIC; e++)
        cr_assert_str_neq(model_strerror(e), "unknown error", "%d", e);
    cr_assert_str_eq(model_gguf_type_name(MODEL_GGUF_FLOAT64), "f64");
}

/* ---- writer (model/gguf_write.c) ---- */

/* A per-process temporary path (Criterion forks per test; pid keeps parallel tests apart). */
static void tmp_path(char *buf, size_t n, const char *tag)
{
    snprintf(buf, n, "/tmp/moemesh-gguf-test-%d-%s.gguf", (int)getpid(), tag);
}

static bool values_equal(const model_gguf_value_t *a, const model_gguf_value_t *b)
{
    if (a->type != b->type) return false;
    switch (a->type) {
    case MODEL_GGUF_FLOAT32: case MODEL_GGUF_FLOAT64:
        return memcmp(&a->f, &b->f, sizeof(double)) == 0; /* bit-exact, NaN-safe */
    case MODEL_GGUF_BOOL: return a->b == b->b;
    case MODEL_GGUF_STRING:
        return a->str.len == b->str.len && !memcmp(a->str.s, b->str.s, (size_t)a->str.len);
    case MODEL_GGUF_ARRAY:
        if (a->arr.type != b->arr.type || a->arr.n != b->arr.n) return false;
        for (uint64_t i = 0; i < a->arr.n; i++)
            if (!values_equal(&a->arr.v[i], &b->arr.v[i])) return false;
        return true;
    default: return a->u == b->u;
    }
}

Test(model_gguf_writer, every_metadata_type_round_trips)
{
    char path[128];
    tmp_path(path, sizeof(path), "meta");
    model_gguf_writer_t *w = model_gguf_writer_new();
    model_gguf_writer_set_u32(w, "t.u32", 4000000000u);
    model_gguf_writer_set_i32(w, "t.i32", -123456);
    model_gguf_writer_set_u64(w, "t.u64", 0xfedcba9876543210ull);
    model_gguf_writer_set_f32(w, "t.f32", -1.5e-7f);
    model_gguf_writer_set_bool(w, "t.bool", true);
    model_gguf_writer_set_str(w, "t.str", "héllo");
    model_gguf_writer_set_str(w, "t.replaced", "first");
    model_gguf_writer_set_u32(w, "t.replaced", 9); /* replaced in place: stays third-last */
    const model_gguf_value_t scalars[] = {
        {.type = MODEL_GGUF_UINT8, .u = 250},   {.type = MODEL_GGUF_INT8, .i = -100},
        {.type = MODEL_GGUF_UINT16, .u = 65000}, {.type = MODEL_GGUF_INT16, .i = -30000},
        {.type = MODEL_GGUF_INT64, .i = INT64_MIN + 7}, {.type = MODEL_GGUF_FLOAT64, .f = 1e300},
    };
    for (int i = 0; i < 6; i++) {
        char key[32];
        snprintf(key, sizeof(key), "s.%s", model_gguf_type_name(scalars[i].type));
        model_gguf_writer_set_value(w, key, &scalars[i]);
    }
    const uint32_t au32[] = {1, 2, 0xffffffffu};
    const float af32[] = {0.5f, -2.0f, 3.25f, 1e-30f};
    const int64_t ai64[] = {-1, INT64_MAX};
    const uint8_t abool[] = {1, 0, 1};
    model_gguf_writer_set_arr(w, "a.u32", MODEL_GGUF_UINT32, au32, 3);
    model_gguf_writer_set_arr(w, "a.f32", MODEL_GGUF_FLOAT32, af32, 4);
    model_gguf_writer_set_arr(w, "a.i64", MODEL_GGUF_INT64, ai64, 2);
    model_gguf_writer_set_arr(w, "a.bool", MODEL_GGUF_BOOL, abool, 3);
    model_gguf_writer_set_arr(w, "a.empty", MODEL_GGUF_INT16, NULL, 0);
    const char *const strs[] = {"a b", "", "Ġthe"};
    model_gguf_writer_set_arr_str(w, "a.str", strs, 3);
    /* arr[2] of (arr[2] of str, arr[1] of str) */
    model_gguf_value_t inner_s[3] = {
        {.type = MODEL_GGUF_STRING, .str = {"x", 1}},
        {.type = MODEL_GGUF_STRING, .str = {"yz", 2}},
        {.type = MODEL_GGUF_STRING, .str = {"w", 1}},
    };
    model_gguf_value_t inner[2] = {
        {.type = MODEL_GGUF_ARRAY, .arr = {MODEL_GGUF_STRING, 2, inner_s}},
        {.type = MODEL_GGUF_ARRAY, .arr = {MODEL_GGUF_STRING, 1, inner_s + 2}},
    };
    model_gguf_value_t nested = {.type = MODEL_GGUF_ARRAY, .arr = {MODEL_GGUF_ARRAY, 2, inner}};
    model_gguf_writer_set_value(w, "a.nested", &nested);
    cr_assert_eq(model_gguf_writer_write(w, path, NULL, NULL), 0);
    model_gguf_writer_free(w);

    model_gguf_t *g;
    cr_assert_eq(model_gguf_open(path, &g), 0);
    cr_assert_eq(model_gguf_kv_count(g), 8 + 6 + 6 + 1 - 1);
    int64_t i;
    double f;
    bool b;
    cr_assert(model_gguf_get_int(g, "t.u32", &i) && i == 4000000000ll);
    cr_assert(model_gguf_get_int(g, "t.i32", &i) && i == -123456);
    cr_assert_not(model_gguf_get_int(g, "t.u64", &i), "above INT64_MAX is not an int64");
    cr_assert_eq(model_gguf_get(g, "t.u64")->u, 0xfedcba9876543210ull);
    cr_assert(model_gguf_get_float(g, "t.f32", &f) && (float)f == -1.5e-7f);
    cr_assert(model_gguf_get_bool(g, "t.bool", &b) && b);
    cr_assert_str_eq(model_gguf_get_str(g, "t.str"), "héllo");
    cr_assert_str_eq(model_gguf_kv(g, 6)->key, "t.replaced");
    cr_assert(model_gguf_get_int(g, "t.replaced", &i) && i == 9);
    for (int k = 0; k < 6; k++) {
        char key[32];
        snprintf(key, sizeof(key), "s.%s", model_gguf_type_name(scalars[k].type));
        cr_assert(values_equal(model_gguf_get(g, key), &scalars[k]), "%s", key);
    }
    const model_gguf_value_t *a = model_gguf_get_arr(g, "a.u32", MODEL_GGUF_UINT32);
    for (int k = 0; k < 3; k++) cr_assert_eq(a->arr.v[k].u, au32[k]);
    a = model_gguf_get_arr(g, "a.f32", MODEL_GGUF_FLOAT32);
    for (int k = 0; k < 4; k++) cr_assert_eq((float)a->arr.v[k].f, af32[k]);
    a = model_gguf_get_arr(g, "a.i64", MODEL_GGUF_INT64);
    for (int k = 0; k < 2; k++) cr_assert_eq(a->arr.v[k].i, ai64[k]);
    a = model_gguf_get_arr(g, "a.bool", MODEL_GGUF_BOOL);
    for (int k = 0; k < 3; k++) cr_assert_eq(a->arr.v[k].b, abool[k] != 0);
    cr_assert_eq(model_gguf_get_arr(g, "a.empty", MODEL_GGUF_INT16)->arr.n, 0);
    a = model_gguf_get_arr(g, "a.str", MODEL_GGUF_STRING);
    for (int k = 0; k < 3; k++) cr_assert_str_eq(a->arr.v[k].str.s, strs[k]);
    cr_assert(values_equal(model_gguf_get(g, "a.nested"), &nested));
    model_gguf_free(g);
    unlink(path);
}

typedef struct {
    const unsigned char *const *data; /* per tensor */
    const size_t *row_bytes;
    uint64_t next_off[16]; /* checks the callback is asked in order */
    int fail_at;           /* tensor index whose fill fails, or -1 */
} fill_ctx_t;

static int fill_from(void *arg, int tensor, uint64_t off, void *buf, size_t len)
{
    fill_ctx_t *c = arg;
    cr_assert_eq(off, c->next_off[tensor], "asked in order");
    cr_assert_eq(len % c->row_bytes[tensor], 0, "whole rows");
    c->next_off[tensor] += len;
    if (tensor == c->fail_at) return -EIO;
    memcpy(buf, c->data[tensor] + off, len);
    return 0;
}

Test(model_gguf_writer, tensors_of_every_type_round_trip)
{
    static const kern_type_t types[] = {
        KERN_F32, KERN_F16, KERN_BF16, KERN_Q4_0, KERN_Q4_1, KERN_Q5_0, KERN_Q5_1,
        KERN_Q8_0, KERN_Q8_1, KERN_Q2_K, KERN_Q3_K, KERN_Q4_K, KERN_Q5_K, KERN_Q6_K, KERN_Q8_K,
    };
    enum { NT = sizeof(types) / sizeof(types[0]) };
    char path[128];
    tmp_path(path, sizeof(path), "tensors");
    uint64_t seed = 99;
    unsigned char *data[NT];
    size_t row_bytes[NT], nbytes[NT];
    int64_t ne[NT][4];
    model_gguf_writer_t *w = model_gguf_writer_new();
    for (int i = 0; i < NT; i++) {
        const kern_type_info_t *ti = kern_type_info(types[i]);
        /* Odd shapes: 3 or 1 blocks per row, 1..4 dims. */
        int n_dims = 1 + i % 4;
        int64_t shape[4] = {ti->block * (i % 2 ? 3 : 1), 7, 3, 2};
        row_bytes[i] = kern_row_bytes(types[i], shape[0]);
        nbytes[i] = row_bytes[i];
        for (int d = 1; d < n_dims; d++) nbytes[i] *= (size_t)shape[d];
        memcpy(ne[i], shape, sizeof(shape));
        data[i] = malloc(nbytes[i]);
        for (size_t k = 0; k < nbytes[i]; k++) data[i][k] = (unsigned char)splitmix(&seed);
        char name[32];
        snprintf(name, sizeof(name), "t%d.%s", i, ti->name);
        int idx = i % 3 == 0 ? model_gguf_writer_add_tensor_data(w, name, types[i], n_dims,
                                                                 shape, data[i])
                             : model_gguf_writer_add_tensor(w, name, types[i], n_dims, shape);
        cr_assert_eq(idx, i);
    }
    fill_ctx_t ctx = {.data = (const unsigned char *const *)data, .row_bytes = row_bytes,
                      .fail_at = -1};
    cr_assert_eq(model_gguf_writer_write(w, path, fill_from, &ctx), 0);
    model_gguf_writer_free(w);

    model_gguf_t *g;
    cr_assert_eq(model_gguf_open(path, &g), 0);
    cr_assert_eq(model_gguf_tensor_count(g), NT);
    for (int i = 0; i < NT; i++) {
        const model_tensor_t *t = model_gguf_tensor(g, i);
        cr_assert_eq(t->type, types[i]);
        cr_assert_eq(t->n_dims, 1 + i % 4);
        for (int d = 0; d < t->n_dims; d++) cr_assert_eq(t->ne[d], ne[i][d]);
        cr_assert_eq(t->nbytes, nbytes[i]);
        cr_assert_eq(memcmp(t->data, data[i], nbytes[i]), 0, "tensor %d bytes", i);
        cr_assert_eq(t->offset % 32, 0);
        free(data[i]);
    }
    cr_assert_eq(model_gguf_file_size(g) % 32, 0, "padding after the last tensor");
    model_gguf_free(g);
    unlink(path);
}

Test(model_gguf_writer, refuses_bad_tensors_and_reports_fill_errors)
{
    quiet();
    model_gguf_writer_t *w = model_gguf_writer_new();
    int64_t ne[5] = {32, 2, 1, 1, 1};
    cr_assert_eq(model_gguf_writer_add_tensor(w, "a", KERN_Q8_0, 2, ne), 0);
    cr_assert_eq(model_gguf_writer_add_tensor(w, "a", KERN_F32, 2, ne), MODEL_E_DUPLICATE);
    cr_assert_eq(model_gguf_writer_add_tensor(w, "b", (kern_type_t)4, 2, ne), MODEL_E_TYPE);
    cr_assert_eq(model_gguf_writer_add_tensor(w, "b", KERN_F32, 5, ne), MODEL_E_LIMIT);
    int64_t odd[1] = {33};
    cr_assert_eq(model_gguf_writer_add_tensor(w, "b", KERN_Q4_K, 1, odd), MODEL_E_LAYOUT);
    int64_t neg[2] = {32, -1};
    cr_assert_eq(model_gguf_writer_add_tensor(w, "b", KERN_F32, 2, neg), MODEL_E_LIMIT);

    char path[128], part[140];
    tmp_path(path, sizeof(path), "fail");
    snprintf(part, sizeof(part), "%s.part", path);
    size_t rb = 34;
    const unsigned char *none[1] = {NULL};
    fill_ctx_t ctx = {.data = none, .row_bytes = &rb, .fail_at = 0};
    cr_assert_eq(model_gguf_writer_write(w, path, fill_from, &ctx), -EIO);
    cr_assert_neq(access(path, F_OK), 0, "no file after a failed write");
    cr_assert_neq(access(part, F_OK), 0, "no partial file either");
    cr_assert_eq(model_gguf_writer_write(w, path, NULL, NULL), -EINVAL);
    model_gguf_writer_set_u32(w, "general.alignment", 24);
    cr_assert_eq(model_gguf_writer_write(w, path, NULL, NULL), MODEL_E_LAYOUT);
    model_gguf_writer_free(w);
}

static int fill_from_gguf(void *arg, int tensor, uint64_t off, void *buf, size_t len)
{
    const model_tensor_t *t = model_gguf_tensor(arg, tensor);
    memcpy(buf, (const unsigned char *)t->data + off, len);
    return 0;
}

/* Copies every kv and tensor of src through the writer into path. */
static void rewrite(const model_gguf_t *src, const char *path)
{
    model_gguf_writer_t *w = model_gguf_writer_new();
    for (int i = 0; i < model_gguf_kv_count(src); i++) {
        const model_gguf_kv_t *kv = model_gguf_kv(src, i);
        model_gguf_writer_set_value(w, kv->key, &kv->val);
    }
    for (int i = 0; i < model_gguf_tensor_count(src); i++) {
        const model_tensor_t *t = model_gguf_tensor(src, i);
        cr_assert_eq(model_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne), i);
    }
    cr_assert_eq(model_gguf_writer_write(w, path, fill_from_gguf, (void *)src), 0);
    model_gguf_writer_free(w);
}

/* Real files re-written are byte-identical: llama.cpp's writer and ours lay files out alike.
 * Vocab-only files end without padding after the header, so for them the reread content must
 * match instead. */
Test(model_gguf_writer, rewrites_real_files_identically, .timeout = 60)
{
    char path[128];
    tmp_path(path, sizeof(path), "rewrite");
    int n_identical = 0;
    for (size_t k = 0; k < sizeof(file_globs) / sizeof(file_globs[0]); k++) {
        glob_t gl;
        cr_assert_eq(glob(file_globs[k], 0, NULL, &gl), 0);
        for (size_t i = 0; i < gl.gl_pathc; i++) {
            model_gguf_t *a, *b;
            cr_assert_eq(model_gguf_open(gl.gl_pathv[i], &a), 0);
            rewrite(a, path);
            cr_assert_eq(model_gguf_open(path, &b), 0);
            cr_assert_eq(model_gguf_kv_count(a), model_gguf_kv_count(b));
            for (int j = 0; j < model_gguf_kv_count(a); j++) {
                cr_assert_str_eq(model_gguf_kv(a, j)->key, model_gguf_kv(b, j)->key);
                cr_assert(values_equal(&model_gguf_kv(a, j)->val, &model_gguf_kv(b, j)->val));
            }
            cr_assert_eq(model_gguf_tensor_count(a), model_gguf_tensor_count(b));
            for (int j = 0; j < model_gguf_tensor_count(a); j++) {
                const model_tensor_t *x = model_gguf_tensor(a, j), *y = model_gguf_tensor(b, j);
                cr_assert_str_eq(x->name, y->name);
                cr_assert_eq(x->offset, y->offset);
                cr_assert_eq(x->nbytes, y->nbytes);
                cr_assert_eq(memcmp(x->data, y->data, x->nbytes), 0);
            }
            if (model_gguf_tensor_count(a) > 0) {
                size_t la, lb;
                unsigned char *pa = slurp(gl.gl_pathv[i], &la), *pb = slurp(path, &lb);
                cr_assert_eq(la, lb, "%s size", gl.gl_pathv[i]);
                cr_assert_eq(memcmp(pa, pb, la), 0, "%s bytes", gl.gl_pathv[i]);
                free(pa);
                free(pb);
                n_identical++;
            }
            model_gguf_free(a);
            model_gguf_free(b);
        }
        globfree(&gl);
    }
    cr_assert_geq(n_identical, 21);
    unlink(path);
}
