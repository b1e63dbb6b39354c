"""Harder ground truth from a compiled model: rotated, noisy and compressed residual streams.

A compiled model is too easy a target for circuit discovery: every component belongs to the
circuit and every residual direction is a basis vector with a name. These functions each return a
NEW `CompiledModel` computing the same function (exactly, or with a measured accuracy for
compression) whose ground truth is harder to read off the weights:

* `rotate(model, seed)`: a seeded random orthogonal change of the residual basis applied to every
  residual-facing weight; decoded outputs and the circuit (nodes, edges) are unchanged, the
  subspaces rotate with it.
* `add_noise(model, heads=, neurons=, weight_noise=, seed=, cancel_heads=, cancel_neurons=)`:
  distractor heads and MLP neurons that read the residual stream and write only into fresh
  directions `noise:<k>` that nothing reads, cancelling pairs (each alone changes the output, the
  pair adds zero), and relative weight noise on the nonzero weights at a stated level, kept only
  where every output stays exact on the checked inputs.
* `compress(model, d_model, method="random" | "pca" | "learned", seed=)`: residual width below the
  number of labelled directions, through a random, principal-component or learned (torch)
  projection; the accuracy on the dataset is measured and stored, and the truth is marked approximate.
* `subspace_projection(model, labels)`: a variable's subspace as a `[d_model, d_model]` projection in
  the model's coordinates (for subspace patches once labels no longer name basis vectors).

The model card: the annotation becomes a JSON dict (docs/CONTRACTS.md section 3) with a "variant"
section: `steps` (one record per transformation, in order), `labels` (the labelled directions the
annotation speaks of), `basis` (`[len(labels), d_model]`: each labelled direction in the model's
residual coordinates; absent when it is the identity), `approximate` and `accuracy`. After a
rotation or compression `config.residual_labels` names plain basis vectors (`basis:<i>`,
`compressed:<i>`), so nothing mistakes a basis vector for a variable.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from rasp_compiler.model.annotation import Annotation
from rasp_compiler.model.compiled import CompiledModel
from rasp_compiler.model.config import residual_side
from rasp_compiler.model.outputs import OUTPUT_ATOL, decode_outputs, output_blocks, positions_equal

__all__ = [
    "CompiledModel",
    "VariantError",
    "add_noise",
    "all_inputs",
    "compress",
    "labelled_basis",
    "rotate",
    "subspace_projection",
    "variant_card",
    "outputs_match",
]

NUM_TOL = OUTPUT_ATOL
COMPRESS_METHODS = (
    "random",
    "pca",
    "learned",
)  # numerical outputs: a variant is exact when within this of the original


class VariantError(ValueError):
    """A variant cannot be made as asked (bad argument, or it would not keep the outputs exact)."""


# ============================================================================================ the card


def variant_card(model: CompiledModel) -> dict[str, Any] | None:
    """The model's "variant" record as JSON data (None for a model straight from the compiler)."""
    ann = model.annotation
    return None if ann is None or ann.variant is None else ann.variant.to_json()


def labelled_basis(model: CompiledModel) -> tuple[list[str], np.ndarray]:
    """The labelled directions and their vectors in the model's residual coordinates.

    Returns `(labels, R)` with `R` of shape `[len(labels), d_model]`; `R` is the identity for a model
    whose residual basis vectors are its labelled directions.
    """
    card = variant_card(model)
    if card is None or card.get("basis") is None:
        labels = (
            list(card["labels"])
            if card is not None and card.get("labels")
            else list(model.config.residual_labels)
        )
        return labels, np.eye(model.config.d_model)
    basis = np.asarray(card["basis"], dtype=np.float64)
    labels = [str(x) for x in card["labels"]]
    if basis.shape != (len(labels), model.config.d_model):
        raise VariantError(
            f"variant basis has shape {basis.shape}, expected ({len(labels)}, {model.config.d_model})"
        )
    return labels, basis


