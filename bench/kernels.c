/* moemesh-bench kernels: how close the matrix kernels get to the machine's memory bandwidth.
 *
 *   1. read bandwidth: summing a 1 GiB buffer, best of 8 passes, 1 and N threads;
 *   2. pool dispatch: microseconds per empty kern_pool_run;
 *   3. GEMV (m = 1, plus an expert-sized batch) on shapes of real models, per weight type:
 *      weight GB/s, GFLOP/s and % of the read bandwidth with the same thread count;
 *   4. GEMM (m = 8, 16, 64, 512) GFLOP/s for F32 (BLAS), Q8_0 and Q4_K (tiled int8 kernels),
 *      either side of the thresholds of kernels/matmul.c;
 *   --expert instead of 3 and 4: one grouped expert FFN (kern_moe_ffn) of 1..512 tokens;
 *   --paths instead of 3 and 4: per quantized type and expert-like shape, each of kern_matmul's
 *      paths forced in turn (multi-row dot, tiled int8 GEMM, dequantize + sgemm), one thread,
 *      GFLOP/s over thread CPU time, the figures kernels/matmul.c's thresholds come from;
 *   --attn instead: a prompt's attention on one thread, per token (kern_attn) against blockwise
 *      (kern_attn_causal), in thread CPU time so other load on the machine counts less.
 *
 * Weights are rotated through copies totalling >= 256 MiB so that even small matrices come from
 * DRAM, as in decode where every layer's weights are touched once per token. Weight contents
 * do not matter for speed, so a few quantized rows are replicated instead of quantizing
 * gigabytes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"
#include "kernels/kern-int.h" /* kern__matmul_path, kern__gemm_avx2, kern__dotn_avx2 (--paths) */
#include "wire/wire.h"

#define ROTATE_BYTES ((size_t)256 << 20)

static double g_seconds = 0.3;       /* per measurement */
static const char *g_types = NULL;   /* comma-separated type names to measure; NULL: all */

static bool wanted(kern_type_t t)
{
    if (!g_types) return true;
    const char *name = kern_type_info(t)->name;
    size_t len = strlen(name);
    for (const char *p = g_types; (p = strstr(p, name)) != NULL; p += len)
        if ((p == g_types || p[-1] == ',') && (p[len] == ',' || p[len] == '\0')) return true;
    return false;
}

/* ---- read bandwidth ---- */

typedef struct {
    const uint64_t *buf; /* (words) */
    size_t words;
    uint64_t sums[64];   /* per thread, keeps the loads alive */
} bw_task_t;

static void bw_cb(void *arg, int ith, int nth)
{
    bw_task_t *t = arg;
    size_t lo = t->words * ith / nth & ~(size_t)7, hi = t->words * (ith + 1) / nth & ~(size_t)7;
    if (kern_isa_best() >= KERN_ISA_AVX2) {
        t->sums[ith] = bench__read_sum_avx2(t->buf + lo, hi - lo);
        return;
    }
    /* Vector adds in four independent chains, so the loop is bound by loads, not by add
     * latency or by 8-byte scalar loads (this file is built without -mavx2; 16-byte SSE2 loads
     * still outrun DRAM). */
    typedef uint64_t v2u __attribute__((vector_size(16)));
    v2u s[4] = {{0, 0}, {0, 0}, {0, 0}, {0, 0}};
    const v2u *v = (const v2u *)(t->buf + lo);
    for (size_t i = 0; i < (hi - lo) / 2; i += 4)
        for (int k = 0; k < 4; k++) s[k] += v[i + k];
    v2u a = s[0] + s[1] + s[2] + s[3];
    t->sums[ith] = a[0] + a[1];
}

static double read_bandwidth(kern_pool_t *pool, const uint64_t *buf, size_t bytes);

double bench__read_bandwidth(kern_pool_t *pool)
{
    const size_t bytes = (size_t)1 << 30;
    uint64_t *buf = xmalloc_aligned(64, bytes);
    memset(buf, 1, bytes);
    double bw = read_bandwidth(pool, buf, bytes);
    free(buf);
    return bw;
}

static double read_bandwidth(kern_pool_t *pool, const uint64_t *buf, size_t bytes)
{
    bw_task_t t = {.buf = buf, .words = bytes / 8};
    double best = 0;
    for (int pass = 0; pass < 8; pass++) {
        double t0 = wire_now();
        kern_pool_run(pool, bw_cb, &t);
        double gbs = (double)bytes / (wire_now() - t0) / 1e9;
        if (gbs > best) best = gbs;
    }
    return best;
}

