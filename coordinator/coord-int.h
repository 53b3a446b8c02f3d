/* coordinator internals shared between cluster.c (start-up, counters) and remote.c (the
 * FORWARD/RESULT path over the same sockets). Not for use outside coordinator/.
 */
#ifndef MOEMESH_COORD_INT_H
#define MOEMESH_COORD_INT_H

#include "coordinator/coord.h"

#include <pthread.h>

typedef struct {
    char *endpoint;           /* owned copy, "tcp://host:port" */
    char name[64];            /* from WELCOME */
    void *sock;               /* DEALER; touched only by the cluster's thread */
    uint64_t mem_bytes;       /* from WELCOME; 0 when the node did not say */
    uint32_t cores, dtypes;
    coord_node_stats_t st;    /* endpoint and name point into this struct; written by the
                                 cluster's thread, after start-up under the cluster's st_mu */
    int64_t ready;            /* start-up: n_experts of the node's READY, -1 until it came */
    double last_heard;        /* wire_now() of its last HEARTBEAT or RESULT (liveness) */
    double probe_at;          /* wire_now() of the last HELLO sent to it while down */
    float capacity;           /* WELCOME's reference-expert pairs/s; 0: not measured */
    double cap;               /* pairs/s for this model's experts place() weighed; 0: none */
} coord__node_t;

struct coord_cluster {
    coord_cluster_config_t cfg; /* endpoints and strings not kept: see the node copies */
    const model_t *m;
    void *ctx;                /* ZeroMQ context, owned */
    wire_limits_t lim;
    int n_nodes;
    coord__node_t *nodes;     /* (n_nodes) */
    int n_layers, n_expert;   /* of the model; owner is (n_layers, n_expert) */
    int replicas;             /* copies of every pair, each on its own node */
    int *owner;               /* primary node of each pair (owners[.., 0]), -1 for layers
                                 without routed experts */
    int *owners;              /* (n_layers, n_expert, replicas) nodes holding each pair, primary
                                 first; -1 for layers without routed experts */
    uint64_t next_request;    /* request ids start at 1; 0 means "not about a request" */
    pthread_mutex_t st_mu;    /* guards every node's st against readers on other threads */
    bool started;             /* start-up is over: stray messages are no longer fatal */
    int rejoining;            /* node being brought back by coord_cluster_tend, -1 none */
    char fp[64];              /* model_fingerprint of m */
    int busy;                 /* requests the remote experts have in flight: while > 0 their
                                 answers wait on the sockets, so coord_cluster_tend keeps off */
    struct coord__replace *replace; /* live re-placement (replace.c), owned; NULL until started */
};

/* Counter updates from the FORWARD/RESULT path (cluster's thread), under st_mu. */
void coord__node_sent(coord_cluster_t *c, int node, int n_tok, uint64_t bytes);
void coord__node_result(coord_cluster_t *c, int node, double rtt, uint64_t bytes);
void coord__node_stale(coord_cluster_t *c, int node);
/* Node failed a call: counts an error and marks it down with a reason (printf-style). */
__attribute__((format(printf, 3, 4))) void coord__node_failed(coord_cluster_t *c, int node,
                                                             const char *fmt, ...);

/* Sets the send timeout of node's socket to ms (>= 0) so one send never blocks past a
 * deadline; returns 0 or -errno. */
int coord__node_set_sndtimeo(coord__node_t *n, int ms);
/* Milliseconds left until deadline (seconds on wire_now's clock), at least 0. */
int coord__ms_left(double deadline);

/* The capacities a load-aware placement weighs (pairs/s per node) into cap (n_nodes): --node-cap
 * when given, else the WELCOME measurements scaled to the model's experts (all 1 when a node
 * did not measure). 0 or -EINVAL (logged). */
int coord__cluster_capacities(coord_cluster_t *c, double *cap);
/* Sends node i an ASSIGN of the k pairs (ls[j], es[j]) of this model, holding bytes of weights,
 * waiting at most ms for room in its queue. 0 or an error (logged). */
int coord__assign_send(coord_cluster_t *c, int i, const uint32_t *ls, const uint32_t *es,
                       uint32_t k, uint64_t bytes, int ms);

/* ---- live re-placement (coordinator/replace.c); cluster's thread unless said otherwise ---- */
typedef struct coord__replace coord__replace_t;
/* After start-up: the re-placement state of c. NULL when the load window cannot be sized
 * (logged; re-placement is then off). */
coord__replace_t *coord__replace_new(coord_cluster_t *c);
void coord__replace_free(coord__replace_t *r); /* NULL-safe */
/* Counts the routed tokens of one call (the load the plans weigh). */
void coord__replace_count(coord_cluster_t *c, int layer, int n_tok, int k, const int32_t *ids);
/* A message from node that a re-placement may be waiting for (READY, ERROR without request):
 * true when taken (the caller frees it), false when it is the caller's. */
bool coord__replace_take(coord_cluster_t *c, int node, const wire_msg_t *m);
/* One step of a pending or running move, only while nothing is in flight (c->busy == 0):
 * samples the load window, runs the periodic check, streams at most rebalance_step_kb (idle:
 * 32 times that) of shard data, swaps and releases. */
void coord__replace_step(coord_cluster_t *c, bool idle);

/* Which (pair, node) copies a move adds and releases, and its waves: the changed layers in
 * order, as many per wave as fit every node's memory beside what it holds then (a wave's old
 * pairs are released before the next wave grows). */
typedef struct {
    int n_waves;
    int *wave;                /* (n_layers) wave of each layer, -1: its owners do not change */
    uint64_t *bytes_in;       /* (n_nodes) bytes each node receives */
    uint64_t bytes;           /* their sum */
    int adds, drops;          /* (pair, node) copies added and released */
} coord__replace_diff_t;
/* old and next: (L, E, R) owners tables (-1: no copy); pair_bytes (L, E); mem (N) bytes per
 * node (UINT64_MAX: no limit). 0 and *d (deinit it), or -ENOSPC when some layer does not fit
 * even alone, with the reason in why (cap bytes) and nothing to deinit. */
int coord__replace_diff(int L, int E, int R, int N, const int *old, const int *next,
                        const uint64_t *pair_bytes, const uint64_t *mem,
                        coord__replace_diff_t *d, char *why, size_t cap);
void coord__replace_diff_deinit(coord__replace_diff_t *d);

#endif
