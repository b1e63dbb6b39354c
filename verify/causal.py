"""Causal checks of circuits: faithfulness by ablation, ablation-aware truth, interchange interventions.

The structural truth (`verify.ground_truth`) says which edges *carry* information to the output. Which
edges a circuit *needs* depends on how the rest is ablated and on the dataset: an edge that carries
`length` is not needed under resample ablation when every clean/corrupt pair has the same length.
This module makes that exact:

* `make_dataset`: clean inputs and independently resampled corrupted inputs (same length, so that
  position-wise patching is defined), with the evaluator's outputs; deterministic by seed.
* `faithfulness`: run with every edge outside a circuit ablated (each reader input sees, from each
  writer outside the circuit, the writer's ablated value instead of its current one): task accuracy
  (decoded output == `rasp.evaluate`) and a metric ratio against the full model; completeness
  (ablate the circuit, keep the rest) and minimality (per circuit edge, the effect of also removing it).
* `necessary_edges`: the edges whose single ablation changes some output, derived from the program
  (an edge carries RASP variables into a reader op; ablating it = giving that reader, and only it,
  those variables' ablated values; evaluate) and confirmed on the engine, with a reason for every
  edge where it differs from the structural truth.
* `interchange_accuracy`: patch a variable's subspace from a source run into a base run, apply the
  same intervention in the evaluator, count agreeing outputs.

Ablations: "resample" (writer's output on the corrupted input), "mean" (its per-position mean over
the clean inputs), "zero". Resample runs on the C++ engine; mean and zero run on the engine when it
accepts `source_outputs` (docs/CONTRACTS.md "Requests to the engine"), else on the PyTorch hook
reference (`rasp_compiler.model.patching`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rasp_compiler import rasp
from rasp_compiler.engine import Engine, NodePatch
from rasp_compiler.model.outputs import OUTPUT_ATOL, positions_equal
from verify.circuit import Circuit, CircuitError, Edge, as_edge, legal_edges, node_kind
from rasp_compiler.model.names import writer_hook, writers
from rasp_compiler.model.patching import HookPatcher, PatchValue, ablation_values
from verify.truth import annotation_dict, ground_truth, model_graph

__all__ = [
    "ABLATIONS",
    "Alignment",
    "CausalError",
    "Dataset",
    "FaithfulnessResult",
    "IIAResult",
    "NecessaryEdges",
    "Patcher",
    "decode_outputs",
    "faithfulness",
    "ground_truth_alignments",
    "interchange_accuracy",
    "make_dataset",
    "necessary_edges",
]

ABLATIONS = ("resample", "mean", "zero")


class CausalError(ValueError):
    """Bad arguments to a causal check: unknown ablation, empty dataset, a variable the program lacks."""


# ============================================================================================ datasets


@dataclasses.dataclass
class Dataset:
    """Clean inputs and corrupted (independently resampled, same length) inputs, with the outputs."""

    program: Any
    clean: list[list[Any]]
    corrupt: list[list[Any]]
    clean_ids: np.ndarray  # [N, T] with BOS
    corrupt_ids: np.ndarray
    expected: list[list[Any]]  # rasp.evaluate on clean
    corrupt_expected: list[list[Any]]
    seed: int = 0

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def length(self) -> int:
        return self.clean_ids.shape[1] - 1


def make_dataset(
    model: Any,
    program: Any,
    n: int = 32,
    *,
    seed: int = 0,
    length: int | None = None,
    distinct: bool = False,
    max_tries: int = 50,
) -> Dataset:
    """`n` clean inputs of one `length` (default max_seq_len) drawn uniformly from the model's vocab, and
    `n` corrupted ones drawn independently (ACDC's "patch data"). Inputs on which the program raises
    (e.g. a categorical aggregate selecting differing values) are redrawn. `distinct`: no repeated tokens.
    """
    vocab = list(model.codec.vocab)
    length = int(model.config.max_seq_len if length is None else length)
    if n < 1:
        raise CausalError(f"make_dataset: n must be >= 1, got {n}")
    if not 1 <= length <= model.config.max_seq_len:
        raise CausalError(f"make_dataset: length {length} outside 1..max_seq_len={model.config.max_seq_len}")
    if distinct and length > len(vocab):
        raise CausalError(f"make_dataset: {length} distinct tokens from a vocab of {len(vocab)}")
    rng = np.random.default_rng(seed)
    ev = rasp.Evaluator()

    def draw() -> tuple[list[Any], list[Any]]:
        for _ in range(max_tries):
            if distinct:
                xs = [vocab[i] for i in rng.permutation(len(vocab))[:length]]
            else:
                xs = [vocab[i] for i in rng.integers(0, len(vocab), size=length)]
            try:
                return xs, ev.evaluate(program, xs)
            except rasp.RASPEvaluationError:
                continue
        raise CausalError(f"make_dataset: the program raised on {max_tries} random inputs of length {length}")

    clean, corrupt, exp, cexp = [], [], [], []
    for _ in range(n):
        x, y = draw()
        clean.append(x)
        exp.append(y)
    for _ in range(n):
        x, y = draw()
        corrupt.append(x)
        cexp.append(y)
    enc = model.codec.encode
    bos = model.codec.bos
    clean_ids = np.array([enc([bos] + x) for x in clean], dtype=np.int64)
    corrupt_ids = np.array([enc([bos] + x) for x in corrupt], dtype=np.int64)
    return Dataset(program, clean, corrupt, clean_ids, corrupt_ids, exp, cexp, seed)


# ============================================================================================ outputs


def _numerical(model: Any) -> bool:
    return model.config.output_encoding == "numerical"


def decode_outputs(model: Any, out: np.ndarray) -> list[list[Any]]:
    """Model outputs `[B, T, V]` -> values per example, without the BOS position."""
    out = np.asarray(out)
    if model.config.output_encoding == "categorical":
        values = model.codec.output_values
        idx = out[:, 1:].argmax(axis=-1)
        return [[values[int(i)] for i in row] for row in idx]
    return [[float(v) for v in row] for row in out[:, 1:, 0]]


# ============================================================================================ patch runner


class Patcher:
    """Runs ablation patch sets on one dataset: the C++ engine where it can, else PyTorch hooks.

    A patch set is a list of ablated edges (`Edge`, `"w->r<in>"` or tuples) and/or node names. Every
    item receives the writer's ablated value (`ablation`). `backend`: "auto", "engine" or "torch".
    """

    def __init__(
        self,
        model: Any,
        dataset: Dataset,
        ablation: str = "resample",
        backend: str = "auto",
        threads: int | None = 1,
    ) -> None:
        if ablation not in ABLATIONS:
            raise CausalError(f"unknown ablation {ablation!r}; expected one of {ABLATIONS}")
        if backend not in ("auto", "engine", "torch"):
            raise CausalError(f"unknown backend {backend!r}; expected 'auto', 'engine' or 'torch'")
        self.model, self.dataset, self.ablation = model, dataset, ablation
        self.n_forward = 0
        self._hook: HookPatcher | None = None
        self._ablated: dict[str, Any] | None = None
        self._engine = None
        self._engine_sources: dict[str, np.ndarray] | None = None
        if backend != "torch":
            self._engine = Engine(model, threads=threads)
        self.backend = "engine" if self._engine is not None else "torch"
        self._clean: np.ndarray | None = None
        self._items: dict[Any, Any] = {}

    @property
    def hook(self) -> HookPatcher:
        if self._hook is None:
            self._hook = HookPatcher(self.model)
        return self._hook

    def ablated_values(self) -> dict[str, Any]:
        """Per writer, the torch tensor an ablated edge delivers."""
        if self._ablated is None:
            self._ablated = ablation_values(
                self.hook, self.dataset.clean_ids, self.dataset.corrupt_ids, self.ablation
            )
        return self._ablated

    def clean(self) -> np.ndarray:
        """The unpatched model's outputs `[B, T, V]`."""
        if self._clean is None:
            if self._engine is not None:
                self._clean = np.asarray(self._engine.run(self.dataset.clean_ids))
            else:
                self._clean = self.hook.run(self.dataset.clean_ids).numpy()
        return self._clean

    @staticmethod
    def _item(item: Any) -> Any:
        if isinstance(item, str) and "->" not in item:
            node_kind(item)
            return item
        e = as_edge(item)
        return (e.writer, e.reader, e.input)

    def _engine_ablation_values(self) -> dict[str, np.ndarray]:
        """Mean / zero ablation values from the engine's own cached clean run (the same definition as
        `ablation_values`, without a PyTorch pass): per writer `[1, T, D]`, broadcast over the batch."""
        cfg = self.model.config
        ws = writers(cfg.n_layers, cfg.n_heads)
        clean = np.asarray(self.dataset.clean_ids)
        T, D = clean.shape[1], int(cfg.d_model)
        if self.ablation == "zero":
            return {w: np.zeros((1, T, D), np.float32) for w in ws}
        hooks = {w: writer_hook(w) for w in ws}
        _, cache = self._engine.run_with_cache(clean, names=sorted({h for h, _ in hooks.values()}))
        out = {}
        for w, (hook, head) in hooks.items():
            v = np.asarray(cache[hook]) if head is None else np.asarray(cache[hook])[:, :, head]
            out[w] = v.mean(axis=0, keepdims=True, dtype=np.float32)
        return out

    def _item_cached(self, item: Any) -> Any:
        """`_item`, memoised: ACDC hands the same (growing) list of edges over hundreds of times."""
        try:
            return self._items[item]
        except KeyError:
            out = self._items[item] = self._item(item)
            return out
        except TypeError:  # unhashable: convert (or raise) every time
            return self._item(item)

    def outputs(self, patch_sets: Sequence[Iterable[Any]]) -> np.ndarray:
        """Outputs `[S, B, T, V]` of the patched runs, one per patch set."""
        sets = [[self._item_cached(i) for i in items] for items in patch_sets]
        self.n_forward += len(sets)
        if not sets:
            return np.zeros((0,) + self.clean().shape, dtype=np.float32)
        if self._engine is not None:
            kwargs = {}
            source = self.dataset.corrupt_ids
            if self.ablation != "resample":
                if self._engine_sources is None:
                    self._engine_sources = self._engine_ablation_values()
                kwargs["source_outputs"] = self._engine_sources
            _, outs = self._engine.sweep(
                self.dataset.clean_ids, source, sets, "mse", return_outputs=True, **kwargs
            )
            return np.asarray(outs)
        return self.hook.run_sets(self.dataset.clean_ids, self.ablated_values(), sets)


# ============================================================================================ metrics


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def kl_to_clean(clean: np.ndarray, patched: np.ndarray) -> float:
    """Mean over examples and non-BOS positions of KL(softmax(clean) || softmax(patched))."""
    p, q = _softmax(clean[:, 1:].astype(np.float64)), _softmax(patched[:, 1:].astype(np.float64))
    return float(np.mean(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30)), axis=-1)))


