/*
 * mprof.c: the sampled heap profile (mprof.go; malloc.go: MemProfileRate,
 * nextSample, fastexprand).
 *
 * With the option profile_rate = R > 0, malloc samples one allocation per R
 * bytes on average: each thread counts down a number of bytes drawn from an
 * exponential distribution of mean R (so every byte is equally likely to be
 * the one sampled, whatever the sizes), and the allocation that crosses zero
 * is recorded with its call stack.  Records are kept per distinct stack (a
 * bucket, Go's bucket/memRecord): sampled allocations and bytes, and how
 * many of them were freed since, so a reader sees what is in use and what
 * was allocated, per call site.
 *
 * Estimates.  An allocation of s bytes is sampled with probability
 * p = 1 - exp(-s/R) (the countdown lands in it; exponential spacing is
 * memoryless), so a sample stands for 1/p allocations and elemsize/p bytes:
 * the sum over the samples is an unbiased estimate of what was allocated
 * (pprof's scaleHeapSample; Go scales per stack with the average size, which
 * is biased when a stack allocates several sizes, so here each sample is
 * scaled, at record time, with the rate then in force).  With R = 1 every
 * allocation is sampled and p is 1: the estimates are the exact figures.
 * They are kept in fixed point (objects in 1/4096ths, bytes in 1/16ths), so
 * that a sample's free takes off exactly what its allocation added: all of a
 * stack's objects freed leave an estimate of exactly 0 in use.
 *
 * Costs.  Off (the default), nothing: the fast paths are untouched.  On,
 * every small malloc takes the slow path (the class-offset tables of
 * malloc.c route them there: gm_route_update), about twice the instructions of the fast
 * path, and each sample costs a stack walk (backtrace(), the libgcc
 * unwinder: correct without frame pointers) and a lock.  free() pays
 * nothing for objects not sampled: a sampled object's state byte says
 * OBJ_SAMPLED (a large one's span says so), which sends its free() to the
 * slow path, which takes it out of the profile.
 *
 * All metadata comes from fixalloc/persistentalloc, never from malloc; a
 * malloc made while this thread records a sample (backtrace's first call
 * loads libgcc and allocates) is not sampled.
 *
 * The sample hook (gm_set_sample_hook: pygomalloc.trace_native reports
 * samples to tracemalloc with it) is called for each sample once the
 * record is made and every lock is dropped, with in_profile set, so that
 * nothing it allocates is sampled and nothing it frees reports back; an
 * object whose sample it kept (it returned 1) gets its free reported.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <link.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gm_internal.h"

#define BUCKET_TABLE 1024  /* chains of buckets, by stack hash */
#define ADDR_TABLE 4096    /* chains of sampled live objects, by address */

typedef struct gm_bucket {
    struct gm_bucket *next;   /* hash chain. Under prof_lock. */
    struct gm_bucket *allnext; /* every bucket, newest first. Immutable once linked. */
    uint64_t hash;            /* of the stack. Immutable. */
    uint32_t nstack;          /* frames in stack. Immutable. */
    const void *stack[GM_PROFILE_DEPTH]; /* return addresses, innermost first. Immutable. */
    uint64_t alloc_objects, alloc_bytes, free_objects, free_bytes; /* samples. Under prof_lock. */
    uint64_t est_alloc_objects, est_alloc_bytes;  /* estimates, fixed point (EST_*_SHIFT). Under prof_lock. */
    uint64_t est_free_objects, est_free_bytes;    /* Under prof_lock. */
} gm_bucket;

typedef struct gm_sampled {
    struct gm_sampled *next; /* hash chain. Under prof_lock. */
    uintptr_t addr;          /* the live sampled object */
    uint64_t bytes;          /* its size as recorded */
    uint64_t est_objects, est_bytes; /* what it stands for, fixed point */
    gm_bucket *b;            /* its bucket */
    bool tracked;            /* the sample hook kept it: report its free */
} gm_sampled;

/* Fixed point of the estimates: 2^52 objects and 2^60 bytes allocated in all
 * before a bucket's sums wrap, to 1/4096 object and 1/16 byte a sample. */
#define EST_OBJECTS_SHIFT 12
#define EST_BYTES_SHIFT 4

