"""Command line: ``python -m pygomalloc {bench,stats,map,run,pyrun}``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pkgutil
import random
import runpy
import signal
import sys
import tracemalloc
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import IO, NoReturn

import pygomalloc

PROG = "python -m pygomalloc"

#: The largest profile_rate the allocator accepts (tools/tables.py).
MAX_PROFILE_RATE = 1 << 40
#: tracemalloc's limit on frames per trace.
MAX_TRACEMALLOC_FRAMES = 65535


# --------------------------------------------------------------------------
# Argument types: bad values are usage errors (exit status 2) that name them.


def _int_arg(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from *low* to *high* (inclusive)."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"from {low} to {high:,}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, not {text}")
        return value

    return parse


_SUFFIXES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _profile_rate_arg(text: str) -> int:
    """--profile BYTES: 0 (off) to MAX_PROFILE_RATE, with an optional K, M or
    G suffix (binary multiples, as the GOMALLOC_PROFILE_RATE variable takes)."""
    digits, scale = text.strip(), 1
    if digits[-1:].upper() in _SUFFIXES:
        digits, scale = digits[:-1], _SUFFIXES[digits[-1].upper()]
    try:
        value = int(digits, 10) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r}") from None
    if not 0 <= value <= MAX_PROFILE_RATE:
        raise argparse.ArgumentTypeError(
            f"must be from 0 (off) to {MAX_PROFILE_RATE:,} bytes, not {text}")
    return value


def _domains_arg(text: str) -> list[str]:
    """--domains D,..: at least one (install() checks the names)."""
    domains = [d.strip() for d in text.split(",") if d.strip()]
    if not domains:
        raise argparse.ArgumentTypeError(f"no domain given: {text!r} (raw, mem, obj)")
    return domains


def _writable_file_problem(path: str) -> str | None:
    """Why *path* cannot be written, or None: checked before a long run, so
    that the run is not lost to a typo.  Creates and changes nothing."""
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


def _run_bench(argv: Sequence[str]) -> int:
    from pygomalloc import _bench  # imported lazily: it is big and only needed here

    return _bench.main(list(argv))


def _demo_workload(objects: int, seed: int) -> None:
    """Allocate *objects* blocks of mixed sizes, then free every other one."""
    rng = random.Random(seed)
    sizes = [rng.choice((8, 24, 64, 200, 1000, 4096, 20000, 100_000)) for _ in range(objects)]
    addresses = [pygomalloc.malloc(size) for size in sizes]
    for address in addresses[::2]:
        pygomalloc.free(address)
    pygomalloc.thread_flush()


def _human(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_stats(st: pygomalloc.Stats) -> str:
    """A two-part text table: the totals, then the size classes in use."""
    lines = []
    for field in dataclasses.fields(st):
        if field.name == "by_size":
            continue
        value = getattr(st, field.name)
        if field.metadata["unit"] == "bytes":
            lines.append(f"{field.name:>18}  {value:>14,}  {_human(value)}")
        else:
            lines.append(f"{field.name:>18}  {value:>14,}")
    lines += [
        "",
        f"{'class':>5} {'size':>7} {'pages':>5} {'mallocs':>12} {'frees':>12} {'live':>10} "
        f"{'spans':>7} {'idle slots':>10} {'idle bytes':>11}",
    ]
    for row in st.by_size:
        if row.mallocs:
            lines.append(
                f"{row.size_class:>5} {row.size:>7} {row.npages:>5} "
                f"{row.mallocs:>12,} {row.frees:>12,} {row.live:>10,} "
                f"{row.spans:>7,} {row.idle_slots:>10,} {_human(row.idle_slots * row.size):>11}"
            )
    return "\n".join(lines)


def format_profile(records: Sequence[pygomalloc.ProfileRecord], rate: int, top: int = 10) -> str:
    """The call sites with the most bytes in use: estimates (each sample
    scaled by its chance of being taken), and the samples behind them."""
    lines = [f"\nheap profile: 1 sample per {rate:,} bytes on average, {len(records)} call sites; "
             f"top {min(top, len(records))} by bytes in use, estimated from the samples"]
    for r in records[:top]:
        lines.append(f"  in use {r.inuse_objects:,} objects / {_human(r.inuse_bytes)} "
                     f"({r.inuse_samples:,} samples), allocated {r.alloc_objects:,} objects / "
                     f"{_human(r.alloc_bytes)} ({r.alloc_samples:,} samples)")
        lines += [f"      {frame}" for frame in r.stack[:6]]
    return "\n".join(lines)


# Frames of pyrun's own machinery, which a report about the script leaves
# out: this module, runpy (which runs the script), and importlib's bootstrap
# (which Python's own tracebacks leave out too).
_LAUNCHER_FILES = frozenset({__file__, os.path.abspath(__file__), runpy.__file__, "<frozen runpy>"})


def _launcher_frame(filename: str) -> bool:
    return filename in _LAUNCHER_FILES or filename.startswith("<frozen importlib.")


def _script_traceback(tb: TracebackType | None) -> TracebackType | None:
    """*tb* from the script's first frame on: the launcher's frames left out."""
    while tb is not None and _launcher_frame(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return tb


def format_tracemalloc(snapshot: tracemalloc.Snapshot, frames: int = 1, top: int = 10) -> str:
    """The Python lines holding the most memory at the end, by tracemalloc.

    Each trace keeps its *frames* most recent frames once pyrun's own leading
    frames (this module, runpy) are dropped, and traces that end up with the
    same frames are one site.  Traces made by pyrun alone are left out.
    """
    sites: dict[tuple[tuple[str, int], ...], list[int]] = {}
    own = 0
    for stat in snapshot.statistics("traceback"):
        kept = list(stat.traceback)  # oldest first
        start = 0
        while start < len(kept) and _launcher_frame(kept[start].filename):
            start += 1
        kept = kept[start:][-frames:]
        if not kept:
            own += stat.size
            continue
        site = sites.setdefault(tuple((f.filename, f.lineno) for f in kept), [0, 0])
        site[0] += stat.size
        site[1] += stat.count
    ranked = sorted(sites.items(), key=lambda item: -item[1][0])
    total = sum(size for size, _ in sites.values())
    lines = [f"\ntracemalloc: {len(ranked)} Python allocation sites hold {_human(total)} at the end"
             f"{f' ({_human(own)} more held by pyrun itself)' if own else ''}; "
             f"top {min(top, len(ranked))}"]
    for key, (size, count) in ranked[:top]:
        lines.append(f"  {_human(size)} in {count:,} blocks")
        lines += [f"      {filename}:{lineno}" for filename, lineno in key]
    return "\n".join(lines)


def _stats(args: argparse.Namespace) -> int:
    _demo_workload(args.objects, args.seed)
    st = pygomalloc.stats()
    if args.json:
        print(json.dumps(dataclasses.asdict(st), indent=2))
    else:
        print(format_stats(st))
        if args.map:
            from pygomalloc import _mapplot

            print()
            print(_mapplot.render_text(_mapplot.snapshot()))
    return 0


#: The fragmenting workload of ``map --demo fragment``: sizes and weights.
_FRAGMENT_SIZES = ((32, 30), (64, 25), (128, 15), (256, 10), (1024, 8), (4096, 6), (20_000, 4),
                   (100_000, 2))


def _fragment_demo(objects: int, seed: int) -> list[tuple[str, list[tuple[int, bytes]]]]:
    """Allocate *objects* blocks of mixed sizes, free 90% of them at random,
    then release: the page map after each step."""
    from pygomalloc import _mapplot

    rng = random.Random(seed)
    sizes, weights = zip(*_FRAGMENT_SIZES)
    live = [pygomalloc.malloc(s) for s in rng.choices(sizes, weights, k=objects)]
    panels = [(f"{objects:,} blocks allocated", _mapplot.snapshot())]
    rng.shuffle(live)
    keep = len(live) // 10
    for address in live[keep:]:
        pygomalloc.free(address)
    pygomalloc.thread_flush()
    panels.append(("90% freed at random", _mapplot.snapshot()))
    pygomalloc.release()
    panels.append(("then release()", _mapplot.snapshot()))
    for address in live[:keep]:
        pygomalloc.free(address)
    return panels


def _check_plot_target(path: str) -> str | None:
    """Why the map cannot be drawn to *path*, or None."""
    problem = _writable_file_problem(path)
    if problem is not None:
        return problem
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "drawing the page map needs matplotlib: pip install 'pygomalloc[plot]'"
    return None


def _map(args: argparse.Namespace) -> int:
    from pygomalloc import _mapplot

    if args.plot and (problem := _check_plot_target(args.plot)) is not None:
        print(f"{PROG} map: --plot: {problem}", file=sys.stderr)
        return 2
    if args.objects is None:
        args.objects = 60_000 if args.demo == "fragment" else 10_000
    if args.demo == "fragment":
        panels = _fragment_demo(args.objects, args.seed)
    else:
        _demo_workload(args.objects, args.seed)
        panels = [(f"after the stats workload ({args.objects:,} blocks)", _mapplot.snapshot())]
    for title, snap in panels:
        print(f"{title}:")
        print(_mapplot.render_text(snap, args.width))
        print()
    if args.plot:
        _mapplot.plot(panels, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _run(args: argparse.Namespace) -> int:
    command: list[str] = args.command
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print(f"{PROG} run: no command given", file=sys.stderr)
        return 2
    env = dict(os.environ)
    preload = pygomalloc.get_preload_library()
    env["LD_PRELOAD"] = f"{preload} {env['LD_PRELOAD']}" if env.get("LD_PRELOAD") else preload
    if not args.no_stats:
        env["GOMALLOC_PRINT_STATS"] = "1"
    if args.profile:
        env["GOMALLOC_PROFILE_RATE"] = str(args.profile)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)
    except OSError as e:
        print(f"{PROG} run: {command[0]}: {e.strerror}", file=sys.stderr)
        # The shells' statuses: 127 not found, 126 found but not runnable.
        return 127 if isinstance(e, FileNotFoundError) else 126
    raise AssertionError("unreachable")  # pragma: no cover


class _NotRunnable(Exception):
    """The script or module cannot be found: a message and an exit status,
    as Python's own for ``python SCRIPT`` and ``python -m MODULE``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _find_script(path: str) -> bool:
    """Raise _NotRunnable if ``python PATH`` would not find anything to run;
    return whether PATH is a plain file (rather than a directory or a zip
    file with a __main__ module, which runpy puts on sys.path itself)."""
    importer = pkgutil.get_importer(path)
    if importer is None:
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise _NotRunnable(f"can't open file {path!r}: [Errno {e.errno}] {e.strerror}", 2) \
                from None
        return True
    find_spec = getattr(importer, "find_spec", None)
    found = find_spec("__main__") if find_spec is not None else \
        importer.find_module("__main__")  # type: ignore[union-attr]  # zipimport before 3.10
    if found is None:
        raise _NotRunnable(f"can't find '__main__' module in {path!r}", 1)
    return False


