/* LeaderWorkerSet discovery (coordinator/flags.c, expert-node/cli.c): the leader derives its
 * workers' names from LWS_LEADER_ADDRESS and LWS_GROUP_SIZE, explicit node flags win, a
 * coordinator that is not worker 0 and an expert that is are refused, a worker names itself
 * by its index. Each test sets and clears the LWS_* variables it uses.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/coordinator-int.h"
#include "tests/deploy/deploy.h"

static void clear(void)
{
    unsetenv("LWS_LEADER_ADDRESS");
    unsetenv("LWS_GROUP_SIZE");
    unsetenv("LWS_WORKER_INDEX");
}

TestSuite(lws, .init = clear, .fini = clear);

Test(lws, leader_derives_worker_names)
{
    setenv("LWS_LEADER_ADDRESS", "moemesh-group-3.moemesh-group.inference", 1);
    setenv("LWS_GROUP_SIZE", "4", 1);
    setenv("LWS_WORKER_INDEX", "0", 1);
    coord__cluster_flags_t cf = coord__cluster_flags_default();
    cf.expert_port = 6000;
    coord__endpoints_t eps = {0};
    cr_assert_eq(coord__cluster_flags_check(&cf, &eps), 0);
    cr_assert_eq(eps.n, 3);
    cr_assert_str_eq(eps.v[0], "tcp://moemesh-group-3-1.moemesh-group.inference:6000");
    cr_assert_str_eq(eps.v[1], "tcp://moemesh-group-3-2.moemesh-group.inference:6000");
    cr_assert_str_eq(eps.v[2], "tcp://moemesh-group-3-3.moemesh-group.inference:6000");
    coord__endpoints_free(&eps);
}

Test(lws, explicit_nodes_win_and_no_group_means_no_nodes)
{
    setenv("LWS_LEADER_ADDRESS", "g-0.g.ns", 1);
    setenv("LWS_GROUP_SIZE", "3", 1);
    coord__cluster_flags_t cf = coord__cluster_flags_default();
    cf.nodes.v[cf.nodes.n++] = "a:1";
    coord__endpoints_t eps = {0};
    cr_assert_eq(coord__cluster_flags_check(&cf, &eps), 0);
    cr_assert_eq(eps.n, 1);
    cr_assert_str_eq(eps.v[0], "tcp://a:1");
    coord__endpoints_free(&eps);
    clear();
    cf = coord__cluster_flags_default();
    cr_assert_eq(coord__cluster_flags_check(&cf, &eps), 0);
    cr_assert_eq(eps.n, 0, "outside a LeaderWorkerSet the experts stay local");
}

Test(lws, bad_groups_are_refused)
{
    coord__cluster_flags_t cf = coord__cluster_flags_default();
    coord__endpoints_t eps = {0};
    setenv("LWS_GROUP_SIZE", "3", 1); /* no leader address */
    cr_assert_neq(coord__cluster_flags_check(&cf, &eps), 0);
    setenv("LWS_LEADER_ADDRESS", "g-0.g.ns", 1);
    setenv("LWS_GROUP_SIZE", "three", 1);
    cr_assert_neq(coord__cluster_flags_check(&cf, &eps), 0);
    setenv("LWS_GROUP_SIZE", "100000", 1);
    cr_assert_neq(coord__cluster_flags_check(&cf, &eps), 0);
    setenv("LWS_GROUP_SIZE", "3", 1);
    setenv("LWS_WORKER_INDEX", "2", 1); /* a worker running the coordinator */
    cr_assert_neq(coord__cluster_flags_check(&cf, &eps), 0);
    setenv("LWS_WORKER_INDEX", "0", 1);
    cf.expert_port = 70000;
    cr_assert_neq(coord__cluster_flags_check(&cf, &eps), 0);
    cr_assert_eq(eps.n, 0);
}

/* moemesh-expert as worker 2 names itself expert-2; as index 0 it refuses to start. */
Test(lws, expert_worker_index)
{
    char *argv[] = {(char *)deploy_prog("moemesh-expert"), "--print-config", NULL};
    char *env2[] = {"MOEMESH_LISTEN=tcp://0.0.0.0:5555", "LWS_WORKER_INDEX=2", NULL};
    char *out, err[1024], v[64];
    cr_assert_eq(deploy_run(argv, env2, &out, err, sizeof(err)), 0, "%s", err);
    cr_assert(deploy_config_value(out, "name", v, sizeof(v)));
    cr_assert_str_eq(v, "expert-2");
    free(out);
    char *env3[] = {"MOEMESH_LISTEN=tcp://0.0.0.0:5555", "LWS_WORKER_INDEX=2",
                    "MOEMESH_NAME=mine", NULL};
    cr_assert_eq(deploy_run(argv, env3, &out, err, sizeof(err)), 0, "%s", err);
    cr_assert(deploy_config_value(out, "name", v, sizeof(v)));
    cr_assert_str_eq(v, "mine");
    free(out);
    char *env0[] = {"MOEMESH_LISTEN=tcp://0.0.0.0:5555", "LWS_WORKER_INDEX=0", NULL};
    cr_assert_eq(deploy_run(argv, env0, &out, err, sizeof(err)), 2);
    cr_assert(strstr(err, "leader"), "%s", err);
    free(out);
}

/* --print-config: sources are reported, unknown MOEMESH_* variables refused, secrets hidden. */
Test(lws, print_config_sources_and_refusals)
{
    char *argv[] = {(char *)deploy_prog("moemesh-coordinator"), "serve", "--port", "9000",
                    "--print-config", NULL};
    char *env[] = {"MOEMESH_THREADS=3", "MOEMESH_API_KEY=hunter2", NULL};
    char *out, err[1024];
    cr_assert_eq(deploy_run(argv, env, &out, err, sizeof(err)), 0, "%s", err);
    cr_assert(strstr(out, "\nport\t9000\tflag\n"), "%s", out);
    cr_assert(strstr(out, "\nthreads\t3\tenv MOEMESH_THREADS\n"), "%s", out);
    cr_assert(strstr(out, "\nbatch\t512\tdefault\n"), "%s", out);
    cr_assert(!strstr(out, "hunter2"), "the API key must not be printed");
    free(out);
    char *typo[] = {"MOEMESH_THRADS=3", NULL};
    cr_assert_eq(deploy_run(argv, typo, &out, err, sizeof(err)), 2);
    cr_assert(strstr(err, "MOEMESH_THRADS"), "%s", err);
    free(out);
    char *xargv[] = {(char *)deploy_prog("moemesh-expert"), "--print-config", NULL};
    char *xenv[] = {"MOEMESH_LISTEN=tcp://*:5555", "MOEMESH_MODLE=x", NULL};
    cr_assert_eq(deploy_run(xargv, xenv, &out, err, sizeof(err)), 2);
    cr_assert(strstr(err, "MOEMESH_MODLE"), "%s", err);
    free(out);
}
