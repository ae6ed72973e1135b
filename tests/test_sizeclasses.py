"""Tests of the size-class table csrc/sizeclasses.h and its generator.

These use only the repository's files, not the compiled package.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "tools" / "mksizeclasses.py"
HEADER = ROOT / "csrc" / "sizeclasses.h"

PAGE_SIZE = 8192
MAX_SMALL_SIZE = 32768
SMALL_SIZE_DIV = 8
SMALL_SIZE_MAX = 1024
LARGE_SIZE_DIV = 128


def _parse_header() -> tuple[dict[str, int], dict[str, list[int]]]:
    text = HEADER.read_text(encoding="ascii")
    defines = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^#define\s+(GM_SC_\w+)\s+(\d+)\s*$", text, re.M)
    }
    arrays = {}
    for m in re.finditer(
        r"static\s+const\s+uint\d+_t\s+(gm_\w+)\s*\[([^\]]*)\]\s*=\s*\{([^}]*)\};", text
    ):
        name, body = m.group(1), m.group(3)
        arrays[name] = [int(v) for v in re.findall(r"\d+", body)]
    return defines, arrays


DEFINES, ARRAYS = _parse_header()
SIZES = ARRAYS["gm_class_to_size"]
NPAGES = ARRAYS["gm_class_to_allocnpages"]
NELEMS = ARRAYS["gm_class_to_nelems"]
DIVMAGIC = ARRAYS["gm_class_to_divmagic"]
CLASS8 = ARRAYS["gm_size_to_class8"]
CLASS128 = ARRAYS["gm_size_to_class128"]
NCLASSES = DEFINES["GM_SC_NUM_CLASSES"]


def lookup(size: int) -> int:
    """The size-to-class lookup as the allocator does it."""
    if size <= SMALL_SIZE_MAX - 8:
        return CLASS8[(size + SMALL_SIZE_DIV - 1) >> 3]
    return CLASS128[(size - SMALL_SIZE_MAX + LARGE_SIZE_DIV - 1) >> 7]


def test_regenerating_matches_checked_in_header():
    result = subprocess.run(
        [sys.executable, str(GENERATOR)],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    assert result.stdout == HEADER.read_bytes(), (
        "csrc/sizeclasses.h is stale: run python tools/mksizeclasses.py -o csrc/sizeclasses.h"
    )


def test_generator_writes_file(tmp_path):
    out = tmp_path / "sc.h"
    subprocess.run([sys.executable, str(GENERATOR), "-o", str(out)], cwd=ROOT, check=True)
    assert out.read_bytes() == HEADER.read_bytes()


def test_constants_and_array_lengths():
    assert DEFINES["GM_SC_PAGE_SIZE"] == PAGE_SIZE == 1 << DEFINES["GM_SC_PAGE_SHIFT"]
    assert DEFINES["GM_SC_MAX_SMALL_SIZE"] == MAX_SMALL_SIZE
    assert DEFINES["GM_SC_SMALL_SIZE_DIV"] == SMALL_SIZE_DIV
    assert DEFINES["GM_SC_SMALL_SIZE_MAX"] == SMALL_SIZE_MAX
    assert DEFINES["GM_SC_LARGE_SIZE_DIV"] == LARGE_SIZE_DIV
    for arr in (SIZES, NPAGES, NELEMS, DIVMAGIC):
        assert len(arr) == NCLASSES
    assert len(CLASS8) == SMALL_SIZE_MAX // SMALL_SIZE_DIV + 1
    assert len(CLASS128) == (MAX_SMALL_SIZE - SMALL_SIZE_MAX) // LARGE_SIZE_DIV + 1
    assert DEFINES["GM_SC_MAX_NPAGES"] == max(NPAGES)
    # The spans' bitmaps (BITMAP_WORDS) hold the classes malloc uses: not the
    # 8-byte class's 1024 objects, which malloc never hands out.
    used = [n for size, n in zip(SIZES, NELEMS) if size >= DEFINES["GM_SC_MIN_ALLOC_SIZE"]]
    assert DEFINES["GM_SC_MAX_OBJECTS"] == max(used) == 512


def test_class_zero_is_the_dummy_class():
    assert SIZES[0] == NPAGES[0] == NELEMS[0] == DIVMAGIC[0] == 0


def test_sizes_strictly_increasing_and_end_at_max_small_size():
    assert all(a < b for a, b in zip(SIZES, SIZES[1:]))
    assert SIZES[-1] == MAX_SMALL_SIZE


def test_sizes_are_aligned_for_max_align_t():
    assert SIZES[1] == 8
    for c in range(1, NCLASSES):
        if SIZES[c] >= 16:
            assert SIZES[c] % 16 == 0, (c, SIZES[c])


def test_nelems_and_tail_waste():
    for c in range(1, NCLASSES):
        span = NPAGES[c] * PAGE_SIZE
        assert NPAGES[c] >= 1
        assert NELEMS[c] == span // SIZES[c]
        tail = span % SIZES[c]
        assert tail * 8 <= span, f"class {c}: tail waste {tail} of {span}"


def test_lookup_returns_smallest_fitting_class():
    c = 1
    for size in range(1, MAX_SMALL_SIZE + 1):
        while SIZES[c] < max(size, 16):
            c += 1
        assert lookup(size) == c, f"size {size}: got class {lookup(size)}, want {c}"


def test_lookup_tables_exactly():
    # Every entry, including index 0 and the ones the lookup above never
    # reaches, is the smallest class holding its size.
    def smallest(n):
        return next(c for c in range(NCLASSES) if SIZES[c] >= max(n, 16))

    assert CLASS8 == [smallest(i * SMALL_SIZE_DIV) for i in range(len(CLASS8))]
    assert CLASS128 == [
        smallest(SMALL_SIZE_MAX + i * LARGE_SIZE_DIV) for i in range(len(CLASS128))
    ]


def test_divmagic_exact_for_every_offset():
    for c in range(1, NCLASSES):
        size, m = SIZES[c], DIVMAGIC[c]
        assert 0 < m < 2**32
        assert m == (2**32 - 1) // size + 1
        for n in range(NPAGES[c] * PAGE_SIZE + 1):
            if (n * m) >> 32 != n // size:
                pytest.fail(f"class {c} (size {size}): divmagic wrong at offset {n}")
            if (((n * m) & 0xFFFFFFFF) < m) != (n % size == 0):
                pytest.fail(f"class {c} (size {size}): multiple-of-size test wrong at offset {n}")


C_PROGRAM = r"""
#include <stdio.h>
#include "sizeclasses.h"

