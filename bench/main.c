/* moemesh-bench: parses the command line and hands over to bench/ (STYLE.md). Subcommands live
 * in one table; adding a benchmark is adding a row. */
#include <stdio.h>
#include <string.h>

#include "bench/bench.h"

static const struct {
    const char *name;
    int (*main)(int argc, char **argv); /* argv[0] is the subcommand's name */
    const char *help;
} commands[] = {
    {"kernels", bench_kernels_main, "read bandwidth, pool dispatch, GEMV/GEMM per weight type"},
    {"wire", bench_wire_main, "FORWARD/RESULT round trips vs raw ZeroMQ, by tokens and dtype"},
    {"proxy", bench_proxy_main, "TCP relay adding one-way delay, jitter and a rate cap"},
    {"model", bench_model_main, "prompt and generation tokens/s of one GGUF, 1 and 2 threads"},
    {"load", bench_load_main, "expert load per layer, imbalance before/after balancing"},
    {"serve", bench_serve_main, "load client for the HTTP API: throughput, TTFT, TPOT, ITL"},
    {"sweep", bench_sweep_main, "end-to-end grid over nodes, RTT, rate, ...; limit model beside"},
    {"report", bench_report_main, "plots (gnuplot SVG/PNG) and report.md from sweep JSON"},
    {"overlap", bench_overlap_main, "micro-batch pipeline vs RTT and concurrency over expert nodes"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: moemesh-bench COMMAND [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].main(argc - 1, argv + 1);
    fprintf(stderr, "moemesh-bench: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
