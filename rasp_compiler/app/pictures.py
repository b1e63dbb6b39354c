"""Pictures of a compiled model: residual-stream reads/writes, attention patterns, ROC curves.

Every picture is computed from the weights or a forward pass (never from the compiler's own
bookkeeping), so looking at one is an independent check of what the annotation claims. The circuit
diagram itself is `verify.Circuit.draw`. All functions write a file (PNG or SVG, by extension) with
matplotlib's Agg backend and return its path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rasp_compiler.model.directions import label_variables, variable_of

__all__ = ["ResidualUse", "attention_pattern", "residual_stream", "residual_use", "roc_curves"]

_READ_COLOURS = {"q": "#1f77b4", "k": "#2ca02c", "v": "#d62728", "in": "#6a3d9a"}
_WRITE_COLOUR = "#222222"
_EPS = 1e-6


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text stays text in SVG files
    plt.rcParams["svg.hashsalt"] = "rasp-compiler"  # stable ids: the same picture gives the same file
    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"Date": None} if path.suffix.lower() in (".svg", ".pdf") else {"Software": None}
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata=meta)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


@dataclass(frozen=True)
class ResidualUse:
    """Which residual directions each component reads (per input) and writes, from nonzero weights.

    `components` in residual-stream order; `reads[c][input]` and `writes[c]` are sets of direction indices.
    """

    labels: list[str]
    components: list[str]
    reads: dict[str, dict[str, set[int]]]
    writes: dict[str, set[int]]


def residual_use(model: Any) -> ResidualUse:
    """Read off the weights which labelled directions every real component reads and writes."""
    w = model.weights
    cfg = model.config

    def rows(mat: np.ndarray) -> set[int]:  # directions a [d_model, k] read matrix looks at
        return set(np.flatnonzero(np.abs(mat).max(axis=1) > _EPS).tolist()) if mat.size else set()

    def cols(mat: np.ndarray) -> set[int]:  # directions a [k, d_model] write matrix touches
        return set(np.flatnonzero(np.abs(mat).max(axis=0) > _EPS).tolist()) if mat.size else set()

    comps = ["embed", "pos_embed"]
    reads: dict[str, dict[str, set[int]]] = {"embed": {}, "pos_embed": {}}
    writes: dict[str, set[int]] = {"embed": cols(w["W_E"]), "pos_embed": cols(w["W_pos"])}
    for layer in range(cfg.n_layers):
        a = f"blocks.{layer}.attn."
        for h in range(cfg.heads_per_layer[layer]):
            name = f"L{layer}.H{h}"
            comps.append(name)
            reads[name] = {x: rows(w[a + f"W_{x.upper()}"][h]) for x in ("q", "k", "v")}
            writes[name] = cols(w[a + "W_O"][h])
        width = cfg.mlp_width_per_layer[layer]
        if width:
            m = f"blocks.{layer}.mlp."
            name = f"L{layer}.MLP"
            comps.append(name)
            reads[name] = {"in": rows(w[m + "W_in"][:, :width])}
            writes[name] = cols(w[m + "W_out"][:width])
    comps.append("output")
    reads["output"] = {"in": rows(w["W_U"])}
    writes["output"] = set()
    return ResidualUse(list(cfg.residual_labels), comps, reads, writes)


def residual_stream(
    model: Any, path: str | Path, *, title: str | None = None, highlight: Sequence[str] = ()
) -> Path:
    """A grid: one row per labelled residual direction, one column per component.

    A dark cell: the component writes that direction; a coloured dot: it reads it (q blue, k green,
    v red, MLP/output input purple; several dots when several inputs read it). Columns in
    `highlight` (e.g. the ground-truth circuit's components) get bold names.
    """
    plt = _pyplot()
    use = residual_use(model)
    n_rows, n_cols = len(use.labels), len(use.components)
    cell = 0.22
    fig_w = max(6.0, 2.8 + cell * 1.6 * n_cols)
    fig_h = max(3.5, 1.6 + cell * n_rows)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    ax.set_xlim(-0.5, n_cols - 0.5)
    ax.set_ylim(n_rows - 0.5, -0.5)
    # shade alternate variables so groups of directions read as blocks
    known = label_variables(use.labels)
    var_of = [variable_of(lab, known) for lab in use.labels]
    shade, prev = False, None
    for i, var in enumerate(var_of):
        if var != prev:
            shade, prev = not shade, var
        if shade:
            ax.axhspan(i - 0.5, i + 0.5, color="#f2f2f2", zorder=0)
    for j, comp in enumerate(use.components):
        for i in sorted(use.writes[comp]):
            ax.add_patch(plt.Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, color=_WRITE_COLOUR, zorder=2))
        present = [x for x in ("q", "k", "v", "in") if use.reads[comp].get(x)]
        for slot, x in enumerate(present):
            off = (slot - (len(present) - 1) / 2) * 0.28
            idx = sorted(use.reads[comp][x])
            ax.scatter([j + off] * len(idx), idx, s=18, color=_READ_COLOURS[x], zorder=3, linewidths=0)
    for j in range(n_cols + 1):
        ax.axvline(j - 0.5, color="#dddddd", lw=0.5, zorder=1)
    ax.set_xticks(range(n_cols))
    ax.set_xticklabels(use.components, rotation=60, ha="right", fontsize=8)
    for tick, comp in zip(ax.get_xticklabels(), use.components, strict=True):
        if comp in highlight:
            tick.set_fontweight("bold")
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels(use.labels, fontsize=max(4.0, min(8.0, 600.0 / max(n_rows, 1))))
    ax.tick_params(length=0)
    handles = [plt.Rectangle((0, 0), 1, 1, color=_WRITE_COLOUR, label="writes")]
    handles += [
        plt.Line2D([], [], ls="", marker="o", color=c, label=f"reads ({x})") for x, c in _READ_COLOURS.items()
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(title or "residual stream: which directions each component reads and writes", fontsize=10)
    return _save(fig, path)


def attention_pattern(
    model: Any, tokens: Sequence[Any], layer: int, head: int, path: str | Path, *, title: str | None = None
) -> Path:
    """The attention pattern of head `head` in `layer` on one input (`["BOS", ...]` or without BOS)."""
    plt = _pyplot()
    cfg = model.config
    if not 0 <= layer < cfg.n_layers or not 0 <= head < cfg.heads_per_layer[layer]:
        raise ValueError(
            f"attention_pattern: L{layer}.H{head} is not a head of this model "
            f"(heads per layer {cfg.heads_per_layer})"
        )
    toks = list(tokens)
    bos = model.codec.bos
    if not toks or toks[0] != bos:
        toks = [bos, *toks]
    out = model.apply(toks)
    pattern = np.asarray(out.cache[f"blocks.{layer}.attn.hook_pattern"][head])
    names = [f"{i}: {t}" for i, t in enumerate(toks)]
    size = max(3.0, 0.45 * len(names) + 1.5)
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    im = ax.imshow(pattern, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(pattern.shape[0]):
        for j in range(pattern.shape[1]):
            if pattern[i, j] >= 0.05:
                ax.text(
                    j,
                    i,
                    f"{pattern[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if pattern[i, j] > 0.6 else "black",
                )
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.set_xlabel("key (position: token)")
    ax.set_ylabel("query (position: token)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title or f"attention pattern of L{layer}.H{head}", fontsize=10)
    return _save(fig, path)


def roc_curves(
    curves: Sequence[tuple[str, Sequence[float], Sequence[float], float]],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """ROC curves: each `(name, fpr, tpr, auc)`, with the chance diagonal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], ls="--", color="#999999", lw=1, label="chance")
    for name, fpr, tpr, auc in curves:
        ax.plot(list(fpr), list(tpr), lw=2, marker=".", label=f"{name} (AUC {auc:.3f})")  # ties: diagonal
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "ROC against the ground-truth circuit", fontsize=10)
    return _save(fig, path)
