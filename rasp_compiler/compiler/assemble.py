"""Stage 6: blocks + layout -> TransformerLens-named float32 weights, ModelConfig, Codec, Annotation."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from rasp_compiler.compiler.blocks import Blocks
from rasp_compiler.compiler.graph import ProgramGraph
from rasp_compiler.compiler.layout import Layout
from rasp_compiler.compiler.options import CompilerOptions
from rasp_compiler.compiler.spaces import ONE, Residual
from rasp_compiler.compiler.values import ValueSets
from rasp_compiler.model.annotation import Annotation, BlockAnnotation, OpAnnotation
from rasp_compiler.model.codec import Codec
from rasp_compiler.model.config import ModelConfig


def _zeros(shape: Any) -> np.ndarray:
    """Weights are built in float32 directly (large models: no float64 copy)."""
    return np.zeros(shape, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Assembled:
    config: ModelConfig
    weights: dict[str, np.ndarray]
    codec: Codec
    annotation: Annotation


def assemble(
    graph: ProgramGraph,
    values: ValueSets,
    res: Residual,
    blocks: Blocks,
    layout: Layout,
    options: CompilerOptions,
    assumptions: Mapping[str, str] | None = None,
) -> Assembled:
    """Place every block's matrices into the model's weights and record each placement (and each op's
    declared, unproven precondition from `assumptions`)."""
    D = len(res.labels)
    idx = res.index
    out_label = graph.output
    out_node = graph.nodes[out_label]
    if out_node.encoding == "categorical":
        out_vals = list(values[out_label].values)
        if values[out_label].may_be_none:
            out_vals.append(None)
        codec = Codec.from_vocab(
            options.vocab,
            options.max_seq_len,
            bos=options.bos,
            pad=options.pad,
            output_encoding="categorical",
            output_values=out_vals,
        )
    else:
        codec = Codec.from_vocab(
            options.vocab, options.max_seq_len, bos=options.bos, pad=options.pad, output_encoding="numerical"
        )
    L = layout.n_layers
    heads_per_layer = [len(h) for h in layout.heads]
    mlp_width = [sum(blocks.by_op[o].mlp.width for o in layout.mlps[layer]) for layer in range(L)]
    n_heads = max(heads_per_layer, default=0)
    d_head = max(
        (max(blocks.by_op[o].head.d_qk, blocks.by_op[o].head.d_ov) for hs in layout.heads for o in hs),
        default=0,
    )
    d_mlp = max(mlp_width, default=0)
    d_vocab = codec.d_vocab
    d_out = 1 if codec.output_values is None else len(codec.output_values)
    n_ctx = options.max_seq_len + 1

    W: dict[str, np.ndarray] = {"W_E": _zeros((d_vocab, D)), "W_pos": _zeros((n_ctx, D))}
    ann_blocks: list[BlockAnnotation] = []

    # embeddings: `one` on every real token and BOS; BOS direction on BOS
    W["W_E"][codec.bos_id, idx[ONE]] = 1.0
    W["W_E"][codec.bos_id, idx[res.bos_dir]] = 1.0
    for tok in codec.vocab:
        W["W_E"][codec.token_id(tok), idx[ONE]] = 1.0
    ann_blocks.append(BlockAnnotation(op=ONE, component="embed", writes=(ONE, res.bos_dir)))
    for label in _op_order(graph):
        ob = blocks.by_op.get(label)
        if ob is None:
            continue
        for eb in ob.embeds:
            mat = W["W_E"] if eb.component == "embed" else W["W_pos"]
            for key, row in eb.rows.items():
                r = codec.token_id(key) if eb.component == "embed" else key
                for lab, v in row.items():
                    mat[r, idx[lab]] += v
            ann_blocks.append(
                BlockAnnotation(op=eb.ops[0], ops=eb.ops, component=eb.component, writes=eb.writes)
            )

    for layer in range(L):
        a = f"blocks.{layer}.attn."
        m = f"blocks.{layer}.mlp."
        WQ = _zeros((n_heads, D, d_head))
        WK = _zeros((n_heads, D, d_head))
        WV = _zeros((n_heads, D, d_head))
        WO = _zeros((n_heads, d_head, D))
        for h, op in enumerate(layout.heads[layer]):
            hb = blocks.by_op[op].head
            WQ[h][np.ix_([idx[r] for r in hb.q_reads], range(hb.d_qk))] = hb.W_Q
            WK[h][np.ix_([idx[r] for r in hb.k_reads], range(hb.d_qk))] = hb.W_K
            WV[h][np.ix_([idx[r] for r in hb.v_reads], range(hb.d_ov))] = hb.W_V
            WO[h][np.ix_(range(hb.d_ov), [idx[w] for w in hb.writes])] = hb.W_O
            ann_blocks.append(
                BlockAnnotation(
                    op=op,
                    ops=hb.ops,
                    component="attn",
                    layer=layer,
                    head=h,
                    selectors=hb.selectors,
                    writes=hb.writes,
                    reads={"q": hb.q_reads, "k": hb.k_reads, "v": hb.v_reads},
                    qk_encoding=hb.qk_encoding,
                )
            )
        W[a + "W_Q"], W[a + "W_K"], W[a + "W_V"], W[a + "W_O"] = WQ, WK, WV, WO
        for name in ("b_Q", "b_K", "b_V"):
            W[a + name] = _zeros((n_heads, d_head))
        W[a + "b_O"] = _zeros(D)
        Win = _zeros((D, d_mlp))
        bin_ = _zeros(d_mlp)
        Wout = _zeros((d_mlp, D))
        start = 0
        for op in layout.mlps[layer]:
            mb = blocks.by_op[op].mlp
            cols = range(start, start + mb.width)
            Win[np.ix_([idx[r] for r in mb.reads], cols)] = mb.W_in
            bin_[start : start + mb.width] = mb.b_in
            Wout[np.ix_(cols, [idx[w] for w in mb.writes])] = mb.W_out
            ann_blocks.append(
                BlockAnnotation(
                    op=op,
                    ops=mb.ops,
                    component="mlp",
                    layer=layer,
                    neurons=(start, start + mb.width),
                    reads={"in": mb.reads},
                    writes=mb.writes,
                )
            )
            start += mb.width
        W[m + "W_in"], W[m + "b_in"], W[m + "W_out"], W[m + "b_out"] = Win, bin_, Wout, _zeros(D)

    WU = _zeros((D, d_out))
    bU = _zeros(d_out)
    if codec.output_values is None:
        WU[idx[res.numerical_dir(out_label)], 0] = 1.0
    else:
        for col, v in enumerate(codec.output_values):
            if v is None and values[out_label].may_be_none:
                bU[col] = 0.5  # wins only where no value direction is on (nothing selected)
            else:
                WU[idx[res.dir_of(out_label, v)], col] = 1.0
    W["W_U"], W["b_U"] = WU, bU
    weights = {k: np.ascontiguousarray(v) for k, v in W.items()}

    config = ModelConfig(
        n_layers=L,
        d_model=D,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        n_ctx=n_ctx,
        d_vocab=d_vocab,
        d_vocab_out=d_out,
        max_seq_len=options.max_seq_len,
        heads_per_layer=heads_per_layer,
        mlp_width_per_layer=mlp_width,
        output_encoding=out_node.encoding,
        residual_labels=list(res.labels),
        pad_token_id=codec.pad_id,
        bos_token_id=codec.bos_id,
        causal=options.causal,
    )
    ops = _op_annotations(graph, values, res, assumptions or {})
    return Assembled(config, weights, codec, Annotation(out_label, ops, tuple(ann_blocks)))


def _op_annotations(
    graph: ProgramGraph, values: ValueSets, res: Residual, assumptions: Mapping[str, str]
) -> dict[str, OpAnnotation]:
    ops: dict[str, OpAnnotation] = {}
    for label in _op_order(graph):
        node = graph.nodes.get(label)
        if node is None:
            if label in res.sop_dirs:
                vals = tuple(res.value_dirs[label].keys())
                ops[label] = OpAnnotation(
                    label, "categorical", (), res.sop_dirs[label], tuple(k[1] for k in vals)
                )
            continue
        vi = values.info.get(label)
        ops[label] = OpAnnotation(
            kind=node.kind,
            encoding=node.encoding,
            children=node.children,
            directions=res.sop_dirs.get(label, ()),
            values=None if vi is None or vi.values is None else tuple(vi.values),
            assumption=assumptions.get(label),
        )
    return ops


def _op_order(graph: ProgramGraph) -> list[str]:
    return ["tokens", "indices"] + [x for x in graph.order if x not in ("tokens", "indices")]


__all__ = ["Assembled", "assemble"]
