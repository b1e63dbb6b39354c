"""Helpers for the compiler tests: input enumeration, the differential check, a tracr bridge.

The oracle is always `rasp.evaluate`; the model runs through the PyTorch reference module.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from rasp_compiler import rasp
from rasp_compiler.model import CompiledModel, sort_values

NUM_TOL = 1e-4  # absolute tolerance on numerical outputs


def inputs_for(
    vocab: Iterable[Any],
    max_seq_len: int,
    *,
    distinct: bool = False,
    limit: int = 20_000,
    n_random: int = 2_000,
    seed: int = 0,
) -> list[list[Any]]:
    """Every input of length 1..max_seq_len when there are at most `limit`, else `n_random` random ones."""
    vocab = sort_values(vocab)
    total = sum(len(vocab) ** n for n in range(1, max_seq_len + 1))
    if total <= limit:
        out = [list(x) for n in range(1, max_seq_len + 1) for x in itertools.product(vocab, repeat=n)]
    else:
        rng = random.Random(seed)
        out = []
        for _ in range(n_random):
            n = rng.randint(1, max_seq_len)
            out.append([rng.choice(vocab) for _ in range(n)])
    if distinct:
        out = [x for x in out if len(set(x)) == len(x)]
    return out


def run_model(
    model: CompiledModel, inputs: Sequence[Sequence[Any]], use_torch: bool = True
) -> list[list[Any]]:
    """Decoded outputs (BOS position dropped) for many inputs, batched by length."""
    by_len: dict[int, list[int]] = {}
    for i, x in enumerate(inputs):
        by_len.setdefault(len(x), []).append(i)
    results: list[Any] = [None] * len(inputs)
    module = model.to_torch() if use_torch else None
    for idx in by_len.values():
        ids = np.array(
            [model.encode(["BOS" if model.codec.bos == "BOS" else model.codec.bos, *inputs[i]]) for i in idx],
            dtype=np.int64,
        )
        if module is not None:
            import torch

            with torch.no_grad():
                out = module(torch.from_numpy(ids)).numpy()
        else:
            out = model.forward_numpy(ids)
        for row, i in enumerate(idx):
            results[i] = model.decode(out[row])[1:]
    return results


def same_output(want: Sequence[Any], got: Sequence[Any], numerical: bool) -> bool:
    if len(want) != len(got):
        return False
    for w, g in zip(want, got):
        if numerical:
            if w is None or g is None:
                if not (w is None and g is None):
                    return False
            elif abs(float(w) - float(g)) > NUM_TOL:
                return False
        elif (w is None) != (g is None) or w != g:
            return False
    return True


def check_model(
    program: Any, model: CompiledModel, inputs: Sequence[Sequence[Any]], use_torch: bool = True
) -> tuple[int, list[tuple[list[Any], Any, Any]]]:
    """(number of valid inputs checked, mismatches) of model vs rasp.evaluate."""
    valid, wants = [], []
    for x in inputs:
        try:
            want = rasp.evaluate(program, list(x))
        except Exception:  # noqa: BLE001 - inputs on which the program itself is undefined are not checked
            continue
        if len(want) != len(x):  # e.g. a ConstantSelector of another length: undefined on this input
            continue
        wants.append(want)
        valid.append(list(x))
    gots = run_model(model, valid, use_torch) if valid else []
    numerical = model.config.output_encoding == "numerical"
    bad = [(x, w, g) for x, w, g in zip(valid, wants, gots) if not same_output(w, g, numerical)]
    return len(valid), bad


# ------------------------------------------------------------------------------------------ tracr bridge


def to_tracr(program: Any) -> Any:
    """Rebuild a program of our `rasp` with tracr's `rasp` (same functions, predicates, labels, encodings)."""
    from tracr.rasp import rasp as trasp

    from rasp_compiler.compiler.graph import children_of, encoding_of, op_kind

    memo: dict[int, Any] = {}

    def conv(e: Any) -> Any:
        if id(e) in memo:
            return memo[id(e)]
        kind = op_kind(e)
        kids = [conv(c) for c in children_of(e, kind)]
        if kind == "tokens":
            out = trasp.tokens
        elif kind == "indices":
            out = trasp.indices
        elif kind == "map":
            out = trasp.Map(e.f, kids[0], simplify=False)
        elif kind == "linear_sequence_map":
            out = trasp.LinearSequenceMap(kids[0], kids[1], e.fst_fac, e.snd_fac)
        elif kind == "sequence_map":
            out = trasp.SequenceMap(e.f, kids[0], kids[1])
        elif kind == "full":
            out = trasp.Full(e.fill)
        elif kind == "constant_sop":
            out = trasp.ConstantSOp(e.value)
        elif kind == "aggregate":
            out = trasp.Aggregate(kids[0], kids[1], default=e.default)
        elif kind == "selector_width":
            out = trasp.SelectorWidth(kids[0])
        elif kind == "select":
            pred = e.predicate
            tp = getattr(trasp.Comparison, getattr(pred, "name", ""), None)
            out = trasp.Select(kids[0], kids[1], tp if tp is not None else pred)
        elif kind == "selector_and":
            out = trasp.SelectorAnd(kids[0], kids[1])
        elif kind == "selector_or":
            out = trasp.SelectorOr(kids[0], kids[1])
        elif kind == "selector_not":
            out = trasp.SelectorNot(kids[0])
        elif kind == "constant_selector":
            out = trasp.ConstantSelector(e.value)
        else:  # pragma: no cover
            raise NotImplementedError(kind)
        if kind not in ("tokens", "indices"):
            out = out.named(e.label)
            enc = encoding_of(e)
            if enc == "numerical":
                out = trasp.numerical(out)
            elif enc == "categorical":
                out = trasp.categorical(out)
        memo[id(e)] = out
        return out

    return conv(program)


def tracr_sizes(program: Any, vocab: Iterable[Any], max_seq_len: int) -> tuple[int, int]:
    """(layers, d_model) of tracr's model for a program of our rasp, from tracr's craft model (no JAX)."""
    from tracr.compiler import (
        basis_inference,
        craft_graph_to_model,
        expr_to_craft_graph,
        nodes,
        rasp_to_graph,
    )
    from tracr.craft import bases, transformers

    tp = to_tracr(program)
    extracted = rasp_to_graph.extract_rasp_graph(tp)
    graph, sources, sink = extracted.graph, extracted.sources, extracted.sink
    basis_inference.infer_bases(graph, sink, set(vocab), max_seq_len)
    expr_to_craft_graph.add_craft_components_to_rasp_graph(
        graph, bos_dir=bases.BasisDirection("tokens", "BOS"), mlp_exactness=100
    )
    craft = craft_graph_to_model.craft_graph_to_model(graph, sources)
    kinds = ["mlp" if isinstance(b, transformers.MLP) else "attn" for b in craft.blocks]
    slot = -1
    for k in kinds:  # tracr's placement: the next half-layer of the right type
        slot += 1
        if (k == "attn") != (slot % 2 == 0):
            slot += 1
    layers = slot // 2 + 1 if kinds else 0
    tokens = bases.VectorSpaceWithBasis.from_values("tokens", set(vocab) | {"BOS", "compiler_pad"})
    indices = bases.VectorSpaceWithBasis.from_values("indices", range(max_seq_len))
    out = bases.VectorSpaceWithBasis(sink[nodes.OUTPUT_BASIS])
    residual = bases.join_vector_spaces(craft.residual_space, tokens, indices, out)
    return layers, residual.num_dims
