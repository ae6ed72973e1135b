"""pygomalloc.numpy: arrays' data on pygomalloc through numpy's handler hook (NEP 49).

numpy is optional: these tests skip, saying so, when it is not installed
(tests/run_all.sh installs it, so CI runs them).  The heaps are made by a
small helper on the C calls (``_CHeap``, for gm_heap_destroy's codes), and
by ``pygomalloc.Heap``.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import pickle
import subprocess
import sys
import threading
import warnings

import pytest

import pygomalloc
from pygomalloc._gomalloc import ffi, lib

np = pytest.importorskip("numpy", reason="numpy is not installed (pip install 'pygomalloc[numpy]')")
import pygomalloc.numpy as gnp  # noqa: E402 (after the skip: numpy is there)

DEFAULT = "default_allocator"  # numpy's own handler
DEFAULT_HEAP = pygomalloc.default_heap().handle


class _CHeap:
    """A heap on the C calls, with the ``handle`` (an int) pygomalloc.numpy
    takes, as pygomalloc.Heap has."""

    def __init__(self, name: str | None = None) -> None:
        opts = ffi.new("struct gm_heap_options *")
        opts.size = ffi.sizeof("struct gm_heap_options")
        self._name = ffi.new("char[]", name.encode()) if name else ffi.NULL
        opts.name = self._name
        self._ptr = lib.gm_heap_new(opts)
        assert self._ptr != ffi.NULL
        self.handle = int(ffi.cast("uintptr_t", self._ptr))

    def destroy(self) -> int:
        """gm_heap_destroy's code (0, EBUSY, EINVAL)."""
        return lib.gm_heap_destroy(self._ptr)

    def objects(self) -> int:
        st = ffi.new("struct gm_heap_stats *")
        st.size = ffi.sizeof("struct gm_heap_stats")
        assert lib.gm_heap_read_stats(self._ptr, st) == 0
        return st.objects


def heap_of(a) -> object:
    return int(ffi.cast("uintptr_t", lib.gm_heap_of(ffi.cast("void *", a.ctypes.data))))


def ours(a) -> bool:
    return pygomalloc.owns(a.ctypes.data)


def numpy_get_handler_name(*args):
    """numpy's own get_handler_name, where the issue names it: np.core.multiarray
    (numpy 2.x warns that np.core is deprecated: np._core there)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.core.multiarray.get_handler_name(*args)


@pytest.fixture(autouse=True)
def handler_restored():
    """Every test starts and ends with numpy's default handler current."""
    assert gnp.handler_name() == DEFAULT
    yield
    assert gnp.handler_name() == DEFAULT


@pytest.fixture
def heap():
    h = _CHeap("np-test")
    yield h
    gc.collect()
    h.destroy()  # 0, or EINVAL when the test destroyed or deleted it


# ---- the handler and its name ---------------------------------------------------


def test_get_handler_name_names_ours_inside_and_numpy_outside():
    assert numpy_get_handler_name() == DEFAULT
    with gnp.allocator() as capsule:
        assert numpy_get_handler_name() == "pygomalloc"
        a = np.arange(1000.0)
        assert numpy_get_handler_name(a) == "pygomalloc"
        assert gnp.handler_name(a) == "pygomalloc"
        assert type(capsule).__name__ == "PyCapsule"
    b = np.arange(1000.0)
    assert numpy_get_handler_name() == DEFAULT
    assert numpy_get_handler_name(a) == "pygomalloc"  # kept with the array
    assert numpy_get_handler_name(b) == DEFAULT
    assert ours(a) and not ours(b)
    assert (a == b).all()


def test_use_returns_the_previous_handler_to_restore():
    prev = gnp.use()
    try:
        assert gnp.handler_name() == "pygomalloc"
        assert gnp.use() is gnp.handler()  # ours was current: use() returns it
        assert ours(np.ones(100))
    finally:
        mine = gnp.set_handler(prev)
    assert mine is gnp.handler()
    assert gnp.handler_name() == DEFAULT
    assert not ours(np.ones(100))


def test_heap_handler_is_named_after_the_heap(heap):
    with gnp.allocator(heap):
        assert gnp.handler_name() == "pygomalloc:np-test"
        a = np.zeros(10)
    assert gnp.handler_name(a) == "pygomalloc:np-test"
    anonymous = _CHeap()
    with gnp.allocator(anonymous):
        assert gnp.handler_name() == "pygomalloc:heap"
    assert anonymous.destroy() == 0
    del a


