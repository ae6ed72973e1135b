/*
 * test_pagealloc.c: the page heap (pagealloc.c), directly through
 * gm_mheap_alloc / gm_mheap_free and through the public API.
 *
 *   - runs of many lengths, freed in several orders, coalesce into maximal
 *     free runs (checked independently of the core's own checker);
 *   - after freeing everything, the whole mapped heap is one run again
 *     (when the arenas are contiguous, i.e. not under a sanitizer) and a run
 *     that large can be allocated without the heap growing;
 *   - the page cache hands out small runs and gives them back;
 *   - scavenging: gm_release returns the free pages, heap_released follows,
 *     and calloc returns zeros whether the memory was dirty, released, or a
 *     mixture (also with MADV_FREE);
 *   - 200 MiB objects span several arenas and come back;
 *   - gm_aligned_alloc with alignments 16 .. 4 MiB (and 64 MiB).
 *
 * Spans taken with gm_mheap_alloc directly are not counted as large objects
 * (large_alloc does that), so while they are live we check the page heap
 * with gm_mheap_check_pages; gm_check_heap once they are gone.
 */
#define _GNU_SOURCE
#include <errno.h>

#include "gm_internal.h"
#include "gmtest.h"

#define MIB ((size_t)1 << 20)

/* ---- helpers ------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void) {
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

/* The page heap's own consistency check, told about this thread's page
 * cache (the only one: this program runs one thread). */
static int check_pages(void) {
    gm_mcache *c = gm_tls_mcache;
    uint64_t cp = 0, cs = 0;
    if (c != &gm_nocache) {
        cp = (uint64_t)__builtin_popcountll(c->pcache.free);
        cs = (uint64_t)__builtin_popcountll(c->pcache.scav);
    }
    return gm_mheap_check_pages(cp, cs);
}

typedef struct {
    uintptr_t start, npages;
} run_t;
static run_t runs[1 << 16];

static int cmp_run(const void *a, const void *b) {
    uintptr_t x = ((const run_t *)a)->start, y = ((const run_t *)b)->start;
    return x < y ? -1 : x > y;
}

/* The free runs on the heap's lists, sorted by address. */
static size_t collect_runs(void) {
    size_t n = 0;
    pthread_mutex_lock(&gm_mheap.lock);
    for (int pass = 0; pass < FREE_EXACT_LISTS + FREE_LARGE_LISTS; pass++) {
        gm_mspan *s = pass < FREE_EXACT_LISTS ? gm_mheap.free[pass] : gm_mheap.large[pass - FREE_EXACT_LISTS];
        for (; s != NULL && n < sizeof runs / sizeof runs[0]; s = s->next) {
            runs[n].start = s->startAddr;
            runs[n].npages = s->npages;
            n++;
        }
    }
    pthread_mutex_unlock(&gm_mheap.lock);
    qsort(runs, n, sizeof runs[0], cmp_run);
    return n;
}

/* Free runs never touch: a freed run merges with its neighbours.  Returns
 * the number of free runs; checks they are disjoint and not adjacent. */
static size_t check_runs_maximal(void) {
    size_t n = collect_runs();
    int bad = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        uintptr_t end = runs[i].start + runs[i].npages * PAGE_SIZE;
        if (end >= runs[i + 1].start && bad++ < 3)
            fprintf(stderr, "free runs [%#lx, %#lx) and [%#lx, ...) %s\n", (unsigned long)runs[i].start,
                    (unsigned long)end, (unsigned long)runs[i + 1].start,
                    end == runs[i + 1].start ? "are adjacent (not merged)" : "overlap");
    }
    CHECK_EQ(bad, 0);
    return n;
}

/* The free run containing [a, a+npages), or NULL. */
static const run_t *run_containing(uintptr_t a, uintptr_t npages) {
    for (size_t i = 0; runs[i].npages != 0 && i < sizeof runs / sizeof runs[0]; i++)
        if (runs[i].start <= a && a + npages * PAGE_SIZE <= runs[i].start + runs[i].npages * PAGE_SIZE)
            return &runs[i];
    return NULL;
}

