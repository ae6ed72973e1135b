/*
 * test_threads.c: per-thread caches across threads (mcache.c).
 *
 *   - threads that exit give their caches back: num_threads drops, their
 *     objects stay accounted for, the heap check passes, and the caches are
 *     recycled (mcache_sys stops growing);
 *   - a thread that only frees (never mallocs) works without a cache;
 *   - the transfer cache: a thread's flushed batches are taken whole by the
 *     next thread that runs out, and gm_release empties it;
 *   - producer/consumer: objects allocated on one thread are freed on
 *     another, with 4 threads;
 *   - fork() while other threads allocate and free: every child finds a
 *     consistent heap and can use it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "gm_internal.h"
#include "gmtest.h"

typedef struct {
    uint64_t s;
} rng_t;
static uint64_t rng(rng_t *r) {
    uint64_t x = r->s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return r->s = x;
}

/* Mostly small, some medium, a few large. */
static size_t random_size(rng_t *r) {
    uint64_t k = rng(r) % 1000;
    if (k < 800)
        return 16 + (size_t)(rng(r) % 496);
    if (k < 995)
        return 16 + (size_t)(rng(r) % MAX_SMALL_SIZE);
    return MAX_SMALL_SIZE + 1 + (size_t)(rng(r) % (256 << 10));
}

/* ---- threads exit ------------------------------------------------------------- */

#define NTHREADS 8
#define PER_THREAD 2000

typedef struct {
    int id;
    pthread_barrier_t *barrier;
    void *kept[PER_THREAD];
    int nkept;
    uint64_t mallocs, frees;
    int had_cache;
} worker_t;

static void *exiting_worker(void *arg) {
    worker_t *w = arg;
    rng_t r = {0x9e3779b97f4a7c15ull * (uint64_t)(w->id + 1)};
    void *mine[PER_THREAD];
    for (int i = 0; i < PER_THREAD; i++) {
        size_t n = random_size(&r);
        mine[i] = gm_malloc(n);
        if (mine[i] == NULL)
            continue;
        w->mallocs++;
        memset(mine[i], w->id, n < 64 ? n : 64);
    }
    /* Keep one in four; free the rest (they land on this thread's lists). */
    for (int i = 0; i < PER_THREAD; i++) {
        if (mine[i] == NULL)
            continue;
        if (i % 4 == 0) {
            w->kept[w->nkept++] = mine[i];
        } else {
            gm_free(mine[i]);
            w->frees++;
        }
    }
    w->had_cache = gm_tls_mcache != &gm_nocache;
    /* Wait, alive, while the main thread counts the caches; then exit. */
    pthread_barrier_wait(w->barrier);
    pthread_barrier_wait(w->barrier);
    return NULL;
}

static worker_t workers[NTHREADS];

static void run_exiting_round(uint64_t *mcache_sys_after) {
    gm_thread_flush();
    struct gm_stats s0 = stats();
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, NTHREADS + 1);
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        memset(&workers[i], 0, sizeof workers[i]);
        workers[i].id = i;
        workers[i].barrier = &barrier;
        CHECK_EQ(pthread_create(&t[i], NULL, exiting_worker, &workers[i]), 0);
    }
    pthread_barrier_wait(&barrier);
    /* All workers alive and idle: each has a cache of its own. */
    struct gm_stats s1 = stats();
    CHECK_EQ(s1.num_threads, s0.num_threads + NTHREADS);
    CHECK(s1.mcache_inuse > s0.mcache_inuse);
    CHECK(s1.cached_bytes > 0); /* the freed objects wait on the workers' lists */
    pthread_barrier_wait(&barrier);
    uint64_t mallocs = 0, frees = 0, kept = 0;
    for (int i = 0; i < NTHREADS; i++) {
        CHECK_EQ(pthread_join(t[i], NULL), 0);
        CHECK(workers[i].had_cache);
        mallocs += workers[i].mallocs;
        frees += workers[i].frees;
        kept += (uint64_t)workers[i].nkept;
    }
    pthread_barrier_destroy(&barrier);
    /* The threads are gone; up to ABANDONED_MAX of them left their caches
     * whole for the next new threads (the others flushed theirs), and
     * every count is still there. */
    struct gm_stats s2 = stats();
    CHECK_EQ(s2.num_threads, s0.num_threads);
    CHECK(s2.cached_bytes > 0);
    CHECK_EQ(s2.mallocs - s0.mallocs, mallocs);
    CHECK_EQ(s2.frees - s0.frees, frees);
    CHECK_EQ(s2.heap_objects - s0.heap_objects, kept);
    CHECK_EQ(gm_check_heap(), 0);
    /* gm_thread_flush flushes the abandoned caches too (the scavenger does
     * after decay_ms): the caches are gone, their lists flushed. */
    gm_thread_flush();
    s2 = stats();
    CHECK_EQ(s2.mcache_inuse, s0.mcache_inuse);
    CHECK_EQ(s2.cached_bytes, 0);
    CHECK_EQ(s2.mallocs - s0.mallocs, mallocs);
    CHECK_EQ(s2.frees - s0.frees, frees);
    CHECK_EQ(gm_check_heap(), 0);
    *mcache_sys_after = s2.mcache_sys;
    /* The survivors are intact; the main thread frees them. */
    int bad = 0;
    for (int i = 0; i < NTHREADS; i++)
        for (int k = 0; k < workers[i].nkept; k++) {
            unsigned char *p = workers[i].kept[k];
            bad += gm_check(p) != GM_OK || p[0] != (unsigned char)i || p[15] != (unsigned char)i;
            gm_free(p);
        }
    CHECK_EQ(bad, 0);
    gm_thread_flush();
    struct gm_stats s3 = stats();
    CHECK_EQ(s3.heap_objects, s0.heap_objects);
    CHECK_EQ(s3.mallocs - s3.frees, s0.mallocs - s0.frees);
    CHECK_EQ(gm_check_heap(), 0);
}

TEST(exiting_threads_return_caches) {
    void *p = gm_malloc(10); /* the main thread's own cache */
    gm_free(p);
    uint64_t sys1 = 0, sys2 = 0, sys3 = 0;
    run_exiting_round(&sys1);
    run_exiting_round(&sys2);
    run_exiting_round(&sys3);
    /* Exited threads' caches are recycled: no new cache memory. */
    CHECK_EQ(sys2, sys1);
    CHECK_EQ(sys3, sys1);
}

/* ---- thread turnover: an exited thread's cache, whole, for the next ---------- */

typedef struct {
    void *last_freed;
    gm_mcache *cache;
    void *first_malloc;
} turnover_t;

static void *turnover_old(void *arg) {
    turnover_t *t = arg;
    void *p[32];
    for (int i = 0; i < 32; i++)
        p[i] = gm_malloc(48);
    for (int i = 0; i < 32; i++)
        gm_free(p[i]);
    t->last_freed = p[31];
    t->cache = gm_tls_mcache;
    return NULL;
}

