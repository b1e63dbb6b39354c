"""Differential fuzzing of the compiler: evaluator vs compiled model (numpy, torch, C++ engine).

`run_compiler_campaign(n_programs, seed)` samples programs (`rasp_compiler.testing.generate`), compiles each,
runs every backend on random valid inputs, and compares each decoded output with `rasp.evaluate`.
Failures (compile errors, crashes, mismatches) are shrunk to a minimal program and input and saved as
JSON regression files that the test suite replays (`tests/testing/test_fuzz_differential.py`).

Command line (long campaigns)::

    rasp-compiler fuzz compiler --programs 1000 --seed 0 [--inputs 10] [--backends ...]
        [--limit NAME=VALUE ...] [--workers N | --ray [ADDRESS]]

Program i and its inputs come from (seed, i) alone, so a campaign is a map over program indices (run
here, in a process pool, or as Ray tasks) and a reduce in index order: the same summary and regression
files however it ran.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rasp_compiler import rasp
from rasp_compiler.compiler import compiling
from rasp_compiler.engine import Engine
from rasp_compiler.model.outputs import outputs_equal
from rasp_compiler.model.values import plain_json
from rasp_compiler.rasp.source import from_source, to_source
from rasp_compiler.testing import generate
from rasp_compiler.testing.runner import map_work
from rasp_compiler.testing.shrink import program_size, smaller_programs, total_on

__all__ = [
    "BACKENDS",
    "CampaignSummary",
    "Failure",
    "available_backends",
    "check_program",
    "CompilerItem",
    "item_seed",
    "load_regression",
    "parse_limits",
    "program_for",
    "regression_files",
    "replay_regression",
    "run_compiler_campaign",
    "run_compiler_item",
    "save_regression",
    "shrink_failure",
]

BACKENDS: tuple[str, ...] = ("numpy", "torch", "engine")
REGRESSION_VERSION = 1


# ------------------------------------------------------------------------------------------------ records


@dataclasses.dataclass
class Failure:
    """One failing case: a program (with its compile settings), the input, and what went wrong."""

    kind: str  # "compile_error" | "crash" | "mismatch"
    program: Any
    vocab: tuple
    max_seq_len: int
    input: list | None = None
    expected: list | None = None
    got: list | None = None
    backend: str | None = None
    message: str = ""
    causal: bool = False  # compiled with causal=True, checked against rasp.evaluate_prefixes

    def signature(self) -> str:
        """What makes two failures 'the same bug' while shrinking."""
        if self.kind == "mismatch":
            return f"mismatch:{self.backend}"
        return f"{self.kind}:{_first_line(self.message)[:60]}"

    def describe(self) -> str:
        head = f"[{self.kind}{'/' + self.backend if self.backend else ''}] vocab={list(self.vocab)} " \
               f"max_seq_len={self.max_seq_len}" + (" causal" if self.causal else "")
        lines = [head]
        if self.message:
            lines.append(f"  {_first_line(self.message)}")
        if self.input is not None:
            lines.append(f"  input    {self.input}")
        if self.expected is not None:
            lines.append(f"  expected {self.expected}")
            lines.append(f"  got      {self.got}")
        lines.append(_indent(to_source(self.program, strict=False)))
        return "\n".join(lines)


@dataclasses.dataclass
class CampaignSummary:
    """Counts of a campaign, and the (shrunk) failures it found."""

    seed: int
    n_programs: int = 0
    n_compiled: int = 0
    n_pairs: int = 0  # (program, input) pairs compared, per backend
    n_checks: int = 0  # pairs x backends
    backends: tuple = ()
    mismatches: Counter = dataclasses.field(default_factory=Counter)  # by backend
    compile_errors: Counter = dataclasses.field(default_factory=Counter)  # by first message line
    crashes: Counter = dataclasses.field(default_factory=Counter)
    coverage: Counter = dataclasses.field(default_factory=Counter)
    failures: list = dataclasses.field(default_factory=list)  # shrunk Failure per distinct signature
    saved: list = dataclasses.field(default_factory=list)  # regression file paths
    seconds: float = 0.0
    n_failing_programs: int = 0

    @property
    def ok(self) -> bool:
        return not (self.mismatches or self.compile_errors or self.crashes)

    def report(self) -> str:
        lines = [
            f"compiler fuzz campaign: seed {self.seed}, {self.n_programs} programs, backends "
            f"{', '.join(self.backends)}, {self.seconds:.1f} s",
            f"  compiled              {self.n_compiled}/{self.n_programs}",
            f"  (program, input) pairs {self.n_pairs}  ({self.n_checks} backend checks)",
            f"  mismatches            {sum(self.mismatches.values())}"
            + (f"  {dict(self.mismatches)}" if self.mismatches else ""),
            f"  compile errors        {sum(self.compile_errors.values())}",
            f"  crashes               {sum(self.crashes.values())}",
        ]
        for what, counter in (("compile error", self.compile_errors), ("crash", self.crashes)):
            for msg, n in counter.most_common(10):
                lines.append(f"    {n:5d} x {what}: {msg}")
        lines.append("  op coverage: " + ", ".join(f"{k}={self.coverage[k]}" for k in generate.OP_KINDS))
        lines.append("  comparisons: " + ", ".join(
            f"{c}={self.coverage['select_' + c]}" for c in generate.COMPARISONS))
        for f in self.failures:
            lines.append("  shrunk failure:")
            lines.append(_indent(f.describe(), 4))
        for p in self.saved:
            lines.append(f"  saved regression: {p}")
        return "\n".join(lines)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _indent(text: str, n: int = 2) -> str:
    return "\n".join(" " * n + line if line else line for line in text.splitlines())


# ------------------------------------------------------------------------------------------------ backends


def available_backends() -> tuple[str, ...]:
    """Backends usable here: numpy always; torch and the C++ engine when they import."""
    out = ["numpy"]
    try:
        import torch  # noqa: F401

        out.append("torch")
    except ImportError:
        pass
    try:
        from rasp_compiler import engine  # noqa: F401

        out.append("engine")
    except ImportError:
        pass
    return tuple(out)


def _compile(program: Any, vocab: Sequence, max_seq_len: int, causal: bool = False) -> Any:
    return compiling.compile_rasp_to_model(program, set(vocab), max_seq_len, causal=causal)


class _Runner:
    """Runs one compiled model on batches of inputs with one backend; returns decoded values (no BOS)."""

    def __init__(self, model: Any, backend: str) -> None:
        self.model = model
        self.backend = backend
        if backend == "torch":
            import torch

            self.torch = torch
            self.module = model.to_torch()
            self.module.eval()
        elif backend == "engine":

            self.engine = Engine(model, threads=1)
        elif backend != "numpy":
            raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")

    def logits(self, ids: np.ndarray) -> np.ndarray:
        if self.backend == "numpy":
            return np.asarray(self.model.forward_numpy(ids))
        if self.backend == "torch":
            with self.torch.no_grad():
                out = self.module(self.torch.as_tensor(ids, dtype=self.torch.long))
            return out.detach().cpu().numpy()
        return np.asarray(self.engine.run(ids))

    def run(self, inputs: Sequence[Sequence[Any]]) -> list[list[Any]]:
        results: list[list[Any] | None] = [None] * len(inputs)
        by_len: dict[int, list[int]] = {}
        for i, xs in enumerate(inputs):
            by_len.setdefault(len(xs), []).append(i)
        for idx in by_len.values():
            bos = self.model.codec.bos
            ids = np.array([self.model.encode([bos, *inputs[i]]) for i in idx], dtype=np.int64)
            out = self.logits(ids)
            for row, i in enumerate(idx):
                results[i] = self.model.decode(out[row])[1:]
        return results  # type: ignore[return-value]


def check_program(program: Any, vocab: Sequence, max_seq_len: int, inputs: Sequence[Sequence[Any]],
                  backends: Sequence[str] = ("numpy",), *, model: Any = None, causal: bool = False
                  ) -> tuple[list[Failure], Any]:
    """Compile `program` (unless `model` is given) and compare every backend with the evaluator
    (`causal`: compile a decoder-only model and compare with the prefix evaluation).

    Returns (failures, model). A compile error or backend crash is one failure; each mismatching
    (input, backend) is one failure.
    """
    vocab = tuple(vocab)

    def fail(kind: str, **kw: Any) -> Failure:
        return Failure(kind, program, vocab, max_seq_len, causal=causal, **kw)

    if model is None:
        try:
            model = _compile(program, vocab, max_seq_len, causal)
        except Exception as e:  # noqa: BLE001 - every compiler failure on a valid program is a finding
            return [fail("compile_error", message=f"{type(e).__name__}: {e}")], None
    numerical = rasp.is_numerical(program)
    reference = rasp.evaluate_prefixes if causal else rasp.evaluate
    expected = [reference(program, list(xs)) for xs in inputs]
    out: list[Failure] = []
    for backend in backends:
        try:
            got = _Runner(model, backend).run(inputs)
        except Exception as e:  # noqa: BLE001
            tb = traceback.format_exc(limit=-3)
            out.append(fail("crash", backend=backend, input=list(inputs[0]) if inputs else None,
                            message=f"{type(e).__name__}: {e}\n{tb}"))
            continue
        for xs, exp, g in zip(inputs, expected, got, strict=True):
            if not outputs_equal(exp, g, numerical):
                out.append(fail("mismatch", backend=backend, input=list(xs), expected=exp, got=g))
    return out, model


# ------------------------------------------------------------------------------------------------ shrinking


def _fails_alike(f: Failure, program: Any, vocab: tuple, max_seq_len: int, xs: list | None) -> Failure | None:
    backends = (f.backend,) if f.backend else ("numpy",)
    inputs = [xs] if xs is not None else []
    try:
        found, _ = check_program(program, vocab, max_seq_len, inputs, backends, causal=f.causal)
    except Exception:  # noqa: BLE001 - e.g. the evaluator rejects a candidate input: not alike
        return None
    for g in found:
        if g.signature() == f.signature():
            return g
    return None


def shrink_failure(f: Failure, max_rounds: int = 50) -> Failure:
    """Greedy shrinking: smaller sub-program, shorter max_seq_len and vocab, shorter and plainer input.

    Every candidate is a sub-program of a valid program on a subset of its valid inputs, so it stays
    valid; a candidate is kept when it fails the same way (same kind, backend and first message line).
    """
    cur = f
    for _ in range(max_rounds):
        nxt = _shrink_step(cur)
        if nxt is None:
            break
        cur = nxt
    return cur


def _shrink_step(f: Failure) -> Failure | None:
    xs = f.input
    # 1. a smaller program, still total on the failing input and on random valid inputs
    probe = generate.sample_inputs(generate.GeneratedProgram(f.program, f.vocab, f.max_seq_len), 12, 0)
    probe += [xs] if xs is not None else []
    size = program_size(f.program)
    for cand in smaller_programs(f.program):
        if program_size(cand) >= size or not total_on(cand, probe):
            continue
        g = _fails_alike(f, cand, f.vocab, f.max_seq_len, xs)
        if g is not None:
            return g
    # 2. the input: drop a position, then lower each token
    if xs is not None:
        for i in range(len(xs)):
            if len(xs) > 1:
                g = _fails_alike(f, f.program, f.vocab, f.max_seq_len, xs[:i] + xs[i + 1:])
                if g is not None:
                    return g
        low = min(f.vocab, key=generate_sort_key)
        for i in range(len(xs)):
            if xs[i] != low:
                g = _fails_alike(f, f.program, f.vocab, f.max_seq_len, xs[:i] + [low] + xs[i + 1:])
                if g is not None:
                    return g
    # 3. compile settings
    need = len(xs) if xs is not None else 1
    for n in sorted({need, (need + f.max_seq_len) // 2, f.max_seq_len - 1}):
        if need <= n < f.max_seq_len:
            g = _fails_alike(f, f.program, f.vocab, n, xs)
            if g is not None:
                return g
    used = set(xs) if xs is not None else set()
    for v in sorted(f.vocab, key=generate_sort_key, reverse=True):
        if v not in used and len(f.vocab) > 1:
            smaller = tuple(u for u in f.vocab if u != v)
            g = _fails_alike(f, f.program, smaller, f.max_seq_len, xs)
            if g is not None:
                return g
    return None


def generate_sort_key(v: Any) -> tuple:
    return (type(v).__name__, v) if not isinstance(v, (int, float)) else ("0", v)


# ------------------------------------------------------------------------------------------------ regressions


def save_regression(f: Failure, directory: str | Path, *, found_by: str = "", status: str = "open") -> Path:
    """Write a failure as `<directory>/<kind>_<hash>.json` (program as source text, never pickle)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    src = to_source(f.program)
    data = {
        "version": REGRESSION_VERSION,
        "kind": f.kind,
        "status": status,  # "open": the bug is not fixed yet (replayed as xfail); "fixed": must pass
        "backend": f.backend,
        "source": src,
        "vocab": plain_json(list(f.vocab)),
        "max_seq_len": f.max_seq_len,
        **({"causal": True} if f.causal else {}),
        "inputs": [] if f.input is None else [plain_json(f.input)],
        "expected": None if f.expected is None else plain_json(f.expected),
        "got": None if f.got is None else plain_json(f.got),
        "message": _first_line(f.message),
        "found_by": found_by,
    }
    digest = hashlib.sha256(json.dumps([src, data["vocab"], data["max_seq_len"], data["inputs"]],
                                       sort_keys=True).encode()).hexdigest()[:10]
    path = directory / f"{f.kind}_{digest}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def regression_files(directory: str | Path) -> list[Path]:
    return sorted(Path(directory).glob("*.json"))


