"""`rasp-compiler suite`: reproducible to the byte, independent of worker count, resumable, and every
model's files agree with the evaluator (the independent oracle) and load back."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
N = 6


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    return subprocess.run(
        [sys.executable, "-m", "rasp_compiler", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


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
    assert len(ha) == 2 + 10 * N  # suite.json, index.json, ten files per model
    assert ha == hb


def test_index_and_model_files(suites: tuple[Path, Path]) -> None:
    from rasp_compiler import rasp
    from rasp_compiler.io import load
    from rasp_compiler.source import from_source

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


def test_ray_missing_gives_clear_error(tmp_path: Path) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        p = cli("suite", "--n", "2", "--out", str(tmp_path / "r"), "--ray")
        assert p.returncode != 0 and "Traceback" not in p.stderr
        assert "ray" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    else:
        pytest.skip("ray is installed: the missing-ray error cannot be shown")


def test_ray_local_instance_gives_same_files(suites: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip(
        "ray", reason="ray is not installed (optional extra: pip install 'rasp-compiler[ray]')"
    )
    a, _ = suites
    r = tmp_path / "r"
    p = cli("suite", "--n", str(N), "--seed", "3", "--out", str(r), "--ray", "--quiet", timeout=600)
    assert p.returncode == 0, p.stderr
    assert tree_hashes(r) == tree_hashes(a)
