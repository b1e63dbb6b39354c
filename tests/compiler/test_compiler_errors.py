"""Programs the compiler cannot make exact fail at compile time, with the op's label in the message."""

from __future__ import annotations

import pytest

from rasp_compiler import rasp
from rasp_compiler.compiler import compiling
from rasp_compiler.compiler.options import CompileError, CompilerOptions, UnsupportedProgramError

C = rasp.Comparison


def test_numerical_aggregate_of_categorical_sop() -> None:
    agg = rasp.numerical(
        rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, C.LEQ), rasp.tokens, default=0)
    ).named("bad_mean")
    with pytest.raises(UnsupportedProgramError, match="bad_mean"):
        compiling.compile_rasp_to_model(agg, {0, 1}, 4)
    with pytest.raises(NotImplementedError):  # tracr's exception type still catches it
        compiling.compile_rasp_to_model(agg, {0, 1}, 4)


def test_all_problems_reported_at_once() -> None:
    num = rasp.numerical(rasp.Map(lambda x: x, rasp.tokens)).named("num")
    sel = rasp.Select(num, rasp.tokens, C.EQ).named("num_keys")
    prog = rasp.SequenceMap(lambda x, y: x + y, rasp.Aggregate(sel, rasp.tokens).named("agg"), num).named(
        "mix"
    )
    with pytest.raises(UnsupportedProgramError) as err:
        compiling.compile_rasp_to_model(prog, {0, 1}, 4)
    assert "num_keys" in str(err.value) and "mix" in str(err.value)


def test_value_set_over_limit() -> None:
    vals = rasp.numerical(rasp.Map(lambda x: x * 1.37, rasp.tokens))
    mean = rasp.numerical(rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, C.LEQ), vals, default=0))
    prog = rasp.Map(lambda x: x > 2, mean).named("threshold")
    opts = CompilerOptions(vocab=frozenset(range(8)), max_seq_len=8, max_value_set=500)
    with pytest.raises(CompileError, match="threshold"):
        compiling.compile(prog, opts)


def test_bad_options() -> None:
    with pytest.raises(CompileError, match="BOS"):
        compiling.compile_rasp_to_model(rasp.tokens, {"BOS", "a"}, 3)
    with pytest.raises(CompileError, match="max_seq_len"):
        compiling.compile_rasp_to_model(rasp.tokens, {"a"}, 0)
    with pytest.raises(CompileError, match="selector"):
        compiling.compile_rasp_to_model(rasp.Select(rasp.tokens, rasp.tokens, C.EQ), {"a"}, 3)


def test_numerical_sop_from_maybe_none_value() -> None:
    shifted = rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, lambda k, q: q == k + 1), rasp.tokens)
    prog = rasp.numerical(rasp.Map(lambda x: x * 2, shifted.named("shifted"))).named("doubled")
    with pytest.raises(CompileError, match="doubled.*shifted"):
        compiling.compile_rasp_to_model(prog, {0, 1}, 4)
    model = compiling.compile_rasp_to_model(prog, {0, 1}, 4, none_as_zero=True)  # opt-in: None reads as 0
    assert model.apply(["BOS", 1, 1, 0]).decoded[1:] == pytest.approx([0.0, 2.0, 2.0], abs=1e-5)
