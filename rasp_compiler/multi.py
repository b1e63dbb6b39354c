"""Several RASP programs compiled into one transformer: one residual stream, one output block each.

`compile_programs({"name": program, ...}, vocab, max_seq_len)` runs the compiler's stages on the
union of the programs' graphs (ops that are the same Python object are compiled once and shared),
then gives every output its own columns of `W_U`. The components serving the other outputs are
distractors for each output's ground truth: `verify.ground_truth(model, output=name)` is that
output's circuit, a strict subset of the model's components.

Annotation (a JSON dict): `output` (the first output's op label), `outputs` (op labels, as
docs/CONTRACTS.md section 6 says), `output_names` ({name: op label}) and `output_columns` ({name:
{start, end, encoding, values}}). `model.apply(x).decoded` / `model.decode` / `apply_batch` give
{name: values (BOS first)}, each output decoded over its own columns (`model.codec.decode` alone
would take one argmax over all columns, which has no meaning); `decode_outputs(model, logits)` does
the same without BOS, and `output_view(model, name)` gives a single-output
model with the same components (so every single-output tool - engine, verify, causal checks,
suite - works on it unchanged).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from rasp_compiler.model import Codec, CompiledModel, decode_block, decode_value, encode_value, sort_values

__all__ = [
    "MultiOutputError",
    "OutputBlock",
    "compile_programs",
    "decode_outputs",
    "output_blocks",
    "output_names",
    "output_view",
]

_ROOT = "__multi_root_"


class MultiOutputError(ValueError):
    """Bad programs mapping, or an output name the model lacks."""


@dataclasses.dataclass(frozen=True)
class OutputBlock:
    """One output's share of the unembedding: columns [start, end) of W_U."""

    name: str
    label: str  # the op label (residual directions and ground truth speak of it)
    start: int
    end: int
    encoding: str
    values: tuple[Any, ...] | None  # categorical: the value of each column


def output_blocks(model: CompiledModel) -> list[OutputBlock]:
    """The model's outputs; a single-output model has one block spanning every column."""
    ann = model.annotation_json()
    cols = ann.get("output_columns") if isinstance(ann, dict) else None
    if not cols:
        label = str(ann.get("output", "output")) if isinstance(ann, dict) else "output"
        vals = model.codec.output_values
        return [
            OutputBlock(
                label,
                label,
                0,
                model.config.d_vocab_out,
                model.config.output_encoding,
                None if vals is None else tuple(vals),
            )
        ]
    names = ann.get("output_names", {})
    out = []
    for name, c in cols.items():
        vals = c.get("values")
        out.append(
            OutputBlock(
                str(name),
                str(names.get(name, name)),
                int(c["start"]),
                int(c["end"]),
                str(c["encoding"]),
                None if vals is None else tuple(decode_value(v) for v in vals),
            )
        )
    return out


def output_names(model: CompiledModel) -> list[str]:
    return [b.name for b in output_blocks(model)]


def _block(model: CompiledModel, name: str) -> OutputBlock:
    for b in output_blocks(model):
        if name in (b.name, b.label):
            return b
    raise MultiOutputError(f"output {name!r} is not an output of the model (outputs: {output_names(model)})")


def decode_outputs(model: CompiledModel, logits: np.ndarray) -> dict[str, list[Any]]:
    """Logits `[T, d_vocab_out]` (BOS first) -> {output name: one value per input position (no BOS)}."""
    logits = np.asarray(logits)
    blocks = output_blocks(model)
    return {b.name: decode_block(logits[1:], b.start, b.end, b.encoding, b.values) for b in blocks}


def output_view(model: CompiledModel, name: str) -> CompiledModel:
    """A single-output model: the same weights with only `name`'s columns of W_U (same components)."""
    b = _block(model, name)
    ann = copy.deepcopy(model.annotation_json())
    if len(output_blocks(model)) == 1:
        return model
    for key in ("outputs", "output_names", "output_columns"):
        ann.pop(key, None)
    ann["output"] = b.label
    weights = dict(model.weights)
    weights["W_U"] = np.ascontiguousarray(model.weights["W_U"][:, b.start : b.end])
    weights["b_U"] = np.ascontiguousarray(model.weights["b_U"][b.start : b.end])
    c = model.codec
    codec = Codec(
        c.input_tokens, c.bos, c.pad, c.max_seq_len, b.encoding, None if b.values is None else list(b.values)
    )
    cfg = dataclasses.replace(model.config, d_vocab_out=b.end - b.start, output_encoding=b.encoding)
    return CompiledModel(cfg, weights, codec, ann, model.program_source)