def subspace_projection(model: CompiledModel, labels: Sequence[str]) -> np.ndarray:
    """The `[d_model, d_model]` orthogonal projection onto the span of labelled directions `labels`,
    in the model's residual coordinates (what a subspace patch takes once labels no longer name basis
    vectors). Exact for rotated models; for compressed ones the projection onto the span of the
    compressed directions."""
    all_labels, basis = labelled_basis(model)
    index = {lab: i for i, lab in enumerate(all_labels)}
    unknown = [lab for lab in labels if lab not in index]
    if unknown:
        raise VariantError(f"labels {unknown[:5]} are not labelled directions of the model")
    vecs = basis[[index[lab] for lab in labels]]
    if vecs.size == 0:
        return np.zeros((model.config.d_model, model.config.d_model))
    _, s, vt = np.linalg.svd(vecs, full_matrices=False)
    span = vt[s > 1e-9 * s[0]]
    return span.T @ span


def _new_annotation(
    model: CompiledModel,
    step: dict[str, Any],
    labels: list[str],
    basis: np.ndarray | None,
    *,
    approximate: bool | None = None,
    accuracy: float | None = None,
) -> Annotation:
    ann = model.annotation_json()
    if ann is None:
        raise VariantError("the model has no annotation (a variant records itself there)")
    old = ann.get("variant") or {"steps": [], "approximate": False, "accuracy": None}
    card: dict[str, Any] = {
        "steps": [*old.get("steps", []), step],
        "labels": list(labels),
        "approximate": bool(old.get("approximate", False)),
        "accuracy": old.get("accuracy"),
    }
    if basis is not None:
        card["basis"] = np.asarray(basis, dtype=np.float64).tolist()
    if approximate:
        card["approximate"] = True
    if accuracy is not None:
        prev = card["accuracy"]
        card["accuracy"] = float(accuracy) if prev is None else min(float(prev), float(accuracy))
    ann["variant"] = card
    return Annotation.from_json(ann)


# ============================================================================================ weights


def _map_residual(model: CompiledModel, write: np.ndarray, read: np.ndarray) -> dict[str, np.ndarray]:
    """Every residual-facing weight mapped to new residual coordinates.

    Writers (embeddings, W_O, b_O, W_out, b_out) are right-multiplied by `write` [D, d]; readers
    (W_Q, W_K, W_V, W_in, W_U) left-multiplied by `read` [d, D]. Computed in float64, stored float32.
    """
    out: dict[str, np.ndarray] = {}
    for name, w in model.weights.items():
        w64 = np.asarray(w, dtype=np.float64)
        if residual_side(name) == "write":
            new = w64 @ write
        elif residual_side(name) == "read":
            new = read @ w64
        else:
            new = w64
        out[name] = np.ascontiguousarray(new, dtype=np.float32)
    return out


