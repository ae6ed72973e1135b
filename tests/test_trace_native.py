"""trace_native: sampled native allocations reported to tracemalloc.

A real CPython extension (built here with the C compiler, linked to
libgomalloc.so as ``python -m pygomalloc --libs`` says) allocates through
pygomalloc from Python lines, from threads without a thread state, with the
GIL released, in forked children and during finalisation.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
import textwrap
import tracemalloc
from pathlib import Path
from types import ModuleType

import pytest

import pygomalloc as gm
from pygomalloc import _paths

CC = os.environ.get("CC", "cc")

EXT_SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <gomalloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

static PyObject *ext_alloc(PyObject *self, PyObject *arg) {
    size_t n = PyLong_AsSize_t(arg);
    void *p = gm_malloc(n);
    if (p == NULL)
        return PyErr_NoMemory();
    return PyLong_FromSize_t((size_t)(uintptr_t)p);
}

static PyObject *ext_free(PyObject *self, PyObject *arg) {
    gm_free((void *)(uintptr_t)PyLong_AsSize_t(arg));
    Py_RETURN_NONE;
}

/* n blocks of size bytes with the GIL released (a thread state, no GIL), freed at once. */
static PyObject *ext_churn_nogil(PyObject *self, PyObject *args) {
    Py_ssize_t n, size;
    if (!PyArg_ParseTuple(args, "nn", &n, &size))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        gm_free(gm_malloc((size_t)size));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

struct job { Py_ssize_t n, size; void **keep; };
static void *worker(void *arg) {
    struct job *j = arg;
    j->keep = gm_malloc((size_t)j->n * sizeof(void *));
    for (Py_ssize_t i = 0; i < j->n; i++)
        j->keep[i] = gm_malloc((size_t)j->size);
    return NULL;
}

/* A thread that never had a Python thread state allocates n blocks; they
 * are freed by this (Python) thread, with the GIL. */
static PyObject *ext_thread_alloc(PyObject *self, PyObject *args) {
    Py_ssize_t n, size;
    if (!PyArg_ParseTuple(args, "nn", &n, &size))
        return NULL;
    /* The worker allocates the array too: an allocation here, with the GIL,
     * would be tracked whenever this thread's countdown ran out on it. */
    struct job j = {n, size, NULL};
    pthread_t t;
    pthread_create(&t, NULL, worker, &j);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(t, NULL);
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        gm_free(j.keep[i]);
    gm_free(j.keep);
    Py_RETURN_NONE;
}

static volatile int spinning;
static void *spin(void *arg) {
    (void)arg;
    while (spinning)
        gm_free(gm_malloc(200));
    return NULL;
}
/* A thread that allocates until the process ends. */
static PyObject *ext_spin(PyObject *self, PyObject *noargs) {
    pthread_t t;
    spinning = 1;
    pthread_create(&t, NULL, spin, NULL);
    pthread_detach(t);
    Py_RETURN_NONE;
}

/* fork() behind Python's back, with the GIL held: the child allocates n
 * blocks (the sampler runs, the module must not call into Python) and
 * exits 0; a deadlock ends it by SIGALRM.  Returns the child's status. */
static PyObject *ext_cfork(PyObject *self, PyObject *args) {
    Py_ssize_t n, size;
    if (!PyArg_ParseTuple(args, "nn", &n, &size))
        return NULL;
    pid_t pid = fork();
    if (pid == 0) {
        alarm(30);
        for (Py_ssize_t i = 0; i < n; i++)
            gm_free(gm_malloc((size_t)size));
        _exit(0);
    }
    int status = 0;
    Py_BEGIN_ALLOW_THREADS
    waitpid(pid, &status, 0);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(status);
}

static PyMethodDef methods[] = {
    {"alloc", ext_alloc, METH_O, NULL},
    {"free", ext_free, METH_O, NULL},
    {"churn_nogil", ext_churn_nogil, METH_VARARGS, NULL},
    {"thread_alloc", ext_thread_alloc, METH_VARARGS, NULL},
    {"spin", ext_spin, METH_NOARGS, NULL},
    {"cfork", ext_cfork, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gm_native_ext", NULL, -1, methods};
PyMODINIT_FUNC PyInit__gm_native_ext(void) { return PyModule_Create(&module); }
"""


