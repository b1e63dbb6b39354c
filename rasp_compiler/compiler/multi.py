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

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from rasp_compiler import rasp
from rasp_compiler.compiler import compiling
from rasp_compiler.compiler.graph import ProgramGraph, build_graph
from rasp_compiler.model.annotation import OutputColumns
from rasp_compiler.model.codec import Codec
from rasp_compiler.model.compiled import CompiledModel
from rasp_compiler.model.outputs import MultiOutputError
from rasp_compiler.model.values import sort_values

__all__ = [
    "MultiOutputError",
    "compile_programs",
]

_ROOT = "__multi_root_"


# ============================================================================================ compiling


def _multi_graph(roots: list[Any], options: Any) -> tuple[Any, list[str]]:
    """One ProgramGraph over several outputs; returns it and each root's op label."""
    import networkx as nx


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
            columns[name] = OutputColumns(start, start + len(vals), "categorical", tuple(vals))
            col_names += [f"{name}={v!r}" for v in vals]
        else:
            wu, bu = np.zeros((D, 1), np.float32), np.zeros(1, np.float32)
            wu[residual.index[residual.numerical_dir(label)], 0] = 1.0
            columns[name] = OutputColumns(start, start + 1, "numerical", None)
            col_names.append(f"{name}=<numerical>")
        start = columns[name].end
        w_u.append(wu)
        b_u.append(bu)
    weights = dict(out.weights)
    weights["W_U"] = np.ascontiguousarray(np.concatenate(w_u, axis=1))
    weights["b_U"] = np.ascontiguousarray(np.concatenate(b_u))
    c = out.codec
    codec = Codec(c.input_tokens, c.bos, c.pad, c.max_seq_len, "categorical", col_names)
    cfg = dataclasses.replace(out.config, d_vocab_out=start, output_encoding="categorical")
    ann = dataclasses.replace(
        out.annotation,
        outputs=tuple(dict.fromkeys(labels)),
        output_names=dict(zip(names, labels, strict=True)),
        output_columns=columns,
    )
    source = compiling._describe(graph)
    return CompiledModel(cfg, weights, codec, ann, source)
