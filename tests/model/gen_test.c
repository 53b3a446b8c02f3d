/* Tests for model/gen.c: a tiny model of every architecture and type re-opened with the reader
 * (metadata, tensor names, shapes, types, vocabulary, weight scale), determinism, refusals. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"
#include "wire/wire.h"

static const char *const arches[] = {"qwen3moe", "qwen2moe", "llama", "olmoe"};
static const char *const types[] = {"f32",  "f16",  "bf16", "q8_0", "q4_0", "q4_1",
                                    "q5_0", "q5_1", "q4_k", "q5_k", "q6_k"};

/* Small but odd where the layout allows: 3 layers, 5 experts, vocab 301. K-quants need rows of
 * 256, the others 32. */
static model_gen_params_t tiny(const char *arch, kern_type_t type)
{
    int block = kern_type_info(type)->block;
    int dim = block == 256 ? 256 : 64;
    bool olmoe = strcmp(arch, "olmoe") == 0;
    return (model_gen_params_t){
        .arch = arch, .n_layers = 3, .n_embd = dim, .n_head = 4,
        .n_head_kv = olmoe ? 4 : 2, .head_dim = dim / 4, .n_expert = 5, .n_expert_used = 2,
        .expert_ff = block == 256 ? 256 : 96, .shared_ff = strcmp(arch, "qwen2moe") ? 0 : dim,
        .n_vocab = 301, .type = type, .seed = 7,
    };
}

static void tmp_path(char *buf, size_t n, const char *tag)
{
    snprintf(buf, n, "/tmp/moemesh-gen-test-%d-%s.gguf", (int)getpid(), tag);
}

static void expect_shape(const model_gguf_t *g, const char *name, kern_type_t type, int n_dims,
                         int64_t ne0, int64_t ne1, int64_t ne2)
{
    const model_tensor_t *t = model_gguf_find_tensor(g, name);
    cr_assert(t, "%s present", name);
    cr_assert_eq(t->type, type, "%s type %d", name, t->type);
    cr_assert_eq(t->n_dims, n_dims, "%s dims", name);
    cr_assert(t->ne[0] == ne0 && t->ne[1] == ne1 && t->ne[2] == ne2, "%s shape", name);
}

static int64_t get_int(const model_gguf_t *g, const char *arch, const char *key)
{
    char full[128];
    snprintf(full, sizeof(full), "%s.%s", arch, key);
    int64_t v = -1;
    cr_assert(model_gguf_get_int(g, full, &v), "%s", full);
    return v;
}

/* Sample standard deviation of the dequantized tensor. */
static double tensor_sd(const model_tensor_t *t)
{
    int64_t n = t->ne[0] * t->ne[1] * t->ne[2];
    float *x = malloc((size_t)n * sizeof(float));
    kern_dequantize(t->type, t->data, x, n);
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) s += x[i], s2 += (double)x[i] * x[i];
    free(x);
    double m = s / (double)n;
    return sqrt(s2 / (double)n - m * m);
}

