/* expert-node internals shared between its files: the shard (what the node holds), the
 * compute thread with its job queues, and the counters. Names carry the xnode__ prefix.
 */
#ifndef MOEMESH_XNODE_INT_H
#define MOEMESH_XNODE_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "expert-node/xnode.h"
#include "kernels/kern.h"
#include "model/model.h"
#include "wire/wire.h"

#define XNODE_FP_CAP 257 /* a model fingerprint from ASSIGN: max_string (256) + NUL */

/* ---- counters ---- updated by both threads, read by anyone */
typedef struct {
    atomic_uint_fast64_t requests, tokens, errors, malformed, chunks, bytes_in, bytes_out;
    atomic_uint_fast64_t compute_us, queue_us, heartbeats, peers_dropped, ready;
} xnode__counters_t;

/* ---- shard (expert-node/shard.c) ----
 * The assigned (layer, expert) pairs and their three weight slices. Only the socket thread
 * changes it, and only while holding lock for writing; it reads without the lock (it is the
 * only writer). The compute thread reads published slices (xnode__shard_find) holding lock for
 * reading, so a slice is never freed or replaced under a running kern_moe_ffn. A slice is
 * published (data non-NULL) only once complete and verified, and never written afterwards. */
typedef struct {
    uint32_t layer, expert;
    const void *data[WIRE_SHARD_KIND_COUNT]; /* published slice, NULL until verified */
    kern_type_t type[WIRE_SHARD_KIND_COUNT];
    uint64_t bytes[WIRE_SHARD_KIND_COUNT];
    void *own[WIRE_SHARD_KIND_COUNT];        /* buffer behind data; NULL for a model view */
    /* A slice being received: chunks arrive in order, CRC-32C is fed as they come. */
    uint8_t *rx[WIRE_SHARD_KIND_COUNT];      /* (rx_total bytes) 64-aligned; NULL when idle */
    uint64_t rx_got[WIRE_SHARD_KIND_COUNT], rx_total[WIRE_SHARD_KIND_COUNT];
    uint32_t rx_crc[WIRE_SHARD_KIND_COUNT], rx_want[WIRE_SHARD_KIND_COUNT];
    uint32_t rx_type[WIRE_SHARD_KIND_COUNT];
    bool want_bias;          /* gpt-oss: complete only with its three bias slices too */
} xnode__pair_t;

typedef struct {
    pthread_rwlock_t lock;
    bool lock_ok;
    uint64_t mem_limit;      /* bytes of weights we may hold */
    /* Sources of pairs that need no transfer. */
    model_t *m;              /* -m model, or NULL */
    char m_fp[XNODE_FP_CAP];
    char *cache_dir;         /* NULL: no cache */
    char cache_fp[XNODE_FP_CAP];       /* fingerprint of the cached pairs, "" when none */
    uint32_t n_cached;
    uint32_t *cached_layer, *cached_expert; /* (n_cached) pairs with 3 verified files */
    /* The assignment; assigned false until the first ASSIGN is accepted. */
    bool assigned;
    char fp[XNODE_FP_CAP];   /* its model fingerprint */
    uint32_t n_layers, n_experts;
    uint32_t n_embd, n_ff;   /* 0 until known (ASSIGN, the model, or a first FORWARD) */
    kern_act_t act;          /* the experts' gated unit (ASSIGN's expert_act) */
    uint32_t n_pairs;
    xnode__pair_t *pairs;    /* (n_pairs) */
    int32_t *index;          /* (n_layers * n_experts) index into pairs, or -1 */
    uint32_t n_ready;        /* pairs with all three slices published */
    uint64_t held;           /* bytes of published slices plus slices being received */
} xnode__shard_t;

/* Loads model_path (NULL: none) and scans cache_dir (NULL: none). 0 or an error (logged). */
int xnode__shard_init(xnode__shard_t *sh, const char *model_path, const char *cache_dir,
                      uint64_t mem_limit);
void xnode__shard_deinit(xnode__shard_t *sh); /* safe on a zeroed or half-built shard */
/* The pairs served without a transfer, for WELCOME: *layer and *expert (n) are malloc'd (the
 * caller frees them). Returns their fingerprint ("" when none), borrowed from sh. */
const char *xnode__shard_held(const xnode__shard_t *sh, uint32_t **layer, uint32_t **expert,
                              uint32_t *n);
/* Takes an assignment: pairs held under the same fingerprint are kept or loaded at once (model
 * views, cache files); the others wait for SHARD_CHUNKs. Returns 0, or an error code with a
 * message in msg (cap bytes) for the ERROR reply: WIRE_E_FIELD (inconsistent), -ENOSPC
 * (beyond mem_limit), WIRE_E_CHECKSUM (a cache file changed). On error nothing changed. */
