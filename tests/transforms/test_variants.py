"""Rotated, noisy and compressed variants of compiled models (rasp_compiler/variants.py).

Oracles: `rasp.evaluate` (decoded outputs), the unmodified model (logits, residual streams, ground
truth), and linear algebra done here on the recorded basis (subspaces rotate with the weights).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import verify
from rasp_compiler import rasp
from rasp_compiler.compiler.compiling import compile_rasp_to_model
from rasp_compiler.model import load, save
from rasp_compiler.rasp import lib
from rasp_compiler.transforms import variants

torch.set_num_threads(1)

PROGRAMS = ("reverse", "hist", "frac_prevs")


def _compile(name: str) -> tuple[object, object]:
    entry = lib.LIBRARY[name]
    program = entry.builder()
    return program, compile_rasp_to_model(program, entry.vocab, entry.max_seq_len)


@pytest.fixture(scope="module", params=PROGRAMS)
def plain(request: pytest.FixtureRequest) -> tuple[object, object, list]:
    program, model = _compile(request.param)
    return program, model, variants.all_inputs(model)


def _expected(program: object, inputs: list) -> list:
    return [rasp.evaluate(program, x[1:]) for x in inputs]


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) < 1e-4
    return a == b


def _check_outputs(model: object, program: object, inputs: list) -> None:
    got = model.apply_batch(inputs)
    for x, g, want in zip(inputs, got, _expected(program, inputs)):
        assert all(_same(a, b) for a, b in zip(g[1:], want)), (x, g, want)


def _edges(c: verify.Circuit) -> dict:
    return {str(e): labels for e, labels in c.edges.items()}


# ------------------------------------------------------------------------------------------- rotation


def test_rotation_keeps_outputs_and_logits(plain: tuple) -> None:
    program, model, inputs = plain
    rot = variants.rotate(model, seed=7)
    _check_outputs(rot, program, inputs)
    ids = np.array([model.encode(x) for x in inputs if len(x) == model.config.max_seq_len + 1])
    np.testing.assert_allclose(rot.forward_numpy(ids), model.forward_numpy(ids), atol=2e-3)
    # really rotated: the embedding is dense and no residual label names a variable any more
    assert np.mean(np.abs(rot.weights["W_E"]) > 1e-6) > 0.9
    assert all(lab.startswith("basis:") for lab in rot.config.residual_labels)


def test_rotation_basis_carries_the_subspaces(plain: tuple) -> None:
    _, model, inputs = plain
    rot = variants.rotate(model, seed=3)
    labels, basis = variants.labelled_basis(rot)
    assert labels == list(model.config.residual_labels)
    np.testing.assert_allclose(basis @ basis.T, np.eye(len(labels)), atol=1e-9)
    ids = np.array(model.encode(inputs[-1]))
    _, c0 = model.forward_numpy(ids, return_cache=True)
    _, c1 = rot.forward_numpy(ids, return_cache=True)
    last = f"blocks.{model.config.n_layers - 1}.hook_resid_post"
    # the rotated residual, read in the recorded frame, is the labelled residual
    np.testing.assert_allclose(c1[last] @ basis.T, c0[last], atol=2e-3)


def test_rotation_truth_identical_and_weights_agree(plain: tuple) -> None:
    _, model, _ = plain
    rot = variants.rotate(model, seed=11)
    truth = verify.ground_truth(model)
    rot_ann = verify.ground_truth(rot)
    rot_w = verify.ground_truth(rot, method="weights")
    assert rot_ann == truth
    assert rot_ann.items("node") == truth.items("node")
    assert _edges(rot_ann) == _edges(truth)
    assert _edges(rot_w) == _edges(truth)
    assert rot_w.items("node") == truth.items("node")


def test_rotation_is_seeded() -> None:
    _, model = _compile("reverse")
    a, b, c = variants.rotate(model, 1), variants.rotate(model, 1), variants.rotate(model, 2)
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert not np.allclose(a.weights["W_E"], c.weights["W_E"])
    assert [(s["kind"], s["seed"]) for s in variants.variant_card(a)["steps"]] == [("rotate", 1)]


@pytest.mark.parametrize("name", sorted(lib.LIBRARY))
def test_rotation_of_every_library_program(name: str) -> None:
    """Rotated: exact on (a sample of) inputs, weight-derived truth in the rotated basis == plain truth."""
    program, model = _compile(name)
    inputs = variants.all_inputs(model, max_inputs=150, seed=1)
    rot = variants.rotate(model, seed=5, inputs=inputs)
    truth = verify.ground_truth(model)
    assert _edges(verify.ground_truth(rot, method="weights")) == _edges(truth)
    assert verify.ground_truth(rot) == truth


# ------------------------------------------------------------------------------------------- noise


def test_noise_distractors_keep_outputs_and_truth(plain: tuple) -> None:
    program, model, inputs = plain
    noisy = variants.add_noise(model, heads=3, neurons=6, weight_noise=1e-3, seed=5)
    _check_outputs(noisy, program, inputs)
    cfg, cfg0 = noisy.config, model.config
    assert sum(cfg.heads_per_layer) == sum(cfg0.heads_per_layer) + 3
    assert sum(cfg.mlp_width_per_layer) == sum(cfg0.mlp_width_per_layer) + 6
    step = variants.variant_card(noisy)["steps"][-1]
    assert step["kind"] == "noise" and len(step["components"]) >= 4
    # every distractor is live: it writes something into its own noise direction on real inputs
    ids = np.array(model.encode(inputs[-1]))
    _, cache = noisy.forward_numpy(ids, return_cache=True)
    for comp in step["components"]:
        col = cfg.residual_labels.index(comp["writes"][0])
        if comp["component"] == "attn":
            out = cache[f"blocks.{comp['layer']}.attn.hook_result"][:, comp["head"], col]
        else:
            out = cache[f"blocks.{comp['layer']}.hook_mlp_out"][:, col]
        assert np.abs(out).max() > 1e-3, comp
    # weight noise: zeros stay zero, some nonzero weight moved, at the recorded level
    assert any(v > 0 for v in step["weight_noise_applied"].values())
    w0, w1 = model.weights["blocks.0.attn.W_Q"], noisy.weights["blocks.0.attn.W_Q"]
    h = cfg0.heads_per_layer[0]
    assert np.array_equal(w1[:h, : cfg0.d_model, : cfg0.d_head] == 0, w0[:h] == 0)
    # the truth excludes the distractors, by the annotation and by the weights alone
    truth = verify.ground_truth(model)
    for method in ("annotation", "weights"):
        t = verify.ground_truth(noisy, method=method)
        assert _edges(t) == _edges(truth), method
        assert t.items("node") == truth.items("node")
        for comp in step["components"]:
            node = f"L{comp['layer']}.H{comp['head']}" if comp["component"] == "attn" else None
            if node is not None:
                assert node not in t.nodes


def test_noise_then_rotation_and_roundtrip(tmp_path: object) -> None:
    program, model = _compile("hist")
    inputs = variants.all_inputs(model)
    v = variants.rotate(variants.add_noise(model, heads=2, neurons=3, seed=2), seed=4)
    _check_outputs(v, program, inputs)
    assert [s["kind"] for s in variants.variant_card(v)["steps"]] == ["noise", "rotate"]
    truth = verify.ground_truth(model)
    assert _edges(verify.ground_truth(v, method="weights")) == _edges(truth)
    save(v, tmp_path / "m")
    back = load(tmp_path / "m")
    assert back.annotation_json() == v.annotation_json()
    assert all(np.array_equal(back.weights[k], v.weights[k]) for k in v.weights)
    assert verify.ground_truth(back) == verify.ground_truth(v)
    assert back.apply_batch(inputs[:50]) == v.apply_batch(inputs[:50])


def test_noise_refuses_bad_arguments_and_stacks() -> None:
    _, model = _compile("hist")
    with pytest.raises(variants.VariantError, match=">= 0"):
        variants.add_noise(model, heads=-1)
    with pytest.raises(variants.VariantError, match=">= 0"):
        variants.add_noise(model, weight_noise=float("nan"))
    twice = variants.add_noise(variants.add_noise(model, heads=1), heads=1, seed=1)
    assert {"noise:0", "noise:1"} <= set(twice.config.residual_labels)


def test_cancelling_pairs_are_active_but_outside_the_truth() -> None:
    program, model = _compile("reverse")
    inputs = variants.all_inputs(model)
    noisy = variants.add_noise(model, cancel_heads=2, cancel_neurons=2, seed=3)
    _check_outputs(noisy, program, inputs)
    comps = variants.variant_card(noisy)["steps"][-1]["components"]
    heads = [c for c in comps if c["component"] == "attn"]
    assert len(heads) == 4 and all(c["writes"] == [] for c in comps)
    ids = np.array([model.encode(x) for x in inputs if len(x) == model.config.max_seq_len + 1][:20])
    base = noisy.forward_numpy(ids)
    # each head of a pair alone moves the output: zero its W_O and the logits change
    c = heads[0]
    w = dict(noisy.weights)
    wo = w[f"blocks.{c['layer']}.attn.W_O"].copy()
    wo[c["head"]] = 0.0
    w[f"blocks.{c['layer']}.attn.W_O"] = wo
    alone = variants.CompiledModel(noisy.config, w, noisy.codec, noisy.annotation, "")
    assert np.abs(alone.forward_numpy(ids) - base).max() > 1e-2
    truth = verify.ground_truth(model)
    ann_truth = verify.ground_truth(noisy)
    assert _edges(ann_truth) == _edges(truth)
    assert f"L{c['layer']}.H{c['head']}" not in ann_truth.nodes
    # the weights cannot see a cancellation: their truth is a strict superset here (documented)
    w_truth = verify.ground_truth(noisy, method="weights")
    assert set(ann_truth.items("edge")) < set(w_truth.items("edge"))


# ------------------------------------------------------------------------------------------- compression


def test_compression_measures_and_stores_accuracy() -> None:
    program, model = _compile("hist")
    inputs = variants.all_inputs(model)
    d = model.config.d_model - 3
    comp = variants.compress(model, d, "random", seed=0, inputs=inputs)
    assert comp.config.d_model == d
    card = variants.variant_card(comp)
    assert card["approximate"] is True
    got = comp.apply_batch(inputs)
    want = _expected(program, inputs)
    flags = [a == b for g, w in zip(got, want) for a, b in zip(g[1:], w)]
    assert card["accuracy"] == pytest.approx(np.mean(flags))
    truth = verify.ground_truth(comp)
    assert truth.approximate is True and truth.accuracy == pytest.approx(card["accuracy"])
    assert _edges(truth) == _edges(verify.ground_truth(model))
    with pytest.raises(verify.CircuitError, match="compress"):
        verify.ground_truth(comp, method="weights")


def test_learned_compression_runs_and_records() -> None:
    _, model = _compile("hist")
    d = model.config.d_model // 2
    comp = variants.compress(model, d, "learned", seed=1, steps=25, max_train=64)
    step = variants.variant_card(comp)["steps"][-1]
    assert step["method"] == "learned" and np.isfinite(step["final_loss"])
    assert step["accuracy"] == max(step["start_accuracy"], step["trained_accuracy"])
    acc, _ = variants.outputs_match(model, comp, variants.all_inputs(model))
    assert acc == pytest.approx(step["accuracy"])


def test_pca_compression_below_the_labelled_width_can_be_exact() -> None:
    """The residual states of `reverse` span fewer dimensions than it has labelled directions."""
    program, model = _compile("reverse")
    inputs = variants.all_inputs(model)
    d = model.config.d_model - 6
    comp = variants.compress(model, d, "pca", inputs=inputs)
    assert comp.config.d_model == d < len(variants.labelled_basis(comp)[0])
    _check_outputs(comp, program, inputs)
    assert variants.variant_card(comp)["accuracy"] == 1.0


def test_compression_refuses_bad_width() -> None:
    _, model = _compile("hist")
    with pytest.raises(variants.VariantError, match="d_model"):
        variants.compress(model, model.config.d_model)
    with pytest.raises(variants.VariantError, match="method"):
        variants.compress(model, 3, method="svd")


# ------------------------------------------------------------------------------------------- engine


def test_variants_run_on_the_engine() -> None:
    from rasp_compiler import engine
    _, model = _compile("reverse")
    inputs = [x for x in variants.all_inputs(model) if len(x) == model.config.max_seq_len + 1][:40]
    ids = np.array([model.encode(x) for x in inputs])
    for v in (
        variants.rotate(model, 1),
        variants.add_noise(model, heads=2, neurons=2, weight_noise=1e-3, seed=1),
    ):
        out = np.asarray(engine.Engine(v).run(ids))
        np.testing.assert_allclose(out, v.forward_numpy(ids), atol=1e-3)


def test_subspace_patch_in_rotated_basis_matches_plain() -> None:
    """Patching a variable's subspace: by labels in the plain model, by the recorded projection in the
    rotated one; the outputs agree (the subspaces rotate with the weights)."""
    from rasp_compiler import engine
    _, model = _compile("reverse")
    rot = variants.rotate(model, seed=2)
    inputs = [x for x in variants.all_inputs(model) if len(x) == model.config.max_seq_len + 1]
    ids = np.array([model.encode(x) for x in inputs[:20]])
    src = np.array([model.encode(x) for x in inputs[-20:]])
    writes = next(b for b in model.annotation_json()["blocks"] if b["op"] == "reverse")
    node = f"L{writes['layer']}.H{writes['head']}"
    labels = list(writes["writes"])
    plain = engine.Engine(model).run_patched(ids, src, [engine.NodePatch(node, labels)])
    proj = variants.subspace_projection(rot, labels)
    rotated = engine.Engine(rot).run_patched(ids, src, [engine.NodePatch(node, proj)])
    np.testing.assert_allclose(np.asarray(rotated), np.asarray(plain), atol=2e-3)
    assert np.abs(np.asarray(plain) - model.forward_numpy(ids)).max() > 0.1  # the patch did something
    with pytest.raises(variants.VariantError, match="nope"):
        variants.subspace_projection(rot, ["nope"])
