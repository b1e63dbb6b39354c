"""Discovery baselines on every library program: edge ROC-AUC vs the structural and the ablation-aware truth.

For each program x ablation (zero, mean, resample) x method (activation patching, ACDC, EAP, EAP-IG):
ROC-AUC of the method's edge scores against (a) `verify.ground_truth` and (b) `verify.causal.necessary_edges`
(the edges whose single ablation changes an output on this dataset), best F1 over score cutoffs, task
accuracy of the circuit the method would hand a user (fixed rule, chosen before seeing any truth: ACDC at
threshold 1e-2; other methods: scores above 1% of their maximum), and runtime. The methods that patch
(activation patching, ACDC) run on the engine and, for comparison, on PyTorch hooks (same semantics, same
patch sets) under every ablation; a hook-loop ACDC stops after --hook-budget seconds and its total is
extrapolated from the patched forwards it finished (`torch_extrapolated` in the CSV). Writes
benchmarks/discovery_results.csv, ROC plots in benchmarks/discovery_roc/, and prints a table.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/discovery.py [--n 16] [--programs reverse,frac_prevs]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys

import numpy as np
import torch

from rasp_compiler.compiler.compiling import compile_rasp_to_model
from rasp_compiler.rasp import lib
from verify import causal, discovery, ground_truth, score

HERE = os.path.dirname(os.path.abspath(__file__))
PUBLISHED = {  # ACDC paper (Conmy et al. 2023), tracr tasks, edge ROC-AUC vs its zero-ablation ACDC "truth"
    "reverse": {"ACDC": 0.200, "SP": 0.416, "HISP": 0.656},
    "frac_prevs": {"ACDC": 0.600, "SP": 0.400, "HISP": 0.679},
}
THRESHOLDS = (1e-3, 1e-2, 1e-1, 1.0)
CHOSEN_ACDC = 1e-2


def best_f1(scores: dict[str, float], positives: set[str], universe: set[str]) -> float:
    if not positives:
        return math.nan
    vals = {k: scores.get(k, -1.0) for k in universe}
    best = 0.0
    for t in sorted(set(vals.values())):
        pred = {k for k, v in vals.items() if v >= t}
        tp = len(pred & positives)
        if tp:
            p, r = tp / len(pred), tp / len(positives)
            best = max(best, 2 * p * r / (p + r))
    return best


def chosen_edges(res: discovery.DiscoveryResult, edge_scores: dict[str, float]) -> list[str]:
    if res.method == "acdc":
        return res.circuits[CHOSEN_ACDC]
    top = max(edge_scores.values()) if edge_scores else 0.0
    return [k for k, v in edge_scores.items() if top > 0 and v > 0.01 * top]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--programs", default="")
    ap.add_argument(
        "--torch-programs",
        default="all",
        help="programs on which the patching methods also run on PyTorch hooks (timing); 'all' or a list",
    )
    ap.add_argument(
        "--hook-budget",
        type=float,
        default=3.0,
        help="seconds a hook-loop ACDC may run before its total is extrapolated",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = args.programs.split(",") if args.programs else sorted(lib.LIBRARY)
    torch_progs = set(names) if args.torch_programs == "all" else set(args.torch_programs.split(","))
    rows = []
    os.makedirs(os.path.join(HERE, "discovery_roc"), exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name in names:
        e = lib.LIBRARY[name]
        program = e.builder()
        model = compile_rasp_to_model(program, e.vocab, e.max_seq_len)
        ds = causal.make_dataset(model, program, args.n, seed=0, distinct=e.distinct_tokens)
        gt = ground_truth(model)
        universe = gt.universe("edge")
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        for ax, ablation in zip(axes, causal.ABLATIONS, strict=True):
            aware = causal.necessary_edges(model, ds, ablation)
            for method in discovery.METHODS:
                backends = ["auto"]
                if method in ("activation_patching", "acdc"):
                    backends = ["engine"] + (["torch"] if name in torch_progs else [])
                times = {}
                res = None
                extrapolated = False
                for be in backends:
                    kw = {"thresholds": THRESHOLDS} if method == "acdc" else {}
                    if method == "acdc" and be == "torch":
                        kw["max_seconds"] = args.hook_budget
                    r = discovery.run_method(method, model, ds, ablation, backend=be, **kw)
                    times[r.backend] = r.runtime_s
                    if not r.complete:  # same patch sets as the engine run: scale by forwards done
                        extrapolated = True
                        times[r.backend] = r.runtime_s * res.n_forward / max(r.n_forward, 1)
                    res = res or r
                es = res.scores if res.level == "edge" else discovery.node_scores_to_edges(model, res.scores)
                s_struct = score(es, gt)
                s_aware = score(es, aware.circuit) if aware.edges else None
                chosen = chosen_edges(res, es)
                faith = causal.faithfulness(model, chosen, ds, ablation, minimality=False)
                rows.append(
                    {
                        "program": name,
                        "ablation": ablation,
                        "method": method,
                        "n_edges": len(universe),
                        "n_struct": len(gt.edges),
                        "n_aware": len(aware.edges),
                        "auc_struct": round(s_struct.roc_auc, 3),
                        "auc_aware": round(s_aware.roc_auc, 3) if s_aware else math.nan,
                        "f1_struct": round(best_f1(es, gt.items("edge"), universe), 3),
                        "f1_aware": round(best_f1(es, set(aware.edges), universe), 3),
                        "chosen_edges": len(chosen),
                        "chosen_acc": round(faith.accuracy, 3),
                        "backend": res.backend,
                        "time_engine_s": round(times.get("engine", math.nan), 4),
                        "time_torch_s": round(times.get("torch", times.get("torch-grad", math.nan)), 4),
                        "torch_extrapolated": extrapolated,
                        "n_forward": res.n_forward,
                        "published": PUBLISHED.get(name, {}).get("ACDC", "") if method == "acdc" else "",
                    }
                )
                ax.plot(s_struct.fpr, s_struct.tpr, label=f"{method} (struct)")
                if s_aware:
                    ax.plot(s_aware.fpr, s_aware.tpr, "--", label=f"{method} (aware)")
                print(" ".join(f"{v}" for v in rows[-1].values()), flush=True)
            ax.plot([0, 1], [0, 1], ":", color="gray")
            ax.set_title(f"{name}: {ablation}")
            ax.set_xlabel("FPR")
            ax.set_ylabel("TPR")
        axes[0].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(os.path.join(HERE, "discovery_roc", f"{name}.png"), dpi=80)
        plt.close(fig)
    with open(os.path.join(HERE, "discovery_results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    head = [
        "program",
        "ablation",
        "method",
        "auc_struct",
        "auc_aware",
        "f1_struct",
        "f1_aware",
        "chosen_acc",
        "time_engine_s",
        "time_torch_s",
        "published",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = {h: str(r[h]) for h in head}
        if r.get("torch_extrapolated"):
            cells["time_torch_s"] = "~" + cells["time_torch_s"]
        print("| " + " | ".join(cells[h] for h in head) + " |")
    print("\nruntime, engine vs hooks (patching methods; ~ = hook time extrapolated past the budget)")
    print("| method | ablation | programs | engine total s | hooks total s | hooks/engine (min-median-max) |")
    print("|---|---|---|---|---|---|")
    timed: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if not (math.isnan(r["time_engine_s"]) or math.isnan(r["time_torch_s"])):
            timed.setdefault((r["method"], r["ablation"]), []).append(r)
    for (m, a), rs in sorted(timed.items()):
        ratios = sorted(r["time_torch_s"] / max(r["time_engine_s"], 1e-9) for r in rs)
        n_ex = sum(bool(r["torch_extrapolated"]) for r in rs)
        print(
            f"| {m} | {a} | {len(rs)} ({n_ex} extrapolated) | {sum(r['time_engine_s'] for r in rs):.2f} | "
            f"{sum(r['time_torch_s'] for r in rs):.2f} | {ratios[0]:.0f}x - "
            f"{float(np.median(ratios)):.0f}x - {ratios[-1]:.0f}x |"
        )
    agg = {}
    for r in rows:
        agg.setdefault((r["method"], r["ablation"]), []).append(r)
    print("\nmean over programs | method | ablation | auc_struct | auc_aware (non-empty aware truth)")
    for (m, a), rs in sorted(agg.items()):
        s = np.nanmean([r["auc_struct"] for r in rs])
        aw = [r["auc_aware"] for r in rs if not math.isnan(r["auc_aware"])]
        print(f"| {m} | {a} | {s:.3f} | {np.mean(aw) if aw else math.nan:.3f} ({len(aw)}) |")


if __name__ == "__main__":
    sys.exit(main())
