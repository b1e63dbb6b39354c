"""`rasp-compiler suite`: reproducible to the byte, independent of worker count, resumable, and every
model's files agree with the evaluator (the independent oracle) and load back."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support.cli import run_cli

N = 6


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return run_cli(*args, timeout=timeout)


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def suites(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("suite")
    a, b = base / "a", base / "b"
    p = cli("suite", "--n", str(N), "--seed", "3", "--out", str(a), "--workers", "1")
    assert p.returncode == 0, p.stderr
    assert f"built {N}" in p.stdout and "index" in p.stdout
    assert "suite" in p.stderr  # the tqdm progress bar
    p = cli("suite", "--n", str(N), "--seed", "3", "--out", str(b), "--workers", "2", "--quiet")
    assert p.returncode == 0, p.stderr
    return a, b


def test_same_seed_gives_identical_files_for_any_worker_count(suites: tuple[Path, Path]) -> None:
    a, b = suites
    ha, hb = tree_hashes(a), tree_hashes(b)
    assert len(ha) == 2 + 14 * N  # suite.json, index.json, fourteen files per model (manifest.json included)
    assert ha == hb


def test_index_and_model_files(suites: tuple[Path, Path]) -> None:
    from rasp_compiler import rasp
    from rasp_compiler.model import load
    from rasp_compiler.rasp.source import from_source

    a, _ = suites
    index = json.loads((a / "index.json").read_text())
    assert index["complete"] and index["seed"] == 3 and len(index["models"]) == N
    origins = {m["origin"] for m in index["models"]}
    assert origins == {"library", "generated"}
    for row in index["models"]:
        d = a / row["dir"]
        card = json.loads((d / "card.json").read_text())
        assert card["id"] == row["id"] and card["sizes"]["n_layers"] == row["n_layers"]
        assert card["op_kinds"] and card["layers"] and card["program_source"].strip()
        model = load(d)
        assert model.n_layers == card["sizes"]["n_layers"]
        program = from_source((d / "program.py").read_text())
        data = json.loads((d / "dataset.json").read_text())
        assert len(data["pairs"]) == 32
        numerical = data["output_encoding"] == "numerical"
        for pair in data["pairs"][:8]:
            assert len(pair["clean"]) == len(pair["corrupted"])
            for key in ("clean", "corrupted"):
                want = rasp.evaluate(program, pair[key])  # oracle: the evaluator on the printed program
                assert (
                    pair[key + "_expected"] == pytest.approx(want)
                    if numerical
                    else pair[key + "_expected"] == want
                )
                got = model.apply([model.codec.bos, *pair[key]]).decoded[1:]
                assert got == pytest.approx(want, abs=1e-4) if numerical else got == want
        circuit = json.loads((d / "circuit.json").read_text())
        assert circuit["output"] == card["output"] and len(circuit["edges"]) == row["circuit_edges"]


def test_suite_circuit_files_verify_perfectly(suites: tuple[Path, Path]) -> None:
    a, _ = suites
    d = a / "models" / json.loads((a / "index.json").read_text())["models"][0]["id"]
    for name in (
        "circuit.json",
        "circuit.acdc.json",
        "circuit.autocircuit.json",
        "circuit.eapig.json",
        "circuit.tl_hooks.json",
    ):
        p = cli("verify", str(d), str(d / name), "--json")
        assert p.returncode == 0, (name, p.stderr)
        r = json.loads(p.stdout)
        assert r["node"]["f1"] == 1.0, name
        if name not in ("circuit.tl_hooks.json",):  # node-level forms cannot say which edges
            assert r["edge"]["f1"] == 1.0, name


def test_resume_skips_finished_models_and_ends_identical(suites: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = suites
    c = tmp_path / "c"
    shutil.copytree(a, c)
    victim = sorted((c / "models").iterdir())[2]
    shutil.rmtree(victim)
    (c / "models" / f"{victim.name}.tmp-99999").mkdir()  # a half-written leftover from a killed run
    (c / "models" / f"{victim.name}.tmp-99999" / "weights.safetensors").write_bytes(b"junk")
    (c / "index.json").unlink()
    p = cli("suite", "--n", str(N), "--seed", "3", "--out", str(c), "--quiet")
    assert p.returncode == 0, p.stderr
    assert f"built 1, skipped {N - 1}" in p.stdout
    assert tree_hashes(c) == tree_hashes(a)


def test_other_seed_other_suite_and_settings_mismatch(suites: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = suites
    p = cli("suite", "--n", str(N), "--seed", "3", "--out", str(a), "--pairs", "5", "--quiet")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "pairs" in p.stderr
    d = tmp_path / "d"
    assert cli("suite", "--n", "2", "--seed", "4", "--out", str(d), "--quiet").returncode == 0
    e = tmp_path / "e"
    assert cli("suite", "--n", "2", "--seed", "5", "--out", str(e), "--quiet").returncode == 0
    assert tree_hashes(d) != tree_hashes(e)


def test_ray_missing_gives_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # hide ray whether or not it is installed: a package on PYTHONPATH whose import fails
    shim = tmp_path / "noray" / "ray"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('ray hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", str(shim.parent))
    p = cli("suite", "--n", "2", "--out", str(tmp_path / "r"), "--ray")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "ray" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_ray_local_instance_gives_same_files(suites: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip(
        "ray", reason="ray is not installed (optional extra: pip install 'rasp-compiler[ray]')"
    )
    a, _ = suites
    r = tmp_path / "r"
    p = cli("suite", "--n", str(N), "--seed", "3", "--out", str(r), "--ray", "--quiet", timeout=600)
    assert p.returncode == 0, p.stderr
    assert tree_hashes(r) == tree_hashes(a)


# ----------------------------------------------------------------------------------------------- variants


def _decoded_all(model, tokens: list) -> dict:
    import numpy as np

    from rasp_compiler.model.outputs import decode_outputs

    return decode_outputs(model, model.forward_numpy(np.array(model.encode(tokens))))


def _programs_of(d: Path) -> dict:
    """Each output's program, rebuilt from the printed source in the card (the evaluator is the oracle)."""
    from rasp_compiler.rasp.source import from_source

    card = json.loads((d / "card.json").read_text())
    if "outputs" in card:
        return {o["name"]: from_source(o["program_source"]) for o in card["outputs"]}
    return {card["name"]: from_source((d / "program.py").read_text())}


