/*
 * heap.c: heaps programs hold (Go's experimental arena package, mimalloc's
 * heaps, jemalloc's arenas), built on the Go design: spans, an mcentral per
 * size class, per-thread caches and the one page heap.
 *
 * A heap is its mcentrals (the spans of each class no cache owns, and
 * transfer caches), its large spans, and the threads' caches for it.  Its
 * spans hold only its objects, whose state bytes say OBJ_LIVE_HEAP(c): so
 * free()'s fast path, which knows only the thread's default-heap lists,
 * sends them to its slow path, which finds the span's heap and pushes the
 * object on the thread's cache for that heap.  Allocating from a heap
 * (gm_heap_malloc, or malloc while the heap is the thread's default) uses
 * the thread's cache for it: no lock in the common case.  Its spans are
 * counted against its limit when they are taken from the page heap, in one
 * compare-and-swap, so the limit is exact under any number of threads.
 *
 * A thread's cache for heap H lives beside its default-heap cache (its
 * owner, whose page cache it shares), found through the owner's heaptab by
 * H's slot.  Its lists are in the upper half of cls[]: the index of the
 * entry malloc pops from is the state byte it writes (OBJ_LIVE_HEAP(c)),
 * and malloc's size table, which holds offsets of default-heap entries,
 * reaches them through a pointer biased by OBJ_HEAP_BIT entries.
 *
 * Destroying a heap frees everything at once: the caches' lists are
 * dropped, every span goes back to the page heap (its state bytes cleared:
 * a memset per span, and the canaries of the objects that were on lists:
 * a read of its state bytes), or, with fault_on_destroy,
 * becomes PROT_NONE and waits decay_ms in a quarantine before its pages are
 * reused, so that a dangling pointer faults at once.  Threads may be
 * allocating from the heap at that moment: each works on its cache between
 * gm_heap_enter and gm_heap_leave, which raise and clear the cache's busy
 * flag and then look at the heap's dead flag; destroy raises the dead flag
 * and waits for the busy flags to fall.  The two sides need a full memory
 * barrier between their store and their load (Dekker); the allocating side
 * gets it for free where membarrier(2) can impose it on every thread of the
 * process from the destroying side, and pays a fence otherwise.
 *
 * Handles are slot + generation, never pointers: a destroyed heap's handle
 * is refused (EINVAL).  The heap structs are never freed: a slot keeps its
 * struct, and a new heap in the slot has the next generation.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "gm_internal.h"

gm_heap gm_default_heap;

static pthread_mutex_t heaps_lock = PTHREAD_MUTEX_INITIALIZER; /* new/destroy/delete, the table. Before every other lock. */
static gm_heap *table[MAX_HEAPS]; /* slot -> its struct (kept once made). Written under heaps_lock, read acquire. */
static uint32_t nslots;           /* slots with a struct: table[0..nslots). Under heaps_lock; read acquire. */
static bool asym_barrier;         /* membarrier(PRIVATE_EXPEDITED) is registered: set by the first gm_heap_new, before any heap cache exists. */

/* TSan does not see membarrier's effect: plain sequentially consistent
 * atomics there. */
#if defined(__SANITIZE_THREAD__)
#define ASYM_BARRIER_OK 0
#else
#define ASYM_BARRIER_OK 1
#endif

/* Quarantine: spans of heaps destroyed with fault_on_destroy, PROT_NONE,
 * oldest first (linked by next). */
static pthread_mutex_t quarantine_lock = PTHREAD_MUTEX_INITIALIZER;
static gm_mspan *quarantine, **quarantine_tail = &quarantine;

/* fresh: hp's memory was never a heap (else its transfer cache descriptors
 * and buffers stay, emptied, for the next heap in the slot). */
static void central_init(gm_heap *hp, bool fresh) {
    for (int sc = 0; sc < NUM_CLASSES; sc++) {
        gm_mcentral *mc = &hp->central[sc];
        pthread_mutex_init(&mc->lock, NULL);
        if (fresh)
            mc->tc = NULL;
        mc->heap = hp;
        mc->sizeclass = (uint8_t)sc;
        mc->partial = mc->full = NULL;
        mc->nspans = 0;
        mc->ntc = mc->tc_objects = mc->nany = 0;
    }
}

void gm_heaps_init(void) {
    gm_default_heap.id = 0;
    gm_default_heap.gen = 0;
    pthread_mutex_init(&gm_default_heap.lock, NULL);
    central_init(&gm_default_heap, true);
    for (int sc = 0; sc < NUM_CLASSES; sc++)
        gm_fixalloc_init(&gm_default_heap.central[sc].tinywordalloc,
                         (size_t)gm_class_to_nelems[sc] * sizeof(uint32_t), &gm_mheap.other_sys);
    strcpy(gm_default_heap.name, "default");
    table[0] = &gm_default_heap;
    nslots = 1;
}

/* ---- handles --------------------------------------------------------------- */

#define HANDLE_TAG 0x8u

gm_heap_t *gm_heap_handle(const gm_heap *hp) {
    return (gm_heap_t *)(uintptr_t)(((uint64_t)hp->gen << 32) | ((uint64_t)hp->id << 4) | HANDLE_TAG);
}

gm_heap *gm_heap_get(gm_heap_t *h) {
    uintptr_t v = (uintptr_t)h;
    uint32_t id = (uint32_t)(v >> 4) & 0xfffffffu, gen = (uint32_t)(v >> 32);
    gm_ensure_init();
    if ((v & 0xf) != HANDLE_TAG || id >= MAX_HEAPS || id >= __atomic_load_n(&nslots, __ATOMIC_ACQUIRE)) {
        errno = EINVAL;
        return NULL;
    }
    gm_heap *hp = __atomic_load_n(&table[id], __ATOMIC_ACQUIRE);
    if (hp == NULL || LOAD_RELAXED(&hp->gen) != gen || LOAD_RELAXED(&hp->dead)) {
        errno = EINVAL;
        return NULL;
    }
    return hp;
}

gm_heap_t *gm_heap_default(void) { return gm_heap_handle(&gm_default_heap); }

/* ---- the allocating side's barrier ----------------------------------------- */

