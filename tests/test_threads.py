"""Many threads at once, objects freed by threads other than their allocator's.

cffi drops the GIL around each C call, so the threads do meet inside the
allocator.  Every block carries a cookie (its address and size) that is
checked by whichever thread frees it.
"""

from __future__ import annotations

import ctypes
import gc
import queue
import random
import struct
import threading
import time

import pygomalloc as gm

THREADS = 6
ROUNDS = 3000
SIZES = [0, 8, 16, 24, 48, 100, 256, 1000, 4096, 20_000, 40_000, 200_000]
COOKIE = struct.Struct("<QQ")

Block = tuple[int, int, int]  # address, size, token


def stamp(address: int, size: int, token: int) -> None:
    """Fill a block with a cookie (token, size) followed by a byte pattern."""
    cookie = COOKIE.pack(token, size)[:size]
    ctypes.memmove(address, cookie, len(cookie))
    if size > len(cookie):
        ctypes.memset(address + len(cookie), token & 0xFF, size - len(cookie))


def verify(address: int, size: int, token: int, prefix: int | None = None) -> None:
    """Check the first *prefix* bytes (default: all) of what stamp() wrote."""
    expected = COOKIE.pack(token, size)[:size]
    expected += bytes([token & 0xFF]) * (size - len(expected))
    n = size if prefix is None else prefix
    assert ctypes.string_at(address, n) == expected[:n], f"block {address:#x} damaged"


def run_threads(target, count: int) -> list[BaseException]:  # type: ignore[no-untyped-def]
    """Run target(0..count-1) in threads; return what they raised.

    Each thread flushes its cache before it ends: join() returns before the
    thread's TLS destructor has run, so without the flush its cached frees
    could still be on their way back when the test reads the statistics.
    (test_exited_threads_give_back_their_caches covers the destructor.)
    """
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            target(index)
        except BaseException as e:  # reported by the test
            errors.append(e)
        finally:
            gm.thread_flush()

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def check_stats() -> gm.Stats:
    gm.thread_flush()
    st = gm.stats()
    assert st.heap_objects == st.mallocs - st.frees
    assert st.heap_alloc <= st.heap_inuse <= st.heap_sys <= st.sys
    assert st.heap_idle + st.heap_inuse == st.heap_sys
    assert st.heap_released <= st.heap_idle
    assert sum(row.mallocs for row in st.by_size) == st.mallocs
    assert sum(row.frees for row in st.by_size) == st.frees
    return st


def test_cross_thread_frees_through_queues() -> None:
    """Each thread allocates, hands every other block to its neighbour to free."""
    gm.thread_flush()
    before = gm.stats().heap_objects
    queues: list[queue.Queue[Block | None]] = [queue.Queue() for _ in range(THREADS)]

    def worker(index: int) -> None:
        rng = random.Random(index)
        inbox, outbox = queues[index], queues[(index + 1) % THREADS]
        upstream_done = False

        def free_received(wait: bool) -> None:
            nonlocal upstream_done
            while not upstream_done:
                try:
                    block = inbox.get(block=wait)
                except queue.Empty:
                    return
                if block is None:
                    upstream_done = True
                else:
                    verify(*block)
                    gm.free(block[0])

        mine: list[Block] = []
        for i in range(ROUNDS):
            size = rng.choice(SIZES)
            address = gm.malloc(size)
            token = index * ROUNDS + i
            stamp(address, size, token)
            if i % 2:
                outbox.put((address, size, token))
            else:
                mine.append((address, size, token))
            if len(mine) > 50:
                block = mine.pop(0)
                verify(*block)
                gm.free(block[0])
            free_received(wait=False)
        for block in mine:
            verify(*block)
            gm.free(block[0])
        outbox.put(None)
        free_received(wait=True)

    assert run_threads(worker, THREADS) == []
    st = check_stats()
    assert st.heap_objects == before
    gm.check_heap()


def test_producer_consumer_with_realloc() -> None:
    """One thread allocates and grows blocks; others shrink and free them."""
    gm.thread_flush()
    before = gm.stats().heap_objects
    work: queue.Queue[Block | None] = queue.Queue(maxsize=256)
    consumers = THREADS - 1

    def role(index: int) -> None:
        if index == 0:
            rng = random.Random(0)
            for token in range(ROUNDS * 2):
                size = rng.choice(SIZES)
                address = gm.malloc(size)
                stamp(address, size, token)
                grown = gm.realloc(address, size * 2 + 1)
                verify(grown, size, token)
                stamp(grown, size * 2 + 1, token)
                work.put((grown, size * 2 + 1, token))
            for _ in range(consumers):
                work.put(None)
        else:
            while (block := work.get()) is not None:
                address, size, token = block
                verify(address, size, token)
                shrunk = gm.realloc(address, size // 3)
                verify(shrunk, size, token, prefix=size // 3)
                gm.free(shrunk)

    assert run_threads(role, consumers + 1) == []
    st = check_stats()
    assert st.heap_objects == before
    gm.check_heap()


def test_exited_threads_give_back_their_caches() -> None:
    gm.free(gm.malloc(8))  # this thread has a cache too
    gm.thread_flush()
    objects_before = gm.stats().heap_objects
    started = threading.Barrier(THREADS + 1)
    finish = threading.Event()

    def worker(index: int) -> None:
        blocks = [gm.malloc(s) for s in SIZES * 10]
        for address in blocks[::2]:
            gm.free(address)
        started.wait()  # every thread has its cache now
        finish.wait()
        for address in blocks[1::2]:
            gm.free(address)
        # No thread_flush(): exiting must give the cached objects back.

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    try:
        started.wait()
        during = gm.stats().num_threads
        assert during >= THREADS + 1
    finally:
        finish.set()
        for thread in threads:
            thread.join()
    gc.collect()
    # join() returns before the OS thread has run its TLS destructors, so
    # give them a moment (this is a wait, not a timing assertion).  Threads
    # of earlier tests may go away meanwhile too, hence "at least".
    deadline = time.monotonic() + 30
    while gm.stats().num_threads > during - THREADS and time.monotonic() < deadline:
        time.sleep(0.01)
    st = check_stats()
    assert st.num_threads <= during - THREADS
    assert st.heap_objects == objects_before
    gm.check_heap()
