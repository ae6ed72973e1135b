/*
 * test_sizeclass.c: the size-class table and the arithmetic built on it.
 *
 *   - division by multiplication: for every class and every byte offset in
 *     a span of that class (the end of the span included), gm_span_index is
 *     offset / size and gm_span_is_slot is true exactly when size divides
 *     offset;
 *   - the table is self-consistent (objects fit their spans, sizes grow);
 *   - every size 0..32768 goes to the smallest class >= max(size, 16), seen
 *     through gm_malloc + gm_usable_size and through gm_size_to_class;
 *   - objects of every class are aligned to 16; the 8-byte class (class 1)
 *     is never used;
 *   - gm_popcount (the bitmaps' counts) agrees with counting bit by bit.
 */
#define _GNU_SOURCE
#include "gm_internal.h"
#include "gmtest.h"

/* Spans are big (allocBits): static, not on the stack. */
static gm_mspan fake;

/* The smallest class whose size is >= max(size, 16), by linear search. */
static unsigned expected_class(size_t size) {
    if (size < GM_SC_MIN_ALLOC_SIZE)
        size = GM_SC_MIN_ALLOC_SIZE;
    for (unsigned c = 1; c < NUM_CLASSES; c++)
        if (gm_class_to_size[c] >= size)
            return c;
    return 0;
}

TEST(table_consistent) {
    CHECK_EQ(NUM_CLASSES, GM_NUM_SIZE_CLASSES);
    CHECK_EQ(gm_class_to_size[NUM_CLASSES - 1], GM_MAX_SMALL_SIZE);
    CHECK_EQ(MAX_SMALL_SIZE, GM_MAX_SMALL_SIZE);
    CHECK_EQ(gm_class_to_size[0], 0);
    for (unsigned c = 1; c < NUM_CLASSES; c++) {
        uintptr_t size = gm_class_to_size[c], span = gm_class_to_allocnpages[c] * PAGE_SIZE;
        if (c > 1)
            CHECK(size > gm_class_to_size[c - 1]);
        CHECK(size % 8 == 0);
        CHECK(gm_class_to_allocnpages[c] >= 1 && gm_class_to_allocnpages[c] <= GM_SC_MAX_NPAGES);
        CHECK_EQ(gm_class_to_nelems[c], span / size);
        /* The spans' bitmaps hold the classes malloc uses (not the 8-byte class). */
        CHECK(gm_class_to_nelems[c] <= MAX_NELEMS || size < GM_SC_MIN_ALLOC_SIZE);
        /* The magic is ceil(2^32 / size). */
        CHECK_EQ(gm_class_to_divmagic[c], ((uint64_t)1 << 32) / size + (((uint64_t)1 << 32) % size != 0));
    }
}

TEST(span_index_and_is_slot_every_offset) {
    for (unsigned c = 1; c < NUM_CLASSES; c++) {
        memset(&fake, 0, sizeof fake);
        /* Any page-aligned address will do: the arithmetic uses offsets. */
        fake.startAddr = ARENA_HINT_BASE + 7 * PAGE_SIZE;
        fake.npages = gm_class_to_allocnpages[c];
        /* The fields gm_span_init_small sets from the tables (it also
         * finds the span's state bytes, which needs a real arena). */
        fake.sizeclass = (uint8_t)c;
        fake.elemsize = gm_class_to_size[c];
        fake.nelems = gm_class_to_nelems[c];
        fake.divMul = gm_class_to_divmagic[c];
        uintptr_t size = gm_class_to_size[c], span = fake.npages * PAGE_SIZE;
        /* Every class malloc uses starts its objects on 16-byte granules
         * of the state map (the 8-byte class holds no objects). */
        CHECK(c == 1 || size % 16 == 0);
        int bad_index = 0, bad_slot = 0;
        for (uintptr_t off = 0; off <= span; off++) {
            uintptr_t a = fake.startAddr + off;
            if (gm_span_index(&fake, a) != off / size && bad_index++ < 3)
                fprintf(stderr, "class %u (size %lu): index(%lu) = %lu, want %lu\n", c, (unsigned long)size,
                        (unsigned long)off, (unsigned long)gm_span_index(&fake, a), (unsigned long)(off / size));
            if (gm_span_is_slot(&fake, a) != (off % size == 0) && bad_slot++ < 3)
                fprintf(stderr, "class %u (size %lu): is_slot(%lu) = %d\n", c, (unsigned long)size,
                        (unsigned long)off, (int)gm_span_is_slot(&fake, a));
        }
        CHECK_EQ(bad_index, 0);
        CHECK_EQ(bad_slot, 0);
    }
}

/* A large span (divMul 0) has no slots. */
TEST(is_slot_false_for_large) {
    memset(&fake, 0, sizeof fake);
    fake.startAddr = ARENA_HINT_BASE;
    fake.divMul = 0;
    for (uintptr_t off = 0; off < 3 * PAGE_SIZE; off += 8)
        CHECK(!gm_span_is_slot(&fake, fake.startAddr + off));
}

TEST(size_to_class_every_size) {
    int bad = 0;
    for (size_t size = 0; size <= MAX_SMALL_SIZE; size++) {
        unsigned want = expected_class(size);
        if (gm_size_to_class(size) != want && bad++ < 5)
            fprintf(stderr, "gm_size_to_class(%zu) = %u, want %u\n", size, gm_size_to_class(size), want);
    }
    CHECK_EQ(bad, 0);
}

