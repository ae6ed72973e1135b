"""The sampled heap profile: option profile_rate, heap_profile(), and the
command line's --profile."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import pygomalloc as gm


@pytest.fixture()
def profiling() -> Iterator[None]:
    gm.set_option("profile_rate", 1)  # every allocation
    try:
        yield
    finally:
        gm.set_option("profile_rate", 0)


def totals() -> tuple[int, int, int, int]:
    """The estimates, summed over the call sites."""
    recs = gm.heap_profile()
    return (sum(r.alloc_objects for r in recs), sum(r.alloc_bytes for r in recs),
            sum(r.free_objects for r in recs), sum(r.free_bytes for r in recs))


def sample_totals() -> tuple[int, int, int, int]:
    """The raw samples, summed over the call sites."""
    recs = gm.heap_profile()
    return (sum(r.alloc_samples for r in recs), sum(r.alloc_sample_bytes for r in recs),
            sum(r.free_samples for r in recs), sum(r.free_sample_bytes for r in recs))


def test_off_by_default_and_nothing_recorded() -> None:
    assert gm.get_option("profile_rate") == 0
    before = totals()
    addrs = [gm.malloc(200) for _ in range(100)]
    for a in addrs:
        gm.free(a)
    assert totals() == before


def test_every_allocation_sampled_at_rate_one(profiling: None) -> None:
    a0, b0, f0, fb0 = totals()
    addrs = [gm.malloc(100) for _ in range(200)] + [gm.malloc(100_000)]
    size_small, size_large = gm.usable_size(addrs[0]), gm.usable_size(addrs[-1])
    a1, b1, f1, fb1 = totals()
    assert a1 - a0 == 201
    assert b1 - b0 == 200 * size_small + size_large
    assert f1 == f0
    # Every allocation is sampled: the estimates are the samples, exactly.
    assert sample_totals() == totals()
    assert all((r.alloc_objects, r.alloc_bytes, r.free_objects, r.free_bytes) ==
               (r.alloc_samples, r.alloc_sample_bytes, r.free_samples, r.free_sample_bytes)
               for r in gm.heap_profile())
    recs = gm.heap_profile()
    top = recs[0]  # most bytes in use first: the large object's site or the small ones'
    assert top.inuse_bytes >= size_large or top.inuse_bytes >= 100 * size_small
    assert all(r.stack and len(r.stack) == len(r.addresses) for r in recs)
    assert all(isinstance(f, str) and f for r in recs for f in r.stack)
    gm.check_heap()  # sampled objects have a state byte of their own
    for a in addrs:
        gm.free(a)
    a2, b2, f2, fb2 = totals()
    assert (a2, b2) == (a1, b1)
    assert f2 - f1 == 201 and fb2 - fb1 == b1 - b0
    assert sample_totals() == totals()
    with pytest.raises(gm.NotAllocatedError):
        gm.free(addrs[0])  # a double free of a sampled object is still caught


def test_rate_samples_about_one_per_rate_bytes() -> None:
    a0 = sample_totals()[0]
    gm.set_option("profile_rate", 4096)
    try:
        addrs = [gm.malloc(64) for _ in range(32768)]  # 2 MiB: 512 samples expected
    finally:
        gm.set_option("profile_rate", 0)
    samples = sample_totals()[0] - a0
    assert 384 < samples < 640, samples  # Poisson sd ~23: 25% is over 5 sd
    for a in addrs:
        gm.free(a)


def profile_pattern(rate: int, sizes: Sequence[int]) -> dict[str, int]:
    """Allocate objects of *sizes* with profile_rate *rate*, then free them;
    the profile's figures for them (all call sites summed: nothing else
    allocates from pygomalloc meanwhile), and their usable bytes."""
    assert not gm.installed()  # else Python's own objects would be sampled too
    gm.set_option("profile_rate", rate)
    try:
        # The thread's countdown still holds what is left of an interval drawn
        # at another rate: allocate until a sample is taken, after which the
        # next interval is drawn afresh at this rate.
        while True:
            before = sample_totals()[0]
            gm.free(gm.malloc(64 * rate))
            if sample_totals()[0] > before:
                break
        est0, smp0 = totals(), sample_totals()
        addrs = [gm.malloc(n) for n in sizes]
        usable = sum(gm.usable_size(a) for a in addrs)
        est1, smp1 = totals(), sample_totals()
        for a in addrs:
            gm.free(a)
        est2, smp2 = totals(), sample_totals()
    finally:
        gm.set_option("profile_rate", 0)
    return {"objects": est1[0] - est0[0], "bytes": est1[1] - est0[1],
            "freed_objects": est2[2] - est1[2], "freed_bytes": est2[3] - est1[3],
            "samples": smp1[0] - smp0[0], "freed_samples": smp2[2] - smp1[2],
            "usable": usable}


def usable_size_of(size: int) -> int:
    a = gm.malloc(size)
    try:
        return gm.usable_size(a)
    finally:
        gm.free(a)


def estimate_sds(rate: int, sizes: Sequence[int], usable: Sequence[int]) -> tuple[float, float]:
    """Standard deviations of the object and byte estimates.

    Allocation i (s bytes, e usable) is sampled with probability
    p = 1 - exp(-s/R) and then counts 1/p objects and e/p bytes, so each
    estimate is a sum of independent terms X_i/p with X_i ~ Bernoulli(p):
    variance sum (1-p)/p for the objects, sum e^2 (1-p)/p for the bytes.
    (The exponential spacing makes the samples a little more regular than
    independent draws, so these are if anything too large.)
    """
    var_objects = var_bytes = 0.0
    for s, e in zip(sizes, usable):
        p = -math.expm1(-s / rate)
        var_objects += (1 - p) / p
        var_bytes += e * e * (1 - p) / p
    return math.sqrt(var_objects), math.sqrt(var_bytes)


# 5 standard deviations: a correct estimator fails with probability below
# 1e-6 (normal tails; the smallest pattern below takes about 300 samples, so
# the normal approximation holds), while raw sample counts, or a per-stack
# scaling by the average size, miss by hundreds of standard deviations.
TOLERANCE_SDS = 5


@pytest.mark.parametrize("rate, pattern", [
    (64 * 1024, [(100, 200_000)]),      # small: p = 0.0015, ~305 samples, sd 5.7%
    (64 * 1024, [(100_000, 400)]),      # large: p = 0.78, ~313 samples, sd 2.6%
    # One call site, two sizes: 1/p differs 250-fold between them (a
    # per-stack scaling by the average size would count ~300 objects).
    (64 * 1024, [(64, 100_000), (256 * 1024, 100)]),
])
def test_estimates_are_unbiased(rate: int, pattern: list[tuple[int, int]]) -> None:
    sizes = [size for size, count in pattern for _ in range(count)]
    got = profile_pattern(rate, sizes)
    usable = [usable_size_of(s) for s in sizes]
    assert got["usable"] == sum(usable)
    sd_objects, sd_bytes = estimate_sds(rate, sizes, usable)
    assert abs(got["objects"] - len(sizes)) < TOLERANCE_SDS * sd_objects, (got, sd_objects)
    assert abs(got["bytes"] - got["usable"]) < TOLERANCE_SDS * sd_bytes, (got, sd_bytes)
    # The samples themselves: as many as the chances say (mean sum p,
    # variance sum p(1-p)), far fewer than the objects for the small sizes.
    chances = [-math.expm1(-s / rate) for s in sizes]
    expected = sum(chances)
    sd_samples = math.sqrt(sum(p * (1 - p) for p in chances))
    assert abs(got["samples"] - expected) < TOLERANCE_SDS * sd_samples, (got, expected)
    # Every sampled object was freed: the free side takes off exactly what
    # the allocation side added.
    assert got["freed_samples"] == got["samples"]
    assert (got["freed_objects"], got["freed_bytes"]) == (got["objects"], got["bytes"])


def test_bad_rates_are_refused() -> None:
    with pytest.raises(ValueError):
        gm.set_option("profile_rate", -1)
    with pytest.raises(ValueError):
        gm.set_option("profile_rate", 1 << 41)
    assert gm.get_option("profile_rate") == 0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pygomalloc", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_pyrun_profile_reports_call_sites(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text("keep = [bytes(1000) for _ in range(20000)]\n"
                      "import pygomalloc\n"
                      "print(len(pygomalloc.heap_profile()) > 0)\n")
    out = tmp_path / "out.json"
    result = run_cli("pyrun", "--profile", "65536", "--json", str(out), str(script))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert "heap profile: 1 sample per 65,536 bytes" in result.stderr
    doc = json.loads(out.read_text())
    prof = doc["heap_profile"]
    assert prof and sum(r["alloc_bytes"] for r in prof) > 10 * 65536
    assert all(r["stack"] for r in prof)


def test_run_profile_prints_sites_at_exit() -> None:
    result = run_cli("run", "--profile", "100000", "--", sys.executable, "-c",
                     "x = [bytes(1000) for _ in range(20000)]")
    assert result.returncode == 0, result.stderr
    assert "pygomalloc: heap profile, 1 sample per 100000 bytes" in result.stderr
    assert "allocated" in result.stderr


def test_pyrun_tracemalloc_names_the_scripts_lines(tmp_path: Path) -> None:
    script = tmp_path / "hog.py"
    script.write_text("keep = []\n"
                      "for i in range(20000):\n"
                      "    keep.append('x' * 100 + str(i))\n")
    out = tmp_path / "st.json"
    result = run_cli("pyrun", "--tracemalloc", "1", "--json", str(out), str(script))
    assert result.returncode == 0, result.stderr
    report = result.stderr[result.stderr.index("tracemalloc:"):]
    first_site = report.splitlines()[1:3]
    assert "in 20,0" in first_site[0] and f"{script}:3" in first_site[1], report
    # The statistics describe the heap as the script left it: its 20000
    # strings are still live, in pygomalloc.
    assert json.loads(out.read_text())["heap_objects"] >= 20000
