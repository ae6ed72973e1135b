/*
 * malloc.c: the public API, and the overview of the allocator.
 *
 * pygomalloc is the Go runtime's allocator (malloc.go, mheap.go) with an
 * explicit free.  The structures and their Go names:
 *
 *   fixalloc / persistentalloc   off-heap metadata (fixalloc.c)
 *   mheap                        the page heap: 8 KiB pages in 64 MiB arenas
 *                                (pagealloc.c, arena.c)
 *   mspan                        a run of pages: objects of one size class,
 *                                one large object, or free pages (mspan.c)
 *   mcentral                     per size class, the spans no thread owns
 *                                (mcentral.c)
 *   mcache                       per thread: a span and a list of freed
 *                                objects per class, and a page cache (mcache.c)
 *   OS layer                     sysReserve / sysMap / sysUsed / sysUnused /
 *                                sysFree / sysFault (mem_linux.c)
 *
 * Allocating a small object (<= 32 KiB) climbs the hierarchy, stopping at
 * the first step that succeeds:
 *
 *   1. Round the size up to one of 67 size classes (sizeclasses.h).
 *   2. Pop the calling thread's list of freed objects of that class.  No lock.
 *   3. nextFreeFast: take the next free slot of the thread's current span
 *      of that class, found with one ctz on allocCache.  No lock.
 *   3a. Take back a batch of freed objects the thread flushed to the
 *      class's transfer cache (or one a consumer thread flushed), as the
 *      thread's new list (mcentral.c).  Takes the class lock, only when
 *      the transfer cache is not empty.
 *   4. nextFreeIndex: scan the span's allocBits further.  No lock.
 *   5. The span is full: give it back to the mcentral and take a span with
 *      free slots from it (cacheSpan).  Takes the class lock.
 *   6. The mcentral has none: allocate a span from the heap, through the
 *      thread's page cache for small spans (no lock) or the heap (heap lock).
 *   7. The heap has no free run that fits: map another 4 MiB chunk of the
 *      current arena, or reserve another 64 MiB arena (mmap).
 *
 * Large objects (> 32 KiB) get a span of their own straight from the heap.
 *
 * How a freed object travels back (what Go does not have; Go's sweeper
 * finds dead objects by marking instead):
 *
 *   1. free(p) reads p's state byte: one load of the arena map, whose entry
 *      is the arena's state map biased so that the address shifted right by
 *      four indexes it, then the byte (gm_internal.h, "Object states").
 *      OBJ_LIVE(c) says p starts a live object of class c; any other byte
 *      sends free() to its slow path.  A compare-and-swap makes the byte
 *      OBJ_CACHED(c), so that of two frees of one object exactly one wins,
 *      and (p, its state byte) is pushed on the calling thread's list for
 *      class c: an array in the thread's mcache.  No lock, whichever thread
 *      allocated p, and no span is read.
 *   2. malloc on that thread pops it again (step 2 above): hot memory.
 *   3. When the list exceeds its bound, its older half leaves in one batch
 *      under the class lock (mcentral.c): into the class's transfer cache,
 *      kept whole for the thread to take back when it runs out (step 3a
 *      above), if it has room; else back to the spans, where each object's
 *      state byte becomes OBJ_FREE and its span's allocCount drops.  gm_release
 *      empties the transfer caches into the spans.
 *   4. A span whose objects are all free, and which no thread is allocating
 *      from, goes back to the page heap, where it merges with neighbouring
 *      free runs (pagealloc.c).  A span with some free objects waits in the
 *      mcentral's partial list; when a thread next takes it, allocBits is
 *      rebuilt from the state bytes (Go's sweep) and its free slots reused.
 *   5. Free pages are returned to the OS by gm_release (and the scavenger):
 *      sysUnused, Ready -> Prepared.
 *   6. A thread that exits flushes its lists and gives back its spans and
 *      page cache; its mcache is recycled.
 *
 * Bad pointers.  free() validates every pointer on the fast path, exactly:
 * it must lie in an arena, be 16-byte aligned, and its state byte must say
 * OBJ_LIVE (only the granule where an object starts has a nonzero byte).
 * A double free finds OBJ_CACHED or OBJ_FREE there, whichever thread freed
 * first; two frees racing each other meet in the compare-and-swap.  What is
 * caught is reported (gm_report) and never reaches the heap.
 *
 * Hostile programs.  The free lists live in the allocator's metadata, not
 * in freed objects: nothing a program writes into freed memory is ever
 * followed.  free() leaves a canary in the object's first word (its
 * address xor a per-process secret), and malloc checks it and the state
 * byte before it hands the object out again: a write after free is
 * reported (gm_report_corruption), and the word is cleared, so that no
 * object handed out holds anything of the allocator's.
 */
#define _GNU_SOURCE
/* The fast paths' two-word stores of a list entry are faster as two moves
 * than as the vector shuffle gcc's SLP vectorizer builds. */
#pragma GCC optimize("no-tree-slp-vectorize")
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gm_internal.h"
#include "pymem.h"

atomic_int gm_inited;
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t bad_frees;
/* A private duplicate of stderr taken at start-up, for the report at exit:
 * many programs (ls, grep, sort) close stderr before their exit handlers
 * run.  -1: none. */
static int report_fd = -1;

/* ---- start-up (mallocinit) ------------------------------------------------- */

static void init_class_offsets(void);

/* The scavenger's lock is taken first: the scavenger takes the heap lock
 * without holding it, but never the other way round.  The profile's lock
 * is held around fixalloc (the persistent lock), never inside another. */
static void fork_prepare(void) {
    gm_scavenger_fork_prepare();
    gm_profile_fork_prepare(); /* before the persistent lock, which it takes */
    gm_mcache_fork_prepare();
}
static void fork_parent(void) {
    gm_mcache_fork_parent();
    gm_profile_fork_parent();
    gm_scavenger_fork_parent();
}
static void fork_child(void) {
    gm_mcache_fork_child();
    gm_profile_fork_child();
    gm_scavenger_fork_child();
}

