"""The RASP language, with tracr's names and meaning.

A tracr program runs unchanged after `from tracr.rasp import rasp` becomes `from rasp_compiler import rasp`.
Programs are DAGs of expressions: SOps (sequence -> sequence of values) and Selectors
(sequence -> boolean matrix `[query][key]`). `evaluate` is the reference semantics that every compiled
model must reproduce. Where tracr's evaluator is lenient in ways its compiler cannot honour (a categorical
Aggregate averaging different values, functions raising deep inside evaluation), this one raises an error
that names the op by its label.

Differences from tracr, all deliberate:
- `.label` is the name: an explicit `.named(x)` gives label `x`; an unnamed expression gets
  `"<kind>_<unique_id>"` (e.g. `map_7`), fixed at construction. tokens/indices/length keep their fixed labels.
- every expression gets its `unique_id` at construction (tracr draws it lazily on first access); copies made
  by `.named` / `.annotated` get a fresh id.
- comparing an SOp with an expression (`tokens == indices`) raises instead of building a Map that compares
  values with the expression object; SOps hash by identity so they can key dicts and sets.
- `Map(f, Map(g, x))` (simplify=True) composes without recursion and keeps None semantics: `f` is not called
  when `g` returns None, exactly as the unsimplified pair would behave.
- `const | sop` computes `const or x` (tracr computes `x or const`).
"""

from __future__ import annotations

import abc
import copy as _copy
import enum
import itertools
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

__all__ = [
    "RASPError",
    "RASPTypeError",
    "RASPEvaluationError",
    "AggregateDisagreementError",
    "RASPInterventionError",
    "Value",
    "NumericValue",
    "SelectorValue",
    "Annotator",
    "Predicate",
    "DEFAULT_ANNOTATORS",
    "RASPExpr",
    "SOp",
    "Selector",
    "annotate",
    "TokensType",
    "IndicesType",
    "LengthType",
    "tokens",
    "indices",
    "length",
    "Map",
    "SequenceMap",
    "LinearSequenceMap",
    "Full",
    "ConstantSOp",
    "sop_not",
    "Comparison",
    "Select",
    "ConstantSelector",
    "SelectorWidth",
    "SelectorAnd",
    "SelectorOr",
    "SelectorNot",
    "selector_and",
    "selector_or",
    "selector_not",
    "Aggregate",
    "Encoding",
    "numerical",
    "categorical",
    "get_encoding",
    "is_numerical",
    "is_categorical",
    "default_encoding",
    "default_name",
    "RASPEvaluator",
    "Evaluator",
    "DefaultRASPEvaluator",
    "evaluate",
    "evaluate_prefixes",
    "topological_order",
    "distinct_labels",
    "restart_ids",
]

Value = None | int | float | str | bool
NumericValue = int | float
SelectorValue = list[list[bool]]
T = TypeVar("T")
RASPExprT = TypeVar("RASPExprT", bound="RASPExpr")
SOpT = TypeVar("SOpT", bound="SOp")

_NAME_KEY = "name"
_ENCODING_KEY = "encoding"


# ---------------------------------------------------------------------------------------------------------
# Errors


class RASPError(ValueError):
    """Base class of every error this module raises on a bad program or bad input."""


class RASPTypeError(RASPError, TypeError):
    """An expression was built from arguments of the wrong type."""


class RASPEvaluationError(RASPError):
    """Evaluating a program failed; the message names the op (by label) that failed."""


class AggregateDisagreementError(RASPEvaluationError):
    """A categorical Aggregate selected positions holding different values (no model can match this
    refusal, so the compiler proves or checks that it cannot happen)."""


class RASPInterventionError(RASPEvaluationError):
    """An intervention names an unknown expression or carries values that do not fit."""


def _describe(x: Any) -> str:
    text = repr(x)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(x).__name__} {text}"


def _is_hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------
# Annotations


class Annotator(Protocol):
    """Computes the default value of one annotation key for an expression."""

    def __call__(self, expr: RASPExpr) -> Any: ...


# Default annotations, looked up when a key was not set explicitly (tracr's extension point).
# Defaults are computed on access and never stored, so copies made by `annotate` get their own defaults.
DEFAULT_ANNOTATORS: dict[str, Annotator] = {}


class _Annotations(Mapping):
    """Read-only mapping of an expression's annotations; missing keys fall back to DEFAULT_ANNOTATORS."""

    __slots__ = ("_expr", "_inner")

    def __init__(self, expr: RASPExpr, **kwargs: Any) -> None:
        self._expr = expr
        self._inner: dict[str, Any] = dict(kwargs)

    def __getitem__(self, key: str) -> Any:
        if key in self._inner:
            return self._inner[key]
        if key in DEFAULT_ANNOTATORS:
            return DEFAULT_ANNOTATORS[key](self._expr)
        raise KeyError(
            f"no annotation {key!r} on {self._expr!r}; available: "
            f"{sorted(set(self._inner) | set(DEFAULT_ANNOTATORS))}"
        )

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except (KeyError, TypeError):
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self._inner)

    def __len__(self) -> int:
        return len(self._inner)

    def __repr__(self) -> str:
        return f"Annotations({self._inner!r})"


# ---------------------------------------------------------------------------------------------------------
# Expressions


