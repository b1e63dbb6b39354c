"""The program library against independent plain-Python oracles, tracr's library and the compiler's rules."""

from __future__ import annotations

import math
import re
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.oracles import ORACLES, count_less_freq, detect, maximum, shift, shuffle_dyck, sort_by

from rasp_compiler import rasp
from rasp_compiler.rasp import lib

NAMES = sorted(lib.LIBRARY)


def assert_same(got: Sequence[Any], want: Sequence[Any], what: str) -> None:
    """Equal lists; floats compared with a relative tolerance, None only equal to None."""
    assert len(got) == len(want), f"{what}: length {len(got)} != {len(want)}: {got} vs {want}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g is None or w is None:
            ok = g is None and w is None
        elif isinstance(g, float) or isinstance(w, float):
            ok = math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-12)
        else:
            ok = g == w
        assert ok, f"{what}: position {i}: got {g!r}, want {w!r} (full: {got} vs {want})"


def inputs_for(entry: lib.LibraryEntry) -> st.SearchStrategy[list[Any]]:
    vocab = sorted(entry.vocab)
    if entry.distinct_tokens:
        return st.lists(st.sampled_from(vocab), max_size=min(entry.max_seq_len, len(vocab)), unique=True)
    return st.lists(st.sampled_from(vocab), max_size=entry.max_seq_len)


# ----------------------------------------------------------------------------------------------------------
# Registry shape


def test_registry_covers_tracr_and_extras() -> None:
    tracr_names = set(TRACR_NAMES)
    assert tracr_names <= set(lib.LIBRARY)
    assert len(set(lib.LIBRARY) - tracr_names) >= 10
    assert set(ORACLES) == set(lib.LIBRARY), "every library program needs an oracle"


@pytest.mark.parametrize("name", NAMES)
def test_entry_is_well_formed(name: str) -> None:
    entry = lib.LIBRARY[name]
    program = entry.builder()
    assert isinstance(program, rasp.SOp)
    assert entry.encoding == ("numerical" if rasp.is_numerical(program) else "categorical")
    assert entry.vocab and entry.max_seq_len >= 1 and entry.examples
    for xs in entry.examples:
        assert len(xs) <= entry.max_seq_len and set(xs) <= entry.vocab
        if entry.distinct_tokens:
            assert len(set(xs)) == len(xs)


# ----------------------------------------------------------------------------------------------------------
# Each program against its oracle


