"""Read and write circuits in the forms that circuit-discovery tools use.

Every reader takes the names a tool produces plus the model (a CompiledModel, a `ModelGraph`, or a
ground-truth `Circuit`, which carries its model graph) and returns a canonical `Circuit`: the edges
the tool named, walked back from the output over the model's parts, so that each edge carries the
labels it really carries (see `ModelGraph.circuit`). A name the model lacks raises `CircuitError`
naming it. Writers take a `Circuit`. A circuit converted to any form and read back is identical;
so is one converted between any two forms.

Forms
-----

JSON (this package's own; `to_json` / `from_json`, `save_json` / `load_json`), schema version 1::

    {
      "format": "verify.circuit",            # fixed tag
      "version": 1,                           # bumped on any incompatible change
      "output": "<RASP op label of the output>",
      "model": {"n_layers": int, "n_heads": int, "d_model": int | null},
      "method": "annotation" | "weights" | "",   # how it was derived (informational)
      "nodes": [                              # residual-stream order; "output" included
        {"name": "embed" | "pos_embed" | "L<l>.H<h>" | "L<l>.MLP" | "output",
         "ops": [{"op": "<label>", "neurons": [start, end] | null}, ...],
         "extra_ops": ["<selector or fused op label>", ...]}
      ],
      "edges": [                              # sorted by reader, input, writer
        {"writer": "<node>", "reader": "<node>", "input": "q" | "k" | "v" | "in",
         "labels": ["<residual label>", ...]}
      ]
    }

TransformerLens hook names (node level): `("hook_embed", None)`, `("hook_pos_embed", None)`,
`("blocks.{l}.attn.hook_result", h)`, `("blocks.{l}.hook_mlp_out", None)`; strings are accepted on
reading, with the head as `[:, :, h]` or `[h]` suffix. `blocks.{L-1}.hook_resid_post` (the output) is
accepted and ignored.

ACDC (`TLACDCCorrespondence.all_edges()` keys): `{(child_hook, child_index, parent_hook,
parent_index): present}` with indices as `TorchIndex.hashable_tuple` tuples: `(None,)` for whole
tensors, `(None, None, h)` for head h. Parents: `hook_embed`, `hook_pos_embed` (or the merged
`blocks.0.hook_resid_pre` when ACDC ran without `use_pos_embed`), `blocks.{l}.attn.hook_result`,
`blocks.{l}.hook_mlp_out`. Children: `blocks.{l}.hook_{q,k,v}_input`, `blocks.{l}.hook_mlp_in`
(older ACDC: `hook_resid_mid`), `blocks.{L-1}.hook_resid_post`. Also written are ACDC's internal
edges (`hook_q_input -> attn.hook_q -> attn.hook_result`, `hook_mlp_in -> hook_mlp_out`), present
where the component is in the circuit; reading checks their names and otherwise ignores them.
Values may be bools or objects with `.present`; indices may be TorchIndex objects.

auto-circuit: edge names `"{src}->{dest}"` with sources `Resid Start`, `A{l}.{h}`, `MLP {l}` and
destinations `A{l}.{h}.Q|K|V`, `MLP {l}`, `Resid End` (factorized graph, separate q/k/v). Prune
scores are keyed by destination module name (`blocks.{l}.hook_{q,k,v}_input`,
`blocks.{l}.hook_mlp_in`, `blocks.{L-1}.hook_resid_post`), each a tensor `[n_heads, n_src]` for head
inputs (`[n_src]` when n_heads is 1) or `[n_src]`, where n_src counts the sources before that
destination in auto-circuit's order (`Resid Start`, then per layer the heads then the MLP).

EAP-IG: nodes `input`, `a{l}.h{h}`, `m{l}`, `logits`; edges `parent->child` with `<q>`, `<k>`,
`<v>` appended for head children; its JSON export
`{"cfg": {...}, "nodes": {name: {"in_graph": bool}}, "edges": {name: {"score": float, "in_graph": bool}}}`.

auto-circuit's `Resid Start` and EAP-IG's `input` are the sum of both embeddings: reading such an
edge keeps whichever of `embed`/`pos_embed` the walk from the output uses (both if both); an edge
the walk does not reach maps to the embeddings that overlap the reader (or both).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from verify.circuit import (
    HEAD_INPUTS,
    OUTPUT,
    Circuit,
    CircuitError,
    Edge,
    ModelGraph,
    as_edge,
    check_edge,
    check_node,
    legal_edges,
    model_nodes,
    node_kind,
    node_sort_key,
)

__all__ = [
    "JSON_VERSION",
    "from_acdc",
    "from_autocircuit",
    "from_autocircuit_scores",
    "from_eapig",
    "from_eapig_json",
    "from_edges",
    "from_json",
    "from_nodes",
    "from_tl_hooks",
    "eapig_json_scores",
    "load_json",
    "save_json",
    "to_acdc",
    "to_autocircuit",
    "to_autocircuit_scores",
    "to_eapig",
    "to_eapig_json",
    "to_json",
    "to_tl_hooks",
    "tl_hook",
    "node_of_tl_hook",
]

JSON_VERSION = 1
JSON_TAG = "verify.circuit"
MERGED = "<resid_start>"  # stands for embed + pos_embed in forms that merge them


# ----------------------------------------------------------------------------------------------- model


def _graph(model: Any, output: str | None = None) -> ModelGraph:
    """The ModelGraph behind a CompiledModel, a ModelGraph, or a Circuit that carries one."""
    if isinstance(model, ModelGraph):
        if output is not None and output != model.output:
            raise CircuitError(f"the model graph is for output {model.output!r}, not {output!r}")
        return model
    if isinstance(model, Circuit):
        if model.model_graph is None:
            raise CircuitError("this Circuit carries no model graph; pass the CompiledModel instead")
        return _graph(model.model_graph, output)
    from verify.truth import annotation_dict, model_graph

    method = "annotation" if annotation_dict(model) is not None else "weights"
    return model_graph(model, output, method)


def from_edges(model: Any, edges: Iterable[Edge | str | tuple], output: str | None = None) -> Circuit:
    """The canonical circuit holding exactly the edges named (our `w->r<in>` form or Edge objects)."""
    g = _graph(model, output)
    return _from_groups(g, [[as_edge(e)] for e in edges])


def from_nodes(model: Any, nodes: Iterable[str], output: str | None = None) -> Circuit:
    """The canonical circuit of a set of components: every overlapping edge among them used by the output."""
    g = _graph(model, output)
    names = set()
    for n in nodes:
        check_node(n, g.n_layers, g.n_heads)
        if n != OUTPUT:
            names.add(n)
    allowed = [
        e
        for e in legal_edges(g.n_layers, g.n_heads)
        if e.writer in names and (e.reader in names or e.reader == OUTPUT)
    ]
    return g.circuit(allowed, extra_nodes=sorted(names, key=node_sort_key))


def _from_groups(g: ModelGraph, groups: list[list[Edge]]) -> Circuit:
    expanded = []
    for group in groups:
        concrete = []
        for e in group:
            writers = ["embed", "pos_embed"] if e.writer == MERGED else [e.writer]
            for w in writers:
                ce = Edge(w, e.reader, e.input)
                check_edge(ce, g.n_layers, g.n_heads)
                concrete.append(ce)
        expanded.append(concrete)
    allowed = {e for grp in expanded for e in grp}
    return g.circuit(allowed, groups=expanded)


# ----------------------------------------------------------------------------------------------- JSON


def to_json(circuit: Circuit) -> dict[str, Any]:
    """The circuit as a JSON-able dict (schema in the module docstring)."""
    return {
        "format": JSON_TAG,
        "version": JSON_VERSION,
        "output": circuit.output,
        "model": {"n_layers": circuit.n_layers, "n_heads": circuit.n_heads, "d_model": circuit.d_model},
        "method": circuit.method,
        "nodes": [
            {
                "name": name,
                "ops": [
                    {"op": op, "neurons": None if rng is None else list(rng)}
                    for op, rng in sorted(ops.items())
                ],
                "extra_ops": sorted(circuit.extra_ops.get(name, ())),
            }
            for name, ops in circuit.nodes.items()
        ],
        "edges": [
            {"writer": e.writer, "reader": e.reader, "input": e.input, "labels": sorted(labels)}
            for e, labels in circuit.edges.items()
        ],
    }


def from_json(data: Mapping[str, Any] | str, model: Any = None) -> Circuit:
    """Inverse of `to_json` (dict or text). With `model`, its shape is checked and its graph attached."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as e:
            raise CircuitError(f"circuit JSON is not valid JSON: {e}") from None
    if not isinstance(data, Mapping) or data.get("format") != JSON_TAG:
        raise CircuitError(f"not a circuit JSON document (expected format {JSON_TAG!r})")
    if data.get("version") != JSON_VERSION:
        raise CircuitError(
            f"unsupported circuit JSON version {data.get('version')!r} (expected {JSON_VERSION})"
        )
    try:
        shape = data["model"]
        nodes = {}
        extra = {}
        for nd in data["nodes"]:
            nodes[nd["name"]] = {
                o["op"]: (None if o["neurons"] is None else tuple(o["neurons"])) for o in nd["ops"]
            }
            if nd.get("extra_ops"):
                extra[nd["name"]] = nd["extra_ops"]
        edges = {Edge(e["writer"], e["reader"], e["input"]): e["labels"] for e in data["edges"]}
        graph = None
        if model is not None:
            graph = _graph(model, data["output"])
            if (graph.n_layers, graph.n_heads) != (shape["n_layers"], shape["n_heads"]):
                raise CircuitError(
                    f"circuit JSON is for n_layers={shape['n_layers']}, n_heads={shape['n_heads']}; "
                    f"the model has {graph.n_layers}, {graph.n_heads}"
                )
        return Circuit(
            data["output"],
            nodes,
            edges,
            n_layers=shape["n_layers"],
            n_heads=shape["n_heads"],
            d_model=shape.get("d_model"),
            extra_ops=extra,
            model_graph=graph,
            method=data.get("method", ""),
        )
    except (KeyError, TypeError) as e:
        raise CircuitError(f"malformed circuit JSON: missing or bad field {e}") from None


