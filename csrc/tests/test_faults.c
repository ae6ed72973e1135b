/*
 * test_faults.c: out of memory, made to happen.  The OS layer's fault
 * injection (gm_debug_fail_os_calls) makes every Nth mmap or madvise of the
 * chosen kinds fail as the kernel would; a workload of every kind of
 * allocation (small, tiny, large, huge, aligned, calloc, realloc, several
 * threads' caches, flushes, release) then runs for N = 1..50 and must see:
 *
 *   - every failed allocation return NULL with errno ENOMEM (no crash, no
 *     abort), and every pointer returned be usable: every byte is written,
 *     and read back before it is freed (realloc keeps the prefix; a failed
 *     realloc leaves the object as it was);
 *   - gm_check_heap() pass after every phase;
 *   - nothing leak: once everything is freed and gm_release() has run (with
 *     injection off), the figures that describe live memory are back to
 *     their starting values exactly (heap_objects, heap_alloc, heap_inuse,
 *     large_objects, per-class live objects, tiny objects, cached and
 *     transfer bytes, threads, bad frees) and every free page is released
 *     (heap_idle == heap_released).  What may legitimately stay: reserved
 *     address space (heap_reserved), mapped free pages (heap_sys), arenas,
 *     and metadata (mspan/mcache/other_sys, span structs describing free
 *     runs): the allocator keeps those for reuse, as Go does;
 *   - madvise failing not be fatal: the pages stay resident and are not
 *     counted as released.
 *
 * Two ways to start fresh-ish: a child process per N (fork before this
 * process has touched the allocator: every child starts from nothing, so
 * arena reservation, the first mappings and the metadata's first chunks
 * fail in turn), and sequences in one process (warm heap; fault_on_free
 * makes reuse re-map pages, so mmap keeps being called).  The children are
 * skipped under TSan (fork with the allocator's atfork handler holding
 * more locks than TSan's deadlock detector tracks; see test_api.c).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "gm_internal.h"
#include "gmtest.h"

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)
#define ARENA ((size_t)64 << 20)

/* ---- patterns: every byte written, and read back ------------------------------- */

static uint64_t word_pat(uint64_t seed, size_t i) { return (seed * 0x9E3779B97F4A7C15u) ^ (i * 0xD6E8FEB86659FD93u) ^ i; }
static unsigned char byte_pat(uint64_t seed, size_t i) { return (unsigned char)(word_pat(seed, i / 8) >> (8 * (i % 8))); }

/* Write the pattern of seed into every byte of [p, p+n). */
static void fill(void *p, size_t n, uint64_t seed) {
    unsigned char *b = p;
    size_t i = 0;
    if (((uintptr_t)p & 7) == 0)
        for (; i + 8 <= n; i += 8)
            *(uint64_t *)(b + i) = word_pat(seed, i / 8);
    for (; i < n; i++)
        b[i] = byte_pat(seed, i);
}

/* Do the first n bytes hold the pattern of seed? */
static bool holds(const void *p, size_t n, uint64_t seed) {
    const unsigned char *b = p;
    size_t i = 0;
    if (((uintptr_t)p & 7) == 0)
        for (; i + 8 <= n; i += 8)
            if (*(const uint64_t *)(b + i) != word_pat(seed, i / 8))
                return false;
    for (; i < n; i++)
        if (b[i] != byte_pat(seed, i))
            return false;
    return true;
}

static bool all_zero(const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != 0)
            return false;
    return true;
}

/* ---- the workload ---------------------------------------------------------------- */

/* What a workload saw. */
struct tally {
    unsigned long ok, failed; /* allocations that succeeded / returned NULL with ENOMEM */
};

struct obj {
    void *p;
    size_t n;
    uint64_t seed;
};

#define MAX_OBJS 4096
struct objset {
    struct obj o[MAX_OBJS];
    int n;
    uint64_t next_seed;
    struct tally *t;
};

static uint64_t lcg(uint64_t *s) {
    *s = *s * 6364136223846793005u + 1442695040888963407u;
    return *s >> 33;
}

/* Record the result of an allocation of n bytes that returned p (errno as
 * it returned).  A success is written all over; a failure must say ENOMEM. */
