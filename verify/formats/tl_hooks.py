"""TransformerLens hook names at node level: ("blocks.{l}.attn.hook_result", h), ..."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from verify.circuit import (
    OUTPUT,
    Circuit,
    CircuitError,
    check_node,
    node_kind,
)
from verify.formats.graphs import from_nodes, graph_of

__all__ = ["from_tl_hooks", "node_of_tl_hook", "tl_hook", "to_tl_hooks"]


_IDX_RE = re.compile(r"^(?P<name>[^\[]+?)\s*(\[(?P<idx>[^\]]*)\])?$")


def component_of_hook(name: str, index: Any, who: str) -> str | None:
    """The component whose output TL hook `name` holds (a head's from `index`, parsed only for heads);
    None when `name` is not a component output hook. `who` names the hook in the error."""
    m = re.fullmatch(r"blocks\.(\d+)\.attn\.hook_result", name)
    if m:
        head = head_index(index)
        if head is None:
            raise CircuitError(f"{who} {name!r} needs a head index")
        return f"L{m.group(1)}.H{head}"
    m = re.fullmatch(r"blocks\.(\d+)\.hook_mlp_out", name)
    if m:
        return f"L{m.group(1)}.MLP"
    if name == "hook_embed":
        return "embed"
    if name == "hook_pos_embed":
        return "pos_embed"
    return None


def _hook_node(name: str, index: Any, n_layers: int) -> str | None:
    """Component named by a TL output hook (+ head index); None for the output hook."""
    node = component_of_hook(name, index, "hook")
    if node is not None:
        return node
    if name == f"blocks.{n_layers - 1}.hook_resid_post":
        return None
    raise CircuitError(
        f"{name!r} is not a TransformerLens component output hook "
        f"(hook_embed, hook_pos_embed, blocks.L.attn.hook_result, blocks.L.hook_mlp_out)"
    )


def head_index(index: Any) -> int | None:
    """A head index from None, an int, a TorchIndex(-like) or tuple `(None, None, h)`, or `':, :, h'`."""
    if index is None:
        return None
    if hasattr(index, "hashable_tuple"):
        index = index.hashable_tuple
    if isinstance(index, str):
        parts = [p.strip() for p in index.split(",")]
        index = tuple(None if p in (":", "") else int(p) for p in parts)
    if isinstance(index, (list, tuple)):
        index = tuple(index)
        if all(x is None for x in index):
            return None
        if len(index) == 3 and index[0] is None and index[1] is None and isinstance(index[2], int):
            return index[2]
        if len(index) == 1 and isinstance(index[0], int):
            return index[0]
        raise CircuitError(f"index {index!r} is not a head index (None, None, h)")
    if isinstance(index, int) and not isinstance(index, bool):
        return index
    raise CircuitError(f"index {index!r} is not a head index")


def tl_hook(node: str, n_layers: int | None = None) -> tuple[str, int | None]:
    """The TransformerLens hook (and head index) holding a component's output.

    The output node maps to `blocks.{n_layers-1}.hook_resid_post`, which needs `n_layers`.
    """
    kind, layer, head = node_kind(node)
    if kind == "embed":
        return "hook_embed", None
    if kind == "pos_embed":
        return "hook_pos_embed", None
    if kind == "attn":
        return f"blocks.{layer}.attn.hook_result", head
    if kind == "mlp":
        return f"blocks.{layer}.hook_mlp_out", None
    if n_layers is None:
        raise CircuitError("the output's hook (blocks.{L-1}.hook_resid_post) needs n_layers")
    return f"blocks.{n_layers - 1}.hook_resid_post", None


def node_of_tl_hook(name: str, index: Any = None, n_layers: int | None = None) -> str:
    """Inverse of `tl_hook`: the component whose output a hook (+ head index) holds."""
    node = _hook_node(name, head_index(index), n_layers if n_layers is not None else -1)
    return OUTPUT if node is None else node


def to_tl_hooks(circuit: Circuit) -> set[tuple[str, int | None]]:
    """Node level: the components of the circuit as (TransformerLens hook, head index or None)."""
    return {tl_hook(name) for name in circuit.node_names()}


def from_tl_hooks(hooks: Iterable[str | tuple[str, Any]], model: Any, output: str | None = None) -> Circuit:
    """Node-level circuit from TransformerLens hook names (tuples or strings with an index suffix)."""
    g = graph_of(model, output)
    names = []
    for item in hooks:
        if isinstance(item, str):
            m = _IDX_RE.match(item.strip())
            if not m:
                raise CircuitError(f"{item!r} is not a hook name")
            name, idx = m.group("name"), m.group("idx")
        else:
            name, idx = item
        node = _hook_node(name, head_index(idx), g.n_layers)
        if node is None:
            continue
        try:
            check_node(node, g.n_layers, g.n_heads)
        except CircuitError as e:
            raise CircuitError(f"hook {item!r}: {e}") from None
        names.append(node)
    return from_nodes(g, names)