def save_json(circuit: Circuit, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_json(circuit), indent=1))


def load_json(path: str | Path, model: Any = None) -> Circuit:
    return from_json(Path(path).read_text(), model)


# ----------------------------------------------------------------------------------------------- TL hooks

_IDX_RE = re.compile(r"^(?P<name>[^\[]+?)\s*(\[(?P<idx>[^\]]*)\])?$")


def _component_of_hook(name: str, index: Any, who: str) -> str | None:
    """The component whose output TL hook `name` holds (a head's from `index`, parsed only for heads);
    None when `name` is not a component output hook. `who` names the hook in the error."""
    m = re.fullmatch(r"blocks\.(\d+)\.attn\.hook_result", name)
    if m:
        head = _head_index(index)
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
    node = _component_of_hook(name, index, "hook")
    if node is not None:
        return node
    if name == f"blocks.{n_layers - 1}.hook_resid_post":
        return None
    raise CircuitError(
        f"{name!r} is not a TransformerLens component output hook "
        f"(hook_embed, hook_pos_embed, blocks.L.attn.hook_result, blocks.L.hook_mlp_out)"
    )


def _head_index(index: Any) -> int | None:
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
    node = _hook_node(name, _head_index(index), n_layers if n_layers is not None else -1)
    return OUTPUT if node is None else node