static void *turnover_new(void *arg) {
    turnover_t *t = arg;
    t->first_malloc = gm_malloc(48);
    t->cache = gm_tls_mcache;
    gm_free(t->first_malloc);
    return NULL;
}

TEST(new_thread_adopts_an_exited_threads_cache) {
    gm_thread_flush(); /* no abandoned cache is left */
    struct gm_stats s0 = stats();
    turnover_t old = {0}, young = {0};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, turnover_old, &old), 0);
    CHECK_EQ(pthread_join(t, NULL), 0);
    struct gm_stats s1 = stats();
    CHECK_EQ(s1.num_threads, s0.num_threads);                 /* no thread owns it... */
    CHECK_EQ(s1.cached_bytes - s0.cached_bytes, 32 * 48);     /* ...its list is intact */
    CHECK(s1.mcache_inuse > s0.mcache_inuse);
    CHECK_EQ(gm_check_heap(), 0);
    /* The next new thread takes the cache whole: its first malloc pops the
     * object the old thread freed last, without a lock. */
    CHECK_EQ(pthread_create(&t, NULL, turnover_new, &young), 0);
    CHECK_EQ(pthread_join(t, NULL), 0);
    CHECK(young.cache == old.cache);
    CHECK(young.first_malloc == old.last_freed);
    struct gm_stats s2 = stats();
    CHECK_EQ(s2.mallocs - s0.mallocs, 33);
    CHECK_EQ(s2.frees - s0.frees, 33);
    CHECK_EQ(gm_check_heap(), 0);
    gm_thread_flush();
    CHECK_EQ(stats().mcache_inuse, s0.mcache_inuse);
}

/* The scavenger flushes a cache nobody took, once it is decay_ms old. */
TEST(scavenger_flushes_abandoned_caches) {
    long long decay = 0, scavenger = 0;
    CHECK_EQ(gm_option_get("decay_ms", &decay), 0);
    CHECK_EQ(gm_option_get("scavenger", &scavenger), 0);
    CHECK_EQ(gm_option_set("decay_ms", 50), 0);
    CHECK_EQ(gm_option_set("scavenger", 1), 0);
    gm_thread_flush();
    struct gm_stats s0 = stats();
    turnover_t old = {0};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, turnover_old, &old), 0);
    CHECK_EQ(pthread_join(t, NULL), 0);
    CHECK(stats().cached_bytes > s0.cached_bytes);
    int waited = 0;
    while (stats().mcache_inuse != s0.mcache_inuse && waited < 5000) {
        usleep(10000);
        waited += 10;
    }
    struct gm_stats s1 = stats();
    CHECK_EQ(s1.mcache_inuse, s0.mcache_inuse);
    CHECK_EQ(s1.cached_bytes, s0.cached_bytes);
    CHECK_EQ(gm_check_heap(), 0);
    CHECK_EQ(gm_option_set("decay_ms", decay), 0);
    CHECK_EQ(gm_option_set("scavenger", scavenger), 0);
}

/* Many short-lived threads, one after another: the cache count stays put. */
static void *short_lived(void *arg) {
    (void)arg;
    void *p = gm_malloc(100), *q = gm_malloc(5000);
    gm_free(p);
    return q; /* freed by the main thread */
}

TEST(many_short_lived_threads) {
    struct gm_stats s0 = stats();
    for (int i = 0; i < 200; i++) {
        pthread_t t;
        void *q = NULL;
        CHECK_EQ(pthread_create(&t, NULL, short_lived, NULL), 0);
        CHECK_EQ(pthread_join(t, &q), 0);
        CHECK_EQ(gm_check(q), GM_OK);
        gm_free(q);
    }
    gm_thread_flush();
    struct gm_stats s1 = stats();
    CHECK_EQ(s1.num_threads, s0.num_threads);
    CHECK_EQ(s1.mcache_sys, s0.mcache_sys);
    CHECK_EQ(s1.heap_objects, s0.heap_objects);
    CHECK_EQ(s1.mallocs - s0.mallocs, 400);
    CHECK_EQ(gm_check_heap(), 0);
}

/* ---- a thread that only frees ------------------------------------------------ */

#define NFREE 3000
static void *to_free[NFREE];

typedef struct {
    int cache_before, cache_after;
    uint64_t threads_during, small_frees, slow_frees;
    int double_free_code, ok;
} freer_t;

static void *free_only(void *arg) {
    freer_t *f = arg;
    f->cache_before = gm_tls_mcache != &gm_nocache;
    int ok = 1;
    for (int i = 0; i < NFREE; i++) {
        if (gm_check(to_free[i]) != GM_OK || ((unsigned char *)to_free[i])[0] != (unsigned char)i)
            ok = 0;
        f->small_frees += gm_usable_size(to_free[i]) <= GM_MAX_SMALL_SIZE;
        gm_free(to_free[i]);
    }
    f->slow_frees = gm_tls_mcache->slow_frees;
    /* A double free is caught here too (abort_on_error is 0 in this test). */
    f->double_free_code = gm_free_checked(to_free[0]);
    gm_thread_flush(); /* nothing to flush */
    f->threads_during = stats().num_threads;
    f->cache_after = gm_tls_mcache != &gm_nocache;
    f->ok = ok;
    return NULL;
}

TEST(free_only_thread) {
    CHECK_EQ(gm_option_set("abort_on_error", 0), 0);
    gm_thread_flush();
    struct gm_stats s0 = stats();
    rng_t r = {12345};
    for (int i = 0; i < NFREE; i++) {
        size_t n = random_size(&r);
        to_free[i] = gm_malloc(n);
        CHECK(to_free[i] != NULL);
        memset(to_free[i], i & 0xff, 16);
    }
    gm_thread_flush();
    freer_t f = {0};
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, free_only, &f), 0);
    CHECK_EQ(pthread_join(t, NULL), 0);
    CHECK(f.ok);
    CHECK(!f.cache_before);
    CHECK(f.cache_after); /* a thread that only frees gets a cache... */
    CHECK_EQ(f.threads_during, s0.num_threads + 1);
    /* ... and its frees take the fast path: the slow path only for the
     * first free (which makes the cache) and when a list is full. */
    fprintf(stderr, "(free-only thread: %llu of %llu small frees on the slow path)\n",
            (unsigned long long)f.slow_frees, (unsigned long long)f.small_frees);
    CHECK(f.small_frees > NFREE / 2);
    CHECK(f.slow_frees * 10 < f.small_frees);
    CHECK_EQ(f.double_free_code, GM_ERR_NOT_ALLOCATED);
    struct gm_stats s1 = stats();
    CHECK_EQ(s1.heap_objects, s0.heap_objects);
    CHECK_EQ(s1.frees - s0.frees, NFREE);
    CHECK_EQ(s1.num_threads, s0.num_threads);
    CHECK_EQ(gm_check_heap(), 0);
    /* Every freed object is really free: allocate the same shapes again. */
    for (int i = 0; i < NFREE; i++)
        CHECK_EQ(gm_check(to_free[i]), GM_ERR_NOT_ALLOCATED);
    CHECK_EQ(gm_option_set("abort_on_error", 1), 0);
}

