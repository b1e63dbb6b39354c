"""The CUDA kernels' logic on every run, GPU or not: scripts/cuda_emulate_check.sh compiles
csrc/cuda/engine.cu as plain C++ against csrc/cuda/emulate/cuda_runtime.h (blocks and warp groups run
one after another on the CPU), links it into a throwaway copy of the package and runs every test of
tests/engine/test_cuda.py on it: every engine operation against the CPU engine, both kernel modes, row
lists and both weight forms. It finds indexing and logic errors, not races or GPU speed (the real
kernels run where a GPU is: test_cuda.py itself)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cuda_kernels_under_emulation(tmp_path) -> None:
    cxx = os.environ.get("CXX", "g++")
    assert shutil.which(cxx), f"the emulated CUDA build needs a C++ compiler ({cxx} not found; set CXX)"
    env = dict(os.environ, WORK=str(tmp_path / "emu"), PYTHON=sys.executable)
    env.pop("RASP_CUDA_SPARSE", None)
    run = subprocess.run(["bash", os.path.join(ROOT, "scripts", "cuda_emulate_check.sh")], env=env,
                         capture_output=True, text=True, timeout=1200)
    tail = (run.stdout + run.stderr)[-4000:]
    assert run.returncode == 0, f"emulated CUDA tests failed:\n{tail}"
    passed = re.search(r"(\d+) passed", run.stdout)
    assert passed and int(passed.group(1)) >= 80, f"too few emulated CUDA tests ran:\n{tail}"