/* ---- pool dispatch ---- */

static void nop_cb(void *arg, int ith, int nth) { (void)arg, (void)ith, (void)nth; }

/* Best of 20 batches of 1000 runs, for the same reason as time_matmul. */
static double dispatch_us(kern_pool_t *pool)
{
    double best = 1e30;
    kern_pool_run(pool, nop_cb, NULL);
    for (int b = 0; b < 20; b++) {
        double t0 = wire_now();
        for (int i = 0; i < 1000; i++) kern_pool_run(pool, nop_cb, NULL);
        double us = (wire_now() - t0) / 1000 * 1e6;
        if (us < best) best = us;
    }
    return best;
}

/* ---- products ---- */

typedef struct {
    kern_type_t wt;
    int64_t n, d;
    size_t row_bytes, mat_bytes;
    int copies;
    uint8_t *w; /* (copies * d rows) */
} weights_t;

static void weights_init(weights_t *w, kern_type_t wt, int64_t n, int64_t d, bool rotate)
{
    w->wt = wt, w->n = n, w->d = d;
    w->row_bytes = kern_row_bytes(wt, n);
    w->mat_bytes = w->row_bytes * (size_t)d;
    w->copies = rotate ? (int)((ROTATE_BYTES + w->mat_bytes - 1) / w->mat_bytes) : 1;
    size_t total = w->mat_bytes * (size_t)w->copies;
    w->w = xmalloc_aligned(64, total);
    float *src = xmalloc((size_t)n * sizeof(float));
    const int distinct = 16;
    for (int r = 0; r < distinct && r < d * w->copies; r++) {
        for (int64_t i = 0; i < n; i++)
            src[i] = (float)((r * 131 + i * 7919) % 2001 - 1000) / 997.f;
        kern_quantize(wt, src, w->w + (size_t)r * w->row_bytes, n);
    }
    for (size_t r = distinct; r < (size_t)d * w->copies; r++)
        memcpy(w->w + r * w->row_bytes, w->w + (r % distinct) * w->row_bytes, w->row_bytes);
    free(src);
}

/* Seconds per product: the best batch of ~20 ms within g_seconds, after one warm-up call (which
 * also grows the pool's scratch, as a server's first token would). The best batch rather than
 * the mean, because the cores are shared: other processes only ever make a batch slower. */
