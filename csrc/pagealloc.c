/*
 * pagealloc.c: the page heap (mheap.go allocSpan/freeSpan, mpagecache.go).
 *
 * The heap hands out runs of 8 KiB pages.  Free pages form maximal runs,
 * each described by a span struct in state SPAN_FREE whose first and last
 * pages point to it in heapArena.spans (boundary tags).  Freeing a run looks
 * at the page just before it and the page just after it: if either belongs
 * to a free run, the runs merge.  So free runs are always maximal, and
 * allocation and free cost O(1) list operations plus the per-page work of
 * setting the span map, whatever the size of the heap:
 *
 *   free[n]   runs of exactly n pages, n < 128, with a bitmap of non-empty
 *             lists: the smallest run that fits is found with one ctz.
 *   large[k]  runs of 2^(k+7) .. 2^(k+8)-1 pages: any run in a higher
 *             bucket fits; within the bucket of the request we take the
 *             best fit (the only scan, over runs of similar size).
 *
 * Allocation takes the low end of the run and leaves the rest free.  When
 * nothing fits, the heap grows by whole 4 MiB chunks (arena.c); new pages
 * arrive released (Prepared), and merge with the free run below them.
 *
 * Released pages.  Each arena keeps a bit per page: set iff the page is free
 * and has been returned to the OS (sysUnused: Ready -> Prepared).  Allocating
 * such a page calls sysUsed (Prepared -> Ready) and takes it out of
 * heap_released.  Pages at or above an arena's zeroedBase have never been
 * handed out and are zero; released pages are zero too when released with
 * MADV_DONTNEED.  A span made only of such pages has needzero == 0, so
 * calloc skips the memset.
 *
 * The page cache.  Each mcache keeps up to 64 pages, taken from the heap in
 * one run, and carves small spans (< 16 pages) from them with a bitmap and
 * no lock, as Go's per-P pageCache does.  When the cache cannot fit a span,
 * it gives back what it has and takes the best-fitting free run of up to 64
 * pages, so the fragments that freed small spans leave behind are reused
 * before larger runs are cut (Go's cache takes whatever pages are free in a
 * 64-page block, to the same end).  The pages in a cache belong to no free
 * run (their span map entries are NULL), so they never merge; a cache
 * gives its free pages back when its thread exits or on gm_release.
 */
#define _GNU_SOURCE
#include <string.h>
#include <time.h>

#include "gm_internal.h"
#include "observe.h"

gm_mheap_t gm_mheap = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Set once MADV_FREE has been used: released pages may then keep old bytes. */
static bool madv_free_used;

/* Free pages of page caches that could not be given back for want of span
 * structs (out of memory at thread exit): mapped, neither free nor in use.
 * Counted so that the heap check still balances.  Under lock. */
static uint64_t lost_pages, lost_scav;

/* Page bitmaps of the arenas (scavenged, faulted): page a's bit. */
static inline uint64_t *page_word(uint64_t *bits, uintptr_t a) {
    return &bits[((a >> PAGE_SHIFT) & (PAGES_PER_ARENA - 1)) / 64];
}
static inline uint64_t page_mask(uintptr_t a) { return (uint64_t)1 << (((a >> PAGE_SHIFT) & (PAGES_PER_ARENA - 1)) % 64); }
static inline bool page_released(uintptr_t a) {
    return (*page_word(gm_arena_of(a)->scavenged, a) & page_mask(a)) != 0;
}

/* The first n bits. */
static inline uint64_t low_bits(uintptr_t n) { return n >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << n) - 1; }

/* The words of a page bitmap of the arenas (scavenged or faulted, at
 * offset off in gm_heap_arena) that cover the pages [a, end), one per call
 * with the mask of its pages in range; NULL after the last.  A run of
 * large blocks is 1,024 pages of 8 MiB: a page at a time, with an arena
 * lookup each, these loops were a quarter of bench malloc_large's time.
 * Words never cross arenas (PAGES_PER_ARENA is a multiple of 64); a run
 * that does takes words from each. */
typedef struct {
    uintptr_t a, end;
} page_words;

static inline uint64_t *page_words_next(page_words *it, size_t off, uint64_t *mask) {
    if (it->a >= it->end)
        return NULL;
    uintptr_t i = (it->a >> PAGE_SHIFT) & (PAGES_PER_ARENA - 1);
    uintptr_t n = 64 - i % 64, left = (it->end - it->a) >> PAGE_SHIFT;
    if (n > left)
        n = left;
    *mask = low_bits(n) << (i % 64);
    uint64_t *w = (uint64_t *)(void *)((char *)gm_arena_of(it->a) + off) + i / 64;
    it->a += n * PAGE_SIZE;
    return w;
}

/* Released pages in [base, base+npages). */
static uintptr_t count_released(uintptr_t base, uintptr_t npages) {
    uintptr_t n = 0;
    uint64_t m, *w;
    page_words it = {base, base + npages * PAGE_SIZE};
    while ((w = page_words_next(&it, offsetof(gm_heap_arena, scavenged), &m)) != NULL)
        n += (uintptr_t)gm_popcount(*w & m);
    return n;
}

bool gm_pages_faulted(uintptr_t base, uintptr_t npages) {
    uint64_t m, *w;
    page_words it = {base, base + npages * PAGE_SIZE};
    while ((w = page_words_next(&it, offsetof(gm_heap_arena, faulted), &m)) != NULL)
        if (*w & m)
            return true;
    return false;
}

/* Count bytes into heap_inuse before taking the pages: with a hard limit,
 * only if they fit under it, in one compare-and-swap, so that no number of
 * threads allocating at once can push heap_inuse past the limit.  Given
 * back with inuse_unreserve when the allocation fails after all. */
static bool inuse_reserve(uintptr_t bytes) {
    long long limit = LOAD_RELAXED(&gm_opt.hard_limit);
    if (limit <= 0) {
        ATOMIC_ADD(&gm_mheap.heap_inuse, bytes);
        return true;
    }
    uint64_t old = LOAD_RELAXED(&gm_mheap.heap_inuse);
    do {
        if (old + bytes > (uint64_t)limit)
            return false;
    } while (!__atomic_compare_exchange_n(&gm_mheap.heap_inuse, &old, old + bytes, true, __ATOMIC_RELAXED,
                                          __ATOMIC_RELAXED));
    return true;
}
static void inuse_unreserve(uintptr_t bytes) { ATOMIC_ADD(&gm_mheap.heap_inuse, -(uint64_t)bytes); }

/* What the last growths left retained over the goal (grow): bytes, and the
 * age a free run must have to be released for them.  The thread that grew
 * releases it once it has dropped the heap lock (unlock_and_release_grown),
 * so that no madvise runs under the heap lock.
 * Under lock. */
struct grown {
    uintptr_t bytes;
    uint64_t min_age_ms;
};
static struct grown grown_excess;

/* Drop the heap lock, then release what growths under it left over the
 * goal. */
