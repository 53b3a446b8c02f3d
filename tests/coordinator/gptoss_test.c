/* gpt-oss: attention sinks, sliding-window attention on the even layers, q/k/v/o biases, YaRN
 * with NEOX pairs, a biased router with a softmax over the top-k logits, MXFP4 experts with
 * bias rows and the clamped swiglu_oai; the harmony chat template; the loader's refusals.
 *
 * No llama.cpp vectors exist for gpt-oss here, so the engine is compared with a naive forward
 * pass written in this file from the published architecture (llama.cpp's openai-moe graph), in
 * double precision over the stored weights. Like llama.cpp, the engine rounds the activations
 * that meet an MXFP4 matrix to Q8_0 first; the reference does the same (kern_quantize_act,
 * tested in tests/kernels), so the remaining differences are f32 arithmetic and the rare Q8_0
 * rounding flip where f32 and double land on either side of a step: measured 1.6e-6 of the
 * logits' standard deviation, allowed 1e-4. Greedy tokens must match exactly, locally and over
 * two real expert nodes on 127.0.0.1.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/coord.h"
#include "kernels/kern-int.h"
#include "naive.h"
#include "tlogits.h"
#include "tproc.h"
#include "wire/wire.h"

static char oss_path[128], oss_bad[128];

static void oss_cleanup(void)
{
    if (oss_path[0]) unlink(oss_path);
    if (oss_bad[0]) unlink(oss_bad);
    oss_path[0] = oss_bad[0] = 0;
}

TestSuite(gptoss, .fini = oss_cleanup);

/* 3 layers (0 and 2 on a window of 5), GQA 4:2, 8 experts top-3, YaRN factor 8. */
static model_gen_params_t oss_params(void)
{
    model_gen_params_t p = {.arch = "gpt-oss", .n_layers = 3, .n_embd = 64, .n_head = 4,
                            .n_head_kv = 2, .head_dim = 16, .n_expert = 8, .n_expert_used = 3,
                            .expert_ff = 96, .n_vocab = 320, .type = KERN_F32, .seed = 11,
                            .n_ctx = 4096};
    p.sliding_window = 5;
    p.yarn_factor = 8.0f;
    return p;
}

static model_t *oss_load(const model_gen_params_t *p)
{
    snprintf(oss_path, sizeof(oss_path), "/tmp/moemesh-gptoss-%d.gguf", (int)getpid());
    cr_assert_eq(model_gen_write(p, oss_path), 0);
    model_t *m = NULL;
    cr_assert_eq(model_load(oss_path, &m), 0);
    return m;
}

/* ---------------------------------------------------------------- naive reference */

/* What the reference leaves out, to show the test notices each feature. */
typedef struct {
    bool no_window, no_sinks, no_expert_bias;
} ablate_t;

static const float *Fd(const model_tensor_t *t) { return t ? (const float *)t->data : NULL; }

/* x (n) rounded through Q8_0 blocks, as llama.cpp does before a product with MXFP4 rows. */
static void q8_round(double *x, int n)
{
    float *f = calloc((size_t)n, sizeof(float));
    kern_block_q8_0 *q = malloc(sizeof(*q) * (n / 32));
    for (int i = 0; i < n; i++) f[i] = (float)x[i];
    kern_quantize_act(KERN_Q8_0, f, q, n);
    kern_dequantize(KERN_Q8_0, q, f, n);
    for (int i = 0; i < n; i++) x[i] = f[i];
    free(f), free(q);
}

