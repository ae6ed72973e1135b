/*
 * gomalloc.h: the public C API of pygomalloc.
 *
 * pygomalloc is a memory allocator modelled on the Go runtime allocator
 * (see csrc/malloc.c for the design), with an explicit free from any
 * thread.  This header has no dependencies beyond the C library and is the
 * only header a C program or a Python extension needs.
 *
 * Errors.  Functions that return a pointer return NULL and set errno to
 * ENOMEM when memory cannot be had (sizes that overflow included).
 * Functions given a pointer that pygomalloc did not hand out, a pointer into
 * the middle of an object, or an object that is already free, either abort
 * with a message on stderr (the default: continuing could corrupt the heap of
 * a program that has already lost track of its memory) or, when the option
 * "abort_on_error" is 0, leave the heap untouched and report the error
 * (gm_free_checked returns the code; gm_free and gm_realloc set errno to
 * EINVAL).  The *_checked functions never abort on bad input.
 */
#ifndef GOMALLOC_H
#define GOMALLOC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define GM_API __attribute__((visibility("default")))
#else
#define GM_API
#endif

/* Number of size classes, class 0 (large objects) included. */
#define GM_NUM_SIZE_CLASSES 67
/* Largest size served by a size class; larger requests get their own span. */
#define GM_MAX_SMALL_SIZE 32768

/* Error codes returned by gm_free_checked and gm_check. */
enum gm_error {
    GM_OK = 0,
    GM_ERR_NOT_OURS = 1,    /* the pointer is not in memory pygomalloc manages */
    GM_ERR_INTERIOR = 2,    /* the pointer is inside an object, not its start */
    GM_ERR_NOT_ALLOCATED = 3, /* the object is free (double free) or was never handed out */
};

GM_API void *gm_malloc(size_t size);
GM_API void *gm_calloc(size_t nmemb, size_t size);
GM_API void *gm_realloc(void *ptr, size_t size);
GM_API void gm_free(void *ptr);
/* Like gm_free, but returns an enum gm_error instead of aborting. */
GM_API int gm_free_checked(void *ptr);
/* GM_OK if ptr is the start of a live object, else the error gm_free would report. */
GM_API int gm_check(const void *ptr);
GM_API const char *gm_strerror(int code);
/* alignment must be a power of two; returns NULL/EINVAL otherwise. */
GM_API void *gm_aligned_alloc(size_t alignment, size_t size);
/* POSIX semantics: returns 0, EINVAL or ENOMEM; does not set errno. */
GM_API int gm_posix_memalign(void **out, size_t alignment, size_t size);
/* Bytes usable at ptr (>= the requested size); 0 for NULL or a pointer not ours. */
GM_API size_t gm_usable_size(const void *ptr);
/* 1 if ptr lies in memory pygomalloc manages (any address may be asked), else 0. O(1). */
GM_API int gm_owns(const void *ptr);
/* For an allocator that wraps another: if ptr lies in pygomalloc's arenas,
 * free it as gm_free does and return 1; else leave it alone and return 0
 * (the caller gives it to the allocator it came from).  NULL: 0. */
GM_API int gm_free_owned(void *ptr);
/* Flush the calling thread's cache and the transfer caches, and return
 * every free page to the OS.  Returns the number of bytes released by this
 * call. */
GM_API size_t gm_release(void);
/* Flush the calling thread's cache of free objects back to the spans, and
 * the transfer caches (batches other threads flushed) with it: in a
 * single-threaded program nothing free is cached afterwards. */
GM_API void gm_thread_flush(void);

/* A row of gm_stats.by_size: one size class.  Only ever grows at the end. */
struct gm_size_class_stats {
    /* BEGIN GENERATED gm_size_class_stats: tools/mktables.py from tools/tables.py, do not edit */
    uint64_t size;     /* Bytes per object of this class (0 for class 0) */
    uint64_t npages;   /* Pages (8 KiB) per span of this class */
    uint64_t mallocs;  /* Objects handed out, ever */
    uint64_t frees;    /* Objects given back, ever */
    uint64_t spans;    /* Spans of this class in use (class 0: one per large object) */
    /* Objects those spans hold when full: capacity - (mallocs - frees) slots hold no live object
     * (free in spans, or cached on lists) */
    uint64_t capacity;
    /* END GENERATED gm_size_class_stats */
};

