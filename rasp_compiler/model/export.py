"""Export a compiled model to TransformerLens (`pip install rasp-compiler[tl]`, transformer-lens 2.x/3.x).

`to_hooked_transformer(model)` builds a `transformer_lens.HookedTransformer` computing the same
function: no layer norm, bidirectional attention (TL's default causal attention for a model compiled
with causal=True), attention scale 1, ReLU MLPs, our weights copied under the same names (`W_E` ->
`embed.W_E`, `W_pos` -> `pos_embed.W_pos`, `W_U`/`b_U` -> `unembed.*`, `blocks.*` unchanged).
`use_attn_result`, `use_split_qkv_input` and `use_hook_mlp_in` are on, so `blocks.{l}.attn.hook_result`,
per-head `hook_{q,k,v}_input` and `hook_mlp_in` exist for edge patching (auto-circuit's
`patchable_model(..., separate_qkv=True)` needs them). Works with TransformerLens 2.x and 3.x
(`HookedTransformer`).

PAD masking: TransformerLens applies its `attention_mask` only in causal attention, so for a model
compiled with a PAD token the export adds *permanent* hooks (they survive `reset_hooks()`): a
forward pre-hook that records which input positions are PAD, and a hook on every
`blocks.{l}.attn.hook_attn_scores` that sets the scores of PAD keys to -inf, as our contract says.
Call the exported model on token ids (`model(tokens)`), not strings; it has no tokenizer.

TransformerLens 4 removed `HookedTransformer`; `to_transformer_bridge(model)` builds its replacement, a
`TransformerBridge` over TL 4's native model (`boot_native`, the path TL 4 keeps for TL-format weights),
loaded with the same weights through TL's own `convert_tl_checkpoint`. TL 4's native attention always
divides scores by sqrt(d_head) (it refuses an unscaled `attn_scale=1` for d_head > 1), so `W_Q` and `b_Q`
are multiplied by sqrt(d_head) to give our unscaled scores back.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from rasp_compiler.model.compiled import CompiledModel

__all__ = ["hooked_transformer_config", "tl_version", "to_hooked_transformer", "to_transformer_bridge"]

_TOP_LEVEL = {"W_E": "embed.W_E", "W_pos": "pos_embed.W_pos", "W_U": "unembed.W_U", "b_U": "unembed.b_U"}


def _require_tl(bridge: bool = False) -> Any:
    """transformer_lens, of the major version the export needs (HookedTransformer: 2.x/3.x; bridge: 4.x)."""
    try:
        import transformer_lens
    except ImportError as e:
        raise ImportError("TransformerLens export needs transformer-lens: pip install 'rasp-compiler[tl]' "
                          "(3.x, for to_hooked_transformer) or 'transformer-lens>=4' (to_transformer_bridge)"
                          ) from e
    version = tl_version()
    major = int(version.split(".")[0])
    if bridge and major < 4:
        raise ImportError(f"to_transformer_bridge needs transformer-lens 4.x (installed: {version}); with "
                          "2.x/3.x use to_hooked_transformer")
    if not bridge and major >= 4:
        raise ImportError(f"transformer-lens {version} has no HookedTransformer (removed in 4.0); use "
                          "to_transformer_bridge")
    return transformer_lens


def tl_version() -> str:
    """The installed transformer-lens version (the package has no __version__ attribute)."""
    from importlib.metadata import version

    return version("transformer-lens")


def _padded_sizes(model: CompiledModel) -> tuple[int, int, int]:
    """TransformerLens needs at least one head, one head dimension and one MLP neuron; we pad with zeros."""
    c = model.config
    return max(c.n_heads, 1), max(c.d_head, 1), max(c.d_mlp, 1)


def hooked_transformer_config(model: CompiledModel, device: str = "cpu") -> Any:
    """The `HookedTransformerConfig` describing `model`'s architecture."""
    import torch

    tl = _require_tl()
    c = model.config
    n_heads, d_head, d_mlp = _padded_sizes(model)
    return tl.HookedTransformerConfig(
        n_layers=c.n_layers,
        d_model=c.d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        n_ctx=c.n_ctx,
        d_vocab=c.d_vocab,
        d_vocab_out=c.d_vocab_out,
        act_fn="relu",
        normalization_type=None,
        attention_dir="causal" if c.causal else "bidirectional",
        use_attn_scale=False,
        positional_embedding_type="standard",
        use_attn_result=True,
        use_split_qkv_input=True,  # per-head q/k/v inputs and hook_mlp_in: what edge-level tools
        use_hook_mlp_in=True,  # (auto-circuit's patchable_model, ACDC, attribution patching) patch
        original_architecture="rasp_compiler",
        default_prepend_bos=False,
        device=device,
        dtype=torch.float32,
    )


