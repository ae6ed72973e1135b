/*
 * pymem.c: the slow half of realloc for CPython's memory domains
 * (pymem.h).  gm_py_malloc, calloc, realloc's fast half and free are in
 * malloc.c, where they inline the fast paths.
 *
 * Python resizes its objects often (lists, strings, bytearrays, dict
 * tables): gm_realloc validated a pointer with gm_check (span lookup and
 * division), twice, before it decided.  Now gm_realloc and gm_py_realloc
 * (malloc.c) decide a small object from its state byte, the one load
 * free() validates with (realloc_small: in place, or moved through
 * malloc's and free's fast paths, inlined), and a large one here
 * (realloc_decide, through gm_realloc_fast and gm_py_realloc_slow),
 * recognised as gm_check does (its span, in use, starts at p, not
 * sampled).  Every other case (a tiny or sampled object, a program's
 * heap's, or a bad pointer) goes to the rest of gm_realloc, which checks
 * and reports.
 *
 * Where the object goes.  Python grows buffers by small steps (a list by
 * 1/8, the json encoder's and str.join's writers by 1/4), each one a
 * realloc; glibc, which serves everything over 512 bytes under pymalloc,
 * grows a chunk in place (into the free space after it, or mremap) and
 * shrinks it in place, where gm_realloc moved and copied whenever the
 * class (for a large object, the page count) changed, and the classes
 * above 512 bytes are less than 1/4 apart.  So:
 *   - a grown object of more than GM_REALLOC_HEADROOM_MIN bytes gets
 *     1/GM_REALLOC_HEADROOM more than asked (pymem.h), a large one
 *     1/PY_LARGE_HEADROOM more,
 *     so that the next steps stay in place;
 *   - a small object stays in place within its class, and when it shrinks
 *     by less than 1/4 (pymalloc's rule for its own blocks);
 *   - a large object stays in place when it shrinks: by less than 1/2
 *     under gm_py_realloc (Python's writers overallocate, then shrink to
 *     the exact size) or 1/3 under gm_realloc (PY_LARGE_HEADROOM's 1/2
 *     more, asked again, is 2/3 of it: a request no smaller than the last
 *     one always stays) as it is; by more, it gives the pages after its
 *     new end back (gm_mheap_shrink_large: a C program under the preload
 *     library that shrinks a big buffer to fit gets its written pages
 *     back, without a copy, as glibc splits a chunk).  Headroom pages
 *     never written are never resident;
 *   - a large object that grows takes the free pages right after it (a
 *     free run, or the thread's page cache), when there are enough, and
 *     stays where it is (gm_mheap_grow_large: as glibc grows a chunk into
 *     its free neighbour).
 * (strings_json of `python -m pygomalloc bench python`, counted with
 * callgrind: the bytes realloc copies under install() fall from 1.7 to
 * 0.5 MB per round; 1.5 MB with the 1/4 rule for large shrinks; glibc's
 * realloc under pymalloc copies 0.2 MB.)
 */
#include <string.h>

#include "gm_internal.h"
#include "pymem.h"

#define PY_LARGE_HEADROOM 2

/* The decision for p, any address, and n > 0, when p is a large object:
 * in place, or moved with alloc and release.  Returns 1
 * with *out set (NULL: out of memory, p untouched); returns 0 for
 * everything else, which the caller's gm_realloc decides (small objects in
 * malloc.c's realloc_small), checks and reports. */
GM_INLINE int realloc_decide(void *p, size_t n, void **out, void *(*alloc)(size_t), void (*release)(void *),
                            unsigned large_keep) {
    uintptr_t a = (uintptr_t)p;
    if (n > MAX_SMALL_SIZE && (a & (PAGE_SIZE - 1)) == 0) {
        /* A large object, unsampled: see "Where the object goes". */
        gm_mspan *s = gm_span_of(a);
        if (s != NULL && LOAD_RELAXED(&s->state) == SPAN_INUSE && s->sizeclass == 0 && s->startAddr == a &&
            !LOAD_RELAXED(&s->sampled)) {
            size_t cap = s->npages << PAGE_SHIFT;
            if (n <= cap && (n > cap - cap / large_keep ||
                             gm_mheap_shrink_large(s, a, (n + PAGE_SIZE - 1) >> PAGE_SHIFT))) {
                *out = p;
                return 1;
            }
            size_t grown = n + n / PY_LARGE_HEADROOM;
            void *q;
            /* In place when the pages after it are free: with the
             * headroom, else exactly. */
            if (n > cap && grown > n &&
                (gm_mheap_grow_large(s, a, (grown + PAGE_SIZE - 1) >> PAGE_SHIFT) ||
                 gm_mheap_grow_large(s, a, (n + PAGE_SIZE - 1) >> PAGE_SHIFT))) {
                *out = p;
                return 1;
            }
            if (n > cap && grown > n && (q = alloc(grown)) != NULL) {
                memcpy(q, p, cap);
                release(p);
                *out = q;
                return 1;
            }
        }
    }
    return 0;
}

int gm_realloc_fast(void *p, size_t n, void **out) {
    return n != 0 && realloc_decide(p, n, out, gm_malloc_internal, gm_free_internal, 3);
}

void *gm_py_malloc_prev(void *dom, size_t size) { return gm_py_prev_malloc(dom, size); }

/* What gm_py_realloc (malloc.c) did not decide. */
void *gm_py_realloc_slow(void *dom, void *p, size_t n) {
    const struct gm_pydomain *d = dom;
    if (p == NULL) /* an unrouted domain's (gm_py_realloc answers a routed one; a route that
                    * changed since is a race either answer is right for) */
        return d->malloc(d->ctx, n);
    if (gm_arena_map_load((uintptr_t)p) == 0) /* not ours: the allocator we replaced made it */
        return d->realloc(d->ctx, p, n);
    if (n == 0)
        n = 1; /* Python's realloc(p, 0) keeps a block (a small one: gm_realloc's realloc_small) */
    void *q;
    if (realloc_decide(p, n, &q, d->fast_malloc, d->fast_free, PY_LARGE_HEADROOM))
        return q;
    return gm_realloc(p, n);
}
