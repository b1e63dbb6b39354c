"""Ground-truth circuits, derived two independent ways: from the compiler's annotation, and from the weights.

`ground_truth(model, output=None, method="annotation" | "weights")` returns the `Circuit` of one
output: every part (op inside a component) that is an ancestor of the output, every edge between
such parts projected to components, each edge labelled with the residual labels it carries.

From the annotation (docs/CONTRACTS.md section 3): each block is a part; it writes `writes` and reads
`reads[input]`; two parts are joined where the labels intersect; the output reads its op's
`directions`.

From the weights alone (docs/CONTRACTS.md section 2), with residual labels from
`config.residual_labels`:

* writers and the matrix whose row space is what they write: token embedding `W_E` (split into one
  part per variable of its columns: `tokens`, `one`), position embedding `W_pos`, head `W_O[h]`,
  MLP `W_out[neurons]` for each op's neuron range;
* readers and the matrix whose column space is what they read: `W_Q[h]` (q), `W_K[h]` (k),
  `W_V[h]` (v), `W_in[:, neurons]` (in), `W_U` restricted to the output's rows (output);
* an edge exists where `||B_w @ W_read||_F > TOL * ||W_read||_F`, with `B_w` an orthonormal basis
  of the writer's row space (singular values above `TOL * s_max`), `TOL = 1e-6`. This test holds in
  any basis; the labels an edge carries are the residual directions where the writer's matrix has a
  nonzero column and the reader's a nonzero row (entries above `TOL` times the weight's largest
  magnitude), which is exact in the compiler's labelled basis.
* MLP neuron ranges come from the annotation only to split an MLP into ops; without an annotation
  the neurons are grouped by the variable they write. The op of a part is the variable it writes
  (`variable_of` on its labels), so node- and edge-level circuits need nothing but the weights.
  The BOS token's direction (`tokens:<BOS>`, found as the `tokens:` column of `W_E[bos_token_id]`)
  is attention-sink machinery and goes with `one`, as the compiler's annotation records it.
* Under a rotated residual basis the overlap test (`overlaps`) still decides edges; labels and op
  names need the labelled basis (a rotation within each variable's directions changes nothing).
  Rotated variants (rasp_compiler/variants.py) record each labelled direction's vector in the
  annotation's "variant" section; the weights are read in that frame (`residual_frame`). Compressed
  variants have no weight-derived truth (their annotation truth is marked approximate).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from rasp_compiler.model.annotation import Annotation
from rasp_compiler.model.directions import label_variables, variable_of
from rasp_compiler.model.structure import to_labelled_frame
from verify.circuit import (
    HEAD_INPUTS,
    OUTPUT,
    Circuit,
    CircuitError,
    Edge,
    ModelGraph,
    Part,
    edge_is_legal,
)

__all__ = [
    "TOL",
    "overlaps",
    "annotation_dict",
    "ground_truth",
    "model_graph",
    "graph_from_annotation",
    "graph_from_weights",
    "residual_frame",
]

TOL = 1e-6
METHODS = ("annotation", "weights")


def _cfg(model: Any, name: str, default: Any = None) -> Any:
    cfg = model.config
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def annotation_dict(model: Any) -> dict | None:
    """The JSON form of the model's typed `Annotation` (docs/CONTRACTS.md section 3), or None."""
    ann = getattr(model, "annotation", None)
    if ann is None:
        return None
    if not isinstance(ann, Annotation):
        raise CircuitError(f"model annotation must be an Annotation (Annotation.from_json reads its JSON "
                           f"form), got {type(ann).__name__}")
    return ann.to_json()


def residual_frame(model: Any) -> tuple[list[str] | None, np.ndarray | None, dict]:
    """The labelled frame a variant records (rasp_compiler/variants.py, annotation "variant"): its labels,
    each label's vector in the model's residual coordinates (`[n_labels, d_model]`, None = identity),
    and the card. `(None, None, {})` for a model whose basis vectors are its labels."""
    ann = annotation_dict(model)
    card = ann.get("variant") if ann is not None else None
    if not isinstance(card, dict):
        return None, None, {}
    labels = [str(x) for x in card.get("labels") or []] or None
    basis = None if card.get("basis") is None else np.asarray(card["basis"], dtype=np.float64)
    return labels, basis, card


