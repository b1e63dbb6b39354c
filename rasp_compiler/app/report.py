"""The demo: compile library programs, check them, run a discovery baseline, score it, write a report.

`run_demo(out)` is what `rasp-compiler demo` does. It writes `out/report.md` and `out/report.html`
(pictures embedded, so the HTML file stands alone) with the PNGs beside them, and the compiled
models under `out/models/`.

The discovery baseline is ACDC with resample ablation (`verify.discovery.acdc`, on the C++ engine),
scored against two truths: the structural circuit the compiler records (`verify.ground_truth`) and
the ablation-aware one (`verify.causal.necessary_edges`: the edges whose single ablation changes an
output on the dataset). The same is run on a rotated and on a distractor-laden copy of the model
(`rasp_compiler.transforms.variants`), one line each.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import itertools
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import verify
from rasp_compiler import rasp
from rasp_compiler.app import pictures as pics
from rasp_compiler.compiler import compiling
from rasp_compiler.model.outputs import outputs_equal
from rasp_compiler.rasp.lib import LIBRARY
from rasp_compiler.rasp.source import to_source
from rasp_compiler.transforms import variants
from verify.draw import draw_circuit

__all__ = [
    "DEFAULT_FOCUS",
    "DEFAULT_PROGRAMS",
    "DemoResult",
    "ProgramCheck",
    "Discovery",
    "discover",
    "run_demo",
]

DEFAULT_PROGRAMS = ("reverse", "sort", "hist", "frac_prevs", "most_frequent", "is_palindrome")
DEFAULT_FOCUS = "sort"
MAX_EXHAUSTIVE = 3000  # check every input when there are at most this many, else a random sample


@dataclasses.dataclass
class ProgramCheck:
    """One compiled library program and how it fared against the evaluator."""

    name: str
    n_layers: int
    d_model: int
    n_params: int
    heads: int
    compile_seconds: float
    inputs_checked: int
    exhaustive: bool
    mismatches: int
    truth_components: int
    truth_edges: int
    model_edges: int
    weights_truth_agrees: bool
    example: str

    @property
    def ok(self) -> bool:
        return self.mismatches == 0 and self.weights_truth_agrees


@dataclasses.dataclass
class DemoResult:
    """What the demo did and where it wrote it."""

    out: Path
    checks: list[ProgramCheck]
    focus: str
    method: str
    scores: dict[str, Any]
    pictures: dict[str, Path]
    seconds: float
    variants: list[Discovery] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def summary(self) -> str:
        lines = [
            f"demo: {len(self.checks)} programs compiled and checked against the evaluator "
            f"({sum(c.inputs_checked for c in self.checks)} inputs, "
            f"{sum(c.mismatches for c in self.checks)} mismatches)"
        ]
        for c in self.checks:
            lines.append(
                f"  {c.name:<15} {c.n_layers} layers, d_model {c.d_model:>3}: "
                f"{'ok' if c.ok else 'FAILED'} on {c.inputs_checked} inputs"
                f"{' (all)' if c.exhaustive else ''}"
            )
        for truth, r in self.scores.items():
            lines.append(
                f"  {self.method} on {self.focus} vs {truth} ({r.tp + r.fn} edges): precision "
                f"{r.precision:.2f}, recall {r.recall:.2f}, F1 {r.f1:.2f}, ROC-AUC {r.roc_auc:.2f}"
            )
        for d in self.variants[1:]:
            lines.append(
                f"  {self.method} on {self.focus}, {d.label}: ROC-AUC {d.structural.roc_auc:.2f} "
                f"vs structural" + (f", {d.ablation.roc_auc:.2f} vs ablation-aware" if d.ablation else "")
            )
        lines.append(f"report: {self.out / 'report.html'} (and report.md); {self.seconds:.1f} s")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- checks


def _all_inputs(
    vocab: Sequence[Any], max_seq_len: int, distinct: bool, rng: random.Random
) -> tuple[list[list[Any]], bool]:
    vocab = list(vocab)
    total = sum(len(vocab) ** k for k in range(1, max_seq_len + 1))
    if total <= MAX_EXHAUSTIVE:
        xs = [list(p) for k in range(1, max_seq_len + 1) for p in itertools.product(vocab, repeat=k)]
        if distinct:
            xs = [x for x in xs if len(set(x)) == len(x)]
        return xs, True
    xs = []
    for _ in range(MAX_EXHAUSTIVE):
        k = rng.randint(1, min(max_seq_len, len(vocab)) if distinct else max_seq_len)
        xs.append(rng.sample(vocab, k) if distinct else [rng.choice(vocab) for _ in range(k)])
    return xs, False


def check_program(name: str, out_dir: Path, rng: random.Random) -> tuple[ProgramCheck, Any, Any, Any]:
    """Compile library program `name`, save it, and compare it with the evaluator on (nearly) all inputs.

    Returns (check, model, ground-truth circuit, program).
    """

    if name not in LIBRARY:
        raise ValueError(
            f"demo: {name!r} is not a library program (choose from {', '.join(sorted(LIBRARY))})"
        )
    entry = LIBRARY[name]
    rasp.restart_ids()  # default labels (map_16, ...) then do not depend on what was built before
    program = entry.builder()
    t0 = time.perf_counter()
    model = compiling.compile_rasp_to_model(program, entry.vocab, entry.max_seq_len)
    seconds = time.perf_counter() - t0
    model.save(out_dir / "models" / name)
    xs, exhaustive = _all_inputs(model.codec.vocab, entry.max_seq_len, entry.distinct_tokens, rng)
    expected, kept = [], []
    for x in xs:
        try:
            expected.append(rasp.evaluate(program, x))
            kept.append(x)
        except rasp.RASPError:
            continue  # the program is undefined there (e.g. a categorical aggregate over differing values)
    got = model.apply_batch([[model.codec.bos, *x] for x in kept])
    numerical = model.config.output_encoding == "numerical"
    bad = sum(not outputs_equal(e, g[1:], numerical) for e, g in zip(expected, got, strict=True))
    truth = verify.ground_truth(model)
    ex = entry.examples[0]
    shown = " ".join(_show(v) for v in model.apply([model.codec.bos, *ex]).decoded[1:])
    example = f"{' '.join(map(str, ex))} -> {shown}"
    check = ProgramCheck(
        name,
        model.n_layers,
        model.d_model,
        model.n_params,
        sum(model.config.heads_per_layer),
        seconds,
        len(kept),
        exhaustive,
        bad,
        len(truth.node_names()),
        len(truth.edges),
        len(truth.universe("edge")),
        truth == verify.ground_truth(model, method="weights"),
        example,
    )
    return check, model, truth, program


def _show(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------------------------- discovery


@dataclasses.dataclass
class Discovery:
    """ACDC on one model, scored against the structural truth and the ablation-aware truth."""

    label: str  # "plain", "rotated", ...
    result: Any  # verify.discovery.DiscoveryResult
    structural: Any  # verify.ScoreResult against verify.ground_truth
    ablation: Any | None  # ... against verify.causal.necessary_edges (None: no edge is needed alone)
    necessary: Any | None  # verify.causal.NecessaryEdges
    model_edges: int


ACDC_THRESHOLD = 1e-3  # the circuit reported (F1): edges ACDC keeps at this threshold; the ROC uses the sweep


def discover(model: Any, program: Any, label: str, *, n: int, seed: int, distinct: bool) -> Discovery:
    """ACDC (resample ablation, threshold sweep) on `model`, scored against both truths."""
    from verify import causal, discovery

    data = causal.make_dataset(model, program, n=n, seed=seed, distinct=distinct)
    result = discovery.acdc(model, data, "resample")
    truth = verify.ground_truth(model)
    cut = ACDC_THRESHOLD * 0.999  # verify.score keeps scores above its threshold
    structural = verify.score(result.scores, truth, "edge", threshold=cut)
    try:
        necessary = causal.necessary_edges(model, data, "resample")
    except (causal.CausalError, ValueError):  # e.g. a variant the causal check cannot read
        necessary = None
    ablation = None
    if necessary is not None:
        ablation = verify.score(result.scores, necessary.circuit, "edge", threshold=cut)
    return Discovery(label, result, structural, ablation, necessary, len(truth.universe("edge")))


def _img_md(path: Path, alt: str) -> str:
    return f"![{alt}]({path.name})"


def _img_html(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>'
        f"{html.escape(alt)}</figcaption></figure>"
    )


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table's lines (and the blank line that ends it)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _html_table(head: Sequence[str], rows: Sequence[Sequence[str]], row_sep: str = "") -> str:
    """The same table in HTML, cells escaped; `row_sep` goes between the header row, each row and the end."""
    parts = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    parts += ["<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in r) + "</tr>" for r in rows]
    return row_sep.join(parts) + row_sep + "</table>"


def _write_reports(
    out: Path,
    checks: list[ProgramCheck],
    focus: str,
    source: str,
    table: str,
    method_text: str,
    scores: dict[str, Any],
    pictures: dict[str, tuple[Path, str]],
    notes: list[str],
    seconds: float,
    variant_runs: Sequence[Discovery] = (),
) -> None:
    md: list[str] = []
    ht: list[str] = []
    md.append("# rasp-compiler demo report\n")
    ht.append("<h1>rasp-compiler demo report</h1>")
    intro = (
        f"{len(checks)} library programs were compiled into transformers and each compiled model was run "
        f"against the RASP evaluator. Then a circuit-discovery baseline was run on `{focus}` and what it "
        f"found "
        f"was scored against the ground-truth circuit the compiler built."
    )
    md.append(intro + "\n")
    ht.append(f"<p>{html.escape(intro)}</p>")

    head = [
        "program",
        "layers",
        "d_model",
        "heads",
        "params",
        "inputs checked",
        "mismatches",
        "truth: annotation = weights",
        "circuit (components / edges of model)",
        "example",
    ]
    rows = [
        [
            c.name,
            str(c.n_layers),
            str(c.d_model),
            str(c.heads),
            str(c.n_params),
            f"{c.inputs_checked}{' (all)' if c.exhaustive else ''}",
            str(c.mismatches),
            "yes" if c.weights_truth_agrees else "NO",
            f"{c.truth_components} / {c.truth_edges} of {c.model_edges}",
            c.example,
        ]
        for c in checks
    ]
    md.append("## Compiled programs\n")
    md += _md_table(head, rows)
    ht.append("<h2>Compiled programs</h2>" + _html_table(head, rows, row_sep="\n"))

    md.append(f"## The circuit of `{focus}`\n")
    ht.append(f"<h2>The circuit of <code>{html.escape(focus)}</code></h2>")
    md.append("Program:\n\n```python\n" + source.rstrip() + "\n```\n")
    ht.append(f"<p>Program:</p><pre>{html.escape(source)}</pre>")
    md.append(
        "Ground truth (component, RASP op, what it reads on each input, what it writes):\n\n```\n"
        + table
        + "\n```\n"
    )
    ht.append(
        f"<p>Ground truth (component, RASP op, what it reads on each input, what it writes):</p>"
        f"<pre>{html.escape(table)}</pre>"
    )
    for key in ("circuit", "residual", "attention"):
        if key in pictures:
            path, caption = pictures[key]
            md.append(_img_md(path, caption) + "\n\n*" + caption + "*\n")
            ht.append(_img_html(path, caption))

    md.append("## Discovery baseline scored against the truth\n")
    ht.append("<h2>Discovery baseline scored against the truth</h2>")
    md.append(method_text + "\n")
    ht.append(f"<p>{html.escape(method_text)}</p>")
    shead = ["edges scored against", "precision", "recall", "F1", "ROC-AUC", "TP", "FP", "FN"]
    srows = [
        [
            lvl,
            f"{r.precision:.3f}",
            f"{r.recall:.3f}",
            f"{r.f1:.3f}",
            f"{r.roc_auc:.3f}",
            str(r.tp),
            str(r.fp),
            str(r.fn),
        ]
        for lvl, r in scores.items()
    ]
    md += _md_table(shead, srows)
    ht.append(_html_table(shead, srows))
    if "roc" in pictures:
        path, caption = pictures["roc"]
        md.append(_img_md(path, caption) + "\n\n*" + caption + "*\n")
        ht.append(_img_html(path, caption))
    for note in notes:
        md.append(f"- {note}")
        ht.append(f"<p>{html.escape(note)}</p>")
    if len(variant_runs) > 1:

        def auc(r: Any) -> str:
            return "-" if r is None else f"{r.roc_auc:.3f}"

        def f1(r: Any) -> str:
            return "-" if r is None else f"{r.f1:.3f}"

        vhead = [
            "model",
            "edges",
            "ROC-AUC (structural)",
            "F1 (structural)",
            "ROC-AUC (ablation-aware)",
            "F1 (ablation-aware)",
            "seconds",
        ]
        vrows = [
            [
                d.label,
                str(d.model_edges),
                auc(d.structural),
                f1(d.structural),
                auc(d.ablation),
                f1(d.ablation),
                f"{d.result.runtime_s:.2f}",
            ]
            for d in variant_runs
        ]
        text = (
            f"The same ACDC run on harder copies of `{focus}` that compute the same function: a random "
            "rotation of the residual basis, and distractor heads and neurons (writing where nothing "
            "reads, or cancelling in pairs) that are outside the truth."
        )
        md.append("\n### Variants\n\n" + text + "\n")
        md += _md_table(vhead, vrows)
        ht.append(f"<h3>Variants</h3><p>{html.escape(text)}</p>" + _html_table(vhead, vrows))
    footer = (
        f"Made by `rasp-compiler demo` in {seconds:.1f} s. Models: `{out / 'models'}`; "
        f"try `rasp-compiler circuit {out / 'models' / focus}`."
    )
    md.append("\n" + footer + "\n")
    ht.append(f"<p><small>{html.escape(footer)}</small></p>")
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "font-size:13px;text-align:left}pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}"
        "img{max-width:100%;border:1px solid #eee}figure{margin:1.5em 0}figcaption{color:#555;font-size:13px}"
    )
    (out / "report.html").write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>rasp-compiler demo report</title>"
        f"<style>{style}</style></head><body>" + "\n".join(ht) + "</body></html>\n",
        encoding="utf-8",
    )


def run_demo(
    out: str | Path = "out/demo",
    *,
    programs: Sequence[str] | None = None,
    focus: str | None = None,
    progress: bool = True,
    n_pairs: int = 64,
    seed: int = 0,
) -> DemoResult:
    """Compile, check, discover, score, draw and write the report; see the module docstring."""

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(programs) if programs else list(DEFAULT_PROGRAMS)
    focus = focus or (DEFAULT_FOCUS if DEFAULT_FOCUS in names else names[0])
    if focus not in names:
        names.append(focus)
    rng = random.Random(f"demo:{seed}")

    def say(msg: str) -> None:
        if progress:
            print(f"[demo] {msg}", file=sys.stderr, flush=True)

    checks: list[ProgramCheck] = []
    focus_model = focus_truth = focus_program = None
    for name in names:
        check, model, truth, program = check_program(name, out, rng)
        checks.append(check)
        say(
            f"{name}: {check.n_layers} layers, d_model {check.d_model}; "
            f"{'agrees' if check.mismatches == 0 else f'{check.mismatches} MISMATCHES'} on "
            f"{check.inputs_checked} inputs"
        )
        if name == focus:
            focus_model, focus_truth, focus_program = model, truth, program
    assert focus_model is not None and focus_truth is not None

    entry = LIBRARY[focus]
    program = focus_program
    say(f"ACDC (resample ablation) on {focus}: {n_pairs} clean/corrupted pairs, thresholds sweep")
    plain = discover(focus_model, program, "plain", n=n_pairs, seed=seed, distinct=entry.distinct_tokens)
    results = {"structural truth": plain.structural}
    if plain.ablation is not None:
        results["ablation-aware truth"] = plain.ablation
    variant_runs = [plain]
    variant_runs += _variant_discoveries(focus_model, program, n_pairs, seed, entry.distinct_tokens, say)
    backend_text = "C++ engine" if plain.result.backend == "engine" else f"{plain.result.backend} backend"
    metric = "mean squared error" if focus_model.config.output_encoding == "numerical" else "KL divergence"
    method_text = (
        f"Method: ACDC (verify.discovery.acdc) with resample ablation on {n_pairs} clean/corrupted input "
        f"pairs of length {entry.max_seq_len}. Starting from all {plain.model_edges} edges, it visits "
        f"readers from the output backwards and removes each input edge whose ablation raises the "
        f"{metric} of the output by less than a threshold; an edge's score is the largest threshold "
        f"(of 1e-4 ... 1) at which it survives, which gives the ROC; the circuit scored for F1 is the "
        f"one kept at {ACDC_THRESHOLD:g} ({plain.result.runtime_s:.2f} s on the {backend_text}, "
        f"{plain.result.n_forward} forward passes). It is scored against two truths: the structural "
        f"one the compiler records, and the ablation-aware one (verify.causal.necessary_edges)."
    )
    notes = []
    nec = plain.necessary
    if nec is not None:
        only_s = [e for e in nec.structural if e not in set(nec.edges)]
        only_a = [e for e in nec.edges if e not in set(nec.structural)]
        notes.append(
            f"Why the truths differ: the structural truth ({len(nec.structural)} edges) holds every edge "
            f"that carries a variable the output is computed from, while the ablation-aware truth "
            f"({len(nec.edges)} edges) holds only the edges whose single resample ablation changes some "
            f"output on this dataset. An edge is invisible to one-at-a-time ablation when the variable "
            f"it carries is the same on the clean and the corrupted input (the `one` direction, BOS, "
            f"positions of equal-length inputs) or matters only together with another edge"
            + (f"; here {len(only_s)} structural edges are not needed alone" if only_s else "")
            + (f" and {len(only_a)} edges outside it matter through leaks" if only_a else "")
            + "."
        )
        for name in only_s[:4]:
            notes.append(f"`{name}`: {nec.explanations.get(name, 'not needed alone')}")
    missed = plain.structural.false_negatives
    if missed:
        notes.append(
            f"Structural edges ACDC dropped at {ACDC_THRESHOLD:g} ({len(missed)}): {', '.join(missed[:10])}"
            f"{' ...' if len(missed) > 10 else ''}."
        )
    if plain.structural.false_positives:
        notes.append(
            f"Edges it kept outside the structural truth: {', '.join(plain.structural.false_positives[:10])}."
        )

    say("drawing pictures")
    pictures: dict[str, tuple[Path, str]] = {}
    circuit_png = draw_circuit(
        focus_truth,
        out / "circuit.png",
        heads_per_layer=focus_model.config.heads_per_layer,
        title=f"ground-truth circuit of {focus} (grey: components outside it)",
    )
    pictures["circuit"] = (
        Path(circuit_png),
        f"Ground-truth circuit of {focus}: components by layer, edges "
        f"labelled with the RASP variables they carry",
    )
    resid_png = pics.residual_stream(
        focus_model,
        out / "residual_stream.png",
        highlight=focus_truth.node_names(),
        title=f"{focus}: residual directions read and written by each component",
    )
    pictures["residual"] = (
        resid_png,
        "Residual stream: rows are labelled directions, columns components; "
        "black = writes, dots = reads (q blue, k green, v red, MLP/output purple)",
    )
    heads = [n for n in focus_truth.node_names() if ".H" in n]
    if heads:
        head = heads[-1]
        layer, h = (int(x) for x in head[1:].split(".H"))
        example = entry.examples[-1]
        att_png = pics.attention_pattern(
            focus_model,
            example,
            layer,
            h,
            out / "attention.png",
            title=f"{focus}: attention of {head} on {' '.join(map(str, example))}",
        )
        pictures["attention"] = (
            att_png,
            f"Attention pattern of {head} (implements "
            f"{', '.join(sorted(focus_truth.nodes[head])) or '?'}) on one input",
        )
    roc_png = pics.roc_curves(
        [(f"ACDC vs {lvl}", r.fpr, r.tpr, r.roc_auc) for lvl, r in results.items()],
        out / "roc.png",
        title=f"{focus}: ACDC edge scores vs the two truths",
    )
    pictures["roc"] = (
        roc_png,
        "ROC of ACDC's edge scores against the structural truth and the ablation-aware truth",
    )
    try:
        source = to_source(program, strict=False)
    except Exception:  # noqa: BLE001 - the report still has the graph description
        source = focus_model.program_source
    seconds = time.perf_counter() - t0
    _write_reports(
        out,
        checks,
        focus,
        source,
        focus_truth.describe(),
        method_text,
        results,
        pictures,
        notes,
        seconds,
        variant_runs,
    )
    return DemoResult(
        out,
        checks,
        focus,
        "ACDC (resample)",
        results,
        {k: v[0] for k, v in pictures.items()},
        seconds,
        variant_runs,
    )


def _variant_discoveries(
    model: Any, program: Any, n: int, seed: int, distinct: bool, say: Any
) -> list[Discovery]:
    """ACDC on a rotated and on a noisy copy of the focus model (same function, harder truth)."""

    runs = []
    inputs = None
    builders = {
        "rotated": lambda: variants.rotate(model, seed, inputs=inputs),
        "distractors (2 heads, 4 neurons, 1 cancelling pair)": lambda: variants.add_noise(
            model, heads=2, neurons=4, cancel_heads=1, cancel_neurons=1, seed=seed, inputs=inputs
        ),
    }
    if distinct:
        from verify import causal

        data = causal.make_dataset(model, program, n=64, seed=seed + 1, distinct=True)
        inputs = [[model.codec.bos, *x] for x in data.clean + data.corrupt]
    for label, build in builders.items():
        try:
            v = build()
            runs.append(discover(v, program, label, n=n, seed=seed, distinct=distinct))
        except Exception as e:  # noqa: BLE001 - a variant line is optional; say why it is missing
            say(f"variant {label}: skipped ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            continue
        say(f"variant {label}: ROC-AUC {runs[-1].structural.roc_auc:.3f} vs the structural truth")
    return runs
