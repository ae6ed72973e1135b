/*
 * shbench.c: mixed small sizes, batch allocate, free in a mixed order
 * (after MicroQuill's SmartHeap benchmark).
 *
 * Each thread repeatedly allocates a batch of blocks whose sizes are mostly
 * tiny (90% in [min-size, 100] bytes) with some larger ones (10% up to
 * max-size, 1 KiB by default), writes a cookie into each, and then frees the
 * whole batch in a random order (a Fisher-Yates shuffle of the batch), so
 * that frees neither follow nor reverse the allocation order.
 *
 * ops = blocks allocated (each freed).
 */
#include "bench_common.h"

struct slot {
    void *p;
    size_t size;
    uint64_t tag;
};

struct worker {
    long id, iters, batch, min_size, max_size;
    uint64_t seed, ops, checksum;
    char pad[BENCH_PAD];
};

static size_t pick_size(bench_rng *r, size_t lo, size_t hi)
{
    size_t small_hi = hi < 100 ? hi : 100;
    if (small_hi < lo)
        small_hi = lo;
    if (bench_below(r, 10) != 0 || small_hi >= hi)
        return bench_range(r, lo, small_hi);
    return bench_range(r, small_hi + 1, hi);
}

static void *run(void *arg)
{
    struct worker *w = (struct worker *)arg;
    bench_rng rng;
    bench_rng_seed(&rng, w->seed, (uint64_t)w->id);
    size_t lo = (size_t)w->min_size, hi = (size_t)w->max_size;
    uint64_t ops = 0, sum = 0;
    struct slot *a = (struct slot *)bench_xmalloc(sizeof(struct slot) * (size_t)w->batch);

    long left = w->iters;
    while (left > 0) {
        long n = left < w->batch ? left : w->batch;
        for (long i = 0; i < n; i++) {
            a[i].size = pick_size(&rng, lo, hi);
            a[i].tag = bench_rand(&rng);
            a[i].p = bench_xmalloc(a[i].size);
            bench_fill(a[i].p, a[i].size, a[i].tag);
        }
        /* Shuffle the free order. */
        for (long i = n - 1; i > 0; i--) {
            long j = (long)bench_below(&rng, (uint32_t)(i + 1));
            struct slot t = a[i];
            a[i] = a[j];
            a[j] = t;
        }
        for (long i = 0; i < n; i++) {
            sum += bench_check(a[i].p, a[i].size, a[i].tag);
            free(a[i].p);
        }
        ops += (uint64_t)n;
        left -= n;
    }
    free(a);
    w->ops = ops;
    w->checksum = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    long threads = 2, iters = 2000000, batch = 1000, min_size = 1, max_size = 1024, seed = 1;
    const struct bench_opt opts[] = {
        {"threads", &threads, 1, 1024, "worker threads"},
        {"iters", &iters, 1, 1L << 40, "blocks allocated per thread"},
        {"batch", &batch, 1, 1L << 24, "blocks allocated before the batch is freed"},
        {"min-size", &min_size, 1, 1L << 30, "smallest block size"},
        {"max-size", &max_size, 1, 1L << 30, "largest block size"},
        {"seed", &seed, 0, INT64_MAX, "PRNG seed"},
    };
    bench_parse(argc, argv, "shbench", "Mixed small sizes: allocate a batch, free it in a "
                "shuffled order.", opts, sizeof opts / sizeof opts[0]);
    if (min_size > max_size || max_size - min_size >= (1L << 32))
        bench_die("need min-size <= max-size (and a range below 4 GiB)");

    const struct worker proto = {
        .iters = iters,
        .batch = batch,
        .min_size = min_size,
        .max_size = max_size,
        .seed = (uint64_t)seed,
    };
    struct worker *ws =
        (struct worker *)bench_workers(threads, sizeof proto, &proto, offsetof(struct worker, id));

    BENCH_RUN_AND_REPORT("shbench", threads, run, ws);
    free(ws);
    return 0;
}
