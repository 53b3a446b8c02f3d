/* Tests for bench/sweep.c and bench/report.c: a two-point grid of real expert nodes, proxies,
 * coordinator and load client over loopback, then the report of its JSON. Speed is never
 * asserted; only that every point was measured and every number the report needs is there. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench/bench.h"

#define MODEL "../shared/golden/qwen3moe-tiny-f32.gguf"

static char g_dir[64];
static char g_bin[PATH_MAX];

/* build/bin or build/san/bin beside this test binary, and a private scratch directory. */
static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    ssize_t n = readlink("/proc/self/exe", g_bin, sizeof(g_bin) - 8);
    cr_assert(n > 0);
    g_bin[n] = 0;
    *strrchr(g_bin, '/') = 0; /* .../tests */
    strcpy(strrchr(g_bin, '/'), "/bin");
    snprintf(g_dir, sizeof(g_dir), "/tmp/moemesh-sweep-test-%d-XXXXXX", (int)getpid());
    cr_assert(mkdtemp(g_dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    cr_expect_eq(system(cmd), 0);
}

TestSuite(sweep, .init = setup, .fini = teardown, .timeout = 120);

/* Runs `sweep` with the fixed arguments plus extra ones (NULL-terminated); its exit status. */
static int run_sweep(const char *out, const char *const *extra)
{
    char state[128];
    snprintf(state, sizeof(state), "%s/state", g_dir);
    const char *argv[40] = {"sweep", "-m", MODEL, "--loopback", "--bin", g_bin, "--state-dir",
                            state, "-o", out, "--bandwidth", "10", "-r", "1", "--requests", "2",
                            "--max-tokens", "4", "--prompt-len", "8", "--grid", "nodes=2",
                            "--grid", "rate=unlimited", "--grid", "conc=1", "--grid",
                            "dtype=q8_0", "--grid", "mb=1"};
    int n = 30;
    for (int i = 0; extra[i] && n < 39; i++) argv[n++] = extra[i];
    argv[n] = NULL;
    fflush(stdout);
    return bench_sweep_main(n, (char **)argv);
}

static double med(json_t *p, const char *k)
{
    return json_number_value(json_object_get(json_object_get(p, k), "median"));
}

Test(sweep, two_points_then_report)
{
    char out[128], rep[128], path[256];
    snprintf(out, sizeof(out), "%s/res", g_dir);
    snprintf(rep, sizeof(rep), "%s/report", g_dir);
    const char *extra[] = {"--grid", "rtt=0,1", "--grid", "spec=off", NULL};
    cr_assert_eq(run_sweep(out, extra), 0);

    snprintf(path, sizeof(path), "%s.json", out);
    json_error_t e;
    json_t *root = json_load_file(path, 0, &e);
    cr_assert(root, "%s", e.text);
    json_t *pts = json_object_get(root, "points");
    cr_assert_eq(json_array_size(pts), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *p = json_array_get(pts, i);
        cr_expect_str_eq(json_string_value(json_object_get(p, "status")), "ok");
        cr_expect_eq(json_number_value(json_object_get(p, "rtt_ms")), i ? 1.0 : 0.0);
        cr_expect_gt(med(p, "tokens_per_s"), 0);
        cr_expect_gt(med(p, "round_trips_per_token"), 0);
        cr_expect_gt(med(p, "bytes_per_token"), 0);
        cr_expect_gt(med(p, "ttft_ms"), 0);
        json_t *lim = json_object_get(p, "limit");
        cr_expect_gt(json_number_value(json_object_get(lim, "limit_ms")), 0);
        cr_expect_gt(json_number_value(json_object_get(lim, "measured_over_limit")), 0);
    }
    /* The 1 ms point has a latency term (2 nodes, each behind a proxy) and an RTT-0 twin. */
    json_t *p1 = json_array_get(pts, 1);
    cr_expect_gt(json_number_value(json_object_get(json_object_get(p1, "limit"), "latency_ms")),
                 0);
    cr_expect(json_is_number(json_object_get(p1, "overlap_efficiency")));
    json_decref(root);

    snprintf(path, sizeof(path), "%s.csv", out);
    FILE *f = fopen(path, "r");
    cr_assert(f);
    char line[4096];
    int lines = 0;
    while (fgets(line, sizeof(line), f)) lines++;
    fclose(f);
    cr_expect_eq(lines, 3, "header and two points");

    /* Expert-load results of the same model ride along: the report gains the heatmap. */
    char load[256], cmd[PATH_MAX + 512];
    snprintf(load, sizeof(load), "%s/load.json", g_dir);
    snprintf(cmd, sizeof(cmd), "'%s/moemesh-bench' load -m " MODEL " --nodes 2 --tokens 64 "
             "--json > '%s' 2>/dev/null", g_bin, load);
    cr_assert_eq(system(cmd), 0, "%s", cmd);
    snprintf(path, sizeof(path), "%s.json", out);
    const char *rargv[] = {"report", path, "-o", rep, "--note", "test run", "--load", load, NULL};
    cr_assert_eq(bench_report_main(8, (char **)rargv), 0);
    const char *files[] = {"report.md", "tps_vs_rtt.svg", "tps_vs_rtt.png", "tps_vs_rtt.gp",
                           "bytes_by_dtype.svg", "bytes_by_dtype.png", "measured_vs_limit.svg",
                           "measured_vs_limit.png", "load-heatmap.svg"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        struct stat st;
        snprintf(line, sizeof(line), "%s/%s", rep, files[i]);
        cr_expect_eq(stat(line, &st), 0, "%s missing", files[i]);
        cr_expect_gt(st.st_size, 0, "%s empty", files[i]);
    }
    snprintf(line, sizeof(line), "%s/report.md", rep);
    static char md[1 << 16];
    f = fopen(line, "r");
    cr_assert(f);
    md[fread(md, 1, sizeof(md) - 1, f)] = 0;
    fclose(f);
    cr_expect(strstr(md, "![tokens/s vs RTT](tps_vs_rtt.svg)"));
    cr_expect(strstr(md, "moemesh-bench sweep -m " MODEL));
    cr_expect(strstr(md, "test run"));
    cr_expect(strstr(md, "load-heatmap.svg"));
    /* Two RTTs on one node count: not enough for the concurrency plot, said so in words. */
    cr_expect(strstr(md, "Not enough points"));
}

/* Speculation needs --draft on `serve`: a coordinator without it refuses the flag, and the
 * point is skipped with its words while the sweep itself succeeds; one with it measures. */
Test(sweep, refused_flag_is_a_skip)
{
    char out[128], path[256];
    snprintf(out, sizeof(out), "%s/spec", g_dir);
    const char *extra[] = {"--grid", "rtt=0", "--grid", "spec=on", NULL};
    cr_assert_eq(run_sweep(out, extra), 0);
    snprintf(path, sizeof(path), "%s.json", out);
    json_t *root = json_load_file(path, 0, NULL);
    cr_assert(root);
    json_t *p = json_array_get(json_object_get(root, "points"), 0);
    const char *st = json_string_value(json_object_get(p, "status"));
    cr_assert(st);
    if (!strcmp(st, "skipped"))
        cr_expect(strstr(json_string_value(json_object_get(p, "reason")), "--draft"));
    else
        cr_expect_str_eq(st, "ok");
    json_decref(root);
}

Test(sweep, bad_grid_is_a_usage_error)
{
    const char *a1[] = {"sweep", "-m", MODEL, "--grid", "nodes=0", NULL};
    cr_expect_eq(bench_sweep_main(5, (char **)a1), 2);
    const char *a2[] = {"sweep", "-m", MODEL, "--grid", "colour=red", NULL};
    cr_expect_eq(bench_sweep_main(5, (char **)a2), 2);
    const char *a3[] = {"sweep", "-m", MODEL, "--grid", "dtype=f64", NULL};
    cr_expect_eq(bench_sweep_main(5, (char **)a3), 2);
    const char *a4[] = {"report", "/nonexistent.json", "-o", "/tmp", NULL};
    cr_expect_eq(bench_report_main(4, (char **)a4), 1);
}

/* --baseline-cmd: run once per link setting when installed (tokens/s read from its output),
 * a clean skip when its program does not exist. */
Test(sweep, baseline_runs_or_skips)
{
    char out[128], path[256];
    snprintf(out, sizeof(out), "%s/base", g_dir);
    const char *extra[] = {"--grid", "rtt=0", "--grid", "spec=off", "--baseline-cmd",
                           "echo pp 3.0 t/s; echo tg $MOEMESH_SWEEP_NODES.5 tok/s", NULL};
    cr_assert_eq(run_sweep(out, extra), 0);
    snprintf(path, sizeof(path), "%s.json", out);
    json_t *root = json_load_file(path, 0, NULL);
    cr_assert(root);
    json_t *b = json_array_get(json_object_get(root, "baseline"), 0);
    cr_assert(b);
    cr_expect_str_eq(json_string_value(json_object_get(b, "status")), "ok");
    cr_expect_eq(json_number_value(json_object_get(b, "tokens_per_s")), 2.5);
    json_decref(root);

    const char *absent[] = {"--grid", "rtt=0", "--grid", "spec=off", "--baseline-cmd",
                            "/nonexistent/llama-bench -m x", NULL};
    cr_assert_eq(run_sweep(out, absent), 0);
    root = json_load_file(path, 0, NULL);
    cr_assert(root);
    b = json_object_get(root, "baseline");
    cr_expect_str_eq(json_string_value(json_object_get(b, "status")), "skipped");
    json_decref(root);
}
