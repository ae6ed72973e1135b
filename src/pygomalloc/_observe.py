"""Native memory seen from Python: tracemalloc reports, pressure callbacks,
the live page map, container-aware limits.  The C core does the work
(csrc/mprof.c's sample hook, csrc/pressure.c, csrc/pagemap.c); the module's
C part (build_ext.py, "Native memory seen from Python") bridges it to the
interpreter safely; this file only wraps it.
"""

from __future__ import annotations

import atexit
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from ._api import Stats, get_option, set_option, stats
from ._gomalloc import ffi, lib

__all__ = [
    "ARENA_PAGES",
    "ArenaMap",
    "PAGE_FAULTED",
    "PAGE_FREE",
    "PAGE_LARGE",
    "PAGE_RELEASED",
    "PAGE_RESERVED",
    "PAGE_SIZE",
    "PAGE_STATES",
    "PressureEvent",
    "PressureHandle",
    "TRACE_DOMAIN",
    "TraceCounts",
    "on_pressure",
    "option_is_auto",
    "page_map",
    "page_map_totals",
    "page_state_name",
    "pressure_fd",
    "refresh_limits",
    "trace_native",
    "trace_native_counts",
]

# --------------------------------------------------------------------------
# tracemalloc

#: The tracemalloc domain of native allocations (``tracemalloc.DomainFilter``).
TRACE_DOMAIN: int = int(lib.PGM_TRACE_DOMAIN)
#: The sampling rate trace_native uses unless told: Go's MemProfileRate.
DEFAULT_TRACE_RATE = 512 * 1024

_trace_state: dict[str, int | None] = {"previous_rate": None}


def trace_native(on: bool = True, rate: int | None = None) -> None:
    """Report sampled native allocations to tracemalloc, in domain ``TRACE_DOMAIN``.

    Allocations made through pygomalloc by C code (the preload library, C
    libraries linked to libgomalloc.so, extensions using the capsule) are
    sampled by the heap profile, one per *rate* bytes on average (option
    ``profile_rate``; default ``DEFAULT_TRACE_RATE``), and each sample is
    reported with ``PyTraceMalloc_Track`` with the estimate of the bytes it
    stands for, so that the domain's totals are unbiased.  tracemalloc
    records the Python traceback of the calling thread: the Python line
    that called into C.  Start tracemalloc first (``tracemalloc.start()``)::

        snapshot = tracemalloc.take_snapshot()
        native = snapshot.filter_traces([tracemalloc.DomainFilter(True, pygomalloc.TRACE_DOMAIN)])
        for stat in native.statistics("lineno")[:10]:
            print(stat)

    A sample is reported only when its thread holds the GIL (with a thread
    state) and the interpreter is neither finalizing nor a fork() child it
    has not set up; other samples are dropped and counted
    (``trace_native_counts()``).  What the interpreter allocates itself is
    not reported (tracemalloc traces it in domain 0).  ``on=False`` stops
    the reports and restores the previous ``profile_rate``; frees of objects
    already reported are still untracked.
    """
    if on:
        if _trace_state["previous_rate"] is None:
            _trace_state["previous_rate"] = get_option("profile_rate")
        set_option("profile_rate", DEFAULT_TRACE_RATE if rate is None else rate)
        lib.pgm_trace_set(1)
    else:
        lib.pgm_trace_set(0)
        previous = _trace_state["previous_rate"]
        if previous is not None:
            set_option("profile_rate", previous)
            _trace_state["previous_rate"] = None


class TraceCounts(NamedTuple):
    """What trace_native did with the samples, since the process started."""

    #: Samples reported with PyTraceMalloc_Track.
    tracked: int
    #: Frees of reported samples, untracked at once.
    untracked: int
    #: Samples dropped: their thread had no thread state or did not hold the GIL.
    no_gil: int
    #: Samples not reported: the interpreter's own allocations (domain 0 has them).
    interpreter: int
    #: Samples dropped: tracemalloc was not tracing.
    not_tracing: int
    #: Samples dropped: the interpreter was finalizing, or in a fork() child it has not set up.
    unsafe: int
    #: Untracks deferred to the main thread (freed where Python could not be called).
    deferred: int
    #: Untracks lost (the deferral queue was full, or Python was going away).
    lost: int


def trace_native_counts() -> TraceCounts:
    """The counters of trace_native."""
    out = ffi.new("uint64_t[]", int(lib.PGM_NCOUNTS))
    lib.pgm_trace_counts(out)
    return TraceCounts(*(int(v) for v in out))


# --------------------------------------------------------------------------
# Memory pressure

_KINDS = {
    int(lib.GM_PRESSURE_BYTES): "bytes",
    int(lib.GM_PRESSURE_MEMORY_LIMIT): "memory_limit",
    int(lib.GM_PRESSURE_HARD_LIMIT): "hard_limit",
    int(lib.GM_PRESSURE_PSI): "psi",
    int(lib.GM_PRESSURE_CGROUP): "cgroup",
}


