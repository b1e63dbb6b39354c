"""Structural scoring: a discovered circuit (binary, or a score per edge/node) against the ground truth.

`score(discovered, truth, level="edge")` returns precision, recall and F1 of the predicted set, the
true/false positives and false negatives by name, and the ROC-AUC with its curve. Predictions are
ranked over the *universe* of the level (every legal edge / every component of the model), so an
item the discovery method never mentions counts as a negative scored below everything it did
mention. ROC-AUC is the Mann-Whitney statistic with average ranks, so tied scores count one half;
it equals the trapezoidal area under the returned curve, whose points step once per distinct score.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from verify.circuit import LEVELS, OUTPUT, Circuit, CircuitError, Edge, as_edge, node_kind, score_value

__all__ = ["ScoreResult", "roc_auc", "roc_curve", "score"]


@dataclasses.dataclass
class ScoreResult:
    """Precision/recall/F1 of the predicted set and ROC-AUC of the ranking, at one level."""

    level: str
    precision: float
    recall: float
    f1: float
    roc_auc: float
    true_positives: list[str]
    false_positives: list[str]
    false_negatives: list[str]
    n_positive: int  # items in the truth
    n_negative: int  # items of the universe not in the truth
    fpr: list[float]  # ROC curve, from (0, 0) to (1, 1)
    tpr: list[float]
    thresholds: list[float]  # score at each curve point after the first (+inf for the origin)

    @property
    def tp(self) -> int:
        return len(self.true_positives)

    @property
    def fp(self) -> int:
        return len(self.false_positives)

    @property
    def fn(self) -> int:
        return len(self.false_negatives)

    def __str__(self) -> str:
        def show(names: list[str]) -> str:
            return (
                ", ".join(names[:8]) + (f", ... (+{len(names) - 8})" if len(names) > 8 else "")
                if names
                else "-"
            )

        return "\n".join(
            [
                f"{self.level}-level score: precision {self.precision:.3f}  recall {self.recall:.3f}  "
                f"F1 {self.f1:.3f}  ROC-AUC {self.roc_auc:.3f}",
                f"  truth {self.n_positive} of {self.n_positive + self.n_negative}; "
                f"TP {self.tp}  FP {self.fp}  FN {self.fn}",
                f"  false positives: {show(self.false_positives)}",
                f"  false negatives: {show(self.false_negatives)}",
            ]
        )


def _rank_average(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing the average of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_vals = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def roc_auc(scores: Iterable[float], labels: Iterable[bool]) -> float:
    """Mann-Whitney ROC-AUC with average ranks for ties; NaN without both classes."""
    s = np.asarray(list(scores), dtype=np.float64)
    y = np.asarray(list(labels), dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _rank_average(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(
    scores: Iterable[float], labels: Iterable[bool]
) -> tuple[list[float], list[float], list[float]]:
    """(fpr, tpr, thresholds): one point per distinct score, highest first, from (0, 0) to (1, 1)."""
    s = np.asarray(list(scores), dtype=np.float64)
    y = np.asarray(list(labels), dtype=bool)
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    fpr, tpr, thr = [0.0], [0.0], [math.inf]
    for t in sorted(set(s.tolist()), reverse=True):
        chosen = s >= t
        tpr.append(float((chosen & y).sum()) / n_pos)
        fpr.append(float((chosen & ~y).sum()) / n_neg)
        thr.append(float(t))
    return fpr, tpr, thr


def _node_name(item: Any) -> str:
    name = str(item)
    node_kind(name)  # raises on a bad name
    return name


def _as_scores(discovered: Any, truth: Circuit, level: str) -> dict[str, float]:
    """Scores keyed by item name at `level` (binary inputs score 1.0)."""
    if isinstance(discovered, Circuit):
        if (discovered.n_layers, discovered.n_heads) != (truth.n_layers, truth.n_heads):
            raise CircuitError(
                f"discovered circuit is for n_layers={discovered.n_layers}, n_heads="
                f"{discovered.n_heads}; the truth for {truth.n_layers}, {truth.n_heads}"
            )
        if discovered.output != truth.output:
            raise CircuitError(
                f"discovered circuit is for output {discovered.output!r}, truth for {truth.output!r}"
            )
        return {name: 1.0 for name in discovered.items(level)}
    if isinstance(discovered, Mapping):
        items = {k: score_value(v, f"score of {k}") for k, v in discovered.items()}
    elif isinstance(discovered, Iterable) and not isinstance(discovered, (str, bytes)):
        items = {k: 1.0 for k in discovered}
    else:
        raise CircuitError(
            f"cannot score a {type(discovered).__name__}: pass a Circuit, a set of names or a dict of scores"
        )
    out: dict[str, float] = {}
    if level == "node":
        for k, v in items.items():
            if isinstance(k, Edge) or (isinstance(k, str) and "->" in k):
                e = as_edge(k)  # an edge score counts for both its ends
                for n in (e.writer, e.reader):
                    if n != OUTPUT:
                        out[n] = max(out.get(n, -math.inf), v)
            else:
                name = _node_name(k)
                if name != OUTPUT:
                    out[name] = max(out.get(name, -math.inf), v)
        return out
    if level == "edge":
        for k, v in items.items():
            name = str(as_edge(k))
            out[name] = max(out.get(name, -math.inf), v)
        return out
    for k, v in items.items():
        if isinstance(k, tuple) and len(k) == 2:
            name = f"{as_edge(k[0])}:{k[1]}"
        else:
            edge_text, _, label = str(k).partition(">:")
            name = f"{as_edge(edge_text + '>')}:{label}"
        out[name] = max(out.get(name, -math.inf), v)
    return out


EMBEDS = "embeds"


def unmerged(name: str) -> list[str]:
    """The model's items behind a `merge_embeddings` name: `embeds->X` is `embed->X` and `pos_embed->X`."""
    if name == EMBEDS or name.startswith(EMBEDS + "->"):
        return [src + name[len(EMBEDS):] for src in ("embed", "pos_embed")]
    return [name]


