/*
 * pymem.h: pygomalloc as the allocator of CPython's memory domains
 * (PyMem_SetAllocator; pygomalloc.install(), in build_ext.py's preamble).
 *
 * The four functions have PyMemAllocatorEx's signatures, so that the
 * interpreter calls them straight, with no wrapper between: their context
 * is a struct gm_pydomain, one per domain, which holds the allocator they
 * replaced (CPython allows only wrapping after start-up: blocks that are
 * not pygomalloc's go back to it) and whether new blocks come from
 * pygomalloc.  Nothing in them relies on the GIL (the raw domain, and the
 * mem domain of free-threaded builds, call them from any thread) but
 * gm_py_free_gil, the free of the domains whose callers hold it.
 */
#ifndef GM_PYMEM_H
#define GM_PYMEM_H

#include "gomalloc.h"

struct gm_pydomain {
    /* The allocator replaced, as CPython's PyMemAllocatorEx lays it out. */
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr);
    /* 1: new blocks come from pygomalloc, 0: from the allocator replaced.
     * Relaxed atomic.  Read by gm_py_calloc and gm_py_realloc(NULL, n);
     * gm_py_malloc reads none: the domain's malloc is gm_py_malloc while
     * route is 1, gm_py_malloc_prev while it is 0. */
    int route;
    /* gm_malloc and gm_free, as the installer's dynamic linker resolved
     * them, for gm_py_realloc_slow's large objects: the core's own calls to
     * its IFUNCs are resolved while the core is relocated, maybe before
     * its TLS descriptor is, which picks the slower variants (malloc.c). */
    void *(*fast_malloc)(size_t size);
    void (*fast_free)(void *ptr);
};

GM_API void *gm_py_malloc(void *dom, size_t size);
/* The replaced allocator's malloc: a domain's malloc while it is routed
 * back to that allocator (its other three functions stay ours). */
GM_API void *gm_py_malloc_prev(void *dom, size_t size);
GM_API void *gm_py_calloc(void *dom, size_t nelem, size_t elsize);
GM_API void *gm_py_realloc(void *dom, void *ptr, size_t size);
/* gm_py_realloc for the domains gm_py_free_gil serves: a small object
 * moved is freed as gm_py_free_gil frees. */
GM_API void *gm_py_realloc_gil(void *dom, void *ptr, size_t size);
GM_API void gm_py_free(void *dom, void *ptr);
/* gm_py_free for domains whose every caller holds the GIL (mem and obj in
 * builds with a GIL): their frees of a block are ordered, and the state
 * byte is claimed with a plain store instead of a compare-and-swap
 * (malloc.c, free_push_fast).  Not for the raw domain, nor for any domain
 * of a free-threaded build. */
GM_API void gm_py_free_gil(void *dom, void *ptr);

#ifdef GM_HIDDEN /* inside the core */
/* gm_realloc's common case (pymem.c): p a live small object or a large
 * one, n > 0; returns 1 with *out (NULL: no memory, p untouched), or 0 for
 * gm_realloc's own checks. */
GM_HIDDEN int gm_realloc_fast(void *p, size_t n, void **out);
/* A small object grown past GM_REALLOC_HEADROOM_MIN bytes is given
 * 1/GM_REALLOC_HEADROOM more than asked (malloc.c's realloc_small; the
 * policy: pymem.c, "Where the object goes"). */
#define GM_REALLOC_HEADROOM 4
#define GM_REALLOC_HEADROOM_MIN 512
/* gm_py_realloc's cases other than small objects and realloc(NULL, n) routed. */
GM_HIDDEN void *gm_py_realloc_slow(void *dom, void *ptr, size_t size);
#endif

static inline int gm_py_routed(const void *dom) {
    return __atomic_load_n(&((const struct gm_pydomain *)dom)->route, __ATOMIC_RELAXED);
}
/* The replaced allocator's malloc, calloc and free, for gm_py_malloc_prev,
 * gm_py_calloc and gm_py_free (malloc.c, next to the fast paths they
 * inline). */
static inline void *gm_py_prev_malloc(void *dom, size_t size) {
    const struct gm_pydomain *d = (const struct gm_pydomain *)dom;
    return d->malloc(d->ctx, size);
}
static inline void *gm_py_prev_calloc(void *dom, size_t nelem, size_t elsize) {
    const struct gm_pydomain *d = (const struct gm_pydomain *)dom;
    return d->calloc(d->ctx, nelem, elsize);
}
static inline void gm_py_prev_free(void *dom, void *ptr) {
    const struct gm_pydomain *d = (const struct gm_pydomain *)dom;
    d->free(d->ctx, ptr);
}

#endif
