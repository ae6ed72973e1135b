"""bench/callgrind_profile.py (the reader of callgrind's files that the
callgrind scripts share) and bench/callgrind_workloads.py (the bench's
workloads under callgrind's cache simulation)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import callgrind_profile  # noqa: E402  (bench/ is not a package)

# Two objects, compressed names, a call whose inclusive cost must not count
# as the caller's own, a line with its trailing counts left out (zeros),
# code inlined from a header (fi=, fe=: the function's key stays).
SAMPLE = """\
# callgrind format
version: 1
creator: callgrind-3.19.0
positions: line
events: Ir D1mr
summary: 117 7

ob=(1) /usr/bin/driver
fl=(1) driver.c
fn=(1) main
10 50 3
11 5
cob=(2) /lib/liballoc.so
cfl=(2) alloc.c
cfn=(2) malloc
calls=4 20
12 40 9
ob=(2)
fl=(2)
fn=(2)
20 40 4
fi=(3) alloc.h
+1 22
fe=(2)
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "callgrind.out"
    path.write_text(text)
    return str(path)


def test_self_costs_per_object_and_function(tmp_path: Path) -> None:
    prof = callgrind_profile.parse(write(tmp_path, SAMPLE))
    assert prof.events == ["Ir", "D1mr"]
    assert prof.totals == [117, 7]
    assert prof.self_cost == {("/usr/bin/driver", "driver.c", "main"): [55, 3],
                              ("/lib/liballoc.so", "alloc.c", "malloc"): [62, 4]}
    assert prof.calls == {"malloc": 4}
    assert prof.by_object("D1mr") == {"/usr/bin/driver": 3, "/lib/liballoc.so": 4}
    assert prof.by_function("Ir") == {"main": 55, "malloc": 62}
    assert prof.total("Ir") == 117


def test_costs_that_do_not_add_up_are_an_error(tmp_path: Path) -> None:
    # Counting the call's inclusive line as main's own would give 157.
    with pytest.raises(RuntimeError, match="does not add up"):
        callgrind_profile.parse(write(tmp_path, SAMPLE.replace("summary: 117 7", "summary: 157 16")))
    with pytest.raises(RuntimeError, match="no summary"):
        callgrind_profile.parse(write(tmp_path, SAMPLE.replace("summary: 117 7\n", "")))


def test_workloads_table_under_the_cache_simulation() -> None:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, str(BENCH / "callgrind_workloads.py"),
                           "--workloads", "pyprofile", "--allocators", "glibc,pygomalloc",
                           "--scale", "100", "--jobs", "2"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split()[1]: line.split()[2:] for line in proc.stdout.splitlines()
            if line.startswith("pyprofile ")}
    assert set(rows) == {"glibc", "pygomalloc"}, proc.stdout
    for name, cells in rows.items():
        ir, d1mr, _, _, out_ir, out_d1mr = map(float, cells)
        assert 0 < out_ir < ir and 0 <= out_d1mr <= d1mr, (name, cells)
    # The same driver and arguments under both: the driver's own code is
    # the same work (pyprofile's loop does not depend on the addresses it gets).
    own = {n: float(c[0]) - float(c[4]) for n, c in rows.items()}
    assert abs(own["glibc"] - own["pygomalloc"]) < 0.02 * own["glibc"], own
    assert "(pyprofile --threads 1 --iters 50000)" in proc.stdout


def test_unknown_workload_is_refused() -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "callgrind_workloads.py"),
                           "--workloads", "nosuch"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown workload(s) nosuch" in proc.stderr