/*
 * Figures in the vocabulary of Go's runtime.MemStats (README.md, "Statistics",
 * has the table).  Exact when read from a quiescent process (no thread
 * allocating or freeing at the same time); under concurrent use each figure
 * is a recent value.  Sizes are in bytes.
 *
 * The struct starts with its size and only ever grows at the end, so that a
 * program built with an older header keeps working: it gets the figures it
 * knows.  See gm_read_stats.
 */
struct gm_stats {
    /* BEGIN GENERATED gm_stats: tools/mktables.py from tools/tables.py, do not edit */
    /* C only: set by the caller to sizeof(struct gm_stats) before gm_read_stats, which writes that
     * many bytes at most and sets it to the library's own size. */
    uint64_t size;
    /* Memory obtained from the OS, and the heap. */
    uint64_t sys;               /* heap_sys + mspan_sys + mcache_sys + other_sys: everything from the OS */
    uint64_t heap_reserved;     /* Address space reserved (PROT_NONE or mapped) for arenas */
    uint64_t heap_sys;          /* Arena bytes mapped (Prepared or Ready): heap_idle + heap_inuse */
    uint64_t heap_alloc;        /* Bytes of live objects (rounded up to their size class) */
    uint64_t heap_idle;         /* Bytes in free page runs */
    uint64_t heap_inuse;        /* Bytes in spans holding objects */
    uint64_t heap_released;     /* Part of heap_idle returned to the OS (Prepared) */
    uint64_t heap_objects;      /* Live objects: mallocs - frees */
    uint64_t mallocs;           /* Objects allocated, ever */
    uint64_t frees;             /* Objects freed, ever */
    uint64_t total_alloc;       /* Bytes allocated, ever (rounded up to their size class) */
    uint64_t large_objects;     /* Live objects larger than GM_MAX_SMALL_SIZE (a span each) */
    /* Metadata. */
    uint64_t mspan_inuse;       /* Bytes of span structures in use */
    uint64_t mspan_sys;         /* Bytes obtained from the OS for span structures */
    uint64_t mcache_inuse;      /* Bytes of per-thread caches in use */
    uint64_t mcache_sys;        /* Bytes obtained from the OS for per-thread caches */
    uint64_t other_sys;         /* Other metadata: arena maps, heapArena records, state maps, bitmaps */
    /* Caches, arenas, threads, errors. */
    uint64_t cached_bytes;      /* Part of heap_inuse on per-thread free lists: free, not yet in spans */
    /* Part of heap_inuse in the transfer caches: lists a thread flushed, kept whole until it runs
     * out (any thread may take a consumer's) (free, not in spans) */
    uint64_t transfer_bytes;
    uint64_t num_arenas;        /* 64 MiB heap arenas holding mapped memory (each has a heapArena record) */
    uint64_t num_threads;       /* Live per-thread caches */
    uint64_t bad_frees;         /* Invalid frees detected (and refused, with abort_on_error 0) */
    /* OS state transitions (csrc/mem_linux.c): calls. */
    uint64_t n_sys_reserve;     /* sysReserve calls: None -> Reserved */
    uint64_t n_sys_map;         /* sysMap calls: Reserved -> Prepared */
    uint64_t n_sys_used;        /* sysUsed calls: Prepared -> Ready */
    uint64_t n_sys_unused;      /* sysUnused calls: Ready -> Prepared */
    uint64_t n_sys_free;        /* sysFree calls: any state -> None */
    uint64_t n_sys_fault;       /* sysFault calls: back to Reserved */
    /* ... and their bytes. */
    uint64_t bytes_sys_reserve; /* Bytes passed to sysReserve */
    uint64_t bytes_sys_map;     /* Bytes passed to sysMap */
    uint64_t bytes_sys_used;    /* Bytes passed to sysUsed */
    uint64_t bytes_sys_unused;  /* Bytes passed to sysUnused */
    uint64_t bytes_sys_free;    /* Bytes passed to sysFree */
    uint64_t bytes_sys_fault;   /* Bytes passed to sysFault */
    /* Scavenger. */
    uint64_t scavenge_cycles;   /* Scavenger passes that released something */
    uint64_t scavenged_bytes;   /* Bytes returned to the OS, ever */
    uint64_t phys_page_size;    /* Physical page size read at start-up */
    uint64_t huge_page_size;    /* Transparent huge page size (0 if none) */
    /* The tiny allocator (option tiny): objects of 1 to 8 bytes in shared 16-byte blocks, which
     * count as objects of the 16-byte class above. */
    uint64_t tiny_mallocs;      /* Tiny objects allocated, ever */
    uint64_t tiny_frees;        /* Tiny objects freed, ever */
    /* Per size class. */
    /* One row per size class, indexed by class; class 0 is large objects */
    struct gm_size_class_stats by_size[GM_NUM_SIZE_CLASSES];
    /* END GENERATED gm_stats */
};

