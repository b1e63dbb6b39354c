"""Circuits of compiled models: components, edges between them, and the variables each edge carries.

Vocabulary (docs/CONTRACTS.md section 6). Nodes are `"embed"` (token embedding, which also writes
`one`), `"pos_embed"`, `"L{l}.H{h}"`, `"L{l}.MLP"` and `"output"`. An edge is `(writer, reader,
input)` with `input` one of `q`, `k`, `v` (heads) or `in` (MLPs and the output); it carries the set
of residual labels the writer writes and the reader reads on that input.

Three granularities:

* node level: the set of components (the output node is always present and never scored);
* edge level: the set of edges, q/k/v inputs apart;
* subspace level: the set of (edge, residual label) pairs: which variable travels on each edge.

Below a node sits a *part*: one RASP op inside one component (an MLP hosts several ops in disjoint
neuron ranges; the token embedding writes `tokens` and `one`). The ground truth is computed over
parts, so that an op sharing an MLP with the circuit's op does not drag its own inputs into the
circuit, and is then projected to nodes and edges. `ModelGraph` holds every part of a model and
every part-to-part edge (nonzero read-write overlap); `ModelGraph.circuit` walks back from the
output. `verify.truth` builds a `ModelGraph` from the annotation or from the weights alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx
import numpy as np

from rasp_compiler.model import names
from rasp_compiler.model.directions import Direction, label_variables, variable_of
from rasp_compiler.model.names import HEAD_INPUTS, INPUTS, OUTPUT

__all__ = [
    "Circuit",
    "CircuitError",
    "Edge",
    "LEVELS",
    "ModelGraph",
    "Part",
    "edge_is_legal",
    "flag_value",
    "score_value",
    "legal_edges",
    "model_nodes",
    "node_kind",
    "node_sort_key",
    "variable_of",
]

LEVELS = ("node", "edge", "subspace")


class CircuitError(ValueError):
    """A circuit, edge or component name is malformed or does not fit the model."""


# ----------------------------------------------------------------------------------------------- names


def node_kind(name: str) -> tuple[str, int | None, int | None]:
    """`(kind, layer, head)` of a node name; kind is embed, pos_embed, attn, mlp or output."""
    try:
        return names.parse_component(name)
    except names.ComponentNameError as e:
        raise CircuitError(str(e)) from None


def node_sort_key(name: str) -> tuple:
    """Order of the residual stream: embeddings, then per layer heads then MLP, then output."""
    kind, layer, head = node_kind(name)
    if kind == "embed":
        return (-1, 0, 0)
    if kind == "pos_embed":
        return (-1, 1, 0)
    if kind == "attn":
        return (layer, 0, head)
    if kind == "mlp":
        return (layer, 1, 0)
    return (math.inf, 0, 0)


def model_nodes(n_layers: int, n_heads: int) -> list[str]:
    """Every component of a model in residual-stream order (heads as TransformerLens sees them)."""
    return names.components(n_layers, n_heads)


def check_node(name: str, n_layers: int, n_heads: int) -> None:
    """Raise CircuitError if the model (n_layers, n_heads) has no component `name`."""
    try:
        names.check_component(name, n_layers, n_heads)
    except names.ComponentNameError as e:
        raise CircuitError(str(e)) from None


@dataclasses.dataclass(frozen=True, order=True)
class Edge:
    """One edge: `writer` writes into the residual stream, `reader` reads it on `input`."""

    writer: str
    reader: str
    input: str

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise CircuitError(
                f"edge {self.writer}->{self.reader}: input {self.input!r} is not one of {INPUTS}"
            )

    def __str__(self) -> str:
        return names.edge_name(self.writer, self.reader, self.input)

    @classmethod
    def parse(cls, text: str) -> Edge:
        """Inverse of `str(edge)`: `"L0.H1->L2.MLP<in>"`."""
        try:
            return cls(*names.parse_edge(text))
        except names.ComponentNameError as e:
            raise CircuitError(str(e)) from None

    def sort_key(self) -> tuple:
        return (node_sort_key(self.reader), INPUTS.index(self.input), node_sort_key(self.writer))


def as_edge(item: Edge | str | tuple) -> Edge:
    """An Edge from an Edge, its string form, or a `(writer, reader, input)` tuple."""
    if isinstance(item, Edge):
        return item
    try:
        return Edge(*names.edge_parts(item))
    except names.ComponentNameError as e:
        raise CircuitError(str(e)) from None


def edge_is_legal(edge: Edge) -> bool:
    """Whether the reader runs after the writer and the input fits the reader."""
    wk, wl, _ = node_kind(edge.writer)
    rk, rl, _ = node_kind(edge.reader)
    if wk == OUTPUT or rk in ("embed", "pos_embed"):
        return False
    if (rk == "attn") != (edge.input in HEAD_INPUTS):
        return False
    if wk in ("embed", "pos_embed") or rk == OUTPUT:
        return True
    if rk == "attn":
        return wl < rl
    # MLP reader: earlier layers, and heads of its own layer.
    return wl < rl or (wl == rl and wk == "attn")


def check_edge(edge: Edge, n_layers: int, n_heads: int) -> None:
    """Raise CircuitError naming the edge if the model lacks a component or the edge is impossible."""
    for name in (edge.writer, edge.reader):
        try:
            check_node(name, n_layers, n_heads)
        except CircuitError as e:
            raise CircuitError(f"edge {edge}: {e}") from None
    if not edge_is_legal(edge):
        raise CircuitError(
            f"edge {edge} cannot exist: the reader does not run after the writer, "
            f"or the input does not fit the reader"
        )


def legal_edges(n_layers: int, n_heads: int) -> list[Edge]:
    """Every edge a model of this shape has (the complete graph ACDC and auto-circuit start from)."""
    nodes = model_nodes(n_layers, n_heads)
    out = []
    for reader in nodes:
        rk = node_kind(reader)[0]
        if rk in ("embed", "pos_embed"):
            continue
        inputs = HEAD_INPUTS if rk == "attn" else ("in",)
        for inp in inputs:
            for writer in nodes:
                e = Edge(writer, reader, inp)
                if edge_is_legal(e):
                    out.append(e)
    return sorted(out, key=Edge.sort_key)


def score_value(value: Any, where: str) -> float:
    """A discovered-circuit score as a float: a real, finite number, never a bool or a string (one rule
    for every reader, so a NaN or a "0.3" never ranks silently)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CircuitError(f"{where}: score {value!r} is not a number")
    if not math.isfinite(float(value)):
        raise CircuitError(f"{where}: score {value!r} is not finite")
    return float(value)