def random_orthogonal(n: int, seed: int) -> np.ndarray:
    """A Haar-random orthogonal matrix (QR of a Gaussian with the signs fixed), deterministic by seed."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))[None, :]


def _replace(
    model: CompiledModel, weights: dict[str, np.ndarray], annotation: Any, **config: Any
) -> CompiledModel:
    cfg = dataclasses.replace(model.config, **config) if config else model.config
    return CompiledModel(cfg, weights, model.codec, annotation, model.program_source)


# ============================================================================================ checks


def all_inputs(model: CompiledModel, max_inputs: int = 4000, seed: int = 0) -> list[list[Any]]:
    """Every input `[BOS, x1..xn]` (n = 1..max_seq_len) when there are at most `max_inputs`, else a
    seeded uniform sample of `max_inputs` (lengths weighted by how many inputs they have, at least one
    each)."""
    vocab, n, bos = model.codec.vocab, model.config.max_seq_len, model.codec.bos
    total = sum(len(vocab) ** k for k in range(1, n + 1))
    if total <= max_inputs:
        return [[bos, *xs] for k in range(1, n + 1) for xs in itertools.product(vocab, repeat=k)]
    rng = np.random.default_rng(seed)
    out = [[bos, *[vocab[i] for i in rng.integers(len(vocab), size=k)]] for k in range(1, n + 1)]
    weights = np.array([float(len(vocab)) ** k for k in range(1, n + 1)])
    lengths = rng.choice(np.arange(1, n + 1), size=max_inputs - len(out), p=weights / weights.sum())
    out += [[bos, *[vocab[i] for i in rng.integers(len(vocab), size=int(k))]] for k in lengths]
    return out


def _by_length(
    model: CompiledModel, inputs: Sequence[Sequence[Any]]
) -> dict[int, tuple[list[int], np.ndarray]]:
    groups: dict[int, list[int]] = {}
    enc = [model.encode(x) for x in inputs]
    for i, ids in enumerate(enc):
        groups.setdefault(len(ids), []).append(i)
    return {t: (idx, np.array([enc[i] for i in idx], dtype=np.int64)) for t, idx in groups.items()}


def _decoded(model: CompiledModel, inputs: Sequence[Sequence[Any]]) -> list[dict[str, list[Any]]]:
    """Per input, per output name: the decoded values (BOS position dropped)."""
    res: list[dict[str, list[Any]] | None] = [None] * len(inputs)
    for _, (idx, ids) in _by_length(model, inputs).items():
        out = model.forward_numpy(ids)
        for row, i in enumerate(idx):
            res[i] = decode_outputs(model, out[row])
    return res  # type: ignore[return-value]


def outputs_match(
    reference: CompiledModel, model: CompiledModel, inputs: Sequence[Sequence[Any]], tol: float = NUM_TOL
) -> tuple[float, float]:
    """(position accuracy, sequence accuracy) of `model`'s decoded outputs against `reference`'s,
    over every output of the model (multi-output models: each output counted)."""
    return _agree(_decoded(reference, inputs), _decoded(model, inputs), _numerical(reference), tol)


def _numerical(model: CompiledModel) -> dict[str, bool]:
    """Per output name, whether it is numerical (compared within tolerance) or categorical (exactly)."""
    return {b.name: b.encoding == "numerical" for b in output_blocks(model)}


def _agree(
    ref: list[dict[str, list[Any]]], got: list[dict[str, list[Any]]], numerical: dict[str, bool], tol: float
) -> tuple[float, float]:
    pos_ok = pos_all = seq_ok = seq_all = 0
    for r, g in zip(ref, got):
        for name, vals in r.items():
            flags = positions_equal(vals, g[name], numerical[name], atol=tol)
            pos_ok += sum(flags)
            pos_all += len(flags)
            seq_ok += all(flags)
            seq_all += 1
    return pos_ok / max(pos_all, 1), seq_ok / max(seq_all, 1)


# ============================================================================================ rotation


def rotate(
    model: CompiledModel,
    seed: int = 0,
    *,
    inputs: Sequence[Sequence[Any]] | None = None,
    check: bool = True,
    tol: float = NUM_TOL,
) -> CompiledModel:
    """The same function in a seeded random orthogonal residual basis (`x' = x @ Q`).

    Writers get `W @ Q`, readers `Q.T @ W`; the card stores `basis` = old basis @ Q, so each labelled
    direction (and with it every subspace of the ground truth) is known in the new coordinates.
    With `check`, the decoded outputs are compared with the original's on `inputs` (default
    `all_inputs(model)`): float32 rounding of the rotated weights must not change any of them.
    """
    labels, basis = labelled_basis(model)
    q = random_orthogonal(model.config.d_model, seed)
    weights = _map_residual(model, q, q.T)
    step: dict[str, Any] = {"kind": "rotate", "seed": int(seed)}
    names = [f"basis:{i}" for i in range(model.config.d_model)]
    rotated = _replace(model, weights, model.annotation, residual_labels=names)
    if check:
        data = list(inputs) if inputs is not None else all_inputs(model)
        acc = outputs_match(model, rotated, data, tol)
        if acc[1] != 1.0:
            raise VariantError(
                f"rotation (seed {seed}) changes outputs on {100 * (1 - acc[1]):.2f}% of the checked inputs "
                "(float32 rounding against tight margins); try another seed"
            )
        step["checked_inputs"] = len(data)
    ann = _new_annotation(model, step, labels, basis @ q)
    return _replace(model, weights, ann, residual_labels=names)


# ============================================================================================ noise


def _pad(w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float32)
    out[tuple(slice(0, s) for s in w.shape)] = w
    return out


def add_noise(
    model: CompiledModel,
    heads: int = 0,
    neurons: int = 0,
    weight_noise: float = 0.0,
    seed: int = 0,
    *,
    cancel_heads: int = 0,
    cancel_neurons: int = 0,
    inputs: Sequence[Sequence[Any]] | None = None,
    tol: float = NUM_TOL,
    max_halvings: int = 8,
) -> CompiledModel:
    """Distractors and weight noise, keeping every output exact.

    * `heads` extra heads and `neurons` extra MLP neurons, spread over the layers, each reading the
      existing residual stream through random weights and writing only into its own fresh direction
      `noise:<k>` (one per head, one per layer's neuron group), which no reader reads.
    * `cancel_heads` / `cancel_neurons` cancelling pairs: two heads (or neurons) of one layer with the
      same random read weights whose writes into the existing residual directions are `M` and `-M`:
      each alone changes what later components read, the pair adds zero (up to float rounding). The
      annotation's truth excludes them (blocks with no `writes`, the directions under
      `cancelled_writes`); the weight-derived truth cannot see a cancellation and includes them.
    * relative noise `w * (1 + weight_noise * N(0, 1))` on every nonzero weight (zeros stay zero, so the
      weights' read/write structure is unchanged), one component group at a time (embeddings, each
      layer's attention, each MLP, unembedding); where it breaks an output on `inputs` (default
      `all_inputs(model)`) that group's level is halved, at most `max_halvings` times, after which the
      group stays noise-free.

    The card records the requested weight-noise level, the level applied per group, and every
    distractor component.
    """
    counts = {
        "heads": heads,
        "neurons": neurons,
        "cancel_heads": cancel_heads,
        "cancel_neurons": cancel_neurons,
    }
    if any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in counts.values()
    ) or not (weight_noise >= 0):
        raise VariantError(
            f"distractor counts must be ints >= 0 and weight_noise >= 0, got {counts}, "
            f"weight_noise={weight_noise!r}"
        )
    cfg = model.config
    L = cfg.n_layers
    if (heads or neurons or cancel_heads or cancel_neurons) and L == 0:
        raise VariantError("the model has no layers to put distractor heads or neurons in")
    rng = np.random.default_rng(seed)
    labels, basis = labelled_basis(model)
    d_old = cfg.d_model

    def spread(n: int) -> list[int]:
        return [int(x) for x in rng.permutation(np.arange(n) % L)] if n else []

    # per layer: the new heads, each ("fresh", k) or ("cancel", pair, sign); the new neuron groups likewise
    new_heads: list[list[tuple]] = [[] for _ in range(L)]
    new_neurons: list[list[tuple]] = [[] for _ in range(L)]
    n_fresh = 0
    for layer in spread(heads):
        new_heads[layer].append(("fresh", n_fresh))
        n_fresh += 1
    fresh_neurons = spread(neurons)
    for layer in range(L):
        if fresh_neurons.count(layer):
            new_neurons[layer].append(("fresh", n_fresh, fresh_neurons.count(layer)))
            n_fresh += 1
    for p, layer in enumerate(spread(cancel_heads)):
        new_heads[layer] += [("cancel", p, 1.0), ("cancel", p, -1.0)]
    for p, layer in enumerate(spread(cancel_neurons)):
        new_neurons[layer].append(("cancel", p))
    first = sum(1 for lab in labels if lab.startswith("noise:"))
    noise_labels = [f"noise:{first + i}" for i in range(n_fresh)]
    n_noise = n_fresh
    D = d_old + n_noise
    extra_heads = [len(h) for h in new_heads]
    extra_neurons = [sum(g[2] if g[0] == "fresh" else 2 for g in groups) for groups in new_neurons]
    n_heads = max([cfg.heads_per_layer[layer] + extra_heads[layer] for layer in range(L)] + [cfg.n_heads])
    d_head = max(cfg.d_head, 1) if any(extra_heads) else cfg.d_head
    mlp_width = [cfg.mlp_width_per_layer[layer] + extra_neurons[layer] for layer in range(L)]
    d_mlp = max(mlp_width + [cfg.d_mlp])

    w = model.weights
    new: dict[str, np.ndarray] = {
        "W_E": _pad(w["W_E"], (cfg.d_vocab, D)),
        "W_pos": _pad(w["W_pos"], (cfg.n_ctx, D)),
        "W_U": _pad(w["W_U"], (D, cfg.d_vocab_out)),
        "b_U": w["b_U"].copy(),
    }
    ann = model.annotation_json()
    if ann is None:
        raise VariantError("the model has no annotation (a variant records itself there)")
    ann.setdefault("blocks", [])
    ann.setdefault("ops", {})
    old_labels = list(labels)
    components: list[dict[str, Any]] = []
    scale = 1.0 / np.sqrt(d_old)
    pair_reads: dict[tuple[str, int], Any] = {}

    def note(block: dict[str, Any], op: str, directions: list[str]) -> None:
        ann["blocks"].append(block)
        ann["ops"][op] = {
            "kind": "noise",
            "encoding": None,
            "children": [],
            "directions": directions,
            "values": None,
        }
        components.append({k: v for k, v in block.items() if k not in ("reads", "selectors")})

    for layer in range(L):
        a, m = f"blocks.{layer}.attn.", f"blocks.{layer}.mlp."
        for name in ("W_Q", "W_K", "W_V"):
            new[a + name] = _pad(w[a + name], (n_heads, D, d_head))
        for name in ("b_Q", "b_K", "b_V"):
            new[a + name] = _pad(w[a + name], (n_heads, d_head))
        new[a + "W_O"] = _pad(w[a + "W_O"], (n_heads, d_head, D))
        new[a + "b_O"] = _pad(w[a + "b_O"], (D,))
        head_reads = {"q": old_labels, "k": old_labels, "v": old_labels}
        for j, spec in enumerate(new_heads[layer]):
            h = cfg.heads_per_layer[layer] + j
            if spec[0] == "fresh":
                for name in ("W_Q", "W_K", "W_V"):
                    new[a + name][h, :d_old, :] = rng.normal(0.0, scale, (d_old, d_head))
                col = d_old + spec[1]
                new[a + "W_O"][h, :, col] = rng.normal(0.0, 1.0, d_head)
                lab = noise_labels[spec[1]]
                note(
                    {
                        "op": lab,
                        "component": "attn",
                        "layer": layer,
                        "head": h,
                        "selectors": [],
                        "reads": head_reads,
                        "writes": [lab],
                    },
                    lab,
                    [lab],
                )
            else:
                key = ("attn", spec[1])
                if key not in pair_reads:
                    pair_reads[key] = (
                        [rng.normal(0.0, scale, (d_old, d_head)) for _ in range(3)],
                        rng.normal(0.0, 1.0, (d_head, d_old)),
                    )
                reads, out = pair_reads[key]
                for name, r in zip(("W_Q", "W_K", "W_V"), reads):
                    new[a + name][h, :d_old, :] = r
                new[a + "W_O"][h, :, :d_old] = spec[2] * out
                op = f"cancel:head{spec[1]}"
                note(
                    {
                        "op": op,
                        "component": "attn",
                        "layer": layer,
                        "head": h,
                        "selectors": [],
                        "reads": head_reads,
                        "writes": [],
                        "cancelled_writes": old_labels,
                    },
                    op,
                    [],
                )
        width = cfg.mlp_width_per_layer[layer]
        new[m + "W_in"] = _pad(w[m + "W_in"], (D, d_mlp))
        new[m + "b_in"] = _pad(w[m + "b_in"], (d_mlp,))
        new[m + "W_out"] = _pad(w[m + "W_out"], (d_mlp, D))
        new[m + "b_out"] = _pad(w[m + "b_out"], (D,))
        start = width
        for spec in new_neurons[layer]:
            if spec[0] == "fresh":
                n = spec[2]
                cols = slice(start, start + n)
                new[m + "W_in"][:d_old, cols] = rng.normal(0.0, scale, (d_old, n))
                new[m + "b_in"][cols] = rng.normal(0.0, 0.5, n)
                new[m + "W_out"][cols, d_old + spec[1]] = rng.normal(0.0, 1.0, n)
                lab = noise_labels[spec[1]]
                note(
                    {
                        "op": lab,
                        "component": "mlp",
                        "layer": layer,
                        "neurons": [start, start + n],
                        "reads": {"in": old_labels},
                        "writes": [lab],
                    },
                    lab,
                    [lab],
                )
            else:
                n = 2
                w_in, b_in = rng.normal(0.0, scale, d_old), rng.normal(0.0, 0.5)
                out = rng.normal(0.0, 1.0, d_old)
                for i, sign in enumerate((1.0, -1.0)):
                    new[m + "W_in"][:d_old, start + i] = w_in
                    new[m + "b_in"][start + i] = b_in
                    new[m + "W_out"][start + i, :d_old] = sign * out
                op = f"cancel:neurons{spec[1]}"
                note(
                    {
                        "op": op,
                        "component": "mlp",
                        "layer": layer,
                        "neurons": [start, start + 2],
                        "reads": {"in": old_labels},
                        "writes": [],
                        "cancelled_writes": old_labels,
                    },
                    op,
                    [],
                )
            start += n

    new_basis = np.zeros((len(labels) + n_noise, D))
    new_basis[: len(labels), :d_old] = basis
    new_basis[len(labels) :, d_old:] = np.eye(n_noise)
    identity = variant_card(model) is None or variant_card(model).get("basis") is None
    res_labels = (
        (list(cfg.residual_labels) + noise_labels)
        if identity
        else (list(cfg.residual_labels) + [f"basis:{d_old + i}" for i in range(n_noise)])
    )
    config = dict(
        d_model=D,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        heads_per_layer=[cfg.heads_per_layer[layer] + extra_heads[layer] for layer in range(L)],
        mlp_width_per_layer=mlp_width,
        residual_labels=res_labels,
    )
    structural = CompiledModel(
        dataclasses.replace(cfg, **config), new, model.codec, Annotation.from_json(ann), model.program_source
    )

    check = list(inputs) if inputs is not None else all_inputs(model)
    reference = _decoded(model, check)
    levels: dict[str, float] = {}
    noisy_weights = dict(new)
    if weight_noise > 0:
        # one group per component (embeddings, each layer's attention and MLP, unembedding): each gets
        # the largest level <= weight_noise (halving) that keeps every output exact with the groups before
        for group in _weight_groups(L):
            level = float(weight_noise)
            for attempt in range(max_halvings + 1):
                nrng = np.random.default_rng([seed, 1, attempt, len(levels)])
                trial = dict(noisy_weights)
                for n in group:
                    trial[n] = (new[n] * (1.0 + level * nrng.standard_normal(new[n].shape))).astype(
                        np.float32
                    )
                cand = CompiledModel(structural.config, trial, model.codec, structural.annotation,
                                     model.program_source)
                if _agree(reference, _decoded(cand, check), _numerical(model), tol)[1] == 1.0:
                    noisy_weights = trial
                    break
                level /= 2
            else:
                level = 0.0
            levels[group[0].rsplit(".", 1)[0] if "." in group[0] else group[0]] = level
    step = {
        "kind": "noise",
        "seed": int(seed),
        **{k: int(v) for k, v in counts.items()},
        "weight_noise": float(weight_noise),
        "weight_noise_applied": levels,
        "components": components,
        "checked_inputs": len(check),
    }
    card_basis = None if identity else new_basis
    card_ann = _new_annotation(structural, step, [*labels, *noise_labels], card_basis)
    result = CompiledModel(structural.config, noisy_weights, model.codec, card_ann, model.program_source)
    if _agree(reference, _decoded(result, check), _numerical(model), tol)[1] != 1.0:
        raise VariantError("distractor components changed an output (a reader reads a noise direction?)")
    return result


def _weight_groups(n_layers: int) -> list[list[str]]:
    groups = [["W_E"], ["W_pos"]]
    for layer in range(n_layers):
        a, m = f"blocks.{layer}.attn.", f"blocks.{layer}.mlp."
        groups.append([a + n for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")])
        groups.append([m + n for n in ("W_in", "b_in", "W_out", "b_out")])
    groups.append(["W_U", "b_U"])
    return groups


# ============================================================================================ compression


def _pca_projection(model: CompiledModel, d: int, inputs: Sequence[Sequence[Any]]) -> np.ndarray:
    """The top-`d` principal directions [D, d] of the residual states (every layer, every position) on
    `inputs`: the best linear reconstruction of what the residual stream actually holds."""
    grams = np.zeros((model.config.d_model, model.config.d_model))
    for _, (_, ids) in _by_length(model, inputs).items():
        _, cache = model.forward_numpy(ids, return_cache=True)
        names = ["blocks.0.hook_resid_pre"] if model.config.n_layers else []
        names += [
            f"blocks.{layer}.hook_resid_{w}"
            for layer in range(model.config.n_layers)
            for w in ("mid", "post")
        ]
        for name in names:
            x = cache[name].reshape(-1, model.config.d_model).astype(np.float64)
            grams += x.T @ x
    _, vecs = np.linalg.eigh(grams)
    return vecs[:, ::-1][:, :d].copy()


def _learn_projection(
    model: CompiledModel,
    d: int,
    inputs: Sequence[Sequence[Any]],
    seed: int,
    steps: int,
    lr: float,
    init: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Learn write [D, d] and read [d, D] maps (from `init`) minimising the output error."""
    import torch
    from torch.func import functional_call

    from rasp_compiler.model.torch_model import HookedCompiledTransformer

    torch.manual_seed(seed)
    names = [f"compressed:{i}" for i in range(d)]
    module = HookedCompiledTransformer(dataclasses.replace(model.config, d_model=d, residual_labels=names))
    write = torch.tensor(init, dtype=torch.float32, requires_grad=True)
    read = torch.tensor(init.T.copy(), dtype=torch.float32, requires_grad=True)
    w64 = {n: torch.tensor(np.asarray(x, dtype=np.float32)) for n, x in model.weights.items()}
    groups = _by_length(model, inputs)
    targets = {}
    for t, (_, ids) in groups.items():
        targets[t] = torch.tensor(model.forward_numpy(ids), dtype=torch.float32)
    blocks = output_blocks(model)
    opt = torch.optim.Adam([write, read], lr=lr)
    history = []
    for _ in range(steps):
        opt.zero_grad()
        wm = {}
        for n, x in w64.items():
            if residual_side(n) == "write":
                wm[n] = x @ write
            elif residual_side(n) == "read":
                wm[n] = read @ x
            else:
                wm[n] = x
        loss = torch.zeros((), dtype=torch.float32)
        for t, (_, ids) in groups.items():
            out = functional_call(module, wm, (torch.tensor(ids),))[:, 1:]  # the reference module's forward
            ref = targets[t][:, 1:]
            for blk in blocks:
                o, r = out[..., blk.start : blk.end], ref[..., blk.start : blk.end]
                if blk.encoding == "categorical":
                    loss = loss + torch.nn.functional.cross_entropy(
                        o.reshape(-1, o.shape[-1]), r.reshape(-1, r.shape[-1]).argmax(-1)
                    )
                else:
                    loss = loss + torch.mean((o - r) ** 2)
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    return write.detach().numpy(), read.detach().numpy(), history


