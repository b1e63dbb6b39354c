"""Faithfulness, completeness and minimality of a circuit under an ablation."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from rasp_compiler.model.outputs import OUTPUT_ATOL, positions_equal
from verify.causal.metrics import divergence, logit_diff, mse_to_clean, task_accuracy
from verify.causal.patcher import Patcher
from verify.circuit import Circuit, CircuitError, Edge, as_edge, legal_edges
from verify.dataset import CausalError, Dataset, decode_outputs, is_numerical_output

__all__ = ["FaithfulnessResult", "faithfulness"]


@dataclasses.dataclass
class FaithfulnessResult:
    """Circuit vs full model under one ablation (accuracies are per output position)."""

    ablation: str
    backend: str
    accuracy: float  # circuit run (everything outside ablated): decoded == evaluator
    full_accuracy: float
    metric: str
    metric_value: float
    full_metric_value: float
    metric_ratio: float
    divergence: float  # KL (categorical) or MSE (numerical) of the circuit run to the full model
    completeness_accuracy: float  # circuit ablated, rest kept
    completeness_divergence: float
    minimality: dict[str, float]  # circuit edge -> fraction of outputs that change when it is also ablated
    minimality_divergence: dict[str, float]
    n_edges: int
    n_ablated: int


def faithfulness(
    model: Any,
    circuit: Circuit | Iterable[Any],
    inputs: Dataset,
    ablation: str = "resample",
    metric: str | Callable[[np.ndarray], float] | None = None,
    *,
    backend: str = "auto",
    minimality: bool = True,
    atol: float = OUTPUT_ATOL,
) -> FaithfulnessResult:
    """Run `model` on `inputs` with every legal edge outside `circuit` ablated; compare with the full model.

    `metric`: "logit_diff" (categorical default; ratio = circuit / full), "r2" (numerical default:
    1 - MSE(circuit, full) / Var(full), ratio = that value), or a callable on outputs `[B, T, V]`.
    """
    cfg = model.config
    edges = set(circuit.edges) if isinstance(circuit, Circuit) else {as_edge(e) for e in circuit}
    universe = legal_edges(cfg.n_layers, cfg.n_heads)
    unknown = sorted(str(e) for e in edges - set(universe))
    if unknown:
        raise CircuitError(f"faithfulness: circuit edges not in the model: {unknown[:5]}")
    outside = [e for e in universe if e not in edges]
    inside = sorted(edges, key=Edge.sort_key)
    runner = Patcher(model, inputs, ablation, backend)
    sets = [outside, inside] + ([outside + [e] for e in inside] if minimality else [])
    outs = runner.outputs(sets)
    full = runner.clean()
    if metric is None:
        metric = "logit_diff" if cfg.output_encoding == "categorical" else "r2"

    def score(out: np.ndarray) -> float:
        if callable(metric):
            return float(metric(out))
        if metric == "logit_diff":
            return logit_diff(model, inputs, out)
        if metric == "r2":
            var = float(np.var(full[:, 1:].astype(np.float64)))
            return 1.0 - mse_to_clean(full, out) / var if var > 0 else float(mse_to_clean(full, out) == 0.0)
        raise CausalError(f"unknown metric {metric!r}; expected 'logit_diff', 'r2' or a callable")

    m_circ, m_full = score(outs[0]), score(full)
    ratio = m_circ if metric == "r2" else (m_circ / m_full if m_full else math.nan)
    clean_dec = decode_outputs(model, full)

    def changed(out: np.ndarray) -> float:
        got = decode_outputs(model, out)
        numerical = is_numerical_output(model)
        flags = [
            not f for a, b in zip(got, clean_dec, strict=True) for f in positions_equal(a, b, numerical, atol)
        ]
        return float(np.mean(flags))

    mini = {str(e): changed(outs[2 + i]) for i, e in enumerate(inside)} if minimality else {}
    mini_div = (
        {str(e): divergence(model, full, outs[2 + i]) for i, e in enumerate(inside)} if minimality else {}
    )
    return FaithfulnessResult(
        ablation=ablation,
        backend=runner.backend,
        accuracy=task_accuracy(model, inputs, outs[0], atol),
        full_accuracy=task_accuracy(model, inputs, full, atol),
        metric=metric if isinstance(metric, str) else getattr(metric, "__name__", "custom"),
        metric_value=m_circ,
        full_metric_value=m_full,
        metric_ratio=ratio,
        divergence=divergence(model, full, outs[0]),
        completeness_accuracy=task_accuracy(model, inputs, outs[1], atol),
        completeness_divergence=divergence(model, full, outs[1]),
        minimality=mini,
        minimality_divergence=mini_div,
        n_edges=len(inside),
        n_ablated=len(outside),
    )