def flag_value(value: Any, where: str) -> bool:
    """A membership flag: `True`/`False` only (also numpy bools, or an object whose `.present` is one),
    so that the string "false" or a 0/1 never counts by Python truthiness."""
    if hasattr(value, "present") and not isinstance(value, (bool, np.bool_)):
        value = value.present
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise CircuitError(f"{where}: flag {value!r} is not a boolean (true or false)")


# ----------------------------------------------------------------------------------------------- parts


@dataclasses.dataclass(frozen=True)
class Part:
    """One RASP op inside one component: what it writes and what it reads on each input."""

    node: str
    op: str
    writes: frozenset[str]
    reads: Mapping[str, frozenset[str]]
    neurons: tuple[int, int] | None = None
    extra_ops: frozenset[str] = frozenset()  # selectors folded into a head's QK, fused ops

    @property
    def key(self) -> tuple[str, str]:
        return (self.node, self.op)


@dataclasses.dataclass
class ModelGraph:
    """Every part of one model (for one output) and every part-to-part edge with the labels it carries.

    `sub_edges[(writer_key, reader_key, input)]` is the set of residual labels the writer part writes
    and the reader part reads on `input`; an entry exists only where the overlap is nonzero.
    """

    n_layers: int
    n_heads: int
    d_model: int
    output: str
    parts: dict[tuple[str, str], Part]
    sub_edges: dict[tuple[tuple[str, str], tuple[str, str], str], frozenset[str]]
    method: str = ""
    heads_per_layer: list[int] | None = None  # real (unpadded) heads, for drawing

    def __post_init__(self) -> None:
        self._into: dict[tuple[str, str], list] = defaultdict(list)
        self._node_labels: dict[Edge, set[str]] = defaultdict(set)
        self._node_parts: dict[str, list[Part]] = defaultdict(list)
        for part in self.parts.values():
            check_node(part.node, self.n_layers, self.n_heads)
            self._node_parts[part.node].append(part)
        for (w, r, inp), labels in self.sub_edges.items():
            e = Edge(w[0], r[0], inp)
            check_edge(e, self.n_layers, self.n_heads)
            self._into[r].append((w, inp, labels))
            self._node_labels[e] |= labels
        if (OUTPUT, self.output) not in self.parts:
            raise CircuitError(f"model graph has no output part for {self.output!r}")

    def node_labels(self, edge: Edge) -> frozenset[str]:
        """Labels the whole writer component writes and the whole reader component reads."""
        return frozenset(self._node_labels.get(edge, ()))

    def node_has_overlap(self, edge: Edge) -> bool:
        return edge in self._node_labels

    def parts_of(self, node: str) -> list[Part]:
        return list(self._node_parts.get(node, ()))

    def circuit(
        self,
        allowed: Iterable[Edge] | None = None,
        *,
        groups: Iterable[Iterable[Edge]] = (),
        extra_nodes: Iterable[str] = (),
    ) -> Circuit:
        """The circuit of the output, walking back over part edges whose projection is `allowed`.

        `allowed=None` allows every edge: that is the ground truth. `groups` are sets of edges that
        stand for one edge of a coarser form (auto-circuit's `Resid Start` is embed + pos_embed):
        when no edge of a group is realised by the walk, the group's edges with nonzero overlap (or
        all of them, if none overlaps) are added with their component-level labels, so that a
        discovered edge disconnected from the output still shows up (as a false positive).
        `extra_nodes` are components to include even where the walk does not reach them.
        """
        allowed_set = None if allowed is None else set(allowed)
        start = (OUTPUT, self.output)
        active = {start}
        stack = [start]
        realised: dict[Edge, set[str]] = defaultdict(set)
        while stack:
            reader = stack.pop()
            for writer, inp, labels in self._into.get(reader, ()):
                e = Edge(writer[0], reader[0], inp)
                if allowed_set is not None and e not in allowed_set:
                    continue
                realised[e] |= labels
                if writer not in active:
                    active.add(writer)
                    stack.append(writer)
        nodes: dict[str, dict[str, tuple[int, int] | None]] = {OUTPUT: {}}
        extras: dict[str, set[str]] = defaultdict(set)

        def add_part(part: Part) -> None:
            nodes.setdefault(part.node, {})[part.op] = part.neurons
            extras[part.node] |= part.extra_ops

        for key in active:
            add_part(self.parts[key])
        edges = {e: frozenset(v) for e, v in realised.items()}
        for group in groups:
            group = list(group)
            if any(e in edges for e in group):
                continue
            chosen = [e for e in group if self.node_has_overlap(e)] or group
            for e in chosen:
                labels = self.node_labels(e)
                edges[e] = labels
                for name in (e.writer, e.reader):
                    nodes.setdefault(name, {})
                for part in self.parts_of(e.writer):
                    if part.writes & labels:
                        add_part(part)
                for part in self.parts_of(e.reader):
                    if part.reads.get(e.input, frozenset()) & labels:
                        add_part(part)
        for name in extra_nodes:
            if name not in nodes:
                nodes[name] = {}
                for part in self.parts_of(name):
                    add_part(part)
        return Circuit(
            self.output,
            nodes,
            edges,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_model=self.d_model,
            extra_ops={k: frozenset(v) for k, v in extras.items() if v},
            model_graph=self,
            method=self.method,
        )


