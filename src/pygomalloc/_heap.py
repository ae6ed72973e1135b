"""Heaps you can hold, scopes and their escape reports (csrc/heap.c).

A ``Heap`` is a set of allocations that belong together (a request, a
document, a model): spans of its own, an optional byte limit, statistics,
and ``close()``, which frees everything in it at once.  ``heap.scope()``
makes the heap the calling thread's default heap for a ``with`` block, so
that ``pygomalloc.malloc`` and, under ``pygomalloc.install()``, the
interpreter's own objects come from it; on leaving, the scope says what was
allocated, freed and is still live, and which call stacks the survivors
came from (the escape report).  ``track()`` gives the same figures for a
block without a heap of your own.

The C core does the work; this layer checks arguments, makes one C call
and turns error codes into exceptions, as ``_api`` does.  Heap handles are
slot + generation in C, never pointers: a destroyed heap's handle is
refused, so a Heap closed on another thread meanwhile raises here, never
crashes.
"""

from __future__ import annotations

import _tracemalloc  # is_tracing() without the tracemalloc module, which imports pickle
import threading
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from ._api import _ROW_FIELDS, _SLOTS, Buffer, NotOursError, SizeClassStats, _error, _overflow_error, _symbols
from ._gomalloc import ffi, lib

if TYPE_CHECKING:
    import tracemalloc

__all__ = [
    "EscapeReport",
    "EscapedSite",
    "Heap",
    "HeapBusyError",
    "HeapStats",
    "Scope",
    "WrongHeapError",
    "default_heap",
    "track",
]

#: The default heap's handle (it never changes).
_DEFAULT = int(lib.pgm_heap_default())
# The calls made inside a scope, looked up now: cffi makes a function object
# on an attribute's first use, which would be allocated in (and outlive) the
# first scope's heap.
_scope_enter = lib.pgm_heap_scope_enter
_scope_leave = lib.pgm_heap_scope_leave
#: Bytes of a heap's name, its terminating NUL excluded (gomalloc.h: char name[48]).
_NAME_MAX = ffi.sizeof(dict(ffi.typeof("struct gm_heap_stats").fields)["name"].type) - 1


# --------------------------------------------------------------------------
# Errors


class WrongHeapError(NotOursError):
    """The address is a live object of another heap than the one whose
    ``free`` was called.  Nothing was freed: the object stays live."""


class HeapBusyError(RuntimeError):
    """The heap cannot go now, and nothing was freed: a scope of it is
    active (it is a thread's default heap), or objects allocated while it
    was a scope are still live and may be in use anywhere (``delete()``
    hands them to the default heap instead)."""


def _closed_error(heap: Heap) -> ValueError:
    return ValueError(f"operation on a closed (destroyed or deleted) {heap!r}")


# --------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True, **_SLOTS)
class HeapStats:
    """One heap's figures (``struct gm_heap_stats``).  Bytes of objects are
    those of their size classes (as ``usable_size``); exact when no other
    thread uses the heap meanwhile.  For the default heap: the process's
    figures (every heap's objects, as ``pygomalloc.stats()``), ``limit``
    None and ``peak_inuse`` the current ``inuse``."""

    #: Bytes of spans the heap may hold (its allocations fail beyond), or None.
    limit: int | None
    #: Bytes of spans the heap holds (its objects' pages, free slots included).
    inuse: int
    #: The most ``inuse`` has been since the heap was made.
    peak_inuse: int
    #: Bytes of live objects.
    alloc: int
    #: Live objects.
    objects: int
    #: Objects allocated, ever.
    mallocs: int
    #: Objects freed, ever.
    frees: int
    #: Bytes allocated, ever.
    total_alloc: int
    #: Live objects larger than GM_MAX_SMALL_SIZE (a span each).
    large_objects: int
    #: Part of ``inuse`` on the threads' free lists for this heap (freed, kept for reuse).
    cached_bytes: int
    #: Threads with a cache for this heap.
    num_caches: int
    #: The heap's name ("" if it has none; "default" for the default heap).
    name: str
    #: One row per size class (class 0: large objects).
    by_size: tuple[SizeClassStats, ...] = field(repr=False)

    @property
    def freed(self) -> int:
        """Bytes freed, ever: ``total_alloc - alloc``."""
        return self.total_alloc - self.alloc


#: The uint64_t members read by name (gomalloc.h's order; tests/test_heaps.py checks it).
_STATS_FIELDS = tuple(f.name for f in fields(HeapStats) if f.name not in ("name", "by_size"))


