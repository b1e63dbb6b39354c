"""A user's circuit-discovery method scored over a whole suite: `rasp-compiler evaluate --tool SPEC SUITE`.

For every model of the suite: the model, its program (program.py) and its dataset.json pairs (those of
the most common input length: a tool's dataset has one length), the tool run once, its answer scored
against the structural truth and against the ablation-aware truth (`causal.necessary_edges` under
`ablation`, on the same pairs). Each model's result is written to
`SUITE/evaluations/<tool>/<model id>.json` as soon as it is known, so a re-run with the same settings
skips it (resume). The summary gives, per truth, the mean F1 and ROC-AUC with 95% bootstrap confidence
intervals, the worst models first with the reason for every missed or extra edge, ROC curves
(`roc_structural.png`, `roc_ablation.png`) and `report.md` in the same directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rasp_compiler.app import pictures
from rasp_compiler.app.suite import SuiteError, read_index
from rasp_compiler.model import load
from rasp_compiler.rasp.loading import is_file_spec
from rasp_compiler.rasp.source import from_source
from verify.dataset import dataset_from_inputs
from verify.structural import score
from verify.tool_fuzz import TRUTHS, answer_scores, load_tool, reason_for, truth_with_reasons

__all__ = ["ModelEvaluation", "SuiteEvaluation", "evaluate_suite"]

EVALUATION_VERSION = 1
BOOTSTRAP_SAMPLES = 2000


@dataclasses.dataclass(frozen=True)
class ModelEvaluation:
    """One model: per truth its F1 / ROC-AUC and the missed / extra edges with their reasons; or why it
    was skipped (`skipped`), or the tool's error (`error`, scored 0)."""

    model_id: str
    settings: dict[str, Any]
    scores: dict[str, dict[str, Any]]  # truth -> {"f1", "roc_auc", "precision", "recall", "fpr", "tpr",
    #                                               "missed": {edge: reason}, "extra": {edge: reason}}
    skipped: str = ""
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"version": EVALUATION_VERSION}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelEvaluation:
        return cls(data["model_id"], data["settings"], data["scores"], data.get("skipped", ""),
                   data.get("error", ""))


@dataclasses.dataclass
class SuiteEvaluation:
    """Every model's evaluation, with the summary statistics and the report."""

    tool: str
    suite: Path
    directory: Path
    models: list[ModelEvaluation]
    resumed: int = 0

    def scored(self, truth: str) -> list[ModelEvaluation]:
        return [m for m in self.models if not m.skipped and truth in m.scores]

    def summary(self, truth: str) -> dict[str, Any]:
        """Mean F1 and ROC-AUC over the scored models, each with a 95% bootstrap interval."""
        rows = self.scored(truth)
        out: dict[str, Any] = {"models": len(rows)}
        for key in ("f1", "roc_auc"):
            vals = np.array([m.scores[truth][key] for m in rows], dtype=float)
            vals = vals[np.isfinite(vals)]
            out[key] = _mean_ci(vals)
        return out

    def worst(self, truth: str, k: int = 5) -> list[ModelEvaluation]:
        return sorted(self.scored(truth), key=lambda m: (m.scores[truth]["f1"], m.model_id))[:k]

    def report(self) -> str:
        skipped = Counter(m.skipped for m in self.models if m.skipped)
        errors = [m for m in self.models if m.error]
        lines = [
            f"evaluate: {self.tool} on {self.suite} ({len(self.models)} models; {self.resumed} from an "
            f"earlier run)",
        ]
        if skipped:
            lines.append("  skipped: " + ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())))
        if errors:
            first = errors[0]
            lines.append(f"  the tool raised on {len(errors)} model(s), scored 0; first: {first.model_id}: "
                         f"{first.error}")
        lines.append(f"  {'truth':<11} {'models':>6}  {'F1 mean [95% CI]':<24} {'ROC-AUC mean [95% CI]':<24}")
        for truth in TRUTHS:
            s = self.summary(truth)
            lines.append(f"  {truth:<11} {s['models']:>6}  {_fmt(s['f1']):<24} {_fmt(s['roc_auc']):<24}")
        for truth in TRUTHS:
            lines.append(f"  worst models vs the {truth} truth:")
            for m in self.worst(truth):
                sc = m.scores[truth]
                lines.append(f"    {m.model_id}: F1 {sc['f1']:.3f}, ROC-AUC {_num(sc['roc_auc'])}")
                for kind in ("missed", "extra"):
                    for edge, why in list(sc[kind].items())[:4]:
                        lines.append(f"      {kind} {edge}: {why}")
                    if len(sc[kind]) > 4:
                        lines.append(f"      ... {len(sc[kind]) - 4} more {kind}")
        lines.append(f"  files: {self.directory}/ (report.md, roc_*.png, summary.json, <model id>.json)")
        return "\n".join(lines)


