"""Metrics of a patched run against the clean run and the task: KL, MSE, logit difference, accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np

from rasp_compiler.model.outputs import OUTPUT_ATOL, positions_equal
from verify.dataset import Dataset, decode_outputs, is_numerical_output


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def kl_to_clean(clean: np.ndarray, patched: np.ndarray) -> float:
    """Mean over examples and non-BOS positions of KL(softmax(clean) || softmax(patched)). Positions that
    are NaN (past an input's end in a mixed-length batch, `MixedPatcher`) are left out here and below."""
    p, q = _softmax(clean[:, 1:].astype(np.float64)), _softmax(patched[:, 1:].astype(np.float64))
    return float(np.nanmean(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30)), axis=-1)))


def mse_to_clean(clean: np.ndarray, patched: np.ndarray) -> float:
    return float(np.nanmean((clean[:, 1:].astype(np.float64) - patched[:, 1:]) ** 2))


def l2_to_clean(clean: np.ndarray, patched: np.ndarray) -> float:
    """Mean over examples and non-BOS positions of the Euclidean distance between output vectors (the
    ACDC paper's metric on its tracr tasks)."""
    diff = clean[:, 1:].astype(np.float64) - patched[:, 1:]
    return float(np.nanmean(np.linalg.norm(diff, axis=-1)))


def divergence(model: Any, clean: np.ndarray, patched: np.ndarray) -> float:
    """ACDC's metric: KL to the clean output for categorical outputs, MSE for numerical ones."""
    if model.config.output_encoding == "categorical":
        return kl_to_clean(clean, patched)
    return mse_to_clean(clean, patched)


def _expected_index(model: Any, dataset: Dataset) -> np.ndarray:
    values = list(model.codec.output_values)
    return np.array([[values.index(v) if v in values else -1 for v in row] for row in dataset.expected])


def logit_diff(model: Any, dataset: Dataset, out: np.ndarray) -> float:
    """Mean over positions of (logit of the expected answer) - (largest other logit)."""
    idx = _expected_index(model, dataset)
    logits = out[:, 1:].astype(np.float64)
    b, t = np.indices(idx.shape)
    right = logits[b, t, np.maximum(idx, 0)]
    masked = logits.copy()
    masked[b, t, np.maximum(idx, 0)] = -np.inf
    return float(np.mean(np.where(idx >= 0, right - masked.max(axis=-1), np.nan)))


def task_accuracy(model: Any, dataset: Dataset, out: np.ndarray, atol: float = OUTPUT_ATOL) -> float:
    """Fraction of (example, position) outputs equal to `rasp.evaluate`'s."""
    decoded = decode_outputs(model, out)
    flags = [
        f
        for got, want in zip(decoded, dataset.expected, strict=True)
        for f in positions_equal(got, want, is_numerical_output(model), atol)
    ]
    return float(np.mean(flags))
