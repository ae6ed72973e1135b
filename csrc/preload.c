/*
 * preload.c: libgomalloc_preload.so, the LD_PRELOAD shim.
 *
 *   LD_PRELOAD=.../libgomalloc_preload.so some-program
 *
 * It holds no allocator: it exports the malloc family and glibc's malloc
 * extras, each a small function calling the gm_ API of libgomalloc.so, its
 * DT_NEEDED (found through the $ORIGIN rpath).  So a process has one heap:
 * the cffi module, C libraries linked to libgomalloc.so and this shim all
 * bind to the one libgomalloc.so that the dynamic linker loads once (by its
 * soname).  Only the public header is used: the core's internals are hidden
 * in libgomalloc.so.
 *
 * One function per symbol, so that any of them can become something else
 * (an IFUNC resolving to the core's fast path) on its own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gomalloc.h"

#define EXPORT __attribute__((visibility("default")))

/* ---- the malloc family ------------------------------------------------------ */

EXPORT void *malloc(size_t size) { return gm_malloc(size); }

EXPORT void free(void *p) { gm_free(p); }

EXPORT void *calloc(size_t n, size_t size) { return gm_calloc(n, size); }

EXPORT void *realloc(void *p, size_t size) { return gm_realloc(p, size); }

EXPORT void *reallocarray(void *p, size_t n, size_t size) {
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    return gm_realloc(p, total);
}

EXPORT int posix_memalign(void **out, size_t alignment, size_t size) {
    return gm_posix_memalign(out, alignment, size);
}

/* C11: the alignment must be a power of two (EINVAL otherwise), as in glibc
 * from 2.38. */
EXPORT void *aligned_alloc(size_t alignment, size_t size) { return gm_aligned_alloc(alignment, size); }

/* As glibc: an alignment that is not a power of two is rounded up to the next
 * one; one too large for that is EINVAL. */
EXPORT void *memalign(size_t alignment, size_t size) {
    if (alignment > SIZE_MAX / 2 + 1) {
        errno = EINVAL;
        return NULL;
    }
    size_t a = 1;
    while (a < alignment)
        a <<= 1;
    return gm_aligned_alloc(a, size);
}

EXPORT void *valloc(size_t size) { return gm_aligned_alloc((size_t)sysconf(_SC_PAGESIZE), size); }

EXPORT void *pvalloc(size_t size) {
    size_t ps = (size_t)sysconf(_SC_PAGESIZE);
    if (size > SIZE_MAX - ps) {
        errno = ENOMEM;
        return NULL;
    }
    return gm_aligned_alloc(ps, (size + ps - 1) & ~(ps - 1));
}

EXPORT size_t malloc_usable_size(void *p) { return p ? gm_usable_size(p) : 0; }

EXPORT void cfree(void *p) { gm_free(p); }

/* C23 (glibc 2.43 declares them; 2.36 does not). */
void free_sized(void *p, size_t size);
void free_aligned_sized(void *p, size_t alignment, size_t size);

EXPORT void free_sized(void *p, size_t size) {
    (void)size;
    gm_free(p);
}

EXPORT void free_aligned_sized(void *p, size_t alignment, size_t size) {
    (void)alignment;
    (void)size;
    gm_free(p);
}

/* ---- glibc's extras: trimming, mallinfo, malloc_stats, malloc_info, mallopt --
 *
 * They read the statistics into a local struct first and hold no allocator
 * lock while they format or write, so that stdio calling malloc (ours) from
 * inside them cannot deadlock.
 *
 * mallinfo2() / mallinfo() fields, from struct gm_stats:
 *
 *   arena     heap_sys: arena bytes mapped (free pages included).  Unlike
 *             glibc's, it includes the large objects (hblkhd): they live in
 *             the same arenas.
 *   uordblks  heap_alloc: bytes of live objects (rounded to size classes).
 *   fordblks  heap_sys - heap_alloc: free page runs (heap_idle) and the free
 *             slots of spans in use, so that arena = uordblks + fordblks.
 *   ordblks   free slots in the spans of small objects (idle slots of every
 *             size class, objects cached on per-thread lists included).
 *   smblks    0: no fastbins.
 *   fsmblks   cached_bytes + transfer_bytes: freed objects held by the
 *             per-thread and transfer caches, the nearest thing to fastbins.
 *   hblks     large_objects: live objects above GM_MAX_SMALL_SIZE, each in a
 *             span of its own (glibc's mmapped chunks).
 *   hblkhd    their bytes: heap_alloc minus the small classes' live bytes.
 *   usmblks   0, as in glibc.
 *   keepcost  heap_idle - heap_released: free pages still resident, which
 *             malloc_trim() would return to the OS now.
 *
 * mallinfo() has int fields: each saturates at INT_MAX (glibc's wraps).
 */

struct gm_mallinfo {
    uint64_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
};