/* Hoard's cache-scratch: objects allocated back to back by one thread and
 * handed one to each new thread, which frees it and then allocates its own.
 * The new thread must not get the handed object (or a neighbour on its
 * cache line) back: two threads would then write one cache line for ever
 * (passive false sharing; bench/drivers/cache_scratch.c ran 5x slower). */
#define SCRATCH_N 4
struct scratch { void *handed; void *got; };

static void *scratch_worker(void *arg) {
    struct scratch *w = arg;
    gm_free(w->handed); /* this thread's first call */
    w->got = gm_malloc(16);
    memset(w->got, 1, 16);
    gm_free(w->got);
    return NULL;
}

TEST(handed_objects_are_not_taken_back_by_their_new_thread) {
    struct scratch w[SCRATCH_N];
    pthread_t t[SCRATCH_N];
    for (int i = 0; i < SCRATCH_N; i++)
        CHECK((w[i].handed = gm_malloc(16)) != NULL);
    for (int i = 0; i < SCRATCH_N; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, scratch_worker, &w[i]), 0);
    for (int i = 0; i < SCRATCH_N; i++)
        CHECK_EQ(pthread_join(t[i], NULL), 0);
    for (int i = 0; i < SCRATCH_N; i++)
        for (int j = 0; j < SCRATCH_N; j++)
            CHECK((uintptr_t)w[i].got / 64 != (uintptr_t)w[j].handed / 64);
    CHECK_EQ(gm_check_heap(), 0);
}

/* ---- the transfer cache ------------------------------------------------------- */

#define TC_SIZE 64
#define TC_N 2000
static void *tc_objs[TC_N];

static pthread_barrier_t tc_barrier;

/* Frees them all, then stays alive (with its cache) while another thread
 * takes a batch: a new thread would otherwise adopt this one's cache. */
static void *tc_free_all(void *arg) {
    (void)arg;
    gm_free(gm_malloc(TC_SIZE));
    for (int i = 0; i < TC_N; i++)
        gm_free(tc_objs[i]);
    pthread_barrier_wait(&tc_barrier);
    pthread_barrier_wait(&tc_barrier);
    return NULL;
}

static void *tc_take(void *arg) {
    void **got = arg;
    got[0] = gm_malloc(TC_SIZE);
    got[1] = (void *)(uintptr_t)stats().transfer_bytes;
    gm_free(got[0]);
    return NULL;
}

/* Two threads each flush one batch of a class into the transfer cache, A's
 * first; then A allocates: it gets back every object it freed (its list,
 * then its own batch), and never one of B's, although B's batch is the
 * newer: B allocates the class too, and trading batches between two such
 * threads interleaves their objects (a consumer's batches are for anyone:
 * transfer_cache_hands_batches_between_threads). */
#define OWN_SIZE 3000
struct own_side {
    void *objs[1024];
    int n;      /* objects allocated (2 x the class's list bound) */
    int nfreed; /* the first nfreed of them were freed: one flush of a batch */
};
static struct own_side own_a, own_b;
static void *own_got[1024];
static pthread_barrier_t own_barrier;

static void own_malloc_all(struct own_side *s) {
    s->objs[0] = gm_malloc(OWN_SIZE);
    uint32_t bound = gm_tls_mcache->listmax[gm_size_to_class(OWN_SIZE)];
    s->n = (int)(2 * bound);
    s->nfreed = (int)bound + 1;
    for (int i = 1; i < s->n; i++)
        s->objs[i] = gm_malloc(OWN_SIZE);
}

static void own_free_some(struct own_side *s) {
    for (int i = 0; i < s->nfreed; i++)
        gm_free(s->objs[i]);
}

static void *own_thread_a(void *arg) {
    (void)arg;
    own_malloc_all(&own_a);
    pthread_barrier_wait(&own_barrier); /* 1: both allocated */
    own_free_some(&own_a);
    pthread_barrier_wait(&own_barrier); /* 2: A's batch is in */
    pthread_barrier_wait(&own_barrier); /* 3: B's batch is in */
    for (int i = 0; i < own_a.n; i++)
        own_got[i] = gm_malloc(OWN_SIZE);
    pthread_barrier_wait(&own_barrier); /* 4: B may flush again */
    for (int i = 0; i < own_a.n; i++)
        gm_free(own_got[i]);
    for (int i = own_a.nfreed; i < own_a.n; i++)
        gm_free(own_a.objs[i]);
    return NULL;
}

static void *own_thread_b(void *arg) {
    (void)arg;
    own_malloc_all(&own_b);
    pthread_barrier_wait(&own_barrier); /* 1 */
    pthread_barrier_wait(&own_barrier); /* 2 */
    own_free_some(&own_b);
    pthread_barrier_wait(&own_barrier); /* 3 */
    pthread_barrier_wait(&own_barrier); /* 4 */
    for (int i = own_b.nfreed; i < own_b.n; i++)
        gm_free(own_b.objs[i]);
    return NULL;
}

static int own_index(const struct own_side *s, void *p) {
    for (int i = 0; i < s->nfreed; i++)
        if (s->objs[i] == p)
            return i;
    return -1;
}

TEST(transfer_cache_gives_a_thread_its_own_batch_not_an_allocators) {
    gm_thread_flush(); /* the transfer caches start empty */
    pthread_t a, b;
    CHECK_EQ(pthread_barrier_init(&own_barrier, NULL, 2), 0);
    CHECK_EQ(pthread_create(&a, NULL, own_thread_a, NULL), 0);
    CHECK_EQ(pthread_create(&b, NULL, own_thread_b, NULL), 0);
    CHECK_EQ(pthread_join(a, NULL), 0);
    CHECK_EQ(pthread_join(b, NULL), 0);
    pthread_barrier_destroy(&own_barrier);
    CHECK(own_a.n >= 16 && own_a.n <= 1024);
    int own_before_other = 0, first_other = -1;
    for (int i = 0; i < own_a.n && first_other < 0; i++) {
        if (own_index(&own_b, own_got[i]) >= 0)
            first_other = i;
        else if (own_index(&own_a, own_got[i]) >= 0)
            own_before_other++;
    }
    CHECK_EQ(first_other, -1); /* B's batch is not A's to take */
    CHECK_EQ(own_before_other, own_a.nfreed);
    CHECK_EQ(gm_check_heap(), 0);
}

