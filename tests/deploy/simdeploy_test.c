/* Simulated deployment of the local overlay: tests/deploy/simdeploy.sh runs the coordinator
 * and the expert "pods" in network namespaces with the StatefulSet pod names in their hosts
 * file; this file turns the rendered manifests into what the script needs: each container's
 * exact environment, the volume paths, the probe paths, the grace period, and the demo model
 * built by the manifests' own init-container command. Skipped (not passed) without root,
 * ip netns or kubectl.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/deploy/deploy.h"

static const char *str_at(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static void write_env(const char *path, char **env, int n)
{
    FILE *f = fopen(path, "w");
    cr_assert(f);
    for (int i = 0; i < n; i++) {
        cr_assert(!strchr(env[i], '\n'), "a value with a newline: %s", env[i]);
        fprintf(f, "%s\n", env[i]);
        free(env[i]);
    }
    fclose(f);
}

/* mountPath of the volume named vol in container c. */
static const char *mount_path(json_t *c, const char *vol)
{
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(c, "volumeMounts"), i, m)
        if (!strcmp(str_at(m, "name"), vol)) return str_at(m, "mountPath");
    return NULL;
}

static json_t *container(json_t *workload, const char *list, int i)
{
    return json_array_get(json_object_get(json_object_get(json_object_get(
                              json_object_get(workload, "spec"), "template"), "spec"), list), i);
}

/* Prepares WORK from the local overlay and runs the script in mode ("" or "restart"). */
static void simulate(const char *mode)
{
    if (geteuid() != 0) cr_skip_test("not root: no network namespaces, simulated deployment skipped");
    if (system("ip netns list >/dev/null 2>&1") != 0)
        cr_skip_test("ip netns unavailable: simulated deployment skipped");
    if (!deploy_have_kubectl()) cr_skip_test("kubectl not found: simulated deployment skipped");
    char why[2048];
    json_t *docs = deploy_render("overlays/local", why, sizeof(why));
    cr_assert(docs, "render: %s", why);
    json_t *dep = deploy_find(docs, "Deployment", "moemesh-coordinator");
    json_t *sts = deploy_find(docs, "StatefulSet", "moemesh-expert");
    cr_assert(dep && sts);
    char work[] = "/tmp/moemesh-simdeploy-XXXXXX", path[512];
    cr_assert(mkdtemp(work));

    /* The coordinator: its environment, and its model volume filled by the init container's
     * own command (moemesh-model upcycle ... -o /models/model.gguf) with the image's demo
     * files, which are the repository's models/ files. */
    json_t *coord = container(dep, "containers", 0), *init = container(dep, "initContainers", 0);
    cr_assert_str_eq(str_at(init, "name"), "demo-model");
    const char *model_dir = mount_path(coord, "model");
    cr_assert(model_dir);
    snprintf(path, sizeof(path), "%s/models", work);
    cr_assert_eq(mkdir(path, 0755), 0);
    json_t *cmd = json_object_get(init, "command");
    char *argv[32], args[32][512];
    int a = 0;
    argv[a++] = (char *)deploy_prog(json_string_value(json_array_get(cmd, 0)));
    for (size_t i = 1; i < json_array_size(cmd) && a < 31; i++) {
        const char *s = json_string_value(json_array_get(cmd, i));
        if (!strncmp(s, "/usr/share/moemesh/demo/", 24))
            snprintf(args[a], sizeof(args[a]), "models/%s", s + 24);
        else if (!strncmp(s, model_dir, strlen(model_dir)))
            snprintf(args[a], sizeof(args[a]), "%s/models%s", work, s + strlen(model_dir));
        else
            snprintf(args[a], sizeof(args[a]), "%s", s);
        argv[a] = args[a];
        a++;
    }
    argv[a] = NULL;
    char *out, err[2048], *no_env[] = {NULL};
    cr_assert_eq(deploy_run(argv, no_env, &out, err, sizeof(err)), 0, "demo model: %s", err);
    free(out);

    char *env[64];
    int n = deploy_container_env(docs, coord, "moemesh-coordinator-0", env, 64);
    const char *port = deploy_env_get(env, n, "MOEMESH_PORT");
    const char *grace = deploy_env_get(env, n, "MOEMESH_GRACE");
    cr_assert(port && grace);
    json_t *ready = json_object_get(json_object_get(coord, "readinessProbe"), "httpGet");
    json_t *live = json_object_get(json_object_get(coord, "livenessProbe"), "httpGet");
    json_int_t tgp = json_integer_value(json_object_get(
        json_object_get(json_object_get(json_object_get(dep, "spec"), "template"), "spec"),
        "terminationGracePeriodSeconds"));
    json_t *xc = container(sts, "containers", 0);
    const char *cache = mount_path(xc, "cache");
    cr_assert(cache);
    snprintf(path, sizeof(path), "%s/pod.env", work);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fprintf(f, "HTTP_PORT=%s\nREADY_PATH=%s\nLIVE_PATH=%s\nMODEL_DIR=%s\nCACHE_DIR=%s\n"
               "GRACE_SECONDS=%lld\n",
            port, str_at(ready, "path"), str_at(live, "path"), model_dir, cache, (long long)tgp);
    fclose(f);
    snprintf(path, sizeof(path), "%s/coordinator.env", work);
    write_env(path, env, n);

    int replicas = (int)json_integer_value(json_object_get(json_object_get(sts, "spec"), "replicas"));
    cr_assert_geq(replicas, 2);
    for (int i = 0; i < replicas; i++) {
        char pod[64];
        snprintf(pod, sizeof(pod), "moemesh-expert-%d", i);
        n = deploy_container_env(docs, xc, pod, env, 64);
        snprintf(path, sizeof(path), "%s/expert-%d.env", work, i);
        write_env(path, env, n);
    }
    json_decref(docs);

    char bin[512];
    snprintf(bin, sizeof(bin), "%s", deploy_prog("moemesh-coordinator"));
    *strrchr(bin, '/') = 0;
    char run[2048];
    /* One simulation at a time: the volume mount points (/models, ...) live on the shared root
     * filesystem, and a run removes those it created. */
    snprintf(run, sizeof(run),
             "flock -w 600 /tmp/moemesh-simdeploy.lock timeout 600 sh tests/deploy/simdeploy.sh "
             "%s %s %d %s",
             bin, work, replicas, mode);
    int st = system(run);
    int rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    if (rc != 0) {
        snprintf(run, sizeof(run), "for f in %s/*.log; do echo \"== $f\"; tail -n 15 $f; done", work);
        (void)!system(run);
    }
    snprintf(run, sizeof(run), "rm -rf %s", work);
    (void)!system(run);
    if (rc == 77) cr_skip_test("simdeploy.sh could not set up namespaces here");
    cr_assert_eq(rc, 0, "simulated deployment failed (output above)");
}

Test(simdeploy, chat_completion_from_manifest_env, .timeout = 1260)
{
    simulate("");
}

/* The "restart gets its shard back": the restarted pod comes up at a new address
 * under the same name; the coordinator's liveness loop sees it answer HELLO again and
 * re-assigns (and re-streams) its experts, and /health returns to 200. */
Test(simdeploy, expert_pod_restart_gets_its_shard_back, .timeout = 1260)
{
    simulate("restart");
}
