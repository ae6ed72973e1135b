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
 * one batch, for the transfer cache or the spans (mcentral.c), unless the
 * list is one that overflows in bursts (see "Growing lists"); a thread
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
 *
 * One freeing thread.  free() claims an object's state byte by
 * compare-and-swap so that of two threads freeing it at once exactly one
 * wins (README "Security").  Until a second thread frees, or gets a cache,
 * no other thread can race for a state byte, and the first thread with a
 * cache, the plain owner (gm_plain_owner), claims with a plain store: the
 * locked instruction costs 3 to 8 ns per free (README "Where pygomalloc
 * loses").  The second thread ends this for good before its first claim
 * (gm_plain_end): it clears gm_plain_owner, makes every running thread of
 * the process execute a memory barrier (membarrier(2), private expedited),
 * and waits for the owner's `claiming` to drop to 0.  The owner raises
 * `claiming` before it reads gm_plain_owner and lowers it after its plain
 * store.  So either the owner read gm_plain_owner after its barrier, saw
 * NULL and takes the compare-and-swap, or its raised flag was visible
 * when gm_plain_end looked, and gm_plain_end waited until the plain store
 * was done and visible (x86 keeps a thread's stores in order): the other
 * threads' compare-and-swaps come after it, as they would after a racing
 * compare-and-swap that won.  Without membarrier (kernels before 4.14)
 * there is no plain owner.
 */
#define _GNU_SOURCE
#include <linux/membarrier.h>
#include <sched.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "gm_internal.h"

/* The span of an mcache class with nothing to give: nextFreeFast fails on
 * it (allocCache == 0), so no NULL check is needed on the fast path. */
gm_mspan gm_emptyspan;

/* The sentinel pair that every empty list pops, for the entries of cls[]
 * that are not classes: their `end` is one past it, and npush == limit. */
static gm_freeobj sentinel[1];

#define NO_LIST {.end = &sentinel[1], .npush = 0, .limit = 0, .span = &gm_emptyspan}

/* The mcache of a thread that has none (yet, or any more): every list is
 * empty and has no room (limit 0), every span is gm_emptyspan, so both fast
 * paths fall through to the slow paths, which know it.  Never written. */
gm_mcache gm_nocache __attribute__((aligned(MCACHE_ALIGN))) = {.cls = {[0 ... MCACHE_CLS - 1] = NO_LIST}};

__thread struct gm_tls gm_tls = {&gm_nocache, &gm_nocache};
__thread bool gm_tls_exiting;

uint32_t gm_list_cap[NUM_CLASSES];
static size_t lists_entries;    /* entries of a lists block: the arrays and their sentinels */
static uint32_t list_off[NUM_CLASSES]; /* where class sc's sentinel is in a lists block (its array follows) */
static gm_freeobj *free_lists;  /* recycled lists blocks, linked through entry 0's p. Under registry_lock. */

static pthread_key_t mcache_key;
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static gm_mcache *registry;      /* every mcache in use, owned or abandoned. Under registry_lock. */
static uint32_t nowned;          /* mcaches with a live thread. Written under registry_lock; read racily (relaxed). */
/* Thread turnover.  A thread that exits leaves its cache whole (lists,
 * spans, page cache, tiny blocks) on this list rather than flushing it,
 * and the next new thread adopts it in one step: in a server whose worker
 * threads come and go, birth and death cost a lock each, and the new
 * thread starts with the old one's warm memory.  At most ABANDONED_MAX
 * wait (the others flush at exit, as before); the scavenger flushes those
 * nobody took for decay_ms, and gm_release and gm_thread_flush all of them. */
#define ABANDONED_MAX 8
static gm_mcache *abandoned;     /* newest first, linked by anext. Under registry_lock. */
static uint32_t reaping;         /* abandoned caches being flushed (still in the registry). Under registry_lock. */
static uint32_t checking;        /* heap checks running: no reaping or drain starts meanwhile. Under registry_lock. */
static uint32_t draining;        /* drains of the transfer caches under way (gm_drain_begin). Under registry_lock. */
static pthread_cond_t reaped = PTHREAD_COND_INITIALIZER; /* reaping, draining or checking dropped to 0. With registry_lock. */

/* One more of *mine, once *a and *b are 0 (waiting on reaped), and one
 * fewer (waking the waiters at 0): how checks, drains and reapers keep
 * out of each other's way.  Take and drop registry_lock. */
static void registry_enter(uint32_t *mine, const uint32_t *a, const uint32_t *b) {
    pthread_mutex_lock(&registry_lock);
    while (*a != 0 || *b != 0)
        pthread_cond_wait(&reaped, &registry_lock);
    (*mine)++;
    pthread_mutex_unlock(&registry_lock);
}
static void registry_leave(uint32_t *mine) {
    pthread_mutex_lock(&registry_lock);
    if (--*mine == 0)
        pthread_cond_broadcast(&reaped);
    pthread_mutex_unlock(&registry_lock);
}
static uint32_t nabandoned;      /* Under registry_lock; read racily (relaxed) to skip the lock when 0. */

gm_mcache *gm_plain_owner;
static pthread_mutex_t plain_lock = PTHREAD_MUTEX_INITIALIZER; /* serialises gm_plain_end */
static bool plain_tried;         /* the first cache was made: a plain owner was set, or could not be. Under registry_lock. */

static int membarrier(int cmd) { return (int)syscall(__NR_membarrier, cmd, 0, 0); }

void gm_plain_end(void) {
    gm_mcache *o = LOAD_RELAXED(&gm_plain_owner);
    if (o == NULL || o == gm_tls_mcache)
        return;
    pthread_mutex_lock(&plain_lock);
    o = LOAD_RELAXED(&gm_plain_owner);
    if (o != NULL) {
        __atomic_store_n(&gm_plain_owner, NULL, __ATOMIC_SEQ_CST);
        if (membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0)
            gm_throw("membarrier failed after it was registered");
        while (__atomic_load_n(&o->claiming, __ATOMIC_ACQUIRE) != 0)
            sched_yield(); /* the owner is preempted in its few instructions */
    }
    pthread_mutex_unlock(&plain_lock);
}

/* Make c's thread the plain owner if membarrier can be had. */
static bool plain_own(gm_mcache *c) {
    if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) != 0)
        return false;
    __atomic_store_n(&gm_plain_owner, c, __ATOMIC_SEQ_CST);
    return true;
}

