"""Bad input, programs and compile calls: each is refused with an error of this package that names the
op (by label) or the argument, never a bare builtin exception."""

import pytest

from rasp_compiler import rasp
from rasp_compiler.compiler import compiling
from rasp_compiler.compiler.options import CompileError
from rasp_compiler.model import ModelError

compile_ = compiling.compile_rasp_to_model

CASES = [
    (lambda: rasp.Map(3, rasp.tokens), rasp.RASPTypeError, "f must be a callable"),
    (lambda: rasp.Aggregate(rasp.tokens, rasp.tokens), rasp.RASPTypeError, "selector must be a Selector"),
    (lambda: rasp.Select(3, rasp.tokens, rasp.Comparison.EQ), rasp.RASPTypeError, "keys must be a SOp"),
    (lambda: rasp.tokens.named(5), rasp.RASPTypeError, "non-empty str"),
    (lambda: rasp.evaluate(rasp.tokens, [1, 2, 3], max_seq_len=2), rasp.RASPEvaluationError, "max_seq_len 2"),
    (lambda: rasp.evaluate(rasp.tokens, 5), rasp.RASPTypeError, "list or tuple of tokens"),
    (lambda: compile_(rasp.tokens, vocab={1}, max_seq_len=0), CompileError, "max_seq_len"),
    (lambda: compile_(rasp.tokens, vocab=5, max_seq_len=2), CompileError, "collection"),
    (lambda: compile_(rasp.tokens, vocab=[[1]], max_seq_len=2), CompileError, "hashable"),
    (lambda: compile_("x", vocab={1}, max_seq_len=2), CompileError, "RASPExpr"),
    (lambda: compile_(rasp.numerical(rasp.Map(lambda x: x, rasp.tokens)).named("num"),
                                             vocab={"a"}, max_seq_len=2), CompileError, "num: .*non-numeric"),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_bad_programs_and_compile_calls(case: int) -> None:
    make, error, message = CASES[case]
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("tokens, message", [
    (["BOS", 7], "token 7 is not in the input vocabulary"),
    ([1, 2], "must start with the BOS token"),
    (["BOS", 1, 1, 1, 1], "max_seq_len is 3"),
])
def test_bad_model_inputs(tokens, message) -> None:
    model = compiling.compile_rasp_to_model(rasp.tokens, vocab={1, 2}, max_seq_len=3, compiler_bos="BOS")
    with pytest.raises(ModelError, match=message):
        model.apply(tokens)
