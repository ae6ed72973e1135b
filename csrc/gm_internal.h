/*
 * gm_internal.h: the structures of pygomalloc and the map of its modules.
 *
 * See malloc.c for the overview of the allocator.  This header is grouped by
 * source file, so it doubles as a map: each heading names the file that
 * implements what follows it.
 *
 * Glossary (Go names in parentheses):
 *   page      8 KiB, the unit of the page heap (pageSize).
 *   arena     64 MiB of address space aligned to 64 MiB (heapArena).
 *   span      a run of pages holding objects of one size class, or one large
 *             object, or free pages (mspan).
 *   class     one of 67 object sizes up to 32 KiB; class 0 means "large".
 *   mcache    the per-thread cache: a current span and a list of freed
 *             objects per class, plus a page cache (mcache, per P in Go).
 *   mcentral  per class: the spans not owned by any mcache, partial and full.
 *   mheap     the page heap: arenas, the arena map, free page runs.
 *
 * Lock order: registry lock < mcentral[c].lock < mheap.lock.  No lock is
 * held while calling the OS layer except mheap.lock when growing.
 */
#ifndef GM_INTERNAL_H
#define GM_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

#include "gomalloc.h"
#include "sizeclasses.h"

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define GM_NOINLINE __attribute__((noinline))
#define GM_INLINE static inline __attribute__((always_inline))
#define GM_HIDDEN __attribute__((visibility("hidden")))

/* Bits set in x.  The baseline x86-64 target has no popcnt instruction, and
 * gcc makes __builtin_popcountll a call into libgcc there (__popcountdi2,
 * about 20 instructions with the call); the sum of bit fields below is 12,
 * inline.  A build for a CPU that has popcnt uses it. */
GM_INLINE unsigned gm_popcount(uint64_t x) {
#ifdef __POPCNT__
    return (unsigned)__builtin_popcountll(x);
#else
    x -= (x >> 1) & 0x5555555555555555ULL;
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
    return (unsigned)((x * 0x0101010101010101ULL) >> 56);
#endif
}

/* Assertions (mimalloc-style levels).  GM_ASSERT checks an invariant at the
 * line that could break it, in debug builds (GM_DEBUG: the debug and
 * sanitizer builds of the C tests); release builds compile it away.  The
 * cheap consistency checks that stay on in release call gm_throw directly. */
#ifdef GM_DEBUG
#define GM_STR2(x) #x
#define GM_STR(x) GM_STR2(x)
#define GM_ASSERT(c) ((c) ? (void)0 : gm_throw(__FILE__ ":" GM_STR(__LINE__) ": assertion failed: " #c))
#else
#define GM_ASSERT(c) ((void)0)
#endif
GM_HIDDEN _Noreturn void gm_throw(const char *msg);
struct gm_heap;
/* Functions that read counters their owner threads write without atomics:
 * a benign race, by design (statistics), hidden from ThreadSanitizer. */
#define GM_RACY_READER __attribute__((no_sanitize("thread")))

/* Relaxed atomics for fields written by one thread and read by others (stats,
 * bitmaps read by the free fast path).  On x86-64 they compile to plain moves. */
#define LOAD_RELAXED(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE_RELAXED(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define ADD_RELAXED(p, v) STORE_RELAXED((p), LOAD_RELAXED(p) + (v))
#define ATOMIC_ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)

/* ---- Virtual memory layout (malloc.go: "Heap arenas") ---------------------- */

#define PAGE_SHIFT GM_SC_PAGE_SHIFT
#define PAGE_SIZE ((uintptr_t)1 << PAGE_SHIFT)
#define ARENA_SHIFT 26 /* heapArenaBytes = 64 MiB */
#define ARENA_SIZE ((uintptr_t)1 << ARENA_SHIFT)
#define PAGES_PER_ARENA (ARENA_SIZE / PAGE_SIZE)
/* User addresses on x86-64 Linux are below 2^47 (2^48 with a hint); the
 * arena map covers 2^48 bytes.  As in Go on amd64, arenaL1Bits is 0: the L1
 * map has one entry and the L2 map is a 4M-entry array (32 MiB of address
 * space, faulted in a page at a time as arenas appear). */
#define HEAP_ADDR_BITS 48
#define ARENA_L1_BITS 0
#define ARENA_L2_BITS (HEAP_ADDR_BITS - ARENA_SHIFT - ARENA_L1_BITS)
#define ARENA_L1_ENTRIES ((uintptr_t)1 << ARENA_L1_BITS)
#define ARENA_L2_ENTRIES ((uintptr_t)1 << ARENA_L2_BITS)
/* First arena hint, as in Go: 0x00c0<<32, upward. */
#define ARENA_HINT_BASE ((uintptr_t)0x00c0 << 32)
/* The heap grows a chunk at a time (pallocChunkBytes). */
#define CHUNK_SIZE ((uintptr_t)4 << 20)
#define PAGES_PER_CHUNK (CHUNK_SIZE / PAGE_SIZE)

#define NUM_CLASSES GM_SC_NUM_CLASSES
#define MAX_SMALL_SIZE GM_SC_MAX_SMALL_SIZE
#define MAX_NELEMS GM_SC_MAX_OBJECTS
#define BITMAP_WORDS ((MAX_NELEMS + 63) / 64)

/* ---- Object states and the state map ------------------------------------ */
/*
 * Every 16-byte granule of an arena has a state byte in its arena's state
 * map (one byte per granule: 4 MiB per 64 MiB arena, allocated beside the
 * heapArena record and touched only where small spans are).  The byte of
 * the granule where an object of a small span starts is the truth about
 * that object, which free() checks; every other byte is 0.  Every size
 * class malloc uses is a multiple of 16 bytes (the 8-byte class exists in
 * Go's table but never holds objects here), so objects start on distinct
 * granules and C's 16-byte alignment holds.
 *
 *   OBJ_FREE          0: free in its span, never handed out or given back
 *                     by a flush; or not the start of an object.
 *   OBJ_LIVE(c)       c (1 .. NUM_CLASSES-1): handed out to the program,
 *                     of size class c, from the default heap.  free()
 *                     reads the class from it.
 *   OBJ_LIVE_HEAP(c)  0x80 | c: the same, in a heap a program made
 *                     (heap.c): free() leaves its fast path, which only
 *                     knows the thread's default-heap lists, and the slow
 *                     path gives the object to the thread's cache for its
 *                     span's heap.
 *   OBJ_CACHED        freed by the program, held in some thread's free
 *                     list or a transfer cache.
 *   OBJ_TINY          a 16-byte block of tiny objects (tiny.c).
 *   OBJ_SAMPLED       live, and in the heap profile (mprof.c): free() takes
 *                     the slow path, which takes it out again.
 *
 * Transitions.  LIVE -> CACHED is the only one two threads can attempt at
 * once (two frees of one object: a double free racing with itself), so
 * free() makes it with one compare-and-swap: exactly one free wins, the
 * other is reported.  Every other transition is made by the one thread
 * that owns the object at that moment (the thread handing it out, the owner
 * of the list it is on, a flush under the class lock), with plain stores.
 *
 * What a freed object holds: nothing the allocator reads.  Free lists are
 * arrays of (object, state byte) pairs in the allocator's own metadata
 * (gm_mclass), out of the program's reach: a program that writes into
 * memory it freed, or overflows into a freed neighbour, cannot steer
 * malloc.  free() writes a keyed canary into the object's first two words
 * and malloc checks it before handing the object out again, so that such
 * writes are reported (gm_report_corruption) instead of going unnoticed;
 * malloc clears it.
 */
#define STATE_SHIFT 4 /* bytes per granule: 16 */
#define STATEMAP_BYTES (ARENA_SIZE >> STATE_SHIFT)
enum obj_state {
    OBJ_FREE = 0,
    OBJ_TINY = 0xfd,
    OBJ_SAMPLED = 0xfe,
    OBJ_CACHED = 0xff,
};
#define OBJ_LIVE(c) ((uint8_t)(c))
#define OBJ_HEAP_BIT 0x80
#define OBJ_LIVE_HEAP(c) ((uint8_t)(OBJ_HEAP_BIT | (c)))
_Static_assert((OBJ_HEAP_BIT | NUM_CLASSES) <= OBJ_TINY && NUM_CLASSES <= OBJ_HEAP_BIT, "state byte values overlap");

/* An entry of a free list: the object and its state byte. */
typedef struct gm_freeobj {
    void *p;
    uint8_t *st;
} gm_freeobj;

