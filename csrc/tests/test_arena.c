/*
 * test_arena.c: arenas, the arena map and the OS layer (arena.c,
 * mem_linux.c).
 *
 *   - gm_owns answers for any address: heap pointers yes; stack, static,
 *     libc, NULL, (void *)-1, kernel and non-canonical addresses no;
 *   - arenas are 64 MiB aligned, registered in the arena map under their
 *     index, and (without a sanitizer, whose shadow memory may cover the
 *     hint range) start at the hint 0x00c0 << 32 or above;
 *   - /proc/self/maps shows the first arena as a read-write part (the
 *     mapped chunks) followed by a PROT_NONE part (reserved only);
 *   - the OS transition counters move as the heap grows, reserves, is
 *     released and reused.
 *
 * The first test must run first: it looks at the arena that the first
 * allocation of the process creates.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "gm_internal.h"
#include "gmtest.h"

#define MIB ((size_t)1 << 20)

static int static_var = 42;
static uintptr_t first_arena;
static void *first_obj;

/* Before anything is allocated nothing is ours. */
TEST(owns_nothing_before_first_malloc) {
    int local = 0;
    CHECK_EQ(gm_owns(&local), 0);
    CHECK_EQ(gm_owns(&static_var), 0);
    CHECK_EQ(gm_owns((void *)ARENA_HINT_BASE), 0);
    CHECK_EQ(gm_owns(NULL), 0);
    CHECK_EQ(gm_usable_size(&local), 0);
}

TEST(first_arena_placement) {
    first_obj = gm_malloc(100);
    CHECK(first_obj != NULL);
    if (first_obj == NULL)
        return;
    uintptr_t a = (uintptr_t)first_obj;
    first_arena = a & ~(ARENA_SIZE - 1);
    gm_heap_arena *ha = gm_arena_of(a);
    CHECK(ha != NULL);
    if (ha == NULL)
        return;
    CHECK_EQ(ha->base, first_arena);
    CHECK_EQ(ha->base % ARENA_SIZE, 0);
    CHECK(gm_arena_map[first_arena >> ARENA_SHIFT] == gm_arena_map_entry((uintptr_t)ha - STATEMAP_BYTES, first_arena));
    CHECK(gm_state_of(a) == (uint8_t *)ha - STATEMAP_BYTES + ((a - first_arena) >> STATE_SHIFT));
    CHECK(gm_span_of(a) == ha->spans[(a - first_arena) >> PAGE_SHIFT]);
    if (!UNDER_SANITIZER) {
        CHECK(first_arena >= ARENA_HINT_BASE);
        if (first_arena < ARENA_HINT_BASE)
            fprintf(stderr, "first arena at %#lx, below the hint %#lx\n", (unsigned long)first_arena,
                    (unsigned long)ARENA_HINT_BASE);
    } else {
        fprintf(stderr, "(sanitizer build: first arena at %#lx, hint %#lx not required)\n",
                (unsigned long)first_arena, (unsigned long)ARENA_HINT_BASE);
    }
    struct gm_stats st = stats();
    CHECK(st.num_arenas >= 1);
    /* Arenas get their record when memory in them is first mapped; the
     * reservation may run ahead of that. */
    CHECK(st.heap_reserved >= st.num_arenas * ARENA_SIZE);
    CHECK_EQ(st.heap_reserved % ARENA_SIZE, 0);
    /* Whole chunks mapped so far, and far from the whole arena. */
    CHECK(st.heap_sys >= CHUNK_SIZE && st.heap_sys % CHUNK_SIZE == 0 && st.heap_sys < ARENA_SIZE);
    CHECK(st.n_sys_reserve >= 1);
    CHECK(st.n_sys_map >= 1);
}

/* The first arena in /proc/self/maps: "rw-p" where chunks are mapped, then
 * "---p" for the reserved rest. */
