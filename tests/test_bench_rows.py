"""The rows issue 11 added to ``python -m pygomalloc bench``: graphs and
graphs_destroy (a row only pygomalloc runs, its ratio taken against glibc's
graphs row), the heap_destroy_1m figure, and the numpy row, which runs when
numpy is there and says it was skipped, and why, when it is not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pygomalloc import _bench

ENV = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pygomalloc", "bench", *args],
                          capture_output=True, text=True, timeout=300, check=False,
                          env=env or ENV)


def test_list_names_the_new_rows() -> None:
    result = run_cli("--list")
    assert result.returncode == 0, result.stderr
    for name in ("graphs ", "graphs_destroy ", "numpy "):
        assert f"  {name}" in result.stdout
    assert "1,000,000 objects" in result.stdout


def test_graphs_rows_and_the_million_figure() -> None:
    result = run_cli("--workloads", "graphs,graphs_destroy", "--allocators", "glibc,pygomalloc",
                     "--repeat", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()
            if line.startswith("graphs")}
    assert rows["graphs_destroy"].split()[2] == "n/a"  # glibc cannot run it
    assert rows["graphs_destroy"].split()[1] == rows["graphs"].split()[1]  # glibc's graphs time
    assert "heap_destroy_1m: 1,000,000 objects" in result.stdout
    assert "gm_heap_destroy, the whole heap" in result.stdout


def test_graphs_destroy_without_pygomalloc_has_no_figure() -> None:
    result = run_cli("--workloads", "graphs_destroy", "--allocators", "glibc", "--repeat", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("graphs_destroy"))
    assert line.split()[1:] == ["-", "n/a"]
    assert "heap_destroy_1m" not in result.stdout


def test_numpy_row_without_numpy_is_skipped_with_the_reason(tmp_path: Path) -> None:
    fake = tmp_path / "numpy"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no numpy here')\n")
    env = dict(ENV, PYTHONPATH=str(tmp_path))
    result = run_cli("--workloads", "numpy", "--repeat", "1", env=env)
    assert result.returncode == 0, result.stderr
    assert ("numpy: temporary arrays (elementwise ops, slicing, concatenation): skipped, "
            "numpy is not installed (pip install 'pygomalloc[numpy]')") in result.stdout


def test_numpy_row_with_numpy() -> None:
    pytest.importorskip("numpy", reason="numpy is not installed (pip install 'pygomalloc[numpy]')")
    result = run_cli("--workloads", "numpy", "--repeat", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("numpy: temporary arrays"))
    assert "2 alternating runs in one process" in lines[i]
    assert lines[i + 1].split()[-3:-1] == ["1.00", "noise"]
    ratio = float(lines[i + 2].split()[3])
    assert ratio > 0


def test_unknown_workload_lists_the_python_rows_too() -> None:
    result = run_cli("--workloads", "nope")
    assert result.returncode == 2
    assert "choose from" in result.stderr and "numpy" in result.stderr


def test_format_numpy_failures() -> None:
    assert "FAILED: boom" in _bench.format_numpy({"error": "boom"})
    assert "skipped, why" in _bench.format_numpy({"skipped": "why"})