/* A burst of frees larger than a thread's list and the transfer cache:
 * the first batches flushed stay in the cache, and the later ones go to
 * their spans while their canaries are still in this core's cache (the
 * cache no longer evicts its oldest batch for each new one).  After the
 * list is used up, the next malloc receives the newest batch that fitted:
 * the fit-th half-list flushed (fit: the batches of TC_BYTES, at most
 * TC_BATCHES_MIN, with two threads alive).  Its own thread, so that the
 * lists start empty. */
static void *burst_thread(void *arg) {
    (void)arg;
    uint8_t sc = gm_size_to_class(TC_SIZE);
    void *first = gm_malloc(TC_SIZE); /* the thread's cache */
    CHECK(first != NULL);
    uint32_t listmax = gm_mcache_of(gm_tls.alloc)->listmax[sc];
    uint32_t half = listmax - listmax / 2;
    uint32_t fit = (uint32_t)(TC_BYTES / ((uint64_t)half * TC_SIZE));
    if (fit > TC_BATCHES_MIN)
        fit = TC_BATCHES_MIN;
    uint32_t n = listmax + 2 * fit * half; /* fit batches that stay, as many that go to the spans */
    void **objs = malloc(n * sizeof *objs);
    CHECK(objs != NULL && listmax >= 16 && fit >= 2);
    objs[0] = first;
    for (uint32_t i = 1; i < n; i++)
        CHECK((objs[i] = gm_malloc(TC_SIZE)) != NULL);
    for (uint32_t i = 0; i < n; i++)
        gm_free(objs[i]);
    for (uint32_t i = 0; i < listmax; i++) /* the list: the newest frees */
        CHECK(gm_malloc(TC_SIZE) != NULL);
    void *p = gm_malloc(TC_SIZE);
    int at = -1;
    for (uint32_t i = 0; i < n; i++)
        if (objs[i] == p)
            at = (int)i;
    /* A thread's first free goes to its span (test above): the list
     * starts at objs[1], and batch k (from 1) is objs[1 + (k - 1) * half ...]. */
    CHECK(at >= 1 + (int)((fit - 1) * half) && at < 1 + (int)(fit * half));
    free(objs);
    return NULL;
}

/* fn on a thread of its own, after gm_release (every transfer cache
 * empty); the heap checks out after. */
static void in_own_thread(void *(*fn)(void *)) {
    gm_release();
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, fn, NULL), 0);
    CHECK_EQ(pthread_join(t, NULL), 0);
    CHECK_EQ(gm_check_heap(), 0);
}

TEST(transfer_cache_keeps_its_batches_through_a_burst) { in_own_thread(burst_thread); }

/* Growing lists (mcache.c): a thread that frees a burst larger than its
 * list, allocates it back and frees it again gets a longer list for the
 * class (not at the first overflow), takes the next burst's first objects
 * from it rather than from the spans, stays within its budget, and goes
 * home (its lists block, its bound) at gm_thread_flush, its array
 * unmapped.  Its own thread, so that the lists start empty. */
#define GROW_SIZE 48
static uint64_t mcache_sys(void) {
    struct gm_stats st;
    st.size = sizeof st;
    CHECK_EQ(gm_read_stats(&st), 0);
    return st.mcache_sys;
}
static void burst(void **objs, uint32_t n, size_t size) {
    for (uint32_t i = 0; i < n; i++)
        CHECK((objs[i] = gm_malloc(size)) != NULL);
    for (uint32_t i = 0; i < n; i++)
        gm_free(objs[i]);
}
/* What gm_mcache.grown should be for c: every grown list's objects and entries above home. */
static uint64_t grown_sum(const gm_mcache *c) {
    uint64_t sum = 0;
    for (int sc = 1; sc < NUM_CLASSES; sc++) {
        CHECK(c->listmax[sc] >= c->listhome[sc]);
        sum += (uint64_t)(c->listmax[sc] - c->listhome[sc]) * (gm_class_to_size[sc] + LIST_UNIT);
    }
    return sum;
}
static void *grow_thread(void *arg) {
    (void)arg;
    uint8_t sc = gm_size_to_class(GROW_SIZE);
    void *first = gm_malloc(GROW_SIZE); /* the thread's cache */
    CHECK(first != NULL);
    gm_free(first);
    gm_mcache *c = gm_mcache_of(gm_tls.alloc);
    gm_mclass *m = gm_mclass_of(c, sc);
    uint32_t home = c->listhome[sc], n = 4 * home;
    CHECK(home >= 16 && c->listmax[sc] == home && c->grown == 0);
    void **objs = malloc(n * sizeof *objs);
    CHECK(objs != NULL);
    burst(objs, n, GROW_SIZE); /* the first overflow flushes */
    CHECK_EQ(c->listmax[sc], home);
    uint64_t sys = mcache_sys();
    burst(objs, n, GROW_SIZE); /* ran empty, then overflowed: grows */
    CHECK(c->listmax[sc] > home);
    CHECK(c->grown > 0 && c->grown == grown_sum(c));
    CHECK(mcache_sys() > sys); /* the grown array */
    CHECK_EQ(gm_check_heap(), 0);
    /* The next burst's first mallocs pop the list: no span is touched. */
    uint32_t len = gm_list_len(m->npush, m->limit, c->listmax[sc]);
    uint64_t nspan = c->nspan[sc], nrecv = c->nrecv[sc];
    CHECK(len > home);
    for (uint32_t i = 0; i < len; i++)
        CHECK((objs[i] = gm_malloc(GROW_SIZE)) != NULL);
    CHECK_EQ(c->nspan[sc], nspan);
    CHECK_EQ(c->nrecv[sc], nrecv);
    for (uint32_t i = 0; i < len; i++)
        gm_free(objs[i]);
    /* Every class in bursts, several times: within the budget. */
    long long tcache = 0;
    CHECK_EQ(gm_option_get("tcache_bytes", &tcache), 0);
    for (int round = 0; round < 4; round++)
        for (size_t size = 16; size <= 4096; size += size / 2)
            burst(objs, n, size);
    CHECK(c->grown == grown_sum(c) && c->grown <= (uint64_t)tcache * 32);
    CHECK_EQ(gm_check_heap(), 0);
    gm_thread_flush(); /* home again */
    CHECK_EQ(c->listmax[sc], home);
    CHECK(c->grown == 0 && grown_sum(c) == 0);
    CHECK(mcache_sys() <= sys);
    CHECK_EQ(gm_check_heap(), 0);
    free(objs);
    return NULL;
}

TEST(lists_grow_for_bursts_and_go_home) { in_own_thread(grow_thread); }