def _read_stats(handle: int, heap: Heap) -> HeapStats:
    size = ffi.sizeof("struct gm_heap_stats")
    st = ffi.new("struct gm_heap_stats *", {"size": size})
    if lib.pgm_heap_read_stats(handle, st):
        raise _closed_error(heap)
    if st.size != size:  # a libgomalloc.so built from another gomalloc.h
        raise RuntimeError(f"gm_heap_read_stats: library struct of {st.size} bytes, ours {size}")
    by_size = tuple(SizeClassStats(i, *(getattr(row, n) for n in _ROW_FIELDS)) for i, row in enumerate(st.by_size))
    values = {n: int(getattr(st, n)) for n in _STATS_FIELDS}
    values["limit"] = values["limit"] or None
    return HeapStats(**values, name=ffi.string(st.name).decode("utf-8", "replace"), by_size=by_size)


def _live_objects(handle: int, heap: Heap, hint: int) -> list[tuple[int, int]]:
    """(address, size) of every live object, collected by C into arrays made
    first: nothing is allocated while the heap is walked."""
    n = hint + 64
    total = ffi.new("size_t *")
    while True:
        addrs = ffi.new("uintptr_t[]", n)
        sizes = ffi.new("uint64_t[]", n)
        code = lib.pgm_heap_visit(handle, addrs, sizes, n, total)
        if code == lib.ENOMEM:
            raise MemoryError("pygomalloc: no memory to list the heap's spans")
        if code:
            raise _closed_error(heap)
        if total[0] <= n:
            k = int(total[0])
            return list(zip(ffi.unpack(addrs, k), ffi.unpack(sizes, k)))
        n = int(total[0]) + 64  # other threads allocated meanwhile


# --------------------------------------------------------------------------
# Heaps

#: Heaps made here (and wrappers Heap.of made), by handle: Heap.of returns
#: the same object while it lives.
_heaps: weakref.WeakValueDictionary[int, Heap] = weakref.WeakValueDictionary()
_default_heap: Heap | None = None


