/*
 * mspan.c: span bitmaps (mbitmap.go nextFreeIndex, refillAllocCache).
 *
 * The allocation state of a small span is allocBits plus freeindex: slots
 * below freeindex have been handed out (or were allocated when the span was
 * last cached) and have their bit set; at or above it, a 0 bit is a free
 * slot.  allocCache holds the
 * complement of the 64 bits at freeindex, shifted so that ctz finds the next
 * free slot in one instruction (gm_nextFreeFast in gm_internal.h).  Handing
 * a slot out marks its state byte OBJ_LIVE; the frees that Go's sweeper
 * would discover come back as OBJ_FREE state bytes (mcentral.c).
 */
#include <string.h>

#include "gm_internal.h"

/* The span's state bytes are all OBJ_FREE: a span goes back to the heap
 * only when every object in it is free, and the bytes between objects are
 * never written. */
void gm_span_init_small(gm_mspan *s, uint8_t sizeclass) {
    GM_ASSERT(sizeclass > 1 && sizeclass < NUM_CLASSES && gm_class_to_size[sizeclass] % 16 == 0 &&
              gm_class_to_nelems[sizeclass] <= MAX_NELEMS);
    s->sizeclass = sizeclass;
    s->elemsize = gm_class_to_size[sizeclass];
    s->nelems = gm_class_to_nelems[sizeclass];
    s->divMul = gm_class_to_divmagic[sizeclass];
    s->ststep = (uint16_t)(s->elemsize >> STATE_SHIFT);
    s->objstate = gm_state_of(s->startAddr);
    GM_ASSERT(gm_arena_of(s->startAddr) == gm_arena_of(s->startAddr + s->npages * PAGE_SIZE - 1));
#ifdef GM_DEBUG
    for (uintptr_t i = 0; i < s->npages * PAGE_SIZE >> STATE_SHIFT; i++)
        GM_ASSERT(s->objstate[i] == OBJ_FREE);
#endif
    s->allocCount = 0;
    s->freeindex = 0;
    memset(s->allocBits, 0, sizeof s->allocBits);
    s->allocCache = ~(uint64_t)0;
}

/* Load allocCache with the complement of the 64 alloc bits starting at
 * byte whichByte of allocBits (a multiple of 8). */
void gm_span_refillAllocCache(gm_mspan *s, uintptr_t whichByte) {
    s->allocCache = ~LOAD_RELAXED(&s->allocBits[whichByte / 8]);
}

/* The index of the next free slot at or after freeindex, or nelems; moves
 * freeindex past it.  Owner of the span only. */
uintptr_t gm_span_nextFreeIndex(gm_mspan *s) {
    uintptr_t sfreeindex = s->freeindex, snelems = s->nelems;
    if (sfreeindex == snelems)
        return sfreeindex;
    if (sfreeindex > snelems)
        gm_throw("s->freeindex > s->nelems");
    uint64_t aCache = s->allocCache;
    unsigned bitIndex = aCache ? (unsigned)__builtin_ctzll(aCache) : 64;
    while (bitIndex == 64) {
        /* Move to the start of the next 64 bits. */
        sfreeindex = (sfreeindex + 64) & ~(uintptr_t)63;
        if (sfreeindex >= snelems) {
            s->freeindex = snelems;
            return snelems;
        }
        gm_span_refillAllocCache(s, sfreeindex / 8);
        aCache = s->allocCache;
        bitIndex = aCache ? (unsigned)__builtin_ctzll(aCache) : 64;
    }
    uintptr_t result = sfreeindex + bitIndex;
    if (result >= snelems) {
        s->freeindex = snelems;
        return snelems;
    }
    s->allocCache = (aCache >> bitIndex) >> 1;
    sfreeindex = result + 1;
    if (sfreeindex % 64 == 0 && sfreeindex != snelems)
        gm_span_refillAllocCache(s, sfreeindex / 8);
    s->freeindex = sfreeindex;
    GM_ASSERT(gm_objstate(s, result) == OBJ_FREE);
    gm_set_objstate(gm_objstate_ptr(s, result), s->liveval);
    return result;
}