def test_noisy_rotated_suite_is_reproducible_exact_and_recorded(tmp_path: Path) -> None:
    from rasp_compiler import rasp
    from rasp_compiler.model import load

    args = ["suite", "--n", "3", "--seed", "7", "--noise", "--rotate", "--pairs", "8", "--quiet"]
    p = cli(*args, "--out", str(tmp_path / "a"), "--workers", "1")
    assert p.returncode == 0, p.stderr
    p = cli(*args, "--out", str(tmp_path / "b"), "--workers", "2")
    assert p.returncode == 0, p.stderr
    assert tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    assert index["variants"]["rotate"] and index["variants"]["noise_heads"] == 2
    assert len(index["models"]) == 3
    for row in index["models"]:
        assert row["variant_steps"] == ["noise", "rotate"] and not row["approximate"]
        d = tmp_path / "a" / row["dir"]
        card = json.loads((d / "card.json").read_text())
        assert [s["kind"] for s in card["variant"]["steps"]] == ["noise", "rotate"]
        model = load(d)
        assert model.config.residual_labels[0] == "basis:0"  # no basis vector is named like a variable
        noise = card["variant"]["steps"][0]["components"]
        distractor_heads = {f"L{c['layer']}.H{c['head']}" for c in noise if c["component"] == "attn"}
        assert len(distractor_heads) == 2 + 2  # 2 distractors + 1 cancelling pair
        in_truth = {n["name"] for n in json.loads((d / "circuit.json").read_text())["nodes"]}
        assert not distractor_heads & in_truth  # distractors are outside the ground truth
        assert max(int(h.split(".H")[1]) for h in distractor_heads) < model.config.n_heads
        ((name, program),) = _programs_of(d).items()
        data = json.loads((d / "dataset.json").read_text())
        for pair in data["pairs"]:
            for key in ("clean", "corrupted"):
                want = rasp.evaluate(program, pair[key])
                got = model.apply([model.codec.bos, *pair[key]]).decoded[1:]
                if data["output_encoding"] == "numerical":
                    assert got == pytest.approx(want, abs=1e-4)
                else:
                    assert got == want
    # a resumed run with other variants is refused in one line
    p = cli("suite", "--n", "3", "--seed", "7", "--rotate", "--pairs", "8", "--out", str(tmp_path / "a"))
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and "variants" in p.stderr