def test_nesting_restores_each_level(heap):
    with gnp.allocator():
        with gnp.allocator(heap):
            x = np.ones(50)
            with gnp.allocator():
                y = np.ones(50)
            z = np.ones(50)
        w = np.ones(50)
    assert [gnp.handler_name(v) for v in (x, y, z, w)] == [
        "pygomalloc:np-test", "pygomalloc", "pygomalloc:np-test", "pygomalloc"]
    assert heap_of(x) == heap.handle and heap_of(z) == heap.handle
    assert heap_of(y) == DEFAULT_HEAP and heap_of(w) == DEFAULT_HEAP
    del x, z


def test_an_exception_inside_still_restores():
    with pytest.raises(ZeroDivisionError):
        with gnp.allocator():
            1 / 0
    assert gnp.handler_name() == DEFAULT


# ---- freeing across handlers ----------------------------------------------------


def test_arrays_made_before_are_freed_by_numpy_after_use(heap):
    before = [np.full(n, 3.0) for n in (1, 10, 1000, 100000)]
    with gnp.allocator(heap):
        assert not any(ours(a) for a in before)
        total = sum(float(a.sum()) for a in before)
        del before  # numpy frees them with the default handler, not ours
        gc.collect()
        assert heap.objects() == 0
        c = np.full(10, 1.0)
        assert heap.objects() == 1
    assert total == 3.0 * (1 + 10 + 1000 + 100000)
    del c
    assert heap.objects() == 0


def test_arrays_made_by_ours_are_freed_by_ours_after_exit(heap):
    with gnp.allocator(heap):
        arrays = [np.full(n, 7, dtype=np.int32) for n in (1, 3, 100, 5000, 300000)]
    assert heap.objects() == 5
    assert all(heap_of(a) == heap.handle for a in arrays)
    with gnp.allocator():  # another of ours current: the heap's handler frees them still
        assert sum(int(a.sum()) for a in arrays) == 7 * (1 + 3 + 100 + 5000 + 300000)
        del arrays
        assert heap.objects() == 0


def test_views_across_handlers(heap):
    base_default = np.arange(1000, dtype=np.int64)
    with gnp.allocator(heap):
        base_ours = np.arange(1000, dtype=np.int64)
        view_default = base_default[10:20]  # a view of numpy's array, made under ours
        both = base_ours[::2] + base_default[::2]  # new data: ours
    view_ours = base_ours[100:110].reshape(2, 5)
    assert numpy_get_handler_name(view_ours) is None  # a view owns nothing
    with pytest.raises(ValueError, match="view"):
        gnp.handler_name(view_default)
    assert gnp.handler_name(both) == "pygomalloc:np-test"
    assert view_default.ctypes.data == base_default.ctypes.data + 80 and not ours(view_default)
    assert heap_of(view_ours.base) == heap.handle
    del base_ours, base_default  # the views keep their bases alive
    gc.collect()
    assert heap.objects() == 2  # base_ours (through view_ours) and both
    assert view_ours.tolist() == [[100, 101, 102, 103, 104], [105, 106, 107, 108, 109]]
    assert view_default.tolist() == list(range(10, 20))
    assert both[:3].tolist() == [0, 4, 8]
    del view_ours, both
    assert heap.objects() == 0


def test_round_trips():
    values = [1.5, -2.0, 3.25, 1e30, 0.0]
    with gnp.allocator():
        a = np.array(values)
        b = np.frombuffer(a.tobytes(), dtype=a.dtype).copy()
        c = a.astype(np.float32).astype(np.float64)
        s = np.array(["alpha", "beta"] * 100)
        o = np.array([{"k": 1}, None, "x"], dtype=object)
    assert ours(a) and ours(b) and ours(c) and ours(s) and ours(o)
    d = a.copy()  # back under numpy's
    assert not ours(d)
    assert a.tolist() == values and b.tolist() == values and d.tolist() == values
    assert c[:3].tolist() == [1.5, -2.0, 3.25]
    assert s[-1] == "beta" and o[0] == {"k": 1}


def test_concatenate_arrays_of_both_handlers(heap):
    mine_default = np.arange(0, 500)
    with gnp.allocator(heap):
        mine_heap = np.arange(500, 1000)
        inside = np.concatenate([mine_default, mine_heap])
    outside = np.concatenate([mine_heap, mine_default, inside])
    assert heap_of(inside) == heap.handle and not ours(outside)
    assert inside.tolist() == list(range(1000))
    assert outside.tolist() == list(range(500, 1000)) + list(range(500)) + list(range(1000))
    del mine_heap, inside


