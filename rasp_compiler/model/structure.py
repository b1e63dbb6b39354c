"""The annotation checked against the weights: every block reads and writes exactly the residual
directions where its weights are nonzero, and every nonzero head or neuron belongs to a block.

The compiler records the annotation while it builds the weights, so the two agree exactly (checked on
every library program and 200 generated ones); a file whose annotation was edited (and re-hashed)
does not. Variants keep their ground truth in another frame (`Annotation.variant`) and are not
checked here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rasp_compiler.model.annotation import Annotation
from rasp_compiler.model.config import ModelConfig

__all__ = ["annotation_mismatch"]


def annotation_mismatch(
    config: ModelConfig, weights: Mapping[str, np.ndarray], annotation: Annotation
) -> str | None:
    """The first difference between `annotation` and the weights' nonzero structure, or None."""
    if annotation.variant is not None:
        return None
    labels = config.residual_labels

    def rows(m: np.ndarray) -> set[str]:
        if m.size == 0:
            return set()
        return {labels[i] for i in np.flatnonzero(np.abs(m).reshape(m.shape[0], -1).max(axis=1) > 0)}

    def cols(m: np.ndarray) -> set[str]:
        if m.size == 0:
            return set()
        return {labels[i] for i in np.flatnonzero(np.abs(m).reshape(-1, m.shape[-1]).max(axis=0) > 0)}

    def differ(what: str, want: set[str], got: set[str]) -> str | None:
        if want == got:
            return None
        extra, missing = sorted(got - want)[:3], sorted(want - got)[:3]
        return f"{what}: the weights use {extra} beyond the annotation, lack {missing}"

    embed_writes: dict[str, set[str]] = {"embed": set(), "pos_embed": set()}
    heads: set[tuple[int, int]] = set()
    neurons: dict[int, np.ndarray] = {layer: np.zeros(config.d_mlp, bool) for layer in range(config.n_layers)}
    for b in annotation.blocks:
        where = f"block {b.op!r} ({b.component})"
        if b.component in embed_writes:
            embed_writes[b.component] |= set(b.writes)
            continue
        if b.layer is None or not 0 <= b.layer < config.n_layers:
            return f"{where}: layer {b.layer} is not a layer of the model"
        if b.component == "attn":
            if b.head is None or not 0 <= b.head < config.n_heads:
                return f"{where}: head {b.head} is not a head of layer {b.layer}"
            heads.add((b.layer, b.head))
            a = f"blocks.{b.layer}.attn."
            for inp in ("q", "k", "v"):
                got = rows(weights[a + f"W_{inp.upper()}"][b.head])
                want = set(b.reads.get(inp, ()))
                if d := differ(f"{where} L{b.layer}.H{b.head} reads on {inp}", want, got):
                    return d
            got = cols(weights[a + "W_O"][b.head])
            if d := differ(f"{where} L{b.layer}.H{b.head} writes", set(b.writes), got):
                return d
        else:
            if b.neurons is None or not 0 <= b.neurons[0] <= b.neurons[1] <= config.d_mlp:
                return f"{where}: neurons {b.neurons} are not a range of layer {b.layer}'s MLP"
            s, e = b.neurons
            neurons[b.layer][s:e] = True
            m = f"blocks.{b.layer}.mlp."
            got = rows(weights[m + "W_in"][:, s:e])
            if d := differ(f"{where} L{b.layer}.MLP[{s}:{e}] reads", set(b.reads.get("in", ())), got):
                return d
            got = cols(weights[m + "W_out"][s:e])
            if d := differ(f"{where} L{b.layer}.MLP[{s}:{e}] writes", set(b.writes), got):
                return d
    for comp, name in (("embed", "W_E"), ("pos_embed", "W_pos")):
        if d := differ(f"the {comp} blocks' writes", embed_writes[comp], cols(weights[name])):
            return d
    for layer in range(config.n_layers):
        w_o = weights[f"blocks.{layer}.attn.W_O"]
        for h in range(config.n_heads):
            if (layer, h) not in heads and np.any(w_o[h]):
                return f"head L{layer}.H{h} writes into the residual stream but no annotation block is it"
        active = np.abs(weights[f"blocks.{layer}.mlp.W_out"]).max(axis=1, initial=0.0) > 0
        stray = np.flatnonzero(active & ~neurons[layer])
        if stray.size:
            return f"neuron {int(stray[0])} of L{layer}.MLP writes into the residual but no block covers it"
    return None
