/* Model families beyond the first four: deepseek2 (MLA, leading dense blocks, shared experts,
 * V3-style sigmoid routing with a selection bias and group-limited top-k, YaRN) and glm4moe
 * (partial NEOX RoPE, q/k/v biases, sigmoid grouped routing, shared experts).
 *
 * No llama.cpp vectors exist for most of these variants, so each piece is checked against a
 * naive reference written here from the published architecture, in double precision and in the
 * plain (not absorbed) form: the router against sorting, MLA against ordinary multi-head
 * attention over decompressed keys and values, and whole forward passes of generated models
 * token by token. Distributed mode: the golden deepseek2 model and generated V3-style and GLM
 * models over two real expert nodes on 127.0.0.1 must give the local logits and tokens.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/coord.h"
#include "coordinator/mla.h"
#include "naive.h"
#include "tlogits.h"
#include "tproc.h"
#include "wire/wire.h"

#define GOLDEN "../shared/golden"

/* ---------------------------------------------------------------- generated models */

static char tmp_path[128];

static void rm_tmp(void)
{
    if (tmp_path[0]) unlink(tmp_path);
    tmp_path[0] = 0;
}

/* A V3-style deepseek2: q compression, sigmoid gating with bias, 4 groups of 4 (2 used),
 * weight norm and scale, YaRN. */
static model_gen_params_t v3_params(void)
{
    model_gen_params_t p = {.arch = "deepseek2", .n_layers = 3, .n_embd = 64, .n_head = 4,
                            .head_dim = 48, .n_expert = 16, .n_expert_used = 4,
                            .expert_ff = 32, .n_vocab = 320, .type = KERN_F32, .seed = 7,
                            .n_ctx = 4096};
    p.n_dense_lead = 1;
    p.dense_ff = 64;
    p.n_shared = 1;
    p.gating = MODEL_GATING_SIGMOID;
    p.n_groups = 4;
    p.n_group_used = 2;
    p.expert_norm = true;
    p.expert_scale = 2.5f;
    p.rope_dim = 16;
    p.kv_lora_rank = 32;
    p.q_lora_rank = 32;
    p.v_head_dim = 32;
    p.yarn_factor = 40.0f;
    p.yarn_log_mul = 1.0f;
    return p;
}

static model_gen_params_t glm_params(void)
{
    model_gen_params_t p = {.arch = "glm4moe", .n_layers = 3, .n_embd = 64, .n_head = 4,
                            .n_head_kv = 2, .head_dim = 32, .n_expert = 16,
                            .n_expert_used = 4, .expert_ff = 32, .n_vocab = 320,
                            .type = KERN_F32, .seed = 3};
    p.n_dense_lead = 1;
    p.dense_ff = 64;
    p.n_shared = 1;
    p.n_groups = 2;
    p.n_group_used = 1;
    p.expert_norm = true;
    p.expert_scale = 1.5f;
    p.rope_dim = 16; /* partial: half of each head */
    return p;
}

static model_t *gen_load(const model_gen_params_t *p)
{
    snprintf(tmp_path, sizeof(tmp_path), "/tmp/moemesh-families-%d.gguf", (int)getpid());
    cr_assert_eq(model_gen_write(p, tmp_path), 0);
    model_t *m = NULL;
    cr_assert_eq(model_load(tmp_path, &m), 0);
    return m;
}

/* ---------------------------------------------------------------- naive reference */

static double dsilu(double x) { return x / (1.0 + exp(-x)); }

static const float *F(const model_tensor_t *t) { return t ? (const float *)t->data : NULL; }

/* Indices of the k largest of x (n), largest first, lower index on ties (insertion sort). */
static void naive_topk(const double *x, int n, int k, int *idx)
{
    int *ord = malloc(sizeof(int) * n);
    for (int i = 0; i < n; i++) {
        int j = i;
        while (j > 0 && x[ord[j - 1]] < x[i]) {
            ord[j] = ord[j - 1];
            j--;
        }
        ord[j] = i;
    }
    memcpy(idx, ord, sizeof(int) * k);
    free(ord);
}

