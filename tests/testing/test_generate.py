"""Random program generator and source printer: well-typed, total, covering, reproducible, printable.

The checks here do not trust the generator's own bookkeeping: types are re-derived from the program graph,
totality (no None, no evaluation error) and the compilability conditions on aggregates are checked by
evaluating every SOp of every program on random inputs.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from collections import Counter

import pytest
from hypothesis import HealthCheck, find, given, settings

from rasp_compiler import rasp
from rasp_compiler.rasp.source import SourceError, from_source, function_source, to_source
from rasp_compiler.testing import generate as gen

N_PROGRAMS = 1000
SEED = 20240601


@pytest.fixture(scope="module")
def corpus() -> list[gen.GeneratedProgram]:
    return gen.sample_programs(N_PROGRAMS, SEED)


# --------------------------------------------------------------------------------------------- checkers


def _static_problems(program: rasp.SOp) -> list[str]:
    """Typing rules a tracr-style compiler enforces, read off the graph."""
    out = []
    for e in rasp.topological_order(program):
        cat = (lambda s: rasp.is_categorical(s))  # noqa: E731
        if isinstance(e, rasp.Select):
            if not (cat(e.keys) and cat(e.queries)):
                out.append(f"{e.label}: Select over a numerical SOp")
            if not isinstance(e.predicate, rasp.Comparison):
                out.append(f"{e.label}: predicate is not a Comparison")
        elif isinstance(e, rasp.Aggregate):
            if rasp.get_encoding(e) != rasp.get_encoding(e.sop):
                out.append(f"{e.label}: Aggregate changes encoding")
            if rasp.is_numerical(e) and e.default != 0:
                out.append(f"{e.label}: numerical Aggregate default {e.default!r}")
            if rasp.is_categorical(e) and e.default is not None:
                out.append(f"{e.label}: categorical Aggregate default {e.default!r}")
        elif isinstance(e, rasp.LinearSequenceMap):
            if not all(rasp.is_numerical(x) for x in (e, e.fst, e.snd)):
                out.append(f"{e.label}: LinearSequenceMap not numerical")
        elif isinstance(e, rasp.SequenceMap):
            if not all(cat(x) for x in (e, e.fst, e.snd)):
                out.append(f"{e.label}: SequenceMap not categorical")
            if e.fst is e.snd:
                out.append(f"{e.label}: SequenceMap of one SOp twice")
        printed_by_factors = isinstance(e, rasp.LinearSequenceMap)
        if isinstance(e, (rasp.Map, rasp.SequenceMap)) and not printed_by_factors and not hasattr(
            e.f, "__rasp_source__"
        ):
            out.append(f"{e.label}: function without __rasp_source__")
    return out


def _dynamic_problems(gp: gen.GeneratedProgram, xs: list) -> list[str]:
    """Every SOp evaluates, is never None, and every Aggregate meets the compiler's conditions."""
    out = []
    for e in rasp.topological_order(gp.program):
        if not isinstance(e, rasp.SOp):
            continue
        vals = rasp.evaluate(e, xs)
        if len(vals) != len(xs) or any(v is None for v in vals):
            out.append(f"{e.label}: {vals} on {xs}")
        if any(isinstance(v, bool) for v in vals):
            out.append(f"{e.label}: bool values {vals}")
        if isinstance(e, rasp.Aggregate):
            inner = rasp.evaluate(e.sop, xs)
            if rasp.is_numerical(e) and not set(inner) <= {0, 1}:
                out.append(f"{e.label}: numerical Aggregate of non-binary values {inner}")
            if rasp.is_categorical(e) and not set(vals) <= set(inner):
                out.append(f"{e.label}: categorical Aggregate invents values {vals} from {inner}")
    return out


def _sop_depth(program: rasp.SOp) -> int:
    depth: dict[int, int] = {}
    for e in rasp.topological_order(program):
        kids = [depth[id(c)] for c in e.children]
        own = 1 if isinstance(e, rasp.SOp) and e.children else 0
        depth[id(e)] = (max(kids) if kids else 0) + own
    return depth[id(program)]


# --------------------------------------------------------------------------------------------- corpus


