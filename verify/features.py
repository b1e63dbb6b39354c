"""The true features of a compiled model at every activation site, and scores for learned dictionaries
against them (sparse autoencoders, transcoders: anything with one decoder direction per latent).

Every residual direction the compiler allocates is a feature with a known meaning: one value of a
categorical RASP variable (`sort:3`), a numerical variable (`frac`), the constant `one`, or a helper the
compiler added for a variable. At a residual site (`blocks.{l}.hook_resid_pre`, `..._resid_mid`,
`..._resid_post`) the features present are those written by the components before it (the annotation
says which block writes which direction). A feature's vector is its direction in the model's own basis,
so rotated and compressed variants carry their transformed directions (`transforms.variants`).
Component sites: a layer's summed head output (`blocks.{l}.hook_attn_out`) and MLP output
(`blocks.{l}.hook_mlp_out`, where a transcoder's decoder is scored) hold the directions that component
writes; the MLP's hidden layer (`blocks.{l}.mlp.hook_post`) has one feature per neuron, named by the op
whose block owns it.

`FeatureDictionary.coefficients(acts)` reads each feature's activation back from site activations (the
least-squares coefficients on the site's directions; for an exact model they reconstruct the activations
exactly, and a categorical feature is 1 exactly where the program's variable has that value).
`score_dictionary(decoder, truth)` compares a learned dictionary with the truth: mean max cosine, a
one-to-one matching (Hungarian, on cosine) and the fraction of true features recovered above a cosine
threshold, and the failure modes by name: missing features, split features (several latents on one),
merged latents (one latent on several features), and unmatched latents.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from rasp_compiler.model.directions import Direction, label_variables
from rasp_compiler.model.values import plain_json
from rasp_compiler.transforms.variants import labelled_basis
from verify.circuit import CircuitError

__all__ = [
    "DictionaryScore",
    "FeatureDictionary",
    "ProbeResult",
    "all_sites",
    "cached_runs",
    "component_sites",
    "feature_activations",
    "feature_dictionary",
    "probe_accuracy",
    "residual_sites",
    "save_features",
    "score_dictionary",
]

RECOVERED_COSINE = 0.9  # a true feature counts as recovered when its matched latent is this close
MERGED_COSINE = 0.5  # a latent this close to two or more features merges them (1/sqrt(2) for a pair)


@dataclasses.dataclass(frozen=True)
class FeatureDictionary:
    """The true features present at one site: labels, parsed directions, and vectors `[n, width]` in the
    model's coordinates: unit vectors in plain and rotated models; in compressed ones the compression
    map's image of each unit direction, so that a categorical feature's coefficient is still 1 where the
    variable has that value (`units` normalises them, for cosines)."""

    site: str
    labels: tuple[str, ...]
    directions: tuple[Direction, ...]
    vectors: np.ndarray

    @property
    def units(self) -> np.ndarray:
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        return self.vectors / np.where(norms > 0, norms, 1.0)

    def __len__(self) -> int:
        return len(self.labels)

    def coefficients(self, acts: Any) -> np.ndarray:
        """Each feature's activation in site activations `[..., d_model]` (least squares on the site's
        feature vectors; exact where the activations lie in their span)."""
        acts = np.asarray(acts, dtype=np.float64)
        if len(self) == 0:
            return np.zeros((*acts.shape[:-1], 0))
        coef, *_ = np.linalg.lstsq(self.vectors.T, acts.reshape(-1, acts.shape[-1]).T, rcond=None)
        return coef.T.reshape(*acts.shape[:-1], len(self))

    def reconstruct(self, coefficients: Any) -> np.ndarray:
        return np.asarray(coefficients) @ self.vectors


def cached_runs(
    model: Any, inputs: Sequence[Sequence[Any]], names: Sequence[str]
) -> Iterator[tuple[list[list[Any]], dict[str, Any]]]:
    """The engine's runs of `inputs` (BOS prepended), one batch per input length: each group of inputs
    with its cache of the hooks `names`."""
    from rasp_compiler.engine import Engine

    engine = Engine(model, threads=1)
    by_length: dict[int, list[list[Any]]] = {}
    for x in inputs:
        by_length.setdefault(len(x), []).append(list(x))
    for group in by_length.values():
        ids = np.array([model.codec.encode([model.codec.bos, *x]) for x in group], dtype=np.int64)
        yield group, engine.run_with_cache(ids, names=list(names))[1]


def residual_sites(model: Any) -> list[str]:
    """Every residual site, in order: each layer's resid_pre and resid_mid, then the last resid_post."""
    n = int(model.config.n_layers)
    sites = [f"blocks.{layer}.hook_resid_{stage}" for layer in range(n) for stage in ("pre", "mid")]
    return sites + [f"blocks.{n - 1}.hook_resid_post"] if n else sites