/* The router from DeepSeek-V3's description: scores s = gate(logits); selection on s + bias
 * within the best groups (group score: sum of its two best); weights s of the chosen,
 * optionally normalised, times the scale. */
static void naive_route(const model_hparams_t *hp, const float *bias, const double *logit,
                        int *ids, double *w)
{
    const int E = hp->n_expert, K = hp->n_expert_used;
    double *s = malloc(sizeof(double) * E), *sel = malloc(sizeof(double) * E);
    double mx = -INFINITY, sum = 0;
    for (int i = 0; i < E; i++) mx = fmax(mx, logit[i]);
    for (int i = 0; i < E; i++) {
        s[i] = hp->gating == MODEL_GATING_SIGMOID ? 1 / (1 + exp(-logit[i])) : exp(logit[i] - mx);
        sum += s[i];
    }
    for (int i = 0; i < E; i++) {
        if (hp->gating != MODEL_GATING_SIGMOID) s[i] /= sum;
        sel[i] = s[i] + (bias ? bias[i] : 0);
    }
    if (hp->n_expert_groups > 1) {
        const int G = hp->n_expert_groups, per = E / G;
        double gs[64];
        for (int g = 0; g < G; g++) {
            int t2[2];
            naive_topk(sel + g * per, per, 2, t2);
            gs[g] = sel[g * per + t2[0]] + sel[g * per + t2[1]];
        }
        int keep[64];
        naive_topk(gs, G, hp->n_group_used, keep);
        for (int g = 0; g < G; g++) {
            bool k = false;
            for (int j = 0; j < hp->n_group_used; j++) k |= keep[j] == g;
            for (int i = 0; i < per && !k; i++) sel[g * per + i] = -INFINITY;
        }
    }
    naive_topk(sel, E, K, ids);
    double tot = 0;
    for (int j = 0; j < K; j++) tot += (w[j] = s[ids[j]]);
    for (int j = 0; j < K; j++) {
        if (hp->expert_norm) w[j] /= tot;
        w[j] *= hp->expert_scale;
    }
    free(s), free(sel);
}

/* Attention of layer il for the whole sequence x (T, D) (normalised input), out (T, D): the
 * plain form of each architecture (MLA with keys and values decompressed per head). */
