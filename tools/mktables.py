#!/usr/bin/env python3
"""Write the code and docs that list pygomalloc's statistics and options.

The one definition is ``tools/tables.py``; this script rewrites the regions
between ``BEGIN GENERATED <id>`` and ``END GENERATED <id>`` markers in the
files below (comments in each file's language) and leaves everything else
alone.

Usage:
    python tools/mktables.py            # rewrite the regions that changed
    python tools/mktables.py --check    # exit 1, with a diff, if any is stale
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import NOT_OPTIONS, OPTIONS, SIZE_CLASS_STATS, STATS, STATS_HEADER, Option, Stat  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOTE = "tools/mktables.py from tools/tables.py, do not edit"
WIDTH = 100  # wrap comments and docs here

# ---- checking the tables -----------------------------------------------------

OPTION_UNITS = {"flag": "OPT_FLAG", "choice": "OPT_CHOICE", "bytes": "OPT_BYTES", "ms": "OPT_MS",
                "percent": "OPT_PERCENT"}
C_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def validate() -> None:
    for table in (STATS, SIZE_CLASS_STATS, OPTIONS):
        names = [row.name for row in table]
        dupes = {n for n in names if names.count(n) > 1}
        assert not dupes, f"duplicate names: {dupes}"
        for row in table:
            assert C_NAME.fullmatch(row.name), row.name
            assert "*/" not in row.doc and "\n" not in row.doc, row.name
    assert STATS_HEADER.name not in [s.name for s in STATS]
    for s in [*STATS, *SIZE_CLASS_STATS]:
        assert s.doc.endswith("."), f"{s.name}: docs are sentences"
        assert (s.ctype == "uint64_t") == (s.array is None), f"{s.name}: uint64_t, or an array of structs"
    for o in OPTIONS:
        assert o.unit in OPTION_UNITS, f"{o.name}: unit {o.unit!r}"
        assert o.min <= o.default <= o.max < 2**63, f"{o.name}: default out of range"
        assert o.unit != "flag" or (o.min, o.max) == (0, 1), f"{o.name}: a flag is 0 or 1"
        assert o.unit != "choice" or o.max - o.min < 10, f"{o.name}: a choice has few values"
        assert len("GOMALLOC_" + o.name) < 64, f"{o.name}: too long for options.c's buffers"
        assert o.auto is None or (o.unit == "bytes" and any(
            p.name == o.auto and p.unit == "percent" for p in OPTIONS)), f"{o.name}: auto names a percent option"
    for variable, _ in NOT_OPTIONS:
        assert variable.startswith("GOMALLOC_") and "*" not in variable[:-1], variable
        assert variable.rstrip("*")[len("GOMALLOC_"):].lower() not in [o.name for o in OPTIONS]


# ---- helpers -------------------------------------------------------------------


def c_comment(text: str, indent: str) -> list[str]:
    """``/* text */`` on its own lines, wrapped."""
    lines = textwrap.wrap(text, WIDTH - len(indent) - 3)
    if len(lines) == 1:
        return [f"{indent}/* {lines[0]} */"]
    return [f"{indent}/* {lines[0]}", *(f"{indent} * {line}" for line in lines[1:-1]),
            f"{indent} * {lines[-1]} */"]


def c_members(rows: list[tuple[str, str]], indent: str) -> list[str]:
    """Declarations with their comments: beside them when they fit, else above."""
    width = max(len(decl) for decl, _ in rows if len(decl) <= 32) + 1
    out = []
    for decl, doc in rows:
        line = f"{indent}{decl:<{width}}/* {doc} */"
        if doc.startswith("\0"):  # a group heading
            out.append(f"{indent}/* {doc[1:]} */" if len(indent) + len(doc) + 6 <= WIDTH
                       else "\n".join(c_comment(doc[1:], indent)))
        elif len(line) <= WIDTH + 10:
            out.append(line)
        else:
            out += [*c_comment(doc, indent), f"{indent}{decl}"]
    return "\n".join(out).split("\n")


def plain(doc: str) -> str:
    """Markdown code spans to plain text (for C comments)."""
    return doc.replace("`", "")


def c_decl(s: Stat, cdef: bool = False) -> str:
    if s.array is None:
        return f"{s.ctype} {s.name};"
    return f"{s.ctype} {s.name}[{'...' if cdef else s.array}];"


def stat_rows(stats: list[Stat]) -> list[tuple[str, str]]:
    rows = []
    for s in stats:
        if s.group:
            rows.append(("", "\0" + s.group + "."))
        rows.append((c_decl(s), s.doc[:-1]))  # C comments without the final period, as before
    return rows


def c_int(v: int) -> str:
    """A long long literal, in K/M/G/T units when exact."""
    for shift in (40, 30, 20, 10):
        if v >= 1 << shift and v % (1 << shift) == 0:
            return f"{v >> shift}LL << {shift}"
    return str(v)


def human(v: int) -> str:
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if v >= 1 << shift and v % (1 << shift) == 0:
            return f"{v >> shift} {unit}"
    return f"{v} bytes"


def suffixed(v: int) -> str:
    """A byte count as GOMALLOC_ variables take it (K, M, G)."""
    for shift, suffix in ((30, "G"), (20, "M"), (10, "K")):
        if v >= 1 << shift and v % (1 << shift) == 0:
            return f"{v >> shift}{suffix}"
    return str(v)


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def py_doc(doc: str, indent: str) -> list[str]:
    return [f"{indent}#: {line}" for line in textwrap.wrap(doc, WIDTH - len(indent) - 3)]


# ---- the regions -----------------------------------------------------------------


def gm_stats_members(indent: str) -> list[str]:
    header = [*c_comment(STATS_HEADER.doc, indent), f"{indent}{c_decl(STATS_HEADER)}"]
    return header + c_members(stat_rows(STATS), indent)


def gm_size_class_stats_members(indent: str) -> list[str]:
    return c_members(stat_rows(SIZE_CLASS_STATS), indent)


def cdef_members(stats: list[Stat], header: bool) -> Callable[[str], list[str]]:
    def render(indent: str) -> list[str]:
        rows = ([STATS_HEADER] if header else []) + stats
        return [f"{indent}{c_decl(s, cdef=True)}" for s in rows]

    return render


def py_fields(stats: list[Stat], row_type: str = "") -> Callable[[str], list[str]]:
    def render(indent: str) -> list[str]:
        out = []
        for s in stats:
            if s.group:
                out.append(f"{indent}# {s.group}.")
            out += py_doc(s.doc, indent)
            pytype = "int" if s.array is None else f"tuple[{row_type}, ...]"
            meta = f'{{"unit": {json.dumps(s.unit)}, "go": {json.dumps(s.go) if s.go else None}}}'
            out.append(f"{indent}{s.name}: {pytype} = field(metadata={meta})")
        return out

    return render


def malloc_info_names(indent: str) -> list[str]:
    items = [f"STAT({s.name})," for s in STATS if s.array is None]
    lines = textwrap.wrap(" ".join(items), WIDTH - len(indent))
    return [indent + line for line in lines]


def option_table(indent: str) -> list[str]:
    cells = [[f'"{o.name}",', f"&gm_opt.{o.name},", f"{c_int(o.default)},", f"{c_int(o.min)},",
              f"{c_int(o.max)},", f"{OPTION_UNITS[o.unit]},", f"{o.on_change or 'NULL'},",
              f"&gm_opt.{o.auto}" if o.auto else "NULL"] for o in OPTIONS]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    out = [f"{indent}/* name, value, default, min, max, unit (what a value means), on change, auto percent */"]
    for row in cells:
        out.append(f"{indent}{{" + " ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "},")
    return out


def not_options(indent: str) -> list[str]:
    width = max(len(v) for v, _ in NOT_OPTIONS) + 4
    return [f'{indent}{f"{chr(34)}{v}{chr(34)},":<{width}}/* {doc} */' for v, doc in NOT_OPTIONS]


def gm_options_members(indent: str) -> list[str]:
    return c_members([(f"long long {o.name};", plain(o.doc)) for o in OPTIONS], indent)


def readme_options(indent: str) -> list[str]:
    def default(o: Option) -> str:
        return suffixed(o.default) if o.unit == "bytes" else str(o.default)

    def accepted(o: Option) -> str:
        if o.unit == "flag":
            return "0, 1 (off, on)"
        if o.unit == "choice":
            return ", ".join(str(v) for v in range(o.min, o.max + 1))
        if o.unit == "bytes":
            return f"{o.min} to {human(o.max)}" + (", or `auto`" if o.auto else "")
        return f"{o.min} to {o.max} {'ms' if o.unit == 'ms' else '%'}"

    out = [md_row(["option", "default", "accepted", "meaning"]), md_row(["---"] * 4)]
    out += [md_row([f"`{o.name}`", default(o), accepted(o), o.doc]) for o in OPTIONS]
    return out


def readme_stats(stats: list[Stat], header: bool) -> Callable[[str], list[str]]:
    def render(indent: str) -> list[str]:
        out = [md_row(["field", "unit", "in Go", "meaning"]), md_row(["---"] * 4)]
        rows = ([STATS_HEADER] if header else []) + stats
        for s in rows:
            unit = s.unit if s.array is None else "rows"
            out.append(md_row([f"`{s.name}`", unit, f"`{s.go}`" if s.go else "", s.doc]))
        return out

    return render


#: file -> [(region id, comment style, renderer of the lines between the markers)]
REGIONS: dict[str, list[tuple[str, str, Callable[[str], list[str]]]]] = {
    "csrc/gomalloc.h": [
        ("gm_size_class_stats", "c", gm_size_class_stats_members),
        ("gm_stats", "c", gm_stats_members),
    ],
    "build_ext.py": [
        ("cdef-gm_size_class_stats", "c", cdef_members(SIZE_CLASS_STATS, header=False)),
        ("cdef-gm_stats", "c", cdef_members(STATS, header=True)),
    ],
    "src/pygomalloc/_api.py": [
        ("SizeClassStats", "py", py_fields(SIZE_CLASS_STATS)),
        ("Stats", "py", py_fields(STATS, "SizeClassStats")),
    ],
    "csrc/preload.c": [("malloc_info-stats", "c", malloc_info_names)],
    "csrc/options.c": [
        ("option-table", "c", option_table),
        ("not-options", "c", not_options),
    ],
    "csrc/gm_internal.h": [("gm_options", "c", gm_options_members)],
    "README.md": [
        ("options-table", "md", readme_options),
        ("stats-table", "md", readme_stats(STATS, header=True)),
        ("size-class-stats-table", "md", readme_stats(SIZE_CLASS_STATS, header=False)),
    ],
}

MARKERS = {
    "c": ("/* BEGIN GENERATED {id}: {note} */", "/* END GENERATED {id} */"),
    "py": ("# BEGIN GENERATED {id}: {note}", "# END GENERATED {id}"),
    "md": ("<!-- BEGIN GENERATED {id}: {note} -->", "<!-- END GENERATED {id} -->"),
}


def regenerate(path: str, text: str) -> str:
    """*text* (the file at *path*) with its generated regions rewritten."""
    for region, style, render in REGIONS[path]:
        begin = re.compile(rf"^([ \t]*)\S.*\bBEGIN GENERATED {re.escape(region)}\b.*\n", re.M)
        end = re.compile(rf"^[ \t]*\S.*\bEND GENERATED {re.escape(region)}\b.*(\n|$)", re.M)
        b = begin.search(text)
        e = end.search(text, b.end()) if b else None
        if b is None or e is None:
            raise SystemExit(f"{path}: no BEGIN/END GENERATED {region} markers")
        indent = b.group(1)
        first, last = (m.format(id=region, note=NOTE) for m in MARKERS[style])
        body = [indent + first, *render(indent), indent + last]
        text = text[:b.start()] + "\n".join(line.rstrip() for line in body) + e.group(1) + text[e.end():]
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    validate()
    stale = []
    for path in REGIONS:
        file = ROOT / path
        old = file.read_text(encoding="utf-8")
        new = regenerate(path, old)
        if new == old:
            continue
        stale.append(path)
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(
                old.splitlines(True), new.splitlines(True), f"a/{path}", f"b/{path}"))
        else:
            file.write_text(new, encoding="utf-8")
            print(f"wrote {path}")
    if args.check and stale:
        print(f"stale: {', '.join(stale)}; run python tools/mktables.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
