"""Fuzz a circuit-discovery tool: run it on many random compiled programs whose circuits are known.

`fuzz_tool(tool, programs=100, seed=0)` samples programs (`rasp_compiler.testing.generate`), compiles each,
builds a dataset of clean/corrupted inputs, calls `tool(model, dataset)` and scores the answer (a
`verify.Circuit`, a set of edges, a dict of edge or node scores, or a `discovery.DiscoveryResult`)
against the truth:

* `truth="structural"`: `verify.ground_truth(model)`, the edges that carry information to the output;
* `truth="ablation"`: `verify.causal.necessary_edges(model, dataset, ablation)`, the edges whose single
  ablation changes some output on this dataset (what an ablation-based method can see at all).

Per program the answer gets precision/recall/F1 of its predicted set and the ROC-AUC of its ranking;
`metric` picks which one decides pass/fail (`"auto"`: ROC-AUC for scored answers, F1 for sets). The
summary aggregates them (mean, worst, a table per op kind) and shrinks the worst failures to minimal
programs, printed as RASP source that rebuilds them.

Command line::

    rasp-compiler fuzz tool --tool acdc --programs 50 --seed 0 --truth ablation
    rasp-compiler fuzz tool --tool my_tools.py:discover --programs 200 --seed 1
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rasp_compiler import rasp
from rasp_compiler.compiler.compiling import compile_rasp_to_model
from rasp_compiler.model.outputs import outputs_equal
from rasp_compiler.rasp.loading import ObjectLoadError, load_object
from rasp_compiler.rasp.source import to_source
from rasp_compiler.testing import generate
from rasp_compiler.testing.fuzz import program_for
from rasp_compiler.testing.runner import map_work
from rasp_compiler.testing.shrink import program_size, smaller_programs, total_on
from verify.circuit import Circuit, CircuitError, Edge, summarize_labels
from verify.dataset import Dataset, make_dataset
from verify.structural import ScoreResult, score, unmerged
from verify.truth import ground_truth

__all__ = [
    "BUILTIN_TOOLS",
    "METRICS",
    "TRUTHS",
    "ToolCase",
    "ToolDataset",
    "ToolFuzzError",
    "ToolFuzzSummary",
    "baseline_tool",
    "fuzz_tool",
    "load_tool",
    "answer_scores",
    "reason_for",
    "truth_with_reasons",
    "make_tool_dataset",
]

TRUTHS = ("structural", "ablation")
METRICS = ("auto", "f1", "roc_auc")
BUILTIN_TOOLS = ("acdc", "activation_patching", "eap", "eap_ig", "subnetwork_probing")

Tool = Callable[[Any, "ToolDataset"], Any]


class ToolFuzzError(ValueError):
    """Bad arguments to the tool fuzzer: unknown truth/metric/level, a tool that cannot be loaded."""


# ============================================================================================ dataset


@dataclasses.dataclass
class ToolDataset(Dataset):
    """What a tool receives: a `verify.dataset.Dataset` (so the built-in baselines and the causal checks
    take it as is), plus the inputs as strings and as torch tensors.

    `clean` / `corrupt`: token values without BOS; `clean_ids` / `corrupt_ids`: `np.int64 [B, T+1]`
    with BOS first (`clean_tensor` / `corrupt_tensor`: the same as `torch.LongTensor`);
    `clean_str` / `corrupt_str`: the tokens as strings with `"BOS"` first; `expected` /
    `corrupt_expected`: `rasp.evaluate` on each input. All inputs of one dataset share one length.
    """

    clean_str: list[list[str]] = dataclasses.field(default_factory=list)
    corrupt_str: list[list[str]] = dataclasses.field(default_factory=list)

    @property
    def corrupted(self) -> list[list[Any]]:
        return self.corrupt

    @property
    def corrupted_ids(self) -> np.ndarray:
        return self.corrupt_ids

    @property
    def clean_tensor(self) -> Any:
        import torch

        return torch.as_tensor(self.clean_ids, dtype=torch.long)

    @property
    def corrupt_tensor(self) -> Any:
        import torch

        return torch.as_tensor(self.corrupt_ids, dtype=torch.long)


def make_tool_dataset(model: Any, gp: generate.GeneratedProgram, n: int = 16, seed: int = 0) -> ToolDataset:
    """`n` clean and `n` corrupted inputs of the longest valid length (inputs the program rejects redrawn)."""
    length = gp.input_length if gp.input_length is not None else max(gp.lengths)
    base = make_dataset(model, gp.program, n, seed=seed, length=length)
    bos = str(model.codec.bos)
    to_str = lambda rows: [[bos, *map(str, r)] for r in rows]  # noqa: E731
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    return ToolDataset(**fields, clean_str=to_str(base.clean), corrupt_str=to_str(base.corrupt))


# ============================================================================================ records


@dataclasses.dataclass
class ToolCase:
    """One program's score: the program with its compile settings, the metrics, and what was missed."""

    index: int
    program: Any
    vocab: tuple
    max_seq_len: int
    f1: float
    precision: float
    recall: float
    roc_auc: float
    metric: str  # "f1" or "roc_auc": which of the two decides pass/fail for this case
    kinds: Counter
    n_truth: int = 0
    false_negatives: list[str] = dataclasses.field(default_factory=list)
    false_positives: list[str] = dataclasses.field(default_factory=list)
    error: str = ""  # the tool raised or returned something unscoreable (scored 0)
    input_length: int | None = None
    constant_output: bool = False  # the program gives one output on every clean and corrupted input
    faithful_accuracy: float | None = None  # failing cases: task accuracy of the answer's edges alone
    # why each missed or extra edge is (or is not) in the truth, from the truth's own explanation
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def value(self) -> float:
        return self.f1 if self.metric == "f1" else self.roc_auc

    @property
    def n_ops(self) -> int:
        return sum(1 for e in rasp.topological_order(self.program) if e.children)

    def source(self) -> str:
        return to_source(self.program, strict=False)

    def describe(self) -> str:
        head = (
            f"program {self.index}: {self.metric} {self.value:.3f} (F1 {self.f1:.3f}, precision "
            f"{self.precision:.3f}, recall {self.recall:.3f}, ROC-AUC {self.roc_auc:.3f}), {self.n_ops} ops, "
            f"vocab {list(self.vocab)}, max_seq_len {self.max_seq_len}"
        )
        lines = [head]
        if self.error:
            lines.append(f"  tool error: {self.error}")
        if self.constant_output:
            lines.append("  the program's output is the same on every clean and corrupted input")
        if self.faithful_accuracy is not None:
            lines.append(
                f"  the answer's edges alone (rest ablated) reach task accuracy {self.faithful_accuracy:.3f}"
            )
        for what, items in (("missed", self.false_negatives), ("extra", self.false_positives)):
            if items:
                lines.append(f"  {what} ({len(items)}):")
                lines += [f"    {e}: {self.reasons.get(e, '')}".rstrip(": ") for e in items[:8]]
        lines.append(_indent(self.source()))
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "metric": self.metric,
            "value": _num(self.value),
            "f1": _num(self.f1),
            "precision": _num(self.precision),
            "recall": _num(self.recall),
            "roc_auc": _num(self.roc_auc),
            "n_ops": self.n_ops,
            "n_truth": self.n_truth,
            "vocab": list(self.vocab),
            "max_seq_len": self.max_seq_len,
            "input_length": self.input_length,
            "kinds": dict(self.kinds),
            "false_negatives": self.false_negatives,
            "false_positives": self.false_positives,
            "reasons": self.reasons,
            "error": self.error,
            "constant_output": self.constant_output,
            "faithful_accuracy": self.faithful_accuracy,
            "source": self.source(),
        }


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _indent(text: str, n: int = 2) -> str:
    return "\n".join(" " * n + line if line else line for line in text.splitlines())


