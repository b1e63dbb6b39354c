"""A library of RASP programs that a tracr-style compiler can turn into transformers.

The first half offers every program of tracr's ``compiler/lib.py`` under the same names, signatures
and labels, so a program built from either library evaluates the same way. The second half adds
more programs (min/max, induction, dedup, palindromes, ...), each written so that it compiles:

* a categorical ``Aggregate`` only ever selects keys that all hold the same value (usually one key),
* a numerical ``Aggregate`` only averages a numerical SOp whose values lie in {0, 1}, default 0,
* counting is done with ``SelectorWidth``, everything else with ``Map``/``SequenceMap`` over small,
  finite value sets.

``LIBRARY`` lists every program with a default instance, a vocabulary, a maximum length and example
inputs, so demos, compiler tests and the command line can iterate over all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rasp_compiler import rasp

# ---------------------------------------------------------------------------------------------
# tracr's library (same names, signatures and labels)
# ---------------------------------------------------------------------------------------------


def make_length() -> rasp.SOp:
    """Length of the input at every position, counted by a selector that selects everything.

    Example: ``make_length()("abcd") == [4, 4, 4, 4]``.
    """
    select_all = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE).named("all_true_selector")
    return rasp.SelectorWidth(select_all).named("length")


# tracr exposes a ready-made `length`; programs that share it share one node (and one label).
length = make_length()


def make_reverse(sop: rasp.SOp) -> rasp.SOp:
    """`sop` read back to front: position i takes the value at position length - 1 - i.

    Example: ``make_reverse(rasp.tokens)("abc") == ["c", "b", "a"]``.
    """
    opp_idx = (length - rasp.indices).named("opp_idx")
    opp_idx = (opp_idx - 1).named("opp_idx-1")
    flip = rasp.Select(rasp.indices, opp_idx, rasp.Comparison.EQ).named("reverse_selector")
    return rasp.Aggregate(flip, sop).named("reverse")


def make_frac_prevs(bools: rasp.SOp) -> rasp.SOp:
    """Fraction of positions 0..i where `bools` is true (numerical).

    Example: ``make_frac_prevs(rasp.tokens == "a")("aba") == [1.0, 0.5, 2/3]``.
    """
    bools = rasp.numerical(bools)
    up_to_here = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ)
    return rasp.numerical(rasp.Aggregate(up_to_here, bools, default=0)).named("frac_prevs")


def make_pair_balance(sop: rasp.SOp, open_token: str, close_token: str) -> rasp.SOp:
    """Running (fraction of `open_token`) minus (fraction of `close_token`) over positions 0..i.

    Non-negative everywhere and zero at the end means the brackets are balanced.
    Example: ``make_pair_balance(rasp.tokens, "(", ")")("(()") == [1.0, 1.0, 1/3]``.
    """
    bools_open = rasp.numerical(sop == open_token).named("bools_open")
    opens = rasp.numerical(make_frac_prevs(bools_open)).named("opens")
    bools_close = rasp.numerical(sop == close_token).named("bools_close")
    closes = rasp.numerical(make_frac_prevs(bools_close)).named("closes")
    balance = rasp.numerical(rasp.LinearSequenceMap(opens, closes, 1, -1))
    return balance.named("pair_balance")


def make_shuffle_dyck(pairs: list[str]) -> rasp.SOp:
    """True at every position iff each bracket pair in `pairs` is balanced on its own.

    Each pair is a two-character string "<open><close>"; other tokens are ignored.
    Example: ``make_shuffle_dyck(["()", "{}"])("({)}") == [True] * 4``; ``"())("`` gives all False.
    """
    if len(pairs) < 1:
        raise ValueError("make_shuffle_dyck: `pairs` must name at least one bracket pair")
    balances = []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"make_shuffle_dyck: bracket pair {pair!r} must have exactly two tokens")
        open_token, close_token = pair
        balances.append(make_pair_balance(rasp.tokens, open_token, close_token).named(f"balance_{pair}"))

    any_negative = balances[0] < 0
    for balance in balances[1:]:
        any_negative = any_negative | (balance < 0)
    any_negative = rasp.numerical(rasp.Map(lambda x: x, any_negative)).named("any_negative")
    select_all = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.TRUE).named("select_all")
    has_neg = rasp.numerical(rasp.Aggregate(select_all, any_negative, default=0)).named("has_neg")

    all_zero = balances[0] == 0
    for balance in balances[1:]:
        all_zero = all_zero & (balance == 0)
    select_last = rasp.Select(rasp.indices, length - 1, rasp.Comparison.EQ).named("select_last")
    last_zero = rasp.Aggregate(select_last, all_zero).named("last_zero")

    not_has_neg = (~has_neg).named("not_has_neg")
    return (last_zero & not_has_neg).named("shuffle_dyck")


def make_shuffle_dyck2() -> rasp.SOp:
    """`make_shuffle_dyck` for the pairs "()" and "{}".

    Example: ``make_shuffle_dyck2()("({})") == [True] * 4``.
    """
    return make_shuffle_dyck(pairs=["()", "{}"]).named("shuffle_dyck2")


def make_hist() -> rasp.SOp:
    """How often each position's token occurs in the whole input.

    Example: ``make_hist()("abac") == [2, 1, 2, 1]``.
    """
    same_tok = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ).named("same_tok")
    return rasp.SelectorWidth(same_tok).named("hist")


def make_sort_unique(vals: rasp.SOp, keys: rasp.SOp) -> rasp.SOp:
    """`vals` ordered by ascending `keys`; the keys must be pairwise distinct.

    Position p receives the value whose key has exactly p smaller keys.
    Example: ``make_sort_unique(rasp.tokens, rasp.tokens)([3, 1, 2]) == [1, 2, 3]``.
    """
    smaller = rasp.Select(keys, keys, rasp.Comparison.LT).named("smaller")
    target_pos = rasp.SelectorWidth(smaller).named("target_pos")
    sel_new = rasp.Select(target_pos, rasp.indices, rasp.Comparison.EQ)
    # agreeing: with distinct keys one position is selected (declared for keys the compiler cannot prove)
    return rasp.Aggregate(sel_new, vals).named("sort").annotated(agreeing=True)


def make_sort(vals: rasp.SOp, keys: rasp.SOp, *, max_seq_len: int, min_key: float) -> rasp.SOp:
    """`vals` stably ordered by ascending numeric `keys`, which may repeat.

    Ties are broken by position: key + min_key * i / max_seq_len is unique as long as `min_key` is at
    most the smallest gap between distinct keys and inputs are at most `max_seq_len` long.
    Example: ``make_sort(rasp.tokens, rasp.tokens, max_seq_len=5, min_key=1)([2, 1, 2]) == [1, 2, 2]``.
    """
    keys = rasp.SequenceMap(lambda x, i: x + min_key * i / max_seq_len, keys, rasp.indices)
    return make_sort_unique(vals, keys)


def make_sort_freq(max_seq_len: int) -> rasp.SOp:
    """Tokens ordered by descending frequency; equally frequent tokens keep their input order.

    Example: ``make_sort_freq(5)([2, 4, 2, 1]) == [2, 2, 4, 1]``.
    """
    hist = -1 * make_hist().named("hist")
    return make_sort(rasp.tokens, hist, max_seq_len=max_seq_len, min_key=1).named("sort_freq")


def shift_by(offset: int, /, sop: rasp.SOp) -> rasp.SOp:
    """`sop` moved `offset` positions to the right (left if negative); vacated positions are None.

    Example: ``shift_by(1, rasp.tokens)("abc") == [None, "a", "b"]``.
    """
    select_off_by_offset = rasp.Select(rasp.indices, rasp.indices, lambda k, q: q == k + offset)
    return rasp.Aggregate(select_off_by_offset, sop, default=None).named(f"shift_by({offset})")


def detect_pattern(sop: rasp.SOp, pattern: Sequence[Any]) -> rasp.SOp:
    """True at i iff `sop` at positions i-len(pattern)+1..i spells `pattern`.

    The first len(pattern) - 1 positions cannot end a match and are None.
    Example: ``detect_pattern(rasp.tokens, "ab")("abab") == [None, True, False, True]``.
    """
    if len(pattern) < 1:
        raise ValueError(f"detect_pattern: `pattern` must have at least one element, got {pattern!r}")
    # detectors[d] is true at i iff the element d places before the pattern's end occurs at i - d.
    detectors = []
    for back, element in enumerate(reversed(pattern)):
        detector = sop == element
        if back:
            detector = shift_by(back, detector)
        detectors.append(detector)
    detected = detectors.pop()
    while detectors:
        detected = detected & detectors.pop()
    return detected.named(f"detect_pattern({pattern})")


def make_count_less_freq(n: int) -> rasp.SOp:
    """Number of positions whose token occurs at most `n` times in the input (at every position).

    (tracr's docstring says "fewer than n"; its program, and this one, count `<= n`.)
    Example: ``make_count_less_freq(2)("aaabbc") == [3] * 6`` (the b, b and c positions).
    """
    hist = make_hist().named("hist")
    select_less = rasp.Select(hist, hist, lambda x, y: x <= n).named("select_less")
    return rasp.SelectorWidth(select_less).named("count_less_freq")


def make_count(sop: rasp.SOp, token: Any) -> rasp.SOp:
    """Number of positions where `sop` equals `token` (at every position).

    Example: ``make_count(rasp.tokens, "a")("abca") == [2, 2, 2, 2]``.
    """
    return rasp.SelectorWidth(rasp.Select(sop, sop, lambda k, q: k == token)).named(f"count_{token}")


def make_nary_sequencemap(f: Callable[..., Any], *sops: rasp.SOp) -> rasp.SOp:
    """Elementwise f(x1, ..., xn) over n SOps, built from binary SequenceMaps over tuples.

    The tuple-valued intermediates are categorical and their value sets multiply, so keep the
    inputs' value sets small. With a single SOp this is just Map(f, sop) (tracr would unpack the value
    into f's arguments). Example:
    ``make_nary_sequencemap(lambda a, b, c: a + b + c, rasp.tokens, rasp.indices, rasp.tokens)([1, 2])
    == [2, 5]``.
    """
    if not sops:
        raise ValueError("make_nary_sequencemap: needs at least one SOp")
    if len(sops) == 1:
        return rasp.Map(f, sops[0])
    first, second, *rest = sops
    # Build the tuple explicitly (tracr tests isinstance(x, tuple), which breaks on tuple values).
    values = rasp.SequenceMap(lambda x, y: (x, y), first, second)
    for sop in rest:
        values = rasp.SequenceMap(lambda xs, y: (*xs, y), values, sop)
    return rasp.Map(lambda args: f(*args), values)


# ---------------------------------------------------------------------------------------------
# More programs
# ---------------------------------------------------------------------------------------------


def _select_where(flags: rasp.SOp, name: str) -> rasp.Selector:
    """Selects, for every query, the keys whose boolean `flags` is true (query-independent)."""
    return rasp.Select(flags, rasp.indices, lambda k, q: bool(k)).named(name)


def _value_at(sop: rasp.SOp, prefix: str) -> rasp.SOp:
    """(value, position) pairs: distinct at every position, so ties can be broken by position."""
    return rasp.SequenceMap(lambda x, i: (x, i), sop, rasp.indices).named(f"{prefix}_value_at")


def _pick(flags: rasp.SOp, sop: rasp.SOp, name: str) -> rasp.SOp:
    """Copies `sop` from the one position whose flag is true (None if there is none)."""
    return rasp.Aggregate(_select_where(flags, f"{name}_select"), sop).named(name).annotated(agreeing=True)


def _occurrence(sop: rasp.SOp, prefix: str) -> rasp.SOp:
    """How many earlier positions hold the same value: 0 at a value's first occurrence."""
    at = _value_at(sop, prefix)
    earlier_same = rasp.Select(at, at, lambda k, q: k[0] == q[0] and k[1] < q[1]).named(
        f"{prefix}_earlier_same"
    )
    return rasp.SelectorWidth(earlier_same).named(f"{prefix}_occurrence")


def make_prefix_count(sop: rasp.SOp, token: Any) -> rasp.SOp:
    """How many of positions 0..i hold `token` (categorical count).

    Example: ``make_prefix_count(rasp.tokens, "a")("abaa") == [1, 1, 2, 3]``.
    """
    marked = rasp.SequenceMap(lambda x, i: i if x == token else -1, sop, rasp.indices).named(
        f"prefix_count_{token}_marked"
    )
    before = rasp.Select(marked, rasp.indices, lambda k, q: 0 <= k <= q).named(f"prefix_count_{token}_select")
    return rasp.SelectorWidth(before).named(f"prefix_count_{token}")


def make_prefix_parity(sop: rasp.SOp, token: Any = 1) -> rasp.SOp:
    """Parity (0 or 1) of the number of `token`s among positions 0..i: running XOR of a bit string.

    Example: ``make_prefix_parity(rasp.tokens)([1, 0, 1, 1]) == [1, 1, 0, 1]``.
    """
    return rasp.Map(lambda c: c % 2, make_prefix_count(sop, token)).named("prefix_parity")


def make_bracket_depth(sop: rasp.SOp, open_token: Any = "(", close_token: Any = ")") -> rasp.SOp:
    """Nesting depth after position i: opens minus closes among positions 0..i (may go negative).

    Example: ``make_bracket_depth(rasp.tokens)("(()))") == [1, 2, 1, 0, -1]``.
    """
    opens = make_prefix_count(sop, open_token)
    closes = make_prefix_count(sop, close_token)
    return rasp.SequenceMap(lambda a, b: a - b, opens, closes).named("bracket_depth")


def make_max(sop: rasp.SOp) -> rasp.SOp:
    """The largest value of `sop` over the whole input, at every position.

    The value is copied from the first position holding it, so exactly one key is selected.
    Example: ``make_max(rasp.tokens)([2, 5, 1]) == [5, 5, 5]``.
    """
    at = _value_at(sop, "max")
    ahead = rasp.Select(at, at, lambda k, q: k[0] > q[0] or (k[0] == q[0] and k[1] < q[1])).named("max_ahead")
    is_max = rasp.Map(lambda w: w == 0, rasp.SelectorWidth(ahead).named("max_n_ahead")).named("is_max")
    return _pick(is_max, sop, "max")


def make_min(sop: rasp.SOp) -> rasp.SOp:
    """The smallest value of `sop` over the whole input, at every position.

    The value is copied from the first position holding it, so exactly one key is selected.
    Example: ``make_min(rasp.tokens)([2, 5, 1]) == [1, 1, 1]``.
    """
    at = _value_at(sop, "min")
    ahead = rasp.Select(at, at, lambda k, q: k[0] < q[0] or (k[0] == q[0] and k[1] < q[1])).named("min_ahead")
    is_min = rasp.Map(lambda w: w == 0, rasp.SelectorWidth(ahead).named("min_n_ahead")).named("is_min")
    return _pick(is_min, sop, "min")


def make_second_largest(sop: rasp.SOp) -> rasp.SOp:
    """The second largest distinct value of `sop` at every position; None if all values are equal.

    Example: ``make_second_largest(rasp.tokens)([3, 1, 3, 2]) == [2, 2, 2, 2]``.
    """
    greater = rasp.Select(sop, sop, rasp.Comparison.GT).named("second_greater")
    is_max = rasp.Map(lambda w: w == 0, rasp.SelectorWidth(greater).named("second_n_greater")).named(
        "second_is_max"
    )
    tagged = rasp.SequenceMap(lambda a, m: (a, m), _value_at(sop, "second"), is_max).named("second_tagged")

    # k is ahead of q if k is not a maximum and holds a larger value, or the same value earlier.
    def ahead(k: Any, q: Any) -> bool:
        (kx, ki), k_is_max = k
        (qx, qi), _ = q
        return (not k_is_max) and (kx > qx or (kx == qx and ki < qi))

    n_ahead = rasp.SelectorWidth(rasp.Select(tagged, tagged, ahead).named("second_ahead")).named(
        "second_n_ahead"
    )
    is_second = rasp.SequenceMap(lambda t, w: (not t[1]) and w == 0, tagged, n_ahead).named("is_second")
    return _pick(is_second, sop, "second_largest")


def make_running_max(sop: rasp.SOp, values: Sequence[Any]) -> rasp.SOp:
    """Prefix maximum: the largest value of `sop` among positions 0..i.

    `values` must list every value `sop` can take. One numerical head per value above the
    smallest asks "has a value >= v been seen yet?", and a chain of SequenceMaps picks the largest
    v for which the answer is yes.
    Example: ``make_running_max(rasp.tokens, [0, 1, 2, 3])([1, 0, 3, 2]) == [1, 1, 3, 3]``.
    """
    ordered = sorted(set(values))
    if not ordered:
        raise ValueError("make_running_max: `values` must list the values the SOp can take")
    if len(ordered) == 1:
        return rasp.Map(lambda x: x, sop, simplify=False).named("running_max")
    up_to_here = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ).named("running_max_prefix")
    result: rasp.SOp | None = None
    for v in ordered[1:]:
        at_least = rasp.numerical(rasp.Map(lambda x, v=v: 1 if x >= v else 0, sop)).named(
            f"running_max_ge_{v}"
        )
        frac = rasp.numerical(rasp.Aggregate(up_to_here, at_least, default=0)).named(f"running_max_frac_{v}")
        seen = rasp.Map(lambda f: f > 0, frac).named(f"running_max_seen_{v}")
        if result is None:
            low = ordered[0]
            result = rasp.Map(lambda s, v=v, low=low: v if s else low, seen, simplify=False)
        else:
            result = rasp.SequenceMap(lambda r, s, v=v: v if s else r, result, seen)
        result = result.named(f"running_max_upto_{v}")
    return result.named("running_max")


