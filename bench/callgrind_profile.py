"""Reading callgrind's output files, for the scripts in bench/.

One parser for every event callgrind recorded (``Ir`` alone, or with
``--cache-sim=yes`` the simulated cache's ``Dr Dw I1mr D1mr D1mw ILmr DLmr
DLmw``): each function's self cost, keyed by (object file, source file,
function), and the calls made to each function.

The format (callgrind's ``docs/callgrind-format``): ``ob=``, ``fl=`` and
``fn=`` lines set the current object, file and function (``fi=`` and
``fe=``, inlined code from another file, leave the key alone); a cost line is
positions then event counts (missing trailing counts are zero); a cost line
right after a ``calls=`` line is the inclusive cost of that call, charged
to the caller's line, not the caller's own cost, so it is skipped.  Names
may be compressed: ``(id) name`` at first use, ``(id)`` afterwards.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple


@dataclasses.dataclass
class Profile:
    events: List[str]  # the names of the counts, in order
    totals: List[int]  # one per event: the whole program
    self_cost: Dict[Tuple[str, str, str], List[int]]  # (object, file, function) -> one count per event
    calls: Dict[str, int]  # function name -> calls made to it

    def total(self, event: str) -> int:
        return self.totals[self.events.index(event)]

    def by_function(self, event: str) -> Dict[str, int]:
        """Self cost of ``event`` per function name (objects merged)."""
        return self._sum(event, 2)

    def by_object(self, event: str) -> Dict[str, int]:
        """Self cost of ``event`` per object file."""
        return self._sum(event, 0)

    def _sum(self, event: str, part: int) -> Dict[str, int]:
        """Self cost of ``event`` summed over the keys' part ``part``."""
        i = self.events.index(event)
        out: Dict[str, int] = {}
        for key, counts in self.self_cost.items():
            out[key[part]] = out.get(key[part], 0) + counts[i]
        return out


def parse(path: str) -> Profile:
    """The profile in callgrind output file ``path``; RuntimeError if it has
    no totals or its functions' costs do not add up to them."""
    tables: Dict[str, Dict[str, str]] = {"ob": {}, "fl": {}, "fn": {}}

    def name(kind: str, spec: str) -> str:
        spec = spec.strip()
        if spec.startswith("("):
            close = spec.index(")")
            key, rest = spec[1:close], spec[close + 1:].strip()
            if rest:
                tables[kind][key] = rest
                return rest
            return tables[kind].get(key, spec)
        return spec

    events: List[str] = ["Ir"]
    totals = None
    self_cost: Dict[Tuple[str, str, str], List[int]] = {}
    calls: Dict[str, int] = {}
    ob = fl = fn = cfn = "?"
    npos = 1
    skip = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                if skip:
                    skip = False
                    continue
                counts = line.split()[npos:]
                if counts:
                    row = self_cost.setdefault((ob, fl, fn), [0] * len(events))
                    for i, v in enumerate(counts):
                        row[i] += int(v)
            elif line.startswith("fn="):
                fn = name("fn", line[3:])
            elif line.startswith("ob="):
                ob = name("ob", line[3:])
            elif line.startswith("fl="):
                fl = name("fl", line[3:])
            elif line.startswith(("fi=", "fe=")):
                name("fl", line[3:])
            elif line.startswith("cob="):
                name("ob", line[4:])
            elif line.startswith(("cfl=", "cfi=")):
                name("fl", line[4:])
            elif line.startswith("cfn="):
                cfn = name("fn", line[4:])
            elif line.startswith("calls="):
                calls[cfn] = calls.get(cfn, 0) + int(line[6:].split()[0])
                skip = True
            elif line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("positions:"):
                npos = len(line.split()) - 1
            elif line.startswith(("totals:", "summary:")):
                totals = [int(v) for v in line.split()[1:]]
                totals += [0] * (len(events) - len(totals))
    if totals is None:
        raise RuntimeError(f"no summary/totals line in {path}")
    for i, ev in enumerate(events):
        got = sum(row[i] for row in self_cost.values())
        if got != totals[i]:
            raise RuntimeError(f"callgrind profile {path} does not add up "
                               f"({ev}: {got} != {totals[i]})")
    return Profile(events, totals, self_cost, calls)


def run_driver(binary: Path, args: Sequence[str], name: str, env: Dict[str, str],
               tmpdir: str, options: Sequence[str] = (),
               preload: Optional[str] = None) -> Profile:
    """The profile of a bench driver (``binary args``, which prints a RESULT
    line) run under callgrind with ``options`` in ``env``; ``name`` labels
    errors.  RuntimeError if the run fails, or if ``preload`` (the library
    in LD_PRELOAD) could not be preloaded."""
    fd, out = tempfile.mkstemp(prefix="callgrind.", dir=tmpdir)
    os.close(fd)
    cmd = ["valgrind", "--tool=callgrind", *options, f"--callgrind-out-file={out}",
           str(binary), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0 or "RESULT " not in proc.stdout:
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            raise RuntimeError(f"{binary.name} {' '.join(args)} under {name} failed "
                               f"(exit {proc.returncode}):\n{tail}")
        if preload and "cannot be preloaded" in proc.stderr:
            raise RuntimeError(f"LD_PRELOAD of {preload} failed under valgrind")
        return parse(out)
    finally:
        os.unlink(out)


def have_valgrind(prog: str) -> bool:
    """Whether valgrind is installed; if not, ``prog`` says so on stderr."""
    if shutil.which("valgrind") is not None:
        return True
    print(f"{prog}: valgrind is not installed "
          "(apt-get install valgrind, or run bench/setup_peers.sh)", file=sys.stderr)
    return False