bool gm_debug_plain_reset(void) { return gm_tls_mcache != &gm_nocache && plain_own(gm_tls_mcache); }

uint64_t gm_dead_nmalloc[NUM_CLASSES], gm_dead_nfree[NUM_CLASSES]; /* counters of exited threads. Under registry_lock. */

static void mcache_release(gm_mcache *c);

uint32_t gm_mcache_threads(void) { return LOAD_RELAXED(&nowned); }

static void mcache_destructor(void *arg) {
    gm_mcache *c = arg;
    gm_tls_exiting = true;
    gm_mcache *scope = gm_mcache_of(gm_tls.alloc);
    if (scope != c && scope != &gm_nocache)
        gm_heap_leave_scope(scope); /* the thread ends in a heap's scope: the scope ends */
    if (gm_tls.free == c)
        gm_tls.free = gm_tls.alloc = &gm_nocache;
    pthread_mutex_lock(&registry_lock);
    bool keep = nabandoned < ABANDONED_MAX;
    if (keep) {
        c->abandoned = true;
        c->abandoned_since = gm_now_ms();
        c->anext = abandoned;
        abandoned = c;
        STORE_RELAXED(&nabandoned, nabandoned + 1);
    }
    STORE_RELAXED(&nowned, nowned - 1);
    bool last = nowned == 0;
    pthread_mutex_unlock(&registry_lock);
    if (!keep)
        mcache_release(c);
    if (last)
        gm_scavenger_threads_gone();
    else if (keep)
        gm_scavenger_notify(); /* to flush it if nobody takes it */
}

/* Objects of class sc a list holds for tcache_bytes: 8 to 512.  Never 1:
 * an overflow keeps the newer half, max - max / 2 entries, which for a
 * bound of 1 is the whole list (tried: the next push went past the list's
 * end). */
