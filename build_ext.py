"""Build description of pygomalloc's native code, for pip.

The sources and compile flags live in one file, ``csrc/build.mk``, which
``csrc/Makefile`` includes and this module parses (``BUILD``).  From it:

* ``pygomalloc/_lib/libgomalloc.so``: the allocator core, the one instance
  of the allocator in a process.  It exports the gm_ API (gomalloc.h), each
  symbol with the version ``GOMALLOC_<abi_tag()>``.
* ``pygomalloc/_lib/libgomalloc_preload.so``: the ``LD_PRELOAD`` shim
  (``csrc/preload.c``): the malloc family, forwarding to libgomalloc.so, its
  DT_NEEDED (rpath ``$ORIGIN``).
* ``pygomalloc._gomalloc``: the cffi extension module (out-of-line API mode).
  It does not compile the core: it links to libgomalloc.so (DT_NEEDED, rpath
  ``$ORIGIN/_lib``), so its gm_ calls are resolved by the dynamic linker to
  the libgomalloc.so loaded in the process, the preloaded shim's included
  (the loader loads one object per soname).

``setup.py`` builds the two libraries with ``library_commands()`` before the
module (which links to the first) and hands ``ffibuilder`` to cffi
(``cffi_modules``): ``pip install .`` builds all three.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
PUBLIC_HEADER = CSRC / "gomalloc.h"
BUILD_DESCRIPTION = CSRC / "build.mk"
#: Where the libraries sit in the package, relative to the extension module.
LIBRARY_SUBDIR = "_lib"
CORE_LIBRARY = "libgomalloc.so"
PRELOAD_LIBRARY = "libgomalloc_preload.so"


def read_build_description(path: Path = BUILD_DESCRIPTION) -> dict[str, list[str]]:
    """The ``NAME := value`` lines of build.mk, ``$(NAME)`` expanded, values split."""
    names: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, value = line.partition(":=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name.strip()):
            raise ValueError(f"{path}:{number}: not a `NAME := value` line: {line!r}")
        names[name.strip()] = re.sub(r"\$\((\w+)\)", lambda m: names[m.group(1)], value).strip()
    return {name: value.split() for name, value in names.items()}


BUILD = read_build_description()


def abi_tag() -> str:
    """build.mk: the first 12 hex digits of the SHA-256 of gomalloc.h."""
    return hashlib.sha256(PUBLIC_HEADER.read_bytes()).hexdigest()[:12]


def version_script() -> str:
    """libgomalloc.so's version script: gm_* exported as GOMALLOC_<abi_tag()>, nothing else."""
    return f"GOMALLOC_{abi_tag()} {{ global: gm_*; local: *; }};\n"


def library_commands(cc: Sequence[str], out_dir: Path, map_file: Path,
                     cflags: Sequence[str] = (), ldflags: Sequence[str] = ()) -> dict[str, list[str]]:
    """The compiler commands of the two libraries (run in ``CSRC``), as csrc/Makefile's.

    *map_file* must hold ``version_script()``; libgomalloc.so must be built first.
    """
    shared = [*cc, *BUILD["SHARED_CFLAGS"], *cflags, *BUILD["LIBRARY_LDFLAGS"]]
    return {
        CORE_LIBRARY: [
            *shared, f"-Wl,-soname,{BUILD['SONAME'][0]}", f"-Wl,--version-script,{map_file}",
            "-o", str(out_dir / CORE_LIBRARY), *BUILD["CORE_SOURCES"], *ldflags,
        ],
        PRELOAD_LIBRARY: [
            *shared, "-o", str(out_dir / PRELOAD_LIBRARY), *BUILD["PRELOAD_SOURCES"],
            f"-L{out_dir}", "-lgomalloc", "-Wl,-rpath,$ORIGIN", *ldflags,
        ],
    }


