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


def test_a_categorical_aggregate_selecting_different_values_is_refused_naming_an_input() -> None:
    everything = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE).named("all")
    program = rasp.categorical(rasp.Aggregate(everything, rasp.tokens)).named("agg")
    with pytest.raises(rasp.RASPEvaluationError, match="selects different values"):
        rasp.evaluate(program, [1, 2])
    # small input space: evaluated exhaustively, the first refused input is named
    with pytest.raises(CompileError, match=r"refuses the input \[1, 2\].*'agg' selects different values"):
        _compile(program)
    # too large to enumerate and nothing proves agreement: refused naming the op and the way out
    with pytest.raises(CompileError, match=r"agg: categorical Aggregate that may select .* max_exhaustive"):
        compiling.compile_rasp_to_model(program, vocab=set(range(10)), max_seq_len=8)


def test_agreement_is_proven_from_structure_where_the_input_space_is_too_large_to_enumerate() -> None:
    from rasp_compiler.compiler.preconditions import count_inputs
    from rasp_compiler.rasp import lib

    vocab, n = set(range(1, 13)), 8
    assert count_inputs(len(vocab), n) > 20_000
    programs = {
        "sort": lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=n, min_key=1),  # unique keys x + i/n
        "max": lib.make_max(rasp.tokens),  # the one position whose rank is 0
        "reverse": lib.make_reverse(rasp.tokens),  # EQ on indices
        "same": rasp.Aggregate(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ), rasp.tokens),
    }
    import random

    rng = random.Random(0)
    for name, program in programs.items():
        model = compiling.compile_rasp_to_model(program, vocab=vocab, max_seq_len=n)
        for _ in range(50):
            xs = [rng.choice(sorted(vocab)) for _ in range(rng.randint(1, n))]
            assert model.apply(["BOS", *xs]).decoded[1:] == rasp.evaluate(program, xs), (name, xs)


def test_agreement_on_the_selected_key_value_is_not_enough_when_the_aggregated_sop_differs() -> None:
    # keys agree (same token) but the aggregated indices differ: must not be taken as proven
    same = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ).named("same")
    program = rasp.categorical(rasp.Aggregate(same, rasp.indices)).named("where")
    with pytest.raises(CompileError, match=r"refuses the input \[1, 1\]"):
        _compile(program)


def test_a_declared_precondition_is_checked_where_possible_and_recorded_where_not(tmp_path) -> None:
    from rasp_compiler.model.compiled import load
    from rasp_compiler.rasp import lib

    small = _compile(lib.make_dedup(rasp.tokens))  # 120 inputs: checked, so nothing is assumed
    assert small.annotation.ops["dedup"].assumption is None
    large = compiling.compile_rasp_to_model(lib.make_dedup(rasp.tokens), vocab={1, 2, 3}, max_seq_len=10)
    assert "declared by the program" in large.annotation.ops["dedup"].assumption
    large.save(tmp_path / "m")
    assert load(tmp_path / "m").annotation.ops["dedup"].assumption == large.annotation.ops["dedup"].assumption
    # a false declaration is still caught where the inputs can be enumerated
    everything = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE)
    lying = rasp.categorical(rasp.Aggregate(everything, rasp.tokens)).named("agg").annotated(agreeing=True)
    with pytest.raises(CompileError, match=r"refuses the input \[1, 2\]"):
        _compile(lying)


def _shifted() -> rasp.SOp:
    """tokens moved one position right: None at position 0 of every input."""
    prev = rasp.Select(rasp.indices, rasp.indices, lambda k, q: k == q - 1).named("prev")
    return rasp.Aggregate(prev, rasp.tokens).named("shifted")


def test_a_select_comparing_none_is_refused() -> None:
    cmp = rasp.Select(_shifted(), rasp.tokens, rasp.Comparison.EQ).named("cmp")
    program = rasp.SelectorWidth(cmp).named("w")
    with pytest.raises(rasp.RASPEvaluationError, match="key is None"):
        rasp.evaluate(program, [1, 2])
    with pytest.raises(CompileError, match=r"cmp: on the input \[1\] its shifted holds None"):
        _compile(program)
    with pytest.raises(CompileError, match=r"cmp: Select whose shifted can be None"):
        compiling.compile_rasp_to_model(program, vocab=set(range(10)), max_seq_len=8)


def test_a_custom_predicate_given_none_is_refused_though_the_evaluator_answers() -> None:
    # the evaluator hands None to a custom predicate and answers; a model's None matches nothing
    sel = rasp.Select(_shifted(), rasp.tokens, lambda k, q: k is None).named("is_first")
    program = rasp.SelectorWidth(sel).named("w")
    assert rasp.evaluate(program, [1, 2]) == [1, 1]
    with pytest.raises(CompileError, match=r"is_first: on the input \[1\] its shifted holds None"):
        _compile(program)


def test_reverse_is_proven_to_always_select_so_palindrome_compiles_beyond_enumeration() -> None:
    from rasp_compiler.compiler.preconditions import count_inputs
    from rasp_compiler.rasp import lib

    vocab, n = {1, 2, 3}, 12
    assert count_inputs(len(vocab), n) > 20_000
    program = lib.make_is_palindrome(rasp.tokens)
    model = compiling.compile_rasp_to_model(program, vocab=vocab, max_seq_len=n)
    for xs in ([1, 2, 1], [1, 2, 2, 1], [1, 2, 3], [3] * 12, [1, 2, 3, 3, 2, 1, 1, 2, 3, 3, 2, 1]):
        assert model.apply(["BOS", *xs]).decoded[1:] == rasp.evaluate(program, xs), xs


def test_generated_programs_are_exact_on_every_input_or_refused() -> None:
    """150 generated programs, every input of every allowed length: a compiled model equals the evaluator
    wherever it answers, and the evaluator refuses no input of a program that compiled."""
    from rasp_compiler.compiler.preconditions import all_inputs
    from rasp_compiler.model.outputs import outputs_equal
    from rasp_compiler.testing.fuzz import program_for

    checked = 0
    for i in range(150):
        gp = program_for(3, i)
        try:
            model = _compile(gp.program, gp.vocab, gp.max_seq_len)
        except CompileError:
            continue
        numerical = model.codec.output_encoding == "numerical"
        for xs in all_inputs(gp.vocab, gp.max_seq_len):
            if len(xs) not in gp.lengths:
                continue
            want = rasp.evaluate(gp.program, xs)  # raises if the evaluator refuses: the test fails
            assert outputs_equal(want, model.apply(["BOS", *xs]).decoded[1:], numerical), (i, xs)
            checked += 1
    assert checked > 10_000
