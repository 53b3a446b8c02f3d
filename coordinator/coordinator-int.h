/* Names shared between files of coordinator/ and its tests, not part of the public API
 * (STYLE.md: folder-internal names carry the coord__ prefix). */
#ifndef MOEMESH_COORDINATOR_INT_H
#define MOEMESH_COORDINATOR_INT_H

#include <stdint.h>

#include "coordinator/coord.h"

/* ---- speculative drafts (coordinator/spec.c) ---- */

/* Longest n-gram the prompt-lookup draft tries to match (then shorter ones, down to 1). */
#define COORD__DRAFT_NGRAM_MAX 3

/* Prompt lookup: finds the most recent earlier occurrence of the last n ids of ctx (n_ctx ids),
 * for n from max_ngram down to 1, and writes the ids that followed it into out (at most
 * n_draft). When the continuation runs into the end of ctx, it carries on with what was just
 * drafted, so a text repeating with a short period drafts whole periods. Returns the number
 * of ids drafted: 0 when nothing recurs. */
int coord__draft_lookup(const int32_t *ctx, int n_ctx, int max_ngram, int n_draft, int32_t *out);

/* ---- cluster flags (coordinator/flags.c): the expert-node options of run, eval and serve ---- */

/* The flags' values; strings and lists borrow argv/env. */
typedef struct {
    coord_opt_list_t node;   /* --expert-node tcp://HOST:PORT (repeatable, or a comma list) */
    coord_opt_list_t nodes;  /* --expert-nodes HOST:PORT,HOST:PORT */
    coord_opt_list_t dns;    /* --expert-dns NAME:PORT: every address NAME resolves to */
    const char *wire_type;   /* f32 | f16 | bf16 | q8_0 */
    int node_timeout;        /* ms */
    int replicas;            /* copies of every expert, each on its own node */
    const char *curve_keys;  /* directory, or NULL */
    int expert_port;         /* wire port of the nodes a LeaderWorkerSet group names (LWS_*) */
    const char *load_profile, *record_load, *node_cap; /* load-aware placement; NULL: none */
    bool balance;
    float rebalance_every, rebalance_above; /* live re-placement (coord_cluster_config_t) */
    int rebalance_step;                     /* KiB */
} coord__cluster_flags_t;

/* The coord_opt_t entries of those flags, for an options table. */
#define COORD__CLUSTER_OPTS(cf)                                                                    \
    {"expert-node", 0, "MOEMESH_EXPERT_NODE", COORD_OPT_LIST, &(cf).node, "URL",                   \
     "expert node tcp://HOST:PORT (repeatable; commas allowed)"},                                  \
    {"expert-nodes", 0, "MOEMESH_EXPERT_NODES", COORD_OPT_LIST, &(cf).nodes, "LIST",               \
     "expert nodes HOST:PORT,HOST:PORT"},                                                          \
    {"expert-dns", 0, "MOEMESH_EXPERT_DNS", COORD_OPT_LIST, &(cf).dns, "NAME:PORT",                \
     "one expert node per address NAME resolves to"},                                              \
    {"wire-type", 0, "MOEMESH_WIRE_TYPE", COORD_OPT_STR, &(cf).wire_type, "T",                     \
     "activations on the wire: f32, f16, bf16, q8_0 (default f32)"},                               \
    {"node-timeout", 0, "MOEMESH_NODE_TIMEOUT", COORD_OPT_INT, &(cf).node_timeout, "MS",           \
     "deadline for an expert node's answer (default 10000)"},                                      \
    {"replicas", 0, "MOEMESH_REPLICAS", COORD_OPT_INT, &(cf).replicas, "R",                        \
     "copies of every expert, each on its own node (default 1; at most the node count)"},          \
    {"curve-keys", 0, "MOEMESH_CURVE_KEYS", COORD_OPT_STR, &(cf).curve_keys, "DIR",                \
     "CURVE keys (coordinator.key/.pub, node.pub) for encrypted node links"},                      \
    {"expert-port", 0, "MOEMESH_EXPERT_PORT", COORD_OPT_INT, &(cf).expert_port, "PORT",            \
     "wire port of the workers of a LeaderWorkerSet group (LWS_*; default 5555)"},                 \
    {"load-profile", 0, "MOEMESH_LOAD_PROFILE", COORD_OPT_STR, &(cf).load_profile, "FILE",         \
     "place experts by this load profile (--record-load): hot ones replicated"},                   \
    {"record-load", 0, "MOEMESH_RECORD_LOAD", COORD_OPT_STR, &(cf).record_load, "FILE",            \
     "write the expert load profile of this run at exit"},                                         \
    {"node-cap", 0, "MOEMESH_NODE_CAP", COORD_OPT_STR, &(cf).node_cap, "C,C,..",                   \
     "expert nodes' capacities (pairs/s; default: measured by the nodes)"},                        \
    {"balance", 0, "MOEMESH_BALANCE", COORD_OPT_BOOL, &(cf).balance, NULL,                         \
     "capacity- and load-aware placement (implied by --load-profile, --node-cap)"},                \
    {"rebalance-every", 0, "MOEMESH_REBALANCE_EVERY", COORD_OPT_FLOAT, &(cf).rebalance_every, "S", \
     "check the recent expert load every S seconds and re-place experts live (0: off)"},           \
    {"rebalance-above", 0, "MOEMESH_REBALANCE_ABOVE", COORD_OPT_FLOAT, &(cf).rebalance_above, "F", \
     "re-place only above this imbalance factor (default 1.15)"},                                  \
    {"rebalance-step", 0, "MOEMESH_REBALANCE_STEP", COORD_OPT_INT, &(cf).rebalance_step, "KB",     \
     "shard data a live re-placement sends between two forward passes (default 1024)"}

/* wire_type f32, node_timeout 10000 ms, one replica, no nodes, expert_port 5555. */
coord__cluster_flags_t coord__cluster_flags_default(void);

/* Node endpoints, owned "tcp://HOST:PORT" strings. */
typedef struct {
    char **v;
    int n;
} coord__endpoints_t;
void coord__endpoints_free(coord__endpoints_t *e); /* frees the strings; e is empty after */

/* Checks the flags (wire type, node timeout, replicas) and collects every endpoint they name
 * into eps (empty on entry): commas split lists, "tcp://" is added where missing, --expert-dns
 * names resolve to one node per address, duplicates are dropped, flag order is kept. Replicas
 * beyond the node count are refused. When no flag names a node and the process is the leader
 * of a LeaderWorkerSet group (LWS_LEADER_ADDRESS, LWS_GROUP_SIZE, LWS_WORKER_INDEX 0 or
 * unset), the nodes are its workers 1..size-1 by their DNS names, on expert_port; a
 * LWS_WORKER_INDEX other than 0 is refused (workers run moemesh-expert). Returns 0, or -EINVAL
 * after a message on stderr. */
int coord__cluster_flags_check(const coord__cluster_flags_t *cf, coord__endpoints_t *eps);

#endif
