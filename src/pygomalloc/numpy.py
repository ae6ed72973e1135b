"""numpy arrays' data on pygomalloc: numpy's data-allocator hook (NEP 49).

numpy >= 1.22 asks a *handler* for the memory of arrays' data: a PyCapsule
named ``"mem_handler"`` around a ``PyDataMem_Handler`` (a name and
malloc/calloc/realloc/free functions), made current with numpy's C function
``PyDataMem_SetHandler``.  pygomalloc's handler and its four functions are
C, in the extension module (``build_ext.py``); this module only finds
numpy's C API and sets the capsule::

    import numpy as np, pygomalloc.numpy as gnp

    with gnp.allocator():                 # arrays made here live on pygomalloc
        a = np.ones(1_000_000)
    print(gnp.handler_name(a))            # 'pygomalloc'

    prev = gnp.use()                      # from now on (in this context)
    gnp.set_handler(prev)                 # back to what it was

Arrays keep the handler that made them: numpy stores it with each array and
frees the data through it, whatever handler is current by then.  So arrays
made before, or under another handler, are freed by their own allocator, and
arrays made under pygomalloc may outlive ``allocator()``.

**Heaps.**  ``heap`` is None (pygomalloc's default heap) or a
``pygomalloc.Heap`` (or any object whose ``handle`` is a ``gm_heap_t *`` as
an int, for a heap made in C).  The handler is
named ``"pygomalloc:<the heap's name>"``.  A heap given here is marked with
``gm_heap_keep_live``: destroying it while it holds live objects (arrays
still alive, anywhere) is refused with EBUSY instead of freeing memory
under the arrays; deleting it (``gm_heap_delete``) hands them to the default
heap.  Once the heap is destroyed or deleted, new arrays under its handler
fail with ``MemoryError`` (numpy's message for a NULL from the handler).

**Threads and asyncio.**  numpy keeps the current handler in a context
variable (``contextvars``), so ``use()`` and ``allocator()`` act on the
calling context only: another thread starts in a context of its own, where
numpy's default handler is current (unless the thread is run in a copy of
this context: ``contextvars.copy_context().run``, or Python's
``thread_inherit_context`` flag), and must call ``use()`` itself.  An
asyncio task runs in a copy of the context current when it was created: a
task created inside ``allocator()`` allocates from pygomalloc even after the
``with`` block has exited, a task created outside does not, and ``use()``
inside a task changes that task only.

numpy is imported only when one of these functions is first called:
``import pygomalloc`` never needs numpy (``pip install 'pygomalloc[numpy]'``
installs it).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from typing import Any, Iterator, Optional

from ._gomalloc import ffi, lib

__all__ = ["use", "allocator", "set_handler", "handler", "handler_name", "NumpyUnsupportedError"]

#: NPY_1_22_API_VERSION: the C-API feature version that added PyDataMem_SetHandler.
_MIN_FEATURE_VERSION = 0x0F
#: numpy's C ABI versions (PyArray_GetNDArrayCVersion) whose API table this
#: module knows: every numpy 1.x, and numpy 2.x.
_KNOWN_ABI = (0x01000009, 0x02000000)
#: PyDataMem_SetHandler's index in the _ARRAY_API table
#: (numpy/__multiarray_api.h of numpy 1.22 to 2.x; the same in both).
_SET_HANDLER_INDEX = 304

_capsule_new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_void_p)(("PyCapsule_New", ctypes.pythonapi))
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi))
_capsule_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_IsValid", ctypes.pythonapi))

_lock = threading.Lock()
_api: Optional[tuple] = None  # (PyDataMem_SetHandler, numpy's _multiarray_umath)
_default: Any = None  # the default heap's handler capsule (made once, never freed)


class NumpyUnsupportedError(RuntimeError):
    """The installed numpy has no data-allocator hook pygomalloc can use
    (numpy older than 1.22, or a C ABI this module does not know)."""


def _numpy_api() -> tuple:
    """numpy's PyDataMem_SetHandler (a ctypes function) and its multiarray
    module, found once: the _ARRAY_API capsule of
    numpy._core._multiarray_umath (numpy 2.x) or numpy.core._multiarray_umath
    (numpy 1.x), after checking numpy's C ABI and C-API versions."""
    global _api
    with _lock:
        if _api is not None:
            return _api
        import importlib

        import numpy  # the real numpy: this module is pygomalloc.numpy

        major = int(numpy.__version__.split(".")[0])
        name = "numpy._core._multiarray_umath" if major >= 2 else "numpy.core._multiarray_umath"
        multiarray = importlib.import_module(name)
        table = _capsule_pointer(multiarray._ARRAY_API, None)
        abi = lib.pgm_np_abi_version(table)
        if abi not in _KNOWN_ABI:
            raise NumpyUnsupportedError(
                f"numpy {numpy.__version__} has C ABI version {abi:#x}; pygomalloc.numpy knows "
                f"{' and '.join(hex(v) for v in _KNOWN_ABI)} (numpy 1.x and 2.x)")
        feature = lib.pgm_np_feature_version(table)
        if feature < _MIN_FEATURE_VERSION:
            raise NumpyUnsupportedError(
                f"numpy {numpy.__version__} (C-API version {feature:#x}) has no data-allocator "
                f"hook: numpy >= 1.22 (C-API version {_MIN_FEATURE_VERSION:#x}) is needed")
        entry = ctypes.cast(table, ctypes.POINTER(ctypes.c_void_p))[_SET_HANDLER_INDEX]
        set_handler_fn = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.py_object)(entry)
        _api = (set_handler_fn, multiarray)
        return _api