class RASPExpr(abc.ABC):
    """Base of all RASP expressions: annotations, a label, a unique id and children."""

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self._unique_id: int = next(RASPExpr._ids)
        self._annotations: _Annotations = _Annotations(self)

    def __call__(self, xs: Sequence[Value]) -> Any:
        """Evaluates this expression on `xs` (tracr's `expr(xs)`)."""
        return evaluate(self, xs)

    @property
    def annotations(self) -> Mapping[str, Any]:
        """The annotations of this expression (read-only; use `.annotated` to derive a new expression)."""
        return self._annotations

    @annotations.setter
    def annotations(self, annotations: Mapping[str, Any]) -> None:
        self._annotations = _Annotations(self, **dict(annotations))

    @property
    def name(self) -> str:
        return self.annotations[_NAME_KEY]

    @property
    def label(self) -> str:
        """The expression's identifier in compiled models: its name."""
        return self.name

    @property
    @abc.abstractmethod
    def children(self) -> list[RASPExpr]:
        """Direct dependencies of this expression."""

    @property
    def unique_id(self) -> int:
        """An id unique to this expression object, increasing in construction order."""
        return self._unique_id

    def copy(self: RASPExprT) -> RASPExprT:
        """A shallow copy with a fresh unique id and the same explicit annotations."""
        new = _copy.copy(self)
        new._unique_id = next(RASPExpr._ids)
        new._annotations = _Annotations(new, **self._annotations._inner)
        return new

    def named(self: RASPExprT, name: str) -> RASPExprT:
        """A copy of this expression with the given name (and so label)."""
        return annotate(self, name=name)

    def annotated(self: RASPExprT, **annotations: Any) -> RASPExprT:
        """A copy of this expression with the given annotations added."""
        return annotate(self, **annotations)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"


def restart_ids(start: int = 1000) -> None:
    """Restart the counter that numbers unnamed expressions (`map_<id>`), so that a program built after
    this call gets the same default labels in every process whatever was built before (suites and
    campaigns call it before building each program; named expressions are unaffected)."""
    RASPExpr._ids = itertools.count(start)


def annotate(expr: RASPExprT, **annotations: Any) -> RASPExprT:
    """A copy of `expr` with `annotations` added (overriding keys already set)."""
    if not isinstance(expr, RASPExpr):
        raise RASPTypeError(f"annotate expects a RASP expression, got {_describe(expr)}")
    if _NAME_KEY in annotations and not (isinstance(annotations[_NAME_KEY], str) and annotations[_NAME_KEY]):
        name = annotations[_NAME_KEY]
        raise RASPTypeError(f"name of {expr!r} must be a non-empty str, got {_describe(name)}")
    if _ENCODING_KEY in annotations:
        if not isinstance(expr, SOp):
            raise RASPTypeError(f"only SOps have an encoding; {expr!r} is a {type(expr).__name__}")
        if not isinstance(annotations[_ENCODING_KEY], Encoding):
            raise RASPTypeError(
                f"encoding of {expr!r} must be an Encoding, got {_describe(annotations[_ENCODING_KEY])}"
            )
    new = expr.copy()
    new._annotations = _Annotations(new, **{**expr._annotations._inner, **annotations})
    return new


def _check_expr(owner: str, what: str, value: Any, cls: type) -> None:
    if not isinstance(value, cls):
        raise RASPTypeError(f"{owner}: {what} must be a {cls.__name__}, got {_describe(value)}")


def _check_fn(owner: str, f: Any) -> None:
    if isinstance(f, RASPExpr) or not callable(f):
        raise RASPTypeError(f"{owner}: f must be a callable (not a RASP expression), got {_describe(f)}")


def _no_expr_operand(op: str, other: Any) -> None:
    if isinstance(other, RASPExpr):
        raise RASPTypeError(
            f"SOp {op} {type(other).__name__}: operator {op} between an SOp and a RASP expression is not "
            "supported for comparisons; use SequenceMap for elementwise comparison or `is` for identity"
        )


### S-Ops.


class SOp(RASPExpr):
    """A sequence operation: maps an input sequence to one value per position."""

    __hash__ = RASPExpr.__hash__  # identity hash, although == builds a Map

    def __lt__(self, other: Value) -> SOp:
        _no_expr_operand("<", other)
        return Map(lambda x: x < other, self)

    def __le__(self, other: Value) -> SOp:
        _no_expr_operand("<=", other)
        return Map(lambda x: x <= other, self)

    def __eq__(self, other: Value) -> SOp:  # type: ignore[override]
        _no_expr_operand("==", other)
        return Map(lambda x: x == other, self)

    def __ne__(self, other: Value) -> SOp:  # type: ignore[override]
        _no_expr_operand("!=", other)
        return Map(lambda x: x != other, self)

    def __gt__(self, other: Value) -> SOp:
        _no_expr_operand(">", other)
        return Map(lambda x: x > other, self)

    def __ge__(self, other: Value) -> SOp:
        _no_expr_operand(">=", other)
        return Map(lambda x: x >= other, self)

    def __add__(self, other: SOp | Value) -> SOp:
        if isinstance(other, SOp):
            return SequenceMap(lambda x, y: x + y, self, other)
        return Map(lambda x: x + other, self)

    def __radd__(self, other: SOp | Value) -> SOp:
        if isinstance(other, SOp):
            return SequenceMap(lambda x, y: x + y, other, self)
        return Map(lambda x: other + x, self)

    def __sub__(self, other: SOp | NumericValue) -> SOp:
        if isinstance(other, SOp):
            return SequenceMap(lambda x, y: x - y, self, other)
        return Map(lambda x: x - other, self)

    def __rsub__(self, other: SOp | NumericValue) -> SOp:
        if isinstance(other, SOp):
            return SequenceMap(lambda x, y: x - y, other, self)
        return Map(lambda x: other - x, self)

    def __mul__(self, other: SOp | NumericValue) -> SOp:
        if isinstance(other, SOp):
            return SequenceMap(lambda x, y: x * y, self, other)
        return Map(lambda x: x * other, self)

    def __rmul__(self, other: SOp | NumericValue) -> SOp:
        if isinstance(other, SOp):
            return SequenceMap(lambda x, y: x * y, other, self)
        return Map(lambda x: other * x, self)

    def __truediv__(self, other: SOp | NumericValue) -> SOp:
        if isinstance(other, SOp):
            return SequenceMap(lambda x, y: x / y, self, other)
        return Map(lambda x: x / other, self)

    def __rtruediv__(self, other: SOp | NumericValue) -> SOp:
        if isinstance(other, SOp):
            return SequenceMap(lambda x, y: x / y, other, self)
        return Map(lambda x: other / x, self)

    def __invert__(self) -> SOp:
        return Map(lambda x: not x, self)

    def __and__(self, other: SOp | NumericValue) -> SOp:
        if isinstance(other, SOp):
            return SequenceMap(lambda x, y: x and y, self, other)
        return Map(lambda x: x and other, self)

    def __or__(self, other: SOp | NumericValue) -> SOp:
        if isinstance(other, SOp):
            return SequenceMap(lambda x, y: x or y, self, other)
        return Map(lambda x: x or other, self)

    def __rand__(self, other: SOp | NumericValue) -> SOp:
        if isinstance(other, SOp):
            return SequenceMap(lambda x, y: x and y, other, self)
        return Map(lambda x: other and x, self)

    def __ror__(self, other: SOp | NumericValue) -> SOp:
        if isinstance(other, SOp):
            return SequenceMap(lambda x, y: x or y, other, self)
        return Map(lambda x: other or x, self)


