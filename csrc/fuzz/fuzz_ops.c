/*
 * fuzz_ops.c: a libFuzzer target over sequences of allocator operations.
 *
 * Build and run: tests/fuzz.sh (clang -fsanitize=fuzzer,address,undefined,
 * the core's csrc/ sources except preload.c compiled in, with GM_DEBUG).
 *
 * The input is read as a sequence of operations, each a tag byte followed
 * by the bytes it needs (missing bytes read as 0, so every input is valid):
 *
 *   malloc, calloc, realloc, aligned_alloc / posix_memalign, free (of a
 *   live object chosen by the input, so in any order), of sizes tiny,
 *   small, medium, large and huge-ish (up to 8 MiB; live bytes bounded);
 *   each run on one of three worker threads, so on that thread's cache:
 *   the harness hands a worker one operation at a time and waits for it,
 *   which keeps every run deterministic;
 *   gm_thread_flush on a worker; a worker exits and a new one starts (its
 *   cache goes back; a new cache reads tcache_bytes); gm_release;
 *   option flips: tiny, profile_rate, hard_limit (small limits),
 *   fault_on_free, tcache_bytes;
 *   OS faults: every Nth mmap/madvise of some kinds fails from then on
 *   (gm_debug_fail_os_calls), until the end of the input;
 *   heaps (heap.c): up to two program heaps, some with a limit or
 *   fault_on_destroy; allocations into them (gm_heap_malloc, or any
 *   allocation on a worker whose default heap one is: a scope); destroy
 *   (their objects go at once; EBUSY while a worker is in the heap's scope
 *   or, once it was one, while it has live objects), delete (the objects
 *   become the default heap's), a free through the wrong heap's call
 *   (refused, nothing changed), their statistics and gm_heap_visit against
 *   the objects held;
 *   bad calls, with abort_on_error = 0: free and realloc of interior
 *   pointers, of freed objects (double frees), of foreign pointers;
 *   aligned_alloc with a bad alignment; calloc that overflows.  Each must
 *   return its error and change nothing (the figures, and the objects'
 *   contents).
 *
 * Checked throughout: every allocation is NULL with errno ENOMEM only when
 * allowed (a hard limit or OS faults in force), else usable: gm_usable_size
 * >= the size asked, aligned as asked, calloc memory zero, and every byte
 * written with a pattern derived from the object's address and id (objects
 * over 256 KiB: their first and last 64 KiB and a word per 4 KiB between),
 * which is verified before every free and realloc (realloc keeps the
 * prefix); gm_check_heap() == 0 every 32 operations.  At the end of each
 * input everything is freed, every cache flushed and the memory released,
 * and then: gm_check_heap() == 0, no live object, no byte in use, nothing
 * cached, every free page released (heap_idle == heap_released), and the
 * options back to their defaults, so inputs are independent.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gm_internal.h" /* for the diagnosis of a failure only */

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)
#define NWORKERS 3
#define MAX_OBJS 512
#define MAX_LIVE_BYTES (48 * MIB)
#define FULL_FILL (256 * KIB)

/* The last operations, printed when a check fails (and each one as it
 * happens with FUZZ_OPS_TRACE=1 in the environment): a failure that needs
 * the state earlier inputs left can be understood without replaying them. */
static bool tracing;
#define NTRACE 48
static char trace_ring[NTRACE][112];
static unsigned trace_n;
#define TRACE(...)                                                                            \
    do {                                                                                      \
        char *t_ = trace_ring[trace_n++ % NTRACE];                                            \
        snprintf(t_, sizeof trace_ring[0], __VA_ARGS__);                                      \
        if (tracing)                                                                          \
            fputs(t_, stderr);                                                                \
    } while (0)

