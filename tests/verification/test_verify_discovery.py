"""Discovery baselines: full score coverage, recovery on easy programs, engine/PyTorch agreement."""

from __future__ import annotations

import pytest
import torch

from rasp_compiler.compiler.compiling import compile_rasp_to_model
from rasp_compiler.model.names import writers
from rasp_compiler.rasp import lib
from verify import causal, discovery, legal_edges, score

torch.set_num_threads(1)


def build(name: str, n: int = 8):
    e = lib.LIBRARY[name]
    program = e.builder()
    model = compile_rasp_to_model(program, e.vocab, e.max_seq_len)
    return model, causal.make_dataset(model, program, n, seed=0, distinct=e.distinct_tokens)


@pytest.mark.parametrize("method", discovery.METHODS)
@pytest.mark.parametrize("ablation", causal.ABLATIONS)
def test_every_method_scores_every_edge_or_node(method: str, ablation: str) -> None:
    model, ds = build("frac_prevs")
    r = discovery.run_method(
        method, model, ds, ablation, **({"thresholds": (1e-2,)} if method == "acdc" else {})
    )
    cfg = model.config
    if r.level == "edge":
        assert set(r.scores) == {str(e) for e in legal_edges(cfg.n_layers, cfg.n_heads)}
    else:
        assert set(r.scores) == set(writers(cfg.n_layers, cfg.n_heads))
    assert all(v >= 0 for v in r.scores.values())


@pytest.mark.parametrize(
    "name,ablation",
    [("length", "zero"), ("reverse", "resample"), ("frac_prevs", "zero"), ("hist", "resample")],
)
def test_acdc_recovers_the_ablation_aware_truth_on_easy_programs(name: str, ablation: str) -> None:
    model, ds = build(name, n=16)
    truth = causal.necessary_edges(model, ds, ablation)
    r = discovery.acdc(model, ds, ablation, thresholds=(1e-3,))
    assert r.circuits[1e-3] == sorted(truth.edges)
    assert score(r.scores, truth.circuit).roc_auc == 1.0


def test_eap_matches_the_exact_effect_of_a_single_edge_on_a_linear_reader() -> None:
    # frac_prevs under resample: the output reads L1.H0 linearly, so EAP's first-order score of the
    # output edge is exact: |sum over positions of the change in the clean answer's log-prob|, linearised.
    model, ds = build("frac_prevs")
    r = discovery.eap(model, ds, "resample")
    ranked = sorted(r.scores, key=r.scores.get, reverse=True)
    assert ranked[0] in {"L1.H0->output<in>", "L0.MLP->L1.H0<v>"}
    assert r.scores["pos_embed->output<in>"] == 0.0


@pytest.mark.parametrize("method", ["activation_patching", "acdc"])
def test_engine_and_hooks_give_the_same_scores(method: str) -> None:
    model, ds = build("reverse")
    kw = {"thresholds": (1e-3, 1e-1)} if method == "acdc" else {}
    a = discovery.run_method(method, model, ds, "resample", backend="engine", **kw)
    b = discovery.run_method(method, model, ds, "resample", backend="torch", **kw)
    assert a.backend == "engine" and b.backend == "torch"
    assert a.scores.keys() == b.scores.keys()
    for k in a.scores:
        assert a.scores[k] == pytest.approx(b.scores[k], abs=1e-5), k


@pytest.mark.parametrize("name", ["reverse", "frac_prevs"])
def test_subnetwork_probing_keeps_exactly_the_nodes_the_output_needs(name: str) -> None:
    """Under resample ablation at the smallest penalty, SP's gates stay open on exactly the nodes of the
    ablation-aware truth (the output aside) and close on the rest; a large penalty closes more."""
    model, ds = build(name, n=16)
    r = discovery.subnetwork_probing(model, ds, "resample")
    truth = causal.necessary_edges(model, ds, "resample").circuit
    needed = {x for e in truth.edges for x in (e.writer, e.reader)} - {"output"}
    assert set(r.circuits[1e-3]) == needed
    assert len(r.circuits[1.0]) < len(r.circuits[1e-3])
    assert r.backend == "engine" and all(0.0 <= v <= 1.0 for v in r.scores.values())
    by_autograd = discovery.subnetwork_probing(model, ds, "resample", backend="torch")
    assert by_autograd.backend == "torch-grad" and by_autograd.circuits == r.circuits
