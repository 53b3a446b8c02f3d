/* coordinator — the process users talk to: embeddings, attention with its KV cache, the router,
 * shared experts, output head and sampling run here; routed experts run locally or on expert
 * nodes. main.c parses the command line; everything else links into tests.
 */
#ifndef MOEMESH_COORD_H
#define MOEMESH_COORD_H

#include <stdbool.h>
#include <stdint.h>

#include <stdio.h>

#include "kernels/kern.h"
#include "model/model.h"
#include "wire/wire.h"

/* ---- sampling (coordinator/sample.c) ----
 * Turns one logit vector into a token id. Deterministic for a given seed and history. The
 * order follows llama.cpp's default chain: penalties, top-k, top-p, min-p, temperature, draw. */
typedef struct {
    float temperature;       /* <= 0: greedy (argmax, lowest id on ties) */
    int top_k;               /* <= 0: off */
    float top_p;             /* >= 1: off */
    float min_p;             /* <= 0: off */
    float repeat_penalty;    /* 1: off; divides positive logits of recent tokens, multiplies negative */
    float presence_penalty;  /* 0: off; subtracted once from logits of recent tokens */
    float frequency_penalty; /* 0: off; subtracted per occurrence */
    int penalty_last_n;      /* how many recent tokens the penalties look at; 0 none */
    uint64_t seed;
} coord_sampler_params_t;

coord_sampler_params_t coord_sampler_params_default(void);

typedef struct coord_sampler coord_sampler_t;
/* NULL-free: aborts only on OOM. n_vocab >= 1. */
coord_sampler_t *coord_sampler_new(const coord_sampler_params_t *p, int32_t n_vocab);
void coord_sampler_free(coord_sampler_t *s); /* NULL-safe */
/* Records a token of the sequence (prompt or generated) for the penalties. */
void coord_sampler_accept(coord_sampler_t *s, int32_t id);
/* Picks the next id from logits (n_vocab, not modified). */
int32_t coord_sampler_sample(coord_sampler_t *s, const float *logits);
/* Forgets the history and reseeds. */
void coord_sampler_reset(coord_sampler_t *s);

/* ---- timeline trace (coordinator/trace.c) ----
 * A Chrome/Perfetto trace-event file (JSON, open it in ui.perfetto.dev or chrome://tracing) of
 * what the coordinator's thread and each expert node did, per layer and micro-batch, so the
 * overlap of compute and communication can be seen. Lanes: the coordinator's compute, the
 * engine's decode steps, and per node its requests (FORWARD sent to RESULT received, on as many
 * lanes as there are requests in flight at once) and its compute (placed from the RESULT's
 * queue_us/compute_us, assuming the wire takes as long each way). Events on one lane never
 * overlap. One thread records (the one decoding); recording is a few stores, and every call
 * takes a NULL trace as "off". */
typedef struct coord_trace coord_trace_t;
/* Events kept at most (later ones are counted as dropped, and the file says so). */
#define COORD_TRACE_MAX_EVENTS (1 << 20)
/* Creates path (truncated) at once, so a bad path fails here; max_events caps the memory (0:
 * COORD_TRACE_MAX_EVENTS). NULL with a message when the file cannot be created. */
coord_trace_t *coord_trace_new(const char *path, int max_events);
/* Writes every event recorded so far to the file (replacing what an earlier write put there);
 * logs how many were dropped, if any. 0 or a negated errno (logged). NULL-safe (returns 0). */
int coord_trace_write(coord_trace_t *tr);
void coord_trace_free(coord_trace_t *tr); /* NULL-safe; does not write */
/* Lanes of the trace. */
typedef enum {
    COORD_TRACE_COORD = 0, /* the coordinator thread's work, and its waits */
    COORD_TRACE_STEP,      /* one event per coord_engine_decode */
    COORD_TRACE_REQUEST,   /* a node's request in flight, FORWARD sent to RESULT received */
    COORD_TRACE_REMOTE,    /* a node's compute, as its RESULT reports it */
} coord_trace_lane_t;
/* Records [t0, t1] (wire_now() seconds) named name on lane (node: the expert node, for the node
 * lanes; ignored otherwise), with layer, micro-batch and token count as arguments (-1: none).
 * name must outlive tr (a string literal). Events of the COORD and STEP lanes must come in time
 * order; REQUEST events go to the node's first request lane free at t0; a REMOTE event that
 * would start before the node's previous one ended starts at its end (the placement is an
 * estimate). Full: counts the event as dropped. */
void coord_trace_event(coord_trace_t *tr, coord_trace_lane_t lane, int node, const char *name,
                       double t0, double t1, int layer, int mb, int n_tok);
/* Names node's lanes in the file ("node 0 tcp://..."); copied. */
void coord_trace_node_name(coord_trace_t *tr, int node, const char *name);

/* ---- routed experts (coordinator/experts.c) ----
 * The one step the network implements: "compute these tokens with these experts and weights,
 * return the weighted sum". The local implementation groups tokens by expert and runs batched
 * kernels; the distributed one sends the same request to expert nodes.
 *
 * Micro-batches: an implementation may offer the step in two halves, submit (returns once the
 * work is under way) and collect (waits for it), for up to COORD_MICRO_BATCHES_MAX micro-batches
 * at once, so the caller computes something else while the experts work elsewhere. One that
 * does not (submit NULL) is used through coord_experts_submit/collect all the same: submit then
 * computes at once. */
