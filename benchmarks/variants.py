"""Circuit discovery on harder ground truth: plain vs multi-output vs rotated vs noisy variants.

For each program, four models computing it: the plain compile; a multi-output model where it shares
the residual stream with two other programs (their components are distractors); a random rotation
of the residual basis; distractor heads/neurons plus relative weight noise. On each, ACDC (edge
scores) and activation patching (node scores; edge scores = the smaller end) run on the same dataset
(`verify.causal.make_dataset` on the output's single-output view), and their ROC-AUC against
`verify.ground_truth` is printed and written to benchmarks/VARIANTS_RESULTS.md.

    PYTHONPATH=. python benchmarks/variants.py [--programs reverse,hist] [--n 16] [--ablation resample]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rasp_compiler.compiler import multi
from rasp_compiler.compiler.compiling import compile_rasp_to_model  # noqa: E402
from rasp_compiler.model import output_view
from rasp_compiler.rasp import lib  # noqa: E402
from rasp_compiler.transforms import variants
from verify import causal, discovery, ground_truth, score  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAMS = ("reverse", "hist", "shift_by", "most_frequent", "frac_prevs")
VOCAB = frozenset({"a", "b", "c"})  # every program above accepts it, so they can share one model
MAX_LEN = 5
NOISE = {"heads": 4, "neurons": 8, "weight_noise": 1e-3}
CANCEL = {"cancel_heads": 2, "cancel_neurons": 2}


def _variants(name: str, seed: int) -> list[tuple[str, object, object]]:
    """(variant, model, program) for one library program; the model is single-output."""
    program = lib.LIBRARY[name].builder()
    plain = compile_rasp_to_model(program, VOCAB, MAX_LEN)
    others = [p for p in PROGRAMS if p != name]
    partners = [others[(PROGRAMS.index(name) + k) % len(others)] for k in range(2)]
    programs = {name: program, **{p: lib.LIBRARY[p].builder() for p in partners}}
    shared = multi.compile_programs(programs, VOCAB, MAX_LEN)
    return [
        ("plain", plain, program),
        (f"multi(+{','.join(partners)})", output_view(shared, name), program),
        ("rotated", variants.rotate(plain, seed), program),
        ("noisy", variants.add_noise(plain, seed=seed, **NOISE), program),
        ("cancelling", variants.add_noise(plain, seed=seed, **CANCEL), program),
    ]


def run(names: list[str], n: int, ablation: str, seed: int) -> list[dict]:
    rows = []
    for name in names:
        for variant, model, program in _variants(name, seed):
            print(f"[{ablation}] ", end="")
            truth = ground_truth(model)
            data = causal.make_dataset(model, program, n=n, seed=seed)
            t0 = time.perf_counter()
            acdc = discovery.acdc(model, data, ablation)
            t_acdc = time.perf_counter() - t0
            t0 = time.perf_counter()
            ap = discovery.activation_patching(model, data, ablation)
            t_ap = time.perf_counter() - t0
            ap_edges = discovery.node_scores_to_edges(model, ap.scores)
            rows.append(
                {
                    "program": name,
                    "variant": variant,
                    "components": len(truth.universe("node")),
                    "truth_nodes": len(truth.items("node")),
                    "edges": len(truth.universe("edge")),
                    "truth_edges": len(truth.items("edge")),
                    "acdc_edge_auc": score(acdc.scores, truth, "edge").roc_auc,
                    "acdc_node_auc": score(acdc.scores, truth, "node").roc_auc,
                    "ap_node_auc": score(ap.scores, truth, "node").roc_auc,
                    "ap_edge_auc": score(ap_edges, truth, "edge").roc_auc,
                    "acdc_s": t_acdc,
                    "ap_s": t_ap,
                }
            )
            r = rows[-1]
            print(
                f"{name:14s} {variant:34s} edges {r['truth_edges']:3d}/{r['edges']:4d}  ACDC edge "
                f"{r['acdc_edge_auc']:.3f} node {r['acdc_node_auc']:.3f}  AP node {r['ap_node_auc']:.3f} "
                f"edge {r['ap_edge_auc']:.3f}  ({t_acdc:.1f}s, {t_ap:.2f}s)",
                flush=True,
            )
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| program | variant | truth nodes / all | truth edges / all | ACDC edge AUC | ACDC node AUC | "
        "act. patching node AUC | act. patching edge AUC | ACDC s |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['program']} | {r['variant']} | {r['truth_nodes']}/{r['components']} | "
            f"{r['truth_edges']}/{r['edges']} | {r['acdc_edge_auc']:.3f} | {r['acdc_node_auc']:.3f} | "
            f"{r['ap_node_auc']:.3f} | {r['ap_edge_auc']:.3f} | {r['acdc_s']:.1f} |"
        )
    by_variant: dict[str, list[dict]] = {}
    for r in rows:
        by_variant.setdefault(r["variant"].split("(")[0], []).append(r)
    lines += [
        "",
        "| variant | mean ACDC edge AUC | mean act. patching node AUC | mean act. patching edge AUC |",
        "|---|---|---|---|",
    ]
    for v, rs in by_variant.items():

        def mean(key: str, rs: list[dict] = rs) -> float:
            return sum(x[key] for x in rs) / len(rs)

        lines.append(
            f"| {v} | {mean('acdc_edge_auc'):.3f} | {mean('ap_node_auc'):.3f} | {mean('ap_edge_auc'):.3f} |"
        )
    return "\n".join(lines)


def compression_table(names: list[str], seed: int) -> str:
    """Accuracy (per position, against the uncompressed model on all inputs) of each compression method."""
    lines = [
        "| program | labelled directions | width | random | pca | learned (from pca) | learned s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        model = compile_rasp_to_model(lib.LIBRARY[name].builder(), VOCAB, MAX_LEN)
        D = model.config.d_model
        for d in (D * 3 // 4, D // 2):
            accs = []
            for method in variants.COMPRESS_METHODS:
                t0 = time.perf_counter()
                card = variants.variant_card(variants.compress(model, d, method, seed=seed))
                accs.append(card["accuracy"])
            lines.append(
                f"| {name} | {D} | {d} | "
                + " | ".join(f"{a:.3f}" for a in accs)
                + f" | {time.perf_counter() - t0:.1f} |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", default=",".join(PROGRAMS))
    ap.add_argument("--n", type=int, default=16, help="dataset size (clean/corrupted pairs)")
    ap.add_argument("--ablations", default="resample,zero", help=f"comma-separated, of {causal.ABLATIONS}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(HERE, "VARIANTS_RESULTS.md"))
    ap.add_argument("--no-compression", action="store_true", help="skip the compression accuracy table")
    args = ap.parse_args()
    torch.set_num_threads(1)
    texts = []
    for ablation in args.ablations.split(","):
        rows = run(args.programs.split(","), args.n, ablation, args.seed)
        texts.append((ablation, table(rows)))
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("# Discovery on harder ground truth (benchmarks/variants.py)\n\n")
        f.write(
            f"Programs over vocab {{a, b, c}}, max_seq_len {MAX_LEN}; {args.n} clean/corrupted pairs "
            f"(`verify.causal.make_dataset`, seed {args.seed}). Variants: multi = the program compiled "
            "together with two others (their components are distractors); rotated = random orthogonal "
            f"residual basis; noisy = {NOISE['heads']} distractor heads and {NOISE['neurons']} distractor "
            f"neurons writing into fresh unread directions, relative weight noise {NOISE['weight_noise']} "
            "(reduced per component group where it would change an output); cancelling = "
            f"{CANCEL['cancel_heads']} pairs of heads and "
            f"{CANCEL['cancel_neurons']} pairs of neurons whose writes cancel. ROC-AUC against "
            "`verify.ground_truth` (structural truth; activation patching edge scores = the smaller node "
            "score of the two ends). Command: `PYTHONPATH=. python benchmarks/variants.py`.\n"
        )
        for ablation, text in texts:
            print(f"\n## {ablation} ablation\n\n{text}")
            f.write(f"\n## {ablation} ablation\n\n{text}\n")
        if not args.no_compression:
            text = compression_table(args.programs.split(","), args.seed)
            f.write(
                "\n## Compression: accuracy stored with the model\n\n"
                "`variants.compress(model, width, method)`: per-position accuracy against the uncompressed "
                "model on every input (vocab {a, b, c}, lengths 1..5; numerical outputs within 1e-4). "
                "The ground truth of a compressed model is the original's, marked approximate with this "
                "accuracy.\n\n" + text + "\n"
            )


if __name__ == "__main__":
    main()
