/*
 * mem_linux.c: the OS layer.  The only file that calls mmap, mprotect,
 * munmap and madvise (a test greps for it).
 *
 * Address space managed by the allocator is in one of four states (Go's
 * mem.go):
 *
 *   None      unreserved and unmapped; the default state of any region.
 *   Reserved  owned by the allocator but not backed: PROT_NONE, so an
 *             access faults.  It does not count against the memory footprint.
 *   Prepared  mapped read/write, but the contents may have been discarded
 *             (MADV_DONTNEED / MADV_FREE): it holds no physical memory until
 *             touched.  Touching it is safe; the bytes read as zero after
 *             MADV_DONTNEED.
 *   Ready     mapped and in use: may be backed by physical memory.
 *
 * The transitions, one function each:
 *
 *   sysReserve   None -> Reserved       mmap(PROT_NONE, MAP_NORESERVE)
 *   sysMap       Reserved -> Prepared   mmap(MAP_FIXED, PROT_READ|PROT_WRITE)
 *   sysUsed      Prepared -> Ready      nothing to do on Linux but huge-page advice
 *   sysUnused    Ready -> Prepared      madvise(MADV_DONTNEED or MADV_FREE)
 *   sysFree      any -> None            munmap
 *   sysFault     Ready/Prepared -> Reserved   mmap(MAP_FIXED, PROT_NONE)
 *   sysAlloc     None -> Ready          for off-heap metadata (fixalloc.c)
 *
 * Every call is counted (calls and bytes) in gm_sysstats.  Policy (what to
 * release, when) lives in the page heap and the scavenger, not here.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "gm_internal.h"
#include "observe.h"

#ifndef MADV_FREE
#define MADV_FREE 8
#endif

struct gm_sysstats gm_sysstats;
uintptr_t gm_phys_page_size;
uintptr_t gm_huge_page_size;

static void count(enum sys_op op, size_t n) {
    ATOMIC_ADD(&gm_sysstats.n[op], 1);
    ATOMIC_ADD(&gm_sysstats.bytes[op], n);
}

/* Read the physical and huge page sizes and validate them, as mallocinit
 * does: the physical page must be a power of two no larger than our 8 KiB
 * page... or larger, in which case scavenging works in physical pages. */
uint64_t gm_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void gm_sys_init(void) {
    uintptr_t ps = (uintptr_t)getauxval(AT_PAGESZ);
    if (ps == 0)
        ps = (uintptr_t)sysconf(_SC_PAGESIZE);
    if (ps < 4096 || (ps & (ps - 1)) != 0 || ps > ARENA_SIZE)
        gm_throw("physical page size is not a power of two between 4 KiB and the arena size");
    gm_phys_page_size = ps;

    /* read(2), not stdio: under LD_PRELOAD stdio would call back into malloc. */
    gm_huge_page_size = 0;
    int fd = open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        char buf[32];
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n > 0) {
            buf[n] = 0;
            unsigned long long v = strtoull(buf, NULL, 10);
            if (v != 0 && (v & (v - 1)) == 0 && v >= ps)
                gm_huge_page_size = (uintptr_t)v;
        }
    }
}

void *gm_sysReserve(void *hint, size_t n) {
    void *p = mmap(hint, n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    count(SYS_RESERVE, n);
    return p;
}

/* Reserve n bytes aligned to align: at hint if that is free and aligned,
 * else anywhere, by over-reserving and trimming (sysReserveAligned). */
void *gm_sysReserveAligned(void *hint, size_t n, size_t align) {
    if (hint != NULL) {
        void *p = gm_sysReserve(hint, n);
        if (p == hint)
            return p;
        if (p != NULL)
            gm_sysFree(p, n);
        return NULL;
    }
    void *p = gm_sysReserve(NULL, n + align);
    if (p == NULL)
        return NULL;
    uintptr_t a = (uintptr_t)p, aligned = (a + align - 1) & ~(uintptr_t)(align - 1);
    if (aligned > a)
        gm_sysFree(p, aligned - a);
    uintptr_t end = a + n + align;
    if (end > aligned + n)
        gm_sysFree((void *)(aligned + n), end - (aligned + n));
    return (void *)aligned;
}

int gm_sysMap(void *v, size_t n) {
    void *p = mmap(v, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED)
        return errno; /* ENOMEM: over the commit limit or the map count */
    if (p != v)
        gm_throw("sysMap: mmap MAP_FIXED returned another address");
    count(SYS_MAP, n);
    return 0;
}

void gm_sysUsed(void *v, size_t n) {
    count(SYS_USED, n);
    if (LOAD_RELAXED(&gm_opt.thp) && gm_huge_page_size != 0) {
        /* Advise only the whole huge pages inside the range, so that a
         * partly used region is not inflated (tcmalloc#85). */
        uintptr_t h = gm_huge_page_size;
        uintptr_t b = ((uintptr_t)v + h - 1) & ~(h - 1), e = ((uintptr_t)v + n) & ~(h - 1);
        if (e > b)
            madvise((void *)b, e - b, MADV_HUGEPAGE);
    }
}

void gm_sysUnused(void *v, size_t n) {
    int advice = LOAD_RELAXED(&gm_opt.madv_free) ? MADV_FREE : MADV_DONTNEED;
    if (madvise(v, n, advice) != 0 && advice == MADV_FREE)
        madvise(v, n, MADV_DONTNEED); /* kernels before 4.5 */
    count(SYS_UNUSED, n);
    gm_obs_released((uintptr_t)v, n);
}

void gm_sysFree(void *v, size_t n) {
    munmap(v, n);
    count(SYS_FREE, n);
}

void gm_sysFault(void *v, size_t n) {
    if (mmap(v, n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED)
        gm_throw("sysFault: mmap failed");
    count(SYS_FAULT, n);
}

void *gm_sysAlloc(size_t n) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    count(SYS_MAP, n);
    return p;
}
