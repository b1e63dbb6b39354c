"""Recorded forward passes: `Engine.run_with_cache` (the batched forward writing the records) against the
engine's one-sequence-at-a-time path (`EngineCore.forward_record(..., per_sequence=True)`, the reference
the batched forward is tested against), same inputs, same hooks, in one process.

    OMP_NUM_THREADS=1 python benchmarks/records.py [--batch 4096] [--programs sort,shuffle_dyck2,...]

Both sides run on 1 thread (`Engine(threads=1)`); times are medians (benchmarks/common.py `time_call`).
Prints a markdown table (the one in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fmt_time, library_model, random_ids, time_call  # noqa: E402

from rasp_compiler.engine import Engine, hook_kinds  # noqa: E402

HOOK_SETS = {  # what each row records, in every layer
    "hook_pattern": ("attn.hook_pattern",),
    "attn.hook_z": ("attn.hook_z",),
    "mlp.hook_post": ("mlp.hook_post",),
    "attn.hook_result + hook_mlp_out": ("attn.hook_result", "hook_mlp_out"),
    "every hook": None,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--programs", default="sort,shuffle_dyck2,most_frequent")
    args = p.parse_args()
    print("| model | every layer's | batched | per-sequence | ratio |\n|---|---|---:|---:|---:|")
    for name in args.programs.split(","):
        model = library_model(name)
        engine = Engine(model, threads=1)
        ids = random_ids(model, args.batch, seed=0)
        ids32 = ids.astype(np.int32)
        n_layers = model.config.n_layers
        for i, (label, suffixes) in enumerate(HOOK_SETS.items()):
            names = hook_kinds(n_layers) if suffixes is None else [
                f"blocks.{layer}.{s}" for layer in range(n_layers) for s in suffixes]
            hooks = [engine._hook(n) for n in names]
            fast = time_call(lambda names=names: engine.run_with_cache(ids, names=names))
            slow = time_call(lambda hooks=hooks: engine._core.forward_record(ids32, hooks, 1, True))
            print(f"| {name if i == 0 else ''} | {label} | {fmt_time(fast)} | {fmt_time(slow)} | "
                  f"{slow / fast:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
