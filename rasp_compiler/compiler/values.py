"""Stage 2: value-set inference. Each SOp's finite set of values, computed exactly.

Numerical Aggregate values are every achievable mean (of 1..max_seq_len selected values, plus the
default 0 when nothing is selected), computed with Fractions. A set that would exceed
`options.max_value_set` is marked unknown (`values is None`); the stages that need it refuse then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from rasp_compiler.compiler.graph import ProgramGraph
from rasp_compiler.compiler.options import CompileError, CompilerOptions
from rasp_compiler.compiler.selectors import always_selects, only_selects_earlier
from rasp_compiler.model.values import is_number, sort_values


@dataclasses.dataclass(frozen=True)
class ValueInfo:
    """Sorted distinct values of one SOp (None: too many to enumerate); can it be None (nothing selected)?"""

    values: tuple[Any, ...] | None
    may_be_none: bool = False
    # at every position i where it is not None, the value is an int in [0, i] (an earlier position)
    at_or_before: bool = False


@dataclasses.dataclass(frozen=True)
class ValueSets:
    info: Mapping[str, ValueInfo]

    def __getitem__(self, label: str) -> ValueInfo:
        return self.info[label]

    def require(self, label: str, why: str) -> tuple[Any, ...]:
        vals = self.info[label].values
        if vals is None:
            raise CompileError(
                f"{label}: its value set is larger than max_value_set, but {why} needs it "
                "enumerated; raise CompilerOptions.max_value_set or simplify the program"
            )
        return vals


def _apply(label: str, f: Any, *args: Any) -> Any:
    """f(*args) on values its inputs can take. The evaluator refuses an input on which an op's function
    raises or returns an unhashable value, and a model cannot refuse, so the compiler does."""
    try:
        y = f(*args)
    except Exception as e:  # noqa: BLE001 - any failure of the user's function refuses the program
        shown = repr(args[0]) if len(args) == 1 else repr(args)
        raise CompileError(
            f"{label}: its function raises {type(e).__name__} ({e}) on input {shown}, a value its input "
            "can take; the evaluator refuses such inputs and a compiled model cannot. Make the function "
            "total on its inputs' values"
        ) from None
    try:
        hash(y)
    except TypeError:
        raise CompileError(f"{label}: its function returns the unhashable value {y!r} on input "
                           f"{args!r}; RASP values must be hashable") from None
    return y


def _numeric_means(vals: tuple[Any, ...], n_max: int, limit: int, label: str) -> tuple[Any, ...] | None:
    """Every mean of a multiset of 1..n_max elements of vals, plus 0; None when over `limit`."""
    if not all(is_number(v) for v in vals):
        raise CompileError(f"{label}: numerical Aggregate of non-numeric values {list(vals)[:5]}")
    fr = sorted({Fraction(v) for v in vals})
    if not fr:
        return (0,)
    sums: set[Fraction] = {Fraction(0)}
    means: set[Fraction] = {Fraction(0)}
    for n in range(1, n_max + 1):
        sums = {s + v for s in sums for v in fr}
        if len(sums) > limit:
            return None
        means.update(s / n for s in sums)
        if len(means) > limit:
            return None
    return tuple(sorted(_to_number(m) for m in means))


def _is_index(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _to_number(m: Fraction) -> int | float:
    return int(m) if m.denominator == 1 else float(m)


def infer_values(graph: ProgramGraph, options: CompilerOptions) -> ValueSets:
    """Value sets of every SOp, children before parents."""
    n_max = options.max_seq_len
    info: dict[str, ValueInfo] = {
        "tokens": ValueInfo(tuple(sort_values(options.vocab))),
        "indices": ValueInfo(tuple(range(n_max))),
    }
    for label in graph.order:
        node = graph.nodes[label]
        kind, expr = node.kind, node.expr
        if node.is_selector:
            continue
        kids = [info.get(c) for c in node.children]
        if kind == "tokens":
            vi = ValueInfo(tuple(sort_values(options.vocab)))
        elif kind == "indices":
            vi = ValueInfo(tuple(range(n_max)), at_or_before=True)
        elif kind == "length":
            vi = ValueInfo(tuple(range(1, n_max + 1)))
        elif kind == "selector_width":
            vi = ValueInfo(tuple(range(n_max + 1)))
        elif kind == "full":
            vi = ValueInfo((expr.fill,))
        elif kind == "constant_sop":
            vi = ValueInfo(tuple(sort_values(expr.value[:n_max])))
        elif kind == "map":
            inner = kids[0]
            if inner.values is None:
                vi = ValueInfo(None, inner.may_be_none)
            else:
                pairs = [(x, _apply(label, expr.f, x)) for x in inner.values]
                before = inner.at_or_before and all(
                    y is None or (_is_index(y) and 0 <= y <= x) for x, y in pairs
                )
                none = inner.may_be_none or any(y is None for _, y in pairs)  # None is a value
                vi = ValueInfo(tuple(sort_values({y for _, y in pairs if y is not None})), none, before)
        elif kind in ("sequence_map", "linear_sequence_map"):
            a, b = kids
            none = a.may_be_none or b.may_be_none
            if a.values is None or b.values is None:
                vi = ValueInfo(None, none)
            elif len(a.values) * len(b.values) > options.max_value_set:
                raise CompileError(
                    f"{label}: SequenceMap over {len(a.values)} x {len(b.values)} value pairs "
                    "exceeds the compiler's limits"
                )
            else:
                out = {_apply(label, expr.f, x, y) for x in a.values for y in b.values}
                vi = ValueInfo(tuple(sort_values(v for v in out if v is not None)), none or None in out)
        elif kind == "aggregate":
            sop = kids[1]
            if node.encoding == "categorical":
                so_far = ValueSets(info)
                selects = always_selects(graph, so_far, node.children[0])
                before = sop.at_or_before and only_selects_earlier(graph, so_far, node.children[0])
                vi = ValueInfo(sop.values, sop.may_be_none or not selects, before)
            elif sop.values is None:
                vi = ValueInfo(None, False)
            else:
                vi = ValueInfo(_numeric_means(sop.values, n_max, options.max_value_set, label), False)
        else:
            raise CompileError(f"{label}: no value rule for {kind}")
        if (
            node.encoding == "numerical"
            and kind != "aggregate"
            and vi.may_be_none
            and not options.none_as_zero
        ):
            src = next(c for c in node.children if info.get(c) is not None and info[c].may_be_none)
            raise CompileError(
                f"{label}: numerical SOp computed from {src}, which can be None (an Aggregate that may "
                "select nothing); a numerical direction cannot hold None. Give the Aggregate a selector "
                "that always selects, or pass none_as_zero=True to read None as 0 here"
            )
        if vi.values is not None and len(vi.values) > options.max_value_set:
            vi = ValueInfo(None, vi.may_be_none)
        info[label] = vi
    return ValueSets(info)
