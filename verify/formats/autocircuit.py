"""auto-circuit's edge names and prune scores in and out."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from verify.circuit import (
    OUTPUT,
    Circuit,
    CircuitError,
    Edge,
    ModelGraph,
    as_edge,
    check_edge,
    legal_edges,
    node_kind,
    score_value,
)
from verify.formats.graphs import MERGED, check_named, circuit_from_groups, graph_of

__all__ = [
    "circuit_above",
    "from_autocircuit",
    "from_autocircuit_scores",
    "to_autocircuit",
    "to_autocircuit_scores",
]


def _ac_src_name(node: str) -> str:
    kind, layer, head = node_kind(node)
    if kind in ("embed", "pos_embed"):
        return "Resid Start"
    if kind == "attn":
        return f"A{layer}.{head}"
    return f"MLP {layer}"


def _ac_dest_name(node: str, inp: str) -> str:
    kind, layer, head = node_kind(node)
    if kind == "attn":
        return f"A{layer}.{head}.{inp.upper()}"
    if kind == "mlp":
        return f"MLP {layer}"
    return "Resid End"


def named_node(name: str, fixed: Mapping[str, str], head_re: str, mlp_re: str) -> str | None:
    """A tool's node name -> our component: one of `fixed`, a head (`head_re` groups: layer, head) or an
    MLP (`mlp_re` group: layer); None when it is none of them."""
    name = name.strip()
    if name in fixed:
        return fixed[name]
    m = re.fullmatch(head_re, name)
    if m:
        return f"L{m.group(1)}.H{m.group(2)}"
    m = re.fullmatch(mlp_re, name)
    if m:
        return f"L{m.group(1)}.MLP"
    return None


def _ac_src_node(name: str) -> str:
    node = named_node(name, {"Resid Start": MERGED}, r"A(\d+)\.(\d+)", r"MLP (\d+)")
    if node is not None:
        return node
    name = name.strip()
    raise CircuitError(f"{name!r} is not an auto-circuit source node (Resid Start, A<l>.<h>, MLP <l>)")


def _ac_dest_node(name: str) -> tuple[str, str]:
    name = name.strip()
    if name == "Resid End":
        return OUTPUT, "in"
    m = re.fullmatch(r"A(\d+)\.(\d+)\.([QKV])", name)
    if m:
        return f"L{m.group(1)}.H{m.group(2)}", m.group(3).lower()
    m = re.fullmatch(r"MLP (\d+)", name)
    if m:
        return f"L{m.group(1)}.MLP", "in"
    raise CircuitError(
        f"{name!r} is not an auto-circuit destination node (A<l>.<h>.Q|K|V, MLP <l>, Resid End)"
    )


def _ac_edge(item: Any) -> Edge:
    if hasattr(item, "src") and hasattr(item, "dest"):
        src, dest = str(item.src.name), str(item.dest.name)
    else:
        text = str(item.name) if hasattr(item, "name") else str(item)
        if "->" not in text:
            raise CircuitError(f"{text!r} is not an auto-circuit edge name ('src->dest')")
        src, dest = text.split("->", 1)
    reader, inp = _ac_dest_node(dest)
    return Edge(_ac_src_node(src), reader, inp)


def to_autocircuit(circuit: Circuit) -> set[str]:
    """auto-circuit edge names (`"A0.1->A2.0.Q"`, `"Resid Start->MLP 1"`, ...) of the circuit's edges."""
    return {f"{_ac_src_name(e.writer)}->{_ac_dest_name(e.reader, e.input)}" for e in circuit.edges}


def from_autocircuit(edges: Iterable[Any], model: Any, output: str | None = None) -> Circuit:
    """Circuit from auto-circuit edge names (strings, or its Edge objects with `.src`/`.dest`)."""
    return circuit_from_edge_names(edges, model, output, _ac_edge, lambda item: f"auto-circuit edge {item!s}")


def circuit_from_edge_names(
    items: Iterable[Any],
    model: Any,
    output: str | None,
    parse: Callable[[Any], Edge],
    describe: Callable[[Any], str],
) -> Circuit:
    """Circuit from a tool's edge names, one edge each, every one checked against the model's graph."""
    g = graph_of(model, output)
    groups = []
    for item in items:
        e = parse(item)
        check_named(e, g, describe(item))
        groups.append([e])
    return circuit_from_groups(g, groups)


def _ac_src_index(node: str, n_heads: int) -> int:
    if node == MERGED:
        return 0
    kind, layer, head = node_kind(node)
    if kind in ("embed", "pos_embed"):
        return 0
    if kind == "attn":
        return 1 + layer * (n_heads + 1) + head
    return 1 + layer * (n_heads + 1) + n_heads


def _ac_dest_module(node: str, inp: str, n_layers: int, n_heads: int) -> tuple[str, int | None, int]:
    """(module name, head row or None, number of sources before it) for a destination."""
    kind, layer, head = node_kind(node)
    if kind == "attn":
        return f"blocks.{layer}.hook_{inp}_input", head, 1 + layer * (n_heads + 1)
    if kind == "mlp":
        return f"blocks.{layer}.hook_mlp_in", None, 1 + layer * (n_heads + 1) + n_heads
    return f"blocks.{n_layers - 1}.hook_resid_post", None, 1 + n_layers * (n_heads + 1)


def _shape_of(model: Any) -> tuple[int, int]:
    if isinstance(model, (Circuit, ModelGraph)):
        return model.n_layers, model.n_heads
    g = graph_of(model)
    return g.n_layers, g.n_heads


