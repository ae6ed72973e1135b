/*
 * gomalloc.h: the public C API of pygomalloc.
 *
 * pygomalloc is a memory allocator modelled on the Go runtime allocator
 * (see csrc/malloc.c for the design), with an explicit free from any
 * thread.  This header has no dependencies beyond the C library and is the
 * only header a C program or a Python extension needs.
 *
 * Errors.  Functions that return a pointer return NULL and set errno to
 * ENOMEM when memory cannot be had (sizes that overflow included).
 * Functions given a pointer that pygomalloc did not hand out, a pointer into
 * the middle of an object, or an object that is already free, either abort
 * with a message on stderr (the default: continuing could corrupt the heap of
 * a program that has already lost track of its memory) or, when the option
 * "abort_on_error" is 0, leave the heap untouched and report the error
 * (gm_free_checked returns the code; gm_free and gm_realloc set errno to
 * EINVAL).  The *_checked functions never abort on bad input.
 */
#ifndef GOMALLOC_H
#define GOMALLOC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define GM_API __attribute__((visibility("default")))
#else
#define GM_API
#endif

/* Number of size classes, class 0 (large objects) included. */
#define GM_NUM_SIZE_CLASSES 67
/* Largest size served by a size class; larger requests get their own span. */
#define GM_MAX_SMALL_SIZE 32768

/* Error codes returned by gm_free_checked and gm_check. */
enum gm_error {
    GM_OK = 0,
    GM_ERR_NOT_OURS = 1,    /* the pointer is not in memory pygomalloc manages */
    GM_ERR_INTERIOR = 2,    /* the pointer is inside an object, not its start */
    GM_ERR_NOT_ALLOCATED = 3, /* the object is free (double free) or was never handed out */
};

GM_API void *gm_malloc(size_t size);
GM_API void *gm_calloc(size_t nmemb, size_t size);
GM_API void *gm_realloc(void *ptr, size_t size);
GM_API void gm_free(void *ptr);
/* Like gm_free, but returns an enum gm_error instead of aborting. */
GM_API int gm_free_checked(void *ptr);
/* GM_OK if ptr is the start of a live object, else the error gm_free would report. */
GM_API int gm_check(const void *ptr);
GM_API const char *gm_strerror(int code);
/* alignment must be a power of two; returns NULL/EINVAL otherwise. */
GM_API void *gm_aligned_alloc(size_t alignment, size_t size);
/* POSIX semantics: returns 0, EINVAL or ENOMEM; does not set errno. */
GM_API int gm_posix_memalign(void **out, size_t alignment, size_t size);
/* Bytes usable at ptr (>= the requested size); 0 for NULL or a pointer not ours. */
GM_API size_t gm_usable_size(const void *ptr);
/* 1 if ptr lies in memory pygomalloc manages (any address may be asked), else 0. O(1). */
GM_API int gm_owns(const void *ptr);
/* For an allocator that wraps another: if ptr lies in pygomalloc's arenas,
 * free it as gm_free does and return 1; else leave it alone and return 0
 * (the caller gives it to the allocator it came from).  NULL: 0. */
GM_API int gm_free_owned(void *ptr);
/* Flush the calling thread's cache and the transfer caches, and return
 * every free page to the OS.  Returns the number of bytes released by this
 * call. */
GM_API size_t gm_release(void);
/* Flush the calling thread's cache of free objects back to the spans, and
 * the transfer caches (batches other threads flushed) with it: in a
 * single-threaded program nothing free is cached afterwards. */
GM_API void gm_thread_flush(void);

struct gm_size_class_stats {
    uint64_t size;    /* bytes per object of this class (0 for class 0) */
    uint64_t npages;  /* pages per span of this class */
    uint64_t mallocs; /* objects handed out */
    uint64_t frees;   /* objects given back */
    uint64_t spans;   /* spans of this class in use (class 0: one per large object) */
    uint64_t capacity; /* objects those spans hold when full: capacity - (mallocs - frees)
                        * slots hold no live object (free in spans, or cached on lists) */
};

/*
 * Figures in the vocabulary of Go's runtime.MemStats.  Exact when read from
 * a quiescent process (no thread allocating or freeing at the same time);
 * under concurrent use each figure is a recent value.
 */
