/* `moemesh-bench report RESULTS.json -o DIR`: turns a sweep's JSON into plots and a Markdown
 * summary. Each section of report.md is one writer in the sections[] table below: a writer may
 * write gnuplot data and a script into DIR (plot() renders them as SVG and PNG) and appends its
 * Markdown. Adding a section is adding a writer and a row.
 *
 * Plots show one slice of the grid: the x axis and the series vary, every other axis is held at
 * its reference value (unlimited rate or the fastest, the lowest concurrency, the first dtype,
 * one micro-batch, speculation off, the most nodes), named under each plot.
 */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.h"
#include "coordinator/coord.h"
#include "wire/wire.h"

typedef enum { K_NODES, K_RTT, K_RATE, K_CONC, K_DTYPE, K_MB, K_SPEC, K_COUNT } report_key_t;

typedef struct {
    double key[K_COUNT];   /* rate: 0 = unlimited; dtype: index into report_t.dtypes */
    bool ok;
    const char *status, *reason;
    double tok_s, tok_min, tok_max, ttft, itl, rt, bpt, tpt, overlap, limit, ratio;
    const char *bound;
} row_t;

typedef struct {
    const char *dir;
    json_t *root;          /* owns every string the rows borrow */
    row_t *rows;           /* (n) */
    int n;
    const char *dtypes[8]; /* in order of appearance */
    int n_dtypes;
    double ref[K_COUNT];   /* the value each axis is held at when it is not plotted */
    const char *note, *self_cmd;
    json_t *load;          /* `moemesh-bench load --json` results (--load), NULL: none; owned */
} report_t;

static const char *const key_names[K_COUNT] = {"nodes", "RTT ms", "rate Mbit/s", "concurrency",
                                               "dtype", "micro-batches", "speculation"};

