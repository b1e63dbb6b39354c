"""Parameters and non-zero weights of every library program, ours against tracr's assembled model.

    python benchmarks/nonzeros.py [--scaled]   # 2 minutes; --scaled about 20 (tracr assembling n = 50)
    python benchmarks/nonzeros.py --components sort majority   # where the non-zeros are, layer by layer

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


def tracr_params(program: Any, vocab: Any, max_seq_len: int) -> dict[str, list[np.ndarray]] | str:
    """tracr's assembled parameters by module name, or why tracr could not compile the program."""
    from support.compiler import to_tracr
    from tracr.compiler import compiling as tracr_compiling

    try:
        theirs = tracr_compiling.compile_rasp_to_model(to_tracr(program), vocab, max_seq_len,
                                                       compiler_bos="BOS")
    except Exception as err:  # noqa: BLE001 - tracr cannot compile some programs; say which
        return f"tracr fails: {type(err).__name__}"
    return {name: [np.asarray(a) for a in block.values()] for name, block in theirs.params.items()}


def tracr_nonzero(program: Any, vocab: Any, max_seq_len: int) -> tuple[int, int] | str:
    """(parameters, non-zero) of tracr's assembled model, or why tracr could not compile it."""
    params = tracr_params(program, vocab, max_seq_len)
    if isinstance(params, str):
        return params
    arrays = [a for block in params.values() for a in block]
    return sum(a.size for a in arrays), sum(int(np.count_nonzero(a)) for a in arrays)


def component_of(name: str) -> str:
    """'embeddings', 'L<l> attn' or 'L<l> mlp' for a weight name of ours or a module name of tracr's."""
    if name.startswith("blocks."):
        layer, kind = name.split(".")[1:3]
        return f"L{layer} {kind}"
    if name.startswith("transformer/layer_"):
        layer, kind = name.split("/")[1:3]
        return f"L{layer.removeprefix('layer_')} {kind}"
    return "embeddings"


def layers_table(name: str) -> None:
    """Non-zero weights component by component, ours against tracr's, with the QK encoding of each head."""
    e = LIBRARY[name]
    ours = compiling.compile_rasp_to_model(e.builder(), e.vocab, e.max_seq_len)
    theirs = tracr_params(e.builder(), e.vocab, e.max_seq_len)
    if isinstance(theirs, str):
        print(f"{name}: {theirs}")
        return
    count: dict[str, list[int]] = {}
    for k, w in ours.weights.items():
        if k not in ("W_U", "b_U"):
            count.setdefault(component_of(k), [0, 0])[0] += int(np.count_nonzero(w))
    for k, arrays in theirs.items():
        count.setdefault(component_of(k), [0, 0])[1] += sum(int(np.count_nonzero(a)) for a in arrays)
    what: dict[str, list[str]] = {}
    for b in ours.annotation.blocks if ours.annotation else ():
        if b.layer is not None:
            label = b.op + (f" ({', '.join(b.qk_encoding)})" if b.qk_encoding else "")
            what.setdefault(f"L{b.layer} {b.component}", []).append(label)
    print(f"\n{name}:\n\n| component | ops | ours | tracr | ours / tracr |\n|---|---|---:|---:|---:|")
    for comp, (a, t) in sorted(count.items(), key=lambda kv: (kv[0] != "embeddings", kv[0])):
        if a or t:
            share = f"{a / t:.2f}" if t else "-"
            print(f"| {comp} | {'; '.join(what.get(comp, []))} | {a:,} | {t:,} | {share} |")
    a, t = (sum(v[i] for v in count.values()) for i in (0, 1))
    print(f"| total | | {a:,} | {t:,} | {a / t:.2f} |")


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
    p.add_argument("--components", nargs="+", metavar="PROGRAM", choices=sorted(LIBRARY),
                   help="only these library programs, component by component (embeddings, each layer's "
                   "attention and MLP) with the ops each component computes")
    args = p.parse_args()
    if args.components:
        for name in args.components:
            layers_table(name)
        return
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