@dataclasses.dataclass
class ToolFuzzSummary:
    """Scores of one tool on many compiled programs; `flagged` when any program scores below `pass_bar`."""

    tool: str
    truth: str
    ablation: str
    level: str
    metric: str
    pass_bar: float
    seed: int
    cases: list[ToolCase] = dataclasses.field(default_factory=list)
    skipped: Counter = dataclasses.field(default_factory=Counter)  # reason -> programs not scored
    shrunk: list[ToolCase] = dataclasses.field(default_factory=list)  # smallest failing programs
    n_programs: int = 0

    # -- aggregates

    @property
    def values(self) -> list[float]:
        return [c.value for c in self.cases]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.cases else math.nan

    @property
    def mean_f1(self) -> float:
        return float(np.mean([c.f1 for c in self.cases])) if self.cases else math.nan

    @property
    def worst(self) -> ToolCase | None:
        return min(self.cases, key=lambda c: (c.value, c.index)) if self.cases else None

    @property
    def failing(self) -> list[ToolCase]:
        return [c for c in self.cases if c.value < self.pass_bar]

    @property
    def flagged(self) -> bool:
        return bool(self.failing)

    @property
    def ok(self) -> bool:
        """No program below the bar, and at least one program scored (no verdict is not a pass)."""
        return bool(self.cases) and not self.flagged

    def per_kind(self) -> dict[str, float]:
        """Mean score over the programs containing each op kind (and `select_<COMPARISON>`)."""
        return {k: row["mean"] for k, row in self.kind_table().items()}

    def kind_table(self) -> dict[str, dict[str, float]]:
        """Per op kind (and `select_<COMPARISON>`): programs containing it, their mean and worst score,
        and how many of them fail."""
        keys = list(generate.OP_KINDS) + [f"select_{c}" for c in generate.COMPARISONS]
        out: dict[str, dict[str, float]] = {}
        for kind in keys:
            vals = [c.value for c in self.cases if c.kinds.get(kind)]
            if vals:
                out[kind] = {
                    "programs": len(vals),
                    "mean": float(np.mean(vals)),
                    "worst": float(min(vals)),
                    "failing": sum(v < self.pass_bar for v in vals),
                }
        return out

    # -- display

    def report(self) -> str:
        w = self.worst
        verdict = (
            f"FLAGGED: {len(self.failing)} of {len(self.cases)} programs below {self.pass_bar}"
            if self.flagged
            else f"ok: every program scores >= {self.pass_bar}"
            if self.cases
            else "NO VERDICT: no program was scored (every one was skipped); ask for more programs"
        )
        lines = [
            f"tool fuzz: {self.tool} vs {self.truth} truth"
            + (f" ({self.ablation} ablation)" if self.truth == "ablation" else "")
            + f", {self.level} level, metric {self.metric}, seed {self.seed}",
            f"  programs scored {len(self.cases)} of {self.n_programs}"
            + (
                "  (skipped: " + ", ".join(f"{n} {why}" for why, n in self.skipped.most_common()) + ")"
                if self.skipped
                else ""
            ),
            f"  mean {self.mean:.3f}  worst {w.value if w else math.nan:.3f}  mean F1 {self.mean_f1:.3f}",
            f"  {verdict}",
        ]
        crashed = [c for c in self.cases if c.error]
        if crashed:
            first = crashed[0]
            lines.append(
                f"  the tool raised or gave an unscoreable answer on {len(crashed)} program(s) (scored 0), "
                f"first on program {first.index}: {first.error}"
            )
        const = [c for c in self.failing if c.constant_output]
        if const:
            lines.append(
                f"  of the failing programs, {len(const)} have one output on every input of their dataset "
                f"(program indices {[c.index for c in const][:10]}); a faithful circuit may then be empty"
            )
        table = self.kind_table()
        if table:
            lines.append(f"  {'op kind':30s} {'programs':>8s} {'mean':>7s} {'worst':>7s} {'failing':>8s}")
            for kind, row in table.items():
                lines.append(
                    f"  {kind:30s} {row['programs']:8d} {row['mean']:7.3f} {row['worst']:7.3f} "
                    f"{row['failing']:8d}"
                )
        for c in self.shrunk:
            lines.append("  shrunk failure:")
            lines.append(_indent(c.describe(), 4))
        return "\n".join(lines)

    __str__ = report

    def to_json(self) -> dict[str, Any]:
        w = self.worst
        return {
            "tool": self.tool,
            "truth": self.truth,
            "ablation": self.ablation,
            "level": self.level,
            "metric": self.metric,
            "pass_bar": self.pass_bar,
            "seed": self.seed,
            "n_programs": self.n_programs,
            "n_scored": len(self.cases),
            "skipped": dict(self.skipped),
            "mean": _num(self.mean),
            "mean_f1": _num(self.mean_f1),
            "worst": _num(w.value) if w else None,
            "flagged": self.flagged,
            "n_failing": len(self.failing),
            "n_failing_constant_output": sum(c.constant_output for c in self.failing),
            "per_kind": self.kind_table(),
            "cases": [c.to_json() for c in self.cases],
            "shrunk": [c.to_json() for c in self.shrunk],
        }


