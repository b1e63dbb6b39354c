"""Randomly composed programs (hypothesis, fixed seed): the compiled model equals `rasp.evaluate`.

A small local strategy draws a typed expression at a time from tokens and indices: categorical and
numerical Maps, SequenceMaps, LinearSequenceMaps, categorical and numerical Aggregates with selector
combinators, SelectorWidth. Every input (vocab {0,1,2}, length <= 4) is checked.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support.compiler import check_model, inputs_for

from rasp_compiler import rasp
from rasp_compiler.compiler import compiling
from rasp_compiler.compiler.options import CompileError

VOCAB = (0, 1, 2)
MAX_LEN = 4
CMP = [
    rasp.Comparison.EQ,
    rasp.Comparison.LT,
    rasp.Comparison.LEQ,
    rasp.Comparison.GT,
    rasp.Comparison.GEQ,
    rasp.Comparison.NEQ,
    rasp.Comparison.TRUE,
    rasp.Comparison.FALSE,
]
MAPS = [lambda x: (x + 1) % 4, lambda x: x % 2, lambda x: min(x, 2), lambda x: 3 - x, lambda x: int(x > 1)]
SEQ_MAPS = [
    lambda x, y: (x + y) % 4,
    lambda x, y: max(x, y),
    lambda x, y: int(x == y),
    lambda x, y: (x * y) % 3,
]
NUM_MAPS = [lambda x: int(x > 0.5), lambda x: int(x == 0), lambda x: round(2 * x) % 3]


def _recent(pool: list[Any]) -> Any:
    """Prefer the newest SOps so that programs grow deep rather than wide."""
    return st.sampled_from(pool[-2:] * 2 + pool)


@st.composite
def selectors(draw: Any, cats: list[Any]) -> Any:
    def select() -> Any:
        return rasp.Select(draw(_recent(cats)), draw(_recent(cats)), draw(st.sampled_from(CMP)))

    kind = draw(st.sampled_from(["select", "select", "and", "or_same", "not", "const"]))
    if kind == "select":
        return select()
    if kind == "const":  # a fixed pattern, valid for every length up to MAX_LEN
        pattern = draw(
            st.lists(
                st.lists(st.booleans(), min_size=MAX_LEN, max_size=MAX_LEN),
                min_size=MAX_LEN,
                max_size=MAX_LEN,
            )
        )
        return rasp.SelectorAnd(rasp.ConstantSelector(pattern, check_length=False), select())
    if kind == "and":
        return rasp.SelectorAnd(select(), select())
    if kind == "not":
        return rasp.SelectorNot(select())
    keys, queries = draw(_recent(cats)), draw(_recent(cats))
    a = rasp.Select(keys, queries, draw(st.sampled_from(CMP)))
    b = rasp.Select(keys, queries, draw(st.sampled_from(CMP)))
    return rasp.SelectorOr(a, b)


@st.composite
def programs(draw: Any) -> Any:
    leaves = [rasp.tokens, rasp.indices]
    if draw(st.booleans()):
        leaves.append(draw(st.sampled_from([rasp.length, rasp.Full(1)])))
    cats: list[Any] = list(leaves)
    safe: list[Any] = list(leaves)  # never None (no categorical Aggregate upstream)
    nums: list[Any] = []
    last = None
    for _ in range(draw(st.integers(1, 7))):
        choice = draw(st.sampled_from(["map", "seqmap", "agg", "width", "num", "numagg", "lin", "nummap"]))
        if choice == "map":
            inner = draw(_recent(cats))
            last = rasp.Map(draw(st.sampled_from(MAPS)), inner)
            cats.append(last)
            if any(inner is x for x in safe):
                safe.append(last)
        elif choice == "seqmap":
            last = rasp.SequenceMap(draw(st.sampled_from(SEQ_MAPS)), draw(_recent(cats)), draw(_recent(cats)))
            cats.append(last)
        elif choice == "agg":
            last = rasp.Aggregate(draw(selectors(cats)), draw(_recent(cats)))
            cats.append(last)
        elif choice == "width":
            last = rasp.SelectorWidth(draw(selectors(cats)))
            cats.append(last)
            safe.append(last)
        elif choice == "num":
            # numerical SOps cannot hold None: feed them only values that are never None
            last = rasp.numerical(rasp.Map(draw(st.sampled_from(MAPS)), draw(_recent(safe))))
            nums.append(last)
        elif choice == "numagg" and nums:
            last = rasp.numerical(rasp.Aggregate(draw(selectors(cats)), draw(_recent(nums)), default=0))
            nums.append(last)
        elif choice == "lin" and nums:
            last = rasp.numerical(
                rasp.LinearSequenceMap(
                    draw(_recent(nums)),
                    draw(_recent(nums)),
                    draw(st.sampled_from([1, -1, 2, 0.5])),
                    draw(st.sampled_from([1, -1, 3])),
                )
            )
            nums.append(last)
        elif choice == "nummap" and nums:
            last = rasp.Map(draw(st.sampled_from(NUM_MAPS)), draw(_recent(nums)))
            cats.append(last)
    if last is None:
        last = rasp.Map(MAPS[0], rasp.tokens)
    return last


INPUTS = inputs_for(VOCAB, MAX_LEN)


@settings(max_examples=100, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(programs())
def test_random_program_is_exact(program: Any) -> None:
    try:
        model = compiling.compile_rasp_to_model(program, set(VOCAB), MAX_LEN)
    except CompileError as e:
        if "selects different values" not in str(e):
            raise
        # refused for a categorical Aggregate that disagrees: the evaluator must refuse some input so
        refusals = 0
        for xs in INPUTS:
            try:
                rasp.evaluate(program, xs)
            except rasp.AggregateDisagreementError:
                refusals += 1
        assert refusals > 0, f"refused, but the evaluator accepts every input: {e}"
        return
    count, bad = check_model(program, model, INPUTS, use_torch=False)
    assume(count > 0)  # programs undefined on every input (e.g. always-ambiguous aggregates) prove nothing
    assert not bad, f"{len(bad)} wrong, e.g. {bad[:3]}"


@settings(max_examples=100, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(programs())
def test_value_inference_claims_hold(program: Any) -> None:
    """Soundness of the static facts the compiler relies on, checked against the evaluator: value
    sets contain every value, "never None" SOps are never None, "earlier position" SOps are."""
    from rasp_compiler.compiler.graph import build_graph
    from rasp_compiler.compiler.options import CompilerOptions
    from rasp_compiler.compiler.values import infer_values

    opts = CompilerOptions(vocab=frozenset(VOCAB), max_seq_len=MAX_LEN)
    graph = build_graph(program, opts)
    values = infer_values(graph, opts)
    for label in graph.order:
        node = graph.nodes[label]
        if node.is_selector:
            continue
        info = values[label]
        for x in INPUTS:
            try:
                got = rasp.evaluate(node.expr, x)
            except Exception:  # noqa: BLE001 - undefined on this input
                continue
            for i, v in enumerate(got):
                if v is None:
                    assert info.may_be_none, (label, x, got)
                    continue
                if info.values is not None:
                    assert any(v == w for w in info.values), (label, v, info.values)
                if info.at_or_before:
                    assert isinstance(v, int) and 0 <= v <= i, (label, x, got)
