/*
 * mcentral.c: per-size-class span lists (mcentral.go), and where freed
 * objects go back to their spans.
 *
 * A span of class c is either cached by exactly one mcache (it allocates
 * from it with nextFreeFast, without a lock), or it sits in mcentral[c] on
 * the partial list (some free slots) or the full list (none).  An uncached
 * span whose objects are all free goes back to the page heap at once.
 *
 * Frees arrive here in batches from mcache free lists (mcache.c), one lock
 * acquisition per batch.  A batch goes first to the class's transfer cache,
 * which keeps up to one of them per thread (at least 16, at most
 * TC_BATCHES, and TC_BYTES of objects per 16: tc_room) as they are: when
 * the thread that flushed a batch runs dry, it copies the batch back into
 * its list in one step, the objects still OBJ_CACHED; a batch a
 * consumer flushed (see gm_tcbatch) goes to any thread, so that a
 * producer/consumer pair of threads trades lists without touching spans.
 * Threads that both allocate a class keep to their own batches, and to
 * their own partial spans (lastOwner), so that their objects do not
 * interleave.  A batch that finds it full goes to the spans, and the
 * scavenger empties batches older than decay_ms (objects in them keep
 * their spans in use).  A batch that leaves the transfer cache, or does
 * not enter it, goes to the spans (free_objs_locked): each object's state
 * byte goes from OBJ_CACHED to OBJ_FREE and its span's allocCount drops.
 * allocBits is rebuilt from the state bytes when the span is next handed
 * to an mcache (cacheSpan), as Go's sweeper rebuilds it from gcmarkBits;
 * until then the owner of a cached span keeps allocating from the slots it
 * reserved, and the freed slots wait.
 */
#include <string.h>

#include "gm_internal.h"


static void list_add(gm_mcentral *mc, gm_mspan *s) {
    if (s->allocCount < s->nelems) {
        gm_list_push(&mc->partial, s);
        s->list = LIST_PARTIAL;
    } else {
        gm_list_push(&mc->full, s);
        s->list = LIST_FULL;
    }
}

static void list_remove(gm_mcentral *mc, gm_mspan *s) {
    gm_list_unlink(s->list == LIST_PARTIAL ? &mc->partial : &mc->full, s);
    s->list = LIST_NONE;
}

/* The bits "not free" of the 8 state bytes p[0], p[step], ..., p[7*step],
 * bit k for p[k*step].  The bytes are gathered into one word (OBJ_FREE is
 * 0, see the _Static_assert below), each nonzero byte's top bit is set
 * with the carry-free SWAR test ((x & 0x7f..) + 0x7f..) | x, and the eight
 * top bits are brought together into the top byte by one multiply (byte
 * i's bit 7 lands on bit 56 + i; no two partial products share a bit, so
 * nothing carries).  About a third of the instructions of testing byte by
 * byte, which the sweep of a span of small objects spends most of its
 * time on. */
_Static_assert(OBJ_FREE == 0, "sweep8 tests the state bytes for nonzero");
GM_INLINE uint64_t sweep8(const uint8_t *p, uintptr_t step) {
    uint64_t x = 0;
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++, p += step)
        x |= (uint64_t)LOAD_RELAXED(p) << (8 * k);
    const uint64_t low7 = 0x7f7f7f7f7f7f7f7fULL;
    uint64_t top = (((x & low7) + low7) | x) & ~low7;
    return (top * 0x0002040810204081ULL) >> 56;
}

/* Rebuild allocBits from the state bytes: the sweep.  Under lock, span
 * uncached.  Counts the objects not free.  Frees racing on other threads
 * only turn live bytes into OBJ_CACHED, both "not free". */
