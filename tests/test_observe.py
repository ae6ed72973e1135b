"""Pressure callbacks, container-aware limits, the live page map, and the
heap profile as pprof protobuf and collapsed stacks."""

from __future__ import annotations

import gzip
import os
import random
import select
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import pygomalloc as gm

MiB = 1 << 20


def wait_for_event(timeout: float = 10.0) -> None:
    """Block until the watcher queued a pressure event for the main thread
    (its eventfd), then run bytecode so that the pending call runs."""
    fd = gm.pressure_fd()
    assert fd >= 0
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, "no pressure event within the timeout"
    os.read(fd, 8)
    sum(range(100))


def drain_events() -> None:
    fd = gm.pressure_fd()
    if fd >= 0 and select.select([fd], [], [], 0)[0]:
        os.read(fd, 8)
    sum(range(100))


@pytest.fixture()
def clean_limits() -> Iterator[None]:
    yield
    gm.set_option("hard_limit", 0)
    gm.set_option("memory_limit", 0)


# --------------------------------------------------------------------------
# Pressure


def test_threshold_fires_once_and_the_callback_frees_for_the_next_allocation(clean_limits: None) -> None:
    base = gm.stats().heap_inuse
    gm.set_option("hard_limit", base + 64 * MiB)
    cache = []
    events = []

    def clear_cache(ev: gm.PressureEvent) -> None:
        events.append(ev)
        for a in cache:
            gm.free(a)
        cache.clear()

    drain_events()
    handle = gm.on_pressure(clear_cache, fraction=0.75)  # of hard_limit
    try:
        level = (base + 64 * MiB) * 3 // 4
        while gm.stats().heap_inuse + 2 * MiB <= level:
            cache.append(gm.malloc(MiB))   # large objects: exactly 1 MiB of heap_inuse each
        with pytest.raises(MemoryError):  # the hard limit: no room for 30 MiB more
            gm.malloc(30 * MiB)
        assert not events
        cache.append(gm.malloc(2 * MiB))  # crosses the level
        wait_for_event()
        assert len(events) == 1, events
        ev = events[0]
        assert ev.kind == "hard_limit" and ev.rising and ev.count == 1
        assert ev.level == level and ev.heap_inuse >= level and ev.stats.heap_inuse >= level
        assert gm.stats().heap_inuse < level  # what the callback freed
        big = gm.malloc(30 * MiB)  # room now: the callback freed the cache
        gm.free(big)
        assert handle.calls == 1 and len(events) == 1
    finally:
        handle.remove()
        for a in cache:
            gm.free(a)


def test_rising_and_falling_each_time() -> None:
    base = gm.stats().heap_inuse
    events: list[gm.PressureEvent] = []
    drain_events()
    handle = gm.on_pressure(events.append, bytes=base + 32 * MiB, falling=True)
    try:
        for round_ in range(3):
            big = gm.malloc(40 * MiB)
            wait_for_event()
            gm.free(big)
            wait_for_event()
            assert [(e.rising, e.count) for e in events] == [(True, 1), (False, 1)] * (round_ + 1), events
    finally:
        handle.remove()
    assert not handle.active


def test_on_pressure_arguments() -> None:
    with pytest.raises(ValueError):
        gm.on_pressure(print)
    with pytest.raises(ValueError):
        gm.on_pressure(print, bytes=1, fraction=0.5)
    with pytest.raises(ValueError):
        gm.on_pressure(print, fraction=1.5)
    with pytest.raises(ValueError):
        gm.on_pressure(print, fraction=0.5, of="sys")


def test_psi_trigger_where_the_kernel_offers_it() -> None:
    try:
        handle = gm.on_pressure(print, psi=(100_000, 1_000_000))
    except OSError as e:
        pytest.skip(f"the kernel refuses a PSI trigger on /proc/pressure/memory here: {e.strerror}")
    handle.remove()


def cgroup_events_path() -> Path | None:
    try:
        line = next(ln for ln in Path("/proc/self/cgroup").read_text().splitlines() if ln.startswith("0::"))
        mounts = [ln.split() for ln in Path("/proc/self/mountinfo").read_text().splitlines()]
    except (OSError, StopIteration):
        return None
    for m in mounts:
        if "cgroup2" in m[m.index("-") + 1:m.index("-") + 2]:
            p = Path(m[4] + line[3:]) / "memory.events"
            return p if p.exists() else None
    return None


