"""Unit tests of the RASP language: each op on hand-worked examples, sugar, labels, errors, interventions."""

from __future__ import annotations

import re

import pytest

from rasp_compiler import rasp

T, F = True, False


def ev(program: rasp.RASPExpr, xs: list, **kw: object) -> list:
    return rasp.evaluate(program, xs, **kw)


# --------------------------------------------------------------------------------------------------------
# Primitives and SOps


def test_primitives() -> None:
    assert ev(rasp.tokens, [5, 7, 9]) == [5, 7, 9]
    assert ev(rasp.indices, [5, 7, 9]) == [0, 1, 2]
    assert ev(rasp.length, ["a", "b", "c"]) == [3, 3, 3]
    assert ev(rasp.tokens, []) == []
    assert ev(rasp.tokens, ("x", "y")) == ["x", "y"]
    assert (rasp.tokens.label, rasp.indices.label, rasp.length.label) == ("tokens", "indices", "length")
    assert rasp.tokens.children == [] and rasp.indices.children == []


def test_map_and_call_sugar() -> None:
    m = rasp.Map(lambda x: x * 2, rasp.tokens)
    assert ev(m, [1, 2, 3]) == [2, 4, 6]
    assert m([1, 2, 3]) == [2, 4, 6]  # tracr's expr(xs)
    assert m.children == [rasp.tokens] and m.inner is rasp.tokens


def test_map_skips_none() -> None:
    def boom(x: object) -> object:
        if x is None:
            raise AssertionError("f called on None")
        return x + 1

    assert ev(rasp.Map(boom, rasp.ConstantSOp([1, None, 3])), [0, 0, 0]) == [2, None, 4]


@pytest.mark.parametrize("simplify", [True, False])
def test_map_composition(simplify: bool) -> None:
    inner = rasp.Map(lambda x: x + 1, rasp.tokens)
    outer = rasp.Map(lambda x: x * 10, inner, simplify=simplify)
    assert ev(outer, [0, 1, 2]) == [10, 20, 30]
    if simplify:
        assert outer.children == [rasp.tokens]
        assert (
            len(outer.f.fns) == 2
        )  # the composed functions, innermost first (the source printer reads them)
        assert [g(3) for g in outer.f.fns] == [4, 30]
    else:
        assert outer.children == [inner]
    # f is not called on None in either form: same semantics with or without simplification
    to_none = rasp.Map(lambda x: None, rasp.tokens)
    called = rasp.Map(lambda x: "called", to_none, simplify=simplify)
    assert ev(called, [1, 2]) == [None, None]


def test_sequence_map() -> None:
    sm = rasp.SequenceMap(lambda x, y: x * 10 + y, rasp.tokens, rasp.indices)
    assert ev(sm, [3, 4]) == [30, 41]
    assert sm.children == [rasp.tokens, rasp.indices] and sm.fst is rasp.tokens and sm.snd is rasp.indices
    with_none = rasp.SequenceMap(lambda x, y: x + y, rasp.ConstantSOp([1, None]), rasp.ConstantSOp([None, 2]))
    assert ev(with_none, [0, 0]) == [None, None]


def test_linear_sequence_map() -> None:
    lsm = rasp.LinearSequenceMap(rasp.tokens, rasp.indices, 2, -1)
    assert isinstance(lsm, rasp.SequenceMap)
    assert (lsm.fst_fac, lsm.snd_fac) == (2, -1)
    assert ev(lsm, [3, 4, 5]) == [6, 7, 8]
    assert re.fullmatch(r"linear_sequence_map_\d+", lsm.label)


def test_full_and_constant_sop() -> None:
    assert ev(rasp.Full(7), [1, 2, 3]) == [7, 7, 7]
    assert rasp.Full("a").fill == "a"
    c = rasp.ConstantSOp([4, 5, 6])
    assert ev(c, [0, 0, 0]) == [4, 5, 6] and c.value == [4, 5, 6]
    with pytest.raises(rasp.RASPEvaluationError, match=r"ConstantSOp 'c' has length 3 .* length 2"):
        ev(c.named("c"), [0, 0])
    assert ev(rasp.ConstantSOp([1, 2], check_length=False), [0, 0, 0]) == [1, 2]


# --------------------------------------------------------------------------------------------------------
# Selectors