static void unlock_and_release_grown(void) {
    struct grown g = grown_excess;
    grown_excess.bytes = 0;
    pthread_mutex_unlock(&gm_mheap.lock);
    if (g.bytes != 0)
        (void)gm_mheap_scavenge_aged(g.bytes, g.min_age_ms);
}

void gm_pages_init(void) {
    gm_fixalloc_init(&gm_mheap.spanalloc, sizeof(gm_mspan), &gm_mheap.mspan_sys);
}

/* ---- free run lists ---------------------------------------------------- */

static unsigned large_bucket(uintptr_t npages) {
    unsigned k = (unsigned)(63 - __builtin_clzll(npages)) - 7;
    return k < FREE_LARGE_LISTS ? k : FREE_LARGE_LISTS - 1;
}

static void free_insert(gm_mspan *s) {
    uintptr_t n = s->npages;
    STORE_RELAXED(&s->state, SPAN_FREE);
    s->sizeclass = 0;
    s->list = LIST_FREE;
    if (n < FREE_EXACT_LISTS) {
        gm_list_push(&gm_mheap.free[n], s);
        gm_mheap.freemask[n / 64] |= (uint64_t)1 << (n % 64);
    } else {
        unsigned k = large_bucket(n);
        gm_list_push(&gm_mheap.large[k], s);
        gm_mheap.largemask |= (uint64_t)1 << k;
    }
}

static void free_remove(gm_mspan *s) {
    uintptr_t n = s->npages;
    if (n < FREE_EXACT_LISTS) {
        gm_list_unlink(&gm_mheap.free[n], s);
        if (gm_mheap.free[n] == NULL)
            gm_mheap.freemask[n / 64] &= ~((uint64_t)1 << (n % 64));
    } else {
        unsigned k = large_bucket(n);
        gm_list_unlink(&gm_mheap.large[k], s);
        if (gm_mheap.large[k] == NULL)
            gm_mheap.largemask &= ~((uint64_t)1 << k);
    }
    s->list = LIST_NONE;
}

/* The free run to allocate npages from, or NULL. */
static gm_mspan *free_find(uintptr_t npages) {
    if (npages < FREE_EXACT_LISTS) {
        for (uintptr_t w = npages / 64; w < 2; w++) {
            uint64_t m = gm_mheap.freemask[w];
            if (w == npages / 64)
                m &= ~(uint64_t)0 << (npages % 64);
            if (m != 0)
                return gm_mheap.free[w * 64 + (uintptr_t)__builtin_ctzll(m)];
        }
        if (gm_mheap.largemask != 0)
            return gm_mheap.large[__builtin_ctzll(gm_mheap.largemask)];
        return NULL;
    }
    unsigned k = large_bucket(npages);
    gm_mspan *best = NULL;
    for (gm_mspan *s = gm_mheap.large[k]; s != NULL; s = s->next)
        if (s->npages >= npages && (best == NULL || s->npages < best->npages ||
                                    (s->npages == best->npages && s->startAddr < best->startAddr)))
            best = s;
    if (best != NULL)
        return best;
    uint64_t m = k + 1 < 64 ? gm_mheap.largemask & (~(uint64_t)0 << (k + 1)) : 0;
    return m != 0 ? gm_mheap.large[__builtin_ctzll(m)] : NULL;
}

static void set_tag(uintptr_t page, gm_mspan *v) {
    gm_heap_arena *ha = gm_arena_of(page);
    STORE_RELAXED(&ha->spans[(page >> PAGE_SHIFT) & (PAGES_PER_ARENA - 1)], v);
}

/* A free run adjacent to address a, i.e. containing page a, if it is on a
 * free list and is the run that ends (or starts) there. */
static gm_mspan *free_run_at(uintptr_t a) {
    gm_mspan *t = gm_span_of(a);
    /* state first: only a free run's other fields belong to the heap lock. */
    if (t == NULL || LOAD_RELAXED(&t->state) != SPAN_FREE || t->list != LIST_FREE)
        return NULL;
    return t;
}

/*
 * Give [base, base+npages) to the free lists, merging with neighbours.  s is
 * a span struct to describe the run; with NULL, a merged neighbour's struct
 * is reused, else one is taken from fixalloc.  Returns false, having changed
 * nothing, only when s is NULL, no neighbour is free and fixalloc fails.
 * Pages' scavenged bits must already be right.  Under lock.
 */
static bool free_range(gm_mspan *s, uintptr_t base, uintptr_t npages, uint64_t since) {
    gm_mspan *left = free_run_at(base - PAGE_SIZE), *right = free_run_at(base + npages * PAGE_SIZE);
    if (left != NULL && left->startAddr + left->npages * PAGE_SIZE != base)
        left = NULL;
    if (right != NULL && right->startAddr != base + npages * PAGE_SIZE)
        right = NULL;
    if (s == NULL && left == NULL && right == NULL && (s = gm_fixalloc_alloc(&gm_mheap.spanalloc)) == NULL)
        return false;
    uintptr_t nreleased = count_released(base, npages);
    gm_mspan *t = left;
    if (t != NULL) {
        free_remove(t);
        nreleased += t->nreleased;
        set_tag(base - PAGE_SIZE, NULL);
        base = t->startAddr;
        npages += t->npages;
        if (t->unusedsince > since)
            since = t->unusedsince;
        if (s == NULL)
            s = t;
        else
            gm_fixalloc_free(&gm_mheap.spanalloc, t);
    }
    uintptr_t end = base + npages * PAGE_SIZE;
    t = right;
    if (t != NULL) {
        free_remove(t);
        nreleased += t->nreleased;
        set_tag(end, NULL);
        npages += t->npages;
        if (t->unusedsince > since)
            since = t->unusedsince;
        if (s == NULL)
            s = t;
        else
            gm_fixalloc_free(&gm_mheap.spanalloc, t);
    }
    s->startAddr = base;
    s->npages = npages;
    s->nreleased = nreleased;
    s->unusedsince = since;
    set_tag(base, s);
    set_tag(base + (npages - 1) * PAGE_SIZE, s);
    free_insert(s);
    return true;
}

/* Map more memory: it arrives Prepared, i.e. released. Under lock. */
static bool grow(uintptr_t npages) {
    /* The struct for the new run first: once mapped, the memory must go
     * somewhere. */
    gm_mspan *s = gm_fixalloc_alloc(&gm_mheap.spanalloc);
    if (s == NULL)
        return false;
    uintptr_t got = 0;
    uintptr_t v = gm_arena_grow(npages * PAGE_SIZE, &got);
    if (v == 0) {
        gm_fixalloc_free(&gm_mheap.spanalloc, s);
        return false;
    }
    for (uintptr_t a = v; a < v + got; a += PAGE_SIZE) {
        gm_heap_arena *ha = gm_arena_of(a);
        uintptr_t i = (a >> PAGE_SHIFT) & (PAGES_PER_ARENA - 1);
        ha->scavenged[i / 64] |= (uint64_t)1 << (i % 64);
    }
    ATOMIC_ADD(&gm_mheap.heap_released, got);
    gm_obs_grow(v, got);
    (void)free_range(s, v, got / PAGE_SIZE, 0);
    /* As mheap.grow: growing should not leave more retained than the goal
     * (or the soft limit) allows once the pages it grew for are in use;
     * release the excess from other free runs.  Unlike Go, only from runs
     * free for the goal's age (gm_scavenge_min_age; none over the soft
     * limit): a heap of large blocks freed and allocated again grows
     * whenever no free run fits the next block, and released its youngest
     * free runs each time, which the next blocks took and faulted back in
     * (bench malloc_large: 34,000 page faults against 19,500, and the
     * same peak RSS).  The background scavenger releases
     * them once they are that old.  Released by the growing thread once
     * it has dropped the lock (struct grown). */
    uintptr_t excess = gm_scavenge_excess(npages * PAGE_SIZE);
    if (excess != 0) {
        uint64_t age = gm_scavenge_min_age(npages * PAGE_SIZE);
        if (grown_excess.bytes == 0 || age < grown_excess.min_age_ms)
            grown_excess.min_age_ms = age;
        grown_excess.bytes += excess;
    }
    return true;
}

