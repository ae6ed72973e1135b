"""The one definition of pygomalloc's statistics and options.

``tools/mktables.py`` writes everything that lists them from these tables
(``python tools/mktables.py``; ``--check`` fails on any difference, and
``tests/test_tables.py`` runs it):

* statistics: the members of ``struct gm_stats`` and ``struct
  gm_size_class_stats`` (csrc/gomalloc.h), their cffi declarations
  (build_ext.py), the fields of ``Stats`` and ``SizeClassStats`` with their
  docs and units (src/pygomalloc/_api.py), the figures that ``malloc_info``
  prints (csrc/preload.c), and the statistics table of README.md;
* options: the option table of csrc/options.c, ``struct gm_options``
  (csrc/gm_internal.h), the GOMALLOC_ variables that are not options, and
  the options table of README.md.

What remains by hand: the code that computes each figure (csrc/mstats.c)
and the code that acts on each option.

Adding a statistic: append a ``Stat`` to ``STATS``, run the generator, fill
it in ``gm_read_stats`` (csrc/mstats.c).  ``struct gm_stats`` only ever grows
at the end: callers built with an older header pass a smaller size and get
the prefix they know (tests/test_tables.py keeps the released layout).
Adding an option: add an ``Option``, run the generator, read ``gm_opt.NAME``
where it matters.
"""

from __future__ import annotations

from typing import NamedTuple


class Stat(NamedTuple):
    """A member of ``struct gm_stats`` (or of ``struct gm_size_class_stats``)."""

    name: str
    #: What it counts: "bytes", or a noun ("objects", "calls", ...).
    unit: str
    #: One line, plain text (it goes into C comments, Python docs and README).
    doc: str
    #: The name of the figure in Go's runtime (MemStats, or the runtime's own), if any.
    go: str | None = None
    #: The C type; uint64_t, or a struct array (``array`` elements).
    ctype: str = "uint64_t"
    array: str | None = None
    #: A heading for the members from here on (a comment in C and Python).
    group: str | None = None


class Option(NamedTuple):
    """An option: ``gm_opt.NAME``, the variable ``GOMALLOC_<NAME>``, by name at run time."""

    name: str
    default: int
    min: int
    max: int
    #: "flag" (0 or 1; on/off in the environment), "choice" (a small number),
    #: or the unit of a number: "bytes", "ms", "percent".
    unit: str
    #: One line; Markdown code spans (`x`) allowed.
    doc: str
    #: A C function called with the new value after a change at run time.
    on_change: str | None = None
    #: Accepts "auto" (GM_OPTION_AUTO): this percent option of the cgroup's memory limit.
    auto: str | None = None


KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# ---- statistics ------------------------------------------------------------

#: The header member of struct gm_stats, before the figures.
STATS_HEADER = Stat(
    "size", "bytes",
    "C only: set by the caller to sizeof(struct gm_stats) before gm_read_stats, which writes "
    "that many bytes at most and sets it to the library's own size.",
)

