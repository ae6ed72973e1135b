/*
 * test_abi.c: callers built with another version of gomalloc.h.
 *
 * struct gm_stats and struct gm_profile_record only grow at the end, and
 * the caller says how large its own is (st->size; gm_profile_read's
 * record_size).  An "old caller" here is a prefix of today's struct: it gets
 * exactly its bytes, and a canary after them shows that nothing past them is
 * written.  A "new caller" has fields the library does not know: they are
 * left alone.
 */
#include <errno.h>
#include <stddef.h>

#include "gm_internal.h"
#include "gmtest.h"

#define CANARY 0xa5

static int all_canary(const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != CANARY)
            return 0;
    return 1;
}

/* A caller built when struct gm_stats ended after heap_sys. */
struct old_stats {
    uint64_t size;
    uint64_t sys, heap_reserved, heap_sys;
};
_Static_assert(offsetof(struct old_stats, heap_sys) == offsetof(struct gm_stats, heap_sys), "a prefix");

TEST(stats_old_caller_gets_its_prefix) {
    struct {
        struct old_stats st;
        unsigned char after[512];
    } buf;
    void *keep = gm_malloc(1000); /* something on the heap */
    gm_thread_flush();
    memset(&buf, CANARY, sizeof buf);
    buf.st.size = sizeof buf.st;
    CHECK_EQ(gm_read_stats((struct gm_stats *)&buf.st), 0);
    struct gm_stats full = stats();
    CHECK_EQ(buf.st.size, sizeof(struct gm_stats)); /* the library's size, reported back */
    CHECK_EQ(buf.st.sys, full.sys);
    CHECK_EQ(buf.st.heap_reserved, full.heap_reserved);
    CHECK_EQ(buf.st.heap_sys, full.heap_sys);
    CHECK(buf.st.heap_sys > 0);
    CHECK(all_canary(buf.after, sizeof buf.after));
    gm_free(keep);
}

TEST(stats_every_caller_size_is_respected) {
    static struct {
        struct gm_stats st;
        unsigned char after[64];
    } buf;
    struct gm_stats full = stats();
    for (size_t size = 0; size <= sizeof buf; size++) {
        memset(&buf, CANARY, sizeof buf);
        buf.st.size = size;
        int r = gm_read_stats(&buf.st);
        size_t written = size < sizeof(uint64_t) ? sizeof(uint64_t) : size < sizeof full ? size : sizeof full;
        CHECK_EQ(r, size < sizeof(uint64_t) ? EINVAL : 0);
        CHECK_EQ(buf.st.size, sizeof full);
        if (!all_canary((unsigned char *)&buf + written, sizeof buf - written)) {
            fprintf(stderr, "size %zu: bytes past %zu written\n", size, written);
            CHECK(0);
            break;
        }
        /* Figures that do not change while nothing allocates. */
        if (size >= offsetof(struct gm_stats, heap_sys) + sizeof(uint64_t))
            CHECK_EQ(buf.st.heap_sys, full.heap_sys);
        if (size == sizeof full + 64)
            CHECK_EQ(buf.st.by_size[1].size, full.by_size[1].size);
    }
}

TEST(stats_bad_calls) {
    CHECK_EQ(gm_read_stats(NULL), EINVAL);
    struct gm_stats st;
    memset(&st, CANARY, sizeof st);
    st.size = 0; /* ask the size */
    CHECK_EQ(gm_read_stats(&st), EINVAL);
    CHECK_EQ(st.size, sizeof st);
    CHECK(all_canary((unsigned char *)&st + sizeof st.size, sizeof st - sizeof st.size));
}

/* ---- the heap profile ---------------------------------------------------- */

/* A caller built before the estimates were added to the record. */
struct old_record {
    uint64_t alloc_objects, alloc_bytes;
    uint64_t free_objects, free_bytes;
    uint32_t nstack;
    const void *stack[GM_PROFILE_DEPTH];
};
_Static_assert(offsetof(struct old_record, stack) == offsetof(struct gm_profile_record, stack), "a prefix");

static void *volatile sink[64];

static __attribute__((noinline)) void sample_some(void) {
    for (int i = 0; i < 64; i++)
        sink[i] = gm_malloc(64 + (size_t)i * 100);
}

#define MAXREC 256

TEST(profile_old_and_new_callers) {
    static struct gm_profile_record full[MAXREC];
    static struct {
        struct old_record r[MAXREC];
        unsigned char after[256];
    } old;
    struct newer_record {
        struct gm_profile_record r;
        uint64_t future[3];
    };
    static struct newer_record newer[MAXREC];

    CHECK_EQ(gm_option_set("profile_rate", 1), 0);
    sample_some();
    CHECK_EQ(gm_option_set("profile_rate", 0), 0);
    int n = gm_profile_read(full, MAXREC, sizeof full[0]);
    CHECK(n > 0 && n <= MAXREC);
    if (n <= 0 || n > MAXREC)
        return;

    memset(&old, CANARY, sizeof old);
    CHECK_EQ(gm_profile_read((struct gm_profile_record *)old.r, n, sizeof old.r[0]), n);
    for (int i = 0; i < n; i++) {
        CHECK_EQ(old.r[i].alloc_objects, full[i].alloc_objects);
        CHECK_EQ(old.r[i].free_bytes, full[i].free_bytes);
        CHECK_EQ(old.r[i].nstack, full[i].nstack);
        CHECK(memcmp(old.r[i].stack, full[i].stack, sizeof old.r[i].stack) == 0);
    }
    CHECK(all_canary(&old.r[n], sizeof old - (size_t)n * sizeof old.r[0]));

    /* Fewer records than the profile holds: the count is still the total. */
    memset(&old, CANARY, sizeof old);
    CHECK_EQ(gm_profile_read((struct gm_profile_record *)old.r, 1, sizeof old.r[0]), n);
    CHECK_EQ(old.r[0].alloc_objects, full[0].alloc_objects);
    CHECK(all_canary(&old.r[1], sizeof old - sizeof old.r[0]));

    /* The smallest record: one field. */
    uint64_t firsts[MAXREC + 1];
    memset(firsts, CANARY, sizeof firsts);
    CHECK_EQ(gm_profile_read((struct gm_profile_record *)firsts, n, sizeof firsts[0]), n);
    for (int i = 0; i < n; i++)
        CHECK_EQ(firsts[i], full[i].alloc_objects);
    CHECK(all_canary(&firsts[n], sizeof firsts[0]));

    memset(newer, CANARY, sizeof newer);
    CHECK_EQ(gm_profile_read(&newer[0].r, n, sizeof newer[0]), n);
    for (int i = 0; i < n; i++) {
        CHECK(memcmp(&newer[i].r, &full[i], sizeof full[i]) == 0);
        CHECK(all_canary(newer[i].future, sizeof newer[i].future));
    }

    errno = 0;
    CHECK_EQ(gm_profile_read(full, -1, sizeof full[0]), -1);
    CHECK_EQ(errno, EINVAL);
    CHECK_EQ(gm_profile_read(NULL, 1, sizeof full[0]), -1);
    CHECK_EQ(gm_profile_read(full, 1, 0), -1);
    CHECK_EQ(gm_profile_read(NULL, 0, 0), n);
    for (int i = 0; i < 64; i++)
        gm_free(sink[i]);
}

int main(void) {
    gm_option_set("scavenger", 0); /* figures that stay put between two reads */
    RUN(stats_old_caller_gets_its_prefix);
    RUN(stats_every_caller_size_is_respected);
    RUN(stats_bad_calls);
    RUN(profile_old_and_new_callers);
    return gmtest_summary();
}
