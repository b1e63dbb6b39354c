"""Forward-pass benchmark: the C++ engine vs the PyTorch module (eager), torch.compile of it, and
TransformerLens's HookedTransformer (when installed), all measured in this one process.

    python benchmarks/forward.py [--threads N] [--batches 1,64,1024] [--programs sort,reverse]
                                 [--no-random] [--no-compile]

Ratios are (peer time) / (engine time): > 1 means the engine is faster.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from common import DEFAULT_PROGRAMS, fmt_time, models, print_table, random_ids, time_call

from rasp_compiler.engine import Engine, build_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batches", default="1,64,1024")
    ap.add_argument("--programs", default=",".join(DEFAULT_PROGRAMS))
    ap.add_argument("--no-random", action="store_true", help="skip the largest generated program")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile)")
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds of timing per cell")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    info = build_info()
    print(
        f"threads: engine={args.threads} torch={torch.get_num_threads()}  torch {torch.__version__}  "
        f"engine build: {info['build_type']}, {info['threads']}, native={info['native']}"
    )
    try:
        import transformer_lens  # noqa: F401

        from rasp_compiler.model.export import to_hooked_transformer

        have_tl = True
    except ImportError:
        have_tl = False
        print("TransformerLens not installed: its column is n/a (pip install -e '.[tl]')")
    rows = []
    for name, model in models([p for p in args.programs.split(",") if p], not args.no_random):
        c = model.config
        engine = Engine(model, threads=args.threads)
        module = model.to_torch().eval()
        compiled = None
        if not args.no_compile:
            try:
                compiled = torch.compile(module, dynamic=False)
            except Exception as exc:  # noqa: BLE001
                print(f"torch.compile unavailable: {exc}")
        tl = to_hooked_transformer(model) if have_tl else None
        desc = f"{name} (L={c.n_layers} H={c.n_heads} D={c.d_model} M={c.d_mlp} T={c.n_ctx})"
        for batch in batches:
            ids = random_ids(model, batch, seed=batch)
            ids_t = torch.from_numpy(ids)
            with torch.inference_mode():
                want = module(ids_t).numpy()
                got = engine.run(ids)
                err = float(np.abs(got - want).max())
                t_engine = time_call(lambda: engine.run(ids), args.min_time)
                t_eager = time_call(lambda: module(ids_t), args.min_time)
                t_comp = None
                if compiled is not None:
                    try:
                        compiled(ids_t)  # compile outside the timing
                        t_comp = time_call(lambda: compiled(ids_t), args.min_time)
                    except Exception as exc:  # noqa: BLE001
                        print(f"torch.compile failed on {name}: {type(exc).__name__}")
                        compiled = None
                t_tl = time_call(lambda: tl(ids_t), args.min_time) if tl is not None else None
            ratio = lambda t: "n/a" if t is None else f"{t / t_engine:.1f}x"  # noqa: E731
            rows.append(
                [
                    desc,
                    str(batch),
                    fmt_time(t_engine),
                    fmt_time(t_eager),
                    fmt_time(t_comp),
                    fmt_time(t_tl),
                    ratio(t_eager),
                    ratio(t_comp),
                    ratio(t_tl),
                    f"{err:.1e}",
                ]
            )
            desc = ""
    print_table(
        [
            "model",
            "batch",
            "engine",
            "eager",
            "compile",
            "TL",
            "eager/eng",
            "compile/eng",
            "TL/eng",
            "max|diff|",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