static uint32_t sweep(gm_mspan *s) {
    uint32_t n = 0;
    uintptr_t step = s->ststep;
    for (uintptr_t w = 0; w < (s->nelems + 63) / 64; w++) {
        uint64_t bits = 0;
        uintptr_t lim = s->nelems - w * 64 < 64 ? s->nelems - w * 64 : 64, j = 0;
        for (; j + 8 <= lim; j += 8)
            bits |= sweep8(gm_objstate_ptr(s, w * 64 + j), step) << j;
        for (; j < lim; j++)
            bits |= (uint64_t)(gm_objstate(s, w * 64 + j) != OBJ_FREE) << j;
        s->allocBits[w] = bits;
        n += (uint32_t)gm_popcount(bits);
    }
    return n;
}

/* Give an empty, uncached span back to the heap.  Called with mc->lock
 * held, which stays held: a fork() must see the span either here or in the
 * heap, never in neither. */
static void release_span(gm_mcentral *mc, gm_mspan *s) {
    GM_ASSERT(s->allocCount == 0 && s->cachedBy == NULL && s->list == LIST_NONE);
    mc->nspans--;
    if (s->tinywords != NULL) { /* every block it hosted is gone: the span is empty */
        gm_fixalloc_free(&mc->tinywordalloc, s->tinywords);
        s->tinywords = NULL;
    }
    gm_mheap_free(s);
}

#define PARTIAL_SCAN 16 /* partial spans cacheSpan looks at for one of the cache's own */

/*
 * Colouring (after Bonwick's slab colouring, by the order of the slots
 * rather than their addresses).  Spans start on page boundaries, so the
 * first objects of every class's first span sit at the same offsets in
 * their pages and map to the same few sets of a 64-set L1 cache (4 KiB
 * apart).  Those are the objects a program that has just started, or just
 * called install(), uses over and over: a loop's malloc pops what its last
 * free pushed, and the first objects each class handed out are the ones
 * that go round.  Twelve ways then hold a dozen classes' hot objects
 * between them, and the rest evict each other (bench python's growth under
 * install(), simulated with cachegrind: 5.06 million L1 misses against
 * pymalloc's 3.29 million, 2.59 million coloured; with a fully associative
 * cache of the same size the two missed alike).  So the scan of a
 * class's first span (the class has no other in use) starts at slot k, the
 * first whose offset is at least its colour, a number of cache lines that
 * differs from class to class and page to page, and comes round to slots
 * [0, k) (s->skipped, reserved with the rest) when it reaches the end
 * (gm_span_nextFreeIndex).  At most a quarter of a span is skipped.  Only
 * the first span: colouring every fresh span made the same workload's
 * dict_objects 1.2x slower (its time is the cycle collector walking a
 * million objects in the order they were allocated, and the order no longer
 * follows the addresses), for nothing the first span does not already get.
 */
static uintptr_t span_colour(const gm_mspan *s) {
    uintptr_t lines = ((s->startAddr >> PAGE_SHIFT) * 7 + s->sizeclass * 3) % (4096 / 64);
    uintptr_t k = (lines * 64 + s->elemsize - 1) / s->elemsize;
    return k < s->nelems / 4 ? k : s->nelems / 4;
}

/*
 * cacheSpan: a span of class sc with free slots, for mcache c.  All of its
 * free slots are reserved for c (allocCount = nelems).  NULL when out of
 * memory.
 */