def test_select_is_query_by_key_with_predicate_key_query() -> None:
    eq = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ)
    assert ev(eq, [1, 2, 1]) == [[T, F, T], [F, T, F], [T, F, T]]
    lt = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LT)  # key < query
    assert ev(lt, [0, 0, 0]) == [[F, F, F], [T, F, F], [T, T, F]]
    # keys and queries differ: row q selects key k where tokens[k] > q
    gt = rasp.Select(rasp.tokens, rasp.indices, rasp.Comparison.GT)
    assert ev(gt, [0, 2, 1]) == [[F, T, T], [F, T, F], [F, F, F]]
    assert gt.keys is rasp.tokens and gt.queries is rasp.indices and gt.predicate is rasp.Comparison.GT
    assert gt.children == [rasp.tokens, rasp.indices]


@pytest.mark.parametrize(
    ("cmp", "expected"),
    [
        # (key, query) pairs: (1, 2), (2, 2), (3, 2)
        (rasp.Comparison.EQ, [F, T, F]),
        (rasp.Comparison.LT, [T, F, F]),
        (rasp.Comparison.LEQ, [T, T, F]),
        (rasp.Comparison.GT, [F, F, T]),
        (rasp.Comparison.GEQ, [F, T, T]),
        (rasp.Comparison.NEQ, [T, F, T]),
        (rasp.Comparison.TRUE, [T, T, T]),
        (rasp.Comparison.FALSE, [F, F, F]),
    ],
)
def test_comparisons(cmp: rasp.Comparison, expected: list) -> None:
    assert [cmp(k, 2) for k in (1, 2, 3)] == expected
    with pytest.raises(ValueError, match="key is None"):
        cmp(None, 1)
    with pytest.raises(ValueError, match="query is None"):
        cmp(1, None)


def test_comparison_members() -> None:
    assert [c.name for c in rasp.Comparison] == ["EQ", "LT", "LEQ", "GT", "GEQ", "NEQ", "TRUE", "FALSE"]


A = [[T, F, T], [F, F, T], [T, T, F]]
B = [[T, T, F], [F, T, T], [F, T, F]]


def test_constant_selector_and_combinators() -> None:
    a, b = rasp.ConstantSelector(A), rasp.ConstantSelector(B)
    assert ev(a, [0, 0, 0]) == A
    assert ev(rasp.SelectorAnd(a, b), [0, 0, 0]) == [[T, F, F], [F, F, T], [F, T, F]]
    assert ev(rasp.SelectorOr(a, b), [0, 0, 0]) == [[T, T, T], [F, T, T], [T, T, F]]
    assert ev(rasp.SelectorNot(a), [0, 0, 0]) == [[F, T, F], [T, T, F], [F, F, T]]
    # sugar on non-Select selectors builds the combinator nodes
    assert isinstance(a & b, rasp.SelectorAnd) and (a & b).children == [a, b]
    assert isinstance(a | b, rasp.SelectorOr)
    assert isinstance(~a, rasp.SelectorNot) and (~a).inner is a
    with pytest.raises(rasp.RASPEvaluationError, match=r"ConstantSelector 'cs' has shape 3x3 .* length 2"):
        ev(a.named("cs"), [0, 0])
    assert ev(rasp.ConstantSelector([[T]], check_length=False), [0, 0]) == [[T]]


def test_selector_sugar_simplifies_selects_like_tracr() -> None:
    le = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ)
    ge = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.GEQ)
    both = le & ge
    assert isinstance(both, rasp.Select) and both.keys is rasp.indices  # merged: same keys and queries
    assert ev(both, [0, 0, 0]) == [[T, F, F], [F, T, F], [F, F, T]]
    either = le | ge
    assert isinstance(either, rasp.Select) and ev(either, [0, 0]) == [[T, T], [T, T]]
    neg = ~le  # key > query
    assert isinstance(neg, rasp.Select) and ev(neg, [0, 0, 0]) == [[F, T, T], [F, F, T], [F, F, F]]
    # different keys: no merge
    other = rasp.Select(rasp.tokens, rasp.indices, rasp.Comparison.EQ)
    mixed = le & other
    assert isinstance(mixed, rasp.SelectorAnd)
    # toks [1, 0, 2]: other[q][k] = tokens[k] == q ; le[q][k] = k <= q
    assert ev(mixed, [1, 0, 2]) == [[F, F, F], [T, F, F], [F, F, T]]
    assert isinstance(rasp.selector_and(le, ge, simplify=False), rasp.SelectorAnd)
    assert isinstance(rasp.selector_not(le, simplify=False), rasp.SelectorNot)


