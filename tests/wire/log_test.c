/* Tests for wire/log.c and wire/alloc.c: level names, and allocation helpers' contracts. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "wire/wire.h"

Test(wire_log, level_names_parse_and_bad_name_is_refused)
{
    cr_assert_eq(wire_log_set_level_name("debug"), 0);
    cr_assert_eq(wire__log_level, WIRE_LOG_DEBUG);
    cr_assert_eq(wire_log_set_level_name("loud"), -EINVAL);
    cr_assert_eq(wire__log_level, WIRE_LOG_DEBUG, "a bad name leaves the level unchanged");
}

Test(wire_alloc, strndup_terminates_and_aligned_is_aligned)
{
    char *s = xstrndup("abcdef", 3);
    cr_assert_str_eq(s, "abc");
    free(s);
    void *p = xmalloc_aligned(64, 100);
    cr_assert_eq((uintptr_t)p % 64, 0);
    free(p);
}