static void took(struct objset *os, void *p, size_t n, int err) {
    if (p == NULL) {
        CHECK_EQ(err, ENOMEM);
        os->t->failed++;
        return;
    }
    os->t->ok++;
    CHECK(gm_usable_size(p) >= n);
    CHECK_EQ(gm_check(p), GM_OK);
    uint64_t seed = ++os->next_seed;
    fill(p, n, seed);
    if (os->n < MAX_OBJS)
        os->o[os->n++] = (struct obj){p, n, seed};
    else
        gm_free(p);
}

static void drop(struct objset *os, int i) {
    struct obj *o = &os->o[i];
    CHECK(holds(o->p, o->n, o->seed));
    CHECK_EQ(gm_free_checked(o->p), GM_OK);
    *o = os->o[--os->n];
}

static void drop_all(struct objset *os) {
    while (os->n > 0)
        drop(os, os->n - 1);
}

static void do_malloc(struct objset *os, size_t n) {
    errno = 0;
    void *p = gm_malloc(n);
    took(os, p, n, errno);
}

static void do_calloc(struct objset *os, size_t count, size_t size) {
    errno = 0;
    void *p = gm_calloc(count, size);
    int err = errno;
    if (p != NULL)
        CHECK(all_zero(p, count * size));
    took(os, p, count * size, err);
}

static void do_aligned(struct objset *os, size_t align, size_t n) {
    errno = 0;
    void *p = gm_aligned_alloc(align, n);
    int err = errno;
    if (p != NULL)
        CHECK_EQ((uintptr_t)p % align, 0);
    took(os, p, n, err);
    void *q = (void *)1;
    int rc = gm_posix_memalign(&q, align, n);
    CHECK(rc == 0 || rc == ENOMEM);
    if (rc == 0)
        CHECK_EQ((uintptr_t)q % align, 0);
    else
        CHECK(q == (void *)1);
    took(os, rc == 0 ? q : NULL, n, rc);
}

/* Grow object i through sizes, then shrink it: the prefix survives every
 * step; a failed step leaves the object as it was. */
static void do_realloc_chain(struct objset *os, int i) {
    static const size_t steps[] = {100, 5000, 40000, 300000, 2 * MIB, 70, 33000, 24};
    for (size_t k = 0; k < sizeof steps / sizeof steps[0]; k++) {
        struct obj *o = &os->o[i];
        size_t n = steps[k];
        errno = 0;
        void *q = gm_realloc(o->p, n);
        int err = errno;
        if (q == NULL) {
            CHECK_EQ(err, ENOMEM);
            os->t->failed++;
            CHECK_EQ(gm_check(o->p), GM_OK);
            CHECK(holds(o->p, o->n, o->seed));
            continue;
        }
        os->t->ok++;
        size_t keep = o->n < n ? o->n : n;
        CHECK(holds(q, keep, o->seed));
        CHECK(gm_usable_size(q) >= n);
        o->p = q;
        o->n = n;
        fill(q, n, o->seed);
    }
}

static void check_heap(const char *where) {
    int bad = gm_check_heap();
    CHECK_EQ(bad, 0);
    if (bad != 0)
        fprintf(stderr, "  (heap check failed %s)\n", where);
}

/* Work for a second thread: its own cache, objects of its own, and frees of
 * objects the main thread allocated (handed over in `give`). */
struct worker {
    pthread_t t;
    struct objset own;
    struct obj *give;
    int ngive;
    struct tally tally;
    uint64_t rnd;
};

static void *worker_main(void *arg) {
    struct worker *w = arg;
    w->own.t = &w->tally;
    for (int i = 0; i < 300; i++) {
        size_t n = (size_t)(lcg(&w->rnd) % 3000);
        if (i % 50 == 49)
            n = 40 * KIB + (size_t)(lcg(&w->rnd) % (512 * KIB));
        do_malloc(&w->own, n);
        if (w->own.n > 0 && lcg(&w->rnd) % 3 == 0)
            drop(&w->own, (int)(lcg(&w->rnd) % (uint64_t)w->own.n));
    }
    for (int i = 0; i < w->ngive; i++) {
        CHECK(holds(w->give[i].p, w->give[i].n, w->give[i].seed));
        CHECK_EQ(gm_free_checked(w->give[i].p), GM_OK);
    }
    gm_thread_flush();
    /* Half of its objects go back to the main thread to free; the rest here. */
    int keep = w->own.n / 2;
    while (w->own.n > keep)
        drop(&w->own, w->own.n - 1);
    return NULL;
}