def mse_to_clean(clean: np.ndarray, patched: np.ndarray) -> float:
    return float(np.mean((clean[:, 1:].astype(np.float64) - patched[:, 1:]) ** 2))


def divergence(model: Any, clean: np.ndarray, patched: np.ndarray) -> float:
    """ACDC's metric: KL to the clean output for categorical outputs, MSE for numerical ones."""
    if model.config.output_encoding == "categorical":
        return kl_to_clean(clean, patched)
    return mse_to_clean(clean, patched)


def _expected_index(model: Any, dataset: Dataset) -> np.ndarray:
    values = list(model.codec.output_values)
    return np.array([[values.index(v) if v in values else -1 for v in row] for row in dataset.expected])


def logit_diff(model: Any, dataset: Dataset, out: np.ndarray) -> float:
    """Mean over positions of (logit of the expected answer) - (largest other logit)."""
    idx = _expected_index(model, dataset)
    logits = out[:, 1:].astype(np.float64)
    b, t = np.indices(idx.shape)
    right = logits[b, t, np.maximum(idx, 0)]
    masked = logits.copy()
    masked[b, t, np.maximum(idx, 0)] = -np.inf
    return float(np.mean(np.where(idx >= 0, right - masked.max(axis=-1), np.nan)))


def task_accuracy(model: Any, dataset: Dataset, out: np.ndarray, atol: float = OUTPUT_ATOL) -> float:
    """Fraction of (example, position) outputs equal to `rasp.evaluate`'s."""
    decoded = decode_outputs(model, out)
    flags = [
        f for got, want in zip(decoded, dataset.expected, strict=True) for f in positions_equal(got, want, _numerical(model), atol)
    ]
    return float(np.mean(flags))


