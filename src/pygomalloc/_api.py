"""The Python API over the C core: check arguments, make one C call, raise.

Addresses are plain ints.  The C wrappers (``pgm_*``, see build_ext.py) take
and return ``uintptr_t`` and validate pointers with ``gm_check`` /
``gm_free_checked``, so bad input raises here and never aborts the process.
cffi releases the GIL around every call, so threads allocate in parallel.
"""

from __future__ import annotations

import ctypes
import difflib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from ._gomalloc import ffi, lib

__all__ = [
    "Buffer",
    "HeapCorruptionError",
    "InteriorPointerError",
    "InvalidPointerError",
    "NotAllocatedError",
    "NotOursError",
    "SizeClassStats",
    "Stats",
    "aligned_alloc",
    "calloc",
    "check_heap",
    "describe_option",
    "free",
    "get_include",
    "get_library",
    "get_option",
    "get_preload_library",
    "heap_profile",
    "ProfileRecord",
    "install",
    "installed",
    "malloc",
    "options",
    "owns",
    "realloc",
    "rejected_options",
    "RejectedOption",
    "release",
    "set_option",
    "stats",
    "thread_flush",
    "uninstall",
    "usable_size",
]

_PACKAGE_DIR = Path(__file__).resolve().parent
_SLOTS = {"slots": True} if sys.version_info >= (3, 10) else {}


# --------------------------------------------------------------------------
# Errors


class InvalidPointerError(ValueError):
    """An address that is not the start of a live pygomalloc object.

    Never raised itself: one of its subclasses says what is wrong.  The heap
    is left untouched.
    """

    def __init__(self, address: int, reason: str) -> None:
        super().__init__(f"{reason}: {address:#x}")
        #: The offending address.
        self.address = address


class NotOursError(InvalidPointerError):
    """The address is not in memory that pygomalloc manages."""


class InteriorPointerError(InvalidPointerError):
    """The address points inside an object, not at its start."""


class NotAllocatedError(InvalidPointerError):
    """The object is free: freed already (double free) or never handed out."""


class HeapCorruptionError(RuntimeError):
    """``check_heap()`` found broken heap invariants (listed on stderr by the C core)."""

    def __init__(self, violations: int) -> None:
        super().__init__(f"pygomalloc heap check failed: {violations} violation(s), see stderr")
        #: Number of violated invariants.
        self.violations = violations


_POINTER_ERRORS: dict[int, type[InvalidPointerError]] = {
    lib.GM_ERR_NOT_OURS: NotOursError,
    lib.GM_ERR_INTERIOR: InteriorPointerError,
    lib.GM_ERR_NOT_ALLOCATED: NotAllocatedError,
}


def _error(code: int, address: int, size: int = 0) -> Exception:
    """The exception for a nonzero return code of a ``pgm_*`` wrapper."""
    if code == lib.PGM_ERR_NOMEM:
        return MemoryError(f"pygomalloc: cannot allocate {size} bytes")
    reason = ffi.string(lib.gm_strerror(code)).decode()
    if code not in _POINTER_ERRORS:
        return RuntimeError(f"pygomalloc: unexpected error {code} ({reason}) at {address:#x}")
    return _POINTER_ERRORS[code](address, reason)


def _overflow_error(*, address: int = 0, sizes: tuple[int, ...] = ()) -> Exception:
    """The exception for an argument that did not fit its C type."""
    if not 0 <= address < 2**64:
        return NotOursError(address, "not an address")
    if any(size < 0 for size in sizes):
        return ValueError(f"negative size in {sizes}")
    return MemoryError(f"pygomalloc: cannot allocate {' * '.join(map(str, sizes))} bytes")


# --------------------------------------------------------------------------
# Allocation