gm_mspan *gm_mcentral_cacheSpan(gm_mcache *c, uint8_t sc) {
    gm_mcentral *mc = &c->heap->central[sc];
    pthread_mutex_lock(&mc->lock);
    gm_mspan *s = mc->partial;
    uintptr_t skip = 0;
    /* Its own first (see lastOwner), among the first few. */
    int k = 0;
    for (gm_mspan *t = s; t != NULL && k < PARTIAL_SCAN; t = t->next, k++) {
        if (t->lastOwner == c) {
            s = t;
            break;
        }
    }
    if (s != NULL) {
        list_remove(mc, s);
        if (sweep(s) != s->allocCount)
            gm_throw("cacheSpan: allocCount disagrees with the state bytes");
    } else {
        /* mcentral.grow, under the class lock: a fork() must see the new
         * span counted here as soon as it is in use in the heap. */
        s = gm_mheap_alloc(c->owner != NULL ? c->owner : c, gm_class_to_allocnpages[sc], sc, c->heap);
        if (s == NULL) {
            pthread_mutex_unlock(&mc->lock);
            return NULL;
        }
        s->tinywords = NULL;
        if (mc->nspans++ == 0)
            skip = span_colour(s);
    }
    GM_ASSERT(s->sizeclass == sc && s->allocCount < s->nelems && s->cachedBy == NULL);
    s->cachedBy = c;
    s->lastOwner = c;
    s->allocCount = s->nelems;
    STORE_RELAXED(&s->skipped, (uint16_t)skip);
    STORE_RELAXED(&s->freeindex, skip);
    gm_span_refillAllocCache(s, skip / 64 * 8);
    s->allocCache >>= skip % 64;
    pthread_mutex_unlock(&mc->lock);
    return s;
}

/* Slots in [from, to) whose allocBits bit is 0. */
static uint32_t free_slots(const gm_mspan *s, uintptr_t from, uintptr_t to) {
    uint32_t n = 0;
    for (uintptr_t w = from / 64; from < to && w <= (to - 1) / 64; w++)
        n += gm_popcount(~s->allocBits[w] & gm_bits_between(w, from, to));
    return n;
}

/*
 * uncacheSpan: the owner is done with s.  The slots it reserved but did not
 * hand out (0 bits at and above freeindex, and below skipped) go back.
 */
void gm_mcentral_uncacheSpan(gm_mspan *s) {
    gm_mcentral *mc = &s->heap->central[s->sizeclass];
    pthread_mutex_lock(&mc->lock);
    /* The slots the scan has not reached yet: from freeindex to the end,
     * and those a coloured span skipped if it has not come round. */
    uint32_t unused = free_slots(s, s->freeindex, s->nelems) + free_slots(s, 0, s->skipped);
    if (unused > s->allocCount)
        gm_throw("uncacheSpan: more unused slots than reserved ones");
    s->allocCount -= unused;
    STORE_RELAXED(&s->skipped, 0);
    s->cachedBy = NULL;
    s->allocCache = 0;
    if (s->allocCount == 0) {
        release_span(mc, s);
        pthread_mutex_unlock(&mc->lock);
        gm_scavenger_notify();
        return;
    }
    list_add(mc, s);
    pthread_mutex_unlock(&mc->lock);
}

bool gm_freeobj_valid(const gm_freeobj *f, const gm_mcentral *mc) {
    uintptr_t a = (uintptr_t)f->p;
    gm_mspan *s = gm_span_of(a);
    return s != NULL && LOAD_RELAXED(&s->state) == SPAN_INUSE && s->sizeclass == mc->sizeclass &&
           LOAD_RELAXED(&s->heap) == mc->heap && gm_span_is_slot(s, a) &&
           f->st == gm_objstate_ptr(s, gm_span_index(s, a)) && LOAD_RELAXED(f->st) == OBJ_CACHED;
}

/* The run of frees free_objs_locked just applied to span s: n of its
 * objects became OBJ_FREE.  Under mc->lock. */
static void span_freed(gm_mcentral *mc, gm_mspan *s, uint32_t n, bool *released) {
    GM_ASSERT(s->allocCount >= n);
    s->allocCount -= n;
    if (!LOAD_RELAXED(&s->needzero)) /* written once: it shares the line malloc reads */
        STORE_RELAXED(&s->needzero, 1);
    if (s->cachedBy != NULL)
        return; /* its owner's sweep finds the slots */
    if (s->allocCount == 0) {
        list_remove(mc, s);
        release_span(mc, s);
        *released = true;
    } else if (s->list == LIST_FULL) {
        list_remove(mc, s);
        list_add(mc, s);
    }
}

