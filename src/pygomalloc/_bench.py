"""Side-by-side allocator benchmarks: ``python -m pygomalloc bench``.

The workloads are small C programs (``bench/drivers/*.c`` in a source
checkout, ``pygomalloc/_bench_drivers/`` in an installed package) that use
nothing but libc's malloc/free/realloc and pthreads.  This module compiles
them with the system C compiler into a cache directory, then runs every
workload under every allocator it can find:

* ``glibc``: the C library's own malloc (no preload);
* ``pygomalloc``: its ``LD_PRELOAD`` library;
* ``jemalloc``, ``tcmalloc``, ``mimalloc``: the Debian packages' libraries,
  through ``LD_PRELOAD`` (``bench/setup_peers.sh`` installs them).

Each run is a separate process.  Candidates alternate (A B C A B C ...) so
that slow drifts of the machine (thermal, noisy neighbours) spread evenly
over them.  For each workload and candidate the table shows the median of the
times the driver measured itself (its timed region excludes process start-up
and the dynamic loader) divided by glibc's median, and the largest peak RSS
of the runs (the driver's ``ru_maxrss``, read by a small C launcher that
forks it: see ``run_once`` for why not from Python).  The drivers' checksums are
deterministic, so the runner also checks that every allocator produced the
same one: an allocator that corrupts or loses data fails loudly instead of
posting a fast time.

This module imports nothing from the package at module level, so it can be
loaded on its own (by ``bench/callgrind_fastpath.py`` and the pytest
benchmarks) even when pygomalloc's compiled extension is not built.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = [
    "Candidate",
    "RunResult",
    "Workload",
    "WORKLOADS",
    "build_drivers",
    "candidate_env",
    "default_threads",
    "discover_candidates",
    "find_pygomalloc_lib",
    "main",
    "run_once",
]

# --------------------------------------------------------------------------
# Workloads

#: Compiler flags for the drivers (they must build warning-free with these).
CFLAGS = ("-O2", "-std=c11", "-Wall", "-Wextra", "-pthread")


@dataclasses.dataclass(frozen=True)
class Workload:
    """One row of the table: a driver and its arguments.

    ``quick`` and ``full`` are argument lists for the two modes; the string
    ``{threads}`` in them is replaced by the thread count.  Iteration counts
    were chosen so that a quick run takes roughly 0.1-0.4 s under glibc on a
    2-core machine, and a full run about five times that.
    """

    name: str
    driver: str
    description: str
    quick: Tuple[str, ...]
    full: Tuple[str, ...]
    #: Extra arguments for the floor run: the same work with malloc and free
    #: taken out of the loop (see FLOOR), for the workloads where the
    #: allocator is a small part of the time, so that a reader can see how
    #: close to the best possible every allocator is.
    floor: Tuple[str, ...] = ()
    #: The allocators that can run it (empty: all); the others' cells say n/a.
    only: Tuple[str, ...] = ()
    #: The workload whose baseline cell this row's ratios are taken against,
    #: for a row the baseline cannot run (graphs_destroy: glibc's graphs).
    ratio_to: str = ""

    def runs_under(self, allocator: str) -> bool:
        return not self.only or allocator in self.only

    def args(self, full: bool = False, threads: Optional[int] = None) -> List[str]:
        t = str(threads if threads is not None else default_threads())
        return [a.replace("{threads}", t) for a in (self.full if full else self.quick)]


def _w(name: str, driver: str, description: str, quick: str, full: str,
       floor: str = "", only: Tuple[str, ...] = (), ratio_to: str = "") -> Workload:
    return Workload(name, driver, description, tuple(quick.split()), tuple(full.split()),
                    tuple(floor.split()), only, ratio_to)


#: The name under which a workload's floor run is kept in the results.
FLOOR = "(no malloc)"


WORKLOADS: Tuple[Workload, ...] = (
    _w("larson", "larson",
       "server churn, slot arrays handed between threads (cross-thread frees)",
       "--threads {threads} --iters 2000000 --slots 10000 --rounds 10",
       "--threads {threads} --iters 10000000 --slots 10000 --rounds 20"),
    _w("turnover", "turnover",
       "larson-style churn, each worker thread replaced by a new one after 2000 ops",
       "--threads {threads} --ops 1000000 --lifetime 2000 --live 1000",
       "--threads {threads} --ops 5000000 --lifetime 2000 --live 1000"),
    _w("turnover_100", "turnover",
       "the same with a new thread every 100 ops: thread birth and death dominate",
       "--threads {threads} --ops 100000 --lifetime 100 --live 1000",
       "--threads {threads} --ops 500000 --lifetime 100 --live 1000"),
    _w("xmalloc", "xmalloc",
       "producer threads malloc, consumer threads free, through a queue",
       "--threads {threads} --iters 1000000",
       "--threads {threads} --iters 5000000"),
    _w("cache_scratch", "cache_scratch",
       "passive false sharing: objects handed out by main, reused by workers",
       "--threads {threads} --iters 400000 --writes 50",
       "--threads {threads} --iters 2000000 --writes 50", floor="--malloc 0"),
    _w("cache_thrash", "cache_thrash",
       "active false sharing: each thread allocates and writes small objects",
       "--threads {threads} --iters 400000 --writes 50",
       "--threads {threads} --iters 2000000 --writes 50", floor="--malloc 0"),
    _w("alloc_test", "alloc_test",
       "random-size churn (16 B-16 KiB, skewed small) over a live set, some reallocs",
       "--threads {threads} --iters 2000000 --live 10000",
       "--threads {threads} --iters 10000000 --live 10000"),
    _w("malloc_large", "malloc_large",
       "64 KiB-8 MiB blocks, small live set, every page touched",
       "--threads 1 --iters 1000 --live 8",
       "--threads 1 --iters 5000 --live 8"),
    _w("shbench", "shbench",
       "mixed small sizes (mostly 1-100 B), batches freed in shuffled order",
       "--threads {threads} --iters 4000000 --batch 1000",
       "--threads {threads} --iters 20000000 --batch 1000"),
    _w("mleak", "mleak",
       "a heap that only grows: mixed 8 B-1 KiB objects, written, 1 in 50 freed",
       "--threads {threads} --mib 100 --free-every 50",
       "--threads {threads} --mib 400 --free-every 50"),
    _w("pyprofile", "pyprofile",
       "CPython-like: 16-512 B objects (mostly 32-64 B), power-law lifetimes",
       "--threads 1 --iters 5000000",
       "--threads 1 --iters 25000000"),
    _w("fastpath", "fastpath",
       "hot path: malloc+free of a 64 B object, LIFO, one thread",
       "64 20000000 lifo",
       "64 100000000 lifo"),
    _w("graphs", "graphs",
       "short-lived object graphs (3000-node documents: mixed sizes, strings), freed block by block",
       "--threads {threads} --docs 200 --nodes 3000",
       "--threads {threads} --docs 1000 --nodes 3000"),
    _w("graphs_destroy", "graphs",
       "the same documents, each in a heap of its own dropped by gm_heap_destroy (vs glibc's graphs)",
       "--threads {threads} --docs 200 --nodes 3000 --destroy 1",
       "--threads {threads} --docs 1000 --nodes 3000 --destroy 1",
       only=("pygomalloc",), ratio_to="graphs"),
)

#: The figure of issue 11: destroying a heap of a million small objects
#: against freeing them one by one (the graphs driver's --million mode,
#: pygomalloc only), printed under the table when graphs_destroy runs.
MILLION = _w("heap_destroy_1m", "graphs",
             "1,000,000 objects of 16-256 B: free() one by one vs gm_heap_destroy",
             "--million 1000000 --rounds 5", "--million 1000000 --rounds 9",
             only=("pygomalloc",))

#: Workloads run in Python rather than by a C driver: name -> description.
#: ``numpy`` (src/pygomalloc/_npbench.py) runs in a child interpreter, numpy's
#: default data allocator and pygomalloc.numpy's alternating in it.
PY_WORKLOADS: Dict[str, str] = {
    "numpy": "many temporary numpy arrays (elementwise ops, slicing, concatenation): "
             "numpy's default allocator vs pygomalloc.numpy",
}

DRIVERS: Tuple[str, ...] = tuple(sorted({w.driver for w in WORKLOADS} | {MILLION.driver}))

#: The launcher that runs each driver and reports its peak RSS (runwait.c).
LAUNCHER = "runwait"


def default_threads() -> int:
    """Threads for the multi-threaded workloads: the usable CPUs, 2 to 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 2
    return max(2, min(n, 8))