static uintptr_t sum_runs(size_t n) {
    uintptr_t t = 0;
    for (size_t i = 0; i < n; i++)
        t += runs[i].npages;
    return t;
}

static uintptr_t largest_run(size_t n) {
    uintptr_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (runs[i].npages > m)
            m = runs[i].npages;
    return m;
}

/* Everything freed: the thread's caches flushed, no page in use, every
 * mapped page in a maximal free run, and a run as large as the largest free
 * run can be had without mapping more.  Without a sanitizer the arenas sit
 * contiguously at the hint addresses, so the whole heap is one run. */
static void check_all_free(void) {
    gm_thread_flush();
    struct gm_stats st = stats();
    CHECK_EQ(st.heap_inuse, 0);
    CHECK_EQ(st.heap_idle, st.heap_sys);
    CHECK_EQ(check_pages(), 0);
    CHECK_EQ(gm_check_heap(), 0);
    memset(runs, 0, sizeof runs);
    size_t n = check_runs_maximal();
    CHECK(n >= 1);
    CHECK_EQ(sum_runs(n) * PAGE_SIZE, st.heap_sys);
    if (!UNDER_SANITIZER) {
        CHECK_EQ(n, 1);
        CHECK_EQ(largest_run(n) * PAGE_SIZE, st.heap_sys);
    }
    uintptr_t big = largest_run(n);
    gm_mspan *s = gm_mheap_alloc(NULL, big, 0, &gm_default_heap);
    CHECK(s != NULL);
    if (s != NULL) {
        struct gm_stats st2 = stats();
        CHECK_EQ(st2.heap_sys, st.heap_sys);
        CHECK_EQ(st2.heap_inuse, big * PAGE_SIZE);
        CHECK_EQ(s->npages, big);
        gm_mheap_free(s);
    }
    CHECK_EQ(stats().heap_inuse, 0);
    CHECK_EQ(gm_check_heap(), 0);
}

/* ---- direct page heap ------------------------------------------------------ */

static const uintptr_t run_sizes[] = {1, 2, 7, 127, 128, 129, 1000, 8192, 8193, 3, 64, 16, 15, 255, 256, 4096, 1, 63};
#define NRUNS (sizeof run_sizes / sizeof run_sizes[0])

static int cmp_span(const void *a, const void *b) {
    uintptr_t x = (*(gm_mspan *const *)a)->startAddr, y = (*(gm_mspan *const *)b)->startAddr;
    return x < y ? -1 : x > y;
}

/* Allocate every run length, check the spans, free them in `order`. */
static void alloc_free_in_order(const size_t *order, gm_mcache *c) {
    gm_mspan *spans[NRUNS], *sorted[NRUNS];
    uintptr_t starts[NRUNS];
    uint64_t inuse0 = stats().heap_inuse;
    uint64_t want_inuse = inuse0;
    for (size_t i = 0; i < NRUNS; i++) {
        uintptr_t n = run_sizes[i];
        gm_mspan *s = gm_mheap_alloc(c, n, 0, &gm_default_heap);
        spans[i] = s;
        CHECK(s != NULL);
        if (s == NULL)
            return;
        want_inuse += n * PAGE_SIZE;
        CHECK_EQ(s->state, SPAN_INUSE);
        CHECK_EQ(s->sizeclass, 0);
        CHECK_EQ(s->npages, n);
        CHECK_EQ(s->elemsize, n * PAGE_SIZE);
        CHECK_EQ(s->startAddr % PAGE_SIZE, 0);
        uintptr_t last = s->startAddr + (n - 1) * PAGE_SIZE;
        CHECK(gm_span_of(s->startAddr) == s);
        CHECK(gm_span_of(last) == s);
        CHECK(gm_span_of(s->startAddr + (n / 2) * PAGE_SIZE) == s);
        CHECK(gm_owns((void *)last));
        /* The memory is there: the first and last bytes can be written. */
        *(volatile char *)s->startAddr = 1;
        *(volatile char *)(last + PAGE_SIZE - 1) = 2;
        starts[i] = s->startAddr;
    }
    CHECK_EQ(stats().heap_inuse, want_inuse);
    CHECK_EQ(check_pages(), 0);
    memcpy(sorted, spans, sizeof sorted);
    qsort(sorted, NRUNS, sizeof sorted[0], cmp_span);
    for (size_t i = 0; i + 1 < NRUNS; i++)
        CHECK(sorted[i]->startAddr + sorted[i]->npages * PAGE_SIZE <= sorted[i + 1]->startAddr);
    for (size_t k = 0; k < NRUNS; k++) {
        size_t i = order[k];
        want_inuse -= spans[i]->npages * PAGE_SIZE;
        gm_mheap_free(spans[i]);
        CHECK(gm_span_of(starts[i]) == NULL || gm_span_of(starts[i])->state == SPAN_FREE);
        CHECK_EQ(stats().heap_inuse, want_inuse);
        CHECK_EQ(check_pages(), 0);
    }
    CHECK_EQ(stats().heap_inuse, inuse0);
    /* Coalescing, checked independently of the core: no two free runs are
     * adjacent, and every freed range lies inside one free run (for the
     * page-cache spans, once the cache has been given back). */
    if (c != NULL)
        gm_pagecache_flush(c);
    memset(runs, 0, sizeof runs);
    check_runs_maximal();
    for (size_t i = 0; i < NRUNS; i++)
        CHECK(run_containing(starts[i], run_sizes[i]) != NULL);
    /* Freed spans that were contiguous ended up in the same run. */
    for (size_t i = 0; i < NRUNS; i++)
        for (size_t j = 0; j < NRUNS; j++)
            if (starts[i] + run_sizes[i] * PAGE_SIZE == starts[j])
                CHECK(run_containing(starts[i], run_sizes[i]) == run_containing(starts[j], run_sizes[j]));
}

