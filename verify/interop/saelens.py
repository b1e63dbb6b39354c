"""Sparse autoencoders trained by SAE-Lens itself on a compiled model's activations, for scoring against
the feature truth (`verify.features.score_dictionary`).

SAE-Lens's `LanguageModelSAETrainingRunner` streams text from a Hugging Face dataset through a
HookedTransformer; our models take token ids, not text, so that pipeline stops at its dataset step. The
closest public entry point is its own training loop, `SAETrainer`, which takes any iterator of
activation batches: the SAE classes, loss, optimizer, schedule and dead-latent bookkeeping are SAE-Lens's,
unchanged. `site_activations` collects the activations on every input (or a sample) with the engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from rasp_compiler.compiler.preconditions import all_inputs, count_inputs
from rasp_compiler.model.values import sort_values
from verify.features import cached_runs

__all__ = ["site_activations", "train_sae"]


def site_activations(model: Any, site: str, max_inputs: int = 20_000, seed: int = 0) -> np.ndarray:
    """`[n, d_model]` activations at `site` over every input position but BOS, on every input of every
    length when there are at most `max_inputs` inputs, else on `max_inputs` random ones."""
    vocab, n = sort_values(model.codec.vocab), int(model.config.max_seq_len)
    if count_inputs(len(vocab), n) <= max_inputs:
        inputs = list(all_inputs(vocab, n))
    else:
        rng = np.random.default_rng(seed)
        lengths = rng.integers(1, n + 1, max_inputs)
        inputs = [[vocab[i] for i in rng.integers(0, len(vocab), int(k))] for k in lengths]
    d_model = int(model.config.d_model)
    return np.concatenate([np.asarray(cache[site])[:, 1:].reshape(-1, d_model)
                           for _, cache in cached_runs(model, inputs, [site])])


def train_sae(
    activations: np.ndarray,
    d_sae: int,
    *,
    architecture: str = "standard",
    l1_coefficient: float = 0.5,
    k: int | None = None,
    samples: int = 200_000,
    batch_size: int = 512,
    lr: float = 3e-3,
    seed: int = 0,
) -> Any:
    """A SAE-Lens training SAE trained by SAE-Lens's `SAETrainer` on rows of `activations` (drawn
    uniformly with `seed`); its decoder is `sae.W_dec` `[d_sae, d_model]`. `architecture`: "standard"
    (`StandardTrainingSAE`, ReLU with an L1 penalty `l1_coefficient`) or "topk" / "batchtopk"
    (`TopKTrainingSAE` / `BatchTopKTrainingSAE`, `k` latents per row)."""
    import warnings

    import torch

    with warnings.catch_warnings():  # SAE-Lens imports TransformerLens 3's deprecated `utils` module
        warnings.simplefilter("ignore", DeprecationWarning)
        import sae_lens
        from sae_lens.config import LoggingConfig, SAETrainerConfig

    acts = torch.as_tensor(np.asarray(activations), dtype=torch.float32)
    torch.manual_seed(seed)
    if architecture == "standard":
        sae = sae_lens.StandardTrainingSAE(
            sae_lens.StandardTrainingSAEConfig(d_in=acts.shape[1], d_sae=d_sae, l1_coefficient=l1_coefficient)
        )
    elif architecture in ("topk", "batchtopk"):
        if k is None or k < 1:
            raise ValueError(f"train_sae: architecture {architecture!r} needs k >= 1, got {k!r}")
        cls, cfg = ((sae_lens.TopKTrainingSAE, sae_lens.TopKTrainingSAEConfig) if architecture == "topk"
                    else (sae_lens.BatchTopKTrainingSAE, sae_lens.BatchTopKTrainingSAEConfig))
        sae = cls(cfg(d_in=acts.shape[1], d_sae=d_sae, k=int(k)))
    else:
        raise ValueError(f"train_sae: architecture must be 'standard', 'topk' or 'batchtopk', got "
                         f"{architecture!r}")

    def batches() -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        while True:
            yield acts[torch.randint(0, acts.shape[0], (batch_size,), generator=g)]

    cfg = SAETrainerConfig(
        total_training_samples=samples,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=10,
    )
    return sae_lens.SAETrainer(cfg, sae, batches()).fit()
