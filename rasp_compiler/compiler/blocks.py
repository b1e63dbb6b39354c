"""Stage 4: each op -> blocks, as matrices between labelled residual directions.

Invariant every block keeps: at the BOS position every SOp direction is zero. Categorical MLPs
only fire on one-hot inputs (zero at BOS); MLP neurons with a bias that could fire at BOS are gated
off by `tokens:<bos>`; attention at the BOS query attends to BOS, whose values are zero. Heads use
BOS as the default sink: it scores half a unit below a selected key, so it takes all weight only
when nothing is selected (aggregates), or exactly as much as one selected key (selector width).

Every MLP is evaluated in float32 on every input value it can see, at compile time; a block that
is not exact raises CompileError naming its op.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rasp_compiler.compiler.fuse import Fusion
from rasp_compiler.compiler.graph import OpNode, ProgramGraph
from rasp_compiler.compiler.options import CompileError, CompilerOptions
from rasp_compiler.compiler.selectors import leaf_pairs, selector_groups
from rasp_compiler.compiler.spaces import ONE, Residual
from rasp_compiler.compiler.values import ValueSets
from rasp_compiler.model import directions
from rasp_compiler.model.values import is_number, token_key


@dataclasses.dataclass(frozen=True)
class MLPBlock:
    """relu MLP: pre = x[reads] @ W_in + b_in; out[writes] = relu(pre) @ W_out."""

    ops: tuple[str, ...]
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    W_in: np.ndarray
    b_in: np.ndarray
    W_out: np.ndarray

    @property
    def width(self) -> int:
        return int(self.W_in.shape[1])


@dataclasses.dataclass(frozen=True)
class HeadBlock:
    """One attention head: scores x[q_reads] @ W_Q . x[k_reads] @ W_K; values x[v_reads] @ W_V @ W_O."""

    ops: tuple[str, ...]
    selectors: tuple[str, ...]
    q_reads: tuple[str, ...]
    k_reads: tuple[str, ...]
    v_reads: tuple[str, ...]
    writes: tuple[str, ...]
    W_Q: np.ndarray
    W_K: np.ndarray
    W_V: np.ndarray
    W_O: np.ndarray
    qk_encoding: tuple[str, ...] = ()  # per selector group: how its predicate table is factored

    @property
    def d_qk(self) -> int:
        return int(self.W_Q.shape[1])

    @property
    def d_ov(self) -> int:
        return int(self.W_V.shape[1])


@dataclasses.dataclass(frozen=True)
class EmbedBlock:
    """Rows of W_E (keys: token values) or W_pos (keys: positions) that an op writes."""

    ops: tuple[str, ...]
    component: str  # "embed" | "pos_embed"
    writes: tuple[str, ...]
    rows: Mapping[Any, Mapping[str, float]]


@dataclasses.dataclass(frozen=True)
class OpBlocks:
    """How one op is implemented: embeddings, or a head, or an MLP, or a head then an MLP."""

    label: str
    embeds: tuple[EmbedBlock, ...] = ()
    head: HeadBlock | None = None
    mlp: MLPBlock | None = None
    deps: tuple[str, ...] = ()  # SOp labels whose values this op reads


@dataclasses.dataclass(frozen=True)
class Blocks:
    by_op: Mapping[str, OpBlocks]


# ------------------------------------------------------------------------------------------- helpers


class _MLPBuilder:
    """Accumulates neurons as {residual label: weight} maps."""

    def __init__(self) -> None:
        self.ins: list[dict[str, float]] = []
        self.bias: list[float] = []
        self.outs: list[dict[str, float]] = []

    def neuron(self, w_in: Mapping[str, float], bias: float, w_out: Mapping[str, float]) -> None:
        self.ins.append(dict(w_in))
        self.bias.append(float(bias))
        self.outs.append(dict(w_out))

    def build(self, ops: tuple[str, ...]) -> MLPBlock:
        reads = _ordered({k for d in self.ins for k, v in d.items() if v != 0})
        writes = _ordered({k for d in self.outs for k, v in d.items() if v != 0})
        ri = {r: i for i, r in enumerate(reads)}
        wi = {w: i for i, w in enumerate(writes)}
        W_in = np.zeros((len(reads), len(self.ins)))
        W_out = np.zeros((len(self.ins), len(writes)))
        for j, (din, dout) in enumerate(zip(self.ins, self.outs)):
            for k, v in din.items():
                if v:
                    W_in[ri[k], j] += v
            for k, v in dout.items():
                if v:
                    W_out[j, wi[k]] += v
        return MLPBlock(ops, tuple(reads), tuple(writes), W_in, np.array(self.bias, dtype=float), W_out)


def _ordered(labels: set[str]) -> list[str]:
    return sorted(labels)


def run_mlp(block: MLPBlock, x: np.ndarray) -> np.ndarray:
    """float32 forward of an MLP block on inputs `x` [n, len(reads)] -> [n, len(writes)]."""
    f = np.float32
    pre = x.astype(f) @ block.W_in.astype(f) + block.b_in.astype(f)
    return np.maximum(pre, f(0)) @ block.W_out.astype(f)


def _check_mlp(
    block: MLPBlock,
    cases: Sequence[tuple[Mapping[str, float], Mapping[str, float]]],
    tol: float,
    label: str,
    what: str,
) -> float:
    """Evaluate the block on every case (residual inputs -> expected writes); raise if any is off.

    Returns the largest absolute error seen (the op's own error, before input noise).
    """
    if not cases or not block.writes:
        return 0.0
    ri = {r: i for i, r in enumerate(block.reads)}
    wi = {w: i for i, w in enumerate(block.writes)}
    x = np.zeros((len(cases), len(block.reads)))
    want = np.zeros((len(cases), len(block.writes)))
    for n, (inp, exp) in enumerate(cases):
        for k, v in inp.items():
            if k in ri:
                x[n, ri[k]] = v
        for k, v in exp.items():
            if k in wi:
                want[n, wi[k]] = v
    got = run_mlp(block, x)
    err = np.abs(got - want) / np.maximum(1.0, np.abs(want))
    if err.size and float(err.max()) > tol:
        n = int(np.argmax(err.max(axis=1)))
        raise CompileError(
            f"{label}: the {what} MLP is not exact in float32 (relative error "
            f"{float(err.max()):.2e} on input {dict(cases[n][0])}); the value set is too "
            "finely spaced for this construction"
        )
    return float(np.abs(got - want).max()) if got.size else 0.0


class _Ctx:
    def __init__(
        self, graph: ProgramGraph, values: ValueSets, res: Residual, fusion: Fusion, options: CompilerOptions
    ) -> None:
        self.graph, self.values, self.res, self.fusion, self.options = graph, values, res, fusion, options
        self.measured: dict[str, float] = {}  # op -> largest float32 error of its MLP on exact inputs
        self.err: dict[str, float] = {}  # numerical op -> absolute error bound of its value

    def input_error(self, direction: str) -> float:
        """Error bound of the value read from a numerical direction (helpers: softmax leak only)."""
        if direction in self.res.helpers:
            return 1e-6
        return self.err.get(direction, 0.0)

    def max_abs(self, label: str) -> float:
        vals = self.values[label].values
        return max((abs(float(v)) for v in vals if is_number(v)), default=1.0) if vals else 1e6

    def out_vec(self, label: str, y: Any) -> dict[str, float] | None:
        """Residual write for value y of SOp `label` (None: y is not representable -> nothing)."""
        node = self.graph.nodes[label]
        if y is None:
            return None
        if node.encoding == "categorical":
            d = self.res.dir_of(label, y)
            return None if d is None else {d: 1.0}
        if not is_number(y) and not isinstance(y, bool):
            raise CompileError(f"{label}: numerical SOp takes non-numeric value {y!r}")
        return {self.res.numerical_dir(label): float(y)} if float(y) != 0 else {}

    def in_cases(self, label: str) -> list[tuple[Any, dict[str, float]]]:
        """Each value of SOp `label` with its residual encoding."""
        node = self.graph.nodes[label]
        vals = self.values.require(label, f"an op reading {label}")
        if node.encoding == "categorical":
            return [(v, {self.res.dir_of(label, v): 1.0}) for v in vals]
        return [(v, {self.res.numerical_dir(label): float(v)}) for v in vals]


# ------------------------------------------------------------------------------------------- MLPs


def _categorical_input_mlp(ctx: _Ctx, label: str, inner: str, f: Any) -> MLPBlock:
    """Map of a categorical SOp: one neuron per output value, fed by the input values mapping to it."""
    groups: dict[Any, tuple[Any, list[str]]] = {}
    cases = []
    for v, enc in ctx.in_cases(inner):
        y = _call(f, v)
        out = ctx.out_vec(label, y)
        cases.append((enc, out or {}))
        if not out:
            continue
        key = tuple(sorted(out.items()))
        groups.setdefault(key, (out, []))[1].extend(enc)
    b = _MLPBuilder()
    for out, dirs in groups.values():
        b.neuron({d: 1.0 for d in dirs}, 0.0, out)
    block = b.build((label,))
    ctx.measured[label] = _check_mlp(
        block, cases + [({ctx.res.bos_dir: 1.0, ONE: 1.0}, {})], 1e-5, label, "categorical Map"
    )
    return block


def _sequence_map_mlp(ctx: _Ctx, label: str, fst: str, snd: str, f: Any) -> MLPBlock:
    """SequenceMap of two categorical SOps: neuron per (a, group of b with equal f(a, b)).

    With the same SOp on both sides only the diagonal occurs: it is the Map v -> f(v, v).
    """
    if fst == snd:
        return _categorical_input_mlp(ctx, label, fst, lambda v: f(v, v))
    A, B = ctx.in_cases(fst), ctx.in_cases(snd)
    table = {
        (i, j): ctx.out_vec(label, _call(f, a, b)) for i, (a, _) in enumerate(A) for j, (b, _) in enumerate(B)
    }

    def neurons(swap: bool) -> list[tuple[dict[str, float], dict[str, float]]]:
        outer, inner_ = (B, A) if swap else (A, B)
        out = []
        for i, (_, enc_o) in enumerate(outer):
            groups: dict[Any, tuple[dict[str, float], list[str]]] = {}
            for j, (_, enc_i) in enumerate(inner_):
                y = table[(j, i) if swap else (i, j)]
                if not y:
                    continue
                groups.setdefault(tuple(sorted(y.items())), (y, []))[1].extend(enc_i)
            for y, dirs in groups.values():
                w = dict.fromkeys(enc_o, 1.0)
                for d in dirs:
                    w[d] = w.get(d, 0.0) + 1.0
                out.append((w, y))
        return out

    n1, n2 = neurons(False), neurons(True)
    b = _MLPBuilder()
    for w, y in n1 if len(n1) <= len(n2) else n2:
        b.neuron(w, -1.0, y)
    _check_width(ctx, label, len(b.ins))
    block = b.build((label,))
    cases = []
    for i, (_, ea) in enumerate(A):
        for j, (_, eb) in enumerate(B):
            x = dict(ea)
            for k, v in eb.items():
                x[k] = x.get(k, 0.0) + v
            cases.append((x, table[(i, j)] or {}))
    cases.append(({ctx.res.bos_dir: 1.0, ONE: 1.0}, {}))
    ctx.measured[label] = _check_mlp(block, cases, 1e-5, label, "SequenceMap")
    return block


def _linear_mlp(ctx: _Ctx, label: str, terms: Sequence[tuple[str, float]]) -> MLPBlock:
    """Numerical output = sum of fac * value(child): two neurons (positive and negative part)."""
    lin: dict[str, float] = {}
    for child, fac in terms:
        node = ctx.graph.nodes[child]
        if node.encoding == "numerical":
            d = ctx.res.numerical_dir(child)
            lin[d] = lin.get(d, 0.0) + float(fac)
        else:
            for v, enc in ctx.in_cases(child):
                if not is_number(v):
                    raise CompileError(
                        f"{label}: LinearSequenceMap input {child} has non-numeric value {v!r}"
                    )
                (d,) = enc
                lin[d] = lin.get(d, 0.0) + float(fac) * float(v)
    out = ctx.res.numerical_dir(label)
    b = _MLPBuilder()
    b.neuron(lin, 0.0, {out: 1.0})
    b.neuron({k: -v for k, v in lin.items()}, 0.0, {out: -1.0})
    return b.build((label,))


def _numerical_input_mlp(
    ctx: _Ctx,
    label: str,
    xs: Sequence[float],
    ys: Sequence[Any],
    in_dir: str,
    what: str,
    x_at_bos: float = 0.0,
) -> MLPBlock:
    """Discretising MLP: out(x) = g(x_0) + sum over steps of (g(x_k) - g(x_k-1)) * [x > midpoint].

    `xs` are the input values, `ys` the op's value at each. Each step is two neurons, a ramp over the
    middle of the gap between neighbouring input values (margin set by mlp_exactness), flat (exact)
    outside it. Only gaps where the output changes get a step. Neurons that would fire at BOS (whose
    input there is `x_at_bos`) are gated off by `tokens:<bos>`, so the output there is exactly zero.
    Vectorised over the input values: value sets reach 10^6 points.
    """
    x = np.asarray(xs, dtype=float)
    order = np.argsort(x, kind="stable")
    x = x[order]
    codes: dict[Any, int] = {}
    vecs: list[dict[str, float]] = []
    yidx = np.empty(len(x), dtype=np.int64)
    for i, j in enumerate(order.tolist()):
        y = ys[j]
        key = None if y is None else token_key(y)
        c = codes.get(key)
        if c is None:
            c = codes[key] = len(vecs)
            vecs.append(ctx.out_vec(label, y) or {})
        yidx[i] = c
    writes = sorted({k for v in vecs for k in v})
    wi = {w: i for i, w in enumerate(writes)}
    Gd = np.zeros((len(vecs), len(writes)))
    for c, v in enumerate(vecs):
        for k, val in v.items():
            Gd[c, wi[k]] = val
    G = Gd[yidx]
    if len(x) == 0 or not writes:
        return _MLPBuilder().build((label,))
    close = np.diff(x) <= 1e-9 * np.maximum(1.0, np.abs(x[1:]))
    clash = close & np.any(G[1:] != G[:-1], axis=1)
    if clash.any():
        i = int(np.argmax(clash))
        raise CompileError(
            f"{label}: input values {float(x[i])!r} and {float(x[i + 1])!r} are too close to tell apart "
            "but map to different outputs"
        )
    keep = np.concatenate([[True], ~close])
    x, G = x[keep], G[keep]
    margin = min(0.45, max(0.05, 5.0 / float(ctx.options.mlp_exactness)))
    bos = ctx.res.bos_dir
    x_min, x_max = float(x[0]), float(x[-1])
    span = max(x_max, x_at_bos) - min(x_min, x_at_bos)  # |x - start| <= span wherever x can be
    noise = ctx.input_error(in_dir)
    base = G[0].copy()
    b = _MLPBuilder()

    def neuron(w: float, bias: float, out: dict[str, float]) -> None:
        # gated off at BOS only if it could fire there: a neuron already off at the BOS input (by more
        # than that input's error bound) writes an exact zero there without reading tokens:<bos>
        if w * x_at_bos + bias + abs(w) * noise < 0:
            b.neuron({in_dir: w}, bias, out)
        else:
            b.neuron({in_dir: w, bos: -(abs(w) * span + 1.0)}, bias, out)

    for k in np.nonzero(np.any(G[1:] != G[:-1], axis=1))[0].tolist():
        x0, x1 = float(x[k]), float(x[k + 1])
        if margin * (x1 - x0) <= 2 * noise:  # inputs must stay off every ramp by their error bound
            raise CompileError(
                f"{label}: its input {in_dir.split('__')[0]} is known only to +-{noise:.1e} (float32 error "
                f"bound), more than the margin around the step between its values {x0!r} and {x1!r}; the "
                f"{what} cannot be exact"
            )
        lo, hi = x0 + margin * (x1 - x0), x1 - margin * (x1 - x0)
        diff = G[k + 1] - G[k]
        delta = {writes[i]: float(diff[i]) for i in np.nonzero(diff)[0].tolist()}
        s = 1.0 / (hi - lo)
        if (lo + hi) / 2 - x_min < x_max - (lo + hi) / 2:
            # [x > c] = 1 - [x < c]; [x < c] = relu(s (hi - x)) - relu(s (lo - x)) is exactly zero above
            # hi and grows only over the short range below c: small pre-activations, little cancellation
            base += diff
            for start, sign in ((hi, -1.0), (lo, 1.0)):
                neuron(-s, s * start, {k2: sign * v for k2, v in delta.items()})
        else:
            # [x > c] = relu(s (x - lo)) - relu(s (x - hi)): zero below lo
            for start, sign in ((lo, 1.0), (hi, -1.0)):
                neuron(s, -s * start, {k2: sign * v for k2, v in delta.items()})
    base_vec = {writes[i]: float(base[i]) for i in np.nonzero(np.abs(base) > 1e-12)[0].tolist()}
    if base_vec:
        b.neuron({bos: -2.0}, 1.0, base_vec)
    _check_width(ctx, label, len(b.ins))
    block = b.build((label,))
    # float32 check on every input value (and BOS, where the output must be zero)
    ri = {r: i for i, r in enumerate(block.reads)}
    X = np.zeros((len(x) + 1, len(block.reads)))
    if in_dir in ri:
        X[:-1, ri[in_dir]] = x
        X[-1, ri[in_dir]] = x_at_bos
    if bos in ri:
        X[-1, ri[bos]] = 1.0
    want = np.zeros((len(x) + 1, len(block.writes)))
    cols = [wi[w] for w in block.writes]
    want[:-1] = G[:, cols]
    got = run_mlp(block, X)
    abs_err = np.abs(got - want)
    rel = abs_err / np.maximum(1.0, np.abs(want))
    numerical = ctx.graph.nodes[label].encoding == "numerical"
    # numerical outputs: a sanity bound here; the error bound propagates and is checked where it matters
    tol = 1e-2 if numerical else ctx.options.categorical_tolerance
    if rel.size and float(rel.max()) > tol:
        n = int(np.argmax(rel.max(axis=1)))
        where = "BOS" if n == len(x) else repr(float(x[n]))
        raise CompileError(
            f"{label}: the {what} MLP is not exact in float32 (relative error {float(rel.max()):.2e} at "
            f"input {where}); the value set is too finely spaced for this construction"
        )
    ctx.measured[label] = float(abs_err.max()) if abs_err.size else 0.0
    return block


def _check_width(ctx: _Ctx, label: str, width: int) -> None:
    if width > ctx.options.max_mlp_hidden:
        raise CompileError(
            f"{label}: its MLP needs {width} neurons, over max_mlp_hidden={ctx.options.max_mlp_hidden}"
        )


def _call(f: Any, *args: Any) -> Any:
    try:
        return f(*args)
    except Exception:  # noqa: BLE001 - values on which f fails never occur in a valid evaluation
        return None


# ------------------------------------------------------------------------------------------- heads


def _qk(
    ctx: _Ctx, op_label: str, sel: str, bos_score: float, beta: float
) -> tuple[tuple[str, ...], np.ndarray, tuple[str, ...], np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """Query and key matrices (over labelled residual rows) whose product scores the selector, the
    selectors involved, and the factorisation chosen for each group's predicate table.

    score(q, k) = beta * (number of groups whose predicate holds); the BOS key scores
    beta * (G - 1 + bos_score) through the query's `one` direction.
    """
    groups = selector_groups(ctx.graph, ctx.values, op_label, sel)
    q_parts: list[tuple[list[str], np.ndarray]] = []
    k_parts: list[tuple[list[str], np.ndarray]] = []
    selectors: list[str] = []
    encodings: list[str] = []
    for g in groups:
        selectors += [s for s in g.selectors if s not in selectors]
        qdirs = [ctx.res.dir_of(g.queries, v) for v in ctx.values[g.queries].values]
        kdirs = [ctx.res.dir_of(g.keys, v) for v in ctx.values[g.keys].values]
        name, wq, wk = _factor(g.table, ctx.options.qk_encoding)
        encodings.append(name)
        q_parts.append((qdirs, wq))
        k_parts.append((kdirs, wk * beta))
    q_parts.append(([ONE], np.ones((1, 1))))
    k_parts.append(([ctx.res.bos_dir], np.full((1, 1), beta * (len(groups) - 1 + bos_score))))
    dim = sum(w.shape[1] for _, w in q_parts)
    q_labels, W_Q = _stack(q_parts, dim)
    k_labels, W_K = _stack(k_parts, dim)
    return q_labels, W_Q, k_labels, W_K, tuple(selectors), tuple(encodings)


def _factor(t: np.ndarray, mode: str) -> tuple[str, np.ndarray, np.ndarray]:
    """A 0/1 factorisation t = wq @ wk.T of a predicate table [query values, key values].

    "tracr" is tracr's (the table in wq, one column per key value). Otherwise the candidate with the
    fewest non-zero weights: one column per class of identical query rows, or of identical key columns,
    or, when the rows are nested (an order comparison), aligned blocks of key ranks (`_prefix_blocks`)
    from either side. Every true pair is covered by exactly one column, so scores are unchanged.
    """
    if mode == "tracr":
        keys = np.nonzero(t.any(axis=0))[0]
        wk = np.zeros((t.shape[1], len(keys)))
        wk[keys, np.arange(len(keys))] = 1.0
        return "tracr", t[:, keys].astype(float), wk
    wk, wq = _row_classes(t.T)
    candidates = [("query_classes", *_row_classes(t)), ("key_classes", wq, wk)]
    blocks = _prefix_blocks(t)
    if blocks is not None:
        candidates.append(("key_rank_blocks", *blocks))
        wk, wq = _prefix_blocks(t.T)  # nested rows <=> nested columns
        candidates.append(("query_rank_blocks", wq, wk))
    return min(candidates, key=lambda c: np.count_nonzero(c[1]) + np.count_nonzero(c[2]))


def _row_classes(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """t = wq @ wk.T with one column per class of identical (non-empty) rows: wq marks the class's rows,
    wk holds the row."""
    reps = [m for m in _classes(t) if t[m[0]].any()]
    wq = np.zeros((t.shape[0], len(reps)))
    for d, members in enumerate(reps):
        wq[members, d] = 1.0
    return wq, t[[m[0] for m in reps]].T.astype(float)


def _prefix_blocks(t: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """t = wq @ wk.T for a table whose rows are nested (None otherwise).

    Ranking keys by how many rows hold them, every row holds exactly a prefix of the ranking: ranks
    [0, c). That prefix is a union of aligned power-of-two blocks of ranks, one per set bit of c. One
    column per block used: wq marks a row's blocks (at most log2 n), wk the blocks holding a key (one per
    block size). O(n log n) non-zeros where the table has O(n^2).
    """
    counts = t.sum(axis=1).astype(int)
    order = np.argsort(-t.sum(axis=0), kind="stable")
    rank = np.empty(t.shape[1], dtype=int)
    rank[order] = np.arange(t.shape[1])
    if not np.array_equal(t.astype(bool), rank[None, :] < counts[:, None]):
        return None
    columns: dict[tuple[int, int], int] = {}
    marks: list[tuple[int, int]] = []
    for q, c in enumerate(counts.tolist()):
        start = 0
        for bit in reversed(range(c.bit_length())):
            if c >> bit & 1:
                marks.append((q, columns.setdefault((start, 1 << bit), len(columns))))
                start += 1 << bit
    wq = np.zeros((t.shape[0], len(columns)))
    for q, col in marks:
        wq[q, col] = 1.0
    wk = np.zeros((t.shape[1], len(columns)))
    for (start, size), col in columns.items():
        wk[order[start : start + size], col] = 1.0
    return wq, wk


def _stack(parts: list[tuple[list[str], np.ndarray]], dim: int) -> tuple[tuple[str, ...], np.ndarray]:
    """Block-diagonal placement of per-group matrices, rows merged by residual label, zero rows dropped."""
    labels = sorted({lab for labs, _ in parts for lab in labs})
    li = {lab: i for i, lab in enumerate(labels)}
    W = np.zeros((len(labels), dim))
    col = 0
    for labs, w in parts:
        np.add.at(W, ([li[x] for x in labs], slice(col, col + w.shape[1])), w)
        col += w.shape[1]
    keep = np.abs(W).sum(axis=1) > 0
    return tuple(lab for lab, k in zip(labels, keep) if k), W[keep]


def _classes(t: np.ndarray) -> list[list[int]]:
    """Indices of identical rows, grouped (first occurrence order). Rows are compared as packed bytes:
    sorting the rows themselves (np.unique(axis=0)) took seconds on tables of 10^4 x 10^4 values."""
    packed = np.packbits(np.asarray(t, dtype=bool), axis=1) if t.shape[1] else np.zeros((len(t), 0), np.uint8)
    groups: dict[bytes, list[int]] = {}
    for i, row in enumerate(packed):
        groups.setdefault(row.tobytes(), []).append(i)
    return list(groups.values())


def _matrix(m: Mapping[str, Mapping[int, float]], dim: int) -> tuple[tuple[str, ...], np.ndarray]:
    labels = tuple(sorted(k for k, v in m.items() if any(v.values())))
    W = np.zeros((len(labels), dim))
    for i, lab in enumerate(labels):
        for j, v in m[lab].items():
            W[i, j] = v
    return labels, W


def _beta(n_max: int, max_abs: float, gap: float, tol: float) -> float:
    """Inverse temperature so that weight leaking past a score gap `gap` is below tol (float32-safe)."""
    return (math.log(n_max + 1) + math.log(max(1.0, max_abs)) - math.log(tol)) / gap


def _head(
    ctx: _Ctx,
    label: str,
    sel: str,
    v_map: Mapping[str, Mapping[int, float]],
    o_map: Mapping[int, Mapping[str, float]],
    d_ov: int,
    *,
    width_mode: bool,
    max_abs: float,
) -> HeadBlock:
    n_max = ctx.options.max_seq_len
    tol = ctx.options.softmax_tolerance
    if width_mode:  # BOS scores like a selected key; unselected keys one unit lower
        beta = _beta(n_max, 1.0, 1.0, tol * 1e-2)
        q_reads, W_Q, k_reads, W_K, selectors, encodings = _qk(ctx, label, sel, 1.0, beta)
    else:  # BOS half a unit below a selected key
        beta = _beta(n_max, max_abs, 0.5, tol)
        q_reads, W_Q, k_reads, W_K, selectors, encodings = _qk(ctx, label, sel, 0.5, beta)
    v_reads, W_V = _matrix(v_map, d_ov)
    writes = tuple(sorted({k for d in o_map.values() for k, v in d.items() if v}))
    wi = {w: i for i, w in enumerate(writes)}
    W_O = np.zeros((d_ov, len(writes)))
    for j, d in o_map.items():
        for k, v in d.items():
            if v:
                W_O[j, wi[k]] = v
    return HeadBlock((label,), selectors, q_reads, k_reads, v_reads, writes, W_Q, W_K, W_V, W_O, encodings)


def _selector_deps(graph: ProgramGraph, sel: str) -> list[str]:
    deps: list[str] = []
    for a, b in leaf_pairs(graph, sel):
        deps += [a, b]
    return deps


# ------------------------------------------------------------------------------------------- ops


def _map_mlp(ctx: _Ctx, label: str, inner: str, f: Any) -> MLPBlock:
    """Map of a categorical SOp (lookup) or of a numerical one (discretising)."""
    if ctx.graph.nodes[inner].encoding == "categorical":
        return _categorical_input_mlp(ctx, label, inner, f)
    vals = ctx.values.require(inner, f"the numerical-input Map {label}")
    bad = next((v for v in vals if not is_number(v)), None)
    if bad is not None:
        raise CompileError(f"{label}: numerical input {inner} has non-numeric value {bad!r}")
    ys = [_call(f, v) for v in vals]
    return _numerical_input_mlp(
        ctx, label, [float(v) for v in vals], ys, ctx.res.numerical_dir(inner), "numerical-input Map"
    )


def _build_op(ctx: _Ctx, node: OpNode) -> OpBlocks:
    label, kind, expr = node.label, node.kind, node.expr
    res, values = ctx.res, ctx.values
    if kind == "tokens":
        rows = {v: {res.dir_of("tokens", v): 1.0} for v in values["tokens"].values}
        return OpBlocks(label, embeds=(EmbedBlock(("tokens",), "embed", res.sop_dirs["tokens"], rows),))
    if kind == "indices":
        rows = {i + 1: {res.dir_of("indices", i): 1.0} for i in range(ctx.options.max_seq_len)}
        return OpBlocks(label, embeds=(EmbedBlock(("indices",), "pos_embed", res.sop_dirs["indices"], rows),))
    if kind == "full":
        out = ctx.out_vec(label, expr.fill) or {}
        rows = {v: out for v in values["tokens"].values}
        return OpBlocks(label, embeds=(EmbedBlock((label,), "embed", tuple(sorted(out)), rows),))
    if kind == "constant_sop":
        rows = {}
        for i, v in enumerate(list(expr.value)[: ctx.options.max_seq_len]):
            rows[i + 1] = ctx.out_vec(label, v) or {}
        writes = tuple(sorted({k for r in rows.values() for k in r}))
        return OpBlocks(label, embeds=(EmbedBlock((label,), "pos_embed", writes, rows),))
    eff = ctx.fusion.effective.get(label)
    if eff is not None:  # Map fused with the elementwise op(s) feeding it
        if eff.kind == "map":
            inner = eff.inputs[0]
            mlp = _map_mlp(ctx, label, inner, eff.f)
        else:
            mlp = _sequence_map_mlp(ctx, label, eff.inputs[0], eff.inputs[1], eff.f)
        return OpBlocks(label, mlp=dataclasses.replace(mlp, ops=eff.ops), deps=eff.inputs)
    if kind == "map":
        (inner,) = node.children
        return OpBlocks(label, mlp=_map_mlp(ctx, label, inner, expr.f), deps=(inner,))
    if kind in ("sequence_map", "linear_sequence_map"):
        fst, snd = node.children
        if kind == "linear_sequence_map" and node.encoding == "numerical":
            mlp = _linear_mlp(ctx, label, [(fst, expr.fst_fac), (snd, expr.snd_fac)])
        else:
            mlp = _sequence_map_mlp(ctx, label, fst, snd, expr.f)
        return OpBlocks(label, mlp=mlp, deps=(fst, snd))
    if kind == "aggregate":
        sel, sop = node.children
        deps = tuple(_selector_deps(ctx.graph, sel)) + (sop,)
        if node.encoding == "categorical":
            vals = values.require(sop, f"the categorical Aggregate {label}")
            v_map, o_map = {}, {}
            for i, v in enumerate(vals):
                v_map[res.dir_of(sop, v)] = {i: 1.0}
                o_map[i] = {res.dir_of(label, v): 1.0}
            head = _head(ctx, label, sel, v_map, o_map, len(vals), width_mode=False, max_abs=1.0)
        else:
            vals = values[sop].values
            max_abs = max((abs(float(v)) for v in vals), default=1.0) if vals is not None else 1e6
            head = _head(
                ctx,
                label,
                sel,
                {res.numerical_dir(sop): {0: 1.0}},
                {0: {res.numerical_dir(label): 1.0}},
                1,
                width_mode=False,
                max_abs=max_abs,
            )
        return OpBlocks(label, head=head, deps=deps)
    if kind == "selector_width":
        (sel,) = node.children
        helper = directions.helper(label, "bos_frac")
        head = _head(
            ctx, label, sel, {res.bos_dir: {0: 1.0}}, {0: {helper: 1.0}}, 1, width_mode=True, max_abs=1.0
        )
        widths = list(range(ctx.options.max_seq_len + 1))
        xs = [1.0 / (w + 1) for w in widths]
        mlp = _numerical_input_mlp(ctx, label, xs, widths, helper, "selector width", x_at_bos=1.0)
        return OpBlocks(label, head=head, mlp=mlp, deps=tuple(_selector_deps(ctx.graph, sel)))
    if kind == "length":  # selector width of an all-true selector: every real key scores like BOS
        helper = directions.helper(label, "bos_frac")
        beta = _beta(ctx.options.max_seq_len, 1.0, 1.0, ctx.options.softmax_tolerance * 1e-2)
        k_reads = tuple(sorted(res.sop_dirs["tokens"] + (res.bos_dir,)))
        head = HeadBlock(
            (label,),
            (),
            (ONE,),
            k_reads,
            (res.bos_dir,),
            (helper,),
            np.ones((1, 1)),
            np.full((len(k_reads), 1), beta),
            np.ones((1, 1)),
            np.ones((1, 1)),
        )
        widths = list(range(ctx.options.max_seq_len + 1))
        xs = [1.0 / (w + 1) for w in widths]
        mlp = _numerical_input_mlp(ctx, label, xs, widths, helper, "length", x_at_bos=1.0)
        return OpBlocks(label, head=head, mlp=mlp, deps=("tokens",))
    raise CompileError(f"{label}: no block rule for op kind {kind}")


def build_blocks(
    graph: ProgramGraph, values: ValueSets, res: Residual, fusion: Fusion, options: CompilerOptions
) -> Blocks:
    """Blocks for every SOp of the program (selectors are folded into the heads that use them)."""
    ctx = _Ctx(graph, values, res, fusion, options)
    out: dict[str, OpBlocks] = {}
    for label in ("tokens", "indices"):
        if label not in graph.nodes:
            node = OpNode(-1, label, label, "categorical", (), None)
            out[label] = _build_op(ctx, node)
    sources: dict[str, str | None] = {}
    for label in graph.order:
        node = graph.nodes[label]
        if node.is_selector or fusion.is_fused_away(label):
            continue
        src = _fold_source(graph, label, sources) if options.fold_embeddings else None
        if src is not None and node.kind in ("map", "sequence_map", "linear_sequence_map"):
            out[label] = _folded(ctx, node, src)
        else:
            out[label] = _build_op(ctx, node)
        if node.encoding == "numerical":
            ctx.err[label] = _error_bound(ctx, node, out[label])
    out_node = graph.nodes[graph.output]
    if out_node.encoding == "numerical" and ctx.err[graph.output] > options.output_tolerance:
        raise CompileError(
            f"{graph.output}: the output's float32 error bound {ctx.err[graph.output]:.1e} exceeds "
            f"output_tolerance={options.output_tolerance}"
        )
    return Blocks(out)


def _error_bound(ctx: _Ctx, node: OpNode, ob: OpBlocks) -> float:
    """Absolute error bound of a numerical op's value in the model (float32, softmax leaks, inputs)."""
    label = node.label
    own = ctx.max_abs(label) * 1e-7
    if ob.embeds:
        return own
    if node.kind == "aggregate":
        sop = node.children[1]
        return ctx.err.get(sop, 0.0) + ctx.options.softmax_tolerance * ctx.max_abs(sop) + own
    if node.kind == "linear_sequence_map" and ob.head is None and ctx.fusion.effective.get(label) is None:
        e = node.expr
        bound = own + 4 * ctx.measured.get(label, 0.0)
        for child, fac in zip(node.children, (e.fst_fac, e.snd_fac)):
            bound += abs(float(fac)) * (ctx.err.get(child, 0.0) + ctx.max_abs(child) * 1e-7)
        return bound
    # MLPs whose inputs stay in flat regions (checked) or are one-hot: their own float32 error, with margin
    return own + 4 * ctx.measured.get(label, 0.0)