static void naive_attention(const model_t *m, int il, const double *x, int T, double *out)
{
    const model_hparams_t *hp = &m->hp;
    const model_layer_t *ly = &m->layers[il];
    const int D = hp->n_embd, H = hp->n_head;
    const bool mla = hp->kv_lora_rank > 0;
    const int K = mla ? hp->mla_head_k : hp->head_dim, V = mla ? hp->mla_head_v : hp->head_dim_v;
    const int KV = mla ? H : hp->n_head_kv, rot = hp->n_rot;
    double *q = calloc((size_t)T * H * K, sizeof(double));
    double *k = calloc((size_t)T * KV * K, sizeof(double));
    double *v = calloc((size_t)T * KV * V, sizeof(double));
    double *att = calloc((size_t)H * V, sizeof(double));
    double scale = 1 / sqrt((double)K);
    for (int t = 0; t < T; t++) {
        const double *xt = x + (size_t)t * D;
        double *qt = q + (size_t)t * H * K, *kt = k + (size_t)t * KV * K;
        double *vt = v + (size_t)t * KV * V;
        if (mla) {
            const int R = hp->kv_lora_rank, nope = K - rot;
            if (ly->wq) {
                naive_matvec(qt, F(ly->wq), H * K, D, xt);
            } else {
                double qa[1024];
                naive_matvec(qa, F(ly->wq_a), hp->q_lora_rank, D, xt);
                naive_rmsnorm(qa, qa, F(ly->q_a_norm), hp->q_lora_rank, hp->rms_eps);
                naive_matvec(qt, F(ly->wq_b), H * K, hp->q_lora_rank, qa);
            }
            double c[1024], lat[1024];
            naive_matvec(c, F(ly->wkv_a_mqa), R + rot, D, xt);
            naive_rmsnorm(lat, c, F(ly->kv_a_norm), R, hp->rms_eps);
            naive_rope(hp, c + R, rot, t, false);
            for (int h = 0; h < H; h++) {
                naive_rope(hp, qt + h * K + nope, rot, t, false);
                /* k_nope[i] = sum_r k_b[h][r][i] latent[r]; v[c] = sum_r v_b[h][c][r] latent[r] */
                if (ly->wk_b) {
                    const float *kb = F(ly->wk_b) + (size_t)h * R * nope;
                    for (int i = 0; i < nope; i++) {
                        double s = 0;
                        for (int r = 0; r < R; r++)
                            s += (double)kb[(size_t)r * nope + i] * lat[r];
                        kt[h * K + i] = s;
                    }
                    naive_matvec(vt + h * V, F(ly->wv_b) + (size_t)h * V * R, V, R, lat);
                } else { /* old files: [k_nope; v] = attn_kv_b latent, per head */
                    const float *kvb = F(ly->wkv_b) + (size_t)h * (nope + V) * R;
                    naive_matvec(kt + h * K, kvb, nope, R, lat);
                    naive_matvec(vt + h * V, kvb + (size_t)nope * R, V, R, lat);
                }
                memcpy(kt + h * K + nope, c + R, sizeof(double) * rot);
            }
            if (hp->rope_yarn) {
                double ms = hp->yarn_attn_factor *
                            (1 + 0.1 * hp->yarn_log_mul * log(1.0 / hp->rope_scale));
                scale = ms * ms / sqrt((double)K);
            }
        } else {
            naive_matvec(qt, F(ly->wq), H * K, D, xt);
            naive_matvec(kt, F(ly->wk), KV * K, D, xt);
            naive_matvec(vt, F(ly->wv), KV * V, D, xt);
            for (int i = 0; ly->bq && i < H * K; i++) qt[i] += F(ly->bq)[i];
            for (int i = 0; ly->bk && i < KV * K; i++) kt[i] += F(ly->bk)[i];
            for (int i = 0; ly->bv && i < KV * V; i++) vt[i] += F(ly->bv)[i];
            for (int h = 0; h < H; h++) {
                if (ly->q_norm)
                    naive_rmsnorm(qt + h * K, qt + h * K, F(ly->q_norm), K, hp->rms_eps);
                naive_rope(hp, qt + h * K, rot, t, hp->rope_neox);
            }
            for (int h = 0; h < KV; h++) {
                if (ly->k_norm)
                    naive_rmsnorm(kt + h * K, kt + h * K, F(ly->k_norm), K, hp->rms_eps);
                naive_rope(hp, kt + h * K, rot, t, hp->rope_neox);
            }
        }
    }
    double *sc = malloc(sizeof(double) * T);
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < H; h++) {
            const int kh = h / (H / KV);
            const double *qh = q + ((size_t)t * H + h) * K;
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j <= t; j++) {
                double s = 0;
                for (int i = 0; i < K; i++) s += qh[i] * k[((size_t)j * KV + kh) * K + i];
                sc[j] = s * scale;
                mx = fmax(mx, sc[j]);
            }
            for (int j = 0; j <= t; j++) sum += (sc[j] = exp(sc[j] - mx));
            for (int c = 0; c < V; c++) {
                double o = 0;
                for (int j = 0; j <= t; j++) o += sc[j] * v[((size_t)j * KV + kh) * V + c];
                att[h * V + c] = o / sum;
            }
        }
        naive_matvec(out + (size_t)t * D, F(ly->wo), D, H * V, att);
    }
    free(sc), free(q), free(k), free(v), free(att);
}

static void naive_swiglu(double *out, const float *gate, const float *up, const float *down,
                         int D, int ff, const double *x)
{
    double *g = malloc(sizeof(double) * ff), *u = malloc(sizeof(double) * ff);
    naive_matvec(g, gate, ff, D, x);
    naive_matvec(u, up, ff, D, x);
    for (int i = 0; i < ff; i++) g[i] = dsilu(g[i]) * u[i];
    naive_matvec(out, down, D, ff, g);
    free(g), free(u);
}