static double num(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static double med(json_t *o, const char *k) { return num(json_object_get(o, k), "median"); }

static int load(report_t *r, const char *path)
{
    json_error_t e;
    r->root = json_load_file(path, 0, &e);
    if (!r->root) {
        fprintf(stderr, "report: %s:%d: %s\n", path, e.line, e.text);
        return -1;
    }
    json_t *pts = json_object_get(r->root, "points");
    if (!json_is_array(pts) || json_array_size(pts) == 0 || json_array_size(pts) > 1000000) {
        fprintf(stderr, "report: %s has no \"points\" array (is it a sweep's JSON?)\n", path);
        return -1;
    }
    r->n = (int)json_array_size(pts);
    r->rows = xcalloc((size_t)r->n, sizeof(row_t));
    for (int i = 0; i < r->n; i++) {
        json_t *p = json_array_get(pts, (size_t)i);
        row_t *w = &r->rows[i];
        const char *dt = json_string_value(json_object_get(p, "dtype"));
        int d = 0;
        if (!dt) dt = "?";
        while (d < r->n_dtypes && strcmp(r->dtypes[d], dt)) d++;
        if (d == r->n_dtypes && d < 8) r->dtypes[r->n_dtypes++] = dt;
        double rate = num(p, "rate_mbit");
        w->key[K_NODES] = num(p, "nodes");
        w->key[K_RTT] = num(p, "rtt_ms");
        w->key[K_RATE] = isnan(rate) ? 0 : rate;
        w->key[K_CONC] = num(p, "concurrency");
        w->key[K_DTYPE] = d < 8 ? d : 7;
        w->key[K_MB] = num(p, "micro_batches");
        w->key[K_SPEC] = json_is_true(json_object_get(p, "speculation"));
        w->status = json_string_value(json_object_get(p, "status"));
        w->reason = json_string_value(json_object_get(p, "reason"));
        if (!w->status) w->status = "?";
        w->ok = !strcmp(w->status, "ok");
        json_t *tk = json_object_get(p, "tokens_per_s"), *lim = json_object_get(p, "limit");
        w->tok_s = num(tk, "median"), w->tok_min = num(tk, "min"), w->tok_max = num(tk, "max");
        w->ttft = med(p, "ttft_ms"), w->itl = med(p, "itl_ms");
        w->rt = med(p, "round_trips_per_token"), w->bpt = med(p, "bytes_per_token");
        w->tpt = med(p, "time_per_token_ms"), w->overlap = num(p, "overlap_efficiency");
        w->limit = num(lim, "limit_ms"), w->ratio = num(lim, "measured_over_limit");
        w->bound = json_string_value(json_object_get(lim, "bound"));
        for (int k = 0; k < K_COUNT; k++)
            if (isnan(w->key[k])) {
                fprintf(stderr, "report: point %d lacks its grid values\n", i);
                return -1;
            }
    }
    /* Reference values (see the top of the file). */
    for (int k = 0; k < K_COUNT; k++) r->ref[k] = r->rows[0].key[k];
    for (int i = 0; i < r->n; i++) {
        const double *v = r->rows[i].key;
        if (v[K_NODES] > r->ref[K_NODES]) r->ref[K_NODES] = v[K_NODES];
        if (v[K_RTT] < r->ref[K_RTT]) r->ref[K_RTT] = v[K_RTT];
        if (r->ref[K_RATE] != 0 && (v[K_RATE] == 0 || v[K_RATE] > r->ref[K_RATE]))
            r->ref[K_RATE] = v[K_RATE];
        if (v[K_CONC] < r->ref[K_CONC]) r->ref[K_CONC] = v[K_CONC];
        if (v[K_DTYPE] < r->ref[K_DTYPE]) r->ref[K_DTYPE] = v[K_DTYPE];
        if (v[K_MB] < r->ref[K_MB]) r->ref[K_MB] = v[K_MB];
        if (v[K_SPEC] < r->ref[K_SPEC]) r->ref[K_SPEC] = v[K_SPEC];
    }
    return 0;
}

/* Whether row w sits on the slice where every axis but x and series is at its reference. */
static bool on_slice(const report_t *r, const row_t *w, int x, int series)
{
    for (int k = 0; k < K_COUNT; k++)
        if (k != x && k != series && w->key[k] != r->ref[k]) return false;
    return w->ok;
}

static void fmt_key(const report_t *r, int k, double v, char *out, size_t cap)
{
    if (k == K_DTYPE) snprintf(out, cap, "%s", r->dtypes[(int)v]);
    else if (k == K_RATE && v == 0) snprintf(out, cap, "unlimited");
    else if (k == K_SPEC) snprintf(out, cap, "%s", v > 0 ? "on" : "off");
    else snprintf(out, cap, "%g", v);
}

/* "held at: rate unlimited, concurrency 1, ..." for the axes a plot does not vary. */
static void held(const report_t *r, int x, int series, char *out, size_t cap)
{
    size_t w = (size_t)snprintf(out, cap, "held at:");
    for (int k = 0; k < K_COUNT && w < cap; k++) {
        if (k == x || k == series) continue;
        char v[32];
        fmt_key(r, k, r->ref[k], v, sizeof(v));
        w += (size_t)snprintf(out + w, cap - w, "%s %s %s", w > 8 ? "," : "", key_names[k], v);
    }
}

/* Runs gnuplot on DIR/name.gp twice, for name.svg and name.png; 0 or -1. The script draws
 * from data files in DIR and must not set a terminal or output itself. */
static int plot(const report_t *r, const char *name)
{
    /* noenhanced: "q8_0" is a dtype, not q8 with a subscript 0. */
    static const char *const term[2][2] = {
        {"svg size 720,480 dynamic font 'sans,11' noenhanced", "svg"},
        {"pngcairo size 720,480 font 'sans,10' noenhanced", "png"}};
    for (int t = 0; t < 2; t++) {
        char set[512];
        snprintf(set, sizeof(set), "set terminal %s; set output '%s.%s'", term[t][0], name,
                 term[t][1]);
        char gp[PATH_MAX];
        snprintf(gp, sizeof(gp), "%s.gp", name);
        pid_t pid = fork();
        if (pid < 0) return -1;
        if (pid == 0) {
            if (chdir(r->dir) != 0) _exit(127);
            execlp("gnuplot", "gnuplot", "-e", set, gp, (char *)NULL);
            fprintf(stderr, "report: cannot run gnuplot (Debian: gnuplot-nox, see "
                            "deploy/install-deps.sh): %s\n",
                    strerror(errno));
            _exit(127);
        }
        int st;
        if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "report: gnuplot failed on %s/%s.gp\n", r->dir, name);
            return -1;
        }
    }
    return 0;
}

