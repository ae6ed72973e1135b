"""One allocator per process.

The core is libgomalloc.so alone; the cffi module, the LD_PRELOAD shim, C
libraries linked to it and the PyCapsule API all reach the one copy the
dynamic linker loads (one object per soname), whichever loads it first and
from whatever directory.  So a block from any of them is freed by any other.
Each case runs in a fresh interpreter.  Also: a libgomalloc.so built from
another header is refused, and dlclose() never unloads the allocator.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import pygomalloc as gm
from pygomalloc import _paths

SOURCE_TREE = Path(__file__).resolve().parents[1]
CC = os.environ.get("CC", "cc")


def build_description() -> ModuleType:
    """The source tree's build_ext.py (csrc/build.mk's reader)."""
    spec = importlib.util.spec_from_file_location("_pygomalloc_build", SOURCE_TREE / "build_ext.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_libraries(out: Path, version_script: str | None = None) -> Path:
    """libgomalloc.so and the preload shim from the source tree, into *out*,
    as pip builds them (optionally with another version script)."""
    build = build_description()
    out.mkdir(parents=True, exist_ok=True)
    map_file = out / "libgomalloc.map"
    map_file.write_text(version_script or build.version_script())
    for command in build.library_commands([CC], out, map_file).values():
        subprocess.run(command, check=True, cwd=build.CSRC, capture_output=True)
    return out


@pytest.fixture(scope="module")
def other_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second copy of both libraries, in a directory of its own."""
    return build_libraries(tmp_path_factory.mktemp("other_copy"))


USER_SOURCE = r"""
#include <gomalloc.h>
#include <stdint.h>
#include <stdlib.h>

uintptr_t user_gm_malloc(size_t n) { return (uintptr_t)gm_malloc(n); }
int user_gm_free(uintptr_t p) { return gm_free_checked((void *)p); }
uintptr_t user_libc_malloc(size_t n) { return (uintptr_t)malloc(n); }
void user_libc_free(uintptr_t p) { free((void *)p); }
"""


def build_user_library(out: Path, link_flags: list[str]) -> Path:
    """A C library linked to libgomalloc.so with *link_flags*."""
    source = out / "user.c"
    source.write_text(USER_SOURCE)
    lib = out / "libuser.so"
    subprocess.run([CC, "-shared", "-fPIC", "-std=c11", "-Wall", "-Werror", *_paths.cflags(),
                    str(source), "-o", str(lib), *link_flags], check=True)
    return lib


@pytest.fixture(scope="module")
def user_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Linked as `python -m pygomalloc --libs` says: to the package's copy."""
    return build_user_library(tmp_path_factory.mktemp("user"), _paths.libs())


@pytest.fixture(scope="module")
def user_library_other_copy(tmp_path_factory: pytest.TempPathFactory, other_copy: Path) -> Path:
    """Linked to the other copy of libgomalloc.so."""
    return build_user_library(tmp_path_factory.mktemp("user_other"),
                              [f"-L{other_copy}", f"-Wl,-rpath,{other_copy}", "-lgomalloc"])


CAPI_SOURCE = r"""
#include "gomalloc.h"

static const struct gm_capi *capi(void)
{
    PyGILState_STATE gil = PyGILState_Ensure();   /* cffi calls us without the GIL */
    const struct gm_capi *api = gm_capi_import();
    if (api == NULL)
        PyErr_Print();
    PyGILState_Release(gil);
    return api;
}
static uintptr_t capi_malloc(size_t n) { const struct gm_capi *a = capi(); return a ? (uintptr_t)a->malloc(n) : 0; }
static int capi_free(uintptr_t p) { const struct gm_capi *a = capi(); return a ? a->free_checked((void *)p) : -1; }
"""