/* ---- Spans (mheap.go: mspan) ------------------------------------------------ */

enum span_state {
    SPAN_DEAD = 0,   /* in the fixalloc free list or a span cache, covering nothing */
    SPAN_INUSE = 1,  /* holds objects of one class, or one large object */
    SPAN_FREE = 2,   /* a free run of pages in the page heap */
};

enum span_list {
    LIST_NONE = 0,
    LIST_PARTIAL = 1, /* mcentral.partial: uncached, has free slots */
    LIST_FULL = 2,    /* mcentral.full: uncached, no free slots */
    LIST_FREE = 3,    /* mheap free run lists */
    LIST_HEAPLARGE = 4, /* a program's heap's list of large spans (heap.c) */
};

/*
 * A span.  For a small-object span of class c, object i lives at
 * startAddr + i*elemsize, for i < nelems, and its state byte is
 * objstate[i*ststep] (the state map, see above).  A small span never
 * crosses an arena boundary, so all its state bytes are in one state map.
 *
 * allocBits is Go's allocation bitmap, read by nextFreeIndex: a snapshot,
 * taken when the span was last handed to an mcache (the sweep sets bit i iff
 * object i is not OBJ_FREE), of the slots that were not free then; the
 * scan of a coloured span that comes round to its first slots sets the
 * bits of the slots it took (mspan.c's scan_wraps).  Objects freed back
 * while the span is cached wait for the next sweep.
 *
 * Invariants (checked by gm_check_heap):
 *   allocBits bits at and beyond nelems are 0;
 *   cached: every slot from skipped up to freeindex, and every slot with
 *     its allocBits bit set, was taken by the owner: allocCount counts every such slot not
 *     flushed back since, plus the slots it has not yet handed out (they are
 *     reserved for it): allocCount == nelems - (taken slots now OBJ_FREE);
 *     slots not taken are OBJ_FREE;
 *     the slots below skipped are reserved for the owner's scan to come
 *     round to (see "Colouring" in mcentral.c), and skipped is 0 when
 *     the span is not cached;
 *   uncached: allocCount == the number of objects not OBJ_FREE;
 *   list == LIST_FULL iff uncached and allocCount == nelems;
 *     list == LIST_PARTIAL iff uncached and 0 < allocCount < nelems.
 *   An uncached span with allocCount == 0 does not exist: it goes back to the heap.
 */
typedef struct gm_mspan {
    /* The first cache line holds every field malloc's span path reads
     * (the span structs are 64-byte aligned); free() reads no span. */
    uintptr_t startAddr;      /* first byte; page aligned. Immutable while in use. */
    uint64_t allocCache;      /* ~allocBits shifted so bit 0 is slot freeindex. Owner only. */
    uintptr_t freeindex;      /* slot at which nextFreeIndex resumes scanning, 0..nelems. Owner, or mcentral.lock. */
    uint8_t *objstate;        /* small spans: the state byte of object 0. Immutable while in use. */
    uint32_t nelems;          /* objects in the span. Immutable while in use. */
    uint32_t divMul;          /* for offset/elemsize as (offset*divMul)>>32; 0 for large. Immutable. */
    uint8_t sizeclass;        /* 1..NUM_CLASSES-1 for small spans; 0 for large, free and dead spans. Immutable while in use. */
    uint8_t state;            /* enum span_state. Written under mheap.lock; read racily only to report bad frees. */
    uint8_t needzero;         /* 1 if any object or page may hold non-zero bytes. Under mcentral lock (small) or owner. */
    uint8_t list;             /* enum span_list: which list the span is on. Under its owner lock. */
    uint16_t ststep;          /* elemsize / 16: state bytes from one object to the next. Immutable while in use. */
    uint8_t liveval;          /* the state byte of its live objects: OBJ_LIVE(c), or OBJ_LIVE_HEAP(c) in a program's heap. Immutable while in use. */
    uintptr_t elemsize;       /* object size; npages*PAGE_SIZE for large. Immutable while in use. */
    uintptr_t npages;         /* pages in the span. Under mheap.lock. */
    /* Second line: fields other threads write under a lock. */
    uint32_t allocCount;      /* see invariants above. Under mcentral.lock. */
    uint8_t sampled;          /* large spans: 1 if the object is in the heap profile. Set by its allocator, cleared by its freer. */
    uint16_t skipped;         /* slots [0, skipped) of a class's first span, which the scan reaches last so that its first objects start at its colour (mcentral.c). Owner, or mcentral.lock. */
    /* Spans of the 16-byte class that have hosted tiny blocks: a word per
     * slot (tiny.c).  Set once, under the class lock (read acquire);
     * returned with the span. */
    uint32_t *tinywords;
    /* A span is in use or free, never both: the fields of each state share
     * their bytes, which keeps the struct at three lines (192 bytes, 2.3%
     * of an 8 KiB span; four lines were 3.1%).  Nothing reads one state's
     * fields in the other: init_span starts the in-use pair, free_range
     * (and the quarantine, for a dead span) writes the free pair. */
    union {
        struct { /* in use (SPAN_INUSE) */
            struct gm_mcache *cachedBy; /* owning mcache, or NULL. Under mcentral.lock. */
            /* The mcache that cached it last: cacheSpan gives a cache back
             * its own partial spans first, so that two threads' objects do
             * not end up interleaved in one span (their writes, and the
             * state bytes' line, would go back and forth between the
             * cores).  A tag, never followed.  Under mcentral.lock. */
            const void *lastOwner;
        };
        struct { /* free runs (SPAN_FREE), quarantined spans (SPAN_DEAD) */
            uint64_t unusedsince; /* ms timestamp when the newest page became free. Under mheap.lock (quarantine: its lock). */
            uintptr_t nreleased;  /* free runs: pages released to the OS (scavenged bits set). Under mheap.lock. */
        };
    };
    struct gm_heap *heap;     /* the heap its objects belong to (heap.c). Immutable while in use. */
    struct gm_mspan *next;    /* list links: mcentral partial/full, heap free lists, span caches */
    struct gm_mspan *prev;
    /* allocBits: see above.  Written by the sweep under mcentral.lock while
     * no mcache owns the span, and by the owner when its scan comes round
     * (scan_wraps); read by the owner. */
    uint64_t allocBits[BITMAP_WORDS];
} __attribute__((aligned(64))) gm_mspan;
_Static_assert(sizeof(gm_mspan) == 192, "a span struct is three cache lines");
_Static_assert(offsetof(gm_mspan, npages) + sizeof(uintptr_t) <= 64, "malloc's span fields fill one line");

/* Doubly linked span lists (mcentral partial/full, heap free lists). */
static inline void gm_list_push(gm_mspan **head, gm_mspan *s) {
    s->prev = NULL;
    s->next = *head;
    if (*head != NULL)
        (*head)->prev = s;
    *head = s;
}
static inline void gm_list_unlink(gm_mspan **head, gm_mspan *s) {
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        *head = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    s->next = s->prev = NULL;
}

/* ---- Per-arena metadata (mheap.go: heapArena) ------------------------------ */

/* Lives right after its arena's state map, in one mapping (arena.c). */
typedef struct gm_heap_arena {
    /* spans[i] is the span holding page i of this arena: the in-use span
     * for every page of an in-use span; for a free run only its first and
     * last page (boundary tags for coalescing); NULL elsewhere (a fresh
     * mapping's zeros: none of it is written until a span covers it).
     * Written under mheap.lock (or by the owner of the page cache holding
     * the pages); read without a lock by the slow paths (relaxed). */
    gm_mspan *spans[PAGES_PER_ARENA];
    /* pageInUse: bit i set iff page i is the first page of an in-use span.
     * Under mheap.lock. */
    uint64_t pageInUse[PAGES_PER_ARENA / 64];
    /* scavenged: bit i set iff page i is free and released to the OS
     * (Prepared).  Under mheap.lock, or the page cache owner. */
    uint64_t scavenged[PAGES_PER_ARENA / 64];
    /* faulted: bit i set iff page i is free and PROT_NONE (sysFault, the
     * fault_on_free debug option); implies scavenged.  Under mheap.lock. */
    uint64_t faulted[PAGES_PER_ARENA / 64];
    /* zeroedBase: offset in bytes below which pages may have been used;
     * memory at and above it has never been handed out, so it is zero.
     * Only grows.  Under mheap.lock. */
    uintptr_t zeroedBase;
    uintptr_t base; /* arena start address. Immutable. */
} gm_heap_arena;