class TokensType(SOp):
    """The input tokens."""

    @property
    def children(self) -> list[RASPExpr]:
        return []

    @property
    def label(self) -> str:
        return "tokens"

    def __repr__(self) -> str:
        return "tokens"


class IndicesType(SOp):
    """The position of each token (0-based)."""

    @property
    def children(self) -> list[RASPExpr]:
        return []

    @property
    def label(self) -> str:
        return "indices"

    def __repr__(self) -> str:
        return "indices"


class LengthType(SOp):
    """The input length at every position (tracr has it; compilers may reject it, use make_length)."""

    @property
    def children(self) -> list[RASPExpr]:
        return []

    @property
    def label(self) -> str:
        return "length"

    def __repr__(self) -> str:
        return "length"


tokens = TokensType()
indices = IndicesType()
length = LengthType()


class _Composed:
    """`fns[-1](...fns[1](fns[0](x)))`, stopping at None; flat, so deep Map chains never recurse."""

    __slots__ = ("fns",)

    def __init__(self, fns: tuple) -> None:
        self.fns = fns

    def __call__(self, x: Any) -> Any:
        for fn in self.fns:
            if x is None:
                return None
            x = fn(x)
        return x

    def __repr__(self) -> str:
        return f"composed({', '.join(getattr(f, '__name__', repr(f)) for f in self.fns)})"


def _fn_chain(f: Callable) -> tuple:
    return f.fns if isinstance(f, _Composed) else (f,)


class Map(SOp):
    """Applies `f` to each value of `inner`: Map(lambda x: x + 1, tokens)([1, 2]) == [2, 3]."""

    def __init__(self, f: Callable[[Value], Value], inner: SOp, simplify: bool = True) -> None:
        super().__init__()
        _check_fn(f"Map {self.label!r}", f)
        _check_expr(f"Map {self.label!r}", "inner", inner, SOp)
        self.f = f
        self.inner = inner
        if simplify and isinstance(inner, Map):
            # One Map instead of two, as tracr does; the intermediate Map leaves the graph.
            self.f = _Composed(_fn_chain(inner.f) + _fn_chain(f))
            self.inner = inner.inner

    @property
    def children(self) -> list[RASPExpr]:
        return [self.inner]


class SequenceMap(SOp):
    """Applies `f(x, y)` to the values of `fst` and `snd` at each position."""

    def __init__(self, f: Callable[[Value, Value], Value], fst: SOp, snd: SOp) -> None:
        super().__init__()
        owner = f"{type(self).__name__} {self.label!r}"
        _check_fn(owner, f)
        _check_expr(owner, "fst", fst, SOp)
        _check_expr(owner, "snd", snd, SOp)
        self.f = f
        self.fst = fst
        self.snd = snd

    @property
    def children(self) -> list[RASPExpr]:
        return [self.fst, self.snd]


class LinearSequenceMap(SequenceMap):
    """`fst_fac * x + snd_fac * y` at each position (compiles to a linear layer for numerical SOps)."""

    def __init__(self, fst: SOp, snd: SOp, fst_fac: float, snd_fac: float) -> None:
        for what, fac in (("fst_fac", fst_fac), ("snd_fac", snd_fac)):
            if not isinstance(fac, numbers.Real):
                raise RASPTypeError(f"LinearSequenceMap: {what} must be a real number, got {_describe(fac)}")
        super().__init__(lambda x, y: fst_fac * x + snd_fac * y, fst, snd)
        self.fst_fac = fst_fac
        self.snd_fac = snd_fac


class Full(SOp):
    """`fill` at every position."""

    def __init__(self, fill: Value) -> None:
        super().__init__()
        if isinstance(fill, RASPExpr) or not _is_hashable(fill):
            raise RASPTypeError(f"Full {self.label!r}: fill must be a hashable value, got {_describe(fill)}")
        self.fill = fill

    @property
    def children(self) -> list[RASPExpr]:
        return []


def sop_not(sop: SOp) -> SOp:
    """Logical not of each value."""
    return Map(lambda t: not t, sop)


class ConstantSOp(SOp):
    """A fixed sequence of values (for tests); its length must equal the input's unless check_length=False."""

    def __init__(self, value: Sequence[Value], check_length: bool = True) -> None:
        super().__init__()
        if not isinstance(value, (list, tuple)):
            raise RASPTypeError(
                f"ConstantSOp {self.label!r}: value must be a list or tuple, got {_describe(value)}"
            )
        for v in value:
            if isinstance(v, RASPExpr) or not _is_hashable(v):
                raise RASPTypeError(
                    f"ConstantSOp {self.label!r}: values must be hashable, got {_describe(v)}"
                )
        self.value = value
        self.check_length = check_length

    @property
    def children(self) -> list[RASPExpr]:
        return []


### Selectors.


class Predicate(Protocol):
    """A selection predicate: called as `predicate(key, query)`."""

    def __call__(self, key: Value, query: Value) -> bool: ...


