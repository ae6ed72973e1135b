/*
 * test_heaps.c: heaps programs hold (heap.c).
 *
 *   - every call on one heap: objects of each kind (small, tiny-sized,
 *     large, aligned, zeroed, reallocated) come from the heap, gm_heap_of
 *     names it, its statistics and gm_heap_visit agree with what is live,
 *     gm_free and gm_heap_free both free them;
 *   - 8 threads allocate into 4 heaps and hand half of what they allocate
 *     to another thread, which frees it (cross-thread frees); then the heaps
 *     are destroyed with objects still live: gm_check_heap is clean and the
 *     global statistics are back where they started;
 *   - a heap's limit is exact under 4 threads and fails only that heap's
 *     allocations (ENOMEM); the default heap goes on;
 *   - scopes: gm_heap_set_default sends gm_malloc into the heap; a heap that
 *     was a scope is not destroyed while it has live objects (EBUSY);
 *     gm_heap_keep_live makes destroy refuse the same way (numpy's arrays);
 *     gm_heap_delete hands live objects to the default heap;
 *   - bad input: destroying twice, a destroyed or made-up handle, freeing
 *     through the wrong heap, the default heap's handle where a heap of
 *     one's own is needed, an allocation racing its heap's destroy;
 *   - destroy tells the heap profile: sampled objects it frees count as freed;
 *   - fault_on_destroy: touching destroyed memory is SIGSEGV (in a child);
 *     gm_release gives the quarantined pages back;
 *   - the default heap's visit sees objects in the spans of every thread's
 *     cache and its large objects; a heap's total_alloc counts its freed
 *     large objects; a destroyed heap's sampled objects leave the profile;
 *   - destroy needs no memory: with every metadata mmap failing, its spans
 *     all go back (or to the quarantine);
 *   - a class's transfer cache descriptors come with its first batch.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gm_internal.h"
#include "gmtest.h"

static struct gm_stats global(void) {
    struct gm_stats st = {.size = sizeof st};
    gm_thread_flush();
    CHECK_EQ(gm_read_stats(&st), 0);
    return st;
}

static struct gm_heap_stats hstats(gm_heap_t *h) {
    struct gm_heap_stats st;
    memset(&st, 0, sizeof st);
    st.size = sizeof st;
    CHECK_EQ(gm_heap_read_stats(h, &st), 0);
    return st;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t rnd(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1Du;
}

/* ---- one heap, every call ------------------------------------------------------- */

struct visit_acc {
    uint64_t n, bytes;
};
static int count_visit(void *p, size_t size, void *arg) {
    struct visit_acc *a = arg;
    (void)p;
    a->n++;
    a->bytes += size;
    return 0;
}
static int stop_at_third(void *p, size_t size, void *arg) {
    (void)p, (void)size;
    return ++*(int *)arg == 3 ? 42 : 0;
}

TEST(one_heap_every_call) {
    struct gm_heap_options o = {.size = sizeof o, .name = "requests"};
    gm_heap_t *h = gm_heap_new(&o);
    CHECK(h != NULL);
    if (h == NULL)
        return;
    CHECK(h != gm_heap_default());
    void *small = gm_heap_malloc(h, 100);
    void *tiny = gm_heap_malloc(h, 8);
    void *large = gm_heap_malloc(h, 1 << 20);
    void *al = gm_heap_aligned_alloc(h, 4096, 5000);
    unsigned char *z = gm_heap_calloc(h, 300, 7);
    CHECK(small && tiny && large && al && z);
    CHECK_EQ((uintptr_t)al % 4096, 0);
    int zeros = 1;
    for (int i = 0; i < 2100; i++)
        zeros &= z[i] == 0;
    CHECK(zeros);
    void *objs[] = {small, tiny, large, al, z};
    for (int i = 0; i < 5; i++) {
        CHECK(gm_heap_of(objs[i]) == h);
        CHECK_EQ(gm_check(objs[i]), GM_OK);
    }
    void *d = gm_malloc(100);
    CHECK(gm_heap_of(d) == gm_heap_default());
    CHECK(gm_heap_of((char *)small + 1) == NULL);
    CHECK(gm_heap_of(&zeros) == NULL);

    memset(small, 0xab, 100);
    void *grown = gm_heap_realloc(h, small, 3000); /* moves: another class */
    CHECK(grown != NULL && gm_heap_of(grown) == h);
    CHECK(((unsigned char *)grown)[99] == 0xab);
    void *moved = gm_heap_realloc(h, d, 200); /* a default-heap object moves into h */
    CHECK(moved != NULL && gm_heap_of(moved) == h);

    struct gm_heap_stats st = hstats(h);
    CHECK(strcmp(st.name, "requests") == 0);
    CHECK_EQ(st.objects, 6);
    CHECK_EQ(st.large_objects, 1);
    CHECK(st.inuse >= st.alloc && st.alloc >= (1 << 20) + 3000 + 5000);
    CHECK(st.mallocs >= 7 && st.mallocs - st.frees == 6);
    CHECK_EQ(st.limit, 0);
    struct visit_acc acc = {0, 0};
    CHECK_EQ(gm_heap_visit(h, count_visit, &acc), 0);
    CHECK_EQ(acc.n, 6);
    CHECK_EQ(acc.bytes, st.alloc);
    int calls = 0;
    CHECK_EQ(gm_heap_visit(h, stop_at_third, &calls), 42);
    CHECK_EQ(calls, 3);
    /* by_size adds up to the live objects (class 0: large ones) */
    uint64_t by = 0;
    for (int c = 0; c < GM_NUM_SIZE_CLASSES; c++)
        by += st.by_size[c].mallocs - st.by_size[c].frees;
    CHECK_EQ(by, 6);
    CHECK_EQ(st.by_size[0].mallocs - st.by_size[0].frees, st.large_objects);

    CHECK_EQ(gm_heap_free(h, grown), GM_OK);
    gm_free(tiny);
    CHECK_EQ(gm_free_checked(large), GM_OK);
    CHECK_EQ(gm_heap_free(h, al), GM_OK);
    gm_free(z);
    gm_free(moved);
    st = hstats(h);
    CHECK_EQ(st.objects, 0);
    CHECK_EQ(st.alloc, 0);
    CHECK_EQ(gm_heap_destroy(h), 0);
    CHECK_EQ(gm_check_heap(), 0);
}

