/* kernels-internal: GGUF block layouts (bit-exact with ggml's block_* structs) and the per-ISA
 * dot-product tables that kern_vec_dot dispatches through. Only kernels/ and its tests use it.
 */
#ifndef MOEMESH_KERN_INT_H
#define MOEMESH_KERN_INT_H

#include "kernels/kern.h"

#define KERN_QK32 32  /* elements per legacy block (Q4_0 .. Q8_1) */
#define KERN_QK_K 256 /* elements per K-quant super-block */

/* fp16 fields are raw IEEE half bits; convert with kern_fp16_to_fp32. */
typedef struct { uint16_t d; uint8_t qs[16]; } kern_block_q4_0;            /* 18 bytes */
typedef struct { uint16_t d, m; uint8_t qs[16]; } kern_block_q4_1;         /* 20 */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } kern_block_q5_0;    /* 22 */
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } kern_block_q5_1; /* 24 */
typedef struct { uint16_t d; int8_t qs[32]; } kern_block_q8_0;             /* 34 */
typedef struct { uint16_t d, s; int8_t qs[32]; } kern_block_q8_1;          /* 36: s = d*sum(qs) */
typedef struct { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; } kern_block_q2_k; /* 84 */
typedef struct {
    uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d;
} kern_block_q3_k;                                                          /* 110 */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } kern_block_q4_k; /* 144 */
typedef struct {
    uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128];
} kern_block_q5_k;                                                          /* 176 */
typedef struct {
    uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d;
} kern_block_q6_k;                                                          /* 210 */
typedef struct { float d; int8_t qs[256]; int16_t bsums[16]; } kern_block_q8_k; /* 292 */
/* e: E8M0 shared exponent; qs[j] holds element j (low nibble) and j + 16 (high), e2m1 codes. */
typedef struct { uint8_t e; uint8_t qs[16]; } kern_block_mxfp4;            /* 17 */
_Static_assert(sizeof(kern_block_mxfp4) == 17, "mxfp4 layout");

/* MXFP4 (kernels/mxfp4.c): n elements, whole blocks; the dot is against Q8_0 activations. */
void kern__deq_mxfp4(const void *src, float *dst, int64_t n);
void kern__q_mxfp4(const float *src, void *dst, int64_t n);
float kern__dot_mxfp4(int64_t n, const void *w, const void *xq);
float kern__dot_mxfp4_avx2(int64_t n, const void *w, const void *xq); /* mxfp4_avx2.c */

