/* Folder-internal pieces of the forward pass that some architectures add to engine.c's layer
 * loop: deepseek2's multi-head latent attention with its latent KV cache (mla.c) and the router
 * variants of DeepSeek-V3 and GLM-4.5 (router.c). Not for use outside coordinator/ and tests.
 */
#ifndef MOEMESH_COORD_MLA_H
#define MOEMESH_COORD_MLA_H

#include "coordinator/coord.h"

/* ---- multi-head latent attention (coordinator/mla.c) ----
 * llama.cpp's absorbed form: every head's q_nope is mapped into the latent space by attn_k_b,
 * so all heads attend over one cached row per token, [rms-normalised latent (kv_lora_rank),
 * rotated k_pe (n_rot)]; the weighted sum of latents goes through attn_v_b per head, then
 * attn_output. The cache is the point of MLA: kv_lora_rank + n_rot values per token and layer
 * instead of 2 * n_head * head_dim. */
typedef struct coord__mla coord__mla_t;

/* Cache for n_slots sequences of n_ctx positions and scratch for n_batch tokens; NULL (reason
 * logged) when m has no MLA layers. m and pool are borrowed and must outlive the result. */
coord__mla_t *coord__mla_new(const model_t *m, kern_pool_t *pool, int n_slots, int n_ctx,
                             int n_batch, bool kv_f16);
void coord__mla_free(coord__mla_t *a); /* NULL-safe */
/* Bytes the cache holds per token (all layers) for m: 0 when m is not MLA. */
uint64_t coord__mla_cache_bytes_per_token(const model_hparams_t *hp, bool kv_f16);
/* out (b->n, n_embd) = attention block of layer il (without the residual) for the normalised
 * input xn (b->n, n_embd); caches every token's row at (slot, pos) first. The batch was
 * checked by the engine. */
void coord__mla_forward(coord__mla_t *a, const coord_batch_t *b, int il, const float *xn,
                        float *out);

/* The kq scale and rotation of deepseek2's YaRN (exposed for tests): rotates pairs (2i, 2i+1)
 * of the first n_rot dims of each of n_heads vectors head_stride floats apart. */
float coord__mla_kq_scale(const model_hparams_t *hp);
void coord__mla_rope(const model_hparams_t *hp, float *x, int n_heads, int head_stride, int pos);

/* ---- routers (coordinator/router.c) ---- */
#define COORD__ROUTER_MAX_EXPERT 4096

/* One token's routing from its router logits (n_expert, overwritten with the gate
 * probabilities): softmax or sigmoid, selection on probabilities plus the optional bias
 * (n_expert, exp_probs_b) within the best n_group_used groups (each scored by the sum of its
 * two best), top n_expert_used ids largest first (lower id on ties), their unbiased
 * probabilities as weights, normalised to sum 1 when expert_norm, times expert_scale. */
void coord__router_select(const model_hparams_t *hp, const float *bias, float *logits,
                          int *ids, float *w);

#endif
