"""Stage `compiler.spaces.build_residual`: one labelled direction per (categorical variable, value)."""

from support.stages import options, small_program, through

from rasp_compiler.model.directions import Direction


def test_one_direction_per_value_and_labels_parse_back() -> None:
    res = through("residual", small_program(), options())["residual"]
    assert res.labels[0] == "one"
    assert {res.dir_of("flip", v) for v in (1, 2, 3)} == {"flip:1", "flip:2", "flip:3"}
    assert res.dir_of("flip", 7) is None
    for label in res.labels:
        assert str(Direction.parse(label)) == label
    assert len(set(res.labels)) == len(res.labels)
    assert {"indices:0", "indices:3", "tokens:1", "tokens:BOS"} <= set(res.labels)