# ============================================================================================ scoring


@dataclasses.dataclass
class _Settings:
    truth: str
    ablation: str
    level: str
    metric: str
    pass_bar: float
    threshold: float
    merge_embeddings: bool
    n_inputs: int
    seed: int
    as_hooked_transformer: bool
    causal: bool = False  # the programs are compiled as decoder-only models (generator Limits.causal)


def truth_with_reasons(
    model: Any, data: Dataset, truth: str, ablation: str = "resample", level: str = "edge"
) -> tuple[Circuit | None, dict[str, str]]:
    """The circuit the answer is scored against (None when it is empty: nothing to discover), and per
    edge why it is or is not in it, so a report can say why a missed or extra edge counts. The structural
    truth here leaves out its dead edges (`verify.dead`: zero on every input, when the inputs can be
    enumerated), which no method could find."""
    from verify.causal import necessary_edges
    from verify.dead import dead_edges

    structural = ground_truth(model)
    if truth == "structural":
        reasons = {str(e): f"in the structural truth: carries {summarize_labels(labels)}"
                   for e, labels in structural.edges.items()}
        dead = dead_edges(model)
        reasons.update(dead.edges)
        live = dead.live(structural) if dead.edges else structural
        return (live if live.items(level) else None), reasons
    ne = necessary_edges(model, data, ablation)
    reasons = {e: f"needed: its single {ablation} ablation changes {f:.0%} of the outputs"
               for e, f in ne.changed_fraction.items() if f > 0}
    for e, why in ne.explanations.items():
        reasons[e] = f"{reasons[e]}; {why}" if e in reasons else why
    if not ne.edges:
        return None, reasons
    circ = ne.circuit
    if circ.items("edge") != set(ne.edges):  # keep exactly the engine-confirmed edges
        circ = Circuit(
            structural.output,
            {},
            {Edge.parse(e): structural.edges.get(Edge.parse(e), ()) for e in ne.edges},
            n_layers=structural.n_layers,
            n_heads=structural.n_heads,
            model_graph=structural.model_graph,
        )
    return (circ if circ.items(level) else None), reasons


