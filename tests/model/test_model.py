"""CompiledModel, ModelConfig, Codec: validation, token coding, numpy forward vs hand values and tracr."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from support.model_factory import fraction_model, from_tracr, random_model

from rasp_compiler.model import (
    Codec,
    CompiledModel,
    ModelConfig,
    ModelError,
    expected_weight_shapes,
    sort_values,
)
from rasp_compiler.model.values import decode_value, encode_value

# ------------------------------------------------------------------------------------------------ config


def test_config_json_round_trip_and_field_errors():
    cfg = random_model(1).config
    again = ModelConfig.from_json(cfg.to_json())
    assert again == cfg
    data = cfg.to_json()
    with pytest.raises(ModelError, match="unknown fields.*'bogus'"):
        ModelConfig.from_json({**data, "bogus": 1})
    del data["d_head"]
    with pytest.raises(ModelError, match="lacks fields.*d_head"):
        ModelConfig.from_json(data)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"n_ctx": 9}, "n_ctx must be max_seq_len \\+ 1"),
        ({"heads_per_layer": [1]}, "heads_per_layer has 1 entries"),
        ({"heads_per_layer": [3, 1]}, r"heads_per_layer\[0\] = 3 is outside"),
        ({"mlp_width_per_layer": [6, 0]}, r"mlp_width_per_layer\[0\] = 6"),
        ({"output_encoding": "binary"}, "output_encoding must be one of"),
        ({"output_encoding": "numerical"}, "numerical-output model has d_vocab_out 1"),
        ({"residual_labels": ["a"] * 8}, "duplicates"),
        ({"residual_labels": ["a"]}, "residual_labels has 1 labels, d_model is 8"),
        ({"act_fn": "gelu"}, "act_fn must be 'relu'"),
        ({"pad_token_id": 0}, "pad_token_id equals bos_token_id"),
        ({"pad_token_id": 99}, "pad_token_id 99 is outside"),
        ({"d_model": -1}, "d_model must be >= 0"),
        ({"n_layers": 2.0}, "n_layers must be an int"),
    ],
)
def test_config_validation_names_the_field(change, message):
    cfg = random_model(1).config
    with pytest.raises(ModelError, match=message):
        dataclasses.replace(cfg, **change)


def test_expected_weight_shapes_are_the_contract_table():
    cfg = random_model(2, n_layers=1, d_model=6, n_heads=2, d_head=3, d_mlp=4, max_seq_len=5).config
    # Written out from docs/CONTRACTS.md section 2 by hand.
    assert expected_weight_shapes(cfg) == {
        "W_E": (4, 6),
        "W_pos": (6, 6),
        "blocks.0.attn.W_Q": (2, 6, 3),
        "blocks.0.attn.W_K": (2, 6, 3),
        "blocks.0.attn.W_V": (2, 6, 3),
        "blocks.0.attn.b_Q": (2, 3),
        "blocks.0.attn.b_K": (2, 3),
        "blocks.0.attn.b_V": (2, 3),
        "blocks.0.attn.W_O": (2, 3, 6),
        "blocks.0.attn.b_O": (6,),
        "blocks.0.mlp.W_in": (6, 4),
        "blocks.0.mlp.b_in": (4,),
        "blocks.0.mlp.W_out": (4, 6),
        "blocks.0.mlp.b_out": (6,),
        "W_U": (6, 3),
        "b_U": (3,),
    }


# ------------------------------------------------------------------------------------------------ codec


def test_mixed_type_vocab_sorting_is_deterministic():
    values = [3, "b", 1.5, True, None, "a", (1, "x"), -2, False]
    expected = [False, True, -2, 1.5, 3, "a", "b", None, (1, "x")]
    for perm in itertools.islice(itertools.permutations(values), 0, 400, 37):
        assert sort_values(perm) == expected
        assert [type(v) for v in sort_values(perm)] == [type(v) for v in expected]


def test_codec_ids_follow_the_contract():
    codec = Codec.from_vocab({3, 1, 2}, 4, bos="BOS", pad="PAD", output_values={"b", "a"})
    assert codec.input_tokens == ["BOS", 1, 2, 3, "PAD"]
    assert (codec.bos_id, codec.pad_id, codec.d_vocab, codec.vocab) == (0, 4, 5, [1, 2, 3])
    assert codec.output_values == ["a", "b"]
    assert codec.encode(["BOS", 3, 1, "PAD"]) == [0, 3, 1, 4]
    assert codec.decode_tokens([0, 3, 1, 4]) == ["BOS", 3, 1, "PAD"]


def test_codec_bool_and_int_tokens_stay_apart():
    codec = Codec.from_vocab({0, 1}, 3, output_values=[0])
    with pytest.raises(ModelError, match="token True is not in the input vocabulary"):
        codec.encode(["BOS", True])
    assert codec.encode(["BOS", np.int64(1)]) == [0, 2]


@pytest.mark.parametrize(
    "tokens, message",
    [
        ([1, 2], "must start with the BOS token 'BOS', got 1"),
        ([], "must start with the BOS token 'BOS', got 'nothing'"),
        (["BOS", 1, 7], "token 7 is not in the input vocabulary"),
        (["BOS", 1, 2, 3, 1, 2], "5 tokens after BOS, max_seq_len is 4"),
        (["BOS", 1, "BOS"], "BOS token 'BOS' may only appear at position 0"),
        (["BOS", [1]], r"token \[1\] is not in the input vocabulary"),
    ],
)
def test_codec_encode_errors(tokens, message):
    codec = Codec.from_vocab({1, 2, 3}, 4, output_values=[0])
    with pytest.raises(ModelError, match=message):
        codec.encode(tokens)


def test_codec_construction_errors():
    with pytest.raises(ModelError, match="BOS token 'BOS' is also a vocabulary value"):
        Codec.from_vocab({"BOS", "a"}, 3, output_values=[0])
    with pytest.raises(ModelError, match="PAD token 'BOS' equals the BOS token"):
        Codec.from_vocab({"a"}, 3, pad="BOS", output_values=[0])
    with pytest.raises(ModelError, match="categorical-output Codec needs"):
        Codec.from_vocab({"a"}, 3)
    with pytest.raises(ModelError, match="numerical-output Codec has output_values None"):
        Codec.from_vocab({"a"}, 3, output_encoding="numerical", output_values=[1])


def test_codec_decode_categorical_and_numerical():
    cat = Codec.from_vocab({1, 2}, 3, output_values=[10, 20, 30])
    logits = np.array([[0, 0, 9], [1, 5, 2], [7, 0, 0]], np.float32)
    assert cat.decode(logits) == ["BOS", 20, 10]
    assert cat.decode(logits, bos_first=False) == [30, 20, 10]
    with pytest.raises(ModelError, match="output has 2 columns, the codec has 3 output values"):
        cat.decode(logits[:, :2])
    num = Codec.from_vocab({1, 2}, 3, output_encoding="numerical")
    out = num.decode(np.array([[4.0], [0.25], [-1.5]], np.float32))
    assert out == ["BOS", 0.25, -1.5] and type(out[1]) is float


def test_token_values_json_keep_exact_types():
    values = [1, True, 1.0, "1", None, (1, ("a", False)), math.inf, -0.0, 0.1, 2**70]
    back = [decode_value(encode_value(v)) for v in values]
    assert back == values
    assert [type(v) for v in back] == [type(v) for v in values]
    assert math.copysign(1, back[7]) == -1
    assert math.isnan(decode_value(encode_value(math.nan)))
    with pytest.raises(ModelError, match="cannot be saved"):
        encode_value(object())
    with pytest.raises(ModelError, match="malformed saved token value"):
        decode_value(["int", "3"])
    codec = Codec.from_vocab({1, "a", 2.5}, 4, pad=None, output_values=[(1, 2), None, False])
    assert Codec.from_json(codec.to_json()) == codec


# ------------------------------------------------------------------------------------------------ model


def test_model_rejects_bad_weights_with_names():
    good = random_model(3)
    w = dict(good.weights)
    with pytest.raises(ModelError, match=r"lack 1 tensor\(s\): \['blocks.1.mlp.b_in'\]"):
        CompiledModel(good.config, {k: v for k, v in w.items() if k != "blocks.1.mlp.b_in"}, good.codec)
    with pytest.raises(ModelError, match=r"unexpected tensor\(s\) \['blocks.2.attn.W_Q'\]"):
        CompiledModel(good.config, {**w, "blocks.2.attn.W_Q": w["blocks.0.attn.W_Q"]}, good.codec)
    with pytest.raises(
        ModelError, match=r"weight blocks.0.attn.W_O has shape \[2, 3, 7\], config says \[2, 3, 8\]"
    ):
        CompiledModel(good.config, {**w, "blocks.0.attn.W_O": np.zeros((2, 3, 7))}, good.codec)
    bad = w["W_U"].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ModelError, match="weight W_U has non-finite entries"):
        CompiledModel(good.config, {**w, "W_U": bad}, good.codec)
    with pytest.raises(ModelError, match="weight W_E has dtype <U1"):
        CompiledModel(good.config, {**w, "W_E": np.full(w["W_E"].shape, "a")}, good.codec)
    other_codec = Codec.from_vocab({1, 2}, 4, output_values=["x", "y", "z"])
    with pytest.raises(ModelError, match="codec has 3 input tokens, config.d_vocab is 4"):
        CompiledModel(good.config, w, other_codec)
    m64 = CompiledModel(good.config, {k: v.astype(np.float64) for k, v in w.items()}, good.codec)
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in m64.weights.values())


def test_properties_match_config():
    m = random_model(4, n_layers=3, d_model=7, n_heads=2, d_head=2, d_mlp=3)
    assert (m.n_layers, m.d_model, m.d_head, m.d_mlp, m.n_heads) == (3, 7, 2, 3, 2)
    assert m.heads_per_layer == m.config.heads_per_layer and len(m.heads_per_layer) == 3
    assert m.residual_labels == [f"r{i}" for i in range(7)]
    assert m.n_params == sum(int(np.prod(s)) for s in expected_weight_shapes(m.config).values())


def test_forward_numpy_matches_a_loop_reference():
    """An independent, position-by-position float64 re-implementation of the contract's pseudo-code."""
    m = random_model(5, pad="PAD")
    toks = np.array([[0, 1, 2, 4], [0, 3, 4, 4]])
    out = m.forward_numpy(toks)
    w = {k: v.astype(np.float64) for k, v in m.weights.items()}
    for b in range(2):
        T = toks.shape[1]
        x = np.array([w["W_E"][toks[b, t]] + w["W_pos"][t] for t in range(T)])
        for layer in range(m.n_layers):
            a = f"blocks.{layer}.attn."
            attn = np.tile(w[a + "b_O"], (T, 1))
            for h in range(m.n_heads):
                q = x @ w[a + "W_Q"][h] + w[a + "b_Q"][h]
                k = x @ w[a + "W_K"][h] + w[a + "b_K"][h]
                v = x @ w[a + "W_V"][h] + w[a + "b_V"][h]
                for i in range(T):
                    s = np.array([q[i] @ k[j] if toks[b, j] != 4 else -np.inf for j in range(T)])
                    p = np.exp(s - s.max())
                    p /= p.sum()
                    attn[i] += (p @ v) @ w[a + "W_O"][h]
            x = x + attn
            mm = f"blocks.{layer}.mlp."
            x = x + np.maximum(x @ w[mm + "W_in"] + w[mm + "b_in"], 0) @ w[mm + "W_out"] + w[mm + "b_out"]
        ref = x @ w["W_U"] + w["b_U"]
        np.testing.assert_allclose(out[b], ref, rtol=1e-5, atol=1e-5)


