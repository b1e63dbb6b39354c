"""The feature truth: at every site (residual, head and MLP outputs, MLP neurons) the true dictionary
reconstructs the activations exactly, categorical features fire exactly where the program's variable has
that value, on plain, rotated and compressed-but-exact models; a dictionary built from the truth scores
perfectly, and random, dropped, merged and split ones score lower with each failure named."""

from __future__ import annotations

import numpy as np
import pytest

from rasp_compiler.compiler.compiling import compile_rasp_to_model
from rasp_compiler.engine import Engine
from rasp_compiler.rasp import rasp
from rasp_compiler.rasp.lib import LIBRARY
from rasp_compiler.transforms import variants
from verify import causal, features
from verify.causal.program import ProgramRunner


def _setup(name: str):
    entry = LIBRARY[name]
    program = entry.builder()
    model = compile_rasp_to_model(program, entry.vocab, entry.max_seq_len)
    return model, program, causal.make_dataset(model, program, 16, seed=0, distinct=entry.distinct_tokens)


def _state_exact_compression(model):  # noqa: ANN001, ANN202
    """The model PCA-compressed to the rank of its residual states over every input: every state, so
    every intermediate value, survives (narrower widths can keep the outputs exact while corrupting
    intermediate variables where they do not matter; benchmarks/FEATURES.md has both widths)."""
    inputs = variants.all_inputs(model, max_inputs=5000)
    sites = features.residual_sites(model)
    states = [np.asarray(c[s]).reshape(-1, model.config.d_model)
              for _, c in features.cached_runs(model, [x[1:] for x in inputs], sites) for s in sites]
    rank = np.linalg.matrix_rank(np.concatenate(states).astype(np.float64), tol=1e-4)
    assert rank < model.config.d_model
    return variants.compress(model, int(rank), method="pca", seed=0, inputs=inputs)


@pytest.mark.parametrize("name", ["reverse", "sort", "hist", "frac_prevs", "most_frequent"])
@pytest.mark.parametrize("variant", ["plain", "rotated", "compressed"])
def test_true_dictionary_reconstructs_every_site_and_fires_with_the_program(name: str, variant: str) -> None:
    """Plain and rotated: each feature's coefficient is 1 exactly where the program's variable has that
    value. Compressed (more features than dimensions): the coefficients are not identifiable from the
    activations, but the plain model's (the program's) coefficients times the compressed vectors give
    the compressed activations exactly, at every site."""
    plain, program, data = _setup(name)
    model = plain
    if variant == "rotated":
        model = variants.rotate(plain, seed=1)
    elif variant == "compressed":
        model = _state_exact_compression(plain)
        final = features.residual_sites(model)[-1]
        assert model.config.d_model < len(features.feature_dictionary(model, final))
    sites = features.residual_sites(model) + features.component_sites(model)
    _, cache = Engine(model, threads=1).run_with_cache(data.clean_ids, names=sites)
    _, plain_cache = Engine(plain, threads=1).run_with_cache(data.clean_ids, names=sites)
    runner = ProgramRunner(program)
    values = [runner.values(x) for x in data.clean]
    checked = 0
    for site in sites:
        truth = features.feature_dictionary(model, site)
        acts = np.asarray(cache[site], dtype=np.float64)
        np.testing.assert_allclose(truth.reconstruct(truth.coefficients(acts)), acts, atol=1e-4)
        plain_truth = features.feature_dictionary(plain, site)
        assert plain_truth.labels == truth.labels
        coef = plain_truth.coefficients(np.asarray(plain_cache[site], dtype=np.float64))
        np.testing.assert_allclose(truth.reconstruct(coef), acts, atol=1e-3)  # the program's coefficients
        for k, d in enumerate(truth.directions):
            if d.value is None or d.variable == "tokens" or not runner.by_label.get(d.variable):
                continue
            (expr,) = runner.exprs(d.variable)
            if not isinstance(expr, rasp.SOp):
                continue
            fired = coef[:, 1:, k] > 0.5  # BOS carries no program value; a feature fires with coefficient 1
            want = np.array([[str(v) == d.value for v in vals[id(expr)]] for vals in values])
            assert (fired == want).all(), (site, truth.labels[k])
            checked += 1
    assert checked > 0