/* out (T, D): attention block of layer il over the normalised inputs x (T, D). */
static void ref_attention(const model_t *m, int il, const double *x, int T, double *out,
                          ablate_t ab)
{
    const model_hparams_t *hp = &m->hp;
    const model_layer_t *ly = &m->layers[il];
    const int D = hp->n_embd, H = hp->n_head, KV = hp->n_head_kv, hd = hp->head_dim;
    double *q = malloc(sizeof(double) * T * H * hd), *k = malloc(sizeof(double) * T * KV * hd);
    double *v = malloc(sizeof(double) * T * KV * hd), *att = malloc(sizeof(double) * H * hd);
    double *sc = malloc(sizeof(double) * T);
    for (int t = 0; t < T; t++) {
        double *qt = q + (size_t)t * H * hd, *kt = k + (size_t)t * KV * hd;
        double *vt = v + (size_t)t * KV * hd;
        naive_matvec(qt, Fd(ly->wq), H * hd, D, x + (size_t)t * D);
        naive_matvec(kt, Fd(ly->wk), KV * hd, D, x + (size_t)t * D);
        naive_matvec(vt, Fd(ly->wv), KV * hd, D, x + (size_t)t * D);
        for (int i = 0; i < H * hd; i++) qt[i] += Fd(ly->bq)[i];
        for (int i = 0; i < KV * hd; i++) kt[i] += Fd(ly->bk)[i], vt[i] += Fd(ly->bv)[i];
        for (int h = 0; h < H; h++) naive_rope(hp, qt + h * hd, hp->n_rot, t, true);
        for (int h = 0; h < KV; h++) naive_rope(hp, kt + h * hd, hp->n_rot, t, true);
    }
    /* llama.cpp's pattern: even layers see the window's n_swa latest positions. */
    const bool swa = il % 2 == 0 && !ab.no_window;
    for (int t = 0; t < T; t++) {
        const int lo = swa && t + 1 > hp->n_swa ? t + 1 - hp->n_swa : 0;
        for (int h = 0; h < H; h++) {
            const int kh = h / (H / KV);
            const double sink = ab.no_sinks ? -INFINITY : Fd(ly->attn_sinks)[h];
            double mx = sink, sum = 0;
            for (int j = lo; j <= t; j++) {
                double s = 0;
                for (int i = 0; i < hd; i++)
                    s += q[((size_t)t * H + h) * hd + i] * k[((size_t)j * KV + kh) * hd + i];
                sc[j] = s / sqrt((double)hd);
                mx = fmax(mx, sc[j]);
            }
            sum = exp(sink - mx);
            for (int j = lo; j <= t; j++) sum += (sc[j] = exp(sc[j] - mx));
            for (int c = 0; c < hd; c++) {
                double o = 0;
                for (int j = lo; j <= t; j++) o += sc[j] * v[((size_t)j * KV + kh) * hd + c];
                att[h * hd + c] = o / sum;
            }
        }
        naive_matvec(out + (size_t)t * D, Fd(ly->wo), D, H * hd, att);
        for (int d = 0; d < D; d++) out[(size_t)t * D + d] += Fd(ly->bo)[d];
    }
    free(q), free(k), free(v), free(att), free(sc);
}

/* Rows [e * rows, (e + 1) * rows) of an MXFP4 expert tensor, dequantized. */
static void expert_rows(const model_tensor_t *t, int e, float *out)
{
    kern_dequantize(t->type, (const uint8_t *)t->data + model_expert_stride(t) * (size_t)e, out,
                    t->ne[0] * t->ne[1]);
}

/* out (D): the MoE block of layer il for one normalised input x (D). */
static void ref_moe(const model_t *m, int il, const double *x, double *out, ablate_t ab)
{
    const model_hparams_t *hp = &m->hp;
    const model_layer_t *ly = &m->layers[il];
    const int D = hp->n_embd, E = hp->n_expert, K = hp->n_expert_used, F = hp->n_ff_exp;
    double logit[64], w[16], xr[1024], g[1024], u[1024], y[1024];
    int ids[16];
    naive_matvec(logit, Fd(ly->gate_inp), E, D, x);
    for (int e = 0; e < E; e++) logit[e] += Fd(ly->gate_inp_b)[e];
    /* top-k of the logits (lower id on ties), softmax over the k chosen */
    bool used[64] = {0};
    for (int j = 0; j < K; j++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (!used[e] && (best < 0 || logit[e] > logit[best])) best = e;
        used[best] = true;
        ids[j] = best;
    }
    double mx = logit[ids[0]], sum = 0;
    for (int j = 0; j < K; j++) sum += (w[j] = exp(logit[ids[j]] - mx));
    for (int j = 0; j < K; j++) w[j] /= sum;
    memcpy(xr, x, sizeof(double) * D);
    q8_round(xr, D);
    float *wg = malloc(sizeof(float) * F * D), *wu = malloc(sizeof(float) * F * D);
    float *wd = malloc(sizeof(float) * D * F);
    memset(out, 0, sizeof(double) * D);
    for (int j = 0; j < K; j++) {
        const int e = ids[j];
        expert_rows(ly->gate_exps, e, wg);
        expert_rows(ly->up_exps, e, wu);
        expert_rows(ly->down_exps, e, wd);
        naive_matvec(g, wg, F, D, xr);
        naive_matvec(u, wu, F, D, xr);
        for (int i = 0; i < F && !ab.no_expert_bias; i++) {
            g[i] += Fd(ly->gate_exps_b)[(size_t)e * F + i];
            u[i] += Fd(ly->up_exps_b)[(size_t)e * F + i];
        }
        for (int i = 0; i < F; i++) {
            const double gc = fmin(g[i], 7.0), uc = fmax(fmin(u[i], 7.0), -7.0);
            g[i] = gc / (1 + exp(-1.702 * gc)) * (uc + 1);
        }
        q8_round(g, F);
        naive_matvec(y, wd, D, F, g);
        for (int d = 0; d < D; d++)
            out[d] += w[j] * (y[d] + (ab.no_expert_bias ? 0 : Fd(ly->down_exps_b)[(size_t)e * D + d]));
    }
    free(wg), free(wu), free(wd);
}