def build_extension(out: Path) -> Path:
    """The extension above, linked to the package's libgomalloc.so."""
    source = out / "ext.c"
    source.write_text(EXT_SOURCE)
    target = out / ("_gm_native_ext" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run([CC, "-shared", "-fPIC", "-std=c11", "-O1", "-Wall", "-Werror", "-pthread",
                    f"-I{sysconfig.get_paths()['include']}", *_paths.cflags(), str(source),
                    "-o", str(target), *_paths.libs()], check=True)
    return target


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("_gm_native_ext", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ext_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_extension(tmp_path_factory.mktemp("native_ext"))


@pytest.fixture(scope="module")
def ext(ext_path: Path) -> ModuleType:
    return load(ext_path)


@pytest.fixture()
def tracing():
    tracemalloc.start(1)
    try:
        yield
    finally:
        gm.trace_native(False)
        tracemalloc.stop()


def native(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    return snapshot.filter_traces([tracemalloc.DomainFilter(True, gm.TRACE_DOMAIN)])


def test_native_bytes_are_attributed_to_the_python_line(ext: ModuleType, tracing: None) -> None:
    size, count = 1000, 40_000
    gm.trace_native(rate=32 * 1024)
    before = gm.trace_native_counts()
    keep = []
    for _ in range(count):
        keep.append(ext.alloc(size))  # THE LINE
    the_line = next(i for i, text in enumerate(Path(__file__).read_text().splitlines(), 1)
                    if text.strip().endswith("# THE LINE"))
    snap = native(tracemalloc.take_snapshot())
    stats = snap.statistics("lineno")
    assert stats, gm.trace_native_counts()
    top = stats[0]
    frame = top.traceback[0]
    assert (frame.filename, frame.lineno) == (__file__, the_line), stats[:3]
    expected = count * gm.usable_size(keep[0])
    # ~1200 samples expected: the estimate's sd is about 3%; 20% is over 6 sd.
    assert abs(top.size - expected) < 0.2 * expected, (top.size, expected)
    assert top.size == sum(s.size for s in stats if (s.traceback[0].lineno == the_line))
    after = gm.trace_native_counts()
    assert after.tracked - before.tracked == top.count
    for a in keep:
        ext.free(a)
    left = native(tracemalloc.take_snapshot()).statistics("lineno")
    assert sum(s.size for s in left if s.traceback[0].lineno == the_line) == 0
    assert gm.trace_native_counts().untracked - after.untracked == top.count


def test_off_reports_nothing_and_restores_the_rate(ext: ModuleType, tracing: None) -> None:
    assert gm.get_option("profile_rate") == 0
    gm.trace_native(rate=1)
    assert gm.get_option("profile_rate") == 1
    gm.trace_native(False)
    assert gm.get_option("profile_rate") == 0
    before = gm.trace_native_counts()
    blocks = [ext.alloc(100) for _ in range(1000)]
    assert gm.trace_native_counts() == before
    for b in blocks:
        ext.free(b)


def test_threads_without_the_gil_are_dropped_and_counted(ext: ModuleType, tracing: None) -> None:
    gm.trace_native(rate=1)
    before = gm.trace_native_counts()
    ext.thread_alloc(2000, 64)      # a thread with no Python thread state
    ext.churn_nogil(2000, 64)       # this thread, GIL released
    gm.free(gm.malloc(64))          # cffi releases the GIL too
    after = gm.trace_native_counts()
    # Rate 1 samples every block at once (as Go's MemProfileRate = 1 does),
    # whatever countdown a thread held from an earlier rate: the new
    # thread's 2000 and its array, this thread's 2000 and cffi's one.
    assert after.no_gil - before.no_gil >= 2001 + 2000 + 1
    assert after.tracked == before.tracked
    # The thread's blocks were freed here, with the GIL: nothing was tracked,
    # so nothing is untracked or deferred.
    assert after.deferred == before.deferred and after.lost == before.lost
    gm.check_heap()


def test_frees_without_the_gil_are_untracked_later(ext: ModuleType, tracing: None) -> None:
    """A block reported from a Python line and freed where Python cannot be
    called is untracked by a pending call on the main thread."""
    gm.trace_native(rate=1)
    blocks = [ext.alloc(300) for _ in range(50)]
    before = gm.trace_native_counts()
    assert native(tracemalloc.take_snapshot()).statistics("filename")
    gm.trace_native(False)
    script_free = [gm.free(b) for b in blocks]  # cffi: the GIL is released in gm_free
    assert len(script_free) == 50
    after = gm.trace_native_counts()
    assert after.deferred - before.deferred == 50
    sum(range(1000))  # bytecode: the pending call runs
    for _ in range(3):
        pass
    left = native(tracemalloc.take_snapshot()).statistics("filename")
    assert sum(s.size for s in left) == 0, left[:3]


FINALIZE_SCRIPT = textwrap.dedent("""
    import importlib.util, sys, tracemalloc
    import pygomalloc as gm
    spec = importlib.util.spec_from_file_location("_gm_native_ext", sys.argv[1])
    ext = importlib.util.module_from_spec(spec); spec.loader.exec_module(ext)
    tracemalloc.start()
    gm.trace_native(rate=1)
    ext.spin()                       # a C thread allocating until the process ends
    class Late:
        def __del__(self):
            ext.free(ext.alloc(5000))  # during finalisation
    late = Late()
    keep = [ext.alloc(100) for _ in range(100)]
    print("counts", gm.trace_native_counts())
""")


def test_finalisation_and_threads_at_exit(ext_path: Path, tmp_path: Path) -> None:
    script = tmp_path / "fin.py"
    script.write_text(FINALIZE_SCRIPT)
    for _ in range(3):
        r = subprocess.run([sys.executable, str(script), str(ext_path)], capture_output=True, text=True,
                           timeout=60, check=False)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "counts TraceCounts(tracked=" in r.stdout


def test_fork_children(ext: ModuleType, tracing: None) -> None:
    gm.trace_native(rate=1)
    # fork() behind Python's back, GIL held: the child's samples are dropped.
    assert ext.cfork(5000, 128) == 0
    # os.fork: the child's interpreter is whole, its samples are reported.
    pid = os.fork()
    if pid == 0:
        try:
            before = gm.trace_native_counts().tracked
            blocks = [ext.alloc(128) for _ in range(100)]
            ok = gm.trace_native_counts().tracked - before == 100
            for b in blocks:
                ext.free(b)
            os._exit(0 if ok else 3)
        finally:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


DEADLOCK_SCRIPT = textwrap.dedent("""
    import importlib.util, sys, tracemalloc
    import pygomalloc as gm
    spec = importlib.util.spec_from_file_location("_gm_native_ext", sys.argv[1])
    ext = importlib.util.module_from_spec(spec); spec.loader.exec_module(ext)
    tracemalloc.start(5)
    gm.trace_native(rate=1)          # every malloc, tracemalloc's own included
    data = {str(i): [i] * 3 for i in range(20000)}
    native = [ext.alloc(64) for _ in range(1000)]
    snap = tracemalloc.take_snapshot()
    mine = snap.filter_traces([tracemalloc.DomainFilter(True, gm.TRACE_DOMAIN)])
    total = sum(s.size for s in mine.statistics("lineno"))
    c = gm.trace_native_counts()
    print("RESULT", total, c.tracked, c.interpreter)
""")


def test_no_deadlock_with_tracemalloc_under_the_preload_library(ext_path: Path, tmp_path: Path) -> None:
    """Python's objects and tracemalloc's own tables come from pygomalloc
    (LD_PRELOAD, PYTHONMALLOC=malloc), every malloc is sampled: tracemalloc
    allocates while holding its lock, and a report from there would
    deadlock.  The interpreter's allocations are not reported; the
    extension's are."""
    script = tmp_path / "deadlock.py"
    script.write_text(DEADLOCK_SCRIPT)
    env = dict(os.environ, LD_PRELOAD=gm.get_preload_library(), PYTHONMALLOC="malloc")
    r = subprocess.run([sys.executable, str(script), str(ext_path)], capture_output=True, text=True,
                       timeout=300, check=False, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT"))
    total, tracked, interpreter = (int(x) for x in line.split()[1:])
    assert tracked >= 1000 and interpreter > 20000
    assert total >= 1000 * 64
