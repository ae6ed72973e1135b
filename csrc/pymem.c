/*
 * pymem.c: calloc and realloc for CPython's memory domains (pymem.h).
 * gm_py_malloc and gm_py_free are in malloc.c, where they inline the fast
 * paths.
 *
 * Python resizes its objects often (lists, strings, bytearrays, dict
 * tables): gm_realloc validated a pointer with gm_check (span lookup and
 * division), twice, before it decided.  gm_py_realloc, and gm_realloc
 * (the preload library's realloc, under PYTHONMALLOC=malloc too) through
 * gm_realloc_fast, decide from the object's state byte, the one load
 * free() validates with: a byte OBJ_LIVE(c) at p's granule says p starts
 * a live small object of class c.
 * A large object is recognised as gm_check does (its span, in use, starts
 * at p, not sampled).  Every other case (a tiny or sampled object, or a
 * bad pointer) goes to the rest of gm_realloc, which checks and reports
 * as before.  Moves go through the fast paths.
 *
 * Where the object goes.  Python grows buffers by small steps (a list by
 * 1/8, the json encoder's and str.join's writers by 1/4), each one a
 * realloc; glibc, which serves everything over 512 bytes under pymalloc,
 * grows a chunk in place (into the free space after it, or mremap) and
 * shrinks it in place, where gm_realloc moved and copied whenever the
 * class (for a large object, the page count) changed, and the classes
 * above 512 bytes are less than 1/4 apart.  So:
 *   - a grown object of more than PY_HEADROOM_MIN bytes gets
 *     1/PY_HEADROOM more than asked, a large one 1/PY_LARGE_HEADROOM more,
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
 *   - a large object that grows takes the free pages right after it, when
 *     there are enough, and stays where it is (gm_mheap_grow_large: as
 *     glibc grows a chunk into its free neighbour).
 * (strings_json of `python -m pygomalloc bench python`, counted with
 * callgrind: the bytes realloc copies under install() fall from 1.7 to
 * 0.5 MB per round; 1.5 MB with the 1/4 rule for large shrinks; glibc's
 * realloc under pymalloc copies 0.2 MB.)
 */
#include <string.h>

#include "gm_internal.h"
#include "pymem.h"

#define PY_HEADROOM 4
#define PY_LARGE_HEADROOM 2
#define PY_HEADROOM_MIN 512

void *gm_py_calloc(void *dom, size_t nelem, size_t elsize) {
    const struct gm_pydomain *d = dom;
    if (!gm_py_routed(dom))
        return d->calloc(d->ctx, nelem, elsize);
    size_t n;
    if (!__builtin_mul_overflow(nelem, elsize, &n) && n <= GM_CALLOC_FAST) {
        void *p = d->fast_malloc(n);
        if (p != NULL)
            memset(p, 0, n);
        return p;
    }
    return gm_calloc(nelem, elsize); /* NULL on overflow */
}

/* The decision for p, an address in an arena, and n > 0: in place, or
 * moved with alloc and release.  Returns 1 with *out set (NULL: out of
 * memory, p untouched) when p is a live small object or a large one;
 * returns 0 for everything else, which the caller's gm_realloc checks and
 * reports.  e is p's arena map entry. */
GM_INLINE int realloc_decide(void *p, uintptr_t e, size_t n, void **out, void *(*alloc)(size_t),
                            void (*release)(void *), unsigned large_keep) {
    uintptr_t a = (uintptr_t)p;
    if ((a & ((1u << STATE_SHIFT) - 1)) == 0) {
        unsigned st = LOAD_RELAXED(gm_state_at(e, a));
        if (st - 1 < NUM_CLASSES - 1) { /* OBJ_LIVE(st) */
            size_t cap = gm_class_to_size[st];
            if (gm_small_stays(st, n)) {
                *out = p; /* (gm_realloc_stays decided the rest; here gm_py_realloc's n == 0, made 1) */
                return 1;
            }
            void *q = alloc(n > cap && n > PY_HEADROOM_MIN ? n + n / PY_HEADROOM : n);
            if (q != NULL) {
                memcpy(q, p, n < cap ? n : cap);
                release(p);
            }
            *out = q;
            return 1;
        }
    }
    if (n > MAX_SMALL_SIZE && (a & (PAGE_SIZE - 1)) == 0) {
        /* A large object, unsampled: see PY_HEADROOM. */
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
    uintptr_t e = gm_arena_map_load((uintptr_t)p);
    return e != 0 && n != 0 && realloc_decide(p, e, n, out, gm_malloc_internal, gm_free_internal, 3);
}

static GM_NOINLINE void *py_realloc_slow(void *dom, void *p, size_t n);

/* The common case with no stack frame (gm_realloc_stays), the rest out
 * of line. */
void *gm_py_realloc(void *dom, void *p, size_t n) {
    if (likely(gm_realloc_stays((uintptr_t)p, n)))
        return p;
    return py_realloc_slow(dom, p, n);
}

static void *py_realloc_slow(void *dom, void *p, size_t n) {
    const struct gm_pydomain *d = dom;
    if (p == NULL)
        return gm_py_routed(dom) ? d->fast_malloc(n) : d->malloc(d->ctx, n);
    uintptr_t e = gm_arena_map_load((uintptr_t)p);
    if (e == 0) /* not ours: the allocator we replaced made it */
        return d->realloc(d->ctx, p, n);
    if (n == 0)
        n = 1; /* Python's realloc(p, 0) keeps a block */
    void *q;
    if (realloc_decide(p, e, n, &q, d->fast_malloc, d->fast_free, PY_LARGE_HEADROOM))
        return q;
    return gm_realloc(p, n);
}
