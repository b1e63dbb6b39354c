"""Stage 3: labelled residual directions (docs/CONTRACTS.md section 2 naming).

`one`, `tokens:<bos>`, `tokens:<v>`, `indices:<i>`, then per SOp in program order either one
direction per value (`<label>:<value>`, categorical) or one direction (`<label>`, numerical), and
hidden helper directions `<label>__<role>` (selector width's BOS fraction).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from rasp_compiler.compiler.fuse import Fusion
from rasp_compiler.compiler.graph import ProgramGraph
from rasp_compiler.compiler.options import CompileError, CompilerOptions
from rasp_compiler.compiler.values import ValueSets
from rasp_compiler.model.directions import Direction, helper
from rasp_compiler.model.values import sort_values, token_key

ONE = "one"


@dataclasses.dataclass(frozen=True)
class Residual:
    """Residual directions, and for each SOp where its value lives."""

    labels: tuple[str, ...]
    index: Mapping[str, int]
    sop_dirs: Mapping[str, tuple[str, ...]]  # op label -> its residual labels (helpers excluded)
    value_dirs: Mapping[
        str, Mapping[Any, str]
    ]  # categorical op label -> token key of value -> residual label
    helpers: Mapping[str, str]  # "<label>__<role>" -> residual label (identity, kept for lookups)
    bos_dir: str

    def dir_of(self, label: str, value: Any) -> str | None:
        """Residual label of `value` of categorical SOp `label` (None: not a value it can take)."""
        return self.value_dirs[label].get(token_key(value))

    def numerical_dir(self, label: str) -> str:
        (d,) = self.sop_dirs[label]
        return d


def build_residual(
    graph: ProgramGraph, values: ValueSets, fusion: Fusion, options: CompilerOptions
) -> Residual:
    """Allocate residual directions for every SOp of the program (plus `one`, tokens, indices)."""
    labels: list[str] = [ONE]
    sop_dirs: dict[str, tuple[str, ...]] = {}
    value_dirs: dict[str, dict[Any, str]] = {}
    helpers: dict[str, str] = {}
    bos_dir = f"tokens:{options.bos}"

    def categorical(label: str, vals: tuple[Any, ...]) -> None:
        dirs: list[str] = []
        vd: dict[Any, str] = {}
        used = set()
        for v in vals:
            name = str(Direction(label, value=f"{v}"))
            if name in used:
                name = str(Direction(label, value=repr(v)))
            used.add(name)
            dirs.append(name)
            vd[token_key(v)] = name
        sop_dirs[label] = tuple(dirs)
        value_dirs[label] = vd

    labels.append(bos_dir)
    order = ["tokens", "indices"] + [n for n in graph.order if n not in ("tokens", "indices")]
    for label in order:
        if label not in graph.nodes:
            if label == "tokens":
                categorical("tokens", values_tokens(options))
            elif label == "indices":
                categorical("indices", tuple(range(options.max_seq_len)))
        else:
            node = graph.nodes[label]
            if node.is_selector:
                continue
            if fusion.is_fused_away(label):  # computed inside its consumer's MLP: not in the residual
                sop_dirs[label] = ()
                value_dirs[label] = {}
            elif node.encoding == "categorical":
                vals = values.require(label, "a categorical SOp's residual space")
                if len(vals) > options.max_categorical_values:
                    raise CompileError(
                        f"{label}: categorical SOp with {len(vals)} values (residual directions), over "
                        f"max_categorical_values={options.max_categorical_values}"
                    )
                categorical(label, vals)
            else:
                sop_dirs[label] = (label,)
        labels.extend(sop_dirs[label])
        if label in graph.nodes and graph.nodes[label].kind in ("selector_width", "length"):
            h = helper(label, "bos_frac")
            helpers[h] = h
            labels.append(h)
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        raise CompileError(f"residual direction names collide: {dup[:5]}; rename the ops involved")
    return Residual(
        tuple(labels), {lab: i for i, lab in enumerate(labels)}, sop_dirs, value_dirs, helpers, bos_dir
    )


def values_tokens(options: CompilerOptions) -> tuple[Any, ...]:
    return tuple(sort_values(options.vocab))