/* ---- mcache (mcache.go) ---------------------------------------------------- */

/*
 * One size class in an mcache: the fields malloc and free touch, in 32
 * bytes.  The free list is an array of listmax (object, state byte) pairs
 * ending at `end`, filled from the bottom, with a NULL pair just below it
 * (the sentinel that an empty list pops).  Each fast path bumps one
 * counter: free counts pushes, malloc raises the bound the pushes may
 * reach.  Both count in LIST_UNIT (the bytes of an entry) per object, so
 * that their difference is the byte offset of the list's top from `end`.
 * With nflush the objects flushed from the list, ever, and nrecv those it
 * received whole from the transfer cache, in objects:
 *   limit/LIST_UNIT == listmax + (objects malloc popped) + nflush - nrecv, so
 *   list length == (npush - limit)/LIST_UNIT + listmax, the top entry is at
 *   (char *)end + npush - limit - LIST_UNIT, and a push has room iff npush < limit;
 *   mallocs == (limit/LIST_UNIT - listmax - nflush + nrecv) + nspan,
 *   frees == npush/LIST_UNIT.
 * The entries of an mcache's cls[] that are not size classes (0, and every
 * state byte value that is not OBJ_LIVE) have npush == limit == 0 and an
 * empty list: free() indexes cls[] by the state byte it reads, and any
 * byte but OBJ_LIVE(c) lands on an entry without room, i.e. the slow path.
 */
#define LIST_UNIT ((uint64_t)sizeof(gm_freeobj))
typedef struct gm_mclass {
    gm_freeobj *end;     /* one past the list's array; end[-listmax-1] is the sentinel. Owner only. */
    uint64_t npush;      /* LIST_UNIT per object pushed on the list (freed on this thread), ever. Owner writes, others read racily. */
    uint64_t limit;      /* see above; 0 in the entries that are not classes. Owner writes, others read racily. */
    gm_mspan *span;      /* span being allocated from; &gm_emptyspan when none. Owner only. */
} gm_mclass;
#define MCACHE_CLS 256   /* one entry per state byte value */

/* Per-thread page cache (mpagecache.go): 64 pages taken from the heap in one
 * run, handed out to small spans without the heap lock.  Owner only. */
typedef struct gm_pagecache {
    uintptr_t base;  /* first page; 0 if empty */
    uint64_t free;   /* bit i: page base+i*PAGE_SIZE is free in the cache */
    uint64_t scav;   /* bit i: that page is released to the OS (implies free) */
    uint64_t zero;   /* bit i: that page is known to hold only zeros (implies free) */
    uint64_t nocross; /* bit i: pages i-1 and i are in different arenas (no small span straddles them) */
} gm_pagecache;
#define PAGE_CACHE_PAGES 64
#define PAGE_CACHE_MAX_SPAN (PAGE_CACHE_PAGES / 4) /* small spans come from the cache */

#define SPAN_CACHE_MAX 16

typedef struct gm_mcache {
    gm_mclass cls[MCACHE_CLS];      /* must come first: malloc's size table holds offsets of cls[c] */
    uint64_t nspan[NUM_CLASSES];    /* objects malloc took from spans, ever. Owner writes, others read racily. */
    uint64_t nflush[NUM_CLASSES];   /* objects taken off the list by flushes, ever. Same. */
    uint64_t nrecv[NUM_CLASSES];    /* objects put on the list from the transfer cache, ever. Same. */
    uint32_t ntcown[NUM_CLASSES];   /* its own batches in the class's transfer cache: a hint, exact when takeBatch last looked, high after others drained them. Owner only. */
    uint32_t listmax[NUM_CLASSES];  /* bound on each list's length: listhome, or more while the list is grown (mcache.c, "Growing lists"). Owner writes, others read racily. */
    uint32_t listhome[NUM_CLASSES]; /* the bound of the list's array in the lists block (tcache_bytes). Fixed at creation. */
    uint32_t lastdrains[NUM_CLASSES]; /* nrecv + nspan (truncated) at the class's last overflow: if they moved since, the list ran empty in between. Owner only. */
    uint32_t trimdrains[NUM_CLASSES]; /* the same at the grown list's growth or last trim pass. Owner only. */
    uint64_t grown;                 /* bytes of objects and entries the grown lists may hold above their home bounds, in all. Owner only. */
    uint64_t trim_at;               /* gm_now_ms() at the last trim pass over the grown lists. Owner only. */
    gm_freeobj *lists;              /* the lists' home arrays, one block (a grown list's array is a mapping of its own). Owner only. */
    gm_pagecache pcache;
    gm_mspan *spancache[SPAN_CACHE_MAX]; /* dead span structs for page-cache spans. Owner only. */
    int nspancache;
    int64_t next_sample;            /* bytes to allocate before the next heap profile sample. Owner only. */
    uintptr_t tinyblock[4];         /* current tiny block per slot size 1, 2, 4, 8 (0: none). Owner only. */
    uint32_t *tinyword[4];          /* its word (tiny.c). Owner only. */
    uint8_t tinynext[4];            /* its next slot to hand out. Owner only. */
    uint64_t tiny_mallocs, tiny_frees; /* tiny objects allocated / freed on this thread, ever. Owner writes, others read racily. */
    uint64_t slow_frees;            /* frees of small objects that took free's slow path (full list, sampled...). Owner only. */
    uint8_t claiming;               /* 1 from before free's read of gm_plain_owner to after its plain claim's store (plain owner); gm_plain_end waits for 0. Owner writes, gm_plain_end reads (atomic). */
    uint64_t rand;                  /* xorshift state for the sampling intervals. Owner only. */
    /* Heaps (heap.c).  A thread's cache for the default heap is on the
     * registry; its caches for the heaps a program made hang off it: each
     * has its lists in the upper half of cls[] (clsbase 0x80, so that what
     * malloc's fast path writes into the state bytes, the index of the
     * entry it popped, is OBJ_LIVE_HEAP), and is reached by its owner
     * through heaptab, by the heap's destroy through the heap's list. */
    struct gm_heap *heap;           /* the heap this cache allocates from. Written by its owner (creation) or by a heap's teardown, under the heap's lock. */
    uint8_t clsbase;                /* 0, or OBJ_HEAP_BIT for a heap cache. Immutable. */
    int busy;                       /* heap caches: > 0 while the owner works on it (heap.c's enter/leave; they nest). Owner writes, atomic. */
    bool inscope;                   /* heap caches: the owner's default heap is this cache's (a scope: busy stays raised). Set under heaps_lock, atomic. */
    uint32_t heapgen;               /* heap caches: the heap's generation when made. Immutable. */
    struct gm_mcache *owner;        /* heap caches: the thread's default-heap cache (page cache, heaptab). Immutable. */
    struct gm_mcache *hnext;        /* heap caches: the heap's list of caches. Under the heap's lock. */
    struct gm_mcache *sibling;      /* heap caches: the owner's list of its heap caches (and of spare ones). Owner only. */
    struct gm_mcache **heaptab;     /* default caches: heap id -> this thread's cache for it (may be stale: check). Owner only. */
    struct gm_mcache *heapcaches;   /* default caches: this thread's heap caches, linked by sibling. Owner only. */
    bool linked;                    /* on the registry list. Under registry lock. */
    bool abandoned;                 /* its thread exited and left it whole, for the next new thread (mcache.c). Under registry lock. */
    uint64_t abandoned_since;       /* gm_now_ms() when it was abandoned. Under registry lock. */
    struct gm_mcache *next, *prev;  /* registry list. Under registry lock. */
    struct gm_mcache *anext;        /* abandoned list. Under registry lock. */
} gm_mcache;
_Static_assert(offsetof(gm_mcache, cls) == 0, "malloc finds cls[c] at c * sizeof(gm_mclass)");
/* mcaches are aligned to the size of cls[] (8 KiB): malloc's fast path
 * takes the index of the entry it popped from, and the state byte it
 * writes, from the entry's address. */
#define MCACHE_ALIGN (MCACHE_CLS * sizeof(gm_mclass))
_Static_assert(MCACHE_ALIGN == 8192, "cls[] fills 8 KiB");
/* The cache holding entry m (m may point into the middle of a cache). */
GM_INLINE gm_mcache *gm_mcache_of(const void *m) { return (gm_mcache *)((uintptr_t)m & ~(uintptr_t)(MCACHE_ALIGN - 1)); }
/* Class sc's entry of cache c. */
GM_INLINE gm_mclass *gm_mclass_of(gm_mcache *c, uint8_t sc) { return &c->cls[c->clsbase + sc]; }

