"""A reproducible benchmark suite: N compiled models with their ground truth, datasets and cards.

`generate_suite(n, seed, out)` writes::

    out/suite.json                 the settings (format, version, seed, n, pairs); a resumed run must match
    out/index.json                 one row per model (sizes, circuit size, status) + the failures
    out/models/<id>/               one directory per model (also a model directory for `rasp-compiler run`)
        weights.safetensors, model.json    the model (rasp_compiler.model.io)
        program.py                         the program as Python source (`rasp.source.to_source`)
        circuit.json                       ground truth, verify's JSON form
        circuit.acdc.json, circuit.autocircuit.json, circuit.eapig.json, circuit.tl_hooks.json
        dataset.json                       clean / corrupted input pairs with the evaluator's outputs
        features.json, features.safetensors     the true features at every site (verify.features)
        feature_activations.safetensors    each true feature's activation on the dataset's clean inputs
        card.json                          program, sizes, op kinds, layers, circuit size, variant record
        outputs/<name>.circuit.json        multi-output models (--multi K): each output's own circuit

Variants (`SuiteVariants`, the CLI's `--multi/--noise/--rotate/--compress`): each model is built as usual
(K programs in one residual stream with `--multi K`: the item's program first, then partners over the
same vocabulary), then transformed in this order: distractors and weight noise
(`variants.add_noise`), a random rotation of the residual basis (`variants.rotate`), compression
(`variants.compress`; approximate, its measured accuracy recorded). The circuit files describe the
first output; the card's "variant" section (from `variants.variant_card`, the basis left in
model.json) and the index row name every step.

Models are library programs (`rasp_compiler.rasp.lib.LIBRARY`) and generated ones
(`rasp_compiler.testing.generate`). Each model is one work item whose every random choice is seeded from
`(seed, item index)` alone, so results do not depend on the worker count or on the order items
finish. A model directory is built completely in memory, written to `<id>.tmp-<pid>` and renamed:
a directory without the `.tmp` suffix is complete, and a second run skips it (resumable). The same
seed gives byte-identical files: JSON with sorted keys, no timestamps, and `rasp_compiler.model.io.save`
writes canonical safetensors headers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import verify
from rasp_compiler import rasp
from rasp_compiler.compiler import compiling, multi
from rasp_compiler.model import output_view
from rasp_compiler.model.outputs import outputs_equal
from rasp_compiler.model.values import plain_json, sort_values
from rasp_compiler.rasp.lib import LIBRARY
from rasp_compiler.rasp.source import to_source
from rasp_compiler.testing import generate
from rasp_compiler.testing.generate import op_kinds
from rasp_compiler.testing.runner import available_cores, iter_work
from rasp_compiler.transforms import variants
from rasp_compiler.transforms.variants import COMPRESS_METHODS
from verify import features, formats
from verify.circuit import CircuitError

__all__ = [
    "SUITE_FORMAT",
    "SUITE_VERSION",
    "SuiteError",
    "SuiteSummary",
    "SuiteVariants",
    "WorkItem",
    "build_item",
    "generate_suite",
    "plan",
    "read_index",
]

SUITE_FORMAT = "rasp_compiler.suite"
SUITE_VERSION = 1
DATASET_FORMAT = "rasp_compiler.dataset"
FILES_MANIFEST = "manifest.json"  # per model: {file name: sha256} of every other file it wrote
MAX_ATTEMPTS = 12  # generated programs: draws per item until one compiles exactly


# Generated programs come in three sizes (by item index), so the suite spans 1 to ~8 layers.
GENERATED_LIMITS: dict[str, dict[str, int]] = {
    "small": {"min_ops": 2, "max_ops": 6},
    "medium": {"min_ops": 5, "max_ops": 10, "max_layers": 6, "max_depth": 10},
    "large": {"min_ops": 8, "max_ops": 16, "max_layers": 8, "max_depth": 14, "max_seq_len": 6},
}
_SIZES = ("small", "medium", "large")


class SuiteError(ValueError):
    """A suite cannot be generated or resumed as asked (wrong directory, settings mismatch, ...)."""


# Partners of a multi-output model whose own vocabulary group has too few programs: these library
# programs are defined on any vocabulary.
_ANY_VOCAB_PARTNERS = ("length", "reverse", "hist", "first_occurrence", "dedup")


@dataclasses.dataclass(frozen=True)
class SuiteVariants:
    """Which harder-truth variants every model of the suite gets (docs/CONTRACTS.md, Requests to suite).

    `multi`: programs per model (1 = plain); `noise_heads` / `noise_neurons`: distractors writing to
    directions nobody reads; `cancel_pairs`: cancelling head pairs and neuron pairs; `weight_noise`:
    relative noise on nonzero weights (kept only where outputs stay exact); `rotate`: a random
    orthogonal residual basis; `compress`: residual width as a fraction of d_model (None = off),
    through `compress_method`; `causal`: decoder-only models (the library programs a causal compile
    accepts, generated programs made for it), checked against the prefix evaluation.
    """

    multi: int = 1
    noise_heads: int = 0
    noise_neurons: int = 0
    cancel_pairs: int = 0
    weight_noise: float = 0.0
    rotate: bool = False
    compress: float | None = None
    compress_method: str = "pca"
    causal: bool = False

    def __post_init__(self) -> None:

        if isinstance(self.multi, bool) or not isinstance(self.multi, int) or not 1 <= self.multi <= 6:
            raise SuiteError(f"--multi must be an int from 1 to 6, got {self.multi!r}")
        for name in ("noise_heads", "noise_neurons", "cancel_pairs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise SuiteError(f"{name.replace('_', '-')} must be an int >= 0, got {v!r}")
        if not (isinstance(self.weight_noise, int | float) and 0 <= self.weight_noise <= 1):
            raise SuiteError(f"--weight-noise must be in [0, 1], got {self.weight_noise!r}")
        if self.compress is not None and not 0 < self.compress < 1:
            raise SuiteError(f"--compress takes a fraction of d_model in (0, 1), got {self.compress!r}")
        if not isinstance(self.causal, bool):
            raise SuiteError(f"causal must be true or false, got {self.causal!r}")
        if self.compress_method not in COMPRESS_METHODS:
            raise SuiteError(
                f"--compress-method must be one of {COMPRESS_METHODS}, got {self.compress_method!r}"
            )

    @property
    def noisy(self) -> bool:
        return bool(self.noise_heads or self.noise_neurons or self.cancel_pairs or self.weight_noise)

    @property
    def any(self) -> bool:
        return self.multi > 1 or self.noisy or self.rotate or self.compress is not None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """One model of the suite: its position, directory name, origin and the suite seed."""

    index: int
    model_id: str
    origin: str  # "library" | "generated"
    name: str  # library program name, or "generated"
    seed: int
    pairs: int
    variants: SuiteVariants = SuiteVariants()


@dataclasses.dataclass
class SuiteSummary:
    """What a `generate_suite` run did."""

    out: Path
    n: int
    seed: int
    built: int = 0
    skipped: int = 0
    failed: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rejected_drafts: int = 0
    seconds: float = 0.0
    workers: int = 1
    layers: list[int] = dataclasses.field(default_factory=list)
    origins: Counter = dataclasses.field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.failed

    def report(self) -> str:
        lay = sorted(self.layers)
        span = f"{lay[0]}..{lay[-1]} (median {lay[len(lay) // 2]})" if lay else "-"
        lines = [
            f"suite: {self.n} models (seed {self.seed}) in {self.out}",
            f"  built {self.built}, skipped {self.skipped} already complete, failed {len(self.failed)}; "
            f"{self.seconds:.1f} s with {self.workers} worker(s)",
            "  origins: " + ", ".join(f"{k} {v}" for k, v in sorted(self.origins.items())),
            f"  layers: {span}; generated drafts rejected and redrawn: {self.rejected_drafts}",
            f"  index: {self.out / 'index.json'}",
        ]
        for f in self.failed[:10]:
            lines.append(f"  FAILED {f['id']}: {f['error']}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- plan


def plan(n: int, seed: int, pairs: int = 32, variants: SuiteVariants | None = None) -> list[WorkItem]:
    """The suite's work items: about half library programs (all of them when n >= 60), then generated."""

    if n < 1:
        raise SuiteError(f"--n must be at least 1, got {n}")
    if pairs < 1:
        raise SuiteError(f"pairs must be at least 1, got {pairs}")
    v = variants or SuiteVariants()
    names = [n for n in sorted(LIBRARY) if not v.causal or _compiles_causally(n)]
    n_lib = min(len(names), max(1, n // 2))
    chosen = names if n_lib == len(names) else random.Random(f"suite-library:{seed}").sample(names, n_lib)
    items = [WorkItem(i, f"{i:04d}-{name}", "library", name, seed, pairs, v) for i, name in enumerate(chosen)]
    items += [
        WorkItem(i, f"{i:04d}-generated", "generated", "generated", seed, pairs, v) for i in range(n_lib, n)
    ]
    return items


def _compiles_causally(name: str) -> bool:
    """Whether a causal compile accepts the library program (the others read across positions a value
    that later tokens change; `compiler.prefixes`)."""
    e = LIBRARY[name]
    try:
        compiling.compile_rasp_to_model(e.builder(), e.vocab, e.max_seq_len, causal=True)
    except compiling.CompileError:
        return False
    return True


# ----------------------------------------------------------------------------------------------- one item


def _item_seed(item: WorkItem, what: str, attempt: int = 0) -> int:
    digest = hashlib.sha256(f"suite:{item.seed}:{item.index}:{what}:{attempt}".encode()).hexdigest()
    return int(digest[:15], 16)


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode()


def make_pairs(
    program: Any,
    vocab: Sequence[Any],
    lengths: Sequence[int],
    n: int,
    rng: random.Random,
    *,
    distinct: bool = False,
    others: dict[str, Any] | None = None,
    causal: bool = False,
) -> list[dict[str, Any]]:
    """`n` clean/corrupted input pairs of equal length, each with the evaluator's outputs (`causal`: the
    prefix evaluation, `rasp.evaluate_prefixes`, the reference of a decoder-only model).

    Corrupted inputs differ from clean ones where possible (resample-ablation datasets); inputs on which
    the evaluator raises (a program undefined there) are redrawn. `others` ({name: program}, the other
    outputs of a multi-output model) adds `outputs_expected: {name: {clean, corrupted}}` to each pair.
    """
    evaluate = rasp.evaluate_prefixes if causal else rasp.evaluate

    vocab = list(vocab)
    lengths = [k for k in lengths if not distinct or k <= len(vocab)]

    def draw(k: int) -> list[Any]:
        return rng.sample(vocab, k) if distinct else [rng.choice(vocab) for _ in range(k)]

    out: list[dict[str, Any]] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n:
            raise SuiteError(f"could not draw {n} valid input pairs (the evaluator fails on most inputs)")
        k = rng.choice(lengths)
        clean = draw(k)
        corrupted = draw(k)
        for _ in range(4):
            if corrupted != clean or len(vocab) ** k <= 1:
                break
            corrupted = draw(k)
        try:
            ce = evaluate(program, clean)
            xe = evaluate(program, corrupted)
            extra = {
                name: {"clean": evaluate(p, clean), "corrupted": evaluate(p, corrupted)}
                for name, p in (others or {}).items()
            }
        except rasp.RASPError:
            continue
        pair = {"clean": clean, "corrupted": corrupted, "clean_expected": ce, "corrupted_expected": xe}
        if others:
            pair["outputs_expected"] = extra
        out.append(pair)
    return out


def _layers(annotation: dict[str, Any] | None, n_layers: int) -> list[dict[str, Any]]:
    """Per layer: which op each real head and MLP block implements (from the annotation)."""
    layers: list[dict[str, Any]] = [{"layer": lay, "heads": [], "mlp": []} for lay in range(n_layers)]
    for b in (annotation or {}).get("blocks", []):
        if b.get("component") == "attn":
            layers[b["layer"]]["heads"].append(
                {"head": b["head"], "op": b["op"], "selectors": sorted(b.get("selectors", []))}
            )
        elif b.get("component") == "mlp":
            layers[b["layer"]]["mlp"].append({"op": b["op"], "neurons": list(b.get("neurons", []))})
    for lay in layers:
        lay["heads"].sort(key=lambda h: (h["head"], h["op"]))
        lay["mlp"].sort(key=lambda m: (m["neurons"], m["op"]))
    return layers


def _circuit_files(truth: Any) -> dict[str, bytes]:

    acdc = sorted(
        [child, list(ci), parent, list(pi), bool(on)]
        for (child, ci, parent, pi), on in formats.to_acdc(truth).items()
    )
    acdc.sort(key=lambda r: json.dumps(r))
    return {
        "circuit.json": _dump(formats.to_json(truth)),
        "circuit.acdc.json": _dump(
            {
                "format": "acdc",
                "version": 1,
                "output": truth.output,
                "columns": ["child", "child_index", "parent", "parent_index", "present"],
                "edges": acdc,
            }
        ),
        "circuit.autocircuit.json": _dump(
            {
                "format": "auto-circuit",
                "version": 1,
                "output": truth.output,
                "edges": sorted(formats.to_autocircuit(truth)),
            }
        ),
        "circuit.eapig.json": _dump(formats.to_eapig_json(truth)),
        "circuit.tl_hooks.json": _dump(
            {
                "format": "tl-hooks",
                "version": 1,
                "output": truth.output,
                "hooks": sorted([h, i] for h, i in formats.to_tl_hooks(truth)),
            }
        ),
    }


def _partners(item: WorkItem, vocab: tuple, distinct: bool, k: int) -> dict[str, Any]:
    """`k` other library programs to share a multi-output model with the item's program: first those
    over the same vocabulary, then programs defined on any vocabulary; seeded by the item alone."""

    same = [
        n
        for n, e in sorted(LIBRARY.items())
        if n != item.name and tuple(sort_values(e.vocab)) == vocab and e.distinct_tokens == distinct
    ]
    random.Random(_item_seed(item, "partners")).shuffle(same)
    pool = same + [n for n in _ANY_VOCAB_PARTNERS if n != item.name and n not in same]
    if item.variants.causal:
        pool = [n for n in pool if _compiles_causally(n)]
    return {n: LIBRARY[n].builder() for n in pool[:k]}


def _draft(item: WorkItem, attempt: int) -> tuple[Any, tuple, int, tuple[int, ...], bool, str]:
    """(program, vocab, max_seq_len, lengths, distinct_tokens, summary) for one attempt at an item."""

    rasp.restart_ids()
    if item.origin == "library":
        e = LIBRARY[item.name]
        return (
            e.builder(),
            tuple(sort_values(e.vocab)),
            e.max_seq_len,
            tuple(range(1, e.max_seq_len + 1)),
            e.distinct_tokens,
            e.summary,
        )
    size = _SIZES[item.index % len(_SIZES)]
    limits = GENERATED_LIMITS[size] | ({"causal": True} if item.variants.causal else {})
    gp = generate.sample_programs(1, _item_seed(item, "program", attempt), **limits)[0]
    return gp.program, tuple(gp.vocab), gp.max_seq_len, gp.lengths, False, f"generated program ({size})"


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _apply_variants(
    model: Any, v: SuiteVariants, item: WorkItem, attempt: int, inputs: list[list[Any]]
) -> Any:
    """Noise, then rotation, then compression, as `v` asks; each step checks itself on `inputs`."""

    if v.noisy:
        model = variants.add_noise(
            model,
            heads=v.noise_heads,
            neurons=v.noise_neurons,
            weight_noise=float(v.weight_noise),
            seed=_item_seed(item, "noise", attempt),
            cancel_heads=v.cancel_pairs,
            cancel_neurons=v.cancel_pairs,
            inputs=inputs,
        )
    if v.rotate:
        model = variants.rotate(model, _item_seed(item, "rotate", attempt), inputs=inputs)
    if v.compress is not None:
        d = max(1, min(model.config.d_model - 1, round(v.compress * model.config.d_model)))
        model = variants.compress(
            model,
            d,
            method=v.compress_method,
            seed=_item_seed(item, "compress", attempt) % 2**32,
            inputs=inputs,
        )
    return model


def _mismatch(
    model: Any, views: dict[str, Any], inputs: list, wanted: dict[str, list], numerical: dict
) -> str:
    """'' when every output equals the evaluator on every input, else a one-line description."""
    for name, view in views.items():
        got = view.apply_batch([[model.codec.bos, *x] for x in inputs])
        bad = [
            i
            for i, (w, g) in enumerate(zip(wanted[name], got, strict=True))
            if not outputs_equal(w, g[1:], numerical[name])
        ]
        if bad:
            i = bad[0]
            label = f"output {name!r}: " if len(views) > 1 else ""
            return (
                f"{label}model disagrees with the evaluator on {len(bad)} of {len(inputs)} inputs, e.g. "
                f"{inputs[i]}: expected {wanted[name][i]}, got {got[i][1:]}"
            )
    return ""


def build_item(item: WorkItem) -> dict[str, Any]:
    """Compile, check and describe one model; returns {"id", "files": {name: bytes}, "card"} or an error.

    Pure function of `item` (runs in worker processes or Ray tasks; nothing is written outside a
    private temporary directory).
    """

    v = item.variants
    rejected: Counter = Counter()
    attempts = (3 if v.any else 1) if item.origin == "library" else MAX_ATTEMPTS
    last_error = ""
    for attempt in range(attempts):
        try:
            program, vocab, max_seq_len, lengths, distinct, summary = _draft(item, attempt)
            programs = {item.name: program}
            if v.multi > 1:
                programs.update(_partners(item, vocab, distinct, v.multi - 1))
                model = multi.compile_programs(programs, vocab, max_seq_len, causal=v.causal)
            else:
                model = compiling.compile_rasp_to_model(program, vocab, max_seq_len, causal=v.causal)
        except (compiling.CompileError, rasp.RASPError, multi.MultiOutputError) as e:
            rejected["compile_error"] += 1
            last_error = f"compile error: {_first_line(e)}"
            continue
        views = (
            {n: output_view(model, n) for n in programs} if len(programs) > 1 else {item.name: model}
        )
        numerical = {n: m.config.output_encoding == "numerical" for n, m in views.items()}
        rng = random.Random(_item_seed(item, "data", attempt))
        others = {n: p for n, p in programs.items() if n != item.name}
        try:
            pairs = make_pairs(
                program, vocab, lengths, item.pairs, rng, distinct=distinct, others=others, causal=v.causal
            )
        except SuiteError as e:
            rejected["evaluator_error"] += 1
            last_error = str(e)
            continue
        inputs = [p[k] for p in pairs for k in ("clean", "corrupted")]
        wanted = {item.name: [p[k] for p in pairs for k in ("clean_expected", "corrupted_expected")]}
        for n in others:
            wanted[n] = [p["outputs_expected"][n][k] for p in pairs for k in ("clean", "corrupted")]
        bad = _mismatch(model, views, inputs, wanted, numerical)
        if bad:
            rejected["mismatch"] += 1
            last_error = bad
            continue
        compiled_model = model  # the variants' starting point: where a compressed model's features separate
        if v.noisy or v.rotate or v.compress is not None:
            try:
                model = _apply_variants(model, v, item, attempt, [[model.codec.bos, *x] for x in inputs])
            except variants.VariantError as e:
                rejected["variant_error"] += 1
                last_error = f"variant: {_first_line(e)}"
                continue
            views = (
                {n: output_view(model, n) for n in programs}
                if len(programs) > 1
                else {item.name: model}
            )
            if v.compress is None:  # the variant functions check themselves; this is the evaluator's word
                bad = _mismatch(model, views, inputs, wanted, numerical)
                if bad:
                    rejected["variant_mismatch"] += 1
                    last_error = f"after the variants: {bad}"
                    continue
        card_variant = variants.variant_card(model)
        truth_of = {n: verify.ground_truth(model, output=n) if len(programs) > 1 else None for n in programs}
        truth = truth_of[item.name] if len(programs) > 1 else verify.ground_truth(model)
        try:
            truth_w = (
                verify.ground_truth(model, method="weights", output=item.name)
                if len(programs) > 1
                else verify.ground_truth(model, method="weights")
            )
            weights_agree: bool | None = truth == truth_w
        except CircuitError:  # compressed residuals: only the annotation's (approximate) truth exists
            weights_agree = None
        files: dict[str, bytes] = {}
        with tempfile.TemporaryDirectory(prefix="rasp-suite-") as tmp:
            model.save(tmp)
            features.save_features(model, tmp, inputs=[p["clean"] for p in pairs], reference=compiled_model)
            for name in ("weights.safetensors", "model.json", "features.json", "features.safetensors",
                         "feature_activations.safetensors"):
                files[name] = (Path(tmp) / name).read_bytes()
        sources: dict[str, str] = {}
        for n, p in programs.items():
            try:
                sources[n] = to_source(p, strict=False)
            except Exception as e:  # noqa: BLE001 - a card without source is still a card
                sources[n] = f"# source unavailable: {type(e).__name__}\n"
        source = sources[item.name]
        files["program.py"] = source.encode()
        files.update(_circuit_files(truth))
        if len(programs) > 1:

            for n, t in truth_of.items():
                files[f"outputs/{n}.circuit.json"] = _dump(formats.to_json(t))
        dataset = {
            "format": DATASET_FORMAT,
            "version": 1,
            "output": truth.output,
            "output_encoding": views[item.name].config.output_encoding,
            "bos": plain_json(model.codec.bos),
            "pairs": _jsonable_pairs(pairs),
        }
        if len(programs) > 1:
            dataset["outputs"] = {
                n: {"output": truth_of[n].output, "output_encoding": views[n].config.output_encoding}
                for n in programs
            }
        files["dataset.json"] = _dump(dataset)
        cfg = model.config
        card = {
            "id": item.model_id,
            "index": item.index,
            "origin": item.origin,
            "name": item.name,
            "summary": summary,
            "attempt": attempt,
            "rejected_drafts": dict(sorted(rejected.items())),
            "program_source": source,
            "program_graph": model.program_source,
            "vocab": plain_json(list(vocab)),
            "max_seq_len": max_seq_len,
            "input_lengths": list(lengths),
            "distinct_tokens": distinct,
            "output": truth.output,
            "output_encoding": views[item.name].config.output_encoding,
            "sizes": {
                "n_layers": cfg.n_layers,
                "d_model": cfg.d_model,
                "n_heads": cfg.n_heads,
                "d_head": cfg.d_head,
                "d_mlp": cfg.d_mlp,
                "d_vocab": cfg.d_vocab,
                "d_vocab_out": cfg.d_vocab_out,
                "n_ctx": cfg.n_ctx,
                "n_params": model.n_params,
                "heads_per_layer": list(cfg.heads_per_layer),
                "mlp_width_per_layer": list(cfg.mlp_width_per_layer),
            },
            "op_kinds": dict(sorted(op_kinds(program).items())),
            "n_ops": sum(1 for e in rasp.topological_order(program) if e.children),
            "layers": _layers(model.annotation_json(), cfg.n_layers),
            "circuit": {
                "nodes": len(truth.node_names()),
                "edges": len(truth.edges),
                "model_nodes": len(truth.universe("node")),
                "model_edges": len(truth.universe("edge")),
                "weights_truth_agrees": weights_agree,
                "approximate": bool(getattr(truth, "approximate", False)),
            },
            "checked_inputs": len(inputs),
            "variants": v.to_json(),
            "variant": None
            if card_variant is None
            else {k: val for k, val in sorted(card_variant.items()) if k != "basis"}
            | ({"basis": "in model.json (annotation.variant.basis)"} if "basis" in card_variant else {}),
        }
        if len(programs) > 1:
            card["outputs"] = [
                {
                    "name": n,
                    "output": truth_of[n].output,
                    "output_encoding": views[n].config.output_encoding,
                    "program_source": sources[n],
                    "op_kinds": dict(sorted(op_kinds(p).items())),
                    "circuit": {"nodes": len(truth_of[n].node_names()), "edges": len(truth_of[n].edges)},
                    "circuit_file": f"outputs/{n}.circuit.json",
                }
                for n, p in programs.items()
            ]
        files["card.json"] = _dump(card)
        digests = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
        files[FILES_MANIFEST] = _dump(digests)
        return {"id": item.model_id, "files": files, "card": card}
    return {
        "id": item.model_id,
        "error": last_error or "no attempt succeeded",
        "rejected_drafts": dict(sorted(rejected.items())),
    }


def _jsonable_pairs(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: plain_json(v) for k, v in p.items()} for p in pairs]


def _build_safely(item: WorkItem) -> dict[str, Any]:
    """`build_item` that reports a crash as a failed item (one line) instead of killing the pool."""
    try:
        return build_item(item)
    except Exception as e:  # noqa: BLE001 - recorded in the index and the summary
        return {
            "id": item.model_id,
            "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
        }


# ----------------------------------------------------------------------------------------------- suite


def _write_model(out: Path, result: dict[str, Any]) -> None:
    models = out / "models"
    tmp = models / f"{result['id']}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, data in sorted(result["files"].items()):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    target = models / result["id"]
    if target.exists():  # a damaged earlier build (see `_complete`)
        shutil.rmtree(target)
    os.replace(tmp, target)


def _complete(out: Path, model_id: str) -> bool:
    """Whether a model directory holds exactly what its build wrote: every file the manifest lists, with
    the recorded sha256 (a truncated weights file, a deleted circuit or an emptied dataset is rebuilt)."""
    d = out / "models" / model_id
    try:
        listed = json.loads((d / FILES_MANIFEST).read_text(encoding="utf-8"))
        return isinstance(listed, dict) and bool(listed) and all(
            hashlib.sha256((d / name).read_bytes()).hexdigest() == digest for name, digest in listed.items()
        )
    except (OSError, ValueError):
        return False


def read_index(out: str | Path) -> dict[str, Any]:
    """The suite's index.json as data."""
    p = Path(out) / "index.json"
    if not p.is_file():
        raise SuiteError(f"{p} does not exist (not a finished suite directory)")
    return json.loads(p.read_text(encoding="utf-8"))


def _write_index(
    out: Path,
    items: list[WorkItem],
    n: int,
    seed: int,
    pairs: int,
    failed: dict[str, dict[str, Any]],
    variants: SuiteVariants,
) -> None:
    rows = []
    for it in items:
        if not _complete(out, it.model_id):
            continue
        card = json.loads((out / "models" / it.model_id / "card.json").read_text(encoding="utf-8"))
        rows.append(
            {
                "id": it.model_id,
                "dir": f"models/{it.model_id}",
                "origin": card["origin"],
                "name": card["name"],
                "output": card["output"],
                "output_encoding": card["output_encoding"],
                "n_layers": card["sizes"]["n_layers"],
                "d_model": card["sizes"]["d_model"],
                "n_params": card["sizes"]["n_params"],
                "n_ops": card["n_ops"],
                "circuit_nodes": card["circuit"]["nodes"],
                "circuit_edges": card["circuit"]["edges"],
                "model_edges": card["circuit"]["model_edges"],
                "weights_truth_agrees": card["circuit"]["weights_truth_agrees"],
                "outputs": [o["name"] for o in card.get("outputs", [])] or [card["name"]],
                "variant_steps": [st["kind"] for st in (card.get("variant") or {}).get("steps", [])],
                "approximate": bool((card.get("variant") or {}).get("approximate", False)),
                "accuracy": (card.get("variant") or {}).get("accuracy"),
            }
        )
    index = {
        "format": SUITE_FORMAT,
        "version": SUITE_VERSION,
        "seed": seed,
        "n": n,
        "pairs": pairs,
        "variants": variants.to_json(),
        "complete": len(rows) == n,
        "models": rows,
        "failed": [failed[k] for k in sorted(failed)],
        "files": [
            "weights.safetensors",
            "model.json",
            "program.py",
            "circuit.json",
            "circuit.acdc.json",
            "circuit.autocircuit.json",
            "circuit.eapig.json",
            "circuit.tl_hooks.json",
            "dataset.json",
            "features.json",
            "features.safetensors",
            "feature_activations.safetensors",
            "card.json",
        ]
        + (["outputs/<name>.circuit.json"] if variants.multi > 1 else []),
    }
    tmp = out / "index.json.tmp"
    tmp.write_bytes(_dump(index))
    os.replace(tmp, out / "index.json")


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    p = out / "suite.json"
    if p.is_file():
        try:
            old = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise SuiteError(f"{p} is damaged; remove it or use another --out") from None
        if old != settings:
            diff = ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v)
            raise SuiteError(f"{out} holds a suite made with other settings ({diff}); use another --out")
    elif out.exists() and any(p for p in out.iterdir() if p.name != "models"):
        raise SuiteError(f"{out} exists and is not a suite directory; use an empty or new --out")
    out.mkdir(parents=True, exist_ok=True)
    p.write_bytes(_dump(settings))


