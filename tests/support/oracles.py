"""Plain-Python reference implementations of every program in `rasp_compiler.rasp.lib`.

Each oracle is written from the program's definition (its docstring), not from its RASP, so that
the library tests compare two independent implementations. `ORACLES` maps each `LIBRARY` name to a
function from an input list to the expected output list (the library entry's default arguments).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any


def length(xs: Sequence[Any]) -> list[int]:
    return [len(xs)] * len(xs)


def reverse(xs: Sequence[Any]) -> list[Any]:
    return list(xs)[::-1]


def frac_prevs(bools: Sequence[bool]) -> list[float]:
    out, seen = [], 0
    for i, b in enumerate(bools):
        seen += 1 if b else 0
        out.append(seen / (i + 1))
    return out


def pair_balance(xs: Sequence[Any], open_token: Any, close_token: Any) -> list[float]:
    out, depth = [], 0
    for i, x in enumerate(xs):
        depth += (x == open_token) - (x == close_token)
        out.append(depth / (i + 1))
    return out


def shuffle_dyck(xs: Sequence[Any], pairs: Sequence[str]) -> list[bool]:
    ok = True
    for open_token, close_token in pairs:
        depth = 0
        for x in xs:
            depth += (x == open_token) - (x == close_token)
            if depth < 0:
                ok = False
        if depth != 0:
            ok = False
    return [ok] * len(xs)


def hist(xs: Sequence[Any]) -> list[int]:
    counts = Counter(xs)
    return [counts[x] for x in xs]


def sort_by(vals: Sequence[Any], keys: Sequence[Any]) -> list[Any]:
    """Stable sort of `vals` by `keys`."""
    order = sorted(range(len(vals)), key=lambda i: keys[i])
    return [vals[i] for i in order]


def sort_freq(xs: Sequence[Any]) -> list[Any]:
    counts = Counter(xs)
    return sort_by(xs, [-counts[x] for x in xs])


def shift(xs: Sequence[Any], offset: int) -> list[Any]:
    n = len(xs)
    return [xs[i - offset] if 0 <= i - offset < n else None for i in range(n)]


def detect(xs: Sequence[Any], pattern: Sequence[Any]) -> list[Any]:
    m = len(pattern)
    return [None if i < m - 1 else list(xs[i - m + 1 : i + 1]) == list(pattern) for i in range(len(xs))]


def count_less_freq(xs: Sequence[Any], n: int) -> list[int]:
    counts = Counter(xs)
    total = sum(1 for x in xs if counts[x] <= n)
    return [total] * len(xs)


def count(xs: Sequence[Any], token: Any) -> list[int]:
    return [list(xs).count(token)] * len(xs)


def prefix_count(xs: Sequence[Any], token: Any) -> list[int]:
    return [list(xs[: i + 1]).count(token) for i in range(len(xs))]


def prefix_parity(xs: Sequence[Any], token: Any = 1) -> list[int]:
    return [c % 2 for c in prefix_count(xs, token)]


def bracket_depth(xs: Sequence[Any], open_token: Any = "(", close_token: Any = ")") -> list[int]:
    return [a - b for a, b in zip(prefix_count(xs, open_token), prefix_count(xs, close_token), strict=True)]


def maximum(xs: Sequence[Any]) -> list[Any]:
    return [max(xs)] * len(xs) if xs else []


def minimum(xs: Sequence[Any]) -> list[Any]:
    return [min(xs)] * len(xs) if xs else []


def second_largest(xs: Sequence[Any]) -> list[Any]:
    distinct = sorted(set(xs))
    return [distinct[-2] if len(distinct) >= 2 else None] * len(xs)


def running_max(xs: Sequence[Any]) -> list[Any]:
    return [max(xs[: i + 1]) for i in range(len(xs))]


def most_frequent(xs: Sequence[Any]) -> list[Any]:
    if not xs:
        return []
    counts = Counter(xs)
    top = max(counts.values())
    return [next(x for x in xs if counts[x] == top)] * len(xs)


def majority(xs: Sequence[Any]) -> list[Any]:
    winners = [x for x, c in Counter(xs).items() if 2 * c > len(xs)]
    return [winners[0] if winners else None] * len(xs)


def is_palindrome(xs: Sequence[Any]) -> list[bool]:
    return [list(xs) == list(xs)[::-1]] * len(xs)


def is_sorted(xs: Sequence[Any]) -> list[bool]:
    return [all(a <= b for a, b in zip(xs, xs[1:], strict=False))] * len(xs)


def first_occurrence(xs: Sequence[Any]) -> list[int]:
    return [list(xs).index(x) for x in xs]


def count_distinct(xs: Sequence[Any]) -> list[int]:
    return [len(set(xs))] * len(xs)


def dedup(xs: Sequence[Any]) -> list[Any]:
    seen: list[Any] = []
    for x in xs:
        if x not in seen:
            seen.append(x)
    return seen + [None] * (len(xs) - len(seen))


def induction(xs: Sequence[Any]) -> list[Any]:
    out = []
    for i, x in enumerate(xs):
        previous = [j for j in range(i) if xs[j] == x]
        out.append(xs[previous[-1] + 1] if previous else None)
    return out


ORACLES: dict[str, Callable[[Sequence[Any]], list[Any]]] = {
    "length": length,
    "reverse": reverse,
    "pair_balance": lambda xs: pair_balance(xs, "(", ")"),
    "shuffle_dyck": lambda xs: shuffle_dyck(xs, ["()"]),
    "shuffle_dyck2": lambda xs: shuffle_dyck(xs, ["()", "{}"]),
    "hist": hist,
    "sort_unique": sorted,
    "sort": sorted,
    "sort_freq": sort_freq,
    "frac_prevs": lambda xs: frac_prevs([x == "a" for x in xs]),
    "shift_by": lambda xs: shift(xs, 1),
    "detect_pattern": lambda xs: detect(xs, "abc"),
    "count_less_freq": lambda xs: count_less_freq(xs, 2),
    "count": lambda xs: count(xs, "a"),
    "nary_sequencemap": lambda xs: [x * (len(xs) - i) for i, x in enumerate(xs)],
    "prefix_count": lambda xs: prefix_count(xs, "a"),
    "prefix_parity": prefix_parity,
    "bracket_depth": bracket_depth,
    "max": maximum,
    "min": minimum,
    "second_largest": second_largest,
    "running_max": running_max,
    "most_frequent": most_frequent,
    "majority": majority,
    "is_palindrome": is_palindrome,
    "is_sorted": is_sorted,
    "first_occurrence": first_occurrence,
    "count_distinct": count_distinct,
    "dedup": dedup,
    "induction": induction,
    "causal_induction": induction,  # the same answers, computed from earlier positions only
}