/* The span map of an arena is written only where spans cover pages: a
 * fresh mapping's zeros say "no span", so the 64 KiB of spans[] of an
 * arena whose first few MiB are used stay mostly out of memory (they were
 * all written at the arena's creation before). */
TEST(span_map_resident_only_where_spans_were) {
    gm_heap_arena *ha = gm_arena_of((uintptr_t)first_obj);
    CHECK(ha != NULL);
    if (ha == NULL)
        return;
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)ha->spans + pg - 1) & ~(uintptr_t)(pg - 1);
    uintptr_t hi = ((uintptr_t)(ha->spans + PAGES_PER_ARENA)) & ~(uintptr_t)(pg - 1);
    size_t n = (hi - lo) / pg, resident = 0, used = 0;
    unsigned char vec[64];
    CHECK(n > 0 && n <= sizeof vec);
    if (n == 0 || n > sizeof vec || mincore((void *)lo, hi - lo, vec) != 0)
        return;
    for (size_t i = 0; i < n; i++) {
        resident += vec[i] & 1;
        for (gm_mspan *const *e = (gm_mspan *const *)(lo + i * pg); e < (gm_mspan *const *)(lo + (i + 1) * pg); e++)
            if (*e != NULL) {
                used++;
                break;
            }
    }
    /* Pages of the map with a span in them, plus those whose spans were
     * freed since (a few, in this test's small heap). */
    CHECK(resident <= used + 2);
    CHECK(resident < n);
    CHECK(gm_span_of(ha->base + ARENA_SIZE - PAGE_SIZE) == NULL || used == n);
}

TEST(proc_maps_shows_reserved_and_mapped) {
    if (first_arena == 0) {
        CHECK(first_arena != 0);
        return;
    }
    uintptr_t arena_end = first_arena + ARENA_SIZE, mapped_end = first_arena + stats().heap_sys;
    FILE *f = fopen("/proc/self/maps", "r");
    CHECK(f != NULL);
    if (f == NULL)
        return;
    char line[512];
    int found_rw = 0, found_none = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        unsigned long lo, hi;
        char perms[8] = {0};
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3)
            continue;
        if (hi <= first_arena || lo >= arena_end)
            continue;
        if (strcmp(perms, "rw-p") == 0 && lo <= first_arena && hi >= mapped_end &&
            lo <= (uintptr_t)first_obj && (uintptr_t)first_obj < hi)
            found_rw = 1;
        if (strcmp(perms, "---p") == 0 && lo <= mapped_end && hi >= arena_end)
            found_none = 1;
    }
    fclose(f);
    CHECK(found_rw);
    CHECK(found_none);
    if (!found_rw || !found_none) {
        fprintf(stderr, "first arena %#lx, mapped to %#lx; /proc/self/maps around it:\n",
                (unsigned long)first_arena, (unsigned long)mapped_end);
        f = fopen("/proc/self/maps", "r");
        while (f != NULL && fgets(line, sizeof line, f) != NULL) {
            unsigned long lo, hi;
            if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && hi > first_arena - ARENA_SIZE &&
                lo < arena_end + ARENA_SIZE)
                fputs(line, stderr);
        }
        if (f != NULL)
            fclose(f);
    }
    /* The byte just past the mapped part is reserved: ours, but no span. */
    CHECK_EQ(gm_owns((void *)mapped_end), 1);
    CHECK(gm_span_of(mapped_end) == NULL);
    CHECK_EQ(gm_check((void *)mapped_end), GM_ERR_NOT_ALLOCATED);
}

