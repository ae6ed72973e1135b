/*
 * mstats.c: MemStats (mstats.go) and the heap invariant checker.
 *
 * Object counts live where they change: each mcache counts, per class, the
 * objects it handed out and took back (plain increments by the owner, no
 * atomics on the fast path); the counts of exited threads are folded into
 * gm_dead_*.  Page figures live in the heap.  gm_read_stats adds them up
 * under the registry lock; the per-thread counters are read without
 * synchronisation with their owners, so the figures are exact when no
 * thread is allocating, and recent otherwise.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "gm_internal.h"

#define RACY(x) (*(volatile const __typeof__(x) *)&(x))

/* Every figure, into a whole struct of the library's own layout. */
static GM_RACY_READER void collect(struct gm_stats *st) {
    memset(st, 0, sizeof *st);
    st->size = sizeof *st;
    gm_ensure_init();
    uint64_t nmalloc[NUM_CLASSES], nfree[NUM_CLASSES], cached = 0, nthreads = 0, tiny_mallocs = 0, tiny_frees = 0;
    gm_registry_lock();
    for (int sc = 0; sc < NUM_CLASSES; sc++) {
        nmalloc[sc] = LOAD_RELAXED(&gm_dead_nmalloc[sc]);
        nfree[sc] = LOAD_RELAXED(&gm_dead_nfree[sc]);
    }
    for (gm_mcache *c = gm_registry_first(); c != NULL; c = c->next) {
        nthreads += !c->abandoned;
        tiny_mallocs += RACY(c->tiny_mallocs);
        tiny_frees += RACY(c->tiny_frees);
        for (int sc = 0; sc < NUM_CLASSES; sc++) {
            gm_mclass *m = &c->cls[sc];
            uint64_t npush = RACY(m->npush), limit = RACY(m->limit), len = gm_list_len(npush, limit, c->listmax[sc]);
            nmalloc[sc] += gm_list_mallocs(limit, c->listmax[sc], RACY(c->nflush[sc]), RACY(c->nrecv[sc]), RACY(c->nspan[sc]));
            nfree[sc] += npush / LIST_UNIT;
            cached += len * gm_class_to_size[sc];
        }
    }
    st->mcache_inuse = gm_mheap.cachealloc.inuse;
    gm_registry_unlock();
    /* The heaps programs made: their caches and their caches' dead counts. */
    uint64_t nspans[NUM_CLASSES] = {0}, ncaches = 0;
    for (gm_heap *hp = gm_heaps_next(NULL); hp != NULL; hp = gm_heaps_next(hp)) {
        if (hp != &gm_default_heap)
            gm_heap_counts(hp, nmalloc, nfree, &cached, &ncaches);
        for (int sc = 1; sc < NUM_CLASSES; sc++)
            nspans[sc] += RACY(hp->central[sc].nspans);
    }

    uint64_t large_live_bytes = LOAD_RELAXED(&gm_mheap.large_bytes_alloc) - LOAD_RELAXED(&gm_mheap.large_bytes_freed);
    for (int sc = 1; sc < NUM_CLASSES; sc++) {
        struct gm_size_class_stats *b = &st->by_size[sc];
        b->size = gm_class_to_size[sc];
        b->npages = gm_class_to_allocnpages[sc];
        b->mallocs = nmalloc[sc];
        b->frees = nfree[sc];
        b->spans = nspans[sc];
        b->capacity = b->spans * gm_class_to_nelems[sc];
        st->mallocs += nmalloc[sc];
        st->frees += nfree[sc];
        st->total_alloc += nmalloc[sc] * b->size;
        st->heap_alloc += (nmalloc[sc] - nfree[sc]) * b->size;
    }
    st->by_size[0].mallocs = LOAD_RELAXED(&gm_mheap.large_mallocs);
    st->by_size[0].frees = LOAD_RELAXED(&gm_mheap.large_frees);
    st->mallocs += st->by_size[0].mallocs;
    st->frees += st->by_size[0].frees;
    st->large_objects = st->by_size[0].mallocs - st->by_size[0].frees;
    st->by_size[0].spans = st->by_size[0].capacity = st->large_objects;
    st->total_alloc += LOAD_RELAXED(&gm_mheap.large_bytes_alloc);
    st->heap_alloc += large_live_bytes;
    st->heap_objects = st->mallocs - st->frees;
    st->cached_bytes = cached;
    st->transfer_bytes = gm_mcentral_tc_bytes();
    st->num_threads = nthreads;

    pthread_mutex_lock(&gm_mheap.lock);
    st->heap_reserved = gm_mheap.heap_reserved;
    st->heap_sys = gm_mheap.heap_sys;
    st->heap_inuse = LOAD_RELAXED(&gm_mheap.heap_inuse);
    st->heap_released = LOAD_RELAXED(&gm_mheap.heap_released);
    st->heap_idle = st->heap_sys - st->heap_inuse;
    st->mspan_inuse = gm_mheap.spanalloc.inuse;
    st->num_arenas = gm_mheap.num_arenas;
    st->scavenge_cycles = gm_mheap.scavenge_cycles;
    st->scavenged_bytes = gm_mheap.scavenged_bytes;
    pthread_mutex_unlock(&gm_mheap.lock);
    st->mspan_sys = LOAD_RELAXED(&gm_mheap.mspan_sys);
    st->mcache_sys = LOAD_RELAXED(&gm_mheap.mcache_sys);
    st->other_sys = LOAD_RELAXED(&gm_mheap.other_sys);
    st->sys = st->heap_sys + st->mspan_sys + st->mcache_sys + st->other_sys;
    st->bad_frees = gm_bad_frees();
    for (int op = 0; op < 6; op++) {
        (&st->n_sys_reserve)[op] = LOAD_RELAXED(&gm_sysstats.n[op]);
        (&st->bytes_sys_reserve)[op] = LOAD_RELAXED(&gm_sysstats.bytes[op]);
    }
    st->tiny_mallocs = LOAD_RELAXED(&gm_dead_tiny_mallocs) + tiny_mallocs;
    st->tiny_frees = LOAD_RELAXED(&gm_dead_tiny_frees) + tiny_frees;
    st->phys_page_size = gm_phys_page_size;
    st->huge_page_size = gm_huge_page_size;
}