def load_regression(path: str | Path) -> dict[str, Any]:
    """Read a regression file; `program` is rebuilt from its source."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"regression file {path}: cannot read it ({e})") from e
    for key in ("source", "vocab", "max_seq_len", "inputs"):
        if key not in data:
            raise ValueError(f"regression file {path}: missing field {key!r}")
    if data.get("version") != REGRESSION_VERSION:
        raise ValueError(
            f"regression file {path}: version {data.get('version')!r}, expected {REGRESSION_VERSION}"
        )
    data["program"] = from_source(data["source"])
    return data


def replay_regression(path: str | Path, backends: Sequence[str] | None = None, n_random: int = 20
                      ) -> list[Failure]:
    """Replay a saved case (its inputs plus `n_random` random valid ones) on every available backend."""
    data = load_regression(path)
    vocab = tuple(data["vocab"])
    gp = generate.GeneratedProgram(data["program"], vocab, data["max_seq_len"])
    inputs = [list(x) for x in data["inputs"]] + generate.sample_inputs(gp, n_random, 0)
    failures, _ = check_program(data["program"], vocab, data["max_seq_len"], inputs,
                                backends or available_backends(), causal=data.get("causal", False) is True)
    return failures


# ------------------------------------------------------------------------------------------------ campaign


def _inputs_for(gp: generate.GeneratedProgram, n: int, rng: random.Random) -> list[list]:
    """All valid inputs when there are at most `n`, else `n` random ones (one of them full length)."""
    total = sum(len(gp.vocab) ** k for k in gp.lengths)
    if total <= n:
        import itertools

        return [list(p) for k in gp.lengths for p in itertools.product(gp.vocab, repeat=k)]
    out = generate.sample_inputs(gp, n - 1, rng)
    out.append([rng.choice(gp.vocab) for _ in range(max(gp.lengths))])
    return out


def item_seed(seed: int, index: int, what: str) -> int:
    """A 60-bit seed for one draw (`what`) of program `index` of campaign `seed`: the same in every process
    (sha256, not `hash`), so a program's work item needs nothing from the others."""
    digest = hashlib.sha256(f"rasp-fuzz:{what}:{seed}:{index}".encode()).hexdigest()
    return int(digest[:15], 16)


