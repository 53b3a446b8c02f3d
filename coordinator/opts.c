/* Command-line and environment options shared by every coordinator command. Flags follow
 * llama.cpp habits (-m, -p, -n, -c, -t); each has a MOEMESH_* twin so containers can be
 * configured by environment alone. The environment is applied first so the command line wins.
 */
#include "coordinator/coord.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int coord_opts_parse(const coord_opt_t *opts, int n_opts, const char *cmd, int argc, char **argv,
                     int first)
{
    for (int i = 0; i < n_opts; i++) {
        const char *v = opts[i].env ? getenv(opts[i].env) : NULL;
        if (v && set_value(&opts[i], v, cmd, opts[i].env) != 0) return -EINVAL;
    }
    for (int a = first; a < argc; a++) {
        const char *s = argv[a];
        if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
            coord_opts_usage(opts, n_opts, cmd);
            return 1;
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
            return -EINVAL;
        }
        if (o->kind == COORD_OPT_BOOL && !inline_val) {
            *(bool *)o->dst = true;
            continue;
        }
        const char *val = inline_val;
        if (!val) {
            if (a + 1 >= argc) {
                fprintf(stderr, "%s: option '%s' needs a value\n", cmd, s);
                return -EINVAL;
            }
            val = argv[++a];
        }
        if (set_value(o, val, cmd, s) != 0) return -EINVAL;
    }
    return 0;
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
}
