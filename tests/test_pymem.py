"""pygomalloc inside the running interpreter, and for other extensions.

* ``install()``: PyMem_SetAllocator with a wrapper, at run time.  Blocks
  allocated before go on being freed and resized by the previous allocator
  (decided by ``owns()``), new ones come from pygomalloc, ``uninstall()``
  sends new blocks back while ours stay valid.  Each case runs in a fresh
  interpreter, since an installed wrapper stays for the process's life.
* The PyCapsule C API (``gm_capi_import()`` in gomalloc.h): an extension
  compiled here against ``get_include()`` uses the package's allocator
  without linking to it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import pygomalloc as gm
from pygomalloc._gomalloc import ffi
from pygomalloc._gomalloc import lib as gm_lib

PRELUDE = textwrap.dedent(
    '''
    import ctypes, gc, json, sys, threading
    import pygomalloc as gm

    api = ctypes.pythonapi
    for name in ("PyMem_Malloc", "PyMem_RawMalloc", "PyObject_Malloc"):
        getattr(api, name).restype = ctypes.c_void_p
        getattr(api, name).argtypes = [ctypes.c_size_t]
    for name in ("PyMem_Calloc", "PyMem_RawCalloc", "PyObject_Calloc"):
        getattr(api, name).restype = ctypes.c_void_p
        getattr(api, name).argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    for name in ("PyMem_Realloc", "PyMem_RawRealloc", "PyObject_Realloc"):
        getattr(api, name).restype = ctypes.c_void_p
        getattr(api, name).argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    for name in ("PyMem_Free", "PyMem_RawFree", "PyObject_Free"):
        getattr(api, name).restype = None
        getattr(api, name).argtypes = [ctypes.c_void_p]

    def report(**figures):
        print("RESULT " + json.dumps(figures), flush=True)

    def wait_threads_gone():
        """Thread.join() returns before the OS thread has run its TLS
        destructors, which hand its pygomalloc cache back; the heap check
        wants a quiescent heap."""
        import time
        deadline = time.monotonic() + 10
        while gm.stats().num_threads > 1 and time.monotonic() < deadline:
            time.sleep(0.01)

    def churn(n):
        """Python objects of many sizes, made and dropped."""
        keep = []
        for i in range(n):
            keep.append({"k": [str(i) * (i % 50), bytes(i % 700), (i, i + 1.5)]})
            if len(keep) > 500:
                del keep[::2]
        return len(keep)
    '''
)


def child(body: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run PRELUDE + body in a fresh interpreter; return its RESULT figures."""
    child_env = {k: v for k, v in os.environ.items()
                 if not k.startswith("GOMALLOC_") and k not in ("LD_PRELOAD", "PYTHONMALLOC")}
    child_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
                          env=child_env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"status {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout
    result: dict[str, Any] = json.loads(lines[0][len("RESULT "):])
    return result


