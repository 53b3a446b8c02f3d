/* bench — benchmark programs behind moemesh-bench; each subcommand is one function taking the
 * arguments after its name. Speed is measured here, never in tests (STYLE.md). Results go to
 * stdout as readable tables; diagnostics to stderr.
 */
#ifndef MOEMESH_BENCH_H
#define MOEMESH_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* `moemesh-bench kernels [--threads N] [--seconds S] [--types LIST] [--expert | --paths]`
 * (bench/kernels.c): read bandwidth, pool dispatch cost, GEMV and GEMM throughput per weight
 * type; --paths: kern_matmul's dot, tiled and BLAS paths side by side per type. argv[0] is
 * "kernels". Returns the process exit status (0, or 2 on a usage error). */
int bench_kernels_main(int argc, char **argv);

/* `moemesh-bench model -m MODEL [-p N] [-n N] [-t T,...] [-r R] [--json]` (bench/model.c): prompt
 * processing (pp, one batch of N tokens) and generation (tg, N tokens one by one) speed of the
 * single-process engine, median of R runs, per thread count; --json for one object per line.
 * Exit status 0, 1, or 2 (usage). */
int bench_model_main(int argc, char **argv);

/* `moemesh-bench serve --url http://HOST:PORT [-c N] [-n N] [--prompt-len N] [--max-tokens N]`
 * (bench/serve.c): load client for the HTTP API; successful/failed requests, request and token
 * throughput, mean/median/p99 TTFT, TPOT and ITL. Exit status 0 (all succeeded), 1, 2 (usage). */
int bench_serve_main(int argc, char **argv);

/* Best read bandwidth in GB/s of summing a 1 GiB buffer on the pool's threads, best of 8 passes
 * (bench/kernels.c); the decode floor of `moemesh-bench model` divides weight bytes by it. */
struct kern_pool;
double bench__read_bandwidth(struct kern_pool *pool);

/* `moemesh-bench wire [--seconds S]` (bench/wire.c): FORWARD/RESULT round trips over loopback
 * TCP by token count and activation dtype against a raw ZeroMQ ping of the same bytes. */
int bench_wire_main(int argc, char **argv);

/* `moemesh-bench proxy --listen HOST:PORT --to HOST:PORT [--delay-ms D] [--jitter-ms J]
 * [--rate-mbit R] [--seed S]` (bench/proxy.c): wire/proxy.c's relay on its own loop until SIGINT
 * or SIGTERM; prints `listening on HOST:PORT` when ready and byte counters at exit. Exit status
 * 0, 1 (cannot listen or resolve), or 2 (usage). */
int bench_proxy_main(int argc, char **argv);

/* `moemesh-bench overlap [--quick] [--json] [-m MODEL] [-t T] [-n N]` (bench/overlap.c): 2 and 3
 * expert nodes behind relays at several RTTs and concurrencies, one micro-batch against the
 * adaptive pipeline: tokens/s, step time and its parts (coordinator compute, communication),
 * overlap efficiency, and tokens per round trip with speculation. Exit status 0, 1, 2 (usage). */
int bench_overlap_main(int argc, char **argv);

/* `moemesh-bench load -m MODEL [--nodes N] [--node-cap C,...] [--json] ...` (bench/load.c):
 * per-layer expert token counts and shares of a local workload, and the imbalance factor and
 * modelled tokens/s of the round-robin and the load-balanced placement. Exit status 0, 1, 2. */
int bench_load_main(int argc, char **argv);

/* Heatmap (layers x experts token share) of `moemesh-bench load --json` output (one object or
 * an array of them) into dir: load-heatmap[-k].svg, .dat and .gp (gnuplot); with md non-NULL a
 * markdown section (image, per-layer and before/after tables) is appended to it. 0, or -EINVAL
 * (not load results) / -errno (logged). (bench/report_load.c) */
struct json_t;
int bench_report_load(const struct json_t *results, const char *dir, FILE *md);

/* Sum of buf (words) with 32-byte loads (bench/read_avx2.c); only when the CPU has AVX2. */
uint64_t bench__read_sum_avx2(const uint64_t *buf, size_t words);

/* ---- limit model (bench/limit.c) ---- */
#include "model/model.h"

/* Weight bytes one decoded token reads: dense matrices, top-k of n_expert experts, the head. */
double bench_limit_active_bytes(const model_t *m);

typedef struct {
    double active_bytes;         /* weight bytes per step (bench_limit_active_bytes) */
    double bandwidth_gbs;        /* measured memory read bandwidth; <= 0: no compute term */
    int n_layers;
    double rtt_ms;               /* round trip added to each node link */
    double rt_per_token;         /* sequential round trips per generated token (measured);
                                    <= 0: one token per round trip */
    double wire_bytes_per_token; /* bytes on the busiest node link per generated token */
    double rate_mbit;            /* node link rate; <= 0: unlimited, no wire term */
    double measured_s;           /* measured seconds per generated token; <= 0: no ratio */
} bench_limit_in_t;

typedef struct {
    double tokens_per_rt;        /* n_layers / rt_per_token */
    double compute_s, latency_s, wire_s; /* the three floors, seconds per token (0: absent) */
    double limit_s;              /* their maximum */
    const char *bound;           /* "compute", "latency" or "wire": which one is the maximum */
    double ratio;                /* measured_s / limit_s, 0 when either is 0 */
} bench_limit_t;

/* time per token >= max(compute, latency, wire); pure arithmetic on in. */
bench_limit_t bench_limit_compute(const bench_limit_in_t *in);

/* ---- sweep (bench/sweep.c) and report (bench/report.c) ---- */

/* `moemesh-bench sweep -m MODEL [--quick] [--grid AXIS=V,V] ... [-o PREFIX]`: end-to-end runs
 * of real expert nodes, proxies and `moemesh-coordinator serve` over a grid of node counts, link
 * RTTs and rates, concurrency, wire dtype, micro-batches and speculation; writes PREFIX.json and
 * PREFIX.csv. Exit status 0, 1 (a point failed outright), or 2 (usage). */
int bench_sweep_main(int argc, char **argv);

/* `moemesh-bench report RESULTS.json -o DIR`: gnuplot plots (SVG and PNG) and DIR/report.md.
 * Exit status 0, 1 (cannot read the results or run gnuplot), 2 (usage). */
int bench_report_main(int argc, char **argv);

#endif