static void print_stats_at_exit(void) {
    if (gm_opt.check_heap && gm_check_heap() != 0)
        gm_throw("heap check failed at exit");
    if (gm_opt.print_stats) {
        struct gm_stats st = {.size = sizeof st};
        gm_read_stats(&st);
        char buf[512];
        int n = snprintf(buf, sizeof buf,
                         "pygomalloc: sys=%llu heap_sys=%llu heap_inuse=%llu heap_alloc=%llu "
                         "heap_released=%llu objects=%llu mallocs=%llu frees=%llu arenas=%llu\n",
                         (unsigned long long)st.sys, (unsigned long long)st.heap_sys,
                         (unsigned long long)st.heap_inuse, (unsigned long long)st.heap_alloc,
                         (unsigned long long)st.heap_released, (unsigned long long)st.heap_objects,
                         (unsigned long long)st.mallocs, (unsigned long long)st.frees,
                         (unsigned long long)st.num_arenas);
        int fd = report_fd >= 0 ? report_fd : 2;
        if (n > 0)
            (void)!write(fd, buf, (size_t)n);
        if (gm_opt.profile_rate > 0)
            gm_profile_print(fd, 10);
    }
}

void gm_init_slow(void) {
    pthread_mutex_lock(&init_lock);
    if (!atomic_load_explicit(&gm_inited, memory_order_relaxed)) {
        gm_options_init();
        gm_sys_init();
        gm_pages_init();
        gm_arena_init();
        gm_heaps_init();
        gm_mcache_init();
        init_class_offsets();
        /* Published before pthread_atfork and atexit, which may allocate. */
        atomic_store_explicit(&gm_inited, 1, memory_order_release);
        pthread_atfork(fork_prepare, fork_parent, fork_child);
        if (gm_opt.print_stats || gm_opt.check_heap) {
            report_fd = fcntl(2, F_DUPFD_CLOEXEC, 3);
            atexit(print_stats_at_exit);
        }
    }
    pthread_mutex_unlock(&init_lock);
}

/* ---- errors ---------------------------------------------------------------- */

