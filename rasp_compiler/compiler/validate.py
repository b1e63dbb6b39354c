"""Stage 0: static checks. Every problem at once, each naming its op, before any weight is built."""

from __future__ import annotations

import dataclasses

from rasp_compiler.compiler.graph import ProgramGraph
from rasp_compiler.compiler.options import CompilerOptions, UnsupportedProgramError


@dataclasses.dataclass(frozen=True)
class Problem:
    """An op the compiler cannot turn into exact weights, and why."""

    label: str
    reason: str

    def __str__(self) -> str:
        return f"{self.label}: {self.reason}"


def find_problems(graph: ProgramGraph, options: CompilerOptions) -> list[Problem]:
    """All static problems of the program (empty list: it passes static validation)."""
    del options
    out: list[Problem] = []
    for label in graph.order:
        n = graph.nodes[label]
        enc = n.encoding
        kid = [graph.nodes[c] for c in n.children]
        if n.kind in ("tokens", "indices") and enc != "categorical":
            out.append(Problem(label, f"{n.kind} must be categorical"))
        elif n.kind == "select":
            keys, queries = kid
            if keys.encoding != "categorical":
                out.append(Problem(label, f"Select keys ({keys.label}) must be categorical"))
            if queries.encoding != "categorical":
                out.append(Problem(label, f"Select queries ({queries.label}) must be categorical"))
        elif n.kind == "aggregate":
            sop = kid[1]
            if enc != sop.encoding:
                out.append(
                    Problem(
                        label,
                        f"a {enc} Aggregate of the {sop.encoding} SOp {sop.label} is not "
                        "supported; convert the SOp with a Map first",
                    )
                )
            default = getattr(n.expr, "default", None)
            if enc == "categorical" and default is not None:
                out.append(
                    Problem(label, f"categorical Aggregate only supports default None, got {default!r}")
                )
            if enc == "numerical" and default not in (0, None):
                out.append(Problem(label, f"numerical Aggregate only supports default 0, got {default!r}"))
        elif n.kind == "sequence_map":
            if any(k.encoding != "categorical" for k in kid):
                out.append(
                    Problem(
                        label,
                        "a non-linear SequenceMap needs categorical inputs "
                        f"({', '.join(k.label + ':' + str(k.encoding) for k in kid)})",
                    )
                )
        elif n.kind == "linear_sequence_map":
            if enc != "numerical" and any(k.encoding != "categorical" for k in kid):
                out.append(Problem(label, "a categorical LinearSequenceMap needs categorical inputs"))
    return out


def validate(graph: ProgramGraph, options: CompilerOptions) -> None:
    """Raise UnsupportedProgramError listing every problem (names the ops)."""
    problems = find_problems(graph, options)
    if problems:
        raise UnsupportedProgramError("Unsupported RASP expressions:\n" + "\n".join(str(p) for p in problems))
