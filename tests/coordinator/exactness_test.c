/* Exactness: an MoE whose experts are identical copies of a dense FFN must give the dense
 * model's logits whatever its router picks, because the renormalised top-k weights sum to one.
 * Built from the real TinyStories checkpoint with model_upcycle (scales all 1), with several
 * router seeds and top-k values, and compared position by position with the dense conversion.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "coordinator/coord.h"

#define N_TOK 48

static void logits_of(const char *path, float *out)
{
    model_t *m = NULL;
    cr_assert_eq(model_load(path, &m), 0);
    kern_pool_t *pool = kern_pool_new(2);
    coord_experts_t *ex = m->hp.n_expert ? coord_experts_local_new(m, pool, N_TOK) : NULL;
    coord_engine_params_t p = coord_engine_params_default();
    p.n_ctx = N_TOK;
    p.n_batch = N_TOK;
    coord_engine_t *e = coord_engine_new(m, ex, pool, &p);
    int32_t tok[N_TOK], pos[N_TOK], slot[N_TOK] = {0};
    bool want[N_TOK];
    uint64_t s = 12345;
    for (int i = 0; i < N_TOK; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        tok[i] = i == 0 ? 1 : (int32_t)(3 + (s >> 33) % 509); /* BOS, then any ids */
        pos[i] = i;
        want[i] = true;
    }
    coord_batch_t b = {.n = N_TOK, .tok = tok, .pos = pos, .slot = slot, .want = want};
    cr_assert_eq(coord_engine_decode(e, &b, out), 0);
    coord_engine_free(e);
    coord_experts_free(ex);
    kern_pool_free(pool);
    model_free(m);
}

Test(coord_exactness, identical_experts_equal_the_dense_model, .timeout = 120)
{
    char dense[] = "/tmp/moemesh-dense-XXXXXX", moe[] = "/tmp/moemesh-moe-XXXXXX";
    int fd1 = mkstemp(dense), fd2 = mkstemp(moe);
    cr_assert(fd1 >= 0 && fd2 >= 0);
    close(fd1), close(fd2);
    model_upcycle_params_t p = model_upcycle_params_default();
    p.n_experts = 0;
    cr_assert_eq(model_upcycle("models/stories260K.bin", "models/tok512.bin", dense, &p), 0);
    const int V = 512;
    float *ref = malloc(sizeof(float) * N_TOK * V), *out = malloc(sizeof(float) * N_TOK * V);
    logits_of(dense, ref);

    const double ones[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    const int configs[][3] = {{4, 2, 1}, {4, 2, 7}, {8, 3, 2}, {3, 1, 5}}; /* E, k, seed */
    for (size_t c = 0; c < sizeof(configs) / sizeof(configs[0]); c++) {
        p = model_upcycle_params_default();
        p.n_experts = configs[c][0];
        p.n_used = configs[c][1];
        p.seed = (uint64_t)configs[c][2];
        p.scales = ones;
        cr_assert_eq(model_upcycle("models/stories260K.bin", "models/tok512.bin", moe, &p), 0);
        logits_of(moe, out);
        for (int i = 0; i < N_TOK; i++) {
            double mean = 0, var = 0, maxd = 0;
            for (int v = 0; v < V; v++) mean += ref[i * V + v];
            mean /= V;
            for (int v = 0; v < V; v++) {
                double d = ref[i * V + v] - mean;
                var += d * d;
                maxd = fmax(maxd, fabs((double)out[i * V + v] - ref[i * V + v]));
            }
            /* Only the rounding of w_1 + ... + w_k = 1 separates the two: ~1e-7 relative. */
            cr_assert_leq(maxd / sqrt(var / V), 1e-5, "E=%d k=%d seed=%d, position %d: %g sd",
                          configs[c][0], configs[c][1], configs[c][2], i, maxd / sqrt(var / V));
        }
    }
    free(ref), free(out);
    unlink(dense), unlink(moe);
}