def test_corpus_is_well_typed_and_total(corpus: list[gen.GeneratedProgram]) -> None:
    rng = random.Random(1)
    problems = []
    for i, gp in enumerate(corpus):
        assert isinstance(gp.program, rasp.SOp)
        assert gp.program.children, "the output must be a real op, not a leaf"
        assert 2 <= len(gp.vocab) <= 4 and 2 <= gp.max_seq_len <= 5
        problems += [f"#{i} {p}" for p in _static_problems(gp.program)]
        inputs = gen.sample_inputs(gp, 2, rng) + [[gp.vocab[0]] * gp.max_seq_len]
        for xs in inputs:
            problems += [f"#{i} {p}" for p in _dynamic_problems(gp, xs)]
        assert _sop_depth(gp.program) <= gen.Limits().max_depth
    assert not problems, "\n".join(problems[:20])


def test_corpus_covers_every_op_kind_and_comparison(corpus: list[gen.GeneratedProgram]) -> None:
    counts: Counter = Counter()
    for gp in corpus:
        counts.update(gen.op_kinds(gp.program))
    counts.update(
        k for gp in gen.sample_programs(200, SEED, constant_sop=True) for k in gen.op_kinds(gp.program)
    )
    table = "\n".join(f"  {k:32s} {counts[k]:6d}" for k in gen.OP_KINDS) + "\n" + "\n".join(
        f"  select_{c:25s} {counts['select_' + c]:6d}" for c in gen.COMPARISONS
    )
    print(f"\nop coverage over {N_PROGRAMS} programs (+200 with constant_sop):\n{table}")
    missing = [k for k in gen.OP_KINDS if counts[k] == 0]
    missing += [f"select_{c}" for c in gen.COMPARISONS if counts[f"select_{c}"] == 0]
    assert not missing, f"never generated: {missing}"
    assert counts["select_custom"] == 0


def test_constant_sop_pins_input_length() -> None:
    sampled = gen.sample_programs(300, 5, constant_sop=True)
    with_const = [gp for gp in sampled if gen.op_kinds(gp.program)["constant_sop"]]
    assert with_const
    for gp in with_const:
        assert gp.lengths == (gp.input_length,)
        for xs in gen.sample_inputs(gp, 3, 0):
            assert len(xs) == gp.input_length
            assert not _dynamic_problems(gp, xs)


def test_to_source_round_trips(corpus: list[gen.GeneratedProgram]) -> None:
    rng = random.Random(2)
    for gp in corpus:
        src = to_source(gp.program)
        rebuilt = from_source(src)
        assert [e.label for e in rasp.topological_order(rebuilt)] == [
            e.label for e in rasp.topological_order(gp.program)
        ]
        assert rasp.is_numerical(rebuilt) == rasp.is_numerical(gp.program)
        assert to_source(rebuilt) == src
        for xs in gen.sample_inputs(gp, 2, rng):
            assert rasp.evaluate(rebuilt, xs) == rasp.evaluate(gp.program, xs)


# --------------------------------------------------------------------------------------------- determinism


def _fingerprint(seed: int) -> str:
    progs = gen.sample_programs(40, seed)
    return "\n".join(to_source(gp.program) + repr((gp.vocab, gp.max_seq_len)) for gp in progs)


def test_sample_programs_is_deterministic() -> None:
    a, b = _fingerprint(11), _fingerprint(11)
    assert a == b
    assert a != _fingerprint(12)
    code = textwrap.dedent(
        """
        import hashlib, sys
        sys.path.insert(0, sys.argv[1])
        from tests.testing.test_generate import _fingerprint
        print(hashlib.sha256(_fingerprint(11).encode()).hexdigest())
        """
    )
    import hashlib
    import pathlib

    root = str(pathlib.Path(__file__).resolve().parents[2])
    res = subprocess.run([sys.executable, "-c", code, root], capture_output=True, text=True, timeout=60,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == hashlib.sha256(a.encode()).hexdigest()


def test_sample_inputs_valid_and_reproducible() -> None:
    gp = gen.sample_programs(1, 3)[0]
    a = gen.sample_inputs(gp, 20, 9)
    assert a == gen.sample_inputs(gp, 20, 9)
    for xs in a:
        assert 1 <= len(xs) <= gp.max_seq_len and set(xs) <= set(gp.vocab)


def test_limits_are_respected() -> None:
    for gp in gen.sample_programs(200, 4, max_ops=2, max_vocab=2, max_seq_len=3, numerical_output=False,
                                  selector_combinators=False, full=False):
        kinds = gen.op_kinds(gp.program)
        assert len(gp.vocab) == 2 and gp.max_seq_len <= 3
        assert rasp.is_categorical(gp.program)
        assert not (kinds["selector_and"] or kinds["selector_or"] or kinds["selector_not"] or kinds["full"])
        assert gp.n_ops <= 2 * 5  # each step adds at most a handful of ops
    with pytest.raises(ValueError, match="min_ops"):
        gen.Limits(min_ops=3, max_ops=2)
    with pytest.raises(TypeError):
        gen.sample_programs(1, 0, no_such_limit=1)


# --------------------------------------------------------------------------------------------- hypothesis


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gen.programs_with_inputs(n_inputs=3))
def test_strategy_programs_are_total(case: tuple[gen.GeneratedProgram, list]) -> None:
    gp, inputs = case
    assert not _static_problems(gp.program)
    for xs in inputs:
        assert not _dynamic_problems(gp, xs)


