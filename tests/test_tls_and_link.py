"""The shapes of the shared objects: TLS models, linking, LD_PRELOAD.

One allocator per process: the core is libgomalloc.so alone.  The preload
shim and the cffi module hold no allocator; each has libgomalloc.so as its
DT_NEEDED, found through an $ORIGIN rpath.  libgomalloc.so may be dlopen()ed
(as the module's dependency), so it must not carry DF_STATIC_TLS
(initial-exec TLS), which fails with "cannot allocate memory in static TLS
block" once the static TLS surplus is used up.  The two libraries are never
unloaded (DF_1_NODELETE): dlclose() must not unmap the scavenger's code.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

import pygomalloc as gm
from pygomalloc import _gomalloc

PT_LOAD, PT_DYNAMIC, PT_TLS = 1, 2, 7
DT_NULL, DT_NEEDED, DT_STRTAB, DT_SONAME, DT_RPATH, DT_FLAGS, DT_RUNPATH = 0, 1, 5, 14, 15, 30, 29
DT_FLAGS_1 = 0x6FFFFFFB
DF_STATIC_TLS = 0x10
DF_1_NODELETE = 0x8


class ElfInfo(NamedTuple):
    has_tls: bool  # a PT_TLS segment: the object has thread-local variables
    static_tls: bool  # DF_STATIC_TLS: it needs initial-exec TLS
    needed: list[str]  # DT_NEEDED
    soname: str | None  # DT_SONAME
    runpath: list[str]  # DT_RUNPATH or DT_RPATH, split at ':'
    nodelete: bool  # DF_1_NODELETE in DT_FLAGS_1


def elf_info(path: str) -> ElfInfo:
    """Read the program headers and dynamic section of an ELF64 little-endian file."""
    data = Path(path).read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, f"{path}: not ELF64 LE"
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    headers = [struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize) for i in range(phnum)]
    loads = [(h[3], h[2], h[5]) for h in headers if h[0] == PT_LOAD]  # vaddr, offset, filesz

    def file_offset(vaddr: int) -> int:
        for start, offset, size in loads:
            if start <= vaddr < start + size:
                return vaddr - start + offset
        raise AssertionError(f"{path}: address {vaddr:#x} not in a PT_LOAD segment")

    dynamic: dict[int, list[int]] = {}
    for h in headers:
        if h[0] == PT_DYNAMIC:
            for pos in range(h[2], h[2] + h[5], 16):
                tag, value = struct.unpack_from("<qQ", data, pos)
                if tag == DT_NULL:
                    break
                dynamic.setdefault(tag, []).append(value)
    strtab = file_offset(dynamic[DT_STRTAB][0])

    def string(n: int) -> str:
        return data[strtab + n : data.index(b"\0", strtab + n)].decode()

    paths = dynamic.get(DT_RUNPATH, []) + dynamic.get(DT_RPATH, [])
    return ElfInfo(
        has_tls=any(h[0] == PT_TLS for h in headers),
        static_tls=bool(dynamic.get(DT_FLAGS, [0])[0] & DF_STATIC_TLS),
        needed=[string(n) for n in dynamic.get(DT_NEEDED, [])],
        soname=string(dynamic[DT_SONAME][0]) if DT_SONAME in dynamic else None,
        runpath=[p for n in paths for p in string(n).split(":")],
        nodelete=bool(dynamic.get(DT_FLAGS_1, [0])[0] & DF_1_NODELETE),
    )


def cffi_module_path() -> str:
    path = _gomalloc.__file__
    assert path is not None
    return path


def resolve_origin(runpath: str, obj: str) -> Path:
    return Path(runpath.replace("$ORIGIN", os.path.dirname(obj))).resolve()


def test_elf_parser_sees_static_tls(tmp_path: Path) -> None:
    # A library with initial-exec TLS: shows that the check below can fail.
    source = tmp_path / "ie.c"
    source.write_text("__thread int x __attribute__((tls_model(\"initial-exec\")));\n"
                      "int get(void) { return x; }\n")
    subprocess.run([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-O2", "-o",
                    str(tmp_path / "libie.so"), str(source)], check=True)
    info = elf_info(str(tmp_path / "libie.so"))
    assert info.has_tls and info.static_tls


def test_the_core_has_dynamic_tls_only() -> None:
    info = elf_info(gm.get_library())
    assert info.has_tls, "libgomalloc.so has no thread-local variables at all"
    assert not info.static_tls, "libgomalloc.so has DF_STATIC_TLS: it uses initial-exec TLS"


@pytest.mark.parametrize("which", ["cffi module", "preload shim"])
def test_the_module_and_the_shim_hold_no_allocator(which: str) -> None:
    """No TLS of the core, and libgomalloc.so as DT_NEEDED through an $ORIGIN
    rpath that leads to the package's own copy."""
    path = cffi_module_path() if which == "cffi module" else gm.get_preload_library()
    info = elf_info(path)
    assert not info.has_tls and not info.static_tls, info
    assert "libgomalloc.so" in info.needed, info
    assert [p for p in info.runpath if p.startswith("$ORIGIN")], info
    found = [resolve_origin(p, path) / "libgomalloc.so" for p in info.runpath]
    assert Path(gm.get_library()).resolve() in found, (info.runpath, gm.get_library())


