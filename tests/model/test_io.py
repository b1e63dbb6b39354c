"""Model files: bit-exact round trips, and a clear ModelFileError for each kind of damage."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file
from support.model_factory import random_model

import rasp_compiler
from rasp_compiler.model import Codec, CompiledModel, ModelFileError, load, save
from rasp_compiler.model.io import manifest_sha256


def _assert_same(a: CompiledModel, b: CompiledModel) -> None:
    assert a.config == b.config
    assert a.codec == b.codec
    assert [type(t) for t in a.codec.input_tokens] == [type(t) for t in b.codec.input_tokens]
    assert a.weights.keys() == b.weights.keys()
    for name in a.weights:
        assert a.weights[name].tobytes() == b.weights[name].tobytes(), name
        assert b.weights[name].dtype == np.float32 and b.weights[name].flags.c_contiguous
    assert a.program_source == b.program_source


def test_round_trip_is_bit_exact(tmp_path):
    m = random_model(0, pad="PAD")
    m.save(tmp_path / "m")
    back = rasp_compiler.load(tmp_path / "m")
    _assert_same(m, back)
    assert back.annotation is None and m.annotation is None
    toks = np.array([[0, 1, 2, 4]])
    assert m.forward_numpy(toks).tobytes() == back.forward_numpy(toks).tobytes()


def test_round_trip_keeps_mixed_token_types(tmp_path):
    base = random_model(1, numerical=True)
    codec = Codec.from_vocab([1, True, 2.5, "a"], base.max_seq_len, pad=None, output_encoding="numerical")
    cfg = base.config.__class__(**{**base.config.to_json(), "d_vocab": codec.d_vocab})
    w = dict(base.weights)
    w["W_E"] = np.arange(codec.d_vocab * cfg.d_model, dtype=np.float32).reshape(codec.d_vocab, cfg.d_model)
    m = CompiledModel(cfg, w, codec, annotation=None, program_source="mixed")
    save(m, tmp_path)
    back = load(tmp_path)
    _assert_same(m, back)
    assert back.codec.input_tokens == ["BOS", True, 1, 2.5, "a"]
    assert back.apply(["BOS", True, 1]).decoded == m.apply(["BOS", True, 1]).decoded


@pytest.fixture()
def saved(tmp_path):
    m = random_model(2)
    save(m, tmp_path)
    return tmp_path


def _rewrite_json(d, fn, sign=True):
    """Edit model.json; `sign` re-computes its manifest, as a deliberate forger would, so that the checks
    behind the manifest get exercised too."""
    doc = json.loads((d / "model.json").read_text())
    fn(doc)
    if sign and isinstance(doc, dict):
        doc["manifest_sha256"] = manifest_sha256(doc)
    (d / "model.json").write_text(json.dumps(doc))


def test_truncated_weights(saved):
    p = saved / "weights.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="weights.safetensors is truncated or corrupt"):
        load(saved)
    p.write_bytes(data[:4])
    with pytest.raises(ModelFileError, match="weights.safetensors is truncated or corrupt"):
        load(saved)


def test_flipped_byte_caught_by_hash(saved):
    p = saved / "weights.safetensors"
    data = bytearray(p.read_bytes())
    data[-5] ^= 0x10
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="weights.safetensors does not match model.json: sha256"):
        load(saved)


def test_missing_tensor_and_shape_mismatch(saved):
    import hashlib

    m = load(saved)
    w = {k: v for k, v in m.weights.items() if k != "blocks.1.attn.b_V"}
    save_file(w, str(saved / "weights.safetensors"))
    digest = hashlib.sha256((saved / "weights.safetensors").read_bytes()).hexdigest()
    _rewrite_json(saved, lambda d: d.__setitem__("weights_sha256", digest))
    with pytest.raises(ModelFileError, match=r"lacks tensor\(s\) \['blocks.1.attn.b_V'\]"):
        load(saved)
    save_file(m.weights, str(saved / "weights.safetensors"))
    digest = hashlib.sha256((saved / "weights.safetensors").read_bytes()).hexdigest()

    def grow_mlp(doc):
        doc["weights_sha256"] = digest
        doc["config"]["d_mlp"] += 1

    _rewrite_json(saved, grow_mlp)
    with pytest.raises(
        ModelFileError, match=r"tensor blocks.0.mlp.W_in has shape \[8, 5\], the config says \[8, 6\]"
    ):
        load(saved)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.__setitem__("version", 99), "unknown format version 99"),
        (lambda d: d.__setitem__("format", "tracr"), "format is 'tracr'"),
        (lambda d: d.pop("codec"), "lacks the field 'codec'"),
        (lambda d: d["config"].pop("n_heads"), r"lacks fields \['n_heads'\]"),
        (lambda d: d["config"].__setitem__("n_ctx", 3), "n_ctx must be max_seq_len"),
        (lambda d: d["codec"]["input_tokens"].__setitem__(1, ["int", "1"]), "malformed saved token value"),
        (lambda d: d["codec"]["input_tokens"].pop(), "codec has 3 input tokens, config.d_vocab is 4"),
        (lambda d: d.__setitem__("program_source", 5), "program_source must be a string"),
    ],
)
def test_damaged_json(saved, edit, message):
    _rewrite_json(saved, edit)
    with pytest.raises(ModelFileError, match=message):
        load(saved)


def test_missing_and_unparsable_files(saved, tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load(tmp_path / "nowhere")
    (saved / "model.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="model.json is not valid JSON"):
        load(saved)
    (saved / "model.json").unlink()
    with pytest.raises(ModelFileError, match="model.json is missing"):
        load(saved)


def test_no_pickle_in_files(saved):
    names = sorted(p.name for p in saved.iterdir())
    assert names == ["model.json", "weights.safetensors"]
    assert b"\x80\x04" not in (saved / "model.json").read_bytes()[:2]
    doc = json.loads((saved / "model.json").read_text())
    assert doc["format"] == "rasp_compiler.model" and doc["version"] == 2


def test_compiled_model_round_trip(tmp_path):
    from rasp_compiler import rasp
    from rasp_compiler.compiler import compiling
    from rasp_compiler.rasp import lib

    m = compiling.compile_rasp_to_model(lib.make_reverse(rasp.tokens), {1, 2, 3}, 4)
    m.save(tmp_path)
    back = load(tmp_path)
    _assert_same(m, back)
    assert type(back.annotation) is type(m.annotation)
    assert back.annotation_json() == m.annotation_json()
    for xs in ([], [1], [3, 1], [2, 3, 1, 1]):
        a, b = m.apply(["BOS", *xs]), back.apply(["BOS", *xs])
        assert a.decoded == b.decoded == ["BOS", *reversed(xs)]
        assert a.output.tobytes() == b.output.tobytes()


def test_weights_header_is_canonical(saved):
    """The safetensors header lists `__metadata__` first, then tensors by name, each map sorted."""
    import struct

    raw = (saved / "weights.safetensors").read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    pairs = json.loads(raw[8 : 8 + hlen], object_pairs_hook=lambda kv: kv)
    keys = [k for k, _ in pairs]
    assert keys[0] == "__metadata__" and keys[1:] == sorted(keys[1:])
    assert [k for k, _ in dict(pairs)["__metadata__"]] == ["format", "version"]
    assert (8 + hlen) % 8 == 0  # the data buffer stays aligned as the format requires
    m = load(saved)
    from safetensors.numpy import load_file

    direct = load_file(str(saved / "weights.safetensors"))
    assert sorted(direct) == sorted(m.weights)


def test_save_is_byte_identical_across_processes(tmp_path):
    """Different string-hash seeds (what changed safetensors' metadata order) give the same files."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parents[1]  # tests/, where the support package lives
    code = (
        "import sys; sys.path.insert(0, sys.argv[2]); from support.model_factory import random_model; "
        "from rasp_compiler.model import save; save(random_model(3, pad='PAD'), sys.argv[1])"
    )
    outs = []
    for hashseed in ("1", "2", "3"):
        d = tmp_path / f"h{hashseed}"
        env = {
            **os.environ,
            "PYTHONHASHSEED": hashseed,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(here.parent),
        }
        subprocess.run([sys.executable, "-c", code, str(d), str(here)], check=True, env=env, timeout=120)
        outs.append({p.name: p.read_bytes() for p in sorted(d.iterdir())})
    assert outs[0] == outs[1] == outs[2]
    import hashlib

    doc = json.loads(outs[0]["model.json"])
    assert doc["weights_sha256"] == hashlib.sha256(outs[0]["weights.safetensors"]).hexdigest()
    load(tmp_path / "h1")
