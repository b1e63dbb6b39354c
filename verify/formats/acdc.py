"""ACDC's edge dictionary (`TLACDCCorrespondence.all_edges()` keys) in and out."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from verify.circuit import (
    HEAD_INPUTS,
    OUTPUT,
    Circuit,
    CircuitError,
    Edge,
    flag_value,
    legal_edges,
    node_kind,
)
from verify.formats.graphs import MERGED, check_named, circuit_from_groups, graph_of
from verify.formats.tl_hooks import component_of_hook, head_index, tl_hook

__all__ = ["from_acdc", "to_acdc"]


_WHOLE = (None,)


def _head_idx(h: int) -> tuple:
    return (None, None, h)


def _acdc_parent(node: str) -> tuple[str, tuple]:
    """ACDC names a writer by its TransformerLens output hook (the merged input: the first residual)."""
    if node == MERGED:
        return "blocks.0.hook_resid_pre", _WHOLE
    if node_kind(node)[0] == "output":
        raise CircuitError(f"{node!r} writes nothing ACDC can name")
    hook, head = tl_hook(node)
    return hook, _WHOLE if head is None else _head_idx(head)


def _acdc_child(node: str, inp: str, n_layers: int) -> tuple[str, tuple]:
    kind, layer, head = node_kind(node)
    if kind == "attn":
        return f"blocks.{layer}.hook_{inp}_input", _head_idx(head)
    if kind == "mlp":
        return f"blocks.{layer}.hook_mlp_in", _WHOLE
    return f"blocks.{n_layers - 1}.hook_resid_post", _WHOLE


def to_acdc(circuit: Circuit, *, use_pos_embed: bool = True) -> dict[tuple[str, tuple, str, tuple], bool]:
    """ACDC's edge dict over its whole graph: True for edges in the circuit, False otherwise."""
    present = set(circuit.edges)
    out: dict[tuple[str, tuple, str, tuple], bool] = {}
    fed = {(e.reader, e.input) for e in present}
    for e in legal_edges(circuit.n_layers, circuit.n_heads):
        child = _acdc_child(e.reader, e.input, circuit.n_layers)
        if e.writer in ("embed", "pos_embed") and not use_pos_embed:
            parent = _acdc_parent(MERGED)
            key = (child[0], child[1], parent[0], parent[1])
            out[key] = out.get(key, False) or e in present
            continue
        parent = _acdc_parent(e.writer)
        out[(child[0], child[1], parent[0], parent[1])] = e in present
    for layer in range(circuit.n_layers):
        for h in range(circuit.n_heads):
            node = f"L{layer}.H{h}"
            for inp in HEAD_INPUTS:
                on = (node, inp) in fed
                idx = _head_idx(h)
                out[(f"blocks.{layer}.attn.hook_{inp}", idx, f"blocks.{layer}.hook_{inp}_input", idx)] = on
                out[(f"blocks.{layer}.attn.hook_result", idx, f"blocks.{layer}.attn.hook_{inp}", idx)] = on
        on = (f"L{layer}.MLP", "in") in fed
        out[(f"blocks.{layer}.hook_mlp_out", _WHOLE, f"blocks.{layer}.hook_mlp_in", _WHOLE)] = on
    return out


def _acdc_child_node(name: str, index: Any, n_layers: int) -> tuple[str, str] | None:
    """(node, input) for an ACDC residual-reading child hook; None for ACDC-internal hooks."""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_([qkv])_input", name)
    if m:
        head = head_index(index)
        if head is None:
            raise CircuitError(f"ACDC child {name!r} needs a head index")
        return f"L{m.group(1)}.H{head}", m.group(2)
    m = re.fullmatch(r"blocks\.(\d+)\.hook_(mlp_in|resid_mid)", name)
    if m:
        return f"L{m.group(1)}.MLP", "in"
    if name == f"blocks.{n_layers - 1}.hook_resid_post":
        return OUTPUT, "in"
    m = re.fullmatch(r"blocks\.(\d+)\.(attn\.hook_[qkv]|attn\.hook_result|hook_mlp_out)", name)
    if m:
        if int(m.group(1)) >= n_layers:
            raise CircuitError(f"ACDC node {name!r}: the model has layers 0..{n_layers - 1}")
        return None
    raise CircuitError(f"{name!r} is not an ACDC node name of this model")


def _acdc_parent_node(name: str, index: Any) -> str:
    if name == "blocks.0.hook_resid_pre":
        return MERGED
    node = component_of_hook(name, index, "ACDC parent")
    if node is not None:
        return node
    raise CircuitError(f"{name!r} is not an ACDC parent (component output) name")


def from_acdc(edges: Mapping[tuple, Any], model: Any, output: str | None = None) -> Circuit:
    """Circuit from ACDC's `{(child, child_index, parent, parent_index): present}` dict."""
    g = graph_of(model, output)
    groups = []
    for key, value in edges.items():
        try:
            child, child_idx, parent, parent_idx = key
        except (TypeError, ValueError):
            raise CircuitError(
                f"ACDC edge key {key!r} is not (child, child_index, parent, parent_index)"
            ) from None
        target = _acdc_child_node(child, child_idx, g.n_layers)
        if target is None:  # ACDC-internal edge (q_input -> q -> result, mlp_in -> mlp_out)
            continue
        writer = _acdc_parent_node(parent, parent_idx)
        e = Edge(writer, target[0], target[1])
        check_named(e, g, f"ACDC edge {key!r}")
        if flag_value(value, f"ACDC edge {key!r}"):
            groups.append([e])
    return circuit_from_groups(g, groups)
