/*
 * test_observe.c: the page map agrees with the statistics after threads
 * allocate and free at random; a pressure threshold wakes the watcher
 * thread, whose handler is called once per crossing (and once per fall
 * with GM_PRESSURE_FALLING); the sample hook sees every sample and the
 * frees of those it kept.
 */
#include <errno.h>
#include <pthread.h>

#include "gmtest.h"

#define MiB ((uint64_t)1 << 20)

struct totals { uint64_t in_use, free, released, mapped; };

static struct totals page_totals(void) {
    struct totals t = {0, 0, 0, 0};
    uintptr_t base;
    const uint8_t *pages;
    for (int i = 0; (pages = gm_page_map(i, &base)) != NULL; i++)
        for (int j = 0; j < GM_ARENA_PAGES; j++) {
            uint8_t v = __atomic_load_n(&pages[j], __ATOMIC_RELAXED);
            if (v == GM_PAGE_RESERVED)
                continue;
            t.mapped++;
            if (v == GM_PAGE_FREE)
                t.free++;
            else if (v == GM_PAGE_RELEASED || v == GM_PAGE_FAULTED)
                t.released++;
            else
                t.in_use++;
        }
    return t;
}

static void check_agrees(void) {
    struct gm_stats st = {.size = sizeof st};
    gm_read_stats(&st);
    struct totals t = page_totals();
    CHECK_EQ(t.in_use * GM_PAGE_SIZE, st.heap_inuse);
    CHECK_EQ(t.released * GM_PAGE_SIZE, st.heap_released);
    CHECK_EQ(t.free * GM_PAGE_SIZE, st.heap_idle - st.heap_released);
    CHECK_EQ(t.mapped * GM_PAGE_SIZE, st.heap_sys);
}

static void *churn(void *arg) {
    uint64_t x = (uint64_t)(uintptr_t)arg * 0x9E3779B97F4A7C15u | 1;
    enum { N = 2000 };
    static const size_t sizes[] = {16, 100, 1000, 8000, 40000, 300000};
    void **p = calloc(N, sizeof *p);
    for (int round = 0; round < 20; round++)
        for (int i = 0; i < N; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            gm_free(p[i]);
            p[i] = (x & 3) ? gm_malloc(sizes[(x >> 8) % 6]) : NULL;
        }
    for (int i = 0; i < N; i += 2) {
        gm_free(p[i]);
        p[i] = NULL;
    }
    gm_thread_flush();
    return p;
}

TEST(page_map_agrees_with_stats) {
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        pthread_create(&t[i], NULL, churn, (void *)(uintptr_t)(i + 1));
    void *kept[3];
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], &kept[i]);
    gm_thread_flush();
    check_agrees();
    for (int i = 0; i < 3; i++) {
        void **p = kept[i];
        for (int j = 0; j < 2000; j++)
            gm_free(p[j]);
        free(p);
    }
    gm_release();
    check_agrees();
}

static pthread_mutex_t ev_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ev_cond = PTHREAD_COND_INITIALIZER;
static int ups, downs, id_seen = -1;

static void on_event(void *ctx, const struct gm_pressure_event *ev) {
    (void)ctx;
    pthread_mutex_lock(&ev_lock);
    if (ev->rising)
        ups += (int)ev->count;
    else
        downs += (int)ev->count;
    id_seen = ev->id;
    pthread_cond_broadcast(&ev_cond);
    pthread_mutex_unlock(&ev_lock);
}

static void wait_for(int *counter, int want) {
    pthread_mutex_lock(&ev_lock);
    while (*counter < want)
        pthread_cond_wait(&ev_cond, &ev_lock);
    pthread_mutex_unlock(&ev_lock);
}

TEST(pressure_threshold_fires_per_crossing) {
    struct gm_stats st = {.size = sizeof st};
    gm_read_stats(&st);
    CHECK_EQ(gm_set_pressure_handler(on_event, NULL), 0);
    int id = gm_pressure_add(GM_PRESSURE_BYTES, st.heap_inuse + 16 * MiB, 0, GM_PRESSURE_FALLING);
    CHECK(id >= 0);
    for (int round = 1; round <= 3; round++) {
        void *big = gm_malloc(20 * MiB);
        wait_for(&ups, round);
        gm_free(big);
        wait_for(&downs, round);
    }
    pthread_mutex_lock(&ev_lock);
    CHECK_EQ(ups, 3);
    CHECK_EQ(downs, 3);
    CHECK_EQ(id_seen, id);
    pthread_mutex_unlock(&ev_lock);
    CHECK_EQ(gm_pressure_remove(id), 0);
    CHECK_EQ(gm_pressure_remove(id), EINVAL);
    CHECK(gm_pressure_add(GM_PRESSURE_HARD_LIMIT, 0, 0, 0) == -EINVAL);
}

static int hook_allocs, hook_frees;
static int hook(void *ctx, int event, const struct gm_sample *s) {
    (void)ctx;
    if (event == GM_SAMPLE_ALLOC) {
        hook_allocs++;
        CHECK(s->est_bytes >= s->bytes && s->bytes >= s->size);
        gm_free(gm_malloc(64)); /* not sampled, nothing reported */
        return hook_allocs % 2;
    }
    hook_frees++;
    return 0;
}

TEST(sample_hook_sees_samples_and_kept_frees) {
    gm_set_sample_hook(hook, NULL);
    gm_option_set("profile_rate", 1);
    void *p[10];
    for (int i = 0; i < 10; i++)
        p[i] = gm_malloc(100);
    for (int i = 0; i < 10; i++)
        gm_free(p[i]);
    gm_option_set("profile_rate", 0);
    gm_set_sample_hook(NULL, NULL);
    CHECK_EQ(hook_allocs, 10);
    CHECK_EQ(hook_frees, 5);
}

int main(void) {
    RUN(page_map_agrees_with_stats);
    RUN(pressure_threshold_fires_per_crossing);
    RUN(sample_hook_sees_samples_and_kept_frees);
    return gmtest_summary();
}
