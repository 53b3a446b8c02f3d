/* Matrix products out (m, d) = x (m, n) @ w^T for weights in any compute type, split across the
 * pool's threads. Two paths give the same math up to float summation order:
 *
 *   dot path (m below the BLAS threshold): each x row is rounded to the weight type's dot_type (as
 *     llama.cpp does), then threads take chunks of weight rows and dot each row with all m
 *     activation rows while it is hot in cache, so every weight byte is read from memory once.
 *   BLAS path (m at or above it): the rounded activations are dequantized back to f32 (so the
 *     numbers multiplied are exactly those of the dot path), each thread dequantizes tiles of
 *     TILE_ROWS weight rows into its scratch and calls single-threaded cblas_sgemm on them.
 *     F32 weights skip both conversions. OpenBLAS is told once to use one thread: it must never
 *     spawn its own threads next to our pool (STYLE.md "Threads").
 *
 * The threshold, measured with `moemesh-bench kernels` (4096 x 4096, GFLOP/s, one thread, on a
 * loaded 2-core Zen 3 VM so only the ranking is trustworthy): for types with a multi-row AVX2
 * kernel (kern__dotn_avx2: Q8_0, Q4_K, Q6_K) the dot path gave 36/37/32/18 (Q8_0) and 46/53/60/44
 * (Q4_K) at m = 8/16/64/512, the BLAS path 13/20/18 and 11/26/32 at m = 16/64/512, so those
 * switch at BLAS_MIN_M_MULTI = 128. Types without one dot each activation row separately, their
 * cost grows with m at the single-row rate, and switch at BLAS_MIN_M = 16.
 *
 * Types with a tiled kernel (kern__gemm_avx2: Q8_0) never take the BLAS path: reusing each
 * loaded weight block for four tokens and each activation block for two rows, in int8, it beat
 * both the multi-row dot and dequantize + sgemm at every m > 1 (same 4096 x 2048 matrix, one
 * thread, CPU time on the loaded machine: 49/60/55/57 GFLOP/s at m = 16/64/128/512 against
 * 32/34/32/32 for the multi-row dot and 54/48 for BLAS at m = 128/512).
 *
 * The K-quants of llama.cpp's Q4_K_M mix (Q4_K, Q6_K; also Q5_K) and Q4_0 have tiled kernels
 * too (kernels/gemm_kq_avx2.c), chosen per type. `moemesh-bench kernels --paths` forces each path
 * (n = 2048, d = 768 like an expert's gate/up and 4096, one thread, GFLOP/s over thread CPU
 * time, best 20 ms batch, load average ~5 on the 2 cores, so again only rankings count), at
 * m = 8/16/64/128/512:
 *
 *   type  d     multi-row dot (Q5_K, Q4_0: one row)  tiled                     BLAS (m >= 16)
 *   Q4_K  768   45/69/62/72/65                       52/65/76/81/81            -/16/46/57/58
 *   Q4_K  4096  46/55/75/76/43                       53/76/82/81/78            -/24/35/56/66
 *   Q5_K  768   42/46/42/30/33                       43/74/80/66/54            -/17/26/34/59
 *   Q5_K  4096  33/34/43/36/43                       72/78/83/81/79            -/19/45/57/62
 *   Q6_K  768   58/56/60/56/49                       63/72/78/79/80            -/17/40/53/65
 *   Q6_K  4096  61/60/63/58/44                       68/75/78/80/81            -/18/42/53/65
 *   Q4_0  768   33/33/33/34/33                       45/51/57/55/52            -/27/55/66/76
 *   Q4_0  4096  34/34/34/34/33                       45/50/55/54/49            -/27/55/66/76
 *
 * An earlier run (load ~4) ranked them the same, except Q4_K at m = 8, where the dot was ahead
 * in both that run and a steadier repeated one on 768 x 2048 (best of four: 74-79 against
 * 69-73); the dot's row unpacking shared by four tokens costs about what staging a superblock
 * for eight does. So Q4_K takes the tile from m = 16 (TILED_MIN_M_Q4_K), Q5_K and Q6_K at every
 * m > 1, and none of the three ever BLAS; Q4_0's tile (a float scale per 32 elements, like
 * Q8_0's) loses to BLAS from m = 128 (BLAS_MIN_M_Q4_0). A single row (decode) keeps the
 * single-row dot whatever the type.
 *
 * Except Q4_1 and Q5_1: their dot type Q8_1 carries s = fp16(d * sum(q)), and llama.cpp's
 * min term m_w * s uses that rounded s. Dequantized tiles would use the exact sum instead, a
 * systematic difference (relative 2^-11 on the min term) rather than a summation-order one,
 * which moved teacher-forced logits of the golden Q4_1/Q5_1 files by up to 0.08 sd and added
 * outlier positions. They always take the dot path.
 *
 * work layout (kern_matmul_work_size): m rounded rows of kern_row_bytes(dot_type, n), each
 * 64-byte aligned; from m = 16 on (either path may then run) m * n f32 rounded activations and
 * pool part 0's weight tile (other parts take theirs from kern__pool_scratch, so warm runs
 * never allocate).
 */
