"""Does the ablation-aware truth depend on float rounding? `causal.necessary_edges` on generated programs
under every ablation, computed on the C++ engine (float32), the PyTorch module (float32) and the PyTorch
module in float64; prints how many (program, ablation) pairs give different edge sets or different
changed fractions, and the first few.

    OMP_NUM_THREADS=1 python benchmarks/truth_backends.py [--programs 1000] [--seed 0] [--degenerate]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm  # noqa: E402

from rasp_compiler.compiler.compiling import compile_rasp_to_model  # noqa: E402
from rasp_compiler.testing.fuzz import program_for  # noqa: E402
from verify import causal  # noqa: E402

BACKENDS = ("engine", "torch", "float64")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--programs", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inputs", type=int, default=16)
    p.add_argument("--degenerate", action="store_true",
                   help="the generator's degenerate programs too (constant outputs: where exact ties were)")
    args = p.parse_args()
    t0 = time.perf_counter()
    checked, skipped, differ = 0, 0, []
    for i in tqdm(range(args.programs), desc="programs", file=sys.stderr):
        gp = program_for(args.seed, i, {"nondegenerate": False} if args.degenerate else None)
        try:
            model = compile_rasp_to_model(gp.program, set(gp.vocab), gp.max_seq_len)
            length = gp.input_length if gp.input_length is not None else max(gp.lengths)
            data = causal.make_dataset(model, gp.program, args.inputs, seed=i, length=length)
        except Exception:  # noqa: BLE001 - refused or undefined programs are counted, not checked
            skipped += 1
            continue
        for ablation in causal.ABLATIONS:
            results = {b: causal.necessary_edges(model, data, ablation, backend=b) for b in BACKENDS}
            ref = results["float64"]
            checked += 1
            for b in ("engine", "torch"):
                r = results[b]
                if r.edges != ref.edges or r.changed_fraction != ref.changed_fraction:
                    differ.append((i, ablation, b, sorted(set(r.edges) ^ set(ref.edges))))
    kind = "programs, degenerate ones included" if args.degenerate else "non-degenerate programs"
    print(f"{args.programs} {kind} (seed {args.seed}), {skipped} not compiled; {checked} (program, "
          f"ablation) pairs on {', '.join(BACKENDS)}: {len(differ)} disagreements with float64 "
          f"({time.perf_counter() - t0:.0f} s)")
    for i, ablation, backend, edges in differ[:10]:
        print(f"  program {i}, {ablation}, {backend}: edges differing {edges}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
