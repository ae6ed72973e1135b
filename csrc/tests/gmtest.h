/*
 * gmtest.h: a minimal test harness for the C tests.
 *
 *   TEST(name) { CHECK(cond); CHECK_EQ(a, b); }
 *   int main(void) { RUN(name); ...; return gmtest_summary(); }
 *
 * Each test runs in order in one process; a failed CHECK prints the file,
 * line and expression and marks the test failed (the test goes on).  The
 * summary prints "N passed, N failed" and returns the exit status.
 */
#ifndef GMTEST_H
#define GMTEST_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gomalloc.h"

/* Sanitizer builds: gcc defines __SANITIZE_*__, clang has __has_feature. */
#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif
#ifndef UNDER_TSAN
#define UNDER_TSAN 0
#endif
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif
#define UNDER_SANITIZER (UNDER_ASAN || UNDER_TSAN)

static int gmtest_failed_checks, gmtest_passed, gmtest_failed;
static const char *gmtest_current;

#define TEST(name) static void test_##name(void)

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "%s:%d: %s: CHECK(%s) failed\n", __FILE__, __LINE__, gmtest_current, \
                    #cond);                                                                  \
            gmtest_failed_checks++;                                                          \
        }                                                                                    \
    } while (0)

#define CHECK_EQ(a, b)                                                                          \
    do {                                                                                        \
        uint64_t gmt_a_ = (uint64_t)(a), gmt_b_ = (uint64_t)(b);                                \
        if (gmt_a_ != gmt_b_) {                                                                 \
            fprintf(stderr, "%s:%d: %s: CHECK_EQ(%s, %s) failed: %" PRIu64 " != %" PRIu64 "\n", \
                    __FILE__, __LINE__, gmtest_current, #a, #b, gmt_a_, gmt_b_);                \
            gmtest_failed_checks++;                                                             \
        }                                                                                       \
    } while (0)

#define RUN(name)                                                      \
    do {                                                               \
        int before_ = gmtest_failed_checks;                            \
        gmtest_current = #name;                                        \
        test_##name();                                                 \
        if (gmtest_failed_checks == before_) {                         \
            gmtest_passed++;                                           \
            printf("ok   %s\n", #name);                                \
        } else {                                                       \
            gmtest_failed++;                                           \
            printf("FAIL %s\n", #name);                                \
        }                                                              \
        fflush(stdout);                                                \
    } while (0)

/* The debug and sanitizer builds (GM_DEBUG) run far slower: fewer rounds. */
#ifdef GM_DEBUG
#define SLOW_BUILD 1
#else
#define SLOW_BUILD 0
#endif

static inline __attribute__((unused)) struct gm_stats stats(void) {
    struct gm_stats st = {.size = sizeof st};
    gm_read_stats(&st);
    return st;
}

static inline int gmtest_summary(void) {
    printf("%d passed, %d failed\n", gmtest_passed, gmtest_failed);
    return gmtest_failed == 0 ? 0 : 1;
}

#endif