NOT_IN_TRUTH = "not in the truth: it carries nothing the output depends on"


def reason_for(name: str, reasons: Mapping[str, str]) -> str:
    """Why an item is (not) in the truth; a merged `embeds->X` item gives its embeddings' reasons."""
    parts = [f"{e.split('->')[0]}: {reasons[e]}" if len(unmerged(name)) > 1 else reasons[e]
             for e in unmerged(name) if e in reasons]
    return "; ".join(parts) or NOT_IN_TRUTH


def answer_scores(answer: Any, model: Any, level: str) -> tuple[Any, bool]:
    """(what `verify.score` takes, whether the answer ranks items) for any supported answer form."""
    from verify.discovery import DiscoveryResult, node_scores_to_edges

    if isinstance(answer, DiscoveryResult):
        if answer.level == "node" and level != "node":
            return node_scores_to_edges(model, answer.scores), True
        return answer.scores, True
    if isinstance(answer, Circuit):
        return answer, False
    if isinstance(answer, Mapping):
        return answer, True
    if isinstance(answer, (str, bytes)) or not hasattr(answer, "__iter__"):
        raise CircuitError(
            f"the tool returned a {type(answer).__name__}; expected a verify.Circuit, a set of edges, "
            f"a dict of edge/node scores or a DiscoveryResult"
        )
    return list(answer), False