def test_selector_merge_with_full_binds_the_constant() -> None:
    # Select(Full(1), indices, EQ) selects every key for query 1 only; merged with a Select over
    # (tokens, indices) it must keep that meaning with the Full's value bound in.
    only_q1 = rasp.Select(rasp.Full(1), rasp.indices, rasp.Comparison.EQ)
    tok_lt_q = rasp.Select(rasp.tokens, rasp.indices, rasp.Comparison.LT)
    merged = only_q1 & tok_lt_q
    assert isinstance(merged, rasp.Select) and merged.keys is rasp.tokens and merged.queries is rasp.indices
    # toks [0, 5, 0]: tok_lt_q[q][k] = tokens[k] < q; only row q=1 survives
    assert ev(merged, [0, 5, 0]) == [[F, F, F], [T, F, T], [F, F, F]]
    unmerged = rasp.selector_and(only_q1, tok_lt_q, simplify=False)
    assert ev(unmerged, [0, 5, 0]) == ev(merged, [0, 5, 0])


def test_selector_width() -> None:
    sw = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ))
    assert ev(sw, [1, 2, 1]) == [2, 1, 2]
    assert ev(rasp.SelectorWidth(rasp.ConstantSelector(A)), [0, 0, 0]) == [2, 1, 2]
    assert ev(rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.FALSE)), [1, 2]) == [
        0,
        0,
    ]


# --------------------------------------------------------------------------------------------------------
# Aggregate


def test_aggregate_categorical_reverse() -> None:
    length = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE)).named("length")
    opp = (length - rasp.indices - 1).named("opp")
    rev = rasp.Aggregate(rasp.Select(rasp.indices, opp, rasp.Comparison.EQ), rasp.tokens).named("reverse")
    assert ev(rev, list("abcd")) == list("dcba")
    assert rev.children == [rev.selector, rasp.tokens] and rev.default is None


def test_aggregate_default_where_nothing_selected() -> None:
    prev = rasp.Select(rasp.indices, rasp.indices - 1, rasp.Comparison.EQ)  # key == query - 1
    assert ev(rasp.Aggregate(prev, rasp.tokens, default="z"), list("abc")) == ["z", "a", "b"]
    none_default = rasp.Aggregate(prev, rasp.tokens)
    assert ev(none_default, list("abc")) == [None, "a", "b"]
    assert ev(rasp.Map(lambda x: x + "!", none_default), list("abc")) == [None, "a!", "b!"]


def test_aggregate_categorical_equal_values_allowed() -> None:
    same = rasp.Aggregate(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ), rasp.tokens)
    assert ev(same, ["x", "x", "y"]) == ["x", "x", "y"]


def test_aggregate_categorical_different_values_raises() -> None:
    agg = rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ), rasp.tokens).named(
        "bad"
    )
    assert ev(agg, ["a"]) == ["a"]
    with pytest.raises(
        rasp.RASPEvaluationError, match=r"categorical Aggregate 'bad' selects different values"
    ):
        ev(agg, ["a", "b"])


def test_aggregate_numerical_mean() -> None:
    is_l = rasp.numerical(rasp.Map(lambda x: x == "l", rasp.tokens))
    prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ)
    frac = rasp.numerical(rasp.Aggregate(prevs, is_l, default=0)).named("frac_prevs")
    out = ev(frac, list("hello"))
    assert out == pytest.approx([0, 0, 1 / 3, 2 / 4, 2 / 5])
    assert all(isinstance(v, float) for v in out)
    mean = rasp.numerical(rasp.Aggregate(rasp.ConstantSelector([[T, T, F]] * 3), rasp.tokens, default=0))
    assert ev(mean, [1, 4, 100]) == [2.5, 2.5, 2.5]
    empty = rasp.numerical(rasp.Aggregate(rasp.ConstantSelector([[F, F]] * 2), rasp.tokens, default=0))
    assert ev(empty, [1, 2]) == [0, 0]


def test_aggregate_numerical_non_numeric_raises() -> None:
    agg = rasp.numerical(rasp.Aggregate(rasp.ConstantSelector([[T, T]] * 2), rasp.tokens, default=0)).named(
        "num"
    )
    with pytest.raises(
        rasp.RASPEvaluationError, match=r"numerical Aggregate 'num' selects non-numeric value 'a'"
    ):
        ev(agg, ["a", "b"])