TEST(heap_runs_free_orders) {
    size_t order[NRUNS];
    /* forward */
    for (size_t i = 0; i < NRUNS; i++)
        order[i] = i;
    alloc_free_in_order(order, NULL);
    /* reverse */
    for (size_t i = 0; i < NRUNS; i++)
        order[i] = NRUNS - 1 - i;
    alloc_free_in_order(order, NULL);
    /* odd ones, then even ones: holes first, then their neighbours */
    size_t k = 0;
    for (size_t i = 1; i < NRUNS; i += 2)
        order[k++] = i;
    for (size_t i = 0; i < NRUNS; i += 2)
        order[k++] = i;
    alloc_free_in_order(order, NULL);
    /* several pseudo-random orders */
    for (int round = 0; round < 4; round++) {
        for (size_t i = 0; i < NRUNS; i++)
            order[i] = i;
        for (size_t i = NRUNS - 1; i > 0; i--) {
            size_t j = (size_t)(rng() % (i + 1)), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        alloc_free_in_order(order, NULL);
    }
    check_all_free();
}

/* Small runs through the thread's page cache (c != NULL, < 16 pages). */
TEST(heap_runs_through_page_cache) {
    void *p = gm_malloc(16); /* creates this thread's mcache */
    CHECK(p != NULL);
    gm_free(p);
    gm_mcache *c = gm_tls_mcache;
    CHECK(c != &gm_nocache);
    if (c == &gm_nocache)
        return;
    gm_mspan *s[40];
    uint64_t inuse0 = stats().heap_inuse;
    uintptr_t pages = 0;
    for (int i = 0; i < 40; i++) {
        uintptr_t n = 1 + (uintptr_t)(i % (PAGE_CACHE_MAX_SPAN - 1));
        s[i] = gm_mheap_alloc(c, n, 0, &gm_default_heap);
        CHECK(s[i] != NULL);
        if (s[i] == NULL)
            return;
        CHECK_EQ(s[i]->npages, n);
        CHECK(gm_span_of(s[i]->startAddr) == s[i]);
        CHECK(gm_span_of(s[i]->startAddr + (n - 1) * PAGE_SIZE) == s[i]);
        memset((void *)s[i]->startAddr, 0x77, n * PAGE_SIZE);
        pages += n;
        CHECK_EQ(check_pages(), 0);
    }
    CHECK_EQ(stats().heap_inuse, inuse0 + pages * PAGE_SIZE);
    for (int i = 0; i < 40; i += 2)
        gm_mheap_free(s[i]);
    CHECK_EQ(check_pages(), 0);
    for (int i = 1; i < 40; i += 2)
        gm_mheap_free(s[i]);
    CHECK_EQ(check_pages(), 0);
    CHECK_EQ(stats().heap_inuse, inuse0);
    /* And the same runs in the page-cache path, freed in another order. */
    size_t order[NRUNS];
    for (size_t i = 0; i < NRUNS; i++)
        order[i] = (i * 7) % NRUNS; /* 7 is prime to NRUNS */
    alloc_free_in_order(order, c);
    check_all_free();
}

/* Large objects through the public API: the heap check holds throughout. */
TEST(large_objects_public_api) {
    static const size_t sizes[] = {32769, 40000, 65536, 1 << 20, (3 << 20) + 5, 10 << 20, 70 << 20, 100000, 8193 * 8};
    enum { N = sizeof sizes / sizeof sizes[0] };
    void *p[N];
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++) {
            p[i] = gm_malloc(sizes[i]);
            CHECK(p[i] != NULL);
            if (p[i] == NULL)
                return;
            CHECK_EQ((uintptr_t)p[i] % PAGE_SIZE, 0);
            CHECK_EQ(gm_usable_size(p[i]), (sizes[i] + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1));
            memset(p[i], i + 1, 4096);
            ((char *)p[i])[sizes[i] - 1] = (char)(i + 1);
        }
        CHECK_EQ(gm_check_heap(), 0);
        for (int k = 0; k < N; k++) {
            int i = round == 0 ? k : round == 1 ? N - 1 - k : (k * 4) % N;
            CHECK_EQ(((char *)p[i])[0], (char)(i + 1));
            CHECK_EQ(((char *)p[i])[sizes[i] - 1], (char)(i + 1));
            CHECK_EQ(gm_free_checked(p[i]), GM_OK);
            CHECK_EQ(gm_check_heap(), 0);
        }
    }
    check_all_free();
}

