"""`rasp-compiler evaluate`: a plain function scored over a 30-model suite by one command, against both
truths, with confidence intervals, reasons, pictures and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import run_cli as cli

from rasp_compiler.app.evaluate import evaluate_suite
from rasp_compiler.app.suite import generate_suite

_METHODS = '''
import verify
from verify import causal


def every_output_edge(model, data):
    """A home-made method: every edge into the output."""
    graph = verify.ground_truth(model).model_graph
    return {str(e): 1.0 for e in verify.legal_edges(graph.n_layers, graph.n_heads) if e.reader == "output"}


def oracle(model, data):
    """Returns the ablation-aware truth itself: must score 1.0 against it everywhere."""
    return causal.necessary_edges(model, data, "resample").circuit


def broken(model, data):
    raise RuntimeError("no circuit today")
'''


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evaluate") / "suite"
    generate_suite(30, 0, out, workers=1, progress=False)
    (out.parent / "methods.py").write_text(_METHODS)
    return out


def test_one_command_scores_a_plain_function_over_a_30_model_suite(suite_dir: Path) -> None:
    tool = f"{suite_dir.parent / 'methods.py'}:every_output_edge"
    first = cli("evaluate", str(suite_dir), "--tool", tool, "--quiet")
    assert first.returncode == 0, first.stderr
    assert "(30 models; 0 from an earlier run)" in first.stdout
    assert "structural      30" in first.stdout and "[95% CI]" in first.stdout
    out = suite_dir / "evaluations" / "methods.py_every_output_edge"
    per_model = sorted(p for p in out.glob("0*.json"))
    assert len(per_model) == 30
    for name in ("report.md", "roc_structural.png", "roc_ablation.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    # every missed or extra edge of the worst models carries its reason
    assert "missed " in first.stdout and ": in the structural truth: carries" in first.stdout
    # resume: a second run re-evaluates nothing, except a damaged result
    per_model[0].write_text("{not json")
    second = cli("evaluate", str(suite_dir), "--tool", tool, "--quiet")
    assert "(30 models; 29 from an earlier run)" in second.stdout, second.stdout
    assert json.loads(per_model[0].read_text())["model_id"] == per_model[0].stem


def test_the_truth_scores_one_and_a_crashing_tool_zero(suite_dir: Path) -> None:
    methods = suite_dir.parent / "methods.py"
    perfect = evaluate_suite(f"{methods}:oracle", suite_dir, progress=False)
    ablation = [m.scores["ablation"]["f1"] for m in perfect.scored("ablation")]
    assert ablation and all(f == 1.0 for f in ablation)
    assert perfect.summary("ablation")["f1"] == {"mean": 1.0, "low": 1.0, "high": 1.0}
    crashed = evaluate_suite(f"{methods}:broken", suite_dir, progress=False)
    assert all(m.error == "RuntimeError: no circuit today" for m in crashed.models if not m.skipped)
    assert "the tool raised on" in crashed.report()


def test_bad_suite_or_tool_is_one_line_error(tmp_path: Path, suite_dir: Path) -> None:
    missing = cli("evaluate", str(tmp_path), "--tool", "acdc", "--quiet")
    assert missing.returncode == 1 and "index.json does not exist" in missing.stderr
    absent = cli("evaluate", str(suite_dir), "--tool", f"{suite_dir.parent / 'methods.py'}:nope", "--quiet")
    assert absent.returncode == 1 and "does not define 'nope'" in absent.stderr
