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
from typing import Dict, List, Tuple


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
        i = self.events.index(event)
        out: Dict[str, int] = {}
        for (_, _, fn), counts in self.self_cost.items():
            out[fn] = out.get(fn, 0) + counts[i]
        return out

    def by_object(self, event: str) -> Dict[str, int]:
        """Self cost of ``event`` per object file."""
        i = self.events.index(event)
        out: Dict[str, int] = {}
        for (ob, _, _), counts in self.self_cost.items():
            out[ob] = out.get(ob, 0) + counts[i]
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