class Comparison(enum.Enum):
    """Predicates for Select, called as `predicate(key, query)`: LT selects keys smaller than the query."""

    EQ = "=="
    LT = "<"
    LEQ = "<="
    GT = ">"
    GEQ = ">="
    NEQ = "!="
    TRUE = "True"
    FALSE = "False"

    def __call__(self, key: Value, query: Value) -> bool:
        if key is None:
            raise ValueError("key is None!")
        if query is None:
            raise ValueError("query is None!")
        return _COMPARISONS[self](key, query)


_COMPARISONS: dict[Comparison, Callable[[Any, Any], bool]] = {
    Comparison.EQ: lambda key, query: key == query,
    Comparison.LT: lambda key, query: key < query,
    Comparison.LEQ: lambda key, query: key <= query,
    Comparison.GT: lambda key, query: key > query,
    Comparison.GEQ: lambda key, query: key >= query,
    Comparison.NEQ: lambda key, query: key != query,
    Comparison.TRUE: lambda key, query: True,
    Comparison.FALSE: lambda key, query: False,
}


class Selector(RASPExpr):
    """A boolean matrix `[query][key]` over positions: which keys each query attends to."""

    def __and__(self, other: Selector) -> Selector:
        return selector_and(self, other)

    def __rand__(self, other: Selector) -> Selector:
        return selector_and(other, self)

    def __or__(self, other: Selector) -> Selector:
        return selector_or(self, other)

    def __ror__(self, other: Selector) -> Selector:
        return selector_or(other, self)

    def __invert__(self) -> Selector:
        return selector_not(self)


class Select(Selector):
    """Selects key position k for query position q where `predicate(keys[k], queries[q])`."""

    def __init__(self, keys: SOp, queries: SOp, predicate: Predicate) -> None:
        super().__init__()
        owner = f"Select {self.label!r}"
        _check_expr(owner, "keys", keys, SOp)
        _check_expr(owner, "queries", queries, SOp)
        if isinstance(predicate, RASPExpr) or not callable(predicate):
            raise RASPTypeError(
                f"{owner}: predicate must be a Comparison or a callable(key, query), "
                f"got {_describe(predicate)}"
            )
        self.keys = keys
        self.queries = queries
        self.predicate = predicate

    @property
    def children(self) -> list[RASPExpr]:
        return [self.keys, self.queries]


class ConstantSelector(Selector):
    """A fixed selection matrix `[query][key]` (for tests)."""

    def __init__(self, value: SelectorValue, check_length: bool = True) -> None:
        super().__init__()
        owner = f"ConstantSelector {self.label!r}"
        if not isinstance(value, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in value):
            raise RASPTypeError(f"{owner}: value must be a list of lists of bools, got {_describe(value)}")
        self.value = value
        self.check_length = check_length

    @property
    def children(self) -> list[RASPExpr]:
        return []


class SelectorWidth(SOp):
    """The number of keys each query selects."""

    def __init__(self, selector: Selector) -> None:
        super().__init__()
        _check_expr(f"SelectorWidth {self.label!r}", "selector", selector, Selector)
        self.selector = selector

    @property
    def children(self) -> list[RASPExpr]:
        return [self.selector]


class SelectorAnd(Selector):
    """Elementwise `and` of two selectors."""

    def __init__(self, fst: Selector, snd: Selector) -> None:
        super().__init__()
        _check_expr(f"SelectorAnd {self.label!r}", "fst", fst, Selector)
        _check_expr(f"SelectorAnd {self.label!r}", "snd", snd, Selector)
        self.fst = fst
        self.snd = snd

    @property
    def children(self) -> list[RASPExpr]:
        return [self.fst, self.snd]


class SelectorOr(Selector):
    """Elementwise `or` of two selectors."""

    def __init__(self, fst: Selector, snd: Selector) -> None:
        super().__init__()
        _check_expr(f"SelectorOr {self.label!r}", "fst", fst, Selector)
        _check_expr(f"SelectorOr {self.label!r}", "snd", snd, Selector)
        self.fst = fst
        self.snd = snd

    @property
    def children(self) -> list[RASPExpr]:
        return [self.fst, self.snd]


class SelectorNot(Selector):
    """Elementwise `not` of a selector."""

    def __init__(self, inner: Selector) -> None:
        super().__init__()
        _check_expr(f"SelectorNot {self.label!r}", "inner", inner, Selector)
        self.inner = inner

    @property
    def children(self) -> list[RASPExpr]:
        return [self.inner]


def selector_not(inner: Selector, simplify: bool = True) -> Selector:
    """`~inner`; a Select becomes a Select with the negated predicate (as in tracr)."""
    _check_expr("selector_not", "inner", inner, Selector)
    if simplify and isinstance(inner, Select):
        pred = inner.predicate
        return Select(inner.keys, inner.queries, predicate=lambda k, q: not pred(k, q))
    return SelectorNot(inner)


def selector_and(fst: Selector, snd: Selector, simplify: bool = True) -> Selector:
    """`fst & snd`; two Selects over the same keys and queries merge into one Select (as in tracr)."""
    _check_expr("selector_and", "fst", fst, Selector)
    _check_expr("selector_and", "snd", snd, Selector)
    if simplify and isinstance(fst, Select) and isinstance(snd, Select):
        merged = _merge_selects(fst, snd, lambda a, b: a and b)
        if merged is not None:
            return merged
    return SelectorAnd(fst, snd)


def selector_or(fst: Selector, snd: Selector, simplify: bool = True) -> Selector:
    """`fst | snd`; two Selects over the same keys and queries merge into one Select (as in tracr)."""
    _check_expr("selector_or", "fst", fst, Selector)
    _check_expr("selector_or", "snd", snd, Selector)
    if simplify and isinstance(fst, Select) and isinstance(snd, Select):
        merged = _merge_selects(fst, snd, lambda a, b: a or b)
        if merged is not None:
            return merged
    return SelectorOr(fst, snd)