def _find_module(name: str) -> None:
    """Raise _NotRunnable, with runpy's messages, if ``python -m NAME`` would
    not find a module to run.  (Parent packages are imported, as runpy does.)"""
    if name.startswith("."):
        raise _NotRunnable("Relative module names not supported", 1)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        raise _NotRunnable(f"Error while finding module specification for {name!r} "
                           f"({type(e).__name__}: {e})", 1) from None
    if spec is None:
        raise _NotRunnable(f"No module named {name}", 1)
    if spec.submodule_search_locations is not None:  # a package: its __main__ runs
        if name == "__main__" or name.endswith(".__main__"):
            raise _NotRunnable("Cannot use package as __main__ module", 1)
        try:
            _find_module(f"{name}.__main__")
        except _NotRunnable as e:
            raise _NotRunnable(f"{e}; {name!r} is a package and cannot be directly executed",
                               1) from None
    elif spec.loader is None:
        raise _NotRunnable(f"No code object available for {name}", 1)


def _exit_status(e: SystemExit) -> int:
    """The process status of SystemExit(code), as Python's: None is 0, an int
    itself, anything else is printed to stderr and gives 1."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


def _stack_depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


#: Set by pyrun when the script ended with KeyboardInterrupt: the process then
#: dies of SIGINT, as Python does.
_interrupted = False


def _pyrun(args: argparse.Namespace) -> int:
    """Run a Python script or module in this interpreter with pygomalloc
    installed as its allocator, then report the heap.

    The script runs as ``python SCRIPT ARGS`` (or ``python -m MODULE ARGS``)
    would run it: as the __main__ module, with sys.argv and sys.path[0] set
    the same way; what it cannot find gets Python's message and status and no
    report; its SystemExit gives the exit status; an exception it does not
    catch is printed as Python prints it (without pyrun's frames) and gives
    status 1, after which the report is printed all the same.
    """
    global _interrupted
    target: list[str] = args.target
    if not target or (target[0] == "-m" and len(target) < 2):
        print(f"{PROG} pyrun: no script or -m MODULE given", file=sys.stderr)
        return 2
    if args.json:
        problem = _writable_file_problem(args.json)
        if problem is not None:
            print(f"{PROG} pyrun: --json: {problem}", file=sys.stderr)
            return 2
    if args.map and (problem := _check_plot_target(args.map)) is not None:
        print(f"{PROG} pyrun: --map: {problem}", file=sys.stderr)
        return 2
    if args.profile_out:
        if not args.profile:
            print(f"{PROG} pyrun: --profile-out needs --profile BYTES", file=sys.stderr)
            return 2
        if (problem := _writable_file_problem(args.profile_out)) is not None:
            print(f"{PROG} pyrun: --profile-out: {problem}", file=sys.stderr)
            return 2
    domains: list[str] = args.domains
    try:
        if args.profile:
            pygomalloc.set_option("profile_rate", args.profile)
        pygomalloc.install(domains)
    except (ValueError, RuntimeError) as e:
        print(f"{PROG} pyrun: {e}", file=sys.stderr)
        return 2
    status = 0
    if args.tracemalloc:
        # Room for pyrun's own frames (this stack and runpy's), which the
        # report drops, on top of the script's FRAMES.
        tracemalloc.start(min(args.tracemalloc + _stack_depth() + 8, MAX_TRACEMALLOC_FRAMES))
    # The script's globals, kept until the report, so that it describes the
    # heap as the script left it (runpy returns a copy of them).
    script_globals: dict[str, object] = {}
    try:
        if target[0] == "-m":
            _find_module(target[1])
            sys.argv = [target[1], *target[2:]]  # runpy sets argv[0] to the module's file
            script_globals = runpy.run_module(target[1], run_name="__main__", alter_sys=True)
        else:
            if _find_script(target[0]):
                # Python puts the script's directory first on sys.path, where
                # 'python -m pygomalloc' put the current directory.
                where = os.path.dirname(os.path.abspath(target[0]))
                if sys.path and sys.path[0] in ("", os.getcwd()):
                    sys.path[0] = where
                elif not getattr(sys.flags, "safe_path", False):
                    sys.path.insert(0, where)
            sys.argv = list(target)
            script_globals = runpy.run_path(target[0], run_name="__main__")
    except _NotRunnable as e:
        if args.tracemalloc:
            tracemalloc.stop()
        print(f"{PROG} pyrun: {e}", file=sys.stderr)
        return e.status
    except SystemExit as e:
        status = _exit_status(e)
    except BaseException as e:  # noqa: BLE001 - the script's: reported as Python would
        tb = _script_traceback(e.__traceback__)
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        status = 1
        _interrupted = isinstance(e, KeyboardInterrupt)
    snapshot = tracemalloc.take_snapshot() if args.tracemalloc else None
    if args.tracemalloc:
        tracemalloc.stop()
    st = pygomalloc.stats()
    profile = pygomalloc.heap_profile() if args.profile else []
    if args.profile_out:
        try:
            pygomalloc.write_profile(args.profile_out, args.profile_format)
        except OSError as e:
            print(f"{PROG} pyrun: cannot write {args.profile_out!r}: {e.strerror}", file=sys.stderr)
            status = status or 1
    if args.map:
        from pygomalloc import _mapplot

        _mapplot.plot([(f"the heap of {' '.join(target)} at its end", _mapplot.snapshot())], args.map)
    if args.json:
        doc = dataclasses.asdict(st)
        if args.profile:
            doc["profile_rate"] = args.profile
            doc["heap_profile"] = [profile_record_dict(r) for r in profile]
        try:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2)
        except OSError as e:
            print(f"{PROG} pyrun: cannot write {args.json!r}: {e.strerror}", file=sys.stderr)
            status = status or 1
    if not args.no_stats:
        print(f"\n{PROG} pyrun: {' '.join(target)} (domains {','.join(sorted(domains))})",
              file=sys.stderr)
        print(format_stats(st), file=sys.stderr)
        if args.profile:
            print(format_profile(profile, args.profile), file=sys.stderr)
        if snapshot is not None:
            print(format_tracemalloc(snapshot, args.tracemalloc), file=sys.stderr)
    script_globals.clear()
    return status


def profile_record_dict(r: pygomalloc.ProfileRecord) -> dict[str, object]:
    """A heap profile record as JSON: its fields and the in-use figures."""
    return dict(dataclasses.asdict(r), inuse_objects=r.inuse_objects,
                inuse_bytes=r.inuse_bytes, inuse_samples=r.inuse_samples,
                inuse_sample_bytes=r.inuse_sample_bytes)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="pygomalloc: a memory allocator modelled on the Go runtime allocator.",
    )
    parser.add_argument("--version", action="version",
                        version=f"pygomalloc {pygomalloc.__version__}")
    commands = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)

    # Listed for --help only: main() hands "bench ..." to the benchmark runner,
    # which parses its own arguments.
    commands.add_parser(
        "bench", help="compare pygomalloc with glibc and other allocators (see 'bench --help')"
    )

    stats = commands.add_parser(
        "stats",
        help="run a small workload in this process and print the allocator's statistics",
        description="Allocate OBJECTS blocks of mixed sizes, free every other one and "
        "print the statistics (Go's MemStats vocabulary) and the size classes in use.",
    )
    stats.add_argument(
        "--objects", type=_int_arg(0), default=10_000,
        help="blocks to allocate (default: %(default)s)"
    )
    stats.add_argument(
        "--seed", type=int, default=0, help="seed of the size mix (default: %(default)s)"
    )
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    stats.add_argument("--map", action="store_true",
                       help="also print the page map as text (one character per cell of pages)")
    stats.set_defaults(func=_stats)

    pmap = commands.add_parser(
        "map",
        help="run a workload and show the page map (text; --plot draws it)",
        description="Run a workload in this process and show pygomalloc's live page map: "
        "every 8 KiB page of every arena and its state (reserved, released, free, faulted, "
        "large, small spans of a size class).  --demo fragment allocates OBJECTS blocks of "
        "mixed sizes, frees 90%% of them at random, then releases: three maps.",
    )
    pmap.add_argument("--plot", metavar="FILE.png",
                      help="draw the map(s): arenas as rows, pages as columns, states as colours "
                      "(needs matplotlib: pip install 'pygomalloc[plot]')")
    pmap.add_argument("--demo", choices=("stats", "fragment"), default="stats",
                      help="the workload: the stats command's (default) or a fragmenting one")
    pmap.add_argument("--objects", type=_int_arg(0), default=None,
                      help="blocks to allocate (default: 10,000; 60,000 for --demo fragment)")
    pmap.add_argument("--seed", type=int, default=0, help="seed of the size mix (default: %(default)s)")
    pmap.add_argument("--width", type=_int_arg(16, 1024), default=128,
                      help="characters per text row (default: %(default)s)")
    pmap.set_defaults(func=_map)

    run = commands.add_parser(
        "run",
        help="run a command with pygomalloc as its malloc (LD_PRELOAD)",
        description="Run COMMAND with LD_PRELOAD set to pygomalloc's preload library "
        "and GOMALLOC_PRINT_STATS=1, so that it prints its statistics at exit. "
        "Other GOMALLOC_<OPTION> variables in the environment are passed on. "
        "Exit status: the command's; 127 if it is not found, 126 if it cannot be run.",
        usage=f"{PROG} run [--no-stats] [--profile BYTES] -- COMMAND [ARG ...]",
    )
    run.add_argument("--no-stats", action="store_true", help="do not set GOMALLOC_PRINT_STATS")
    run.add_argument("--profile", type=_profile_rate_arg, metavar="BYTES", default=0,
                     help="sample the heap, one allocation per BYTES on average "
                     "(GOMALLOC_PROFILE_RATE; K, M, G suffixes taken); the top call sites are "
                     "printed with the statistics")
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    run.set_defaults(func=_run)

    pyrun = commands.add_parser(
        "pyrun",
        help="run a Python script or module with pygomalloc as this interpreter's allocator",
        description="Install pygomalloc under the interpreter's allocator domains "
        "(pygomalloc.install: PyMem_Malloc and PyObject_Malloc by default), run SCRIPT "
        "(or -m MODULE) as __main__ in this process, as python would, and print the "
        "allocator's statistics to stderr when it ends; the exit status is the script's.",
        usage=f"{PROG} pyrun [--domains D,..] [--json FILE] [--no-stats] [--profile BYTES] "
        "[--profile-out FILE [--profile-format pprof|collapsed]] [--map FILE.png] "
        "[--tracemalloc FRAMES] "
        "[--] SCRIPT|-m MODULE [ARG ...]",
    )
    pyrun.add_argument("--domains", type=_domains_arg, default="mem,obj", metavar="D,..",
                       help="allocator domains to install (raw, mem, obj; default: %(default)s)")
    pyrun.add_argument("--json", metavar="FILE", help="also write the statistics as JSON")
    pyrun.add_argument("--no-stats", action="store_true", help="do not print the statistics")
    pyrun.add_argument("--profile", type=_profile_rate_arg, metavar="BYTES", default=0,
                       help="sample the heap, one allocation per BYTES on average (K, M, G "
                       "suffixes taken), and print the top call sites (C stacks) at the end")
    pyrun.add_argument("--tracemalloc", type=_int_arg(0, MAX_TRACEMALLOC_FRAMES),
                       metavar="FRAMES", default=0,
                       help="also trace Python allocations (tracemalloc, the script's FRAMES "
                       "most recent frames) and print the Python lines holding the most memory "
                       "at the end")
    pyrun.add_argument("--map", metavar="FILE.png",
                       help="draw the page map of the script's heap when it ends (needs matplotlib)")
    pyrun.add_argument("--profile-out", metavar="FILE",
                       help="with --profile: write the heap profile to FILE when the script ends")
    pyrun.add_argument("--profile-format", choices=("pprof", "collapsed"), default="pprof",
                       help="--profile-out's format: pprof (gzipped protobuf, go tool pprof) or "
                       "collapsed (flame graph stacks); default %(default)s")
    pyrun.add_argument("target", nargs="*", help="SCRIPT or -m MODULE, then its arguments")
    pyrun.set_defaults(func=_pyrun)
    return parser


def _split_pyrun(argv: list[str]) -> tuple[list[str], list[str]]:
    """pyrun's own options, and the target (SCRIPT or -m MODULE, and its
    arguments), which argparse would take for options of ours."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in ("--domains", "--json", "--profile", "--tracemalloc", "--map", "--profile-out",
                   "--profile-format"):
            i += 2
        elif arg.startswith(("--domains=", "--json=", "--profile=", "--tracemalloc=", "--map=",
                             "--profile-out=", "--profile-format=")) or \
                arg in ("--no-stats", "-h", "--help"):
            i += 1
        else:
            break
    target = argv[i:]
    if target[:1] == ["--"]:
        target = target[1:]
    return argv[:i], target


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from pygomalloc import _paths  # --cflags, --libs, --pkgconfig-path: for C programs

    if (status := _paths.main(argv)) is not None:
        return status
    if argv[:1] == ["bench"]:
        return _run_bench(argv[1:])
    target: list[str] | None = None
    if argv[:1] == ["pyrun"]:
        argv, target = _split_pyrun(argv)
    args = _parser().parse_args(argv)
    if target is not None:
        args.target = target
    status: int = args.func(args)
    return status


def _die_of(signum: int) -> NoReturn:
    """End the process by *signum* with its default action, as a C program
    killed by it would end (the shell then sees 128 + signum)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # pragma: no cover - not reached


def _silence(stream: IO[str]) -> None:
    """Point *stream*'s file descriptor at /dev/null, so that the interpreter's
    last flush at exit finds nowhere to fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m pygomalloc``: main(), and the endings of a command-line tool.

    Output into a closed pipe (``python -m pygomalloc stats | head -1``) ends
    the process quietly by SIGPIPE, as it ends ``cat`` or ``seq``, and so does
    Ctrl-C by SIGINT.  pyrun is left alone: the script's output and its
    interruption are the script's, and Python's own handling of them applies.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pyrun"]:
        status = main(argv)
        if _interrupted:
            _die_of(signal.SIGINT)
        return status
    try:
        try:
            status = main(argv)
        finally:
            sys.stdout.flush()  # here, so that a closed pipe is found here
    except BrokenPipeError:
        _silence(sys.stdout)
        _die_of(signal.SIGPIPE)
    except KeyboardInterrupt:
        _die_of(signal.SIGINT)
    return status


if __name__ == "__main__":
    sys.exit(cli())
