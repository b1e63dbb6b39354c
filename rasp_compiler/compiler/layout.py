"""Stage 5: layer allocation. Fewest layers: each op runs at the earliest slot after its inputs.

Slots alternate attention (2l) and MLP (2l + 1). An op's value is ready after its slot; embeddings
are ready at slot -1. A head goes to the first even slot after its inputs, an MLP to the first odd
slot, a selector width's MLP right after its head. This as-soon-as-possible schedule is a longest
path through the attn/MLP alternation, so no layout has fewer layers. Heads of one layer and MLPs
of one layer sit side by side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from rasp_compiler.compiler.blocks import Blocks
from rasp_compiler.compiler.graph import ProgramGraph
from rasp_compiler.compiler.options import CompilerOptions


@dataclasses.dataclass(frozen=True)
class Layout:
    n_layers: int
    heads: tuple[tuple[str, ...], ...]  # per layer: op labels of its heads, in head order
    mlps: tuple[tuple[str, ...], ...]  # per layer: op labels of its MLP blocks, in neuron order
    ready: Mapping[str, int]  # op label -> slot after which its value is in the residual


def allocate_layers(graph: ProgramGraph, blocks: Blocks, options: CompilerOptions) -> Layout:
    del options
    ready: dict[str, int] = {}
    head_slot: dict[str, int] = {}
    mlp_slot: dict[str, int] = {}
    for label in ["tokens", "indices", *graph.order]:
        ob = blocks.by_op.get(label)
        if ob is None or label in ready:
            continue
        start = max((ready[d] for d in ob.deps), default=-1)
        slot = -1
        if ob.head is not None:
            slot = start + 1 if start % 2 == 1 else start + 2  # next even slot
            head_slot[label] = slot
            start = slot
        if ob.mlp is not None:
            slot = start + 1 if start % 2 == 0 else start + 2  # next odd slot
            mlp_slot[label] = slot
        ready[label] = slot
    last = max(ready.values(), default=-1)
    n_layers = (last + 2) // 2 if last >= 0 else 0
    heads = tuple(tuple(lab for lab, s in head_slot.items() if s == 2 * layer) for layer in range(n_layers))
    mlps = tuple(tuple(lab for lab, s in mlp_slot.items() if s == 2 * layer + 1) for layer in range(n_layers))
    return Layout(n_layers, heads, mlps, ready)
