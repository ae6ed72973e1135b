"""The Python-object group of ``python -m pygomalloc bench``: the
interpreter's own allocations under each way of running it.

    python -m pygomalloc bench python [--rounds 10] [--workloads a,b] [--json F]

Every run is a fresh interpreter (this one, ``sys.executable``) running one
workload script, which times its own loop (``time.perf_counter``, start-up
and imports excluded) and reports its peak RSS (``VmHWM``, the high-water
mark of its own address space since exec).  Configurations:

* ``pymalloc``: CPython's default (pymalloc up to 512 bytes, then glibc);
* ``install()``: ``pygomalloc.install()`` first thing in the script (the
  obj and mem domains; what was allocated before keeps its allocator);
* ``preload``: ``PYTHONMALLOC=malloc`` and pygomalloc's ``LD_PRELOAD``
  library: every allocation of the process to pygomalloc's malloc;
* ``glibc``: ``PYTHONMALLOC=malloc``, every allocation to glibc;
* ``mimalloc``, ``jemalloc``: ``PYTHONMALLOC=malloc`` and the Debian
  package's library preloaded, where installed.

Every script imports pygomalloc, whatever the configuration, so that all
do the same imports.  A round runs every workload under every configuration
once, in an order rotated from round to round; rounds repeat (``--rounds``).
Each configuration's figure for a workload is the median over rounds of
its time divided by pymalloc's time *in the same round* (runs next to each
other share the machine's state of the moment), shown with the
interquartile range of those per-round ratios: a difference is only
claimed (``faster``/``slower``) when that range excludes 1.  The row
``geomean`` is the geometric mean over the workloads, computed per round,
with its own range; ``geomean-med`` is the geometric mean of the
workloads' medians, the cells above it (the two differ when the rounds are
uneven).  Peak RSS: median over rounds, relative to pymalloc's.
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
from typing import Dict, List, Optional, Sequence, Tuple

# Each workload: the body of a script that sets `work()`; the prelude
# imports pygomalloc (installing it in the install() configuration), the
# epilogue times work() and prints the seconds and VmHWM as JSON.
PRELUDE = r"""
import sys, time, json
import pygomalloc
if sys.argv[1] == "install":
    pygomalloc.install()
"""

EPILOGUE = r"""
t = time.perf_counter()
check = work()
t = time.perf_counter() - t
hwm = 0
with open("/proc/self/status") as f:
    for line in f:
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
print(json.dumps({"seconds": t, "hwm_kib": hwm, "check": check}))
"""

WORKLOADS: Dict[str, Tuple[str, str]] = {
    "dict_objects": (
        "a dict of 200,000 entries, each a list, a tuple, a str and a small dict, "
        "built and dropped 5 times (bench/python_objects.py)",
        r"""
def work():
    n = 0
    for _ in range(5):
        d = {}
        for i in range(200_000):
            d[i] = [str(i), (i, i + 1), {"k": i}]
        n += len(d)
        del d
    return n
"""),
    "short_lived": (
        "tuples, floats, strs, lists and dicts that die at once (600,000 rounds)",
        r"""
def work():
    acc = 0
    for i in range(600_000):
        t = (i, i + 1.5, str(i))
        l = [x for x in t]
        d = {"a": l, "b": t}
        acc += len(d) + len(l[2])
    return acc
"""),
    "growth": (
        "growing lists, strs, bytearrays and dicts (reallocs), 40,000 rounds",
        r"""
def work():
    n = 0
    for i in range(40_000):
        l = []
        for j in range(40):
            l.append(j)
        s = ""
        for j in range(30):
            s += "ab"
        b = bytearray()
        for j in range(30):
            b += b"xyz"
        d = {j: j for j in range(12)}
        n += len(l) + len(s) + len(b) + len(d)
    return n
"""),
    "trees": (
        "binary trees of class instances (depth 16, 10 times), a long-lived tree beside",
        r"""
class Node:
    __slots__ = ("left", "right")
    def __init__(self, left, right):
        self.left = left
        self.right = right

def make(depth):
    if depth == 0:
        return Node(None, None)
    return Node(make(depth - 1), make(depth - 1))

def count(node):
    return 1 if node.left is None else 1 + count(node.left) + count(node.right)

def work():
    keep = make(14)
    n = 0
    for _ in range(10):
        n += count(make(16))
    return n + count(keep)
"""),
    "strings_json": (
        "json round trips and str methods on a nested document (300 times)",
        r"""
import json
DOC = {"users": [{"id": i, "name": f"user{i}", "tags": ["a", "b", str(i)],
                  "score": i * 0.5, "meta": {"x": i, "y": [i, i + 1]}} for i in range(500)]}