static void fail(const char *what, const void *p, size_t n) {
    int err = errno;
    fprintf(stderr, "fuzz_ops: the last operations, oldest first:\n");
    for (unsigned i = trace_n > NTRACE ? trace_n - NTRACE : 0; i < trace_n; i++)
        fprintf(stderr, "  %s", trace_ring[i % NTRACE]);
    fprintf(stderr, "fuzz_ops: %s (pointer %p, size %zu)\n", what, p, n);
    struct gm_stats st = {.size = sizeof st};
    gm_read_stats(&st);
    long long hard = -1, tiny = -1, prof = -1, fof = -1;
    gm_option_get("hard_limit", &hard);
    gm_option_get("tiny", &tiny);
    gm_option_get("profile_rate", &prof);
    gm_option_get("fault_on_free", &fof);
    int maps = 0;
    FILE *f = fopen("/proc/self/maps", "r");
    if (f != NULL) {
        for (int ch; (ch = fgetc(f)) != EOF;)
            maps += ch == '\n';
        fclose(f);
    }
    fprintf(stderr,
            "  errno %d; options: hard_limit %lld tiny %lld profile_rate %lld fault_on_free %lld; "
            "OS calls failed on purpose %lu; mappings %d\n"
            "  heap_reserved %llu heap_sys %llu heap_inuse %llu heap_released %llu arenas %llu threads %llu "
            "objects %llu mcache_sys %llu mspan_sys %llu other_sys %llu\n",
            err, hard, tiny, prof, fof, gm_debug_os_failures(), maps, (unsigned long long)st.heap_reserved,
            (unsigned long long)st.heap_sys, (unsigned long long)st.heap_inuse,
            (unsigned long long)st.heap_released, (unsigned long long)st.num_arenas,
            (unsigned long long)st.num_threads, (unsigned long long)st.heap_objects,
            (unsigned long long)st.mcache_sys, (unsigned long long)st.mspan_sys, (unsigned long long)st.other_sys);
    fprintf(stderr, "  arenaHint %#lx curArena %#lx..%#lx\n", (unsigned long)gm_mheap.arenaHint,
            (unsigned long)gm_mheap.curArenaBase, (unsigned long)gm_mheap.curArenaEnd);
    if (p == NULL && n != 0) { /* again, here */
        errno = 0;
        void *again = gm_malloc(n);
        fprintf(stderr, "  malloc(%zu) again on this thread: %p, errno %d\n", n, again, errno);
    }
    gm_mspan *s = p != NULL ? gm_span_of((uintptr_t)p) : NULL;
    if (s != NULL) {
        uintptr_t i = s->sizeclass != 0 ? gm_span_index(s, (uintptr_t)p) : 0;
        fprintf(stderr, "  gm_check %d; span %p: start %#lx npages %lu class %u state %u list %u cachedBy %p "
                        "allocCount %u freeindex %lu; object %lu state %d\n",
                gm_check(p), (void *)s, (unsigned long)s->startAddr, (unsigned long)s->npages, s->sizeclass,
                s->state, s->list, (void *)s->cachedBy, s->allocCount, (unsigned long)s->freeindex,
                (unsigned long)i, s->objstate != NULL ? s->objstate[i] : -1);
    }
    abort();
}
#define REQUIRE(c, what, p, n) \
    do {                      \
        if (!(c))             \
            fail(what, p, n); \
    } while (0)

/* ---- input -------------------------------------------------------------------- */

struct input {
    const uint8_t *p;
    size_t n;
};
static uint8_t get8(struct input *in) {
    if (in->n == 0)
        return 0;
    in->n--;
    return *in->p++;
}
static uint32_t get16(struct input *in) { return get8(in) | (uint32_t)get8(in) << 8; }
static uint32_t get32(struct input *in) { return get16(in) | get16(in) << 16; }

/* A size of some class, chosen by the input. */
static size_t get_size(struct input *in) {
    uint8_t c = get8(in);
    uint32_t r = get32(in);
    switch (c % 16) {
    case 0: case 1: case 2: return r % 9;                      /* tiny, 0 included */
    case 3: case 4: case 5: case 6: return 9 + r % 248;        /* small */
    case 7: case 8: case 9: return 257 + r % (32 * KIB - 256); /* medium, up to the largest class */
    case 10: case 11: case 12: return 32 * KIB + 1 + r % (MIB - 32 * KIB); /* large */
    case 13: return (size_t)1 << (r % 24);                     /* powers of two */
    case 14: { /* around them */
        size_t base = (size_t)1 << (r % 23), d = (r >> 24) % 128;
        return (r >> 31) ? base + d : base > d ? base - d : 0;
    }
    default: return MIB + r % (7 * MIB);                       /* huge-ish */
    }
}

/* ---- objects ------------------------------------------------------------------ */

struct obj {
    unsigned char *p;
    size_t n;     /* bytes asked for (and written) */
    uint32_t id;
    int heap;     /* the heap slot it lives in (heaps[]), -1: the default heap */
};
static struct obj objs[MAX_OBJS];
static int nobjs;
static size_t live_bytes;
static uint32_t next_id;

/* Recently freed addresses, for double frees. */
#define NFREED 32
static void *freed[NFREED];
static unsigned nfreed;

/* The pattern loops are the harness's, not the allocator's: no coverage
 * feedback (its comparison tracing would be most of the time spent). */
#if defined(__clang__)
#define NO_COVERAGE __attribute__((no_sanitize("coverage")))
#else
#define NO_COVERAGE
#endif

NO_COVERAGE static unsigned char pat(const struct obj *o, size_t i) {
    uint64_t x = ((uintptr_t)o->p >> 4) * 0x9E3779B97F4A7C15u + o->id * 0xBF58476D1CE4E5B9u + i / 4096;
    return (unsigned char)((x >> 29) + i * 7);
}

/* Visit the bytes that carry the pattern: all of them up to FULL_FILL,
 * else the first and last 64 KiB and one byte per 4 KiB between. */
