/*
 * test_api.c: the public API, one named edge case per test (in the style of
 * mimalloc's test-api.c).
 *
 *   malloc / calloc / realloc / aligned allocation / usable size edge cases;
 *   bad pointers with abort_on_error = 0 (gm_free_checked codes, gm_check,
 *   errno EINVAL from gm_free and gm_realloc, the bad_frees count, the heap
 *   untouched) and with abort_on_error = 1 (SIGABRT in a child process, with
 *   the pointer in the message); options; stats consistency.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gm_internal.h"
#include "gmtest.h"

#define MIB ((size_t)1 << 20)

static unsigned char pat(size_t i, unsigned seed) { return (unsigned char)(i * 131u + seed * 7u + 1u); }

static void fill(void *p, size_t n, unsigned seed) {
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        b[i] = pat(i, seed);
}

/* Index of the first byte that differs from the pattern, or n. */
static size_t verify(const void *p, size_t n, unsigned seed) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != pat(i, seed))
            return i;
    return n;
}

static int all_zero(const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != 0)
            return 0;
    return 1;
}

/* ---- malloc / calloc -------------------------------------------------------- */

TEST(malloc_zero) {
    void *p[64];
    for (int i = 0; i < 64; i++) {
        p[i] = gm_malloc(0);
        CHECK(p[i] != NULL);
        CHECK_EQ(gm_check(p[i]), GM_OK);
        CHECK(gm_usable_size(p[i]) >= 1);
        for (int j = 0; j < i; j++)
            CHECK(p[i] != p[j]);
    }
    for (int i = 0; i < 64; i++)
        CHECK_EQ(gm_free_checked(p[i]), GM_OK);
    /* calloc with a zero count or size too. */
    void *a = gm_calloc(0, 16), *b = gm_calloc(16, 0), *c = gm_calloc(0, SIZE_MAX);
    CHECK(a != NULL && b != NULL && c != NULL && a != b && b != c && a != c);
    gm_free(a);
    gm_free(b);
    gm_free(c);
    CHECK_EQ(gm_check_heap(), 0);
}

TEST(calloc_overflow) {
    static const size_t cases[][2] = {
        {SIZE_MAX, 2}, {2, SIZE_MAX}, {(size_t)1 << 32, (size_t)1 << 32}, {SIZE_MAX / 16 + 1, 16},
        {SIZE_MAX, SIZE_MAX}, {((size_t)1 << 63) + 1, 2},
    };
    uint64_t mallocs = stats().mallocs;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        errno = 0;
        void *p = gm_calloc(cases[i][0], cases[i][1]);
        CHECK(p == NULL);
        CHECK_EQ(errno, ENOMEM);
    }
    CHECK_EQ(stats().mallocs, mallocs);
}

/* calloc must clear memory dirtied by earlier objects of the same class,
 * whether it comes from the thread's free list, from a span the objects
 * were flushed back to, or from pages of a freed large object. */
TEST(calloc_zeroes) {
    static const size_t sizes[] = {1,    8,    16,   17,    48,    100,    256,    1000,        1024,
                                   1025, 4000, 8192, 20000, 32768, 32769, 100000, (1 << 20) + 1};
    enum { N = 48 };
    void *p[N];
    for (int flush = 0; flush < 2; flush++) {
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            size_t size = sizes[k];
            int n = size > 40000 ? 4 : N;
            for (int i = 0; i < n; i++) {
                p[i] = gm_malloc(size);
                CHECK(p[i] != NULL);
                if (p[i] != NULL)
                    memset(p[i], 0xff, gm_usable_size(p[i]));
            }
            for (int i = 0; i < n; i++)
                gm_free(p[i]);
            if (flush)
                gm_thread_flush();
            int bad = 0;
            for (int i = 0; i < n; i++) {
                p[i] = gm_calloc(1, size);
                CHECK(p[i] != NULL);
                if (p[i] != NULL && !all_zero(p[i], size))
                    bad++;
            }
            if (bad)
                fprintf(stderr, "calloc(1, %zu)%s: %d of %d objects not zeroed\n", size,
                        flush ? " after a flush" : "", bad, n);
            CHECK_EQ(bad, 0);
            for (int i = 0; i < n; i++)
                gm_free(p[i]);
        }
    }
    CHECK_EQ(gm_check_heap(), 0);
}

TEST(malloc_huge) {
    static const size_t sizes[] = {SIZE_MAX, SIZE_MAX - 1, SIZE_MAX - 4096, (size_t)1 << 62, (size_t)1 << 63,
                                   ((size_t)1 << 48) + 1, (size_t)1 << 49};
    struct gm_stats s0 = stats();
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        errno = 0;
        CHECK(gm_malloc(sizes[i]) == NULL);
        CHECK_EQ(errno, ENOMEM);
        errno = 0;
        CHECK(gm_calloc(1, sizes[i]) == NULL);
        CHECK_EQ(errno, ENOMEM);
        errno = 0;
        CHECK(gm_aligned_alloc(64, sizes[i]) == NULL);
        CHECK_EQ(errno, ENOMEM);
        errno = 0;
        CHECK(gm_aligned_alloc(1 << 20, sizes[i]) == NULL);
        CHECK_EQ(errno, ENOMEM);
        void *q = (void *)0x1234;
        errno = 0;
        CHECK_EQ(gm_posix_memalign(&q, 64, sizes[i]), ENOMEM);
        CHECK(q == (void *)0x1234);
        CHECK_EQ(errno, 0);
    }
    /* realloc to a huge size fails and leaves the object alone. */
    void *p = gm_malloc(100);
    CHECK(p != NULL);
    if (p != NULL) {
        fill(p, 100, 3);
        errno = 0;
        CHECK(gm_realloc(p, SIZE_MAX) == NULL);
        CHECK_EQ(errno, ENOMEM);
        CHECK(gm_realloc(p, (size_t)1 << 62) == NULL);
        CHECK_EQ(gm_check(p), GM_OK);
        CHECK_EQ(verify(p, 100, 3), 100);
        gm_free(p);
    }
    /* The allocator still works, and the failures left no trace. */
    struct gm_stats s1 = stats();
    CHECK_EQ(s1.heap_reserved, s0.heap_reserved);
    CHECK_EQ(s1.heap_sys, s0.heap_sys);
    CHECK_EQ(s1.large_objects, s0.large_objects);
    void *a = gm_malloc(1000), *b = gm_malloc(1 << 20);
    CHECK(a != NULL && b != NULL);
    gm_free(a);
    gm_free(b);
    CHECK_EQ(gm_check_heap(), 0);
}

/*
 * A size below the 2^48 address-space bound that still cannot be had
 * (256 GiB: more than this machine can commit, unless the kernel
 * overcommits without limit, in which case the allocation is legitimate and
 * there is nothing to check).  A failed allocation must leave no lasting
 * cost in memory: no arena metadata for it.  (Keeping the address space
 * reserved, PROT_NONE, costs no memory and is allowed.)
 */
TEST(malloc_unmappable_leaves_no_trace) {
    size_t size = (size_t)1 << 38;
    struct gm_stats s0 = stats();
    errno = 0;
    void *p = gm_malloc(size);
    if (p != NULL) {
        fprintf(stderr, "(malloc(256 GiB) succeeded: the kernel overcommits; nothing to check)\n");
        gm_free(p);
        gm_release();
        return;
    }
    CHECK_EQ(errno, ENOMEM);
    struct gm_stats s1 = stats();
    if (s1.other_sys - s0.other_sys > MIB)
        fprintf(stderr, "failed malloc(256 GiB) kept %llu GiB reserved, %llu arenas and %llu MiB of metadata\n",
                (unsigned long long)((s1.heap_reserved - s0.heap_reserved) >> 30),
                (unsigned long long)(s1.num_arenas - s0.num_arenas),
                (unsigned long long)((s1.other_sys - s0.other_sys) >> 20));
    CHECK(s1.other_sys - s0.other_sys <= MIB);
    CHECK_EQ(s1.heap_sys, s0.heap_sys);
    void *q = gm_malloc(1000);
    CHECK(q != NULL);
    gm_free(q);
    CHECK_EQ(gm_check_heap(), 0);
}

/* ---- realloc ------------------------------------------------------------------ */