def work():
    n = 0
    for _ in range(300):
        s = json.dumps(DOC)
        d = json.loads(s)
        words = s.replace(",", " ").split()
        n += len(d["users"]) + len(words) + len(" ".join(w.upper() for w in words[:200]))
    return n
"""),
}

#: Peers preloaded under PYTHONMALLOC=malloc, where the Debian package is installed.
PEERS = ("mimalloc", "jemalloc")
CONFIGS = ("pymalloc", "install()", "preload", "glibc", *PEERS)


def _load_runner():
    """The C runner's module (for the peers' libraries and pygomalloc's
    preload library), loaded by path as this module may be."""
    import importlib.util

    if "_pygomalloc_bench" in sys.modules:
        return sys.modules["_pygomalloc_bench"]
    try:
        from pygomalloc import _bench  # type: ignore[import-not-found]

        return _bench
    except ImportError:
        path = Path(__file__).resolve().parent / "_bench.py"
        spec = importlib.util.spec_from_file_location("_pygomalloc_bench", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        return mod


def config_envs(selected: Optional[Sequence[str]], python: str
                ) -> Tuple[Dict[str, Tuple[str, Dict[str, str]]], List[str]]:
    """name -> (script mode, environment) for the configurations that can
    run here, and notes on those skipped."""
    bench = _load_runner()
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONMALLOC")}
    out: Dict[str, Tuple[str, Dict[str, str]]] = {}
    skipped: List[str] = []
    for name in selected or CONFIGS:
        if name == "pymalloc":
            out[name] = ("plain", dict(base))
        elif name == "install()":
            out[name] = ("install", dict(base))
        elif name == "glibc":
            out[name] = ("plain", {**base, "PYTHONMALLOC": "malloc"})
        elif name == "preload":
            lib = subprocess.run([python, "-c", "import pygomalloc; print(pygomalloc.get_preload_library())"],
                                 capture_output=True, text=True)
            if lib.returncode != 0 or not lib.stdout.strip():
                skipped.append(f"preload: pygomalloc does not import under {python}")
                continue
            out[name] = ("plain", {**base, "PYTHONMALLOC": "malloc", "LD_PRELOAD": lib.stdout.strip()})
        elif name in PEERS:
            lib = bench.find_peer_library(name)
            if lib is None:
                skipped.append(f"{name}: not installed (apt-get install {bench.PEERS[name][0]})")
                continue
            out[name] = ("plain", {**base, "PYTHONMALLOC": "malloc", "LD_PRELOAD": str(lib)})
        else:
            raise ValueError(f"unknown configuration {name!r}: choose from {', '.join(CONFIGS)}")
    if "pymalloc" not in out:
        raise ValueError("the pymalloc configuration is the reference: it cannot be left out")
    return out, skipped


def run_one(python: str, workload: str, mode: str, env: Dict[str, str], timeout: float) -> dict:
    script = PRELUDE + WORKLOADS[workload][1] + EPILOGUE
    p = subprocess.run([python, "-c", script, mode], env=env, capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{workload} ({mode}) failed with status {p.returncode}: {p.stderr[-800:]}")
    if "cannot be preloaded" in p.stderr:
        raise RuntimeError(f"{workload}: LD_PRELOAD failed: {p.stderr[-300:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def quartiles(xs: Sequence[float]) -> Tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def verdict(lo: float, hi: float) -> str:
    if hi < 1.0:
        return "faster"
    if lo > 1.0:
        return "slower"
    return "same"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pygomalloc bench python",
        description="The interpreter's own objects under pymalloc, pygomalloc.install(), "
                    "pygomalloc preloaded, glibc and the peers (PYTHONMALLOC=malloc), "
                    "alternating, with the spread of the ratios.")
    p.add_argument("--rounds", type=int, default=10, help="rounds (default 10)")
    p.add_argument("--workloads", help="comma-separated (default all: %s)" % ",".join(WORKLOADS))
    p.add_argument("--configs", help="comma-separated (default all found: %s)" % ",".join(CONFIGS))
    p.add_argument("--python", default=sys.executable, help="the interpreter (default: this one)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per run (default 300)")
    p.add_argument("--json", metavar="FILE", help="also write every run as JSON")
    p.add_argument("--list", action="store_true", help="list workloads and configurations")
    p.add_argument("-q", "--quiet", action="store_true")
    opts = p.parse_args(argv)
    workloads = opts.workloads.split(",") if opts.workloads else list(WORKLOADS)
    for w in workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}: choose from {', '.join(WORKLOADS)}")
    try:
        configs, skipped = config_envs(opts.configs.split(",") if opts.configs else None, opts.python)
    except ValueError as exc:
        p.error(str(exc))
    if opts.list:
        for w, (doc, _) in WORKLOADS.items():
            print(f"  {w:<14} {doc}")
        for c, (_, env) in configs.items():
            print(f"  {c:<14} PYTHONMALLOC={env.get('PYTHONMALLOC', '')} LD_PRELOAD={env.get('LD_PRELOAD', '')}")
        for s in skipped:
            print(f"  skipped: {s}")
        return 0
    if opts.rounds < 1:
        p.error("--rounds must be at least 1")
    names = list(configs)
    runs: Dict[str, Dict[str, List[dict]]] = {w: {c: [] for c in names} for w in workloads}
    t0 = time.perf_counter()
    for r in range(opts.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for w in workloads:
            for c in order:
                mode, env = configs[c]
                runs[w][c].append(run_one(opts.python, w, mode, env, opts.timeout))
        if not opts.quiet:
            print(f"round {r + 1}/{opts.rounds} done ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    for w in workloads:  # every configuration computed the same thing
        checks = {c: {x["check"] for x in runs[w][c]} for c in names}
        if len({v for s in checks.values() for v in s}) != 1:
            print(f"FAILED {w}: results differ between configurations: {checks}")
            return 1

    def ratios(w: str, c: str, key: str) -> List[float]:
        return [a[key] / b[key] for a, b in zip(runs[w][c], runs[w]["pymalloc"])]

    print(f"pygomalloc bench python: {opts.rounds} rounds, {time.perf_counter() - t0:.0f} s; "
          f"python {opts.python} ({sys.version.split()[0] if opts.python == sys.executable else 'see path'})")
    for s in skipped:
        print(f"skipped:    {s}")
    print("cells: time / pymalloc's in the same round, median [interquartile range] over rounds, "
          "and the verdict; then peak RSS / pymalloc's (median)")
    head = f"{'workload':<14} {'pymalloc s':>10} {'MiB':>6}"
    for c in names[1:]:
        head += f"  {c:>28}"
    print(head)
    geo_rounds: Dict[str, List[float]] = {c: [0.0] * opts.rounds for c in names}
    geo_medians: Dict[str, float] = {c: 0.0 for c in names}
    geo_rss: Dict[str, float] = {c: 0.0 for c in names}
    doc: Dict[str, object] = {"python": opts.python, "rounds": opts.rounds, "workloads": {}}
    for w in workloads:
        base_t = statistics.median(x["seconds"] for x in runs[w]["pymalloc"])
        base_m = statistics.median(x["hwm_kib"] for x in runs[w]["pymalloc"]) / 1024
        line = f"{w:<14} {base_t:10.3f} {base_m:6.0f}"
        entry: Dict[str, object] = {}
        for c in names:
            rt = ratios(w, c, "seconds")
            rm = statistics.median(ratios(w, c, "hwm_kib"))
            for i, x in enumerate(rt):
                geo_rounds[c][i] += math.log(x) / len(workloads)
            geo_rss[c] += math.log(rm) / len(workloads)
            lo, med, hi = quartiles(rt)
            geo_medians[c] += math.log(med) / len(workloads)
            entry[c] = {"seconds": [x["seconds"] for x in runs[w][c]],
                        "hwm_kib": [x["hwm_kib"] for x in runs[w][c]],
                        "time_ratio": [lo, med, hi], "rss_ratio": rm}
            if c != "pymalloc":
                line += f"  {med:5.3f} [{lo:5.3f},{hi:5.3f}] {verdict(lo, hi):>6} {rm:4.2f}"
        doc["workloads"][w] = entry  # type: ignore[index]
        print(line)
    line = f"{'geomean':<14} {'':>10} {'':>6}"
    for c in names[1:]:
        lo, med, hi = quartiles([math.exp(x) for x in geo_rounds[c]])
        doc.setdefault("geomean", {})[c] = {"time_ratio": [lo, med, hi], "rss_ratio": math.exp(geo_rss[c])}  # type: ignore[union-attr]
        line += f"  {med:5.3f} [{lo:5.3f},{hi:5.3f}] {verdict(lo, hi):>6} {math.exp(geo_rss[c]):4.2f}"
    print(line)
    line = f"{'geomean-med':<14} {'':>10} {'':>6}"
    for c in names[1:]:
        doc.setdefault("geomean_of_medians", {})[c] = math.exp(geo_medians[c])  # type: ignore[union-attr]
        line += f"  {math.exp(geo_medians[c]):5.3f}{'':>22}"
    print(line)
    if opts.json:
        with open(opts.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
