"""The compiled model: config, TransformerLens-named weights, token codec, ground-truth annotation.

`CompiledModel` is what the compiler returns and what files hold. It carries a plain numpy forward
pass (`forward_numpy`) with exactly the semantics of docs/CONTRACTS.md section 2, so tests, `apply`
and the tracr-style interface work without torch; `to_torch()` gives the hooked PyTorch reference.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rasp_compiler.model.annotation import Annotation
from rasp_compiler.model.codec import Codec
from rasp_compiler.model.config import ModelConfig, compare_weight_names
from rasp_compiler.model.errors import ModelError
from rasp_compiler.model.io import ModelFileError, ModelParts, read_model_files, write_model_files
from rasp_compiler.model.outputs import decode_block, find_block, output_blocks
from rasp_compiler.model.structure import annotation_mismatch

__all__ = ["ApplyOutput", "CompiledModel", "load", "output_view", "save"]


@dataclasses.dataclass
class ApplyOutput:
    """Result of `CompiledModel.apply` on one input (names follow tracr's output where they exist)."""

    decoded: list[Any] | dict[str, list[Any]]  # a dict {output name: values} for a multi-output model
    output: np.ndarray  # [T, d_vocab_out] logits (or the numerical value in column 0)
    tokens: list[int]  # input ids
    residuals: list[np.ndarray]  # [T, d_model]: after embedding, then after each attention and MLP
    cache: dict[str, np.ndarray]  # TransformerLens-named activations without the batch axis
    output_encoding: str = "categorical"

    @property
    def unembedded(self) -> np.ndarray:
        """tracr's name: argmax ids for categorical outputs, values for numerical ones."""
        if self.output_encoding == "numerical":
            return self.output[:, 0]
        return np.argmax(self.output, axis=-1)


@dataclasses.dataclass
class CompiledModel:
    """A compiled transformer: config, TL-named float32 weights, codec, annotation, program source."""

    config: ModelConfig
    weights: dict[str, np.ndarray]
    codec: Codec
    annotation: Annotation | None = None
    program_source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.config, ModelConfig):
            raise ModelError(f"CompiledModel.config must be a ModelConfig, got {type(self.config).__name__}")
        if not isinstance(self.codec, Codec):
            raise ModelError(f"CompiledModel.codec must be a Codec, got {type(self.codec).__name__}")
        if self.annotation is not None and not isinstance(self.annotation, Annotation):
            raise ModelError(f"CompiledModel.annotation must be an Annotation or None, got "
                             f"{type(self.annotation).__name__} (Annotation.from_json reads the JSON form)")
        self.weights = _checked_weights(self.config, self.weights)
        _check_codec(self.config, self.codec)

    # -- tracr-style properties

    @property
    def residual_labels(self) -> list[str]:
        return self.config.residual_labels

    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    @property
    def d_model(self) -> int:
        return self.config.d_model

    @property
    def n_heads(self) -> int:
        return self.config.n_heads

    @property
    def heads_per_layer(self) -> list[int]:
        return self.config.heads_per_layer

    @property
    def mlp_width_per_layer(self) -> list[int]:
        return self.config.mlp_width_per_layer

    @property
    def d_head(self) -> int:
        return self.config.d_head

    @property
    def d_mlp(self) -> int:
        return self.config.d_mlp

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    @property
    def n_params(self) -> int:
        return int(sum(w.size for w in self.weights.values()))

    # -- tokens

    def encode(self, tokens: Sequence[Any]) -> list[int]:
        """`["BOS", x1, ...]` -> ids."""
        return self.codec.encode(tokens)

    def decode(self, output: np.ndarray, *, bos_first: bool = True) -> list[Any] | dict[str, list[Any]]:
        """Logits `[T, d_vocab_out]` -> values, BOS at position 0 (tracr's `decoded`).

        A multi-output model (`rasp_compiler.compiler.multi`) decodes each output over its own `W_U` columns
        and gives {output name: values}; one argmax across all outputs' columns would mean nothing.
        """
        cols = self.annotation.output_columns if self.annotation is not None else {}
        if not cols:
            return self.codec.decode(output, bos_first=bos_first)
        output = np.asarray(output)
        width = max(c.end for c in cols.values())
        if output.ndim != 2 or output.shape[1] != width:
            raise ModelError(f"decode expects output of shape [T, {width}] (the multi-output model's "
                             f"W_U columns), got {output.shape}")
        out: dict[str, list[Any]] = {}
        for name, c in cols.items():
            values = decode_block(output, c.start, c.end, c.encoding, c.values)
            if bos_first and values:
                values[0] = self.codec.bos
            out[str(name)] = values
        return out

    # -- running

    def forward_numpy(self, tokens: Any, *, return_cache: bool = False
                      ) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
        """Reference forward pass in numpy float32: ids `[B, T]` (or `[T]`) -> `[B, T, d_vocab_out]`.

        With `return_cache`, also the activations under their TransformerLens hook names with the
        shapes of the torch module (`hook_q` `[B,T,H,d_head]`, `hook_pattern` `[B,H,Tq,Tk]`, ...).
        """
        toks = self._check_ids(tokens)
        squeeze = toks.ndim == 1
        if squeeze:
            toks = toks[None]
        out, cache = _forward(self.config, self.weights, toks, return_cache)
        if squeeze:
            out = out[0]
            cache = {k: v[0] for k, v in cache.items()}
        return (out, cache) if return_cache else out

    def _check_ids(self, tokens: Any) -> np.ndarray:
        toks = np.asarray(tokens)
        if toks.ndim not in (1, 2):
            raise ModelError(f"token ids must have shape [T] or [B, T], got {toks.shape}")
        if toks.size and not np.issubdtype(toks.dtype, np.integer):
            raise ModelError(f"token ids must be integers, got dtype {toks.dtype}")
        toks = toks.astype(np.int64, copy=False)
        if toks.shape[-1] > self.config.n_ctx:
            raise ModelError(f"sequence of length {toks.shape[-1]} exceeds n_ctx {self.config.n_ctx} "
                             f"(max_seq_len {self.config.max_seq_len} + BOS)")
        if toks.size and (toks.min() < 0 or toks.max() >= self.config.d_vocab):
            raise ModelError(f"token ids must lie in [0, d_vocab={self.config.d_vocab})")
        return toks

    def apply(self, tokens: Sequence[Any]) -> ApplyOutput:
        """Run one input `["BOS", x1, ...]`; `.decoded` matches tracr's (BOS first)."""
        ids = self.encode(tokens)
        out, cache = self.forward_numpy(np.array([ids], dtype=np.int64), return_cache=True)
        out1 = out[0]
        cache1 = {k: v[0] for k, v in cache.items()}
        residuals = [cache1["blocks.0.hook_resid_pre"]] if self.n_layers else [
            cache1["hook_embed"] + cache1["hook_pos_embed"]]
        for layer in range(self.n_layers):
            residuals += [cache1[f"blocks.{layer}.hook_resid_mid"], cache1[f"blocks.{layer}.hook_resid_post"]]
        return ApplyOutput(decoded=self.decode(out1), output=out1, tokens=ids, residuals=residuals,
                           cache=cache1, output_encoding=self.config.output_encoding)

    def apply_batch(self, inputs: Sequence[Sequence[Any]]) -> list[list[Any] | dict[str, list[Any]]]:
        """Decode many inputs (each `["BOS", ...]`) with batched numpy forwards, grouped by length
        (each result as `apply(x).decoded`: a dict per input for a multi-output model)."""
        encoded = [self.encode(x) for x in inputs]
        results: list[list[Any] | dict[str, list[Any]] | None] = [None] * len(encoded)
        by_len: dict[int, list[int]] = {}
        for i, ids in enumerate(encoded):
            by_len.setdefault(len(ids), []).append(i)
        for idx in by_len.values():
            out = self.forward_numpy(np.array([encoded[i] for i in idx], dtype=np.int64))
            for row, i in enumerate(idx):
                results[i] = self.decode(out[row])
        return results  # type: ignore[return-value]

    # -- conversions

    def to_torch(self, device: Any = None) -> Any:
        """The hooked PyTorch reference module (`HookedCompiledTransformer`) with these weights."""
        from rasp_compiler.model.torch_model import HookedCompiledTransformer

        module = HookedCompiledTransformer.from_compiled(self)
        return module if device is None else module.to(device)

    def save(self, directory: Any) -> None:
        """Write `weights.safetensors` + `model.json` into `directory` (see `rasp_compiler.model.io`)."""
        save(self, directory)

    def annotation_json(self) -> dict[str, Any] | None:
        """The annotation's JSON form (docs/CONTRACTS.md section 3), or None."""
        return None if self.annotation is None else self.annotation.to_json()

    def __repr__(self) -> str:
        c = self.config
        return (f"CompiledModel(n_layers={c.n_layers}, d_model={c.d_model}, "
                f"heads_per_layer={c.heads_per_layer}, d_head={c.d_head}, d_mlp={c.d_mlp}, "
                f"vocab={self.codec.vocab!r}, max_seq_len={c.max_seq_len}, output={c.output_encoding})")