def generate_suite(
    n: int,
    seed: int,
    out: str | Path,
    *,
    workers: int | None = None,
    pairs: int = 32,
    ray_address: str | None = None,
    use_ray: bool = False,
    progress: bool = True,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    variants: SuiteVariants | None = None,
) -> SuiteSummary:
    """Build (or finish) the suite of `n` models for `seed` in `out`; see the module docstring."""
    t0 = time.perf_counter()
    out = Path(out)
    variants = variants or SuiteVariants()
    items = plan(n, seed, pairs, variants)
    settings = {"format": SUITE_FORMAT, "version": SUITE_VERSION, "seed": seed, "n": n, "pairs": pairs}
    if variants.any:  # plain suites keep the settings file they always had
        settings["variants"] = variants.to_json()
    _check_settings(out, settings)
    models = out / "models"
    models.mkdir(exist_ok=True)
    for leftover in models.glob("*.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    todo = [it for it in items if not _complete(out, it.model_id)]
    workers = max(1, workers if workers is not None else available_cores())
    summary = SuiteSummary(
        out=out, n=n, seed=seed, skipped=len(items) - len(todo), workers=1 if use_ray else workers
    )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), initial=summary.skipped, desc="suite", unit="model", file=sys.stderr)
    failed: dict[str, dict[str, Any]] = {}
    work = iter_work(_build_safely, todo, workers=workers, use_ray=use_ray, ray_address=ray_address)
    runner = (result for _, result in work)
    try:
        for result in runner:
            if "files" in result:
                _write_model(out, result)
                summary.built += 1
            else:
                failed[result["id"]] = {"id": result["id"], "error": result["error"]}
            if on_result is not None:
                on_result(result)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(failed=len(failed), refresh=False)
    finally:
        if bar is not None:
            bar.close()
    _write_index(out, items, n, seed, pairs, failed, variants)
    for it in items:
        if _complete(out, it.model_id):
            card = json.loads((models / it.model_id / "card.json").read_text(encoding="utf-8"))
            summary.layers.append(card["sizes"]["n_layers"])
            summary.origins[card["origin"]] += 1
            summary.rejected_drafts += sum(card["rejected_drafts"].values())
    summary.failed = [failed[k] for k in sorted(failed)]
    summary.seconds = time.perf_counter() - t0
    return summary
