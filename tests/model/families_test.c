/* deepseek2 and glm4moe metadata: every hyper-parameter read from GGUF as the generator and
 * llama.cpp's converter write it (the golden file included), and each inconsistency refused
 * with MODEL_E_ARCH. Bad files are made by rewriting a generated one with one key or tensor
 * changed. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"
#include "wire/wire.h"

static char src[128], dst[128];

static void cleanup(void)
{
    unlink(src);
    unlink(dst);
}

static void setup(void)
{
    snprintf(src, sizeof(src), "/tmp/moemesh-fam-src-%d.gguf", (int)getpid());
    snprintf(dst, sizeof(dst), "/tmp/moemesh-fam-dst-%d.gguf", (int)getpid());
}

TestSuite(model_families, .init = setup, .fini = cleanup);

/* Copies src to dst with key set to an integer (or removed when v < 0), or with string key
 * set when s is given; tensors whose name contains drop are left out. */
struct edit {
    const char *key;
    int64_t v;
    const char *s;
    const char *drop;
    bool add_kv_b; /* adds blk.N.attn_kv_b for every layer (old conversions) */
};
typedef struct edit edit_t;
static void rewrite(const edit_t *e);
static int load_dst(void);

static model_gen_params_t v3(void)
{
    model_gen_params_t p = {.arch = "deepseek2", .n_layers = 4, .n_embd = 64, .n_head = 4,
                            .head_dim = 48, .n_expert = 16, .n_expert_used = 4,
                            .expert_ff = 32, .n_vocab = 300, .type = KERN_Q8_0, .seed = 5,
                            .n_ctx = 8192};
    p.n_dense_lead = 2;
    p.dense_ff = 96;
    p.n_shared = 2;
    p.gating = MODEL_GATING_SIGMOID;
    p.n_groups = 8;
    p.n_group_used = 3;
    p.expert_norm = true;
    p.expert_scale = 2.5f;
    p.rope_dim = 16;
    p.kv_lora_rank = 64;
    p.q_lora_rank = 32;
    p.v_head_dim = 32;
    p.yarn_factor = 40.0f;
    p.yarn_log_mul = 0.707f;
    return p;
}

Test(model_families, deepseek2_v3_hparams)
{
    model_gen_params_t p = v3();
    cr_assert_eq(model_gen_write(&p, src), 0);
    model_t *m = NULL;
    cr_assert_eq(model_load(src, &m), 0);
    const model_hparams_t *hp = &m->hp;
    cr_assert_eq(hp->arch, MODEL_ARCH_DEEPSEEK2);
    cr_assert_eq(hp->kv_lora_rank, 64);
    cr_assert_eq(hp->q_lora_rank, 32);
    cr_assert_eq(hp->mla_head_k, 48);
    cr_assert_eq(hp->mla_head_v, 32);
    cr_assert_eq(hp->n_rot, 16);
    cr_assert_eq(hp->rope_neox, false);
    cr_assert_eq(hp->n_layer_dense_lead, 2);
    cr_assert_eq(hp->n_expert_shared, 2);
    cr_assert_eq(hp->n_ff_shexp, 64);
    cr_assert_eq(hp->gating, MODEL_GATING_SIGMOID);
    cr_assert_eq(hp->n_expert_groups, 8);
    cr_assert_eq(hp->n_group_used, 3);
    cr_assert(hp->expert_norm);
    cr_assert_float_eq(hp->expert_scale, 2.5f, 1e-6);
    cr_assert(hp->rope_yarn);
    cr_assert_float_eq(hp->rope_scale, 1.0f / 40, 1e-7);
    cr_assert_eq(hp->n_ctx_orig, 8192 / 40);
    cr_assert_float_eq(hp->yarn_log_mul, 0.707f, 1e-5);
    cr_assert_float_eq(hp->yarn_ext_factor, 1.0f, 0);
    cr_assert_float_eq(hp->yarn_beta_fast, 32.0f, 0);
    cr_assert_float_eq(hp->yarn_beta_slow, 1.0f, 0);
    for (int l = 0; l < 4; l++) {
        const model_layer_t *ly = &m->layers[l];
        cr_assert(!ly->wq && ly->wq_a && ly->q_a_norm && ly->wq_b && ly->wkv_a_mqa &&
                  ly->kv_a_norm && ly->wk_b && ly->wv_b && ly->wo);
        cr_assert_eq(ly->ffn_gate != NULL, l < 2, "layer %d dense", l);
        cr_assert_eq(ly->gate_exps != NULL, l >= 2);
        cr_assert_eq(ly->exp_probs_b != NULL, l >= 2);
        cr_assert_eq(ly->gate_shexp != NULL, l >= 2);
    }
    model_weights_t w;
    model_weights_info(m->gguf, &w);
    cr_assert_eq(w.kv_latent, 64 + 16);
    cr_assert_eq(w.kv_bytes_per_token, 4 * 80 * 2);
    cr_assert_gt(w.shared_bytes, 0);
    model_free(m);
}