def _merge_selects(fst: Select, snd: Select, combine: Callable[[bool, bool], bool]) -> Select | None:
    """One Select equivalent to `combine(fst, snd)`, when both read the same keys and the same queries.

    A Full in a key or query slot matches anything there: its constant is bound into that side's
    predicate and the other side's SOp is used (tracr's rule, including which side wins).
    """
    fst_pred: Callable[[Any, Any], bool] = fst.predicate
    snd_pred: Callable[[Any, Any], bool] = snd.predicate
    keys: SOp | None = None
    queries: SOp | None = None
    if isinstance(fst.keys, Full):
        keys = snd.keys
        fst_pred = (lambda p, c: lambda k, q: p(c, q))(fst_pred, fst.keys.fill)
    if isinstance(snd.keys, Full):
        keys = fst.keys
        snd_pred = (lambda p, c: lambda k, q: p(c, q))(snd_pred, snd.keys.fill)
    if isinstance(fst.queries, Full):
        queries = snd.queries
        fst_pred = (lambda p, c: lambda k, q: p(k, c))(fst_pred, fst.queries.fill)
    if isinstance(snd.queries, Full):
        queries = fst.queries
        snd_pred = (lambda p, c: lambda k, q: p(k, c))(snd_pred, snd.queries.fill)
    if fst.keys is snd.keys:
        keys = fst.keys
    if fst.queries is snd.queries:
        queries = fst.queries
    if keys is None or queries is None:
        return None
    return Select(keys, queries, predicate=lambda k, q: combine(fst_pred(k, q), snd_pred(k, q)))


class Aggregate(SOp):
    """For each query, the value of `sop` at the selected keys: their mean if numerical, the (single) value
    if categorical, `default` where nothing is selected."""

    def __init__(self, selector: Selector, sop: SOp, default: Value | None = None) -> None:
        super().__init__()
        owner = f"Aggregate {self.label!r}"
        _check_expr(owner, "selector", selector, Selector)
        _check_expr(owner, "sop", sop, SOp)
        if default is not None and not isinstance(default, (str, float, bool, int)):
            raise RASPTypeError(
                f"{owner}: default must be None, str, float, bool or int, got {_describe(default)}"
            )
        self.selector = selector
        self.sop = sop
        self.default = default

    @property
    def children(self) -> list[RASPExpr]:
        return [self.selector, self.sop]


### Encodings.


class Encoding(enum.Enum):
    """How an SOp's value sits in the residual stream: one direction per value, or one number."""

    CATEGORICAL = "categorical"
    NUMERICAL = "numerical"


def numerical(sop: SOpT) -> SOpT:
    """A copy of `sop` annotated as numerically encoded."""
    _check_expr("numerical", "argument", sop, SOp)
    return annotate(sop, encoding=Encoding.NUMERICAL)


def categorical(sop: SOpT) -> SOpT:
    """A copy of `sop` annotated as categorically encoded."""
    _check_expr("categorical", "argument", sop, SOp)
    return annotate(sop, encoding=Encoding.CATEGORICAL)


def get_encoding(sop: SOp) -> Encoding:
    """The SOp's encoding (categorical unless annotated otherwise)."""
    _check_expr("get_encoding", "argument", sop, SOp)
    return sop.annotations[_ENCODING_KEY]


def is_numerical(sop: SOp) -> bool:
    return get_encoding(sop) == Encoding.NUMERICAL


def is_categorical(sop: SOp) -> bool:
    return get_encoding(sop) == Encoding.CATEGORICAL


def default_encoding(expr: RASPExpr) -> Encoding:
    """Default 'encoding' annotation: categorical, for SOps only."""
    if not isinstance(expr, SOp):
        raise RASPTypeError(f"{expr!r} is not an SOp and has no encoding")
    return Encoding.CATEGORICAL


_DEFAULT_NAMES: dict[type, str] = {
    TokensType: "tokens",
    IndicesType: "indices",
    LengthType: "length",
    LinearSequenceMap: "linear_sequence_map",
    SequenceMap: "sequence_map",
    Map: "map",
    Full: "full",
    ConstantSOp: "constant_sop",
    SelectorWidth: "selector_width",
    Aggregate: "aggregate",
    SOp: "sop",
    Select: "select",
    SelectorAnd: "selector_and",
    SelectorOr: "selector_or",
    SelectorNot: "selector_not",
    ConstantSelector: "constant_selector",
    Selector: "selector",
}
_PRIMITIVES = (TokensType, IndicesType, LengthType)


def default_name(expr: RASPExpr) -> str:
    """Default 'name' annotation: `<kind>_<unique_id>`, or the fixed name of tokens/indices/length."""
    for cls in type(expr).__mro__:
        if cls in _DEFAULT_NAMES:
            base = _DEFAULT_NAMES[cls]
            return base if cls in _PRIMITIVES else f"{base}_{expr.unique_id}"
    return f"expr_{expr.unique_id}"


DEFAULT_ANNOTATORS[_ENCODING_KEY] = default_encoding
DEFAULT_ANNOTATORS[_NAME_KEY] = default_name


# ---------------------------------------------------------------------------------------------------------
# Graph walking


def topological_order(expr: RASPExpr) -> list[RASPExpr]:
    """Every expression `expr` depends on (itself included), each after all its children, each once.

    Deterministic: a depth-first post-order that visits children in `.children` order. Iterative, so
    arbitrarily deep programs work. Expressions are identified by object identity.
    """
    _check_expr("topological_order", "argument", expr, RASPExpr)
    order: list[RASPExpr] = []
    done: set = set()
    on_stack: set = set()
    stack: list[tuple] = [(expr, iter(expr.children))]
    on_stack.add(id(expr))
    while stack:
        node, it = stack[-1]
        child = next(it, None)
        if child is None:
            stack.pop()
            on_stack.discard(id(node))
            done.add(id(node))
            order.append(node)
            continue
        if not isinstance(child, RASPExpr):
            raise RASPTypeError(f"{node!r} has a child that is not a RASP expression: {_describe(child)}")
        if id(child) in done:
            continue
        if id(child) in on_stack:
            raise RASPError(f"{child!r} depends on itself (the program graph has a cycle)")
        on_stack.add(id(child))
        stack.append((child, iter(child.children)))
    return order