/* A grown list that has not run empty for decay_ms goes home at the
 * thread's next slow path (here decay_ms = 0: the next one, another
 * class's), keeping at most half its home bound of its newest objects. */
static void *trim_thread(void *arg) {
    (void)arg;
    uint8_t a = gm_size_to_class(GROW_SIZE);
    void *first = gm_malloc(GROW_SIZE);
    CHECK(first != NULL);
    gm_free(first);
    gm_mcache *c = gm_mcache_of(gm_tls.alloc);
    uint32_t home = c->listhome[a], n = 4 * home;
    void **objs = malloc(n * sizeof *objs);
    CHECK(objs != NULL);
    for (int i = 0; i < 3; i++)
        burst(objs, n, GROW_SIZE);
    CHECK(c->listmax[a] > home);
    long long decay = 0;
    CHECK_EQ(gm_option_get("decay_ms", &decay), 0);
    CHECK_EQ(gm_option_set("decay_ms", 0), 0);
    burst(objs, n, 4 * GROW_SIZE); /* another class's slow paths trim class a, unused since it grew */
    CHECK_EQ(gm_option_set("decay_ms", decay), 0);
    CHECK_EQ(c->listmax[a], home);
    gm_mclass *m = gm_mclass_of(c, a);
    CHECK(gm_list_len(m->npush, m->limit, home) <= home - home / 2);
    CHECK(c->grown == grown_sum(c));
    CHECK_EQ(gm_check_heap(), 0);
    free(objs);
    return NULL;
}

TEST(idle_grown_lists_go_home) { in_own_thread(trim_thread); }

/* The transfer cache takes one batch per thread with a cache (at least
 * TC_BATCHES_MIN, tc_room): with TC_BATCHES_MIN + 8 threads alive, a burst
 * of frees leaves more than TC_BYTES in it, and at most that many batches'
 * worth. */
enum { ROOM_IDLE = TC_BATCHES_MIN + 7 };
static pthread_barrier_t room_barrier;
static void *room_idle(void *arg) {
    (void)arg;
    gm_free(gm_malloc(16)); /* a cache */
    pthread_barrier_wait(&room_barrier); /* every cache alive */
    pthread_barrier_wait(&room_barrier); /* the burst is done */
    return NULL;
}

TEST(transfer_cache_grows_with_the_threads) {
    gm_release(); /* every transfer cache empty */
    gm_free(gm_malloc(TC_SIZE)); /* this thread's cache */
    pthread_t t[ROOM_IDLE];
    pthread_barrier_init(&room_barrier, NULL, ROOM_IDLE + 1);
    for (int i = 0; i < ROOM_IDLE; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, room_idle, NULL), 0);
    pthread_barrier_wait(&room_barrier);
    uint32_t threads = gm_mcache_threads();
    CHECK(threads >= ROOM_IDLE + 1);
    enum { N = 2 * TC_BYTES_MAX / TC_SIZE }; /* twice what the cache can take */
    static void *objs[N];
    for (int i = 0; i < N; i++)
        CHECK((objs[i] = gm_malloc(TC_SIZE)) != NULL);
    for (int i = 0; i < N; i++)
        gm_free(objs[i]);
    struct gm_stats s = stats();
    CHECK(s.transfer_bytes > TC_BYTES);
    CHECK(s.transfer_bytes <= (uint64_t)TC_BYTES / TC_BATCHES_MIN * threads);
    CHECK_EQ(gm_check_heap(), 0);
    pthread_barrier_wait(&room_barrier);
    for (int i = 0; i < ROOM_IDLE; i++)
        CHECK_EQ(pthread_join(t[i], NULL), 0);
    pthread_barrier_destroy(&room_barrier);
    gm_release();
    CHECK_EQ(gm_check_heap(), 0);
}

/* Partial spans go back to the thread that cached them last: A and B
 * each fill spans of one class, free half of every span and flush (B
 * last, so B's spans are on top of the partial list); A's next objects
 * come from A's spans, not B's, so that the two threads' objects do not
 * interleave in spans. */
#define AFF_SIZE 1024
#define AFF_A 64 /* objects: 8 spans of 8 */
#define AFF_B 32 /* 4 spans */
static void *aff_a[AFF_A], *aff_b[AFF_B], *aff_got[AFF_A / 2];
static pthread_barrier_t aff_barrier;

static void aff_fill(void **objs, int n) {
    for (int i = 0; i < n; i++)
        CHECK((objs[i] = gm_malloc(AFF_SIZE)) != NULL);
}
static void aff_halve(void **objs, int n) {
    for (int i = 0; i < n; i += 2)
        gm_free(objs[i]);
    gm_thread_flush(); /* the list to the spans, the current span back */
}

static void *aff_thread_a(void *arg) {
    (void)arg;
    aff_fill(aff_a, AFF_A);
    pthread_barrier_wait(&aff_barrier); /* 1: both filled their spans */
    aff_halve(aff_a, AFF_A);
    pthread_barrier_wait(&aff_barrier); /* 2: A's spans are partial */
    pthread_barrier_wait(&aff_barrier); /* 3: B's too, on top */
    for (int i = 0; i < AFF_A / 2; i++)
        CHECK((aff_got[i] = gm_malloc(AFF_SIZE)) != NULL);
    pthread_barrier_wait(&aff_barrier); /* 4 */
    for (int i = 0; i < AFF_A / 2; i++)
        gm_free(aff_got[i]);
    for (int i = 1; i < AFF_A; i += 2)
        gm_free(aff_a[i]);
    return NULL;
}

static void *aff_thread_b(void *arg) {
    (void)arg;
    aff_fill(aff_b, AFF_B);
    pthread_barrier_wait(&aff_barrier); /* 1 */
    pthread_barrier_wait(&aff_barrier); /* 2 */
    aff_halve(aff_b, AFF_B);
    pthread_barrier_wait(&aff_barrier); /* 3 */
    pthread_barrier_wait(&aff_barrier); /* 4 */
    for (int i = 1; i < AFF_B; i += 2)
        gm_free(aff_b[i]);
    return NULL;
}

TEST(partial_spans_go_back_to_their_thread) {
    gm_release();
    CHECK_EQ(pthread_barrier_init(&aff_barrier, NULL, 2), 0);
    pthread_t a, b;
    CHECK_EQ(pthread_create(&a, NULL, aff_thread_a, NULL), 0);
    CHECK_EQ(pthread_create(&b, NULL, aff_thread_b, NULL), 0);
    CHECK_EQ(pthread_join(a, NULL), 0);
    CHECK_EQ(pthread_join(b, NULL), 0);
    pthread_barrier_destroy(&aff_barrier);
    int in_b = 0, in_a = 0;
    for (int i = 0; i < AFF_A / 2; i++) {
        gm_mspan *s = gm_span_of((uintptr_t)aff_got[i]);
        for (int j = 0; j < AFF_B; j++)
            in_b += s != NULL && gm_span_of((uintptr_t)aff_b[j]) == s;
        for (int j = 0; j < AFF_A; j++)
            in_a += s != NULL && gm_span_of((uintptr_t)aff_a[j]) == s;
    }
    CHECK(in_a > 0);
    CHECK_EQ(in_b, 0);
    CHECK_EQ(gm_check_heap(), 0);
}