/* ---- scavenging and zeroed memory ------------------------------------------ */

static int all_zero(const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != 0)
            return 0;
    return 1;
}

#define NSMALL 2000
static void *small[NSMALL];

/* Dirty large and small objects, free them all, flush. */
static void dirty_and_free(size_t large_size, int nlarge, size_t small_size) {
    void *large[16];
    for (int i = 0; i < nlarge; i++) {
        large[i] = gm_malloc(large_size);
        CHECK(large[i] != NULL);
        if (large[i] != NULL)
            memset(large[i], 0xcd, large_size);
    }
    for (int i = 0; i < NSMALL; i++) {
        small[i] = gm_malloc(small_size);
        CHECK(small[i] != NULL);
        if (small[i] != NULL)
            memset(small[i], 0xcd, small_size);
    }
    for (int i = 0; i < nlarge; i++)
        gm_free(large[i]);
    for (int i = 0; i < NSMALL; i++)
        gm_free(small[i]);
    gm_thread_flush();
}

/* calloc the same shapes again: every byte must read zero. */
static void calloc_and_check(size_t large_size, int nlarge, size_t small_size) {
    void *large[16];
    for (int i = 0; i < nlarge; i++) {
        large[i] = gm_calloc(1, large_size);
        CHECK(large[i] != NULL);
        if (large[i] != NULL)
            CHECK(all_zero(large[i], large_size));
    }
    int bad = 0;
    for (int i = 0; i < NSMALL; i++) {
        small[i] = gm_calloc(small_size, 1);
        CHECK(small[i] != NULL);
        if (small[i] != NULL && !all_zero(small[i], small_size))
            bad++;
    }
    CHECK_EQ(bad, 0);
    for (int i = 0; i < nlarge; i++)
        gm_free(large[i]);
    for (int i = 0; i < NSMALL; i++)
        gm_free(small[i]);
    gm_thread_flush();
}

TEST(calloc_after_free_without_release) {
    dirty_and_free(2 * MIB, 4, 48);
    calloc_and_check(2 * MIB, 4, 48);
    dirty_and_free(40000, 8, 1000);
    calloc_and_check(40000, 8, 1000);
    CHECK_EQ(gm_check_heap(), 0);
}

