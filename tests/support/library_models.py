"""Library programs compiled once per test process, and random valid input batches for them (shared by
the engine-vs-reference and CUDA-vs-CPU tests)."""

from __future__ import annotations

import functools
import random
from typing import Any

import numpy as np

from rasp_compiler.compiler import compiling
from rasp_compiler.rasp.lib import LIBRARY

# The library programs a causal compile refuses, with the op named: each reads across positions a value
# that later tokens change (a rank, a maximum flag, the next token, a count over the whole input).
CAUSAL_REFUSED = {
    "count_less_freq": "hist",
    "induction": "shift_by(-1)",
    "is_palindrome": "pal_same",
    "majority": "maj_rank",
    "max": "is_max",
    "min": "is_min",
    "most_frequent": "mf_rank",
    "second_largest": "second_tagged",
    "sort": "target_pos",
    "sort_freq": "sequence_map_",
    "sort_unique": "target_pos",
}
CAUSAL_NAMES = sorted(set(LIBRARY) - set(CAUSAL_REFUSED))


@functools.cache
def program_and_model(name: str, causal: bool = False) -> tuple[Any, Any]:
    """The library program `name` and its compiled model (cached: compiling is the slow part). Checks
    that read the program's ops by label need this program object: a fresh build has other labels."""
    entry = LIBRARY[name]
    program = entry.builder()
    return program, compiling.compile_rasp_to_model(program, entry.vocab, entry.max_seq_len, causal=causal)


def compiled(name: str, causal: bool = False) -> Any:
    """The library program `name` compiled to a model (cached)."""
    return program_and_model(name, causal)[1]


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