/* logits (T, V) of ids (T) in double precision. */
static void ref_forward(const model_t *m, const int32_t *ids, int T, double *logits, ablate_t ab)
{
    const model_hparams_t *hp = &m->hp;
    const int D = hp->n_embd;
    double *x = malloc(sizeof(double) * T * D), *xn = malloc(sizeof(double) * T * D);
    double *o = malloc(sizeof(double) * T * D);
    for (int t = 0; t < T; t++)
        for (int d = 0; d < D; d++) x[t * D + d] = Fd(m->tok_embd)[(size_t)ids[t] * D + d];
    for (int il = 0; il < hp->n_layer; il++) {
        const model_layer_t *ly = &m->layers[il];
        for (int t = 0; t < T; t++)
            naive_rmsnorm(xn + t * D, x + t * D, Fd(ly->attn_norm), D, hp->rms_eps);
        ref_attention(m, il, xn, T, o, ab);
        for (int i = 0; i < T * D; i++) x[i] += o[i];
        for (int t = 0; t < T; t++) {
            naive_rmsnorm(xn + t * D, x + t * D, Fd(ly->ffn_norm), D, hp->rms_eps);
            ref_moe(m, il, xn + t * D, o + t * D, ab);
        }
        for (int i = 0; i < T * D; i++) x[i] += o[i];
    }
    for (int t = 0; t < T; t++) {
        naive_rmsnorm(xn + t * D, x + t * D, Fd(m->output_norm), D, hp->rms_eps);
        naive_matvec(logits + (size_t)t * hp->n_vocab, Fd(m->output), hp->n_vocab, D, xn + t * D);
    }
    free(x), free(xn), free(o);
}

/* ---------------------------------------------------------------- engine */

#define OSS_T 24
#define OSS_PROMPT 8

static void oss_ids(int32_t *ids, int n, int V) { tlogits_ids(ids, n, 777, V - 16); }

Test(gptoss, loads_hyper_parameters)
{
    model_gen_params_t p = oss_params();
    model_t *m = oss_load(&p);
    const model_hparams_t *hp = &m->hp;
    cr_assert_eq(hp->arch, MODEL_ARCH_GPTOSS);
    cr_assert_eq(hp->n_swa, 5);
    cr_assert(model_layer_is_swa(hp, 0) && !model_layer_is_swa(hp, 1) &&
              model_layer_is_swa(hp, 2));
    cr_assert_eq(hp->gating, MODEL_GATING_SOFTMAX_WEIGHT);
    cr_assert(hp->rope_yarn && hp->rope_neox);
    cr_assert_eq(hp->n_ctx_orig, 512);
    cr_assert_float_eq(hp->yarn_attn_factor, 1.0f + 0.1f * logf(8.0f), 1e-6f);
    cr_assert_eq(hp->n_ff_exp, 96);
    for (int il = 0; il < 3; il++) {
        const model_layer_t *ly = &m->layers[il];
        cr_assert(ly->attn_sinks && ly->bo && ly->bq && ly->gate_inp_b && ly->gate_exps_b &&
                  ly->up_exps_b && ly->down_exps_b);
        cr_assert_eq(ly->gate_exps->type, KERN_MXFP4);
    }
    model_free(m);
}