/* The length of a list with these counters (see gm_mclass), clamped to
 * 0..listmax so that a racy read by another thread stays in range. */
static inline uint32_t gm_list_len(uint64_t npush, uint64_t limit, uint32_t listmax) {
    int64_t len = (int64_t)(npush - limit) / (int64_t)LIST_UNIT + listmax;
    return len < 0 ? 0 : len > listmax ? listmax : (uint32_t)len;
}
/* Objects a cache has allocated of one class, ever (see gm_mclass), from
 * its counters as the caller read them. */
static inline uint64_t gm_list_mallocs(uint64_t limit, uint32_t listmax, uint64_t nflush, uint64_t nrecv, uint64_t nspan) {
    return limit / LIST_UNIT - listmax - nflush + nrecv + nspan;
}
/* The first entry of a list (the oldest), and the entry a push fills. */
static inline gm_freeobj *gm_list_base(const gm_mclass *m, uint32_t listmax) { return m->end - listmax; }
static inline gm_freeobj *gm_list_slot(const gm_mclass *m) {
    return (gm_freeobj *)((char *)m->end + (int64_t)(m->npush - m->limit));
}

/* ---- Off-heap metadata (fixalloc.c) ---------------------------------------- */

typedef struct gm_fixalloc {
    size_t size;        /* object size */
    void *list;         /* free objects */
    uintptr_t chunk;    /* current chunk */
    size_t nchunk;      /* bytes left in chunk */
    uint64_t inuse;     /* bytes handed out and not freed */
    uint64_t *sys;      /* stat credited with chunk memory */
    size_t align;       /* object alignment: 64, or a larger power of two */
} gm_fixalloc;

/* ---- mcentral (mcentral.go) ------------------------------------------------ */

/* Transfer cache: a list a thread flushed, kept whole for the next thread
 * whose list runs dry (tcmalloc's transfer cache; Go needs none, its
 * sweeper frees in bulk).  A batch is a copy of the list's entries; the
 * objects stay OBJ_CACHED. */
#define TC_BATCHES 32     /* the most batches a class holds (tc_room: one per thread with a cache, at least TC_BATCHES_MIN) */
#define TC_BATCHES_MIN 16 /* the batches a class holds with up to 16 threads */
#define TC_BYTES (128u << 10) /* bytes of objects a class holds in TC_BATCHES_MIN batches; in n, n/TC_BATCHES_MIN times as many */
#define TC_BYTES_MAX (TC_BYTES / TC_BATCHES_MIN * TC_BATCHES)
typedef struct gm_tcbatch {
    gm_freeobj *objs; /* n entries; the buffer holds gm_list_cap[class]. Under the class lock. */
    uint32_t n;
    uint64_t since;   /* gm_now_ms() when the batch came in */
    const void *owner; /* the cache that flushed it, which alone takes it back (memory its
                        * thread's core wrote last); NULL: a consumer's (a cache that frees
                        * this class and hardly allocates it), for any thread.  A tag, never followed */
} gm_tcbatch;

typedef struct gm_mcentral {
    pthread_mutex_t lock;
    struct gm_heap *heap; /* the heap whose spans of this class it holds. Immutable. */
    uint8_t sizeclass;    /* Immutable. */
    gm_mspan *partial; /* uncached spans with free slots (list == LIST_PARTIAL). */
    gm_mspan *full;    /* uncached spans without free slots (list == LIST_FULL). */
    uint64_t nspans;   /* in-use spans of this class, cached or not. Under lock. */
    /* TC_BATCHES descriptors, allocated by the class's first batch (NULL
     * before; ntc is 0 then): inline, they made every heap's centrals 84
     * KiB, all of it written at the heap's creation, where most classes
     * never hold a batch.  tc[0..ntc) hold batches, oldest first; every
     * tc[i].objs is a buffer once allocated.  Under lock. */
    gm_tcbatch *tc;
    gm_fixalloc tinywordalloc; /* tinywords arrays of this class's spans (the 16-byte class only). Under lock. */
    uint32_t ntc;      /* Under lock; read racily by malloc to skip the lock when 0. */
    uint32_t tc_objects; /* objects in tc, at most tc_room's bytes of them when they came in. Under lock. */
    uint32_t nany;     /* batches in tc with no owner. Under lock; read racily by malloc to skip the lock when 0 and none is its own. */
    char pad[64];
} gm_mcentral;
/* Small: every heap has NUM_CLASSES of them, written at its creation. */
_Static_assert(sizeof(gm_mcentral) <= 256, "gm_mcentral grew: keep what few classes use out of line");

/* ---- The heap (mheap.go) --------------------------------------------------- */

#define FREE_EXACT_LISTS 128 /* free[n] holds runs of exactly n pages, n < 128 */
#define FREE_LARGE_LISTS 40  /* large[k] holds runs with 2^(k+7) <= npages < 2^(k+8) */

typedef struct gm_mheap_s {
    pthread_mutex_t lock;
    gm_mspan *free[FREE_EXACT_LISTS];    /* free runs by exact length. Under lock. */
    gm_mspan *large[FREE_LARGE_LISTS];   /* free runs of >= 128 pages by log2. Under lock. */
    uint64_t freemask[2];            /* bit n: free[n] non-empty. Under lock. */
    uint64_t largemask;              /* bit k: large[k] non-empty. Under lock. */
    uintptr_t curArenaBase, curArenaEnd; /* reserved, not yet mapped address space. Under lock. */
    struct gm_mspan *claimed;        /* free runs a scavenger took off the lists to release without the lock (next-linked). Under lock. */
    uint64_t quarantined_pages;      /* pages of destroyed heaps' spans in the quarantine (heap.c), faulted. Under lock. */
    uintptr_t arenaHint;             /* next address to try when reserving. Under lock. */
    gm_fixalloc spanalloc;           /* mspan structs. Under lock. */
    gm_fixalloc cachealloc;          /* mcache structs. Under registry lock. */
    /* Accounting, all under lock unless said. */
    uint64_t heap_reserved, heap_sys, heap_inuse, heap_released;
    uint64_t mspan_sys, mcache_sys, other_sys;
    uint64_t num_arenas;
    uint64_t large_mallocs, large_frees, large_bytes_alloc, large_bytes_freed;
    uint64_t scavenge_cycles, scavenged_bytes;
} gm_mheap_t;

/* ---- Global state ----------------------------------------------------------- */

extern GM_HIDDEN gm_mheap_t gm_mheap;
extern GM_HIDDEN gm_mcentral gm_central[NUM_CLASSES];
extern GM_HIDDEN gm_mspan gm_emptyspan;
extern GM_HIDDEN struct gm_mcache gm_nocache;
extern GM_HIDDEN uintptr_t gm_phys_page_size, gm_huge_page_size;

/* ---- mem_linux.c: the OS layer (None, Reserved, Prepared, Ready) ----------- */

struct gm_sysstats {
    uint64_t n[6], bytes[6]; /* indexed by enum sys_op; updated atomically */
};
enum sys_op { SYS_RESERVE, SYS_MAP, SYS_USED, SYS_UNUSED, SYS_FREE, SYS_FAULT };
extern GM_HIDDEN struct gm_sysstats gm_sysstats;

GM_HIDDEN void gm_sys_init(void);
/* Milliseconds on the monotonic clock: the ages of free runs and batches. */
GM_HIDDEN uint64_t gm_now_ms(void);
GM_HIDDEN void *gm_sysReserve(void *hint, size_t n);     /* None -> Reserved */
GM_HIDDEN void *gm_sysReserveAligned(void *hint, size_t n, size_t align);
GM_HIDDEN int gm_sysMap(void *v, size_t n);              /* Reserved -> Prepared */
GM_HIDDEN void gm_sysUsed(void *v, size_t n);            /* Prepared -> Ready */
GM_HIDDEN bool gm_sysUnused(void *v, size_t n);          /* Ready -> Prepared; false: still Ready */
GM_HIDDEN void gm_sysFree(void *v, size_t n);            /* any -> None */
GM_HIDDEN bool gm_sysFault(void *v, size_t n);           /* Ready/Prepared -> Reserved; false: unchanged */
GM_HIDDEN void *gm_sysAlloc(size_t n);                   /* None -> Ready, for metadata */

/* ---- fixalloc.c: off-heap metadata ---------------------------------------- */

