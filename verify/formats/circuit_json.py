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
    except (KeyError, TypeError) as e:
        raise CircuitError(f"malformed circuit JSON: missing or bad field {e}") from None


def save_json(circuit: Circuit, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_json(circuit), indent=1))


def load_json(path: str | Path, model: Any = None) -> Circuit:
    return from_json(Path(path).read_text(), model)