def _checked_weights(config: ModelConfig, weights: dict[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(weights, dict):
        raise ModelError(f"weights must be a dict of name -> array, got {type(weights).__name__}")
    expected, missing, extra = compare_weight_names(config, weights)
    if missing:
        raise ModelError(f"weights lack {len(missing)} tensor(s): {missing[:6]}")
    if extra:
        raise ModelError(f"weights have unexpected tensor(s) {extra[:6]} (n_layers={config.n_layers})")
    out: dict[str, np.ndarray] = {}
    for name, shape in expected.items():
        w = np.asarray(weights[name])
        if not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)) or w.dtype == bool:
            raise ModelError(f"weight {name} has dtype {w.dtype}, expected float32")
        if w.shape != shape:
            raise ModelError(f"weight {name} has shape {list(w.shape)}, config says {list(shape)}")
        w = np.ascontiguousarray(w, dtype=np.float32)
        if not np.all(np.isfinite(w)):
            raise ModelError(f"weight {name} has non-finite entries")
        out[name] = w
    return out


def _check_codec(config: ModelConfig, codec: Codec) -> None:
    if codec.d_vocab != config.d_vocab:
        raise ModelError(f"codec has {codec.d_vocab} input tokens, config.d_vocab is {config.d_vocab}")
    if config.bos_token_id != codec.bos_id:
        raise ModelError(f"config.bos_token_id {config.bos_token_id} differs from the codec's {codec.bos_id}")
    if config.pad_token_id != codec.pad_id:
        raise ModelError(f"config.pad_token_id {config.pad_token_id} differs from the codec's {codec.pad_id}")
    if codec.max_seq_len != config.max_seq_len:
        raise ModelError(f"codec max_seq_len {codec.max_seq_len} differs from config's {config.max_seq_len}")
    if codec.output_encoding != config.output_encoding:
        raise ModelError(f"codec output_encoding {codec.output_encoding!r} differs from config's "
                         f"{config.output_encoding!r}")
    if codec.output_values is not None and len(codec.output_values) != config.d_vocab_out:
        raise ModelError(f"codec has {len(codec.output_values)} output values, config.d_vocab_out is "
                         f"{config.d_vocab_out}")