def test_the_core_has_its_soname() -> None:
    assert elf_info(gm.get_library()).soname == "libgomalloc.so"


@pytest.mark.parametrize("getter", [gm.get_library, gm.get_preload_library])
def test_the_libraries_are_never_unloaded(getter) -> None:  # type: ignore[no-untyped-def]
    assert elf_info(getter()).nodelete, f"{getter()} lacks DF_1_NODELETE (-Wl,-z,nodelete)"


@pytest.mark.parametrize("getter", [gm.get_library, gm.get_preload_library])
def test_plain_libraries_do_not_depend_on_python(getter) -> None:  # type: ignore[no-untyped-def]
    needed = elf_info(getter()).needed
    assert needed and not any("python" in name for name in needed), needed


def dynamic_symbols(path: str) -> dict[str, str]:
    """The symbols an object defines (readelf): name -> version."""
    out = subprocess.run(["readelf", "-W", "--dyn-syms", path], capture_output=True, text=True,
                         check=True).stdout
    symbols = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[0][:-1].isdigit() and fields[6] != "UND" and fields[3] != "SECTION":
            name, _, version = fields[7].partition("@")
            if name:
                symbols[name] = version.lstrip("@")
    return symbols


def abi_tag() -> str:
    """csrc/build.mk: the symbol version is GOMALLOC_ and this."""
    header = Path(gm.get_include()) / "gomalloc.h"
    return hashlib.sha256(header.read_bytes()).hexdigest()[:12]


def test_the_core_exports_the_gm_api_alone_with_its_version() -> None:
    symbols = dynamic_symbols(gm.get_library())
    api = {name for name in symbols if name.startswith("gm_")}
    assert {"gm_malloc", "gm_free", "gm_owns", "gm_read_stats", "gm_free_owned"} <= api
    assert set(symbols) - api <= {f"GOMALLOC_{abi_tag()}"}, sorted(set(symbols) - api)
    assert {symbols[name] for name in api} == {f"GOMALLOC_{abi_tag()}"}


PRELOAD_FAMILY = [
    "malloc", "free", "calloc", "realloc", "reallocarray", "posix_memalign", "aligned_alloc",
    "memalign", "valloc", "pvalloc", "malloc_usable_size", "cfree", "free_sized",
    "free_aligned_sized", "malloc_trim", "mallinfo", "mallinfo2", "malloc_stats", "malloc_info",
    "mallopt",
]


def test_the_shim_exports_the_malloc_family_and_no_allocator() -> None:
    symbols = dynamic_symbols(gm.get_preload_library())
    assert set(PRELOAD_FAMILY) <= set(symbols), sorted(set(PRELOAD_FAMILY) - set(symbols))
    assert not [name for name in symbols if name.startswith("gm_")], symbols


