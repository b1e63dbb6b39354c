"""Build driver: setuptools hands the extension `rasp_compiler._engine` to CMake.

Environment switches (read at build time):
  RASP_BUILD_TYPE   Release (default) | Debug | RelWithDebInfo
  RASP_NATIVE=1     compile with -march=native (off by default: wheels stay portable)
  RASP_CUDA         auto (default: build CUDA kernels when CMake finds nvcc) | 1 (require) | 0 (never)
  RASP_CUDA_ARCHS   CMAKE_CUDA_ARCHITECTURES to use (default: native when a GPU is visible, else 80;90)
  RASP_SANITIZE=1   AddressSanitizer + UndefinedBehaviorSanitizer build (see scripts/sanitize.sh)
  CMAKE_BUILD_PARALLEL_LEVEL   parallel compile jobs (default 2)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _version() -> str:
    text = (ROOT / "rasp_compiler" / "__init__.py").read_text()
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.M)
    if not match:
        raise RuntimeError("rasp_compiler/__init__.py has no __version__")
    return match.group(1)


def _cmake_executable() -> str:
    """Prefer the cmake pip package (recent, knows CUDA 13) over an older system cmake."""
    try:
        import cmake  # type: ignore[import-not-found]

        exe = Path(cmake.CMAKE_BIN_DIR) / "cmake"
        if exe.exists():
            return str(exe)
    except ImportError:
        pass
    exe = shutil.which("cmake")
    if exe is None:
        raise RuntimeError("cmake not found: `pip install cmake` or install it from your OS packages")
    return exe


class CMakeExtension(Extension):
    """An extension whose sources CMake knows; setuptools only needs its name and source dir."""

    def __init__(self, name: str, sourcedir: Path) -> None:
        super().__init__(name, sources=[])
        self.sourcedir = str(sourcedir)


class CMakeBuild(build_ext):
    """Run cmake configure + build, writing the module where setuptools expects it (also --inplace)."""

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            super().build_extension(ext)
            return
        extdir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        extdir.mkdir(parents=True, exist_ok=True)
        build_type = os.environ.get("RASP_BUILD_TYPE", "Debug" if self.debug else "Release")
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        cmake = _cmake_executable()
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY_{build_type.upper()}={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DRASP_VERSION={_version()}",
            f"-DRASP_NATIVE={'ON' if os.environ.get('RASP_NATIVE', '0') == '1' else 'OFF'}",
            f"-DRASP_CUDA={os.environ.get('RASP_CUDA', 'auto')}",
            f"-DRASP_SANITIZE={'ON' if os.environ.get('RASP_SANITIZE', '0') == '1' else 'OFF'}",
        ]
        if os.environ.get("RASP_CUDA_ARCHS"):
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['RASP_CUDA_ARCHS']}")
        try:
            import pybind11

            args.append(f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")
        except ImportError:
            pass
        if shutil.which("ninja") and not (build_dir / "CMakeCache.txt").exists():
            args.append("-GNinja")
        env = dict(os.environ)
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", "2")
        subprocess.run([cmake, ext.sourcedir, *args], cwd=build_dir, check=True, env=env)
        subprocess.run([cmake, "--build", ".", "--config", build_type], cwd=build_dir, check=True, env=env)


setup(
    ext_modules=[CMakeExtension("rasp_compiler._engine", ROOT)],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