# ----------------------------------------------------------------------------------------------- circuit


class Circuit:
    """A circuit for one output of one model: a typed networkx MultiDiGraph plus its canonical sets.

    `nodes[name]` maps each RASP op the component contributes to its MLP neuron range `(start, end)`
    (or None for heads and embeddings). `edges[Edge]` is the frozenset of residual labels carried.
    Equality compares the output, the model shape, nodes with their ops and neuron ranges, and edges
    with their labels; `extra_ops` (selector labels folded into heads, fused ops) is descriptive and
    not compared, since the weights alone cannot name a selector. `approximate` / `accuracy`: set by
    `ground_truth` for compressed models (the truth holds up to that accuracy).
    """

    approximate: bool = False
    accuracy: float | None = None

    def __init__(
        self,
        output: str,
        nodes: Mapping[str, Mapping[str, tuple[int, int] | None]],
        edges: Mapping[Edge, Iterable[str]],
        *,
        n_layers: int,
        n_heads: int,
        d_model: int | None = None,
        extra_ops: Mapping[str, Iterable[str]] | None = None,
        model_graph: ModelGraph | None = None,
        method: str = "",
    ) -> None:
        self.output = str(output)
        self.n_layers = int(n_layers)
        self.n_heads = int(n_heads)
        self.d_model = None if d_model is None else int(d_model)
        self.method = method
        self.model_graph = model_graph
        node_map: dict[str, dict[str, tuple[int, int] | None]] = {OUTPUT: {}}
        for name, ops in nodes.items():
            check_node(name, self.n_layers, self.n_heads)
            node_map[name] = {
                str(op): (None if rng is None else (int(rng[0]), int(rng[1])))
                for op, rng in dict(ops).items()
            }
        edge_map: dict[Edge, frozenset[str]] = {}
        for e, labels in edges.items():
            e = as_edge(e)
            check_edge(e, self.n_layers, self.n_heads)
            edge_map[e] = frozenset(labels)
            node_map.setdefault(e.writer, {})
            node_map.setdefault(e.reader, {})
        self._nodes = {k: node_map[k] for k in sorted(node_map, key=node_sort_key)}
        self._edges = {k: edge_map[k] for k in sorted(edge_map, key=Edge.sort_key)}
        self.extra_ops = {k: frozenset(v) for k, v in (extra_ops or {}).items()}
        g = nx.MultiDiGraph(output=self.output, n_layers=self.n_layers, n_heads=self.n_heads)
        for name, ops in self._nodes.items():
            kind, layer, head = node_kind(name)
            g.add_node(
                name,
                kind=kind,
                layer=layer,
                head=head,
                ops=dict(ops),
                extra_ops=sorted(self.extra_ops.get(name, ())),
            )
        for e, labels in self._edges.items():
            g.add_edge(e.writer, e.reader, key=e.input, labels=labels)
        self.graph = g

    # -- views

    @property
    def nodes(self) -> dict[str, dict[str, tuple[int, int] | None]]:
        return {k: dict(v) for k, v in self._nodes.items()}

    @property
    def edges(self) -> dict[Edge, frozenset[str]]:
        return dict(self._edges)

    def node_names(self, *, include_output: bool = False) -> list[str]:
        return [n for n in self._nodes if include_output or n != OUTPUT]

    def items(self, level: str = "edge") -> set[str]:
        """The circuit at a granularity, as names: nodes (no output), edges, or `edge:label` subspaces."""
        if level == "node":
            return set(self.node_names())
        if level == "edge":
            return {str(e) for e in self._edges}
        if level == "subspace":
            return {f"{e}:{lab}" for e, labels in self._edges.items() for lab in labels}
        raise CircuitError(f"unknown level {level!r}; expected one of {LEVELS}")

    def universe(self, level: str = "edge") -> set[str]:
        """Every item of the model at a granularity (what a discovery method chooses from)."""
        if level == "node":
            return {n for n in model_nodes(self.n_layers, self.n_heads) if n != OUTPUT}
        if level == "edge":
            return {str(e) for e in legal_edges(self.n_layers, self.n_heads)}
        if level == "subspace":
            if self.model_graph is None:
                raise CircuitError("the subspace universe needs the model graph (use verify.ground_truth)")
            return {
                f"{e}:{lab}"
                for e in legal_edges(self.n_layers, self.n_heads)
                for lab in self.model_graph.node_labels(e)
            }
        raise CircuitError(f"unknown level {level!r}; expected one of {LEVELS}")

    def ops(self) -> dict[str, list[str]]:
        """RASP op -> the components implementing it (MLP parts as `L1.MLP[0:12]`); selectors included."""
        out: dict[str, list[str]] = defaultdict(list)
        for name, ops in self._nodes.items():
            if name == OUTPUT:
                continue
            for op, rng in ops.items():
                out[op].append(name if rng is None else f"{name}[{rng[0]}:{rng[1]}]")
            for op in sorted(self.extra_ops.get(name, ())):
                if name not in out[op]:
                    out[op].append(name)
        return {k: out[k] for k in sorted(out)}

    def all_ops(self) -> set[str]:
        """Every RASP op (and selector) some component of the circuit implements."""
        return set(self.ops())

    def inputs_of(self, node: str) -> dict[str, set[str]]:
        """Input name -> labels read on it through circuit edges."""
        out: dict[str, set[str]] = defaultdict(set)
        for e, labels in self._edges.items():
            if e.reader == node:
                out[e.input] |= labels
        return dict(out)

    def writes_of(self, node: str) -> set[str]:
        out: set[str] = set()
        for e, labels in self._edges.items():
            if e.writer == node:
                out |= labels
        return out

    # -- derived circuits

    def restricted(self, keep: Iterable[Edge | str]) -> Circuit:
        """The canonical circuit (re-derived from the model graph) holding only the edges `keep`."""
        if self.model_graph is None:
            raise CircuitError("restricted() needs the model graph (use verify.ground_truth)")
        keep_set = {as_edge(e) for e in keep}
        return self.model_graph.circuit(keep_set, groups=[[e] for e in sorted(keep_set, key=Edge.sort_key)])

    # -- comparison and display

    def _key(self) -> tuple:
        return (
            self.output,
            self.n_layers,
            self.n_heads,
            tuple((k, tuple(sorted(v.items()))) for k, v in self._nodes.items()),
            tuple((k, tuple(sorted(v))) for k, v in self._edges.items()),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Circuit):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def diff(self, other: Circuit) -> str:
        """A readable list of what differs (empty when equal): used in test failure messages."""
        lines = []
        if (self.output, self.n_layers, self.n_heads) != (other.output, other.n_layers, other.n_heads):
            lines.append(
                f"output/shape: {(self.output, self.n_layers, self.n_heads)} vs "
                f"{(other.output, other.n_layers, other.n_heads)}"
            )
        for n in sorted(set(self._nodes) | set(other._nodes), key=node_sort_key):
            a, b = self._nodes.get(n), other._nodes.get(n)
            if a != b:
                lines.append(f"node {n}: {a} vs {b}")
        for e in sorted(set(self._edges) | set(other._edges), key=Edge.sort_key):
            a, b = self._edges.get(e), other._edges.get(e)
            if a != b:
                lines.append(
                    f"edge {e}: {None if a is None else sorted(a)} vs {None if b is None else sorted(b)}"
                )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Circuit(output={self.output!r}, nodes={len(self._nodes) - 1}, edges={len(self._edges)}, "
            f"n_layers={self.n_layers}, n_heads={self.n_heads})"
        )

    def describe(self) -> str:
        """A table: component, RASP op(s), what it reads per input, what it writes (by variable)."""
        rows = [("component", "RASP op", "reads", "writes")]
        for name, ops in self._nodes.items():
            op_text = ", ".join(
                op if rng is None else f"{op}[{rng[0]}:{rng[1]}]" for op, rng in sorted(ops.items())
            )
            extra = sorted(self.extra_ops.get(name, ()))
            if extra:
                op_text += f" (+{', '.join(extra)})"
            if name == OUTPUT:
                op_text = self.output
            reads = "; ".join(
                f"{inp}: {summarize_labels(labs)}"
                for inp, labs in sorted(self.inputs_of(name).items(), key=lambda kv: INPUTS.index(kv[0]))
            )
            writes = summarize_labels(self.writes_of(name))
            rows.append((name, op_text or "-", reads or "-", writes or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def summarize_labels(labels: Iterable[str]) -> str:
    """Group residual labels by variable: `tokens{a,b}, indices{0,1}, one`."""
    labels = list(labels)
    groups: dict[str, list[str]] = defaultdict(list)
    known = label_variables(labels)
    for lab in labels:
        d = Direction.parse(lab, known)
        groups[d.variable].append(d.value if d.value is not None else "" if d.role is None else f"__{d.role}")
    parts = []
    for var in sorted(groups):
        vals = sorted(v for v in groups[var] if v)
        parts.append(var if not vals else f"{var}{{{','.join(vals)}}}")
    return ", ".join(parts)
