"""Interchange interventions: a RASP variable's subspace patched from a source run, against the
evaluator with the same intervention (interchange accuracy)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rasp_compiler import rasp
from rasp_compiler.engine import Engine, NodePatch
from rasp_compiler.model.outputs import OUTPUT_ATOL, positions_equal
from rasp_compiler.model.patching import HookPatcher, PatchValue
from verify.causal.program import ProgramRunner
from verify.circuit import node_kind
from verify.dataset import CausalError, Dataset, MixedDataset, decode_outputs, is_numerical_output
from verify.truth import annotation_dict

__all__ = [
    "Alignment",
    "IIAResult",
    "counterfactuals",
    "ground_truth_alignments",
    "iia_of_outputs",
    "interchange_accuracy",
]


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
        labels = ProgramRunner(program).by_label
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
    # examples where the swap changes nothing: the variable has the same values in source and base
    # at the swapped positions, so the model agrees trivially. All vacuous: the IIA says nothing.
    n_vacuous: int = 0

    @property
    def vacuous(self) -> bool:
        """True when every defined example was vacuous (the IIA of 1.0 then tests nothing)."""
        return bool(self.agree) and self.n_vacuous == len(self.agree)


def _as_inputs(x: Any) -> list[list[Any]]:
    return [list(v) for v in x]


def interchange_accuracy(
    model: Any,
    alignment: Alignment,
    base_inputs: Sequence[Sequence[Any]] | Dataset | MixedDataset,
    source_inputs: Sequence[Sequence[Any]] | None = None,
    program: Any = None,
    *,
    backend: str = "auto",
    atol: float = OUTPUT_ATOL,
) -> IIAResult:
    """Patch `alignment.component`'s output inside `alignment.subspace` (at `positions`) from each source
    run into its base run, intervene `alignment.variable` likewise in the evaluator; fraction of examples
    whose whole decoded output agrees. A Dataset as `base_inputs` supplies program and source (its
    corrupted inputs). Inputs must share one length (position-wise interchange); a MixedDataset is run
    length by length and the counts added up."""
    if isinstance(base_inputs, MixedDataset):
        parts = [interchange_accuracy(model, alignment, g, program=program, backend=backend, atol=atol)
                 for g in base_inputs.groups]
        agree = [a for p in parts for a in p.agree]
        return IIAResult(alignment, float(np.mean(agree)) if agree else math.nan, sum(p.n for p in parts),
                         sum(p.n_undefined for p in parts), agree, parts[0].backend,
                         sum(p.n_vacuous for p in parts))
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
    prog = ProgramRunner(program, causal=model.config.causal)
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
    return iia_of_outputs(model, alignment, base, source, program, out, backend=used, atol=atol)


def counterfactuals(
    alignment: Alignment,
    base: Sequence[Sequence[Any]],
    source: Sequence[Sequence[Any]],
    program: Any,
    causal: bool = False,
) -> list[tuple[list[Any] | None, bool]]:
    """Per (base, source) pair: the program's output on base with `alignment.variable` taking its source
    values at the alignment's positions (None where the program is then undefined), and whether the swap
    changed nothing (the variable has the same values there). `causal`: as a decoder-only model computes
    it (the model's `config.causal`)."""
    base, source = _as_inputs(base), _as_inputs(source)
    prog = ProgramRunner(program, causal=causal)
    targets = prog.exprs(alignment.variable)
    n = len(base[0])
    positions = list(range(n)) if alignment.positions is None else list(alignment.positions)
    out: list[tuple[list[Any] | None, bool]] = []
    for xs, src in zip(base, source, strict=True):
        sv = prog.values(src)
        cv = prog.values(xs)
        glob = {}
        for t in targets:
            new = list(cv[id(t)])
            for p in positions:
                new[p] = sv[id(t)][p]
            glob[id(t)] = new
        same = all(glob[id(t)] == list(cv[id(t)]) for t in targets)
        try:
            out.append((prog.run(xs, None, glob)[id(prog.program)], same))
        except rasp.RASPEvaluationError:
            out.append((None, same))
    return out


def iia_of_outputs(
    model: Any,
    alignment: Alignment,
    base: Sequence[Sequence[Any]],
    source: Sequence[Sequence[Any]],
    program: Any,
    out: Any,
    *,
    backend: str,
    atol: float = OUTPUT_ATOL,
) -> IIAResult:
    """The interchange accuracy of patched model outputs `[B, T, V]` (however they were computed: the
    engine, PyTorch hooks, or another tool such as pyvene) against the evaluator with the same swap."""
    decoded = decode_outputs(model, np.asarray(out))
    agree: list[bool] = []
    undefined = 0
    vacuous = 0
    wanted = counterfactuals(alignment, base, source, program, model.config.causal)
    for got, (want, same) in zip(decoded, wanted, strict=True):
        if want is None:
            undefined += 1
            continue
        agree.append(all(positions_equal(got, want, is_numerical_output(model), atol)))
        vacuous += same
    iia = float(np.mean(agree)) if agree else math.nan
    return IIAResult(alignment, iia, len(base), undefined, agree, backend, vacuous)
