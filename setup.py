"""setuptools entry point: pygomalloc's libraries and its cffi module.

Metadata lives in pyproject.toml; the sources and compile flags in
csrc/build.mk, read by build_ext.py.  ``build_ext`` here builds, in order:

* ``_lib/libgomalloc.so`` (the core) and ``_lib/libgomalloc_preload.so`` (the
  LD_PRELOAD shim), with the compiler in ``$CC`` (default: the one Python was
  built with) and the commands of ``build_ext.library_commands()``, with
  ``$CFLAGS``/``$LDFLAGS`` appended;
* the cffi extension module, linked to ``_lib/libgomalloc.so``;

and puts into the package:

* ``_lib/pkgconfig/gomalloc.pc``, for ``pkg-config`` (relocatable: its paths
  are relative to ``${pcfiledir}``);
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
        build = _load_build_description()
        package_dir = Path(self.build_lib, PACKAGE)
        lib_dir = package_dir / build.LIBRARY_SUBDIR
        self._build_libraries(lib_dir)  # first: the extension module links to libgomalloc.so
        for ext in self.extensions:
            ext.library_dirs.append(str(lib_dir))
        super().run()
        self._write_pkgconfig(lib_dir / "pkgconfig" / "gomalloc.pc")
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
        relative = [f"{build.LIBRARY_SUBDIR}/{name}" for name in (build.CORE_LIBRARY, build.PRELOAD_LIBRARY)]
        relative.append(f"{build.LIBRARY_SUBDIR}/pkgconfig/gomalloc.pc")
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
        out_dir = out_dir.resolve()
        self.mkpath(str(out_dir))
        map_file = Path(self.build_temp).resolve() / "libgomalloc.map"
        self.mkpath(str(map_file.parent))
        map_file.write_text(build.version_script())
        for command in build.library_commands(cc, out_dir, map_file, cflags, ldflags).values():
            self.announce(" ".join(shlex.quote(arg) for arg in command), level=2)
            subprocess.run(command, check=True, cwd=build.CSRC)

    def _write_pkgconfig(self, path: Path) -> None:
        self.mkpath(str(path.parent))
        path.write_text(
            "# pkg-config file of pygomalloc's C library; the paths are relative to this file.\n"
            "libdir=${pcfiledir}/..\n"
            "includedir=${pcfiledir}/../../include\n"
            "\n"
            "Name: gomalloc\n"
            "Description: pygomalloc, a memory allocator modelled on the Go runtime allocator\n"
            f"Version: {self.distribution.get_version()}\n"
            "Libs: -L${libdir} -Wl,-rpath,${libdir} -lgomalloc\n"
            "Cflags: -I${includedir}\n"
        )

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