typedef struct coord_experts coord_experts_t;
#define COORD_MICRO_BATCHES_MAX 8
/* Time spent on routed experts since creation, as the coordinator's thread saw it. */
typedef struct {
    uint64_t requests;  /* FORWARDs sent (0 for local experts) */
    double t_comm_s;    /* time with at least one request in flight (sent, not yet answered) */
    double t_wait_s;    /* time the caller was blocked in collect waiting for an answer */
} coord_experts_stats_t;
typedef struct {
    /* out (n_tok, n_embd) = sum over j < k of w[t*k+j] * expert ids[t*k+j] of layer applied to
     * x (n_tok, n_embd) row t, summed in j order. Returns 0 or a negative error. */
    int (*compute)(coord_experts_t *ex, int layer, int n_tok, int k, const float *x,
                   const int32_t *ids, const float *w, float *out);
    void (*free)(coord_experts_t *ex);
    /* Optional (NULL: nothing to do). Called about once a second by the thread that owns ex
     * while it has no work, so that a distributed implementation keeps reading its sockets
     * (node heartbeats) between requests. */
    void (*idle)(coord_experts_t *ex);
    /* Optional, both or neither: compute split in two, see coord_experts_submit/collect. */
    int (*submit)(coord_experts_t *ex, int layer, int mb, int n_tok, int k, const float *x,
                  const int32_t *ids, const float *w, float *out);
    int (*collect)(coord_experts_t *ex, int mb);
    /* Optional (NULL: all zero). */
    void (*stats)(const coord_experts_t *ex, coord_experts_stats_t *out);
} coord_experts_vt_t;
struct coord_experts {
    const coord_experts_vt_t *vt;
    coord_trace_t *trace; /* borrowed, NULL: no trace; set with coord_experts_set_trace */
};
/* All routed experts of m computed in this process, rows split over pool (borrowed, may be
 * NULL). max_tok bounds n_tok per call. m and pool must outlive the result. */
coord_experts_t *coord_experts_local_new(const model_t *m, kern_pool_t *pool, int max_tok);
void coord_experts_free(coord_experts_t *ex); /* NULL-safe */
/* Starts the compute step of micro-batch mb (0 .. COORD_MICRO_BATCHES_MAX-1, not already
 * submitted) with the arguments of compute: x, ids and w are read before it returns, out is
 * the experts' until coord_experts_collect(ex, mb) returns (and complete only then). Returns 0
 * or a negative error; after any error of submit or collect every micro-batch in flight is
 * abandoned (late answers are recognised and dropped) and the next submit starts clean. */
int coord_experts_submit(coord_experts_t *ex, int layer, int mb, int n_tok, int k,
                         const float *x, const int32_t *ids, const float *w, float *out);
/* Waits until micro-batch mb's out is complete. 0 or a negative error (see submit). */
int coord_experts_collect(coord_experts_t *ex, int mb);
/* True when submit returns before the work is done (remote experts): micro-batches can then
 * overlap the experts' work with the caller's. */
bool coord_experts_async(const coord_experts_t *ex);
void coord_experts_stats(const coord_experts_t *ex, coord_experts_stats_t *out);
/* Records sends, waits, receives and node compute in tr (borrowed, NULL: stop). */
void coord_experts_set_trace(coord_experts_t *ex, coord_trace_t *tr);

/* ---- expert cluster (coordinator/cluster.c) ----
 * The coordinator's side of the expert nodes: one DEALER per node, the start-up conversation
 * (HELLO/WELCOME, placement, ASSIGN, shard streaming, READY) and per-node counters. A cluster
 * is used by one thread only: the one that created it owns its sockets, and every call into it
 * (and into the remote experts over it) must come from that thread. */
typedef struct {
    int n_nodes;
    const char *const *endpoints; /* (n_nodes) "tcp://host:port"; borrowed for the call */
    const char *name;             /* our name in HELLO; NULL: "coord" */
    const char *curve_dir;        /* NULL: plain TCP; else CURVE client, keys as in README */
    wire_dtype_t wire_type;       /* activations and results on the wire */
    int replicas;                 /* copies of every routed expert, each on its own node,
                                     1..n_nodes (default 1) */
    int connect_ms;               /* HELLO to WELCOME of every node (default 10000) */
    int timeout_ms;               /* any later wait without progress, and each FORWARD (10000) */
    bool progress;                /* progress bar on stderr while streaming (only on a TTY) */
    /* Test hook, never set by the programs: the index (from 0, over the whole start-up) of one
     * SHARD_CHUNK sent with its first byte flipped, so a node's CRC-32C check can be seen to
     * fail start-up; -1 (the default) corrupts nothing. */
    int test_corrupt_chunk;
    /* Test hook: milliseconds to sleep after each node's last SHARD_CHUNK is queued, before
     * its socket is read again, so the node's READY is already waiting there (as when the
     * coordinator's thread is preempted at that point); 0 (the default) never sleeps. */
    int test_stall_ms;
    /* After start-up, a node silent this long (no HEARTBEAT, sent every second, nor RESULT) is
     * marked down (default 3000; 0: never by silence). */
    int heartbeat_ms;
    /* Load-aware placement (model_plan_new_load; replicas is then the most copies of a hot
     * expert, cold ones get one): on when balance is set or either of these is given.
     * load_profile: a coord_load_profile_write file for this model; NULL: even load.
     * node_cap: "C,C,..." (token, expert) pairs/s per node for this model's experts, one value
     * for all; NULL: the nodes' WELCOME capacities scaled to the expert shape (equal when a
     * node did not measure). */
    const char *load_profile;
    const char *node_cap;
    bool balance;
    /* Live re-placement (coordinator/replace.c): every rebalance_every_s seconds (0: never by
     * itself; coord_replace_request any time) the imbalance of the last minute's load is
     * checked, and above rebalance_above (default 1.15) a better placement is moved to while
     * serving, rebalance_step_kb KiB of shard data per step between forward passes (1024). */
    double rebalance_every_s;
    double rebalance_above;
    int rebalance_step_kb;
} coord_cluster_config_t;