/* Take npages from the front of free run s (off its list; what is left goes
 * back on one).  Returns s if the run is used up, its struct the caller's to
 * reuse or free, else NULL.  Under lock. */
static gm_mspan *cut_front(gm_mspan *s, uintptr_t npages) {
    free_remove(s);
    if (s->npages == npages)
        return s;
    s->nreleased -= count_released(s->startAddr, npages);
    s->startAddr += npages * PAGE_SIZE;
    s->npages -= npages;
    set_tag(s->startAddr, s);
    free_insert(s);
    return NULL;
}

/*
 * Take npages from the free lists (growing if needed).  Returns the base, or
 * 0.  If the run taken was exactly npages, its struct is returned in *reuse.
 * The span map entries of the taken pages are stale: the caller sets them.
 */
static uintptr_t take_pages(uintptr_t npages, gm_mspan **reuse) {
    gm_mspan *s = free_find(npages);
    if (s == NULL) {
        if (!grow(npages))
            return 0;
        s = free_find(npages);
        if (s == NULL)
            return 0;
    }
    uintptr_t base = s->startAddr;
    *reuse = cut_front(s, npages);
    return base;
}

/*
 * fault_on_free: the pages of [base, base+npages) that are PROT_NONE become
 * read/write again (Prepared: fresh zero pages, still counted as released).
 * False when the OS refuses: the pages not yet re-mapped stay faulted, and
 * the caller puts the run back.  Under lock.
 */
static bool unfault_pages(uintptr_t base, uintptr_t npages) {
    if (likely(!gm_pages_faulted(base, npages)))
        return true;
    uintptr_t end = base + npages * PAGE_SIZE;
    for (uintptr_t a = base; a < end; a += PAGE_SIZE) {
        if (likely(!(*page_word(gm_arena_of(a)->faulted, a) & page_mask(a))))
            continue;
        uintptr_t b = a + PAGE_SIZE; /* one call per faulted stretch */
        while (b < end && (*page_word(gm_arena_of(b)->faulted, b) & page_mask(b)))
            b += PAGE_SIZE;
        if (gm_sysMap((void *)a, b - a) != 0)
            return false;
        gm_obs_remapped(a, b - a);
        for (; a < b; a += PAGE_SIZE)
            *page_word(gm_arena_of(a)->faulted, a) &= ~page_mask(a);
        a -= PAGE_SIZE;
    }
    return true;
}

/*
 * Pages [base, base+npages) leave the heap: clear their scavenged bits and
 * raise zeroedBase past them.  Returns bitmaps (bit i for page i, npages <=
 * 64 only) or, for larger runs, whether any page was released and whether
 * all are zero.  Under lock.
 */
struct page_state {
    uint64_t scav, zero;   /* per page, for runs of <= 64 pages */
    uintptr_t nscav;       /* released pages */
    bool allzero;
};

static struct page_state claim_pages(uintptr_t base, uintptr_t npages) {
    struct page_state ps = {0, 0, 0, true};
    uintptr_t a = base, j = 0; /* the word's first page, and its index in the run */
    uint64_t m, *w;
    page_words it = {base, base + npages * PAGE_SIZE};
    while ((w = page_words_next(&it, offsetof(gm_heap_arena, scavenged), &m)) != NULL) {
        gm_heap_arena *ha = gm_arena_of(a);
        unsigned sh = (unsigned)__builtin_ctzll(m), n = (unsigned)gm_popcount(m);
        GM_ASSERT(!(ha->faulted[((a >> PAGE_SHIFT) & (PAGES_PER_ARENA - 1)) / 64] & m)); /* unfault_pages ran */
        uint64_t scav = *w & m;
        *w &= ~m;
        ps.nscav += (uintptr_t)gm_popcount(scav);
        /* Zero: at or above zeroedBase, or released (unless MADV_FREE,
         * which may leave old bytes). */
        uintptr_t off = a - ha->base, first_fresh = 0;
        if (ha->zeroedBase > off)
            first_fresh = (ha->zeroedBase - off + PAGE_SIZE - 1) >> PAGE_SHIFT;
        uint64_t zero = (first_fresh >= n ? 0 : (low_bits(n) & ~low_bits(first_fresh)) << sh) |
                        (madv_free_used ? 0 : scav);
        if (zero != m)
            ps.allzero = false;
        if (j < 64) {
            ps.scav |= (scav >> sh) << j;
            ps.zero |= (zero >> sh) << j;
        }
        if (off + n * PAGE_SIZE > ha->zeroedBase)
            ha->zeroedBase = off + n * PAGE_SIZE;
        a += n * PAGE_SIZE;
        j += n;
    }
    return ps;
}

/* The span's heap_inuse bytes were reserved (inuse_reserve), and its
 * heap's (gm_heap_reserve). */
static void init_span(gm_mspan *s, uintptr_t base, uintptr_t npages, uint8_t sizeclass, bool zero, gm_heap *hp) {
    s->heap = hp;
    s->liveval = hp == &gm_default_heap ? OBJ_LIVE(sizeclass) : OBJ_LIVE_HEAP(sizeclass);
    s->startAddr = base;
    s->npages = npages;
    STORE_RELAXED(&s->state, SPAN_INUSE);
    s->list = LIST_NONE;
    s->needzero = zero ? 0 : 1;
    s->next = s->prev = NULL;
    s->cachedBy = NULL; /* the in-use pair: its bytes held the free run's */
    s->lastOwner = NULL;
    if (sizeclass != 0) {
        gm_span_init_small(s, sizeclass);
    } else {
        s->objstate = NULL;
        s->sizeclass = 0;
        s->elemsize = npages * PAGE_SIZE;
        s->divMul = 0;
        s->nelems = 1;
        s->allocCount = 1;
        s->freeindex = 1;
        s->allocCache = 0;
    }
    if (sizeclass == 0) {
        ATOMIC_ADD(&gm_mheap.large_mallocs, 1);
        ATOMIC_ADD(&gm_mheap.large_bytes_alloc, npages * PAGE_SIZE);
    }
    gm_set_spans(s, base, npages, s);
    gm_heap_arena *ha = gm_arena_of(base);
    uintptr_t i = (base >> PAGE_SHIFT) & (PAGES_PER_ARENA - 1);
    __atomic_fetch_or(&ha->pageInUse[i / 64], (uint64_t)1 << (i % 64), __ATOMIC_RELAXED);
    gm_obs_span_alloc(base, npages, sizeclass);
}