def malloc(size: int) -> int:
    """Allocate *size* bytes and return their address.

    ``malloc(0)`` returns a distinct address that may be freed.  Raises
    ``MemoryError`` when the memory cannot be had and ``ValueError`` for a
    negative size.
    """
    try:
        address: int = lib.pgm_malloc(size)
    except OverflowError:
        raise _overflow_error(sizes=(size,)) from None
    if not address:
        raise MemoryError(f"pygomalloc: cannot allocate {size} bytes")
    return address


def calloc(count: int, size: int) -> int:
    """Allocate zeroed memory for *count* objects of *size* bytes each.

    A product that overflows raises ``MemoryError``.
    """
    try:
        address: int = lib.pgm_calloc(count, size)
    except OverflowError:
        raise _overflow_error(sizes=(count, size)) from None
    if not address:
        raise MemoryError(f"pygomalloc: cannot allocate {count} * {size} bytes")
    return address


def realloc(address: int, size: int) -> int:
    """Resize the object at *address* to *size* bytes; return its (new) address.

    The first ``min(old, size)`` bytes are preserved; ``realloc(0, n)`` is
    ``malloc(n)``.  On ``MemoryError`` the old object is left as it was.
    """
    out = ffi.new("uintptr_t *")
    try:
        code = lib.pgm_realloc(address, size, out)
    except OverflowError:
        raise _overflow_error(address=address, sizes=(size,)) from None
    if code:
        raise _error(code, address, size)
    return int(out[0])


def aligned_alloc(alignment: int, size: int) -> int:
    """Allocate *size* bytes at an address that is a multiple of *alignment*.

    *alignment* must be a power of two (``ValueError`` otherwise).
    """
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a power of two, not {alignment}")
    out = ffi.new("uintptr_t *")
    try:
        code = lib.pgm_aligned_alloc(alignment, size, out)
    except OverflowError:
        if alignment >= 2**64:
            raise ValueError(f"alignment {alignment} is too large") from None
        raise _overflow_error(sizes=(size,)) from None
    if code == lib.EINVAL:
        raise ValueError(f"alignment {alignment} is not supported")
    if code:
        raise _error(code, 0, size)
    return int(out[0])


def free(address: int) -> None:
    """Free the object at *address*.  ``free(0)`` does nothing.

    Raises a subclass of ``InvalidPointerError`` (and frees nothing) if
    *address* is not the start of a live object: a double free, a pointer
    into an object, or memory pygomalloc does not manage.
    """
    try:
        code = lib.pgm_free(address)
    except OverflowError:
        raise _overflow_error(address=address) from None
    if code:
        raise _error(code, address)


def usable_size(address: int) -> int:
    """Bytes usable at *address*, at least the size asked for; 0 for address 0."""
    out = ffi.new("size_t *")
    try:
        code = lib.pgm_usable_size(address, out)
    except OverflowError:
        raise _overflow_error(address=address) from None
    if code:
        raise _error(code, address)
    return int(out[0])


def owns(address: int) -> bool:
    """Whether *address* lies in memory pygomalloc manages (any int may be asked)."""
    try:
        return bool(lib.pgm_owns(address))
    except OverflowError:
        return False


def release() -> int:
    """Flush this thread's cache and return every free page to the OS; bytes released."""
    return int(lib.gm_release())


def thread_flush() -> None:
    """Give the calling thread's cached free objects, and the transfer caches
    (batches other threads flushed), back to their spans."""
    lib.gm_thread_flush()


def check_heap() -> None:
    """Check every heap invariant; raise ``HeapCorruptionError`` if any is broken.

    Takes every lock of the allocator: call it when no other thread is using it.
    """
    violations = lib.gm_check_heap()
    if violations:
        raise HeapCorruptionError(violations)