/* Zero nodes, f32, one replica, 10 s deadlines, progress on, no test hooks. */
coord_cluster_config_t coord_cluster_config_default(void);

typedef struct coord_cluster coord_cluster_t;
/* Connects to every node, places m's routed experts over them (model_plan_new_r within each
 * node's memory, cfg->replicas copies of each on distinct nodes), assigns every node all the
 * pairs it holds, streams the shards a node lacks and waits until every node is READY. NULL
 * on failure, with one clear message naming the node (index and endpoint): not reachable in
 * time, other protocol version, refusal (the node's message), checksum failure; or replicas
 * outside 1..n_nodes. m is borrowed and must outlive the cluster (shard frames point into its
 * mapping). */
coord_cluster_t *coord_cluster_new(const coord_cluster_config_t *cfg, const model_t *m);
void coord_cluster_free(coord_cluster_t *c); /* NULL-safe; closes sockets, ends the context */
int coord_cluster_n_nodes(const coord_cluster_t *c);
/* Primary node of expert e of layer l — the one calls go to while it is up and not slow (else
 * the next copy, remote.c) — or -1 when layer l has no routed experts / out of range. */
int coord_cluster_owner(const coord_cluster_t *c, int layer, int expert);
/* Copies of every expert (the configured replicas). */
int coord_cluster_replicas(const coord_cluster_t *c);
/* The coord_cluster_replicas(c) distinct nodes holding expert e of layer l, primary first, or
 * NULL when layer l has no routed experts / out of range. With load-aware placement
 * (load_profile, node_cap, balance) a cold expert may have fewer copies: the slots after its
 * last copy are -1. Borrowed; valid until
 * coord_cluster_free. A live re-placement (coord_replace_request) changes the contents between
 * forward passes, on the cluster's thread; other threads copy them with coord_replace_owners. */
const int *coord_cluster_owners(const coord_cluster_t *c, int layer, int expert);

/* Liveness and rejoining after start-up; cluster's thread. Does nothing while the remote
 * experts have requests in flight (their answers wait on the sockets): the remote experts
 * call it at the start of a call with nothing out, and their idle hook. Reads every
 * node's socket without blocking: HEARTBEATs refresh a node's liveness, late answers are
 * counted stale. A node silent for heartbeat_ms is marked down. A down node gets a HELLO about
 * once a second; when it answers (restarted, replaced on the same address, or back from a
 * stall) it is given its pairs again — ASSIGN, SHARD_CHUNKs for what it lacks (nothing when
 * it kept them for this file), READY — and is up again. That blocks this thread while it
 * streams, bounded by timeout_ms without progress; a failure leaves the node down for the
 * next try. */
void coord_cluster_tend(coord_cluster_t *c);
/* True when node i is marked down. Any thread. */
bool coord_cluster_node_down(const coord_cluster_t *c, int node);
/* Routed experts that cannot be computed now because every node holding a copy is down.
 * Writes a one-line description naming the down nodes and the experts ("layer L: e,e,..",
 * cut short with "..." to fit cap) into buf (cap > 0) and returns how many pairs are
 * missing; 0 (buf "") when none. Any thread. */
int coord_cluster_missing(const coord_cluster_t *c, char *buf, size_t cap);
/* Wraps the remote experts inner (taking it over) so that every call first runs
 * coord_cluster_tend and then fails at once with -EHOSTUNREACH, before anything is sent, when
 * every copy of a selected expert is down (instead of waiting for a send or result deadline);
 * with a live copy the remote experts route to it (failover, remote.c); idle
 * runs coord_cluster_tend, then inner's idle. c is borrowed and must outlive the result. */
coord_experts_t *coord_cluster_guard_new(coord_cluster_t *c, coord_experts_t *inner);

/* Live re-placement (coordinator/replace.c): expert pairs move between nodes while they serve,
 * make-before-break (new pairs streamed and READY before the owners table swaps between forward
 * passes; released after), see the file's top comment. */
typedef struct {
    bool started;            /* a move was accepted and starts at the next step */
    double before, after;    /* imbalance of the current placement and of the new one over the
                                last minute's load: step time over a perfect split's (1 = even) */
    uint64_t bytes;          /* shard bytes to stream */
    int adds, drops, waves;  /* (pair, node) copies added and released; waves of layers */
    char reason[200];        /* why it starts or does not */
} coord_replace_plan_t;
/* Plans a move to the load-aware placement for the last minute's load. Any thread. 0 with *out
 * saying whether it starts (only when it lowers the imbalance by 1 %, unless force: then
 * whenever it differs from the current one) and why, or -EBUSY while a move is pending or
 * running. */
int coord_replace_request(const coord_cluster_t *c, bool force, coord_replace_plan_t *out);
typedef struct {
    uint64_t started, finished, aborted; /* moves */
    uint64_t bytes;          /* shard bytes streamed by moves */
    double last_before, last_after; /* imbalance planned by the last move started */
    bool running;
} coord_replace_stats_t;
void coord_replace_stats(const coord_cluster_t *c, coord_replace_stats_t *out); /* any thread */
/* Copies the owners table (n_layers, n_expert, replicas), as coord_cluster_owners gives it, into
 * out at one moment (a move may swap it). Any thread. */
void coord_replace_owners(const coord_cluster_t *c, int *out);

/* Upper bounds (seconds) of the per-node RTT histogram's buckets. */
#define COORD_RTT_BUCKETS 14
extern const double coord_rtt_bounds[COORD_RTT_BUCKETS];

/* What one node did; counters cover FORWARD/RESULT traffic since start-up. Bytes are the
 * payload of the frames (tensors plus the per-token arrays of the header). */
