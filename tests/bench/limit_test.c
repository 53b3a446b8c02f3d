/* Tests for bench/limit.c: the limit model's arithmetic on inputs worked out by hand, and the
 * active-bytes count of a real MoE file against its tensor sizes. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "bench/bench.h"

#define MODEL "../shared/golden/qwen3moe-tiny-f32.gguf"

static bool near(double a, double b) { return fabs(a - b) <= 1e-9 * fmax(1, fabs(b)); }

/* One token per round trip, 1 GB per token at 10 GB/s: compute (100 ms) beats 10 layers x 1 ms
 * of RTT and 100 kB over 100 Mbit/s (8 ms). */
Test(limit, compute_bound)
{
    bench_limit_in_t in = {.active_bytes = 1e9, .bandwidth_gbs = 10, .n_layers = 10,
                           .rtt_ms = 1, .rt_per_token = 10, .wire_bytes_per_token = 1e5,
                           .rate_mbit = 100, .measured_s = 0.2};
    bench_limit_t l = bench_limit_compute(&in);
    cr_expect(near(l.tokens_per_rt, 1));
    cr_expect(near(l.compute_s, 0.1), "%g", l.compute_s);
    cr_expect(near(l.latency_s, 0.010), "%g", l.latency_s);
    cr_expect(near(l.wire_s, 0.008), "%g", l.wire_s);
    cr_expect(near(l.limit_s, 0.1));
    cr_expect_str_eq(l.bound, "compute");
    cr_expect(near(l.ratio, 2), "%g", l.ratio);
}

/* Four tokens share each round trip (2.5 round trips per token over 10 layers): 10 x 5 ms / 4 =
 * 12.5 ms of latency beats 1 MB / 10 GB/s / 4 = 25 us; unlimited rate has no wire term. */
Test(limit, latency_bound_with_batching)
{
    bench_limit_in_t in = {.active_bytes = 1e6, .bandwidth_gbs = 10, .n_layers = 10,
                           .rtt_ms = 5, .rt_per_token = 2.5, .wire_bytes_per_token = 1e6,
                           .rate_mbit = 0, .measured_s = 0.025};
    bench_limit_t l = bench_limit_compute(&in);
    cr_expect(near(l.tokens_per_rt, 4));
    cr_expect(near(l.compute_s, 25e-6), "%g", l.compute_s);
    cr_expect(near(l.latency_s, 0.0125), "%g", l.latency_s);
    cr_expect_eq(l.wire_s, 0);
    cr_expect_str_eq(l.bound, "latency");
    cr_expect(near(l.ratio, 2));
}

/* 1 MB per token over 10 Mbit/s is 0.8 s: the wire binds. No RTT, no measurement: no ratio. */
Test(limit, wire_bound_no_ratio)
{
    bench_limit_in_t in = {.active_bytes = 1e6, .bandwidth_gbs = 10, .n_layers = 4,
                           .rtt_ms = 0, .rt_per_token = 4, .wire_bytes_per_token = 1e6,
                           .rate_mbit = 10};
    bench_limit_t l = bench_limit_compute(&in);
    cr_expect(near(l.wire_s, 0.8), "%g", l.wire_s);
    cr_expect_eq(l.latency_s, 0);
    cr_expect_str_eq(l.bound, "wire");
    cr_expect_eq(l.ratio, 0);
}

/* Unknown round trips count as one token per round trip; no bandwidth: no compute term. */
Test(limit, missing_inputs)
{
    bench_limit_in_t in = {.n_layers = 8, .rtt_ms = 2, .measured_s = 0.032};
    bench_limit_t l = bench_limit_compute(&in);
    cr_expect(near(l.tokens_per_rt, 1));
    cr_expect_eq(l.compute_s, 0);
    cr_expect(near(l.latency_s, 0.016));
    cr_expect(near(l.ratio, 2));
}

/* A top-k MoE reads less than all its matrices and more than its non-expert ones. */
Test(limit, active_bytes_between_dense_and_total)
{
    model_t *m = NULL;
    cr_assert_eq(model_load(MODEL, &m), 0);
    cr_assert_gt(m->hp.n_expert, m->hp.n_expert_used);
    double dense = (double)m->output->nbytes, all = dense;
    for (int il = 0; il < m->hp.n_layer; il++) {
        const model_layer_t *ly = &m->layers[il];
        const model_tensor_t *d[] = {ly->wq, ly->wk, ly->wv, ly->wo, ly->gate_inp};
        for (int i = 0; i < 5; i++) dense += (double)d[i]->nbytes, all += (double)d[i]->nbytes;
        all += (double)ly->gate_exps->nbytes + ly->up_exps->nbytes + ly->down_exps->nbytes;
    }
    double a = bench_limit_active_bytes(m);
    cr_expect_gt(a, dense);
    cr_expect_lt(a, all);
    /* Exactly top-k / n_expert of the expert bytes sit on top of the dense ones. */
    cr_expect(near(a - dense, (all - dense) * m->hp.n_expert_used / m->hp.n_expert), "%g %g %g",
              a, dense, all);
    model_free(m);
}