static pthread_mutex_t prof_lock = PTHREAD_MUTEX_INITIALIZER;
static gm_bucket *buckets[BUCKET_TABLE]; /* Under prof_lock. */
static gm_bucket *allbuckets;             /* Under prof_lock. */
static uint32_t nbuckets;                 /* Under prof_lock. */
static gm_sampled *sampled[ADDR_TABLE];   /* Under prof_lock. */
static gm_fixalloc bucketalloc, sampledalloc; /* Under prof_lock. */
static bool prof_inited;                  /* a sample was taken, ever. Written under prof_lock; read relaxed. */
static uintptr_t own_base;                /* load address of this library (its frames are skipped); 1 if it is the program; 0 until known. Relaxed. */
static __thread int in_profile;           /* this thread is recording a sample, or in the sample hook */

/* The sample hook: two slots, so that a reader never pairs one hook's
 * function with another's context; hook_slot says which is current. */
static struct {
    gm_sample_hook fn;
    void *ctx;
} hooks[2];
static int hook_slot;                     /* relaxed; switched with a release store */

void gm_set_sample_hook(gm_sample_hook fn, void *ctx) {
    static pthread_mutex_t set_lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&set_lock);
    int next = !LOAD_RELAXED(&hook_slot);
    hooks[next].ctx = ctx;
    STORE_RELAXED(&hooks[next].fn, fn);
    __atomic_store_n(&hook_slot, next, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&set_lock);
}

static uint64_t from_fixed(uint64_t v, int shift);

/* Sample r (of p, size bytes asked) was recorded: tell the hook, outside
 * every lock, and remember whether it kept it. */
static void report_alloc(gm_sampled *r, void *p, size_t size, const void *const *stack, uint32_t nstack) {
    int slot = __atomic_load_n(&hook_slot, __ATOMIC_ACQUIRE);
    gm_sample_hook fn = LOAD_RELAXED(&hooks[slot].fn);
    if (fn == NULL)
        return;
    struct gm_sample s = {p, size, r->bytes, from_fixed(r->est_bytes, EST_BYTES_SHIFT), nstack, stack};
    in_profile = 1;
    int keep = fn(hooks[slot].ctx, GM_SAMPLE_ALLOC, &s);
    in_profile = 0;
    if (keep) {
        pthread_mutex_lock(&prof_lock); /* p is not freed before malloc returns it: r stands */
        r->tracked = true;
        pthread_mutex_unlock(&prof_lock);
    }
}

static void report_free(const void *p, uint64_t bytes, uint64_t est_bytes) {
    int slot = __atomic_load_n(&hook_slot, __ATOMIC_ACQUIRE);
    gm_sample_hook fn = LOAD_RELAXED(&hooks[slot].fn);
    if (fn == NULL || in_profile)
        return;
    struct gm_sample s = {p, 0, bytes, from_fixed(est_bytes, EST_BYTES_SHIFT), 0, NULL};
    in_profile = 1;
    (void)fn(hooks[slot].ctx, GM_SAMPLE_FREE, &s);
    in_profile = 0;
}

/* ---- the sampling interval (fastexprand) ---------------------------------- */

static uint64_t xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* -ln(u) for u uniform in (0, 1]: an exponential variate of mean 1.  ln by
 * exponent and mantissa, ln(m) = 2 atanh((m-1)/(m+1)) to the 7th power
 * (relative error below 1e-5, ample for sampling), so no libm is needed. */
static double exp_variate(uint64_t r) {
    double u = (double)((r >> 11) + 1) * 0x1.0p-53;
    uint64_t bits;
    memcpy(&bits, &u, sizeof bits);
    int e = (int)((bits >> 52) & 0x7ff) - 1023;
    bits = (bits & ((UINT64_C(1) << 52) - 1)) | (UINT64_C(1023) << 52);
    double m;
    memcpy(&m, &bits, sizeof m);
    double t = (m - 1) / (m + 1), t2 = t * t;
    double lnm = 2 * t * (1 + t2 * (1.0 / 3 + t2 * (1.0 / 5 + t2 * (1.0 / 7))));
    return -(lnm + e * 0.69314718055994531);
}

static int64_t next_interval(gm_mcache *c, long long rate) {
    if (c->rand == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        c->rand = ((uint64_t)(uintptr_t)c * 0x9E3779B97F4A7C15u) ^ (uint64_t)ts.tv_nsec ^ 1;
    }
    if (rate == 1)
        return 0; /* every allocation */
    double v = exp_variate(xorshift(&c->rand)) * (double)rate;
    return v > 9e18 ? INT64_MAX : (int64_t)v;
}