/* ---- reading into the caller's structs ---------------------------------------
 *
 * struct gm_stats and struct gm_profile_record only grow at the end, and the
 * caller says how large its own is: it gets min(its size, ours) bytes of
 * each, and nothing past them is written (gomalloc.h).
 */

int gm_read_stats(struct gm_stats *st) {
    if (st == NULL)
        return EINVAL;
    uint64_t want = st->size;
    if (want < sizeof st->size) {
        st->size = sizeof *st;
        return EINVAL;
    }
    struct gm_stats all;
    collect(&all);
    memcpy(st, &all, want < sizeof all ? (size_t)want : sizeof all);
    return 0;
}

int gm_profile_read(struct gm_profile_record *out, int n, size_t record_size) {
    if (n < 0 || (n > 0 && (out == NULL || record_size == 0))) {
        errno = EINVAL;
        return -1;
    }
    if (n == 0 || record_size == sizeof *out)
        return gm_profile_read_records(n > 0 ? out : NULL, n);
    /* Whole records into memory of our own, then the caller's part of each.
     * Not from the heap: with profile_rate 1 the buffer would be sampled
     * itself, and change the profile being read. */
    size_t bytes = (size_t)n * sizeof *out;
    struct gm_profile_record *all = gm_sysAlloc(bytes);
    if (all == NULL) {
        errno = ENOMEM;
        return -1;
    }
    int total = gm_profile_read_records(all, n);
    size_t copy = record_size < sizeof *all ? record_size : sizeof *all;
    for (int i = 0; i < n && i < total; i++)
        memcpy((char *)out + (size_t)i * record_size, &all[i], copy);
    gm_sysFree(all, bytes);
    return total;
}

