"""Causal (decoder-only) compilation: the reference is the prefix evaluation, position i of
`evaluate(program, tokens[:i+1])`; a causal compile equals it on every input or is refused naming an op.

Expected values here are written by hand or come from `rasp.evaluate` on prefixes (the language's
definition, which the compiler does not use to build weights)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from support.library_models import CAUSAL_NAMES, CAUSAL_REFUSED, compiled

from rasp_compiler import rasp
from rasp_compiler.compiler import compiling
from rasp_compiler.compiler.options import CompileError, CompilerOptions, UnsupportedProgramError
from rasp_compiler.compiler.preconditions import all_inputs, count_inputs
from rasp_compiler.engine import Engine
from rasp_compiler.model import ModelConfig
from rasp_compiler.model.compiled import CompiledModel, load
from rasp_compiler.model.errors import ModelError
from rasp_compiler.model.outputs import values_equal
from rasp_compiler.rasp.lib import LIBRARY, make_hist, make_length, make_reverse
from rasp_compiler.testing import fuzz
from rasp_compiler.testing.generate import sample_programs

# ------------------------------------------------------------------------------------------- evaluator


def test_causal_evaluation_by_hand() -> None:
    everything = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE)
    assert rasp.evaluate(everything, [1, 2, 3], causal=True) == [
        [True, False, False],
        [True, True, False],
        [True, True, True],
    ]
    assert rasp.evaluate(rasp.length, ["a", "b", "c"], causal=True) == [1, 2, 3]
    assert rasp.evaluate(make_length(), ["a", "b", "c"], causal=True) == [1, 2, 3]
    assert rasp.evaluate(make_hist(), [1, 2, 1], causal=True) == [1, 1, 2]
    assert rasp.evaluate(make_hist(), [1, 2, 1]) == [2, 1, 2]
    # reverse at i reads position (i + 1) - i - 1 = 0 of the prefix
    assert rasp.evaluate_prefixes(make_reverse(rasp.tokens), [1, 2, 3]) == [1, 1, 1]
    assert rasp.evaluate(make_reverse(rasp.tokens), [1, 2, 3], causal=True) == [1, 1, 1]
    with pytest.raises(rasp.RASPTypeError, match="SOp"):
        rasp.evaluate_prefixes(everything, [1, 2])
    with pytest.raises(rasp.RASPTypeError, match="causal"):
        rasp.evaluate(rasp.tokens, [1], causal="yes")


# -------------------------------------------------------------------------------------------- library


def _inputs(name: str) -> list[list]:
    """Every input of every length when there are at most 20,000, else 2,000 random ones."""
    e = LIBRARY[name]
    if count_inputs(len(e.vocab), e.max_seq_len) <= 20_000:
        xs = list(all_inputs(e.vocab, e.max_seq_len))
    else:
        rng = random.Random(name)
        vocab = sorted(e.vocab, key=repr)
        xs = [[rng.choice(vocab) for _ in range(rng.randint(1, e.max_seq_len))] for _ in range(2000)]
    if e.distinct_tokens:
        xs = [x for x in xs if len(set(x)) == len(x)]
    return xs


def _decoded(model: CompiledModel, xs: list[list]) -> list[list]:
    """The engine's decoded outputs (BOS dropped), batched by length."""
    engine = Engine(model, threads=1)
    out: list = [None] * len(xs)
    by_len: dict[int, list[int]] = {}
    for i, x in enumerate(xs):
        by_len.setdefault(len(x), []).append(i)
    for idx in by_len.values():
        ids = np.array([model.encode([model.codec.bos, *xs[i]]) for i in idx])
        logits = engine.run(ids)
        for row, i in enumerate(idx):
            out[i] = model.decode(logits[row])[1:]
    return out


@pytest.mark.parametrize("name", CAUSAL_NAMES)
def test_causal_library_program_equals_the_prefix_evaluation(name: str) -> None:
    model = compiled(name, causal=True)
    assert model.config.causal
    numerical = LIBRARY[name].encoding == "numerical"
    program = LIBRARY[name].builder()
    xs, want = [], []
    for x in _inputs(name):
        try:
            want.append(rasp.evaluate_prefixes(program, x))
        except rasp.RASPEvaluationError:
            continue  # undefined on a prefix (e.g. an aggregate declared agreeing)
        xs.append(x)
    assert len(xs) >= 30
    wrong = [
        (x, w, g)
        for x, w, g in zip(xs, want, _decoded(model, xs), strict=True)
        if not all(values_equal(a, b, numerical) for a, b in zip(w, g, strict=True))
    ]
    assert not wrong, wrong[:3]


