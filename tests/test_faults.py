"""Out of memory from Python: the OS layer made to fail on purpose.

Each test runs a fresh interpreter with ``GOMALLOC_DEBUG_FAIL_EVERY=N`` (and
``GOMALLOC_DEBUG_FAIL_KINDS``), so that every Nth mmap/madvise of the chosen
kinds fails as the kernel would (csrc/mem_linux.c).  The child drives
``pygomalloc.malloc``/``calloc``/``realloc``/``aligned_alloc``/``Buffer``
directly (the interpreter itself does not allocate through pygomalloc unless
``install()`` is called), and must see ``MemoryError`` for every allocation
that fails -- never a crash -- with its surviving objects intact, the heap
consistent, nothing leaked once everything is freed, and the interpreter
still usable.  The C tests (csrc/tests/test_faults.c) cover the same ground
in depth; these check the Python surface and the environment variables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    r"""
    import ctypes, json, sys
    import pygomalloc
    from pygomalloc import _gomalloc

    # The extension module exports the C API; its testing-only switch turns
    # the injection off at the end.
    core = ctypes.CDLL(_gomalloc.__file__)
    core.gm_debug_os_failures.restype = ctypes.c_ulong
    core.gm_debug_fail_os_calls.argtypes = [ctypes.c_ulong, ctypes.c_uint]

    start = pygomalloc.stats()
    live = {}  # address -> (size, byte)
    ok = failed = 0
    seq = 0

    def keep(address, size):
        global seq
        seq += 1
        byte = seq % 251 + 1
        ctypes.memset(address, byte, size)  # every byte writable
        live[address] = (size, byte)

    def intact(address):
        size, byte = live[address]
        return ctypes.string_at(address, size) == bytes([byte]) * size

    sizes = [0, 1, 7, 16, 100, 1000, 5000, 32768, 40000, 300000, 2 << 20]
    for i in range(600):
        size = sizes[i % len(sizes)] + i % 13
        op = i % 7
        allocated = op != 6
        try:
            if op in (0, 1):
                keep(pygomalloc.malloc(size), size)
            elif op == 2:
                a = pygomalloc.calloc(3, size)
                assert ctypes.string_at(a, 3 * size) == bytes(3 * size), "calloc not zeroed"
                keep(a, 3 * size)
            elif op == 3 and live:
                old = next(iter(live))
                osize, byte = live[old]
                new = pygomalloc.realloc(old, size + 1)
                n = min(osize, size + 1)
                assert ctypes.string_at(new, n) == bytes([byte]) * n, "realloc lost the prefix"
                del live[old]
                keep(new, size + 1)
            elif op == 4:
                alignment = 1 << (4 + i % 17)
                a = pygomalloc.aligned_alloc(alignment, size)
                assert a % alignment == 0
                keep(a, size)
            elif op == 5:
                with pygomalloc.Buffer(size + 1, zero=bool(i % 2)) as buf:
                    buf.view[:] = b"\x5a" * (size + 1)
                    assert bytes(buf.view[-1:]) == b"\x5a"
            elif op == 6 and len(live) > 20:
                victim = list(live)[i % len(live)]
                assert intact(victim), "an object changed"
                pygomalloc.free(victim)
                del live[victim]
            elif op == 3:
                allocated = False  # nothing to resize yet
            ok += allocated
        except MemoryError:
            failed += 1
        if i % 100 == 99:
            pygomalloc.check_heap()
            pygomalloc.thread_flush()
    released_under_faults = pygomalloc.release()
    pygomalloc.check_heap()
    injected = core.gm_debug_os_failures()

    for address in list(live):
        assert intact(address), "an object changed"
        pygomalloc.free(address)
    live.clear()
    core.gm_debug_fail_os_calls(0, 0)
    pygomalloc.release()
    pygomalloc.check_heap()
    end = pygomalloc.stats()

    # The OS agrees again: allocations succeed.
    a = pygomalloc.malloc(1 << 20)
    ctypes.memset(a, 1, 1 << 20)
    pygomalloc.free(a)
    # And the interpreter is fine.
    data = {str(k): [k] * 10 for k in range(10000)}
    assert sum(len(v) for v in data.values()) == 100000

    print(json.dumps({
        "ok": ok, "failed": failed, "injected": injected,
        "released_under_faults": released_under_faults,
        "leak": {f: getattr(end, f) - getattr(start, f)
                 for f in ("heap_objects", "heap_alloc", "heap_inuse", "large_objects",
                           "cached_bytes", "transfer_bytes", "bad_frees")},
        "idle": end.heap_idle, "released": end.heap_released,
    }))
    """
)


def run_child(every: int, kinds: str | None = None) -> dict:
    env = dict(os.environ)
    env["GOMALLOC_DEBUG_FAIL_EVERY"] = str(every)
    env["GOMALLOC_SCAVENGER"] = "0"  # no background thread calling the OS: deterministic
    env.pop("GOMALLOC_DEBUG_FAIL_KINDS", None)
    if kinds is not None:
        env["GOMALLOC_DEBUG_FAIL_KINDS"] = kinds
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, (
        f"child (every {every}, kinds {kinds}) exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["leak"] == dict.fromkeys(result["leak"], 0), result
    assert result["idle"] == result["released"], result  # every free page went back at the end
    return result


@pytest.mark.parametrize("every", [2, 3, 5, 8, 13, 21, 34])
def test_every_nth_os_call_fails(every: int) -> None:
    result = run_child(every)
    assert result["injected"] > 0
    if every <= 8:
        assert result["failed"] > 0
    if every >= 5:
        # (With every 2nd or 3rd call failing, each attempt to grow the heap
        # may fail at the same step of its fixed sequence of calls.)
        assert result["ok"] > 0


def test_every_os_call_fails() -> None:
    # Nothing can be had: every allocation raises MemoryError, nothing crashes.
    result = run_child(1, "all")
    assert result["ok"] == 0
    assert result["failed"] > 400


@pytest.mark.parametrize("kinds", ["map,reserve", "alloc", "0x02"])
def test_one_kind_fails(kinds: str) -> None:
    result = run_child(1, kinds)
    assert result["failed"] > 0
    assert result["injected"] > 0


def test_madvise_failing_is_not_fatal() -> None:
    # Releasing fails (the pages stay resident and are not counted as
    # released); allocation is unaffected.
    result = run_child(1, "unused")
    assert result["failed"] == 0
    assert result["released_under_faults"] == 0
    assert result["injected"] > 0


def test_injection_off_by_default() -> None:
    result = run_child(0)
    assert result["failed"] == 0
    assert result["injected"] == 0