static void naive_ffn(const model_t *m, int il, const double *x, double *out)
{
    const model_hparams_t *hp = &m->hp;
    const model_layer_t *ly = &m->layers[il];
    const int D = hp->n_embd;
    if (!ly->gate_inp) {
        naive_swiglu(out, F(ly->ffn_gate), F(ly->ffn_up), F(ly->ffn_down), D,
                     (int)ly->ffn_gate->ne[1], x);
        return;
    }
    const int E = hp->n_expert, K = hp->n_expert_used, ff = hp->n_ff_exp;
    double logit[256], w[64], y[1024];
    int ids[64];
    naive_matvec(logit, F(ly->gate_inp), E, D, x);
    naive_route(hp, F(ly->exp_probs_b), logit, ids, w);
    memset(out, 0, sizeof(double) * D);
    for (int j = 0; j < K; j++) {
        size_t off = (size_t)ids[j] * ff * D;
        naive_swiglu(y, F(ly->gate_exps) + off, F(ly->up_exps) + off, F(ly->down_exps) + off,
                     D, ff, x);
        for (int d = 0; d < D; d++) out[d] += w[j] * y[d];
    }
    if (ly->gate_shexp) {
        naive_swiglu(y, F(ly->gate_shexp), F(ly->up_shexp), F(ly->down_shexp), D,
                     (int)ly->gate_shexp->ne[1], x);
        for (int d = 0; d < D; d++) out[d] += y[d];
    }
}

/* logits (T, V) of the sequence ids (T): the whole model in double precision. */
static void naive_forward(const model_t *m, const int32_t *ids, int T, double *logits)
{
    const model_hparams_t *hp = &m->hp;
    const int D = hp->n_embd;
    double *x = malloc(sizeof(double) * T * D), *xn = malloc(sizeof(double) * T * D);
    double *o = malloc(sizeof(double) * T * D);
    for (int t = 0; t < T; t++)
        for (int d = 0; d < D; d++) x[t * D + d] = F(m->tok_embd)[(size_t)ids[t] * D + d];
    for (int il = 0; il < hp->n_layer; il++) {
        const model_layer_t *ly = &m->layers[il];
        for (int t = 0; t < T; t++)
            naive_rmsnorm(xn + t * D, x + t * D, F(ly->attn_norm), D, hp->rms_eps);
        naive_attention(m, il, xn, T, o);
        for (int i = 0; i < T * D; i++) x[i] += o[i];
        for (int t = 0; t < T; t++) {
            naive_rmsnorm(xn + t * D, x + t * D, F(ly->ffn_norm), D, hp->rms_eps);
            naive_ffn(m, il, xn + t * D, o + t * D);
        }
        for (int i = 0; i < T * D; i++) x[i] += o[i];
    }
    for (int t = 0; t < T; t++) {
        naive_rmsnorm(xn + t * D, x + t * D, F(m->output_norm), D, hp->rms_eps);
        naive_matvec(logits + (size_t)t * hp->n_vocab, F(m->output), hp->n_vocab, D, xn + t * D);
    }
    free(x), free(xn), free(o);
}

#define MAX_TOK 64

static void fixed_ids(int32_t *ids, int n, int V) { tlogits_ids(ids, n, 12345, V - 8); }

static char old_path[128];

static void rm_tmp_all(void)
{
    rm_tmp();
    if (old_path[0]) unlink(old_path);
    old_path[0] = 0;
}

TestSuite(families, .fini = rm_tmp_all);

/* Rewrites the F32 deepseek2 model m as llama.cpp's converter wrote DeepSeek files before the
 * attn_k_b / attn_v_b split: attn_kv_b with, per head, the nope key rows (k_b transposed) then
 * the value rows; key/value lengths of the decompressed heads, one kv head per head. */
