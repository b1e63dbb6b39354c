"""Forward-pass cost as models grow: the engine against tracr's own jitted forward, and against eager
PyTorch on scaled-up programs, next to the work the weights actually ask for.

Part 1, every program of tracr's own library (`tracr.compiler.lib`): time per sequence of the C++
engine (1 thread) and of tracr's `forward` under `jax.jit` (XLA pinned to 1 thread) on the same token
batches, at batch 1 and 512; best of several timings after a warm-up, both measured in this process.

Part 2, sort and hist at vocab = length = 10, 20, 50, 100: engine vs the eager PyTorch module
(`torch.set_num_threads(1)`), with d_model, parameters, non-zero parameters and the non-zero
multiply-adds per sequence (every non-zero weight used once per position, plus attention's T x T
scores and mixing over the d_head columns both sides use). The roofline is that work at the machine's
peak, measured here as one thread's float32 matmul rate (torch, 1024 x 1024); an engine below the
roofline does less than the non-zero work (it skips what a one-hot input does not read).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale.py [--quick] [--sizes 10 20 50 100] [--plot F]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the test suite's program converter for tracr

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rasp_compiler import rasp  # noqa: E402
from rasp_compiler.compiler import compiling  # noqa: E402
from rasp_compiler.engine import Engine  # noqa: E402
from rasp_compiler.rasp import lib  # noqa: E402

# tracr.compiler.lib, program by program (our library has each under the same name)
TRACR_PROGRAMS = ("length", "reverse", "hist", "sort_unique", "sort", "sort_freq", "frac_prevs",
                  "pair_balance", "shuffle_dyck", "shuffle_dyck2", "shift_by", "detect_pattern",
                  "count_less_freq", "count", "nary_sequencemap")


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
            repeats = 200 if b == 1 else 20
            e = _best(lambda ids=ids: engine.run(ids), repeats) / b
            t = _best(lambda tids=tids: jax.block_until_ready(forward(theirs.params, tids).unembedded_output),
                      repeats) / b
            print(f"| {name} | {b} | {e * 1e6:.2f} | {t * 1e6:.1f} | {t / e:.1f}x |", flush=True)


def peak_macs_per_second() -> float:
    """One thread's float32 multiply-add rate on a dense 1024 x 1024 matmul (torch)."""
    torch.set_num_threads(1)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return 1024**3 / _best(lambda: torch.mm(a, b), 5)


def _work(model, length: int) -> tuple[int, int, int]:
    """(parameters, non-zero parameters, non-zero multiply-adds per sequence of `length` + BOS)."""
    cfg, w = model.config, model.weights
    params = sum(int(np.asarray(a).size) for a in w.values())
    nonzero = sum(int(np.count_nonzero(a)) for a in w.values())
    t = length + 1
    per_position = sum(int(np.count_nonzero(a)) for name, a in w.items()
                       if name not in ("W_E", "W_pos") and np.asarray(a).ndim >= 2)
    attention = 0
    for layer in range(cfg.n_layers):
        a = f"blocks.{layer}.attn."
        for h in range(cfg.n_heads):
            qk = (np.any(w[a + "W_Q"][h] != 0, axis=0) & np.any(w[a + "W_K"][h] != 0, axis=0)).sum()
            vo = (np.any(w[a + "W_V"][h] != 0, axis=0) & np.any(w[a + "W_O"][h] != 0, axis=1)).sum()
            attention += int(qk + vo) * t * t
    return params, nonzero, per_position * t + attention


def scaled_programs(n: int) -> list[tuple[str, object]]:
    sort = lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=n, min_key=1)
    return [("sort", sort), ("hist", lib.make_hist())]


def scaled_table(sizes: tuple[int, ...], peak: float, plot: str | None) -> None:
    torch.set_num_threads(1)
    print(f"Peak (1 thread, float32 matmul 1024^3): {peak / 1e9:.1f} GMAC/s\n")
    print("| program | vocab x length | d_model | params | non-zero | non-zero MAC/seq | roofline µs/seq "
          "| engine µs/seq | engine / roofline | eager torch µs/seq | torch / engine | compile s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    points = []
    for n in sizes:
        vocab = list(range(1, n + 1))
        for name, program in scaled_programs(n):
            t0 = time.perf_counter()
            model = compiling.compile_rasp_to_model(program, set(vocab), n)
            compile_s = time.perf_counter() - t0
            params, nonzero, macs = _work(model, n)
            big = params > 50_000_000
            batch = 4 if big else 32
            rows = _batch(vocab, n, batch, seed=n)
            ids = np.array([model.encode(["BOS", *x]) for x in rows], dtype=np.int64)
            engine = Engine(model, threads=1)
            e = _best(lambda engine=engine, ids=ids: engine.run(ids), 3) / batch
            del engine
            module = model.to_torch().eval()
            tokens = torch.as_tensor(ids[:1] if big else ids)

            def eager(module=module, tokens=tokens) -> None:
                with torch.no_grad():
                    module(tokens)

            t = _best(eager, 1 if big else 3) / len(tokens)
            del module
            roof = macs / peak
            points.append((name, model.config.d_model, macs, e, t, roof))
            print(f"| {name} | {n} x {n} | {model.config.d_model:,} | {params:,} | {nonzero:,} | {macs:,} | "
                  f"{roof * 1e6:.1f} | {e * 1e6:.1f} | {e / roof:.2f} | {t * 1e6:,.0f} | {t / e:,.0f}x | "
                  f"{compile_s:.1f} |", flush=True)
            del model
            gc.collect()
    if plot:
        _plot(points, plot)


def _plot(points: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, marker in (("sort", "o"), ("hist", "s")):
        pts = [p for p in points if p[0] == name]
        d = [p[1] for p in pts]
        left.loglog(d, [p[3] * 1e6 for p in pts], marker=marker, label=f"{name}: engine")
        left.loglog(d, [p[4] * 1e6 for p in pts], marker=marker, linestyle="--", label=f"{name}: eager torch")
        left.loglog(d, [p[5] * 1e6 for p in pts], marker=marker, linestyle=":", label=f"{name}: roofline")
        right.loglog([p[2] for p in pts], [p[3] * 1e6 for p in pts], marker=marker, label=f"{name}: engine")
    left.set_xlabel("d_model")
    left.set_ylabel("µs per sequence (1 thread)")
    left.set_title("time per sequence against d_model")
    right.set_xlabel("non-zero multiply-adds per sequence")
    right.set_title("engine time against the non-zero work")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nwrote {path}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 1 and 64, sizes 10 and 20")
    p.add_argument("--no-tracr", action="store_true")
    p.add_argument("--sizes", type=int, nargs="+", help="vocab = length of part 2 (default 10 20 50 100)")
    p.add_argument("--plot", help="also draw time per sequence against d_model and non-zero work (a PNG)")
    args = p.parse_args()
    if not args.no_tracr:
        tracr_table((1, 64) if args.quick else (1, 512))
        print()
    sizes = tuple(args.sizes) if args.sizes else ((10, 20) if args.quick else (10, 20, 50, 100))
    scaled_table(sizes, peak_macs_per_second(), args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