# --------------------------------------------------------------------------------------------------------
# Operator sugar (tracr's list): sop (op) const is a Map, sop (op) sop a SequenceMap, operands in order


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda t: t + 1, [2, 3, 5]),
        (lambda t: 1 + t, [2, 3, 5]),
        (lambda t: t - 1, [0, 1, 3]),
        (lambda t: 10 - t, [9, 8, 6]),
        (lambda t: t * 3, [3, 6, 12]),
        (lambda t: 3 * t, [3, 6, 12]),
        (lambda t: t / 2, [0.5, 1.0, 2.0]),
        (lambda t: 4 / t, [4.0, 2.0, 1.0]),
        (lambda t: t < 2, [T, F, F]),
        (lambda t: t <= 2, [T, T, F]),
        (lambda t: t > 2, [F, F, T]),
        (lambda t: t >= 2, [F, T, T]),
        (lambda t: t == 2, [F, T, F]),
        (lambda t: 2 == t, [F, T, F]),
        (lambda t: t != 2, [T, F, T]),
        (lambda t: ~(t == 2), [T, F, T]),
        (lambda t: (t == 2) & True, [F, T, F]),
        (lambda t: True & (t == 2), [F, T, F]),
        (lambda t: (t == 2) | False, [F, T, F]),
        (lambda t: False | (t == 2), [F, T, F]),
    ],
)
def test_sugar_with_constants(build: object, expected: list) -> None:
    sop = build(rasp.tokens)
    assert isinstance(sop, rasp.Map) and sop.children == [rasp.tokens]
    assert ev(sop, [1, 2, 4]) == expected


def test_sugar_operand_order_with_strings() -> None:
    assert ev(rasp.tokens + "!", ["a", "b"]) == ["a!", "b!"]
    assert ev("!" + rasp.tokens, ["a", "b"]) == ["!a", "!b"]


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        # fst = tokens [5, 6, 8], snd = indices [0, 1, 2]
        (lambda a, b: a + b, [5, 7, 10]),
        (lambda a, b: a - b, [5, 5, 6]),
        (lambda a, b: b - a, [-5, -5, -6]),
        (lambda a, b: a * b, [0, 6, 16]),
        (lambda a, b: b / a, [0.0, 1 / 6, 2 / 8]),
        (lambda a, b: (a > 5) & (b > 0), [F, T, T]),
        (lambda a, b: (a > 5) | (b > 1), [F, T, T]),
    ],
)
def test_sugar_with_sops(build: object, expected: list) -> None:
    sop = build(rasp.tokens, rasp.indices)
    assert isinstance(sop, rasp.SequenceMap)
    assert ev(sop, [5, 6, 8]) == pytest.approx(expected)


def test_reflected_sop_operators_keep_order() -> None:
    sm = rasp.tokens.__radd__(rasp.indices)
    assert isinstance(sm, rasp.SequenceMap) and sm.children == [rasp.indices, rasp.tokens]
    assert ev(rasp.tokens.__rsub__(rasp.indices), [5, 5]) == [-5, -4]  # indices - tokens


def test_comparing_sops_with_expressions_is_an_error() -> None:
    for op in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"):
        with pytest.raises(rasp.RASPTypeError, match="SequenceMap"):
            getattr(rasp.tokens, op)(rasp.indices)


def test_sops_hash_by_identity() -> None:
    a, b = rasp.Map(abs, rasp.tokens), rasp.Map(abs, rasp.tokens)
    d = {a: 1, b: 2, rasp.tokens: 3}
    assert d[a] == 1 and d[b] == 2 and d[rasp.tokens] == 3
    assert len({a, b, a}) == 2


# --------------------------------------------------------------------------------------------------------
# Labels, ids, annotations, encodings


@pytest.mark.parametrize(
    ("build", "kind"),
    [
        (lambda: rasp.Map(abs, rasp.tokens), "map"),
        (lambda: rasp.SequenceMap(max, rasp.tokens, rasp.indices), "sequence_map"),
        (lambda: rasp.LinearSequenceMap(rasp.tokens, rasp.indices, 1, 1), "linear_sequence_map"),
        (lambda: rasp.Full(1), "full"),
        (lambda: rasp.ConstantSOp([1]), "constant_sop"),
        (lambda: rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ), "select"),
        (lambda: rasp.ConstantSelector([[T]]), "constant_selector"),
        (
            lambda: rasp.SelectorAnd(rasp.ConstantSelector([[T]]), rasp.ConstantSelector([[T]])),
            "selector_and",
        ),
        (lambda: rasp.SelectorOr(rasp.ConstantSelector([[T]]), rasp.ConstantSelector([[T]])), "selector_or"),
        (lambda: rasp.SelectorNot(rasp.ConstantSelector([[T]])), "selector_not"),
        (lambda: rasp.SelectorWidth(rasp.ConstantSelector([[T]])), "selector_width"),
        (lambda: rasp.Aggregate(rasp.ConstantSelector([[T]]), rasp.tokens), "aggregate"),
    ],
)
def test_default_labels(build: object, kind: str) -> None:
    expr = build()
    assert expr.label == f"{kind}_{expr.unique_id}" == expr.name
    assert expr.label == expr.label  # stable
    rasp.Map(abs, rasp.tokens)  # constructing others does not change it
    assert expr.label == f"{kind}_{expr.unique_id}"


