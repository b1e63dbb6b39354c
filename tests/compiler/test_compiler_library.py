"""Every library program, compiled at two sizes, decodes exactly what `rasp.evaluate` says.

All inputs when there are at most 20,000, else 2,000 random ones; numerical outputs within 1e-4.
Also: the annotation covers every nonzero weight and every op the output depends on.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.compiler import check_model, inputs_for

from rasp_compiler.compiler import compiling
from rasp_compiler.model.annotation import Annotation
from rasp_compiler.rasp import lib

CONFIGS = (5, 10)
NAMES = sorted(lib.LIBRARY)


@pytest.mark.parametrize("max_seq_len", CONFIGS)
@pytest.mark.parametrize("name", NAMES)
def test_library_program_is_exact(name: str, max_seq_len: int) -> None:
    entry = lib.LIBRARY[name]
    program = entry.builder()
    model = compiling.compile_rasp_to_model(program, entry.vocab, max_seq_len)
    inputs = inputs_for(entry.vocab, max_seq_len, distinct=entry.distinct_tokens)
    n, bad = check_model(program, model, inputs)
    assert n > 0, f"{name}: no valid inputs"
    assert not bad, f"{name} @ {max_seq_len}: {len(bad)}/{n} wrong, e.g. {bad[:3]}"


def _nonzero_rows(w: np.ndarray) -> set[int]:
    return set(np.nonzero(np.abs(w).sum(axis=1))[0].tolist())


def _nonzero_cols(w: np.ndarray) -> set[int]:
    return set(np.nonzero(np.abs(w).sum(axis=0))[0].tolist())


@pytest.mark.parametrize("name", NAMES)
def test_fused_and_folded_is_exact(name: str) -> None:
    """fuse_maps + fold_embeddings: still exact, never deeper or wider than the plain compile."""
    entry = lib.LIBRARY[name]
    program = entry.builder()
    plain = compiling.compile_rasp_to_model(program, entry.vocab, entry.max_seq_len)
    model = compiling.compile_rasp_to_model(program, entry.vocab, entry.max_seq_len, **OPTIMISED)
    assert model.n_layers <= plain.n_layers and model.d_model <= plain.d_model
    inputs = inputs_for(
        entry.vocab, entry.max_seq_len, distinct=entry.distinct_tokens, limit=5000, n_random=500
    )
    n, bad = check_model(program, model, inputs)
    assert n > 0 and not bad, f"{name}: {len(bad)}/{n} wrong, e.g. {bad[:3]}"


OPTIMISED = {"fuse_maps": True, "fold_embeddings": True}


@pytest.mark.parametrize("opts", [{}, OPTIMISED], ids=["plain", "optimised"])
@pytest.mark.parametrize("name", NAMES)
def test_annotation_covers_weights(name: str, opts: dict) -> None:
    entry = lib.LIBRARY[name]
    model = compiling.compile_rasp_to_model(entry.builder(), entry.vocab, entry.max_seq_len, **opts)
    ann = model.annotation
    text = json.dumps(ann.to_json())
    assert Annotation.from_json(json.loads(text)).to_json() == json.loads(text)
    labels = model.residual_labels
    W = model.weights
    # weight-derived structure must be inside what the annotation declares
    embed_writes = {w for b in ann.blocks if b.component == "embed" for w in b.writes}
    pos_writes = {w for b in ann.blocks if b.component == "pos_embed" for w in b.writes}
    assert {labels[i] for i in _nonzero_cols(W["W_E"])} <= embed_writes
    assert {labels[i] for i in _nonzero_cols(W["W_pos"])} <= pos_writes
    heads = {(b.layer, b.head): b for b in ann.blocks if b.component == "attn"}
    for layer in range(model.n_layers):
        a = f"blocks.{layer}.attn."
        for h in range(model.n_heads):
            mats = [W[a + n][h] for n in ("W_Q", "W_K", "W_V")]
            if (layer, h) not in heads:
                assert all(not m.any() for m in mats) and not W[a + "W_O"][h].any()
                continue
            b = heads[(layer, h)]
            for key, m in zip("qkv", mats):
                assert {labels[i] for i in _nonzero_rows(m)} <= set(b.reads[key]), (name, layer, h, key)
                assert {labels[i] for i in _nonzero_rows(m)} == set(b.reads[key])
            assert {labels[i] for i in _nonzero_cols(W[a + "W_O"][h])} == set(b.writes)
        m = f"blocks.{layer}.mlp."
        covered: set[int] = set()
        for b in ann.blocks:
            if b.component != "mlp" or b.layer != layer:
                continue
            lo, hi = b.neurons
            covered |= set(range(lo, hi))
            assert {labels[i] for i in _nonzero_rows(W[m + "W_in"][:, lo:hi])} == set(b.reads["in"])
            assert {labels[i] for i in _nonzero_cols(W[m + "W_out"][lo:hi])} == set(b.writes)
        assert _nonzero_cols(W[m + "W_in"]) | set(np.nonzero(W[m + "b_in"])[0].tolist()) <= covered
    # every SOp the output depends on is implemented by some block; every selector sits in a head
    implemented = {op for b in ann.blocks for op in b.all_ops}
    folded = {s for b in ann.blocks for s in b.selectors}
    for op, info in ann.ops.items():
        if info.encoding is None:
            assert op in folded, f"{name}: selector {op} is in no head"
        else:
            assert op in implemented, f"{name}: op {op} has no block"
    # a block writes only the directions of the op it computes (and that op's hidden helpers)
    for b in ann.blocks:
        if b.op == "one":
            continue
        own = set(ann.ops[b.op].directions) | {w for w in labels if w.startswith(b.op + "__")}
        assert set(b.writes) <= own, (b.op, b.writes)
    # every residual direction belongs to exactly one op (or is `one`/BOS/a helper)
    owners = [d for info in ann.ops.values() for d in info.directions]
    assert len(owners) == len(set(owners))
    assert set(labels) == set(owners) | {"one", f"tokens:{model.codec.bos}"} | {
        w for w in labels if "__" in w
    }
    assert ann.output in ann.ops
