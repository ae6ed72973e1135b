/*
 * xmalloc.c: producer/consumer cross-thread frees (after xmalloc-test).
 *
 * `threads` producer threads allocate blocks of random sizes, write a cookie
 * into each and push them in batches onto a bounded shared queue (a ring
 * protected by a mutex and two condition variables); `threads` consumer
 * threads pop batches, verify every block and free it.  Every block is thus
 * freed by a thread that did not allocate it, and so is the batch record
 * itself (also malloc'ed by the producer).
 *
 * ops = number of blocks allocated by producers (all freed by consumers).
 * The checksum is a sum over blocks, so it does not depend on which consumer
 * got which batch.
 */
#include "bench_common.h"

struct item {
    void *p;
    uint32_t size;
    uint64_t tag;
};

struct batch {
    long n;
    struct item items[]; /* n items */
};

struct queue {
    pthread_mutex_t lock;
    pthread_cond_t not_empty, not_full;
    struct batch **ring;
    long cap, head, count;
    long producers_left;
};

struct shared {
    struct queue q;
    long iters, batch, min_size, max_size;
    uint64_t seed;
};

struct worker {
    struct shared *sh;
    long id;
    uint64_t ops, checksum;
    char pad[BENCH_PAD];
};

static void push(struct queue *q, struct batch *b)
{
    pthread_mutex_lock(&q->lock);
    while (q->count == q->cap)
        pthread_cond_wait(&q->not_full, &q->lock);
    q->ring[(q->head + q->count) % q->cap] = b;
    q->count++;
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->lock);
}

/* Returns NULL once the queue is empty and every producer has finished. */
static struct batch *pop(struct queue *q)
{
    pthread_mutex_lock(&q->lock);
    while (q->count == 0 && q->producers_left > 0)
        pthread_cond_wait(&q->not_empty, &q->lock);
    struct batch *b = NULL;
    if (q->count > 0) {
        b = q->ring[q->head];
        q->head = (q->head + 1) % q->cap;
        q->count--;
        pthread_cond_signal(&q->not_full);
    }
    pthread_mutex_unlock(&q->lock);
    return b;
}

static void *producer(void *arg)
{
    struct worker *w = (struct worker *)arg;
    struct shared *sh = w->sh;
    bench_rng rng;
    bench_rng_seed(&rng, sh->seed, (uint64_t)w->id);
    long left = sh->iters;
    while (left > 0) {
        long n = left < sh->batch ? left : sh->batch;
        struct batch *b =
            (struct batch *)bench_xmalloc(sizeof(struct batch) + (size_t)n * sizeof(struct item));
        b->n = n;
        for (long i = 0; i < n; i++) {
            size_t size = bench_range(&rng, (size_t)sh->min_size, (size_t)sh->max_size);
            uint64_t tag = bench_rand(&rng);
            void *p = bench_xmalloc(size);
            bench_fill(p, size, tag);
            b->items[i].p = p;
            b->items[i].size = (uint32_t)size;
            b->items[i].tag = tag;
        }
        push(&sh->q, b);
        w->ops += (uint64_t)n;
        left -= n;
    }
    pthread_mutex_lock(&sh->q.lock);
    if (--sh->q.producers_left == 0)
        pthread_cond_broadcast(&sh->q.not_empty); /* wake consumers to exit */
    pthread_mutex_unlock(&sh->q.lock);
    return NULL;
}

static void *consumer(void *arg)
{
    struct worker *w = (struct worker *)arg;
    struct batch *b;
    while ((b = pop(&w->sh->q)) != NULL) {
        for (long i = 0; i < b->n; i++) {
            w->checksum += bench_check(b->items[i].p, b->items[i].size, b->items[i].tag);
            free(b->items[i].p);
        }
        w->ops += (uint64_t)b->n;
        free(b);
    }
    return NULL;
}

/* Thread entry that dispatches on role: ids [0, T) produce, [T, 2T) consume. */
static long nproducers;
static void *role(void *arg)
{
    struct worker *w = (struct worker *)arg;
    return w->id < nproducers ? producer(arg) : consumer(arg);
}

int main(int argc, char **argv)
{
    long threads = 2, iters = 1000000, batch = 64, queue = 64, min_size = 8, max_size = 512,
         seed = 1;
    const struct bench_opt opts[] = {
        {"threads", &threads, 1, 512, "producer threads (and as many consumer threads)"},
        {"iters", &iters, 1, 1L << 40, "blocks allocated per producer"},
        {"batch", &batch, 1, 1L << 20, "blocks per queue entry"},
        {"queue", &queue, 1, 1L << 20, "queue capacity in batches"},
        {"min-size", &min_size, 1, 1L << 30, "smallest block size"},
        {"max-size", &max_size, 1, 1L << 30, "largest block size"},
        {"seed", &seed, 0, INT64_MAX, "PRNG seed"},
    };
    bench_parse(argc, argv, "xmalloc", "Producer/consumer: producers malloc, consumers free, "
                "through a bounded queue.", opts, sizeof opts / sizeof opts[0]);
    if (min_size > max_size || max_size - min_size >= (1L << 32))
        bench_die("need min-size <= max-size (and a range below 4 GiB)");

    struct shared sh = {
        .iters = iters, .batch = batch, .min_size = min_size, .max_size = max_size,
        .seed = (uint64_t)seed,
    };
    pthread_mutex_init(&sh.q.lock, NULL);
    pthread_cond_init(&sh.q.not_empty, NULL);
    pthread_cond_init(&sh.q.not_full, NULL);
    sh.q.cap = queue;
    sh.q.ring = (struct batch **)bench_xmalloc(sizeof(struct batch *) * (size_t)queue);
    sh.q.producers_left = threads;
    nproducers = threads;

    long total = 2 * threads;
    struct worker *ws = (struct worker *)calloc((size_t)total, sizeof *ws);
    if (ws == NULL)
        bench_die("calloc failed");
    for (long t = 0; t < total; t++) {
        ws[t].sh = &sh;
        ws[t].id = t;
    }

    double t0 = bench_now();
    bench_run_threads(total, role, ws, sizeof *ws);
    double t1 = bench_now();

    uint64_t produced = 0, consumed = 0, sum = 0;
    for (long t = 0; t < total; t++) {
        if (t < threads)
            produced += ws[t].ops;
        else
            consumed += ws[t].ops;
        sum += ws[t].checksum;
    }
    if (produced != (uint64_t)threads * (uint64_t)iters || consumed != produced)
        bench_die("produced %" PRIu64 " blocks but consumed %" PRIu64, produced, consumed);
    free(sh.q.ring);
    free(ws);
    bench_result("xmalloc", threads, produced, t1 - t0, sum);
    return 0;
}