def distinct_labels(order: Sequence[Any]) -> list[str]:
    """One label per expression of `order` (a topological order), telling apart different expressions
    that share a label (tracr would merge them): the k-th one to reuse a label is `label#k` (k >= 2,
    primes added if that is taken too). Deterministic, so a program rebuilt from its source gets the
    same names; the compiler's op labels and the causal checks' both come from here."""
    taken: set[str] = set()
    seen: dict[str, int] = {}
    out = []
    for e in order:
        base = str(e.label)
        seen[base] = seen.get(base, 0) + 1
        label = base if seen[base] == 1 else f"{base}#{seen[base]}"
        while label in taken:
            label += "'"
        taken.add(label)
        out.append(label)
    return out


# ---------------------------------------------------------------------------------------------------------
# Evaluation


Intervention = Sequence[Value] | Mapping[int, Value]


class RASPEvaluator(abc.ABC):
    """Interface of RASP evaluators (tracr's name)."""

    @abc.abstractmethod
    def evaluate(self, expr: RASPExpr, xs: Sequence[Value]) -> Any:
        """Evaluates `expr` on the input `xs`."""


class Evaluator(RASPEvaluator):
    """The reference semantics: evaluates a program on one input, bottom-up, each subexpression once.

    `max_seq_len` bounds the input length; `evaluate(..., interventions=...)` replaces an SOp's values
    (all positions via a list, some via {position: value}) as it is computed, so consumers see them.
    `causal=True` is what a decoder-only model computes: every selector selects no key after its query
    and `length` at position i is i + 1 (see `evaluate_prefixes` for the reference it is checked against).
    Interventions are keyed by label (an SOp key stands for its label): every expression with that label
    is replaced. The replaced expression itself is still computed (its errors still surface).
    """

    def __init__(self, max_seq_len: int | None = None, causal: bool = False) -> None:
        if not isinstance(causal, bool):
            raise RASPTypeError(f"causal must be a bool, got {_describe(causal)}")
        self.causal = causal
        if max_seq_len is not None and (not isinstance(max_seq_len, int) or max_seq_len < 0):
            raise RASPTypeError(
                f"max_seq_len must be a non-negative int or None, got {_describe(max_seq_len)}"
            )
        self.max_seq_len = max_seq_len
        self._handlers: dict[type, Callable[[Any, dict[int, Any], list[Value]], Any]] = {
            TokensType: self._tokens,
            IndicesType: self._indices,
            LengthType: self._length,
            Map: self._map,
            SequenceMap: self._sequence_map,
            Full: self._full,
            ConstantSOp: self._constant_sop,
            Aggregate: self._aggregate,
            SelectorWidth: self._selector_width,
            Select: self._select,
            ConstantSelector: self._constant_selector,
            SelectorAnd: self._selector_and,
            SelectorOr: self._selector_or,
            SelectorNot: self._selector_not,
        }

    # -- entry point ------------------------------------------------------------------------------------

    def evaluate(
        self,
        expr: RASPExpr,
        xs: Sequence[Value],
        interventions: Mapping[RASPExpr | str, Intervention] | None = None,
    ) -> Any:
        """Values of `expr` on input `xs`: a list (SOp) or a `[query][key]` list of bool lists (Selector)."""
        _check_expr("evaluate", "program", expr, RASPExpr)
        xs = self._check_input(xs)
        order = topological_order(expr)
        patches = self._resolve_interventions(order, interventions, len(xs))
        values: dict[int, Any] = {}
        for node in order:
            value = self.step(node, values, xs)
            patch = patches.get(id(node))
            if patch is not None:
                value = _apply_intervention(node, value, patch)
            values[id(node)] = value
        out = values[id(expr)]
        return [list(row) for row in out] if isinstance(expr, Selector) else list(out)

    def step(self, node: RASPExpr, values: dict[int, Any], xs: list[Value]) -> Any:
        """One expression's value from its children's (in `values`, by id), as `evaluate` computes it."""
        return self.restrict(node, self._handler(node)(node, values, xs))

    def restrict(self, node: RASPExpr, value: Any) -> Any:
        """What a causal evaluation keeps of an expression's value: a selector selects no key after its
        query and `length` at position i is i + 1. The value itself when not causal."""
        if not self.causal:
            return value
        if isinstance(node, Selector):
            return [[bool(b) and k <= q for k, b in enumerate(row)] for q, row in enumerate(value)]
        if isinstance(node, LengthType):
            return list(range(1, len(value) + 1))
        return value

    def _check_input(self, xs: Any) -> list[Value]:
        if not isinstance(xs, (list, tuple)):
            raise RASPTypeError(f"evaluate: input must be a list or tuple of tokens, got {_describe(xs)}")
        for i, x in enumerate(xs):
            if isinstance(x, RASPExpr) or not _is_hashable(x):
                raise RASPTypeError(f"evaluate: token at position {i} must be hashable, got {_describe(x)}")
        if self.max_seq_len is not None and len(xs) > self.max_seq_len:
            raise RASPEvaluationError(
                f"evaluate: input has length {len(xs)} > max_seq_len {self.max_seq_len}"
            )
        return list(xs)

    def _handler(self, node: RASPExpr) -> Callable[[Any, dict[int, Any], list[Value]], Any]:
        for cls in type(node).__mro__:
            handler = self._handlers.get(cls)
            if handler is not None:
                return handler
        raise RASPEvaluationError(f"evaluation of {node!r} ({type(node).__name__}) is not defined")

    @staticmethod
    def _resolve_interventions(
        order: list[RASPExpr], interventions: Mapping[Any, Intervention] | None, n: int
    ) -> dict[int, Intervention]:
        if not interventions:
            return {}
        if not isinstance(interventions, Mapping):
            raise RASPInterventionError(
                f"interventions must be a dict {{sop_or_label: values}}, got {_describe(interventions)}"
            )
        by_id = {id(e): e for e in order}
        by_label: dict[str, list[RASPExpr]] = {}
        for e in order:
            by_label.setdefault(e.label, []).append(e)
        resolved: dict[int, Intervention] = {}
        done_labels: set[str] = set()
        for key, patch in interventions.items():
            # Keyed by label: expressions sharing a label (e.g. tokens and numerical(tokens)) are one
            # variable, as in a compiled model (and tracr's graph, which is keyed by label).
            if isinstance(key, RASPExpr):
                if id(key) not in by_id:
                    raise RASPInterventionError(f"intervention on {key!r}: it is not part of the program")
                label = key.label
            elif isinstance(key, str):
                label = key
                if label not in by_label:
                    known = ", ".join(sorted(lab for lab, es in by_label.items() if isinstance(es[0], SOp)))
                    raise RASPInterventionError(
                        f"intervention on unknown label {label!r}; the program's SOps are: {known}"
                    )
            else:
                raise RASPInterventionError(f"intervention keys must be SOps or labels, got {_describe(key)}")
            targets = by_label[label]
            for target in targets:
                if not isinstance(target, SOp):
                    raise RASPInterventionError(
                        f"intervention on {target!r}: only SOps can be intervened on, "
                        f"not {type(target).__name__}"
                    )
            if label in done_labels:
                raise RASPInterventionError(f"two interventions on {label!r}")
            done_labels.add(label)
            checked = _check_intervention(targets[0], patch, n)
            for target in targets:
                resolved[id(target)] = checked
        return resolved

    # -- primitives ---------------------------------------------------------------------------------------

    @staticmethod
    def _tokens(node: TokensType, values: dict[int, Any], xs: list[Value]) -> list[Value]:
        return list(xs)

    @staticmethod
    def _indices(node: IndicesType, values: dict[int, Any], xs: list[Value]) -> list[Value]:
        return list(range(len(xs)))

    @staticmethod
    def _length(node: LengthType, values: dict[int, Any], xs: list[Value]) -> list[Value]:
        return [len(xs)] * len(xs)

    # -- SOps ---------------------------------------------------------------------------------------------

    @staticmethod
    def _map(node: Map, values: dict[int, Any], xs: list[Value]) -> list[Value]:
        out = []
        f = node.f
        for x in values[id(node.inner)]:
            if x is None:
                out.append(None)
                continue
            try:
                y = f(x)
            except Exception as e:  # noqa: BLE001 - re-raised with the op's label
                raise RASPEvaluationError(
                    f"Map {node.label!r} raised {type(e).__name__} on input {x!r}: {e}"
                ) from e
            _check_result(node, y, x)
            out.append(y)
        return out

    @staticmethod
    def _sequence_map(node: SequenceMap, values: dict[int, Any], xs: list[Value]) -> list[Value]:
        fst, snd = values[id(node.fst)], values[id(node.snd)]
        kind = type(node).__name__
        if len(fst) != len(snd):
            raise RASPEvaluationError(
                f"{kind} {node.label!r}: its inputs have different lengths ({len(fst)} and {len(snd)})"
            )
        out = []
        for x, y in zip(fst, snd, strict=False):
            if x is None or y is None:
                out.append(None)
                continue
            try:
                z = node.f(x, y)
            except Exception as e:  # noqa: BLE001 - re-raised with the op's label
                raise RASPEvaluationError(
                    f"{kind} {node.label!r} raised {type(e).__name__} on inputs ({x!r}, {y!r}): {e}"
                ) from e
            _check_result(node, z, (x, y))
            out.append(z)
        return out

    @staticmethod
    def _full(node: Full, values: dict[int, Any], xs: list[Value]) -> list[Value]:
        return [node.fill] * len(xs)

    @staticmethod
    def _constant_sop(node: ConstantSOp, values: dict[int, Any], xs: list[Value]) -> list[Value]:
        if node.check_length and len(node.value) != len(xs):
            raise RASPEvaluationError(
                f"ConstantSOp {node.label!r} has length {len(node.value)} but the input has length {len(xs)}"
            )
        return list(node.value)

    @staticmethod
    def _selector_width(node: SelectorWidth, values: dict[int, Any], xs: list[Value]) -> list[Value]:
        return [sum(1 for b in row if b) for row in values[id(node.selector)]]

    @staticmethod
    def _aggregate(node: Aggregate, values: dict[int, Any], xs: list[Value]) -> list[Value]:
        matrix = values[id(node.selector)]
        sop_values = values[id(node.sop)]
        numeric = is_numerical(node)
        out: list[Value] = []
        for q, row in enumerate(matrix):
            if len(row) != len(sop_values):
                raise RASPEvaluationError(
                    f"Aggregate {node.label!r}: selector row has {len(row)} keys but {node.sop.label!r} has "
                    f"{len(sop_values)} values"
                )
            selected = [v for b, v in zip(row, sop_values, strict=False) if b]
            if not selected:
                out.append(node.default)
            elif numeric:
                out.append(_numerical_mean(node, q, selected))
            else:
                first = selected[0]
                if any(v != first for v in selected[1:]):
                    distinct = sorted({repr(v) for v in selected})
                    raise AggregateDisagreementError(
                        f"categorical Aggregate {node.label!r} selects different values "
                        f"{', '.join(distinct)} "
                        f"of {node.sop.label!r} at query position {q}; a categorical aggregate needs the "
                        "selected values to agree (select one key, or make the aggregate numerical)"
                    )
                out.append(first)
        return out

    # -- selectors ----------------------------------------------------------------------------------------

    @staticmethod
    def _select(node: Select, values: dict[int, Any], xs: list[Value]) -> SelectorValue:
        keys, queries = values[id(node.keys)], values[id(node.queries)]
        pred = node.predicate
        out: SelectorValue = []
        for q in queries:
            row = []
            for k in keys:
                try:
                    row.append(bool(pred(k, q)))
                except Exception as e:  # noqa: BLE001 - re-raised with the op's label
                    raise RASPEvaluationError(
                        f"Select {node.label!r}: predicate {_pred_name(pred)} raised {type(e).__name__} on "
                        f"key {k!r}, query {q!r}: {e}"
                    ) from e
            out.append(row)
        return out

    @staticmethod
    def _constant_selector(node: ConstantSelector, values: dict[int, Any], xs: list[Value]) -> SelectorValue:
        if node.check_length and (
            len(node.value) != len(xs) or any(len(row) != len(xs) for row in node.value)
        ):
            shape = f"{len(node.value)}x{len(node.value[0]) if node.value else 0}"
            raise RASPEvaluationError(
                f"ConstantSelector {node.label!r} has shape {shape} but the input has length {len(xs)}"
            )
        return [[bool(b) for b in row] for row in node.value]

    @staticmethod
    def _combine(node: Selector, a: SelectorValue, b: SelectorValue, op: Callable[[bool, bool], bool]) -> Any:
        if len(a) != len(b) or any(len(ra) != len(rb) for ra, rb in zip(a, b, strict=False)):
            raise RASPEvaluationError(
                f"{type(node).__name__} {node.label!r}: its selectors have different shapes"
            )
        return [[op(x, y) for x, y in zip(ra, rb, strict=False)] for ra, rb in zip(a, b, strict=False)]

    def _selector_and(self, node: SelectorAnd, values: dict[int, Any], xs: list[Value]) -> SelectorValue:
        return self._combine(node, values[id(node.fst)], values[id(node.snd)], lambda x, y: x and y)

    def _selector_or(self, node: SelectorOr, values: dict[int, Any], xs: list[Value]) -> SelectorValue:
        return self._combine(node, values[id(node.fst)], values[id(node.snd)], lambda x, y: x or y)

    @staticmethod
    def _selector_not(node: SelectorNot, values: dict[int, Any], xs: list[Value]) -> SelectorValue:
        return [[not b for b in row] for row in values[id(node.inner)]]


