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
    q = values[g.queries]
    if not q.at_or_before or q.values is None:
        return False
    return all(0 <= v < g.table.shape[1] and bool(g.table[i, v]) for i, v in enumerate(q.values))


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
