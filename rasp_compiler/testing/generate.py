"""Random well-typed, compilable RASP programs: hypothesis strategies and a seeded sampler.

Fuzzing needs programs that a tracr-style compiler accepts and that the evaluator runs on every valid
input, so the generator builds them by construction rather than by filtering:

- programs grow bottom-up from a pool (`tokens`, `indices`, constants); each step draws one small typed
  expression over pool members (a Map, a SequenceMap, a Select + Aggregate, ...), so shrinking removes or
  simplifies one step at a time and the result stays readable;
- every function comes from a table of named templates (``lambda x: (x + 2) % 3``) compiled from source
  text, and keeps that text in ``__rasp_source__`` so `rasp_compiler.rasp.source.to_source` prints it;
- value sets are tracked exactly as a compiler infers them, and bounded (`Limits`);
- categorical Aggregates only use selectors that provably select exactly one key, or a non-empty set of
  keys on which the aggregated SOp is constant (``Select(k, k, EQ)`` aggregating ``f(k)``); numerical
  Aggregates only average SOps whose values are in {0, 1}; selector keys/queries are categorical;
  LinearSequenceMap is numerical; numerical Maps only read inputs whose values are well separated;
- no SOp is ever None on a valid input (non-empty input of vocab tokens, length <= max_seq_len);
- unless `Limits(nondegenerate=False)`, the output varies over the inputs and every computed op can
  change it (`is_nondegenerate`): a circuit-discovery method then always has something to find, and
  nothing in the program is there for nothing. A draw that fails this is redrawn.

One chooser interface drives both hypothesis (`programs()`) and `random.Random` (`sample_programs`), so
the same code gives shrinkable strategies and a sampler that is reproducible across processes.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from rasp_compiler import rasp

__all__ = [
    "GeneratedProgram",
    "Limits",
    "OP_KINDS",
    "COMPARISONS",
    "make_function",
    "op_kinds",
    "programs",
    "programs_with_inputs",
    "is_nondegenerate",
    "sample_inputs",
    "sample_programs",
]

T = TypeVar("T")

COMPARISONS: tuple[str, ...] = ("EQ", "LT", "LEQ", "GT", "GEQ", "NEQ", "TRUE", "FALSE")
OP_KINDS: tuple[str, ...] = (
    "map_categorical",
    "map_categorical_to_numerical",
    "map_numerical",
    "map_numerical_to_categorical",
    "sequence_map",
    "linear_sequence_map",
    "aggregate_categorical",
    "aggregate_numerical",
    "selector_width",
    "selector_width_numerical",
    "select",
    "selector_and",
    "selector_or",
    "selector_not",
    "full",
    "constant_sop",
)

_SAFE_BUILTINS = {"min": min, "max": max, "abs": abs, "int": int, "round": round}
_REFLEXIVE = ("EQ", "LEQ", "GEQ", "TRUE")
_IRREFLEXIVE = ("LT", "GT", "NEQ", "FALSE")


# ------------------------------------------------------------------------------------------------ limits


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds on generated programs. Defaults keep programs small enough to compile in milliseconds."""

    min_ops: int = 1  # generation steps (each adds one small expression: 1-4 RASP ops)
    max_ops: int = 6
    max_depth: int = 8  # longest chain of SOps from a leaf to the output
    max_layers: int = 4  # estimated transformer layers (attention+MLP blocks)
    max_values: int = 8  # distinct values of any categorical SOp (indices/widths may have max_seq_len+1)
    max_numerical_values: int = 24  # distinct values of any numerical SOp
    min_numerical_gap: float = 0.03  # numerical Map inputs: smallest gap between two values
    min_vocab: int = 2
    max_vocab: int = 4
    min_seq_len: int = 2
    max_seq_len: int = 5
    max_selector_depth: int = 2  # nesting of SelectorAnd/Or/Not
    selector_combinators: bool = True
    numerical_selector_width: bool = True
    full: bool = True
    constant_sop: bool = False  # ConstantSOp pins inputs to one length; off unless asked for
    numerical_output: bool = True  # allow a numerical SOp as the program output
    # the output varies over the inputs and every op can change it (a draw that fails is redrawn);
    # False also yields degenerate programs (constant outputs, ops nothing depends on)
    nondegenerate: bool = True
    # programs for a causal compile: every selector an op attends with is restricted to keys at or before
    # the query (SelectorAnd with Select(indices, indices, LEQ)), so every op is prefix-consistent
    causal: bool = False

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.min_ops <= self.max_ops, "need 1 <= min_ops <= max_ops"),
            (1 <= self.min_vocab <= self.max_vocab, "need 1 <= min_vocab <= max_vocab"),
            (1 <= self.min_seq_len <= self.max_seq_len, "need 1 <= min_seq_len <= max_seq_len"),
            (self.max_depth >= 1 and self.max_layers >= 1, "max_depth and max_layers must be >= 1"),
            (self.max_values >= 2, "max_values must be >= 2"),
            (not (self.causal and self.constant_sop), "causal programs cannot hold a ConstantSOp"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"Limits: {msg} (got {self})")