def _first_most_frequent(sop: rasp.SOp, prefix: str) -> tuple[rasp.SOp, rasp.SOp]:
    """(hist, flag): each position's count, and a flag true only at the earliest position holding a
    most frequent value."""
    hist = rasp.SelectorWidth(rasp.Select(sop, sop, rasp.Comparison.EQ).named(f"{prefix}_same")).named(
        f"{prefix}_hist"
    )
    # Positions ordered by (-count, position): the unique minimum is the one to pick.
    rank = rasp.SequenceMap(lambda h, i: (-h, i), hist, rasp.indices).named(f"{prefix}_rank")
    n_ahead = rasp.SelectorWidth(rasp.Select(rank, rank, rasp.Comparison.LT).named(f"{prefix}_ahead")).named(
        f"{prefix}_n_ahead"
    )
    return hist, rasp.Map(lambda w: w == 0, n_ahead).named(f"{prefix}_is_best")


def make_most_frequent(sop: rasp.SOp) -> rasp.SOp:
    """The most frequent value of `sop` at every position; ties go to the value that occurs first.

    Example: ``make_most_frequent(rasp.tokens)("abcb") == ["b"] * 4``, ``("ba") == ["b", "b"]``.
    """
    _, is_best = _first_most_frequent(sop, "mf")
    return _pick(is_best, sop, "most_frequent")