@pytest.fixture(scope="module")
def capi_extension(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Python extension using the capsule API (no link to libgomalloc.so)."""
    cffi = pytest.importorskip("cffi")
    ffi = cffi.FFI()
    ffi.cdef("uintptr_t capi_malloc(size_t n); int capi_free(uintptr_t p);")
    ffi.set_source("_gm_one_capi", CAPI_SOURCE, include_dirs=[gm.get_include()],
                   extra_compile_args=["-std=c11", "-Wall", "-Wextra", "-Werror"], py_limited_api=False)
    path: str = ffi.compile(tmpdir=str(tmp_path_factory.mktemp("capi")), verbose=False)
    return path


# The child: every route to the allocator, each block freed by another route.
CHILD = r"""
import ctypes, importlib.util, json, os, sys

early = os.environ.get("USER_LIB_FIRST")
if early:                                   # the C library loads libgomalloc.so first
    ctypes.CDLL(early)
import pygomalloc as gm

user = ctypes.CDLL(os.environ["USER_LIB"])
user.user_gm_malloc.restype = user.user_libc_malloc.restype = ctypes.c_size_t
user.user_gm_malloc.argtypes = user.user_libc_malloc.argtypes = [ctypes.c_size_t]
user.user_gm_free.argtypes = user.user_libc_free.argtypes = [ctypes.c_size_t]
spec = importlib.util.spec_from_file_location("_gm_one_capi", os.environ["CAPI_EXT"])
capi = importlib.util.module_from_spec(spec)
spec.loader.exec_module(capi)

r = {}
objects = [str(i) * 3 for i in range(50_000)]
r["owns_python_objects"] = gm.owns(id(objects)) and gm.owns(id(objects[-1]))
r["heap_objects"] = gm.stats().heap_objects

p = gm.malloc(100)
r["c_frees_module_block"] = user.user_gm_free(p)            # 0: freed
q = user.user_gm_malloc(5000)
r["module_owns_c_block"] = gm.owns(q)
gm.free(q)                                                   # raises unless ours
c = capi.lib.capi_malloc(64)
r["module_owns_capsule_block"] = gm.owns(c)
r["c_frees_capsule_block"] = user.user_gm_free(c)
r["capsule_frees_module_block"] = capi.lib.capi_free(gm.malloc(64))
r["capsule_frees_c_block"] = capi.lib.capi_free(user.user_gm_malloc(70000))
byname = ctypes.CDLL("libgomalloc.so")     # by soname: the loaded copy
byname.gm_malloc.restype = ctypes.c_size_t
b = byname.gm_malloc(10)
r["module_owns_block_by_soname"] = gm.owns(b)
gm.free(b)
m = user.user_libc_malloc(300)
r["libc_malloc_is_ours"] = gm.owns(m)
user.user_libc_free(m)

with open("/proc/self/maps") as f:
    r["cores"] = sorted({line.split()[-1] for line in f if line.rstrip().endswith("/libgomalloc.so")})
gm.check_heap()
r["bad_frees"] = gm.stats().bad_frees
print("RESULT " + json.dumps(r))
"""


def run_child(env: dict[str, str]) -> dict[str, Any]:
    child_env = {k: v for k, v in os.environ.items()
                 if not k.startswith("GOMALLOC_") and k not in ("LD_PRELOAD", "PYTHONMALLOC")}
    child_env.update(env)
    proc = subprocess.run([sys.executable, "-c", CHILD], env=child_env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"status {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout
    result: dict[str, Any] = json.loads(lines[0][len("RESULT "):])
    return result


def assert_one_heap(r: dict[str, Any]) -> None:
    assert r["c_frees_module_block"] == 0, r
    assert r["module_owns_c_block"] and r["module_owns_capsule_block"], r
    assert r["c_frees_capsule_block"] == 0, r
    assert r["capsule_frees_module_block"] == 0 and r["capsule_frees_c_block"] == 0, r
    assert r["module_owns_block_by_soname"], r
    assert len(r["cores"]) == 1, r  # one libgomalloc.so mapped
    assert r["bad_frees"] == 0, r


@pytest.mark.parametrize("shim", ["package", "other directory"])
def test_one_heap_under_ld_preload(shim: str, other_copy: Path, user_library: Path,
                                   capi_extension: str) -> None:
    """Python's own objects (PYTHONMALLOC=malloc), the module, the capsule and
    a C library: one heap, even when the preloaded shim and its core come
    from another directory than the package's (the module then uses that
    core: the dynamic linker finds it loaded under its soname)."""
    preload = Path(gm.get_preload_library()) if shim == "package" else other_copy / "libgomalloc_preload.so"
    r = run_child({"LD_PRELOAD": str(preload), "PYTHONMALLOC": "malloc",
                   "USER_LIB": str(user_library), "CAPI_EXT": capi_extension})
    assert_one_heap(r)
    assert r["cores"] == [str(preload.parent / "libgomalloc.so")], r
    assert r["owns_python_objects"] and r["libc_malloc_is_ours"], r
    assert r["heap_objects"] >= 50_000, r  # the interpreter's objects are counted


@pytest.mark.parametrize("order", ["module first", "C library first, other copy"])
def test_one_heap_without_ld_preload(order: str, user_library: Path, user_library_other_copy: Path,
                                     other_copy: Path, capi_extension: str) -> None:
    """The module, the capsule and a linked C library share one heap, also
    when the C library brings its own copy of libgomalloc.so in first."""
    env = {"USER_LIB": str(user_library), "CAPI_EXT": capi_extension}
    if order != "module first":
        env["USER_LIB_FIRST"] = env["USER_LIB"] = str(user_library_other_copy)
    r = run_child(env)
    assert_one_heap(r)
    expected = Path(gm.get_library()) if order == "module first" else other_copy / "libgomalloc.so"
    assert r["cores"] == [str(expected.resolve())], r
    assert not r["owns_python_objects"] and not r["libc_malloc_is_ours"], r  # glibc's and pymalloc's


def test_a_core_built_from_another_header_is_refused(tmp_path: Path) -> None:
    """The gm_ symbols carry the header's version: a libgomalloc.so already
    loaded (here preloaded) with another is not used, and import says why."""
    build = build_description()
    bogus = build_libraries(tmp_path, "GOMALLOC_000000000000 { global: gm_*; local: *; };\n")
    proc = subprocess.run([sys.executable, "-c", "import pygomalloc"],
                          env={**os.environ, "LD_PRELOAD": str(bogus / "libgomalloc.so")},
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr, proc.stderr
    assert f"GOMALLOC_{build.abi_tag()}' not found" in proc.stderr, proc.stderr


DLCLOSE_PROGRAM = r"""
#include <dirent.h>
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define N 1024