def run_python(code: str, **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def, type-arg]
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
        **kwargs,
    )


def test_import_after_loading_the_plain_library_globally() -> None:
    result = run_python(
        f"""
        import ctypes
        ctypes.CDLL({gm.get_library()!r}, mode=ctypes.RTLD_GLOBAL)
        import pygomalloc
        blocks = [pygomalloc.malloc(n) for n in range(0, 50_000, 97)]
        for p in blocks:
            pygomalloc.free(p)
        pygomalloc.check_heap()
        print("ok")
        """
    )
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr


C_PROGRAM = r"""
#include <gomalloc.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define N 200
#define CHECK(cond) do { if (!(cond)) { printf("failed: %s (line %d)\n", #cond, __LINE__); return 1; } } while (0)

static void *worker(void *arg)
{
    void *p[N];
    (void)arg;
    for (int i = 0; i < N; i++) {
        p[i] = gm_malloc(16 * (size_t)i + 1);
        if (p[i] == NULL)
            return (void *)1;
        memset(p[i], i, 16 * (size_t)i + 1);
    }
    for (int i = 0; i < N; i++)
        gm_free(p[i]);
    return NULL;
}

int main(void)
{
    struct gm_stats before = {.size = sizeof before}, during = {.size = sizeof during},
        after = {.size = sizeof after};
    void *p[N];
    void *result = (void *)1;
    pthread_t thread;

    gm_thread_flush();
    CHECK(gm_read_stats(&before) == 0);
    for (int i = 0; i < N; i++) {
        size_t size = 37 * (size_t)i + 1;
        p[i] = gm_malloc(size);
        CHECK(p[i] != NULL);
        CHECK(gm_owns(p[i]));
        CHECK(gm_usable_size(p[i]) >= size);
        memset(p[i], i, size);
    }
    unsigned char *zeroed = gm_calloc(1024, 1024);
    CHECK(zeroed != NULL && zeroed[0] == 0 && zeroed[1024 * 1024 - 1] == 0);

    CHECK(pthread_create(&thread, NULL, worker, NULL) == 0);
    CHECK(pthread_join(thread, &result) == 0 && result == NULL);

    gm_thread_flush();
    CHECK(gm_read_stats(&during) == 0);
    CHECK(during.mallocs - before.mallocs >= N + 1 + N);
    CHECK(during.heap_objects == before.heap_objects + N + 1);
    CHECK(during.large_objects == before.large_objects + 1);

    for (int i = 0; i < N; i++)
        gm_free(p[i]);
    gm_free(zeroed);
    CHECK(gm_free_checked(p[1]) == GM_ERR_NOT_ALLOCATED);
    CHECK(gm_free_checked(&before) == GM_ERR_NOT_OURS);
    CHECK(!gm_owns(&before));

    gm_thread_flush();
    CHECK(gm_read_stats(&after) == 0);
    CHECK(after.heap_objects == before.heap_objects);
    CHECK(after.frees - before.frees == after.mallocs - before.mallocs);
    CHECK(gm_check_heap() == 0);
    printf("ok\n");
    return 0;
}
"""


def cli_flags(*options: str) -> list[str]:
    result = subprocess.run([sys.executable, "-m", "pygomalloc", *options], capture_output=True,
                            check=True, text=True, timeout=120)
    return result.stdout.split()


