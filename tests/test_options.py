"""Options are never ignored silently.

A GOMALLOC_ variable whose value is not accepted, or that names no option,
gets one warning line on stderr at start-up, the option keeps its default,
the process goes on, and ``rejected_options()`` lists it.  ``set_option``
refuses bad values with ``ValueError`` saying what is accepted.  Start-up is
tested in fresh interpreters (and in a C program under ``LD_PRELOAD``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pygomalloc as gm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from tables import NOT_OPTIONS, OPTIONS  # noqa: E402

REPORT = """
import json, pygomalloc as gm
print(json.dumps({"options": gm.options(), "rejected": [list(r) for r in gm.rejected_options()]}))
"""


def clean_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GOMALLOC_") and k not in ("LD_PRELOAD", "PYTHONMALLOC")}
    return {**env, **variables}


def start(**variables: str) -> tuple[dict, list[str]]:
    """Options and rejections of a fresh interpreter with these variables, and its stderr lines."""
    proc = subprocess.run([sys.executable, "-c", REPORT], env=clean_env(**variables),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr.splitlines()


@pytest.fixture(scope="module")
def defaults() -> dict[str, int]:
    report, stderr = start()
    assert stderr == [] and report["rejected"] == []
    return report["options"]


MS = "expected a number of milliseconds from 0 to 3600000 (K, M, G suffixes allowed)"
FLAG = "expected 0 or 1 (on/off, true/false, yes/no allowed)"

CASES = [
    ("GOMALLOC_DECAY_MS", "abc", "decay_ms", MS),
    ("GOMALLOC_DECAY_MS", "-5", "decay_ms", MS),
    ("GOMALLOC_DECAY_MS", "3600001", "decay_ms", MS),
    ("GOMALLOC_DECAY_MS", "4000K", "decay_ms", MS),
    ("GOMALLOC_TINY", "maybe", "tiny", FLAG),
    ("GOMALLOC_TINY", "2", "tiny", FLAG),
    ("GOMALLOC_TCACHE_BYTES", "10Q",  "tcache_bytes",
     "expected a number of bytes from 0 to 16777216 (K, M, G suffixes allowed)"),
    ("GOMALLOC_RETAIN_PERCENT", "10001", "retain_percent",
     "expected a percentage from 0 to 10000 (K, M, G suffixes allowed)"),
    ("GOMALLOC_HARD_LIMIT", "99999999999999999999", "hard_limit",
     "expected a number of bytes from 0 to 281474976710656 (K, M, G suffixes allowed), "
     "or auto (a percentage of the cgroup's memory limit)"),
    ("GOMALLOC_FAULT_ON_FREE", "3", "fault_on_free", "expected 0, 1 or 2"),
    ("GOMALLOC_SCAVENGER", "", "scavenger", FLAG),
    ("GOMALLOC_NOSUCH", "1", None, "no such option"),
    ("GOMALLOC_DECAY", "100", None, "no such option; did you mean GOMALLOC_DECAY_MS?"),
    ("GOMALLOC_DECAYMS", "100", None, "no such option; did you mean GOMALLOC_DECAY_MS?"),
    ("GOMALLOC_decay_ms", "100", None, "no such option; did you mean GOMALLOC_DECAY_MS?"),
    ("GOMALLOC_PRELOAD_LIBRARY", "x", None, "no such option; did you mean GOMALLOC_PRELOAD_LIB?"),
]


@pytest.mark.parametrize(("variable", "value", "option", "reason"), CASES,
                         ids=[f"{v}={x}" for v, x, _, _ in CASES])
def test_rejected_variable_warns_once_and_keeps_the_default(
        defaults: dict[str, int], variable: str, value: str, option: str | None, reason: str) -> None:
    report, stderr = start(**{variable: value})
    assert stderr == [f"pygomalloc: {variable}={value} ignored: {reason}"]
    assert report["rejected"] == [[variable, value, reason]]
    assert report["options"] == defaults  # the process went on, every option at its default


def test_several_at_once_with_good_ones(defaults: dict[str, int]) -> None:
    report, stderr = start(GOMALLOC_DECAY_MS="250", GOMALLOC_TINY="maybe", GOMALLOC_NOSUCH="1",
                           GOMALLOC_MADV_FREE="yes", GOMALLOC_MEMORY_LIMIT="3G")
    assert sorted(stderr) == [
        "pygomalloc: GOMALLOC_NOSUCH=1 ignored: no such option",
        f"pygomalloc: GOMALLOC_TINY=maybe ignored: {FLAG}",
    ]
    assert sorted(r[0] for r in report["rejected"]) == ["GOMALLOC_NOSUCH", "GOMALLOC_TINY"]
    assert report["options"] == {**defaults, "decay_ms": 250, "madv_free": 1, "memory_limit": 3 << 30}


def test_long_and_unprintable_values_are_cut_to_one_line() -> None:
    value = "x\ty" + "9" * 200
    report, stderr = start(GOMALLOC_DECAY_MS=value)
    shown = "x?y" + "9" * 61 + "..."
    assert stderr == [f"pygomalloc: GOMALLOC_DECAY_MS={shown} ignored: {MS}"]
    assert report["rejected"] == [["GOMALLOC_DECAY_MS", shown, MS]]


@pytest.mark.parametrize("variable", ["GOMALLOC_PRELOAD_LIB", "GOMALLOC_DEBUG_FAIL_EVERY", "GOMALLOC_DEBUG_"])
def test_variables_that_are_not_options_give_no_warning(defaults: dict[str, int], variable: str) -> None:
    report, stderr = start(**{variable: "/some/where"})
    assert stderr == [] and report["rejected"] == []
    assert report["options"] == defaults


def test_warning_before_main_under_ld_preload() -> None:
    """The preloaded library starts inside the program's first malloc (or its
    constructor), before main: the warning must still come, once, and the
    program run."""
    env = clean_env(LD_PRELOAD=gm.get_preload_library(), GOMALLOC_TINY="maybe", GOMALLOC_NOSUCH="1")
    proc = subprocess.run(["sh", "-c", "echo ran"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "ran\n"
    assert sorted(proc.stderr.splitlines()) == [
        "pygomalloc: GOMALLOC_NOSUCH=1 ignored: no such option",
        f"pygomalloc: GOMALLOC_TINY=maybe ignored: {FLAG}",
    ]


# --------------------------------------------------------------------------
# set_option


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("decay_ms", -5, "a number of milliseconds from 0 to 3600000"),
    ("decay_ms", 3600001, "a number of milliseconds from 0 to 3600000"),
    ("tiny", 2, "0 or 1"),
    ("fault_on_free", 3, "0, 1 or 2"),
    ("tcache_bytes", 1 << 70, "a number of bytes from 0 to 16777216"),  # does not fit a long long
    ("retain_percent", -1, "a percentage from 0 to 10000"),
])
def test_set_option_says_what_is_accepted(name: str, value: int, expected: str) -> None:
    before = gm.get_option(name)
    with pytest.raises(ValueError, match=re.escape(f"pygomalloc option {name!r} cannot be {value}: "
                                                   f"expected {expected}")):
        gm.set_option(name, value)
    assert gm.get_option(name) == before
    assert gm.describe_option(name) == expected


def test_unknown_option_suggests_the_closest() -> None:
    with pytest.raises(ValueError, match="unknown pygomalloc option 'decayms'; did you mean 'decay_ms'"):
        gm.set_option("decayms", 1)
    with pytest.raises(ValueError, match=r"unknown pygomalloc option 'xyzzy'$"):
        gm.get_option("xyzzy")
    with pytest.raises(ValueError, match="unknown pygomalloc option"):
        gm.describe_option("nosuch")


def test_every_option_is_described_from_its_table_row() -> None:
    for o in OPTIONS:
        text = gm.describe_option(o.name)
        if o.unit == "flag":
            assert text == "0 or 1"
        elif o.unit == "choice":
            assert text == ", ".join(map(str, range(o.min, o.max))) + f" or {o.max}"
        elif o.auto:
            assert text.endswith(f" from {o.min} to {o.max}, or auto (a percentage of the cgroup's "
                                 "memory limit)"), text
        else:
            assert text.endswith(f" from {o.min} to {o.max}"), text
        for bad in (o.min - 1, o.max + 1):
            with pytest.raises(ValueError, match=re.escape(f"expected {text}")):
                gm.set_option(o.name, bad)


# --------------------------------------------------------------------------
# Every GOMALLOC_ variable the project uses is an option or in NOT_OPTIONS

#: Files that name wrong variables on purpose (the tests of the warnings,
#: the README's example of one).
DELIBERATELY_WRONG = {"tests/test_options.py", "csrc/tests/test_options.c", "README.md"}
#: Not environment variables: the header guard and the symbol versions.
NOT_VARIABLES = re.compile(r"GOMALLOC_(H|[0-9a-f]{12})$")


def test_every_gomalloc_variable_used_is_known() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if files.returncode != 0:
        pytest.skip("not a git checkout")
    known = {"GOMALLOC_" + o.name.upper() for o in OPTIONS}
    prefixes = tuple(v[:-1] for v, _ in NOT_OPTIONS if v.endswith("*"))
    known |= {v for v, _ in NOT_OPTIONS if not v.endswith("*")}
    unknown = {}
    for name in files.stdout.split():
        path = ROOT / name
        if name in DELIBERATELY_WRONG or path.suffix not in (".py", ".c", ".h", ".sh", ".md", ".mk", "") \
                or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for variable in re.findall(r"\bGOMALLOC_[A-Za-z0-9_]+\b", text):
            if variable not in known and not variable.startswith(prefixes) \
                    and not NOT_VARIABLES.match(variable):
                unknown.setdefault(variable, []).append(name)
    assert not unknown, f"GOMALLOC_ variables that start-up would warn about: {unknown}"