static int threads(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
        n += e->d_name[0] != '.';
    if (d != NULL)
        closedir(d);
    return n;
}

int main(int argc, char **argv)
{
    static void *blocks[N];
    if (argc != 4)
        return 2;
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        printf("dlopen: %s\n", dlerror());
        return 1;
    }
    void *(*alloc)(size_t) = (void *(*)(size_t))dlsym(h, argv[2]);
    void (*release)(void *) = (void (*)(void *))dlsym(h, argv[3]);
    if (alloc == NULL || release == NULL)
        return 1;
    for (int i = 0; i < N; i++) {             /* 64 MiB, then free: work for the scavenger */
        blocks[i] = alloc(64 * 1024 + (size_t)i % 7 * 100);
        if (blocks[i] == NULL)
            return 1;
        memset(blocks[i], i, 64 * 1024);
    }
    for (int i = 0; i < N; i++)
        release(blocks[i]);
    if (dlclose(h) != 0)
        return 1;
    printf("still loaded %d\n", dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD) != NULL);
    printf("threads %d\n", threads());
    fflush(stdout);
    sleep(1);                                  /* the scavenger runs its code meanwhile */
    printf("ok\n");
    return 0;
}
"""


@pytest.fixture(scope="module")
def dlclose_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dlclose")
    (out / "dlclose.c").write_text(DLCLOSE_PROGRAM)
    subprocess.run([CC, "-std=c11", "-O1", "-Wall", "-Werror", "-D_DEFAULT_SOURCE", str(out / "dlclose.c"),
                    "-o", str(out / "dlclose"), "-ldl"], check=True)
    return out / "dlclose"


@pytest.mark.parametrize("which", ["preload shim", "libgomalloc.so"])
def test_dlclose_leaves_the_allocator_loaded(which: str, dlclose_program: Path) -> None:
    """-z nodelete: after dlclose() the library stays mapped, so the
    scavenger thread, which runs its code, goes on safely."""
    if which == "preload shim":
        args = [gm.get_preload_library(), "malloc", "free"]
    else:
        args = [gm.get_library(), "gm_malloc", "gm_free"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOMALLOC_") and k != "LD_PRELOAD"}
    env["GOMALLOC_DECAY_MS"] = "100"
    proc = subprocess.run([str(dlclose_program), *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, f"status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.split("\n")
    assert lines[0] == "still loaded 1", proc.stdout
    assert int(lines[1].split()[1]) >= 2, proc.stdout  # the scavenger thread is running
    assert lines[2] == "ok", proc.stdout


def test_module_reaches_the_core_through_the_dynamic_linker() -> None:
    """The module calls gm_ functions it does not define: no copy of the
    core inside it (the shapes are checked in test_tls_and_link.py)."""
    proc = subprocess.run(["readelf", "-W", "--dyn-syms", gm._gomalloc.__file__],  # type: ignore[attr-defined]
                          capture_output=True, text=True, check=True)
    gm_symbols = [line.split() for line in proc.stdout.splitlines() if " gm_" in line]
    assert gm_symbols and all(fields[6] == "UND" for fields in gm_symbols), textwrap.shorten(
        str(gm_symbols), 500)