INSTALL_BODY = '''
old_list = [str(i) * 20 for i in range(2000)]          # allocated by the previous allocator
old_bytes = bytearray(100)
old_block = api.PyMem_Malloc(64)
s0 = gm.stats()
before = sorted(gm.installed())
now = sorted(gm.install())
again = sorted(gm.install())                            # idempotent
new_list = [str(i) * 20 for i in range(2000)]
new_dict = {i: [i] for i in range(5000)}
s1 = gm.stats()
# Resizing and freeing old blocks goes to the previous allocator.
old_list.extend(range(100000))
old_bytes.extend(b"x" * 100000)
grown = api.PyMem_Realloc(old_block, 100000)
grown_ours = gm.owns(grown)
api.PyMem_Free(grown)
old_owned = gm.owns(id(old_list)) or gm.owns(id(old_list[0]))
del old_list, old_bytes
# Threads, each with its own pygomalloc cache (the GIL serialises them).
threads = [threading.Thread(target=churn, args=(20000,)) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
wait_threads_gone()
# Python's rules for the domains: size 0 gives distinct blocks, realloc to 0
# keeps one, calloc overflows to NULL.
zero = [api.PyMem_Malloc(0), api.PyMem_Malloc(0), api.PyObject_Malloc(0)]
distinct_zero = len(set(zero)) == 3 and all(zero) and all(gm.owns(p) for p in zero)
kept = api.PyMem_Realloc(zero[0], 0)
calloc_overflow = api.PyMem_Calloc(1 << 62, 1 << 62)
for p in (kept, zero[1]):
    api.PyMem_Free(p)
api.PyObject_Free(zero[2])
# (Not the list and dict objects themselves: CPython reuses those from its
# free lists of objects allocated before.)
new_owned = gm.owns(id(new_list[-1])) and gm.owns(id(new_dict[4999]))
s2 = gm.stats()
gc.collect()
gm.check_heap()
routed_after = sorted(gm.uninstall(("mem", "obj")))
after_list = [str(i) * 20 for i in range(100)]
after_owned = gm.owns(id(after_list[-1]))
del new_list, new_dict                                  # ours, freed by us after uninstall
gc.collect()
s3 = gm.stats()
gm.check_heap()
# Routed back to pygomalloc: new blocks are ours again (the domain's malloc
# is swapped back, build_ext.py's pgm_pymem_route).
rerouted = sorted(gm.install(("mem", "obj")))
again_list = [str(i) * 20 for i in range(100)]
again_owned = gm.owns(id(again_list[-1]))
del after_list, again_list
gm.check_heap()
report(rerouted=rerouted, again_owned=again_owned, before=before, now=now, again=again, python_mallocs=s1.mallocs - s0.mallocs,
       grown_ours=grown_ours, old_owned=old_owned, distinct_zero=distinct_zero, kept=bool(kept),
       calloc_overflow=calloc_overflow, new_owned=new_owned, threads_mallocs=s2.mallocs - s1.mallocs,
       routed_after=routed_after, after_owned=after_owned, freed_after=s3.frees - s2.frees,
       bad_frees=s3.bad_frees)
'''


@pytest.mark.parametrize("pythonmalloc", ["", "debug", "malloc"])
def test_install_wraps_the_interpreters_allocator(pythonmalloc: str) -> None:
    """Also over CPython's debug hooks and over plain malloc: the blocks
    allocated before install() keep their allocator, whatever it is."""
    env = {"PYTHONMALLOC": pythonmalloc} if pythonmalloc else {}
    r = child(INSTALL_BODY, env)
    assert r["before"] == [] and r["now"] == ["mem", "obj"] and r["again"] == ["mem", "obj"], r
    assert r["python_mallocs"] > 7000, r  # 2000 strings, 5000 lists, a dict, ...
    assert not r["grown_ours"] and not r["old_owned"], r
    assert r["distinct_zero"] and r["kept"] and r["calloc_overflow"] is None, r
    assert r["new_owned"], r
    assert r["threads_mallocs"] > 50000, r
    assert r["routed_after"] == [] and not r["after_owned"], r
    assert r["rerouted"] == ["mem", "obj"] and r["again_owned"], r
    assert r["freed_after"] >= 7000, r
    assert r["bad_frees"] == 0, r


def test_install_over_the_preloaded_library() -> None:
    """Under LD_PRELOAD the package shares the preloaded library's heap (the
    library's gm_ functions interpose the module's), so with
    PYTHONMALLOC=malloc the allocator install() wraps is pygomalloc too:
    every block is ours whichever way it came, and frees by either route end
    in the one heap."""
    r = child(INSTALL_BODY, {"PYTHONMALLOC": "malloc", "LD_PRELOAD": gm.get_preload_library()})
    assert r["now"] == ["mem", "obj"] and r["routed_after"] == [], r
    assert r["old_owned"] and r["grown_ours"] and r["new_owned"] and r["after_owned"], r
    assert r["distinct_zero"] and r["kept"] and r["calloc_overflow"] is None, r
    assert r["bad_frees"] == 0, r