static void check_model(const char *path, const model_gen_params_t *p)
{
    model_gguf_t *g;
    cr_assert_eq(model_gguf_open(path, &g), 0, "%s", path);
    const char *a = p->arch;
    cr_assert_str_eq(model_gguf_get_str(g, "general.architecture"), a);
    cr_assert_eq(get_int(g, a, "block_count"), p->n_layers);
    cr_assert_eq(get_int(g, a, "embedding_length"), p->n_embd);
    cr_assert_eq(get_int(g, a, "attention.head_count"), p->n_head);
    cr_assert_eq(get_int(g, a, "attention.head_count_kv"), p->n_head_kv);
    cr_assert_eq(get_int(g, a, "attention.key_length"), p->head_dim);
    cr_assert_eq(get_int(g, a, "expert_count"), p->n_expert);
    cr_assert_eq(get_int(g, a, "expert_used_count"), p->n_expert_used);
    double eps;
    char key[96];
    snprintf(key, sizeof(key), "%s.attention.layer_norm_rms_epsilon", a);
    cr_assert(model_gguf_get_float(g, key, &eps) && eps > 0 && eps < 1e-4);
    bool qwen2 = !strcmp(a, "qwen2moe"), qwen3 = !strcmp(a, "qwen3moe");
    bool olmoe = !strcmp(a, "olmoe"), llama = !strcmp(a, "llama");
    if (qwen2 || qwen3) cr_assert_eq(get_int(g, a, "expert_feed_forward_length"), p->expert_ff);
    if (qwen2) cr_assert_eq(get_int(g, a, "expert_shared_feed_forward_length"), p->shared_ff);
    if (llama) cr_assert_eq(get_int(g, a, "rope.dimension_count"), p->head_dim);

    /* Tensors: count per layer as llama.cpp expects for each architecture. */
    int per_layer = 10 + (qwen2 ? 7 : 0) + (qwen3 || olmoe ? 2 : 0);
    cr_assert_eq(model_gguf_tensor_count(g), 3 + p->n_layers * per_layer);
    const kern_type_t T = p->type, F = KERN_F32;
    const int64_t d = p->n_embd, q = p->n_head * p->head_dim, kv = p->n_head_kv * p->head_dim;
    expect_shape(g, "token_embd.weight", T, 2, d, p->n_vocab, 1);
    expect_shape(g, "output.weight", T, 2, d, p->n_vocab, 1);
    expect_shape(g, "output_norm.weight", F, 1, d, 1, 1);
    for (int l = 0; l < p->n_layers; l++) {
        char n[96];
#define N(s) (snprintf(n, sizeof(n), "blk.%d." s, l), n)
        expect_shape(g, N("attn_norm.weight"), F, 1, d, 1, 1);
        expect_shape(g, N("attn_q.weight"), T, 2, d, q, 1);
        expect_shape(g, N("attn_k.weight"), T, 2, d, kv, 1);
        expect_shape(g, N("attn_v.weight"), T, 2, d, kv, 1);
        expect_shape(g, N("attn_output.weight"), T, 2, q, d, 1);
        expect_shape(g, N("ffn_norm.weight"), F, 1, d, 1, 1);
        expect_shape(g, N("ffn_gate_inp.weight"), F, 2, d, p->n_expert, 1);
        expect_shape(g, N("ffn_gate_exps.weight"), T, 3, d, p->expert_ff, p->n_expert);
        expect_shape(g, N("ffn_up_exps.weight"), T, 3, d, p->expert_ff, p->n_expert);
        expect_shape(g, N("ffn_down_exps.weight"), T, 3, p->expert_ff, d, p->n_expert);
        if (qwen3) {
            expect_shape(g, N("attn_q_norm.weight"), F, 1, p->head_dim, 1, 1);
            expect_shape(g, N("attn_k_norm.weight"), F, 1, p->head_dim, 1, 1);
        }
        if (olmoe) {
            expect_shape(g, N("attn_q_norm.weight"), F, 1, d, 1, 1);
            expect_shape(g, N("attn_k_norm.weight"), F, 1, d, 1, 1);
        }
        if (qwen2) {
            expect_shape(g, N("attn_q.bias"), F, 1, q, 1, 1);
            expect_shape(g, N("attn_k.bias"), F, 1, kv, 1, 1);
            expect_shape(g, N("attn_v.bias"), F, 1, kv, 1, 1);
            expect_shape(g, N("ffn_gate_inp_shexp.weight"), F, 1, d, 1, 1);
            expect_shape(g, N("ffn_gate_shexp.weight"), T, 2, d, p->shared_ff, 1);
            expect_shape(g, N("ffn_up_shexp.weight"), T, 2, d, p->shared_ff, 1);
            expect_shape(g, N("ffn_down_shexp.weight"), T, 2, p->shared_ff, d, 1);
        }
#undef N
    }
    /* Weights have the scale of a 1/sqrt(fan_in) init: sd 1/sqrt(ne0) within 15% (sampling
     * error of ~10^4 uniforms is ~1%; 4-bit rounding adds up to ~10%). */
    const model_tensor_t *t = model_gguf_find_tensor(g, "blk.1.ffn_down_exps.weight");
    double sd = tensor_sd(t), want = 1.0 / sqrt((double)t->ne[0]);
    cr_assert(fabs(sd - want) < 0.15 * want, "sd %g, want %g", sd, want);

    /* Vocabulary: n_vocab tokens, merges that build tokens from earlier ones, specials last. */
    const model_gguf_value_t *tok = model_gguf_get_arr(g, "tokenizer.ggml.tokens",
                                                       MODEL_GGUF_STRING);
    const model_gguf_value_t *tt = model_gguf_get_arr(g, "tokenizer.ggml.token_type",
                                                      MODEL_GGUF_INT32);
    const model_gguf_value_t *mg = model_gguf_get_arr(g, "tokenizer.ggml.merges",
                                                      MODEL_GGUF_STRING);
    cr_assert(tok && tt && mg);
    cr_assert_eq(tok->arr.n, (uint64_t)p->n_vocab);
    cr_assert_eq(tt->arr.n, (uint64_t)p->n_vocab);
    cr_assert_gt(mg->arr.n, 20);
    cr_assert_str_eq(model_gguf_get_str(g, "tokenizer.ggml.model"), "gpt2");
    cr_assert_str_eq(tok->arr.v[0].str.s, "\xc4\x80", "byte 0 is U+0100");
    cr_assert_str_eq(tok->arr.v[' '].str.s, "\xc4\xa0", "space is U+0120");
    cr_assert_str_eq(tok->arr.v['a'].str.s, "a");
    for (uint64_t m = 0; m < mg->arr.n; m++) {
        const char *s = mg->arr.v[m].str.s, *sp = strchr(s, ' ');
        cr_assert(sp && sp != s && sp[1], "merge '%s'", s);
        char joined[128];
        snprintf(joined, sizeof(joined), "%.*s%s", (int)(sp - s), s, sp + 1);
        cr_assert_str_eq(tok->arr.v[256 + m].str.s, joined, "merge %llu", (unsigned long long)m);
    }
    int64_t bos, eos;
    cr_assert(model_gguf_get_int(g, "tokenizer.ggml.bos_token_id", &bos));
    cr_assert(model_gguf_get_int(g, "tokenizer.ggml.eos_token_id", &eos));
    cr_assert(bos >= 256 + (int64_t)mg->arr.n && bos < p->n_vocab);
    cr_assert(eos >= bos && eos < p->n_vocab);
    cr_assert_eq(tt->arr.v[bos].i, 3, "bos is a control token");
    cr_assert_eq(tt->arr.v[eos].i, 3, "eos is a control token");
    cr_assert_eq(tt->arr.v[p->n_vocab - 1].i, 3);
    cr_assert_eq(tt->arr.v[100].i, 1);
    model_gguf_free(g);
}