#define FOR_PATTERN_BYTES(o, i)                                                                  \
    for (size_t i = 0, end_ = (o)->n; i < end_;                                                  \
         i = (end_ <= FULL_FILL || i < 64 * KIB - 1 || i >= end_ - 64 * KIB - 1) ? i + 1 : \
             (i + 4096 < end_ - 64 * KIB ? i + 4096 : end_ - 64 * KIB))

NO_COVERAGE static void write_pattern(const struct obj *o) {
    FOR_PATTERN_BYTES(o, i)
    o->p[i] = pat(o, i);
}

/* The bytes of o's pattern below `upto` are at q. */
NO_COVERAGE static void check_pattern(const struct obj *o, const unsigned char *q, size_t upto) {
    FOR_PATTERN_BYTES(o, i) {
        if (i >= upto)
            break;
        if (q[i] != pat(o, i))
            fail("object contents changed", o->p, i);
    }
}

NO_COVERAGE static void check_zero(const struct obj *o) {
    FOR_PATTERN_BYTES(o, i)
    if (o->p[i] != 0)
        fail("calloc memory not zero", o->p, i);
}

static bool is_live(const void *p) {
    for (int i = 0; i < nobjs; i++)
        if (objs[i].p == p)
            return true;
    return false;
}

/* ---- workers: each operation runs on a chosen thread's cache ------------------- */

enum call {
    C_MALLOC, C_CALLOC, C_REALLOC, C_ALIGNED, C_MEMALIGN, C_FREE, C_FREE_CHECKED, C_FLUSH, C_EXIT,
    C_HEAP_MALLOC, C_SET_DEFAULT,
};

struct job {
    enum call call;
    void *p;
    size_t a, b;
    void *ret;
    int rc, err;
};

struct worker {
    pthread_t t;
    sem_t go, done;
    struct job *job;
    bool running;
};
static struct worker workers[NWORKERS];

/* libFuzzer's timeout alarm interrupts sem_wait (EINTR): a worker that took
 * that for a post would run a stale job. */
static void sem_wait_posted(sem_t *s) {
    while (sem_wait(s) != 0)
        if (errno != EINTR)
            fail("sem_wait failed", NULL, 0);
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    for (;;) {
        sem_wait_posted(&w->go);
        struct job *j = w->job;
        errno = 0;
        switch (j->call) {
        case C_MALLOC: j->ret = gm_malloc(j->a); break;
        case C_CALLOC: j->ret = gm_calloc(j->a, j->b); break;
        case C_REALLOC: j->ret = gm_realloc(j->p, j->a); break;
        case C_ALIGNED: j->ret = gm_aligned_alloc(j->b, j->a); break;
        case C_MEMALIGN: j->rc = gm_posix_memalign(&j->ret, j->b, j->a); break;
        case C_FREE: gm_free(j->p); break;
        case C_FREE_CHECKED: j->rc = gm_free_checked(j->p); break;
        case C_FLUSH: gm_thread_flush(); break;
        case C_HEAP_MALLOC: j->ret = gm_heap_malloc(j->p, j->a); break;
        case C_SET_DEFAULT: j->ret = gm_heap_set_default(j->p); break;
        case C_EXIT: break;
        }
        j->err = errno;
        enum call c = j->call;
        sem_post(&w->done);
        if (c == C_EXIT)
            return NULL;
    }
}

static void start_worker(int k) {
    struct worker *w = &workers[k];
    sem_init(&w->go, 0, 0);
    sem_init(&w->done, 0, 0);
    if (pthread_create(&w->t, NULL, worker_main, w) != 0)
        fail("pthread_create failed", NULL, 0);
    w->running = true;
}

static void run(int k, struct job *j) {
    struct worker *w = &workers[k % NWORKERS];
    w->job = j;
    sem_post(&w->go);
    sem_wait_posted(&w->done);
}

/* The worker exits (its cache goes back) and a new one takes its place. */
static void restart_worker(int k) {
    struct job j = {.call = C_EXIT};
    run(k, &j);
    pthread_join(workers[k].t, NULL);
    sem_destroy(&workers[k].go);
    sem_destroy(&workers[k].done);
    start_worker(k);
}

/* ---- state of the current input ------------------------------------------------ */

static bool limit_on;   /* a hard limit is set: allocations may fail */
static bool faults_on;  /* OS calls fail: allocations may fail */

static bool may_fail(void) { return limit_on || faults_on; }

/* ---- heaps ------------------------------------------------------------------------ */

#define NHEAPS 2
static gm_heap_t *heaps[NHEAPS]; /* NULL: the slot is empty */
static bool heap_limited[NHEAPS]; /* its allocations may fail (ENOMEM) */
static bool heap_scoped[NHEAPS];  /* it has been a worker's default heap */
static int scope_of[NWORKERS];    /* the heap slot worker k allocates into, -1: the default heap */

static gm_heap_t *handle(int slot) { return slot < 0 ? gm_heap_default() : heaps[slot]; }
static int live_in(int slot) {
    int n = 0;
    for (int i = 0; i < nobjs; i++)
        n += objs[i].heap == slot;
    return n;
}