def test_resize_reallocates_with_the_arrays_own_handler(heap):
    with gnp.allocator(heap):
        a = np.arange(10, dtype=np.int64)
    a.resize(200000, refcheck=False)  # outside: still the heap's realloc
    assert heap_of(a) == heap.handle and gnp.handler_name(a) == "pygomalloc:np-test"
    assert a[:10].tolist() == list(range(10)) and not a[10:].any()
    a.resize(3, refcheck=False)
    assert a.tolist() == [0, 1, 2] and heap_of(a) == heap.handle
    b = np.arange(10)
    with gnp.allocator(heap):
        b.resize(100000, refcheck=False)  # numpy's array stays numpy's
    assert not ours(b) and b[:10].tolist() == list(range(10))
    del a
    assert heap.objects() == 0


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_pickling(protocol, heap):
    """Arrays on pygomalloc pickle and unpickle; an unpickled numeric array
    borrows the pickle's bytes (numpy does not copy them), an object array
    gets new data from the current handler."""
    with gnp.allocator(heap):
        a = np.linspace(0, 1, 10001)
        o = np.array([{"k": [1, 2]}, "s", 3.5], dtype=object)
        data, odata = pickle.dumps(a, protocol=protocol), pickle.dumps(o, protocol=protocol)
        b, ob = pickle.loads(data), pickle.loads(odata)
    assert heap_of(a) == heap.handle and heap_of(ob) == heap.handle
    assert not b.flags.owndata and not ours(b)  # a view of the pickle's buffer
    oc = pickle.loads(odata)
    assert oc.flags.owndata and not ours(oc)  # numpy's, outside
    assert (a == b).all() and ob.tolist() == oc.tolist() == o.tolist()
    del a, o, ob
    assert heap.objects() == 0


def test_pickle_out_of_band_buffers_view_our_memory(heap):
    """Protocol 5's out-of-band buffers: the unpickled array is a view of
    the heap's array, which it keeps alive (and the heap with it)."""
    with gnp.allocator(heap):
        a = np.arange(100000, dtype=np.int32)
    buffers = []
    data = pickle.dumps(a, protocol=5, buffer_callback=buffers.append)
    b = pickle.loads(data, buffers=buffers)
    assert b.ctypes.data == a.ctypes.data
    del a, buffers
    gc.collect()
    assert heap.destroy() == lib.EBUSY  # b still uses the heap's memory
    assert int(b[-1]) == 99999 and heap.objects() == 1
    del b
    assert heap.objects() == 0


@pytest.mark.parametrize("n", [0, 1, 7, 16, 1000, 32768 + 1, 10 << 20])
def test_small_and_large_arrays(n, heap):
    with gnp.allocator(heap):
        z = np.zeros(n, dtype=np.uint8)  # calloc
        e = np.empty(n, dtype=np.uint8)  # malloc
    assert not z.any()
    e[:] = 0xAB
    assert (e == 0xAB).all()
    for a in (z, e):
        assert gnp.handler_name(a) == "pygomalloc:np-test"
        assert heap_of(a) == heap.handle  # numpy asks for at least 1 byte
        assert pygomalloc.usable_size(a.ctypes.data) >= n
    del z, e, a
    assert heap.objects() == 0


# ---- heaps: never destroyed under live arrays --------------------------------------


def test_heap_arrays_outlive_the_block_and_the_heap_is_not_destroyed_under_them(heap):
    with gnp.allocator(heap):
        small = np.full(100, 42, dtype=np.int64)
        large = np.full(1 << 20, 7, dtype=np.uint8)
    assert heap.objects() == 2
    assert heap.destroy() == lib.EBUSY  # refused: the arrays are alive
    assert heap.destroy() == lib.EBUSY
    assert (small == 42).all() and (large == 7).all()  # untouched
    del small
    assert heap.destroy() == lib.EBUSY
    large[:] = 9  # still writable, still ours
    assert int(large.sum()) == 9 << 20
    del large
    assert heap.objects() == 0
    assert heap.destroy() == 0
    assert heap.destroy() == lib.EINVAL  # twice: an error, not a crash


def test_a_destroyed_heap_gives_a_clear_error(heap):
    with gnp.allocator(heap) as capsule:
        a = np.ones(10)
    del a
    assert heap.destroy() == 0
    with pytest.raises(ValueError, match="destroyed"):
        with gnp.allocator(heap):
            pass
    with pytest.raises(ValueError, match="destroyed"):
        gnp.use(heap)
    prev = gnp.set_handler(capsule)  # a capsule taken before: numpy says no memory
    try:
        with pytest.raises(MemoryError):
            np.ones(10)
    finally:
        gnp.set_handler(prev)