@pytest.mark.parametrize("name", NAMES)
def test_examples_and_edge_cases(name: str) -> None:
    entry = lib.LIBRARY[name]
    program, oracle = entry.builder(), ORACLES[name]
    vocab = sorted(entry.vocab)
    cases: list[list[Any]] = [*entry.examples, []]
    cases += [[v] for v in vocab]
    n = entry.max_seq_len
    if entry.distinct_tokens:
        cases += [vocab[:n], vocab[:n][::-1]]
    else:
        cases += [[v] * n for v in vocab]
        cases += [[vocab[i % len(vocab)] for i in range(n)], [vocab[(n - i) % len(vocab)] for i in range(n)]]
    for xs in cases:
        assert_same(rasp.evaluate(program, xs), oracle(xs), f"{name}({xs})")


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40)
@given(data=st.data())
def test_random_inputs_match_oracle(name: str, data: st.DataObject) -> None:
    entry = lib.LIBRARY[name]
    xs = data.draw(inputs_for(entry), label="xs")
    assert_same(rasp.evaluate(entry.builder(), xs), ORACLES[name](xs), f"{name}({xs})")


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=10)
@given(data=st.data())
def test_long_inputs_match_oracle(name: str, data: st.DataObject) -> None:
    """The default programs stay correct up to LIBRARY_MAX_LEN, beyond the default compile size."""
    entry = lib.LIBRARY[name]
    vocab = sorted(entry.vocab)
    n = lib.LIBRARY_MAX_LEN
    size = min(n, len(vocab)) if entry.distinct_tokens else n
    xs = data.draw(
        st.lists(st.sampled_from(vocab), min_size=size // 2, max_size=size, unique=entry.distinct_tokens),
        label="xs",
    )
    assert_same(rasp.evaluate(entry.builder(), xs), ORACLES[name](xs), f"{name}({xs})")


# Non-default arguments, each with its oracle: (id, builder, vocab, max_seq_len, oracle).
VARIANTS: list[tuple[str, Callable[[], rasp.SOp], tuple, int, Callable[[list[Any]], list[Any]]]] = [
    (
        "reverse_indices",
        lambda: lib.make_reverse(rasp.indices),
        ("a", "b"),
        6,
        lambda xs: list(range(len(xs)))[::-1],
    ),
    (
        "shuffle_dyck3",
        lambda: lib.make_shuffle_dyck(["()", "{}", "[]"]),
        tuple("(){}[]"),
        6,
        lambda xs: shuffle_dyck(xs, ["()", "{}", "[]"]),
    ),
    ("argsort", lambda: lib.make_sort_unique(rasp.indices, rasp.tokens), (1, 2, 3, 4, 5, 6), 6, None),
    (
        "sort_indices_by_tokens",
        lambda: lib.make_sort(rasp.indices, rasp.tokens, max_seq_len=6, min_key=1),
        (1, 2, 3),
        6,
        lambda xs: sort_by(list(range(len(xs))), xs),
    ),
    (
        "sort_half_gap",
        lambda: lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=6, min_key=0.5),
        (0.0, 0.5, 1.0),
        6,
        sorted,
    ),
    ("shift_by_2", lambda: lib.shift_by(2, rasp.tokens), ("a", "b", "c"), 6, lambda xs: shift(xs, 2)),
    ("shift_by_-1", lambda: lib.shift_by(-1, rasp.tokens), ("a", "b", "c"), 6, lambda xs: shift(xs, -1)),
    ("detect_a", lambda: lib.detect_pattern(rasp.tokens, ["a"]), ("a", "b"), 5, lambda xs: detect(xs, ["a"])),
    (
        "detect_aba",
        lambda: lib.detect_pattern(rasp.tokens, "aba"),
        ("a", "b"),
        7,
        lambda xs: detect(xs, "aba"),
    ),
    (
        "count_less_freq_1",
        lambda: lib.make_count_less_freq(1),
        ("a", "b", "c"),
        6,
        lambda xs: count_less_freq(xs, 1),
    ),
    (
        "nary_two",
        lambda: lib.make_nary_sequencemap(lambda a, b: (a, b), rasp.tokens, rasp.indices),
        ("a", "b"),
        4,
        lambda xs: [(x, i) for i, x in enumerate(xs)],
    ),
    (
        "nary_one",
        lambda: lib.make_nary_sequencemap(lambda a: a * 2, rasp.tokens),
        (1, 2),
        4,
        lambda xs: [x * 2 for x in xs],
    ),
    (
        "running_max_of_reverse",
        lambda: lib.make_running_max(lib.make_reverse(rasp.tokens), [1, 2, 3]),
        (1, 2, 3),
        5,
        lambda xs: [max(xs[::-1][: i + 1]) for i in range(len(xs))],
    ),
    ("running_max_single_value", lambda: lib.make_running_max(rasp.tokens, [7]), (7,), 3, lambda xs: xs),
    ("max_strings", lambda: lib.make_max(rasp.tokens), ("x", "y", "z"), 5, maximum),
    (
        "depth_braces",
        lambda: lib.make_bracket_depth(rasp.tokens, "{", "}"),
        ("{", "}", "a"),
        6,
        lambda xs: [xs[: i + 1].count("{") - xs[: i + 1].count("}") for i in range(len(xs))],
    ),
    ("induction_bits", lambda: lib.make_induction(rasp.tokens), (0, 1), 7, ORACLES["induction"]),
]


def _argsort(xs: list[Any]) -> list[int]:
    return sorted(range(len(xs)), key=lambda i: xs[i])


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
@settings(max_examples=25)
@given(data=st.data())
def test_variants_match_oracle(variant: tuple, data: st.DataObject) -> None:
    vid, builder, vocab, max_len, oracle = variant
    distinct = vid == "argsort"
    oracle = oracle or _argsort
    xs = data.draw(st.lists(st.sampled_from(vocab), max_size=max_len, unique=distinct), label="xs")
    assert_same(rasp.evaluate(builder(), xs), oracle(xs), f"{vid}({xs})")


def test_docstring_examples() -> None:
    """The examples quoted in the docstrings (checked against oracles, not transcribed outputs)."""
    t = rasp.tokens
    cases = [
        (lib.make_hist(), list("abac"), ORACLES["hist"]),
        (lib.make_sort_freq(5), [2, 4, 2, 1], ORACLES["sort_freq"]),
        (lib.detect_pattern(t, "ab"), list("abab"), lambda xs: detect(xs, "ab")),
        (lib.make_shuffle_dyck(["()", "{}"]), list("({)}"), lambda xs: shuffle_dyck(xs, ["()", "{}"])),
        (lib.make_induction(t), list("abcab"), ORACLES["induction"]),
        (lib.make_dedup(t), list("abba"), ORACLES["dedup"]),
        (lib.make_most_frequent(t), list("ba"), ORACLES["most_frequent"]),
    ]
    for program, xs, oracle in cases:
        assert_same(program(xs), oracle(xs), f"{program.label}({xs})")
    assert lib.make_induction(t)(list("abcab")) == [None, None, None, "b", "c"]
    assert lib.make_count_less_freq(2)(list("aaabbc")) == [3] * 6


