/*
 * mcache.c: per-thread caches (mcache.go), thread exit and fork.
 *
 * Go has one mcache per P; we have one per OS thread, created on the
 * thread's first malloc, found through a thread-local pointer, and given
 * back when the thread exits (a pthread key destructor flushes it and puts
 * it on a free list for the next thread).
 *
 * Per size class an mcache holds the span it allocates from (refill,
 * cacheSpan) and a LIFO list of freed objects of that class, from any span.
 * malloc pops the list before trying the span, so a thread that frees and
 * allocates again reuses hot memory without a lock.  When the list grows
 * past its bound (about tcache_bytes of objects), the older half leaves in
 * one batch, for the transfer cache or the spans (mcentral.c); a thread
 * whose list is empty and whose span has no slot ready takes a batch from
 * the transfer cache before it scans the span further.
 *
 * Threads and frees: any thread may free any object; it lands on the
 * freeing thread's list and is reused there, or returned to its span by the
 * next batch.  No lock is taken on the way, and nothing is serialised behind
 * a global lock: batches take the lock of their size class only.
 *
 * fork(): the atfork handlers take every lock (registry, then each
 * mcentral, then the heap) so that the child starts with consistent
 * structures; in the child, the caches of the threads that did not survive
 * are flushed, so their memory is not lost.
 */
#define _GNU_SOURCE
#include <string.h>

#include "gm_internal.h"

/* The span of an mcache class with nothing to give: nextFreeFast fails on
 * it (allocCache == 0), so no NULL check is needed on the fast path. */
gm_mspan gm_emptyspan;

/* The mcache of a thread that has none (yet, or any more): every list is
 * empty and has no room (limit 0), every span is gm_emptyspan, so both fast
 * paths fall through to the slow paths, which know it.  Never written. */
gm_mcache gm_nocache = {.cls = {[0 ... NUM_CLASSES - 1] = {.span = &gm_emptyspan}}};

__thread gm_mcache *gm_tls_mcache GM_TLS_MODEL = &gm_nocache;

static pthread_key_t mcache_key;
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static gm_mcache *registry;      /* live mcaches. Under registry_lock. */
uint64_t gm_dead_nmalloc[NUM_CLASSES], gm_dead_nfree[NUM_CLASSES]; /* counters of exited threads. Under registry_lock. */

static void mcache_release(gm_mcache *c);

static void mcache_destructor(void *arg) {
    gm_mcache *c = arg;
    if (gm_tls_mcache == c)
        gm_tls_mcache = &gm_nocache;
    mcache_release(c);
}

void gm_mcache_init(void) {
    if (pthread_key_create(&mcache_key, mcache_destructor) != 0)
        gm_throw("pthread_key_create failed");
    gm_fixalloc_init(&gm_heap.cachealloc, sizeof(gm_mcache), &gm_heap.mcache_sys);
}

static uint32_t list_bound(uint8_t sc) {
    long long b = gm_opt.tcache_bytes / gm_class_to_size[sc];
    if (b < 8)
        b = 8;
    if (b > 512)
        b = 512;
    return (uint32_t)b;
}

gm_mcache *gm_mcache_create(void) {
    pthread_mutex_lock(&registry_lock);
    gm_mcache *c = gm_fixalloc_alloc(&gm_heap.cachealloc);
    if (c == NULL) {
        pthread_mutex_unlock(&registry_lock);
        return NULL;
    }
    for (int sc = 0; sc < NUM_CLASSES; sc++) {
        c->cls[sc].head = NULL;
        c->cls[sc].span = &gm_emptyspan;
        c->listmax[sc] = sc ? list_bound((uint8_t)sc) : 0;
        c->cls[sc].npush = 0;
        c->cls[sc].limit = c->listmax[sc];
        c->nspan[sc] = c->nflush[sc] = c->nrecv[sc] = 0;
    }
    c->prev = NULL;
    c->next = registry;
    if (registry != NULL)
        registry->prev = c;
    registry = c;
    c->linked = true;
    pthread_mutex_unlock(&registry_lock);
    gm_tls_mcache = c;
    pthread_setspecific(mcache_key, c);
    return c;
}

/* Take c off the registry list.  Under registry_lock. */
static void registry_unlink(gm_mcache *c) {
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        registry = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->linked = false;
}

/* Flush everything and recycle c.  c's owner is gone (or is us, leaving). */
static void mcache_release(gm_mcache *c) {
    gm_mcache_flushAll(c);
    pthread_mutex_lock(&registry_lock);
    gm_stats_fold_mcache(c);
    if (c->linked)
        registry_unlink(c);
    gm_fixalloc_free(&gm_heap.cachealloc, c);
    bool last = registry == NULL;
    pthread_mutex_unlock(&registry_lock);
    if (last)
        gm_scavenger_threads_gone();
}

/* Counters of an mcache that goes away.  Under registry_lock. */
void gm_stats_fold_mcache(gm_mcache *c) {
    ATOMIC_ADD(&gm_dead_tiny_mallocs, c->tiny_mallocs);
    ATOMIC_ADD(&gm_dead_tiny_frees, c->tiny_frees);
    c->tiny_mallocs = c->tiny_frees = 0;
    for (int sc = 0; sc < NUM_CLASSES; sc++) {
        gm_mclass *m = &c->cls[sc];
        ATOMIC_ADD(&gm_dead_nmalloc[sc], m->limit - c->listmax[sc] - c->nflush[sc] + c->nrecv[sc] + c->nspan[sc]);
        ATOMIC_ADD(&gm_dead_nfree[sc], m->npush);
        /* The list is empty (flushed), or lost with an orphan. */
        m->npush = 0;
        m->limit = c->listmax[sc];
        c->nspan[sc] = c->nflush[sc] = c->nrecv[sc] = 0;
    }
}