/*
 * Where a freed object goes: n entries of class sc return to their spans.
 * Each object's canary is checked and cleared, its state byte goes from
 * OBJ_CACHED to OBJ_FREE and its span's
 * allocCount drops; a span no thread allocates from that becomes empty goes
 * back to the heap.  Under mc->lock.
 *
 * An entry must be a cached object of the class (the allocator's own lists
 * are out of the program's reach, so only a wild write into the
 * allocator's memory or a bug makes one that is not): its address in a
 * span of this class and heap, its state byte the one of its granule, and
 * that byte OBJ_CACHED (which only an object's first granule can hold, so
 * the address is a slot's start).  Anything else is reported and skipped.
 * Consecutive entries mostly share a span (a list holds what one thread
 * freed, in order): the span is looked up once per run of them, and its
 * count updated once.  Returns how many went back; *released says whether
 * a span went back to the heap.
 */
static uint64_t free_objs_locked(gm_mcentral *mc, const gm_freeobj *objs, uint32_t n, bool *released) {
    uint64_t done = 0;
    uint8_t sc = mc->sizeclass;
    gm_mspan *s = NULL;          /* the span of the current run, or NULL */
    uintptr_t lo = 0, len = 0;   /* its bytes: [lo, lo + len) */
    uintptr_t e = 0;             /* its arena's map entry (a span never crosses arenas) */
    uint32_t run = 0;            /* frees of the run not yet applied to s */
    for (uint32_t k = 0; k < n; k++) {
        uintptr_t a = (uintptr_t)objs[k].p;
        uint8_t *st = objs[k].st;
        if (a - lo >= len) {
            if (run != 0)
                span_freed(mc, s, run, released);
            run = 0;
            s = gm_span_of(a);
            if (unlikely(s == NULL || s->sizeclass != sc || s->heap != mc->heap)) {
                s = NULL;
                lo = len = 0;
                gm_report_corruption(objs[k].p, sc, "a free list entry is not a freed object of its class");
                continue;
            }
            lo = s->startAddr;
            len = s->npages << PAGE_SHIFT;
            e = gm_arena_map_load(a);
        }
        if (unlikely(st != gm_state_at(e, a) || LOAD_RELAXED(st) != OBJ_CACHED)) {
            gm_report_corruption(objs[k].p, sc, "a free list entry is not a freed object of its class");
            continue;
        }
        GM_ASSERT(gm_span_is_slot(s, a));
        /* Its canary: a write after free is reported, as malloc reports
         * it, and cleared, so that the slot holds nothing of the
         * allocator's when it is handed out again.  Read after the entry
         * is validated: nothing is written through an entry that is not
         * a freed object's. */
        uint64_t *w = (uint64_t *)a;
        if (unlikely(!canary_ok(w)))
            gm_report_corruption(w, sc, "written after it was freed");
        w[0] = w[1] = 0;
        gm_set_objstate(st, OBJ_FREE);
        run++;
        done++;
    }
    if (run != 0)
        span_freed(mc, s, run, released);
    return done;
}

uint64_t gm_mcentral_freeObjs(gm_mcentral *mc, const gm_freeobj *objs, uint32_t n) {
    bool released = false;
    pthread_mutex_lock(&mc->lock);
    uint64_t done = free_objs_locked(mc, objs, n, &released);
    pthread_mutex_unlock(&mc->lock);
    if (released)
        gm_scavenger_notify();
    return done;
}

/* ---- the transfer cache ------------------------------------------------------- */

/* Send the k oldest batches of mc's transfer cache to the spans (they aged
 * out), keeping their buffers (moved to the free end of tc[]).  Under lock. */