Test(model_gen, every_arch_and_type_reads_back, .timeout = 120)
{
    char path[128];
    tmp_path(path, sizeof(path), "all");
    for (size_t a = 0; a < sizeof(arches) / sizeof(arches[0]); a++) {
        for (size_t k = 0; k < sizeof(types) / sizeof(types[0]); k++) {
            int t = model_gen_type_from_name(types[k]);
            cr_assert_geq(t, 0, "%s", types[k]);
            model_gen_params_t p = tiny(arches[a], (kern_type_t)t);
            cr_assert_eq(model_gen_write(&p, path), 0, "%s %s", arches[a], types[k]);
            check_model(path, &p);
        }
    }
    unlink(path);
}

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc(*len);
    cr_assert_eq(fread(p, 1, *len, f), *len);
    fclose(f);
    return p;
}

Test(model_gen, same_parameters_same_bytes)
{
    char a[128], b[128];
    tmp_path(a, sizeof(a), "a");
    tmp_path(b, sizeof(b), "b");
    model_gen_params_t p = tiny("qwen2moe", KERN_Q4_1);
    cr_assert_eq(model_gen_write(&p, a), 0);
    cr_assert_eq(model_gen_write(&p, b), 0);
    size_t la, lb;
    unsigned char *x = slurp(a, &la), *y = slurp(b, &lb);
    cr_assert_eq(la, lb);
    cr_assert_eq(memcmp(x, y, la), 0);
    free(y);
    p.n_threads = 3; /* rows split across threads: same bytes */
    cr_assert_eq(model_gen_write(&p, b), 0);
    y = slurp(b, &lb);
    cr_assert_eq(la, lb);
    cr_assert_eq(memcmp(x, y, la), 0, "threads do not change the bytes");
    free(y);
    p.seed = 8;
    cr_assert_eq(model_gen_write(&p, b), 0);
    y = slurp(b, &lb);
    cr_assert_eq(la, lb, "the seed changes values, not the layout");
    cr_assert_neq(memcmp(x, y, la), 0);
    free(x);
    free(y);
    unlink(a);
    unlink(b);
}