# ============================================================================================ faithfulness


@dataclasses.dataclass
class FaithfulnessResult:
    """Circuit vs full model under one ablation (accuracies are per output position)."""

    ablation: str
    backend: str
    accuracy: float  # circuit run (everything outside ablated): decoded == evaluator
    full_accuracy: float
    metric: str
    metric_value: float
    full_metric_value: float
    metric_ratio: float
    divergence: float  # KL (categorical) or MSE (numerical) of the circuit run to the full model
    completeness_accuracy: float  # circuit ablated, rest kept
    completeness_divergence: float
    minimality: dict[str, float]  # circuit edge -> fraction of outputs that change when it is also ablated
    minimality_divergence: dict[str, float]
    n_edges: int
    n_ablated: int


def faithfulness(
    model: Any,
    circuit: Circuit | Iterable[Any],
    inputs: Dataset,
    ablation: str = "resample",
    metric: str | Callable[[np.ndarray], float] | None = None,
    *,
    backend: str = "auto",
    minimality: bool = True,
    atol: float = OUTPUT_ATOL,
) -> FaithfulnessResult:
    """Run `model` on `inputs` with every legal edge outside `circuit` ablated; compare with the full model.

    `metric`: "logit_diff" (categorical default; ratio = circuit / full), "r2" (numerical default:
    1 - MSE(circuit, full) / Var(full), ratio = that value), or a callable on outputs `[B, T, V]`.
    """
    cfg = model.config
    edges = set(circuit.edges) if isinstance(circuit, Circuit) else {as_edge(e) for e in circuit}
    universe = legal_edges(cfg.n_layers, cfg.n_heads)
    unknown = sorted(str(e) for e in edges - set(universe))
    if unknown:
        raise CircuitError(f"faithfulness: circuit edges not in the model: {unknown[:5]}")
    outside = [e for e in universe if e not in edges]
    inside = sorted(edges, key=Edge.sort_key)
    runner = Patcher(model, inputs, ablation, backend)
    sets = [outside, inside] + ([outside + [e] for e in inside] if minimality else [])
    outs = runner.outputs(sets)
    full = runner.clean()
    if metric is None:
        metric = "logit_diff" if cfg.output_encoding == "categorical" else "r2"

    def score(out: np.ndarray) -> float:
        if callable(metric):
            return float(metric(out))
        if metric == "logit_diff":
            return logit_diff(model, inputs, out)
        if metric == "r2":
            var = float(np.var(full[:, 1:].astype(np.float64)))
            return 1.0 - mse_to_clean(full, out) / var if var > 0 else float(mse_to_clean(full, out) == 0.0)
        raise CausalError(f"unknown metric {metric!r}; expected 'logit_diff', 'r2' or a callable")

    m_circ, m_full = score(outs[0]), score(full)
    ratio = m_circ if metric == "r2" else (m_circ / m_full if m_full else math.nan)
    clean_dec = decode_outputs(model, full)

    def changed(out: np.ndarray) -> float:
        got = decode_outputs(model, out)
        flags = [not f for a, b in zip(got, clean_dec, strict=True) for f in positions_equal(a, b, _numerical(model), atol)]
        return float(np.mean(flags))

    mini = {str(e): changed(outs[2 + i]) for i, e in enumerate(inside)} if minimality else {}
    mini_div = (
        {str(e): divergence(model, full, outs[2 + i]) for i, e in enumerate(inside)} if minimality else {}
    )
    return FaithfulnessResult(
        ablation=ablation,
        backend=runner.backend,
        accuracy=task_accuracy(model, inputs, outs[0], atol),
        full_accuracy=task_accuracy(model, inputs, full, atol),
        metric=metric if isinstance(metric, str) else getattr(metric, "__name__", "custom"),
        metric_value=m_circ,
        full_metric_value=m_full,
        metric_ratio=ratio,
        divergence=divergence(model, full, outs[0]),
        completeness_accuracy=task_accuracy(model, inputs, outs[1], atol),
        completeness_divergence=divergence(model, full, outs[1]),
        minimality=mini,
        minimality_divergence=mini_div,
        n_edges=len(inside),
        n_ablated=len(outside),
    )