# ----------------------------------------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize(
    "build",
    [
        lambda: lib.make_shuffle_dyck([]),
        lambda: lib.make_shuffle_dyck(["(", "{}"]),
        lambda: lib.detect_pattern(rasp.tokens, ""),
        lambda: lib.make_running_max(rasp.tokens, []),
        lambda: lib.make_nary_sequencemap(lambda: 0),
    ],
)
def test_bad_arguments_raise_value_error(build: Callable[[], Any]) -> None:
    with pytest.raises(ValueError):
        build()


# ----------------------------------------------------------------------------------------------------------
# Compilability: the rules a tracr-style compiler imposes, checked statically and on inputs


def _walk(program: Any) -> list[Any]:
    seen: dict[int, Any] = {}
    stack = [program]
    while stack:
        expr = stack.pop()
        if id(expr) not in seen:
            seen[id(expr)] = expr
            stack.extend(expr.children)
    return list(seen.values())


def _static_problems(program: rasp.SOp) -> list[str]:
    problems = []
    for e in _walk(program):
        if isinstance(e, rasp.Select):
            if not (rasp.is_categorical(e.keys) and rasp.is_categorical(e.queries)):
                problems.append(f"{e.label}: Select keys/queries must be categorical")
        elif isinstance(e, rasp.Aggregate):
            if rasp.get_encoding(e) != rasp.get_encoding(e.sop):
                problems.append(f"{e.label}: Aggregate changes encoding")
            if rasp.is_categorical(e) and e.default is not None:
                problems.append(f"{e.label}: categorical Aggregate default must be None")
            if rasp.is_numerical(e) and e.default != 0:
                problems.append(f"{e.label}: numerical Aggregate default must be 0")
        elif isinstance(e, rasp.LinearSequenceMap):
            if not all(rasp.is_numerical(x) for x in (e, e.fst, e.snd)):
                problems.append(f"{e.label}: LinearSequenceMap must be numerical throughout")
        elif isinstance(e, rasp.SequenceMap):
            if not all(rasp.is_categorical(x) for x in (e, e.fst, e.snd)):
                problems.append(f"{e.label}: SequenceMap must be categorical throughout")
    return problems


def _dynamic_problems(program: rasp.SOp, xs: list[Any]) -> list[str]:
    problems = []
    for e in _walk(program):
        if not isinstance(e, rasp.Aggregate):
            continue
        rows = rasp.evaluate(e.selector, xs)
        values = rasp.evaluate(e.sop, xs)
        if rasp.is_numerical(e):
            if any(v is not None and v not in (0, 1) for v in values):
                problems.append(f"{e.label}: numerical Aggregate of non-binary values {sorted(set(values))}")
        else:
            # Stricter than the compiler needs (it accepts several keys holding one value): one key at
            # most, so that tracr's evaluator, which refuses to "average" equal strings, runs them too.
            for q, row in enumerate(rows):
                picked = [v for b, v in zip(row, values, strict=True) if b]
                if len(picked) > 1:
                    problems.append(f"{e.label}: query {q} selects {len(picked)} keys: {picked}")
    return problems


@pytest.mark.parametrize("name", NAMES)
def test_programs_obey_compiler_rules(name: str) -> None:
    entry = lib.LIBRARY[name]
    program = entry.builder()
    assert _static_problems(program) == []
    vocab = sorted(entry.vocab)
    n = entry.max_seq_len
    inputs = [*entry.examples, [vocab[i % len(vocab)] for i in range(min(n, len(vocab)))]]
    if not entry.distinct_tokens:
        inputs += [[vocab[(i * i) % len(vocab)] for i in range(n)], [vocab[-1]] * n]
    for xs in inputs:
        assert _dynamic_problems(program, xs) == [], f"{name} on {xs}"


def test_rule_checker_catches_a_wide_categorical_aggregate() -> None:
    """The dynamic check above must be able to fail."""
    mean_all = rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.TRUE), rasp.indices)
    assert _dynamic_problems(mean_all, []) == []
    assert _dynamic_problems(mean_all, [1]) == []
    assert _dynamic_problems(mean_all, [1, 2])
    bad_default = rasp.numerical(
        rasp.Aggregate(
            rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.EQ),
            rasp.numerical(rasp.Map(lambda x: 1, rasp.tokens)),
            default=1,
        )
    )
    assert _static_problems(bad_default)


# ----------------------------------------------------------------------------------------------------------
# Same behaviour and names as tracr's library