def _outputs(ann: dict) -> list[str]:
    if "outputs" in ann:
        return [str(o) for o in ann["outputs"]]
    return [str(ann["output"])]


def _pick_output(ann: dict | None, output: str | None, fallback: list[str]) -> str:
    choices = _outputs(ann) if ann is not None else fallback
    if ann is not None and output is not None and output in (ann.get("output_names") or {}):
        output = str(ann["output_names"][output])  # multi-output models: an output's name -> its op label
    if output is None:
        if len(choices) != 1:
            raise CircuitError(f"the model has several outputs {choices}; pass output=")
        return choices[0]
    if output not in choices:
        raise CircuitError(f"output {output!r} is not an output of the model (outputs: {choices})")
    return output


def _sub_edges_from_labels(parts: dict[tuple[str, str], Part]) -> dict:
    """Part edges where the writer's labels meet the reader's labels on some input."""
    out = {}
    for r in parts.values():
        for inp, reads in r.reads.items():
            if not reads:
                continue
            for w in parts.values():
                if w.node == OUTPUT or not edge_is_legal(Edge(w.node, r.node, inp)):
                    continue
                common = w.writes & reads
                if common:
                    out[(w.key, r.key, inp)] = frozenset(common)
    return out


# ----------------------------------------------------------------------------------------------- annotation


def _node_of_block(block: dict, n_layers: int, n_heads: int) -> str:
    comp = block.get("component")
    where = f"annotation block for op {block.get('op')!r}"
    if comp == "embed":
        return "embed"
    if comp == "pos_embed":
        return "pos_embed"
    if comp not in ("attn", "mlp"):
        raise CircuitError(f"{where}: unknown component {comp!r}")
    layer = block.get("layer")
    if not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise CircuitError(f"{where}: layer {layer!r} is outside 0..{n_layers - 1}")
    if comp == "mlp":
        return f"L{layer}.MLP"
    head = block.get("head")
    if not isinstance(head, int) or not 0 <= head < n_heads:
        raise CircuitError(f"{where}: head {head!r} is outside 0..{n_heads - 1}")
    return f"L{layer}.H{head}"


SELECTOR_KINDS = ("select", "selector_and", "selector_or", "selector_not", "constant_selector")


def _selector_closure(ops: dict, roots: list[str]) -> set[str]:
    """Selector ops feeding the given ops (a head's QK implements its whole selector expression)."""
    out: set[str] = set()
    stack = [c for r in roots for c in ops.get(r, {}).get("children", ())]
    while stack:
        label = stack.pop()
        if label in out or ops.get(label, {}).get("kind") not in SELECTOR_KINDS:
            continue
        out.add(label)
        stack.extend(ops[label].get("children", ()))
    return out


