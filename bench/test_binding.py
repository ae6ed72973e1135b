"""What the Python binding costs: a malloc(64) + free round trip through cffi.

Run with ``python -m pytest bench/test_binding.py``.  The three rows of group
"binding" are the public API (argument handling included), the bare cffi
calls into pygomalloc, and the same bare calls into the C library's malloc.
The bar (BRIEF section 5) is that pygomalloc through cffi costs no more than
libc through cffi.  Each round does ROUND_TRIPS round trips; divide by it.
"""

from __future__ import annotations

from typing import Callable

import pytest

import pygomalloc
from pygomalloc._gomalloc import lib

ROUND_TRIPS = 1000
SIZE = 64


def public_api() -> None:
    malloc, free = pygomalloc.malloc, pygomalloc.free
    for _ in range(ROUND_TRIPS):
        free(malloc(SIZE))


def cffi_pygomalloc() -> None:
    malloc, free = lib.pgm_malloc, lib.pgm_free
    for _ in range(ROUND_TRIPS):
        free(malloc(SIZE))


def cffi_libc() -> None:
    malloc, free = lib.pgm_libc_malloc, lib.pgm_libc_free
    for _ in range(ROUND_TRIPS):
        free(malloc(SIZE))


@pytest.mark.benchmark(group="binding")
@pytest.mark.parametrize(
    "round_trips",
    [public_api, cffi_pygomalloc, cffi_libc],
    ids=["pygomalloc-api", "pygomalloc-cffi", "libc-cffi"],
)
def test_malloc_free_round_trip(benchmark, round_trips: Callable[[], None]) -> None:  # type: ignore[no-untyped-def]
    benchmark.extra_info["round_trips_per_call"] = ROUND_TRIPS
    benchmark(round_trips)