#: struct gm_stats, in order.  Append only: the layout is part of the ABI.
STATS: list[Stat] = [
    Stat("sys", "bytes", "heap_sys + mspan_sys + mcache_sys + other_sys: everything from the OS.",
         "Sys", group="Memory obtained from the OS, and the heap"),
    Stat("heap_reserved", "bytes", "Address space reserved (PROT_NONE or mapped) for arenas."),
    Stat("heap_sys", "bytes", "Arena bytes mapped (Prepared or Ready): heap_idle + heap_inuse.", "HeapSys"),
    Stat("heap_alloc", "bytes", "Bytes of live objects (rounded up to their size class).", "HeapAlloc"),
    Stat("heap_idle", "bytes", "Bytes in free page runs.", "HeapIdle"),
    Stat("heap_inuse", "bytes", "Bytes in spans holding objects.", "HeapInuse"),
    Stat("heap_released", "bytes", "Part of heap_idle returned to the OS (Prepared).", "HeapReleased"),
    Stat("heap_objects", "objects", "Live objects: mallocs - frees.", "HeapObjects"),
    Stat("mallocs", "objects", "Objects allocated, ever.", "Mallocs"),
    Stat("frees", "objects", "Objects freed, ever.", "Frees"),
    Stat("total_alloc", "bytes", "Bytes allocated, ever (rounded up to their size class).", "TotalAlloc"),
    Stat("large_objects", "objects", "Live objects larger than GM_MAX_SMALL_SIZE (a span each)."),
    Stat("mspan_inuse", "bytes", "Bytes of span structures in use.", "MSpanInuse", group="Metadata"),
    Stat("mspan_sys", "bytes", "Bytes obtained from the OS for span structures.", "MSpanSys"),
    Stat("mcache_inuse", "bytes", "Bytes of per-thread caches in use.", "MCacheInuse"),
    Stat("mcache_sys", "bytes", "Bytes obtained from the OS for per-thread caches.", "MCacheSys"),
    Stat("other_sys", "bytes", "Other metadata: arena maps, heapArena records, state maps, bitmaps.",
         "OtherSys"),
    Stat("cached_bytes", "bytes",
         "Part of heap_inuse on per-thread free lists: free, not yet in spans.",
         group="Caches, arenas, threads, errors"),
    Stat("transfer_bytes", "bytes",
         "Part of heap_inuse in the transfer caches: lists a thread flushed, kept whole until it "
         "runs out (any thread may take a consumer's) (free, not in spans)."),
    Stat("num_arenas", "arenas", "64 MiB heap arenas holding mapped memory (each has a heapArena record)."),
    Stat("num_threads", "threads", "Live per-thread caches."),
    Stat("bad_frees", "calls", "Invalid frees detected (and refused, with abort_on_error 0)."),
    Stat("n_sys_reserve", "calls", "sysReserve calls: None -> Reserved.", "sysReserve",
         group="OS state transitions (csrc/mem_linux.c): calls"),
    Stat("n_sys_map", "calls", "sysMap calls: Reserved -> Prepared.", "sysMap"),
    Stat("n_sys_used", "calls", "sysUsed calls: Prepared -> Ready.", "sysUsed"),
    Stat("n_sys_unused", "calls", "sysUnused calls: Ready -> Prepared.", "sysUnused"),
    Stat("n_sys_free", "calls", "sysFree calls: any state -> None.", "sysFree"),
    Stat("n_sys_fault", "calls", "sysFault calls: back to Reserved.", "sysFault"),
    Stat("bytes_sys_reserve", "bytes", "Bytes passed to sysReserve.", group="... and their bytes"),
    Stat("bytes_sys_map", "bytes", "Bytes passed to sysMap."),
    Stat("bytes_sys_used", "bytes", "Bytes passed to sysUsed."),
    Stat("bytes_sys_unused", "bytes", "Bytes passed to sysUnused."),
    Stat("bytes_sys_free", "bytes", "Bytes passed to sysFree."),
    Stat("bytes_sys_fault", "bytes", "Bytes passed to sysFault."),
    Stat("scavenge_cycles", "passes", "Scavenger passes that released something.", group="Scavenger"),
    Stat("scavenged_bytes", "bytes", "Bytes returned to the OS, ever."),
    Stat("phys_page_size", "bytes", "Physical page size read at start-up.", "physPageSize"),
    Stat("huge_page_size", "bytes", "Transparent huge page size (0 if none).", "physHugePageSize"),
    Stat("tiny_mallocs", "objects", "Tiny objects allocated, ever.", "/gc/heap/tiny/allocs:objects",
         group="The tiny allocator (option tiny): objects of 1 to 8 bytes in shared 16-byte "
               "blocks, which count as objects of the 16-byte class above"),
    Stat("tiny_frees", "objects", "Tiny objects freed, ever."),
    Stat("by_size", "", "One row per size class, indexed by class; class 0 is large objects.", "BySize",
         ctype="struct gm_size_class_stats", array="GM_NUM_SIZE_CLASSES", group="Per size class"),
]

#: struct gm_size_class_stats, in order (a row of by_size).  Append only.
SIZE_CLASS_STATS: list[Stat] = [
    Stat("size", "bytes", "Bytes per object of this class (0 for class 0).", "Size"),
    Stat("npages", "pages", "Pages (8 KiB) per span of this class.", "class_to_allocnpages"),
    Stat("mallocs", "objects", "Objects handed out, ever.", "Mallocs"),
    Stat("frees", "objects", "Objects given back, ever.", "Frees"),
    Stat("spans", "spans", "Spans of this class in use (class 0: one per large object)."),
    Stat("capacity", "objects",
         "Objects those spans hold when full: capacity - (mallocs - frees) slots hold no live "
         "object (free in spans, or cached on lists)."),
]

