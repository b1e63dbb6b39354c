"""tracr compatibility: programs written against tracr's API run on ours with only the import changed, and
our evaluator agrees with tracr's on random programs built identically with both libraries."""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rasp_compiler import rasp as our_rasp

# --------------------------------------------------------------------------------------------------------
# Programs in tracr's style (its README and lib.py usage). Each takes the `rasp` module, so the very same
# source builds a tracr program or ours: "only the import changed".


def make_length(rasp: types.ModuleType) -> Any:
    all_true_selector = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE).named("all_true_selector")
    return rasp.SelectorWidth(all_true_selector).named("length")


def make_reverse(rasp: types.ModuleType) -> Any:
    length = make_length(rasp)
    opp_idx = (length - rasp.indices).named("opp_idx")
    opp_idx = (opp_idx - 1).named("opp_idx-1")
    reverse_selector = rasp.Select(rasp.indices, opp_idx, rasp.Comparison.EQ).named("reverse_selector")
    return rasp.Aggregate(reverse_selector, rasp.tokens).named("reverse")


def make_frac_prevs(rasp: types.ModuleType, bools: Any) -> Any:
    bools = rasp.numerical(bools)
    prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ)
    return rasp.numerical(rasp.Aggregate(prevs, bools, default=0)).named("frac_prevs")


def make_hist(rasp: types.ModuleType) -> Any:
    same_tok = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ).named("same_tok")
    return rasp.SelectorWidth(same_tok).named("hist")


def make_sort_unique(rasp: types.ModuleType, vals: Any, keys: Any) -> Any:
    smaller = rasp.Select(keys, keys, rasp.Comparison.LT).named("smaller")
    target_pos = rasp.SelectorWidth(smaller).named("target_pos")
    sel_new = rasp.Select(target_pos, rasp.indices, rasp.Comparison.EQ)
    return rasp.Aggregate(sel_new, vals).named("sort")


def make_shuffle_dyck_pairs(rasp: types.ModuleType) -> Any:
    """Balanced '()' check as in tracr's lib (one pair type)."""
    opens = rasp.numerical(rasp.Map(lambda x: x == "(", rasp.tokens)).named("opens")
    closes = rasp.numerical(rasp.Map(lambda x: x == ")", rasp.tokens)).named("closes")
    prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ)
    frac_open = rasp.numerical(rasp.Aggregate(prevs, opens, default=0)).named("frac_open")
    frac_close = rasp.numerical(rasp.Aggregate(prevs, closes, default=0)).named("frac_close")
    balance = rasp.numerical(rasp.LinearSequenceMap(frac_open, frac_close, 1, -1)).named("balance")
    any_negative = rasp.numerical(rasp.Map(lambda x: x < 0, balance)).named("any_negative_step")
    select_all = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.TRUE)
    has_neg = rasp.numerical(rasp.Aggregate(select_all, any_negative, default=0)).named("has_neg")
    select_last = rasp.Select(rasp.indices, make_length(rasp) - 1, rasp.Comparison.EQ)
    last_zero = rasp.Aggregate(select_last, rasp.Map(lambda x: x == 0, balance)).named("last_zero")
    not_has_neg = (~rasp.Map(lambda x: x > 0, has_neg)).named("not_has_neg")
    return (last_zero & not_has_neg).named("shuffle_dyck")


# (label, builder, input, expected) - expected values worked out by hand
README_CASES: list[tuple[str, Callable[[types.ModuleType], Any], list, list]] = [
    ("length", make_length, [1, 2, 3, 4], [4, 4, 4, 4]),
    ("reverse", make_reverse, list("abc"), list("cba")),
    ("frac_prevs", lambda r: make_frac_prevs(r, r.tokens == "l"), list("hello"), [0, 0, 1 / 3, 1 / 2, 2 / 5]),
    ("hist", make_hist, list("abbcbb"), [1, 4, 4, 1, 4, 4]),
    ("sort", lambda r: make_sort_unique(r, r.tokens, r.tokens), [3, 1, 2], [1, 2, 3]),
    ("shuffle_dyck", make_shuffle_dyck_pairs, list("(())"), [True, True, True, True]),  # broadcast to all
    ("shuffle_dyck", make_shuffle_dyck_pairs, list("())("), [False, False, False, False]),
]
CASE_IDS = ["length", "reverse", "frac_prevs", "hist", "sort_unique", "dyck_ok", "dyck_bad"]


@pytest.mark.parametrize(("label", "build", "xs", "expected"), README_CASES, ids=CASE_IDS)
def test_tracr_style_programs_run_on_ours(label: str, build: Callable, xs: list, expected: list) -> None:
    program = build(our_rasp)
    assert program.label == label
    assert _same(our_rasp.evaluate(program, xs), expected)
    assert _same(program(xs), expected)  # tracr's call syntax


