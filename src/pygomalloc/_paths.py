"""What a C program needs to use libgomalloc.so: ``python -m pygomalloc --cflags --libs``.

    cc prog.c $(python -m pygomalloc --cflags --libs) -o prog && ./prog

``--libs`` includes ``-Wl,-rpath`` to the package's library directory, so
the program runs as it is (no ``LD_LIBRARY_PATH``).  ``--pkgconfig-path``
prints the directory of ``gomalloc.pc``, for ``PKG_CONFIG_PATH``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ._api import get_include, get_library


def cflags() -> list[str]:
    """Compiler flags: where ``gomalloc.h`` is."""
    return [f"-I{get_include()}"]


def libs() -> list[str]:
    """Linker flags: ``-lgomalloc``, found at link time and at run time."""
    libdir = os.path.dirname(get_library())
    return [f"-L{libdir}", f"-Wl,-rpath,{libdir}", "-lgomalloc"]


def pkgconfig_path() -> str:
    """The directory holding ``gomalloc.pc`` (``PKG_CONFIG_PATH=... pkg-config gomalloc``)."""
    path = Path(get_library()).parent / "pkgconfig"
    if not (path / "gomalloc.pc").is_file():
        raise FileNotFoundError(f"{path / 'gomalloc.pc'} is missing: pygomalloc was not built completely")
    return str(path)


OPTIONS: dict[str, Callable[[], list[str]]] = {
    "--cflags": cflags,
    "--libs": libs,
    "--pkgconfig-path": lambda: [pkgconfig_path()],
}


def main(argv: Sequence[str]) -> int | None:
    """Print the flags named in *argv*, on one line, as pkg-config does, and
    return 0; None (nothing printed) when *argv* is not only these options."""
    if not argv or any(arg not in OPTIONS for arg in argv):
        return None
    print(" ".join(flag for arg in argv for flag in OPTIONS[arg]()))
    return 0