def compress(
    model: CompiledModel,
    d_model: int,
    method: str = "random",
    seed: int = 0,
    *,
    inputs: Sequence[Sequence[Any]] | None = None,
    steps: int = 300,
    lr: float = 0.02,
    max_train: int = 256,
    tol: float = NUM_TOL,
) -> CompiledModel:
    """The model with a residual of width `d_model` < its number of residual directions.

    `method="random"`: a Gaussian projection `P` [D, d] (entries N(0, 1/d)); writers get `W @ P`,
    readers `P.T @ W`. `method="pca"`: `P` = the top-`d` principal directions of the residual states
    on `inputs` (exact when `d` >= the rank of those states, often below the number of labelled
    directions). `method="learned"`: write and read maps learned with torch (Adam, `steps`, starting
    from the PCA maps) to minimise the output error on (at most `max_train` of) `inputs` (default
    `all_inputs`); the better of the start and the result (by accuracy) is kept. The accuracy
    against the original model on `inputs` is measured and stored in the card (`accuracy`: per
    position; the step also holds `sequence_accuracy`); the ground truth is marked approximate.
    """
    D = model.config.d_model
    if isinstance(d_model, bool) or not isinstance(d_model, int) or not 1 <= d_model < D:
        raise VariantError(
            f"compress: d_model must be an int in [1, {D}) (the model has {D} residual "
            f"directions), got {d_model!r}"
        )
    if method not in COMPRESS_METHODS:
        raise VariantError(f"compress: method must be one of {COMPRESS_METHODS}, got {method!r}")
    data = list(inputs) if inputs is not None else all_inputs(model, max_inputs=1500, seed=seed)
    labels, basis = labelled_basis(model)
    names = [f"compressed:{i}" for i in range(d_model)]
    cfg = dataclasses.replace(model.config, d_model=d_model, residual_labels=names)

    def build(write: np.ndarray, read: np.ndarray) -> tuple[CompiledModel, tuple[float, float]]:
        trial = CompiledModel(
            cfg, _map_residual(model, write, read), model.codec, model.annotation, model.program_source
        )
        return trial, outputs_match(model, trial, data, tol)

    if method == "random":
        write = np.random.default_rng(seed).normal(0.0, 1.0 / np.sqrt(d_model), (D, d_model))
        read = write.T
    else:
        write = _pca_projection(model, d_model, data)
        read = write.T
    trial, (acc, seq_acc) = build(write, read)
    extra: dict[str, Any] = {}
    if method == "learned" and acc < 1.0:
        pick = np.random.default_rng(seed).choice(len(data), min(max_train, len(data)), replace=False)
        train = [data[i] for i in sorted(pick)]
        w2, r2, history = _learn_projection(model, d_model, train, seed, steps, lr, write)
        trial2, (acc2, seq2) = build(w2, r2)
        extra = {
            "start_accuracy": acc,
            "trained_accuracy": acc2,
            "final_loss": history[-1],
            "kept": "trained" if acc2 > acc else "start (pca)",
        }
        if acc2 > acc:
            trial, acc, seq_acc, write, read = trial2, acc2, seq2, w2, r2
    weights = trial.weights
    step = {
        "kind": "compress",
        "method": method,
        "seed": int(seed),
        "d_model": int(d_model),
        "from_d_model": int(D),
        "accuracy": acc,
        "sequence_accuracy": seq_acc,
        "n_inputs": len(data),
        "read": np.asarray(read, dtype=np.float64).tolist(),
    }
    step.update(extra)
    ann = _new_annotation(model, step, labels, basis @ write, approximate=True, accuracy=acc)
    return CompiledModel(cfg, weights, model.codec, ann, model.program_source)