#include <cblas.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "kernels/kern-int.h"
#include "wire/wire.h"

#define BLAS_MIN_M 16
#define BLAS_MIN_M_MULTI 128
#define TILE_ROWS 64
#define TILED_MIN_M_Q4_K 16
#define BLAS_MIN_M_Q4_0 128

static size_t align64(size_t b) { return (b + 63) & ~(size_t)63; }

kern__path_t kern__matmul_path = KERN__PATH_AUTO;

/* For types with a tiled kernel: the smallest m > 1 it takes over from the multi-row dot, and
 * the m from which dequantize + sgemm takes over from it (0: never); measured, see the top. */
static int64_t tiled_min_m(kern_type_t wt) { return wt == KERN_Q4_K ? TILED_MIN_M_Q4_K : 2; }
static int64_t tiled_blas_m(kern_type_t wt) { return wt == KERN_Q4_0 ? BLAS_MIN_M_Q4_0 : 0; }

static bool use_blas(kern_type_t wt, int64_t m)
{
    if (kern_type_info(wt)->dot_type == KERN_Q8_1) return false;
    /* Forced (benchmarks): the work buffer holds the BLAS path's buffers from BLAS_MIN_M on. */
    if (kern__matmul_path == KERN__PATH_BLAS) return m >= BLAS_MIN_M;
    if (kern__matmul_path != KERN__PATH_AUTO) return false;
    if (kern__isa >= KERN_ISA_AVX2 && kern__gemm_avx2[wt] != NULL)
        return tiled_blas_m(wt) && m >= tiled_blas_m(wt);
    const bool multi = kern__isa >= KERN_ISA_AVX2 && kern__dotn_avx2[wt] != NULL;
    return m >= (multi ? BLAS_MIN_M_MULTI : BLAS_MIN_M);
}

size_t kern_matmul_work_size(kern_type_t wt, int64_t m, int64_t n)
{
    const kern_type_info_t *ti = kern_type_info(wt);
    CHECK(ti != NULL && ti->compute && m >= 0 && n >= 0);
    if (wt == KERN_F32) return 64; /* both paths read x directly */
    size_t bytes = (size_t)m * align64(kern_row_bytes(ti->dot_type, n));
    /* The tiled kernel's f32 activation scales (one per block of 32). */
    bytes += align64((size_t)m * (size_t)(n / KERN_QK32) * sizeof(float));
    /* Sized for the BLAS path from the lower threshold on, whatever the ISA: kern_set_isa may
     * change between this call and kern_matmul. */
    if (m >= BLAS_MIN_M) bytes += align64((size_t)m * n * sizeof(float)) +
                              align64((size_t)TILE_ROWS * n * sizeof(float));
    return bytes ? bytes : 64;
}

