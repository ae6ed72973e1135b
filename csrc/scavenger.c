/*
 * scavenger.c: returning free memory to the OS (mgcscavenge.go).
 *
 * Free pages in the heap are Ready (resident once touched) until the
 * scavenger releases them with sysUnused (Ready -> Prepared).  Reusing a
 * released page costs a page fault and a zeroed page, so the scavenger keeps
 * some free memory Ready and releases the rest.  What it keeps is bounded
 * two ways:
 *
 *   goal    retained = heap_sys - heap_released (mapped, not released) may
 *           exceed the live heap (heap_inuse) by retain_percent percent; the
 *           excess is released, largest free runs first, once it has been
 *           free for a tenth of the decay time (so that memory freed and
 *           allocated again at once is not released and faulted back in).
 *   decay   a free run that has stayed free for decay_ms is released even
 *           under the goal, so an idle program gives its memory back.
 *   batches transfer-cache batches (mcentral.c) no thread took for decay_ms
 *           go back to their spans, whose pages can then go too.
 *   limits  above memory_limit (soft), every free page is released before
 *           the heap grows or as soon as the scavenger runs; hard_limit
 *           makes allocations fail (NULL/ENOMEM) rather than push heap_inuse
 *           past it.
 *
 * The background thread starts lazily, the first time pages return to the
 * heap, and only if the option "scavenger" is on.  It sleeps on a condition
 * variable: with free memory left unreleased, until the oldest such run
 * reaches the decay age (or a second, whichever is sooner), and likewise for
 * the oldest transfer-cache batch; with nothing to release and no batch,
 * until the heap frees pages again.  It never polls.  It paces
 * itself: after each pass it sleeps three times as long as the pass took,
 * so it uses at most a quarter of one CPU even when there is a lot to
 * release (the kernel's work of freeing pages, mostly), and each pass
 * releases at most 64 MiB, with its madvise calls outside the heap lock
 * (gm_mheap_scavenge_aged).
 * After fork() the child has no scavenger thread; the next free that
 * returns pages starts one.  When the last thread with a cache exits, the
 * scavenger exits too, so that the process can end (gm_scavenger_threads_gone).
 *
 * gm_release() (scavengeAll, debug.FreeOSMemory) releases everything at
 * once on the calling thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <time.h>

#include "gm_internal.h"

#define PASS_BYTES ((uintptr_t)64 << 20)
#define PACE 3 /* sleep PACE times as long as a pass took: at most 25% of a CPU */

static pthread_mutex_t scav_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t scav_cond;     /* CLOCK_MONOTONIC; initialised with the thread */
static atomic_bool scav_started;     /* a start was attempted; set under scav_lock */
static atomic_bool scav_sleeping;    /* the thread waits for frees, without a timeout; under scav_lock */
static atomic_bool scav_waiting;     /* the thread waits, with or without a timeout; under scav_lock */
static atomic_bool scav_quit;        /* the program's threads are gone: the thread exits; under scav_lock */

/* Mapped heap bytes not released, counting `coming` released bytes about
 * to be made Ready for an allocation. */
static uint64_t retained_with(uintptr_t coming) {
    return LOAD_RELAXED(&gm_mheap.heap_sys) - LOAD_RELAXED(&gm_mheap.heap_released) + coming;
}

static bool over_memory_limit(uint64_t retained) {
    long long limit = LOAD_RELAXED(&gm_opt.memory_limit);
    return limit > 0 && retained > (uint64_t)limit;
}

/* Bytes retained above what the goal and the limits allow, counting
 * `coming` released bytes about to be made Ready for an allocation (whose
 * bytes heap_inuse already counts: the heap reserves them first). */
uintptr_t gm_scavenge_excess(uintptr_t coming) {
    uint64_t inuse = LOAD_RELAXED(&gm_mheap.heap_inuse);
    uint64_t retained = retained_with(coming);
    uint64_t goal = inuse + inuse / 100 * (uint64_t)LOAD_RELAXED(&gm_opt.retain_percent);
    if (over_memory_limit(retained))
        goal = inuse; /* over the soft limit: release every free page */
    return retained > goal ? (uintptr_t)(retained - goal) : 0;
}