@pytest.mark.parametrize(("label", "build", "xs", "expected"), README_CASES, ids=CASE_IDS)
def test_tracr_style_programs_agree_with_tracr(label: str, build: Callable, xs: list, expected: list) -> None:
    tracr_rasp = _tracr()
    theirs = tracr_rasp.evaluate(build(tracr_rasp), xs)
    assert _same(our_rasp.evaluate(build(our_rasp), xs), theirs)
    assert _same(theirs, expected)  # the hand-worked expectation agrees with tracr too


def _same(got: list, expected: list) -> bool:
    """Equal values position by position; floats within 1e-9 (tracr returns a lone selected value as is,
    e.g. False, where we return its float mean 0.0)."""
    return len(got) == len(expected) and all(_values_equal(a, b) for a, b in zip(got, expected, strict=True))


def _tracr() -> types.ModuleType:
    mod = pytest.importorskip(
        "tracr.rasp.rasp",
        reason="tracr (tracr-pypi) not importable: comparison with tracr skipped",
        exc_type=ImportError,
    )
    logging.getLogger("absl").setLevel(logging.ERROR)  # tracr warns on SequenceMap(f, x, x); we build those
    return mod


# --------------------------------------------------------------------------------------------------------
# Differential: random small programs, built the same way with both libraries.
#
# A program is a list of node specs; each refers to earlier nodes by index (so subexpressions are shared).
# Values stay small ints/bools/floats; categorical Aggregates use an int default (tracr's None semantics in
# numerical means differ from ours on purpose and are covered by unit tests).

MAP_FNS: dict[str, Callable[[Any], Any]] = {
    "inc": lambda x: x + 1,
    "dec": lambda x: x - 1,
    "dbl": lambda x: x * 2,
    "mod3": lambda x: x % 3,
    "abs": abs,
    "min2": lambda x: min(x, 2),
    "gt1": lambda x: x > 1,
    "neg": lambda x: -x,
}
SEQ_FNS: dict[str, Callable[[Any, Any], Any]] = {
    "add": lambda x, y: x + y,
    "sub": lambda x, y: x - y,
    "mul": lambda x, y: x * y,
    "max": max,
    "min": min,
    "eq": lambda x, y: x == y,
}
BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "add": lambda a, b: a + b,
    "radd": lambda a, b: b + a,
    "sub": lambda a, b: a - b,
    "rsub": lambda a, b: b - a,
    "mul": lambda a, b: a * b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "and": lambda a, b: a & b,
    "or": lambda a, b: a | b,
}
SOP_SOP_BINOPS = ["add", "sub", "mul", "and", "or"]  # comparisons between SOps are not sugar (they raise)
COMPARISONS = ["EQ", "LT", "LEQ", "GT", "GEQ", "NEQ", "TRUE", "FALSE"]


@st.composite
def programs(draw: st.DrawFn) -> list[tuple]:
    """Node specs; the last SOp node is the program's output."""
    nodes: list[tuple] = [("tokens",), ("indices",)]
    kinds: list[str] = ["sop", "sop"]

    def pick(kind: str) -> int:
        return draw(st.sampled_from([i for i, k in enumerate(kinds) if k == kind]))

    for _ in range(draw(st.integers(1, 8))):
        # weighted so that most programs route selections into their output
        choices = ["map", "seqmap", "lin", "binop_const", "binop_sop", "full", "numeric"] + ["select"] * 3
        if "sel" in kinds:
            choices += ["and", "or", "not"] + ["agg_cat"] * 4 + ["agg_num"] * 4 + ["width"] * 3
        op = draw(st.sampled_from(choices))
        if op == "map":
            spec, kind = (
                ("map", draw(st.sampled_from(sorted(MAP_FNS))), pick("sop"), draw(st.booleans())),
                "sop",
            )
        elif op == "seqmap":
            spec, kind = ("seqmap", draw(st.sampled_from(sorted(SEQ_FNS))), pick("sop"), pick("sop")), "sop"
        elif op == "lin":
            spec, kind = (
                ("lin", pick("sop"), pick("sop"), draw(st.integers(-2, 2)), draw(st.integers(-2, 2))),
                "sop",
            )
        elif op == "binop_const":
            spec, kind = (
                ("binop_const", draw(st.sampled_from(sorted(BINOPS))), pick("sop"), draw(st.integers(0, 3))),
                "sop",
            )
        elif op == "binop_sop":
            spec, kind = ("binop_sop", draw(st.sampled_from(SOP_SOP_BINOPS)), pick("sop"), pick("sop")), "sop"
        elif op == "full":
            spec, kind = ("full", draw(st.integers(0, 3))), "sop"
        elif op == "numeric":
            spec, kind = ("numeric", pick("sop")), "sop"
        elif op == "select":
            spec, kind = ("select", pick("sop"), pick("sop"), draw(st.sampled_from(COMPARISONS))), "sel"
        elif op in ("and", "or"):
            spec, kind = (op, pick("sel"), pick("sel")), "sel"
        elif op == "not":
            spec, kind = ("not", pick("sel")), "sel"
        elif op == "agg_cat":
            spec, kind = ("agg_cat", pick("sel"), pick("sop"), draw(st.integers(-1, 0))), "sop"
        elif op == "agg_num":
            spec, kind = ("agg_num", pick("sel"), pick("sop")), "sop"
        else:
            spec, kind = ("width", pick("sel")), "sop"
        nodes.append(spec)
        kinds.append(kind)
    last_sop = max(i for i, k in enumerate(kinds) if k == "sop")
    return nodes[: last_sop + 1]


