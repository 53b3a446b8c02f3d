/* `moemesh-model plan FILE --nodes N [--replicas R] [--node-mem GiB,GiB,...] [--ctx C]`: prints
 * how model_plan_new_r spreads the routed experts over N expert nodes, each on R of them (expert
 * ids per node for each layer, the primary copies marked when R > 1) and the memory each
 * machine needs, or why they do not fit. Argument parsing and
 * printing only; the planning itself is model/plan.c.
 */
#include "model/model.h"
#include "wire/wire.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GIB (1024.0 * 1024.0 * 1024.0)

static int usage(void)
{
    fprintf(stderr, "usage: moemesh-model plan FILE --nodes N [--replicas R] "
                    "[--node-mem GiB[,GiB...]] [--ctx TOKENS]\n"
                    "  --replicas: copies of every expert, each on its own node (default 1)\n"
                    "  --node-mem: memory for experts on each node (one value: every node)\n");
    return 2;
}

/* Parses "a,b,c" GiB values into n byte counts; one value applies to all. 0 or -EINVAL. */
static int parse_mem(const char *s, int n, uint64_t *out)
{
    int k = 0;
    const char *p = s;
    while (*p) {
        char *end;
        double v = strtod(p, &end);
        if (end == p || !(v > 0) || !isfinite(v) || v > 1e9 || k == n) return -EINVAL;
        out[k++] = (uint64_t)(v * GIB);
        if (*end == ',') end++;
        else if (*end) return -EINVAL;
        p = end;
    }
    if (k == 1)
        for (int i = 1; i < n; i++) out[i] = out[0];
    else if (k != n)
        return -EINVAL;
    return 0;
}

/* Bytes for people: "1.50 GiB", "312.0 KiB". buf holds 32 bytes. */
static const char *human(uint64_t b, char *buf)
{
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int u = 0;
    while (v >= 1024 && u < 4) v /= 1024, u++;
    snprintf(buf, 32, u ? "%.2f %s" : "%.0f %s", v, unit[u]);
    return buf;
}

static void print_plan(const model_gguf_t *g, const model_plan_t *p)
{
    model_weights_t w;
    model_weights_info(g, &w);
    printf("model        %s: %s, %d layers", model_gguf_path(g), *w.arch ? w.arch : "?",
           w.n_layers);
    if (p->n_expert) printf(", %d routed experts per MoE layer, top-%d", p->n_expert,
                            w.n_expert_used);
    else printf(", dense (no routed experts: everything stays on the coordinator)");
    char a[32], b[32], c[32];
    printf("\ncoordinator  %s = weights %s (embeddings, attention, routers, shared experts, "
           "norms, head) + f16 KV cache %s (%lld tokens)\n",
           human(p->coord_weight_bytes + p->coord_kv_bytes, a), human(p->coord_weight_bytes, b),
           human(p->coord_kv_bytes, c), (long long)p->n_ctx);
    if (p->replicas > 1 && p->n_expert)
        printf("replicas     %d: every expert on %d distinct nodes; * marks the primary copy, "
               "the one calls go to\n", p->replicas, p->replicas);
    for (int n = 0; n < p->n_nodes; n++)
        printf("node %-7d %s (%llu bytes) of experts, %d (layer, expert) pairs\n", n,
               human(p->node_bytes[n], a), (unsigned long long)p->node_bytes[n],
               p->node_experts[n]);
    const int R = p->replicas;
    for (int l = 0; l < p->n_layers; l++) {
        bool any = false;
        for (int e = 0; e < p->n_expert; e++) any |= p->owner[l * p->n_expert + e] >= 0;
        if (!any) continue;
        printf("layer %-6d", l);
        for (int n = 0; n < p->n_nodes; n++) {
            printf(" node %d [", n);
            bool first = true;
            for (int e = 0; e < p->n_expert; e++) {
                const int *o = p->owners + ((size_t)l * p->n_expert + e) * R;
                bool held = false;
                for (int r = 0; r < R; r++) held |= o[r] == n;
                if (!held) continue;
                printf(first ? "%d%s" : " %d%s", e, R > 1 && o[0] == n ? "*" : "");
                first = false;
            }
            printf("]");
        }
        printf("\n");
    }
}

int model_cli_plan(int argc, char **argv)
{
    const char *path = NULL, *mem = NULL;
    long nodes = 0, replicas = 1;
    long long ctx = 0;
    for (int i = 1; i < argc; i++) {
        bool has = i + 1 < argc;
        if (strcmp(argv[i], "--nodes") == 0 && has) {
            char *end;
            nodes = strtol(argv[++i], &end, 10);
            if (*end || nodes < 1 || nodes > 65536) return usage();
        } else if (strcmp(argv[i], "--replicas") == 0 && has) {
            char *end;
            replicas = strtol(argv[++i], &end, 10);
            if (*end || replicas < 1 || replicas > 65536) return usage();
        } else if (strcmp(argv[i], "--node-mem") == 0 && has) {
            mem = argv[++i];
        } else if (strcmp(argv[i], "--ctx") == 0 && has) {
            char *end;
            ctx = strtoll(argv[++i], &end, 10);
            if (*end || ctx < 1) return usage();
        } else if (argv[i][0] != '-' && !path) {
            path = argv[i];
        } else {
            return usage();
        }
    }
    if (!path || nodes < 1) return usage();
    if (replicas > nodes) {
        fprintf(stderr, "moemesh-model plan: --replicas %ld needs at least %ld nodes (each copy "
                        "of an expert on its own node), got --nodes %ld\n", replicas, replicas,
                nodes);
        return 2;
    }
    uint64_t *caps = NULL;
    if (mem) {
        caps = xcalloc((size_t)nodes, sizeof(uint64_t));
        if (parse_mem(mem, (int)nodes, caps) != 0) {
            fprintf(stderr, "moemesh-model plan: --node-mem wants %ld positive GiB values "
                            "(or one for all), got '%s'\n", nodes, mem);
            free(caps);
            return 2;
        }
    }
    model_gguf_t *g;
    int err = model_gguf_open(path, &g);
    if (err) {
        fprintf(stderr, "moemesh-model plan: %s: %s\n", path, model_strerror(err));
        free(caps);
        return 1;
    }
    model_plan_t *p;
    err = model_plan_new_r(g, (int)nodes, caps, ctx, (int)replicas, &p);
    if (err) {
        fprintf(stderr, "moemesh-model plan: cannot place the experts of %s: %s\n", path,
                err == -ENOSPC ? "they do not fit in the nodes' memory (see above)"
                               : model_strerror(err));
    } else {
        print_plan(g, p);
        model_plan_free(p);
    }
    model_gguf_free(g);
    free(caps);
    return err ? 1 : 0;
}