static uint64_t sub0(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

/* Figures read from a live process may be a little inconsistent with each
 * other: differences are clamped at 0. */
static void read_mallinfo(struct gm_mallinfo *mi, struct gm_stats *st) {
    uint64_t idle_slots = 0, small_bytes = 0;

    st->size = sizeof *st;
    gm_read_stats(st);
    for (int c = 1; c < GM_NUM_SIZE_CLASSES; c++) {
        const struct gm_size_class_stats *sc = &st->by_size[c];
        uint64_t live = sub0(sc->mallocs, sc->frees);
        idle_slots += sub0(sc->capacity, live);
        small_bytes += live * sc->size;
    }
    memset(mi, 0, sizeof *mi);
    mi->arena = st->heap_sys;
    mi->uordblks = st->heap_alloc;
    mi->fordblks = sub0(st->heap_sys, st->heap_alloc);
    mi->ordblks = idle_slots;
    mi->fsmblks = st->cached_bytes + st->transfer_bytes;
    mi->hblks = st->large_objects;
    mi->hblkhd = sub0(st->heap_alloc, small_bytes);
    mi->keepcost = sub0(st->heap_idle, st->heap_released);
}

EXPORT struct mallinfo2 mallinfo2(void) {
    struct gm_stats st;
    struct gm_mallinfo mi;
    read_mallinfo(&mi, &st);
    return (struct mallinfo2){
        .arena = mi.arena, .ordblks = mi.ordblks, .smblks = mi.smblks, .hblks = mi.hblks,
        .hblkhd = mi.hblkhd, .usmblks = mi.usmblks, .fsmblks = mi.fsmblks,
        .uordblks = mi.uordblks, .fordblks = mi.fordblks, .keepcost = mi.keepcost,
    };
}

static int sat(uint64_t v) { return v > INT_MAX ? INT_MAX : (int)v; }

EXPORT struct mallinfo mallinfo(void) {
    struct gm_stats st;
    struct gm_mallinfo mi;
    read_mallinfo(&mi, &st);
    return (struct mallinfo){
        .arena = sat(mi.arena), .ordblks = sat(mi.ordblks), .smblks = sat(mi.smblks),
        .hblks = sat(mi.hblks), .hblkhd = sat(mi.hblkhd), .usmblks = sat(mi.usmblks),
        .fsmblks = sat(mi.fsmblks), .uordblks = sat(mi.uordblks), .fordblks = sat(mi.fordblks),
        .keepcost = sat(mi.keepcost),
    };
}

/* Return every free page to the OS now (pad is ignored: nothing is kept at
 * a "top").  1 when some memory went back, else 0, as glibc. */
EXPORT int malloc_trim(size_t pad) {
    (void)pad;
    return gm_release() > 0;
}

/* The statistics in short human form on stderr, written with write(2) from
 * a buffer on the stack: no stdio lock, no allocation. */
EXPORT void malloc_stats(void) {
    struct gm_stats st;
    struct gm_mallinfo mi;
    char buf[1024];

    read_mallinfo(&mi, &st);
    int n = snprintf(buf, sizeof buf,
                     "pygomalloc:\n"
                     "system bytes     = %12llu\n"
                     "heap bytes       = %12llu\n"
                     "in use bytes     = %12llu\n"
                     "free bytes       = %12llu\n"
                     "released bytes   = %12llu\n"
                     "live objects     = %12llu\n"
                     "large objects    = %12llu (%llu bytes)\n"
                     "mallocs          = %12llu\n"
                     "frees            = %12llu\n"
                     "threads          = %12llu\n",
                     (unsigned long long)st.sys, (unsigned long long)st.heap_sys,
                     (unsigned long long)st.heap_alloc, (unsigned long long)mi.fordblks,
                     (unsigned long long)st.heap_released, (unsigned long long)st.heap_objects,
                     (unsigned long long)st.large_objects, (unsigned long long)mi.hblkhd,
                     (unsigned long long)st.mallocs, (unsigned long long)st.frees,
                     (unsigned long long)st.num_threads);
    if (n > 0) {
        size_t len = (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1;
        for (size_t done = 0; done < len;) {
            ssize_t w = write(STDERR_FILENO, buf + done, len - done);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break;
            done += (size_t)w;
        }
    }
}

/* The statistics as XML on fp: glibc's outline (<malloc version="1">, one
 * <heap>, <sizes>, <total>, <system>, <aspace>) with pygomalloc's figures,
 * then every struct gm_stats figure by name.  options must be 0: glibc then
 * returns EINVAL (its manual says -1 with errno); we return EINVAL and set
 * errno too. */
#define STAT(name) {#name, offsetof(struct gm_stats, name)}
static const struct {
    const char *name;
    size_t offset;
} stat_fields[] = {
    /* BEGIN GENERATED malloc_info-stats: tools/mktables.py from tools/tables.py, do not edit */
    STAT(sys), STAT(heap_reserved), STAT(heap_sys), STAT(heap_alloc), STAT(heap_idle),
    STAT(heap_inuse), STAT(heap_released), STAT(heap_objects), STAT(mallocs), STAT(frees),
    STAT(total_alloc), STAT(large_objects), STAT(mspan_inuse), STAT(mspan_sys), STAT(mcache_inuse),
    STAT(mcache_sys), STAT(other_sys), STAT(cached_bytes), STAT(transfer_bytes), STAT(num_arenas),
    STAT(num_threads), STAT(bad_frees), STAT(n_sys_reserve), STAT(n_sys_map), STAT(n_sys_used),
    STAT(n_sys_unused), STAT(n_sys_free), STAT(n_sys_fault), STAT(bytes_sys_reserve),
    STAT(bytes_sys_map), STAT(bytes_sys_used), STAT(bytes_sys_unused), STAT(bytes_sys_free),
    STAT(bytes_sys_fault), STAT(scavenge_cycles), STAT(scavenged_bytes), STAT(phys_page_size),
    STAT(huge_page_size), STAT(tiny_mallocs), STAT(tiny_frees),
    /* END GENERATED malloc_info-stats */
};
#undef STAT

EXPORT int malloc_info(int options, FILE *fp) {
    struct gm_stats st;
    struct gm_mallinfo mi;

    if (options != 0) {
        errno = EINVAL;
        return EINVAL;
    }
    read_mallinfo(&mi, &st);
    fprintf(fp, "<malloc version=\"1\" allocator=\"pygomalloc\">\n<heap nr=\"0\">\n<sizes>\n");
    for (int c = 1; c < GM_NUM_SIZE_CLASSES; c++) {
        const struct gm_size_class_stats *sc = &st.by_size[c];
        uint64_t idle = sub0(sc->capacity, sub0(sc->mallocs, sc->frees));
        if (idle != 0)
            fprintf(fp, "<size from=\"%llu\" to=\"%llu\" total=\"%llu\" count=\"%llu\"/>\n",
                    (unsigned long long)sc->size, (unsigned long long)sc->size,
                    (unsigned long long)(idle * sc->size), (unsigned long long)idle);
    }
    fprintf(fp,
            "</sizes>\n"
            "<total type=\"fast\" count=\"0\" size=\"%llu\"/>\n"
            "<total type=\"rest\" count=\"%llu\" size=\"%llu\"/>\n"
            "<system type=\"current\" size=\"%llu\"/>\n"
            "<aspace type=\"total\" size=\"%llu\"/>\n"
            "<aspace type=\"mprotect\" size=\"%llu\"/>\n"
            "</heap>\n"
            "<total type=\"fast\" count=\"0\" size=\"%llu\"/>\n"
            "<total type=\"rest\" count=\"%llu\" size=\"%llu\"/>\n"
            "<total type=\"mmap\" count=\"%llu\" size=\"%llu\"/>\n"
            "<system type=\"current\" size=\"%llu\"/>\n"
            "<aspace type=\"total\" size=\"%llu\"/>\n"
            "<aspace type=\"mprotect\" size=\"%llu\"/>\n"
            "<pygomalloc>\n",
            (unsigned long long)mi.fsmblks, (unsigned long long)mi.ordblks,
            (unsigned long long)mi.fordblks, (unsigned long long)st.heap_sys,
            (unsigned long long)st.heap_reserved, (unsigned long long)st.heap_sys,
            (unsigned long long)mi.fsmblks, (unsigned long long)mi.ordblks,
            (unsigned long long)mi.fordblks, (unsigned long long)mi.hblks,
            (unsigned long long)mi.hblkhd, (unsigned long long)st.sys,
            (unsigned long long)st.heap_reserved, (unsigned long long)st.heap_sys);
    for (size_t i = 0; i < sizeof stat_fields / sizeof stat_fields[0]; i++) {
        uint64_t v;
        memcpy(&v, (const char *)&st + stat_fields[i].offset, sizeof v);
        fprintf(fp, "<stat name=\"%s\" value=\"%llu\"/>\n", stat_fields[i].name, (unsigned long long)v);
    }
    fprintf(fp, "</pygomalloc>\n</malloc>\n");
    return 0;
}

/* Every parameter is accepted and ignored, and 1 returned (glibc returns 1
 * for parameters it does not know).  None applies:
 *   M_TRIM_THRESHOLD, M_TOP_PAD  the scavenger returns free pages by itself:
 *                     options retain_percent and decay_ms (GOMALLOC_*);
 *   M_MMAP_THRESHOLD, M_MMAP_MAX  objects above GM_MAX_SMALL_SIZE always
 *                     get a span of their own; there is no mmap per object;
 *   M_ARENA_MAX, M_ARENA_TEST  one heap, with a cache per thread;
 *   M_MXFAST          no fastbins (per-thread lists: option tcache_bytes);
 *   M_CHECK_ACTION    bad pointers: option abort_on_error;
 *   M_PERTURB         not supported. */
EXPORT int mallopt(int param, int value) {
    (void)param;
    (void)value;
    return 1;
}

/* Initialise the allocator before main, while the process has one thread. */
__attribute__((constructor)) static void preload_init(void) { gm_free(gm_malloc(1)); }
