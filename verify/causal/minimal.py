"""Minimal faithful circuits: edge sets that keep every output with everything else ablated, and from
which no edge can be dropped.

`necessary_edges` answers "which single edge matters"; a discovery method answers "which small circuit
does the task". This computes one such circuit exactly for a dataset and an ablation:

- faithful: with every edge outside the circuit ablated (the same patch semantics as everywhere here),
  every output position decodes to the clean answer, decided by more than the decision margin (a tie
  counts as changed, as in `necessary_edges`);
- irreducible: removing any one of its edges breaks that.

Search: backward elimination from the full model (every legal edge, so an edge outside the structural
truth whose ablated value would leak into a reader is kept when it must be), trying the edges in order of
their single-ablation effect (least first), repeated until a whole pass removes nothing; each step is one
patched run on the engine. The result is irreducible by construction (the last pass tried removing every
kept edge from this very circuit); tests re-check that independently on the PyTorch module. It is a minimal
circuit, not necessarily a minimum one (the smallest): when several irreducible circuits exist the
search returns the one its order reaches. Necessity is not monotone, so the circuit need not contain
every single-edge-necessary edge (shuffle_dyck under resample: 8 edges, while 10 edges each break an
output when ablated alone; sort_unique on permutations: the empty circuit, since its output is the same
on every input of the dataset); `same_as_necessary` says when the two sets coincide (27 of the 30
library programs under resample). Cost: O(passes x edges) patched runs, a few hundred for the library
programs (13 s for all 30 x 3 ablations on one core).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rasp_compiler.model.outputs import OUTPUT_ATOL, positions_equal
from verify.causal.necessary import necessary_edges
from verify.causal.patcher import Patcher
from verify.circuit import Circuit, Edge, legal_edges
from verify.dataset import CausalError, Dataset, decided_positions, decode_outputs, is_numerical_output
from verify.truth import ground_truth

__all__ = ["MinimalCircuit", "minimal_circuit"]


@dataclasses.dataclass(frozen=True)
class MinimalCircuit:
    """An irreducible faithful circuit for one dataset and ablation (see the module docstring)."""

    ablation: str
    backend: str
    edges: tuple[str, ...]
    circuit: Circuit
    necessary: tuple[str, ...]  # the single-edge-necessary edges (`necessary_edges`)
    n_runs: int  # patched runs the search and its check took
    same_as_necessary: bool  # the circuit is exactly the single-edge-necessary edges

    def __len__(self) -> int:
        return len(self.edges)


def minimal_circuit(
    model: Any,
    dataset: Dataset,
    ablation: str = "resample",
    *,
    backend: str = "auto",
    atol: float = OUTPUT_ATOL,
) -> MinimalCircuit:
    """An irreducible faithful circuit of `model` on `dataset` under `ablation` (module docstring)."""
    needed = necessary_edges(model, dataset, ablation, backend=backend)
    cfg = model.config
    universe = [str(e) for e in legal_edges(cfg.n_layers, cfg.n_heads)]
    runner = Patcher(model, dataset, ablation, backend)
    clean = decode_outputs(model, runner.clean())
    numerical = is_numerical_output(model)

    def faithful(keep: set[str]) -> bool:
        out = runner.outputs([[e for e in universe if e not in keep]])[0]
        decided = decided_positions(model, out)
        got = decode_outputs(model, out)
        same = np.array([positions_equal(a, b, numerical, atol) for a, b in zip(got, clean, strict=True)],
                        dtype=bool).reshape(decided.shape)
        return bool((same & decided).all())

    keep = set(universe)
    order = sorted(universe, key=lambda e: (needed.changed_fraction.get(e, 0.0), Edge.parse(e).sort_key()))
    removed = True
    while removed:
        removed = False
        for e in order:
            if e in keep and faithful(keep - {e}):
                keep.discard(e)
                removed = True
    # irreducible by construction: the last pass tried every kept edge against this very `keep`
    if not faithful(keep):
        raise CausalError("minimal_circuit: even the full model does not keep every output decided on this "
                          "dataset (a clean output within the decision margin)")
    edges = tuple(sorted(keep, key=lambda s: Edge.parse(s).sort_key()))
    truth = ground_truth(model)
    return MinimalCircuit(
        ablation,
        runner.backend,
        edges,
        truth.restricted(list(edges)),
        tuple(needed.edges),
        runner.n_forward,
        set(edges) == set(needed.edges),
    )
