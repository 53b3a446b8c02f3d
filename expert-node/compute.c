/* The compute thread: runs queued FORWARDs with kern_moe_ffn on the node's own kern_pool and
 * hands the replies back to the socket thread, which alone touches the socket.
 *
 * Invariants: a job belongs to exactly one thread at a time (queued under mu, taken under mu);
 * the shard is read only under its read lock, so the slices used stay alive for the whole
 * kern_moe_ffn; the socket thread has checked every size before queueing, so nothing here can
 * reach a kernel CHECK, and an expert that vanished between the check and the compute (a new
 * ASSIGN) becomes an ERROR reply.
 */
#include "expert-node/xnode-int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

void xnode__job_free(xnode__job_t *job)
{
    if (!job) return;
    wire_msg_deinit(&job->req);
    wire_msg_deinit(&job->reply);
    free(job);
}

/* Scratch p of *cap bytes grown to at least need bytes (contents not kept), 64-aligned. */
static void *grow(void *p, size_t *cap, size_t need)
{
    if (need <= *cap && p) return p;
    free(p);
    *cap = need + need / 4 + 64;
    return xmalloc_aligned(64, *cap);
}

static uint32_t max_sel(const wire_forward_t *f)
{
    uint32_t k = 1;
    for (uint32_t t = 0; t < f->n_tokens; t++)
        if (f->n_sel[t] > k) k = f->n_sel[t];
    return k;
}

uint64_t xnode__compute_work_bytes(const xnode__pair_t *const *ex, int n, uint32_t n_embd,
                                   uint32_t n_ff, uint32_t n_tok, uint32_t k)
{
    uint64_t best = 0;
    for (int i = 0; i < n; i++) {
        kern_expert_t t = {ex[i]->type[0], ex[i]->type[1], ex[i]->type[2], NULL, NULL, NULL};
        size_t s = kern_moe_work_size(&t, (int)n_embd, (int)n_ff, (int)(n_tok ? n_tok : 1),
                                      (int)k);
        if (s > best) best = s;
    }
    return best;
}

static void reply_error(xnode__job_t *job, int code, const char *text)
{
    wire_msg_deinit(&job->reply);
    wire_msg_init(&job->reply, WIRE_KIND_ERROR);
    job->reply.route = job->req.route;
    job->reply.u.error = (wire_error_t){code, text, job->req.u.forward.request_id};
}

/* Renumbers the request's experts 0..m-1 in order of first appearance and binds their slices
 * (caller holds the shard's read lock). Returns m, or -1 when one is no longer held. */
static int bind_experts(xnode__compute_t *c, const wire_forward_t *f, uint32_t K)
{
    const xnode__shard_t *sh = c->shard;
    size_t ne = sh->n_experts;
    c->remap = grow(c->remap, &c->remap_cap, sizeof(int32_t) * (ne + 1));
    c->ex = grow(c->ex, &c->ex_cap, sizeof(kern_expert_t) * (ne + 1));
    c->bias = grow(c->bias, &c->bias_cap, sizeof(kern_expert_bias_t) * (ne + 1));
    for (size_t e = 0; e < ne; e++) c->remap[e] = -1;
    int m = 0;
    size_t i = 0;
    for (uint32_t t = 0; t < f->n_tokens; t++) {
        for (uint32_t j = 0; j < K; j++) {
            size_t o = (size_t)t * K + j;
            if (j >= f->n_sel[t]) {
                c->ids[o] = -1;
                c->w[o] = 0.0f;
                continue;
            }
            uint32_t e = f->expert[i];
            c->w[o] = f->gate[i];
            i++;
            if (e >= ne) return -1;
            if (c->remap[e] < 0) {
                const xnode__pair_t *p = xnode__shard_find(sh, f->layer, e);
                if (!p) return -1;
                c->ex[m] = (kern_expert_t){p->type[0], p->type[1], p->type[2],
                                           p->data[0], p->data[1], p->data[2]};
                c->bias[m] = (kern_expert_bias_t){p->data[WIRE_SHARD_GATE_BIAS],
                                                  p->data[WIRE_SHARD_UP_BIAS],
                                                  p->data[WIRE_SHARD_DOWN_BIAS]};
                c->remap[e] = m++;
            }
            c->ids[o] = c->remap[e];
        }
    }
    return m;
}

