/* moemesh-expert's command line: options and their MOEMESH_* environment twins (the command
 * line wins, so a container can set defaults and an operator still override them), and the
 * keygen command. Everything here only fills an xnode_config_t; main.c runs the node.
 * --print-config (MOEMESH_PRINT_CONFIG=1) prints each option's value and source and exits 0
 * (2 when a MOEMESH_* variable names no option), so manifests can be checked against the binary. As a LeaderWorkerSet worker
 * (LWS_WORKER_INDEX) the node is named "expert-<index>" unless --name says otherwise.
 */
#include "expert-node/xnode.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

typedef enum { OPT_STR, OPT_INT, OPT_GIB, OPT_LEVEL } opt_kind_t;

typedef struct {
    const char *name; /* long name without "--" */
    char short_name;  /* 0: none */
    const char *env;
    opt_kind_t kind;
    const char *arg, *help;
} opt_t;

enum { O_LISTEN, O_MODEL, O_MEM, O_THREADS, O_CACHE, O_CURVE, O_NAME, O_LEVEL, O_COUNT };

static const opt_t OPTS[O_COUNT] = {
    {"listen", 'l', "MOEMESH_LISTEN", OPT_STR, "ENDPOINT", "bind here, e.g. tcp://0.0.0.0:5555"},
    {"model", 'm', "MOEMESH_MODEL", OPT_STR, "FILE", "serve this GGUF's experts without transfer"},
    {"mem-limit", 0, "MOEMESH_MEM_LIMIT", OPT_GIB, "GiB", "expert weights held (default: RAM)"},
    {"threads", 't', "MOEMESH_THREADS", OPT_INT, "N", "compute threads (default 1)"},
    {"cache-dir", 0, "MOEMESH_CACHE_DIR", OPT_STR, "DIR", "keep received experts here"},
    {"curve-keys", 0, "MOEMESH_CURVE_KEYS", OPT_STR, "DIR", "CURVE keys (see keygen)"},
    {"name", 0, "MOEMESH_NAME", OPT_STR, "NAME", "name in WELCOME and logs (default xnode)"},
    {"log-level", 0, "MOEMESH_LOG_LEVEL", OPT_LEVEL, "L", "error|warn|info|debug (default info)"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: moemesh-expert -l ENDPOINT [options]\n"
               "       moemesh-expert keygen DIR\n"
               "options (environment twin in brackets; the command line wins):\n");
    for (int i = 0; i < O_COUNT; i++) {
        const opt_t *o = &OPTS[i];
        char lhs[64];
        if (o->short_name)
            snprintf(lhs, sizeof(lhs), "-%c, --%s %s", o->short_name, o->name, o->arg);
        else
            snprintf(lhs, sizeof(lhs), "    --%s %s", o->name, o->arg);
        fprintf(f, "  %-28s %s [%s]\n", lhs, o->help, o->env);
    }
    fprintf(f, "  %-28s %s [%s]\n", "    --print-config",
            "print every option's value and source, then exit 0", "MOEMESH_PRINT_CONFIG");
}

/* Tab-separated option, value, source lines (the format moemesh-coordinator prints). */
static void print_config(const xnode_config_t *cfg, const char *const *val,
                         const char *const *from)
{
    printf("# moemesh-expert: effective configuration (option, value, source)\n");
    for (int k = 0; k < O_COUNT; k++) {
        printf("%s\t", OPTS[k].name);
        switch (k) {
        case O_LISTEN: printf("%s", cfg->listen ? cfg->listen : ""); break;
        case O_MODEL: printf("%s", cfg->model ? cfg->model : ""); break;
        case O_MEM:
            if (cfg->mem_limit) printf("%g", (double)cfg->mem_limit / (double)(UINT64_C(1) << 30));
            break;
        case O_THREADS: printf("%d", cfg->threads); break;
        case O_CACHE: printf("%s", cfg->cache_dir ? cfg->cache_dir : ""); break;
        case O_CURVE: printf("%s", cfg->curve_dir ? cfg->curve_dir : ""); break;
        case O_NAME: printf("%s", cfg->name ? cfg->name : "xnode"); break;
        default: printf("%s", val[k] ? val[k] : "info"); break;
        }
        if (k == O_NAME && !from[k] && cfg->name) printf("\tenv LWS_WORKER_INDEX\n");
        else if (!from[k]) printf("\tdefault\n");
        else if (from[k] == OPTS[k].env) printf("\tenv %s\n", from[k]);
        else printf("\tflag\n");
    }
    fflush(stdout);
}

/* MOEMESH_* variables no option reads (a manifest's typo): warned about, and refused under
 * --print-config, which is how manifests are checked. Returns how many there are. */
static int unknown_env(bool print)
{
    int n = 0;
    for (char **e = environ; e && *e; e++) {
        if (strncmp(*e, "MOEMESH_", 8)) continue;
        size_t len = strcspn(*e, "=");
        bool known = len == 20 && !strncmp(*e, "MOEMESH_PRINT_CONFIG", 20);
        for (int k = 0; k < O_COUNT && !known; k++)
            known = strlen(OPTS[k].env) == len && !strncmp(OPTS[k].env, *e, len);
        if (known) continue;
        fprintf(stderr, "moemesh-expert: %s: %.*s is no option of moemesh-expert%s\n",
                print ? "error" : "warning", (int)len, *e, print ? "" : " (ignored)");
        n++;
    }
    return n;
}

/* LeaderWorkerSet: index 0 is the leader, which runs the coordinator; a worker's index names
 * it when nothing else does. The name lives in a static buffer (one parse per process). */