typedef struct {
    const char *endpoint;     /* borrowed from the cluster, valid until coord_cluster_free */
    const char *name;         /* the node's name from WELCOME */
    int experts;              /* (layer, expert) pairs it holds, replicas included */
    uint64_t expert_bytes;    /* weight bytes of those */
    uint64_t shard_bytes;     /* weight bytes streamed to it at start-up */
    uint64_t requests, tokens;
    double rtt_sum_s, rtt_max_s; /* FORWARD sent to RESULT received */
    uint64_t bytes_sent, bytes_recv;
    uint64_t stale;           /* results or errors for requests already given up */
    uint64_t errors;          /* calls this node failed: ERROR, no answer in time, send or
                                 decode failure */
    uint64_t results;         /* RESULTs taken: the RTT observations */
    uint64_t rtt_bucket[COORD_RTT_BUCKETS]; /* RTTs <= coord_rtt_bounds[i] (not cumulative);
                                               larger ones count only in requests */
    /* Replicas (remote.c). failovers: pairs sent to another copy because this node was down
     * (unanswered by it when it failed mid-call, or, as their primary, routed around it while
     * down); reroutes: pairs it is primary for sent to another copy because it was slow.
     * Whether it is judged slow now, and the recent RTT (median of the last 8, seconds) behind that. */
    uint64_t failovers, reroutes;
    bool slow;
    double rtt_recent_s;
    /* Health: true from a failed call to this node until its next RESULT; failure says what
     * went wrong ("" while healthy). */
    bool down;
    char failure[96];
} coord_node_stats_t;

/* The node's counters. Any thread: the cluster's thread writes them under a mutex, and this
 * copies them under the same mutex, so a reader sees one consistent moment. */
void coord_cluster_node_stats(const coord_cluster_t *c, int node, coord_node_stats_t *out);
/* Every node's stats (at most cap of them) into out; returns the node count. Any thread. */
int coord_cluster_snapshot(const coord_cluster_t *c, coord_node_stats_t *out, int cap);
/* Writes one line per node (endpoint, experts, requests, mean/max RTT, bytes each way, bytes
 * per token over n_tokens tokens the engine processed) to f. */
void coord_cluster_print_summary(const coord_cluster_t *c, FILE *f, int64_t n_tokens);

/* ---- remote routed experts (coordinator/remote.c) ----
 * coord_experts_t over a cluster, asynchronous: submit sends one FORWARD per node that holds an
 * expert selected by some token of the micro-batch and returns; ZeroMQ's I/O thread moves the
 * bytes while the caller computes. collect takes RESULTs in whatever order they arrive (of any
 * micro-batch) into per-node buffers, and adds the nodes' partial sums in ascending node order,
 * so the result does not depend on arrival order. Each FORWARD's deadline is the cluster's
 * timeout_ms from its send; at most a fixed number of requests are in flight per node (submit
 * waits for answers beyond that). A node that answers ERROR or misses the deadline fails the
 * call with a message naming it; late results of a failed call are recognised by request id and
 * dropped. c is borrowed and must outlive the result; max_tok bounds n_tok per micro-batch. */
coord_experts_t *coord_experts_remote_new(coord_cluster_t *c, int max_tok);

/* ---- engine (coordinator/engine.c) ----
 * The forward pass of one model over a batch of tokens from one or more sequences. Each
 * sequence owns a slot of the KV cache; a token carries its slot and position. Tokens of one
 * slot in a batch must have increasing, contiguous positions following what the slot holds.
 *
 * Micro-batches: a batch may be cut into consecutive runs of tokens that go through the layers
 * as a pipeline — while one micro-batch's routed experts are out (remote experts), the engine
 * computes attention, router and shared experts of the next. A run never waits for a later one,
 * so the KV rows a token attends to are always written first; the logits are those of the
 * unsplit batch up to float summation order (the matrix products see fewer rows). */
typedef struct {
    int n_ctx;    /* positions per slot (0: the model's training context, capped at 4096) */
    int n_slots;  /* concurrent sequences */
    int n_batch;  /* most tokens per decode call */
    bool kv_f16;  /* store K and V as f16 (default f32) */
    int n_micro;  /* micro-batches per decode: 1..COORD_MICRO_BATCHES_MAX, or 0 (the default)
                     to choose per batch: 1 with local experts or a small batch, more for larger
                     batches with remote experts. Never more than the batch's tokens. */
    coord_trace_t *trace; /* borrowed, NULL: no trace */
} coord_engine_params_t;

/* What the engine did since creation. */
typedef struct {
    uint64_t decodes, tokens;
    uint64_t micro_batches; /* summed over decodes */
    double t_decode_s;      /* wall time inside coord_engine_decode */
} coord_engine_stats_t;

coord_engine_params_t coord_engine_params_default(void);

typedef struct {
    int n;
    const int32_t *tok;  /* (n) token ids */
    const int32_t *pos;  /* (n) positions within their slot */
    const int32_t *slot; /* (n) KV slots */
    const bool *want;    /* (n) which tokens produce logits; NULL: only the last */
} coord_batch_t;

typedef struct coord_engine coord_engine_t;
/* NULL (reason logged) when the parameters do not fit the model. m, ex and pool are borrowed
 * and must outlive the engine. */
coord_engine_t *coord_engine_new(const model_t *m, coord_experts_t *ex, kern_pool_t *pool,
                                 const coord_engine_params_t *p);
void coord_engine_free(coord_engine_t *e); /* NULL-safe */
const coord_engine_params_t *coord_engine_params(const coord_engine_t *e);
/* Runs the batch; logits (n_want, n_vocab) receives one row per wanted token, in batch order.
 * Returns 0, -EINVAL for a malformed batch (bad id, slot, position or size; nothing is
 * changed), or the experts' error. */
