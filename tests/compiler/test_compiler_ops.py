"""Single ops and edge cases, each against `rasp.evaluate`: selector combinators, selector width at
large max_seq_len (tracr fails from 10 on), numerical maps of fine value sets, length, constants,
and the BOS invariant (every SOp direction is zero at BOS)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from support.compiler import check_model, inputs_for

from rasp_compiler import rasp
from rasp_compiler.compiler import compiling
from rasp_compiler.compiler.options import CompileError
from rasp_compiler.rasp import lib

C = rasp.Comparison


def _exact(program, vocab, n, **kw) -> None:
    model = compiling.compile_rasp_to_model(program, vocab, n, **kw)
    count, bad = check_model(program, model, inputs_for(vocab, n), use_torch=False)
    assert count > 0 and not bad, bad[:3]


@pytest.mark.parametrize("combine", ["and", "or", "not", "and_not"])
def test_selector_combinators_same_pair(combine: str) -> None:
    a = rasp.Select(rasp.tokens, rasp.tokens, C.LT)
    b = rasp.Select(rasp.tokens, rasp.tokens, C.EQ)
    sel = {
        "and": lambda: rasp.SelectorAnd(a, rasp.Select(rasp.tokens, rasp.tokens, C.LEQ)),
        "or": lambda: rasp.SelectorOr(a, b),
        "not": lambda: rasp.SelectorNot(a),
        "and_not": lambda: rasp.SelectorAnd(rasp.SelectorNot(b), rasp.SelectorOr(a, b)),
    }[combine]()
    _exact(rasp.SelectorWidth(sel), {0, 1, 2}, 5)


def test_selector_and_over_different_pairs() -> None:
    sel = rasp.SelectorAnd(
        rasp.Select(rasp.tokens, rasp.tokens, C.EQ), rasp.Select(rasp.indices, rasp.indices, C.LT)
    )
    _exact(rasp.SelectorWidth(sel).named("prev_same"), {0, 1, 2}, 5)
    # Not(Or(.,.)) over different pairs is an And of negations: compilable
    sel2 = rasp.SelectorNot(
        rasp.SelectorOr(
            rasp.Select(rasp.tokens, rasp.tokens, C.NEQ), rasp.Select(rasp.indices, rasp.indices, C.GEQ)
        )
    )
    _exact(rasp.SelectorWidth(sel2), {0, 1, 2}, 5)
    agg = rasp.numerical(rasp.Aggregate(sel, rasp.numerical(rasp.Map(lambda x: x, rasp.tokens)), default=0))
    _exact(agg, {0, 1, 2}, 5)


def test_or_over_different_pairs_is_refused_with_label() -> None:
    sel = rasp.SelectorOr(
        rasp.Select(rasp.tokens, rasp.tokens, C.EQ), rasp.Select(rasp.indices, rasp.indices, C.LT)
    ).named("either")
    with pytest.raises(CompileError, match="either"):
        compiling.compile_rasp_to_model(rasp.SelectorWidth(sel).named("w"), {0, 1}, 4)


@pytest.mark.parametrize("n", [10, 20, 40])
def test_selector_width_every_width(n: int) -> None:
    prog = lib.make_length()
    model = compiling.compile_rasp_to_model(prog, {"a", "b"}, n)
    rng = random.Random(n)
    inputs = [[rng.choice("ab") for _ in range(k)] for k in range(1, n + 1)]
    count, bad = check_model(prog, model, inputs, use_torch=False)
    assert count == n and not bad, bad[:2]
    hist = lib.make_hist()
    model = compiling.compile_rasp_to_model(hist, {"a", "b"}, n)
    inputs += [["a"] * k + ["b"] * (n - k) for k in range(n + 1)]
    count, bad = check_model(hist, model, inputs, use_torch=False)
    assert not bad, bad[:2]


def test_numerical_selector_width_and_length() -> None:
    n = 30
    prog = rasp.numerical(rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, C.TRUE)))
    model = compiling.compile_rasp_to_model(prog, {1, 2}, n)
    count, bad = check_model(prog, model, [[1] * k for k in range(1, n + 1)], use_torch=False)
    assert count == n and not bad
    _exact((rasp.length - rasp.indices).named("left"), {1, 2}, 6)


def test_numerical_map_of_fine_means() -> None:
    # frac_prevs takes every value k/m, m <= 12; a threshold Map must decode each exactly
    frac = lib.make_frac_prevs(rasp.tokens == "a")
    prog = rasp.Map(lambda x: int(x > 0.4), frac).named("mostly_a")
    model = compiling.compile_rasp_to_model(prog, {"a", "b"}, 12)
    rng = random.Random(1)
    inputs = [[rng.choice("ab") for _ in range(rng.randint(1, 12))] for _ in range(400)]
    count, bad = check_model(prog, model, inputs, use_torch=False)
    assert count == 400 and not bad, bad[:3]


def test_numerical_aggregate_of_non_binary_values() -> None:
    vals = rasp.numerical(rasp.Map(lambda x: 3 * x - 1, rasp.tokens))
    mean = rasp.numerical(rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, C.LEQ), vals, default=0))
    _exact(mean, {0, 1, 2}, 5)
    _exact(rasp.Map(lambda x: round(x, 6) > 1, mean), {0, 1, 2}, 5)


def test_full_constant_and_linear_sequence_map() -> None:
    full = rasp.Full(2).named("two")
    _exact(rasp.SequenceMap(lambda x, y: x * y, rasp.tokens, full), {0, 1, 3}, 4)
    lin = rasp.numerical(rasp.LinearSequenceMap(rasp.tokens, rasp.indices, 0.5, -2)).named("lin")
    _exact(lin, {0, 1, 3}, 4)
    const = rasp.ConstantSOp([3, 1, 2, 0], check_length=False).named("c")
    _exact(rasp.SequenceMap(lambda x, y: x + y, rasp.tokens, const), {0, 1}, 4)


def test_categorical_none_decodes_none() -> None:
    prog = lib.shift_by(2, rasp.tokens)
    _exact(prog, {"x", "y"}, 5)


def test_same_sop_on_both_sides_of_sequence_map() -> None:
    _exact(rasp.SequenceMap(lambda x, y: x * 10 + y, rasp.tokens, rasp.tokens), {0, 1, 2}, 3)


def test_duplicate_labels_are_kept_apart() -> None:
    a = rasp.Map(lambda x: x + 1, rasp.tokens).named("dup")
    b = rasp.Map(lambda x: x * 3, rasp.tokens).named("dup")
    _exact(rasp.SequenceMap(lambda x, y: x - y, a, b), {0, 1, 2}, 3)


@pytest.mark.parametrize("name", ["reverse", "sort", "frac_prevs", "shuffle_dyck2", "dedup", "most_frequent"])
def test_bos_position_holds_no_sop_value(name: str) -> None:
    entry = lib.LIBRARY[name]
    model = compiling.compile_rasp_to_model(entry.builder(), entry.vocab, entry.max_seq_len)
    bos = model.codec.bos
    sop_cols = [
        i
        for i, lab in enumerate(model.residual_labels)
        if lab not in ("one", f"tokens:{bos}") and "__" not in lab
    ]
    for example in entry.examples:
        res = model.apply([bos, *example]).residuals
        for r in res:
            assert np.abs(r[0, sop_cols]).max() < 1e-6


@pytest.mark.parametrize("name", ["frac_prevs", "pair_balance", "shuffle_dyck2", "detect_pattern", "sort"])
def test_fold_embeddings_is_exact_and_not_deeper(name: str) -> None:
    entry = lib.LIBRARY[name]
    program = entry.builder()
    plain = compiling.compile_rasp_to_model(program, entry.vocab, entry.max_seq_len)
    folded = compiling.compile_rasp_to_model(program, entry.vocab, entry.max_seq_len, fold_embeddings=True)
    assert folded.n_layers <= plain.n_layers
    inputs = inputs_for(entry.vocab, entry.max_seq_len, limit=3000, n_random=300)
    count, bad = check_model(program, folded, inputs, use_torch=False)
    assert count > 0 and not bad, bad[:3]


@pytest.mark.parametrize("name", ["sort", "frac_prevs", "reverse", "hist"])
def test_padding_does_not_change_real_positions(name: str) -> None:
    entry = lib.LIBRARY[name]
    program = entry.builder()
    model = compiling.compile_rasp_to_model(program, entry.vocab, entry.max_seq_len, compiler_pad="PAD")
    for x in entry.examples:
        want = rasp.evaluate(program, x)
        padded = model.apply(["BOS", *x] + ["PAD"] * (entry.max_seq_len - len(x))).decoded[1 : len(x) + 1]
        if model.config.output_encoding == "numerical":
            assert padded == pytest.approx(want, abs=1e-4)
        else:
            assert padded == want


def test_large_numerical_value_sets_stay_exact() -> None:
    """shuffle_dyck at max_seq_len 24: balances take ~10^5 values, thresholds sit 1/552 from 0."""
    entry = lib.LIBRARY["shuffle_dyck"]
    program = entry.builder()
    model = compiling.compile_rasp_to_model(program, entry.vocab, 24)
    rng = random.Random(7)
    inputs = [[rng.choice(sorted(entry.vocab)) for _ in range(rng.randint(1, 24))] for _ in range(200)]
    inputs += [["("] * k + [")"] * k for k in range(1, 13)] + [["("] * 12 + [")"] * 11 + ["("]]
    count, bad = check_model(program, model, inputs, use_torch=False)
    assert count == len(inputs) and not bad, bad[:3]


def test_input_error_larger_than_margin_is_refused() -> None:
    # values 1000 and 1000.000001 differ by less than float32 resolves at 1000: no exact threshold
    vals = rasp.numerical(rasp.Map(lambda x: 1000 + x * 1e-6, rasp.tokens))
    same = rasp.numerical(rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, C.EQ), vals, default=0))
    prog = rasp.Map(lambda x: x > 1000 + 0.5e-6, same).named("tiny_step")
    with pytest.raises(CompileError, match="tiny_step"):
        compiling.compile_rasp_to_model(prog, {0, 1}, 3)
