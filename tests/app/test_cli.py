"""The `rasp-compiler` command, run as a user runs it: a subprocess per command, checking its files.

Expected outputs come from plain-Python oracles written here (reversal, length, counting) or from
the RASP evaluator, never from the command under test.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from support.cli import run_cli as cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_one_line_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode not in (0, None), p.stdout
    err = p.stderr.strip()
    assert "Traceback" not in p.stderr, p.stderr
    assert err and "\n" not in err, f"expected one line on stderr, got:\n{p.stderr}"
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"


@pytest.fixture(scope="module")
def reverse_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli") / "reverse_model"
    p = cli("compile", "reverse", "--out", str(d))
    assert p.returncode == 0, p.stderr
    assert "compiled reverse" in p.stdout
    return d


def test_help_lists_every_command() -> None:
    p = cli("--help")
    assert p.returncode == 0
    commands = ("compile", "run", "circuit", "suite", "verify", "fuzz", "demo", "list", "evaluate",
                "features")
    for cmd in commands:
        assert cmd in p.stdout


def test_list_shows_library() -> None:
    from rasp_compiler.rasp.lib import LIBRARY

    p = cli("list")
    assert p.returncode == 0, p.stderr
    names = {line.split()[0] for line in p.stdout.splitlines() if line.strip()}
    assert names == set(LIBRARY)


def test_compile_writes_a_loadable_model(reverse_dir: Path) -> None:
    from rasp_compiler.model import load

    for name in ("weights.safetensors", "model.json", "circuit.json"):
        assert (reverse_dir / name).is_file()
    model = load(reverse_dir)
    assert model.apply(["BOS", "a", "b", "c"]).decoded[1:] == ["c", "b", "a"]
    doc = json.loads((reverse_dir / "circuit.json").read_text())
    assert doc["format"] == "verify.circuit" and doc["output"] == "reverse"


def test_compile_qk_encoding_keeps_answers_and_is_recorded(tmp_path: Path) -> None:
    """sort compiled both ways: the same answers (a plain sorted() oracle), tracr's layout has more
    non-zero weights, and each model's annotation names its encoding."""
    from rasp_compiler.model import load

    models = {}
    for encoding in ("smallest", "tracr"):
        d = tmp_path / encoding
        p = cli("compile", "sort", "--qk-encoding", encoding, "--out", str(d))
        assert p.returncode == 0, p.stderr
        assert "non-zero)" in p.stdout
        models[encoding] = load(d)
        heads = [b for b in models[encoding].annotation.blocks if b.component == "attn"]
        assert heads and all(b.qk_encoding for b in heads)
        assert all(set(b.qk_encoding) == {"tracr"} for b in heads) == (encoding == "tracr")
    for xs in ([3, 1, 2], [4, 2, 3, 1], [1], [2, 2, 1]):
        for m in models.values():
            assert m.apply(["BOS", *xs]).decoded[1:] == sorted(xs)
    nonzero = {k: sum(int(np.count_nonzero(w)) for w in m.weights.values()) for k, m in models.items()}
    assert nonzero["smallest"] < nonzero["tracr"]
    bad = cli("compile", "sort", "--qk-encoding", "dense")
    assert bad.returncode == 2 and "argument --qk-encoding: invalid choice: 'dense'" in bad.stderr


def test_run_inputs_from_argv_and_file(reverse_dir: Path, tmp_path: Path) -> None:
    inputs = [["a", "b", "c"], ["c", "a", "a", "b"], ["b"], ["a", "c", "b", "b", "a"]]
    f = tmp_path / "inputs.txt"
    f.write_text("\n".join(",".join(x) for x in inputs[2:]) + "\n")
    p = cli("run", str(reverse_dir), "a b c", "caab", "--file", str(f), "--json")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["input"] for r in rows] == inputs
    assert [r["output"] for r in rows] == [x[::-1] for x in inputs]  # oracle: reversal
    p = cli("run", str(reverse_dir), "a b c")
    assert p.stdout.split() == ["a", "b", "c", "->", "c", "b", "a"]


def test_run_rejects_unknown_token_and_long_input(reverse_dir: Path) -> None:
    assert_one_line_error(cli("run", str(reverse_dir), "a z"), "'z'", "vocabulary")
    assert_one_line_error(cli("run", str(reverse_dir), "a a a a a a a a"), "at most 5")


