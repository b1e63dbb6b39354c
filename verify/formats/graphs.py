"""Circuits from edge or node names over a model's graph: the walk every reader of a tool's output ends in."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from verify.circuit import (
    OUTPUT,
    Circuit,
    CircuitError,
    Edge,
    ModelGraph,
    as_edge,
    check_edge,
    check_node,
    legal_edges,
    node_sort_key,
)
from verify.truth import annotation_dict, model_graph

__all__ = ["MERGED", "check_named", "circuit_from_groups", "from_edges", "from_nodes", "graph_of"]


MERGED = "<resid_start>"  # stands for embed + pos_embed in forms that merge them


def graph_of(model: Any, output: str | None = None) -> ModelGraph:
    """The ModelGraph behind a CompiledModel, a ModelGraph, or a Circuit that carries one."""
    if isinstance(model, ModelGraph):
        if output is not None and output != model.output:
            raise CircuitError(f"the model graph is for output {model.output!r}, not {output!r}")
        return model
    if isinstance(model, Circuit):
        if model.model_graph is None:
            raise CircuitError("this Circuit carries no model graph; pass the CompiledModel instead")
        return graph_of(model.model_graph, output)

    method = "annotation" if annotation_dict(model) is not None else "weights"
    return model_graph(model, output, method)


def from_edges(model: Any, edges: Iterable[Edge | str | tuple], output: str | None = None) -> Circuit:
    """The canonical circuit holding exactly the edges named (our `w->r<in>` form or Edge objects)."""
    g = graph_of(model, output)
    return circuit_from_groups(g, [[as_edge(e)] for e in edges])


def from_nodes(model: Any, nodes: Iterable[str], output: str | None = None) -> Circuit:
    """The canonical circuit of a set of components: every overlapping edge among them used by the output."""
    g = graph_of(model, output)
    names = set()
    for n in nodes:
        check_node(n, g.n_layers, g.n_heads)
        if n != OUTPUT:
            names.add(n)
    allowed = [
        e
        for e in legal_edges(g.n_layers, g.n_heads)
        if e.writer in names and (e.reader in names or e.reader == OUTPUT)
    ]
    return g.circuit(allowed, extra_nodes=sorted(names, key=node_sort_key))


def circuit_from_groups(g: ModelGraph, groups: list[list[Edge]]) -> Circuit:
    expanded = []
    for group in groups:
        concrete = []
        for e in group:
            writers = ["embed", "pos_embed"] if e.writer == MERGED else [e.writer]
            for w in writers:
                ce = Edge(w, e.reader, e.input)
                check_edge(ce, g.n_layers, g.n_heads)
                concrete.append(ce)
        expanded.append(concrete)
    allowed = {e for grp in expanded for e in grp}
    return g.circuit(allowed, groups=expanded)


def check_named(e: Edge, g: ModelGraph, what: str) -> None:
    writers = ["embed", "pos_embed"] if e.writer == MERGED else [e.writer]
    for w in writers:
        try:
            check_edge(Edge(w, e.reader, e.input), g.n_layers, g.n_heads)
        except CircuitError as err:
            raise CircuitError(f"{what}: {err}") from None
