/*
 * cache_thrash.c: active false-sharing probe (after Hoard's cache-thrash).
 *
 * Each thread repeatedly allocates a small object, writes every byte of it
 * `writes` times, reads it back and frees it.  An allocator that serves
 * concurrent threads' small objects from the same cache line makes the cores
 * fight over that line, and the run slows down by a large factor.
 *
 * ops = objects allocated (each freed).
 */
#include "bench_common.h"

static long use_malloc = 1; /* 0: the floor, see bench_private_lines */

struct worker {
    long iters, size, writes;
    uint64_t ops, checksum;
    char pad[BENCH_PAD];
};

static void *run(void *arg)
{
    struct worker *w = (struct worker *)arg;
    w->checksum = bench_probe_loop(w->iters, w->size, w->writes, (int)use_malloc);
    w->ops = (uint64_t)w->iters;
    return NULL;
}

int main(int argc, char **argv)
{
    long threads = 2, iters = 100000, size = 8, writes = 50;
    const struct bench_opt opts[] = {
        {"threads", &threads, 1, 1024, "worker threads"},
        {"iters", &iters, 1, 1L << 40, "allocate/write/free cycles per thread"},
        {"size", &size, 1, 1L << 20, "object size in bytes"},
        {"writes", &writes, 1, 1L << 30, "times each byte is written per object"},
        {"malloc", &use_malloc, 0, 1, "0: no malloc/free in the loop, each thread reuses a private "
                                      "buffer (the floor no allocator can beat)"},
    };
    bench_parse(argc, argv, "cache_thrash", "Active false sharing: every thread allocates, "
                "writes and frees its own small objects.", opts, sizeof opts / sizeof opts[0]);

    const struct worker proto = {.iters = iters, .size = size, .writes = writes};
    struct worker *ws = (struct worker *)bench_workers(threads, sizeof proto, &proto, BENCH_NO_ID);

    BENCH_RUN_AND_REPORT("cache_thrash", threads, run, ws);
    free(ws);
    return 0;
}