TEST(owns_heap_pointers) {
    void *small = gm_malloc(24), *mid = gm_malloc(5000), *large = gm_malloc(3 * MIB + 1);
    CHECK(small != NULL && mid != NULL && large != NULL);
    if (small == NULL || mid == NULL || large == NULL)
        return;
    CHECK_EQ(gm_owns(small), 1);
    CHECK_EQ(gm_owns((char *)small + 1), 1);
    CHECK_EQ(gm_owns(mid), 1);
    CHECK_EQ(gm_owns(large), 1);
    CHECK_EQ(gm_owns((char *)large + 3 * MIB), 1);
    CHECK_EQ(gm_owns(first_obj), 1);
    CHECK_EQ(gm_owns((void *)first_arena), 1);
    CHECK_EQ(gm_owns((void *)(first_arena + ARENA_SIZE - 1)), 1);
    if (!UNDER_SANITIZER && first_arena == ARENA_HINT_BASE)
        CHECK_EQ(gm_owns((void *)(first_arena - 1)), 0);
    /* Freed objects are still in our memory. */
    gm_free(small);
    gm_free(mid);
    gm_free(large);
    CHECK_EQ(gm_owns(small), 1);
    CHECK_EQ(gm_owns(large), 1);
    CHECK_EQ(gm_check_heap(), 0);
}

static int owns_and_check_foreign(const void *p) {
    int ok = 1;
    if (gm_owns(p) != 0) {
        fprintf(stderr, "gm_owns(%p) = %d\n", p, gm_owns(p));
        ok = 0;
    }
    if (gm_check(p) != GM_ERR_NOT_OURS) {
        fprintf(stderr, "gm_check(%p) = %d\n", p, gm_check(p));
        ok = 0;
    }
    if (gm_usable_size(p) != 0)
        ok = 0;
    return ok;
}

TEST(owns_foreign_pointers) {
    int local = 1;
    char buf[64];
    void *libc_small = malloc(100), *libc_large = malloc(8 * MIB);
    CHECK(owns_and_check_foreign(&local));
    CHECK(owns_and_check_foreign(buf));
    CHECK(owns_and_check_foreign(&static_var));
    CHECK(owns_and_check_foreign((const void *)(uintptr_t)&owns_and_check_foreign));
    CHECK(owns_and_check_foreign(libc_small));
    CHECK(owns_and_check_foreign(libc_large));
    CHECK(owns_and_check_foreign(NULL));
    CHECK(owns_and_check_foreign((void *)-1));
    CHECK(owns_and_check_foreign((void *)(uintptr_t)0xffff800000000000ull));
    CHECK(owns_and_check_foreign((void *)(uintptr_t)0xffffffffff600000ull)); /* vsyscall page */
    CHECK(owns_and_check_foreign((void *)((uintptr_t)1 << 47)));
    CHECK(owns_and_check_foreign((void *)((uintptr_t)1 << 48)));
    CHECK(owns_and_check_foreign((void *)(((uintptr_t)1 << 48) - 1)));
    CHECK(owns_and_check_foreign((void *)(uintptr_t)0x8000000000000000ull));
    CHECK(owns_and_check_foreign((void *)(uintptr_t)4096));
    free(libc_small);
    free(libc_large);
}

/* gm_owns is defined for any address: sweep the whole 64-bit space with a
 * fixed-seed generator; an owned address must lie in a registered arena. */
TEST(owns_any_address) {
    uint64_t x = 0x243f6a8885a308d3ull;
    int owned = 0, bad = 0;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uintptr_t a = (uintptr_t)(i & 1 ? x : x >> 16); /* half of them below 2^48 */
        int o = gm_owns((void *)a);
        owned += o;
        if (o != (gm_arena_of(a) != NULL))
            bad++;
        if (!o && gm_check((void *)a) != GM_ERR_NOT_OURS)
            bad++;
    }
    CHECK_EQ(bad, 0);
    (void)owned;
}

/* Every arena in the map is 64 MiB aligned and under its own index; the
 * map holds exactly num_arenas arenas; reserved = arenas * 64 MiB. */
