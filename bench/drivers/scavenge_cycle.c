/*
 * scavenge_cycle.c: live memory that swings between a high and a low
 * watermark, the workload that shows what returning memory to the OS costs
 * and what it buys.
 *
 * Each cycle, every thread allocates blocks until its share of the live set
 * reaches high/threads bytes, writing a cookie into each block and one byte
 * into every 4 KiB page of it (so RSS really rises), then frees blocks
 * (verifying their cookies) until its share is down to low/threads.  Half
 * of the bytes go to small blocks (16 B - 32 KiB, skewed small: 70% of them
 * 16-272 B) and half to large ones (32 KiB - 4 MiB, uniform): whichever kind
 * holds fewer live bytes gets the next block.  Which blocks are freed:
 * with --random-pct 0, always the newest (the live set at a low point is the
 * oldest blocks, and the spans of the others empty completely: the best case
 * for giving memory back); with 100 (the default), a block picked at
 * random, which leaves many small spans holding a few live objects, as real
 * programs do, so that part of the freed memory cannot be given back by any
 * allocator that does not move objects.
 *
 * At the start and at each high and low point all threads meet at a
 * barrier and the RSS is read from /proc/self/statm.  At a low point it is
 * read twice: at once (rss0) and after sleeping --settle-ms (rss), which
 * gives a background scavenger the time it needs; the sleeps are not part of
 * the timed region.  Lines on stdout, before the RESULT line:
 *
 *   SAMPLE cycle=<c> phase=<start|high|low> live=<bytes> rss=<bytes> [rss0=<bytes>]
 *
 * live is the sum of the sizes asked for.  A scavenger that works keeps rss
 * at a low point near the start RSS + live + its goal; an allocator that
 * keeps what it once had stays near the high point.  Where the allocator
 * does release, the next cycle pays for it in page faults and zeroing: the
 * throughput difference is the cost of scavenging.
 *
 * ops = blocks allocated (each is freed: at a low point or at the end).
 */
#include "bench_common.h"

#include <fcntl.h>
#include <stdbool.h>
#include <unistd.h>

#define SMALL_MAX 32768
#define TOUCH_STRIDE 4096

struct slot {
    void *p;
    size_t size;
    uint64_t tag;
};

struct worker {
    long id;
    uint64_t seed;
    size_t high, low;     /* this thread's share of the watermarks */
    size_t min_size, max_size;
    struct slot *slots;
    size_t nslots, cap;
    size_t live_small, live_large;
    uint64_t ops, checksum;
    char pad[BENCH_PAD];
};

static long cycles = 5, settle_ms = 1000, random_pct = 100;
static pthread_barrier_t barrier;
static struct worker *workers;
static long nthreads;
static double settle_total; /* seconds slept at low points (thread 0 only) */

/* Resident bytes of this process: the second field of /proc/self/statm.
 * read(2), not stdio, so that sampling allocates nothing. */
