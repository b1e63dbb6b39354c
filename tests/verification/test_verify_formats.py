"""Circuit forms: each round-trips, every pair converts back identically, names follow each tool."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from hypothesis import given, settings
from support.toys import build_toy

import verify
from verify import formats as F
from verify.circuit import CircuitError, Edge


class FakeTorchIndex:
    """Stands in for ACDC's TorchIndex: hashable via `hashable_tuple`."""

    def __init__(self, items: list) -> None:
        self.hashable_tuple = tuple(items)

    def __hash__(self) -> int:
        return hash(self.hashable_tuple)

    def __eq__(self, other: object) -> bool:
        return getattr(other, "hashable_tuple", None) == self.hashable_tuple


class FakeAcdcEdge:
    def __init__(self, present: bool) -> None:
        self.present = present


def _forms(model):
    """name -> (write, read) for every form; `read` takes what `write` produced."""
    return {
        "json": (F.to_json, lambda d: F.from_json(d, model)),
        "json_text": (lambda c: json.dumps(F.to_json(c)), lambda d: F.from_json(d, model)),
        "tl_hooks": (F.to_tl_hooks, lambda d: F.from_tl_hooks(d, model)),
        "acdc": (F.to_acdc, lambda d: F.from_acdc(d, model)),
        "acdc_resid_pre": (lambda c: F.to_acdc(c, use_pos_embed=False), lambda d: F.from_acdc(d, model)),
        "autocircuit": (F.to_autocircuit, lambda d: F.from_autocircuit(d, model)),
        "autocircuit_scores": (
            F.to_autocircuit_scores,
            lambda d: F.from_autocircuit_scores(d, model, threshold=0.5),
        ),
        "eapig": (F.to_eapig, lambda d: F.from_eapig(d, model)),
        "eapig_json": (lambda c: json.dumps(F.to_eapig_json(c)), lambda d: F.from_eapig_json(d, model)),
        "edges": (lambda c: [str(e) for e in c.edges], lambda d: F.from_edges(model, d)),
    }


@pytest.fixture(scope="module")
def toy():
    return build_toy()


def _circuits(model):
    truth = verify.ground_truth(model)
    edges = sorted(truth.edges)
    yield "truth", truth
    yield "minus_edge", truth.restricted(edges[:3] + edges[4:])
    # a discovered circuit with a false-positive edge the output does not use
    yield "plus_edge", truth.restricted(edges + [Edge("L0.H1", "L1.MLP", "in")])


def test_every_form_round_trips_and_every_pair_agrees(toy) -> None:
    forms = _forms(toy)
    for cname, circuit in _circuits(toy):
        for name, (write, read) in forms.items():
            if name == "tl_hooks" and cname != "truth":
                continue  # node level: only circuits that are all overlapping edges among their nodes
            back = read(write(circuit))
            assert back == circuit, f"{cname} via {name}:\n{circuit.diff(back)}"
        fast = _forms(circuit.model_graph)  # same readers, without re-deriving the model graph each time
        for (n1, (w1, r1)), (n2, (w2, r2)) in itertools.permutations(fast.items(), 2):
            if "tl_hooks" in (n1, n2) and cname != "truth":
                continue
            back = r2(w2(r1(w1(circuit))))
            assert back == circuit, f"{cname} via {n1}->{n2}:\n{circuit.diff(back)}"


def test_json_schema_fields_and_versioning(toy, tmp_path) -> None:
    truth = verify.ground_truth(toy)
    data = F.to_json(truth)
    assert data["format"] == "verify.circuit" and data["version"] == 1 and data["output"] == "out"
    assert data["model"] == {"n_layers": 2, "n_heads": 2, "d_model": 17}
    assert {"writer": "L1.H0", "reader": "L1.MLP", "input": "in", "labels": ["agg2"]} in data["edges"]
    assert {"name": "L0.MLP", "ops": [{"op": "m", "neurons": [0, 2]}], "extra_ops": []} in data["nodes"]
    F.save_json(truth, tmp_path / "c.json")
    assert F.load_json(tmp_path / "c.json") == truth
    assert F.from_json(data) == truth  # no model needed
    with pytest.raises(CircuitError, match="version 2"):
        F.from_json({**data, "version": 2})
    with pytest.raises(CircuitError, match="not a circuit JSON"):
        F.from_json({"edges": []})


