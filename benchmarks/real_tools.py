"""Real auto-circuit 1.0.1, run unchanged (through `verify.interop`), on every library program beside this
package's own baselines, scored against both truths at auto-circuit's granularity; then fuzzing of each
real tool over random programs.

Runs in `.venv-autocircuit` (auto-circuit imports only with TransformerLens 2.x; `./dev install` builds it):

    OMP_NUM_THREADS=1 .venv-autocircuit/bin/python benchmarks/real_tools.py table [--programs a,b] [--n 32]
    OMP_NUM_THREADS=1 .venv-autocircuit/bin/python benchmarks/real_tools.py fuzz --tool eap --programs 1000
    .venv-autocircuit/bin/python benchmarks/real_tools.py summary table.md   # per-method means of a table

`table` prints one markdown row per (program, ablation, method): edge ROC-AUC against the structural truth
and against the ablation-aware truth (`causal.necessary_edges` under the same ablation), F1 against the
ablation-aware truth of the circuit each method hands a user by a rule fixed before looking (ACDC: its
edges above tau = 0.01, auto-circuit's and our own; the others: scores above 1% of their maximum), and the
runtime. ROC plots go to out/real_tools/. `fuzz` runs `verify.fuzz_tool` (ablation-aware resample truth,
embeddings merged) and prints its report; the JSON summary goes to out/real_tools/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import verify  # noqa: E402
from rasp_compiler.compiler import compiling  # noqa: E402
from rasp_compiler.rasp.lib import LIBRARY  # noqa: E402
from verify import causal, discovery, interop  # noqa: E402

OUT = Path("out/real_tools")
OURS = ("activation_patching", "acdc", "eap", "eap_ig")
CHOSEN_TAU = 0.01


def _edge_scores(result: discovery.DiscoveryResult, model: object) -> dict:
    if result.level == "node":
        return discovery.node_scores_to_edges(model, result.scores)
    return dict(result.scores)


def _chosen(name: str, scores: dict) -> dict:
    """The circuit a user would take from a method's scores, by the fixed rule (module docstring)."""
    if "acdc" in name:
        return {e: 1.0 for e, v in scores.items() if v > CHOSEN_TAU}
    top = max(scores.values(), default=0.0)
    return {e: 1.0 for e, v in scores.items() if top > 0 and v > 0.01 * top}


def _methods(ablation: str) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for alg in interop.ALGORITHMS:
        if alg not in ("eap", "eap_ig") and ablation != "resample":
            continue  # auto-circuit's ACDC and probing patch with the corrupt prompts only
        out.append((f"auto-circuit {alg}", interop.AutoCircuitMethod(alg, ablation=ablation)))
    for name in OURS:
        out.append((f"ours {name}", name))
    return out


def table(programs: list[str], n: int, ablations: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)
    print("| program | ablation | method | AUC structural | AUC ablation-aware | F1 ablation-aware | s |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name in programs:
        entry = LIBRARY[name]
        program = entry.builder()
        model = compiling.compile_rasp_to_model(program, entry.vocab, entry.max_seq_len)
        data = causal.make_dataset(model, program, n=n, seed=0, distinct=entry.distinct_tokens)
        structural = verify.ground_truth(model)
        for ablation in ablations:
            needed = causal.necessary_edges(model, data, ablation)
            fig, ax = plt.subplots(figsize=(5, 5))
            for label, method in _methods(ablation):
                t = time.perf_counter()
                if isinstance(method, str):
                    scores = _edge_scores(discovery.run_method(method, model, data, ablation), model)
                else:
                    scores = method(model, data)
                seconds = time.perf_counter() - t
                a = verify.score(scores, structural, merge_embeddings=True)
                if needed.edges:
                    b = verify.score(scores, needed, merge_embeddings=True)
                    f1 = verify.score(_chosen(label, scores), needed, merge_embeddings=True).f1
                    ax.plot(b.fpr, b.tpr, label=f"{label} ({b.roc_auc:.2f})")
                    auc_b = f"{b.roc_auc:.3f}"
                else:
                    auc_b, f1 = "empty truth", math.nan
                cells = [name, ablation, label, f"{a.roc_auc:.3f}", auc_b, f"{f1:.3f}", f"{seconds:.2f}"]
                print("| " + " | ".join(cells) + " |", flush=True)
            ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
            ax.set(title=f"{name}, {ablation}: vs the ablation-aware truth", xlabel="FPR", ylabel="TPR")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, loc="lower right")
            fig.savefig(OUT / f"roc_{name}_{ablation}.png", dpi=120, bbox_inches="tight")
            plt.close(fig)


def summary(path: str) -> None:
    """Per (ablation, method): means over the programs of a `table` output, and the count of perfect
    rankings (ROC-AUC 1 against the ablation-aware truth)."""
    groups: dict[tuple[str, str], list[list[str]]] = {}
    for line in Path(path).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or cells[0] in ("program", "---") or cells[0].startswith("-"):
            continue
        groups.setdefault((cells[1], cells[2]), []).append(cells)

    def mean(vals: list[str]) -> str:
        nums = [float(v) for v in vals if v not in ("nan", "empty truth")]
        return f"{sum(nums) / len(nums):.3f}" if nums else "n/a"

    print("| ablation | method | programs | AUC structural | AUC ablation-aware | perfect ranking "
          "| F1 ablation-aware | total s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (ablation, method), rows in sorted(groups.items()):
        scored = [r for r in rows if r[4] != "empty truth"]
        perfect = sum(1 for r in scored if float(r[4]) == 1.0)
        total = sum(float(r[6]) for r in rows)
        print(f"| {ablation} | {method} | {len(rows)} | {mean([r[3] for r in rows])} | "
              f"{mean([r[4] for r in rows])} | {perfect} of {len(scored)} | {mean([r[5] for r in rows])} | "
              f"{total:.1f} |")


def fuzz(tool: str, programs: int, seed: int, ablation: str) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ["TQDM_DISABLE"] = "1"  # auto-circuit's own progress bars, one per call, would flood the log
    method = interop.AutoCircuitMethod(tool, ablation=ablation)
    t = time.perf_counter()
    summary = verify.fuzz_tool(method, programs, seed, truth="ablation", ablation=ablation,
                               merge_embeddings=True, progress=False, name=method.name)
    print(summary.report())
    print(f"{programs} programs in {time.perf_counter() - t:.0f} s")
    path = OUT / f"fuzz_{tool}_{ablation}_{programs}_seed{seed}.json"
    path.write_text(json.dumps(summary.to_json(), indent=1) + "\n")
    print(f"summary: {path}")
    return 0 if summary.ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="every library program, every method, both truths")
    t.add_argument("--programs", default=",".join(LIBRARY), help="comma-separated library names (all)")
    t.add_argument("--n", type=int, default=32, help="clean/corrupt pairs per program (default 32)")
    t.add_argument("--ablations", default="resample,zero")
    m = sub.add_parser("summary", help="per-method means of a saved `table` output")
    m.add_argument("path")
    f = sub.add_parser("fuzz", help="fuzz one auto-circuit algorithm over random programs")
    f.add_argument("--tool", choices=interop.ALGORITHMS, required=True)
    f.add_argument("--programs", type=int, default=1000)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--ablation", choices=("resample", "zero"), default="resample")
    args = p.parse_args()
    if args.cmd == "table":
        table(args.programs.split(","), args.n, args.ablations.split(","))
        return 0
    if args.cmd == "summary":
        summary(args.path)
        return 0
    return fuzz(args.tool, args.programs, args.seed, args.ablation)


if __name__ == "__main__":
    sys.exit(main())