static uint64_t live_threads(void) { return stats().num_threads; }

/* Threads have exited and their caches are back (a joined thread's cache
 * is handed back by its key destructor). */
static void wait_threads(uint64_t want) {
    for (int i = 0; i < 2000 && live_threads() > want; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    CHECK_EQ(live_threads(), want);
}

/*
 * One pass of every kind of allocation, freeing everything at the end.
 * `huge` adds an object larger than an arena.  Heap checks after each phase.
 */
static void workload(uint64_t seed, bool huge, struct tally *t) {
    static struct objset os; /* static: large, and one workload at a time */
    os.n = 0;
    os.next_seed = seed * 1000003u;
    os.t = t;
    uint64_t rnd = seed;

    /* Sizes of every kind, zero and tiny included. */
    static const size_t sizes[] = {0,     1,     3,      8,      13,     16,     24,      100,  256,
                                   1000,  4000,  8192,   20000,  32768,  32769,  40000,   100000,
                                   300000, MIB,  3 * MIB};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        do_malloc(&os, sizes[i]);
    if (huge)
        do_malloc(&os, ARENA + MIB);
    do_calloc(&os, 1, 100);
    do_calloc(&os, 7, 3000);
    do_calloc(&os, 1000, 100);
    do_calloc(&os, 3, 2 * MIB);
    static const size_t aligns[] = {16, 64, 4096, 8192, 65536, 1 << 20};
    for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++)
        do_aligned(&os, aligns[i], 100 + aligns[i] / 2);
    check_heap("after the first allocations");

    /* Many small objects: spans, page caches and heap growth. */
    for (int i = 0; i < 1500; i++)
        do_malloc(&os, 16 + (size_t)(lcg(&rnd) % 2048));
    if (os.n > 0)
        do_realloc_chain(&os, (int)(lcg(&rnd) % (uint64_t)os.n));
    do_malloc(&os, 10);
    if (os.n > 0)
        do_realloc_chain(&os, os.n - 1);
    check_heap("after the small objects");

    /* Free half in random order, flush, allocate again, release with
     * objects live. */
    for (int i = os.n / 2; i > 0 && os.n > 0; i--)
        drop(&os, (int)(lcg(&rnd) % (uint64_t)os.n));
    gm_thread_flush();
    check_heap("after a flush");
    for (int i = 0; i < 500; i++)
        do_malloc(&os, (size_t)(lcg(&rnd) % 70000));
    (void)gm_release();
    check_heap("after a release");

    /* Two more threads: caches of their own, cross-thread frees. */
    uint64_t threads0 = live_threads();
    static struct worker w[2];
    static struct obj give[2][64];
    int nw = 0;
    for (int k = 0; k < 2; k++) {
        memset(&w[k], 0, sizeof w[k]);
        w[k].rnd = seed * 31 + (uint64_t)k;
        w[k].own.next_seed = seed * 7777 + (uint64_t)k * 100000;
        w[k].give = give[k];
        while (w[k].ngive < 64 && os.n > 0) {
            give[k][w[k].ngive++] = os.o[os.n - 1];
            os.n--;
        }
    }
    for (int k = 0; k < 2; k++) {
        if (pthread_create(&w[k].t, NULL, worker_main, &w[k]) != 0) {
            /* no thread: free its share here */
            for (int i = 0; i < w[k].ngive; i++)
                gm_free(give[k][i].p);
            continue;
        }
        nw |= 1 << k;
    }
    for (int k = 0; k < 2; k++) {
        if (!(nw & (1 << k)))
            continue;
        pthread_join(w[k].t, NULL);
        t->ok += w[k].tally.ok;
        t->failed += w[k].tally.failed;
    }
    wait_threads(threads0);
    for (int k = 0; k < 2; k++)
        if (nw & (1 << k)) {
            w[k].own.t = t;
            drop_all(&w[k].own);
        }
    check_heap("after the threads");

    drop_all(&os);
    check_heap("after freeing everything");
}

/* ---- the figures that must come back ------------------------------------------ */