# --------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True, **_SLOTS)
class SizeClassStats:
    """One size class: a row of ``Stats.by_size``."""

    #: Index of the class; 0 holds large objects (more than GM_MAX_SMALL_SIZE bytes).
    size_class: int
    # BEGIN GENERATED SizeClassStats: tools/mktables.py from tools/tables.py, do not edit
    #: Bytes per object of this class (0 for class 0).
    size: int = field(metadata={"unit": "bytes", "go": "Size"})
    #: Pages (8 KiB) per span of this class.
    npages: int = field(metadata={"unit": "pages", "go": "class_to_allocnpages"})
    #: Objects handed out, ever.
    mallocs: int = field(metadata={"unit": "objects", "go": "Mallocs"})
    #: Objects given back, ever.
    frees: int = field(metadata={"unit": "objects", "go": "Frees"})
    #: Spans of this class in use (class 0: one per large object).
    spans: int = field(metadata={"unit": "spans", "go": None})
    #: Objects those spans hold when full: capacity - (mallocs - frees) slots hold no live object
    #: (free in spans, or cached on lists).
    capacity: int = field(metadata={"unit": "objects", "go": None})
    # END GENERATED SizeClassStats

    @property
    def live(self) -> int:
        """Objects of this class allocated now."""
        return self.mallocs - self.frees

    @property
    def idle_slots(self) -> int:
        """Slots of this class's spans that hold no live object: free in their
        span or cached on a free list.  Times ``size``, the bytes the class
        holds beyond its live objects (its fragmentation)."""
        return self.capacity - self.live


