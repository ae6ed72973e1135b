#!/usr/bin/env python3
"""What trace_native costs a Python program whose C code allocates.

A small CPython extension (built here, linked to libgomalloc.so) allocates
COUNT blocks of SIZE bytes from a Python loop, one call per block with the
GIL held, keeps them, then frees them.  Each configuration runs in a fresh
interpreter, alternating, RUNS times; the table gives the median time per
allocated-and-freed block and its ratio to the first configuration:

    plain            neither tracemalloc nor trace_native
    tracemalloc      tracemalloc.start() (it traces Python's own objects, the list)
    + trace_native   tracemalloc and trace_native() at its default rate (512 KiB)
    + rate 64 KiB    the same, sampling 8 times as often

    python bench/trace_native.py [--count N] [--size BYTES] [--runs R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pygomalloc
from pygomalloc import _paths

SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <gomalloc.h>
#include <stdint.h>
static PyObject *alloc(PyObject *self, PyObject *arg) {
    void *p = gm_malloc(PyLong_AsSize_t(arg));
    return p ? PyLong_FromSize_t((size_t)(uintptr_t)p) : PyErr_NoMemory();
}
static PyObject *release(PyObject *self, PyObject *arg) {
    gm_free((void *)(uintptr_t)PyLong_AsSize_t(arg));
    Py_RETURN_NONE;
}
static PyMethodDef methods[] = {{"alloc", alloc, METH_O, NULL}, {"free", release, METH_O, NULL}, {NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gm_bench_ext", NULL, -1, methods};
PyMODINIT_FUNC PyInit__gm_bench_ext(void) { return PyModule_Create(&module); }
"""

CHILD = r"""
import importlib.util, sys, time, tracemalloc
import pygomalloc
path, mode, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
spec = importlib.util.spec_from_file_location("_gm_bench_ext", path)
ext = importlib.util.module_from_spec(spec); spec.loader.exec_module(ext)
if mode != "plain":
    tracemalloc.start()
if mode == "trace":
    pygomalloc.trace_native()
if mode == "trace64k":
    pygomalloc.trace_native(rate=64 * 1024)
alloc, free = ext.alloc, ext.free
t0 = time.perf_counter()
for _ in range(3):
    keep = [alloc(size) for _ in range(count)]
    for a in keep:
        free(a)
t = time.perf_counter() - t0
print(t / (3 * count) * 1e9, pygomalloc.trace_native_counts().tracked)
"""

MODES = (("plain", "plain"), ("tracemalloc", "tracemalloc"), ("+ trace_native", "trace"),
         ("+ rate 64 KiB", "trace64k"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "ext.c")
        src.write_text(SOURCE)
        ext = Path(tmp, "_gm_bench_ext" + sysconfig.get_config_var("EXT_SUFFIX"))
        subprocess.run([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-O2",
                        f"-I{sysconfig.get_paths()['include']}", *_paths.cflags(), str(src), "-o", str(ext),
                        *_paths.libs()], check=True)
        times: dict[str, list[float]] = {m: [] for _, m in MODES}
        tracked: dict[str, int] = {}
        for _ in range(args.runs):
            for _, mode in MODES:
                out = subprocess.run([sys.executable, "-c", CHILD, str(ext), mode, str(args.count),
                                      str(args.size)], capture_output=True, text=True, check=True).stdout
                ns, n = out.split()
                times[mode].append(float(ns))
                tracked[mode] = int(n)
    base = statistics.median(times["plain"])
    print(f"{args.count:,} blocks of {args.size} B allocated and freed from a Python loop, 3 rounds, "
          f"median of {args.runs} runs (pygomalloc {pygomalloc.__version__})")
    print(f"{'configuration':<16} {'ns per block':>12} {'vs plain':>9} {'samples reported':>17}")
    for label, mode in MODES:
        med = statistics.median(times[mode])
        print(f"{label:<16} {med:>12.1f} {med / base:>9.2f} {tracked[mode]:>17,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
