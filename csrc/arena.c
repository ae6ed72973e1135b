/*
 * arena.c: heap arenas and the arena map (malloc.go "Heap arenas",
 * mheap.sysAlloc, sysReserveAligned).
 *
 * The heap lives in 64 MiB arenas aligned to 64 MiB.  Address space is
 * reserved PROT_NONE an arena (or several contiguous arenas, for a huge
 * object) at a time, at hint addresses going up from 0x00c0<<32 as in Go,
 * plus a random multiple of 64 MiB chosen once per process (up to 4 TiB;
 * option random_heap, on by default: a program's heap addresses differ from
 * run to run, so an attacker cannot aim at them without a leak).  When a
 * hint is taken, we try the next; after enough failures we take any 64
 * MiB-aligned range the kernel offers.
 *
 * Reserved space is mapped (Reserved -> Prepared) a 4 MiB chunk at a time as
 * the page heap needs it, so /proc/self/maps shows each arena as a
 * read-write part followed by a PROT_NONE part.
 *
 * Each arena with mapped memory has one metadata mapping of its own: its
 * state map (a byte per 16-byte granule, gm_internal.h "Object states"),
 * then its heapArena record.  The arena map takes any address to that
 * mapping in one load: the L2 array has an entry per 64 MiB of the 48-bit
 * address space, the state map biased by the arena's first granule, so that
 * the entry plus the address shifted right by 4 is the address's state byte.
 * The mapping is read/write and MAP_NORESERVE: only the parts under small
 * spans are ever touched, and other_sys counts a sixteenth of the mapped
 * heap for it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "gm_internal.h"

#define HINT_TRIES 64
#define HINT_RANDOM_ARENAS ((uint64_t)1 << 16) /* random offsets: 0 .. 4 TiB in 64 MiB steps */

/* Not counted in sys: address space faulted in one page per 512 arenas
 * used.  Go does not count its arena map either. */
uintptr_t gm_arena_map[ARENA_L2_ENTRIES];
uint64_t gm_secret;

#define ARENA_META_BYTES (STATEMAP_BYTES + ((sizeof(gm_heap_arena) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)))

/* 64 random bits: getrandom, else the kernel's AT_RANDOM bytes mixed with
 * the clock and the pid (never 0). */
static uint64_t random64(void) {
    uint64_t x = 0;
    if (getrandom(&x, sizeof x, GRND_NONBLOCK) != (ssize_t)sizeof x) {
        const unsigned char *r = (const unsigned char *)getauxval(AT_RANDOM);
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ ((uint64_t)getpid() << 16);
        if (r != NULL)
            for (int i = 0; i < 16; i++)
                x = (x ^ r[i]) * 0x100000001b3ULL;
        x ^= x >> 29;
        x *= 0xbf58476d1ce4e5b9ULL;
        x ^= x >> 32;
    }
    return x != 0 ? x : 0x9e3779b97f4a7c15ULL;
}

void gm_arena_init(void) {
    gm_secret = random64();
    uintptr_t offset = 0;
    if (gm_opt.random_heap)
        offset = (uintptr_t)((random64() % HINT_RANDOM_ARENAS) << ARENA_SHIFT);
    gm_mheap.arenaHint = ARENA_HINT_BASE + offset;
}

/* Reserve n bytes (a multiple of ARENA_SIZE) of arena space, at the hint if
 * possible.  Returns the base or 0. */
static uintptr_t reserve(uintptr_t n) {
    for (int i = 0; i < HINT_TRIES; i++) {
        uintptr_t hint = gm_mheap.arenaHint;
        if (hint + n > ((uintptr_t)1 << (HEAP_ADDR_BITS - 1)))
            break;
        errno = 0;
        void *p = gm_sysReserveAligned((void *)hint, n, ARENA_SIZE);
        if (p == NULL && errno != EEXIST)
            return 0; /* the kernel is out of memory: the hint stays for next time */
        gm_mheap.arenaHint = hint + n;
        if (p != NULL)
            return (uintptr_t)p;
    }
    void *p = gm_sysReserveAligned(NULL, n, ARENA_SIZE);
    if (p == NULL)
        return 0;
    if ((uintptr_t)p + n > ((uintptr_t)1 << HEAP_ADDR_BITS)) {
        gm_sysFree(p, n); /* outside what the arena map covers */
        return 0;
    }
    return (uintptr_t)p;
}

/* Create the metadata missing for the arenas that [base, base+n) touches:
 * only arenas with mapped memory get some. */
