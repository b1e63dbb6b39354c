"""Stage `compiler.fuse.plan_fusion`: off by default (every variable stays in the residual); with
`fuse_maps`, a Map of an elementwise op read only by it becomes one MLP."""

from support.stages import options, through

from rasp_compiler import rasp


def _chain() -> object:
    inner = rasp.categorical(rasp.Map(lambda x: x + 1, rasp.tokens)).named("inner")
    return rasp.categorical(rasp.Map(lambda x: x * 2, inner, simplify=False)).named("outer")


def test_no_fusion_by_default() -> None:
    f = through("fusion", _chain(), options())["fusion"]
    assert dict(f.fused_into) == {}


def test_fuse_maps_folds_the_inner_map_into_the_outer() -> None:
    f = through("fusion", _chain(), options(fuse_maps=True))["fusion"]
    assert dict(f.fused_into) == {"inner": "outer"}
    eff = f.effective["outer"]
    assert eff.ops == ("inner", "outer") and eff.inputs == ("tokens",)
    assert eff.f(3) == 8  # (3 + 1) * 2