def build(rasp: types.ModuleType, specs: list[tuple], replace: dict[int, list] | None = None) -> list[Any]:
    """The expression of every spec, built with `rasp` (ours or tracr's); `replace` swaps in constants."""
    out: list[Any] = []
    for i, spec in enumerate(specs):
        op, args = spec[0], spec[1:]
        if replace and i in replace:
            e = rasp.ConstantSOp(replace[i])
        elif op == "tokens":
            e = rasp.tokens
        elif op == "indices":
            e = rasp.indices
        elif op == "map":
            e = rasp.Map(MAP_FNS[args[0]], out[args[1]], simplify=args[2])
        elif op == "seqmap":
            e = rasp.SequenceMap(SEQ_FNS[args[0]], out[args[1]], out[args[2]])
        elif op == "lin":
            e = rasp.LinearSequenceMap(out[args[0]], out[args[1]], args[2], args[3])
        elif op == "binop_const":
            e = BINOPS[args[0]](out[args[1]], args[2])
        elif op == "binop_sop":
            e = BINOPS[args[0]](out[args[1]], out[args[2]])
        elif op == "full":
            e = rasp.Full(args[0])
        elif op == "numeric":
            e = rasp.numerical(out[args[0]])
        elif op == "select":
            e = rasp.Select(out[args[0]], out[args[1]], getattr(rasp.Comparison, args[2]))
        elif op == "and":
            e = out[args[0]] & out[args[1]]
        elif op == "or":
            e = out[args[0]] | out[args[1]]
        elif op == "not":
            e = ~out[args[0]]
        elif op == "agg_cat":
            e = rasp.Aggregate(out[args[0]], out[args[1]], default=args[2])
        elif op == "agg_num":
            e = rasp.numerical(rasp.Aggregate(out[args[0]], rasp.numerical(out[args[1]]), default=0))
        elif op == "width":
            e = rasp.SelectorWidth(out[args[0]])
        else:  # pragma: no cover - the strategy only makes the kinds above
            raise AssertionError(op)
        out.append(e)
    return out


def shape(expr: Any) -> Any:
    """The DAG's structure by class name, to check that both libraries simplified the same way."""
    stack, names, order = [expr], {}, []
    while stack:
        e = stack.pop()
        if id(e) in names:
            continue
        names[id(e)] = len(names)
        order.append(e)
        stack.extend(reversed(list(e.children)))
    return [(type(e).__name__, [names[id(c)] for c in e.children]) for e in order]


def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    return a == b and (type(a) is type(b) or {type(a), type(b)} <= {int, bool})


def _categorical_conflicts(tracr_rasp: types.ModuleType, theirs: list[Any], xs: list) -> set[int]:
    """Indices of categorical Aggregates that (by tracr's own evaluation) select differing values on xs."""
    bad = set()
    for i, e in enumerate(theirs):
        if isinstance(e, tracr_rasp.Aggregate) and tracr_rasp.is_categorical(e):
            try:
                sel = tracr_rasp.evaluate(e.selector, xs)
                vals = tracr_rasp.evaluate(e.sop, xs)
            except Exception:  # noqa: BLE001 - upstream failure: this aggregate is not the cause
                continue
            for row in sel:
                picked = [v for b, v in zip(row, vals, strict=True) if b]
                if any(v != picked[0] for v in picked[1:]):
                    bad.add(i)
    return bad