# ============================================================================================ program side


class _Program:
    """A program's expressions indexed by the compiler's op labels (duplicates are `label#unique_id`)."""

    def __init__(self, program: Any) -> None:
        self.program = program
        self.order = rasp.topological_order(program)
        self.by_label: dict[str, list[Any]] = {}
        for e in self.order:  # the compiler's naming: a later op reusing a taken label is `label#unique_id`
            label = e.label
            if label in self.by_label:
                label = f"{label}#{e.unique_id}"
            while label in self.by_label:
                label += "'"
            self.by_label[label] = [e]
        self.ev = rasp.Evaluator()

    def exprs(self, label: str) -> list[Any]:
        if label not in self.by_label:
            raise CausalError(f"the program has no op {label!r} (the model's annotation names it)")
        return self.by_label[label]

    def values(self, xs: list[Any]) -> dict[int, Any]:
        """Every expression's value (by id) on `xs`."""
        vals: dict[int, Any] = {}
        for node in self.order:
            vals[id(node)] = self.ev._handler(node)(node, vals, xs)
        return vals

    def _selector(
        self, sel: Any, vals: dict[int, Any], xs: list[Any], q_ov: Mapping[int, Any], k_ov: Mapping[int, Any]
    ) -> Any:
        """A selector's matrix with the keys / queries of its Selects overridden (by child id)."""
        kind = type(sel).__name__
        if isinstance(sel, rasp.Select):
            keys = k_ov.get(id(sel.keys), vals[id(sel.keys)])
            queries = q_ov.get(id(sel.queries), vals[id(sel.queries)])
            return [[bool(sel.predicate(k, q)) for k in keys] for q in queries]
        if kind in ("SelectorAnd", "SelectorOr", "SelectorNot"):
            local = dict(vals)
            for child in sel.children:
                local[id(child)] = self._selector(child, vals, xs, q_ov, k_ov)
            return self.ev._handler(sel)(sel, local, xs)
        return vals[id(sel)]

    def run(
        self,
        xs: list[Any],
        reader_ov: Mapping[int, Mapping[str, Mapping[int, Any]]] | None = None,
        global_ov: Mapping[int, Any] | None = None,
    ) -> dict[int, Any]:
        """Evaluate with overrides: `reader_ov[id(op)][input][id(child)]` = values that op (only) sees for
        that child on that input (q/k: the Selects' queries/keys, v: the aggregated SOp, in: any child);
        `global_ov[id(op)]` replaces an op's value for every consumer."""
        reader_ov = reader_ov or {}
        global_ov = global_ov or {}
        vals: dict[int, Any] = {}
        for node in self.order:
            ov = reader_ov.get(id(node))
            if ov is None:
                value = self.ev._handler(node)(node, vals, xs)
            else:
                local = dict(vals)
                for child_id, v in ov.get("in", {}).items():
                    local[child_id] = v
                if hasattr(node, "selector"):
                    local[id(node.selector)] = self._selector(
                        node.selector, vals, xs, ov.get("q", {}), ov.get("k", {})
                    )
                    for child_id, v in ov.get("v", {}).items():
                        local[child_id] = v
                value = self.ev._handler(node)(node, local, xs)
            if id(node) in global_ov:
                value = list(global_ov[id(node)])
            vals[id(node)] = value
        return vals