static uint32_t list_bound(uint8_t sc, long long tcache_bytes) {
    if (gm_class_to_size[sc] < 16)
        return 0; /* the 8-byte class holds no objects (see "Object states") */
    long long b = tcache_bytes / gm_class_to_size[sc];
    if (b < 8)
        b = 8;
    if (b > 512)
        b = 512;
    return (uint32_t)b;
}

void gm_mcache_init(void) {
    if (pthread_key_create(&mcache_key, mcache_destructor) != 0)
        gm_throw("pthread_key_create failed");
    gm_fixalloc_init_aligned(&gm_mheap.cachealloc, sizeof(gm_mcache), MCACHE_ALIGN, &gm_mheap.mcache_sys);
    /* The lists are arrays sized once, from tcache_bytes at start-up. */
    lists_entries = 0;
    for (int sc = 1; sc < NUM_CLASSES; sc++) {
        gm_list_cap[sc] = list_bound((uint8_t)sc, gm_opt.tcache_bytes);
        GM_ASSERT(gm_list_cap[sc] == 0 || gm_list_cap[sc] >= 2);
        list_off[sc] = (uint32_t)lists_entries;
        lists_entries += gm_list_cap[sc] != 0 ? gm_list_cap[sc] + 1 : 0;
    }
}

/* A lists block: recycled, or fresh (zero) from persistentalloc.  Only
 * its sentinels need to be NULL, which they stay; the entries above a
 * list's top are never read.  A recycled block borrows the first sentinel's
 * word for the free list's link.  Under registry_lock. */
static gm_freeobj *lists_alloc(void) {
    gm_freeobj *l = free_lists;
    if (l != NULL) {
        free_lists = l[0].p;
        l[0].p = NULL;
        return l;
    }
    return gm_persistentalloc(lists_entries * sizeof(gm_freeobj), 64, &gm_mheap.mcache_sys);
}

/* A cache struct with its lists block.  Under registry_lock. */
static gm_mcache *new_cache(void) {
    gm_mcache *c = gm_fixalloc_alloc(&gm_mheap.cachealloc);
    gm_freeobj *lists = c != NULL ? lists_alloc() : NULL;
    if (lists == NULL) {
        if (c != NULL)
            gm_fixalloc_free(&gm_mheap.cachealloc, c);
        return NULL;
    }
    c->lists = lists;
    return c;
}

/* Back to the pools.  Under registry_lock. */
static void free_cache(gm_mcache *c) {
    c->lists[0].p = free_lists;
    free_lists = c->lists;
    c->lists = NULL;
    gm_fixalloc_free(&gm_mheap.cachealloc, c);
}

void gm_mcache_reset_lists(gm_mcache *c, uint8_t clsbase) {
    long long tcache_bytes = LOAD_RELAXED(&gm_opt.tcache_bytes);
    c->clsbase = clsbase;
    for (int i = 0; i < MCACHE_CLS; i++)
        c->cls[i] = (gm_mclass)NO_LIST;
    c->grown = c->trim_at = 0;
    for (int sc = 1; sc < NUM_CLASSES; sc++) {
        uint32_t cap = gm_list_cap[sc], max = list_bound((uint8_t)sc, tcache_bytes);
        c->listmax[sc] = c->listhome[sc] = max < cap ? max : cap;
        c->nspan[sc] = c->nflush[sc] = c->nrecv[sc] = 0;
        c->ntcown[sc] = c->lastdrains[sc] = c->trimdrains[sc] = 0;
        if (cap == 0)
            continue;
        /* pos[0] is the sentinel: zero from persistentalloc, and never
         * written since (lists_alloc clears the one word it borrows), so
         * the pages of classes a thread never uses are never touched. */
        gm_freeobj *pos = c->lists + list_off[sc];
        GM_ASSERT(pos[0].p == NULL);
        gm_mclass *m = gm_mclass_of(c, (uint8_t)sc);
        m->end = pos + 1 + c->listmax[sc];
        m->limit = c->listmax[sc] * LIST_UNIT;
    }
}