TEST(transfer_cache_hands_batches_between_threads) {
    gm_release(); /* our lists and every transfer cache empty */
    struct gm_stats s0 = stats();
    CHECK_EQ(s0.cached_bytes, 0);
    CHECK_EQ(s0.transfer_bytes, 0);
    for (int i = 0; i < TC_N; i++) {
        tc_objs[i] = gm_malloc(TC_SIZE);
        CHECK(tc_objs[i] != NULL);
    }
    /* One thread frees them all: its list overflows, and the older halves
     * go to the transfer cache (up to TC_BYTES) and then to the spans. */
    pthread_t t, freer;
    pthread_barrier_init(&tc_barrier, NULL, 2);
    CHECK_EQ(pthread_create(&freer, NULL, tc_free_all, NULL), 0);
    pthread_barrier_wait(&tc_barrier);
    struct gm_stats s1 = stats();
    CHECK_EQ(s1.heap_objects, s0.heap_objects);
    CHECK(s1.cached_bytes > 0); /* the freer's list */
    CHECK(s1.transfer_bytes > 0 && s1.transfer_bytes <= TC_BYTES);
    CHECK_EQ(s1.transfer_bytes % TC_SIZE, 0);
    CHECK_EQ(gm_check_heap(), 0);
    /* A new thread's first malloc of the class takes the newest batch whole:
     * an object the first thread freed, and the transfer cache shrinks. */
    void *got[2] = {NULL, NULL};
    CHECK_EQ(pthread_create(&t, NULL, tc_take, got), 0);
    CHECK_EQ(pthread_join(t, NULL), 0);
    int found = 0;
    for (int i = 0; i < TC_N; i++)
        found |= tc_objs[i] == got[0];
    CHECK(found);
    CHECK((uint64_t)(uintptr_t)got[1] < s1.transfer_bytes);
    pthread_barrier_wait(&tc_barrier);
    CHECK_EQ(pthread_join(freer, NULL), 0);
    pthread_barrier_destroy(&tc_barrier);
    struct gm_stats s2 = stats();
    CHECK_EQ(s2.heap_objects, s0.heap_objects);
    CHECK_EQ(s2.mallocs - s1.mallocs, 1);
    CHECK_EQ(s2.frees - s1.frees, 1);
    CHECK_EQ(gm_check_heap(), 0);
    /* gm_release empties the transfer caches into the spans. */
    gm_release();
    CHECK_EQ(stats().transfer_bytes, 0);
    CHECK_EQ(gm_check_heap(), 0);
    for (int i = 0; i < TC_N; i++)
        CHECK_EQ(gm_check(tc_objs[i]), GM_ERR_NOT_ALLOCATED);
}

/* ---- producer / consumer ------------------------------------------------------ */

#define QCAP 256
#define NPRODUCERS 2
#define NCONSUMERS 2
#define ITEMS (UNDER_TSAN ? 8000 : 40000) /* per producer */

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t nonempty, nonfull;
    void *items[QCAP];
    size_t sizes[QCAP];
    int head, count, producers_left;
} queue_t;

static queue_t q = {.lock = PTHREAD_MUTEX_INITIALIZER,
                    .nonempty = PTHREAD_COND_INITIALIZER,
                    .nonfull = PTHREAD_COND_INITIALIZER};
static atomic_uint_fast64_t consumed, corrupt, extra_mallocs;

/* An object carries its id and size at the front, then bytes derived from
 * its id: two live objects sharing memory would corrupt each other. */
static void stamp(void *p, uint64_t id, size_t size) {
    uint64_t *h = p;
    h[0] = id;
    h[1] = size;
    unsigned char *b = p;
    size_t end = size - 1 < 256 ? size - 1 : 256;
    for (size_t i = 16; i < end; i++)
        b[i] = (unsigned char)(id + i);
    if (size > 16)
        b[size - 1] = (unsigned char)(id ^ 0x5a);
}

static int stamp_ok(const void *p, uint64_t id, size_t size) {
    const uint64_t *h = p;
    if (h[0] != id || h[1] != size)
        return 0;
    const unsigned char *b = p;
    size_t end = size - 1 < 256 ? size - 1 : 256;
    for (size_t i = 16; i < end; i++)
        if (b[i] != (unsigned char)(id + i))
            return 0;
    return size == 16 || b[size - 1] == (unsigned char)(id ^ 0x5a);
}

static void *producer(void *arg) {
    int id = (int)(intptr_t)arg;
    rng_t r = {0xdeadbeefcafef00dull + (uint64_t)id};
    for (int i = 0; i < ITEMS; i++) {
        size_t n = random_size(&r);
        void *p = gm_malloc(n);
        if (p == NULL) {
            atomic_fetch_add(&corrupt, 1);
            continue;
        }
        uint64_t oid = ((uint64_t)id << 32) | (uint64_t)i;
        stamp(p, oid, n);
        pthread_mutex_lock(&q.lock);
        while (q.count == QCAP)
            pthread_cond_wait(&q.nonfull, &q.lock);
        int slot = (q.head + q.count) % QCAP;
        q.items[slot] = p;
        q.sizes[slot] = n;
        q.count++;
        pthread_cond_signal(&q.nonempty);
        pthread_mutex_unlock(&q.lock);
    }
    pthread_mutex_lock(&q.lock);
    q.producers_left--;
    pthread_cond_broadcast(&q.nonempty);
    pthread_mutex_unlock(&q.lock);
    return NULL;
}

static void *consumer(void *arg) {
    rng_t r = {0x1234567ull + (uint64_t)(intptr_t)arg};
    for (;;) {
        pthread_mutex_lock(&q.lock);
        while (q.count == 0 && q.producers_left > 0)
            pthread_cond_wait(&q.nonempty, &q.lock);
        if (q.count == 0) {
            pthread_mutex_unlock(&q.lock);
            break;
        }
        void *p = q.items[q.head];
        size_t n = q.sizes[q.head];
        q.head = (q.head + 1) % QCAP;
        q.count--;
        pthread_cond_signal(&q.nonfull);
        pthread_mutex_unlock(&q.lock);
        uint64_t oid = ((const uint64_t *)p)[0];
        if (!stamp_ok(p, oid, n) || gm_check(p) != GM_OK)
            atomic_fetch_add(&corrupt, 1);
        gm_free(p); /* a cross-thread free */
        atomic_fetch_add(&consumed, 1);
        /* Some allocation of its own, reusing what it just freed. */
        if (rng(&r) % 4 == 0) {
            size_t m = random_size(&r);
            void *x = gm_malloc(m);
            if (x != NULL) {
                stamp(x, ~(uint64_t)0, m);
                if (!stamp_ok(x, ~(uint64_t)0, m))
                    atomic_fetch_add(&corrupt, 1);
                gm_free(x);
                atomic_fetch_add(&extra_mallocs, 1);
            }
        }
    }
    return NULL;
}