# ============================================================================================ necessary edges


@dataclasses.dataclass
class NecessaryEdges:
    """The ablation-aware truth for one ablation and dataset."""

    ablation: str
    backend: str
    edges: list[str]  # engine-confirmed: single ablation changes some output
    circuit: Circuit | None  # the same edges as a Circuit (None when empty)
    structural: list[str]
    predicted: dict[str, bool | None]  # program-derived, per structural edge (None: the program cannot say)
    changed_fraction: dict[str, float]  # per legal edge: fraction of outputs its single ablation changes
    explanations: dict[str, str]  # every edge where this truth differs from the structural one
    discrepancies: dict[str, str]  # program prediction vs engine disagreements (should be empty for resample)


def _edge_parts(mg: Any, truth: Circuit) -> dict[Edge, list[tuple[str, str, str, frozenset[str]]]]:
    """Per structural edge, its part-level pieces (writer op, reader op, input, labels) inside the circuit."""
    out: dict[Edge, list] = {}
    for (wkey, rkey, inp), labels in mg.sub_edges.items():
        e = Edge(wkey[0], rkey[0], inp)
        if e not in truth.edges:
            continue
        if wkey[1] not in truth.nodes.get(wkey[0], {}) or rkey[1] not in truth.nodes.get(rkey[0], {}):
            continue
        out.setdefault(e, []).append((wkey[1], rkey[1], inp, labels))
    return out


def _overrides(
    prog: _Program, pieces: list, output_op: str, source_vals: Mapping[int, Any]
) -> tuple[dict, dict, list[str]]:
    """Reader/global overrides that give each piece's reader the source values of what it carries."""
    reader_ov: dict[int, dict[str, dict[int, Any]]] = {}
    global_ov: dict[int, Any] = {}
    carried: list[str] = []
    for w_op, r_op, inp, labels in pieces:
        if w_op == "one":
            carried.append("one")  # `one` and tokens:BOS: the same on every input of a length
            continue
        carried.append(w_op)
        if r_op == output_op and w_op == output_op and inp == "in" and not _is_internal(labels, w_op):
            for x in prog.exprs(w_op):
                global_ov[id(x)] = source_vals[id(x)]
            continue
        if w_op == r_op:  # a hidden helper direction inside one op (selector width head -> its MLP)
            for x in prog.exprs(w_op):
                global_ov[id(x)] = source_vals[id(x)]
            continue
        w_ids = {id(x) for x in prog.exprs(w_op)}
        for r in prog.exprs(r_op):
            slot = reader_ov.setdefault(id(r), {}).setdefault(inp, {})
            if inp in ("q", "k"):
                for sel in rasp.topological_order(r.selector):
                    if isinstance(sel, rasp.Select):
                        child = sel.queries if inp == "q" else sel.keys
                        if id(child) in w_ids or child.label == w_op.split("#")[0]:
                            slot[id(child)] = source_vals[id(child)]
            else:
                for child in r.children:
                    if id(child) in w_ids or (child.label == w_op.split("#")[0] and hasattr(child, "label")):
                        if inp == "v" and child is not getattr(r, "sop", None):
                            continue
                        slot[id(child)] = source_vals[id(child)]
    return reader_ov, global_ov, carried


