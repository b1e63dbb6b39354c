"""Parameters and non-zero weights of every library program, ours against tracr's assembled model.

    python benchmarks/nonzeros.py [--scaled]   # 2 minutes; --scaled about 20 (tracr assembling n = 50)

Same program, vocab and max_seq_len (the library defaults). Ours counts every weight array of the model;
tracr's counts every array in `assembled.params`. tracr has no unembedding matrix (its output is read
from the residual stream), so the like-for-like count leaves our `W_U` and `b_U` out. "ours, tracr's QK"
compiles with `qk_encoding="tracr"` (tracr's factorisation of every predicate table), which isolates
what the smaller attention encodings save. `--scaled` adds the programs with order comparisons at
vocab = length = 10, 20 and 50. Prints markdown tables (the ones in benchmarks/TRACR_SIZES.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the test suite's program converter for tracr

from rasp_compiler import rasp  # noqa: E402
from rasp_compiler.compiler import compiling  # noqa: E402
from rasp_compiler.rasp import lib  # noqa: E402
from rasp_compiler.rasp.lib import LIBRARY  # noqa: E402


def ours_nonzero(model: Any) -> int:
    return sum(int(np.count_nonzero(w)) for k, w in model.weights.items() if k not in ("W_U", "b_U"))


def tracr_nonzero(program: Any, vocab: Any, max_seq_len: int) -> tuple[int, int] | str:
    """(parameters, non-zero) of tracr's assembled model, or why tracr could not compile it."""
    from support.compiler import to_tracr
    from tracr.compiler import compiling as tracr_compiling

    try:
        theirs = tracr_compiling.compile_rasp_to_model(to_tracr(program), vocab, max_seq_len,
                                                       compiler_bos="BOS")
    except Exception as err:  # noqa: BLE001 - tracr cannot compile some programs; say which
        return f"tracr fails: {type(err).__name__}"
    arrays = [np.asarray(a) for block in theirs.params.values() for a in block.values()]
    return sum(a.size for a in arrays), sum(int(np.count_nonzero(a)) for a in arrays)


def row(name: str, program_of: Any, vocab: Any, max_seq_len: int) -> str:
    ours = compiling.compile_rasp_to_model(program_of(), vocab, max_seq_len)
    as_tracr = compiling.compile_rasp_to_model(program_of(), vocab, max_seq_len, qk_encoding="tracr")
    params = sum(w.size for w in ours.weights.values())
    nz, nz_t = ours_nonzero(ours), ours_nonzero(as_tracr)
    theirs = tracr_nonzero(program_of(), vocab, max_seq_len)
    if isinstance(theirs, str):
        return f"| {name} | {params:,} | {nz:,} | {nz_t:,} | {theirs} | | |"
    tp, tnz = theirs
    return f"| {name} | {params:,} | {nz:,} | {nz_t:,} | {tp:,} | {tnz:,} | {nz / tnz:.2f} |"


HEADER = ("| program | ours params | ours non-zero | ours, tracr's QK | tracr params | tracr non-zero "
          "| ours / tracr |\n|---|---:|---:|---:|---:|---:|---:|")

# Programs with an order comparison (a nested predicate table) whose value sets grow with the size.
SCALED = {
    "sort": lambda n: lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=n, min_key=1),
    "sort_unique": lambda n: lib.make_sort_unique(rasp.tokens, rasp.tokens),
    "max": lambda n: lib.LIBRARY["max"].builder(),
    "most_frequent": lambda n: lib.LIBRARY["most_frequent"].builder(),
}


def main() -> None:
    warnings.simplefilter("ignore")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scaled", action="store_true", help="also the order-comparison programs at 10, 20, 50")
    args = p.parse_args()
    print(HEADER)
    for name, e in sorted(LIBRARY.items()):
        print(row(name, e.builder, e.vocab, e.max_seq_len), flush=True)
    if args.scaled:
        print("\nvocab = length = n:\n")
        print(HEADER.replace("| program |", "| program, n |", 1))
        for n in (10, 20, 50):
            for name, build in SCALED.items():
                program_of = lambda build=build, n=n: build(n)  # noqa: E731
                print(row(f"{name}, {n}", program_of, set(range(1, n + 1)), n), flush=True)


if __name__ == "__main__":
    main()
