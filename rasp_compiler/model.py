"""The compiled model: config, TransformerLens-named weights, token codec, ground-truth annotation.

`CompiledModel` is what the compiler returns and what files hold. It carries a plain numpy forward
pass (`forward_numpy`) with exactly the semantics of docs/CONTRACTS.md section 2, so tests, `apply`
and the tracr-style interface work without torch; `to_torch()` gives the hooked PyTorch reference.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "ApplyOutput",
    "Codec",
    "CompiledModel",
    "ModelConfig",
    "ModelError",
    "expected_weight_shapes",
    "value_sort_key",
]

OUTPUT_ENCODINGS = ("categorical", "numerical")


class ModelError(ValueError):
    """A model, its config, weights or codec is inconsistent, or an input does not fit the model."""


# ----------------------------------------------------------------------------------------------- values


_TYPE_RANK = {bool: 0, int: 1, float: 1, str: 2, type(None): 3, tuple: 4}


def value_sort_key(value: Any) -> tuple:
    """A total, deterministic order on token values of mixed types.

    Values of one kind compare natively (numbers by size, strings lexicographically); kinds are
    ordered bool < number < str < None < tuple < anything else, so `sorted({1, "a", 2.5})` never
    depends on set iteration order or raises a TypeError.
    """
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return (1, math.inf, 1)
        return (1, value, 0)
    if isinstance(value, str):
        return (2, value)
    if value is None:
        return (3,)
    if isinstance(value, tuple):
        return (4, tuple(value_sort_key(v) for v in value))
    return (5, type(value).__name__, repr(value))


def sort_values(values: Iterable[Any]) -> list[Any]:
    """Sort a collection of token values with `value_sort_key` (duplicates removed)."""
    seen: dict[Any, Any] = {}
    for v in values:
        seen.setdefault(_token_key(v), v)
    return sorted(seen.values(), key=value_sort_key)


def _token_key(value: Any) -> Hashable:
    """Dictionary key of a token: `True` and `1` are different tokens, `1` and `1.0` the same number."""
    if isinstance(value, np.generic):
        value = value.item()
    return (isinstance(value, bool), value)


# ----------------------------------------------------------------------------------------------- config


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


# ----------------------------------------------------------------------------------------------- codec


@dataclasses.dataclass(frozen=True)
class Codec:
    """Token <-> id mapping for inputs, and logits -> values for outputs.

    `input_tokens` is the whole input vocabulary in id order: `[bos] + sorted(vocab) (+ [pad])`.
    `output_values` (categorical outputs) lists the value of each column of `W_U`; numerical
    outputs decode to the float in their single column.
    """

    input_tokens: list[Any]
    bos: Any
    pad: Any
    max_seq_len: int
    output_encoding: str
    output_values: list[Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_tokens", list(self.input_tokens))
        if self.output_values is not None:
            object.__setattr__(self, "output_values", list(self.output_values))
        if self.output_encoding not in OUTPUT_ENCODINGS:
            raise ModelError(f"Codec.output_encoding must be one of {OUTPUT_ENCODINGS}, "
                             f"got {self.output_encoding!r}")
        if self.output_encoding == "categorical" and not self.output_values:
            raise ModelError("a categorical-output Codec needs a non-empty output_values list")
        if self.output_encoding == "numerical" and self.output_values is not None:
            raise ModelError("a numerical-output Codec has output_values None")
        if not self.input_tokens or _token_key(self.input_tokens[0]) != _token_key(self.bos):
            raise ModelError(f"Codec.input_tokens must start with the BOS token {self.bos!r}")
        if self.pad is not None and _token_key(self.input_tokens[-1]) != _token_key(self.pad):
            raise ModelError(f"Codec.input_tokens must end with the PAD token {self.pad!r}")
        ids: dict[Hashable, int] = {}
        for i, tok in enumerate(self.input_tokens):
            try:
                key = _token_key(tok)
                hash(key)
            except TypeError as e:
                raise ModelError(f"input token {tok!r} is not hashable") from e
            if key in ids:
                raise ModelError(f"input token {tok!r} appears twice in the input vocabulary")
            ids[key] = i
        object.__setattr__(self, "_ids", ids)
        if self.output_values is not None:
            out_keys = [_token_key(v) for v in self.output_values]
            if len(set(out_keys)) != len(out_keys):
                raise ModelError("Codec.output_values has duplicates")
        if self.max_seq_len < 1:
            raise ModelError(f"Codec.max_seq_len must be >= 1, got {self.max_seq_len}")

    @classmethod
    def from_vocab(cls, vocab: Iterable[Any], max_seq_len: int, *, bos: Any = "BOS", pad: Any = None,
                   output_encoding: str = "categorical", output_values: Iterable[Any] | None = None) -> Codec:
        """Build the contract's codec: ids `[bos] + sorted(vocab) (+ [pad])`, outputs sorted too."""
        vocab = sort_values(vocab)
        for special, name in ((bos, "BOS"), (pad, "PAD")):
            if special is not None and any(_token_key(v) == _token_key(special) for v in vocab):
                raise ModelError(f"the {name} token {special!r} is also a vocabulary value")
        if pad is not None and _token_key(pad) == _token_key(bos):
            raise ModelError(f"the PAD token {pad!r} equals the BOS token")
        tokens = [bos, *vocab] + ([pad] if pad is not None else [])
        outs = sort_values(output_values) if output_values is not None else None
        return cls(tokens, bos, pad, int(max_seq_len), output_encoding, outs)

    # -- inputs

    @property
    def vocab(self) -> list[Any]:
        """The input values without BOS and PAD, in id order."""
        end = len(self.input_tokens) - (1 if self.pad is not None else 0)
        return self.input_tokens[1:end]

    @property
    def bos_id(self) -> int:
        return 0

    @property
    def pad_id(self) -> int | None:
        return None if self.pad is None else len(self.input_tokens) - 1

    @property
    def d_vocab(self) -> int:
        return len(self.input_tokens)

    def token_id(self, token: Any) -> int:
        """Id of one input token; ModelError if it is not in the vocabulary."""
        try:
            return self._ids[_token_key(token)]  # type: ignore[attr-defined]
        except (KeyError, TypeError):
            raise ModelError(f"token {token!r} is not in the input vocabulary {self.vocab!r}") from None

    def encode(self, tokens: Sequence[Any]) -> list[int]:
        """`[bos, x1, ..., xn]` -> ids. The BOS token must come first and only first; n <= max_seq_len."""
        tokens = list(tokens)
        if not tokens or _token_key(tokens[0]) != _token_key(self.bos):
            first = tokens[0] if tokens else "nothing"
            raise ModelError(f"input must start with the BOS token {self.bos!r}, got {first!r}")
        if len(tokens) - 1 > self.max_seq_len:
            raise ModelError(f"input has {len(tokens) - 1} tokens after BOS, "
                             f"max_seq_len is {self.max_seq_len}")
        ids = [self.token_id(t) for t in tokens]
        if 0 in ids[1:]:
            raise ModelError(f"the BOS token {self.bos!r} may only appear at position 0")
        return ids

    def decode_tokens(self, ids: Iterable[int]) -> list[Any]:
        """Ids -> input tokens (inverse of `encode`)."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.input_tokens):
                raise ModelError(f"token id {i} is outside [0, d_vocab={len(self.input_tokens)})")
            out.append(self.input_tokens[i])
        return out

    # -- outputs

    def decode(self, output: np.ndarray, *, bos_first: bool = True) -> list[Any]:
        """Logits `[T, d_vocab_out]` -> one value per position (tracr's `decoded`).

        With `bos_first`, position 0 decodes to the BOS token, as tracr's `apply` does.
        """
        output = np.asarray(output)
        if output.ndim != 2:
            raise ModelError(f"decode expects output of shape [T, d_vocab_out], got {output.shape}")
        if self.output_encoding == "categorical":
            assert self.output_values is not None
            if output.shape[1] != len(self.output_values):
                raise ModelError(f"output has {output.shape[1]} columns, the codec has "
                                 f"{len(self.output_values)} output values")
            values = [self.output_values[int(i)] for i in np.argmax(output, axis=-1)]
        else:
            if output.shape[1] != 1:
                raise ModelError(f"a numerical output has 1 column, got {output.shape[1]}")
            values = [float(x) for x in output[:, 0]]
        if bos_first and values:
            values[0] = self.bos
        return values

    # -- files

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict; token values keep their exact Python types (see `encode_value`)."""
        return {
            "input_tokens": [encode_value(v) for v in self.input_tokens],
            "bos": encode_value(self.bos),
            "pad": encode_value(self.pad),
            "max_seq_len": self.max_seq_len,
            "output_encoding": self.output_encoding,
            "output_values": (None if self.output_values is None
                              else [encode_value(v) for v in self.output_values]),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Codec:
        if not isinstance(data, dict):
            raise ModelError(f"codec must be a JSON object, got {type(data).__name__}")
        try:
            outs = data["output_values"]
            return cls(
                input_tokens=[decode_value(v) for v in data["input_tokens"]],
                bos=decode_value(data["bos"]),
                pad=decode_value(data["pad"]),
                max_seq_len=int(data["max_seq_len"]),
                output_encoding=data["output_encoding"],
                output_values=None if outs is None else [decode_value(v) for v in outs],
            )
        except KeyError as e:
            raise ModelError(f"codec JSON lacks field {e.args[0]!r}") from None


def encode_value(value: Any) -> list:
    """A token value as a JSON-able `[type, payload]` pair that `decode_value` inverts exactly.

    Floats travel as `repr` strings so that inf/nan and every bit survive; tuples recursively.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        return ["int", value]
    if isinstance(value, float):
        return ["float", repr(value)]
    if isinstance(value, str):
        return ["str", value]
    if value is None:
        return ["none", None]
    if isinstance(value, tuple):
        return ["tuple", [encode_value(v) for v in value]]
    raise ModelError(f"token value {value!r} of type {type(value).__name__} cannot be saved "
                     "(supported: bool, int, float, str, None, tuple)")


def decode_value(data: Any) -> Any:
    """Inverse of `encode_value`."""
    if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], str)):
        raise ModelError(f"malformed saved token value {data!r}")
    kind, payload = data
    if kind == "bool" and isinstance(payload, bool):
        return payload
    if kind == "int" and isinstance(payload, int) and not isinstance(payload, bool):
        return payload
    if kind == "float" and isinstance(payload, str):
        try:
            return float(payload)
        except ValueError:
            pass
    if kind == "str" and isinstance(payload, str):
        return payload
    if kind == "none" and payload is None:
        return None
    if kind == "tuple" and isinstance(payload, list):
        return tuple(decode_value(v) for v in payload)
    raise ModelError(f"malformed saved token value {data!r}")


# ---------------------------------------------------------------------------------------- output blocks


def output_columns(annotation: Any) -> dict[str, dict[str, Any]] | None:
    """The per-output `W_U` column blocks of a multi-output model (`rasp_compiler.multi`), else None.

    A multi-output annotation is a JSON dict with `output_columns` = {name: {start, end, encoding,
    values}}; any other annotation (an `Annotation` object, a single-output dict) has none.
    """
    if isinstance(annotation, dict):
        cols = annotation.get("output_columns")
        if cols:
            return cols
    return None


def decode_block(logits: np.ndarray, start: int, end: int, encoding: str, values: Sequence[Any] | None
                 ) -> list[Any]:
    """Logits `[T, d_vocab_out]` -> one value per row, read from columns [start, end) only: the argmax
    over that block for a categorical output, column `start` for a numerical one."""
    part = np.asarray(logits)[:, start:end]
    if encoding == "categorical":
        assert values is not None
        return [values[int(i)] for i in np.argmax(part, axis=-1)]
    return [float(x) for x in part[:, 0]]


# ----------------------------------------------------------------------------------------------- model


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
    annotation: Any = None
    program_source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.config, ModelConfig):
            raise ModelError(f"CompiledModel.config must be a ModelConfig, got {type(self.config).__name__}")
        if not isinstance(self.codec, Codec):
            raise ModelError(f"CompiledModel.codec must be a Codec, got {type(self.codec).__name__}")
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

        A multi-output model (`rasp_compiler.multi`) decodes each output over its own `W_U` columns
        and gives {output name: values}; one argmax across all outputs' columns would mean nothing.
        """
        cols = output_columns(self.annotation)
        if cols is None:
            return self.codec.decode(output, bos_first=bos_first)
        output = np.asarray(output)
        width = max(int(c["end"]) for c in cols.values())
        if output.ndim != 2 or output.shape[1] != width:
            raise ModelError(f"decode expects output of shape [T, {width}] (the multi-output model's "
                             f"W_U columns), got {output.shape}")
        out: dict[str, list[Any]] = {}
        for name, c in cols.items():
            vals = c.get("values")
            values = decode_block(output, int(c["start"]), int(c["end"]), str(c["encoding"]),
                                  None if vals is None else [decode_value(v) for v in vals])
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
        from rasp_compiler.torch_model import HookedCompiledTransformer

        module = HookedCompiledTransformer.from_compiled(self)
        return module if device is None else module.to(device)

    def save(self, directory: Any) -> None:
        """Write `weights.safetensors` + `model.json` into `directory` (see `rasp_compiler.io`)."""
        from rasp_compiler.io import save

        save(self, directory)

    def annotation_json(self) -> Any:
        """The annotation as JSON-able data: `annotation.to_json()` if it has one, else as stored."""
        ann = self.annotation
        if ann is not None and hasattr(ann, "to_json"):
            data = ann.to_json()
            return json.loads(data) if isinstance(data, str) else data
        return ann

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


def _softmax_masked(scores: np.ndarray, key_mask: np.ndarray | None) -> np.ndarray:
    """Softmax over the last axis; keys where key_mask is True get -inf (contract: PAD keys)."""
    if key_mask is not None:
        scores = np.where(key_mask[:, None, None, :], -np.inf, scores)
    m = scores.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(scores - m)
    s = e.sum(axis=-1, keepdims=True)
    return (e / np.where(s == 0, 1.0, s)).astype(np.float32)


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
    key_mask = (toks == config.pad_token_id) if config.pad_token_id is not None else None
    for layer in range(config.n_layers):
        a = f"blocks.{layer}.attn."
        q = np.einsum("btm,hmd->bthd", x, w[a + "W_Q"]) + w[a + "b_Q"]
        k = np.einsum("btm,hmd->bthd", x, w[a + "W_K"]) + w[a + "b_K"]
        v = np.einsum("btm,hmd->bthd", x, w[a + "W_V"]) + w[a + "b_V"]
        scores = np.einsum("bqhd,bkhd->bhqk", q, k)
        pattern = _softmax_masked(scores, key_mask)
        z = np.einsum("bhqk,bkhd->bqhd", pattern, v)
        result = np.einsum("bthd,hdm->bthm", z, w[a + "W_O"])
        attn_out = result.sum(axis=2) + w[a + "b_O"]
        if keep:
            p = f"blocks.{layer}."
            cache[p + "hook_resid_pre"] = x
            cache[a + "hook_q"], cache[a + "hook_k"], cache[a + "hook_v"] = q, k, v
            cache[a + "hook_attn_scores"] = (np.where(key_mask[:, None, None, :], -np.inf, scores)
                                             if key_mask is not None else scores)
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


def __getattr__(name: str) -> Any:
    # The Annotation class lives in rasp_compiler/annotation.py (written by the compiler); re-export it
    # lazily so that `from rasp_compiler.model import Annotation` works without an import cycle.
    if name == "Annotation":
        from rasp_compiler.annotation import Annotation

        return Annotation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