def _is_internal(labels: Iterable[str], op: str) -> bool:
    return any(lab.startswith(op + "__") for lab in labels)


def necessary_edges(
    model: Any,
    inputs: Dataset,
    ablation: str = "resample",
    output: str | None = None,
    *,
    backend: str = "auto",
    atol: float = OUTPUT_ATOL,
) -> NecessaryEdges:
    """Exactly the edges whose single ablation (of that kind, over `inputs`) changes some output.

    Derived from the program: each structural edge carries RASP variables from writer ops into a reader
    op; for resample, the reader alone is given those variables' values on the corrupted input and the
    program is evaluated; for mean, an edge whose variables are constant at every position over the
    dataset provably changes nothing (the mean is the value), otherwise the program cannot say (the mean
    of a categorical variable is no value of it); for zero the program never can. Then every legal edge
    is ablated alone on the engine; that is the set returned, and every disagreement with the
    program-derived prediction is reported in `discrepancies`.
    """
    if ablation not in ABLATIONS:
        raise CausalError(f"unknown ablation {ablation!r}; expected one of {ABLATIONS}")
    if len(inputs) == 0:
        raise CausalError("necessary_edges: empty dataset")
    truth = ground_truth(model, output)
    mg = model_graph(model, output)
    out_op = truth.output
    cfg = model.config
    universe = legal_edges(cfg.n_layers, cfg.n_heads)
    runner = Patcher(model, inputs, ablation, backend)
    outs = runner.outputs([[e] for e in universe])
    clean_dec = decode_outputs(model, runner.clean())
    changed_fraction: dict[str, float] = {}
    for e, out in zip(universe, outs, strict=True):
        got = decode_outputs(model, out)
        flags = [not f for a, b in zip(got, clean_dec, strict=True) for f in positions_equal(a, b, _numerical(model), atol)]
        changed_fraction[str(e)] = float(np.mean(flags))
    engine_set = {s for s, f in changed_fraction.items() if f > 0}

    prog = _Program(inputs.program)
    pieces_of = _edge_parts(mg, truth)
    clean_vals = [prog.values(x) for x in inputs.clean]
    corrupt_vals = [prog.values(x) for x in inputs.corrupt]
    out_ids = {id(x) for x in prog.exprs(out_op)} if out_op in prog.by_label else set()
    predicted: dict[str, bool | None] = {}
    reasons: dict[str, str] = {}
    for e in sorted(truth.edges, key=Edge.sort_key):
        pieces = pieces_of.get(e, [])
        vars_ = sorted({p[0] for p in pieces})
        carried = ", ".join(f"`{v}`" for v in vars_) or "nothing the circuit uses"
        if ablation == "resample":
            pred, reason = _predict_resample(
                prog, pieces, out_op, inputs, clean_vals, corrupt_vals, _numerical(model), atol, carried
            )
        elif ablation == "mean":
            pred, reason = _predict_mean(prog, pieces, clean_vals, carried)
        else:
            pred, reason = (
                None,
                (
                    f"carries {carried}; zeroing a contribution gives the reader no value of it, "
                    f"which the program does not define"
                ),
            )
        predicted[str(e)] = pred
        reasons[str(e)] = reason
    del out_ids
    structural = {str(e) for e in truth.edges}
    explanations: dict[str, str] = {}
    discrepancies: dict[str, str] = {}
    for name in sorted(structural | engine_set):
        in_s, in_n = name in structural, name in engine_set
        pred = predicted.get(name)
        if in_s and not in_n:
            explanations[name] = "not needed: " + reasons[name]
            if pred is None:
                explanations[name] += "; on the model its single ablation changes no output on this dataset"
        elif in_n and not in_s:
            explanations[name] = (
                f"not in the structural truth, yet ablating it changes "
                f"{changed_fraction[name]:.0%} of outputs (the writer's ablated value leaks "
                f"into directions the reader reads)"
            )
        if in_s and pred is not None and pred != in_n:
            discrepancies[name] = (
                f"program predicts {'a change' if pred else 'no change'}, the model shows "
                f"{'a change' if in_n else 'none'}: {reasons[name]}"
            )
    edges = sorted(engine_set, key=lambda s: Edge.parse(s).sort_key())
    circ = truth.restricted(edges) if edges else None
    return NecessaryEdges(
        ablation,
        runner.backend,
        edges,
        circ,
        sorted(structural, key=lambda s: Edge.parse(s).sort_key()),
        predicted,
        changed_fraction,
        explanations,
        discrepancies,
    )


