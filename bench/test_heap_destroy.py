"""pytest-benchmark group ``heap_destroy_1m``: issue 11's figure, a heap of
1,000,000 small objects (16-256 B) dropped at once by gm_heap_destroy,
against freeing the same objects one by one (made in the default heap, as a
program without heaps would, or in a heap).

    pytest bench/test_heap_destroy.py --benchmark-only --benchmark-group-by=group

The objects are made before each round (pytest-benchmark's untimed
``setup``) and dropped in the timed body, both by loops in C (the extension
module's pgm_bench_fill / pgm_bench_free_each): what is timed is the drop
alone.  ``python -m pygomalloc bench --workloads graphs_destroy`` gives the
same figure from the graphs driver.  No speed is asserted.
"""

from __future__ import annotations

import pytest

from pygomalloc._gomalloc import ffi, lib

N = 1_000_000
ROUNDS = 5


def _filled(heap):
    out = ffi.new("uintptr_t[]", N)
    assert lib.pgm_bench_fill(heap, out, N, 1) == 0
    return out


@pytest.mark.benchmark(group="heap_destroy_1m")
@pytest.mark.parametrize("how", ["free_each_default_heap", "free_each_from_heap", "heap_destroy"])
def test_drop_a_million_objects(benchmark, how):
    heaps = []

    def setup():
        if how == "free_each_default_heap":
            return (_filled(ffi.NULL),), {}
        h = lib.gm_heap_new(ffi.NULL)
        assert h != ffi.NULL
        heaps.append(h)
        return (h, _filled(h)), {}

    def free_each(*args):
        lib.pgm_bench_free_each(args[-1], N)

    def destroy(h, objects):
        assert lib.gm_heap_destroy(h) == 0

    benchmark.pedantic(destroy if how == "heap_destroy" else free_each, setup=setup,
                       rounds=ROUNDS, iterations=1)
    for h in heaps:  # the emptied heaps of free_each_from_heap
        assert lib.gm_heap_destroy(h) in (0, lib.EINVAL)
    benchmark.extra_info.update(objects=N, how=how)