struct gm_stats {
    /* Memory obtained from the OS. */
    uint64_t sys;           /* heap_sys + mspan_sys + mcache_sys + other_sys */
    uint64_t heap_reserved; /* address space reserved (PROT_NONE or mapped) for arenas */
    uint64_t heap_sys;      /* arena bytes mapped (Prepared or Ready): heap_idle + heap_inuse */
    uint64_t heap_alloc;    /* bytes of live objects (rounded up to their size class) */
    uint64_t heap_idle;     /* bytes in free page runs */
    uint64_t heap_inuse;    /* bytes in spans holding objects */
    uint64_t heap_released; /* part of heap_idle returned to the OS (Prepared) */
    uint64_t heap_objects;  /* live objects: mallocs - frees */
    uint64_t mallocs;       /* objects allocated, ever */
    uint64_t frees;         /* objects freed, ever */
    uint64_t total_alloc;   /* bytes allocated, ever (rounded to size class) */
    uint64_t large_objects; /* live objects larger than GM_MAX_SMALL_SIZE */
    uint64_t mspan_inuse;   /* bytes of span structures in use */
    uint64_t mspan_sys;     /* bytes obtained from the OS for span structures */
    uint64_t mcache_inuse;  /* bytes of per-thread caches in use */
    uint64_t mcache_sys;    /* bytes obtained from the OS for per-thread caches */
    uint64_t other_sys;     /* other metadata: arena maps, heapArena records, bitmaps */
    uint64_t cached_bytes;  /* part of heap_inuse in per-thread free lists (free, not yet back in spans) */
    uint64_t transfer_bytes; /* part of heap_inuse in the transfer caches: lists flushed by one thread, whole, for another */
    uint64_t num_arenas;    /* 64 MiB heap arenas holding mapped memory (each has a heapArena record) */
    uint64_t num_threads;   /* live per-thread caches */
    uint64_t bad_frees;     /* invalid frees detected (and refused) */
    /* OS state transitions (see csrc/mem.c): calls and bytes. */
    uint64_t n_sys_reserve, n_sys_map, n_sys_used, n_sys_unused, n_sys_free, n_sys_fault;
    uint64_t bytes_sys_reserve, bytes_sys_map, bytes_sys_used, bytes_sys_unused, bytes_sys_free,
        bytes_sys_fault;
    /* Scavenger. */
    uint64_t scavenge_cycles;   /* scavenger passes that released something */
    uint64_t scavenged_bytes;   /* bytes returned to the OS, ever */
    uint64_t phys_page_size;    /* physical page size read at start-up */
    uint64_t huge_page_size;    /* transparent huge page size (0 if none) */
    /* The tiny allocator (option tiny): objects of 1 to 8 bytes in shared
     * 16-byte blocks, which count as objects of the 16-byte class above. */
    uint64_t tiny_mallocs;      /* tiny objects allocated, ever */
    uint64_t tiny_frees;        /* tiny objects freed, ever */
    struct gm_size_class_stats by_size[GM_NUM_SIZE_CLASSES];
};

/* Fill *st.  Returns 0. */
GM_API int gm_read_stats(struct gm_stats *st);

/*
 * Options, by name.  Each can also be set with an environment variable
 * GOMALLOC_<NAME in upper case> read at start-up.  Returns 0, or EINVAL
 * for an unknown name or a value out of range.
 */
GM_API int gm_option_set(const char *name, long long value);
GM_API int gm_option_get(const char *name, long long *value);
/* Name of option i (0-based), or NULL past the last. */
GM_API const char *gm_option_name(int i);

/*
 * Heap invariant checker: walks every arena, span and per-thread cache and
 * checks the invariants written above the structures in csrc/gm_internal.h.
 * Returns 0 when the heap is consistent; otherwise prints what is wrong to
 * stderr and returns the number of violations.  Takes every lock: call it
 * from a quiescent point.
 */
GM_API int gm_check_heap(void);

/*
 * Heap profile (Go's MemProfile): with the option profile_rate = R > 0, one
 * allocation per R bytes on average (exponentially spaced, so every byte is
 * equally likely to be sampled) is recorded with its call stack.  Records
 * are per distinct stack, with the samples' objects and bytes (size class
 * sizes): allocated ever, and freed since.  Off by default; on, every small
 * malloc takes the slow path (about twice the instructions).
 */
#define GM_PROFILE_DEPTH 32
struct gm_profile_record {
    uint64_t alloc_objects, alloc_bytes; /* sampled allocations from this stack, ever */
    uint64_t free_objects, free_bytes;   /* of those, freed since */
    uint32_t nstack;                     /* frames in stack */
    const void *stack[GM_PROFILE_DEPTH]; /* return addresses, the allocation's caller first */
};
/* Copy up to n records into out (may be NULL with n = 0).  Returns the
 * number of records the profile holds, which may be more than n. */
GM_API int gm_profile_read(struct gm_profile_record *out, int n);
/* "object(symbol+0xoffset)" for a code address, into buf of len bytes;
 * returns buf. */
