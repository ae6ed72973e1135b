"""pytest-benchmark group ``numpy_temporaries``: many temporary numpy arrays
under numpy's default data allocator and under pygomalloc.numpy's.

    pytest bench/test_numpy.py --benchmark-only --benchmark-group-by=group

The workload is ``pygomalloc._npbench.workload`` (elementwise ops, slicing,
fancy indexing, concatenation over arrays of 8 to 262144 elements), run in
this process: what is compared is the allocator behind the arrays' data,
the rest of the work being the same.  ``python -m pygomalloc bench
--workloads numpy`` runs the two alternating and prints their ratio.  No
speed is asserted; skipped when numpy is not installed.
"""

from __future__ import annotations

import pytest

np = pytest.importorskip("numpy", reason="numpy is not installed (pip install 'pygomalloc[numpy]')")
from pygomalloc import _npbench  # noqa: E402 (the installed package: its compiled module)
from pygomalloc import numpy as gnp  # noqa: E402

ITERS = 400  # one run: about 0.2-0.5 s here


@pytest.fixture(scope="module")
def inputs():
    return _npbench.make_inputs(np)


@pytest.mark.benchmark(group="numpy_temporaries")
@pytest.mark.parametrize("allocator", ["default", "pygomalloc"])
def test_numpy_temporaries(benchmark, allocator, inputs):
    expected = _npbench.workload(np, inputs, ITERS)  # warm-up, and the reference result
    prev = gnp.use() if allocator == "pygomalloc" else None
    try:
        assert gnp.handler_name() == ("pygomalloc" if prev is not None else "default_allocator")
        result = benchmark.pedantic(_npbench.workload, args=(np, inputs, ITERS), rounds=5,
                                    iterations=1, warmup_rounds=1)
    finally:
        if prev is not None:
            gnp.set_handler(prev)
    assert result == expected
    benchmark.extra_info.update(allocator=allocator, numpy=np.__version__, iters=ITERS)
