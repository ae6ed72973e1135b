/*
 * test_options.c: options from the environment at start-up.
 *
 * main() sets GOMALLOC_ variables before the first gm_ call (the allocator
 * reads them when it starts), good and bad; the tests check the values
 * taken, the defaults kept, and what gm_option_rejected lists.  The bad ones
 * also print their warnings on stderr (tests/test_options.py checks the
 * lines themselves, in subprocesses).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>

#include "gm_internal.h"
#include "gmtest.h"

static const struct {
    const char *variable, *value;
} environment[] = {
    {"GOMALLOC_DECAY_MS", "abc"},
    {"GOMALLOC_RETAIN_PERCENT", "-5"},
    {"GOMALLOC_TINY", "maybe"},
    {"GOMALLOC_TCACHE_BYTES", "10Q"},
    {"GOMALLOC_HARD_LIMIT", "9999999999999G"}, /* overflows with its suffix */
    {"GOMALLOC_FAULT_ON_FREE", "3"},
    {"GOMALLOC_NOSUCH", "1"},
    {"GOMALLOC_DECAY", "100"},
    {"GOMALLOC_print_stats", "0"},
    {"GOMALLOC_PRELOAD_LIBS", "x"},
    {"GOMALLOC_THP", "on"},                /* good */
    {"GOMALLOC_MEMORY_LIMIT", "3G"},       /* good */
    {"GOMALLOC_PROFILE_RATE", ""},         /* empty: bad */
    {"GOMALLOC_PRELOAD_LIB", "/nowhere"},  /* not an option */
    {"GOMALLOC_DEBUG_ANYTHING", "what"},   /* not an option */
};
#define NENV (sizeof environment / sizeof environment[0])

/* The expected reason of variable, or NULL if it is not rejected. */
static const char *expected_reason(const char *variable) {
    static const struct {
        const char *variable, *reason;
    } reasons[] = {
        {"GOMALLOC_DECAY_MS", "expected a number of milliseconds from 0 to 3600000 (K, M, G suffixes allowed)"},
        {"GOMALLOC_RETAIN_PERCENT", "expected a percentage from 0 to 10000 (K, M, G suffixes allowed)"},
        {"GOMALLOC_TINY", "expected 0 or 1 (on/off, true/false, yes/no allowed)"},
        {"GOMALLOC_TCACHE_BYTES", "expected a number of bytes from 0 to 16777216 (K, M, G suffixes allowed)"},
        {"GOMALLOC_HARD_LIMIT", "expected a number of bytes from 0 to 281474976710656 (K, M, G suffixes allowed), or auto (a percentage of the cgroup's memory limit)"},
        {"GOMALLOC_FAULT_ON_FREE", "expected 0, 1 or 2"},
        {"GOMALLOC_NOSUCH", "no such option"},
        {"GOMALLOC_DECAY", "no such option; did you mean GOMALLOC_DECAY_MS?"},
        {"GOMALLOC_print_stats", "no such option; did you mean GOMALLOC_PRINT_STATS?"},
        {"GOMALLOC_PRELOAD_LIBS", "no such option; did you mean GOMALLOC_PRELOAD_LIB?"},
        {"GOMALLOC_PROFILE_RATE", "expected a number of bytes from 0 to 1099511627776 (K, M, G suffixes allowed)"},
    };
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
        if (strcmp(reasons[i].variable, variable) == 0)
            return reasons[i].reason;
    return NULL;
}

static long long option(const char *name) {
    long long v = -1;
    CHECK_EQ(gm_option_get(name, &v), 0);
    return v;
}

TEST(good_values_taken_bad_ones_keep_defaults) {
    CHECK_EQ(option("thp"), 1);
    CHECK_EQ(option("memory_limit"), 3LL << 30);
    CHECK_EQ(option("decay_ms"), 1000);
    CHECK_EQ(option("retain_percent"), 10);
    CHECK_EQ(option("tiny"), 0);
    CHECK_EQ(option("tcache_bytes"), 32 << 10);
    CHECK_EQ(option("hard_limit"), 0);
    CHECK_EQ(option("fault_on_free"), 0);
    CHECK_EQ(option("print_stats"), 0);
    CHECK_EQ(option("profile_rate"), 0);
}

TEST(rejected_lists_each_bad_variable_once) {
    size_t want = 0, got = 0;
    for (size_t i = 0; i < NENV; i++)
        want += expected_reason(environment[i].variable) != NULL;
    const char *variable, *value, *reason;
    for (int i = 0; gm_option_rejected(i, &variable, &value, &reason) == 0; i++) {
        got++;
        const char *expected = expected_reason(variable);
        CHECK(expected != NULL);
        if (expected == NULL) {
            fprintf(stderr, "unexpected rejection of %s\n", variable);
            continue;
        }
        if (strcmp(reason, expected) != 0) {
            fprintf(stderr, "%s: reason \"%s\", want \"%s\"\n", variable, reason, expected);
            CHECK(0);
        }
        CHECK(strcmp(value, getenv(variable)) == 0);
    }
    CHECK_EQ(got, want);
    CHECK_EQ(gm_option_rejected(-1, &variable, &value, &reason), -1);
    CHECK_EQ(gm_option_rejected((int)got, NULL, NULL, NULL), -1);
    CHECK_EQ(gm_option_rejected(0, NULL, NULL, NULL), 0);
}

TEST(describe) {
    char buf[128];
    CHECK_EQ(gm_option_describe("decay_ms", buf, sizeof buf), 0);
    CHECK(strcmp(buf, "a number of milliseconds from 0 to 3600000") == 0);
    CHECK_EQ(gm_option_describe("tiny", buf, sizeof buf), 0);
    CHECK(strcmp(buf, "0 or 1") == 0);
    CHECK_EQ(gm_option_describe("fault_on_free", buf, sizeof buf), 0);
    CHECK(strcmp(buf, "0, 1 or 2") == 0);
    CHECK_EQ(gm_option_describe("decay_ms", buf, 8), 0); /* cut, terminated */
    CHECK(strcmp(buf, "a numbe") == 0);
    CHECK_EQ(gm_option_describe("nosuch", buf, sizeof buf), EINVAL);
    CHECK_EQ(buf[0], 0);
    CHECK_EQ(gm_option_describe(NULL, buf, sizeof buf), EINVAL);
    CHECK_EQ(gm_option_describe("tiny", NULL, 0), EINVAL);
    CHECK_EQ(gm_option_describe("tiny", buf, 0), EINVAL);
}

TEST(set_refuses_out_of_range_and_keeps_the_value) {
    CHECK_EQ(gm_option_set("decay_ms", -5), EINVAL);
    CHECK_EQ(gm_option_set("decay_ms", 3600001), EINVAL);
    CHECK_EQ(option("decay_ms"), 1000);
    CHECK_EQ(gm_option_set("decay_ms", 3600000), 0);
    CHECK_EQ(option("decay_ms"), 3600000);
    CHECK_EQ(gm_option_set("decay_ms", 1000), 0);
}

int main(void) {
    /* Before any gm_ call: the allocator reads the environment when it starts. */
    for (size_t i = 0; i < NENV; i++)
        setenv(environment[i].variable, environment[i].value, 1);
    RUN(good_values_taken_bad_ones_keep_defaults);
    RUN(rejected_lists_each_bad_variable_once);
    RUN(describe);
    RUN(set_refuses_out_of_range_and_keeps_the_value);
    return gmtest_summary();
}