static uint64_t rss_bytes(void)
{
    char buf[128];
    int fd = open("/proc/self/statm", O_RDONLY);
    if (fd < 0)
        bench_die("cannot open /proc/self/statm: %s", strerror(errno));
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        bench_die("cannot read /proc/self/statm");
    buf[n] = 0;
    unsigned long long size, resident;
    if (sscanf(buf, "%llu %llu", &size, &resident) != 2)
        bench_die("cannot parse /proc/self/statm: %s", buf);
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

static uint64_t live_total(void)
{
    uint64_t sum = 0;
    for (long t = 0; t < nthreads; t++)
        sum += workers[t].live_small + workers[t].live_large;
    return sum;
}

static void sample(long cycle, const char *phase)
{
    uint64_t rss0 = rss_bytes();
    if (strcmp(phase, "low") != 0) {
        printf("SAMPLE cycle=%ld phase=%s live=%" PRIu64 " rss=%" PRIu64 "\n", cycle, phase,
               live_total(), rss0);
        return;
    }
    double t0 = bench_now();
    if (settle_ms > 0) {
        struct timespec ts = {settle_ms / 1000, (settle_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }
    uint64_t rss = rss_bytes();
    settle_total += bench_now() - t0;
    printf("SAMPLE cycle=%ld phase=low live=%" PRIu64 " rss=%" PRIu64 " rss0=%" PRIu64 "\n", cycle,
           live_total(), rss, rss0);
}

/* All threads meet; thread 0 samples while the others wait at a second
 * barrier, so that nothing allocates or frees during the sample. */
static void meet(struct worker *w, long cycle, const char *phase)
{
    pthread_barrier_wait(&barrier);
    if (w->id == 0)
        sample(cycle, phase);
    pthread_barrier_wait(&barrier);
}

static size_t pick_small(bench_rng *r, size_t lo, size_t hi)
{
    size_t span = hi - lo;
    uint32_t c = bench_below(r, 100);
    if (c < 70)
        return bench_range(r, lo, lo + span / 128);
    if (c < 90)
        return bench_range(r, lo + span / 128, lo + span / 16);
    return bench_range(r, lo + span / 16, hi);
}

/* Cookie at both ends and one byte in every 4 KiB page in between. */
static void touch(void *p, size_t size, uint64_t tag)
{
    unsigned char *b = (unsigned char *)p;
    bench_fill(p, size, tag);
    for (size_t off = TOUCH_STRIDE; off + 8 < size; off += TOUCH_STRIDE)
        b[off] = (unsigned char)(tag + off / TOUCH_STRIDE);
}

static uint64_t verify(const void *p, size_t size, uint64_t tag)
{
    const unsigned char *b = (const unsigned char *)p;
    uint64_t sum = bench_check(p, size, tag);
    for (size_t off = TOUCH_STRIDE; off + 8 < size; off += TOUCH_STRIDE) {
        if (b[off] != (unsigned char)(tag + off / TOUCH_STRIDE))
            bench_die("corrupted block %p (size %zu) at offset %zu", p, size, off);
        sum += b[off];
    }
    return sum;
}

static void grow(struct worker *w, bench_rng *rng)
{
    while (w->live_small + w->live_large < w->high) {
        bool large = w->live_large < w->live_small;
        size_t size = large ? bench_range(rng, SMALL_MAX + 1, w->max_size)
                            : pick_small(rng, w->min_size, SMALL_MAX);
        if (w->nslots == w->cap) {
            size_t cap = w->cap ? w->cap * 2 : 1024;
            struct slot *s = (struct slot *)realloc(w->slots, cap * sizeof *s);
            if (s == NULL)
                bench_die("realloc of the slot array (%zu slots) failed", cap);
            w->slots = s;
            w->cap = cap;
        }
        struct slot *s = &w->slots[w->nslots++];
        s->size = size;
        s->tag = bench_rand(rng);
        s->p = bench_xmalloc(size);
        touch(s->p, size, s->tag);
        if (large)
            w->live_large += size;
        else
            w->live_small += size;
        w->ops++;
    }
}

static void release_slot(struct worker *w, size_t i)
{
    struct slot *s = &w->slots[i];
    w->checksum += verify(s->p, s->size, s->tag);
    free(s->p);
    if (s->size > SMALL_MAX)
        w->live_large -= s->size;
    else
        w->live_small -= s->size;
    *s = w->slots[--w->nslots];
}

/* Free down to the low watermark: a block picked at random with probability
 * random-pct %, else the newest one. */
static void shrink(struct worker *w, bench_rng *rng)
{
    while (w->nslots > 0 && w->live_small + w->live_large > w->low) {
        bool random = bench_below(rng, 100) < (uint32_t)random_pct;
        release_slot(w, random ? bench_below(rng, (uint32_t)w->nslots) : w->nslots - 1);
    }
}

static void *run(void *arg)
{
    struct worker *w = (struct worker *)arg;
    bench_rng rng;
    bench_rng_seed(&rng, w->seed, (uint64_t)w->id);
    for (long c = 1; c <= cycles; c++) {
        grow(w, &rng);
        meet(w, c, "high");
        shrink(w, &rng);
        meet(w, c, "low");
    }
    while (w->nslots > 0)
        release_slot(w, w->nslots - 1);
    free(w->slots);
    w->slots = NULL;
    return NULL;
}

int main(int argc, char **argv)
{
    long threads = 1, high = 1L << 30, low = 100L << 20, min_size = 16, max_size = 4L << 20,
         seed = 1;
    const struct bench_opt opts[] = {
        {"threads", &threads, 1, 256, "worker threads (each takes its share of the watermarks)"},
        {"high", &high, 1L << 20, 1L << 40, "live bytes at the high point of a cycle"},
        {"low", &low, 0, 1L << 40, "live bytes at the low point of a cycle"},
        {"cycles", &cycles, 1, 1L << 20, "number of high-low cycles"},
        {"settle-ms", &settle_ms, 0, 600000, "sleep at each low point before reading RSS"},
        {"random-pct", &random_pct, 0, 100, "percentage of frees that pick a random live block, "
                                            "not the newest"},
        {"min-size", &min_size, 1, SMALL_MAX, "smallest block size"},
        {"max-size", &max_size, SMALL_MAX + 1, 1L << 30, "largest block size"},
        {"seed", &seed, 0, INT64_MAX, "PRNG seed"},
    };
    bench_parse(argc, argv, "scavenge_cycle",
                "Live memory cycling between a high and a low watermark; RSS sampled at each.",
                opts, sizeof opts / sizeof opts[0]);
    if (low >= high)
        bench_die("need low < high");
    nthreads = threads;

    workers = (struct worker *)calloc((size_t)threads, sizeof *workers);
    if (workers == NULL)
        bench_die("calloc failed");
    for (long t = 0; t < threads; t++) {
        workers[t].id = t;
        workers[t].seed = (uint64_t)seed;
        workers[t].high = (size_t)(high / threads);
        workers[t].low = (size_t)(low / threads);
        workers[t].min_size = (size_t)min_size;
        workers[t].max_size = (size_t)max_size;
    }
    int rc = pthread_barrier_init(&barrier, NULL, (unsigned)threads);
    if (rc != 0)
        bench_die("pthread_barrier_init: %s", strerror(rc));

    sample(0, "start");
    fflush(stdout);
    double t0 = bench_now();
    bench_run_threads(threads, run, workers, sizeof *workers);
    double t1 = bench_now();
    pthread_barrier_destroy(&barrier);

    uint64_t ops = 0, sum = 0;
    for (long t = 0; t < threads; t++) {
        ops += workers[t].ops;
        sum += workers[t].checksum;
    }
    free(workers);
    bench_result("scavenge_cycle", threads, ops, t1 - t0 - settle_total, sum);
    return 0;
}
