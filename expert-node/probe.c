/* Capacity probe: how fast this node runs a routed expert, measured on a fixed reference expert
 * with random q8_0 weights through kern_moe_ffn, the very call FORWARDs go through. The shard's
 * real shape is not known before ASSIGN, and placement happens before it, so the coordinator
 * scales this reference figure by the multiply-adds of its model's experts (coordinator/
 * cluster.c place()). About 40 ms on the socket thread at the first HELLO, once per process.
 */
#include "expert-node/xnode-int.h"

#include <stdlib.h>

#include "kernels/kern.h"
#include "wire/wire.h"

#define PROBE_S 0.04
#define PROBE_MIN_CALLS 3

/* Rows of uniform [-1, 1) values quantized to q8_0: (rows, cols) bytes of the type. */
static void *random_q8(int rows, int cols, uint64_t *s)
{
    size_t rb = kern_row_bytes(KERN_Q8_0, cols);
    unsigned char *w = xmalloc(rb * (size_t)rows);
    float *row = xmalloc(sizeof(float) * (size_t)cols);
    for (int r = 0; r < rows; r++) {
        for (int i = 0; i < cols; i++) {
            *s = *s * 6364136223846793005ull + 1442695040888963407ull;
            row[i] = (float)((double)(*s >> 11) / 9007199254740992.0 * 2 - 1);
        }
        kern_quantize(KERN_Q8_0, row, w + rb * (size_t)r, cols);
    }
    free(row);
    return w;
}

float xnode__probe_capacity(int threads)
{
    const int D = WIRE_CAPACITY_REF_EMBD, F = WIRE_CAPACITY_REF_FF, T = WIRE_CAPACITY_REF_TOKENS;
    uint64_t s = 42;
    kern_expert_t ex = {KERN_Q8_0, KERN_Q8_0, KERN_Q8_0, random_q8(F, D, &s),
                        random_q8(F, D, &s), random_q8(D, F, &s)};
    kern_pool_t *pool = kern_pool_new(threads > 0 ? threads : 1);
    size_t wsz = kern_moe_work_size(&ex, D, F, T, 1);
    void *work = aligned_alloc(64, (wsz + 63) / 64 * 64);
    CHECK(work);
    float *x = xcalloc((size_t)T * D, sizeof(float)), *out = xmalloc(sizeof(float) * T * D);
    int32_t ids[WIRE_CAPACITY_REF_TOKENS] = {0};
    float w[WIRE_CAPACITY_REF_TOKENS];
    for (int t = 0; t < T; t++) {
        w[t] = 1;
        for (int i = 0; i < D; i++) x[(size_t)t * D + i] = (float)((i * 7 + t) % 13) / 13 - 0.5f;
    }
    int calls = 0;
    double t0 = wire_now(), dt;
    do {
        kern_moe_ffn(pool, &ex, 1, D, F, T, 1, x, ids, w, out, work, wsz);
        calls++;
        dt = wire_now() - t0;
    } while (calls < PROBE_MIN_CALLS || dt < PROBE_S);
    free(x), free(out), free(work);
    free((void *)ex.gate), free((void *)ex.up), free((void *)ex.down);
    kern_pool_free(pool);
    double cap = (double)calls * T / (dt > 1e-9 ? dt : 1e-9);
    LOG_INFO("capacity: %.0f expert-token pairs/s on the reference expert (q8_0 %dx%d, %d "
             "threads)", cap, D, F, threads);
    return (float)cap;
}
