"""Small CompiledModels for tests: random contract-following weights, hand-built ones, tracr conversions.

Not a conftest: tests import what they need (`from support.model_factory import random_model`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rasp_compiler.model import Codec, CompiledModel, ModelConfig, expected_weight_shapes


def random_model(
    seed: int = 0,
    *,
    n_layers: int = 2,
    d_model: int = 8,
    n_heads: int = 2,
    d_head: int = 3,
    d_mlp: int = 5,
    max_seq_len: int = 4,
    vocab: Any = (1, 2, 3),
    pad: Any = None,
    numerical: bool = False,
    scale: float = 0.4,
) -> CompiledModel:
    """Random float32 weights with the contract's zero padding of unused heads and MLP neurons."""
    rng = np.random.default_rng(seed)
    heads = [int(rng.integers(1, n_heads + 1)) for _ in range(n_layers)]
    widths = [int(rng.integers(0, d_mlp + 1)) for _ in range(n_layers)]
    codec, config = _codec_and_config(
        vocab,
        max_seq_len,
        bos="BOS",
        pad=pad,
        out_values=None if numerical else ["x", "y", "z"],
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        heads_per_layer=heads,
        mlp_width_per_layer=widths,
        residual_labels=[f"r{i}" for i in range(d_model)],
    )
    weights = {}
    for name, shape in expected_weight_shapes(config).items():
        w = (rng.standard_normal(shape) * scale).astype(np.float32)
        weights[name] = w
    for layer in range(n_layers):
        a = f"blocks.{layer}.attn."
        for n in ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "W_O"):
            weights[a + n][heads[layer] :] = 0
        m = f"blocks.{layer}.mlp."
        weights[m + "W_in"][:, widths[layer] :] = 0
        weights[m + "b_in"][widths[layer] :] = 0
        weights[m + "W_out"][widths[layer] :] = 0
    return CompiledModel(config, weights, codec, annotation=None, program_source="random")


def fraction_model(max_seq_len: int = 4, pad: Any = "PAD") -> CompiledModel:
    """One uniform-attention head that averages `tokens == "a"` over all non-PAD positions (BOS included).

    Residual: [one, tokens:a, tokens:b, frac]. Hand result at every position: (#a) / (#non-PAD keys).
    """
    codec, config = _codec_and_config(
        ["a", "b"],
        max_seq_len,
        bos="BOS",
        pad=pad,
        out_values=None,
        d_model=4,
        n_heads=1,
        d_head=1,
        d_mlp=1,
        heads_per_layer=[1],
        mlp_width_per_layer=[0],
        residual_labels=["one", "tokens:a", "tokens:b", "frac"],
    )
    w = {n: np.zeros(s, np.float32) for n, s in expected_weight_shapes(config).items()}
    w["W_E"][:, 0] = 1.0  # every token writes `one`
    w["W_E"][codec.token_id("a"), 1] = 1.0
    w["W_E"][codec.token_id("b"), 2] = 1.0
    w["blocks.0.attn.W_V"][0, 1, 0] = 1.0  # v reads tokens:a
    w["blocks.0.attn.W_O"][0, 0, 3] = 1.0  # result writes frac
    w["W_U"][3, 0] = 1.0
    return CompiledModel(config, w, codec, annotation=None, program_source="fraction of a")