def graph_from_annotation(model: Any, output: str | None = None) -> ModelGraph:
    """The model graph as the compiler's annotation describes it."""
    ann = annotation_dict(model)
    if ann is None:
        raise CircuitError("the model has no annotation; use method='weights'")
    n_layers, n_heads = int(_cfg(model, "n_layers")), int(_cfg(model, "n_heads"))
    known = set(residual_frame(model)[0] or _cfg(model, "residual_labels") or ())
    ops = ann.get("ops", {})
    out_op = _pick_output(ann, output, [])
    if out_op not in ops:
        raise CircuitError(f"annotation has no op {out_op!r} (the output)")

    def labels(values: Any, where: str) -> frozenset[str]:
        result = frozenset(str(v) for v in values)
        unknown = sorted(result - known) if known else []
        if unknown:
            raise CircuitError(f"{where}: residual labels {unknown[:5]} are not in config.residual_labels")
        return result

    merged: dict[tuple[str, str], dict] = {}
    for block in ann.get("blocks", []):
        node = _node_of_block(block, n_layers, n_heads)
        op = str(block["op"])
        all_ops = [str(o) for o in block.get("ops", [op])]
        writes = labels(block.get("writes", ()), f"block {node} (op {op!r}) writes")
        # The op of a part is the one whose directions it writes (fused blocks list several ops).
        main = [o for o in all_ops if writes & set(ops.get(o, {}).get("directions", ()))]
        if len(main) == 1:
            op = main[0]
        entry = merged.setdefault(
            (node, op), {"writes": set(), "reads": defaultdict(set), "neurons": None, "extra": set()}
        )
        entry["writes"] |= writes
        for inp, labs in (block.get("reads") or {}).items():
            allowed = HEAD_INPUTS if node.startswith("L") and ".H" in node else ("in",)
            if node in ("embed", "pos_embed") or inp not in allowed:
                raise CircuitError(f"block {node} (op {op!r}) reads on input {inp!r}, which it does not have")
            entry["reads"][inp] |= labels(labs, f"block {node} (op {op!r}) reads {inp}")
        if block.get("neurons") is not None:
            start, end = (int(x) for x in block["neurons"])
            old = entry["neurons"]
            entry["neurons"] = (start, end) if old is None else (min(old[0], start), max(old[1], end))
        entry["extra"] |= {str(s) for s in block.get("selectors", ())} | (set(all_ops) - {op})
        if block.get("component") == "attn":
            entry["extra"] |= _selector_closure(ops, all_ops)
    parts = {
        key: Part(
            key[0],
            key[1],
            frozenset(v["writes"]),
            {k: frozenset(s) for k, s in v["reads"].items()},
            v["neurons"],
            frozenset(v["extra"]),
        )
        for key, v in merged.items()
    }
    out_labels = labels(ops[out_op].get("directions", ()), f"output op {out_op!r} directions")
    parts[(OUTPUT, out_op)] = Part(OUTPUT, out_op, frozenset(), {"in": out_labels})
    return ModelGraph(
        n_layers,
        n_heads,
        int(_cfg(model, "d_model")),
        out_op,
        parts,
        _sub_edges_from_labels(parts),
        method="annotation",
        heads_per_layer=_cfg(model, "heads_per_layer"),
    )


# ----------------------------------------------------------------------------------------------- weights


def _nonzero(mat: np.ndarray, axis: int, scale: float) -> np.ndarray:
    """Indices along the other axis whose slice has an entry above TOL * scale."""
    if mat.size == 0 or scale == 0.0:
        return np.zeros(0, dtype=int)
    return np.nonzero(np.max(np.abs(mat), axis=axis) > TOL * scale)[0]


def overlaps(write: np.ndarray, read: np.ndarray) -> bool:
    """Whether a reader (`read` [d_model, k]) sees anything a writer (`write` [m, d_model]) writes.

    True when `||B @ read||_F > TOL * ||read||_F`, `B` an orthonormal basis of `write`'s row space:
    the test holds in any residual basis (rotate both by the same orthogonal matrix, same answer).
    """
    read = np.asarray(read, dtype=np.float64)
    norm = float(np.linalg.norm(read))
    basis = _row_basis(np.asarray(write))
    return norm > 0.0 and basis.shape[0] > 0 and _projected_overlap(basis, read, norm)


def _projected_overlap(basis: np.ndarray, read: np.ndarray, norm: float) -> bool:
    return float(np.linalg.norm(basis @ read)) > TOL * norm


def _row_basis(mat: np.ndarray) -> np.ndarray:
    """Orthonormal basis (rows) of the row space of `mat`, rank cut at TOL * s_max."""
    if mat.size == 0 or not np.any(mat):
        return np.zeros((0, mat.shape[-1]))
    _, s, vt = np.linalg.svd(mat.astype(np.float64), full_matrices=False)
    return vt[s > TOL * s[0]]


