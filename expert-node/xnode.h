/* expert-node — serves the routed experts of a shard to coordinators over the wire protocol
 * (wire/proto/moemesh.proto): answers HELLO, takes an ASSIGN, loads the assigned experts (views
 * into a local GGUF, a verified on-disk cache, or SHARD_CHUNKs streamed by the coordinator) and
 * computes FORWARDs with kern_moe_ffn. One socket thread owns the ROUTER and never computes; one
 * compute thread (with its kern_pool) runs the experts. main.c parses the command line.
 */
#ifndef MOEMESH_XNODE_H
#define MOEMESH_XNODE_H

#include <stdbool.h>
#include <stdint.h>

#include "wire/wire.h"

typedef struct {
    const char *listen;    /* endpoint to bind, e.g. "tcp://127.0.0.1:*"; borrowed for new */
    const char *model;     /* GGUF whose experts are served without a transfer; NULL: none */
    uint64_t mem_limit;    /* bytes of expert weights this node may hold; 0: physical RAM */
    int threads;           /* compute threads (kern_pool size), >= 1 */
    const char *cache_dir; /* verified slices kept in DIR/<fingerprint>/; NULL: no cache */
    const char *curve_dir; /* CURVE server with DIR/node.key, clients DIR/coordinator*.pub */
    const char *name;      /* our name in WELCOME and in log lines; NULL: "xnode" */
    int max_queue;         /* FORWARDs waiting for the compute thread; more get ERROR -EBUSY */
    uint64_t max_work_bytes; /* kern_moe_ffn scratch of one FORWARD; more get ERROR */
    wire_limits_t limits;  /* what a received message may hold */
} xnode_config_t;

/* Listens nowhere yet (listen NULL), no model, physical RAM, 1 thread, no cache, no CURVE,
 * queue of 64, 1 GiB of scratch, wire_limits_default. */
xnode_config_t xnode_config_default(void);

typedef struct xnode xnode_t;

/* Loads the model (when given), scans the cache, sets up CURVE and binds. The node is ready to
 * run; nothing is served until xnode_run. NULL on failure, reason logged. */
xnode_t *xnode_new(const xnode_config_t *cfg);
/* The endpoint actually bound ("tcp://127.0.0.1:41234" for a "*" port). Valid until free. */
const char *xnode_endpoint(const xnode_t *xn);
/* Serves on the calling thread until xnode_stop; the socket, made by xnode_new, is used only by
 * this thread from then on. Returns 0, or a negated errno when the loop could not go on. Call
 * once per node. */
int xnode_run(xnode_t *xn);
/* Asks xnode_run to return soon. Any thread, and async-signal-safe (one write(2) to an
 * eventfd), so a SIGTERM handler may call it. */
void xnode_stop(xnode_t *xn);
/* Frees the node after xnode_run has returned (or when it never ran). NULL-safe. */
void xnode_free(xnode_t *xn);

/* Events since start; any thread may read them while the node runs. */
typedef struct {
    uint64_t requests;   /* FORWARDs computed */
    uint64_t tokens;     /* their tokens */
    uint64_t errors;     /* ERROR replies sent (any cause) */
    uint64_t malformed;  /* messages refused by the wire layer (bad frames, limits, version) */
    uint64_t chunks;     /* SHARD_CHUNKs accepted */
    uint64_t bytes_in, bytes_out; /* tensor frame bytes received and sent */
    uint64_t compute_us, queue_us;
    uint64_t heartbeats; /* HEARTBEATs sent */
    uint64_t peers_dropped; /* coordinators forgotten after a send found them gone */
    uint64_t ready;      /* READY messages sent */
} xnode_counters_t;

void xnode_counters(const xnode_t *xn, xnode_counters_t *out);

/* ---- command line (expert-node/cli.c) ---- */
/* Fills cfg from argv (argv[0] the program name) and the MOEMESH_* environment, the command
 * line winning. String fields point into argv or the environment. Returns true when the node
 * should start; false with *status the exit status otherwise: 0 after --help (usage on
 * stdout) or --print-config (the effective options on stdout), 2 for a usage error (reason on
 * stderr). LWS_WORKER_INDEX names the node expert-<i> unless --name does; index 0 is refused
 * (the LeaderWorkerSet leader runs the coordinator). The log level (--log-level /
 * MOEMESH_LOG_LEVEL) is applied at once. */
bool xnode_cli_parse(int argc, char **argv, xnode_config_t *cfg, int *status);
/* `moemesh-expert keygen DIR`: creates DIR/node.{pub,key} and DIR/coordinator.{pub,key} where
 * absent. Returns the exit status (0, or 1 with the reason on stderr). */
int xnode_cli_keygen(int argc, char **argv); /* argv[0] is "keygen" */

#endif