def to_autocircuit_scores(scores: Circuit | Mapping[Any, float], model: Any = None) -> dict[str, Any]:
    """auto-circuit PruneScores (dict module name -> torch tensor) from a circuit (1/0) or edge scores.

    Edges missing from `scores` score 0; `Resid Start` takes whichever of the embed and pos_embed scores
    has the larger magnitude (auto-circuit ranks by magnitude).
    """
    import torch

    if isinstance(scores, Circuit):
        n_layers, n_heads = scores.n_layers, scores.n_heads
        values = {e: 1.0 for e in scores.edges}
    else:
        if model is None:
            raise CircuitError("to_autocircuit_scores needs the model for a score dict")
        n_layers, n_heads = _shape_of(model)
        values = {}
        for k, v in scores.items():
            e = as_edge(k)
            check_edge(e, n_layers, n_heads)
            values[e] = float(v)
    out: dict[str, Any] = {}
    filled: dict[tuple[str, int | None, int], float] = {}
    ac_heads = max(n_heads, 1)  # the export's padded all-zero head of a model without heads scores 0
    for e in legal_edges(n_layers, ac_heads):
        module, row, n_src = _ac_dest_module(e.reader, e.input, n_layers, ac_heads)
        if module not in out:
            shape = [ac_heads, n_src] if row is not None else [n_src]  # auto-circuit's shapes, one head too
            out[module] = torch.zeros(shape)
        col = _ac_src_index(e.writer, ac_heads)
        v = values.get(e, 0.0)
        key = (module, row, col)
        v = max(v, filled[key], key=abs) if key in filled else v  # the stronger of embed / pos_embed
        filled[key] = v
        if row is not None:
            out[module][row, col] = v
        else:
            out[module][col] = v
    return out


def from_autocircuit_scores(
    prune_scores: Mapping[str, Any],
    model: Any,
    *,
    threshold: float | None = None,
    output: str | None = None,
    signed: bool = False,
) -> dict[Edge, float] | Circuit:
    """Edge scores from auto-circuit PruneScores; with `threshold`, the circuit of edges scoring above it.

    Scores are read as auto-circuit ranks them: by magnitude (`signed=True` keeps the sign). Per-position
    scores (a leading sequence axis) become one score per edge, its largest-magnitude one. ACDC's
    convention, `+inf` for an edge it kept, is read as a score above every finite one (the largest
    finite magnitude + 1), so kept edges rank first and any threshold below that keeps them; NaN and
    `-inf` are refused. A `Resid Start` score goes to both `embed` and `pos_embed` edges.
    """
    import numpy as np

    g = (
        graph_of(model, output)
        if threshold is not None or not isinstance(model, (Circuit, ModelGraph))
        else None
    )
    n_layers, n_heads = (g.n_layers, g.n_heads) if g is not None else _shape_of(model)
    arrays = {}
    for module, t in prune_scores.items():
        arr = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
        arrays[str(module)] = arr
    # the TransformerLens export pads a model without heads to one all-zero head, so auto-circuit's graph
    # has it: its modules are accepted and its edges (which carry nothing) dropped
    ac_heads = max(n_heads, 1)
    expected = {}
    for e in legal_edges(n_layers, ac_heads):
        module, row, n_src = _ac_dest_module(e.reader, e.input, n_layers, ac_heads)
        expected.setdefault(module, (row is not None, n_src))
    unknown = sorted(set(arrays) - set(expected))
    if unknown:
        raise CircuitError(f"auto-circuit prune scores name modules the model lacks: {unknown[:5]}")
    for module, arr in arrays.items():
        is_head, n_src = expected[module]
        ok = (
            [(ac_heads, n_src)]
            if is_head and ac_heads > 1
            else [(n_src,), (1, n_src)]
            if is_head
            else [(n_src,)]
        )
        if arr.ndim >= 2 and tuple(arr.shape[1:]) in ok:
            # per-position scores (patchable_model(..., seq_len=T)): the edge's score is its score at the
            # position where it matters most (largest magnitude, sign kept), so an edge found at any
            # position is found
            strongest = np.abs(np.nan_to_num(arr, nan=np.inf)).argmax(axis=0)
            arr = np.take_along_axis(arr, strongest[None], axis=0)[0]
            arrays[module] = arr
        if tuple(arr.shape) not in ok:
            raise CircuitError(
                f"auto-circuit prune scores for {module!r} have shape {tuple(arr.shape)}, expected {ok[0]}"
            )
    raw: dict[Edge, float] = {}
    result: dict[Edge, float] = {}
    for e in legal_edges(n_layers, n_heads):
        module, row, _ = _ac_dest_module(e.reader, e.input, n_layers, ac_heads)
        if module not in arrays:
            continue
        arr = arrays[module]
        col = _ac_src_index(e.writer, ac_heads)
        raw[e] = float(arr[row, col] if arr.ndim == 2 else arr[col])
    finite = [abs(v) for v in raw.values() if np.isfinite(v)]
    kept = max(finite, default=0.0) + 1.0  # ACDC's +inf: above every finite score
    for e, v in raw.items():
        where = f"auto-circuit prune score of {e}"
        if v == np.inf:
            result[e] = kept
        else:
            v = score_value(v, where)
            result[e] = v if signed else abs(v)
    if threshold is None:
        return result
    assert g is not None
    return circuit_above(result, g, threshold)


def circuit_above(scores: Mapping[Edge, float], g: ModelGraph, threshold: float) -> Circuit:
    """The circuit of the edges scoring above `threshold`; a `Resid Start` edge keeps whichever of
    embed / pos_embed the walk from the output uses."""
    groups: dict[tuple, list[Edge]] = {}
    for e, v in scores.items():
        if v > threshold:
            w = MERGED if e.writer in ("embed", "pos_embed") else e.writer
            groups.setdefault((w, e.reader, e.input), []).append(e)
    return g.circuit({e for grp in groups.values() for e in grp}, groups=list(groups.values()))