/* ---- 8 threads, 4 heaps, cross-thread frees, destroy ------------------------------ */

#define NTHREADS 8
#define NHEAPS 4
#define SLOTS 4096

static gm_heap_t *heaps[NHEAPS];
/* mailbox[t]: objects other threads handed to thread t to free */
static _Atomic(void *) mailbox[NTHREADS][SLOTS];
static atomic_int handed_out, handed_freed;

static void *churn(void *arg) {
    int me = (int)(intptr_t)arg;
    uint64_t s = rng_state + (uint64_t)me * 7919;
    int rounds = SLOW_BUILD || UNDER_SANITIZER ? 20000 : 200000;
    for (int i = 0; i < rounds; i++) {
        uint64_t r = rnd(&s);
        gm_heap_t *h = heaps[r % NHEAPS];
        size_t size = (r >> 8) % 64 == 0 ? 40000 + (r >> 20) % 100000 : 1 + (r >> 20) % 2000;
        unsigned char *p = gm_heap_malloc(h, size);
        if (p == NULL) {
            CHECK(p != NULL);
            continue;
        }
        p[0] = (unsigned char)me;
        p[size - 1] = (unsigned char)me;
        if ((r >> 40) % 4 == 0) {
            gm_free(p); /* at once, here */
            continue;
        }
        if ((r >> 40) % 4 == 1)
            continue; /* stays live until destroy */
        /* to another thread's mailbox; free what was there */
        int to = (int)((r >> 44) % NTHREADS);
        void *old = atomic_exchange(&mailbox[to][(r >> 48) % SLOTS], p);
        atomic_fetch_add(&handed_out, 1);
        if (old != NULL) {
            CHECK(gm_heap_of(old) != NULL);
            gm_free(old);
            atomic_fetch_add(&handed_freed, 1);
        }
        /* and some of my own mailbox */
        void *mine = atomic_exchange(&mailbox[me][(r >> 52) % SLOTS], NULL);
        if (mine != NULL) {
            gm_free(mine);
            atomic_fetch_add(&handed_freed, 1);
        }
    }
    gm_thread_flush();
    return NULL;
}

TEST(eight_threads_four_heaps_then_destroy) {
    struct gm_stats before = global();
    for (int i = 0; i < NHEAPS; i++) {
        heaps[i] = gm_heap_new(NULL);
        CHECK(heaps[i] != NULL);
    }
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, churn, (void *)(intptr_t)i), 0);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    CHECK(atomic_load(&handed_freed) > 0);
    CHECK_EQ(gm_check_heap(), 0);
    uint64_t live = 0;
    for (int i = 0; i < NHEAPS; i++) {
        struct gm_heap_stats st = hstats(heaps[i]);
        struct visit_acc acc = {0, 0};
        CHECK_EQ(gm_heap_visit(heaps[i], count_visit, &acc), 0);
        CHECK_EQ(acc.n, st.objects);
        CHECK_EQ(acc.bytes, st.alloc);
        CHECK(st.objects > 0);
        live += st.objects;
    }
    struct gm_stats mid = global();
    CHECK_EQ(mid.heap_objects - before.heap_objects, live);
    /* the mailboxes' objects are freed by destroy with the rest */
    for (int i = 0; i < NHEAPS; i++)
        CHECK_EQ(gm_heap_destroy(heaps[i]), 0);
    memset(mailbox, 0, sizeof mailbox);
    CHECK_EQ(gm_check_heap(), 0);
    struct gm_stats after = global();
    CHECK_EQ(after.heap_objects, before.heap_objects);
    CHECK_EQ(after.heap_alloc, before.heap_alloc);
    CHECK_EQ(after.heap_inuse, before.heap_inuse);
    CHECK_EQ(after.mallocs - before.mallocs, after.frees - before.frees);
}

