"""Shared helpers of the benchmark scripts: models to run, inputs, timing, table printing."""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rasp_compiler.compiler import compiling  # noqa: E402
from rasp_compiler.rasp.lib import LIBRARY  # noqa: E402
from rasp_compiler.testing import generate

DEFAULT_PROGRAMS = ("sort", "reverse", "most_frequent", "shuffle_dyck2")


def library_model(name: str) -> Any:
    entry = LIBRARY[name]
    return compiling.compile_rasp_to_model(entry.builder(), entry.vocab, entry.max_seq_len)


def largest_random_model(n: int = 60, seed: int = 7) -> tuple[str, Any]:
    """The largest (by parameter count) of `n` generated programs with generous limits that compile."""
    best: tuple[int, Any] | None = None
    for gp in generate.sample_programs(
        n, seed=seed, max_layers=8, max_ops=24, max_depth=16, max_seq_len=8, max_vocab=6
    ):
        try:
            model = compiling.compile_rasp_to_model(gp.program, set(gp.vocab), gp.max_seq_len)
        except Exception:  # noqa: BLE001 - a refused program is just skipped here
            continue
        size = sum(w.size for w in model.weights.values())
        if best is None or size > best[0]:
            best = (size, model)
    assert best is not None, "no generated program compiled"
    return "random(largest)", best[1]


def models(names: list[str], with_random: bool) -> list[tuple[str, Any]]:
    out = [(n, library_model(n)) for n in names]
    if with_random:
        out.append(largest_random_model())
    return out


def random_ids(model: Any, batch: int, seed: int) -> np.ndarray:
    """Full-length valid inputs, BOS first (distinct tokens are not needed: any input runs)."""
    rng = random.Random(seed)
    vocab = [t for t in model.codec.input_tokens if t != model.codec.bos and t != model.codec.pad]
    T = model.config.max_seq_len
    bos = model.codec.bos
    return np.array(
        [model.encode([bos, *[rng.choice(vocab) for _ in range(T)]]) for _ in range(batch)], dtype=np.int64
    )


def time_call(fn: Callable[[], Any], min_time: float = 0.3, max_reps: int = 2000) -> float:
    """Median seconds per call after a warm-up, over at least 3 calls and about `min_time` seconds."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fmt_time(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.1f}us"
    if s < 1:
        return f"{s * 1e3:.2f}ms"
    return f"{s:.2f}s"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