static void snapshot(struct gm_stats *st) {
    st->size = sizeof *st;
    gm_read_stats(st);
}

/* A new object p of n bytes (asked) came back from a call; NULL is allowed
 * only as ENOMEM while failures may happen. */
static void check_zero(const struct obj *o);

static void adopt(void *p, size_t n, int err, size_t align, bool zero, int heap) {
    if (p == NULL) {
        errno = err;
        REQUIRE(may_fail() || (heap >= 0 && heap_limited[heap]), "allocation failed with no limit or fault in force",
                NULL, n);
        REQUIRE(err == ENOMEM, "failed allocation without ENOMEM", NULL, n);
        return;
    }
    REQUIRE(gm_check(p) == GM_OK, "new object is not live", p, n);
    REQUIRE(gm_usable_size(p) >= n, "usable size below the size asked", p, n);
    REQUIRE(align == 0 || (uintptr_t)p % align == 0, "misaligned", p, align);
    REQUIRE(!is_live(p), "object handed out twice", p, n);
    REQUIRE(gm_heap_of(p) == handle(heap), "object in the wrong heap", p, n);
    struct obj o = {p, n, ++next_id, heap};
    if (zero)
        check_zero(&o);
    write_pattern(&o);
    if (nobjs == MAX_OBJS) { /* no room to track it: it goes at once */
        check_pattern(&o, o.p, o.n);
        gm_free(p);
        return;
    }
    objs[nobjs++] = o;
    live_bytes += n;
}

static void forget(int i) {
    freed[nfreed++ % NFREED] = objs[i].p;
    live_bytes -= objs[i].n;
    objs[i] = objs[--nobjs];
}

/* The allocator refused a bad call: nothing may have changed but bad_frees. */
static void unchanged(const struct gm_stats *a, const char *what) {
    struct gm_stats b;
    snapshot(&b);
    REQUIRE(b.heap_objects == a->heap_objects && b.mallocs == a->mallocs && b.frees == a->frees &&
                b.heap_inuse == a->heap_inuse && b.large_objects == a->large_objects,
            what, NULL, 0);
}

/* ---- operations ------------------------------------------------------------------- */

static void op_alloc(struct input *in, int k, int how) {
    size_t n = get_size(in);
    if (live_bytes + n > MAX_LIVE_BYTES)
        return;
    struct job j = {.call = C_MALLOC, .a = n};
    size_t align = 0;
    bool zero = false;
    if (how == 1) { /* calloc: count * size */
        size_t cnt = 1 + get8(in) % 8;
        j = (struct job){.call = C_CALLOC, .a = cnt, .b = n / cnt};
        n = cnt * (n / cnt);
        zero = true;
    } else if (how == 2) { /* aligned */
        align = (size_t)1 << (get8(in) % 22);
        j = (struct job){.call = (get8(in) & 1) && align >= sizeof(void *) ? C_MEMALIGN : C_ALIGNED, .a = n,
                         .b = align};
    }
    run(k, &j);
    TRACE("alloc(how %d) n=%zu align=%zu on %d -> %p\n", how, n, align, k, j.ret);
    if (j.call == C_MEMALIGN) {
        REQUIRE(j.rc == 0 || j.rc == ENOMEM, "posix_memalign: unexpected code", NULL, n);
        adopt(j.rc == 0 ? j.ret : NULL, n, j.rc, align, false, scope_of[k]);
    } else {
        adopt(j.ret, n, j.err, align, zero, scope_of[k]);
    }
}

static void op_free(struct input *in, int k) {
    if (nobjs == 0)
        return;
    int i = (int)(get16(in) % (uint32_t)nobjs);
    struct obj *o = &objs[i];
    check_pattern(o, o->p, o->n);
    struct job j = {.call = get8(in) & 1 ? C_FREE_CHECKED : C_FREE, .p = o->p};
    run(k, &j);
    TRACE("free(%p) n=%zu on %d checked=%d -> %d\n", (void *)o->p, o->n, k, j.call == C_FREE_CHECKED, j.rc);
    if (j.call == C_FREE_CHECKED && j.rc != GM_OK) {
        fprintf(stderr, "fuzz_ops: code %d (%s) freeing object id %u of %zu bytes on worker %d\n", j.rc,
                gm_strerror(j.rc), o->id, o->n, k);
        fail("free of a live object refused", o->p, o->n);
    }
    forget(i);
}