static bool over_limit_now(void) {
    return over_memory_limit(retained_with(0));
}

/* The excess over the goal goes once it has been free for a tenth of the
 * decay time, so that memory a program frees and allocates again at once
 * (a churn of large blocks, say) is not released and faulted back in; over
 * the soft limit (counting `coming`, as gm_scavenge_excess) it goes at
 * once. */
uint64_t gm_scavenge_min_age(uintptr_t coming) {
    return over_memory_limit(retained_with(coming)) ? 0 : (uint64_t)LOAD_RELAXED(&gm_opt.decay_ms) / 10;
}

static uint64_t goal_min_age(void) { return gm_scavenge_min_age(0); }

/* One pass: the excess over the goal, then runs older than the decay time.
 * Returns bytes released. */
static uintptr_t scavenge_pass(void) {
    uintptr_t released = 0, excess = gm_scavenge_excess(0);
    if (excess != 0)
        released += gm_mheap_scavenge_aged(excess < PASS_BYTES ? excess : PASS_BYTES, goal_min_age());
    if (released < PASS_BYTES)
        released += gm_mheap_scavenge_aged(PASS_BYTES - released, (uint64_t)LOAD_RELAXED(&gm_opt.decay_ms));
    return released;
}

static void *scavenger_main(void *arg) {
    (void)arg;
    for (;;) {
        uint64_t t0 = gm_now_ms();
        /* Transfer cache batches that no thread took for decay_ms go back
         * to their spans first: their objects keep spans (and pages) in use. */
        uint64_t tc_oldest = 0, ab_oldest = 0;
        /* Caches that exited threads left and no new thread took (mcache.c)
         * are flushed after the decay time too. */
        bool ab_pending = gm_mcache_reap((uint64_t)LOAD_RELAXED(&gm_opt.decay_ms), &ab_oldest);
        bool tc_pending = gm_mcentral_drainAged((uint64_t)LOAD_RELAXED(&gm_opt.decay_ms), &tc_oldest);
        if (ab_pending && (!tc_pending || ab_oldest < tc_oldest)) {
            tc_oldest = ab_oldest;
            tc_pending = true;
        }
        /* Spans of heaps destroyed with fault_on_destroy stay PROT_NONE for
         * decay_ms (heap.c), then their pages are free pages again. */
        uint64_t q_oldest = 0;
        if (gm_heap_quarantine_drain((uint64_t)LOAD_RELAXED(&gm_opt.decay_ms), &q_oldest) &&
            (!tc_pending || q_oldest < tc_oldest)) {
            tc_oldest = q_oldest;
            tc_pending = true;
        }
        uintptr_t released = scavenge_pass();
        uint64_t spent = gm_now_ms() - t0;
        uint64_t oldest = 0;
        bool pending = gm_mheap_unreleased_free(&oldest);
        uint64_t wait_ms;
        if (released >= PASS_BYTES || (released != 0 && gm_scavenge_excess(0) != 0)) {
            wait_ms = PACE * spent + 1; /* more to do: pace */
        } else if (pending) {
            /* Wake when the oldest unreleased run is old enough to go (the
             * goal's age when over the goal, else the decay); at least once
             * a second, so option changes take effect.  A pass that could
             * release nothing (pages smaller than the physical page, say)
             * waits the full second. */
            uint64_t age = gm_now_ms() - oldest;
            uint64_t due = gm_scavenge_excess(0) != 0 ? goal_min_age() : (uint64_t)LOAD_RELAXED(&gm_opt.decay_ms);
            wait_ms = released == 0 && age >= due ? 1000 : age >= due ? PACE * spent + 1 : due - age;
            if (wait_ms > 1000)
                wait_ms = 1000;
        } else {
            wait_ms = 0; /* nothing to release: sleep until the heap frees pages */
        }
        if (tc_pending) { /* and wake when the oldest batch is due */
            uint64_t age = gm_now_ms() - tc_oldest, decay = (uint64_t)LOAD_RELAXED(&gm_opt.decay_ms);
            uint64_t due = age >= decay ? 1 : decay - age > 1000 ? 1000 : decay - age;
            if (wait_ms == 0 || due < wait_ms)
                wait_ms = due;
        }
        pthread_mutex_lock(&scav_lock);
        if (atomic_load(&scav_quit))
            break;
        atomic_store(&scav_waiting, true);
        if (wait_ms == 0) {
            atomic_store(&scav_sleeping, true);
            while (atomic_load(&scav_sleeping))
                pthread_cond_wait(&scav_cond, &scav_lock);
        } else {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += (time_t)(wait_ms / 1000);
            ts.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&scav_cond, &scav_lock, &ts);
        }
        atomic_store(&scav_waiting, false);
        if (atomic_load(&scav_quit))
            break;
        pthread_mutex_unlock(&scav_lock);
    }
    /* The caches that exited threads left wait for no one now: flush them
     * (without scav_lock, which is never held around the other locks), so
     * their memory is not held until the next thread comes. */
    pthread_mutex_unlock(&scav_lock);
    uint64_t oldest;
    (void)gm_mcache_reap(0, &oldest);
    pthread_mutex_lock(&scav_lock);
    /* Under scav_lock: the next notify starts a new thread. */
    atomic_store(&scav_quit, false);
    atomic_store(&scav_started, false);
    pthread_mutex_unlock(&scav_lock);
    return NULL;
}

