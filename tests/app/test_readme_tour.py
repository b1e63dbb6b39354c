"""The README's tour must run as written (examples/tour.py) and print what the README says it prints."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tour_runs_and_prints_the_readme_numbers() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "tour.py")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "[3, 2, 1]"
    assert lines[1] == "['BOS', 3, 2, 1]"
    scores = [line for line in lines if line.startswith("edge-level score")]
    assert len(scores) == 2
    assert "recall 0.143" in scores[0] and "ROC-AUC 0.571" in scores[0]
    assert "F1 1.000" in scores[1]
    readme = (ROOT / "README.md").read_text()
    assert "recall\n0.14" in readme or "recall 0.14" in readme


def test_architecture_walkthrough_runs_as_written() -> None:
    """docs/ARCHITECTURE.md's source-to-score walkthrough is code a newcomer may paste: it must run."""
    import re

    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, re.S))
    assert "compile_rasp_to_model" in code and "verify.score" in code
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("edge-level score") == 2