def _softmax_masked(scores: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Softmax over the last axis; entries where `mask` (broadcast to the scores) is True get -inf."""
    if mask is not None:
        scores = np.where(mask, -np.inf, scores)
    m = scores.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(scores - m)
    s = e.sum(axis=-1, keepdims=True)
    return (e / np.where(s == 0, 1.0, s)).astype(np.float32)


def attention_mask(config: ModelConfig, toks: np.ndarray) -> np.ndarray | None:
    """[B, 1, T, T] True where a query may not attend to a key: PAD keys, and keys after the query in a
    causal model (None when nothing is masked)."""
    B, T = toks.shape
    mask = np.zeros((B, 1, T, T), dtype=bool)
    if config.pad_token_id is not None:
        mask |= (toks == config.pad_token_id)[:, None, None, :]
    if config.causal:
        mask |= np.triu(np.ones((T, T), dtype=bool), k=1)[None, None]
    return mask if mask.any() else None


def _forward(config: ModelConfig, w: dict[str, np.ndarray], toks: np.ndarray, keep: bool
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    cache: dict[str, np.ndarray] = {}
    B, T = toks.shape
    embed = w["W_E"][toks]
    pos = np.broadcast_to(w["W_pos"][:T], (B, T, config.d_model))
    x = embed + pos
    if keep:
        cache["hook_embed"] = embed
        cache["hook_pos_embed"] = np.array(pos)
    mask = attention_mask(config, toks)
    for layer in range(config.n_layers):
        a = f"blocks.{layer}.attn."
        q = np.einsum("btm,hmd->bthd", x, w[a + "W_Q"]) + w[a + "b_Q"]
        k = np.einsum("btm,hmd->bthd", x, w[a + "W_K"]) + w[a + "b_K"]
        v = np.einsum("btm,hmd->bthd", x, w[a + "W_V"]) + w[a + "b_V"]
        scores = np.einsum("bqhd,bkhd->bhqk", q, k)
        pattern = _softmax_masked(scores, mask)
        z = np.einsum("bhqk,bkhd->bqhd", pattern, v)
        result = np.einsum("bthd,hdm->bthm", z, w[a + "W_O"])
        attn_out = result.sum(axis=2) + w[a + "b_O"]
        if keep:
            p = f"blocks.{layer}."
            cache[p + "hook_resid_pre"] = x
            cache[a + "hook_q"], cache[a + "hook_k"], cache[a + "hook_v"] = q, k, v
            cache[a + "hook_attn_scores"] = np.where(mask, -np.inf, scores) if mask is not None else scores
            cache[a + "hook_pattern"], cache[a + "hook_z"], cache[a + "hook_result"] = pattern, z, result
            cache[p + "hook_attn_out"] = attn_out
        x = x + attn_out
        m = f"blocks.{layer}.mlp."
        pre = x @ w[m + "W_in"] + w[m + "b_in"]
        post = np.maximum(pre, 0.0)
        mlp_out = post @ w[m + "W_out"] + w[m + "b_out"]
        if keep:
            p = f"blocks.{layer}."
            cache[p + "hook_resid_mid"] = x
            cache[m + "hook_pre"], cache[m + "hook_post"], cache[p + "hook_mlp_out"] = pre, post, mlp_out
        x = x + mlp_out
        if keep:
            cache[f"blocks.{layer}.hook_resid_post"] = x
    out = x @ w["W_U"] + w["b_U"]
    return out.astype(np.float32, copy=False), cache


def output_view(model: CompiledModel, name: str) -> CompiledModel:
    """A single-output model: the same weights with only `name`'s columns of W_U (same components)."""
    b = find_block(model, name)
    if len(output_blocks(model)) == 1:
        return model
    ann = dataclasses.replace(
        model.annotation, output=b.label, outputs=(), output_names={}, output_columns={}
    )
    weights = dict(model.weights)
    weights["W_U"] = np.ascontiguousarray(model.weights["W_U"][:, b.start : b.end])
    weights["b_U"] = np.ascontiguousarray(model.weights["b_U"][b.start : b.end])
    c = model.codec
    codec = Codec(
        c.input_tokens, c.bos, c.pad, c.max_seq_len, b.encoding, None if b.values is None else list(b.values)
    )
    cfg = dataclasses.replace(model.config, d_vocab_out=b.end - b.start, output_encoding=b.encoding)
    return CompiledModel(cfg, weights, codec, ann, model.program_source)


def save(model: CompiledModel, directory: str | os.PathLike) -> Path:
    """Write `model` into `directory` as `weights.safetensors` + `model.json`; returns the directory."""
    if not isinstance(model, CompiledModel):
        raise TypeError(f"save expects a CompiledModel, got {type(model).__name__}")
    return write_model_files(
        ModelParts(model.config, model.weights, model.codec, model.annotation, model.program_source),
        directory,
    )


def load(directory: str | os.PathLike) -> CompiledModel:
    """Read a model saved by `save`: every file checked (`rasp_compiler.model.io`), then the model
    built and checked as a whole."""
    p = read_model_files(directory)
    try:
        model = CompiledModel(p.config, p.weights, p.codec, p.annotation, p.program_source)
    except ModelError as e:
        raise ModelFileError(f"model files are inconsistent: {e}") from e
    if model.annotation is not None and (problem := annotation_mismatch(model.config, model.weights,
                                                                         model.annotation)):
        raise ModelFileError(f"the annotation does not match the weights: {problem}")
    return model
