/*
 * malloc_large.c: large blocks (after mimalloc-bench's malloc-large).
 *
 * Each thread keeps a small live set of blocks of random sizes in
 * [min-size, max-size] (64 KiB - 8 MiB by default).  Each operation picks a
 * live block, verifies and frees it, allocates a new one and touches every
 * page of it (one byte per page, plus cookies at both ends), so the cost of
 * getting memory from the OS, faulting it in and giving it back is measured,
 * not just the bookkeeping.
 *
 * ops = blocks allocated (each freed).
 */
#include "bench_common.h"

#include <unistd.h>

struct slot {
    void *p;
    size_t size;
    uint64_t tag;
};

struct worker {
    long id, iters, live, min_size, max_size;
    uint64_t seed, ops, checksum;
    char pad[BENCH_PAD];
};

static size_t page_size;

/* Write one byte into every page (after the cookie at the start). */
static void touch(void *p, size_t size, uint64_t tag)
{
    unsigned char *b = (unsigned char *)p;
    bench_fill(p, size, tag);
    for (size_t off = page_size; off + 8 < size; off += page_size)
        b[off] = (unsigned char)(tag + off / page_size);
}

static uint64_t verify(const void *p, size_t size, uint64_t tag)
{
    const unsigned char *b = (const unsigned char *)p;
    uint64_t sum = bench_check(p, size, tag);
    for (size_t off = page_size; off + 8 < size; off += page_size) {
        if (b[off] != (unsigned char)(tag + off / page_size))
            bench_die("corrupted large block %p at offset %zu", p, off);
        sum += b[off];
    }
    return sum;
}

static void *run(void *arg)
{
    struct worker *w = (struct worker *)arg;
    bench_rng rng;
    bench_rng_seed(&rng, w->seed, (uint64_t)w->id);
    size_t lo = (size_t)w->min_size, hi = (size_t)w->max_size;
    uint64_t ops = 0, sum = 0;

    struct slot *a = (struct slot *)bench_xmalloc(sizeof(struct slot) * (size_t)w->live);
    for (long i = 0; i < w->live; i++) {
        a[i].size = bench_range(&rng, lo, hi);
        a[i].tag = bench_rand(&rng);
        a[i].p = bench_xmalloc(a[i].size);
        touch(a[i].p, a[i].size, a[i].tag);
        ops++;
    }
    for (long i = 0; i < w->iters; i++) {
        struct slot *s = &a[bench_below(&rng, (uint32_t)w->live)];
        sum += verify(s->p, s->size, s->tag);
        free(s->p);
        s->size = bench_range(&rng, lo, hi);
        s->tag = bench_rand(&rng);
        s->p = bench_xmalloc(s->size);
        touch(s->p, s->size, s->tag);
        ops++;
    }
    for (long i = 0; i < w->live; i++) {
        sum += verify(a[i].p, a[i].size, a[i].tag);
        free(a[i].p);
    }
    free(a);
    w->ops = ops;
    w->checksum = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    long threads = 1, iters = 2000, live = 8, min_size = 64L << 10, max_size = 8L << 20, seed = 1;
    const struct bench_opt opts[] = {
        {"threads", &threads, 1, 1024, "worker threads"},
        {"iters", &iters, 1, 1L << 40, "free+malloc operations per thread"},
        {"live", &live, 1, 1L << 20, "live blocks per thread"},
        {"min-size", &min_size, 1, 1L << 32, "smallest block size"},
        {"max-size", &max_size, 1, 1L << 32, "largest block size"},
        {"seed", &seed, 0, INT64_MAX, "PRNG seed"},
    };
    bench_parse(argc, argv, "malloc_large", "Large blocks with a small live set; every page is "
                "touched.", opts, sizeof opts / sizeof opts[0]);
    if (min_size > max_size || max_size - min_size >= (1L << 32))
        bench_die("need min-size <= max-size (and a range below 4 GiB)");
    long ps = sysconf(_SC_PAGESIZE);
    page_size = ps > 0 ? (size_t)ps : 4096;

    const struct worker proto = {
        .iters = iters,
        .live = live,
        .min_size = min_size,
        .max_size = max_size,
        .seed = (uint64_t)seed,
    };
    struct worker *ws =
        (struct worker *)bench_workers(threads, sizeof proto, &proto, offsetof(struct worker, id));

    BENCH_RUN_AND_REPORT("malloc_large", threads, run, ws);
    free(ws);
    return 0;
}