def test_unique_ids_increase_and_labels_are_unique() -> None:
    exprs = [rasp.Map(abs, rasp.tokens) for _ in range(50)]
    ids = [e.unique_id for e in exprs]
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert len({e.label for e in exprs}) == 50


def test_named() -> None:
    m = rasp.Map(abs, rasp.tokens)
    old_label = m.label
    n = m.named("foo")
    assert n is not m and n.label == "foo" == n.name and m.label == old_label
    assert n.unique_id > m.unique_id
    assert isinstance(n, rasp.Map) and n.inner is rasp.tokens
    assert ev(n, [-1]) == [1]
    assert rasp.tokens.named("x").label == "tokens"  # primitives keep their labels, as in tracr


def test_annotations_and_encodings() -> None:
    m = rasp.Map(abs, rasp.tokens)
    assert rasp.get_encoding(m) is rasp.Encoding.CATEGORICAL and rasp.is_categorical(m)
    assert not rasp.is_numerical(m) and m.annotations["encoding"] is rasp.Encoding.CATEGORICAL
    num = rasp.numerical(m)
    assert rasp.is_numerical(num) and rasp.is_categorical(m)  # original unchanged
    assert rasp.is_numerical(num.named("n"))  # naming keeps other annotations
    assert rasp.is_categorical(rasp.categorical(num))
    ann = m.annotated(foo=1, bar="x")
    assert ann.annotations["foo"] == 1 and "foo" in ann.annotations and "foo" not in m.annotations
    assert dict(ann.annotations) == {"foo": 1, "bar": "x"}
    assert "name" in ann.annotations and "encoding" in ann.annotations  # defaults are visible
    with pytest.raises(KeyError):
        m.annotations["nope"]
    with pytest.raises(TypeError):
        m.annotations["foo"] = 2  # type: ignore[index]
    assert rasp.annotate(m, name="q").label == "q"
    sel = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ)
    assert "encoding" not in sel.annotations
    with pytest.raises(rasp.RASPTypeError):
        rasp.get_encoding(sel)  # type: ignore[arg-type]
    with pytest.raises(rasp.RASPTypeError):
        rasp.numerical(sel)  # type: ignore[type-var]
    with pytest.raises(rasp.RASPTypeError):
        m.named("")
    with pytest.raises(rasp.RASPTypeError):
        m.annotated(encoding="numerical")


def test_default_annotators_extension_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(rasp.DEFAULT_ANNOTATORS, "color", lambda expr: f"red-{expr.label}")
    m = rasp.Map(abs, rasp.tokens).named("m")
    assert m.annotations["color"] == "red-m"
    assert m.annotated(color="blue").annotations["color"] == "blue"


# --------------------------------------------------------------------------------------------------------
# Graph walking


def test_topological_order() -> None:
    a = rasp.Map(abs, rasp.tokens)
    b = rasp.SequenceMap(max, a, rasp.indices)
    c = rasp.SequenceMap(min, b, a)  # a shared
    assert rasp.topological_order(c) == [rasp.tokens, a, rasp.indices, b, c]
    sel = rasp.Select(rasp.indices, c, rasp.Comparison.EQ)
    agg = rasp.Aggregate(sel, a)
    order = rasp.topological_order(agg)
    assert order == [rasp.indices, rasp.tokens, a, b, c, sel, agg]
    pos = {id(e): i for i, e in enumerate(order)}
    for e in order:
        assert all(pos[id(ch)] < pos[id(e)] for ch in e.children)


def test_deep_graph_walk_and_eval_do_not_recurse() -> None:
    x = rasp.tokens
    for _ in range(3000):  # deeper than the default recursion limit
        x = rasp.Map(lambda v: v + 1, x, simplify=False)
    assert len(rasp.topological_order(x)) == 3001
    assert ev(x, [0, 5]) == [3000, 3005]