int coord_engine_decode(coord_engine_t *e, const coord_batch_t *b, float *logits);
/* Lets the routed experts do their between-requests housekeeping (coord_experts_vt_t.idle).
 * Call only from the thread that runs coord_engine_decode. */
void coord_engine_idle(coord_engine_t *e);
/* Forgets everything slot holds (positions restart at 0). */
void coord_engine_clear_slot(coord_engine_t *e, int slot);
/* Number of positions slot holds. */
int coord_engine_slot_len(const coord_engine_t *e, int slot);
/* Tokens the router has sent to each (layer, expert) since start-up, layer-major into out
 * (at most cap values); returns n_layer * n_expert (0 for a dense model). Any thread: relaxed
 * atomic reads, so values are each exact but not one consistent moment. */
int coord_engine_expert_tokens(const coord_engine_t *e, uint64_t *out, int cap);
/* The counters above. Call from the decoding thread (or when it is not decoding). */
void coord_engine_stats(const coord_engine_t *e, coord_engine_stats_t *out);
/* Micro-batches a batch of n tokens is cut into with the engine's n_micro (0: adaptive). */
int coord_engine_micro_batches(const coord_engine_t *e, int n);
/* Forgets positions len and beyond of slot (no-op when it holds fewer): the next token of the
 * slot goes at position len. Used to roll back rejected speculative tokens. */
void coord_engine_truncate_slot(coord_engine_t *e, int slot, int len);

/* ---- command-line options (coordinator/opts.c) ----
 * Every flag has a MOEMESH_* environment twin; the command line wins. */
typedef enum {
    COORD_OPT_STR,
    COORD_OPT_INT,
    COORD_OPT_FLOAT,
    COORD_OPT_BOOL,
    COORD_OPT_LIST /* repeatable: every occurrence (environment first) is appended */
} coord_opt_kind_t;
#define COORD_OPT_LIST_MAX 64
typedef struct {
    const char *v[COORD_OPT_LIST_MAX]; /* borrowed argv/env strings, in order */
    int n;
} coord_opt_list_t;
typedef struct {
    const char *name;       /* long name without dashes: "temp" */
    char short_name;        /* 'm', or 0 */
    const char *env;        /* "MOEMESH_TEMP" */
    coord_opt_kind_t kind;
    void *dst;              /* char ** (borrowed argv/env string), int *, float *, bool *,
                               coord_opt_list_t * */
    const char *arg;        /* argument name for help ("N"), NULL for BOOL */
    const char *help;
} coord_opt_t;
/* Applies the environment, then argv[first..argc). Unknown flags, missing or malformed values
 * print a clear message to stderr and return -EINVAL. Returns 1 after printing help for -h, or
 * the effective options (name, value, source; tab-separated) for --print-config /
 * MOEMESH_PRINT_CONFIG=1, which refuses (-EINVAL) MOEMESH_* variables no option reads. */
int coord_opts_parse(const coord_opt_t *opts, int n_opts, const char *cmd, int argc, char **argv,
                     int first);
void coord_opts_usage(const coord_opt_t *opts, int n_opts, const char *cmd);

/* ---- commands (coordinator/cli.c): `run` and `eval`; each returns a process exit code ---- */
int coord_cmd_run(int argc, char **argv);
int coord_cmd_eval(int argc, char **argv);

/* ---- scheduler (coordinator/sched.c) ----
 * Continuous batching over a fixed number of sequence slots: a thread of its own runs the
 * engine step after step; each step decodes one token for every generating sequence and fills
 * the rest of the batch with chunks of pending prompts. Requests join and leave between steps;
 * a finished or cancelled sequence frees its slot at once. The queue is bounded: submit says at
 * once when it is full. Callbacks run on the scheduler thread and must not block (hand the data
 * to your own loop, e.g. with uv_async_send). */
typedef struct coord_sched coord_sched_t;

typedef struct {
    int n_slots;        /* concurrent sequences (-np); 0: the engine's */
    int n_batch;        /* tokens per step (--batch); 0: the engine's */
    int n_ctx;          /* positions per slot (prompt + generated); 0: the engine's */
    int max_queue;      /* requests waiting for a slot before submit says -EBUSY */
    int n_threads;      /* compute threads (the engine's pool; informational here) */
    int n_draft;        /* speculative tokens per step for greedy requests (--draft), drafted
                           from the sequence's own context (prompt lookup); 0: off */
} coord_sched_params_t;
coord_sched_params_t coord_sched_params_default(void);

typedef enum {
    COORD_FINISH_STOP = 0,  /* end-of-generation token */
    COORD_FINISH_LENGTH,    /* max_tokens or the slot's context reached */
    COORD_FINISH_CANCEL,    /* coord_sched_cancel, or the token callback returned false */
    COORD_FINISH_ERROR,     /* the forward pass failed (e.g. an expert node is gone) */
} coord_finish_t;

/* One generated token. logprob of the chosen token and the n_top best alternatives (sorted,
 * highest first) are filled only when the request asked for logprobs. */
typedef struct {
    int32_t id;
    float logprob;
    int n_top;
    const int32_t *top_ids;   /* (n_top), valid during the callback */
    const float *top_logprobs;
} coord_token_t;

typedef struct {
    int n_prompt, n_generated;
    double t_queued, t_first_token, t_done; /* wire_now() seconds */
    int error;                              /* 0 or the negative error when FINISH_ERROR */
    char message[160];                      /* what failed, for the client */
} coord_gen_stats_t;

