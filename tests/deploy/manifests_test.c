/* deploy/k8s against the programs: every kustomization renders, every container's command and
 * environment is accepted by the binary it runs (--print-config exits 0 and shows the values
 * the manifests rely on), ports and probe paths agree with what the programs serve, every
 * ConfigMap/Secret/volume reference resolves, images and labels are consistent. Skipped, and
 * said so, where kubectl is missing.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/deploy/deploy.h"

#define MAX_ENV 64

static json_t *render_or_skip(const char *variant)
{
    if (!deploy_have_kubectl())
        cr_skip_test("kubectl not found: deploy/k8s not rendered (apt-get install "
                     "kubernetes-client, or any kubectl >= 1.21)");
    char why[2048];
    json_t *docs = deploy_render(variant, why, sizeof(why));
    cr_assert(docs, "kubectl kustomize deploy/k8s/%s failed: %s", variant, why);
    return docs;
}

static const char *str_at(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* The containerPort named name in container c, or -1. */
static int container_port(json_t *c, const char *name)
{
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(c, "ports"), i, p)
        if (str_at(p, "name") && !strcmp(str_at(p, "name"), name))
            return (int)json_integer_value(json_object_get(p, "containerPort"));
    return -1;
}

/* The volumeMount of c whose mountPath is path or a parent of it; NULL when none. */
static json_t *mount_for(json_t *c, const char *path)
{
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(c, "volumeMounts"), i, m) {
        const char *mp = str_at(m, "mountPath");
        size_t n = strlen(mp);
        if (!strncmp(path, mp, n) && (path[n] == '/' || path[n] == 0)) return m;
    }
    return NULL;
}

/* A pod name the template's pods would have, for fieldRef metadata.name. */
static void pod_name(const deploy_pod_t *p, char *out, size_t cap)
{
    const char *n = str_at(json_object_get(p->owner, "metadata"), "name");
    if (!strcmp(p->role, "lws-worker")) snprintf(out, cap, "%s-0-1", n);
    else snprintf(out, cap, "%s-0", n);
}

/* LeaderWorkerSet's own variables for a pod of p (none outside a LeaderWorkerSet). */
static int lws_env(const deploy_pod_t *p, char **env, int n)
{
    if (strncmp(p->role, "lws-", 4)) return n;
    const char *name = str_at(json_object_get(p->owner, "metadata"), "name");
    long size = (long)json_integer_value(json_object_get(
        json_object_get(json_object_get(p->owner, "spec"), "leaderWorkerTemplate"), "size"));
    cr_assert_geq(size, 2, "a LeaderWorkerSet group needs a leader and a worker");
    cr_assert(asprintf(&env[n++], "LWS_LEADER_ADDRESS=%s-0.%s.default", name, name) > 0);
    cr_assert(asprintf(&env[n++], "LWS_GROUP_SIZE=%ld", size) > 0);
    cr_assert(asprintf(&env[n++], "LWS_WORKER_INDEX=%d", !strcmp(p->role, "lws-worker")) > 0);
    return n;
}

/* Runs the container's moemesh program with its command, args and environment plus
 * --print-config; returns what it printed (owned). */
static char *print_config(json_t *c, char **env, int n_env)
{
    json_t *cmd = json_object_get(c, "command"), *args = json_object_get(c, "args");
    char *argv[64];
    int a = 0;
    argv[a++] = (char *)deploy_prog(json_string_value(json_array_get(cmd, 0)));
    for (size_t i = 1; i < json_array_size(cmd) && a < 60; i++)
        argv[a++] = (char *)json_string_value(json_array_get(cmd, i));
    for (size_t i = 0; i < json_array_size(args) && a < 60; i++)
        argv[a++] = (char *)json_string_value(json_array_get(args, i));
    argv[a++] = "--print-config";
    argv[a] = NULL;
    char *envp[MAX_ENV + 1];
    memcpy(envp, env, sizeof(char *) * (size_t)n_env);
    envp[n_env] = NULL;
    char *out, err[2048];
    int rc = deploy_run(argv, envp, &out, err, sizeof(err));
    cr_assert_eq(rc, 0, "%s refused container %s's configuration: %s", argv[0],
                 str_at(c, "name"), err);
    return out;
}