bool gm_heap_enter(gm_mcache *hc) {
    int busy = LOAD_RELAXED(&hc->busy);
    if (LOAD_RELAXED(&asym_barrier)) {
        __atomic_store_n(&hc->busy, busy + 1, __ATOMIC_RELAXED);
        __atomic_signal_fence(__ATOMIC_SEQ_CST); /* the destroyer's membarrier does the rest */
    } else {
        __atomic_store_n(&hc->busy, busy + 1, __ATOMIC_SEQ_CST); /* pairs with quiesce's (Dekker) */
    }
    gm_heap *hp = LOAD_RELAXED(&hc->heap);
    if (hp == NULL || __atomic_load_n(&hp->dead, __ATOMIC_SEQ_CST) || LOAD_RELAXED(&hp->gen) != hc->heapgen) {
        __atomic_store_n(&hc->busy, busy, __ATOMIC_RELEASE);
        return false;
    }
    return true;
}

void gm_heap_leave(gm_mcache *hc) { __atomic_store_n(&hc->busy, LOAD_RELAXED(&hc->busy) - 1, __ATOMIC_RELEASE); }

/* The destroying side: after raising hp->dead, wait until no thread works
 * on any of hp's caches.  Under heaps_lock. */
static void quiesce(gm_heap *hp) {
    __atomic_store_n(&hp->dead, 1, __ATOMIC_SEQ_CST);
    if (LOAD_RELAXED(&asym_barrier))
        (void)syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0);
    pthread_mutex_lock(&hp->lock);
    for (;;) {
        gm_mcache *busy = NULL;
        for (gm_mcache *hc = hp->caches; hc != NULL && busy == NULL; hc = hc->hnext)
            if (__atomic_load_n(&hc->busy, __ATOMIC_SEQ_CST))
                busy = hc;
        if (busy == NULL)
            break;
        pthread_mutex_unlock(&hp->lock); /* its owner may need the lock to finish */
        sched_yield();
        pthread_mutex_lock(&hp->lock);
    }
    pthread_mutex_unlock(&hp->lock);
}

/* ---- limits ------------------------------------------------------------------ */

