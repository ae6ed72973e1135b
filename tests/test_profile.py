"""The sampled heap profile: option profile_rate, heap_profile(), and the
command line's --profile."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
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
    recs = gm.heap_profile()
    return (sum(r.alloc_objects for r in recs), sum(r.alloc_bytes for r in recs),
            sum(r.free_objects for r in recs), sum(r.free_bytes for r in recs))


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
    with pytest.raises(gm.NotAllocatedError):
        gm.free(addrs[0])  # a double free of a sampled object is still caught


def test_rate_samples_about_one_per_rate_bytes() -> None:
    a0 = totals()[0]
    gm.set_option("profile_rate", 4096)
    try:
        addrs = [gm.malloc(64) for _ in range(32768)]  # 2 MiB: 512 samples expected
    finally:
        gm.set_option("profile_rate", 0)
    samples = totals()[0] - a0
    assert 384 < samples < 640, samples  # Poisson sd ~23: 25% is over 5 sd
    for a in addrs:
        gm.free(a)


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