def test_install_raw_domain() -> None:
    r = child('''
foreign = api.PyMem_RawMalloc(32)
routed = sorted(gm.install(("raw",)))
p = api.PyMem_RawMalloc(100)
q = api.PyMem_RawCalloc(10, 10)
ours = gm.owns(p) and gm.owns(q)
zeroed = ctypes.string_at(q, 100) == bytes(100)
r = api.PyMem_RawRealloc(foreign, 4096)   # stays with the previous allocator
foreign_kept = not gm.owns(r)
api.PyMem_RawFree(r)
api.PyMem_RawFree(p)
api.PyMem_RawFree(q)
t = threading.Thread(target=churn, args=(5000,))  # thread start-up uses the raw domain
t.start(); t.join()
wait_threads_gone()
gm.check_heap()
report(routed=routed, ours=ours, zeroed=zeroed, foreign_kept=foreign_kept,
       mem_untouched=not gm.owns(api.PyMem_Malloc(8)), bad_frees=gm.stats().bad_frees)
''')
    assert r == {"routed": ["raw"], "ours": True, "zeroed": True, "foreign_kept": True,
                 "mem_untouched": True, "bad_frees": 0}, r


def test_install_realloc_and_calloc_paths() -> None:
    """gm_py_realloc (csrc/pymem.c): in place within a class or when
    shrinking by less than 1/4, moves between classes with headroom above
    512 bytes, large objects grown with headroom, and every move keeps the
    contents; a bad pointer still goes to gm_realloc's check; small calloc
    zeroes what a freed block left."""
    r = child('''
gm.install(("mem",))
usable = lambda p: gm.usable_size(p)
p = api.PyMem_Malloc(40)
ctypes.memset(p, 0x5a, 40)
moves, steps, contents_ok = 0, 0, True
size = 40
while size < 400000:                       # list-like growth by 1/8
    new = size + size // 8 + 6
    q = api.PyMem_Realloc(p, new)
    moves += q != p
    steps += 1
    contents_ok &= ctypes.string_at(q, size) == b"\\x5a" * size
    ctypes.memset(q, 0x5a, new)
    p, size = q, new
grown_ours = gm.owns(p)
big_cap = usable(p)
same = api.PyMem_Realloc(p, big_cap - big_cap // 8) == p # a shrink by less than 1/4 stays
q = api.PyMem_Realloc(p, 20000)                          # a large one made small moves
shrunk_ok = q != p and ctypes.string_at(q, 20000) == b"\\x5a" * 20000 and gm.owns(q)
in_class = api.PyMem_Realloc(q, 20100) == q              # same class (20480): in place
kept = api.PyMem_Realloc(q, 16000) == q                  # shrinks by less than 1/4: in place
q2 = api.PyMem_Realloc(q, 12000)                         # by more: moves
moved_ok = kept and q2 != q and ctypes.string_at(q2, 12000) == b"\\x5a" * 12000
api.PyMem_Free(q2)
# calloc of a small block reuses a freed one: zeroed all the same.
d = api.PyMem_Malloc(200); ctypes.memset(d, 0xff, 200); api.PyMem_Free(d)
c = api.PyMem_Calloc(25, 8)
zeroed = ctypes.string_at(c, 200) == bytes(200)
api.PyMem_Free(c)
gm.set_option("abort_on_error", 0)
bad_before = gm.stats().bad_frees
interior = api.PyMem_Realloc(c + 16, 64)                 # c is freed: never resized
gm.check_heap()
report(moves=moves, steps=steps, contents_ok=contents_ok, grown_ours=grown_ours, same=same,
       shrunk_ok=shrunk_ok, in_class=in_class, moved_ok=moved_ok, zeroed=zeroed, interior=interior,
       bad=gm.stats().bad_frees - bad_before)
''')
    assert r["contents_ok"] and r["grown_ours"] and r["same"] and r["shrunk_ok"], sorted(r.items())
    assert r["in_class"] and r["moved_ok"] and r["zeroed"], sorted(r.items())
    assert r["interior"] is None and r["bad"] == 1, r
    # Steps of 1/8 from 40 bytes to 400 KB: the headroom (1/4 above 1 KiB,
    # 1/2 for large objects) leaves about one move in two steps above 1 KiB
    # (49 moves in 72 steps in all), where gm_realloc moves at nearly every step.
    assert r["moves"] < 0.75 * r["steps"], r


