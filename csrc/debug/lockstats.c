/*
 * lockstats.c: the lock counter build (make lockstats): how often the
 * allocator's locks are taken, how often a thread found one held, and how
 * long threads waited for them and held them.  For README "Scaling"; not
 * part of any library that ships.
 *
 * The core is linked with -Wl,--wrap=pthread_mutex_lock (and unlock,
 * trylock and the condition waits): its own calls come here, the
 * program's do not.  A lock is classified by its address: the default
 * heap's class locks (gm_central), the page heap's lock (gm_mheap.lock),
 * or another (program heaps, the cache registry, the profile, ...).  A
 * try that fails first counts as contended, and the wait is timed; hold
 * time runs from the acquisition to the matching unlock (a per-thread
 * stack of the locks held).  A condition wait (the scavenger's sleep, a
 * thread reaping another) releases the lock for its duration, which is
 * not hold time.  The class locks are also counted per call site (the
 * caller's return address, printed as an offset in its library for
 * addr2line).  Totals print to stderr at exit.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include "../gm_internal.h"

int __real_pthread_mutex_lock(pthread_mutex_t *l);
int __real_pthread_mutex_unlock(pthread_mutex_t *l);
int __real_pthread_mutex_trylock(pthread_mutex_t *l);
int __wrap_pthread_mutex_lock(pthread_mutex_t *l);
int __wrap_pthread_mutex_unlock(pthread_mutex_t *l);
int __wrap_pthread_mutex_trylock(pthread_mutex_t *l);
int __real_pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *l);
int __real_pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *l, const struct timespec *t);
int __wrap_pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *l);
int __wrap_pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *l, const struct timespec *t);

enum { K_CLASS, K_HEAP, K_OTHER, K_KINDS };
static const char *const kind_name[K_KINDS] = {"class locks (default heap)", "page heap lock", "other locks"};

struct counts {
    _Atomic uint64_t acquired, contended, wait_ns, wait_max_ns, hold_ns, hold_max_ns;
};
static struct counts counts[K_KINDS];

/* Class-lock acquisitions and waits per call site: open addressing on the
 * return address, never removed. */
#define SITES 256
static struct {
    _Atomic uintptr_t pc;
    _Atomic uint64_t acquired, wait_ns;
} sites[SITES];

static void count_site(uintptr_t pc, uint64_t wait) {
    for (uint32_t i = (uint32_t)(pc >> 4) % SITES, n = 0; n < SITES; i = (i + 1) % SITES, n++) {
        uintptr_t cur = atomic_load_explicit(&sites[i].pc, memory_order_relaxed);
        if (cur == 0 && atomic_compare_exchange_strong(&sites[i].pc, &cur, pc))
            cur = pc;
        if (cur == pc) {
            atomic_fetch_add_explicit(&sites[i].acquired, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&sites[i].wait_ns, wait, memory_order_relaxed);
            return;
        }
    }
}

/* The locks this thread holds, with when each was taken (held locks nest
 * a few deep at most: class lock, then heap lock). */
#define MAX_HELD 16
static __thread struct {
    pthread_mutex_t *lock;
    uint64_t since;
} held[MAX_HELD];
static __thread int nheld;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int kind_of(const pthread_mutex_t *l) {
    const char *p = (const char *)l, *c = (const char *)&gm_central[0];
    if (p >= c && p < c + sizeof gm_default_heap.central)
        return K_CLASS;
    if (l == &gm_mheap.lock)
        return K_HEAP;
    return K_OTHER;
}

static void raise_max(_Atomic uint64_t *m, uint64_t v) {
    uint64_t old = atomic_load_explicit(m, memory_order_relaxed);
    while (v > old && !atomic_compare_exchange_weak_explicit(m, &old, v, memory_order_relaxed, memory_order_relaxed)) {
    }
}

/* l is held from t on. */
static void holding(pthread_mutex_t *l, uint64_t t) {
    if (nheld < MAX_HELD) {
        held[nheld].lock = l;
        held[nheld].since = t;
    }
    nheld++;
}

static void acquired(pthread_mutex_t *l, int k, uint64_t t) {
    atomic_fetch_add_explicit(&counts[k].acquired, 1, memory_order_relaxed);
    holding(l, t);
}

