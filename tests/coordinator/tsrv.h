/* The coordinator's HTTP server in-process, for the HTTP tests (http_test.c,
 * http_cluster_test.c, http_hostile_test.c): its libuv loop runs on a thread of the test, and
 * tsrv_stop stops the server, joins the thread and closes the loop. Failures are Criterion
 * assertions.
 */
#ifndef MOEMESH_TESTS_TSRV_H
#define MOEMESH_TESTS_TSRV_H

#include <stdbool.h>
#include <uv.h>

#include "coordinator/coord.h"

typedef struct {
    uv_loop_t loop;
    coord_server_t *s;
    uv_thread_t th;
    int port; /* the ephemeral port it listens on */
} tsrv_t;

/* The defaults with model, an ephemeral port, 2 slots and 1 thread: what the HTTP tests start
 * from. */
coord_server_params_t tsrv_params(const char *model);
/* Starts a server with p (its port 0 for an ephemeral one), then asks GET /health every 20 ms
 * until it says 200: fails after ready_s, and, when only_503, at any other answer before. */
void tsrv_start(tsrv_t *x, const coord_server_params_t *p, double ready_s, bool only_503);
/* Stops the server and frees everything tsrv_start made. */
void tsrv_stop(tsrv_t *x);

#endif
