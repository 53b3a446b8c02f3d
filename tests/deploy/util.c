/* Shared helpers of the deploy tests (deploy.h). kubectl renders YAML only; python3-yaml
 * (deploy/install-deps.sh) turns it into the JSON jansson reads. */
#include "tests/deploy/deploy.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *const deploy_variants[DEPLOY_N_VARIANTS] = {"base", "overlays/local",
                                                        "overlays/production", "lws"};

bool deploy_have_kubectl(void)
{
    return system("command -v kubectl >/dev/null 2>&1") == 0;
}

const char *deploy_prog(const char *prog)
{
    static char path[PATH_MAX];
    char self[PATH_MAX - 64];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    cr_assert(n > 0);
    self[n] = 0;
    *strrchr(self, '/') = 0; /* .../tests */
    *strrchr(self, '/') = 0; /* build or build/san */
    snprintf(path, sizeof(path), "%s/bin/%s", self, prog);
    cr_assert_eq(access(path, X_OK), 0, "%s is missing: run make first", path);
    return path;
}

static char *slurp_cmd(const char *cmd, int *status)
{
    FILE *p = popen(cmd, "r");
    cr_assert(p, "popen %s", cmd);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t r;
    while ((r = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += r;
        if (cap - len < 4096) {
            cr_assert_lt(cap, (size_t)64 << 20, "output of %s beyond 64 MiB", cmd);
            buf = realloc(buf, cap *= 2);
        }
    }
    buf[len] = 0;
    *status = pclose(p);
    return buf;
}

json_t *deploy_render(const char *variant, char *why, size_t why_cap)
{
    char dir[] = "/tmp/moemesh-deploy-XXXXXX", cmd[PATH_MAX + 1024], src[PATH_MAX];
    bool copy = !strcmp(variant, "overlays/production");
    snprintf(src, sizeof(src), "deploy/k8s/%s", variant);
    if (copy) {
        cr_assert(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
        snprintf(cmd, sizeof(cmd), "cp -r deploy/k8s %s/ && %s keygen %s/k8s/%s/keys >/dev/null 2>&1",
                 dir, deploy_prog("moemesh-expert"), dir, variant);
        cr_assert_eq(system(cmd), 0, "%s", cmd);
        snprintf(src, sizeof(src), "%s/k8s/%s", dir, variant);
    }
    snprintf(cmd, sizeof(cmd),
             "timeout 60 kubectl kustomize %s 2>/tmp/moemesh-kustomize-%d.err | python3 -c "
             "'import sys, json, yaml; "
             "json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)' "
             "2>>/tmp/moemesh-kustomize-%d.err",
             src, (int)getpid(), (int)getpid());
    int st;
    char *out = slurp_cmd(cmd, &st);
    if (copy) {
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        (void)!system(cmd);
    }
    char errf[64];
    snprintf(errf, sizeof(errf), "/tmp/moemesh-kustomize-%d.err", (int)getpid());
    json_error_t je;
    json_t *docs = st == 0 ? json_loads(out, 0, &je) : NULL;
    if (!docs) {
        FILE *f = fopen(errf, "r");
        size_t n = f ? fread(why, 1, why_cap - 1, f) : 0;
        why[n] = 0;
        if (f) fclose(f);
        if (!n) snprintf(why, why_cap, "status %d; %s", st, st ? "" : je.text);
    }
    unlink(errf);
    free(out);
    return docs;
}

json_t *deploy_find(json_t *docs, const char *kind, const char *name)
{
    size_t i;
    json_t *d;
    json_array_foreach(docs, i, d) {
        const char *k = json_string_value(json_object_get(d, "kind"));
        const char *n = json_string_value(json_object_get(json_object_get(d, "metadata"), "name"));
        if (!k || !n || strcmp(k, kind)) continue;
        size_t len = strlen(name);
        /* secretGenerator names end in -<10-character hash>. */
        if (!strcmp(n, name) || (!strncmp(n, name, len) && n[len] == '-' && strlen(n + len) == 11))
            return d;
    }
    return NULL;
}

int deploy_pods(json_t *docs, deploy_pod_t *out, int cap)
{
    int n = 0;
    size_t i;
    json_t *d;
    json_array_foreach(docs, i, d) {
        const char *k = json_string_value(json_object_get(d, "kind"));
        json_t *spec = json_object_get(d, "spec");
        if (!k || !spec) continue;
        if ((!strcmp(k, "Deployment") || !strcmp(k, "StatefulSet")) && n < cap)
            out[n++] = (deploy_pod_t){d, json_object_get(spec, "template"),
                                      k[0] == 'D' ? "deployment" : "statefulset"};
        if (!strcmp(k, "LeaderWorkerSet")) {
            json_t *lwt = json_object_get(spec, "leaderWorkerTemplate");
            if (n < cap)
                out[n++] = (deploy_pod_t){d, json_object_get(lwt, "leaderTemplate"), "lws-leader"};
            if (n < cap)
                out[n++] = (deploy_pod_t){d, json_object_get(lwt, "workerTemplate"), "lws-worker"};
        }
    }
    return n;
}

int deploy_container_env(json_t *docs, json_t *c, const char *pod_name, char **out, int cap)
{
    int n = 0;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(c, "envFrom"), i, e) {
        const char *cm = json_string_value(json_object_get(json_object_get(e, "configMapRef"), "name"));
        cr_assert(cm, "envFrom other than configMapRef: %s", json_dumps(e, 0));
        json_t *obj = deploy_find(docs, "ConfigMap", cm);
        cr_assert(obj, "envFrom names ConfigMap %s, which the manifests do not define", cm);
        const char *k;
        json_t *v;
        json_object_foreach(json_object_get(obj, "data"), k, v) {
            cr_assert_lt(n, cap);
            cr_assert(json_is_string(v));
            cr_assert(asprintf(&out[n++], "%s=%s", k, json_string_value(v)) > 0);
        }
    }
    json_array_foreach(json_object_get(c, "env"), i, e) {
        const char *k = json_string_value(json_object_get(e, "name"));
        json_t *v = json_object_get(e, "value"), *from = json_object_get(e, "valueFrom");
        const char *val = NULL;
        if (v) val = json_string_value(v);
        else if (json_object_get(from, "fieldRef")) {
            const char *fp = json_string_value(
                json_object_get(json_object_get(from, "fieldRef"), "fieldPath"));
            cr_assert_str_eq(fp, "metadata.name", "only the pod name is expected as a field");
            val = pod_name;
        }
        cr_assert(k && val, "env entry without a usable value: %s", json_dumps(e, 0));
        /* A later entry of the same name wins, as in Kubernetes. */
        for (int j = 0; j < n; j++)
            if (!strncmp(out[j], k, strlen(k)) && out[j][strlen(k)] == '=') {
                free(out[j]);
                out[j] = out[--n];
                break;
            }
        cr_assert_lt(n, cap);
        cr_assert(asprintf(&out[n++], "%s=%s", k, val) > 0);
    }
    return n;
}

const char *deploy_env_get(char *const *env, int n, const char *key)
{
    size_t len = strlen(key);
    for (int i = 0; i < n; i++)
        if (!strncmp(env[i], key, len) && env[i][len] == '=') return env[i] + len + 1;
    return NULL;
}

int deploy_run(char *const *argv, char *const *envp, char **out, char *err, size_t err_cap)
{
    int po[2], pe[2];
    cr_assert_eq(pipe(po), 0);
    cr_assert_eq(pipe(pe), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(po[1], 1), dup2(pe[1], 2);
        close(po[0]), close(pe[0]), close(po[1]), close(pe[1]);
        execve(argv[0], argv, envp);
        _exit(127);
    }
    close(po[1]), close(pe[1]);
    size_t cap = 1 << 14, len = 0, elen = 0;
    char *buf = malloc(cap);
    struct pollfd fds[2] = {{.fd = po[0], .events = POLLIN}, {.fd = pe[0], .events = POLLIN}};
    time_t t0 = time(NULL);
    int open_fds = 2;
    while (open_fds > 0 && time(NULL) - t0 < 60) {
        if (poll(fds, 2, 1000) <= 0) continue;
        for (int k = 0; k < 2; k++) {
            if (fds[k].fd < 0 || !(fds[k].revents & (POLLIN | POLLHUP))) continue;
            char tmp[4096];
            ssize_t r = read(fds[k].fd, tmp, sizeof(tmp));
            if (r <= 0) {
                close(fds[k].fd);
                fds[k].fd = -1;
                open_fds--;
                continue;
            }
            if (k == 0) {
                if (len + (size_t)r + 1 > cap) buf = realloc(buf, cap = 2 * (len + (size_t)r + 1));
                memcpy(buf + len, tmp, (size_t)r);
                len += (size_t)r;
            } else {
                size_t c = err_cap - 1 - elen < (size_t)r ? err_cap - 1 - elen : (size_t)r;
                memcpy(err + elen, tmp, c);
                elen += c;
            }
        }
    }
    for (int k = 0; k < 2; k++)
        if (fds[k].fd >= 0) close(fds[k].fd);
    buf[len] = 0;
    err[elen] = 0;
    int st;
    if (open_fds > 0) kill(pid, SIGKILL);
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

bool deploy_config_value(const char *printed, const char *name, char *val, size_t cap)
{
    size_t len = strlen(name);
    for (const char *l = printed; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, name, len) || l[len] != '\t') continue;
        const char *v = l + len + 1, *end = strchr(v, '\t');
        if (!end || (size_t)(end - v) >= cap) return false;
        memcpy(val, v, (size_t)(end - v));
        val[end - v] = 0;
        return true;
    }
    return false;
}
