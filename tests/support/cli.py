"""Running `rasp-compiler` as a user does (a subprocess per command), for the CLI and suite tests.

Not a conftest: tests import what they need (`from support.cli import ROOT, run_cli`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m rasp_compiler ARGS` from the repository (or `cwd`), one thread, output captured as text."""
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    return subprocess.run(
        [sys.executable, "-m", "rasp_compiler", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=timeout,
    )
