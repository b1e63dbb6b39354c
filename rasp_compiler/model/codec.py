"""Token <-> id mapping for inputs and logits -> values for outputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from rasp_compiler.model.config import OUTPUT_ENCODINGS
from rasp_compiler.model.errors import ModelError
from rasp_compiler.model.values import decode_value, encode_value, sort_values, token_key


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
        if not self.input_tokens or token_key(self.input_tokens[0]) != token_key(self.bos):
            raise ModelError(f"Codec.input_tokens must start with the BOS token {self.bos!r}")
        if self.pad is not None and token_key(self.input_tokens[-1]) != token_key(self.pad):
            raise ModelError(f"Codec.input_tokens must end with the PAD token {self.pad!r}")
        ids: dict[Hashable, int] = {}
        for i, tok in enumerate(self.input_tokens):
            try:
                key = token_key(tok)
                hash(key)
            except TypeError as e:
                raise ModelError(f"input token {tok!r} is not hashable") from e
            if key in ids:
                raise ModelError(f"input token {tok!r} appears twice in the input vocabulary")
            ids[key] = i
        object.__setattr__(self, "_ids", ids)
        if self.output_values is not None:
            out_keys = [token_key(v) for v in self.output_values]
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
            if special is not None and any(token_key(v) == token_key(special) for v in vocab):
                raise ModelError(f"the {name} token {special!r} is also a vocabulary value")
        if pad is not None and token_key(pad) == token_key(bos):
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
            return self._ids[token_key(token)]  # type: ignore[attr-defined]
        except (KeyError, TypeError):
            raise ModelError(f"token {token!r} is not in the input vocabulary {self.vocab!r}") from None

    def encode(self, tokens: Sequence[Any]) -> list[int]:
        """`[bos, x1, ..., xn]` -> ids. The BOS token must come first and only first; n <= max_seq_len."""
        tokens = list(tokens)
        if not tokens or token_key(tokens[0]) != token_key(self.bos):
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
