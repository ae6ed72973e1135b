/*
 * preload.c: the rest of the malloc family for the LD_PRELOAD library
 * (built with -DGM_PRELOAD; malloc, free, calloc, realloc, aligned_alloc and
 * posix_memalign are aliases of the gm_ functions, defined in malloc.c so
 * that they jump straight to the fast path).
 *
 *   LD_PRELOAD=.../libgomalloc_preload.so some-program
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <unistd.h>

#include "gm_internal.h"

#define EXPORT __attribute__((visibility("default")))

EXPORT void *reallocarray(void *p, size_t n, size_t size) {
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    return gm_realloc(p, total);
}

EXPORT void *memalign(size_t alignment, size_t size) { return gm_aligned_alloc(alignment, size); }

EXPORT void *valloc(size_t size) { return gm_aligned_alloc((size_t)sysconf(_SC_PAGESIZE), size); }

EXPORT void *pvalloc(size_t size) {
    size_t ps = (size_t)sysconf(_SC_PAGESIZE);
    if (size > SIZE_MAX - ps) {
        errno = ENOMEM;
        return NULL;
    }
    return gm_aligned_alloc(ps, (size + ps - 1) & ~(ps - 1));
}

EXPORT size_t malloc_usable_size(void *p) { return gm_usable_size(p); }

/* C23 */
EXPORT void free_sized(void *p, size_t size) {
    (void)size;
    gm_free(p);
}

EXPORT void free_aligned_sized(void *p, size_t alignment, size_t size) {
    (void)alignment;
    (void)size;
    gm_free(p);
}

EXPORT void cfree(void *p) { gm_free(p); }

/* Initialise before main, while the process has one thread. */
__attribute__((constructor)) static void preload_init(void) { gm_ensure_init(); }
