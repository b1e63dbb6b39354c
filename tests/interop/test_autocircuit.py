"""Real auto-circuit 1.0.1 (TransformerLens 2.x, in .venv-autocircuit, built by ./dev) on our exports:
its ACDC and EAP find the ablation-aware truth of reverse, sort, hist and frac_prevs at its own
granularity, and our reader understands its shapes, magnitudes, ACDC's inf/tau and per-position scores."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEER_PYTHON = ROOT / ".venv-autocircuit" / "bin" / "python"
PROGRAMS = ["reverse", "sort", "hist", "frac_prevs"]


def _run_peer(*args: str) -> subprocess.CompletedProcess:
    if not PEER_PYTHON.exists():
        pytest.fail(f"{PEER_PYTHON} is missing: `./dev install` builds the auto-circuit environment")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([str(PEER_PYTHON), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def facts() -> dict:
    proc = _run_peer(str(ROOT / "tests" / "interop" / "autocircuit_peer.py"), *PROGRAMS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", PROGRAMS)
def test_acdc_and_eap_find_the_ablation_aware_truth(facts: dict, name: str) -> None:
    f = facts[name]
    assert f["truth_edges"] > 0
    assert f["acdc_f1"] == 1.0, (f["acdc_fp"], f["acdc_fn"])
    assert f["eap_auc"] == 1.0 and f["eap_f1"] == 1.0, (f["eap_fp"], f["eap_fn"])


def test_reader_conventions_against_real_output(facts: dict) -> None:
    for name, f in facts.items():
        # ACDC: +inf for kept edges, the pruning tau for the others; the kept ones are the circuit
        assert f["acdc_has_inf"] and f["acdc_finite_max"] <= 0.09 + 1e-6, name  # taus: 1e-5 .. 9e-2
        assert f["abs_matches_signed"], name  # magnitudes by default, the sign on request
        assert f["resid_start_shared"], name  # Resid Start's score on both embedding edges
        assert f["run_circuits_ok"], name  # our prune scores run in auto-circuit's run_circuits
        assert all(shape[0] == 1 for shape in f["our_shapes"].values()), f["our_shapes"]  # [n_heads, n_src]
        assert len(f["per_position_shape"]) >= 2 and f["per_position_shape"][0] == 6, name  # [T, ...]
        assert f["per_position_f1"] == 1.0, name
    assert any(f["eap_has_negative"] for f in facts.values())  # signed scores occur, so |.| is tested


def test_the_readme_script_runs_unchanged() -> None:
    readme = (ROOT / "README.md").read_text()
    script = (ROOT / "examples" / "autocircuit_acdc.py").read_text()
    body = [line for line in script.splitlines() if line.strip()]
    assert len(body) <= 15 and script.strip() in readme  # the README shows exactly this file
    proc = _run_peer(str(ROOT / "examples" / "autocircuit_acdc.py"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ablation edge-level score: precision 1.000  recall 1.000  F1 1.000" in proc.stdout, proc.stdout
    assert "structural edge-level score" in proc.stdout