@settings(max_examples=300, deadline=None)
@given(
    specs=programs(),
    inputs=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=5), min_size=1, max_size=3),
)
def test_differential_against_tracr(specs: list[tuple], inputs: list[list[int]]) -> None:
    tracr_rasp = _tracr()
    ours, theirs = build(our_rasp, specs), build(tracr_rasp, specs)
    assert shape(ours[-1]) == shape(theirs[-1])
    for xs in inputs:
        try:
            expected = tracr_rasp.evaluate(theirs[-1], xs)
            tracr_error = None
        except Exception as e:  # noqa: BLE001 - any tracr failure must be an error for us too
            tracr_error = e
        try:
            got = our_rasp.evaluate(ours[-1], xs)
        except our_rasp.RASPError as e:
            if tracr_error is not None:
                continue
            # Only strictness may make us fail where tracr does not: a categorical Aggregate whose
            # selection is not functional, named in the message.
            conflicts = _categorical_conflicts(tracr_rasp, theirs, xs)
            assert conflicts, f"we raised but tracr did not, and no categorical conflict exists: {e}"
            assert "categorical Aggregate" in str(e)
            assert any(f"'{ours[i].label}'" in str(e) for i in conflicts), str(e)
            continue
        assert tracr_error is None, f"tracr raised {tracr_error!r} but we returned {got}"
        assert _same(got, expected), (got, expected)
        # every intermediate SOp agrees too (memoized evaluation must not mix up shared nodes)
        for mine, their in zip(ours, theirs, strict=True):
            if isinstance(mine, our_rasp.SOp) and not _categorical_conflicts(tracr_rasp, theirs, xs):
                assert _same(our_rasp.evaluate(mine, xs), tracr_rasp.evaluate(their, xs))


@settings(max_examples=150, deadline=None)
@given(specs=programs(), xs=st.lists(st.integers(0, 3), min_size=1, max_size=5), data=st.data())
def test_interventions_agree_with_constant_substitution_in_tracr(
    specs: list[tuple], xs: list, data: Any
) -> None:
    """Intervening on node i == rebuilding the program in tracr with node i replaced by a ConstantSOp."""
    tracr_rasp = _tracr()
    ours = build(our_rasp, specs)
    in_graph = {id(e) for e in our_rasp.topological_order(ours[-1])}
    # Maps are excluded: a Map feeding a Map is composed away (its value is not an input of its consumer)
    targets = [i for i, e in enumerate(ours) if id(e) in in_graph and isinstance(e, our_rasp.SOp)]
    targets = [i for i in targets if not isinstance(ours[i], our_rasp.Map)]
    if not targets:
        return
    i = data.draw(st.sampled_from(targets), label="target")
    if data.draw(st.booleans(), label="dict form"):
        patch = data.draw(st.dictionaries(st.integers(0, len(xs) - 1), st.integers(0, 3), max_size=len(xs)))
        try:
            base = tracr_rasp.evaluate(build(tracr_rasp, specs)[i], xs)
        except Exception:  # noqa: BLE001 - the node itself fails: nothing to compare
            return
        replacement = [patch.get(p, v) for p, v in enumerate(base)]
    else:
        patch = replacement = data.draw(st.lists(st.integers(0, 3), min_size=len(xs), max_size=len(xs)))
    # interventions are keyed by label: every node with the target's label (tokens copies) is replaced
    same = {j: replacement for j, e in enumerate(ours) if id(e) in in_graph and e.label == ours[i].label}
    theirs = build(tracr_rasp, specs, replace=same)
    key = data.draw(st.sampled_from([ours[i], ours[i].label]), label="key")
    try:
        expected, tracr_error = tracr_rasp.evaluate(theirs[-1], xs), None
    except Exception as e:  # noqa: BLE001
        expected, tracr_error = None, e
    try:
        got = our_rasp.evaluate(ours[-1], xs, interventions={key: patch})
    except our_rasp.RASPError as e:
        if tracr_error is None:
            # we still compute the intervened node itself (and its inputs) from the real input
            original = build(tracr_rasp, specs)
            conflicts = _categorical_conflicts(tracr_rasp, theirs, xs) | _categorical_conflicts(
                tracr_rasp, original, xs
            )
            assert any(f"'{ours[j].label}'" in str(e) for j in conflicts), str(e)
        return
    assert tracr_error is None, f"tracr raised {tracr_error!r} but we returned {got}"
    assert _same(got, expected), (got, expected)


@settings(max_examples=100, deadline=None)
@given(specs=programs(), xs=st.lists(st.integers(0, 3), min_size=1, max_size=5))
def test_selectors_agree_with_tracr(specs: list[tuple], xs: list[int]) -> None:
    tracr_rasp = _tracr()
    ours, theirs = build(our_rasp, specs), build(tracr_rasp, specs)
    for mine, their in zip(ours, theirs, strict=True):
        if isinstance(mine, our_rasp.Selector):
            try:
                expected = tracr_rasp.evaluate(their, xs)
            except Exception:  # noqa: BLE001 - covered by the SOp differential
                continue
            try:
                got = our_rasp.evaluate(mine, xs)
            except our_rasp.RASPError:
                assert _categorical_conflicts(tracr_rasp, theirs, xs)
                continue
            assert got == expected