static unsigned class_of(unsigned size) {
    if (size <= GM_SC_SMALL_SIZE_MAX - 8)
        return gm_size_to_class8[(size + GM_SC_SMALL_SIZE_DIV - 1) / GM_SC_SMALL_SIZE_DIV];
    return gm_size_to_class128[(size - GM_SC_SMALL_SIZE_MAX + GM_SC_LARGE_SIZE_DIV - 1)
                               / GM_SC_LARGE_SIZE_DIV];
}

int main(void) {
    static const unsigned cases[][2] = {
        {0, 16}, {1, 16}, {8, 16}, {9, 16}, {16, 16}, {17, 32}, {24, 32}, {33, 48},
        {1000, 1024}, {1016, 1024}, {1017, 1024}, {1024, 1024}, {1025, 1152},
        {5000, 5376}, {32767, 32768}, {32768, 32768},
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned got = gm_class_to_size[class_of(cases[i][0])];
        if (got != cases[i][1]) {
            printf("size %u: class size %u, want %u\n", cases[i][0], got, cases[i][1]);
            bad = 1;
        }
    }
    if (gm_class_to_size[gm_size_to_class8[1]] != 16) bad = 1;
    for (unsigned c = 1; c < GM_SC_NUM_CLASSES; c++) {
        uint32_t span = (uint32_t)gm_class_to_allocnpages[c] << GM_SC_PAGE_SHIFT;
        if (gm_class_to_allocnpages[c] > GM_SC_MAX_NPAGES) bad = 1;
        if (gm_class_to_nelems[c] > GM_SC_MAX_OBJECTS && gm_class_to_size[c] >= GM_SC_MIN_ALLOC_SIZE) bad = 1;
        uint32_t n = span - 1;
        uint32_t q = (uint32_t)(((uint64_t)n * gm_class_to_divmagic[c]) >> 32);
        if (q != n / gm_class_to_size[c]) {
            printf("class %u: divmagic wrong\n", c);
            bad = 1;
        }
    }
    return bad;
}
"""


def test_header_compiles_and_works_in_c(tmp_path):
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no cc on PATH")
    src = tmp_path / "sc_test.c"
    exe = tmp_path / "sc_test"
    src.write_text(C_PROGRAM, encoding="ascii")
    build = subprocess.run(
        [cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", str(ROOT / "csrc"),
         str(src), "-o", str(exe)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    result = subprocess.run([str(exe)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
