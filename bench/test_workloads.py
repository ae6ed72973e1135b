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

``graphs_destroy`` runs under pygomalloc only (its heaps); issue 11's
million-object figure is bench/test_heap_destroy.py's group.

The plain tests at the end (not benchmarks: ``--benchmark-only`` skips them)
check that the turnover, mleak and graphs drivers do what their rows claim: threads
really replaced at the given rate, a heap that really grows and is resident,
checksums that depend on the options only; and that pygomalloc keeps no
memory of the threads that exited.
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
    if not workload.runs_under(allocator):
        pytest.skip(f"{workload.name} runs under {', '.join(workload.only)} only")
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


# --------------------------------------------------------------------------
# What the turnover and mleak drivers do (plain tests, no timing)


def _workload(name):
    return next(w for w in bench.WORKLOADS if w.name == name)


def _options(args):
    """--name value pairs of a driver's argument list, as a dict of ints."""
    return {k: int(v) for k, v in zip(args[::2], args[1::2])}


def _run(drivers, driver, args, cand):
    r = bench.run_once(drivers, driver, [str(a) for a in args], cand, TIMEOUT)
    assert r.ok, f"{driver} {' '.join(map(str, args))} under {cand.name}: {r.error}"
    return r


GLIBC = bench.Candidate("glibc", None, "the C library")


def _threads_started(threads, ops, lifetime):
    """Generations the driver must start: each slot's share of ops in
    lifetime-sized pieces (at least one thread per slot)."""
    shares = [ops // threads + (s < ops % threads) for s in range(threads)]
    return sum(max(1, -(-n // lifetime)) for n in shares)


@pytest.mark.parametrize("name", [w.name for w in bench.WORKLOADS if w.driver == "turnover"])
def test_turnover_rows_replace_their_threads_at_their_rate(name, drivers):
    """A table row's worker threads are replaced every --lifetime operations:
    the driver starts a new thread for every lifetime's worth of work, and
    does the work it was given (every block allocated once, freed once)."""
    w = _workload(name)
    for full in (False, True):
        o = _options(w.args(full))
        assert o["--ops"] // o["--lifetime"] >= 50, f"{name}: too few thread lifetimes"
    args = w.args()
    o = _options(args)
    r = _run(drivers, "turnover", args, GLIBC)
    assert int(r.fields["threads_started"]) == _threads_started(
        o["--threads"], o["--ops"], o["--lifetime"])
    assert r.ops == o["--ops"] + o["--threads"] * o["--live"]


def test_turnover_checksum_depends_on_the_options_only(drivers, allocators):
    """Every allocator gives the same checksum (no scheduling or address in
    it), and the checksum changes with the work done (seed, rate)."""
    found, _ = allocators
    args = ["--threads", 3, "--ops", 30001, "--lifetime", 700, "--live", 300]
    sums = {name: _run(drivers, "turnover", args, cand).checksum for name, cand in found.items()}
    assert len(set(sums.values())) == 1, sums
    ref = next(iter(sums.values()))
    assert _run(drivers, "turnover", args + ["--seed", 2], GLIBC).checksum != ref
    other_rate = _run(drivers, "turnover", args[:4] + ["--lifetime", 100] + args[6:], GLIBC)
    assert other_rate.checksum != ref
    assert int(other_rate.fields["threads_started"]) == _threads_started(3, 30001, 100)


def test_pygomalloc_keeps_nothing_of_threads_that_exited(drivers, allocators):
    """10000 threads started and exited over the same live set (the turnover
    driver with a new thread every 20 operations) leave pygomalloc's peak RSS
    where one thread per slot leaves it, give or take a quarter and 2 MiB: a
    dead thread's cache is reused or given back, not leaked (1 KiB kept per
    thread would be 10 MiB)."""
    found, skipped = allocators
    if "pygomalloc" not in found:
        pytest.skip(next((s for s in skipped if s.startswith("pygomalloc:")), "not available"))
    cand = found["pygomalloc"]
    base = ["--threads", 2, "--ops", 200000, "--live", 2000]
    churn = _run(drivers, "turnover", base + ["--lifetime", 20], cand)
    steady = _run(drivers, "turnover", base + ["--lifetime", 200000], cand)
    assert int(churn.fields["threads_started"]) == _threads_started(2, 200000, 20)
    assert int(steady.fields["threads_started"]) == 2
    assert churn.checksum != steady.checksum  # different generations, different data
    assert churn.maxrss_kib <= steady.maxrss_kib * 1.25 + 2048, (
        f"peak RSS {churn.maxrss_kib} KiB with thread turnover, {steady.maxrss_kib} KiB without")


def test_mleak_row_grows_a_heap_that_is_resident(drivers, allocators):
    """mleak under every allocator: its heap only grows (all but about one
    object in --free-every is still live at the end, every live object read
    back intact) and is really resident (the peak RSS holds at least the live
    bytes: the objects were written), and the checksums agree."""
    found, _ = allocators
    o = _options(_workload("mleak").args())
    args = ["--threads", 2, "--mib", 32, "--free-every", o["--free-every"]]
    sums = {}
    for name, cand in found.items():
        r = _run(drivers, "mleak", args, cand)
        live, asked = int(r.fields["live_bytes"]), int(r.fields["asked_bytes"])
        objects_live = int(r.fields["objects_live"])
        assert asked >= 32 << 20
        assert objects_live >= r.ops * (1 - 1 / o["--free-every"]), name
        assert live >= asked * (1 - 2 / o["--free-every"]), name
        assert r.maxrss_kib * 1024 >= live, f"{name}: peak RSS below the live bytes"
        sums[name] = r.checksum
    assert len(set(sums.values())) == 1, sums


def test_graphs_destroy_drops_the_same_documents(drivers, allocators):
    """The graphs driver builds the same documents in both modes (the same
    checksum, the same blocks), under every allocator; --destroy needs
    pygomalloc's heaps and says so elsewhere (exit status 2)."""
    found, skipped = allocators
    args = ["--threads", 2, "--docs", 20, "--nodes", 500]
    sums = {name: _run(drivers, "graphs", args, cand) for name, cand in found.items()}
    assert len({r.checksum for r in sums.values()}) == 1
    assert len({r.ops for r in sums.values()}) == 1
    r = bench.run_once(drivers, "graphs", [str(a) for a in args + ["--destroy", 1]], GLIBC, TIMEOUT)
    assert not r.ok and "gm_heap_new not found" in r.error and "exit status 2" in r.error
    if "pygomalloc" not in found:
        pytest.skip(next((s for s in skipped if s.startswith("pygomalloc:")), "not available"))
    d = _run(drivers, "graphs", args + ["--destroy", 1], found["pygomalloc"])
    ref = sums["glibc"]
    assert (d.checksum, d.ops) == (ref.checksum, ref.ops)
    assert float(d.fields["drop_seconds"]) > 0 and float(d.fields["build_seconds"]) > 0
    m = _run(drivers, "graphs", ["--million", 20000, "--rounds", 3], found["pygomalloc"])
    assert m.ops == 20000 and m.seconds == float(m.fields["destroy_seconds"])
    assert all(float(m.fields[k]) > 0 for k in ("free_seconds", "heap_free_seconds"))
