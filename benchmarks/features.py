"""Featurisation methods against the features the compiler put there; writes benchmarks/FEATURES.md.

    python benchmarks/features.py            # every table (about 15 minutes on 2 cores)
    python benchmarks/features.py --quick    # fewer programs and settings (a smoke run)

1. Exact compression: for every library program, the rank of its residual states (PCA to that width
   keeps every intermediate value exact), the smallest residual width at which the compressed model
   (`transforms.variants.compress`, PCA maps fitted on every input) still gives exact outputs on every
   input (or 20,000 of them), the number of true features (labelled directions) they hold, and the
   accuracy just below that width with PCA and with learned maps.
2. Sparse autoencoders: SAE-Lens's standard (L1), TopK and BatchTopK training SAEs trained by its own
   `SAETrainer` on the final residual site of library programs, plain, rotated and compressed to the
   state rank, over dictionary widths and sparsity settings: the usual proxies (L0, explained variance,
   dead latents) beside the truth's scores (`verify.features.score_dictionary`: mean max cosine,
   recovered at cosine 0.9, split, merged, unmatched latents), and the true L0 (how many true features
   are active per position).
3. Linear probes (scikit-learn) per variable and residual site: accuracy where the truth says the
   variable is written, against chance where it says nothing.
4. DAS through pyvene: interchange accuracy and principal-angle cosines against the true subspace.

Threads: torch and BLAS pinned to 1 (`torch.set_num_threads(1)`, OMP/MKL_NUM_THREADS=1) so that runs on
a shared 2-core machine are repeatable; nothing here is a timing.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rasp_compiler import rasp  # noqa: E402
from rasp_compiler.compiler import compiling  # noqa: E402
from rasp_compiler.rasp.lib import LIBRARY  # noqa: E402
from rasp_compiler.transforms import variants  # noqa: E402
from verify import causal, features  # noqa: E402

OUT = Path(__file__).with_name("FEATURES.md")
EXACT_INPUTS = 20_000
SAE_PROGRAMS = ("hist", "frac_prevs", "reverse", "sort", "shuffle_dyck")
SAE_WIDTHS = (1, 2, 4)  # latents per true feature
SAE_L1 = (0.05, 0.3, 1.5)
SAE_SAMPLES = 500_000
PROBE_PROGRAMS = ("reverse", "sort", "shuffle_dyck")
DAS_CASES = (("sort", "target_pos"), ("reverse", "opp_idx-1"), ("hist", "hist"))


def compile_entry(name: str) -> tuple[Any, Any]:
    rasp.restart_ids()
    e = LIBRARY[name]
    program = e.builder()
    return program, compiling.compile_rasp_to_model(program, e.vocab, e.max_seq_len)


def compressed_accuracy(model: Any, d: int, method: str, inputs: list) -> float:
    c = variants.compress(model, d, method=method, seed=0, inputs=inputs)
    return float(variants.variant_card(c)["accuracy"])


def fmt_accuracy(acc: float) -> str:
    """Four decimals, rounded down: an accuracy below 1 never prints as 1."""
    return f"{math.floor(acc * 1e4) / 1e4:.4f}"


def state_rank(model: Any, inputs: list) -> int:
    """Rank of the residual states (every site, every position of `inputs`): PCA to this width keeps every
    state, so every intermediate value and the whole feature truth, exactly."""
    sites = features.residual_sites(model)
    states = [np.asarray(c[s]).reshape(-1, model.config.d_model)
              for _, c in features.cached_runs(model, [x[1:] for x in inputs], sites) for s in sites]
    return int(np.linalg.matrix_rank(np.concatenate(states).astype(np.float64), tol=1e-4))


def exact_width(model: Any, inputs: list) -> int:
    """Smallest residual width whose PCA-compressed model is exact on `inputs` (the model's own width
    when none below it is)."""
    lo, hi = 1, model.config.d_model
    while lo < hi:
        mid = (lo + hi) // 2
        if compressed_accuracy(model, mid, "pca", inputs) == 1.0:
            hi = mid
        else:
            lo = mid + 1
    return lo


# -------------------------------------------------------------------------------------- 1. compression


def compression_table(names: list[str], learned: bool) -> list[list[str]]:
    rows = []
    for name in names:
        _, model = compile_entry(name)
        inputs = variants.all_inputs(model, max_inputs=EXACT_INPUTS)
        D = model.config.d_model
        rank = state_rank(model, inputs)
        d = exact_width(model, inputs)
        n_features = len(features.feature_dictionary(model, features.residual_sites(model)[-1]))
        below = "-"
        below_learned = "-"
        if d > 1:
            below = fmt_accuracy(compressed_accuracy(model, d - 1, "pca", inputs))
            if learned and name in SAE_PROGRAMS:  # learned maps take minutes per program
                below_learned = fmt_accuracy(compressed_accuracy(model, d - 1, "learned", inputs[:2000]))
        rows.append([name, str(D), str(n_features), str(rank), f"{n_features / rank:.2f}", str(d),
                     f"{n_features / d:.2f}", f"{len(inputs):,}", below, below_learned])
        print(f"  compression {name}: D {D} -> {d}", file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- 2. SAEs


def _sae_row(acts: np.ndarray, truth: features.FeatureDictionary, width: int, arch: str, sparsity: float
             ) -> dict:
    import torch

    from verify.interop import saelens

    n_true = len([lab for lab in truth.labels if lab != "one"])
    kwargs = {"l1_coefficient": sparsity} if arch == "standard" else {"k": int(sparsity)}
    sae = saelens.train_sae(acts, max(1, width * n_true), architecture=arch, samples=SAE_SAMPLES, seed=0,
                            **kwargs)
    x = torch.as_tensor(acts, dtype=torch.float32)
    with torch.no_grad():
        f = sae.encode(x)
        recon = sae.decode(f).numpy()
    f = f.numpy()
    resid = ((acts - recon) ** 2).sum()
    total = ((acts - acts.mean(axis=0)) ** 2).sum()
    score = features.score_dictionary(sae.W_dec.detach().numpy(), truth)
    return {
        "l0": float((f > 0).sum(axis=1).mean()),
        "ev": float(1 - resid / total) if total > 0 else float("nan"),
        "dead": int(((f > 0).sum(axis=0) == 0).sum()),
        "d_sae": f.shape[1],
        "score": score,
    }


def true_l0(model: Any, site: str, acts: np.ndarray) -> float:
    """Mean number of true features (not the constant) active per position, from the exact model."""
    truth = features.feature_dictionary(model, site)
    coef = truth.coefficients(acts)
    keep = [i for i, lab in enumerate(truth.labels) if lab != "one"]
    return float((np.abs(coef[:, keep]) > 1e-4).sum(axis=1).mean())


def sae_table(names: list[str], widths: tuple, l1s: tuple) -> list[list[str]]:
    from verify.interop import saelens

    rows = []
    for name in names:
        _, plain = compile_entry(name)
        inputs = variants.all_inputs(plain, max_inputs=EXACT_INPUTS)
        d = state_rank(plain, inputs)
        models = {"plain": plain, "rotated": variants.rotate(plain, 0, inputs=inputs[:2000])}
        if d < plain.config.d_model:
            models[f"compressed d={d}"] = variants.compress(plain, d, method="pca", seed=0, inputs=inputs)
        site = features.residual_sites(plain)[-1]
        l0_true = true_l0(plain, site, saelens.site_activations(plain, site))
        k = max(1, round(l0_true))
        settings = [("standard", l1) for l1 in l1s] + [("topk", k), ("batchtopk", k)]
        for kind, model in models.items():
            acts = saelens.site_activations(model, site)
            truth = features.feature_dictionary(model, site)
            n_true = len([lab for lab in truth.labels if lab != "one"])
            for width in widths:
                for arch, sparsity in settings:
                    r = _sae_row(acts, truth, width, arch, sparsity)
                    s = r["score"]
                    label = f"L1 {sparsity:g}" if arch == "standard" else f"{arch} k={sparsity}"
                    rows.append([
                        name, kind, str(model.config.d_model), str(n_true), f"{r['d_sae']}", label,
                        f"{r['l0']:.1f}", f"{l0_true:.1f}", f"{r['ev']:.3f}", str(r["dead"]),
                        f"{s.mean_max_cosine:.3f}", f"{s.recovered:.0%}", str(len(s.split)),
                        str(len(s.merged)), str(len(s.unmatched)),
                    ])
            print(f"  SAEs {name} {kind}", file=sys.stderr, flush=True)
    return rows


# -------------------------------------------------------------------------------------------- 3. probes


def probe_table(names: list[str]) -> list[list[str]]:
    rows = []
    for name in names:
        program, model = compile_entry(name)
        inputs = [x[1:] for x in variants.all_inputs(model, max_inputs=3000)]
        for site in features.residual_sites(model):
            for variable, r in sorted(features.probe_accuracy(model, program, site, inputs).items()):
                rows.append([name, site, variable, "yes" if r.present else "no", f"{r.accuracy:.3f}",
                             f"{r.chance:.3f}"])
        print(f"  probes {name}", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------------------------- 4. DAS


def das_table(cases: tuple) -> list[list[str]]:
    from verify import interop

    rows = []
    for name, variable in cases:
        program, model = compile_entry(name)
        alignment = causal.ground_truth_alignments(model, program)[variable]
        train = causal.make_dataset(model, program, 256, seed=0)
        test = causal.make_dataset(model, program, 128, seed=1)
        truth_iia = causal.interchange_accuracy(model, alignment, test)
        das = interop.das_alignment(model, alignment, train, test)
        cosines = ", ".join(f"{c:.2f}" for c in das.principal_cosines)
        rows.append([name, variable, alignment.component, str(len(alignment.subspace)),
                     f"{truth_iia.iia:.3f}", f"{das.iia.iia:.3f}", cosines])
        print(f"  DAS {name}.{variable}", file=sys.stderr, flush=True)
    return rows


# --------------------------------------------------------------------------------------------- output


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two programs, fewer settings, no learned maps")
    ap.add_argument("--out", default=str(OUT), help=f"markdown file to write (default {OUT.name})")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    quick = args.quick
    t0 = time.perf_counter()
    names = ["hist", "reverse"] if quick else sorted(LIBRARY)
    comp = compression_table(names, learned=not quick)
    saes = sae_table(list(SAE_PROGRAMS[:2] if quick else SAE_PROGRAMS),
                     SAE_WIDTHS[:2] if quick else SAE_WIDTHS, SAE_L1[1:2] if quick else SAE_L1)
    probes = probe_table(list(PROBE_PROGRAMS[:1] if quick else PROBE_PROGRAMS))
    das = das_table(DAS_CASES[:1] if quick else DAS_CASES)
    minutes = (time.perf_counter() - t0) / 60
    topk = [r for r in saes if "topk" in r[5]]
    ev_high = [r for r in saes if float(r[8]) >= 0.99]
    ev_high_lost = [r for r in ev_high if int(r[11].rstrip("%")) <= 10]
    best = max(int(r[11].rstrip("%")) for r in saes)
    summary = (f"{len(ev_high)} of the {len(saes)} SAEs explain at least 99% of the variance; "
               f"{len(ev_high_lost)} of those recover at most 10% of the true features; the best SAE "
               f"recovers {best}%; the best TopK or BatchTopK SAE (k = the true L0) "
               f"{max((int(r[11].rstrip('%')) for r in topk), default=0)}%.")
    text = f"""# Featurisation methods against the true features

