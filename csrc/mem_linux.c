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
 * Every call that succeeds is counted (calls and bytes) in gm_sysstats.
 * Policy (what to release, when) lives in the page heap and the scavenger,
 * not here.
 *
 * Failures.  Every transition can fail as the kernel makes it fail, and
 * none of them is fatal: sysReserve, sysMap and sysAlloc return NULL / an
 * errno (ENOMEM: over the commit limit, RLIMIT_AS, or vm.max_map_count),
 * and their callers turn that into NULL/ENOMEM for the program; sysUnused
 * and sysFault return false (madvise: EAGAIN or ENOMEM; the PROT_NONE
 * mmap: ENOMEM), and the page heap then keeps the pages as they were
 * (resident, not counted as released; read/write, not faulted).
 *
 * Fault injection (testing only).  gm_debug_fail_os_calls(every, kinds), or
 * GOMALLOC_DEBUG_FAIL_EVERY=N (and GOMALLOC_DEBUG_FAIL_KINDS) in the
 * environment at start-up, makes every Nth call of the chosen kinds fail
 * without reaching the kernel, with the errno the kernel would give:
 * calls are counted in one process-wide counter, so a single-threaded
 * sequence of operations fails at the same calls on every run.
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

/* ---- fault injection (testing only) ---------------------------------------- */

static unsigned long fail_every;  /* 0: off. Relaxed. */
static unsigned fail_kinds;       /* GM_DEBUG_OS_* bits. Relaxed. */
static unsigned long fail_calls;  /* calls of the chosen kinds since the last setting. Atomic. */
static unsigned long fail_count;  /* of them, failed on purpose. Atomic. */

void gm_debug_fail_os_calls(unsigned long every, unsigned kinds) {
    STORE_RELAXED(&fail_every, 0);
    STORE_RELAXED(&fail_kinds, kinds & GM_DEBUG_OS_ALL);
    STORE_RELAXED(&fail_calls, 0);
    STORE_RELAXED(&fail_count, 0);
    __atomic_store_n(&fail_every, kinds ? every : 0, __ATOMIC_RELEASE);
}

unsigned long gm_debug_os_failures(void) { return __atomic_load_n(&fail_count, __ATOMIC_RELAXED); }

/* Should this call of kind `kind` fail?  Then errno is set as the kernel
 * would set it.  One relaxed load when injection is off. */
static bool inject(unsigned kind, int err) {
    unsigned long every = __atomic_load_n(&fail_every, __ATOMIC_ACQUIRE);
    if (likely(every == 0) || !(LOAD_RELAXED(&fail_kinds) & kind))
        return false;
    if (__atomic_add_fetch(&fail_calls, 1, __ATOMIC_RELAXED) % every != 0)
        return false;
    __atomic_fetch_add(&fail_count, 1, __ATOMIC_RELAXED);
    errno = err;
    return true;
}

/* GOMALLOC_DEBUG_FAIL_KINDS: a number (0x3f) or names separated by commas
 * ("map,alloc"); unset: every kind. */
static unsigned parse_kinds(const char *s) {
    static const struct { const char *name; unsigned bit; } names[] = {
        {"reserve", GM_DEBUG_OS_RESERVE}, {"map", GM_DEBUG_OS_MAP}, {"fault", GM_DEBUG_OS_FAULT},
        {"alloc", GM_DEBUG_OS_ALLOC}, {"unused", GM_DEBUG_OS_UNUSED}, {"used", GM_DEBUG_OS_USED},
        {"all", GM_DEBUG_OS_ALL},
    };
    if (s == NULL || *s == 0)
        return GM_DEBUG_OS_ALL;
    char *end;
    unsigned long v = strtoul(s, &end, 0);
    if (end != s && *end == 0)
        return (unsigned)v & GM_DEBUG_OS_ALL;
    unsigned kinds = 0;
    while (*s != 0) {
        size_t n = strcspn(s, ",");
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (strlen(names[i].name) == n && strncmp(s, names[i].name, n) == 0)
                kinds |= names[i].bit;
        s += n;
        if (*s == ',')
            s++;
    }
    return kinds;
}

static void fail_init_from_env(void) {
    const char *e = getenv("GOMALLOC_DEBUG_FAIL_EVERY");
    if (e == NULL || *e == 0)
        return;
    char *end;
    unsigned long every = strtoul(e, &end, 10);
    if (*end != 0)
        return;
    gm_debug_fail_os_calls(every, parse_kinds(getenv("GOMALLOC_DEBUG_FAIL_KINDS")));
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
    fail_init_from_env();
}