static FILE *open_in(const report_t *r, const char *name, const char *ext)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s.%s", r->dir, name, ext);
    FILE *f = fopen(path, "w");
    if (!f) fprintf(stderr, "report: cannot write %s: %s\n", path, strerror(errno));
    return f;
}

/* Distinct values of axis k over the slice's rows, ascending; their count. */
static int distinct(const report_t *r, int k, int x, int series, double *out, int cap)
{
    int n = 0;
    for (int i = 0; i < r->n; i++) {
        const row_t *w = &r->rows[i];
        if (!on_slice(r, w, x, series)) continue;
        int j = 0;
        while (j < n && out[j] != w->key[k]) j++;
        if (j == n && n < cap) out[n++] = w->key[k];
    }
    for (int a = 0; a < n; a++) /* insertion sort: a handful of values */
        for (int b = a; b > 0 && out[b] < out[b - 1]; b--) {
            double t = out[b];
            out[b] = out[b - 1], out[b - 1] = t;
        }
    return n;
}

/* A line plot of tokens/s (median, min-max bars) against axis x, one line per value of series;
 * data blocks in name.dat, one per series. */
static int line_plot(const report_t *r, FILE *md, const char *name, const char *title, int x,
                     int series, bool logx)
{
    double sv[64], xv[64];
    int ns = distinct(r, series, x, series, sv, 64), nx = distinct(r, x, x, series, xv, 64);
    char h[512];
    held(r, x, series, h, sizeof(h));
    if (ns == 0 || nx < 2) {
        fprintf(md, "_Not enough points on this slice (%s) for %s._\n\n", h, title);
        return 0;
    }
    FILE *d = open_in(r, name, "dat"), *g = open_in(r, name, "gp");
    if (!d || !g) {
        if (d) fclose(d);
        if (g) fclose(g);
        return -1;
    }
    fprintf(g, "set title '%s' noenhanced\nset xlabel '%s'\nset ylabel 'tokens/s (median, "
               "min-max)'\nset key outside right\nset grid\nset yrange [0:*]\n%s",
            title, key_names[x], logx ? "set logscale x 2\n" : "");
    fprintf(g, "plot ");
    for (int s = 0; s < ns; s++) {
        char sl[32];
        fmt_key(r, series, sv[s], sl, sizeof(sl));
        fprintf(d, "# %s %s\n", key_names[series], sl);
        for (int i = 0; i < nx; i++)
            for (int k = 0; k < r->n; k++) {
                const row_t *w = &r->rows[k];
                if (on_slice(r, w, x, series) && w->key[series] == sv[s] && w->key[x] == xv[i])
                    fprintf(d, "%g %g %g %g\n", w->key[x], w->tok_s, w->tok_min, w->tok_max);
            }
        fprintf(d, "\n\n");
        fprintf(g, "%s'%s.dat' index %d with yerrorlines title '%s %s' noenhanced",
                s ? ", " : "", name, s, key_names[series], sl);
    }
    fprintf(g, "\n");
    fclose(d);
    fclose(g);
    if (plot(r, name)) return -1;
    fprintf(md, "![%s](%s.svg)\n\n%s. PNG: [%s.png](%s.png)\n\n", title, name, h, name, name);
    return 0;
}

/* ---- sections ---- */