/*
 * Read the statistics.  The caller sets st->size to sizeof(struct gm_stats)
 * (the size of the struct it was built with) first:
 *
 *     struct gm_stats st = {.size = sizeof st};
 *     gm_read_stats(&st);
 *
 * gm_read_stats writes exactly min(st->size, the library's size) bytes at
 * st: the figures that fit (a caller built with an older, smaller struct
 * gets its prefix, nothing past it is written; a caller with a newer,
 * larger struct gets the library's figures and its further fields are left
 * as they were), and st->size is then the library's sizeof(struct
 * gm_stats).  Returns 0; EINVAL, with only st->size written (the library's
 * size), when st->size is smaller than the size member itself (a caller
 * may pass 0 to learn the size); EINVAL for st == NULL.
 */
GM_API int gm_read_stats(struct gm_stats *st);

/*
 * Options, by name (README.md, "Options", has the table).  Each can also be
 * set with an environment variable GOMALLOC_<NAME in upper case> read at
 * start-up: a number (with a K, M or G suffix: times 2^10, 2^20, 2^30), or
 * on/off, true/false, yes/no for 1/0.  A variable whose value is not
 * accepted, and a GOMALLOC_ variable that names no option, are ignored with
 * a warning on stderr, one line each:
 *
 *     pygomalloc: GOMALLOC_DECAY_MS=abc ignored: expected a number of
 *     milliseconds from 0 to 3600000 (K, M, G suffixes allowed)
 *
 * and listed by gm_option_rejected.  (GOMALLOC_PRELOAD_LIB and
 * GOMALLOC_DEBUG_* are not options and are not checked.)
 *
 * gm_option_set and gm_option_get return 0, or EINVAL for an unknown name
 * or a value out of range (the option keeps its value).
 */
GM_API int gm_option_set(const char *name, long long value);
GM_API int gm_option_get(const char *name, long long *value);
/* Name of option i (0-based), or NULL past the last. */
GM_API const char *gm_option_name(int i);
/* What option `name` accepts, e.g. "a number of milliseconds from 0 to
 * 3600000" or "0 or 1", into buf (len bytes, always NUL-terminated, cut if
 * too short).  Returns 0, or EINVAL for an unknown name (buf is then ""). */
GM_API int gm_option_describe(const char *name, char *buf, size_t len);
/* The i-th (0-based) GOMALLOC_ variable ignored at start-up: its name
 * ("GOMALLOC_DECAY_MS"), its value ("abc") and why ("expected a number of
 * ..." or "unknown option; did you mean GOMALLOC_...?"), as on stderr.
 * Returns 0, or -1 past the last.  The strings are the library's and live
 * as long as the process; values longer than 64 bytes are cut ("...").  The
 * first GM_OPTION_REJECTED_MAX are kept (stderr has them all). */
#define GM_OPTION_REJECTED_MAX 32
GM_API int gm_option_rejected(int i, const char **variable, const char **value, const char **reason);

/*
 * Heap invariant checker: walks every arena, span and per-thread cache and
 * checks the invariants written above the structures in csrc/gm_internal.h.
 * Returns 0 when the heap is consistent; otherwise prints what is wrong to
 * stderr and returns the number of violations.  Takes every lock: call it
 * from a quiescent point.
 */
GM_API int gm_check_heap(void);

/*
 * Heap profile (Go's MemProfile): with the option profile_rate = R > 0, one
 * allocation per R bytes on average (exponentially spaced, so every byte is
 * equally likely to be sampled) is recorded with its call stack.  Records
 * are per distinct stack, with the samples' objects and bytes (size class
 * sizes): allocated ever, and freed since; and the estimates of all the
 * allocations they stand for (each sample of an allocation of s bytes
 * counts 1/(1 - exp(-s/R)) objects, and as many times its bytes: unbiased,
 * and exact when R = 1, where every allocation is sampled).  Off by default;
 * on, every small malloc takes the slow path (about twice the instructions).
 */