/* 1 - exp(-x) for x >= 0, to about 1e-14 relative, without libm: the
 * Taylor series below 1/2 (no cancellation for small x), else exp(-x) as
 * exp(-x/2^k)^(2^k) with x/2^k below 1/2. */
static double one_minus_exp_neg(double x) {
    if (x >= 40)
        return 1.0; /* exp(-40) < 2^-57: 1 - it rounds to 1 */
    if (x < 0.5) {
        double term = x, sum = 0;
        for (int k = 1; k <= 20; k++) { /* x^21/21! < 1e-25 */
            sum += term;
            term *= -x / (k + 1);
        }
        return sum;
    }
    int squarings = 0;
    while (x >= 0.5) {
        x *= 0.5;
        squarings++;
    }
    double e = 1 - one_minus_exp_neg(x);
    while (squarings-- > 0)
        e *= e;
    return 1 - e;
}

/* How many allocations a sample of an allocation of size bytes stands for,
 * at the given rate: 1/P(sampled).  A malloc(0) counts down 0 bytes; it is
 * taken as 1 byte, which is about its chance of being sampled. */
static double sample_weight(size_t size, long long rate) {
    if (rate <= 1)
        return 1.0; /* every allocation is sampled */
    return 1.0 / one_minus_exp_neg((double)(size != 0 ? size : 1) / (double)rate);
}

static uint64_t to_fixed(double v, int shift) {
    double f = v * (double)(UINT64_C(1) << shift) + 0.5;
    return f >= 0x1p63 ? UINT64_C(1) << 63 : (uint64_t)f;
}

static uint64_t from_fixed(uint64_t v, int shift) {
    return (v >> shift) + ((v >> (shift - 1)) & 1); /* to the nearest */
}

bool gm_profile_due(gm_mcache *c, size_t size) {
    long long rate = LOAD_RELAXED(&gm_opt.profile_rate);
    if (rate <= 0 || in_profile || c == &gm_nocache)
        return false;
    /* Rate 1 samples every allocation at once, as Go's mallocgc does,
     * whatever a countdown drawn at an earlier rate still holds. */
    if (rate != 1 && c->next_sample > (int64_t)size) {
        c->next_sample -= (int64_t)size;
        return false;
    }
    c->next_sample = next_interval(c, rate);
    return true;
}

/* ---- records ---------------------------------------------------------------- */

static void prof_init_locked(void) {
    if (prof_inited)
        return;
    gm_fixalloc_init(&bucketalloc, sizeof(gm_bucket), &gm_mheap.other_sys);
    gm_fixalloc_init(&sampledalloc, sizeof(gm_sampled), &gm_mheap.other_sys);
    STORE_RELAXED(&prof_inited, true);
}

/* Is pc in the allocator's own shared library?  When the allocator is
 * linked into the program itself (the C tests), nothing is skipped: its
 * frames cannot be told from the program's. */
/* dl_iterate_phdr visits the program first: its lowest mapped address. */
static int program_base(struct dl_phdr_info *info, size_t size, void *out) {
    (void)size;
    uintptr_t low = UINTPTR_MAX;
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_LOAD && info->dlpi_phdr[i].p_vaddr < low)
            low = info->dlpi_phdr[i].p_vaddr;
    *(uintptr_t *)out = info->dlpi_addr + (low == UINTPTR_MAX ? 0 : low);
    return 1;
}

static bool own_frame(const void *pc) {
    uintptr_t base = LOAD_RELAXED(&own_base);
    Dl_info info;
    if (base == 0 && dladdr((const void *)&gm_profile_alloc, &info) != 0) {
        uintptr_t program = 0;
        dl_iterate_phdr(program_base, &program);
        base = (uintptr_t)info.dli_fbase == program ? 1 : (uintptr_t)info.dli_fbase;
        STORE_RELAXED(&own_base, base);
    }
    return base > 1 && dladdr(pc, &info) != 0 && (uintptr_t)info.dli_fbase == base;
}

static uint64_t stack_hash(const void *const *stk, uint32_t n) {
    uint64_t h = 0xcbf29ce484222325u;
    for (uint32_t i = 0; i < n; i++)
        h = (h ^ (uint64_t)(uintptr_t)stk[i]) * 0x100000001b3u;
    return h ^ n;
}

