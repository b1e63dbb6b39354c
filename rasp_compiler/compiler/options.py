"""The one options object every compiler stage receives, and the compiler's error type."""

from __future__ import annotations

import dataclasses
from typing import Any

QK_ENCODINGS = ("smallest", "tracr")


class CompileError(ValueError):
    """A program cannot be compiled exactly. The message names the RASP op (by label)."""


class UnsupportedProgramError(CompileError, NotImplementedError):
    """Raised by static validation; also a NotImplementedError, as tracr raises for unsupported programs."""


@dataclasses.dataclass(frozen=True)
class CompilerOptions:
    """Everything that steers compilation.

    vocab / max_seq_len: the inputs the model must be exact on.
    bos / pad: the special tokens (pad None: no padding token).
    mlp_exactness: tracr's knob. Our discretising MLPs are exact by construction and checked at
      compile time; this only sets the ramp of each step as a fraction of the gap it sits in
      (ramp = gap / 2 for mlp_exactness >= 2, wider below), never making a block inexact.
    max_value_set: largest value set enumerated for one SOp (numerical aggregates: achievable means;
      a numerical SOp's set only sizes its discretising MLP's breakpoints, never the residual).
    max_categorical_values: most values (residual directions) one categorical SOp may have.
    max_mlp_hidden: largest hidden width allowed for one op's MLP.
    max_exhaustive_inputs: largest input space (sequences of length 1..max_seq_len) the compiler evaluates
      exhaustively when the program's structure cannot prove that a categorical Aggregate's selected
      values agree, or that no Select compares None (see compiler.preconditions); above it such a
      program is refused.
    softmax_tolerance: target error of any attention weight in float32 (sets the inverse temperature).
    output_tolerance: largest float32 error bound allowed on a numerical output (absolute). Numerical
      intermediates carry error bounds (MLP float32 error measured at compile time, softmax leaks,
      inputs); every discretising MLP checks that its input's bound stays inside its flat regions.
    categorical_tolerance: error allowed on a one-hot MLP output (readers threshold far below 0.5).
    none_as_zero: allow numerical SOps computed from values that can be None (nothing selected);
      the model holds 0 there where `evaluate` gives None. Off: such programs are refused.
    fuse_maps: compute `Map(f, C)` and an elementwise C read only by it in one MLP (one layer less
      per fused pair; C then has no residual directions; the annotation lists both ops on the MLP).
    fold_embeddings: compute SOps that depend only on tokens (or only on indices) in the embeddings.
    causal: a decoder-only model (every head masked to keys at or before the query), exact against the
      prefix evaluation `rasp.evaluate_prefixes`; programs that read a value across positions which
      appending tokens can change are refused (see compiler.prefixes).
    qk_encoding: how each head's predicate table is factored into W_Q and W_K (the residual layout and
      every score stay the same). "smallest": the factorisation with the fewest non-zero weights
      (query classes, key classes, or, for order comparisons, a sum over aligned blocks of key ranks:
      O(n log n) weights instead of O(n^2)); "tracr": tracr's own (the table in W_Q, one key direction
      per key value in W_K). The annotation records the choice per head.
    """

    vocab: frozenset[Any]
    max_seq_len: int
    bos: Any = "BOS"
    pad: Any = None
    mlp_exactness: float = 100.0
    max_value_set: int = 1_000_000
    max_categorical_values: int = 20_000
    max_mlp_hidden: int = 200_000
    max_exhaustive_inputs: int = 20_000
    softmax_tolerance: float = 1e-7
    output_tolerance: float = 1e-4
    categorical_tolerance: float = 1e-3
    none_as_zero: bool = False
    fuse_maps: bool = False
    fold_embeddings: bool = False
    causal: bool = False
    qk_encoding: str = "smallest"

    def __post_init__(self) -> None:
        if isinstance(self.vocab, (str, bytes)) or not hasattr(self.vocab, "__iter__"):
            kind = type(self.vocab).__name__
            raise CompileError(f"vocab must be a collection of tokens (a set), got {kind} {self.vocab!r}")
        try:
            object.__setattr__(self, "vocab", frozenset(self.vocab))
        except TypeError as e:
            raise CompileError(f"vocab tokens must be hashable values ({e})") from None
        if not self.vocab:
            raise CompileError("vocab is empty")
        if (
            isinstance(self.max_seq_len, bool)
            or not isinstance(self.max_seq_len, int)
            or self.max_seq_len < 1
        ):
            raise CompileError(f"max_seq_len must be a positive int, got {self.max_seq_len!r}")
        for flag in ("none_as_zero", "fuse_maps", "fold_embeddings", "causal"):
            if not isinstance(getattr(self, flag), bool):
                raise CompileError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.qk_encoding not in QK_ENCODINGS:
            raise CompileError(
                f"qk_encoding must be one of {', '.join(QK_ENCODINGS)}, got {self.qk_encoding!r}"
            )
        if None in self.vocab:
            raise CompileError("the vocab contains None, which is no token: None is what an op yields where "
                               "it has no value (an Aggregate that selects nothing)")
        if self.bos in self.vocab:
            raise CompileError(f"the BOS token {self.bos!r} must not be in the vocab")
        if self.pad is not None and self.pad in self.vocab:
            raise CompileError(f"the PAD token {self.pad!r} must not be in the vocab")
        if self.pad is not None and self.pad == self.bos:
            raise CompileError("PAD and BOS tokens must differ")
        if not self.mlp_exactness > 0:
            raise CompileError(f"mlp_exactness must be > 0, got {self.mlp_exactness!r}")
