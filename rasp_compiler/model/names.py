"""The one vocabulary of component, edge and hook names (mirrors `csrc/engine/model.h:ModelDims`).

Components: `embed`, `pos_embed`, `L<l>.H<h>` (attention head), `L<l>.MLP`, and `output` (the reader
that is the unembedding). Readers take inputs `q`, `k`, `v` (heads) or `in` (MLPs, output). An edge is
`writer->reader<input>`. Hooks are TransformerLens's names (`hook_embed`, `blocks.{l}.attn.hook_result`,
...). The engine, the PyTorch module and reference, circuits and every circuit format parse and print
names only through this module.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "BLOCK_HOOKS",
    "EMBED",
    "HEAD_INPUTS",
    "INPUTS",
    "OUTPUT",
    "POS_EMBED",
    "ComponentNameError",
    "check_component",
    "components",
    "edge_name",
    "edge_parts",
    "head",
    "hook_names",
    "mlp",
    "parse_component",
    "parse_edge",
    "parse_hook",
    "writer_hook",
    "writers",
]

EMBED, POS_EMBED, OUTPUT = "embed", "pos_embed", "output"
INPUTS = ("q", "k", "v", "in")
HEAD_INPUTS = ("q", "k", "v")
# Hooks inside block l, in forward order: `blocks.{l}.<suffix>`.
BLOCK_HOOKS = (
    "hook_resid_pre",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "attn.hook_result",
    "hook_attn_out",
    "hook_resid_mid",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)

_HEAD_RE = re.compile(r"^L(\d+)\.H(\d+)$")
_MLP_RE = re.compile(r"^L(\d+)\.MLP$")
_EDGE_RE = re.compile(r"^(?P<w>[^<>]+?)->(?P<r>[^<>]+?)<(?P<i>q|k|v|in)>$")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


class ComponentNameError(ValueError):
    """A component, edge or hook name that is malformed or that the model lacks."""


def head(layer: int, h: int) -> str:
    return f"L{layer}.H{h}"


def mlp(layer: int) -> str:
    return f"L{layer}.MLP"


def parse_component(name: Any) -> tuple[str, int | None, int | None]:
    """`(kind, layer, head)` of a component name; kind is embed, pos_embed, attn, mlp or output."""
    if name in (EMBED, POS_EMBED, OUTPUT):
        return name, None, None
    if isinstance(name, str):
        if m := _HEAD_RE.match(name):
            return "attn", int(m.group(1)), int(m.group(2))
        if m := _MLP_RE.match(name):
            return "mlp", int(m.group(1)), None
    raise ComponentNameError(
        f"{name!r} is not a component name (expected embed, pos_embed, L<l>.H<h>, L<l>.MLP or output)"
    )


def check_component(name: str, n_layers: int, n_heads: int) -> tuple[str, int | None, int | None]:
    """`parse_component`, and the model (n_layers, n_heads per layer) must have the component."""
    kind, layer, h = parse_component(name)
    if layer is not None and not 0 <= layer < n_layers:
        raise ComponentNameError(f"component {name} does not exist (the model has layers 0..{n_layers - 1})")
    if h is not None and not 0 <= h < n_heads:
        raise ComponentNameError(
            f"component {name} does not exist (the model has heads 0..{n_heads - 1} per layer)"
        )
    return kind, layer, h


def components(n_layers: int, n_heads: int) -> list[str]:
    """Every component in residual-stream order: embeddings, per layer the heads then the MLP, output."""
    out = [EMBED, POS_EMBED]
    for layer in range(n_layers):
        out += [head(layer, h) for h in range(n_heads)]
        out.append(mlp(layer))
    return out + [OUTPUT]


def writers(n_layers: int, n_heads: int) -> list[str]:
    """Every component that writes into the residual stream, in forward order."""
    return components(n_layers, n_heads)[:-1]


def edge_name(writer: str, reader: str, inp: str) -> str:
    return f"{writer}->{reader}<{inp}>"


def parse_edge(text: str) -> tuple[str, str, str]:
    """Inverse of `edge_name`: `"L0.H1->L2.MLP<in>"` -> `("L0.H1", "L2.MLP", "in")`."""
    m = _EDGE_RE.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ComponentNameError(f"{text!r} is not an edge name (expected 'writer->reader<q|k|v|in>')")
    return m.group("w"), m.group("r"), m.group("i")


def edge_parts(item: Any) -> tuple[str, str, str]:
    """`(writer, reader, input)` of an edge given as its name, a 3-tuple, or any object with `writer`,
    `reader` and `input` attributes (`verify.Edge`, `engine.EdgePatch`)."""
    if isinstance(item, str):
        return parse_edge(item)
    if isinstance(item, tuple) and len(item) == 3:
        return item[0], item[1], item[2]
    if all(hasattr(item, a) for a in ("writer", "reader", "input")):
        return item.writer, item.reader, item.input
    raise ComponentNameError(f"{item!r} is not an edge ('w->r<input>', (writer, reader, input) or an Edge)")


def hook_names(n_layers: int) -> list[str]:
    """Every hook name of a model with `n_layers` layers, in forward order."""
    names = ["hook_embed", "hook_pos_embed"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.{suffix}" for suffix in BLOCK_HOOKS]
    return names


def parse_hook(name: Any, n_layers: int) -> tuple[str, int | None]:
    """`(suffix, layer)` of a hook name (`("hook_embed", None)` for the embeddings)."""
    if name in ("hook_embed", "hook_pos_embed"):
        return name, None
    m = _BLOCK_RE.match(name) if isinstance(name, str) else None
    if m and m.group(2) in BLOCK_HOOKS:
        layer = int(m.group(1))
        if layer >= n_layers:
            raise ComponentNameError(f"hook {name!r}: the model has {n_layers} layers")
        return m.group(2), layer
    raise ComponentNameError(
        f"unknown hook name {name!r}; known: hook_embed, hook_pos_embed, "
        f"blocks.{{l}}.{{{', '.join(BLOCK_HOOKS)}}}"
    )


def writer_hook(writer: str) -> tuple[str, int | None]:
    """The hook holding a writer's output, and its head index for attention heads."""
    kind, layer, h = parse_component(writer)
    if kind in (EMBED, POS_EMBED):
        return f"hook_{kind}", None
    if kind == "attn":
        return f"blocks.{layer}.attn.hook_result", h
    if kind == "mlp":
        return f"blocks.{layer}.hook_mlp_out", None
    raise ComponentNameError(f"{writer!r} is not a writer component (the output only reads)")