static void op_realloc(struct input *in, int k) {
    if (nobjs == 0)
        return;
    int i = (int)(get16(in) % (uint32_t)nobjs);
    size_t n = get_size(in);
    struct obj *o = &objs[i];
    if (live_bytes - o->n + n > MAX_LIVE_BYTES)
        return;
    check_pattern(o, o->p, o->n);
    struct job j = {.call = C_REALLOC, .p = o->p, .a = n};
    run(k, &j);
    TRACE("realloc(%p, %zu) old n=%zu on %d -> %p\n", (void *)o->p, n, o->n, k, j.ret);
    if (n == 0) { /* as glibc: frees, returns NULL */
        REQUIRE(j.ret == NULL, "realloc(p, 0) returned an object", o->p, 0);
        REQUIRE(gm_check(o->p) != GM_OK || is_live(o->p) == false, "realloc(p, 0) did not free", o->p, 0);
        forget(i);
        return;
    }
    if (j.ret == NULL) {
        REQUIRE(may_fail() || (scope_of[k] >= 0 && heap_limited[scope_of[k]]),
                "realloc failed with no limit or fault in force", o->p, n);
        REQUIRE(j.err == ENOMEM, "failed realloc without ENOMEM", o->p, n);
        REQUIRE(gm_check(o->p) == GM_OK, "failed realloc freed the object", o->p, n);
        check_pattern(o, o->p, o->n);
        return;
    }
    unsigned char *q = j.ret;
    REQUIRE(gm_usable_size(q) >= n, "usable size below the size asked (realloc)", q, n);
    check_pattern(o, q, o->n < n ? o->n : n); /* the prefix moved with it */
    struct obj old = *o;
    live_bytes -= old.n;
    int heap = old.heap;
    if (q != old.p) { /* moved: into the worker's default heap */
        freed[nfreed++ % NFREED] = old.p;
        heap = scope_of[k];
    }
    REQUIRE(gm_heap_of(q) == handle(heap), "reallocated object in the wrong heap", q, n);
    *o = (struct obj){q, n, ++next_id, heap};
    live_bytes += n;
    write_pattern(o);
}

/* Bad calls: each is refused with its code and changes nothing. */
static void op_bad(struct input *in, int k) {
    uint8_t what = get8(in) % 6;
    uint32_t r = get32(in);
    TRACE("bad call %d r=%#x on %d\n", what, r, k);
    struct gm_stats a;
    static int a_global;
    int a_local = 0;
    void *p = NULL;
    int want = -1; /* expected code, -1: any error */
    const struct obj *victim = nobjs > 0 ? &objs[r % (uint32_t)nobjs] : NULL;
    switch (what) {
    case 0: /* interior pointer of a live object */
        if (victim == NULL || gm_usable_size(victim->p) < 2)
            return;
        p = victim->p + 1 + (r >> 8) % (gm_usable_size(victim->p) - 1);
        if (gm_check(p) == GM_OK) /* the start of another object (tiny slots): not bad */
            return;
        break;
    case 1: { /* double free: an address freed before and not live again */
        if (nfreed == 0)
            return;
        p = freed[(r >> 8) % (nfreed < NFREED ? nfreed : NFREED)];
        if (is_live(p) || gm_check(p) == GM_OK)
            return;
        break;
    }
    case 2: p = (r & 1) ? (void *)&a_global : (void *)&a_local; want = GM_ERR_NOT_OURS; break;
    case 3: p = (void *)(uintptr_t)(0x1000 + (r & ~(uint32_t)15)); want = GM_ERR_NOT_OURS; break;
    case 4: { /* calloc that overflows, alignment not a power of two */
        snapshot(&a);
        struct job j = {.call = C_CALLOC, .a = SIZE_MAX / 2 + (r % 7), .b = 2 + r % 5};
        run(k, &j);
        REQUIRE(j.ret == NULL && j.err == ENOMEM, "overflowing calloc did not fail with ENOMEM", j.ret, 0);
        struct job j2 = {.call = C_ALIGNED, .a = 100, .b = 3 + 2 * (r % 1000)};
        run(k, &j2);
        REQUIRE(j2.ret == NULL && j2.err == EINVAL, "bad alignment not refused with EINVAL", j2.ret, j2.b);
        unchanged(&a, "a refused allocation changed the heap");
        return;
    }
    default: /* realloc of a bad pointer */
        if (victim == NULL || gm_usable_size(victim->p) < 2)
            return;
        p = victim->p + 1 + (r >> 8) % (gm_usable_size(victim->p) - 1);
        if (gm_check(p) == GM_OK)
            return;
        snapshot(&a);
        struct job j = {.call = C_REALLOC, .p = p, .a = 64};
        run(k, &j);
        REQUIRE(j.ret == NULL && j.err == EINVAL, "realloc of a bad pointer not refused", p, 0);
        unchanged(&a, "a refused realloc changed the heap");
        check_pattern(victim, victim->p, victim->n);
        return;
    }
    int code = gm_check(p);
    REQUIRE(code != GM_OK, "bad pointer passes gm_check", p, 0);
    REQUIRE(gm_usable_size(p) == 0, "bad pointer has a usable size", p, 0);
    snapshot(&a);
    struct job j = {.call = C_FREE_CHECKED, .p = p};
    run(k, &j);
    TRACE("bad free %d (%p) on %d -> %d\n", what, p, k, j.rc);
    REQUIRE(j.rc != GM_OK && (want < 0 || j.rc == want), "bad free not refused with its code", p, (size_t)j.rc);
    REQUIRE(j.rc == code, "gm_free_checked and gm_check disagree", p, (size_t)j.rc);
    unchanged(&a, "a refused free changed the heap");
    struct gm_stats b;
    snapshot(&b);
    REQUIRE(b.bad_frees == a.bad_frees + 1, "bad free not counted", p, 0);
    if (victim != NULL && what == 0)
        check_pattern(victim, victim->p, victim->n);
}