_Noreturn void gm_throw(const char *msg) {
    char buf[256];
    int n = snprintf(buf, sizeof buf, "pygomalloc: fatal error: %s\n", msg);
    if (n > 0)
        (void)!write(2, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
    abort();
}

const char *gm_strerror(int code) {
    switch (code) {
    case GM_OK: return "no error";
    case GM_ERR_NOT_OURS: return "pointer was not allocated by pygomalloc";
    case GM_ERR_INTERIOR: return "pointer is not the start of an object";
    case GM_ERR_NOT_ALLOCATED: return "object is not allocated (double free, or never handed out)";
    default: return "unknown error";
    }
}

int gm_report(int code, const void *p, const char *what) {
    ATOMIC_ADD(&bad_frees, 1);
    if (gm_opt.abort_on_error) {
        char buf[256];
        int n = snprintf(buf, sizeof buf, "pygomalloc: %s(%p): %s\n", what, p, gm_strerror(code));
        if (n > 0)
            (void)!write(2, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
        abort();
    }
    errno = EINVAL;
    return code;
}

void gm_report_corruption(const void *p, uint8_t sc, const char *what) {
    ATOMIC_ADD(&bad_frees, 1);
    if (gm_opt.abort_on_error) {
        char buf[256];
        int n = snprintf(buf, sizeof buf, "pygomalloc: heap corruption: object of size class %u (%u bytes) at %p: %s\n",
                         sc, sc < NUM_CLASSES ? gm_class_to_size[sc] : 0, p, what);
        if (n > 0)
            (void)!write(2, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
        abort();
    }
}

uint64_t gm_bad_frees(void) { return LOAD_RELAXED(&bad_frees); }

/* ---- size classes ------------------------------------------------------------ */

/* Go's two-table lookup, for size <= MAX_SMALL_SIZE. */
#define CLASS8_OF(size) gm_size_to_class8[((size) + GM_SC_SMALL_SIZE_DIV - 1) / GM_SC_SMALL_SIZE_DIV]
#define CLASS128_OF(size) \
    gm_size_to_class128[((size) - GM_SC_SMALL_SIZE_MAX + GM_SC_LARGE_SIZE_DIV - 1) / GM_SC_LARGE_SIZE_DIV]

GM_INLINE uint8_t size_to_class(size_t size) {
    return size <= GM_SC_SMALL_SIZE_MAX - 8 ? CLASS8_OF(size) : CLASS128_OF(size);
}

/* For the fast path: the byte offset in an mcache of the gm_mclass of
 * every size up to GM_SC_SMALL_SIZE_MAX, indexed by the size itself (2 KiB:
 * no rounding on the way in), and of the larger small sizes by 128-byte
 * steps.  Until start-up fills them, and while the heap profile samples
 * (gm_route_update), every entry is the offset of class 0, whose list is
 * always empty and whose span is gm_emptyspan: malloc takes the slow path,
 * which starts the allocator, or counts bytes towards the next sample.
 * Written rarely, read relaxed. */
static uint16_t size_offset[GM_SC_SMALL_SIZE_MAX + 1];
static uint16_t class128_offset[(MAX_SMALL_SIZE - GM_SC_SMALL_SIZE_MAX) / GM_SC_LARGE_SIZE_DIV + 1];
#define CLASS0_OFFSET ((uint16_t)offsetof(gm_mcache, cls))

static void init_class_offsets(void) { gm_route_update(); }

/* Fill the tables from the options: while the heap profile samples, every
 * small malloc goes to the slow path; with the tiny allocator on, those of
 * 1 to TINY_MAX bytes do. */
void gm_route_update(void) {
    static pthread_mutex_t route_lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&route_lock);
    bool profile = LOAD_RELAXED(&gm_opt.profile_rate) > 0, tiny = LOAD_RELAXED(&gm_opt.tiny) != 0;
    for (size_t i = 0; i <= GM_SC_SMALL_SIZE_MAX; i++)
        STORE_RELAXED(&size_offset[i], profile || (tiny && i - 1 < TINY_MAX)
                                           ? CLASS0_OFFSET
                                           : (uint16_t)(CLASS0_OFFSET + size_to_class(i) * sizeof(gm_mclass)));
    for (size_t i = 0; i < sizeof class128_offset / sizeof class128_offset[0]; i++)
        STORE_RELAXED(&class128_offset[i],
                      profile ? CLASS0_OFFSET
                              : (uint16_t)(CLASS0_OFFSET + gm_size_to_class128[i] * sizeof(gm_mclass)));
    pthread_mutex_unlock(&route_lock);
}

uint8_t gm_size_to_class(size_t size) { return size_to_class(size); }

/* ---- the calling thread's mcache ------------------------------------------ */

/*
 * gm_tls (gm_internal.h) uses TLS descriptors (-mtls-dialect=gnu2) in the shared
 * library, never initial-exec TLS, because libgomalloc.so may be dlopen'ed
 * (the cffi module needs it) and the static TLS block may have no room.  A
 * descriptor costs a call on every access.  But a library loaded at
 * start-up (linked to the program, or under the LD_PRELOAD shim) always
 * has its TLS in the static block, at a fixed offset from the thread
 * pointer, and glibc then resolves the descriptor to a function returning
 * that offset, which it keeps in the descriptor's argument (negative on
 * x86-64; a dynamic block's argument is a pointer instead).  The public
 * fast paths are therefore IFUNCs: their resolver reads the library's own
 * descriptor and, when the block is static, picks the variants that read
 * the cache pointers at thread pointer + offset, as initial-exec code does
 * (two instructions).  Otherwise, or if the descriptor is not relocated
 * yet when a resolver runs, it picks the variants that use the descriptor:
 * slower, always right.  The C tests and the fuzzer, which link the core
 * into the program, use the compiler's model directly.
 */
#if defined(GM_SHARED) && defined(__x86_64__)
#define GM_TLS_SWITCH 1
/* gm_tls's offset from the thread pointer, once a resolver found the TLS
 * block static; 0 otherwise. */
static intptr_t tls_static_offset;

GM_INLINE gm_mcache *tls_alloc(bool fixed) {
    if (fixed) {
        gm_mcache *c;
        __asm__("movq %%fs:(%1), %0" : "=r"(c) : "r"(tls_static_offset));
        return c;
    }
    return gm_tls.alloc;
}
GM_INLINE gm_mcache *tls_free(bool fixed) {
    if (fixed) {
        gm_mcache *c;
        __asm__("movq %%fs:%c2(%1), %0" : "=r"(c) : "r"(tls_static_offset), "i"(offsetof(struct gm_tls, free)));
        return c;
    }
    return gm_tls.free;
}

/* Is gm_tls in the static TLS block?  (Called by IFUNC resolvers, while
 * the dynamic linker relocates: reads only this library's memory.) */
static bool tls_is_static(void) {
    struct tlsdesc {
        void *entry;
        intptr_t arg;
    } const *d;
    __asm__("leaq gm_tls@TLSDESC(%%rip), %0" : "=a"(d));
    if (tls_static_offset == 0 && d->entry != NULL && d->arg < 0 && d->arg > -((intptr_t)1 << 30))
        tls_static_offset = d->arg;
    return tls_static_offset != 0;
}
#else
GM_INLINE gm_mcache *tls_alloc(bool fixed) {
    (void)fixed;
    return gm_tls.alloc;
}
GM_INLINE gm_mcache *tls_free(bool fixed) {
    (void)fixed;
    return gm_tls.free;
}
#endif

/* ---- malloc ---------------------------------------------------------------- */

static GM_NOINLINE void *malloc_slow(size_t size, bool zero, gm_mcache *c);

/* The object on top of list m is wrong: its state byte does not say
 * OBJ_CACHED, or its canary was overwritten.  Reports it; returns the
 * object when it may still be handed out (only its contents were written
 * after free), else drops the entry and returns NULL. */
static GM_NOINLINE void *pop_bad(gm_mclass *m, uint8_t live, gm_freeobj *top) {
    void *p = top->p;
    uint8_t sc = live & ~OBJ_HEAP_BIT;
    m->limit += LIST_UNIT; /* the entry leaves the list either way */
    if (LOAD_RELAXED(top->st) != OBJ_CACHED) {
        gm_report_corruption(p, sc, "its state says it is not on a free list (the allocator's memory was overwritten)");
        return NULL;
    }
    gm_report_corruption(p, sc, "written after it was freed");
    gm_set_objstate(top->st, live);
    ((uint64_t *)p)[0] = ((uint64_t *)p)[1] = 0;
    return p;
}

/* Pop the newest object of list m, or NULL (empty, or a bad entry
 * dropped); live is the state byte it gets.  The entry below the bottom is
 * a NULL sentinel, so an empty list needs no test of its own. */
GM_INLINE void *list_pop(gm_mclass *m, uint8_t live) {
    gm_freeobj *top = gm_list_slot(m) - 1;
    void *p = top->p;
    if (likely(p != NULL)) {
        uint8_t *st = top->st;
        if (unlikely(LOAD_RELAXED(st) != OBJ_CACHED || !canary_ok(p)))
            return pop_bad(m, live, top);
        gm_set_objstate(st, live);
        *(uint64_t *)p = 0;
        m->limit += LIST_UNIT;
    }
    return p;
}

/*
 * The fast path: steps 2 and 3 of the overview.  c is where the calling
 * thread's mallocs go: its default-heap cache, or a heap cache seen
 * through a pointer biased by OBJ_HEAP_BIT entries (gm_internal.h, struct
 * gm_tls); either way the entry the size table leads to is the class's,
 * and, caches being aligned to the size of cls[], the entry's index is the
 * state byte a live object gets (OBJ_LIVE(c) or OBJ_LIVE_HEAP(c)).
 * Measured with callgrind in bench/callgrind_fastpath.py (see README for
 * the instruction counts).
 */
GM_INLINE void *malloc_fast(size_t size, gm_mcache *c) {
    uintptr_t off;
    if (likely(size <= GM_SC_SMALL_SIZE_MAX))
        off = LOAD_RELAXED(&size_offset[size]);
    else if (size <= MAX_SMALL_SIZE)
        off = LOAD_RELAXED(&class128_offset[(size - GM_SC_SMALL_SIZE_MAX + GM_SC_LARGE_SIZE_DIV - 1) /
                                            GM_SC_LARGE_SIZE_DIV]);
    else
        return malloc_slow(size, false, c);
    gm_mclass *m = (gm_mclass *)((char *)c + off);
    uint8_t live = (uint8_t)((uintptr_t)m / sizeof(gm_mclass));
    gm_freeobj *top = gm_list_slot(m) - 1;
    void *p = top->p;
    if (likely(p != NULL)) {
        /* The list_pop of the slow path, with its rare case sent there too
         * (so that this function needs no stack frame). */
        uint8_t *st = top->st;
        /* A plain read: a cached object's byte is written by its list's
         * owner only (a racing free's compare-and-swap fails on it). */
        if (unlikely(*st != OBJ_CACHED || !canary_ok(p)))
            return malloc_slow(size, false, c);
        gm_set_objstate(st, live);
        *(uint64_t *)p = 0;
        m->limit += LIST_UNIT;
        /* The next pop reads that object's canary: start its line now (the
         * sentinel's NULL is harmless) so that a list longer than the
         * cache's L1 pays one miss at a time in the background, not on the
         * next malloc (bench graphs: building 6% faster). */
        __builtin_prefetch(top[-1].p, 1);
        return p;
    }
    p = gm_nextFreeFast(m->span, live);
    if (likely(p != NULL)) {
        gm_mcache_of(m)->nspan[live & ~OBJ_HEAP_BIT]++;
        return p;
    }
    /* m leads malloc_slow to the cache as c does (gm_mcache_of), and c
     * need not stay in a register across the span path. */
    return malloc_slow(size, false, (gm_mcache *)m);
}

/* A large object from cache c's heap (c: the cache itself). */
static void *large_alloc(gm_mcache *c, size_t size, bool zero) {
    if (size > ((size_t)1 << HEAP_ADDR_BITS)) {
        errno = ENOMEM;
        return NULL;
    }
    uintptr_t npages = (size + PAGE_SIZE - 1) >> PAGE_SHIFT;
    gm_mspan *s = gm_mheap_alloc(c->owner != NULL ? c->owner : c, npages, 0, c->heap);
    if (s == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    s->sampled = 0;
    if (c->heap != &gm_default_heap)
        gm_heap_large_added(c->heap, s);
    if (zero && s->needzero)
        memset((void *)s->startAddr, 0, size);
    return (void *)s->startAddr;
}

static void *malloc_slow_inner(size_t size, bool zero, gm_mcache *c);

/* While the heap profile samples, every malloc comes here (see
 * gm_route_update), and counts its bytes towards the thread's next sample;
 * with the tiny allocator on, so do mallocs of 1 to TINY_MAX bytes.  c: the
 * cache, or any pointer into it (its biased pointer, an entry of its cls[]):
 * malloc_slow_inner finds the cache with gm_mcache_of. */
static GM_NOINLINE void *malloc_slow(size_t size, bool zero, gm_mcache *c) {
    void *p = malloc_slow_inner(size, zero, c);
    if (unlikely(LOAD_RELAXED(&gm_opt.profile_rate) != 0) && p != NULL &&
        !(size - 1 < TINY_MAX && LOAD_RELAXED(&gm_opt.tiny)) && gm_profile_due(gm_tls_mcache, size))
        gm_profile_alloc(p, size);
    return p;
}

void *gm_malloc_small_unsampled(gm_mcache *c, size_t size) { return malloc_slow_inner(size, false, c); }

GM_INLINE void *malloc_slow_inner(size_t size, bool zero, gm_mcache *biased) {
    gm_ensure_init();
    gm_mcache *c = gm_mcache_of(biased);
    if (c == &gm_nocache && (c = gm_mcache_create()) == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    if (size > MAX_SMALL_SIZE)
        return large_alloc(c, size, zero);
    if (size - 1 < TINY_MAX && LOAD_RELAXED(&gm_opt.tiny) && c->clsbase == 0)
        return gm_tiny_alloc(c, size, zero);
    /* size 0 gets the 16-byte class: a distinct pointer per malloc(0). */
    uint8_t sc = size_to_class(size), live = c->clsbase | sc;
    gm_mclass *m = gm_mclass_of(c, sc);
    for (;;) {
        void *p = list_pop(m, live);
        if (p != NULL) {
            if (zero)
                memset(p, 0, size);
            return p;
        }
        if (gm_list_len(m->npush, m->limit, c->listmax[sc]) != 0)
            continue; /* a bad entry was dropped: try the next */
        /* Steps 3 to 7, with the transfer cache before nextFreeIndex: a
         * batch another thread flushed is taken whole. */
        p = gm_nextFreeFast(m->span, live);
        if (p == NULL && LOAD_RELAXED(&c->heap->central[sc].ntc) != 0 && gm_mcache_receive(c, sc))
            continue;
        if (p == NULL && (p = gm_mcache_refill(c, sc)) == NULL) {
            errno = ENOMEM;
            return NULL;
        }
        c->nspan[sc]++;
        if (zero && LOAD_RELAXED(&m->span->needzero))
            memset(p, 0, size);
        return p;
    }
}

void *gm_malloc_internal(size_t size) { return malloc_fast(size, gm_tls.alloc); }

void *gm_malloc_from(gm_mcache *c, size_t size, bool zero) {
    gm_mcache *biased = gm_alloc_ptr(c);
    return zero ? malloc_slow(size, true, biased) : malloc_fast(size, biased);
}

/* calloc, for gm_calloc and gm_py_calloc (their TLS variants below). */
GM_INLINE void *calloc_fast(size_t nmemb, size_t size, gm_mcache *c) {
    size_t total;
    if (unlikely(__builtin_mul_overflow(nmemb, size, &total))) {
        errno = ENOMEM;
        return NULL;
    }
    if (likely(total <= GM_CALLOC_FAST)) {
        void *p = malloc_fast(total, c);
        if (p != NULL)
            memset(p, 0, total);
        return p;
    }
    return malloc_slow(total, true, c);
}

/* ---- free -------------------------------------------------------------------- */

static GM_NOINLINE int free_slow(void *p, bool checked);

/* Push p, whose state byte st the caller just made OBJ_CACHED, on list m,
 * which has room, as its entry f, npush being m->npush (step 1 of the way
 * back).  f and npush were read before the compare-and-swap, after which
 * the compiler would have to read them again. */
GM_INLINE void free_push(gm_mclass *m, gm_freeobj *f, uint64_t npush, void *p, uint8_t *st) {
    canary_set(p);
    f->p = p;
    f->st = st;
    m->npush = npush + LIST_UNIT;
}

/* The one transition two threads may race for: live -> OBJ_CACHED (live:
 * OBJ_LIVE(c) or OBJ_LIVE_HEAP(c)).  Exactly one of two frees of an object
 * succeeds. */
GM_INLINE bool claim_live(uint8_t *st, uint8_t live) {
    return __atomic_compare_exchange_n(st, &live, OBJ_CACHED, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

/*
 * The free fast path: p (address a) lies in an arena, whose arena map
 * entry is e, and is 16-byte aligned; its state byte (one more load) is
 * OBJ_LIVE(c), which selects the thread's list for class c; any other
 * byte selects an entry of cls[] without room.  The byte becomes
 * OBJ_CACHED(c) by compare-and-swap, and p goes on the list.  false: not
 * done (free_slow decides).
 *
 * ordered: the caller's frees of p cannot race, so the byte read above is
 * still OBJ_LIVE(c) and a plain store claims it.  That holds for CPython's
 * mem and obj domains, whose callers hold the GIL (gm_py_free_gil): two
 * frees of a block through them are ordered, and the second finds
 * OBJ_CACHED, as an ordered double free does anywhere.  The locked
 * instruction it saves costs about 8 ns per free on an Intel Xeon host
 * (README "Measured", fastpath).
 */
GM_INLINE bool free_push_fast(void *p, uintptr_t a, uintptr_t e, bool fixed_tls, bool ordered) {
    uint8_t *st = gm_state_at(e, a);
    uintptr_t b = LOAD_RELAXED(st);
    gm_mcache *c = tls_free(fixed_tls);
    gm_mclass *m = (gm_mclass *)((char *)c + b * sizeof(gm_mclass));
    uint64_t npush = m->npush;
    int64_t d = (int64_t)(npush - m->limit); /* < 0: room; the top's offset from end */
    if (unlikely(d >= 0))
        return false;
    if (ordered) {
        STORE_RELAXED(st, OBJ_CACHED);
    } else if (likely(LOAD_RELAXED(&gm_plain_owner) == c)) {
        /* The plain owner (mcache.c, "One freeing thread") claims with a
         * plain store: its flag up, gm_plain_owner read again, the store,
         * the flag down.  The compiler fences keep that order; the
         * processor keeps it but for the store-then-load, which
         * gm_plain_end's membarrier covers.  (A flag, not a count: free is
         * not async-signal-safe.) */
        STORE_RELAXED(&c->claiming, 1);
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        bool mine = LOAD_RELAXED(&gm_plain_owner) == c;
        if (likely(mine))
            STORE_RELAXED(st, OBJ_CACHED);
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        STORE_RELAXED(&c->claiming, 0);
        if (unlikely(!mine) && !claim_live(st, (uint8_t)b))
            return false;
    } else if (!claim_live(st, (uint8_t)b)) {
        return false;
    }
    free_push(m, (gm_freeobj *)((char *)m->end + d), npush, p, st);
    return true;
}

GM_INLINE int free_fast(void *p, bool checked, bool fixed_tls) {
    uintptr_t a = (uintptr_t)p, e;
    if (likely((a & GM_NOT_GRANULE) == 0 && (e = LOAD_RELAXED(&gm_arena_map[a >> ARENA_SHIFT])) != 0) &&
        likely(free_push_fast(p, a, e, fixed_tls, false)))
        return GM_OK;
    /* free(NULL) is common (optional fields of a structure): answered here,
     * after the fast path, which it costs nothing, rather than through the
     * call to free_slow (bench graphs: 2.3 instructions fewer per block). */
    if (p == NULL)
        return GM_OK;
    return free_slow(p, checked);
}

static int bad_free(int code, void *p, bool checked) {
    return checked ? (ATOMIC_ADD(&bad_frees, 1), code) : gm_report(code, p, "free");
}

/* Everything free_fast did not finish: NULL, large objects, objects in the
 * heap profile, tiny objects, frees on a thread without a cache or with a
 * full list, and bad pointers. */
static GM_NOINLINE int free_slow(void *p, bool checked) {
    if (p == NULL)
        return GM_OK;
    if (unlikely(LOAD_RELAXED(&gm_plain_owner) != NULL))
        gm_plain_end(); /* this thread may claim next (mcache.c, "One freeing thread") */
    int code = gm_check(p);
    if (code != GM_OK)
        return bad_free(code, p, checked);
    uintptr_t a = (uintptr_t)p;
    gm_mspan *s = gm_span_of(a);
    if (unlikely(s == NULL || LOAD_RELAXED(&s->state) != SPAN_INUSE)) /* freed by a racing free since gm_check */
        return bad_free(GM_ERR_NOT_ALLOCATED, p, checked);
    uint8_t sc = s->sizeclass;
    gm_heap *hp = LOAD_RELAXED(&s->heap);
    if (sc == 0) {
        /* A program's heap's large object leaves the heap's list first:
         * of two racing frees, one finds it there. */
        if (hp != &gm_default_heap && hp != NULL && !gm_heap_large_removed(hp, s, a))
            return bad_free(GM_ERR_NOT_ALLOCATED, p, checked);
        if (unlikely(LOAD_RELAXED(&s->sampled))) {
            STORE_RELAXED(&s->sampled, 0);
            gm_profile_free(p);
        }
        code = gm_mheap_free_large(s, a);
        return code != GM_OK ? bad_free(code, p, checked) : GM_OK;
    }
    uintptr_t idx = gm_span_index(s, a);
    uint8_t *st = gm_objstate_ptr(s, idx);
    if (LOAD_RELAXED(st) == OBJ_TINY) { /* a tiny object: its block goes when it empties */
        code = gm_tiny_free(gm_tls_mcache, s, idx, a);
        return code != GM_OK ? bad_free(code, p, checked) : GM_OK;
    }
    if (LOAD_RELAXED(st) == OBJ_SAMPLED) {
        /* In the heap profile: out of it, then freed as any.  The racing
         * double free loses here or at claim_live below. */
        uint8_t expect = OBJ_SAMPLED;
        if (!__atomic_compare_exchange_n(st, &expect, s->liveval, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return bad_free(GM_ERR_NOT_ALLOCATED, p, checked);
        gm_profile_free(p);
    }
    if (hp != &gm_default_heap) { /* a program's heap's object: to the thread's cache for that heap */
        code = gm_heap_free_obj(s, p, st);
        if (code != GM_HEAP_MOVED)
            return code != GM_OK ? bad_free(code, p, checked) : GM_OK;
    }
    gm_mcache *c = gm_tls_mcache;
    bool first = c == &gm_nocache;
    if (first && !gm_tls_exiting)
        c = gm_mcache_create(); /* a thread that only frees gets a cache too */
    if (first || c == NULL || c == &gm_nocache) {
        /* A thread whose cache is gone (exiting), or none could be had:
         * straight to the span.  So goes a thread's first free: a thread
         * handed an object at its start (Hoard's cache-scratch) would
         * otherwise take it back for its own mallocs, on the cache line of
         * the objects handed to other threads beside it (passive false
         * sharing: 5x slower). */
        if (!claim_live(st, OBJ_LIVE(sc)))
            return bad_free(GM_ERR_NOT_ALLOCATED, p, checked);
        canary_set(p);
        gm_freeobj f = {p, st};
        ATOMIC_ADD(&gm_dead_nfree[sc], 1);
        gm_mcentral_freeObjs(&gm_central[sc], &f, 1);
        return GM_OK;
    }
    c->slow_frees++;
    if (!gm_free_to(c, sc, p, st))
        return bad_free(GM_ERR_NOT_ALLOCATED, p, checked);
    return GM_OK;
}

/* Free the live object p of class sc, whose state byte is st, onto the
 * list of cache c (growing it, or flushing half of it first, if it is
 * full: mcache.c, "Growing lists"); false if a
 * racing free got it first.  The caller owns c (c's thread, or the one
 * flushing c at its thread's exit). */
bool gm_free_to(gm_mcache *c, uint8_t sc, void *p, uint8_t *st) {
    gm_mclass *m = gm_mclass_of(c, sc);
    /* Half leaves, rounded down: a whole number of batches of a list of
     * tcache_bytes must fit the transfer cache's TC_BYTES.  Rounded up,
     * an odd list's two halves were one object over (80-byte class, when
     * TC_BYTES was tcache_bytes: 2 x 205 x 80 > 32 KiB), so every second
     * batch pushed the first out to the spans: a thread that dropped and
     * rebuilt 54 KiB of that class sent 205 objects through
     * free_objs_locked and cacheSpan's sweep on each cycle instead of
     * none. */
    if (m->npush >= m->limit) {
        if (c->grown != 0)
            gm_mcache_trim(c);
        if (!gm_mcache_grow(c, sc))
            gm_mcache_flushClass(c, sc, c->listmax[sc] - c->listmax[sc] / 2);
    }
    if (!claim_live(st, c->clsbase | sc))
        return false;
    free_push(m, gm_list_slot(m), m->npush, p, st);
    return true;
}

void gm_free_internal(void *p) { (void)free_fast(p, false, false); }

/* For allocators that wrap another (pygomalloc.install): the arena map
 * entry that decides whose p is also leads free_push_fast to its state
 * byte (one lookup, not two: 6 instructions fewer per free).  0: not ours. */
GM_INLINE int free_owned(void *p, bool fixed_tls, bool ordered) {
    uintptr_t a = (uintptr_t)p, e;
    if (likely((a & GM_NOT_GRANULE) == 0)) {
        if ((e = LOAD_RELAXED(&gm_arena_map[a >> ARENA_SHIFT])) == 0)
            return 0;
        if (likely(free_push_fast(p, a, e, fixed_tls, ordered)))
            return 1;
    } else if (gm_arena_map_load(a) == 0) {
        return 0;
    }
    (void)free_slow(p, false);
    return 1;
}

/* realloc_small's move, out of line so that the in-place case needs no
 * stack frame (one copy: fixed_tls and ordered are tested at run time,
 * beside a memcpy). */
static GM_NOINLINE void *realloc_move(void *p, uintptr_t e, unsigned c, size_t n, bool fixed_tls, bool ordered) {
    size_t cap = gm_class_to_size[c];
    void *q = malloc_fast(n > cap && n > GM_REALLOC_HEADROOM_MIN ? n + n / GM_REALLOC_HEADROOM : n,
                          tls_alloc(fixed_tls));
    if (q != NULL) {
        memcpy(q, p, n < cap ? n : cap);
        /* A racing free of p since realloc_small's load: the claim fails,
         * and free_slow reports it. */
        if (!free_push_fast(p, (uintptr_t)p, e, fixed_tls, ordered))
            (void)free_slow(p, false);
    }
    return q;
}

/*
 * realloc of a live small object of the default heap, decided from its
 * state byte (the one load free() validates with: a byte OBJ_LIVE(c) at
 * p's granule says p starts a live object of class c): in place, or moved
 * through the fast paths, malloc's and free's (ordered: as in
 * free_push_fast).  The policy is pymem.c's ("Where the object goes").
 * Returns 1 with *out set (NULL: out of memory, p untouched), 0 for
 * everything else (n == 0, NULL, large, tiny or sampled objects, a
 * program's heap's, bad pointers), which the callers' slow paths decide.
 */
GM_INLINE int realloc_small(void *p, size_t n, bool fixed_tls, bool ordered, void **out) {
    uintptr_t a = (uintptr_t)p, e;
    if ((a & GM_NOT_GRANULE) != 0 || (e = LOAD_RELAXED(&gm_arena_map[a >> ARENA_SHIFT])) == 0 || n == 0)
        return 0;
    unsigned c = LOAD_RELAXED(gm_state_at(e, a));
    if (c - 1 >= NUM_CLASSES - 1) /* not OBJ_LIVE(c) */
        return 0;
    *out = likely(gm_small_stays(c, n)) ? p : realloc_move(p, e, c, n, fixed_tls, ordered);
    return 1;
}

static GM_NOINLINE void *realloc_slow(void *p, size_t size);

/* The public fast paths, in the two TLS variants where they differ (see
 * "the calling thread's mcache"). */
#ifdef GM_TLS_SWITCH
#define GM_TLS_VARIANTS(ret, name, params, body)                                 \
    static ret name##_fixed params { const bool fixed_tls = true; body }               \
    static ret name##_desc params { const bool fixed_tls = false; body }               \
    static ret(*name##_resolve(void)) params { return tls_is_static() ? name##_fixed : name##_desc; } \
    ret name params __attribute__((ifunc(#name "_resolve")));
#else
#define GM_TLS_VARIANTS(ret, name, params, body) \
    ret name params {                                   \
        const bool fixed_tls = false;                   \
        body                                            \
    }
#endif
GM_TLS_VARIANTS(void *, gm_malloc, (size_t size), return malloc_fast(size, tls_alloc(fixed_tls));)
GM_TLS_VARIANTS(void *, gm_calloc, (size_t nmemb, size_t size), return calloc_fast(nmemb, size, tls_alloc(fixed_tls));)
GM_TLS_VARIANTS(void, gm_free, (void *p), (void)free_fast(p, false, fixed_tls);)
GM_TLS_VARIANTS(int, gm_free_checked, (void *p), return free_fast(p, true, fixed_tls);)
GM_TLS_VARIANTS(int, gm_free_owned, (void *p), return free_owned(p, fixed_tls, false);)
/* realloc: small objects (realloc_small) and realloc(NULL, n) inline. */
GM_TLS_VARIANTS(void *, gm_realloc, (void *p, size_t size), void *q;
                if (likely(realloc_small(p, size, fixed_tls, false, &q))) return q;
                if (p == NULL) return malloc_fast(size, tls_alloc(fixed_tls)); return realloc_slow(p, size);)
/* CPython's memory domains (pymem.h): the fast paths with no wrapper between. */
/* gm_py_malloc reads no route: a domain routed back has gm_py_malloc_prev
 * in its place (build_ext.py, pgm_pymem_route).  gm_py_realloc's common
 * cases are inlined here: small objects (realloc_small), and Python's
 * realloc(NULL, n) (a list's first append), a malloc; the rest is in
 * pymem.c.  gm_py_realloc_gil is to gm_py_realloc what gm_py_free_gil is
 * to gm_py_free. */
#define PY_REALLOC(ordered)                                                   \
    void *q;                                                                  \
    if (likely(realloc_small(p, n, fixed_tls, ordered, &q)))                  \
        return q;                                                             \
    if (p == NULL && likely(gm_py_routed(dom)))                               \
        return malloc_fast(n, tls_alloc(fixed_tls));                          \
    return gm_py_realloc_slow(dom, p, n);
GM_TLS_VARIANTS(void *, gm_py_malloc, (void *dom, size_t size), (void)dom; return malloc_fast(size, tls_alloc(fixed_tls));)
GM_TLS_VARIANTS(void *, gm_py_calloc, (void *dom, size_t nelem, size_t elsize),
                return likely(gm_py_routed(dom)) ? calloc_fast(nelem, elsize, tls_alloc(fixed_tls))
                                                 : gm_py_prev_calloc(dom, nelem, elsize);)
GM_TLS_VARIANTS(void *, gm_py_realloc, (void *dom, void *p, size_t n), PY_REALLOC(false))
GM_TLS_VARIANTS(void *, gm_py_realloc_gil, (void *dom, void *p, size_t n), PY_REALLOC(true))
GM_TLS_VARIANTS(void, gm_py_free, (void *dom, void *p), if (!free_owned(p, fixed_tls, false)) gm_py_prev_free(dom, p);)
GM_TLS_VARIANTS(void, gm_py_free_gil, (void *dom, void *p), if (!free_owned(p, fixed_tls, true)) gm_py_prev_free(dom, p);)

/* p lies inside span s but not at an object's start, unless s was freed
 * (and its fields changed) by a racing free since we looked it up: the
 * span map no longer points at it then (the heap clears the entries before
 * it touches the span), and p is simply not allocated. */
static int interior(const gm_mspan *s, uintptr_t a) {
    if (gm_span_of(a) != s || LOAD_RELAXED(&s->state) != SPAN_INUSE)
        return GM_ERR_NOT_ALLOCATED;
    return GM_ERR_INTERIOR;
}

/* Is p the start of a live object? */
int gm_check(const void *p) {
    uintptr_t a = (uintptr_t)p;
    if (p == NULL || !atomic_load_explicit(&gm_inited, memory_order_acquire) || gm_arena_map_load(a) == 0)
        return GM_ERR_NOT_OURS;
    gm_mspan *s = gm_span_of(a);
    if (s == NULL || LOAD_RELAXED(&s->state) != SPAN_INUSE)
        return GM_ERR_NOT_ALLOCATED;
    if (s->sizeclass == 0)
        return a == s->startAddr ? GM_OK : interior(s, a);
    uintptr_t i = gm_span_index(s, a);
    if (i >= s->nelems)
        return interior(s, a);
    uint8_t st = gm_objstate(s, i);
    if (st == OBJ_TINY) /* p may be any slot of the block */
        return gm_tiny_check(s, i, a);
    bool live = st == s->liveval || st == OBJ_SAMPLED;
    /* Inside a slot that holds no object: nothing to be interior to.  A
     * tiny object's second free lands here once its block has emptied and
     * gone back (the hypothesis test found it after a thread flush): a
     * double free, as the first free of its block's last object made it. */
    if (!gm_span_is_slot(s, a))
        return live ? interior(s, a) : GM_ERR_NOT_ALLOCATED;
    return live ? GM_OK : GM_ERR_NOT_ALLOCATED;
}

/* ---- the rest of the family ------------------------------------------------ */

size_t gm_usable_size(const void *p) {
    if (gm_check(p) != GM_OK)
        return 0;
    gm_mspan *s = gm_span_of((uintptr_t)p);
    if (s->sizeclass == TINY_CLASS) {
        uintptr_t i = gm_span_index(s, (uintptr_t)p);
        if (gm_objstate(s, i) == OBJ_TINY)
            return gm_tiny_usable(s, i);
    }
    return s->elemsize;
}

/* Everything gm_realloc did not decide: p != NULL. */
static void *realloc_slow(void *p, size_t size) {
    void *r;
    if (gm_realloc_fast(p, size, &r)) /* pymem.c: large objects, grown or shrunk in place when they can */
        return r;
    int code = gm_check(p);
    if (code != GM_OK) {
        gm_report(code, p, "realloc");
        return NULL;
    }
    if (size == 0) { /* as glibc: free and return NULL */
        gm_free_internal(p);
        return NULL;
    }
    gm_mspan *s = gm_span_of((uintptr_t)p);
    size_t old = gm_usable_size(p);
    if (old < s->elemsize) { /* a tiny object: in place while it fits its slot */
        if (size <= old)
            return p;
    } else if (s->sizeclass != 0) {
        /* In place when the new size has the same class. */
        if (size <= MAX_SMALL_SIZE && size_to_class(size) == s->sizeclass)
            return p;
    } else if (size > MAX_SMALL_SIZE && (size + PAGE_SIZE - 1) >> PAGE_SHIFT == s->npages) {
        return p;
    }
    void *q = gm_malloc_internal(size);
    if (q == NULL)
        return NULL; /* p is untouched */
    memcpy(q, p, old < size ? old : size);
    gm_free_internal(p);
    return q;
}

/* Aligned allocation from cache c (biased or not): from the classes whose
 * size is a multiple of the alignment, or a large span. */
void *gm_aligned_from(gm_mcache *biased, size_t alignment, size_t size) {
    if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
        errno = EINVAL;
        return NULL;
    }
    if (size > ((size_t)1 << HEAP_ADDR_BITS)) {
        errno = ENOMEM;
        return NULL;
    }
    if (size == 0)
        size = 1; /* a distinct object, as malloc(0) */
    if (alignment <= 8) /* a tiny object's slot is aligned to its size */
        return malloc_fast(size < alignment ? alignment : size, biased);
    if (alignment <= PAGE_SIZE) {
        /* Objects of a class whose size is a multiple of alignment are
         * aligned: spans start on 8 KiB boundaries. */
        size_t n = (size + alignment - 1) & ~(alignment - 1);
        if (n == 0)
            n = alignment;
        if (n <= MAX_SMALL_SIZE) {
            for (uint8_t sc = size_to_class(n); sc < NUM_CLASSES; sc++)
                if (gm_class_to_size[sc] % alignment == 0)
                    return malloc_fast(gm_class_to_size[sc], biased);
        }
        /* a large span is page aligned */
        return malloc_slow(size <= MAX_SMALL_SIZE ? MAX_SMALL_SIZE + 1 : size, false, biased);
    }
    gm_ensure_init();
    gm_mcache *c = gm_mcache_of(biased);
    gm_heap *hp = c != &gm_nocache && c->heap != NULL ? c->heap : &gm_default_heap;
    gm_mspan *s = gm_mheap_alloc_aligned((size + PAGE_SIZE - 1) >> PAGE_SHIFT, alignment, hp);
    if (s == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    s->sampled = 0;
    if (hp != &gm_default_heap)
        gm_heap_large_added(hp, s);
    return (void *)s->startAddr;
}

void *gm_aligned_alloc(size_t alignment, size_t size) { return gm_aligned_from(gm_tls.alloc, alignment, size); }

int gm_posix_memalign(void **out, size_t alignment, size_t size) {
    if (alignment < sizeof(void *) || (alignment & (alignment - 1)) != 0)
        return EINVAL;
    int saved = errno;
    void *p = gm_aligned_alloc(alignment, size);
    if (p == NULL) {
        int e = errno;
        errno = saved;
        return e;
    }
    *out = p;
    return 0;
}

void gm_thread_flush(void) {
    gm_mcache *c = gm_tls_mcache;
    if (c != &gm_nocache)
        gm_mcache_flushAll(c);
    uint64_t oldest;
    (void)gm_mcache_reap(0, &oldest); /* and the caches exited threads left */
    gm_mcentral_drainAll();
}

size_t gm_release(void) {
    if (!atomic_load_explicit(&gm_inited, memory_order_acquire))
        return 0;
    gm_thread_flush();
    uint64_t oldest;
    (void)gm_heap_quarantine_drain(0, &oldest); /* destroyed heaps' faulting pages too */
    return gm_mheap_scavenge(~(uintptr_t)0);
}
