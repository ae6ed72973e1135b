/*
 * turnover.c: server churn with thread turnover (after larson, whose worker
 * threads start a replacement of themselves and exit after a number of
 * operations).
 *
 * There are T worker slots, each with an array of `live` blocks of random
 * sizes in [min-size, max-size].  A slot is worked by a succession of
 * threads, its generations.  Each generation does `lifetime` operations (the
 * turnover rate: operations per thread lifetime) on the slot's array: pick a
 * random block, verify and free it, put a freshly allocated and written block
 * in its place.  Then it starts the next generation and exits; the new thread
 * first joins its predecessor (so the predecessor has really exited, its
 * thread-exit handlers, the allocator's included, have run) and then takes
 * over the array: most blocks it frees were allocated by threads that no
 * longer exist.  Generation 0 of a slot fills the array first; the slot's
 * last generation frees it whole.  The run ends after `ops` operations in
 * all (shared evenly between the slots), so a shorter lifetime means more
 * threads for the same work: about ops / lifetime thread births and deaths.
 *
 * The slots never touch each other's blocks, and each generation draws from
 * its own PRNG stream, seeded by (seed, slot, generation): the checksum
 * depends on the options only, not on scheduling.
 *
 * ops = number of blocks allocated (every one of them is freed).  The RESULT
 * line adds threads_started= (all generations of all slots).
 */
#include "bench_common.h"

struct block {
    void *p;
    size_t size;
    uint64_t tag;
};

struct shared {
    long live, lifetime, min_size, max_size;
    uint64_t seed;
    pthread_mutex_t lock; /* guards done and the slots' last fields */
    pthread_cond_t all_done;
    long done;
};

struct slot {
    struct shared *sh;
    long id;
    struct block *blocks;
    long todo;            /* operations left for the slot's later generations */
    uint64_t generation;  /* of the thread now working the slot */
    pthread_t prev;       /* the thread to join before starting, if has_prev */
    int has_prev;
    pthread_t last;       /* the slot's last thread, for main to join */
    uint64_t ops, checksum;
    char pad[BENCH_PAD];
};

static void fill(struct block *b, bench_rng *rng, const struct shared *sh)
{
    b->size = bench_range(rng, (size_t)sh->min_size, (size_t)sh->max_size);
    b->tag = bench_rand(rng);
    b->p = bench_xmalloc(b->size);
    bench_fill(b->p, b->size, b->tag);
}

static void *generation(void *arg)
{
    struct slot *s = (struct slot *)arg;
    struct shared *sh = s->sh;
    if (s->has_prev) {
        int rc = pthread_join(s->prev, NULL);
        if (rc != 0)
            bench_die("pthread_join: %s", strerror(rc));
    }
    bench_rng rng;
    bench_rng_seed(&rng, sh->seed, ((uint64_t)s->id << 40) ^ s->generation);
    uint64_t ops = 0, sum = 0;

    if (s->generation == 0) {
        for (long i = 0; i < sh->live; i++)
            fill(&s->blocks[i], &rng, sh);
        ops += (uint64_t)sh->live;
    }
    long n = s->todo < sh->lifetime ? s->todo : sh->lifetime;
    for (long i = 0; i < n; i++) {
        struct block *b = &s->blocks[bench_below(&rng, (uint32_t)sh->live)];
        sum += bench_check(b->p, b->size, b->tag);
        free(b->p);
        fill(b, &rng, sh);
    }
    ops += (uint64_t)n;
    s->todo -= n;
    s->ops += ops;
    s->checksum += sum;

    if (s->todo > 0) {
        /* Hand the slot to a new thread, which joins this one first.  The
         * slot is the successor's from pthread_create on. */
        pthread_t next;
        s->prev = pthread_self();
        s->has_prev = 1;
        s->generation++;
        int rc = pthread_create(&next, NULL, generation, s);
        if (rc != 0)
            bench_die("pthread_create: %s", strerror(rc));
        return NULL;
    }
    /* The last generation frees everything and tells main. */
    for (long i = 0; i < sh->live; i++) {
        struct block *b = &s->blocks[i];
        s->checksum += bench_check(b->p, b->size, b->tag);
        free(b->p);
        b->p = NULL;
    }
    pthread_mutex_lock(&sh->lock);
    s->last = pthread_self();
    sh->done++;
    pthread_cond_signal(&sh->all_done);
    pthread_mutex_unlock(&sh->lock);
    return NULL;
}