static gm_bucket *find_bucket(const void *const *stk, uint32_t n) {
    uint64_t h = stack_hash(stk, n);
    gm_bucket **chain = &buckets[h % BUCKET_TABLE];
    for (gm_bucket *b = *chain; b != NULL; b = b->next)
        if (b->hash == h && b->nstack == n && memcmp(b->stack, stk, n * sizeof stk[0]) == 0)
            return b;
    gm_bucket *b = gm_fixalloc_alloc(&bucketalloc);
    if (b == NULL)
        return NULL;
    b->hash = h;
    b->nstack = n;
    memcpy(b->stack, stk, n * sizeof stk[0]);
    b->next = *chain;
    *chain = b;
    b->allnext = allbuckets;
    allbuckets = b;
    nbuckets++;
    return b;
}

static gm_sampled **addr_chain(uintptr_t a) { return &sampled[(a >> 4) * 0x9E3779B97F4A7C15u >> 52]; }

void gm_profile_alloc(void *p, size_t size) {
    if (p == NULL)
        return;
    void *frames[GM_PROFILE_DEPTH + 8];
    in_profile = 1; /* backtrace() may allocate (its first call loads libgcc) */
    int n = backtrace(frames, GM_PROFILE_DEPTH + 8);
    in_profile = 0;
    uintptr_t a = (uintptr_t)p;
    gm_mspan *s = gm_span_of(a);
    if (s == NULL)
        return;
    uint64_t bytes = s->sizeclass != 0 ? s->elemsize : s->npages * PAGE_SIZE;
    /* Sampled by the countdown of the requested size, at the rate now. */
    double weight = sample_weight(size, LOAD_RELAXED(&gm_opt.profile_rate));
    uint64_t est_objects = to_fixed(weight, EST_OBJECTS_SHIFT);
    uint64_t est_bytes = to_fixed(weight * (double)bytes, EST_BYTES_SHIFT);
    /* The allocator's own frames go: the stack starts at its caller.  (Not
     * under prof_lock: dladdr takes the loader's lock, which a thread in
     * dlopen may hold while it mallocs.) */
    int skip = 0;
    while (skip < n && own_frame(frames[skip]))
        skip++;
    pthread_mutex_lock(&prof_lock);
    prof_init_locked();
    uint32_t depth = (uint32_t)(n - skip < GM_PROFILE_DEPTH ? n - skip : GM_PROFILE_DEPTH);
    gm_bucket *b = find_bucket((const void *const *)&frames[skip], depth);
    gm_sampled *r = b != NULL ? gm_fixalloc_alloc(&sampledalloc) : NULL;
    if (r != NULL) {
        b->alloc_objects++;
        b->alloc_bytes += bytes;
        b->est_alloc_objects += est_objects;
        b->est_alloc_bytes += est_bytes;
        r->addr = a;
        r->bytes = bytes;
        r->est_objects = est_objects;
        r->est_bytes = est_bytes;
        r->b = b;
        r->tracked = false;
        gm_sampled **chain = addr_chain(a);
        r->next = *chain;
        *chain = r;
        /* Marked under the lock, so that a free() of p on another thread
         * finds the record once it sees the mark. */
        if (s->sizeclass != 0)
            gm_set_objstate(gm_objstate_ptr(s, gm_span_index(s, a)), OBJ_SAMPLED);
        else
            STORE_RELAXED(&s->sampled, 1);
    }
    pthread_mutex_unlock(&prof_lock);
    if (r != NULL)
        report_alloc(r, p, size, (const void *const *)&frames[skip], depth);
}

void gm_profile_free(const void *p) {
    uintptr_t a = (uintptr_t)p;
    bool tracked = false;
    uint64_t bytes = 0, est_bytes = 0;
    pthread_mutex_lock(&prof_lock);
    for (gm_sampled **pp = addr_chain(a); *pp != NULL; pp = &(*pp)->next) {
        gm_sampled *r = *pp;
        if (r->addr == a) {
            tracked = r->tracked, bytes = r->bytes, est_bytes = r->est_bytes;
            r->b->free_objects++;
            r->b->free_bytes += r->bytes;
            r->b->est_free_objects += r->est_objects;
            r->b->est_free_bytes += r->est_bytes;
            *pp = r->next;
            gm_fixalloc_free(&sampledalloc, r);
            break;
        }
    }
    pthread_mutex_unlock(&prof_lock);
    if (tracked)
        report_free(p, bytes, est_bytes);
}

