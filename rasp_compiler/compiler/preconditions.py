"""Stage 2b: what the evaluator enforces on values and a model cannot, proven or checked, else refused.

Two things make the evaluator refuse (or answer where a model cannot follow) on some inputs:

1. A categorical Aggregate whose selected positions hold different values (the evaluator raises; a model
   averages their one-hot directions into something no reader decodes).
2. A Select whose keys or queries hold None (an Aggregate that selected nothing, a function returning
   None): the evaluator raises, or hands None to a custom predicate; a model's None has no direction,
   so it matches nothing.

Agreement (1) is proven per categorical Aggregate from the program's structure:

- the aggregated SOp has one possible value;
- some conjunct of the selector (keys K, queries Q) selects at most one position: K differs at every
  pair of positions and each query value selects at most one K value, or the selected K values can only
  come (through Maps and SequenceMaps) from one value of such a unique SOp (the one-flagged-position
  pattern of make_max);
- or some conjunct lets each query value select one K value and the aggregated SOp is a function of K
  (then every selected position holds the same value).

"Differs at every pair of positions" (unique) holds for `indices`, an injective Map of a unique SOp,
a SequenceMap whose value determines a unique argument (make_sort's `x + i / n` keys), and the
SelectorWidth of a total order over a unique SOp (its rank). (2) is proven by value inference (the SOp
cannot be None; `compiler.values`, with `compiler.selectors.always_selects`).

Where no rule settles it and the input space has at most `options.max_exhaustive_inputs` inputs, the
program is evaluated on every one and refused at the first input that breaks a condition; otherwise
the op is refused, naming what would make it provable, unless the program declares agreement on the
op (`Aggregate(...).annotated(agreeing=True)`): the model is then exact on the inputs where it holds
(the evaluator refuses the others), and the annotation records the op as assumed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np

from rasp_compiler import rasp
from rasp_compiler.compiler.graph import ProgramGraph
from rasp_compiler.compiler.options import CompileError, CompilerOptions, UnsupportedProgramError
from rasp_compiler.compiler.selectors import selector_groups
from rasp_compiler.compiler.values import ValueSets
from rasp_compiler.model.values import sort_values

ASSUMED_AGREEMENT = "selected values agree: declared by the program (agreeing=True), not proven"


def check_preconditions(graph: ProgramGraph, values: ValueSets, options: CompilerOptions) -> dict[str, str]:
    """Refuse (naming the op and an input, or the missing proof) a program on which the evaluator would
    refuse some input for a reason a model cannot reproduce. Returns the ops whose agreement is a
    declared, unchecked precondition."""
    unproven = [
        label
        for label in graph.order
        if graph.nodes[label].kind == "aggregate"
        and graph.nodes[label].encoding == "categorical"
        and not _agrees(graph, values, label)
    ]
    none_selects = [
        label
        for label in graph.order
        if graph.nodes[label].kind == "select"
        and any(values[c].may_be_none for c in graph.nodes[label].children)
    ]
    if not unproven and not none_selects:
        return {}
    n_inputs = count_inputs(len(options.vocab), options.max_seq_len)
    program = graph.nodes[graph.output].expr
    if n_inputs > options.max_exhaustive_inputs or not isinstance(program, rasp.RASPExpr):
        why = (
            f"the input space ({n_inputs:,} inputs) is larger than max_exhaustive_inputs "
            f"({options.max_exhaustive_inputs:,})"
            if isinstance(program, rasp.RASPExpr)
            else "the program is not built with rasp_compiler.rasp, so it cannot be evaluated exhaustively"
        )
        if none_selects:
            label = none_selects[0]
            maybe = [c for c in graph.nodes[label].children if values[c].may_be_none]
            raise UnsupportedProgramError(
                f"{label}: Select whose {' and '.join(maybe)} can be None (an Aggregate that may select "
                "nothing, or a function returning None); the evaluator refuses to compare None and a model "
                f"cannot represent it. Nothing proves it never happens and {why}. Give the Aggregate a "
                "selector that always selects, or map None to a value first"
            )
        if all(_declared(graph.nodes[label].expr) for label in unproven):
            return {label: ASSUMED_AGREEMENT for label in unproven}
        first = next(label for label in unproven if not _declared(graph.nodes[label].expr))
        raise UnsupportedProgramError(
            f"{first}: categorical Aggregate that may select positions holding different values of "
            f"{graph.nodes[first].children[1]}, which the evaluator refuses and a model cannot. The "
            f"program's structure does not prove agreement and {why}. Select one key per query (Select "
            "with EQ on a key that differs at every position, such as indices), aggregate a function of "
            "the selector's keys, make the Aggregate numerical, or declare the precondition with "
            "Aggregate(...).annotated(agreeing=True)"
        )
    compared = [(label, c) for label in none_selects for c in dict.fromkeys(graph.nodes[label].children)]
    for tokens in all_inputs(options.vocab, options.max_seq_len):
        try:
            if unproven:
                rasp.evaluate(program, tokens)
            for label, sop in compared:
                if None in rasp.evaluate(graph.nodes[sop].expr, tokens):
                    raise UnsupportedProgramError(
                        f"{label}: on the input {tokens!r} its {sop} holds None, which the evaluator refuses "
                        "to compare (or hands to the predicate) and a model cannot represent; give the "
                        "Aggregate a selector that always selects, or map None to a value first"
                    )
        except rasp.AggregateDisagreementError as e:
            raise UnsupportedProgramError(
                f"the evaluator refuses the input {tokens!r}, so no model can be exact on it: {e}"
            ) from None
        except rasp.RASPEvaluationError:
            continue  # refused for another reason (e.g. a ConstantSOp of another length): not this check's
    return {}


def _declared(expr: Any) -> bool:
    try:
        return expr.annotations.get("agreeing", False) is True
    except Exception:  # noqa: BLE001 - a foreign expression type without annotations declares nothing
        return False


def count_inputs(n_vocab: int, max_seq_len: int) -> int:
    """Number of token sequences of length 1..max_seq_len."""
    return sum(n_vocab**n for n in range(1, max_seq_len + 1))


def all_inputs(vocab: Any, max_seq_len: int) -> Iterator[list[Any]]:
    """Every token sequence of length 1..max_seq_len (shortest first, vocab in sorted order)."""
    tokens = sort_values(vocab)
    for n in range(1, max_seq_len + 1):
        for xs in itertools.product(tokens, repeat=n):
            yield list(xs)


def _agrees(graph: ProgramGraph, values: ValueSets, label: str) -> bool:
    sel, sop = graph.nodes[label].children
    info = values[sop]
    if info.values is not None and len(info.values) + info.may_be_none <= 1:
        return True
    for g in selector_groups(graph, values, label, sel):  # its CompileErrors would refuse the op later anyway

        key_values = values[g.keys].values
        if key_values is None:
            continue
        rows = {frozenset(np.flatnonzero(row).tolist()) for row in g.table}
        if _unique(graph, values, g.keys):  # (decided once, not once per row: it can cost O(n^2))
            one_each = all(len({key_values[i] for i in r}) <= 1 for r in rows)
        else:
            one_each = all(
                _at_most_one_position(graph, values, g.keys, {key_values[i] for i in r}) for r in rows
            )
        if one_each:
            return True  # this conjunct alone lets each query select at most one position
        if all(len(r) <= 1 for r in rows) and _determined_by(graph, values, sop, g.keys):
            return True  # all selected positions hold the same key value, hence the same SOp value
    return False


def _at_most_one_position(graph: ProgramGraph, values: ValueSets, label: str, wanted: set[Any]) -> bool:
    """True when, on every input, at most one position holds a value of the SOp in `wanted`: the SOp is
    unique and `wanted` has one value, or it is a Map or SequenceMap whose values in `wanted` can only
    come from one value of an argument that is (recursively) held at most once."""
    if not wanted:
        return True
    node = graph.nodes[label]
    if _unique(graph, values, label):
        return len(wanted) <= 1
    if node.kind == "map":
        (inner,) = node.children
        xs = values[inner].values
        return xs is not None and _at_most_one_position(
            graph, values, inner, {x for x in xs if node.expr.f(x) in wanted}
        )
    if node.kind in ("sequence_map", "linear_sequence_map"):
        a, b = node.children
        va, vb = values[a].values, values[b].values
        if va is None or vb is None:
            return False
        hits = [(x, y) for x in va for y in vb if node.expr.f(x, y) in wanted]
        return _at_most_one_position(graph, values, a, {x for x, _ in hits}) or _at_most_one_position(
            graph, values, b, {y for _, y in hits}
        )
    return False


def _unique(graph: ProgramGraph, values: ValueSets, label: str) -> bool:
    """True when the SOp's values at any two positions of any input differ (and are never None)."""
    node = graph.nodes[label]
    info = values[label]
    if info.may_be_none or (info.values is None and node.kind != "indices"):
        return False
    if node.kind == "indices":
        return True
    if node.kind == "map":
        (inner,) = node.children
        return _unique(graph, values, inner) and _injective(values, inner, node.expr.f)
    if node.kind in ("sequence_map", "linear_sequence_map"):
        a, b = node.children
        va, vb = values[a].values, values[b].values
        if va is None or vb is None:
            return False
        out = {(x, y): node.expr.f(x, y) for x in va for y in vb}  # total: value inference applied f
        return (_unique(graph, values, a) and _determines(out, 0)) or (
            _unique(graph, values, b) and _determines(out, 1)
        )
    if node.kind == "selector_width":
        return _rank_of_unique(graph, values, node.children[0])
    return False