static int sec_header(const report_t *r, FILE *md)
{
    json_t *m = json_object_get(r->root, "meta"), *cmd = json_object_get(m, "command");
    fprintf(md, "# moemesh sweep report\n\n");
    fprintf(md, "Produced by:\n\n```\nmoemesh-bench");
    for (size_t i = 0; i < json_array_size(cmd); i++)
        fprintf(md, " %s", json_string_value(json_array_get(cmd, i)));
    fprintf(md, "\n%s\n```\n\n", r->self_cmd);
    fprintf(md, "| | |\n|---|---|\n");
    const char *keys[] = {"date", "host", "mode", "model"};
    for (size_t i = 0; i < 4; i++) {
        const char *v = json_string_value(json_object_get(m, keys[i]));
        fprintf(md, "| %s | %s |\n", keys[i], v ? v : "?");
    }
    fprintf(md, "| CPUs | %g |\n| load average (1 min, at the end) | %.2f |\n",
            num(m, "cpus"), num(m, "loadavg_1m"));
    fprintf(md, "| layers | %g |\n| active weight bytes per token | %.0f |\n", num(m, "n_layers"),
            num(m, "active_bytes"));
    fprintf(md, "| memory read bandwidth | %.2f GB/s |\n", num(m, "bandwidth_gbs"));
    fprintf(md, "| repeats per point | %g |\n| prompt / max tokens | %g / %g |\n\n",
            num(m, "repeat"), num(m, "prompt_len"), num(m, "max_tokens"));
    if (r->note) fprintf(md, "**Note.** %s\n\n", r->note);
    int ok = 0, skipped = 0;
    for (int i = 0; i < r->n; i++) {
        ok += r->rows[i].ok;
        skipped += !strcmp(r->rows[i].status, "skipped");
    }
    fprintf(md, "%d points: %d measured, %d skipped, %d failed.\n\n", r->n, ok, skipped,
            r->n - ok - skipped);
    fprintf(md, "The limit model: time per token >= max(active weight bytes / read bandwidth / "
                "tokens per round trip, n_layers x RTT / tokens per round trip, busiest link's "
                "bytes per token / link rate); measured/limit says how far from that floor each "
                "point is. Overlap efficiency compares a point with its RTT-0 twin: 1 when the "
                "added delay costs nothing, 0 when all of it shows.\n\n");
    return 0;
}

static int sec_rtt(const report_t *r, FILE *md)
{
    fprintf(md, "## Tokens/s vs RTT, per node count\n\n");
    return line_plot(r, md, "tps_vs_rtt", "tokens/s vs RTT", K_RTT, K_NODES, false);
}

static int sec_conc(const report_t *r, FILE *md)
{
    fprintf(md, "## Tokens/s vs concurrency, per RTT\n\n");
    return line_plot(r, md, "tps_vs_conc", "tokens/s vs concurrency", K_CONC, K_RTT, true);
}

/* Bytes per token by dtype: every measured point, grouped by dtype (wire bytes do not depend on
 * the link), one bar per node count at its median. */
static int sec_dtype(const report_t *r, FILE *md)
{
    fprintf(md, "## Wire bytes per token by activation dtype\n\n");
    FILE *d = open_in(r, "bytes_by_dtype", "dat"), *g = open_in(r, "bytes_by_dtype", "gp");
    if (!d || !g) {
        if (d) fclose(d);
        if (g) fclose(g);
        return -1;
    }
    double nodes[64];
    int nn = 0;
    for (int i = 0; i < r->n; i++) {
        int j = 0;
        while (j < nn && nodes[j] != r->rows[i].key[K_NODES]) j++;
        if (j == nn && nn < 64 && r->rows[i].ok) nodes[nn++] = r->rows[i].key[K_NODES];
    }
    fprintf(d, "dtype");
    for (int j = 0; j < nn; j++) fprintf(d, " \"%g nodes\"", nodes[j]);
    fprintf(d, "\n");
    for (int t = 0; t < r->n_dtypes; t++) {
        fprintf(d, "%s", r->dtypes[t]);
        for (int j = 0; j < nn; j++) {
            double v[1024];
            int k = 0;
            for (int i = 0; i < r->n && k < 1024; i++)
                if (r->rows[i].ok && r->rows[i].key[K_DTYPE] == t &&
                    r->rows[i].key[K_NODES] == nodes[j] && !isnan(r->rows[i].bpt))
                    v[k++] = r->rows[i].bpt;
            double s = 0;
            for (int i = 0; i < k; i++) s += v[i];
            if (k) fprintf(d, " %g", s / k);
            else fprintf(d, " NaN");
        }
        fprintf(d, "\n");
    }
    fprintf(g, "set title 'wire bytes per generated token (mean over points)'\nset style data "
               "histograms\nset style fill solid 0.8 border -1\nset ylabel 'bytes per token'\n"
               "set yrange [0:*]\nset key outside right autotitle columnhead\nset grid y\n"
               "plot ");
    for (int j = 0; j < nn; j++)
        fprintf(g, "%s'bytes_by_dtype.dat' using %d:xtic(1)", j ? ", " : "", j + 2);
    fprintf(g, "\n");
    fclose(d);
    fclose(g);
    if (nn == 0) {
        fprintf(md, "_No measured points._\n\n");
        return 0;
    }
    if (plot(r, "bytes_by_dtype")) return -1;
    fprintf(md, "![bytes per token by dtype](bytes_by_dtype.svg)\n\nAll measured points. PNG: "
                "[bytes_by_dtype.png](bytes_by_dtype.png)\n\n");
    return 0;
}