TEST(realloc_null) {
    void *p = gm_realloc(NULL, 100);
    CHECK(p != NULL);
    CHECK_EQ(gm_check(p), GM_OK);
    CHECK(gm_usable_size(p) >= 100);
    void *q = gm_realloc(NULL, 0);
    CHECK(q != NULL && q != p);
    void *r = gm_realloc(NULL, 200000);
    CHECK(r != NULL);
    CHECK(gm_usable_size(r) >= 200000);
    gm_free(p);
    gm_free(q);
    gm_free(r);
    CHECK_EQ(gm_check_heap(), 0);
}

/* realloc(p, 0) frees p and returns NULL (as glibc). */
TEST(realloc_zero_frees) {
    gm_thread_flush();
    uint64_t live = stats().heap_objects;
    void *p = gm_malloc(50);
    CHECK(p != NULL);
    CHECK(gm_realloc(p, 0) == NULL);
    CHECK_EQ(gm_check(p), GM_ERR_NOT_ALLOCATED);
    void *l = gm_malloc(100000);
    CHECK(gm_realloc(l, 0) == NULL);
    CHECK_EQ(gm_check(l), GM_ERR_NOT_ALLOCATED);
    CHECK_EQ(stats().heap_objects, live);
    CHECK_EQ(gm_check_heap(), 0);
}

TEST(realloc_grow_shrink_preserves) {
    static const size_t ladder[] = {1,     8,     16,     17,      100,        1000,           1024,
                                    1025,  4096,  20000,  32768,   32769,      65536,          100000,
                                    1 << 20, (4 << 20) + 3, (9 << 20) + 1};
    enum { L = sizeof ladder / sizeof ladder[0] };
    size_t steps[2 * L];
    for (int i = 0; i < L; i++) {
        steps[i] = ladder[i];
        steps[2 * L - 1 - i] = ladder[i];
    }
    void *p = gm_malloc(steps[0]);
    CHECK(p != NULL);
    if (p == NULL)
        return;
    fill(p, steps[0], 9);
    for (int i = 1; i < 2 * L; i++) {
        size_t old = steps[i - 1], now = steps[i], keep = old < now ? old : now;
        void *q = gm_realloc(p, now);
        CHECK(q != NULL);
        if (q == NULL)
            return;
        size_t at = verify(q, keep, 9);
        if (at != keep)
            fprintf(stderr, "realloc %zu -> %zu lost byte %zu\n", old, now, at);
        CHECK_EQ(at, keep);
        CHECK_EQ(gm_check(q), GM_OK);
        CHECK(gm_usable_size(q) >= now);
        if (q != p)
            CHECK_EQ(gm_check(p), GM_ERR_NOT_ALLOCATED);
        fill(q, now, 9);
        p = q;
    }
    gm_free(p);
    CHECK_EQ(gm_check_heap(), 0);
}

/* A large object grows in place into the free pages after it, and moves
 * when a live object follows it.  Adjacency is not promised by malloc, so
 * the neighbour is found: n right after p. */
TEST(realloc_large_grows_into_free_pages) {
    const size_t sz = 6 * PAGE_SIZE, grown = 11 * PAGE_SIZE + 5;
    int inplace = 0, moved = 0;
    for (int tries = 0; tries < 64 && (inplace == 0 || moved == 0); tries++) {
        char *p = gm_malloc(sz), *n = gm_malloc(sz);
        CHECK(p != NULL && n != NULL);
        if (n != p + sz) { /* not neighbours: try again (kept until the end) */
            gm_free(n);
            continue;
        }
        fill(p, sz, 3);
        struct gm_stats s0 = {.size = sizeof s0};
        gm_read_stats(&s0);
        if (moved == 0) {
            /* A live neighbour: realloc must move, the contents intact. */
            char *q = gm_realloc(p, grown);
            CHECK(q != NULL && q != p);
            CHECK_EQ(verify(q, sz, 3), sz);
            CHECK_EQ(gm_check(n), GM_OK);
            gm_free(n);
            gm_free(q);
            moved++;
            continue;
        }
        gm_free(n); /* its pages join the free run after p */
        /* Over the hard limit: no growth, in place or not; p intact. */
        long long limit0 = 0;
        CHECK_EQ(gm_option_get("hard_limit", &limit0), 0);
        CHECK_EQ(gm_option_set("hard_limit", (long long)(s0.heap_inuse - sz + 2 * PAGE_SIZE)), 0);
        errno = 0;
        CHECK(gm_realloc(p, grown) == NULL);
        CHECK_EQ(errno, ENOMEM);
        CHECK_EQ(gm_option_set("hard_limit", limit0), 0);
        CHECK_EQ(verify(p, sz, 3), sz);
        CHECK_EQ(gm_check(p), GM_OK);
        char *q = gm_realloc(p, grown);
        CHECK(q != NULL);
        if (q == p) {
            inplace++;
            CHECK_EQ(verify(q, sz, 3), sz);
            CHECK(gm_usable_size(q) >= grown);
            CHECK_EQ(gm_check(q + grown - 1), GM_ERR_INTERIOR); /* the new pages are the object's */
            fill(q, grown, 4);
            struct gm_stats s1 = {.size = sizeof s1};
            gm_read_stats(&s1);
            CHECK_EQ(s1.heap_inuse - s0.heap_inuse, 12 * PAGE_SIZE - 2 * sz); /* 12 pages now; n's 6 gone */
            CHECK_EQ(s1.heap_alloc - s0.heap_alloc, 12 * PAGE_SIZE - 2 * sz);
            CHECK_EQ(gm_check_heap(), 0);
        }
        gm_free(q);
    }
    CHECK(moved == 1 && inplace == 1);
    CHECK_EQ(gm_check_heap(), 0);
}

/* A large object of fewer than PAGE_CACHE_MAX_SPAN pages comes from the
 * thread's page cache; it grows in place into the cache's free pages after
 * it, which are no free run, and they leave the cache. */
TEST(realloc_large_grows_into_cached_pages) {
    const size_t sz = 5 * PAGE_SIZE, grown = 7 * PAGE_SIZE;
    CHECK(sz > MAX_SMALL_SIZE && grown / PAGE_SIZE < PAGE_CACHE_MAX_SPAN);
    char *keep[64];
    int nkeep = 0, inplace = 0;
    for (int tries = 0; tries < 64 && inplace == 0; tries++) {
        char *p = gm_malloc(sz);
        CHECK(p != NULL);
        gm_pagecache *pc = &gm_tls_mcache->pcache;
        uintptr_t a = (uintptr_t)p, end = a + sz;
        /* The two pages after p free in the cache (else keep p and retry). */
        if (pc->base == 0 || a < pc->base || end + 2 * PAGE_SIZE > pc->base + PAGE_CACHE_PAGES * PAGE_SIZE ||
            ((pc->free >> ((end - pc->base) / PAGE_SIZE)) & 3) != 3) {
            keep[nkeep++] = p;
            continue;
        }
        unsigned i = (unsigned)((end - pc->base) / PAGE_SIZE);
        CHECK(gm_span_of(end) == NULL); /* no free run: the old path had nothing to take */
        fill(p, sz, 5);
        struct gm_stats s0 = {.size = sizeof s0};
        gm_read_stats(&s0);
        char *q = gm_realloc(p, grown);
        CHECK(q == p);
        inplace++;
        CHECK_EQ(verify(q, sz, 5), sz);
        CHECK_EQ((pc->free >> i) & 3, 0); /* the pages left the cache */
        size_t now = gm_usable_size(q); /* grown, or with realloc's headroom */
        CHECK(now >= grown);
        CHECK_EQ(gm_check(q + now - 1), GM_ERR_INTERIOR); /* they are the object's */
        fill(q, now, 6);
        struct gm_stats s1 = {.size = sizeof s1};
        gm_read_stats(&s1);
        CHECK_EQ(s1.heap_inuse - s0.heap_inuse, now - sz);
        CHECK_EQ(s1.heap_alloc - s0.heap_alloc, now - sz);
        CHECK_EQ(gm_check_heap(), 0);
        gm_free(q);
    }
    CHECK_EQ(inplace, 1);
    while (nkeep > 0)
        gm_free(keep[--nkeep]);
    CHECK_EQ(gm_check_heap(), 0);
}

/* A large object shrunk by a third or more stays where it is and gives the
 * pages after its new end back: the heap's figures fall by them at once
 * and they are no longer the object's.  A smaller shrink keeps every page.
 * An object allocated after it and the object grown again keep their
 * bytes, wherever they land. */