GM_HIDDEN void *gm_persistentalloc(size_t size, size_t align, uint64_t *sysStat);
GM_HIDDEN void gm_fixalloc_init(gm_fixalloc *f, size_t size, uint64_t *sysStat);
GM_HIDDEN void gm_fixalloc_init_aligned(gm_fixalloc *f, size_t size, size_t align, uint64_t *sysStat);
GM_HIDDEN void *gm_fixalloc_alloc(gm_fixalloc *f);
GM_HIDDEN void gm_fixalloc_free(gm_fixalloc *f, void *p);
GM_HIDDEN void gm_persistent_lock(void);
GM_HIDDEN void gm_persistent_unlock(void);
GM_HIDDEN void gm_persistent_reinit(void);

/* ---- arena.c: arenas and the arena map -------------------------------------- */

/* The L2 arena map (the L1 map has one entry, so it is this array).  An
 * entry is written once, under mheap.lock, when memory in its arena is
 * first mapped, and read without a lock (relaxed; the arena's metadata is
 * published with a release store).  A static array: 32 MiB of zero-fill
 * address space, touched a page per 512 arenas, and free() needs no load to
 * find it.
 *
 * An entry is 0 for no arena, else the arena's state map biased by the
 * arena's first granule (gm_arena_map_entry): entry + (a >> STATE_SHIFT)
 * is the state byte of address a, one addition from the address, which is
 * all free() needs.  The heapArena record follows the state map. */
extern GM_HIDDEN uintptr_t gm_arena_map[ARENA_L2_ENTRIES];

GM_INLINE uintptr_t gm_arena_map_entry(uintptr_t statemap, uintptr_t base) { return statemap - (base >> STATE_SHIFT); }
GM_INLINE uintptr_t gm_arena_map_load(uintptr_t a) {
    uintptr_t i = a >> ARENA_SHIFT;
    if (unlikely(i >= ARENA_L2_ENTRIES))
        return 0;
    return LOAD_RELAXED(&gm_arena_map[i]);
}
/* The state byte of address a, whose arena map entry is e (nonzero). */
GM_INLINE uint8_t *gm_state_at(uintptr_t e, uintptr_t a) { return (uint8_t *)(e + (a >> STATE_SHIFT)); }
/* calloc of up to this many bytes: the malloc fast path and a memset
 * (gm_calloc, gm_py_calloc); larger ones go through malloc_slow, which
 * skips the memset of fresh pages.  Python's callocs are nearly all this
 * small: under the preload library each one took the slow path. */
#define GM_CALLOC_FAST GM_SC_SMALL_SIZE_MAX

/* Addresses that cannot start an object: outside the 48 bits the arena
 * map covers, or off a 16-byte granule (every object starts on one).  One
 * test for both, before the arena map is indexed. */
#define GM_NOT_GRANULE (~(((uintptr_t)1 << HEAP_ADDR_BITS) - 1) | ((1u << STATE_SHIFT) - 1))

/* A live small object of class c resized to n bytes (0 < n) stays where
 * it is: n keeps its class, or shrinks it by less than 1/4. */
GM_INLINE bool gm_small_stays(unsigned c, size_t n) {
    size_t cap = gm_class_to_size[c];
    return n <= cap && (n > gm_class_to_size[c - 1] || n > cap - cap / 4);
}
/* The heapArena record of the arena holding address a, or NULL. */
GM_INLINE gm_heap_arena *gm_arena_of(uintptr_t a) {
    uintptr_t e = gm_arena_map_load(a);
    if (unlikely(e == 0))
        return NULL;
    return (gm_heap_arena *)(e + ((a & ~(ARENA_SIZE - 1)) >> STATE_SHIFT) + STATEMAP_BYTES);
}
/* spanOf: the span map entry for address a, i.e. the span holding it, or
 * NULL (outside the arenas, or a page no span covers).  Any address may be
 * asked. */
GM_INLINE gm_mspan *gm_span_of(uintptr_t a) {
    gm_heap_arena *ha = gm_arena_of(a);
    if (unlikely(ha == NULL))
        return NULL;
    return LOAD_RELAXED(&ha->spans[(a >> PAGE_SHIFT) & (PAGES_PER_ARENA - 1)]);
}
/* The state byte of address a, which lies in an arena. */
GM_INLINE uint8_t *gm_state_of(uintptr_t a) { return gm_state_at(gm_arena_map_load(a), a); }
GM_HIDDEN void gm_arena_init(void);
/* Reserve and map address space for at least n bytes; returns the base of a
 * newly mapped run, or 0.  Called with mheap.lock held. */
GM_HIDDEN uintptr_t gm_arena_grow(uintptr_t n, uintptr_t *got);
GM_HIDDEN void gm_set_spans(gm_mspan *s, uintptr_t base, uintptr_t npages, gm_mspan *v);
/* The per-process secret of the free check, never 0 (arena.c, from getrandom). */
extern GM_HIDDEN uint64_t gm_secret;

/* ---- pagealloc.c: the page heap --------------------------------------------- */

GM_HIDDEN void gm_pages_init(void);
/* Allocate a span of npages; sizeclass 0 for a large object.  Returns the
 * span in state SPAN_INUSE with needzero set, or NULL when out of memory
 * or over the hard limit.  Spans of fewer than PAGE_CACHE_MAX_SPAN pages
 * come from c's page cache. */
GM_HIDDEN gm_mspan *gm_mheap_alloc(gm_mcache *c, uintptr_t npages, uint8_t sizeclass, struct gm_heap *hp);
/* A large span whose start is aligned to align (a power of two > PAGE_SIZE). */
GM_HIDDEN gm_mspan *gm_mheap_alloc_aligned(uintptr_t npages, uintptr_t align, struct gm_heap *hp);
/* A destroyed heap's span (state bytes cleared, on no list) goes back to
 * the page heap, or, faulted, to the quarantine. */
GM_HIDDEN void gm_mheap_release_heap_span(gm_mspan *s, bool fault);
/* A quarantined span's pages join the free runs (faulted, released). */
GM_HIDDEN void gm_mheap_free_faulted(gm_mspan *s);
GM_HIDDEN void gm_mheap_free(gm_mspan *s);
/* Grow the unsampled large object p (span s) in place to npages, from the
 * free run after it or the calling thread's page cache: true if it did
 * (realloc). */
GM_HIDDEN bool gm_mheap_grow_large(gm_mspan *s, uintptr_t p, uintptr_t npages);
/* Shrink it in place to npages > 0, the rest of its pages freed: true if it
 * did (realloc). */
GM_HIDDEN bool gm_mheap_shrink_large(gm_mspan *s, uintptr_t p, uintptr_t npages);
GM_HIDDEN int gm_mheap_free_large(gm_mspan *s, uintptr_t p);
GM_HIDDEN void gm_pagecache_flush(gm_mcache *c);
/* Scavenge free pages until `want` bytes were released (all if want == ~0). */
GM_HIDDEN uintptr_t gm_mheap_scavenge(uintptr_t want);
GM_HIDDEN uintptr_t gm_mheap_scavenge_aged(uintptr_t want, uint64_t min_age_ms);
GM_HIDDEN int gm_mheap_check_pages(uint64_t cached_pages, uint64_t cached_scav);
/* Is there a free run with unreleased pages?  *oldest: the earliest
 * unusedsince among them. */
GM_HIDDEN bool gm_mheap_unreleased_free(uint64_t *oldest);
GM_HIDDEN void gm_mheap_fork_child(void);

/* ---- mspan.c: span bitmaps --------------------------------------------------- */

GM_HIDDEN void gm_span_init_small(gm_mspan *s, uint8_t sizeclass);
GM_HIDDEN uintptr_t gm_span_nextFreeIndex(gm_mspan *s);
GM_HIDDEN void gm_span_refillAllocCache(gm_mspan *s, uintptr_t whichByte);
/* The bits of word w of a bitmap that stand for slots in [from, to), from < to. */
GM_INLINE uint64_t gm_bits_between(uintptr_t w, uintptr_t from, uintptr_t to) {
    uint64_t m = ~(uint64_t)0;
    if (w == from / 64)
        m &= ~(uint64_t)0 << (from % 64);
    if (w == (to - 1) / 64 && to % 64 != 0)
        m &= ((uint64_t)1 << (to % 64)) - 1;
    return m;
}
GM_INLINE bool gm_bit(const uint64_t *bits, uintptr_t i) {
    return (LOAD_RELAXED(&bits[i / 64]) >> (i % 64)) & 1;
}
GM_INLINE uintptr_t gm_span_index(const gm_mspan *s, uintptr_t a) {
    return (uintptr_t)(((uint64_t)(a - s->startAddr) * s->divMul) >> 32);
}
/* Is a the start of a slot of small span s?  With divMul = ceil(2^32/size),
 * offset*divMul has its low 32 bits below divMul exactly when size divides
 * offset (for offsets below 2^32/size; tests/test_sizeclass.c checks every
 * offset of every class).  False for large and free spans (divMul 0). */