Produced by `python benchmarks/features.py{' --quick' if quick else ''}` ({minutes:.0f} minutes, 1 thread);
every number below comes from that command. The truth is `verify.features`: at each residual site, one
direction per value of each categorical RASP variable (and one per numerical variable) written before
it, in the model's own basis (rotated and compressed variants carry their transformed directions).

## Exact compression: how many features fit in how few dimensions

The residual stream compressed by PCA maps fitted on the inputs (`transforms.variants.compress`) at two
widths: the rank of the residual states over every input counted in `inputs` (all of them up to
20,000), where every state and so every intermediate variable stays exact and the feature truth holds
at every site with more features than dimensions (superposition with known features: tested in
`tests/verification/test_features.py`); and the smallest width whose outputs are still exact at every
position, below which intermediate variables are corrupted at positions where the output does not
depend on them. `features` counts the true features at the final site (the one-hot groups of a variable
are linearly dependent on the others' and states the program never visits need no room). Below the
output-exact width, per-position accuracy with PCA maps and, for the SAE programs, with learned maps
(`method="learned"`, 300 Adam steps on 2,000 inputs).

{markdown(["program", "d_model", "features", "state rank", "features / rank", "output-exact width",
           "features / width", "inputs", "accuracy at width-1 (PCA)", "(learned)"], comp)}

## Sparse autoencoders (SAE-Lens), proxies beside the truth

SAE-Lens training SAEs, trained by SAE-Lens's `SAETrainer` ({SAE_SAMPLES:,} samples, batch 512, lr 3e-3)
on every position of every input (or 20,000 random inputs) at the final residual site: the ReLU SAE
with an L1 penalty (`StandardTrainingSAE`, `L1 x`), and `TopKTrainingSAE` / `BatchTopKTrainingSAE` with
k the true L0 rounded (`topk k=`, `batchtopk k=`).
`L0` / `EV` (explained variance) / `dead` are the proxies an SAE paper reports; `true L0` is how many
true features are active per position; `cos` is the mean over true features of the best cosine of any
latent, `recovered` the fraction of true features whose one-to-one matched latent reaches cosine 0.9;
`split` true features with several latents above 0.9, `merged` latents above 0.5 on several features,
`unmatched` latents that match no feature. {summary}

{markdown(["program", "variant", "d_model", "true features", "latents", "SAE", "L0", "true L0", "EV",
           "dead", "cos", "recovered", "split", "merged", "unmatched"], saes)}

## Linear probes (scikit-learn), per variable and residual site

Logistic regression from the site's activations to the variable's value, trained on half the positions
and scored on the other half. `written` is the truth: the variable's directions are in the residual
stream at that site, so a probe must read it exactly; where it is not written the truth claims nothing
(a function of written variables is often still linearly readable).

{markdown(["program", "site", "variable", "written", "accuracy", "chance"], probes)}

## Distributed alignment search (pyvene)

`verify.interop.das_alignment`: a rotation learned by pyvene (a `LowRankRotatedSpaceIntervention` of the
true subspace's dimension, shared by every position) on 256 counterfactual pairs, scored on 128 others.
`IIA (truth)` swaps the true subspace; `cosines` are the principal-angle cosines between the learned and
the true subspace (1: the same direction).

{markdown(["program", "variable", "component", "dims", "IIA (truth)", "IIA (DAS)", "cosines"], das)}
"""
    Path(args.out).write_text(text)
    print(f"wrote {args.out} in {minutes:.1f} minutes")


if __name__ == "__main__":
    main()