def test_double_free_through_every_domain_is_caught() -> None:
    """The mem and obj domains free with a plain store of the state byte
    (gm_py_free_gil: their callers hold the GIL, so two frees of a block are
    ordered), the raw domain with a compare-and-swap: in each a second free
    of a block is reported and changes nothing, so the block is handed out
    once afterwards.  So do their reallocs' moves (gm_py_realloc_gil): the
    block moved from is freed, and a free of it after is reported."""
    r = child('''
gm.install(("raw", "mem", "obj"))
gm.set_option("abort_on_error", 0)
out = {}
for dom, alloc, realloc, free in (("obj", api.PyObject_Malloc, api.PyObject_Realloc, api.PyObject_Free),
                                  ("mem", api.PyMem_Malloc, api.PyMem_Realloc, api.PyMem_Free),
                                  ("raw", api.PyMem_RawMalloc, api.PyMem_RawRealloc, api.PyMem_RawFree)):
    before = gm.stats().bad_frees
    p = alloc(48)
    ours = gm.owns(p)
    free(p)
    free(p)
    a, b = alloc(48), alloc(48)
    bad_free = gm.stats().bad_frees - before
    q = alloc(48)
    ctypes.memmove(q, b"x" * 48, 48)
    r = realloc(q, 200)                  # another class: moved, q freed
    moved = r != q and ctypes.string_at(r, 48) == b"x" * 48
    free(q)                              # q again: reported
    c, d = alloc(48), alloc(48)
    out[dom] = {"ours": ours, "bad": bad_free, "distinct": a != b, "moved": moved,
                "bad_after_move": gm.stats().bad_frees - before - bad_free, "distinct_after": len({a, b, c, d}) == 4}
    for x in (a, b, c, d, r):
        free(x)
gm.check_heap()
report(**out)
''')
    for dom in ("obj", "mem", "raw"):
        assert r[dom] == {"ours": True, "bad": 1, "distinct": True, "moved": True, "bad_after_move": 1,
                          "distinct_after": True}, r


def test_install_rejects_unknown_domains() -> None:
    r = child('''
errors = []
for bad in (("heap",), ("mem", "RAW"), ("",)):
    try:
        gm.install(bad)
    except ValueError as e:
        errors.append(str(e))
try:
    gm.uninstall(("nope",))
except ValueError as e:
    errors.append(str(e))
report(errors=errors, installed=sorted(gm.installed()))
''')
    assert len(r["errors"]) == 4 and all("unknown allocator domain" in e for e in r["errors"]), r
    assert r["installed"] == [], r  # nothing half-installed


def test_install_knows_a_free_threaded_build_as_sysconfig_does() -> None:
    # install() refuses "obj" on a free-threaded CPython: the extension asks
    # its own build (Py_GIL_DISABLED), sysconfig asks the interpreter's.
    import sysconfig

    assert bool(gm_lib.pgm_free_threaded()) == bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def test_uninstall_before_install_is_a_no_op() -> None:
    assert gm.installed() == frozenset()  # this process never installs
    assert gm.uninstall() == frozenset()


# --------------------------------------------------------------------------
# The PyCapsule C API

