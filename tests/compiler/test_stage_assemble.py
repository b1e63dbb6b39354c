"""Stage `compiler.assemble.assemble`: weights in the contract's names and shapes, codec, annotation."""

from support.stages import options, small_program, through

from rasp_compiler.compiler.assemble import assemble
from rasp_compiler.compiler.layout import allocate_layers
from rasp_compiler.model.config import expected_weight_shapes


def test_weights_codec_and_annotation_fit_together() -> None:
    opts = options()
    out = through("blocks", small_program(), opts)
    lay = allocate_layers(out["graph"], out["blocks"], opts)
    a = assemble(out["graph"], out["values"], out["residual"], out["blocks"], lay, opts)
    shapes = expected_weight_shapes(a.config)
    assert {n: w.shape for n, w in a.weights.items()} == shapes
    assert a.config.residual_labels == list(out["residual"].labels)
    assert a.codec.output_values[:3] == [1, 2, 3] and None in a.codec.output_values
    assert a.annotation.output == "shifted"
    heads = [b for b in a.annotation.blocks if b.component == "attn"]
    assert [(b.op, b.layer) for b in heads] == [("shifted", 1)]