/* ---- the page cache ---------------------------------------------------- */

/* Give the cache's free pages back to the free lists.  Each run needs a
 * span struct: from fixalloc, else from c's spare ones.  Returns false when
 * neither has one: the runs not given back stay in the cache.  Under lock. */
static bool pagecache_giveback(gm_mcache *c) {
    gm_pagecache *pc = &c->pcache;
    uint64_t now = gm_now_ms();
    while (pc->free != 0) {
        unsigned i = (unsigned)__builtin_ctzll(pc->free);
        uint64_t rest = ~(pc->free >> i);
        unsigned n = rest == 0 ? 64 - i : (unsigned)__builtin_ctzll(rest); /* run length */
        uint64_t bits = (n == 64 ? ~(uint64_t)0 : (((uint64_t)1 << n) - 1)) << i;
        gm_mspan *s = gm_fixalloc_alloc(&gm_mheap.spanalloc);
        if (s == NULL && c->nspancache > 0)
            s = c->spancache[--c->nspancache];
        if (s == NULL)
            return false;
        for (unsigned j = i; j < i + n; j++)
            if (pc->scav & ((uint64_t)1 << j)) {
                uintptr_t a = pc->base + (uintptr_t)j * PAGE_SIZE;
                *page_word(gm_arena_of(a)->scavenged, a) |= page_mask(a);
            }
        (void)free_range(s, pc->base + (uintptr_t)i * PAGE_SIZE, n, now);
        pc->free &= ~bits;
        pc->scav &= ~bits;
    }
    pc->base = 0;
    pc->scav = pc->zero = pc->nocross = 0;
    return true;
}

/*
 * Refill the cache with a free run of up to 64 pages that fits npages,
 * giving back what is left of the old one.  The run is the best fit, so
 * small fragments of the heap are used up before large runs are cut.  Also
 * tops up the span structs.  Takes the heap lock.
 */
/* Does the run of n pages at base leave no room for a small span of npages
 * on either side of the arena boundary it crosses? */
static bool straddles(uintptr_t base, uintptr_t n, uintptr_t npages) {
    uintptr_t next = (base + ARENA_SIZE) & ~(ARENA_SIZE - 1);
    if (next >= base + n * PAGE_SIZE)
        return false;
    uintptr_t before = (next - base) >> PAGE_SHIFT;
    return before < npages && n - before < npages;
}

static bool pagecache_refill(gm_mcache *c, uintptr_t npages, bool small) {
    gm_pagecache *pc = &c->pcache;
    pthread_mutex_lock(&gm_mheap.lock);
    if (!pagecache_giveback(c)) {
        pthread_mutex_unlock(&gm_mheap.lock);
        return false;
    }
    gm_mspan *run = free_find(npages), *s = NULL;
    uintptr_t take = run != NULL && run->npages < PAGE_CACHE_PAGES ? run->npages : PAGE_CACHE_PAGES;
    /* 64 pages cross at most one arena boundary, with 32 on one side. */
    if (small && take < PAGE_CACHE_PAGES && straddles(run->startAddr, take, npages))
        take = PAGE_CACHE_PAGES;
    uintptr_t base = take_pages(take, &s);
    if (base == 0) {
        pthread_mutex_unlock(&gm_mheap.lock);
        return false;
    }
    if (!unfault_pages(base, take)) {
        /* Back where they came from: with s, or merged with the rest of the
         * run they were cut from, whose struct describes the whole. */
        (void)free_range(s, base, take, gm_now_ms());
        pthread_mutex_unlock(&gm_mheap.lock);
        return false;
    }
    if (s != NULL)
        gm_fixalloc_free(&gm_mheap.spanalloc, s);
    gm_set_spans(NULL, base, take, NULL);
    struct page_state ps = claim_pages(base, take);
    while (c->nspancache < SPAN_CACHE_MAX) {
        gm_mspan *t = gm_fixalloc_alloc(&gm_mheap.spanalloc);
        if (t == NULL)
            break;
        c->spancache[c->nspancache++] = t;
    }
    unlock_and_release_grown();
    pc->base = base;
    pc->free = take == 64 ? ~(uint64_t)0 : ((uint64_t)1 << take) - 1;
    pc->scav = ps.scav;
    pc->zero = ps.zero;
    /* Contiguous arenas make runs that cross arena boundaries; a small span
     * must not (its state bytes are in one arena's state map). */
    uintptr_t next = (base + ARENA_SIZE) & ~(ARENA_SIZE - 1);
    pc->nocross = next < base + take * PAGE_SIZE ? (uint64_t)1 << ((next - base) >> PAGE_SHIFT) : 0;
    return true;
}

/* Pages i..i+npages-1 of the cache that are all free (and, for a small
 * span, in one arena): a mask of such i. */
static uint64_t pagecache_fits(const gm_pagecache *pc, uintptr_t npages, bool small) {
    uint64_t m = pc->free;
    for (uintptr_t k = 1; k < npages && m != 0; k++) {
        m &= pc->free >> k;
        if (small)
            m &= ~(pc->nocross >> k); /* page i+k must not start another arena */
    }
    return m;
}

static gm_mspan *pagecache_alloc(gm_mcache *c, uintptr_t npages, uint8_t sizeclass, gm_heap *hp) {
    gm_pagecache *pc = &c->pcache;
    uint64_t m = pagecache_fits(pc, npages, sizeclass != 0);
    if (m == 0 || c->nspancache == 0) {
        if (!pagecache_refill(c, npages, sizeclass != 0) || c->nspancache == 0)
            return NULL;
        m = pagecache_fits(pc, npages, sizeclass != 0);
        if (m == 0)
            return NULL;
    }
    unsigned i = (unsigned)__builtin_ctzll(m);
    uint64_t bits = (npages == 64 ? ~(uint64_t)0 : (((uint64_t)1 << npages) - 1)) << i;
    uint64_t scav = pc->scav & bits;
    bool zero = (pc->zero & bits) == bits;
    pc->free &= ~bits;
    pc->scav &= ~bits;
    pc->zero &= ~bits;
    gm_mspan *s = c->spancache[--c->nspancache];
    uintptr_t base = pc->base + (uintptr_t)i * PAGE_SIZE;
    init_span(s, base, npages, sizeclass, zero, hp);
    if (scav != 0) {
        ATOMIC_ADD(&gm_mheap.heap_released, -(uint64_t)gm_popcount(scav) * PAGE_SIZE);
        gm_sysUsed((void *)base, npages * PAGE_SIZE);
    }
    return s;
}