static void check_back(const struct gm_stats *a, const struct gm_stats *b, const char *what) {
    int before = gmtest_failed_checks;
    CHECK_EQ(b->heap_objects, a->heap_objects);
    CHECK_EQ(b->heap_alloc, a->heap_alloc);
    CHECK_EQ(b->heap_inuse, a->heap_inuse);
    CHECK_EQ(b->large_objects, a->large_objects);
    CHECK_EQ(b->cached_bytes, 0);
    CHECK_EQ(b->transfer_bytes, 0);
    CHECK_EQ(b->num_threads, a->num_threads);
    CHECK_EQ(b->bad_frees, a->bad_frees);
    CHECK_EQ(b->tiny_mallocs - b->tiny_frees, a->tiny_mallocs - a->tiny_frees);
    for (int sc = 0; sc < GM_NUM_SIZE_CLASSES; sc++) {
        CHECK_EQ(b->by_size[sc].mallocs - b->by_size[sc].frees, a->by_size[sc].mallocs - a->by_size[sc].frees);
        CHECK_EQ(b->by_size[sc].spans, a->by_size[sc].spans);
    }
    /* Every free page released (injection is off for the last release). */
    CHECK_EQ(b->heap_idle, b->heap_released);
    CHECK_EQ(b->heap_sys, b->heap_idle + b->heap_inuse);
    /* Address space and metadata are kept, never given back: they may only grow. */
    CHECK(b->heap_reserved >= a->heap_reserved);
    CHECK(b->heap_sys >= a->heap_sys);
    if (gmtest_failed_checks != before)
        fprintf(stderr, "  (figures not back after %s)\n", what);
}

/* ---- fresh heaps: a child per N ------------------------------------------------- */

static const char *kind_names(unsigned k, char *buf, size_t len) {
    static const char *const names[] = {"reserve", "map", "fault", "alloc", "unused", "used"};
    buf[0] = 0;
    for (int i = 0; i < 6; i++)
        if (k & (1u << i)) {
            size_t l = strlen(buf);
            snprintf(buf + l, len - l, "%s%s", l ? "," : "", names[i]);
        }
    return buf;
}

/* In a child: start the allocator from nothing with every-th call of kinds
 * failing, run the workload, check.  Exit status: failed checks (max 100),
 * or 101 if no call was made to fail when some should have. */
static void child_run(unsigned long every, unsigned kinds, int opts) {
    gmtest_failed_checks = 0; /* this child's own */
    gm_debug_fail_os_calls(every, kinds); /* before the first allocation: start-up too */
    struct gm_stats s0;
    memset(&s0, 0, sizeof s0);
    gm_option_set("scavenger", 0); /* no other thread calling the OS: deterministic */
    gm_option_set("abort_on_error", 1);
    if (opts & 1)
        gm_option_set("tiny", 1);
    if (opts & 2)
        gm_option_set("fault_on_free", 2);
    if (opts & 4)
        gm_option_set("profile_rate", 64 * 1024);
    struct tally t = {0, 0};
    workload(every * 7 + kinds, every % 5 == 1, &t);
    unsigned long failures = gm_debug_os_failures();
    gm_debug_fail_os_calls(0, 0);
    (void)gm_release();
    struct gm_stats s1 = stats();
    CHECK(s1.num_threads <= 1); /* this thread's cache, if it could be made */
    s0.num_threads = s1.num_threads;
    check_back(&s0, &s1, "a workload in a fresh process");
    CHECK_EQ(gm_check_heap(), 0);
    /* Still usable, with the OS agreeing again. */
    void *p = gm_malloc(5 * MIB), *q = gm_malloc(100);
    CHECK(p != NULL && q != NULL);
    if (p != NULL)
        fill(p, 5 * MIB, 1);
    if (q != NULL)
        fill(q, 100, 2);
    gm_free(p);
    gm_free(q);
    CHECK_EQ(gm_check_heap(), 0);
    if (every == 1 && (kinds & (GM_DEBUG_OS_RESERVE | GM_DEBUG_OS_MAP | GM_DEBUG_OS_ALLOC)))
        CHECK(t.failed > 0 && t.ok == 0); /* nothing can be had */
    fflush(stderr);
    _exit(gmtest_failed_checks > 100 ? 100 : gmtest_failed_checks);
    (void)failures;
}