@pytest.mark.parametrize("simplify", [True, False])
def test_depth_200_map_chain(simplify: bool) -> None:
    x = rasp.tokens
    for i in range(200):
        x = rasp.Map(lambda v, i=i: v + i, x, simplify=simplify)
    assert ev(x, [0, 1]) == [sum(range(200)), sum(range(200)) + 1]


def test_deep_sequence_map_and_aggregate_chain() -> None:
    x = rasp.tokens
    for _ in range(200):
        x = x + rasp.indices
    assert ev(x, [1, 1, 1]) == [1, 201, 401]
    y = rasp.tokens
    shift = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.EQ)
    for _ in range(200):
        y = rasp.numerical(rasp.Aggregate(shift, y, default=0))
    assert ev(y, [3, 4]) == [3.0, 4.0]


def test_shared_subexpressions_are_evaluated_once() -> None:
    calls: list = []

    def count(x: int) -> int:
        calls.append(x)
        return x

    a = rasp.Map(count, rasp.tokens)
    # (a + 1 would compose into a new Map that calls count again, as in tracr; SequenceMaps share a)
    b = rasp.SequenceMap(lambda x, y: x + y, a + rasp.indices, a * rasp.indices)
    c = rasp.SequenceMap(lambda x, y: x - y, b, a)
    assert ev(c, [1, 2, 3]) == [0, 3, 8]  # (x + i) + x * i - x
    assert sorted(calls) == [1, 2, 3]


# --------------------------------------------------------------------------------------------------------
# Interventions


def _reverse() -> tuple[rasp.SOp, rasp.SOp]:
    length = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE)).named("len")
    opp = (length - rasp.indices - 1).named("opp")
    rev = rasp.Aggregate(rasp.Select(rasp.indices, opp, rasp.Comparison.EQ), rasp.tokens).named("rev")
    return rev, opp


def test_intervention_list_form_on_tokens() -> None:
    m = rasp.Map(lambda x: x + 1, rasp.tokens)
    assert ev(m, [1, 2, 3], interventions={rasp.tokens: [10, 20, 30]}) == [11, 21, 31]
    assert ev(m, [1, 2, 3], interventions={"tokens": (10, 20, 30)}) == [11, 21, 31]


def test_intervention_dict_form_by_label_changes_downstream_only() -> None:
    rev, opp = _reverse()
    # opp = [3, 2, 1, 0]; make position 0 read index 1 instead of 3
    assert ev(rev, list("abcd"), interventions={"opp": {0: 1}}) == list("bcba")
    assert ev(rev, list("abcd"), interventions={opp: {0: 1, 3: 2}}) == list("bcbc")
    # tokens (a sibling input of the Aggregate) is not touched by an intervention on opp
    both = rasp.SequenceMap(lambda x, y: x + y, rev, rasp.tokens)
    assert ev(both, list("abcd"), interventions={"opp": {0: 1}}) == ["ba", "cb", "bc", "ad"]


def test_intervention_on_output_and_indices() -> None:
    rev, _ = _reverse()
    assert ev(rev, list("abc"), interventions={"rev": ["x", "y", "z"]}) == ["x", "y", "z"]
    # indices = [0, 0, 0] -> opp = [2, 2, 2], and the select compares against intervened indices too
    assert ev(rev, list("abc"), interventions={rasp.indices: [0, 0, 0]}) == [None, None, None]
    # indices = [0, 1, 0] -> opp = [2, 1, 2]; no key has index 2 any more
    assert ev(rev, list("abc"), interventions={rasp.indices: {2: 0}}) == [None, "b", None]


def test_intervention_by_label_hits_every_expression_with_that_label() -> None:
    num_tokens = rasp.numerical(rasp.tokens)  # a copy, also labelled "tokens"
    prog = rasp.SequenceMap(lambda x, y: x * 10 + y, rasp.tokens, num_tokens)
    assert ev(prog, [1, 2]) == [11, 22]
    assert ev(prog, [1, 2], interventions={"tokens": [3, 4]}) == [33, 44]
    assert ev(prog, [1, 2], interventions={num_tokens: {0: 5}}) == [55, 22]


