"""Heaps from Python (src/pygomalloc/_heap.py over csrc/heap.c).

* Every call of ``Heap``, its statistics against ``visit()``, quotas, bad
  input (wrong heap, closed heap, a handle destroyed from C, a destroy
  racing allocations on other threads), the default heap, ``delete()``,
  Buffers' lifetime, a heap collected unclosed, ``fault_on_destroy`` (a
  subprocess reading destroyed memory dies by SIGSEGV).
* Scopes: routing, figures, nesting, errors, threads and asyncio tasks,
  escape reports (sampled C stacks, tracemalloc's Python tracebacks), a
  scope under ``install()`` running json/re/dict code whose kept results
  survive intact (subprocesses: this process never installs), ``track()``.
* The struct listed twice (gomalloc.h and the cdef) agrees with itself and
  with ``HeapStats``.
* A hypothesis state machine over several heaps against a model.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import warnings
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

import pygomalloc as gm
from pygomalloc._gomalloc import ffi, lib

ROOT = Path(__file__).resolve().parent.parent


def usable(address: int) -> int:
    return gm.usable_size(address)


def live(address: int) -> bool:
    try:
        gm.usable_size(address)
    except gm.InvalidPointerError:
        return False
    return True


@pytest.fixture
def heap() -> Iterator[gm.Heap]:
    h = gm.Heap(name="test")
    yield h
    if not h.closed:
        h.delete()


def run(body: str, env: dict[str, str] | None = None, expect_status: int = 0) -> dict[str, Any]:
    """Run *body* in a fresh interpreter; return what it passed to report()."""
    prelude = textwrap.dedent('''
        import ctypes, gc, json, sys, threading, warnings
        import pygomalloc as gm
        def report(**figures):
            print("RESULT " + json.dumps(figures), flush=True)
    ''')
    child_env = {k: v for k, v in os.environ.items()
                 if not k.startswith("GOMALLOC_") and k not in ("LD_PRELOAD", "PYTHONMALLOC")}
    child_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(body)], env=child_env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == expect_status, f"status {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(lines[0][len("RESULT "):])
    return result


# --------------------------------------------------------------------------
# One fact in one place


def _header_fields(struct: str) -> list[str]:
    text = (ROOT / "csrc" / "gomalloc.h").read_text()
    body = text[text.index(f"struct {struct} {{") + len(struct) + 9:]
    body = re.sub(r"/\*.*?\*/", "", body[:body.index("};")], flags=re.S)
    return [re.findall(r"(\w+)\s*(?:\[[^]]*\])?\s*$", decl.strip())[0] for decl in body.split(";") if decl.strip()]


def test_heap_stats_fields_agree_everywhere() -> None:
    """struct gm_heap_stats is written in gomalloc.h and in build_ext.py's
    cdef, and read by name into HeapStats: the three lists agree."""
    header = _header_fields("gm_heap_stats")
    assert header[0] == "size" and header[-2:] == ["name", "by_size"], header
    assert [name for name, _ in ffi.typeof("struct gm_heap_stats").fields] == header
    assert ["size", *(f.name for f in fields(gm.HeapStats))] == header


def test_header_parser_sees_the_stats_struct() -> None:
    """(The parser above, on a struct whose fields are known.)"""
    assert _header_fields("gm_heap_options") == ["size", "name", "limit", "fault_on_destroy"]


# --------------------------------------------------------------------------
# Every call


def test_every_call(heap: gm.Heap) -> None:
    small = heap.malloc(100)
    zeroed = heap.calloc(300, 7)
    aligned = heap.aligned_alloc(4096, 5000)
    large = heap.malloc(1 << 20)
    zero = heap.malloc(0)
    assert ctypes.string_at(zeroed, 2100) == bytes(2100)
    assert aligned % 4096 == 0
    for p in (small, zeroed, aligned, large, zero):
        assert heap.owns(p) and gm.Heap.of(p) is heap and gm.owns(p)
    ctypes.memset(small, 0xAB, 100)
    grown = heap.realloc(small, 3000)  # another size class: moves, contents kept
    assert ctypes.string_at(grown, 100) == b"\xab" * 100 and heap.owns(grown)
    d = gm.malloc(200)
    ctypes.memset(d, 0x11, 200)
    moved = heap.realloc(d, 250)  # a default heap's object moves into the heap
    assert heap.owns(moved) and ctypes.string_at(moved, 200) == b"\x11" * 200 and not live(d)
    fresh = heap.realloc(0, 40)  # realloc(0, n) allocates
    assert heap.owns(fresh)
    same = heap.realloc(fresh, 10)  # fits where it is
    assert same == fresh

    st = heap.stats()
    objs = [grown, zeroed, aligned, large, zero, moved, fresh]
    assert st.name == "test" and st.limit is None
    assert st.objects == len(objs) and st.large_objects == 1
    assert st.alloc == sum(usable(p) for p in objs)
    assert st.mallocs - st.frees == st.objects
    assert st.inuse >= st.alloc and st.peak_inuse >= st.inuse and st.num_caches >= 1
    assert sum(row.live for row in st.by_size) == st.objects and st.by_size[0].live == 1
    assert sorted(heap.visit()) == sorted((p, usable(p)) for p in objs)
    assert heap.handle == gm.Heap.of(large).handle and heap.name == "test" and not heap.closed
    assert repr(heap) == "<pygomalloc.Heap 'test'>"

    for p in (grown, zeroed, aligned):
        heap.free(p)
    heap.free(0)
    gm.free(large)  # pygomalloc.free frees any heap's object
    for p in (zero, moved, fresh):
        heap.free(p)
    st = heap.stats()
    assert st.objects == 0 and st.alloc == 0 and list(heap.visit()) == []
    assert st.total_alloc >= (1 << 20) + 3000 and st.freed == st.total_alloc
    heap.close()
    assert heap.closed and repr(heap) == "<pygomalloc.Heap 'test' closed>"


def test_bad_arguments(heap: gm.Heap) -> None:
    with pytest.raises(ValueError, match="negative"):
        heap.malloc(-1)
    with pytest.raises(MemoryError):
        heap.malloc(1 << 62)
    with pytest.raises(MemoryError):
        heap.malloc(2**64)
    with pytest.raises(MemoryError):
        heap.calloc(1 << 40, 1 << 40)  # overflows
    with pytest.raises(ValueError, match="power of two"):
        heap.aligned_alloc(3, 10)
    with pytest.raises(ValueError, match="too large"):
        heap.aligned_alloc(2**70, 10)
    with pytest.raises(gm.NotOursError):
        heap.realloc(12345, 10)
    with pytest.raises(gm.NotOursError):
        heap.free(-5)
    assert not heap.owns(-1) and not heap.owns(2**80) and gm.Heap.of(2**80) is None and gm.Heap.of(8) is None
    for bad in (0, -1, 2**64):
        with pytest.raises(ValueError, match="positive"):
            gm.Heap(limit=bad)
    with pytest.raises(TypeError):
        gm.Heap(limit="1M")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        gm.Heap(limit=True)
    with pytest.raises(ValueError, match="47 bytes"):
        gm.Heap(name="x" * 48)
    with pytest.raises(ValueError, match="NUL"):
        gm.Heap(name="a\0b")
    with pytest.raises(TypeError):
        gm.Heap(name=b"bytes")  # type: ignore[arg-type]
    fits = gm.Heap(name="é" * 23)  # 46 bytes
    assert fits.name == fits.stats().name == "é" * 23
    fits.close()


def test_too_many_heaps_is_a_clear_error() -> None:
    r = run('''
heaps = []
try:
    while True:
        heaps.append(gm.Heap())
except RuntimeError as e:
    message = str(e)
n = len(heaps)
for h in heaps[:10]:
    h.close()
again = gm.Heap()            # slots freed by close() are reused
p = again.malloc(10)
report(n=n, message=message, again=again.owns(p))
for h in heaps[10:]:
    h.close()
again.close()
gm.check_heap()
''')
    assert r["n"] == 4095 and "too many heaps" in r["message"] and r["again"], r


# --------------------------------------------------------------------------
# Quotas


def test_quota_fails_only_that_heap() -> None:
    limit = 1 << 20
    quota, other = gm.Heap(limit=limit, name="quota"), gm.Heap(name="other")
    got = []
    with pytest.raises(MemoryError, match="limit is 1048576"):
        while True:
            got.append(quota.malloc(5000 if len(got) % 5 else 70000))
    st = quota.stats()
    assert st.limit == limit and st.inuse <= limit and st.objects == len(got) > 10
    assert st.peak_inuse <= limit
    # Others go on: the default heap, another heap; small sizes fail in the full heap too.
    p, q = gm.malloc(100000), other.malloc(100000)
    assert gm.Heap.of(p) is gm.default_heap() and other.owns(q)
    with pytest.raises(MemoryError):
        for _ in range(10000):
            got.append(quota.malloc(16))
    # Freeing makes room again.
    for a in got:
        quota.free(a)
    assert quota.owns(quota.malloc(500000))
    gm.free(p)
    quota.close()
    other.close()


# --------------------------------------------------------------------------
# Bad input: wrong heap, closed heap, destroyed handle, racing destroy


def test_wrong_heap_free_is_refused_and_the_object_stays(heap: gm.Heap) -> None:
    other = gm.Heap(name="other")
    p = other.malloc(64)
    ctypes.memset(p, 0x5A, 64)
    d = gm.malloc(64)
    with pytest.raises(gm.WrongHeapError, match="'other'") as info:
        heap.free(p)
    assert isinstance(info.value, gm.NotOursError) and info.value.address == p
    with pytest.raises(gm.WrongHeapError, match="default heap"):
        heap.free(d)
    assert other.owns(p) and ctypes.string_at(p, 64) == b"\x5a" * 64
    q = heap.malloc(64)
    with pytest.raises(gm.InteriorPointerError):
        heap.free(q + 16)
    heap.free(q)
    with pytest.raises(gm.NotAllocatedError):
        heap.free(q)
    with pytest.raises(gm.NotOursError):
        heap.free(id(object()) | 1 << 46)
    other.free(p)
    gm.free(d)
    other.close()


def test_closed_heap_raises_everywhere(heap: gm.Heap) -> None:
    p = heap.malloc(100)
    heap.close()
    assert heap.closed and not live(p) and gm.Heap.of(p) is None
    calls = [
        lambda: heap.malloc(1), lambda: heap.calloc(1, 1), lambda: heap.realloc(0, 1),
        lambda: heap.aligned_alloc(16, 1), lambda: heap.free(0), lambda: heap.free(p),
        lambda: heap.buffer(10), heap.stats, heap.visit, lambda: heap.owns(p), heap.scope,
        lambda: heap.handle, heap.close, heap.delete, heap.__enter__,
    ]
    for call in calls:
        with pytest.raises(ValueError, match="closed"):
            call()


def test_handle_destroyed_from_c_is_seen() -> None:
    """A heap destroyed behind Python's back (C code holding its handle):
    the handle is refused by the core, never followed."""
    h = gm.Heap(name="c")
    p = h.malloc(64)
    handle = h.handle
    assert lib.pgm_heap_destroy(handle) == 0
    assert h.closed and not live(p)
    for call in (lambda: h.malloc(1), lambda: h.free(p), h.stats, h.visit, h.close, h.delete):
        with pytest.raises(ValueError, match="closed"):
            call()
    assert lib.pgm_heap_destroy(handle) == lib.EINVAL  # twice
    assert lib.pgm_heap_destroy(8) == lib.EINVAL and lib.pgm_heap_destroy(0) == lib.EINVAL  # made up


def test_allocations_racing_destroy_fail_cleanly() -> None:
    """Threads allocate from a heap while the main thread closes it: each
    stops on ValueError (the heap is closed), nothing else is raised, the
    heap checker is happy."""
    for _ in range(20):
        h = gm.Heap(name="race")
        outcomes: list[str] = []
        started = threading.Barrier(5)

        def allocate(h: gm.Heap = h) -> None:
            started.wait()
            try:
                while True:
                    h.malloc(256)
                    h.calloc(4, 64)
            except ValueError as e:
                outcomes.append("closed" if "closed" in str(e) else repr(e))
            except BaseException as e:  # noqa: BLE001
                outcomes.append(repr(e))

        threads = [threading.Thread(target=allocate) for _ in range(4)]
        for t in threads:
            t.start()
        started.wait()
        time.sleep(0.002)
        h.close()
        for t in threads:
            t.join()
        assert outcomes == ["closed"] * 4
    gm.check_heap()


# --------------------------------------------------------------------------
# The default heap, delete, the context manager, collection


def test_default_heap() -> None:
    d = gm.default_heap()
    assert d is gm.default_heap() and d.is_default and d.name == "default" and not d.closed
    for call in (d.close, d.delete, d.__enter__):
        with pytest.raises(ValueError, match="default heap cannot"):
            call()
    p = d.malloc(100)
    big = gm.malloc(200000)
    assert gm.Heap.of(p) is d and d.owns(big)
    seen = dict(d.visit())
    assert seen[p] == usable(p) and seen[big] == usable(big)
    st = d.stats()
    assert st.name == "default" and st.limit is None and st.objects >= 2
    assert st.objects == gm.stats().heap_objects  # the process's figures
    d.free(p)
    gm.free(big)


def test_delete_keeps_the_objects(heap: gm.Heap) -> None:
    objs = [heap.malloc(16 + 40 * i) for i in range(50)] + [heap.malloc(100000)]
    for i, p in enumerate(objs):
        ctypes.memset(p, i, 16)
    before = gm.stats().heap_objects
    heap.delete()
    assert heap.closed
    for i, p in enumerate(objs):
        assert gm.Heap.of(p) is gm.default_heap() and ctypes.string_at(p, 16) == bytes([i]) * 16
    assert gm.stats().heap_objects == before
    for p in objs:
        gm.free(p)


def test_context_manager_frees_everything() -> None:
    gm.thread_flush()
    before = gm.stats()
    with gm.Heap(name="cm") as h:
        objs = [h.malloc(i * 37 % 5000) for i in range(2000)] + [h.malloc(300000)]
        assert h.stats().objects == len(objs)
    assert h.closed and not any(live(p) for p in objs[:50])
    gm.thread_flush()
    after = gm.stats()
    assert after.heap_objects == before.heap_objects and after.heap_alloc == before.heap_alloc


def test_heap_collected_unclosed_is_deleted_not_freed() -> None:
    h = gm.Heap(name="dropped")
    p = h.malloc(64)
    ctypes.memset(p, 7, 64)
    with pytest.warns(ResourceWarning, match="unclosed pygomalloc.Heap 'dropped'"):
        del h
        gc.collect()
    assert gm.Heap.of(p) is gm.default_heap() and ctypes.string_at(p, 64) == b"\x07" * 64
    gm.free(p)


# --------------------------------------------------------------------------
# Buffers


def test_buffer_memory_never_dangles(heap: gm.Heap) -> None:
    buf = heap.buffer(4096, zero=True)
    assert bytes(buf.view[:8]) == bytes(8) and heap.owns(buf.address)
    buf.view[:5] = b"hello"
    piece = buf.view[:5]  # a view derived from it keeps the memory
    address = buf.address
    with pytest.raises(ValueError, match="Buffer"):
        heap.free(address)
    buf.close()
    with pytest.raises(BufferError, match="1 live buffer"):
        heap.close()
    assert not heap.closed and bytes(piece) == b"hello" and live(address)
    piece.release()
    assert not live(address)  # the last view gone: freed
    heap.close()


def test_buffer_survives_delete_and_context_exit() -> None:
    h = gm.Heap(name="buffers")
    buf = h.buffer(100)
    buf.view[:3] = b"abc"
    h.delete()  # the buffer's memory is the default heap's now
    assert bytes(buf.view[:3]) == b"abc" and gm.Heap.of(buf.address) is gm.default_heap()
    address = buf.address
    buf.close()
    assert not live(address)
    with pytest.warns(ResourceWarning, match="1 Buffer"):
        with gm.Heap(name="cm") as h2:
            kept = h2.buffer(64)
            kept.view[:2] = b"ok"
    assert h2.closed and bytes(kept.view[:2]) == b"ok" and gm.Heap.of(kept.address) is gm.default_heap()
    kept.close()


# --------------------------------------------------------------------------
# Statistics and visit


def test_stats_agree_with_visit() -> None:
    import random
    rng = random.Random(7)
    h = gm.Heap(name="stats")
    objs: list[int] = []
    for _ in range(5000):
        if objs and rng.random() < 0.4:
            h.free(objs.pop(rng.randrange(len(objs))))
        else:
            objs.append(h.malloc(rng.choice([1, 16, 100, 700, 5000, 40000, 200000])))
    st, seen = h.stats(), sorted(h.visit())
    assert [a for a, _ in seen] == sorted(objs)
    assert len(seen) == st.objects and sum(s for _, s in seen) == st.alloc
    assert st.total_alloc - st.freed == st.alloc and st.mallocs - st.frees == st.objects
    assert sum(row.live for row in st.by_size) == st.objects
    h.close()


# --------------------------------------------------------------------------
# Scopes


def test_scope_routes_the_threads_allocations(heap: gm.Heap) -> None:
    outside = gm.malloc(100)
    with heap.scope() as s:
        inside = [gm.malloc(100) for _ in range(10)] + [gm.malloc(100000)]
        assert all(heap.owns(p) for p in inside)
        freed = sum(usable(p) for p in inside[:4])
        for p in inside[:4]:
            gm.free(p)
        now = (s.allocated, s.freed, s.live)
        assert now == (s.allocated, s.freed, s.live)  # reading inside allocates nothing in the heap
        explicit = gm.default_heap().malloc(10)  # explicit calls go where they say
    after = gm.malloc(100)
    assert gm.Heap.of(after) is gm.default_heap() and gm.Heap.of(explicit) is gm.default_heap()
    sizes = [usable(p) for p in inside[4:]]
    assert s.allocated == freed + sum(sizes) == now[0]
    assert s.freed == freed and s.live == sum(sizes) and s.live_objects == 7
    assert s.live == s.allocated - s.freed  # a fresh heap
    assert s.peak >= s.live and s.peak == heap.stats().peak_inuse
    report = s.escaped()
    assert report.objects == 7 and report.bytes == s.live
    assert sorted(a for a, _ in report.blocks) == sorted(inside[4:])
    assert report.heap == "test" and bool(report)
    for p in (outside, after, explicit, *inside[4:]):
        gm.free(p)
    assert s.escaped().objects == 7  # the report is of the moment the scope ended
    heap.close()  # the survivors are freed: it can go


def test_scope_figures_on_a_reused_heap(heap: gm.Heap) -> None:
    old = heap.malloc(1000)
    old_size = usable(old)
    with heap.scope() as s:
        gm.free(old)  # an older object freed in the scope
        new = gm.malloc(2000)
    assert s.allocated == usable(new) and s.freed == old_size and s.live == usable(new)
    gm.free(new)


def test_nested_scopes_restore() -> None:
    a, b = gm.Heap(name="a"), gm.Heap(name="b")
    where = lambda: gm.Heap.of(gm.malloc(32))  # noqa: E731 (leaks 32 bytes a call: freed with the heaps)
    with a.scope():
        assert where() is a
        with b.scope():
            assert where() is b
            with a.scope():
                assert where() is a
                with a.scope():
                    assert where() is a
                assert where() is a
            assert where() is b
            with gm.default_heap().scope() as ds:  # back to the default heap inside
                assert where() is gm.default_heap()
            with pytest.raises(ValueError, match="default heap"):
                ds.escaped()
        assert where() is a
    assert where() is gm.default_heap()
    a.delete()
    b.delete()


def test_scope_errors(heap: gm.Heap) -> None:
    s = heap.scope()
    with s:
        with pytest.raises(RuntimeError, match="entered once"):
            s.__enter__()
        with pytest.raises(gm.HeapBusyError, match="scope"):
            heap.close()
        with pytest.raises(gm.HeapBusyError, match="scope"):
            heap.delete()
    with pytest.raises(RuntimeError, match="entered once"):
        s.__enter__()
    with pytest.raises(RuntimeError, match="not active"):
        s.__exit__(None, None, None)
    closed = gm.Heap()
    cs = closed.scope()
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        cs.__enter__()
    with pytest.raises(ValueError, match="not been entered"):
        _ = heap.scope().allocated


def test_scope_left_on_another_thread_changes_nothing(heap: gm.Heap) -> None:
    s = heap.scope().__enter__()
    errors: list[str] = []
    elsewhere: list[gm.Heap | None] = []

    def leave() -> None:
        try:
            s.__exit__(None, None, None)
        except RuntimeError as e:
            errors.append(str(e))
        elsewhere.append(gm.Heap.of(gm.malloc(8)))

    t = threading.Thread(target=leave)
    t.start()
    t.join()
    assert len(errors) == 1 and "thread that entered it" in errors[0] and "nothing was changed" in errors[0]
    assert elsewhere == [gm.default_heap()]
    p = gm.malloc(8)
    assert heap.owns(p)  # still in the scope here
    s.__exit__(None, None, None)
    assert gm.Heap.of(gm.malloc(8)) is gm.default_heap()


def test_scopes_left_out_of_order() -> None:
    """Two scopes of one thread left in the order they were entered
    (coroutines interleaved do that): the default heap stays the innermost
    one still active, then goes back to the one before both."""
    a, b = gm.Heap(name="a"), gm.Heap(name="b")
    sa, sb = a.scope().__enter__(), b.scope().__enter__()
    sa.__exit__(None, None, None)
    assert gm.Heap.of(gm.malloc(16)) is b
    sb.__exit__(None, None, None)
    assert gm.Heap.of(gm.malloc(16)) is gm.default_heap()
    a.delete()
    b.delete()


def test_threads_started_in_a_scope_use_the_default_heap(heap: gm.Heap) -> None:
    got: dict[str, int] = {}

    def work() -> None:
        got["thread"] = gm.malloc(64)

    with heap.scope() as s:
        got["here"] = gm.malloc(64)
        t = threading.Thread(target=work)
        t.start()
        t.join()
    assert heap.owns(got["here"]) and gm.Heap.of(got["thread"]) is gm.default_heap()
    assert s.escaped().objects == 1
    gm.free(got["here"])
    gm.free(got["thread"])


def test_asyncio_tasks_share_their_threads_scope() -> None:
    """The default heap is per thread, not per task: while a coroutine awaits
    inside a scope, another task of the loop allocates into the heap; an
    explicit heap.malloc, or a scope not spanning an await, avoids it."""
    heap = gm.Heap(name="async")

    async def scoped(ready: asyncio.Event, done: asyncio.Event) -> int:
        with heap.scope():
            ready.set()
            await done.wait()  # the other task runs meanwhile
            return gm.malloc(32)

    async def other(ready: asyncio.Event, done: asyncio.Event) -> tuple[int, int]:
        await ready.wait()
        leaked = gm.malloc(32)  # this task never entered a scope
        done.set()
        await asyncio.sleep(0)
        return leaked, gm.malloc(32)  # after the scope ended

    async def main() -> tuple[int, tuple[int, int]]:
        ready, done = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(scoped(ready, done), other(ready, done))  # type: ignore[return-value]

    mine, (leaked, later) = asyncio.run(main())
    assert heap.owns(mine) and heap.owns(leaked)
    assert gm.Heap.of(later) is gm.default_heap()
    for p in (mine, leaked, later):
        gm.free(p)
    heap.close()


def test_scope_escapes_block_destroy_then_exit_hands_them_over() -> None:
    with pytest.warns(ResourceWarning, match=r"2 objects \(\d+ bytes\) are still live; its objects were handed"):
        with gm.Heap(name="escape") as h:
            with h.scope() as s:
                kept = [gm.malloc(48), gm.malloc(100000)]
                gm.free(gm.malloc(48))
            for p in kept:
                ctypes.memset(p, 0x42, 48)
            with pytest.raises(gm.HeapBusyError, match="2 live objects"):
                h.close()
    assert s.escaped().objects == 2
    for p in kept:
        assert gm.Heap.of(p) is gm.default_heap() and ctypes.string_at(p, 48) == b"\x42" * 48
        gm.free(p)


def test_escape_report_groups_sampled_stacks() -> None:
    r = run('''
h = gm.Heap(name="sampled")
with h.scope() as s:
    keep = [gm.malloc(100) for _ in range(5)] + [gm.malloc(100000)]
    gm.free(gm.malloc(100))
rep = s.escaped()
sites = [(site.objects, site.bytes, any("_gomalloc" in f for f in site.stack)) for site in rep.sites]
gm.set_option("profile_rate", 0)
with h.scope(report=False) as quiet:
    unsampled = gm.malloc(100)
quiet_error = None
try:
    quiet.escaped()
except ValueError as e:
    quiet_error = str(e)
h2 = gm.Heap(name="unsampled")
with h2.scope() as s2:
    q = gm.malloc(64)
rep2 = s2.escaped()
report(objects=rep.objects, bytes=rep.bytes, sites=sites, unsampled=rep.unsampled_objects,
       live=s.live, python=rep.python, text=str(rep), quiet_error=quiet_error,
       rep2=[rep2.objects, rep2.unsampled_objects, len(rep2.sites)])
''', {"GOMALLOC_PROFILE_RATE": "1"})
    assert r["objects"] == 6 and r["bytes"] == r["live"] and r["unsampled"] == 0, r
    assert sum(n for n, _, _ in r["sites"]) == 6 and sum(b for _, b, _ in r["sites"]) == r["bytes"], r
    assert all(ours for _, _, ours in r["sites"]), r  # the C stacks start at the binding's call
    assert r["python"] is None, r  # tracemalloc was not tracing
    assert "6 objects" in r["text"] and "sampled by the heap profile" in r["text"], r
    assert "report=False" in r["quiet_error"], r
    assert r["rep2"] == [1, 1, 0], r


def test_escape_report_has_python_tracebacks_when_tracemalloc_traces() -> None:
    tracemalloc.start(5)
    try:
        h = gm.Heap(name="traced")
        with h.scope() as s:
            kept = [gm.malloc(64) for _ in range(3)]
            py_kept = [str(i) * 100 for i in range(200)]  # Python's own (not in the heap without install)
        rep = s.escaped()
    finally:
        tracemalloc.stop()
    assert rep.python is not None and rep.objects == 3
    here = [d for d in rep.python if d.traceback[-1].filename == __file__]
    assert here and sum(d.size_diff for d in here) >= 200 * 100
    assert "tracemalloc, approximate" in str(rep)
    assert all("_heap.py" not in f.filename for d in rep.python for f in d.traceback)
    for p in kept:
        gm.free(p)
    h.close()
    del py_kept


INSTALL_WORKLOAD = '''
import json, re, tracemalloc
def work(n):
    docs = [{"id": i, "name": f"item-{i}", "tags": [str(j) * 3 for j in range(i % 7)]} for i in range(n)]
    text = json.dumps(docs)
    back = json.loads(text)
    found = re.findall(r"item-(\\d+)", text)
    index = {w: len(w) for w in found}
    names = [d["name"] for d in back if d["id"] % 50 == 0]
    table = {d["name"]: d["tags"] for d in back if d["id"] % 97 == 0}
    return names, table, len(index)
'''


def test_scope_under_install_runs_python_and_reports_escapes() -> None:
    """install() sends the interpreter's objects into the scope's heap: real
    code (json, re, dicts and lists) runs in it; the results it keeps are
    in the escape report, with their Python tracebacks; the heap is not
    destroyed under them (close() refuses, the with block hands them to the
    default heap with a ResourceWarning) and they are intact afterwards:
    equal to the same computation made without a scope."""
    r = run(INSTALL_WORKLOAD + '''
gm.install()
expected = json.dumps(work(3000))
tracemalloc.start(8)
h = gm.Heap(name="request")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with h:
        with h.scope() as s:
            kept = work(3000)
        rep = s.escaped()
        ids = {a for a, _ in rep.blocks}
        names_in_heap = sum(h.owns(id(x)) for x in kept[0])   # str objects: id() is the block
        names_in_report = sum(id(x) in ids for x in kept[0])
        try:
            h.close()
            busy = None
        except gm.HeapBusyError as e:
            busy = str(e)
        lines = {d.traceback[-1].lineno for d in rep.python if d.traceback[-1].filename == "<string>"}
tracemalloc.stop()
gc.collect()
gm.check_heap()
after = json.dumps(kept)
report(names=len(kept[0]), names_in_heap=names_in_heap, names_in_report=names_in_report,
       objects=rep.objects, live=s.live, allocated=s.allocated, freed=s.freed, bytes=rep.bytes,
       busy=busy, warnings=[str(w.message) for w in caught if w.category is ResourceWarning],
       intact=after == expected, closed=h.closed, python_lines=sorted(lines),
       default=gm.Heap.of(id(kept[0][0])) is gm.default_heap())
''')
    assert r["names"] == 60 and r["names_in_heap"] == 60 and r["names_in_report"] == 60, r
    assert r["objects"] >= 60 and r["bytes"] == r["live"], r
    assert r["allocated"] > 1_000_000 and r["freed"] > 0.9 * r["allocated"], r  # most of it was temporary
    assert r["busy"] is not None and "may be in use anywhere" in r["busy"], r
    mine = [w for w in r["warnings"] if "'request'" in w]
    assert len(mine) == 1 and "handed to the default heap" in mine[0], r
    assert r["intact"] and r["closed"] and r["default"], r
    assert r["python_lines"], r  # tracebacks into the workload's lines


def test_track_under_install() -> None:
    """track(): the figures of a block, whose results then live on normally
    (in the default heap, even inside another heap's scope)."""
    r = run(INSTALL_WORKLOAD + '''
gm.install()
expected = json.dumps(work(1000))
with gm.track() as t:
    kept = work(1000)
outer = gm.Heap(name="outer")
with outer.scope():
    with gm.track() as t2:
        nested = work(200)
    in_outer = gm.Heap.of(id(nested[0][0])) is gm.default_heap()
survivor_heap = gm.Heap.of(id(kept[0][0]))
report(allocated=t.allocated, freed=t.freed, live=t.live, peak=t.peak, escaped=t.escaped().objects,
       closed=t.heap.closed, default=survivor_heap is gm.default_heap(), intact=json.dumps(kept) == expected,
       in_outer=in_outer, t2=t2.allocated)
gc.collect()
gm.check_heap()
''')
    assert r["allocated"] > 100_000 and r["live"] == r["allocated"] - r["freed"] > 0, r
    assert r["peak"] >= r["live"] and r["escaped"] > 20, r
    assert r["closed"] and r["default"] and r["intact"] and r["in_outer"] and r["t2"] > 0, r


def test_track_counts_what_the_block_allocates() -> None:
    before = gm.malloc(100)
    with gm.track() as t:
        p = gm.malloc(1000)
        q = gm.malloc(5000)
        q_size = usable(q)
        gm.free(q)
        gm.free(before)  # not the block's: not counted
    assert (t.allocated, t.freed, t.live) == (usable(p) + q_size, q_size, usable(p))
    assert t.heap.closed
    assert [a for a, _ in t.escaped().blocks] == [p]
    assert gm.Heap.of(p) is gm.default_heap()
    gm.free(p)
    with pytest.raises(ValueError, match="when the block is entered"):
        _ = gm.track().heap


# --------------------------------------------------------------------------
# fault_on_destroy


def test_destroyed_memory_faults_when_asked() -> None:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent('''
        import ctypes, sys, pygomalloc as gm
        h = gm.Heap(fault_on_destroy=True)
        p = h.malloc(100)
        ctypes.memset(p, 1, 100)
        h.close()
        print("closed", flush=True)
        ctypes.string_at(p, 1)      # a dangling read
        print("read", flush=True)
    ''')], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == -signal.SIGSEGV, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "closed\n"
    # Without the option the pages are reused as usual: no fault.
    ok = subprocess.run([sys.executable, "-c", "import ctypes, pygomalloc as gm\n"
                         "h = gm.Heap(); p = h.malloc(100); h.close(); ctypes.string_at(p, 1); print('read')"],
                        capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0 and ok.stdout == "read\n", ok.stderr


# --------------------------------------------------------------------------
# Several heaps against a model (hypothesis)


class HeapsMachine(RuleBasedStateMachine):
    """Heaps made, used, closed and deleted; objects allocated, reallocated
    and freed through the right and the wrong heap.  The model: each live
    object's heap and contents.  Closing frees a heap's objects, deleting
    hands them to the default heap; statistics and visit() agree with the
    model after every step."""

    heaps = Bundle("heaps")
    objects = Bundle("objects")

    def __init__(self) -> None:
        super().__init__()
        self.owner: dict[int, gm.Heap] = {}  # address -> heap
        self.data: dict[int, bytes] = {}
        self.open: list[gm.Heap] = []
        self.n = 0

    def fill(self, address: int, size: int) -> None:
        self.n += 1
        data = bytes([self.n % 251]) * min(size, 64)
        ctypes.memmove(address, data, len(data))
        self.data[address] = data

    @rule(target=heaps, limit=st.one_of(st.none(), st.integers(1 << 16, 1 << 22)))
    def new_heap(self, limit: int | None) -> gm.Heap:
        h = gm.Heap(limit=limit, name=f"h{len(self.open)}")
        self.open.append(h)
        return h

    @rule(target=objects, h=heaps, size=st.integers(0, 70000))
    def malloc(self, h: gm.Heap, size: int) -> int:
        if h.closed:
            with pytest.raises(ValueError):
                h.malloc(size)
            return 0
        try:
            p = h.malloc(size)
        except MemoryError:
            assert h.stats().limit is not None  # only a limited heap runs out here
            return 0
        assert p not in self.owner
        self.owner[p] = h
        self.fill(p, size)
        return p

    @rule(target=objects, h=heaps, p=consumes(objects), size=st.integers(1, 20000))
    def realloc(self, h: gm.Heap, p: int, size: int) -> int:
        if p not in self.owner or h.closed:
            return 0
        old = self.data.pop(p)
        try:
            q = h.realloc(p, size)
        except MemoryError:
            self.data[p] = old
            return p
        del self.owner[p]
        keep = min(len(old), size)
        assert ctypes.string_at(q, keep) == old[:keep]
        self.owner[q] = h
        self.fill(q, size)
        return q

    @rule(h=heaps, p=consumes(objects))
    def free(self, h: gm.Heap, p: int) -> None:
        if p not in self.owner:
            return
        if h.closed:
            with pytest.raises(ValueError):
                h.free(p)
            gm.free(p)
        elif self.owner[p] is not h:
            with pytest.raises(gm.WrongHeapError):
                h.free(p)
            assert ctypes.string_at(p, len(self.data[p])) == self.data[p]
            gm.free(p)
        else:
            h.free(p)
        del self.owner[p], self.data[p]

    @rule(h=heaps, delete=st.booleans())
    def close(self, h: gm.Heap, delete: bool) -> None:
        if h.closed:
            with pytest.raises(ValueError):
                h.delete() if delete else h.close()
            return
        mine = [p for p, o in self.owner.items() if o is h]
        if delete:
            h.delete()
            for p in mine:
                self.owner[p] = gm.default_heap()
        else:
            h.close()
            for p in mine:
                del self.owner[p], self.data[p]
        self.open.remove(h)

    @invariant()
    def heaps_agree_with_the_model(self) -> None:
        for h in self.open:
            mine = sorted(p for p, o in self.owner.items() if o is h)
            seen = sorted(h.visit())
            assert [a for a, _ in seen] == mine
            st_ = h.stats()
            assert st_.objects == len(mine) and st_.alloc == sum(s for _, s in seen)
            assert st_.limit is None or st_.inuse <= st_.limit
        for p, data in self.data.items():
            assert ctypes.string_at(p, len(data)) == data
            assert gm.Heap.of(p) is self.owner[p]

    def teardown(self) -> None:
        for p, o in list(self.owner.items()):
            if o is gm.default_heap():
                gm.free(p)
        for h in self.open:
            h.close()
        gm.check_heap()


HeapsMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
TestHeaps = HeapsMachine.TestCase
