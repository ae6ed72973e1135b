/*
 * pymem.c: calloc and realloc for CPython's memory domains (pymem.h).
 * gm_py_malloc and gm_py_free are in malloc.c, where they inline the fast
 * paths.
 *
 * Python resizes its objects often (lists, strings, bytearrays, dict
 * tables): gm_realloc validates a pointer with gm_check (span lookup and
 * division), twice, before it decides.  gm_py_realloc decides from the
 * object's state byte, the one load free() validates with: a byte
 * OBJ_LIVE(c) at p's granule says p starts a live small object of class c,
 * so the new size stays in place when its class is c (as gm_realloc does)
 * and moves otherwise, through the fast paths.  Every other byte (a large,
 * tiny or sampled object, or a bad pointer) goes to gm_realloc, which
 * checks and reports as before.
 */
#include <string.h>

#include "gm_internal.h"
#include "pymem.h"

/* calloc of up to this many bytes: the malloc fast path and a memset.
 * Larger ones go to gm_calloc, which skips the memset of fresh pages. */
#define PY_CALLOC_FAST GM_SC_SMALL_SIZE_MAX

void *gm_py_calloc(void *dom, size_t nelem, size_t elsize) {
    const struct gm_pydomain *d = dom;
    if (!gm_py_routed(dom))
        return d->calloc(d->ctx, nelem, elsize);
    size_t n;
    if (!__builtin_mul_overflow(nelem, elsize, &n) && n <= PY_CALLOC_FAST) {
        void *p = gm_malloc(n);
        if (p != NULL)
            memset(p, 0, n);
        return p;
    }
    return gm_calloc(nelem, elsize); /* NULL on overflow */
}

void *gm_py_realloc(void *dom, void *p, size_t n) {
    const struct gm_pydomain *d = dom;
    if (p == NULL)
        return gm_py_malloc(dom, n);
    uintptr_t a = (uintptr_t)p, e = gm_arena_map_load(a);
    if (e == 0) /* not ours: the allocator we replaced made it */
        return d->realloc(d->ctx, p, n);
    if (n == 0)
        n = 1; /* Python's realloc(p, 0) keeps a block */
    if ((a & ((1u << STATE_SHIFT) - 1)) == 0) {
        unsigned st = LOAD_RELAXED(gm_state_at(e, a));
        if (st - 1 < NUM_CLASSES - 1) { /* OBJ_LIVE(st) */
            size_t cap = gm_class_to_size[st];
            if (n <= cap && n > gm_class_to_size[st - 1])
                return p; /* the same class */
            void *q = gm_malloc(n);
            if (q == NULL)
                return NULL; /* p is untouched */
            memcpy(q, p, n < cap ? n : cap);
            gm_free(p);
            return q;
        }
    }
    return gm_realloc(p, n);
}