def _heap_handle(heap: Any) -> Any:
    # A closed pygomalloc.Heap's handle raises ValueError: let it.
    handle = getattr(heap, "handle", None)
    if not isinstance(handle, int) or isinstance(handle, bool) or handle <= 0:
        raise TypeError(f"heap must be None or a pygomalloc.Heap (or an object whose handle is "
                        f"a gm_heap_t * as an int), not {type(heap).__name__}")
    return ffi.cast("gm_heap_t *", handle)


def handler(heap: Any = None) -> Any:
    """pygomalloc's handler capsule for ``heap`` (None: the default heap), to
    give to ``set_handler`` or to C code calling PyDataMem_SetHandler.

    A heap's handler is a new capsule each call (its C struct is freed with
    the last array made by it); the heap is marked with gm_heap_keep_live.
    Raises ValueError for a destroyed heap, TypeError for something that is
    not a heap."""
    global _default
    if heap is not None:
        h = _heap_handle(heap)
        if h != lib.gm_heap_default():
            if lib.gm_heap_keep_live(h) != 0:
                raise ValueError("heap is destroyed (or not a heap): no array can be made in it")
            address = lib.pgm_np_handler_new(h)
            if not address:
                raise MemoryError("cannot allocate numpy's handler struct for the heap")
            return _capsule_new(address, lib.pgm_np_capsule_name(), lib.pgm_np_destructor())
    with _lock:
        if _default is None:
            _default = _capsule_new(lib.pgm_np_handler_default(), lib.pgm_np_capsule_name(), None)
        return _default


def set_handler(capsule: Any) -> Any:
    """Make ``capsule`` (any numpy "mem_handler" capsule: ours, numpy's
    default, another library's) the current handler of this context; returns
    the previous one."""
    if not _capsule_valid(capsule, b"mem_handler"):
        raise TypeError(f"not a numpy 'mem_handler' capsule: {capsule!r}")
    set_fn, _ = _numpy_api()
    return set_fn(capsule)


def use(heap: Any = None) -> Any:
    """Make pygomalloc (``heap``, or the default heap) allocate the data of
    the arrays made from now on in this context (thread, asyncio task).
    Returns the previous handler: ``set_handler(previous)`` restores it."""
    _numpy_api()  # numpy usable, before the heap is marked
    return set_handler(handler(heap))


@contextlib.contextmanager
def allocator(heap: Any = None) -> Iterator[Any]:
    """``with allocator(heap):`` arrays made inside get their data from
    pygomalloc (``heap``, or the default heap); the previous handler is
    current again on exit.  Arrays may outlive the block.  Yields the
    handler capsule."""
    capsule = handler(heap)
    previous = set_handler(capsule)
    try:
        yield capsule
    finally:
        set_handler(previous)


def handler_name(array: Any = None) -> str:
    """The name of the handler of ``array`` (numpy's ``get_handler_name``),
    or of the current handler: ``"default_allocator"`` for numpy's own,
    ``"pygomalloc"`` or ``"pygomalloc:<heap name>"`` for ours."""
    _, multiarray = _numpy_api()
    name = multiarray.get_handler_name() if array is None else multiarray.get_handler_name(array)
    if name is None:
        raise ValueError("the array does not own its data (a view): ask its base")
    return str(name)
