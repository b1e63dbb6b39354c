"""Selectors as predicate tables: the part of a head's QK that the value sets determine.

A selector is put in negation normal form (Not pushed down by De Morgan) and split into a top-level
conjunction of parts. Parts over the same (keys, queries) SOp pair merge into one boolean table over
(query value, key value); parts over different pairs stay separate groups whose scores add up. An
Or over different pairs is not a sum of pairwise terms, so one head cannot express it: refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from rasp_compiler.compiler.graph import ProgramGraph
from rasp_compiler.compiler.options import CompileError
from rasp_compiler.model.values import is_number


@dataclasses.dataclass(frozen=True)
class Group:
    keys: str
    queries: str
    table: np.ndarray  # [n_query_values, n_key_values] bool
    selectors: tuple[str, ...]


def _conj_parts(graph: ProgramGraph, label: str, neg: bool) -> list[tuple[str, bool]]:
    """Split a selector into parts whose conjunction it is (De Morgan through Not/Or)."""
    n = graph.nodes[label]
    if n.kind == "selector_not":
        return _conj_parts(graph, n.children[0], not neg)
    if (n.kind == "selector_and" and not neg) or (n.kind == "selector_or" and neg):
        return _conj_parts(graph, n.children[0], neg) + _conj_parts(graph, n.children[1], neg)
    return [(label, neg)]


def leaf_pairs(graph: ProgramGraph, label: str) -> set[tuple[str, str]]:
    n = graph.nodes[label]
    if n.kind == "select":
        return {(n.children[0], n.children[1])}
    if n.kind == "constant_selector":
        return {("indices", "indices")}
    return set().union(*(leaf_pairs(graph, c) for c in n.children))


def _selector_labels(graph: ProgramGraph, label: str) -> list[str]:
    n = graph.nodes[label]
    out = [label]
    if n.kind in ("selector_and", "selector_or", "selector_not"):
        for c in n.children:
            out += [x for x in _selector_labels(graph, c) if x not in out]
    return out


def _eval_sel(graph: ProgramGraph, label: str, k: Any, q: Any) -> bool:
    n = graph.nodes[label]
    if n.kind == "select":
        try:
            return bool(n.expr.predicate(k, q))
        except Exception as e:  # noqa: BLE001 - any failure of the user's predicate refuses the program
            raise CompileError(
                f"{label}: its predicate raises {type(e).__name__} ({e}) on key {k!r}, query {q!r}, values "
                "its keys and queries can take; the evaluator refuses such inputs and a compiled model "
                "cannot. Make the predicate total on those values"
            ) from None
    if n.kind == "constant_selector":
        val = n.expr.value
        return bool(q < len(val) and k < len(val[q]) and val[q][k])
    if n.kind == "selector_not":
        return not _eval_sel(graph, n.children[0], k, q)
    a = _eval_sel(graph, n.children[0], k, q)
    b = _eval_sel(graph, n.children[1], k, q)
    return (a and b) if n.kind == "selector_and" else (a or b)


_NUMPY_CMP = {
    "EQ": np.equal,
    "LT": np.less,
    "LEQ": np.less_equal,
    "GT": np.greater,
    "GEQ": np.greater_equal,
    "NEQ": np.not_equal,
}


def _fast_table(graph: ProgramGraph, label: str, kv: Sequence[Any], qv: Sequence[Any]) -> np.ndarray | None:
    """[query, key] table of a Select with a Comparison predicate over numbers, vectorised; else None."""
    n = graph.nodes[label]
    if n.kind != "select":
        return None
    pred = n.expr.predicate
    name = getattr(pred, "name", None)
    if type(pred).__name__ != "Comparison" or name is None:
        return None
    if name == "TRUE":
        return np.ones((len(qv), len(kv)), dtype=bool)
    if name == "FALSE":
        return np.zeros((len(qv), len(kv)), dtype=bool)
    if name not in _NUMPY_CMP or not all(is_number(v) for v in (*kv, *qv)):
        return None
    k = np.array([float(v) for v in kv])[None, :]
    q = np.array([float(v) for v in qv])[:, None]
    if any(float(v) != v for v in (*kv, *qv) if isinstance(v, int)):  # ints too large for floats
        return None
    return _NUMPY_CMP[name](k, q)


def selector_groups(graph: ProgramGraph, values: Any, op_label: str, sel: str) -> list[Group]:
    by_pair: dict[tuple[str, str], list[tuple[str, bool]]] = {}
    for part, neg in _conj_parts(graph, sel, False):
        pairs = leaf_pairs(graph, part)
        if len(pairs) != 1:
            raise CompileError(
                f"{op_label}: selector {part} combines selects over different SOp pairs "
                f"{sorted(pairs)} with Or; one attention head can only take a conjunction of "
                "such parts. Rewrite it as And of parts that each compare one (keys, queries) pair"
            )
        by_pair.setdefault(next(iter(pairs)), []).append((part, neg))
    groups = []
    for (keys, queries), parts in by_pair.items():
        kv = values.require(keys, f"selector {sel}")
        qv = values.require(queries, f"selector {sel}")
        table = np.ones((len(qv), len(kv)), dtype=bool)
        for part, neg in parts:
            t = _fast_table(graph, part, kv, qv)
            if t is None:
                t = np.array([[_eval_sel(graph, part, k, q) for k in kv] for q in qv], dtype=bool)
            table &= t.reshape(len(qv), len(kv)) != neg
        labels = []
        for part, _ in parts:
            labels += _selector_labels(graph, part)
        groups.append(Group(keys, queries, table, tuple(labels)))
    return groups


def always_selects(graph: ProgramGraph, values: Any, sel: str) -> bool:
    """True when every query provably selects at least one key, on every valid input.

    No key or query SOp may be None. Groups whose table is all True then constrain nothing and are
    dropped. Then it suffices that every
    remaining group selects the query's own position (keys and queries the same SOp, reflexive
    table), or that there is one group left and it is over keys `indices` and either every query
    selects index 0, or its queries are never None and always hold an earlier position `v` that
    the query selects (`Select(indices, earlier_position, EQ)`, e.g. `max(i - 1, 0)`).
    """
    try:
        groups = selector_groups(graph, values, sel, sel)
    except CompileError:
        return False
    # a None value has no one-hot features: the head can match nothing at such a position
    if any(values[g.keys].may_be_none or values[g.queries].may_be_none for g in groups):
        return False
    groups = [g for g in groups if not g.table.all()]
    if not groups:
        return True
    if any(g.table.size == 0 for g in groups):
        return False
    if all(g.keys == g.queries and bool(np.diag(g.table).all()) for g in groups):
        return True
    if len(groups) != 1 or groups[0].keys != "indices":
        return False
    g = groups[0]
    if bool(g.table[:, 0].all()):
        return True
    if _selects_within_length(graph, values, g):
        return True
    q = values[g.queries]
    if not q.at_or_before or q.values is None:
        return False
    return all(0 <= v < g.table.shape[1] and bool(g.table[i, v]) for i, v in enumerate(q.values))


def positional_table(graph: ProgramGraph, label: str, n_max: int) -> dict[tuple[int, int], Any] | None:
    """The SOp's value at position i of every input of length L (i < L <= n_max), when it depends only on
    `length`, `indices` and constants (None: it depends on tokens or on an op this does not follow).
    None values propagate through Map and SequenceMap as in the evaluator."""
    node = graph.nodes[label]
    pairs = [(length, i) for length in range(1, n_max + 1) for i in range(length)]
    if node.kind == "indices":
        return {(length, i): i for length, i in pairs}
    if node.kind == "length":
        return {(length, i): length for length, i in pairs}
    if node.kind == "full":
        return {p: node.expr.fill for p in pairs}
    if node.kind == "selector_width" and _selects_everything(graph, node.children[0]):
        return {(length, i): length for length, i in pairs}  # make_length: counts every position
    if node.kind == "map":
        inner = positional_table(graph, node.children[0], n_max)
        if inner is None:
            return None
        return {p: None if x is None else node.expr.f(x) for p, x in inner.items()}
    if node.kind in ("sequence_map", "linear_sequence_map"):
        a = positional_table(graph, node.children[0], n_max)
        b = positional_table(graph, node.children[1], n_max)
        if a is None or b is None:
            return None
        return {p: None if a[p] is None or b[p] is None else node.expr.f(a[p], b[p]) for p in pairs}
    return None


def _selects_everything(graph: ProgramGraph, sel: str) -> bool:
    """A Select with predicate TRUE (over any keys and queries), or a conjunction / disjunction of such."""
    node = graph.nodes[sel]
    if node.kind == "select":
        pred = node.expr.predicate
        return type(pred).__name__ == "Comparison" and getattr(pred, "name", None) == "TRUE"
    if node.kind in ("selector_and", "selector_or"):
        return all(_selects_everything(graph, c) for c in node.children)
    return False


def _selects_within_length(graph: ProgramGraph, values: Any, g: Group) -> bool:
    """Keys `indices`, queries a function of (length, position) only: every query of every input length
    L selects some key k < L (make_reverse's `length - i - 1`)."""
    qv = values[g.queries].values
    n_max = g.table.shape[1]
    try:
        table = positional_table(graph, g.queries, n_max)
    except Exception:  # noqa: BLE001 - value inference already refused functions that raise
        return False
    if table is None or qv is None:
        return False
    row = {v: r for r, v in enumerate(qv)}
    for (length, _), q in table.items():
        if q is None or q not in row or not g.table[row[q], :length].any():
            return False
    return True


def only_selects_earlier(graph: ProgramGraph, values: Any, sel: str) -> bool:
    """True when the selector never selects a key after the query (some group over indices x
    indices has a table with no key > query), so an aggregated earlier-position value stays earlier."""
    try:
        groups = selector_groups(graph, values, sel, sel)
    except CompileError:
        return False
    for g in groups:
        if g.keys == "indices" and g.queries == "indices":
            t = g.table
            n = min(t.shape)
            if not np.triu(t[:n, :n], k=1).any() and not t[:n, n:].any():
                return True
    return False
