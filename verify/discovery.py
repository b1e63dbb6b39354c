"""Baseline circuit-discovery methods, run on any compiled model; scores in the `verify.Circuit` vocabulary.

* `activation_patching`: node level; a node's score is the divergence (KL to the clean output, or MSE
  for numerical outputs) when its output is ablated for every reader.
* `acdc`: edge level (Conmy et al. 2023): start from the complete graph; visit readers from the output
  backwards (reverse topological order), and for each of a reader's input edges try ablating it on
  top of those already removed; remove it when the divergence grows by less than the threshold.
  Run for a sweep of thresholds; an edge's score is the largest threshold at which it survives.
* `eap`: edge attribution patching (Syed et al. 2023): one forward and backward pass through the
  PyTorch module; score(w -> r<inp>) = |(a_w^ablated - a_w^clean) . dM/d(input inp of r)| per example,
  averaged, with M the log-probability of the clean answer (numerical outputs: the output value).
* `eap_ig`: the same with the gradient averaged over `steps` points on the straight line from the clean
  to the ablated input embeddings (EAP-IG, Hanna et al. 2024).
* `subnetwork_probing`: node level, as the ACDC paper adapted it (Cao et al. 2021; Conmy et al. 2023):
  one hard-concrete gate per node, its output mixed between clean (gate 1) and ablated (gate 0), trained
  to keep the output (divergence as above) under an L0 penalty `lam`, for a sweep of penalties; a node's
  score is its deterministic gate averaged over the sweep (1: kept at every penalty). On the engine
  (default) every forward pass is an engine sweep and the gates' gradient is taken by finite differences;
  `backend="torch"` differentiates through the PyTorch module instead (the same circuits on the library).

Ablations as in `verify.causal`: resample, mean, zero. Methods that patch (activation patching, ACDC)
run on the C++ engine (`backend="engine"`) or on PyTorch hooks (`backend="torch"`), with identical
semantics, so their runtimes compare like for like. No method sees the ground truth.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from rasp_compiler.model.names import writers
from rasp_compiler.model.patching import HookPatcher, PatchValue, ablation_values
from verify.causal.metrics import divergence, l2_to_clean
from verify.causal.patcher import MixedPatcher, Patcher, mean_over_lengths, patcher_for
from verify.circuit import OUTPUT, Edge, legal_edges, node_sort_key
from verify.dataset import Dataset, MixedDataset, one_length

__all__ = [
    "DEFAULT_THRESHOLDS",
    "DiscoveryResult",
    "acdc",
    "activation_patching",
    "eap",
    "eap_ig",
    "run_method",
    "subnetwork_probing",
]

DEFAULT_THRESHOLDS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
METHODS = ("activation_patching", "acdc", "eap", "eap_ig", "subnetwork_probing")
SP_LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0)
# the hard-concrete distribution of Louizos et al. (2018), with the constants SP uses
_HC_BETA, _HC_GAMMA, _HC_ZETA = 2 / 3, -0.1, 1.1


@dataclasses.dataclass
class DiscoveryResult:
    """Scores per edge (`"w->r<in>"`) or per node, and how they were obtained."""

    method: str
    ablation: str
    level: str  # "edge" or "node"
    scores: dict[str, float]
    runtime_s: float
    backend: str
    n_forward: int
    circuits: dict[float, list[str]] = dataclasses.field(
        default_factory=dict
    )  # ACDC: threshold -> kept edges; SP: penalty -> kept nodes
    complete: bool = True  # False: stopped at its time budget (scores/circuits partial; for timing only)


def activation_patching(
    model: Any, dataset: Dataset, ablation: str = "resample", *, backend: str = "auto", metric: str = "kl"
) -> DiscoveryResult:
    """Node scores: divergence from the clean output when the node's output is ablated (all in one sweep;
    `metric` as in `acdc`)."""
    t0 = time.perf_counter()
    measure = _metric(metric)
    runner = patcher_for(model, dataset, ablation, backend)
    nodes = writers(model.config.n_layers, model.config.n_heads)
    outs = runner.outputs([[n] for n in nodes])
    clean = runner.clean()
    scores = {n: _floor(measure(model, clean, outs[i])) for i, n in enumerate(nodes)}
    return DiscoveryResult(
        "activation_patching",
        ablation,
        "node",
        scores,
        time.perf_counter() - t0,
        runner.backend,
        runner.n_forward,
    )


NOISE_FLOOR = (
    1e-7  # float32 round-off: divergences below this are zero (engine and PyTorch round differently)
)


def _floor(x: float) -> float:
    return 0.0 if abs(x) < NOISE_FLOOR else float(x)


class _OutOfTime(Exception):
    """ACDC ran past its `max_seconds` budget."""


ACDC_METRICS = ("kl", "l2")  # kl: `divergence` (MSE for numerical outputs); l2: the paper's tracr metric


def _metric(name: str) -> Any:
    if name == "kl":
        return divergence
    if name == "l2":
        return lambda model, clean, out: l2_to_clean(clean, out)
    raise ValueError(f"unknown ACDC metric {name!r}; expected one of {ACDC_METRICS}")


def _acdc_once(
    model: Any,
    runner: Patcher | MixedPatcher,
    clean: np.ndarray,
    edges: list[Edge],
    threshold: float,
    deadline: float = float("inf"),
    metric: Any = divergence,
) -> tuple[set[Edge], dict[Edge, float]]:
    """One ACDC pass at one threshold; returns the kept edges and each tested edge's metric increase."""
    removed: list[Edge] = []
    kept = set(edges)
    deltas: dict[Edge, float] = {}
    current = metric(model, clean, runner.outputs([[]])[0])
    readers = sorted(
        {(e.reader, e.input) for e in edges},
        key=lambda ri: (node_sort_key(ri[0]), "qkvin".index(ri[1][0])),
        reverse=True,
    )
    into: dict[tuple[str, str], list[Edge]] = {}
    for e in edges:
        into.setdefault((e.reader, e.input), []).append(e)
    for reader, inp in readers:
        if reader != OUTPUT and not any(e.writer == reader for e in kept):
            for e in into[(reader, inp)]:  # a reader that reaches nothing: its inputs cannot matter
                kept.discard(e)
                removed.append(e)
            continue
        for e in sorted(into[(reader, inp)], key=lambda x: node_sort_key(x.writer), reverse=True):
            if time.perf_counter() > deadline:
                raise _OutOfTime
            trial = metric(model, clean, runner.outputs([removed + [e]])[0])
            deltas[e] = trial - current
            if trial - current < threshold:
                removed.append(e)
                kept.discard(e)
                current = trial
    return kept, deltas