# ------------------------------------------------------------------------------------------------ choosers


class _Chooser(Protocol):
    def integer(self, lo: int, hi: int) -> int: ...

    def pick(self, options: Sequence[T]) -> T: ...

    def weighted(self, options: Sequence[tuple[T, int]]) -> T: ...

    def coin(self, percent: int) -> bool: ...


class _RandomChooser:
    """Choices from a `random.Random`: reproducible for a seed in any process."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def pick(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def weighted(self, options: Sequence[tuple[T, int]]) -> T:
        return _weighted_pick(options, self.rng.randrange(sum(w for _, w in options)))

    def coin(self, percent: int) -> bool:
        return self.rng.randrange(100) < percent


class _DrawChooser:
    """Choices drawn through hypothesis; every choice shrinks towards its first (simplest) option."""

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        from hypothesis import strategies as st

        self.draw = draw
        self.st = st

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(self.st.integers(lo, hi))

    def pick(self, options: Sequence[T]) -> T:
        return options[self.draw(self.st.integers(0, len(options) - 1))]

    def weighted(self, options: Sequence[tuple[T, int]]) -> T:
        return _weighted_pick(options, self.draw(self.st.integers(0, sum(w for _, w in options) - 1)))

    def coin(self, percent: int) -> bool:
        # shrinks to 0, i.e. to False: the simpler branch is always the False one
        return self.draw(self.st.integers(0, 99)) >= 100 - percent


def _weighted_pick(options: Sequence[tuple[T, int]], r: int) -> T:
    for option, weight in options:
        if r < weight:
            return option
        r -= weight
    raise AssertionError("weighted pick out of range")


# ------------------------------------------------------------------------------------------------ functions


def make_function(source: str) -> Callable[..., Any]:
    """Compiles a lambda from its source text and keeps the text on it (`__rasp_source__`).

    The text is the single truth: the function evaluated is exactly the one printed, in any process.
    """
    fn = eval(source, {"__builtins__": _SAFE_BUILTINS})  # noqa: S307 - our own template text
    if not callable(fn):
        raise ValueError(f"make_function: {source!r} is not a function")
    fn.__rasp_source__ = source
    return fn


def _fmt(v: Any) -> str:
    return repr(v)


# (template, parameter kinds): k = small int, m = modulus/divisor >= 2, t = threshold (numerical)
_CAT_UNARY: tuple[str, ...] = (
    "lambda x: x",
    "lambda x: (x + {k}) % {m}",
    "lambda x: x + {k}",
    "lambda x: x - {k}",
    "lambda x: {k} - x",
    "lambda x: x * {k}",
    "lambda x: x // {m}",
    "lambda x: x % {m}",
    "lambda x: min(x, {k})",
    "lambda x: max(x, {k})",
    "lambda x: abs(x - {k})",
    "lambda x: int(x == {k})",
    "lambda x: int(x != {k})",
    "lambda x: int(x < {k})",
    "lambda x: int(x > {k})",
    "lambda x: {k}",
)
# f(v) in [0, v] for v >= 0: maps an in-range index to an in-range index
_INDEX_UNARY: tuple[str, ...] = (
    "lambda x: max(x - 1, 0)",
    "lambda x: x // {m}",
    "lambda x: min(x, {k})",
    "lambda x: x % {m}",
    "lambda x: 0",
    "lambda x: x",
)
_TO_BINARY: tuple[str, ...] = (
    "lambda x: int(x == {k})",
    "lambda x: int(x != {k})",
    "lambda x: int(x < {k})",
    "lambda x: int(x > {k})",
    "lambda x: x % 2",
)
_NUM_UNARY: tuple[str, ...] = (
    "lambda x: x * {s}",
    "lambda x: x + {s}",
    "lambda x: 1 - x",
    "lambda x: x * x",
    "lambda x: int(x > {t})",
    "lambda x: min(x, {t})",
    "lambda x: abs(x - {t})",
)
_NUM_TO_CAT: tuple[str, ...] = (
    "lambda x: int(x > {t})",
    "lambda x: int(x < {t})",
    "lambda x: round(x * {k})",
    "lambda x: int(x * {k})",
)
_CAT_BINARY: tuple[str, ...] = (
    "lambda x, y: x + y",
    "lambda x, y: x - y",
    "lambda x, y: (x + y) % {m}",
    "lambda x, y: min(x, y)",
    "lambda x, y: max(x, y)",
    "lambda x, y: int(x == y)",
    "lambda x, y: int(x < y)",
    "lambda x, y: x * y",
    "lambda x, y: x * {m} + y",
    "lambda x, y: abs(x - y)",
)
_LINEAR_FACTORS: tuple[Any, ...] = (1, -1, 2, 0.5)
_THRESHOLDS: tuple[float, ...] = (0.5, 0, 0.25, 0.75, 1)
_SCALES: tuple[Any, ...] = (2, -1, 0.5, 3)


def _instantiate(c: _Chooser, template: str) -> str:
    params: dict[str, str] = {}
    if "{k}" in template:
        params["k"] = _fmt(c.integer(0, 4))
    if "{m}" in template:
        params["m"] = _fmt(c.integer(2, 5))
    if "{t}" in template:
        params["t"] = _fmt(c.pick(_THRESHOLDS))
    if "{s}" in template:
        params["s"] = _fmt(c.pick(_SCALES))
    return template.format(**params)


# ------------------------------------------------------------------------------------------------ state


@dataclasses.dataclass(eq=False)
class _SOpInfo:
    expr: Any
    numerical: bool
    values: frozenset
    depth: int
    stage: int  # -1: embeddings; attention stages even, MLP stages odd
    in_range: bool = False  # value at every position is an index of the sequence: 0 <= v < length
    is_length: bool = False  # value is the input length everywhere
    chain: frozenset = frozenset()  # ids of SOps this one is a Map-chain function of (itself included)
    binary: bool = False  # numerical with values in {0, 1}


@dataclasses.dataclass(eq=False)
class _SelInfo:
    expr: Any
    stage: int
    depth: int
    reflexive: bool = False  # every query selects its own position
    irreflexive: bool = False  # no query selects its own position
    total: bool = False  # every query selects every key
    exact_one: bool = False  # every query selects exactly one key
    uniform: frozenset = frozenset()  # ids of SOps constant over the keys any one query selects
    pairs: frozenset = frozenset()  # (keys, queries) SOp-info pairs of the Selects inside
    ok_pos: bool = True  # one head can compute it: a conjunction of single-pair parts
    ok_neg: bool = True  # ... and its negation too


def _next_mlp(stage: int) -> int:
    return stage + 1 if (stage + 1) % 2 == 1 else stage + 2


def _next_attn(stage: int) -> int:
    return stage + 1 if (stage + 1) % 2 == 0 else stage + 2


class _Builder:
    """Grows one program. Every `_step_*` method adds at most one small expression to the pool."""

    def __init__(self, c: _Chooser, limits: Limits, vocab: list, max_seq_len: int) -> None:
        self.c = c
        self.lim = limits
        self.vocab = vocab
        self.max_seq_len = max_seq_len
        self.counter = 0
        self.pool: list[_SOpInfo] = []
        self.selectors: list[_SelInfo] = []
        self.fixed_length: int | None = None
        self.max_stage = 2 * limits.max_layers - 1
        tok = _SOpInfo(rasp.tokens, False, frozenset(vocab), 0, -1)
        tok.chain = frozenset({id(tok)})
        idx = _SOpInfo(rasp.indices, False, frozenset(range(max_seq_len)), 0, -1, in_range=True)
        idx.chain = frozenset({id(idx)})
        self.tok, self.idx = tok, idx
        self.pool += [idx, tok]  # tokens last: the "newest" operand, so most programs read the input
        self.created: list[_SOpInfo] = []

    # -- helpers --------------------------------------------------------------------------------------

    def _name(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}_{self.counter}"

    def _add(self, info: _SOpInfo) -> _SOpInfo:
        if not info.chain:
            info.chain = frozenset({id(info)})
        else:
            info.chain = info.chain | {id(info)}
        info.binary = info.numerical and info.values <= {0, 1}
        self.pool.append(info)
        if not isinstance(info.expr, (rasp.Full, rasp.ConstantSOp)):
            self.created.append(info)
        return info

    def _candidates(self, pred: Callable[[_SOpInfo], bool]) -> list[_SOpInfo]:
        return [s for s in self.pool if pred(s)]

    def _operand(self, pred: Callable[[_SOpInfo], bool]) -> _SOpInfo | None:
        """A pool member: usually the newest (deep programs), else any (shrinks towards leaves)."""
        cands = self._candidates(pred)
        if not cands:
            return None
        if self.c.coin(55):
            return cands[-1]
        return self.c.pick(cands)

    def _fits(self, depth: int, stage: int) -> bool:
        return depth <= self.lim.max_depth and stage <= self.max_stage

    def _cat_ok(self, s: _SOpInfo) -> bool:
        return not s.numerical and _next_mlp(s.stage) <= self.max_stage and s.depth < self.lim.max_depth

    # -- Maps -----------------------------------------------------------------------------------------

    def _map(self, fn_src: str, inner: _SOpInfo, numerical_out: bool, kind: str) -> _SOpInfo | None:
        fn = make_function(fn_src)
        try:
            values = frozenset(fn(v) for v in inner.values)
        except (ArithmeticError, TypeError, ValueError):
            return None
        limit = self.lim.max_numerical_values if numerical_out else self.lim.max_values
        if len(values) > limit or not values:
            return None
        if any(isinstance(v, bool) for v in values):
            return None
        if not numerical_out and any(not isinstance(v, int) for v in values):
            return None
        expr = rasp.Map(fn, inner.expr, simplify=False)
        if numerical_out:
            expr = rasp.numerical(expr)
        expr = expr.named(self._name(kind))
        stage = _next_mlp(inner.stage)
        if not self._fits(inner.depth + 1, stage):
            return None
        return self._add(
            _SOpInfo(expr, numerical_out, values, inner.depth + 1, stage, chain=inner.chain)
        )

    def _step_map(self) -> _SOpInfo | None:
        inner = self._operand(self._cat_ok)
        if inner is None:
            return None
        info = self._map(_instantiate(self.c, self.c.pick(_CAT_UNARY)), inner, False, "map")
        return info

    def _step_index_map(self) -> _SOpInfo | None:
        inner = self._operand(lambda s: s.in_range and self._cat_ok(s))
        if inner is None:
            return None
        info = self._map(_instantiate(self.c, self.c.pick(_INDEX_UNARY)), inner, False, "map")
        if info is not None:
            info.in_range = True
        return info

    def _numerical_input_ok(self, s: _SOpInfo) -> bool:
        if not s.numerical or len(s.values) > self.lim.max_values * 3:
            return False
        if _next_mlp(s.stage) > self.max_stage or s.depth >= self.lim.max_depth:
            return False
        vs = sorted(s.values)
        return all(b - a >= self.lim.min_numerical_gap for a, b in zip(vs, vs[1:], strict=False))

    def _step_numerical_map(self) -> _SOpInfo | None:
        kind = self.c.pick(("cat_to_num", "num_to_num", "num_to_cat"))
        if kind == "cat_to_num":
            inner = self._operand(self._cat_ok)
            if inner is None:
                return None
            templates = _TO_BINARY + _CAT_UNARY if self.c.coin(50) else _TO_BINARY
            return self._map(_instantiate(self.c, self.c.pick(templates)), inner, True, "num_map")
        inner = self._operand(self._numerical_input_ok)
        if inner is None:
            return None
        if kind == "num_to_num":
            return self._map(_instantiate(self.c, self.c.pick(_NUM_UNARY)), inner, True, "num_map")
        return self._map(_instantiate(self.c, self.c.pick(_NUM_TO_CAT)), inner, False, "map")

    def _numerical_from_categorical(self) -> _SOpInfo | None:
        inner = self._operand(self._cat_ok)
        if inner is None:
            return None
        return self._map(_instantiate(self.c, self.c.pick(_TO_BINARY + _CAT_UNARY)), inner, True, "num_map")

    def _binary_numerical(self, inner: _SOpInfo) -> _SOpInfo | None:
        """A numerical {0, 1}-valued Map of a categorical SOp (input of a numerical Aggregate)."""
        return self._map(_instantiate(self.c, self.c.pick(_TO_BINARY)), inner, True, "num_map")

    # -- SequenceMaps ---------------------------------------------------------------------------------

    def _step_sequence_map(self) -> _SOpInfo | None:
        fst = self._operand(self._cat_ok)
        snd = self._operand(lambda s: self._cat_ok(s) and s is not fst)
        if fst is None or snd is None:
            return None
        # reverse motif: length - indices - 1 is an in-range index
        motif = fst.is_length and snd.expr is rasp.indices and self.c.coin(70)
        src = "lambda x, y: x - y - 1" if motif else _instantiate(self.c, self.c.pick(_CAT_BINARY))
        fn = make_function(src)
        values = frozenset(fn(a, b) for a in fst.values for b in snd.values)
        limit = max(self.lim.max_values, 2 * self.max_seq_len + 1) if motif else self.lim.max_values
        if len(values) > limit or any(isinstance(v, bool) for v in values):
            return None
        stage = _next_mlp(max(fst.stage, snd.stage))
        depth = max(fst.depth, snd.depth) + 1
        if not self._fits(depth, stage):
            return None
        expr = rasp.SequenceMap(fn, fst.expr, snd.expr).named(self._name("sequence_map"))
        return self._add(_SOpInfo(expr, False, values, depth, stage, in_range=motif))

    def _step_linear_sequence_map(self) -> _SOpInfo | None:
        def ok(s: _SOpInfo) -> bool:
            return s.numerical and len(s.values) <= self.lim.max_numerical_values

        fst = self._operand(ok)
        if fst is None or self.c.coin(30):
            fst = self._numerical_from_categorical()
        snd = self._operand(lambda s: ok(s) and s is not fst)
        if snd is None or self.c.coin(30):
            snd = self._numerical_from_categorical()
        if fst is None or snd is None or fst is snd:
            return None
        a, b = self.c.pick(_LINEAR_FACTORS), self.c.pick(_LINEAR_FACTORS)
        values = frozenset(a * x + b * y for x in fst.values for y in snd.values)
        if len(values) > self.lim.max_numerical_values:
            return None
        stage = _next_mlp(max(fst.stage, snd.stage))
        depth = max(fst.depth, snd.depth) + 1
        if not self._fits(depth, stage):
            return None
        expr = rasp.numerical(rasp.LinearSequenceMap(fst.expr, snd.expr, a, b)).named(
            self._name("linear_sequence_map")
        )
        return self._add(_SOpInfo(expr, True, values, depth, stage))

    # -- constants ------------------------------------------------------------------------------------

    def _step_full(self) -> _SOpInfo | None:
        if not self.lim.full:
            return None
        value = self.c.integer(0, 3)
        expr = rasp.Full(value).named(self._name("full"))
        return self._add(_SOpInfo(expr, False, frozenset({value}), 0, -1))

    def _step_constant_sop(self) -> _SOpInfo | None:
        if not self.lim.constant_sop:
            return None
        if self.fixed_length is None:
            self.fixed_length = self.c.integer(1, self.max_seq_len)
        vals = [self.c.integer(0, 3) for _ in range(self.fixed_length)]
        expr = rasp.ConstantSOp(vals).named(self._name("constant_sop"))
        return self._add(_SOpInfo(expr, False, frozenset(vals), 0, -1))

    # -- selectors ------------------------------------------------------------------------------------

    def _select(self, keys: _SOpInfo, queries: _SOpInfo, cmp: str) -> _SelInfo:
        expr = rasp.Select(keys.expr, queries.expr, getattr(rasp.Comparison, cmp)).named(self._name("select"))
        same = keys is queries
        info = _SelInfo(
            expr,
            stage=max(keys.stage, queries.stage),
            depth=max(keys.depth, queries.depth),
            reflexive=same and cmp in _REFLEXIVE,
            irreflexive=(same and cmp in _IRREFLEXIVE) or cmp == "FALSE",
            total=cmp == "TRUE",
            pairs=frozenset({(keys, queries)}),
        )
        if cmp == "EQ":
            info.uniform = frozenset({id(keys)})
            info.exact_one = keys.expr is rasp.indices and queries.in_range
        self.selectors.append(info)
        return info

    def _key_ok(self, s: _SOpInfo) -> bool:
        return not s.numerical and _next_attn(s.stage) <= self.max_stage and s.depth < self.lim.max_depth

    def _any_selector(self, depth: int = 0, pair: tuple[_SOpInfo, _SOpInfo] | None = None) -> _SelInfo | None:
        """Any selector over categorical SOps (for numerical Aggregate and SelectorWidth).

        One attention head computes a conjunction of parts that each compare one (keys, queries) pair, so
        Or and Not only combine selects over one pair (`pair`), while And combines anything.
        """
        combine = self.lim.selector_combinators and depth < self.lim.max_selector_depth
        reusable = [s for s in self.selectors if (s.pairs == {pair} if pair else s.ok_pos)]
        kind = self.c.weighted([("select", 8), ("and", 2 if combine else 0), ("or", 2 if combine else 0),
                                ("not", 1 if combine else 0), ("reuse", 2 if reusable else 0)])
        if kind == "reuse":
            return self.c.pick(reusable)
        if kind in ("select", "or", "not") and pair is None:
            keys = self._operand(self._key_ok)
            queries = keys if self.c.coin(35) else self._operand(self._key_ok)
            if keys is None or queries is None:
                return None
            pair = (keys, queries)
        if kind == "select":
            return self._select(pair[0], pair[1], self.c.pick(COMPARISONS))
        if kind == "not":
            inner = self._any_selector(depth + 1, pair)
            return None if inner is None else self._not(inner)
        fst = self._any_selector(depth + 1, pair)
        snd = self._any_selector(depth + 1, pair)
        if fst is None or snd is None or fst is snd:
            return None
        return self._and(fst, snd) if kind == "and" else self._or(fst, snd)

    def _not(self, inner: _SelInfo) -> _SelInfo:
        expr = rasp.SelectorNot(inner.expr).named(self._name("selector_not"))
        info = _SelInfo(expr, inner.stage, inner.depth, reflexive=inner.irreflexive,
                        irreflexive=inner.reflexive, pairs=inner.pairs, ok_pos=inner.ok_neg,
                        ok_neg=inner.ok_pos)
        self.selectors.append(info)
        return info

    def _and(self, fst: _SelInfo, snd: _SelInfo) -> _SelInfo:
        expr = rasp.SelectorAnd(fst.expr, snd.expr).named(self._name("selector_and"))
        pairs = fst.pairs | snd.pairs
        info = _SelInfo(
            expr, max(fst.stage, snd.stage), max(fst.depth, snd.depth),
            reflexive=fst.reflexive and snd.reflexive,
            irreflexive=fst.irreflexive or snd.irreflexive,
            total=fst.total and snd.total,
            uniform=fst.uniform | snd.uniform,
            pairs=pairs, ok_pos=fst.ok_pos and snd.ok_pos, ok_neg=len(pairs) == 1,
        )
        self.selectors.append(info)
        return info

    def _or(self, fst: _SelInfo, snd: _SelInfo) -> _SelInfo:
        expr = rasp.SelectorOr(fst.expr, snd.expr).named(self._name("selector_or"))
        pairs = fst.pairs | snd.pairs
        info = _SelInfo(
            expr, max(fst.stage, snd.stage), max(fst.depth, snd.depth),
            reflexive=fst.reflexive or snd.reflexive,
            irreflexive=fst.irreflexive and snd.irreflexive,
            total=fst.total or snd.total,
            uniform=fst.uniform & snd.uniform,
            pairs=pairs, ok_pos=len(pairs) == 1, ok_neg=fst.ok_neg and snd.ok_neg,
        )
        self.selectors.append(info)
        return info

    def _uniform_selector(self) -> _SelInfo | None:
        """Reflexive selector (never empty) on whose selected keys some SOp `k` is constant."""
        keys = self._operand(self._key_ok)
        if keys is None:
            return None
        sel = self._select(keys, keys, "EQ")
        if self.lim.selector_combinators and self.c.coin(40):
            other = self._operand(self._key_ok)
            if other is None:
                return sel
            if self.c.coin(50):
                return self._and(sel, self._select(other, other, self.c.pick(_REFLEXIVE)))
            # Not of an irreflexive selector is reflexive
            return self._and(self._not(self._select(other, other, self.c.pick(_IRREFLEXIVE))), sel)
        return sel

    # -- attention steps ------------------------------------------------------------------------------

    def _step_aggregate_numerical(self) -> _SOpInfo | None:
        sop = self._operand(lambda s: s.binary)
        if sop is None or self.c.coin(40):
            inner = self._operand(self._cat_ok)
            if inner is None:
                return None
            sop = self._binary_numerical(inner)
            if sop is None:
                return None
        sel = self._any_selector()
        if sel is None:
            return None
        return self._aggregate(sel, sop, numerical=True)

    def _step_aggregate_categorical(self) -> _SOpInfo | None:
        if self.c.coin(50):  # exact-one lookup: Select(indices, q, EQ) with q an in-range index
            q = self._operand(lambda s: s.in_range and self._key_ok(s))
            if q is None:
                return None
            idx = self.idx
            sel = self._select(idx, q, "EQ")
            sop = self._operand(lambda s: not s.numerical)
            if sop is None:
                return None
            return self._aggregate(sel, sop, numerical=False)
        sel = self._uniform_selector()
        if sel is None:
            return None
        sop = self._operand(lambda s: not s.numerical and bool(s.chain & sel.uniform))
        if sop is None:
            return None
        return self._aggregate(sel, sop, numerical=False)

    def _causal(self, sel: _SelInfo) -> _SelInfo:
        """`sel` itself, or for a causal program `sel` restricted to keys at or before the query."""
        if not self.lim.causal:
            return sel
        return self._and(sel, self._select(self.idx, self.idx, "LEQ"))

    def _aggregate(self, sel: _SelInfo, sop: _SOpInfo, numerical: bool) -> _SOpInfo | None:
        sel = self._causal(sel)
        stage = _next_attn(max(sel.stage, sop.stage))
        depth = max(sel.depth, sop.depth) + 1
        if not self._fits(depth, stage):
            return None
        if numerical:
            values = {0.0}  # the default, where nothing is selected
            if {0, 1} <= sop.values:
                values |= {float(k) / w for w in range(1, self.max_seq_len + 1) for k in range(w + 1)}
            elif 1 in sop.values:
                values.add(1.0)
            expr = rasp.numerical(rasp.Aggregate(sel.expr, sop.expr, default=0))
        else:
            values = set(sop.values)
            expr = rasp.Aggregate(sel.expr, sop.expr)
        expr = expr.named(self._name("aggregate"))
        info = _SOpInfo(expr, numerical, frozenset(values), depth, stage)
        info.in_range = not numerical and sop.in_range
        return self._add(info)

    def _step_selector_width(self) -> _SOpInfo | None:
        sel = self._any_selector()
        if sel is None:
            return None
        sel = self._causal(sel)
        stage = _next_mlp(_next_attn(sel.stage))
        depth = sel.depth + 1
        if not self._fits(depth, stage):
            return None
        numerical = self.lim.numerical_selector_width and self.c.coin(15)
        expr = rasp.SelectorWidth(sel.expr)
        if numerical:
            expr = rasp.numerical(expr)
        expr = expr.named(self._name("selector_width"))
        info = _SOpInfo(expr, numerical, frozenset(range(self.max_seq_len + 1)), depth, stage)
        info.in_range = sel.irreflexive and not numerical
        info.is_length = sel.total and not numerical
        return self._add(info)

    def _step_length(self) -> _SOpInfo | None:
        """The `length` idiom: SelectorWidth(Select(tokens, tokens, TRUE))."""
        tok = self.tok
        sel = self._causal(self._select(tok, tok, "TRUE"))  # causal: i + 1 at position i
        stage = _next_mlp(_next_attn(sel.stage))
        if not self._fits(1, stage):
            return None
        expr = rasp.SelectorWidth(sel.expr).named(self._name("length"))
        info = _SOpInfo(expr, False, frozenset(range(self.max_seq_len + 1)), 1, stage, is_length=True)
        return self._add(info)

    # -- driver ---------------------------------------------------------------------------------------

    STEPS: tuple[tuple[str, int], ...] = (
        ("map", 14),
        ("sequence_map", 10),
        ("aggregate_numerical", 12),
        ("aggregate_categorical", 12),
        ("selector_width", 10),
        ("numerical_map", 12),
        ("index_map", 6),
        ("linear_sequence_map", 7),
        ("length", 3),
        ("full", 3),
        ("constant_sop", 2),
    )

    def step(self) -> None:
        kind = self.c.weighted(self.STEPS)
        getattr(self, f"_step_{kind}")()

    def output(self) -> _SOpInfo | None:
        cands = [s for s in self.created if self.lim.numerical_output or not s.numerical]
        if not cands:
            return None
        reads_input = [s for s in cands if any(e is rasp.tokens for e in rasp.topological_order(s.expr))]
        if reads_input and reads_input[-1] is not cands[-1] and self.c.coin(85):
            return reads_input[-1]  # programs that ignore their input are less interesting
        return cands[-1]


# ------------------------------------------------------------------------------------------------ programs


@dataclasses.dataclass(frozen=True)
class GeneratedProgram:
    """A generated program with the compile settings it was made for."""

    program: Any  # rasp.SOp
    vocab: tuple
    max_seq_len: int
    input_length: int | None = None  # set when a ConstantSOp pins the input length
    causal: bool = False  # made for a causal compile (Limits.causal)

    @property
    def lengths(self) -> tuple[int, ...]:
        """Input lengths on which the program is defined."""
        if self.input_length is not None:
            return (self.input_length,)
        return tuple(range(1, self.max_seq_len + 1))

    @property
    def n_ops(self) -> int:
        return sum(1 for e in rasp.topological_order(self.program) if e.children)


NONDEGENERATE_TRIES = 40  # draws per program before a degenerate one is accepted
_CHECK_INPUTS = 48  # sampled inputs (per length) that decide degeneracy


def is_nondegenerate(gp: GeneratedProgram) -> bool:
    """Whether `gp`'s output varies over its inputs and every computed op can change it, decided on
    sampled inputs grouped by length (all of them when a length has few): some two inputs of one length
    give different outputs, and for every op other than the inputs (tokens, indices, length) and
    constants (Full, ConstantSOp), some input's output changes when the op takes either its values on
    another input of that length or its own values moved one position along (so an op computed from
    positions alone, which no same-length resample can change, is tested too). Outputs compare by value
    (`model.outputs.outputs_equal`)."""
    from rasp_compiler.model.outputs import outputs_equal

    numerical = rasp.is_numerical(gp.program)
    by_length: dict[int, list[list]] = {}
    for xs in sample_inputs(gp, _CHECK_INPUTS * len(gp.lengths), seed=0):
        group = by_length.setdefault(len(xs), [])
        if xs not in group:
            group.append(xs)
    outs = {tuple(xs): rasp.evaluate(gp.program, xs, causal=gp.causal)
            for group in by_length.values() for xs in group}
    pairs = [(a, b) for group in by_length.values() for a, b in zip(group, group[1:], strict=False)]
    if not any(not outputs_equal(outs[tuple(a)], outs[tuple(b)], numerical) for a, b in pairs):
        return False
    fixed = (rasp.TokensType, rasp.IndicesType, rasp.LengthType, rasp.Full, rasp.ConstantSOp, rasp.Selector)
    for op in rasp.topological_order(gp.program):
        if isinstance(op, fixed) or op is gp.program:
            continue
        if not any(_op_changes_output(gp.program, op, a, b, outs[tuple(a)], numerical, gp.causal)
                   for a, b in pairs):
            return False
    return True


def _op_changes_output(
    program: Any, op: Any, a: list, b: list, out_a: list, numerical: bool, causal: bool
) -> bool:
    from rasp_compiler.model.outputs import outputs_equal

    own = rasp.evaluate(op, a, causal=causal)
    for values in (rasp.evaluate(op, b, causal=causal), own[1:] + own[:1]):
        if values == own:
            continue
        try:
            patched = rasp.evaluate(program, a, interventions={op: values}, causal=causal)
        except rasp.RASPEvaluationError:
            return True  # the replaced values break a later op: the op matters
        if not outputs_equal(out_a, patched, numerical):
            return True
    return False


def _build(c: _Chooser, limits: Limits) -> GeneratedProgram:
    """One program; with `limits.nondegenerate`, the first of up to NONDEGENERATE_TRIES draws that is."""
    gp = _build_once(c, limits)
    tries = 1
    while limits.nondegenerate and tries < NONDEGENERATE_TRIES and not is_nondegenerate(gp):
        gp = _build_once(c, limits)
        tries += 1
    return gp


def _build_once(c: _Chooser, limits: Limits) -> GeneratedProgram:
    n_vocab = c.integer(limits.min_vocab, limits.max_vocab)
    offset = c.pick((0, 1))
    vocab = list(range(offset, offset + n_vocab))
    max_seq_len = c.integer(limits.min_seq_len, limits.max_seq_len)
    b = _Builder(c, limits, vocab, max_seq_len)
    n_steps = c.integer(limits.min_ops, limits.max_ops)
    for _ in range(n_steps):
        b.step()
    out = b.output()
    attempts = 0
    while out is None:  # guarantee at least one real op: fall back to a plain categorical Map of tokens
        attempts += 1
        src = _instantiate(c, c.pick(_CAT_UNARY)) if attempts < 4 else "lambda x: x"
        b._map(src, b.tok, False, "map")
        out = b.output()
    fixed = b.fixed_length if any(isinstance(e, rasp.ConstantSOp) for e in rasp.topological_order(out.expr)) \
        else None
    return GeneratedProgram(out.expr, tuple(vocab), max_seq_len, fixed, limits.causal)


def programs(**limits: Any):
    """Hypothesis strategy of `GeneratedProgram`s; keyword arguments are `Limits` fields."""
    from hypothesis import strategies as st

    lim = Limits(**limits)

    @st.composite
    def _programs(draw: Callable[[Any], Any]) -> GeneratedProgram:
        return _build(_DrawChooser(draw), lim)

    return _programs()


def programs_with_inputs(n_inputs: int = 4, **limits: Any):
    """Hypothesis strategy of `(GeneratedProgram, [input, ...])` with valid inputs for that program."""
    from hypothesis import strategies as st

    @st.composite
    def _with_inputs(draw: Callable[[Any], Any]) -> tuple[GeneratedProgram, list[list]]:
        gp = draw(programs(**limits))
        one = st.sampled_from(gp.lengths).flatmap(
            lambda n: st.lists(st.sampled_from(gp.vocab), min_size=n, max_size=n)
        )
        return gp, draw(st.lists(one, min_size=1, max_size=n_inputs))

    return _with_inputs()


def sample_programs(n: int, seed: int, **limits: Any) -> list[GeneratedProgram]:
    """`n` programs, the same ones for the same seed and limits in any process (no hypothesis involved)."""
    lim = Limits(**limits)
    rng = random.Random(f"rasp-generate:{seed}")
    return [_build(_RandomChooser(random.Random(rng.getrandbits(64))), lim) for _ in range(n)]


def sample_inputs(gp: GeneratedProgram, n: int, seed: int | random.Random = 0) -> list[list]:
    """`n` random valid inputs (lengths from `gp.lengths`, tokens from `gp.vocab`), reproducible per seed."""
    rng = seed if isinstance(seed, random.Random) else random.Random(f"rasp-inputs:{seed}")
    out = []
    for _ in range(n):
        length = rng.choice(gp.lengths)
        out.append([rng.choice(gp.vocab) for _ in range(length)])
    return out


# ------------------------------------------------------------------------------------------------ coverage


def op_kinds(program: Any) -> Counter:
    """Counts of op kinds (see `OP_KINDS`) and `select_<COMPARISON>` in a program, read off the graph.

    Independent of the generator's bookkeeping, so tests can check coverage against it.
    """
    counts: Counter = Counter()
    for e in rasp.topological_order(program):
        if isinstance(e, rasp.Select):
            counts["select"] += 1
            pred = e.predicate
            counts[f"select_{pred.name if isinstance(pred, rasp.Comparison) else 'custom'}"] += 1
        elif isinstance(e, rasp.SelectorAnd):
            counts["selector_and"] += 1
        elif isinstance(e, rasp.SelectorOr):
            counts["selector_or"] += 1
        elif isinstance(e, rasp.SelectorNot):
            counts["selector_not"] += 1
        elif isinstance(e, rasp.Aggregate):
            counts["aggregate_numerical" if rasp.is_numerical(e) else "aggregate_categorical"] += 1
        elif isinstance(e, rasp.SelectorWidth):
            counts["selector_width_numerical" if rasp.is_numerical(e) else "selector_width"] += 1
        elif isinstance(e, rasp.LinearSequenceMap):
            counts["linear_sequence_map"] += 1
        elif isinstance(e, rasp.SequenceMap):
            counts["sequence_map"] += 1
        elif isinstance(e, rasp.Map):
            src = "numerical" if rasp.is_numerical(e.inner) else "categorical"
            dst = "numerical" if rasp.is_numerical(e) else "categorical"
            counts["map_" + (src if src == dst else f"{src}_to_{dst}")] += 1
        elif isinstance(e, rasp.Full):
            counts["full"] += 1
        elif isinstance(e, rasp.ConstantSOp):
            counts["constant_sop"] += 1
    return counts