def make_majority(sop: rasp.SOp) -> rasp.SOp:
    """The value held by more than half of the positions, at every position; None if there is none.

    Example: ``make_majority(rasp.tokens)("aba") == ["a"] * 3``, ``("ab") == [None, None]``.
    """
    hist, is_best = _first_most_frequent(sop, "maj")
    is_maj = rasp.SequenceMap(lambda h, n: 2 * h > n, hist, length).named("maj_over_half")
    chosen = rasp.SequenceMap(lambda b, m: b and m, is_best, is_maj).named("is_majority")
    return _pick(chosen, sop, "majority")


def make_is_palindrome(sop: rasp.SOp) -> rasp.SOp:
    """True at every position iff `sop` reads the same backwards.

    Example: ``make_is_palindrome(rasp.tokens)("aba") == [True] * 3``, ``("ab") == [False, False]``.
    """
    mirrored = make_reverse(sop)
    same = rasp.SequenceMap(lambda a, b: a == b, sop, mirrored).named("pal_same")
    n_diff = rasp.SelectorWidth(
        rasp.Select(same, rasp.indices, lambda k, q: not k).named("pal_select_diff")
    ).named("pal_n_diff")
    return rasp.Map(lambda n: n == 0, n_diff).named("is_palindrome")


def make_is_sorted(sop: rasp.SOp) -> rasp.SOp:
    """True at every position iff `sop` is non-decreasing (no earlier position holds a larger value).

    Example: ``make_is_sorted(rasp.tokens)([1, 1, 3]) == [True] * 3``, ``([2, 1]) == [False, False]``.
    """
    at = rasp.SequenceMap(lambda i, x: (i, x), rasp.indices, sop).named("sorted_at")
    inversion = rasp.Select(at, at, lambda k, q: k[0] < q[0] and k[1] > q[1]).named("sorted_inversion")
    n_inv = rasp.SelectorWidth(inversion).named("sorted_n_inversions")
    bad = rasp.Map(lambda w: w > 0, n_inv).named("sorted_bad")
    n_bad = rasp.SelectorWidth(_select_where(bad, "sorted_select_bad")).named("sorted_n_bad")
    return rasp.Map(lambda n: n == 0, n_bad).named("is_sorted")


