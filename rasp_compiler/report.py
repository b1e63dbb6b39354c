"""The demo: compile library programs, check them, run a discovery baseline, score it, write a report.

`run_demo(out)` is what `rasp-compiler demo` does. It writes `out/report.md` and `out/report.html`
(pictures embedded, so the HTML file stands alone) with the PNGs beside them, and the compiled
models under `out/models/`.

The discovery baseline is edge-level activation patching: every edge of the model is patched alone
from a corrupted input (resample ablation) with the C++ engine, and its effect on the output (KL
divergence, or squared error for numerical outputs) is its score. It stands in until
`verify.discovery` offers its baselines; the scoring against the truth is the same for any method.
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

import numpy as np

__all__ = [
    "DEFAULT_FOCUS",
    "DEFAULT_PROGRAMS",
    "DemoResult",
    "ProgramCheck",
    "edge_patching_scores",
    "run_demo",
]

DEFAULT_PROGRAMS = ("reverse", "sort", "hist", "frac_prevs", "most_frequent", "is_palindrome")
DEFAULT_FOCUS = "sort"
MAX_EXHAUSTIVE = 3000  # check every input when there are at most this many, else a random sample
_ATOL = 1e-4


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
        for level, r in self.scores.items():
            lines.append(
                f"  {self.method} on {self.focus} ({level}s): precision {r.precision:.2f}, "
                f"recall {r.recall:.2f}, F1 {r.f1:.2f}, ROC-AUC {r.roc_auc:.2f}"
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


def _agrees(expected: Sequence[Any], got: Sequence[Any], numerical: bool) -> bool:
    if len(expected) != len(got):
        return False
    for e, g in zip(expected, got, strict=True):
        if numerical and e is not None and g is not None:
            if abs(float(e) - float(g)) > _ATOL + _ATOL * abs(float(e)):
                return False
        elif e != g:
            return False
    return True


def check_program(name: str, out_dir: Path, rng: random.Random) -> tuple[ProgramCheck, Any, Any, Any]:
    """Compile library program `name`, save it, and compare it with the evaluator on (nearly) all inputs.

    Returns (check, model, ground-truth circuit, program).
    """
    import verify
    from rasp_compiler import compiling, rasp
    from rasp_compiler.lib import LIBRARY
    from rasp_compiler.suite import restart_ids

    if name not in LIBRARY:
        raise ValueError(
            f"demo: {name!r} is not a library program (choose from {', '.join(sorted(LIBRARY))})"
        )
    entry = LIBRARY[name]
    restart_ids()  # default labels (map_16, ...) then do not depend on what was built before
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
    bad = sum(not _agrees(e, g[1:], numerical) for e, g in zip(expected, got, strict=True))
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


def _pairs(
    model: Any, program: Any, vocab: Sequence[Any], length: int, n: int, distinct: bool, rng: random.Random
) -> tuple[np.ndarray, np.ndarray]:
    """`n` clean and corrupted inputs of one length (id arrays), redrawn where the program is undefined."""
    from rasp_compiler import rasp

    vocab = list(vocab)
    clean, corrupt = [], []
    tries = 0
    while len(clean) < n and tries < 50 * n:
        tries += 1
        a = rng.sample(vocab, length) if distinct else [rng.choice(vocab) for _ in range(length)]
        b = rng.sample(vocab, length) if distinct else [rng.choice(vocab) for _ in range(length)]
        try:
            rasp.evaluate(program, a)
            rasp.evaluate(program, b)
        except rasp.RASPError:
            continue
        clean.append(model.encode([model.codec.bos, *a]))
        corrupt.append(model.encode([model.codec.bos, *b]))
    return np.array(clean, dtype=np.int64), np.array(corrupt, dtype=np.int64)


def edge_patching_scores(
    model: Any, clean: np.ndarray, corrupted: np.ndarray, *, backend: str = "auto"
) -> tuple[dict[str, float], str]:
    """Score of every edge: the output change when that edge alone carries the corrupted run's value.

    KL(clean || patched) of the output distribution for categorical outputs, mean squared error for
    numerical ones, averaged over non-BOS positions. `backend` "engine" uses the C++ engine's sweep
    (all edges in one call), "numpy" the plain per-edge reference below, "auto" the engine when it
    works. Returns (scores keyed by edge name such as `"L0.H0->L1.MLP<in>"`, backend used).
    """
    from verify.circuit import legal_edges

    edges = legal_edges(model.n_layers, model.n_heads)  # padding heads too: a method sees the whole model
    if backend in ("auto", "engine"):
        try:
            from rasp_compiler.engine import Engine

            metric = "mse" if model.config.output_encoding == "numerical" else "kl"
            values = Engine(model, threads=1).sweep(
                clean, corrupted, [[(e.writer, e.reader, e.input)] for e in edges], metric=metric
            )
            return {str(e): float(np.nan_to_num(v)) for e, v in zip(edges, values, strict=True)}, "engine"
        except Exception:
            if backend == "engine":
                raise
    source = _patched_forward(model, corrupted, None, None)[1]
    base = _patched_forward(model, clean, None, None)[0]
    scores = {}
    for e in edges:
        out = _patched_forward(model, clean, source, (e.writer, e.reader, e.input))[0]
        scores[str(e)] = _divergence(base, out, model.config.output_encoding == "numerical")
    return scores, "numpy"


def _divergence(base: np.ndarray, out: np.ndarray, numerical: bool) -> float:
    base, out = base[:, 1:].astype(np.float64), out[:, 1:].astype(np.float64)  # BOS is not an answer
    if numerical:
        return float(np.mean((base[..., 0] - out[..., 0]) ** 2))

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    lp, lq = log_softmax(base), log_softmax(out)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))


def _patched_forward(
    model: Any, ids: np.ndarray, source: dict[str, np.ndarray] | None, edge: tuple[str, str, str] | None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Forward pass in which each reader input sums the component outputs upstream of it; with `edge`
    `(writer, reader, input)`, that one input sees the writer's `source` output instead (ACDC semantics).
    Returns (output logits, component outputs)."""
    w, cfg = model.weights, model.config
    n_batch, n_pos = ids.shape
    outs: dict[str, np.ndarray] = {
        "embed": w["W_E"][ids],
        "pos_embed": np.broadcast_to(w["W_pos"][:n_pos], (n_batch, n_pos, cfg.d_model)),
    }
    bias = np.zeros((n_batch, n_pos, cfg.d_model), dtype=np.float32)
    pad = (ids == cfg.pad_token_id) if cfg.pad_token_id is not None else None

    def read(reader: str, inp: str) -> np.ndarray:
        x = sum(outs.values()) + bias
        if edge is not None and source is not None and edge[1:] == (reader, inp) and edge[0] in outs:
            x = x + source[edge[0]] - outs[edge[0]]
        return x

    for layer in range(cfg.n_layers):
        a = f"blocks.{layer}.attn."
        new = {}
        for h in range(cfg.n_heads):
            name = f"L{layer}.H{h}"
            q = read(name, "q") @ w[a + "W_Q"][h] + w[a + "b_Q"][h]
            k = read(name, "k") @ w[a + "W_K"][h] + w[a + "b_K"][h]
            v = read(name, "v") @ w[a + "W_V"][h] + w[a + "b_V"][h]
            s = np.einsum("bqd,bkd->bqk", q, k)
            if pad is not None:
                s = np.where(pad[:, None, :], -np.inf, s)
            s = s - s.max(axis=-1, keepdims=True)
            p = np.exp(s)
            p = p / p.sum(axis=-1, keepdims=True)
            new[name] = (p @ v) @ w[a + "W_O"][h]
        outs.update(new)
        bias = bias + w[a + "b_O"]
        m = f"blocks.{layer}.mlp."
        name = f"L{layer}.MLP"
        hidden = np.maximum(read(name, "in") @ w[m + "W_in"] + w[m + "b_in"], 0.0)
        outs[name] = hidden @ w[m + "W_out"] + w[m + "b_out"]
    return read("output", "in") @ w["W_U"] + w["b_U"], outs