def _export_weights(model: CompiledModel) -> dict[str, np.ndarray]:
    """Our weights under TransformerLens parameter names, zero-padded to the TL config's sizes."""
    n_heads, d_head, d_mlp = _padded_sizes(model)
    out: dict[str, np.ndarray] = {}
    for name, w in model.weights.items():
        if name in _TOP_LEVEL:
            out[_TOP_LEVEL[name]] = w
            continue
        target = list(w.shape)
        if ".attn." in name and not name.endswith("b_O"):
            target[0] = n_heads
            target[2 if name.endswith(("W_Q", "W_K", "W_V")) else 1] = d_head  # W_O, b_Q/K/V: axis 1
        elif name.endswith("W_in"):
            target[1] = d_mlp
        elif name.endswith("b_in"):
            target[0] = d_mlp
        elif name.endswith("W_out"):
            target[0] = d_mlp
        if list(w.shape) != target:
            padded = np.zeros(target, dtype=np.float32)
            padded[tuple(slice(0, s) for s in w.shape)] = w
            w = padded
        out[name] = w
    return out


def to_hooked_transformer(model: CompiledModel, device: str = "cpu") -> Any:
    """A `transformer_lens.HookedTransformer` with `model`'s weights and the same outputs on token ids."""
    import torch

    tl = _require_tl()
    cfg = hooked_transformer_config(model, device=device)
    with warnings.catch_warnings():  # TL 3.x marks HookedTransformer deprecated (TransformerBridge)
        warnings.simplefilter("ignore", DeprecationWarning)
        ht = tl.HookedTransformer(cfg)
    params = dict(ht.named_parameters())
    weights = _export_weights(model)
    missing = sorted(set(weights) - set(params))
    if missing:
        raise RuntimeError(f"this transformer-lens version lacks parameters {missing[:6]}; "
                           "rasp_compiler exports to transformer-lens 3.x")
    with torch.no_grad():
        for name, w in weights.items():
            p = params[name]
            if tuple(p.shape) != w.shape:
                raise RuntimeError(f"TransformerLens parameter {name} has shape {list(p.shape)}, "
                                   f"expected {list(w.shape)}")
            p.copy_(torch.from_numpy(np.ascontiguousarray(w)).to(p.device))
        # Parameters not in our model (none expected without layer norm) must be zero, not random.
        for name, p in params.items():
            if name not in weights:
                p.zero_()
    if model.config.pad_token_id is not None:
        _add_pad_mask(ht, model.config.pad_token_id)
    ht.eval()
    return ht


def to_transformer_bridge(model: CompiledModel, device: str = "cpu") -> Any:
    """A TransformerLens 4 `TransformerBridge` with `model`'s weights and the same outputs on token ids
    (see the module docstring); models compiled with a PAD token are refused (TL 4's native attention
    masks padding only through an `attention_mask` the caller passes)."""
    import math

    import torch

    _require_tl(bridge=True)
    if model.config.pad_token_id is not None:
        raise RuntimeError("to_transformer_bridge: the model has a PAD token; TransformerBridge masks "
                           "padding only through an attention_mask argument, so export it without PAD")
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources.native import boot
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    c = model.config
    n_heads, d_head, d_mlp = _padded_sizes(model)
    cfg = TransformerBridgeConfig(
        d_model=c.d_model,
        n_layers=c.n_layers,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        n_ctx=c.n_ctx,
        d_vocab=c.d_vocab,
        d_vocab_out=c.d_vocab_out,
        act_fn="relu",
        normalization_type=None,
        attention_dir="causal" if c.causal else "bidirectional",
        positional_embedding_type="standard",
        architecture="TransformerLensNative",
        default_prepend_bos=False,
    )
    scale = math.sqrt(d_head)  # undoes the native attention's division by sqrt(d_head)
    state = {}
    for name, w in _export_weights(model).items():
        t = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        state[name] = t * scale if name.endswith(("attn.W_Q", "attn.b_Q")) else t
    bridge = boot(cfg, device=device, dtype=torch.float32)
    result = bridge.load_state_dict(convert_tl_checkpoint(state, cfg), strict=True)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"transformer-lens {tl_version()} bridge: missing {result.missing_keys[:4]}, "
                           f"unexpected {result.unexpected_keys[:4]}")
    bridge.eval()
    return bridge


def _add_pad_mask(ht: Any, pad_id: int) -> None:
    """Permanent hooks giving PAD keys -inf attention scores (see the module docstring)."""
    state: dict[str, Any] = {"is_pad": None}

    def record_tokens(module: Any, args: tuple, kwargs: dict) -> None:
        tokens = args[0] if args else kwargs.get("input")
        state["is_pad"] = (tokens == pad_id) if hasattr(tokens, "dtype") and not tokens.is_floating_point() \
            else None

    def mask_scores(scores: Any, hook: Any) -> Any:
        is_pad = state["is_pad"]
        if is_pad is None:
            return scores
        if is_pad.dim() == 1:
            is_pad = is_pad[None]
        return scores.masked_fill(is_pad[:, None, None, :].to(scores.device), float("-inf"))

    ht.register_forward_pre_hook(record_tokens, with_kwargs=True)
    for layer in range(ht.cfg.n_layers):
        ht.hook_dict[f"blocks.{layer}.attn.hook_attn_scores"].add_hook(mask_scores, is_permanent=True)
