/*
 * fastpath.c: the allocator's hot path, for instruction counting.
 *
 *   fastpath SIZE ITERS [lifo|fifo]
 *
 * Keeps 8 objects of SIZE alive (so the size class is warm and not empty),
 * then does ITERS malloc+free pairs on one thread:
 *   lifo (default): free the object just allocated (the best case of every
 *                   allocator: the same block comes back every time);
 *   fifo:           keep a ring of 64 objects and free the oldest, so the
 *                   free list is cycled through.
 * Each object gets one byte written and read back through a volatile
 * pointer, and an empty asm statement takes the pointer, so the compiler
 * can neither drop nor merge the calls.
 *
 * bench/callgrind_fastpath.py runs it at two ITERS under callgrind and takes
 * the difference, so start-up cancels out; it also reads main's own cost
 * from the profile, to tell the loop's instructions from the allocator's.
 * Prints the usual RESULT line.
 */
#include "bench_common.h"

#define WARM 8
#define RING 64

/* Make the compiler assume p escapes and memory may have changed. */
#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")

/* sum of (k mod 256) for k in [0, n) */
static uint64_t sum_mod256(uint64_t n)
{
    uint64_t r = n % 256;
    return (n / 256) * (255 * 256 / 2) + r * (r - (r > 0)) / 2;
}

int main(int argc, char **argv)
{
    bench_name = "fastpath";
    const char *usage = "usage: fastpath SIZE ITERS [lifo|fifo]\n";
    if (argc < 3 || argc > 4) {
        fputs(usage, argc == 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr);
        return argc == 2 && strcmp(argv[1], "--help") == 0 ? 0 : 2;
    }
    long size, iters;
    if (bench_parse_long(argv[1], &size) != 0 || size < 1 || size > (1L << 30) ||
        bench_parse_long(argv[2], &iters) != 0 || iters < 1) {
        fputs(usage, stderr);
        return 2;
    }
    const char *order = argc == 4 ? argv[3] : "lifo";
    int mode;
    if (strcmp(order, "lifo") == 0)
        mode = 0;
    else if (strcmp(order, "fifo") == 0)
        mode = 1;
    else {
        fputs(usage, stderr);
        return 2;
    }

    void *warm[WARM];
    for (int i = 0; i < WARM; i++) {
        warm[i] = bench_xmalloc((size_t)size);
        ESCAPE(warm[i]);
    }
    volatile unsigned char *ring[RING];
    if (mode == 1) {
        for (int i = 0; i < RING; i++) {
            ring[i] = (volatile unsigned char *)bench_xmalloc((size_t)size);
            ring[i][0] = (unsigned char)i;
        }
    }

    uint64_t sum = 0;
    double t0 = bench_now();
    if (mode == 0) {
        for (long i = 0; i < iters; i++) {
            volatile unsigned char *p = (volatile unsigned char *)malloc((size_t)size);
            if (p == NULL)
                bench_die("malloc(%ld) returned NULL", size);
            ESCAPE(p);
            p[0] = (unsigned char)i;
            sum += p[0];
            free((void *)p);
        }
    } else {
        unsigned j = 0;
        for (long i = 0; i < iters; i++) {
            volatile unsigned char *p = (volatile unsigned char *)malloc((size_t)size);
            if (p == NULL)
                bench_die("malloc(%ld) returned NULL", size);
            ESCAPE(p);
            p[0] = (unsigned char)i;
            volatile unsigned char *q = ring[j];
            sum += q[0];
            free((void *)q);
            ring[j] = p;
            j = (j + 1) & (RING - 1);
        }
    }
    double t1 = bench_now();

    if (mode == 1)
        for (int i = 0; i < RING; i++)
            free((void *)ring[i]);
    for (int i = 0; i < WARM; i++)
        free(warm[i]);
    /* What the loop must have read back, in closed form (a loop here would
     * add to the instruction count per iteration). */
    uint64_t want;
    if (mode == 1) {
        /* The first RING reads see the ring's initial bytes 0..63, later ones
         * the byte written RING iterations earlier. */
        long first = iters < RING ? iters : RING;
        want = sum_mod256((uint64_t)first) + sum_mod256((uint64_t)(iters - first));
    } else {
        want = sum_mod256((uint64_t)iters);
    }
    if (sum != want)
        bench_die("read back %" PRIu64 ", expected %" PRIu64, sum, want);
    char name[64];
    snprintf(name, sizeof name, "fastpath-%s-%ld", order, size);
    bench_result(name, 1, (uint64_t)iters, t1 - t0, bench_mix64(sum + 1));
    return 0;
}
