"""Patching benchmark: full node sweep and full edge sweep (one patch per set, KL against the clean
run), the C++ engine's `sweep` vs a TransformerLens-style hook loop on the PyTorch module that does
the same patches (source run cached once, one hooked forward per patch set), in this one process.

    python benchmarks/patching.py [--threads N] [--batch 32] [--programs sort,shuffle_dyck2]
                                  [--no-random] [--hook-budget SECONDS]

The hook loop runs for at most --hook-budget seconds per sweep; its total is extrapolated from the
sets it finished (the table says how many). Both sides' metrics are compared on those sets.

"engine" is a full sweep as a user's first call makes it: patch sets given as Python lists, clean and
source runs computed (`Engine.forget_runs()` before each timed call, so the engine's reuse of the
previous call's clean/source runs never applies). "engine warm" is the repeated-call case
of ACDC steps and threshold sweeps: the same inputs again (clean/source runs reused) and the patch
sets pre-encoded with `Engine.encode`. The target ratio is taken against "engine".
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from common import DEFAULT_PROGRAMS, fmt_time, models, print_table, random_ids, time_call

from rasp_compiler.engine import Engine, torch_patched_run


def components(model) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Real (unpadded) writers and every edge between them, the way ACDC enumerates a model."""
    c = model.config
    writers = ["embed", "pos_embed"]
    readers: list[tuple[str, str]] = []
    for layer in range(c.n_layers):
        heads = [f"L{layer}.H{h}" for h in range(c.heads_per_layer[layer])]
        readers += [(h, i) for h in heads for i in "qkv"] + [(f"L{layer}.MLP", "in")]
        writers += heads + [f"L{layer}.MLP"]
    readers.append(("output", "in"))

    def layer(n: str) -> int:
        return (
            -1 if n in ("embed", "pos_embed") else (c.n_layers if n == "output" else int(n[1:].split(".")[0]))
        )

    edges = [
        (w, r, i)
        for w in writers
        for r, i in readers
        if layer(w) < layer(r) or (layer(w) == layer(r) and not w.endswith("MLP") and r.endswith("MLP"))
    ]
    return writers, edges


def kl(clean: np.ndarray, patched: np.ndarray, counted: np.ndarray) -> float:
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

    lc, lp = log_softmax(clean), log_softmax(patched)
    return float((np.exp(lc) * (lc - lp)).sum(-1)[counted].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--programs", default=",".join(DEFAULT_PROGRAMS))
    ap.add_argument("--no-random", action="store_true")
    ap.add_argument("--hook-budget", type=float, default=4.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"threads: engine={args.threads} torch={torch.get_num_threads()}  batch={args.batch}  "
        "metric=KL (MSE if numerical)"
    )
    rows = []
    for name, model in models([p for p in args.programs.split(",") if p], not args.no_random):
        metric = "kl" if model.config.output_encoding == "categorical" else "mse"
        c = model.config
        engine = Engine(model, threads=args.threads)
        module = model.to_torch().eval()
        tokens, source = random_ids(model, args.batch, 1), random_ids(model, args.batch, 2)
        counted = np.ones(tokens.shape, bool)
        counted[:, 0] = False
        writers, edges = components(model)
        desc = f"{name} (L={c.n_layers} H={c.n_heads} D={c.d_model}, {metric})"
        for kind, sets in (("nodes", [[w] for w in writers]), ("edges", [[e] for e in edges])):
            got = engine.sweep(tokens, source, sets, metric)

            def cold(sets=sets) -> None:
                engine.forget_runs()
                engine.sweep(tokens, source, sets, metric)

            t_engine = time_call(cold, 0.3)
            enc = engine.encode(sets)
            t_warm = time_call(lambda enc=enc: engine.sweep(tokens, source, enc, metric), 0.3)
            with torch.inference_mode():
                t0 = time.perf_counter()
                tok_t, src_t = torch.from_numpy(tokens), torch.from_numpy(source)
                clean = module(tok_t).numpy()
                _, src_cache = module.run_with_cache(src_t)
                want = []
                for s in sets:
                    out = torch_patched_run(module, tok_t, src_t, s, source_cache=src_cache)
                    want.append(
                        kl(clean, out, counted)
                        if metric == "kl"
                        else float(((out.astype(np.float64) - clean) ** 2).mean(-1)[counted].mean())
                    )
                    if time.perf_counter() - t0 > args.hook_budget:
                        break
                t_hooks = (time.perf_counter() - t0) * len(sets) / len(want)
            err = float(np.abs(np.array(want) - got[: len(want)]).max())
            done = f"{len(want)}/{len(sets)}" + ("" if len(want) == len(sets) else " (extrapolated)")
            rows.append(
                [
                    desc,
                    kind,
                    str(len(sets)),
                    fmt_time(t_engine),
                    fmt_time(t_warm),
                    fmt_time(t_hooks),
                    done,
                    f"{t_hooks / t_engine:.0f}x",
                    f"{t_hooks / t_warm:.0f}x",
                    f"{err:.1e}",
                ]
            )
            desc = ""
    print_table(
        [
            "model",
            "sweep",
            "sets",
            "engine",
            "engine warm",
            "hook loop",
            "hook sets timed",
            "hooks/engine",
            "hooks/warm",
            "max|metric diff|",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
