#!/usr/bin/env python3
"""Instructions and simulated cache misses of the bench's workloads, per allocator.

    python bench/callgrind_workloads.py [--workloads larson,alloc_test] [--scale 10]

Each workload of ``python -m pygomalloc bench`` (its driver and its quick
arguments, with the counts that set its length -- iterations, documents,
operations, MiB -- divided by ``--scale``, and 2 threads) runs under
``valgrind --tool=callgrind --cache-sim=yes`` once per allocator, every
allocator but glibc through ``LD_PRELOAD``.  The table gives, in millions,
for the whole program: instructions (Ir), L1 data read and write misses
(D1mr, D1mw) and last-level data misses (DLmr + DLmw) of callgrind's
simulated caches; and the instructions and L1 read misses outside the
driver's own code (the allocator, plus whatever of the C library and the
loader ran: with glibc that is its malloc).

Where a wall-clock row of the bench is lost, this says whether the
allocator executed more instructions or missed the cache more often.  It
cannot show what callgrind does not model: threads run one at a time on
one simulated cache (no lines moving between cores), and a ``lock``ed
instruction counts as one instruction whatever it costs.  Counts are
repeatable from run to run where times on a shared machine are not (to
within 1% for the two-thread rows, whose interleaving valgrind's
scheduler decides).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import callgrind_profile  # bench/callgrind_profile.py
from runner import bench  # bench/runner.py

#: The rows the bench's README discusses as lost or tied (default).
DEFAULT = ("larson", "alloc_test", "shbench", "mleak", "pyprofile", "graphs", "cache_thrash")

#: Options whose value sets a workload's length: divided by --scale.
LENGTH = re.compile(r"^--(iters|docs|ops|mib)$")

EVENTS = ("Ir", "D1mr", "D1mw", "DLmr", "DLmw")


def scaled_args(w, scale: int, threads: int = 2) -> List[str]:
    """The workload's quick arguments with its length divided by ``scale``."""
    args = w.args(False, threads)
    out: List[str] = []
    for i, a in enumerate(args):
        if i > 0 and LENGTH.match(args[i - 1]):
            a = str(max(1, int(a) // scale))
        out.append(a)
    if w.driver == "fastpath":  # positional: size, iterations, order
        out[1] = str(max(1, int(out[1]) // scale))
    return out


def run(binary: Path, args: Sequence[str], cand, tmpdir: str) -> Dict[str, int]:
    """Whole-program counts and those outside the driver for one run."""
    prof = callgrind_profile.run_driver(binary, args, cand.name, bench.candidate_env(cand), tmpdir,
                                        ["--cache-sim=yes"], cand.preload)
    if cand.preload and not any(os.path.realpath(ob) == os.path.realpath(cand.preload)
                                for ob in prof.by_object("Ir")):
        raise RuntimeError(f"{cand.preload} does not appear in the profile: it did not run")
    res = {ev: prof.total(ev) for ev in EVENTS}
    for ev in ("Ir", "D1mr"):
        driver = sum(v for ob, v in prof.by_object(ev).items() if Path(ob).name == binary.name)
        res["out_" + ev] = res[ev] - driver
    return res


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default=",".join(DEFAULT),
                   help="bench workloads (default %(default)s)")
    p.add_argument("--allocators", help="allocators (default all found: %s)" % ",".join(bench.ALLOCATORS))
    p.add_argument("--scale", type=int, default=10,
                   help="divide each workload's length by this (default 10)")
    p.add_argument("--pygomalloc-lib", metavar="PATH", help="pygomalloc's preload library")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="valgrind runs in parallel (default: number of CPUs)")
    opts = p.parse_args(argv)
    if opts.scale < 1:
        p.error("--scale must be at least 1")
    known = {w.name: w for w in bench.WORKLOADS}
    names = [n.strip() for n in opts.workloads.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        p.error(f"unknown workload(s) {', '.join(bad)}: choose from {', '.join(known)}")
    if not callgrind_profile.have_valgrind("callgrind_workloads"):
        return 2
    selected = [a.strip() for a in opts.allocators.split(",")] if opts.allocators else None
    try:
        cands, skipped = bench.discover_candidates(selected, opts.pygomalloc_lib,
                                                   strict=selected is not None)
    except (ValueError, LookupError) as exc:
        p.error(str(exc.args[0]))
    for s in skipped:
        print(f"callgrind_workloads: {s}", file=sys.stderr)
    workloads = [known[n] for n in names]
    binaries = bench.build_drivers({w.driver for w in workloads})

    jobs: Dict[Tuple[str, str], concurrent.futures.Future] = {}
    with tempfile.TemporaryDirectory() as tmp, \
            concurrent.futures.ThreadPoolExecutor(max(1, opts.jobs)) as pool:
        for w in workloads:
            args = scaled_args(w, opts.scale)
            for c in cands:
                if not w.runs_under(c.name):
                    continue
                jobs[w.name, c.name] = pool.submit(run, binaries[w.driver], args, c, tmp)
        results = {k: f.result() for k, f in jobs.items()}

    m = 1e6
    print(f"callgrind --cache-sim=yes, quick arguments / {opts.scale}, 2 threads; millions")
    print("                                 whole program                         outside the driver")
    print(f"{'workload':<14} {'allocator':<11} {'Ir':>9} {'D1mr':>7} {'D1mw':>7} {'DLm':>7}   "
          f"{'Ir':>9} {'D1mr':>7}")
    for w in workloads:
        for c in cands:
            r = results.get((w.name, c.name))
            if r is None:
                continue
            print(f"{w.name:<14} {c.name:<11} {r['Ir'] / m:9.2f} {r['D1mr'] / m:7.3f} "
                  f"{r['D1mw'] / m:7.3f} {(r['DLmr'] + r['DLmw']) / m:7.3f}   "
                  f"{r['out_Ir'] / m:9.2f} {r['out_D1mr'] / m:7.3f}")
        print(f"  ({w.driver} {' '.join(scaled_args(w, opts.scale))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