TEST(realloc_large_shrinks_in_place) {
    const size_t sz = 24 * PAGE_SIZE, small = 9 * PAGE_SIZE - 100;
    char *p = gm_malloc(sz);
    CHECK(p != NULL);
    fill(p, sz, 5);
    CHECK(gm_realloc(p, 20 * PAGE_SIZE) == p); /* by 1/6: as it was */
    CHECK_EQ(gm_usable_size(p), sz);
    struct gm_stats s0 = {.size = sizeof s0};
    gm_read_stats(&s0);
    char *q = gm_realloc(p, small);
    CHECK(q == p);
    CHECK_EQ(gm_usable_size(q), 9 * PAGE_SIZE);
    CHECK_EQ(verify(q, small, 5), small);
    CHECK_EQ(gm_check(q + small - 1), GM_ERR_INTERIOR);
    CHECK(gm_check(q + 9 * PAGE_SIZE) != GM_ERR_INTERIOR); /* the tail is no longer the object's */
    struct gm_stats s1 = {.size = sizeof s1};
    gm_read_stats(&s1);
    CHECK_EQ(s0.heap_inuse - s1.heap_inuse, 15 * PAGE_SIZE);
    CHECK_EQ(s0.heap_alloc - s1.heap_alloc, 15 * PAGE_SIZE);
    CHECK_EQ(gm_check_heap(), 0);
    /* The tail is free pages again: a 15-page object may land there. */
    char *t = gm_malloc(15 * PAGE_SIZE);
    CHECK(t != NULL);
    fill(t, 15 * PAGE_SIZE, 6);
    CHECK_EQ(verify(q, small, 5), small);
    /* Grown back: t may sit where its pages were, so it moves if it must. */
    char *r = gm_realloc(q, sz);
    CHECK(r != NULL);
    CHECK_EQ(verify(r, small, 5), small);
    CHECK_EQ(verify(t, 15 * PAGE_SIZE, 6), 15 * PAGE_SIZE);
    gm_free(t);
    gm_free(r);
    CHECK_EQ(gm_check_heap(), 0);
}

TEST(realloc_same_class_in_place) {
    void *p = gm_malloc(100); /* class 112 */
    CHECK(p != NULL);
    CHECK_EQ(gm_usable_size(p), 112);
    fill(p, 100, 1);
    CHECK(gm_realloc(p, 112) == p);
    CHECK(gm_realloc(p, 97) == p);
    CHECK(gm_realloc(p, 100) == p);
    CHECK_EQ(verify(p, 97, 1), 97);
    void *q = gm_realloc(p, 113); /* does not fit: moves */
    CHECK(q != NULL && q != p);
    CHECK_EQ(verify(q, 97, 1), 97);
    gm_free(q);

    /* Large: same number of pages, same object. */
    void *l = gm_malloc(100000); /* 13 pages */
    CHECK(l != NULL);
    size_t us = gm_usable_size(l);
    CHECK_EQ(us, 13 * PAGE_SIZE);
    fill(l, 100000, 2);
    CHECK(gm_realloc(l, 13 * PAGE_SIZE) == l);
    CHECK(gm_realloc(l, 12 * PAGE_SIZE + 1) == l);
    CHECK_EQ(gm_usable_size(l), us);
    CHECK_EQ(verify(l, 12 * PAGE_SIZE + 1, 2), 12 * PAGE_SIZE + 1);
    gm_free(l);
    CHECK_EQ(gm_check_heap(), 0);
}

/* Colouring (mcentral.c): the first span of a class hands its slots out
 * from a colour that differs from class to class, not from its first slot,
 * and comes round to the slots it skipped when it reaches its end, so every
 * slot is still handed out once, in one pass; the spans after it start at
 * slot 0.  A new heap's classes have no spans yet. */
TEST(first_spans_start_at_their_colour) {
    static const size_t sizes[] = {32, 48, 64, 80, 96, 112, 128, 160, 192, 256, 320, 512};
    enum { NS = sizeof sizes / sizeof sizes[0], PER = 600 };
    gm_heap_t *h = gm_heap_new(NULL);
    CHECK(h != NULL);
    static void *objs[NS][PER];
    uint64_t sets = 0; /* the L1 sets (address bits 6-11) of the classes' first objects */
    int coloured = 0;
    for (int c = 0; c < NS; c++) {
        for (int i = 0; i < PER; i++)
            CHECK((objs[c][i] = gm_heap_malloc(h, sizes[c])) != NULL);
        if (c == NS / 2)
            CHECK_EQ(gm_check_heap(), 0); /* a span cached halfway round */
        gm_mspan *s = gm_span_of((uintptr_t)objs[c][0]);
        CHECK(s != NULL && s->sizeclass == gm_size_to_class(sizes[c]));
        uintptr_t first = gm_span_index(s, (uintptr_t)objs[c][0]);
        sets |= (uint64_t)1 << (((uintptr_t)objs[c][0] >> 6) & 63);
        coloured += first != 0;
        /* One pass round the first span: first, ..., nelems-1, 0, ..., first-1. */
        CHECK(PER > s->nelems);
        for (uint32_t i = 0; i < s->nelems; i++)
            CHECK(objs[c][i] == (void *)(s->startAddr + (first + i) % s->nelems * s->elemsize));
        /* The next span is not coloured. */
        gm_mspan *t = gm_span_of((uintptr_t)objs[c][s->nelems]);
        CHECK(t != s && objs[c][s->nelems] == (void *)t->startAddr);
    }
    CHECK(coloured >= NS / 2);
    CHECK(gm_popcount(sets) >= NS / 2);
    for (int c = 0; c < NS; c++)
        for (int i = 0; i < PER; i++)
            gm_free(objs[c][i]);
    gm_thread_flush();
    CHECK_EQ(gm_check_heap(), 0);
    CHECK_EQ(gm_heap_destroy(h), 0);
}

/* ---- usable size and alignment ------------------------------------------------ */

TEST(usable_size) {
    static const size_t sizes[] = {0, 1, 15, 16, 17, 31, 32, 33, 1000, 1024, 1025, 32767, 32768, 32769, 100000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        void *p = gm_malloc(n);
        CHECK(p != NULL);
        size_t u = gm_usable_size(p);
        CHECK(u >= n && u >= 16);
        if (n <= MAX_SMALL_SIZE)
            CHECK_EQ(u, gm_class_to_size[gm_size_to_class(n)]);
        else
            CHECK_EQ(u, (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1));
        memset(p, 0xab, u); /* all of it is usable */
        CHECK_EQ(gm_usable_size((char *)p + 1), 0); /* interior */
        gm_free(p);
        CHECK_EQ(gm_usable_size(p), 0); /* freed */
    }
    int local;
    CHECK_EQ(gm_usable_size(NULL), 0);
    CHECK_EQ(gm_usable_size(&local), 0);
    CHECK_EQ(gm_check_heap(), 0);
}

TEST(posix_memalign_bad_alignment) {
    static const size_t bad[] = {0, 1, 2, 3, 4, 6, 24, 48, 100, 4097, ((size_t)1 << 63) + 8};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        void *p = (void *)0x1234;
        errno = 0;
        CHECK_EQ(gm_posix_memalign(&p, bad[i], 16), EINVAL);
        CHECK(p == (void *)0x1234); /* untouched */
        CHECK_EQ(errno, 0);         /* POSIX: returns the error, errno alone */
    }
}

TEST(posix_memalign_good) {
    for (size_t align = sizeof(void *); align <= ((size_t)2 << 20); align *= 2) {
        static const size_t sizes[] = {1, 100, 5000, 40000};
        for (size_t k = 0; k < 4; k++) {
            void *p = NULL;
            CHECK_EQ(gm_posix_memalign(&p, align, sizes[k]), 0);
            CHECK(p != NULL);
            CHECK_EQ((uintptr_t)p % align, 0);
            CHECK(gm_usable_size(p) >= sizes[k]);
            if (p != NULL)
                memset(p, 1, sizes[k]);
            CHECK_EQ(gm_free_checked(p), GM_OK);
        }
    }
    CHECK_EQ(gm_check_heap(), 0);
}

TEST(aligned_alloc) {
    static const size_t bad[] = {0, 3, 24, 48, 1000};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errno = 0;
        CHECK(gm_aligned_alloc(bad[i], 64) == NULL);
        CHECK_EQ(errno, EINVAL);
    }
    for (size_t align = 1; align <= 65536; align *= 2) {
        static const size_t sizes[] = {1, 7, 64, 100, 3000, 33000};
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            void *p = gm_aligned_alloc(align, sizes[k]);
            CHECK(p != NULL);
            CHECK_EQ((uintptr_t)p % align, 0);
            CHECK_EQ((uintptr_t)p % 16, 0);
            CHECK(gm_usable_size(p) >= sizes[k]);
            CHECK_EQ(gm_check(p), GM_OK);
            if (p != NULL)
                memset(p, 2, sizes[k]);
            gm_free(p);
        }
    }
    CHECK_EQ(gm_check_heap(), 0);
}