def acdc(
    model: Any,
    dataset: Dataset,
    ablation: str = "resample",
    *,
    thresholds: Any = DEFAULT_THRESHOLDS,
    backend: str = "auto",
    max_seconds: float | None = None,
    metric: str = "kl",
) -> DiscoveryResult:
    """ACDC over a sweep of thresholds. Score of an edge: the largest threshold at which it is kept
    (0 if it is never kept), so ranking by score reproduces the sweep's ROC points. `metric`: "kl"
    (KL to the clean output; MSE for numerical outputs) or "l2" (the paper's metric on tracr tasks).

    `max_seconds`: stop once this much time has passed (benchmarks time slow backends this way); the
    result then has `complete=False`, partial scores, and `runtime_s`/`n_forward` of the part done."""
    t0 = time.perf_counter()
    measure = _metric(metric)
    deadline = t0 + max_seconds if max_seconds is not None else float("inf")
    runner = patcher_for(model, dataset, ablation, backend)
    clean = runner.clean()
    edges = legal_edges(model.config.n_layers, model.config.n_heads)
    scores = {str(e): 0.0 for e in edges}
    circuits: dict[float, list[str]] = {}
    complete = True
    for t in sorted(float(x) for x in thresholds):
        try:
            kept, _ = _acdc_once(model, runner, clean, edges, t, deadline, measure)
        except _OutOfTime:
            complete = False
            break
        circuits[t] = sorted(str(e) for e in kept)
        for e in kept:
            scores[str(e)] = max(scores[str(e)], t)
    return DiscoveryResult(
        "acdc",
        ablation,
        "edge",
        scores,
        time.perf_counter() - t0,
        runner.backend,
        runner.n_forward,
        circuits,
        complete,
    )


def _reader_inputs(n_layers: int, n_heads: int) -> list[tuple[str, str]]:
    return sorted({(e.reader, e.input) for e in legal_edges(n_layers, n_heads)})