static void run_producer_consumer(void) {
    gm_thread_flush();
    atomic_store(&consumed, 0);
    atomic_store(&corrupt, 0);
    atomic_store(&extra_mallocs, 0);
    struct gm_stats s0 = stats();
    q.producers_left = NPRODUCERS;
    pthread_t t[NPRODUCERS + NCONSUMERS];
    for (int i = 0; i < NPRODUCERS; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, producer, (void *)(intptr_t)i), 0);
    for (int i = 0; i < NCONSUMERS; i++)
        CHECK_EQ(pthread_create(&t[NPRODUCERS + i], NULL, consumer, (void *)(intptr_t)i), 0);
    for (int i = 0; i < NPRODUCERS + NCONSUMERS; i++)
        CHECK_EQ(pthread_join(t[i], NULL), 0);
    CHECK_EQ(atomic_load(&corrupt), 0);
    CHECK_EQ(atomic_load(&consumed), (uint64_t)NPRODUCERS * ITEMS);
    CHECK_EQ(q.count, 0);
    gm_thread_flush();
    struct gm_stats s1 = stats();
    uint64_t total = (uint64_t)NPRODUCERS * ITEMS + atomic_load(&extra_mallocs);
    CHECK_EQ(s1.mallocs - s0.mallocs, total);
    CHECK_EQ(s1.frees - s0.frees, total);
    CHECK_EQ(s1.heap_objects, s0.heap_objects);
    CHECK_EQ(s1.num_threads, s0.num_threads);
    CHECK_EQ(s1.cached_bytes, 0);
    CHECK_EQ(s1.transfer_bytes, 0);
    CHECK_EQ(gm_check_heap(), 0);
}

TEST(producer_consumer_cross_thread_frees) { run_producer_consumer(); }

/* Tiny objects across threads: producers allocate 1 to 8 bytes from their
 * current blocks while consumers free earlier objects of the same blocks,
 * racing on the blocks' words. */
static void q_put(void *p, size_t word) {
    pthread_mutex_lock(&q.lock);
    while (q.count == QCAP)
        pthread_cond_wait(&q.nonfull, &q.lock);
    int slot = (q.head + q.count) % QCAP;
    q.items[slot] = p;
    q.sizes[slot] = word;
    q.count++;
    pthread_cond_signal(&q.nonempty);
    pthread_mutex_unlock(&q.lock);
}

static int q_get(void **p, size_t *word) {
    pthread_mutex_lock(&q.lock);
    while (q.count == 0 && q.producers_left > 0)
        pthread_cond_wait(&q.nonempty, &q.lock);
    if (q.count == 0) {
        pthread_mutex_unlock(&q.lock);
        return 0;
    }
    *p = q.items[q.head];
    *word = q.sizes[q.head];
    q.head = (q.head + 1) % QCAP;
    q.count--;
    pthread_cond_signal(&q.nonfull);
    pthread_mutex_unlock(&q.lock);
    return 1;
}

static void *tiny_producer(void *arg) {
    int id = (int)(intptr_t)arg;
    for (int i = 0; i < ITEMS; i++) {
        size_t n = (size_t)(i % 8) + 1;
        unsigned char *p = gm_malloc(n);
        if (p == NULL) {
            atomic_fetch_add(&corrupt, 1);
            continue;
        }
        unsigned char tag = (unsigned char)(i * 7 + id);
        memset(p, tag, n);
        q_put(p, n | (size_t)tag << 8);
    }
    pthread_mutex_lock(&q.lock);
    q.producers_left--;
    pthread_cond_broadcast(&q.nonempty);
    pthread_mutex_unlock(&q.lock);
    return NULL;
}

static void *tiny_consumer(void *arg) {
    (void)arg;
    void *p;
    size_t word;
    while (q_get(&p, &word)) {
        size_t n = word & 0xff;
        unsigned char tag = (unsigned char)(word >> 8), *b = p;
        for (size_t k = 0; k < n; k++)
            if (b[k] != tag)
                atomic_fetch_add(&corrupt, 1);
        if (gm_check(p) != GM_OK || gm_usable_size(p) < n)
            atomic_fetch_add(&corrupt, 1);
        gm_free(p);
        atomic_fetch_add(&consumed, 1);
    }
    return NULL;
}

TEST(tiny_objects_freed_across_threads) {
    CHECK_EQ(gm_option_set("tiny", 1), 0);
    gm_thread_flush();
    atomic_store(&consumed, 0);
    atomic_store(&corrupt, 0);
    struct gm_stats s0 = stats();
    q.producers_left = NPRODUCERS;
    pthread_t t[NPRODUCERS + NCONSUMERS];
    for (int i = 0; i < NPRODUCERS; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, tiny_producer, (void *)(intptr_t)i), 0);
    for (int i = 0; i < NCONSUMERS; i++)
        CHECK_EQ(pthread_create(&t[NPRODUCERS + i], NULL, tiny_consumer, (void *)(intptr_t)i), 0);
    for (int i = 0; i < NPRODUCERS + NCONSUMERS; i++)
        CHECK_EQ(pthread_join(t[i], NULL), 0);
    CHECK_EQ(gm_option_set("tiny", 0), 0);
    CHECK_EQ(atomic_load(&corrupt), 0);
    CHECK_EQ(atomic_load(&consumed), (uint64_t)NPRODUCERS * ITEMS);
    gm_thread_flush();
    struct gm_stats s1 = stats();
    CHECK_EQ(s1.tiny_mallocs - s0.tiny_mallocs, (uint64_t)NPRODUCERS * ITEMS);
    CHECK_EQ(s1.tiny_frees - s0.tiny_frees, (uint64_t)NPRODUCERS * ITEMS);
    CHECK_EQ(s1.heap_objects, s0.heap_objects); /* every block went back */
    CHECK_EQ(gm_check_heap(), 0);
}

/* The same with the heap profile sampling on every thread: objects sampled
 * on producers are taken out of the profile by the consumers' frees. */
static void profile_totals(uint64_t *allocs, uint64_t *frees) {
    static struct gm_profile_record recs[4096];
    int n = gm_profile_read(recs, 4096, sizeof(struct gm_profile_record));
    *allocs = *frees = 0;
    for (int i = 0; i < n && i < 4096; i++) {
        *allocs += recs[i].alloc_objects;
        *frees += recs[i].free_objects;
    }
}

