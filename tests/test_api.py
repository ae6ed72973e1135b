"""Named edge cases of the Python API, one behaviour per test."""

from __future__ import annotations

import ctypes
import dataclasses
import pickle
import random
import re
from pathlib import Path

import pytest

import pygomalloc as gm
from pygomalloc._gomalloc import lib

MAX_SMALL = lib.GM_MAX_SMALL_SIZE
MiB = 1 << 20
SIZES = [
    1,
    7,
    8,
    15,
    16,
    17,
    100,
    1024,
    4000,
    MAX_SMALL - 1,
    MAX_SMALL,
    MAX_SMALL + 1,
    100_000,
    5 * MiB,
]


def pattern(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def write(address: int, data: bytes) -> None:
    ctypes.memmove(address, data, len(data))


def read(address: int, size: int) -> bytes:
    return ctypes.string_at(address, size)


def live_objects() -> int:
    gm.thread_flush()
    return gm.stats().heap_objects


# --------------------------------------------------------------------------
# malloc / usable_size


def test_malloc_zero_gives_distinct_freeable_addresses() -> None:
    addresses = [gm.malloc(0) for _ in range(100)]
    assert 0 not in addresses
    assert len(set(addresses)) == len(addresses)
    for address in addresses:
        assert gm.owns(address)
        gm.free(address)


@pytest.mark.parametrize("size", SIZES)
def test_malloc_gives_writable_memory_of_at_least_the_size(size: int) -> None:
    address = gm.malloc(size)
    assert gm.usable_size(address) >= size
    data = pattern(size)
    write(address, data)
    assert read(address, size) == data
    gm.free(address)


@pytest.mark.parametrize("size", SIZES)
def test_malloc_keeps_the_alignment_c_requires(size: int) -> None:
    # max_align_t is 16 bytes; a smaller object needs its largest power of two.
    required = min(16, 1 << (size.bit_length() - 1))
    addresses = [gm.malloc(size) for _ in range(20)]
    assert all(address % required == 0 for address in addresses)
    for address in addresses:
        gm.free(address)


def test_usable_size_of_null_is_zero() -> None:
    assert gm.usable_size(0) == 0


def test_free_null_does_nothing() -> None:
    before = gm.stats()
    gm.free(0)
    after = gm.stats()
    assert (after.frees, after.bad_frees) == (before.frees, before.bad_frees)


# --------------------------------------------------------------------------
# bad sizes


def test_negative_size_raises_value_error() -> None:
    with pytest.raises(ValueError):
        gm.malloc(-1)
    with pytest.raises(ValueError):
        gm.calloc(-1, 8)
    with pytest.raises(ValueError):
        gm.calloc(8, -1)
    with pytest.raises(ValueError):
        gm.aligned_alloc(16, -1)
    address = gm.malloc(10)
    with pytest.raises(ValueError):
        gm.realloc(address, -1)
    assert gm.usable_size(address) >= 10
    gm.free(address)


@pytest.mark.parametrize("size", [2**63, 2**64 - 1, 2**64, 2**100, 2**48])
def test_absurd_size_raises_memory_error_and_the_allocator_still_works(size: int) -> None:
    with pytest.raises(MemoryError):
        gm.malloc(size)
    with pytest.raises(MemoryError):
        gm.aligned_alloc(4096, size)
    address = gm.malloc(64)
    write(address, b"x" * 64)
    gm.free(address)
    gm.check_heap()


@pytest.mark.parametrize(
    "count, size", [(2**32, 2**32), (2**63, 2), (2, 2**63), (2**64 - 1, 2**64 - 1), (2**64, 1)]
)
def test_calloc_overflow_raises_memory_error(count: int, size: int) -> None:
    with pytest.raises(MemoryError):
        gm.calloc(count, size)
    address = gm.calloc(4, 4)
    assert read(address, 16) == bytes(16)
    gm.free(address)


@pytest.mark.parametrize("size", [8, 100, 4000, MAX_SMALL, 100_000, 3 * MiB])
def test_calloc_zeroes_reused_memory(size: int) -> None:
    # Dirty some blocks of this size, free them, then calloc into their place.
    dirty = [gm.malloc(size) for _ in range(8)]
    for address in dirty:
        ctypes.memset(address, 0xFF, size)
    for address in dirty:
        gm.free(address)
    fresh = [gm.calloc(1, size) for _ in range(8)]
    assert all(read(address, size) == bytes(size) for address in fresh)
    for address in fresh:
        gm.free(address)


# --------------------------------------------------------------------------
# realloc


@pytest.mark.parametrize(
    "old, new",
    [
        (8, 24),
        (24, 8),
        (100, 5000),
        (5000, 100),
        (1000, 40_000),
        (40_000, 1000),
        (40_000, MiB),
        (MiB, 40_000),
        (MiB, 3 * MiB),
        (3 * MiB, MiB),
        (0, 100),
        (100, 100),
    ],
)
def test_realloc_preserves_contents(old: int, new: int) -> None:
    address = gm.malloc(old)
    data = pattern(old, seed=old)
    write(address, data)
    moved = gm.realloc(address, new)
    assert gm.usable_size(moved) >= new
    keep = min(old, new)
    assert read(moved, keep) == data[:keep]
    write(moved, pattern(new))  # the whole new size is usable
    gm.free(moved)


def test_realloc_of_null_allocates() -> None:
    address = gm.realloc(0, 100)
    assert gm.owns(address)
    assert gm.usable_size(address) >= 100
    gm.free(address)


def test_realloc_to_zero_gives_a_freeable_address() -> None:
    address = gm.realloc(gm.malloc(100), 0)
    assert address != 0
    gm.free(address)


def test_failed_realloc_leaves_the_object_alone() -> None:
    address = gm.malloc(100)
    write(address, pattern(100))
    with pytest.raises(MemoryError):
        gm.realloc(address, 2**63)
    assert read(address, 100) == pattern(100)
    gm.free(address)


# --------------------------------------------------------------------------
# aligned_alloc


@pytest.mark.parametrize("alignment", [2**k for k in range(21)])
@pytest.mark.parametrize("size", [1, 100, 5000, 70_000])
def test_aligned_alloc_aligns(alignment: int, size: int) -> None:
    addresses = [gm.aligned_alloc(alignment, size) for _ in range(3)]
    for address in addresses:
        assert address % alignment == 0
        assert gm.usable_size(address) >= size
        write(address, pattern(size))
    for address in addresses:
        gm.free(address)


@pytest.mark.parametrize("alignment", [0, 3, 24, 100, -8, 2**64, 2**64 + 1])
def test_aligned_alloc_refuses_bad_alignments(alignment: int) -> None:
    with pytest.raises(ValueError):
        gm.aligned_alloc(alignment, 64)


# --------------------------------------------------------------------------
# bad pointers


def foreign_addresses() -> list[int]:
    return [id(object()), 0x1000, 2**64 - 1, 2**64 - 4096]


def test_free_of_memory_not_ours_raises_not_ours(libc: ctypes.CDLL) -> None:
    c_block = libc.malloc(64)
    try:
        for address in [c_block, *foreign_addresses(), -1, 2**64]:
            before = gm.stats().bad_frees
            with pytest.raises(gm.NotOursError) as info:
                gm.free(address)
            assert info.value.address == address
            if 0 <= address < 2**64:
                assert gm.stats().bad_frees == before + 1
            with pytest.raises(gm.NotOursError):
                gm.usable_size(address)
            with pytest.raises(gm.NotOursError):
                gm.realloc(address, 10)
    finally:
        libc.free(c_block)
    gm.check_heap()


@pytest.mark.parametrize(
    "size, offset", [(8, 4), (64, 8), (64, 1), (4096, 2048), (100_000, 8192), (100_000, 1)]
)
def test_free_of_an_interior_pointer_raises_interior(size: int, offset: int) -> None:
    address = gm.malloc(size)
    write(address, pattern(size))
    with pytest.raises(gm.InteriorPointerError):
        gm.free(address + offset)
    with pytest.raises(gm.InteriorPointerError):
        gm.usable_size(address + offset)
    with pytest.raises(gm.InteriorPointerError):
        gm.realloc(address + offset, 10)
    gm.check_heap()
    assert read(address, size) == pattern(size)
    gm.free(address)


@pytest.mark.parametrize("size", [8, 64, 4096, MAX_SMALL, 100_000, 2 * MiB])
def test_double_free_raises_not_allocated(size: int) -> None:
    address = gm.malloc(size)
    gm.free(address)
    with pytest.raises(gm.NotAllocatedError):
        gm.free(address)
    with pytest.raises(gm.NotAllocatedError):
        gm.usable_size(address)
    with pytest.raises(gm.NotAllocatedError):
        gm.realloc(address, 10)
    gm.check_heap()
    again = gm.malloc(size)  # the allocator still works
    gm.free(again)


def test_double_free_after_thread_flush_raises_not_allocated() -> None:
    address = gm.malloc(48)
    gm.free(address)
    gm.thread_flush()
    with pytest.raises(gm.NotAllocatedError):
        gm.free(address)


def test_pointer_errors_form_a_hierarchy() -> None:
    for cls in (gm.NotOursError, gm.InteriorPointerError, gm.NotAllocatedError):
        assert issubclass(cls, gm.InvalidPointerError)
    assert issubclass(gm.InvalidPointerError, ValueError)


# --------------------------------------------------------------------------
# owns


@pytest.mark.parametrize("size", [1, 100, MAX_SMALL, 100_000, 5 * MiB])
def test_owns_our_memory(size: int) -> None:
    address = gm.malloc(size)
    assert gm.owns(address)
    assert gm.owns(address + size - 1)
    gm.free(address)


def test_owns_nothing_foreign(libc: ctypes.CDLL) -> None:
    c_block = libc.malloc(64)
    try:
        for address in [c_block, *foreign_addresses(), 0, -1, 2**64, 2**80]:
            assert gm.owns(address) is False
    finally:
        libc.free(c_block)


# --------------------------------------------------------------------------
# stats


def check_consistent(st: gm.Stats) -> None:
    assert st.heap_objects == st.mallocs - st.frees
    assert st.heap_alloc <= st.heap_inuse <= st.heap_sys <= st.sys
    assert st.heap_idle + st.heap_inuse == st.heap_sys
    assert st.heap_released <= st.heap_idle
    assert st.heap_sys <= st.heap_reserved
    assert st.heap_alloc <= st.total_alloc
    assert st.sys == st.heap_sys + st.mspan_sys + st.mcache_sys + st.other_sys
    assert st.mspan_inuse <= st.mspan_sys
    assert st.mcache_inuse <= st.mcache_sys
    assert st.cached_bytes + st.transfer_bytes <= st.heap_inuse - st.heap_alloc
    assert len(st.by_size) == lib.GM_NUM_SIZE_CLASSES
    assert sum(row.mallocs for row in st.by_size) == st.mallocs
    assert sum(row.frees for row in st.by_size) == st.frees
    assert st.by_size[0].live == st.large_objects
    assert all(row.live >= 0 for row in st.by_size)
    assert all(row.idle_slots >= 0 for row in st.by_size)
    assert all(row.capacity == row.spans * (row.npages * 8192 // row.size)
               for row in st.by_size[1:])
    assert st.by_size[0].spans == st.by_size[0].capacity == st.large_objects
    assert sum(row.spans * row.npages for row in st.by_size[1:]) * 8192 <= st.heap_inuse


def test_stats_are_consistent_under_a_mixed_workload() -> None:
    rng = random.Random(7)
    addresses = [gm.malloc(rng.choice(SIZES[:-1])) for _ in range(2000)]
    for address in addresses[::3]:
        gm.free(address)
    gm.thread_flush()
    check_consistent(gm.stats())
    for address in addresses[1::3] + addresses[2::3]:
        gm.free(address)
    gm.thread_flush()
    check_consistent(gm.stats())


def test_stats_count_each_object() -> None:
    gm.thread_flush()
    before = gm.stats()
    addresses = [gm.malloc(100) for _ in range(500)] + [gm.malloc(3 * MiB) for _ in range(3)]
    gm.thread_flush()
    during = gm.stats()
    assert during.mallocs - before.mallocs == 503
    assert during.heap_objects - before.heap_objects == 503
    assert during.large_objects - before.large_objects == 3
    row = next(r for r in during.by_size if r.size >= 100)
    assert row.mallocs - before.by_size[row.size_class].mallocs == 500
    assert during.heap_alloc - before.heap_alloc >= 500 * row.size + 3 * 3 * MiB
    for address in addresses:
        gm.free(address)
    gm.thread_flush()
    after = gm.stats()
    assert after.frees - before.frees == 503
    assert after.heap_objects == before.heap_objects
    assert after.heap_alloc == before.heap_alloc


def test_size_classes_ascend_to_the_largest_small_size() -> None:
    sizes = [row.size for row in gm.stats().by_size]
    assert sizes[0] == 0
    assert sizes[1:] == sorted(set(sizes[1:]))
    assert sizes[-1] == MAX_SMALL
    assert [row.size_class for row in gm.stats().by_size] == list(range(lib.GM_NUM_SIZE_CLASSES))


def test_stats_fields_are_those_of_the_header() -> None:
    header = (Path(gm.get_include()) / "gomalloc.h").read_text()

    def fields_of(struct: str) -> list[str]:
        body = re.search(rf"struct {struct} \{{(.*?)\n\}};", header, re.DOTALL)
        assert body is not None
        code = re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.DOTALL)
        names: list[str] = []
        for declaration in code.split(";"):
            declaration = re.sub(r"\[.*?\]", "", declaration).strip()
            if declaration:
                first, *rest = declaration.split(",")
                names += [first.split()[-1], *(name.strip() for name in rest)]
        return names

    # size is the struct's header, which stats() sets: not a figure.
    assert ["size", *(f.name for f in dataclasses.fields(gm.Stats))] == fields_of("gm_stats")
    assert [f.name for f in dataclasses.fields(gm.SizeClassStats)] == [
        "size_class",
        *fields_of("gm_size_class_stats"),
    ]


def test_stats_are_frozen() -> None:
    st = gm.stats()
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.mallocs = 0  # type: ignore[misc]


def test_release_returns_every_free_page() -> None:
    addresses = [gm.malloc(MiB) for _ in range(16)]
    for address in addresses:
        ctypes.memset(address, 1, MiB)
    for address in addresses:
        gm.free(address)
    released = gm.release()
    assert released >= 0
    st = gm.stats()
    assert st.heap_released == st.heap_idle
    check_consistent(st)


# --------------------------------------------------------------------------
# Buffer


def test_buffer_view_is_the_memory() -> None:
    with gm.Buffer(64) as buf:
        assert buf.size == len(buf) == 64
        assert gm.usable_size(buf.address) >= 64
        view = buf.view
        assert (view.format, view.readonly, view.nbytes) == ("B", False, 64)
        view[:5] = b"hello"
        assert read(buf.address, 5) == b"hello"
        write(buf.address + 60, b"tail")
        assert bytes(view[60:]) == b"tail"
        view[0] = ord("j")
        assert bytes(buf)[:5] == b"jello"
        assert memoryview(view).tobytes() == bytes(buf)
        assert buf.__buffer__(0) is view


def test_buffer_zero() -> None:
    dirty = gm.malloc(4096)
    ctypes.memset(dirty, 0xFF, 4096)
    gm.free(dirty)
    with gm.Buffer(4096, zero=True) as buf:
        assert bytes(buf) == bytes(4096)


def test_buffer_frees_its_memory_on_exit_and_refuses_use_after() -> None:
    before = live_objects()
    with gm.Buffer(1000) as buf:
        view = buf.view
        assert live_objects() == before + 1
    assert buf.closed
    assert live_objects() == before
    with pytest.raises(ValueError):
        view[0]
    with pytest.raises(ValueError):
        _ = buf.view
    with pytest.raises(ValueError):
        _ = buf.address
    with pytest.raises(ValueError):
        bytes(buf)
    with pytest.raises(ValueError):
        len(buf)
    with pytest.raises(ValueError), buf:
        pass
    buf.close()  # closing again is allowed
    assert "closed" in repr(buf)


def test_buffer_slices_keep_the_memory_alive_after_close() -> None:
    before = live_objects()
    buf = gm.Buffer(100)
    buf.view[:] = pattern(100)
    tail = buf.view[50:]
    buf.close()
    assert live_objects() == before + 1
    assert bytes(tail) == pattern(100)[50:]
    del tail
    assert live_objects() == before


def test_buffer_refuses_to_close_while_exported() -> None:
    buf = gm.Buffer(16)
    exported = pickle.PickleBuffer(buf.view)  # holds a buffer export of the view
    with pytest.raises(BufferError):
        buf.close()
    buf.view[0] = ord("z")
    assert bytes(exported.raw())[:1] == b"z"
    exported.release()
    buf.close()
    assert buf.closed


def test_buffer_unclosed_is_freed_when_collected() -> None:
    before = live_objects()
    buf = gm.Buffer(50_000)
    assert live_objects() == before + 1
    del buf
    assert live_objects() == before


def test_buffer_bad_sizes() -> None:
    with pytest.raises(ValueError):
        gm.Buffer(-1)
    with pytest.raises(MemoryError):
        gm.Buffer(2**63)
    with gm.Buffer(0) as buf:
        assert len(buf) == 0
        assert gm.owns(buf.address)


# --------------------------------------------------------------------------
# options


def test_options_round_trip() -> None:
    options = gm.options()
    assert options and all(isinstance(v, int) for v in options.values())
    assert "abort_on_error" in options
    for name, value in options.items():
        assert gm.get_option(name) == value
        gm.set_option(name, value)
        assert gm.get_option(name) == value
    original = gm.get_option("abort_on_error")
    try:
        gm.set_option("abort_on_error", 1 - original)
        assert gm.get_option("abort_on_error") == 1 - original
    finally:
        gm.set_option("abort_on_error", original)
    assert gm.options() == options


@pytest.mark.parametrize("name", ["no_such_option", "", "ABORT_ON_ERROR", "abort_on_error\0x"])
def test_unknown_option_raises_value_error(name: str) -> None:
    with pytest.raises(ValueError):
        gm.get_option(name)
    with pytest.raises(ValueError):
        gm.set_option(name, 1)


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**100])
def test_option_value_out_of_range_raises_value_error(value: int) -> None:
    original = gm.get_option("abort_on_error")
    with pytest.raises(ValueError):
        gm.set_option("abort_on_error", value)
    assert gm.get_option("abort_on_error") == original