/* ---- the heap invariant checker ------------------------------------------- */

void gm_warn_check(const char *what, const gm_mspan *s) {
    if (s != NULL)
        fprintf(stderr, "pygomalloc: heap check: %s (span %p: start %#lx npages %lu class %u state %u)\n", what,
                (const void *)s, (unsigned long)s->startAddr, (unsigned long)s->npages, s->sizeclass, LOAD_RELAXED(&s->state));
    else
        fprintf(stderr, "pygomalloc: heap check: %s\n", what);
}

/* Objects not free from the spans' point of view (live or on a list). */
static uint64_t span_live(const gm_mspan *s) {
    uint64_t n = 0;
    for (uintptr_t i = 0; i < s->nelems; i++)
        n += gm_objstate(s, i) != OBJ_FREE;
    return n;
}

static int check_heap(void);

int gm_check_heap(void) {
    gm_ensure_init();
    gm_check_begin();
    int bad = check_heap();
    gm_check_end();
    return bad;
}

/* Check cache c (a thread's default-heap cache, or one of its heap caches):
 * its lists and its cached spans; counts into the totals.  The caller
 * holds the registry lock (default caches) or the heap's lock. */
static int check_cache(gm_mcache *c, uint64_t *listed_objects, uint64_t *span_objects, uint64_t *nspans) {
    int bad = 0;
    for (int i = 0; i < MCACHE_CLS; i++) {
        int sc = i - c->clsbase;
        if ((sc <= 0 || sc >= NUM_CLASSES || c->listmax[sc] == 0) && (c->cls[i].npush != 0 || c->cls[i].limit != 0)) {
            gm_warn_check("an mcache entry that is not a size class has a list", NULL);
            bad++;
        }
    }
    for (int sc = 1; sc < NUM_CLASSES; sc++) {
        gm_mclass *m = gm_mclass_of(c, (uint8_t)sc);
        gm_mcentral *mc = &c->heap->central[sc];
        uint32_t len = gm_list_len(m->npush, m->limit, c->listmax[sc]), n = 0;
        int64_t d = (int64_t)(m->npush - m->limit);
        if (c->listhome[sc] > gm_list_cap[sc] || c->listmax[sc] < c->listhome[sc] || d > 0 || d % (int64_t)LIST_UNIT != 0 || m->npush % LIST_UNIT != 0 ||
            d / (int64_t)LIST_UNIT + c->listmax[sc] < 0 || gm_list_base(m, c->listmax[sc])[-1].p != NULL) {
            gm_warn_check("mcache free list counters or sentinel are off", NULL);
            bad++;
            continue;
        }
        for (gm_freeobj *f = gm_list_base(m, c->listmax[sc]); n < len; n++, f++)
            if (!gm_freeobj_valid(f, mc)) {
                gm_warn_check("bad object on an mcache free list", gm_span_of((uintptr_t)f->p));
                bad++;
                break;
            }
        *listed_objects += n;
        if (m->span != &gm_emptyspan) {
            pthread_mutex_lock(&mc->lock);
            if (m->span->cachedBy != c || m->span->sizeclass != sc || m->span->heap != c->heap) {
                gm_warn_check("cached span not owned by its mcache", m->span);
                bad++;
            }
            bad += gm_span_check(m->span, true);
            *span_objects += span_live(m->span);
            nspans[sc]++;
            pthread_mutex_unlock(&mc->lock);
        }
    }
    return bad;
}

/* Check heap hp's mcentrals and transfer caches; nspans holds the spans
 * its caches own, per class. */
