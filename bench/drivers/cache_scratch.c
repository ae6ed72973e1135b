/*
 * cache_scratch.c: passive false-sharing probe (after Hoard's cache-scratch).
 *
 * The main thread allocates one small object per thread, back to back, so
 * that an allocator that carves them from one cache line puts them side by
 * side.  Each thread gets one of them, writes to it and frees it; from then
 * on it repeatedly allocates an object of the same size, writes every byte
 * of it `writes` times, reads it back and frees it.  An allocator that hands
 * the freed object (or its cache line neighbours) to a thread other than the
 * one that will keep touching them keeps two cores fighting over one line:
 * the run slows down by a large factor.
 *
 * ops = objects allocated by the worker threads (each freed).
 */
#include "bench_common.h"

static long use_malloc = 1; /* 0: the floor, see bench_private_lines */

struct worker {
    void *handed; /* the object the main thread allocated for us */
    long iters, size, writes;
    uint64_t ops, checksum;
    char pad[BENCH_PAD];
};

static void *run(void *arg)
{
    struct worker *w = (struct worker *)arg;
    /* The handed object first (for the floor, a private buffer in its place). */
    void *first = use_malloc ? w->handed : bench_private_lines(w->size);
    uint64_t sum = bench_scribble(first, w->size, w->writes);
    free(first);
    w->checksum = sum + bench_probe_loop(w->iters, w->size, w->writes, (int)use_malloc);
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
    bench_parse(argc, argv, "cache_scratch", "Passive false sharing: objects handed out by the "
                "main thread, freed and reallocated by workers.", opts, sizeof opts / sizeof opts[0]);

    const struct worker proto = {.iters = iters, .size = size, .writes = writes};
    struct worker *ws = (struct worker *)bench_workers(threads, sizeof proto, &proto, BENCH_NO_ID);
    for (long t = 0; t < threads; t++) /* back to back, from one thread */
        ws[t].handed = use_malloc ? bench_xmalloc((size_t)size) : NULL;

    BENCH_RUN_AND_REPORT("cache_scratch", threads, run, ws);
    free(ws);
    return 0;
}