def test_tool_names_for_the_toy(toy) -> None:
    truth = verify.ground_truth(toy)
    assert F.to_tl_hooks(truth) == {
        ("hook_embed", None),
        ("hook_pos_embed", None),
        ("blocks.0.attn.hook_result", 0),
        ("blocks.0.hook_mlp_out", None),
        ("blocks.1.attn.hook_result", 0),
        ("blocks.1.hook_mlp_out", None),
    }
    assert F.to_autocircuit(truth) == {
        "Resid Start->A0.0.Q",
        "Resid Start->A0.0.K",
        "Resid Start->A0.0.V",
        "A0.0->MLP 0",
        "MLP 0->A1.0.Q",
        "Resid Start->A1.0.K",
        "Resid Start->A1.0.V",
        "A1.0->MLP 1",
        "MLP 0->MLP 1",
        "MLP 1->Resid End",
    }
    assert F.to_eapig(truth) == {
        "input->a0.h0<q>",
        "input->a0.h0<k>",
        "input->a0.h0<v>",
        "a0.h0->m0",
        "m0->a1.h0<q>",
        "input->a1.h0<k>",
        "input->a1.h0<v>",
        "a1.h0->m1",
        "m0->m1",
        "m1->logits",
    }
    acdc = F.to_acdc(truth)
    assert acdc[("blocks.1.hook_q_input", (None, None, 0), "blocks.0.hook_mlp_out", (None,))] is True
    assert acdc[("blocks.1.hook_resid_post", (None,), "blocks.1.hook_mlp_out", (None,))] is True
    assert acdc[("blocks.1.hook_v_input", (None, None, 0), "hook_embed", (None,))] is True
    assert acdc[("blocks.1.hook_v_input", (None, None, 0), "hook_pos_embed", (None,))] is False
    assert acdc[("blocks.1.hook_mlp_in", (None,), "blocks.0.attn.hook_result", (None, None, 1))] is False
    assert (
        acdc[("blocks.0.attn.hook_result", (None, None, 0), "blocks.0.attn.hook_q", (None, None, 0))] is True
    )
    # ACDC's full graph with separate embeddings: 61 residual edges + 2*2*3*2 head-internal + 2 MLP-internal
    assert len(acdc) == 61 + 24 + 2


def test_acdc_accepts_torch_index_and_edge_objects(toy) -> None:
    truth = verify.ground_truth(toy)
    native = {
        (c, FakeTorchIndex(list(ci)), p, FakeTorchIndex(list(pi))): FakeAcdcEdge(v)
        for (c, ci, p, pi), v in F.to_acdc(truth).items()
    }
    assert F.from_acdc(native, toy) == truth
    # older ACDC named the MLP input hook_resid_mid
    old = {
        (c.replace("hook_mlp_in", "hook_resid_mid"), ci, p, pi): v
        for (c, ci, p, pi), v in F.to_acdc(truth).items()
    }
    assert F.from_acdc(old, toy) == truth


def test_autocircuit_prune_scores_layout(toy) -> None:
    truth = verify.ground_truth(toy)
    ps = F.to_autocircuit_scores(truth)
    # sources: Resid Start=0, A0.0=1, A0.1=2, MLP 0=3, A1.0=4, A1.1=5, MLP 1=6
    assert ps["blocks.1.hook_q_input"].shape == (2, 4)
    assert ps["blocks.1.hook_mlp_in"].shape == (6,)
    assert ps["blocks.1.hook_resid_post"].shape == (7,)
    assert ps["blocks.1.hook_q_input"][0].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert ps["blocks.1.hook_mlp_in"].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert ps["blocks.1.hook_resid_post"].tolist() == [0.0] * 6 + [1.0]
    # scores -> ours -> scores is the identity (Resid Start's score reaches both embeddings and comes back)
    gen = torch.Generator().manual_seed(0)
    rand = {k: torch.rand(v.shape, generator=gen) for k, v in ps.items()}
    ours = F.from_autocircuit_scores(rand, toy)
    assert (
        ours[Edge("embed", "L1.H0", "k")]
        == ours[Edge("pos_embed", "L1.H0", "k")]
        == pytest.approx(float(rand["blocks.1.hook_k_input"][0, 0]))
    )
    back = F.to_autocircuit_scores(ours, toy)
    assert set(back) == set(rand) and all(torch.equal(back[k], rand[k]) for k in rand)
    with pytest.raises(CircuitError, match="shape"):
        F.from_autocircuit_scores({**rand, "blocks.1.hook_mlp_in": torch.zeros(5)}, toy)
    with pytest.raises(CircuitError, match="blocks.4.hook_mlp_in"):
        F.from_autocircuit_scores({**rand, "blocks.4.hook_mlp_in": torch.zeros(5)}, toy)