DefaultRASPEvaluator = Evaluator


def _pred_name(pred: Any) -> str:
    if isinstance(pred, Comparison):
        return f"Comparison.{pred.name}"
    return getattr(pred, "__name__", type(pred).__name__)


def _check_result(node: RASPExpr, y: Any, arg: Any) -> None:
    if isinstance(y, RASPExpr) or not _is_hashable(y):
        raise RASPEvaluationError(
            f"{type(node).__name__} {node.label!r} returned an unhashable value {_describe(y)} "
            f"on input {arg!r}; "
            "RASP values must be hashable"
        )


def _numerical_mean(node: Aggregate, q: int, selected: list[Value]) -> Value:
    if any(v is None for v in selected):
        if all(v is None for v in selected):
            return None
        raise RASPEvaluationError(
            f"numerical Aggregate {node.label!r} selects None among numbers at query position {q}"
        )
    for v in selected:
        if not isinstance(v, numbers.Real):
            raise RASPEvaluationError(
                f"numerical Aggregate {node.label!r} selects non-numeric value {v!r} of {node.sop.label!r} "
                f"at query position {q}"
            )
    return float(sum(selected)) / len(selected)


def _check_intervention(target: SOp, patch: Any, n: int) -> Intervention:
    where = f"intervention on {target.label!r}"
    if isinstance(patch, Mapping):
        for pos, v in patch.items():
            if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos < n:
                raise RASPInterventionError(f"{where}: position {pos!r} is not in range(0, {n})")
            if isinstance(v, RASPExpr) or not _is_hashable(v):
                raise RASPInterventionError(f"{where}: value at position {pos} is unhashable: {_describe(v)}")
        return dict(patch)
    if isinstance(patch, (list, tuple)):
        if len(patch) != n:
            raise RASPInterventionError(f"{where}: {len(patch)} values given for an input of length {n}")
        for pos, v in enumerate(patch):
            if isinstance(v, RASPExpr) or not _is_hashable(v):
                raise RASPInterventionError(f"{where}: value at position {pos} is unhashable: {_describe(v)}")
        return list(patch)
    raise RASPInterventionError(
        f"{where}: values must be a list (one per position) or a dict {{position: value}}, "
        f"got {_describe(patch)}"
    )


