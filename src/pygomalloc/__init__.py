"""pygomalloc: a memory allocator modelled on the Go runtime allocator.

The allocator is written in C (``csrc/``); this package is a thin layer over
it.  Addresses are ints::

    import ctypes, pygomalloc

    p = pygomalloc.malloc(100)
    ctypes.memset(p, 0, 100)
    p = pygomalloc.realloc(p, 4000)
    pygomalloc.free(p)
    print(pygomalloc.stats().heap_objects)

Bad pointers raise ``InvalidPointerError`` subclasses (a ``ValueError``),
failed allocations ``MemoryError``.  ``Buffer`` owns an allocation and
exposes it as a memoryview.  C programs use ``get_include()`` and
``get_library()``, or from a Python extension the PyCapsule C API
(``gm_capi_import()`` in gomalloc.h); ``get_preload_library()`` gives the
``LD_PRELOAD`` library (``python -m pygomalloc run -- CMD`` runs a command
under it).  ``install()`` makes pygomalloc the allocator of the running
interpreter (PyMem_SetAllocator).  ``Heap`` holds allocations that belong
together (a limit, statistics, free everything at once); ``heap.scope()``
and ``track()`` account for what a block allocates and report what
outlived it.
"""

from . import _api, _heap, _observe, _pprof
from ._api import *  # noqa: F403 (the public API is _api's __all__)
from ._heap import *  # noqa: F403 (heaps, scopes, track)
from ._api import _C_API  # noqa: F401 (the PyCapsule of gomalloc.h's gm_capi_import)
from ._observe import *  # noqa: F403 (native memory seen from Python)
from ._pprof import write_profile, profile_bytes  # noqa: F401

__version__ = "0.1.0"
__all__ = list(_api.__all__) + list(_heap.__all__) + list(_observe.__all__) + ["write_profile", "profile_bytes"]