CAPI_SOURCE = r"""
#include "gomalloc.h"

/* Import the capsule (with the GIL: cffi calls us without it) and allocate
 * through it; returns the block, or 0 with the Python error printed. */
static uintptr_t capi_malloc(size_t n)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    const struct gm_capi *api = gm_capi_import();
    if (api == NULL) {
        PyErr_Print();
        PyGILState_Release(gil);
        return 0;
    }
    PyGILState_Release(gil);
    return (uintptr_t)api->malloc(n);
}

static int capi_free(uintptr_t p)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    const struct gm_capi *api = gm_capi_import();
    PyGILState_Release(gil);
    return api == NULL ? -1 : api->free_checked((void *)p);
}

static unsigned capi_version(void)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    const struct gm_capi *api = gm_capi_import();
    PyGILState_Release(gil);
    return api == NULL ? 0 : api->version;
}

/* heap_objects through the capsule, read by a caller whose struct gm_stats
 * has `size` bytes (an older header's prefix when smaller); 0 if its struct
 * is too small to hold the figure, -1 if the read failed, -2 if it wrote
 * past `size`. */
static int64_t capi_heap_objects(size_t size)
{
    static union {
        struct gm_stats st;
        unsigned char bytes[sizeof(struct gm_stats) + 64];
    } buf;
    PyGILState_STATE gil = PyGILState_Ensure();
    const struct gm_capi *api = gm_capi_import();
    PyGILState_Release(gil);
    memset(&buf, 0x5a, sizeof buf);
    buf.st.size = size;
    if (api == NULL || api->read_stats(&buf.st) != 0 || buf.st.size != sizeof buf.st)
        return -1;
    for (size_t i = size; i < sizeof buf.bytes; i++)
        if (buf.bytes[i] != 0x5a)
            return -2;
    return size >= offsetof(struct gm_stats, heap_objects) + 8 ? (int64_t)buf.st.heap_objects : 0;
}

/* gm_capi_import's verdict on the capsule pygomalloc._C_API has now: 1, or
 * 0 with the error's message in msg. */
static int capi_import_ok(char *msg, size_t len)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    const struct gm_capi *api = gm_capi_import();
    int ok = api != NULL;
    msg[0] = 0;
    if (!ok) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *s = value != NULL ? PyObject_Str(value) : NULL;
        PyObject *b = s != NULL ? PyUnicode_AsUTF8String(s) : NULL;
        if (b != NULL)
            snprintf(msg, len, "%s", PyBytes_AsString(b));
        Py_XDECREF(b);
        Py_XDECREF(s);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
    }
    PyGILState_Release(gil);
    return ok;
}

static size_t capi_struct_size(void) { return sizeof(struct gm_capi); }

/* ---- heaps through the capsule (version 3) ---- */

static const struct gm_capi *capi(void)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    const struct gm_capi *api = gm_capi_import();
    if (api == NULL)
        PyErr_Print();
    PyGILState_Release(gil);
    return api;
}

static uintptr_t capi_heap_new(const char *name, uint64_t limit)
{
    struct gm_heap_options o = {sizeof o, name, limit, 0};
    return (uintptr_t)capi()->heap_new(&o);
}

/* n objects of size bytes from heap h; the first's address.  Each filled
 * with its index.  0 if one failed (*err: its errno). */
static uintptr_t capi_heap_fill(uintptr_t h, int n, size_t size, uintptr_t *all, int *err)
{
    const struct gm_capi *api = capi();
    for (int i = 0; i < n; i++) {
        errno = 0;
        unsigned char *p = api->heap_malloc((gm_heap_t *)h, size);
        if (p == NULL) {
            *err = errno;
            return 0;
        }
        memset(p, i, size);
        all[i] = (uintptr_t)p;
    }
    return all[0];
}

static int capi_heap_count(void *p, size_t size, void *arg)
{
    (void)p, (void)size;
    ++*(uint64_t *)arg;
    return 0;
}

/* The heap's objects by its statistics and by a visit; -1 if h is bad. */
static int capi_heap_figures(uintptr_t h, uint64_t *objects, uint64_t *alloc, uint64_t *visited, uint64_t *limit)
{
    const struct gm_capi *api = capi();
    struct gm_heap_stats st;
    memset(&st, 0, sizeof st);
    st.size = sizeof st;
    if (api->heap_read_stats((gm_heap_t *)h, &st) != 0)
        return -1;
    *objects = st.objects;
    *alloc = st.alloc;
    *limit = st.limit;
    *visited = 0;
    return api->heap_visit((gm_heap_t *)h, capi_heap_count, visited);
}

/* h as this thread's default heap around one malloc through the capsule. */
static uintptr_t capi_scoped_malloc(uintptr_t h, size_t size, int *restored)
{
    const struct gm_capi *api = capi();
    gm_heap_t *prev = api->heap_set_default((gm_heap_t *)h);
    void *p = api->malloc(size);
    *restored = api->heap_get_default() == (gm_heap_t *)h && api->heap_set_default(prev) == (gm_heap_t *)h &&
                api->heap_get_default() == api->heap_default();
    return (uintptr_t)p;
}

static uintptr_t capi_heap_of(uintptr_t p) { return (uintptr_t)capi()->heap_of((void *)p); }
static int capi_heap_free(uintptr_t h, uintptr_t p) { return capi()->heap_free((gm_heap_t *)h, (void *)p); }
static int capi_heap_destroy(uintptr_t h) { return capi()->heap_destroy((gm_heap_t *)h); }
static int capi_heap_delete(uintptr_t h) { return capi()->heap_delete((gm_heap_t *)h); }
"""