static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* time_matmul with the batches timed by clock (wall or this thread's CPU time); the budget
 * g_seconds is always wall time. */
static double time_matmul_on(kern_pool_t *pool, const weights_t *w, int64_t m, const float *x,
                             float *out, void *work, double (*clock)(void))
{
    kern_matmul(pool, out, w->w, w->row_bytes, w->wt, x, m, w->n, w->d, work);
    double best = 1e30, start = wire_now();
    int iters = 0;
    do {
        int k = 0;
        double t0 = clock(), t;
        do {
            const uint8_t *mat = w->w + (size_t)(iters++ % w->copies) * w->mat_bytes;
            kern_matmul(pool, out, mat, w->row_bytes, w->wt, x, m, w->n, w->d, work);
            k++;
            t = clock() - t0;
        } while (t < 0.02);
        if (t / k < best) best = t / k;
    } while (wire_now() - start < g_seconds);
    return best;
}

static double time_matmul(kern_pool_t *pool, const weights_t *w, int64_t m, const float *x,
                          float *out, void *work)
{
    return time_matmul_on(pool, w, m, x, out, work, wire_now);
}

static const kern_type_t gemv_types[] = {
    KERN_F32,  KERN_F16,  KERN_BF16, KERN_Q8_0, KERN_Q4_0, KERN_Q4_1,
    KERN_Q5_0, KERN_Q5_1, KERN_Q4_K, KERN_Q5_K, KERN_Q6_K,
};

static const struct {
    int64_t m, d, n;
    const char *what;
} gemv_shapes[] = {
    {1, 2048, 768, "OLMoE expert up"},
    {1, 768, 2048, "OLMoE expert down"},
    {1, 4096, 14336, "Mixtral expert down"},
    {8, 14336, 4096, "Mixtral expert up, 8 tokens"},
};

static int usage(void)
{
    fprintf(stderr,
            "usage: moemesh-bench kernels [--threads N] [--seconds S] [--types Q8_0,Q4_K,...] "
            "[--expert | --paths | --attn [--prompt N]]\n");
    return 2;
}

/* ---- --expert: one kern_moe_ffn call on the shape ----
 * 40 Q8_0 experts of dim 2048 and ff 768 (200 MB, so they come from DRAM as in a server), top-8
 * routing drawn from a seeded PRNG, 1, 8, 64 and 512 tokens. The floor is the bytes of the
 * distinct experts the call touches over the read bandwidth with the same threads. */
static int expert_main(kern_pool_t *pools[2], const double bw[2])
{
    enum { E = 40, K = 8, D = 2048, F = 768, MAXT = 512 };
    weights_t gu, dn;
    weights_init(&gu, KERN_Q8_0, D, (int64_t)F * E * 2, false); /* gate, up of each expert */
    weights_init(&dn, KERN_Q8_0, F, (int64_t)D * E, false);
    kern_expert_t ex[E];
    const size_t mat_gu = kern_row_bytes(KERN_Q8_0, D) * F;
    const size_t mat_dn = kern_row_bytes(KERN_Q8_0, F) * D;
    for (int e = 0; e < E; e++) {
        ex[e] = (kern_expert_t){KERN_Q8_0, KERN_Q8_0, KERN_Q8_0, gu.w + (size_t)(2 * e) * mat_gu,
                                gu.w + (size_t)(2 * e + 1) * mat_gu, dn.w + (size_t)e * mat_dn};
    }
    float *x = xmalloc(sizeof(float) * MAXT * D), *out = xmalloc(sizeof(float) * MAXT * D);
    float *w = xmalloc(sizeof(float) * MAXT * K);
    int32_t *ids = xmalloc(sizeof(int32_t) * MAXT * K);
    for (size_t i = 0; i < (size_t)MAXT * D; i++) x[i] = (float)(i % 29) / 14.f - 1.f;
    const size_t ws = kern_moe_work_size(&ex[0], D, F, MAXT, K);
    void *work = xmalloc_aligned(64, ws);
    uint64_t s = 12345;
    printf("kern_moe_ffn, %d Q8_0 experts (dim %d, ff %d), top-%d: ms per call, GB/s of distinct "
           "expert weights, %% of read bandwidth\n", E, D, F, K);
    printf("%-6s %7s | %9s %8s %5s | %9s %8s %5s\n", "tokens", "experts", "1t ms", "GB/s", "%bw",
           "Nt ms", "GB/s", "%bw");
    const int toks[] = {1, 8, 64, 512};
    for (int ti = 0; ti < 4; ti++) {
        const int T = toks[ti];
        bool used[E] = {false};
        for (int t = 0; t < T; t++) {
            for (int j = 0; j < K; j++) {
                int id;
                bool dup;
                do {
                    s = s * 6364136223846793005ull + 1442695040888963407ull;
                    id = (int)((s >> 33) % E);
                    dup = false;
                    for (int q = 0; q < j; q++) dup |= ids[t * K + q] == id;
                } while (dup);
                ids[t * K + j] = id;
                w[t * K + j] = 1.0f / K;
                used[id] = true;
            }
        }
        int ne = 0;
        for (int e = 0; e < E; e++) ne += used[e];
        const double bytes = (double)ne * (2 * mat_gu + mat_dn);
        printf("%-6d %7d |", T, ne);
        for (int p = 0; p < 2; p++) {
            double best = 1e30, start = wire_now();
            do {
                double t0 = wire_now();
                kern_moe_ffn(pools[p], ex, E, D, F, T, K, x, ids, w, out, work, ws);
                double t = wire_now() - t0;
                if (t < best) best = t;
            } while (wire_now() - start < g_seconds * (T >= 64 ? 4 : 1));
            printf(" %9.2f %8.1f %4.0f%%%s", best * 1e3, bytes / best / 1e9,
                   100 * bytes / best / 1e9 / bw[p], p == 0 ? " |" : "\n");
        }
        fflush(stdout);
    }
    free(x), free(out), free(w), free(ids), free(work), free(gu.w), free(dn.w);
    return 0;
}

static size_t max_szk(size_t a, size_t b) { return a > b ? a : b; }

/* ---- --attn: the attention of one layer over a prompt, on one thread ----
 * The shape of the model: 32 query heads over 4 kv heads of dim 128, the cache laid out
 * as the engine's (positions kv_dim apart, heads interleaved), every prompt token at its own
 * position. Old: one kern_attn per (token, kv head), as decode does; new: kern_attn_causal per
 * (block of 16 tokens, kv head), as coordinator/engine.c's prefill does. Thread CPU time, best
 * of the runs in the time budget, the two paths alternating. */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int attn_main(int P)
{
    enum { NH = 32, KV = 4, HD = 128, G = NH / KV, TB = 16 };
    const float scale = 1.0f / sqrtf((float)HD);
    float *q = xmalloc(sizeof(float) * (size_t)P * NH * HD);
    float *out = xmalloc(sizeof(float) * (size_t)P * NH * HD);
    float *kc = xmalloc(sizeof(float) * (size_t)P * KV * HD);
    float *vc = xmalloc(sizeof(float) * (size_t)P * KV * HD);
    uint16_t *kh = xmalloc(sizeof(uint16_t) * (size_t)P * KV * HD);
    uint16_t *vh = xmalloc(sizeof(uint16_t) * (size_t)P * KV * HD);
    uint64_t s = 7;
    for (size_t i = 0; i < (size_t)P * NH * HD; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        q[i] = (float)(s >> 40) / (float)(1 << 24) * 2 - 1;
    }
    for (size_t i = 0; i < (size_t)P * KV * HD; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        kc[i] = (float)(s >> 40) / (float)(1 << 24) * 2 - 1;
        vc[i] = (float)((s >> 20) & 0xfffff) / (float)(1 << 20) - 0.5f;
        kh[i] = kern_fp32_to_fp16(kc[i]), vh[i] = kern_fp32_to_fp16(vc[i]);
    }
    float *w = xmalloc(sizeof(float) * max_szk(kern_attn_work_size(G, P, HD),
                                              kern_attn_causal_work_size(G, TB, HD, HD)));
    const double flop = 4.0 * HD * NH * ((double)P * (P + 1) / 2);
    printf("prefill attention of %d tokens, %d query heads over %d kv heads of dim %d, 1 thread, "
           "thread CPU ms (best) and GFLOP/s\n", P, NH, KV, HD);
    printf("%-5s | %10s %8s | %10s %8s | %6s\n", "cache", "per token", "GFLOP/s", "blockwise",
           "GFLOP/s", "ratio");
    for (int f16 = 0; f16 < 2; f16++) {
        const kern_type_t kt = f16 ? KERN_F16 : KERN_F32;
        const size_t es = f16 ? 2 : 4, stride = es * KV * HD;
        const uint8_t *k = f16 ? (const uint8_t *)kh : (const uint8_t *)kc;
        const uint8_t *v = f16 ? (const uint8_t *)vh : (const uint8_t *)vc;
        double best[2] = {1e30, 1e30};
        const double start = wire_now();
        do {
            for (int path = 0; path < 2; path++) {
                const double t0 = cpu_now();
                for (int h = 0; h < KV; h++) {
                    const uint8_t *kh0 = k + es * h * HD, *vh0 = v + es * h * HD;
                    const kern_kv_t kv = {kh0, vh0, stride, stride, kt, HD, HD};
                    for (int t = 0; t < P; t += path ? TB : 1) {
                        const float *qt = q + ((size_t)t * NH + (size_t)h * G) * HD;
                        float *ot = out + ((size_t)t * NH + (size_t)h * G) * HD;
                        if (path == 0)
                            kern_attn(ot, HD, qt, G, kh0, stride, vh0, stride, kt, t + 1, HD, HD,
                                      scale, w);
                        else
                            kern_attn_causal(ot, (size_t)NH * HD, qt, (size_t)NH * HD, G,
                                             P - t < TB ? P - t : TB, t, &kv, 0, NULL, scale, w);
                    }
                }
                const double dt = cpu_now() - t0;
                if (dt < best[path]) best[path] = dt;
            }
        } while (wire_now() - start < 4 * g_seconds);
        printf("%-5s | %10.2f %8.1f | %10.2f %8.1f | %5.2fx\n", f16 ? "F16" : "F32",
               best[0] * 1e3, flop / best[0] / 1e9, best[1] * 1e3, flop / best[1] / 1e9,
               best[0] / best[1]);
        fflush(stdout);
    }
    free(q), free(out), free(kc), free(vc), free(kh), free(vh), free(w);
    return 0;
}

/* ---- --paths: the three kern_matmul paths side by side ----
 * CPU time of the calling thread on a one-thread pool, so other processes on the shared cores
 * cost wall time but not the figure; best batch of ~20 ms as in time_matmul. */
static double time_matmul_cpu(kern_pool_t *pool, const weights_t *w, int64_t m, const float *x,
                              float *out, void *work)
{
    return time_matmul_on(pool, w, m, x, out, work, thread_cpu);
}

static int paths_main(kern_pool_t *pool)
{
    const kern_type_t types[] = {KERN_Q8_0, KERN_Q4_K, KERN_Q5_K, KERN_Q6_K, KERN_Q4_0};
    const int64_t d_of[] = {768, 4096}, n = 2048, ms[] = {8, 16, 64, 128, 512};
    const char *names[] = {"dot", "tiled", "blas"};
    const kern__path_t paths[] = {KERN__PATH_DOT, KERN__PATH_GEMM, KERN__PATH_BLAS};
    enum { NM = sizeof(ms) / sizeof(ms[0]) };
    printf("kern_matmul paths, n = %ld, one thread, GFLOP/s over thread CPU time (dot: multi-row "
           "where the type has one; BLAS from m = 16)\n", (long)n);
    printf("%-6s %5s %-6s", "type", "d", "path");
    for (int j = 0; j < NM; j++) printf(" | m=%-4ld", (long)ms[j]);
    printf("\n");
    float *x = xmalloc(sizeof(float) * 512 * n), *out = xmalloc(sizeof(float) * 512 * 4096);
    for (int64_t i = 0; i < 512 * n; i++) x[i] = (float)(i % 23) / 11.f - 1.f;
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
        if (!wanted(types[t])) continue;
        for (int s = 0; s < 2; s++) {
            weights_t w;
            weights_init(&w, types[t], n, d_of[s], true);
            for (int p = 0; p < 3; p++) {
                if (paths[p] == KERN__PATH_GEMM && !kern__gemm_avx2[types[t]]) continue;
                printf("%-6s %5ld %-6s", kern_type_info(types[t])->name, (long)d_of[s], names[p]);
                kern__matmul_path = paths[p];
                for (int j = 0; j < NM; j++) {
                    if (paths[p] == KERN__PATH_BLAS && ms[j] < 16) {
                        printf(" | %6s", "-");
                        continue;
                    }
                    void *work = xmalloc_aligned(64, kern_matmul_work_size(w.wt, ms[j], n));
                    double sec = time_matmul_cpu(pool, &w, ms[j], x, out, work);
                    printf(" | %6.1f", 2.0 * ms[j] * n * d_of[s] / sec / 1e9);
                    fflush(stdout);
                    free(work);
                }
                printf("\n");
            }
            free(w.w);
        }
    }
    kern__matmul_path = KERN__PATH_AUTO;
    free(x), free(out);
    return 0;
}