def _predict_resample(
    prog: _Program,
    pieces: list,
    out_op: str,
    inputs: Dataset,
    clean_vals: list,
    corrupt_vals: list,
    numerical: bool,
    atol: float,
    carried: str,
) -> tuple[bool, str]:
    same_values = True
    reader_changes = False
    undefined = 0
    changes = 0
    for xs, cv, sv, want in zip(inputs.clean, clean_vals, corrupt_vals, inputs.expected, strict=True):
        reader_ov, global_ov, _ = _overrides(prog, pieces, out_op, sv)
        for w_op, *_ in pieces:
            if w_op != "one" and any(cv[id(x)] != sv[id(x)] for x in prog.exprs(w_op)):
                same_values = False
        try:
            vals = prog.run(xs, reader_ov, global_ov)
        except rasp.RASPEvaluationError:
            undefined += 1
            changes += 1
            continue
        targets = list(reader_ov) + list(global_ov)
        if any(vals[t] != cv[t] for t in targets):
            reader_changes = True
        got = vals[id(prog.program)]
        if not all(positions_equal(got, want, numerical, atol)):
            changes += 1
    if changes:
        extra = f" ({undefined} where the program is undefined)" if undefined else ""
        return (
            True,
            f"carries {carried}; resampling it changes the output on {changes} of {len(inputs)} "
            f"inputs{extra}",
        )
    if all(p[0] == "one" for p in pieces):
        return (
            False,
            f"carries {carried} (`one` / `tokens:BOS`: the same on every input), so resampling "
            "changes nothing",
        )
    if same_values:
        return False, (
            f"carries {carried}, equal in every clean/corrupt pair of this dataset (e.g. constant at a "
            f"fixed length), so resampling it changes nothing"
        )
    if not reader_changes:
        return False, (
            f"carries {carried}, but the reader's value does not depend on it over this dataset, so "
            f"resampling it changes nothing"
        )
    return (
        False,
        f"carries {carried}; resampling changes the reader's value but never the output on this dataset",
    )


def _predict_mean(prog: _Program, pieces: list, clean_vals: list, carried: str) -> tuple[bool | None, str]:
    varying = []
    for w_op, *_ in pieces:
        if w_op == "one":
            continue
        for x in prog.exprs(w_op):
            cols = list(zip(*[cv[id(x)] for cv in clean_vals], strict=True))
            if any(len({repr(v) for v in col}) > 1 for col in cols):
                varying.append(w_op)
                break
    if not varying:
        return False, (
            f"carries {carried}, constant at every position over this dataset, so its mean is its "
            f"value and mean ablation changes nothing"
        )
    return None, (
        f"carries {', '.join(f'`{v}`' for v in sorted(set(varying)))}, which varies over the dataset; "
        f"its mean is not a value of the variable, so the program cannot say what the reader does"
    )


# ============================================================================================ interchange


@dataclasses.dataclass(frozen=True)
class Alignment:
    """A RASP variable located in the model: component, residual directions, positions (None: all)."""

    variable: str
    component: str
    subspace: tuple[str, ...]
    positions: tuple[int, ...] | None = None


def ground_truth_alignments(model: Any, program: Any = None) -> dict[str, Alignment]:
    """Per SOp of the annotation, where its value lives: the block that writes the op's directions.

    With `program`, only the variables the program has (the compiler always embeds tokens and indices)."""
    ann = annotation_dict(model)
    if ann is None:
        raise CausalError("ground_truth_alignments needs a model with an annotation")
    ops = ann.get("ops", {})
    cfg = model.config
    out: dict[str, Alignment] = {}
    for block in ann.get("blocks", []):
        op = str(block["op"])
        if op not in ops or ops[op].get("encoding") is None:
            continue
        dirs = set(ops[op].get("directions", ())) & set(block.get("writes", ()))
        if not dirs:
            continue
        comp = block["component"]
        if comp in ("embed", "pos_embed"):
            node = comp
        elif comp == "mlp":
            node = f"L{block['layer']}.MLP"
        else:
            node = f"L{block['layer']}.H{block['head']}"
        order = {lab: i for i, lab in enumerate(cfg.residual_labels)}
        out[op] = Alignment(op, node, tuple(sorted(dirs, key=order.__getitem__)))
    if program is not None:
        labels = _Program(program).by_label
        out = {k: v for k, v in out.items() if k in labels}
    return out