# --------------------------------------------------------------------------
# Finding and building the drivers


def repo_root() -> Optional[Path]:
    """The source checkout this module lives in, if it is one."""
    root = Path(__file__).resolve().parents[2]
    if (root / "bench" / "drivers" / "bench_common.h").is_file():
        return root
    return None


def driver_source_dir() -> Path:
    """``bench/drivers`` in a checkout, else the package-data copy."""
    root = repo_root()
    if root is not None:
        return root / "bench" / "drivers"
    packaged = Path(__file__).resolve().parent / "_bench_drivers"
    if (packaged / "bench_common.h").is_file():
        return packaged
    raise FileNotFoundError(
        "benchmark driver sources not found: neither bench/drivers in a source "
        f"checkout nor {packaged}")


def cache_dir() -> Path:
    """Where compiled drivers are kept: $XDG_CACHE_HOME/pygomalloc/bench."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = Path(base) / "pygomalloc" / "bench"
    try:
        d.mkdir(parents=True, exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    d = Path(tempfile.gettempdir()) / f"pygomalloc-bench-{os.getuid()}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _compiler_identity(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0] if out.stdout else cc
    except (OSError, subprocess.SubprocessError):
        raise RuntimeError(f"C compiler {cc!r} not found: install gcc (or set CC)") from None


def build_drivers(names: Optional[Iterable[str]] = None, cc: Optional[str] = None,
                  log=None) -> Dict[str, Path]:
    """Compile the named drivers (default: all) and return name -> binary.

    The launcher (``LAUNCHER``) is always built and included.

    A binary's file name carries a hash of its source, the shared header, the
    compiler's identity and the flags, so a changed source (or compiler) is
    rebuilt and an unchanged one is reused.  Builds go to a temporary name and
    are renamed into place, so concurrent runs do not see half-written files.
    """
    cc = cc or os.environ.get("CC") or "cc"
    src_dir = driver_source_dir()
    out_dir = cache_dir()
    common = (src_dir / "bench_common.h").read_bytes()
    ident = _compiler_identity(cc)
    binaries: Dict[str, Path] = {}
    wanted = sorted(set(names if names is not None else DRIVERS) | {LAUNCHER})
    for name in wanted:
        src = src_dir / f"{name}.c"
        h = hashlib.sha256()
        for part in (src.read_bytes(), common, ident.encode(), " ".join(CFLAGS).encode()):
            h.update(hashlib.sha256(part).digest())
        binary = out_dir / f"{name}-{h.hexdigest()[:16]}"
        if not binary.is_file():
            if log:
                log(f"compiling {src.name}")
            fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=out_dir)
            os.close(fd)
            cmd = [cc, *CFLAGS, "-I", str(src_dir), "-o", tmp, str(src)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                os.unlink(tmp)
                raise RuntimeError(f"compiling {src} failed:\n{' '.join(cmd)}\n{proc.stderr}")
            if proc.stderr.strip() and log:
                log(f"compiler warnings for {src.name}:\n{proc.stderr.rstrip()}")
            os.chmod(tmp, 0o755)
            os.replace(tmp, binary)
            # Drop binaries built from older versions of this source.
            for old in out_dir.glob(f"{name}-*"):
                if old != binary and len(old.name) == len(binary.name):
                    try:
                        old.unlink()
                    except OSError:
                        pass
        binaries[name] = binary
    return binaries


# --------------------------------------------------------------------------
# Finding the allocators

#: Debian packages and the library files they install, per peer allocator.
PEERS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "jemalloc": ("libjemalloc2", ("libjemalloc.so.2",)),
    "tcmalloc": ("libtcmalloc-minimal4", ("libtcmalloc_minimal.so.4",)),
    "mimalloc": ("libmimalloc2.0", ("libmimalloc.so.2",)),
}

#: Every allocator name the runner knows, in table order.
ALLOCATORS: Tuple[str, ...] = ("glibc", "pygomalloc", *PEERS)

PYGOMALLOC_LIB_ENV = "GOMALLOC_PRELOAD_LIB"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """An allocator to benchmark: a name and the library to preload (if any)."""

    name: str
    preload: Optional[str]
    origin: str = ""  # where the library was found, for the header


def _library_dirs() -> List[Path]:
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{os.uname().machine}-linux-gnu"
    dirs = [f"/usr/lib/{multiarch}", f"/lib/{multiarch}", "/usr/lib64", "/usr/lib",
            "/usr/local/lib"]
    return [Path(d) for d in dirs]


def find_peer_library(name: str) -> Optional[Path]:
    """The shared library of a peer allocator, or None if not installed."""
    _, files = PEERS[name]
    for d in _library_dirs():
        for f in files:
            p = d / f
            if p.is_file():
                return p
    return None


def find_pygomalloc_lib(explicit: Optional[str] = None) -> Tuple[Optional[Path], str]:
    """Locate pygomalloc's LD_PRELOAD library.

    Tried in order: ``explicit`` (the ``--pygomalloc-lib`` argument), the
    environment variable GOMALLOC_PRELOAD_LIB, ``pygomalloc.get_preload_library()``
    if the package imports, and ``csrc/build/libgomalloc_preload.so`` in the
    source checkout.  A path given explicitly (argument or environment) is
    used or reported missing, never silently replaced by another one.

    Returns ``(path, how_found)``; ``path`` is None when there is none, and
    ``how_found`` then says why.
    """
    for value, origin in ((explicit, "--pygomalloc-lib"),
                          (os.environ.get(PYGOMALLOC_LIB_ENV), PYGOMALLOC_LIB_ENV)):
        if value:
            p = Path(value).expanduser()
            if p.is_file():
                return p.resolve(), origin
            return None, f"{origin} names {value}, which does not exist"
    tried = []
    try:  # imported lazily: the compiled extension may not be built
        import pygomalloc  # type: ignore[import-not-found]

        get = getattr(pygomalloc, "get_preload_library", None)
        if get is not None:
            p = Path(get())
            if p.is_file():
                return p.resolve(), "pygomalloc.get_preload_library()"
            tried.append(f"pygomalloc.get_preload_library() returned missing {p}")
        else:
            tried.append("pygomalloc has no get_preload_library()")
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        tried.append(f"import pygomalloc failed ({type(exc).__name__}: {exc})")
    root = repo_root()
    if root is not None:
        p = root / "csrc" / "build" / "libgomalloc_preload.so"
        if p.is_file():
            return p.resolve(), "source checkout (make -C csrc)"
        tried.append(f"{p} not built (run make -C csrc)")
    return None, "; ".join(tried) or "not found"


def discover_candidates(selected: Optional[Sequence[str]] = None,
                        pygomalloc_lib: Optional[str] = None,
                        strict: bool = False,
                        ) -> Tuple[List[Candidate], List[str]]:
    """The allocators to run, and messages about the ones skipped.

    ``selected`` is a list of names from ALLOCATORS, or ``name=/path/lib.so``
    for any other preloadable allocator; default: all known ones.  An unknown
    name raises ValueError.  With ``strict`` (the allocators were named by
    the user), one that cannot be run raises LookupError instead of being
    skipped; so does a pygomalloc library named explicitly (``pygomalloc_lib``
    or $GOMALLOC_PRELOAD_LIB) that does not exist, strict or not.
    """
    names = list(selected) if selected else list(ALLOCATORS)
    found: List[Candidate] = []
    skipped: List[str] = []

    def unavailable(message: str, explicit: bool = False) -> None:
        if strict or explicit:
            raise LookupError(f"allocator {message}")
        skipped.append(message)

    labels = [n.split("=", 1)[0] for n in names]
    twice = sorted({n for n in labels if labels.count(n) > 1})
    if twice:
        raise ValueError(f"allocator(s) named more than once: {', '.join(twice)}")
    for name in names:
        if "=" in name:
            label, path = name.split("=", 1)
            if not label or not path:
                raise ValueError(f"bad allocator {name!r}: give name=/path/to/lib.so")
            if Path(path).is_file():
                found.append(Candidate(label, str(Path(path).resolve()), "given"))
            else:
                unavailable(f"{label}: {path} does not exist", explicit=True)
        elif name == "glibc":
            found.append(Candidate("glibc", None, "the C library"))
        elif name == "pygomalloc":
            path, how = find_pygomalloc_lib(pygomalloc_lib)
            if path is None:
                explicit = bool(pygomalloc_lib or os.environ.get(PYGOMALLOC_LIB_ENV))
                unavailable(f"pygomalloc: {'skipped, ' if not (strict or explicit) else ''}"
                            f"preload library not found: {how}", explicit)
            else:
                found.append(Candidate("pygomalloc", str(path), how))
        elif name in PEERS:
            lib = find_peer_library(name)
            if lib is None:
                unavailable(f"{name}: {'' if strict else 'skipped, '}not installed (apt-get "
                            f"install {PEERS[name][0]}, or run bench/setup_peers.sh)")
            else:
                found.append(Candidate(name, str(lib), PEERS[name][0]))
        else:
            raise ValueError(f"unknown allocator {name!r}: choose from {', '.join(ALLOCATORS)} "
                             "or give name=/path/to/lib.so")
    return found, skipped


def candidate_env(cand: Candidate, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment to run a driver under ``cand``: LD_PRELOAD set or cleared."""
    env = dict(os.environ if base is None else base)
    env.pop("LD_PRELOAD", None)
    if cand.preload:
        env["LD_PRELOAD"] = cand.preload
    return env


