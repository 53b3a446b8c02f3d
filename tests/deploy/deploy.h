/* Helpers the deploy tests share (tests/deploy/util.c): rendering deploy/k8s with kubectl,
 * walking the rendered objects, running the programs beside this test binary with a given
 * environment. Tests run from the repository root (make unit / make test do so).
 */
#ifndef MOEMESH_TESTS_DEPLOY_H
#define MOEMESH_TESTS_DEPLOY_H

#include <jansson.h>
#include <stdbool.h>

/* The kustomizations tests render: the base, both overlays and the LeaderWorkerSet variant. */
#define DEPLOY_N_VARIANTS 4
extern const char *const deploy_variants[DEPLOY_N_VARIANTS];

/* True when kubectl is on PATH; tests skip (with that said) when not. */
bool deploy_have_kubectl(void);

/* Renders deploy/k8s/<variant> into a JSON array of objects (owned by the caller), or NULL
 * with the reason in why. The production overlay renders from a copy of deploy/k8s in a
 * temporary folder whose keys/ moemesh-expert keygen fills, as an operator's would be. */
json_t *deploy_render(const char *variant, char *why, size_t why_cap);

/* The object of that kind and name (for generated names, the name before the hash suffix
 * matches too), borrowed from docs; NULL when absent. */
json_t *deploy_find(json_t *docs, const char *kind, const char *name);

/* Every pod template of docs: Deployment/StatefulSet spec.template and the leader and worker
 * templates of a LeaderWorkerSet. tmpl and owner (the workload) are borrowed; role is
 * "deployment", "statefulset", "lws-leader" or "lws-worker". Returns the count (at most cap). */
typedef struct {
    json_t *owner, *tmpl;
    const char *role;
} deploy_pod_t;
int deploy_pods(json_t *docs, deploy_pod_t *out, int cap);

/* "K=V" strings of a container's environment as Kubernetes would set it: envFrom ConfigMaps,
 * then env (value; fieldRef metadata.name gives pod_name). A reference that does not resolve
 * fails the test. Returns the count; strings are owned by the caller (free each). */
int deploy_container_env(json_t *docs, json_t *container, const char *pod_name, char **out,
                         int cap);
/* The value of K in such an environment, or NULL. */
const char *deploy_env_get(char *const *env, int n, const char *key);

/* Path of build/.../bin/<prog> beside this test binary (static buffer). */
const char *deploy_prog(const char *prog);

/* Runs argv with exactly envp (NULL-terminated) and captures stdout (owned; NUL-terminated)
 * and stderr into err (truncated to err_cap). Returns the exit status, or -1 when the program
 * was killed. Bounded: 60 s at most. */
int deploy_run(char *const *argv, char *const *envp, char **out, char *err, size_t err_cap);

/* The value --print-config printed for option name ("port"), in a buffer of the caller's. */
bool deploy_config_value(const char *printed, const char *name, char *val, size_t cap);

#endif