/* Give the cache's free pages and span structs back to the heap. */
void gm_pagecache_flush(gm_mcache *c) {
    pthread_mutex_lock(&gm_mheap.lock);
    if (!pagecache_giveback(c)) {
        /* Out of span structs, even c's own: the pages cannot be described
         * as free runs.  The cache may be about to be recycled (thread
         * exit), so they are written off, and counted. */
        lost_pages += (uint64_t)gm_popcount(c->pcache.free);
        lost_scav += (uint64_t)gm_popcount(c->pcache.scav);
        c->pcache = (gm_pagecache){0};
    }
    while (c->nspancache > 0)
        gm_fixalloc_free(&gm_mheap.spanalloc, c->spancache[--c->nspancache]);
    pthread_mutex_unlock(&gm_mheap.lock);
    gm_scavenger_notify();
}

/* ---- allocSpan / freeSpan ----------------------------------------------- */

/* heap_inuse and heap hp's use both count the bytes before the pages are
 * taken (limits exact under concurrency); both_unreserve gives them back. */
static bool both_reserve(gm_heap *hp, uintptr_t bytes) {
    if (hp != &gm_default_heap && !gm_heap_reserve(hp, bytes))
        return false;
    if (!inuse_reserve(bytes)) {
        if (hp != &gm_default_heap)
            gm_heap_unreserve(hp, bytes);
        return false;
    }
    return true;
}
static void both_unreserve(gm_heap *hp, uintptr_t bytes) {
    inuse_unreserve(bytes);
    if (hp != &gm_default_heap)
        gm_heap_unreserve(hp, bytes);
}

gm_mspan *gm_mheap_alloc(gm_mcache *c, uintptr_t npages, uint8_t sizeclass, gm_heap *hp) {
    GM_ASSERT(sizeclass == 0 || (c != NULL && npages < PAGE_CACHE_MAX_SPAN));
    if (!both_reserve(hp, npages * PAGE_SIZE))
        return NULL;
    if (c != NULL && npages < PAGE_CACHE_MAX_SPAN) {
        gm_mspan *s = pagecache_alloc(c, npages, sizeclass, hp);
        if (s != NULL || sizeclass != 0) {
            if (s == NULL)
                both_unreserve(hp, npages * PAGE_SIZE);
            return s;
        }
    }
    pthread_mutex_lock(&gm_mheap.lock);
    gm_mspan *s = NULL;
    uintptr_t base = take_pages(npages, &s);
    if (base == 0) {
        pthread_mutex_unlock(&gm_mheap.lock);
        both_unreserve(hp, npages * PAGE_SIZE);
        return NULL;
    }
    if (s == NULL && (s = gm_fixalloc_alloc(&gm_mheap.spanalloc)) == NULL) {
        /* The run was split (no struct came back), so its rest follows the
         * pages taken: they merge back into it, with its struct. */
        (void)free_range(NULL, base, npages, gm_now_ms());
        pthread_mutex_unlock(&gm_mheap.lock);
        both_unreserve(hp, npages * PAGE_SIZE);
        return NULL;
    }
    if (!unfault_pages(base, npages)) {
        (void)free_range(s, base, npages, gm_now_ms());
        pthread_mutex_unlock(&gm_mheap.lock);
        both_unreserve(hp, npages * PAGE_SIZE);
        return NULL;
    }
    struct page_state ps = claim_pages(base, npages);
    init_span(s, base, npages, 0, ps.allzero, hp);
    if (ps.nscav != 0)
        ATOMIC_ADD(&gm_mheap.heap_released, -(uint64_t)ps.nscav * PAGE_SIZE);
    if (c != NULL && c->nspancache < SPAN_CACHE_MAX / 2) {
        gm_mspan *t;
        while (c->nspancache < SPAN_CACHE_MAX && (t = gm_fixalloc_alloc(&gm_mheap.spanalloc)) != NULL)
            c->spancache[c->nspancache++] = t;
    }
    unlock_and_release_grown();
    if (ps.nscav != 0)
        gm_sysUsed((void *)base, npages * PAGE_SIZE);
    return s;
}

gm_mspan *gm_mheap_alloc_aligned(uintptr_t npages, uintptr_t align, gm_heap *hp) {
    uintptr_t extra = align / PAGE_SIZE - 1;
    if (npages == 0)
        npages = 1;
    if (!both_reserve(hp, npages * PAGE_SIZE))
        return NULL;
    pthread_mutex_lock(&gm_mheap.lock);
    /* Span structs for the span, the head and the tail, before any page
     * moves: afterwards there is no failing. */
    gm_mspan *spare[3] = {NULL, NULL, NULL};
    int used = 0;
    for (int k = 0; k < 3; k++)
        if ((spare[k] = gm_fixalloc_alloc(&gm_mheap.spanalloc)) == NULL)
            break;
    gm_mspan *s = NULL;
    uintptr_t base = spare[2] != NULL ? take_pages(npages + extra, &s) : 0;
    uintptr_t aligned = (base + align - 1) & ~(align - 1);
    if (base != 0 && s == NULL)
        s = spare[used++];
    if (base != 0 && !unfault_pages(aligned, npages)) {
        (void)free_range(s, base, npages + extra, gm_now_ms());
        base = 0;
    }
    if (base == 0) {
        for (int k = used; k < 3; k++)
            if (spare[k] != NULL)
                gm_fixalloc_free(&gm_mheap.spanalloc, spare[k]);
        pthread_mutex_unlock(&gm_mheap.lock);
        both_unreserve(hp, npages * PAGE_SIZE);
        return NULL;
    }
    uintptr_t head = (aligned - base) / PAGE_SIZE, tail = extra - head;
    struct page_state ps = claim_pages(aligned, npages);
    init_span(s, aligned, npages, 0, ps.allzero, hp);
    if (ps.nscav != 0)
        ATOMIC_ADD(&gm_mheap.heap_released, -(uint64_t)ps.nscav * PAGE_SIZE);
    /* The unaligned head and the tail go back, their released bits intact. */
    uint64_t now = gm_now_ms();
    if (head != 0)
        (void)free_range(spare[used++], base, head, now);
    if (tail != 0)
        (void)free_range(spare[used++], aligned + npages * PAGE_SIZE, tail, now);
    for (; used < 3; used++)
        gm_fixalloc_free(&gm_mheap.spanalloc, spare[used]);
    unlock_and_release_grown();
    if (ps.nscav != 0)
        gm_sysUsed((void *)aligned, npages * PAGE_SIZE);
    return s;
}

/* freeSpan, with the heap lock held. */
/* The span leaves the in-use figures and the span map (the first half of
 * freeSpan).  Under lock. */
static void span_gone(gm_mspan *s) {
    gm_heap_arena *ha = gm_arena_of(s->startAddr);
    uintptr_t i = (s->startAddr >> PAGE_SHIFT) & (PAGES_PER_ARENA - 1);
    __atomic_fetch_and(&ha->pageInUse[i / 64], ~((uint64_t)1 << (i % 64)), __ATOMIC_RELAXED);
    both_unreserve(s->heap, s->npages * PAGE_SIZE);
    if (s->sizeclass == 0) {
        ATOMIC_ADD(&gm_mheap.large_frees, 1);
        ATOMIC_ADD(&gm_mheap.large_bytes_freed, s->npages * PAGE_SIZE);
    }
    gm_set_spans(s, s->startAddr, s->npages, NULL);
    s->heap = NULL;
}