static void op_option(struct input *in) {
    uint8_t which = get8(in) % 6;
    uint32_t r = get32(in);
    TRACE("option %d r=%#x\n", which, r);
    switch (which) {
    case 0: gm_option_set("tiny", r & 1); break;
    case 1: gm_option_set("profile_rate", (r & 3) == 0 ? 0 : (r & 3) == 1 ? 1 : 4096 + (r >> 2) % 65536); break;
    case 2: { /* a hard limit near what is in use, or none */
        struct gm_stats st;
        snapshot(&st);
        if (r & 1) {
            gm_option_set("hard_limit", 0);
            limit_on = false;
        } else {
            gm_option_set("hard_limit", (long long)(st.heap_inuse + (r >> 1) % (8 * MIB) + 1));
            limit_on = true;
        }
        break;
    }
    case 3: gm_option_set("fault_on_free", r % 3); break;
    case 4: gm_option_set("tcache_bytes", (long long)((r % 4) * 16 * KIB)); break;
    default: { /* OS faults from now on: every Nth call of some kinds */
        unsigned kinds = (r >> 8) & GM_DEBUG_OS_ALL;
        gm_debug_fail_os_calls(1 + r % 16, kinds);
        faults_on = faults_on || kinds != 0;
        break;
    }
    }
}

struct visit_count {
    uint64_t n, bytes;
};
static int count_visit(void *p, size_t size, void *arg) {
    struct visit_count *v = arg;
    REQUIRE(gm_check(p) == GM_OK, "gm_heap_visit gave a dead object", p, size);
    v->n++;
    v->bytes += size;
    return 0;
}