def test_intervention_errors() -> None:
    rev, opp = _reverse()
    with pytest.raises(rasp.RASPInterventionError, match=r"unknown label 'nope'.*opp"):
        ev(rev, list("ab"), interventions={"nope": [0, 0]})
    with pytest.raises(rasp.RASPInterventionError, match=r"'opp': 3 values given for an input of length 2"):
        ev(rev, list("ab"), interventions={"opp": [0, 0, 0]})
    with pytest.raises(rasp.RASPInterventionError, match=r"position 2 is not in range"):
        ev(rev, list("ab"), interventions={"opp": {2: 0}})
    with pytest.raises(rasp.RASPInterventionError, match=r"position '0' is not in range"):
        ev(rev, list("ab"), interventions={"opp": {"0": 0}})
    with pytest.raises(rasp.RASPInterventionError, match="only SOps"):
        ev(rev, list("ab"), interventions={rev.selector: [0, 0]})
    with pytest.raises(rasp.RASPInterventionError, match="not part of the program"):
        ev(rev, list("ab"), interventions={rasp.Map(abs, rasp.tokens): [0, 0]})
    with pytest.raises(rasp.RASPInterventionError, match="unhashable"):
        ev(rev, list("ab"), interventions={"opp": {0: [1]}})
    with pytest.raises(rasp.RASPInterventionError, match="list .* or a dict"):
        ev(rev, list("ab"), interventions={"opp": 3})
    with pytest.raises(rasp.RASPInterventionError, match="must be a dict"):
        ev(rev, list("ab"), interventions=[("opp", [0, 0])])  # type: ignore[arg-type]
    with pytest.raises(rasp.RASPInterventionError, match="two interventions on 'opp'"):
        ev(rev, list("ab"), interventions={"opp": [0, 0], opp: {0: 1}})
    assert issubclass(rasp.RASPInterventionError, rasp.RASPEvaluationError)


# --------------------------------------------------------------------------------------------------------
# Errors: construction


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (
            lambda: rasp.Select(3, rasp.tokens, rasp.Comparison.EQ),
            r"Select 'select_\d+': keys must be a SOp, got int 3",
        ),
        (lambda: rasp.Select(rasp.tokens, "q", rasp.Comparison.EQ), r"queries must be a SOp"),
        (
            lambda: rasp.Select(rasp.tokens, rasp.tokens, "=="),
            r"predicate must be a Comparison or a callable",
        ),
        (lambda: rasp.Select(rasp.tokens, rasp.tokens, rasp.tokens), r"predicate must be"),
        (
            lambda: rasp.Aggregate(rasp.tokens, rasp.tokens),
            r"Aggregate 'aggregate_\d+': selector must be a Selector",
        ),
        (
            lambda: rasp.Aggregate(rasp.ConstantSelector([[T]]), rasp.ConstantSelector([[T]])),
            r"sop must be a SOp",
        ),
        (
            lambda: rasp.Aggregate(rasp.ConstantSelector([[T]]), rasp.tokens, default=[0]),
            r"default must be None",
        ),
        (lambda: rasp.Map(3, rasp.tokens), r"Map 'map_\d+': f must be a callable"),
        (lambda: rasp.Map(rasp.indices, rasp.tokens), r"f must be a callable \(not a RASP expression\)"),
        (lambda: rasp.Map(abs, [1, 2]), r"inner must be a SOp"),
        (lambda: rasp.SequenceMap(max, rasp.tokens, 3), r"SequenceMap 'sequence_map_\d+': snd must be a SOp"),
        (lambda: rasp.SequenceMap(None, rasp.tokens, rasp.tokens), r"f must be a callable"),
        (lambda: rasp.LinearSequenceMap(rasp.tokens, rasp.indices, "1", 1), r"fst_fac must be a real number"),
        (
            lambda: rasp.SelectorWidth(rasp.tokens),
            r"SelectorWidth 'selector_width_\d+': selector must be a Selector",
        ),
        (lambda: rasp.SelectorAnd(rasp.ConstantSelector([[T]]), rasp.tokens), r"snd must be a Selector"),
        (lambda: rasp.SelectorOr(rasp.tokens, rasp.ConstantSelector([[T]])), r"fst must be a Selector"),
        (lambda: rasp.SelectorNot(rasp.tokens), r"inner must be a Selector"),
        (lambda: rasp.ConstantSelector([[T]]) & rasp.tokens, r"selector_and: snd must be a Selector"),
        (lambda: rasp.Full([1]), r"fill must be a hashable value"),
        (lambda: rasp.ConstantSOp("abc"), r"value must be a list or tuple"),
        (lambda: rasp.ConstantSOp([[1]]), r"values must be hashable"),
        (lambda: rasp.ConstantSelector([T, F]), r"value must be a list of lists"),
        (lambda: rasp.topological_order(3), r"topological_order: argument must be a RASPExpr"),
    ],
)
def test_construction_errors(build: object, pattern: str) -> None:
    with pytest.raises(rasp.RASPTypeError, match=pattern) as info:
        build()
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