def make_first_occurrence(sop: rasp.SOp) -> rasp.SOp:
    """Index of the first position holding the same value as position i.

    Example: ``make_first_occurrence(rasp.tokens)("abab") == [0, 1, 0, 1]``.
    """
    occ = _occurrence(sop, "seen")  # not "first": its SelectorWidth would share this op's label
    key = rasp.SequenceMap(lambda x, o: (x, o), sop, occ).named("first_key")
    query = rasp.Map(lambda x: (x, 0), sop).named("first_query")
    select_first = rasp.Select(key, query, rasp.Comparison.EQ).named("first_select")
    return rasp.Aggregate(select_first, rasp.indices).named("first_occurrence").annotated(agreeing=True)


def make_count_distinct(sop: rasp.SOp) -> rasp.SOp:
    """Number of distinct values of `sop`, at every position.

    Example: ``make_count_distinct(rasp.tokens)("abab") == [2, 2, 2, 2]``.
    """
    is_first = rasp.Map(lambda o: o == 0, _occurrence(sop, "distinct")).named("distinct_is_first")
    return rasp.SelectorWidth(_select_where(is_first, "distinct_select")).named("count_distinct")


def make_dedup(sop: rasp.SOp) -> rasp.SOp:
    """The distinct values of `sop` in order of first appearance, then None-padded.

    Example: ``make_dedup(rasp.tokens)("abba") == ["a", "b", None, None]``.
    """
    is_first = rasp.Map(lambda o: o == 0, _occurrence(sop, "dedup")).named("dedup_is_first")
    marked = rasp.SequenceMap(lambda f, i: i if f else -1, is_first, rasp.indices).named("dedup_marked")
    firsts_before = rasp.Select(marked, rasp.indices, lambda k, q: 0 <= k < q).named("dedup_firsts_before")
    rank = rasp.SelectorWidth(firsts_before).named("dedup_rank")
    target = rasp.SequenceMap(lambda f, r: r if f else -1, is_first, rank).named("dedup_target")
    move = rasp.Select(target, rasp.indices, rasp.Comparison.EQ).named("dedup_move")
    return rasp.Aggregate(move, sop).named("dedup").annotated(agreeing=True)