#define GM_PROFILE_DEPTH 32
struct gm_profile_record {
    uint64_t alloc_objects, alloc_bytes; /* sampled allocations from this stack, ever */
    uint64_t free_objects, free_bytes;   /* of those, freed since */
    uint32_t nstack;                     /* frames in stack */
    const void *stack[GM_PROFILE_DEPTH]; /* return addresses, the allocation's caller first */
    uint64_t alloc_objects_est, alloc_bytes_est; /* estimated allocations from this stack, ever */
    uint64_t free_objects_est, free_bytes_est;   /* of those, freed since (<= the above) */
};
/* Copy up to n records into out, an array of n records of record_size
 * bytes each: sizeof(struct gm_profile_record) as the caller was built.
 * The record only ever grows at the end; as gm_read_stats does, each record
 * gets exactly min(record_size, the library's size) bytes (a caller built
 * with an older, smaller record gets the fields it knows, nothing past them
 * is written; a newer, larger one keeps its further fields as they were).
 * out may be NULL with n = 0, to count.  Returns the number of records the
 * profile holds, which may be more than n; -1 with errno EINVAL if n < 0,
 * or n > 0 with out NULL or record_size 0; -1 with errno ENOMEM if a record
 * size other than the library's needs memory that cannot be had. */
GM_API int gm_profile_read(struct gm_profile_record *out, int n, size_t record_size);
/* "object(symbol+0xoffset)" for a code address, into buf of len bytes;
 * returns buf. */
GM_API const char *gm_profile_symbol(const void *pc, char *buf, size_t len);
/* The call stack of ptr's allocation, if ptr is a live object the profile
 * sampled: its frames (the allocation's caller first, as in a record) go
 * into stack, n at most, and their number is returned (more than n when
 * stack is too short); 0 when ptr is not a live sampled object (never
 * sampled, freed, not an object's start, not ours); -1 with errno EINVAL if
 * n < 0, or stack is NULL with n > 0.  Any thread; ptr must not be freed
 * meanwhile.  (Escape reports: pygomalloc's scopes group what outlived them
 * by these stacks.) */
GM_API int gm_profile_stack_of(const void *ptr, const void **stack, int n);

/*
 * ---- Heaps -------------------------------------------------------------------
 *
 * A heap holds allocations that belong together (a request, a document, a
 * model): their memory comes from spans of the heap's own, so that the
 * heap can have a budget (its allocations fail with ENOMEM, and no other,
 * when its spans would pass it), report what it holds, and be thrown away
 * in one call.  malloc and the gm_ functions above allocate from the
 * default heap; gm_free frees any heap's object, from any thread.
 * Allocating from a heap takes no lock in the common case (each thread has
 * a cache per heap it uses).
 *
 * gm_heap_t is an opaque handle: a destroyed heap's handle is refused
 * (EINVAL), never followed.  Up to 4095 heaps may exist at once.
 */
typedef struct gm_heap_handle gm_heap_t;

struct gm_heap_options {
    size_t size;           /* sizeof(struct gm_heap_options): later versions only append */
    const char *name;      /* shown in statistics and reports (copied; may be NULL) */
    uint64_t limit;        /* bytes of spans the heap may hold; 0: no limit of its own */
    int fault_on_destroy;  /* 1: gm_heap_destroy makes the heap's memory PROT_NONE for a while
                            * (a dangling pointer then crashes at once), as Go's arenas do */
};

/* A new heap (opts may be NULL: no name, no limit).  NULL with errno
 * ENOMEM, EINVAL (bad options) or EAGAIN (too many heaps). */
GM_API gm_heap_t *gm_heap_new(const struct gm_heap_options *opts);
/* The default heap's handle (never destroyed). */
GM_API gm_heap_t *gm_heap_default(void);
/* As gm_malloc and friends, from heap h.  NULL with errno ENOMEM (also
 * over the heap's limit) or EINVAL (h destroyed or not a heap). */