def test_cgroup_events_where_the_kernel_offers_them() -> None:
    if cgroup_events_path() is None:
        pytest.skip("no cgroup v2 memory controller for this process (no memory.events)")
    handle = gm.on_pressure(print, cgroup=True)
    handle.remove()


CGROUP_SCRIPT = textwrap.dedent("""
    import os, select, sys
    from pathlib import Path
    import pygomalloc as gm
    d = Path(os.environ["GOMALLOC_DEBUG_CGROUP_DIR"])
    events = []
    h = gm.on_pressure(events.append, cgroup=True)
    (d / "memory.events").write_text("low 0\\nhigh 7\\nmax 0\\noom 0\\noom_kill 0\\n")
    fd = gm.pressure_fd()
    assert select.select([fd], [], [], 10)[0], "no event"
    sum(range(100))
    print("EVENTS", [(e.kind, e.rising, e.count, e.cgroup_high) for e in events])
""")


def test_cgroup_high_count_wakes_the_watcher(tmp_path: Path) -> None:
    """The mechanism on a directory standing in for the cgroup: inotify on
    memory.events, the watcher reads the "high" count when it changes."""
    (tmp_path / "memory.events").write_text("low 0\nhigh 3\nmax 0\noom 0\noom_kill 0\n")
    script = tmp_path / "cg.py"
    script.write_text(CGROUP_SCRIPT)
    env = dict(os.environ, GOMALLOC_DEBUG_CGROUP_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                       env=env, check=False)
    assert r.returncode == 0, r.stderr
    assert "EVENTS [('cgroup', True, 4, 7)]" in r.stdout, r.stdout


# --------------------------------------------------------------------------
# Container-aware limits

AUTO_SCRIPT = textwrap.dedent("""
    import os
    from pathlib import Path
    import pygomalloc as gm
    d = Path(os.environ["GOMALLOC_DEBUG_CGROUP_DIR"])
    print("START", gm.get_option("memory_limit"), gm.option_is_auto("memory_limit"),
          gm.get_option("hard_limit"), gm.option_is_auto("hard_limit"))
    (d / "memory.max").write_text("2147483648\\n")
    print("REFRESH", gm.refresh_limits(), gm.get_option("memory_limit"))
    gm.set_option("hard_limit", "auto")
    print("HARD", gm.get_option("hard_limit"), gm.option_is_auto("hard_limit"))
    gm.set_option("auto_hard_limit_percent", 50)
    print("HALF", gm.get_option("hard_limit"))
    gm.set_option("memory_limit", 12345)
    print("FIXED", gm.get_option("memory_limit"), gm.option_is_auto("memory_limit"))
""")


