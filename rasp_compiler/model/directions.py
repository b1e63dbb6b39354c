"""Residual directions: what each labelled basis vector of the residual stream stands for.

A direction is one value of a categorical variable (`tokens:a`, `sort:3`), a numerical variable or the
constant (`frac`, `one`), or a hidden helper the compiler adds for a variable (`length__bos_frac`).
The string form is the residual label stored in configs, annotations and circuits; `Direction.parse`
is the one way back from a label to its parts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

__all__ = ["Direction", "helper", "label_variables", "variable_of"]

_VALUE_SEP = ":"
_ROLE_SEP = "__"


@dataclasses.dataclass(frozen=True)
class Direction:
    """A residual direction: `variable`, and either a categorical `value` (its text) or a helper `role`."""

    variable: str
    value: str | None = None
    role: str | None = None

    def __str__(self) -> str:
        if self.value is not None:
            return f"{self.variable}{_VALUE_SEP}{self.value}"
        if self.role is not None:
            return f"{self.variable}{_ROLE_SEP}{self.role}"
        return self.variable

    @property
    def is_helper(self) -> bool:
        return self.role is not None

    @classmethod
    def parse(cls, label: str, variables: Iterable[str] = ()) -> Direction:
        """The direction a residual label names.

        `"tokens:a"` is value `a` of `tokens`; `"frac"` and `"one"` are whole variables; `"x__role"` is a
        helper of `x` when `x` is one of `variables` (the other labels' variables), since a variable's
        own name may contain `__`.
        """
        if _VALUE_SEP in label:
            variable, value = label.split(_VALUE_SEP, 1)
            return cls(variable, value=value)
        if _ROLE_SEP in label:
            head, role = label.rsplit(_ROLE_SEP, 1)
            if head in set(variables):
                return cls(head, role=role)
        return cls(label)


def variable_of(label: str, variables: Iterable[str] = ()) -> str:
    """The RASP variable a residual label belongs to (`Direction.parse(label, variables).variable`)."""
    return Direction.parse(label, variables).variable


def helper(variable: str, role: str) -> str:
    """The label of a helper direction of `variable`."""
    return str(Direction(variable, role=role))


def label_variables(labels: Iterable[str]) -> set[str]:
    """The variables a list of residual labels names: those of its value directions, and every label
    that is a whole variable (not helper-shaped). `variable_of(label, label_variables(labels))` then
    resolves helpers exactly."""
    labels = list(labels)
    named = {d.variable for d in map(Direction.parse, labels) if d.value is not None}
    return named | {lab for lab in labels if _ROLE_SEP not in lab}