@pytest.mark.parametrize("name", sorted(CAUSAL_REFUSED))
def test_non_causal_library_program_is_refused_naming_the_op(name: str) -> None:
    e = LIBRARY[name]
    with pytest.raises(UnsupportedProgramError) as err:
        compiling.compile_rasp_to_model(e.builder(), e.vocab, e.max_seq_len, causal=True)
    message = str(err.value)
    assert message.startswith(CAUSAL_REFUSED[name]), message
    assert "appending a token changes its value" in message


@pytest.mark.parametrize("name", sorted(CAUSAL_REFUSED))
def test_each_refusal_is_needed(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the prefix check switched off, each refused program compiles to a causal model that is
    wrong on some input (or whose evaluator refuses the causal reading): the refusal is not overcautious."""
    e = LIBRARY[name]
    monkeypatch.setattr(compiling, "check_prefix_consistency", lambda *a: None)
    try:
        model = compiling.compile_rasp_to_model(e.builder(), e.vocab, e.max_seq_len, causal=True)
    except CompileError:
        return  # another stage refuses it too
    program = e.builder()
    numerical = e.encoding == "numerical"
    xs, want = [], []
    for x in _inputs(name)[:3000]:
        try:
            want.append(rasp.evaluate_prefixes(program, x))
        except rasp.RASPEvaluationError:
            continue
        xs.append(x)
    got = _decoded(model, xs)
    assert any(
        not all(values_equal(a, b, numerical) for a, b in zip(w, g, strict=True))
        for w, g in zip(want, got, strict=True)
    ), f"{name}: the unchecked causal model is exact on {len(xs)} inputs"


def test_causal_compiles_at_sizes_beyond_exhaustive_checking() -> None:
    """The proofs are structural: vocab 3 x length 12 has 797,160 inputs, above max_exhaustive_inputs."""
    for name in ("causal_induction", "dedup", "first_occurrence", "hist", "is_sorted", "reverse"):
        e = LIBRARY[name]
        assert count_inputs(len(e.vocab), 12) > 20_000
        model = compiling.compile_rasp_to_model(e.builder(), e.vocab, 12, causal=True)
        rng = random.Random(name)
        vocab = sorted(e.vocab, key=repr)
        xs = [[rng.choice(vocab) for _ in range(12)] for _ in range(20)]
        if e.distinct_tokens:
            continue
        program = e.builder()
        assert _decoded(model, xs) == [rasp.evaluate_prefixes(program, x) for x in xs], name


def test_causal_induction_answers_like_induction() -> None:
    causal, plain = LIBRARY["causal_induction"].builder(), LIBRARY["induction"].builder()
    assert rasp.evaluate(causal, list("abcab")) == [None, None, None, "b", "c"]
    for x in all_inputs({"a", "b", "c"}, 5):
        assert rasp.evaluate(causal, x) == rasp.evaluate(plain, x) == rasp.evaluate_prefixes(causal, x)


def test_engine_torch_and_numpy_agree_on_causal_models() -> None:
    for name in CAUSAL_NAMES:
        model = compiled(name, causal=True)
        e = LIBRARY[name]
        rng = random.Random(0)
        vocab = sorted(e.vocab, key=repr)
        T = min(e.max_seq_len, len(vocab)) if e.distinct_tokens else e.max_seq_len
        ids = np.array([model.encode([model.codec.bos, *rng.sample(vocab, T)]) if e.distinct_tokens
                        else model.encode([model.codec.bos, *(rng.choice(vocab) for _ in range(T))])
                        for _ in range(8)])
        a = Engine(model, threads=1).run(ids)
        with torch.no_grad():
            b = model.to_torch()(torch.as_tensor(ids)).numpy()
        c = model.forward_numpy(ids)
        assert np.allclose(a, b, atol=1e-5) and np.allclose(a, c, atol=1e-5), name


# ------------------------------------------------------------------------------------- random programs


def test_random_causal_programs_compile_and_equal_the_prefix_evaluation() -> None:
    failures = []
    for i, gp in enumerate(sample_programs(40, seed=11, causal=True)):
        inputs = fuzz._inputs_for(gp, 150, random.Random(i))
        found, model = fuzz.check_program(gp.program, gp.vocab, gp.max_seq_len, inputs, ("engine", "torch"),
                                          causal=True)
        failures += [f.describe() for f in found]
        assert model is None or model.config.causal
    assert not failures, failures[:2]


def test_any_random_program_compiled_causally_is_exact_or_refused_naming_an_op() -> None:
    refused = compiled_ok = 0
    for i, gp in enumerate(sample_programs(60, seed=5)):
        inputs = fuzz._inputs_for(gp, 150, random.Random(i))
        found, model = fuzz.check_program(gp.program, gp.vocab, gp.max_seq_len, inputs, ("engine",),
                                          causal=True)
        if model is None:
            labels = {e.label for e in rasp.topological_order(gp.program)}
            assert found[0].message.startswith("UnsupportedProgramError: "), found[0].message
            named = found[0].message.removeprefix("UnsupportedProgramError: ").split(":")[0]
            assert named in labels, found[0].message
            refused += 1
        else:
            assert not found, found[0].describe()
            compiled_ok += 1
    assert refused >= 1 and compiled_ok >= 30, (refused, compiled_ok)


# ------------------------------------------------------------------------------------- refusals, flags


def test_fixed_length_constants_are_refused_causally() -> None:
    program = rasp.SequenceMap(lambda x, y: x + y, rasp.tokens, rasp.ConstantSOp([1, 2, 3])).named("plus")
    compiling.compile_rasp_to_model(program, {1, 2}, 3)
    with pytest.raises(UnsupportedProgramError, match="fixed-length constant"):
        compiling.compile_rasp_to_model(program, {1, 2}, 3, causal=True)


def test_unprovable_op_over_a_large_space_is_refused_and_proven_over_a_small_one() -> None:
    """Keys that are a constant function of `length`: prefix-consistent, but no structural rule sees it.
    Checked exhaustively when the input space is small; refused (with the reason) when it is not."""
    zero = rasp.Map(lambda n: 0, rasp.length).named("zero")
    program = rasp.numerical(
        rasp.Aggregate(rasp.Select(zero, zero, rasp.Comparison.EQ).named("same"),
                       rasp.numerical(rasp.Map(lambda x: 1 if x == 1 else 0, rasp.tokens).named("ones")),
                       default=0)
    ).named("frac")
    model = compiling.compile_rasp_to_model(program, {1, 2}, 4, causal=True)
    assert np.allclose(_decoded(model, [[1, 2, 1, 1]]), [[1.0, 0.5, 2 / 3, 0.75]], atol=1e-6)
    with pytest.raises(UnsupportedProgramError, match=r"^zero: .*max_exhaustive_inputs"):
        compiling.compile_rasp_to_model(program, set(range(10)), 5, causal=True)


def test_causal_flag_is_checked_and_saved(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(CompileError, match="causal must be True or False"):
        CompilerOptions(vocab={1}, max_seq_len=2, causal=1)
    model = compiled("hist", causal=True)
    with pytest.raises(ModelError, match="causal"):
        ModelConfig(**{**model.config.to_json(), "causal": "yes"})
    model.save(tmp_path / "m")
    loaded = load(tmp_path / "m")
    assert loaded.config.causal is True
    assert compiled("hist").config.causal is False


def test_deep_programs_are_checked_without_recursion() -> None:
    """The structural proofs run children-first: a 3,000-op chain read across positions compiles."""
    x = rasp.tokens
    for _ in range(3000):
        x = rasp.Map(lambda v: v, x)
    same = rasp.Select(x, x, rasp.Comparison.EQ)
    program = rasp.numerical(rasp.Aggregate(same, rasp.numerical(rasp.Map(lambda v: 1, x)), default=0))
    model = compiling.compile_rasp_to_model(program, {1, 2}, 3, causal=True)
    assert _decoded(model, [[1, 2, 1]]) == [[1.0, 1.0, 1.0]]


def test_multi_output_models_compile_causally() -> None:
    from rasp_compiler.compiler.multi import compile_programs
    from rasp_compiler.model import output_view

    programs = {"hist": make_hist(), "length": make_length()}
    model = compile_programs(programs, {"a", "b"}, 4, causal=True)
    assert model.config.causal
    for name, program in programs.items():
        view = output_view(model, name)
        for x in (["a", "b", "a"], ["b", "b", "a", "b"]):
            assert view.apply(["BOS", *x]).decoded[1:] == rasp.evaluate_prefixes(program, x)
    with pytest.raises(UnsupportedProgramError, match="appending a token"):
        compile_programs({"sort": LIBRARY["sort"].builder()}, {1, 2, 3}, 4, causal=True)
