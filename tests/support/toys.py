"""Hand-made CompiledModel-like toys for the verify tests, and checks that the toys are what they claim.

A toy is built from a spec of components: what each head / MLP op reads on each input and writes,
as residual labels. The weights put random nonzero values exactly there (zeros elsewhere) and the
annotation records the same spec, so the two derivations of the ground truth see one model two ways.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import numpy as np

from rasp_compiler.model.annotation import Annotation

LABELS = [
    "one",
    "tokens:a",
    "tokens:b",
    "indices:0",
    "indices:1",
    "indices:2",
    "agg:a",
    "agg:b",
    "dagg:0",
    "dagg:1",
    "m:x",
    "m:y",
    "dm:x",
    "agg2",
    "out:x",
    "out:y",
    "dm2:p",
]


@dataclasses.dataclass
class Toy:
    """Duck-types CompiledModel: `config`, `weights`, `annotation` (an `Annotation`)."""

    config: Any
    weights: dict[str, np.ndarray]
    annotation: Any


def toks(prefix: str) -> list[str]:
    return [lab for lab in LABELS if lab.split(":", 1)[0] == prefix]


# Two layers, two head slots per layer (L1.H1 is padding), MLPs with a circuit op and a distractor op.
TOY_HEADS = {  # (layer, head): (op, {input: labels}, writes)
    (0, 0): ("agg", {"q": toks("indices"), "k": toks("indices"), "v": toks("tokens")}, toks("agg")),
    (0, 1): ("dagg", {"q": ["one"], "k": toks("tokens"), "v": toks("indices")}, toks("dagg")),
    (1, 0): ("agg2", {"q": toks("m"), "k": toks("indices"), "v": ["one"]}, ["agg2"]),
}
TOY_MLPS = {  # layer: [(op, (start, end), reads, writes)]
    0: [("m", (0, 2), toks("agg"), toks("m")), ("dm", (2, 4), toks("indices"), toks("dm"))],
    1: [("out", (0, 2), ["agg2"] + toks("m"), toks("out")), ("dm2", (2, 3), toks("dagg"), toks("dm2"))],
}
TOY_OUTPUT = "out"

# The ground truth of the toy, counted by hand from the spec above.
TOY_TRUE_EDGES = {
    "pos_embed->L0.H0<q>": toks("indices"),
    "pos_embed->L0.H0<k>": toks("indices"),
    "embed->L0.H0<v>": toks("tokens"),
    "L0.H0->L0.MLP<in>": toks("agg"),
    "L0.MLP->L1.H0<q>": toks("m"),
    "pos_embed->L1.H0<k>": toks("indices"),
    "embed->L1.H0<v>": ["one"],
    "L1.H0->L1.MLP<in>": ["agg2"],
    "L0.MLP->L1.MLP<in>": toks("m"),
    "L1.MLP->output<in>": toks("out"),
}
TOY_TRUE_NODES = {"embed", "pos_embed", "L0.H0", "L0.MLP", "L1.H0", "L1.MLP"}


def build_toy(
    heads: dict = TOY_HEADS,
    mlps: dict = TOY_MLPS,
    output: str = TOY_OUTPUT,
    *,
    seed: int = 0,
    n_layers: int = 2,
    n_heads: int = 2,
    d_head: int = 3,
    d_mlp: int = 4,
    labels: list[str] = LABELS,
    annotate: bool = True,
) -> Toy:
    rng = np.random.default_rng(seed)
    d_model = len(labels)
    idx = {lab: i for i, lab in enumerate(labels)}

    def val(*shape: int) -> np.ndarray:
        return (rng.uniform(0.5, 1.5, size=shape) * rng.choice([-1.0, 1.0], size=shape)).astype(np.float32)

    vocab_labels = toks("tokens")
    d_vocab, n_ctx = 1 + len(vocab_labels), len(toks("indices"))
    w: dict[str, np.ndarray] = {
        "W_E": np.zeros((d_vocab, d_model), np.float32),
        "W_pos": np.zeros((n_ctx, d_model), np.float32),
    }
    w["W_E"][:, idx["one"]] = 1.0
    for t, lab in enumerate(vocab_labels):
        w["W_E"][t + 1, idx[lab]] = 1.0
    for p in range(n_ctx):
        w["W_pos"][p, idx[f"indices:{p}"]] = 1.0
    blocks: list[dict] = [
        {"op": "tokens", "component": "embed", "writes": vocab_labels},
        {"op": "one", "component": "embed", "writes": ["one"]},
        {"op": "indices", "component": "pos_embed", "writes": toks("indices")},
    ]
    for layer in range(n_layers):
        a = f"blocks.{layer}.attn."
        for m in "QKV":
            w[a + f"W_{m}"] = np.zeros((n_heads, d_model, d_head), np.float32)
            w[a + f"b_{m}"] = np.zeros((n_heads, d_head), np.float32)
        w[a + "W_O"] = np.zeros((n_heads, d_head, d_model), np.float32)
        w[a + "b_O"] = np.zeros(d_model, np.float32)
        mp = f"blocks.{layer}.mlp."
        w[mp + "W_in"] = np.zeros((d_model, d_mlp), np.float32)
        w[mp + "b_in"] = np.zeros(d_mlp, np.float32)
        w[mp + "W_out"] = np.zeros((d_mlp, d_model), np.float32)
        w[mp + "b_out"] = np.zeros(d_model, np.float32)
    for (layer, h), (op, reads, writes) in heads.items():
        a = f"blocks.{layer}.attn."
        for inp, labs in reads.items():
            rows = [idx[lab] for lab in labs]
            w[a + f"W_{inp.upper()}"][h, rows, :] = val(len(rows), d_head)
        cols = [idx[lab] for lab in writes]
        w[a + "W_O"][h][:, cols] = val(d_head, len(cols))
        blocks.append(
            {
                "op": op,
                "component": "attn",
                "layer": layer,
                "head": h,
                "selectors": [f"sel_{op}"],
                "reads": {k: list(v) for k, v in reads.items()},
                "writes": list(writes),
            }
        )
    for layer, ops in mlps.items():
        mp = f"blocks.{layer}.mlp."
        for op, (start, end), reads, writes in ops:
            rows = [idx[lab] for lab in reads]
            cols = [idx[lab] for lab in writes]
            w[mp + "W_in"][np.ix_(rows, range(start, end))] = val(len(rows), end - start)
            w[mp + "W_out"][np.ix_(range(start, end), cols)] = val(end - start, len(cols))
            blocks.append(
                {
                    "op": op,
                    "component": "mlp",
                    "layer": layer,
                    "neurons": [start, end],
                    "reads": {"in": list(reads)},
                    "writes": list(writes),
                }
            )
    out_labels = toks(output) or [output]
    w["W_U"] = np.zeros((d_model, len(out_labels)), np.float32)
    for j, lab in enumerate(out_labels):
        w["W_U"][idx[lab], j] = 1.0
    w["b_U"] = np.zeros(len(out_labels), np.float32)
    ops_json: dict[str, dict] = {
        "tokens": {"kind": "tokens", "encoding": "categorical", "children": [], "directions": vocab_labels},
        "indices": {
            "kind": "indices",
            "encoding": "categorical",
            "children": [],
            "directions": toks("indices"),
        },
        "one": {"kind": "one", "encoding": None, "children": [], "directions": ["one"]},
    }
    for op, _, writes in heads.values():
        ops_json[op] = {
            "kind": "aggregate",
            "encoding": "categorical",
            "children": [],
            "directions": list(writes),
        }
    for ops in mlps.values():
        for op, _, _, writes in ops:
            ops_json[op] = {
                "kind": "map",
                "encoding": "categorical",
                "children": [],
                "directions": list(writes),
            }
    config = SimpleNamespace(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        n_ctx=n_ctx,
        d_vocab=d_vocab,
        d_vocab_out=len(out_labels),
        max_seq_len=n_ctx - 1,
        heads_per_layer=[2, 1],
        mlp_width_per_layer=[4, 3],
        output_encoding="categorical",
        residual_labels=list(labels),
        act_fn="relu",
        pad_token_id=None,
        bos_token_id=0,
    )
    for spec in ops_json.values():
        spec["values"] = None  # value sets play no part in these checks
    data = {"version": 1, "output": output, "ops": ops_json, "blocks": blocks}
    return Toy(config, w, Annotation.from_json(data) if annotate else None)


def edit_annotation(toy: Toy, change: Any) -> Toy:
    """A copy of `toy` whose annotation JSON went through `change(data)` (which edits it in place)."""
    data = toy.annotation.to_json()
    change(data)
    return Toy(toy.config, dict(toy.weights), Annotation.from_json(data))
