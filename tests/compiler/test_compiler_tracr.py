"""Against tracr (skipped where tracr-pypi is not installed).

Sizes: for every library program our layers and d_model are no larger than tracr's (tracr's sizes
come from its craft model, the stage before JAX assembly, which fixes both). Outputs: both compiled
models decode the same values on random valid inputs (positions where the program is defined);
a fixed subset by default (tracr's JAX assembly takes seconds per program), every program with
RASP_TRACR_ALL=1.
"""

from __future__ import annotations

import os
import random

import pytest
from support.compiler import NUM_TOL, run_model, to_tracr, tracr_sizes

from rasp_compiler import rasp
from rasp_compiler.compiler import compiling
from rasp_compiler.rasp import lib

pytest.importorskip("tracr")

NAMES = sorted(lib.LIBRARY)
OUTPUT_SUBSET = ["length", "reverse", "hist", "sort", "frac_prevs", "pair_balance"]


def test_sizes_not_larger_than_tracr(capsys: pytest.CaptureFixture[str]) -> None:
    rows, worse = [], []
    for name in NAMES:
        e = lib.LIBRARY[name]
        for n in (e.max_seq_len, 10):
            program = e.builder()
            ours = compiling.compile_rasp_to_model(program, e.vocab, n)
            try:
                tl, td = tracr_sizes(program, e.vocab, n)
            except Exception as err:  # noqa: BLE001 - tracr cannot compile some programs; say so
                rows.append(
                    f"{name:20s} N={n:2d} ours L={ours.n_layers:2d} D={ours.d_model:4d} | tracr fails: "
                    f"{type(err).__name__}"
                )
                continue
            rows.append(
                f"{name:20s} N={n:2d} ours L={ours.n_layers:2d} D={ours.d_model:4d} | tracr L={tl:2d} "
                f"D={td:4d}"
            )
            if ours.n_layers > tl or ours.d_model > td:
                worse.append(rows[-1])
    with capsys.disabled():
        print("\n" + "\n".join(rows))
    assert not worse, worse


@pytest.mark.parametrize("name", NAMES if os.environ.get("RASP_TRACR_ALL") else OUTPUT_SUBSET)
def test_outputs_equal_tracr(name: str) -> None:
    from tracr.compiler import compiling as tracr_compiling

    e = lib.LIBRARY[name]
    program = e.builder()
    ours = compiling.compile_rasp_to_model(program, e.vocab, e.max_seq_len)
    theirs = tracr_compiling.compile_rasp_to_model(
        to_tracr(program), e.vocab, e.max_seq_len, compiler_bos="BOS"
    )
    rng = random.Random(name)
    vocab = sorted(e.vocab, key=str)
    checked = 0
    for attempt in range(200):
        # two lengths only: tracr's JAX model recompiles for every new input length
        n = e.max_seq_len if attempt % 4 else max(1, e.max_seq_len - 2)
        x = [rng.choice(vocab) for _ in range(n)]
        if e.distinct_tokens and len(set(x)) != len(x):
            continue
        try:
            want = rasp.evaluate(program, x)
        except Exception:  # noqa: BLE001 - undefined on this input
            continue
        got = run_model(ours, [x], use_torch=False)[0]
        tracr_out = theirs.apply(["BOS", *x]).decoded[1:]
        for w, g, t in zip(want, got, tracr_out):
            if w is None:
                continue
            if ours.config.output_encoding == "numerical":
                assert abs(g - t) < 1e-3 and abs(g - w) < NUM_TOL, (x, got, tracr_out)
            else:
                assert g == t, (x, got, tracr_out)
        checked += 1
        if checked == 16:
            break
    assert checked > 0