/* ---- quotas ------------------------------------------------------------------------ */

static gm_heap_t *quota_heap;
static atomic_int quota_failures, quota_bad_errno;
#define QUOTA ((uint64_t)8 << 20)

static void *fill_quota(void *arg) {
    (void)arg;
    void **mine = gm_malloc(sizeof(void *) * 100000);
    int n = 0;
    for (int round = 0; round < 20; round++) {
        for (;;) {
            errno = 0;
            void *p = gm_heap_malloc(quota_heap, n % 7 == 0 ? 70000 : 4000);
            if (p == NULL) {
                atomic_fetch_add(&quota_failures, 1);
                if (errno != ENOMEM)
                    atomic_fetch_add(&quota_bad_errno, 1);
                break;
            }
            mine[n++] = p;
        }
        /* the default heap is not limited by it */
        void *d = gm_malloc(100000);
        CHECK(d != NULL);
        gm_free(d);
        while (n > 0)
            gm_free(mine[--n]);
    }
    gm_free(mine);
    return NULL;
}

TEST(quota_is_exact_and_the_heaps_own) {
    struct gm_heap_options o = {.size = sizeof o, .limit = QUOTA, .name = "quota"};
    quota_heap = gm_heap_new(&o);
    CHECK(quota_heap != NULL);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, fill_quota, NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    struct gm_heap_stats st = hstats(quota_heap);
    CHECK_EQ(st.limit, QUOTA);
    CHECK(st.peak_inuse <= QUOTA);
    CHECK(st.peak_inuse > QUOTA / 2);
    CHECK_EQ(atomic_load(&quota_failures), 80);
    CHECK_EQ(atomic_load(&quota_bad_errno), 0);
    CHECK_EQ(st.objects, 0);
    /* one object larger than the limit fails; the heap still works */
    errno = 0;
    CHECK(gm_heap_malloc(quota_heap, QUOTA + 1) == NULL && errno == ENOMEM);
    void *p = gm_heap_malloc(quota_heap, 64);
    CHECK(p != NULL);
    gm_free(p);
    CHECK_EQ(gm_heap_destroy(quota_heap), 0);
    CHECK_EQ(gm_check_heap(), 0);
}

/* ---- scopes -------------------------------------------------------------------------- */

TEST(scope_then_busy_then_destroy) {
    gm_heap_t *h = gm_heap_new(NULL);
    CHECK(gm_heap_get_default() == gm_heap_default());
    gm_heap_t *prev = gm_heap_set_default(h);
    CHECK(prev == gm_heap_default());
    CHECK(gm_heap_get_default() == h);
    void *a = gm_malloc(48), *b = gm_malloc(1 << 20), *c = gm_calloc(10, 10);
    CHECK(gm_heap_of(a) == h && gm_heap_of(b) == h && gm_heap_of(c) == h);
    /* the default heap's handle names the default heap, scope or not */
    void *explicit[] = {gm_heap_malloc(gm_heap_default(), 48), gm_heap_calloc(gm_heap_default(), 3, 16),
                        gm_heap_aligned_alloc(gm_heap_default(), 4096, 100),
                        gm_heap_malloc(gm_heap_default(), 1 << 20)};
    for (int i = 0; i < 4; i++) {
        CHECK(gm_heap_of(explicit[i]) == gm_heap_default());
        gm_free(explicit[i]);
    }
    /* destroy refuses while the heap is some thread's default */
    CHECK_EQ(gm_heap_destroy(h), EBUSY);
    CHECK(gm_heap_set_default(prev) == h);
    void *d = gm_malloc(48);
    CHECK(gm_heap_of(d) == gm_heap_default());
    gm_free(d);
    /* and while objects allocated in the scope live */
    CHECK_EQ(gm_heap_destroy(h), EBUSY);
    struct gm_heap_stats st = hstats(h);
    CHECK_EQ(st.objects, 3);
    gm_free(a);
    gm_free(b);
    gm_free(c);
    CHECK_EQ(gm_heap_destroy(h), 0);
    CHECK(gm_heap_get_default() == gm_heap_default());
    /* set_default(NULL) restores the default heap too */
    gm_heap_t *h2 = gm_heap_new(NULL);
    gm_heap_set_default(h2);
    CHECK(gm_heap_set_default(NULL) == h2);
    CHECK(gm_heap_get_default() == gm_heap_default());
    CHECK_EQ(gm_heap_destroy(h2), 0);
    CHECK_EQ(gm_check_heap(), 0);
}

/* gm_heap_keep_live: destroy refuses while the heap has live objects
 * (EBUSY, nothing freed), and goes through once they are gone; delete
 * still works; bad handles and the default heap are refused. */