/*
 * The last thread with a cache has exited (mcache.c).  A process ends when
 * its last thread does; were the scavenger to stay, a program whose
 * threads all call pthread_exit (a fork child whose only thread returns, a
 * main() that ends in pthread_exit) would never end.  So it goes too; a
 * later free that returns pages (from a thread that never had a cache)
 * starts a new one.
 */
void gm_scavenger_threads_gone(void) {
    if (!atomic_load_explicit(&scav_started, memory_order_relaxed))
        return;
    pthread_mutex_lock(&scav_lock);
    if (atomic_load(&scav_started)) {
        atomic_store(&scav_quit, true);
        atomic_store(&scav_sleeping, false);
        pthread_cond_signal(&scav_cond);
    }
    pthread_mutex_unlock(&scav_lock);
}

static void start_thread(void) {
    pthread_mutex_lock(&scav_lock);
    if (!atomic_load(&scav_started)) {
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&scav_cond, &ca);
        pthread_condattr_destroy(&ca);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 64 << 10);
        /* Signals belong to the program's threads, not ours. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        pthread_t t;
        /* Attempted once (per process): if the system refuses a thread,
         * gm_release() still works. */
        atomic_store(&scav_started, true);
        (void)pthread_create(&t, &attr, scavenger_main, NULL);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
    }
    pthread_mutex_unlock(&scav_lock);
}

/*
 * Called, without any allocator lock held, after pages went back to the heap.
 * Starts the scavenger on first use, or wakes it if it sleeps for want of
 * work, or if it waits while the heap is over the soft memory limit (a burst
 * of frees over the limit is released at once).  Cheap when it is running
 * or disabled: a few relaxed loads.
 */
void gm_scavenger_notify(void) {
    if (!LOAD_RELAXED(&gm_opt.scavenger))
        return;
    if (unlikely(!atomic_load_explicit(&scav_started, memory_order_relaxed))) {
        start_thread();
        return;
    }
    if (atomic_load_explicit(&scav_sleeping, memory_order_relaxed) ||
        (atomic_load_explicit(&scav_waiting, memory_order_relaxed) && over_limit_now())) {
        pthread_mutex_lock(&scav_lock);
        atomic_store(&scav_sleeping, false);
        pthread_cond_signal(&scav_cond);
        pthread_mutex_unlock(&scav_lock);
    }
}

/* fork(): the child has no scavenger thread; start one on demand. */
void gm_scavenger_fork_prepare(void) { pthread_mutex_lock(&scav_lock); }
void gm_scavenger_fork_parent(void) { pthread_mutex_unlock(&scav_lock); }
void gm_scavenger_fork_child(void) {
    pthread_mutex_init(&scav_lock, NULL);
    atomic_store(&scav_started, false);
    atomic_store(&scav_sleeping, false);
    atomic_store(&scav_waiting, false);
    atomic_store(&scav_quit, false);
}
