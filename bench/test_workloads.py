"""pytest-benchmark comparison of allocators on the C workload drivers.

    pytest bench/ --benchmark-only --benchmark-group-by=group

Each workload is one benchmark group; within it, one test per allocator
(glibc, pygomalloc, jemalloc, tcmalloc, mimalloc; the ones not found on this
machine are skipped).  The timed body runs the compiled driver once, in its
own process, with the allocator preloaded, so pytest-benchmark compares
allocators and not Python call overhead.  The figures pytest-benchmark shows
are whole-process times (start-up included); the driver's own timed region,
its peak RSS and its checksum are kept in ``extra_info`` (see
--benchmark-json).  The same drivers, arguments and allocator discovery as
``python -m pygomalloc bench`` (src/pygomalloc/_bench.py) are used; the
preload library of pygomalloc can be chosen with $GOMALLOC_PRELOAD_LIB.

No speed is asserted: a test fails only when a driver fails (crash, hang,
corrupted block, no work done) or when allocators disagree on a workload's
deterministic checksum.
"""

from __future__ import annotations

import statistics
import sys

import pytest

from runner import bench  # bench/runner.py

ROUNDS = 3
TIMEOUT = 60.0  # seconds for one driver run in quick mode

# workload name -> (allocator, checksum) of the first successful run seen
_reference_checksums: dict = {}


@pytest.fixture(scope="session")
def drivers():
    try:
        return bench.build_drivers()
    except (RuntimeError, FileNotFoundError) as exc:
        pytest.skip(f"cannot build the benchmark drivers: {exc}")


@pytest.fixture(scope="session")
def allocators():
    found, skipped = bench.discover_candidates()
    return {c.name: c for c in found}, skipped


def _time_driver(benchmark, workload, cand, args, drivers, label):
    """Run the driver ROUNDS times under cand as the timed body; check that
    every run and every allocator agree on the checksum; keep the driver's
    own figures in extra_info."""
    runs = []

    def run_driver():
        r = bench.run_once(drivers, workload.driver, args, cand, TIMEOUT)
        if not r.ok:  # stop at once rather than repeat a crash or a hang
            raise AssertionError(f"{workload.name} under {label}: {r.error}")
        runs.append(r)
        return r

    benchmark.pedantic(run_driver, rounds=ROUNDS, iterations=1, warmup_rounds=0)

    checksums = {r.checksum for r in runs}
    assert len(checksums) == 1, f"checksum differs between runs: {sorted(checksums)}"
    checksum = checksums.pop()
    benchmark.extra_info.update(
        allocator=label,
        preload=cand.preload,
        args=" ".join(args),
        driver_seconds_median=statistics.median(r.seconds for r in runs),
        peak_rss_mib=max(r.maxrss_kib for r in runs) / 1024.0,
        ops=runs[0].ops,
        checksum=checksum,
    )
    ref = _reference_checksums.setdefault(workload.name, (label, checksum))
    assert checksum == ref[1], (
        f"{workload.name}: checksum {checksum} under {label} differs from "
        f"{ref[1]} under {ref[0]}")


@pytest.mark.parametrize("allocator", bench.ALLOCATORS)
@pytest.mark.parametrize(
    "workload",
    [pytest.param(w, id=w.name, marks=pytest.mark.benchmark(group=w.name))
     for w in bench.WORKLOADS],
)
def test_workload(benchmark, workload, allocator, drivers, allocators):
    found, skipped = allocators
    if allocator not in found:
        reason = next((s for s in skipped if s.startswith(allocator + ":")), "not available")
        pytest.skip(reason)
    _time_driver(benchmark, workload, found[allocator], workload.args(), drivers, allocator)


@pytest.mark.parametrize(
    "workload",
    [pytest.param(w, id=w.name, marks=pytest.mark.benchmark(group=w.name))
     for w in bench.WORKLOADS if w.floor],
)
def test_floor(benchmark, workload, drivers):
    """The workload with malloc/free taken out of its loop (bench.FLOOR), in
    the workload's group: how close to no allocator at all each one comes."""
    cand = bench.Candidate(bench.FLOOR, None, "no allocator in the loop")
    _time_driver(benchmark, workload, cand, workload.args() + list(workload.floor), drivers,
                 bench.FLOOR)
