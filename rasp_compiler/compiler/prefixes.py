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
and everything it reads is consistent. A selector selects no later key when some conjunct does: a
Select over indices x indices (`compiler.selectors.only_selects_earlier`), or a Select whose keys and
queries reveal their position (values of indices, or of Maps and SequenceMaps of indices whose value
determines the index, such as `(token, index)` pairs) and whose predicate, over every pair of values,
holds only where the key's position is at or before the query's. `length` is not consistent (it is n
at every position of an input of length n, but k + 1 in the prefix that ends at k). Where no rule
settles it, the SOp is evaluated on every input up to the longest length whose input space fits
`options.max_exhaustive_inputs`, and on the input one token shorter (enough, by induction on the
length); the program is refused at the first difference, naming the op, the input and the position.
When nothing differs there and the lengths cover max_seq_len the op is accepted; otherwise it is
refused as unprovable. Fixed-length constants (ConstantSOp, ConstantSelector) are refused: the prefix
evaluation evaluates the program on shorter inputs, where they have no value.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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
    positions which later tokens can change. Where the whole input space is too large, the inputs up to
    the longest length that fits `max_exhaustive_inputs` are still searched for such a witness."""
    if not options.causal:
        return
    for label in graph.order:
        if graph.nodes[label].kind in ("constant_sop", "constant_selector"):
            raise UnsupportedProgramError(
                f"{label}: a fixed-length constant cannot be compiled causally: the reference of a causal "
                "model evaluates the program on every prefix of the input, where it has no value"
            )
    proven = _proofs(graph, values, options)
    unproven = {sop: reader for sop, reader in cross_position_reads(graph) if not proven[sop]}
    if not unproven:
        return
    searchable = all(isinstance(graph.nodes[sop].expr, rasp.RASPExpr) for sop in unproven)
    # the longest inputs whose space fits the budget: all of it when it fits, else a search for a witness
    max_len = max(
        (n for n in range(1, options.max_seq_len + 1)
         if count_inputs(len(options.vocab), n) <= options.max_exhaustive_inputs),
        default=0,
    ) if searchable else 0
    for sop, reader in unproven.items():
        found = _first_change(graph.nodes[sop].expr, options.vocab, max_len)
        if found is not None:
            shorter, longer, k = found
            raise UnsupportedProgramError(
                f"{sop}: {reader} reads it at other positions, but appending a token changes its value "
                f"at position {k}: {shorter[1][k]!r} on the input {shorter[0]!r}, {longer[1][k]!r} on "
                f"{longer[0]!r}. A causal model computes it from the tokens up to each position, so it "
                "cannot agree with the prefix evaluation; restrict the selectors it depends on to earlier "
                "keys (SelectorAnd with Select(indices, indices, LEQ)) or compile without causal=True"
            )
    if max_len == options.max_seq_len:
        return  # every input checked: no op changes
    first, reader = next(iter(unproven.items()))
    n_inputs = count_inputs(len(options.vocab), options.max_seq_len)
    why = (
        f"the input space ({n_inputs:,} inputs) is larger than max_exhaustive_inputs "
        f"({options.max_exhaustive_inputs:,}; no change on inputs up to length {max_len})"
        if searchable
        else "the program is not built with rasp_compiler.rasp, so it cannot be evaluated exhaustively"
    )
    raise UnsupportedProgramError(
        f"{first}: {reader} reads it at other positions, so a causal model needs its value at a "
        "position never to change when tokens are appended; the program's structure does not prove "
        f"that (it depends on `length`, or on an Aggregate that may select later keys) and {why}. "
        "Restrict the selectors it depends on to earlier keys (SelectorAnd with "
        "Select(indices, indices, LEQ)) or compile without causal=True"
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


def _proofs(graph: ProgramGraph, values: ValueSets, options: CompilerOptions) -> dict[str, bool]:
    """Per SOp, whether the program's structure proves it prefix-consistent (False: not proven, maybe
    still true). One pass children-first, so deep programs need no recursion."""
    ok: dict[str, bool] = {}
    positions: dict[str, dict] = {}
    for label in graph.order:
        node = graph.nodes[label]
        if node.is_selector:
            continue
        positions[label] = _positions(node, positions, values, options)
        if node.kind in _ALWAYS:
            ok[label] = True
        elif node.kind == "length":
            ok[label] = options.max_seq_len == 1
        elif node.kind in _POINTWISE:
            ok[label] = all(ok[c] for c in node.children)
        elif node.kind in ("aggregate", "selector_width"):
            sel = node.children[0]
            read = [c for s in _selects_under(graph, sel) for c in graph.nodes[s].children]
            read += node.children[1:]
            ok[label] = all(ok[c] for c in read) and _earlier_only(graph, values, positions, sel)
        else:
            ok[label] = False
    return ok


def _earlier_only(graph: ProgramGraph, values: ValueSets, positions: dict[str, dict], sel: str) -> bool:
    """Proven: the selector never selects a key after the query, on any input."""
    node = graph.nodes[sel]
    if node.kind == "selector_and":
        return any(_earlier_only(graph, values, positions, c) for c in node.children)
    if node.kind == "selector_or":
        return all(_earlier_only(graph, values, positions, c) for c in node.children)
    if node.kind != "select":
        return False
    if only_selects_earlier(graph, values, sel):
        return True
    keys, queries = node.children
    at_key, at_query = positions[keys], positions[queries]
    key_values, query_values = values[keys].values, values[queries].values
    if not at_key or not at_query or key_values is None or query_values is None:
        return False
    pred = node.expr.predicate
    try:
        return all(
            not pred(k, q) or (k in at_key and q in at_query and at_key[k] <= at_query[q])
            for k in key_values
            for q in query_values
        )
    except Exception:  # noqa: BLE001 - a predicate undefined on some value pair proves nothing
        return False


def _positions(node: Any, positions: dict[str, dict], values: ValueSets, options: CompilerOptions) -> dict:
    """{value: the one position that can hold it} for the SOp's values that reveal their position (a Map
    or SequenceMap of indices whose value determines the index; `positions` has the children's);
    empty when none does."""
    if node.kind == "indices":
        return {i: i for i in range(options.max_seq_len)}
    if node.kind not in _POINTWISE or not any(positions.get(c) for c in node.children):
        return {}
    f = node.expr.f
    found: dict[Any, set[int]] = {}
    try:
        if node.kind == "map":
            at = positions[node.children[0]]
            for v in values[node.children[0]].values or ():
                found.setdefault(f(v), set()).add(at.get(v, -1))  # -1: a value that reveals nothing
        else:
            a, b = node.children
            a_vals, b_vals = values[a].values, values[b].values
            if a_vals is None or b_vals is None:
                return {}
            at_a, at_b = positions[a], positions[b]
            for x in a_vals:
                for y in b_vals:
                    pos = {at_a.get(x, -1), at_b.get(y, -1)} - {-1}
                    if len(pos) > 1:
                        continue  # the two arguments name different positions: no input holds this pair
                    found.setdefault(f(x, y), set()).add(pos.pop() if pos else -1)
    except Exception:  # noqa: BLE001 - value inference already refused functions that raise
        return {}
    return {v: ps.pop() for v, ps in found.items() if len(ps) == 1 and -1 not in ps}


def _first_change(
    expr: rasp.SOp, vocab: Any, max_len: int
) -> tuple[tuple[list, list], tuple[list, list], int] | None:
    """The first input up to `max_len` tokens (shortest first) on which appending its last token changes
    the SOp's value at an earlier position: ((prefix, values), (input, values), position). Inputs the
    evaluator refuses are skipped (no model is asked to be exact there)."""
    previous: dict[tuple, list] = {}
    current: dict[tuple, list] = {}
    length = 0
    for tokens in all_inputs(vocab, max_len):
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