# ----------------------------------------------------------------------------------------------- report


def _img_md(path: Path, alt: str) -> str:
    return f"![{alt}]({path.name})"


def _img_html(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>'
        f"{html.escape(alt)}</figcaption></figure>"
    )


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
    md.append("| " + " | ".join(head) + " |")
    md.append("|" + "---|" * len(head))
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md.append("")
    ht.append(
        "<h2>Compiled programs</h2><table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr>"
    )
    ht += ["<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in r) + "</tr>" for r in rows]
    ht.append("</table>")

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
    shead = ["level", "precision", "recall", "F1", "ROC-AUC", "TP", "FP", "FN"]
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
    md.append("| " + " | ".join(shead) + " |")
    md.append("|" + "---|" * len(shead))
    md += ["| " + " | ".join(r) + " |" for r in srows]
    md.append("")
    ht.append(
        "<table><tr>"
        + "".join(f"<th>{h}</th>" for h in shead)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{x}</td>" for x in r) + "</tr>" for r in srows)
        + "</table>"
    )
    if "roc" in pictures:
        path, caption = pictures["roc"]
        md.append(_img_md(path, caption) + "\n\n*" + caption + "*\n")
        ht.append(_img_html(path, caption))
    for note in notes:
        md.append(f"- {note}")
        ht.append(f"<p>{html.escape(note)}</p>")
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
    import verify
    from rasp_compiler import pictures as pics
    from rasp_compiler.lib import LIBRARY
    from rasp_compiler.source import to_source

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
    clean, corrupted = _pairs(
        focus_model, program, focus_model.codec.vocab, entry.max_seq_len, n_pairs, entry.distinct_tokens, rng
    )
    say(f"activation patching on {focus}: {len(clean)} clean/corrupted pairs, every edge alone")
    scores_by_edge, backend = edge_patching_scores(focus_model, clean, corrupted)
    threshold = 1e-3
    results = {
        "node": verify.score(scores_by_edge, focus_truth, "node", threshold=threshold),
        "edge": verify.score(scores_by_edge, focus_truth, "edge", threshold=threshold),
    }
    backend_text = "C++ engine" if backend == "engine" else "numpy reference (the C++ engine was unavailable)"
    metric = "mean squared error" if focus_model.config.output_encoding == "numerical" else "KL divergence"
    method_text = (
        f"Method: edge activation patching (resample ablation). For each of the model's "
        f"{len(scores_by_edge)} edges, only that edge carried its value from a corrupted input while "
        f"everything else ran on the clean input ({len(clean)} pairs of length {entry.max_seq_len}); "
        f"the edge's score is the {metric} of the output against the clean run (computed with the "
        f"{backend_text}). Edges scoring above "
        f"{threshold:g} form the discovered circuit; the ROC ranks all edges by score."
    )
    missed = results["edge"].false_negatives
    notes = []
    if missed:
        notes.append(
            f"Edges the baseline missed ({len(missed)}): {', '.join(missed[:10])}"
            f"{' ...' if len(missed) > 10 else ''}. Patching one edge at a time from a corrupted input "
            f"cannot see an edge whose variable is the same on both inputs (the `one` direction, the BOS "
            f"token, positions) or that only matters together with another edge: the structural truth "
            f"says what carries information, not what a given ablation detects."
        )
    if results["edge"].false_positives:
        notes.append(
            f"Edges it claimed outside the truth: {', '.join(results['edge'].false_positives[:10])}."
        )

    say("drawing pictures")
    pictures: dict[str, tuple[Path, str]] = {}
    circuit_png = focus_truth.draw(
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
        [(f"activation patching ({lvl})", r.fpr, r.tpr, r.roc_auc) for lvl, r in results.items()],
        out / "roc.png",
        title=f"{focus}: discovered vs ground truth",
    )
    pictures["roc"] = (roc_png, "ROC of the baseline's edge and node scores against the ground truth")
    try:
        source = to_source(program, strict=False)
    except Exception:  # noqa: BLE001 - the report still has the graph description
        source = focus_model.program_source
    seconds = time.perf_counter() - t0
    _write_reports(
        out, checks, focus, source, focus_truth.describe(), method_text, results, pictures, notes, seconds
    )
    return DemoResult(
        out,
        checks,
        focus,
        "edge activation patching",
        results,
        {k: v[0] for k, v in pictures.items()},
        seconds,
    )