TEST(arena_map_consistent) {
    void *big = gm_malloc(150 * MIB); /* several more arenas */
    CHECK(big != NULL);
    struct gm_stats st = stats();
    CHECK(st.num_arenas >= 3);
    uint64_t n = 0;
    int bad = 0;
    for (uintptr_t i = 0; i < ARENA_L2_ENTRIES; i++) {
        if (LOAD_RELAXED(&gm_arena_map[i]) == 0)
            continue;
        gm_heap_arena *ha = gm_arena_of(i << ARENA_SHIFT);
        n++;
        if (ha->base != i << ARENA_SHIFT || ha->base % ARENA_SIZE != 0 || ha->zeroedBase > ARENA_SIZE)
            bad++;
        if (!UNDER_SANITIZER && ha->base < ARENA_HINT_BASE)
            bad++;
    }
    CHECK_EQ(bad, 0);
    CHECK_EQ(n, st.num_arenas);
    CHECK(st.heap_reserved >= st.num_arenas * ARENA_SIZE);
    /* The object's pages all point at its span, across arena boundaries. */
    if (big != NULL) {
        gm_mspan *s = gm_span_of((uintptr_t)big);
        CHECK(s != NULL);
        for (uintptr_t a = (uintptr_t)big; a < (uintptr_t)big + 150 * MIB; a += PAGE_SIZE)
            if (gm_span_of(a) != s) {
                bad++;
                break;
            }
        CHECK_EQ(bad, 0);
        gm_free(big);
    }
    CHECK_EQ(gm_check_heap(), 0);
}

