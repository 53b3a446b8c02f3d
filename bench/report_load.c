/* The expert-load part of a benchmark report: a heatmap of token share per (layer, expert) as a
 * standalone SVG and as a gnuplot matrix with its script, plus a markdown section with the
 * imbalance before and after balancing. Input is what `moemesh-bench load --json` prints (one
 * object, or an array of them). The SVG is written directly, so the report needs no gnuplot;
 * the .gp file is there for whoever wants to restyle it.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "bench/bench.h"
#include "wire/wire.h"

#define CELL 14   /* pixels per heatmap cell */
#define LEFT 60   /* room for the layer labels */
#define TOP 40    /* room for the title and expert labels */

/* Share s of a layer with E experts as a colour: white at 0, through orange, to dark red at
 * 4/E (four times the even share) and beyond, so "even" is always the same pale orange. */
static void colour(double s, int E, char *out)
{
    double x = s * E / 4;
    if (x > 1) x = 1;
    if (x < 0) x = 0;
    int r = x < 0.5 ? 255 : (int)(255 - (x - 0.5) * 2 * 115);
    int g = (int)(255 * (1 - x) * (1 - x));
    int b = (int)(255 * (1 - x) * (1 - x) * (1 - x));
    snprintf(out, 8, "#%02x%02x%02x", r, g, b);
}

static int write_svg(const json_t *layers, int E, const char *path, const char *title)
{
    FILE *f = fopen(path, "w");
    if (!f) return -errno;
    const int L = (int)json_array_size(layers);
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "font-family=\"sans-serif\" font-size=\"10\">\n",
            LEFT + E * CELL + 20, TOP + L * CELL + 40);
    fprintf(f, "<text x=\"4\" y=\"14\" font-size=\"12\">%s: token share per (layer, expert); "
               "darkest = 4x the even share</text>\n", title);
    for (int e = 0; e < E; e += E > 32 ? 8 : E > 16 ? 4 : 1)
        fprintf(f, "<text x=\"%d\" y=\"%d\">%d</text>\n", LEFT + e * CELL + 2, TOP - 4, e);
    size_t l;
    json_t *lay;
    json_array_foreach(layers, l, lay) {
        json_t *share = json_object_get(lay, "share");
        fprintf(f, "<text x=\"4\" y=\"%d\">layer %zu</text>\n", TOP + (int)l * CELL + 11, l);
        for (int e = 0; e < E; e++) {
            double s = json_number_value(json_array_get(share, (size_t)e));
            char c[8];
            colour(s, E, c);
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\">"
                       "<title>layer %zu expert %d: %.1f%%</title></rect>\n",
                    LEFT + e * CELL, TOP + (int)l * CELL, CELL, CELL, c, l, e, 100 * s);
        }
    }
    fprintf(f, "<text x=\"4\" y=\"%d\">experts across, layers down</text>\n</svg>\n",
            TOP + L * CELL + 24);
    return fclose(f) ? -errno : 0;
}

/* The share matrix for gnuplot (`matrix`: one row per layer) and a script plotting it. */
static int write_gnuplot(const json_t *layers, int E, const char *dat, const char *gp,
                         const char *png)
{
    FILE *f = fopen(dat, "w");
    if (!f) return -errno;
    size_t l;
    json_t *lay;
    json_array_foreach(layers, l, lay) {
        json_t *share = json_object_get(lay, "share");
        for (int e = 0; e < E; e++)
            fprintf(f, "%s%.6f", e ? " " : "", json_number_value(json_array_get(share, (size_t)e)));
        fprintf(f, "\n");
    }
    if (fclose(f)) return -errno;
    f = fopen(gp, "w");
    if (!f) return -errno;
    const char *base = strrchr(dat, '/');
    const int L = (int)json_array_size(layers);
    fprintf(f, "set terminal pngcairo size 900,600\nset output '%s'\n"
               "set xlabel 'expert'\nset ylabel 'layer'\nset xrange [-0.5:%d.5]\n"
               "set yrange [%d.5:-0.5]\nset cblabel 'token share'\n"
               "set palette defined (0 'white', 1 'orange', 2 'dark-red')\n"
               "plot '%s' matrix with image notitle\n",
            (strrchr(png, '/') ? strrchr(png, '/') + 1 : png), E - 1, L - 1,
            base ? base + 1 : dat);
    return fclose(f) ? -errno : 0;
}