TEST(free_null) {
    uint64_t bad = stats().bad_frees;
    errno = 0;
    gm_free(NULL);
    CHECK_EQ(errno, 0);
    CHECK_EQ(gm_free_checked(NULL), GM_OK);
    CHECK_EQ(stats().bad_frees, bad);
}

/* ---- bad pointers, abort_on_error = 0 --------------------------------------- */

/*
 * p is bad with error `code`: gm_check says so, gm_free_checked refuses it
 * with that code, gm_free sets errno EINVAL and returns, gm_realloc returns
 * NULL with EINVAL; each counts one bad free; the heap is untouched.
 */
static void expect_bad(const char *what, void *p, int code) {
    uint64_t b0 = stats().bad_frees;
    int got = gm_check(p);
    if (got != code)
        fprintf(stderr, "%s: gm_check(%p) = %d (%s), want %d\n", what, p, got, gm_strerror(got), code);
    CHECK_EQ(got, code);
    got = gm_free_checked(p);
    if (got != code)
        fprintf(stderr, "%s: gm_free_checked(%p) = %d, want %d\n", what, p, got, code);
    CHECK_EQ(got, code);
    CHECK_EQ(stats().bad_frees, b0 + 1);
    CHECK_EQ(gm_check_heap(), 0);
    errno = 0;
    gm_free(p);
    CHECK_EQ(errno, EINVAL);
    CHECK_EQ(stats().bad_frees, b0 + 2);
    CHECK_EQ(gm_check_heap(), 0);
    errno = 0;
    CHECK(gm_realloc(p, 10) == NULL);
    CHECK_EQ(errno, EINVAL);
    CHECK_EQ(stats().bad_frees, b0 + 3);
    CHECK_EQ(gm_check(p), code); /* nothing changed */
    CHECK_EQ(gm_check_heap(), 0);
}

static void set_abort(long long v) { CHECK_EQ(gm_option_set("abort_on_error", v), 0); }

TEST(bad_free_foreign) {
    set_abort(0);
    int local = 0;
    static int stat_var;
    void *libc = malloc(64);
    expect_bad("stack", &local, GM_ERR_NOT_OURS);
    expect_bad("static", &stat_var, GM_ERR_NOT_OURS);
    expect_bad("libc malloc", libc, GM_ERR_NOT_OURS);
    expect_bad("(void *)-1", (void *)-1, GM_ERR_NOT_OURS);
    expect_bad("non-canonical", (void *)(uintptr_t)0xffff800000000000ull, GM_ERR_NOT_OURS);
    free(libc);
    set_abort(1);
}

TEST(bad_free_interior) {
    set_abort(0);
    unsigned char *p = gm_malloc(64), *l = gm_malloc(100000);
    CHECK(p != NULL && l != NULL);
    if (p == NULL || l == NULL)
        return;
    fill(p, 64, 4);
    fill(l, 100000, 5);
    expect_bad("small +1", p + 1, GM_ERR_INTERIOR);
    expect_bad("small +8", p + 8, GM_ERR_INTERIOR);
    expect_bad("small +32", p + 32, GM_ERR_INTERIOR);
    expect_bad("small +63", p + 63, GM_ERR_INTERIOR);
    expect_bad("large +8", l + 8, GM_ERR_INTERIOR);
    expect_bad("large +16", l + 16, GM_ERR_INTERIOR);
    expect_bad("large second page", l + PAGE_SIZE, GM_ERR_INTERIOR);
    expect_bad("large last byte", l + 99999, GM_ERR_INTERIOR);
    /* The objects are intact and still live. */
    CHECK_EQ(gm_check(p), GM_OK);
    CHECK_EQ(gm_check(l), GM_OK);
    CHECK_EQ(verify(p, 64, 4), 64);
    CHECK_EQ(verify(l, 100000, 5), 100000);
    CHECK_EQ(gm_free_checked(p), GM_OK);
    CHECK_EQ(gm_free_checked(l), GM_OK);
    CHECK_EQ(gm_check_heap(), 0);
    set_abort(1);
}

/* A pointer at the tail of a span (just past its last object, at a multiple
 * of the object size): free() reads the spare state byte there. */
TEST(bad_free_span_tail) {
    set_abort(0);
    void *p = gm_malloc(48); /* class 48: 170 objects, 32 bytes of tail */
    CHECK(p != NULL);
    gm_mspan *s = gm_span_of((uintptr_t)p);
    CHECK(s != NULL && s->elemsize == 48 && s->nelems == 170);
    if (s != NULL) {
        uintptr_t tail = s->startAddr + (uintptr_t)s->nelems * s->elemsize;
        CHECK(tail < s->startAddr + s->npages * PAGE_SIZE);
        expect_bad("span tail", (void *)tail, GM_ERR_INTERIOR);
        expect_bad("span tail + 16", (void *)(tail + 16), GM_ERR_INTERIOR);
    }
    gm_free(p);
    set_abort(1);
}

TEST(double_free_on_thread_list) {
    set_abort(0);
    void *p = gm_malloc(48);
    CHECK(p != NULL);
    gm_free(p);
    gm_mspan *s = gm_span_of((uintptr_t)p);
    CHECK(s != NULL && gm_objstate(s, gm_span_index(s, (uintptr_t)p)) == OBJ_CACHED); /* precondition */
    expect_bad("double free, on the list", p, GM_ERR_NOT_ALLOCATED);
    /* The list is intact: the object comes back, once. */
    void *q = gm_malloc(48), *r = gm_malloc(48);
    CHECK(q == p);
    CHECK(r != p);
    fill(q, 48, 6);
    CHECK_EQ(gm_free_checked(q), GM_OK);
    CHECK_EQ(gm_free_checked(r), GM_OK);
    CHECK_EQ(gm_check_heap(), 0);
    set_abort(1);
}

TEST(double_free_after_flush) {
    set_abort(0);
    gm_thread_flush();
    void *keep = gm_malloc(64), *p = gm_malloc(64);
    CHECK(keep != NULL && p != NULL);
    CHECK(gm_span_of((uintptr_t)keep) == gm_span_of((uintptr_t)p)); /* keep holds the span */
    gm_free(p);
    gm_thread_flush();
    gm_mspan *s = gm_span_of((uintptr_t)p);
    CHECK(s != NULL && s->state == SPAN_INUSE && gm_objstate(s, gm_span_index(s, (uintptr_t)p)) == OBJ_FREE);
    expect_bad("double free, after flush", p, GM_ERR_NOT_ALLOCATED);
    CHECK_EQ(gm_check(keep), GM_OK);
    CHECK_EQ(gm_free_checked(keep), GM_OK);
    CHECK_EQ(gm_check_heap(), 0);
    set_abort(1);
}

TEST(double_free_large) {
    set_abort(0);
    void *l = gm_malloc(200000);
    CHECK(l != NULL);
    CHECK_EQ(gm_free_checked(l), GM_OK);
    expect_bad("double free, large", l, GM_ERR_NOT_ALLOCATED);
    /* Its pages are reusable. */
    void *m = gm_malloc(200000);
    CHECK(m != NULL);
    if (m != NULL)
        memset(m, 3, 200000);
    CHECK_EQ(gm_free_checked(m), GM_OK);
    CHECK_EQ(gm_check_heap(), 0);
    set_abort(1);
}

TEST(double_free_after_span_freed) {
    set_abort(0);
    gm_thread_flush();
    void *p = gm_malloc(20480); /* 2 per 5-page span: a span of its own */
    CHECK(p != NULL);
    gm_free(p);
    gm_thread_flush(); /* the span is empty and uncached: back to the heap */
    gm_mspan *s = gm_span_of((uintptr_t)p);
    CHECK(s == NULL || s->state != SPAN_INUSE); /* precondition */
    expect_bad("double free, span gone", p, GM_ERR_NOT_ALLOCATED);
    void *q = gm_malloc(20480);
    CHECK(q != NULL);
    CHECK_EQ(gm_free_checked(q), GM_OK);
    CHECK_EQ(gm_check_heap(), 0);
    set_abort(1);
}

