"""Datasets for causal checks and discovery methods: clean inputs, resampled corrupted inputs, the
evaluator's outputs; and decoding model outputs the way the datasets hold them. Torch-free, so tools
and the tool fuzzer can build datasets without loading the patching machinery."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rasp_compiler import rasp

__all__ = [
    "ABLATIONS",
    "CausalError",
    "Dataset",
    "MixedDataset",
    "dataset_from_inputs",
    "decode_outputs",
    "make_dataset",
]


ABLATIONS = ("resample", "mean", "zero")


class CausalError(ValueError):
    """Bad arguments to a causal check: unknown ablation, empty dataset, a variable the program lacks."""


@dataclasses.dataclass
class Dataset:
    """Clean inputs and corrupted (independently resampled, same length) inputs, with the outputs."""

    program: Any
    clean: list[list[Any]]
    corrupt: list[list[Any]]
    clean_ids: np.ndarray  # [N, T] with BOS
    corrupt_ids: np.ndarray
    expected: list[list[Any]]  # rasp.evaluate on clean
    corrupt_expected: list[list[Any]]
    seed: int = 0

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def length(self) -> int:
        return self.clean_ids.shape[1] - 1


@dataclasses.dataclass
class MixedDataset:
    """Pairs of several input lengths, one `Dataset` per length (a clean input and its corrupted partner
    share a length: patching replaces activations position by position). What accepts it
    (`necessary_edges`, `interchange_accuracy`, activation patching, ACDC, EAP, EAP-IG, subnetwork
    probing on the engine) runs every group and combines the results over all their examples; under mean
    ablation a writer's mean at a position is taken over every input of every length that has that
    position, so edges that carry `length` are tested for real."""

    groups: tuple[Dataset, ...]

    def __post_init__(self) -> None:
        if not self.groups:
            raise CausalError("a mixed dataset needs at least one group")
        lengths = [g.length for g in self.groups]
        if len(set(lengths)) != len(lengths):
            raise CausalError(f"a mixed dataset has one group per length, got lengths {sorted(lengths)}")

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups)

    @property
    def program(self) -> Any:
        return self.groups[0].program

    @property
    def lengths(self) -> list[int]:
        return [g.length for g in self.groups]

    @property
    def clean(self) -> list[list[Any]]:
        return [x for g in self.groups for x in g.clean]

    @property
    def corrupt(self) -> list[list[Any]]:
        return [x for g in self.groups for x in g.corrupt]

    @property
    def expected(self) -> list[list[Any]]:
        return [x for g in self.groups for x in g.expected]

    @property
    def corrupt_expected(self) -> list[list[Any]]:
        return [x for g in self.groups for x in g.corrupt_expected]


def make_dataset(
    model: Any,
    program: Any,
    n: int = 32,
    *,
    seed: int = 0,
    length: int | None = None,
    lengths: Any = None,
    distinct: bool = False,
    max_tries: int = 50,
) -> Dataset | MixedDataset:
    """`n` clean inputs of one `length` (default max_seq_len) drawn uniformly from the model's vocab, and
    `n` corrupted ones drawn independently (ACDC's "patch data"). Inputs on which the program raises
    (e.g. a categorical aggregate selecting differing values) are redrawn. `distinct`: no repeated tokens.

    `lengths` (a list of lengths, or "all" for 1..max_seq_len) instead draws each pair's length uniformly
    from it and returns a `MixedDataset` (a plain `Dataset` when one length remains); lengths too long
    for `distinct` tokens are left out. The default stays one length: every resample pair shares its
    length anyway, and existing results keep their meaning.
    """
    if lengths is not None:
        if length is not None:
            raise CausalError("make_dataset: give `length` or `lengths`, not both")
        return _mixed(model, program, n, seed, lengths, distinct, max_tries)
    vocab = list(model.codec.vocab)
    length = int(model.config.max_seq_len if length is None else length)
    if n < 1:
        raise CausalError(f"make_dataset: n must be >= 1, got {n}")
    if not 1 <= length <= model.config.max_seq_len:
        raise CausalError(f"make_dataset: length {length} outside 1..max_seq_len={model.config.max_seq_len}")
    if distinct and length > len(vocab):
        raise CausalError(f"make_dataset: {length} distinct tokens from a vocab of {len(vocab)}")
    rng = np.random.default_rng(seed)
    ev = rasp.Evaluator(causal=model.config.causal)

    def draw() -> tuple[list[Any], list[Any]]:
        for _ in range(max_tries):
            if distinct:
                xs = [vocab[i] for i in rng.permutation(len(vocab))[:length]]
            else:
                xs = [vocab[i] for i in rng.integers(0, len(vocab), size=length)]
            try:
                return xs, ev.evaluate(program, xs)
            except rasp.RASPEvaluationError:
                continue
        raise CausalError(f"make_dataset: the program raised on {max_tries} random inputs of length {length}")

    clean = [draw()[0] for _ in range(n)]
    corrupt = [draw()[0] for _ in range(n)]
    return dataset_from_inputs(model, program, clean, corrupt, seed=seed)


def one_length(dataset: Any, who: str) -> Any:
    """`dataset` itself, or a clear error for a MixedDataset handed to a method that patches one batch."""
    if isinstance(dataset, MixedDataset):
        raise CausalError(
            f"{who} runs on inputs of one length; this dataset has lengths {dataset.lengths}: run it on "
            "each of `dataset.groups` (necessary_edges, interchange_accuracy and the discovery baselines "
            "take the mixed dataset)"
        )
    return dataset


def _mixed(
    model: Any, program: Any, n: int, seed: int, lengths: Any, distinct: bool, max_tries: int
) -> Dataset | MixedDataset:
    n_max = int(model.config.max_seq_len)
    if isinstance(lengths, str):
        if lengths != "all":
            raise CausalError(f"make_dataset: lengths must be a list of ints or 'all', got {lengths!r}")
        lengths = range(1, n_max + 1)
    try:
        wanted = sorted({int(k) for k in lengths})
    except (TypeError, ValueError):
        raise CausalError(f"make_dataset: lengths must be a list of ints or 'all', got {lengths!r}") from None
    bad = [k for k in wanted if not 1 <= k <= n_max]
    if bad or not wanted:
        raise CausalError(f"make_dataset: lengths {bad or wanted} outside 1..max_seq_len={n_max}")
    if distinct:
        wanted = [k for k in wanted if k <= len(model.codec.vocab)]
    if n < len(wanted):
        raise CausalError(f"make_dataset: {n} pairs cannot cover {len(wanted)} lengths")
    rng = np.random.default_rng(seed)
    counts = np.bincount(rng.integers(0, len(wanted), size=n - len(wanted)), minlength=len(wanted)) + 1
    groups = tuple(
        make_dataset(model, program, int(c), seed=seed * 1009 + k, length=k, distinct=distinct,
                     max_tries=max_tries)
        for k, c in zip(wanted, counts, strict=True)
    )
    return groups[0] if len(groups) == 1 else MixedDataset(groups)


def dataset_from_inputs(
    model: Any, program: Any, clean: list[list[Any]], corrupt: list[list[Any]], *, seed: int = 0
) -> Dataset:
    """A Dataset of given clean and corrupted inputs (no BOS; all of one length), with the evaluator's
    outputs; e.g. the pairs a suite wrote to dataset.json."""
    if not clean or len(clean) != len(corrupt):
        raise CausalError(f"dataset: need as many corrupted as clean inputs (>= 1), got {len(clean)} and "
                          f"{len(corrupt)}")
    lengths = {len(x) for x in [*clean, *corrupt]}
    if len(lengths) != 1:
        raise CausalError(f"dataset: every input must have one length, got lengths {sorted(lengths)}")
    ev = rasp.Evaluator(causal=model.config.causal)
    exp = [ev.evaluate(program, list(x)) for x in clean]
    cexp = [ev.evaluate(program, list(x)) for x in corrupt]
    enc = model.codec.encode
    bos = model.codec.bos
    clean_ids = np.array([enc([bos, *x]) for x in clean], dtype=np.int64)
    corrupt_ids = np.array([enc([bos, *x]) for x in corrupt], dtype=np.int64)
    return Dataset(program, [list(x) for x in clean], [list(x) for x in corrupt], clean_ids, corrupt_ids,
                   exp, cexp, seed)


def is_numerical_output(model: Any) -> bool:
    return model.config.output_encoding == "numerical"


# A categorical output is decided only when its best logit beats the runner-up by this much; closer
# than that, float rounding (which differs between the engine, the torch module and a float64
# reference) would pick the answer. Compiled models separate their logits by about 1; exact ties (an
# ablation that zeroes everything, or averages two answers) land inside.
DECISION_MARGIN = 1e-3


def decided_positions(model: Any, out: np.ndarray, margin: float = DECISION_MARGIN) -> np.ndarray:
    """Bool `[B, T-1]` (no BOS): where the decoded output is decided by more than `margin` (categorical:
    top-1 minus top-2 logit; numerical outputs are always decided)."""
    out = np.asarray(out)[:, 1:]
    if model.config.output_encoding != "categorical" or out.shape[-1] < 2:
        return np.ones(out.shape[:2], dtype=bool)
    top2 = np.partition(out, -2, axis=-1)[..., -2:]
    return (top2[..., 1] - top2[..., 0]) > margin


def decode_outputs(model: Any, out: np.ndarray) -> list[list[Any]]:
    """Model outputs `[B, T, V]` -> values per example, without the BOS position."""
    out = np.asarray(out)
    if model.config.output_encoding == "categorical":
        values = model.codec.output_values
        idx = out[:, 1:].argmax(axis=-1)
        return [[values[int(i)] for i in row] for row in idx]
    return [[float(v) for v in row] for row in out[:, 1:, 0]]