@dataclass(frozen=True, **_SLOTS)
class Stats:
    """The allocator's figures, in the vocabulary of Go's ``runtime.MemStats``.

    Exact when read while no other thread allocates or frees; otherwise each
    figure is a recent value.  Sizes are in bytes.
    """

    # BEGIN GENERATED Stats: tools/mktables.py from tools/tables.py, do not edit
    # Memory obtained from the OS, and the heap.
    #: heap_sys + mspan_sys + mcache_sys + other_sys: everything from the OS.
    sys: int = field(metadata={"unit": "bytes", "go": "Sys"})
    #: Address space reserved (PROT_NONE or mapped) for arenas.
    heap_reserved: int = field(metadata={"unit": "bytes", "go": None})
    #: Arena bytes mapped (Prepared or Ready): heap_idle + heap_inuse.
    heap_sys: int = field(metadata={"unit": "bytes", "go": "HeapSys"})
    #: Bytes of live objects (rounded up to their size class).
    heap_alloc: int = field(metadata={"unit": "bytes", "go": "HeapAlloc"})
    #: Bytes in free page runs.
    heap_idle: int = field(metadata={"unit": "bytes", "go": "HeapIdle"})
    #: Bytes in spans holding objects.
    heap_inuse: int = field(metadata={"unit": "bytes", "go": "HeapInuse"})
    #: Part of heap_idle returned to the OS (Prepared).
    heap_released: int = field(metadata={"unit": "bytes", "go": "HeapReleased"})
    #: Live objects: mallocs - frees.
    heap_objects: int = field(metadata={"unit": "objects", "go": "HeapObjects"})
    #: Objects allocated, ever.
    mallocs: int = field(metadata={"unit": "objects", "go": "Mallocs"})
    #: Objects freed, ever.
    frees: int = field(metadata={"unit": "objects", "go": "Frees"})
    #: Bytes allocated, ever (rounded up to their size class).
    total_alloc: int = field(metadata={"unit": "bytes", "go": "TotalAlloc"})
    #: Live objects larger than GM_MAX_SMALL_SIZE (a span each).
    large_objects: int = field(metadata={"unit": "objects", "go": None})
    # Metadata.
    #: Bytes of span structures in use.
    mspan_inuse: int = field(metadata={"unit": "bytes", "go": "MSpanInuse"})
    #: Bytes obtained from the OS for span structures.
    mspan_sys: int = field(metadata={"unit": "bytes", "go": "MSpanSys"})
    #: Bytes of per-thread caches in use.
    mcache_inuse: int = field(metadata={"unit": "bytes", "go": "MCacheInuse"})
    #: Bytes obtained from the OS for per-thread caches.
    mcache_sys: int = field(metadata={"unit": "bytes", "go": "MCacheSys"})
    #: Other metadata: arena maps, heapArena records, state maps, bitmaps.
    other_sys: int = field(metadata={"unit": "bytes", "go": "OtherSys"})
    # Caches, arenas, threads, errors.
    #: Part of heap_inuse on per-thread free lists: free, not yet in spans.
    cached_bytes: int = field(metadata={"unit": "bytes", "go": None})
    #: Part of heap_inuse in the transfer caches: lists a thread flushed, kept whole until it runs
    #: out (any thread may take a consumer's) (free, not in spans).
    transfer_bytes: int = field(metadata={"unit": "bytes", "go": None})
    #: 64 MiB heap arenas holding mapped memory (each has a heapArena record).
    num_arenas: int = field(metadata={"unit": "arenas", "go": None})
    #: Live per-thread caches.
    num_threads: int = field(metadata={"unit": "threads", "go": None})
    #: Invalid frees detected (and refused, with abort_on_error 0).
    bad_frees: int = field(metadata={"unit": "calls", "go": None})
    # OS state transitions (csrc/mem_linux.c): calls.
    #: sysReserve calls: None -> Reserved.
    n_sys_reserve: int = field(metadata={"unit": "calls", "go": "sysReserve"})
    #: sysMap calls: Reserved -> Prepared.
    n_sys_map: int = field(metadata={"unit": "calls", "go": "sysMap"})
    #: sysUsed calls: Prepared -> Ready.
    n_sys_used: int = field(metadata={"unit": "calls", "go": "sysUsed"})
    #: sysUnused calls: Ready -> Prepared.
    n_sys_unused: int = field(metadata={"unit": "calls", "go": "sysUnused"})
    #: sysFree calls: any state -> None.
    n_sys_free: int = field(metadata={"unit": "calls", "go": "sysFree"})
    #: sysFault calls: back to Reserved.
    n_sys_fault: int = field(metadata={"unit": "calls", "go": "sysFault"})
    # ... and their bytes.
    #: Bytes passed to sysReserve.
    bytes_sys_reserve: int = field(metadata={"unit": "bytes", "go": None})
    #: Bytes passed to sysMap.
    bytes_sys_map: int = field(metadata={"unit": "bytes", "go": None})
    #: Bytes passed to sysUsed.
    bytes_sys_used: int = field(metadata={"unit": "bytes", "go": None})
    #: Bytes passed to sysUnused.
    bytes_sys_unused: int = field(metadata={"unit": "bytes", "go": None})
    #: Bytes passed to sysFree.
    bytes_sys_free: int = field(metadata={"unit": "bytes", "go": None})
    #: Bytes passed to sysFault.
    bytes_sys_fault: int = field(metadata={"unit": "bytes", "go": None})
    # Scavenger.
    #: Scavenger passes that released something.
    scavenge_cycles: int = field(metadata={"unit": "passes", "go": None})
    #: Bytes returned to the OS, ever.
    scavenged_bytes: int = field(metadata={"unit": "bytes", "go": None})
    #: Physical page size read at start-up.
    phys_page_size: int = field(metadata={"unit": "bytes", "go": "physPageSize"})
    #: Transparent huge page size (0 if none).
    huge_page_size: int = field(metadata={"unit": "bytes", "go": "physHugePageSize"})
    # The tiny allocator (option tiny): objects of 1 to 8 bytes in shared 16-byte blocks, which count as objects of the 16-byte class above.
    #: Tiny objects allocated, ever.
    tiny_mallocs: int = field(metadata={"unit": "objects", "go": "/gc/heap/tiny/allocs:objects"})
    #: Tiny objects freed, ever.
    tiny_frees: int = field(metadata={"unit": "objects", "go": None})
    # Per size class.
    #: One row per size class, indexed by class; class 0 is large objects.
    by_size: tuple[SizeClassStats, ...] = field(metadata={"unit": "", "go": "BySize"})
    # END GENERATED Stats