typedef struct {
    float *out;         /* (m, d) */
    const uint8_t *w;   /* (d rows, w_stride bytes apart) */
    size_t w_stride;
    kern_type_t wt;
    const float *x;     /* (m, n) */
    const uint8_t *xq;  /* (m rows, xq_stride bytes apart) in dot_type */
    size_t xq_stride;
    float *xr;          /* (m, n) rounded activations as f32: BLAS path only */
    float *xd;          /* (m, n / 32) activation block scales as f32: gemm path only */
    float *tile0;       /* (TILE_ROWS, n): pool part 0's weight tile */
    kern__dot_fn dot;   /* resolved once: kern_vec_dot's dispatch per row would cost more */
    kern__dotn_fn dotn; /* several activation rows per weight row, or NULL */
    kern__gemm_fn gemm; /* tiles of weight rows x activation rows, or NULL */
    kern_pool_t *pool;
    int64_t m, n, d;
    int64_t chunk;      /* weight rows per grab */
    atomic_llong next;  /* first weight row not yet taken */
} task_t;

/* Rows are handed out in chunks from a shared counter rather than split evenly up front: the
 * cores are shared (other processes, the loop thread), and a thread that got descheduled then
 * simply takes fewer chunks. */
static bool grab(task_t *t, int64_t *r0, int64_t *r1)
{
    int64_t r = atomic_fetch_add_explicit(&t->next, t->chunk, memory_order_relaxed);
    if (r >= t->d) return false;
    *r0 = r;
    *r1 = r + t->chunk < t->d ? r + t->chunk : t->d;
    return true;
}

/* Rows of x split evenly: quantizing is uniform work on data the thread just reads once. */
static void quantize_cb(void *arg, int ith, int nth)
{
    task_t *t = arg;
    const kern_type_t dt = kern_type_info(t->wt)->dot_type;
    for (int64_t i = t->m * ith / nth; i < t->m * (ith + 1) / nth; i++) {
        uint8_t *q = (uint8_t *)t->xq + i * t->xq_stride;
        kern_quantize_act(dt, t->x + i * t->n, q, t->n);
        if (t->xr) kern_dequantize(dt, q, t->xr + i * t->n, t->n);
        if (t->xd) {
            const kern_block_q8_0 *b = (const kern_block_q8_0 *)q;
            const int64_t nb = t->n / KERN_QK32;
            for (int64_t k = 0; k < nb; k++) t->xd[i * nb + k] = kern_fp16_to_fp32(b[k].d);
        }
    }
}

static void dot_cb(void *arg, int ith, int nth)
{
    (void)ith, (void)nth;
    task_t *t = arg;
    int64_t r0, r1;
    while (grab(t, &r0, &r1)) {
        if (t->gemm) {
            t->gemm(t->n, t->w + r0 * t->w_stride, t->w_stride, r1 - r0, t->xq, t->xq_stride,
                    t->xd, t->m, t->out + r0, (size_t)t->d);
            continue;
        }
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *wr = t->w + r * t->w_stride;
            /* All m activation rows against one weight row while it is in L1/L2; with a multi-row
             * kernel the weight blocks are also unpacked once per KERN__DOTN_MAX rows. */
            if (t->dotn) {
                for (int64_t i = 0; i < t->m; i += KERN__DOTN_MAX) {
                    const int nx = t->m - i < KERN__DOTN_MAX ? (int)(t->m - i) : KERN__DOTN_MAX;
                    t->dotn(t->n, wr, t->xq + i * t->xq_stride, t->xq_stride, nx,
                            t->out + i * t->d + r, (size_t)t->d);
                }
            } else {
                for (int64_t i = 0; i < t->m; i++)
                    t->out[i * t->d + r] = t->dot(t->n, wr, t->xq + i * t->xq_stride);
            }
        }
    }
}