static void evict_oldest(gm_mcentral *mc, uint32_t k, bool *released) {
    gm_freeobj *bufs[TC_BATCHES];
    for (uint32_t i = 0; i < k; i++) {
        free_objs_locked(mc, mc->tc[i].objs, mc->tc[i].n, released);
        mc->tc_objects -= mc->tc[i].n;
        if (mc->tc[i].owner == NULL)
            STORE_RELAXED(&mc->nany, mc->nany - 1);
        bufs[i] = mc->tc[i].objs;
    }
    memmove(&mc->tc[0], &mc->tc[k], (mc->ntc - k) * sizeof mc->tc[0]);
    for (uint32_t i = 0; i < k; i++)
        mc->tc[mc->ntc - k + i] = (gm_tcbatch){.objs = bufs[i]};
    STORE_RELAXED(&mc->ntc, mc->ntc - k);
}

/* How many batches, and *bytes of objects, a class's transfer cache takes:
 * one batch per thread with a cache, at least TC_BATCHES_MIN (16) and at
 * most TC_BATCHES (32), and TC_BYTES (128 KiB) per 16 batches.  Its
 * batches are shared by every thread: with 4 for 8 or 32 threads, most
 * flushes found it full and went to the spans, and most threads whose
 * lists ran dry found no batch of their own and went to cacheSpan, each a
 * class-lock acquisition (graphs, 32 threads: 10 times the acquisitions
 * per document of 2 threads; README "Scaling", measured with make
 * lockstats).  One or two threads need the room too: a program that drops
 * a document (a parsed JSON text, a request's objects) and builds the
 * next frees and allocates thousands of objects of a class in a burst,
 * and with 4 batches (32 KiB) most of them went through the spans
 * (free_objs_locked, then cacheSpan's sweep) on the way back.  Against 4
 * batches and 32 KiB, alternating the two builds (2 threads): graphs 0.88
 * of the time, larson 0.94, alloc_test 0.95, xmalloc 0.94; Python's
 * strings_json (bench python, install()) 1.16 of pymalloc's time instead
 * of 1.19; peak RSS: graphs unchanged, larson +4%, alloc_test +5%.
 * 32 to 64 batches and 256 KiB: alloc_test 0.90, strings_json 1.15, but
 * RSS +7% to +8%.  Batches leave after decay_ms. */
static uint32_t tc_room(uint64_t *bytes) {
    uint32_t t = gm_mcache_threads(), b = t < TC_BATCHES_MIN ? TC_BATCHES_MIN : t > TC_BATCHES ? TC_BATCHES : t;
    *bytes = (uint64_t)TC_BYTES / TC_BATCHES_MIN * b;
    return b;
}

/* The descriptor of mc's next batch, with its buffer, both allocated on
 * first use; NULL if there is no memory for them.  Under lock. */
static gm_tcbatch *tc_free_slot(gm_mcentral *mc) {
    if (mc->tc == NULL &&
        (mc->tc = gm_persistentalloc(TC_BATCHES * sizeof(gm_tcbatch), 64, &gm_mheap.other_sys)) == NULL)
        return NULL;
    gm_tcbatch *b = &mc->tc[mc->ntc];
    if (b->objs == NULL &&
        (b->objs = gm_persistentalloc(gm_list_cap[mc->sizeclass] * sizeof(gm_freeobj), 64, &gm_mheap.other_sys)) == NULL)
        return NULL;
    return b;
}

