"""Python's own allocations on pygomalloc: a dict-and-list workload run by
the interpreter under each allocator configuration, alternating, in fresh
processes.

    python bench/python_objects.py [--runs 5] [--items 200000]

Configurations:

* ``pymalloc``: CPython's default (pymalloc for objects up to 512 B, glibc
  malloc above);
* ``install()``: ``pygomalloc.install()`` at start, so PyMem_Malloc and
  PyObject_Malloc go through pygomalloc's wrapper (blocks made before keep
  their allocator);
* ``glibc``: ``PYTHONMALLOC=malloc``, every allocation to glibc malloc;
* ``LD_PRELOAD``: ``PYTHONMALLOC=malloc`` with pygomalloc's preload library,
  every allocation to pygomalloc's malloc, no wrapper.

Prints the median time of each and its ratio to pymalloc.  Nothing is
asserted: figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKLOAD = r"""
import json, sys, time
items = int(sys.argv[2])
if sys.argv[1] == "install":
    import pygomalloc
    pygomalloc.install()
t = time.perf_counter()
for _ in range(5):
    d = {}
    for i in range(items):
        d[i] = [str(i), (i, i + 1), {"k": i}]
    del d
print(json.dumps(time.perf_counter() - t))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="runs of each configuration (default 5)")
    p.add_argument("--items", type=int, default=200_000, help="dict entries per round (default 200000)")
    opts = p.parse_args()
    import pygomalloc

    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONMALLOC")}
    configs = {
        "pymalloc": ("plain", {}),
        "install()": ("install", {}),
        "glibc": ("plain", {"PYTHONMALLOC": "malloc"}),
        "LD_PRELOAD": ("plain", {"PYTHONMALLOC": "malloc",
                                 "LD_PRELOAD": pygomalloc.get_preload_library()}),
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(opts.runs):
        for name, (mode, env) in configs.items():
            out = subprocess.run([sys.executable, "-c", WORKLOAD, mode, str(opts.items)],
                                 env={**base, **env}, capture_output=True, text=True, check=True)
            times[name].append(json.loads(out.stdout))
    ref = statistics.median(times["pymalloc"])
    print(f"python_objects: {opts.items} dict entries x 5 rounds, {opts.runs} runs each, alternating")
    print(f"{'configuration':<14} {'median s':>9} {'vs pymalloc':>12}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:<14} {m:9.3f} {m / ref:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