def test_a_dictionary_made_from_the_truth_is_perfect_and_broken_ones_are_named() -> None:
    model, _, _ = _setup("sort")
    site = features.residual_sites(model)[-1]
    truth = features.feature_dictionary(model, site)
    perfect = features.score_dictionary(truth.vectors, truth)
    assert perfect.perfect and perfect.mean_max_cosine == pytest.approx(1.0) and perfect.recovered == 1.0
    labels = [lab for lab in truth.labels if lab != "one"]
    rng = np.random.default_rng(0)
    random = features.score_dictionary(rng.normal(size=(len(truth), truth.vectors.shape[1])), truth)
    assert random.recovered < 0.2 and random.mean_max_cosine < 0.6 and len(random.missing) > len(labels) // 2
    i, j = truth.labels.index(labels[0]), truth.labels.index(labels[1])
    dropped = features.score_dictionary(np.delete(truth.vectors, i, axis=0), truth)
    assert dropped.missing == [labels[0]] and dropped.recovered < 1.0
    merged_vec = (truth.vectors[i] + truth.vectors[j])[None]
    merged_dec = np.vstack([np.delete(truth.vectors, [i, j], axis=0), merged_vec])
    merged = features.score_dictionary(merged_dec, truth)
    assert sorted(merged.merged[len(truth) - 2]) == sorted([labels[0], labels[1]])
    assert set(merged.missing) == {labels[0], labels[1]}
    split = features.score_dictionary(np.vstack([truth.vectors, 0.99 * truth.vectors[i] + 0.01]), truth)
    assert labels[0] in split.split and not split.perfect


def test_bad_sites_and_decoders_are_refused() -> None:
    model, _, _ = _setup("reverse")
    with pytest.raises(features.CircuitError, match="unknown site"):
        features.feature_dictionary(model, "blocks.0.attn.hook_z")
    with pytest.raises(features.CircuitError, match="has 4 layers"):
        features.feature_dictionary(model, "blocks.9.hook_resid_pre")
    truth = features.feature_dictionary(model, "blocks.1.hook_resid_pre")
    with pytest.raises(features.CircuitError, match="decoder must be"):
        features.score_dictionary(np.zeros((3, 5)), truth)
    with pytest.raises(features.CircuitError, match="non-finite"):
        features.score_dictionary(np.full((3, truth.vectors.shape[1]), np.nan), truth)


def test_linear_probes_read_every_variable_exactly_where_the_truth_puts_it() -> None:
    from rasp_compiler.compiler.preconditions import all_inputs

    model, program, _ = _setup("sort")
    entry = LIBRARY["sort"]
    inputs = list(all_inputs(entry.vocab, entry.max_seq_len))
    sites = features.residual_sites(model)
    for site in sites:
        for name, r in features.probe_accuracy(model, program, site, inputs).items():
            if r.present:
                assert r.accuracy == 1.0, (site, name, r)
    first = features.probe_accuracy(model, program, sites[0], inputs)
    assert not first["sort"].present and first["sort"].accuracy < 0.9  # not computed yet: not readable
    assert first["sort"].accuracy > first["sort"].chance  # (though partly guessable from the tokens)


def test_feature_activations_say_which_inputs_and_positions_fire_each_feature(tmp_path) -> None:  # noqa: ANN001
    """Written beside a compressed model (read on the model it was made from): a categorical feature's
    activation is 1 exactly where the program's variable has that value, NaN past an input's end."""
    import json

    from safetensors.numpy import load_file

    plain, program, _ = _setup("reverse")
    compressed = _state_exact_compression(plain)
    inputs = [["a", "b"], ["c", "a", "b", "b"], ["b"]]
    features.save_features(compressed, tmp_path, inputs=inputs, reference=plain)
    doc = json.loads((tmp_path / "features.json").read_text())
    acts = load_file(str(tmp_path / "feature_activations.safetensors"))
    assert doc["activation_inputs"] == inputs
    site = features.residual_sites(compressed)[-1]
    labels = [f["label"] for f in doc["sites"][site]]
    a = acts[site]
    assert a.shape == (3, 5, len(labels))
    assert np.isnan(a[2, 2:]).all() and not np.isnan(a[1]).any()
    for i, x in enumerate(inputs):
        want = rasp.evaluate(program, x)
        for value in "abc":
            k = labels.index(f"reverse:{value}")
            np.testing.assert_allclose(a[i, 1: len(x) + 1, k], [float(w == value) for w in want], atol=1e-4)
    noisy = variants.add_noise(plain, heads=1, neurons=2, seed=0)
    features.save_features(noisy, tmp_path / "noisy", inputs=inputs, reference=plain)  # other features
    noisy_acts = load_file(str(tmp_path / "noisy" / "feature_activations.safetensors"))
    assert noisy_acts[site].shape[2] == len(features.feature_dictionary(noisy, site))