static void write_old_format(const model_t *m, const char *path)
{
    const model_hparams_t *hp = &m->hp;
    const int H = hp->n_head, R = hp->kv_lora_rank, nope = hp->mla_head_k - hp->n_rot;
    const int V = hp->mla_head_v;
    const model_gguf_t *g = m->gguf;
    model_gguf_writer_t *w = model_gguf_writer_new();
    for (int i = 0; i < model_gguf_kv_count(g); i++) {
        const model_gguf_kv_t *kv = model_gguf_kv(g, i);
        if (strstr(kv->key, "_mla")) continue;
        model_gguf_writer_set_value(w, kv->key, &kv->val);
    }
    model_gguf_writer_set_u32(w, "deepseek2.attention.head_count_kv", (uint32_t)H);
    model_gguf_writer_set_u32(w, "deepseek2.attention.key_length", (uint32_t)hp->mla_head_k);
    model_gguf_writer_set_u32(w, "deepseek2.attention.value_length", (uint32_t)V);
    float *kvb = malloc(sizeof(float) * (size_t)H * (nope + V) * R);
    for (int i = 0; i < model_gguf_tensor_count(g); i++) {
        const model_tensor_t *t = model_gguf_tensor(g, i);
        if (strstr(t->name, "attn_v_b")) continue;
        if (!strstr(t->name, "attn_k_b")) {
            cr_assert_geq(model_gguf_writer_add_tensor_data(w, t->name, t->type, t->n_dims,
                                                            t->ne, t->data), 0);
            continue;
        }
        const int l = atoi(t->name + 4);
        const float *kb = F(m->layers[l].wk_b), *vb = F(m->layers[l].wv_b);
        for (int h = 0; h < H; h++) {
            float *dst = kvb + (size_t)h * (nope + V) * R;
            for (int i = 0; i < nope; i++)
                for (int r = 0; r < R; r++)
                    dst[(size_t)i * R + r] = kb[((size_t)h * R + r) * nope + i];
            memcpy(dst + (size_t)nope * R, vb + (size_t)h * V * R, sizeof(float) * V * R);
        }
        char name[64];
        snprintf(name, sizeof(name), "blk.%d.attn_kv_b.weight", l);
        int64_t ne[2] = {R, (int64_t)H * (nope + V)};
        cr_assert_geq(model_gguf_writer_add_tensor_data(w, name, KERN_F32, 2, ne, kvb), 0);
    }
    free(kvb);
    cr_assert_eq(model_gguf_writer_write(w, path, NULL, NULL), 0);
    model_gguf_writer_free(w);
}

/* ---------------------------------------------------------------- router */

Test(families, router_matches_naive_reference)
{
    /* Every combination of gating, bias, groups, normalisation and scale, on random logits
     * (spread wide enough that near-ties, where float and double may disagree, are rare and
     * skipped). */
    uint64_t s = 99;
    int checked = 0;
    for (int cfg = 0; cfg < 32; cfg++) {
        model_hparams_t hp = {0};
        hp.n_expert = cfg & 8 ? 64 : 16;
        hp.n_expert_used = cfg & 8 ? 8 : 4;
        hp.gating = cfg & 1 ? MODEL_GATING_SIGMOID : MODEL_GATING_SOFTMAX;
        hp.expert_norm = cfg & 4;
        hp.expert_scale = cfg & 16 ? 2.5f : 1.0f;
        hp.n_expert_groups = cfg & 2 ? (cfg & 8 ? 8 : 4) : 1;
        hp.n_group_used = cfg & 2 ? (cfg & 8 ? 4 : 2) : 1;
        for (int trial = 0; trial < 200; trial++) {
            float logit[64], bias[64], p[64];
            double dl[64], w_ref[16];
            int ids[16], ids_ref[16];
            float w[16];
            for (int i = 0; i < hp.n_expert; i++) {
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                logit[i] = (float)((double)(s >> 40) / 16777216.0 * 8 - 4);
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                bias[i] = (float)((double)(s >> 40) / 16777216.0 * 0.2 - 0.1);
                dl[i] = logit[i];
            }
            const float *b = trial % 2 ? bias : NULL;
            memcpy(p, logit, sizeof(p));
            coord__router_select(&hp, b, p, ids, w);
            naive_route(&hp, b, dl, ids_ref, w_ref);
            bool same = true;
            for (int j = 0; j < hp.n_expert_used; j++) same &= ids[j] == ids_ref[j];
            if (!same) {
                /* Allowed only at a near-tie of the selection scores in double. */
                double s1 = 0, s2 = 0;
                for (int j = 0; j < hp.n_expert_used; j++) s1 += w_ref[j], s2 += w[j];
                cr_assert(fabs(s1 - s2) < 1e-4 * fabs(s1) + 1e-6,
                          "cfg %d trial %d: experts differ beyond a tie", cfg, trial);
                continue;
            }
            for (int j = 0; j < hp.n_expert_used; j++)
                cr_assert(fabs(w[j] - w_ref[j]) < 1e-5 * fmax(1, fabs(w_ref[j])),
                          "cfg %d trial %d: weight %d is %g, reference %g", cfg, trial, j, w[j],
                          w_ref[j]);
            checked++;
        }
    }
    cr_assert_gt(checked, 32 * 190, "too many ties: %d checked", checked);
}