_Static_assert(sizeof(kern_block_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(kern_block_q4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(kern_block_q5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(kern_block_q5_1) == 24, "q5_1 layout");
_Static_assert(sizeof(kern_block_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(kern_block_q8_1) == 36, "q8_1 layout");
_Static_assert(sizeof(kern_block_q2_k) == 84, "q2_k layout");
_Static_assert(sizeof(kern_block_q3_k) == 110, "q3_k layout");
_Static_assert(sizeof(kern_block_q4_k) == 144, "q4_k layout");
_Static_assert(sizeof(kern_block_q5_k) == 176, "q5_k layout");
_Static_assert(sizeof(kern_block_q6_k) == 210, "q6_k layout");
_Static_assert(sizeof(kern_block_q8_k) == 292, "q8_k layout");

/* dot over n elements of a weight row (its type) and activations in its dot_type. */
typedef float (*kern__dot_fn)(int64_t n, const void *w, const void *xq);
/* activation rounding of n floats into blocks of a dot type */
typedef void (*kern__quant_fn)(const float *x, void *dst, int64_t n);

/* Tables indexed by kern_type_t; NULL where that ISA has no special path (fall back to the
 * next lower ISA). Defined in dot.c (scalar) and dot_avx2.c. */
extern const kern__dot_fn kern__dot_scalar[KERN_TYPE_COUNT];
extern const kern__dot_fn kern__dot_avx2[KERN_TYPE_COUNT];
extern const kern__quant_fn kern__quant_act_scalar[KERN_TYPE_COUNT];
extern const kern__quant_fn kern__quant_act_avx2[KERN_TYPE_COUNT];
/* dst (n floats) = src (n elements of the type); NULL where only the scalar path exists. */
typedef void (*kern__dequant_fn)(const void *src, float *dst, int64_t n);
extern const kern__dequant_fn kern__dequant_avx2[KERN_TYPE_COUNT];

/* The ISA in force (kern_set_isa); read on every dispatch. */
extern kern_isa_t kern__isa;

/* One weight row (type wt) against nx <= KERN__DOTN_MAX activation rows xq_stride bytes apart:
 * out[j * out_stride] = dot(w, row j), nx >= 1. Used by kern_matmul for small batches so the
 * weight unpacking is shared; NULL where a type has none (kernels/dot_avx2.c). */
/* Rows per grab when the pool's threads share single-token products (decode) from a counter.
 * Those stream every weight byte from memory, and a run ends when its slowest thread finishes
 * its last grab, so a grab is sized by bytes: 256 KiB is ~14 us of one thread's read rate here
 * (about 18 GB/s), while the ~7000 grabs a 1.8 GB decode step then takes cost well under 1% in
 * atomics. Sizing by "eight grabs per thread" instead made a grab of the output matrix 20 MB
 * (1 ms of tail per token) and of an expert matrix 1.7 MB. At least 16 rows. */
#define KERN__GRAB_BYTES ((size_t)256 << 10)
static inline int64_t kern__grab_rows(size_t row_bytes)
{
    const int64_t rows = (int64_t)(KERN__GRAB_BYTES / (row_bytes ? row_bytes : 1));
    return rows < 16 ? 16 : rows;
}

#define KERN__DOTN_MAX 4
typedef void (*kern__dotn_fn)(int64_t n, const void *w, const void *xq, size_t xq_stride, int nx,
                              float *out, size_t out_stride);
extern const kern__dotn_fn kern__dotn_avx2[KERN_TYPE_COUNT];

/* A block of nr weight rows (ws bytes apart) against nx activation rows (xs bytes apart, in the
 * weight type's dot_type): out[j * os + r] = dot(w row r, x row j). xd holds, for dot types with
 * fp16 block scales (Q8_0), each activation block's scale as f32: row j's nb = n / 32 scales at
 * xd + j * nb. The tiled kernel of kernels/gemm_avx2.c, NULL where a type has none. */
typedef void (*kern__gemm_fn)(int64_t n, const void *w, size_t ws, int64_t nr, const void *xq,
                              size_t xs, const float *xd, int64_t nx, float *out, size_t os);
extern const kern__gemm_fn kern__gemm_avx2[KERN_TYPE_COUNT];

/* kern_attn's AVX2 body (kernels/attn_avx2.c), for hd and hv multiples of 8. */
void kern__attn_avx2(float *out, size_t out_stride, const float *q, int nq, const void *k,
                     size_t k_stride, const void *v, size_t v_stride, kern_type_t kv_type,
                     int n_kv, int hd, int hv, float scale, float *work);
/* kern_attn_causal's AVX2 body (kernels/attn_block_avx2.c), for hd and hv multiples of 8. Its
 * scratch (kern_attn_causal_work_size) holds the run's query rows padded to a multiple of
 * KERN__ATTN_MR, the rows of one register block. */
#define KERN__ATTN_MR 6
void kern__attn_causal_avx2(float *out, size_t out_stride, const float *q, size_t q_stride,
                            int nq, int n_tok, int pos0, const kern_kv_t *kv, int window,
                            const float *sinks, float scale, float *work);

/* Per-part scratch owned by the pool (kernels/pool.c): a 64-byte aligned buffer of at least
 * bytes for part ith of a run, valid until the next call for the same ith or kern_pool_free.
 * Only the thread running part ith may call it; it grows on first use of a shape, so warm runs
 * never allocate. */
void *kern__pool_scratch(kern_pool_t *pool, int ith, size_t bytes);

/* ---- tiled GEMM for Q4_K, Q5_K, Q6_K and Q4_0 (kernels/gemm_kq_avx2.c) ----
 * kern__gemm_fn's registered in kern__gemm_avx2. The K-quants take Q8_K activations, whose
 * scales are f32 already, so they ignore xd (it may be NULL); Q4_0 takes Q8_0 activations and
 * xd as the Q8_0 tile does. nx = 1 runs kern__dot_avx2's single-row dot per row. */
void kern__gemm_q4_k_avx2(int64_t n, const void *w, size_t ws, int64_t nr, const void *xq,
                          size_t xs, const float *xd, int64_t nx, float *out, size_t os);
void kern__gemm_q5_k_avx2(int64_t n, const void *w, size_t ws, int64_t nr, const void *xq,
                          size_t xs, const float *xd, int64_t nx, float *out, size_t os);
void kern__gemm_q6_k_avx2(int64_t n, const void *w, size_t ws, int64_t nr, const void *xq,
                          size_t xs, const float *xd, int64_t nx, float *out, size_t os);
void kern__gemm_q4_0_avx2(int64_t n, const void *w, size_t ws, int64_t nr, const void *xq,
                          size_t xs, const float *xd, int64_t nx, float *out, size_t os);

/* kern_matmul's path for m > 1, normally chosen per type and m (KERN__PATH_AUTO). The others
 * force one where the type has it, so `moemesh-bench kernels --path` can measure the three side
 * by side: the multi-row or single-row dot, the tiled GEMM, dequantize + sgemm. Process-wide,
 * read on every call, like kern__isa; only benchmarks set it. */
typedef enum { KERN__PATH_AUTO, KERN__PATH_DOT, KERN__PATH_GEMM, KERN__PATH_BLAS } kern__path_t;
extern kern__path_t kern__matmul_path;

#endif