# Thin C wrappers compiled into the extension module.  They traffic in
# uintptr_t addresses, so the Python layer never converts pointers, and they
# validate pointers with gm_check / gm_free_checked, so bad input from Python
# is reported as an error code and never aborts the process.
_PREAMBLE = r"""
#include <errno.h>
#include <stdlib.h>
#include "gomalloc.h"

/* Returned by the wrappers below when memory cannot be had; distinct from
 * every enum gm_error code. */
#define PGM_ERR_NOMEM (-1)

static uintptr_t pgm_malloc(size_t size)
{
    return (uintptr_t)gm_malloc(size);
}

static uintptr_t pgm_calloc(size_t nmemb, size_t size)
{
    return (uintptr_t)gm_calloc(nmemb, size);
}

/* GM_OK, PGM_ERR_NOMEM or EINVAL (alignment not a power of two). */
static int pgm_aligned_alloc(size_t alignment, size_t size, uintptr_t *out)
{
    void *p;

    errno = 0;
    p = gm_aligned_alloc(alignment, size);
    *out = (uintptr_t)p;
    if (p != NULL)
        return GM_OK;
    return errno == EINVAL ? EINVAL : PGM_ERR_NOMEM;
}

/* free(NULL) does nothing, as in C; otherwise an enum gm_error code. */
static int pgm_free(uintptr_t p)
{
    return p ? gm_free_checked((void *)p) : GM_OK;
}

/* realloc(NULL, n) allocates.  A bad pointer is refused with its enum
 * gm_error code before gm_realloc can see it; on PGM_ERR_NOMEM the old
 * object is untouched.  Size 0 gives a minimal object, as malloc(0) does:
 * gm_realloc(p, 0) frees p and returns NULL like glibc, which an API that
 * returns addresses and raises on NULL cannot express. */
static int pgm_realloc(uintptr_t p, size_t size, uintptr_t *out)
{
    void *q;
    int err;

    if (p != 0 && (err = gm_check((const void *)p)) != GM_OK)
        return err;
    q = gm_realloc((void *)p, size != 0 ? size : 1);
    *out = (uintptr_t)q;
    return q != NULL ? GM_OK : PGM_ERR_NOMEM;
}

/* usable_size(NULL) is 0, as malloc_usable_size(NULL) is in C. */
static int pgm_usable_size(uintptr_t p, size_t *out)
{
    int err;

    *out = 0;
    if (p == 0)
        return GM_OK;
    if ((err = gm_check((const void *)p)) != GM_OK)
        return err;
    *out = gm_usable_size((const void *)p);
    return GM_OK;
}

static int pgm_owns(uintptr_t p)
{
    return gm_owns((const void *)p);
}

/* ---- heaps (pygomalloc._heap; gomalloc.h, "Heaps") ----
 *
 * Handles travel as uintptr_t, like addresses.  A handle that is bad or
 * destroyed is refused by the core (EINVAL), never followed, so a Python
 * Heap closed on another thread meanwhile gets PGM_ERR_CLOSED here. */
#define PGM_ERR_WRONG_HEAP (-2) /* a live object of another heap */
#define PGM_ERR_CLOSED (-3)     /* the heap is destroyed or deleted */

/* 0, or errno: EINVAL (bad options), ENOMEM, EAGAIN (too many heaps). */
static int pgm_heap_new(const char *name, uint64_t limit, int fault_on_destroy, uintptr_t *out)
{
    struct gm_heap_options o = {.size = sizeof o, .name = name, .limit = limit, .fault_on_destroy = fault_on_destroy};
    gm_heap_t *h;

    errno = 0;
    h = gm_heap_new(&o);
    *out = (uintptr_t)h;
    return h != NULL ? 0 : errno != 0 ? errno : ENOMEM;
}

static int pgm_heap_alive(uintptr_t h)
{
    struct gm_heap_stats st;

    st.size = sizeof st.size; /* only the size is written back */
    return gm_heap_read_stats((gm_heap_t *)h, &st) == 0;
}

/* After a heap allocation returned NULL: the heap's limit or no memory
 * (ENOMEM), or the heap is gone (EINVAL). */
static int pgm_heap_nomem(void)
{
    return errno == EINVAL ? PGM_ERR_CLOSED : PGM_ERR_NOMEM;
}

static int pgm_heap_malloc(uintptr_t h, size_t size, uintptr_t *out)
{
    errno = 0;
    *out = (uintptr_t)gm_heap_malloc((gm_heap_t *)h, size);
    return *out != 0 ? GM_OK : pgm_heap_nomem();
}

static int pgm_heap_calloc(uintptr_t h, size_t nmemb, size_t size, uintptr_t *out)
{
    errno = 0;
    *out = (uintptr_t)gm_heap_calloc((gm_heap_t *)h, nmemb, size);
    return *out != 0 ? GM_OK : pgm_heap_nomem();
}

/* EINVAL here is an alignment the heap cannot give, if the heap lives. */
static int pgm_heap_aligned_alloc(uintptr_t h, size_t alignment, size_t size, uintptr_t *out)
{
    errno = 0;
    *out = (uintptr_t)gm_heap_aligned_alloc((gm_heap_t *)h, alignment, size);
    if (*out != 0)
        return GM_OK;
    if (errno == EINVAL)
        return pgm_heap_alive(h) ? EINVAL : PGM_ERR_CLOSED;
    return PGM_ERR_NOMEM;
}

/* As pgm_realloc: a bad pointer is refused before the core sees it; p may
 * be any heap's object, and moves into h if it has to move. */
static int pgm_heap_realloc(uintptr_t h, uintptr_t p, size_t size, uintptr_t *out)
{
    int err;

    if (p != 0 && (err = gm_check((const void *)p)) != GM_OK)
        return err;
    errno = 0;
    *out = (uintptr_t)gm_heap_realloc((gm_heap_t *)h, (void *)p, size != 0 ? size : 1);
    return *out != 0 ? GM_OK : pgm_heap_nomem();
}

/* GM_OK or an enum gm_error, with the core's GM_ERR_NOT_OURS told apart:
 * the heap is gone, or p is a live object of another heap. */
static int pgm_heap_free(uintptr_t h, uintptr_t p)
{
    int code = gm_heap_free((gm_heap_t *)h, (void *)p);

    if (code != GM_ERR_NOT_OURS)
        return code;
    if (!pgm_heap_alive(h))
        return PGM_ERR_CLOSED;
    return gm_check((const void *)p) == GM_OK ? PGM_ERR_WRONG_HEAP : GM_ERR_NOT_OURS;
}

static uintptr_t pgm_heap_of(uintptr_t p)
{
    return (uintptr_t)gm_heap_of((const void *)p);
}

static int pgm_heap_destroy(uintptr_t h) { return gm_heap_destroy((gm_heap_t *)h); }
static int pgm_heap_delete(uintptr_t h) { return gm_heap_delete((gm_heap_t *)h); }
static uintptr_t pgm_heap_default(void) { return (uintptr_t)gm_heap_default(); }
static uintptr_t pgm_heap_get_default(void) { return (uintptr_t)gm_heap_get_default(); }

static int pgm_heap_read_stats(uintptr_t h, struct gm_heap_stats *st)
{
    return gm_heap_read_stats((gm_heap_t *)h, st);
}

/* The live objects of h into addrs/sizes (n at most); *total: how many
 * there are.  Collected in C so that nothing allocates during the walk
 * (a callback into Python would, into h itself inside a scope of h).
 * 0, EINVAL (h gone) or ENOMEM. */
struct pgm_visit { uintptr_t *addrs; uint64_t *sizes; size_t n, total; };

static int pgm_visit_one(void *p, size_t size, void *arg)
{
    struct pgm_visit *v = arg;

    if (v->total < v->n) {
        v->addrs[v->total] = (uintptr_t)p;
        v->sizes[v->total] = size;
    }
    v->total++;
    return 0;
}

static int pgm_heap_visit(uintptr_t h, uintptr_t *addrs, uint64_t *sizes, size_t n, size_t *total)
{
    struct pgm_visit v = {addrs, sizes, n, 0};
    int code = gm_heap_visit((gm_heap_t *)h, pgm_visit_one, &v);

    *total = v.total;
    return code;
}

/* Scopes.  h becomes the calling thread's default heap and *prev gets the
 * one before; written through a pointer, because anything Python made
 * after the switch (a return value) would be allocated in h.  0, or EINVAL
 * (h gone) or ENOMEM: the default is unchanged. */
static int pgm_heap_scope_enter(uintptr_t h, uintptr_t *prev)
{
    gm_heap_t *p;

    errno = 0;
    p = gm_heap_set_default((gm_heap_t *)h);
    if (p == NULL)
        return errno != 0 ? errno : EINVAL;
    *prev = (uintptr_t)p;
    return 0;
}

/* The default heap goes back to *prev; if that heap is gone (destroyed
 * from C while an inner scope ran), to the default heap, and EINVAL. */
static int pgm_heap_scope_leave(const uintptr_t *prev)
{
    if (gm_heap_set_default((gm_heap_t *)*prev) != NULL)
        return 0;
    gm_heap_set_default(NULL);
    return EINVAL;
}

/* flags[i] = 1 if addrs[i] is a live object the heap profile sampled;
 * returns how many are. */
static size_t pgm_sampled_among(const uintptr_t *addrs, size_t n, uint8_t *flags)
{
    size_t count = 0;

    for (size_t i = 0; i < n; i++) {
        flags[i] = gm_profile_stack_of((const void *)addrs[i], NULL, 0) > 0;
        count += flags[i];
    }
    return count;
}

/* ---- the PyCapsule C API (gomalloc.h: struct gm_capi) ---- */

static const struct gm_capi pgm_capi = {
    GM_CAPI_VERSION, sizeof(struct gm_capi),
    gm_malloc, gm_calloc, gm_realloc, gm_free, gm_free_checked, gm_aligned_alloc,
    gm_usable_size, gm_owns, gm_check, gm_strerror, gm_release, gm_thread_flush,
    gm_read_stats, gm_option_get, gm_option_set, gm_profile_read, gm_free_owned,
    gm_heap_new, gm_heap_default, gm_heap_malloc, gm_heap_calloc, gm_heap_realloc,
    gm_heap_aligned_alloc, gm_heap_of, gm_heap_free, gm_heap_destroy, gm_heap_delete,
    gm_heap_read_stats, gm_heap_visit, gm_heap_set_default, gm_heap_get_default,
    gm_profile_stack_of, gm_profile_symbol,
};
static const char pgm_capi_name[] = GM_CAPI_NAME;

/* The capsule's pointer and name, for PyCapsule_New (called from Python). */
static uintptr_t pgm_capi_pointer(void) { return (uintptr_t)&pgm_capi; }
static uintptr_t pgm_capi_name_pointer(void) { return (uintptr_t)pgm_capi_name; }

/* ---- PyMem_SetAllocator: pygomalloc under the running interpreter ----
 *
 * After start-up an allocator may only wrap the one it replaces (CPython
 * docs, gh-96997): blocks allocated before go on being freed and resized by
 * the previous allocator, which gm_owns() tells apart in O(1).  Once
 * installed in a domain, pygomalloc stays (blocks it handed out must come
 * back to it); "uninstalling" turns routing off, so that new blocks come from
 * the previous allocator again while ours are still freed here.
 *
 * The interpreter calls the core's gm_py_malloc/calloc/realloc/free
 * (csrc/pymem.h) straight, with the domain's struct gm_pydomain as their
 * context: no wrapper of this module's between (bench/callgrind_python.py
 * measured one: 10 to 15 instructions per call, and gm_realloc's checks). */
#include "pymem.h"
#define PGM_NDOMAINS 3 /* PYMEM_DOMAIN_RAW, _MEM, _OBJ */
static struct gm_pydomain pgm_dom[PGM_NDOMAINS]; /* the allocator replaced and the route, per domain */
static int pgm_wrapped;                          /* bit d: pygomalloc is installed in domain d. Under the GIL. */

/* Are domain d's callers sure to hold the GIL (mem and obj, with a GIL)?
 * Then its frees of a block are ordered and gm_py_free_gil (and
 * gm_py_realloc_gil's moves) claim the block's state byte without a
 * locked instruction (csrc/pymem.h). */
static int pgm_free_threaded(void);
static int pgm_gil_held_domain(int d)
{
    return !pgm_free_threaded() && d != PYMEM_DOMAIN_RAW;
}

/* Is this a free-threaded CPython (which forbids replacing "obj")?  Asked
 * of the build, not of sysconfig: its config variables are a dict of a
 * thousand entries, built on first use, that cost install() 130 KiB of RSS. */
static int pgm_free_threaded(void)
{
#ifdef Py_GIL_DISABLED
    return 1;
#else
    return 0;
#endif
}

/* Route the domains in mask (bit d: domain d) to pygomalloc (on) or back to
 * their previous allocators (off), wrapping a domain the first time.
 * Returns the domains routed to pygomalloc now. */
static int pgm_pymem_route(int mask, int on)
{
    PyGILState_STATE gil = PyGILState_Ensure(); /* cffi calls us without the GIL */
    for (int d = 0; d < PGM_NDOMAINS; d++) {
        if (!(mask & (1 << d)))
            continue;
        if (on && !(pgm_wrapped & (1 << d))) {
            PyMemAllocatorEx prev;
            PyMem_GetAllocator((PyMemAllocatorDomain)d, &prev);
            pgm_dom[d].ctx = prev.ctx;
            pgm_dom[d].malloc = prev.malloc;
            pgm_dom[d].calloc = prev.calloc;
            pgm_dom[d].realloc = prev.realloc;
            pgm_dom[d].free = prev.free;
            pgm_dom[d].fast_malloc = gm_malloc;
            pgm_dom[d].fast_free = gm_free;
            pgm_wrapped |= 1 << d;
        }
        if (pgm_wrapped & (1 << d)) {
            /* gm_py_malloc reads no route: the domain's malloc is swapped.
             * Every mix of the two structs a racing caller could read (raw
             * domain) is right: the context is the same, and each function
             * serves both kinds of block. */
            int gil = pgm_gil_held_domain(d);
            PyMemAllocatorEx now = {&pgm_dom[d], on ? gm_py_malloc : gm_py_malloc_prev, gm_py_calloc,
                                    gil ? gm_py_realloc_gil : gm_py_realloc, gil ? gm_py_free_gil : gm_py_free};
            __atomic_store_n(&pgm_dom[d].route, on, __ATOMIC_RELAXED);
            PyMem_SetAllocator((PyMemAllocatorDomain)d, &now);
        }
    }
    int routed = 0;
    for (int d = 0; d < PGM_NDOMAINS; d++)
        routed |= __atomic_load_n(&pgm_dom[d].route, __ATOMIC_RELAXED) << d;
    PyGILState_Release(gil);
    return routed;
}

/* The same round trip to the C library's allocator, for the binding benchmark. */
static uintptr_t pgm_libc_malloc(size_t size)
{
    return (uintptr_t)malloc(size);
}

static void pgm_libc_free(uintptr_t p)
{
    free((void *)p);
}

/* ---- Native memory seen from Python (pygomalloc._observe) ----------------
 *
 * trace_native: the core's sample hook reports each sampled allocation made
 * by C code to tracemalloc, in domain PGM_TRACE_DOMAIN, with the estimate of
 * the bytes it stands for, and untracks it when it is freed.  The hook runs
 * inside malloc and free, on any thread, so it calls into Python only when
 * that is safe: the thread has a thread state and holds the GIL, the
 * interpreter is initialised and not finalizing, and this is not a child of
 * a fork() that Python did not make (until os.fork's after_in_child hook
 * says the interpreter is whole).  Otherwise the report is dropped and
 * counted; a dropped untrack is deferred instead (a small queue, drained by
 * a pending call on the main thread), since a stale trace would inflate the
 * totals.  What the interpreter allocates itself (its code calls malloc, or
 * the PyMem wrappers above do) is not reported: tracemalloc traces it in
 * domain 0 already, and tracemalloc's own bookkeeping allocates from inside
 * its lock, where a report would deadlock.  The core's in_profile flag
 * keeps what PyTraceMalloc_Track allocates from being sampled.
 *
 * on_pressure: the core's watcher thread calls pgm_pressure_handler, which
 * queues the event (no allocation), schedules pgm_pending on the main
 * thread with Py_AddPendingCall, and writes an eventfd (pressure_fd) that
 * Python code may wait on; pgm_pending hands the queued events to
 * pgm_pressure_dispatch (Python) at a safe point.  Never from inside malloc.
 */
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define PGM_TRACE_DOMAIN 0x676d /* "gm" */
enum { PGM_TRACKED, PGM_UNTRACKED, PGM_NO_GIL, PGM_INTERPRETER, PGM_NOT_TRACING, PGM_UNSAFE,
       PGM_DEFERRED, PGM_LOST, PGM_NCOUNTS };
static uint64_t pgm_counts[PGM_NCOUNTS]; /* relaxed atomics */
static int pgm_trace_enabled;            /* relaxed */
static int pgm_fork_unsafe;              /* a fork() child Python has not made whole */
static int pgm_shutdown;                 /* the interpreter is going: no more pending calls */

#define PGM_RANGES 16
struct pgm_ranges { int n; uintptr_t lo[PGM_RANGES], hi[PGM_RANGES]; };
static struct pgm_ranges pgm_interp, pgm_shim; /* set before the hook, then read only */

static int pgm_in(const struct pgm_ranges *r, const void *pc)
{
    for (int i = 0; i < r->n; i++)
        if ((uintptr_t)pc >= r->lo[i] && (uintptr_t)pc < r->hi[i])
            return 1;
    return 0;
}

static void pgm_count(int which) { __atomic_fetch_add(&pgm_counts[which], 1, __ATOMIC_RELAXED); }

/* Executable segments of the interpreter (the object holding
 * PyObject_Malloc: python itself or libpython) and of the preload shim. */
static int pgm_find_code(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    uintptr_t interp_base = (uintptr_t)arg, low = UINTPTR_MAX;
    const char *name = info->dlpi_name ? info->dlpi_name : "";
    size_t n = strlen(name);
    struct pgm_ranges *r = NULL;
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_LOAD && info->dlpi_phdr[i].p_vaddr < low)
            low = info->dlpi_phdr[i].p_vaddr;
    if (low != UINTPTR_MAX && info->dlpi_addr + low == interp_base) /* dladdr's dli_fbase */
        r = &pgm_interp;
    else if (n >= 22 && strcmp(name + n - 22, "libgomalloc_preload.so") == 0)
        r = &pgm_shim;
    if (r == NULL)
        return 0;
    for (int i = 0; i < info->dlpi_phnum && r->n < PGM_RANGES; i++)
        if (info->dlpi_phdr[i].p_type == PT_LOAD && (info->dlpi_phdr[i].p_flags & PF_X)) {
            r->lo[r->n] = info->dlpi_addr + info->dlpi_phdr[i].p_vaddr;
            r->hi[r->n] = r->lo[r->n] + info->dlpi_phdr[i].p_memsz;
            r->n++;
        }
    return 0;
}

/* -1 if this thread may call into Python now, else the reason it may not. */
static int pgm_py_unsafe(void)
{
    if (__atomic_load_n(&pgm_fork_unsafe, __ATOMIC_RELAXED))
        return PGM_UNSAFE;
    if (!Py_IsInitialized())
        return PGM_UNSAFE;
#if PY_VERSION_HEX >= 0x030D0000
    PyThreadState *ts = PyThreadState_GetUnchecked();
    int finalizing = Py_IsFinalizing();
#else
    PyThreadState *ts = _PyThreadState_UncheckedGet();
    int finalizing = _Py_IsFinalizing();
#endif
    if (finalizing)
        return PGM_UNSAFE;
    if (ts == NULL || ts != PyGILState_GetThisThreadState() || !PyGILState_Check())
        return PGM_NO_GIL;
    return -1;
}

/* Untracks that could not be made at once: made by pgm_pending. */
#define PGM_DEFER 1024
static pthread_mutex_t pgm_defer_lock = PTHREAD_MUTEX_INITIALIZER;
static uintptr_t pgm_defer[PGM_DEFER];
static int pgm_ndefer;
static int pgm_scheduled; /* pgm_pending is queued; under pgm_defer_lock */

static int pgm_pending(void *arg);
/* Python's dispatcher of pressure events (extern "Python", _observe.py). */
static void pgm_pressure_dispatch(int, int, int, uint64_t, uint64_t, uint64_t, uint64_t);

/* Queue pgm_pending once (pgm_defer_lock held).  No GIL needed. */
static void pgm_schedule_locked(void)
{
    if (pgm_scheduled || __atomic_load_n(&pgm_shutdown, __ATOMIC_RELAXED) ||
        __atomic_load_n(&pgm_fork_unsafe, __ATOMIC_RELAXED) || !Py_IsInitialized())
        return;
#if PY_VERSION_HEX >= 0x030D0000
    if (Py_IsFinalizing())
        return;
#else
    if (_Py_IsFinalizing())
        return;
#endif
    if (Py_AddPendingCall(pgm_pending, NULL) == 0)
        pgm_scheduled = 1;
}

static int pgm_sample_hook(void *ctx, int event, const struct gm_sample *s)
{
    (void)ctx;
    int why;
    if (event == GM_SAMPLE_FREE) {
        if (pgm_py_unsafe() < 0) {
            PyTraceMalloc_Untrack(PGM_TRACE_DOMAIN, (uintptr_t)s->ptr);
            pgm_count(PGM_UNTRACKED);
            return 0;
        }
        pthread_mutex_lock(&pgm_defer_lock);
        if (pgm_ndefer < PGM_DEFER) {
            pgm_defer[pgm_ndefer++] = (uintptr_t)s->ptr;
            pgm_count(PGM_DEFERRED);
            pgm_schedule_locked();
        } else {
            pgm_count(PGM_LOST);
        }
        pthread_mutex_unlock(&pgm_defer_lock);
        return 0;
    }
    if (!__atomic_load_n(&pgm_trace_enabled, __ATOMIC_RELAXED))
        return 0;
    uint32_t i = 0;
    while (i < s->nstack && pgm_in(&pgm_shim, s->stack[i]))
        i++;
    /* (The interpreter calls the core's gm_py_* straight: its frame is
     * the first after the allocator's own.) */
    if (i < s->nstack && pgm_in(&pgm_interp, s->stack[i])) {
        pgm_count(PGM_INTERPRETER);
        return 0;
    }
    if ((why = pgm_py_unsafe()) >= 0) {
        pgm_count(why);
        return 0;
    }
    /* An untrack of this address still queued belongs to an older object:
     * made now (outside the lock: tracemalloc may free). */
    int stale = 0;
    pthread_mutex_lock(&pgm_defer_lock);
    for (int k = 0; k < pgm_ndefer; k++)
        if (pgm_defer[k] == (uintptr_t)s->ptr) {
            pgm_defer[k--] = pgm_defer[--pgm_ndefer];
            stale = 1;
        }
    pthread_mutex_unlock(&pgm_defer_lock);
    if (stale)
        PyTraceMalloc_Untrack(PGM_TRACE_DOMAIN, (uintptr_t)s->ptr);
    if (PyTraceMalloc_Track(PGM_TRACE_DOMAIN, (uintptr_t)s->ptr, (size_t)s->est_bytes) != 0) {
        pgm_count(PGM_NOT_TRACING);
        return 0;
    }
    pgm_count(PGM_TRACKED);
    return 1;
}

/* Once, with the GIL: find the code ranges and install the hook (it stays:
 * frees of tracked objects are reported after trace_native(False) too). */
static void pgm_trace_set(int on)
{
    static int hooked;
    if (!hooked) {
        Dl_info info;
        if (dladdr((void *)&PyObject_Malloc, &info) != 0)
            dl_iterate_phdr(pgm_find_code, info.dli_fbase);
        gm_set_sample_hook(pgm_sample_hook, NULL);
        hooked = 1;
    }
    __atomic_store_n(&pgm_trace_enabled, on, __ATOMIC_RELAXED);
}

static void pgm_trace_counts(uint64_t *out)
{
    for (int i = 0; i < PGM_NCOUNTS; i++)
        out[i] = __atomic_load_n(&pgm_counts[i], __ATOMIC_RELAXED);
}

/* Pressure events, queued by the watcher thread for the main thread. */
#define PGM_EVENTS 64
static struct gm_pressure_event pgm_events[PGM_EVENTS];
static int pgm_nevents;  /* under pgm_defer_lock */
static uint64_t pgm_events_lost;
static int pgm_event_fd = -1;

static void pgm_pressure_handler(void *ctx, const struct gm_pressure_event *ev)
{
    (void)ctx;
    pthread_mutex_lock(&pgm_defer_lock);
    if (pgm_nevents < PGM_EVENTS)
        pgm_events[pgm_nevents++] = *ev;
    else
        pgm_events_lost++;
    pgm_schedule_locked();
    pthread_mutex_unlock(&pgm_defer_lock);
    uint64_t one = 1;
    if (pgm_event_fd >= 0)
        (void)!write(pgm_event_fd, &one, sizeof one);
}

static int pgm_pressure_set(int on)
{
    if (on && pgm_event_fd < 0)
        pgm_event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return gm_set_pressure_handler(on ? pgm_pressure_handler : NULL, NULL);
}

static int pgm_pressure_fd(void) { return pgm_event_fd; }

/* On the main thread, with the GIL (a pending call): the deferred untracks,
 * then the pressure events, one call of Python's dispatcher each. */
static int pgm_pending(void *arg)
{
    (void)arg;
    static struct gm_pressure_event ev[PGM_EVENTS]; /* main thread only */
    static uintptr_t untrack[PGM_DEFER];
    int nev, nun;
    pthread_mutex_lock(&pgm_defer_lock);
    pgm_scheduled = 0;
    nun = pgm_ndefer;
    memcpy(untrack, pgm_defer, (size_t)nun * sizeof untrack[0]);
    pgm_ndefer = 0;
    nev = pgm_nevents;
    memcpy(ev, pgm_events, (size_t)nev * sizeof ev[0]);
    pgm_nevents = 0;
    pthread_mutex_unlock(&pgm_defer_lock);
    /* Outside the lock: tracemalloc frees, and a free may queue here. */
    for (int k = 0; k < nun; k++)
        PyTraceMalloc_Untrack(PGM_TRACE_DOMAIN, untrack[k]);
    for (int k = 0; k < nev; k++)
        pgm_pressure_dispatch(ev[k].id, ev[k].kind, ev[k].rising, ev[k].level, ev[k].heap_inuse,
                              ev[k].count, ev[k].value);
    return 0;
}

/* The interpreter's atexit: no more pending calls, no more reports. */
static void pgm_observe_shutdown(void)
{
    __atomic_store_n(&pgm_shutdown, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&pgm_trace_enabled, 0, __ATOMIC_RELAXED);
    gm_set_pressure_handler(NULL, NULL);
}

/* fork(): in the child, Python is not whole until os.fork's hooks ran. */
static void pgm_atfork_child(void)
{
    __atomic_store_n(&pgm_fork_unsafe, 1, __ATOMIC_RELAXED);
    pthread_mutex_init(&pgm_defer_lock, NULL);
    pgm_scheduled = 0;
    pgm_nevents = 0;
    pgm_ndefer = 0;
}

static void pgm_observe_init(void)
{
    pthread_atfork(NULL, NULL, pgm_atfork_child);
}

/* os.register_at_fork(after_in_child=...): the interpreter is whole again. */
static void pgm_after_python_fork(void)
{
    if (pgm_event_fd >= 0) {
        close(pgm_event_fd); /* the parent's: make our own */
        pgm_event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    }
    __atomic_store_n(&pgm_fork_unsafe, 0, __ATOMIC_RELAXED);
    gm_pressure_restart();
}
"""