Test(model_families, golden_deepseek2_hparams)
{
    model_t *m = NULL;
    cr_assert_eq(model_load("../shared/golden/deepseek2-tiny-f32.gguf", &m), 0);
    const model_hparams_t *hp = &m->hp;
    cr_assert_eq(hp->kv_lora_rank, 32);
    cr_assert_eq(hp->q_lora_rank, 0);
    cr_assert_eq(hp->mla_head_k, 32);
    cr_assert_eq(hp->mla_head_v, 16);
    cr_assert_eq(hp->n_rot, 16);
    cr_assert_eq(hp->n_layer_dense_lead, 1);
    cr_assert_eq(hp->n_expert_shared, 2);
    cr_assert_eq(hp->gating, MODEL_GATING_SOFTMAX);
    cr_assert_eq(hp->expert_norm, false);
    cr_assert_float_eq(hp->expert_scale, 2.5f, 0);
    cr_assert_eq(hp->n_expert_groups, 1);
    cr_assert(!hp->rope_yarn);
    cr_assert_not_null(m->layers[0].wq);
    cr_assert_null(m->layers[1].exp_probs_b);
    model_free(m);
}

Test(model_families, glm4moe_hparams_and_nextn_layers)
{
    model_gen_params_t p = {.arch = "glm4moe", .n_layers = 3, .n_embd = 64, .n_head = 4,
                            .n_head_kv = 2, .head_dim = 32, .n_expert = 8,
                            .n_expert_used = 2, .expert_ff = 32, .n_vocab = 300,
                            .type = KERN_F32, .seed = 2};
    p.n_dense_lead = 1;
    p.n_shared = 1;
    p.expert_norm = true;
    p.rope_dim = 16;
    cr_assert_eq(model_gen_write(&p, src), 0);
    model_t *m = NULL;
    cr_assert_eq(model_load(src, &m), 0);
    cr_assert_eq(m->hp.arch, MODEL_ARCH_GLM4MOE);
    cr_assert_eq(m->hp.n_layer, 3);
    cr_assert_eq(m->hp.n_rot, 16);
    cr_assert(m->hp.rope_neox);
    cr_assert_eq(m->hp.gating, MODEL_GATING_SIGMOID);
    cr_assert_eq(m->hp.kv_lora_rank, 0);
    cr_assert_not_null(m->layers[0].bq);
    cr_assert_not_null(m->layers[2].exp_probs_b);
    model_free(m);
    /* GLM-4.5 files end with multi-token-prediction blocks llama.cpp does not run. */
    const edit_t e = {.key = "glm4moe.nextn_predict_layers", .v = 1};
    rewrite(&e);
    cr_assert_eq(model_load(dst, &m), 0);
    cr_assert_eq(m->hp.n_layer, 2);
    model_free(m);
    const edit_t all = {.key = "glm4moe.nextn_predict_layers", .v = 3};
    rewrite(&all);
    cr_assert_eq(load_dst(), MODEL_E_ARCH);
    const edit_t sig = {.key = "glm4moe.expert_gating_func", .v = -1}; /* absent: sigmoid */
    rewrite(&sig);
    cr_assert_eq(model_load(dst, &m), 0);
    cr_assert_eq(m->hp.gating, MODEL_GATING_SIGMOID);
    model_free(m);
}