bool gm_mcentral_freeBatch(gm_mcentral *mc, const gm_freeobj *objs, uint32_t n, const void *owner) {
    uint8_t sc = mc->sizeclass;
    uint64_t size = gm_class_to_size[sc];
    /* A batch that does not fit goes to the spans, not the oldest batch
     * in the cache: its objects were freed moments ago, so the canary
     * check reads lines still in this core's cache, where an evicted
     * batch's are cold (a burst of frees larger than the lists and the
     * cache, a document or a dict dropped, paid a cache miss per object
     * for it).  Batches that sit in the cache are drained by the
     * scavenger once decay_ms old. */
    uint64_t bytes;
    uint32_t room = tc_room(&bytes);
    if (n * size > bytes || n > gm_list_cap[sc] || LOAD_RELAXED(&mc->ntc) >= room) {
        gm_mcentral_freeObjs(mc, objs, n);
        return false;
    }
    uint64_t now = gm_now_ms();
    bool released = false;
    pthread_mutex_lock(&mc->lock);
    /* NULL: the cache is full, or no memory: to the spans */
    gm_tcbatch *b = mc->ntc < room && (mc->tc_objects + n) * size <= bytes ? tc_free_slot(mc) : NULL;
    if (b == NULL) {
        free_objs_locked(mc, objs, n, &released);
    } else {
        memcpy(b->objs, objs, n * sizeof *objs);
        b->n = n;
        b->since = now;
        b->owner = owner;
        mc->tc_objects += n;
        if (owner == NULL)
            STORE_RELAXED(&mc->nany, mc->nany + 1);
        STORE_RELAXED(&mc->ntc, mc->ntc + 1);
    }
    pthread_mutex_unlock(&mc->lock);
    if (released)
        gm_scavenger_notify();
    return b != NULL;
}

/* A batch for cache owner: its own newest, else the newest a consumer
 * flushed (no owner), else none.  A thread that frees a burst and
 * allocates it again (a request, a document) gets back what its core
 * wrote last; it never gets another allocating thread's batch, whose
 * objects sit in lines and spans that thread keeps writing: two threads
 * trading batches back and forth end up with their objects interleaved in
 * every span, and every malloc and free moves lines between the cores
 * (graphs, two threads, on this VM when its two vCPUs sit on different
 * cores: 1.8 times glibc's time, 1.05 with this and cacheSpan's affinity).
 * A consumer, which flushes and a producer, which takes, still trade. */
uint32_t gm_mcentral_takeBatch(gm_mcentral *mc, gm_freeobj *out, uint32_t max, const void *owner,
                               uint32_t *own_left) {
    uint32_t n = 0, own = 0, mine = 0, anyones = 0; /* newest of each, + 1; 0: none */
    pthread_mutex_lock(&mc->lock);
    for (uint32_t k = 0; k < mc->ntc; k++) {
        if (mc->tc[k].owner == owner) {
            own++;
            mine = k + 1;
        } else if (mc->tc[k].owner == NULL) {
            anyones = k + 1;
        }
    }
    uint32_t i = mine != 0 ? mine : anyones; /* its own, else a consumer's */
    if (i > 0) {
        i--;
        gm_tcbatch b = mc->tc[i];
        if (b.n <= max) {
            n = b.n;
            memcpy(out, b.objs, n * sizeof *out);
            mc->tc_objects -= n;
            if (b.owner == NULL)
                STORE_RELAXED(&mc->nany, mc->nany - 1);
            else
                own--;
            /* Out of the order; its buffer goes to the free end. */
            memmove(&mc->tc[i], &mc->tc[i + 1], (mc->ntc - 1 - i) * sizeof mc->tc[0]);
            mc->tc[mc->ntc - 1] = (gm_tcbatch){.objs = b.objs};
            STORE_RELAXED(&mc->ntc, mc->ntc - 1);
        }
    }
    pthread_mutex_unlock(&mc->lock);
    *own_left = own;
    return n;
}

/* Move the batches of mc that came in at least age_ms ago to the spans;
 * the oldest left's arrival in *oldest (if *left). */
static void drain_central(gm_mcentral *mc, uint64_t now, uint64_t age_ms, bool *left, uint64_t *oldest,
                          bool *released) {
    if (LOAD_RELAXED(&mc->ntc) == 0)
        return;
    pthread_mutex_lock(&mc->lock);
    uint32_t k = 0;
    while (k < mc->ntc && now - mc->tc[k].since >= age_ms)
        k++;
    evict_oldest(mc, k, released);
    if (mc->ntc != 0 && (!*left || mc->tc[0].since < *oldest)) {
        *oldest = mc->tc[0].since;
        *left = true;
    }
    pthread_mutex_unlock(&mc->lock);
}

