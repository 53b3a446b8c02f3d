/* Thread pool: a fixed set of persistent worker threads that run one function as nth parts at
 * once, the caller running part 0. Decode dispatches a run per matrix product, thousands per
 * second, so a run must cost microseconds: workers spin briefly on a generation counter before
 * sleeping on it with a futex, and the caller spins on a pending count before sleeping likewise.
 * A sleeper count on each side lets the waker skip the futex syscall when nobody sleeps.
 *
 * Parts 1..nth-1 are claimed, not assigned: whoever is awake takes the next unclaimed part from
 * a counter tagged with the run's generation, and the caller takes what is left after its own
 * part. The cores are shared (other processes, the event loop), so a worker that is not
 * scheduled must not hold up a run; its part is simply done by someone else.
 *
 * Invariants: one run at a time (the caller's thread); gen only grows; each part of a run is
 * claimed exactly once (compare-and-swap on the tagged counter, which a stale claimer cannot
 * win), and a new run starts only after pending, the count of unfinished parts 1..nth-1, is 0;
 * fn and arg are written before gen is bumped (release) and read after a claim (acquire).
 * Scratch slot ith is touched only by whoever runs part ith, one at a time.
 *
 * This file is the one place in kernels/ that allocates: the pool itself and per-part scratch,
 * which grows on first use for a shape and is then reused, so warm runs never allocate.
 */
#include "kernels/kern-int.h"
#include "wire/wire.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* How long a waiting thread spins before it sleeps. Between two products of one decode step the
 * gap is a few microseconds (a norm, a rope), so 100 us of spinning catches the next run without
 * a wake-up syscall, yet an idle pool stops burning the core quickly. */
#define SPIN_NS 100000

/* One per part (and worker thread), each on its own cache line. */
typedef struct {
    _Alignas(64) void *p; /* scratch, 64-byte aligned, cap bytes */
    size_t cap;
    pthread_t tid; /* workers only (ith >= 1) */
} slot_t;

struct kern_pool {
    int n;                 /* threads including the caller */
    slot_t *slots;         /* (n) */
    kern_pool_fn_cb fn;    /* current run, published by gen */
    void *arg;
    atomic_bool stop;
    _Alignas(64) atomic_uint gen;      /* futex word: bumped once per run */
    _Atomic uint64_t next;             /* gen << 32 | next unclaimed part (>= n: none left) */
    atomic_uint n_sleeping;            /* workers asleep (or about to be) on gen */
    _Alignas(64) atomic_uint pending;  /* futex word: parts 1..n-1 of the run not yet finished */
    atomic_uint caller_sleeping;       /* the caller is asleep (or about to be) on pending */
};

