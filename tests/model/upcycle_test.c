/* Tests for model/upcycle.c and model/cli_upcycle.c. The references are llama.cpp's own outputs
 * in ../shared/golden: stories260k-f32.gguf (llama2c converter) must come out identical, and
 * stories-moe-f32.gguf identical except for its router, whose generator is not known. Malformed
 * inputs are built by editing copies of the real files. Every test works in its own temporary
 * directory and removes it.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"
#include "wire/wire.h"

#define CKPT "models/stories260K.bin"
#define TOK "models/tok512.bin"
#define GOLD_DENSE "../shared/golden/stories260k-f32.gguf"
#define GOLD_MOE "../shared/golden/stories-moe-f32.gguf"

static char dir[64];
static char paths[8][128];
static int n_paths;

static void setup(void)
{
    strcpy(dir, "/tmp/upcycle-test-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    n_paths = 0;
    wire_log_set_level(WIRE_LOG_ERROR);
}

static void teardown(void)
{
    for (int i = 0; i < n_paths; i++) unlink(paths[i]);
    cr_assert_eq(rmdir(dir), 0, "a test left a file behind in %s", dir);
}

/* A path inside the test's directory, removed at teardown. */
static const char *tmp(const char *name)
{
    cr_assert_lt(n_paths, 8);
    snprintf(paths[n_paths], sizeof(paths[0]), "%s/%s", dir, name);
    return paths[n_paths++];
}

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*len + 64);
    cr_assert_eq(fread(b, 1, *len, f), *len);
    fclose(f);
    return b;
}

static void spill(const char *path, const void *b, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(b, 1, len, f), len);
    fclose(f);
}

static model_gguf_t *open_ok(const char *path)
{
    model_gguf_t *g = NULL;
    cr_assert_eq(model_gguf_open(path, &g), 0, "cannot open %s", path);
    return g;
}

static bool value_eq(const model_gguf_value_t *a, const model_gguf_value_t *b)
{
    if (a->type != b->type) return false;
    switch (a->type) {
    case MODEL_GGUF_STRING:
        return a->str.len == b->str.len && memcmp(a->str.s, b->str.s, a->str.len) == 0;
    case MODEL_GGUF_ARRAY:
        if (a->arr.type != b->arr.type || a->arr.n != b->arr.n) return false;
        for (uint64_t i = 0; i < a->arr.n; i++)
            if (!value_eq(&a->arr.v[i], &b->arr.v[i])) return false;
        return true;
    case MODEL_GGUF_FLOAT32:
    case MODEL_GGUF_FLOAT64: return a->f == b->f;
    case MODEL_GGUF_BOOL: return a->b == b->b;
    default: return a->u == b->u;
    }
}

/* Same keys in the same order with equal values. */
static void assert_same_metadata(const model_gguf_t *got, const model_gguf_t *ref)
{
    cr_assert_eq(model_gguf_kv_count(got), model_gguf_kv_count(ref));
    for (int i = 0; i < model_gguf_kv_count(ref); i++) {
        const model_gguf_kv_t *a = model_gguf_kv(got, i), *b = model_gguf_kv(ref, i);
        cr_assert_str_eq(a->key, b->key, "key %d", i);
        cr_assert(value_eq(&a->val, &b->val), "value of %s", b->key);
    }
}

static bool tensor_eq(const model_tensor_t *a, const model_tensor_t *b)
{
    return a->type == b->type && a->n_dims == b->n_dims &&
           memcmp(a->ne, b->ne, sizeof(a->ne)) == 0 && a->nbytes == b->nbytes &&
           memcmp(a->data, b->data, a->nbytes) == 0;
}

static int upcycle(const char *ckpt, const char *tok, const char *out, int experts, int64_t ctx)
{
    model_upcycle_params_t p = model_upcycle_params_default();
    p.n_experts = experts;
    p.context_length = ctx;
    return model_upcycle(ckpt, tok, out, &p);
}

TestSuite(model_upcycle, .init = setup, .fini = teardown);