TEST(release_returns_free_pages) {
    dirty_and_free(2 * MIB, 8, 64);
    struct gm_stats before = stats();
    CHECK_EQ(before.heap_inuse, 0);
    CHECK(before.heap_idle > before.heap_released); /* the dirty pages are not released yet */
    size_t n = gm_release();
    struct gm_stats after = stats();
    CHECK(n > 0);
    CHECK(n >= 16 * MIB); /* at least the large objects' pages */
    CHECK_EQ(after.heap_released, before.heap_released + n);
    /* Nothing is in use, so every free page is now released. */
    CHECK_EQ(after.heap_released, after.heap_idle);
    CHECK_EQ(after.heap_sys, before.heap_sys);
    /* sysUnused of the released pages, and of the state map pages under
     * them (a sixteenth at most). */
    CHECK(after.bytes_sys_unused - before.bytes_sys_unused >= n);
    CHECK(after.bytes_sys_unused - before.bytes_sys_unused <= n + (n >> STATE_SHIFT));
    CHECK(after.n_sys_unused > before.n_sys_unused);
    CHECK_EQ(after.scavenged_bytes - before.scavenged_bytes, n);
    CHECK(after.scavenge_cycles > before.scavenge_cycles);
    /* Nothing left to release. */
    CHECK_EQ(gm_release(), 0);
    CHECK_EQ(check_pages(), 0);

    /* Reused released pages read as zero, and a large calloc of released
     * (MADV_DONTNEED) pages needs no memset. */
    calloc_and_check(2 * MIB, 8, 64);
    long long mf = -1;
    CHECK_EQ(gm_option_get("madv_free", &mf), 0);
    if (mf == 0) {
        gm_release();
        void *p = gm_calloc(1, 2 * MIB);
        CHECK(p != NULL);
        if (p != NULL) {
            gm_mspan *s = gm_span_of((uintptr_t)p);
            CHECK(s != NULL && s->needzero == 0);
            CHECK(all_zero(p, 2 * MIB));
            struct gm_stats st = stats();
            CHECK(st.heap_released < st.heap_idle + 1); /* sanity */
            gm_free(p);
        }
    }
    CHECK_EQ(gm_check_heap(), 0);
}

/* A run part released, part dirty: calloc must clear the dirty part. */
TEST(calloc_mixed_released_and_dirty) {
    gm_release();
    void *x = gm_malloc(4 * MIB);
    CHECK(x != NULL);
    if (x == NULL)
        return;
    memset(x, 0xee, 4 * MIB);
    gm_free(x);
    CHECK(gm_release() >= 4 * MIB);
    /* The low half of x's pages come back dirty, the rest stays released. */
    void *y = gm_malloc(2 * MIB);
    CHECK(y == x); /* lowest fitting run, low end first */
    if (y != NULL)
        memset(y, 0xdd, 2 * MIB);
    gm_free(y);
    void *z = gm_calloc(4 * MIB, 1);
    CHECK(z != NULL);
    if (z != NULL) {
        CHECK(all_zero(z, 4 * MIB));
        gm_free(z);
    }
    /* Same with the dirty part at the high end. */
    gm_release();
    x = gm_malloc(4 * MIB);
    CHECK(x != NULL);
    if (x == NULL)
        return;
    memset(x, 0xee, 4 * MIB);
    gm_free(x);
    gm_release();
    void *lo = gm_malloc(2 * MIB), *hi = gm_malloc(2 * MIB);
    CHECK(lo != NULL && hi != NULL);
    if (hi != NULL)
        memset(hi, 0xbb, 2 * MIB);
    gm_free(lo);
    gm_free(hi);
    z = gm_calloc(1, 4 * MIB);
    CHECK(z != NULL);
    if (z != NULL) {
        CHECK(all_zero(z, 4 * MIB));
        gm_free(z);
    }
    CHECK_EQ(gm_check_heap(), 0);
}

/* With MADV_FREE, released pages may keep their bytes: calloc must clear
 * them.  (Run last among the zeroing tests: MADV_FREE makes the heap
 * assume released pages dirty for good.) */