# --------------------------------------------------------------------------
# Running


@dataclasses.dataclass
class RunResult:
    """One process run of a driver."""

    ok: bool
    seconds: float = 0.0  # the driver's own timed region
    wall: float = 0.0  # fork to exit, as seen by the runner
    ops: int = 0
    checksum: str = ""
    maxrss_kib: int = 0
    error: str = ""
    fields: Dict[str, str] = dataclasses.field(default_factory=dict)


def parse_result_line(stdout: str) -> Dict[str, str]:
    """The key=value fields of the driver's single RESULT line."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if len(lines) != 1:
        raise ValueError(f"expected one RESULT line, got {len(lines)}: {stdout[-300:]!r}")
    fields = {}
    for tok in lines[0].split()[1:]:
        k, sep, v = tok.partition("=")
        if not sep:
            raise ValueError(f"malformed RESULT field {tok!r}")
        fields[k] = v
    for k in ("workload", "threads", "ops", "seconds", "ops_per_sec", "checksum"):
        if k not in fields:
            raise ValueError(f"RESULT line lacks {k}=")
    return fields


def _parse_rusage(stdout: str) -> Dict[str, str]:
    for line in stdout.splitlines():
        if line.startswith("RUSAGE "):
            return dict(tok.partition("=")[::2] for tok in line.split()[1:])
    return {}


def run_once(binaries: Dict[str, Path], driver: str, args: Sequence[str], cand: Candidate,
             timeout: float = 300.0) -> RunResult:
    """Run one driver process under ``cand``; collect its result and peak RSS.

    The driver is started through the ``runwait`` launcher (see
    bench/drivers/runwait.c): a driver forked straight from Python would
    report at least Python's own RSS as its ru_maxrss, because Linux carries
    the pre-exec address space's high-water mark across execve.  The launcher
    forks the driver from its own small address space, sets LD_PRELOAD for it
    alone, and reports the driver's ru_maxrss (KiB) after reaping it.  The
    launcher runs in its own session so that a timeout kills both.
    """
    env = candidate_env(Candidate("glibc", None))  # no preload for the launcher
    cmd = [str(binaries[LAUNCHER])]
    if cand.preload:
        cmd += ["--preload", cand.preload]
    cmd += ["--", str(binaries[driver]), *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        # A timer thread enforces the timeout, so that the wait itself is a
        # blocking waitpid: Popen.wait(timeout) polls with sleeps of up to
        # 50 ms, which would quantise the wall times pytest-benchmark takes.
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            proc.wait()
        except BaseException:  # Ctrl-C: the driver runs in its own session, out of its reach
            kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")

    ru = _parse_rusage(stdout)
    res = RunResult(ok=False, wall=wall, maxrss_kib=int(ru.get("maxrss_kib", 0)))
    if timed_out.is_set():
        res.error = f"timed out after {timeout:.0f} s"
        return res
    if not ru:
        res.error = f"launcher failed (exit status {proc.returncode}): {stderr.strip()[-500:]}"
        return res
    sig = int(ru.get("signal", 0))
    if sig or proc.returncode != 0:
        how = (f"killed by signal {sig} ({signal.strsignal(sig)})" if sig
               else f"exit status {proc.returncode}")
        res.error = f"{how}: {stderr.strip()[-500:]}"
        return res
    # ld.so reports a preload it could not load on stderr and carries on with
    # glibc: that run would be measuring the wrong allocator.
    if "cannot be preloaded" in stderr or "ERROR: ld.so" in stderr:
        res.error = f"LD_PRELOAD failed: {stderr.strip()[-300:]}"
        return res
    try:
        fields = parse_result_line(stdout)
        res.seconds = float(fields["seconds"])
        res.ops = int(fields["ops"])
        res.checksum = fields["checksum"]
        res.fields = fields
    except ValueError as exc:
        res.error = str(exc)
        return res
    if res.ops <= 0 or int(res.checksum, 16) == 0:
        res.error = "driver reported no work (zero ops or checksum)"
        return res
    res.ok = True
    return res


@dataclasses.dataclass
class Cell:
    """All runs of one workload under one allocator."""

    runs: List[RunResult] = dataclasses.field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.runs) and all(r.ok for r in self.runs)

    @property
    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def maxrss_mib(self) -> float:
        return max(r.maxrss_kib for r in self.runs) / 1024.0


def run_suite(workloads: Sequence[Workload], cands: Sequence[Candidate],
              binaries: Dict[str, Path], repeat: int, full: bool, threads: int,
              timeout: float, log=None) -> Dict[str, Dict[str, Cell]]:
    """Run every workload under every candidate, ``repeat`` times, alternating.

    A workload with a floor also runs its floor (no preload, malloc taken
    out of the loop) in the rotation, kept under the name FLOOR."""
    results: Dict[str, Dict[str, Cell]] = {}
    for w in workloads:
        args = w.args(full, threads)
        runs = [(c, args) for c in cands if w.runs_under(c.name)]
        if w.floor:
            runs.append((Candidate(FLOOR, None, "no allocator in the loop"), args + list(w.floor)))
        cells = {c.name: Cell() for c, _ in runs}
        t0 = time.perf_counter()
        for _ in range(repeat):
            for c, c_args in runs:
                if cells[c.name].error:
                    continue  # a failed allocator is not run again on this workload
                r = run_once(binaries, w.driver, c_args, c, timeout)
                cells[c.name].runs.append(r)
                if not r.ok:
                    cells[c.name].error = r.error
        _check_checksums(cells)
        results[w.name] = cells
        if log:
            summary = "  ".join(
                f"{n}={cell.median:.3f}s" if cell.ok else f"{n}=FAILED"
                for n, cell in cells.items())
            log(f"{w.name:<14} {time.perf_counter() - t0:5.1f}s  {summary}")
    return results


def _check_checksums(cells: Dict[str, Cell]) -> None:
    """Every run of a workload must produce the same checksum (the drivers are
    deterministic).  The value most allocators agree on (glibc's on a tie) is
    taken as right; cells that disagree are marked failed."""
    votes: Dict[str, int] = {}
    for cell in cells.values():
        for r in cell.runs:
            if r.ok:
                votes[r.checksum] = votes.get(r.checksum, 0) + 1
    if len(votes) <= 1:
        return
    glibc = cells.get("glibc")
    ref_glibc = glibc.runs[0].checksum if glibc and glibc.runs and glibc.runs[0].ok else None
    reference = max(votes, key=lambda k: (votes[k], k == ref_glibc))
    for cell in cells.values():
        bad = {r.checksum for r in cell.runs if r.ok and r.checksum != reference}
        if bad:
            cell.error = (f"checksum mismatch: got {', '.join(sorted(bad))}, "
                          f"others agree on {reference}")


# --------------------------------------------------------------------------
# Reporting


def machine_info(cands: Sequence[Candidate]) -> Dict[str, str]:
    """The facts a reader needs to judge the figures."""
    info: Dict[str, str] = {}
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    info["machine"] = f"{cpu}, nproc {usable} ({os.cpu_count()} online), {os.uname().machine}"
    info["kernel"] = os.uname().release
    try:
        info["glibc"] = os.confstr("CS_GNU_LIBC_VERSION") or "unknown"
    except (ValueError, OSError, AttributeError):
        info["glibc"] = "unknown"
    pkgs = [PEERS[c.name][0] for c in cands if c.name in PEERS]
    if pkgs:
        try:
            out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", *pkgs],
                                 capture_output=True, text=True, timeout=30)
            info["peers"] = ", ".join(out.stdout.split("\n")[:-1]) or "unknown"
        except (OSError, subprocess.SubprocessError):
            info["peers"] = "dpkg-query not available"
    for c in cands:
        if c.name == "pygomalloc":
            info["pygomalloc"] = f"{c.preload} (from {c.origin})"
    info["python"] = sys.version.split()[0]
    return info


def format_table(workloads: Sequence[Workload], cands: Sequence[Candidate],
                 results: Dict[str, Dict[str, Cell]], baseline: str) -> str:
    """Rows = workloads, columns = allocators; cell = time ratio / peak RSS MiB."""
    names = [c.name for c in cands]
    rows: List[List[str]] = [["workload", f"{baseline} s", *names]]
    for w in workloads:
        cells = results[w.name]
        base = _baseline_cell(w, results, baseline)
        ok_medians = {n: cells[n].median for n in names if n in cells and cells[n].ok}
        best = min(ok_medians, key=ok_medians.get) if ok_medians else None
        row = [w.name, f"{base.median:.3f}" if base.ok else "-"]
        for n in names:
            cell = cells.get(n)
            if cell is None:
                row.append("n/a")
                continue
            if not cell.ok:
                row.append("FAILED" if "checksum" not in cell.error else "BAD CHECKSUM")
                continue
            ratio = f"{cell.median / base.median:.2f}" if base.ok else f"{cell.median:.3f}s"
            mark = "*" if n == best else " "
            row.append(f"{ratio}{mark} /{cell.maxrss_mib:6.1f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines: List[str] = []
    for i, r in enumerate(rows):
        lines.append("  ".join(
            (c.ljust(widths[j]) if j == 0 else c.rjust(widths[j])) for j, c in enumerate(r)))
        if i == 0:
            lines.append("  ".join("-" * wd for wd in widths))
    return "\n".join(lines)


def _baseline_cell(w: Workload, results: Dict[str, Dict[str, Cell]], baseline: str) -> Cell:
    """The cell a row's ratios divide by: its own baseline's, or that of the
    row it is compared to (``ratio_to``); an empty cell when neither ran."""
    for name in (w.name, w.ratio_to):
        cell = results.get(name, {}).get(baseline) if name else None
        if cell is not None:
            return cell
    return Cell(error="no baseline run")


def format_floors(workloads: Sequence[Workload], results: Dict[str, Dict[str, Cell]],
                  baseline: str) -> str:
    """The floor runs, as time relative to the baseline: how fast the workload
    runs with no allocator at all in its loop."""
    lines = []
    for w in workloads:
        floor, base = results[w.name].get(FLOOR), results[w.name].get(baseline)
        if floor is None:
            continue
        if not floor.ok:
            lines.append(f"  {w.name:<14} FAILED")
        elif base is not None and base.ok:
            lines.append(f"  {w.name:<14} {floor.median:.3f} s = {floor.median / base.median:.2f} "
                         f"of {baseline}")
        else:
            lines.append(f"  {w.name:<14} {floor.median:.3f} s")
    if not lines:
        return ""
    return ("floor: the same threads and writes with malloc/free taken out of the loop\n"
            "(each thread reuses one private buffer); no allocator can beat it:\n"
            + "\n".join(lines))


def _spread(values: Sequence[float]) -> float:
    """(max - min) / median: the noise of a cell's runs."""
    med = statistics.median(values)
    return (max(values) - min(values)) / med if med > 0 else 0.0


def format_graphs(workloads: Sequence[Workload], results: Dict[str, Dict[str, Cell]],
                  million: Optional[Cell]) -> str:
    """Under the table: where the graphs rows spend their time (building vs
    dropping the documents, per allocator) and the million-object figure."""
    lines: List[str] = []
    rows = [w for w in workloads if w.driver == "graphs"]
    if rows:
        lines.append("graphs: seconds building / dropping the documents (threads' time added up, "
                     "medians)")
        for w in rows:
            for name, cell in results[w.name].items():
                if cell.ok and "drop_seconds" in cell.runs[0].fields:
                    build = statistics.median(float(r.fields["build_seconds"]) for r in cell.runs)
                    drop = statistics.median(float(r.fields["drop_seconds"]) for r in cell.runs)
                    lines.append(f"  {w.name:<15} {name:<11} {build:7.3f} / {drop:7.3f}")
    if million is not None:
        if lines:
            lines.append("")
        if not million.ok:
            lines.append(f"{MILLION.name}: FAILED: {million.error}")
        else:
            med = {k: statistics.median(float(r.fields[k]) for r in million.runs)
                   for k in ("free_seconds", "heap_free_seconds", "destroy_seconds")}
            noise = max(_spread([float(r.fields[k]) for r in million.runs]) for k in med)
            rounds = million.runs[0].fields.get("rounds", "?")
            lines.append(f"{MILLION.name}: 1,000,000 objects of 16-256 B made by one thread, "
                         f"dropped (pygomalloc; median of {len(million.runs)} runs x {rounds} rounds):")
            lines.append(f"  free() one by one, default heap     {med['free_seconds'] * 1e3:8.1f} ms")
            lines.append(f"  free() one by one, from a heap      {med['heap_free_seconds'] * 1e3:8.1f} ms")
            d = med["destroy_seconds"]
            lines.append(f"  gm_heap_destroy, the whole heap     {d * 1e3:8.1f} ms"
                         f"  = {d / med['free_seconds']:.2f} of free() one by one "
                         f"({med['free_seconds'] / d:.1f}x faster)")
            lines.append(f"  noise: (max - min) / median of the runs, worst of the three: {noise:.0%}")
    return "\n".join(lines)


#: Exit status of ``python -m pygomalloc._npbench`` when numpy is missing.
NUMPY_MISSING = 3


def run_numpy(full: bool, repeat: int, timeout: float, log=None) -> Optional[Dict[str, object]]:
    """The numpy row: ``python -m pygomalloc._npbench`` in a child interpreter
    (this one's python), numpy's default and pygomalloc's handlers
    alternating ``repeat`` times in it.  A dict of its figures; ``skipped``
    or ``error`` set when it could not run."""
    cmd = [sys.executable, "-m", "pygomalloc._npbench", "--json", "--rounds", str(repeat),
           "--scale", "3" if full else "1"]
    if log:
        log(f"numpy: {' '.join(cmd[1:])}")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode == NUMPY_MISSING:
        return {"skipped": proc.stderr.strip()}
    if proc.returncode != 0:
        return {"error": f"exit status {proc.returncode}: {proc.stderr.strip()[-500:]}"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"no result: {proc.stdout[-300:]!r}"}


def format_numpy(res: Dict[str, object]) -> str:
    title = "numpy: temporary arrays (elementwise ops, slicing, concatenation)"
    if res.get("skipped"):
        return f"{title}: skipped, {res['skipped']}"
    if res.get("error"):
        return f"{title}: FAILED: {res['error']}"
    med, spread = res["median_seconds"], res["spread"]
    assert isinstance(med, dict) and isinstance(spread, dict)
    return "\n".join([
        f"{title}, numpy {res['numpy']}, {res['rounds']} alternating runs in one process:",
        f"  numpy's default allocator   {med['default']:7.3f} s   1.00   noise {spread['default']:.0%}",
        f"  pygomalloc.numpy            {med['pygomalloc']:7.3f} s   {res['ratio']:.2f}   "
        f"noise {spread['pygomalloc']:.0%}",
    ])


def write_json(path: str, meta: Dict[str, object], workloads: Sequence[Workload],
               cands: Sequence[Candidate], results: Dict[str, Dict[str, Cell]],
               baseline: str, full: bool, threads: int, million: Optional[Cell] = None,
               numpy_result: Optional[Dict[str, object]] = None) -> None:
    doc: Dict[str, object] = {
        "meta": meta,
        "allocators": [dataclasses.asdict(c) for c in cands],
        "baseline": baseline,
        "workloads": [],
    }
    for w in workloads:
        cells = results[w.name]
        base = _baseline_cell(w, results, baseline)
        entry = {"name": w.name, "driver": w.driver, "description": w.description,
                 "args": w.args(full, threads), "results": {}}
        if w.ratio_to:
            entry["ratio_to"] = w.ratio_to
        for c in cands:
            cell = cells.get(c.name)
            if cell is None:
                continue
            entry["results"][c.name] = {
                "ok": cell.ok,
                "error": cell.error,
                "seconds": [r.seconds for r in cell.runs if r.ok],
                "wall_seconds": [round(r.wall, 6) for r in cell.runs],
                "median_seconds": cell.median if cell.ok else None,
                "ratio_to_baseline": (cell.median / base.median
                                      if cell.ok and base.ok else None),
                "peak_rss_mib": round(cell.maxrss_mib, 2) if cell.runs else None,
                "ops": cell.runs[0].ops if cell.ok else None,
                "checksums": sorted({r.checksum for r in cell.runs if r.ok}),
            }
        floor = cells.get(FLOOR)
        if floor is not None:
            entry["floor"] = {
                "args": w.args(full, threads) + list(w.floor),
                "ok": floor.ok,
                "error": floor.error,
                "seconds": [r.seconds for r in floor.runs if r.ok],
                "median_seconds": floor.median if floor.ok else None,
                "ratio_to_baseline": (floor.median / base.median
                                      if floor.ok and base.ok else None),
            }
        doc["workloads"].append(entry)
    if million is not None:
        doc["heap_destroy_1m"] = {
            "args": MILLION.args(full, threads), "ok": million.ok, "error": million.error,
            **{k: [float(r.fields[k]) for r in million.runs if r.ok]
               for k in ("free_seconds", "heap_free_seconds", "destroy_seconds")},
        }
    if numpy_result is not None:
        doc["numpy"] = numpy_result
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plot(path: str, workloads: Sequence[Workload], cands: Sequence[Candidate],
               results: Dict[str, Dict[str, Cell]], baseline: str, title: str) -> None:
    """A grouped bar chart of time ratios to the baseline (lower is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.name for c in cands]
    n = len(names)
    width = 0.8 / max(n, 1)
    fig, ax = plt.subplots(figsize=(min(16, max(8, 0.3 * len(workloads) * max(n, 2))), 4.5))
    for i, name in enumerate(names):
        xs, ys = [], []
        for j, w in enumerate(workloads):
            cell, base = results[w.name].get(name), _baseline_cell(w, results, baseline)
            if cell is not None and cell.ok and base.ok:
                xs.append(j + (i - (n - 1) / 2) * width)
                ys.append(cell.median / base.median)
        ax.bar(xs, ys, width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels([w.name for w in workloads], rotation=30, ha="right")
    ax.set_ylabel(f"time relative to {baseline} (lower is better)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------
# CLI


def _csv(s: str) -> List[str]:
    items = [x.strip() for x in s.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, not {s!r}")
    return items


#: The most threads --threads takes: the drivers accept up to 512 or 1024
#: (xmalloc: 512 producers, and as many consumers).
MAX_THREADS = 512


def _count(high: Optional[int] = None):  # type: ignore[no-untyped-def]
    """An argparse type: an integer from 1 to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < 1 or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"must be {'at least 1' if high is None else f'from 1 to {high}'}, not {text}")
        return value

    return parse


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text}")
    return value