def component_sites(model: Any) -> list[str]:
    """Every component site, in order: per layer the heads' summed output, the MLP's hidden neurons (after
    the ReLU) and the MLP's output. A transcoder's decoder is scored at `hook_mlp_out`."""
    return [site for layer in range(int(model.config.n_layers))
            for site in (f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.mlp.hook_post",
                         f"blocks.{layer}.hook_mlp_out")]


_SITES = {"hook_resid_pre": 0, "hook_resid_mid": 1, "hook_resid_post": 2, "hook_attn_out": "attn",
          "hook_mlp_out": "mlp", "mlp.hook_post": "neurons"}


def _site_position(site: str) -> tuple[int, int | str]:
    """(layer, stage) of a site: residual stage 0 before attention, 1 before the MLP, 2 after it; or the
    component whose output it is ("attn", "mlp", "neurons": the MLP's hidden layer)."""
    parts = site.split(".", 2)
    expected = f"blocks.<layer>.{{{', '.join(_SITES)}}}"
    if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit() or parts[2] not in _SITES:
        raise CircuitError(f"unknown site {site!r}; expected {expected}")
    return int(parts[1]), _SITES[parts[2]]


def feature_dictionary(model: Any, site: str) -> FeatureDictionary:
    """The true features present at `site` (see the module docstring): at a residual site the directions
    written before it; at `hook_attn_out` / `hook_mlp_out` the directions that layer's heads / MLP write
    (in residual coordinates); at `mlp.hook_post` one feature per hidden neuron an op owns (its unit
    vector in neuron coordinates, labelled `op__neuron<k>`, k counted within the op's block)."""
    layer, stage = _site_position(site)
    if not 0 <= layer < int(model.config.n_layers):
        raise CircuitError(f"site {site!r}: the model has {model.config.n_layers} layers")
    ann = model.annotation
    if ann is None:
        raise CircuitError("feature_dictionary needs a model with an annotation")
    if stage == "neurons":
        return _neuron_features(model, site, layer)
    present: set[str] = set()
    for b in ann.blocks:
        if isinstance(stage, str):
            before = b.layer == layer and b.component == stage
        else:
            before = (
                b.component in ("embed", "pos_embed")
                or (b.layer is not None and b.layer < layer)
                or (b.layer == layer and (stage >= 2 or (stage == 1 and b.component == "attn")))
            )
        if before:
            present |= set(b.writes)
    labels, basis = labelled_basis(model)
    keep = [i for i, lab in enumerate(labels) if lab in present]
    names = [labels[i] for i in keep]
    variables = label_variables(labels)
    vectors = basis[keep] if keep else np.zeros((0, basis.shape[1]))
    return FeatureDictionary(site, tuple(names), tuple(Direction.parse(n, variables) for n in names), vectors)


def _neuron_features(model: Any, site: str, layer: int) -> FeatureDictionary:
    owned = [(b.op, k, j) for b in model.annotation.blocks
             if b.layer == layer and b.component == "mlp" and b.neurons is not None
             for k, j in enumerate(range(*b.neurons))]
    directions = tuple(Direction(op, role=f"neuron{k}") for op, k, _ in owned)
    vectors = np.zeros((len(owned), int(model.config.d_mlp)))
    vectors[np.arange(len(owned)), [j for *_, j in owned]] = 1.0
    return FeatureDictionary(site, tuple(map(str, directions)), directions, vectors)


@dataclasses.dataclass(frozen=True)
class DictionaryScore:
    """How well a learned dictionary recovers the true features of one site."""

    mean_max_cosine: float  # over true features: the best cosine any latent reaches
    recovered: float  # fraction of true features whose one-to-one matched latent reaches RECOVERED_COSINE
    matched_cosine: dict[str, float]  # true feature -> cosine of its matched latent (nan: no latent left)
    missing: list[str]  # true features no latent recovers
    split: dict[str, list[int]]  # true feature -> the several latents that each recover it
    merged: dict[int, list[str]]  # latent -> the several features it is close to (MERGED_COSINE)
    unmatched: list[int]  # latents matched to no true feature (or below MERGED_COSINE to all)

    @property
    def perfect(self) -> bool:
        return self.recovered == 1.0 and not (self.split or self.merged or self.unmatched)

    def describe(self) -> str:
        lines = [f"mean max cosine {self.mean_max_cosine:.3f}, recovered {self.recovered:.1%}"]
        if self.missing:
            lines.append(f"missing ({len(self.missing)}): {', '.join(self.missing[:8])}")
        for feat, latents in list(self.split.items())[:8]:
            lines.append(f"split: {feat} by latents {latents}")
        for latent, feats in list(self.merged.items())[:8]:
            lines.append(f"merged: latent {latent} spans {', '.join(feats)}")
        if self.unmatched:
            lines.append(f"unmatched latents ({len(self.unmatched)}): {self.unmatched[:8]}")
        return "\n".join(lines)