int main(int argc, char **argv)
{
    long threads = 2, ops = 1000000, lifetime = 2000, live = 1000, min_size = 8,
         max_size = 1000, seed = 1;
    const struct bench_opt opts[] = {
        {"threads", &threads, 1, 1024, "worker slots (threads alive at a time)"},
        {"ops", &ops, 1, 1L << 40, "block replacements in all, over every slot"},
        {"lifetime", &lifetime, 1, 1L << 40, "replacements per thread before it is replaced"},
        {"live", &live, 1, 1L << 24, "live blocks per slot"},
        {"min-size", &min_size, 1, 1L << 30, "smallest block size"},
        {"max-size", &max_size, 1, 1L << 30, "largest block size"},
        {"seed", &seed, 0, INT64_MAX, "PRNG seed"},
    };
    bench_parse(argc, argv, "turnover", "Server churn with thread turnover: each worker "
                "thread is replaced by a new one after --lifetime operations, and the new "
                "one frees what the old ones allocated.", opts, sizeof opts / sizeof opts[0]);
    if (min_size > max_size || max_size - min_size >= (1L << 32))
        bench_die("need min-size <= max-size (and a range below 4 GiB)");

    struct shared sh = {
        .live = live, .lifetime = lifetime, .min_size = min_size, .max_size = max_size,
        .seed = (uint64_t)seed,
    };
    pthread_mutex_init(&sh.lock, NULL);
    pthread_cond_init(&sh.all_done, NULL);
    struct slot *slots = (struct slot *)calloc((size_t)threads, sizeof *slots);
    if (slots == NULL)
        bench_die("calloc failed");
    for (long t = 0; t < threads; t++) {
        slots[t].sh = &sh;
        slots[t].id = t;
        slots[t].blocks = (struct block *)bench_xmalloc(sizeof(struct block) * (size_t)live);
        slots[t].todo = ops / threads + (t < ops % threads);
    }

    double t0 = bench_now();
    for (long t = 0; t < threads; t++) {
        pthread_t tid;
        int rc = pthread_create(&tid, NULL, generation, &slots[t]);
        if (rc != 0)
            bench_die("pthread_create: %s", strerror(rc));
    }
    pthread_mutex_lock(&sh.lock);
    while (sh.done < threads)
        pthread_cond_wait(&sh.all_done, &sh.lock);
    pthread_mutex_unlock(&sh.lock);
    for (long t = 0; t < threads; t++)
        pthread_join(slots[t].last, NULL);
    double t1 = bench_now();

    uint64_t total = 0, sum = 0, births = 0;
    for (long t = 0; t < threads; t++) {
        total += slots[t].ops;
        sum += slots[t].checksum;
        births += slots[t].generation + 1;
        if (slots[t].todo != 0)
            bench_die("slot %ld has %ld operations left", t, slots[t].todo);
    }
    if (total != (uint64_t)ops + (uint64_t)threads * (uint64_t)live)
        bench_die("operation count %" PRIu64 " is off", total);
    for (long t = 0; t < threads; t++)
        free(slots[t].blocks);
    free(slots);
    pthread_cond_destroy(&sh.all_done);
    pthread_mutex_destroy(&sh.lock);
    char extra[64];
    snprintf(extra, sizeof extra, "threads_started=%" PRIu64, births);
    bench_result_extra("turnover", threads, total, t1 - t0, sum, extra);
    return 0;
}
