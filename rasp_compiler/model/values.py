"""Token values: one total order over mixed types, dictionary keys, and a lossless JSON form."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from fractions import Fraction
from typing import Any

import numpy as np

from rasp_compiler.model.errors import ModelError

__all__ = [
    "decode_value",
    "encode_value",
    "is_number",
    "plain_json",
    "sort_values",
    "token_key",
    "value_sort_key",
]


def is_number(value: Any) -> bool:
    """Whether a RASP value is a number for arithmetic: int, float, Fraction or numpy scalar (bools
    count, as in Python), and not NaN."""
    if isinstance(value, np.generic):
        value = value.item()
    return isinstance(value, (int, float, Fraction)) and not (isinstance(value, float) and math.isnan(value))


_TYPE_RANK = {bool: 0, int: 1, float: 1, str: 2, type(None): 3, tuple: 4}


def value_sort_key(value: Any) -> tuple:
    """A total, deterministic order on token values of mixed types.

    Values of one kind compare natively (numbers by size, strings lexicographically); kinds are
    ordered bool < number < str < None < tuple < anything else, so `sorted({1, "a", 2.5})` never
    depends on set iteration order or raises a TypeError.
    """
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return (1, math.inf, 1)
        return (1, value, 0)
    if isinstance(value, str):
        return (2, value)
    if value is None:
        return (3,)
    if isinstance(value, tuple):
        return (4, tuple(value_sort_key(v) for v in value))
    return (5, type(value).__name__, repr(value))


def sort_values(values: Iterable[Any]) -> list[Any]:
    """Sort a collection of token values with `value_sort_key` (duplicates removed)."""
    seen: dict[Any, Any] = {}
    for v in values:
        seen.setdefault(token_key(v), v)
    return sorted(seen.values(), key=value_sort_key)


def token_key(value: Any) -> Hashable:
    """Dictionary key of a token: `True` and `1` are different tokens, `1` and `1.0` the same number."""
    if isinstance(value, np.generic):
        value = value.item()
    return (isinstance(value, bool), value)


def encode_value(value: Any) -> list:
    """A token value as a JSON-able `[type, payload]` pair that `decode_value` inverts exactly.

    Floats travel as `repr` strings so that inf/nan and every bit survive; tuples recursively.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        return ["int", value]
    if isinstance(value, float):
        return ["float", repr(value)]
    if isinstance(value, str):
        return ["str", value]
    if value is None:
        return ["none", None]
    if isinstance(value, tuple):
        return ["tuple", [encode_value(v) for v in value]]
    raise ModelError(f"token value {value!r} of type {type(value).__name__} cannot be saved "
                     "(supported: bool, int, float, str, None, tuple)")


def decode_value(data: Any) -> Any:
    """Inverse of `encode_value`."""
    if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], str)):
        raise ModelError(f"malformed saved token value {data!r}")
    kind, payload = data
    if kind == "bool" and isinstance(payload, bool):
        return payload
    if kind == "int" and isinstance(payload, int) and not isinstance(payload, bool):
        return payload
    if kind == "float" and isinstance(payload, str):
        try:
            return float(payload)
        except ValueError:
            pass
    if kind == "str" and isinstance(payload, str):
        return payload
    if kind == "none" and payload is None:
        return None
    if kind == "tuple" and isinstance(payload, list):
        return tuple(decode_value(v) for v in payload)
    raise ModelError(f"malformed saved token value {data!r}")


def plain_json(value: Any) -> Any:
    """A value as plain JSON for people and other tools (lossy; `encode_value` is the lossless form):
    tuples and lists become lists, numpy scalars Python numbers, Fractions floats, non-finite floats and
    anything else their repr."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (tuple, list)):
        return [plain_json(v) for v in value]
    if isinstance(value, Fraction):
        return float(value)
    return repr(value)
