"""Library programs compiled once per test process, and random valid input batches for them (shared by
the engine-vs-reference and CUDA-vs-CPU tests)."""

from __future__ import annotations

import functools
import random
from typing import Any

import numpy as np

from rasp_compiler.compiler import compiling
from rasp_compiler.rasp.lib import LIBRARY


@functools.cache
def compiled(name: str) -> Any:
    """The library program `name` compiled to a model (cached: compiling is the slow part)."""
    entry = LIBRARY[name]
    return compiling.compile_rasp_to_model(entry.builder(), entry.vocab, entry.max_seq_len)


def library_batch(name: str, n: int, seed: int) -> np.ndarray:
    """n random full-length inputs (BOS first), distinct tokens where the program needs them."""
    entry, model = LIBRARY[name], compiled(name)
    rng = random.Random(seed)
    vocab = sorted(entry.vocab, key=repr)
    T = min(entry.max_seq_len, len(vocab)) if entry.distinct_tokens else entry.max_seq_len
    rows = []
    for _ in range(n):
        xs = rng.sample(vocab, T) if entry.distinct_tokens else [rng.choice(vocab) for _ in range(T)]
        rows.append(model.encode([model.codec.bos, *xs]))
    return np.array(rows, dtype=np.int64)
