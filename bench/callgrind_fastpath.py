#!/usr/bin/env python3
"""Instructions per malloc+free pair, counted with callgrind, per allocator.

For each allocator (glibc without preload; pygomalloc, jemalloc, tcmalloc,
mimalloc through LD_PRELOAD), each size and each order (lifo/fifo, see
bench/drivers/fastpath.c), the fastpath driver runs under
``valgrind --tool=callgrind`` at two iteration counts N1 < N2, and the table
shows

    (Ir(N2) - Ir(N1)) / (N2 - N1)

so that everything that does not depend on the iteration count (process
start-up, the dynamic loader, allocator initialisation, the first refills)
cancels out.  What remains is the steady-state cost of one loop iteration:
one malloc, one free, and the driver's loop around them.  The profile also
gives the instructions spent in the driver's own ``main`` (the loop, the call
sites, the byte written and read back), so a second table shows the
allocator's share alone: the iteration minus main (malloc, free, the PLT
stubs and whatever they call).  Instruction counts are repeatable where times
on a shared machine are not.

A further column, ``pygomalloc-linked``, is the same driver source built
against pygomalloc's public API instead (``-include gomalloc.h
-Dmalloc=gm_malloc -Dfree=gm_free``: the loop calls gm_malloc and gm_free)
and linked to ``libgomalloc.so`` with an rpath, run without LD_PRELOAD: the
same pair of calls through the linked library, next to the preloaded one
(whose malloc and free are the preload shim's, calling into the same
library).  The check that it really ran pygomalloc: gm_malloc's code must
show in its profile.

Allocator discovery (including pygomalloc's preload library: --pygomalloc-lib,
$GOMALLOC_PRELOAD_LIB, pygomalloc.get_preload_library(), csrc/build/) is the
runner's, src/pygomalloc/_bench.py, loaded from the source tree by path;
``libgomalloc.so`` is the one next to that preload library, and
``gomalloc.h`` the one that came with it (the package's ``include/``, or
``csrc/`` for ``csrc/build/``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import callgrind_profile  # bench/callgrind_profile.py
from runner import bench  # bench/runner.py


def callgrind_run(binary: Path, args: List[str], cand, tmpdir: str,
                  require: Optional[str] = None) -> Tuple[int, int]:
    """(total Ir, Ir in the driver's own main) for ``binary args`` under ``cand``.

    With ``require``, some function whose name starts with it must have run
    (RuntimeError otherwise)."""
    prof = callgrind_profile.run_driver(binary, args, cand.name, bench.candidate_env(cand), tmpdir,
                                        preload=cand.preload)
    total, self_ir = prof.total("Ir"), prof.by_function("Ir")
    if require is not None and not any(f.startswith(require) and ir > 0
                                       for f, ir in self_ir.items()):
        raise RuntimeError(f"{' '.join(args)} under {cand.name}: no {require}* in the "
                           "profile, so the allocator under test did not run")
    return total, self_ir.get("main", 0)


def per_iteration(binary: Path, size: int, order: str, iters: Tuple[int, int], cand,
                  tmpdir: str, require: Optional[str] = None) -> Tuple[float, float]:
    """(Ir per iteration, of which in the driver's main) from two run lengths."""
    n1, n2 = iters
    t1, m1 = callgrind_run(binary, [str(size), str(n1), order], cand, tmpdir, require)
    t2, m2 = callgrind_run(binary, [str(size), str(n2), order], cand, tmpdir, require)
    return (t2 - t1) / (n2 - n1), (m2 - m1) / (n2 - n1)


#: The column of the fastpath driver linked to libgomalloc.so (no preload).
LINKED = "pygomalloc-linked"


def find_linked(explicit: Optional[str]) -> Tuple[Optional[Path], Optional[Path], str]:
    """(libgomalloc.so, the directory of its gomalloc.h, how found), found
    next to pygomalloc's preload library; (None, None, why) if missing."""
    preload, how = bench.find_pygomalloc_lib(explicit)
    if preload is None:
        return None, None, how
    lib = preload.parent / "libgomalloc.so"
    if not lib.is_file():
        return None, None, f"no libgomalloc.so next to {preload}"
    # The package keeps the header in include/ beside _lib/; a source
    # checkout in csrc/ above csrc/build/.
    for inc in (preload.parent.parent / "include", preload.parent.parent):
        if (inc / "gomalloc.h").is_file():
            return lib, inc, how
    return None, None, f"no gomalloc.h found for {lib}"


def build_linked(lib: Path, include: Path, out_dir: str) -> Path:
    """The fastpath driver calling gm_malloc/gm_free, linked to ``lib``.

    The driver's own source with malloc and free renamed by the
    preprocessor (it calls nothing else that allocates); _POSIX_C_SOURCE
    is set on the command line because gomalloc.h, included first, brings
    in the C library's feature selection before bench_common.h can."""
    src_dir = bench.driver_source_dir()
    out = Path(out_dir) / "fastpath-linked"
    cc = os.environ.get("CC") or "cc"
    cmd = [cc, *bench.CFLAGS, "-D_POSIX_C_SOURCE=200809L", "-I", str(src_dir),
           "-I", str(include), "-include", "gomalloc.h",
           "-Dmalloc=gm_malloc", "-Dfree=gm_free",
           "-o", str(out), str(src_dir / "fastpath.c"),
           f"-L{lib.parent}", f"-Wl,-rpath,{lib.parent}", "-lgomalloc"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the linked fastpath driver failed:\n{' '.join(cmd)}\n"
                           f"{proc.stderr}")
    if proc.stderr.strip():
        print(f"callgrind_fastpath: compiler warnings for the linked driver:\n"
              f"{proc.stderr.rstrip()}", file=sys.stderr)
    return out


def _ints(s: str) -> List[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _names(s: str) -> List[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _columns(names) -> List[str]:
    """The runner's allocator names with the linked column after pygomalloc."""
    out: List[str] = []
    for n in names:
        out.append(n)
        if n == "pygomalloc":
            out.append(LINKED)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=_ints, default=[16, 64, 256, 1024, 4096],
                   help="object sizes in bytes (default 16,64,256,1024,4096)")
    p.add_argument("--orders", type=_names, default=["lifo", "fifo"],
                   help="free orders: lifo, fifo (default both)")
    p.add_argument("--iters", type=_ints, default=[200000, 400000],
                   help="the two iteration counts N1,N2 (default 200000,400000)")
    p.add_argument("--allocators", type=_names,
                   help="allocators (default all found: %s)"
                        % ",".join(_columns(bench.ALLOCATORS)))
    p.add_argument("--pygomalloc-lib", metavar="PATH", help="pygomalloc's preload library")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="valgrind runs in parallel (default: number of CPUs)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    opts = p.parse_args(argv)

    if len(opts.iters) != 2 or not 0 < opts.iters[0] < opts.iters[1]:
        p.error("--iters needs two counts N1,N2 with 0 < N1 < N2")
    bad = [o for o in opts.orders if o not in ("lifo", "fifo")]
    if bad:
        p.error(f"unknown order(s) {bad}: use lifo, fifo")
    if not callgrind_profile.have_valgrind("callgrind_fastpath"):
        return 2
    strict = bool(opts.allocators)
    want_linked = not strict or LINKED in opts.allocators
    preloaded = [n for n in opts.allocators if n != LINKED] if strict else None
    cands: List = []
    skipped: List[str] = []
    if preloaded is None or preloaded:
        try:
            cands, skipped = bench.discover_candidates(preloaded, opts.pygomalloc_lib,
                                                       strict=strict)
        except (ValueError, LookupError) as exc:  # unknown, or named and not available
            p.error(str(exc.args[0]))
    linked = None
    if want_linked:
        lib, include, how = find_linked(opts.pygomalloc_lib)
        if lib is None:
            if strict:
                p.error(f"allocator {LINKED}: {how}")
            skipped.append(f"{LINKED}: skipped, {how}")
        else:
            linked = bench.Candidate(LINKED, None, f"{lib} (linked; {how})")
    for s in skipped:
        print(f"callgrind_fastpath: {s}", file=sys.stderr)
    # The linked column goes next to the preloaded pygomalloc (or last).
    if linked is not None:
        at = next((i + 1 for i, c in enumerate(cands) if c.name == "pygomalloc"), len(cands))
        cands.insert(at, linked)
    if not cands:
        return 2
    binary = bench.build_drivers(["fastpath"])["fastpath"]
    iters = (opts.iters[0], opts.iters[1])

    jobs = {}
    failures: Dict[Tuple[str, int, str], str] = {}
    results: Dict[Tuple[str, int, str], Tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="callgrind-fastpath-") as tmpdir, \
            concurrent.futures.ThreadPoolExecutor(max(1, opts.jobs)) as pool:
        binaries = {c.name: binary for c in cands}
        if linked is not None:
            try:
                binaries[LINKED] = build_linked(lib, include, tmpdir)
            except RuntimeError as exc:
                print(f"callgrind_fastpath: {exc}", file=sys.stderr)
                return 2
        for c in cands:
            require = "gm_malloc" if c.name == LINKED else None
            for size in opts.sizes:
                for order in opts.orders:
                    jobs[pool.submit(per_iteration, binaries[c.name], size, order, iters, c,
                                     tmpdir, require)] = (c.name, size, order)
        for fut in concurrent.futures.as_completed(jobs):
            key = jobs[fut]
            try:
                results[key] = fut.result()
            except RuntimeError as exc:
                failures[key] = str(exc)

    names = [c.name for c in cands]
    print(f"callgrind instruction counts per iteration, "
          f"(Ir({iters[1]}) - Ir({iters[0]})) / {iters[1] - iters[0]}")
    tables = (
        ("whole iteration: malloc + free + the driver's loop", lambda v: v[0]),
        ("malloc + free alone: the iteration minus the driver's main", lambda v: v[0] - v[1]),
    )
    for title, pick in tables:
        print()
        print(title)
        rows = [["size", "order", *names]]
        for size in opts.sizes:
            for order in opts.orders:
                row = [str(size), order]
                for n in names:
                    v = results.get((n, size, order))
                    row.append(f"{pick(v):.1f}" if v is not None else "FAILED")
                rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for i, r in enumerate(rows):
            print("  ".join(c.rjust(widths[j]) for j, c in enumerate(r)))
            if i == 0:
                print("  ".join("-" * w for w in widths))
    mains = sorted({round(v[1], 1) for v in results.values()})
    if mains:
        print(f"\n(the driver's main: {', '.join(f'{m:g}' for m in mains)} "
              "instructions per iteration)")
    for (n, size, order), msg in sorted(failures.items()):
        print(f"FAILED {n} size {size} {order}: {msg}")
    if opts.json:
        doc = {
            "iters": list(iters),
            "allocators": {c.name: c.preload for c in cands},
            "linked": ({"library": str(lib), "include": str(include)}
                       if linked is not None else None),
            "results": [{"allocator": n, "size": s, "order": o, "ir_per_iteration": v[0],
                         "ir_in_driver_main": v[1], "ir_per_pair": v[0] - v[1]}
                        for (n, s, o), v in sorted(results.items())],
            "failures": [{"allocator": n, "size": s, "order": o, "error": m}
                         for (n, s, o), m in sorted(failures.items())],
        }
        with open(opts.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