def test_fraction_model_pad_masking_by_hand():
    m = fraction_model(max_seq_len=5)
    # keys: BOS, a, b, a (+ PADs ignored) -> 2 of 4 keys are "a" at every position
    res = m.apply(["BOS", "a", "b", "a", "PAD", "PAD"])
    assert res.decoded[0] == "BOS"
    np.testing.assert_allclose(res.decoded[1:], [0.5] * 5, rtol=0, atol=1e-7)
    res = m.apply(["BOS", "b", "b", "a"])
    np.testing.assert_allclose(res.decoded[1:], [0.25] * 3, rtol=0, atol=1e-7)
    assert len(res.residuals) == 3 and res.residuals[0].shape == (4, 4)
    assert res.output.shape == (4, 1) and res.unembedded.shape == (4,)


def test_apply_batch_equals_apply_with_mixed_lengths():
    m = random_model(6)
    inputs = [["BOS", 1], ["BOS", 2, 3, 1], ["BOS", 3], ["BOS"], ["BOS", 1, 1, 1, 1]]
    assert m.apply_batch(inputs) == [m.apply(x).decoded for x in inputs]


def test_forward_numpy_input_errors():
    m = random_model(7)
    with pytest.raises(ModelError, match="exceeds n_ctx 5"):
        m.forward_numpy(np.zeros((1, 6), np.int64))
    with pytest.raises(ModelError, match=r"token ids must lie in \[0, d_vocab=4\)"):
        m.forward_numpy(np.array([[0, 4]]))
    with pytest.raises(ModelError, match="must be integers"):
        m.forward_numpy(np.array([[0.0, 1.0]]))


