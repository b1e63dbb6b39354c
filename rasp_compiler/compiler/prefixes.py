"""Stage 2c (causal compiles only): every value a decoder-only model reads at another position is
prefix-consistent, proven or checked, else the program is refused.

The reference for a causal model is the prefix evaluation (`rasp.evaluate_prefixes`): its output at
position i is `evaluate(program, tokens[:i+1])[i]`. A causal model computes position j from positions
0..j (`rasp.evaluate(..., causal=True)`). The two agree on every op at every position whenever each SOp
the program reads at another position - the keys of a Select, the values of an Aggregate - is
prefix-consistent: its value at position k never changes when tokens are appended after k. (By
induction over the program: the model's value of an op at j is then the prefix evaluation's, because
every key and value it reads at k <= j is the same in `tokens[:k+1]` and in `tokens[:j+1]`; queries
and Map inputs are read at j itself, where the two agree by the induction.) So every structural fact
the later stages prove about the full evaluation on all inputs holds for the causal model too.

Consistency is proven from the structure: tokens, indices and constants are; Maps and SequenceMaps of
consistent SOps are; an Aggregate or SelectorWidth is when its selector selects no key after the query
(a conjunct over indices x indices, `compiler.selectors.only_selects_earlier`) and everything it reads
is consistent. `length` is not (it is n at every position of an input of length n, but k + 1 in the
prefix that ends at k). Where no rule settles it and the input space has at most
`options.max_exhaustive_inputs` inputs, the SOp is evaluated on every input and on the input one token
shorter (enough by induction on the length) and the program refused at the first difference, naming
the op, the input and the position; otherwise it is refused as unprovable. Fixed-length constants
(ConstantSOp, ConstantSelector) are refused: the prefix evaluation evaluates the program on shorter
inputs, where they have no value.
"""

from __future__ import annotations

from collections.abc import Iterator

from rasp_compiler import rasp
from rasp_compiler.compiler.graph import ProgramGraph
from rasp_compiler.compiler.options import CompilerOptions, UnsupportedProgramError
from rasp_compiler.compiler.preconditions import all_inputs, count_inputs
from rasp_compiler.compiler.selectors import only_selects_earlier
from rasp_compiler.compiler.values import ValueSets
from rasp_compiler.model.outputs import values_equal

_ALWAYS = frozenset({"tokens", "indices", "full"})
_POINTWISE = frozenset({"map", "sequence_map", "linear_sequence_map"})


def check_prefix_consistency(graph: ProgramGraph, values: ValueSets, options: CompilerOptions) -> None:
    """Nothing for a bidirectional compile; for `options.causal`, refuse (naming the op and an input
    where appending a token changes it, or the missing proof) a program that reads a value across
    positions which later tokens can change."""
    if not options.causal:
        return
    for label in graph.order:
        if graph.nodes[label].kind in ("constant_sop", "constant_selector"):
            raise UnsupportedProgramError(
                f"{label}: a fixed-length constant cannot be compiled causally: the reference of a causal "
                "model evaluates the program on every prefix of the input, where it has no value"
            )
    proofs: dict[str, bool] = {}
    unproven = {
        sop: reader
        for sop, reader in cross_position_reads(graph)
        if not _consistent(graph, values, options, sop, proofs)
    }
    if not unproven:
        return
    n_inputs = count_inputs(len(options.vocab), options.max_seq_len)
    first, reader = next(iter(unproven.items()))
    if n_inputs > options.max_exhaustive_inputs or not isinstance(graph.nodes[first].expr, rasp.RASPExpr):
        why = (
            f"the input space ({n_inputs:,} inputs) is larger than max_exhaustive_inputs "
            f"({options.max_exhaustive_inputs:,})"
            if isinstance(graph.nodes[first].expr, rasp.RASPExpr)
            else "the program is not built with rasp_compiler.rasp, so it cannot be evaluated exhaustively"
        )
        raise UnsupportedProgramError(
            f"{first}: {reader} reads it at other positions, so a causal model needs its value at a "
            "position never to change when tokens are appended; the program's structure does not prove "
            f"that (it depends on `length`, or on an Aggregate that may select later keys) and {why}. "
            "Restrict the selectors it depends on to earlier keys (SelectorAnd with "
            "Select(indices, indices, LEQ)) or compile without causal=True"
        )
    for sop, reader in unproven.items():
        found = _first_change(graph.nodes[sop].expr, options)
        if found is not None:
            shorter, longer, k = found
            raise UnsupportedProgramError(
                f"{sop}: {reader} reads it at other positions, but appending a token changes its value "
                f"at position {k}: {shorter[1][k]!r} on the input {shorter[0]!r}, {longer[1][k]!r} on "
                f"{longer[0]!r}. A causal model computes it from the tokens up to each position, so it "
                "cannot agree with the prefix evaluation; restrict the selectors it depends on to earlier "
                "keys (SelectorAnd with Select(indices, indices, LEQ)) or compile without causal=True"
            )