def program_for(seed: int, index: int, limits: dict[str, Any] | None = None) -> generate.GeneratedProgram:
    """Program `index` of a campaign with `seed` (and generator `limits`), built the same way anywhere:
    RASP ids restart first so its default labels do not depend on what this process built before."""
    rasp.restart_ids()
    return generate.sample_programs(1, item_seed(seed, index, "program"), **dict(limits or {}))[0]


@dataclasses.dataclass(frozen=True)
class CompilerItem:
    """One program of a compiler campaign: everything its check needs, so it can run in any process."""

    index: int
    seed: int
    inputs_per_program: int
    backends: tuple
    limits: tuple = ()  # sorted (name, value) pairs of generate.Limits fields


def run_compiler_item(item: CompilerItem) -> dict[str, Any]:
    """Check one program on every backend; plain data back (no program objects): counts and failures."""
    gp = program_for(item.seed, item.index, dict(item.limits))
    rng = random.Random(item_seed(item.seed, item.index, "inputs"))
    inputs = _inputs_for(gp, item.inputs_per_program, rng)
    try:
        failures, model = check_program(gp.program, gp.vocab, gp.max_seq_len, inputs, item.backends,
                                        causal=gp.causal)
    except Exception as e:  # noqa: BLE001 - e.g. the evaluator itself fails: a finding, not a dead worker
        failures, model = [Failure("crash", gp.program, gp.vocab, gp.max_seq_len, input=None,
                                   message=f"{type(e).__name__}: {e}", causal=gp.causal)], None
    records = [
        {"kind": f.kind, "backend": f.backend, "input": f.input, "expected": f.expected, "got": f.got,
         "message": f.message, "signature": f.signature()}
        for f in failures
    ]
    return {
        "index": item.index,
        "coverage": dict(generate.op_kinds(gp.program)),
        "compiled": model is not None,
        "pairs": len(inputs) if model is not None else 0,
        "failures": records,
    }