static void futex_wait(atomic_uint *word, unsigned expected)
{
    /* Returns at once (EAGAIN) when *word != expected, so a wake between the caller's last check
     * and this call is never lost; spurious wake-ups are handled by the callers' loops. */
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake(atomic_uint *word, int n)
{
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Spins while (*word == val) == equal, at most SPIN_NS; returns the last value read. The clock is
 * read only every 64 iterations so it does not dominate the spin. */
static unsigned spin_while(atomic_uint *word, unsigned val, bool equal)
{
    uint64_t t0 = 0;
    for (unsigned i = 1;; i++) {
        unsigned v = atomic_load_explicit(word, memory_order_acquire);
        if ((v == val) != equal) return v;
        cpu_relax();
        if ((i & 63) == 0) {
            uint64_t t = now_ns();
            if (!t0) t0 = t;
            else if (t - t0 > SPIN_NS) return v;
        }
    }
}

/* Claims and runs parts of run g until none is left; returns how many it ran. The tag makes a
 * claim for an older run fail once the counter has moved on to a newer one. */
static int run_parts(kern_pool_t *pool, unsigned g)
{
    int done = 0;
    uint64_t v = atomic_load_explicit(&pool->next, memory_order_acquire);
    while ((unsigned)(v >> 32) == g && (int)(uint32_t)v < pool->n) {
        if (!atomic_compare_exchange_weak_explicit(&pool->next, &v, v + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        pool->fn(pool->arg, (int)(uint32_t)v, pool->n);
        done++;
        if (atomic_fetch_sub(&pool->pending, 1) == 1 && atomic_load(&pool->caller_sleeping))
            futex_wake(&pool->pending, 1);
        v = atomic_load_explicit(&pool->next, memory_order_acquire);
    }
    return done;
}

static void *worker_main(void *p)
{
    kern_pool_t *pool = p;
    unsigned seen = 0;
    for (;;) {
        unsigned g = spin_while(&pool->gen, seen, true);
        if (g == seen) {
            /* Dekker pairing with kern_pool_run: we publish n_sleeping before re-reading gen,
             * it bumps gen before reading n_sleeping (all seq_cst), so at least one side sees
             * the other and no run is missed. */
            atomic_fetch_add(&pool->n_sleeping, 1);
            while ((g = atomic_load(&pool->gen)) == seen) futex_wait(&pool->gen, seen);
            atomic_fetch_sub(&pool->n_sleeping, 1);
        }
        seen = g;
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) break;
        run_parts(pool, g);
    }
    return NULL;
}

kern_pool_t *kern_pool_new(int n_threads)
{
    CHECK(n_threads >= 1);
    kern_pool_t *pool = xmalloc_aligned(64, sizeof(*pool));
    pool->n = n_threads;
    pool->slots = xmalloc_aligned(64, (size_t)n_threads * sizeof(slot_t));
    for (int i = 0; i < n_threads; i++) {
        pool->slots[i].p = NULL;
        pool->slots[i].cap = 0;
    }
    pool->fn = NULL;
    pool->arg = NULL;
    atomic_init(&pool->stop, false);
    atomic_init(&pool->gen, 0);
    atomic_init(&pool->next, (uint64_t)n_threads); /* run 0: nothing to claim */
    atomic_init(&pool->n_sleeping, 0);
    atomic_init(&pool->pending, 0);
    atomic_init(&pool->caller_sleeping, 0);
    for (int i = 1; i < n_threads; i++) {
        /* Thread creation failing (resource limits) is treated like out of memory: there is no
         * useful degraded mode for a pool that was asked for n threads. */
        CHECK(pthread_create(&pool->slots[i].tid, NULL, worker_main, pool) == 0);
    }
    return pool;
}

void kern_pool_free(kern_pool_t *pool)
{
    if (!pool) return;
    atomic_store(&pool->stop, true);
    atomic_fetch_add(&pool->gen, 1);
    futex_wake(&pool->gen, INT_MAX);
    for (int i = 1; i < pool->n; i++) pthread_join(pool->slots[i].tid, NULL);
    for (int i = 0; i < pool->n; i++) free(pool->slots[i].p);
    free(pool->slots);
    free(pool);
}

int kern_pool_size(const kern_pool_t *pool) { return pool ? pool->n : 1; }

void kern_pool_run(kern_pool_t *pool, kern_pool_fn_cb fn, void *arg)
{
    if (!pool || pool->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    const unsigned g = atomic_load_explicit(&pool->gen, memory_order_relaxed) + 1;
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->pending, (unsigned)(pool->n - 1), memory_order_relaxed);
    atomic_store_explicit(&pool->next, (uint64_t)g << 32 | 1, memory_order_relaxed);
    atomic_store(&pool->gen, g); /* seq_cst: publishes fn, arg, pending and next */
    if (atomic_load(&pool->n_sleeping)) futex_wake(&pool->gen, INT_MAX);

    fn(arg, 0, pool->n);
    /* Parts no awake worker has claimed yet are cheaper to run here than to wait for. */
    run_parts(pool, g);

    unsigned v = spin_while(&pool->pending, 0, false);
    if (v != 0) {
        /* Same Dekker pairing as the workers' sleep, mirrored. */
        atomic_store(&pool->caller_sleeping, 1);
        while ((v = atomic_load(&pool->pending)) != 0) futex_wait(&pool->pending, v);
        atomic_store(&pool->caller_sleeping, 0);
    }
}

void *kern__pool_scratch(kern_pool_t *pool, int ith, size_t bytes)
{
    CHECK(pool && ith >= 0 && ith < pool->n);
    slot_t *s = &pool->slots[ith];
    if (s->cap < bytes) {
        /* Grow by half again so a slowly growing shape (a longer prompt) does not reallocate on
         * every run. */
        size_t cap = bytes + bytes / 2;
        cap = (cap + 63) & ~(size_t)63;
        free(s->p);
        s->p = xmalloc_aligned(64, cap);
        s->cap = cap;
    }
    return s->p;
}
