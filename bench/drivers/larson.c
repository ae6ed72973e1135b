/*
 * larson.c: server churn with cross-thread frees (after Larson & Krishnan's
 * description of a long-running multi-threaded server).
 *
 * There are T slot arrays, one per thread at the start, each holding `slots`
 * live blocks of random sizes in [min-size, max-size].  The run is split into
 * `rounds`; in round r thread t works on array (t + r) mod T, so at every
 * round boundary each array moves to another thread and the blocks in it are
 * freed by a thread other than the one that allocated them.  Within a round
 * a thread repeatedly picks a random slot, verifies and frees the block in
 * it, and puts a freshly allocated and written block there.
 *
 * ops = number of blocks allocated (every one of them is freed).
 */
#include "bench_common.h"

struct slot {
    void *p;
    size_t size;
    uint64_t tag;
};

struct shared {
    struct slot **arrays; /* T arrays of `slots` slots */
    long threads, slots, rounds, iters, min_size, max_size;
    uint64_t seed;
    pthread_barrier_t barrier;
};

struct worker {
    struct shared *sh;
    long id;
    uint64_t ops, checksum;
    char pad[BENCH_PAD];
};

static void *run(void *arg)
{
    struct worker *w = (struct worker *)arg;
    struct shared *sh = w->sh;
    long T = sh->threads;
    bench_rng rng;
    bench_rng_seed(&rng, sh->seed, (uint64_t)w->id);
    uint64_t ops = 0, sum = 0;

    /* Fill our own array. */
    struct slot *a = sh->arrays[w->id];
    for (long i = 0; i < sh->slots; i++) {
        size_t size = bench_range(&rng, (size_t)sh->min_size, (size_t)sh->max_size);
        uint64_t tag = bench_rand(&rng);
        a[i].p = bench_xmalloc(size);
        a[i].size = size;
        a[i].tag = tag;
        bench_fill(a[i].p, size, tag);
        ops++;
    }

    long per_round = sh->iters / sh->rounds;
    for (long r = 0; r < sh->rounds; r++) {
        /* Wait until every array's previous owner has finished with it. */
        pthread_barrier_wait(&sh->barrier);
        a = sh->arrays[(w->id + r) % T];
        long n = per_round + (r == sh->rounds - 1 ? sh->iters % sh->rounds : 0);
        for (long i = 0; i < n; i++) {
            struct slot *s = &a[bench_below(&rng, (uint32_t)sh->slots)];
            sum += bench_check(s->p, s->size, s->tag);
            free(s->p);
            size_t size = bench_range(&rng, (size_t)sh->min_size, (size_t)sh->max_size);
            uint64_t tag = bench_rand(&rng);
            s->p = bench_xmalloc(size);
            s->size = size;
            s->tag = tag;
            bench_fill(s->p, size, tag);
            ops++;
        }
    }

    /* Hand over once more and free everything on the new owner. */
    pthread_barrier_wait(&sh->barrier);
    a = sh->arrays[(w->id + sh->rounds) % T];
    for (long i = 0; i < sh->slots; i++) {
        sum += bench_check(a[i].p, a[i].size, a[i].tag);
        free(a[i].p);
        a[i].p = NULL;
    }
    w->ops = ops;
    w->checksum = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    long threads = 2, iters = 1000000, slots = 1000, rounds = 10, min_size = 8, max_size = 1000,
         seed = 1;
    const struct bench_opt opts[] = {
        {"threads", &threads, 1, 1024, "worker threads"},
        {"iters", &iters, 1, 1L << 40, "slot replacements per thread"},
        {"slots", &slots, 1, 1L << 24, "live blocks per array"},
        {"rounds", &rounds, 1, 1L << 20, "array hand-overs between threads"},
        {"min-size", &min_size, 1, 1L << 30, "smallest block size"},
        {"max-size", &max_size, 1, 1L << 30, "largest block size"},
        {"seed", &seed, 0, INT64_MAX, "PRNG seed"},
    };
    bench_parse(argc, argv, "larson", "Server churn: random slot replacement, arrays handed "
                "between threads every round.", opts, sizeof opts / sizeof opts[0]);
    if (min_size > max_size || max_size - min_size >= (1L << 32))
        bench_die("need min-size <= max-size (and a range below 4 GiB)");

    struct shared sh = {
        .threads = threads, .slots = slots, .rounds = rounds, .iters = iters,
        .min_size = min_size, .max_size = max_size, .seed = (uint64_t)seed,
    };
    sh.arrays = (struct slot **)bench_xmalloc(sizeof(struct slot *) * (size_t)threads);
    for (long t = 0; t < threads; t++)
        sh.arrays[t] = (struct slot *)bench_xmalloc(sizeof(struct slot) * (size_t)slots);
    pthread_barrier_init(&sh.barrier, NULL, (unsigned)threads);
    struct worker *ws = (struct worker *)calloc((size_t)threads, sizeof *ws);
    if (ws == NULL)
        bench_die("calloc failed");
    for (long t = 0; t < threads; t++) {
        ws[t].sh = &sh;
        ws[t].id = t;
    }

    double t0 = bench_now();
    bench_run_threads(threads, run, ws, sizeof *ws);
    double t1 = bench_now();

    uint64_t ops = 0, sum = 0;
    for (long t = 0; t < threads; t++) {
        ops += ws[t].ops;
        sum += ws[t].checksum;
    }
    if (ops != (uint64_t)threads * (uint64_t)(iters + slots))
        bench_die("operation count %" PRIu64 " is off", ops);
    pthread_barrier_destroy(&sh.barrier);
    for (long t = 0; t < threads; t++)
        free(sh.arrays[t]);
    free(sh.arrays);
    free(ws);
    bench_result("larson", threads, ops, t1 - t0, sum);
    return 0;
}
