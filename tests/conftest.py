from __future__ import annotations

import ctypes
from collections.abc import Iterator

import pytest

import pygomalloc


@pytest.fixture(autouse=True)
def heap_stays_consistent() -> Iterator[None]:
    """Every test leaves a heap that passes the C invariant checker."""
    yield
    pygomalloc.check_heap()


@pytest.fixture(scope="session")
def libc() -> ctypes.CDLL:
    """The C library of this process, with malloc/free typed for addresses."""
    lib = ctypes.CDLL(None)
    lib.malloc.restype = ctypes.c_void_p
    lib.malloc.argtypes = [ctypes.c_size_t]
    lib.free.restype = None
    lib.free.argtypes = [ctypes.c_void_p]
    return lib
