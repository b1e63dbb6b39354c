"""Stage 1: RASP program -> `ProgramGraph` (networkx DiGraph of ops, keyed by label, stable ids).

Ops are recognised by class name along the MRO, so programs written with tracr's `rasp` module
compile as well as ours (the attribute names are the same; docs/CONTRACTS.md section 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import networkx as nx

from rasp_compiler import rasp
from rasp_compiler.compiler.options import CompileError, CompilerOptions

_KINDS = (  # most specific first
    ("TokensType", "tokens"),
    ("IndicesType", "indices"),
    ("LengthType", "length"),
    ("LinearSequenceMap", "linear_sequence_map"),
    ("SequenceMap", "sequence_map"),
    ("Map", "map"),
    ("Full", "full"),
    ("ConstantSOp", "constant_sop"),
    ("Aggregate", "aggregate"),
    ("SelectorWidth", "selector_width"),
    ("Select", "select"),
    ("ConstantSelector", "constant_selector"),
    ("SelectorAnd", "selector_and"),
    ("SelectorOr", "selector_or"),
    ("SelectorNot", "selector_not"),
)
SELECTOR_KINDS = frozenset({"select", "constant_selector", "selector_and", "selector_or", "selector_not"})


def op_kind(expr: Any) -> str:
    """The op kind of a RASP expression (`map`, `aggregate`, ...); CompileError if unknown."""
    names = [c.__name__ for c in type(expr).__mro__]
    for cls_name, kind in _KINDS:
        if cls_name in names:
            return kind
    raise CompileError(f"{_label(expr)}: unsupported RASP expression type {type(expr).__name__}")


def encoding_of(expr: Any) -> str | None:
    """'categorical' or 'numerical' for SOps (categorical when unannotated), None for selectors."""
    if op_kind(expr) in SELECTOR_KINDS:
        return None
    enc = expr.annotations.get("encoding", None) if hasattr(expr, "annotations") else None
    if enc is None:
        return "categorical"
    text = str(getattr(enc, "value", enc)).lower()
    if "numerical" in text:
        return "numerical"
    if "categorical" in text:
        return "categorical"
    raise CompileError(f"{_label(expr)}: unknown encoding annotation {enc!r}")


def _label(expr: Any) -> str:
    try:
        return str(expr.label)
    except Exception:  # noqa: BLE001 - only used to name things in errors
        return repr(expr)


@dataclasses.dataclass(frozen=True)
class OpNode:
    """One op of the program: stable id (topological position), label, kind, encoding, children."""

    id: int
    label: str
    kind: str
    encoding: str | None
    children: tuple[str, ...]
    expr: Any = dataclasses.field(compare=False, repr=False)

    @property
    def is_selector(self) -> bool:
        return self.kind in SELECTOR_KINDS


@dataclasses.dataclass(frozen=True)
class ProgramGraph:
    """Ops by label, a topological order (children first), the output label, and the DiGraph.

    Edges of `graph` run child -> parent (data flow).
    """

    nodes: Mapping[str, OpNode]
    order: tuple[str, ...]
    output: str
    graph: nx.DiGraph = dataclasses.field(compare=False, repr=False)

    def node(self, label: str) -> OpNode:
        return self.nodes[label]


def children_of(expr: Any, kind: str) -> list[Any]:
    """Children in a fixed, meaningful order (tracr attribute names)."""
    if kind in ("tokens", "indices", "length", "full", "constant_sop", "constant_selector"):
        return []
    if kind == "map":
        return [expr.inner]
    if kind in ("sequence_map", "linear_sequence_map"):
        return [expr.fst, expr.snd]
    if kind == "aggregate":
        return [expr.selector, expr.sop]
    if kind == "selector_width":
        return [expr.selector]
    if kind == "select":
        return [expr.keys, expr.queries]
    if kind in ("selector_and", "selector_or"):
        return [expr.fst, expr.snd]
    if kind == "selector_not":
        return [expr.inner]
    raise CompileError(f"{_label(expr)}: no children rule for kind {kind}")


def build_graph(program: Any, options: CompilerOptions) -> ProgramGraph:
    """Walk the program from its output. Ops are identified by object; two different ops sharing a
    label (tracr would silently merge them) are told apart by `rasp.distinct_labels` (`<label>#2`, ...)."""
    del options  # same signature as every stage
    try:
        rasp.topological_order(program)  # refuses cycles and non-RASP children, as the evaluator does
    except rasp.RASPError as e:
        raise CompileError(str(e)) from None
    if op_kind(program) in SELECTOR_KINDS:
        raise CompileError(f"{_label(program)}: the program's output must be an SOp, not a selector")
    names: dict[int, str] = {}  # id(expr) -> assigned label
    exprs: list[Any] = []
    # iterative post-order DFS (deep programs must not hit the recursion limit)
    stack: list[tuple[Any, bool]] = [(program, False)]
    while stack:
        expr, expanded = stack.pop()
        if id(expr) in names:
            continue
        kind = op_kind(expr)
        if expanded:
            names[id(expr)] = ""  # labelled below, once the order is complete
            exprs.append(expr)
            continue
        stack.append((expr, True))
        for child in reversed(children_of(expr, kind)):
            if id(child) not in names:
                stack.append((child, False))
    for expr, label in zip(exprs, rasp.distinct_labels(exprs), strict=True):
        names[id(expr)] = label
    nodes: dict[str, OpNode] = {}
    g = nx.DiGraph()
    order = []
    for i, expr in enumerate(exprs):
        label = names[id(expr)]
        kind = op_kind(expr)
        kids = tuple(names[id(c)] for c in children_of(expr, kind))
        nodes[label] = OpNode(i, label, kind, encoding_of(expr), kids, expr)
        order.append(label)
        g.add_node(label, id=i)
        for c in kids:
            g.add_edge(c, label)
    return ProgramGraph(nodes=nodes, order=tuple(order), output=names[id(program)], graph=g)
