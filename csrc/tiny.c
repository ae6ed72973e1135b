/*
 * tiny.c: the tiny allocator (malloc.go's tiny allocator, with explicit
 * free).
 *
 * With the option tiny on, malloc of 1 to 8 bytes takes a slot of a 16-byte
 * block shared with other tiny objects of one slot size: 1, 2, 4 or 8
 * bytes, the power of two not below the size, so that every object keeps
 * the alignment C requires for its size (a 3-byte object can hold at most
 * a 2-byte type; it gets a 4-byte slot, 4-byte aligned).  Sixteen 1-byte
 * objects, or four 4-byte ones, fill one block, where the 16-byte class
 * would take 16 bytes each.
 *
 * A block is an ordinary object of the 16-byte class whose state byte says
 * OBJ_TINY.  Go frees a tiny block when the collector finds none of its
 * objects reachable; here each block has a word of its own, outside it (a
 * span that hosts tiny blocks gets an array of them, mspan.tinywords):
 *
 *   bits 0-15   slot i holds a live object
 *   bits 16-17  log2 of the slot size
 *   bit 20      retired: the owning thread allocates from it no more
 *
 * The owning thread hands out its current block's slots in order, setting
 * their bits; when it is full (or the thread exits) it retires the block.
 * Any thread frees an object by clearing its bit.  Both are atomic
 * read-modify-writes of the one word, so exactly one of them sees the block
 * both retired and empty, and frees the block as an ordinary 16-byte
 * object.  A bit already clear is a double free, caught exactly; an
 * address between slots is an interior pointer.  Slots freed while the
 * block is still current are not handed out again: the block goes back
 * whole once its last object is freed.
 *
 * Costs.  Off (the default), none.  On, malloc of 1 to 8 bytes leaves the
 * fast path (the class-offset tables route it to the slow path) and takes a
 * slot with one atomic OR; its free takes the slow path and one atomic AND.
 * Objects are not sampled by the heap profile.
 */
#include <errno.h>
#include <string.h>

#include "gm_internal.h"

#define TINY_LIVE 0xffffu
#define TINY_KIND_SHIFT 16
#define TINY_RETIRED (1u << 20)

uint64_t gm_dead_tiny_mallocs, gm_dead_tiny_frees; /* of exited threads and cache-less frees. Atomic. */

static inline unsigned kind_of(size_t size) { return size <= 1 ? 0 : size <= 2 ? 1 : size <= 4 ? 2 : 3; }

static inline uint32_t *word_of(const gm_mspan *s, uintptr_t i) {
    uint32_t *w = __atomic_load_n(&s->tinywords, __ATOMIC_ACQUIRE);
    return w != NULL ? &w[i] : NULL;
}

/* A block with no live object and no owner goes back as a 16-byte object,
 * onto the list of cache c: the freeing thread's, or the one being flushed
 * (a cache an exited thread left is flushed by another thread, whose own
 * lists must not collect its blocks). */
static void release_block(gm_mcache *c, gm_mspan *s, uintptr_t i) {
    uint8_t *st = gm_objstate_ptr(s, i);
    void *block = (void *)(s->startAddr + i * s->elemsize);
    gm_set_objstate(st, OBJ_LIVE(TINY_CLASS));
    if (c == NULL || c == &gm_nocache || !gm_free_to(c, TINY_CLASS, block, st))
        gm_free_internal(block);
}

static void retire(gm_mcache *c, uintptr_t block, uint32_t *w) {
    uint32_t old = __atomic_fetch_or(w, TINY_RETIRED, __ATOMIC_ACQ_REL);
    if ((old & TINY_LIVE) == 0) {
        gm_mspan *s = gm_span_of(block);
        release_block(c, s, gm_span_index(s, block));
    }
}

/* A fresh block for slot size 1 << k, or 0. */
static uintptr_t new_block(gm_mcache *c, unsigned k) {
    void *b = gm_malloc_small_unsampled(c, 16);
    if (b == NULL)
        return 0;
    uintptr_t a = (uintptr_t)b;
    gm_mspan *s = gm_span_of(a);
    uintptr_t i = gm_span_index(s, a);
    if (__atomic_load_n(&s->tinywords, __ATOMIC_ACQUIRE) == NULL) {
        gm_mcentral *mc = &gm_central[TINY_CLASS];
        pthread_mutex_lock(&mc->lock);
        if (s->tinywords == NULL) {
            uint32_t *w = gm_fixalloc_alloc(&mc->tinywordalloc);
            if (w != NULL)
                __atomic_store_n(&s->tinywords, w, __ATOMIC_RELEASE);
        }
        pthread_mutex_unlock(&mc->lock);
        if (__atomic_load_n(&s->tinywords, __ATOMIC_ACQUIRE) == NULL) {
            gm_free_internal(b);
            errno = ENOMEM;
            return 0;
        }
    }
    __atomic_store_n(word_of(s, i), (uint32_t)k << TINY_KIND_SHIFT, __ATOMIC_RELEASE);
    GM_ASSERT(gm_objstate(s, i) == OBJ_LIVE(TINY_CLASS));
    gm_set_objstate(gm_objstate_ptr(s, i), OBJ_TINY);
    c->tinyword[k] = word_of(s, i);
    return a;
}