TEST(calloc_after_release_madv_free) {
    long long old = 0;
    CHECK_EQ(gm_option_get("madv_free", &old), 0);
    CHECK_EQ(gm_option_set("madv_free", 1), 0);
    dirty_and_free(2 * MIB, 4, 96);
    CHECK(gm_release() > 0);
    calloc_and_check(2 * MIB, 4, 96);
    dirty_and_free(1 * MIB, 2, 4096);
    CHECK(gm_release() > 0);
    calloc_and_check(1 * MIB, 2, 4096);
    CHECK_EQ(gm_option_set("madv_free", old), 0);
    CHECK_EQ(gm_check_heap(), 0);
}

/* ---- huge objects and alignment ------------------------------------------- */

static void check_huge(void *p, size_t size) {
    uintptr_t a = (uintptr_t)p, end = a + size;
    gm_mspan *s = gm_span_of(a);
    CHECK(s != NULL && s->startAddr == a && s->sizeclass == 0);
    CHECK(((end - 1) >> ARENA_SHIFT) - (a >> ARENA_SHIFT) >= 2); /* at least three arenas */
    /* Every arena boundary inside the object maps to the object's span. */
    for (uintptr_t b = (a + ARENA_SIZE) & ~(ARENA_SIZE - 1); b < end; b += ARENA_SIZE) {
        CHECK(gm_span_of(b - PAGE_SIZE) == s);
        CHECK(gm_span_of(b) == s);
        CHECK(gm_owns((void *)b));
    }
    CHECK(gm_span_of(end - 1) == s);
    CHECK(gm_owns((void *)(end - 1)));
    CHECK_EQ(gm_check((char *)p + ARENA_SIZE), GM_ERR_INTERIOR);
    for (uintptr_t off = 0; off < size; off += MIB)
        ((volatile char *)p)[off] = (char)(off >> 20);
    ((volatile char *)p)[size - 1] = 0x42;
    int bad = 0;
    for (uintptr_t off = 0; off < size; off += MIB)
        bad += ((volatile char *)p)[off] != (char)(off >> 20);
    CHECK_EQ(bad, 0);
}

TEST(huge_objects_across_arenas) {
    size_t size = 200 * MIB;
    struct gm_stats st0 = stats();
    void *p = gm_malloc(size);
    CHECK(p != NULL);
    if (p == NULL)
        return;
    struct gm_stats st1 = stats();
    CHECK(st1.num_arenas >= 4);
    CHECK(st1.heap_reserved >= st1.num_arenas * ARENA_SIZE);
    CHECK_EQ(st1.heap_inuse - st0.heap_inuse, size);
    CHECK_EQ(st1.large_objects - st0.large_objects, 1);
    check_huge(p, size);
    void *q = gm_malloc(size + 12345);
    CHECK(q != NULL);
    if (q != NULL) {
        check_huge(q, size + 12345);
        CHECK(((uintptr_t)q >= (uintptr_t)p + size) || ((uintptr_t)q + size + 12345 <= (uintptr_t)p));
    }
    CHECK_EQ(gm_check_heap(), 0);
    gm_free(p);
    gm_free(q);
    struct gm_stats st2 = stats();
    CHECK_EQ(st2.heap_inuse, st0.heap_inuse);
    CHECK_EQ(st2.large_objects, st0.large_objects);
    CHECK_EQ(gm_check_heap(), 0);
    /* The space is reused: no growth for another 200 MiB. */
    p = gm_malloc(size);
    CHECK(p != NULL);
    CHECK_EQ(stats().heap_sys, st2.heap_sys);
    gm_free(p);
    CHECK(gm_release() > 0);
    check_all_free();
}

static void check_aligned(size_t align, size_t size, void **out) {
    errno = 0;
    void *p = gm_aligned_alloc(align, size);
    *out = p;
    CHECK(p != NULL);
    if (p == NULL) {
        fprintf(stderr, "aligned_alloc(%zu, %zu) failed\n", align, size);
        return;
    }
    if ((uintptr_t)p % align != 0)
        fprintf(stderr, "aligned_alloc(%zu, %zu) = %p\n", align, size, p);
    CHECK_EQ((uintptr_t)p % align, 0);
    CHECK(gm_usable_size(p) >= size);
    CHECK_EQ(gm_check(p), GM_OK);
    if (size > 0) {
        ((volatile char *)p)[0] = 1;
        ((volatile char *)p)[size - 1] = 2;
    }
}

