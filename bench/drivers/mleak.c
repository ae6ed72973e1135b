/*
 * mleak.c: a heap that only grows (after the mleak benchmark of
 * mimalloc-bench: a program that leaks).
 *
 * Each of T threads allocates objects of mixed small sizes (three in four of
 * 8-128 bytes, the rest 129-1024 bytes) and writes a cookie into each, until
 * it has asked for its share of --mib MiB; after every --free-every
 * allocations it frees one object allocated earlier, picked at random (if
 * that one is still live), so a small fraction of the heap goes back in
 * scattered holes and the rest is never freed.  The timed region is the
 * growth alone; afterwards every live object is verified (not freed: the
 * program ends with its heap as it grew).  What matters here, besides the
 * time, is the peak RSS against the bytes live.
 *
 * An object's size and cookie are functions of (seed, thread, index), so the
 * bookkeeping is one pointer per object and the checksum depends on the
 * options only.
 *
 * ops = number of objects allocated.  The RESULT line adds objects_live=,
 * live_bytes= (at the end) and asked_bytes= (all objects' sizes summed).
 */
#include "bench_common.h"

struct shared {
    long threads, free_every;
    uint64_t budget; /* bytes to ask for, per thread */
    uint64_t seed;
};

struct worker {
    struct shared *sh;
    long id;
    void **objs;     /* every object allocated, NULL once freed */
    uint64_t count;  /* objects allocated */
    uint64_t asked, live_bytes, freed; /* bytes asked for, still live; objects freed */
    uint64_t ops, checksum;
    char pad[BENCH_PAD];
};

/* The hash of object i of thread t: its cookie, and its size from the top
 * bits. */
static inline uint64_t obj_hash(const struct shared *sh, long t, uint64_t i)
{
    return bench_mix64(sh->seed * 0x9e3779b97f4a7c15ULL ^ ((uint64_t)t << 48) ^ (i + 1));
}

static inline size_t obj_size(uint64_t h)
{
    uint32_t r = (uint32_t)(h >> 32);
    if ((r & 3) != 0)
        return 8 + (r >> 2) % 121;   /* 8..128 */
    return 129 + (r >> 2) % 896;     /* 129..1024 */
}

/* Allocate until the thread's budget is asked for.  The object table is
 * sized for a mean object of 160 B (the real mean is about 195 B) and grows
 * if that was too small. */
static void *run(void *arg)
{
    struct worker *w = (struct worker *)arg;
    const struct shared *sh = w->sh;
    bench_rng rng;
    bench_rng_seed(&rng, sh->seed, (uint64_t)w->id);
    size_t cap = (size_t)(sh->budget / 160) + 1024;
    void **objs = (void **)bench_xmalloc(cap * sizeof *objs);
    uint64_t n = 0, asked = 0, sum = 0, live = 0, freed = 0;
    while (asked < sh->budget) {
        if (n == cap) {
            cap *= 2;
            objs = (void **)realloc(objs, cap * sizeof *objs);
            if (objs == NULL)
                bench_die("realloc of the object table failed");
        }
        uint64_t h = obj_hash(sh, w->id, n);
        size_t size = obj_size(h);
        void *p = bench_xmalloc(size);
        bench_fill(p, size, h);
        objs[n++] = p;
        asked += size;
        live += size;
        if (n % (uint64_t)sh->free_every == 0) {
            uint64_t j = bench_below(&rng, (uint32_t)(n < UINT32_MAX ? n : UINT32_MAX));
            if (objs[j] != NULL) {
                uint64_t hj = obj_hash(sh, w->id, j);
                size_t sj = obj_size(hj);
                sum += bench_check(objs[j], sj, hj);
                free(objs[j]);
                objs[j] = NULL;
                live -= sj;
                freed++;
            }
        }
    }
    w->objs = objs;
    w->count = n;
    w->asked = asked;
    w->live_bytes = live;
    w->freed = freed;
    w->ops = n;
    w->checksum = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    long threads = 1, mib = 64, free_every = 50, seed = 1;
    const struct bench_opt opts[] = {
        {"threads", &threads, 1, 1024, "worker threads"},
        {"mib", &mib, 1, 1L << 20, "MiB asked for in all (object sizes summed), over every thread"},
        {"free-every", &free_every, 1, 1L << 30, "free one earlier object per this many allocations"},
        {"seed", &seed, 0, INT64_MAX, "PRNG seed"},
    };
    bench_parse(argc, argv, "mleak", "A heap that only grows: mixed small objects, written, "
                "one in --free-every freed again.", opts, sizeof opts / sizeof opts[0]);

    struct shared sh = {
        .threads = threads, .free_every = free_every,
        .budget = ((uint64_t)mib << 20) / (uint64_t)threads, .seed = (uint64_t)seed,
    };
    struct worker proto = {.sh = &sh};
    struct worker *ws = (struct worker *)bench_workers(threads, sizeof proto, &proto,
                                                       offsetof(struct worker, id));

    double t0 = bench_now();
    bench_run_threads(threads, run, ws, sizeof *ws);
    double t1 = bench_now();

    /* Read every live object back (outside the timed region). */
    uint64_t ops = 0, sum = 0, live = 0, objects = 0, asked = 0;
    for (long t = 0; t < threads; t++) {
        struct worker *w = &ws[t];
        uint64_t live_here = 0, objects_here = 0;
        for (uint64_t i = 0; i < w->count; i++) {
            if (w->objs[i] == NULL)
                continue;
            uint64_t h = obj_hash(&sh, t, i);
            size_t size = obj_size(h);
            w->checksum += bench_check(w->objs[i], size, h);
            live_here += size;
            objects_here++;
        }
        if (live_here != w->live_bytes || objects_here + w->freed != w->count)
            bench_die("thread %ld: %" PRIu64 " objects of %" PRIu64 " bytes live, expected %"
                      PRIu64 " of %" PRIu64, t, objects_here, live_here, w->count - w->freed,
                      w->live_bytes);
        objects += objects_here;
        ops += w->ops;
        sum += w->checksum;
        asked += w->asked;
        live += live_here;
    }
    char extra[128];
    snprintf(extra, sizeof extra, "objects_live=%" PRIu64 " live_bytes=%" PRIu64
             " asked_bytes=%" PRIu64, objects, live, asked);
    bench_result_extra("mleak", threads, ops, t1 - t0, sum, extra);
    return 0;
}
