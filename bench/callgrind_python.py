#!/usr/bin/env python3
"""Where the interpreter's allocation time goes: callgrind instruction
counts of Python workloads under each allocator configuration.

    python bench/callgrind_python.py [--python PY] [--workloads a,b] [--top 12]

Configurations (the same interpreter, fresh processes):

* ``pymalloc``: CPython's default;
* ``install()``: ``pygomalloc.install()`` (obj and mem domains through the
  wrapper in the cffi module);
* ``preload``: ``PYTHONMALLOC=malloc`` with pygomalloc's ``LD_PRELOAD``
  library;
* ``glibc``: ``PYTHONMALLOC=malloc``.

Each workload runs at two sizes N1 < N2 and every figure is the difference
divided by N2 - N1 (per item of the workload), so that start-up, imports
and first refills cancel.  For each configuration the table gives the
instructions per item, of which in the allocator (pymalloc's obmalloc.c,
glibc's malloc, or libgomalloc.so, the preload shim and the wrapper's
``pgm_py_*``: whatever runs between the interpreter's ``PyObject_Malloc``
and friends and their return), the calls per item to the domain entry
points (``PyObject_Malloc/Calloc/Realloc/Free``, ``PyMem_*``,
``PyMem_Raw*``), and the allocator's instructions per call.  Then, per
configuration, the allocator functions that cost most (self instructions
per item).  Which TLS variant of the fast paths ran (``gm_malloc_fixed``
or ``gm_malloc_desc``) shows in those function names.

memset/memcpy are counted apart (calloc's zeroing and realloc's copy land
there under every allocator, and so does the interpreter's own copying).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from typing import Dict, List, Tuple

import callgrind_profile  # bench/callgrind_profile.py

WORKLOADS: Dict[str, Tuple[str, Tuple[int, int]]] = {
    # A big dict of small containers built and dropped: the flush of many
    # frees back to their spans.
    "dict_objects": (r"""
for _ in range(3):
    d = {}
    for i in range(N):
        d[i] = [str(i), (i, i + 1), {"k": i}]
    del d
""", (5000, 15000)),
    # Objects that die at once: every malloc pops what the last free pushed.
    "short_lived": (r"""
acc = 0
for i in range(N):
    t = (i, i + 1.5, str(i))
    l = [x for x in t]
    d = {"a": l, "b": t}
    acc += len(d) + len(l[2])
""", (20000, 60000)),
    # Growing containers: list append, str and bytes concatenation, dict
    # growth (reallocs of PyMem and PyObject blocks).
    "growth": (r"""
for i in range(N):
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
""", (2000, 6000)),
    # json round trips and str methods: large strings built by writers
    # that grow them by reallocs.
    "strings_json": (r"""
import json
DOC = {"users": [{"id": i, "name": f"user{i}", "tags": ["a", "b", str(i)],
                  "score": i * 0.5, "meta": {"x": i, "y": [i, i + 1]}} for i in range(500)]}
for _ in range(N):
    s = json.dumps(DOC)
    d = json.loads(s)
    words = s.replace(",", " ").split()
    n = len(d["users"]) + len(words) + len(" ".join(w.upper() for w in words[:200]))
""", (5, 15)),
}

PRELUDE = r"""
import sys
N = int(sys.argv[2])
import pygomalloc
if sys.argv[1] == "install":
    pygomalloc.install()
