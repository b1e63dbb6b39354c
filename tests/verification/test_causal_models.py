"""The verification stack on causal (decoder-only) models: what a causal model computes at position i
depends on tokens 0..i only, both truths and their derivations agree, the program side of the
ablation-aware truth (evaluated causally) predicts every engine sweep, and the baselines, minimal
circuits, interchange interventions, suites and the command line work on them."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from support.library_models import CAUSAL_NAMES, compiled, program_and_model

import verify
from rasp_compiler import rasp
from rasp_compiler.app import cli, suite
from rasp_compiler.engine import Engine
from rasp_compiler.rasp.lib import LIBRARY
from verify import causal, discovery


@pytest.mark.parametrize("name", CAUSAL_NAMES)
def test_output_at_a_position_ignores_later_tokens(name: str) -> None:
    """Replacing every token after position i leaves the outputs at 0..i unchanged (logits, bit for bit:
    the masked keys get no weight at all)."""
    model = compiled(name, causal=True)
    e = LIBRARY[name]
    vocab = sorted(e.vocab, key=repr)
    rng = random.Random(name)
    engine = Engine(model, threads=1)
    T = min(e.max_seq_len, len(vocab)) if e.distinct_tokens else e.max_seq_len
    for _ in range(10):
        x = rng.sample(vocab, T) if e.distinct_tokens else [rng.choice(vocab) for _ in range(T)]
        i = rng.randrange(T)
        rest = [v for v in vocab if v not in x[: i + 1]] if e.distinct_tokens else vocab
        y = x[: i + 1] + (rng.sample(rest, T - i - 1) if e.distinct_tokens else
                          [rng.choice(rest) for _ in range(T - i - 1)])
        ids = np.array([model.encode([model.codec.bos, *x]), model.encode([model.codec.bos, *y])])
        out = engine.run(ids)
        assert np.array_equal(out[0, : i + 2], out[1, : i + 2]), (name, x, y, i)


@pytest.mark.parametrize("name", CAUSAL_NAMES)
def test_both_derivations_of_the_structural_truth_agree(name: str) -> None:
    model = compiled(name, causal=True)
    assert verify.ground_truth(model) == verify.ground_truth(model, method="weights")


@pytest.mark.parametrize("name", ["causal_induction", "frac_prevs", "hist", "reverse", "shuffle_dyck"])
@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_program_side_predicts_every_sweep(name: str, ablation: str) -> None:
    program, model = program_and_model(name, causal=True)
    data = causal.make_dataset(model, program, n=24, seed=1)
    needed = causal.necessary_edges(model, data, ablation)
    assert needed.discrepancies == {}, needed.discrepancies


def test_causal_reverse_needs_only_the_first_token() -> None:
    """By hand: causal reverse answers tokens[0] everywhere (length is i + 1 at i, so the query is 0), so
    under resample ablation only the value path of the copying head and its write to the output matter."""
    program, model = program_and_model("reverse", causal=True)
    data = causal.make_dataset(model, program, n=32, seed=0)
    assert all(out == [x[0]] * len(x) for x, out in zip(data.clean, data.expected, strict=True))
    needed = causal.necessary_edges(model, data, "resample")
    head = next(e.writer for e in needed.circuit.edges if e.reader == "output")
    assert sorted(map(str, needed.circuit.edges)) == sorted([f"{head}->output<in>", f"embed->{head}<v>"])


def test_baselines_minimal_circuits_and_interchange_run_on_causal_models() -> None:
    program, model = program_and_model("causal_induction", causal=True)
    data = causal.make_dataset(model, program, n=24, seed=2)
    truth = verify.ground_truth(model)
    found = discovery.acdc(model, data, ablation="resample")
    result = verify.score(found.scores, truth)
    assert result.precision == 1.0 and result.recall > 0
    minimal = causal.minimal_circuit(model, data, "resample")
    assert set(minimal.circuit.edges) <= set(truth.edges)
    for variable in ("cind_prev_at", "cind_key"):
        alignment = causal.ground_truth_alignments(model, program)[variable]
        iia = causal.interchange_accuracy(model, alignment, data)
        assert iia.iia == 1.0 and iia.n_vacuous < iia.n, (variable, iia)


def test_causal_suite_cards_and_datasets(tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "suite"
    summary = suite.generate_suite(6, 0, out, workers=1, progress=False,
                                   variants=suite.SuiteVariants(causal=True))
    assert summary.ok, summary.report()
    for card_path in sorted(out.glob("models/*/card.json")):
        card = json.loads(card_path.read_text())
        assert card["variants"]["causal"] is True
        model_json = json.loads((card_path.parent / "model.json").read_text())
        assert model_json["config"]["causal"] is True
        if card["origin"] == "library":
            assert card["name"] in CAUSAL_NAMES
            program = LIBRARY[card["name"]].builder()
            dataset = json.loads((card_path.parent / "dataset.json").read_text())
            for pair in dataset["pairs"][:5]:
                assert pair["clean_expected"] == rasp.evaluate_prefixes(program, pair["clean"])


def test_command_line_compiles_causally_or_says_which_op(tmp_path, capsys) -> None:  # noqa: ANN001
    assert cli.main(["compile", "hist", "--causal", "-o", str(tmp_path / "hist")]) == 0
    assert "(causal)" in capsys.readouterr().out
    assert json.loads((tmp_path / "hist" / "model.json").read_text())["config"]["causal"] is True
    assert cli.main(["compile", "sort", "--causal", "-o", str(tmp_path / "sort")]) != 0
    err = capsys.readouterr().err
    assert "target_pos" in err and "appending a token" in err and "Traceback" not in err