GM_INLINE bool gm_span_is_slot(const gm_mspan *s, uintptr_t a) {
    return (uint32_t)((uint64_t)(a - s->startAddr) * s->divMul) < s->divMul;
}
/* The state byte of object i of small span s. */
GM_INLINE uint8_t *gm_objstate_ptr(const gm_mspan *s, uintptr_t i) { return s->objstate + i * s->ststep; }
GM_INLINE uint8_t gm_objstate(const gm_mspan *s, uintptr_t i) { return LOAD_RELAXED(gm_objstate_ptr(s, i)); }
GM_INLINE void gm_set_objstate(uint8_t *st, uint8_t v) { STORE_RELAXED(st, v); }

/* The free check: free() writes the per-process secret into the first
 * word of every freed object and 0 into the second, malloc checks that
 * their xor is still the secret before it hands the object out again (one
 * load, one xor with memory, one compare), and so does a flush before
 * the object goes back to its span, so a write into either word after
 * free is caught whichever way the object leaves the list.  A program cannot write the secret by accident,
 * nor an attacker without reading a freed object first (which would only
 * let him hide a write after free: the free lists are out of his reach
 * whatever he writes). */
GM_INLINE void canary_set(void *p) {
    ((uint64_t *)p)[0] = gm_secret;
    ((uint64_t *)p)[1] = 0;
}
GM_INLINE bool canary_ok(const void *p) { return (((const uint64_t *)p)[0] ^ ((const uint64_t *)p)[1]) == gm_secret; }

/* A slot handed out from a span holds no canary: every way back to the
 * spans (free_objs_locked) checks the canary and clears both words, and a
 * heap's destroy clears those of the objects on its lists.  Debug builds
 * check it (a fresh page, needzero 0, is zero and must not be touched:
 * that would fault it in). */
#define GM_ASSERT_NO_CANARY(s, p) GM_ASSERT(!LOAD_RELAXED(&(s)->needzero) || !canary_ok(p))

/* nextFreeFast (malloc.go): the next free object of the cached span if the
 * allocCache has one, else 0.  Go's code, nearly word for word, plus the
 * state byte, live: the span's liveval, which the caller has in a register
 * (the index of its cache entry, see gm_mcache) where the span's would be
 * one more load. */
GM_INLINE void *gm_nextFreeFast(gm_mspan *s, uint8_t live) {
    uint64_t cache = s->allocCache;
    if (likely(cache != 0)) {
        unsigned theBit = (unsigned)__builtin_ctzll(cache);
        uintptr_t result = s->freeindex + theBit;
        if (likely(result < s->nelems)) {
            uintptr_t freeidx = result + 1;
            if (unlikely(freeidx % 64 == 0 && freeidx != s->nelems))
                return NULL;
            s->allocCache = (cache >> theBit) >> 1;
            s->freeindex = freeidx;
            GM_ASSERT(live == s->liveval);
            gm_set_objstate(gm_objstate_ptr(s, result), live);
            void *p = (void *)(s->startAddr + result * s->elemsize);
            GM_ASSERT_NO_CANARY(s, p);
            if (p == NULL) /* never (a span's start is not 0): lets the caller's test of the result fold away */
                __builtin_unreachable();
            return p;
        }
    }
    return NULL;
}

/* Threads with a cache now (mcache.c); read racily. */
GM_HIDDEN uint32_t gm_mcache_threads(void);

/* ---- mcentral.c ------------------------------------------------------------- */

/* Give mcache c a span of class sc of c's heap with free slots (cacheSpan). */
GM_HIDDEN gm_mspan *gm_mcentral_cacheSpan(gm_mcache *c, uint8_t sc);
/* Give a cached span back (uncacheSpan). */
GM_HIDDEN void gm_mcentral_uncacheSpan(gm_mspan *s);
/* Return n freed objects of mc's class and heap to their spans (where a
 * freed object goes); returns how many went back.  Entries that fail
 * validation are reported and skipped. */
GM_HIDDEN uint64_t gm_mcentral_freeObjs(gm_mcentral *mc, const gm_freeobj *objs, uint32_t n);
/* n freed objects leave an mcache: copied whole into mc's transfer cache
 * if it has room (returns true), else back to the spans.  owner: the
 * cache, or NULL for a batch any thread may take (see gm_tcbatch). */
GM_HIDDEN bool gm_mcentral_freeBatch(gm_mcentral *mc, const gm_freeobj *objs, uint32_t n, const void *owner);
/* Copy the newest batch of mc's transfer cache that cache owner may take
 * (its own, else one with no owner) into out if it holds at most max
 * objects; returns their number (0: none taken), and owner's batches left
 * in *own_left. */
GM_HIDDEN uint32_t gm_mcentral_takeBatch(gm_mcentral *mc, gm_freeobj *out, uint32_t max, const void *owner,
                                         uint32_t *own_left);
/* Empty every transfer cache into the spans (gm_release). */
GM_HIDDEN void gm_mcentral_drainAll(void);
/* Empty mc's transfer cache into the spans. */
GM_HIDDEN void gm_mcentral_drain(gm_mcentral *mc);
/* Move the batches that came in at least age_ms ago to the spans (the
 * scavenger).  Returns whether batches remain, the oldest's arrival in
 * *oldest. */
GM_HIDDEN bool gm_mcentral_drainAged(uint64_t age_ms, uint64_t *oldest);
/* Bytes of objects in the transfer caches. */
GM_HIDDEN uint64_t gm_mcentral_tc_bytes(void);
/* Check every object in heap hp's transfer caches, counting them in *n;
 * returns violations. */
GM_HIDDEN int gm_mcentral_check_tc(struct gm_heap *hp, uint64_t *n);
/* Check span s against the invariants; cached says whether an mcache owns
 * it.  Returns violations. */
GM_HIDDEN int gm_span_check(const gm_mspan *s, bool cached);
GM_HIDDEN int gm_mcentral_check_lists(struct gm_heap *hp, uint64_t *nuncached);
/* Is entry f a cached object of mc's class and heap (its state byte, its span)? */
GM_HIDDEN bool gm_freeobj_valid(const gm_freeobj *f, const gm_mcentral *mc);

/* ---- mcache.c ------------------------------------------------------------- */

/* The capacity of every mcache's list of class sc (tcache_bytes at start-up). */
extern GM_HIDDEN uint32_t gm_list_cap[NUM_CLASSES];
GM_HIDDEN void gm_mcache_init(void);
GM_HIDDEN gm_mcache *gm_mcache_create(void);
/* A cache struct and lists block for a heap cache (gm_mcache_reset_lists
 * makes its lists), and back. */
GM_HIDDEN gm_mcache *gm_mcache_new_heap_cache(void);
GM_HIDDEN void gm_mcache_free_heap_cache(gm_mcache *hc);
/* Every list of c empty, at cls[clsbase + class], counters at zero. */
GM_HIDDEN void gm_mcache_reset_lists(gm_mcache *c, uint8_t clsbase);
GM_HIDDEN void *gm_mcache_refill(gm_mcache *c, uint8_t sc);
GM_HIDDEN void gm_mcache_flushClass(gm_mcache *c, uint8_t sc, uint32_t keep);
/* Class sc's list is full: grow it rather than flush it, if it ran empty
 * since it was last full and the budget allows.  Returns whether it has
 * room now.  (mcache.c, "Growing lists".) */
GM_HIDDEN bool gm_mcache_grow(gm_mcache *c, uint8_t sc);
/* Shrink the lists that grew and have not run empty since the last pass,
 * at most once per decay_ms.  c->grown != 0. */
GM_HIDDEN void gm_mcache_trim(gm_mcache *c);
GM_HIDDEN bool gm_mcache_receive(gm_mcache *c, uint8_t sc);
GM_HIDDEN void gm_mcache_flushAll(gm_mcache *c);
/* Flush and recycle the caches abandoned at least age_ms ago (the
 * scavenger; gm_release and gm_thread_flush with 0).  Returns whether
 * abandoned caches remain, the oldest's abandonment time in *oldest. */