# -------------------------------------------------------------------------------------------- tracr oracle


@pytest.fixture(scope="module")
def tracr_models():
    tracr_compiling = pytest.importorskip("tracr.compiler.compiling", reason="tracr-pypi not installed")
    from tracr.compiler import lib as tlib
    from tracr.rasp import rasp as trasp

    rev_prog = tlib.make_reverse(trasp.tokens)
    reverse = tracr_compiling.compile_rasp_to_model(rev_prog, {1, 2, 3}, 4, compiler_bos="BOS")
    frac_prog = tlib.make_frac_prevs((trasp.tokens == "x").named("is_x"))
    frac = tracr_compiling.compile_rasp_to_model(frac_prog, {"x", "y"}, 4, compiler_bos="BOS")
    # tracr makes labels unique ("reverse_1"); the output directions carry the program's label
    return {
        "reverse": (reverse, rev_prog.label, {1, 2, 3}, False),
        "frac": (frac, frac_prog.label, {"x", "y"}, True),
    }


@pytest.mark.parametrize("name", ["reverse", "frac"])
def test_numpy_forward_matches_tracr(tracr_models, name):
    tracr_model, label, vocab, numerical = tracr_models[name]
    ours = from_tracr(tracr_model, label, vocab, 4, numerical)
    values = sorted(vocab, key=str)
    # tracr's apply costs ~0.5 s per call here, so a few inputs of different lengths and contents
    cases = [values[::-1], (values * 4)[1:5]]
    for xs in cases:
        inp = ["BOS", *xs]
        theirs = tracr_model.apply(inp)
        mine = ours.apply(inp)
        if numerical:
            assert mine.decoded[0] == "BOS"
            np.testing.assert_allclose(mine.decoded[1:], theirs.decoded[1:], rtol=1e-5, atol=1e-5)
        else:
            assert mine.decoded == theirs.decoded
        for r_mine, r_theirs in zip(mine.residuals[1:], theirs.residuals, strict=True):
            np.testing.assert_allclose(r_mine, np.asarray(r_theirs)[0], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------ compiled


def test_compiled_reverse_matches_evaluate_numpy_and_torch():
    import torch

    from rasp_compiler import rasp
    from rasp_compiler.compiler import compiling
    from rasp_compiler.rasp import lib

    program = lib.make_reverse(rasp.tokens)
    m = compiling.compile_rasp_to_model(program, {1, 2, 3}, 4)
    tm = m.to_torch()
    inputs = [list(xs) for n in range(5) for xs in itertools.product([1, 2, 3], repeat=n)]
    decoded = m.apply_batch([["BOS", *xs] for xs in inputs])
    for xs, got in zip(inputs, decoded, strict=True):
        assert got == ["BOS", *rasp.evaluate(program, xs)], xs
    for xs in inputs[::7]:
        ids = m.encode(["BOS", *xs])
        out = tm(torch.tensor([ids]))[0].detach().numpy()
        assert m.decode(out) == m.apply(["BOS", *xs]).decoded


def test_plain_json_is_the_one_readable_json_form_of_values():
    import json
    from fractions import Fraction

    from rasp_compiler.model.values import plain_json

    value = (1, "a", np.int64(3), np.float32(0.5), Fraction(1, 4), float("inf"), None, True, ((2, "b"),))
    assert plain_json(value) == [1, "a", 3, 0.5, 0.25, "inf", None, True, [[2, "b"]]]
    assert plain_json(object()).startswith("<object object")
    json.dumps(plain_json(value), allow_nan=False)  # always serialisable, never NaN or Infinity