def _tracr_builders() -> dict[str, Callable[[], Any]]:
    tlib = pytest.importorskip(
        "tracr.compiler.lib", reason="tracr is not installed: no cross-check against it"
    )
    from tracr.rasp import rasp as trasp

    return {
        "length": tlib.make_length,
        "reverse": lambda: tlib.make_reverse(trasp.tokens),
        "pair_balance": lambda: tlib.make_pair_balance(trasp.tokens, "(", ")"),
        "shuffle_dyck": lambda: tlib.make_shuffle_dyck(["()"]),
        "shuffle_dyck2": tlib.make_shuffle_dyck2,
        "hist": tlib.make_hist,
        "sort_unique": lambda: tlib.make_sort_unique(trasp.tokens, trasp.tokens),
        "sort": lambda: tlib.make_sort(
            trasp.tokens, trasp.tokens, max_seq_len=lib.LIBRARY_MAX_LEN, min_key=1
        ),
        "sort_freq": lambda: tlib.make_sort_freq(lib.LIBRARY_MAX_LEN),
        "frac_prevs": lambda: tlib.make_frac_prevs(trasp.tokens == "a"),
        "shift_by": lambda: tlib.shift_by(1, trasp.tokens),
        "detect_pattern": lambda: tlib.detect_pattern(trasp.tokens, "abc"),
        "count_less_freq": lambda: tlib.make_count_less_freq(2),
        "count": lambda: tlib.make_count(trasp.tokens, "a"),
        "nary_sequencemap": lambda: tlib.make_nary_sequencemap(
            lambda x, i, n: x * (n - i), trasp.tokens, trasp.indices, tlib.length
        ),
    }


TRACR_NAMES = [
    "length",
    "reverse",
    "pair_balance",
    "shuffle_dyck",
    "shuffle_dyck2",
    "hist",
    "sort_unique",
    "sort",
    "sort_freq",
    "frac_prevs",
    "shift_by",
    "detect_pattern",
    "count_less_freq",
    "count",
    "nary_sequencemap",
]


@pytest.mark.parametrize("name", TRACR_NAMES)
@settings(max_examples=25)
@given(data=st.data())
def test_same_outputs_as_tracr(name: str, data: st.DataObject) -> None:
    tracr_program = _tracr_builders()[name]()
    from tracr.rasp import rasp as trasp

    entry = lib.LIBRARY[name]
    xs = data.draw(inputs_for(entry), label="xs")
    assert_same(rasp.evaluate(entry.builder(), xs), trasp.evaluate(tracr_program, xs), f"{name}({xs})")


_DEFAULT_NAMES = (
    "linear_sequence_map",
    "sequence_map",
    "map",
    "full",
    "constant_sop",
    "selector_width",
    "aggregate",
    "select",
    "selector_and",
    "selector_or",
    "selector_not",
    "constant_selector",
)
_AUTO_NAME = re.compile(rf"^({'|'.join(_DEFAULT_NAMES)})_\d+$")


def _names(program: Any) -> list[str]:
    """Every node's name; our default names carry an id suffix ('map_12') where tracr's don't ('map')."""
    return sorted(_AUTO_NAME.sub(r"\1", e.name) for e in _walk(program))


@pytest.mark.parametrize("name", TRACR_NAMES)
def test_same_names_as_tracr(name: str) -> None:
    tracr_program = _tracr_builders()[name]()
    ours = lib.LIBRARY[name].builder()
    assert _AUTO_NAME.sub(r"\1", ours.name) == tracr_program.name
    assert _names(ours) == _names(tracr_program)


def _library_on_tracr() -> Any:
    """lib.py's own source, run against tracr's `rasp` module instead of ours."""
    pytest.importorskip("tracr.rasp.rasp", reason="tracr is not installed: no cross-check against it")
    source = Path(lib.__file__).read_text()
    marker = "from rasp_compiler import rasp\n"
    assert marker in source
    name = "rasp_compiler_lib_on_tracr"
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        sys.modules[name] = module  # dataclasses look their module up there
        exec(
            compile(source.replace(marker, "from tracr.rasp import rasp\n"), lib.__file__, "exec"),
            module.__dict__,
        )
    return module


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=15)
@given(data=st.data())
def test_library_runs_unchanged_on_tracr(name: str, data: st.DataObject) -> None:
    """Every program, built with tracr's RASP and run by tracr's evaluator, agrees with ours."""
    from tracr.rasp import rasp as trasp

    entry = lib.LIBRARY[name]
    tracr_program = _library_on_tracr().LIBRARY[name].builder()
    xs = data.draw(inputs_for(entry), label="xs")
    assert_same(rasp.evaluate(entry.builder(), xs), trasp.evaluate(tracr_program, xs), f"{name}({xs})")
