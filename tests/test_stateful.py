"""The whole allocation API against a model, driven by hypothesis.

The model maps each live address to the bytes written there.  Every block is
filled with its own pattern, checked on realloc and free; live blocks never
overlap; bad frees are refused without harm; at the end everything is freed
and the count of live objects is back where it started.  The tiny allocator
and the heap profile are switched on and off along the way.
"""

from __future__ import annotations

import ctypes
import random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

import pygomalloc as gm
from pygomalloc._gomalloc import lib

MAX_SMALL = lib.GM_MAX_SMALL_SIZE

sizes = st.one_of(
    st.integers(0, 16),  # tiny
    st.integers(0, 512),
    st.integers(513, 8192),
    st.integers(8193, MAX_SMALL + 64),
    st.integers(MAX_SMALL + 1, 300_000),  # large
)
alignments = st.sampled_from([2**k for k in range(17)])


class AllocatorMachine(RuleBasedStateMachine):
    blocks = Bundle("blocks")

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[int, bytes] = {}
        self.writes = 0

    @initialize()
    def remember_live_objects(self) -> None:
        gm.thread_flush()
        self.start_objects = gm.stats().heap_objects

    # -- helpers ----------------------------------------------------------

    def adopt(self, address: int, size: int) -> int:
        assert address != 0
        assert address not in self.model, f"{address:#x} handed out twice"
        assert gm.usable_size(address) >= size
        self.writes += 1
        data = random.Random(self.writes).randbytes(size)
        ctypes.memmove(address, data, size)
        self.model[address] = data
        return address

    def check_contents(self, address: int) -> None:
        data = self.model[address]
        assert ctypes.string_at(address, len(data)) == data, f"block {address:#x} corrupted"

    # -- rules ------------------------------------------------------------

    @rule(target=blocks, size=sizes)
    def malloc(self, size: int) -> int:
        return self.adopt(gm.malloc(size), size)

    @rule(target=blocks, count=st.integers(0, 64), size=st.integers(0, 4096))
    def calloc(self, count: int, size: int) -> int:
        address = gm.calloc(count, size)
        assert ctypes.string_at(address, count * size) == bytes(count * size)
        return self.adopt(address, count * size)

    @rule(target=blocks, alignment=alignments, size=sizes)
    def aligned_alloc(self, alignment: int, size: int) -> int:
        address = gm.aligned_alloc(alignment, size)
        assert address % alignment == 0
        return self.adopt(address, size)

    @rule(target=blocks, address=consumes(blocks), size=sizes)
    def realloc(self, address: int, size: int) -> int:
        self.check_contents(address)
        old = self.model.pop(address)
        moved = gm.realloc(address, size)
        keep = min(len(old), size)
        assert ctypes.string_at(moved, keep) == old[:keep]
        return self.adopt(moved, size)

    @rule(address=consumes(blocks))
    def free(self, address: int) -> None:
        self.check_contents(address)
        del self.model[address]
        gm.free(address)

    @rule(address=consumes(blocks))
    def double_free(self, address: int) -> None:
        del self.model[address]
        gm.free(address)
        try:
            gm.free(address)
        except gm.NotAllocatedError:
            pass
        else:
            raise AssertionError(f"double free of {address:#x} was accepted")

    @rule(address=blocks)
    def interior_free(self, address: int) -> None:
        usable = gm.usable_size(address)
        if usable >= 2:
            try:
                gm.free(address + usable // 2)
            except gm.InteriorPointerError:
                pass
            else:
                raise AssertionError(f"free of {address:#x}+{usable // 2} was accepted")
        self.check_contents(address)

    @rule(address=blocks)
    def usable_size(self, address: int) -> None:
        assert gm.usable_size(address) >= len(self.model[address])
        assert gm.owns(address)

    @rule()
    def thread_flush(self) -> None:
        gm.thread_flush()

    @rule(on=st.booleans())
    def tiny_allocator(self, on: bool) -> None:
        """Blocks of either kind stay valid when the option flips."""
        gm.set_option("tiny", int(on))

    @rule(rate=st.sampled_from([0, 1, 512]))
    def heap_profile(self, rate: int) -> None:
        """Sampled objects are live objects like any other."""
        gm.set_option("profile_rate", rate)
        recs = gm.heap_profile()
        assert all(r.free_objects <= r.alloc_objects for r in recs)

    @rule()
    def check_heap(self) -> None:
        gm.check_heap()

    # -- invariants -------------------------------------------------------

    @invariant()
    def live_blocks_do_not_overlap(self) -> None:
        previous_end = 0
        for address in sorted(self.model):
            assert address >= previous_end, f"block {address:#x} overlaps the one before"
            previous_end = address + max(gm.usable_size(address), 1)
            data = self.model[address][:16]
            assert ctypes.string_at(address, len(data)) == data

    def teardown(self) -> None:
        gm.set_option("tiny", 0)
        gm.set_option("profile_rate", 0)
        for address in list(self.model):
            self.check_contents(address)
            gm.free(address)
        self.model.clear()
        gm.thread_flush()
        gm.check_heap()
        if hasattr(self, "start_objects"):
            assert gm.stats().heap_objects == self.start_objects


AllocatorMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestAllocator = AllocatorMachine.TestCase