def test_compressed_suite_records_the_accuracy_it_has(tmp_path: Path) -> None:
    from rasp_compiler import rasp
    from rasp_compiler.model import load

    out = tmp_path / "c"
    p = cli(
        "suite", "--n", "2", "--seed", "2", "--compress", "0.7", "--pairs", "8", "--quiet", "--out", str(out)
    )
    assert p.returncode == 0, p.stderr
    for row in json.loads((out / "index.json").read_text())["models"]:
        d = out / row["dir"]
        card = json.loads((d / "card.json").read_text())
        model = load(d)
        assert row["approximate"] and card["circuit"]["approximate"] and row["variant_steps"] == ["compress"]
        assert model.config.d_model == row["d_model"] < len(card["variant"]["labels"])
        ((name, program),) = _programs_of(d).items()
        numerical = card["output_encoding"] == "numerical"
        ok = total = 0
        for pair in json.loads((d / "dataset.json").read_text())["pairs"]:
            for key in ("clean", "corrupted"):
                want = rasp.evaluate(program, pair[key])
                got = model.apply([model.codec.bos, *pair[key]]).decoded[1:]
                for w, g in zip(want, got, strict=True):
                    ok += abs(float(w) - float(g)) <= 1e-4 if numerical and w is not None else w == g
                    total += 1
        assert row["accuracy"] == pytest.approx(ok / total)  # measured on these very inputs


def test_multi_output_suite_has_a_circuit_per_output(tmp_path: Path) -> None:
    from rasp_compiler import rasp
    from rasp_compiler.model import load

    out = tmp_path / "m"
    p = cli("suite", "--n", "2", "--seed", "1", "--multi", "2", "--pairs", "6", "--quiet", "--out", str(out))
    assert p.returncode == 0, p.stderr + p.stdout
    for row in json.loads((out / "index.json").read_text())["models"]:
        d = out / row["dir"]
        assert len(row["outputs"]) == 2 and row["outputs"][0] == row["name"]
        model = load(d)
        programs = _programs_of(d)
        circuits = {n: json.loads((d / "outputs" / f"{n}.circuit.json").read_text()) for n in programs}
        edges = {n: {json.dumps(e, sort_keys=True) for e in c["edges"]} for n, c in circuits.items()}
        a, b = edges.values()
        assert a != b  # each output has its own circuit; the other's components are distractors
        main = json.loads((d / "circuit.json").read_text())
        assert {json.dumps(e, sort_keys=True) for e in main["edges"]} == edges[row["name"]]
        data = json.loads((d / "dataset.json").read_text())
        for pair in data["pairs"]:
            got = _decoded_all(model, [model.codec.bos, *pair["clean"]])
            for n, program in programs.items():
                want = rasp.evaluate(program, pair["clean"])
                assert got[n] == pytest.approx(want, abs=1e-4) if None not in want else got[n] == want


@pytest.mark.parametrize("damage", ["truncate weights", "delete circuit", "empty dataset", "edit card"])
def test_resume_rebuilds_damaged_models(suites: tuple[Path, Path], tmp_path: Path, damage: str) -> None:
    """A model directory is complete only when every file matches the manifest its build wrote."""
    a, _ = suites
    c = tmp_path / "c"
    shutil.copytree(a, c)
    victim = sorted((c / "models").iterdir())[1]
    if damage == "truncate weights":
        w = victim / "weights.safetensors"
        w.write_bytes(w.read_bytes()[:100])
    elif damage == "delete circuit":
        next(victim.glob("*circuit*.json")).unlink()
    elif damage == "empty dataset":
        (victim / "dataset.json").write_text("")
    else:
        card = victim / "card.json"
        card.write_text(card.read_text().replace('"origin"', '"orig"'))
    p = cli("suite", "--n", str(N), "--seed", "3", "--out", str(c), "--quiet")
    assert p.returncode == 0, p.stderr
    assert f"built 1, skipped {N - 1}" in p.stdout
    assert tree_hashes(c) == tree_hashes(a)