TEST(keep_live_refuses_destroy_under_live_objects) {
    gm_heap_t *h = gm_heap_new(NULL);
    CHECK(h != NULL);
    CHECK_EQ(gm_heap_keep_live(h), 0);
    char *a = gm_heap_malloc(h, 100), *b = gm_heap_malloc(h, 100000);
    CHECK(a != NULL && b != NULL);
    memset(a, 0x5a, 100);
    memset(b, 0xa5, 100000);
    CHECK_EQ(gm_heap_destroy(h), EBUSY);
    CHECK_EQ(gm_heap_destroy(h), EBUSY);
    CHECK(a[99] == 0x5a && b[99999] == (char)0xa5); /* untouched */
    CHECK(gm_heap_of(a) == h && gm_heap_of(b) == h);
    CHECK_EQ(hstats(h).objects, 2);
    gm_free(a);
    CHECK_EQ(gm_heap_destroy(h), EBUSY); /* one left */
    gm_free(b);
    CHECK_EQ(gm_heap_destroy(h), 0);
    CHECK_EQ(gm_heap_keep_live(h), EINVAL); /* destroyed */
    CHECK_EQ(gm_heap_keep_live(gm_heap_default()), EINVAL);
    CHECK_EQ(gm_heap_keep_live(NULL), EINVAL);
    /* delete hands the live objects over instead */
    gm_heap_t *h2 = gm_heap_new(NULL);
    CHECK_EQ(gm_heap_keep_live(h2), 0);
    void *c = gm_heap_malloc(h2, 64);
    CHECK_EQ(gm_heap_destroy(h2), EBUSY);
    CHECK_EQ(gm_heap_delete(h2), 0);
    CHECK(gm_heap_of(c) == gm_heap_default());
    gm_free(c);
    /* a heap in the same slot later is a new heap: not kept live */
    gm_heap_t *h3 = gm_heap_new(NULL);
    CHECK(gm_heap_malloc(h3, 64) != NULL);
    CHECK_EQ(gm_heap_destroy(h3), 0);
    CHECK_EQ(gm_check_heap(), 0);
}

TEST(delete_hands_objects_to_the_default_heap) {
    struct gm_stats before = global();
    gm_heap_t *h = gm_heap_new(NULL);
    void *p[100];
    for (int i = 0; i < 100; i++) {
        p[i] = gm_heap_malloc(h, i % 10 == 0 ? 100000 : 16 + i * 8);
        memset(p[i], i, 16);
    }
    CHECK_EQ(gm_heap_delete(h), 0);
    CHECK(gm_heap_malloc(h, 10) == NULL); /* the handle is gone */
    for (int i = 0; i < 100; i++) {
        CHECK(gm_heap_of(p[i]) == gm_heap_default());
        CHECK(((unsigned char *)p[i])[15] == i);
    }
    CHECK_EQ(gm_check_heap(), 0);
    struct gm_stats mid = global();
    CHECK_EQ(mid.heap_objects - before.heap_objects, 100);
    for (int i = 0; i < 100; i++)
        CHECK_EQ(gm_free_checked(p[i]), GM_OK);
    struct gm_stats after = global();
    CHECK_EQ(after.heap_objects, before.heap_objects);
    CHECK_EQ(gm_check_heap(), 0);
}

/* ---- bad input ------------------------------------------------------------------------- */

