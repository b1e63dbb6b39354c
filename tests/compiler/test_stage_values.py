"""Stage `compiler.values.infer_values`: the exact value set of every op over every valid input."""

from support.stages import options, small_program, through

from rasp_compiler import rasp


def test_value_sets_of_a_map_and_an_aggregate() -> None:
    v = through("values", small_program(), options())["values"]
    assert set(v["tokens"].values) == {1, 2, 3}
    assert set(v["flip"].values) == {3, 2, 1}
    assert set(v["shifted"].values) == {1, 2, 3}
    assert v["shifted"].may_be_none  # position 0 selects nothing


def test_numerical_mean_values_are_every_achievable_mean() -> None:
    x = rasp.numerical(rasp.Map(lambda t: 1 if t == 1 else 0, rasp.tokens)).named("is_one")
    everything = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.TRUE).named("all")
    frac = rasp.numerical(rasp.Aggregate(everything, x, default=0)).named("frac")
    vals = set(through("values", frac, options(max_seq_len=3))["values"]["frac"].values)
    want = {n / d for d in (1, 2, 3) for n in range(d + 1)}
    assert {round(float(v), 12) for v in vals} >= {round(w, 12) for w in want}