static void op_heap(struct input *in, int k) {
    uint8_t what = get8(in) % 7;
    uint32_t r = get32(in);
    int slot = (int)(r % NHEAPS);
    gm_heap_t *h = heaps[slot];
    TRACE("heap op %d slot %d r=%#x on %d\n", what, slot, r, k);
    switch (what) {
    case 0: { /* a new heap in an empty slot */
        if (h != NULL)
            return;
        struct gm_heap_options o = {.size = sizeof o, .name = "fuzz"};
        o.limit = (r >> 8) & 1 ? 0 : MIB + (r >> 9) % (8 * MIB);
        o.fault_on_destroy = (int)((r >> 30) & 1);
        errno = 0;
        heaps[slot] = gm_heap_new(&o);
        REQUIRE(heaps[slot] != NULL || (may_fail() && errno == ENOMEM), "gm_heap_new failed", NULL, 0);
        heap_limited[slot] = o.limit != 0;
        heap_scoped[slot] = false;
        return;
    }
    case 1: { /* an allocation in it */
        if (h == NULL)
            return;
        size_t n = get_size(in);
        if (live_bytes + n > MAX_LIVE_BYTES)
            return;
        struct job j = {.call = C_HEAP_MALLOC, .p = h, .a = n};
        run(k, &j);
        TRACE("heap malloc %zu in %d on %d -> %p\n", n, slot, k, j.ret);
        adopt(j.ret, n, j.err, 0, false, slot);
        return;
    }
    case 2: { /* worker k's default heap: this one, or back to the default */
        int to = (r >> 8) & 1 ? -1 : slot;
        if (to >= 0 && h == NULL)
            return;
        struct job j = {.call = C_SET_DEFAULT, .p = to < 0 ? NULL : h};
        run(k, &j);
        TRACE("set_default %d on %d -> %p\n", to, k, j.ret);
        if (j.ret == NULL) { /* out of memory for its cache */
            REQUIRE(may_fail() && j.err == ENOMEM, "gm_heap_set_default failed", NULL, 0);
            return;
        }
        REQUIRE(j.ret == handle(scope_of[k]), "gm_heap_set_default returned another previous heap", j.ret, 0);
        scope_of[k] = to;
        if (to >= 0)
            heap_scoped[to] = true;
        return;
    }
    case 3:   /* destroy */
    case 4: { /* delete */
        if (h == NULL)
            return;
        bool in_scope = false;
        for (int w = 0; w < NWORKERS; w++)
            in_scope |= scope_of[w] == slot;
        bool busy = in_scope || (what == 3 && heap_scoped[slot] && live_in(slot) > 0);
        struct gm_stats a;
        snapshot(&a);
        int rc = what == 3 ? gm_heap_destroy(h) : gm_heap_delete(h);
        TRACE("%s %d -> %d\n", what == 3 ? "destroy" : "delete", slot, rc);
        if (busy) {
            REQUIRE(rc == EBUSY, "destroy/delete of a busy heap not refused with EBUSY", NULL, (size_t)rc);
            unchanged(&a, "a refused destroy changed the heap");
            return;
        }
        REQUIRE(rc == 0, "destroy/delete failed", NULL, (size_t)rc);
        for (int i = nobjs - 1; i >= 0; i--) {
            if (objs[i].heap != slot)
                continue;
            if (what == 3) {
                forget(i); /* gone with the heap */
            } else {
                REQUIRE(gm_heap_of(objs[i].p) == gm_heap_default(), "deleted heap's object not in the default heap",
                        objs[i].p, objs[i].n);
                check_pattern(&objs[i], objs[i].p, objs[i].n);
                objs[i].heap = -1;
            }
        }
        heaps[slot] = NULL;
        errno = 0;
        REQUIRE(gm_heap_malloc(h, 8) == NULL && errno == EINVAL, "a gone heap's handle still works", NULL, 0);
        REQUIRE(gm_heap_destroy(h) == EINVAL, "destroying twice not refused", NULL, 0);
        return;
    }
    case 5: { /* a free through the wrong heap's call is refused */
        if (nobjs == 0)
            return;
        struct obj *o = &objs[(r >> 8) % (uint32_t)nobjs];
        int other = o->heap == slot ? (slot + 1) % NHEAPS : slot;
        if (other == o->heap || (other >= 0 && heaps[other] == NULL))
            other = -1;
        if (other == o->heap)
            return;
        struct gm_stats a;
        snapshot(&a);
        REQUIRE(gm_heap_free(handle(other), o->p) == GM_ERR_NOT_OURS, "free through the wrong heap not refused", o->p,
                o->n);
        unchanged(&a, "a free through the wrong heap changed the heap");
        check_pattern(o, o->p, o->n);
        return;
    }
    default: { /* its figures and its objects agree with ours */
        int s2 = (r >> 8) % 3 == 0 ? -1 : slot;
        if (s2 >= 0 && heaps[s2] == NULL)
            return;
        if (s2 < 0)
            return; /* the default heap holds objects of the allocator's own too (profile tables aside) */
        struct gm_heap_stats st;
        memset(&st, 0, sizeof st);
        st.size = sizeof st;
        REQUIRE(gm_heap_read_stats(heaps[s2], &st) == 0, "gm_heap_read_stats failed", NULL, 0);
        struct visit_count v = {0, 0};
        /* The visit maps a list of the heap's spans: ENOMEM (documented)
         * when the OS refuses, and nothing to check then. */
        int vrc = gm_heap_visit(heaps[s2], count_visit, &v);
        REQUIRE(vrc == 0 || (faults_on && vrc == ENOMEM), "gm_heap_visit failed", NULL, 0);
        if (vrc != 0)
            return;
        uint64_t mine = (uint64_t)live_in(s2);
        REQUIRE(st.objects == mine, "heap statistics: objects != the objects held", NULL, st.objects);
        REQUIRE(v.n == mine, "gm_heap_visit: objects != the objects held", NULL, v.n);
        REQUIRE(v.bytes == st.alloc, "gm_heap_visit bytes != statistics' alloc", NULL, v.bytes);
        REQUIRE(st.limit == 0 || st.peak_inuse <= st.limit, "a heap went over its limit", NULL, st.peak_inuse);
        return;
    }
    }
}

static int ptr_cmp(const void *a, const void *b) {
    uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
    return x < y ? -1 : x > y;
}

/* Every object we hold is still live to the allocator, and no span struct
 * on the span fixalloc's free list is in use (or there twice). */
static void check_all_live(void) {
    static uintptr_t list[1 << 16];
    size_t n = 0;
    pthread_mutex_lock(&gm_mheap.lock);
    for (void *q = gm_mheap.spanalloc.list; q != NULL && n < sizeof list / sizeof list[0]; q = *(void **)q)
        list[n++] = (uintptr_t)q;
    pthread_mutex_unlock(&gm_mheap.lock);
    qsort(list, n, sizeof list[0], ptr_cmp);
    for (size_t i = 1; i < n; i++)
        if (list[i] == list[i - 1])
            fail("a span struct is twice on the free list", (void *)list[i], n);
    for (int i = 0; i < nobjs; i++) {
        if (gm_check(objs[i].p) != GM_OK)
            fail("a live object is no longer live", objs[i].p, objs[i].n);
        uintptr_t sp = (uintptr_t)gm_span_of((uintptr_t)objs[i].p);
        if (bsearch(&sp, list, n, sizeof list[0], ptr_cmp) != NULL)
            fail("a live object's span struct is on the free list", objs[i].p, objs[i].n);
    }
}

static void check_heap(const char *when) {
    int bad = gm_check_heap();
    if (bad != 0)
        fail(when, NULL, (size_t)bad);
}

