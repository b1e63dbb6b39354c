"""The batched feature-major forward (`Engine.run` and `run_with_cache`;
csrc/engine/feature_major.cpp) against the per-sequence path (csrc/engine/cpu_forward.cpp): the same
sums in the same order, so outputs and records must be equal bit for bit, on every library program,
causal models, random dense and sparse models with pads, batches that span several row chunks, both
attention strategies and both matrix kernels (sort over 20 values x 20 positions reads a 400-value
comparison table), and generated programs. The float64 reference checks of tests/engine/test_engine.py
run through the same path."""

from __future__ import annotations

import numpy as np
import pytest
from support.engine_reference import random_model, random_tokens, reference_run
from support.library_models import CAUSAL_NAMES, compiled, library_batch

from rasp_compiler import rasp
from rasp_compiler.compiler import compiling
from rasp_compiler.engine import Engine, hook_kinds
from rasp_compiler.rasp import lib
from rasp_compiler.rasp.lib import LIBRARY
from rasp_compiler.testing.generate import sample_inputs, sample_programs


def per_sequence_cache(engine: Engine, tokens: np.ndarray, names: list[str]) -> tuple[np.ndarray, dict]:
    """Output and records of the engine's one-sequence-at-a-time path (csrc/engine/cpu_forward.cpp)."""
    ids = np.ascontiguousarray(tokens, dtype=np.int32)
    out, arrays = engine._core.forward_record(ids, [engine._hook(n) for n in names], 1, True)
    return out, dict(zip(names, arrays, strict=True))


def per_sequence(engine: Engine, tokens: np.ndarray) -> np.ndarray:
    """The per-sequence path's output."""
    return per_sequence_cache(engine, tokens, [])[0]


def batched_names(n_layers: int) -> list[str]:
    """Every hook."""
    return hook_kinds(n_layers)


def assert_bitwise(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, what
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    assert same.all(), f"{what}: {int((~same).sum())} values differ, max {np.nanmax(np.abs(got - want))}"


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_library_programs_bitwise(name: str) -> None:
    model = compiled(name)
    tokens = library_batch(name, 700, seed=3)  # several row chunks
    engine = Engine(model, threads=1)
    want = per_sequence(engine, tokens)
    assert_bitwise(engine.run(tokens), want, name)
    assert_bitwise(Engine(model, threads=2).run(tokens), want, f"{name} threads=2")
    assert_bitwise(engine.run(tokens[:1]), want[:1], f"{name} batch 1")


@pytest.mark.parametrize("name", sorted(LIBRARY)[::3])
def test_batched_records_bitwise(name: str) -> None:
    """run_with_cache takes the batched forward; every array equals the per-sequence path's."""
    model = compiled(name)
    tokens = library_batch(name, 300, seed=6)
    engine = Engine(model, threads=2)
    names = batched_names(model.config.n_layers)
    out, fast = engine.run_with_cache(tokens, names=names)
    ref_out, slow = per_sequence_cache(engine, tokens, names)
    assert_bitwise(out, ref_out, f"{name} output")
    for hook in names:
        assert_bitwise(fast[hook], slow[hook], f"{name} {hook}")


@pytest.mark.parametrize("seed", range(4))
def test_batched_records_of_random_models(seed: int) -> None:
    model = random_model(seed, sparse=seed % 2 == 1, pad=seed % 3 == 0, causal=seed % 2 == 0)
    tokens = random_tokens(model, batch=200, seed=seed)
    engine = Engine(model, threads=1)
    names = batched_names(model.config.n_layers)
    out, fast = engine.run_with_cache(tokens, names=names)
    _, slow = per_sequence_cache(engine, tokens, names)
    ref, _, ref_cache = reference_run(model, tokens)
    for hook in names:
        assert_bitwise(fast[hook], slow[hook], f"seed {seed} {hook}")
        got, want = fast[hook], np.asarray(ref_cache[hook])
        finite = np.isfinite(want)  # masked attention scores are -inf on both sides
        np.testing.assert_array_equal(got[~finite], want[~finite], err_msg=hook)
        assert np.abs(got[finite] - want[finite]).max() <= 2e-5 * (1 + np.abs(want[finite]).max()), hook


@pytest.mark.parametrize("name", CAUSAL_NAMES[::2])
def test_causal_library_programs_bitwise(name: str) -> None:
    entry = LIBRARY[name]
    model = compiling.compile_rasp_to_model(entry.builder(), entry.vocab, entry.max_seq_len, causal=True)
    tokens = library_batch(name, 300, seed=4)
    engine = Engine(model, threads=1)
    assert_bitwise(engine.run(tokens), per_sequence(engine, tokens), name)


@pytest.mark.parametrize("seed", range(8))
def test_random_models_bitwise_and_close_to_reference(seed: int) -> None:
    model = random_model(seed, sparse=seed % 2 == 1, pad=seed % 3 == 0, causal=seed % 4 == 1)
    engine = Engine(model, threads=1)
    for T in (1, model.config.n_ctx):
        tokens = random_tokens(model, batch=257, seed=seed, seq=T)
        got = engine.run(tokens)
        assert_bitwise(got, per_sequence(engine, tokens), f"seed {seed} T={T}")
        ref, _, _ = reference_run(model, tokens)
        finite = np.isfinite(ref)
        assert np.array_equal(finite, np.isfinite(got))
        assert np.abs(got[finite] - ref[finite]).max() <= 2e-5 * (1 + np.abs(ref[finite]).max())


def test_large_comparison_table_bitwise_and_exact() -> None:
    """sort at 20 values x 20 positions: a 400-value comparison read through a one-hot variable takes
    the scanning kernel and the per-sequence attention; answers equal the evaluator's."""
    program = lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=20, min_key=1)
    model = compiling.compile_rasp_to_model(program, set(range(1, 21)), 20)
    rng = np.random.default_rng(0)
    inputs = [[int(v) for v in rng.integers(1, 21, 20)] for _ in range(40)]
    tokens = np.array([model.encode(["BOS", *xs]) for xs in inputs])
    engine = Engine(model, threads=1)
    out = engine.run(tokens)
    assert_bitwise(out, per_sequence(engine, tokens), "sort 20x20")
    for xs, row in zip(inputs, out, strict=True):
        assert model.decode(row)[1:] == rasp.evaluate(program, xs)


def test_generated_programs_bitwise() -> None:
    checked = 0
    for gp in sample_programs(40, seed=11):
        try:
            model = compiling.compile_rasp_to_model(gp.program, gp.vocab, gp.max_seq_len)
        except Exception:  # refusals are the compiler's business, tested elsewhere
            continue
        engine = Engine(model, threads=1)
        by_length: dict[int, list] = {}
        for xs in sample_inputs(gp, 64, seed=1):
            by_length.setdefault(len(xs), []).append(model.encode(["BOS", *xs]))
        names = batched_names(model.config.n_layers)
        for rows in by_length.values():
            tokens = np.array(rows)
            want, slow = per_sequence_cache(engine, tokens, names)
            assert_bitwise(engine.run(tokens), want, f"generated program {checked}")
            _, fast = engine.run_with_cache(tokens, names=names)
            for hook in names:
                assert_bitwise(fast[hook], slow[hook], f"generated program {checked} {hook}")
        checked += 1
    assert checked >= 30
