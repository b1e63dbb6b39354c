"""EAP-IG's node and edge names and its graph JSON in and out."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
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
    flag_value,
    legal_edges,
    model_nodes,
    node_kind,
    score_value,
)
from verify.formats.autocircuit import circuit_from_edge_names, named_node
from verify.formats.graphs import MERGED, check_named, graph_of

__all__ = ["eapig_json_scores", "from_eapig", "from_eapig_json", "to_eapig", "to_eapig_json"]


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
    node = named_node(name, {"input": MERGED, "logits": OUTPUT}, r"a(\d+)\.h(\d+)", r"m(\d+)")
    if node is not None:
        return node
    name = name.strip()
    raise CircuitError(f"{name!r} is not an EAP-IG node name (input, a<l>.h<h>, m<l>, logits)")


def _eap_parse_edge(text: str) -> Edge:
    if not isinstance(text, str):
        raise CircuitError(f"EAP-IG edge {text!r} is not a name ('parent->child' or 'parent->child<q>')")
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
    return circuit_from_edge_names(
        edges, model, output, _eap_parse_edge, lambda name: f"EAP-IG edge {name!r}"
    )


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
    g = graph_of(model, output)
    edges = _eap_json_edges(data, g)
    names = []
    for name, info in edges.items():
        e = _eap_parse_edge(name)
        check_named(e, g, f"EAP-IG edge {name!r}")
        if flag_value(info.get("in_graph", False), f"EAP-IG edge {name!r} in_graph"):
            names.append(name)
    return from_eapig(names, g)


def eapig_json_scores(
    data: Mapping[str, Any] | str, model: Any, output: str | None = None
) -> dict[Edge, float]:
    """Edge scores of an EAP-IG JSON export (an `input` score goes to both embeddings)."""
    g = graph_of(model, output)
    out: dict[Edge, float] = {}
    for name, info in _eap_json_edges(data, g).items():
        e = _eap_parse_edge(name)
        check_named(e, g, f"EAP-IG edge {name!r}")
        writers = ["embed", "pos_embed"] if e.writer == MERGED else [e.writer]
        for w in writers:
            out[Edge(w, e.reader, e.input)] = score_value(info["score"], f"EAP-IG edge {name!r}")
    return out
