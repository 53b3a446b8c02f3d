/* Tests for kernels/moe.c: one token (the decode path, every expert's rows in two pool runs)
 * gives bit for bit what per-expert kern_matmul products, swiglu and the weighted top-k sum in
 * order give, with and without a pool, for Q8_0 (tiled row kernel) and Q4_K/Q6_K (dot table)
 * experts, with absent (-1) entries; and a batch of tokens agrees with one-token calls up to
 * summation order. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kern.h"

#define E 6
#define K 3
#define D 256
#define F 512

#include "trand.h"

static void *quantized(kern_type_t t, int64_t rows, int64_t n)
{
    float *f = malloc(sizeof(float) * n);
    unsigned char *q = malloc(kern_row_bytes(t, n) * rows);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < n; i++) f[i] = frand() * 0.1f;
        kern_quantize(t, f, q + r * kern_row_bytes(t, n), n);
    }
    free(f);
    return q;
}

/* The reference: kern_matmul per expert with m = 1, in top-k order. */
static void reference(const kern_expert_t *ex, const float *x, const int32_t *ids,
                      const float *w, float *out)
{
    float g[F], u[F], y[D];
    void *work = aligned_alloc(64, 1 << 16);
    memset(out, 0, sizeof(float) * D);
    for (int j = 0; j < K; j++) {
        if (ids[j] < 0) continue;
        const kern_expert_t *e = &ex[ids[j]];
        kern_matmul(NULL, g, e->gate, kern_row_bytes(e->gate_type, D), e->gate_type, x, 1, D, F,
                    work);
        kern_matmul(NULL, u, e->up, kern_row_bytes(e->up_type, D), e->up_type, x, 1, D, F, work);
        kern_swiglu(g, g, u, F);
        kern_matmul(NULL, y, e->down, kern_row_bytes(e->down_type, F), e->down_type, g, 1, F, D,
                    work);
        for (int d = 0; d < D; d++) out[d] += y[d] * w[j];
    }
    free(work);
}

static void check_types(kern_type_t gt, kern_type_t ut, kern_type_t dt, int threads)
{
    kern_expert_t ex[E];
    for (int e = 0; e < E; e++)
        ex[e] = (kern_expert_t){gt, ut, dt, quantized(gt, F, D), quantized(ut, F, D),
                                quantized(dt, D, F)};
    kern_pool_t *pool = threads ? kern_pool_new(threads) : NULL;
    const int T = 5;
    size_t ws = kern_moe_work_size(&ex[0], D, F, T, K);
    void *work = aligned_alloc(64, (ws + 63) / 64 * 64);
    float x[T * D], w[T * K], out[D], ref[D], batch[T * D];
    int32_t ids[T * K];
    for (int i = 0; i < T * D; i++) x[i] = frand();
    for (int t = 0; t < T; t++)
        for (int j = 0; j < K; j++) {
            ids[t * K + j] = (t * 5 + j * 2) % E;
            if (t == 3 && j == 1) ids[t * K + j] = -1; /* held elsewhere */
            w[t * K + j] = 0.2f + 0.1f * (float)j;
        }
    kern_moe_ffn(pool, ex, E, D, F, T, K, x, ids, w, batch, work, ws);
    for (int t = 0; t < T; t++) {
        kern_moe_ffn(pool, ex, E, D, F, 1, K, x + t * D, ids + t * K, w + t * K, out, work, ws);
        reference(ex, x + t * D, ids + t * K, w + t * K, ref);
        cr_assert(memcmp(out, ref, sizeof(out)) == 0, "token %d: one-token path is not bit-exact",
                  t);
        double amax = 0, diff = 0;
        for (int d = 0; d < D; d++) {
            amax = fmax(amax, fabs(ref[d]));
            diff = fmax(diff, fabs(ref[d] - batch[t * D + d]));
        }
        cr_assert(diff <= 1e-4 * amax + 1e-6, "token %d: batch differs by %g (max %g)", t, diff,
                  amax);
    }
    for (int e = 0; e < E; e++)
        free((void *)ex[e].gate), free((void *)ex[e].up), free((void *)ex[e].down);
    free(work);
    kern_pool_free(pool);
}

Test(kern_moe, one_token_path_is_bit_exact_with_per_expert_products)
{
    rng_state = 31;
    for (int th = 0; th <= 2; th++) {
        check_types(KERN_Q8_0, KERN_Q8_0, KERN_Q8_0, th);
        check_types(KERN_Q4_K, KERN_Q4_K, KERN_Q6_K, th);
    }
}