/* A Kubernetes memory quantity ("512Mi", "8Gi", "1000000") in bytes; 0 when absent. */
static double quantity(const char *q)
{
    if (!q) return 0;
    char *end;
    double v = strtod(q, &end);
    static const char *const suf[] = {"Ki", "Mi", "Gi", "Ti"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(end, suf[i])) return v * (double)(1ull << (10 * (i + 1)));
    cr_assert_eq(*end, 0, "unexpected quantity %s", q);
    return v;
}

/* Checks one coordinator or expert container through its --print-config output. */
static void check_program(json_t *docs, const deploy_pod_t *p, json_t *c)
{
    const char *prog = json_string_value(json_array_get(json_object_get(c, "command"), 0));
    char pname[128], v[1024];
    pod_name(p, pname, sizeof(pname));
    char *env[MAX_ENV];
    int n = deploy_container_env(docs, c, pname, env, MAX_ENV - 4);
    n = lws_env(p, env, n);
    char *out = print_config(c, env, n);
    if (!strcmp(prog, "moemesh-coordinator")) {
        cr_assert(deploy_config_value(out, "port", v, sizeof(v)), "%s", out);
        cr_assert_eq(atoi(v), container_port(c, "http"), "serve listens on %s, the pod says %d",
                     v, container_port(c, "http"));
        cr_assert(deploy_config_value(out, "host", v, sizeof(v)));
        cr_assert_str_eq(v, "0.0.0.0", "a pod must listen on every address, not %s", v);
        cr_assert(deploy_config_value(out, "model", v, sizeof(v)));
        cr_assert(v[0] == '/' && mount_for(c, v), "model %s is on no volume of the pod", v);
        cr_assert(deploy_config_value(out, "grace", v, sizeof(v)));
        /* SIGTERM drains for --grace seconds after the preStop pause: the pod must wait. */
        json_t *pre = json_object_get(json_object_get(json_object_get(c, "lifecycle"),
                                                      "preStop"), "exec");
        json_t *pc = json_object_get(pre, "command");
        int pause = pc ? atoi(json_string_value(json_array_get(pc, 1))) : 0;
        json_int_t tgp = json_integer_value(
            json_object_get(json_object_get(p->tmpl, "spec"), "terminationGracePeriodSeconds"));
        cr_assert_geq(tgp, pause + atoi(v) + 5,
                      "terminationGracePeriodSeconds %lld < preStop %d s + grace %s s + 5",
                      (long long)tgp, pause, v);
    } else {
        cr_assert(deploy_config_value(out, "listen", v, sizeof(v)), "%s", out);
        const char *colon = strrchr(v, ':');
        cr_assert(colon && atoi(colon + 1) == container_port(c, "wire"),
                  "the node listens on %s, the pod's wire port is %d", v, container_port(c, "wire"));
        cr_assert(deploy_config_value(out, "cache-dir", v, sizeof(v)));
        if (v[0]) {
            json_t *m = mount_for(c, v);
            cr_assert(m && !json_is_true(json_object_get(m, "readOnly")),
                      "cache-dir %s must be on a writable volume", v);
        }
        /* The weights a node offers fit its container (kubelet kills past the limit). */
        cr_assert(deploy_config_value(out, "mem-limit", v, sizeof(v)));
        double lim = quantity(json_string_value(json_object_get(
            json_object_get(json_object_get(c, "resources"), "limits"), "memory")));
        cr_assert(v[0] && lim > 0, "expert node without MOEMESH_MEM_LIMIT or memory limit");
        cr_assert_lt(atof(v) * 1073741824.0, lim, "mem-limit %s GiB does not fit the limit", v);
        cr_assert(deploy_config_value(out, "name", v, sizeof(v)));
        if (!strcmp(p->role, "lws-worker")) cr_assert_str_eq(v, "expert-1");
        else cr_assert_str_eq(v, pname);
    }
    cr_assert(deploy_config_value(out, "curve-keys", v, sizeof(v)));
    if (v[0]) cr_assert(mount_for(c, v), "curve-keys %s is on no volume of the pod", v);
    free(out);
    for (int i = 0; i < n; i++) free(env[i]);
}

/* The init container that builds the demo model: its inputs are what the image carries (the
 * Dockerfile copies models/ files to /usr/share/moemesh/demo/), and the command works. */
