/*
 * pagemap.c: the live page map (gomalloc.h, gm_page_map): one byte per
 * 8 KiB page of every arena with mapped memory, saying what the page is
 * (reserved, released, free, faulted, large, or in use by size class N).
 *
 * The allocator keeps it up to date itself, where pages change state:
 * observe.h lists the calls, each one line in pagealloc.c or mem_linux.c,
 * all at span granularity (a span made or given back, a chunk mapped, a
 * range released), so the fast paths pay nothing.  A page in a thread's
 * page cache keeps the state it had in the heap (free or released): the
 * cache holds it free, and heap_idle / heap_released count it so.
 *
 * Each arena's map is a record of its own from persistentalloc (counted in
 * other_sys), made when the arena's first chunk is mapped; a table indexed
 * by arena number finds it (32 MiB of address space, MAP_NORESERVE, touched
 * a page per 512 arenas, like the arena map), and a list, in the order the
 * arenas came, gives them to readers.  Readers (Python's memoryviews) see
 * the bytes change under them: single-byte relaxed stores.
 */
#include <string.h>

#include "gm_internal.h"
#include "observe.h"

typedef struct gm_pagemap {
    uintptr_t base;                  /* the arena's first byte. Immutable. */
    uint8_t pages[PAGES_PER_ARENA];  /* enum gm_page_state or a size class. Written by the pages' owner. */
} gm_pagemap;

static gm_pagemap **pm_index;        /* by arena number (address >> ARENA_SHIFT). Written under mheap.lock. */
static gm_pagemap **pm_list;         /* in order of creation: pm_list[0 .. pm_count). Under mheap.lock. */
static uint32_t pm_count;            /* published with a release store. */
#define PM_LIST_MAX ((uintptr_t)1 << 20) /* arenas listed: 64 TiB of heap */

_Static_assert(PAGES_PER_ARENA == GM_ARENA_PAGES && PAGE_SIZE == GM_PAGE_SIZE, "gomalloc.h's page map sizes");
_Static_assert(NUM_CLASSES < GM_PAGE_LARGE, "size classes and page states overlap");

static gm_pagemap *pm_of(uintptr_t a) {
    gm_pagemap **index = LOAD_RELAXED(&pm_index);
    if (index == NULL || (a >> ARENA_SHIFT) >= ARENA_L2_ENTRIES)
        return NULL;
    return __atomic_load_n(&index[a >> ARENA_SHIFT], __ATOMIC_ACQUIRE);
}

/* Set the pages of [a, a + npages * PAGE_SIZE) to v, arena by arena. */
static void pm_set(uintptr_t a, uintptr_t npages, uint8_t v) {
    uintptr_t end = a + npages * PAGE_SIZE;
    while (a < end) {
        uintptr_t next = (a + ARENA_SIZE) & ~(ARENA_SIZE - 1), stop = next < end ? next : end;
        gm_pagemap *pm = pm_of(a);
        if (pm != NULL)
            for (uintptr_t i = (a - pm->base) >> PAGE_SHIFT, e = (stop - pm->base) >> PAGE_SHIFT; i < e; i++)
                STORE_RELAXED(&pm->pages[i], v);
        a = stop;
    }
}

/* A chunk was mapped (under mheap.lock): make the maps of the arenas it
 * touches, then mark it released (Prepared: no memory until touched). */
void gm_obs_grow(uintptr_t v, uintptr_t bytes) {
    if (pm_index == NULL) {
        gm_pagemap **index = gm_sysAlloc(ARENA_L2_ENTRIES * sizeof *index);
        gm_pagemap **list = gm_sysAlloc(PM_LIST_MAX * sizeof *list);
        if (index == NULL || list == NULL)
            return; /* no page map: every call finds no arena */
        pm_list = list;
        __atomic_store_n(&pm_index, index, __ATOMIC_RELEASE);
    }
    for (uintptr_t a = v & ~(ARENA_SIZE - 1); a < v + bytes; a += ARENA_SIZE) {
        if (pm_of(a) != NULL || pm_count >= PM_LIST_MAX)
            continue;
        gm_pagemap *pm = gm_persistentalloc(sizeof *pm, 64, &gm_mheap.other_sys);
        if (pm == NULL)
            continue;
        pm->base = a;
        memset(pm->pages, GM_PAGE_RESERVED, sizeof pm->pages);
        __atomic_store_n(&pm_index[a >> ARENA_SHIFT], pm, __ATOMIC_RELEASE);
        pm_list[pm_count] = pm;
        __atomic_store_n(&pm_count, pm_count + 1, __ATOMIC_RELEASE);
    }
    pm_set(v, bytes / PAGE_SIZE, GM_PAGE_RELEASED);
}

void gm_obs_span_alloc(uintptr_t base, uintptr_t npages, uint8_t sizeclass) {
    pm_set(base, npages, sizeclass != 0 ? sizeclass : GM_PAGE_LARGE);
    gm_pressure_note();
}

/* A destroyed heap's span, PROT_NONE until the quarantine ends. */
void gm_obs_quarantined(uintptr_t base, uintptr_t npages) {
    pm_set(base, npages, GM_PAGE_FAULTED);
    gm_pressure_note();
}

/* Free, or faulted where fault_on_free made the page PROT_NONE. */
void gm_obs_span_free(uintptr_t base, uintptr_t npages) {
    if (likely(!gm_pages_faulted(base, npages))) {
        pm_set(base, npages, GM_PAGE_FREE);
        gm_pressure_note();
        return;
    }
    for (uintptr_t a = base; a < base + npages * PAGE_SIZE; a += PAGE_SIZE) {
        gm_heap_arena *ha = gm_arena_of(a);
        uintptr_t i = (a >> PAGE_SHIFT) & (PAGES_PER_ARENA - 1);
        bool faulted = ha != NULL && (ha->faulted[i / 64] >> (i % 64) & 1);
        pm_set(a, 1, faulted ? GM_PAGE_FAULTED : GM_PAGE_FREE);
    }
    gm_pressure_note();
}

/* sysUnused: only whole pages of arenas (state maps are not in arenas). */
void gm_obs_released(uintptr_t v, uintptr_t n) {
    uintptr_t lo = (v + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1), hi = (v + n) & ~(PAGE_SIZE - 1);
    if (hi > lo)
        pm_set(lo, (hi - lo) / PAGE_SIZE, GM_PAGE_RELEASED);
}

void gm_obs_remapped(uintptr_t a, uintptr_t n) { pm_set(a, (n + PAGE_SIZE - 1) / PAGE_SIZE, GM_PAGE_RELEASED); }

const uint8_t *gm_page_map(int i, uintptr_t *base) {
    gm_ensure_init();
    if (i < 0 || (uint32_t)i >= __atomic_load_n(&pm_count, __ATOMIC_ACQUIRE))
        return NULL;
    gm_pagemap *pm = LOAD_RELAXED(&pm_list[i]);
    if (base != NULL)
        *base = pm->base;
    return pm->pages;
}