_STATS_FIELDS = tuple(f.name for f in fields(Stats) if f.name != "by_size")
_ROW_FIELDS = tuple(f.name for f in fields(SizeClassStats) if f.name != "size_class")


def stats() -> Stats:
    """Read the allocator's statistics (one ``gm_read_stats`` call)."""
    size = ffi.sizeof("struct gm_stats")
    st = ffi.new("struct gm_stats *", {"size": size})
    code = lib.gm_read_stats(st)
    if code or st.size != size:  # a libgomalloc.so built from another gomalloc.h
        raise RuntimeError(f"gm_read_stats failed ({code}): library struct of {st.size} bytes, ours {size}")
    by_size = tuple(
        SizeClassStats(i, *(getattr(row, name) for name in _ROW_FIELDS)) for i, row in enumerate(st.by_size)
    )
    return Stats(**{name: getattr(st, name) for name in _STATS_FIELDS}, by_size=by_size)


# --------------------------------------------------------------------------
# Options


def _option_names() -> list[str]:
    names: list[str] = []
    while True:
        name = lib.gm_option_name(len(names))
        if name == ffi.NULL:
            return names
        names.append(ffi.string(name).decode())


def _check_option_name(name: str) -> bytes:
    names = _option_names()
    if name not in names:
        close = difflib.get_close_matches(name.lower(), names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown pygomalloc option {name!r}{hint}")
    return name.encode()


def options() -> dict[str, int]:
    """Every option and its current value (README.md has the table).

    ``GOMALLOC_<NAME>`` sets one at start-up; the variables that were
    ignored then (bad value, no such option) are in ``rejected_options()``.
    """
    return {name: get_option(name) for name in _option_names()}


def get_option(name: str) -> int:
    """The value of option *name*; ``ValueError`` if there is no such option."""
    value = ffi.new("long long *")
    if lib.gm_option_get(_check_option_name(name), value):
        raise ValueError(f"cannot read pygomalloc option {name!r}")
    return int(value[0])


def describe_option(name: str) -> str:
    """What option *name* accepts, e.g. ``"a number of milliseconds from 0 to 3600000"``."""
    buf = ffi.new("char[]", 256)
    if lib.gm_option_describe(_check_option_name(name), buf, len(buf)):
        raise ValueError(f"cannot describe pygomalloc option {name!r}")
    return str(ffi.string(buf).decode())


def set_option(name: str, value: int | str) -> None:
    """Set option *name*.

    ``ValueError`` for an unknown name, or a value the option does not
    accept (the message says what it accepts; the option keeps its value).
    ``memory_limit`` and ``hard_limit`` also take ``"auto"``: a percentage
    (options ``auto_memory_limit_percent``, ``auto_hard_limit_percent``) of
    the process's cgroup v2 memory limit (``refresh_limits()`` reads it
    again).
    """
    key = _check_option_name(name)
    shown = value
    try:
        if isinstance(value, str):
            if value.strip().lower() != "auto":
                raise ValueError(f"pygomalloc option {name!r} cannot be {value!r}: "
                                 f"expected {describe_option(name)}")
            value = lib.GM_OPTION_AUTO
        elif value == lib.GM_OPTION_AUTO:  # C's sentinel for "auto": ints from Python are numbers
            raise OverflowError
        code = lib.gm_option_set(key, value)
    except OverflowError:
        code = lib.EINVAL
    if code:
        raise ValueError(f"pygomalloc option {name!r} cannot be {shown!r}: expected {describe_option(name)}")


class RejectedOption(NamedTuple):
    """A ``GOMALLOC_`` environment variable that start-up ignored, with a
    warning on stderr: its value is not accepted, or it names no option."""

    #: The variable, e.g. ``"GOMALLOC_DECAY_MS"``.
    variable: str
    #: Its value (cut after 64 bytes, with ``...``).
    value: str
    #: Why, e.g. ``"expected a number of milliseconds from 0 to 3600000 (K, M,
    #: G suffixes allowed)"`` or ``"no such option; did you mean GOMALLOC_TINY?"``.
    reason: str


def rejected_options() -> list[RejectedOption]:
    """The ``GOMALLOC_`` variables ignored at start-up, in the order of the
    environment (the options they meant kept their defaults)."""
    out = []
    strings = ffi.new("const char *[3]")
    while lib.gm_option_rejected(len(out), strings, strings + 1, strings + 2) == 0:
        variable, value, reason = (ffi.string(s).decode("utf-8", "replace") for s in strings)
        out.append(RejectedOption(variable, value, reason))
    return out


# --------------------------------------------------------------------------
# Files for C users


def get_include() -> str:
    """The directory holding ``gomalloc.h``, for ``-I``."""
    return str(_PACKAGE_DIR / "include")


def _library(name: str) -> str:
    path = _PACKAGE_DIR / "_lib" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: pygomalloc was not built completely")
    return str(path)


def get_library() -> str:
    """Path of ``libgomalloc.so``, the allocator as a plain C library (no Python)."""
    return _library("libgomalloc.so")


def get_preload_library() -> str:
    """Path of ``libgomalloc_preload.so``, which replaces malloc under ``LD_PRELOAD``."""
    return _library("libgomalloc_preload.so")


# --------------------------------------------------------------------------
# The heap profile (option profile_rate)


@dataclass(frozen=True, **_SLOTS)
class ProfileRecord:
    """The allocations made from one call stack (Go's MemProfileRecord).

    With ``profile_rate`` R, one allocation per R bytes on average is
    sampled.  The main figures are estimates of all the allocations made
    from the stack, sampled or not, as Go's pprof reports them: a sample of
    an allocation of s bytes had the chance p = 1 - exp(-s/R) to be taken,
    and counts for 1/p objects and 1/p times its bytes.  They are unbiased
    (their expectation is the true figure), and exact with R = 1, where every
    allocation is sampled.  Bytes are those of the objects' size classes (as
    ``usable_size``).  The raw samples behind them are the ``*_samples`` and
    ``*_sample_bytes`` fields.
    """

    #: The call stack, the allocation's caller first: ``object(symbol+0x..)``.
    stack: tuple[str, ...]
    #: The same frames as return addresses.
    addresses: tuple[int, ...]
    #: Objects allocated from this stack, ever (estimate).
    alloc_objects: int
    #: Their bytes (estimate).
    alloc_bytes: int
    #: Of those, objects freed since (estimate; at most alloc_objects).
    free_objects: int
    #: Their bytes (estimate; at most alloc_bytes).
    free_bytes: int
    #: Sampled allocations from this stack, ever.
    alloc_samples: int
    #: Their bytes.
    alloc_sample_bytes: int
    #: Of those, the ones freed since.
    free_samples: int
    #: Their bytes.
    free_sample_bytes: int

    @property
    def inuse_objects(self) -> int:
        """Objects from this stack live now (estimate)."""
        return self.alloc_objects - self.free_objects

    @property
    def inuse_bytes(self) -> int:
        """Their bytes (estimate)."""
        return self.alloc_bytes - self.free_bytes

    @property
    def inuse_samples(self) -> int:
        """Sampled objects from this stack live now."""
        return self.alloc_samples - self.free_samples

    @property
    def inuse_sample_bytes(self) -> int:
        """Their bytes."""
        return self.alloc_sample_bytes - self.free_sample_bytes


def _symbols(addresses: tuple[int, ...], cache: dict[int, str]) -> tuple[str, ...]:
    """``object(symbol+0x..)`` for each code address (gm_profile_symbol), through *cache*."""
    buf = None
    for a in addresses:
        if a not in cache:
            buf = buf if buf is not None else ffi.new("char[]", 512)
            cache[a] = ffi.string(lib.gm_profile_symbol(ffi.cast("void *", a), buf, len(buf))).decode(
                "utf-8", "replace")
    return tuple(cache[a] for a in addresses)


def heap_profile() -> list[ProfileRecord]:
    """Every call site the heap profile has sampled, most bytes in use first
    (estimated: see ``ProfileRecord``).

    Empty until the option ``profile_rate`` is set above 0
    (``set_option("profile_rate", 512 * 1024)`` samples, as Go does by
    default, one allocation per 512 KiB; 1 samples every allocation).
    """
    record_size = ffi.sizeof("struct gm_profile_record")
    n = lib.gm_profile_read(ffi.NULL, 0, record_size)
    while True:
        recs = ffi.new("struct gm_profile_record[]", max(n, 1))
        got = lib.gm_profile_read(recs, len(recs), record_size)
        if got <= len(recs):
            break
        n = got  # more call sites appeared meanwhile
    symbols: dict[int, str] = {}
    out = []
    for i in range(got):
        r = recs[i]
        addrs = tuple(int(ffi.cast("uintptr_t", r.stack[f])) for f in range(r.nstack))
        out.append(ProfileRecord(
            _symbols(addrs, symbols), addrs,
            int(r.alloc_objects_est), int(r.alloc_bytes_est), int(r.free_objects_est),
            int(r.free_bytes_est), int(r.alloc_objects), int(r.alloc_bytes),
            int(r.free_objects), int(r.free_bytes)))
    out.sort(key=lambda r: (-r.inuse_bytes, -r.alloc_bytes))
    return out


# --------------------------------------------------------------------------
# The C API for other extensions: a PyCapsule (gomalloc.h, struct gm_capi)


def _make_capsule() -> object:
    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    # The name lives in the extension module (static), as a capsule's must.
    return new(lib.pgm_capi_pointer(), lib.pgm_capi_name_pointer(), None)


#: ``pygomalloc._C_API``: the capsule that ``gm_capi_import()`` (gomalloc.h)
#: imports.
_C_API = _make_capsule()


# --------------------------------------------------------------------------
# Installing pygomalloc under the running interpreter (PyMem_SetAllocator)

_DOMAINS = {"raw": 0, "mem": 1, "obj": 2}


def _domain_mask(domains: Iterable[str]) -> int:
    if isinstance(domains, str):
        domains = (domains,)
    mask = 0
    for name in domains:
        if name not in _DOMAINS:
            raise ValueError(f"unknown allocator domain {name!r}: choose from raw, mem, obj")
        mask |= 1 << _DOMAINS[name]
    return mask


def _domain_names(mask: int) -> frozenset[str]:
    return frozenset(name for name, d in _DOMAINS.items() if mask & (1 << d))


def install(domains: Iterable[str] = ("mem", "obj")) -> frozenset[str]:
    """Make pygomalloc the allocator of this interpreter's memory domains.

    ``"mem"`` is ``PyMem_Malloc`` and friends, ``"obj"`` ``PyObject_Malloc``
    (every Python object); both are called with the GIL held.  pygomalloc
    wraps the allocator it replaces, as CPython requires after start-up:
    blocks allocated before go on being freed and resized by it (``owns()``
    tells the two apart), so installing is safe at any point.  ``"raw"``
    (``PyMem_RawMalloc``, called without the GIL) is installed only when
    named: swapping it races with threads that allocate without the GIL, so
    do it before starting threads.  Free-threaded CPython forbids replacing
    ``"obj"``.  Returns the domains routed to pygomalloc now.
    """
    mask = _domain_mask(domains)
    if mask & (1 << _DOMAINS["obj"]) and lib.pgm_free_threaded():
        raise RuntimeError("free-threaded CPython does not allow replacing the object allocator")
    return _domain_names(lib.pgm_pymem_route(mask, 1))


def uninstall(domains: Iterable[str] = ("raw", "mem", "obj")) -> frozenset[str]:
    """Send new blocks of these domains back to the allocators ``install``
    replaced.  Blocks pygomalloc handed out stay valid and are still freed by
    it (the wrapper stays in place).  Returns the domains still routed to
    pygomalloc."""
    return _domain_names(lib.pgm_pymem_route(_domain_mask(domains), 0))


def installed() -> frozenset[str]:
    """The domains whose new blocks come from pygomalloc."""
    return _domain_names(lib.pgm_pymem_route(0, 1))


# --------------------------------------------------------------------------
# Buffer


class Buffer:
    """*size* bytes of pygomalloc memory, reached through a writable memoryview.

    ``buf.view`` is a ``memoryview`` (format ``"B"``) over the memory::

        with pygomalloc.Buffer(4096) as buf:
            buf.view[:5] = b"hello"
            sock.recv_into(buf.view)

    Lifetime.  The memory is freed exactly once, by the cffi object that owns
    it, when the last view of it is gone.  ``close()`` (or leaving the
    ``with`` block) releases ``buf.view``: from then on the buffer and that
    view raise ``ValueError``, and the memory is freed at once unless views
    derived from it (slices, ``memoryview(buf.view)``) are still alive, in
    which case it is freed when they go.  So no view ever sees freed memory.
    ``close()`` raises ``BufferError`` while another object holds a buffer
    export of ``buf.view`` (as for any memoryview).  A buffer never closed is
    freed when it is garbage-collected.

    ``memoryview(buf)`` works from Python 3.12 on (``__buffer__``, PEP 688);
    before 3.12 a Python class cannot export a buffer, so use ``buf.view``.
    """

    __slots__ = ("_address", "_size", "_view")

    def __init__(self, size: int, *, zero: bool = False) -> None:
        address = calloc(1, size) if zero else malloc(size)
        self._own(address, size, lib.gm_free)

    def _own(self, address: int, size: int, release: Callable[[object], object]) -> None:
        """Take the object at *address*; *release* (called with a cdata
        pointer to it) frees it when the last view is gone."""
        owner = ffi.gc(ffi.cast("char *", address), release, size=size)
        self._address = address
        self._size = size
        self._view: memoryview | None = memoryview(ffi.buffer(owner, size))

    @classmethod
    def _adopt(cls, address: int, size: int, release: Callable[[object], object]) -> Buffer:
        """A Buffer over an object allocated elsewhere (``Heap.buffer``)."""
        buf = cls.__new__(cls)
        buf._own(address, size, release)
        return buf

    def _open_view(self) -> memoryview:
        if self._view is None:
            raise ValueError("operation on a closed pygomalloc.Buffer")
        return self._view

    @property
    def view(self) -> memoryview:
        """The writable memoryview over the memory; ``ValueError`` once closed."""
        return self._open_view()

    @property
    def address(self) -> int:
        """Address of the first byte; ``ValueError`` once closed."""
        self._open_view()
        return self._address

    @property
    def size(self) -> int:
        """Size in bytes, as asked for."""
        return self._size

    @property
    def closed(self) -> bool:
        return self._view is None

    def close(self) -> None:
        """Release the memory (see the class docstring).  Closing twice is allowed."""
        if self._view is not None:
            self._view.release()
            self._view = None

    def __enter__(self) -> Buffer:
        self._open_view()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __buffer__(self, flags: int) -> memoryview:
        return self._open_view()

    def __len__(self) -> int:
        return len(self._open_view())

    def __bytes__(self) -> bytes:
        return self._open_view().tobytes()

    def __repr__(self) -> str:
        if self._view is None:
            return f"<pygomalloc.Buffer closed, size={self._size}>"
        return f"<pygomalloc.Buffer address={self._address:#x} size={self._size}>"
