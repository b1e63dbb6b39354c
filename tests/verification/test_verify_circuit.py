"""Ground truth on hand-made toys: both derivations against circuits counted by hand."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from support.toys import LABELS, TOY_TRUE_EDGES, TOY_TRUE_NODES, build_toy, edit_annotation, toks

import verify
from verify.circuit import CircuitError, Edge, legal_edges, node_kind


@pytest.fixture(scope="module")
def toy():
    return build_toy()


@pytest.mark.parametrize("method", ["annotation", "weights"])
def test_toy_truth_matches_hand_count(toy, method: str) -> None:
    c = verify.ground_truth(toy, method=method)
    assert {str(e): sorted(labels) for e, labels in c.edges.items()} == {
        k: sorted(v) for k, v in TOY_TRUE_EDGES.items()
    }
    assert c.items("node") == TOY_TRUE_NODES
    assert c.nodes["L0.MLP"] == {"m": (0, 2)}  # the distractor op dm shares the MLP but is not in the circuit
    assert c.nodes["L1.MLP"] == {"out": (0, 2)}
    assert c.nodes["embed"] == {"tokens": None, "one": None}
    assert c.output == "out"


def test_both_derivations_agree_and_differ_when_weights_do(toy) -> None:
    a = verify.ground_truth(toy)
    w = verify.ground_truth(toy, method="weights")
    assert a == w, a.diff(w)
    # An extra nonzero weight (L1.H0 now also reads indices on v) shows up in the weight-derived truth only.
    broken = copy.deepcopy(toy)
    broken.weights["blocks.1.attn.W_V"][0, LABELS.index("indices:1"), 0] = 0.3
    w2 = verify.ground_truth(broken, method="weights")
    assert w2 != a
    assert w2.edges[Edge("pos_embed", "L1.H0", "v")] == {"indices:1"}
    assert "pos_embed->L1.H0<v>" in a.diff(w2)


def test_weights_only_without_annotation_groups_neurons_by_variable() -> None:
    plain = build_toy(annotate=False)
    w = verify.ground_truth(plain, output="out", method="weights")
    assert w == verify.ground_truth(build_toy())
    g = verify.model_graph(plain, output="out", method="weights")
    assert g.parts[("L0.MLP", "dm")].neurons == (2, 4)
    assert g.parts[("L1.MLP", "dm2")].neurons == (2, 3)
    with pytest.raises(CircuitError, match="no annotation"):
        verify.ground_truth(plain)


def test_ops_mapping_and_selectors(toy) -> None:
    c = verify.ground_truth(toy)
    assert c.ops() == {
        "agg": ["L0.H0"],
        "agg2": ["L1.H0"],
        "indices": ["pos_embed"],
        "m": ["L0.MLP[0:2]"],
        "one": ["embed"],
        "out": ["L1.MLP[0:2]"],
        "sel_agg": ["L0.H0"],
        "sel_agg2": ["L1.H0"],
        "tokens": ["embed"],
    }
    assert "dagg" not in c.all_ops() and "dm" not in c.all_ops()


def test_granularities_and_universe(toy) -> None:
    c = verify.ground_truth(toy)
    assert len(c.items("edge")) == 10
    assert "L1.H0->L1.MLP<in>:agg2" in c.items("subspace")
    assert len(c.items("subspace")) == sum(len(v) for v in TOY_TRUE_EDGES.values())
    # Hand count for 2 layers x 2 heads: L0 heads 2*3*2, L0 MLP 4, L1 heads 2*3*5, L1 MLP 7, output 8.
    assert len(c.universe("edge")) == 12 + 4 + 30 + 7 + 8 == len(legal_edges(2, 2))
    assert c.universe("node") == {
        "embed",
        "pos_embed",
        "L0.H0",
        "L0.H1",
        "L0.MLP",
        "L1.H0",
        "L1.H1",
        "L1.MLP",
    }
    assert c.items("subspace") <= c.universe("subspace")


def test_networkx_graph_and_describe(toy) -> None:
    c = verify.ground_truth(toy)
    g = c.graph
    assert g.number_of_edges() == 10 and g.number_of_nodes() == 7
    assert g.edges["L0.MLP", "L1.H0", "q"]["labels"] == frozenset(toks("m"))
    assert g.nodes["L1.MLP"]["kind"] == "mlp" and g.nodes["L1.MLP"]["layer"] == 1
    text = c.describe()
    for name in TOY_TRUE_NODES | {"output"}:
        assert name in text
    assert "q: m{x,y}; k: indices{0,1,2}; v: one" in text


def test_edge_names_and_errors() -> None:
    e = Edge.parse("L0.H1->L2.MLP<in>")
    assert e == Edge("L0.H1", "L2.MLP", "in") and str(e) == "L0.H1->L2.MLP<in>"
    with pytest.raises(CircuitError, match="not an edge name"):
        Edge.parse("L0.H1-L2.MLP")
    with pytest.raises(CircuitError, match="input 'x'"):
        Edge("embed", "L0.H0", "x")
    with pytest.raises(CircuitError, match="not a component name"):
        node_kind("L0.ATTN")
    c = verify.ground_truth(build_toy())
    with pytest.raises(CircuitError, match="cannot exist"):
        c.restricted(["L1.H0->L0.MLP<in>"])
    with pytest.raises(CircuitError, match="L7.H0"):
        c.restricted(["L7.H0->output<in>"])


def test_bad_annotation_and_output_are_named() -> None:
    toy = build_toy()
    with pytest.raises(CircuitError, match="'nope' is not an output"):
        verify.ground_truth(toy, output="nope")
    bad = edit_annotation(toy, lambda a: a["blocks"][3].update(head=5))
    with pytest.raises(CircuitError, match="op 'agg'.*head 5"):
        verify.ground_truth(bad)
    bad = edit_annotation(toy, lambda a: a["blocks"][3].update(writes=["agg:zzz"]))
    with pytest.raises(CircuitError, match="agg:zzz"):
        verify.ground_truth(bad)
    with pytest.raises(CircuitError, match="unknown method"):
        verify.ground_truth(toy, method="vibes")


def test_multi_output_annotation_selects_each_output() -> None:
    # Two outputs in one model: W_U reads both `out` and `dm2`; each output's circuit is its ancestors.
    toy = edit_annotation(build_toy(), lambda a: a.update(outputs=["out", "dm2"]))
    toy.weights["W_U"] = np.concatenate(
        [toy.weights["W_U"], np.eye(len(LABELS), dtype=np.float32)[:, [16]]], 1
    )
    with pytest.raises(CircuitError, match="several outputs"):
        verify.ground_truth(toy)
    for method in ("annotation", "weights"):
        c = verify.ground_truth(toy, output="dm2", method=method)
        assert c.items("edge") == {
            "embed->L0.H1<q>",
            "embed->L0.H1<k>",
            "pos_embed->L0.H1<v>",
            "L0.H1->L1.MLP<in>",
            "L1.MLP->output<in>",
        }
        assert c.nodes["L1.MLP"] == {"dm2": (2, 3)}
        assert verify.ground_truth(toy, output="out", method=method) == verify.ground_truth(build_toy())


def test_equality_is_structural(toy) -> None:
    a = verify.ground_truth(toy)
    b = verify.ground_truth(build_toy(seed=7))  # other random values, same nonzero pattern
    assert a == b
    smaller = a.restricted([e for e in a.edges if str(e) != "L0.MLP->L1.MLP<in>"])
    assert smaller != a
    assert "L0.MLP->L1.MLP<in>" in a.diff(smaller)


def _orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(n, n)))
    return q * np.sign(np.diag(r))


def test_overlap_test_is_basis_free() -> None:
    from verify.truth import overlaps

    toy = build_toy()
    w = toy.weights
    writers = [
        w["W_E"],
        w["W_pos"],
        w["blocks.0.attn.W_O"][0],
        w["blocks.0.attn.W_O"][1],
        w["blocks.0.mlp.W_out"][:2],
        w["blocks.0.mlp.W_out"][2:],
    ]
    readers = [
        w["blocks.1.attn.W_Q"][0],
        w["blocks.1.attn.W_K"][0],
        w["blocks.1.attn.W_V"][0],
        w["blocks.1.mlp.W_in"][:, :2],
        w["blocks.1.mlp.W_in"][:, 2:3],
        w["W_U"],
    ]
    expected = [
        [bool(np.any((np.abs(a).sum(0) > 0) & (np.abs(b).sum(1) > 0))) for b in readers] for a in writers
    ]
    assert any(map(any, expected)) and not all(map(all, expected))
    rng = np.random.default_rng(0)
    for _ in range(3):
        rot = _orthogonal(len(LABELS), rng)  # mixes every direction with every other
        got = [[overlaps(a @ rot, rot.T @ b) for b in readers] for a in writers]
        assert got == expected


def test_weight_truth_survives_rotation_within_each_variable() -> None:
    # Rotating the directions of each variable among themselves keeps every label's role; the
    # weight-derived truth must not change (its overlap test works in the rotated coordinates).
    toy = build_toy()
    rng = np.random.default_rng(1)
    groups: dict[str, list[int]] = {}
    for i, lab in enumerate(LABELS):
        groups.setdefault(lab.split(":", 1)[0], []).append(i)
    rot = np.eye(len(LABELS))
    for idx in groups.values():
        rot[np.ix_(idx, idx)] = _orthogonal(len(idx), rng)
    rotated = copy.deepcopy(toy)
    for name, mat in toy.weights.items():
        if name in ("W_E", "W_pos") or name.endswith(("W_O", "W_out")):
            rotated.weights[name] = (mat @ rot).astype(np.float32)
        elif name.endswith(("W_Q", "W_K", "W_V", "W_in")) or name == "W_U":
            rotated.weights[name] = (rot.T @ mat).astype(np.float32)
    assert not np.allclose(rotated.weights["W_pos"], toy.weights["W_pos"])
    assert verify.ground_truth(rotated, method="weights") == verify.ground_truth(toy)


def _svg_texts(svg: str) -> set[str]:
    import re

    texts = set(re.findall(r"<text[^>]*>([^<]*)</text>", svg))
    return {t.strip() for t in texts | set(re.findall(r"<!-- ([^>]*?) -->", svg))}


def test_every_library_program_draws_with_every_component_named(tmp_path) -> None:
    import torch

    from rasp_compiler.compiler.compiling import compile_rasp_to_model
    from rasp_compiler.rasp.lib import LIBRARY

    torch.set_num_threads(1)
    assert len(LIBRARY) > 5
    for name, e in LIBRARY.items():
        model = compile_rasp_to_model(e.builder(), e.vocab, e.max_seq_len)
        truth = verify.ground_truth(model)
        path = verify.draw_circuit(truth, tmp_path / f"{name}.svg")
        svg = path.read_text()
        texts = _svg_texts(svg)
        for node in truth.node_names(include_output=True):
            assert node in texts, f"{name}: component {node} missing from the diagram"
        for op in truth.ops():
            assert any(op in t for t in texts), f"{name}: op {op} missing from the diagram"
        for e_ in truth.edges:  # each edge's input kind shows in a label next to its reader
            assert any(t.startswith(e_.input) or f",{e_.input}" in t for t in texts), f"{name}: {e_}"
        if name == "shuffle_dyck2":  # deterministic: the same circuit gives the same bytes
            assert verify.draw_circuit(truth, tmp_path / "again.svg").read_bytes() == path.read_bytes()


def test_long_op_names_wrap_inside_boxes_and_stay_whole_up_to_the_limit() -> None:
    from verify.draw import _LONG, _wrap

    items = ["a" * 10, "b" * 10, "c" * 30, "d_" * 40]
    lines = _wrap(items, 24)
    assert lines[:2] == ["a" * 10 + ", " + "b" * 10, "c" * 30]  # joined while short; 30 < _LONG kept whole
    assert "".join(lines[2:]) == "d_" * 40 and len(lines) > 3  # split, nothing dropped
    assert all(len(line) <= _LONG for line in lines[2:])