/* Computes one FORWARD into job->reply. */
static void run_job(xnode__compute_t *c, xnode__job_t *job)
{
    const wire_forward_t *f = &job->req.u.forward;
    const wire_tensor_t *in = &job->req.tensors[0];
    const uint32_t T = f->n_tokens, D = job->n_embd, K = max_sel(f);
    double t0 = wire_now();
    double queued = t0 - job->t_recv;

    /* Activations as f32 (in place when they already are). */
    const float *x = in->data;
    if (in->dtype != WIRE_DTYPE_F32) {
        c->x = grow(c->x, &c->x_cap, sizeof(float) * T * D);
        if (wire_act_unpack(in->dtype, in->data, in->bytes, T, D, c->x) != 0) {
            reply_error(job, WIRE_E_SIZE, "activations do not unpack to n_tokens x n_embd");
            return;
        }
        x = c->x;
    }
    size_t TK = (size_t)T * K;
    c->ids = grow(c->ids, &c->ids_cap, sizeof(int32_t) * TK);
    c->w = grow(c->w, &c->w_cap, sizeof(float) * TK);
    c->out = grow(c->out, &c->out_cap, sizeof(float) * T * D);

    pthread_rwlock_rdlock((pthread_rwlock_t *)&c->shard->lock);
    int m = bind_experts(c, f, K);
    if (m < 0 || c->shard->n_embd != D) {
        pthread_rwlock_unlock((pthread_rwlock_t *)&c->shard->lock);
        reply_error(job, WIRE_E_FIELD, "an expert of this request is no longer assigned here");
        return;
    }
    size_t ws = 0;
    for (int i = 0; i < m; i++) {
        size_t s = kern_moe_work_size(&c->ex[i], (int)D, (int)job->n_ff, (int)(T ? T : 1),
                                      (int)K);
        if (s > ws) ws = s;
    }
    c->work = grow(c->work, &c->work_cap, ws);
    if (m > 0 && T > 0)
        kern_moe_ffn_ex(c->pool, c->ex, c->bias, c->shard->act, m, (int)D, (int)job->n_ff,
                        (int)T, (int)K, x, c->ids, c->w, c->out, c->work, ws);
    else
        memset(c->out, 0, sizeof(float) * T * D);
    pthread_rwlock_unlock((pthread_rwlock_t *)&c->shard->lock);

    wire_msg_deinit(&job->reply);
    wire_msg_init(&job->reply, WIRE_KIND_RESULT);
    job->reply.route = job->req.route;
    int err = wire_msg_add_act(&job->reply, f->result_dtype, c->out, T, D);
    double t1 = wire_now();
    uint32_t compute_us = (uint32_t)((t1 - t0) * 1e6);
    uint32_t queue_us = (uint32_t)(queued * 1e6);
    if (err) {
        reply_error(job, err, err == -ERANGE ? "result does not fit the result dtype"
                                             : "result cannot be encoded");
        return;
    }
    job->reply.u.result = (wire_result_t){f->request_id, f->layer, f->micro_batch, T, queue_us,
                                          compute_us};
    atomic_fetch_add(&c->ctr->requests, 1);
    atomic_fetch_add(&c->ctr->tokens, T);
    atomic_fetch_add(&c->ctr->compute_us, compute_us);
    atomic_fetch_add(&c->ctr->queue_us, queue_us);
}

static void *thread_main(void *arg)
{
    xnode__compute_t *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->stop && !c->in_head) pthread_cond_wait(&c->cv, &c->mu);
        if (c->stop) break;
        xnode__job_t *job = c->in_head;
        c->in_head = job->next;
        if (!c->in_head) c->in_tail = NULL;
        c->n_in--;
        job->next = NULL;
        pthread_mutex_unlock(&c->mu);

        run_job(c, job);
        /* The request's frames are not needed any more; free them here, not on the socket
         * thread. */
        wire_msg_deinit(&job->req);

        pthread_mutex_lock(&c->mu);
        if (c->out_tail) c->out_tail->next = job;
        else c->out_head = job;
        c->out_tail = job;
        uint64_t one = 1;
        ssize_t w = write(c->done_fd, &one, sizeof(one));
        (void)w; /* an eventfd only fails on overflow, and then it is readable anyway */
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

int xnode__compute_start(xnode__compute_t *c, int threads, int max_queue,
                         const xnode__shard_t *sh, xnode__counters_t *ctr)
{
    memset(c, 0, sizeof(*c));
    /* pool doubles as "start was called", which is all xnode__compute_stop needs to know. */
    c->pool = kern_pool_new(threads);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->max_queue = max_queue;
    c->shard = sh;
    c->ctr = ctr;
    c->done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->done_fd < 0) return -errno;
    int err = pthread_create(&c->thread, NULL, thread_main, c);
    if (err) return -err;
    c->started = true;
    return 0;
}

int xnode__compute_push(xnode__compute_t *c, xnode__job_t *job)
{
    pthread_mutex_lock(&c->mu);
    if (c->n_in >= c->max_queue) {
        pthread_mutex_unlock(&c->mu);
        return -EBUSY;
    }
    job->next = NULL;
    if (c->in_tail) c->in_tail->next = job;
    else c->in_head = job;
    c->in_tail = job;
    c->n_in++;
    atomic_fetch_add(&c->inflight, 1);
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return 0;
}

xnode__job_t *xnode__compute_take(xnode__compute_t *c)
{
    uint64_t v;
    ssize_t r = read(c->done_fd, &v, sizeof(v));
    (void)r; /* EAGAIN: nothing signalled since the last take, the list may still be empty */
    pthread_mutex_lock(&c->mu);
    xnode__job_t *list = c->out_head;
    c->out_head = c->out_tail = NULL;
    pthread_mutex_unlock(&c->mu);
    for (xnode__job_t *j = list; j; j = j->next) atomic_fetch_sub(&c->inflight, 1);
    return list;
}

static void free_list(xnode__job_t *j)
{
    while (j) {
        xnode__job_t *next = j->next;
        xnode__job_free(j);
        j = next;
    }
}

void xnode__compute_stop(xnode__compute_t *c)
{
    if (!c->pool) return;
    if (c->started) {
        pthread_mutex_lock(&c->mu);
        c->stop = true;
        pthread_cond_signal(&c->cv);
        pthread_mutex_unlock(&c->mu);
        pthread_join(c->thread, NULL);
        c->started = false;
    }
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free_list(c->in_head);
    free_list(c->out_head);
    c->in_head = c->in_tail = c->out_head = c->out_tail = NULL;
    kern_pool_free(c->pool);
    if (c->done_fd >= 0) close(c->done_fd);
    free(c->work);
    free(c->x);
    free(c->out);
    free(c->w);
    free(c->ids);
    free(c->remap);
    free(c->ex);
    free(c->bias);
    memset(c, 0, sizeof(*c));
}