typedef struct {
    const int32_t *prompt;  /* (n_prompt) ids, copied by submit */
    int n_prompt;
    int max_tokens;         /* > 0 */
    coord_sampler_params_t sampling;
    int top_logprobs;       /* < 0: no logprobs; 0..20: chosen token and that many best */
    /* Called for each token; return false to stop (finish COORD_FINISH_CANCEL). */
    bool (*on_token)(void *ud, const coord_token_t *tok);
    /* Called exactly once at the end, after which the request is forgotten. */
    void (*on_done)(void *ud, coord_finish_t why, const coord_gen_stats_t *st);
    void *ud;
} coord_gen_req_t;

/* Starts the scheduler thread over an engine (borrowed, used by that thread only from now on;
 * its n_slots/n_batch/n_ctx bound the params). NULL on bad params, logged. */
coord_sched_t *coord_sched_new(coord_engine_t *eng, const model_t *m,
                               const coord_sched_params_t *p);
/* Cancels everything (on_done with FINISH_CANCEL), stops and joins the thread. NULL-safe. */
void coord_sched_free(coord_sched_t *s);
/* Queues a request; returns its id (> 0) or -EBUSY (queue full), -EINVAL (empty prompt,
 * prompt + max_tokens beyond the context, bad ids). Any thread. Callbacks start later. */
int64_t coord_sched_submit(coord_sched_t *s, const coord_gen_req_t *req);
/* Asks request id to stop; its on_done follows (FINISH_CANCEL) unless it already finished.
 * Any thread; unknown ids are ignored. */
void coord_sched_cancel(coord_sched_t *s, int64_t id);

typedef struct {
    int slots_busy, queued;
    uint64_t steps, tokens_prompt, tokens_generated;
    /* Speculation: gen_passes counts (sequence, step) pairs that produced tokens, so
     * tokens_generated / gen_passes is the tokens per forward pass of one sequence. */
    uint64_t gen_passes, draft_proposed, draft_accepted;
    /* KV cache: positions the slots hold and could hold (n_slots * n_ctx), as of the last
     * step. */
    int64_t kv_used, kv_capacity;
} coord_sched_stats_t;
void coord_sched_stats(const coord_sched_t *s, coord_sched_stats_t *out); /* any thread */

/* ---- server: the OpenAI-compatible HTTP API (coordinator/http.c, api.c, metrics.c, server.c)
 * Everything below runs on one libuv loop thread and never blocks it; the scheduler's callbacks
 * reach the loop through a mutex-protected queue and uv_async_send. Only coord_server_stop and
 * coord_api_* calls marked "any thread" may be made from elsewhere. */
struct uv_loop_s;

/* -- HTTP/1.1 connections (coordinator/http.c): llhttp parsing, keep-alive, pipelining (one
 * request at a time per connection, so responses leave in request order), limits, timeouts,
 * chunked responses. */
typedef struct coord_http coord_http_t;
typedef struct coord_http_req coord_http_req_t;
struct coord_http_req {
    const char *method;        /* "GET", "POST", ... */
    const char *path;          /* target without the query string, NUL-terminated */
    const char *body;          /* (body_len) bytes, NUL-terminated; "" when none */
    size_t body_len;
    const char *authorization; /* header values or NULL, NUL-terminated */
    const char *origin;
    /* Set by the handler when it answers later: called on the loop thread if the connection
     * dies before the response ends; req must not be used afterwards. */
    void (*on_abort)(coord_http_req_t *req);
    void *ud;
    struct coord__conn *conn;  /* private */
};
typedef struct {
    const char *host;          /* "127.0.0.1" */
    int port;                  /* 0: ephemeral */
    size_t max_header_bytes;   /* request line plus headers (431 beyond) */
    size_t max_body_bytes;     /* 413 beyond */
    int max_conns;             /* further connections get 503 and are closed */
    int timeout_ms;            /* time a client has to send a whole request (408 after) */
    const char *cors_origin;   /* Access-Control-Allow-Origin value, NULL: no CORS headers */
    struct coord_metrics *metrics; /* counts the requests http.c refuses itself; may be NULL */
    /* Called on the loop thread for every complete request; the handler answers with
     * coord_http_respond or the stream calls, now or later. */
    void (*on_request)(void *ud, coord_http_req_t *req);
    void *ud;
} coord_http_params_t;
coord_http_params_t coord_http_params_default(void);

/* Listens on host:port. NULL (reason logged) when the address cannot be bound. loop and the
 * strings in p are borrowed and must outlive the server. */
coord_http_t *coord_http_new(struct uv_loop_s *loop, const coord_http_params_t *p);
int coord_http_port(const coord_http_t *h);       /* the bound port */
int coord_http_busy(const coord_http_t *h);       /* connections with a request in progress */
/* Stops accepting and closes idle connections; busy ones close after their response. */
void coord_http_drain(coord_http_t *h);
/* Closes every connection (on_abort for requests in progress) and the listener; h is freed in
 * the last close callback. NULL-safe. */
void coord_http_free(coord_http_t *h);

/* Whole response with Content-Length. extra: more header lines, each ending "\r\n", or NULL.
 * Ends the request: req is invalid afterwards. */
void coord_http_respond(coord_http_req_t *req, int status, const char *content_type,
                        const char *body, size_t len, const char *extra);
/* A chunked response: begin once, write any number of times, end once (req invalid after). */
void coord_http_stream_begin(coord_http_req_t *req, int status, const char *content_type,
                             const char *extra);
void coord_http_stream_write(coord_http_req_t *req, const char *data, size_t len);
void coord_http_stream_end(coord_http_req_t *req);

/* -- metrics (coordinator/metrics.c): counters and histograms in Prometheus text format.
 * Loop thread only. */
