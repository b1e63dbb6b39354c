"""Stage `compiler.graph.build_graph`: a RASP program becomes a typed op graph in topological order."""

import pytest
from support.stages import options, small_program

from rasp_compiler import rasp
from rasp_compiler.compiler.graph import build_graph
from rasp_compiler.compiler.options import CompileError


def test_ops_in_topological_order_with_kinds_and_children() -> None:
    g = build_graph(small_program(), options())
    assert g.output == "shifted"
    assert set(g.order) == {"tokens", "indices", "flip", "prev", "shifted"}
    pos = {label: i for i, label in enumerate(g.order)}
    for label in g.order:
        assert all(pos[c] < pos[label] for c in g.nodes[label].children)
    assert g.nodes["flip"].kind == "map" and g.nodes["flip"].children == ("tokens",)
    assert g.nodes["prev"].kind == "select" and g.nodes["prev"].is_selector
    assert g.nodes["shifted"].kind == "aggregate" and g.nodes["shifted"].children == ("prev", "flip")


def test_two_ops_with_one_label_are_both_kept() -> None:
    a = rasp.Map(lambda x: x + 1, rasp.tokens).named("same")
    b = rasp.Map(lambda x: x * 2, a, simplify=False).named("same")
    g = build_graph(b, options())
    assert len([lab for lab in g.order if lab.startswith("same")]) == 2


def test_a_selector_output_is_refused_naming_it() -> None:
    sel = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ).named("eq")
    with pytest.raises(CompileError, match="eq: the program's output must be an SOp"):
        build_graph(sel, options())