def test_tiny_option_packs_small_objects() -> None:
    gm.set_option("tiny", 1)
    try:
        before = gm.stats()
        addrs = [gm.malloc(n) for n in (1, 2, 3, 4, 5, 8) * 100]
        mid = gm.stats()
        assert mid.tiny_mallocs - before.tiny_mallocs == 600
        assert all(gm.usable_size(a) in (1, 2, 4, 8) for a in addrs)
        assert len(set(addrs)) == 600
        with pytest.raises(gm.InteriorPointerError):
            gm.free(addrs[1] + 1)  # inside a 2-byte slot
        for a in addrs:
            gm.free(a)
        with pytest.raises(gm.NotAllocatedError):
            gm.free(addrs[0])
        gm.thread_flush()
        after = gm.stats()
        assert after.tiny_frees - before.tiny_frees == 600
        assert after.heap_objects == before.heap_objects
        gm.check_heap()
    finally:
        gm.set_option("tiny", 0)


def test_tiny_double_free_after_its_block_went_back_is_not_allocated() -> None:
    # The hypothesis machine's find (tests/test_stateful.py): a tiny object's
    # second free after a thread flush, once its block had emptied, raised
    # InteriorPointerError.
    gm.set_option("tiny", 1)
    try:
        first, second = gm.malloc(1), gm.malloc(1)
        assert second % 16 != 0  # inside the block's 16-byte slot
        gm.free(first)
        gm.thread_flush()
        gm.free(second)  # the block's last object: the block goes back
        with pytest.raises(gm.NotAllocatedError):
            gm.free(second)
        gm.check_heap()
    finally:
        gm.set_option("tiny", 0)