typedef enum {
    COORD_HIST_TTFT = 0, /* time to first token, seconds */
    COORD_HIST_ITL,      /* inter-token latency, seconds */
    COORD_HIST_E2E,      /* end-to-end request latency, seconds */
    COORD_HIST_COUNT
} coord_hist_t;
typedef struct coord_metrics coord_metrics_t;
typedef struct {
    int queue_length, slots_busy, slots_total;
    bool ready;
    double kv_usage;                  /* KV positions used / capacity, 0..1 */
    /* Expert nodes (none: local experts): stats copied by coord_cluster_snapshot. */
    const coord_node_stats_t *nodes;  /* (n_nodes) */
    int n_nodes;
    /* Routed tokens per (layer, expert), layer-major; moe_layer[l] says whether layer l has
     * routed experts (only those are shown). NULL/0: none. */
    const uint64_t *expert_tokens;    /* (n_layers, n_expert) */
    const bool *moe_layer;            /* (n_layers) */
    int n_layers, n_expert;
    /* The placement per-layer imbalance is measured against (its owners, read again after a
     * live re-placement), and the re-placement counters; NULL: local experts, none shown. */
    const coord_cluster_t *cluster;
} coord_metrics_gauges_t;
coord_metrics_t *coord_metrics_new(void);
void coord_metrics_free(coord_metrics_t *m); /* NULL-safe */
void coord_metrics_request(coord_metrics_t *m, int status);
void coord_metrics_tokens(coord_metrics_t *m, int n_prompt, int n_generated);
void coord_metrics_observe(coord_metrics_t *m, coord_hist_t h, double seconds);
/* The exposition text; *out is malloc'd (caller frees), returns its length. Each call also
 * samples the expert counters into the metrics' rolling windows (coordinator/load.c): the
 * moemesh:expert_*_recent, layer_* and node_busy_ratio series cover the last 60 s as seen by
 * the scrapes (between the scrape nearest 60 s ago and this one). */
size_t coord_metrics_render(coord_metrics_t *m, const coord_metrics_gauges_t *g, char **out);

/* -- routes (coordinator/api.c): request validation, JSON responses, generation streams. */
typedef struct coord_api coord_api_t;
typedef struct {
    const char *model_id;     /* name shown in /v1/models and responses */
    const char *api_key;      /* NULL: no authentication */
    int max_prompt_tokens;    /* 400 beyond (besides the context) */
    int max_tokens;           /* largest max_tokens accepted; the default when absent */
} coord_api_params_t;
/* What the routes serve once the model is ready; all borrowed, outliving the api. */
typedef struct {
    const model_t *m;
    const model_tok_t *tok;
    coord_sched_t *sched;
    int n_ctx, n_slots;
    const coord_engine_t *eng;     /* for expert token counts; may be NULL */
    const coord_cluster_t *cluster; /* NULL: local experts */
} coord_api_stack_t;
/* NULL-free (OOM aborts). p's strings are borrowed. The api owns an async handle on loop. */
coord_api_t *coord_api_new(struct uv_loop_s *loop, const coord_api_params_t *p);
/* Makes the generation routes live (loop thread). */
void coord_api_set_stack(coord_api_t *a, const coord_api_stack_t *st);
/* Health reported while there is no stack: "loading" or an error text (copied). */
void coord_api_set_status(coord_api_t *a, const char *status);
/* The coord_http_params_t on_request handler; ud is the api. */
void coord_api_handle(void *ud, coord_http_req_t *req);
int coord_api_live(const coord_api_t *a); /* generations not yet finished */
coord_metrics_t *coord_api_metrics(coord_api_t *a); /* owned by the api */
/* Call after the scheduler is freed: finishes every generation still queued and closes the
 * handle; a is freed in its close callback. NULL-safe. */
void coord_api_free(coord_api_t *a);

/* -- the serve command (coordinator/server.c) */
typedef struct {
    const char *model, *alias, *host;
    int port, n_slots, n_ctx, n_batch, n_threads, max_queue;
    const char *api_key, *cors_origin;
    int max_body, max_header, max_conns, timeout_ms, grace_ms;
    int max_tokens, max_prompt;
    bool kv_f16;
    /* Expert parallelism: the routed experts run on these nodes ("tcp://HOST:PORT"), reached
     * through coord_cluster_new on the loader thread; none: local experts. */
    const char *const *expert_nodes; /* (n_expert_nodes), borrowed */
    int n_expert_nodes;
    const char *wire_type;           /* f32 | f16 | bf16 | q8_0 */
    int node_timeout_ms;
    const char *curve_keys;          /* directory, or NULL */
    int replicas;                    /* copies of every expert, each on its own node (1) */
    int n_draft;                     /* speculative tokens per step (--draft), 0: off */
    int n_micro;                     /* micro-batches per step (--micro-batches), 0: adaptive */
    const char *trace;               /* --trace FILE, written when the server is freed; NULL */
    const char *load_profile, *node_cap; /* coord_cluster_config_t's; NULL: none */
    bool balance;
    const char *record_load;         /* load profile written at shutdown; NULL: none */
    double rebalance_every, rebalance_above; /* coord_cluster_config_t's rebalance_* */
    int rebalance_step;
} coord_server_params_t;
coord_server_params_t coord_server_params_default(void);
typedef struct coord_server coord_server_t;
/* Listens at once and loads the model on a thread of its own (/health says 503 until ready).
 * NULL when the address cannot be bound (logged). p's strings are borrowed. */
coord_server_t *coord_server_new(struct uv_loop_s *loop, const coord_server_params_t *p);
int coord_server_port(const coord_server_t *s);
/* Any thread: stop accepting, let running requests finish within grace_ms, then cut them and
 * close every handle, so uv_run returns. */
