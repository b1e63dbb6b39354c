"""Stage `compiler.layout.allocate_layers`: each op as early as its inputs allow (longest path)."""

from support.stages import options, small_program, through

from rasp_compiler.compiler.layout import allocate_layers


def test_map_then_aggregate_needs_two_layers() -> None:
    out = through("blocks", small_program(), options())
    lay = allocate_layers(out["graph"], out["blocks"], options())
    # flip's MLP sits in layer 0; the aggregate reading it can only come in layer 1's attention
    assert lay.mlps[0] == ("flip",)
    assert lay.heads[1] == ("shifted",)
    assert lay.n_layers == 2
    assert lay.ready["flip"] < lay.ready["shifted"]