def test_circuit_table_json_and_drawing(reverse_dir: Path, tmp_path: Path) -> None:
    import verify
    from rasp_compiler.model import load

    png, out = tmp_path / "c.png", tmp_path / "c.json"
    p = cli("circuit", str(reverse_dir), "--draw", str(png))
    assert p.returncode == 0, p.stderr
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    truth = verify.ground_truth(load(reverse_dir))
    for node in truth.node_names():  # the table names every component of the circuit
        assert node in p.stdout
    p = cli("circuit", str(reverse_dir), "--format", "json", "--out", str(out), "--method", "weights")
    assert p.returncode == 0, p.stderr
    got = verify.formats.from_json(out.read_text())
    assert got == truth  # truth from the weights alone equals the annotation's
    pics = tmp_path / "pics"
    p = cli("circuit", str(reverse_dir), "--pictures", str(pics), "--input", "a b c")
    assert p.returncode == 0, p.stderr
    heads = [n for n in truth.node_names() if ".H" in n]
    names = ["circuit.png", "residual_stream.png"] + [f"attention_{h}.png" for h in heads]
    assert sorted(x.name for x in pics.iterdir()) == sorted(names)
    for name in names:
        assert (pics / name).read_bytes()[:8] == PNG_MAGIC
    svg = tmp_path / "c.svg"
    assert cli("circuit", str(reverse_dir), "--draw", str(svg), "--format", "autocircuit").returncode == 0
    assert "reverse" in svg.read_text()


def _score_line(stdout: str, level: str) -> list[str]:
    line = next(x for x in stdout.splitlines() if x.startswith(level + " "))
    return line.split()


def test_verify_scores_each_form(reverse_dir: Path, tmp_path: Path) -> None:
    import verify
    from rasp_compiler.model import load

    truth = verify.ground_truth(load(reverse_dir))
    edges = sorted(str(e) for e in truth.edges)
    # the full truth in our edge-name form scores 1.0 everywhere
    f = tmp_path / "full.json"
    f.write_text(json.dumps(edges))
    p = cli("verify", str(reverse_dir), str(f))
    assert p.returncode == 0, p.stderr
    assert _score_line(p.stdout, "edge")[1:4] == ["1.000", "1.000", "1.000"]
    # drop the edge into the output: recall (E-1)/E, precision 1 (computed here, not by verify)
    dropped = next(e for e in edges if "->output" in e)
    f.write_text(json.dumps([e for e in edges if e != dropped]))
    p = cli("verify", str(reverse_dir), str(f), "--level", "edge", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)["edge"]
    assert r["fn"] >= 1 and dropped in r["false_negatives"]
    assert r["precision"] == 1.0
    # ACDC and auto-circuit forms of the truth, written by hand from the naming conventions
    ac = [
        ("Resid Start" if e.writer in ("embed", "pos_embed") else _ac_src(e.writer))
        + "->"
        + _ac_dst(e.reader, e.input)
        for e in truth.edges
    ]
    g = tmp_path / "ac.json"
    g.write_text(json.dumps(sorted(set(ac))))
    p = cli("verify", str(reverse_dir), str(g))
    assert p.returncode == 0, p.stderr
    assert "auto-circuit" in p.stdout
    assert _score_line(p.stdout, "node")[1:4] == ["1.000", "1.000", "1.000"]


def _ac_src(node: str) -> str:
    if node.endswith(".MLP"):
        return f"MLP {node[1:].split('.')[0]}"
    layer, head = node[1:].split(".H")
    return f"A{layer}.{head}"


def _ac_dst(node: str, inp: str) -> str:
    if node == "output":
        return "Resid End"
    if node.endswith(".MLP"):
        return f"MLP {node[1:].split('.')[0]}"
    layer, head = node[1:].split(".H")
    return f"A{layer}.{head}.{inp.upper()}"


def test_verify_unknown_component_is_one_line_error(reverse_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(["L0.H0->L9.H7<q>"]))
    assert_one_line_error(cli("verify", str(reverse_dir), str(f)), "L9")
    f.write_text(json.dumps(["A7.3->Resid End"]))
    assert_one_line_error(cli("verify", str(reverse_dir), str(f)), "A7.3")