# --------------------------------------------------------------------------------------------------------
# Errors: evaluation


def test_map_raising_is_wrapped_with_label_and_input() -> None:
    foo = rasp.Map(lambda x: 1 / x, rasp.tokens).named("foo")
    with pytest.raises(
        rasp.RASPEvaluationError, match=r"Map 'foo' raised ZeroDivisionError on input 0: "
    ) as info:
        ev(foo, [1, 0])
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    sm = rasp.SequenceMap(lambda x, y: int(y), rasp.tokens, rasp.tokens).named("bar")
    with pytest.raises(
        rasp.RASPEvaluationError, match=r"SequenceMap 'bar' raised ValueError on inputs \('x', 'x'\)"
    ):
        ev(sm, ["x"])
    lin = rasp.LinearSequenceMap(rasp.tokens, rasp.indices, 1, 1).named("lin")
    with pytest.raises(rasp.RASPEvaluationError, match=r"LinearSequenceMap 'lin' raised TypeError"):
        ev(lin, ["x"])


def test_map_returning_unhashable_is_an_error() -> None:
    m = rasp.Map(lambda x: [x], rasp.tokens).named("listy")
    with pytest.raises(
        rasp.RASPEvaluationError, match=r"Map 'listy' returned an unhashable value list \[1\]"
    ):
        ev(m, [1])
    sm = rasp.SequenceMap(lambda x, y: {x: y}, rasp.tokens, rasp.indices).named("dicty")
    with pytest.raises(rasp.RASPEvaluationError, match=r"SequenceMap 'dicty' returned an unhashable"):
        ev(sm, [1])


def test_select_predicate_errors_name_the_select() -> None:
    def picky(key: object, query: object) -> bool:
        raise KeyError("no")

    sel = rasp.Select(rasp.tokens, rasp.tokens, picky).named("sel")
    with pytest.raises(
        rasp.RASPEvaluationError, match=r"Select 'sel': predicate picky raised KeyError on key 1"
    ):
        ev(sel, [1])
    # a None reaching a Comparison (here from an Aggregate's default) is reported at the Select
    prev = rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices - 1, rasp.Comparison.EQ), rasp.tokens)
    sel2 = rasp.Select(prev, rasp.tokens, rasp.Comparison.EQ).named("sel2")
    with pytest.raises(
        rasp.RASPEvaluationError, match=r"Select 'sel2': predicate Comparison.EQ .* key is None"
    ):
        ev(sel2, [1, 2])


@pytest.mark.parametrize("bad", ["abc", None, 3, iter([1, 2]), {1: 2}])
def test_inputs_must_be_list_or_tuple(bad: object) -> None:
    with pytest.raises(rasp.RASPTypeError, match="input must be a list or tuple"):
        ev(rasp.tokens, bad)  # type: ignore[arg-type]


def test_unhashable_tokens_and_bad_program() -> None:
    with pytest.raises(rasp.RASPTypeError, match=r"token at position 1 must be hashable, got list"):
        ev(rasp.tokens, [1, [2]])
    with pytest.raises(rasp.RASPTypeError, match=r"evaluate: program must be a RASPExpr"):
        rasp.evaluate(lambda x: x, [1])  # type: ignore[arg-type]


def test_max_seq_len() -> None:
    m = rasp.Map(abs, rasp.tokens)
    assert ev(m, [-1, -2, -3], max_seq_len=3) == [1, 2, 3]
    with pytest.raises(rasp.RASPEvaluationError, match=r"input has length 4 > max_seq_len 3"):
        ev(m, [1, 2, 3, 4], max_seq_len=3)
    assert rasp.Evaluator(max_seq_len=2).evaluate(m, [-5]) == [5]
    with pytest.raises(rasp.RASPTypeError):
        rasp.Evaluator(max_seq_len=-1)


def test_exception_hierarchy() -> None:
    assert issubclass(rasp.RASPError, ValueError)
    assert issubclass(rasp.RASPTypeError, rasp.RASPError) and issubclass(rasp.RASPTypeError, TypeError)
    assert issubclass(rasp.RASPEvaluationError, rasp.RASPError)


def test_evaluator_class_and_selector_output() -> None:
    evaluator = rasp.DefaultRASPEvaluator()
    assert isinstance(evaluator, rasp.RASPEvaluator) and isinstance(evaluator, rasp.Evaluator)
    sel = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ)
    out = evaluator.evaluate(sel, [1, 1])
    assert out == [[T, T], [T, T]] and all(type(b) is bool for row in out for b in row)
