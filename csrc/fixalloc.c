/*
 * fixalloc.c: off-heap metadata (malloc.go persistentalloc, mfixalloc.go).
 *
 * Span structs, mcaches and heapArena records never come from libc malloc
 * (which may be us, under LD_PRELOAD) nor from the heap they describe.
 *
 * persistentalloc hands out memory that is never freed, bump-allocated from
 * 256 KiB chunks obtained with sysAlloc.  fixalloc is a free list of
 * fixed-size objects on top of it; freed objects are reused, never returned.
 * Neither locks: callers hold the lock that protects the allocator they use
 * (persistentalloc has its own).
 */
#include <string.h>

#include "gm_internal.h"

#define PERSISTENT_CHUNK ((uintptr_t)256 << 10)

static pthread_mutex_t persistent_lock = PTHREAD_MUTEX_INITIALIZER;
static uintptr_t persistent_base; /* current chunk; under persistent_lock */
static uintptr_t persistent_off;  /* bytes used in it; under persistent_lock */

/* Returns zeroed memory, or NULL when the OS refuses. */
void *gm_persistentalloc(size_t size, size_t align, uint64_t *sysStat) {
    if (align == 0)
        align = 8;
    if (size >= PERSISTENT_CHUNK / 4) {
        /* Big requests get their own mapping: page rounded. */
        size_t n = (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
        void *p = gm_sysAlloc(n);
        if (p != NULL && sysStat != NULL)
            ATOMIC_ADD(sysStat, n);
        return p;
    }
    pthread_mutex_lock(&persistent_lock);
    persistent_off = (persistent_off + align - 1) & ~(uintptr_t)(align - 1);
    if (persistent_base == 0 || persistent_off + size > PERSISTENT_CHUNK) {
        void *chunk = gm_sysAlloc(PERSISTENT_CHUNK);
        if (chunk == NULL) {
            pthread_mutex_unlock(&persistent_lock);
            return NULL;
        }
        persistent_base = (uintptr_t)chunk;
        persistent_off = 0;
    }
    void *p = (void *)(persistent_base + persistent_off);
    persistent_off += size;
    pthread_mutex_unlock(&persistent_lock);
    if (sysStat != NULL)
        ATOMIC_ADD(sysStat, size);
    return p;
}

void gm_fixalloc_init(gm_fixalloc *f, size_t size, uint64_t *sysStat) {
    memset(f, 0, sizeof *f);
    f->size = (size + 63) & ~(size_t)63; /* whole cache lines: no false sharing */
    f->align = 64;
    f->sys = sysStat;
}

/* Objects aligned to align (a power of two): their size is rounded up to
 * it, and chunks start on it. */
void gm_fixalloc_init_aligned(gm_fixalloc *f, size_t size, size_t align, uint64_t *sysStat) {
    gm_fixalloc_init(f, (size + align - 1) & ~(align - 1), sysStat);
    f->align = align;
}

/* Returns zeroed memory, or NULL. */
void *gm_fixalloc_alloc(gm_fixalloc *f) {
    void *p = f->list;
    if (p != NULL) {
        f->list = *(void **)p;
        memset(p, 0, f->size);
    } else {
        if (f->nchunk < f->size) {
            size_t n = f->size >= 4096 ? f->size * 8 : f->size * 64 > 16384 ? f->size * 64 : 16384;
            void *c = gm_persistentalloc(n + (f->align > 64 ? f->align : 0), 64, f->sys);
            if (c == NULL)
                return NULL;
            f->chunk = ((uintptr_t)c + f->align - 1) & ~(uintptr_t)(f->align - 1);
            f->nchunk = n;
        }
        p = (void *)f->chunk;
        f->chunk += f->size;
        f->nchunk -= f->size;
    }
    f->inuse += f->size;
    return p;
}

void gm_fixalloc_free(gm_fixalloc *f, void *p) {
    f->inuse -= f->size;
    *(void **)p = f->list;
    f->list = p;
}

/* fork(): the lock must not be held by a thread that will not exist. */
void gm_persistent_lock(void) { pthread_mutex_lock(&persistent_lock); }
void gm_persistent_unlock(void) { pthread_mutex_unlock(&persistent_lock); }
void gm_persistent_reinit(void) { pthread_mutex_init(&persistent_lock, NULL); }