/*
 * refill (mcache.nextFree + mcache.refill): the slow path of malloc for a
 * small class when the free list is empty and nextFreeFast failed.  Returns
 * an object, or NULL when out of memory.
 */
void *gm_mcache_refill(gm_mcache *c, uint8_t sc) {
    gm_mclass *m = &c->cls[sc];
    gm_mspan *s = m->span;
    if (s != &gm_emptyspan) {
        uintptr_t i = gm_span_nextFreeIndex(s);
        if (i < s->nelems)
            return (void *)(s->startAddr + i * s->elemsize);
        gm_mcentral_uncacheSpan(s);
        m->span = &gm_emptyspan;
    }
    s = gm_mcentral_cacheSpan(c, sc);
    if (s == NULL)
        return NULL;
    m->span = s;
    uintptr_t i = gm_span_nextFreeIndex(s);
    if (i >= s->nelems)
        gm_throw("cacheSpan returned a span without free slots");
    return (void *)(s->startAddr + i * s->elemsize);
}

/* Take all but the `keep` most recently freed objects of class sc off the
 * list; returns them (their number in *n), or NULL if there are none. */
static gm_freeobj *take_older(gm_mcache *c, uint8_t sc, uint32_t keep, uint32_t *n) {
    gm_mclass *m = &c->cls[sc];
    uint32_t len = gm_list_len(m->npush, m->limit, c->listmax[sc]);
    if (len <= keep)
        return NULL;
    gm_freeobj *rest;
    if (keep == 0) {
        rest = m->head;
        m->head = NULL;
    } else {
        gm_freeobj *p = m->head;
        for (uint32_t k = 1; k < keep; k++)
            p = p->next;
        rest = p->next;
        p->next = NULL;
    }
    *n = len - keep;
    m->limit += *n;
    c->nflush[sc] += *n;
    return rest;
}

/* The list of class sc is full: all but the `keep` most recently freed
 * objects leave it, for the transfer cache or their spans. */
void gm_mcache_flushClass(gm_mcache *c, uint8_t sc, uint32_t keep) {
    uint32_t n;
    gm_freeobj *rest = take_older(c, sc, keep, &n);
    if (rest != NULL)
        gm_mcentral_freeBatch(sc, rest, n);
}

/* The list of class sc is empty: take a batch from the transfer cache, if
 * it has one that fits.  Returns whether the list has objects now. */
bool gm_mcache_receive(gm_mcache *c, uint8_t sc) {
    gm_mclass *m = &c->cls[sc];
    uint32_t n;
    gm_freeobj *b = gm_mcentral_takeBatch(sc, c->listmax[sc], &n);
    if (b == NULL)
        return false;
    m->head = b;
    m->limit -= n;
    c->nrecv[sc] += n;
    return true;
}

/* Everything back to the spans and the heap (thread exit, gm_release). */
void gm_mcache_flushAll(gm_mcache *c) {
    gm_tiny_retire_all(c); /* first: empty blocks land on the lists flushed below */
    for (int sc = 1; sc < NUM_CLASSES; sc++) {
        uint32_t n;
        gm_freeobj *all = take_older(c, (uint8_t)sc, 0, &n);
        if (all != NULL)
            gm_mcentral_freeList((uint8_t)sc, all);
        if (c->cls[sc].span != &gm_emptyspan) {
            gm_mcentral_uncacheSpan(c->cls[sc].span);
            c->cls[sc].span = &gm_emptyspan;
        }
    }
    gm_pagecache_flush(c);
}

/* ---- registry, for stats and the heap check ----------------------------- */

void gm_registry_lock(void) { pthread_mutex_lock(&registry_lock); }
void gm_registry_unlock(void) { pthread_mutex_unlock(&registry_lock); }
gm_mcache *gm_registry_first(void) { return registry; }

/* ---- fork ------------------------------------------------------------------ */

void gm_mcache_fork_prepare(void) {
    pthread_mutex_lock(&registry_lock);
    for (int sc = 0; sc < NUM_CLASSES; sc++)
        pthread_mutex_lock(&gm_central[sc].lock);
    pthread_mutex_lock(&gm_heap.lock);
    gm_persistent_lock();
}

void gm_mcache_fork_parent(void) {
    gm_persistent_unlock();
    pthread_mutex_unlock(&gm_heap.lock);
    for (int sc = NUM_CLASSES - 1; sc >= 0; sc--)
        pthread_mutex_unlock(&gm_central[sc].lock);
    pthread_mutex_unlock(&registry_lock);
}

/*
 * In the child only the forking thread exists.  The other threads' caches
 * may have been in the middle of a lock-free fast path when the memory was
 * copied, so they cannot be trusted to flush: they become orphans, frozen
 * and never reused (their objects, spans and pages are lost to the child,
 * as glibc and jemalloc lose them).  Their counters are folded into the
 * totals; gm_check_heap skips the cross-checks that would count them.
 */
bool gm_fork_orphans;
static gm_mcache *orphans;

void gm_mcache_fork_child(void) {
    gm_persistent_reinit();
    pthread_mutex_init(&gm_heap.lock, NULL);
    for (int sc = 0; sc < NUM_CLASSES; sc++)
        pthread_mutex_init(&gm_central[sc].lock, NULL);
    pthread_mutex_init(&registry_lock, NULL);
    gm_mcache *c = registry;
    while (c != NULL) {
        gm_mcache *next = c->next;
        if (c != gm_tls_mcache) {
            gm_stats_fold_mcache(c);
            registry_unlink(c);
            c->next = orphans;
            orphans = c;
            gm_fork_orphans = true;
        }
        c = next;
    }
}