# ---- options ---------------------------------------------------------------

#: In this order in gm_option_name(), options() and the README.
OPTIONS: list[Option] = [
    Option("abort_on_error", 1, 0, 1, "flag",
           "abort on a bad pointer (1) or refuse it and report EINVAL (0)"),
    Option("scavenger", 1, 0, 1, "flag",
           "the background scavenger thread returns free pages to the OS"),
    Option("decay_ms", 1000, 0, 3600 * 1000, "ms",
           "free pages unused this long are returned even under the goal"),
    Option("retain_percent", 10, 0, 10000, "percent",
           "free Ready pages kept, as a percentage of the in-use heap (the goal)"),
    Option("memory_limit", 0, 0, 1 << 48, "bytes",
           "soft limit on retained heap bytes: above it every free page is released (0: none; "
           "`auto`: `auto_memory_limit_percent` of the cgroup's memory limit)",
           on_change="gm_pressure_limits_changed", auto="auto_memory_limit_percent"),
    Option("hard_limit", 0, 0, 1 << 48, "bytes",
           "allocations fail (NULL/ENOMEM, `MemoryError`) rather than push `heap_inuse` past it "
           "(0: none; `auto`: `auto_hard_limit_percent` of the cgroup's memory limit)",
           on_change="gm_pressure_limits_changed", auto="auto_hard_limit_percent"),
    Option("madv_free", 0, 0, 1, "flag",
           "release with `MADV_FREE` instead of `MADV_DONTNEED` (RSS then drops only under "
           "memory pressure)"),
    Option("thp", 0, 0, 1, "flag",
           "advise transparent huge pages on whole huge pages of the chunks the heap grows by "
           "and of reused memory"),
    Option("tcache_bytes", 32 * KiB, 0, 16 * MiB, "bytes",
           "bound of each per-thread, per-class list of freed objects (read when a thread's "
           "cache is created); a list that overflows in bursts grows past it, a thread's lists "
           "by up to 32 times this in all"),
    Option("fault_on_free", 0, 0, 2, "choice",
           "debug: freed large spans (1) or all spans returned to the heap (2) become PROT_NONE, "
           "so a use after free crashes"),
    Option("check_heap", 0, 0, 1, "flag",
           "debug: run the heap checker at exit and abort if it fails"),
    Option("print_stats", 0, 0, 1, "flag",
           "print the statistics to stderr at exit (and the heap profile's top call sites when "
           "it samples)"),
    Option("profile_rate", 0, 0, 1 << 40, "bytes",
           "heap profile: sample one allocation per this many bytes on average (Go's "
           "`MemProfileRate`; 1: every allocation; 0: off)",
           on_change="gm_profile_set_rate"),
    Option("tiny", 0, 0, 1, "flag",
           "objects of 1 to 8 bytes share 16-byte blocks (the tiny allocator): up to 16 times "
           "less memory for them, about twice the time per malloc+free of such sizes",
           on_change="tiny_changed"),
    Option("random_heap", 1, 0, 1, "flag",
           "arena hints start at a random offset (up to 4 TiB) above Go's fixed `0x00c0<<32`, "
           "so heap addresses differ from run to run; 0: Go's fixed hints (read at start-up)"),
    Option("auto_memory_limit_percent", 90, 1, 100, "percent",
           "with `memory_limit=auto`: the soft limit as a percentage of the cgroup v2 memory limit "
           "(the smallest `memory.max` or `memory.high` of the process's cgroup and its ancestors)",
           on_change="auto_percent_changed"),
    Option("auto_hard_limit_percent", 95, 1, 100, "percent",
           "with `hard_limit=auto`: the hard limit as a percentage of the cgroup v2 memory limit",
           on_change="auto_percent_changed"),
]

#: GOMALLOC_ environment variables that are not options: start-up does not
#: warn about them.  A trailing * matches any suffix.
NOT_OPTIONS: list[tuple[str, str]] = [
    ("GOMALLOC_PRELOAD_LIB", "the preload library the bench runner compares (src/pygomalloc/_bench.py)"),
    ("GOMALLOC_DEBUG_*", "testing switches (e.g. fault injection in the OS layer, "
                         "GOMALLOC_DEBUG_CGROUP_DIR: the cgroup v2 directory to read)"),
]
