"""The command line behaves like the tools around it: bad values are usage
errors that name them, missing files get Python's own message and status,
a closed pipe ends it quietly, and pyrun runs a script as python would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import pygomalloc as gm
from pygomalloc import _bench

ENV = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pygomalloc", *args], capture_output=True,
                          text=True, timeout=120, check=False, cwd=cwd, env=ENV)


def run_python(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=cwd, env=ENV)


def assert_usage_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """argparse's ending: status 2, the usage, and a message naming the value."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.startswith("usage: "), result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error: " in last and all(w in last for w in words), last
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# ---- --version ---------------------------------------------------------------


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"pygomalloc {gm.__version__}\n"


# ---- pyrun: what python does with a missing script or module -------------------


def test_pyrun_missing_script_is_one_line_and_status_2(tmp_path: Path) -> None:
    result = run_cli("pyrun", "missing.py", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == ("python -m pygomalloc pyrun: can't open file 'missing.py': "
                             "[Errno 2] No such file or directory\n")
    assert result.stdout == ""
    assert run_python("missing.py", cwd=tmp_path).returncode == 2  # python's status


def test_pyrun_missing_module_is_one_line_and_status_1(tmp_path: Path) -> None:
    result = run_cli("pyrun", "-m", "no_such_module", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "python -m pygomalloc pyrun: No module named no_such_module\n"
    python = run_python("-m", "no_such_module", cwd=tmp_path)
    assert python.returncode == 1
    assert python.stderr.endswith(": No module named no_such_module\n")


@pytest.mark.parametrize("target, message", [
    (["-m", "json"], "No module named json.__main__; 'json' is a package and cannot be "
                     "directly executed"),
    (["-m", "no_pkg.mod"], "Error while finding module specification for 'no_pkg.mod' "
                           "(ModuleNotFoundError: No module named 'no_pkg')"),
    (["-m", ".rel"], "Relative module names not supported"),
    (["somedir"], "can't find '__main__' module in 'somedir'"),
])
def test_pyrun_nothing_to_run_gets_pythons_message(tmp_path: Path, target: list[str],
                                                    message: str) -> None:
    (tmp_path / "somedir").mkdir()
    result = run_cli("pyrun", *target, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (1, f"python -m pygomalloc pyrun: {message}\n")
    python = run_python(*target, cwd=tmp_path)
    assert python.returncode == 1 and python.stderr.rstrip().endswith(
        message.replace("'somedir'", repr(str(tmp_path / "somedir"))))


def test_pyrun_json_into_a_missing_directory_fails_before_running(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    marker = tmp_path / "ran"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    result = run_cli("pyrun", "--json", str(tmp_path / "nodir" / "out.json"), str(script))
    assert result.returncode == 2
    assert "--json" in result.stderr and "nodir" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()


# ---- pyrun: the script runs as python runs it ------------------------------------

FIDELITY = """\
import os, sys
main = sys.modules["__main__"]
print(repr(sys.argv), __name__, main.__dict__ is globals(), sys.path[0] == os.path.dirname(
    os.path.abspath(__file__)), sep="|")
"""


def test_pyrun_script_sees_argv_main_and_path_as_under_python(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    script = tmp_path / "sub" / "show.py"
    script.write_text(FIDELITY)
    args = ("sub/show.py", "-x", "--flag", "a b")
    python = run_python(*args, cwd=tmp_path)
    pyrun = run_cli("pyrun", "--no-stats", *args, cwd=tmp_path)
    assert python.returncode == pyrun.returncode == 0, pyrun.stderr
    assert pyrun.stdout == python.stdout == "['sub/show.py', '-x', '--flag', 'a b']|__main__|True|True\n"
    assert pyrun.stderr == ""


def test_pyrun_module_sees_argv_as_under_python(tmp_path: Path) -> None:
    (tmp_path / "showmod.py").write_text("import sys\nprint(sys.argv, __name__)\n")
    python = run_python("-m", "showmod", "1", "2", cwd=tmp_path)
    pyrun = run_cli("pyrun", "--no-stats", "-m", "showmod", "1", "2", cwd=tmp_path)
    assert python.returncode == pyrun.returncode == 0, pyrun.stderr
    assert pyrun.stdout == python.stdout
    assert str(tmp_path / "showmod.py") in pyrun.stdout


@pytest.mark.parametrize("body, status", [
    ("import sys; sys.exit(5)", 5),
    ("import sys; sys.exit()", 0),
    ("import sys; sys.exit(None)", 0),
    ("raise SystemExit(True)", 1),
    ("import sys; sys.exit('bad input, giving up')", 1),
    ("def f():\n    raise ValueError('from the script')\nf()", 1),
    ("x = (", 1),  # a SyntaxError
    ("import os; os.chdir('/')\nraise LookupError('after chdir')", 1),
])
def test_pyrun_exit_status_and_stderr_are_pythons(tmp_path: Path, body: str,
                                                   status: int) -> None:
    script = tmp_path / "ends.py"
    script.write_text(body + "\n")
    python = run_python(str(script))
    pyrun = run_cli("pyrun", "--no-stats", str(script))
    assert python.returncode == status
    assert pyrun.returncode == status, pyrun.stderr
    # Byte for byte what python prints: the message of sys.exit('...'), or the
    # traceback with the script's frames only (not pyrun's, not runpy's).
    assert pyrun.stderr == python.stderr
    assert "runpy" not in pyrun.stderr and "pygomalloc" not in pyrun.stderr


def test_pyrun_reports_the_heap_after_the_scripts_traceback(tmp_path: Path) -> None:
    script = tmp_path / "fails.py"
    script.write_text("keep = [str(i) * 10 for i in range(10000)]\nraise ValueError('late')\n")
    result = run_cli("pyrun", str(script))
    assert result.returncode == 1
    err = result.stderr
    assert err.startswith("Traceback (most recent call last):\n")
    assert err.index("ValueError: late") < err.index("pygomalloc pyrun:") < err.index("heap_objects")


def test_pyrun_keyboard_interrupt_ends_by_sigint_as_python(tmp_path: Path) -> None:
    script = tmp_path / "interrupted.py"
    script.write_text("raise KeyboardInterrupt\n")
    python = run_python(str(script))
    pyrun = run_cli("pyrun", "--no-stats", str(script))
    assert python.returncode == pyrun.returncode == -signal.SIGINT
    assert pyrun.stderr == python.stderr


def test_pyrun_tracemalloc_lists_the_scripts_frames_only(tmp_path: Path) -> None:
    script = tmp_path / "deep.py"
    script.write_text("keep = []\n"
                      "def inner(i):\n"
                      "    keep.append('y' * 200 + str(i))\n"
                      "def outer():\n"
                      "    for i in range(20000):\n"
                      "        inner(i)\n"
                      "outer()\n")
    result = run_cli("pyrun", "--tracemalloc", "5", str(script))
    assert result.returncode == 0, result.stderr
    report = result.stderr[result.stderr.index("tracemalloc:"):].splitlines()
    assert "in 20,0" in report[1], report
    # The script's three frames, oldest first, and nothing of pyrun or runpy
    # (which the 5 frames would otherwise have reached).
    assert report[2:5] == [f"      {script}:7", f"      {script}:6", f"      {script}:3"], report
    assert len(report) == 5 or not report[5].startswith("      "), report  # no 4th frame
    assert not any("runpy" in line or "pygomalloc" in line for line in report[1:])


# ---- bad values are usage errors --------------------------------------------------


@pytest.mark.parametrize("args, words", [
    (["pyrun", "--tracemalloc", "-1", "x.py"], ["--tracemalloc", "-1"]),
    (["pyrun", "--tracemalloc", "70000", "x.py"], ["--tracemalloc", "70000"]),
    (["pyrun", "--profile", "-4096", "x.py"], ["--profile", "-4096"]),
    (["pyrun", "--profile", "lots", "x.py"], ["--profile", "lots"]),
    (["run", "--profile", "-1", "--", "true"], ["--profile", "-1"]),
    (["run", "--profile", "2048G", "--", "true"], ["--profile", "2048G"]),
    (["pyrun", "--domains", "", "x.py"], ["--domains", "no domain"]),
    (["pyrun", "--domains", ",", "x.py"], ["--domains", "no domain"]),
    (["stats", "--objects", "-5"], ["--objects", "-5"]),
    (["stats", "--objects", "many"], ["--objects", "many"]),
])
def test_bad_values_are_usage_errors(args: list[str], words: list[str]) -> None:
    assert_usage_error(run_cli(*args), *words)


@pytest.mark.parametrize("args, words", [
    (["--repeat", "0"], ["--repeat", "0"]),
    (["--repeat", "-3"], ["--repeat", "-3"]),
    (["--timeout", "0"], ["--timeout", "0"]),
    (["--timeout", "-1.5"], ["--timeout", "-1.5"]),
    (["--timeout", "inf"], ["--timeout", "inf"]),
    (["--threads", "-1"], ["--threads", "-1"]),
    (["--threads", "0"], ["--threads", "0"]),
    (["--threads", "100000"], ["--threads", "100000"]),
    (["--workloads", ","], ["--workloads"]),
    (["--workloads", "larson,nosuch"], ["nosuch"]),
    (["--workloads", "larson,larson"], ["--workloads", "larson"]),
    (["--allocators", "glibc,glibc"], ["--allocators", "glibc"]),
    (["--allocators", "nosuch"], ["--allocators", "nosuch"]),
    (["--json", "/nonexistent-dir/out.json"], ["--json", "/nonexistent-dir"]),
])
def test_bench_bad_values_are_usage_errors(args: list[str], words: list[str]) -> None:
    assert_usage_error(run_cli("bench", *args), *words)


def test_bench_named_allocator_library_missing_is_an_error() -> None:
    result = run_cli("bench", "--allocators", "glibc,foo=/nonexistent.so")
    assert result.returncode == 2
    assert result.stderr == "bench: allocator foo: /nonexistent.so does not exist\n"
    result = run_cli("bench", "--pygomalloc-lib", "/nonexistent/libgomalloc_preload.so", "--list")
    assert result.returncode == 2
    assert "/nonexistent/libgomalloc_preload.so" in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_peer_not_installed_is_an_error_only_when_named(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(_bench, "find_peer_library", lambda name: None)  # no peer here
    assert _bench.main(["--allocators", "glibc,jemalloc", "--list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: allocator jemalloc: not installed (apt-get install libjemalloc2")
    # Not named: skipped with a note.
    assert _bench.main(["--list"]) == 0
    out = capsys.readouterr().out
    for peer in ("jemalloc", "tcmalloc", "mimalloc"):
        assert f"{peer}: skipped, not installed" in out
    found, skipped = _bench.discover_candidates(["glibc", "mimalloc"])
    assert [c.name for c in found] == ["glibc"] and skipped[0].startswith("mimalloc: skipped")
    with pytest.raises(LookupError, match="mimalloc: not installed"):
        _bench.discover_candidates(["glibc", "mimalloc"], strict=True)


# ---- run ------------------------------------------------------------------------


def test_run_missing_or_unrunnable_command_gets_the_shells_status(tmp_path: Path) -> None:
    result = run_cli("run", "--", str(tmp_path / "nosuch"))
    assert result.returncode == 127
    assert result.stderr == f"python -m pygomalloc run: {tmp_path / 'nosuch'}: No such file or directory\n"
    text = tmp_path / "notexec"
    text.write_text("data\n")
    result = run_cli("run", "--", str(text))
    assert result.returncode == 126
    assert result.stderr == f"python -m pygomalloc run: {text}: Permission denied\n"


def test_profile_rates_take_suffixes(tmp_path: Path) -> None:
    script = tmp_path / "rate.py"
    script.write_text("import pygomalloc\nprint(pygomalloc.get_option('profile_rate'))\n")
    result = run_cli("pyrun", "--no-stats", "--profile", "64K", str(script))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "65536\n"


# ---- a closed pipe ends the output quietly --------------------------------------


def closed_pipe_run(args: list[str], unbuffered: bool) -> tuple[int, bytes]:
    """``python -m pygomalloc ARGS | head -1``, the reader gone before the
    output comes: the exit status and stderr."""
    env = dict(ENV)
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "pygomalloc", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the process has written anything
    err = proc.stderr.read()
    return proc.wait(timeout=120), err


@pytest.mark.parametrize("unbuffered", [False, True])
@pytest.mark.parametrize("args", [["stats"], ["stats", "--json"], ["bench", "--list"]])
def test_closed_pipe_ends_quietly_by_sigpipe(args: list[str], unbuffered: bool) -> None:
    """The process ends by SIGPIPE, as cat does, and prints no traceback."""
    assert closed_pipe_run(args, unbuffered) == (-signal.SIGPIPE, b"")


@pytest.mark.parametrize("unbuffered", [False, True])
@pytest.mark.parametrize("args", [["--help"], ["--version"], ["stats", "--help"]])
def test_closed_pipe_after_help_is_quiet(args: list[str], unbuffered: bool) -> None:
    """Newer argparse drops its own write errors (then exits 0; 3.11.7 does,
    Debian's 3.11.2 does not); a write that fails, at once or at the last
    flush, ends by SIGPIPE.  Either way, quietly."""
    status, err = closed_pipe_run(args, unbuffered)
    assert err == b""
    assert status == -signal.SIGPIPE or (unbuffered and status == 0)


def test_stats_objects_zero_is_the_empty_workload() -> None:
    result = run_cli("stats", "--objects", "0", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["heap_objects"] == 0


def test_bench_python_group_lists_and_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """``bench python``: the Python-object group, two rounds of two
    workloads under pymalloc and install(): a ratio with its range and the
    peak RSS, and the geometric mean of the workloads' medians."""
    assert _bench.main(["python", "--list"]) == 0
    out = capsys.readouterr().out
    assert "dict_objects" in out and "install()" in out and "pymalloc" in out
    assert _bench.main(["python", "--rounds", "2", "--workloads", "short_lived,growth",
                        "--configs", "pymalloc,install()", "-q"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert "short_lived" in rows and "geomean" in rows and "geomean-med" in rows, out
    ratio = float(rows["short_lived"][3])
    assert 0.3 < ratio < 3, out
    medians = float(rows["short_lived"][3]) * float(rows["growth"][3])
    assert abs(float(rows["geomean-med"][1]) - medians ** 0.5) < 0.002, out
    with pytest.raises(SystemExit):
        _bench.main(["python", "--configs", "install()"])  # pymalloc is the reference