def _eap_grads(
    model: Any, hp: HookPatcher, dataset: Dataset, ablated: dict[str, torch.Tensor], steps: int | None
) -> dict[tuple[str, str], torch.Tensor]:
    """Per reader input, dM/d(input) `[B, T, d_model]` (averaged over the IG path when `steps`)."""
    cfg = model.config
    ids = hp.tokens(dataset.clean_ids)
    with torch.no_grad():
        clean_out = hp.run(ids)
    answer = clean_out.argmax(dim=-1)
    clean_writers = hp.writer_outputs(ids)
    readers = _reader_inputs(cfg.n_layers, cfg.n_heads)
    alphas = [1.0] if steps is None else [(k + 0.5) / steps for k in range(steps)]
    total: dict[tuple[str, str], torch.Tensor] = {}
    for alpha in alphas:
        deltas = {
            ri: torch.zeros(ids.shape[0], ids.shape[1], cfg.d_model, requires_grad=True) for ri in readers
        }
        nodes = {}
        if steps is not None:
            for w in ("embed", "pos_embed"):
                start, end = clean_writers[w], ablated[w]
                nodes[w] = PatchValue(start + alpha * (end - start))
        out = hp.run(ids, nodes=nodes, reader_deltas=deltas, grad=True)
        if cfg.output_encoding == "categorical":
            logp = torch.log_softmax(out[:, 1:], dim=-1)
            metric = logp.gather(-1, answer[:, 1:, None]).sum()
        else:
            metric = out[:, 1:, 0].sum()
        grads = torch.autograd.grad(metric, [deltas[ri] for ri in readers], allow_unused=True)
        for ri, g in zip(readers, grads, strict=True):
            g = torch.zeros_like(deltas[ri]) if g is None else g
            total[ri] = total.get(ri, 0) + g / len(alphas)
    return total


def _eap_scores(
    model: Any, dataset: Dataset | MixedDataset, ablation: str, steps: int | None
) -> tuple[dict[str, float], int]:
    """Per edge, |first-order effect| averaged over every example (of every length: a mixed dataset is
    run length by length, mean ablation with the means over every length)."""
    groups = dataset.groups if isinstance(dataset, MixedDataset) else (dataset,)
    means = mean_over_lengths(model, groups) if ablation == "mean" and len(groups) > 1 else None
    hp = HookPatcher(model)
    per_example: dict[str, list[torch.Tensor]] = {}
    for group in groups:
        if means is not None:
            B, T = np.asarray(group.clean_ids).shape
            ablated = {w: torch.as_tensor(v[:, :T], dtype=torch.float32).expand(B, T, -1)
                       for w, v in means.items()}
        else:
            ablated = ablation_values(hp, group.clean_ids, group.corrupt_ids, ablation)
        clean_writers = hp.writer_outputs(group.clean_ids)
        grads = _eap_grads(model, hp, group, ablated, steps)
        for e in legal_edges(model.config.n_layers, model.config.n_heads):
            diff = ablated[e.writer].expand_as(clean_writers[e.writer]) - clean_writers[e.writer]
            effect = (diff * grads[(e.reader, e.input)]).sum(dim=(1, 2))
            per_example.setdefault(str(e), []).append(effect.abs())
    scores = {e: float(torch.cat(parts).mean()) for e, parts in per_example.items()}
    return scores, (1 if steps is None else steps) * len(groups)


def eap(model: Any, dataset: Dataset | MixedDataset, ablation: str = "resample") -> DiscoveryResult:
    """Edge attribution patching: first-order estimate of each edge's effect (gradients through PyTorch)."""
    t0 = time.perf_counter()
    scores, n = _eap_scores(model, dataset, ablation, None)
    return DiscoveryResult("eap", ablation, "edge", scores, time.perf_counter() - t0, "torch-grad", n)


def eap_ig(
    model: Any, dataset: Dataset | MixedDataset, ablation: str = "resample", *, steps: int = 5
) -> DiscoveryResult:
    """EAP with integrated gradients over the input embeddings (clean -> ablated), `steps` midpoints."""
    t0 = time.perf_counter()
    scores, n = _eap_scores(model, dataset, ablation, steps)
    return DiscoveryResult("eap_ig", ablation, "edge", scores, time.perf_counter() - t0, "torch-grad", n)