"""

ENTRY = re.compile(r"^(PyObject_(Malloc|Calloc|Realloc|Free)|PyMem_(Raw)?(Malloc|Calloc|Realloc|Free))$")


def parse(path: str) -> Tuple[int, Dict[Tuple[str, str, str], int], Dict[str, int]]:
    """(total Ir, self Ir per (object, file, function), calls per callee name)
    (bench/callgrind_profile.py reads the file)."""
    prof = callgrind_profile.parse(path)
    i = prof.events.index("Ir")
    return prof.total("Ir"), {k: v[i] for k, v in prof.self_cost.items()}, prof.calls


def category(ob: str, fl: str, fn: str) -> str:
    base = os.path.basename(ob)
    if fn.startswith(("__memset", "__memcpy", "__memmove", "memset", "memcpy", "memmove")):
        return "mem*"
    if "libgomalloc" in base or fn.startswith("pgm_py_"):
        return "alloc"
    if fl.endswith("obmalloc.c"):
        return "alloc"
    if base.startswith("libc.so") and ("/malloc/" in fl or fn in (
            "malloc", "free", "calloc", "realloc", "_int_malloc", "_int_free", "cfree",
            "malloc_consolidate", "_int_realloc", "tcache_init", "sysmalloc")):
        return "alloc"
    return "other"


def run(py: str, script: str, mode: str, n: int, env: Dict[str, str], tmp: str):
    out = os.path.join(tmp, f"cg.{mode}.{n}.{os.getpid()}")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", py, "-c", script, mode, str(n)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{mode} {n} failed:\n{p.stderr[-2000:]}")
    try:
        return parse(out)
    finally:
        os.unlink(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable, help="the interpreter (default: this one)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--configs", default="pymalloc,install(),preload,glibc")
    ap.add_argument("--top", type=int, default=10, help="allocator functions shown per configuration")
    opts = ap.parse_args()
    pre = subprocess.run([opts.python, "-c", "import pygomalloc; print(pygomalloc.get_preload_library())"],
                         capture_output=True, text=True, check=True).stdout.strip()
    # A fixed hash seed: str hashing decides dict probe lengths, which move
    # the counts by several percent from run to run otherwise.
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONMALLOC")}
    base["PYTHONHASHSEED"] = "0"
    configs = {
        "pymalloc": ("plain", {}),
        "install()": ("install", {}),
        "preload": ("plain", {"PYTHONMALLOC": "malloc", "LD_PRELOAD": pre}),
        "glibc": ("plain", {"PYTHONMALLOC": "malloc"}),
    }
    chosen = [c for c in opts.configs.split(",") if c]
    print(f"python: {opts.python}")
    with tempfile.TemporaryDirectory() as tmp:
        for wname in opts.workloads.split(","):
            body, (n1, n2) = WORKLOADS[wname]
            script = PRELUDE + body
            rows = []
            tops: Dict[str, List[Tuple[float, str]]] = {}
            for cname in chosen:
                mode, extra = configs[cname]
                env = {**base, **extra}
                t1, s1, c1 = run(opts.python, script, mode, n1, env, tmp)
                t2, s2, c2 = run(opts.python, script, mode, n2, env, tmp)
                d = n2 - n1
                per = defaultdict(float)
                funcs = defaultdict(float)
                for key in set(s1) | set(s2):
                    v = (s2.get(key, 0) - s1.get(key, 0)) / d
                    cat = category(*key)
                    per[cat] += v
                    if cat == "alloc":
                        funcs[f"{key[2]} [{os.path.basename(key[0])}]"] += v
                ncalls = sum((c2.get(f, 0) - c1.get(f, 0)) for f in set(c1) | set(c2) if ENTRY.match(f)) / d
                rows.append((cname, (t2 - t1) / d, per["alloc"], per["mem*"], ncalls))
                tops[cname] = sorted(((v, f) for f, v in funcs.items()), reverse=True)[:opts.top]
            ref = rows[0][1]
            print(f"\n{wname}: N = {n1} and {n2}; per item (Ir / item)")
            print(f"{'config':<10} {'total':>9} {'vs first':>8} {'allocator':>9} {'mem*':>7} "
                  f"{'calls':>6} {'alloc Ir/call':>13}")
            for cname, tot, al, mem, nc in rows:
                print(f"{cname:<10} {tot:9.0f} {tot / ref:8.3f} {al:9.0f} {mem:7.0f} {nc:6.1f} "
                      f"{(al / nc if nc else 0):13.1f}")
            for cname, top in tops.items():
                print(f"  {cname}: " + ", ".join(f"{f.split(' [')[0]} {v:.0f}" for v, f in top if v >= 0.5))
    return 0


if __name__ == "__main__":
    sys.exit(main())