def compile_and_run(tmp_path: Path, flags: list[str]) -> None:
    """Build C_PROGRAM with *flags* and run it as it is: no LD_LIBRARY_PATH."""
    source = tmp_path / "prog.c"
    source.write_text(C_PROGRAM)
    program = tmp_path / "prog"
    cc = shlex.split(os.environ.get("CC", "cc"))
    subprocess.run([*cc, "-std=c11", "-O2", "-Wall", "-Werror", "-pthread", str(source), "-o",
                    str(program), *flags], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
    result = subprocess.run([str(program)], env=env, capture_output=True, check=False, text=True,
                            timeout=120)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stdout + result.stderr


def test_c_program_links_with_the_printed_flags(tmp_path: Path) -> None:
    flags = cli_flags("--cflags", "--libs")
    assert flags == cli_flags("--cflags") + cli_flags("--libs")
    libdir = os.path.dirname(gm.get_library())
    assert f"-Wl,-rpath,{libdir}" in flags and "-lgomalloc" in flags, flags
    compile_and_run(tmp_path, flags)


def test_c_program_links_with_pkg_config(tmp_path: Path) -> None:
    pkg_config = shutil.which("pkg-config")
    if pkg_config is None:
        pytest.skip("pkg-config is not installed")
    env = {**os.environ, "PKG_CONFIG_PATH": " ".join(cli_flags("--pkgconfig-path"))}
    result = subprocess.run([pkg_config, "--cflags", "--libs", "gomalloc"], env=env,
                            capture_output=True, check=True, text=True)
    version = subprocess.run([pkg_config, "--modversion", "gomalloc"], env=env,
                             capture_output=True, check=True, text=True).stdout.strip()
    assert version == gm.__version__
    compile_and_run(tmp_path, result.stdout.split())


def test_unknown_cli_flags_are_refused() -> None:
    result = subprocess.run([sys.executable, "-m", "pygomalloc", "--cflags", "--nope"],
                            capture_output=True, check=False, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""


def preloaded_env() -> dict[str, str]:
    return {**os.environ, "LD_PRELOAD": gm.get_preload_library()}


@pytest.mark.parametrize(
    "command",
    [
        ["/bin/true"],
        ["ls", "-l", "/"],
        ["sh", "-c", "echo hello | tr a-z A-Z | cat"],
        ["sort", "/proc/self/maps"],
    ],
    ids=["true", "ls", "pipeline", "sort"],
)
def test_programs_run_under_ld_preload(command: list[str]) -> None:
    result = subprocess.run(
        command, env=preloaded_env(), capture_output=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_python_runs_under_ld_preload_with_our_malloc() -> None:
    result = run_python(
        f"""
        import ctypes, json, threading
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        gm = ctypes.CDLL({gm.get_preload_library()!r})  # the preloaded instance
        gm.gm_owns.argtypes = [ctypes.c_void_p]
        p = libc.malloc(100)
        assert gm.gm_owns(p) == 1, "malloc is not pygomalloc's"
        libc.free(p)

        def churn():
            data = [bytes(n) * 3 for n in range(0, 20000, 7)]
            json.dumps([len(d) for d in data])
        threads = [threading.Thread(target=churn) for _ in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        # join() returns before an exiting thread has handed its cache back
        # (a pthread key destructor): wait for that, so that the heap check
        # sees a quiescent heap.  num_threads is the 22nd field of gm_stats,
        # after size, which the caller sets (gm_read_stats fills no more).
        import time
        stats = (ctypes.c_uint64 * 2048)()
        deadline = time.monotonic() + 10
        while True:
            stats[0] = ctypes.sizeof(stats)
            assert gm.gm_read_stats(stats) == 0
            if stats[21] <= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert stats[21] <= 1, stats[21]
        assert gm.gm_check_heap() == 0
        print("ok")
        """,
        env=preloaded_env(),
    )
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr


def test_fork_while_threads_allocate_under_ld_preload() -> None:
    result = run_python(
        """
        import os, threading
        stop = threading.Event()
        def churn():
            while not stop.is_set():
                blocks = [bytearray(n) for n in range(600, 60000, 600)]
                del blocks
        threads = [threading.Thread(target=churn) for _ in range(3)]
        for t in threads: t.start()
        for _ in range(20):
            pid = os.fork()
            if pid == 0:
                data = [bytearray(n) for n in range(600, 60000, 600)]
                os._exit(0 if len(data) == 99 else 1)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, status
        stop.set()
        for t in threads: t.join()
        print("ok")
        """,
        env=preloaded_env(),
    )
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr


def test_cli_run_uses_the_preload_library() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pygomalloc",
            "run",
            "--",
            "sh",
            "-c",
            'echo "$LD_PRELOAD $GOMALLOC_PRINT_STATS"',
        ],
        env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"},
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [gm.get_preload_library(), "1"]


def test_cli_run_passes_the_exit_status_on() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pygomalloc", "run", "--no-stats", "--", "sh", "-c", "exit 3"],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 3


# --------------------------------------------------------------------------
# The fast paths' TLS variant (malloc.c, "the calling thread's mcache")

TLS_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <gomalloc.h>
int main(void) {
    for (int i = 0; i < 1000; i++) {
        void *p = USE_GM ? gm_malloc(64) : malloc(64);
        if (p == NULL)
            return 1;
        if (USE_GM) gm_free(p); else free(p);
    }
    puts("ok");
    return 0;
}
"""


def functions_run(cmd: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> set[str]:
    """The functions that ran in cmd, from a callgrind profile."""
    out = tmp_path / "callgrind.out"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
                   check=True, capture_output=True, env=env, timeout=120)
    names = set()
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith(("fn=", "cfn=")) and ")" in line:
            names.add(line.split(")", 1)[1].strip())
    return names


@pytest.mark.parametrize("how", ["linked", "preloaded"])
def test_a_core_loaded_at_start_up_reads_the_mcache_at_a_fixed_offset(how: str, tmp_path: Path) -> None:
    """Loaded at start-up, libgomalloc.so's TLS is in the static block: the
    IFUNCs pick the variants that read the mcache pointer as initial-exec
    code does (no TLS descriptor call), linked or under the preload shim."""
    source = tmp_path / "prog.c"
    source.write_text(TLS_PROGRAM)
    libdir = os.path.dirname(gm.get_library())
    cmd = [os.environ.get("CC", "cc"), "-O1", f"-DUSE_GM={int(how == 'linked')}",
           f"-I{gm.get_include()}", "-o", str(tmp_path / "prog"), str(source)]
    if how == "linked":
        cmd += [f"-L{libdir}", "-lgomalloc", f"-Wl,-rpath,{libdir}"]
    subprocess.run(cmd, check=True)
    env = dict(os.environ)
    if how == "preloaded":
        env["LD_PRELOAD"] = gm.get_preload_library()
    names = functions_run([str(tmp_path / "prog")], tmp_path, env)
    assert {"gm_malloc_fixed", "gm_free_fixed"} <= names, sorted(n for n in names if n.startswith("gm_"))
    assert not {"gm_malloc_desc", "gm_free_desc"} & names


def test_install_calls_the_core_straight_and_one_tls_variant(tmp_path: Path) -> None:
    """install(): the interpreter calls gm_py_malloc/gm_py_free themselves
    (no wrapper of the cffi module between), and calloc/realloc's own
    mallocs and frees take the variant the installer's loader resolved,
    the same as gm_py_malloc's.  Which one depends on where glibc put the
    dlopen'ed core's TLS (the static surplus: fixed; else desc); with
    Debian's and pyenv's 3.11 it is the fixed one."""
    script = ("import pygomalloc; pygomalloc.install()\n"
              "x = [str(i) * 3 for i in range(20000)]\n"
              "s = ''\n"
              "for i in range(3000): s += 'abc'\n"
              "l = []\n"
              "for i in range(20000): l.append(i)\n")
    names = functions_run([sys.executable, "-c", script], tmp_path)
    gm_names = sorted(n for n in names if n.startswith(("gm_", "pgm_py_")))
    assert not any(n.startswith("pgm_py_") for n in gm_names), gm_names
    variants = {n.rsplit("_", 1)[1] for n in gm_names if n.endswith(("_fixed", "_desc"))}
    assert len(variants) == 1, gm_names
    variant = variants.pop()
    assert f"gm_py_malloc_{variant}" in names, gm_names
    # (gm_py_realloc_gil_*: the mem and obj domains of a build with a GIL)
    assert {f"gm_py_realloc_{variant}", f"gm_py_realloc_gil_{variant}"} & names, gm_names