# The members of struct gm_stats and struct gm_size_class_stats below are
# generated from tools/tables.py by tools/mktables.py (tests/test_tables.py
# checks them), as are the structs in gomalloc.h.
_CDEF = r"""
#define GM_NUM_SIZE_CLASSES ...
#define GM_MAX_SMALL_SIZE ...
#define PGM_ERR_NOMEM ...
#define EINVAL ...

enum gm_error { GM_OK, GM_ERR_NOT_OURS, GM_ERR_INTERIOR, GM_ERR_NOT_ALLOCATED, ... };

void *gm_malloc(size_t size);
void *gm_calloc(size_t nmemb, size_t size);
void *gm_realloc(void *ptr, size_t size);
void gm_free(void *ptr);
int gm_free_checked(void *ptr);
int gm_check(const void *ptr);
const char *gm_strerror(int code);
void *gm_aligned_alloc(size_t alignment, size_t size);
int gm_posix_memalign(void **out, size_t alignment, size_t size);
size_t gm_usable_size(const void *ptr);
int gm_owns(const void *ptr);
size_t gm_release(void);
void gm_thread_flush(void);

struct gm_size_class_stats {
    /* BEGIN GENERATED cdef-gm_size_class_stats: tools/mktables.py from tools/tables.py, do not edit */
    uint64_t size;
    uint64_t npages;
    uint64_t mallocs;
    uint64_t frees;
    uint64_t spans;
    uint64_t capacity;
    /* END GENERATED cdef-gm_size_class_stats */
    ...;
};

struct gm_stats {
    /* BEGIN GENERATED cdef-gm_stats: tools/mktables.py from tools/tables.py, do not edit */
    uint64_t size;
    uint64_t sys;
    uint64_t heap_reserved;
    uint64_t heap_sys;
    uint64_t heap_alloc;
    uint64_t heap_idle;
    uint64_t heap_inuse;
    uint64_t heap_released;
    uint64_t heap_objects;
    uint64_t mallocs;
    uint64_t frees;
    uint64_t total_alloc;
    uint64_t large_objects;
    uint64_t mspan_inuse;
    uint64_t mspan_sys;
    uint64_t mcache_inuse;
    uint64_t mcache_sys;
    uint64_t other_sys;
    uint64_t cached_bytes;
    uint64_t transfer_bytes;
    uint64_t num_arenas;
    uint64_t num_threads;
    uint64_t bad_frees;
    uint64_t n_sys_reserve;
    uint64_t n_sys_map;
    uint64_t n_sys_used;
    uint64_t n_sys_unused;
    uint64_t n_sys_free;
    uint64_t n_sys_fault;
    uint64_t bytes_sys_reserve;
    uint64_t bytes_sys_map;
    uint64_t bytes_sys_used;
    uint64_t bytes_sys_unused;
    uint64_t bytes_sys_free;
    uint64_t bytes_sys_fault;
    uint64_t scavenge_cycles;
    uint64_t scavenged_bytes;
    uint64_t phys_page_size;
    uint64_t huge_page_size;
    uint64_t tiny_mallocs;
    uint64_t tiny_frees;
    struct gm_size_class_stats by_size[...];
    /* END GENERATED cdef-gm_stats */
    ...;
};

int gm_read_stats(struct gm_stats *st);
int gm_option_set(const char *name, long long value);
int gm_option_get(const char *name, long long *value);
const char *gm_option_name(int i);
int gm_option_describe(const char *name, char *buf, size_t len);
int gm_option_rejected(int i, const char **variable, const char **value, const char **reason);
int gm_check_heap(void);

#define GM_PROFILE_DEPTH ...
struct gm_profile_record {
    uint64_t alloc_objects, alloc_bytes;
    uint64_t free_objects, free_bytes;
    uint32_t nstack;
    const void *stack[...];
    uint64_t alloc_objects_est, alloc_bytes_est;
    uint64_t free_objects_est, free_bytes_est;
};
int gm_profile_read(struct gm_profile_record *out, int n, size_t record_size);
const char *gm_profile_symbol(const void *pc, char *buf, size_t len);
int gm_profile_stack_of(const void *ptr, const void **stack, int n);

/* Heaps (pygomalloc._heap).  The fields of struct gm_heap_stats are
 * gomalloc.h's, in its order (tests/test_heaps.py checks them against the
 * header and against HeapStats). */
struct gm_heap_stats {
    uint64_t size;
    uint64_t limit;
    uint64_t inuse;
    uint64_t peak_inuse;
    uint64_t alloc;
    uint64_t objects;
    uint64_t mallocs;
    uint64_t frees;
    uint64_t total_alloc;
    uint64_t large_objects;
    uint64_t cached_bytes;
    uint64_t num_caches;
    char name[...];
    struct gm_size_class_stats by_size[...];
    ...;
};
#define PGM_ERR_WRONG_HEAP ...
#define PGM_ERR_CLOSED ...
#define EBUSY ...
#define ENOMEM ...
#define EAGAIN ...
static int pgm_heap_new(const char *name, uint64_t limit, int fault_on_destroy, uintptr_t *out);
static int pgm_heap_alive(uintptr_t h);
static int pgm_heap_malloc(uintptr_t h, size_t size, uintptr_t *out);
static int pgm_heap_calloc(uintptr_t h, size_t nmemb, size_t size, uintptr_t *out);
static int pgm_heap_aligned_alloc(uintptr_t h, size_t alignment, size_t size, uintptr_t *out);
static int pgm_heap_realloc(uintptr_t h, uintptr_t p, size_t size, uintptr_t *out);
static int pgm_heap_free(uintptr_t h, uintptr_t p);
static uintptr_t pgm_heap_of(uintptr_t p);
static int pgm_heap_destroy(uintptr_t h);
static int pgm_heap_delete(uintptr_t h);
static uintptr_t pgm_heap_default(void);
static uintptr_t pgm_heap_get_default(void);
static int pgm_heap_read_stats(uintptr_t h, struct gm_heap_stats *st);
static int pgm_heap_visit(uintptr_t h, uintptr_t *addrs, uint64_t *sizes, size_t n, size_t *total);
static int pgm_heap_scope_enter(uintptr_t h, uintptr_t *prev);
static int pgm_heap_scope_leave(const uintptr_t *prev);
static size_t pgm_sampled_among(const uintptr_t *addrs, size_t n, uint8_t *flags);

static uintptr_t pgm_malloc(size_t size);
static uintptr_t pgm_calloc(size_t nmemb, size_t size);
static int pgm_aligned_alloc(size_t alignment, size_t size, uintptr_t *out);
static int pgm_free(uintptr_t p);
static int pgm_realloc(uintptr_t p, size_t size, uintptr_t *out);
static int pgm_usable_size(uintptr_t p, size_t *out);
static int pgm_owns(uintptr_t p);
static uintptr_t pgm_libc_malloc(size_t size);
static void pgm_libc_free(uintptr_t p);
static uintptr_t pgm_capi_pointer(void);
static uintptr_t pgm_capi_name_pointer(void);
static int pgm_free_threaded(void);
static int pgm_pymem_route(int mask, int on);

/* Seeing native memory (pygomalloc._observe). */
#define PGM_TRACE_DOMAIN ...
#define PGM_NCOUNTS ...
static void pgm_trace_set(int on);
static void pgm_trace_counts(uint64_t *out);
extern "Python" void pgm_pressure_dispatch(int, int, int, uint64_t, uint64_t, uint64_t, uint64_t);
static int pgm_pressure_set(int on);
static int pgm_pressure_fd(void);
static void pgm_observe_shutdown(void);
static void pgm_observe_init(void);
static void pgm_after_python_fork(void);

#define GM_PAGE_SIZE ...
#define GM_ARENA_PAGES ...
#define GM_PAGE_LARGE ...
#define GM_PAGE_FREE ...
#define GM_PAGE_RELEASED ...
#define GM_PAGE_FAULTED ...
#define GM_PAGE_RESERVED ...
const uint8_t *gm_page_map(int i, uintptr_t *base);

#define GM_PRESSURE_BYTES ...
#define GM_PRESSURE_MEMORY_LIMIT ...
#define GM_PRESSURE_HARD_LIMIT ...
#define GM_PRESSURE_PSI ...
#define GM_PRESSURE_CGROUP ...
#define GM_PRESSURE_FALLING ...
int gm_pressure_add(int kind, uint64_t value, uint64_t window_us, int flags);
int gm_pressure_remove(int id);

#define GM_OPTION_AUTO ...
int gm_option_is_auto(const char *name);
uint64_t gm_limits_refresh(void);
"""