GM_HIDDEN bool gm_mcache_reap(uint64_t age_ms, uint64_t *oldest);
GM_HIDDEN void gm_mcache_fork_prepare(void);
GM_HIDDEN void gm_mcache_fork_parent(void);
GM_HIDDEN void gm_mcache_fork_child(void);
/* Registry of live mcaches and the counters of dead ones, for stats. */
GM_HIDDEN void gm_registry_lock(void);
GM_HIDDEN void gm_check_begin(void);
GM_HIDDEN void gm_check_end(void);
GM_HIDDEN void gm_drain_begin(void); /* the transfer caches' drain and the heap check wait for each other (mcache.c) */
GM_HIDDEN void gm_drain_end(void);
GM_HIDDEN void gm_registry_unlock(void);
GM_HIDDEN gm_mcache *gm_registry_first(void);
extern GM_HIDDEN uint64_t gm_dead_nmalloc[NUM_CLASSES], gm_dead_nfree[NUM_CLASSES];
/* Set in a child of fork() when other threads' caches were orphaned. */
extern GM_HIDDEN bool gm_fork_orphans;

/* The calling thread's caches.  free is its default-heap cache, where
 * free()'s fast path pushes (the only objects it takes, OBJ_LIVE(c), are
 * the default heap's).  alloc is where its mallocs go: the same cache, or,
 * while a heap is the thread's default (gm_heap_set_default), that heap's
 * cache biased by OBJ_HEAP_BIT entries, so that malloc's size table (byte
 * offsets of default-heap entries) lands on the heap cache's entries.
 * gm_mcache_of(alloc) is the cache itself. */
struct gm_tls {
    gm_mcache *alloc;
    gm_mcache *free;
};
extern GM_HIDDEN __thread struct gm_tls gm_tls;
#define gm_tls_mcache (gm_tls.free)
/* The biased pointer of heap cache c for gm_tls.alloc (c itself for a
 * default-heap cache). */
GM_INLINE gm_mcache *gm_alloc_ptr(gm_mcache *c) { return (gm_mcache *)((char *)c + c->clsbase * sizeof(gm_mclass)); }
/* Set on a thread whose cache was handed back at exit: its later frees go
 * straight to the spans instead of creating a cache that would leak. */
extern GM_HIDDEN __thread bool gm_tls_exiting;

/*
 * The plain owner (mcache.c, "One freeing thread"): while one thread is
 * the only one that has freed, its frees claim state bytes with a plain
 * store, not a compare-and-swap: no other thread can race for them.  This
 * is its default-heap cache, NULL once a second thread frees or gets a
 * cache (for good), or if the kernel has no membarrier.  Set under the
 * registry lock, cleared by gm_plain_end; read relaxed by free's fast path.
 */
extern GM_HIDDEN gm_mcache *gm_plain_owner;
/* The calling thread may claim a state byte next: unless it is the plain
 * owner (or there is none), end the plain owner's plain claims first. */
GM_HIDDEN void gm_plain_end(void);
/* Tests: make the calling thread the plain owner again (it must have a
 * cache, and no other thread may free meanwhile); false if membarrier is
 * not available. */
GM_HIDDEN bool gm_debug_plain_reset(void);

/* ---- heap.c: heaps programs hold ------------------------------------------ */

/*
 * A heap: spans and caches of its own on the same page heap, arenas and
 * size classes as everything else (see heap.c).  The default heap
 * (gm_default_heap, id 0) is where malloc allocates; a program makes
 * others with gm_heap_new and hands them out through opaque handles
 * (slot + generation), so that a destroyed heap's handle is refused,
 * never followed.
 */
#define MAX_HEAPS 4096
typedef struct gm_heap {
    gm_mcentral central[NUM_CLASSES]; /* its spans of each class no cache owns, and its transfer caches */
    uint32_t id;                /* slot in the heap table; 0: the default heap. Immutable while alive. */
    uint32_t gen;               /* the slot's generation (handles carry it). Immutable while alive. */
    int dead;                   /* destroy/delete has begun: no work on it may begin. Atomic. */
    bool scoped;                /* was some thread's default heap (gm_heap_set_default), or gm_heap_keep_live. Atomic. */
    bool fault_on_destroy;      /* destroyed memory becomes PROT_NONE for a while. Immutable. */
    int deleting;               /* gm_heap_delete is moving its spans to the default heap. Atomic. */
    pthread_mutex_t lock;       /* its large spans and its caches list (order: before the class locks and mheap.lock) */
    gm_mspan *large;            /* its large objects' spans, linked by next/prev. Under lock. */
    struct gm_mcache *caches;   /* the threads' caches for it, linked by hnext. Under lock. */
    uint64_t limit;             /* bytes of spans it may hold (0: none). Immutable. */
    uint64_t inuse;             /* bytes of spans it holds (reserved before they are taken). Atomic. */
    uint64_t peak;              /* the most inuse has been. Atomic. */
    uint64_t large_mallocs, large_frees; /* its large objects, ever. Atomic. */
    uint64_t large_bytes;       /* bytes of its large objects (their pages), ever. Atomic. */
    uint64_t dead_nmalloc[NUM_CLASSES], dead_nfree[NUM_CLASSES]; /* counts of its caches that are gone. Under lock. */
    char name[48];              /* Immutable. */
} gm_heap;

extern GM_HIDDEN gm_heap gm_default_heap;
#define gm_central (gm_default_heap.central)
GM_HIDDEN void gm_heaps_init(void);
/* The live heap a handle names, or NULL (errno EINVAL) for a bad or stale one. */
GM_HIDDEN gm_heap *gm_heap_get(gm_heap_t *h);
/* The handle of heap hp. */
GM_HIDDEN gm_heap_t *gm_heap_handle(const gm_heap *hp);
/* Thread dc's cache for heap hp, made on first use; NULL when out of
 * memory.  dc is the calling thread's default-heap cache. */
GM_HIDDEN gm_mcache *gm_heap_cache(gm_mcache *dc, gm_heap *hp);
/* Work on heap cache hc begins (false: its heap is being destroyed) / ends. */
GM_HIDDEN bool gm_heap_enter(gm_mcache *hc);
GM_HIDDEN void gm_heap_leave(gm_mcache *hc);
/* Count bytes of spans into heap hp's use, under its limit (false: over). */
GM_HIDDEN bool gm_heap_reserve(gm_heap *hp, uintptr_t bytes);
GM_HIDDEN void gm_heap_unreserve(gm_heap *hp, uintptr_t bytes);
/* A large span of a program's heap is made / freed. */
GM_HIDDEN void gm_heap_large_added(gm_heap *hp, gm_mspan *s);
GM_HIDDEN bool gm_heap_large_removed(gm_heap *hp, gm_mspan *s, uintptr_t p);
/* Free the live object p of a program's heap (its span s, state byte st)
 * onto the calling thread's cache for the heap.  Returns GM_OK,
 * GM_ERR_NOT_ALLOCATED, or GM_HEAP_MOVED: the heap was deleted meanwhile,
 * the object is the default heap's now. */
#define GM_HEAP_MOVED (-2)
GM_HIDDEN int gm_heap_free_obj(gm_mspan *s, void *p, uint8_t *st);
/* A thread's default cache goes: its heap caches go with it. */
GM_HIDDEN void gm_heap_release_caches(gm_mcache *dc);
/* Every heap, in turn (for stats, checks, the scavenger, fork). */
GM_HIDDEN void gm_heaps_lock(void);
GM_HIDDEN void gm_heaps_unlock(void);
GM_HIDDEN gm_heap *gm_heaps_next(gm_heap *prev);
GM_HIDDEN void gm_heaps_fork_child(void);
GM_HIDDEN void gm_heap_counts(gm_heap *hp, uint64_t *nmalloc, uint64_t *nfree, uint64_t *cached, uint64_t *ncaches);
/* A destroyed heap's faulted span waits here for decay_ms before its pages
 * are reused; drain gives back those at least age_ms old (false: none left;
 * else the oldest's time in *oldest). */
GM_HIDDEN void gm_heap_quarantine(gm_mspan *s);
GM_HIDDEN void gm_heap_leave_scope(gm_mcache *hc);
GM_HIDDEN bool gm_heap_quarantine_drain(uint64_t age_ms, uint64_t *oldest);
/* malloc.c: aligned allocation from cache c. */
GM_HIDDEN void *gm_aligned_from(gm_mcache *c, size_t alignment, size_t size);
/* malloc.c: allocate from cache c (a heap cache's own pointer), as malloc does. */
GM_HIDDEN void *gm_malloc_from(gm_mcache *c, size_t size, bool zero);

