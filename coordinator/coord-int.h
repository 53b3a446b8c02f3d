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

#endif
