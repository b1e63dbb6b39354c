"""This package's own circuit JSON (schema version 1; see `verify.formats`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from verify.circuit import (
    Circuit,
    CircuitError,
    Edge,
)
from verify.formats.graphs import graph_of

JSON_VERSION = 1
JSON_TAG = "verify.circuit"

__all__ = ["from_json", "load_json", "save_json", "to_json"]


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
    _known_keys(data, _TOP_KEYS, "the document")
    try:
        shape = data["model"]
        _known_keys(shape, _MODEL_KEYS, "model")
        for n in ("n_layers", "n_heads"):
            if isinstance(shape[n], bool) or not isinstance(shape[n], int) or shape[n] < 0:
                raise CircuitError(f"circuit JSON field model.{n} must be an int >= 0, got {shape[n]!r}")
        nodes = {}
        extra = {}
        for nd in data["nodes"]:
            _known_keys(nd, _NODE_KEYS, f"node {nd.get('name')!r}")
            for o in nd["ops"]:
                _known_keys(o, _OP_KEYS, f"node {nd.get('name')!r} op")
            nodes[nd["name"]] = {
                o["op"]: (None if o["neurons"] is None else tuple(o["neurons"])) for o in nd["ops"]
            }
            if nd.get("extra_ops"):
                extra[nd["name"]] = nd["extra_ops"]
        for e in data["edges"]:
            _known_keys(e, _EDGE_KEYS, "edge")
        edges = {Edge(e["writer"], e["reader"], e["input"]): e["labels"] for e in data["edges"]}
        graph = None
        if model is not None:
            graph = graph_of(model, data["output"])
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
    except (KeyError, TypeError, AttributeError) as e:
        raise CircuitError(f"malformed circuit JSON: missing or bad field {e}") from None


# Every key the schema has; any other key is refused (a misspelt field must not pass as absent).
_TOP_KEYS = {"format", "version", "output", "model", "method", "nodes", "edges"}
_MODEL_KEYS = {"n_layers", "n_heads", "d_model"}
_NODE_KEYS = {"name", "ops", "extra_ops"}
_OP_KEYS = {"op", "neurons"}
_EDGE_KEYS = {"writer", "reader", "input", "labels"}


def _known_keys(obj: Any, allowed: set[str], where: str) -> None:
    if not isinstance(obj, Mapping):
        raise CircuitError(f"circuit JSON: {where} must be an object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise CircuitError(f"circuit JSON: {where} has unknown field(s) {unknown} (known: {sorted(allowed)})")


def save_json(circuit: Circuit, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_json(circuit), indent=1))


def load_json(path: str | Path, model: Any = None) -> Circuit:
    return from_json(Path(path).read_text(), model)
