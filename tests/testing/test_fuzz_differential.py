"""Differential fuzzing: the compiled model (numpy, torch, C++ engine) must decode exactly what the
evaluator computes, on random well-typed programs and random valid inputs; saved regressions replay.

CI runs a fixed-seed slice; long campaigns: `rasp-compiler fuzz compiler --programs 1000`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

import verify
from rasp_compiler import rasp
from rasp_compiler.rasp.source import to_source
from rasp_compiler.testing import fuzz
from rasp_compiler.testing import generate as gen

REGRESSIONS = Path(__file__).resolve().parents[1] / "regressions"
SLICE_PROGRAMS = 400
SLICE_SEED = 7


@pytest.fixture(scope="module")
def campaign() -> fuzz.CampaignSummary:
    return fuzz.run_compiler_campaign(SLICE_PROGRAMS, SLICE_SEED, inputs_per_program=8, shrink=False,
                                      save_dir=None, progress=False)


def test_slice_all_backends_agree_with_evaluator(campaign: fuzz.CampaignSummary) -> None:
    print("\n" + campaign.report())
    assert campaign.n_programs == SLICE_PROGRAMS
    assert set(campaign.backends) >= {"numpy", "torch"}
    assert not campaign.mismatches, campaign.report()
    assert not campaign.crashes, campaign.report()


def test_slice_every_program_compiles(campaign: fuzz.CampaignSummary) -> None:
    assert not campaign.compile_errors, campaign.report()
    assert campaign.n_compiled == SLICE_PROGRAMS
    assert campaign.n_pairs >= SLICE_PROGRAMS * 4


def test_thousand_programs_compile() -> None:
    failures = []
    for i, gp in enumerate(gen.sample_programs(1000, 1)):
        try:
            fuzz._compile(gp.program, gp.vocab, gp.max_seq_len)
        except Exception as e:  # noqa: BLE001 - collected and reported together
            failures.append(f"#{i} {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    assert not failures, f"{len(failures)} of 1000 failed to compile:\n" + "\n".join(failures[:10])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gen.programs_with_inputs(n_inputs=4))
def test_hypothesis_programs_numpy_forward(case: tuple[gen.GeneratedProgram, list]) -> None:
    gp, inputs = case
    failures, _ = fuzz.check_program(gp.program, gp.vocab, gp.max_seq_len, inputs, ("numpy",))
    assert not failures, failures[0].describe()


# --------------------------------------------------------------------------------------------- regressions


REGRESSION_FILES = fuzz.regression_files(REGRESSIONS)


def test_regression_files_exist() -> None:
    assert REGRESSION_FILES, f"no regression files in {REGRESSIONS}"


@pytest.mark.parametrize("path", REGRESSION_FILES, ids=lambda p: p.stem)
def test_regression_replays(path: Path) -> None:
    failures = fuzz.replay_regression(path)
    assert not failures, "\n".join(f.describe() for f in failures[:3])


# --------------------------------------------------------------------------------------------- harness


def test_shrinks_a_planted_compile_error_and_round_trips_it(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    """A compiler that rejects SelectorNot: the campaign finds it and shrinks to a few ops."""
    real = fuzz._compile

    def picky(program, vocab, max_seq_len, causal=False):  # noqa: ANN001, ANN202
        if any(isinstance(e, rasp.SelectorNot) for e in rasp.topological_order(program)):
            raise RuntimeError("planted: SelectorNot unsupported")
        return real(program, vocab, max_seq_len, causal)

    monkeypatch.setattr(fuzz, "_compile", picky)
    s = fuzz.run_compiler_campaign(60, 3, backends=("numpy",), save_dir=tmp_path, progress=False)
    planted = [f for f in s.failures if "planted" in f.message]
    assert planted, s.report()
    small = planted[0]
    kinds = gen.op_kinds(small.program)
    assert kinds["selector_not"] >= 1
    assert sum(1 for e in rasp.topological_order(small.program) if e.children) <= 4, to_source(small.program)
    assert small.max_seq_len == 1 and len(small.vocab) == 1
    saved = [p for p in s.saved if "compile_error" in p]
    data = fuzz.load_regression(saved[0])
    assert to_source(data["program"]) == data["source"]
    assert any(isinstance(e, rasp.SelectorNot) for e in rasp.topological_order(data["program"]))
    monkeypatch.setattr(fuzz, "_compile", real)


def test_shrinks_a_planted_mismatch_to_a_short_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend that corrupts the last position when the input holds the vocab's largest token."""
    real_run = fuzz._Runner.run

    def corrupt(self, inputs):  # noqa: ANN001, ANN202
        out = real_run(self, inputs)
        vocab_max = max(self.model.codec.vocab)
        for xs, o in zip(inputs, out, strict=True):
            if vocab_max in xs and o:
                o[-1] = "corrupted"
        return out

    monkeypatch.setattr(fuzz._Runner, "run", corrupt)
    s = fuzz.run_compiler_campaign(20, 4, backends=("numpy",), progress=False)
    assert s.mismatches["numpy"] > 0
    small = [f for f in s.failures if f.kind == "mismatch"][0]
    assert small.input is not None and len(small.input) == 1, small.describe()
    assert small.got == ["corrupted"]
    # one computed op (a Map), or a SelectorWidth and its Select: nothing smaller fails
    assert sum(1 for e in rasp.topological_order(small.program) if e.children) <= 2, small.describe()