def score_dictionary(
    decoder: Any, truth: FeatureDictionary, *, ignore: Sequence[str] = ("one",)
) -> DictionaryScore:
    """Score decoder directions `[n_latents, d_model]` (in the model's residual coordinates) against the
    site's true features (the constant `one` is left out by default: it is a bias, not a feature)."""
    from scipy.optimize import linear_sum_assignment

    dec = np.asarray(decoder, dtype=np.float64)
    if dec.ndim != 2 or dec.shape[1] != truth.vectors.shape[1]:
        raise CircuitError(f"decoder must be [n_latents, {truth.vectors.shape[1]}], got {list(dec.shape)}")
    if not np.isfinite(dec).all():
        raise CircuitError("decoder holds non-finite values")
    keep = [i for i, lab in enumerate(truth.labels) if lab not in set(ignore)]
    labels = [truth.labels[i] for i in keep]
    true = truth.units[keep]
    norms = np.linalg.norm(dec, axis=1, keepdims=True)
    unit = dec / np.where(norms > 0, norms, 1.0)
    cos = true @ unit.T  # [n_features, n_latents]
    if not labels:
        return DictionaryScore(1.0, 1.0, {}, [], {}, {}, list(range(len(dec))))
    best = cos.max(axis=1) if cos.shape[1] else np.zeros(len(labels))
    rows, cols = linear_sum_assignment(-cos) if cos.shape[1] else (np.array([], int), np.array([], int))
    matched = {labels[r]: float(cos[r, c]) for r, c in zip(rows, cols, strict=True)}
    matched_cos = {lab: matched.get(lab, float("nan")) for lab in labels}
    missing = [lab for lab in labels if not matched_cos[lab] >= RECOVERED_COSINE]
    split = {labels[r]: [int(c) for c in np.flatnonzero(cos[r] >= RECOVERED_COSINE)]
             for r in range(len(labels)) if (cos[r] >= RECOVERED_COSINE).sum() > 1}
    merged = {int(c): [labels[r] for r in np.flatnonzero(cos[:, c] >= MERGED_COSINE)]
              for c in range(cos.shape[1]) if (cos[:, c] >= MERGED_COSINE).sum() > 1}
    used = {int(c) for r, c in zip(rows, cols, strict=True) if cos[r, c] >= MERGED_COSINE}
    ignored = [i for i in range(len(truth)) if i not in keep]
    if ignored:  # a latent on an ignored direction (the constant `one`) is not an unexplained latent
        on_ignored = (truth.units[ignored] @ unit.T).max(axis=0) >= RECOVERED_COSINE
        used |= {int(c) for c in np.flatnonzero(on_ignored)}
    unmatched = [c for c in range(cos.shape[1]) if c not in used and c not in merged
                 and not any(c in v for v in split.values())]
    recovered = sum(1 for lab in labels if matched_cos[lab] >= RECOVERED_COSINE) / len(labels)
    return DictionaryScore(float(best.mean()), recovered, matched_cos, missing, split, merged, unmatched)


FEATURES_FORMAT = "rasp_compiler.features"


def all_sites(model: Any) -> list[str]:
    """Every site with a feature truth: the residual sites, then the component sites."""
    return residual_sites(model) + component_sites(model)


def feature_activations(
    model: Any, inputs: Sequence[Sequence[Any]], truths: Sequence[FeatureDictionary] | None = None
) -> dict[str, np.ndarray]:
    """Per site, each true feature's activation `[n_inputs, 1 + max length, n_features]` (BOS first;
    NaN past an input's end): which inputs and positions fire it. Read back from `model`'s own
    activations, so pass the model a variant was made from (a compressed model's features are not
    separable from its activations; its true activations are the original model's). `truths`: the
    model's dictionaries of the sites wanted (default every site's)."""
    if not inputs:
        raise CircuitError("feature_activations needs at least one input")
    by_site = {d.site: d for d in (truths or [feature_dictionary(model, s) for s in all_sites(model)])}
    sites = list(by_site)
    T = 1 + max(len(x) for x in inputs)
    out = {s: np.full((len(inputs), T, len(by_site[s])), np.nan) for s in sites}
    where: dict[int, list[int]] = {}
    for i, x in enumerate(inputs):
        where.setdefault(len(x), []).append(i)
    for group, cache in cached_runs(model, inputs, sites):
        rows = where[len(group[0])]
        for s in sites:
            coef = by_site[s].coefficients(np.asarray(cache[s], dtype=np.float64))
            out[s][rows, : coef.shape[1]] = coef
    return out