class Heap:
    """A heap of your own: allocations that belong together.

    ::

        with pygomalloc.Heap(limit=64 << 20, name="request") as heap:
            p = heap.malloc(100)             # an address, as pygomalloc.malloc's
            with heap.scope() as s:          # this thread's allocations go to heap
                handle(request)
            print(s.allocated, s.escaped())
        # the heap and every object in it are gone (objects that outlived a
        # scope are handed to the default heap instead, with a ResourceWarning)

    *limit* bounds the bytes of spans the heap holds: past it its
    allocations raise ``MemoryError``, other heaps' go on.  *name* (at most
    47 bytes of UTF-8) shows in statistics and reports.  With
    *fault_on_destroy*, closing makes the heap's memory inaccessible for a
    while (``decay_ms``), so that a dangling pointer crashes at once (SIGSEGV)
    instead of reading other data, as Go's arenas do.

    Addresses, sizes and errors follow the module-level functions.  Every
    method of a closed heap raises ``ValueError``.  Any thread may use a
    heap; ``pygomalloc.free`` frees any heap's object.  A Heap that is
    garbage-collected unclosed is deleted (its objects join the default
    heap, nothing is freed) with a ``ResourceWarning``.
    """

    _handle: int | None

    def __init__(self, limit: int | None = None, name: str | None = None, fault_on_destroy: bool = False) -> None:
        self._handle = None  # until made: __del__ and repr look at it
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int):
                raise TypeError(f"limit must be an int or None, not {type(limit).__name__}")
            if not 0 < limit < 2**64:
                raise ValueError(f"limit must be a positive number of bytes, not {limit}")
        encoded = b""
        if name is not None:
            if not isinstance(name, str):
                raise TypeError(f"name must be a str or None, not {type(name).__name__}")
            encoded = name.encode()
            if b"\0" in encoded or len(encoded) > _NAME_MAX:
                raise ValueError(f"a heap's name is at most {_NAME_MAX} bytes of UTF-8, without NUL: {name!r}")
        out = ffi.new("uintptr_t *")
        code = lib.pgm_heap_new(encoded or ffi.NULL, limit or 0, int(bool(fault_on_destroy)), out)
        if code == lib.EAGAIN:
            raise RuntimeError("pygomalloc: too many heaps (4095 may exist at once): close some")
        if code == lib.ENOMEM:
            raise MemoryError("pygomalloc: no memory for a new heap")
        if code:
            raise ValueError(f"pygomalloc: gm_heap_new refused its options (error {code})")
        self._setup(int(out[0]), owned=True, name=name or "")
        self._limit = limit

    def _setup(self, handle: int, *, owned: bool, name: str) -> None:
        self._handle = handle
        self._owned = owned  # made here: deleted when garbage-collected unclosed
        self._name = name
        self._limit: int | None = None
        self._lock = threading.Lock()  # closing vs. making buffers and entering scopes
        self._buffers: set[int] = set()  # addresses of objects Buffers own
        self._scopes = 0  # scopes of this heap now active (Python's), on any thread
        _heaps[handle] = self

    @classmethod
    def _wrap(cls, handle: int) -> Heap:
        heap = cls.__new__(cls)
        heap._setup(handle, owned=False, name="")
        try:
            stats = _read_stats(handle, heap)
            heap._name, heap._limit = stats.name, stats.limit
        except ValueError:
            heap._forget()  # gone already
        return heap

    # -- what it is --------------------------------------------------------------

    def _h(self) -> int:
        handle = self._handle
        if handle is None:
            raise _closed_error(self)
        return handle

    @property
    def handle(self) -> int:
        """The heap's ``gm_heap_t *`` as an int, for C code (``gm_heap_malloc``,
        the capsule's ``heap_malloc``).  ``ValueError`` once closed."""
        return self._h()

    @property
    def name(self) -> str:
        """The name it was made with ("" if none)."""
        return self._name

    @property
    def closed(self) -> bool:
        """Destroyed or deleted (here, or through its handle from C)."""
        handle = self._handle
        return handle is None or not lib.pgm_heap_alive(handle)

    @property
    def is_default(self) -> bool:
        """This is the default heap (``default_heap()``)."""
        return self._handle == _DEFAULT

    def __repr__(self) -> str:
        what = "the default heap" if self._handle == _DEFAULT else f"{self._name!r}" if self._name else "(unnamed)"
        state = " closed" if self._handle is None else ""
        limit = f" limit={self._limit}" if self._limit else ""
        return f"<pygomalloc.Heap {what}{limit}{state}>"

    # -- allocating ----------------------------------------------------------------

    def _nomem(self, code: int, size: int | str) -> Exception:
        if code == lib.PGM_ERR_CLOSED:
            return _closed_error(self)
        limit = f" (its limit is {self._limit} bytes)" if self._limit else ""
        return MemoryError(f"pygomalloc: cannot allocate {size} bytes in {self!r}{limit}")

    def malloc(self, size: int) -> int:
        """Allocate *size* bytes in this heap; return their address.

        ``MemoryError`` when memory cannot be had or the heap's limit would
        be passed; ``ValueError`` for a negative size or a closed heap.
        """
        handle, out = self._h(), ffi.new("uintptr_t *")
        try:
            code = lib.pgm_heap_malloc(handle, size, out)
        except OverflowError:
            raise _overflow_error(sizes=(size,)) from None
        if code:
            raise self._nomem(code, size)
        return int(out[0])

    def calloc(self, count: int, size: int) -> int:
        """Zeroed memory for *count* objects of *size* bytes, in this heap."""
        handle, out = self._h(), ffi.new("uintptr_t *")
        try:
            code = lib.pgm_heap_calloc(handle, count, size, out)
        except OverflowError:
            raise _overflow_error(sizes=(count, size)) from None
        if code:
            raise self._nomem(code, f"{count} * {size}")
        return int(out[0])

    def realloc(self, address: int, size: int) -> int:
        """Resize the object at *address* to *size* bytes; return its (new) address.

        *address* may be any heap's live object (0: allocate): it stays in
        place if it fits there and lives in this heap, else it moves into
        this heap.  Contents are kept; on ``MemoryError`` the object is left
        as it was.
        """
        handle, out = self._h(), ffi.new("uintptr_t *")
        try:
            code = lib.pgm_heap_realloc(handle, address, size, out)
        except OverflowError:
            raise _overflow_error(address=address, sizes=(size,)) from None
        if code in (lib.PGM_ERR_NOMEM, lib.PGM_ERR_CLOSED):
            raise self._nomem(code, size)
        if code:
            raise _error(code, address, size)
        return int(out[0])

    def aligned_alloc(self, alignment: int, size: int) -> int:
        """*size* bytes at a multiple of *alignment* (a power of two), in this heap."""
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"alignment must be a power of two, not {alignment}")
        handle, out = self._h(), ffi.new("uintptr_t *")
        try:
            code = lib.pgm_heap_aligned_alloc(handle, alignment, size, out)
        except OverflowError:
            if alignment >= 2**64:
                raise ValueError(f"alignment {alignment} is too large") from None
            raise _overflow_error(sizes=(size,)) from None
        if code == lib.EINVAL:
            raise ValueError(f"alignment {alignment} is not supported")
        if code:
            raise self._nomem(code, size)
        return int(out[0])

    def free(self, address: int) -> None:
        """Free the object at *address*, which must live in this heap.

        ``free(0)`` does nothing.  Another heap's object raises
        ``WrongHeapError`` and stays live; other bad pointers raise as
        ``pygomalloc.free`` does.  (``pygomalloc.free`` frees any heap's
        object.)
        """
        handle = self._h()
        if address == 0:
            return
        if address in self._buffers:
            raise ValueError(f"{address:#x} belongs to a Buffer: close the Buffer instead")
        try:
            code = lib.pgm_heap_free(handle, address)
        except OverflowError:
            raise _overflow_error(address=address) from None
        if code == lib.PGM_ERR_WRONG_HEAP:
            other = Heap.of(address)
            raise WrongHeapError(address, f"not an object of {self!r} but of {other!r}")
        if code == lib.PGM_ERR_CLOSED:
            raise _closed_error(self)
        if code:
            raise _error(code, address)

    def owns(self, address: int) -> bool:
        """Whether *address* is a live object of this heap (any int may be asked)."""
        handle = self._h()
        try:
            return int(lib.pgm_heap_of(address)) == handle
        except OverflowError:
            return False

    @staticmethod
    def of(address: int) -> Heap | None:
        """The heap of the live object at *address*, or None (not the start of
        a live object).  The Heap made for it if it is still referenced (the
        default heap's is ``default_heap()``); for a heap made in C, a Heap
        that does not delete it when garbage-collected."""
        try:
            handle = int(lib.pgm_heap_of(address))
        except OverflowError:
            return None
        if handle == 0:
            return None
        if handle == _DEFAULT:
            return default_heap()
        heap = _heaps.get(handle)
        return heap if heap is not None else Heap._wrap(handle)

    def buffer(self, size: int, *, zero: bool = False) -> Buffer:
        """A ``pygomalloc.Buffer`` of *size* bytes in this heap.

        Its memory never dangles: while the Buffer or any memoryview of it
        is alive, ``close()`` raises ``BufferError`` and frees nothing (the
        context manager's exit hands the heap's objects to the default heap
        instead, with a ``ResourceWarning``), and ``delete()`` keeps it valid.
        """
        with self._lock:
            address = self.calloc(1, size) if zero else self.malloc(size)
            buffers = self._buffers

            def release(cdata: object, address: int = address) -> None:
                # Freed first, forgotten after: close() never sees a buffer
                # gone whose memory is not.  gm_free_checked: the heap may
                # have been deleted (the object is the default heap's now).
                lib.pgm_free(address)
                buffers.discard(address)

            buffers.add(address)
            return Buffer._adopt(address, size, release)

    # -- reading --------------------------------------------------------------------

    def stats(self) -> HeapStats:
        """The heap's statistics (one ``gm_heap_read_stats`` call)."""
        return _read_stats(self._h(), self)

    def visit(self) -> Iterator[tuple[int, int]]:
        """Yield ``(address, size)`` of every live object of the heap (size:
        its usable size).

        The objects are listed when ``visit()`` is called, by C, without
        allocating.  No other thread may allocate from or free into the heap
        meanwhile: the list is then exact; otherwise objects may be missed
        or listed that are gone (nothing crashes).  The default heap's walk
        covers every thread's objects and skips the tiny allocator's blocks.
        """
        handle = self._h()
        return iter(_live_objects(handle, self, _read_stats(handle, self).objects))

    # -- scopes ---------------------------------------------------------------------

    def scope(self, *, report: bool = True) -> Scope:
        """A context manager making this heap the calling thread's default
        heap (see ``Scope``).  With *report*, leaving it lists the heap's
        live objects for ``escaped()`` (its cost grows with them)."""
        self._h()
        return Scope(self, report=report)

    # -- going -------------------------------------------------------------------------

    def _refuse_default(self, what: str) -> None:
        if self._handle == _DEFAULT:
            raise ValueError(f"the default heap cannot be {what}")

    def _forget(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            _heaps.pop(handle, None)

    def _busy(self, handle: int, what: str) -> HeapBusyError:
        try:
            st = _read_stats(handle, self)
        except ValueError:
            return HeapBusyError(f"{self!r} cannot be {what}: it is gone")
        if self._scopes:
            return HeapBusyError(f"{self!r} cannot be {what}: {self._scopes} scope(s) of it are active")
        if st.objects:
            return HeapBusyError(
                f"{self!r} cannot be {what}: it has been a scope, and its {st.objects} live objects "
                f"({st.alloc} bytes) may be in use anywhere; free them, or delete() the heap to hand them to "
                "the default heap")
        return HeapBusyError(f"{self!r} cannot be {what}: it is some thread's default heap")

    def _end(self, destroy: bool) -> None:
        """close() (destroy) and delete().  Buffers keep a heap from being
        destroyed, not from being deleted."""
        what = "closed" if destroy else "deleted"
        self._refuse_default(what)
        with self._lock:
            handle = self._h()
            if self._scopes:
                raise self._busy(handle, what)
            if destroy and self._buffers:
                raise BufferError(f"{self!r} has {len(self._buffers)} live buffer(s): release them, and every "
                                  "memoryview of them, before closing it")
            code = lib.pgm_heap_destroy(handle) if destroy else lib.pgm_heap_delete(handle)
            if code == lib.EBUSY:
                raise self._busy(handle, what)
            self._forget()
        if code:
            raise _closed_error(self)

    def close(self) -> None:
        """Destroy the heap: every object in it is freed at once.

        ``BufferError`` while a Buffer of it (or a memoryview of one) lives;
        ``HeapBusyError`` while a scope of it is active, or when it has been
        a scope and objects allocated then are still live; in both cases
        nothing is freed.  Closing a closed heap raises ``ValueError``.
        """
        self._end(destroy=True)

    def delete(self) -> None:
        """Let the heap go but keep its objects: they become the default
        heap's (``pygomalloc.free`` frees them, Buffers stay valid).
        ``HeapBusyError`` while a scope of it is active."""
        self._end(destroy=False)

    def __enter__(self) -> Heap:
        self._refuse_default("used as a context manager (it is never closed)")
        self._h()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the heap; but objects still in use are never freed under
        their users: if Buffers of it live, or objects allocated while it was
        a scope do, they are handed to the default heap (``delete``) with a
        ``ResourceWarning`` saying how many."""
        with self._lock:
            handle = self._handle
            if handle is None:
                return  # closed in the block
            if self._scopes:
                raise self._busy(handle, "closed")
            why = f"{len(self._buffers)} Buffer(s) of it still alive" if self._buffers else ""
            if not why:
                code = lib.pgm_heap_destroy(handle)
                if code != lib.EBUSY:
                    self._forget()
                    return
                st = _read_stats(handle, self)
                why = f"it has been a scope and {st.objects} objects ({st.alloc} bytes) are still live"
            if lib.pgm_heap_delete(handle) == lib.EBUSY:
                raise self._busy(handle, "closed")
            name = repr(self)
            self._forget()
        warnings.warn(f"{name} was not freed at the end of its with block: {why}; its objects were handed "
                      "to the default heap", ResourceWarning, stacklevel=2)

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is None or not getattr(self, "_owned", False):
            return
        try:
            deleted = lib.pgm_heap_delete(handle) == 0
        except Exception:  # interpreter shutdown  # noqa: BLE001
            return
        if deleted:
            warnings.warn(f"unclosed pygomalloc.Heap {self._name!r}: deleted, its live objects handed to the "
                          "default heap", ResourceWarning, source=self)


def default_heap() -> Heap:
    """The default heap: where ``pygomalloc.malloc`` (and ``install()``'s
    Python objects) come from outside scopes.  It cannot be closed or
    deleted; its ``scope()`` sends a thread's allocations back to it inside
    another heap's scope."""
    global _default_heap
    if _default_heap is None:
        heap = Heap.__new__(Heap)
        heap._setup(_DEFAULT, owned=False, name="default")
        _default_heap = heap
    return _default_heap


# --------------------------------------------------------------------------
# Scopes

_local = threading.local()


def _scope_stack() -> list[Scope]:
    """This thread's active Python scopes, innermost last."""
    try:
        stack: list[Scope] = _local.stack
    except AttributeError:
        stack = _local.stack = []
    return stack


@dataclass(frozen=True, **_SLOTS)
class EscapedSite:
    """Objects still live after a scope that the heap profile sampled from
    one C call stack (``profile_rate`` > 0; with 1, every allocation)."""

    #: The stack, the allocation's caller first: ``object(symbol+0x..)``.
    stack: tuple[str, ...]
    #: The same frames as return addresses.
    addresses: tuple[int, ...]
    #: Sampled live objects allocated from this stack.
    objects: int
    #: Their bytes.
    bytes: int


@dataclass(frozen=True, **_SLOTS)
class EscapeReport:
    """What a heap held live after a scope (or when asked, inside it).

    ``objects``/``bytes`` and ``blocks`` are exact (the heap's live objects,
    listed by ``visit``): all of them, made during the scope or before.
    ``sites`` groups the objects the heap profile sampled by their C call
    stack; the rest are ``unsampled_*``.  ``python`` holds tracemalloc's
    figures when it traced the whole scope: Python tracebacks of the
    allocations made during the scope and still live, from a snapshot taken
    on entry compared with one taken on exit.  Those are approximate: they
    count every thread's allocations (in any heap), and leave out what
    CPython's free lists reused.
    """

    #: The heap's name.
    heap: str
    #: Live objects in the heap.
    objects: int
    #: Their bytes (usable sizes).
    bytes: int
    #: ``(address, size)`` of each.
    blocks: tuple[tuple[int, int], ...] = field(repr=False)
    #: Sampled ones, by C stack, most bytes first.
    sites: tuple[EscapedSite, ...]
    #: Objects the profile did not sample.
    unsampled_objects: int
    #: Their bytes.
    unsampled_bytes: int
    #: tracemalloc's ``StatisticDiff``s (by traceback, growth only, most
    #: bytes first), or None if tracemalloc did not trace the whole scope.
    python: tuple[tracemalloc.StatisticDiff, ...] | None = field(repr=False)

    def __bool__(self) -> bool:
        return self.objects > 0

    def __str__(self) -> str:
        lines = [f"heap {self.heap!r}: {self.objects} objects, {self.bytes} bytes live"]
        if self.sites:
            lines.append("  sampled by the heap profile, by C stack (caller first):")
            for site in self.sites:
                lines.append(f"    {site.objects} objects, {site.bytes} bytes: " + " <- ".join(site.stack[:6]))
        if self.unsampled_objects:
            lines.append(f"  not sampled: {self.unsampled_objects} objects, {self.unsampled_bytes} bytes"
                         " (option profile_rate samples; 1 samples every allocation)")
        if self.python:
            lines.append("  Python allocations during the scope still live (tracemalloc, approximate):")
            for diff in self.python[:10]:
                where = " <- ".join(f"{f.filename}:{f.lineno}" for f in reversed(diff.traceback[-3:]))
                lines.append(f"    +{diff.size_diff} bytes, +{diff.count_diff} blocks: {where}")
        return "\n".join(lines)


class _Escapes:
    """The raw material of an escape report, gathered while the heap lives."""

    __slots__ = ("blocks", "stacks", "python")

    def __init__(self, handle: int, heap: Heap, hint: int, python: tuple[tracemalloc.StatisticDiff, ...] | None):
        self.blocks = _live_objects(handle, heap, hint)
        self.python = python
        #: Stack (return addresses) -> [objects, bytes], for the sampled blocks.
        self.stacks: dict[tuple[int, ...], list[int]] = {}
        n = len(self.blocks)
        if n == 0:
            return
        addrs = ffi.new("uintptr_t[]", [a for a, _ in self.blocks])
        flags = ffi.new("uint8_t[]", n)
        if lib.pgm_sampled_among(addrs, n, flags) == 0:
            return
        depth = lib.GM_PROFILE_DEPTH
        frames = ffi.new("const void *[]", depth)
        for i, (address, size) in enumerate(self.blocks):
            if not flags[i]:
                continue
            got = lib.gm_profile_stack_of(ffi.cast("void *", address), frames, depth)
            if got > 0:
                key = tuple(int(ffi.cast("uintptr_t", frames[f])) for f in range(min(got, depth)))
                entry = self.stacks.setdefault(key, [0, 0])
                entry[0] += 1
                entry[1] += size

    def report(self, name: str) -> EscapeReport:
        cache: dict[int, str] = {}
        sites = sorted(
            (EscapedSite(_symbols(stack, cache), stack, n, b) for stack, (n, b) in self.stacks.items()),
            key=lambda s: (-s.bytes, -s.objects))
        total = sum(size for _, size in self.blocks)
        sampled_n = sum(s.objects for s in sites)
        sampled_b = sum(s.bytes for s in sites)
        return EscapeReport(name, len(self.blocks), total, tuple(self.blocks), tuple(sites),
                            len(self.blocks) - sampled_n, total - sampled_b, self.python)


def _python_growth(before: tracemalloc.Snapshot | None) -> tuple[tracemalloc.StatisticDiff, ...] | None:
    if before is None or not _tracemalloc.is_tracing():
        return None
    # (Every frame: the scope's own bookkeeping calls generated code, such
    # as a dataclass's __init__, whose frame is the most recent.)
    import tracemalloc  # here: importing pygomalloc must not import pickle (pure-Python pickle users)

    exclude = [tracemalloc.Filter(False, f, all_frames=True) for f in (str(Path(__file__)), tracemalloc.__file__)]
    after = tracemalloc.take_snapshot().filter_traces(exclude)
    diffs = after.compare_to(before.filter_traces(exclude), "traceback")
    return tuple(d for d in diffs if d.size_diff > 0)


class Scope:
    """``with heap.scope() as s:`` — the heap is the thread's default heap
    inside the block.

    Entering makes the heap the calling thread's default heap
    (``gm_heap_set_default``); leaving restores the one before.  In between,
    everything the thread allocates from the default heap comes from this
    heap: ``pygomalloc.malloc``, ``malloc`` under the preload library, and,
    with ``pygomalloc.install()``, the interpreter's objects.

    The default heap is per thread.  Threads started inside the block
    allocate from their own default heap (the default heap), not from this
    one.  asyncio tasks share their thread's: while a coroutine awaits
    inside a scope, the other tasks of its event loop allocate into the
    heap too (and count in its figures); use ``heap.malloc`` explicitly, or
    scopes that do not span an ``await``.  Scopes nest; a scope is entered
    once, and left on the thread that entered it (else ``RuntimeError``, and
    nothing changes).  Scopes of one thread left out of order (interleaved
    coroutines) leave the default heap to the innermost one still active.

    Figures, in bytes of the objects' size classes, of the heap as a whole
    (other threads' allocations into it included), between entry and exit
    (or now, inside the block): ``allocated``, ``freed``; ``live``, the
    heap's live bytes at exit (or now); ``peak``, the heap's ``peak_inuse``
    then: the most bytes of spans the heap has held since it was made, so
    the block's own peak for a heap made for it (``track()``).  For the
    default heap's scope they are the process's.  ``escaped()`` is the
    escape report (``EscapeReport``).
    """

    __slots__ = ("_heap", "_report", "_owns_heap", "_state", "_thread", "_prev", "_tmp", "_before", "_after",
                 "_snapshot", "_escapes", "_report_made")

    def __init__(self, heap: Heap | None, *, report: bool = True, _owns_heap: bool = False) -> None:
        self._heap = heap
        self._report = report
        self._owns_heap = _owns_heap  # track(): a heap of its own, deleted on exit
        self._state = "new"
        self._thread = 0
        # Written by C, inside the scope: anything Python made there would
        # be allocated in the heap.
        self._prev = ffi.new("uintptr_t *")
        self._tmp = ffi.new("uintptr_t *")
        self._before: HeapStats | None = None
        self._after: HeapStats | None = None
        self._snapshot: tracemalloc.Snapshot | None = None
        self._escapes: _Escapes | None = None
        self._report_made: EscapeReport | None = None

    @property
    def heap(self) -> Heap:
        """The heap (for ``track()``, its private heap, closed after the block)."""
        if self._heap is None:
            raise ValueError("track() makes its heap when the block is entered")
        return self._heap

    def __repr__(self) -> str:
        return f"<pygomalloc.Scope of {self._heap!r}, {self._state}>"

    def __enter__(self) -> Scope:
        if self._state != "new":
            raise RuntimeError("a scope is entered once: make another with heap.scope()")
        if self._heap is None:
            self._heap = Heap(name="track")
        heap = self._heap
        handle = heap._h()
        before = heap.stats()
        if self._report and handle != _DEFAULT and _tracemalloc.is_tracing():
            import tracemalloc

            self._snapshot = tracemalloc.take_snapshot()
        stack = _scope_stack()
        with heap._lock:
            heap._h()
            heap._scopes += 1
        self._before = before
        self._thread = threading.get_ident()
        stack.append(self)  # (the list grows here, before the switch)
        self._state = "active"
        code = _scope_enter(handle, self._prev)
        if code:
            stack.pop()
            self._state = "new"
            with heap._lock:
                heap._scopes -= 1
            if self._owns_heap:
                heap.delete()
            if code == lib.ENOMEM:
                raise MemoryError("pygomalloc: no memory for this thread's cache of the heap")
            raise _closed_error(heap)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != "active":
            raise RuntimeError(f"{self!r} is not active")
        if threading.get_ident() != self._thread:
            raise RuntimeError(f"a scope must be left on the thread that entered it (thread {self._thread}), not "
                               f"on thread {threading.get_ident()}: nothing was changed")
        stack = _scope_stack()
        lost = 0
        if stack[-1] is self:
            lost = _scope_leave(self._prev)  # first: from here allocations go where they went before
            stack.pop()
        else:
            # Left before a scope entered after it (coroutines interleaved on
            # one thread): the default heap stays the innermost's, which
            # will restore what was before this one.
            at = next(i for i in range(len(stack)) if stack[i] is self)
            stack[at + 1]._prev[0] = self._prev[0]
            del stack[at]
        self._state = "done"
        heap = self.heap
        try:
            # (The heap cannot go while _scopes counts this scope.)
            handle = heap._h()
            self._after = heap.stats()
            if self._report and handle != _DEFAULT:
                self._escapes = _Escapes(handle, heap, self._after.objects, _python_growth(self._snapshot))
        finally:
            self._snapshot = None
            with heap._lock:
                heap._scopes -= 1
        if self._owns_heap:
            heap.delete()  # the survivors join the default heap
        if lost:
            warnings.warn("the heap active before this scope was destroyed meanwhile: this thread's default heap "
                          "is the default heap now", RuntimeWarning, stacklevel=2)

    # -- the figures ------------------------------------------------------------------

    def _now(self) -> HeapStats:
        """The heap's statistics at exit, or now: read inside the block on the
        default heap, so that reading allocates nothing in the heap."""
        if self._after is not None:
            return self._after
        if self._before is None:
            raise ValueError(f"{self!r} has not been entered")
        if _scope_enter(_DEFAULT, self._tmp):
            raise MemoryError("pygomalloc: cannot switch to the default heap")
        try:
            return self.heap.stats()
        finally:
            _scope_leave(self._tmp)

    @property
    def allocated(self) -> int:
        """Bytes allocated in the heap during the scope (so far)."""
        now = self._now()
        assert self._before is not None
        return now.total_alloc - self._before.total_alloc

    @property
    def freed(self) -> int:
        """Bytes of the heap's objects freed during the scope (so far)."""
        now = self._now()
        assert self._before is not None
        return now.freed - self._before.freed

    @property
    def live(self) -> int:
        """Bytes of live objects in the heap at exit (or now)."""
        return self._now().alloc

    @property
    def live_objects(self) -> int:
        """Live objects in the heap at exit (or now)."""
        return self._now().objects

    @property
    def peak(self) -> int:
        """The heap's ``peak_inuse`` at exit (or now): the most bytes of spans
        it has held since it was made."""
        return self._now().peak_inuse

    def escaped(self) -> EscapeReport:
        """The escape report: what the heap holds live after the scope (or
        now, inside it), grouped by the C stacks the heap profile sampled,
        with tracemalloc's Python tracebacks if it traced the scope.

        ``ValueError`` for a scope of the default heap (its objects are
        everyone's) or one made with ``report=False``.
        """
        if self._heap is not None and self._heap._handle == _DEFAULT:
            raise ValueError("no escape report for the default heap's scopes: its objects are everyone's")
        if not self._report:
            raise ValueError("this scope was made with report=False")
        if self._report_made is not None:
            return self._report_made
        if self._state == "done":
            assert self._escapes is not None
            self._report_made = self._escapes.report(self.heap.name)
            return self._report_made
        if self._state != "active":
            raise ValueError(f"{self!r} has not been entered")
        heap = self.heap
        if _scope_enter(_DEFAULT, self._tmp):
            raise MemoryError("pygomalloc: cannot switch to the default heap")
        try:
            handle = heap._h()
            return _Escapes(handle, heap, _read_stats(handle, heap).objects, None).report(heap.name)
        finally:
            _scope_leave(self._tmp)


def track(*, report: bool = True) -> Scope:
    """Accounting for a block without a heap of your own::

        with pygomalloc.track() as t:
            result = build()
        print(t.allocated, t.freed, t.peak, t.live, t.escaped())

    The block runs in a scope of a private heap made on entry; on exit the
    heap is deleted, so what the block allocated and kept lives on normally
    (in the default heap, even inside another heap's scope).  The figures
    count the calling thread's allocations made in the block (threads it
    starts are not counted; coroutines of its event loop are), and ``peak``
    is the block's own.
    """
    return Scope(None, report=report, _owns_heap=True)