# ---- numpy's data allocator (NEP 49) and the heap calls it needs ----------
#
# pygomalloc.numpy's C side, in a block of its own, with the gm_heap_ calls
# it makes on gm_heap_t pointers (the Heap class's block passes handles as
# integers, through its pgm_heap_ wrappers).
_NUMPY_PREAMBLE = r"""
/* ---- numpy's data allocator (NEP 49): pygomalloc.numpy ----
 *
 * numpy >= 1.22 takes the allocator of arrays' data from a PyCapsule named
 * "mem_handler" around a PyDataMem_Handler, made current with
 * PyDataMem_SetHandler (pygomalloc.numpy reaches it through the _ARRAY_API
 * capsule of numpy's multiarray module).  numpy's headers are not needed to
 * build this module: the two structs are declared here with exactly the
 * layout numpy/ndarraytypes.h gives them (numpy 1.22 to 2.x; version 1 of
 * the handler, whose free takes the size), and checked below.
 *
 * ctx is the heap's gm_heap_t handle, NULL for the default heap.  numpy
 * keeps the handler of each array with it (a reference to the capsule) and
 * frees the array's data through that handler, whatever handler is current
 * by then: gm_free, which frees any heap's object from any thread.  The
 * heap of a handler was given to gm_heap_keep_live (pygomalloc.numpy.use),
 * so it is not destroyed under live arrays. */
#include <stddef.h>
#include <stdio.h>

typedef struct {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr, size_t size);
} pgm_PyDataMemAllocator;

typedef struct {
    char name[127]; /* 127 + 1: the allocator starts 128 bytes in */
    uint8_t version;
    pgm_PyDataMemAllocator allocator;
} pgm_PyDataMem_Handler;

_Static_assert(offsetof(pgm_PyDataMem_Handler, version) == 127, "numpy's PyDataMem_Handler layout");
_Static_assert(offsetof(pgm_PyDataMem_Handler, allocator) == 128, "numpy's PyDataMem_Handler layout");
_Static_assert(offsetof(pgm_PyDataMemAllocator, free) == 4 * sizeof(void *), "numpy's PyDataMemAllocator layout");

static void *pgm_np_malloc(void *ctx, size_t size)
{
    return ctx != NULL ? gm_heap_malloc((gm_heap_t *)ctx, size) : gm_malloc(size);
}

static void *pgm_np_calloc(void *ctx, size_t nelem, size_t elsize)
{
    return ctx != NULL ? gm_heap_calloc((gm_heap_t *)ctx, nelem, elsize) : gm_calloc(nelem, elsize);
}

/* numpy takes NULL as a failure and keeps ptr: so size 0 must not free
 * ptr (gm_realloc(p, 0) would).  An array of a heap that was deleted since
 * (its objects went to the default heap) is reallocated there. */
static void *pgm_np_realloc(void *ctx, void *ptr, size_t new_size)
{
    void *q;

    if (new_size == 0)
        new_size = 1;
    if (ctx == NULL)
        return gm_realloc(ptr, new_size);
    errno = 0;
    q = gm_heap_realloc((gm_heap_t *)ctx, ptr, new_size);
    if (q == NULL && ptr != NULL && errno == EINVAL && gm_heap_of(ptr) == gm_heap_default())
        q = gm_realloc(ptr, new_size);
    return q;
}

/* The size numpy passes is not needed (and not always the size asked). */
static void pgm_np_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    (void)size;
    gm_free(ptr); /* a pointer that is not a live object of ours aborts with a message */
}

static const char pgm_np_capsule_name_s[] = "mem_handler";

static pgm_PyDataMem_Handler pgm_np_default = {
    "pygomalloc", 1, {NULL, pgm_np_malloc, pgm_np_calloc, pgm_np_realloc, pgm_np_free},
};

/* A handler for heap h, named "pygomalloc:<the heap's name>" (malloc'ed:
 * the capsule's destructor frees it).  0 with errno: ENOMEM, EINVAL. */
static uintptr_t pgm_np_handler_new(gm_heap_t *h)
{
    struct gm_heap_stats st;
    pgm_PyDataMem_Handler *hd;

    memset(&st, 0, sizeof st);
    st.size = sizeof st;
    if (gm_heap_read_stats(h, &st) != 0) {
        errno = EINVAL;
        return 0;
    }
    if ((hd = calloc(1, sizeof *hd)) == NULL)
        return 0;
    st.name[sizeof st.name - 1] = '\0';
    snprintf(hd->name, sizeof hd->name, "pygomalloc:%s", st.name[0] ? st.name : "heap");
    hd->version = 1;
    hd->allocator = pgm_np_default.allocator;
    hd->allocator.ctx = h;
    return (uintptr_t)hd;
}

/* The capsule's destructor: the last array of the handler is gone. */
static void pgm_np_capsule_destructor(PyObject *capsule)
{
    void *hd = PyCapsule_GetPointer(capsule, pgm_np_capsule_name_s);
    if (hd != NULL && hd != (void *)&pgm_np_default)
        free(hd);
}

static uintptr_t pgm_np_handler_default(void) { return (uintptr_t)&pgm_np_default; }
static uintptr_t pgm_np_capsule_name(void) { return (uintptr_t)pgm_np_capsule_name_s; }
static uintptr_t pgm_np_destructor(void) { return (uintptr_t)&pgm_np_capsule_destructor; }

/* numpy's C-API table (the _ARRAY_API capsule's pointer): its ABI version
 * (PyArray_GetNDArrayCVersion, entry 0) and C-API feature version
 * (PyArray_GetNDArrayCFeatureVersion, entry 211), as numpy's import_array
 * reads them: __multiarray_api.h of numpy 1.22 to 2.x. */
static unsigned int pgm_np_abi_version(uintptr_t table)
{
    return ((unsigned int (*)(void))((void *const *)table)[0])();
}

static unsigned int pgm_np_feature_version(uintptr_t table)
{
    return ((unsigned int (*)(void))((void *const *)table)[211])();
}

/* For bench/test_heap_destroy.py (a heap of a million small objects dropped
 * at once or one by one), so that the loops run in C: n objects of 16-256
 * bytes, mostly small (bench/drivers/graphs.c's sizes), from heap h (NULL:
 * gm_malloc), each written, into out.  0, or ENOMEM with nothing left. */
static int pgm_bench_fill(gm_heap_t *h, uintptr_t *out, size_t n, uint64_t seed)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ULL + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
        double u = (double)((s * 0x2545F4914F6CDD1DULL) >> 11) * (1.0 / 9007199254740992.0);
        size_t size = 16 + (size_t)(241.0 * u * u * u);
        void *p = h != NULL ? gm_heap_malloc(h, size) : gm_malloc(size);
        if (p == NULL) {
            while (i > 0)
                gm_free((void *)out[--i]);
            return ENOMEM;
        }
        memset(p, (int)(i & 0xff), 16);
        out[i] = (uintptr_t)p;
    }
    return 0;
}

static void pgm_bench_free_each(const uintptr_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        gm_free((void *)p[i]);
}
"""