Test(model_gen, refuses_impossible_models)
{
    wire__log_level = -1;
    char path[128];
    tmp_path(path, sizeof(path), "bad");
    model_gen_params_t p = tiny("qwen3moe", KERN_Q8_0);
    p.n_embd = 64;
    p.type = KERN_Q4_K; /* rows of 64 are not whole 256-blocks */
    cr_assert_eq(model_gen_write(&p, path), -EINVAL);
    p = tiny("olmoe", KERN_F32);
    p.n_head_kv = 2;
    cr_assert_eq(model_gen_write(&p, path), -EINVAL, "olmoe needs kv heads = heads");
    p = tiny("qwen2moe", KERN_F32);
    p.shared_ff = 0;
    cr_assert_eq(model_gen_write(&p, path), -EINVAL, "qwen2moe needs a shared expert");
    p = tiny("llama", KERN_F32);
    p.shared_ff = 64;
    cr_assert_eq(model_gen_write(&p, path), -EINVAL);
    p = tiny("gpt2", KERN_F32);
    cr_assert_eq(model_gen_write(&p, path), -EINVAL);
    p = tiny("llama", KERN_F32);
    p.n_expert_used = 6;
    cr_assert_eq(model_gen_write(&p, path), -EINVAL);
    p = tiny("llama", KERN_F32);
    p.n_vocab = 200;
    cr_assert_eq(model_gen_write(&p, path), -EINVAL);
    p = tiny("llama", KERN_Q8_1);
    cr_assert_eq(model_gen_write(&p, path), -EINVAL, "not a type the generator writes");
    cr_assert_neq(access(path, F_OK), 0);
    cr_assert_eq(model_gen_type_from_name("Q5_K"), KERN_Q5_K);
    cr_assert_eq(model_gen_type_from_name("q3_k"), -1);
}

Test(model_gen, large_vocab_is_padded_with_unused_tokens)
{
    char path[128];
    tmp_path(path, sizeof(path), "vocab");
    model_gen_params_t p = tiny("llama", KERN_F32);
    p.n_vocab = 5003;
    cr_assert_eq(model_gen_write(&p, path), 0);
    model_gguf_t *g;
    cr_assert_eq(model_gguf_open(path, &g), 0);
    const model_gguf_value_t *tok = model_gguf_get_arr(g, "tokenizer.ggml.tokens", -1);
    const model_gguf_value_t *tt = model_gguf_get_arr(g, "tokenizer.ggml.token_type", -1);
    const model_gguf_value_t *mg = model_gguf_get_arr(g, "tokenizer.ggml.merges", -1);
    cr_assert_eq(tok->arr.n, 5003);
    uint64_t first_pad = 256 + mg->arr.n;
    cr_assert_lt(first_pad, 5003 - 5, "the text gives fewer merges than 5003 tokens need");
    cr_assert_eq(tt->arr.v[first_pad].i, 5);
    cr_assert_eq(tt->arr.v[5003 - 6].i, 5);
    cr_assert_eq(tt->arr.v[5003 - 5].i, 3);
    /* Every token text is distinct. */
    for (uint64_t i = 0; i < tok->arr.n; i += 97)
        for (uint64_t j = i + 1; j < tok->arr.n; j++)
            cr_assert_str_neq(tok->arr.v[i].str.s, tok->arr.v[j].str.s);
    model_gguf_free(g);
    unlink(path);
}

Test(model_gen, cli_parses_every_option)
{
    wire__log_level = -1;
    char path[128];
    tmp_path(path, sizeof(path), "cli");
    char *argv[] = {"gen", "--arch", "qwen2moe", "--layers", "2", "--dim", "64", "--heads", "2",
                    "--kv-heads", "1", "--head-dim", "48", "--experts", "3", "--top-k", "1",
                    "--expert-ff", "32", "--shared-ff", "96", "--vocab", "290", "--type", "Q8_0",
                    "--seed", "5", "--ctx", "777", "--name", "cli-test", "--threads", "2", "-o",
                    path, NULL};
    cr_assert_eq(model_cli_gen(sizeof(argv) / sizeof(argv[0]) - 1, argv), 0);
    model_gguf_t *g;
    cr_assert_eq(model_gguf_open(path, &g), 0);
    cr_assert_str_eq(model_gguf_get_str(g, "general.name"), "cli-test");
    cr_assert_eq(get_int(g, "qwen2moe", "context_length"), 777);
    cr_assert_eq(get_int(g, "qwen2moe", "attention.key_length"), 48);
    expect_shape(g, "blk.1.attn_q.weight", KERN_Q8_0, 2, 64, 96, 1);
    expect_shape(g, "blk.1.ffn_down_shexp.weight", KERN_Q8_0, 2, 96, 64, 1);
    model_gguf_free(g);
    unlink(path);
    char *bad_type[] = {"gen", "--arch", "llama", "--type", "q9_9", "-o", path, NULL};
    cr_assert_eq(model_cli_gen(7, bad_type), 2);
    char *no_out[] = {"gen", "--arch", "llama", NULL};
    cr_assert_eq(model_cli_gen(3, no_out), 2);
    char *bad_model[] = {"gen", "--arch", "llama", "--type", "f32", "-o", path, NULL};
    cr_assert_eq(model_cli_gen(7, bad_model), 1, "all sizes missing: refused by the generator");
}
