"""TransformerLens export: same outputs and same activations at the shared hook names."""

from __future__ import annotations

import numpy as np
import pytest
import torch  # noqa: E402
from support.model_factory import fraction_model, random_model

transformer_lens = pytest.importorskip(
    "transformer_lens",
    reason="transformer-lens not installed (optional extra: pip install 'rasp-compiler[tl]')",
)

from rasp_compiler.model.export import to_hooked_transformer  # noqa: E402

torch.set_num_threads(1)

SHARED = [
    "hook_embed",
    "hook_pos_embed",
    "blocks.0.hook_resid_pre",
    "blocks.0.attn.hook_q",
    "blocks.0.attn.hook_k",
    "blocks.0.attn.hook_v",
    "blocks.0.attn.hook_pattern",
    "blocks.0.attn.hook_z",
    "blocks.0.attn.hook_result",
    "blocks.0.hook_attn_out",
    "blocks.0.hook_resid_mid",
    "blocks.0.mlp.hook_pre",
    "blocks.0.mlp.hook_post",
    "blocks.0.hook_mlp_out",
    "blocks.0.hook_resid_post",
]


@pytest.mark.parametrize("seed, pad, numerical", [(0, None, False), (1, "PAD", False), (2, "PAD", True)])
def test_hooked_transformer_matches(seed, pad, numerical):
    m = random_model(seed, n_layers=2, pad=pad, numerical=numerical)
    ht = to_hooked_transformer(m)
    rng = np.random.default_rng(seed)
    toks = rng.integers(1, m.config.d_vocab, size=(4, 5))
    toks[:, 0] = 0
    if pad is not None:
        toks[:2, 3:] = m.codec.pad_id
    ref, ref_cache = m.forward_numpy(toks, return_cache=True)
    out, cache = ht.run_with_cache(torch.tensor(toks))
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-5, atol=1e-5)
    for name in SHARED:
        np.testing.assert_allclose(cache[name].numpy(), ref_cache[name], rtol=1e-5, atol=1e-5, err_msg=name)
    ht.reset_hooks()  # the PAD mask is a permanent hook and must survive
    np.testing.assert_allclose(ht(torch.tensor(toks)).detach().numpy(), ref, rtol=1e-5, atol=1e-5)


def test_pad_mask_by_hand_in_transformer_lens():
    m = fraction_model(max_seq_len=5)
    ht = to_hooked_transformer(m)
    toks = torch.tensor([m.encode(["BOS", "a", "b", "a", "PAD", "PAD"])])
    np.testing.assert_allclose(ht(toks)[0, :, 0].detach().numpy(), [0.5] * 6, atol=1e-6)


@pytest.mark.parametrize("name", ["causal_induction", "frac_prevs", "hist", "reverse", "shuffle_dyck2"])
def test_causal_model_matches_with_transformer_lens_default_attention(name):
    """A causal compile exports with TL's default causal attention and gives the same logits (and the
    same activations at the shared hooks) on random inputs of every length."""
    from support.library_models import compiled

    from rasp_compiler.rasp.lib import LIBRARY

    m = compiled(name, causal=True)
    ht = to_hooked_transformer(m)
    assert ht.cfg.attention_dir == transformer_lens.HookedTransformerConfig(
        n_layers=1, d_model=4, n_ctx=4, d_head=2, act_fn="relu").attention_dir == "causal"
    rng = np.random.default_rng(0)
    vocab = sorted(LIBRARY[name].vocab, key=repr)
    for T in range(1, m.config.max_seq_len + 1):
        toks = np.array([m.encode(["BOS", *(vocab[i] for i in rng.integers(0, len(vocab), T))])
                         for _ in range(6)])
        ref, ref_cache = m.forward_numpy(toks, return_cache=True)
        out, cache = ht.run_with_cache(torch.tensor(toks))
        np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-5, atol=1e-5)
        for name_ in SHARED:
            np.testing.assert_allclose(cache[name_].numpy(), ref_cache[name_], rtol=1e-5, atol=1e-5,
                                       err_msg=name_)