Test(families, router_groups_exclude_experts)
{
    /* The best single expert sits in a group whose second best is poor: group-limited routing
     * must pass it over for the two groups with the higher top-2 sums. */
    model_hparams_t hp = {.n_expert = 8, .n_expert_used = 2, .gating = MODEL_GATING_SIGMOID,
                          .expert_scale = 1.0f, .n_expert_groups = 4, .n_group_used = 2};
    float p[8] = {5, -5, 1, 1, 2, 2, -3, -3};
    int ids[2];
    float w[2];
    coord__router_select(&hp, NULL, p, ids, w);
    /* group sums (sigmoid): g0 0.993+0.007 = 1.0, g1 1.46, g2 1.76, g3 0.09: g2 and g1 win */
    cr_assert_eq(ids[0], 4);
    cr_assert_eq(ids[1], 5);
    hp.n_expert_groups = 1;
    float p2[8] = {5, -5, 1, 1, 2, 2, -3, -3};
    coord__router_select(&hp, NULL, p2, ids, w);
    cr_assert_eq(ids[0], 0, "without groups the best expert wins");
}

/* ---------------------------------------------------------------- MLA and whole models */

/* The engine's teacher-forced logits of T fixed ids (greedy decoding from the first n_prompt)
 * against the naive forward pass: the worst distance in sd. */
static double naive_distance(const model_t *m, int T, int n_prompt, bool kv_f16)
{
    const int V = m->hp.n_vocab;
    int32_t ids[MAX_TOK], greedy[MAX_TOK];
    fixed_ids(ids, T, V);
    double *ref = malloc(sizeof(double) * T * V);
    float *out = malloc(sizeof(float) * T * V);
    naive_forward(m, ids, T, ref);
    kern_pool_t *pool = kern_pool_new(2);
    coord_experts_t *ex = coord_experts_local_new(m, pool, T);
    tlogits_run(m, ex, pool, (tlogits_opts_t){.kv_f16 = kv_f16}, ids, T, n_prompt, out, greedy);
    double w = tlogits_err(ref, out, T, V, 0, NULL);
    coord_experts_free(ex);
    kern_pool_free(pool);
    free(ref), free(out);
    return w;
}

static void check_naive(const model_gen_params_t *gp, bool kv_f16, double tol)
{
    model_t *m = gen_load(gp);
    double w = naive_distance(m, 20, 8, kv_f16);
    cr_log_info("%s%s: engine vs naive reference: worst %.3g sd", gp->arch,
                kv_f16 ? " (f16 cache)" : "", w);
    cr_expect_leq(w, tol, "%s: engine differs from the naive reference by %.3g sd", gp->arch, w);
    model_free(m);
}

Test(families, deepseek2_v3_style_matches_naive_reference, .timeout = 120)
{
    model_gen_params_t p = v3_params();
    check_naive(&p, false, 1e-4);
}

Test(families, deepseek2_f16_cache_close_to_naive_reference, .timeout = 120)
{
    model_gen_params_t p = v3_params();
    check_naive(&p, true, 2e-2);
}

Test(families, deepseek2_v2_lite_style_matches_naive_reference, .timeout = 120)
{
    /* No q compression, softmax, no groups, no YaRN, no norm: V2-Lite's layout. */
    model_gen_params_t p = v3_params();
    p.q_lora_rank = 0;
    p.gating = MODEL_GATING_SOFTMAX;
    p.n_groups = p.n_group_used = 0;
    p.expert_norm = false;
    p.yarn_factor = 0;
    p.n_shared = 2;
    check_naive(&p, false, 1e-4);
}

