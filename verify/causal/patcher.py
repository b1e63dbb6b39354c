"""Runs ablation patch sets on one dataset: the C++ engine, or the PyTorch hook reference."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from rasp_compiler.engine import Engine
from rasp_compiler.model.names import writer_hook, writers
from rasp_compiler.model.patching import HookPatcher, ablation_values
from verify.circuit import as_edge, node_kind
from verify.dataset import ABLATIONS, CausalError, Dataset, MixedDataset, one_length

__all__ = ["BACKENDS", "MixedPatcher", "Patcher", "mean_over_lengths", "patcher_for"]

BACKENDS = ("auto", "engine", "torch", "float64")


class Patcher:
    """Runs ablation patch sets on one dataset: the C++ engine where it can, else PyTorch hooks.

    A patch set is a list of ablated edges (`Edge`, `"w->r<in>"` or tuples) and/or node names. Every
    item receives the writer's ablated value (`ablation`). `backend`: "auto", "engine", "torch", or
    "float64" (the PyTorch module in double precision: the reference that float32 rounding is checked
    against). `mean_values` (per writer `[1, T, d_model]`, e.g. `mean_over_lengths`) replaces the
    dataset's own means under mean ablation (sliced to the dataset's length).
    """

    def __init__(
        self,
        model: Any,
        dataset: Dataset,
        ablation: str = "resample",
        backend: str = "auto",
        threads: int | None = 1,
        mean_values: dict[str, np.ndarray] | None = None,
    ) -> None:
        if ablation not in ABLATIONS:
            raise CausalError(f"unknown ablation {ablation!r}; expected one of {ABLATIONS}")
        if backend not in BACKENDS:
            raise CausalError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        self.model, self.dataset, self.ablation = model, one_length(dataset, "Patcher"), ablation
        self._mean_values = mean_values if ablation == "mean" else None
        self.n_forward = 0
        self._hook: HookPatcher | None = None
        self._ablated: dict[str, Any] | None = None
        self._engine = None
        self._engine_sources: dict[str, np.ndarray] | None = None
        if backend in ("auto", "engine"):
            self._engine = Engine(model, threads=threads)
        self.backend = "engine" if self._engine is not None else backend
        self._clean: np.ndarray | None = None
        self._items: dict[Any, Any] = {}

    @property
    def hook(self) -> HookPatcher:
        if self._hook is None:
            module = self.model.to_torch()
            self._hook = HookPatcher(module.double() if self.backend == "float64" else module)
        return self._hook

    def ablated_values(self) -> dict[str, Any]:
        """Per writer, the torch tensor an ablated edge delivers."""
        if self._ablated is None and self._mean_values is not None:
            import torch

            B, T = np.asarray(self.dataset.clean_ids).shape
            self._ablated = {w: torch.as_tensor(np.asarray(v)[:, :T]).expand(B, T, -1).contiguous()
                             for w, v in self._mean_values.items()}
        if self._ablated is None:
            self._ablated = ablation_values(
                self.hook, self.dataset.clean_ids, self.dataset.corrupt_ids, self.ablation
            )
        return self._ablated

    def clean(self) -> np.ndarray:
        """The unpatched model's outputs `[B, T, V]`."""
        if self._clean is None:
            if self._engine is not None:
                self._clean = np.asarray(self._engine.run(self.dataset.clean_ids))
            else:
                self._clean = self.hook.run(self.dataset.clean_ids).numpy().astype(np.float64)
        return self._clean

    @staticmethod
    def _item(item: Any) -> Any:
        if isinstance(item, str) and "->" not in item:
            node_kind(item)
            return item
        e = as_edge(item)
        return (e.writer, e.reader, e.input)

    def _engine_ablation_values(self) -> dict[str, np.ndarray]:
        """Mean / zero ablation values from the engine's own cached clean run (the same definition as
        `ablation_values`, without a PyTorch pass): per writer `[1, T, D]`, broadcast over the batch."""
        cfg = self.model.config
        ws = writers(cfg.n_layers, cfg.n_heads)
        clean = np.asarray(self.dataset.clean_ids)
        T, D = clean.shape[1], int(cfg.d_model)
        if self.ablation == "zero":
            return {w: np.zeros((1, T, D), np.float32) for w in ws}
        if self._mean_values is not None:
            return {w: np.ascontiguousarray(np.asarray(v)[:, :T], dtype=np.float32)
                    for w, v in self._mean_values.items()}
        return {w: v.mean(axis=0, keepdims=True, dtype=np.float32)
                for w, v in _writer_outputs(self._engine, clean, ws).items()}

    def _item_cached(self, item: Any) -> Any:
        """`_item`, memoised: ACDC hands the same (growing) list of edges over hundreds of times."""
        try:
            return self._items[item]
        except KeyError:
            out = self._items[item] = self._item(item)
            return out
        except TypeError:  # unhashable: convert (or raise) every time
            return self._item(item)

    def gated_outputs(self, gate_sets: Sequence[dict[str, float]]) -> np.ndarray:
        """Outputs `[S, B, T, V]`: in set s every node w (a writer name) delivers its clean output mixed
        with its ablated value, `clean + (1 - gate) * (ablated - clean)` (gate 1: untouched; 0: ablated);
        subnetwork probing's forward pass."""
        D = int(self.model.config.d_model)
        self.n_forward += len(gate_sets)
        if self._engine is not None:
            from rasp_compiler.engine import NodePatch

            sets = [[NodePatch(w, (1.0 - float(g)) * np.eye(D, dtype=np.float32)) for w, g in gates.items()]
                    for gates in gate_sets]
            return self._engine_sweep(sets)
        import torch

        from rasp_compiler.model.patching import PatchValue

        ablated, eye = self.ablated_values(), torch.eye(D)
        return np.stack([self.hook.run(self.dataset.clean_ids, nodes={
            w: PatchValue(ablated[w], (1.0 - float(g)) * eye) for w, g in gates.items()}).numpy()
            for gates in gate_sets])

    def outputs(self, patch_sets: Sequence[Iterable[Any]]) -> np.ndarray:
        """Outputs `[S, B, T, V]` of the patched runs, one per patch set."""
        sets = [[self._item_cached(i) for i in items] for items in patch_sets]
        self.n_forward += len(sets)
        if not sets:
            return np.zeros((0,) + self.clean().shape, dtype=np.float32)
        if self._engine is not None:
            return self._engine_sweep(sets)
        return self.hook.run_sets(self.dataset.clean_ids, self.ablated_values(), sets)

    def _engine_sweep(self, sets: list) -> np.ndarray:
        """The engine's outputs of patch sets, each patched item receiving its ablated value."""
        kwargs = {}
        if self.ablation != "resample":
            if self._engine_sources is None:
                self._engine_sources = self._engine_ablation_values()
            kwargs["source_outputs"] = self._engine_sources
        _, outs = self._engine.sweep(
            self.dataset.clean_ids, self.dataset.corrupt_ids, sets, "mse", return_outputs=True, **kwargs
        )
        return np.asarray(outs)