TEST(bad_handles_and_wrong_heaps) {
    CHECK_EQ(gm_option_set("abort_on_error", 0), 0);
    gm_heap_t *h = gm_heap_new(NULL), *g = gm_heap_new(NULL);
    void *p = gm_heap_malloc(h, 100);
    void *d = gm_malloc(100);
    /* the wrong heap's call: an error, the object stays live */
    CHECK_EQ(gm_heap_free(g, p), GM_ERR_NOT_OURS);
    CHECK_EQ(gm_heap_free(g, d), GM_ERR_NOT_OURS);
    CHECK_EQ(gm_heap_free(h, (char *)p + 8), GM_ERR_INTERIOR);
    CHECK_EQ(gm_check(p), GM_OK);
    CHECK_EQ(gm_heap_free(gm_heap_default(), d), GM_OK);
    CHECK_EQ(gm_heap_free(h, p), GM_OK);
    CHECK_EQ(gm_heap_free(h, p), GM_ERR_NOT_ALLOCATED);
    /* destroy twice; a destroyed handle everywhere */
    CHECK_EQ(gm_heap_destroy(h), 0);
    CHECK_EQ(gm_heap_destroy(h), EINVAL);
    CHECK_EQ(gm_heap_delete(h), EINVAL);
    errno = 0;
    CHECK(gm_heap_malloc(h, 10) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(gm_heap_calloc(h, 1, 10) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(gm_heap_aligned_alloc(h, 64, 10) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(gm_heap_realloc(h, NULL, 10) == NULL && errno == EINVAL);
    struct gm_heap_stats st = {.size = sizeof st};
    CHECK_EQ(gm_heap_read_stats(h, &st), EINVAL);
    CHECK_EQ(gm_heap_visit(h, count_visit, NULL), EINVAL);
    errno = 0;
    CHECK(gm_heap_set_default(h) == NULL && errno == EINVAL);
    CHECK(gm_heap_get_default() == gm_heap_default());
    CHECK_EQ(gm_heap_free(h, d), GM_ERR_NOT_OURS);
    /* a new heap in the slot does not revive the old handle */
    gm_heap_t *h2 = gm_heap_new(NULL);
    CHECK(gm_heap_malloc(h, 10) == NULL);
    /* made-up handles */
    gm_heap_t *junk[] = {NULL, (gm_heap_t *)(uintptr_t)1, (gm_heap_t *)(uintptr_t)0xffffffffu,
                         (gm_heap_t *)(uintptr_t)-1, (gm_heap_t *)&st};
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
        errno = 0;
        CHECK(gm_heap_malloc(junk[i], 10) == NULL && errno == EINVAL);
        CHECK_EQ(gm_heap_destroy(junk[i]), EINVAL);
    }
    /* the default heap is not destroyed nor deleted */
    CHECK_EQ(gm_heap_destroy(gm_heap_default()), EINVAL);
    CHECK_EQ(gm_heap_delete(gm_heap_default()), EINVAL);
    /* bad options */
    struct gm_heap_options o = {.size = 3};
    errno = 0;
    CHECK(gm_heap_new(&o) == NULL && errno == EINVAL);
    o.size = sizeof o;
    o.fault_on_destroy = 7;
    errno = 0;
    CHECK(gm_heap_new(&o) == NULL && errno == EINVAL);
    /* a freed object of a destroyed heap: a bad free, reported, nothing else */
    gm_heap_t *k = gm_heap_new(NULL);
    void *q = gm_heap_malloc(k, 64);
    CHECK_EQ(gm_heap_destroy(k), 0);
    CHECK_EQ(gm_free_checked(q), GM_ERR_NOT_ALLOCATED);
    CHECK_EQ(gm_heap_destroy(g), 0);
    CHECK_EQ(gm_heap_destroy(h2), 0);
    CHECK_EQ(gm_check_heap(), 0);
    CHECK_EQ(gm_option_set("abort_on_error", 1), 0);
}

static gm_heap_t *racing_heap;
static atomic_int race_go, race_einval, race_other;
static void *alloc_racing(void *arg) {
    (void)arg;
    while (!atomic_load(&race_go))
        ;
    for (;;) {
        errno = 0;
        void *p = gm_heap_malloc(racing_heap, 256);
        if (p == NULL) {
            if (errno == EINVAL)
                atomic_fetch_add(&race_einval, 1);
            else
                atomic_fetch_add(&race_other, 1);
            break;
        }
        memset(p, 1, 256); /* memory handed out is ours until destroy */
    }
    return NULL;
}

TEST(allocations_racing_destroy_fail_cleanly) {
    int rounds = SLOW_BUILD || UNDER_SANITIZER ? 20 : 200;
    for (int r = 0; r < rounds; r++) {
        racing_heap = gm_heap_new(NULL);
        atomic_store(&race_go, 0);
        pthread_t t[3];
        for (int i = 0; i < 3; i++)
            pthread_create(&t[i], NULL, alloc_racing, NULL);
        atomic_store(&race_go, 1);
        usleep(200);
        CHECK_EQ(gm_heap_destroy(racing_heap), 0);
        for (int i = 0; i < 3; i++)
            pthread_join(t[i], NULL);
    }
    CHECK_EQ(atomic_load(&race_einval), 3 * rounds);
    CHECK_EQ(atomic_load(&race_other), 0);
    CHECK_EQ(gm_check_heap(), 0);
}

/* ---- the heap profile --------------------------------------------------------------- */

static void profile_totals(uint64_t *allocs, uint64_t *frees) {
    static struct gm_profile_record rec[4096];
    int n = gm_profile_read(rec, 4096, sizeof rec[0]);
    CHECK(n >= 0 && n < 4096);
    *allocs = *frees = 0;
    for (int i = 0; i < n; i++) {
        *allocs += rec[i].alloc_objects;
        *frees += rec[i].free_objects;
    }
}

TEST(destroy_frees_sampled_objects_in_the_profile) {
    uint64_t a0, f0, a1, f1, a2, f2;
    profile_totals(&a0, &f0);
    CHECK_EQ(gm_option_set("profile_rate", 1), 0); /* every allocation */
    gm_heap_t *h = gm_heap_new(NULL);
    for (int i = 0; i < 300; i++)
        CHECK(gm_heap_malloc(h, i % 50 == 0 ? 100000 : 24 + (size_t)i) != NULL);
    CHECK_EQ(gm_option_set("profile_rate", 0), 0);
    profile_totals(&a1, &f1);
    CHECK_EQ(a1 - a0, 300);
    CHECK_EQ(f1 - f0, 0);
    CHECK_EQ(gm_heap_destroy(h), 0);
    profile_totals(&a2, &f2);
    CHECK_EQ(a2, a1);
    CHECK_EQ(f2 - f0, 300);
    CHECK_EQ(gm_check_heap(), 0);
}

/* The objects on a destroyed heap's lists held free's canary (the secret):
 * none of it may reach the program through the spans that reuse their
 * pages, which hand slots out as they find them. */
TEST(a_destroyed_heaps_canaries_never_reach_the_program) {
    enum { N = 2000 };
    static void *objs[N], *again[4 * N];
    gm_release();
    gm_heap_t *h = gm_heap_new(NULL);
    CHECK(h != NULL);
    if (h == NULL)
        return;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (int i = 0; i < N; i++) {
        objs[i] = gm_heap_malloc(h, 48);
        CHECK(objs[i] != NULL);
        lo = (uintptr_t)objs[i] < lo ? (uintptr_t)objs[i] : lo;
        hi = (uintptr_t)objs[i] > hi ? (uintptr_t)objs[i] : hi;
    }
    for (int i = 0; i < N; i++)
        gm_free(objs[i]); /* to this thread's cache for h, and h's transfer cache */
    CHECK_EQ(gm_heap_destroy(h), 0);
    int reused = 0, secrets = 0;
    for (int i = 0; i < 4 * N; i++) {
        uint64_t *p = again[i] = gm_malloc(48);
        CHECK(p != NULL);
        reused += (uintptr_t)p >= lo && (uintptr_t)p <= hi;
        secrets += p[0] == gm_secret || p[1] == gm_secret || (p[0] ^ p[1]) == gm_secret;
    }
    CHECK(reused > N / 2); /* the test's point: the pages came back */
    CHECK_EQ(secrets, 0);
    for (int i = 0; i < 4 * N; i++)
        gm_free(again[i]);
    CHECK_EQ(gm_check_heap(), 0);
}

/* ---- fault_on_destroy ------------------------------------------------------------------ */

TEST(destroyed_memory_faults_when_asked) {
    /* (The child: not under ASan, whose handler reports the SEGV, another
     * status; nor TSan, which cannot fork with every lock held.) */
    pid_t pid = UNDER_SANITIZER ? -1 : fork();
    if (pid == 0) {
        struct gm_heap_options o = {.size = sizeof o, .fault_on_destroy = 1};
        gm_heap_t *h = gm_heap_new(&o);
        volatile char *small = gm_heap_malloc(h, 100);
        volatile char *large = gm_heap_malloc(h, 1 << 20);
        small[0] = large[0] = 1;
        if (gm_heap_destroy(h) != 0)
            _exit(3);
        /* new allocations do not reuse the range while it faults */
        for (int i = 0; i < 1000; i++) {
            char *p = gm_malloc(100);
            if (p == small)
                _exit(4);
        }
        (void)small[0]; /* a dangling read */
        _exit(0);
    }
    if (pid > 0) {
        int status = 0;
        waitpid(pid, &status, 0);
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV);
    }

    /* in this process: the quarantine goes back on gm_release */
    struct gm_heap_options o = {.size = sizeof o, .fault_on_destroy = 1};
    gm_heap_t *h = gm_heap_new(&o);
    for (int i = 0; i < 1000; i++)
        CHECK(gm_heap_malloc(h, 1000) != NULL);
    CHECK_EQ(gm_heap_destroy(h), 0);
    CHECK_EQ(gm_check_heap(), 0);
    gm_release();
    CHECK_EQ(gm_check_heap(), 0);
    CHECK_EQ(LOAD_RELAXED(&gm_mheap.quarantined_pages), 0);
}

/* Destroy cannot fail once it has begun (the heap is dead, its caches
 * dropped), so it must not need memory of its own: with every metadata
 * mmap failing (fuzz_ops: the spans of two destroyed heaps stayed in
 * heap_inuse, on no list, and the heap check failed), every span still goes
 * back to the page heap, or to the quarantine. */
TEST(destroy_needs_no_memory) {
    for (int fault = 0; fault < 2; fault++) {
        gm_release();
        struct gm_stats before = global();
        struct gm_heap_options o = {.size = sizeof o, .fault_on_destroy = fault};
        gm_heap_t *h = gm_heap_new(&o);
        CHECK(h != NULL);
        for (int i = 0; i < 100; i++)
            CHECK(gm_heap_malloc(h, 50) != NULL);
        for (int i = 0; i < 10; i++)
            CHECK(gm_heap_malloc(h, 5000) != NULL);
        CHECK(gm_heap_malloc(h, 300 << 10) != NULL);
        gm_debug_fail_os_calls(1, GM_DEBUG_OS_ALLOC | GM_DEBUG_OS_FAULT);
        CHECK_EQ(gm_heap_destroy(h), 0);
        gm_debug_fail_os_calls(0, 0);
        CHECK_EQ(gm_check_heap(), 0);
        struct gm_stats after = global();
        CHECK_EQ(after.heap_inuse, before.heap_inuse);
        CHECK_EQ(after.heap_objects, before.heap_objects);
        CHECK_EQ(after.large_objects, before.large_objects);
        gm_release();
        CHECK_EQ(gm_check_heap(), 0);
        CHECK_EQ(LOAD_RELAXED(&gm_mheap.quarantined_pages), 0);
    }
    /* and with the page faulting working: the quarantine holds them */
    struct gm_heap_options o = {.size = sizeof o, .fault_on_destroy = 1};
    gm_heap_t *h = gm_heap_new(&o);
    CHECK(gm_heap_malloc(h, 50) != NULL);
    CHECK(gm_heap_malloc(h, 300 << 10) != NULL);
    gm_debug_fail_os_calls(1, GM_DEBUG_OS_ALLOC);
    CHECK_EQ(gm_heap_destroy(h), 0);
    gm_debug_fail_os_calls(0, 0);
    CHECK_EQ(gm_check_heap(), 0);
    CHECK(LOAD_RELAXED(&gm_mheap.quarantined_pages) >= 1 + (300 << 10) / PAGE_SIZE);
    gm_release();
    CHECK_EQ(LOAD_RELAXED(&gm_mheap.quarantined_pages), 0);
    CHECK_EQ(gm_check_heap(), 0);
}

/* ---- the transfer cache's descriptors ---------------------------------------------- */

/* A class's batch descriptors are allocated by its first batch, so a heap's
 * centrals stay small and classes that never hold a batch cost nothing: a
 * fresh heap has none, a burst of frees of one class gives that class
 * descriptors and a batch, and no other class of the heap gets any.  Runs
 * first, so that its heap is made in a slot no heap used before (a
 * destroyed heap's slot keeps its descriptors for the next). */
TEST(transfer_cache_descriptors_come_with_the_first_batch) {
    gm_heap_t *h = gm_heap_new(NULL);
    CHECK(h != NULL);
    gm_heap *hp = gm_heap_get(h);
    CHECK(hp != NULL);
    uint8_t sc = gm_size_to_class(48);
    for (int c = 0; c < NUM_CLASSES; c++)
        CHECK(hp->central[c].tc == NULL);
    enum { N = 2000 };
    void **objs = malloc(N * sizeof *objs);
    CHECK(objs != NULL);
    for (int i = 0; i < N; i++)
        CHECK((objs[i] = gm_heap_malloc(h, 48)) != NULL);
    for (int i = 0; i < N; i++)
        gm_free(objs[i]);
    free(objs);
    gm_mcentral *mc = &hp->central[sc];
    pthread_mutex_lock(&mc->lock);
    CHECK(mc->tc != NULL && mc->ntc >= 1);
    pthread_mutex_unlock(&mc->lock);
    for (int c = 0; c < NUM_CLASSES; c++)
        if (c != sc)
            CHECK(hp->central[c].tc == NULL);
    CHECK_EQ(gm_check_heap(), 0);
    CHECK_EQ(gm_heap_destroy(h), 0);
    CHECK_EQ(gm_check_heap(), 0);
}

/* ---- the default heap's visit, statistics of large objects, the profile ------------ */

struct find_acc {
    void **want;
    int nwant, found, dups;
    uint64_t bytes;
};
static int find_visit(void *p, size_t size, void *arg) {
    struct find_acc *a = arg;
    for (int i = 0; i < a->nwant; i++)
        if (a->want[i] == p) {
            a->found++;
            a->bytes += size;
            a->want[i] = NULL; /* seen twice would not count twice */
            return 0;
        }
    return 0;
}

static void *parked[50];
static atomic_int parked_ready, parked_go;
static void *park_objects(void *arg) {
    (void)arg;
    for (int i = 0; i < 50; i++)
        parked[i] = gm_malloc(200); /* from this thread's cache's span */
    atomic_store(&parked_ready, 1);
    while (!atomic_load(&parked_go))
        usleep(1000);
    for (int i = 0; i < 50; i++)
        gm_free(parked[i]);
    return NULL;
}

/* Objects in the spans threads' caches own (this one's and a parked
 * thread's) and large objects are visited too: they are on no list of the
 * default heap's. */
TEST(default_heap_visit_sees_every_object) {
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, park_objects, NULL), 0);
    while (!atomic_load(&parked_ready))
        usleep(1000);
    void *mine[110], *want[160];
    for (int i = 0; i < 100; i++)
        mine[i] = gm_malloc(100);
    for (int i = 100; i < 110; i++)
        mine[i] = gm_malloc((size_t)(i - 99) * 50000);
    memcpy(want, mine, sizeof mine);
    memcpy(want + 110, parked, sizeof parked);
    struct find_acc acc = {want, 160, 0, 0, 0};
    CHECK_EQ(gm_heap_visit(gm_heap_default(), find_visit, &acc), 0);
    CHECK_EQ(acc.found, 160);
    uint64_t bytes = 0;
    for (int i = 0; i < 110; i++)
        bytes += gm_usable_size(mine[i]);
    for (int i = 0; i < 50; i++)
        bytes += gm_usable_size(parked[i]);
    CHECK_EQ(acc.bytes, bytes);
    /* a heap of one's own is not the default heap's */
    gm_heap_t *h = gm_heap_new(NULL);
    void *theirs[2] = {gm_heap_malloc(h, 100), gm_heap_malloc(h, 100000)};
    struct find_acc none = {theirs, 2, 0, 0, 0};
    CHECK_EQ(gm_heap_visit(gm_heap_default(), find_visit, &none), 0);
    CHECK_EQ(none.found, 0);
    CHECK_EQ(gm_heap_destroy(h), 0);
    atomic_store(&parked_go, 1);
    pthread_join(t, NULL);
    for (int i = 0; i < 110; i++)
        gm_free(mine[i]);
    CHECK_EQ(gm_check_heap(), 0);
}