static int one(const json_t *r, const char *dir, FILE *md, int k)
{
    json_t *layers = json_object_get(r, "layers");
    int E = (int)json_integer_value(json_object_get(r, "n_expert"));
    if (!json_is_array(layers) || E < 1 || E > 65536) {
        LOG_ERR("load report: result %d has no layers/n_expert (not `moemesh-bench load` "
                "output)", k);
        return -EINVAL;
    }
    char svg[4096], dat[4096], gp[4096], png[4096], stem[64];
    snprintf(stem, sizeof(stem), k ? "load-heatmap-%d" : "load-heatmap", k);
    if (snprintf(svg, sizeof(svg), "%s/%s.svg", dir, stem) >= (int)sizeof(svg)) return -ENAMETOOLONG;
    snprintf(dat, sizeof(dat), "%s/%s.dat", dir, stem);
    snprintf(gp, sizeof(gp), "%s/%s.gp", dir, stem);
    snprintf(png, sizeof(png), "%s/%s.png", dir, stem);
    const char *model = json_string_value(json_object_get(r, "model"));
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        int err = -errno;
        LOG_ERR("load report: cannot create %s: %s", dir, wire_strerror(err));
        return err;
    }
    int err = write_svg(layers, E, svg, model ? model : "model");
    if (!err) err = write_gnuplot(layers, E, dat, gp, png);
    if (err) {
        LOG_ERR("load report: cannot write %s/%s.*: %s", dir, stem, wire_strerror(err));
        return err;
    }
    if (!md) return 0;
    json_t *b = json_object_get(r, "before"), *a = json_object_get(r, "after");
    fprintf(md, "\n## Expert load%s%s\n\n![token share per layer and expert](%s.svg)\n\n",
            model ? ": " : "", model ? model : "", stem);
    fprintf(md, "%lld tokens, top-%lld. Node capacities:",
            (long long)json_integer_value(json_object_get(r, "tokens")),
            (long long)json_integer_value(json_object_get(r, "top_k")));
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(r, "node_cap"), i, c)
        fprintf(md, "%s %g", i ? "," : "", json_number_value(c));
    fprintf(md, " (pairs/s, declared).\n\n| layer | hottest expert | share | imbalance before "
                "| after |\n|---|---|---|---|---|\n");
    json_t *lay;
    json_array_foreach(layers, i, lay)
        fprintf(md, "| %zu | %lld | %.1f%% | %.3f | %.3f |\n", i,
                (long long)json_integer_value(json_object_get(lay, "hottest")),
                100 * json_number_value(json_object_get(lay, "hottest_share")),
                json_number_value(json_array_get(json_object_get(b, "imbalance"), i)),
                json_number_value(json_array_get(json_object_get(a, "imbalance"), i)));
    fprintf(md, "\n| placement | max imbalance | mean | extra copies | modelled tokens/s | "
                "primary copies only: max imbalance | tokens/s | split by load: max imbalance "
                "| tokens/s |\n|---|---|---|---|---|---|---|---|---|\n");
    const char *name[3] = {"round robin (before)", "capacity-aware, no profile",
                           "load- and capacity-aware (after)"};
    json_t *pl[3] = {b, json_object_get(r, "capacity_only"), a};
    for (int q = 0; q < 3; q++)
        fprintf(md, "| %s | %.3f | %.3f | %lld | %.1f | %.3f | %.1f | %.3f | %.1f |\n", name[q],
                json_number_value(json_object_get(pl[q], "max_imbalance")),
                json_number_value(json_object_get(pl[q], "mean_imbalance")),
                (long long)json_integer_value(json_object_get(pl[q], "extra_copies")),
                json_number_value(json_object_get(pl[q], "modelled_tokens_per_s")),
                json_number_value(json_object_get(pl[q], "primary_only_max_imbalance")),
                json_number_value(json_object_get(pl[q], "primary_only_tokens_per_s")),
                json_number_value(json_object_get(pl[q], "split_max_imbalance")),
                json_number_value(json_object_get(pl[q], "split_tokens_per_s")));
    return 0;
}

int bench_report_load(const json_t *results, const char *dir, FILE *md)
{
    if (json_is_object(results)) return one(results, dir, md, 0);
    if (!json_is_array(results)) return -EINVAL;
    size_t i;
    json_t *r;
    int err = 0, k = 0;
    json_array_foreach(results, i, r)
        if (!err && json_is_object(r) && json_object_get(r, "layers")) err = one(r, dir, md, k++);
    return err;
}
