/* See tsrv.h. */
#include "tsrv.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <unistd.h>

#include "tproc.h"
#include "wire/wire.h"

static void run_loop(void *arg)
{
    tsrv_t *x = arg;
    uv_run(&x->loop, UV_RUN_DEFAULT);
}

coord_server_params_t tsrv_params(const char *model)
{
    coord_server_params_t p = coord_server_params_default();
    p.model = model;
    p.port = 0;
    p.n_slots = 2;
    p.n_threads = 1;
    return p;
}

void tsrv_start(tsrv_t *x, const coord_server_params_t *p, double ready_s, bool only_503)
{
    cr_assert_eq(uv_loop_init(&x->loop), 0);
    x->s = coord_server_new(&x->loop, p);
    cr_assert_not_null(x->s);
    x->port = coord_server_port(x->s);
    cr_assert_gt(x->port, 0);
    cr_assert_eq(uv_thread_create(&x->th, run_loop, x), 0);
    double t0 = wire_now();
    for (;;) {
        int st = tproc_health(x->port, NULL);
        if (st == 200) break;
        cr_assert(!only_503 || st == 503, "health said %d while loading", st);
        cr_assert_lt(wire_now() - t0, ready_s, "model not ready within %.0f s", ready_s);
        usleep(20000);
    }
}

void tsrv_stop(tsrv_t *x)
{
    coord_server_stop(x->s);
    cr_assert_eq(uv_thread_join(&x->th), 0);
    cr_assert_eq(coord_server_free(x->s), 0);
    cr_assert_eq(uv_loop_close(&x->loop), 0);
}
