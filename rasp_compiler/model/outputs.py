"""Model outputs: which columns of `W_U` belong to which output, how logits decode to values, and the
one rule for "two decoded outputs are equal" that every check in the package uses.

A multi-output model (`rasp_compiler.compiler.multi`) records per-output column blocks in its
annotation; a single-output model has one block spanning every column.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rasp_compiler.model.errors import ModelError
from rasp_compiler.model.values import is_number, token_key


class MultiOutputError(ModelError):
    """An output name the model lacks, or a bad mapping of programs to outputs."""


# Numerical outputs are equal when |expected - got| <= OUTPUT_ATOL: the bound the compiler proves for
# every numerical output (`CompilerOptions.output_tolerance`). Categorical outputs are compared exactly.
OUTPUT_ATOL = 1e-4


def values_equal(expected: Any, got: Any, numerical: bool, atol: float = OUTPUT_ATOL) -> bool:
    """Whether one decoded output value equals the expected one.

    `None` only equals `None`. A numerical output's numbers are equal within the tolerance above. A
    categorical output's values are equal by value and kind: `0 == 0.0`, but `True != 1` (distinct
    tokens, as `token_key` says), and two categories never merge however close they are.
    """
    if expected is None or got is None:
        return expected is None and got is None
    if numerical and is_number(expected) and is_number(got):
        e, g = float(expected), float(got)
        if math.isinf(e) or math.isinf(g):
            return e == g
        return abs(e - g) <= atol
    try:
        return bool(token_key(expected) == token_key(got))
    except TypeError:
        return False


def positions_equal(expected: Sequence[Any], got: Sequence[Any], numerical: bool, atol: float = OUTPUT_ATOL
                    ) -> list[bool]:
    """Per position, `values_equal` of two equally long output sequences."""
    if len(expected) != len(got):
        raise ModelError(f"output sequences of different lengths ({len(expected)} and {len(got)})")
    return [values_equal(e, g, numerical, atol) for e, g in zip(expected, got, strict=True)]


def outputs_equal(expected: Sequence[Any], got: Sequence[Any], numerical: bool, atol: float = OUTPUT_ATOL
                  ) -> bool:
    """Whether two decoded output sequences are equal: same length, every position `values_equal`."""
    return len(expected) == len(got) and all(positions_equal(expected, got, numerical, atol))


def decode_block(logits: np.ndarray, start: int, end: int, encoding: str, values: Sequence[Any] | None
                 ) -> list[Any]:
    """Logits `[T, d_vocab_out]` -> one value per row, read from columns [start, end) only: the argmax
    over that block for a categorical output, column `start` for a numerical one."""
    part = np.asarray(logits)[:, start:end]
    if encoding == "categorical":
        assert values is not None
        return [values[int(i)] for i in np.argmax(part, axis=-1)]
    return [float(x) for x in part[:, 0]]


@dataclasses.dataclass(frozen=True)
class OutputBlock:
    """One output's share of the unembedding: columns [start, end) of W_U."""

    name: str
    label: str  # the op label (residual directions and ground truth speak of it)
    start: int
    end: int
    encoding: str
    values: tuple[Any, ...] | None  # categorical: the value of each column


def output_blocks(model: Any) -> list[OutputBlock]:
    """The model's outputs; a single-output model has one block spanning every column."""
    ann = model.annotation
    cols = ann.output_columns if ann is not None else {}
    if not cols:
        label = ann.output if ann is not None else "output"
        vals = model.codec.output_values
        return [
            OutputBlock(
                label,
                label,
                0,
                model.config.d_vocab_out,
                model.config.output_encoding,
                None if vals is None else tuple(vals),
            )
        ]
    return [OutputBlock(name, ann.output_names.get(name, name), c.start, c.end, c.encoding, c.values)
            for name, c in cols.items()]


def output_names(model: Any) -> list[str]:
    return [b.name for b in output_blocks(model)]


def find_block(model: Any, name: str) -> OutputBlock:
    for b in output_blocks(model):
        if name in (b.name, b.label):
            return b
    raise MultiOutputError(f"output {name!r} is not an output of the model (outputs: {output_names(model)})")


def decode_outputs(model: Any, logits: np.ndarray) -> dict[str, list[Any]]:
    """Logits `[T, d_vocab_out]` (BOS first) -> {output name: one value per input position (no BOS)}."""
    logits = np.asarray(logits)
    blocks = output_blocks(model)
    return {b.name: decode_block(logits[1:], b.start, b.end, b.encoding, b.values) for b in blocks}
