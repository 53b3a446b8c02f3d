/* kernels — pure math on caller-provided buffers: GGUF tensor types (dequantize, quantize, dot
 * products, GEMV/GEMM), elementwise ops, and the thread pool that splits rows across cores.
 * Nothing here allocates (except the pool itself), logs, or touches a socket; every function is
 * callable from any thread. Vectorised paths (AVX2, AVX-512) are chosen at run time and the
 * scalar reference is always available (kern_set_isa) so tests can compare the two.
 *
 * Shapes follow GGUF/ggml: a matrix with ne0 = n columns and ne1 = d rows is stored row-major,
 * each row n elements in the tensor's type; out = W x means out[r] = dot(row r of W, x).
 */
#ifndef MOEMESH_KERN_H
#define MOEMESH_KERN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- tensor types: the ggml type ids as stored in GGUF ---- */
typedef enum {
    KERN_F32 = 0,
    KERN_F16 = 1,
    KERN_Q4_0 = 2,
    KERN_Q4_1 = 3,
    KERN_Q5_0 = 6,
    KERN_Q5_1 = 7,
    KERN_Q8_0 = 8,
    KERN_Q8_1 = 9,
    KERN_Q2_K = 10,
    KERN_Q3_K = 11,
    KERN_Q4_K = 12,
    KERN_Q5_K = 13,
    KERN_Q6_K = 14,
    KERN_Q8_K = 15,
    KERN_BF16 = 30,
    KERN_MXFP4 = 39, /* gpt-oss experts: E8M0 scale + 32 e2m1 values (kernels/mxfp4.c) */
    KERN_TYPE_COUNT = 40 /* bound for ids in files; most ids below it are not supported */
} kern_type_t;

typedef struct {
    const char *name;        /* "Q4_K" */
    int block;               /* elements per block (1 for F32/F16/BF16) */
    size_t block_bytes;      /* bytes per block */
    kern_type_t dot_type;    /* type activations are rounded to for dot products, as ggml does */
    bool compute;            /* dequantize/dot implemented (false: only sizes are known) */
} kern_type_info_t;

/* Traits of type id t, or NULL when t is not a type this build knows the layout of. */
const kern_type_info_t *kern_type_info(int t);
/* Bytes of n elements of type t; n must be a multiple of the block size (CHECKed). */
size_t kern_row_bytes(kern_type_t t, int64_t n);

/* ---- scalar conversions ---- */
float kern_fp16_to_fp32(uint16_t h);
uint16_t kern_fp32_to_fp16(float f);   /* round to nearest even, as F16C does */
float kern_bf16_to_fp32(uint16_t h);
uint16_t kern_fp32_to_bf16(float f);   /* round to nearest even; NaN stays NaN */

/* ---- instruction set selection ---- */
typedef enum { KERN_ISA_SCALAR = 0, KERN_ISA_AVX2, KERN_ISA_AVX512, KERN_ISA_COUNT } kern_isa_t;
/* The best ISA this CPU supports. */
kern_isa_t kern_isa_best(void);
/* Forces an ISA (capped to what the CPU has) for every later call in the process; returns the
 * one in force. Tests use it to compare vectorised paths with the scalar reference. */
kern_isa_t kern_set_isa(kern_isa_t isa);
const char *kern_isa_name(kern_isa_t isa);

/* ---- blocks: dequantize / quantize / dot ---- */
/* dst (n) = src (n elements of type t) as f32. n a multiple of the block size. */
void kern_dequantize(kern_type_t t, const void *src, float *dst, int64_t n);
/* dst (n elements of type t) = src (n), ggml's reference quantization (bit-exact with
 * llama.cpp's quantize_row_*_ref) for every compute type incl. Q8_1 and Q8_K. */
void kern_quantize(kern_type_t t, const float *src, void *dst, int64_t n);
/* Activation rounding before a dot product: dst (n elements of dot_type) = src (n). Follows
 * ggml's x86 path for that type (what llama.cpp's CPU backend does at run time). */
void kern_quantize_act(kern_type_t dot_type, const float *src, void *dst, int64_t n);
/* dot(w_row, x) over n elements: w_row in type wt, xq in kern_type_info(wt)->dot_type. */
float kern_vec_dot(kern_type_t wt, int64_t n, const void *w_row, const void *xq);

