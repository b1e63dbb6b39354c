"""A compiled model and a `Dataset` as auto-circuit wants them: a `PatchableModel` and prompt loaders.

auto-circuit 1.0.x imports only with TransformerLens 2.x (`pip install 'transformer-lens==2.18.*'
auto-circuit==1.0.1 'pyarrow<20'`); the TL export works on 2.x and 3.x. Conventions auto-circuit's
tracr tasks use, kept here: BOS is position 0 and is never scored (`slice_output="not_first_seq"`);
a categorical output's answer at each position is the `W_U` column of the true value and the wrong
answers are the other columns (shape `[T, 1]` and `[T, n_values - 1]`, for `avg_diff`/`avg_val`); a
numerical output's answer is the true value itself (`[T, 1]` floats), for `answer_function="mse"` and
ACDC's `faithfulness_target="mse"`. `task.objective` names the fitting choice.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np

from rasp_compiler.model.export import to_hooked_transformer
from verify.dataset import Dataset

__all__ = ["ALGORITHMS", "AutoCircuitMethod", "AutoCircuitTask", "autocircuit_task"]


@dataclasses.dataclass(frozen=True)
class AutoCircuitTask:
    """What auto-circuit's algorithms take: the patchable model, train and test loaders, and the objective
    that fits the output (`"kl_div"` + `"avg_diff"` for categorical, `"mse"` for numerical outputs)."""

    model: Any  # auto_circuit.utils.patchable_model.PatchableModel
    train_loader: Any  # auto_circuit.data.PromptDataLoader
    test_loader: Any
    faithfulness_target: str  # for acdc_prune_scores
    answer_function: str  # for mask_gradient_prune_scores (EAP, integrated gradients)

    @property
    def objective(self) -> str:
        return f"faithfulness_target={self.faithfulness_target!r}, answer_function={self.answer_function!r}"


def autocircuit_task(
    model: Any,
    dataset: Dataset,
    *,
    test_fraction: float = 0.5,
    batch_size: int | None = None,
    per_position: bool = False,
    device: str = "cpu",
) -> AutoCircuitTask:
    """The model exported to TransformerLens and made patchable (factorized, separate q/k/v), with the
    dataset's clean/corrupt pairs split into train and test loaders (one batch each by default: ACDC
    reads only the first). `per_position=True` gives auto-circuit one edge per token position."""
    import torch
    from auto_circuit.data import PromptDataLoader, PromptDataset
    from auto_circuit.utils.graph_utils import patchable_model

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    n = len(dataset)
    n_test = max(1, round(n * test_fraction))
    if n - n_test < 1:
        raise ValueError(f"a dataset of {n} pairs cannot be split into train and test; give at least 2")
    clean = torch.as_tensor(np.asarray(dataset.clean_ids), dtype=torch.long)
    corrupt = torch.as_tensor(np.asarray(dataset.corrupt_ids), dtype=torch.long)
    answers, wrong = _answers(model, dataset)
    seq_len = clean.shape[1] if per_position else None

    def loader(rows: slice) -> Any:
        part = PromptDataset(clean[rows], corrupt[rows], answers[rows], wrong[rows])
        size = batch_size or len(part)
        return PromptDataLoader(part, seq_len=seq_len, diverge_idx=0, batch_size=size, shuffle=False)

    ht = to_hooked_transformer(model, device=device)
    patchable = patchable_model(
        ht,
        factorized=True,
        slice_output="not_first_seq",
        seq_len=seq_len,
        separate_qkv=True,
        device=torch.device(device),
    )
    numerical = model.codec.output_encoding == "numerical"
    return AutoCircuitTask(
        patchable,
        loader(slice(0, n - n_test)),
        loader(slice(n - n_test, n)),
        "mse" if numerical else "kl_div",
        "mse" if numerical else "avg_diff",
    )


def _answers(model: Any, dataset: Dataset) -> tuple[Any, Any]:
    """Per prompt: answers `[T, 1]` and wrong answers `[T, k]` (see the module docstring)."""
    import torch

    codec = model.codec
    if codec.output_encoding == "numerical":
        vals = [[float(v) for v in row] for row in dataset.expected]
        ans = torch.tensor(vals, dtype=torch.float32)[..., None]
        return ans, ans.clone()
    columns = {repr(v): i for i, v in enumerate(codec.output_values)}
    n_out = len(codec.output_values)
    answers, wrong = [], []
    for row in dataset.expected:
        cols = []
        for v in row:
            if repr(v) not in columns:
                raise ValueError(f"expected output {v!r} has no column in the model's output values")
            cols.append(columns[repr(v)])
        answers.append([[c] for c in cols])
        wrong.append([[o for o in range(n_out) if o != c] or [c] for c in cols])
    return torch.tensor(answers, dtype=torch.long), torch.tensor(wrong, dtype=torch.long)


ALGORITHMS = ("acdc", "eap", "eap_ig", "subnetwork_probing", "circuit_probing")


@dataclasses.dataclass(frozen=True)
class AutoCircuitMethod:
    """An auto-circuit algorithm as a tool `tool(model, dataset) -> {Edge: score}` for `verify.fuzz_tool`
    and `rasp-compiler evaluate`: run unchanged on `autocircuit_task(model, dataset)`, its prune scores
    read by `verify.formats.from_autocircuit_scores` (magnitudes; ACDC's kept edges first).

    Settings are auto-circuit's defaults except where noted: EAP is `mask_gradient_prune_scores` with
    `grad_function="logit"`, `mask_val=0`; EAP-IG the same with 10 integrated-gradient samples; circuit
    probing searches sizes 1, 2, 4, ..., 64 below the edge count (its default, "true_size", would need
    the truth). Ablation: the corrupt prompts (resample; auto-circuit's subnetwork and circuit probing
    patch with their token-wise mean, by its own code), or zero for EAP and EAP-IG. `seed` seeds
    `random`, numpy and torch before each run."""

    algorithm: str
    ablation: str = "resample"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown auto-circuit algorithm {self.algorithm!r}; one of {ALGORITHMS}")
        if self.ablation not in ("resample", "zero"):
            raise ValueError(f"auto-circuit ablation must be 'resample' or 'zero', got {self.ablation!r}")
        if self.ablation == "zero" and self.algorithm not in ("eap", "eap_ig"):
            raise ValueError(f"auto-circuit's {self.algorithm} patches with the corrupt prompts only")

    @property
    def name(self) -> str:
        return f"auto-circuit {self.algorithm} ({self.ablation})"

    def __call__(self, model: Any, dataset: Dataset) -> dict[Any, float]:
        import importlib

        import torch
        from auto_circuit.types import AblationType

        if not hasattr(torch.optim, "adam"):
            # auto-circuit's probing calls torch.optim.adam.Adam; torch 2.13 no longer binds the submodule
            # on torch.optim (importing it does not either), so bind it here
            torch.optim.adam = importlib.import_module("torch.optim.adam")

        from verify.formats import from_autocircuit_scores

        random.seed(self.seed)  # ACDC draws from `random`; the probing algorithms from torch
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)
        task = autocircuit_task(model, dataset)
        ablation = AblationType.RESAMPLE if self.ablation == "resample" else AblationType.ZERO
        scores = self._prune_scores(task, ablation)
        return from_autocircuit_scores(scores, model)

    def _prune_scores(self, task: AutoCircuitTask, ablation: Any) -> Any:
        if self.algorithm == "acdc":
            from auto_circuit.prune_algos.ACDC import acdc_prune_scores

            return acdc_prune_scores(task.model, task.train_loader, None,
                                     faithfulness_target=task.faithfulness_target)
        if self.algorithm in ("eap", "eap_ig"):
            from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores

            ig = self.algorithm == "eap_ig"
            return mask_gradient_prune_scores(
                task.model, task.train_loader, None, grad_function="logit",
                answer_function=task.answer_function, mask_val=None if ig else 0.0,
                integrated_grad_samples=10 if ig else None, ablation_type=ablation,
                clean_corrupt="corrupt" if self.ablation == "resample" else None,  # zero: no patch batch
            )
        target = "mse" if task.faithfulness_target == "mse" else "kl_div"
        if self.algorithm == "subnetwork_probing":
            from auto_circuit.prune_algos.subnetwork_probing import subnetwork_probing_prune_scores

            return subnetwork_probing_prune_scores(task.model, task.train_loader, None,
                                                   faithfulness_target=target)
        from auto_circuit.prune_algos.circuit_probing import circuit_probing_prune_scores

        n_edges = len(task.model.edges)
        sizes: list[int | str] = [k for k in (1, 2, 4, 8, 16, 32, 64) if k < n_edges]
        return circuit_probing_prune_scores(task.model, task.train_loader, None, circuit_sizes=sizes,
                                            faithfulness_target=target)