bool gm_heap_reserve(gm_heap *hp, uintptr_t bytes) {
    uint64_t old = LOAD_RELAXED(&hp->inuse), limit = hp->limit;
    do {
        if (limit != 0 && old + bytes > limit)
            return false;
    } while (!__atomic_compare_exchange_n(&hp->inuse, &old, old + bytes, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    uint64_t peak = LOAD_RELAXED(&hp->peak);
    while (old + bytes > peak &&
           !__atomic_compare_exchange_n(&hp->peak, &peak, old + bytes, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
    return true;
}

void gm_heap_unreserve(gm_heap *hp, uintptr_t bytes) { ATOMIC_ADD(&hp->inuse, -(uint64_t)bytes); }

/* ---- large spans ------------------------------------------------------------- */

void gm_heap_large_added(gm_heap *hp, gm_mspan *s) {
    pthread_mutex_lock(&hp->lock);
    gm_list_push(&hp->large, s);
    s->list = LIST_HEAPLARGE;
    pthread_mutex_unlock(&hp->lock);
    ATOMIC_ADD(&hp->large_mallocs, 1);
    ATOMIC_ADD(&hp->large_bytes, s->npages * PAGE_SIZE);
}

/* Take large span s (object p) off hp's list: false if it is not there (a
 * racing free got it, or the heap is being torn down).  Under no lock. */
bool gm_heap_large_removed(gm_heap *hp, gm_mspan *s, uintptr_t p) {
    bool ok = false;
    pthread_mutex_lock(&hp->lock);
    if (!LOAD_RELAXED(&hp->dead) && s->list == LIST_HEAPLARGE && s->startAddr == p && s->heap == hp) {
        gm_list_unlink(&hp->large, s);
        s->list = LIST_NONE;
        ok = true;
    }
    pthread_mutex_unlock(&hp->lock);
    if (ok)
        ATOMIC_ADD(&hp->large_frees, 1);
    return ok;
}

/* ---- the threads' caches for a heap -------------------------------------------- */

/* Make (or recycle) thread dc's cache for hp.  NULL: out of memory, or hp
 * is being destroyed. */
static gm_mcache *make_cache(gm_mcache *dc, gm_heap *hp, uint32_t gen) {
    if (dc->heaptab == NULL) {
        dc->heaptab = gm_persistentalloc(MAX_HEAPS * sizeof(gm_mcache *), 64, &gm_mheap.mcache_sys);
        if (dc->heaptab == NULL)
            return NULL;
    }
    gm_mcache *hc = NULL;
    for (gm_mcache *t = dc->heapcaches; t != NULL; t = t->sibling)
        if (__atomic_load_n(&t->heap, __ATOMIC_ACQUIRE) == NULL && !__atomic_load_n(&t->busy, __ATOMIC_ACQUIRE)) {
            hc = t; /* a spare: its heap is gone */
            break;
        }
    if (hc == NULL) {
        hc = gm_mcache_new_heap_cache();
        if (hc == NULL)
            return NULL;
        hc->owner = dc;
        hc->sibling = dc->heapcaches;
        dc->heapcaches = hc;
    }
    gm_mcache_reset_lists(hc, OBJ_HEAP_BIT);
    hc->heapgen = gen;
    pthread_mutex_lock(&hp->lock);
    bool alive = !LOAD_RELAXED(&hp->dead) && LOAD_RELAXED(&hp->gen) == gen;
    if (alive) {
        __atomic_store_n(&hc->heap, hp, __ATOMIC_RELEASE);
        hc->hnext = hp->caches;
        hp->caches = hc;
    }
    pthread_mutex_unlock(&hp->lock);
    if (!alive)
        return NULL;
    dc->heaptab[hp->id] = hc;
    return hc;
}

gm_mcache *gm_heap_cache(gm_mcache *dc, gm_heap *hp) {
    uint32_t gen = LOAD_RELAXED(&hp->gen);
    gm_mcache *hc = dc->heaptab != NULL ? dc->heaptab[hp->id] : NULL;
    if (likely(hc != NULL && LOAD_RELAXED(&hc->heap) == hp && hc->heapgen == gen))
        return hc;
    return make_cache(dc, hp, gen);
}

/* The counters of heap cache hc go to its heap (it leaves the heap's
 * list); objects it held as live are counted freed when destroyed says so.
 * Under hp->lock. */
static void fold_cache(gm_heap *hp, gm_mcache *hc) {
    for (int sc = 1; sc < NUM_CLASSES; sc++) {
        gm_mclass *m = gm_mclass_of(hc, (uint8_t)sc);
        hp->dead_nmalloc[sc] += gm_list_mallocs(m->limit, hc->listmax[sc], hc->nflush[sc], hc->nrecv[sc], hc->nspan[sc]);
        hp->dead_nfree[sc] += m->npush / LIST_UNIT;
        m->npush = 0;
        m->limit = hc->listmax[sc] * LIST_UNIT;
        hc->nspan[sc] = hc->nflush[sc] = hc->nrecv[sc] = 0;
    }
}

static void unlink_cache(gm_heap *hp, gm_mcache *hc) {
    for (gm_mcache **pp = &hp->caches; *pp != NULL; pp = &(*pp)->hnext)
        if (*pp == hc) {
            *pp = hc->hnext;
            break;
        }
    hc->hnext = NULL;
    __atomic_store_n(&hc->heap, NULL, __ATOMIC_RELEASE);
}

/* Thread dc is going (its cache is released): its heap caches flush into
 * their heaps and go. */
void gm_heap_release_caches(gm_mcache *dc) {
    while (dc->heapcaches != NULL) {
        gm_mcache *hc = dc->heapcaches;
        dc->heapcaches = hc->sibling;
        gm_heap *hp = LOAD_RELAXED(&hc->heap);
        if (hp != NULL && gm_heap_enter(hc)) {
            gm_mcache_flushAll(hc);
            pthread_mutex_lock(&hp->lock);
            fold_cache(hp, hc);
            unlink_cache(hp, hc);
            pthread_mutex_unlock(&hp->lock);
            gm_heap_leave(hc);
        } else {
            /* Its heap is being torn down, which unlinks it: wait for that. */
            while (LOAD_RELAXED(&hc->heap) != NULL)
                sched_yield();
        }
        gm_mcache_free_heap_cache(hc);
    }
    dc->heaptab = NULL; /* persistent memory: left for good (4096 pointers) */
}

/* ---- freeing a heap's object ------------------------------------------------------ */

int gm_heap_free_obj(gm_mspan *s, void *p, uint8_t *st) {
    gm_heap *hp = LOAD_RELAXED(&s->heap);
    if (unlikely(__atomic_load_n(&hp->deleting, __ATOMIC_ACQUIRE))) {
        /* gm_heap_delete is moving the heap's spans to the default heap:
         * the object will be the default heap's. */
        while (__atomic_load_n(&hp->deleting, __ATOMIC_ACQUIRE))
            sched_yield();
        if (__atomic_load_n(&s->heap, __ATOMIC_ACQUIRE) != hp)
            return GM_HEAP_MOVED;
    }
    uint8_t sc = s->sizeclass;
    gm_mcache *dc = gm_tls.free;
    if (dc == &gm_nocache && !gm_tls_exiting)
        dc = gm_mcache_create();
    gm_mcache *hc = dc != NULL && dc != &gm_nocache ? gm_heap_cache(dc, hp) : NULL;
    if (hc != NULL && gm_heap_enter(hc)) {
        bool ok = gm_free_to(hc, sc, p, st);
        gm_heap_leave(hc);
        return ok ? GM_OK : GM_ERR_NOT_ALLOCATED;
    }
    /* No cache: an exiting thread, out of memory, or the heap is going.
     * Straight to the span, under the heap's lock, which its teardown
     * takes too. */
    int code = GM_ERR_NOT_ALLOCATED;
    pthread_mutex_lock(&hp->lock);
    uint8_t live = s->liveval;
    if (!LOAD_RELAXED(&hp->dead) && LOAD_RELAXED(&s->heap) == hp &&
        __atomic_compare_exchange_n(st, &live, OBJ_CACHED, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
        canary_set(p);
        gm_freeobj f = {p, st};
        hp->dead_nfree[sc]++;
        gm_mcentral_freeObjs(&hp->central[sc], &f, 1);
        code = GM_OK;
    }
    pthread_mutex_unlock(&hp->lock);
    return code;
}

/* ---- making and naming heaps ----------------------------------------------------- */

static gm_fixalloc heapalloc; /* Under heaps_lock. */

gm_heap_t *gm_heap_new(const struct gm_heap_options *opts) {
    gm_ensure_init();
    if (opts != NULL && opts->size < offsetof(struct gm_heap_options, limit)) {
        errno = EINVAL;
        return NULL;
    }
    const char *name = opts != NULL ? opts->name : NULL;
    uint64_t limit = opts != NULL && opts->size > offsetof(struct gm_heap_options, limit) ? opts->limit : 0;
    int fault = opts != NULL && opts->size > offsetof(struct gm_heap_options, fault_on_destroy)
                    ? opts->fault_on_destroy
                    : 0;
    if (fault != 0 && fault != 1) {
        errno = EINVAL;
        return NULL;
    }
    pthread_mutex_lock(&heaps_lock);
    if (ASYM_BARRIER_OK && nslots == 1 && !LOAD_RELAXED(&asym_barrier)) {
        /* Allocating threads then need no fence of their own (see above). */
        bool ok = syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0) == 0;
        __atomic_store_n(&asym_barrier, ok, __ATOMIC_RELEASE);
    }
    uint32_t id = 1;
    while (id < nslots && !(table[id] != NULL && LOAD_RELAXED(&table[id]->dead)))
        id++;
    if (id == MAX_HEAPS) {
        pthread_mutex_unlock(&heaps_lock);
        errno = EAGAIN;
        return NULL;
    }
    gm_heap *hp = id < nslots ? table[id] : NULL;
    if (hp == NULL) {
        if (heapalloc.size == 0)
            gm_fixalloc_init(&heapalloc, sizeof(gm_heap), &gm_mheap.other_sys);
        hp = gm_fixalloc_alloc(&heapalloc);
        if (hp == NULL) {
            pthread_mutex_unlock(&heaps_lock);
            errno = ENOMEM;
            return NULL;
        }
        pthread_mutex_init(&hp->lock, NULL);
        central_init(hp, true);
        hp->id = id;
        hp->gen = 0;
        __atomic_store_n(&table[id], hp, __ATOMIC_RELEASE);
        __atomic_store_n(&nslots, id + 1, __ATOMIC_RELEASE);
    } else {
        central_init(hp, false); /* a slot a destroyed heap left */
    }
    hp->large = NULL;
    hp->caches = NULL;
    hp->limit = limit;
    hp->inuse = hp->peak = 0;
    hp->large_mallocs = hp->large_frees = hp->large_bytes = 0;
    memset(hp->dead_nmalloc, 0, sizeof hp->dead_nmalloc);
    memset(hp->dead_nfree, 0, sizeof hp->dead_nfree);
    hp->scoped = false;
    hp->fault_on_destroy = fault != 0;
    memset(hp->name, 0, sizeof hp->name);
    if (name != NULL)
        strncpy(hp->name, name, sizeof hp->name - 1);
    STORE_RELAXED(&hp->gen, hp->gen + 1); /* a new generation: old handles are refused */
    __atomic_store_n(&hp->dead, 0, __ATOMIC_RELEASE);
    gm_heap_t *h = gm_heap_handle(hp);
    pthread_mutex_unlock(&heaps_lock);
    return h;
}

/* ---- allocating ------------------------------------------------------------------- */

/* The calling thread's cache for hp, entered (gm_heap_leave after), or NULL
 * with errno set. */
static gm_mcache *enter_heap(gm_heap *hp) {
    gm_mcache *dc = gm_tls.free;
    if (dc == &gm_nocache && (dc = gm_mcache_create()) == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    gm_mcache *hc = gm_heap_cache(dc, hp);
    if (hc == NULL) {
        errno = LOAD_RELAXED(&hp->dead) ? EINVAL : ENOMEM;
        return NULL;
    }
    if (!gm_heap_enter(hc)) {
        errno = EINVAL;
        return NULL;
    }
    return hc;
}

void *gm_heap_malloc(gm_heap_t *h, size_t size) {
    gm_heap *hp = gm_heap_get(h);
    if (hp == NULL)
        return NULL;
    if (hp == &gm_default_heap) /* the thread's own cache: not its scope's heap */
        return gm_malloc_from(gm_tls.free, size, false);
    gm_mcache *hc = enter_heap(hp);
    if (hc == NULL)
        return NULL;
    void *p = gm_malloc_from(hc, size, false);
    gm_heap_leave(hc);
    return p;
}

void *gm_heap_calloc(gm_heap_t *h, size_t nmemb, size_t size) {
    size_t total;
    if (__builtin_mul_overflow(nmemb, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    gm_heap *hp = gm_heap_get(h);
    if (hp == NULL)
        return NULL;
    if (hp == &gm_default_heap)
        return gm_malloc_from(gm_tls.free, total, true);
    gm_mcache *hc = enter_heap(hp);
    if (hc == NULL)
        return NULL;
    void *p = gm_malloc_from(hc, total, true);
    gm_heap_leave(hc);
    return p;
}

void *gm_heap_realloc(gm_heap_t *h, void *ptr, size_t size) {
    gm_heap *hp = gm_heap_get(h);
    if (hp == NULL)
        return NULL;
    if (ptr == NULL)
        return gm_heap_malloc(h, size);
    int code = gm_check(ptr);
    if (code != GM_OK) {
        gm_report(code, ptr, "gm_heap_realloc");
        return NULL;
    }
    gm_mspan *s = gm_span_of((uintptr_t)ptr);
    size_t old = gm_usable_size(ptr);
    if (s != NULL && LOAD_RELAXED(&s->heap) == hp && size != 0 && size <= old &&
        (s->sizeclass != 0 || size > MAX_SMALL_SIZE))
        return ptr; /* fits where it is, in the right heap */
    void *q = gm_heap_malloc(h, size != 0 ? size : 1);
    if (q == NULL)
        return NULL;
    memcpy(q, ptr, old < size ? old : size);
    gm_free(ptr);
    return q;
}

void *gm_heap_aligned_alloc(gm_heap_t *h, size_t alignment, size_t size) {
    gm_heap *hp = gm_heap_get(h);
    if (hp == NULL)
        return NULL;
    if (hp == &gm_default_heap)
        return gm_aligned_from(gm_tls.free, alignment, size);
    gm_mcache *hc = enter_heap(hp);
    if (hc == NULL)
        return NULL;
    void *p = gm_aligned_from(hc, alignment, size);
    gm_heap_leave(hc);
    return p;
}

gm_heap_t *gm_heap_of(const void *ptr) {
    if (gm_check(ptr) != GM_OK)
        return NULL;
    gm_mspan *s = gm_span_of((uintptr_t)ptr);
    return s != NULL ? gm_heap_handle(LOAD_RELAXED(&s->heap)) : NULL;
}

int gm_heap_free(gm_heap_t *h, void *ptr) {
    gm_heap *hp = gm_heap_get(h);
    if (hp == NULL)
        return GM_ERR_NOT_OURS;
    int code = gm_check(ptr);
    if (code != GM_OK)
        return code;
    gm_mspan *s = gm_span_of((uintptr_t)ptr);
    if (s == NULL || LOAD_RELAXED(&s->heap) != hp)
        return GM_ERR_NOT_OURS;
    return gm_free_checked(ptr);
}

/* ---- scopes ----------------------------------------------------------------------- */

gm_heap_t *gm_heap_get_default(void) {
    gm_mcache *c = gm_mcache_of(gm_tls.alloc);
    gm_heap *hp = c != &gm_nocache && c->heap != NULL ? c->heap : &gm_default_heap;
    return gm_heap_handle(hp);
}

/* The scope of cache hc ends (its thread's default heap is another now). */
void gm_heap_leave_scope(gm_mcache *hc) {
    __atomic_store_n(&hc->inscope, false, __ATOMIC_RELEASE);
    gm_heap_leave(hc);
}

gm_heap_t *gm_heap_set_default(gm_heap_t *h) {
    gm_heap *hp = h == NULL ? &gm_default_heap : gm_heap_get(h);
    if (hp == NULL)
        return NULL;
    gm_mcache *dc = gm_tls.free;
    if (dc == &gm_nocache && (dc = gm_mcache_create()) == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    gm_heap_t *prev = gm_heap_get_default();
    gm_mcache *old = gm_mcache_of(gm_tls.alloc);
    if (hp == &gm_default_heap) {
        gm_tls.alloc = dc;
    } else {
        /* Under heaps_lock: a destroy that found the heap in no scope
         * finishes before this scope begins (then the heap is dead). */
        pthread_mutex_lock(&heaps_lock);
        gm_mcache *hc = gm_heap_get(h) == hp ? gm_heap_cache(dc, hp) : NULL;
        if (hc == NULL) {
            pthread_mutex_unlock(&heaps_lock);
            errno = LOAD_RELAXED(&hp->dead) ? EINVAL : ENOMEM;
            return NULL;
        }
        if (hc != old) {
            /* In scope: the cache stays entered until the scope ends, so
             * the heap is not destroyed under the mallocs it serves. */
            if (!gm_heap_enter(hc)) {
                pthread_mutex_unlock(&heaps_lock);
                errno = EINVAL;
                return NULL;
            }
            __atomic_store_n(&hc->inscope, true, __ATOMIC_RELEASE);
        }
        __atomic_store_n(&hp->scoped, true, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&heaps_lock);
        gm_tls.alloc = gm_alloc_ptr(hc);
    }
    if (old != dc && old != gm_mcache_of(gm_tls.alloc))
        gm_heap_leave_scope(old);
    return prev;
}

/* ---- reading ---------------------------------------------------------------------- */

static void add_cache_counts(const gm_mcache *hc, uint64_t *nmalloc, uint64_t *nfree, uint64_t *cached) {
    for (int sc = 1; sc < NUM_CLASSES; sc++) {
        const gm_mclass *m = &hc->cls[hc->clsbase + sc];
        uint64_t npush = LOAD_RELAXED(&m->npush), limit = LOAD_RELAXED(&m->limit);
        nmalloc[sc] += gm_list_mallocs(limit, hc->listmax[sc], LOAD_RELAXED(&hc->nflush[sc]),
                                       LOAD_RELAXED(&hc->nrecv[sc]), LOAD_RELAXED(&hc->nspan[sc]));
        nfree[sc] += npush / LIST_UNIT;
        *cached += (uint64_t)gm_list_len(npush, limit, hc->listmax[sc]) * gm_class_to_size[sc];
    }
}

/* Per-class counts of heap hp, for gm_heap_read_stats and gm_read_stats. */
GM_RACY_READER void gm_heap_counts(gm_heap *hp, uint64_t *nmalloc, uint64_t *nfree, uint64_t *cached,
                                   uint64_t *ncaches) {
    pthread_mutex_lock(&hp->lock);
    for (int sc = 0; sc < NUM_CLASSES; sc++) {
        nmalloc[sc] += hp->dead_nmalloc[sc];
        nfree[sc] += hp->dead_nfree[sc];
    }
    for (const gm_mcache *hc = hp->caches; hc != NULL; hc = hc->hnext) {
        add_cache_counts(hc, nmalloc, nfree, cached);
        (*ncaches)++;
    }
    pthread_mutex_unlock(&hp->lock);
}

int gm_heap_read_stats(gm_heap_t *h, struct gm_heap_stats *out) {
    if (out == NULL || out->size < sizeof out->size)
        return EINVAL;
    size_t want = out->size < sizeof(struct gm_heap_stats) ? out->size : sizeof(struct gm_heap_stats);
    gm_heap *hp = gm_heap_get(h);
    if (hp == NULL)
        return EINVAL;
    struct gm_heap_stats st;
    memset(&st, 0, sizeof st);
    st.size = sizeof st;
    if (hp == &gm_default_heap) {
        struct gm_stats all = {.size = sizeof all};
        gm_read_stats(&all);
        st.inuse = st.peak_inuse = all.heap_inuse;
        st.alloc = all.heap_alloc;
        st.objects = all.heap_objects;
        st.mallocs = all.mallocs;
        st.frees = all.frees;
        st.total_alloc = all.total_alloc;
        st.large_objects = all.large_objects;
        st.cached_bytes = all.cached_bytes;
        st.num_caches = all.num_threads;
        memcpy(st.by_size, all.by_size, sizeof st.by_size);
    } else {
        uint64_t nmalloc[NUM_CLASSES] = {0}, nfree[NUM_CLASSES] = {0}, cached = 0, ncaches = 0;
        gm_heap_counts(hp, nmalloc, nfree, &cached, &ncaches);
        st.limit = hp->limit;
        st.inuse = LOAD_RELAXED(&hp->inuse);
        st.peak_inuse = LOAD_RELAXED(&hp->peak);
        st.cached_bytes = cached;
        st.num_caches = ncaches;
        st.by_size[0].mallocs = LOAD_RELAXED(&hp->large_mallocs);
        st.by_size[0].frees = LOAD_RELAXED(&hp->large_frees);
        st.large_objects = st.by_size[0].mallocs - st.by_size[0].frees;
        for (int sc = 1; sc < NUM_CLASSES; sc++) {
            struct gm_size_class_stats *b = &st.by_size[sc];
            b->size = gm_class_to_size[sc];
            b->npages = gm_class_to_allocnpages[sc];
            b->mallocs = nmalloc[sc];
            b->frees = nfree[sc];
            b->spans = LOAD_RELAXED(&hp->central[sc].nspans);
            b->capacity = b->spans * gm_class_to_nelems[sc];
            st.mallocs += nmalloc[sc];
            st.frees += nfree[sc];
            st.total_alloc += nmalloc[sc] * b->size;
            st.alloc += (nmalloc[sc] - nfree[sc]) * b->size;
        }
        pthread_mutex_lock(&hp->lock);
        for (gm_mspan *s = hp->large; s != NULL; s = s->next)
            st.alloc += s->npages * PAGE_SIZE;
        pthread_mutex_unlock(&hp->lock);
        st.total_alloc += LOAD_RELAXED(&hp->large_bytes); /* the freed ones too */
        st.by_size[0].spans = st.by_size[0].capacity = st.large_objects;
        st.mallocs += st.by_size[0].mallocs;
        st.frees += st.by_size[0].frees;
        st.objects = st.mallocs - st.frees;
    }
    memcpy(st.name, hp->name, sizeof st.name);
    memcpy(out, &st, want);
    out->size = sizeof(struct gm_heap_stats);
    return 0;
}

/* ---- the spans of a heap ------------------------------------------------------------ */

/* The spans the threads' default-heap caches own (the default heap's
 * caches are the threads' own, in the registry, not on its caches list):
 * counted, or stored into out while *n < max.  Under the registry lock. */
static size_t thread_cache_spans(gm_mspan **out, size_t *n, size_t max) {
    size_t count = 0;
    gm_registry_lock();
    for (gm_mcache *c = gm_registry_first(); c != NULL; c = c->next)
        for (int sc = 1; sc < NUM_CLASSES; sc++) {
            gm_mspan *s = gm_mclass_of(c, (uint8_t)sc)->span;
            if (s == &gm_emptyspan)
                continue;
            count++;
            if (out != NULL && *n < max)
                out[(*n)++] = s;
        }
    gm_registry_unlock();
    return count;
}

/* Every span of hp, into a buffer from sysAlloc (*n spans; NULL if none or
 * out of memory), for gm_heap_visit: the caches' spans, the mcentrals'
 * lists, the large ones (the default heap's large spans are on no list:
 * gm_heap_visit finds them in the page map).  Each list is read under its
 * lock (one at a time: the class locks are independent).  (Destroy does not
 * use this: it must not need memory, see detach_spans.) */
static gm_mspan **collect_spans(gm_heap *hp, size_t *n, size_t *bytes) {
    size_t count = 0;
    pthread_mutex_lock(&hp->lock);
    for (gm_mcache *hc = hp->caches; hc != NULL; hc = hc->hnext)
        for (int sc = 1; sc < NUM_CLASSES; sc++)
            count += gm_mclass_of(hc, (uint8_t)sc)->span != &gm_emptyspan;
    for (gm_mspan *s = hp->large; s != NULL; s = s->next)
        count++;
    pthread_mutex_unlock(&hp->lock);
    if (hp == &gm_default_heap)
        count += thread_cache_spans(NULL, NULL, 0);
    for (int sc = 1; sc < NUM_CLASSES; sc++) {
        pthread_mutex_lock(&hp->central[sc].lock);
        count += hp->central[sc].nspans; /* cached ones too: an upper bound */
        pthread_mutex_unlock(&hp->central[sc].lock);
    }
    *n = 0;
    *bytes = ((count + 1) * sizeof(gm_mspan *) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
    gm_mspan **out = gm_sysAlloc(*bytes);
    if (out == NULL)
        return NULL;
    /* (A span that moved meanwhile, which a quiescent heap's cannot, may
     * be missed or seen twice: visiting needs quiescence.) */
    pthread_mutex_lock(&hp->lock);
    for (gm_mcache *hc = hp->caches; hc != NULL; hc = hc->hnext)
        for (int sc = 1; sc < NUM_CLASSES; sc++) {
            gm_mspan *s = gm_mclass_of(hc, (uint8_t)sc)->span;
            if (s != &gm_emptyspan && *n < count)
                out[(*n)++] = s;
        }
    for (gm_mspan *s = hp->large; s != NULL; s = s->next)
        if (*n < count)
            out[(*n)++] = s;
    pthread_mutex_unlock(&hp->lock);
    if (hp == &gm_default_heap)
        (void)thread_cache_spans(out, n, count);
    for (int sc = 1; sc < NUM_CLASSES; sc++) {
        pthread_mutex_lock(&hp->central[sc].lock);
        for (int l = 0; l < 2; l++)
            for (gm_mspan *s = l ? hp->central[sc].full : hp->central[sc].partial; s != NULL; s = s->next)
                if (*n < count)
                    out[(*n)++] = s;
        pthread_mutex_unlock(&hp->central[sc].lock);
    }
    return out;
}

/* The default heap's large objects: each is a span of its own on no list,
 * so they are found where the page map says a large object's pages begin. */
static int visit_default_large(int (*fn)(void *ptr, size_t size, void *arg), void *arg) {
    uintptr_t base;
    const uint8_t *map;
    for (int i = 0; (map = gm_page_map(i, &base)) != NULL; i++)
        for (uintptr_t j = 0; j < PAGES_PER_ARENA; j++) {
            if (LOAD_RELAXED(&map[j]) != GM_PAGE_LARGE)
                continue;
            uintptr_t a = base + j * PAGE_SIZE;
            gm_mspan *s = gm_span_of(a);
            if (s == NULL || s->startAddr != a || s->sizeclass != 0 || LOAD_RELAXED(&s->state) != SPAN_INUSE)
                continue;
            if (LOAD_RELAXED(&s->heap) == &gm_default_heap) {
                int ret = fn((void *)a, s->elemsize, arg);
                if (ret != 0)
                    return ret;
            }
            j += s->npages - 1;
        }
    return 0;
}

int gm_heap_visit(gm_heap_t *h, int (*fn)(void *ptr, size_t size, void *arg), void *arg) {
    gm_heap *hp = gm_heap_get(h);
    if (hp == NULL || fn == NULL)
        return EINVAL;
    size_t n = 0, bytes = 0;
    gm_mspan **spans = collect_spans(hp, &n, &bytes);
    if (spans == NULL && n == 0 && bytes != 0)
        return ENOMEM;
    int ret = 0;
    for (size_t k = 0; k < n && ret == 0; k++) {
        gm_mspan *s = spans[k];
        if (s->sizeclass == 0) {
            ret = fn((void *)s->startAddr, s->elemsize, arg);
            continue;
        }
        for (uintptr_t i = 0; i < s->nelems && ret == 0; i++) {
            uint8_t st = gm_objstate(s, i);
            if (st == s->liveval || st == OBJ_SAMPLED)
                ret = fn((void *)(s->startAddr + i * s->elemsize), s->elemsize, arg);
        }
    }
    if (spans != NULL)
        gm_sysFree(spans, bytes);
    if (hp == &gm_default_heap && ret == 0)
        ret = visit_default_large(fn, arg);
    return ret;
}

/* ---- destroying and deleting ---------------------------------------------------------- */

/* Live objects of hp (racy: for the scope check). */
static uint64_t live_objects(gm_heap *hp) {
    uint64_t nmalloc[NUM_CLASSES] = {0}, nfree[NUM_CLASSES] = {0}, cached = 0, ncaches = 0, live = 0;
    gm_heap_counts(hp, nmalloc, nfree, &cached, &ncaches);
    for (int sc = 1; sc < NUM_CLASSES; sc++)
        live += nmalloc[sc] - nfree[sc];
    return live + LOAD_RELAXED(&hp->large_mallocs) - LOAD_RELAXED(&hp->large_frees);
}

/* Is any thread's default heap hp (a scope)?  Under heaps_lock, which
 * gm_heap_set_default takes: no scope begins until destroy is done. */
static bool in_scope(gm_heap *hp) {
    bool any = false;
    pthread_mutex_lock(&hp->lock);
    for (gm_mcache *hc = hp->caches; hc != NULL && !any; hc = hc->hnext)
        any = __atomic_load_n(&hc->inscope, __ATOMIC_ACQUIRE);
    pthread_mutex_unlock(&hp->lock);
    return any;
}

/* The objects of s that sat on a free list (cached) still hold free's
 * canary; cleared before s's pages go back to the page heap, whose next
 * span hands its slots out as they are (gm_nextFreeFast clears nothing:
 * every other way back to the page heap goes through free_objs_locked,
 * which clears them).
 * Also under fault_on_destroy, whose pages may stay mapped (when the
 * kernel refuses the change) and be reused as they are. */
static void clear_cached_canaries(const gm_mspan *s) {
    for (uintptr_t i = 0; i < s->nelems; i++)
        if (gm_objstate(s, i) == OBJ_CACHED) {
            uint64_t *w = (uint64_t *)(s->startAddr + i * s->elemsize);
            w[0] = w[1] = 0;
        }
}

/* The caches of a quiesced heap let go of everything (their lists are
 * dropped: destroy frees their objects with the spans; delete has flushed
 * them), their counts folded into the heap's.  Under hp->lock. */
static void drop_caches(gm_heap *hp) {
    while (hp->caches != NULL) {
        gm_mcache *hc = hp->caches;
        fold_cache(hp, hc);
        for (int sc = 1; sc < NUM_CLASSES; sc++) {
            gm_mclass *m = gm_mclass_of(hc, (uint8_t)sc);
            m->span = &gm_emptyspan;
        }
        unlink_cache(hp, hc);
    }
}

/* The objects hp still holds live are counted as freed (destroy). */
static void count_destroyed(gm_heap *hp) {
    for (int sc = 1; sc < NUM_CLASSES; sc++) {
        ATOMIC_ADD(&gm_dead_nmalloc[sc], hp->dead_nmalloc[sc]);
        ATOMIC_ADD(&gm_dead_nfree[sc], hp->dead_nmalloc[sc]);
    }
}

/* Every span of the dead, quiesced heap hp (its caches' spans, its
 * mcentrals' lists, its large spans), chained through next; the lists are
 * left empty (the caches' spans: drop_caches).  Destroy cannot fail once
 * the heap is dead, so this needs no memory: a buffer from sysAlloc, which
 * fails when the kernel is short of memory or map count, lost every span
 * (still in heap_inuse and the heap's figures, on no list, never reused).
 * Under hp->lock. */
static gm_mspan *detach_spans(gm_heap *hp) {
    gm_mspan *chain = NULL;
    for (gm_mcache *hc = hp->caches; hc != NULL; hc = hc->hnext)
        for (int sc = 1; sc < NUM_CLASSES; sc++) {
            gm_mspan *s = gm_mclass_of(hc, (uint8_t)sc)->span;
            if (s != &gm_emptyspan) { /* on no list while cached */
                s->next = chain;
                chain = s;
            }
        }
    for (int sc = 1; sc < NUM_CLASSES; sc++)
        for (int l = 0; l < 2; l++) {
            gm_mspan **list = l ? &hp->central[sc].full : &hp->central[sc].partial;
            while (*list != NULL) {
                gm_mspan *s = *list;
                *list = s->next;
                s->next = chain;
                chain = s;
            }
        }
    while (hp->large != NULL) {
        gm_mspan *s = hp->large;
        hp->large = s->next;
        s->next = chain;
        chain = s;
    }
    return chain;
}

int gm_heap_destroy(gm_heap_t *h) {
    gm_heap *hp = gm_heap_get(h);
    if (hp == NULL || hp == &gm_default_heap)
        return EINVAL;
    pthread_mutex_lock(&heaps_lock);
    if (gm_heap_get(h) != hp) { /* destroyed meanwhile */
        pthread_mutex_unlock(&heaps_lock);
        return EINVAL;
    }
    if (in_scope(hp) || (LOAD_RELAXED(&hp->scoped) && live_objects(hp) != 0)) {
        pthread_mutex_unlock(&heaps_lock);
        return EBUSY;
    }
    quiesce(hp);
    /* Everything is ours now: no thread works on the heap's caches, and
     * frees of its objects find it dead. */
    pthread_mutex_lock(&hp->lock);
    gm_mspan *spans = detach_spans(hp);
    drop_caches(hp);
    count_destroyed(hp);
    for (int sc = 1; sc < NUM_CLASSES; sc++) {
        gm_mcentral *mc = &hp->central[sc];
        mc->nspans = 0; /* (its lists were emptied by detach_spans) */
        for (uint32_t i = 0; i < mc->ntc; i++)
            mc->tc[i].n = 0;
        mc->ntc = mc->tc_objects = mc->nany = 0;
    }
    pthread_mutex_unlock(&hp->lock);
    while (spans != NULL) {
        gm_mspan *s = spans;
        spans = s->next; /* (the page heap or the quarantine links s anew) */
        s->next = s->prev = NULL;
        gm_profile_forget_span(s); /* its sampled objects leave the heap profile, as if freed */
        if (s->sizeclass != 0) {
            clear_cached_canaries(s);
            memset(s->objstate, 0, (s->npages * PAGE_SIZE) >> STATE_SHIFT); /* no object starts there now */
        } else {
            ATOMIC_ADD(&hp->large_frees, 1);
        }
        s->cachedBy = NULL;
        s->list = LIST_NONE;
        gm_mheap_release_heap_span(s, hp->fault_on_destroy);
    }
    hp->inuse = 0;
    pthread_mutex_unlock(&heaps_lock);
    gm_scavenger_notify();
    return 0;
}

int gm_heap_keep_live(gm_heap_t *h) {
    gm_heap *hp = gm_heap_get(h);
    if (hp == NULL || hp == &gm_default_heap)
        return EINVAL;
    /* The flag a scope sets: destroy then counts the live objects first. */
    __atomic_store_n(&hp->scoped, true, __ATOMIC_RELAXED);
    return 0;
}

int gm_heap_delete(gm_heap_t *h) {
    gm_heap *hp = gm_heap_get(h);
    if (hp == NULL || hp == &gm_default_heap)
        return EINVAL;
    pthread_mutex_lock(&heaps_lock);
    if (gm_heap_get(h) != hp) {
        pthread_mutex_unlock(&heaps_lock);
        return EINVAL;
    }
    if (in_scope(hp)) {
        pthread_mutex_unlock(&heaps_lock);
        return EBUSY;
    }
    /* From here frees of its objects wait (gm_heap_free_obj sees the heap
     * dead and its spans not yet moved) and its allocations fail. */
    __atomic_store_n(&hp->deleting, 1, __ATOMIC_RELAXED);
    quiesce(hp);
    /* The caches' objects go back to their spans, their spans to the
     * mcentrals: nobody else works on them now. */
    pthread_mutex_lock(&hp->lock);
    for (gm_mcache *hc = hp->caches; hc != NULL; hc = hc->hnext)
        gm_mcache_flushAll(hc);
    drop_caches(hp);
    pthread_mutex_unlock(&hp->lock);
    /* Every span moves to the default heap, its live objects' state bytes
     * becoming the default heap's. */
    for (int sc = 1; sc < NUM_CLASSES; sc++) {
        gm_mcentral *from = &hp->central[sc], *to = &gm_default_heap.central[sc];
        gm_mcentral_drain(from);
        pthread_mutex_lock(&to->lock); /* the default heap's first: heap order */
        pthread_mutex_lock(&from->lock);
        for (int l = 0; l < 2; l++) {
            gm_mspan **list = l ? &from->full : &from->partial;
            while (*list != NULL) {
                gm_mspan *s = *list;
                gm_list_unlink(list, s);
                for (uintptr_t i = 0; i < s->nelems; i++)
                    if (gm_objstate(s, i) == s->liveval)
                        gm_set_objstate(gm_objstate_ptr(s, i), OBJ_LIVE(sc));
                s->liveval = OBJ_LIVE(sc);
                __atomic_store_n(&s->heap, &gm_default_heap, __ATOMIC_RELEASE);
                gm_list_push(l ? &to->full : &to->partial, s);
                s->list = l ? LIST_FULL : LIST_PARTIAL;
            }
        }
        to->nspans += from->nspans;
        from->nspans = 0;
        pthread_mutex_unlock(&from->lock);
        pthread_mutex_unlock(&to->lock);
    }
    pthread_mutex_lock(&hp->lock);
    for (int sc = 1; sc < NUM_CLASSES; sc++) { /* its counts join the totals */
        ATOMIC_ADD(&gm_dead_nmalloc[sc], hp->dead_nmalloc[sc]);
        ATOMIC_ADD(&gm_dead_nfree[sc], hp->dead_nfree[sc]);
    }
    while (hp->large != NULL) {
        gm_mspan *s = hp->large;
        gm_list_unlink(&hp->large, s);
        s->list = LIST_NONE;
        __atomic_store_n(&s->heap, &gm_default_heap, __ATOMIC_RELEASE);
    }
    /* Its spans' bytes are the default heap's now (which has no limit of
     * its own). */
    hp->inuse = 0;
    pthread_mutex_unlock(&hp->lock);
    __atomic_store_n(&hp->deleting, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&heaps_lock);
    return 0;
}

/* ---- every heap ------------------------------------------------------------------------ */

void gm_heaps_lock(void) { pthread_mutex_lock(&heaps_lock); }
void gm_heaps_unlock(void) { pthread_mutex_unlock(&heaps_lock); }

/* The live heap after prev (NULL: the first, the default heap). */
gm_heap *gm_heaps_next(gm_heap *prev) {
    uint32_t n = __atomic_load_n(&nslots, __ATOMIC_ACQUIRE);
    for (uint32_t id = prev == NULL ? 0 : prev->id + 1; id < n; id++) {
        gm_heap *hp = __atomic_load_n(&table[id], __ATOMIC_ACQUIRE);
        if (hp != NULL && !LOAD_RELAXED(&hp->dead))
            return hp;
    }
    return NULL;
}

void gm_heaps_fork_child(void) {
    /* The registration belongs to the parent's address space: register
     * again (the child is single-threaded now: the flag can change). */
    if (asym_barrier)
        asym_barrier = syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0) == 0;
    pthread_mutex_init(&heaps_lock, NULL);
    pthread_mutex_init(&quarantine_lock, NULL);
    for (uint32_t id = 0; id < nslots; id++)
        if (table[id] != NULL)
            pthread_mutex_init(&table[id]->lock, NULL);
}

/* ---- the quarantine -------------------------------------------------------------------- */

void gm_heap_quarantine(gm_mspan *s) {
    s->unusedsince = gm_now_ms();
    s->next = NULL;
    pthread_mutex_lock(&quarantine_lock);
    *quarantine_tail = s;
    quarantine_tail = &s->next;
    pthread_mutex_unlock(&quarantine_lock);
}

bool gm_heap_quarantine_drain(uint64_t age_ms, uint64_t *oldest) {
    uint64_t now = gm_now_ms();
    for (;;) {
        pthread_mutex_lock(&quarantine_lock);
        gm_mspan *s = quarantine;
        if (s == NULL || now - s->unusedsince < age_ms) {
            bool left = s != NULL;
            if (left)
                *oldest = s->unusedsince;
            pthread_mutex_unlock(&quarantine_lock);
            return left;
        }
        quarantine = s->next;
        if (quarantine == NULL)
            quarantine_tail = &quarantine;
        pthread_mutex_unlock(&quarantine_lock);
        s->next = NULL;
        gm_mheap_free_faulted(s);
    }
}
