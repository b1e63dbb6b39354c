"""Exact or refuse: the compiler never answers where the evaluator refuses, and None is a value."""

import itertools

import pytest

from rasp_compiler import rasp
from rasp_compiler.compiler import compiling
from rasp_compiler.compiler.options import CompileError

VOCAB, N = {1, 2, 3}, 4


def _compile(program, vocab=VOCAB, n=N):
    return compiling.compile_rasp_to_model(program, vocab=vocab, max_seq_len=n, compiler_bos="BOS")


def _inputs(vocab=VOCAB, n=N):
    for length in range(1, n + 1):
        yield from (list(x) for x in itertools.product(sorted(vocab), repeat=length))


def test_a_function_that_raises_on_a_reachable_value_is_refused_naming_op_and_input() -> None:
    program = rasp.categorical(rasp.Map(lambda x: 10 // (x - 2), rasp.tokens)).named("div")
    with pytest.raises(rasp.RASPEvaluationError):
        rasp.evaluate(program, [2])  # the evaluator refuses the input [2] ...
    with pytest.raises(CompileError, match=r"div: its function raises ZeroDivisionError .* on input 2"):
        _compile(program)  # ... so the compiler refuses the program


def test_a_sequence_map_that_raises_is_refused() -> None:
    sq = rasp.SequenceMap(lambda x, y: x // (y - 1), rasp.tokens, rasp.tokens)
    program = rasp.categorical(sq).named("sq")
    with pytest.raises(CompileError, match=r"sq: its function raises ZeroDivision.* on input \(\d, 1\)"):
        _compile(program)


def test_a_predicate_that_raises_is_refused() -> None:
    def never(k, q):
        raise ValueError("no")

    sel = rasp.Select(rasp.tokens, rasp.tokens, never).named("badsel")
    with pytest.raises(CompileError, match=r"badsel: its predicate raises ValueError \(no\) on key"):
        _compile(rasp.categorical(rasp.Aggregate(sel, rasp.tokens)).named("agg"))


def test_unhashable_results_are_refused() -> None:
    program = rasp.categorical(rasp.Map(lambda x: [x], rasp.tokens)).named("listy")
    with pytest.raises(CompileError, match="listy: its function returns the unhashable value"):
        _compile(program)


def test_a_function_returning_none_compiles_to_none_exactly() -> None:
    program = rasp.categorical(
        rasp.SequenceMap(lambda x, y: x if y > 1 else None, rasp.tokens, rasp.indices)
    ).named("maybe")
    model = _compile(program)
    seen_none = False
    for xs in _inputs():
        want = rasp.evaluate(program, xs)
        seen_none |= None in want
        assert model.apply(["BOS", *xs]).decoded[1:] == want, xs
    assert seen_none


def test_none_in_the_vocab_is_refused() -> None:
    with pytest.raises(CompileError, match="the vocab contains None"):
        _compile(rasp.tokens, vocab={1, None})


def test_a_cycle_is_refused_not_looped_on() -> None:
    m1 = rasp.Map(lambda x: x, rasp.tokens, simplify=False).named("m1")
    m2 = rasp.Map(lambda x: x, m1, simplify=False).named("m2")
    m1.inner = m2  # a program built by hand with a cycle
    with pytest.raises(CompileError, match="depends on itself"):
        _compile(m2)