int xnode__shard_assign(xnode__shard_t *sh, const wire_assign_t *a, char *msg, size_t cap);
/* Takes one SHARD_CHUNK (data: n bytes). 0 or an error code and message as above. */
int xnode__shard_chunk(xnode__shard_t *sh, const wire_shard_chunk_t *c, const void *data,
                       size_t n, char *msg, size_t cap);
/* Every assigned pair published. */
bool xnode__shard_complete(const xnode__shard_t *sh);
/* The published pair (layer, expert), or NULL when it is not assigned or not complete. The
 * socket thread may call it freely; the compute thread holding lock for reading. */
const xnode__pair_t *xnode__shard_find(const xnode__shard_t *sh, uint32_t layer,
                                       uint32_t expert);
/* Whether pair p computes rows of n_embd: the slice sizes fit (n_ff, n_embd) for some n_ff,
 * written to *n_ff. Never reaches kern_row_bytes' CHECK with a partial block. */
bool xnode__pair_fits(const xnode__pair_t *p, uint32_t n_embd, uint32_t *n_ff);

/* ---- compute thread (expert-node/compute.c) ----
 * The socket thread queues validated FORWARDs (bounded by max_queue); the compute thread runs
 * them in order on its own kern_pool and queues the replies back, then writes done_fd so the
 * socket thread wakes up and sends them. Jobs move between threads whole; neither thread
 * touches a job while the other holds it. */
typedef struct xnode__job {
    struct xnode__job *next;
    wire_msg_t req;          /* the FORWARD; owns its frames */
    double t_recv;           /* wire_now() at receipt */
    uint32_t n_embd, n_ff;   /* checked by the socket thread */
    wire_msg_t reply;        /* RESULT or ERROR, routed, ready to send */
} xnode__job_t;

typedef struct {
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    xnode__job_t *in_head, *in_tail; /* waiting for compute */
    xnode__job_t *out_head, *out_tail; /* replies for the socket thread */
    int n_in, max_queue;
    bool stop;
    atomic_uint inflight;    /* jobs queued or computing */
    int done_fd;             /* eventfd: replies are waiting */
    kern_pool_t *pool;
    const xnode__shard_t *shard;
    xnode__counters_t *ctr;
    /* Compute-thread scratch, grown as needed (bounded by the socket thread's checks). */
    void *work;
    float *x, *out, *w;      /* (n_tok, n_embd), (n_tok, n_embd), (n_tok, k) */
    int32_t *ids, *remap;    /* (n_tok, k); (n_experts) expert id -> index into ex, or -1 */
    kern_expert_t *ex;       /* (distinct experts of one request) */
    kern_expert_bias_t *bias; /* (distinct experts of one request) gpt-oss's bias rows */
    size_t work_cap, x_cap, out_cap, w_cap, ids_cap, remap_cap, ex_cap, bias_cap; /* bytes */
} xnode__compute_t;

/* Starts the thread. 0 or -errno. */
int xnode__compute_start(xnode__compute_t *c, int threads, int max_queue,
                         const xnode__shard_t *sh, xnode__counters_t *ctr);
/* Queues job (taken); -EBUSY when max_queue jobs are waiting (the job is left to the caller). */
int xnode__compute_push(xnode__compute_t *c, xnode__job_t *job);
/* Takes every finished job (a list through next), NULL when none. */
xnode__job_t *xnode__compute_take(xnode__compute_t *c);
/* Stops and joins the thread, frees jobs not yet sent and the scratch. Safe if never started. */
void xnode__compute_stop(xnode__compute_t *c);
void xnode__job_free(xnode__job_t *job); /* NULL-safe */
/* Scratch bytes a FORWARD of n_tok tokens with at most k experts each needs over pairs ex (n);
 * the socket thread refuses requests beyond the configured maximum before queueing them. */
uint64_t xnode__compute_work_bytes(const xnode__pair_t *const *ex, int n, uint32_t n_embd,
                                   uint32_t n_ff, uint32_t n_tok, uint32_t k);

/* ---- capacity probe (expert-node/probe.c) ----
 * (token, expert) pairs per second this machine computes on the reference expert of
 * wire_hello_t.capacity (q8_0, WIRE_CAPACITY_REF_EMBD x WIRE_CAPACITY_REF_FF, calls of
 * WIRE_CAPACITY_REF_TOKENS tokens) with `threads` threads, over about 40 ms; what WELCOME
 * reports so the coordinator can weigh nodes by speed. Always > 0. */
float xnode__probe_capacity(int threads);

#endif