static void check_reference(bool kv_f16, double tol)
{
    model_gen_params_t p = oss_params();
    model_t *m = oss_load(&p);
    const int V = m->hp.n_vocab;
    int32_t ids[OSS_T], greedy[OSS_T];
    oss_ids(ids, OSS_T, V);
    double *ref = malloc(sizeof(double) * OSS_T * V);
    float *out = malloc(sizeof(float) * OSS_T * V), *steps = malloc(sizeof(float) * OSS_T * V);
    ref_forward(m, ids, OSS_T, ref, (ablate_t){0});
    kern_pool_t *pool = kern_pool_new(2);
    coord_experts_t *ex = coord_experts_local_new(m, pool, OSS_T);
    tlogits_run(m, ex, pool, (tlogits_opts_t){.kv_f16 = kv_f16, .steps = steps}, ids, OSS_T,
                OSS_PROMPT, out, greedy);
    double w = tlogits_err(ref, out, OSS_T, V, 0, NULL), ws = tlogits_err(ref, steps, OSS_T, V, 0, NULL);
    cr_log_info("gpt-oss%s: engine vs naive reference: worst %.3g sd (batch), %.3g sd (one token "
                "per call)", kv_f16 ? " (f16 cache)" : "", w, ws);
    cr_expect_leq(w, tol, "engine differs from the naive reference by %.3g sd", w);
    cr_expect_leq(ws, tol, "one-token decode differs from the naive reference by %.3g sd", ws);
    if (!kv_f16) {
        /* Each feature moves the logits far beyond the tolerance: leaving it out of the
         * reference would fail the comparison above. */
        const ablate_t abl[] = {{.no_window = true}, {.no_sinks = true}, {.no_expert_bias = true}};
        const char *what[] = {"sliding window", "sinks", "expert biases"};
        double *alt = malloc(sizeof(double) * OSS_T * V);
        for (int a = 0; a < 3; a++) {
            ref_forward(m, ids, OSS_T, alt, abl[a]);
            double d = tlogits_err(alt, out, OSS_T, V, 0, NULL);
            cr_expect_gt(d, 100 * tol, "without %s the reference is only %.3g sd away", what[a],
                         d);
        }
        free(alt);
    }
    coord_experts_free(ex);
    kern_pool_free(pool);
    free(ref), free(out), free(steps);
    model_free(m);
}

Test(gptoss, matches_naive_reference, .timeout = 120) { check_reference(false, 1e-4); }

/* An f16 cache rounds keys, values and queries to 11 significant bits (5e-4 relative). That
 * alone would stay near 1e-3 sd, but it moves the inputs of every later Q8_0 rounding, and
 * each of the thousands of activations then rounds independently of the reference's: a flip
 * is one step (1/127 of its block's largest value). Measured 0.046 sd at worst over the 7680
 * logits; allowed 0.1. */
Test(gptoss, f16_cache_close_to_naive_reference, .timeout = 120) { check_reference(true, 0.1); }

Test(gptoss, micro_batches_and_slots_agree, .timeout = 120)
{
    /* The sliding window keys on each token's own position: a batch split into micro-batches,
     * and a second slot holding another sequence, give the logits of one plain run. */
    model_gen_params_t p = oss_params();
    model_t *m = oss_load(&p);
    const int V = m->hp.n_vocab, T = OSS_T;
    int32_t ids[2 * OSS_T], pos[2 * OSS_T], slot[2 * OSS_T];
    bool want[2 * OSS_T];
    oss_ids(ids, T, V);
    for (int i = 0; i < T; i++) ids[T + i] = (ids[i] * 7 + 3) % (V - 16);
    kern_pool_t *pool = kern_pool_new(2);
    coord_experts_t *ex = coord_experts_local_new(m, pool, 2 * T);
    float *a = malloc(sizeof(float) * 2 * T * V), *b = malloc(sizeof(float) * 2 * T * V);
    for (int run = 0; run < 2; run++) {
        coord_engine_params_t ep = coord_engine_params_default();
        ep.n_ctx = T + 4;
        ep.n_batch = 2 * T;
        ep.n_slots = 2;
        ep.n_micro = run == 0 ? 1 : 3;
        coord_engine_t *e = coord_engine_new(m, ex, pool, &ep);
        cr_assert_not_null(e);
        /* run 0: the two sequences one after the other; run 1: interleaved, one batch */
        for (int i = 0; i < 2 * T; i++) {
            int s = run == 0 ? i / T : i % 2, t = run == 0 ? i % T : i / 2;
            slot[i] = s, pos[i] = t, want[i] = true;
            ids[i] = ids[i]; /* token order below */
        }
        int32_t tok[2 * OSS_T];
        for (int i = 0; i < 2 * T; i++) tok[i] = ids[slot[i] * T + pos[i]];
        coord_batch_t bt = {.n = 2 * T, .tok = tok, .pos = pos, .slot = slot, .want = want};
        float *out = run == 0 ? a : b;
        cr_assert_eq(coord_engine_decode(e, &bt, out), 0);
        if (run == 1) {
            /* reorder b to run 0's order: (slot, pos) */
            float *tmp = malloc(sizeof(float) * 2 * T * V);
            for (int i = 0; i < 2 * T; i++)
                memcpy(tmp + (size_t)(slot[i] * T + pos[i]) * V, b + (size_t)i * V,
                       sizeof(float) * V);
            memcpy(b, tmp, sizeof(float) * 2 * T * V);
            free(tmp);
        }
        coord_engine_free(e);
    }
    double worst = 0;
    for (int i = 0; i < 2 * T * V; i++) worst = fmax(worst, fabs(a[i] - b[i]));
    cr_assert_leq(worst, 1e-4, "interleaved micro-batched run differs by %g", worst);
    free(a), free(b);
    coord_experts_free(ex);
    kern_pool_free(pool);
    model_free(m);
}

