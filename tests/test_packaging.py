"""What the installed package ships, and its command line."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pygomalloc as gm

PACKAGE = Path(gm.__file__).resolve().parent
SOURCE_TREE = Path(__file__).resolve().parents[1]


def test_get_include_has_the_public_header() -> None:
    header = Path(gm.get_include()) / "gomalloc.h"
    assert header.is_file()
    assert header.read_bytes() == (SOURCE_TREE / "csrc" / "gomalloc.h").read_bytes()


def test_libraries_are_shipped_inside_the_package() -> None:
    for path in (gm.get_library(), gm.get_preload_library()):
        assert Path(path).is_file()
        assert Path(path).parent == PACKAGE / "_lib"
        assert Path(path).read_bytes()[:4] == b"\x7fELF"


def test_typing_files_are_shipped() -> None:
    assert (PACKAGE / "py.typed").is_file()
    assert (PACKAGE / "_gomalloc.pyi").is_file()


def test_bench_drivers_are_shipped() -> None:
    sources = sorted((SOURCE_TREE / "bench" / "drivers").glob("*.[ch]"))
    for source in sources:
        shipped = PACKAGE / "_bench_drivers" / source.name
        assert shipped.is_file(), shipped
        assert shipped.read_bytes() == source.read_bytes()


def test_version_matches_the_metadata() -> None:
    assert gm.__version__ == importlib.metadata.version("pygomalloc")


def test_metadata_names_the_license() -> None:
    """MIT, as an SPDX expression (PEP 639), with the LICENSE file shipped."""
    dist = importlib.metadata.distribution("pygomalloc")
    assert dist.metadata["License-Expression"] == "MIT"
    assert dist.metadata.get_all("License-File") == ["LICENSE"]
    shipped = dist.read_text("licenses/LICENSE")
    assert shipped is not None
    assert shipped == (SOURCE_TREE / "LICENSE").read_text()
    assert shipped.startswith("MIT License\n\nCopyright (c) 2026 the pygomalloc authors\n")


def test_public_names_exist() -> None:
    for name in gm.__all__:
        assert hasattr(gm, name), name


def run_cli(*args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run(
        [sys.executable, "-m", "pygomalloc", *args],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )


def test_cli_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("bench", "stats", "run", "pyrun"):
        assert command in result.stdout


def test_cli_stats_prints_the_table() -> None:
    result = run_cli("stats", "--objects", "1000")
    assert result.returncode == 0, result.stderr
    assert "heap_objects" in result.stdout and "class" in result.stdout


def test_cli_stats_json_is_consistent() -> None:
    result = run_cli("stats", "--objects", "1000", "--json")
    assert result.returncode == 0, result.stderr
    st = json.loads(result.stdout)
    assert st["heap_objects"] == st["mallocs"] - st["frees"] >= 500
    assert len(st["by_size"]) == len(gm.stats().by_size)


def test_cli_run_without_a_command_fails() -> None:
    assert run_cli("run").returncode != 0


PYRUN_SCRIPT = """
import sys, pygomalloc
data = [str(i) * 20 for i in range(20000)]
print("args", sys.argv[1:], pygomalloc.owns(id(data[-1])), __name__)
sys.exit(int(sys.argv[1]))
"""


def test_cli_pyrun_runs_a_script_on_pygomalloc(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(PYRUN_SCRIPT)
    out = tmp_path / "stats.json"
    result = run_cli("pyrun", "--json", str(out), str(script), "5", "--flag")
    assert result.returncode == 5, result.stderr  # the script's status
    assert "args ['5', '--flag'] True __main__" in result.stdout
    assert "heap_objects" in result.stderr and "mallocs" in result.stderr
    st = json.loads(out.read_text())
    assert st["mallocs"] >= 20000 and st["bad_frees"] == 0


def test_cli_pyrun_runs_a_module_and_checks_its_options(tmp_path: Path) -> None:
    data = tmp_path / "d.json"
    data.write_text('{"a": [1, 2]}')
    result = run_cli("pyrun", "--no-stats", "-m", "json.tool", "--compact", str(data))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '{"a":[1,2]}' and result.stderr == ""
    bad = run_cli("pyrun", "--domains", "heap", str(data))
    assert bad.returncode == 2 and "unknown allocator domain 'heap'" in bad.stderr
    assert run_cli("pyrun").returncode == 2
