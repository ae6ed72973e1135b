"""The numpy row of ``python -m pygomalloc bench``: many temporary arrays.

Typical numerical code makes a temporary array for nearly every operation:
``x * 2.0 + 1.0`` makes two.  ``workload()`` runs such code over arrays of
mixed sizes (8 to 262144 elements, most of them small, most bytes in the
large ones): elementwise arithmetic, ufuncs, slicing, fancy indexing,
concatenation, reductions.  ``compare()`` times it under numpy's default
data allocator (the C library's malloc behind numpy's own cache of small
blocks) and under pygomalloc.numpy's, alternating in this one process, and
gives the medians and their ratio.  No speed is asserted anywhere.

    python -m pygomalloc._npbench [--rounds N] [--scale S] [--json]

exits 3 (saying so) when numpy is not installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

#: Array sizes (elements of float64) the workload cycles through: mostly
#: small, a few large (2 MiB).
SIZES = (8, 8, 16, 32, 64, 100, 128, 256, 500, 1000, 1000, 4096, 10000, 32768, 100000, 262144)


def make_inputs(np: Any) -> List[Any]:
    """The input arrays (made once, outside the timed region)."""
    rng = np.random.default_rng(1)
    return [rng.random(n) + 0.5 for n in SIZES]


def workload(np: Any, inputs: Sequence[Any], iters: int) -> float:
    """``iters`` passes over the inputs, every step making temporaries; returns a checksum."""
    total = 0.0
    idx_cache: Dict[int, Any] = {}
    for i in range(iters):
        x = inputs[i % len(inputs)]
        n = x.shape[0]
        y = x * 2.0 + 1.0                      # two temporaries
        z = np.sqrt(y * y + x) - x / y         # five more
        s = z[::2] - z[1::2] if n > 1 else z   # slices (views) and their difference
        idx = idx_cache.get(n)
        if idx is None:
            idx = idx_cache[n] = np.arange(0, n, 3)
        g = y[idx] * 0.5                       # fancy indexing: a copy, then a temporary
        c = np.concatenate([s, g, x[:4]])
        c.sort()
        w = np.where(c > 1.0, c, -c)           # a mask and a result
        total += float(w.sum()) + float(np.maximum(z, 1.0).mean())
    return total


def compare(rounds: int = 7, scale: float = 1.0,
            log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Alternate the two allocators ``rounds`` times (default, ours, ours,
    default, ...: the order flips every round); the medians, spreads and ratio."""
    import numpy as np

    from . import numpy as gnp

    inputs = make_inputs(np)
    iters = max(1, int(400 * scale))
    ours = gnp.handler()
    times: Dict[str, List[float]] = {"default": [], "pygomalloc": []}
    sums = set()
    workload(np, inputs, iters // 10)  # warm-up: numpy's caches, ours, the code
    with gnp.allocator():
        workload(np, inputs, iters // 10)
    for r in range(rounds):
        order = ("default", "pygomalloc") if r % 2 == 0 else ("pygomalloc", "default")
        for name in order:
            prev = gnp.set_handler(ours) if name == "pygomalloc" else None
            try:
                t0 = time.perf_counter()
                sums.add(round(workload(np, inputs, iters), 6))
                times[name].append(time.perf_counter() - t0)
            finally:
                if prev is not None:
                    gnp.set_handler(prev)
        if log:
            log(f"numpy round {r + 1}/{rounds}: default {times['default'][-1]:.3f} s, "
                f"pygomalloc {times['pygomalloc'][-1]:.3f} s")
    if len(sums) != 1:
        raise RuntimeError(f"the workload's checksum differs between runs: {sorted(sums)}")
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "numpy": np.__version__,
        "iters": iters,
        "rounds": rounds,
        "sizes": list(SIZES),
        "seconds": times,
        "median_seconds": med,
        "spread": {k: (max(v) - min(v)) / med[k] for k, v in times.items()},
        "ratio": med["pygomalloc"] / med["default"],
        "checksum": sums.pop(),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pygomalloc._npbench", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--scale", type=float, default=1.0, help="work per run (1.0: about 0.2-0.5 s here)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    opts = p.parse_args(argv)
    try:
        import numpy  # noqa: F401
    except ImportError:
        print("numpy is not installed (pip install 'pygomalloc[numpy]')", file=sys.stderr)
        return 3
    res = compare(opts.rounds, opts.scale, None if opts.json else print)
    if opts.json:
        print(json.dumps(res))
    else:
        print(f"numpy {res['numpy']}: default {res['median_seconds']['default']:.3f} s, "
              f"pygomalloc {res['median_seconds']['pygomalloc']:.3f} s, ratio {res['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