/* ---- thread pool (kernels/pool.c) ----
 * A fixed set of worker threads that run one function on all threads at once; the caller is
 * thread 0. Used to split matrix rows across cores. Not re-entrant: one run at a time. */
typedef struct kern_pool kern_pool_t;
typedef void (*kern_pool_fn_cb)(void *arg, int ith, int nth);
kern_pool_t *kern_pool_new(int n_threads); /* n_threads >= 1 (1: no extra threads) */
void kern_pool_free(kern_pool_t *pool);    /* NULL-safe; joins the workers */
int kern_pool_size(const kern_pool_t *pool);
/* Runs fn(arg, ith, nth) for ith = 0..nth-1 concurrently; returns when all have returned.
 * pool may be NULL: then fn(arg, 0, 1) runs on the caller. */
void kern_pool_run(kern_pool_t *pool, kern_pool_fn_cb fn, void *arg);

/* ---- matrix products ----
 * out (m, d) = x (m, n) @ w^T, w a (d, n) matrix in type wt, rows of w w_stride bytes apart
 * (kern_row_bytes(wt, n) for a plain matrix). Activations are rounded to the weight type's
 * dot_type first, exactly as llama.cpp does; for large m the product may dequantize tiles of w
 * to f32 and call OpenBLAS on the rounded activations (same math, other summation order).
 * work: scratch of kern_matmul_work_size(wt, m, n) bytes, 64-byte aligned, caller-owned.
 * Rows of out are split across the pool's threads. */
size_t kern_matmul_work_size(kern_type_t wt, int64_t m, int64_t n);
void kern_matmul(kern_pool_t *pool, float *out, const void *w, size_t w_stride, kern_type_t wt,
                 const float *x, int64_t m, int64_t n, int64_t d, void *work);

/* ---- elementwise (kernels/ops.c) ---- */
/* out (n) = x / sqrt(mean(x^2) + eps) * w; w may be NULL (no weight). out may alias x. */
void kern_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps);
/* Rotates pairs in place for one token: x (n_heads, head_dim), first n_rot dims of each head.
 * neox: pairs (i, i + n_rot/2); otherwise adjacent pairs (2i, 2i+1). theta_i =
 * pos * freq_scale * base^(-2i/n_rot). */
void kern_rope(float *x, int n_heads, int head_dim, int n_rot, int pos, float freq_base,
               float freq_scale, bool neox);
/* In place: x (n) = softmax(x). */
void kern_softmax(float *x, int64_t n);
/* out (n) = silu(gate) * up. out may alias gate. */
void kern_swiglu(float *out, const float *gate, const float *up, int64_t n);
/* Indices of the k largest of x (n) into idx (k), largest first; ties keep the lower index. */
void kern_topk(const float *x, int n, int k, int *idx);

/* ---- attention (kernels/ops.c; AVX2 in kernels/attn_avx2.c) ----
 * One GQA group of one token: the nq query heads that share a kv head, against its n_kv cached
 * positions. Row r of out (hv floats, out_stride floats apart) = softmax(scale * K q_r) V, q_r
 * row r of q (nq rows of hd floats, contiguous). k: n_kv rows of hd elements k_stride bytes
 * apart, v: n_kv rows of hv elements v_stride bytes apart, both F32 or F16 (kv_type); with F16
 * the queries are rounded to f16 first, as llama.cpp does. work: kern_attn_work_size floats. */
size_t kern_attn_work_size(int nq, int n_kv, int hd);
void kern_attn(float *out, size_t out_stride, const float *q, int nq, const void *k,
               size_t k_stride, const void *v, size_t v_stride, kern_type_t kv_type, int n_kv,
               int hd, int hv, float scale, float *work);

