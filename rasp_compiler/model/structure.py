"""The annotation checked against the weights: every block reads and writes exactly the residual
directions where its weights are nonzero, and every nonzero head or neuron belongs to a block.

The compiler records the annotation while it builds the weights, so the two agree exactly (checked on
every library program and 200 generated ones); a file whose annotation was edited (and re-hashed)
does not. A variant is checked in the labelled frame its card records (rotations: the weights are read
back through the basis, entries below 1e-5 of their matrix's largest counting as zero; cancelling
pairs write their `cancelled_writes`). Compressed variants (approximate by construction: the basis is
not orthogonal) have no exact frame and are not checked.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rasp_compiler.model.annotation import Annotation, BlockAnnotation
from rasp_compiler.model.config import ModelConfig

__all__ = ["annotation_mismatch", "to_labelled_frame"]

_FRAME_TOL = 1e-5  # relative: a rotated-and-back weight is exact up to float rounding


def to_labelled_frame(weights: Mapping[str, np.ndarray], basis: np.ndarray) -> dict[str, np.ndarray]:
    """Weights in labelled coordinates (`basis` orthogonal, rows = labels in residual coordinates):
    residual writers `W @ B.T`, residual readers `B @ W`, the rest unchanged (float64)."""
    out = {}
    for name, w in weights.items():
        w = np.asarray(w, dtype=np.float64)
        if name in ("W_E", "W_pos") or name.endswith(("attn.W_O", "attn.b_O", "mlp.W_out", "mlp.b_out")):
            out[name] = w @ basis.T
        elif name == "W_U" or name.endswith(("attn.W_Q", "attn.W_K", "attn.W_V", "mlp.W_in")):
            out[name] = basis @ w
        else:
            out[name] = w
    return out


def annotation_mismatch(
    config: ModelConfig, weights: Mapping[str, np.ndarray], annotation: Annotation
) -> str | None:
    """The first difference between `annotation` and the weights' nonzero structure, or None."""
    labels = list(config.residual_labels)
    tol = 0.0
    card = annotation.variant
    if card is not None:
        if card.approximate:
            return None  # compressed: no exact labelled frame
        labels = list(card.labels) or labels
        if len(labels) != config.d_model:
            return f"the variant card names {len(labels)} labelled directions, d_model is {config.d_model}"
        if card.basis is not None:
            basis = np.asarray(card.basis, dtype=np.float64)
            if basis.shape != (config.d_model,) * 2 or not np.allclose(basis @ basis.T, np.eye(len(basis)),
                                                                         atol=1e-6):
                return "the variant card's basis is not orthogonal, yet the variant is not marked approximate"
            weights = to_labelled_frame(weights, basis)
            tol = _FRAME_TOL

    def active(m: np.ndarray, axis: int) -> np.ndarray:
        a = np.abs(m)
        return a.max(axis=axis) > tol * (a.max() if a.size else 0.0)

    def written(b: BlockAnnotation) -> set[str]:
        return set(b.writes) | set(b.cancelled_writes)  # a cancelling pair's weights write, its sum does not

    def rows(m: np.ndarray) -> set[str]:
        if m.size == 0:
            return set()
        return {labels[i] for i in np.flatnonzero(active(m.reshape(m.shape[0], -1), 1))}

    def cols(m: np.ndarray) -> set[str]:
        if m.size == 0:
            return set()
        return {labels[i] for i in np.flatnonzero(active(m.reshape(-1, m.shape[-1]), 0))}

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
            if d := differ(f"{where} L{b.layer}.H{b.head} writes", written(b), got):
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
            if d := differ(f"{where} L{b.layer}.MLP[{s}:{e}] writes", written(b), got):
                return d
    for comp, name in (("embed", "W_E"), ("pos_embed", "W_pos")):
        if d := differ(f"the {comp} blocks' writes", embed_writes[comp], cols(weights[name])):
            return d
    for layer in range(config.n_layers):
        w_o = np.abs(weights[f"blocks.{layer}.attn.W_O"])
        for h in range(config.n_heads):
            if (layer, h) not in heads and w_o[h].max(initial=0.0) > tol * w_o.max(initial=0.0):
                return f"head L{layer}.H{h} writes into the residual stream but no annotation block is it"
        w_out = np.abs(weights[f"blocks.{layer}.mlp.W_out"])
        writing = w_out.max(axis=1, initial=0.0) > tol * w_out.max(initial=0.0)
        stray = np.flatnonzero(writing & ~neurons[layer])
        if stray.size:
            return f"neuron {int(stray[0])} of L{layer}.MLP writes into the residual but no block covers it"
    return None
