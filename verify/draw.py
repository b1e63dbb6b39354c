"""A diagram of a circuit: components in layer columns, edges labelled with the variables they carry.

Columns, left to right: embeddings, then per layer the heads and then the MLP, then the output.
Components of the model outside the circuit (distractors) are drawn grey. Text stays text in SVG
files (`svg.fonttype = none`), so a diagram can be searched and tested for the names it shows.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from rasp_compiler.model.directions import label_variables, variable_of
from verify.circuit import OUTPUT, Circuit, model_nodes, node_kind

__all__ = ["draw_circuit"]

_INPUT_COLOURS = {"q": "#1f77b4", "k": "#2ca02c", "v": "#d62728", "in": "#6a3d9a"}


_MERGED_COLOUR = "#444444"
_INPUT_ORDER = ("q", "k", "v", "in")

# Sizes in inches (one data unit is one inch; the axes fill the figure), text widths estimated per character
# generously so that boxes and label gaps always hold their text.
_NAME_PT, _OP_PT, _EXTRA_PT, _LABEL_PT = 9.0, 6.5, 5.5, 6.0
_CHAR_W = 0.62 / 72.0  # average glyph width per point of font size (DejaVu Sans, slightly generous)
_LINE_H = 1.35 / 72.0  # line height per point
_WRAP = 24  # characters per op line inside a box
_LONG = 40  # names up to this long stay whole (searchable in the SVG; the box widens), longer ones break
_LABEL_WRAP = 34  # characters per edge-label line
_VGAP = 0.35  # between boxes in a column
_PAD = 0.12  # inside boxes
_LANE = 0.1  # between routing lanes / vertical tracks
_SUB = 0.035  # between the parallel q/k/v lines of one (writer, reader) pair


def _column(name: str) -> int:
    kind, layer, _ = node_kind(name)
    if kind in ("embed", "pos_embed"):
        return 0
    if kind == "attn":
        return 1 + 2 * layer
    if kind == "mlp":
        return 2 + 2 * layer
    return -1  # output: set by the caller


def _split_long(item: str, width: int) -> list[str]:
    """A name longer than `width` broken after underscores/dots, or hard-broken; never dropped or clipped."""
    pieces: list[str] = []
    cur = ""
    for ch in item:
        cur += ch
        if ch in "_." and len(cur) >= width // 2:
            pieces.append(cur)
            cur = ""
        elif len(cur) >= width:
            pieces.append(cur)
            cur = ""
    if cur:
        pieces.append(cur)
    return pieces


def _wrap(items: list[str], width: int = _WRAP) -> list[str]:
    """Comma-joined items broken into lines of about `width` characters; items over `_LONG` are split."""
    lines: list[str] = []
    for item in items:
        parts = _split_long(item, _LONG) if len(item) > _LONG else [item]
        for j, part in enumerate(parts):
            if j == 0 and lines and len(lines[-1]) + len(part) + 2 <= width:
                lines[-1] += ", " + part
            else:
                lines.append(part)
    return lines


def _edge_text(labels: frozenset[str]) -> str:
    known = label_variables(labels)
    return ", ".join(sorted({variable_of(lab, known) for lab in labels}))


def _text_w(lines: list[str], pt: float) -> float:
    return max((len(line) for line in lines), default=0) * pt * _CHAR_W


def _pair_label(inputs: dict[str, frozenset[str]]) -> list[tuple[str, str]]:
    """(line, colour) lines for one (writer, reader) pair: inputs carrying the same variables share a line."""
    by_text: dict[str, list[str]] = defaultdict(list)
    for inp in _INPUT_ORDER:
        if inp in inputs:
            by_text[_edge_text(inputs[inp])].append(inp)
    out: list[tuple[str, str]] = []
    for text, inps in sorted(by_text.items(), key=lambda kv: _INPUT_ORDER.index(kv[1][0])):
        colour = _INPUT_COLOURS[inps[0]] if len(inps) == 1 else _MERGED_COLOUR
        head = ",".join(inps)
        if not text:
            out.append((head, colour))
            continue
        for j, line in enumerate(_wrap(text.split(", "), _LABEL_WRAP)):
            out.append((f"{head}: {line}" if j == 0 else f"   {line}", colour))
    return out


def draw_circuit(
    circuit: Circuit,
    path: str | Path,
    *,
    show_distractors: bool = True,
    heads_per_layer: list[int] | None = None,
    title: str | None = None,
) -> Path:
    """Write the diagram to `path` (format from the extension: .svg, .png, .pdf); returns the path.

    `heads_per_layer` limits the grey distractor heads drawn to the real (unpadded) heads. The figure
    grows with the number of columns, boxes and the text; the same circuit gives the same SVG bytes.
    """
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
    from matplotlib.path import Path as MPath

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
    raw_col = {n: (n_cols - 1 if n == OUTPUT else _column(n)) for n in names}
    used = sorted(set(raw_col.values()))
    col_of = {n: used.index(raw_col[n]) for n in names}  # empty columns dropped
    by_col: dict[int, list[str]] = defaultdict(list)
    for n in names:
        by_col[col_of[n]].append(n)
    order = {n: (col_of[n], by_col[col_of[n]].index(n)) for n in names}

    # (writer, reader) pairs with their inputs; one label per pair, placed at the reader end
    pairs: dict[tuple[str, str], dict[str, frozenset[str]]] = defaultdict(dict)
    for e, labels in sorted(circuit.edges.items()):
        if e.writer in col_of and e.reader in col_of:
            pairs[(e.writer, e.reader)][e.input] = labels
    label_lines = {p: _pair_label(inputs) for p, inputs in pairs.items()}
    label_h = {p: len(lines) * _LABEL_PT * _LINE_H + 0.06 for p, lines in label_lines.items()}
    incoming: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for p in sorted(pairs, key=lambda p: (order[p[1]], order[p[0]])):
        incoming[p[1]].append(p)

    texts: dict[str, tuple[list[str], list[str]]] = {}
    box_w: dict[str, float] = {}
    heights: dict[str, float] = {}
    for n in names:
        inside = n in circuit.nodes
        ops = [circuit.output] if n == OUTPUT else sorted(circuit.nodes.get(n, {}))
        extra = sorted(circuit.extra_ops.get(n, ())) if inside else []
        texts[n] = (_wrap(ops), _wrap(extra))
        text_h = (
            _NAME_PT * _LINE_H
            + len(texts[n][0]) * _OP_PT * _LINE_H
            + len(texts[n][1]) * _EXTRA_PT * _LINE_H
            + 2 * _PAD
        )
        stack_h = sum(label_h[p] for p in incoming[n]) + 0.1
        heights[n] = max(0.45, text_h, stack_h)
        box_w[n] = (
            max(
                0.9,
                _text_w([n], _NAME_PT),
                _text_w(texts[n][0], _OP_PT),
                _text_w(texts[n][1], _EXTRA_PT),
            )
            + 2 * _PAD
        )
    n_used = len(used)
    col_w = [max(box_w[n] for n in by_col[c]) for c in range(n_used)]

    # routing: span-1 pairs go writer -> vertical track in the gap -> reader slot; longer pairs leave
    # into a lane above or below every box, so they cross no box on the way.
    col_h = {c: sum(heights[n] for n in m) + _VGAP * (len(m) - 1) for c, m in by_col.items()}
    tallest = max(col_h.values())
    ycen: dict[str, float] = {}
    for c, members in by_col.items():
        top = col_h[c] / 2.0
        for n in members:
            ycen[n] = top - heights[n] / 2.0
            top -= heights[n] + _VGAP
    slot_y: dict[tuple[str, str], float] = {}
    for reader, ps in incoming.items():
        stack = sum(label_h[p] for p in ps)
        top = ycen[reader] + stack / 2.0
        for p in ps:
            slot_y[p] = top - label_h[p] / 2.0
            top -= label_h[p]
    tracks: dict[int, list[tuple[str, str, str]]] = defaultdict(list)  # gap index -> (pair, role)
    lanes: dict[tuple[str, str], tuple[int, int]] = {}  # pair -> (side, lane index)
    lane_ends: dict[int, list[int]] = {1: [], -1: []}
    for p in sorted(pairs, key=lambda p: (order[p[0]], order[p[1]])):
        cw, cr = col_of[p[0]], col_of[p[1]]
        if cr - cw <= 1:
            tracks[cr].append((p[0], p[1], "mid"))
            continue
        tracks[cw + 1].append((p[0], p[1], "out"))
        tracks[cr].append((p[0], p[1], "in"))
        side = 1 if ycen[p[0]] + ycen[p[1]] >= 0 else -1
        if not any(end <= cw for end in lane_ends[side]) and len(lane_ends[-side]) < len(lane_ends[side]):
            side = -side  # balance the lanes above and below the boxes
        ends = lane_ends[side]
        for i, end in enumerate(ends):
            if end <= cw:
                ends[i] = cr
                lanes[p] = (side, i)
                break
        else:
            ends.append(cr)
            lanes[p] = (side, len(ends) - 1)
    label_w = [0.0] * n_used
    for p, lines in label_lines.items():
        c = col_of[p[1]]
        label_w[c] = max(label_w[c], _text_w([t for t, _ in lines], _LABEL_PT) + 0.2)
    x_left = [0.0] * n_used
    track_x0 = [0.0] * n_used
    x = 0.4
    for c in range(n_used):
        if c > 0:
            track_x0[c] = x + 0.12
            x += 0.24 + _LANE * max(0, len(tracks[c]) - 1) + label_w[c] + 0.1
        x_left[c] = x
        x += col_w[c]
    x_total = x + 0.4
    xcen = {n: x_left[col_of[n]] + col_w[col_of[n]] / 2.0 for n in names}
    track_x = {
        (w, r, role): track_x0[g] + _LANE * i for g, ts in tracks.items() for i, (w, r, role) in enumerate(ts)
    }
    box_top, box_bot = tallest / 2.0 + 0.25, -tallest / 2.0 - 0.25
    lane_y = {
        p: (box_top + _LANE * i if side == 1 else box_bot - _LANE * i) for p, (side, i) in lanes.items()
    }
    y_hi = box_top + _LANE * len(lane_ends[1]) + 0.1
    y_lo = box_bot - _LANE * len(lane_ends[-1]) - 0.1

    # legend and title above the drawing
    title_h = 0.95
    fig_w, fig_h = max(8.0, x_total), (y_hi - y_lo) + title_h + 0.2
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    ax.set_xlim(0.0, fig_w)
    ax.set_ylim(y_lo - 0.2, y_hi + title_h)
    ax.text(
        0.3,
        y_hi + title_h - 0.2,
        title or f"circuit of {circuit.output!r} (grey: components outside the circuit)",
        fontsize=10,
        ha="left",
        va="center",
    )

    for n in names:
        x, y, h, w = xcen[n], ycen[n], heights[n], box_w[n]
        inside = n in circuit.nodes
        face = "#fdf1c7" if inside else "#eeeeee"
        edge = "#333333" if inside else "#bbbbbb"
        ax.add_patch(
            FancyBboxPatch(
                (x - w / 2, y - h / 2),
                w,
                h,
                boxstyle="round,pad=0.02",
                facecolor=face,
                edgecolor=edge,
                linewidth=1.4 if inside else 0.8,
                zorder=3,
            )
        )
        colour = "#111111" if inside else "#aaaaaa"
        op_lines, extra_lines = texts[n]
        block = _NAME_PT * _LINE_H + len(op_lines) * _OP_PT * _LINE_H + len(extra_lines) * _EXTRA_PT * _LINE_H
        line_y = y + block / 2.0 - _NAME_PT * _LINE_H / 2.0
        ax.text(
            x,
            line_y,
            n,
            ha="center",
            va="center",
            fontsize=_NAME_PT,
            color=colour,
            fontweight="bold",
            zorder=4,
        )
        line_y -= (_NAME_PT + _OP_PT) * _LINE_H / 2.0
        for line in op_lines:
            ax.text(x, line_y, line, ha="center", va="center", fontsize=_OP_PT, color=colour, zorder=4)
            line_y -= _OP_PT * _LINE_H
        line_y += (_OP_PT - _EXTRA_PT) * _LINE_H / 2.0
        for line in extra_lines:
            ax.text(
                x,
                line_y,
                line,
                ha="center",
                va="center",
                fontsize=_EXTRA_PT,
                color="#666666",
                style="italic",
                zorder=4,
            )
            line_y -= _EXTRA_PT * _LINE_H

    for p in sorted(pairs, key=lambda p: (order[p[0]], order[p[1]])):
        writer, reader = p
        inputs = [i for i in _INPUT_ORDER if i in pairs[p]]
        x0 = xcen[writer] + box_w[writer] / 2.0
        x1 = xcen[reader] - box_w[reader] / 2.0
        y0, y1 = ycen[writer], slot_y[p]
        for j, inp in enumerate(inputs):
            d = (j - (len(inputs) - 1) / 2.0) * _SUB
            if p in lanes:
                tx_out, tx_in = track_x[(writer, reader, "out")], track_x[(writer, reader, "in")]
                ly = lane_y[p]
                pts = [(x0, y0 + d), (tx_out + d, y0 + d), (tx_out + d, ly + d)]
                pts += [(tx_in + d, ly + d), (tx_in + d, y1 + d), (x1, y1 + d)]
            else:
                tx = track_x[(writer, reader, "mid")]
                pts = [(x0, y0 + d), (tx + d, y0 + d), (tx + d, y1 + d), (x1, y1 + d)]
            colour = _INPUT_COLOURS[inp]
            ax.add_patch(
                FancyArrowPatch(
                    path=MPath(pts),
                    arrowstyle="-|>",
                    mutation_scale=8,
                    color=colour,
                    linewidth=0.9,
                    shrinkA=0,
                    shrinkB=0,
                    zorder=2,
                )
            )
        lines = label_lines[p]
        lx = x1 - 0.15
        top = y1 + (len(lines) - 1) * _LABEL_PT * _LINE_H / 2.0
        for k, (text, colour) in enumerate(lines):
            ax.text(
                lx,
                top - k * _LABEL_PT * _LINE_H,
                text,
                fontsize=_LABEL_PT,
                color=colour,
                ha="right",
                va="center",
                zorder=5,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.3},
            )

    handles = [Line2D([], [], color=_INPUT_COLOURS[i], lw=1.5, label=f"{i} input") for i in _INPUT_ORDER]
    handles.append(Line2D([], [], color=_MERGED_COLOUR, lw=0, marker="s", label="label shared by inputs"))
    handles.append(Patch(facecolor="#eeeeee", edgecolor="#bbbbbb", label="outside the circuit"))
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(0.2, y_hi + title_h - 0.38),
        bbox_transform=ax.transData,
        ncol=len(handles),
        fontsize=7,
        frameon=False,
    )
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "verify.draw"}):
        if path.suffix.lower() == ".svg":
            fig.savefig(path, metadata={"Date": None})
        else:
            fig.savefig(path, dpi=150)
    return path
