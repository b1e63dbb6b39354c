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
from typing import Any

import numpy as np

from rasp_compiler.model.export import to_hooked_transformer
from verify.dataset import Dataset

__all__ = ["AutoCircuitTask", "autocircuit_task"]


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
