/* deploy/Dockerfile without Docker (no daemon here): every file it COPYs from the context
 * exists and survives .dockerignore, the build stage gets every folder the programs compile
 * from, and every shared library the three programs load maps (ldd, dpkg -S) to a package the
 * runtime stage installs or to one of those packages' dependencies. The programs beside this
 * test binary are checked; a SAN=1 build's sanitizer runtimes are left out (the image has none).
 */
#include <criterion/criterion.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/deploy/deploy.h"

#define MAX_PKGS 256

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    cr_assert(f, "cannot open %s", path);
    char *buf = calloc(1, 1 << 16);
    size_t n = fread(buf, 1, (1 << 16) - 1, f);
    cr_assert_lt(n, (size_t)(1 << 16) - 1, "%s is larger than expected", path);
    fclose(f);
    return buf;
}

/* One line of a command's output per call; NULL at the end. */
static char *cmd_line(FILE *p, char *buf, size_t cap)
{
    if (!fgets(buf, (int)cap, p)) return NULL;
    buf[strcspn(buf, "\n")] = 0;
    return buf;
}

/* True when .dockerignore (patterns, one a line) excludes path or a folder above it. */
static bool ignored(const char *ignore, const char *path)
{
    char pat[256], prefix[512];
    for (const char *l = ignore; *l;) {
        size_t n = strcspn(l, "\n");
        if (n && l[0] != '#' && n < sizeof(pat)) {
            memcpy(pat, l, n);
            pat[n] = 0;
            for (size_t k = 0; path[k]; k++) {
                if (path[k + 1] != '/' && path[k + 1] != 0) continue;
                memcpy(prefix, path, k + 1);
                prefix[k + 1] = 0;
                if (!fnmatch(pat, prefix, 0)) return true;
                /* "**" patterns: match the last components as well. */
                if (!strncmp(pat, "**/", 3) && !fnmatch(pat + 3, strrchr(prefix, '/') ? strrchr(prefix, '/') + 1 : prefix, 0))
                    return true;
            }
        }
        l += n + (l[n] == '\n');
    }
    return false;
}

Test(image, copied_files_exist_and_are_in_the_context)
{
    char *df = slurp("deploy/Dockerfile"), *ign = slurp(".dockerignore");
    static const char *const needed[] = {"Makefile", "deploy/install-deps.sh", "model", "kernels",
                                         "wire", "coordinator", "expert-node"};
    bool have[7] = {false};
    int n_copy = 0;
    for (char *line = strtok(df, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "COPY ", 5)) continue;
        char *tok[16];
        int nt = 0;
        for (char *t = line + 5; nt < 16 && (t = t + strspn(t, " ")) && *t;) {
            size_t len = strcspn(t, " ");
            tok[nt++] = t;
            if (!t[len]) break;
            t[len] = 0;
            t += len + 1;
        }
        cr_assert_geq(nt, 2, "COPY without source and destination");
        bool from = !strncmp(tok[0], "--from=", 7);
        for (int i = from; i < nt - 1; i++) {
            n_copy++;
            if (from) {
                /* From the build stage: a program make builds into build/bin. */
                const char *b = strrchr(tok[i], '/');
                cr_assert(strstr(tok[i], "/build/bin/"), "COPY --from %s: not from build/bin", tok[i]);
                deploy_prog(b + 1); /* fails unless make builds that program */
                continue;
            }
            cr_assert_eq(access(tok[i], R_OK), 0, "COPY %s: no such file in the repository", tok[i]);
            cr_assert(!ignored(ign, tok[i]), "COPY %s: excluded by .dockerignore", tok[i]);
            for (int k = 0; k < 7; k++)
                if (!strcmp(tok[i], needed[k])) have[k] = true;
        }
    }
    cr_assert_geq(n_copy, 8);
    for (int k = 0; k < 7; k++) cr_assert(have[k], "the build stage does not COPY %s", needed[k]);
    free(df);
    df = slurp("deploy/Dockerfile");
    cr_assert(!strstr(df, "\nHEALTHCHECK"), "Kubernetes probes, not a HEALTHCHECK instruction");
    free(df);
    free(ign);
}

/* The Debian package owning a library file (merged /usr: try both spellings); "" if none. */
static void owner(const char *lib, char *pkg, size_t cap)
{
    char cmd[1024], line[512];
    snprintf(cmd, sizeof(cmd),
             "f=$(readlink -f '%s'); dpkg -S \"$f\" 2>/dev/null || dpkg -S \"${f#/usr}\" "
             "2>/dev/null || dpkg -S \"/usr$f\" 2>/dev/null",
             lib);
    FILE *p = popen(cmd, "r");
    pkg[0] = 0;
    if (cmd_line(p, line, sizeof(line))) {
        size_t n = strcspn(line, ":");
        snprintf(pkg, cap, "%.*s", (int)n, line);
    }
    pclose(p);
}

