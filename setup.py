"""setuptools entry point: the cffi module plus pygomalloc's plain C artefacts.

Metadata lives in pyproject.toml and the compile flags in build_ext.py.
Besides the cffi extension module, ``build_ext`` here puts into the package:

* ``_lib/libgomalloc.so`` and ``_lib/libgomalloc_preload.so``, compiled from
  the same sources with the compiler in ``$CC`` (default: the one Python was
  built with), with ``$CFLAGS``/``$LDFLAGS`` appended;
* ``include/gomalloc.h``, the public header (``pygomalloc.get_include()``);
* ``_bench_drivers/``, the C benchmark drivers (``bench/drivers/*.c, *.h``).

They are written to the build directory and, for in-place and editable
builds, also copied next to the Python sources, where the package looks.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
PACKAGE = "pygomalloc"
BENCH_DRIVERS = ROOT / "bench" / "drivers"


@functools.cache
def _load_build_description() -> ModuleType:
    """build_ext.py, loaded as a module (cffi executes it separately)."""
    spec = importlib.util.spec_from_file_location("_pygomalloc_build", ROOT / "build_ext.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class build_ext_with_libraries(build_ext):
    """``build_ext`` that also builds the plain libraries and ships the C files."""

    def run(self) -> None:
        super().run()
        package_dir = Path(self.build_lib, PACKAGE)
        self._build_libraries(package_dir / "_lib")
        self._copy_c_files(package_dir)
        if self.inplace:
            source_dir = self.get_finalized_command("build_py").get_package_dir(PACKAGE)
            shutil.rmtree(os.path.join(source_dir, "_bench_drivers"), ignore_errors=True)
            for built, inplace in self._native_output_mapping().items():
                self.mkpath(os.path.dirname(inplace))
                self.copy_file(built, inplace, level=self.verbose)

    def get_outputs(self) -> list[str]:
        return super().get_outputs() + sorted(self._native_output_mapping())

    def get_output_mapping(self) -> dict[str, str]:
        mapping = super().get_output_mapping()
        if self.inplace:
            mapping.update(self._native_output_mapping())
        return mapping

    def _native_files(self) -> list[tuple[Path, str]]:
        """(source, path inside the package) of each file copied into the package."""
        build = _load_build_description()
        files = [(build.PUBLIC_HEADER, "include/gomalloc.h")]
        for pattern in ("*.c", "*.h"):
            files += [(p, f"_bench_drivers/{p.name}") for p in sorted(BENCH_DRIVERS.glob(pattern))]
        return files

    def _native_output_mapping(self) -> dict[str, str]:
        """Each file this command adds to the build directory -> its in-place copy."""
        build = _load_build_description()
        relative = [f"_lib/{name}" for name in build.SHARED_LIBRARIES]
        relative += [rel for _, rel in self._native_files()]
        source_dir = self.get_finalized_command("build_py").get_package_dir(PACKAGE)
        return {
            os.path.join(self.build_lib, PACKAGE, rel): os.path.join(source_dir, rel)
            for rel in relative
        }

    def _build_libraries(self, out_dir: Path) -> None:
        build = _load_build_description()
        cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
        cflags = shlex.split(os.environ.get("CFLAGS", ""))
        ldflags = shlex.split(os.environ.get("LDFLAGS", ""))
        self.mkpath(str(out_dir))
        for name, lib in build.SHARED_LIBRARIES.items():
            command = [
                *cc,
                *lib.cflags,
                *cflags,
                f"-I{build.CSRC}",
                "-shared",
                f"-Wl,-soname,{name}",
                "-o",
                str(out_dir / name),
                *lib.sources,
                *ldflags,
            ]
            self.announce(" ".join(shlex.quote(arg) for arg in command), level=2)
            subprocess.run(command, check=True, cwd=ROOT)

    def _copy_c_files(self, package_dir: Path) -> None:
        # _bench_drivers/ holds copies only: start afresh so none outlives its source.
        shutil.rmtree(package_dir / "_bench_drivers", ignore_errors=True)
        for source, rel in self._native_files():
            target = package_dir / rel
            self.mkpath(str(target.parent))
            shutil.copyfile(source, target)


setup(
    cffi_modules=["build_ext.py:ffibuilder"],
    cmdclass={"build_ext": build_ext_with_libraries},
)
