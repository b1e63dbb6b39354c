"""Structural scores: hand-counted precision/recall, self-scores of 1, ROC-AUC against pair counting."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
from support.toys import TOY_TRUE_EDGES, build_toy

import verify
from verify.circuit import CircuitError, Edge
from verify.structural import roc_auc, roc_curve


@pytest.fixture(scope="module")
def truth():
    return verify.ground_truth(build_toy())


def _pairs_auc(scores, labels) -> float:
    """Oracle: the probability a positive outscores a negative, ties one half, by counting every pair."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return total / (len(pos) * len(neg))


@pytest.mark.parametrize("level", ["node", "edge", "subspace"])
def test_truth_scores_perfectly_against_itself(truth, level: str) -> None:
    r = verify.score(truth, truth, level=level)
    assert (r.precision, r.recall, r.f1, r.roc_auc) == (1.0, 1.0, 1.0, 1.0)
    assert r.false_positives == [] and r.false_negatives == []
    assert r.tp == len(truth.items(level)) and r.n_negative > 0


def test_one_missing_and_one_false_edge_hand_counted(truth) -> None:
    # 10 true edges. Drop one (L0.MLP->L1.MLP<in>) and add one false edge (L0.H1->L1.MLP<in>).
    found = set(TOY_TRUE_EDGES) - {"L0.MLP->L1.MLP<in>"} | {"L0.H1->L1.MLP<in>"}
    r = verify.score(found, truth)
    assert r.true_positives == sorted(set(TOY_TRUE_EDGES) - {"L0.MLP->L1.MLP<in>"})
    assert r.false_positives == ["L0.H1->L1.MLP<in>"]
    assert r.false_negatives == ["L0.MLP->L1.MLP<in>"]
    assert r.precision == pytest.approx(9 / 10) and r.recall == pytest.approx(9 / 10)
    assert r.f1 == pytest.approx(0.9)
    # Binary ranking over the 61 legal edges (10 true, 51 false): AUC = (9*51 + 1*50 + 0.5*(1*1)... counted:
    # positives at 1: 9, negatives at 1: 1, positives at 0: 1, negatives at 0: 50.
    # pairs won: 9*50 + tie 9*1*0.5 + tie 1*50*0.5 = 450 + 4.5 + 25 = 479.5 of 510.
    assert r.roc_auc == pytest.approx(479.5 / 510)
    missing_only = verify.score(set(TOY_TRUE_EDGES) - {"L1.H0->L1.MLP<in>"}, truth)
    assert (missing_only.precision, missing_only.recall) == (1.0, pytest.approx(0.9))
    extra_only = verify.score(set(TOY_TRUE_EDGES) | {"embed->L1.H1<q>"}, truth)
    assert (extra_only.precision, extra_only.recall) == (pytest.approx(10 / 11), 1.0)
    assert extra_only.f1 == pytest.approx(2 * (10 / 11) / (1 + 10 / 11))


def test_circuit_inputs_and_node_level(truth) -> None:
    smaller = truth.restricted([e for e in truth.edges if str(e) != "L1.H0->L1.MLP<in>"])
    r = verify.score(smaller, truth)
    # dropping L1.H0's only output edge leaves L1.H0 and its three input edges out of the walk, but the
    # named edges stay in the discovered circuit (the canonical form keeps every named edge)
    assert r.false_negatives == ["L1.H0->L1.MLP<in>"] and r.false_positives == []
    nodes = verify.score({"embed", "pos_embed", "L0.H0", "L0.H1"}, truth, level="node")
    assert (nodes.precision, nodes.recall) == (pytest.approx(3 / 4), pytest.approx(3 / 6))
    assert nodes.false_positives == ["L0.H1"]
    # an edge score counts for both its ends at node level
    by_edge = verify.score({Edge("L0.H1", "L1.MLP", "in"): 0.9}, truth, level="node")
    assert by_edge.true_positives == ["L1.MLP"] and by_edge.false_positives == ["L0.H1"]


def test_scores_with_ties_match_pair_counting(truth) -> None:
    universe = sorted(truth.universe("edge"))
    for seed in range(20):
        rng = random.Random(seed)
        scores = {e: float(rng.randint(0, 3)) for e in universe if rng.random() < 0.8}  # ties, some missing
        r = verify.score(scores, truth, threshold=1.5)
        floor = min(scores.values()) - 1.0
        vals = [scores.get(e, floor) for e in universe]
        labels = [e in truth.items("edge") for e in universe]
        assert r.roc_auc == pytest.approx(_pairs_auc(vals, labels))
        assert r.roc_auc == pytest.approx(float(np.trapezoid(r.tpr, r.fpr)))
        predicted = {e for e, v in scores.items() if v > 1.5}
        tp = len(predicted & truth.items("edge"))
        assert r.precision == pytest.approx(tp / len(predicted) if predicted else 0.0)
        assert r.recall == pytest.approx(tp / 10)


def test_roc_auc_small_cases_by_hand() -> None:
    assert roc_auc([1, 1, 0, 0], [True, False, True, False]) == 0.5
    assert roc_auc([2, 1, 1, 0], [True, True, False, False]) == pytest.approx(3.5 / 4)
    assert roc_auc([0.3, 0.3, 0.3], [True, False, False]) == 0.5
    assert roc_auc([3, 2, 1], [False, True, True]) == 0.0
    assert math.isnan(roc_auc([1, 2], [True, True]))
    fpr, tpr, thr = roc_curve([2, 1, 1, 0], [True, True, False, False])
    assert fpr == [0.0, 0.0, 0.5, 1.0] and tpr == [0.0, 0.5, 1.0, 1.0] and thr == [math.inf, 2.0, 1.0, 0.0]


def test_random_scores_average_half(truth) -> None:
    universe = sorted(truth.universe("edge"))
    aucs = []
    for seed in range(300):
        rng = np.random.default_rng(seed)
        aucs.append(verify.score(dict(zip(universe, rng.random(len(universe)), strict=True)), truth).roc_auc)
    # 300 draws of an AUC with sd ~0.1 (10 vs 51 items): the mean is within 0.02 of 0.5 with margin to spare
    assert abs(float(np.mean(aucs)) - 0.5) < 0.02
    assert min(aucs) < 0.4 and max(aucs) > 0.6  # the scores really vary


def test_score_errors_and_str(truth) -> None:
    with pytest.raises(CircuitError, match="L1.MLP->L0.H0"):
        verify.score({"L0.H0->L1.MLP<in>": 1.0, "L1.MLP->L0.H0<q>": 1.0}, truth)
    with pytest.raises(CircuitError, match="not in the model"):
        verify.score({"L0.H1->L1.MLP<in>": 1.0, "L5.H0->output<in>": 1.0}, truth)
    with pytest.raises(CircuitError, match="unknown level"):
        verify.score(truth, truth, level="neuron")
    text = str(verify.score(set(TOY_TRUE_EDGES) | {"L0.H1->L1.MLP<in>"}, truth))
    assert "precision 0.909" in text and "L0.H1->L1.MLP<in>" in text and "ROC-AUC" in text
