"""Model shapes and the one list of weight names and shapes (docs/CONTRACTS.md section 2)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np

from rasp_compiler.model.errors import ModelError

OUTPUT_ENCODINGS = ("categorical", "numerical")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and metadata of a compiled transformer (docs/CONTRACTS.md section 2)."""

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    n_ctx: int
    d_vocab: int
    d_vocab_out: int
    max_seq_len: int
    heads_per_layer: list[int]
    mlp_width_per_layer: list[int]
    output_encoding: str
    residual_labels: list[str]
    act_fn: str = "relu"
    pad_token_id: int | None = None
    bos_token_id: int = 0
    causal: bool = False  # every head masked to keys at or before the query (a decoder-only model)

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads_per_layer", [int(h) for h in self.heads_per_layer])
        object.__setattr__(self, "mlp_width_per_layer", [int(w) for w in self.mlp_width_per_layer])
        object.__setattr__(self, "residual_labels", [str(s) for s in self.residual_labels])
        self.validate()

    def validate(self) -> None:
        """Raise ModelError naming the first inconsistent field."""
        for name in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab", "d_vocab_out",
                     "max_seq_len", "bos_token_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ModelError(f"ModelConfig.{name} must be an int, got {value!r}")
            if value < 0:
                raise ModelError(f"ModelConfig.{name} must be >= 0, got {value}")
        for name in ("d_model", "n_ctx", "d_vocab", "d_vocab_out", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ModelError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_ctx != self.max_seq_len + 1:
            raise ModelError(f"ModelConfig.n_ctx must be max_seq_len + 1 = {self.max_seq_len + 1}, "
                             f"got {self.n_ctx}")
        if len(self.heads_per_layer) != self.n_layers:
            raise ModelError(f"ModelConfig.heads_per_layer has {len(self.heads_per_layer)} entries, "
                             f"n_layers is {self.n_layers}")
        if len(self.mlp_width_per_layer) != self.n_layers:
            raise ModelError(f"ModelConfig.mlp_width_per_layer has {len(self.mlp_width_per_layer)} entries, "
                             f"n_layers is {self.n_layers}")
        for layer, h in enumerate(self.heads_per_layer):
            if not 0 <= h <= self.n_heads:
                raise ModelError(f"ModelConfig.heads_per_layer[{layer}] = {h} is outside "
                                 f"[0, n_heads={self.n_heads}]")
        for layer, w in enumerate(self.mlp_width_per_layer):
            if not 0 <= w <= self.d_mlp:
                raise ModelError(f"ModelConfig.mlp_width_per_layer[{layer}] = {w} is outside "
                                 f"[0, d_mlp={self.d_mlp}]")
        if self.output_encoding not in OUTPUT_ENCODINGS:
            raise ModelError(f"ModelConfig.output_encoding must be one of {OUTPUT_ENCODINGS}, "
                             f"got {self.output_encoding!r}")
        if self.output_encoding == "numerical" and self.d_vocab_out != 1:
            raise ModelError(f"a numerical-output model has d_vocab_out 1, got {self.d_vocab_out}")
        if len(self.residual_labels) != self.d_model:
            raise ModelError(f"ModelConfig.residual_labels has {len(self.residual_labels)} labels, "
                             f"d_model is {self.d_model}")
        if len(set(self.residual_labels)) != len(self.residual_labels):
            dup = sorted({s for s in self.residual_labels if self.residual_labels.count(s) > 1})
            raise ModelError(f"ModelConfig.residual_labels has duplicates: {dup[:5]}")
        if not isinstance(self.causal, bool):
            raise ModelError(f"ModelConfig.causal must be true or false, got {self.causal!r}")
        if self.act_fn != "relu":
            raise ModelError(f"ModelConfig.act_fn must be 'relu', got {self.act_fn!r}")
        if not 0 <= self.bos_token_id < self.d_vocab:
            raise ModelError(f"ModelConfig.bos_token_id {self.bos_token_id} is outside "
                             f"[0, d_vocab={self.d_vocab})")
        if self.pad_token_id is not None:
            if isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, (int, np.integer)):
                raise ModelError(f"ModelConfig.pad_token_id must be an int or None, "
                                 f"got {self.pad_token_id!r}")
            if not 0 <= self.pad_token_id < self.d_vocab:
                raise ModelError(f"ModelConfig.pad_token_id {self.pad_token_id} is outside "
                                 f"[0, d_vocab={self.d_vocab})")
            if self.pad_token_id == self.bos_token_id:
                raise ModelError("ModelConfig.pad_token_id equals bos_token_id")

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, np.integer):
                out[k] = int(v)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_json`; unknown or missing fields raise ModelError."""
        if not isinstance(data, dict):
            raise ModelError(f"model config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        unknown = sorted(set(data) - names)
        missing = sorted(required - set(data))
        if unknown:
            raise ModelError(f"model config has unknown fields {unknown}")
        if missing:
            raise ModelError(f"model config lacks fields {missing}")
        return cls(**data)


def expected_weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every weight name of the contract with its shape for `config`, in a stable order."""
    c = config
    shapes: dict[str, tuple[int, ...]] = {"W_E": (c.d_vocab, c.d_model), "W_pos": (c.n_ctx, c.d_model)}
    for layer in range(c.n_layers):
        a = f"blocks.{layer}.attn."
        for m in ("Q", "K", "V"):
            shapes[a + f"W_{m}"] = (c.n_heads, c.d_model, c.d_head)
            shapes[a + f"b_{m}"] = (c.n_heads, c.d_head)
        shapes[a + "W_O"] = (c.n_heads, c.d_head, c.d_model)
        shapes[a + "b_O"] = (c.d_model,)
        m = f"blocks.{layer}.mlp."
        shapes[m + "W_in"] = (c.d_model, c.d_mlp)
        shapes[m + "b_in"] = (c.d_mlp,)
        shapes[m + "W_out"] = (c.d_mlp, c.d_model)
        shapes[m + "b_out"] = (c.d_model,)
    shapes["W_U"] = (c.d_model, c.d_vocab_out)
    shapes["b_U"] = (c.d_vocab_out,)
    return shapes


def compare_weight_names(
    config: ModelConfig, names: Iterable[str]
) -> tuple[dict[str, tuple[int, ...]], list[str], list[str]]:
    """(expected shapes, missing names in contract order, unexpected names sorted), so that the model
    and the file loader judge a weights dict alike and each words its own error."""
    expected = expected_weight_shapes(config)
    present = set(names)
    return expected, [n for n in expected if n not in present], sorted(present - set(expected))


# Weights that write into the residual stream (their output axis is d_model) and weights that read from
# it (their input axis is d_model): a change of residual basis multiplies the first on the right and the
# second on the left.
_WRITES = ("W_E", "W_pos", "attn.W_O", "attn.b_O", "mlp.W_out", "mlp.b_out")
_READS = ("W_U", "attn.W_Q", "attn.W_K", "attn.W_V", "mlp.W_in")


def residual_side(name: str) -> str | None:
    """"write" or "read" for a weight whose residual axis is its last / first axis; None for the rest
    (q/k/v and MLP-input biases, `b_U`)."""
    if name.endswith(_WRITES):
        return "write"
    if name.endswith(_READS):
        return "read"
    return None
