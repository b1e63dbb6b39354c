"""Parameters and non-zero weights of every library program, ours against tracr's assembled model.

    python benchmarks/nonzeros.py      # about 2 minutes (tracr's JAX assembly is the slow part)

Same program, vocab and max_seq_len (the library defaults). Ours counts every weight array of the model
(W_U included); tracr's counts every array in `assembled.params` (it has no unembedding matrix: its
output is read from the residual stream), so a like-for-like ratio leaves W_U out of ours. Prints a
markdown table (the one in benchmarks/TRACR_SIZES.md).
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the test suite's program converter for tracr

from rasp_compiler.compiler import compiling  # noqa: E402
from rasp_compiler.rasp.lib import LIBRARY  # noqa: E402


def main() -> None:
    warnings.simplefilter("ignore")
    from support.compiler import to_tracr
    from tracr.compiler import compiling as tracr_compiling

    print("| program | ours params | ours non-zero | ours non-zero without W_U | tracr params "
          "| tracr non-zero | ratio (without W_U) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, e in sorted(LIBRARY.items()):
        program = e.builder()
        ours = compiling.compile_rasp_to_model(program, e.vocab, e.max_seq_len)
        params = sum(w.size for w in ours.weights.values())
        nonzero = sum(int(np.count_nonzero(w)) for w in ours.weights.values())
        no_unembed = nonzero - int(np.count_nonzero(ours.weights["W_U"]))
        try:
            theirs = tracr_compiling.compile_rasp_to_model(to_tracr(program), e.vocab, e.max_seq_len,
                                                           compiler_bos="BOS")
        except Exception as err:  # noqa: BLE001 - tracr cannot compile some programs; say which
            print(f"| {name} | {params:,} | {nonzero:,} | {no_unembed:,} | tracr fails: "
                  f"{type(err).__name__} | | |")
            continue
        arrays = [np.asarray(a) for block in theirs.params.values() for a in block.values()]
        t_params = sum(a.size for a in arrays)
        t_nonzero = sum(int(np.count_nonzero(a)) for a in arrays)
        print(f"| {name} | {params:,} | {nonzero:,} | {no_unembed:,} | {t_params:,} | {t_nonzero:,} | "
              f"{no_unembed / t_nonzero:.2f} |", flush=True)


if __name__ == "__main__":
    main()