Test(model_upcycle, dense_matches_llama_cpp_converter_tensor_for_tensor)
{
    const char *out = tmp("dense.gguf");
    cr_assert_eq(upcycle(CKPT, TOK, out, 0, 0), 0);
    model_gguf_t *g = open_ok(out), *ref = open_ok(GOLD_DENSE);
    cr_assert_eq(model_gguf_tensor_count(g), model_gguf_tensor_count(ref));
    for (int i = 0; i < model_gguf_tensor_count(ref); i++) {
        const model_tensor_t *a = model_gguf_tensor(g, i), *b = model_gguf_tensor(ref, i);
        cr_assert_str_eq(a->name, b->name, "tensor %d", i);
        cr_assert(tensor_eq(a, b), "tensor %s differs", b->name);
    }
    static const char *const arrays[] = {"tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                                         "tokenizer.ggml.token_type"};
    for (int i = 0; i < 3; i++)
        cr_assert(value_eq(model_gguf_get(g, arrays[i]), model_gguf_get(ref, arrays[i])), "%s",
                  arrays[i]);
    int64_t ctx = 0;
    cr_assert(model_gguf_get_int(g, "llama.context_length", &ctx));
    cr_assert_eq(ctx, 512, "the default context is the checkpoint's seq_len");
    model_gguf_free(g);
    model_gguf_free(ref);
}

Test(model_upcycle, dense_with_converter_context_is_the_same_file)
{
    /* llama.cpp's converter writes context 128; with that, the whole file must be identical. */
    const char *out = tmp("dense.gguf");
    cr_assert_eq(upcycle(CKPT, TOK, out, 0, 128), 0);
    size_t la, lb;
    unsigned char *a = slurp(out, &la), *b = slurp(GOLD_DENSE, &lb);
    cr_assert_eq(la, lb);
    cr_assert(memcmp(a, b, la) == 0);
    free(a);
    free(b);
}

Test(model_upcycle, moe_matches_reference_except_the_router)
{
    const char *out = tmp("moe.gguf");
    cr_assert_eq(upcycle(CKPT, TOK, out, 4, 128), 0);
    model_gguf_t *g = open_ok(out), *ref = open_ok(GOLD_MOE);
    assert_same_metadata(g, ref);
    cr_assert_eq(model_gguf_tensor_count(g), model_gguf_tensor_count(ref));
    int routers = 0;
    for (int i = 0; i < model_gguf_tensor_count(ref); i++) {
        const model_tensor_t *a = model_gguf_tensor(g, i), *b = model_gguf_tensor(ref, i);
        cr_assert_str_eq(a->name, b->name, "tensor %d", i);
        if (strstr(b->name, "ffn_gate_inp")) {
            routers++;
            cr_assert(a->type == b->type && a->n_dims == b->n_dims && a->ne[0] == b->ne[0] &&
                      a->ne[1] == b->ne[1], "router %s has the reference's type and shape",
                      b->name);
            continue;
        }
        cr_assert(tensor_eq(a, b), "tensor %s differs", b->name);
    }
    cr_assert_eq(routers, 5);
    model_gguf_free(g);
    model_gguf_free(ref);
}

Test(model_upcycle, router_is_seeded_scaled_and_exact_in_f16)
{
    const char *a_path = tmp("a.gguf"), *b_path = tmp("b.gguf"), *c_path = tmp("c.gguf");
    model_upcycle_params_t p = model_upcycle_params_default();
    cr_assert_eq(model_upcycle(CKPT, TOK, a_path, &p), 0);
    cr_assert_eq(model_upcycle(CKPT, TOK, b_path, &p), 0);
    p.seed = 2;
    cr_assert_eq(model_upcycle(CKPT, TOK, c_path, &p), 0);
    model_gguf_t *a = open_ok(a_path), *b = open_ok(b_path), *c = open_ok(c_path);
    double sum2 = 0;
    int n = 0, same_c = 0;
    for (int l = 0; l < 5; l++) {
        char name[64];
        snprintf(name, sizeof(name), "blk.%d.ffn_gate_inp.weight", l);
        const model_tensor_t *ta = model_gguf_find_tensor(a, name);
        const model_tensor_t *tb = model_gguf_find_tensor(b, name);
        const model_tensor_t *tc = model_gguf_find_tensor(c, name);
        cr_assert(ta && tb && tc && ta->type == KERN_F32 && ta->ne[0] == 64 && ta->ne[1] == 4);
        cr_assert(tensor_eq(ta, tb), "same seed, same router");
        const float *x = ta->data, *z = tc->data;
        for (int i = 0; i < 256; i++, n++) {
            sum2 += (double)x[i] * x[i];
            same_c += x[i] == z[i];
            /* sd 0.25 gives steps of 2^-8: 256 x is an integer and F16 holds x exactly. */
            cr_assert_eq(x[i] * 256, nearbyintf(x[i] * 256), "%g is not a multiple of 2^-8", x[i]);
            cr_assert_eq(kern_fp16_to_fp32(kern_fp32_to_fp16(x[i])), x[i]);
        }
    }
    /* 1280 normals: the sample sd has a relative standard error of 1/sqrt(2n) = 2%; 10% is
     * five of those. */
    double sd = sqrt(sum2 / n);
    cr_assert(fabs(sd - 0.25) < 0.025, "router sd %g, expected 2/sqrt(64) = 0.25", sd);
    cr_assert_lt(same_c, n / 4, "another seed gives another router (%d of %d equal)", same_c, n);
    model_gguf_free(a);
    model_gguf_free(b);
    model_gguf_free(c);
}

/* Checks that expert e of every layer's gate/up is the dense tensor and down is dense * s[e]. */
static void assert_experts(const model_gguf_t *g, const model_gguf_t *dense, int n_exp,
                           const double *s)
{
    static const char *const kinds[3] = {"gate", "up", "down"};
    for (int l = 0; l < 5; l++) {
        for (int k = 0; k < 3; k++) {
            char dn[64], en[64];
            snprintf(dn, sizeof(dn), "blk.%d.ffn_%s.weight", l, kinds[k]);
            snprintf(en, sizeof(en), "blk.%d.ffn_%s_exps.weight", l, kinds[k]);
            const model_tensor_t *d = model_gguf_find_tensor(dense, dn);
            const model_tensor_t *x = model_gguf_find_tensor(g, en);
            cr_assert(d && x && x->n_dims == 3 && x->ne[0] == d->ne[0] && x->ne[1] == d->ne[1] &&
                      x->ne[2] == n_exp, "%s shape", en);
            size_t n = (size_t)(d->ne[0] * d->ne[1]);
            const float *df = d->data, *xf = x->data;
            for (int e = 0; e < n_exp; e++) {
                double f = k == 2 ? s[e] : 1.0;
                for (size_t i = 0; i < n; i++)
                    cr_assert_eq(xf[e * n + i], (float)(df[i] * f), "%s expert %d elem %zu", en,
                                 e, i);
            }
        }
    }
}

Test(model_upcycle, experts_are_copies_with_down_scaled)
{
    const char *dense_path = tmp("dense.gguf"), *three = tmp("three.gguf"), *two = tmp("two.gguf");
    cr_assert_eq(upcycle(CKPT, TOK, dense_path, 0, 0), 0);
    cr_assert_eq(upcycle(CKPT, TOK, three, 3, 0), 0);
    model_gguf_t *dense = open_ok(dense_path), *g = open_ok(three);
    /* Three experts spread evenly over [0.9, 1.1]. */
    double spread[3] = {0.9, 1.0, 1.1};
    for (int e = 0; e < 3; e++)
        cr_assert_float_eq(model_upcycle_default_scale(e, 3), spread[e], 1e-12);
    assert_experts(g, dense, 3, spread);
    int64_t v = 0;
    cr_assert(model_gguf_get_int(g, "llama.expert_count", &v) && v == 3);
    cr_assert(model_gguf_get_int(g, "llama.expert_used_count", &v) && v == 2);
    cr_assert_null(model_gguf_find_tensor(g, "blk.0.ffn_down.weight"), "no dense FFN in a MoE");
    model_gguf_free(g);

    /* Explicit scales through the command line, one expert used. */
    char *argv[] = {"upcycle", CKPT, TOK, "-o", (char *)two, "--experts", "2", "--top-k", "1",
                    "--scales", "0.5,3", "--seed", "7"};
    cr_assert_eq(model_cli_upcycle(13, argv), 0);
    g = open_ok(two);
    double s[2] = {0.5, 3};
    assert_experts(g, dense, 2, s);
    cr_assert(model_gguf_get_int(g, "llama.expert_used_count", &v) && v == 1);
    model_gguf_free(g);
    model_gguf_free(dense);
}

Test(model_upcycle, untied_classifier_comes_from_the_end_of_the_file)
{
    /* A synthetic checkpoint: dim 8, hidden 12, 1 layer, 2 heads, 1 kv head, vocab -259
     * (untied), seq_len 4; every float its own index so any offset error shows. */
    int32_t hdr[7] = {8, 12, 1, 2, 1, -259, 4};
    size_t n = 259 * 8 + 8 + 64 * 2 + 32 * 2 + 8 + 96 * 3 + 8 + 4 * 4 + 259 * 8;
    float *w = malloc(28 + n * 4);
    memcpy(w, hdr, 28);
    float *x = (float *)((char *)w + 28);
    for (size_t i = 0; i < n; i++) x[i] = (float)i;
    const char *ckpt = tmp("syn.bin"), *tok = tmp("syn-tok.bin"), *out = tmp("syn.gguf");
    spill(ckpt, w, 28 + n * 4);
    /* The first 259 records of tok512.bin make a valid 259-token vocabulary. */
    size_t tl;
    unsigned char *t = slurp(TOK, &tl), *p = t + 4;
    for (int i = 0; i < 259; i++) {
        int32_t len;
        memcpy(&len, p + 4, 4);
        p += 8 + len;
    }
    spill(tok, t, (size_t)(p - t));
    cr_assert_eq(upcycle(ckpt, tok, out, 0, 0), 0);
    model_gguf_t *g = open_ok(out);
    const model_tensor_t *o = model_gguf_find_tensor(g, "output.weight");
    const model_tensor_t *e = model_gguf_find_tensor(g, "token_embd.weight");
    const model_tensor_t *k = model_gguf_find_tensor(g, "blk.0.attn_k.weight");
    cr_assert(o && e && k && o->ne[0] == 8 && o->ne[1] == 259 && k->ne[0] == 8 && k->ne[1] == 4);
    cr_assert_eq(((const float *)o->data)[0], (float)(n - 259 * 8));
    cr_assert_eq(((const float *)e->data)[0], 0.0f);
    cr_assert_eq(((const float *)k->data)[0], (float)(259 * 8 + 8 + 64));
    int64_t rope = 0;
    cr_assert(model_gguf_get_int(g, "llama.rope.dimension_count", &rope) && rope == 4);
    model_gguf_free(g);
    free(t);
    free(w);
}

/* Writes the real checkpoint with header field f set to v (f < 0: unchanged) and its size
 * changed by delta bytes, upcycles it and returns the code. No output may remain. */
static int upcycle_edited(int f, int32_t v, long delta)
{
    size_t len;
    unsigned char *b = slurp(CKPT, &len);
    if (f >= 0) memcpy(b + 4 * f, &v, 4);
    const char *ckpt = tmp("bad.bin"), *out = tmp("bad.gguf");
    memset(b + len, 0, 64);
    spill(ckpt, b, (size_t)((long)len + delta));
    free(b);
    int rc = upcycle(ckpt, TOK, out, 4, 0);
    cr_assert_neq(access(out, F_OK), 0, "no output after an error");
    n_paths -= 2;
    unlink(ckpt);
    return rc;
}

Test(model_upcycle, malformed_checkpoints_give_clear_errors)
{
    cr_assert_eq(upcycle_edited(-1, 0, -4), MODEL_E_TRUNCATED);
    cr_assert_eq(upcycle_edited(-1, 0, -(1056540 - 20)), MODEL_E_TRUNCATED, "shorter than header");
    cr_assert_eq(upcycle_edited(-1, 0, 4), MODEL_E_LAYOUT, "bytes beyond the header's size");
    cr_assert_eq(upcycle_edited(5, -512, 0), MODEL_E_TRUNCATED, "untied needs a classifier");
    cr_assert_eq(upcycle_edited(0, 0, 0), MODEL_E_LIMIT);
    cr_assert_eq(upcycle_edited(0, -64, 0), MODEL_E_LIMIT);
    cr_assert_eq(upcycle_edited(0, 1 << 30, 0), MODEL_E_LIMIT);
    cr_assert_eq(upcycle_edited(1, INT32_MAX, 0), MODEL_E_LIMIT);
    cr_assert_eq(upcycle_edited(2, INT32_MAX, 0), MODEL_E_LIMIT);
    cr_assert_eq(upcycle_edited(3, 7, 0), MODEL_E_LIMIT, "dim not divisible by n_heads");
    cr_assert_eq(upcycle_edited(4, 3, 0), MODEL_E_LIMIT, "n_heads not divisible by n_kv_heads");
    cr_assert_eq(upcycle_edited(4, 16, 0), MODEL_E_LIMIT, "more kv heads than heads");
    cr_assert_eq(upcycle_edited(5, INT32_MIN, 0), MODEL_E_LIMIT);
    cr_assert_eq(upcycle_edited(6, -1, 0), MODEL_E_LIMIT);
    cr_assert_eq(upcycle_edited(0, 0x32346b61 /* "ak42" */, 0), MODEL_E_VERSION);
    cr_assert_eq(upcycle(dir, TOK, tmp("x.gguf"), 4, 0) < 0, true, "a directory");
    cr_assert_eq(upcycle("/nonexistent/ckpt.bin", TOK, tmp("y.gguf"), 4, 0), -ENOENT);
}

/* Writes tok512.bin cut or grown by delta bytes, with the length of token 300 set to len300
 * (KEEP: unchanged); returns the upcycle code. */
#define KEEP INT32_MAX
static int upcycle_bad_tok(long delta, int32_t len300)
{
    size_t len;
    unsigned char *b = slurp(TOK, &len), *p = b + 4;
    for (int i = 0; i < 300; i++) {
        int32_t l;
        memcpy(&l, p + 4, 4);
        p += 8 + l;
    }
    if (len300 != KEEP) memcpy(p + 4, &len300, 4);
    memset(b + len, 0, 64);
    const char *tok = tmp("bad-tok.bin"), *out = tmp("bad.gguf");
    spill(tok, b, (size_t)((long)len + delta));
    free(b);
    int rc = upcycle(CKPT, tok, out, 0, 0);
    if (rc == 0) unlink(out);
    else cr_assert_neq(access(out, F_OK), 0, "no output after an error");
    n_paths -= 2;
    unlink(tok);
    return rc;
}

Test(model_upcycle, malformed_tokenizers_give_clear_errors)
{
    cr_assert_eq(upcycle_bad_tok(0, KEEP), 0, "the unedited copy converts");
    cr_assert_eq(upcycle_bad_tok(-1, KEEP), MODEL_E_TRUNCATED);
    cr_assert_eq(upcycle_bad_tok(-6227 + 2, KEEP), MODEL_E_TRUNCATED);
    cr_assert_eq(upcycle_bad_tok(1, KEEP), MODEL_E_VOCAB, "bytes after the last token");
    cr_assert_eq(upcycle_bad_tok(0, 100), MODEL_E_VOCAB, "longer than max_token_length");
    cr_assert_eq(upcycle_bad_tok(0, -1), MODEL_E_VOCAB, "negative length");
    cr_assert_eq(upcycle_bad_tok(0, INT32_MIN), MODEL_E_VOCAB, "most negative length");
}

Test(model_upcycle, bad_parameters_are_refused)
{
    model_upcycle_params_t p = model_upcycle_params_default();
    const char *out = tmp("p.gguf");
    p.n_used = 5;
    cr_assert_eq(model_upcycle(CKPT, TOK, out, &p), -EINVAL);
    p = model_upcycle_params_default();
    p.n_experts = -1;
    cr_assert_eq(model_upcycle(CKPT, TOK, out, &p), -EINVAL);
    double s[4] = {1, 1, NAN, 1};
    p = model_upcycle_params_default();
    p.scales = s;
    cr_assert_eq(model_upcycle(CKPT, TOK, out, &p), -EINVAL);
    cr_assert_neq(access(out, F_OK), 0);
}

Test(model_upcycle, command_line_usage_errors)
{
    const char *out = tmp("cli.gguf");
    char *no_out[] = {"upcycle", CKPT, TOK};
    char *bad_num[] = {"upcycle", CKPT, TOK, "-o", (char *)out, "--experts", "4x"};
    char *bad_scales[] = {"upcycle", CKPT, TOK, "-o", (char *)out, "--scales", "1,2"};
    char *extra[] = {"upcycle", CKPT, TOK, "more", "-o", (char *)out};
    char *no_value[] = {"upcycle", CKPT, TOK, "-o", (char *)out, "--seed"};
    char *too_many_used[] = {"upcycle", CKPT, TOK, "-o", (char *)out, "--experts", "2",
                             "--top-k", "3"};
    char *one_expert[] = {"upcycle", CKPT, TOK, "-o", (char *)out, "--experts", "1"};
    cr_assert_eq(model_cli_upcycle(3, no_out), 2);
    cr_assert_eq(model_cli_upcycle(7, bad_num), 2);
    cr_assert_eq(model_cli_upcycle(7, bad_scales), 2, "2 scales for the default 4 experts");
    cr_assert_eq(model_cli_upcycle(6, extra), 2);
    cr_assert_eq(model_cli_upcycle(6, no_value), 2);
    cr_assert_eq(model_cli_upcycle(9, too_many_used), 1, "valid syntax, refused by the converter");
    cr_assert_neq(access(out, F_OK), 0);
    cr_assert_eq(model_cli_upcycle(7, one_expert), 0, "top-k defaults down to the expert count");
}