/* Run child_run in a child; returns whether it passed. */
static bool in_child(unsigned long every, unsigned kinds, int opts) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid < 0)
        return false;
    if (pid == 0) {
        struct rlimit nocore = {0, 0};
        setrlimit(RLIMIT_CORE, &nocore);
        child_run(every, kinds, opts);
    }
    int status = 0;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok) {
        char buf[64];
        if (WIFSIGNALED(status))
            fprintf(stderr, "  every %lu, kinds %s, options %d: child killed by signal %d\n", every,
                    kind_names(kinds, buf, sizeof buf), opts, WTERMSIG(status));
        else
            fprintf(stderr, "  every %lu, kinds %s, options %d: child exit status %d\n", every,
                    kind_names(kinds, buf, sizeof buf), opts, WEXITSTATUS(status));
    }
    CHECK(ok);
    return ok;
}

/* Must run before this process touches the allocator: each child starts
 * from nothing. */
TEST(fresh_heap_every_nth_call_fails) {
    if (UNDER_TSAN) {
        printf("(TSan build: children skipped; the in-process sequences run)\n");
        return;
    }
    int failed = 0;
    for (unsigned long n = 1; n <= 50; n++)
        failed += !in_child(n, GM_DEBUG_OS_ALL, (int)(n % 8));
    /* One kind at a time, the first calls of each. */
    static const unsigned kinds[] = {GM_DEBUG_OS_RESERVE, GM_DEBUG_OS_MAP, GM_DEBUG_OS_ALLOC, GM_DEBUG_OS_UNUSED,
                                     GM_DEBUG_OS_FAULT};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
        for (unsigned long n = 1; n <= 6; n++)
            failed += !in_child(n, kinds[k], kinds[k] == GM_DEBUG_OS_FAULT ? 2 : (int)(n % 2));
    if (failed)
        fprintf(stderr, "  %d children failed\n", failed);
}

/* ---- a warm heap: sequences in this process ------------------------------------ */

TEST(warm_heap_every_nth_call_fails) {
    gm_option_set("scavenger", 0);
    gm_option_set("abort_on_error", 1);
    static const unsigned kinds[] = {
        GM_DEBUG_OS_ALL,
        GM_DEBUG_OS_MAP | GM_DEBUG_OS_FAULT,
        GM_DEBUG_OS_ALLOC | GM_DEBUG_OS_RESERVE,
        GM_DEBUG_OS_UNUSED,
        GM_DEBUG_OS_MAP | GM_DEBUG_OS_UNUSED,
    };
    unsigned long injected = 0, nulls = 0, oks = 0;
    gm_free(gm_malloc(1)); /* this thread's cache exists from here on */
    /* TSan makes each arena reservation slow (its shadow sits at the arena
     * hints, so each grow tries them all, and each try maps and unmaps
     * 64 MiB), and with every mapping failing every allocation grows: there,
     * every 4th N from 3. */
    for (unsigned long n = UNDER_TSAN ? 3 : 1; n <= 50; n += UNDER_TSAN ? 4 : 1) {
        unsigned k = kinds[n % (sizeof kinds / sizeof kinds[0])];
        gm_option_set("fault_on_free", (long long)(n % 3)); /* 1, 2: freed spans PROT_NONE, re-mapped on reuse */
        gm_option_set("tiny", (long long)(n % 2));
        gm_option_set("madv_free", n % 7 == 3);
        gm_option_set("thp", n % 4 == 1);
        (void)gm_release();
        struct gm_stats s0 = stats();
        gm_debug_fail_os_calls(n, k);
        struct tally t = {0, 0};
        workload(n, n % 10 == 0, &t);
        injected += gm_debug_os_failures();
        gm_debug_fail_os_calls(0, 0);
        (void)gm_release();
        struct gm_stats s1 = stats();
        char what[64];
        snprintf(what, sizeof what, "every %lu", n);
        check_back(&s0, &s1, what);
        check_heap(what);
        nulls += t.failed;
        oks += t.ok;
    }
    gm_option_set("fault_on_free", 0);
    gm_option_set("tiny", 0);
    gm_option_set("madv_free", 0);
    gm_option_set("thp", 0);
    printf("     (warm heap: %lu OS calls failed on purpose, %lu allocations failed, %lu succeeded)\n", injected,
           nulls, oks);
    CHECK(injected > (UNDER_TSAN ? 12u : 50u));
    CHECK(nulls > 0);
    CHECK(oks > nulls);
}

