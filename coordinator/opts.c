/* Command-line and environment options shared by every coordinator command. Flags follow
 * llama.cpp habits (-m, -p, -n, -c, -t); each has a MOEMESH_* twin so containers can be
 * configured by environment alone. The environment is applied first so the command line wins.
 * --print-config (MOEMESH_PRINT_CONFIG=1) prints every option's effective value and where it
 * came from, then the command exits 0 (2 when a MOEMESH_* variable names no option): deploy/
 * checks its manifests against the binary so.
 */
#include "coordinator/coord.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int set_value(const coord_opt_t *o, const char *val, const char *cmd, const char *from)
{
    char *end = NULL;
    switch (o->kind) {
    case COORD_OPT_STR:
        *(const char **)o->dst = val;
        return 0;
    case COORD_OPT_LIST: {
        coord_opt_list_t *l = o->dst;
        if (l->n >= COORD_OPT_LIST_MAX) {
            fprintf(stderr, "%s: %s given more than %d times\n", cmd, from, COORD_OPT_LIST_MAX);
            return -EINVAL;
        }
        l->v[l->n++] = val;
        return 0;
    }
    case COORD_OPT_INT: {
        errno = 0;
        long v = strtol(val, &end, 10);
        if (errno || end == val || *end || v < -2147483647L || v > 2147483647L) break;
        *(int *)o->dst = (int)v;
        return 0;
    }
    case COORD_OPT_FLOAT: {
        float v = strtof(val, &end);
        if (end == val || *end) break;
        *(float *)o->dst = v;
        return 0;
    }
    case COORD_OPT_BOOL:
        if (!strcmp(val, "1") || !strcmp(val, "true") || !strcmp(val, "yes")) {
            *(bool *)o->dst = true;
            return 0;
        }
        if (!strcmp(val, "0") || !strcmp(val, "false") || !strcmp(val, "no")) {
            *(bool *)o->dst = false;
            return 0;
        }
        break;
    }
    fprintf(stderr, "%s: bad value '%s' for %s\n", cmd, val, from);
    return -EINVAL;
}

/* One line per option: name, value, source, tab-separated (values never hold a tab that
 * matters to the reader: they are paths, numbers and host lists). Lists print comma-joined. */
static void print_config(const coord_opt_t *opts, int n_opts, const char *cmd, const int *src)
{
    static const char *const SRC[] = {"default", "env", "flag"};
    printf("# moemesh-coordinator %s: effective configuration (option, value, source)\n", cmd);
    for (int i = 0; i < n_opts; i++) {
        const coord_opt_t *o = &opts[i];
        printf("%s\t", o->name);
        switch (o->kind) {
        case COORD_OPT_STR: {
            const char *v = *(const char **)o->dst;
            /* A secret is shown as set, never printed: this output ends up in CI logs. */
            if (v && !strcmp(o->name, "api-key")) v = "(set, not shown)";
            printf("%s", v ? v : "");
            break;
        }
        case COORD_OPT_LIST: {
            const coord_opt_list_t *l = o->dst;
            for (int k = 0; k < l->n; k++) printf("%s%s", k ? "," : "", l->v[k]);
            break;
        }
        case COORD_OPT_INT: printf("%d", *(int *)o->dst); break;
        case COORD_OPT_FLOAT: printf("%g", (double)*(float *)o->dst); break;
        case COORD_OPT_BOOL: printf("%s", *(bool *)o->dst ? "true" : "false"); break;
        }
        if (src[i] == 1) printf("\tenv %s\n", o->env);
        else printf("\t%s\n", SRC[src[i]]);
    }
    fflush(stdout);
}

/* MOEMESH_* variables no option reads: a typo in a manifest would otherwise be silently
 * ignored. Warned about; refused under --print-config, which is how manifests are checked.
 * Returns how many there are. */