static bool in(char (*set)[64], int n, const char *s)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(set[i], s)) return true;
    return false;
}

Test(image, runtime_stage_has_every_library, .timeout = 120)
{
    if (system("command -v dpkg-query >/dev/null && command -v ldd >/dev/null") != 0)
        cr_skip_test("no dpkg-query or ldd: not a Debian system, library check skipped");
    char *df = slurp("deploy/Dockerfile");
    char *arg = strstr(df, "ARG RUNTIME_PKGS=\"");
    cr_assert(arg, "the runtime stage names its packages in ARG RUNTIME_PKGS=\"...\"");
    arg += strlen("ARG RUNTIME_PKGS=\"");
    static char named[MAX_PKGS][64], closure[MAX_PKGS][64];
    int n_named = 0, n_cl = 0;
    for (char *e = arg; *e != '"';) {
        size_t n = strcspn(e, " \"");
        if (n) snprintf(named[n_named++], 64, "%.*s", (int)n, e);
        e += n + (e[n] == ' ');
    }
    cr_assert_geq(n_named, 1);
    /* Dependencies of the named packages, recursively, as this system's dpkg knows them (the
     * image installs the same Debian 12 packages); libc6 and friends come with debian:12-slim. */
    for (int i = 0; i < n_named; i++) snprintf(closure[n_cl++], 64, "%s", named[i]);
    snprintf(closure[n_cl++], 64, "libc6");
    for (int i = 0; i < n_cl; i++) {
        char cmd[512], line[4096];
        snprintf(cmd, sizeof(cmd), "dpkg-query -W -f='${Depends}, ${Pre-Depends}' '%.63s' 2>/dev/null",
                 closure[i]);
        FILE *p = popen(cmd, "r");
        if (cmd_line(p, line, sizeof(line))) {
            for (char *t = line; *t;) {
                t += strspn(t, " ,|");
                size_t n = strcspn(t, " ,|(:");
                if (n && n < 64) {
                    char name[64];
                    snprintf(name, sizeof(name), "%.*s", (int)n, t);
                    if (!in(closure, n_cl, name) && n_cl < MAX_PKGS) snprintf(closure[n_cl++], 64, "%s", name);
                }
                t += n;
                if (*t == '(' || *t == ':') t += strcspn(t, ",|");
            }
        }
        pclose(p);
    }
    static const char *const progs[] = {"moemesh-coordinator", "moemesh-expert", "moemesh-model"};
    int n_libs = 0;
    for (int b = 0; b < 3; b++) {
        char path[256], cmd[512], line[1024], direct[32][128];
        int n_direct = 0;
        snprintf(path, sizeof(path), "%s", deploy_prog(progs[b]));
        snprintf(cmd, sizeof(cmd), "readelf -d %s | sed -n 's/.*Shared library: \\[\\(.*\\)\\]/\\1/p'", path);
        FILE *p = popen(cmd, "r");
        while (n_direct < 32 && cmd_line(p, line, sizeof(line))) snprintf(direct[n_direct++], 128, "%.127s", line);
        pclose(p);
        cr_assert_geq(n_direct, 3);
        snprintf(cmd, sizeof(cmd), "ldd %s", path);
        p = popen(cmd, "r");
        while (cmd_line(p, line, sizeof(line))) {
            char soname[256], lib[512];
            if (sscanf(line, " %255s => %511s", soname, lib) != 2) continue;
            /* The sanitizer runtimes of a SAN=1 build: the image is built without them. */
            if (!strncmp(soname, "libasan.", 8) || !strncmp(soname, "libubsan.", 9)) continue;
            cr_assert(strcmp(lib, "not"), "%s: %s not found", progs[b], soname);
            char pkg[128];
            owner(lib, pkg, sizeof(pkg));
            cr_assert(pkg[0], "%s: no Debian package owns %s", progs[b], lib);
            bool is_direct = false;
            for (int k = 0; k < n_direct; k++) is_direct |= !strcmp(direct[k], soname);
            /* A library the program links itself must be named, not arrive by accident. */
            if (is_direct)
                cr_assert(in(named, n_named, pkg) || !strcmp(pkg, "libc6"),
                          "%s links %s (%s) but the runtime stage does not install %s", progs[b],
                          soname, lib, pkg);
            else
                cr_assert(in(closure, n_cl, pkg), "%s loads %s from %s, which no runtime package pulls in",
                          progs[b], soname, pkg);
            n_libs++;
        }
        pclose(p);
    }
    cr_assert_geq(n_libs, 10);
    free(df);
}
