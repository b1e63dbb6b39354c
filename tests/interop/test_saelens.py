"""SAE-Lens (its SAE classes and training loop) trains on a compiled model's residual activations, and
the feature truth scores the result: better than a random dictionary, with its failures named."""

from __future__ import annotations

import numpy as np

from rasp_compiler.compiler.compiling import compile_rasp_to_model
from rasp_compiler.rasp.lib import LIBRARY
from verify import features
from verify.interop.saelens import site_activations, train_sae


def test_saelens_sae_on_sort_is_scored_against_the_true_features() -> None:
    entry = LIBRARY["sort"]
    model = compile_rasp_to_model(entry.builder(), entry.vocab, entry.max_seq_len)
    site = features.residual_sites(model)[-1]
    truth = features.feature_dictionary(model, site)
    acts = site_activations(model, site)
    assert acts.shape == (6372, model.config.d_model)  # every input of lengths 1..5, BOS left out
    # the truth reconstructs every activation exactly
    np.testing.assert_allclose(truth.reconstruct(truth.coefficients(acts)), acts, atol=1e-4)
    sae = train_sae(acts, d_sae=2 * len(truth), samples=100_000, seed=0)
    decoder = sae.W_dec.detach().numpy()
    assert decoder.shape == (2 * len(truth), model.config.d_model)
    learned = features.score_dictionary(decoder, truth)
    random = features.score_dictionary(np.random.default_rng(0).normal(size=decoder.shape), truth)
    assert learned.mean_max_cosine > random.mean_max_cosine + 0.1
    assert not learned.perfect and (learned.missing or learned.merged)  # named failures, not a bare number
    assert "mean max cosine" in learned.describe()


def test_topk_saes_train_through_saelens_and_bad_settings_are_named() -> None:
    import pytest

    entry = LIBRARY["hist"]
    model = compile_rasp_to_model(entry.builder(), entry.vocab, entry.max_seq_len)
    site = features.residual_sites(model)[-1]
    acts = site_activations(model, site)
    for arch in ("topk", "batchtopk"):
        sae = train_sae(acts, d_sae=16, architecture=arch, k=4, samples=20_000, seed=0)
        assert type(sae).__name__ == {"topk": "TopKTrainingSAE", "batchtopk": "BatchTopKTrainingSAE"}[arch]
        assert sae.W_dec.shape == (16, model.config.d_model)
    with pytest.raises(ValueError, match="needs k >= 1"):
        train_sae(acts, d_sae=16, architecture="topk")
    with pytest.raises(ValueError, match="'standard', 'topk' or 'batchtopk'"):
        train_sae(acts, d_sae=16, architecture="gated")
