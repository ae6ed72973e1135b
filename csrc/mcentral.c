/*
 * mcentral.c: per-size-class span lists (mcentral.go), and where freed
 * objects go back to their spans.
 *
 * A span of class c is either cached by exactly one mcache (it allocates
 * from it with nextFreeFast, without a lock), or it sits in mcentral[c] on
 * the partial list (some free slots) or the full list (none).  An uncached
 * span whose objects are all free goes back to the page heap at once.
 *
 * Frees arrive here in batches from mcache free lists (mcache.c), one lock
 * acquisition per batch: each object sets its bit in the span's freeBits and
 * lowers allocCount.  The bits are folded into allocBits when the span is
 * next handed to an mcache (cacheSpan), as Go's sweeper folds gcmarkBits
 * into allocBits; until then the owner of a cached span keeps allocating
 * from the slots it reserved, and the freed slots wait.
 */
#include <string.h>

#include "gm_internal.h"

gm_mcentral gm_central[NUM_CLASSES];

void gm_mcentral_init(void) {
    for (int i = 0; i < NUM_CLASSES; i++) {
        pthread_mutex_init(&gm_central[i].lock, NULL);
        gm_central[i].partial = gm_central[i].full = NULL;
    }
}

static void list_add(gm_mcentral *mc, gm_mspan *s) {
    if (s->allocCount < s->nelems) {
        gm_list_push(&mc->partial, s);
        s->list = LIST_PARTIAL;
    } else {
        gm_list_push(&mc->full, s);
        s->list = LIST_FULL;
    }
}

static void list_remove(gm_mcentral *mc, gm_mspan *s) {
    gm_list_unlink(s->list == LIST_PARTIAL ? &mc->partial : &mc->full, s);
    s->list = LIST_NONE;
}

/* Fold freeBits into allocBits: the sweep.  Under lock, span uncached.
 * Live objects keep allocBits 1 and freeBits 0 throughout, so a concurrent
 * free() of a live object sees it live at every step. */
static void sweep(gm_mspan *s) {
    for (uintptr_t w = 0; w < (s->nelems + 63) / 64; w++) {
        uint64_t f = s->freeBits[w];
        if (f != 0) {
            STORE_RELAXED(&s->allocBits[w], s->allocBits[w] & ~f);
            STORE_RELAXED(&s->freeBits[w], 0);
        }
    }
}

/*
 * cacheSpan: a span of class sc with free slots, for mcache c.  All of its
 * free slots are reserved for c (allocCount = nelems).  NULL when out of
 * memory.
 */
gm_mspan *gm_mcentral_cacheSpan(gm_mcache *c, uint8_t sc) {
    gm_mcentral *mc = &gm_central[sc];
    pthread_mutex_lock(&mc->lock);
    gm_mspan *s = mc->partial;
    if (s != NULL) {
        list_remove(mc, s);
        sweep(s);
    } else {
        pthread_mutex_unlock(&mc->lock);
        s = gm_heap_alloc(c, gm_class_to_allocnpages[sc], sc); /* mcentral.grow */
        if (s == NULL)
            return NULL;
        pthread_mutex_lock(&mc->lock);
        mc->nspans++;
    }
    s->cachedBy = c;
    s->allocCount = s->nelems;
    STORE_RELAXED(&s->freeindex, 0);
    gm_span_refillAllocCache(s, 0);
    pthread_mutex_unlock(&mc->lock);
    return s;
}

/*
 * uncacheSpan: the owner is done with s.  Slots it handed out (all below
 * freeindex) become allocated in allocBits; slots it reserved but did not
 * hand out go back.
 */
void gm_mcentral_uncacheSpan(gm_mspan *s) {
    gm_mcentral *mc = &gm_central[s->sizeclass];
    pthread_mutex_lock(&mc->lock);
    uintptr_t fi = s->freeindex, nwords = (s->nelems + 63) / 64;
    for (uintptr_t w = 0; w < fi / 64; w++)
        STORE_RELAXED(&s->allocBits[w], ~(uint64_t)0);
    if (fi % 64 != 0)
        STORE_RELAXED(&s->allocBits[fi / 64], s->allocBits[fi / 64] | (((uint64_t)1 << (fi % 64)) - 1));
    uint32_t unused = 0;
    for (uintptr_t w = fi / 64; w < nwords; w++) {
        uint64_t valid = ~(uint64_t)0;
        if (w == fi / 64 && fi % 64 != 0)
            valid &= ~(((uint64_t)1 << (fi % 64)) - 1);
        if (w == nwords - 1 && s->nelems % 64 != 0)
            valid &= ((uint64_t)1 << (s->nelems % 64)) - 1;
        unused += (uint32_t)__builtin_popcountll(~s->allocBits[w] & valid);
    }
    if (unused > s->allocCount)
        gm_throw("uncacheSpan: more unused slots than reserved ones");
    s->allocCount -= unused;
    s->cachedBy = NULL;
    s->allocCache = 0;
    if (s->allocCount == 0) {
        mc->nspans--;
        pthread_mutex_unlock(&mc->lock);
        gm_heap_free(s);
        return;
    }
    list_add(mc, s);
    pthread_mutex_unlock(&mc->lock);
}