Test(families, deepseek2_old_attn_kv_b_files, .timeout = 120)
{
    /* The same weights in the pre-split layout give the same logits, and the naive
     * (decompressing) reference agrees. */
    model_gen_params_t p = v3_params();
    model_t *m = gen_load(&p);
    snprintf(old_path, sizeof(old_path), "/tmp/moemesh-families-old-%d.gguf", (int)getpid());
    write_old_format(m, old_path);
    model_t *o = NULL;
    cr_assert_eq(model_load(old_path, &o), 0);
    cr_assert_null(o->layers[0].wk_b);
    cr_assert_not_null(o->layers[0].wkv_b);
    cr_assert_eq(o->hp.mla_head_k, 48);
    cr_assert_eq(o->hp.mla_head_v, 32);
    const int T = 20, V = m->hp.n_vocab;
    int32_t ids[MAX_TOK], g1[MAX_TOK], g2[MAX_TOK];
    fixed_ids(ids, T, V);
    float *a = malloc(sizeof(float) * T * V), *b = malloc(sizeof(float) * T * V);
    double *ref = malloc(sizeof(double) * T * V);
    kern_pool_t *pool = kern_pool_new(2);
    coord_experts_t *ea = coord_experts_local_new(m, pool, T);
    coord_experts_t *eb = coord_experts_local_new(o, pool, T);
    tlogits_run(m, ea, pool, (tlogits_opts_t){0}, ids, T, 8, a, g1);
    tlogits_run(o, eb, pool, (tlogits_opts_t){0}, ids, T, 8, b, g2);
    naive_forward(o, ids, T, ref);
    double w_old = tlogits_err(ref, b, T, V, 0, NULL);
    for (int i = 0; i < T * V; i++) ref[i] = a[i];
    double w_same = tlogits_err(ref, b, T, V, 0, NULL);
    cr_log_info("old attn_kv_b layout: %.3g sd from the split one, %.3g from naive", w_same,
                w_old);
    cr_expect_leq(w_same, 1e-4);
    cr_expect_leq(w_old, 1e-4);
    for (int i = 0; i < T - 8; i++) cr_expect_eq(g1[i], g2[i]);
    coord_experts_free(ea), coord_experts_free(eb);
    kern_pool_free(pool);
    free(a), free(b), free(ref);
    model_free(o);
    model_free(m);
}

Test(families, glm4moe_matches_naive_reference, .timeout = 120)
{
    model_gen_params_t p = glm_params();
    check_naive(&p, false, 1e-4);
}

Test(families, deepseek2_golden_model_matches_naive_reference, .timeout = 120)
{
    /* The golden file through the naive path too: the reference itself is checked against
     * llama.cpp's numbers, not only against our engine. */
    model_t *m = NULL;
    cr_assert_eq(model_load(GOLDEN "/deepseek2-tiny-f32.gguf", &m), 0);
    cr_expect_leq(naive_distance(m, 12, 4, false), 1e-4);
    model_free(m);
}

Test(families, mla_cache_is_the_latent)
{
    model_gen_params_t p = v3_params();
    model_t *m = gen_load(&p);
    /* (kv_lora 32 + rope 16) per layer and token, 3 layers: 576 bytes f32, 288 f16, against
     * 2 * 4 heads * (48 + 32) * 3 * 4 = 7680 for the decompressed cache. */
    cr_assert_eq(coord__mla_cache_bytes_per_token(&m->hp, false), 576);
    cr_assert_eq(coord__mla_cache_bytes_per_token(&m->hp, true), 288);
    model_weights_t w;
    model_weights_info(m->gguf, &w);
    cr_assert_eq(w.kv_latent, 48);
    cr_assert_eq(w.kv_bytes_per_token, 288);
    /* YaRN's kq scale: (1 + 0.1 ln 40)^2 / sqrt(48) */
    double ms = 1 + 0.1 * log(40.0);
    cr_assert_float_eq(coord__mla_kq_scale(&m->hp), ms * ms / sqrt(48.0), 1e-6);
    model_free(m);
}