def from_tracr(
    assembled: Any,
    output_label: str,
    vocab: Any,
    max_seq_len: int,
    numerical: bool,
    bos: str = "BOS",
    pad: str = "compiler_pad",
) -> CompiledModel:
    """Convert a tracr AssembledTransformerModel into a CompiledModel (an independent forward oracle).

    tracr divides attention logits by sqrt(key_size); we fold that into W_Q/b_Q. Input rows are permuted
    from tracr's token order to ours; W_U one-hot reads the output SOp's directions.
    """
    params = {
        k: {a: np.asarray(b, dtype=np.float64) for a, b in v.items()} for k, v in assembled.params.items()
    }
    mc = assembled.model_config
    labels = list(assembled.residual_labels)
    d_model = len(labels)
    H, dk = mc.num_heads, mc.key_size
    L = mc.num_layers
    d_mlp = mc.mlp_hidden_size
    out_values = None
    if not numerical:
        out_values = sorted(
            assembled.output_encoder.encoding_map, key=assembled.output_encoder.encoding_map.get
        )
    codec, config = _codec_and_config(
        vocab,
        max_seq_len,
        bos=bos,
        pad=pad,
        out_values=out_values,
        d_model=d_model,
        n_heads=H,
        d_head=dk,
        d_mlp=d_mlp,
        heads_per_layer=[H] * L,
        mlp_width_per_layer=[d_mlp] * L,
        residual_labels=labels,
    )
    tmap = assembled.input_encoder.encoding_map
    w: dict[str, np.ndarray] = {}
    w["W_E"] = np.stack([params["token_embed"]["embeddings"][tmap[t]] for t in codec.input_tokens])
    w["W_pos"] = params["pos_embed"]["embeddings"]
    for layer in range(L):
        p = f"transformer/layer_{layer}/"
        a = f"blocks.{layer}.attn."
        for ours, theirs, s in (("Q", "query", 1 / np.sqrt(dk)), ("K", "key", 1.0), ("V", "value", 1.0)):
            w[a + "W_" + ours] = (
                params[p + "attn/" + theirs]["w"].reshape(d_model, H, dk).transpose(1, 0, 2) * s
            )
            w[a + "b_" + ours] = params[p + "attn/" + theirs]["b"].reshape(H, dk) * s
        w[a + "W_O"] = params[p + "attn/linear"]["w"].reshape(H, dk, d_model)
        w[a + "b_O"] = params[p + "attn/linear"]["b"]
        m = f"blocks.{layer}.mlp."
        w[m + "W_in"], w[m + "b_in"] = params[p + "mlp/linear_1"]["w"], params[p + "mlp/linear_1"]["b"]
        w[m + "W_out"], w[m + "b_out"] = params[p + "mlp/linear_2"]["w"], params[p + "mlp/linear_2"]["b"]
    w["W_U"] = np.zeros((d_model, config.d_vocab_out))
    if numerical:
        w["W_U"][labels.index(output_label), 0] = 1.0
    else:
        for j, v in enumerate(out_values):
            w["W_U"][labels.index(f"{output_label}:{v}"), j] = 1.0
    w["b_U"] = np.zeros(config.d_vocab_out)
    return CompiledModel(config, w, codec, annotation=None, program_source=f"tracr {output_label}")


def _codec_and_config(
    vocab: Any,
    max_seq_len: int,
    *,
    bos: Any,
    pad: Any,
    out_values: list[Any] | None,
    d_model: int,
    n_heads: int,
    d_head: int,
    d_mlp: int,
    heads_per_layer: list[int],
    mlp_width_per_layer: list[int],
    residual_labels: list[str],
) -> tuple[Codec, ModelConfig]:
    """The codec and a matching config (numerical output when `out_values` is None, BOS token id 0)."""
    encoding = "numerical" if out_values is None else "categorical"
    codec = Codec.from_vocab(
        vocab, max_seq_len, bos=bos, pad=pad, output_encoding=encoding, output_values=out_values
    )
    config = ModelConfig(
        n_layers=len(heads_per_layer),
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        n_ctx=max_seq_len + 1,
        d_vocab=codec.d_vocab,
        d_vocab_out=1 if out_values is None else len(out_values),
        max_seq_len=max_seq_len,
        heads_per_layer=heads_per_layer,
        mlp_width_per_layer=mlp_width_per_layer,
        output_encoding=encoding,
        residual_labels=residual_labels,
        pad_token_id=codec.pad_id,
        bos_token_id=0,
    )
    return codec, config