int bench_kernels_main(int argc, char **argv)
{
    int nthreads = 2;
    bool expert = false, paths = false;
    int attn_prompt = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            nthreads = atoi(argv[++i]);
            if (nthreads < 1 || nthreads > 64) return usage();
        } else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
            g_seconds = atof(argv[++i]);
            if (!(g_seconds > 0 && g_seconds < 60)) return usage();
        } else if (strcmp(argv[i], "--expert") == 0) {
            expert = true;
        } else if (strcmp(argv[i], "--attn") == 0) {
            attn_prompt = attn_prompt ? attn_prompt : 512;
        } else if (strcmp(argv[i], "--prompt") == 0 && i + 1 < argc) {
            attn_prompt = atoi(argv[++i]);
            if (attn_prompt < 1 || attn_prompt > 65536) return usage();
        } else if (strcmp(argv[i], "--paths") == 0) {
            paths = true;
        } else if (strcmp(argv[i], "--types") == 0 && i + 1 < argc) {
            g_types = argv[++i];
        } else {
            return usage();
        }
    }
    if (attn_prompt) {
        printf("moemesh-bench kernels: ISA %s\n\n", kern_isa_name(kern_set_isa(kern_isa_best())));
        return attn_main(attn_prompt);
    }
    kern_pool_t *pools[2] = {kern_pool_new(1), kern_pool_new(nthreads)};
    printf("moemesh-bench kernels: ISA %s, threads 1 and %d, %.2f s per figure\n\n",
           kern_isa_name(kern_set_isa(kern_isa_best())), nthreads, g_seconds);

    const size_t bw_bytes = (size_t)1 << 30;
    uint64_t *buf = xmalloc_aligned(64, bw_bytes);
    memset(buf, 1, bw_bytes);
    double bw[2];
    for (int p = 0; p < 2; p++) bw[p] = read_bandwidth(pools[p], buf, bw_bytes);
    free(buf);
    printf("read bandwidth (sum of 1 GiB, best of 8): %.1f GB/s on 1 thread, %.1f GB/s on %d\n",
           bw[0], bw[1], nthreads);
    printf("pool dispatch (empty run): %.2f us on %d threads\n\n", dispatch_us(pools[1]),
           nthreads);
    if (expert || paths) {
        int rc = expert ? expert_main(pools, bw) : paths_main(pools[0]);
        kern_pool_free(pools[0]);
        kern_pool_free(pools[1]);
        return rc;
    }

    printf("GEMV / small batch: weight GB/s, GFLOP/s, %% of read bandwidth\n");
    printf("%-6s %-30s | %8s %8s %5s | %8s %8s %5s\n", "type", "m x d x n", "1t GB/s", "GFLOP/s",
           "%bw", "Nt GB/s", "GFLOP/s", "%bw");
    for (size_t s = 0; s < sizeof(gemv_shapes) / sizeof(gemv_shapes[0]); s++) {
        const int64_t m = gemv_shapes[s].m, d = gemv_shapes[s].d, n = gemv_shapes[s].n;
        float *x = xmalloc((size_t)(m * n) * sizeof(float));
        float *out = xmalloc((size_t)(m * d) * sizeof(float));
        for (int64_t i = 0; i < m * n; i++) x[i] = (float)(i % 17) / 8.f - 1.f;
        for (size_t t = 0; t < sizeof(gemv_types) / sizeof(gemv_types[0]); t++) {
            if (!wanted(gemv_types[t])) continue;
            weights_t w;
            weights_init(&w, gemv_types[t], n, d, true);
            void *work = xmalloc_aligned(64, kern_matmul_work_size(w.wt, m, n));
            char shape[64];
            snprintf(shape, sizeof shape, "%ldx%ldx%ld %s", (long)m, (long)d, (long)n,
                     gemv_shapes[s].what);
            printf("%-6s %-30.30s |", kern_type_info(w.wt)->name, shape);
            for (int p = 0; p < 2; p++) {
                double sec = time_matmul(pools[p], &w, m, x, out, work);
                double gbs = (double)w.mat_bytes / sec / 1e9;
                printf(" %8.2f %8.2f %4.0f%%%s", gbs, 2.0 * m * n * d / sec / 1e9,
                       100 * gbs / bw[p], p == 0 ? " |" : "\n");
            }
            fflush(stdout);
            free(work);
            free(w.w);
        }
        free(x);
        free(out);
    }

    printf("\nGEMM 4096 x 4096 weights: GFLOP/s (F32 BLAS; Q8_0 tiled int8; Q4_K multi-row dot "
           "below m = 16, tiled int8 from there; --paths compares the paths)\n");
    const kern_type_t gemm_types[] = {KERN_F32, KERN_Q8_0, KERN_Q4_K};
    const int64_t gemm_m[] = {8, 16, 64, 512}, n = 4096, d = 4096;
    printf("%-6s", "type");
    for (size_t j = 0; j < 4; j++) printf(" | m=%-4ld 1t  %dt", (long)gemm_m[j], nthreads);
    printf("\n");
    float *x = xmalloc((size_t)(512 * n) * sizeof(float));
    float *out = xmalloc((size_t)(512 * d) * sizeof(float));
    for (int64_t i = 0; i < 512 * n; i++) x[i] = (float)(i % 23) / 11.f - 1.f;
    for (size_t t = 0; t < 3; t++) {
        if (!wanted(gemm_types[t])) continue;
        weights_t w;
        weights_init(&w, gemm_types[t], n, d, false);
        printf("%-6s", kern_type_info(w.wt)->name);
        for (size_t j = 0; j < 4; j++) {
            void *work = xmalloc_aligned(64, kern_matmul_work_size(w.wt, gemm_m[j], n));
            printf(" |");
            for (int p = 0; p < 2; p++) {
                double sec = time_matmul(pools[p], &w, gemm_m[j], x, out, work);
                printf(" %6.1f", 2.0 * gemm_m[j] * n * d / sec / 1e9);
            }
            fflush(stdout);
            free(work);
        }
        printf("\n");
        free(w.w);
    }
    free(x);
    free(out);
    kern_pool_free(pools[0]);
    kern_pool_free(pools[1]);
    return 0;
}
