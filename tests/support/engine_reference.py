"""Test helpers for the engine: random models that follow the weight contract, and an independent
float64 numpy reference of the forward pass with node and edge patches.

The reference computes every reader's input as an explicit sum over upstream writers (embed,
pos_embed, heads, MLPs) plus upstream biases, choosing per edge the writer's current or source
output. The engine instead adds corrections to one running residual; agreement between the two
formulations is the check.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np

from rasp_compiler.model import ModelConfig


def random_model(
    seed: int,
    *,
    sparse: bool = False,
    pad: bool = False,
    n_layers: int | None = None,
    output_encoding: str = "categorical",
    causal: bool = False,
) -> Any:
    """A model object with `.config` (ModelConfig) and `.weights` (contract names, float32)."""
    rng = np.random.default_rng(seed)
    L = int(rng.integers(1, 4)) if n_layers is None else n_layers
    D = int(rng.integers(3, 13))
    H = int(rng.integers(1, 4))
    E = int(rng.integers(1, 5))
    M = int(rng.integers(1, 9))
    S = int(rng.integers(2, 7))
    V = int(rng.integers(3, 8)) + (1 if pad else 0)
    VO = 1 if output_encoding == "numerical" else int(rng.integers(2, 6))
    heads = [int(rng.integers(0, H + 1)) for _ in range(L)]
    widths = [int(rng.integers(0, M + 1)) for _ in range(L)]
    config = ModelConfig(
        n_layers=L,
        d_model=D,
        n_heads=H,
        d_head=E,
        d_mlp=M,
        n_ctx=S + 1,
        d_vocab=V,
        d_vocab_out=VO,
        max_seq_len=S,
        heads_per_layer=heads,
        mlp_width_per_layer=widths,
        output_encoding=output_encoding,
        residual_labels=[f"r{i}" for i in range(D)],
        pad_token_id=(V - 1) if pad else None,
        bos_token_id=0,
        causal=causal,
    )

    def draw(*shape: int) -> np.ndarray:
        if sparse:
            vals = rng.choice(np.array([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0]), size=shape)
            return np.where(rng.random(shape) < 0.15, vals, 0.0).astype(np.float32)
        return (rng.standard_normal(shape) * 0.4).astype(np.float32)

    w: dict[str, np.ndarray] = {"W_E": draw(V, D), "W_pos": draw(S + 1, D)}
    for layer in range(L):
        a, m = f"blocks.{layer}.attn.", f"blocks.{layer}.mlp."
        for n in ("Q", "K", "V"):
            w[a + f"W_{n}"] = draw(H, D, E)
            w[a + f"b_{n}"] = draw(H, E)
        w[a + "W_O"] = draw(H, E, D)
        w[a + "b_O"] = draw(D)
        w[m + "W_in"], w[m + "b_in"] = draw(D, M), draw(M)
        w[m + "W_out"], w[m + "b_out"] = draw(M, D), draw(D)
        # padding, as compiled models have it: heads beyond heads_per_layer and neurons beyond the
        # MLP's width are all zeros
        for h in range(heads[layer], H):
            for n in ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "W_O"):
                w[a + n][h] = 0.0
        w[m + "W_in"][:, widths[layer] :] = 0.0
        w[m + "b_in"][widths[layer] :] = 0.0
        w[m + "W_out"][widths[layer] :, :] = 0.0
    w["W_U"], w["b_U"] = draw(D, VO), draw(VO)
    return types.SimpleNamespace(config=config, weights=w)


def random_tokens(model: Any, batch: int, seed: int, *, seq: int | None = None) -> np.ndarray:
    """BOS (id 0) then random non-BOS ids; with a pad token, a random suffix of each row is PAD."""
    c = model.config
    rng = np.random.default_rng(seed)
    T = c.n_ctx if seq is None else seq
    hi = c.d_vocab - (1 if c.pad_token_id is not None else 0)
    ids = rng.integers(1, hi, size=(batch, T)) if hi > 1 else np.ones((batch, T), dtype=np.int64)
    ids[:, 0] = c.bos_token_id
    if c.pad_token_id is not None and T > 1:
        for b in range(batch):
            n_pad = int(rng.integers(0, T - 1))
            if n_pad:
                ids[b, T - n_pad :] = c.pad_token_id
    return ids.astype(np.int64)


def writer_names(config: Any) -> list[str]:
    names = ["embed", "pos_embed"]
    for layer in range(config.n_layers):
        names += [f"L{layer}.H{h}" for h in range(config.n_heads)] + [f"L{layer}.MLP"]
    return names


def _layer(name: str) -> int:
    return -1 if name in ("embed", "pos_embed") else int(name.split(".")[0][1:])


def upstream(writer: str, reader: str, n_layers: int) -> bool:
    """Is `writer` read by `reader` (an edge can exist)?"""
    wl = _layer(writer)
    rl = n_layers if reader == "output" else _layer(reader)
    return wl < rl or (wl == rl and not writer.endswith("MLP") and reader.endswith("MLP"))


def _proj(P: Any, D: int) -> np.ndarray:
    if P is None:
        return np.eye(D)
    P = np.asarray(P)
    if P.ndim == 2:
        return P.astype(np.float64)
    mask = np.zeros(D)
    mask[list(P)] = 1.0
    return np.diag(mask)


def reference_run(
    model: Any,
    tokens: np.ndarray,
    source: np.ndarray | None = None,
    nodes: dict[str, Any] | None = None,
    edges: dict[tuple[str, str, str], Any] | None = None,
    source_outputs: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Float64 forward pass of the contract with patches.

    `nodes`: {writer: subspace} (None = whole output; a list of direction indices; or a matrix P);
    `edges`: {(writer, reader, input): subspace}. Returns (out [B,T,V], writer outputs, TL cache).
    """
    c, W = model.config, {k: v.astype(np.float64) for k, v in model.weights.items()}
    nodes, edges = nodes or {}, edges or {}
    D, H, L = c.d_model, c.n_heads, c.n_layers
    tokens = np.asarray(tokens)
    B, T = tokens.shape
    src_w: dict[str, np.ndarray] = {}
    if (nodes or edges) and source is not None:
        _, src_w, _ = reference_run(model, np.asarray(source))
    for name, value in (source_outputs or {}).items():  # mean / zero ablation values
        src_w[name] = np.broadcast_to(np.asarray(value, dtype=np.float64), (B, T, D))
    cur: dict[str, np.ndarray] = {}
    biases: list[tuple[str, np.ndarray]] = []  # (reader-order key, bias) ; b_O of layer l
    cache: dict[str, np.ndarray] = {}

    def finish(name: str, value: np.ndarray) -> None:
        if name in nodes:
            value = value + (src_w[name] - value) @ _proj(nodes[name], D)
        cur[name] = value

    def reader_input(reader: str, inp: str) -> np.ndarray:
        total = np.zeros((B, T, D))
        for w, val in cur.items():
            if not upstream(w, reader, L):
                continue
            key = (w, reader, inp)
            if key in edges:
                val = val + (src_w[w] - val) @ _proj(edges[key], D)
            total = total + val
        rl = L if reader == "output" else _layer(reader)
        for layer, bias in biases:
            if int(layer) < rl or (int(layer) == rl and reader.endswith("MLP")):
                total = total + bias
        return total

    finish("embed", W["W_E"][tokens])
    finish("pos_embed", np.broadcast_to(W["W_pos"][:T], (B, T, D)).copy())
    cache["hook_embed"], cache["hook_pos_embed"] = (
        W["W_E"][tokens],
        np.broadcast_to(W["W_pos"][:T], (B, T, D)),
    )
    key_is_pad = (tokens == c.pad_token_id) if c.pad_token_id is not None else np.zeros((B, T), bool)
    masked = key_is_pad[:, None, :] | (np.arange(T)[None, None, :] > np.arange(T)[None, :, None]) * c.causal
    for layer in range(L):
        a, m = f"blocks.{layer}.attn.", f"blocks.{layer}.mlp."
        resid = reader_input(f"L{layer}.H0", "none")  # no edge has input "none": the clean-sum residual
        cache[f"blocks.{layer}.hook_resid_pre"] = resid
        qs, ks, vs, zs, pats, scs, results = [], [], [], [], [], [], []
        for h in range(H):
            r = f"L{layer}.H{h}"
            q = reader_input(r, "q") @ W[a + "W_Q"][h] + W[a + "b_Q"][h]
            k = reader_input(r, "k") @ W[a + "W_K"][h] + W[a + "b_K"][h]
            v = reader_input(r, "v") @ W[a + "W_V"][h] + W[a + "b_V"][h]
            s = np.einsum("bqe,bke->bqk", q, k)
            s = np.where(masked, -np.inf, s)
            p = np.exp(s - s.max(-1, keepdims=True))
            p = p / p.sum(-1, keepdims=True)
            z = p @ v
            res = z @ W[a + "W_O"][h]
            qs.append(q), ks.append(k), vs.append(v), zs.append(z), pats.append(p), scs.append(s)
            results.append(res)
        for h in range(H):  # heads of one layer read the residual before any of them writes
            finish(f"L{layer}.H{h}", results[h])
        biases.append((str(layer), W[a + "b_O"]))
        cache[a + "hook_q"], cache[a + "hook_k"] = np.stack(qs, 2), np.stack(ks, 2)
        cache[a + "hook_v"], cache[a + "hook_z"] = np.stack(vs, 2), np.stack(zs, 2)
        cache[a + "hook_pattern"], cache[a + "hook_attn_scores"] = np.stack(pats, 1), np.stack(scs, 1)
        cache[a + "hook_result"] = np.stack([cur[f"L{layer}.H{h}"] for h in range(H)], 2)
        cache[f"blocks.{layer}.hook_attn_out"] = cache[a + "hook_result"].sum(2) + W[a + "b_O"]
        x_in = reader_input(f"L{layer}.MLP", "in")
        cache[f"blocks.{layer}.hook_resid_mid"] = reader_input(f"L{layer}.MLP", "none")
        pre = x_in @ W[m + "W_in"] + W[m + "b_in"]
        post = np.maximum(pre, 0.0)
        finish(f"L{layer}.MLP", post @ W[m + "W_out"] + W[m + "b_out"])
        cache[m + "hook_pre"], cache[m + "hook_post"] = pre, post
        cache[f"blocks.{layer}.hook_mlp_out"] = cur[f"L{layer}.MLP"]
        cache[f"blocks.{layer}.hook_resid_post"] = reader_input("output", "none")
    out = reader_input("output", "in") @ W["W_U"] + W["b_U"]
    return out, cur, cache


def kl_rows(clean: np.ndarray, patched: np.ndarray) -> np.ndarray:
    """KL(softmax(clean) || softmax(patched)) over the last axis, in float64."""

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        mx = x.max(-1, keepdims=True)
        return x - mx - np.log(np.exp(x - mx).sum(-1, keepdims=True))

    lc, lp = log_softmax(clean), log_softmax(patched)
    return (np.exp(lc) * (lc - lp)).sum(-1)
