"""The one table of statistics and options (tools/tables.py) and what is
generated from it (tools/mktables.py): every generated region is up to date,
and the built package agrees with the table."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pygomalloc as gm
from pygomalloc import __main__ as cli
from pygomalloc._gomalloc import ffi, lib

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "tools" / "mktables.py"
sys.path.insert(0, str(ROOT / "tools"))
import mktables  # noqa: E402
from tables import OPTIONS, SIZE_CLASS_STATS, STATS, STATS_HEADER  # noqa: E402

#: struct gm_stats as released (GM_CAPI_VERSION 2): later versions may only
#: append to it, so that a caller built with this header gets these fields.
RELEASED_STATS = [
    "size", "sys", "heap_reserved", "heap_sys", "heap_alloc", "heap_idle", "heap_inuse",
    "heap_released", "heap_objects", "mallocs", "frees", "total_alloc", "large_objects",
    "mspan_inuse", "mspan_sys", "mcache_inuse", "mcache_sys", "other_sys", "cached_bytes",
    "transfer_bytes", "num_arenas", "num_threads", "bad_frees", "n_sys_reserve", "n_sys_map",
    "n_sys_used", "n_sys_unused", "n_sys_free", "n_sys_fault", "bytes_sys_reserve",
    "bytes_sys_map", "bytes_sys_used", "bytes_sys_unused", "bytes_sys_free", "bytes_sys_fault",
    "scavenge_cycles", "scavenged_bytes", "phys_page_size", "huge_page_size", "tiny_mallocs",
    "tiny_frees", "by_size",
]
RELEASED_SIZE_CLASS_STATS = ["size", "npages", "mallocs", "frees", "spans", "capacity"]


def test_generated_regions_are_up_to_date() -> None:
    result = subprocess.run([sys.executable, str(GENERATOR), "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generator_restores_an_edited_region() -> None:
    for path, regions in mktables.REGIONS.items():
        text = (ROOT / path).read_text(encoding="utf-8")
        for region, _, _ in regions:
            begin = text.index(f"BEGIN GENERATED {region}")
            line = text.index("\n", begin) + 1
            edited = text[:line] + "an edit by hand\n" + text[text.index("\n", line) + 1:]
            assert mktables.regenerate(path, edited) == text, (path, region)


def test_generated_regions_say_so() -> None:
    for path, regions in mktables.REGIONS.items():
        text = (ROOT / path).read_text(encoding="utf-8")
        for region, _, _ in regions:
            assert f"BEGIN GENERATED {region}: tools/mktables.py from tools/tables.py, do not edit" in text


def test_structs_only_grow_at_the_end() -> None:
    names = [STATS_HEADER.name, *(s.name for s in STATS)]
    assert names[:len(RELEASED_STATS)] == RELEASED_STATS
    assert [s.name for s in SIZE_CLASS_STATS][:len(RELEASED_SIZE_CLASS_STATS)] == RELEASED_SIZE_CLASS_STATS


def test_stats_dataclasses_follow_the_table() -> None:
    fields = dataclasses.fields(gm.Stats)
    assert [f.name for f in fields] == [s.name for s in STATS]
    assert [(f.metadata["unit"], f.metadata["go"]) for f in fields] == [(s.unit, s.go) for s in STATS]
    rows = dataclasses.fields(gm.SizeClassStats)
    assert [f.name for f in rows] == ["size_class", *(s.name for s in SIZE_CLASS_STATS)]
    scalars = sum(s.array is None for s in STATS)
    assert ffi.sizeof("struct gm_stats") == \
        8 * (1 + scalars) + lib.GM_NUM_SIZE_CLASSES * ffi.sizeof("struct gm_size_class_stats")
    assert ffi.sizeof("struct gm_size_class_stats") == 8 * len(SIZE_CLASS_STATS)


def test_options_follow_the_table() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOMALLOC_")}
    proc = subprocess.run([sys.executable, "-c", "import json, pygomalloc; print(json.dumps(pygomalloc.options()))"],
                          env=env, capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == {o.name: o.default for o in OPTIONS}  # names, order, defaults


def test_cli_agrees_with_the_table() -> None:
    profile_rate = next(o for o in OPTIONS if o.name == "profile_rate")
    assert cli.MAX_PROFILE_RATE == profile_rate.max
    text = cli.format_stats(gm.stats())
    for s in STATS:
        if s.array is None:
            assert f" {s.name}  " in text