GM_API void *gm_heap_malloc(gm_heap_t *h, size_t size);
GM_API void *gm_heap_calloc(gm_heap_t *h, size_t nmemb, size_t size);
/* ptr (NULL, or a live object of any heap) moves into heap h if it has to move. */
GM_API void *gm_heap_realloc(gm_heap_t *h, void *ptr, size_t size);
GM_API void *gm_heap_aligned_alloc(gm_heap_t *h, size_t alignment, size_t size);
/* The heap of the live object ptr, or NULL (ptr is not a live object). */
GM_API gm_heap_t *gm_heap_of(const void *ptr);
/* Free ptr, which must be a live object of heap h: GM_OK, or an enum
 * gm_error (GM_ERR_NOT_OURS when it lives in another heap, too); never aborts. */
GM_API int gm_heap_free(gm_heap_t *h, void *ptr);
/* Free every object of heap h at once (in time proportional to its spans,
 * not its objects) and the heap itself.  Returns 0; EINVAL for a bad or
 * destroyed handle (destroying twice is an error, not a crash); EBUSY when
 * h has live objects and was some thread's default heap (a scope) or was
 * given to gm_heap_keep_live: they may be in use anywhere, so they are not
 * freed under their users (use gm_heap_delete).  Allocations on other threads racing the destroy fail
 * with EINVAL. */
GM_API int gm_heap_destroy(gm_heap_t *h);
/* The heap goes, its live objects stay: they become the default heap's
 * (freed by gm_free as before).  0 or EINVAL. */
GM_API int gm_heap_delete(gm_heap_t *h);
/* Say that h's objects are handed to code that frees them on its own
 * schedule (numpy arrays, for one: pygomalloc.numpy): from now on
 * gm_heap_destroy(h) refuses with EBUSY while h has live objects, as it
 * does for a heap that was a scope, instead of freeing them under their
 * users (gm_heap_delete still works).  The check is made when destroy is
 * called: a destroy racing allocations from h on other threads is a bug of
 * the program's, as for any heap.  0 or EINVAL (bad handle, or the default
 * heap, which is never destroyed). */
GM_API int gm_heap_keep_live(gm_heap_t *h);

struct gm_heap_stats {
    uint64_t size;          /* set by the caller to sizeof(struct gm_heap_stats), as for gm_read_stats */
    uint64_t limit;         /* the heap's limit (0: none) */
    uint64_t inuse;         /* bytes of spans the heap holds */
    uint64_t peak_inuse;    /* the most inuse has been */
    uint64_t alloc;         /* bytes of live objects (rounded up to their size class) */
    uint64_t objects;       /* live objects */
    uint64_t mallocs;       /* objects allocated, ever */
    uint64_t frees;         /* objects freed, ever */
    uint64_t total_alloc;   /* bytes allocated, ever */
    uint64_t large_objects; /* live objects larger than GM_MAX_SMALL_SIZE */
    uint64_t cached_bytes;  /* part of inuse in the threads' caches for it (freed objects kept for reuse) */
    uint64_t num_caches;    /* threads' caches for it */
    char name[48];
    struct gm_size_class_stats by_size[GM_NUM_SIZE_CLASSES];
};
/* Fill *st for heap h (the default heap's handle included), as gm_read_stats
 * does: st->size first.  0 or EINVAL. */
GM_API int gm_heap_read_stats(gm_heap_t *h, struct gm_heap_stats *st);
/* Call fn(object, usable size, arg) for every live object of heap h, until
 * fn returns nonzero (returned).  No other thread may allocate from or free
 * into h meanwhile.  The default heap's visit walks its large objects in the
 * page map, and skips the blocks of the tiny allocator (option tiny).  0,
 * fn's nonzero value, ENOMEM, or EINVAL (bad handle). */
GM_API int gm_heap_visit(gm_heap_t *h, int (*fn)(void *ptr, size_t size, void *arg), void *arg);
/* Make h the calling thread's default heap: malloc (under the preload
 * library), gm_malloc and the interpreter's allocations under
 * pygomalloc.install() come from h until it is set back (NULL or
 * gm_heap_default() restore the default heap).  Returns the previous
 * default's handle, or NULL with errno EINVAL (bad handle: the thread's
 * default is unchanged).  A heap that has been a default is not destroyed
 * while it has live objects (EBUSY). */
GM_API gm_heap_t *gm_heap_set_default(gm_heap_t *h);
/* The calling thread's default heap. */
GM_API gm_heap_t *gm_heap_get_default(void);