static void check_model_init(json_t *c)
{
    json_t *cmd = json_object_get(c, "command");
    char *argv[32];
    int a = 0, n_in = 0;
    char paths[4][512], dir[] = "/tmp/moemesh-initc-XXXXXX";
    cr_assert(mkdtemp(dir));
    argv[a++] = (char *)deploy_prog("moemesh-model");
    for (size_t i = 1; i < json_array_size(cmd) && a < 30; i++) {
        const char *s = json_string_value(json_array_get(cmd, i));
        if (!strncmp(s, "/usr/share/moemesh/demo/", 24) && n_in < 3) {
            snprintf(paths[n_in], sizeof(paths[n_in]), "models/%s", s + 24);
            cr_assert_eq(access(paths[n_in], R_OK), 0, "the image has no %s (from %s)", s,
                         paths[n_in]);
            argv[a++] = paths[n_in++];
        } else if (s[0] == '/' && i >= 2 && !strcmp(json_string_value(json_array_get(cmd, i - 1)), "-o")) {
            cr_assert(mount_for(c, s), "the init container writes %s to no volume", s);
            snprintf(paths[3], sizeof(paths[3]), "%s/model.gguf", dir);
            argv[a++] = paths[3];
        } else {
            argv[a++] = (char *)s;
        }
    }
    argv[a] = NULL;
    char *out, err[2048];
    char *envp[] = {NULL};
    int rc = deploy_run(argv, envp, &out, err, sizeof(err));
    bool made = access(paths[3], R_OK) == 0;
    free(out);
    char rm[128];
    snprintf(rm, sizeof(rm), "rm -rf %s", dir);
    (void)!system(rm);
    cr_assert_eq(rc, 0, "the demo-model init container's command fails: %s", err);
    cr_assert(made, "the demo-model init container's command wrote no model");
}

static void check_variant_programs(const char *variant)
{
    json_t *docs = render_or_skip(variant);
    deploy_pod_t pods[8];
    int np = deploy_pods(docs, pods, 8), n_prog = 0;
    cr_assert_geq(np, 2, "%s: a coordinator and expert nodes", variant);
    for (int i = 0; i < np; i++) {
        json_t *spec = json_object_get(pods[i].tmpl, "spec");
        const char *lists[2] = {"initContainers", "containers"};
        for (int l = 0; l < 2; l++) {
            size_t k;
            json_t *c;
            json_array_foreach(json_object_get(spec, lists[l]), k, c) {
                const char *prog = json_string_value(json_array_get(json_object_get(c, "command"), 0));
                cr_assert(prog, "%s: container %s has no command", variant, str_at(c, "name"));
                if (!strcmp(prog, "moemesh-coordinator") || !strcmp(prog, "moemesh-expert"))
                    check_program(docs, &pods[i], c), n_prog++;
                else if (!strcmp(prog, "moemesh-model")) check_model_init(c);
                else cr_assert_str_eq(prog, "sh", "%s: unexpected program %s", variant, prog);
            }
        }
    }
    cr_assert_geq(n_prog, 2);
    json_decref(docs);
}

Test(manifests, base_programs_accept_their_configuration, .timeout = 120)
{
    check_variant_programs("base");
}
Test(manifests, local_programs_accept_their_configuration, .timeout = 120)
{
    check_variant_programs("overlays/local");
}
Test(manifests, production_programs_accept_their_configuration, .timeout = 120)
{
    check_variant_programs("overlays/production");
}
Test(manifests, lws_programs_accept_their_configuration, .timeout = 120)
{
    check_variant_programs("lws");
}

/* True when every key=value of sel is among the labels. */
static bool selects(json_t *sel, json_t *labels)
{
    const char *k;
    json_t *v;
    if (!json_object_size(sel)) return false;
    json_object_foreach(sel, k, v)
        if (!json_equal(v, json_object_get(labels, k))) return false;
    return true;
}

