"""Several programs in one model (rasp_compiler/multi.py): outputs, shared ops, per-output circuits.

Oracles: `rasp.evaluate` per program; the circuit of each output is checked against the model's
components and, causally, by running the model with every edge outside it ablated.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import verify
from rasp_compiler import rasp
from rasp_compiler.compiler import multi
from rasp_compiler.model import load, output_view, save
from rasp_compiler.model.outputs import decode_outputs, output_names
from rasp_compiler.transforms import variants

torch.set_num_threads(1)

VOCAB = {"a", "b", "c"}
MAX_LEN = 4


def _programs() -> dict[str, object]:
    length = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE)).named("length")
    opp = rasp.SequenceMap(lambda n, i: n - i - 1, length, rasp.indices).named("opp_index")
    reverse = rasp.Aggregate(rasp.Select(rasp.indices, opp, rasp.Comparison.EQ), rasp.tokens).named("reverse")
    hist = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ)).named("hist")
    is_a = rasp.numerical(rasp.Map(lambda t: 1 if t == "a" else 0, rasp.tokens).named("is_a"))
    frac = rasp.numerical(
        rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ), is_a, default=0)
    ).named("frac_a")
    long = rasp.Map(lambda n: n > 2, length).named("is_long")  # shares `length` with reverse
    return {"reverse": reverse, "hist": hist, "frac_a": frac, "is_long": long}


@pytest.fixture(scope="module")
def compiled() -> tuple[dict, object, list]:
    programs = _programs()
    model = multi.compile_programs(programs, VOCAB, MAX_LEN)
    return programs, model, variants.all_inputs(model)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) < 1e-4
    return a == b


def _check_all_outputs(model: object, programs: dict, inputs: list) -> None:
    for x in inputs:
        got = decode_outputs(model, model.forward_numpy(np.array(model.encode(x))))
        for name, program in programs.items():
            want = rasp.evaluate(program, x[1:])
            assert all(_same(a, b) for a, b in zip(got[name], want)), (name, x, got[name], want)


def test_outputs_equal_the_evaluator(compiled: tuple) -> None:
    programs, model, inputs = compiled
    assert output_names(model) == list(programs)
    _check_all_outputs(model, programs, inputs)


def test_shared_ops_compiled_once(compiled: tuple) -> None:
    _, model, _ = compiled
    blocks = model.annotation_json()["blocks"]
    assert sum(1 for b in blocks if b["op"] == "length" and b["component"] == "attn") == 1
    assert model.config.residual_labels.count("length:1") == 1


def test_each_circuit_is_a_strict_subset(compiled: tuple) -> None:
    programs, model, _ = compiled
    live = {n for n in verify.ground_truth(model, output="reverse").universe("node")}
    union_nodes: set[str] = set()
    circuits = {}
    for name in programs:
        truth = verify.ground_truth(model, output=name)
        weights = verify.ground_truth(model, output=name, method="weights")
        assert {str(e): v for e, v in truth.edges.items()} == {str(e): v for e, v in weights.edges.items()}
        nodes = set(truth.node_names())
        assert nodes <= live
        circuits[name] = nodes
        union_nodes |= nodes
    # every real component serves some output, and no output uses all of them
    real = {f"L{layer}.H{h}" for layer, n in enumerate(model.config.heads_per_layer) for h in range(n)}
    real |= {f"L{layer}.MLP" for layer, w in enumerate(model.config.mlp_width_per_layer) if w}
    assert real <= union_nodes
    for name, nodes in circuits.items():
        assert real - nodes, f"{name}'s circuit holds every component"
    assert circuits["is_long"] & circuits["reverse"]  # the shared `length` head serves both


def test_each_output_survives_ablating_everything_else(compiled: tuple) -> None:
    from verify import causal
    programs, model, _ = compiled
    for name, program in programs.items():
        view = output_view(model, name)
        truth = verify.ground_truth(view)
        assert truth == verify.ground_truth(model, output=name)
        data = causal.make_dataset(view, program, n=24, seed=3)
        for ablation in ("resample", "zero", "mean"):
            res = causal.faithfulness(view, truth, data, ablation, minimality=False)
            assert res.full_accuracy == 1.0 and res.accuracy == 1.0, (name, ablation)
            assert res.n_ablated > 0


def test_view_engine_io_and_rotation(compiled: tuple, tmp_path: object) -> None:
    programs, model, inputs = compiled
    view = output_view(model, "hist")
    got = view.apply_batch(inputs[:60])
    assert [g[1:] for g in got] == [rasp.evaluate(programs["hist"], x[1:]) for x in inputs[:60]]
    save(model, tmp_path / "m")
    back = load(tmp_path / "m")
    assert output_names(back) == list(programs)
    _check_all_outputs(back, programs, inputs[:80])
    rot = variants.rotate(back, seed=9)
    _check_all_outputs(rot, programs, inputs[:80])
    for name in programs:
        rotated = verify.ground_truth(rot, output=name, method="weights")
        plain = verify.ground_truth(model, output=name)
        assert {str(e): v for e, v in rotated.edges.items()} == {str(e): v for e, v in plain.edges.items()}
        assert rotated.items("node") == plain.items("node")
    from rasp_compiler import engine
    ids = np.array([model.encode(x) for x in inputs if len(x) == MAX_LEN + 1][:30])
    np.testing.assert_allclose(np.asarray(engine.Engine(model).run(ids)), model.forward_numpy(ids), atol=1e-4)


def test_bad_arguments() -> None:
    with pytest.raises(multi.MultiOutputError, match="non-empty"):
        multi.compile_programs({}, VOCAB, MAX_LEN)
    model = multi.compile_programs({"hist": _programs()["hist"]}, VOCAB, MAX_LEN)
    with pytest.raises(multi.MultiOutputError, match="nope"):
        output_view(model, "nope")


def test_output_names_differ_from_labels() -> None:
    progs = _programs()
    model = multi.compile_programs({"rev": progs["reverse"], "h": progs["hist"]}, VOCAB, MAX_LEN)
    assert output_names(model) == ["rev", "h"]
    assert verify.ground_truth(model, output="rev") == verify.ground_truth(model, output="reverse")
    view = output_view(model, "h")
    assert view.apply_batch([["BOS", "a", "b", "a"]])[0][1:] == rasp.evaluate(progs["hist"], ["a", "b", "a"])


def test_apply_decodes_each_output_over_its_own_columns() -> None:
    progs = _programs()
    programs = {"rev": progs["reverse"], "h": progs["hist"]}
    model = multi.compile_programs(programs, VOCAB, MAX_LEN)
    inputs = variants.all_inputs(model)
    assert len(inputs) > 100
    batch = model.apply_batch(inputs)
    for x, got_batch in zip(inputs, batch):
        want = {name: ["BOS", *rasp.evaluate(p, x[1:])] for name, p in programs.items()}
        assert model.apply(x).decoded == want, x
        assert got_batch == want, x


def test_apply_batch_on_mixed_outputs(compiled: tuple) -> None:
    programs, model, inputs = compiled
    for x, got in zip(inputs, model.apply_batch(inputs)):
        assert list(got) == list(programs)
        for name, program in programs.items():
            want = rasp.evaluate(program, x[1:])
            assert got[name][0] == "BOS" and len(got[name]) == len(want) + 1, (name, x)
            assert all(_same(a, b) for a, b in zip(got[name][1:], want)), (name, x, got[name], want)
