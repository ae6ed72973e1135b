/*
 * alloc_test.c: random-size churn over a live working set (after alloc-test
 * and mstress).
 *
 * Each thread keeps `live` blocks alive.  Each operation picks a random one;
 * with probability realloc-pct % it is realloc'ed to a new random size (the
 * kept prefix is verified), otherwise it is verified, freed and replaced by a
 * new block.  Sizes range over [min-size, max-size] skewed towards small:
 * 70% in the lowest 1/128 of the range (16-128 B by default), 20% in the next
 * 1/16 (128 B-1 KiB), 10% anywhere in the rest (up to 16 KiB).
 *
 * ops = mallocs + reallocs performed.
 */
#include "bench_common.h"

struct slot {
    void *p;
    size_t size;
    uint64_t tag;
};

struct worker {
    long id, iters, live, min_size, max_size, realloc_pct;
    uint64_t seed, ops, checksum;
    char pad[BENCH_PAD];
};

static size_t pick_size(bench_rng *r, size_t lo, size_t hi)
{
    size_t span = hi - lo;
    uint32_t c = bench_below(r, 100);
    size_t a = lo, b = hi;
    if (c < 70)
        b = lo + span / 128;
    else if (c < 90)
        a = lo + span / 128, b = lo + span / 16;
    else
        a = lo + span / 16;
    return bench_range(r, a, b);
}

/* Bytes of the old tag that a realloc must have kept at the block's start. */
static uint64_t check_prefix(const void *p, size_t n, uint64_t tag)
{
    if (n > 8)
        n = 8;
    uint64_t got = 0;
    memcpy(&got, p, n);
    if (memcmp(p, &tag, n) != 0)
        bench_die("realloc lost the contents of block %p", p);
    return bench_mix64(got + n);
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
        a[i].size = pick_size(&rng, lo, hi);
        a[i].tag = bench_rand(&rng);
        a[i].p = bench_xmalloc(a[i].size);
        bench_fill(a[i].p, a[i].size, a[i].tag);
        ops++;
    }
    for (long i = 0; i < w->iters; i++) {
        struct slot *s = &a[bench_below(&rng, (uint32_t)w->live)];
        size_t size = pick_size(&rng, lo, hi);
        uint64_t tag = bench_rand(&rng);
        if (bench_below(&rng, 100) < (uint32_t)w->realloc_pct) {
            void *q = realloc(s->p, size);
            if (q == NULL)
                bench_die("realloc(%zu) returned NULL", size);
            sum += check_prefix(q, size < s->size ? size : s->size, s->tag);
            s->p = q;
        } else {
            sum += bench_check(s->p, s->size, s->tag);
            free(s->p);
            s->p = bench_xmalloc(size);
        }
        s->size = size;
        s->tag = tag;
        bench_fill(s->p, size, tag);
        ops++;
    }
    for (long i = 0; i < w->live; i++) {
        sum += bench_check(a[i].p, a[i].size, a[i].tag);
        free(a[i].p);
    }
    free(a);
    w->ops = ops;
    w->checksum = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    long threads = 2, iters = 1000000, live = 10000, min_size = 16, max_size = 16384,
         realloc_pct = 10, seed = 1;
    const struct bench_opt opts[] = {
        {"threads", &threads, 1, 1024, "worker threads"},
        {"iters", &iters, 1, 1L << 40, "operations per thread"},
        {"live", &live, 1, 1L << 28, "live blocks per thread"},
        {"min-size", &min_size, 1, 1L << 30, "smallest block size"},
        {"max-size", &max_size, 1, 1L << 30, "largest block size"},
        {"realloc-pct", &realloc_pct, 0, 100, "percentage of operations that realloc"},
        {"seed", &seed, 0, INT64_MAX, "PRNG seed"},
    };
    bench_parse(argc, argv, "alloc_test", "Random-size churn with a live working set and some "
                "reallocs.", opts, sizeof opts / sizeof opts[0]);
    if (min_size > max_size)
        bench_die("need min-size <= max-size");

    const struct worker proto = {
        .iters = iters,
        .live = live,
        .min_size = min_size,
        .max_size = max_size,
        .realloc_pct = realloc_pct,
        .seed = (uint64_t)seed,
    };
    struct worker *ws =
        (struct worker *)bench_workers(threads, sizeof proto, &proto, offsetof(struct worker, id));

    BENCH_RUN_AND_REPORT("alloc_test", threads, run, ws);
    free(ws);
    return 0;
}