static void check_references(const char *variant)
{
    json_t *docs = render_or_skip(variant);
    deploy_pod_t pods[8];
    int np = deploy_pods(docs, pods, 8);
    const char *image = NULL;
    for (int i = 0; i < np; i++) {
        json_t *meta = json_object_get(pods[i].tmpl, "metadata"), *spec = json_object_get(pods[i].tmpl, "spec");
        json_t *labels = json_object_get(meta, "labels");
        cr_assert_str_eq(str_at(labels, "app.kubernetes.io/name"), "moemesh");
        json_t *sel = json_object_get(json_object_get(json_object_get(pods[i].owner, "spec"), "selector"), "matchLabels");
        if (strncmp(pods[i].role, "lws-", 4))
            cr_assert(selects(sel, labels), "%s: the selector does not match the pod labels", variant);
        /* Volumes: every reference resolves; CURVE secrets are 0400 and mounted read-only. */
        size_t k;
        json_t *vol;
        json_array_foreach(json_object_get(spec, "volumes"), k, vol) {
            json_t *s = json_object_get(vol, "secret"), *cm = json_object_get(vol, "configMap");
            json_t *pvc = json_object_get(vol, "persistentVolumeClaim");
            if (s) {
                json_t *obj = deploy_find(docs, "Secret", str_at(s, "secretName"));
                cr_assert(obj, "%s: Secret %s is not defined", variant, str_at(s, "secretName"));
                cr_assert_eq(json_integer_value(json_object_get(s, "defaultMode")), 0400);
                size_t j;
                json_t *it;
                json_array_foreach(json_object_get(s, "items"), j, it)
                    cr_assert(json_object_get(json_object_get(obj, "data"), str_at(it, "key")),
                              "%s: Secret has no key %s", variant, str_at(it, "key"));
            }
            if (cm) cr_assert(deploy_find(docs, "ConfigMap", str_at(cm, "name")));
            if (pvc)
                cr_assert(deploy_find(docs, "PersistentVolumeClaim", str_at(pvc, "claimName")),
                          "%s: claim %s is not defined", variant, str_at(pvc, "claimName"));
        }
        const char *lists[2] = {"initContainers", "containers"};
        for (int l = 0; l < 2; l++) {
            json_t *c;
            json_array_foreach(json_object_get(spec, lists[l]), k, c) {
                const char *img = str_at(c, "image");
                if (!image) image = img;
                cr_assert_str_eq(img, image, "%s: every container runs the one moemesh image", variant);
                size_t j;
                json_t *m;
                json_array_foreach(json_object_get(c, "volumeMounts"), j, m) {
                    bool found = false, secret = false;
                    size_t q;
                    json_array_foreach(json_object_get(spec, "volumes"), q, vol)
                        if (!strcmp(str_at(vol, "name"), str_at(m, "name")))
                            found = true, secret = json_object_get(vol, "secret") != NULL;
                    cr_assert(found, "%s: mount %s names no volume", variant, str_at(m, "name"));
                    if (secret) cr_assert(json_is_true(json_object_get(m, "readOnly")));
                }
                /* Probes: named ports of this container, paths the coordinator serves. */
                const char *probes[3] = {"startupProbe", "readinessProbe", "livenessProbe"};
                for (int q = 0; q < 3; q++) {
                    json_t *pr = json_object_get(c, probes[q]);
                    if (!pr) continue;
                    json_t *h = json_object_get(pr, "httpGet"), *t = json_object_get(pr, "tcpSocket");
                    json_t *port = json_object_get(h ? h : t, "port");
                    cr_assert(json_is_string(port) && container_port(c, json_string_value(port)) > 0,
                              "%s: %s of %s names no port of the container", variant, probes[q],
                              str_at(c, "name"));
                    if (h) {
                        const char *path = str_at(h, "path");
                        cr_assert(!strcmp(path, "/health") || !strcmp(path, "/live"),
                                  "%s: probe path %s is not /health or /live", variant, path);
                        /* Liveness must not fail while a node is down or the model loads. */
                        if (q == 2) cr_assert_str_eq(path, "/live");
                        else cr_assert_str_eq(path, "/health");
                    }
                }
            }
        }
    }
    /* Services select pods and target their named ports. */
    size_t i;
    json_t *d;
    json_array_foreach(docs, i, d) {
        cr_assert_str_eq(str_at(json_object_get(json_object_get(d, "metadata"), "labels"),
                                "app.kubernetes.io/name"), "moemesh",
                         "%s: %s without the app label", variant, str_at(d, "kind"));
        if (strcmp(str_at(d, "kind"), "Service")) continue;
        json_t *spec = json_object_get(d, "spec"), *sel = json_object_get(spec, "selector");
        size_t j;
        json_t *sp;
        json_array_foreach(json_object_get(spec, "ports"), j, sp) {
            bool ok = false;
            for (int p = 0; p < np && !ok; p++) {
                if (!selects(sel, json_object_get(json_object_get(pods[p].tmpl, "metadata"), "labels")))
                    continue;
                size_t q;
                json_t *c;
                json_array_foreach(json_object_get(json_object_get(pods[p].tmpl, "spec"), "containers"), q, c)
                    if (container_port(c, str_at(sp, "targetPort")) > 0) ok = true;
            }
            cr_assert(ok, "%s: Service %s port %s reaches no container port", variant,
                      str_at(json_object_get(d, "metadata"), "name"), str_at(sp, "name"));
        }
    }
    json_decref(docs);
}