def _apply_intervention(node: RASPExpr, value: list[Value], patch: Intervention) -> list[Value]:
    if isinstance(patch, dict):
        value = list(value)
        for pos, v in patch.items():
            value[pos] = v
        return value
    return list(patch)


def evaluate(
    program: RASPExpr,
    inputs: Sequence[Value],
    *,
    max_seq_len: int | None = None,
    interventions: Mapping[RASPExpr | str, Intervention] | None = None,
    causal: bool = False,
) -> Any:
    """Evaluates `program` on `inputs` (no BOS): one value per position, or a `[query][key]` bool matrix.

    `interventions={sop_or_label: [v0, v1, ...] | {position: value}}` replaces that SOp's values as it is
    computed, so everything downstream sees the replacement. `causal=True`: a decoder-only model's
    semantics (no selector selects a key after its query; `length` at position i is i + 1).
    """
    evaluator = Evaluator(max_seq_len=max_seq_len, causal=causal)
    return evaluator.evaluate(program, inputs, interventions=interventions)


def evaluate_prefixes(
    program: SOp, inputs: Sequence[Value], *, max_seq_len: int | None = None
) -> list[Value]:
    """The reference for a decoder-only model: position i's value is `evaluate(program, inputs[:i+1])[i]`,
    what the program says at i having seen only tokens 0..i. A causal compile is exact when its output
    equals this on every input (`evaluate(..., causal=True)` does whenever the compiler accepts)."""
    _check_expr("evaluate_prefixes", "program", program, SOp)
    evaluator = Evaluator(max_seq_len=max_seq_len)
    xs = evaluator._check_input(inputs)
    return [evaluator.evaluate(program, xs[: i + 1])[i] for i in range(len(xs))]
