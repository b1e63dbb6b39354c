"""Stage `compiler.validate.find_problems`: every unsupported construct at once, each naming its op."""

import pytest
from support.stages import options, small_program

from rasp_compiler import rasp
from rasp_compiler.compiler.graph import build_graph
from rasp_compiler.compiler.options import CompileError
from rasp_compiler.compiler.validate import find_problems, validate


def test_a_supported_program_has_no_problems() -> None:
    assert find_problems(build_graph(small_program(), options()), options()) == []


def test_all_problems_are_reported_together() -> None:
    num = rasp.numerical(rasp.Map(lambda x: x / 2, rasp.tokens)).named("half")
    sel = rasp.Select(num, rasp.tokens, rasp.Comparison.EQ).named("bad_select")
    agg = rasp.categorical(rasp.Aggregate(sel, num, default=1)).named("bad_agg")
    problems = find_problems(build_graph(agg, options()), options())
    labels = {p.label for p in problems}
    assert {"bad_select", "bad_agg"} <= labels
    assert any("keys (half) must be categorical" in p.reason for p in problems)
    with pytest.raises(CompileError, match="bad_select"):
        validate(build_graph(agg, options()), options())
