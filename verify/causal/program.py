"""The program side of the ablation-aware truth: the evaluator with per-reader interventions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rasp_compiler import rasp
from verify.dataset import CausalError


class ProgramRunner:
    """A program's expressions indexed by the compiler's op labels (`rasp.distinct_labels`)."""

    def __init__(self, program: Any, causal: bool = False) -> None:
        self.program = program
        self.order = rasp.topological_order(program)
        # the compiler's names (`rasp.distinct_labels`: a later op reusing a label is `label#2`, ...)
        self.by_label: dict[str, list[Any]] = {
            label: [e] for e, label in zip(self.order, rasp.distinct_labels(self.order), strict=True)
        }
        self.ev = rasp.Evaluator(causal=causal)  # causal: what a decoder-only model computes

    def exprs(self, label: str) -> list[Any]:
        if label not in self.by_label:
            raise CausalError(f"the program has no op {label!r} (the model's annotation names it)")
        return self.by_label[label]

    def values(self, xs: list[Any]) -> dict[int, Any]:
        """Every expression's value (by id) on `xs`."""
        vals: dict[int, Any] = {}
        for node in self.order:
            vals[id(node)] = self.ev.step(node, vals, xs)
        return vals

    def _selector(
        self, sel: Any, vals: dict[int, Any], xs: list[Any], q_ov: Mapping[int, Any], k_ov: Mapping[int, Any]
    ) -> Any:
        """A selector's matrix with the keys / queries of its Selects overridden (by child id)."""
        kind = type(sel).__name__
        if isinstance(sel, rasp.Select):
            keys = k_ov.get(id(sel.keys), vals[id(sel.keys)])
            queries = q_ov.get(id(sel.queries), vals[id(sel.queries)])
            return self.ev.restrict(sel, [[bool(sel.predicate(k, q)) for k in keys] for q in queries])
        if kind in ("SelectorAnd", "SelectorOr", "SelectorNot"):
            local = dict(vals)
            for child in sel.children:
                local[id(child)] = self._selector(child, vals, xs, q_ov, k_ov)
            return self.ev.step(sel, local, xs)
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
                value = self.ev.step(node, vals, xs)
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
                value = self.ev.step(node, local, xs)
            if id(node) in global_ov:
                value = list(global_ov[id(node)])
            vals[id(node)] = value
        return vals
