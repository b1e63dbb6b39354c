"""Stage `compiler.blocks.build_blocks`: a head per Aggregate, an MLP per Map, reading and writing the
right residual directions."""

import numpy as np
from support.stages import options, small_program, through

from rasp_compiler.compiler.blocks import run_mlp


def test_map_mlp_is_a_lookup_table_and_aggregate_is_a_head() -> None:
    out = through("blocks", small_program(), options())
    blocks, res = out["blocks"], out["residual"]
    flip = blocks.by_op["flip"]
    assert flip.head is None and flip.mlp is not None
    assert set(flip.mlp.reads) <= {res.dir_of("tokens", v) for v in (1, 2, 3)} | {"one"}
    for token, want in ((1, 3), (2, 2), (3, 1)):
        on = {res.dir_of("tokens", token), "one"}
        x = np.array([[1.0 if r in on else 0.0 for r in flip.mlp.reads]])
        y = run_mlp(flip.mlp, x)[0]
        got = {w: v for w, v in zip(flip.mlp.writes, y, strict=True) if abs(v) > 0.5}
        assert got == {res.dir_of("flip", want): got[res.dir_of("flip", want)]}
    shifted = blocks.by_op["shifted"]
    assert shifted.head is not None and shifted.mlp is None
    assert set(shifted.deps) >= {"flip"}
