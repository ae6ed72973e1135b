/*
 * pyprofile.c: a CPython-like allocation profile.
 *
 * CPython allocates mostly small objects (tuples, ints, frames, dict and
 * list storage), mostly 32-64 bytes, and most of them die almost at once
 * (temporaries), while a few live for a long time (module-level data,
 * caches).  This driver draws:
 *
 *   size:     16-512 B in multiples of 8: 15% 16-31, 60% 32-64, 17% 65-128,
 *             6% 129-256, 2% 257-512;
 *   lifetime: a power law, P(lifetime >= k allocations) = (k+1)^-alpha with
 *             alpha = 1 (so half die before the next allocation), cut at
 *             `wheel` allocations; in addition `long-pct` per mille of the
 *             objects become long-lived: they go into a pool of `live`
 *             entries, replacing (and freeing) a random older one when full.
 *
 * Objects that die "at once" are freed right after being written and read.
 * The others go on a timing wheel (an intrusive list per slot, the link kept
 * in the object's first word, as an object header would be) and are freed
 * when their time comes.
 *
 * ops = objects allocated (each freed).
 */
#include "bench_common.h"

/* An object: link, tag, payload...; ~tag in the last word when size >= 24. */
struct obj {
    struct obj *next;
    uint64_t tag;
};

struct worker {
    long id, iters, wheel, live, long_permille;
    uint64_t seed, ops, checksum;
    char pad[BENCH_PAD];
};

static size_t pick_size(bench_rng *r)
{
    uint32_t c = bench_below(r, 100);
    size_t s;
    if (c < 15)
        s = bench_range(r, 16, 31);
    else if (c < 75)
        s = bench_range(r, 32, 64);
    else if (c < 92)
        s = bench_range(r, 65, 128);
    else if (c < 98)
        s = bench_range(r, 129, 256);
    else
        s = bench_range(r, 257, 512);
    s &= ~(size_t)7;
    return s < 16 ? 16 : s;
}

/* Objects carry their size in the upper 16 bits of the tag. */
static struct obj *make(bench_rng *r)
{
    size_t size = pick_size(r);
    struct obj *o = (struct obj *)bench_xmalloc(size);
    o->next = NULL;
    o->tag = (bench_rand(r) & 0x0000ffffffffffffULL) | ((uint64_t)size << 48);
    if (size >= 24) {
        uint64_t t = ~o->tag;
        memcpy((char *)o + size - 8, &t, 8);
    }
    return o;
}

static uint64_t drop(struct obj *o)
{
    uint64_t tag = o->tag;
    size_t size = (size_t)(tag >> 48);
    if (size < 16 || size > 512)
        bench_die("corrupted object %p: bad header", (void *)o);
    if (size >= 24) {
        uint64_t t;
        memcpy(&t, (char *)o + size - 8, 8);
        if (t != ~tag)
            bench_die("corrupted object %p (size %zu): tail mismatch", (void *)o, size);
    }
    free(o);
    return bench_mix64(tag);
}

static void *run(void *arg)
{
    struct worker *w = (struct worker *)arg;
    bench_rng rng;
    bench_rng_seed(&rng, w->seed, (uint64_t)w->id);
    uint64_t ops = 0, sum = 0;
    size_t W = (size_t)w->wheel; /* a power of two */
    struct obj **wheel = (struct obj **)calloc(W, sizeof *wheel);
    struct obj **pool = (struct obj **)calloc((size_t)w->live, sizeof *pool);
    if (wheel == NULL || pool == NULL)
        bench_die("calloc failed");
    long pooled = 0;

    for (long i = 0; i < w->iters; i++) {
        /* Free whatever dies now. */
        struct obj **slot = &wheel[(size_t)i & (W - 1)];
        for (struct obj *o = *slot, *next; o != NULL; o = next) {
            next = o->next;
            sum += drop(o);
        }
        *slot = NULL;

        struct obj *o = make(&rng);
        ops++;
        if (bench_below(&rng, 1000) < (uint32_t)w->long_permille) {
            /* Long-lived: into the pool, evicting a random older object. */
            if (pooled < w->live) {
                pool[pooled++] = o;
            } else {
                long j = (long)bench_below(&rng, (uint32_t)w->live);
                sum += drop(pool[j]);
                pool[j] = o;
            }
            continue;
        }
        /* Lifetime L with P(L >= k) = 1/(k+1): L = floor(1/u) - 1. */
        double inv = 1.0 / (1.0 - bench_unit(&rng)); /* 1/u, u in (0, 1] */
        size_t L = inv >= (double)W ? W - 1 : (size_t)inv - 1;
        if (L == 0) {
            sum += drop(o); /* a temporary */
            continue;
        }
        struct obj **dst = &wheel[((size_t)i + L) & (W - 1)];
        o->next = *dst;
        *dst = o;
    }
    for (size_t k = 0; k < W; k++) {
        for (struct obj *o = wheel[k], *next; o != NULL; o = next) {
            next = o->next;
            sum += drop(o);
        }
    }
    for (long j = 0; j < pooled; j++)
        sum += drop(pool[j]);
    free(wheel);
    free(pool);
    w->ops = ops;
    w->checksum = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    long threads = 1, iters = 5000000, wheel = 65536, live = 50000, long_permille = 10, seed = 1;
    const struct bench_opt opts[] = {
        {"threads", &threads, 1, 1024, "worker threads (CPython mostly runs one)"},
        {"iters", &iters, 1, 1L << 40, "objects allocated per thread"},
        {"wheel", &wheel, 2, 1L << 26, "longest power-law lifetime, in allocations (power of 2)"},
        {"live", &live, 1, 1L << 26, "size of the long-lived pool"},
        {"long-permille", &long_permille, 0, 1000, "per mille of objects that are long-lived"},
        {"seed", &seed, 0, INT64_MAX, "PRNG seed"},
    };
    bench_parse(argc, argv, "pyprofile", "CPython-like profile: small objects, power-law "
                "lifetimes.", opts, sizeof opts / sizeof opts[0]);
    if ((wheel & (wheel - 1)) != 0)
        bench_die("--wheel must be a power of two");

    const struct worker proto = {
        .iters = iters,
        .wheel = wheel,
        .live = live,
        .long_permille = long_permille,
        .seed = (uint64_t)seed,
    };
    struct worker *ws =
        (struct worker *)bench_workers(threads, sizeof proto, &proto, offsetof(struct worker, id));

    BENCH_RUN_AND_REPORT("pyprofile", threads, run, ws);
    free(ws);
    return 0;
}