static void rewrite(const edit_t *e)
{
    model_gguf_t *g = NULL;
    cr_assert_eq(model_gguf_open(src, &g), 0);
    model_gguf_writer_t *w = model_gguf_writer_new();
    for (int i = 0; i < model_gguf_kv_count(g); i++) {
        const model_gguf_kv_t *kv = model_gguf_kv(g, i);
        if (e->key && strcmp(kv->key, e->key) == 0) continue;
        model_gguf_writer_set_value(w, kv->key, &kv->val);
    }
    if (e->key && e->s) model_gguf_writer_set_str(w, e->key, e->s);
    else if (e->key && e->v >= 0) model_gguf_writer_set_u32(w, e->key, (uint32_t)e->v);
    for (int i = 0; i < model_gguf_tensor_count(g); i++) {
        const model_tensor_t *t = model_gguf_tensor(g, i);
        if (e->drop && strstr(t->name, e->drop)) continue;
        cr_assert_geq(model_gguf_writer_add_tensor_data(w, t->name, t->type, t->n_dims, t->ne,
                                                        t->data), 0);
        if (e->add_kv_b && strstr(t->name, "attn_kv_a_norm")) {
            char name[64];
            int l = atoi(t->name + 4);
            snprintf(name, sizeof(name), "blk.%d.attn_kv_b.weight", l);
            int64_t ne[2] = {t->ne[0], 4 * 48};
            float *zero = calloc((size_t)(ne[0] * ne[1]), sizeof(float));
            cr_assert_geq(model_gguf_writer_add_tensor_data(w, name, KERN_F32, 2, ne, zero), 0);
            free(zero);
        }
    }
    cr_assert_eq(model_gguf_writer_write(w, dst, NULL, NULL), 0);
    model_gguf_writer_free(w);
    model_gguf_free(g);
}

static int load_dst(void)
{
    model_t *m = NULL;
    int err = model_load(dst, &m);
    model_free(m);
    return err;
}

Test(model_families, refusals)
{
    model_gen_params_t p = v3();
    p.type = KERN_F32;
    cr_assert_eq(model_gen_write(&p, src), 0);
    const edit_t bad[] = {
        {.key = "deepseek2.expert_gating_func", .v = 3},
        {.key = "deepseek2.expert_group_count", .v = 5},      /* 16 experts in 5 groups */
        {.key = "deepseek2.expert_group_used_count", .v = 9}, /* more than 8 groups */
        {.key = "deepseek2.leading_dense_block_count", .v = 9},
        {.key = "deepseek2.attention.kv_lora_rank", .v = -1}, /* missing */
        {.key = "deepseek2.attention.kv_lora_rank", .v = 48}, /* shapes disagree */
        {.key = "deepseek2.attention.key_length_mla", .v = 16}, /* no nope part */
        {.key = "deepseek2.rope.scaling.type", .s = "longrope"},
        {.drop = "attn_k_b", .add_kv_b = true},                /* attn_kv_b of wrong rows */
        {.drop = "attn_q_a_norm"},
        {.drop = "ffn_gate_inp"},
        {.drop = "shexp"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rewrite(&bad[i]);
        cr_expect_eq(load_dst(), MODEL_E_ARCH, "edit %zu (%s %s) was accepted", i,
                     bad[i].key ? bad[i].key : "drop", bad[i].drop ? bad[i].drop : "");
    }
    /* Control: an unchanged copy loads. */
    rewrite(&(edit_t){0});
    cr_assert_eq(load_dst(), 0);
}

Test(model_families, generator_refusals)
{
    model_gen_params_t p = v3();
    p.n_groups = 3; /* 16 experts do not split in 3 */
    cr_assert_eq(model_gen_write(&p, src), -EINVAL);
    p = v3();
    p.kv_lora_rank = 0;
    cr_assert_eq(model_gen_write(&p, src), -EINVAL);
    p = v3();
    p.arch = "qwen3moe";
    p.n_head_kv = 2;
    cr_assert_eq(model_gen_write(&p, src), -EINVAL, "family options on another arch");
    p = v3();
    p.rope_dim = 48; /* no nope part left */
    cr_assert_eq(model_gen_write(&p, src), -EINVAL);
}

Test(model_families, yarn_without_log_multiplier)
{
    /* No multiplier: ggml's YaRN magnitude 1 + 0.1 ln(factor) on the rotated part. */
    model_gen_params_t p = v3();
    p.yarn_log_mul = 0;
    p.yarn_factor = 16;
    cr_assert_eq(model_gen_write(&p, src), 0);
    const edit_t e = {.key = "deepseek2.rope.scaling.yarn_log_multiplier", .v = -1};
    rewrite(&e);
    model_t *m = NULL;
    cr_assert_eq(model_load(dst, &m), 0);
    cr_assert(m->hp.rope_yarn);
    cr_assert_float_eq(m->hp.yarn_log_mul, 0.0f, 0);
    cr_assert_float_eq(m->hp.yarn_attn_factor, 1.0f + 0.1f * logf(16.0f), 1e-6);
    model_free(m);
}
