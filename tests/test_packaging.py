"""What the installed package ships, and its command line."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


# --------------------------------------------------------------------------
# One build description: csrc/build.mk, for make and for pip


def build_description():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("_pygomalloc_build", SOURCE_TREE / "build_ext.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_build_description_lists_every_source() -> None:
    build = build_description().BUILD
    csrc = SOURCE_TREE / "csrc"
    assert sorted(build["CORE_SOURCES"] + build["PRELOAD_SOURCES"]) == sorted(
        p.name for p in csrc.glob("*.c")
    ), "csrc/build.mk: CORE_SOURCES must list every csrc/*.c but preload.c"
    assert build["PRELOAD_SOURCES"] == ["preload.c"]


CODEGEN = re.compile(r"-(O|g|std=|f|m)")  # the options gcc records in DW_AT_producer


def producers(path: str) -> list[str]:
    """DW_AT_producer of each compile unit (-g): the compiler and its code generation options."""
    out = subprocess.run(["readelf", "--debug-dump=info", path], capture_output=True, text=True,
                         check=True).stdout
    return [line.split("): ", 1)[-1].strip() for line in out.splitlines() if "DW_AT_producer" in line]


@pytest.mark.parametrize("which", ["libgomalloc.so", "preload shim", "cffi module"])
def test_shipped_objects_were_built_with_the_description_flags(which: str) -> None:
    path = {"libgomalloc.so": gm.get_library(), "preload shim": gm.get_preload_library(),
            "cffi module": gm._gomalloc.__file__}[which]  # type: ignore[attr-defined]
    wanted = [flag for flag in build_description().BUILD["SHARED_CFLAGS"] if CODEGEN.match(flag)]
    assert "-mtls-dialect=gnu2" in wanted and "-fvisibility=hidden" in wanted
    units = producers(path)
    assert units, f"{path}: no debug information (built without -g?)"
    for producer in units:
        flags = producer.split()
        assert [f for f in wanted if f not in flags] == [], producer


def make_dry_run(*targets: str) -> list[list[str]]:
    """The compiler commands make would run for *targets* (nothing is built)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "-B", "-C", str(SOURCE_TREE / "csrc"), "CC=cc", *targets],
                         capture_output=True, text=True, check=True).stdout
    return [shlex.split(line) for line in out.replace("\\\n", " ").splitlines() if line.startswith("cc ")]


def normalised(command: list[str]) -> list[str]:
    """Output paths and library directories reduced to their names."""
    out = []
    for arg in command:
        if arg.startswith("-Wl,--version-script,"):
            arg = "-Wl,--version-script,MAP"
        elif arg.startswith("-L"):
            arg = "-L"
        elif "/" in arg:
            arg = os.path.basename(arg)
        out.append(arg)
    return out


def test_make_and_pip_build_the_libraries_alike(tmp_path: Path) -> None:
    build = build_description()
    from_make = {os.path.basename(c[c.index("-o") + 1]): normalised(c)
                 for c in make_dry_run("build/libgomalloc.so", "build/libgomalloc_preload.so")}
    from_pip = {name: normalised(c) for name, c in
                build.library_commands(["cc"], tmp_path, tmp_path / "x.map").items()}
    assert from_make == from_pip


@pytest.mark.parametrize("variant", ["release", "debug", "asan", "tsan"])
def test_the_c_tests_are_built_with_the_description_flags(variant: str) -> None:
    build = build_description().BUILD
    (command,) = make_dry_run(f"build/{variant}/test_api")
    flags = build[f"{variant.upper()}_CFLAGS"]
    assert command[1 : 1 + len(flags)] == flags, command
    assert command[-len(build["CORE_SOURCES"]):] == build["CORE_SOURCES"], command


def test_no_build_file_spells_out_the_flags() -> None:
    """Flags are in csrc/build.mk only: not in the files that read it."""
    build = build_description().BUILD
    flags = {f for name, value in build.items() if name.endswith(("CFLAGS", "LDFLAGS")) for f in value}
    for name in ("csrc/Makefile", "setup.py", "build_ext.py"):
        text = (SOURCE_TREE / name).read_text()
        found = sorted(f for f in flags if re.search(rf"(?<![\w-]){re.escape(f)}(?![\w=,-])", text))
        assert found == [], f"{name} spells out {found}: they belong in csrc/build.mk"


def test_the_shipped_pkgconfig_file() -> None:
    pc = Path(gm.get_library()).parent / "pkgconfig" / "gomalloc.pc"
    text = pc.read_text()
    assert f"Version: {gm.__version__}" in text and "-lgomalloc" in text and "${pcfiledir}" in text