/* ---------------------------------------------------------------- loader refusals */

/* Copies the generated file with key `drop_key` set to u32 value (when set_key) and tensor
 * `drop` left out, then tries to load it. */
static int load_altered(const model_t *m, const char *set_key, uint32_t val, const char *drop)
{
    snprintf(oss_bad, sizeof(oss_bad), "/tmp/moemesh-gptoss-bad-%d.gguf", (int)getpid());
    const model_gguf_t *g = m->gguf;
    model_gguf_writer_t *w = model_gguf_writer_new();
    for (int i = 0; i < model_gguf_kv_count(g); i++) {
        const model_gguf_kv_t *kv = model_gguf_kv(g, i);
        model_gguf_writer_set_value(w, kv->key, &kv->val);
    }
    if (set_key) model_gguf_writer_set_u32(w, set_key, val);
    for (int i = 0; i < model_gguf_tensor_count(g); i++) {
        const model_tensor_t *t = model_gguf_tensor(g, i);
        if (drop && strcmp(t->name, drop) == 0) continue;
        cr_assert_geq(model_gguf_writer_add_tensor_data(w, t->name, t->type, t->n_dims, t->ne,
                                                        t->data), 0);
    }
    cr_assert_eq(model_gguf_writer_write(w, oss_bad, NULL, NULL), 0);
    model_gguf_writer_free(w);
    model_t *o = NULL;
    int err = model_load(oss_bad, &o);
    model_free(o);
    return err;
}

Test(gptoss, loader_refuses_what_it_does_not_run)
{
    model_gen_params_t p = oss_params();
    model_t *m = oss_load(&p);
    cr_assert_eq(load_altered(m, NULL, 0, NULL), 0, "an unchanged copy loads");
    cr_assert_eq(load_altered(m, "gpt-oss.expert_gating_func", 1, NULL), MODEL_E_ARCH);
    cr_assert_eq(load_altered(m, "gpt-oss.attention.sliding_window", 0, NULL), MODEL_E_ARCH);
    cr_assert_eq(load_altered(m, NULL, 0, "blk.1.attn_sinks.weight"), MODEL_E_ARCH);
    cr_assert_eq(load_altered(m, NULL, 0, "blk.2.ffn_down_exps.bias"), MODEL_E_ARCH);
    cr_assert_eq(load_altered(m, NULL, 0, "blk.0.attn_output.bias"), MODEL_E_ARCH);
    model_free(m);
}

/* ---------------------------------------------------------------- harmony */

