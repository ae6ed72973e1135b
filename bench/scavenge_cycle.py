"""What returning memory to the OS costs and buys: the scavenge_cycle driver.

    python bench/scavenge_cycle.py            # about a minute and a half
    python bench/scavenge_cycle.py --help

The driver (bench/drivers/scavenge_cycle.c) cycles its live memory between a
high and a low watermark (1 GiB and 100 MiB by default), touching every page
it allocates, and reads its RSS at the start and at every high and low point.
It runs here, alternating (A B C A B C ...), under three configurations:

* ``scavenger on``: pygomalloc's LD_PRELOAD library with its defaults
  (GOMALLOC_SCAVENGER=1): the background scavenger gives free pages back;
* ``scavenger off``: the same library with GOMALLOC_SCAVENGER=0: freed
  pages stay resident and are reused without page faults;
* ``glibc``: the C library's malloc, for reference.

For each workload (``--random-pct``: 0 frees the newest blocks first, so the
spans of freed blocks empty completely; 100 frees blocks at random, which
leaves small spans partly used) the table gives the throughput (median
ops/s of the driver's timed region, which excludes the sleeps at low points),
its ratio to ``scavenger off`` (the throughput cost of scavenging: the
released pages have to be faulted in and zeroed again in the next cycle),
and the RSS at the low points, above the driver's RSS at start, next to the
live bytes and to live + goal, where goal = retain_percent % of live (the
scavenger's target for what it may keep beyond the live heap).

At a low point the driver sleeps ``--settle-ms`` before reading RSS, so that
the background scavenger has had time to work; the ``at once`` column is the
RSS read before that sleep.  Only ``scavenger on`` has anything that releases
memory while the program sleeps, so the others are sampled without the sleep
unless ``--settle-all`` is given (it makes the run about twice as long and
shows the same figures in both columns).

The helpers of the allocator benchmark (src/pygomalloc/_bench.py) find
pygomalloc's preload library and compile the driver; the driver is run
through the same ``runwait`` launcher, but here its whole stdout is kept
(``_bench.run_once`` keeps only the RESULT line, and the SAMPLE lines are the
point of this bench).  As in the suite, the driver's checksum must be the
same under every configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from runner import bench  # bench/runner.py

DRIVER = "scavenge_cycle"
MiB = 1 << 20

@dataclasses.dataclass(frozen=True)
class Config:
    """One column of the comparison: an allocator and its environment."""

    name: str
    preload: str | None
    env: dict[str, str]
    settles: bool  # sleeps at low points (something may release meanwhile)


@dataclasses.dataclass
class Sample:
    cycle: int
    phase: str
    live: int
    rss: int
    rss0: int


@dataclasses.dataclass
class Run:
    ok: bool
    ops_per_sec: float = 0.0
    seconds: float = 0.0
    checksum: str = ""
    maxrss_kib: int = 0
    samples: list[Sample] = dataclasses.field(default_factory=list)
    error: str = ""

    def start_rss(self) -> int:
        return next(s.rss for s in self.samples if s.phase == "start")


def parse_samples(stdout: str) -> list[Sample]:
    samples = []
    for line in stdout.splitlines():
        if line.startswith("SAMPLE "):
            f = dict(tok.partition("=")[::2] for tok in line.split()[1:])
            rss = int(f["rss"])
            samples.append(Sample(int(f["cycle"]), f["phase"], int(f["live"]), rss,
                                  int(f.get("rss0", rss))))
    return samples


def run_driver(binaries: dict[str, Path], args: Sequence[str], cfg: Config,
               timeout: float) -> Run:
    """One driver process under ``cfg``, through the runwait launcher."""
    env = bench.candidate_env(bench.Candidate("glibc", None))  # no preload for the launcher
    env.update(cfg.env)
    cmd = [str(binaries[bench.LAUNCHER])]
    if cfg.preload:
        cmd += ["--preload", cfg.preload]
    cmd += ["--", str(binaries[DRIVER]), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return Run(False, error=f"timed out after {timeout:.0f} s")
    ru = bench._parse_rusage(stdout)
    if proc.returncode != 0 or not ru:
        return Run(False, error=f"exit status {proc.returncode}: {stderr.strip()[-500:]}")
    if "cannot be preloaded" in stderr or "ERROR: ld.so" in stderr:
        return Run(False, error=f"LD_PRELOAD failed: {stderr.strip()[-300:]}")
    try:
        fields = bench.parse_result_line(stdout)
        samples = parse_samples(stdout)
    except (ValueError, KeyError) as exc:
        return Run(False, error=f"bad driver output: {exc}")
    if not any(s.phase == "start" for s in samples) or not any(s.phase == "low" for s in samples):
        return Run(False, error="driver printed no start or low SAMPLE line")
    return Run(True, float(fields["ops_per_sec"]), float(fields["seconds"]), fields["checksum"],
               int(ru.get("maxrss_kib", 0)), samples)


def retain_percent() -> int:
    """The retain_percent the preloaded library will use (it reads the same
    environment): from pygomalloc if it imports, else GOMALLOC_RETAIN_PERCENT
    or the default, 10."""
    try:
        import pygomalloc  # type: ignore[import-not-found]

        return int(pygomalloc.get_option("retain_percent"))
    except Exception:  # noqa: BLE001 - the extension may not be built
        try:
            return int(os.environ.get("GOMALLOC_RETAIN_PERCENT", "10"))
        except ValueError:
            return 10


def _mib(x: float) -> str:
    return f"{x / MiB:.0f}"


def report(pct: int, configs: Sequence[Config], runs: dict[str, list[Run]], retain: int,
           baseline: str) -> list[str]:
    lines = []
    kind = "newest first" if pct == 0 else "random" if pct == 100 else f"{pct}% random"
    lines.append(f"workload --random-pct {pct} (frees: {kind})")
    header = ["configuration", "ops/s", f"vs {baseline}", "low RSS MiB", "at once",
              "live MiB", "live+goal", "RSS/(live+goal)", "high RSS MiB", "peak RSS MiB"]
    rows = [header]
    medians: dict[str, float] = {}
    for cfg in configs:
        ok = [r for r in runs[cfg.name] if r.ok]
        if not ok:
            err = runs[cfg.name][-1].error if runs[cfg.name] else "not run"
            rows.append([cfg.name, "FAILED: " + err] + [""] * (len(header) - 2))
            continue
        medians[cfg.name] = statistics.median(r.ops_per_sec for r in ok)
        low = [(s, r.start_rss()) for r in ok for s in r.samples if s.phase == "low"]
        high = [s.rss - r.start_rss() for r in ok for s in r.samples if s.phase == "high"]
        low_rss = statistics.median(s.rss - start for s, start in low)
        low_rss0 = statistics.median(s.rss0 - start for s, start in low)
        live = statistics.median(s.live for s, _ in low)
        target = live * (1 + retain / 100)
        lo_rss = min(s.rss - start for s, start in low)
        hi_rss = max(s.rss - start for s, start in low)
        rows.append([
            cfg.name,
            f"{medians[cfg.name]:,.0f}",
            "",
            f"{_mib(low_rss)} [{_mib(lo_rss)}-{_mib(hi_rss)}]",
            _mib(low_rss0),
            _mib(live),
            _mib(target),
            f"{low_rss / target:.2f}",
            _mib(statistics.median(high)),
            f"{max(r.maxrss_kib for r in ok) / 1024:.0f}",
        ])
    for row in rows[1:]:
        if row[0] in medians and baseline in medians:
            row[2] = f"{medians[row[0]] / medians[baseline]:.2f}"
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[j]) if j == 0 else c.rjust(widths[j])
                               for j, c in enumerate(r)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    on, off = medians.get("scavenger on"), medians.get("scavenger off")
    if on and off:
        lines.append(f"cost of scavenging: throughput with the scavenger is {on / off:.2f}x "
                     f"that without it ({abs(1 - on / off) * 100:.0f}% "
                     f"{'slower' if on < off else 'faster'})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--high", default="1G", help="live bytes at a high point (default 1G)")
    p.add_argument("--low", default="100M", help="live bytes at a low point (default 100M)")
    p.add_argument("--cycles", type=int, default=3, help="cycles per run (default 3)")
    p.add_argument("--repeat", type=int, default=3, help="runs per configuration (default 3)")
    p.add_argument("--threads", type=int, default=1, help="driver threads (default 1)")
    p.add_argument("--settle-ms", type=int, default=1500,
                   help="sleep at each low point before reading RSS (default 1500: the "
                        "scavenger may wait up to a second before it starts)")
    p.add_argument("--settle-all", action="store_true",
                   help="sleep at low points in every configuration, not only 'scavenger on'")
    p.add_argument("--random-pct", default="0,100", metavar="P,Q",
                   help="workloads: percentages of frees that pick a random block (default 0,100)")
    p.add_argument("--no-glibc", action="store_true", help="leave out the glibc reference")
    p.add_argument("--pygomalloc-lib", metavar="PATH", help="pygomalloc's LD_PRELOAD library")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per run (default 120)")
    p.add_argument("--json", metavar="FILE", help="also write every run's figures as JSON")
    opts = p.parse_args(argv)

    lib, how = bench.find_pygomalloc_lib(opts.pygomalloc_lib)
    if lib is None:
        print(f"scavenge_cycle: pygomalloc's preload library not found: {how}", file=sys.stderr)
        return 2
    pcts = [int(x) for x in opts.random_pct.split(",") if x.strip()]
    configs = [
        Config("scavenger on", str(lib), {"GOMALLOC_SCAVENGER": "1"}, True),
        Config("scavenger off", str(lib), {"GOMALLOC_SCAVENGER": "0"}, opts.settle_all),
    ]
    if not opts.no_glibc:
        configs.append(Config("glibc", None, {}, opts.settle_all))
    try:
        binaries = bench.build_drivers([DRIVER], log=lambda m: print(m, file=sys.stderr))
    except (RuntimeError, FileNotFoundError) as exc:
        print(f"scavenge_cycle: {exc}", file=sys.stderr)
        return 2
    retain = retain_percent()
    t0 = time.perf_counter()
    print(f"scavenge_cycle: live {opts.high} <-> {opts.low}, {opts.cycles} cycles, "
          f"{opts.threads} thread(s), {opts.repeat} runs per configuration, settle "
          f"{opts.settle_ms} ms; retain_percent {retain} (goal = {retain}% of live)")
    print(f"pygomalloc: {lib} (from {how})")
    others = {k: v for k, v in os.environ.items()
              if k.startswith("GOMALLOC_") and k != "GOMALLOC_SCAVENGER"}
    if others:
        print("environment: " + " ".join(f"{k}={v}" for k, v in sorted(others.items())))
    print("RSS figures are above the driver's RSS at start; low RSS is the median over all low "
          "points [min-max]; 'at once' is before the settle sleep")
    failed = False
    doc: dict[str, object] = {"retain_percent": retain, "workloads": {}}
    for pct in pcts:
        runs: dict[str, list[Run]] = {c.name: [] for c in configs}
        for _ in range(opts.repeat):
            for cfg in configs:
                args = ["--high", opts.high, "--low", opts.low, "--cycles", str(opts.cycles),
                        "--threads", str(opts.threads), "--random-pct", str(pct),
                        "--settle-ms", str(opts.settle_ms if cfg.settles else 0)]
                r = run_driver(binaries, args, cfg, opts.timeout)
                runs[cfg.name].append(r)
                if not r.ok:
                    print(f"FAILED {cfg.name} --random-pct {pct}: {r.error}", file=sys.stderr)
                    failed = True
        sums = {r.checksum for rs in runs.values() for r in rs if r.ok}
        if len(sums) > 1:
            print(f"FAILED --random-pct {pct}: checksums differ between configurations: "
                  f"{sorted(sums)}", file=sys.stderr)
            failed = True
        print()
        print("\n".join(report(pct, configs, runs, retain, "scavenger off")))
        doc["workloads"][str(pct)] = {
            name: [dataclasses.asdict(r) for r in rs] for name, rs in runs.items()}
    print(f"\n{time.perf_counter() - t0:.0f} s in all")
    if opts.json:
        with open(opts.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