static bool register_arenas(uintptr_t base, uintptr_t n) {
    for (uintptr_t a = base & ~(ARENA_SIZE - 1); a < base + n; a += ARENA_SIZE) {
        if (gm_arena_map[a >> ARENA_SHIFT] != 0)
            continue;
        uintptr_t meta = (uintptr_t)gm_sysAlloc(ARENA_META_BYTES);
        if (meta == 0)
            return false;
        if (gm_arena_map_entry(meta, a) == 0) {
            /* The entry would read as "no arena": take another mapping
             * (the kernel never hands out the same address twice while
             * the first is held). */
            uintptr_t other = (uintptr_t)gm_sysAlloc(ARENA_META_BYTES);
            gm_sysFree((void *)meta, ARENA_META_BYTES);
            if (other == 0)
                return false;
            meta = other;
        }
        gm_heap_arena *ha = (gm_heap_arena *)(meta + STATEMAP_BYTES);
        /* spans[] is all NULL (no span) as the fresh mapping's zeros
         * are: its 64 KiB stay untouched until spans cover its pages. */
        ha->base = a;
        ha->zeroedBase = 0;
        ATOMIC_ADD(&gm_mheap.other_sys, sizeof(gm_heap_arena));
        /* Publish after the record is complete: free() on another thread
         * may look the arena up without a lock. */
        __atomic_store_n(&gm_arena_map[a >> ARENA_SHIFT], gm_arena_map_entry(meta, a), __ATOMIC_RELEASE);
        gm_mheap.num_arenas++;
    }
    return true;
}

/* Does any arena of [base, base+n) have a record?  Records are never taken
 * back (free() may be reading one on another thread), so address space
 * with a record stays ours for good. */
static bool any_registered(uintptr_t base, uintptr_t n) {
    for (uintptr_t a = base; a < base + n; a += ARENA_SIZE)
        if (gm_arena_map[a >> ARENA_SHIFT] != 0)
            return true;
    return false;
}

/*
 * Grow the mapped heap by at least n bytes (page multiple), in whole chunks
 * where the reservation allows.  Returns the base of the newly mapped range
 * (Prepared: the caller treats it as free, released pages) and its length in
 * *got, or 0 when out of memory, in which case no memory is left behind: a
 * reservation made for this call is given back, unless an arena record was
 * published for it (then it stays reserved, as the current reservation).
 * Called with mheap.lock held.
 */
uintptr_t gm_arena_grow(uintptr_t n, uintptr_t *got) {
    uintptr_t ask = (n + CHUNK_SIZE - 1) & ~(CHUNK_SIZE - 1);
    uintptr_t oldBase = gm_mheap.curArenaBase, oldEnd = gm_mheap.curArenaEnd;
    uintptr_t fresh = 0, rn = 0;
    if (oldEnd - oldBase < n) {
        rn = (n + ARENA_SIZE - 1) & ~(ARENA_SIZE - 1);
        fresh = reserve(rn);
        if (fresh == 0)
            return 0;
        if (fresh == oldEnd) {
            gm_mheap.curArenaEnd += rn; /* contiguous: extend */
        } else {
            /* The rest of the old reservation stays Reserved and unused:
             * address space, not memory. */
            gm_mheap.curArenaBase = fresh;
            gm_mheap.curArenaEnd = fresh + rn;
        }
    }
    uintptr_t left = gm_mheap.curArenaEnd - gm_mheap.curArenaBase;
    if (ask > left)
        ask = left;
    uintptr_t v = gm_mheap.curArenaBase;
    int maperr = gm_sysMap((void *)v, ask);
    if (maperr != 0 || !register_arenas(v, ask)) {
        bool keep = fresh != 0 && any_registered(fresh, rn);
        /* Back to Reserved, what we keep of [v, v+ask): mapped memory is
         * given back, and a failed MAP_FIXED may have left a hole (older
         * kernels unmap first).  If that fails after a failed map, the
         * range may be a hole another mapping can take: never map there. */
        uintptr_t kept_end = fresh != 0 && !keep ? fresh : v + ask;
        bool hole = v < kept_end && !gm_sysFault((void *)v, kept_end - v) && maperr != 0;
        if (fresh != 0 && !keep) {
            gm_sysFree((void *)fresh, rn);
            gm_mheap.curArenaBase = oldBase;
            gm_mheap.curArenaEnd = oldEnd;
        } else if (fresh != 0) {
            gm_mheap.heap_reserved += rn;
        }
        if (hole)
            gm_mheap.curArenaBase = gm_mheap.curArenaEnd;
        return 0;
    }
    if (fresh != 0)
        gm_mheap.heap_reserved += rn;
    gm_mheap.curArenaBase += ask;
    ATOMIC_ADD(&gm_mheap.heap_sys, ask); /* read by the scavenger without the lock */
    ATOMIC_ADD(&gm_mheap.other_sys, ask >> STATE_SHIFT); /* the part of the state maps that can be used */
    *got = ask;
    return v;
}

/* Point spans[] of every page in [base, base+npages*PAGE_SIZE) at v (NULL:
 * no span). */
void gm_set_spans(gm_mspan *s, uintptr_t base, uintptr_t npages, gm_mspan *v) {
    (void)s;
    uintptr_t a = base, end = base + npages * PAGE_SIZE;
    while (a < end) {
        gm_heap_arena *ha = gm_arena_of(a);
        uintptr_t i = (a >> PAGE_SHIFT) & (PAGES_PER_ARENA - 1);
        uintptr_t stop = ha->base + ARENA_SIZE < end ? ha->base + ARENA_SIZE : end;
        for (; a < stop; a += PAGE_SIZE, i++)
            STORE_RELAXED(&ha->spans[i], v);
    }
}

int gm_owns(const void *p) {
    if (!atomic_load_explicit(&gm_inited, memory_order_acquire))
        return 0;
    return gm_arena_of((uintptr_t)p) != NULL;
}