def _writable_file_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be written, or None (checked before a run of
    minutes is lost to a typo).  Creates and changes nothing."""
    target = os.path.abspath(path)
    if os.path.isdir(target):
        return f"{path!r} is a directory"
    if os.path.exists(target):
        return None if os.access(target, os.W_OK) else f"{path!r} is not writable"
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        return f"cannot write {path!r}: no directory {parent!r}"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot write {path!r}: directory {parent!r} is not writable"
    return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pygomalloc bench",
        description="Run the allocator workloads under glibc, pygomalloc and the peer "
                    "allocators found on this machine, side by side.",
        epilog="'bench python --help': the Python-object group (the interpreter's own "
               "allocations under pymalloc, pygomalloc.install(), preload and the peers).  "
               "Cells are the median time relative to glibc (lower is better) / the "
               "peak RSS in MiB; * marks the fastest allocator of each row.  Allocators "
               "named with --allocators must be available; without it, the peers that are "
               "not installed are skipped with a note.")
    p.add_argument("--full", action="store_true",
                   help="longer runs and more repetitions (default: quick mode)")
    p.add_argument("--repeat", type=_count(), metavar="N",
                   help="runs per workload and allocator (default 5, 7 with --full)")
    p.add_argument("--workloads", type=_csv, metavar="A,B",
                   help="workloads to run (default all: %s)" % ",".join(w.name for w in WORKLOADS))
    p.add_argument("--allocators", type=_csv, metavar="A,B",
                   help="allocators to compare (default all found: %s; also name=/path/lib.so)"
                        % ",".join(ALLOCATORS))
    p.add_argument("--pygomalloc-lib", metavar="PATH",
                   help=f"pygomalloc's LD_PRELOAD library (default: ${PYGOMALLOC_LIB_ENV}, "
                        "pygomalloc.get_preload_library(), csrc/build/libgomalloc_preload.so)")
    p.add_argument("--threads", type=_count(MAX_THREADS), metavar="N",
                   help=f"threads for multi-threaded workloads (default {default_threads()})")
    p.add_argument("--timeout", type=_seconds, metavar="S",
                   help="seconds before a run is killed (default 30, 300 with --full)")
    p.add_argument("--json", metavar="FILE", help="also write all figures as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="also draw a bar chart (needs matplotlib)")
    p.add_argument("--list", action="store_true", help="list workloads and allocators, then exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _load_pybench():  # type: ignore[no-untyped-def]
    """_pybench.py, beside this file (loaded by path, as this module may be)."""
    import importlib.util

    path = Path(__file__).resolve().parent / "_pybench.py"
    spec = importlib.util.spec_from_file_location("_pygomalloc_pybench", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m pygomalloc bench``; returns the exit status.

    ``bench python ...`` runs the Python-object group instead (_pybench.py:
    the interpreter under pymalloc, pygomalloc.install(), the preload
    library and the peers with PYTHONMALLOC=malloc)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":  # accept being handed the subcommand too
        argv = argv[1:]
    if argv and argv[0] == "python":  # the Python-object group (_pybench.py)
        return _load_pybench().main(argv[1:])
    parser = _parser()
    opts = parser.parse_args(argv)

    def log(msg: str) -> None:
        if not opts.quiet:
            print(msg, file=sys.stderr, flush=True)

    def err(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    by_name = {w.name: w for w in WORKLOADS}
    if opts.workloads:
        twice = sorted({n for n in opts.workloads if opts.workloads.count(n) > 1})
        if twice:
            parser.error(f"argument --workloads: named more than once: {', '.join(twice)}")
        unknown = [n for n in opts.workloads if n not in by_name and n not in PY_WORKLOADS]
        if unknown:
            parser.error(f"unknown workload(s) {', '.join(unknown)}; "
                         f"choose from {', '.join([*by_name, *PY_WORKLOADS])}")
        workloads = [by_name[n] for n in opts.workloads if n in by_name]
        py_workloads = [n for n in opts.workloads if n in PY_WORKLOADS]
    else:
        workloads = list(WORKLOADS)
        py_workloads = list(PY_WORKLOADS)
    for option, path in (("--json", opts.json), ("--plot", opts.plot)):
        problem = _writable_file_problem(path) if path else None
        if problem is not None:
            parser.error(f"argument {option}: {problem}")
    try:
        cands, skipped = discover_candidates(opts.allocators, opts.pygomalloc_lib,
                                             strict=bool(opts.allocators))
    except ValueError as exc:  # a name or value on the command line
        parser.error(f"argument --allocators: {exc}")
    except LookupError as exc:  # named, but not on this machine
        err(f"{exc.args[0]}")
        return 2
    if opts.list:
        print("workloads:")
        for w in WORKLOADS:
            print(f"  {w.name:<14} {w.description}")
        print(f"  {'':<14} with graphs_destroy: {MILLION.description} (pygomalloc)")
        for name, description in PY_WORKLOADS.items():
            print(f"  {name:<14} {description}")
        print("allocators:")
        for c in cands:
            print(f"  {c.name:<14} {c.preload or '(no preload)'}  [{c.origin}]")
        for s in skipped:
            print(f"  {s}")
        return 0
    for s in skipped:
        err(s)
    if not cands:
        err("no allocator to run")
        return 2
    if opts.plot and not _have_matplotlib():
        err("--plot needs matplotlib, which is not installed (pip install matplotlib)")
        return 2
    repeat = opts.repeat if opts.repeat is not None else (7 if opts.full else 5)
    threads = opts.threads if opts.threads is not None else default_threads()
    timeout = opts.timeout if opts.timeout is not None else (300.0 if opts.full else 30.0)
    baseline = "glibc" if any(c.name == "glibc" for c in cands) else cands[0].name

    t0 = time.perf_counter()
    try:
        binaries = build_drivers({w.driver for w in workloads}, log=log)
    except (RuntimeError, FileNotFoundError) as exc:
        err(str(exc))
        return 2
    mode = "full" if opts.full else "quick"
    log(f"running {len(workloads)} workloads x {len(cands)} allocators x {repeat} "
        f"({mode} mode, {threads} threads)")
    results = run_suite(workloads, cands, binaries, repeat, opts.full, threads, timeout, log)
    ours = next((c for c in cands if c.name == "pygomalloc"), None)
    million: Optional[Cell] = None
    if ours is not None and any(w.name == "graphs_destroy" for w in workloads):
        million = run_suite([MILLION], [ours], binaries, repeat, opts.full, threads, timeout,
                            log)[MILLION.name]["pygomalloc"]
    numpy_result: Optional[Dict[str, object]] = None
    if "numpy" in py_workloads:
        numpy_result = run_numpy(opts.full, repeat, timeout * 4, log)
    elapsed = time.perf_counter() - t0

    meta: Dict[str, object] = dict(machine_info(cands))
    meta.update(mode=mode, repeat=repeat, threads=threads, elapsed_seconds=round(elapsed, 1),
                date=time.strftime("%Y-%m-%d %H:%M:%S %z"))
    print(f"pygomalloc bench: {mode} mode, {repeat} runs per cell, {threads} threads, "
          f"{elapsed:.0f} s in all")
    for key in ("machine", "kernel", "glibc", "peers", "pygomalloc", "python"):
        if key in meta:
            print(f"{key + ':':<12}{meta[key]}")
    for s in skipped:
        print(f"{'skipped:':<12}{s}")
    spreads = [(max(r.seconds for r in cell.runs) - min(r.seconds for r in cell.runs))
               / cell.median for cells in results.values() for cell in cells.values()
               if cell.ok and cell.median > 0]
    if spreads and repeat > 1:
        print(f"{'noise:':<12}(max - min) / median of a cell's runs: median "
              f"{statistics.median(spreads):.0%}, worst {max(spreads):.0%}")
    print(f"cells: median time / {baseline}'s median (lower is better) / peak RSS MiB "
          "(max over runs); * = fastest in row")
    if workloads:
        print()
        print(format_table(workloads, cands, results, baseline))
    floors = format_floors(workloads, results, baseline)
    if floors:
        print()
        print(floors)
    graphs = format_graphs(workloads, results, million)
    if graphs:
        print()
        print(graphs)
    if numpy_result is not None:
        print()
        print(format_numpy(numpy_result))

    failures = [(w.name, n, cell.error) for w in workloads
                for n, cell in results[w.name].items() if not cell.ok]
    if million is not None and not million.ok:
        failures.append((MILLION.name, "pygomalloc", million.error))
    if numpy_result is not None and numpy_result.get("error"):
        failures.append(("numpy", "pygomalloc.numpy", str(numpy_result["error"])))
    if failures:
        print()
        for wname, cname, error in failures:
            print(f"FAILED {wname} under {cname}: {error}")
    if opts.json:
        write_json(opts.json, meta, workloads, cands, results, baseline, opts.full, threads,
                   million, numpy_result)
        log(f"wrote {opts.json}")
    if opts.plot:
        write_plot(opts.plot, workloads, cands, results, baseline,
                   f"pygomalloc bench ({mode}), {meta['machine']}")
        log(f"wrote {opts.plot}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