static bool lws_worker(xnode_config_t *cfg, bool named)
{
    static char name[32];
    const char *idx = getenv("LWS_WORKER_INDEX");
    if (!idx || !*idx) return true;
    char *end;
    long i = strtol(idx, &end, 10);
    if (*end || i < 0 || i > 1000000) {
        fprintf(stderr, "moemesh-expert: bad LWS_WORKER_INDEX '%s'\n", idx);
        return false;
    }
    if (i == 0) {
        fprintf(stderr, "moemesh-expert: LWS_WORKER_INDEX 0 is the group's leader, which runs "
                        "moemesh-coordinator; expert nodes are workers 1..size-1\n");
        return false;
    }
    if (!named) {
        snprintf(name, sizeof(name), "expert-%ld", i);
        cfg->name = name;
    }
    return true;
}

/* Applies one value; false (message printed) when it does not parse. */
static bool apply(const opt_t *o, const char *v, const char *from, xnode_config_t *cfg)
{
    char *end;
    switch (o->kind) {
    case OPT_INT: {
        errno = 0;
        long n = strtol(v, &end, 10);
        if (errno || end == v || *end || n < 1 || n > 1024) goto bad;
        cfg->threads = (int)n;
        return true;
    }
    case OPT_GIB: {
        errno = 0;
        double g = strtod(v, &end);
        if (errno || end == v || *end || !isfinite(g) || g <= 0 || g > 1e6) goto bad;
        cfg->mem_limit = (uint64_t)(g * (double)(UINT64_C(1) << 30));
        if (cfg->mem_limit == 0) cfg->mem_limit = 1;
        return true;
    }
    case OPT_LEVEL:
        if (wire_log_set_level_name(v) != 0) goto bad;
        return true;
    case OPT_STR:
        if (!*v) goto bad;
        if (o == &OPTS[O_LISTEN]) cfg->listen = v;
        else if (o == &OPTS[O_MODEL]) cfg->model = v;
        else if (o == &OPTS[O_CACHE]) cfg->cache_dir = v;
        else if (o == &OPTS[O_CURVE]) cfg->curve_dir = v;
        else cfg->name = v;
        return true;
    }
bad:
    fprintf(stderr, "moemesh-expert: bad value '%s' for %s\n", v, from);
    return false;
}

bool xnode_cli_parse(int argc, char **argv, xnode_config_t *cfg, int *status)
{
    /* Command-line values first, so an environment value is read (and can be refused) only
     * for options the command line leaves alone. */
    const char *val[O_COUNT] = {NULL}, *from[O_COUNT] = {NULL};
    const char *pe = getenv("MOEMESH_PRINT_CONFIG");
    bool print = pe && *pe && strcmp(pe, "0") && strcmp(pe, "false") && strcmp(pe, "no");
    *status = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            *status = 0;
            return false;
        }
        if (!strcmp(a, "--print-config")) {
            print = true;
            continue;
        }
        int o = -1;
        const char *v = NULL;
        if (a[0] == '-' && a[1] == '-') {
            const char *eq = strchr(a + 2, '=');
            size_t n = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            for (int k = 0; k < O_COUNT; k++)
                if (strlen(OPTS[k].name) == n && !strncmp(a + 2, OPTS[k].name, n)) o = k;
            if (eq) v = eq + 1;
        } else if (a[0] == '-' && a[1] && !a[2]) {
            for (int k = 0; k < O_COUNT; k++)
                if (OPTS[k].short_name == a[1]) o = k;
        }
        if (o < 0) {
            fprintf(stderr, "moemesh-expert: unknown option '%s'\n", a);
            usage(stderr);
            return false;
        }
        if (!v) {
            if (i + 1 >= argc) {
                fprintf(stderr, "moemesh-expert: %s needs a value\n", a);
                return false;
            }
            v = argv[++i];
        }
        val[o] = v;
        from[o] = a;
    }
    for (int k = 0; k < O_COUNT; k++) {
        if (!val[k] && getenv(OPTS[k].env) && *getenv(OPTS[k].env)) {
            val[k] = getenv(OPTS[k].env);
            from[k] = OPTS[k].env;
        }
        if (val[k] && !apply(&OPTS[k], val[k], from[k], cfg)) return false;
    }
    if (!lws_worker(cfg, val[O_NAME] != NULL)) return false;
    if (!cfg->listen) {
        fprintf(stderr, "moemesh-expert: no endpoint (-l ENDPOINT or MOEMESH_LISTEN)\n");
        usage(stderr);
        return false;
    }
    if (unknown_env(print) && print) return false;
    *status = 0;
    if (print) {
        print_config(cfg, val, from);
        return false;
    }
    return true;
}

int xnode_cli_keygen(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: moemesh-expert keygen DIR\n");
        return 2;
    }
    const char *dir = argv[1];
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "moemesh-expert: cannot create %s: %s\n", dir, strerror(errno));
        return 1;
    }
    static const char *const names[] = {"node", "coordinator"};
    for (int i = 0; i < 2; i++) {
        int err = wire_curve_keygen(dir, names[i]);
        if (err == -EEXIST) {
            fprintf(stderr, "%s/%s.key exists, kept\n", dir, names[i]);
        } else if (err) {
            fprintf(stderr, "moemesh-expert: cannot create %s/%s keys: %s\n", dir, names[i],
                    wire_strerror(err));
            return 1;
        } else {
            fprintf(stderr, "wrote %s/%s.pub and %s.key\n", dir, names[i], names[i]);
        }
    }
    return 0;
}