static int check_centrals(gm_heap *hp, uint64_t *nspans, uint64_t *listed_objects, uint64_t *span_objects,
                          uint64_t *small_pages) {
    int bad = 0;
    uint64_t nuncached = 0, tc_objects = 0;
    bad += gm_mcentral_check_lists(hp, &nuncached);
    bad += gm_mcentral_check_tc(hp, &tc_objects);
    *listed_objects += tc_objects;
    for (int sc = 1; sc < NUM_CLASSES; sc++) {
        gm_mcentral *mc = &hp->central[sc];
        pthread_mutex_lock(&mc->lock);
        for (int l = 0; l < 2; l++)
            for (gm_mspan *s = l ? mc->full : mc->partial; s != NULL; s = s->next) {
                nspans[sc]++;
                *span_objects += span_live(s);
            }
        if (nspans[sc] != mc->nspans && !gm_fork_orphans) {
            fprintf(stderr, "pygomalloc: heap check: heap %u class %d has %llu spans, mcentral counts %llu\n", hp->id,
                    sc, (unsigned long long)nspans[sc], (unsigned long long)mc->nspans);
            bad++;
        }
        *small_pages += mc->nspans * gm_class_to_allocnpages[sc];
        pthread_mutex_unlock(&mc->lock);
    }
    return bad;
}

static int check_heap(void) {
    int bad = 0;
    uint64_t cached_pages = 0, cached_scav = 0, listed_objects = 0, span_objects = 0, small_pages = 0;
    uint64_t nspans[NUM_CLASSES] = {0};
    struct gm_stats st;
    collect(&st);

    gm_registry_lock();
    for (gm_mcache *c = gm_registry_first(); c != NULL; c = c->next) {
        cached_pages += (uint64_t)gm_popcount(c->pcache.free);
        cached_scav += (uint64_t)gm_popcount(c->pcache.scav);
        if (c->heap != &gm_default_heap || c->clsbase != 0) {
            gm_warn_check("a thread's default cache is not the default heap's", NULL);
            bad++;
            continue;
        }
        bad += check_cache(c, &listed_objects, &span_objects, nspans);
    }
    gm_registry_unlock();
    bad += check_centrals(&gm_default_heap, nspans, &listed_objects, &span_objects, &small_pages);
    gm_heaps_lock();
    for (gm_heap *hp = gm_heaps_next(&gm_default_heap); hp != NULL; hp = gm_heaps_next(hp)) {
        uint64_t hspans[NUM_CLASSES] = {0};
        pthread_mutex_lock(&hp->lock);
        for (gm_mcache *hc = hp->caches; hc != NULL; hc = hc->hnext) {
            if (hc->heap != hp || hc->clsbase != OBJ_HEAP_BIT) {
                gm_warn_check("a heap cache on the wrong heap's list", NULL);
                bad++;
                continue;
            }
            bad += check_cache(hc, &listed_objects, &span_objects, hspans);
        }
        pthread_mutex_unlock(&hp->lock);
        bad += check_centrals(hp, hspans, &listed_objects, &span_objects, &small_pages);
    }
    gm_heaps_unlock();
    bad += gm_mheap_check_pages(cached_pages, cached_scav);

    /* Cross-check the figures: in-use pages, live objects.  Not in a child
     * of fork() holding orphaned caches: their state is frozen mid-flight. */
    if (gm_fork_orphans)
        return bad;
    uint64_t large_bytes = LOAD_RELAXED(&gm_mheap.large_bytes_alloc) - LOAD_RELAXED(&gm_mheap.large_bytes_freed);
    if (small_pages * PAGE_SIZE + large_bytes != LOAD_RELAXED(&gm_mheap.heap_inuse)) {
        fprintf(stderr, "pygomalloc: heap check: spans hold %llu bytes, heap_inuse is %llu\n",
                (unsigned long long)(small_pages * PAGE_SIZE + large_bytes),
                (unsigned long long)LOAD_RELAXED(&gm_mheap.heap_inuse));
        bad++;
    }
    if (span_objects - listed_objects != st.heap_objects - st.large_objects) {
        fprintf(stderr, "pygomalloc: heap check: spans hold %llu live objects, %llu on free lists; "
                        "counters say %llu small objects\n",
                (unsigned long long)span_objects, (unsigned long long)listed_objects,
                (unsigned long long)(st.heap_objects - st.large_objects));
        bad++;
    }
    return bad;
}
