"""The hooked PyTorch reference: agreement with the numpy forward, hook names and shapes, patching, PAD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.model_factory import fraction_model, random_model

from rasp_compiler.model import CompiledModel, ModelError

torch.set_num_threads(1)


def contract_hook_names(n_layers: int) -> set[str]:
    """Written out from docs/CONTRACTS.md section 4 (plus TransformerLens's hook_attn_scores)."""
    names = {"hook_embed", "hook_pos_embed"}
    for layer in range(n_layers):
        b = f"blocks.{layer}."
        names |= {
            b + n
            for n in (
                "hook_resid_pre",
                "attn.hook_q",
                "attn.hook_k",
                "attn.hook_v",
                "attn.hook_z",
                "attn.hook_attn_scores",
                "attn.hook_pattern",
                "attn.hook_result",
                "hook_attn_out",
                "hook_resid_mid",
                "mlp.hook_pre",
                "mlp.hook_post",
                "hook_mlp_out",
                "hook_resid_post",
            )
        }
    return names


@pytest.mark.parametrize(
    "seed, pad, numerical", [(0, None, False), (1, "PAD", False), (2, "PAD", True), (3, None, True)]
)
def test_torch_matches_numpy_forward_and_cache(seed, pad, numerical):
    m = random_model(seed, n_layers=3, pad=pad, numerical=numerical)
    rng = np.random.default_rng(seed)
    toks = rng.integers(1, m.config.d_vocab, size=(6, 5))
    toks[:, 0] = 0
    if pad is not None:
        toks[:3, 3:] = m.codec.pad_id
    tm = m.to_torch()
    out, cache = tm.run_with_cache(torch.tensor(toks))
    ref, ref_cache = m.forward_numpy(toks, return_cache=True)
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-5, atol=1e-5)
    assert set(cache) == set(ref_cache) == contract_hook_names(3)
    for name, act in cache.items():
        np.testing.assert_allclose(act.numpy(), ref_cache[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_hook_shapes_and_state_dict_names():
    m = random_model(4, n_layers=2, d_model=8, n_heads=2, d_head=3, d_mlp=5)
    tm = m.to_torch()
    B, T, H = 3, 4, 2
    _, cache = tm.run_with_cache(torch.zeros((B, T), dtype=torch.long))
    shapes = {
        "hook_embed": (B, T, 8),
        "hook_pos_embed": (B, T, 8),
        "blocks.1.hook_resid_pre": (B, T, 8),
        "blocks.1.attn.hook_q": (B, T, H, 3),
        "blocks.1.attn.hook_k": (B, T, H, 3),
        "blocks.1.attn.hook_v": (B, T, H, 3),
        "blocks.1.attn.hook_z": (B, T, H, 3),
        "blocks.1.attn.hook_attn_scores": (B, H, T, T),
        "blocks.1.attn.hook_pattern": (B, H, T, T),
        "blocks.1.attn.hook_result": (B, T, H, 8),
        "blocks.1.hook_attn_out": (B, T, 8),
        "blocks.1.mlp.hook_pre": (B, T, 5),
        "blocks.1.mlp.hook_post": (B, T, 5),
        "blocks.1.hook_mlp_out": (B, T, 8),
        "blocks.1.hook_resid_post": (B, T, 8),
    }
    for name, shape in shapes.items():
        assert tuple(cache[name].shape) == shape, name
    assert set(tm.state_dict()) == set(m.weights)
    for name, w in m.weights.items():
        assert np.array_equal(tm.state_dict()[name].numpy(), w), name
    assert tm(torch.tensor([0, 1, 2])).shape == (1, 3, 3)
    assert tm.weights_numpy().keys() == m.weights.keys()


def test_names_filter_forms():
    tm = random_model(5).to_torch()
    toks = torch.tensor([[0, 1, 2]])
    assert set(tm.run_with_cache(toks, "hook_embed")[1]) == {"hook_embed"}
    assert set(tm.run_with_cache(toks, ["blocks.0.attn.hook_z", "hook_pos_embed"])[1]) == {
        "blocks.0.attn.hook_z",
        "hook_pos_embed",
    }
    got = set(tm.run_with_cache(toks, lambda n: n.endswith("hook_result"))[1])
    assert got == {"blocks.0.attn.hook_result", "blocks.1.attn.hook_result"}
    with pytest.raises(KeyError, match="unknown hook name.*blocks.9.hook_resid_pre"):
        tm.run_with_cache(toks, ["blocks.9.hook_resid_pre"])
    assert all(not hp._handles for hp in tm.hook_dict.values())  # temporary hooks were removed


def _last_layer_linear_model(seed: int) -> CompiledModel:
    """A random model whose last MLP is empty, so the output is linear in the last layer's head results."""
    m = random_model(seed, n_layers=2)
    w = dict(m.weights)
    for n in ("W_in", "b_in", "W_out", "b_out"):
        w[f"blocks.1.mlp.{n}"] = np.zeros_like(w[f"blocks.1.mlp.{n}"])
    cfg = m.config.__class__(
        **{
            **m.config.to_json(),
            "mlp_width_per_layer": [m.config.mlp_width_per_layer[0], 0],
            "heads_per_layer": [m.config.heads_per_layer[0], 2],
        }
    )
    w["blocks.1.attn.W_O"] = np.random.default_rng(seed).standard_normal((2, 3, 8)).astype(np.float32)
    return CompiledModel(cfg, w, m.codec)


def test_patching_a_head_changes_output_as_hand_computed():
    m = _last_layer_linear_model(6)
    toks = np.array([[0, 1, 3, 2, 2], [0, 2, 2, 1, 3]])
    clean, cache = m.forward_numpy(toks, return_cache=True)
    # Zeroing head 1 of layer 1 removes exactly its result @ W_U from the logits.
    expected = clean - cache["blocks.1.attn.hook_result"][:, :, 1] @ m.weights["W_U"]
    tm = m.to_torch()

    def zero_head(act, hook):
        assert hook.name == "blocks.1.attn.hook_result"
        act = act.clone()
        act[:, :, 1] = 0
        return act

    with tm.hooks([("blocks.1.attn.hook_result", zero_head)]):
        patched = tm(torch.tensor(toks)).detach().numpy()
    np.testing.assert_allclose(patched, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(patched, clean, atol=1e-3)
    # Hooks are gone after the block: output is clean again.
    np.testing.assert_allclose(tm(torch.tensor(toks)).detach().numpy(), clean, rtol=1e-5, atol=1e-5)

    # Plain torch forward hooks on the HookPoint submodule (what nnsight and others use) patch the same way.
    handle = tm.blocks[1].attn.hook_result.register_forward_hook(lambda mod, inp, out: zero_head(out, mod))
    try:
        via_torch = tm(torch.tensor(toks)).detach().numpy()
    finally:
        handle.remove()
    np.testing.assert_allclose(via_torch, expected, rtol=1e-5, atol=1e-5)
    assert dict(tm.named_modules())["blocks.1.attn.hook_result"] is tm.blocks[1].attn.hook_result


def test_add_hook_reset_hooks_and_backward_hook():
    m = random_model(7)
    tm = m.to_torch()
    seen = []
    tm.add_hook("blocks.0.hook_mlp_out", lambda act, hook: seen.append((hook.name, tuple(act.shape))))
    tm(torch.tensor([[0, 1, 2]]))
    assert seen == [("blocks.0.hook_mlp_out", (1, 3, 8))]
    tm.reset_hooks()
    tm(torch.tensor([[0, 1, 2]]))
    assert len(seen) == 1
    grads = []
    embed = tm.W_E
    with tm.hooks(bwd_hooks=[("blocks.1.hook_resid_mid", lambda g, hook: grads.append(g.shape))]):
        tm(torch.tensor([[0, 1, 2, 3]])).sum().backward()
    assert grads == [torch.Size([1, 4, 8])] and embed.grad is not None


def test_pad_keys_are_masked_in_torch():
    m = fraction_model(max_seq_len=5)
    tm = m.to_torch()
    toks = torch.tensor(
        [m.encode(["BOS", "a", "b", "a", "PAD", "PAD"]), m.encode(["BOS", "b", "b", "b", "a", "b"])]
    )
    out, cache = tm.run_with_cache(toks)
    np.testing.assert_allclose(out[0, :, 0].detach().numpy(), [0.5] * 6, atol=1e-7)
    np.testing.assert_allclose(out[1, :, 0].detach().numpy(), [1 / 6] * 6, atol=1e-7)
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert torch.all(pattern[0, :, :, 4:] == 0) and torch.all(pattern[1] > 0)


def test_torch_input_errors():
    tm = random_model(8).to_torch()
    with pytest.raises(ModelError, match="exceeds n_ctx 5"):
        tm(torch.zeros((1, 6), dtype=torch.long))
    with pytest.raises(ModelError, match="integer tensor"):
        tm(torch.zeros((1, 3)))
    with pytest.raises(ModelError, match=r"token ids must lie in \[0, d_vocab=4\)"):
        tm(torch.tensor([[0, 9]]))
    with pytest.raises(ValueError, match="hook direction"):
        tm.add_hook("hook_embed", lambda a, h: None, dir="sideways")