def graph_from_weights(model: Any, output: str | None = None) -> ModelGraph:
    """The model graph from the weights alone (MLP neuron ranges from the annotation when it has one)."""
    w = {k: np.asarray(v) for k, v in model.weights.items()}
    n_layers, n_heads, d_model = (
        int(_cfg(model, "n_layers")),
        int(_cfg(model, "n_heads")),
        int(_cfg(model, "d_model")),
    )
    frame_labels, basis, _ = residual_frame(model)
    labels = [str(s) for s in (frame_labels or _cfg(model, "residual_labels"))]
    if basis is not None:  # rotated residual: read the weights in the recorded labelled frame
        square = basis.shape == (d_model, d_model)
        if not square or not np.allclose(basis @ basis.T, np.eye(d_model), atol=1e-6):
            raise CircuitError("the model's residual stream is compressed (its variant basis is not "
                               "orthogonal): the weights cannot name its directions; use "
                               "method='annotation' (approximate)")
        w = to_labelled_frame(w, basis)
    if len(labels) != d_model:
        raise CircuitError(f"config.residual_labels has {len(labels)} labels, d_model is {d_model}")
    heads = label_variables(labels)
    var = [variable_of(lab, heads) for lab in labels]

    def get(name: str) -> np.ndarray:
        if name not in w:
            raise CircuitError(f"the model has no weight {name!r}")
        return w[name]

    def scale(name: str) -> float:
        return float(np.max(np.abs(get(name)))) if get(name).size else 0.0

    # writer parts: (node, op) -> (matrix [k, d_model], labels written)
    writers: dict[tuple[str, str], np.ndarray] = {}
    writes: dict[tuple[str, str], frozenset[str]] = {}
    neurons_of: dict[tuple[str, str], tuple[int, int] | None] = {}

    def add_writer(
        node: str, mat: np.ndarray, sc: float, neurons: tuple[int, int] | None = None, op: str | None = None
    ) -> None:
        cols = _nonzero(mat, 0, sc)
        if len(cols) == 0:
            return
        name = op if op is not None else "+".join(sorted({var[c] for c in cols}))
        writers[(node, name)] = mat
        writes[(node, name)] = frozenset(labels[c] for c in cols)
        neurons_of[(node, name)] = neurons

    # The BOS token's own direction (tokens:BOS) is attention-sink machinery, not a value of `tokens`:
    # it goes with `one`, as the token embedding's row for BOS (config.bos_token_id) shows.
    w_e, bos = get("W_E"), _cfg(model, "bos_token_id", 0)
    if bos is not None and 0 <= int(bos) < w_e.shape[0]:
        for c in _nonzero(w_e[int(bos) : int(bos) + 1], 0, scale("W_E")):
            if var[c] == "tokens":
                var[c] = "one"
    for node, wname in (("embed", "W_E"), ("pos_embed", "W_pos")):
        mat, sc = get(wname), scale(wname)
        cols = _nonzero(mat, 0, sc)
        for v in sorted({var[c] for c in cols}):
            mask = np.array([var[c] == v for c in range(d_model)])
            add_writer(node, np.where(mask[None, :], mat, 0.0), sc, op=v)

    ann = annotation_dict(model)
    ranges: dict[int, list[tuple[int, int]]] = defaultdict(list)
    if ann is not None:
        for block in ann.get("blocks", []):
            if block.get("component") == "mlp" and block.get("neurons") is not None:
                rng = (int(block["neurons"][0]), int(block["neurons"][1]))
                if rng not in ranges[int(block["layer"])]:
                    ranges[int(block["layer"])].append(rng)

    readers: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    read_scale: dict[tuple[str, str], dict[str, float]] = {}
    for layer in range(n_layers):
        a = f"blocks.{layer}.attn."
        wo, so = get(a + "W_O"), scale(a + "W_O")
        for h in range(n_heads):
            node = f"L{layer}.H{h}"
            before = set(writers)
            add_writer(node, wo[h], so)
            for key in set(writers) - before:
                readers[key] = {m.lower(): get(a + f"W_{m}")[h] for m in "QKV"}
                read_scale[key] = {m.lower(): scale(a + f"W_{m}") for m in "QKV"}
        m = f"blocks.{layer}.mlp."
        w_in, w_out, s_in, s_out = get(m + "W_in"), get(m + "W_out"), scale(m + "W_in"), scale(m + "W_out")
        node = f"L{layer}.MLP"
        live = set(_nonzero(w_out, 1, s_out)) | set(_nonzero(w_in, 0, s_in))
        groups: list[tuple[np.ndarray, tuple[int, int] | None]] = []
        if ranges.get(layer):
            covered: set[int] = set()
            for start, end in sorted(ranges[layer]):
                idx = np.arange(start, end)
                covered |= set(idx.tolist())
                groups.append((idx, (start, end)))
            stray = sorted(live - covered)
            if stray:  # neurons no annotated range covers: keep them visible as their own part
                groups.append((np.array(stray), None))
        else:
            by_var: dict[str, list[int]] = defaultdict(list)
            for n in sorted(live):
                cols = _nonzero(w_out[n : n + 1], 0, s_out)
                by_var["+".join(sorted({var[c] for c in cols})) or "<dead>"].append(n)
            for _, idx in sorted(by_var.items()):
                groups.append((np.array(idx), (min(idx), max(idx) + 1)))
        for idx, rng in groups:
            before = set(writers)
            add_writer(node, w_out[idx], s_out, neurons=rng)
            for key in set(writers) - before:
                readers[key] = {"in": w_in[:, idx]}
                read_scale[key] = {"in": s_in}

    w_u = get("W_U")
    out_rows = _nonzero(w_u, 1, scale("W_U"))
    out_vars = sorted({var[r] for r in out_rows})
    out_op = _pick_output(ann, output, out_vars)
    mask = np.array([var[r] == out_op for r in range(d_model)])
    if not mask.any():
        raise CircuitError(f"no residual label belongs to the output {out_op!r}")
    readers[(OUTPUT, out_op)] = {"in": np.where(mask[:, None], w_u, 0.0)}
    read_scale[(OUTPUT, out_op)] = {"in": scale("W_U")}

    parts: dict[tuple[str, str], Part] = {}
    bases = {key: _row_basis(mat) for key, mat in writers.items()}
    reads: dict[tuple[str, str], dict[str, frozenset[str]]] = {}
    for key, mats in readers.items():
        reads[key] = {
            inp: frozenset(labels[r] for r in _nonzero(mat, 1, read_scale[key][inp]))
            for inp, mat in mats.items()
        }
    for key in set(writers) | set(readers):
        parts[key] = Part(
            key[0],
            key[1],
            writes.get(key, frozenset()),
            {k: v for k, v in reads.get(key, {}).items() if v},
            neurons_of.get(key),
        )
    sub_edges = {}
    for rkey, mats in readers.items():
        for inp, rmat in mats.items():
            norm = float(np.linalg.norm(rmat))
            if norm == 0.0:
                continue
            for wkey, basis in bases.items():
                if not edge_is_legal(Edge(wkey[0], rkey[0], inp)) or basis.shape[0] == 0:
                    continue
                if _projected_overlap(basis, rmat, norm):
                    sub_edges[(wkey, rkey, inp)] = writes[wkey] & reads[rkey].get(inp, frozenset())
    return ModelGraph(
        n_layers,
        n_heads,
        d_model,
        out_op,
        parts,
        sub_edges,
        method="weights",
        heads_per_layer=_cfg(model, "heads_per_layer"),
    )


# ----------------------------------------------------------------------------------------------- entry points


def model_graph(model: Any, output: str | None = None, method: str = "annotation") -> ModelGraph:
    """Every part and part edge of `model` for one output, derived by `method`."""
    if method == "annotation":
        return graph_from_annotation(model, output)
    if method == "weights":
        return graph_from_weights(model, output)
    raise CircuitError(f"unknown method {method!r}; expected one of {METHODS}")


def ground_truth(model: Any, output: str | None = None, method: str = "annotation") -> Circuit:
    """The ground-truth circuit of `output` (default: the model's single output).

    Only ancestors of the output are in it. `method="annotation"` reads the compiler's bookkeeping,
    `method="weights"` the weight matrices; the two must agree (tests check that they do).
    """
    circuit = model_graph(model, output, method).circuit()
    card = residual_frame(model)[2]
    if card.get("approximate"):  # compressed variants: the truth holds up to the stored accuracy
        circuit.approximate = True
        circuit.accuracy = card.get("accuracy")
    return circuit
