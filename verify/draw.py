"""A diagram of a circuit: components in layer columns, edges labelled with the variables they carry.

Columns, left to right: embeddings, then per layer the heads and then the MLP, then the output.
Components of the model outside the circuit (distractors) are drawn grey. Text stays text in SVG
files (`svg.fonttype = none`), so a diagram can be searched and tested for the names it shows.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from verify.circuit import OUTPUT, Circuit, model_nodes, node_kind, variable_of

__all__ = ["draw_circuit"]

_INPUT_COLOURS = {"q": "#1f77b4", "k": "#2ca02c", "v": "#d62728", "in": "#6a3d9a"}


def _column(name: str) -> int:
    kind, layer, _ = node_kind(name)
    if kind in ("embed", "pos_embed"):
        return 0
    if kind == "attn":
        return 1 + 2 * layer
    if kind == "mlp":
        return 2 + 2 * layer
    return -1  # output: set by the caller


def _wrap(items: list[str], width: int = 26) -> list[str]:
    """Comma-joined items broken into lines of about `width` characters."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + len(item) + 2 <= width:
            lines[-1] += ", " + item
        else:
            lines.append(item)
    return lines


def _edge_text(labels: frozenset[str]) -> str:
    known = {lab.split(":", 1)[0] for lab in labels}
    return ", ".join(sorted({variable_of(lab, known) for lab in labels}))


def draw_circuit(
    circuit: Circuit,
    path: str | Path,
    *,
    show_distractors: bool = True,
    heads_per_layer: list[int] | None = None,
    title: str | None = None,
) -> Path:
    """Write the diagram to `path` (format from the extension: .svg, .png, .pdf); returns the path.

    `heads_per_layer` limits the grey distractor heads drawn to the real (unpadded) heads.
    """
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    path = Path(path)
    if heads_per_layer is None and circuit.model_graph is not None:
        heads_per_layer = circuit.model_graph.heads_per_layer
    names = [n for n in model_nodes(circuit.n_layers, circuit.n_heads)]
    if heads_per_layer is not None:
        names = [
            n
            for n in names
            if node_kind(n)[0] != "attn"
            or node_kind(n)[2] < heads_per_layer[node_kind(n)[1]]
            or n in circuit.nodes
        ]
    if not show_distractors:
        names = [n for n in names if n in circuit.nodes]
    n_cols = 2 + 2 * circuit.n_layers
    by_col: dict[int, list[str]] = defaultdict(list)
    for n in names:
        col = n_cols - 1 if n == OUTPUT else _column(n)
        by_col[col].append(n)
    texts: dict[str, tuple[list[str], list[str]]] = {}
    heights: dict[str, float] = {}
    for n in names:
        inside = n in circuit.nodes
        ops = [circuit.output] if n == OUTPUT else sorted(circuit.nodes.get(n, {}))
        extra = sorted(circuit.extra_ops.get(n, ())) if inside else []
        texts[n] = (_wrap(ops), _wrap(extra))
        heights[n] = 0.5 + 0.2 * (len(texts[n][0]) + len(texts[n][1]))
    col_height = {c: sum(heights[n] + 0.6 for n in members) for c, members in by_col.items()}
    tallest = max(col_height.values())
    pos = {}
    for col, members in by_col.items():
        top = -(tallest - col_height[col]) / 2.0
        for n in members:
            pos[n] = (col * 3.0, top - heights[n] / 2.0)
            top -= heights[n] + 0.6

    fig = Figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()
    box_w, box_h = 2.0, max(heights.values())
    for n, (x, y) in pos.items():
        inside = n in circuit.nodes
        h = heights[n]
        face = "#fdf1c7" if inside else "#eeeeee"
        edge = "#333333" if inside else "#bbbbbb"
        ax.add_patch(
            FancyBboxPatch(
                (x - box_w / 2, y - h / 2),
                box_w,
                h,
                boxstyle="round,pad=0.05",
                facecolor=face,
                edgecolor=edge,
                linewidth=1.4 if inside else 0.8,
                zorder=3,
            )
        )
        colour = "#111111" if inside else "#aaaaaa"
        line_y = y + h / 2 - 0.22
        ax.text(x, line_y, n, ha="center", va="center", fontsize=9, color=colour, fontweight="bold", zorder=4)
        op_lines, extra_lines = texts[n]
        for line in op_lines:
            line_y -= 0.2
            ax.text(x, line_y, line, ha="center", va="center", fontsize=6.5, color=colour, zorder=4)
        for line in extra_lines:
            line_y -= 0.2
            ax.text(
                x,
                line_y,
                line,
                ha="center",
                va="center",
                fontsize=5.5,
                color="#666666",
                style="italic",
                zorder=4,
            )
    # Edges leave the writer's right side and enter the reader's left side at a height per input (q, k, v
    # top to bottom); edges that skip columns bend, alternately up and down, so they avoid the boxes between.
    in_offset = {"q": 0.28, "k": 0.0, "v": -0.28, "in": 0.0}
    n_long = 0
    bulge = {1: 0.0, -1: 0.0}
    for e, labels in circuit.edges.items():
        if e.writer not in pos or e.reader not in pos:
            continue
        (x0, y0), (x1, y1) = pos[e.writer], pos[e.reader]
        start, end = (x0 + box_w / 2, y0), (x1 - box_w / 2, y1 + in_offset[e.input])
        span = round((x1 - x0) / 3.0)
        rad = 0.0
        if span > 1:
            sign = 1 if n_long % 2 == 0 else -1
            rad = (0.12 + 0.04 * span) * sign
            n_long += 1
            bulge[-sign] = max(bulge[-sign], abs(rad) / 2 * (end[0] - start[0]))
        colour = _INPUT_COLOURS[e.input]
        ax.add_patch(
            FancyArrowPatch(
                start,
                end,
                arrowstyle="-|>",
                mutation_scale=10,
                color=colour,
                linewidth=1.0,
                connectionstyle=f"arc3,rad={rad}",
                zorder=2,
            )
        )
        # midpoint of the quadratic curve arc3 draws: chord midpoint + rad/2 * (dy, -dx)
        dx, dy = end[0] - start[0], end[1] - start[1]
        mx, my = (start[0] + end[0]) / 2 + rad / 2 * dy, (start[1] + end[1]) / 2 - rad / 2 * dx
        text = _edge_text(labels)
        label = f"{e.input}: {text}" if text else e.input
        ax.text(
            mx,
            my,
            label,
            fontsize=6,
            color=colour,
            ha="center",
            va="center",
            zorder=5,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.5},
        )
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    x_lo, x_hi = min(xs) - box_w, max(xs) + box_w
    y_lo, y_hi = min(ys) - box_h - bulge[-1] - 0.3, max(ys) + box_h + bulge[1] + 0.3
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.set_aspect(
        "equal"
    )  # arc3 bends in display space: equal aspect keeps the label midpoints on the curves
    fig.set_size_inches(max(6.0, 0.75 * (x_hi - x_lo)), max(3.0, 0.75 * (y_hi - y_lo) + 0.6))
    ax.set_title(
        title or f"circuit of {circuit.output!r} (grey: components outside the circuit)", fontsize=10
    )
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(path, bbox_inches="tight")
    return path