def _tool_input(model: Any, s: _Settings) -> Any:
    if not s.as_hooked_transformer:
        return model
    from rasp_compiler.model.export import to_hooked_transformer

    return to_hooked_transformer(model)


def _constant_output(model: Any, data: Dataset) -> bool:
    """Whether every clean and corrupted input gives the same output sequence, by value (`0 == 0.0`),
    with the package's one output-equality rule."""
    numerical = model.config.output_encoding == "numerical"
    outs = data.expected + data.corrupt_expected
    return all(outputs_equal(outs[0], o, numerical) for o in outs[1:])


def _score_case(
    tool: Tool,
    index: int,
    program: Any,
    vocab: tuple,
    max_seq_len: int,
    input_length: int | None,
    s: _Settings,
) -> ToolCase | str:
    """Compile, build the dataset and the truth, run the tool, score. A string: why it was skipped."""

    gp = generate.GeneratedProgram(program, vocab, max_seq_len, input_length, s.causal)
    try:
        model = compile_rasp_to_model(program, set(vocab), max_seq_len, causal=s.causal)
    except Exception as e:  # noqa: BLE001 - a compiler failure is not the tool's: skip, counted by reason
        return f"compile error ({type(e).__name__})"
    try:
        data = make_tool_dataset(model, gp, s.n_inputs, seed=s.seed * 100_003 + index)
    except Exception as e:  # noqa: BLE001 - e.g. the program is undefined on every random input
        return f"no dataset ({type(e).__name__})"
    constant = _constant_output(model, data)
    if constant:
        # Every clean and corrupted input gives the same output: there is no behaviour for a circuit to
        # explain (the empty circuit is faithful), under either truth. Degenerate, not the tool's failure.
        return "constant output"
    truth, reasons = truth_with_reasons(model, data, s.truth, s.ablation, s.level)
    if truth is None:
        return "empty truth"
    kinds = generate.op_kinds(program)
    error = ""
    try:
        answer = tool(_tool_input(model, s), data)
        discovered, ranked = answer_scores(answer, model, s.level)
        r: ScoreResult = score(discovered, truth, s.level, threshold=s.threshold,
                               merge_embeddings=s.merge_embeddings)
    except Exception as e:  # noqa: BLE001 - a crashing tool or an unscoreable answer scores 0
        error = f"{type(e).__name__}: {e}"
        r, ranked = None, False
    metric = s.metric if s.metric != "auto" else ("roc_auc" if ranked else "f1")
    if r is None:
        return ToolCase(
            index,
            program,
            vocab,
            max_seq_len,
            0.0,
            0.0,
            0.0,
            0.0,
            metric,
            kinds,
            len(truth.items(s.level)),
            sorted(truth.items(s.level)),
            [],
            error,
            input_length,
            constant,
        )
    auc = r.roc_auc if not math.isnan(r.roc_auc) else (1.0 if r.fn == 0 and r.fp == 0 else 0.0)
    case = ToolCase(
        index,
        program,
        vocab,
        max_seq_len,
        r.f1,
        r.precision,
        r.recall,
        auc,
        metric,
        kinds,
        r.n_positive,
        list(r.false_negatives),
        list(r.false_positives),
        error,
        input_length,
        constant,
        reasons={e: reason_for(e, reasons) for e in [*r.false_negatives, *r.false_positives]},
    )
    if case.value < s.pass_bar and s.level == "edge":
        # a diagnosis, not a verdict: does the answer at least reproduce the task with the rest ablated?
        from verify.causal import faithfulness

        kept = [e for name in r.true_positives + r.false_positives for e in unmerged(name)]
        case.faithful_accuracy = faithfulness(model, kept, data, s.ablation, minimality=False).accuracy
    return case


@dataclasses.dataclass
class _ToolItem:
    """One program of a tool campaign; `gp` None: sampled from (seed, index) where it runs."""

    index: int
    seed: int
    limits: tuple
    tool: Any
    settings: _Settings
    gp: generate.GeneratedProgram | None = None