bool gm_mcentral_drainAged(uint64_t age_ms, uint64_t *oldest) {
    uint64_t now = gm_now_ms();
    bool left = false, released = false;
    gm_drain_begin(); /* not while a heap check counts */
    gm_heaps_lock(); /* no heap is destroyed meanwhile */
    for (gm_heap *hp = gm_heaps_next(NULL); hp != NULL; hp = gm_heaps_next(hp))
        for (int sc = 1; sc < NUM_CLASSES; sc++)
            drain_central(&hp->central[sc], now, age_ms, &left, oldest, &released);
    gm_heaps_unlock();
    gm_drain_end();
    if (released)
        gm_scavenger_notify();
    return left;
}

/* Every batch of mc to the spans (a heap's delete). */
void gm_mcentral_drain(gm_mcentral *mc) {
    bool left = false, released = false;
    uint64_t oldest = 0;
    drain_central(mc, gm_now_ms(), 0, &left, &oldest, &released);
    if (released)
        gm_scavenger_notify();
}

void gm_mcentral_drainAll(void) {
    uint64_t oldest;
    (void)gm_mcentral_drainAged(0, &oldest); /* every batch is at least 0 ms old */
}

uint64_t gm_mcentral_tc_bytes(void) {
    uint64_t bytes = 0;
    for (gm_heap *hp = gm_heaps_next(NULL); hp != NULL; hp = gm_heaps_next(hp))
        for (int sc = 1; sc < NUM_CLASSES; sc++) {
            gm_mcentral *mc = &hp->central[sc];
            pthread_mutex_lock(&mc->lock);
            bytes += (uint64_t)mc->tc_objects * gm_class_to_size[sc];
            pthread_mutex_unlock(&mc->lock);
        }
    return bytes;
}

/* ---- checking ---------------------------------------------------------------- */

int gm_span_check(const gm_mspan *s, bool cached) {
    int bad = 0;
    uintptr_t nwords = (s->nelems + 63) / 64;
    if (LOAD_RELAXED(&s->state) != SPAN_INUSE || s->sizeclass == 0 || s->nelems != gm_class_to_nelems[s->sizeclass] ||
        s->objstate == NULL) {
        gm_warn_check("span has a bad state or class", s);
        return 1;
    }
    if (gm_span_of(s->startAddr) != s || gm_span_of(s->startAddr + (s->npages - 1) * PAGE_SIZE) != s) {
        gm_warn_check("span map does not point at the span", s);
        bad++;
    }
    for (uintptr_t w = 0; w < BITMAP_WORDS; w++) {
        uint64_t valid = w < nwords ? ~(uint64_t)0 : 0;
        if (w == nwords - 1 && s->nelems % 64 != 0)
            valid = ((uint64_t)1 << (s->nelems % 64)) - 1;
        if (s->allocBits[w] & ~valid) {
            gm_warn_check("allocBits set beyond nelems", s);
            bad++;
        }
    }
    if (s->objstate != gm_state_of(s->startAddr) || s->ststep != s->elemsize >> STATE_SHIFT) {
        gm_warn_check("span's state bytes are not where its address says", s);
        return bad + 1;
    }
    /* The bytes of granules where no object starts are 0. */
    for (uintptr_t g = 0; g < (s->npages * PAGE_SIZE) >> STATE_SHIFT; g++)
        if (g % s->ststep != 0 || g / s->ststep >= s->nelems)
            if (LOAD_RELAXED(&s->objstate[g]) != 0) {
                gm_warn_check("a state byte between objects is set", s);
                bad++;
                break;
            }
    uint32_t notfree = 0, taken_free = 0;
    for (uintptr_t i = 0; i < s->nelems; i++) {
        uint8_t st = gm_objstate(s, i);
        bool taken = (i >= s->skipped && i < s->freeindex) || gm_bit(s->allocBits, i);
        if (!(st == OBJ_FREE || st == s->liveval || st == OBJ_CACHED ||
              st == OBJ_SAMPLED || st == OBJ_TINY) ||
            (st == OBJ_TINY && (s->sizeclass != TINY_CLASS || gm_tiny_check_block(s, i)))) {
            gm_warn_check("bad object state byte", s);
            bad++;
            break;
        }
        notfree += st != OBJ_FREE;
        taken_free += taken && st == OBJ_FREE;
        if (cached && !taken && st != OBJ_FREE) {
            gm_warn_check("cached span: object not taken by the owner is not free", s);
            bad++;
            break;
        }
    }
    if (cached) {
        if (s->allocCount != s->nelems - taken_free) {
            gm_warn_check("cached span: allocCount != nelems - (taken objects now free)", s);
            bad++;
        }
    } else {
        if (s->skipped != 0) {
            gm_warn_check("uncached span with skipped slots", s);
            bad++;
        }
        if (s->allocCount != notfree) {
            gm_warn_check("uncached span: allocCount != objects not free", s);
            bad++;
        }
        if (s->allocCount == 0) {
            gm_warn_check("uncached empty span not returned to the heap", s);
            bad++;
        }
        if (s->list != (s->allocCount == s->nelems ? LIST_FULL : LIST_PARTIAL)) {
            gm_warn_check("span on the wrong mcentral list", s);
            bad++;
        }
    }
    return bad;
}