Test(gptoss, harmony_template)
{
    /* The generated file's template is detected by its markers and rendered as harmony. */
    model_gen_params_t p = oss_params();
    model_t *m = oss_load(&p);
    const char *tmpl = model_gguf_get_str(m->gguf, "tokenizer.chat_template");
    cr_assert_not_null(tmpl);
    cr_assert_str_eq(model_chat_detect(tmpl), "gpt-oss");
    const model_chat_msg_t msgs[] = {{"system", "Be brief."},
                                     {"user", "Hi"},
                                     {"assistant", "Hello!"},
                                     {"user", "Bye"}};
    char *out = NULL;
    cr_assert_eq(model_chat_apply(tmpl, msgs, 4, true, &out), 0);
    cr_assert_str_eq(out, "<|start|>system<|message|>Be brief.<|end|>"
                          "<|start|>user<|message|>Hi<|end|>"
                          "<|start|>assistant<|message|>Hello!<|return|>"
                          "<|start|>user<|message|>Bye<|end|>"
                          "<|start|>assistant");
    free(out);
    cr_assert_eq(model_chat_apply("gpt-oss", msgs + 1, 1, false, &out), 0);
    cr_assert_str_eq(out, "<|start|>user<|message|>Hi<|end|>");
    free(out);
    /* The special tokens encode as single ids and <|return|> / <|end|> end generation. */
    model_tok_t *tok = NULL;
    cr_assert_eq(model_tok_new(m->gguf, &tok), 0);
    int32_t idv[16];
    const char *s = "<|start|>user<|message|>";
    int64_t n = model_tok_encode(tok, s, strlen(s), false, true, idv, 16);
    cr_assert_geq(n, 3);
    cr_assert_eq(idv[0], 320 - 9 + 5, "<|start|> is one token");
    cr_assert(model_tok_is_eog(tok, 320 - 9 + 2) && model_tok_is_eog(tok, 320 - 9 + 6));
    model_tok_free(tok);
    model_free(m);
}

/* ---------------------------------------------------------------- two expert nodes */

#define OSS_NODES 2
static tproc_t oss_nodes[OSS_NODES];
static char oss_ep[OSS_NODES][128];

static void oss_reap(void)
{
    tproc_reap(oss_nodes, OSS_NODES, false);
    oss_cleanup();
}

/* Starts moemesh-expert (beside this test binary), with model (its experts then need no
 * transfer) or without (streamed); waits up to 10 s for its "listening on" line. */
static void oss_spawn(int i, const char *model)
{
    const char *argv[] = {"moemesh-expert", "-l", "tcp://127.0.0.1:*", model ? "-m" : NULL,
                          model, NULL};
    tproc_start(&oss_nodes[i], "gptoss", i, argv, oss_ep[i], sizeof(oss_ep[i]), 10);
}

TestSuite(gptoss_cluster, .fini = oss_reap);

/* The experts over two nodes, one streamed its slices (weights and bias rows), one holding the
 * same file (-m, views into it): the local logits within 1e-5 sd (f32 on the wire; only the
 * order of the per-node partial sums differs) and the same greedy tokens. */
Test(gptoss_cluster, two_nodes_match_local, .timeout = 120)
{
    signal(SIGPIPE, SIG_IGN);
    model_gen_params_t p = oss_params();
    model_t *m = oss_load(&p);
    const int V = m->hp.n_vocab, N = OSS_T;
    oss_spawn(0, NULL);
    oss_spawn(1, oss_path);
    const char *eps[OSS_NODES] = {oss_ep[0], oss_ep[1]};
    coord_cluster_t *c = tlogits_cluster(m, eps, OSS_NODES);
    int32_t ids[OSS_T], gref[OSS_T], gout[OSS_T];
    oss_ids(ids, N, V);
    kern_pool_t *pool = kern_pool_new(2);
    coord_experts_t *lx = coord_experts_local_new(m, pool, N);
    coord_experts_t *rx = coord_experts_remote_new(c, N);
    double w = tlogits_compare(m, lx, rx, pool, (tlogits_opts_t){0}, ids, N, OSS_PROMPT, 0, NULL,
                               gref, gout);
    cr_log_info("gpt-oss over %d nodes: worst %.3g sd from local", OSS_NODES, w);
    cr_expect_leq(w, 1e-5);
    for (int i = 0; i < N - OSS_PROMPT; i++)
        cr_expect_eq(gout[i], gref[i], "greedy token %d is %d, local %d", i, gout[i], gref[i]);
    for (int i = 0; i < OSS_NODES; i++) {
        coord_node_stats_t st;
        coord_cluster_node_stats(c, i, &st);
        cr_expect_gt(st.experts, 0, "node %d holds no experts", i);
        cr_expect_gt(st.requests, 0, "node %d got no expert call", i);
        if (i == 0) cr_expect_gt(st.shard_bytes, 0, "node 0 was streamed nothing");
    }
    coord_experts_free(rx);
    coord_experts_free(lx);
    coord_cluster_free(c);
    kern_pool_free(pool);
    model_free(m);
}