def to_tl_hooks(circuit: Circuit) -> set[tuple[str, int | None]]:
    """Node level: the components of the circuit as (TransformerLens hook, head index or None)."""
    return {tl_hook(name) for name in circuit.node_names()}


def from_tl_hooks(hooks: Iterable[str | tuple[str, Any]], model: Any, output: str | None = None) -> Circuit:
    """Node-level circuit from TransformerLens hook names (tuples or strings with an index suffix)."""
    g = _graph(model, output)
    names = []
    for item in hooks:
        if isinstance(item, str):
            m = _IDX_RE.match(item.strip())
            if not m:
                raise CircuitError(f"{item!r} is not a hook name")
            name, idx = m.group("name"), m.group("idx")
        else:
            name, idx = item
        node = _hook_node(name, _head_index(idx), g.n_layers)
        if node is None:
            continue
        try:
            check_node(node, g.n_layers, g.n_heads)
        except CircuitError as e:
            raise CircuitError(f"hook {item!r}: {e}") from None
        names.append(node)
    return from_nodes(g, names)


# ----------------------------------------------------------------------------------------------- ACDC

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
        head = _head_index(index)
        if head is None:
            raise CircuitError(f"ACDC child {name!r} needs a head index")
        return f"L{m.group(1)}.H{head}", m.group(2)
    m = re.fullmatch(r"blocks\.(\d+)\.hook_(mlp_in|resid_mid)", name)
    if m:
        return f"L{m.group(1)}.MLP", "in"
    if name == f"blocks.{n_layers - 1}.hook_resid_post":
        return OUTPUT, "in"
    if re.fullmatch(r"blocks\.(\d+)\.(attn\.hook_[qkv]|attn\.hook_result|hook_mlp_out)", name):
        return None
    raise CircuitError(f"{name!r} is not an ACDC node name of this model")