void gm_profile_forget_span(gm_mspan *s) {
    if (!LOAD_RELAXED(&prof_inited))
        return;
    if (s->sizeclass == 0) {
        if (LOAD_RELAXED(&s->sampled)) {
            STORE_RELAXED(&s->sampled, 0);
            gm_profile_free((const void *)s->startAddr);
        }
        return;
    }
    /* memchr over the state bytes: as cheap as the memset that follows it
     * in gm_heap_destroy, whatever the number of objects. */
    size_t nst = (s->npages * PAGE_SIZE) >> STATE_SHIFT;
    for (uint8_t *q = memchr(s->objstate, OBJ_SAMPLED, nst); q != NULL;
         q = memchr(q + 1, OBJ_SAMPLED, nst - (size_t)(q + 1 - s->objstate))) {
        uint8_t expect = OBJ_SAMPLED;
        /* A racing free (a bug of the program's) loses the byte to us, or
         * took the object out of the profile itself. */
        if (__atomic_compare_exchange_n(q, &expect, s->liveval, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            gm_profile_free((const void *)(s->startAddr + ((uintptr_t)(q - s->objstate) << STATE_SHIFT)));
    }
}

void gm_profile_set_rate(long long rate) {
    if (rate > 0) {
        /* Load the unwinder now rather than inside a malloc. */
        void *frame[2];
        in_profile = 1;
        (void)backtrace(frame, 2);
        in_profile = 0;
    }
    (void)rate;
    gm_route_update();
}

/* ---- reading --------------------------------------------------------------- */

/* The stack of a live sampled object.  The state byte (a large span's
 * sampled flag) says whether p is in the profile now: it is set under
 * prof_lock after the record is made, and cleared by free() before the
 * record goes (under prof_lock too), so, read under the lock, it agrees
 * with the table.  Reading it first, without the lock, keeps objects that
 * were never sampled (nearly all of them) off the lock. */
static bool sampled_now(uintptr_t a) {
    gm_mspan *s = gm_span_of(a);
    if (s == NULL)
        return false;
    if (s->sizeclass == 0)
        return LOAD_RELAXED(&s->sampled) != 0;
    return gm_objstate(s, gm_span_index(s, a)) == OBJ_SAMPLED;
}

int gm_profile_stack_of(const void *ptr, const void **stack, int n) {
    if (n < 0 || (stack == NULL && n > 0)) {
        errno = EINVAL;
        return -1;
    }
    uintptr_t a = (uintptr_t)ptr;
    if (gm_check(ptr) != GM_OK || !sampled_now(a))
        return 0;
    int depth = 0;
    pthread_mutex_lock(&prof_lock);
    if (sampled_now(a))
        for (const gm_sampled *r = *addr_chain(a); r != NULL; r = r->next)
            if (r->addr == a) { /* the newest record of the address: the chain grows at its head */
                depth = (int)r->b->nstack;
                if (n > 0)
                    memcpy(stack, r->b->stack, (size_t)(depth < n ? depth : n) * sizeof stack[0]);
                break;
            }
    pthread_mutex_unlock(&prof_lock);
    return depth;
}


int gm_profile_read_records(struct gm_profile_record *out, int n) {
    gm_ensure_init();
    pthread_mutex_lock(&prof_lock);
    int i = 0;
    for (gm_bucket *b = allbuckets; b != NULL; b = b->allnext, i++) {
        if (i >= n || out == NULL)
            continue;
        struct gm_profile_record *r = &out[i];
        r->alloc_objects = b->alloc_objects;
        r->alloc_bytes = b->alloc_bytes;
        r->free_objects = b->free_objects;
        r->free_bytes = b->free_bytes;
        r->alloc_objects_est = from_fixed(b->est_alloc_objects, EST_OBJECTS_SHIFT);
        r->alloc_bytes_est = from_fixed(b->est_alloc_bytes, EST_BYTES_SHIFT);
        r->free_objects_est = from_fixed(b->est_free_objects, EST_OBJECTS_SHIFT);
        r->free_bytes_est = from_fixed(b->est_free_bytes, EST_BYTES_SHIFT);
        r->nstack = b->nstack;
        memset(r->stack, 0, sizeof r->stack);
        memcpy(r->stack, b->stack, b->nstack * sizeof b->stack[0]);
    }
    pthread_mutex_unlock(&prof_lock);
    return i;
}

const char *gm_profile_symbol(const void *pc, char *buf, size_t len) {
    Dl_info info;
    if (buf == NULL || len == 0)
        return buf;
    if (dladdr(pc, &info) == 0 || info.dli_fname == NULL) {
        snprintf(buf, len, "%p", pc);
    } else {
        const char *obj = strrchr(info.dli_fname, '/');
        obj = obj != NULL ? obj + 1 : info.dli_fname;
        if (info.dli_sname != NULL)
            snprintf(buf, len, "%s(%s+0x%lx)", obj, info.dli_sname,
                     (unsigned long)((uintptr_t)pc - (uintptr_t)info.dli_saddr));
        else
            snprintf(buf, len, "%s(+0x%lx)", obj, (unsigned long)((uintptr_t)pc - (uintptr_t)info.dli_fbase));
    }
    return buf;
}

/* The top sites by bytes in use (estimated), for print_stats at exit.  No
 * allocation; symbols are looked up after the lock is dropped (dladdr takes
 * the loader's lock, which a thread in dlopen may hold while it mallocs). */
#define PRINT_TOP 16
void gm_profile_print(int fd, int top) {
    struct {
        uint64_t objs, bytes, allocs, alloc_bytes; /* estimates */
        uint64_t samples, alloc_samples;
        uint32_t nstack;
        const void *stack[4];
    } best[PRINT_TOP];
    int nbest = 0;
    if (top > PRINT_TOP)
        top = PRINT_TOP;
    pthread_mutex_lock(&prof_lock);
    uint32_t sites = nbuckets;
    for (const gm_bucket *b = allbuckets; b != NULL; b = b->allnext) {
        uint64_t bytes = from_fixed(b->est_alloc_bytes, EST_BYTES_SHIFT) -
                         from_fixed(b->est_free_bytes, EST_BYTES_SHIFT);
        int at = nbest;
        while (at > 0 && best[at - 1].bytes < bytes)
            at--;
        if (at >= top)
            continue;
        if (nbest < top)
            nbest++;
        memmove(&best[at + 1], &best[at], (size_t)(nbest - 1 - at) * sizeof best[0]);
        best[at].objs = from_fixed(b->est_alloc_objects, EST_OBJECTS_SHIFT) -
                        from_fixed(b->est_free_objects, EST_OBJECTS_SHIFT);
        best[at].bytes = bytes;
        best[at].allocs = from_fixed(b->est_alloc_objects, EST_OBJECTS_SHIFT);
        best[at].alloc_bytes = from_fixed(b->est_alloc_bytes, EST_BYTES_SHIFT);
        best[at].samples = b->alloc_objects - b->free_objects;
        best[at].alloc_samples = b->alloc_objects;
        best[at].nstack = b->nstack < 4 ? b->nstack : 4;
        memcpy(best[at].stack, b->stack, best[at].nstack * sizeof b->stack[0]);
    }
    pthread_mutex_unlock(&prof_lock);
    char line[1200], sym[256];
    int n = snprintf(line, sizeof line,
                     "pygomalloc: heap profile, 1 sample per %lld bytes on average, %u call sites; "
                     "objects and bytes estimated from the samples\n",
                     LOAD_RELAXED(&gm_opt.profile_rate), sites);
    (void)!write(fd, line, (size_t)n);
    for (int k = 0; k < nbest; k++) {
        n = snprintf(line, sizeof line, "  in use %llu objects / %llu bytes (%llu samples), allocated %llu objects / %llu bytes (%llu samples):",
                     (unsigned long long)best[k].objs, (unsigned long long)best[k].bytes,
                     (unsigned long long)best[k].samples, (unsigned long long)best[k].allocs,
                     (unsigned long long)best[k].alloc_bytes, (unsigned long long)best[k].alloc_samples);
        for (uint32_t f = 0; f < best[k].nstack && n < (int)sizeof line - 300; f++)
            n += snprintf(line + n, sizeof line - (size_t)n, " %s", gm_profile_symbol(best[k].stack[f], sym, sizeof sym));
        line[n++] = '\n';
        (void)!write(fd, line, (size_t)n);
    }
}

/* fork(): the child must not inherit the lock held. */
void gm_profile_fork_prepare(void) { pthread_mutex_lock(&prof_lock); }
void gm_profile_fork_parent(void) { pthread_mutex_unlock(&prof_lock); }
void gm_profile_fork_child(void) { pthread_mutex_init(&prof_lock, NULL); }