TEST(malloc_usable_size_every_size) {
    int bad = 0;
    for (size_t size = 0; size <= MAX_SMALL_SIZE; size++) {
        size_t want = gm_class_to_size[expected_class(size)];
        unsigned char *p = gm_malloc(size);
        if (p == NULL) {
            CHECK(p != NULL);
            return;
        }
        size_t got = gm_usable_size(p);
        if ((got != want || ((uintptr_t)p & 15) != 0) && bad++ < 5)
            fprintf(stderr, "malloc(%zu) = %p: usable %zu, want %zu\n", size, (void *)p, got, want);
        /* The first and last usable bytes are ours. */
        p[0] = 0x5a;
        p[got - 1] = 0xa5;
        gm_free(p);
    }
    CHECK_EQ(bad, 0);
    CHECK_EQ(gm_check_heap(), 0);
}

/* Several spans' worth of objects of every class: all aligned to 16, all at
 * slot starts, all distinct; class 1 (8 bytes) never handed out. */
TEST(every_class_aligned_16) {
    static void *ptrs[2100];
    struct gm_stats before = {.size = sizeof before}, after = {.size = sizeof after};
    gm_read_stats(&before);
    for (unsigned c = 2; c < NUM_CLASSES; c++) {
        size_t size = gm_class_to_size[c];
        size_t n = 2 * (size_t)gm_class_to_nelems[c] + 3;
        if (n > sizeof ptrs / sizeof ptrs[0])
            n = sizeof ptrs / sizeof ptrs[0];
        int bad = 0;
        for (size_t i = 0; i < n; i++) {
            /* Alternate the largest and the smallest size of the class. */
            size_t ask = (i & 1) ? size : (size_t)gm_class_to_size[c - 1] + 1;
            ptrs[i] = gm_malloc(ask);
            uintptr_t a = (uintptr_t)ptrs[i];
            if (ptrs[i] == NULL || (a & 15) != 0 || gm_usable_size(ptrs[i]) != size || gm_check(ptrs[i]) != GM_OK) {
                if (bad++ < 3)
                    fprintf(stderr, "class %u: malloc(%zu) = %p, usable %zu\n", c, ask, ptrs[i],
                            gm_usable_size(ptrs[i]));
                continue;
            }
            gm_mspan *s = gm_span_of(a);
            if (s == NULL || s->sizeclass != c || !gm_span_is_slot(s, a) ||
                a != s->startAddr + gm_span_index(s, a) * size) {
                if (bad++ < 3)
                    fprintf(stderr, "class %u: %p is not a slot of a span of its class\n", c, ptrs[i]);
            }
            memset(ptrs[i], (int)c, size);
        }
        CHECK_EQ(bad, 0);
        /* The objects do not overlap: each still holds its own fill. */
        for (size_t i = 0; i < n; i++) {
            unsigned char *p = ptrs[i];
            if (p != NULL)
                CHECK(p[0] == (unsigned char)c && p[size - 1] == (unsigned char)c);
        }
        for (size_t i = 0; i < n; i++)
            gm_free(ptrs[i]);
    }
    gm_thread_flush();
    gm_read_stats(&after);
    CHECK_EQ(after.by_size[1].mallocs, before.by_size[1].mallocs);
    CHECK_EQ(after.by_size[1].mallocs, 0);
    CHECK_EQ(after.heap_objects, before.heap_objects);
    CHECK_EQ(gm_check_heap(), 0);
}

/* The stats rows describe the table. */
TEST(stats_rows_match_table) {
    struct gm_stats st = {.size = sizeof st};
    gm_read_stats(&st);
    for (unsigned c = 1; c < NUM_CLASSES; c++) {
        CHECK_EQ(st.by_size[c].size, gm_class_to_size[c]);
        CHECK_EQ(st.by_size[c].npages, gm_class_to_allocnpages[c]);
    }
    CHECK_EQ(st.by_size[0].size, 0);
}

/* Bits set in x, one at a time. */
static unsigned bits_one_by_one(uint64_t x) {
    unsigned n = 0;
    for (int i = 0; i < 64; i++)
        n += (unsigned)((x >> i) & 1);
    return n;
}

TEST(popcount_counts_every_bit) {
    CHECK_EQ(gm_popcount(0), 0);
    CHECK_EQ(gm_popcount(~(uint64_t)0), 64);
    for (int i = 0; i < 64; i++) {
        CHECK_EQ(gm_popcount((uint64_t)1 << i), 1);
        CHECK_EQ(gm_popcount(~((uint64_t)1 << i)), 63);
        CHECK_EQ(gm_popcount(((uint64_t)1 << i) - 1), (unsigned)i); /* the low i bits */
    }
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (int k = 0; k < 100000; k++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint64_t y = x & (x >> 3) & (k % 2 ? x >> 11 : ~(uint64_t)0); /* sparse and dense words */
        CHECK_EQ(gm_popcount(x), bits_one_by_one(x));
        CHECK_EQ(gm_popcount(y), bits_one_by_one(y));
    }
}

int main(void) {
    RUN(table_consistent);
    RUN(span_index_and_is_slot_every_offset);
    RUN(is_slot_false_for_large);
    RUN(size_to_class_every_size);
    RUN(malloc_usable_size_every_size);
    RUN(every_class_aligned_16);
    RUN(stats_rows_match_table);
    RUN(popcount_counts_every_bit);
    return gmtest_summary();
}
