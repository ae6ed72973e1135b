"""The tiny allocator's trade: memory against time, for objects of 1 to 8 bytes.

    python bench/tiny_objects.py [--count 1000000]

Compiles a small C program against pygomalloc's plain library (cc), which
keeps COUNT objects of one size alive, five times over, and runs it with the
option ``tiny`` off and on (GOMALLOC_TINY), alternating, three runs each.
Prints heap_inuse at the end (the objects plus the 8-byte-per-object array
holding them) and the time per malloc+free.  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "gomalloc.h"
int main(int argc, char **argv) {
    size_t n = (size_t)atol(argv[1]), size = (size_t)atol(argv[2]);
    void **v = gm_malloc(n * sizeof *v);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int r = 0; r < 5; r++) {
        for (size_t i = 0; i < n; i++)
            if ((v[i] = gm_malloc(size)) == NULL)
                return 1;
        if (r < 4)
            for (size_t i = 0; i < n; i++)
                gm_free(v[i]);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    struct gm_stats st = {.size = sizeof st};
    gm_read_stats(&st);
    printf("inuse=%llu ns=%.2f\n", (unsigned long long)st.heap_inuse,
           ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / (5.0 * n));
    return 0;
}
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1_000_000, help="objects kept alive (default 1000000)")
    p.add_argument("--runs", type=int, default=3, help="runs per configuration (default 3)")
    opts = p.parse_args()
    import pygomalloc

    lib = Path(pygomalloc.get_library())
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "tiny.c", Path(tmp) / "tiny"
        src.write_text(PROGRAM)
        subprocess.run([os.environ.get("CC", "cc"), "-O2", "-I", pygomalloc.get_include(), str(src),
                        str(lib), f"-Wl,-rpath,{lib.parent}", "-o", str(exe)], check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOMALLOC_")}
        print(f"tiny_objects: {opts.count} objects alive, 5 rounds, {opts.runs} runs each, medians")
        print(f"{'size':>4}  {'heap_inuse off':>14}  {'on':>9}  {'ns/pair off':>11}  {'on':>6}")
        for size in (1, 2, 4, 8):
            res: dict[str, list[tuple[int, float]]] = {"0": [], "1": []}
            for _ in range(opts.runs):
                for tiny in ("0", "1"):
                    out = subprocess.run([str(exe), str(opts.count), str(size)], check=True, text=True,
                                         capture_output=True, env={**env, "GOMALLOC_TINY": tiny}).stdout
                    m = re.search(r"inuse=(\d+) ns=([\d.]+)", out)
                    assert m is not None, out
                    res[tiny].append((int(m.group(1)), float(m.group(2))))
            mib = {t: statistics.median(r[0] for r in v) / 2**20 for t, v in res.items()}
            ns = {t: statistics.median(r[1] for r in v) for t, v in res.items()}
            print(f"{size:>4}  {mib['0']:>10.1f} MiB  {mib['1']:>5.1f} MiB  {ns['0']:>11.1f}  {ns['1']:>6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