/*
 * Observing the heap (README.md, "Seeing native memory").
 *
 * The sample hook.  While the heap profile samples (profile_rate > 0), hook
 * is called on the allocating thread for each sampled allocation (event
 * GM_SAMPLE_ALLOC), after the allocation is complete and outside every
 * allocator lock; allocations the hook itself makes are never sampled, and
 * frees it makes of sampled objects report nothing.  Returning 1 asks for
 * the GM_SAMPLE_FREE event of that object when it is freed (on the freeing
 * thread, before the object goes); 0 drops it.  est_bytes is the estimate of
 * the bytes the sample stands for (bytes / (1 - exp(-size/rate)), as the
 * profile counts it).  NULL removes the hook.  Set it once, or know that a
 * sample taken while it changes may see the old hook.
 */
enum gm_sample_event { GM_SAMPLE_ALLOC = 1, GM_SAMPLE_FREE = 2 };
struct gm_sample {
    const void *ptr;           /* the object */
    size_t size;               /* bytes asked (GM_SAMPLE_ALLOC) */
    uint64_t bytes;            /* bytes of its size class, or of its pages (large) */
    uint64_t est_bytes;        /* bytes this sample stands for (unbiased estimate) */
    uint32_t nstack;           /* frames in stack (0 for GM_SAMPLE_FREE) */
    const void *const *stack;  /* return addresses, the allocation's caller first */
};
typedef int (*gm_sample_hook)(void *ctx, int event, const struct gm_sample *s);
GM_API void gm_set_sample_hook(gm_sample_hook hook, void *ctx);

/*
 * The page map: one byte per 8 KiB page of every arena with mapped memory,
 * kept up to date by the allocator where pages change state (never on the
 * fast paths).  gm_page_map(i, &base) gives arena i (0-based, in the order
 * the arenas were first mapped; NULL past the last) and its base address:
 * GM_ARENA_PAGES bytes, page j at base + j * GM_PAGE_SIZE, written in
 * place while the program runs (read them as relaxed loads; a quiescent
 * process's map agrees with gm_read_stats).  Values: enum gm_page_state, or
 * 1 .. GM_NUM_SIZE_CLASSES-1 for a page of a span of that size class.
 */
#define GM_PAGE_SIZE 8192
#define GM_ARENA_PAGES 8192
enum gm_page_state {
    GM_PAGE_RESERVED = 0,    /* address space only (PROT_NONE): not mapped yet */
    GM_PAGE_LARGE = 0x80,    /* in use by a large object (a span of its own) */
    GM_PAGE_FREE = 0x81,     /* free, mapped and possibly resident (heap_idle - heap_released) */
    GM_PAGE_RELEASED = 0x82, /* free and returned to the OS (Prepared; part of heap_released) */
    GM_PAGE_FAULTED = 0x83,  /* free and PROT_NONE (option fault_on_free; part of heap_released) */
};
GM_API const uint8_t *gm_page_map(int i, uintptr_t *base);

/*
 * Memory pressure.  gm_pressure_add registers a threshold and returns its
 * id (>= 0), or -errno: kind GM_PRESSURE_BYTES fires when heap_inuse
 * reaches value bytes; GM_PRESSURE_MEMORY_LIMIT / _HARD_LIMIT when it
 * reaches value parts per million of that option (inactive while it is 0);
 * GM_PRESSURE_PSI when the kernel's PSI trigger "some value window_us" on
 * /proc/pressure/memory fires (value: stall microseconds); GM_PRESSURE_CGROUP
 * when the "high" count of the process's cgroup v2 memory.events grows.
 * Byte thresholds fire once per upward crossing and, with
 * GM_PRESSURE_FALLING, once when heap_inuse falls back below the level less
 * a sixteenth (the hysteresis that keeps a heap hovering at the level from
 * firing at every span).  The crossing is noticed where heap_inuse changes
 * (a span taken or given back: no cost on the fast paths) and only wakes a
 * watcher thread, which calls the handler: never from inside malloc.
 * Kernel triggers are watched by the same thread with poll(2) and inotify,
 * without polling in a loop.  The handler is called on the watcher thread,
 * one event at a time; count is how many crossings (or kernel events) the
 * event stands for since the last one of that threshold (they coalesce
 * while the handler runs).  After fork(), the child has no watcher until
 * gm_pressure_restart().
 */