def _injective(values: ValueSets, inner: str, f: Any) -> bool:
    xs = values[inner].values
    return xs is not None and len({f(x) for x in xs}) == len(xs)


def _determines(out: dict[tuple[Any, Any], Any], arg: int) -> bool:
    """Does the output value determine argument `arg` (0 or 1)?"""
    seen: dict[Any, Any] = {}
    for args, y in out.items():
        if seen.setdefault(y, args[arg]) != args[arg]:
            return False
    return True


def _rank_of_unique(graph: ProgramGraph, values: ValueSets, sel: str) -> bool:
    """A selector over one unique SOp X (keys = queries = X) whose table is a total order on X's values
    (strict or reflexive): the number of selected keys is then the query's rank, distinct per position."""
    node = graph.nodes[sel]
    if node.kind != "select" or node.children[0] != node.children[1]:
        return False
    if not _unique(graph, values, node.children[0]):
        return False
    try:
        (g,) = selector_groups(graph, values, sel, sel)
    except (CompileError, ValueError):
        return False
    t = g.table
    diag = np.diag(t)
    if not (diag.all() or not diag.any()):
        return False
    off = t.copy()
    np.fill_diagonal(off, False)
    if (off & off.T).any() or ((~off) & (~off.T) & ~np.eye(len(t), dtype=bool)).any():
        return False  # not a tournament: some pair compares both ways or neither
    # a tournament is transitive (a total order) exactly when its out-degrees are all distinct
    degrees = off.sum(axis=0)
    return len(set(degrees.tolist())) == len(degrees)


def _determined_by(graph: ProgramGraph, values: ValueSets, sop: str, keys: str) -> bool:
    """Is the SOp's value a function of the keys' value at the same position? (sop is keys, a Map chain
    of keys, or of an SOp that keys is an injective Map chain of.)"""
    sources = {keys}
    k = keys
    while (node := graph.nodes[k]).kind == "map" and _injective(values, node.children[0], node.expr.f):
        k = node.children[0]
        sources.add(k)
    s = sop
    while s not in sources:
        if graph.nodes[s].kind != "map":
            return False
        s = graph.nodes[s].children[0]
    return True
