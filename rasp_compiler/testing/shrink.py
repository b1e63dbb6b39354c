"""Program shrinking: smaller programs derived from a failing one, for campaigns that minimise what they
found (the compiler campaign here, tool fuzzing in `verify.tool_fuzz`)."""

from __future__ import annotations

from typing import Any

from rasp_compiler import rasp

__all__ = ["program_size", "smaller_programs", "substitute", "total_on"]


def program_size(program: Any) -> int:
    """Number of ops (expressions with children): the measure shrinking decreases."""
    return sum(1 for e in rasp.topological_order(program) if e.children)


def _rebuild(e: Any, kids: list) -> Any:
    """`e` with new children, same function/predicate/default and annotations (name, encoding)."""
    if isinstance(e, rasp.Map):
        new = rasp.Map(e.f, kids[0], simplify=False)
    elif isinstance(e, rasp.LinearSequenceMap):
        new = rasp.LinearSequenceMap(kids[0], kids[1], e.fst_fac, e.snd_fac)
    elif isinstance(e, rasp.SequenceMap):
        new = rasp.SequenceMap(e.f, kids[0], kids[1])
    elif isinstance(e, rasp.Select):
        new = rasp.Select(kids[0], kids[1], e.predicate)
    elif isinstance(e, rasp.Aggregate):
        new = rasp.Aggregate(kids[0], kids[1], default=e.default)
    elif isinstance(e, rasp.SelectorWidth):
        new = rasp.SelectorWidth(kids[0])
    elif isinstance(e, rasp.SelectorAnd):
        new = rasp.SelectorAnd(kids[0], kids[1])
    elif isinstance(e, rasp.SelectorOr):
        new = rasp.SelectorOr(kids[0], kids[1])
    elif isinstance(e, rasp.SelectorNot):
        new = rasp.SelectorNot(kids[0])
    else:
        raise TypeError(f"cannot rebuild {type(e).__name__}")
    return rasp.annotate(new, **dict(e.annotations))


def substitute(program: Any, target: Any, replacement: Any) -> Any:
    """The program with every use of `target` replaced by `replacement` (shared nodes stay shared)."""
    new: dict[int, Any] = {id(target): replacement}
    for e in rasp.topological_order(program):
        if id(e) in new or not e.children:
            continue
        kids = [new.get(id(c), c) for c in e.children]
        if any(k is not c for k, c in zip(kids, e.children, strict=True)):
            new[id(e)] = _rebuild(e, kids)
    return new.get(id(program), program)


def smaller_programs(program: Any) -> list[Any]:
    """Smaller programs: sub-programs, then the program with one op bypassed (a combinator replaced by
    one of its selectors, an SOp by a child of the same encoding)."""
    order = rasp.topological_order(program)
    subs = [e for e in order if isinstance(e, rasp.SOp) and e.children and e is not program]
    subs.sort(key=program_size)
    out = list(subs)
    for e in order:
        if isinstance(e, (rasp.SelectorAnd, rasp.SelectorOr, rasp.SelectorNot)):
            options = [c for c in e.children if isinstance(c, rasp.Selector)]
        elif isinstance(e, rasp.SOp) and e.children and e is not program:
            options = [c for c in e.children
                       if isinstance(c, rasp.SOp) and rasp.get_encoding(c) == rasp.get_encoding(e)]
        else:
            continue
        for c in options:
            try:
                out.append(substitute(program, e, c))
            except (TypeError, ValueError):
                continue
    return out


def total_on(program: Any, inputs: list[list]) -> bool:
    """Every SOp evaluates without error or None on `inputs`: the candidate is still a valid test."""
    try:
        for e in rasp.topological_order(program):
            if isinstance(e, rasp.SOp):
                for xs in inputs:
                    if any(v is None for v in rasp.evaluate(e, xs)):
                        return False
    except Exception:  # noqa: BLE001
        return False
    return True