void coord_server_stop(coord_server_t *s);
/* After uv_run has returned. Returns 0, or 1 when the model failed to load. NULL-safe. */
int coord_server_free(coord_server_t *s);
/* `moemesh-coordinator serve ...`; the process exit code. */
int coord_cmd_serve(int argc, char **argv);

/* ---- expert load (coordinator/load.c) ----
 * Rolling windows of routed tokens per (layer, expert) and of node busy time, built from
 * cumulative counters sampled now and then (every engine step, every /metrics scrape): a
 * window's count is the newest sample minus the one at the window's start, so the counters'
 * owners need no change. From them: per-layer imbalance against a placement, a warning in the
 * log when one expert takes over a layer (routing collapse), load profiles on disk for
 * `--load-profile`, and the chooser that splits a replicated expert's calls by queue depth.
 * One owner thread; nothing here locks. */
typedef enum {
    COORD_LOAD_RECENT_S = 0, /* the last window_s seconds (at sample resolution) */
    COORD_LOAD_RECENT_STEPS, /* the last window_steps samples */
    COORD_LOAD_ALL,          /* everything the counters saw */
    COORD_LOAD_WINDOW_COUNT
} coord_load_window_t;
typedef struct {
    int n_layers, n_expert;  /* shape of the token counters */
    int n_nodes;             /* busy-time counters (0: none) */
    double window_s;         /* seconds of COORD_LOAD_RECENT_S (default 60) */
    int window_steps;        /* samples of COORD_LOAD_RECENT_STEPS (default 64, 1..4096) */
    double collapse_share;   /* warn when one expert gets more than this share of a layer's
                                tokens over the time window (default 0.5; >= 1 never) */
    uint64_t collapse_min_tokens; /* ... and the layer saw at least this many (default 256) */
} coord_load_config_t;
coord_load_config_t coord_load_config_default(void);
typedef struct coord_load coord_load_t;
/* NULL (logged) for shapes out of range or windows too large for 256 MiB of snapshots. */
coord_load_t *coord_load_new(const coord_load_config_t *cfg);
void coord_load_free(coord_load_t *ld); /* NULL-safe */
/* Takes one sample at now_s (monotonic seconds): tokens (n_layers, n_expert) and busy_s
 * (n_nodes, or NULL) are cumulative counters, copied. A counter that went backwards (a
 * restart) starts the windows over. Logs a warning when a layer's routing collapses over the
 * time window, and a note when it recovers (once per change, not per sample). */
void coord_load_sample(coord_load_t *ld, double now_s, const uint64_t *tokens,
                       const double *busy_s);
/* Tokens per (layer, expert) over window w into out (n_layers * n_expert). Returns the seconds
 * the window covers (0 with fewer than two samples, when out is the newest counters for ALL
 * and zeros otherwise). */
double coord_load_tokens(const coord_load_t *ld, coord_load_window_t w, uint64_t *out);
/* Busy seconds per node over window w into out (n_nodes); returns the seconds covered. */
double coord_load_busy(const coord_load_t *ld, coord_load_window_t w, double *out);
int coord_load_samples(const coord_load_t *ld); /* samples taken */
/* The placement imbalance is measured against: owners (n_layers, n_expert, replicas) nodes or
 * -1 (copied), share the same shape (fraction of the expert's tokens per copy; NULL: all to
 * the first owner, as remote.c does today), node_cap (n_nodes) tokens/s or NULL (equal). */
void coord_load_set_placement(coord_load_t *ld, const int *owners, const double *share,
                              int replicas, const double *node_cap);
/* Imbalance factor of layer over window w: max node time / the time of a perfect split
 * (time = tokens / capacity; equal capacities: max node load / mean node load). 0 when the
 * layer saw no tokens or no placement is set. */
double coord_load_imbalance(const coord_load_t *ld, coord_load_window_t w, int layer);
/* True while layer's routing is collapsed (see collapse_share); *expert and *share (either
 * may be NULL) get the dominant expert and its share of the time window. */
bool coord_load_collapsed(const coord_load_t *ld, int layer, int *expert, double *share);
/* Which of the n owners (nodes, -1 skipped) of a replicated expert the next call goes to:
 * the one whose queue finishes first, (inflight[node] + 1) / node_cap[node] smallest (cap NULL
 * or <= 0: 1), ties to the earlier owner, so an idle cluster always uses the primary.
 * inflight: (nodes) calls queued on each node. Returns an index into owners, -1 when none. */
int coord_load_choose(const int *owners, int n, const int *inflight, const double *node_cap);
/* Load profile, the file of --record-load / --load-profile (JSON, written with jansson):
 *   {"moemesh_load_profile": 1, "model": "<fingerprint or name>", "n_layers": L,
 *    "n_expert": E, "tokens": [[t(0,0), ..., t(0,E-1)], ..., [t(L-1,0), ...]]}
 * tokens are routed-token counts (non-negative numbers); a layer without routed experts is all
 * zeros. Write: 0 or -errno (logged). Read: fills out (n_layers * n_expert) and returns 0, or
 * -EINVAL when the file is not such a profile or its shape differs (logged with the path). */
int coord_load_profile_write(const char *path, const char *model, int n_layers, int n_expert,
                             const uint64_t *tokens);
int coord_load_profile_read(const char *path, int n_layers, int n_expert, double *out);
/* Writes e's expert token counts since start-up as m's load profile (--record-load). 0 or
 * -errno (logged). */
int coord_load_record(const coord_engine_t *e, const model_t *m, const char *path);
/* Capacity place() used for node i ((token, expert) pairs/s for the model's experts), 0 when
 * the placement did not weigh capacities. */
double coord_cluster_capacity(const coord_cluster_t *c, int node);

#endif