static void blas_cb(void *arg, int ith, int nth)
{
    (void)nth;
    task_t *t = arg;
    float *tile = NULL;
    int64_t r0, r1;
    while (grab(t, &r0, &r1)) {
        const float *b;
        int ldb;
        if (t->wt == KERN_F32) {
            b = (const float *)(t->w + r0 * t->w_stride);
            ldb = (int)(t->w_stride / sizeof(float));
        } else {
            if (!tile)
                tile = ith == 0 ? t->tile0
                                : kern__pool_scratch(t->pool, ith,
                                                     (size_t)TILE_ROWS * t->n * sizeof(float));
            for (int64_t r = r0; r < r1; r++)
                kern_dequantize(t->wt, t->w + r * t->w_stride, tile + (r - r0) * t->n, t->n);
            b = tile;
            ldb = (int)t->n;
        }
        const float *a = t->xr ? t->xr : t->x;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)t->m, (int)(r1 - r0),
                    (int)t->n, 1.0f, a, (int)t->n, b, ldb, 0.0f, t->out + r0, (int)t->d);
    }
}

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_single_thread(void) { openblas_set_num_threads(1); }

void kern_matmul(kern_pool_t *pool, float *out, const void *w, size_t w_stride, kern_type_t wt,
                 const float *x, int64_t m, int64_t n, int64_t d, void *work)
{
    const kern_type_info_t *ti = kern_type_info(wt);
    CHECK(ti != NULL && ti->compute && n % ti->block == 0 && m >= 0 && d >= 0);
    CHECK(w_stride >= kern_row_bytes(wt, n));
    if (m == 0 || d == 0) return;
    const int nth = kern_pool_size(pool);
    const bool blas = use_blas(wt, m);

    task_t t = {
        .out = out, .w = w, .w_stride = w_stride, .wt = wt, .x = x, .pool = pool,
        .m = m, .n = n, .d = d,
    };
    atomic_init(&t.next, 0);
    /* The same choice kern_vec_dot makes (kernels/dot.c), taken once per product. */
    t.dot = kern__isa >= KERN_ISA_AVX2 && kern__dot_avx2[wt] ? kern__dot_avx2[wt]
                                                              : kern__dot_scalar[wt];
    CHECK(t.dot != NULL);
    /* A single activation row keeps single-row kernels tuned for streaming (the tiled
     * kernel's own for m = 1, else kern__dot_*): dotn is for m > 1. */
    if (kern__isa >= KERN_ISA_AVX2) {
        if (m > 1) t.dotn = kern__dotn_avx2[wt];
        bool tiled = m >= tiled_min_m(wt);
        if (kern__matmul_path != KERN__PATH_AUTO) tiled = kern__matmul_path == KERN__PATH_GEMM;
        if (m == 1) tiled = true;
        t.gemm = blas || !tiled ? NULL : kern__gemm_avx2[wt];
    }
    if (wt == KERN_F32) {
        /* F32's dot type is F32 itself: x is already "rounded". */
        t.xq = (const uint8_t *)x;
        t.xq_stride = (size_t)n * sizeof(float);
    } else {
        uint8_t *p = work;
        t.xq = p;
        t.xq_stride = align64(kern_row_bytes(ti->dot_type, n));
        p += (size_t)m * t.xq_stride;
        /* Tiled kernels on Q8_0 activations take their scales as f32 (xd); Q8_K's are f32. */
        if (t.gemm && ti->dot_type == KERN_Q8_0) t.xd = (float *)p;
        p += align64((size_t)m * (size_t)(n / KERN_QK32) * sizeof(float));
        if (blas) {
            t.xr = (float *)p;
            p += align64((size_t)m * n * sizeof(float));
            t.tile0 = (float *)p;
        }
        /* One activation row is too little work to be worth a second dispatch. */
        if (m >= 2 * nth && nth > 1) kern_pool_run(pool, quantize_cb, &t);
        else quantize_cb(&t, 0, 1);
    }

    if (blas) {
        pthread_once(&blas_once, blas_single_thread);
        t.chunk = TILE_ROWS;
        kern_pool_run(pool, blas_cb, &t);
    } else {
        /* A batch: about eight chunks per thread balance well; at least 16 rows keep the
         * counter's cache line from bouncing per row. One token: kern__grab_rows. */
        t.chunk = m == 1 ? kern__grab_rows(w_stride) : d / (8 * nth);
        if (t.chunk < 16) t.chunk = 16;
        kern_pool_run(pool, dot_cb, &t);
    }
}