def _check_limits(limits: dict[str, Any] | None) -> dict[str, Any]:
    limits = dict(limits or {})
    generate.Limits(**limits)  # a bad field name or value fails here, once, in the caller's process
    return limits


def run_compiler_campaign(
    n_programs: int,
    seed: int,
    *,
    inputs_per_program: int = 10,
    backends: Sequence[str] | None = None,
    shrink: bool = True,
    save_dir: str | Path | None = None,
    progress: bool = True,
    limits: dict[str, Any] | None = None,
    max_shrunk: int = 5,
    on_program: Callable[[int, generate.GeneratedProgram], None] | None = None,
    workers: int = 1,
    use_ray: bool = False,
    ray_address: str | None = None,
) -> CampaignSummary:
    """Check `n_programs` random programs: compile each, compare every backend with the evaluator.

    Program i and its inputs are drawn from (`seed`, i) alone (`program_for`, `item_seed`), so the
    campaign is a map over program indices (`run_compiler_item`; here, in `workers` processes, or as
    Ray tasks) and a reduce in index order: the summary and saved files do not depend on how it ran.
    Distinct failures (by kind, backend and message) are shrunk here (at most `max_shrunk`) and, with
    `save_dir`, written there as regression files. `on_program(i, program)` runs here, before the map.
    """
    backends = tuple(backends or available_backends())
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}; choose from {BACKENDS}")
    limits = _check_limits(limits)
    summary = CampaignSummary(seed=seed, backends=backends)
    t0 = time.perf_counter()
    items = [CompilerItem(i, seed, inputs_per_program, backends, tuple(sorted(limits.items())))
             for i in range(n_programs)]
    if on_program is not None:
        for i in range(n_programs):
            on_program(i, program_for(seed, i, limits))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_programs, desc="fuzz compiler", unit="prog", file=sys.stderr)

    seen: Counter = Counter()

    def tick(result: dict[str, Any]) -> None:
        if bar is not None:
            seen["pairs"] += result["pairs"]
            seen["mismatch"] += sum(f["kind"] == "mismatch" for f in result["failures"])
            seen["compile_err"] += sum(f["kind"] == "compile_error" for f in result["failures"])
            bar.update(1)
            bar.set_postfix(refresh=False, **seen)

    try:
        results = map_work(run_compiler_item, items, workers=workers, use_ray=use_ray,
                           ray_address=ray_address, on_result=tick)
    finally:
        if bar is not None:
            bar.close()
    first_of_kind: dict[str, tuple[int, dict[str, Any]]] = {}
    for r in results:  # in index order: the reduce is deterministic
        summary.n_programs += 1
        summary.coverage.update(r["coverage"])
        if r["compiled"]:
            summary.n_compiled += 1
            summary.n_pairs += r["pairs"]
            summary.n_checks += r["pairs"] * len(backends)
        for f in r["failures"]:
            if f["kind"] == "compile_error":
                summary.compile_errors[_first_line(f["message"])[:150]] += 1
            elif f["kind"] == "crash":
                summary.crashes[f"{f['backend']}: {_first_line(f['message'])[:150]}"] += 1
            else:
                summary.mismatches[f["backend"]] += 1
            first_of_kind.setdefault(f["signature"], (r["index"], f))
        if r["failures"]:
            summary.n_failing_programs += 1
    for sig, (i, rec) in list(first_of_kind.items())[:max_shrunk]:
        gp = program_for(seed, i, limits)
        f = Failure(rec["kind"], gp.program, gp.vocab, gp.max_seq_len, input=rec["input"],
                    expected=rec["expected"], got=rec["got"], backend=rec["backend"], message=rec["message"],
                    causal=gp.causal)
        small = shrink_failure(f) if shrink else f
        summary.failures.append(small)
        if save_dir is not None:
            path = save_regression(small, save_dir, found_by=f"seed {seed} program {i} ({sig})")
            summary.saved.append(str(path))
    summary.seconds = time.perf_counter() - t0
    return summary


# ------------------------------------------------------------------------------------------------ options


def parse_limits(items: Sequence[str]) -> dict[str, Any]:
    """`NAME=VALUE` strings (`--limit` on the command line) -> generator Limits keywords."""
    limits: dict[str, Any] = {}
    fields = {f.name for f in dataclasses.fields(generate.Limits)}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--limit {item!r}: expected NAME=VALUE with NAME one of {sorted(fields)}")
        try:
            limits[name] = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"--limit {item!r}: VALUE must be a number, true or false") from None
    return limits