/*
 * Where a freed object goes: a list of objects of class sc (linked through
 * their first word, tagged) returns to the spans.  Spans that become empty
 * go back to the heap after the lock is dropped.  Objects that are not live
 * here (a double free that reached two caches) are reported and dropped.
 */
void gm_mcentral_freeList(uint8_t sc, void *head, uintptr_t tag) {
    (void)tag;
    gm_mcentral *mc = &gm_central[sc];
    gm_mspan *empty = NULL;
    pthread_mutex_lock(&mc->lock);
    for (void *p = head; p != NULL;) {
        uintptr_t a = (uintptr_t)p;
        void *next = (void *)(*(uintptr_t *)p & LINK_ADDR_MASK);
        *(uintptr_t *)p = 0; /* no stale link outlives the list */
        gm_mspan *s = gm_span_of(a);
        uintptr_t i = gm_span_index(s, a);
        if (unlikely(!gm_span_live(s, i))) {
            pthread_mutex_unlock(&mc->lock);
            gm_report(GM_ERR_NOT_ALLOCATED, p, "free (found when returning it to its span)");
            pthread_mutex_lock(&mc->lock);
            p = next;
            continue;
        }
        STORE_RELAXED(&s->freeBits[i / 64], s->freeBits[i / 64] | ((uint64_t)1 << (i % 64)));
        s->allocCount--;
        s->needzero = 1;
        if (s->cachedBy == NULL) {
            if (s->list == LIST_FULL) {
                list_remove(mc, s);
                list_add(mc, s);
            }
            if (s->allocCount == 0) {
                list_remove(mc, s);
                mc->nspans--;
                s->next = empty;
                empty = s;
            }
        }
        p = next;
    }
    pthread_mutex_unlock(&mc->lock);
    while (empty != NULL) {
        gm_mspan *s = empty;
        empty = s->next;
        s->next = NULL;
        gm_heap_free(s);
    }
}

/* ---- checking ---------------------------------------------------------------- */

int gm_span_check(const gm_mspan *s, bool cached) {
    int bad = 0;
    uintptr_t nwords = (s->nelems + 63) / 64;
    if (s->state != SPAN_INUSE || s->sizeclass == 0 || s->nelems != gm_class_to_nelems[s->sizeclass]) {
        gm_warn_check("span has a bad state or class", s);
        return 1;
    }
    if (gm_span_of(s->startAddr) != s || gm_span_of(s->startAddr + (s->npages - 1) * PAGE_SIZE) != s) {
        gm_warn_check("span map does not point at the span", s);
        bad++;
    }
    uint32_t live = 0, freed = 0;
    for (uintptr_t w = 0; w < BITMAP_WORDS; w++) {
        uint64_t valid = w < nwords ? ~(uint64_t)0 : 0;
        if (w == nwords - 1 && s->nelems % 64 != 0)
            valid = ((uint64_t)1 << (s->nelems % 64)) - 1;
        if ((s->allocBits[w] | s->freeBits[w]) & ~valid) {
            gm_warn_check("bitmap bits set beyond nelems", s);
            bad++;
        }
        freed += (uint32_t)__builtin_popcountll(s->freeBits[w]);
        live += (uint32_t)__builtin_popcountll(s->allocBits[w] & ~s->freeBits[w]);
    }
    for (uintptr_t i = s->freeindex; i < s->nelems; i++)
        if (gm_bit(s->freeBits, i) && !gm_bit(s->allocBits, i)) {
            gm_warn_check("slot freed but never handed out", s);
            bad++;
            break;
        }
    if (cached) {
        if (s->allocCount != s->nelems - freed) {
            gm_warn_check("cached span: allocCount != nelems - freed", s);
            bad++;
        }
    } else {
        for (uintptr_t i = 0; i < s->freeindex; i++)
            if (!gm_bit(s->allocBits, i)) {
                gm_warn_check("uncached span: slot below freeindex not in allocBits", s);
                bad++;
                break;
            }
        if (s->allocCount != live) {
            gm_warn_check("uncached span: allocCount != popcount(allocBits &^ freeBits)", s);
            bad++;
        }
        if (s->allocCount == 0) {
            gm_warn_check("uncached empty span not returned to the heap", s);
            bad++;
        }
        if (s->list != (s->allocCount == s->nelems ? LIST_FULL : LIST_PARTIAL)) {
            gm_warn_check("span on the wrong mcentral list", s);
            bad++;
        }
    }
    return bad;
}

/* Check the uncached spans; returns violations, and the number of spans in
 * *nuncached.  Takes each class lock in turn. */
int gm_mcentral_check_lists(uint64_t *nuncached) {
    int bad = 0;
    *nuncached = 0;
    for (int sc = 1; sc < NUM_CLASSES; sc++) {
        gm_mcentral *mc = &gm_central[sc];
        pthread_mutex_lock(&mc->lock);
        for (int l = 0; l < 2; l++)
            for (gm_mspan *s = l ? mc->full : mc->partial; s != NULL; s = s->next) {
                if (s->sizeclass != sc || s->cachedBy != NULL) {
                    gm_warn_check("span on the wrong mcentral, or cached", s);
                    bad++;
                }
                bad += gm_span_check(s, false);
                (*nuncached)++;
            }
        pthread_mutex_unlock(&mc->lock);
    }
    return bad;
}
