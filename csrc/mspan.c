/*
 * mspan.c: span bitmaps (mbitmap.go nextFreeIndex, refillAllocCache).
 *
 * The allocation state of a small span is allocBits plus freeindex: slots
 * below freeindex have been handed out (or were allocated when the span was
 * last cached) and have their bit set; at or above it, a 0 bit is a free
 * slot.  The scan of a class's first span starts at its colour, skipping
 * slots [0, skipped), and comes round to them at the end (scan_wraps;
 * mcentral.c, "Colouring").  allocCache holds the
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
    s->skipped = 0;
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
static uintptr_t next_free_index(gm_mspan *s) {
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

/* The scan of a coloured span (mcentral.c, "Colouring") has reached
 * its end: every slot from skipped on has been taken, which their bits now
 * say, and the scan comes round to slot 0 for the slots it skipped. */
static void scan_wraps(gm_mspan *s) {
    for (uintptr_t w = s->skipped / 64; w <= (s->nelems - 1) / 64; w++)
        STORE_RELAXED(&s->allocBits[w], LOAD_RELAXED(&s->allocBits[w]) | gm_bits_between(w, s->skipped, s->nelems));
    STORE_RELAXED(&s->skipped, 0);
    STORE_RELAXED(&s->freeindex, 0);
    gm_span_refillAllocCache(s, 0);
}

uintptr_t gm_span_nextFreeIndex(gm_mspan *s) {
    uintptr_t i = next_free_index(s);
    if (i == s->nelems && s->skipped != 0) {
        scan_wraps(s);
        i = next_free_index(s);
    }
    return i;
}