def _run_tool_item(item: _ToolItem) -> ToolCase | str:
    """Score one program. A sampled program's case comes back without it (`program` None: the caller
    rebuilds it), so nothing unpicklable crosses processes."""

    gp = item.gp if item.gp is not None else program_for(item.seed, item.index, dict(item.limits))
    got = _score_case(item.tool, item.index, gp.program, gp.vocab, gp.max_seq_len, gp.input_length,
                      item.settings)
    if isinstance(got, ToolCase) and item.gp is None:
        got.program = None
    return got


# ============================================================================================ shrinking


def _shrink(tool: Tool, case: ToolCase, s: _Settings, max_rounds: int = 40) -> ToolCase:
    """Greedy: sub-programs and programs with one op bypassed (as the compiler fuzzer shrinks), then a
    shorter max_seq_len and a smaller vocab, while the tool still scores below the pass_bar."""

    def bad(program: Any, vocab: tuple, msl: int) -> ToolCase | None:
        length = case.input_length
        if length is not None and length > msl:
            return None
        got = _score_case(tool, case.index, program, vocab, msl, length, s)
        return got if isinstance(got, ToolCase) and got.value < s.pass_bar else None

    cur = case
    for _ in range(max_rounds):
        nxt = None
        gp = generate.GeneratedProgram(cur.program, cur.vocab, cur.max_seq_len, cur.input_length, s.causal)
        probe = generate.sample_inputs(gp, 12, 0)
        size = program_size(cur.program)
        for cand in smaller_programs(cur.program):
            if program_size(cand) < size and total_on(cand, probe):
                nxt = bad(cand, cur.vocab, cur.max_seq_len)
                if nxt is not None:
                    break
        if nxt is None and cur.max_seq_len > 1:
            nxt = bad(cur.program, cur.vocab, max(1, cur.max_seq_len // 2)) or bad(
                cur.program, cur.vocab, cur.max_seq_len - 1
            )
        if nxt is None and len(cur.vocab) > 1:
            nxt = bad(cur.program, cur.vocab[: max(1, len(cur.vocab) // 2)], cur.max_seq_len) or bad(
                cur.program, cur.vocab[:-1], cur.max_seq_len
            )
        if nxt is None:
            break
        cur = nxt
    return cur


# ============================================================================================ harness


def _tool_name(tool: Any) -> str:
    name = getattr(tool, "__qualname__", None) or getattr(tool, "__name__", None) or type(tool).__name__
    mod = getattr(tool, "__module__", None)
    return f"{mod}:{name}" if mod and mod != "__main__" else str(name)


def _require_tl() -> None:
    try:
        import transformer_lens  # noqa: F401
    except ImportError as e:
        raise ToolFuzzError(
            "fuzz_tool(as_hooked_transformer=True) hands the tool a TransformerLens HookedTransformer, "
            "which needs transformer-lens 3.x: pip install 'rasp-compiler[tl]'"
        ) from e


def fuzz_tool(
    tool: Tool,
    programs: int | Sequence[generate.GeneratedProgram] = 100,
    seed: int = 0,
    *,
    truth: str = "structural",
    ablation: str = "resample",
    level: str = "edge",
    metric: str = "auto",
    pass_bar: float = 0.999,
    threshold: float = 0.0,
    merge_embeddings: bool = False,
    n_inputs: int = 16,
    limits: Mapping[str, Any] | None = None,
    shrink: bool = True,
    max_shrunk: int = 2,
    as_hooked_transformer: bool = False,
    progress: bool = False,
    name: str | None = None,
    workers: int = 1,
    use_ray: bool = False,
    ray_address: str | None = None,
) -> ToolFuzzSummary:
    """Run `tool(model, dataset)` on random compiled programs and score every answer against the truth.

    `tool` gets a `CompiledModel` (or, with `as_hooked_transformer`, a TransformerLens
    `HookedTransformer` computing the same function) and a `ToolDataset`, and returns a
    `verify.Circuit`, a set of edges (`"w->r<in>"` / `Edge`), a dict of edge (or node) scores, or a
    `verify.discovery.DiscoveryResult`. `programs`: how many to sample with `seed` (and `limits`, any
    `generate.Limits` fields) or the `GeneratedProgram`s themselves. `truth`: "structural" or
    "ablation" (edges whose single `ablation` changes an output on the dataset). A program whose
    `metric` (F1 of the items scoring above `threshold`, ROC-AUC, or "auto": ROC-AUC for scored
    answers, F1 for sets; `merge_embeddings` at auto-circuit's granularity) is below `pass_bar`
    fails; the `max_shrunk` worst are shrunk to minimal failing programs. A tool that raises scores 0.

    Sampled program i and its dataset come from (`seed`, i) alone (`testing.fuzz.program_for`), so
    the programs can be scored in `workers` processes or as Ray tasks (`use_ray`, `ray_address`; the
    tool must then be picklable: a module-level function or `baseline_tool`) with the same summary.
    """
    if truth not in TRUTHS:
        raise ToolFuzzError(f"unknown truth {truth!r}; expected one of {TRUTHS}")
    if metric not in METRICS:
        raise ToolFuzzError(f"unknown metric {metric!r}; expected one of {METRICS}")
    if level not in ("node", "edge", "subspace"):
        raise ToolFuzzError(f"unknown level {level!r}; expected 'node', 'edge' or 'subspace'")
    from verify.causal import ABLATIONS

    if ablation not in ABLATIONS:
        raise ToolFuzzError(f"unknown ablation {ablation!r}; expected one of {ABLATIONS}")
    if not callable(tool):
        raise ToolFuzzError(f"tool must be callable as tool(model, dataset), got {type(tool).__name__}")
    if n_inputs < 1:
        raise ToolFuzzError(f"n_inputs must be >= 1, got {n_inputs}")
    if as_hooked_transformer:
        _require_tl()
    sampled = isinstance(programs, int)
    if sampled:
        try:
            limits = dict(limits or {})
            generate.Limits(**limits)
        except TypeError as e:
            fields = [f.name for f in dataclasses.fields(generate.Limits)]
            raise ToolFuzzError(f"limits: {e} (fields: {fields})") from None
        n_programs = int(programs)
        gps: list[generate.GeneratedProgram | None] = [None] * n_programs
    else:
        gps = list(programs)
        bad = [type(g).__name__ for g in gps if not isinstance(g, generate.GeneratedProgram)]
        if bad:
            raise ToolFuzzError(f"programs must be an int or GeneratedProgram objects, got {bad[0]}")
        n_programs = len(gps)
        if use_ray or workers > 1:
            raise ToolFuzzError("workers/ray apply to sampled programs (programs=N); given programs run here")
        if len({g.causal for g in gps}) > 1:
            raise ToolFuzzError("programs mix causal and bidirectional ones; fuzz them in separate runs")
    s = _Settings(
        truth,
        ablation,
        level,
        metric,
        float(pass_bar),
        float(threshold),
        bool(merge_embeddings),
        int(n_inputs),
        int(seed),
        bool(as_hooked_transformer),
        bool(dict(limits or {}).get("causal", False)) if sampled else any(g.causal for g in gps),
    )
    summary = ToolFuzzSummary(
        name or _tool_name(tool),
        truth,
        ablation,
        level,
        metric,
        float(pass_bar),
        int(seed),
        n_programs=n_programs,
    )
    limit_items = tuple(sorted(dict(limits or {}).items())) if sampled else ()
    items = [_ToolItem(i, int(seed), limit_items, tool, s, gp) for i, gp in enumerate(gps)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_programs, desc="fuzz tool", unit="prog", file=sys.stderr)

    try:
        results = map_work(
            _run_tool_item,
            items,
            workers=workers,
            use_ray=use_ray,
            ray_address=ray_address,
            on_result=(lambda _: bar.update(1)) if bar is not None else None,
        )
    except ValueError as e:
        raise ToolFuzzError(str(e)) from None
    finally:
        if bar is not None:
            bar.close()
    for i, got in enumerate(results):  # in program order: the summary does not depend on how it ran
        if isinstance(got, str):
            summary.skipped[got] += 1
        else:
            if got.program is None:  # sampled: rebuilt here from (seed, index), labels included
                got.program = program_for(int(seed), i, dict(limit_items)).program
            summary.cases.append(got)
    if shrink:
        for case in sorted(summary.failing, key=lambda c: (c.value, c.n_ops, c.index))[:max_shrunk]:
            summary.shrunk.append(_shrink(tool, case, s))
    return summary


# ============================================================================================ tools


def baseline_tool(
    method: str = "acdc", ablation: str = "resample", *, acdc_threshold: float = 1e-3, backend: str = "auto"
) -> Tool:
    """One of `verify.discovery`'s methods as a tool. ACDC returns its circuit at `acdc_threshold`
    (a set of edges, scored by F1); the others return their scores (ranked, scored by ROC-AUC)."""
    if method not in BUILTIN_TOOLS:
        raise ToolFuzzError(f"unknown built-in tool {method!r}; expected one of {BUILTIN_TOOLS}")
    return _Baseline(method, ablation, acdc_threshold, backend)


class _Baseline:
    """A built-in method as a tool; a plain object (not a closure) so that worker processes and Ray
    tasks can receive it."""

    def __init__(self, method: str, ablation: str, acdc_threshold: float, backend: str) -> None:
        self.method, self.ablation = method, ablation
        self.acdc_threshold, self.backend = acdc_threshold, backend
        self.__qualname__ = self.__name__ = f"{method}[{ablation}]"
        self.__module__ = "verify.discovery"

    def __call__(self, model: Any, data: ToolDataset) -> Any:
        from verify import discovery

        if self.method == "acdc":
            r = discovery.acdc(
                model, data, self.ablation, thresholds=(self.acdc_threshold,), backend=self.backend
            )
            return r.circuits[self.acdc_threshold]
        return discovery.run_method(self.method, model, data, self.ablation, backend=self.backend)


def load_tool(spec: str, ablation: str = "resample") -> Tool:
    """A tool by name: a built-in baseline (`acdc`, `eap`, ...), `package.module:function` or
    `path/to/file.py:function` (the same rule as `rasp-compiler compile`)."""
    if spec in BUILTIN_TOOLS:
        return baseline_tool(spec, ablation)
    try:
        obj, _ = load_object(spec)
    except ObjectLoadError as e:
        builtin = ', '.join(BUILTIN_TOOLS)
        raise ToolFuzzError(f"--tool: {e}; or a built-in baseline, one of {builtin}") from None
    if not callable(obj):
        raise ToolFuzzError(f"--tool {spec!r}: names a {type(obj).__name__}, not a callable")
    return obj


def run_tool_campaign(n_programs: int, seed: int, *, tool: Any, progress: bool = True, **kwargs: Any) -> Any:
    """For `rasp-compiler fuzz tool`: `tool` is a callable, a built-in baseline name (`acdc`, `eap`, ...)
    or `package.module:function`. Returns a summary with `.report()` and `.ok` (False when flagged)."""
    if tool is None:
        raise ToolFuzzError("fuzz tool: name the tool (a built-in baseline or 'package.module:function')")
    name = tool if isinstance(tool, str) else None
    fn = load_tool(tool, kwargs.get("ablation", "resample")) if isinstance(tool, str) else tool
    return fuzz_tool(fn, n_programs, seed, progress=progress, name=name, **kwargs)


# ============================================================================================ CLI


def add_scoring_options(parser: argparse.ArgumentParser) -> None:
    """The options that mean the same in `verify`, `fuzz tool` and `evaluate`."""
    parser.add_argument("--threshold", type=float, default=0.0,
                        help="scores above this are 'in the circuit' (default 0), as in `verify`")
    parser.add_argument("--pass-bar", type=float, default=0.999,
                        help="a program fails when its score is below this (default 0.999)")
    parser.add_argument("--merge-embeddings", action="store_true",
                        help="embed and pos_embed as one input (auto-circuit's Resid Start; ACDC's graph)")


def scoring_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """`fuzz_tool` keywords from `rasp-compiler fuzz tool`'s options (--truth --ablation --level --metric
    --threshold --pass-bar --merge-embeddings --inputs --no-shrink; limits are added by the caller)."""
    return {
        "truth": args.truth,
        "ablation": args.ablation,
        "level": args.level,
        "metric": args.metric,
        "pass_bar": args.pass_bar,
        "threshold": args.threshold,
        "merge_embeddings": args.merge_embeddings,
        "n_inputs": args.inputs,
        "shrink": not args.no_shrink,
    }