def test_eapig_json_layout_and_scores(toy) -> None:
    truth = verify.ground_truth(toy)
    data = F.to_eapig_json(truth)
    assert data["cfg"] == {"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 17}
    assert data["edges"]["m0->a1.h0<q>"] == {"score": 1.0, "in_graph": True}
    assert data["edges"]["a0.h1->m1"] == {"score": 0.0, "in_graph": False}
    assert data["nodes"]["a0.h1"] == {"in_graph": False} and data["nodes"]["logits"] == {"in_graph": True}
    # EAP-IG's graph merges the embeddings: 1 + L*(H+1) sources; edges = 2*3*1 + 3 + 2*3*4 + 6 + 7
    assert len(data["edges"]) == 6 + 3 + 24 + 6 + 7
    scores = F.eapig_json_scores(data, toy)
    assert scores[Edge("embed", "L0.H0", "q")] == scores[Edge("pos_embed", "L0.H0", "q")] == 1.0
    with pytest.raises(CircuitError, match="n_heads = 3"):
        F.from_eapig_json({**data, "cfg": {**data["cfg"], "n_heads": 3}}, toy)


def test_merged_embedding_edges_resolve_to_what_the_reader_reads(toy) -> None:
    # A1.0 reads only `one` (token embedding) on v and only indices on k.
    c = F.from_autocircuit(
        {"Resid Start->A1.0.V", "Resid Start->A1.0.K", "A1.0->MLP 1", "MLP 1->Resid End"}, toy
    )
    assert set(c.edges) == {
        Edge("embed", "L1.H0", "v"),
        Edge("pos_embed", "L1.H0", "k"),
        Edge("L1.H0", "L1.MLP", "in"),
        Edge("L1.MLP", "output", "in"),
    }
    # an edge the output does not use still appears (a false positive), via whichever embedding overlaps
    c = F.from_eapig({"input->a0.h1<v>", "m1->logits"}, toy)
    assert Edge("pos_embed", "L0.H1", "v") in c.edges and Edge("embed", "L0.H1", "v") not in c.edges
    # nothing overlaps a padded head: both embeddings, no labels
    c = F.from_autocircuit({"Resid Start->A1.1.Q"}, toy)
    assert c.edges == {Edge("embed", "L1.H1", "q"): frozenset(), Edge("pos_embed", "L1.H1", "q"): frozenset()}


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: F.from_autocircuit({"A5.0->Resid End"}, m), "L5.H0"),
        (lambda m: F.from_autocircuit({"A0.7->MLP 1"}, m), "L0.H7"),
        (lambda m: F.from_autocircuit({"MLP 1->A0.0.Q"}, m), "cannot exist"),
        (lambda m: F.from_autocircuit({"Attn 3->Resid End"}, m), "'Attn 3' is not an auto-circuit source"),
        (lambda m: F.from_eapig({"a0.h9->logits"}, m), "L0.H9"),
        (lambda m: F.from_eapig({"a0.h0->a1.h0"}, m), "need <q>/<k>/<v>"),
        (lambda m: F.from_eapig({"x1->logits"}, m), "'x1' is not an EAP-IG node"),
        (lambda m: F.from_tl_hooks({("blocks.3.attn.hook_result", 0)}, m), "L3.H0"),
        (lambda m: F.from_tl_hooks({"blocks.0.attn.hook_result"}, m), "needs a head index"),
        (lambda m: F.from_tl_hooks({"blocks.0.hook_resid_mid"}, m), "'blocks.0.hook_resid_mid' is not"),
        (
            lambda m: F.from_acdc({("blocks.9.hook_mlp_in", (None,), "hook_embed", (None,)): True}, m),
            "L9.MLP",
        ),
        (
            lambda m: F.from_acdc(
                {("blocks.1.hook_q_input", (None, None, 0), "blocks.1.foo", (None,)): True}, m
            ),
            "'blocks.1.foo'",
        ),
        (lambda m: F.from_edges(m, ["L0.MLP->L0.H0<q>"]), "cannot exist"),
    ],
)
def test_names_the_model_lacks_are_reported(toy, call, match: str) -> None:
    with pytest.raises(CircuitError, match=match):
        call(toy)