/* ---------------------------------------------------------------- distributed */

#define MAX_NODES 2
static tproc_t nodes[MAX_NODES];
static char node_ep[MAX_NODES][128];

static void reap_nodes(void)
{
    tproc_reap(nodes, MAX_NODES, false);
    rm_tmp();
}

/* Starts moemesh-expert (beside this test binary) with no model, its shard streamed later;
 * waits up to 10 s for its "listening on" line. */
static void spawn(int i)
{
    const char *argv[] = {"moemesh-expert", "-l", "tcp://127.0.0.1:*", NULL};
    tproc_start(&nodes[i], "families", i, argv, node_ep[i], sizeof(node_ep[i]), 10);
}

/* m over two streamed nodes (f32 on the wire) against local: within 1e-5 sd and the same
 * greedy tokens. */
static void check_distributed(const model_t *m, const int32_t *ids, int N, int n_prompt)
{
    for (int i = 0; i < MAX_NODES; i++) spawn(i);
    const char *eps[MAX_NODES] = {node_ep[0], node_ep[1]};
    coord_cluster_t *c = tlogits_cluster(m, eps, MAX_NODES);
    /* Leading dense layers have no routed experts to place; every MoE layer has its owners. */
    for (int l = 0; l < m->hp.n_layer; l++)
        cr_assert_eq(coord_cluster_owners(c, l, 0) != NULL, l >= m->hp.n_layer_dense_lead,
                     "layer %d", l);
    kern_pool_t *pool = kern_pool_new(2);
    coord_experts_t *lx = coord_experts_local_new(m, pool, N);
    coord_experts_t *rx = coord_experts_remote_new(c, N);
    int32_t gref[MAX_TOK], gout[MAX_TOK];
    double w = tlogits_compare(m, lx, rx, pool, (tlogits_opts_t){0}, ids, N, n_prompt, 0, NULL,
                               gref, gout);
    cr_log_info("%s over %d nodes: worst %.3g sd from local", m->hp.arch_name, MAX_NODES, w);
    cr_expect_leq(w, 1e-5);
    for (int i = 0; i < N - n_prompt; i++)
        cr_expect_eq(gout[i], gref[i], "greedy token %d is %d, local %d", i, gout[i], gref[i]);
    uint64_t reqs = 0;
    for (int i = 0; i < MAX_NODES; i++) {
        coord_node_stats_t st;
        coord_cluster_node_stats(c, i, &st);
        reqs += st.requests;
        cr_expect_gt(st.experts, 0, "node %d holds no experts", i);
    }
    cr_expect_gt(reqs, 0, "no expert call went to the nodes");
    coord_experts_free(rx);
    coord_experts_free(lx);
    coord_cluster_free(c);
    kern_pool_free(pool);
}

TestSuite(families_cluster, .fini = reap_nodes);

Test(families_cluster, deepseek2_golden_over_two_nodes, .timeout = 120)
{
    signal(SIGPIPE, SIG_IGN);
    model_t *m = NULL;
    cr_assert_eq(model_load(GOLDEN "/deepseek2-tiny-f32.gguf", &m), 0);
    /* The golden prompt (BOS + "The quick brown fox") and 24 generated tokens */
    int32_t ids[MAX_TOK];
    int n_prompt, n = tlogits_golden_ids("deepseek2-tiny-f32", ids, MAX_TOK, &n_prompt);
    check_distributed(m, ids, n, n_prompt);
    model_free(m);
}

/* A generated model over two nodes: 24 fixed ids, 8 of them the prompt. */
static void check_generated_distributed(model_gen_params_t p)
{
    signal(SIGPIPE, SIG_IGN);
    model_t *m = gen_load(&p);
    int32_t ids[MAX_TOK];
    fixed_ids(ids, 24, m->hp.n_vocab);
    check_distributed(m, ids, 24, 8);
    model_free(m);
}

Test(families_cluster, deepseek2_v3_style_over_two_nodes, .timeout = 120)
{
    check_generated_distributed(v3_params());
}

Test(families_cluster, glm4moe_over_two_nodes, .timeout = 120)
{
    check_generated_distributed(glm_params());
}