def _writer_outputs(engine: Engine, ids: np.ndarray, ws: Sequence[str]) -> dict[str, np.ndarray]:
    """Each writer's output `[B, T, d_model]` on a clean engine run of `ids`."""
    hooks = {w: writer_hook(w) for w in ws}
    _, cache = engine.run_with_cache(ids, names=sorted({h for h, _ in hooks.values()}))
    return {w: np.asarray(cache[hook]) if head is None else np.asarray(cache[hook])[:, :, head]
            for w, (hook, head) in hooks.items()}


def mean_over_lengths(model: Any, groups: Sequence[Dataset]) -> dict[str, np.ndarray]:
    """Per writer, its mean output `[1, T_max, d_model]` at each position over the clean inputs of every
    group that has that position: mean ablation across input lengths (float64 sums)."""
    cfg = model.config
    ws = writers(cfg.n_layers, cfg.n_heads)
    T_max = max(np.asarray(g.clean_ids).shape[1] for g in groups)
    sums = {w: np.zeros((T_max, int(cfg.d_model))) for w in ws}
    counts = np.zeros(T_max)
    engine = Engine(model, threads=1)
    for g in groups:
        ids = np.asarray(g.clean_ids)
        counts[: ids.shape[1]] += ids.shape[0]
        for w, v in _writer_outputs(engine, ids, ws).items():
            sums[w][: ids.shape[1]] += v.sum(axis=0, dtype=np.float64)
    return {w: (s / np.maximum(counts, 1)[:, None])[None] for w, s in sums.items()}


class MixedPatcher:
    """`Patcher`'s interface over a `MixedDataset`: one Patcher per length (mean ablation with the means
    over every length). Outputs stack the groups' examples, padded with NaN past each input's end, so
    the divergences (means over the non-NaN positions) weigh every position of every length alike."""

    def __init__(
        self, model: Any, dataset: MixedDataset, ablation: str = "resample", backend: str = "auto",
        threads: int | None = 1,
    ) -> None:
        means = mean_over_lengths(model, dataset.groups) if ablation == "mean" else None
        self.parts = [Patcher(model, g, ablation, backend, threads, mean_values=means)
                      for g in dataset.groups]
        self.model, self.dataset, self.ablation = model, dataset, ablation
        self.backend = self.parts[0].backend
        self._T = max(np.asarray(g.clean_ids).shape[1] for g in dataset.groups)
        self._clean: np.ndarray | None = None

    @property
    def n_forward(self) -> int:
        return sum(p.n_forward for p in self.parts)

    def _stack(self, arrays: list[np.ndarray], example_axis: int) -> np.ndarray:
        padded = []
        for a in arrays:
            widths = [(0, 0)] * a.ndim
            widths[example_axis + 1] = (0, self._T - a.shape[example_axis + 1])
            padded.append(np.pad(a.astype(np.float64), widths, constant_values=np.nan))
        return np.concatenate(padded, axis=example_axis)

    def clean(self) -> np.ndarray:
        if self._clean is None:
            self._clean = self._stack([p.clean() for p in self.parts], 0)
        return self._clean

    def outputs(self, patch_sets: Sequence[Iterable[Any]]) -> np.ndarray:
        patch_sets = [list(s) for s in patch_sets]
        return self._stack([p.outputs(patch_sets) for p in self.parts], 1)

    def gated_outputs(self, gate_sets: Sequence[dict[str, float]]) -> np.ndarray:
        return self._stack([p.gated_outputs(gate_sets) for p in self.parts], 1)


def patcher_for(
    model: Any, dataset: Dataset | MixedDataset, ablation: str = "resample", backend: str = "auto"
) -> Patcher | MixedPatcher:
    """A Patcher, or a MixedPatcher for a dataset of several lengths."""
    if isinstance(dataset, MixedDataset):
        return MixedPatcher(model, dataset, ablation, backend)
    return Patcher(model, dataset, ablation, backend)