_NUMPY_CDEF = r"""
/* Heaps (gomalloc.h), as far as pygomalloc.numpy and its tests need them. */
typedef struct gm_heap_handle gm_heap_t;
struct gm_heap_options {
    size_t size;
    const char *name;
    uint64_t limit;
    int fault_on_destroy;
    ...;
};
/* struct gm_heap_stats: above, with the Heap class's declarations. */
gm_heap_t *gm_heap_new(const struct gm_heap_options *opts);
gm_heap_t *gm_heap_default(void);
gm_heap_t *gm_heap_of(const void *ptr);
int gm_heap_destroy(gm_heap_t *h);
int gm_heap_delete(gm_heap_t *h);
int gm_heap_keep_live(gm_heap_t *h);
int gm_heap_read_stats(gm_heap_t *h, struct gm_heap_stats *st);

/* numpy's data allocator (pygomalloc.numpy). */
static uintptr_t pgm_np_handler_new(gm_heap_t *h);
static uintptr_t pgm_np_handler_default(void);
static uintptr_t pgm_np_capsule_name(void);
static uintptr_t pgm_np_destructor(void);
static unsigned int pgm_np_abi_version(uintptr_t table);
static unsigned int pgm_np_feature_version(uintptr_t table);
static int pgm_bench_fill(gm_heap_t *h, uintptr_t *out, size_t n, uint64_t seed);
static void pgm_bench_free_each(const uintptr_t *p, size_t n);
"""

ffibuilder = FFI()
ffibuilder.cdef(_CDEF + _NUMPY_CDEF)
ffibuilder.set_source(
    "pygomalloc._gomalloc",
    _PREAMBLE + _NUMPY_PREAMBLE,
    depends=[str(PUBLIC_HEADER), str(BUILD_DESCRIPTION)],
    include_dirs=[str(CSRC)],
    extra_compile_args=BUILD["SHARED_CFLAGS"],
    # The core: libgomalloc.so, found next to the module at run time.
    # setup.py adds the directory it was built in to library_dirs.
    libraries=["gomalloc"],
    extra_link_args=[f"-Wl,-rpath,$ORIGIN/{LIBRARY_SUBDIR}"],
    # PyMem_SetAllocator and PyMemAllocatorEx (pygomalloc.install) are not in
    # the limited API: the module is built for this CPython version.
    py_limited_api=False,
)