static int unknown_env(const coord_opt_t *opts, int n_opts, const char *cmd, bool print)
{
    int n = 0;
    for (char **e = environ; e && *e; e++) {
        if (strncmp(*e, "MOEMESH_", 8)) continue;
        size_t len = strcspn(*e, "=");
        bool known = len == 20 && !strncmp(*e, "MOEMESH_PRINT_CONFIG", 20);
        for (int i = 0; i < n_opts && !known; i++)
            known = opts[i].env && strlen(opts[i].env) == len && !strncmp(opts[i].env, *e, len);
        if (known) continue;
        fprintf(stderr, "%s: %s: %.*s is no option of this command%s\n", cmd,
                print ? "error" : "warning", (int)len, *e, print ? "" : " (ignored)");
        n++;
    }
    return n;
}

int coord_opts_parse(const coord_opt_t *opts, int n_opts, const char *cmd, int argc, char **argv,
                     int first)
{
    /* Where each value came from, for --print-config: 0 default, 1 environment, 2 flag. */
    int *src = xcalloc((size_t)n_opts + 1, sizeof(int));
    bool print = false;
    const char *pe = getenv("MOEMESH_PRINT_CONFIG");
    if (pe && *pe && strcmp(pe, "0") && strcmp(pe, "false") && strcmp(pe, "no")) print = true;
    int rc = 0;
    for (int i = 0; i < n_opts; i++) {
        const char *v = opts[i].env ? getenv(opts[i].env) : NULL;
        if (v && set_value(&opts[i], v, cmd, opts[i].env) != 0) goto bad;
        if (v) src[i] = 1;
    }
    for (int a = first; a < argc; a++) {
        const char *s = argv[a];
        if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
            coord_opts_usage(opts, n_opts, cmd);
            rc = 1;
            goto out;
        }
        if (!strcmp(s, "--print-config")) {
            print = true;
            continue;
        }
        const coord_opt_t *o = NULL;
        const char *inline_val = NULL;
        if (s[0] == '-' && s[1] == '-') {
            const char *eq = strchr(s + 2, '=');
            size_t len = eq ? (size_t)(eq - s - 2) : strlen(s + 2);
            for (int i = 0; i < n_opts && !o; i++)
                if (strlen(opts[i].name) == len && !strncmp(opts[i].name, s + 2, len)) o = &opts[i];
            inline_val = eq ? eq + 1 : NULL;
        } else if (s[0] == '-' && s[1] && !s[2]) {
            for (int i = 0; i < n_opts && !o; i++)
                if (opts[i].short_name == s[1]) o = &opts[i];
        }
        if (!o) {
            fprintf(stderr, "%s: unknown option '%s' (see --help)\n", cmd, s);
            goto bad;
        }
        src[o - opts] = 2;
        if (o->kind == COORD_OPT_BOOL && !inline_val) {
            *(bool *)o->dst = true;
            continue;
        }
        const char *val = inline_val;
        if (!val) {
            if (a + 1 >= argc) {
                fprintf(stderr, "%s: option '%s' needs a value\n", cmd, s);
                goto bad;
            }
            val = argv[++a];
        }
        if (set_value(o, val, cmd, s) != 0) goto bad;
    }
    if (unknown_env(opts, n_opts, cmd, print) && print) goto bad;
    if (print) {
        print_config(opts, n_opts, cmd, src);
        rc = 1;
    }
out:
    free(src);
    return rc;
bad:
    free(src);
    return -EINVAL;
}

void coord_opts_usage(const coord_opt_t *opts, int n_opts, const char *cmd)
{
    printf("usage: moemesh-coordinator %s [options]\n", cmd);
    for (int i = 0; i < n_opts; i++) {
        char flag[64];
        if (opts[i].short_name)
            snprintf(flag, sizeof(flag), "-%c, --%s %s", opts[i].short_name, opts[i].name,
                     opts[i].arg ? opts[i].arg : "");
        else
            snprintf(flag, sizeof(flag), "    --%s %s", opts[i].name, opts[i].arg ? opts[i].arg : "");
        printf("  %-28s %s [%s]\n", flag, opts[i].help, opts[i].env ? opts[i].env : "");
    }
    printf("  %-28s %s [%s]\n", "    --print-config",
           "print every option's value and source, then exit 0", "MOEMESH_PRINT_CONFIG");
}