TEST(producer_consumer_profiled) {
    uint64_t a0, f0, a1, f1;
    profile_totals(&a0, &f0);
    CHECK_EQ(gm_option_set("profile_rate", 2048), 0);
    run_producer_consumer();
    CHECK_EQ(gm_option_set("profile_rate", 0), 0);
    profile_totals(&a1, &f1);
    CHECK(a1 - a0 > 100);
    CHECK_EQ(a1 - a0, f1 - f0); /* everything sampled was freed, and counted so */
}
/* ---- fork while other threads allocate --------------------------------------- */

static atomic_int stop_churn;
static atomic_uint_fast64_t churn_ops;

static void *churn(void *arg) {
    rng_t r = {0xabcdef12345ull * (uint64_t)((intptr_t)arg + 1)};
    enum { K = 64 };
    void *held[K] = {0};
    while (!atomic_load_explicit(&stop_churn, memory_order_relaxed)) {
        int i = (int)(rng(&r) % K);
        if (held[i] != NULL) {
            gm_free(held[i]);
            held[i] = NULL;
        } else {
            size_t n = random_size(&r);
            held[i] = gm_malloc(n);
            if (held[i] != NULL)
                memset(held[i], 0x33, n < 32 ? n : 32);
        }
        atomic_fetch_add_explicit(&churn_ops, 1, memory_order_relaxed);
    }
    for (int i = 0; i < K; i++)
        gm_free(held[i]);
    return NULL;
}

/* In the child: only this thread exists.  Use the heap, check it, exit. */
static int child_body(void) {
    alarm(10); /* a deadlocked child dies of SIGALRM instead of hanging the test */
    if (gm_check_heap() != 0)
        return 1;
    void *p[100];
    for (int i = 0; i < 100; i++) {
        size_t n = i == 99 ? 300000 : 16 + (size_t)i * 37;
        p[i] = gm_malloc(n);
        if (p[i] == NULL)
            return 2;
        memset(p[i], i, n);
    }
    for (int i = 0; i < 100; i++)
        gm_free(p[i]);
    gm_thread_flush();
    if (gm_check_heap() != 0)
        return 3;
    struct gm_stats st = stats();
    if (st.num_threads != 1) /* the other threads' caches were reclaimed */
        return 4;
    return 0;
}

TEST(fork_while_threads_allocate) {
    if (UNDER_TSAN) {
        /* fork() runs the allocator's atfork handler, which holds every
         * allocator lock at once (registry, 67 class locks, heap, ...): more
         * than the 64 that TSan's deadlock detector can track, so TSan dies
         * with "CHECK failed: sanitizer_deadlock_detector.h:67".  A TSan
         * limitation: this test runs in the release, debug and ASan builds. */
        fprintf(stderr, "(TSan build: fork test skipped)\n");
        return;
    }
    enum { NCHURN = 3, NFORKS = 20 };
    atomic_store(&stop_churn, 0);
    pthread_t t[NCHURN];
    for (int i = 0; i < NCHURN; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, churn, (void *)(intptr_t)i), 0);
    struct timespec pause = {0, 10 * 1000 * 1000}; /* 20 forks over about 200 ms */
    int failures = 0;
    for (int k = 0; k < NFORKS; k++) {
        nanosleep(&pause, NULL);
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid < 0)
            break;
        if (pid == 0)
            _exit(child_body());
        int status = 0;
        CHECK_EQ(waitpid(pid, &status, 0), pid);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            failures++;
            if (WIFEXITED(status))
                fprintf(stderr, "fork %d: child exited with status %d\n", k, WEXITSTATUS(status));
            else
                fprintf(stderr, "fork %d: child killed by signal %d\n", k,
                        WIFSIGNALED(status) ? WTERMSIG(status) : -1);
        }
    }
    atomic_store(&stop_churn, 1);
    for (int i = 0; i < NCHURN; i++)
        CHECK_EQ(pthread_join(t[i], NULL), 0);
    CHECK_EQ(failures, 0);
    CHECK(atomic_load(&churn_ops) > 0);
    gm_thread_flush();
    CHECK_EQ(gm_check_heap(), 0);
}

/* A process ends when its last thread does, scavenger or not: a fork child
 * whose only thread (which had started the scavenger) calls pthread_exit
 * must end, not linger with the scavenger as its last thread. */
static int count_threads(void) {
    FILE *f = fopen("/proc/self/stat", "r");
    int n = -1;
    if (f != NULL) {
        /* Field 20 is num_threads; the command (field 2) has no spaces here. */
        if (fscanf(f, "%*d %*s %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %d", &n) != 1)
            n = -1;
        fclose(f);
    }
    return n;
}

TEST(scavenger_lets_the_process_end) {
    if (UNDER_TSAN) {
        printf("(TSan build: fork test skipped)\n");
        return;
    }
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        gm_option_set("scavenger", 1); /* off in the rest of these tests */
        gm_free(gm_malloc(8 << 20)); /* pages back to the heap: the scavenger starts */
        for (int i = 0; i < 200 && count_threads() < 2; i++)
            usleep(5000);
        if (count_threads() != 2)
            _exit(3);
        pthread_exit(NULL); /* the last program thread: the process must end */
    }
    int status = 0;
    pid_t got = 0;
    for (int i = 0; i < 1000 && got == 0; i++) { /* up to 10 s */
        got = waitpid(pid, &status, WNOHANG);
        if (got == 0)
            usleep(10000);
    }
    if (got == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    CHECK(got == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        fprintf(stderr, "child status %#x\n", status);
}

int main(void) {
    /* No background scavenger thread: these tests count threads and caches. */
    gm_option_set("scavenger", 0);
    RUN(exiting_threads_return_caches);
    RUN(many_short_lived_threads);
    RUN(new_thread_adopts_an_exited_threads_cache);
    RUN(scavenger_flushes_abandoned_caches);
    RUN(free_only_thread);
    RUN(handed_objects_are_not_taken_back_by_their_new_thread);
    RUN(transfer_cache_hands_batches_between_threads);
    RUN(transfer_cache_gives_a_thread_its_own_batch_not_an_allocators);
    RUN(transfer_cache_keeps_its_batches_through_a_burst);
    RUN(lists_grow_for_bursts_and_go_home);
    RUN(idle_grown_lists_go_home);
    RUN(transfer_cache_grows_with_the_threads);
    RUN(partial_spans_go_back_to_their_thread);
    RUN(producer_consumer_cross_thread_frees);
    RUN(producer_consumer_profiled);
    RUN(tiny_objects_freed_across_threads);
    RUN(scavenger_lets_the_process_end);
    RUN(fork_while_threads_allocate);
    return gmtest_summary();
}
