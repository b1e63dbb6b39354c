"""Optional stage between values and spaces: fuse an elementwise op into the Map that consumes it.

`Map(f, C)` where C is a (non-linear) Map or SequenceMap read by nothing else is computed by one
MLP as `f(C's function)` over C's inputs, one MLP slot earlier; C gets no residual directions and
the annotation lists both ops on that MLP. Chains fuse transitively. Off unless
`CompilerOptions.fuse_maps`, because then C's value is no longer in the residual stream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from rasp_compiler.compiler.graph import ProgramGraph
from rasp_compiler.compiler.options import CompilerOptions
from rasp_compiler.compiler.values import ValueSets


@dataclasses.dataclass(frozen=True)
class Effective:
    """What one MLP computes after fusion: kind, input SOps, function, and the ops it implements."""

    kind: str  # "map" | "sequence_map"
    inputs: tuple[str, ...]
    f: Callable[..., Any]
    ops: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Fusion:
    fused_into: Mapping[str, str]  # fused-away op -> the op whose MLP computes it
    effective: Mapping[str, Effective]  # consumer op -> what its MLP computes

    def is_fused_away(self, label: str) -> bool:
        return label in self.fused_into


def _compose(f: Callable[..., Any], g: Callable[..., Any]) -> Callable[..., Any]:
    def h(*args: Any) -> Any:
        inner = g(*args)
        return None if inner is None else f(inner)

    return h


def plan_fusion(graph: ProgramGraph, values: ValueSets, options: CompilerOptions) -> Fusion:
    """Which ops to fuse (none unless options.fuse_maps)."""
    del values
    if not options.fuse_maps:
        return Fusion({}, {})
    fused_into: dict[str, str] = {}
    effective: dict[str, Effective] = {}
    for label in graph.order:  # children first, so a child's effective form is known
        node = graph.nodes[label]
        if node.kind != "map":
            continue
        (child,) = node.children
        c = graph.nodes[child]
        fusible = (
            c.kind in ("map", "sequence_map") and child != graph.output and graph.graph.out_degree(child) == 1
        )
        if not fusible:
            continue
        inner = effective.get(child) or Effective(c.kind, c.children, c.expr.f, (child,))
        effective[label] = Effective(
            inner.kind, inner.inputs, _compose(node.expr.f, inner.f), (*inner.ops, label)
        )
        fused_into[child] = label
        for op in inner.ops:
            fused_into[op] = label
        effective.pop(child, None)
    return Fusion(fused_into, effective)