/* Measured vs limit: every measured point, one series per binding term, against y = x. */
static int sec_limit(const report_t *r, FILE *md)
{
    fprintf(md, "## Measured time per token vs the limit model\n\n");
    FILE *d = open_in(r, "measured_vs_limit", "dat"), *g = open_in(r, "measured_vs_limit", "gp");
    if (!d || !g) {
        if (d) fclose(d);
        if (g) fclose(g);
        return -1;
    }
    static const char *const bounds[3] = {"compute", "latency", "wire"};
    int n = 0;
    for (int b = 0; b < 3; b++) {
        fprintf(d, "# bound %s\n", bounds[b]);
        fprintf(d, "%g %g\n", NAN, NAN); /* keeps every block non-empty for gnuplot */
        for (int i = 0; i < r->n; i++) {
            const row_t *w = &r->rows[i];
            if (w->ok && w->bound && !strcmp(w->bound, bounds[b]) && w->limit > 0 && w->tpt > 0)
                fprintf(d, "%g %g\n", w->limit, w->tpt), n++;
        }
        fprintf(d, "\n\n");
    }
    fprintf(g, "set title 'measured vs limit (ms per generated token)'\nset logscale xy\n"
               "set xlabel 'limit model, ms/token'\nset ylabel 'measured, ms/token'\nset grid\n"
               "set key outside right\nplot 'measured_vs_limit.dat' index 0 with points pt 7 "
               "title 'compute-bound', '' index 1 with points pt 5 title 'latency-bound', '' "
               "index 2 with points pt 9 title 'wire-bound', x with lines dt 2 title "
               "'measured = limit'\n");
    fclose(d);
    fclose(g);
    if (n == 0) {
        fprintf(md, "_No measured points._\n\n");
        return 0;
    }
    if (plot(r, "measured_vs_limit")) return -1;
    fprintf(md, "![measured vs limit](measured_vs_limit.svg)\n\nEvery measured point; above the "
                "dashed line is slower than the floor. PNG: "
                "[measured_vs_limit.png](measured_vs_limit.png)\n\n");
    return 0;
}

static void cell(FILE *md, double v, const char *fmt)
{
    if (isnan(v)) fprintf(md, " - |");
    else fprintf(md, " "), fprintf(md, fmt, v), fprintf(md, " |");
}

static int sec_table(const report_t *r, FILE *md)
{
    fprintf(md, "## All points\n\n| nodes | RTT ms | Mbit/s | conc | dtype | mb | spec | tok/s "
                "(min-max) | TTFT ms | ITL ms | RT/tok | B/tok | overlap | ms/tok | limit ms "
                "(bound) | measured/limit |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < r->n; i++) {
        const row_t *w = &r->rows[i];
        char rate[32];
        fmt_key(r, K_RATE, w->key[K_RATE], rate, sizeof(rate));
        fprintf(md, "| %g | %g | %s | %g | %s | %g | %s |", w->key[K_NODES], w->key[K_RTT], rate,
                w->key[K_CONC], r->dtypes[(int)w->key[K_DTYPE]], w->key[K_MB],
                w->key[K_SPEC] > 0 ? "on" : "off");
        if (!w->ok) {
            fprintf(md, " %s: %s | | | | | | | | |\n", w->status, w->reason ? w->reason : "");
            continue;
        }
        fprintf(md, " %.1f (%.1f-%.1f) |", w->tok_s, w->tok_min, w->tok_max);
        cell(md, w->ttft, "%.1f"), cell(md, w->itl, "%.2f"), cell(md, w->rt, "%.2f");
        cell(md, w->bpt, "%.0f"), cell(md, w->overlap, "%.2f"), cell(md, w->tpt, "%.2f");
        fprintf(md, " %.3f (%s) |", w->limit, w->bound ? w->bound : "?");
        cell(md, w->ratio, "%.1fx");
        fprintf(md, "\n");
    }
    json_t *bl = json_object_get(r->root, "baseline");
    if (json_is_array(bl) && json_array_size(bl)) {
        fprintf(md, "\n### Baseline (--baseline-cmd)\n\n| nodes | RTT ms | status | wall s | "
                    "tokens/s |\n|---|---|---|---|---|\n");
        for (size_t i = 0; i < json_array_size(bl); i++) {
            json_t *b = json_array_get(bl, i);
            fprintf(md, "| %g | %g | %s | %.2f |", num(b, "nodes"), num(b, "rtt_ms"),
                    json_string_value(json_object_get(b, "status")), num(b, "wall_s"));
            cell(md, num(b, "tokens_per_s"), "%.1f");
            fprintf(md, "\n");
        }
    } else if (json_is_object(bl)) {
        fprintf(md, "\nBaseline: skipped (%s).\n",
                json_string_value(json_object_get(bl, "reason")));
    }
    fprintf(md, "\n");
    return 0;
}