def _divergence_torch(model: Any, clean: torch.Tensor, out: torch.Tensor, metric: str = "kl") -> torch.Tensor:
    """The `acdc` metrics in torch (differentiable): mean over examples and non-BOS positions of
    KL(clean || out) of the softmaxed outputs (MSE for numerical outputs), or of the L2 distance."""
    if metric == "l2":
        return (out[:, 1:] - clean[:, 1:]).norm(dim=-1).mean()
    if model.config.output_encoding == "numerical":
        return ((out[:, 1:] - clean[:, 1:]) ** 2).mean()
    p = torch.log_softmax(clean[:, 1:], dim=-1)
    q = torch.log_softmax(out[:, 1:], dim=-1)
    return (p.exp() * (p - q)).sum(dim=-1).mean()


def subnetwork_probing(
    model: Any,
    dataset: Dataset,
    ablation: str = "resample",
    *,
    lambdas: tuple[float, ...] = SP_LAMBDAS,
    steps: int = 200,
    lr: float = 0.05,
    seed: int = 0,
    metric: str = "kl",
    backend: str = "engine",
) -> DiscoveryResult:
    """Subnetwork probing (see the module docstring): node scores in [0, 1], the gate kept on average over
    the penalties `lambdas`; `circuits` maps each penalty to the nodes whose gate ends above 1/2.

    `backend="torch"` differentiates through the PyTorch module; `backend="engine"` runs every forward
    pass on the C++ engine (a sweep per step: the sampled gates and each gate nudged by 1e-3) and takes
    the gates' gradient by those finite differences, then the same chain rule and Adam steps."""
    t0 = time.perf_counter()
    measure = _metric(metric)  # an unknown name fails here
    if backend not in ("torch", "engine"):
        raise ValueError(f"subnetwork_probing: backend must be 'torch' or 'engine', got {backend!r}")
    nodes = writers(model.config.n_layers, model.config.n_heads)
    totals = dict.fromkeys(nodes, 0.0)
    circuits: dict[float, list[str]] = {}
    if backend == "engine":
        runner = patcher_for(model, dataset, ablation, "engine")
        gates = {lam: _sp_engine(model, runner, nodes, lam, steps, lr, seed, measure) for lam in lambdas}
        n_forward = runner.n_forward
    else:
        one_length(dataset, "subnetwork_probing(backend='torch')")
        gates, n_forward = _sp_torch(model, dataset, ablation, nodes, lambdas, steps, lr, seed, metric)
    for lam in lambdas:
        circuits[lam] = [w for i, w in enumerate(nodes) if gates[lam][i] > 0.5]
        for i, w in enumerate(nodes):
            totals[w] += float(gates[lam][i]) / len(lambdas)
    return DiscoveryResult("subnetwork_probing", ablation, "node", totals, time.perf_counter() - t0,
                           "engine" if backend == "engine" else "torch-grad", n_forward, circuits)


def _np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _final_gates(log_alpha: np.ndarray) -> np.ndarray:
    return np.clip(_np_sigmoid(log_alpha) * (_HC_ZETA - _HC_GAMMA) + _HC_GAMMA, 0.0, 1.0)


def _sp_torch(
    model: Any, dataset: Dataset, ablation: str, nodes: list[str], lambdas: tuple[float, ...], steps: int,
    lr: float, seed: int, metric: str,
) -> tuple[dict[float, np.ndarray], int]:
    hp = HookPatcher(model)
    ids = hp.tokens(dataset.clean_ids)
    ablated = ablation_values(hp, dataset.clean_ids, dataset.corrupt_ids, ablation)
    with torch.no_grad():
        clean = hp.run(ids)
    eye = torch.eye(int(model.config.d_model))
    floor = float(np.log(-_HC_GAMMA / _HC_ZETA))
    out_gates: dict[float, np.ndarray] = {}
    n_forward = 0
    for lam in lambdas:
        gen = torch.Generator().manual_seed(seed)
        log_alpha = torch.full((len(nodes),), 3.0, requires_grad=True)  # every gate starts open
        opt = torch.optim.Adam([log_alpha], lr=lr)
        for _ in range(steps):
            u = torch.rand(len(nodes), generator=gen).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((u.log() - (1 - u).log() + log_alpha) / _HC_BETA)  # hard-concrete sample
            gate = (s * (_HC_ZETA - _HC_GAMMA) + _HC_GAMMA).clamp(0.0, 1.0)
            patches = {w: PatchValue(ablated[w], (1 - gate[i]) * eye) for i, w in enumerate(nodes)}
            out = hp.run(ids, nodes=patches, grad=True)
            l0 = torch.sigmoid(log_alpha - _HC_BETA * floor).sum()
            loss = _divergence_torch(model, clean, out, metric) + lam * l0
            opt.zero_grad()
            loss.backward()
            opt.step()
            n_forward += 1
        out_gates[lam] = _final_gates(log_alpha.detach().numpy().astype(np.float64))
    return out_gates, n_forward