@dataclass(frozen=True)
class PressureEvent:
    """What a pressure callback receives."""

    #: "bytes", "memory_limit", "hard_limit" (a heap_inuse threshold), "psi" or "cgroup".
    kind: str
    #: True: crossed upward (or a kernel event); False: fell back below the level.
    rising: bool
    #: The threshold in bytes of heap_inuse (0 for kernel triggers).
    level: int
    #: heap_inuse when the watcher thread looked.
    heap_inuse: int
    #: Crossings (kernel events) this call stands for: they coalesce while Python is busy.
    count: int
    #: The cgroup's memory.events "high" count ("cgroup"), else 0.
    cgroup_high: int
    #: The statistics, read when the callback is called.
    stats: Stats


class PressureHandle:
    """A registered pressure callback; ``remove()`` unregisters it."""

    def __init__(self, ident: int, callback: Callable[[PressureEvent], object], kind: str) -> None:
        self.id = ident
        self.callback = callback
        self.kind = kind
        #: Calls made so far.
        self.calls = 0

    @property
    def active(self) -> bool:
        return _handles.get(self.id) is self

    def remove(self) -> None:
        """Unregister (idempotent)."""
        if _handles.get(self.id) is self:
            del _handles[self.id]
            lib.gm_pressure_remove(self.id)

    def __repr__(self) -> str:
        return f"<pygomalloc.PressureHandle {self.kind} id={self.id} calls={self.calls}>"


_handles: dict[int, PressureHandle] = {}


@ffi.def_extern()  # type: ignore[misc]
def pgm_pressure_dispatch(ident: int, kind: int, rising: int, level: int, inuse: int, count: int,
                          value: int) -> None:
    """Called on the main thread at a safe point (a pending call) per event."""
    handle = _handles.get(ident)
    if handle is None:
        return
    event = PressureEvent(_KINDS.get(kind, str(kind)), bool(rising), level, inuse, count, value, stats())
    handle.calls += 1
    try:
        handle.callback(event)
    except Exception:  # noqa: BLE001 - a callback's error is reported, not raised into unrelated code
        traceback.print_exc()


def on_pressure(callback: Callable[[PressureEvent], object], *, bytes: int | None = None,
                fraction: float | None = None, of: str = "hard_limit",
                psi: tuple[int, int] | None = None, cgroup: bool = False,
                falling: bool = False) -> PressureHandle:
    """Call *callback(event)* when memory gets tight (a ``PressureEvent``).

    Exactly one trigger: *bytes* (heap_inuse reaches that many bytes),
    *fraction* (of option *of*, ``"hard_limit"`` or ``"memory_limit"``;
    inactive while it is 0), *psi* = ``(stall_us, window_us)`` (the kernel's
    PSI trigger on /proc/pressure/memory: "some" stall of that many
    microseconds within the window), or *cgroup* = True (the "high" count of
    the process's cgroup v2 memory.events grows).  The callback runs on the
    main thread at a safe point (``Py_AddPendingCall``), never inside
    malloc, once per upward crossing (crossings that happen before it runs
    are one call, ``event.count``), and with *falling* also once when
    heap_inuse falls back below the level less a sixteenth.  Typical use:
    clear a cache before the hard limit makes allocations fail::

        pygomalloc.set_option("hard_limit", 2 << 30)
        pygomalloc.on_pressure(lambda ev: cached_load.cache_clear(), fraction=0.8)

    Raises ``OSError`` when the kernel refuses the trigger (no PSI, no
    cgroup v2 memory controller), ``ValueError`` for bad arguments.
    """
    given = [x is not None and x is not False for x in (bytes, fraction, psi, cgroup)]
    if sum(given) != 1:
        raise ValueError("on_pressure: give exactly one of bytes=, fraction=, psi=, cgroup=True")
    flags = int(lib.GM_PRESSURE_FALLING) if falling else 0
    window = 0
    if bytes is not None:
        if bytes <= 0:
            raise ValueError(f"bytes must be positive, not {bytes}")
        kind, value = lib.GM_PRESSURE_BYTES, int(bytes)
    elif fraction is not None:
        if of not in ("hard_limit", "memory_limit"):
            raise ValueError(f"of must be 'hard_limit' or 'memory_limit', not {of!r}")
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], not {fraction}")
        kind = lib.GM_PRESSURE_HARD_LIMIT if of == "hard_limit" else lib.GM_PRESSURE_MEMORY_LIMIT
        value = max(1, round(fraction * 1_000_000))
    elif psi is not None:
        kind, (value, window) = lib.GM_PRESSURE_PSI, psi
    else:
        kind, value = lib.GM_PRESSURE_CGROUP, 0
    code = lib.pgm_pressure_set(1)
    if code:
        raise OSError(code, f"pygomalloc: cannot start the pressure watcher: {os.strerror(code)}")
    ident = int(lib.gm_pressure_add(kind, value, window, flags))
    if ident < 0:
        raise OSError(-ident, f"pygomalloc: {_KINDS[int(kind)]} pressure trigger refused: "
                              f"{os.strerror(-ident)}")
    handle = PressureHandle(ident, callback, _KINDS[int(kind)])
    _handles[ident] = handle
    return handle