def test_cli_runs_a_small_campaign(capsys: pytest.CaptureFixture) -> None:
    from rasp_compiler.app.cli import main

    code = main(["fuzz", "compiler", "--programs", "4", "--seed", "5", "--no-save", "--quiet",
                 "--backends", "numpy"])
    out = capsys.readouterr().out
    assert "compiler fuzz campaign: seed 5, 4 programs" in out
    assert code == 0, out
    with pytest.raises(SystemExit):
        main(["fuzz", "compiler", "--backends"])
    assert main(["fuzz", "compiler", "--limit", "no_such=1"]) == 1
    assert "--limit 'no_such=1': expected NAME=VALUE" in capsys.readouterr().err
    assert main(["fuzz", "compiler", "--programs", "3", "--no-save", "--quiet", "--backends", "numpy",
                 "--limit", "constant_sop=true", "--limit", "max_ops=2"]) == 0
    with pytest.raises(ValueError, match="unknown backend"):
        fuzz.run_compiler_campaign(1, 0, backends=("tpu",), progress=False)


def test_bad_regression_file_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        fuzz.load_regression(bad)
    bad.write_text(json.dumps({"version": 1, "source": "x = 1", "vocab": [1], "max_seq_len": 2}))
    with pytest.raises(ValueError, match="missing field 'inputs'"):
        fuzz.load_regression(bad)


# --------------------------------------------------------------------------------------------- tool fuzzing


def _truth_from_weights(model, data):  # noqa: ANN001, ANN202
    """A correct 'discovery method': reads the circuit off the weights (independent of the annotation)."""
    import verify

    return verify.ground_truth(model, method="weights")


def _never_reports_qk(model, data):  # noqa: ANN001, ANN202
    """A deliberately broken tool: right edges, except that it never reports query/key inputs."""
    return [e for e in _truth_from_weights(model, data).edges if e.input not in ("q", "k")]


def test_fuzz_tool_passes_a_correct_tool() -> None:
    s = verify.fuzz_tool(_truth_from_weights, programs=60, seed=2)
    print("\n" + s.report())
    # programs whose output never varies are degenerate: skipped (counted), never scored, under either truth
    assert len(s.cases) + s.skipped["constant output"] + s.skipped["empty truth"] == 60
    assert len(s.cases) >= 20 and all(not c.constant_output for c in s.cases)
    assert not s.flagged and s.worst.f1 == 1.0


def test_fuzz_tool_flags_and_shrinks_a_broken_tool() -> None:
    s = verify.fuzz_tool(_never_reports_qk, programs=60, seed=2)
    print("\n" + s.report())
    assert s.flagged and s.worst.f1 < 0.9
    assert s.per_kind()["aggregate_categorical"] < 1.0
    small = s.shrunk[0]
    assert small.f1 < s.pass_bar
    assert sum(1 for e in rasp.topological_order(small.program) if e.children) <= 3, to_source(small.program)
    assert any(isinstance(e, rasp.Select) for e in rasp.topological_order(small.program))
    # shrinking keeps a program whose output varies (it used to end at a 1-token vocabulary of length 1,
    # where no causal method can find anything)
    assert not small.constant_output and len(small.vocab) >= 2


