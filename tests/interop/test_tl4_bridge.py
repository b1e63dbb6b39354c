"""TransformerLens 4.3 (the newest line, which removed HookedTransformer), in .venv-tl4 built by ./dev:
every library model exported as a TransformerBridge gives the same logits as the model itself."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from rasp_compiler.rasp.lib import LIBRARY

ROOT = Path(__file__).resolve().parents[2]
PEER_PYTHON = ROOT / ".venv-tl4" / "bin" / "python"


@pytest.fixture(scope="module")
def facts() -> dict:
    if not PEER_PYTHON.exists():
        pytest.fail(f"{PEER_PYTHON} is missing: `./dev install` builds the TransformerLens 4 environment")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([str(PEER_PYTHON), str(ROOT / "tests" / "interop" / "tl4_peer.py")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_library_model_runs_identically_as_a_transformer_bridge(facts: dict) -> None:
    assert facts["version"].startswith("4.")
    assert set(facts["models"]) == set(LIBRARY)
    for name, f in facts["models"].items():
        assert f["type"] == "TransformerBridge", name
        assert f["max_abs_diff"] < 1e-4 and f["decoded_equal"], (name, f)
        assert f["has_resid_hook"], name  # TL's hook names, for the tools that patch by them


def test_causal_models_run_identically_with_causal_bridge_attention(facts: dict) -> None:
    assert set(facts["causal_models"]) == {"causal_induction", "frac_prevs", "hist", "reverse"}
    for name, f in facts["causal_models"].items():
        assert f["attention_dir"] == "causal", (name, f)
        assert f["max_abs_diff"] < 1e-4 and f["decoded_equal"], (name, f)
    assert facts["models"]["reverse"]["attention_dir"] == "bidirectional"


def test_hooked_transformer_on_tl4_says_what_to_use(facts: dict) -> None:
    assert "removed in 4.0" in facts["hooked_transformer_error"]
    assert "to_transformer_bridge" in facts["hooked_transformer_error"]