def save_features(
    model: Any, directory: Any, inputs: Sequence[Sequence[Any]] | None = None, reference: Any = None
) -> list[FeatureDictionary]:
    """Write every site's true features (residual and component sites) beside nothing else of this
    package's: `features.json` (per site: labels, and each label's variable, value and role; `dims`: the
    site's width) and `features.safetensors` (per site `[n_features, width]` float32 vectors, keyed by the
    site name; width d_model, or d_mlp at `mlp.hook_post`); both readable without this package. With
    `inputs`, also `feature_activations.safetensors` (`feature_activations` per site, computed on
    `reference`, the model a variant was made from, when it has the same features) and the inputs in
    `features.json`."""
    import json
    from pathlib import Path

    from safetensors.numpy import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    sites = all_sites(model)
    dictionaries = [feature_dictionary(model, site) for site in sites]
    doc = {
        "format": FEATURES_FORMAT,
        "version": 1,
        "d_model": int(model.config.d_model),
        "dims": {d.site: int(d.vectors.shape[1]) for d in dictionaries},
        "sites": {
            d.site: [{"label": lab, "variable": x.variable, "value": x.value, "role": x.role}
                     for lab, x in zip(d.labels, d.directions, strict=True)]
            for d in dictionaries
        },
    }
    if inputs is not None:
        source, truths = model, dictionaries
        if reference is not None:
            theirs = [feature_dictionary(reference, site) for site in sites]
            if all(a.labels == b.labels for a, b in zip(theirs, dictionaries, strict=True)):
                # the same features (a rotation, a compression): read them where they separate
                source, truths = reference, theirs
        acts = feature_activations(source, inputs, truths)
        doc["activation_inputs"] = [plain_json(list(x)) for x in inputs]
        save_file({s: np.ascontiguousarray(a, dtype=np.float32) for s, a in acts.items()},
                  str(out / "feature_activations.safetensors"))
    (out / "features.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    save_file({d.site: np.ascontiguousarray(d.vectors, dtype=np.float32) for d in dictionaries},
              str(out / "features.safetensors"))
    return dictionaries



@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """A linear probe for one categorical variable at one site: held-out accuracy, the majority-class
    baseline, and whether the truth says the variable is written there (then it must read it exactly)."""

    variable: str
    site: str
    accuracy: float
    chance: float
    present: bool
    n_train: int
    n_test: int


def probe_accuracy(model: Any, program: Any, site: str, inputs: Sequence[Sequence[Any]], *,
                   seed: int = 0) -> dict[str, ProbeResult]:
    """Per categorical variable of the program (tokens and indices included): a logistic-regression probe
    (scikit-learn) from the site's activations to the variable's value at each non-BOS position, trained
    on half the positions and scored on the other half. `present` comes from the feature truth: where
    it is true the probe must read the variable exactly (accuracy 1.0); where false the truth claims
    nothing (a Map of a present variable is still linearly readable)."""
    from sklearn.linear_model import LogisticRegression

    from rasp_compiler import rasp
    from verify.causal.program import ProgramRunner

    truth = feature_dictionary(model, site)
    written = {d.variable for d in truth.directions if d.value is not None}
    runner = ProgramRunner(program, causal=model.config.causal)
    acts, values = [], []
    for group, cache in cached_runs(model, inputs, [site]):
        acts.append(np.asarray(cache[site])[:, 1:].reshape(-1, int(model.config.d_model)))
        values += [runner.values(x) for x in group]
    X = np.concatenate(acts)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(X))
    train, test = order[: len(X) // 2], order[len(X) // 2:]
    results: dict[str, ProbeResult] = {}
    for label, exprs in runner.by_label.items():
        expr = exprs[0]
        if not isinstance(expr, rasp.SOp) or rasp.is_numerical(expr):
            continue
        y = np.array([repr(v) for vals in values for v in vals[id(expr)]])
        if len(set(y[train])) < 2:
            continue  # one value on the training positions: nothing to probe
        probe = LogisticRegression(max_iter=2000, C=100.0).fit(X[train], y[train])
        counts = {v: int((y[test] == v).sum()) for v in set(y[test])}
        accuracy = float((probe.predict(X[test]) == y[test]).mean())
        chance = max(counts.values()) / len(test)
        results[label] = ProbeResult(label, site, accuracy, chance, label in written, len(train), len(test))
    return results
