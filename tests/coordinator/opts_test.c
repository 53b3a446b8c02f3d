/* Tests for coordinator/opts.c: flags, environment twins and the command line winning. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>

#include "coordinator/coord.h"

static const char *model;
static int n;
static float temp;
static bool flag;
static const coord_opt_t opts[] = {
    {"model", 'm', "MOEMESH_T_MODEL", COORD_OPT_STR, &model, "FILE", "model"},
    {"n-predict", 'n', "MOEMESH_T_N", COORD_OPT_INT, &n, "N", "count"},
    {"temp", 0, "MOEMESH_T_TEMP", COORD_OPT_FLOAT, &temp, "T", "temperature"},
    {"flag", 0, "MOEMESH_T_FLAG", COORD_OPT_BOOL, &flag, NULL, "flag"},
};

static int parse(int argc, char **argv)
{
    model = NULL, n = 0, temp = 0, flag = false;
    return coord_opts_parse(opts, 4, "test", argc, argv, 0);
}

Test(coord_opts, short_long_and_inline_forms)
{
    char *argv[] = {"-m", "a.gguf", "--n-predict", "7", "--temp=0.5", "--flag"};
    cr_assert_eq(parse(6, argv), 0);
    cr_assert_str_eq(model, "a.gguf");
    cr_assert_eq(n, 7);
    cr_assert_float_eq(temp, 0.5f, 1e-6);
    cr_assert(flag);
}

Test(coord_opts, environment_applies_and_command_line_wins)
{
    setenv("MOEMESH_T_N", "3", 1);
    setenv("MOEMESH_T_TEMP", "0.25", 1);
    char *argv[] = {"-n", "9"};
    cr_assert_eq(parse(2, argv), 0);
    cr_assert_eq(n, 9, "command line wins over MOEMESH_T_N");
    cr_assert_float_eq(temp, 0.25f, 1e-6, "environment applies when the flag is absent");
}

Test(coord_opts, bad_values_and_unknown_flags_are_refused)
{
    char *a1[] = {"-n", "12x"};
    cr_assert_eq(parse(2, a1), -EINVAL);
    char *a2[] = {"--bogus"};
    cr_assert_eq(parse(1, a2), -EINVAL);
    char *a3[] = {"-m"};
    cr_assert_eq(parse(1, a3), -EINVAL, "a flag without its value");
    setenv("MOEMESH_T_N", "many", 1);
    cr_assert_eq(parse(0, NULL), -EINVAL, "a malformed environment value is an error too");
}

/* A repeatable option keeps every occurrence in order, the environment's first, and refuses
 * more than COORD_OPT_LIST_MAX. */
Test(coord_opts, list_option_appends_environment_then_each_flag)
{
    coord_opt_list_t l = {0};
    const coord_opt_t lo[] = {{"node", 0, "MOEMESH_T_NODE", COORD_OPT_LIST, &l, "URL", "node"}};
    setenv("MOEMESH_T_NODE", "tcp://a:1", 1);
    char *argv[] = {"--node", "tcp://b:2", "--node=tcp://c:3"};
    cr_assert_eq(coord_opts_parse(lo, 1, "test", 3, argv, 0), 0);
    unsetenv("MOEMESH_T_NODE");
    cr_assert_eq(l.n, 3);
    cr_assert_str_eq(l.v[0], "tcp://a:1");
    cr_assert_str_eq(l.v[1], "tcp://b:2");
    cr_assert_str_eq(l.v[2], "tcp://c:3");

    coord_opt_list_t full = {0};
    const coord_opt_t fo[] = {{"node", 0, NULL, COORD_OPT_LIST, &full, "URL", "node"}};
    char *many[2 * COORD_OPT_LIST_MAX + 2];
    for (int i = 0; i < COORD_OPT_LIST_MAX + 1; i++) many[2 * i] = "--node", many[2 * i + 1] = "x";
    cr_assert_eq(coord_opts_parse(fo, 1, "test", 2 * COORD_OPT_LIST_MAX + 2, many, 0), -EINVAL);
    cr_assert_eq(full.n, COORD_OPT_LIST_MAX);
}