def _acdc_parent_node(name: str, index: Any) -> str:
    if name == "blocks.0.hook_resid_pre":
        return MERGED
    node = _component_of_hook(name, index, "ACDC parent")
    if node is not None:
        return node
    raise CircuitError(f"{name!r} is not an ACDC parent (component output) name")


def _present(value: Any) -> bool:
    return bool(value.present) if hasattr(value, "present") else bool(value)


def from_acdc(edges: Mapping[tuple, Any], model: Any, output: str | None = None) -> Circuit:
    """Circuit from ACDC's `{(child, child_index, parent, parent_index): present}` dict."""
    g = _graph(model, output)
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
        _check_named(e, g, f"ACDC edge {key!r}")
        if _present(value):
            groups.append([e])
    return _from_groups(g, groups)


def _check_named(e: Edge, g: ModelGraph, what: str) -> None:
    writers = ["embed", "pos_embed"] if e.writer == MERGED else [e.writer]
    for w in writers:
        try:
            check_edge(Edge(w, e.reader, e.input), g.n_layers, g.n_heads)
        except CircuitError as err:
            raise CircuitError(f"{what}: {err}") from None


# ----------------------------------------------------------------------------------------------- auto-circuit


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


def _named_node(name: str, fixed: Mapping[str, str], head_re: str, mlp_re: str) -> str | None:
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
    node = _named_node(name, {"Resid Start": MERGED}, r"A(\d+)\.(\d+)", r"MLP (\d+)")
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
    return _from_edge_names(edges, model, output, _ac_edge, lambda item: f"auto-circuit edge {item!s}")


def _from_edge_names(
    items: Iterable[Any],
    model: Any,
    output: str | None,
    parse: Callable[[Any], Edge],
    describe: Callable[[Any], str],
) -> Circuit:
    """Circuit from a tool's edge names, one edge each, every one checked against the model's graph."""
    g = _graph(model, output)
    groups = []
    for item in items:
        e = parse(item)
        _check_named(e, g, describe(item))
        groups.append([e])
    return _from_groups(g, groups)


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
    g = _graph(model)
    return g.n_layers, g.n_heads