TEST(free_never_allocated_slot) {
    set_abort(0);
    gm_thread_flush();
    char *p = gm_malloc(3072); /* a fresh span: the next slot was never handed out */
    CHECK(p != NULL);
    if (p == NULL)
        return;
    gm_mspan *s = gm_span_of((uintptr_t)p);
    uintptr_t i = gm_span_index(s, (uintptr_t)p);
    CHECK(i + 1 < s->nelems && gm_objstate(s, i + 1) == OBJ_FREE); /* precondition */
    expect_bad("never allocated", p + 3072, GM_ERR_NOT_ALLOCATED);
    /* The slot is handed out normally afterwards. */
    char *q = gm_malloc(3072);
    CHECK(q == p + 3072);
    CHECK_EQ(gm_check(q), GM_OK);
    memset(q, 1, 3072);
    CHECK_EQ(gm_free_checked(q), GM_OK);
    CHECK_EQ(gm_free_checked(p), GM_OK);
    CHECK_EQ(gm_check_heap(), 0);
    set_abort(1);
}

/* ---- bad pointers, abort_on_error = 1 ----------------------------------------- */

/* Run `bad` on p in a child with the default abort_on_error = 1: it must
 * die of SIGABRT and say on stderr which pointer it was given. */
static void expect_abort(const char *what, void (*bad)(void *), void *p) {
    int fds[2];
    CHECK_EQ(pipe(fds), 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid < 0)
        return;
    if (pid == 0) {
        struct rlimit nocore = {0, 0};
        setrlimit(RLIMIT_CORE, &nocore);
        close(fds[0]);
        dup2(fds[1], 2);
        gm_option_set("abort_on_error", 1);
        bad(p);
        _exit(0); /* should not get here */
    }
    close(fds[1]);
    char buf[4096];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = read(fds[0], buf + n, sizeof buf - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = 0;
    close(fds[0]);
    int status = 0;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
    char ptr[32];
    snprintf(ptr, sizeof ptr, "%p", p);
    CHECK(strstr(buf, ptr) != NULL);
    CHECK(strstr(buf, "pygomalloc") != NULL);
    if (!WIFSIGNALED(status) || strstr(buf, ptr) == NULL)
        fprintf(stderr, "%s: status %#x, stderr: \"%s\" (pointer %s)\n", what, status, buf, ptr);
}

static void do_free(void *p) { gm_free(p); }
static void do_double_free(void *p) {
    gm_free(p);
    gm_free(p);
}
static void do_realloc(void *p) { (void)gm_realloc(p, 100); }

TEST(abort_on_error_default) {
    long long v = -1;
    CHECK_EQ(gm_option_get("abort_on_error", &v), 0);
    CHECK_EQ(v, 1);
    if (UNDER_TSAN) {
        /* fork() runs the allocator's atfork handler, which holds every
         * allocator lock at once (registry, 67 class locks, heap, ...):
         * more than the 64 that TSan's deadlock detector can track, so TSan
         * dies with "CHECK failed: sanitizer_deadlock_detector.h:67".  A
         * TSan limitation: the child-process tests run in the other builds. */
        fprintf(stderr, "(TSan build: abort tests in child processes skipped)\n");
        return;
    }
    int local;
    char *p = gm_malloc(64), *l = gm_malloc(100000);
    CHECK(p != NULL && l != NULL);
    expect_abort("double free", do_double_free, p);
    expect_abort("interior", do_free, p + 16);
    expect_abort("large interior", do_free, l + PAGE_SIZE);
    expect_abort("foreign", do_free, &local);
    expect_abort("realloc foreign", do_realloc, &local);
    expect_abort("double free large", do_double_free, l);
    /* The parent is unaffected. */
    CHECK_EQ(gm_check(p), GM_OK);
    CHECK_EQ(gm_check(l), GM_OK);
    gm_free(p);
    gm_free(l);
    CHECK_EQ(gm_check_heap(), 0);
}

/* ---- options -------------------------------------------------------------- */

TEST(options) {
    int n = 0;
    bool seen_abort = false, seen_tcache = false, seen_madv = false;
    for (const char *name; (name = gm_option_name(n)) != NULL; n++) {
        long long v = -12345;
        CHECK_EQ(gm_option_get(name, &v), 0);
        CHECK(v != -12345);
        /* Round trip: set to its value, read it back. */
        CHECK_EQ(gm_option_set(name, v), 0);
        long long w = -1;
        CHECK_EQ(gm_option_get(name, &w), 0);
        CHECK_EQ(w, v);
        for (int j = 0; j < n; j++)
            CHECK(strcmp(gm_option_name(j), name) != 0);
        seen_abort |= strcmp(name, "abort_on_error") == 0;
        seen_tcache |= strcmp(name, "tcache_bytes") == 0;
        seen_madv |= strcmp(name, "madv_free") == 0;
    }
    CHECK(n >= 6);
    CHECK(seen_abort && seen_tcache && seen_madv);
    CHECK(gm_option_name(-1) == NULL);
    CHECK(gm_option_name(n) == NULL);
    CHECK(gm_option_name(n + 100) == NULL);

    long long v = 0;
    CHECK_EQ(gm_option_set("no_such_option", 1), EINVAL);
    CHECK_EQ(gm_option_get("no_such_option", &v), EINVAL);
    CHECK_EQ(gm_option_set("", 1), EINVAL);
    CHECK_EQ(gm_option_set(NULL, 1), EINVAL);
    CHECK_EQ(gm_option_get(NULL, &v), EINVAL);
    CHECK_EQ(gm_option_set("ABORT_ON_ERROR", 1), EINVAL); /* names are exact */

    /* Out of range: refused, value unchanged. */
    CHECK_EQ(gm_option_set("abort_on_error", 2), EINVAL);
    CHECK_EQ(gm_option_set("abort_on_error", -1), EINVAL);
    CHECK_EQ(gm_option_get("abort_on_error", &v), 0);
    CHECK_EQ(v, 1);
    long long tc = 0;
    CHECK_EQ(gm_option_get("tcache_bytes", &tc), 0);
    CHECK_EQ(gm_option_set("tcache_bytes", -1), EINVAL);
    CHECK_EQ(gm_option_set("tcache_bytes", ((long long)1 << 24) + 1), EINVAL);
    CHECK_EQ(gm_option_set("tcache_bytes", LLONG_MIN), EINVAL);
    CHECK_EQ(gm_option_set("tcache_bytes", LLONG_MAX), EINVAL);
    CHECK_EQ(gm_option_get("tcache_bytes", &v), 0);
    CHECK_EQ(v, tc);
    /* In range: taken. */
    CHECK_EQ(gm_option_set("tcache_bytes", 65536), 0);
    CHECK_EQ(gm_option_get("tcache_bytes", &v), 0);
    CHECK_EQ(v, 65536);
    CHECK_EQ(gm_option_set("tcache_bytes", tc), 0);
    CHECK_EQ(gm_option_set("abort_on_error", 0), 0);
    CHECK_EQ(gm_option_get("abort_on_error", &v), 0);
    CHECK_EQ(v, 0);
    CHECK_EQ(gm_option_set("abort_on_error", 1), 0);
}

TEST(strerror) {
    const char *s[4];
    for (int i = 0; i < 4; i++) {
        s[i] = gm_strerror(i);
        CHECK(s[i] != NULL && s[i][0] != 0);
        for (int j = 0; j < i; j++)
            CHECK(strcmp(s[i], s[j]) != 0);
    }
    CHECK(gm_strerror(99) != NULL);
    CHECK(gm_strerror(-1) != NULL);
}

/* ---- stats ---------------------------------------------------------------- */

static void check_stats_consistent(const struct gm_stats *st) {
    CHECK_EQ(st->heap_objects, st->mallocs - st->frees);
    CHECK(st->heap_alloc <= st->heap_inuse);
    CHECK(st->heap_inuse <= st->heap_sys);
    CHECK(st->heap_sys <= st->sys);
    CHECK_EQ(st->heap_idle + st->heap_inuse, st->heap_sys);
    CHECK(st->heap_released <= st->heap_idle);
    CHECK(st->heap_sys <= st->heap_reserved);
    CHECK_EQ(st->heap_reserved, st->num_arenas * ARENA_SIZE);
    CHECK_EQ(st->sys, st->heap_sys + st->mspan_sys + st->mcache_sys + st->other_sys);
    CHECK(st->mspan_inuse <= st->mspan_sys);
    CHECK(st->mcache_inuse <= st->mcache_sys);
    CHECK(st->total_alloc >= st->heap_alloc);
    CHECK(st->cached_bytes + st->transfer_bytes <= st->heap_inuse - st->heap_alloc);
    uint64_t m = 0, f = 0, alloc = 0, spanpages = 0;
    for (int c = 0; c < NUM_CLASSES; c++) {
        const struct gm_size_class_stats *b = &st->by_size[c];
        CHECK(b->frees <= b->mallocs);
        m += b->mallocs;
        f += b->frees;
        alloc += (b->mallocs - b->frees) * b->size;
        /* Live objects sit in the class's spans (which also hold the free
         * and cached ones). */
        CHECK(b->capacity >= b->mallocs - b->frees);
        if (c > 0) {
            CHECK_EQ(b->size, gm_class_to_size[c]);
            CHECK_EQ(b->npages, gm_class_to_allocnpages[c]);
            CHECK_EQ(b->capacity, b->spans * gm_class_to_nelems[c]);
            spanpages += b->spans * b->npages;
        }
    }
    CHECK(spanpages * PAGE_SIZE <= st->heap_inuse);
    CHECK_EQ(m, st->mallocs);
    CHECK_EQ(f, st->frees);
    CHECK_EQ(st->by_size[0].mallocs - st->by_size[0].frees, st->large_objects);
    CHECK_EQ(st->by_size[0].spans, st->large_objects);
    CHECK(alloc <= st->heap_alloc); /* plus the large objects' bytes */
    CHECK(st->phys_page_size >= 4096 && (st->phys_page_size & (st->phys_page_size - 1)) == 0);
}

#define NSLOTS 1024
static void *slots[NSLOTS];
static size_t slot_size[NSLOTS];

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static uint64_t rng(void) {
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static size_t random_size(void) {
    uint64_t r = rng() % 1000;
    if (r < 700)
        return (size_t)(rng() % 512);
    if (r < 950)
        return (size_t)(rng() % MAX_SMALL_SIZE) + 1;
    return MAX_SMALL_SIZE + 1 + (size_t)(rng() % (2 * MIB));
}

static unsigned class_of_usable(size_t u) { return u <= MAX_SMALL_SIZE ? gm_size_to_class(u) : 0; }

TEST(stats_consistency) {
    gm_thread_flush();
    struct gm_stats s0 = stats();
    check_stats_consistent(&s0);
    CHECK_EQ(s0.cached_bytes, 0);
    uint64_t mallocs = 0, frees = 0;
    int64_t live_by_class[NUM_CLASSES] = {0};
    memset(slots, 0, sizeof slots);
    for (int op = 0; op < 30000; op++) {
        size_t i = (size_t)(rng() % NSLOTS);
        uint64_t kind = rng() % 10;
        if (slots[i] == NULL) {
            size_t n = random_size();
            void *p = kind < 2 ? gm_calloc(1, n) : gm_malloc(n);
            CHECK(p != NULL);
            if (p == NULL)
                continue;
            mallocs++;
            slots[i] = p;
            slot_size[i] = gm_usable_size(p);
            live_by_class[class_of_usable(slot_size[i])]++;
        } else if (kind < 3) {
            size_t n = random_size() + 1; /* realloc(p, 0) would free */
            size_t before = slot_size[i];
            void *q = gm_realloc(slots[i], n);
            CHECK(q != NULL);
            if (q == NULL)
                continue;
            if (q != slots[i]) {
                mallocs++;
                frees++;
            }
            live_by_class[class_of_usable(before)]--;
            slots[i] = q;
            slot_size[i] = gm_usable_size(q);
            live_by_class[class_of_usable(slot_size[i])]++;
        } else {
            live_by_class[class_of_usable(slot_size[i])]--;
            gm_free(slots[i]);
            frees++;
            slots[i] = NULL;
        }
        if (op % 5000 == 0) {
            struct gm_stats st = stats();
            check_stats_consistent(&st);
        }
    }
    /* Without a flush: objects on the free list count as freed. */
    struct gm_stats s1 = stats();
    check_stats_consistent(&s1);
    CHECK_EQ(s1.mallocs - s0.mallocs, mallocs);
    CHECK_EQ(s1.frees - s0.frees, frees);
    gm_thread_flush();
    struct gm_stats s2 = stats();
    check_stats_consistent(&s2);
    CHECK_EQ(s2.cached_bytes, 0);
    CHECK_EQ(s2.mallocs, s1.mallocs);
    CHECK_EQ(s2.frees, s1.frees);
    CHECK_EQ(s2.num_threads, 1);
    uint64_t live = 0, live_bytes = 0, live_large = 0;
    for (size_t i = 0; i < NSLOTS; i++)
        if (slots[i] != NULL) {
            live++;
            live_bytes += slot_size[i];
            live_large += slot_size[i] > MAX_SMALL_SIZE;
        }
    CHECK_EQ(s2.heap_objects - s0.heap_objects, live);
    CHECK_EQ(s2.heap_alloc - s0.heap_alloc, live_bytes);
    CHECK_EQ(s2.large_objects - s0.large_objects, live_large);
    for (int c = 0; c < NUM_CLASSES; c++) {
        int64_t d = (int64_t)(s2.by_size[c].mallocs - s2.by_size[c].frees) -
                    (int64_t)(s0.by_size[c].mallocs - s0.by_size[c].frees);
        if (d != live_by_class[c])
            fprintf(stderr, "class %d: %lld live by the stats, %lld by the test\n", c, (long long)d,
                    (long long)live_by_class[c]);
        CHECK_EQ(d, live_by_class[c]);
    }
    CHECK_EQ(gm_check_heap(), 0);
    for (size_t i = 0; i < NSLOTS; i++)
        gm_free(slots[i]);
    gm_thread_flush();
    struct gm_stats s3 = stats();
    check_stats_consistent(&s3);
    CHECK_EQ(s3.heap_objects, s0.heap_objects);
    CHECK_EQ(s3.heap_alloc, s0.heap_alloc);
    CHECK_EQ(s3.large_objects, s0.large_objects);
    CHECK(s3.total_alloc >= s0.total_alloc + live_bytes);
    CHECK_EQ(gm_check_heap(), 0);
}

TEST(free_owned_tells_ours_from_foreign) {
    struct gm_stats s0 = stats();
    void *ours = gm_malloc(40), *big = gm_malloc(200000);
    static char foreign[64];
    void *libc = malloc(40);
    CHECK_EQ(gm_free_owned(foreign), 0);
    CHECK_EQ(gm_free_owned(libc), 0);
    CHECK_EQ(gm_free_owned(NULL), 0);
    free(libc);
    CHECK_EQ(gm_free_owned(ours), 1);
    CHECK_EQ(gm_free_owned(big), 1);
    CHECK_EQ(gm_check(ours), GM_ERR_NOT_ALLOCATED);
    CHECK_EQ(gm_check(big), GM_ERR_NOT_ALLOCATED);
    struct gm_stats s1 = stats();
    CHECK_EQ(s1.heap_objects, s0.heap_objects);
    CHECK_EQ(s1.bad_frees, s0.bad_frees);
}

/* ---- the tiny allocator ------------------------------------------------------ */

#define TINY_N 4000

TEST(tiny_objects_share_blocks) {
    CHECK_EQ(gm_option_set("tiny", 1), 0);
    gm_thread_flush();
    struct gm_stats s0 = stats();
    static unsigned char *objs[TINY_N];
    static size_t sizes[TINY_N];
    for (int i = 0; i < TINY_N; i++) {
        sizes[i] = (size_t)(i % 8) + 1;
        objs[i] = gm_malloc(sizes[i]);
        CHECK(objs[i] != NULL);
        if (objs[i] == NULL)
            return;
        /* The alignment C requires for the size: the largest power of two
         * not above it. */
        size_t align = sizes[i] >= 8 ? 8 : sizes[i] >= 4 ? 4 : sizes[i] >= 2 ? 2 : 1;
        CHECK_EQ((uintptr_t)objs[i] % align, 0);
        CHECK(gm_usable_size(objs[i]) >= sizes[i] && gm_usable_size(objs[i]) <= 8);
        CHECK_EQ(gm_check(objs[i]), GM_OK);
        memset(objs[i], i & 0xff, sizes[i]);
    }
    for (int i = 0; i < TINY_N; i++)
        for (size_t b = 0; b < sizes[i]; b++)
            if (objs[i][b] != (unsigned char)(i & 0xff)) {
                CHECK(!"tiny objects overlap");
                i = TINY_N;
                break;
            }
    struct gm_stats s1 = stats();
    CHECK_EQ(s1.tiny_mallocs - s0.tiny_mallocs, TINY_N);
    /* 500 of each size: 1-byte objects sixteen to a block, 2-byte ones
     * eight, 3- and 4-byte ones four, the rest two: 32 + 63 + 250 + 1000
     * blocks of 16 bytes for 4000 objects (the 16-byte class would take
     * 4000 slots). */
    CHECK_EQ(s1.heap_objects - s0.heap_objects, 32 + 63 + 250 + 1000);
    CHECK_EQ(gm_check_heap(), 0);
    /* A pointer between slots is interior; a tiny double free is caught. */
    unsigned char *two = gm_malloc(2);
    CHECK_EQ(gm_check(two + 1), GM_ERR_INTERIOR);
    CHECK_EQ(gm_option_set("abort_on_error", 0), 0);
    CHECK_EQ(gm_free_checked(two + 1), GM_ERR_INTERIOR);
    CHECK_EQ(gm_free_checked(two), GM_OK);
    CHECK_EQ(gm_free_checked(two), GM_ERR_NOT_ALLOCATED);
    CHECK_EQ(gm_option_set("abort_on_error", 1), 0);
    /* calloc zeroes the slot; realloc keeps the bytes, in place while they fit. */
    unsigned char *z = gm_calloc(1, 3);
    CHECK(z != NULL && z[0] == 0 && z[1] == 0 && z[2] == 0);
    z[0] = 7;
    CHECK(gm_realloc(z, 4) == z);
    unsigned char *big = gm_realloc(z, 100);
    CHECK(big != NULL && big[0] == 7 && gm_usable_size(big) >= 100);
    gm_free(big);
    /* posix_memalign(8, 1) gets 8-byte alignment, not a 1-byte slot. */
    void *al = NULL;
    CHECK_EQ(gm_posix_memalign(&al, 8, 1), 0);
    CHECK_EQ((uintptr_t)al % 8, 0);
    gm_free(al);
    /* Everything freed: every block goes back as a 16-byte object. */
    for (int i = 0; i < TINY_N; i++)
        gm_free(objs[i]);
    gm_thread_flush(); /* retires the current blocks */
    struct gm_stats s2 = stats();
    CHECK_EQ(s2.heap_objects, s0.heap_objects);
    CHECK_EQ(s2.tiny_mallocs - s2.tiny_frees, s0.tiny_mallocs - s0.tiny_frees);
    CHECK_EQ(gm_check_heap(), 0);
    for (int i = 0; i < TINY_N; i++)
        CHECK(gm_check(objs[i]) != GM_OK);
    /* A tiny double free once the block has emptied and gone back to its
     * span: the address is inside a slot with no object in it, and the
     * second free is refused as not allocated (it was "interior"). */
    unsigned char *first = gm_malloc(1), *second = gm_malloc(1);
    CHECK(((uintptr_t)second & 15) != 0); /* not a slot's start: the block's second object */
    CHECK_EQ(gm_option_set("abort_on_error", 0), 0);
    CHECK_EQ(gm_free_checked(first), GM_OK);
    gm_thread_flush(); /* the block is no longer the thread's current one */
    CHECK_EQ(gm_free_checked(second), GM_OK); /* its last object: the block goes */
    CHECK_EQ(gm_check(second), GM_ERR_NOT_ALLOCATED);
    CHECK_EQ(gm_free_checked(second), GM_ERR_NOT_ALLOCATED);
    CHECK_EQ(gm_option_set("abort_on_error", 1), 0);
    CHECK_EQ(gm_check_heap(), 0);
    CHECK_EQ(gm_option_set("tiny", 0), 0);
    void *p = gm_malloc(3);
    CHECK_EQ(gm_usable_size(p), 16); /* off again: the 16-byte class */
    gm_free(p);
}

/* ---- heap profile ---------------------------------------------------------- */

#define PROF_N 300
static void *prof_objs[PROF_N + 1];

/* Allocates from a call site of its own, so that its records can be found. */
static __attribute__((noinline)) void profile_site(void) {
    for (int i = 0; i < PROF_N; i++)
        prof_objs[i] = gm_malloc(100);
    prof_objs[PROF_N] = gm_malloc(100 << 10); /* a large object */
    __asm__ volatile("" ::: "memory");
}

/* The record whose stack has a return address inside profile_site (a small
 * function: its code lies within 512 bytes of its address). */
static int profile_site_record(struct gm_profile_record *recs, int n, int want_large) {
    for (int i = 0; i < n; i++)
        for (uint32_t f = 0; f < recs[i].nstack; f++) {
            uintptr_t pc = (uintptr_t)recs[i].stack[f];
            if (pc > (uintptr_t)&profile_site && pc < (uintptr_t)&profile_site + 512 &&
                (recs[i].alloc_bytes > 64 * 1024) == want_large)
                return i;
        }
    return -1;
}

TEST(heap_profile_samples_and_forgets) {
    static struct gm_profile_record recs[4096];
    CHECK_EQ(gm_profile_read(NULL, 0, sizeof(struct gm_profile_record)) >= 0, 1);
    CHECK_EQ(gm_option_set("profile_rate", 1), 0); /* every allocation */
    profile_site();
    int n = gm_profile_read(recs, 4096, sizeof(struct gm_profile_record));
    CHECK(n >= 2 && n <= 4096);
    int small = profile_site_record(recs, n, 0), large = profile_site_record(recs, n, 1);
    CHECK(small >= 0 && large >= 0);
    if (small < 0 || large < 0)
        return;
    CHECK_EQ(recs[small].alloc_objects, PROF_N);
    CHECK_EQ(recs[small].alloc_bytes, (uint64_t)PROF_N * gm_usable_size(prof_objs[0]));
    CHECK_EQ(recs[small].free_objects, 0);
    CHECK_EQ(recs[large].alloc_objects, 1);
    CHECK_EQ(recs[large].alloc_bytes, gm_usable_size(prof_objs[PROF_N]));
    /* Every allocation sampled: the estimates are the exact figures. */
    CHECK_EQ(recs[small].alloc_objects_est, PROF_N);
    CHECK_EQ(recs[small].alloc_bytes_est, recs[small].alloc_bytes);
    CHECK_EQ(recs[large].alloc_objects_est, 1);
    CHECK_EQ(recs[large].alloc_bytes_est, recs[large].alloc_bytes);
    CHECK_EQ(recs[small].free_objects_est, 0);
    char sym[256];
    CHECK(gm_profile_symbol(recs[small].stack[0], sym, sizeof sym) == sym && sym[0] != 0);
    /* Sampled objects are live objects like any: checked, and the heap check
     * knows their state. */
    CHECK_EQ(gm_check(prof_objs[0]), GM_OK);
    CHECK_EQ(gm_check_heap(), 0);
    /* Frees take them out of the profile, large ones included; a double
     * free of a sampled object is still caught. */
    CHECK_EQ(gm_option_set("abort_on_error", 0), 0);
    for (int i = 0; i < PROF_N; i += 2)
        gm_free(prof_objs[i]);
    CHECK_EQ(gm_free_checked(prof_objs[0]), GM_ERR_NOT_ALLOCATED);
    CHECK_EQ(gm_option_set("abort_on_error", 1), 0);
    gm_free(prof_objs[PROF_N]);
    n = gm_profile_read(recs, 4096, sizeof(struct gm_profile_record));
    small = profile_site_record(recs, n, 0);
    large = profile_site_record(recs, n, 1);
    CHECK(small >= 0 && large >= 0);
    if (small < 0 || large < 0)
        return;
    CHECK_EQ(recs[small].free_objects, PROF_N / 2);
    CHECK_EQ(recs[large].free_objects, 1);
    CHECK_EQ(recs[large].free_bytes, recs[large].alloc_bytes);
    CHECK_EQ(recs[small].free_objects_est, PROF_N / 2);
    CHECK_EQ(recs[small].free_bytes_est, recs[small].free_bytes);
    CHECK_EQ(recs[large].free_bytes_est, recs[large].alloc_bytes_est);
    for (int i = 1; i < PROF_N; i += 2)
        gm_free(prof_objs[i]);
    CHECK_EQ(gm_option_set("profile_rate", 0), 0);
    n = gm_profile_read(recs, 4096, sizeof(struct gm_profile_record));
    small = profile_site_record(recs, n, 0);
    CHECK(small >= 0 && recs[small].free_objects == PROF_N && recs[small].free_bytes == recs[small].alloc_bytes);
    CHECK_EQ(gm_check_heap(), 0);
}

/* With rate R, about (bytes allocated) / R samples, which stand for about
 * the objects and bytes allocated. */
TEST(heap_profile_rate) {
    static struct gm_profile_record recs[4096];
    const int rate = 8192, count = 64 * 1024, size = 64; /* 4 MiB: 512 samples expected */
    int n0 = gm_profile_read(recs, 4096, sizeof(struct gm_profile_record));
    uint64_t before = 0, est_before = 0, est_bytes_before = 0;
    for (int i = 0; i < n0 && i < 4096; i++) {
        before += recs[i].alloc_objects;
        est_before += recs[i].alloc_objects_est;
        est_bytes_before += recs[i].alloc_bytes_est;
    }
    void **objs = gm_malloc(count * sizeof(void *)); /* before sampling: not in the estimate */
    CHECK_EQ(gm_option_set("profile_rate", rate), 0);
    for (int i = 0; i < count; i++)
        objs[i] = gm_malloc(size);
    CHECK_EQ(gm_option_set("profile_rate", 0), 0);
    int n = gm_profile_read(recs, 4096, sizeof(struct gm_profile_record));
    uint64_t after = 0, est_after = 0, est_bytes_after = 0;
    for (int i = 0; i < n && i < 4096; i++) {
        after += recs[i].alloc_objects;
        est_after += recs[i].alloc_objects_est;
        est_bytes_after += recs[i].alloc_bytes_est;
    }
    uint64_t samples = after - before, expect = (uint64_t)count * size / rate;
    /* Poisson: sd = sqrt(512) ~ 23; 25% is more than 5 sd. */
    CHECK(samples > expect * 3 / 4 && samples < expect * 5 / 4);
    if (!(samples > expect * 3 / 4 && samples < expect * 5 / 4))
        fprintf(stderr, "%llu samples, expected about %llu\n", (unsigned long long)samples,
                (unsigned long long)expect);
    /* Each sample counts 1/p objects, p = 1 - exp(-64/8192) = 0.00778: the
     * estimate's sd is sqrt(count (1 - p) / p) ~ 2890 objects (4.4%), and
     * 5 sd is 14450.  (This thread's countdown may hold 0 from the rate-1
     * test: one early sample, 128 objects, well inside.)  The bytes are the
     * objects' 64 each. */
    int64_t est = (int64_t)(est_after - est_before), est_bytes = (int64_t)(est_bytes_after - est_bytes_before);
    CHECK(est > count - 14450 && est < count + 14450);
    CHECK(est_bytes > (int64_t)size * (count - 14450) && est_bytes < (int64_t)size * (count + 14450));
    if (!(est > count - 14450 && est < count + 14450))
        fprintf(stderr, "estimated %lld objects, made %d\n", (long long)est, count);
    for (int i = 0; i < count; i++)
        gm_free(objs[i]);
    gm_free(objs);
    CHECK_EQ(gm_check_heap(), 0);
}

/* gm_profile_stack_of: a live sampled object's stack is its record's (the
 * one naming profile_site), small and large; anything else has none. */
static int in_profile_site(const void *const *stk, int n) {
    for (int f = 0; f < n; f++)
        if ((uintptr_t)stk[f] > (uintptr_t)&profile_site && (uintptr_t)stk[f] < (uintptr_t)&profile_site + 512)
            return 1;
    return 0;
}

#define STACK_THREADS 4
static void *stack_of_churn(void *arg) {
    (void)arg;
    int bad = 0;
    const void *stk[GM_PROFILE_DEPTH];
    for (int i = 0; i < 2000; i++) {
        void *p = gm_malloc(64 + (size_t)(i % 4) * 300);
        void *q = gm_malloc(40000); /* large */
        bad += gm_profile_stack_of(p, stk, GM_PROFILE_DEPTH) <= 0;
        bad += gm_profile_stack_of(q, stk, GM_PROFILE_DEPTH) <= 0;
        gm_free(p);
        gm_free(q);
    }
    return (void *)(intptr_t)bad;
}

TEST(heap_profile_stack_of) {
    const void *stk[GM_PROFILE_DEPTH + 1];
    /* A countdown drawn at a large rate does not delay rate 1: every
     * allocation is sampled at once (as Go's MemProfileRate = 1). */
    CHECK_EQ(gm_option_set("profile_rate", 1 << 30), 0);
    gm_free(gm_malloc(64));
    CHECK_EQ(gm_option_set("profile_rate", 1), 0);
    for (int i = 0; i < 100; i++) {
        void *p = gm_malloc(64 + (size_t)i * 8);
        CHECK(gm_profile_stack_of(p, NULL, 0) > 0);
        gm_free(p);
    }
    profile_site();
    void *unsampled_later = NULL;
    for (int which = 0; which < 2; which++) {
        void *p = prof_objs[which ? PROF_N : 7]; /* a small one, the large one */
        int n = gm_profile_stack_of(p, stk, GM_PROFILE_DEPTH);
        CHECK(n > 0 && n <= GM_PROFILE_DEPTH);
        CHECK(in_profile_site(stk, n));
        CHECK_EQ(gm_profile_stack_of(p, NULL, 0), n); /* counting */
        stk[1] = &stk;
        CHECK_EQ(gm_profile_stack_of(p, stk, 1), n);  /* a short array: one frame written */
        CHECK(n < 2 || stk[1] == &stk);
        CHECK_EQ(gm_profile_stack_of((char *)p + 16, stk, GM_PROFILE_DEPTH), 0); /* interior */
    }
    /* Threads query their own live objects while others come and go. */
    pthread_t t[STACK_THREADS];
    for (int i = 0; i < STACK_THREADS; i++)
        CHECK_EQ(pthread_create(&t[i], NULL, stack_of_churn, NULL), 0);
    for (int i = 0; i < STACK_THREADS; i++) {
        void *bad = NULL;
        pthread_join(t[i], &bad);
        CHECK_EQ((intptr_t)bad, 0);
    }
    CHECK_EQ(gm_option_set("profile_rate", 0), 0);
    unsampled_later = gm_malloc(64); /* not sampled */
    CHECK_EQ(gm_profile_stack_of(unsampled_later, stk, GM_PROFILE_DEPTH), 0);
    int local = 0;
    CHECK_EQ(gm_profile_stack_of(NULL, stk, GM_PROFILE_DEPTH), 0);
    CHECK_EQ(gm_profile_stack_of(&local, stk, GM_PROFILE_DEPTH), 0); /* not ours */
    errno = 0;
    CHECK_EQ(gm_profile_stack_of(prof_objs[0], stk, -1), -1);
    CHECK_EQ(errno, EINVAL);
    errno = 0;
    CHECK_EQ(gm_profile_stack_of(prof_objs[0], NULL, 3), -1);
    CHECK_EQ(errno, EINVAL);
    /* Freed: out of the profile, whatever the address holds next. */
    void *gone = prof_objs[0];
    for (int i = 0; i <= PROF_N; i++)
        gm_free(prof_objs[i]);
    CHECK_EQ(gm_profile_stack_of(gone, stk, GM_PROFILE_DEPTH), 0);
    gm_free(unsampled_later);
    CHECK_EQ(gm_check_heap(), 0);
}

int main(void) {
    /* No background scavenger: stats_consistency compares exact figures. */
    gm_option_set("scavenger", 0);
    RUN(malloc_zero);
    RUN(calloc_overflow);
    RUN(calloc_zeroes);
    RUN(malloc_huge);
    RUN(malloc_unmappable_leaves_no_trace);
    RUN(realloc_null);
    RUN(realloc_zero_frees);
    RUN(realloc_grow_shrink_preserves);
    RUN(realloc_large_shrinks_in_place);
    RUN(realloc_same_class_in_place);
    RUN(first_spans_start_at_their_colour);
    RUN(realloc_large_grows_into_free_pages);
    RUN(realloc_large_grows_into_cached_pages);
    RUN(usable_size);
    RUN(posix_memalign_bad_alignment);
    RUN(posix_memalign_good);
    RUN(aligned_alloc);
    RUN(free_null);
    RUN(bad_free_foreign);
    RUN(bad_free_interior);
    RUN(bad_free_span_tail);
    RUN(double_free_on_thread_list);
    RUN(double_free_after_flush);
    RUN(double_free_large);
    RUN(double_free_after_span_freed);
    RUN(free_never_allocated_slot);
    RUN(abort_on_error_default);
    RUN(options);
    RUN(strerror);
    RUN(stats_consistency);
    RUN(free_owned_tells_ours_from_foreign);
    RUN(tiny_objects_share_blocks);
    RUN(heap_profile_samples_and_forgets);
    RUN(heap_profile_rate);
    RUN(heap_profile_stack_of);
    return gmtest_summary();
}