def pressure_fd() -> int:
    """A file descriptor (an eventfd) that becomes readable each time a
    pressure event is queued for the main thread: ``select`` on it to wait
    for one without polling (-1 before the first on_pressure)."""
    return int(lib.pgm_pressure_fd())


# --------------------------------------------------------------------------
# The page map

#: Bytes per page of the page map, and pages per arena.
PAGE_SIZE: int = int(lib.GM_PAGE_SIZE)
ARENA_PAGES: int = int(lib.GM_ARENA_PAGES)
PAGE_RESERVED: int = int(lib.GM_PAGE_RESERVED)
PAGE_LARGE: int = int(lib.GM_PAGE_LARGE)
PAGE_FREE: int = int(lib.GM_PAGE_FREE)
PAGE_RELEASED: int = int(lib.GM_PAGE_RELEASED)
PAGE_FAULTED: int = int(lib.GM_PAGE_FAULTED)
#: The states that are not size classes, by value.
PAGE_STATES: dict[int, str] = {PAGE_RESERVED: "reserved", PAGE_LARGE: "large", PAGE_FREE: "free",
                               PAGE_RELEASED: "released", PAGE_FAULTED: "faulted"}


def page_state_name(value: int) -> str:
    """``"reserved"``, ``"released"``, ``"free"``, ``"faulted"``, ``"large"`` or ``"class N"``."""
    return PAGE_STATES.get(value, f"class {value}")


class ArenaMap(NamedTuple):
    """One arena of the page map."""

    #: The arena's first address (64 MiB aligned).
    base: int
    #: ARENA_PAGES bytes, page i at base + i * PAGE_SIZE: a read-only view of
    #: the allocator's own map, updated in place as the heap changes.
    pages: memoryview


def page_map() -> list[ArenaMap]:
    """The live page map: one ``ArenaMap`` per arena with mapped memory, by
    address (arenas need not be contiguous).  Zero-copy: each ``pages`` is
    a read-only memoryview of the bytes the allocator keeps up to date, one
    per 8 KiB page: 1 .. 66 a span of that size class, or ``PAGE_LARGE``,
    ``PAGE_FREE``, ``PAGE_RELEASED``, ``PAGE_FAULTED``, ``PAGE_RESERVED``
    (``PAGE_STATES``).  Read ``bytes(view)`` for a consistent copy."""
    base = ffi.new("uintptr_t *")
    out = []
    i = 0
    while True:
        ptr = lib.gm_page_map(i, base)
        if ptr == ffi.NULL:
            break
        out.append(ArenaMap(int(base[0]), memoryview(ffi.buffer(ptr, ARENA_PAGES)).toreadonly()))
        i += 1
    out.sort(key=lambda a: a.base)
    return out


def page_map_totals(maps: list[ArenaMap] | None = None) -> dict[str, int]:
    """Pages per state over *maps* (default: ``page_map()`` now): the keys
    of ``PAGE_STATES``' names plus ``"in_use"`` (small spans and large
    objects), and ``"class N"`` for each size class present.  Times
    PAGE_SIZE, ``in_use`` is heap_inuse, ``released + faulted`` is
    heap_released and ``free`` is heap_idle - heap_released, in a quiescent
    process."""
    counts = [0] * 256
    for arena in maps if maps is not None else page_map():
        data = bytes(arena.pages)
        for value in set(data):
            counts[value] += data.count(value)
    totals = {name: counts[value] for value, name in PAGE_STATES.items()}
    classes = {f"class {v}": counts[v] for v in range(1, PAGE_LARGE) if counts[v]}
    totals["in_use"] = sum(classes.values()) + counts[PAGE_LARGE]
    totals.update(classes)
    return totals


# --------------------------------------------------------------------------
# Limits


def refresh_limits() -> int:
    """Read the cgroup's memory limit again and recompute the options set to
    ``"auto"`` (``set_option("memory_limit", "auto")``); returns the
    cgroup's limit in bytes (0: none)."""
    return int(lib.gm_limits_refresh())


def option_is_auto(name: str) -> bool:
    """Whether option *name* is ``"auto"`` (its value, from ``get_option``,
    then follows the cgroup's limit)."""
    code = int(lib.gm_option_is_auto(name.encode()))
    if code < 0:
        raise ValueError(f"unknown pygomalloc option {name!r}")
    return bool(code)


# --------------------------------------------------------------------------
# Set-up at import

lib.pgm_observe_init()
atexit.register(lib.pgm_observe_shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lib.pgm_after_python_fork)