def make_induction(sop: rasp.SOp) -> rasp.SOp:
    """Induction-head lookup: the value that followed the previous occurrence of `sop`[i].

    At i, find the latest j < i with sop[j] == sop[i] and return sop[j + 1]; None if there is no
    such j. The previous occurrence is the unique j whose occurrence number is one less than i's,
    so the lookup selects exactly one key.
    Example: ``make_induction(rasp.tokens)("abcab") == [None, None, None, "b", "c"]``.
    """
    occ = _occurrence(sop, "induction")
    key = rasp.SequenceMap(lambda x, o: (x, o), sop, occ).named("induction_key")
    query = rasp.SequenceMap(lambda x, o: (x, o - 1), sop, occ).named("induction_query")
    following = shift_by(-1, sop)
    lookup = rasp.Select(key, query, rasp.Comparison.EQ).named("induction_select")
    return rasp.Aggregate(lookup, following).named("induction").annotated(agreeing=True)


def make_causal_induction(sop: rasp.SOp) -> rasp.SOp:
    """`make_induction`'s answers computed the way a decoder-only model can: from positions 0..i only.

    A previous-token head copies each position's (value, occurrence number) pair one position on; the
    induction head then selects the key k whose previous pair is (sop[i], occurrence - 1), i.e. k is one
    past the previous occurrence, and copies sop[k]. It compiles with causal=True (make_induction reads
    the *next* token across positions, which a causal model cannot).
    Example: ``make_causal_induction(rasp.tokens)("abcab") == [None, None, None, "b", "c"]``.
    """
    occ = _occurrence(sop, "cind")
    at = rasp.SequenceMap(lambda x, o: (x, o), sop, occ).named("cind_at")
    prev = rasp.Select(rasp.indices, rasp.indices, lambda k, q: k == max(q - 1, 0)).named("cind_prev_select")
    prev_at = rasp.Aggregate(prev, at).named("cind_prev_at")
    # position 0 has no previous token: a key no query (a pair) can equal
    key = rasp.SequenceMap(lambda p, i: p if i > 0 else ("start",), prev_at, rasp.indices).named("cind_key")
    query = rasp.SequenceMap(lambda x, o: (x, o - 1), sop, occ).named("cind_query")
    lookup = rasp.Select(key, query, rasp.Comparison.EQ).named("cind_select")
    return rasp.Aggregate(lookup, sop).named("causal_induction").annotated(agreeing=True)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LibraryEntry:
    """A library program with a default instance and the inputs it is meant for.

    `builder()` returns a fresh program, valid on inputs up to `LIBRARY_MAX_LEN` long;
    `vocab` and `max_seq_len` are what to compile it for by default;
    `examples` are valid inputs; `encoding` is the output SOp's encoding; `distinct_tokens` marks
    programs that are only defined on inputs without repeated tokens.
    """

    builder: Callable[[], rasp.SOp]
    vocab: frozenset
    max_seq_len: int
    examples: list[list[Any]]
    encoding: str = "categorical"
    distinct_tokens: bool = False
    summary: str = field(default="")