def test_deleting_the_heap_hands_the_arrays_to_the_default_heap(heap):
    with gnp.allocator(heap):
        a = np.arange(1000, dtype=np.float64)
    assert lib.gm_heap_delete(heap._ptr) == 0
    assert heap_of(a) == DEFAULT_HEAP
    a.resize(100000, refcheck=False)  # the heap's handler reallocates in the default heap
    assert a[:1000].tolist() == list(np.arange(1000.0)) and ours(a)
    assert heap_of(a) == DEFAULT_HEAP
    del a  # gm_free


def test_pygomalloc_heap_class():
    """pygomalloc.Heap: its handle works here, closing it under a live array
    fails instead of freeing the array, and a closed one is refused."""
    h = pygomalloc.Heap(name="cls")
    with gnp.allocator(h):
        a = np.full(1000, 5)
    assert gnp.handler_name(a) == "pygomalloc:cls"
    with pytest.raises(Exception):
        h.close()
    assert (a == 5).all()
    del a
    h.close()
    with pytest.raises(ValueError):
        gnp.use(h)


def test_bad_arguments():
    with pytest.raises(TypeError, match="pygomalloc.Heap"):
        gnp.use(object())
    with pytest.raises(TypeError, match="pygomalloc.Heap"):
        gnp.handler(type("H", (), {"handle": "12345"})())
    with pytest.raises(TypeError, match="mem_handler"):
        gnp.set_handler("not a capsule")
    with pytest.raises(TypeError, match="mem_handler"):
        gnp.set_handler(pygomalloc._C_API)  # a capsule of another name
    with gnp.allocator(pygomalloc.default_heap()):  # the default heap's handle: the default handler
        assert gnp.handler_name() == "pygomalloc"


# ---- threads and asyncio: numpy's handler is a context variable ---------------------------


def test_threads_start_with_numpys_handler_and_choose_their_own(heap):
    names = {}

    def started_inside():
        names["inside"] = gnp.handler_name(np.ones(10))

    def uses_its_own():
        prev = gnp.use(heap)
        arrays.append(np.ones(1000))
        names["own"] = gnp.handler_name()
        gnp.set_handler(prev)

    arrays = []
    with gnp.allocator():
        t = threading.Thread(target=started_inside)
        t.start()
        t.join()
        ctx = contextvars.copy_context()  # a copy of this context: ours
        t = threading.Thread(target=ctx.run, args=(lambda: names.update(copied=gnp.handler_name()),))
        t.start()
        t.join()
    t = threading.Thread(target=uses_its_own)
    t.start()
    t.join()
    assert names == {"inside": DEFAULT, "copied": "pygomalloc", "own": "pygomalloc:np-test"}
    assert gnp.handler_name() == DEFAULT  # the thread's use() did not reach us
    assert heap_of(arrays[0]) == heap.handle
    arrays.clear()  # made on that thread, freed on this one
    assert heap.objects() == 0


def test_asyncio_tasks_keep_the_context_they_were_created_in():
    async def make(tag):
        await asyncio.sleep(0)
        return tag, gnp.handler_name(np.ones(100))

    async def main():
        with gnp.allocator():
            inside = asyncio.ensure_future(make("inside"))
        outside = asyncio.ensure_future(make("outside"))

        async def switches():
            gnp.use()  # this task's context only
            await asyncio.sleep(0)
            return "switches", gnp.handler_name(np.ones(100))

        results = await asyncio.gather(inside, outside, asyncio.ensure_future(switches()))
        return dict(results), gnp.handler_name()

    results, after = asyncio.run(main())
    assert results == {"inside": "pygomalloc", "outside": DEFAULT, "switches": "pygomalloc"}
    assert after == DEFAULT


def test_many_threads_make_and_free_arrays_in_one_heap(heap):
    """4 threads make arrays in one heap and free half of another thread's."""
    barrier = threading.Barrier(4)
    made = [[] for _ in range(4)]
    errors = []

    def work(i):
        try:
            with gnp.allocator(heap):
                for k in range(300):
                    made[i].append(np.full(1 + (k * 37) % 5000, i, dtype=np.int16))
            barrier.wait()
            other = made[(i + 1) % 4]
            del other[: len(other) // 2]  # frees of another thread's arrays (list ops under the GIL)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert heap.objects() == sum(len(m) for m in made) == 4 * 150
    assert all((a == i).all() for i, m in enumerate(made) for a in m)
    made.clear()
    assert heap.objects() == 0


# ---- numpy stays optional ---------------------------------------------------------------


def test_import_pygomalloc_does_not_import_numpy():
    code = ("import sys, pygomalloc, pygomalloc.numpy\n"
            "assert 'numpy' not in sys.modules, 'numpy imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