def test_tl_hook_strings_with_index_suffix(toy) -> None:
    truth = verify.ground_truth(toy)
    hooks = [
        "hook_embed",
        "hook_pos_embed",
        "blocks.0.attn.hook_result[:, :, 0]",
        "blocks.0.hook_mlp_out",
        "blocks.1.attn.hook_result[0]",
        "blocks.1.hook_mlp_out",
        "blocks.1.hook_resid_post",
    ]
    assert F.from_tl_hooks(hooks, toy) == truth


def test_single_hook_helpers() -> None:
    for node, hook in [
        ("embed", ("hook_embed", None)),
        ("pos_embed", ("hook_pos_embed", None)),
        ("L3.H2", ("blocks.3.attn.hook_result", 2)),
        ("L1.MLP", ("blocks.1.hook_mlp_out", None)),
        ("output", ("blocks.4.hook_resid_post", None)),
    ]:
        assert F.tl_hook(node, n_layers=5) == hook
        assert F.node_of_tl_hook(hook[0], hook[1], n_layers=5) == node
    assert F.node_of_tl_hook("blocks.3.attn.hook_result", (None, None, 2)) == "L3.H2"
    with pytest.raises(CircuitError, match="needs n_layers"):
        F.tl_hook("output")


def test_circuit_json_round_trip_with_model(toy) -> None:
    truth = verify.ground_truth(toy)
    assert F.from_json(F.to_json(truth), toy) == truth


def _random_edge_sets():
    from hypothesis import strategies as st

    from verify.circuit import legal_edges

    return st.sets(st.sampled_from(legal_edges(2, 2)), max_size=20)


@settings(max_examples=40, deadline=None)
@given(edges=_random_edge_sets())
def test_random_circuits_round_trip(edges) -> None:
    toy = _TOY
    g = _GRAPH
    c = F.from_edges(g, edges)
    assert set(c.edges) == set(edges)  # every named edge is kept, with the labels it carries (maybe none)
    # lossless forms give the circuit back exactly
    for write, read in [(F.to_json, lambda d: F.from_json(d, g)), (F.to_acdc, lambda d: F.from_acdc(d, g))]:
        assert read(write(c)) == c
    # forms that merge the two embeddings lose which one an edge came from, once: then they are stable
    for write, read in [
        (F.to_autocircuit, lambda d: F.from_autocircuit(d, g)),
        (F.to_eapig, lambda d: F.from_eapig(d, g)),
        (lambda x: F.to_acdc(x, use_pos_embed=False), lambda d: F.from_acdc(d, g)),
    ]:
        once = read(write(c))
        assert write(once) == write(c)
        assert read(write(once)) == once
        assert {e for e in c.edges if e.writer not in ("embed", "pos_embed")} == {
            e for e in once.edges if e.writer not in ("embed", "pos_embed")
        }
    # scores agree with plain set arithmetic
    truth = verify.ground_truth(toy)
    r = verify.score(c, truth)
    found, true = {str(e) for e in edges}, truth.items("edge")
    assert r.recall == pytest.approx(len(found & true) / len(true))
    assert r.precision == pytest.approx(len(found & true) / len(found) if found else 0.0)


_TOY = build_toy()
_GRAPH = verify.model_graph(_TOY)