void *gm_tiny_alloc(gm_mcache *c, size_t size, bool zero) {
    unsigned k = kind_of(size), n = 16u >> k;
    uintptr_t b = c->tinyblock[k];
    unsigned i = c->tinynext[k];
    if (b == 0 || i == n) {
        if (b != 0)
            retire(c, b, c->tinyword[k]);
        c->tinyblock[k] = 0;
        if ((b = new_block(c, k)) == 0)
            return NULL; /* errno set by the 16-byte malloc */
        c->tinyblock[k] = b;
        i = 0;
    }
    __atomic_fetch_or(c->tinyword[k], 1u << i, __ATOMIC_RELAXED);
    c->tinynext[k] = (uint8_t)(i + 1);
    c->tiny_mallocs++;
    void *p = (void *)(b + ((uintptr_t)i << k));
    if (zero)
        memset(p, 0, (size_t)1 << k);
    return p;
}

int gm_tiny_check(const gm_mspan *s, uintptr_t i, uintptr_t p) {
    uint32_t *w = word_of(s, i);
    if (w == NULL)
        return GM_ERR_NOT_ALLOCATED;
    uint32_t v = __atomic_load_n(w, __ATOMIC_ACQUIRE);
    unsigned k = (v >> TINY_KIND_SHIFT) & 3, off = (unsigned)(p - (s->startAddr + i * s->elemsize));
    if (off & ((1u << k) - 1))
        return GM_ERR_INTERIOR;
    return v & (1u << (off >> k)) ? GM_OK : GM_ERR_NOT_ALLOCATED;
}

size_t gm_tiny_usable(const gm_mspan *s, uintptr_t i) {
    uint32_t *w = word_of(s, i);
    return w != NULL ? (size_t)1 << ((__atomic_load_n(w, __ATOMIC_ACQUIRE) >> TINY_KIND_SHIFT) & 3) : 0;
}

int gm_tiny_free(gm_mcache *c, gm_mspan *s, uintptr_t i, uintptr_t p) {
    uint32_t *w = word_of(s, i);
    unsigned k = (__atomic_load_n(w, __ATOMIC_ACQUIRE) >> TINY_KIND_SHIFT) & 3;
    uint32_t bit = 1u << ((p - (s->startAddr + i * s->elemsize)) >> k);
    uint32_t old = __atomic_fetch_and(w, ~bit, __ATOMIC_ACQ_REL);
    if (!(old & bit))
        return GM_ERR_NOT_ALLOCATED; /* freed twice at once: the other free won */
    if (c != &gm_nocache)
        c->tiny_frees++;
    else
        ATOMIC_ADD(&gm_dead_tiny_frees, 1);
    if ((old & ~bit & TINY_LIVE) == 0 && (old & TINY_RETIRED))
        release_block(c, s, i);
    return GM_OK;
}

void gm_tiny_retire_all(gm_mcache *c) {
    for (unsigned k = 0; k < 4; k++) {
        if (c->tinyblock[k] != 0)
            retire(c, c->tinyblock[k], c->tinyword[k]);
        c->tinyblock[k] = 0;
        c->tinyword[k] = NULL;
        c->tinynext[k] = 0;
    }
}

/* The heap checker: a tiny block's word must name a slot size and mark
 * only slots that exist. */
int gm_tiny_check_block(const gm_mspan *s, uintptr_t i) {
    uint32_t *w = word_of(s, i);
    if (w == NULL)
        return 1;
    uint32_t v = __atomic_load_n(w, __ATOMIC_ACQUIRE);
    unsigned k = (v >> TINY_KIND_SHIFT) & 3, n = 16u >> k;
    uint32_t slots = n == 16 ? TINY_LIVE : (1u << n) - 1;
    return (v & ~(TINY_LIVE | (3u << TINY_KIND_SHIFT) | TINY_RETIRED)) != 0 || (v & TINY_LIVE & ~slots) != 0;
}