Test(manifests, base_references_resolve, .timeout = 60) { check_references("base"); }
Test(manifests, local_references_resolve, .timeout = 60) { check_references("overlays/local"); }
Test(manifests, production_references_resolve, .timeout = 60)
{
    check_references("overlays/production");
}
Test(manifests, lws_references_resolve, .timeout = 60) { check_references("lws"); }

/* The coordinator's node list names exactly the StatefulSet's pods under its headless Service,
 * on the wire port; replicas fit the node count. */
static void check_discovery(const char *variant, int want_nodes)
{
    json_t *docs = render_or_skip(variant);
    json_t *sts = deploy_find(docs, "StatefulSet", "moemesh-expert");
    cr_assert(sts);
    json_t *spec = json_object_get(sts, "spec");
    int replicas = (int)json_integer_value(json_object_get(spec, "replicas"));
    cr_assert_eq(replicas, want_nodes);
    const char *svc_name = str_at(spec, "serviceName");
    json_t *svc = deploy_find(docs, "Service", svc_name);
    cr_assert(svc, "serviceName %s is not defined", svc_name);
    cr_assert_str_eq(str_at(json_object_get(svc, "spec"), "clusterIP"), "None");
    json_t *cm = deploy_find(docs, "ConfigMap", "moemesh-coordinator");
    const char *nodes = str_at(json_object_get(cm, "data"), "MOEMESH_EXPERT_NODES");
    cr_assert(nodes);
    int port = (int)json_integer_value(json_object_get(json_array_get(json_object_get(svc_name ? json_object_get(svc, "spec") : NULL, "ports"), 0), "port"));
    char want[4096] = "";
    for (int i = 0; i < replicas; i++)
        snprintf(want + strlen(want), sizeof(want) - strlen(want), "%s%s-%d.%s:%d", i ? "," : "",
                 str_at(json_object_get(sts, "metadata"), "name"), i, svc_name, port);
    cr_assert_str_eq(nodes, want);
    const char *r = str_at(json_object_get(cm, "data"), "MOEMESH_REPLICAS");
    cr_assert_leq(r ? atoi(r) : 1, replicas);
    json_decref(docs);
}

Test(manifests, local_nodes_are_the_statefulset_pods, .timeout = 60)
{
    check_discovery("overlays/local", 2);
}
Test(manifests, production_nodes_are_the_statefulset_pods, .timeout = 60)
{
    check_discovery("overlays/production", 4);
}

Test(manifests, production_pins_an_image_and_encrypts, .timeout = 60)
{
    json_t *docs = render_or_skip("overlays/production");
    deploy_pod_t pods[4];
    int np = deploy_pods(docs, pods, 4);
    for (int i = 0; i < np; i++) {
        json_t *c = json_array_get(json_object_get(json_object_get(pods[i].tmpl, "spec"), "containers"), 0);
        const char *img = str_at(c, "image");
        cr_assert(strchr(img, '/') && strchr(img, ':') && !strstr(img, ":dev"),
                  "production runs a pinned registry image, not %s", img);
    }
    json_t *cm = deploy_find(docs, "ConfigMap", "moemesh-expert");
    cr_assert(str_at(json_object_get(cm, "data"), "MOEMESH_CURVE_KEYS"));
    cm = deploy_find(docs, "ConfigMap", "moemesh-coordinator");
    cr_assert(str_at(json_object_get(cm, "data"), "MOEMESH_CURVE_KEYS"));
    cr_assert_str_eq(str_at(json_object_get(cm, "data"), "MOEMESH_REPLICAS"), "2");
    json_decref(docs);
}