/* ---- the target ---------------------------------------------------------------- */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    tracing = getenv("FUZZ_OPS_TRACE") != NULL;
    gm_option_set("abort_on_error", 0);
    gm_option_set("scavenger", 0); /* no thread of its own: runs are deterministic */
    for (int k = 0; k < NWORKERS; k++) {
        scope_of[k] = -1;
        start_worker(k);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct input in = {data, size};
    TRACE("-- new input, %zu bytes\n", size);
    nobjs = 0;
    live_bytes = 0;
    nfreed = 0;
    limit_on = faults_on = false;
    for (int step = 0; in.n > 0 && step < 2000; step++) {
        uint8_t tag = get8(&in);
        int k = tag >> 5 & 3; /* worker 0..2 (3 means 0) */
        if (k == NWORKERS)
            k = 0;
        switch (tag % 16) {
        case 0: case 1: case 2: op_alloc(&in, k, 0); break;
        case 3: op_alloc(&in, k, 1); break;
        case 4: op_alloc(&in, k, 2); break;
        case 5: case 6: case 7: op_free(&in, k); break;
        case 8: op_realloc(&in, k); break;
        case 9: { struct job j = {.call = C_FLUSH}; run(k, &j); TRACE("flush on %d\n", k); break; }
        case 10: (void)gm_release(); TRACE("release\n"); break;
        case 11: op_option(&in); break;
        case 12: op_bad(&in, k); break;
        case 13: restart_worker(k); scope_of[k] = -1; TRACE("restart %d\n", k); break;
        case 14: { /* a burst of small objects, freed in the order the input says */
            int m = 1 + get8(&in) % 32;
            for (int x = 0; x < m; x++)
                op_alloc(&in, k, 0);
            break;
        }
        default:
            if (get8(&in) & 1)
                op_heap(&in, k);
            else
                check_heap("heap check failed mid-input");
            break;
        }
        check_all_live();
        if (step % 32 == 31)
            check_heap("heap check failed (periodic)");
    }

    /* The end: everything back, every failure off, options to defaults. */
    gm_debug_fail_os_calls(0, 0);
    gm_option_set("hard_limit", 0);
    limit_on = faults_on = false;
    /* Scopes end; heaps that never were one go with their objects. */
    for (int k = 0; k < NWORKERS; k++) {
        struct job j = {.call = C_SET_DEFAULT, .p = NULL};
        run(k, &j);
        REQUIRE(j.ret == handle(scope_of[k]), "gm_heap_set_default(NULL) returned another previous heap", j.ret, 0);
        scope_of[k] = -1;
    }
    for (int slot = 0; slot < NHEAPS; slot++) {
        if (heaps[slot] == NULL || heap_scoped[slot])
            continue;
        REQUIRE(gm_heap_destroy(heaps[slot]) == 0, "final destroy failed", NULL, 0);
        for (int i = nobjs - 1; i >= 0; i--)
            if (objs[i].heap == slot)
                forget(i);
        heaps[slot] = NULL;
    }
    while (nobjs > 0) {
        struct obj *o = &objs[nobjs - 1];
        check_pattern(o, o->p, o->n);
        REQUIRE(gm_free_checked(o->p) == GM_OK, "final free refused", o->p, o->n);
        forget(nobjs - 1);
    }
    for (int k = 0; k < NWORKERS; k++) {
        struct job j = {.call = C_FLUSH};
        run(k, &j);
    }
    for (int slot = 0; slot < NHEAPS; slot++) { /* (the scoped ones, empty now) */
        if (heaps[slot] != NULL)
            REQUIRE(gm_heap_destroy(heaps[slot]) == 0, "final destroy of an empty heap failed", NULL, 0);
        heaps[slot] = NULL;
    }
    gm_option_set("tiny", 0);
    gm_option_set("profile_rate", 0);
    gm_option_set("fault_on_free", 0);
    gm_option_set("tcache_bytes", 32 * KIB);
    (void)gm_release();
    check_heap("heap check failed at the end of the input");
    struct gm_stats st;
    snapshot(&st);
    REQUIRE(st.heap_objects == 0, "objects live after everything was freed", NULL, st.heap_objects);
    REQUIRE(st.heap_alloc == 0 && st.large_objects == 0, "bytes live after everything was freed", NULL,
            st.heap_alloc);
    REQUIRE(st.heap_inuse == 0, "spans in use after everything was freed and flushed", NULL, st.heap_inuse);
    REQUIRE(st.cached_bytes == 0 && st.transfer_bytes == 0, "objects cached after the flushes", NULL,
            st.cached_bytes);
    REQUIRE(st.tiny_mallocs == st.tiny_frees, "tiny objects live after everything was freed", NULL, 0);
    REQUIRE(st.heap_idle == st.heap_released, "free pages not released after gm_release", NULL,
            st.heap_idle - st.heap_released);
    REQUIRE(st.heap_sys == st.heap_idle + st.heap_inuse, "heap_sys != heap_idle + heap_inuse", NULL, 0);
    return 0;
}
