#!/usr/bin/env python3
"""Write the seed corpus of csrc/fuzz/fuzz_ops.c into csrc/fuzz/corpus/.

Each seed is a sequence of operations in the target's encoding (see the
comment at the top of fuzz_ops.c and LLVMFuzzerTestOneInput): a tag byte
(low 4 bits: the operation; bits 5-6: the worker thread) and the bytes the
operation reads.  The seeds give the fuzzer a start on every operation:

    python3 csrc/fuzz/make_corpus.py
"""

from __future__ import annotations

import struct
from pathlib import Path

OUT = Path(__file__).resolve().parent / "corpus"

# Operations (tag % 16).
MALLOC, CALLOC, ALIGNED, FREE, REALLOC, FLUSH, RELEASE, OPTION, BAD, RESTART, BURST, CHECK = (
    0, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15,
)
# Size classes (first byte of a size, % 16).
TINY, SMALL, MEDIUM, LARGE, POW2, NEAR_POW2, HUGE = 0, 3, 7, 10, 13, 14, 15


def tag(op: int, worker: int = 0) -> bytes:
    return bytes([op | (worker << 5)])


def size(cls: int, r: int) -> bytes:
    return bytes([cls]) + struct.pack("<I", r & 0xFFFFFFFF)


def malloc(cls: int, r: int, worker: int = 0) -> bytes:
    return tag(MALLOC, worker) + size(cls, r)


def calloc(cls: int, r: int, count: int, worker: int = 0) -> bytes:
    return tag(CALLOC, worker) + size(cls, r) + bytes([count])


def aligned(cls: int, r: int, log2: int, memalign: bool, worker: int = 0) -> bytes:
    return tag(ALIGNED, worker) + size(cls, r) + bytes([log2, int(memalign)])


def free(index: int, checked: bool, worker: int = 0) -> bytes:
    return tag(FREE, worker) + struct.pack("<H", index) + bytes([int(checked)])


def realloc(index: int, cls: int, r: int, worker: int = 0) -> bytes:
    return tag(REALLOC, worker) + struct.pack("<H", index) + size(cls, r)


def option(which: int, r: int) -> bytes:
    return tag(OPTION) + bytes([which]) + struct.pack("<I", r & 0xFFFFFFFF)


def bad(what: int, r: int, worker: int = 0) -> bytes:
    return tag(BAD, worker) + bytes([what]) + struct.pack("<I", r & 0xFFFFFFFF)


SEEDS: dict[str, bytes] = {
    "sizes": b"".join(malloc(c, r) for c in (TINY, SMALL, MEDIUM, LARGE, POW2, NEAR_POW2) for r in (0, 5, 77, 1000))
    + b"".join(free(i * 7 % 13, i % 2 == 0) for i in range(24))
    + tag(CHECK),
    "realloc_chain": malloc(SMALL, 3)
    + b"".join(realloc(0, c, r) for c, r in ((MEDIUM, 100), (LARGE, 4000), (HUGE, 10), (SMALL, 1), (TINY, 0)))
    + malloc(LARGE, 9)
    + realloc(0, MEDIUM, 1),
    "threads": b"".join(malloc(c, r, w) for w in range(3) for c, r in ((SMALL, w), (MEDIUM, 9 * w), (LARGE, w)))
    + b"".join(free(0, True, (w + 1) % 3) for w in range(6))
    + tag(FLUSH, 1)
    + tag(RESTART, 2)
    + malloc(SMALL, 1, 2)
    + tag(RELEASE)
    + b"".join(free(0, False, w) for w in range(3)),
    "bad_calls": malloc(SMALL, 40)
    + malloc(LARGE, 7)
    + malloc(TINY, 4)
    + free(2, True)
    + b"".join(bad(w, r) for w in range(6) for r in (1, 2, 0x1234))
    + tag(CHECK),
    "options": option(0, 1)  # tiny on
    + b"".join(malloc(TINY, r) for r in range(8))
    + option(1, 2)  # profile every 4 KiB and more
    + b"".join(malloc(SMALL, r) for r in range(4))
    + option(2, 2)  # a hard limit near the heap in use
    + malloc(HUGE, 3)
    + option(2, 1)  # none
    + option(3, 2)  # fault_on_free = 2
    + malloc(LARGE, 5)
    + free(0, True)
    + option(4, 1)  # tcache_bytes
    + tag(RESTART, 1)
    + tag(BURST, 1)
    + bytes([20])
    + b"".join(size(SMALL, r) for r in range(20)),
    "aligned_calloc": b"".join(aligned(c, r, l, l % 2 == 1) for c, r, l in ((SMALL, 1, 4), (MEDIUM, 2, 12), (LARGE, 3, 20), (TINY, 0, 0)))
    + b"".join(calloc(c, r, n) for c, r, n in ((SMALL, 5, 3), (LARGE, 6, 1), (MEDIUM, 7, 7)))
    + tag(RELEASE),
    "os_faults": option(5, (0x3F << 8) | 4)  # every 5th call of every kind
    + b"".join(malloc(c, r, r % 3) for c in (LARGE, HUGE, MEDIUM) for r in range(6))
    + tag(RELEASE)
    + tag(RESTART, 1)
    + b"".join(free(0, True) for _ in range(10)),
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, data in SEEDS.items():
        (OUT / name).write_bytes(data)
    print(f"wrote {len(SEEDS)} seeds to {OUT}")


if __name__ == "__main__":
    main()