def _fold_source(graph: ProgramGraph, label: str, memo: dict[str, str | None]) -> str | None:
    """'tokens' / 'indices' when the op is a per-position function of that input alone ('any': constant)."""
    if label in memo:
        return memo[label]
    n = graph.nodes[label]
    src: str | None = None
    if n.kind in ("tokens", "indices"):
        src = n.kind
    elif n.kind == "full":
        src = "any"
    elif n.kind == "constant_sop":
        src = "indices"
    elif n.kind in ("map", "sequence_map", "linear_sequence_map"):
        kids = {_fold_source(graph, c, memo) for c in n.children} - {"any"}
        src = None if None in kids or len(kids) > 1 else (kids.pop() if kids else "any")
    memo[label] = src
    return src


def _fold_value(graph: ProgramGraph, label: str, token: Any, index: int) -> Any:
    """The op's value at a position holding `token` at `index` (None: undefined there)."""
    n = graph.nodes[label]
    e = n.expr
    if n.kind == "tokens":
        return token
    if n.kind == "indices":
        return index
    if n.kind == "full":
        return e.fill
    if n.kind == "constant_sop":
        return e.value[index] if index < len(e.value) else None
    args = [_fold_value(graph, c, token, index) for c in n.children]
    if any(a is None for a in args):
        return None
    if n.kind == "linear_sequence_map" and n.encoding == "numerical":
        return e.fst_fac * args[0] + e.snd_fac * args[1]
    return _call(e.f, *args)


def _folded(ctx: _Ctx, node: OpNode, src: str) -> OpBlocks:
    """An op computed per token (or per position) straight into the embedding: no layer needed."""
    if src == "indices":
        rows = {
            i + 1: ctx.out_vec(node.label, _fold_value(ctx.graph, node.label, None, i)) or {}
            for i in range(ctx.options.max_seq_len)
        }
        component = "pos_embed"
    else:
        rows = {
            v: ctx.out_vec(node.label, _fold_value(ctx.graph, node.label, v, -1)) or {}
            for v in ctx.values["tokens"].values
        }
        component = "embed"
    writes = tuple(sorted({k for r in rows.values() for k in r}))
    return OpBlocks(node.label, embeds=(EmbedBlock((node.label,), component, writes, rows),))
