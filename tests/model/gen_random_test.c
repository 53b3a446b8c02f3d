/* Tests for model_gen_write's random_blocks (moemesh-model gen --random-blocks): for every
 * quantized type the generator writes (and the q4_k_m mix, and gpt-oss's MXFP4 experts) the file
 * reads back with the same tensors and types as a float-generated one, every quantized tensor
 * dequantizes to finite values of the size a float-generated file has (sd within a factor of 3
 * of 1/sqrt(fan_in)), its bytes differ from the float-generated file's, the float tensors are
 * the same, the bytes do not depend on the thread count, and it is refused with router_skew. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"
#include "wire/wire.h"

static void tmp_path(char *buf, size_t n, const char *tag)
{
    snprintf(buf, n, "/tmp/moemesh-genrand-test-%d-%s.gguf", (int)getpid(), tag);
}

static model_gen_params_t tiny(const char *arch, kern_type_t type, int block)
{
    const int dim = block == 256 ? 256 : 64;
    return (model_gen_params_t){
        .arch = arch, .n_layers = 3, .n_embd = dim, .n_head = 4, .n_head_kv = 2,
        .head_dim = dim / 4, .n_expert = 4, .n_expert_used = 2,
        .expert_ff = block == 256 ? 256 : 96, .n_vocab = 301, .type = type, .seed = 3,
    };
}

/* Every tensor of a (random blocks) against b (floats quantized): same names, types, shapes;
 * float tensors byte-equal, quantized ones different, finite and of realistic size. */
static void compare(const char *pa, const char *pb, const char *what)
{
    model_gguf_t *a, *b;
    cr_assert_eq(model_gguf_open(pa, &a), 0, "%s", what);
    cr_assert_eq(model_gguf_open(pb, &b), 0, "%s", what);
    cr_assert_eq(model_gguf_tensor_count(a), model_gguf_tensor_count(b));
    int n_quant = 0;
    for (int i = 0; i < model_gguf_tensor_count(a); i++) {
        const model_tensor_t *t = model_gguf_tensor(a, i);
        const model_tensor_t *u = model_gguf_find_tensor(b, t->name);
        cr_assert(u && u->type == t->type && u->nbytes == t->nbytes, "%s %s", what, t->name);
        const bool quant = kern_type_info(t->type)->block > 1;
        if (!quant) {
            cr_assert_eq(memcmp(t->data, u->data, t->nbytes), 0, "%s %s: float tensor", what,
                         t->name);
            continue;
        }
        n_quant++;
        cr_assert_neq(memcmp(t->data, u->data, t->nbytes), 0, "%s %s: random", what, t->name);
        const int64_t n = t->ne[0] * t->ne[1] * t->ne[2];
        float *x = malloc((size_t)n * sizeof(float));
        kern_dequantize(t->type, t->data, x, n);
        double s = 0, s2 = 0;
        for (int64_t k = 0; k < n; k++) {
            cr_assert(isfinite(x[k]), "%s %s[%lld] = %g", what, t->name, (long long)k, x[k]);
            s += x[k], s2 += (double)x[k] * x[k];
        }
        free(x);
        const double m = s / (double)n, sd = sqrt(s2 / (double)n - m * m);
        const double want = 1.0 / sqrt((double)t->ne[0]);
        cr_assert(sd > want / 3 && sd < want * 3, "%s %s: sd %g, float rows give %g", what,
                  t->name, sd, want);
    }
    cr_assert_gt(n_quant, 0, "%s", what);
    model_gguf_free(a);
    model_gguf_free(b);
}

Test(model_gen_random, every_quantized_type_is_valid_and_realistic, .timeout = 120)
{
    static const char *const types[] = {"q8_0", "q4_0", "q4_1", "q5_0",  "q5_1",
                                        "q4_k", "q5_k", "q6_k", "q4_k_m"};
    char pa[128], pb[128];
    tmp_path(pa, sizeof(pa), "a");
    tmp_path(pb, sizeof(pb), "b");
    for (size_t k = 0; k < sizeof(types) / sizeof(types[0]); k++) {
        const int t = model_gen_type_from_name(types[k]);
        cr_assert_geq(t, 0);
        const int block = strcmp(types[k], "q4_k_m") == 0 ? 256 : kern_type_info(t)->block;
        model_gen_params_t p = tiny("qwen3moe", (kern_type_t)t, block);
        cr_assert_eq(model_gen_write(&p, pb), 0, "%s", types[k]);
        p.random_blocks = true;
        cr_assert_eq(model_gen_write(&p, pa), 0, "%s", types[k]);
        compare(pa, pb, types[k]);
    }
    /* gpt-oss: MXFP4 experts beside Q8_0 attention. */
    model_gen_params_t p = tiny("gpt-oss", KERN_Q8_0, 32);
    p.n_head_kv = 4;
    cr_assert_eq(model_gen_write(&p, pb), 0);
    p.random_blocks = true;
    cr_assert_eq(model_gen_write(&p, pa), 0);
    compare(pa, pb, "gpt-oss");
    unlink(pa);
    unlink(pb);
}

Test(model_gen_random, bytes_do_not_depend_on_threads)
{
    char pa[128], pb[128];
    tmp_path(pa, sizeof(pa), "t1");
    tmp_path(pb, sizeof(pb), "t3");
    model_gen_params_t p = tiny("qwen3moe", KERN_Q6_K, 256);
    p.random_blocks = true;
    cr_assert_eq(model_gen_write(&p, pa), 0);
    p.n_threads = 3;
    cr_assert_eq(model_gen_write(&p, pb), 0);
    FILE *fa = fopen(pa, "rb"), *fb = fopen(pb, "rb");
    cr_assert(fa && fb);
    int ca, cb;
    do {
        ca = fgetc(fa), cb = fgetc(fb);
        cr_assert_eq(ca, cb, "files differ");
    } while (ca != EOF);
    fclose(fa), fclose(fb);
    unlink(pa);
    unlink(pb);
}

Test(model_gen_random, refused_with_router_skew)
{
    char pa[128];
    tmp_path(pa, sizeof(pa), "skew");
    model_gen_params_t p = tiny("qwen3moe", KERN_Q4_K, 256);
    p.random_blocks = true;
    p.router_skew = 2;
    cr_assert_eq(model_gen_write(&p, pa), -EINVAL);
    unlink(pa);
}