/* ---- malloc.c: public API and error reporting ------------------------------ */

GM_HIDDEN void gm_init_slow(void);
extern GM_HIDDEN atomic_int gm_inited;
GM_INLINE void gm_ensure_init(void) {
    if (unlikely(!atomic_load_explicit(&gm_inited, memory_order_acquire)))
        gm_init_slow();
}
/* Report a bad pointer: abort with a message, or count it and return code. */
GM_HIDDEN int gm_report(int code, const void *p, const char *what);
/* Report heap corruption found at object p of class sc (what: how it was
 * found): abort with a message, or (abort_on_error 0) count it in
 * bad_frees and let the caller drop the object. */
GM_HIDDEN void gm_report_corruption(const void *p, uint8_t sc, const char *what);
GM_HIDDEN _Noreturn void gm_throw(const char *msg);
GM_HIDDEN uint8_t gm_size_to_class(size_t size);
/* gm_malloc and gm_free for the allocator's own calls (the public ones are
 * IFUNCs in the shared library, resolved for other objects). */
GM_HIDDEN void *gm_malloc_internal(size_t size);
GM_HIDDEN void gm_free_internal(void *p);
GM_HIDDEN bool gm_free_to(gm_mcache *c, uint8_t sc, void *p, uint8_t *st);
GM_HIDDEN uint64_t gm_bad_frees(void);

/* ---- options.c -------------------------------------------------------------- */

/* The options, one table in tools/tables.py: set at start-up from the
 * environment (GOMALLOC_<NAME>) and at run time by gm_option_set. */
struct gm_options {
    /* BEGIN GENERATED gm_options: tools/mktables.py from tools/tables.py, do not edit */
    long long abort_on_error; /* abort on a bad pointer (1) or refuse it and report EINVAL (0) */
    long long scavenger;      /* the background scavenger thread returns free pages to the OS */
    long long decay_ms;       /* free pages unused this long are returned even under the goal */
    long long retain_percent; /* free Ready pages kept, as a percentage of the in-use heap (the goal) */
    /* soft limit on retained heap bytes: above it every free page is released (0: none; auto:
     * auto_memory_limit_percent of the cgroup's memory limit) */
    long long memory_limit;
    /* allocations fail (NULL/ENOMEM, MemoryError) rather than push heap_inuse past it (0: none;
     * auto: auto_hard_limit_percent of the cgroup's memory limit) */
    long long hard_limit;
    /* release with MADV_FREE instead of MADV_DONTNEED (RSS then drops only under memory pressure) */
    long long madv_free;
    /* advise transparent huge pages on whole huge pages of the chunks the heap grows by and of
     * reused memory */
    long long thp;
    /* bound of each per-thread, per-class list of freed objects (read when a thread's cache is
     * created); a list that overflows in bursts grows past it, a thread's lists by up to 32 times
     * this in all */
    long long tcache_bytes;
    /* debug: freed large spans (1) or all spans returned to the heap (2) become PROT_NONE, so a use
     * after free crashes */
    long long fault_on_free;
    long long check_heap;     /* debug: run the heap checker at exit and abort if it fails */
    /* print the statistics to stderr at exit (and the heap profile's top call sites when it
     * samples) */
    long long print_stats;
    /* heap profile: sample one allocation per this many bytes on average (Go's MemProfileRate; 1:
     * every allocation; 0: off) */
    long long profile_rate;
    /* objects of 1 to 8 bytes share 16-byte blocks (the tiny allocator): up to 16 times less memory
     * for them, about twice the time per malloc+free of such sizes */
    long long tiny;
    /* arena hints start at a random offset (up to 4 TiB) above Go's fixed 0x00c0<<32, so heap
     * addresses differ from run to run; 0: Go's fixed hints (read at start-up) */
    long long random_heap;
    /* with memory_limit=auto: the soft limit as a percentage of the cgroup v2 memory limit (the
     * smallest memory.max or memory.high of the process's cgroup and its ancestors) */
    long long auto_memory_limit_percent;
    /* with hard_limit=auto: the hard limit as a percentage of the cgroup v2 memory limit */
    long long auto_hard_limit_percent;
    /* END GENERATED gm_options */
};
extern GM_HIDDEN struct gm_options gm_opt;
GM_HIDDEN void gm_options_init(void);

/* ---- tiny.c: the tiny allocator ---------------------------------------------- */

#define TINY_MAX 8       /* largest size the tiny allocator serves */
#define TINY_CLASS 2     /* the size class of its blocks: 16 bytes */
_Static_assert(TINY_CLASS == 2, "class 2 is the 16-byte class");
GM_HIDDEN void *gm_tiny_alloc(gm_mcache *c, size_t size, bool zero);
/* p lies in the tiny block in slot i of s: GM_OK if p is a live tiny object. */
GM_HIDDEN int gm_tiny_check(const gm_mspan *s, uintptr_t i, uintptr_t p);
/* Free the tiny object p (checked live), on a thread with cache c (or gm_nocache). */
GM_HIDDEN int gm_tiny_free(gm_mcache *c, gm_mspan *s, uintptr_t i, uintptr_t p);
GM_HIDDEN size_t gm_tiny_usable(const gm_mspan *s, uintptr_t i);
/* c stops allocating from its tiny blocks (thread exit, gm_thread_flush). */
GM_HIDDEN void gm_tiny_retire_all(gm_mcache *c);
GM_HIDDEN int gm_tiny_check_block(const gm_mspan *s, uintptr_t i);
extern GM_HIDDEN uint64_t gm_dead_tiny_mallocs, gm_dead_tiny_frees;
/* malloc.c: a small object of size bytes, never sampled (tiny blocks). */
GM_HIDDEN void *gm_malloc_small_unsampled(gm_mcache *c, size_t size);
/* The class-offset tables, for the options that route mallocs to the slow
 * path (profile_rate, tiny). */
GM_HIDDEN void gm_route_update(void);

/* ---- mprof.c: the heap profile ---------------------------------------------- */

/* malloc's slow path, while profile_rate > 0: count size bytes towards c's
 * next sample; true when this allocation is to be sampled. */
GM_HIDDEN bool gm_profile_due(gm_mcache *c, size_t size);
/* Record the sampled allocation p (size bytes asked, elemsize given), and
 * mark it sampled (its state byte, or its large span). */
GM_HIDDEN void gm_profile_alloc(void *p, size_t size);
/* p, which is sampled, is being freed: take it out of the profile. */
GM_HIDDEN void gm_profile_free(const void *p);
/* Span s of a destroyed heap goes back to the page heap with its objects:
 * those the profile sampled leave it (as if freed) first.  Cheap when the
 * profile never sampled. */
GM_HIDDEN void gm_profile_forget_span(gm_mspan *s);
/* The option changed: route small mallocs through the slow path or not. */
GM_HIDDEN void gm_profile_set_rate(long long rate);
GM_HIDDEN void gm_profile_print(int fd, int top);
/* Copy up to n whole records into out; the number the profile holds
 * (gm_profile_read, in mstats.c, is the public face). */
GM_HIDDEN int gm_profile_read_records(struct gm_profile_record *out, int n);
GM_HIDDEN void gm_profile_fork_prepare(void);
GM_HIDDEN void gm_profile_fork_parent(void);
GM_HIDDEN void gm_profile_fork_child(void);

/* ---- mstats.c --------------------------------------------------------------- */

GM_HIDDEN void gm_stats_fold_mcache(gm_mcache *c);

/* ---- scavenger.c -------------------------------------------------------- */

GM_HIDDEN void gm_scavenger_notify(void);
GM_HIDDEN void gm_scavenger_threads_gone(void);
GM_HIDDEN uintptr_t gm_scavenge_excess(uintptr_t coming);
GM_HIDDEN uint64_t gm_scavenge_min_age(uintptr_t coming);
/* Is any page of [base, base + npages) PROT_NONE (faulted)?  Under mheap.lock. */
GM_HIDDEN bool gm_pages_faulted(uintptr_t base, uintptr_t npages);
GM_HIDDEN void gm_scavenger_fork_prepare(void);
GM_HIDDEN void gm_scavenger_fork_parent(void);
GM_HIDDEN void gm_scavenger_fork_child(void);
GM_HIDDEN void gm_warn_check(const char *what, const gm_mspan *s);

#endif /* GM_INTERNAL_H */
