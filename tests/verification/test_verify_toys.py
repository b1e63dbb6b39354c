"""The toy model (tests/support/toys.py) follows its spec, so the tests built on it mean what they say."""

from __future__ import annotations

import numpy as np
from support.toys import LABELS, build_toy, toks


def test_toy_weights_follow_the_spec() -> None:
    toy = build_toy()
    idx = {lab: i for i, lab in enumerate(LABELS)}
    wq = toy.weights["blocks.0.attn.W_Q"][0]
    assert set(np.nonzero(np.abs(wq).sum(1))[0]) == {idx[x] for x in toks("indices")}
    assert not np.any(toy.weights["blocks.1.attn.W_O"][1])  # padded head
    w_out = toy.weights["blocks.1.mlp.W_out"]
    assert set(np.nonzero(np.abs(w_out[2]))[0]) == {idx["dm2:p"]}