/* The OS transition counters. */
TEST(transition_counters) {
    gm_release();
    struct gm_stats s0 = stats();
    /* Reserved address space is what was reserved minus what was given back
     * (hints that failed, trimmed alignment slop): arenas only. */
    CHECK_EQ(s0.bytes_sys_reserve - s0.bytes_sys_free, s0.heap_reserved);
    CHECK(s0.bytes_sys_map >= s0.heap_sys);
    CHECK_EQ(s0.heap_released, s0.heap_idle);

    /* 1. Growing the heap within the reservation: sysMap; the new pages are
     * Prepared, so handing them out is a sysUsed of exactly the object.  The
     * request must not fit any free run, and must fit what is left of the
     * current reservation. */
    pthread_mutex_lock(&gm_mheap.lock);
    size_t left = gm_mheap.curArenaEnd - gm_mheap.curArenaBase, largest = 0;
    for (int k = 0; k < FREE_EXACT_LISTS + FREE_LARGE_LISTS; k++)
        for (gm_mspan *s = k < FREE_EXACT_LISTS ? gm_mheap.free[k] : gm_mheap.large[k - FREE_EXACT_LISTS]; s != NULL;
             s = s->next)
            if (s->npages * PAGE_SIZE > largest)
                largest = s->npages * PAGE_SIZE;
    pthread_mutex_unlock(&gm_mheap.lock);
    size_t grow = left < 40 * MIB ? left : 40 * MIB;
    CHECK(grow > largest + PAGE_SIZE); /* precondition: the heap is small here */
    void *p = gm_malloc(grow);
    CHECK(p != NULL);
    struct gm_stats s1 = stats();
    CHECK(s1.heap_sys > s0.heap_sys);
    CHECK(s1.n_sys_map > s0.n_sys_map);
    CHECK(s1.bytes_sys_map - s0.bytes_sys_map >= s1.heap_sys - s0.heap_sys);
    CHECK((s1.heap_sys - s0.heap_sys) % CHUNK_SIZE == 0);
    CHECK(s1.n_sys_used > s0.n_sys_used);
    CHECK_EQ(s1.bytes_sys_used - s0.bytes_sys_used, (grow + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1));
    CHECK_EQ(s1.bytes_sys_reserve - s1.bytes_sys_free, s1.heap_reserved);

    /* 2. A request larger than what is left reserved: sysReserve of whole
     * arenas, registered in the map. */
    size_t huge = (size_t)(s1.heap_reserved - s1.heap_sys) + ARENA_SIZE + 5 * MIB;
    void *q = gm_malloc(huge);
    CHECK(q != NULL);
    struct gm_stats s2 = stats();
    CHECK(s2.n_sys_reserve > s1.n_sys_reserve);
    CHECK(s2.heap_reserved > s1.heap_reserved);
    CHECK_EQ((s2.heap_reserved - s1.heap_reserved) % ARENA_SIZE, 0);
    CHECK_EQ(s2.num_arenas - s1.num_arenas, (s2.heap_reserved - s1.heap_reserved) / ARENA_SIZE);
    CHECK(s2.bytes_sys_reserve - s1.bytes_sys_reserve >= s2.heap_reserved - s1.heap_reserved);
    CHECK_EQ(s2.bytes_sys_reserve - s2.bytes_sys_free, s2.heap_reserved);
    CHECK_EQ(s2.bytes_sys_used - s1.bytes_sys_used, (huge + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1));
    CHECK(gm_owns((char *)q + huge - 1));

    /* 3. Free and release: sysUnused of what gm_release reports, plus the
     * whole pages of the state maps under the released runs (a sixteenth of
     * them at most). */
    gm_free(p);
    gm_free(q);
    size_t rel = gm_release();
    struct gm_stats s3 = stats();
    CHECK(rel >= ((grow + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)) + ((huge + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)));
    CHECK(s3.n_sys_unused > s2.n_sys_unused);
    CHECK(s3.bytes_sys_unused - s2.bytes_sys_unused >= rel);
    CHECK(s3.bytes_sys_unused - s2.bytes_sys_unused <= rel + (rel >> STATE_SHIFT));
    CHECK_EQ(s3.heap_released - s2.heap_released, rel);
    CHECK_EQ(s3.heap_released, s3.heap_idle);
    CHECK_EQ(s3.heap_sys, s2.heap_sys);

    /* 4. Reusing released pages: sysUsed again, no growth, no reservation. */
    p = gm_malloc(grow);
    CHECK(p != NULL);
    struct gm_stats s4 = stats();
    CHECK_EQ(s4.heap_sys, s3.heap_sys);
    CHECK_EQ(s4.n_sys_reserve, s3.n_sys_reserve);
    CHECK(s4.n_sys_used > s3.n_sys_used);
    CHECK_EQ(s4.bytes_sys_used - s3.bytes_sys_used, (grow + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1));
    CHECK_EQ(s3.heap_released - s4.heap_released, (grow + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1));
    gm_free(p);

    /* 5. Nothing here unmaps or faults heap memory back to Reserved, unless
     * the fault_on_free debug option exists and is on. */
    struct gm_stats s5 = stats();
    CHECK_EQ(s5.n_sys_fault, s0.n_sys_fault);
    long long fof;
    if (gm_option_get("fault_on_free", &fof) == 0 && gm_option_set("fault_on_free", 1) == 0) {
        void *r = gm_malloc(3 * MIB);
        CHECK(r != NULL);
        gm_free(r);
        struct gm_stats s6 = stats();
        CHECK(s6.n_sys_fault > s5.n_sys_fault);
        CHECK(s6.bytes_sys_fault - s5.bytes_sys_fault >= 3 * MIB);
        /* And the memory is usable again when reused. */
        r = gm_malloc(3 * MIB);
        CHECK(r != NULL);
        if (r != NULL) {
            memset(r, 1, 3 * MIB);
            gm_free(r);
        }
        CHECK_EQ(gm_option_set("fault_on_free", fof), 0);
    }
    CHECK_EQ(gm_check_heap(), 0);
}

int main(void) {
    RUN(owns_nothing_before_first_malloc);
    /* The background scavenger (where there is one) would release pages
     * behind the tests' back: transition_counters counts them exactly. */
    gm_option_set("scavenger", 0);
    RUN(first_arena_placement);
    RUN(span_map_resident_only_where_spans_were);
    RUN(proc_maps_shows_reserved_and_mapped);
    RUN(owns_heap_pointers);
    RUN(owns_foreign_pointers);
    RUN(owns_any_address);
    RUN(transition_counters);
    RUN(arena_map_consistent);
    gm_free(first_obj);
    return gmtest_summary();
}