def test_shrinking_gives_small_programs() -> None:
    """Hypothesis shrinks programs with a wanted feature to the few ops that feature needs."""
    cfg = settings(derandomize=True, database=None, max_examples=1000, deadline=None)
    for feature, most in (("selector_and", 5), ("aggregate_categorical", 2)):
        found = find(gen.programs(), lambda gp, f=feature: gen.op_kinds(gp.program)[f] >= 1, settings=cfg)
        assert gen.op_kinds(found.program)[feature] >= 1
        assert found.n_ops <= most, to_source(found.program)
        assert found.max_seq_len == 2 and len(found.vocab) == 2


# --------------------------------------------------------------------------------------------- source printer


def test_make_function_keeps_source() -> None:
    f = gen.make_function("lambda x: (x + 2) % 3")
    assert f(2) == 1 and f.__rasp_source__ == "lambda x: (x + 2) % 3"
    assert function_source(f) == "lambda x: (x + 2) % 3"
    with pytest.raises(ValueError, match="not a function"):
        gen.make_function("3")


K = 3


def _helper(x: int) -> int:
    return x * K


def test_to_source_of_hand_written_functions() -> None:
    offset = 2
    m = rasp.Map(lambda x: x + offset, rasp.tokens).named("shifted")
    m2 = rasp.Map(_helper, m)  # simplify=True composes two functions into one Map
    both = rasp.SequenceMap(lambda a, b, c=offset: _helper(a) - b + c, m2, rasp.indices)
    sel = rasp.Select(rasp.tokens, both, lambda k, q: k < q)
    prog = rasp.numerical(rasp.Aggregate(sel, rasp.numerical(rasp.Map(lambda x: 1, rasp.tokens)), default=0))
    prog = prog.named("out").annotated(note="hand written")
    src = to_source(prog)
    ns: dict = {}
    exec(src, ns)  # noqa: S102
    rebuilt = ns["program"]
    assert rebuilt.label == "out" and rebuilt.annotations["note"] == "hand written"
    for xs in ([1, 2, 3], [3, 0], [5, 1, 2, 0]):
        assert rasp.evaluate(rebuilt, xs) == rasp.evaluate(prog, xs)
    assert "def _helper" in src and "(lambda offset:" in src


def test_to_source_rejects_unprintable_functions() -> None:
    class Adder:
        def __call__(self, x: int) -> int:
            return x + 1

    prog = rasp.Map(Adder(), rasp.tokens).named("adder_map")
    with pytest.raises(SourceError, match="adder_map"):
        to_source(prog)
    src = to_source(prog, strict=False)
    ns: dict = {}
    exec(src, ns)  # noqa: S102
    with pytest.raises(Exception, match="adder_map"):
        rasp.evaluate(ns["program"], [1])
    with pytest.raises(SourceError, match="RASP expression"):
        to_source("not a program")


def test_to_source_of_library_programs() -> None:
    from rasp_compiler.rasp import lib

    progs = [lib.make_length(), lib.make_hist(), lib.make_reverse(rasp.tokens),
             lib.make_sort_unique(rasp.tokens, rasp.tokens), lib.make_frac_prevs(
                 rasp.numerical(rasp.Map(lambda x: int(x == 1), rasp.tokens)))]
    for prog in progs:
        ns: dict = {}
        exec(to_source(prog), ns)  # noqa: S102
        for xs in ([1, 2, 3], [3, 1], [2]):
            assert rasp.evaluate(ns["program"], xs) == rasp.evaluate(prog, xs)