int __wrap_pthread_mutex_lock(pthread_mutex_t *l) {
    int k = kind_of(l);
    uintptr_t pc = (uintptr_t)__builtin_return_address(0);
    if (__real_pthread_mutex_trylock(l) == 0) {
        acquired(l, k, now_ns());
        if (k == K_CLASS)
            count_site(pc, 0);
        return 0;
    }
    uint64_t t0 = now_ns();
    int r = __real_pthread_mutex_lock(l);
    uint64_t t1 = now_ns();
    atomic_fetch_add_explicit(&counts[k].contended, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&counts[k].wait_ns, t1 - t0, memory_order_relaxed);
    raise_max(&counts[k].wait_max_ns, t1 - t0);
    if (r == 0)
        acquired(l, k, t1);
    if (k == K_CLASS)
        count_site(pc, t1 - t0);
    return r;
}

int __wrap_pthread_mutex_trylock(pthread_mutex_t *l) {
    int r = __real_pthread_mutex_trylock(l);
    if (r == 0)
        acquired(l, kind_of(l), now_ns());
    return r;
}

/* l is being released: its hold time counted, out of the stack. */
static void released(pthread_mutex_t *l) {
    for (int i = (nheld < MAX_HELD ? nheld : MAX_HELD) - 1; i >= 0; i--) {
        if (held[i].lock != l)
            continue;
        uint64_t d = now_ns() - held[i].since;
        int k = kind_of(l);
        atomic_fetch_add_explicit(&counts[k].hold_ns, d, memory_order_relaxed);
        raise_max(&counts[k].hold_max_ns, d);
        for (int j = i; j + 1 < nheld && j + 1 < MAX_HELD; j++)
            held[j] = held[j + 1];
        break;
    }
    if (nheld > 0)
        nheld--;
}

int __wrap_pthread_mutex_unlock(pthread_mutex_t *l) {
    released(l);
    return __real_pthread_mutex_unlock(l);
}

/* A condition wait releases l and takes it again inside glibc: the
 * interval is closed before and opened anew after (its wait not counted). */
int __wrap_pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *l) {
    released(l);
    int r = __real_pthread_cond_wait(c, l);
    holding(l, now_ns());
    return r;
}

int __wrap_pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *l, const struct timespec *t) {
    released(l);
    int r = __real_pthread_cond_timedwait(c, l, t);
    holding(l, now_ns());
    return r;
}

__attribute__((destructor)) static void report(void) {
    fprintf(stderr, "pygomalloc lock counters (make lockstats):\n");
    fprintf(stderr, "%-28s %12s %10s %12s %12s %12s %12s\n", "lock", "acquired", "contended", "wait ms", "wait max us",
            "hold ms", "hold max us");
    for (int k = 0; k < K_KINDS; k++) {
        struct counts *c = &counts[k];
        uint64_t a = atomic_load(&c->acquired), n = atomic_load(&c->contended);
        fprintf(stderr, "%-28s %12llu %9.2f%% %12.1f %12.1f %12.1f %12.1f\n", kind_name[k], (unsigned long long)a,
                a ? 100.0 * (double)n / (double)a : 0.0, (double)atomic_load(&c->wait_ns) / 1e6,
                (double)atomic_load(&c->wait_max_ns) / 1e3, (double)atomic_load(&c->hold_ns) / 1e6,
                (double)atomic_load(&c->hold_max_ns) / 1e3);
    }
    fprintf(stderr, "class locks by call site (addr2line -f -e LIBRARY OFFSET names them):\n%12s %12s  %s\n",
            "acquired", "wait ms", "library+offset");
    for (int i = 0; i < SITES; i++) {
        uintptr_t pc = atomic_load(&sites[i].pc);
        Dl_info info;
        if (pc == 0 || !dladdr((void *)pc, &info))
            continue;
        const char *name = info.dli_fname;
        fprintf(stderr, "%12llu %12.1f  %s+%#lx\n", (unsigned long long)atomic_load(&sites[i].acquired),
                (double)atomic_load(&sites[i].wait_ns) / 1e6, name, (unsigned long)(pc - (uintptr_t)info.dli_fbase));
    }
}