def to_autocircuit_scores(scores: Circuit | Mapping[Any, float], model: Any = None) -> dict[str, Any]:
    """auto-circuit PruneScores (dict module name -> torch tensor) from a circuit (1/0) or edge scores.

    Edges missing from `scores` score 0; `Resid Start` takes the larger of the embed and pos_embed scores.
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
    for e in legal_edges(n_layers, n_heads):
        module, row, n_src = _ac_dest_module(e.reader, e.input, n_layers, n_heads)
        if module not in out:
            shape = [n_heads, n_src] if row is not None and n_heads > 1 else [n_src]
            out[module] = torch.zeros(shape)
        col = _ac_src_index(e.writer, n_heads)
        v = values.get(e, 0.0)
        key = (module, row, col)
        v = max(v, filled[key]) if key in filled else v
        filled[key] = v
        if out[module].ndim == 2:
            out[module][row, col] = v
        else:
            out[module][col] = v
    return out


def from_autocircuit_scores(
    prune_scores: Mapping[str, Any], model: Any, *, threshold: float | None = None, output: str | None = None
) -> dict[Edge, float] | Circuit:
    """Edge scores from auto-circuit PruneScores; with `threshold`, the circuit of edges scoring above it.

    A `Resid Start` score goes to both `embed` and `pos_embed` edges.
    """
    import numpy as np

    g = (
        _graph(model, output)
        if threshold is not None or not isinstance(model, (Circuit, ModelGraph))
        else None
    )
    n_layers, n_heads = (g.n_layers, g.n_heads) if g is not None else _shape_of(model)
    arrays = {}
    for module, t in prune_scores.items():
        arr = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
        arrays[str(module)] = arr
    expected = {}
    for e in legal_edges(n_layers, n_heads):
        module, row, n_src = _ac_dest_module(e.reader, e.input, n_layers, n_heads)
        expected.setdefault(module, (row is not None, n_src))
    unknown = sorted(set(arrays) - set(expected))
    if unknown:
        raise CircuitError(f"auto-circuit prune scores name modules the model lacks: {unknown[:5]}")
    for module, arr in arrays.items():
        is_head, n_src = expected[module]
        ok = (
            [(n_heads, n_src)]
            if is_head and n_heads > 1
            else [(n_src,), (1, n_src)]
            if is_head
            else [(n_src,)]
        )
        if tuple(arr.shape) not in ok:
            raise CircuitError(
                f"auto-circuit prune scores for {module!r} have shape {tuple(arr.shape)}, expected {ok[0]}"
            )
    result: dict[Edge, float] = {}
    for e in legal_edges(n_layers, n_heads):
        module, row, _ = _ac_dest_module(e.reader, e.input, n_layers, n_heads)
        if module not in arrays:
            continue
        arr = arrays[module]
        col = _ac_src_index(e.writer, n_heads)
        result[e] = float(arr[row, col] if arr.ndim == 2 else arr[col])
    if threshold is None:
        return result
    groups: dict[tuple, list[Edge]] = {}
    for e, v in result.items():
        if v > threshold:
            w = MERGED if e.writer in ("embed", "pos_embed") else e.writer
            groups.setdefault((w, e.reader, e.input), []).append(e)
    assert g is not None
    return g.circuit({e for grp in groups.values() for e in grp}, groups=list(groups.values()))


# ----------------------------------------------------------------------------------------------- EAP-IG


def _eap_node(node: str) -> str:
    kind, layer, head = node_kind(node)
    if kind in ("embed", "pos_embed"):
        return "input"
    if kind == "attn":
        return f"a{layer}.h{head}"
    if kind == "mlp":
        return f"m{layer}"
    return "logits"


def _eap_name(e: Edge) -> str:
    base = f"{_eap_node(e.writer)}->{_eap_node(e.reader)}"
    return base + (f"<{e.input}>" if e.input in HEAD_INPUTS else "")


def _eap_parse_node(name: str) -> str:
    node = _named_node(name, {"input": MERGED, "logits": OUTPUT}, r"a(\d+)\.h(\d+)", r"m(\d+)")
    if node is not None:
        return node
    name = name.strip()
    raise CircuitError(f"{name!r} is not an EAP-IG node name (input, a<l>.h<h>, m<l>, logits)")


def _eap_parse_edge(text: str) -> Edge:
    m = re.fullmatch(r"(?P<p>[^<>]+?)->(?P<c>[^<>]+?)(<(?P<q>[qkv])>)?", str(text).strip())
    if not m:
        raise CircuitError(f"{text!r} is not an EAP-IG edge name ('parent->child' or 'parent->child<q>')")
    parent, child = _eap_parse_node(m.group("p")), _eap_parse_node(m.group("c"))
    if parent == OUTPUT or child == MERGED:
        raise CircuitError(f"EAP-IG edge {text!r} runs the wrong way")
    is_head = node_kind(child)[0] == "attn"
    if is_head != (m.group("q") is not None):
        raise CircuitError(
            f"EAP-IG edge {text!r}: edges into heads need <q>/<k>/<v>, others must not have it"
        )
    return Edge(parent, child, m.group("q") or "in")


def to_eapig(circuit: Circuit) -> set[str]:
    """EAP-IG edge names (`"input->a0.h1<q>"`, `"a0.h1->m0"`, `"m1->logits"`) of the circuit's edges."""
    return {_eap_name(e) for e in circuit.edges}


