"""Running the compiler's stages one at a time, for the stage-level tests in tests/compiler/."""

from __future__ import annotations

from typing import Any

from rasp_compiler import rasp
from rasp_compiler.compiler.blocks import build_blocks
from rasp_compiler.compiler.fuse import plan_fusion
from rasp_compiler.compiler.graph import build_graph
from rasp_compiler.compiler.options import CompilerOptions
from rasp_compiler.compiler.spaces import build_residual
from rasp_compiler.compiler.values import infer_values


def options(vocab: Any = (1, 2, 3), max_seq_len: int = 4, **kw: Any) -> CompilerOptions:
    return CompilerOptions(vocab=frozenset(vocab), max_seq_len=max_seq_len, **kw)


def small_program() -> Any:
    """`flip`: tokens 1<->3 through a Map, then the token of the previous position through an Aggregate."""
    flip = rasp.categorical(rasp.Map(lambda x: 4 - x, rasp.tokens)).named("flip")
    prev = rasp.Select(rasp.indices, rasp.indices, lambda k, q: k == q - 1).named("prev")
    return rasp.categorical(rasp.Aggregate(prev, flip)).named("shifted")


def through(stage: str, program: Any, opts: CompilerOptions) -> dict[str, Any]:
    """Every stage's output up to and including `stage` (graph, values, fusion, residual, blocks)."""
    out: dict[str, Any] = {"graph": build_graph(program, opts)}
    if stage == "graph":
        return out
    out["values"] = infer_values(out["graph"], opts)
    if stage == "values":
        return out
    out["fusion"] = plan_fusion(out["graph"], out["values"], opts)
    if stage == "fusion":
        return out
    out["residual"] = build_residual(out["graph"], out["values"], out["fusion"], opts)
    if stage == "residual":
        return out
    out["blocks"] = build_blocks(out["graph"], out["values"], out["residual"], out["fusion"], opts)
    return out
