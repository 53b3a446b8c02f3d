/* Tests for kernels/pool.c: every part runs exactly once per run (part 0 on the caller), results
 * written by workers are visible to the caller when kern_pool_run returns, both the spinning and
 * the sleeping hand-off work, a NULL pool runs inline, and per-part scratch is aligned and
 * reused. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <unistd.h>

#include "kernels/kern-int.h"

typedef struct {
    int nth_seen[8];
    int calls[8];
    long stamp[8]; /* run number each thread last saw */
    long run;
    pthread_t self[8];
} log_t;

static void record_cb(void *arg, int ith, int nth)
{
    log_t *l = arg;
    l->nth_seen[ith] = nth;
    l->calls[ith]++;
    l->stamp[ith] = l->run;
    l->self[ith] = pthread_self();
}

Test(kern_pool, every_part_runs_once_per_run)
{
    for (int n = 1; n <= 4; n++) {
        kern_pool_t *pool = kern_pool_new(n);
        cr_assert_eq(kern_pool_size(pool), n);
        log_t l = {0};
        /* Fewer runs when threads outnumber the machine's 2 cores: each then waits for a time
         * slice, not for a spinning peer. */
        const int runs = n <= 2 ? 20000 : 2000;
        for (l.run = 1; l.run <= runs; l.run++) {
            kern_pool_run(pool, record_cb, &l);
            /* A part that was skipped, or whose writes were not yet visible, would leave an old
             * stamp behind; one run twice would show in calls below. */
            for (int i = 0; i < n; i++)
                cr_assert_eq(l.stamp[i], l.run, "part %d of %d missed run %ld", i, n, l.run);
        }
        for (int i = 0; i < n; i++) {
            cr_assert_eq(l.calls[i], runs);
            cr_assert_eq(l.nth_seen[i], n);
        }
        /* Parts 1.. may run on any thread (the caller takes those no worker has claimed). */
        cr_assert(pthread_equal(l.self[0], pthread_self()), "the caller runs part 0");
        kern_pool_free(pool);
    }
}

Test(kern_pool, sleeping_workers_wake_for_the_next_run)
{
    kern_pool_t *pool = kern_pool_new(3);
    log_t l = {0};
    for (l.run = 1; l.run <= 5; l.run++) {
        /* Longer than the spin budget, so workers are asleep on the futex when the run starts. */
        usleep(3000);
        kern_pool_run(pool, record_cb, &l);
        for (int i = 0; i < 3; i++) cr_assert_eq(l.stamp[i], l.run);
    }
    kern_pool_free(pool);
}

static void slow_worker_cb(void *arg, int ith, int nth)
{
    (void)nth;
    /* Workers take longer than the caller's spin budget, so the caller sleeps on pending. */
    if (ith > 0) usleep(3000);
    atomic_fetch_add((atomic_int *)arg, 1);
}

Test(kern_pool, caller_sleeps_until_slow_workers_finish)
{
    kern_pool_t *pool = kern_pool_new(2);
    atomic_int count = 0;
    for (int r = 1; r <= 4; r++) {
        kern_pool_run(pool, slow_worker_cb, &count);
        cr_assert_eq(atomic_load(&count), 2 * r);
    }
    kern_pool_free(pool);
}

Test(kern_pool, null_pool_runs_inline_as_one_thread)
{
    log_t l = {.run = 7};
    kern_pool_run(NULL, record_cb, &l);
    cr_assert_eq(l.calls[0], 1);
    cr_assert_eq(l.nth_seen[0], 1);
    cr_assert_eq(l.stamp[0], 7);
    cr_assert(pthread_equal(l.self[0], pthread_self()));
    cr_assert_eq(kern_pool_size(NULL), 1);
    kern_pool_free(NULL);
}

typedef struct {
    kern_pool_t *pool;
    size_t bytes;
    void *got[4];
} scratch_t;

static void scratch_cb(void *arg, int ith, int nth)
{
    (void)nth;
    scratch_t *s = arg;
    unsigned char *p = kern__pool_scratch(s->pool, ith, s->bytes);
    for (size_t i = 0; i < s->bytes; i++) p[i] = (unsigned char)ith; /* ASan checks the size */
    s->got[ith] = p;
}

Test(kern_pool, scratch_is_aligned_private_and_reused)
{
    kern_pool_t *pool = kern_pool_new(4);
    scratch_t s = {.pool = pool, .bytes = 1000};
    kern_pool_run(pool, scratch_cb, &s);
    void *first[4];
    for (int i = 0; i < 4; i++) {
        first[i] = s.got[i];
        cr_assert_eq((uintptr_t)s.got[i] % 64, 0);
        for (int j = 0; j < i; j++) cr_assert_neq(s.got[i], s.got[j]);
    }
    /* Same or smaller size: no reallocation, which is what keeps warm runs allocation-free. */
    s.bytes = 900;
    kern_pool_run(pool, scratch_cb, &s);
    for (int i = 0; i < 4; i++) cr_assert_eq(s.got[i], first[i]);
    s.bytes = 100000;
    kern_pool_run(pool, scratch_cb, &s);
    for (int i = 0; i < 4; i++) {
        unsigned char *p = s.got[i];
        cr_assert_eq(p[0], i);
        cr_assert_eq(p[99999], i);
    }
    kern_pool_free(pool);
}
