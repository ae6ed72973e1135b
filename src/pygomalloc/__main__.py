"""Command line: ``python -m pygomalloc {bench,stats,run,pyrun}``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import runpy
import sys
import tracemalloc
from collections.abc import Sequence

import pygomalloc


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


_COUNTS = {
    "heap_objects",
    "mallocs",
    "frees",
    "large_objects",
    "num_arenas",
    "num_threads",
    "bad_frees",
    "scavenge_cycles",
}


def format_stats(st: pygomalloc.Stats) -> str:
    """A two-part text table: the totals, then the size classes in use."""
    lines = []
    for field in dataclasses.fields(st):
        if field.name == "by_size":
            continue
        value = getattr(st, field.name)
        if field.name in _COUNTS or field.name.startswith("n_sys_"):
            lines.append(f"{field.name:>18}  {value:>14,}")
        else:
            lines.append(f"{field.name:>18}  {value:>14,}  {_human(value)}")
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
    """The call sites with the most sampled bytes in use."""
    lines = [f"\nheap profile: 1 sample per {rate:,} bytes on average, {len(records)} call sites; "
             f"top {min(top, len(records))} by sampled bytes in use"]
    for r in records[:top]:
        lines.append(f"  in use {r.inuse_objects:,} samples / {_human(r.inuse_bytes)}, "
                     f"allocated {r.alloc_objects:,} / {_human(r.alloc_bytes)}")
        lines += [f"      {frame}" for frame in r.stack[:6]]
    return "\n".join(lines)


def format_tracemalloc(snapshot: tracemalloc.Snapshot, top: int = 10) -> str:
    """The Python lines holding the most memory at the end, by tracemalloc."""
    stats = snapshot.statistics("traceback")
    total = sum(s.size for s in stats)
    lines = [f"\ntracemalloc: {len(stats)} Python allocation sites hold {_human(total)} at the end; "
             f"top {min(top, len(stats))}"]
    for s in stats[:top]:
        lines.append(f"  {_human(s.size)} in {s.count:,} blocks")
        lines += [f"      {frame.filename}:{frame.lineno}" for frame in s.traceback]
    return "\n".join(lines)


def _stats(args: argparse.Namespace) -> int:
    _demo_workload(args.objects, args.seed)
    st = pygomalloc.stats()
    if args.json:
        print(json.dumps(dataclasses.asdict(st), indent=2))
    else:
        print(format_stats(st))
    return 0


def _run(args: argparse.Namespace) -> int:
    command: list[str] = args.command
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("pygomalloc run: no command given", file=sys.stderr)
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
        print(f"pygomalloc run: {command[0]}: {e.strerror}", file=sys.stderr)
        return 127
    raise AssertionError("unreachable")  # pragma: no cover


def _pyrun(args: argparse.Namespace) -> int:
    """Run a Python script or module in this interpreter with pygomalloc
    installed as its allocator, then report the heap."""
    target: list[str] = args.target
    if not target or (target[0] == "-m" and len(target) < 2):
        print("pygomalloc pyrun: no script or -m MODULE given", file=sys.stderr)
        return 2
    domains = [d for d in args.domains.split(",") if d]
    try:
        if args.profile:
            pygomalloc.set_option("profile_rate", args.profile)
        pygomalloc.install(domains)
    except (ValueError, RuntimeError) as e:
        print(f"pygomalloc pyrun: {e}", file=sys.stderr)
        return 2
    status = 0
    if args.tracemalloc:
        tracemalloc.start(args.tracemalloc)  # wraps pygomalloc's allocator in turn
    # The script's globals, kept until the report, so that it describes the
    # heap as the script left it (runpy returns a copy of them).
    script_globals: dict[str, object] = {}
    try:
        if target[0] == "-m":
            sys.argv = [target[1], *target[2:]]
            script_globals = runpy.run_module(target[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(target)
            sys.path.insert(0, os.path.dirname(os.path.abspath(target[0])))
            script_globals = runpy.run_path(target[0], run_name="__main__")
    except SystemExit as e:
        code = e.code
        status = code if isinstance(code, int) else (0 if code is None else 1)
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
    finally:
        snapshot = tracemalloc.take_snapshot() if args.tracemalloc else None
        if args.tracemalloc:
            tracemalloc.stop()
        st = pygomalloc.stats()
        profile = pygomalloc.heap_profile() if args.profile else []
        if args.json:
            doc = dataclasses.asdict(st)
            if args.profile:
                doc["heap_profile"] = [
                    dict(dataclasses.asdict(r), inuse_objects=r.inuse_objects,
                         inuse_bytes=r.inuse_bytes) for r in profile]
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2)
        if not args.no_stats:
            print(f"\npygomalloc pyrun: {' '.join(target)} (domains {','.join(sorted(domains))})",
                  file=sys.stderr)
            print(format_stats(st), file=sys.stderr)
            if args.profile:
                print(format_profile(profile, args.profile), file=sys.stderr)
            if snapshot is not None:
                print(format_tracemalloc(snapshot), file=sys.stderr)
        script_globals.clear()
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pygomalloc",
        description="pygomalloc: a memory allocator modelled on the Go runtime allocator.",
    )
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
        "--objects", type=int, default=10_000, help="blocks to allocate (default: %(default)s)"
    )
    stats.add_argument(
        "--seed", type=int, default=0, help="seed of the size mix (default: %(default)s)"
    )
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    stats.set_defaults(func=_stats)

    run = commands.add_parser(
        "run",
        help="run a command with pygomalloc as its malloc (LD_PRELOAD)",
        description="Run COMMAND with LD_PRELOAD set to pygomalloc's preload library "
        "and GOMALLOC_PRINT_STATS=1, so that it prints its statistics at exit. "
        "Other GOMALLOC_<OPTION> variables in the environment are passed on.",
        usage="python -m pygomalloc run [--no-stats] [--profile BYTES] -- COMMAND [ARG ...]",
    )
    run.add_argument("--no-stats", action="store_true", help="do not set GOMALLOC_PRINT_STATS")
    run.add_argument("--profile", type=int, metavar="BYTES", default=0,
                     help="sample the heap, one allocation per BYTES on average "
                     "(GOMALLOC_PROFILE_RATE); the top call sites are printed with the statistics")
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    run.set_defaults(func=_run)

    pyrun = commands.add_parser(
        "pyrun",
        help="run a Python script or module with pygomalloc as this interpreter's allocator",
        description="Install pygomalloc under the interpreter's allocator domains "
        "(pygomalloc.install: PyMem_Malloc and PyObject_Malloc by default), run SCRIPT "
        "(or -m MODULE) as __main__ in this process, and print the allocator's statistics "
        "to stderr when it ends; the exit status is the script's.",
        usage="python -m pygomalloc pyrun [--domains D,..] [--json FILE] [--no-stats] [--profile BYTES] "
        "[--tracemalloc FRAMES] "
        "[--] SCRIPT|-m MODULE [ARG ...]",
    )
    pyrun.add_argument("--domains", default="mem,obj",
                       help="allocator domains to install (raw, mem, obj; default: %(default)s)")
    pyrun.add_argument("--json", metavar="FILE", help="also write the statistics as JSON")
    pyrun.add_argument("--no-stats", action="store_true", help="do not print the statistics")
    pyrun.add_argument("--profile", type=int, metavar="BYTES", default=0,
                       help="sample the heap, one allocation per BYTES on average, and print "
                       "the top call sites (C stacks) at the end")
    pyrun.add_argument("--tracemalloc", type=int, metavar="FRAMES", default=0,
                       help="also trace Python allocations (tracemalloc, FRAMES frames deep) "
                       "and print the Python lines holding the most memory at the end")
    pyrun.add_argument("target", nargs="*", help="SCRIPT or -m MODULE, then its arguments")
    pyrun.set_defaults(func=_pyrun)
    return parser


def _split_pyrun(argv: list[str]) -> tuple[list[str], list[str]]:
    """pyrun's own options, and the target (SCRIPT or -m MODULE, and its
    arguments), which argparse would take for options of ours."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in ("--domains", "--json", "--profile", "--tracemalloc"):
            i += 2
        elif arg.startswith(("--domains=", "--json=", "--profile=", "--tracemalloc=")) or \
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


if __name__ == "__main__":
    sys.exit(main())
