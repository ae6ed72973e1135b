"""The heap as the kernel sees it: /proc/self/maps.

Arenas are 64 MiB of address space, 64 MiB-aligned, reserved PROT_NONE
(``---p``) and made read/write (``rw-p``) only as far as the heap has grown.
The first one is placed at the hint 0x00c0 << 32, as in Go, unless that
address range is taken.
"""

from __future__ import annotations

from typing import NamedTuple

import pygomalloc as gm

ARENA = 1 << 26
FIRST_HINT = 0x00C0 << 32


class Mapping(NamedTuple):
    start: int
    end: int
    perms: str
    name: str


def mappings() -> list[Mapping]:
    result = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            result.append(
                Mapping(start, end, fields[1], fields[5].strip() if len(fields) > 5 else "")
            )
    return result


def arenas() -> dict[int, list[Mapping]]:
    """The mappings inside each 64 MiB-aligned range that pygomalloc owns."""
    found: dict[int, list[Mapping]] = {}
    for m in mappings():
        base = m.start - m.start % ARENA
        while base < m.end:
            if gm.owns(base):
                found.setdefault(base, []).append(m)
            base += ARENA
    return found


def test_arenas_are_64_mib_aligned_reservations_partly_mapped() -> None:
    block = gm.malloc(1000)
    try:
        found = arenas()
        assert found, "no 64 MiB-aligned region owned by pygomalloc"
        home = found[block - block % ARENA]
        assert any(m.start <= block < m.end and m.perms == "rw-p" for m in home)
        for base, parts in found.items():
            assert base % ARENA == 0
            perms = {m.perms for m in parts}
            assert perms <= {"rw-p", "---p"}, perms
            # Anonymous memory only, and the arena is covered from start to end.
            assert all(m.name == "" for m in parts)
            covered = sum(min(m.end, base + ARENA) - max(m.start, base) for m in parts)
            assert covered == ARENA
        # Reserved and mapped side by side within one arena.
        assert any({m.perms for m in parts} == {"rw-p", "---p"} for parts in found.values())
    finally:
        gm.free(block)


def test_first_arena_is_at_the_hint_unless_taken() -> None:
    block = gm.malloc(1000)
    try:
        lowest = min(arenas())
        if lowest < FIRST_HINT:
            # Allowed only if something else sat at the hint.
            taken = any(
                m.start < FIRST_HINT + ARENA and m.end > FIRST_HINT and not gm.owns(m.start)
                for m in mappings()
            )
            assert taken, f"first arena at {lowest:#x}, below the free hint {FIRST_HINT:#x}"
        else:
            assert lowest >= FIRST_HINT
    finally:
        gm.free(block)


def test_owns_is_false_just_outside_every_arena() -> None:
    found = arenas()
    for base in found:
        assert gm.owns(base)
        assert gm.owns(base + ARENA - 1)
        if base - ARENA not in found:
            assert not gm.owns(base - 1)
        if base + ARENA not in found:
            assert not gm.owns(base + ARENA)