def test_auto_limits_follow_the_cgroup(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.high").write_text("1073741824\n")
    script = tmp_path / "auto.py"
    script.write_text(AUTO_SCRIPT)
    env = dict(os.environ, GOMALLOC_DEBUG_CGROUP_DIR=str(tmp_path), GOMALLOC_MEMORY_LIMIT="auto",
               GOMALLOC_AUTO_MEMORY_LIMIT_PERCENT="80")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                       env=env, check=False)
    assert r.returncode == 0, r.stderr
    assert "ignored" not in r.stderr
    out = {ln.split()[0]: ln.split()[1:] for ln in r.stdout.splitlines()}
    assert out["START"] == [str(1073741824 * 80 // 100), "True", "0", "False"]
    assert out["REFRESH"] == ["1073741824", str(1073741824 * 80 // 100)]  # memory.high is lower
    assert out["HARD"] == [str(1073741824 * 95 // 100), "True"]
    assert out["HALF"] == [str(1073741824 // 2)]
    assert out["FIXED"] == ["12345", "False"]


def test_auto_is_refused_where_it_means_nothing() -> None:
    with pytest.raises(ValueError, match="cannot be 'auto': expected a number of milliseconds"):
        gm.set_option("decay_ms", "auto")
    assert "or auto" in gm.describe_option("memory_limit")


# --------------------------------------------------------------------------
# The page map


def check_page_map_agrees() -> dict[str, int]:
    st = gm.stats()
    t = gm.page_map_totals()
    assert t["in_use"] * gm.PAGE_SIZE == st.heap_inuse, (t, st.heap_inuse)
    assert (t["released"] + t["faulted"]) * gm.PAGE_SIZE == st.heap_released, (t, st.heap_released)
    assert t["free"] * gm.PAGE_SIZE == st.heap_idle - st.heap_released, (t, st.heap_idle)
    assert (t["in_use"] + t["free"] + t["released"] + t["faulted"]) * gm.PAGE_SIZE == st.heap_sys
    assert t["reserved"] * gm.PAGE_SIZE == len(gm.page_map()) * 64 * MiB - st.heap_sys
    return t


def test_page_map_agrees_with_stats_after_a_random_workload() -> None:
    rng = random.Random(12)
    live: list[int] = []
    for step in range(20000):
        if live and rng.random() < 0.45:
            gm.free(live.pop(rng.randrange(len(live))))
        else:
            size = rng.choice((16, 48, 200, 1024, 5000, 30000, 100_000, 700_000))
            live.append(gm.malloc(size))
        if step % 5000 == 4999:
            gm.thread_flush()
            check_page_map_agrees()
    gm.thread_flush()
    t = check_page_map_agrees()
    assert t["large"] > 0 and any(k.startswith("class") for k in t)
    # The views are live: freeing everything and releasing shows in them.
    maps = gm.page_map()
    for a in live:
        gm.free(a)
    gm.release()
    after = gm.page_map_totals(maps)
    assert after["released"] > t["released"] and after["in_use"] < t["in_use"]
    check_page_map_agrees()
    with pytest.raises(TypeError):
        maps[0].pages[0] = 1  # read-only
    assert all(a.base % (64 * MiB) == 0 and len(a.pages) == gm.ARENA_PAGES for a in maps)


def test_page_map_shows_each_state_where_it_is() -> None:
    big = gm.malloc(3 * MiB)
    small = gm.malloc(100)
    arena = next(a for a in gm.page_map() if a.base <= big < a.base + 64 * MiB)
    page = (big - arena.base) // gm.PAGE_SIZE
    assert set(arena.pages[page:page + 3 * MiB // gm.PAGE_SIZE]) == {gm.PAGE_LARGE}
    arena_s = next(a for a in gm.page_map() if a.base <= small < a.base + 64 * MiB)
    cls = arena_s.pages[(small - arena_s.base) // gm.PAGE_SIZE]
    assert gm.page_state_name(cls) == f"class {cls}" and 0 < cls < gm.PAGE_LARGE
    gm.free(big)
    assert arena.pages[page] == gm.PAGE_FREE
    gm.release()
    assert arena.pages[page] == gm.PAGE_RELEASED
    gm.free(small)


FAULT_SCRIPT = textwrap.dedent("""
    import pygomalloc as gm
    a = gm.malloc(1 << 20)
    arena = next(x for x in gm.page_map() if x.base <= a < x.base + (64 << 20))
    gm.free(a)
    print("STATE", gm.page_state_name(arena.pages[(a - arena.base) // gm.PAGE_SIZE]))
    b = gm.malloc(1 << 20)
    print("AGAIN", gm.page_state_name(arena.pages[(b - arena.base) // gm.PAGE_SIZE]))
    t = gm.page_map_totals(); st = gm.stats()
    print("AGREE", (t["released"] + t["faulted"]) * gm.PAGE_SIZE == st.heap_released)
""")


def test_page_map_faulted_pages(tmp_path: Path) -> None:
    script = tmp_path / "f.py"
    script.write_text(FAULT_SCRIPT)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, GOMALLOC_FAULT_ON_FREE="1"), check=False)
    assert r.returncode == 0, r.stderr
    assert "STATE faulted" in r.stdout and "AGAIN large" in r.stdout and "AGREE True" in r.stdout


# --------------------------------------------------------------------------
# pprof and collapsed stacks


def read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def read_message(data: bytes) -> dict[int, list[object]]:
    """A protobuf message: field number -> values (ints, or bytes for wire type 2)."""
    fields: dict[int, list[object]] = {}
    i = 0
    while i < len(data):
        key, i = read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(data, i)
            fields.setdefault(number, []).append(value)
        elif wire == 2:
            n, i = read_varint(data, i)
            fields.setdefault(number, []).append(data[i:i + n])
            i += n
        else:
            raise AssertionError(f"wire type {wire}")
    assert i == len(data)
    return fields


def packed(data: bytes) -> list[int]:
    out, i = [], 0
    while i < len(data):
        v, i = read_varint(data, i)
        out.append(v)
    return out


def test_pprof_parses_back(tmp_path: Path) -> None:
    gm.set_option("profile_rate", 1)
    try:
        keep = [gm.malloc(1000) for _ in range(300)] + [gm.malloc(100_000) for _ in range(3)]
        records = gm.heap_profile()
        path = tmp_path / "heap.pb.gz"
        assert gm.write_profile(path) == path.stat().st_size
        folded = tmp_path / "heap.folded"
        gm.write_profile(folded, "collapsed")
    finally:
        gm.set_option("profile_rate", 0)
    prof = read_message(gzip.decompress(path.read_bytes()))
    strings = [s.decode() for s in prof[6]]
    assert strings[0] == ""
    types = [read_message(v) for v in prof[1]]
    assert [(strings[t[1][0]], strings[t[2][0]]) for t in types] == [
        ("alloc_objects", "count"), ("alloc_space", "bytes"), ("inuse_objects", "count"), ("inuse_space", "bytes")]
    assert prof[12] == [1]  # period: the rate
    period = read_message(prof[11][0])
    assert (strings[period[1][0]], strings[period[2][0]]) == ("space", "bytes")
    assert strings[prof[14][0]] == "inuse_space"
    functions = {f[1][0]: strings[f[2][0]] for f in map(read_message, prof[5])}
    locations = {}
    for loc in map(read_message, prof[4]):
        line = read_message(loc[4][0])
        assert line[1][0] in functions
        locations[loc[1][0]] = (loc[3][0], functions[line[1][0]])
    mappings = [read_message(m) for m in prof.get(3, [])]
    assert all(m[2][0] < m[3][0] and m[7] == [1] for m in mappings)
    samples = [read_message(s) for s in prof[2]]
    assert len(samples) == len(records)
    totals = [0, 0, 0, 0]
    for s in samples:
        ids = packed(s[1][0])
        assert ids and all(i in locations for i in ids)
        for k, v in enumerate(packed(s[2][0])):
            totals[k] += v
    assert totals == [sum(r.alloc_objects for r in records), sum(r.alloc_bytes for r in records),
                      sum(r.inuse_objects for r in records), sum(r.inuse_bytes for r in records)]
    # The stacks: each sample's locations are its record's addresses, caller first.
    by_addrs = {r.addresses: r for r in records}
    for s in samples:
        addrs = tuple(locations[i][0] for i in packed(s[1][0]))
        assert addrs in by_addrs
    lines = folded.read_text().splitlines()
    assert sum(int(ln.rsplit(" ", 1)[1]) for ln in lines) == totals[3]
    assert all(";" in ln.rsplit(" ", 1)[0] for ln in lines)
    for a in keep:
        gm.free(a)


def test_profile_format_errors() -> None:
    with pytest.raises(ValueError):
        gm.profile_bytes("svg")
    with pytest.raises(ValueError):
        gm.profile_bytes("collapsed", sample="space")


# --------------------------------------------------------------------------
# The command line


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pygomalloc", *args], capture_output=True, text=True,
                          timeout=300, check=False, cwd=cwd)


def test_map_command_prints_the_map() -> None:
    r = run_cli("map", "--objects", "2000")
    assert r.returncode == 0, r.stderr
    assert "arena 0x" in r.stdout and "small spans" in r.stdout
    assert any(line.startswith("  |") and "#" in line for line in r.stdout.splitlines())
    r = run_cli("stats", "--objects", "2000", "--map")
    assert r.returncode == 0 and "arena 0x" in r.stdout


def test_map_plot_and_pyrun_outputs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "heap.png"
    r = run_cli("map", "--demo", "fragment", "--objects", "5000", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.stdout.count("arena 0x") >= 3  # three panels
    script = tmp_path / "s.py"
    script.write_text("keep = [bytes(5000) for _ in range(2000)]\n")
    out_png, out_prof = tmp_path / "s.png", tmp_path / "s.folded"
    r = run_cli("pyrun", "--no-stats", "--profile", "64K", "--profile-out", str(out_prof),
                "--profile-format", "collapsed", "--map", str(out_png), str(script))
    assert r.returncode == 0, r.stderr
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    assert sum(int(ln.rsplit(" ", 1)[1]) for ln in out_prof.read_text().splitlines()) > 2000 * 5000 // 2


def test_pyrun_profile_out_needs_profile(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    r = run_cli("pyrun", "--profile-out", str(tmp_path / "p.pb.gz"), str(script))
    assert r.returncode == 2 and "needs --profile" in r.stderr
