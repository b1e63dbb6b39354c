"""One reader for any discovered-circuit file: the form is detected from the content."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from verify.circuit import CircuitError, score_value
from verify.formats.acdc import from_acdc
from verify.formats.autocircuit import circuit_above, from_autocircuit, from_autocircuit_scores
from verify.formats.circuit_json import JSON_TAG, from_json
from verify.formats.eapig import eapig_json_scores, from_eapig, from_eapig_json
from verify.formats.graphs import from_edges, from_nodes, graph_of
from verify.formats.tl_hooks import from_tl_hooks

__all__ = ["read_circuit_file"]


def read_circuit_file(
    path: str | Path, model: Any, threshold: float = 0.0
) -> tuple[Any, dict[str, float] | None, str]:
    """(Circuit, edge scores or None, form name) from a discovered-circuit file in any supported form.

    Forms: verify's circuit JSON; ACDC edges (the suite's `circuit.acdc.json` rows, or a JSON object
    `{"child|child_index|parent|parent_index": bool}`); auto-circuit edge names (a list, or
    `{"edges": [...]}`) or prune scores (`{"prune_scores": {module: nested lists}}`); EAP-IG's graph
    JSON (`{"nodes": ..., "edges": {name: {"score", "in_graph"}}}`) or edge names; our edge names
    (`"L0.H0->L1.MLP<in>"`), as a list or as `{edge: score}`.
    """
    p = Path(path)
    if p.is_dir():
        raise CircuitError(f"circuit file {p} is a directory; give the discovered circuit's file (JSON)")
    if not p.is_file():
        raise CircuitError(f"circuit file {p} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CircuitError(f"circuit file {p} is not valid JSON ({e})") from None
    form = "?"
    try:
        if isinstance(data, dict) and data.get("format") == JSON_TAG:
            form = "verify JSON"
            return from_json(data, model), None, form
        if isinstance(data, dict) and data.get("format") == "acdc" or _looks_acdc(data):
            form = "ACDC"
            rows = data["edges"] if isinstance(data, dict) and "edges" in data else data
            return from_acdc(_acdc_dict(rows), model), None, form
        if isinstance(data, dict) and (data.get("format") == "tl-hooks" or "hooks" in data):
            form = "TransformerLens hooks"
            hooks = [tuple(h) if isinstance(h, list) else h for h in data["hooks"]]
            return from_tl_hooks(hooks, model), None, form
        if isinstance(data, dict) and "prune_scores" in data:
            form = "auto-circuit prune scores"
            cut = data.get("threshold", threshold)
            if cut is not None:
                cut = score_value(cut, "auto-circuit prune scores' threshold")
            scores = from_autocircuit_scores(data["prune_scores"], model)
            circ = circuit_above(scores, graph_of(model), cut if cut is not None else 0.0)
            return circ, {str(e): v for e, v in scores.items()}, form
        if isinstance(data, dict) and isinstance(data.get("edges"), dict) and "nodes" in data:
            form = "EAP-IG JSON"
            return (
                from_eapig_json(data, model),
                {str(k): v for k, v in eapig_json_scores(data, model).items()},
                form,
            )
        names = data.get("edges") if isinstance(data, dict) and isinstance(data.get("edges"), list) else data
        if isinstance(names, list) and all(isinstance(x, str) for x in names):
            form = _edge_name_form(names)
            if form == "auto-circuit":
                return from_autocircuit(names, model), None, form
            if form == "EAP-IG":
                return from_eapig(names, model), None, form
            if form == "nodes":
                return from_nodes(model, names), None, form
            return from_edges(model, names), None, form
        if (
            isinstance(data, dict)
            and data
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in data.values())
        ):
            form = "edge scores"
            scores = {str(k): float(v) for k, v in data.items()}
            chosen = [k for k, v in scores.items() if v > threshold]
            return from_edges(model, chosen), scores, form
    except CircuitError as e:
        raise CircuitError(f"{p} ({form}): {e}") from None
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise CircuitError(f"{p} ({form}): malformed circuit file ({type(e).__name__}: {e})") from None
    raise CircuitError(f"{p}: unrecognised circuit form (expected verify JSON, ACDC, auto-circuit or EAP-IG)")


def _looks_acdc(data: Any) -> bool:
    if isinstance(data, list) and data and all(isinstance(r, list) and len(r) == 5 for r in data):
        return True
    return isinstance(data, dict) and bool(data) and all("|" in str(k) for k in data)


def _acdc_dict(rows: Any) -> dict[tuple, Any]:
    def idx(x: Any) -> tuple:
        if x is None:
            return (None,)
        if isinstance(x, list):
            return tuple(x)
        if isinstance(x, str):
            return tuple(
                None if t.strip() in ("None", ":", "") else int(t)
                for t in x.strip("()[] ").split(",")
                if t.strip() != "" or x.strip("()[] ") == ""
            )
        return (x,)

    out: dict[tuple, Any] = {}
    if isinstance(rows, dict):
        for k, v in rows.items():
            child, ci, parent, pi = str(k).split("|")
            out[(child, idx(ci), parent, idx(pi))] = v
        return out
    for child, ci, parent, pi, present in rows:
        out[(child, idx(ci), parent, idx(pi))] = present
    return out


def _edge_name_form(names: list[str]) -> str:
    if not names:
        return "edges"
    if all("->" not in n for n in names):
        return "nodes"
    if any(re.search(r"Resid (Start|End)|(^|->)A\d+\.\d+|MLP \d+", n) for n in names):
        return "auto-circuit"
    if any(re.search(r"(^|->)(input|logits|a\d+\.h\d+|m\d+)(<|$)", n) for n in names):
        return "EAP-IG"
    return "edges"
