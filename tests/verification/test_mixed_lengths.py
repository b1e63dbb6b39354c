"""Datasets over several input lengths: pairs share a length, mean ablation averages over every length, so
edges that carry `length` are tested for real; interchange counts pairs that swap nothing as vacuous."""

from __future__ import annotations

import numpy as np
import pytest

from rasp_compiler import rasp
from rasp_compiler.compiler.compiling import compile_rasp_to_model
from rasp_compiler.rasp.lib import LIBRARY
from verify import causal, discovery
from verify.causal.patcher import mean_over_lengths


def _setup(name: str):  # noqa: ANN202
    e = LIBRARY[name]
    program = e.builder()
    return program, compile_rasp_to_model(program, e.vocab, e.max_seq_len)


def test_mixed_dataset_has_one_group_per_length_and_pairs_share_it() -> None:
    program, model = _setup("reverse")
    mixed = causal.make_dataset(model, program, 23, seed=3, lengths="all")
    assert isinstance(mixed, causal.MixedDataset)
    assert mixed.lengths == [1, 2, 3, 4, 5] and len(mixed) == 23
    for g in mixed.groups:
        assert len(g) >= 1 and {len(x) for x in g.clean + g.corrupt} == {g.length}
        assert g.expected == [rasp.evaluate(program, x) for x in g.clean]
    assert mixed.clean == [x for g in mixed.groups for x in g.clean]
    two = causal.make_dataset(model, program, 8, lengths=[2, 4])
    assert two.lengths == [2, 4]
    one = causal.make_dataset(model, program, 8, lengths=[3])
    assert isinstance(one, causal.Dataset) and one.length == 3


@pytest.mark.parametrize(
    "kwargs,match",
    [({"lengths": [0, 2]}, "outside 1..max_seq_len"), ({"lengths": "most"}, "list of ints or 'all'"),
     ({"lengths": [2], "length": 2}, "not both"), ({"lengths": "all", "n": 3}, "cannot cover 5 lengths")],
)
def test_bad_lengths_are_refused_by_name(kwargs: dict, match: str) -> None:
    program, model = _setup("reverse")
    with pytest.raises(causal.CausalError, match=match):
        causal.make_dataset(model, program, **({"n": 8} | kwargs))


def test_mean_over_lengths_is_the_per_position_mean_over_every_input_that_has_the_position() -> None:
    program, model = _setup("hist")
    mixed = causal.make_dataset(model, program, 12, seed=1, lengths=[2, 5])
    means = mean_over_lengths(model, mixed.groups)
    # by hand from the token embeddings: the embed writer's output at position p is W_E[token]
    rows = [[] for _ in range(6)]
    for g in mixed.groups:
        for ids in np.asarray(g.clean_ids):
            for p, t in enumerate(ids):
                rows[p].append(model.weights["W_E"][t])
    want = np.array([np.mean(r, axis=0) for r in rows])
    np.testing.assert_allclose(means["embed"][0], want, atol=1e-6)
    np.testing.assert_allclose(means["pos_embed"][0], model.weights["W_pos"][:6], atol=1e-6)


def test_mean_ablation_across_lengths_needs_the_length_path_of_reverse() -> None:
    """reverse reads position length - i - 1. On one length, `length` is a constant, so mean ablation of
    the edges computing it changes nothing; across lengths its mean is no length, and the flip moves."""
    program, model = _setup("reverse")
    single = causal.necessary_edges(model, causal.make_dataset(model, program, 32, seed=0), "mean")
    mixed_data = causal.make_dataset(model, program, 40, seed=0, lengths="all")
    mixed = causal.necessary_edges(model, mixed_data, "mean")
    length_path = {"L0.H0->L0.MLP<in>", "L0.MLP->L1.MLP<in>"}
    assert length_path <= set(mixed.edges) and not length_path & set(single.edges)
    assert set(single.edges) <= set(mixed.edges)
    torch_side = causal.necessary_edges(model, mixed_data, "mean", backend="torch")
    assert torch_side.edges == mixed.edges
    resample = causal.necessary_edges(model, mixed_data, "resample")
    assert resample.discrepancies == {}  # the program side predicts every mixed-length resample edge


def test_interchange_over_lengths_counts_vacuous_pairs() -> None:
    program, model = _setup("reverse")
    mixed = causal.make_dataset(model, program, 20, seed=2, lengths="all")
    alignments = causal.ground_truth_alignments(model, program)
    length = causal.interchange_accuracy(model, alignments["length"], mixed)
    assert length.iia == 1.0 and length.n == 20 and length.n_vacuous == 20  # pairs share their length
    opp = causal.interchange_accuracy(model, alignments["opp_idx-1"], mixed)
    assert opp.iia == 1.0 and opp.n_vacuous == 20  # a function of length and position only
    tokens = causal.interchange_accuracy(model, alignments["tokens"], mixed)
    assert tokens.iia == 1.0 and tokens.n_vacuous < 20


def test_patching_baselines_run_over_every_length() -> None:
    """Activation patching, ACDC and SP (engine) take a mixed dataset: under mean ablation across lengths
    the length head of reverse matters (by hand, as above), on one length it does not; ACDC's circuit
    at a small threshold is exactly the mixed-length ablation-aware truth."""
    program, model = _setup("reverse")
    single = causal.make_dataset(model, program, 32, seed=0)
    mixed = causal.make_dataset(model, program, 40, seed=0, lengths="all")
    assert discovery.activation_patching(model, single, "mean").scores["L0.H0"] == 0.0
    assert discovery.activation_patching(model, mixed, "mean").scores["L0.H0"] > 0.05
    acdc = discovery.acdc(model, mixed, "mean", thresholds=(1e-3,))
    assert acdc.circuits[1e-3] == sorted(causal.necessary_edges(model, mixed, "mean").edges)
    sp = discovery.subnetwork_probing(model, mixed, "mean")
    assert {"L0.H0", "L0.MLP", "L3.H0"} <= set(sp.circuits[1e-3])


def test_eap_over_lengths_averages_every_example() -> None:
    """EAP over a mixed dataset (resample) is the example-weighted mean of EAP on each length."""
    program, model = _setup("frac_prevs")
    mixed = causal.make_dataset(model, program, 12, seed=4, lengths=[2, 3, 5])
    whole = discovery.eap(model, mixed, "resample").scores
    parts = [(len(g), discovery.eap(model, g, "resample").scores) for g in mixed.groups]
    for edge, score in whole.items():
        assert score == pytest.approx(sum(n * s[edge] for n, s in parts) / len(mixed), rel=1e-5, abs=1e-7)


def test_methods_that_patch_one_batch_say_so() -> None:
    program, model = _setup("frac_prevs")
    mixed = causal.make_dataset(model, program, 8, lengths=[2, 3])
    for run in (lambda: causal.Patcher(model, mixed),
                lambda: discovery.subnetwork_probing(model, mixed, backend="torch"),
                lambda: causal.minimal_circuit(model, mixed, "resample")):
        with pytest.raises(causal.CausalError, match=r"lengths \[2, 3\]: run it on each of `dataset.groups`"):
            run()