def _merged(name: str) -> str:
    """An item name with `embed` / `pos_embed` (as the item or as an edge's writer) read as `embeds`."""
    for src in ("embed", "pos_embed"):
        if name == src or name.startswith(src + "->"):
            return EMBEDS + name[len(src):]
    return name


def score(
    discovered: Circuit | Mapping[Any, float] | Iterable[Any],
    truth: Circuit,
    level: str = "edge",
    *,
    threshold: float = 0.0,
    merge_embeddings: bool = False,
) -> ScoreResult:
    """Score `discovered` against `truth` at `level` ("node", "edge" or "subspace").

    `merge_embeddings` scores at the granularity of tools whose graph starts from one residual input
    (auto-circuit's `Resid Start`, ACDC's `hook_resid_pre`): the `embed` and `pos_embed` items reading
    into the same place count as one item `embeds` (found when either is; its score the larger).

    `discovered` is a Circuit, a set of names (edges as `Edge` or `"w->r<in>"`, nodes by name), or a
    dict of scores per edge / node. Items scoring above `threshold` form the predicted set (a binary
    input scores 1.0); every item of the model's universe ranks by score for the ROC, unmentioned
    items lowest. At node level an edge score counts for both of its components.
    """
    if level not in LEVELS:
        raise CircuitError(f"unknown level {level!r}; expected one of {LEVELS}")
    if not isinstance(truth, Circuit) and isinstance(getattr(truth, "circuit", None), Circuit):
        truth = truth.circuit  # e.g. causal.necessary_edges(...): its circuit is the truth
    if not isinstance(truth, Circuit):
        raise CircuitError(f"truth must be a Circuit, got {type(truth).__name__}")
    positives = truth.items(level)
    universe = truth.universe(level) | positives
    scores = _as_scores(discovered, truth, level)
    unknown = sorted(set(scores) - universe)
    if merge_embeddings and not unknown:
        positives, universe = {_merged(k) for k in positives}, {_merged(k) for k in universe}
        merged: dict[str, float] = {}
        for k, v in scores.items():
            merged[_merged(k)] = max(v, merged.get(_merged(k), -math.inf))
        scores = merged
    if unknown:
        raise CircuitError(
            f"discovered {level}s not in the model: {unknown[:5]}"
            + (f" (+{len(unknown) - 5})" if len(unknown) > 5 else "")
        )
    predicted = {k for k, v in scores.items() if v > threshold}
    tp = sorted(predicted & positives)
    fp = sorted(predicted - positives)
    fn = sorted(positives - predicted)
    precision = len(tp) / len(predicted) if predicted else 0.0
    recall = len(tp) / len(positives) if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    order = sorted(universe)
    floor = min([v for v in scores.values() if math.isfinite(v)] + [0.0]) - 1.0
    vals = [scores.get(k, floor) for k in order]
    labels = [k in positives for k in order]
    fpr, tpr, thr = roc_curve(vals, labels)
    return ScoreResult(
        level,
        precision,
        recall,
        f1,
        roc_auc(vals, labels),
        tp,
        fp,
        fn,
        len(positives),
        len(universe) - len(positives),
        fpr,
        tpr,
        thr,
    )
