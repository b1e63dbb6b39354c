"""Structural-truth edges that carry exactly nothing: the writer's output, read through the reader's
weights, is zero at every position of every input.

The structural truth comes from the weights (a writer writes directions a reader reads), so it can hold
an edge whose writer never puts anything in those directions (a head whose value is zero wherever it
attends, an MLP neuron range that never fires there). Such an edge is in no circuit any method could
find. `dead_edges` runs the model on every input (when there are at most `max_inputs`; otherwise it
claims nothing, as "dead" must hold over the whole input space) and names them, each with its reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rasp_compiler.compiler.preconditions import all_inputs, count_inputs
from rasp_compiler.model.names import writer_hook
from verify.circuit import Circuit, Edge, node_kind
from verify.features import cached_runs
from verify.truth import ground_truth

__all__ = ["DeadEdges", "dead_edges"]

DEAD_TOL = 1e-6  # relative to the reader weight's largest entry times the writer's largest output


@dataclasses.dataclass(frozen=True)
class DeadEdges:
    """Edges of the structural truth that are zero on every input (`edges`: name -> reason); `exhaustive`
    False means the input space was too large to enumerate and nothing is claimed."""

    edges: dict[str, str]
    exhaustive: bool
    n_inputs: int

    def live(self, truth: Circuit) -> Circuit:
        """The structural truth without its dead edges."""
        return truth.restricted([e for e in truth.items("edge") if e not in self.edges])


def _inputs(model: Any, max_inputs: int) -> list[list[Any]] | None:
    """Every input (lengths 1..max_seq_len), or None when there are more than `max_inputs`."""
    vocab, n = model.codec.vocab, int(model.config.max_seq_len)
    return None if count_inputs(len(vocab), n) > max_inputs else list(all_inputs(vocab, n))


def _read_matrix(model: Any, reader: str, inp: str) -> np.ndarray:
    w = model.weights
    kind, layer, head = node_kind(reader)
    if kind == "output":
        return np.asarray(w["W_U"])
    if kind == "mlp":
        return np.asarray(w[f"blocks.{layer}.mlp.W_in"])
    return np.asarray(w[f"blocks.{layer}.attn.W_{inp.upper()}"][head])


def dead_edges(model: Any, max_inputs: int = 20_000, output: str | None = None) -> DeadEdges:
    """The structural truth's edges that carry exactly zero on every input (module docstring)."""
    truth = ground_truth(model, output)
    inputs = _inputs(model, max_inputs)
    if inputs is None:
        return DeadEdges({}, False, 0)
    edges = [Edge.parse(e) if isinstance(e, str) else e for e in truth.items("edge")]
    if not edges:
        return DeadEdges({}, True, len(inputs))
    reads = {e: _read_matrix(model, e.reader, e.input) for e in edges}  # once, not per length
    peak: dict[str, float] = {}
    for _, cache in cached_runs(model, inputs, sorted({writer_hook(e.writer)[0] for e in edges})):
        for e in edges:
            hook, head = writer_hook(e.writer)
            out = np.asarray(cache[hook])  # every position: BOS is a key and a value heads read
            if head is not None:
                out = out[:, :, head]
            read = reads[e]
            signal = float(np.abs(out @ read).max(initial=0.0))
            scale = float(np.abs(read).max(initial=0.0)) * max(float(np.abs(out).max(initial=0.0)), 1.0)
            peak[str(e)] = max(peak.get(str(e), 0.0), signal / scale if scale else 0.0)
    dead = {
        e: (f"dead: the writer's output read through the reader's weights is zero on all {len(inputs):,} "
            "inputs (the weights connect them; the values never do)")
        for e, p in peak.items() if p <= DEAD_TOL
    }
    return DeadEdges(dead, True, len(inputs))