def cross_position_reads(graph: ProgramGraph) -> Iterator[tuple[str, str]]:
    """(SOp, description of the reader) for every SOp read at positions other than its reader's: the
    keys of every Select under an Aggregate or SelectorWidth, and every Aggregate's values."""
    for label in graph.order:
        node = graph.nodes[label]
        if node.kind not in ("aggregate", "selector_width"):
            continue
        kind = "Aggregate" if node.kind == "aggregate" else "SelectorWidth"
        for sel in _selects_under(graph, node.children[0]):
            yield graph.nodes[sel].children[0], f"{kind} {label} (keys of Select {sel})"
        if node.kind == "aggregate":
            yield node.children[1], f"Aggregate {label} (its values)"


def _selects_under(graph: ProgramGraph, sel: str) -> list[str]:
    node = graph.nodes[sel]
    if node.kind == "select":
        return [sel]
    return [s for child in node.children for s in _selects_under(graph, child)]


def _consistent(
    graph: ProgramGraph, values: ValueSets, options: CompilerOptions, label: str, memo: dict[str, bool]
) -> bool:
    """Proven prefix-consistent from the program's structure (False: not proven, maybe still true)."""
    if label in memo:
        return memo[label]
    node = graph.nodes[label]
    if node.kind in _ALWAYS:
        ok = True
    elif node.kind == "length":
        ok = options.max_seq_len == 1
    elif node.kind in _POINTWISE:
        ok = all(_consistent(graph, values, options, c, memo) for c in node.children)
    elif node.kind in ("aggregate", "selector_width"):
        sel = node.children[0]
        read = [c for s in _selects_under(graph, sel) for c in graph.nodes[s].children]
        read += node.children[1:]
        ok = only_selects_earlier(graph, values, sel) and all(
            _consistent(graph, values, options, c, memo) for c in read
        )
    else:
        ok = False
    memo[label] = ok
    return ok


def _first_change(
    expr: rasp.SOp, options: CompilerOptions
) -> tuple[tuple[list, list], tuple[list, list], int] | None:
    """The first input (shortest first) on which appending its last token changes the SOp's value at an
    earlier position: ((prefix, values), (input, values), position). Inputs the evaluator refuses are
    skipped (no model is asked to be exact there)."""
    previous: dict[tuple, list] = {}
    current: dict[tuple, list] = {}
    length = 0
    for tokens in all_inputs(options.vocab, options.max_seq_len):
        if len(tokens) != length:
            previous, current, length = current, {}, len(tokens)
        try:
            out = rasp.evaluate(expr, tokens)
        except rasp.RASPEvaluationError:
            continue
        current[tuple(tokens)] = out
        before = previous.get(tuple(tokens[:-1]))
        if before is None:
            continue
        for k, (a, b) in enumerate(zip(before, out[:-1], strict=True)):
            if not values_equal(a, b, numerical=False):
                return (tokens[:-1], before), (tokens, out), k
    return None
