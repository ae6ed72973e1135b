"""The source tree keeps its architecture: checks on the C sources as text."""

from __future__ import annotations

import re
from pathlib import Path

CSRC = Path(__file__).resolve().parent.parent / "csrc"
OS_CALLS = re.compile(r"\b(mmap|munmap|mprotect|madvise|mremap|sbrk|brk)\s*\(")


def c_code(path: Path) -> str:
    """The file without comments and string literals."""
    text = path.read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(\\.|[^"\\])*"', '""', text)


def test_only_the_os_layer_calls_the_kernel_for_memory():
    offenders = {
        p.name: OS_CALLS.findall(c_code(p))
        for p in sorted(CSRC.glob("*.c"))
        if p.name != "mem_linux.c"
    }
    assert {name: calls for name, calls in offenders.items() if calls} == {}
    assert OS_CALLS.search(c_code(CSRC / "mem_linux.c"))


def test_metadata_never_comes_from_libc_malloc():
    # The allocator must not call the C library's allocator for itself: under
    # LD_PRELOAD that would be itself, and it must work before it is set up.
    # (preload.c, the LD_PRELOAD shim, defines the family: no allocator there.)
    libc_alloc = re.compile(r"(?<![\w.>])(malloc|calloc|realloc|free|posix_memalign|aligned_alloc)\s*\(")
    offenders = {
        p.name: libc_alloc.findall(c_code(p))
        for p in sorted(CSRC.glob("*.c"))
        if p.name != "preload.c"
    }
    assert {name: calls for name, calls in offenders.items() if calls} == {}