/* Make the pages of s PROT_NONE (Reserved) until reused, so that a use
 * after free faults at once: false if the OS refused (they stay Ready).
 * Under the lock: the pages must not be handed out before they are
 * faulted. */
static bool fault_pages(gm_mspan *s) { return gm_sysFault((void *)s->startAddr, s->npages * PAGE_SIZE); }

/* Mark the faulted pages of s so (released, faulted).  Under the lock. */
static void mark_faulted(gm_mspan *s) {
    for (uintptr_t a = s->startAddr; a < s->startAddr + s->npages * PAGE_SIZE; a += PAGE_SIZE) {
        gm_heap_arena *hp = gm_arena_of(a);
        *page_word(hp->scavenged, a) |= page_mask(a);
        *page_word(hp->faulted, a) |= page_mask(a);
    }
    ATOMIC_ADD(&gm_mheap.heap_released, s->npages * PAGE_SIZE);
}

static void clear_span(gm_mspan *s) {
    s->sizeclass = 0;
    s->divMul = 0;
    s->objstate = NULL;
    s->ststep = 0;
    s->cachedBy = NULL;
}

static void heap_free_locked(gm_mspan *s) {
    bool large = s->sizeclass == 0;
    span_gone(s);
    clear_span(s);
    if (unlikely(gm_opt.fault_on_free >= (large ? 1 : 2)) && fault_pages(s)) /* debug option */
        mark_faulted(s);
    gm_obs_span_free(s->startAddr, s->npages);
    (void)free_range(s, s->startAddr, s->npages, gm_now_ms());
}

void gm_mheap_release_heap_span(gm_mspan *s, bool fault) {
    pthread_mutex_lock(&gm_mheap.lock);
    span_gone(s);
    clear_span(s);
    if (fault && fault_pages(s)) {
        /* Out of the heap's figures and the span map, but on no free list:
         * counted apart until the quarantine gives it back. */
        STORE_RELAXED(&s->state, SPAN_DEAD);
        gm_mheap.quarantined_pages += s->npages;
        gm_obs_quarantined(s->startAddr, s->npages);
        pthread_mutex_unlock(&gm_mheap.lock);
        gm_heap_quarantine(s);
        return;
    }
    gm_obs_span_free(s->startAddr, s->npages);
    (void)free_range(s, s->startAddr, s->npages, gm_now_ms());
    pthread_mutex_unlock(&gm_mheap.lock);
}

void gm_mheap_free_faulted(gm_mspan *s) {
    pthread_mutex_lock(&gm_mheap.lock);
    gm_mheap.quarantined_pages -= s->npages;
    mark_faulted(s);
    gm_obs_span_free(s->startAddr, s->npages);
    (void)free_range(s, s->startAddr, s->npages, gm_now_ms());
    pthread_mutex_unlock(&gm_mheap.lock);
    gm_scavenger_notify();
}

/* Give span s back.  For a small span (empty, off every list) the caller
 * holds its class lock, so that no fork() sees the span in neither place,
 * and calls gm_scavenger_notify() once it holds no lock. */
void gm_mheap_free(gm_mspan *s) {
    pthread_mutex_lock(&gm_mheap.lock);
    heap_free_locked(s);
    pthread_mutex_unlock(&gm_mheap.lock);
}

/* Free large object p, whose span is s.  Checked under the heap lock, so
 * that of two racing frees of the same object exactly one succeeds.
 * Returns GM_OK or GM_ERR_NOT_ALLOCATED. */
int gm_mheap_free_large(gm_mspan *s, uintptr_t p) {
    pthread_mutex_lock(&gm_mheap.lock);
    if (gm_span_of(p) != s || LOAD_RELAXED(&s->state) != SPAN_INUSE || s->sizeclass != 0 || s->startAddr != p) {
        pthread_mutex_unlock(&gm_mheap.lock);
        return GM_ERR_NOT_ALLOCATED;
    }
    heap_free_locked(s);
    pthread_mutex_unlock(&gm_mheap.lock);
    gm_scavenger_notify();
    return GM_OK;
}

/* Span s is still the unsampled large object at p, of have pages, in heap
 * hp (realloc read them before taking the lock).  Under lock. */
static bool large_unchanged(const gm_mspan *s, uintptr_t p, uintptr_t have, const gm_heap *hp) {
    return gm_span_of(p) == s && LOAD_RELAXED(&s->state) == SPAN_INUSE && s->sizeclass == 0 &&
           s->startAddr == p && s->npages == have && s->heap == hp && !LOAD_RELAXED(&s->sampled);
}

/* Pages [a, a + n pages) when every one is free in the calling thread's
 * page cache: taken out of it, their state in *ps (nscav, allzero), as
 * claim_pages gives a run's.  The cache is its owner's, and the caller is
 * its owner. */
static bool pagecache_take(uintptr_t a, uintptr_t n, struct page_state *ps) {
    gm_mcache *c = gm_tls_mcache;
    if (c == NULL || c == &gm_nocache)
        return false;
    gm_pagecache *pc = &c->pcache;
    if (pc->base == 0 || a < pc->base || n > PAGE_CACHE_PAGES ||
        (a - pc->base) / PAGE_SIZE > PAGE_CACHE_PAGES - n)
        return false;
    unsigned i = (unsigned)((a - pc->base) / PAGE_SIZE);
    uint64_t bits = (n == 64 ? ~(uint64_t)0 : (((uint64_t)1 << n) - 1)) << i;
    if ((pc->free & bits) != bits)
        return false;
    ps->nscav = (uintptr_t)gm_popcount(pc->scav & bits);
    ps->allzero = (pc->zero & bits) == bits;
    pc->free &= ~bits;
    pc->scav &= ~bits;
    pc->zero &= ~bits;
    return true;
}

/*
 * realloc of a large object in place: span s, the unsampled large object at
 * p, grows to npages by taking the pages that follow it, the front of a
 * free run (glibc extends a chunk into its free neighbour the same way) or
 * free pages of the thread's page cache (an object of fewer than
 * PAGE_CACHE_MAX_SPAN pages came from that cache, and the pages after it
 * are often still there: strings_json's lists of 5 to 10 pages moved for
 * want of them).  Returns whether it did; on false nothing changed.
 * Checked under the heap lock, as a free is: a racing free of p makes it
 * fail.
 */
