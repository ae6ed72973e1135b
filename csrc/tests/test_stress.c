/*
 * test_stress.c: a deterministic multi-threaded stress test.  Do not use
 * it as a benchmark.
 *
 * THREADS threads each do OPS malloc/free operations of mixed sizes (mostly
 * small, some up to 32 KiB, a few large).  Every block is filled with a
 * cookie pattern derived from its address and size and checked when it is
 * freed.  A third of the frees happen on another thread: the block is sent
 * to that thread's inbox, and the receiver checks and frees it.  After each
 * phase the heap invariant checker runs; at the end every object must be
 * accounted for: heap_objects == 0, mallocs == frees.
 *
 *   test_stress [ops-per-thread]   (default 1000000; GM_STRESS_OPS too)
 */
#include <pthread.h>
#include <stdatomic.h>

#include "gmtest.h"
#include "gomalloc.h"

#define THREADS 8
#define SLOTS 2048
#define BATCH 64

struct block {
    unsigned char *p;
    size_t size;
};

struct inbox {
    pthread_mutex_t lock;
    struct block *items;
    size_t n, cap;
};

static struct inbox inboxes[THREADS];
static long ops_per_thread = 1000000;
static atomic_long cookie_errors, transferred;
static atomic_int finished;

static uint64_t rng_next(uint64_t *s) { /* xorshift64* */
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static size_t random_size(uint64_t *rng) {
    uint64_t r = rng_next(rng);
    switch (r % 100) {
    case 0: return 32768 + (size_t)(r >> 8) % (256 << 10);       /* large */
    case 1: case 2: case 3: return 1024 + (size_t)(r >> 8) % 31744; /* medium */
    default: return (size_t)(r >> 8) % 1024;                      /* small, 0 included */
    }
}

static unsigned char cookie(const unsigned char *p, size_t size, size_t i) {
    return (unsigned char)(((uintptr_t)p >> 4) ^ size ^ (i * 31));
}

static void fill(unsigned char *p, size_t size) {
    size_t n = size < 64 ? size : 64;
    for (size_t i = 0; i < n; i++)
        p[i] = cookie(p, size, i);
    if (size > 64)
        p[size - 1] = cookie(p, size, size - 1);
}

static void check_and_free(struct block b) {
    size_t n = b.size < 64 ? b.size : 64;
    for (size_t i = 0; i < n; i++)
        if (b.p[i] != cookie(b.p, b.size, i)) {
            atomic_fetch_add(&cookie_errors, 1);
            break;
        }
    if (b.size > 64 && b.p[b.size - 1] != cookie(b.p, b.size, b.size - 1))
        atomic_fetch_add(&cookie_errors, 1);
    if (gm_usable_size(b.p) < b.size)
        atomic_fetch_add(&cookie_errors, 1);
    gm_free(b.p);
}

static void send(int to, struct block *out, size_t n) {
    struct inbox *in = &inboxes[to];
    pthread_mutex_lock(&in->lock);
    if (in->n + n > in->cap) {
        size_t cap = (in->n + n) * 2;
        struct block *items = gm_realloc(in->items, cap * sizeof *items);
        if (items == NULL)
            abort();
        in->items = items;
        in->cap = cap;
    }
    memcpy(in->items + in->n, out, n * sizeof *out);
    in->n += n;
    pthread_mutex_unlock(&in->lock);
    atomic_fetch_add(&transferred, (long)n);
}

static long drain(int me) {
    struct inbox *in = &inboxes[me];
    pthread_mutex_lock(&in->lock);
    size_t n = in->n;
    struct block *items = in->items;
    in->items = NULL;
    in->n = in->cap = 0;
    pthread_mutex_unlock(&in->lock);
    for (size_t i = 0; i < n; i++)
        check_and_free(items[i]);
    gm_free(items);
    return (long)n;
}

static void *worker(void *arg) {
    int me = (int)(intptr_t)arg, to = (me + 1) % THREADS;
    uint64_t rng = 0x9E3779B97F4A7C15ULL * (uint64_t)(me + 1);
    struct block *slots = gm_calloc(SLOTS, sizeof *slots);
    struct block out[BATCH];
    size_t nout = 0;
    long ops = 0;
    while (ops < ops_per_thread) {
        size_t i = (size_t)(rng_next(&rng) % SLOTS);
        if (slots[i].p != NULL) {
            if (rng_next(&rng) % 3 == 0) { /* a third freed by another thread */
                out[nout++] = slots[i];
                if (nout == BATCH) {
                    send(to, out, nout);
                    to = (to + 1) % THREADS == me ? (to + 2) % THREADS : (to + 1) % THREADS;
                    nout = 0;
                }
            } else {
                check_and_free(slots[i]);
            }
            ops++;
        }
        size_t size = random_size(&rng);
        unsigned char *p = gm_malloc(size);
        if (p == NULL)
            abort();
        fill(p, size);
        slots[i] = (struct block){p, size};
        ops++;
        if (ops % 512 == 0)
            ops += drain(me);
    }
    if (nout != 0)
        send(to, out, nout);
    for (size_t i = 0; i < SLOTS; i++)
        if (slots[i].p != NULL)
            check_and_free(slots[i]);
    gm_free(slots);
    /* Objects may still arrive from threads that are not done: drain until
     * every thread has finished sending. */
    atomic_fetch_add(&finished, 1);
    while (atomic_load(&finished) < THREADS)
        drain(me);
    drain(me);
    return NULL;
}

TEST(cross_thread_stress) {
    struct gm_stats before = {.size = sizeof before}, after = {.size = sizeof after};
    gm_thread_flush();
    gm_read_stats(&before);
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_mutex_init(&inboxes[i].lock, NULL);
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i) == 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < THREADS; i++)
        drain(i); /* anything sent after its owner's last drain */
    gm_thread_flush();
    CHECK_EQ(atomic_load(&cookie_errors), 0);
    CHECK(atomic_load(&transferred) > ops_per_thread * THREADS / 20);
    CHECK_EQ(gm_check_heap(), 0);
    gm_read_stats(&after);
    CHECK_EQ(after.heap_objects, before.heap_objects);
    CHECK_EQ(after.mallocs - before.mallocs, after.frees - before.frees);
    CHECK(after.mallocs - before.mallocs >= (uint64_t)ops_per_thread * THREADS / 4);
    CHECK_EQ(after.bad_frees, 0);
    /* Everything freed: the spans went back, only the main thread's caches
     * (flushed above) remain. */
    CHECK_EQ(after.heap_alloc, before.heap_alloc);
    /* Every free page goes back to the OS (the background scavenger may
     * have done part of it already). */
    gm_release();
    struct gm_stats released = {.size = sizeof released};
    gm_read_stats(&released);
    CHECK_EQ(released.heap_released, released.heap_idle);
    CHECK_EQ(gm_check_heap(), 0);
}

int main(int argc, char **argv) {
    const char *env = getenv("GM_STRESS_OPS");
    if (argc > 1)
        ops_per_thread = atol(argv[1]);
    else if (env != NULL)
        ops_per_thread = atol(env);
    RUN(cross_thread_stress);
    return gmtest_summary();
}