def test_incomplete_model_dir_is_one_line_error(reverse_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "broken"
    d.mkdir()
    (d / "model.json").write_bytes((reverse_dir / "model.json").read_bytes())
    f = tmp_path / "c.json"
    f.write_text(json.dumps([]))
    assert_one_line_error(cli("verify", str(d), str(f)), "weights.safetensors")
    assert_one_line_error(cli("run", str(d), "a b"), "weights.safetensors")
    assert_one_line_error(cli("circuit", str(tmp_path / "nowhere")), "does not exist")


PROGRAM_FILE = """
from rasp_compiler import rasp

VOCAB = ["x", "y"]
MAX_SEQ_LEN = 4


def count_x():
    is_x = rasp.numerical(rasp.Map(lambda t: 1 if t == "x" else 0, rasp.tokens)).named("is_x")
    return rasp.numerical(rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ),
                                         is_x, default=0)).named("frac_x")
"""


def test_compile_program_file_and_missing_function(tmp_path: Path) -> None:
    src = tmp_path / "prog.py"
    src.write_text(PROGRAM_FILE)
    out = tmp_path / "m"
    p = cli("compile", f"{src}:count_x", "--out", str(out))
    assert p.returncode == 0, p.stderr
    p = cli("run", str(out), "x y x x", "--json")
    got = json.loads(p.stdout)["output"]
    xs = "x y x x".split()
    want = [sum(t == "x" for t in xs[: i + 1]) / (i + 1) for i in range(len(xs))]  # oracle: running fraction
    assert got == pytest.approx(want, abs=1e-4)
    assert_one_line_error(cli("compile", f"{src}:nope"), "does not define 'nope'", "count_x")
    assert_one_line_error(cli("compile", f"{tmp_path / 'missing.py'}:f"), "does not exist")
    assert_one_line_error(cli("compile", "no_such_program"), "no_such_program")


def test_fuzz_compiler_small_campaign(tmp_path: Path) -> None:
    p = cli(
        "fuzz",
        "compiler",
        "--programs",
        "3",
        "--seed",
        "1",
        "--inputs",
        "3",
        "--backends",
        "numpy",
        "--no-save",
        "--quiet",
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "3" in p.stdout  # the campaign summary counts the programs
    assert_one_line_error(cli("fuzz", "compiler", "--programs", "1", "--backends", "nope", "--quiet"), "nope")


_TOOLS = """
import verify


def perfect(model, dataset):
    return verify.ground_truth(model)


def nothing(model, dataset):
    return set()
"""


def test_fuzz_tool_scores_a_user_tool(tmp_path: Path) -> None:
    """A tool returning the truth passes every program; one returning nothing is flagged (exit 1)."""
    (tmp_path / "my_tools.py").write_text(_TOOLS)
    env_path = str(tmp_path)
    args = ("fuzz", "tool", "--programs", "3", "--seed", "2", "--inputs", "4", "--quiet", "--no-shrink")
    old = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = env_path + (os.pathsep + old if old else "")
    try:
        good = cli(*args, "--tool", "my_tools:perfect", "--json", str(tmp_path / "good.json"))
        bad = cli(*args, "--tool", "my_tools:nothing")
        missing = cli(*args, "--tool", "my_tools:absent")
    finally:
        os.environ["PYTHONPATH"] = old
    assert good.returncode == 0, good.stdout + good.stderr
    summary = json.loads((tmp_path / "good.json").read_text())
    assert summary["n_programs"] == 3 and summary["n_failing"] == 0 and summary["mean_f1"] == 1.0
    assert "programs scored" in good.stdout and "FLAGGED" not in good.stdout
    assert bad.returncode == 1 and "FLAGGED" in bad.stdout
    assert_one_line_error(missing, "absent")
    assert_one_line_error(cli("fuzz", "tool", "--programs", "1", "--quiet"), "--tool")
    assert_one_line_error(
        cli("fuzz", "compiler", "--programs", "1", "--ray", "--workers", "2"), "--ray", "--workers"
    )
    try:
        import ray  # noqa: F401
    except ImportError:
        assert_one_line_error(cli("fuzz", "compiler", "--programs", "1", "--ray"), "--ray", "ray")


def test_demo_writes_report_with_pictures(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    p = cli("demo", "--out", str(out), "--programs", "reverse,sort,frac_prevs", "--quiet")
    assert p.returncode == 0, p.stdout + p.stderr
    assert str(out / "report.html") in p.stdout
    for name in ("circuit.png", "residual_stream.png", "attention.png", "roc.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name
        assert f"]({name})" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert "0 mismatches" in p.stdout and "FAILED" not in p.stdout
    report_md = (out / "report.md").read_text()
    assert "Why the truths differ" in report_md and "ablation-aware truth" in report_md
    assert "vs structural truth" in p.stdout and "vs ablation-aware truth" in p.stdout
    assert "| rotated |" in report_md  # the variant line
    for name in ("reverse", "sort", "frac_prevs"):
        assert (out / "models" / name / "weights.safetensors").is_file()


def test_demo_discovery_truths_match_hook_patching(tmp_path: Path) -> None:
    """The demo's ablation-aware truth, re-derived independently: patch each edge alone from the corrupted
    input with PyTorch hooks (not the engine the causal check uses) and see which change a decoded output."""
    import random

    from rasp_compiler import engine
    from rasp_compiler.app import report
    from rasp_compiler.rasp.lib import LIBRARY
    from verify.circuit import Edge, legal_edges

    _, model, truth, program = report.check_program("sort", tmp_path, random.Random(0))
    d = report.discover(model, program, "plain", n=12, seed=3, distinct=LIBRARY["sort"].distinct_tokens)
    assert d.necessary is not None and d.ablation is not None
    edges = legal_edges(model.config.n_layers, model.config.n_heads)
    assert set(d.result.scores) == {str(e) for e in edges}  # ACDC ranks every edge of the model
    module = model.to_torch()
    from verify import causal

    data = causal.make_dataset(model, program, n=12, seed=3)
    assert data.clean == [list(x) for x in data.clean]
    clean_out = model.forward_numpy(data.clean_ids).argmax(-1)[:, 1:]
    changed = set()
    for e in edges:
        out = engine.torch_patched_run(
            module, data.clean_ids, data.corrupt_ids, [(e.writer, e.reader, e.input)]
        )
        if (out.argmax(-1)[:, 1:] != clean_out).any():
            changed.add(str(e))
    assert set(d.necessary.edges) == changed
    assert set(d.necessary.edges) < {str(e) for e in truth.edges}  # sort: strictly fewer than structural
    assert d.structural.roc_auc < d.ablation.roc_auc <= 1.0
    assert all(isinstance(Edge.parse(x), Edge) for x in d.necessary.structural)


def test_verify_reads_autocircuit_prune_scores_without_a_threshold(reverse_dir: Path, tmp_path: Path) -> None:
    """auto-circuit's own shapes (a one-head model's q/k/v scores are [1, n_src]), no threshold key: the
    circuit is the edges scoring above --threshold and the ROC ranks by the scores."""
    import verify
    from rasp_compiler.model import load
    from verify import formats

    model = load(reverse_dir)
    truth = verify.ground_truth(model)
    scores = {str(e): 2.0 for e in truth.edges}
    ps = formats.to_autocircuit_scores(scores, model)
    assert all(t.dim() == 2 for m, t in ps.items() if "_input" in m and "mlp" not in m)
    f = tmp_path / "ps.json"
    f.write_text(json.dumps({"prune_scores": {m: t.tolist() for m, t in ps.items()}}))
    p = cli("verify", str(reverse_dir), str(f), "--json", "--threshold", "1.0")
    assert p.returncode == 0, p.stderr
    edge = json.loads(p.stdout)["edge"]
    assert edge["f1"] == 1.0  # the circuit read back is exactly the truth
    # the ROC comes from the scores; Resid Start shares one score between embed and pos_embed edges
    assert 0.9 < edge["roc_auc"] <= 1.0


def test_fuzz_tool_takes_a_file_like_compile_and_shows_a_tool_error(tmp_path: Path) -> None:
    broken_tool = "\n\ndef broken(model, data):\n    raise RuntimeError('boom')\n"
    (tmp_path / "my_tools.py").write_text(_TOOLS + broken_tool)
    args = ("fuzz", "tool", "--programs", "6", "--seed", "2", "--inputs", "4", "--no-shrink")
    good = cli(*args, "--tool", f"{tmp_path / 'my_tools.py'}:perfect")
    assert good.returncode == 0 and "ok: every program scores" in good.stdout, good.stdout + good.stderr
    broken = cli(*args, "--tool", f"{tmp_path / 'my_tools.py'}:broken")
    assert broken.returncode == 1 and "the tool raised" in broken.stdout, broken.stdout
    assert "RuntimeError: boom" in broken.stdout
    absent = cli(*args, "--tool", f"{tmp_path / 'my_tools.py'}:absent")
    assert_one_line_error(absent, "does not define", "perfect")
    assert_one_line_error(cli(*args, "--tool", f"{tmp_path}:perfect"), "is a directory")


def test_a_tool_fuzz_with_nothing_scored_is_no_verdict() -> None:
    from collections import Counter

    from verify.tool_fuzz import ToolFuzzSummary

    skipped = Counter(constant=2)
    summary = ToolFuzzSummary("t", "structural", "resample", "edge", "f1", 0.999, 0, skipped=skipped)
    assert not summary.ok and "NO VERDICT" in summary.report()


def test_verify_against_the_ablation_aware_truth_merged(reverse_dir: Path, tmp_path: Path) -> None:
    # reverse under resample at one length needs exactly these two edges (tests/verification pin them)
    found = tmp_path / "found.json"
    found.write_text(json.dumps({"edges": ["L3.H0->output<in>", "embed->L3.H0<v>"]}))
    structural = cli("verify", str(reverse_dir), str(found), "--level", "edge", "--json")
    ablation = cli("verify", str(reverse_dir), str(found), "--level", "edge", "--json", "--truth", "ablation")
    merged = cli("verify", str(reverse_dir), str(found), "--truth", "ablation", "--merge-embeddings")
    assert json.loads(structural.stdout)["edge"]["f1"] < 0.5
    assert json.loads(ablation.stdout)["edge"]["f1"] == 1.0
    assert merged.returncode == 0
    assert "ablation-aware (resample, 32 pairs, seed 0), embeddings merged" in merged.stdout
    assert "2 of 77" in merged.stdout  # auto-circuit's edge count for reverse


def test_features_writes_files_readable_without_the_package(reverse_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    p = cli("features", str(reverse_dir), "--out", str(tmp_path / "f"))
    assert p.returncode == 0 and "blocks.3.hook_resid_post" in p.stdout, p.stderr
    doc = json.loads((tmp_path / "f" / "features.json").read_text())
    vectors = load_file(str(tmp_path / "f" / "features.safetensors"))
    assert doc["format"] == "rasp_compiler.features" and set(doc["sites"]) == set(vectors)
    for site, feats in doc["sites"].items():
        width = doc["d_model"] if not site.endswith("mlp.hook_post") else 30  # reverse's d_mlp
        assert doc["dims"][site] == width and vectors[site].shape == (len(feats), width)
        np.testing.assert_allclose(np.linalg.norm(vectors[site], axis=1), 1.0, atol=1e-6)
    assert {"blocks.0.hook_attn_out", "blocks.0.mlp.hook_post", "blocks.3.hook_mlp_out"} <= set(doc["sites"])
    neurons = doc["sites"]["blocks.0.mlp.hook_post"]
    assert neurons and all(f["role"].startswith("neuron") and f["value"] is None for f in neurons)
    assert {"label": "reverse:a", "variable": "reverse", "value": "a", "role": None} in doc["sites"][
        "blocks.3.hook_resid_post"]


def test_verify_scores_a_dictionary_file_against_the_features(reverse_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    from rasp_compiler.model import load
    from verify import features

    site = "blocks.3.hook_resid_post"
    truth = features.feature_dictionary(load(reverse_dir), site)
    vectors = truth.vectors.astype(np.float32)
    bias = np.zeros(vectors.shape[1], np.float32)
    save_file({"W_dec": vectors, "b_dec": bias}, str(tmp_path / "perfect.safetensors"))
    perfect = cli("verify", str(reverse_dir), str(tmp_path / "perfect.safetensors"), "--site", site, "--json")
    assert perfect.returncode == 0, perfect.stderr
    assert json.loads(perfect.stdout)["recovered"] == 1.0
    dropped = truth.vectors[[i for i, lab in enumerate(truth.labels) if lab != "reverse:a"]]
    save_file({"W_dec": dropped.astype(np.float32)}, str(tmp_path / "dropped.safetensors"))
    text = cli("verify", str(reverse_dir), str(tmp_path / "dropped.safetensors"), "--site", site)
    assert text.returncode == 0 and "missing (1): reverse:a" in text.stdout, text.stdout
    assert_one_line_error(cli("verify", str(reverse_dir), str(tmp_path / "dropped.safetensors")), "--site")
    two = {"a": dropped.astype(np.float32), "b": dropped.astype(np.float32)}
    save_file(two, str(tmp_path / "two.safetensors"))
    assert_one_line_error(cli("verify", str(reverse_dir), str(tmp_path / "two.safetensors"), "--site", site),
                          "--tensor")
