"""The ablation-aware truth: edges whose single ablation changes an output, from the program and
confirmed on the engine, with a reason for every difference from the structural truth."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from rasp_compiler import rasp
from rasp_compiler.model.directions import Direction
from rasp_compiler.model.outputs import OUTPUT_ATOL, positions_equal
from verify.causal.patcher import Patcher, mean_over_lengths
from verify.causal.program import ProgramRunner
from verify.circuit import Circuit, Edge, legal_edges
from verify.dataset import (
    ABLATIONS,
    CausalError,
    Dataset,
    MixedDataset,
    decided_positions,
    decode_outputs,
    is_numerical_output,
)
from verify.truth import ground_truth, model_graph

__all__ = ["NecessaryEdges", "necessary_edges"]


@dataclasses.dataclass
class NecessaryEdges:
    """The ablation-aware truth for one ablation and dataset."""

    ablation: str
    backend: str
    edges: list[str]  # engine-confirmed: single ablation changes some output
    circuit: Circuit  # the same edges as a Circuit (an empty circuit when no edge is needed)
    structural: list[str]
    predicted: dict[str, bool | None]  # program-derived, per structural edge (None: the program cannot say)
    changed_fraction: dict[str, float]  # per legal edge: fraction of outputs its single ablation changes
    explanations: dict[str, str]  # every edge where this truth differs from the structural one
    # program prediction vs engine disagreements; empty for resample on every library program and on
    # 400 generated ones (benchmarks/truth_backends.py measures the backends, tests the library)
    discrepancies: dict[str, str]
    # per legal edge whose ablation left some output within the decision margin (verify.dataset): the
    # fraction of such positions, counted as changed (the clean answer no longer wins), so backends
    # that round differently agree
    undetermined: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def derivation(self) -> str:
        """How the set was obtained, said plainly (the program can predict resample, rarely mean, never
        zero; the returned set is always the engine's, decided with the margin)."""
        judged = sum(p is not None for p in self.predicted.values())
        return (
            f"every legal edge ablated alone on the {self.backend} ({self.ablation} ablation), an output "
            f"counted as changed unless its clean answer still wins by the decision margin; the program "
            f"predicts {judged} of the {len(self.structural)} structural edges "
            f"({len(self.discrepancies)} disagreements)"
            + ("" if self.ablation == "resample" else
               "; for mean and zero ablation the rest is a brute-force result (the backends agree with a "
               "float64 reference on 1,000 generated programs x 3 ablations: benchmarks/truth_backends.py)")
        )


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
    prog: ProgramRunner, pieces: list, output_op: str, source_vals: Mapping[int, Any]
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
    parsed = (Direction.parse(lab, [op]) for lab in labels)
    return any(d.variable == op and d.is_helper for d in parsed)


def necessary_edges(
    model: Any,
    inputs: Dataset | MixedDataset,
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
    program-derived prediction is reported in `discrepancies`. A `MixedDataset` is run length by length
    (mean ablation with the means over every length, `patcher.mean_over_lengths`), the fractions taken
    over all its output positions.
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
    groups = inputs.groups if isinstance(inputs, MixedDataset) else (inputs,)
    means = mean_over_lengths(model, groups) if ablation == "mean" and len(groups) > 1 else None
    n_changed = dict.fromkeys(map(str, universe), 0)
    n_undecided = dict.fromkeys(map(str, universe), 0)
    n_positions = 0
    numerical = is_numerical_output(model)
    for group in groups:
        runner = Patcher(model, group, ablation, backend, mean_values=means)
        outs = runner.outputs([[e] for e in universe])
        clean_dec = decode_outputs(model, runner.clean())
        n_positions += decided_positions(model, runner.clean()).size
        for e, out in zip(universe, outs, strict=True):
            got = decode_outputs(model, out)
            decided = decided_positions(model, out)
            changed = np.array([[not f for f in positions_equal(a, b, numerical, atol)]
                                for a, b in zip(got, clean_dec, strict=True)], dtype=bool)
            changed = changed.reshape(decided.shape)
            # an output is kept only if the clean answer still wins by more than the margin; within it the
            # answer is no longer determined (a tie that rounding alone would settle), which counts as
            # changed on every backend alike
            n_changed[str(e)] += int((changed | ~decided).sum())
            n_undecided[str(e)] += int((~decided).sum())
    changed_fraction = {e: c / n_positions for e, c in n_changed.items()}
    undetermined = {e: c / n_positions for e, c in n_undecided.items() if c}
    engine_set = {s for s, f in changed_fraction.items() if f > 0}

    prog = ProgramRunner(inputs.program, causal=model.config.causal)
    pieces_of = _edge_parts(mg, truth)
    clean_vals = [prog.values(x) for x in inputs.clean]
    corrupt_vals = [prog.values(x) for x in inputs.corrupt]
    predicted: dict[str, bool | None] = {}
    reasons: dict[str, str] = {}
    for e in sorted(truth.edges, key=Edge.sort_key):
        pieces = pieces_of.get(e, [])
        vars_ = sorted({p[0] for p in pieces})
        carried = ", ".join(f"`{v}`" for v in vars_) or "nothing the circuit uses"
        if ablation == "resample":
            pred, reason = _predict_resample(
                prog, pieces, out_op, inputs, clean_vals, corrupt_vals, is_numerical_output(model), atol,
                carried,
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
    circ = truth.restricted(edges)
    for name, frac in undetermined.items():
        if name in explanations or name in structural:
            note = (f"its ablation leaves {frac:.0%} of the output positions within the decision margin "
                    "(no answer wins: counted as changed)")
            explanations[name] = f"{explanations[name]}; {note}" if name in explanations else note
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
        undetermined,
    )


def _predict_resample(
    prog: ProgramRunner,
    pieces: list,
    out_op: str,
    inputs: Dataset,
    clean_vals: list,
    corrupt_vals: list,
    numerical: bool,
    atol: float,
    carried: str,
) -> tuple[bool | None, str]:
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
    if changes > undefined:
        extra = f" (and the program is undefined on {undefined} more)" if undefined else ""
        return (
            True,
            f"carries {carried}; resampling it changes the output on {changes - undefined} of "
            f"{len(inputs)} inputs{extra}",
        )
    if undefined:
        # the intervened program has no value there (e.g. a categorical Aggregate now selects different
        # values): it predicts nothing a model must do, so the program cannot say
        return (
            None,
            f"carries {carried}; resampling it leaves the output unchanged where the program is defined "
            f"and makes the program undefined on {undefined} of {len(inputs)} inputs (no prediction)",
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


def _predict_mean(
    prog: ProgramRunner, pieces: list, clean_vals: list, carried: str
) -> tuple[bool | None, str]:
    varying = []
    for w_op, *_ in pieces:
        if w_op == "one":
            continue
        for x in prog.exprs(w_op):
            width = max(len(cv[id(x)]) for cv in clean_vals)
            cols = [[cv[id(x)][p] for cv in clean_vals if p < len(cv[id(x)])] for p in range(width)]
            if any(len({repr(v) for v in col}) > 1 for col in cols):  # per position, over every length
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