@dataclasses.dataclass
class IIAResult:
    """Interchange-intervention accuracy: model and evaluator agree on the intervened output."""

    alignment: Alignment
    iia: float  # over examples where the evaluator is defined
    n: int
    n_undefined: int
    agree: list[bool]
    backend: str


def _as_inputs(x: Any) -> list[list[Any]]:
    return [list(v) for v in x]


def interchange_accuracy(
    model: Any,
    alignment: Alignment,
    base_inputs: Sequence[Sequence[Any]] | Dataset,
    source_inputs: Sequence[Sequence[Any]] | None = None,
    program: Any = None,
    *,
    backend: str = "auto",
    atol: float = OUTPUT_ATOL,
) -> IIAResult:
    """Patch `alignment.component`'s output inside `alignment.subspace` (at `positions`) from each source
    run into its base run, intervene `alignment.variable` likewise in the evaluator; fraction of examples
    whose whole decoded output agrees. A Dataset as `base_inputs` supplies program and source (its
    corrupted inputs). Inputs must share one length (position-wise interchange)."""
    if isinstance(base_inputs, Dataset):
        program = base_inputs.program if program is None else program
        source_inputs = base_inputs.corrupt if source_inputs is None else source_inputs
        base_inputs = base_inputs.clean
    if program is None or source_inputs is None:
        raise CausalError("interchange_accuracy needs the program and source inputs (or a Dataset)")
    base, source = _as_inputs(base_inputs), _as_inputs(source_inputs)
    if len(base) != len(source) or not base:
        raise CausalError(f"interchange_accuracy: {len(base)} base and {len(source)} source inputs")
    lengths = {len(x) for x in base + source}
    if len(lengths) != 1:
        raise CausalError(
            f"interchange_accuracy: inputs must share one length, got lengths {sorted(lengths)}"
        )
    prog = _Program(program)
    targets = prog.exprs(alignment.variable)
    if not isinstance(targets[0], rasp.SOp):
        raise CausalError(f"interchange_accuracy: {alignment.variable!r} is not an SOp")
    n = lengths.pop()
    positions = list(range(n)) if alignment.positions is None else list(alignment.positions)
    bad = [p for p in positions if not 0 <= p < n]
    if bad:
        raise CausalError(f"interchange_accuracy: positions {bad} outside 0..{n - 1}")
    bos = model.codec.bos
    base_ids = np.array([model.codec.encode([bos] + x) for x in base], dtype=np.int64)
    src_ids = np.array([model.codec.encode([bos] + x) for x in source], dtype=np.int64)
    node_kind(alignment.component)
    used = "torch"
    if backend != "torch" and alignment.positions is None:
        engine = Engine(model, threads=1)
        out = np.asarray(
            engine.run_patched(base_ids, src_ids, [NodePatch(alignment.component, list(alignment.subspace))])
        )
        used = "engine"
    else:
        if backend == "engine":
            raise CausalError("interchange_accuracy: the engine cannot restrict a patch to positions")
        import torch

        hp = HookPatcher(model)
        src_out = hp.writer_outputs(src_ids)[alignment.component]
        mask = torch.zeros(n + 1, dtype=torch.bool)
        mask[[p + 1 for p in positions]] = True
        pv = PatchValue(src_out, hp.projection(list(alignment.subspace)), mask)
        out = hp.run(base_ids, nodes={alignment.component: pv}).numpy()
    decoded = decode_outputs(model, out)
    agree: list[bool] = []
    undefined = 0
    for xs, src, got in zip(base, source, decoded, strict=True):
        sv = prog.values(src)
        cv = prog.values(xs)
        glob = {}
        for t in targets:
            new = list(cv[id(t)])
            for p in positions:
                new[p] = sv[id(t)][p]
            glob[id(t)] = new
        try:
            want = prog.run(xs, None, glob)[id(prog.program)]
        except rasp.RASPEvaluationError:
            undefined += 1
            continue
        agree.append(all(positions_equal(got, want, _numerical(model), atol)))
    iia = float(np.mean(agree)) if agree else math.nan
    return IIAResult(alignment, iia, len(base), undefined, agree, used)