/* Check the uncached spans; returns violations, and the number of spans in
 * *nuncached.  Takes each class lock in turn. */
int gm_mcentral_check_lists(gm_heap *hp, uint64_t *nuncached) {
    int bad = 0;
    *nuncached = 0;
    for (int sc = 1; sc < NUM_CLASSES; sc++) {
        gm_mcentral *mc = &hp->central[sc];
        pthread_mutex_lock(&mc->lock);
        for (int l = 0; l < 2; l++)
            for (gm_mspan *s = l ? mc->full : mc->partial; s != NULL; s = s->next) {
                if (s->sizeclass != sc || s->cachedBy != NULL || s->heap != hp) {
                    gm_warn_check("span on the wrong mcentral, or cached", s);
                    bad++;
                }
                bad += gm_span_check(s, false);
                (*nuncached)++;
            }
        pthread_mutex_unlock(&mc->lock);
    }
    return bad;
}

/* Every object in a transfer cache must be a cached object of its class. */
int gm_mcentral_check_tc(gm_heap *hp, uint64_t *nobjects) {
    int bad = 0;
    *nobjects = 0;
    for (int sc = 1; sc < NUM_CLASSES; sc++) {
        gm_mcentral *mc = &hp->central[sc];
        pthread_mutex_lock(&mc->lock);
        uint64_t total = 0;
        for (uint32_t i = 0; i < mc->ntc; i++) {
            for (uint32_t k = 0; k < mc->tc[i].n; k++)
                if (!gm_freeobj_valid(&mc->tc[i].objs[k], mc)) {
                    gm_warn_check("bad object in a transfer cache batch", gm_span_of((uintptr_t)mc->tc[i].objs[k].p));
                    bad++;
                    break;
                }
            if (mc->tc[i].n == 0 || mc->tc[i].n > gm_list_cap[sc]) {
                gm_warn_check("transfer cache batch has a bad length", NULL);
                bad++;
            }
            total += mc->tc[i].n;
        }
        uint32_t any = 0;
        for (uint32_t i = 0; i < mc->ntc; i++)
            any += mc->tc[i].owner == NULL;
        if (total != mc->tc_objects || mc->ntc > TC_BATCHES || total * gm_class_to_size[sc] > TC_BYTES_MAX ||
            any != mc->nany) {
            gm_warn_check("transfer cache counts are off", NULL);
            bad++;
        }
        *nobjects += total;
        pthread_mutex_unlock(&mc->lock);
    }
    return bad;
}