@pytest.fixture(scope="module")
def capi_module(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cffi = pytest.importorskip("cffi")
    ffi = cffi.FFI()
    ffi.cdef("uintptr_t capi_malloc(size_t n); int capi_free(uintptr_t p); unsigned capi_version(void);"
             "int64_t capi_heap_objects(size_t size);"
             "int capi_import_ok(char *msg, size_t len); size_t capi_struct_size(void);"
             "uintptr_t capi_heap_new(const char *name, uint64_t limit);"
             "uintptr_t capi_heap_fill(uintptr_t h, int n, size_t size, uintptr_t *all, int *err);"
             "int capi_heap_figures(uintptr_t h, uint64_t *objects, uint64_t *alloc, uint64_t *visited,"
             "                      uint64_t *limit);"
             "uintptr_t capi_scoped_malloc(uintptr_t h, size_t size, int *restored);"
             "uintptr_t capi_heap_of(uintptr_t p); int capi_heap_free(uintptr_t h, uintptr_t p);"
             "int capi_heap_destroy(uintptr_t h); int capi_heap_delete(uintptr_t h);")
    ffi.set_source("_gm_capi_user", CAPI_SOURCE, include_dirs=[gm.get_include()],
                   extra_compile_args=["-std=c11", "-Wall", "-Wextra", "-Werror"],
                   py_limited_api=False)
    out = tmp_path_factory.mktemp("capi")
    path = ffi.compile(tmpdir=str(out), verbose=False)
    spec = importlib.util.spec_from_file_location("_gm_capi_user", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_capsule_is_exported() -> None:
    assert "pygomalloc._C_API" in repr(gm._C_API)


def test_extension_uses_the_package_allocator_through_the_capsule(capi_module: Any) -> None:
    lib = capi_module.lib
    assert lib.capi_version() == 3
    before = gm.stats().mallocs
    p = lib.capi_malloc(100)
    assert p != 0 and gm.owns(p)
    assert gm.usable_size(p) >= 100
    assert gm.stats().mallocs == before + 1  # the same allocator instance as the Python API
    assert lib.capi_free(p) == 0
    # A bad free through the capsule is refused with its code, like gm_free_checked.
    assert lib.capi_free(p) != 0
    q = gm.malloc(64)
    assert lib.capi_free(q) == 0  # blocks are interchangeable between the two


def test_capsule_stats_for_new_and_old_callers(capi_module: Any) -> None:
    lib = capi_module.lib
    size = ffi.sizeof("struct gm_stats")
    keep = gm.malloc(100)
    try:
        objects = gm.stats().heap_objects
        assert objects >= 1
        assert lib.capi_heap_objects(size) == objects
        assert lib.capi_heap_objects(size + 64) == objects  # a newer caller: its extra bytes untouched
        end = 8 * (2 + [f.name for f in dataclasses.fields(gm.Stats)].index("heap_objects"))
        assert lib.capi_heap_objects(end) == objects  # an old caller whose struct ends at heap_objects
        assert lib.capi_heap_objects(16) == 0  # one ending before it: nothing written past its 16 bytes
    finally:
        gm.free(keep)


def test_header_is_installed_with_the_capsule_api() -> None:
    header = Path(gm.get_include()) / "gomalloc.h"
    text = header.read_text()
    assert "gm_capi_import" in text and '"pygomalloc._C_API"' in text


def test_capsule_import_accepts_newer_packages_only(capi_module: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """gm_capi_import: the struct only grows at the end, so a package of the
    header's version or a later one, with a struct at least as large, is
    accepted; an older one (fewer functions) is refused with a message."""
    lib = capi_module.lib
    size = lib.capi_struct_size()
    msg = capi_module.ffi.new("char[]", 512)
    assert lib.capi_import_ok(msg, len(msg)) == 1
    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    verdicts = {}
    for version, struct_size in ((2, size - 16 * 8), (3, size - 8), (3, size), (4, size + 64)):
        data = ctypes.create_string_buffer(ctypes.string_at(gm_lib.pgm_capi_pointer(), size), size + 64)
        ctypes.c_uint.from_buffer(data, 0).value = version
        ctypes.c_size_t.from_buffer(data, 8).value = struct_size
        monkeypatch.setattr(gm, "_C_API", new(ctypes.addressof(data), gm_lib.pgm_capi_name_pointer(), None))
        verdicts[version, struct_size - size] = (lib.capi_import_ok(msg, len(msg)),
                                                 capi_module.ffi.string(msg).decode())
    assert verdicts[3, 0] == (1, "") and verdicts[4, 64] == (1, ""), verdicts
    for key in ((2, -128), (3, -8)):
        ok, text = verdicts[key]
        assert ok == 0 and "older than this header's 3" in text and "upgrade pygomalloc" in text, verdicts


def test_extension_makes_uses_and_destroys_a_heap_through_the_capsule(capi_module: Any) -> None:
    """A compiled extension creates a heap with a limit through the capsule,
    allocates from it (until the limit), reads its statistics, visits it,
    makes it the thread's default heap around a malloc, and destroys it;
    Python sees the same heap meanwhile."""
    lib, cffi = capi_module.lib, capi_module.ffi
    limit = 1 << 20
    h = lib.capi_heap_new(b"capsule", limit)
    assert h != 0
    addrs, err = cffi.new("uintptr_t[]", 100), cffi.new("int *")
    assert lib.capi_heap_fill(h, 100, 1000, addrs, err) != 0
    objects, alloc, visited, lim = (cffi.new("uint64_t *") for _ in range(4))
    assert lib.capi_heap_figures(h, objects, alloc, visited, lim) == 0
    assert (objects[0], visited[0], lim[0]) == (100, 100, limit)
    assert alloc[0] == 100 * gm.usable_size(addrs[0])
    # Python sees the heap the extension made.
    heap = gm.Heap.of(addrs[0])
    assert heap is not None and heap.handle == h and heap.name == "capsule"
    assert heap.stats().objects == 100 and sorted(a for a, _ in heap.visit()) == sorted(addrs)
    assert all(ctypes.string_at(addrs[i], 1000) == bytes([i]) * 1000 for i in range(100))
    # Its limit fails its allocations, with ENOMEM; the default heap's go on.
    many = cffi.new("uintptr_t[]", 10000)
    assert lib.capi_heap_fill(h, 10000, 1000, many, err) == 0 and err[0] == errno.ENOMEM
    assert heap.stats().inuse <= limit
    d = gm.malloc(64)
    assert gm.Heap.of(d) is gm.default_heap()
    gm.free(d)
    # Freeing through the wrong heap is refused; destroy frees everything, once.
    other = lib.capi_heap_new(b"other", 0)
    assert lib.capi_heap_free(other, addrs[0]) == gm_lib.GM_ERR_NOT_OURS
    assert lib.capi_heap_free(h, addrs[0]) == 0
    assert lib.capi_heap_destroy(h) == 0  # 99 objects and more freed at once
    assert lib.capi_heap_destroy(h) == errno.EINVAL
    assert heap.closed and lib.capi_heap_figures(h, objects, alloc, visited, lim) == -1
    with pytest.raises(ValueError, match="closed"):
        heap.malloc(10)
    # A scope through the capsule: its malloc comes from the heap, which is
    # then not destroyed while that object lives.
    restored = cffi.new("int *")
    p = lib.capi_scoped_malloc(other, 64, restored)
    assert restored[0] == 1 and lib.capi_heap_of(p) == other
    assert lib.capi_heap_destroy(other) == errno.EBUSY
    assert lib.capi_heap_free(other, p) == 0
    assert lib.capi_heap_destroy(other) == 0
    gm.check_heap()


def test_import_leaves_pickle_to_the_program() -> None:
    """`import pygomalloc` (a sitecustomize's, before the program runs)
    imports neither tracemalloc nor, through it, pickle: a program that
    wants the pure-Python pickle (`sys.modules['_pickle'] = None` before
    its first `import pickle`, as pyperformance's unpickle_pure_python
    does) must still get it."""
    code = ("import sys, pygomalloc; sys.modules['_pickle'] = None; import pickle; "
            "print('tracemalloc' in sys.modules, pickle.Pickler.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "pickle"], out