# ============================================================================================ compiling


def _multi_graph(roots: list[Any], options: Any) -> tuple[Any, list[str]]:
    """One ProgramGraph over several outputs; returns it and each root's op label."""
    import networkx as nx

    from rasp_compiler import rasp
    from rasp_compiler.compiler.graph import ProgramGraph, build_graph

    top = roots[0]
    for i, r in enumerate(roots[1:]):
        top = rasp.SequenceMap(lambda a, b: None, top, r).named(f"{_ROOT}{i}")
    g = build_graph(top, options)
    keep = [lab for lab in g.order if not lab.startswith(_ROOT)]
    if len(roots) > 1 and len(keep) != len(g.order) - (len(roots) - 1):
        raise MultiOutputError(f"an op label starts with the reserved prefix {_ROOT!r}")
    by_obj = {id(g.nodes[lab].expr): lab for lab in keep}
    labels = [by_obj[id(r)] for r in roots]
    graph = nx.DiGraph(g.graph)
    graph.remove_nodes_from([lab for lab in g.order if lab.startswith(_ROOT)])
    nodes = {lab: g.nodes[lab] for lab in keep}
    return ProgramGraph(nodes=nodes, order=tuple(keep), output=labels[0], graph=graph), labels


def compile_programs(
    programs: Mapping[str, Any],
    vocab: Iterable[Any],
    max_seq_len: int,
    *,
    compiler_bos: Any = "BOS",
    compiler_pad: Any = None,
    mlp_exactness: float = 100,
    **kwargs: Any,
) -> CompiledModel:
    """Compile several programs into one model (shared residual stream; ops that are the same object
    are built once). Each output reads its own op's directions through its own W_U columns."""
    from rasp_compiler import compiling

    if not isinstance(programs, Mapping) or not programs:
        raise MultiOutputError("compile_programs expects a non-empty mapping {name: program}")
    names = [str(n) for n in programs]
    if len(set(names)) != len(names):
        raise MultiOutputError(f"output names collide: {names}")
    options = compiling.tracr_options(vocab, max_seq_len, compiler_bos, compiler_pad, mlp_exactness, **kwargs)
    roots = list(programs.values())
    graph, labels = _multi_graph(roots, options)
    compiled = compiling.compile_graph(graph, options)
    values, residual, out = compiled.values, compiled.residual, compiled.out

    D = out.config.d_model
    w_u: list[np.ndarray] = []
    b_u: list[np.ndarray] = []
    columns: dict[str, dict[str, Any]] = {}
    col_names: list[str] = []
    start = 0
    for name, label in zip(names, labels):
        node = graph.nodes[label]
        if node.encoding == "categorical":
            info = values[label]
            vals = sort_values(list(info.values) + ([None] if info.may_be_none else []))
            wu, bu = np.zeros((D, len(vals)), np.float32), np.zeros(len(vals), np.float32)
            for col, v in enumerate(vals):
                if v is None and info.may_be_none:
                    bu[col] = 0.5  # as the compiler does: wins only where no value direction is on
                else:
                    wu[residual.index[residual.dir_of(label, v)], col] = 1.0
            columns[name] = {
                "start": start,
                "end": start + len(vals),
                "encoding": "categorical",
                "values": [encode_value(v) for v in vals],
            }
            col_names += [f"{name}={v!r}" for v in vals]
        else:
            wu, bu = np.zeros((D, 1), np.float32), np.zeros(1, np.float32)
            wu[residual.index[residual.numerical_dir(label)], 0] = 1.0
            columns[name] = {"start": start, "end": start + 1, "encoding": "numerical", "values": None}
            col_names.append(f"{name}=<numerical>")
        start = columns[name]["end"]
        w_u.append(wu)
        b_u.append(bu)
    weights = dict(out.weights)
    weights["W_U"] = np.ascontiguousarray(np.concatenate(w_u, axis=1))
    weights["b_U"] = np.ascontiguousarray(np.concatenate(b_u))
    c = out.codec
    codec = Codec(c.input_tokens, c.bos, c.pad, c.max_seq_len, "categorical", col_names)
    cfg = dataclasses.replace(out.config, d_vocab_out=start, output_encoding="categorical")
    ann = out.annotation.to_json()
    ann["outputs"] = list(dict.fromkeys(labels))
    ann["output_names"] = dict(zip(names, labels))
    ann["output_columns"] = columns
    source = compiling._describe(graph)
    return CompiledModel(cfg, weights, codec, ann, source)