TEST(aligned_alloc_16_to_4mib) {
    enum { MAXP = 512 };
    static void *ptrs[MAXP];
    int n = 0;
    for (size_t align = 16; align <= 4 * MIB; align *= 2) {
        if (align == 2 * MIB)
            continue; /* 16 .. 1 MiB, and 4 MiB */
        const size_t sizes[] = {1, 24, align - 1, align, align + 1, 3 * align + 7, 40000};
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0] && n < MAXP; k++)
            check_aligned(align, sizes[k], &ptrs[n++]);
    }
    CHECK_EQ(gm_check_heap(), 0);
    /* Free every other one, check, then the rest. */
    for (int i = 0; i < n; i += 2)
        CHECK_EQ(gm_free_checked(ptrs[i]), GM_OK);
    CHECK_EQ(gm_check_heap(), 0);
    for (int i = 1; i < n; i += 2)
        CHECK_EQ(gm_free_checked(ptrs[i]), GM_OK);
    CHECK_EQ(gm_check_heap(), 0);
    check_all_free();
}

/* Size 0 with any alignment: a distinct, aligned, live object. */
TEST(aligned_alloc_zero_size) {
    enum { MAXP = 64 };
    void *ptrs[MAXP];
    size_t aligns[MAXP], sizes[MAXP];
    int n = 0;
    for (size_t align = 16; align <= 4 * MIB && n < MAXP - 1; align *= 2) {
        aligns[n] = align;
        sizes[n] = 0;
        check_aligned(align, 0, &ptrs[n++]);
        /* Something else must not land on it. */
        aligns[n] = 0;
        sizes[n] = align > 40000 ? 40000 : align;
        ptrs[n] = gm_malloc(sizes[n]);
        n++;
    }
    int dups = 0;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (ptrs[i] == ptrs[j] && dups++ < 3)
                fprintf(stderr, "aligned_alloc(%zu, %zu) and %s(%zu, %zu) both returned %p\n", aligns[i], sizes[i],
                        aligns[j] ? "aligned_alloc" : "malloc", aligns[j], sizes[j], ptrs[i]);
    CHECK_EQ(dups, 0);
    int notlive = 0;
    for (int i = 0; i < n; i++)
        notlive += gm_check(ptrs[i]) != GM_OK;
    CHECK_EQ(notlive, 0);
    CHECK_EQ(gm_check_heap(), 0);
    int badfree = 0;
    for (int i = 0; i < n; i++)
        badfree += gm_free_checked(ptrs[i]) != GM_OK;
    CHECK_EQ(badfree, 0);
    CHECK_EQ(gm_check_heap(), 0);
}

TEST(aligned_alloc_arena_alignment) {
    void *p = NULL, *q = NULL;
    check_aligned(ARENA_SIZE, 100, &p);
    check_aligned(2 * ARENA_SIZE, 3 * MIB, &q);
    CHECK_EQ(gm_check_heap(), 0);
    CHECK_EQ(gm_free_checked(p), GM_OK);
    CHECK_EQ(gm_free_checked(q), GM_OK);
    CHECK(gm_release() > 0);
    check_all_free();
}

int main(void) {
    /* The background scavenger (where there is one) would release pages
     * behind the tests' back: these tests count released bytes exactly. */
    gm_option_set("scavenger", 0);
    RUN(heap_runs_free_orders);
    RUN(heap_runs_through_page_cache);
    RUN(large_objects_public_api);
    RUN(calloc_after_free_without_release);
    RUN(release_returns_free_pages);
    RUN(calloc_mixed_released_and_dirty);
    RUN(calloc_after_release_madv_free);
    RUN(huge_objects_across_arenas);
    RUN(aligned_alloc_16_to_4mib);
    RUN(aligned_alloc_arena_alignment);
    RUN(aligned_alloc_zero_size);
    return gmtest_summary();
}