/* total_alloc counts large objects freed since, as mallocs does. */
TEST(heap_total_alloc_counts_freed_large_objects) {
    gm_heap_t *h = gm_heap_new(NULL);
    void *big = gm_heap_malloc(h, 100000), *small = gm_heap_malloc(h, 100);
    uint64_t big_bytes = gm_usable_size(big), small_bytes = gm_usable_size(small);
    gm_free(big);
    gm_free(small);
    struct gm_heap_stats st = hstats(h);
    CHECK_EQ(st.mallocs, 2);
    CHECK_EQ(st.frees, 2);
    CHECK_EQ(st.total_alloc, big_bytes + small_bytes);
    CHECK_EQ(st.alloc, 0);
    CHECK_EQ(gm_heap_destroy(h), 0);
}

static uint64_t profile_inuse(void) {
    static struct gm_profile_record recs[4096];
    int n = gm_profile_read(recs, 4096, sizeof recs[0]);
    uint64_t inuse = 0;
    for (int i = 0; i < n && i < 4096; i++)
        inuse += recs[i].alloc_objects - recs[i].free_objects;
    return inuse;
}

/* A destroyed heap's sampled objects leave the heap profile with it: its
 * figures in use are back where they were, and the stacks are gone. */
TEST(destroy_takes_sampled_objects_out_of_the_profile) {
    CHECK_EQ(gm_option_set("profile_rate", 1), 0);
    for (int i = 0; i < 1000000; i++) { /* a countdown drawn at another rate runs out */
        void *p = gm_malloc(1024);
        int sampled = gm_profile_stack_of(p, NULL, 0);
        gm_free(p);
        if (sampled > 0)
            break;
    }
    uint64_t before = profile_inuse();
    gm_heap_t *h = gm_heap_new(NULL);
    void *objs[40];
    for (int i = 0; i < 40; i++)
        objs[i] = gm_heap_malloc(h, i % 10 == 0 ? 70000 : 48);
    CHECK_EQ(profile_inuse() - before, 40);
    CHECK(gm_profile_stack_of(objs[0], NULL, 0) > 0 && gm_profile_stack_of(objs[1], NULL, 0) > 0);
    gm_free(objs[1]);
    CHECK_EQ(profile_inuse() - before, 39);
    CHECK_EQ(gm_heap_destroy(h), 0);
    CHECK_EQ(profile_inuse(), before);
    /* the addresses, taken again unsampled, have no stack */
    CHECK_EQ(gm_option_set("profile_rate", 0), 0);
    gm_heap_t *g = gm_heap_new(NULL);
    int stale = 0;
    for (int i = 0; i < 1000; i++) {
        void *p = gm_heap_malloc(g, 48);
        stale += gm_profile_stack_of(p, NULL, 0) != 0;
    }
    CHECK_EQ(stale, 0);
    CHECK_EQ(gm_heap_destroy(g), 0);
    CHECK_EQ(gm_check_heap(), 0);
}

int main(void) {
    RUN(transfer_cache_descriptors_come_with_the_first_batch); /* first: see there */
    RUN(one_heap_every_call);
    RUN(eight_threads_four_heaps_then_destroy);
    RUN(quota_is_exact_and_the_heaps_own);
    RUN(scope_then_busy_then_destroy);
    RUN(keep_live_refuses_destroy_under_live_objects);
    RUN(delete_hands_objects_to_the_default_heap);
    RUN(bad_handles_and_wrong_heaps);
    RUN(allocations_racing_destroy_fail_cleanly);
    RUN(destroy_frees_sampled_objects_in_the_profile);
    RUN(a_destroyed_heaps_canaries_never_reach_the_program);
    RUN(destroyed_memory_faults_when_asked);
    RUN(default_heap_visit_sees_every_object);
    RUN(heap_total_alloc_counts_freed_large_objects);
    RUN(destroy_takes_sampled_objects_out_of_the_profile);
    RUN(destroy_needs_no_memory);
    return gmtest_summary();
}