enum gm_pressure_kind {
    GM_PRESSURE_BYTES = 0,
    GM_PRESSURE_MEMORY_LIMIT = 1,
    GM_PRESSURE_HARD_LIMIT = 2,
    GM_PRESSURE_PSI = 3,
    GM_PRESSURE_CGROUP = 4,
};
#define GM_PRESSURE_FALLING 1 /* flag: also report the fall back below the level */
#define GM_PRESSURE_MAX 16    /* thresholds at once */
struct gm_pressure_event {
    int id;              /* what gm_pressure_add returned */
    int kind;            /* enum gm_pressure_kind */
    int rising;          /* 1: crossed upward (or a kernel event); 0: fell back */
    uint64_t level;      /* the level in bytes (byte thresholds), else 0 */
    uint64_t heap_inuse; /* heap_inuse when the watcher looked */
    uint64_t count;      /* crossings or kernel events this event stands for */
    uint64_t value;      /* the cgroup's "high" count (GM_PRESSURE_CGROUP), else 0 */
};
typedef void (*gm_pressure_handler)(void *ctx, const struct gm_pressure_event *ev);
/* Set (or with NULL remove) the handler; starts the watcher thread.  0 or errno. */
GM_API int gm_set_pressure_handler(gm_pressure_handler handler, void *ctx);
GM_API int gm_pressure_add(int kind, uint64_t value, uint64_t window_us, int flags);
GM_API int gm_pressure_remove(int id);
GM_API int gm_pressure_restart(void);

/*
 * Container-aware limits.  memory_limit and hard_limit accept "auto"
 * (GOMALLOC_MEMORY_LIMIT=auto, or gm_option_set with GM_OPTION_AUTO): the
 * limit is then auto_memory_limit_percent (auto_hard_limit_percent) of the
 * process's cgroup v2 memory limit (the smallest memory.max or memory.high of
 * its cgroup and their ancestors; 0, no limit, outside a limited cgroup),
 * read at start-up and by gm_limits_refresh(), which returns that limit in
 * bytes (0: none).  gm_option_get gives the limit in force; gm_option_is_auto
 * says whether an option is auto (1), not (0), or -1 for an unknown name.
 */
#define GM_OPTION_AUTO (-1LL)
GM_API int gm_option_is_auto(const char *name);
GM_API uint64_t gm_limits_refresh(void);

/*
 * ---- Testing only ----------------------------------------------------------
 *
 * Fault injection in the OS layer (csrc/mem_linux.c), for tests of the
 * out-of-memory paths: from now on, every `every`-th call (1: every call)
 * of the kinds in `kinds` (GM_DEBUG_OS_* bits) fails as the kernel would
 * make it fail (mmap: ENOMEM; madvise: EAGAIN or ENOMEM), without reaching
 * the kernel.  Calls are counted in one process-wide counter, reset by each
 * call of this function, so a single-threaded sequence of operations fails
 * at the same points on every run.  every == 0 or kinds == 0 turns it off.
 * The environment variables GOMALLOC_DEBUG_FAIL_EVERY=N and
 * GOMALLOC_DEBUG_FAIL_KINDS (a number, or names separated by commas:
 * reserve, map, fault, alloc, unused, used, all; default all) set it at
 * start-up.  Not for production: allocations fail on purpose.
 */
#define GM_DEBUG_OS_RESERVE 0x01u /* mmap PROT_NONE reserving arena address space (sysReserve) */
#define GM_DEBUG_OS_MAP 0x02u     /* mmap MAP_FIXED read/write of reserved space (sysMap) */
#define GM_DEBUG_OS_FAULT 0x04u   /* mmap MAP_FIXED PROT_NONE (sysFault) */
#define GM_DEBUG_OS_ALLOC 0x08u   /* mmap of metadata: span structs, caches, arena records (sysAlloc) */
#define GM_DEBUG_OS_UNUSED 0x10u  /* madvise DONTNEED/FREE releasing free pages (sysUnused) */
#define GM_DEBUG_OS_USED 0x20u    /* madvise HUGEPAGE (sysUsed, option thp) */
#define GM_DEBUG_OS_ALL 0x3fu
GM_API void gm_debug_fail_os_calls(unsigned long every, unsigned kinds);
/* Calls failed on purpose since the last gm_debug_fail_os_calls. */
GM_API unsigned long gm_debug_os_failures(void);

