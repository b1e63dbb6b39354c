"""Forward-pass cost as models grow: the engine against tracr's own jitted forward, and against eager
PyTorch on scaled-up programs, with the work the weights actually ask for.

Part 1, every library program tracr compiles: time per sequence of the C++ engine (1 thread) and of
tracr's `forward` under `jax.jit` (XLA pinned to 1 thread) on the same token batches, at batch 1 and 512.
Part 2, sort and hist at vocab x length 10, 20 and 50: engine vs the eager PyTorch module
(`torch.set_num_threads(1)`), with d_model, parameters, non-zero parameters, and the non-zero
multiply-adds per sequence (every non-zero weight used once per position, plus attention's T x T
scores and mixing per head), so the achieved rate says how far each backend is from doing only the
work that is there. Ratios are measured in one process against a baseline in the same run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rasp_compiler import rasp  # noqa: E402
from rasp_compiler.compiler import compiling  # noqa: E402
from rasp_compiler.engine import Engine  # noqa: E402
from rasp_compiler.rasp import lib  # noqa: E402

TRACR_PROGRAMS = ("length", "reverse", "hist", "sort_unique", "sort", "sort_freq", "frac_prevs",
                  "pair_balance", "shuffle_dyck", "shuffle_dyck2")


def _best(fn, repeats: int) -> float:
    """Best of `repeats` timings of `fn()` (seconds), after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _batch(vocab: list, length: int, n: int, seed: int) -> list[list]:
    rng = np.random.default_rng(seed)
    return [[vocab[i] for i in rng.integers(0, len(vocab), length)] for _ in range(n)]


def tracr_table(batches: tuple[int, ...]) -> None:
    import jax
    from support.compiler import to_tracr
    from tracr.compiler import compiling as tc

    print("| program | batch | engine µs/seq | tracr jit µs/seq | tracr / engine |")
    print("|---|---:|---:|---:|---:|")
    for name in TRACR_PROGRAMS:
        entry = lib.LIBRARY[name]
        program = entry.builder()
        vocab = sorted(entry.vocab, key=repr)
        ours = compiling.compile_rasp_to_model(program, entry.vocab, entry.max_seq_len)
        theirs = tc.compile_rasp_to_model(to_tracr(program), set(entry.vocab), entry.max_seq_len,
                                          compiler_bos="BOS")
        forward = jax.jit(theirs.forward)
        engine = Engine(ours, threads=1)
        for b in batches:
            rows = _batch(vocab, entry.max_seq_len, b, seed=b)
            ids = np.array([ours.encode(["BOS", *x]) for x in rows], dtype=np.int64)
            tids = jax.numpy.array([theirs.input_encoder.encode(["BOS", *x]) for x in rows])
            e = _best(lambda ids=ids: engine.run(ids), 5) / b
            t = _best(lambda tids=tids: jax.block_until_ready(forward(theirs.params, tids).unembedded_output),
                      5) / b
            print(f"| {name} | {b} | {e * 1e6:.1f} | {t * 1e6:.1f} | {t / e:.1f}x |", flush=True)


def _work(model, length: int) -> tuple[int, int, int]:
    """(parameters, non-zero parameters, non-zero multiply-adds per sequence of `length` + BOS)."""
    cfg = model.config
    params = sum(int(np.asarray(w).size) for w in model.weights.values())
    nonzero = sum(int(np.count_nonzero(w)) for w in model.weights.values())
    t = length + 1
    per_position = sum(int(np.count_nonzero(w)) for name, w in model.weights.items()
                       if name not in ("W_E", "W_pos") and np.asarray(w).ndim >= 2)
    attention = 2 * cfg.n_layers * cfg.n_heads * t * t * cfg.d_head
    return params, nonzero, per_position * t + attention


def scaled_table(sizes: tuple[int, ...], batch: int) -> None:
    torch.set_num_threads(1)
    print("| program | vocab x length | d_model | params | non-zero | non-zero MAC/seq | engine µs/seq "
          "| eager torch µs/seq | torch / engine | engine GMAC/s (non-zero) | compile s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        vocab = list(range(1, n + 1))
        for name, program in (("sort", lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=n, min_key=1)),
                              ("hist", lib.make_hist())):
            t0 = time.perf_counter()
            model = compiling.compile_rasp_to_model(program, set(vocab), n)
            compile_s = time.perf_counter() - t0
            rows = _batch(vocab, n, batch, seed=n)
            ids = np.array([model.encode(["BOS", *x]) for x in rows], dtype=np.int64)
            engine = Engine(model, threads=1)
            module = model.to_torch().eval()
            tokens = torch.as_tensor(ids)
            e = _best(lambda: engine.run(ids), 3) / batch

            def eager() -> None:
                with torch.no_grad():
                    module(tokens)

            t = _best(eager, 3) / batch
            params, nonzero, macs = _work(model, n)
            print(f"| {name} | {n} x {n} | {model.config.d_model} | {params:,} | {nonzero:,} | {macs:,} | "
                  f"{e * 1e6:.1f} | {t * 1e6:.1f} | {t / e:.1f}x | {macs / e / 1e9:.2f} | {compile_s:.1f} |",
                  flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 1 and 64, sizes 10 and 20")
    p.add_argument("--no-tracr", action="store_true")
    args = p.parse_args()
    if not args.no_tracr:
        tracr_table((1, 64) if args.quick else (1, 512))
        print()
    scaled_table((10, 20) if args.quick else (10, 20, 50), 8 if args.quick else 32)
    return 0


if __name__ == "__main__":
    sys.exit(main())