def _entry(
    builder: Callable[[], rasp.SOp],
    vocab: Sequence[Any],
    max_seq_len: int,
    examples: list[list[Any]],
    **kw: Any,
) -> LibraryEntry:
    return LibraryEntry(builder, frozenset(vocab), max_seq_len, examples, **kw)


_ABC = ("a", "b", "c")

# Every default program is correct on inputs up to this long, whatever size it is compiled for (the
# sorts use it to break ties); `LibraryEntry.max_seq_len` is just a small size to compile by default.
LIBRARY_MAX_LEN = 16

LIBRARY: dict[str, LibraryEntry] = {
    # tracr's programs
    "length": _entry(make_length, _ABC, 5, [["a", "b", "c"], ["a"]], summary="input length"),
    "reverse": _entry(
        lambda: make_reverse(rasp.tokens),
        _ABC,
        5,
        [["a", "b", "c"], ["c", "a", "a", "b"]],
        summary="tokens reversed",
    ),
    "pair_balance": _entry(
        lambda: make_pair_balance(rasp.tokens, "(", ")"),
        ("(", ")", "a"),
        5,
        [["(", "(", ")"], ["a", ")", "("]],
        encoding="numerical",
        summary="running fraction of '(' minus fraction of ')'",
    ),
    "shuffle_dyck": _entry(
        lambda: make_shuffle_dyck(["()"]),
        ("(", ")", "a"),
        6,
        [["(", ")"], ["(", "a", ")", ")"], [")", "("]],
        summary="balanced ()",
    ),
    "shuffle_dyck2": _entry(
        make_shuffle_dyck2,
        ("(", ")", "{", "}"),
        6,
        [["(", "{", ")", "}"], ["(", ")", "}"]],
        summary="() and {} each balanced",
    ),
    "hist": _entry(make_hist, _ABC, 5, [["a", "b", "a", "c"]], summary="count of own token"),
    "sort_unique": _entry(
        lambda: make_sort_unique(rasp.tokens, rasp.tokens),
        (1, 2, 3, 4, 5),
        5,
        [[3, 1, 2], [5, 4, 3, 2, 1]],
        distinct_tokens=True,
        summary="sort distinct tokens",
    ),
    "sort": _entry(
        lambda: make_sort(rasp.tokens, rasp.tokens, max_seq_len=LIBRARY_MAX_LEN, min_key=1),
        (1, 2, 3, 4),
        5,
        [[2, 1, 2], [4, 4, 1, 3, 1]],
        summary="stable sort",
    ),
    "sort_freq": _entry(
        lambda: make_sort_freq(LIBRARY_MAX_LEN),
        (1, 2, 3),
        5,
        [[2, 3, 2, 1], [1, 1, 3, 3, 3]],
        summary="tokens by descending frequency",
    ),
    "frac_prevs": _entry(
        lambda: make_frac_prevs(rasp.tokens == "a"),
        ("a", "b"),
        5,
        [["a", "b", "a"]],
        encoding="numerical",
        summary="running fraction of 'a'",
    ),
    "shift_by": _entry(
        lambda: shift_by(1, rasp.tokens), _ABC, 5, [["a", "b", "c"]], summary="tokens shifted right by one"
    ),
    "detect_pattern": _entry(
        lambda: detect_pattern(rasp.tokens, "abc"),
        _ABC,
        6,
        [["a", "b", "c", "a", "b", "c"], ["c", "a", "b"]],
        summary="ends of 'abc'",
    ),
    "count_less_freq": _entry(
        lambda: make_count_less_freq(2),
        _ABC,
        5,
        [["a", "a", "a", "b", "b"]],
        summary="positions whose token occurs <= 2 times",
    ),
    "count": _entry(lambda: make_count(rasp.tokens, "a"), _ABC, 5, [["a", "b", "a"]], summary="count of 'a'"),
    "nary_sequencemap": _entry(
        lambda: make_nary_sequencemap(lambda x, i, n: x * (n - i), rasp.tokens, rasp.indices, length),
        (0, 1, 2),
        4,
        [[1, 2, 0, 1]],
        summary="token times distance from the end",
    ),
    # further programs
    "prefix_count": _entry(
        lambda: make_prefix_count(rasp.tokens, "a"),
        ("a", "b"),
        5,
        [["a", "b", "a", "a"]],
        summary="running count of 'a'",
    ),
    "prefix_parity": _entry(
        lambda: make_prefix_parity(rasp.tokens), (0, 1), 6, [[1, 0, 1, 1]], summary="running parity of ones"
    ),
    "bracket_depth": _entry(
        lambda: make_bracket_depth(rasp.tokens),
        ("(", ")"),
        6,
        [["(", "(", ")", ")", ")"]],
        summary="nesting depth",
    ),
    "max": _entry(lambda: make_max(rasp.tokens), (1, 2, 3, 4), 5, [[2, 4, 1]], summary="maximum token"),
    "min": _entry(lambda: make_min(rasp.tokens), (1, 2, 3, 4), 5, [[2, 4, 1]], summary="minimum token"),
    "second_largest": _entry(
        lambda: make_second_largest(rasp.tokens),
        (1, 2, 3, 4),
        5,
        [[3, 1, 3, 2], [2, 2]],
        summary="second largest distinct token",
    ),
    "running_max": _entry(
        lambda: make_running_max(rasp.tokens, [0, 1, 2, 3]),
        (0, 1, 2, 3),
        5,
        [[1, 0, 3, 2]],
        summary="prefix maximum",
    ),
    "most_frequent": _entry(
        lambda: make_most_frequent(rasp.tokens),
        _ABC,
        5,
        [["a", "b", "c", "b"]],
        summary="most frequent token, ties to the first seen",
    ),
    "majority": _entry(
        lambda: make_majority(rasp.tokens),
        ("a", "b"),
        5,
        [["a", "b", "a"], ["a", "b"]],
        summary="strict-majority token or None",
    ),
    "is_palindrome": _entry(
        lambda: make_is_palindrome(rasp.tokens),
        ("a", "b"),
        5,
        [["a", "b", "a"], ["a", "b"]],
        summary="palindrome check",
    ),
    "is_sorted": _entry(
        lambda: make_is_sorted(rasp.tokens), (1, 2, 3), 5, [[1, 1, 3], [2, 1]], summary="non-decreasing check"
    ),
    "first_occurrence": _entry(
        lambda: make_first_occurrence(rasp.tokens),
        _ABC,
        5,
        [["a", "b", "a", "b"]],
        summary="index of the token's first occurrence",
    ),
    "count_distinct": _entry(
        lambda: make_count_distinct(rasp.tokens),
        _ABC,
        5,
        [["a", "b", "a", "b"]],
        summary="number of distinct tokens",
    ),
    "dedup": _entry(
        lambda: make_dedup(rasp.tokens),
        _ABC,
        5,
        [["a", "b", "b", "a", "c"]],
        summary="distinct tokens in first-seen order",
    ),
    "induction": _entry(
        lambda: make_induction(rasp.tokens),
        _ABC,
        6,
        [["a", "b", "c", "a", "b", "a"]],
        summary="token after the previous occurrence of the current token",
    ),
    "causal_induction": _entry(
        lambda: make_causal_induction(rasp.tokens),
        _ABC,
        6,
        [["a", "b", "c", "a", "b", "a"]],
        summary="induction computed from earlier positions only (compiles causally)",
    ),
}
