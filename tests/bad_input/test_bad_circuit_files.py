"""Bad input, circuit readers: every accepted format type-checked; no reader accepts a non-boolean flag,
a non-finite score, an unknown component or an unknown field. Each error names what is wrong."""

import json
import math

import numpy as np
import pytest
from support.library_models import compiled

import verify
from verify import formats as F
from verify.circuit import CircuitError


@pytest.fixture(scope="module")
def model():
    return compiled("reverse")


@pytest.fixture(scope="module")
def truth(model):
    return verify.ground_truth(model)


@pytest.mark.parametrize("flag", ["false", "true", 0, 1, None, 1.0])
def test_acdc_flags_must_be_booleans(model, truth, flag) -> None:
    rows = F.to_acdc(truth)
    key = next(iter(rows))
    bad = dict(rows)
    bad[key] = flag
    with pytest.raises(CircuitError, match="is not a boolean"):
        F.from_acdc(bad, model)


def test_acdc_accepts_real_booleans(model, truth) -> None:
    rows = {k: np.bool_(v) for k, v in F.to_acdc(truth).items()}
    assert F.from_acdc(rows, model) == F.from_acdc(F.to_acdc(truth), model)


def test_acdc_hooks_of_layers_the_model_lacks_are_refused(model, truth) -> None:
    rows = dict(F.to_acdc(truth))
    rows[("blocks.9.attn.hook_q", (None, None, 0), "blocks.9.hook_q_input", (None, None, 0))] = True
    with pytest.raises(CircuitError, match="layers"):
        F.from_acdc(rows, model)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "0.5", True, None])
def test_scores_must_be_finite_numbers(truth, value) -> None:
    edge = str(next(iter(truth.edges)))
    with pytest.raises(CircuitError, match="score"):
        verify.score({edge: value}, truth)


def test_nan_in_autocircuit_prune_scores_is_refused(model, truth) -> None:
    scores = F.to_autocircuit_scores(truth, model)
    module = next(iter(scores))
    bad = {k: np.asarray(v.tolist(), dtype=float) for k, v in scores.items()}
    bad[module].flat[0] = np.nan
    with pytest.raises(CircuitError, match="not finite"):
        F.from_autocircuit_scores(bad, model)


def test_eapig_edges_must_be_names(model) -> None:
    with pytest.raises(CircuitError, match="is not a name"):
        F.from_eapig([3, 4], model)


def test_eapig_in_graph_must_be_boolean(model, truth) -> None:
    doc = F.to_eapig_json(truth)
    name = next(iter(doc["edges"]))
    doc["edges"][name]["in_graph"] = "yes"
    with pytest.raises(CircuitError, match="is not a boolean"):
        F.from_eapig_json(doc, model)


@pytest.mark.parametrize("where", ["top", "node", "edge", "model"])
def test_circuit_json_unknown_fields_are_refused(model, truth, where) -> None:
    doc = json.loads(json.dumps(F.to_json(truth)))
    target = {"top": doc, "node": doc["nodes"][0], "edge": doc["edges"][0], "model": doc["model"]}[where]
    target["presnet"] = True  # a misspelt field
    with pytest.raises(CircuitError, match="unknown field"):
        F.from_json(doc, model)


def test_unknown_components_are_refused(model) -> None:
    with pytest.raises(CircuitError, match="L7"):
        F.from_edges(model, ["L7.H0->output<in>"])


def test_autocircuit_scores_rank_by_magnitude_and_read_acdc_inf(model, truth) -> None:
    """auto-circuit ranks edges by |score|; ACDC marks kept edges +inf. Both read as the tool means them."""
    edges = sorted(truth.edges)
    signed = {str(e): (-3.0 if i % 2 else 3.0) for i, e in enumerate(edges)}
    ps = F.to_autocircuit_scores(signed, model)
    mags = F.from_autocircuit_scores(ps, model)
    assert all(mags[e] == 3.0 for e in edges)  # negative attributions count as strongly as positive ones
    assert any(v == -3.0 for v in F.from_autocircuit_scores(ps, model, signed=True).values())
    kept = {k: v.clone() for k, v in ps.items()}
    for t in kept.values():
        t[t != 0] = math.inf  # ACDC: +inf for every kept edge, small values for pruned ones
    circuit = F.from_autocircuit_scores(kept, model, threshold=0.5)  # any cut at or above the pruned scores
    assert set(circuit.edges) == set(F.from_autocircuit_scores(ps, model, threshold=0.5).edges)
    assert circuit.edges