FD_STEP = 1e-3  # the engine backend's finite-difference step on a gate


def _sp_engine(
    model: Any,
    runner: Patcher | MixedPatcher,
    nodes: list[str],
    lam: float,
    steps: int,
    lr: float,
    seed: int,
    measure: Any,
) -> np.ndarray:
    """SP's gate training with every forward pass on the engine (gradients by finite differences)."""
    rng = np.random.default_rng(seed)
    clean = runner.clean()
    n = len(nodes)
    floor = float(np.log(-_HC_GAMMA / _HC_ZETA))
    log_alpha = np.full(n, 3.0)
    m, v = np.zeros(n), np.zeros(n)
    b1, b2, eps = 0.9, 0.999, 1e-8  # Adam, as torch.optim.Adam's defaults
    for t in range(1, steps + 1):
        u = rng.uniform(1e-6, 1 - 1e-6, n)
        s = _np_sigmoid((np.log(u) - np.log(1 - u) + log_alpha) / _HC_BETA)  # hard-concrete sample
        raw = s * (_HC_ZETA - _HC_GAMMA) + _HC_GAMMA
        gate = np.clip(raw, 0.0, 1.0)
        nudge = np.where(gate > FD_STEP, -FD_STEP, FD_STEP)
        live = np.flatnonzero((raw > 0) & (raw < 1))  # the clamp passes no gradient outside (0, 1)
        sets = [dict(zip(nodes, gate, strict=True))]
        for i in live:
            g = gate.copy()
            g[i] += nudge[i]
            sets.append(dict(zip(nodes, g, strict=True)))
        d_gate = np.zeros(n)
        if len(live):
            outs = runner.gated_outputs(sets)
            base = measure(model, clean, outs[0])
            for row, i in enumerate(live, start=1):
                d_gate[i] = (measure(model, clean, outs[row]) - base) / nudge[i]
        grad = d_gate * (_HC_ZETA - _HC_GAMMA) * s * (1 - s) / _HC_BETA
        p = _np_sigmoid(log_alpha - _HC_BETA * floor)
        grad += lam * p * (1 - p)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        log_alpha -= lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return _final_gates(log_alpha)


def run_method(
    name: str, model: Any, dataset: Dataset, ablation: str, *, backend: str = "auto", **kwargs: Any
) -> DiscoveryResult:
    """Dispatch by method name (one of METHODS)."""
    if name == "activation_patching":
        return activation_patching(model, dataset, ablation, backend=backend, **kwargs)
    if name == "acdc":
        return acdc(model, dataset, ablation, backend=backend, **kwargs)
    if name == "eap":
        return eap(model, dataset, ablation)
    if name == "eap_ig":
        return eap_ig(model, dataset, ablation, **kwargs)
    if name == "subnetwork_probing":
        sp_backend = "torch" if backend == "torch" else "engine"
        return subnetwork_probing(model, dataset, ablation, backend=sp_backend, **kwargs)
    raise ValueError(f"unknown discovery method {name!r}; expected one of {METHODS}")


def node_scores_to_edges(model: Any, scores: dict[str, float]) -> dict[str, float]:
    """Edge scores from node scores: an edge scores the smaller of its ends (the output counts as +inf)."""
    out = {}
    for e in legal_edges(model.config.n_layers, model.config.n_heads):
        w = scores.get(e.writer, 0.0)
        r = np.inf if e.reader == OUTPUT else scores.get(e.reader, 0.0)
        out[str(e)] = float(min(w, r))
    return out