/* The expert-load heatmap and tables (bench/report_load.c) when --load gave load results. */
static int sec_load(const report_t *r, FILE *md)
{
    if (!r->load) return 0;
    return bench_report_load(r->load, r->dir, md) ? -1 : 0;
}

/* The sections of report.md, in order; each writes its files into r->dir and its Markdown. */
static const struct {
    const char *name;
    int (*write)(const report_t *r, FILE *md);
} sections[] = {
    {"header", sec_header}, {"rtt", sec_rtt},     {"concurrency", sec_conc},
    {"dtype", sec_dtype},   {"limit", sec_limit}, {"table", sec_table},
    {"load", sec_load},
};

int bench_report_main(int argc, char **argv)
{
    const char *dir = NULL, *note = NULL, *load_in = NULL;
    const coord_opt_t opts[] = {
        {"out", 'o', NULL, COORD_OPT_STR, &dir, "DIR", "where plots and report.md go (created)"},
        {"note", 0, NULL, COORD_OPT_STR, &note, "TEXT", "a paragraph for the report's top"},
        {"load", 0, NULL, COORD_OPT_STR, &load_in, "FILE",
         "`moemesh-bench load --json` results: adds the expert-load heatmap"},
    };
    const char *in = NULL;
    /* The one positional argument, RESULTS.json, may come anywhere. */
    char **av = xcalloc((size_t)argc + 1, sizeof(char *));
    int ac = 0;
    for (int i = 0; i < argc; i++) {
        bool val = i > 0 && (!strcmp(argv[i - 1], "-o") || !strcmp(argv[i - 1], "--out") ||
                             !strcmp(argv[i - 1], "--note") || !strcmp(argv[i - 1], "--load"));
        if (i > 0 && argv[i][0] != '-' && !val && !in) in = argv[i];
        else av[ac++] = argv[i];
    }
    int rc = coord_opts_parse(opts, 3, "report", ac, av, 1);
    free(av);
    if (rc) return rc > 0 ? 0 : 2;
    if (!in || !dir) {
        fprintf(stderr, "usage: moemesh-bench report RESULTS.json -o DIR [--note TEXT] "
                        "[--load LOAD.json]\n");
        return 2;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "report: cannot create %s: %s\n", dir, strerror(errno));
        return 1;
    }
    report_t r = {.dir = dir, .note = note};
    char self[PATH_MAX + 512];
    snprintf(self, sizeof(self), "moemesh-bench report %s -o %s%s%s%s%s%s", in, dir,
             load_in ? " --load " : "", load_in ? load_in : "", note ? " --note '" : "",
             note ? note : "", note ? "'" : "");
    r.self_cmd = self;
    rc = load(&r, in) ? 1 : 0;
    if (!rc && load_in) {
        json_error_t je;
        if (!(r.load = json_load_file(load_in, 0, &je))) {
            fprintf(stderr, "report: %s: %s (line %d)\n", load_in, je.text, je.line);
            rc = 1;
        }
    }
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/report.md", dir);
    FILE *md = rc ? NULL : fopen(path, "w");
    if (!rc && !md) {
        fprintf(stderr, "report: cannot write %s: %s\n", path, strerror(errno));
        rc = 1;
    }
    for (size_t i = 0; md && i < sizeof(sections) / sizeof(sections[0]); i++)
        if (sections[i].write(&r, md) != 0) {
            fprintf(stderr, "report: section '%s' failed\n", sections[i].name);
            rc = 1;
        }
    if (md) fclose(md);
    if (!rc) printf("report: wrote %s\n", path);
    free(r.rows);
    json_decref(r.root);
    json_decref(r.load);
    return rc;
}