# --------------------------------------------------------------------------------------------- work items


def _outcome(s: fuzz.CampaignSummary) -> dict:
    """Everything a campaign reports except its wall time."""
    return {
        "counts": (s.n_programs, s.n_compiled, s.n_pairs, s.n_checks, s.n_failing_programs),
        "failures": (dict(s.mismatches), dict(s.compile_errors), dict(s.crashes)),
        "coverage": dict(s.coverage),
        "shrunk": [f.describe() for f in s.failures],
        "report": s.report().split("\n", 1)[1],
    }


def test_program_i_depends_on_seed_and_index_only() -> None:
    """A shorter campaign checks the same first programs; program i is the same whatever ran before it."""
    seen: dict[int, str] = {}
    fuzz.run_compiler_campaign(9, 11, backends=("numpy",), progress=False, shrink=False,
                               on_program=lambda i, gp: seen.setdefault(i, to_source(gp.program)))
    short: dict[int, str] = {}
    fuzz.run_compiler_campaign(4, 11, backends=("numpy",), progress=False, shrink=False,
                               on_program=lambda i, gp: short.setdefault(i, to_source(gp.program)))
    assert short == {i: seen[i] for i in range(4)}
    gen.sample_programs(5, 99)  # build unrelated programs in between: labels must not shift
    assert to_source(fuzz.program_for(11, 7).program) == seen[7]
    assert len(set(seen.values())) > 5  # different indices give different programs
    alone = fuzz.run_compiler_item(fuzz.CompilerItem(7, 11, 10, ("numpy",)))
    assert alone["index"] == 7 and alone["coverage"] == dict(gen.op_kinds(fuzz.program_for(11, 7).program))


def test_same_results_for_any_worker_count_and_in_another_process() -> None:
    """One worker here, two spawned workers, and a fresh interpreter (the CLI) give the same campaign."""
    import subprocess
    import sys

    kw = {"inputs_per_program": 6, "backends": ("numpy",), "progress": False, "shrink": False}
    one = fuzz.run_compiler_campaign(10, 21, workers=1, **kw)
    two = fuzz.run_compiler_campaign(10, 21, workers=2, **kw)
    assert _outcome(one) == _outcome(two)
    p = subprocess.run(
        [sys.executable, "-m", "rasp_compiler", "fuzz", "compiler", "--programs", "10", "--seed", "21",
         "--inputs", "6", "--backends", "numpy", "--no-save", "--no-shrink", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().split("\n", 1)[1] == _outcome(one)["report"]
    assert one.n_pairs >= 10 * 4 and sum(one.coverage.values()) > 0


def test_ray_local_instance_gives_the_same_campaigns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiler and tool campaigns as Ray tasks on a local instance equal the local runs."""
    ray = pytest.importorskip(
        "ray", reason="ray is not installed (optional extra: pip install 'rasp-compiler[ray]')"
    )
    import os

    from verify import tool_fuzz as vfuzz

    root = str(Path(__file__).resolve().parents[2])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    kw = {"inputs_per_program": 6, "backends": ("numpy",), "progress": False, "shrink": False}
    local = fuzz.run_compiler_campaign(8, 5, **kw)
    tool = vfuzz.baseline_tool("eap")
    tool_local = vfuzz.fuzz_tool(tool, 4, 1, n_inputs=6, shrink=False)
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    try:
        remote = fuzz.run_compiler_campaign(8, 5, use_ray=True, **kw)
        tool_remote = vfuzz.fuzz_tool(tool, 4, 1, n_inputs=6, shrink=False, use_ray=True)
    finally:
        ray.shutdown()
    assert _outcome(local) == _outcome(remote)
    assert tool_local.to_json() == tool_remote.to_json()
    assert tool_local.cases, tool_local.skipped