gm_mcache *gm_mcache_new_heap_cache(void) {
    pthread_mutex_lock(&registry_lock);
    gm_mcache *c = new_cache();
    pthread_mutex_unlock(&registry_lock);
    return c;
}

void gm_mcache_free_heap_cache(gm_mcache *hc) {
    pthread_mutex_lock(&registry_lock);
    free_cache(hc);
    pthread_mutex_unlock(&registry_lock);
}

gm_mcache *gm_mcache_create(void) {
    pthread_mutex_lock(&registry_lock);
    gm_mcache *c = abandoned;
    if (c != NULL) { /* adopt an exited thread's cache, whole */
        abandoned = c->anext;
        STORE_RELAXED(&nabandoned, nabandoned - 1);
        c->abandoned = false;
        c->anext = NULL;
    } else {
        if ((c = new_cache()) == NULL) {
            pthread_mutex_unlock(&registry_lock);
            return NULL;
        }
        gm_mcache_reset_lists(c, 0);
        c->heap = &gm_default_heap;
        c->prev = NULL;
        c->next = registry;
        if (registry != NULL)
            registry->prev = c;
        registry = c;
        c->linked = true;
    }
    STORE_RELAXED(&nowned, nowned + 1);
    if (!plain_tried) { /* the first cache's thread becomes the plain owner */
        plain_tried = true;
        (void)plain_own(c);
    } else {
        gm_plain_end(); /* a second thread with a cache: it may free next */
    }
    pthread_mutex_unlock(&registry_lock);
    gm_tls.free = gm_tls.alloc = c;
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

/* Flush everything and recycle c.  No thread owns c: its owner is gone
 * (or is us, leaving), and it is on no list but the registry. */
static void mcache_release(gm_mcache *c) {
    gm_heap_release_caches(c);
    gm_mcache_flushAll(c);
    pthread_mutex_lock(&registry_lock);
    gm_stats_fold_mcache(c);
    if (c->linked)
        registry_unlink(c);
    free_cache(c);
    pthread_mutex_unlock(&registry_lock);
}

bool gm_mcache_reap(uint64_t age_ms, uint64_t *oldest) {
    if (LOAD_RELAXED(&nabandoned) == 0)
        return false;
    uint64_t now = gm_now_ms();
    gm_mcache *reap = NULL;
    bool left = false;
    pthread_mutex_lock(&registry_lock);
    for (gm_mcache **pp = &abandoned; *pp != NULL;) {
        gm_mcache *c = *pp;
        if (now - c->abandoned_since >= age_ms && checking == 0) {
            *pp = c->anext;
            STORE_RELAXED(&nabandoned, nabandoned - 1);
            c->abandoned = false;
            c->anext = reap;
            reap = c;
            reaping++;
        } else {
            if (!left || c->abandoned_since < *oldest)
                *oldest = c->abandoned_since;
            left = true;
            pp = &c->anext;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    while (reap != NULL) {
        gm_mcache *c = reap;
        reap = c->anext;
        c->anext = NULL;
        mcache_release(c);
        registry_leave(&reaping);
    }
    return left;
}

/* Counters of an mcache that goes away.  Under registry_lock. */
void gm_stats_fold_mcache(gm_mcache *c) {
    ATOMIC_ADD(&gm_dead_tiny_mallocs, c->tiny_mallocs);
    ATOMIC_ADD(&gm_dead_tiny_frees, c->tiny_frees);
    c->tiny_mallocs = c->tiny_frees = 0;
    for (int sc = 0; sc < NUM_CLASSES; sc++) {
        gm_mclass *m = gm_mclass_of(c, (uint8_t)sc);
        ATOMIC_ADD(&gm_dead_nmalloc[sc], gm_list_mallocs(m->limit, c->listmax[sc], c->nflush[sc], c->nrecv[sc], c->nspan[sc]));
        ATOMIC_ADD(&gm_dead_nfree[sc], m->npush / LIST_UNIT);
        /* The list is empty (flushed), or lost with an orphan. */
        m->npush = 0;
        m->limit = c->listmax[sc] * LIST_UNIT;
        c->nspan[sc] = c->nflush[sc] = c->nrecv[sc] = 0;
    }
}

/*
 * refill (mcache.nextFree + mcache.refill): the slow path of malloc for a
 * small class when the free list is empty and nextFreeFast failed.  Returns
 * an object, or NULL when out of memory.
 */
void *gm_mcache_refill(gm_mcache *c, uint8_t sc) {
    gm_mclass *m = gm_mclass_of(c, sc);
    gm_mspan *s = m->span;
    if (s != &gm_emptyspan) {
        uintptr_t i = gm_span_nextFreeIndex(s);
        if (i < s->nelems) {
            void *p = (void *)(s->startAddr + i * s->elemsize);
            GM_ASSERT_NO_CANARY(s, p);
            return p;
        }
        gm_mcentral_uncacheSpan(s);
        m->span = &gm_emptyspan;
    }
    if (c->grown != 0)
        gm_mcache_trim(c);
    s = gm_mcentral_cacheSpan(c, sc);
    if (s == NULL)
        return NULL;
    m->span = s;
    uintptr_t i = gm_span_nextFreeIndex(s);
    if (i >= s->nelems)
        gm_throw("cacheSpan returned a span without free slots");
    void *p = (void *)(s->startAddr + i * s->elemsize);
    GM_ASSERT_NO_CANARY(s, p);
    return p;
}

/* The list of class sc is full (or being emptied): all but the `keep` most
 * recently freed objects leave it, for the transfer cache or their spans
 * (one copy; the kept ones move down to the bottom of the array). */
/* Does c's thread free class sc and hardly allocate it (a consumer: it
 * allocated fewer than one object in CONSUMER_RATIO of those it freed)?
 * Its batches are for any thread to take (gm_tcbatch.owner). */
#define CONSUMER_RATIO 8
static bool consumer(const gm_mcache *c, uint8_t sc) {
    const gm_mclass *m = gm_mclass_of((gm_mcache *)c, sc);
    uint64_t mallocs = gm_list_mallocs(m->limit, c->listmax[sc], c->nflush[sc], c->nrecv[sc], c->nspan[sc]);
    return mallocs * CONSUMER_RATIO < m->npush / LIST_UNIT;
}

void gm_mcache_flushClass(gm_mcache *c, uint8_t sc, uint32_t keep) {
    gm_mclass *m = gm_mclass_of(c, sc);
    gm_mcentral *mc = &c->heap->central[sc];
    uint32_t len = gm_list_len(m->npush, m->limit, c->listmax[sc]);
    if (len <= keep)
        return;
    uint32_t n = len - keep;
    gm_freeobj *base = gm_list_base(m, c->listmax[sc]);
    const gm_mcache *owner = consumer(c, sc) ? NULL : c;
    if (keep == 0)
        gm_mcentral_freeObjs(mc, base, n); /* emptied: straight to the spans */
    else if (gm_mcentral_freeBatch(mc, base, n, owner) && owner != NULL)
        c->ntcown[sc]++;
    memmove(base, base + n, keep * sizeof *base);
    m->limit += n * LIST_UNIT;
    c->nflush[sc] += n;
}

/*
 * Growing lists.  A list holds about tcache_bytes of objects, in an array
 * of the thread's lists block; a burst of frees larger than that sends the
 * older half out at every overflow, to the transfer cache while it has
 * room and then to the spans (free_objs_locked: each entry checked, each
 * canary read and cleared), and the burst of mallocs that follows takes
 * them back through the spans (cacheSpan, nextFreeFast).  Python drops a
 * parsed document or a list of words and builds the next one in exactly
 * that pattern: strings_json's `del words` (10,000 strs of one class)
 * took 1.7 times as long under install() as under pymalloc, which keeps
 * every freed block in its pool, and the `split()` that made them 1.3
 * times.  So a list that overflows after it ran empty since its last
 * overflow (the thread frees in bursts and allocates them back; not at its
 * first overflow: a thread that frees what it built once has no use for
 * them) doubles
 * instead, into an array of its own (mmap), as long as the thread's grown
 * lists hold at most LIST_GROW_BUDGET times tcache_bytes more than their
 * home bounds in all, and the process's at most LIST_GROW_TOTAL times
 * that; a list that overflows without having run empty (a thread that
 * frees what others allocate, a steady churn) flushes half, as before.
 * A grown list that has not run empty for decay_ms (gm_mcache_trim, from
 * the owner's slow paths) flushes down to half its home bound and goes
 * home; all go home when the cache is flushed (gm_release,
 * gm_thread_flush, an exited thread's cache that no new thread adopted in
 * decay_ms).  An idle thread keeps its grown lists until it allocates
 * again.
 */
#define LIST_GROW_BUDGET 32   /* x tcache_bytes: a thread's grown lists, their objects and entries above their home bounds */
#define LIST_GROW_TOTAL 8     /* x a thread's budget: every thread's together */
#define LIST_GROW_MAX 65536u  /* entries of a grown list */

static uint64_t grown_total; /* the sum of every cache's grown. Atomic. */

static uint32_t list_drains(const gm_mcache *c, uint8_t sc) { return (uint32_t)(c->nrecv[sc] + c->nspan[sc]); }

/* What one more entry of a class's list counts against the budget: the
 * object it may hold and the entry itself. */
static uint64_t slot_bytes(uint8_t sc) { return gm_class_to_size[sc] + LIST_UNIT; }

/* The mapping of a grown array of max entries and its sentinel. */
static size_t grown_bytes(uint32_t max) { return ((max + 1) * sizeof(gm_freeobj) + PAGE_SIZE - 1) & ~(size_t)(PAGE_SIZE - 1); }

/* Move class sc's list into the array whose first entry is nb (nb[-1]: a
 * NULL sentinel), bounded by max, which holds it; unmap its grown array,
 * if it had one.  The counters keep every sum of gm_mclass: the top stays
 * at the same distance from the base, and limit moves with listmax, so
 * mallocs and the length are unchanged.  A stats reader racing with this
 * may see limit and listmax from either side for that read. */
static void list_move(gm_mcache *c, uint8_t sc, gm_freeobj *nb, uint32_t max) {
    gm_mclass *m = gm_mclass_of(c, sc);
    uint32_t old = c->listmax[sc], len = gm_list_len(m->npush, m->limit, old);
    gm_freeobj *ob = gm_list_base(m, old);
    GM_ASSERT(len <= max && nb[-1].p == NULL);
    memcpy(nb, ob, len * sizeof *nb);
    STORE_RELAXED(&m->limit, m->limit + ((int64_t)max - old) * (int64_t)LIST_UNIT);
    STORE_RELAXED(&c->listmax[sc], max);
    m->end = nb + max;
    if (old > c->listhome[sc]) {
        gm_sysFree(ob - 1, grown_bytes(old));
        ATOMIC_ADD(&gm_mheap.mcache_sys, -(uint64_t)grown_bytes(old));
    }
}

bool gm_mcache_grow(gm_mcache *c, uint8_t sc) {
    uint32_t drains = list_drains(c, sc), max = c->listmax[sc];
    /* It overflowed before (its first overflow flushes: a thread that
     * frees what it built once need not keep it), and ran empty since. */
    bool emptied = drains != c->lastdrains[sc] && c->nflush[sc] != 0;
    c->lastdrains[sc] = drains;
    uint64_t size = slot_bytes(sc), budget = (uint64_t)LOAD_RELAXED(&gm_opt.tcache_bytes) * LIST_GROW_BUDGET;
    if (!emptied || c->clsbase != 0 || max >= LIST_GROW_MAX || c->grown >= budget)
        return false;
    uint64_t want = (uint64_t)max * 2, room = (budget - c->grown) / size;
    if (want > LIST_GROW_MAX)
        want = LIST_GROW_MAX;
    if (want - max > room)
        want = max + room;
    if (want <= max)
        return false;
    uint64_t more = (want - max) * size;
    if (ATOMIC_ADD(&grown_total, more) + more > budget * LIST_GROW_TOTAL) {
        ATOMIC_ADD(&grown_total, -more);
        return false;
    }
    gm_freeobj *a = gm_sysAlloc(grown_bytes((uint32_t)want)); /* zero: a[0] is the sentinel */
    if (a == NULL) {
        ATOMIC_ADD(&grown_total, -more);
        return false;
    }
    ATOMIC_ADD(&gm_mheap.mcache_sys, (uint64_t)grown_bytes((uint32_t)want));
    list_move(c, sc, a + 1, (uint32_t)want);
    if (c->grown == 0)
        c->trim_at = gm_now_ms();
    c->grown += more;
    c->trimdrains[sc] = drains;
    return true;
}

/* Class sc's grown list back to its home array, with at most half its home
 * bound of its newest objects (the rest flushed). */
static void list_shrink(gm_mcache *c, uint8_t sc) {
    uint32_t max = c->listmax[sc], home = c->listhome[sc];
    if (max <= home)
        return;
    gm_mcache_flushClass(c, sc, home - home / 2);
    list_move(c, sc, c->lists + list_off[sc] + 1, home);
    uint64_t less = (uint64_t)(max - home) * slot_bytes(sc);
    c->grown -= less;
    ATOMIC_ADD(&grown_total, -less);
}

void gm_mcache_trim(gm_mcache *c) {
    uint64_t now = gm_now_ms();
    if (now - c->trim_at < (uint64_t)LOAD_RELAXED(&gm_opt.decay_ms))
        return;
    c->trim_at = now;
    for (int sc = 1; sc < NUM_CLASSES && c->grown != 0; sc++) {
        if (c->listmax[sc] <= c->listhome[sc])
            continue;
        uint32_t drains = list_drains(c, (uint8_t)sc);
        if (drains == c->trimdrains[sc])
            list_shrink(c, (uint8_t)sc);
        c->trimdrains[sc] = drains;
    }
}

/* The list of class sc is empty: take a batch from the transfer cache, if
 * it has one that fits.  Returns whether the list has objects now.  The
 * class lock is taken only when a batch c may take may be there: one of
 * its own (ntcown), or one with no owner (nany): with many threads the
 * cache mostly holds other threads' batches, and every malloc that found
 * its list empty locked the class for nothing (graphs, 32 threads: 210
 * acquisitions per document, the most of any call site; make lockstats). */
bool gm_mcache_receive(gm_mcache *c, uint8_t sc) {
    gm_mclass *m = gm_mclass_of(c, sc);
    GM_ASSERT(gm_list_len(m->npush, m->limit, c->listmax[sc]) == 0);
    gm_mcentral *mc = &c->heap->central[sc];
    if (c->ntcown[sc] == 0 && LOAD_RELAXED(&mc->nany) == 0)
        return false;
    uint32_t n = gm_mcentral_takeBatch(mc, gm_list_base(m, c->listmax[sc]), c->listmax[sc], c, &c->ntcown[sc]);
    if (n == 0)
        return false;
    m->limit -= n * LIST_UNIT;
    c->nrecv[sc] += n;
    return true;
}

/* Everything back to the spans and the heap (thread exit, gm_release). */
void gm_mcache_flushAll(gm_mcache *c) {
    if (c->clsbase == 0)
        gm_tiny_retire_all(c); /* first: empty blocks land on the lists flushed below */
    for (int sc = 1; sc < NUM_CLASSES; sc++) {
        gm_mcache_flushClass(c, (uint8_t)sc, 0);
        list_shrink(c, (uint8_t)sc);
        gm_mclass *m = gm_mclass_of(c, (uint8_t)sc);
        if (m->span != &gm_emptyspan) {
            gm_mcentral_uncacheSpan(m->span);
            m->span = &gm_emptyspan;
        }
    }
    if (c->clsbase == 0)
        gm_pagecache_flush(c);
}

/* ---- registry, for stats and the heap check ----------------------------- */

void gm_registry_lock(void) { pthread_mutex_lock(&registry_lock); }
/* A heap check begins (and ends): it walks the caches, spans and lists
 * and adds their objects up, so no reaper may flush an abandoned cache
 * meanwhile.  Waits for the flushes under way. */
void gm_check_begin(void) { registry_enter(&checking, &reaping, &draining); }
void gm_check_end(void) { registry_leave(&checking); }
/* A drain of the transfer caches begins (and ends): it moves batches,
 * which a heap check counts as listed objects, to their spans, which it
 * counts class by class afterwards, so a check and a drain wait for each
 * other (a check that saw a batch and then its span missed its objects:
 * a CI run failed so, at the scavenger's aged drain).  Called with no
 * lock held. */
void gm_drain_begin(void) { registry_enter(&draining, &checking, &checking); }
void gm_drain_end(void) { registry_leave(&draining); }
void gm_registry_unlock(void) { pthread_mutex_unlock(&registry_lock); }
gm_mcache *gm_registry_first(void) { return registry; }

/* ---- fork ------------------------------------------------------------------ */

/* Every lock, in the lock order: the heaps table, each heap's lock, the
 * registry, each heap's class locks, the page heap, persistentalloc. */
void gm_mcache_fork_prepare(void) {
    gm_heaps_lock();
    for (gm_heap *hp = gm_heaps_next(NULL); hp != NULL; hp = gm_heaps_next(hp))
        pthread_mutex_lock(&hp->lock);
    pthread_mutex_lock(&registry_lock);
    for (gm_heap *hp = gm_heaps_next(NULL); hp != NULL; hp = gm_heaps_next(hp))
        for (int sc = 0; sc < NUM_CLASSES; sc++)
            pthread_mutex_lock(&hp->central[sc].lock);
    pthread_mutex_lock(&gm_mheap.lock);
    gm_persistent_lock();
}

void gm_mcache_fork_parent(void) {
    gm_persistent_unlock();
    pthread_mutex_unlock(&gm_mheap.lock);
    for (gm_heap *hp = gm_heaps_next(NULL); hp != NULL; hp = gm_heaps_next(hp))
        for (int sc = NUM_CLASSES - 1; sc >= 0; sc--)
            pthread_mutex_unlock(&hp->central[sc].lock);
    pthread_mutex_unlock(&registry_lock);
    for (gm_heap *hp = gm_heaps_next(NULL); hp != NULL; hp = gm_heaps_next(hp))
        pthread_mutex_unlock(&hp->lock);
    gm_heaps_unlock();
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
    /* The child's one thread: the plain owner only if it was the parent's
     * (another's claiming flag may have been caught raised). */
    pthread_mutex_init(&plain_lock, NULL);
    if (LOAD_RELAXED(&gm_plain_owner) != gm_tls_mcache)
        STORE_RELAXED(&gm_plain_owner, NULL);
    pthread_mutex_init(&gm_mheap.lock, NULL);
    gm_mheap_fork_child();
    gm_heaps_fork_child();
    for (gm_heap *hp = gm_heaps_next(NULL); hp != NULL; hp = gm_heaps_next(hp))
        for (int sc = 0; sc < NUM_CLASSES; sc++)
            pthread_mutex_init(&hp->central[sc].lock, NULL);
    pthread_mutex_init(&registry_lock, NULL);
    pthread_cond_init(&reaped, NULL);
    reaping = checking = draining = 0; /* a reaper's cache, mid-flush, is orphaned below */
    gm_mcache *c = registry;
    STORE_RELAXED(&nowned, gm_tls_mcache != &gm_nocache);
    while (c != NULL) {
        gm_mcache *next = c->next;
        if (c != gm_tls_mcache && !c->abandoned) { /* abandoned caches were quiescent: they stay adoptable */
            /* Its heap caches will never be left by their thread. */
            for (gm_mcache *hc = c->heapcaches; hc != NULL; hc = hc->sibling) {
                hc->busy = 0;
                hc->inscope = false;
            }
            gm_stats_fold_mcache(c);
            registry_unlink(c);
            c->next = orphans;
            orphans = c;
            gm_fork_orphans = true;
        }
        c = next;
    }
}