void *gm_sysReserve(void *hint, size_t n) {
    if (inject(GM_DEBUG_OS_RESERVE, ENOMEM))
        return NULL;
    void *p = mmap(hint, n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    count(SYS_RESERVE, n);
    return p;
}

/* Reserve n bytes aligned to align: at hint if that is free and aligned,
 * else anywhere, by over-reserving and trimming (sysReserveAligned).  With
 * a hint, NULL has errno EEXIST when the hint was taken (another hint may
 * do), ENOMEM when the kernel refused (no other will). */
void *gm_sysReserveAligned(void *hint, size_t n, size_t align) {
    if (hint != NULL) {
        void *p = gm_sysReserve(hint, n);
        if (p == hint)
            return p;
        if (p != NULL) {
            gm_sysFree(p, n);
            errno = EEXIST;
        }
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

/* Option thp: advise transparent huge pages on the whole huge pages inside
 * [v, v + n) only, so that a partly used region is not inflated
 * (tcmalloc#85). */
static void advise_huge(void *v, size_t n) {
    if (LOAD_RELAXED(&gm_opt.thp) && gm_huge_page_size != 0) {
        uintptr_t h = gm_huge_page_size;
        uintptr_t b = ((uintptr_t)v + h - 1) & ~(h - 1), e = ((uintptr_t)v + n) & ~(h - 1);
        if (e > b && !inject(GM_DEBUG_OS_USED, EAGAIN))
            (void)madvise((void *)b, e - b, MADV_HUGEPAGE); /* advice: failure changes nothing */
    }
}

/* Returns 0 or the errno.  A failed MAP_FIXED mmap may, on older kernels,
 * have unmapped the range already: the caller re-reserves it (sysFault).
 * Under option thp, a chunk the heap grows by is advised at once: the
 * small spans carved from it one page-cache refill (512 KiB) at a time
 * are never whole huge pages for sysUsed (bench mleak, 400 MiB of small
 * objects: 121,000 page faults instead of 12,000). */
int gm_sysMap(void *v, size_t n) {
    if (inject(GM_DEBUG_OS_MAP, ENOMEM))
        return ENOMEM;
    void *p = mmap(v, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED)
        return errno; /* ENOMEM: over the commit limit or the map count */
    if (p != v)
        gm_throw("sysMap: mmap MAP_FIXED returned another address");
    count(SYS_MAP, n);
    advise_huge(v, n);
    return 0;
}

void gm_sysUsed(void *v, size_t n) {
    count(SYS_USED, n);
    advise_huge(v, n);
}

/* Returns whether the pages were released.  madvise fails with EAGAIN or
 * ENOMEM when the kernel is short of resources; the pages then stay
 * resident (Ready), which costs memory but nothing else. */
bool gm_sysUnused(void *v, size_t n) {
    int advice = LOAD_RELAXED(&gm_opt.madv_free) ? MADV_FREE : MADV_DONTNEED;
    if (inject(GM_DEBUG_OS_UNUSED, (gm_debug_os_failures() & 1) ? EAGAIN : ENOMEM))
        return false;
    if (madvise(v, n, advice) != 0) {
        if (advice != MADV_FREE || errno != EINVAL || madvise(v, n, MADV_DONTNEED) != 0)
            return false; /* EINVAL for MADV_FREE: kernels before 4.5 */
    }
    count(SYS_UNUSED, n);
    gm_obs_released((uintptr_t)v, n);
    return true;
}

void gm_sysFree(void *v, size_t n) {
    munmap(v, n);
    count(SYS_FREE, n);
}

/* Returns false when the kernel refuses (ENOMEM: vm.max_map_count, as the
 * new mapping may split one).  The pages are then as they were. */
bool gm_sysFault(void *v, size_t n) {
    if (inject(GM_DEBUG_OS_FAULT, ENOMEM))
        return false;
    if (mmap(v, n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED)
        return false;
    count(SYS_FAULT, n);
    return true;
}

void *gm_sysAlloc(size_t n) {
    if (inject(GM_DEBUG_OS_ALLOC, ENOMEM))
        return NULL;
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    count(SYS_MAP, n);
    return p;
}
