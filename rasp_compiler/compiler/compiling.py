"""Compile a RASP program into a transformer: the pipeline on one screen.

`compile_rasp_to_model` is tracr's entry point (same arguments and meaning); `compile` is ours, with
every knob in one `CompilerOptions`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from rasp_compiler.compiler.assemble import Assembled, assemble
from rasp_compiler.compiler.blocks import build_blocks
from rasp_compiler.compiler.fuse import plan_fusion
from rasp_compiler.compiler.graph import ProgramGraph, build_graph
from rasp_compiler.compiler.layout import allocate_layers
from rasp_compiler.compiler.options import CompileError, CompilerOptions, UnsupportedProgramError
from rasp_compiler.compiler.preconditions import check_preconditions
from rasp_compiler.compiler.prefixes import check_prefix_consistency
from rasp_compiler.compiler.spaces import Residual, build_residual
from rasp_compiler.compiler.validate import validate
from rasp_compiler.compiler.values import ValueSets, infer_values
from rasp_compiler.model.compiled import CompiledModel
from rasp_compiler.rasp.source import to_source

__all__ = [
    "CompileError",
    "CompiledGraph",
    "CompilerOptions",
    "UnsupportedProgramError",
    "compile",
    "compile_graph",
    "compile_rasp_to_model",
    "tracr_options",
]

COMPILER_BOS = "BOS"


@dataclasses.dataclass(frozen=True)
class CompiledGraph:
    """What the stages made of a program graph; multi-output models re-read `values` and `residual`."""

    graph: ProgramGraph
    values: ValueSets
    residual: Residual
    out: Assembled


def compile_graph(graph: ProgramGraph, options: CompilerOptions) -> CompiledGraph:
    """Every stage after graph building, in order: the one place the pipeline is written."""
    validate(graph, options)
    values = infer_values(graph, options)
    assumed = check_preconditions(graph, values, options)
    check_prefix_consistency(graph, values, options)
    fusion = plan_fusion(graph, values, options)
    residual = build_residual(graph, values, fusion, options)
    blocks = build_blocks(graph, values, residual, fusion, options)
    layout = allocate_layers(graph, blocks, options)
    out = assemble(graph, values, residual, blocks, layout, options, assumed)
    return CompiledGraph(graph, values, residual, out)


def compile(program: Any, options: CompilerOptions) -> CompiledModel:  # noqa: A001 - the package's verb
    """RASP program -> CompiledModel whose decoded output equals `rasp.evaluate` on every valid input."""
    graph = build_graph(program, options)
    out = compile_graph(graph, options).out
    return CompiledModel(out.config, out.weights, out.codec, out.annotation, _program_source(program, graph))


def tracr_options(
    vocab: Iterable[Any],
    max_seq_len: int,
    compiler_bos: Any = COMPILER_BOS,
    compiler_pad: Any = None,
    mlp_exactness: float = 100,
    **kwargs: Any,
) -> CompilerOptions:
    """CompilerOptions from tracr's argument names; extra keyword arguments are CompilerOptions fields."""
    return CompilerOptions(
        vocab=vocab,  # CompilerOptions checks and freezes it
        max_seq_len=max_seq_len,
        bos=compiler_bos,
        pad=compiler_pad,
        mlp_exactness=mlp_exactness,
        **kwargs,
    )


def compile_rasp_to_model(
    program: Any,
    vocab: Iterable[Any],
    max_seq_len: int,
    compiler_bos: Any = COMPILER_BOS,
    compiler_pad: Any = None,
    mlp_exactness: float = 100,
    **kwargs: Any,
) -> CompiledModel:
    """tracr's signature (`causal=True` for a decoder-only model). Extra keyword arguments go to
    CompilerOptions."""
    options = tracr_options(vocab, max_seq_len, compiler_bos, compiler_pad, mlp_exactness, **kwargs)
    return compile(program, options)


def _program_source(program: Any, graph: ProgramGraph) -> str:
    """Python source that rebuilds the program (rasp_compiler.rasp.source), else a readable op listing."""
    try:

        return to_source(program, strict=False)
    except Exception:  # noqa: BLE001 - e.g. a program built with tracr's rasp: describe it instead
        return _describe(graph)


def _describe(g: ProgramGraph) -> str:
    """A readable description of the program graph (one op per line, children by label)."""
    lines = []
    for label in g.order:
        n = g.nodes[label]
        extra = ""
        if n.kind == "select":
            pred = n.expr.predicate
            extra = f" predicate={getattr(pred, 'name', None) or getattr(pred, '__name__', '?')}"
        lines.append(f"{label} = {n.kind}({', '.join(n.children)}){extra} [{n.encoding}]")
    return "\n".join(lines)