/* ---- madvise failing: the pages stay, and are not counted as released -------- */

/* Resident pages of [p, p+n), by mincore. */
static size_t resident(const void *p, size_t n) {
    size_t ps = (size_t)sysconf(_SC_PAGESIZE), np = (n + ps - 1) / ps, r = 0;
    unsigned char *vec = mmap(NULL, np, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (vec == MAP_FAILED)
        return 0;
    if (mincore((void *)((uintptr_t)p & ~(ps - 1)), np * ps, vec) == 0)
        for (size_t i = 0; i < np; i++)
            r += vec[i] & 1;
    munmap(vec, np);
    return r * ps;
}

TEST(release_with_madvise_failing_keeps_pages) {
    gm_option_set("scavenger", 0);
    gm_option_set("madv_free", 0);
    (void)gm_release();
    size_t n = 8 * MIB;
    char *p = gm_malloc(n);
    CHECK(p != NULL);
    if (p == NULL)
        return;
    fill(p, n, 9);
    gm_free(p);
    struct gm_stats s0 = stats();
    CHECK(resident(p, n) >= n - 64 * KIB);

    gm_debug_fail_os_calls(1, GM_DEBUG_OS_UNUSED);
    size_t got = gm_release();
    unsigned long failures = gm_debug_os_failures();
    gm_debug_fail_os_calls(0, 0);
    struct gm_stats s1 = stats();
    CHECK_EQ(got, 0);
    CHECK(failures > 0);
    CHECK_EQ(s1.heap_released, s0.heap_released);
    CHECK_EQ(s1.n_sys_unused, s0.n_sys_unused); /* failed calls are not transitions */
    CHECK_EQ(s1.scavenged_bytes, s0.scavenged_bytes);
    CHECK(resident(p, n) >= n - 64 * KIB); /* still there */
    check_heap("after a release that failed");

    /* Every other call failing: part goes, the figures agree with the kernel. */
    gm_debug_fail_os_calls(2, GM_DEBUG_OS_UNUSED);
    got = gm_release();
    gm_debug_fail_os_calls(0, 0);
    struct gm_stats s2 = stats();
    CHECK_EQ(s2.heap_released - s1.heap_released, got);
    check_heap("after a release that half failed");

    /* The OS agrees again: everything goes. */
    got = gm_release();
    struct gm_stats s3 = stats();
    CHECK(got + (s2.heap_released - s1.heap_released) >= n);
    CHECK_EQ(s3.heap_idle, s3.heap_released);
    CHECK(resident(p, n) <= 64 * KIB);
    check_heap("after a release");

    /* The memory comes back zero and usable. */
    char *q = gm_calloc(1, n);
    CHECK(q != NULL);
    if (q != NULL) {
        CHECK(all_zero(q, n));
        fill(q, n, 10);
        gm_free(q);
    }
    check_heap("after reuse");
}

/* ---- fault_on_free with the OS refusing ----------------------------------------- */

TEST(fault_on_free_with_mmap_failing) {
    gm_option_set("scavenger", 0);
    gm_option_set("fault_on_free", 1);
    (void)gm_release();
    struct gm_stats s0 = stats();
    /* sysFault refused: the span goes back Ready, not faulted. */
    char *p = gm_malloc(MIB);
    CHECK(p != NULL);
    if (p != NULL) {
        fill(p, MIB, 3);
        struct gm_stats sa = stats();
        gm_debug_fail_os_calls(1, GM_DEBUG_OS_FAULT);
        gm_free(p);
        CHECK(gm_debug_os_failures() > 0);
        gm_debug_fail_os_calls(0, 0);
        struct gm_stats s1 = stats();
        CHECK_EQ(s1.n_sys_fault, sa.n_sys_fault);
        CHECK_EQ(s1.heap_released, sa.heap_released);
        check_heap("after a refused sysFault");
    }
    /* Faulted runs whose re-mapping is refused are not handed out. */
    void *big[8];
    for (int i = 0; i < 8; i++) {
        big[i] = gm_malloc(MIB + (size_t)i * 8192);
        if (big[i] != NULL)
            fill(big[i], MIB + (size_t)i * 8192, (uint64_t)i);
    }
    for (int i = 0; i < 8; i++)
        gm_free(big[i]); /* faulted now */
    struct gm_stats s2 = stats();
    CHECK(s2.n_sys_fault > s0.n_sys_fault);
    gm_debug_fail_os_calls(1, GM_DEBUG_OS_MAP | GM_DEBUG_OS_RESERVE | GM_DEBUG_OS_ALLOC);
    int nulls = 0;
    for (int i = 0; i < 8; i++) {
        errno = 0;
        big[i] = gm_malloc(MIB + (size_t)i * 8192);
        if (big[i] == NULL) {
            CHECK_EQ(errno, ENOMEM);
            nulls++;
        } else {
            fill(big[i], MIB + (size_t)i * 8192, (uint64_t)i); /* must not fault */
        }
    }
    gm_debug_fail_os_calls(0, 0);
    check_heap("after refused re-mappings");
    CHECK(nulls > 0);
    for (int i = 0; i < 8; i++) {
        if (big[i] == NULL) {
            big[i] = gm_malloc(MIB + (size_t)i * 8192);
            CHECK(big[i] != NULL);
            if (big[i] != NULL)
                fill(big[i], MIB + (size_t)i * 8192, (uint64_t)i);
        }
    }
    for (int i = 0; i < 8; i++)
        gm_free(big[i]);
    gm_option_set("fault_on_free", 0);
    (void)gm_release();
    struct gm_stats s3 = stats();
    check_back(&s0, &s3, "fault_on_free");
    check_heap("after fault_on_free");
}

/* ---- arena hints survive an out-of-memory episode --------------------------- */

/* Reservations refused for want of memory do not use up the arena hints
 * (0x00c0<<32 upward): once memory is back, arenas go where they would
 * have gone. */
TEST(reserve_failures_keep_the_hints) {
    gm_option_set("scavenger", 0);
    uintptr_t hint = gm_mheap.arenaHint;
    size_t n = 3 * ARENA; /* more than any free run: the heap must grow */
    for (int i = 0; i < 100; i++) {
        gm_debug_fail_os_calls(1, GM_DEBUG_OS_RESERVE);
        errno = 0;
        void *p = gm_malloc(n);
        gm_debug_fail_os_calls(0, 0);
        CHECK(p == NULL);
        CHECK_EQ(errno, ENOMEM);
        gm_free(p);
    }
    CHECK_EQ(gm_mheap.arenaHint, hint);
    check_heap("after refused reservations");
}

/* ---- no span structs to be had ------------------------------------------------ */

/*
 * The span structs' fixalloc runs dry and the OS refuses more metadata:
 * allocations that need a struct fail cleanly (ENOMEM), frees and releases
 * still work (a freed span brings its own struct; a run put back merges
 * with its neighbour's), and the heap stays consistent.  Reaches into the
 * internals to empty the fixalloc and the current persistentalloc chunk.
 */
TEST(span_structs_unavailable) {
    gm_option_set("scavenger", 0);
    (void)gm_release();
    struct gm_stats s0 = stats();
    /* Live objects, and a large free run to split. */
    void *keep[4];
    for (int i = 0; i < 4; i++) {
        keep[i] = gm_malloc(200 * KIB);
        CHECK(keep[i] != NULL);
        if (keep[i] != NULL)
            fill(keep[i], 200 * KIB, (uint64_t)i);
    }
    void *big = gm_malloc(8 * MIB);
    CHECK(big != NULL);
    gm_free(big);

    gm_debug_fail_os_calls(1, GM_DEBUG_OS_ALLOC);
    pthread_mutex_lock(&gm_mheap.lock);
    gm_mheap.spanalloc.list = NULL; /* the free structs are forgotten (a test's leak) */
    gm_mheap.spanalloc.nchunk = 0;
    pthread_mutex_unlock(&gm_mheap.lock);
    while (gm_persistentalloc(512, 8, NULL) != NULL) /* the current chunk, used up */
        ;
    /* A large object needs a span struct: none. */
    errno = 0;
    void *p = gm_malloc(300 * KIB);
    CHECK(p == NULL);
    CHECK_EQ(errno, ENOMEM);
    errno = 0;
    p = gm_aligned_alloc(1 << 20, 100 * KIB);
    CHECK(p == NULL);
    CHECK_EQ(errno, ENOMEM);
    check_heap("after failing for want of span structs");
    /* Frees give structs back; the next allocation can have one. */
    gm_free(keep[0]);
    keep[0] = NULL;
    p = gm_malloc(100 * KIB);
    CHECK(p != NULL);
    if (p != NULL)
        fill(p, 100 * KIB, 7);
    (void)gm_release();
    gm_thread_flush();
    check_heap("after frees without span structs");
    gm_debug_fail_os_calls(0, 0);
    gm_free(p);
    for (int i = 1; i < 4; i++) {
        CHECK(holds(keep[i], 200 * KIB, (uint64_t)i));
        gm_free(keep[i]);
    }
    (void)gm_release();
    struct gm_stats s1 = stats();
    check_back(&s0, &s1, "span structs ran out");
    check_heap("after span structs ran out");
}

/* ---- many threads, scavenger on, injection on: no determinism, no crash ------- */

struct chaos {
    pthread_t t;
    uint64_t rnd;
    struct tally tally;
};

static void *chaos_main(void *arg) {
    struct chaos *c = arg;
    static __thread struct objset os;
    os.n = 0;
    os.t = &c->tally;
    os.next_seed = c->rnd * 1000;
    for (int i = 0; i < 3000; i++) {
        uint64_t r = lcg(&c->rnd);
        switch (r % 16) {
        case 0: do_malloc(&os, 40 * KIB + (size_t)(r >> 8) % (2 * MIB)); break;
        case 1: do_calloc(&os, 1 + (r >> 8) % 100, 1 + (r >> 16) % 200); break;
        case 2: do_aligned(&os, (size_t)1 << (4 + (r >> 8) % 14), (size_t)(r >> 24) % 50000); break;
        case 3: gm_thread_flush(); break;
        case 4: if (r % 64 == 4) (void)gm_release(); break;
        case 5: case 6: case 7: case 8:
            if (os.n > 0)
                drop(&os, (int)((r >> 8) % (uint64_t)os.n));
            break;
        default: do_malloc(&os, (size_t)(r >> 8) % 4000); break;
        }
        if (os.n > 200)
            drop(&os, 0);
    }
    drop_all(&os);
    return NULL;
}

TEST(threads_and_scavenger_under_injection) {
    gm_option_set("scavenger", 1);
    gm_option_set("decay_ms", 5);
    (void)gm_release();
    uint64_t threads0 = live_threads();
    struct gm_stats s0 = stats();
    gm_debug_fail_os_calls(5, GM_DEBUG_OS_ALL);
    struct chaos c[4];
    int started = 0;
    for (int i = 0; i < 4; i++) {
        c[i] = (struct chaos){.rnd = 12345u + (uint64_t)i};
        if (pthread_create(&c[i].t, NULL, chaos_main, &c[i]) == 0)
            started |= 1 << i;
    }
    unsigned long nulls = 0;
    for (int i = 0; i < 4; i++)
        if (started & (1 << i)) {
            pthread_join(c[i].t, NULL);
            nulls += c[i].tally.failed;
        }
    unsigned long failures = gm_debug_os_failures();
    gm_debug_fail_os_calls(0, 0);
    wait_threads(threads0);
    gm_option_set("scavenger", 0);
    gm_option_set("decay_ms", 1000);
    (void)gm_release();
    struct gm_stats s1 = stats();
    check_back(&s0, &s1, "the threads");
    check_heap("after the threads");
    printf("     (threads: %lu OS calls failed on purpose, %lu allocations failed)\n", failures, nulls);
    CHECK(failures > 0);
}

int main(void) {
    /* First: the children must fork from a process that has not touched
     * the allocator yet. */
    RUN(fresh_heap_every_nth_call_fails);
    RUN(warm_heap_every_nth_call_fails);
    RUN(release_with_madvise_failing_keeps_pages);
    RUN(fault_on_free_with_mmap_failing);
    RUN(span_structs_unavailable);
    RUN(reserve_failures_keep_the_hints);
    RUN(threads_and_scavenger_under_injection);
    return gmtest_summary();
}
