/* Tests for deploy/local/cluster.sh: `up` makes namespaces, links and processes, `down` leaves
 * none of them behind (twice in a row, too), and an `up` that fails half-way removes what it
 * made. Needs root for network namespaces: skipped with a message otherwise. */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MODEL "../shared/golden/qwen3moe-tiny-f32.gguf"
#define SCRIPT "deploy/local/cluster.sh"

static char g_state[64];
static char g_bin[PATH_MAX];

static void setup(void)
{
    ssize_t n = readlink("/proc/self/exe", g_bin, sizeof(g_bin) - 8);
    cr_assert(n > 0);
    g_bin[n] = 0;
    *strrchr(g_bin, '/') = 0;
    strcpy(strrchr(g_bin, '/'), "/bin");
    snprintf(g_state, sizeof(g_state), "/tmp/moemesh-cluster-test-%d-XXXXXX", (int)getpid());
    cr_assert(mkdtemp(g_state));
}

static void teardown(void)
{
    char cmd[256];
    /* Whatever a failed assertion left: down is idempotent. */
    snprintf(cmd, sizeof(cmd), "sh %s down --state '%s' >/dev/null 2>&1; rm -rf '%s'", SCRIPT,
             g_state, g_state);
    cr_expect_eq(system(cmd), 0);
}

TestSuite(cluster_sh, .init = setup, .fini = teardown, .timeout = 120);

/* Output of a shell command (at most cap - 1 bytes). */
static void capture(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    cr_assert(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    pclose(p);
}

/* The value of NAME="..." in cluster.env (last one wins, as when the shell sources it). */
static void env_value(const char *env, const char *name, char *out, size_t cap)
{
    char key[64];
    snprintf(key, sizeof(key), "%s=\"", name);
    out[0] = 0;
    for (const char *p = env; (p = strstr(p, key)) != NULL; p += strlen(key))
        if (p == env || p[-1] == '\n')
            snprintf(out, cap, "%.*s", (int)strcspn(p + strlen(key), "\""), p + strlen(key));
}

static bool skip_unless_root(void)
{
    if (geteuid() == 0) return false;
    cr_skip_test("cluster.sh needs root (network namespaces): skipped");
    return true;
}

/* Nothing whose name holds id: no namespace, no link in our namespace, and none of pids. */
static void expect_gone(const char *id, const char *pids)
{
    char out[8192];
    capture("ip netns list", out, sizeof(out));
    cr_expect_null(strstr(out, id), "namespace of %s left: %s", id, out);
    capture("ip -o link", out, sizeof(out));
    cr_expect_null(strstr(out, id), "link of %s left", id);
    for (const char *p = pids; *p;) {
        char *end;
        long pid = strtol(p, &end, 10);
        if (end == p) break;
        cr_expect(kill((pid_t)pid, 0) != 0 && errno == ESRCH, "pid %ld still running", pid);
        p = end;
    }
}

Test(cluster_sh, up_down_leaves_nothing)
{
    if (skip_unless_root()) return;
    char cmd[PATH_MAX + 512], env[4096], id[64], pids[512], out[8192];
    snprintf(cmd, sizeof(cmd),
             "sh %s up 2 --rtt 1 --rate 50 --model %s --bin %s --state %s >%s/up.log 2>&1",
             SCRIPT, MODEL, g_bin, g_state, g_state);
    cr_assert_eq(system(cmd), 0, "cluster.sh up failed (see %s/up.log)", g_state);
    snprintf(cmd, sizeof(cmd), "cat %s/cluster.env", g_state);
    capture(cmd, env, sizeof(env));
    env_value(env, "ID", id, sizeof(id));
    env_value(env, "PIDS", pids, sizeof(pids));
    cr_assert(id[0] && pids[0]);
    capture("ip netns list", out, sizeof(out));
    cr_expect(strstr(out, id), "no namespace of %s", id);
    snprintf(cmd, sizeof(cmd), "sh %s status --state %s", SCRIPT, g_state);
    capture(cmd, out, sizeof(out));
    cr_expect(strstr(out, "10.213.0.11/24"), "%s", out);
    cr_expect_null(strstr(out, "gone"), "%s", out);
    /* Shaped: tbf on the node side of each link. */
    snprintf(cmd, sizeof(cmd), "ip netns exec %s-n1 tc qdisc show dev eth0", id);
    capture(cmd, out, sizeof(out));
    cr_expect(strstr(out, "tbf"), "%s", out);

    snprintf(cmd, sizeof(cmd), "sh %s down --state %s", SCRIPT, g_state);
    cr_expect_eq(system(cmd), 0);
    cr_expect_eq(system(cmd), 0, "a second down is a no-op");
    expect_gone(id, pids);
}

/* A rate tc cannot take fails `up` after the namespaces and links exist: it must remove them
 * itself. The cluster id is mm<pid of the script>; `exec` keeps the pid we print. */
Test(cluster_sh, failed_up_cleans_up)
{
    if (skip_unless_root()) return;
    char cmd[PATH_MAX + 512], log[8192], id[64];
    snprintf(cmd, sizeof(cmd),
             "sh -c 'echo $$ >%s/pid; exec sh %s up 1 --rate 0.0000000001 --model %s --bin %s "
             "--state %s' >%s/up.log 2>&1",
             g_state, SCRIPT, MODEL, g_bin, g_state, g_state);
    cr_expect_neq(system(cmd), 0);
    snprintf(cmd, sizeof(cmd), "cat %s/up.log", g_state);
    capture(cmd, log, sizeof(log));
    cr_expect(strstr(log, "removing what it made"), "%s", log);
    snprintf(cmd, sizeof(cmd), "test ! -e %s/cluster.env", g_state);
    cr_expect_eq(system(cmd), 0, "cluster.env left behind");
    snprintf(cmd, sizeof(cmd), "cat %s/pid", g_state);
    capture(cmd, log, sizeof(log));
    snprintf(id, sizeof(id), "mm%ld-", strtol(log, NULL, 10));
    expect_gone(id, "");
}

/* Without root it refuses in words and points at the loopback sweep (run as nobody). */
Test(cluster_sh, says_it_needs_root)
{
    if (skip_unless_root()) return;
    char cmd[512], out[1024];
    snprintf(cmd, sizeof(cmd),
             "setpriv --reuid=65534 --regid=65534 --clear-groups sh %s up 1 2>&1; echo rc=$?",
             SCRIPT);
    capture(cmd, out, sizeof(out));
    cr_expect(strstr(out, "needs root"), "%s", out);
    cr_expect(strstr(out, "--loopback"), "%s", out);
    cr_expect(strstr(out, "rc=1"), "%s", out);
}