/* ---- causal attention of a run of tokens (kernels/attn_block.c; AVX2 in attn_block_avx2.c) ----
 * Prefill: n_tok consecutive tokens of one sequence at positions pos0 .. pos0 + n_tok - 1, one
 * GQA group (nq query heads sharing a kv head), against the cached positions each may see. The
 * keys and values are read in tiles of KERN_ATTN_TILE positions, once for the whole run, with a
 * running max and sum per query (online softmax), so the scratch does not grow with the
 * context. Query (t, g) is q + t * q_stride + g * hd (hd floats); its output row (hv floats) is
 * out + t * out_stride + g * hv. Token t at p = pos0 + t sees positions [lo, p] with lo =
 * max(0, p + 1 - window) for window > 0 and 0 otherwise (sliding-window layers); sinks (nq
 * logits or NULL, gpt-oss) add exp(sinks[g]) to query g's softmax denominator without a value.
 * Equals kern_attn of each token (same f16 rounding of the queries for an F16 cache) up to float
 * summation order and exponential rounding. work: kern_attn_causal_work_size floats. */
#define KERN_ATTN_TILE 64
typedef struct {
    const void *k, *v;         /* rows of positions 0, 1, ...: hd (hv) elements of type */
    size_t k_stride, v_stride; /* bytes between positions, multiples of the element size */
    kern_type_t type;          /* KERN_F32 or KERN_F16 */
    int hd, hv;                /* key and value head dims */
} kern_kv_t;
size_t kern_attn_causal_work_size(int nq, int n_tok, int hd, int hv);
void kern_attn_causal(float *out, size_t out_stride, const float *q, size_t q_stride, int nq,
                      int n_tok, int pos0, const kern_kv_t *kv, int window, const float *sinks,
                      float scale, float *work);

/* ---- grouped expert FFN (kernels/moe.c) ----
 * The routed-expert step on one machine: tokens are grouped by expert so each expert's three
 * matrices are read once per call and multiplied with all its tokens in one batched product;
 * each token's expert outputs are then weighted and summed in top-k order, so the result does
 * not depend on which order experts are visited in. */
typedef struct {
    kern_type_t gate_type, up_type, down_type;
    const void *gate;   /* (n_ff rows of n_embd) */
    const void *up;     /* (n_ff rows of n_embd) */
    const void *down;   /* (n_embd rows of n_ff) */
} kern_expert_t;

/* Scratch bytes kern_moe_ffn needs for up to max_tok tokens and top-k k with experts of these
 * types (the largest over all experts the caller will pass). */
size_t kern_moe_work_size(const kern_expert_t *types, int n_embd, int n_ff, int max_tok, int k);
/* out (n_tok, n_embd) = for each token t, the sum over j < k in order of
 * w[t*k+j] * down(silu(gate x_t) * up x_t) of expert ids[t*k+j]; entries with id < 0 are skipped
 * (experts held elsewhere). experts (n_expert) may hold NULL weights for absent experts; every
 * id >= 0 must be < n_expert and present (CHECKed: callers validate outside input first).
 * work: kern_moe_work_size bytes, 64-byte aligned. */
void kern_moe_ffn(kern_pool_t *pool, const kern_expert_t *experts, int n_expert, int n_embd,
                  int n_ff, int n_tok, int k, const float *x, const int32_t *ids, const float *w,
                  float *out, void *work, size_t work_size);

/* gpt-oss's experts: the same step with per-expert biases and an activation other than SiLU.
 * bias (n_expert, may be NULL) holds f32 rows added after each product (any row NULL: none);
 * act picks the gated unit. kern_moe_ffn is this with bias NULL and KERN_ACT_SWIGLU. */
typedef struct {
    const float *gate, *up; /* (n_ff) */
    const float *down;      /* (n_embd) */
} kern_expert_bias_t;
typedef enum {
    KERN_ACT_SWIGLU = 0,    /* silu(gate) * up */
    KERN_ACT_SWIGLU_OAI,    /* kern_swiglu_oai with alpha 1.702, limit 7 (gpt-oss) */
} kern_act_t;
void kern_moe_ffn_ex(kern_pool_t *pool, const kern_expert_t *experts,
                     const kern_expert_bias_t *bias, kern_act_t act, int n_expert, int n_embd,
                     int n_ff, int n_tok, int k, const float *x, const int32_t *ids,
                     const float *w, float *out, void *work, size_t work_size);
/* out (n) = g * sigmoid(alpha * g) * (u + 1) with g = min(gate, limit) and u = up clamped to
 * [-limit, limit] (ggml's swiglu_oai). out may alias gate. (kernels/mxfp4.c) */
void kern_swiglu_oai(float *out, const float *gate, const float *up, int64_t n, float alpha,
                     float limit);

#endif