GM_API const char *gm_profile_symbol(const void *pc, char *buf, size_t len);

/*
 * ---- Testing only ----------------------------------------------------------
 *
 * Fault injection in the OS layer (csrc/mem_linux.c), for tests of the
 * out-of-memory paths: from now on, every `every`-th call (1: every call)
 * of the kinds in `kinds` (GM_DEBUG_OS_* bits) fails as the kernel would
 * make it fail (mmap: ENOMEM; madvise: EAGAIN or ENOMEM), without reaching
 * the kernel.  Calls are counted in one process-wide counter, reset by each
 * call of this function, so a single-threaded sequence of operations fails
 * at the same points on every run.  every == 0 or kinds == 0 turns it off.
 * The environment variables GOMALLOC_DEBUG_FAIL_EVERY=N and
 * GOMALLOC_DEBUG_FAIL_KINDS (a number, or names separated by commas:
 * reserve, map, fault, alloc, unused, used, all; default all) set it at
 * start-up.  Not for production: allocations fail on purpose.
 */
#define GM_DEBUG_OS_RESERVE 0x01u /* mmap PROT_NONE reserving arena address space (sysReserve) */
#define GM_DEBUG_OS_MAP 0x02u     /* mmap MAP_FIXED read/write of reserved space (sysMap) */
#define GM_DEBUG_OS_FAULT 0x04u   /* mmap MAP_FIXED PROT_NONE (sysFault) */
#define GM_DEBUG_OS_ALLOC 0x08u   /* mmap of metadata: span structs, caches, arena records (sysAlloc) */
#define GM_DEBUG_OS_UNUSED 0x10u  /* madvise DONTNEED/FREE releasing free pages (sysUnused) */
#define GM_DEBUG_OS_USED 0x20u    /* madvise HUGEPAGE (sysUsed, option thp) */
#define GM_DEBUG_OS_ALL 0x3fu
GM_API void gm_debug_fail_os_calls(unsigned long every, unsigned kinds);
/* Calls failed on purpose since the last gm_debug_fail_os_calls. */
GM_API unsigned long gm_debug_os_failures(void);

/*
 * The C API of the Python package, through a PyCapsule: a Python extension
 * uses the allocator the package runs (the one pygomalloc.malloc and
 * pygomalloc.install() use) without linking to any library.  Include
 * <Python.h> first, add pygomalloc.get_include() to the include path, and
 * call gm_capi_import() once, with the GIL held, at module init:
 *
 *     static const struct gm_capi *gm;
 *     ...
 *     if ((gm = gm_capi_import()) == NULL)
 *         return NULL;  (an ImportError or RuntimeError is set)
 *     void *p = gm->malloc(100);
 *     gm->free(p);
 *
 * The functions are the gm_ functions of this header; they need no GIL.
 */
#define GM_CAPI_NAME "pygomalloc._C_API"
#define GM_CAPI_VERSION 1

struct gm_capi {
    unsigned int version; /* GM_CAPI_VERSION the package was built with */
    size_t size;          /* sizeof(struct gm_capi) there: later versions only append */
    void *(*malloc)(size_t size);
    void *(*calloc)(size_t nmemb, size_t size);
    void *(*realloc)(void *ptr, size_t size);
    void (*free)(void *ptr);
    int (*free_checked)(void *ptr);
    void *(*aligned_alloc)(size_t alignment, size_t size);
    size_t (*usable_size)(const void *ptr);
    int (*owns)(const void *ptr);
    int (*check)(const void *ptr);
    const char *(*strerror)(int code);
    size_t (*release)(void);
    void (*thread_flush)(void);
    int (*read_stats)(struct gm_stats *st);
    int (*option_get)(const char *name, long long *value);
    int (*option_set)(const char *name, long long value);
    int (*profile_read)(struct gm_profile_record *out, int n);
    int (*free_owned)(void *ptr);
};

#ifdef Py_PYTHON_H
/* The package's C API, or NULL with a Python exception set.  GIL held. */
static inline const struct gm_capi *gm_capi_import(void) {
    const struct gm_capi *api = (const struct gm_capi *)PyCapsule_Import(GM_CAPI_NAME, 0);
    if (api == NULL)
        return NULL;
    if (api->version != GM_CAPI_VERSION || api->size < sizeof(struct gm_capi)) {
        PyErr_Format(PyExc_RuntimeError,
                     "pygomalloc C API version %u (%zu bytes) does not match this header's %d (%zu bytes)",
                     api->version, api->size, GM_CAPI_VERSION, sizeof(struct gm_capi));
        return NULL;
    }
    return api;
}
#endif

#ifdef __cplusplus
}
#endif
#endif /* GOMALLOC_H */