def from_eapig(edges: Iterable[str], model: Any, output: str | None = None) -> Circuit:
    """Circuit from EAP-IG edge names."""
    return _from_edge_names(edges, model, output, _eap_parse_edge, lambda name: f"EAP-IG edge {name!r}")


def to_eapig_json(circuit: Circuit, scores: Mapping[Any, float] | None = None) -> dict[str, Any]:
    """EAP-IG's `Graph.to_json` layout over its whole graph; scores default to 1/0 for in/out of circuit."""
    present = set(circuit.edges)
    vals: dict[Edge, float] = {}
    if scores is not None:
        for k, v in scores.items():
            e = as_edge(k)
            check_edge(e, circuit.n_layers, circuit.n_heads)
            vals[e] = float(v)
    edges: dict[str, dict[str, Any]] = {}
    for e in legal_edges(circuit.n_layers, circuit.n_heads):
        name = _eap_name(e)
        score = vals.get(e, 0.0) if scores is not None else float(e in present)
        old = edges.get(name)
        if old is not None:
            score = max(score, old["score"])
        edges[name] = {
            "score": score,
            "in_graph": bool(e in present or (old is not None and old["in_graph"])),
        }
    in_circuit = {_eap_node(n) for n in circuit.node_names(include_output=True)}
    nodes = {}
    for n in model_nodes(circuit.n_layers, circuit.n_heads):
        name = _eap_node(n)
        nodes[name] = {"in_graph": name == "logits" or name in in_circuit}
    cfg = {
        "n_layers": circuit.n_layers,
        "n_heads": circuit.n_heads,
        "parallel_attn_mlp": False,
        "d_model": circuit.d_model,
    }
    return {"cfg": cfg, "nodes": nodes, "edges": edges}


def _eap_json_edges(data: Mapping[str, Any] | str, g: ModelGraph) -> dict[str, dict]:
    if isinstance(data, str):
        data = json.loads(data)
    if not isinstance(data, Mapping) or "edges" not in data:
        raise CircuitError("EAP-IG JSON needs an 'edges' object")
    cfg = data.get("cfg") or {}
    for key, have in (("n_layers", g.n_layers), ("n_heads", g.n_heads)):
        if key in cfg and int(cfg[key]) != have:
            raise CircuitError(f"EAP-IG JSON cfg.{key} = {cfg[key]}, the model has {have}")
    if cfg.get("parallel_attn_mlp"):
        raise CircuitError(
            "EAP-IG JSON is for a parallel-attention/MLP model; compiled models are sequential"
        )
    return dict(data["edges"])


def from_eapig_json(data: Mapping[str, Any] | str, model: Any, output: str | None = None) -> Circuit:
    """Circuit of the edges marked `in_graph` in an EAP-IG JSON export."""
    g = _graph(model, output)
    edges = _eap_json_edges(data, g)
    names = []
    for name, info in edges.items():
        e = _eap_parse_edge(name)
        _check_named(e, g, f"EAP-IG edge {name!r}")
        if info.get("in_graph"):
            names.append(name)
    return from_eapig(names, g)


def eapig_json_scores(
    data: Mapping[str, Any] | str, model: Any, output: str | None = None
) -> dict[Edge, float]:
    """Edge scores of an EAP-IG JSON export (an `input` score goes to both embeddings)."""
    g = _graph(model, output)
    out: dict[Edge, float] = {}
    for name, info in _eap_json_edges(data, g).items():
        e = _eap_parse_edge(name)
        _check_named(e, g, f"EAP-IG edge {name!r}")
        writers = ["embed", "pos_embed"] if e.writer == MERGED else [e.writer]
        for w in writers:
            out[Edge(w, e.reader, e.input)] = float(info["score"])
    return out
