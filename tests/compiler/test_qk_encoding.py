"""How a head's predicate table becomes W_Q and W_K (`CompilerOptions.qk_encoding`): every candidate
factorisation covers each true (query, key) pair exactly once, the chosen one is the smallest, order
comparisons take O(n log n) weights, the choice changes no score or output beyond float32 rounding
(against tracr's layout), it is recorded in the annotation, and the models are no larger than tracr's."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.library_models import library_batch

from rasp_compiler import rasp
from rasp_compiler.compiler import compiling
from rasp_compiler.compiler.blocks import _factor, _prefix_blocks
from rasp_compiler.compiler.options import CompileError
from rasp_compiler.engine import Engine
from rasp_compiler.model.annotation import Annotation
from rasp_compiler.rasp import lib
from rasp_compiler.rasp.lib import LIBRARY


def nested_table(rng: np.random.Generator, n_q: int, n_k: int) -> np.ndarray:
    """Rows hold prefixes of a random key order (what f(key) < g(query) gives), rows shuffled."""
    order = rng.permutation(n_k)
    counts = rng.integers(0, n_k + 1, n_q)
    t = np.zeros((n_q, n_k), dtype=bool)
    for q, c in enumerate(counts):
        t[q, order[:c]] = True
    return t


@settings(max_examples=200)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_prefix_blocks_cover_every_true_pair_once(n_q: int, n_k: int, seed: int) -> None:
    t = nested_table(np.random.default_rng(seed), n_q, n_k)
    wq, wk = _prefix_blocks(t)
    assert set(np.unique(wq)) <= {0.0, 1.0} and set(np.unique(wk)) <= {0.0, 1.0}
    np.testing.assert_array_equal(wq @ wk.T, t.astype(float))  # 0/1: no pair counted twice
    levels = math.ceil(math.log2(n_k + 1))
    assert np.count_nonzero(wq) <= n_q * levels
    assert np.count_nonzero(wk) <= n_k * levels


@settings(max_examples=200)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1), st.booleans())
def test_every_factorisation_is_exact(n_q: int, n_k: int, seed: int, nested: bool) -> None:
    rng = np.random.default_rng(seed)
    t = nested_table(rng, n_q, n_k) if nested else rng.random((n_q, n_k)) < 0.4
    for mode in ("smallest", "tracr"):
        name, wq, wk = _factor(t, mode)
        np.testing.assert_array_equal(wq @ wk.T, t.astype(float), err_msg=f"{mode}: {name}")
    if not nested and _prefix_blocks(t) is None:
        assert _factor(t, "smallest")[0] in ("query_classes", "key_classes")


def test_non_nested_tables_have_no_rank_blocks() -> None:
    assert _prefix_blocks(np.eye(3, dtype=bool)) is None  # equality: rows are not nested
    assert _prefix_blocks(np.array([[1, 1, 0], [0, 1, 1]], dtype=bool)) is None


def test_order_comparison_takes_n_log_n_weights() -> None:
    """x < y over 64 values: the table has 2,016 true pairs; the blocks need under 64 * 2 * 7."""
    n = 64
    t = np.arange(n)[None, :] < np.arange(n)[:, None]
    name, wq, wk = _factor(t, "smallest")
    assert name.endswith("rank_blocks")
    assert np.count_nonzero(wq) + np.count_nonzero(wk) < n * 2 * 7 < int(t.sum())
    _, tq, tk = _factor(t, "tracr")
    assert np.count_nonzero(tq) == t.sum() and np.count_nonzero(tk) == n - 1


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_encoding_never_changes_scores_or_outputs(name: str) -> None:
    e = LIBRARY[name]
    small = compiling.compile_rasp_to_model(e.builder(), e.vocab, e.max_seq_len)
    tracr = compiling.compile_rasp_to_model(e.builder(), e.vocab, e.max_seq_len, qk_encoding="tracr")
    tokens = library_batch(name, 64, seed=5)
    out_s, cache_s = Engine(small, threads=1).run_with_cache(tokens)
    out_t, cache_t = Engine(tracr, threads=1).run_with_cache(tokens)
    # the same scores up to float32 rounding: a variable read off an earlier head is one-hot only to
    # within its error bound, and the two factorisations add those products in different groupings
    for hook in cache_s:
        if "attn_scores" in hook:
            scale = 1.0 + np.abs(cache_t[hook][np.isfinite(cache_t[hook])]).max()
            np.testing.assert_allclose(cache_s[hook], cache_t[hook], rtol=0, atol=1e-5 * scale, err_msg=hook)
    np.testing.assert_allclose(out_s, out_t, rtol=0, atol=1e-4)
    if small.config.output_encoding == "categorical":
        np.testing.assert_array_equal(out_s.argmax(-1), out_t.argmax(-1))
    def nonzeros(model) -> int:
        return sum(int(np.count_nonzero(w)) for w in model.weights.values())

    assert nonzeros(small) <= nonzeros(tracr)
    heads = [b for b in small.annotation.blocks if b.component == "attn"]
    assert all(b.qk_encoding for b in heads)
    assert all(b.qk_encoding == ("tracr",) * len(b.qk_encoding)
               for b in tracr.annotation.blocks if b.component == "attn")


def test_annotation_records_the_encoding_through_json() -> None:
    program = lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=8, min_key=1)
    model = compiling.compile_rasp_to_model(program, set(range(1, 9)), 8)
    encodings = {b.op: b.qk_encoding for b in model.annotation.blocks if b.component == "attn"}
    assert "key_rank_blocks" in {x for enc in encodings.values() for x in enc}
    back = Annotation.from_json(model.annotation.to_json())
    assert {b.op: b.qk_encoding for b in back.blocks if b.component == "attn"} == encodings


def test_unknown_encoding_is_refused_by_name() -> None:
    with pytest.raises(CompileError, match="qk_encoding must be one of smallest, tracr, got 'dense'"):
        compiling.compile_rasp_to_model(lib.make_length(), {1, 2}, 3, qk_encoding="dense")


# Programs whose non-zero count was within 10% of tracr's before the smaller encodings (the selector-width
# MLP read tokens:BOS in every neuron; comparisons stored their whole table).
CLOSE_TO_TRACR = ["count", "count_distinct", "hist", "induction", "is_palindrome", "most_frequent",
                  "sort", "sort_freq", "sort_unique"]


@pytest.mark.parametrize("name", CLOSE_TO_TRACR)
def test_never_more_non_zeros_than_tracr(name: str) -> None:
    pytest.importorskip("tracr")
    from support.compiler import to_tracr
    from tracr.compiler import compiling as tracr_compiling

    e = LIBRARY[name]
    ours = compiling.compile_rasp_to_model(e.builder(), e.vocab, e.max_seq_len)
    theirs = tracr_compiling.compile_rasp_to_model(to_tracr(e.builder()), e.vocab, e.max_seq_len,
                                                   compiler_bos="BOS")
    tracr_nz = sum(int(np.count_nonzero(np.asarray(a))) for b in theirs.params.values() for a in b.values())
    # tracr reads its output off the residual stream: leave our unembedding out
    ours_nz = sum(int(np.count_nonzero(w)) for k, w in ours.weights.items() if k not in ("W_U", "b_U"))
    assert ours_nz <= tracr_nz
