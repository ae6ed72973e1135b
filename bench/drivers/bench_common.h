/*
 * bench_common.h: shared plumbing for the pygomalloc benchmark drivers.
 *
 * Every driver in this folder is a standalone C11 program that uses only the
 * C library's malloc/free/realloc and pthreads, so that the same binary can
 * be run under glibc or under any allocator put in front of it with
 * LD_PRELOAD.  This header gives them:
 *
 *   - option parsing from a small per-driver table (--name VALUE, values
 *     accept K/M/G binary suffixes), with --help;
 *   - a monotonic clock (clock_gettime(CLOCK_MONOTONIC));
 *   - a fast per-thread PRNG (splitmix64), seeded so that runs are
 *     reproducible and independent of the allocator;
 *   - "cookie" helpers that write a tag into a block and verify it later, so
 *     that a block that was overwritten by another live block (an allocator
 *     handing out overlapping memory) is caught, and so that the checksum is
 *     built from bytes actually read back out of blocks;
 *   - a helper that runs N worker threads (on the main thread when N == 1,
 *     as a single-threaded program would) and the RESULT line printer.
 *
 * Output contract (the runner in src/pygomalloc/_bench.py parses it): exactly
 * one line on stdout,
 *   RESULT workload=<name> threads=<n> ops=<n> seconds=<s> ops_per_sec=<r> checksum=<hex>
 * and exit status 0; any inconsistency prints a message on stderr and exits 1;
 * bad arguments exit 2.
 *
 * Checksums are deterministic: they depend only on the options (seed
 * included), never on addresses or thread scheduling (per-thread sums are
 * combined by addition), so the runner can compare them across allocators.
 *
 * Include this header first: it sets _POSIX_C_SOURCE for clock_gettime and
 * pthread barriers.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__GNUC__)
#define BENCH_UNUSED __attribute__((unused))
#define BENCH_NORETURN __attribute__((noreturn))
#define BENCH_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define BENCH_UNUSED
#define BENCH_NORETURN
#define BENCH_PRINTF(a, b)
#endif

/* Set by bench_parse; used as the prefix of error messages. */
static const char *bench_name = "bench";

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */

static BENCH_NORETURN BENCH_PRINTF(1, 2) BENCH_UNUSED void bench_die(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: error: ", bench_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* malloc that treats NULL as a failure of the run (every size asked for by
 * these drivers is small enough that NULL means something is wrong). */
static BENCH_UNUSED void *bench_xmalloc(size_t size)
{
    void *p = malloc(size);
    if (p == NULL)
        bench_die("malloc(%zu) returned NULL", size);
    return p;
}

/* ------------------------------------------------------------------------ */
/* Options                                                                  */

struct bench_opt {
    const char *name;   /* without the leading "--" */
    long *value;        /* holds the default on entry */
    long min, max;      /* accepted range, inclusive */
    const char *help;
};

/* Parse "123", "64K", "8M", "1G" (binary multiples). Returns 0 on success. */
static int bench_parse_long(const char *s, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s)
        return -1;
    long mult = 1;
    if (*end == 'k' || *end == 'K')
        mult = 1L << 10;
    else if (*end == 'm' || *end == 'M')
        mult = 1L << 20;
    else if (*end == 'g' || *end == 'G')
        mult = 1L << 30;
    if (mult != 1)
        end++;
    if (*end != '\0')
        return -1;
    if (v > 0 && v > INT64_MAX / mult)
        return -1;
    *out = v * mult;
    return 0;
}

static BENCH_NORETURN void bench_usage(const char *summary, const struct bench_opt *opts,
                                       size_t nopts, int status)
{
    FILE *f = status == 0 ? stdout : stderr;
    fprintf(f, "usage: %s [options]\n%s\n\noptions (K/M/G suffixes accepted):\n", bench_name,
            summary);
    for (size_t i = 0; i < nopts; i++)
        fprintf(f, "  --%-10s %s (default %ld)\n", opts[i].name, opts[i].help, *opts[i].value);
    exit(status);
}

/* Parse argv against opts; unknown options and out-of-range values exit 2. */
static BENCH_UNUSED void bench_parse(int argc, char **argv, const char *name, const char *summary,
                                     const struct bench_opt *opts, size_t nopts)
{
    bench_name = name;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)
            bench_usage(summary, opts, nopts, 0);
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "%s: unexpected argument '%s'\n", name, arg);
            bench_usage(summary, opts, nopts, 2);
        }
        /* Accept both "--name value" and "--name=value". */
        const char *key = arg + 2;
        const char *eq = strchr(key, '=');
        size_t keylen = eq ? (size_t)(eq - key) : strlen(key);
        const struct bench_opt *o = NULL;
        for (size_t j = 0; j < nopts; j++) {
            if (strlen(opts[j].name) == keylen && strncmp(opts[j].name, key, keylen) == 0) {
                o = &opts[j];
                break;
            }
        }
        if (o == NULL) {
            fprintf(stderr, "%s: unknown option '%s'\n", name, arg);
            bench_usage(summary, opts, nopts, 2);
        }
        const char *val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        long v;
        if (val == NULL || bench_parse_long(val, &v) != 0) {
            fprintf(stderr, "%s: option --%s needs an integer value\n", name, o->name);
            exit(2);
        }
        if (v < o->min || v > o->max) {
            fprintf(stderr, "%s: --%s %ld is out of range [%ld, %ld]\n", name, o->name, v,
                    o->min, o->max);
            exit(2);
        }
        *o->value = v;
    }
}

