#!/usr/bin/env python3
"""A pyperformance subset under each way of running the interpreter.

    python bench/pyperformance_subset.py [--rounds 3] [--out DIR] [--benchmarks a,b]

Run it with the interpreter to measure, in a virtual environment that has
pygomalloc, pyperformance and pyperf installed (``pip install pyperformance
pyperf``, from PyPI).  The benchmarks are pyperformance's own scripts
(``pyperformance/data-files/benchmarks/bm_*/run_benchmark.py``), run
directly with pyperf (``--fast``: fewer worker processes) by this
interpreter, so that no benchmark environment is created and the
configurations differ in nothing but the allocator:

* ``pymalloc``: CPython's default;
* ``install``: ``pygomalloc.install()`` at start-up (a ``sitecustomize``
  that this script writes into ``DIR/site``, on ``PYTHONPATH`` in every
  configuration, installs when ``PGM_INSTALL=1``; every configuration
  imports pygomalloc there);
* ``preload``: ``PYTHONMALLOC=malloc`` and pygomalloc's ``LD_PRELOAD``
  library;
* ``glibc``: ``PYTHONMALLOC=malloc``;
* ``mimalloc``, ``jemalloc`` (only with ``--peers``): ``PYTHONMALLOC=malloc``
  and the Debian package's library preloaded.

The subset: benchmarks of the suite that need nothing beyond the standard
library and allocate a lot (``DEFAULT``).  A round runs every benchmark
under every configuration, the configurations' order rotated from round to
round; each run writes ``DIR/r<round>/<config>/<benchmark>.json``.  At the
end, the rounds of each configuration are merged into ``DIR/<config>.json``
and compared with ``python -m pyperf compare_to DIR/pymalloc.json ...
--table`` (pyperf's geometric mean and significance), and this script adds
the geometric mean of each round's ratios to pymalloc (median and range
over the rounds): its spread is what a claimed difference must exceed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: name -> (benchmark directory, extra arguments), as pyperformance's manifest has them.
DEFAULT = {
    "chaos": ("bm_chaos", []),
    "comprehensions": ("bm_comprehensions", []),
    "deepcopy": ("bm_deepcopy", []),
    "deltablue": ("bm_deltablue", []),
    "float": ("bm_float", []),
    "go": ("bm_go", []),
    "hexiom": ("bm_hexiom", []),
    "json_dumps": ("bm_json_dumps", []),
    "json_loads": ("bm_json_loads", []),
    "nqueens": ("bm_nqueens", []),
    "pyflate": ("bm_pyflate", []),
    "raytrace": ("bm_raytrace", []),
    "richards": ("bm_richards", []),
    "unpickle_pure_python": ("bm_pickle", ["--pure-python", "unpickle"]),
}

SITECUSTOMIZE = '''\
import os
import pygomalloc  # imported in every configuration: the same start-up
if os.environ.get("PGM_INSTALL") == "1":
    pygomalloc.install()
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="pyperf-results", help="results directory (default ./pyperf-results)")
    ap.add_argument("--benchmarks", help="comma-separated (default: %s)" % ",".join(DEFAULT))
    ap.add_argument("--peers", action="store_true", help="also mimalloc and jemalloc, where installed")
    ap.add_argument("--pyperf-args", default="--fast", help="arguments for each pyperf run (default --fast)")
    ap.add_argument("--report-only", action="store_true", help="only merge and compare the runs in --out")
    opts = ap.parse_args()

    import pyperformance  # noqa: F401  (fails early when not installed)
    import pygomalloc

    bmroot = Path(pyperformance.__file__).resolve().parent / "data-files" / "benchmarks"
    names = opts.benchmarks.split(",") if opts.benchmarks else list(DEFAULT)
    out = Path(opts.out).resolve()
    site = out / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONMALLOC", "PGM_INSTALL")}
    base["PYTHONPATH"] = str(site)
    configs = {
        "pymalloc": {},
        "install": {"PGM_INSTALL": "1"},
        "preload": {"PYTHONMALLOC": "malloc", "LD_PRELOAD": pygomalloc.get_preload_library()},
        "glibc": {"PYTHONMALLOC": "malloc"},
    }
    if opts.peers:
        for peer, lib in (("mimalloc", "libmimalloc.so.2"), ("jemalloc", "libjemalloc.so.2")):
            path = Path("/usr/lib/x86_64-linux-gnu") / lib
            if path.is_file():
                configs[peer] = {"PYTHONMALLOC": "malloc", "LD_PRELOAD": str(path)}
            else:
                print(f"skipped {peer}: {path} not installed", file=sys.stderr)
    inherit = "PYTHONPATH,PYTHONMALLOC,LD_PRELOAD,PGM_INSTALL"
    cnames = list(configs)
    t0 = time.perf_counter()
    if not opts.report_only:
        for r in range(opts.rounds):
            order = cnames[r % len(cnames):] + cnames[:r % len(cnames)]
            for b in names:
                bmdir, extra = DEFAULT[b]
                for c in order:
                    dest = out / f"r{r}" / c / f"{b}.json"
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if dest.exists():
                        dest.unlink()
                    cmd = [sys.executable, str(bmroot / bmdir / "run_benchmark.py"), *opts.pyperf_args.split(),
                           f"--inherit-environ={inherit}", "--quiet", "-o", str(dest), *extra]
                    p = subprocess.run(cmd, env={**base, **configs[c]}, capture_output=True, text=True)
                    if p.returncode != 0:
                        print(f"round {r} {b} {c} failed: {p.stderr[-800:]}", file=sys.stderr)
                        return 1
                print(f"round {r + 1}/{opts.rounds} {b} done ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr, flush=True)

    import pyperf

    # Merge the rounds of each configuration into one suite (a script may
    # hold several benchmarks: deepcopy has three).
    def load(f: Path) -> dict:
        return {b.get_name(): b for b in pyperf.BenchmarkSuite.load(str(f)).get_benchmarks()}

    for c in cnames:
        merged: dict = {}
        for b in names:
            for r in range(opts.rounds):
                f = out / f"r{r}" / c / f"{b}.json"
                if not f.exists():
                    continue
                for name, bench in load(f).items():
                    if name in merged:
                        merged[name].add_runs(bench)
                    else:
                        merged[name] = bench
        target = out / f"{c}.json"
        if target.exists():
            target.unlink()
        pyperf.BenchmarkSuite(list(merged.values())).dump(str(target))
    cmp = subprocess.run([sys.executable, "-m", "pyperf", "compare_to", *[str(out / f"{c}.json") for c in cnames],
                          "--table", "--table-format=md"], capture_output=True, text=True)
    print(cmp.stdout)
    if cmp.returncode != 0:
        print(cmp.stderr, file=sys.stderr)

    # The geometric mean of the ratios to pymalloc, per round.
    summary = {}
    print("geometric mean of time / pymalloc's, per round (median [min, max] over rounds):")
    for c in cnames[1:]:
        per_round = []
        for r in range(opts.rounds):
            logs = []
            for b in names:
                fa, fb = out / f"r{r}" / c / f"{b}.json", out / f"r{r}" / "pymalloc" / f"{b}.json"
                if fa.exists() and fb.exists():
                    ba, bb = load(fa), load(fb)
                    logs += [math.log(ba[n].mean() / bb[n].mean()) for n in ba if n in bb]
            if logs:
                per_round.append(math.exp(sum(logs) / len(logs)))
        if per_round:
            summary[c] = per_round
            print(f"  {c:<10} {statistics.median(per_round):.3f} [{min(per_round):.3f}, {max(per_round):.3f}]"
                  f"  rounds: {', '.join(f'{x:.3f}' for x in per_round)}")
    (out / "summary.json").write_text(json.dumps({"benchmarks": names, "geomean_per_round": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