bool gm_mheap_grow_large(gm_mspan *s, uintptr_t p, uintptr_t npages) {
    gm_heap *hp = LOAD_RELAXED(&s->heap);
    uintptr_t have = LOAD_RELAXED(&s->npages);
    if (hp == NULL || npages <= have || !both_reserve(hp, (npages - have) * PAGE_SIZE))
        return false;
    pthread_mutex_lock(&gm_mheap.lock);
    uintptr_t extra = npages - have, end = p + have * PAGE_SIZE;
    gm_mspan *r = NULL;
    struct page_state ps;
    bool ok = large_unchanged(s, p, have, hp);
    if (ok && (r = free_run_at(end)) != NULL && r->startAddr == end && r->npages >= extra && unfault_pages(end, extra)) {
        if (cut_front(r, extra) != NULL)
            gm_fixalloc_free(&gm_mheap.spanalloc, r);
        ps = claim_pages(end, extra);
    } else if (!ok || !pagecache_take(end, extra, &ps)) {
        pthread_mutex_unlock(&gm_mheap.lock);
        both_unreserve(hp, extra * PAGE_SIZE);
        return false;
    }
    if (!ps.allzero)
        s->needzero = 1;
    s->npages = npages;
    s->elemsize = npages * PAGE_SIZE;
    gm_set_spans(s, end, extra, s);
    ATOMIC_ADD(&gm_mheap.large_bytes_alloc, extra * PAGE_SIZE);
    if (hp != &gm_default_heap)
        ATOMIC_ADD(&hp->large_bytes, extra * PAGE_SIZE);
    if (ps.nscav != 0)
        ATOMIC_ADD(&gm_mheap.heap_released, -(uint64_t)ps.nscav * PAGE_SIZE);
    gm_obs_span_alloc(end, extra, 0);
    pthread_mutex_unlock(&gm_mheap.lock);
    if (ps.nscav != 0)
        gm_sysUsed((void *)end, extra * PAGE_SIZE);
    return true;
}

/*
 * realloc of a large object in place, the other way: span s, the unsampled
 * large object at p, keeps its first npages and gives the rest back to the
 * free runs, as if freed (glibc splits a shrunk chunk the same way).  A C
 * program that shrinks a buffer to fit gets its pages back without a copy,
 * and Python's writers, which overallocate and then shrink to the exact
 * size, are not moved.  Returns whether it did; on false (fault_on_free,
 * a racing free, no span struct) nothing changed.
 */
bool gm_mheap_shrink_large(gm_mspan *s, uintptr_t p, uintptr_t npages) {
    gm_heap *hp = LOAD_RELAXED(&s->heap);
    uintptr_t have = LOAD_RELAXED(&s->npages);
    if (hp == NULL || npages == 0 || npages >= have || gm_opt.fault_on_free != 0)
        return false;
    pthread_mutex_lock(&gm_mheap.lock);
    gm_mspan *t = NULL; /* the tail's struct, taken first: once cut, the pages must go somewhere */
    if (!large_unchanged(s, p, have, hp) || (t = gm_fixalloc_alloc(&gm_mheap.spanalloc)) == NULL) {
        pthread_mutex_unlock(&gm_mheap.lock);
        return false;
    }
    uintptr_t cut = have - npages, tail = p + npages * PAGE_SIZE;
    s->npages = npages;
    s->elemsize = npages * PAGE_SIZE;
    gm_set_spans(s, tail, cut, NULL);
    both_unreserve(hp, cut * PAGE_SIZE);
    ATOMIC_ADD(&gm_mheap.large_bytes_freed, cut * PAGE_SIZE);
    gm_obs_span_free(tail, cut);
    (void)free_range(t, tail, cut, gm_now_ms());
    pthread_mutex_unlock(&gm_mheap.lock);
    gm_scavenger_notify();
    return true;
}

/* ---- scavenging ---------------------------------------------------------- */

/* The state bytes of a free run are all 0 (no object starts there), so the
 * pages of the state maps under it can go back to the OS with it: touched
 * again only when spans are made there, they come back as zeros.  Releases
 * the whole state pages that cover [lo, hi) and lie under free run
 * [start, end), a run claimed by gm_mheap_scavenge_aged (no lock needed). */
static void release_statemaps(uintptr_t lo, uintptr_t hi, uintptr_t start, uintptr_t end) {
    uintptr_t phys = gm_phys_page_size;
    while (lo < hi) {
        uintptr_t next = (lo + ARENA_SIZE) & ~(ARENA_SIZE - 1), stop = next < hi ? next : hi;
        uintptr_t run_lo = start > (lo & ~(ARENA_SIZE - 1)) ? start : lo & ~(ARENA_SIZE - 1);
        uintptr_t run_hi = end < next ? end : next;
        uintptr_t a = (uintptr_t)gm_state_of(lo) & ~(phys - 1), b = ((uintptr_t)gm_state_of(stop - 1) | (phys - 1)) + 1;
        uintptr_t min = (uintptr_t)gm_state_of(run_lo), max = (uintptr_t)gm_state_of(run_hi - 1) + 1;
        if (a < min)
            a += phys;
        if (b > max)
            b -= phys;
        if (b > a)
            gm_sysUnused((void *)a, b - a);
        lo = stop;
    }
}

/* The unreleased stretches of a claimed run that one trip out of the heap
 * lock releases: from the run's end backwards (its start is what
 * allocation takes next), in physical-page-aligned pieces. */
#define CLAIM_STRETCHES 16
struct stretches {
    int n;
    uintptr_t lo[CLAIM_STRETCHES], hi[CLAIM_STRETCHES];
};

static uintptr_t plan_release(const gm_mspan *s, uintptr_t budget, struct stretches *out) {
    uintptr_t planned = 0, phys = gm_phys_page_size > PAGE_SIZE ? gm_phys_page_size : PAGE_SIZE;
    uintptr_t start = s->startAddr, b = s->startAddr + s->npages * PAGE_SIZE;
    out->n = 0;
    while (b > start && planned < budget && out->n < CLAIM_STRETCHES) {
        while (b > start && page_released(b - PAGE_SIZE))
            b -= PAGE_SIZE;
        uintptr_t a = b;
        while (a > start && !page_released(a - PAGE_SIZE) && b - a < budget - planned)
            a -= PAGE_SIZE;
        uintptr_t lo = (a + phys - 1) & ~(phys - 1), hi = b & ~(phys - 1);
        if (hi > lo) {
            out->lo[out->n] = lo;
            out->hi[out->n++] = hi;
            planned += hi - lo;
        }
        b = a;
    }
    return planned;
}

/* The largest free run with unreleased pages free for min_age_ms, or NULL. */
static gm_mspan *pick_unreleased(uint64_t min_age_ms) {
    uint64_t now = gm_now_ms();
    for (int pass = 0; pass < FREE_LARGE_LISTS + FREE_EXACT_LISTS; pass++) {
        gm_mspan *s = pass < FREE_LARGE_LISTS ? gm_mheap.large[FREE_LARGE_LISTS - 1 - pass]
                                              : gm_mheap.free[FREE_EXACT_LISTS - 1 - (pass - FREE_LARGE_LISTS)];
        for (; s != NULL; s = s->next)
            if (s->nreleased < s->npages && now - s->unusedsince >= min_age_ms)
                return s;
    }
    return NULL;
}