def _mean_ci(vals: np.ndarray) -> dict[str, float]:
    if vals.size == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan}
    rng = np.random.default_rng(0)
    means = rng.choice(vals, size=(BOOTSTRAP_SAMPLES, vals.size), replace=True).mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"mean": float(vals.mean()), "low": float(low), "high": float(high)}


def _fmt(s: dict[str, float]) -> str:
    return f"{_num(s['mean'])} [{_num(s['low'])}, {_num(s['high'])}]"


def _num(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _tool_label(tool: Callable | str) -> str:
    """How results name a tool: a spec as given (a file by its name only), a callable by its import path."""
    if isinstance(tool, str):
        return f"{Path(tool.rsplit(':', 1)[0]).name}:{tool.rsplit(':', 1)[1]}" if is_file_spec(tool) else tool
    named = getattr(tool, "name", None)
    if isinstance(named, str):
        return named
    return f"{getattr(tool, '__module__', '')}.{getattr(tool, '__qualname__', type(tool).__name__)}"


def _tool_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "tool"


def _token_lookup(model: Any) -> dict[str, Any]:
    return {json.dumps(t, default=repr): t for t in model.codec.vocab}


def _dataset(model: Any, program: Any, path: Path) -> Any:
    """The dataset.json pairs of the most common input length (ties: the longest) as a Dataset."""
    try:
        pairs = json.loads(path.read_text(encoding="utf-8"))["pairs"]
        lookup = _token_lookup(model)
        def tokens(xs: list[Any]) -> list[Any]:
            return [lookup[json.dumps(t)] for t in xs]

        decoded = [(tokens(p["clean"]), tokens(p["corrupted"])) for p in pairs]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SuiteError(f"{path}: not a suite dataset ({type(e).__name__}: {e})") from None
    if not decoded:
        raise SuiteError(f"{path}: no input pairs")
    counts = Counter(len(c) for c, _ in decoded)
    length = max(counts, key=lambda n: (counts[n], n))
    chosen = [(c, x) for c, x in decoded if len(c) == length]
    return dataset_from_inputs(model, program, [c for c, _ in chosen], [x for _, x in chosen])


def _evaluate_model(tool: Callable, model_dir: Path, settings: dict[str, Any]) -> ModelEvaluation:
    model_id = model_dir.name
    model = load(model_dir)
    program = from_source((model_dir / "program.py").read_text(encoding="utf-8"))
    data = _dataset(model, program, model_dir / "dataset.json")
    scores: dict[str, dict[str, Any]] = {}
    truths = {}
    for truth in TRUTHS:
        circuit, reasons = truth_with_reasons(model, data, truth, settings["ablation"], "edge")
        truths[truth] = (circuit, reasons)
    if all(c is None for c, _ in truths.values()):
        return ModelEvaluation(model_id, settings, {}, skipped="empty truth")
    try:
        discovered, _ = answer_scores(tool(model, data), model, "edge")
    except Exception as e:  # noqa: BLE001 - a crashing tool scores 0 on this model, with its error
        zero = {"f1": 0.0, "roc_auc": 0.0, "precision": 0.0, "recall": 0.0, "fpr": [], "tpr": [],
                "missed": {}, "extra": {}}
        error = f"{type(e).__name__}: {e}"
        return ModelEvaluation(model_id, settings, {t: zero for t in TRUTHS}, error=error)
    for truth, (circuit, reasons) in truths.items():
        if circuit is None:
            continue
        r = score(discovered, circuit, "edge", threshold=settings["threshold"],
                  merge_embeddings=settings["merge_embeddings"])
        scores[truth] = {
            "f1": r.f1, "roc_auc": r.roc_auc, "precision": r.precision, "recall": r.recall,
            "fpr": [float(x) for x in r.fpr], "tpr": [float(x) for x in r.tpr],
            "missed": {e: reason_for(e, reasons) for e in r.false_negatives},
            "extra": {e: reason_for(e, reasons) for e in r.false_positives},
        }
    return ModelEvaluation(model_id, settings, scores)


def evaluate_suite(
    tool: Callable | str,
    suite: str | Path,
    *,
    ablation: str = "resample",
    threshold: float = 0.0,
    merge_embeddings: bool = False,
    name: str | None = None,
    progress: bool = True,
) -> SuiteEvaluation:
    """Score `tool(model, dataset)` (a callable, a built-in baseline name, `package.module:function` or
    `path/to/file.py:function`) on every model of the suite in `suite`; see the module docstring."""
    suite = Path(suite)
    index = read_index(suite)
    label = name or _tool_label(tool)
    fn = load_tool(tool, ablation) if isinstance(tool, str) else tool
    settings = {"tool": label, "ablation": ablation, "threshold": float(threshold),
                "merge_embeddings": bool(merge_embeddings)}
    out = suite / "evaluations" / _tool_key(label)
    out.mkdir(parents=True, exist_ok=True)
    ids = [row["id"] for row in index.get("models", []) if (suite / "models" / row["id"]).is_dir()]
    if not ids:
        raise SuiteError(f"{suite}: the index lists no model directories")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(ids), desc="evaluate", unit="model", file=sys.stderr)
    results, resumed = [], 0
    for model_id in ids:
        path = out / f"{model_id}.json"
        done = _read_done(path, settings)
        if done is None:
            done = _evaluate_model(fn, suite / "models" / model_id, settings)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(done.to_json(), indent=1, sort_keys=True), encoding="utf-8")
            tmp.replace(path)
        else:
            resumed += 1
        results.append(done)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    ev = SuiteEvaluation(label, suite, out, results, resumed)
    _write_outputs(ev)
    return ev


def _read_done(path: Path, settings: dict[str, Any]) -> ModelEvaluation | None:
    """An earlier result with the same settings, or None (missing, damaged or made otherwise)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        done = ModelEvaluation.from_json(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return done if data.get("version") == EVALUATION_VERSION and done.settings == settings else None


def _write_outputs(ev: SuiteEvaluation) -> None:
    for truth in TRUTHS:
        curves = [(m.model_id, m.scores[truth]["fpr"], m.scores[truth]["tpr"], m.scores[truth]["roc_auc"])
                  for m in ev.scored(truth) if m.scores[truth]["fpr"]]
        pictures.roc_curves(curves[:12], ev.directory / f"roc_{truth}.png",
                            title=f"{ev.tool} vs the {truth} truth (first {min(len(curves), 12)} models)")
    summary = {truth: ev.summary(truth) for truth in TRUTHS}
    (ev.directory / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n",
                                               encoding="utf-8")
    text = ["# " + ev.tool, "", "```", ev.report(), "```", "",
            "![ROC vs the structural truth](roc_structural.png)",
            "![ROC vs the ablation-aware truth](roc_ablation.png)"]
    (ev.directory / "report.md").write_text("\n".join(text) + "\n", encoding="utf-8")