/* ------------------------------------------------------------------------ */
/* Time                                                                     */

static BENCH_UNUSED double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------ */
/* PRNG: splitmix64.  One state per thread, no sharing.                     */

typedef struct {
    uint64_t s;
} bench_rng;

/* The splitmix64 finaliser: a good 64-bit mixing function on its own. */
static inline uint64_t bench_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static BENCH_UNUSED void bench_rng_seed(bench_rng *r, uint64_t seed, uint64_t stream)
{
    r->s = bench_mix64(seed * 0x9e3779b97f4a7c15ULL + stream + 1);
}

static inline uint64_t bench_rand(bench_rng *r)
{
    r->s += 0x9e3779b97f4a7c15ULL;
    return bench_mix64(r->s);
}

/* Uniform in [0, n) for n <= 2^32 (multiply-shift, bias below 2^-32). */
static inline uint32_t bench_below(bench_rng *r, uint32_t n)
{
    return (uint32_t)(((bench_rand(r) >> 32) * (uint64_t)n) >> 32);
}

/* Uniform in [lo, hi], hi - lo < 2^32. */
static inline size_t bench_range(bench_rng *r, size_t lo, size_t hi)
{
    return lo + bench_below(r, (uint32_t)(hi - lo + 1));
}

/* Uniform double in [0, 1). */
static inline double bench_unit(bench_rng *r)
{
    return (double)(bench_rand(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* ------------------------------------------------------------------------ */
/* Cookies.  A block of `size` bytes tagged with `tag` holds the first
 * min(size, 8) bytes of the tag at its start and, when size >= 16, ~tag in
 * its last 8 bytes.  The prefix is the same whatever the size, so a block
 * that was realloc'ed keeps a checkable prefix.                            */

static inline void bench_fill(void *p, size_t size, uint64_t tag)
{
    unsigned char *b = (unsigned char *)p;
    memcpy(b, &tag, size < 8 ? size : 8);
    if (size >= 16) {
        uint64_t t = ~tag;
        memcpy(b + size - 8, &t, 8);
    }
}

/* Verify a block filled by bench_fill; returns the checksum contribution,
 * computed from what was read.  Dies on a mismatch. */
static inline uint64_t bench_check(const void *p, size_t size, uint64_t tag)
{
    const unsigned char *b = (const unsigned char *)p;
    uint64_t head = 0, tail = 0;
    memcpy(&head, b, size < 8 ? size : 8);
    if (size < 8 ? memcmp(b, &tag, size) != 0 : head != tag)
        bench_die("corrupted block %p (size %zu): head %016" PRIx64 " does not match tag %016" PRIx64,
                  p, size, head, tag);
    if (size >= 16) {
        memcpy(&tail, b + size - 8, 8);
        if (tail != ~tag)
            bench_die("corrupted block %p (size %zu): tail %016" PRIx64 " != %016" PRIx64, p,
                      size, tail, ~tag);
    }
    return bench_mix64(head ^ tail ^ ((uint64_t)size << 48));
}

/* ------------------------------------------------------------------------ */
/* Threads                                                                  */

/* Run fn(args + i * arg_size) for i in [0, n) on n threads and wait for all
 * of them.  With n == 1 the work runs on the calling (main) thread, as a
 * single-threaded program's would: glibc, for one, serves the main thread
 * from a different arena than other threads. */
static BENCH_UNUSED void bench_run_threads(long n, void *(*fn)(void *), void *args,
                                           size_t arg_size)
{
    char *base = (char *)args;
    if (n == 1) {
        fn(base);
        return;
    }
    pthread_t *tids = (pthread_t *)bench_xmalloc(sizeof(pthread_t) * (size_t)n);
    for (long i = 0; i < n; i++) {
        int rc = pthread_create(&tids[i], NULL, fn, base + (size_t)i * arg_size);
        if (rc != 0)
            bench_die("pthread_create: %s", strerror(rc));
    }
    for (long i = 0; i < n; i++)
        pthread_join(tids[i], NULL);
    free(tids);
}

/* For the false-sharing probes (cache_scratch, cache_thrash). */
/* Write every byte `writes` times through a volatile pointer (so the stores
 * really happen, one by one) and return what reading it back gives. */
static BENCH_UNUSED uint64_t bench_scribble(void *p, long size, long writes)
{
    volatile unsigned char *v = (volatile unsigned char *)p;
    for (long k = 0; k < size; k++)
        v[k] = (unsigned char)k;
    for (long w = 1; w < writes; w++)
        for (long k = 0; k < size; k++)
            v[k] = (unsigned char)(v[k] + 1);
    uint64_t sum = 0;
    for (long k = 0; k < size; k++)
        sum = sum * 31 + v[k];
    return sum + 1;
}

/* The probes' floor (--malloc 0): each thread writes one buffer of n bytes
 * on cache lines of its own (128-byte aligned and rounded up, so the
 * adjacent-line prefetcher pairs nothing either), taken once before its
 * loop: the same writes with no allocator in the loop, and no sharing. */
static BENCH_UNUSED void *bench_private_lines(long n)
{
    void *p = NULL;
    if (posix_memalign(&p, 128, ((size_t)n + 127) & ~(size_t)127) != 0)
        bench_die("posix_memalign failed");
    return p;
}

/* The probes' loop: iters times, allocate a size-byte object (or, with
 * use_malloc 0, take the thread's private buffer), scribble on it, free it.
 * Returns the sum of what the scribbles read back. */
static BENCH_UNUSED uint64_t bench_probe_loop(long iters, long size, long writes, int use_malloc)
{
    uint64_t sum = 0;
    void *own = use_malloc ? NULL : bench_private_lines(size);
    for (long i = 0; i < iters; i++) {
        void *p = use_malloc ? bench_xmalloc((size_t)size) : own;
        sum += bench_scribble(p, size, writes);
        if (use_malloc)
            free(p);
    }
    free(own);
    return sum;
}

/* The drivers' per-thread argument slots: n copies of the worker struct
 * *proto of size bytes, the index of each in its long at id_offset (none if
 * id_offset is BENCH_NO_ID).  Freed with free(). */
#define BENCH_NO_ID ((size_t)-1)
static BENCH_UNUSED void *bench_workers(long n, size_t size, const void *proto, size_t id_offset)
{
    char *ws = (char *)calloc((size_t)n, size);
    if (ws == NULL)
        bench_die("calloc failed");
    for (long t = 0; t < n; t++) {
        memcpy(ws + (size_t)t * size, proto, size);
        if (id_offset != BENCH_NO_ID)
            memcpy(ws + (size_t)t * size + id_offset, &t, sizeof t);
    }
    return ws;
}

/* Per-thread argument slots are padded to a cache line pair so that the
 * drivers' own bookkeeping does not false-share. */
#define BENCH_PAD 128

static BENCH_UNUSED void bench_result(const char *workload, long threads, uint64_t ops,
                                      double seconds, uint64_t checksum);

/* Time fn over n workers (n structs of arg_size bytes at args, each with
 * uint64_t ops and checksum fields side by side at ops_offset), add up their
 * counts and print the RESULT line. */
static BENCH_UNUSED void bench_run_and_report(const char *workload, long n, void *(*fn)(void *),
                                              void *args, size_t arg_size, size_t ops_offset)
{
    double t0 = bench_now();
    bench_run_threads(n, fn, args, arg_size);
    double t1 = bench_now();
    uint64_t ops = 0, sum = 0;
    for (long t = 0; t < n; t++) {
        const uint64_t *counts = (const uint64_t *)((const char *)args + (size_t)t * arg_size + ops_offset);
        ops += counts[0];
        sum += counts[1];
    }
    bench_result(workload, n, ops, t1 - t0, sum);
}

/* The usual call: ws is an array of n struct worker with ops, checksum. */
#define BENCH_RUN_AND_REPORT(workload, n, fn, ws)                                              \
    do {                                                                                       \
        _Static_assert(offsetof(__typeof__(*(ws)), checksum) ==                                \
                           offsetof(__typeof__(*(ws)), ops) + sizeof(uint64_t),                \
                       "checksum must follow ops");                                            \
        bench_run_and_report(workload, n, fn, ws, sizeof *(ws), offsetof(__typeof__(*(ws)), ops)); \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Result                                                                   */

/* The RESULT line, with `extra` (more key=value fields, space-separated, or
 * NULL) at its end: facts about the run that the tests check. */
static BENCH_UNUSED void bench_result_extra(const char *workload, long threads, uint64_t ops,
                                            double seconds, uint64_t checksum, const char *extra)
{
    if (ops == 0)
        bench_die("no operations were performed");
    if (checksum == 0)
        bench_die("checksum is zero: no data was read back");
    double rate = seconds > 0 ? (double)ops / seconds : 0.0;
    printf("RESULT workload=%s threads=%ld ops=%" PRIu64 " seconds=%.6f ops_per_sec=%.1f "
           "checksum=%016" PRIx64 "%s%s\n",
           workload, threads, ops, seconds, rate, checksum, extra ? " " : "", extra ? extra : "");
    fflush(stdout);
}

static BENCH_UNUSED void bench_result(const char *workload, long threads, uint64_t ops,
                                      double seconds, uint64_t checksum)
{
    bench_result_extra(workload, threads, ops, seconds, checksum, NULL);
}

#endif /* BENCH_COMMON_H */