/*
 * Return free pages to the OS (sysUnused: Ready -> Prepared): runs that have
 * been free for at least min_age_ms, largest first, until at least `want`
 * bytes have been released.  Returns the bytes released.
 *
 * The madvise calls run without the heap lock, as Go's scavenger does: a
 * run is claimed (taken off the free lists, so that no allocation takes it
 * and no neighbour merges into it: its boundary tags say LIST_NONE), the
 * lock dropped while its stretches are released, and the run given back
 * to the free lists (merging with neighbours freed meanwhile) with its
 * pages marked released.  Claimed runs are on gm_mheap.claimed, where the
 * heap checker counts them and a fork() child takes them back.
 */
uintptr_t gm_mheap_scavenge_aged(uintptr_t want, uint64_t min_age_ms) {
    uintptr_t total = 0;
    pthread_mutex_lock(&gm_mheap.lock);
    if (LOAD_RELAXED(&gm_opt.madv_free))
        madv_free_used = true;
    while (total < want) {
        gm_mspan *s = pick_unreleased(min_age_ms);
        if (s == NULL)
            break;
        struct stretches todo;
        uintptr_t planned = plan_release(s, want - total, &todo);
        if (planned == 0) /* only pieces smaller than a physical page (pages over 8 KiB): enough for now */
            break;
        free_remove(s);
        s->next = gm_mheap.claimed;
        gm_mheap.claimed = s;
        pthread_mutex_unlock(&gm_mheap.lock);
        for (int i = 0; i < todo.n; i++) {
            if (gm_sysUnused((void *)todo.lo[i], todo.hi[i] - todo.lo[i])) {
                release_statemaps(todo.lo[i], todo.hi[i], s->startAddr, s->startAddr + s->npages * PAGE_SIZE);
            } else { /* the pages stay resident, and counted so */
                planned -= todo.hi[i] - todo.lo[i];
                todo.hi[i] = todo.lo[i];
            }
        }
        pthread_mutex_lock(&gm_mheap.lock);
        for (gm_mspan **pp = &gm_mheap.claimed;; pp = &(*pp)->next)
            if (*pp == s) {
                *pp = s->next;
                break;
            }
        s->next = NULL;
        for (int i = 0; i < todo.n; i++)
            for (uintptr_t a = todo.lo[i]; a < todo.hi[i]; a += PAGE_SIZE)
                *page_word(gm_arena_of(a)->scavenged, a) |= page_mask(a);
        (void)free_range(s, s->startAddr, s->npages, s->unusedsince); /* s describes it: cannot fail */
        ATOMIC_ADD(&gm_mheap.heap_released, planned);
        gm_mheap.scavenge_cycles++;
        gm_mheap.scavenged_bytes += planned;
        total += planned;
        if (planned == 0) /* the OS refused every release: try again later */
            break;
    }
    pthread_mutex_unlock(&gm_mheap.lock);
    return total;
}

uintptr_t gm_mheap_scavenge(uintptr_t want) { return gm_mheap_scavenge_aged(want, 0); }

/* In a fork() child: runs that a scavenger thread of the parent had
 * claimed go back to the free lists (their pages may be released or not:
 * the bits say not, which only overstates what is resident). */
void gm_mheap_fork_child(void) {
    while (gm_mheap.claimed != NULL) {
        gm_mspan *s = gm_mheap.claimed;
        gm_mheap.claimed = s->next;
        s->next = NULL;
        (void)free_range(s, s->startAddr, s->npages, s->unusedsince);
    }
}

bool gm_mheap_unreleased_free(uint64_t *oldest) {
    bool any = false;
    pthread_mutex_lock(&gm_mheap.lock);
    for (int pass = 0; pass < FREE_LARGE_LISTS + FREE_EXACT_LISTS; pass++) {
        gm_mspan *s = pass < FREE_LARGE_LISTS ? gm_mheap.large[pass] : gm_mheap.free[pass - FREE_LARGE_LISTS];
        for (; s != NULL; s = s->next)
            if (s->nreleased < s->npages && (!any || s->unusedsince < *oldest)) {
                *oldest = s->unusedsince;
                any = true;
            }
    }
    pthread_mutex_unlock(&gm_mheap.lock);
    return any;
}

/* ---- checking ------------------------------------------------------------- */

/* Check the free lists; returns violations.  cached_pages: free pages held in
 * page caches; cached_scav: released ones among them.  Under no lock. */
int gm_mheap_check_pages(uint64_t cached_pages, uint64_t cached_scav) {
    int bad = 0;
    uint64_t free_pages = 0, scav_pages = 0;
    pthread_mutex_lock(&gm_mheap.lock);
    for (int pass = 0; pass < FREE_EXACT_LISTS + FREE_LARGE_LISTS; pass++) {
        gm_mspan *s = pass < FREE_EXACT_LISTS ? gm_mheap.free[pass] : gm_mheap.large[pass - FREE_EXACT_LISTS];
        for (; s != NULL; s = s->next) {
            uintptr_t last = s->startAddr + (s->npages - 1) * PAGE_SIZE;
            if (LOAD_RELAXED(&s->state) != SPAN_FREE || s->list != LIST_FREE) {
                gm_warn_check("free run with wrong state", s);
                bad++;
            }
            if (pass < FREE_EXACT_LISTS ? s->npages != (uintptr_t)pass
                                        : (s->npages < FREE_EXACT_LISTS ||
                                           large_bucket(s->npages) != (unsigned)(pass - FREE_EXACT_LISTS))) {
                gm_warn_check("free run on the wrong list", s);
                bad++;
            }
            if (gm_span_of(s->startAddr) != s || gm_span_of(last) != s) {
                gm_warn_check("free run boundary tags wrong", s);
                bad++;
            }
            if (free_run_at(s->startAddr - PAGE_SIZE) != NULL || free_run_at(last + PAGE_SIZE) != NULL) {
                gm_warn_check("adjacent free runs not merged", s);
                bad++;
            }
            free_pages += s->npages;
            uintptr_t nrel = count_released(s->startAddr, s->npages);
            if (nrel != s->nreleased) {
                gm_warn_check("free run's released page count is wrong", s);
                bad++;
            }
            scav_pages += nrel;
        }
    }
    for (gm_mspan *s = gm_mheap.claimed; s != NULL; s = s->next) { /* being released by a scavenger */
        free_pages += s->npages;
        scav_pages += count_released(s->startAddr, s->npages);
    }
    uint64_t inuse = LOAD_RELAXED(&gm_mheap.heap_inuse), released = LOAD_RELAXED(&gm_mheap.heap_released);
    /* Not in a child of fork() with orphaned page caches (see mcache.c). */
    free_pages += gm_mheap.quarantined_pages; /* a destroyed heap's, faulted for a while */
    if (!gm_fork_orphans && (free_pages + cached_pages + lost_pages) * PAGE_SIZE + inuse != gm_mheap.heap_sys) {
        gm_warn_check("free + cached + in-use pages != heap_sys", NULL);
        bad++;
    }
    if (!gm_fork_orphans && (scav_pages + cached_scav + lost_scav) * PAGE_SIZE != released) {
        gm_warn_check("released pages != heap_released", NULL);
        bad++;
    }
    pthread_mutex_unlock(&gm_mheap.lock);
    return bad;
}