/*
 * The C API of the Python package, through a PyCapsule: a Python extension
 * uses the allocator the package runs (the one pygomalloc.malloc and
 * pygomalloc.install() use) without linking to any library.  Include
 * <Python.h> first, add pygomalloc.get_include() to the include path, and
 * call gm_capi_import() once, with the GIL held, at module init:
 *
 *     static const struct gm_capi *gm;
 *     ...
 *     if ((gm = gm_capi_import()) == NULL)
 *         return NULL;  (an ImportError or RuntimeError is set)
 *     void *p = gm->malloc(100);
 *     gm->free(p);
 *
 * The functions are the gm_ functions of this header; they need no GIL.
 */
#define GM_CAPI_NAME "pygomalloc._C_API"
/* 2: gm_stats starts with its size (read_stats); profile_read takes the
 * record size.  3: the heaps (heap_*), profile_stack_of, profile_symbol. */
#define GM_CAPI_VERSION 3

struct gm_capi {
    unsigned int version; /* GM_CAPI_VERSION the package was built with */
    size_t size;          /* sizeof(struct gm_capi) there: later versions only append */
    void *(*malloc)(size_t size);
    void *(*calloc)(size_t nmemb, size_t size);
    void *(*realloc)(void *ptr, size_t size);
    void (*free)(void *ptr);
    int (*free_checked)(void *ptr);
    void *(*aligned_alloc)(size_t alignment, size_t size);
    size_t (*usable_size)(const void *ptr);
    int (*owns)(const void *ptr);
    int (*check)(const void *ptr);
    const char *(*strerror)(int code);
    size_t (*release)(void);
    void (*thread_flush)(void);
    int (*read_stats)(struct gm_stats *st);
    int (*option_get)(const char *name, long long *value);
    int (*option_set)(const char *name, long long value);
    int (*profile_read)(struct gm_profile_record *out, int n, size_t record_size);
    int (*free_owned)(void *ptr);
    /* Version 3. */
    gm_heap_t *(*heap_new)(const struct gm_heap_options *opts);
    gm_heap_t *(*heap_default)(void);
    void *(*heap_malloc)(gm_heap_t *h, size_t size);
    void *(*heap_calloc)(gm_heap_t *h, size_t nmemb, size_t size);
    void *(*heap_realloc)(gm_heap_t *h, void *ptr, size_t size);
    void *(*heap_aligned_alloc)(gm_heap_t *h, size_t alignment, size_t size);
    gm_heap_t *(*heap_of)(const void *ptr);
    int (*heap_free)(gm_heap_t *h, void *ptr);
    int (*heap_destroy)(gm_heap_t *h);
    int (*heap_delete)(gm_heap_t *h);
    int (*heap_read_stats)(gm_heap_t *h, struct gm_heap_stats *st);
    int (*heap_visit)(gm_heap_t *h, int (*fn)(void *ptr, size_t size, void *arg), void *arg);
    gm_heap_t *(*heap_set_default)(gm_heap_t *h);
    gm_heap_t *(*heap_get_default)(void);
    int (*profile_stack_of)(const void *ptr, const void **stack, int n);
    const char *(*profile_symbol)(const void *pc, char *buf, size_t len);
};

#ifdef Py_PYTHON_H
/* The package's C API, or NULL with a Python exception set.  GIL held.
 * A package of this header's version or a later one is accepted: the
 * struct only grows at the end, so everything this header names is there
 * and means what it says (a change that broke older callers would come
 * with a capsule of another name).  An older package lacks functions this
 * header has: refused. */
static inline const struct gm_capi *gm_capi_import(void) {
    const struct gm_capi *api = (const struct gm_capi *)PyCapsule_Import(GM_CAPI_NAME, 0);
    if (api == NULL)
        return NULL;
    if (api->version < GM_CAPI_VERSION || api->size < sizeof(struct gm_capi)) {
        PyErr_Format(PyExc_RuntimeError,
                     "pygomalloc C API version %u (%zu bytes) is older than this header's %d (%zu bytes): "
                     "upgrade pygomalloc",
                     api->version, api->size, GM_CAPI_VERSION, sizeof(struct gm_capi));
        return NULL;
    }
    return api;
}
#endif

#ifdef __cplusplus
}
#endif
#endif /* GOMALLOC_H */
