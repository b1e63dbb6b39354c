"""Patch sets -> the flat index arrays the C++ sweep reads (`csrc/engine/patch.h`).

A patch is a component name or `NodePatch` (the component's output is replaced for every reader), or
an edge: `(writer, reader, input)`, `"w->r<input>"`'s parts, `verify.Edge` or `EdgePatch` (only that
reader input sees the replacement); either may be restricted to a subspace (residual labels, direction
indices or a `[D, D]` matrix). `PatchEncoder` checks every name once against the model's shape
(`rasp_compiler.model.names`), memoises it, and encodes whole sweeps; the fast paths cover the sweeps
discovery methods make (every single edge or node; ACDC's growing edge sets).
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Sequence
from typing import Any

import numpy as np

from rasp_compiler.engine.errors import EngineError
from rasp_compiler.model import names

__all__ = ["EdgePatch", "EncodedSets", "NodePatch", "PatchEncoder"]

INPUTS = {inp: i for i, inp in enumerate(names.INPUTS)}


@dataclasses.dataclass(frozen=True)
class NodePatch:
    """Replace component `node`'s output by its source-run output (optionally only inside `subspace`)."""

    node: str
    subspace: Any = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(frozen=True)
class EdgePatch:
    """Replace `writer`'s contribution to `reader`'s `input` (q, k, v or in) by its source-run output."""

    writer: str
    reader: str
    input: str
    subspace: Any = dataclasses.field(default=None, compare=False)


PatchLike = str | tuple | NodePatch | EdgePatch


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedSets:
    """Patch sets checked and encoded once by `Engine.encode` (the flat arrays the C++ sweep takes).

    Pass it to `Engine.sweep` / `run_patched` in place of the patch list to skip re-checking the same
    sets on every call (threshold sweeps, repeated benchmarks). Bound to the engine that encoded it.
    """

    n_sets: int
    flat: tuple[np.ndarray, ...]
    owner: int  # id() of the encoding Engine


class _Projections:
    """Deduplicated subspace projections of one call, in the flat form the C++ side takes."""

    def __init__(self, d_model: int, labels: Sequence[str]) -> None:
        self.d_model = d_model
        self.label_index = {label: i for i, label in enumerate(labels)}
        self.diag: list[np.ndarray] = []
        self.mats: list[np.ndarray] = []
        self._diag_keys: dict[bytes, int] = {}

    def index(self, subspace: Any, where: str) -> tuple[str, int] | None:
        """None for the whole output; else ("diag", i) or ("mat", i)."""
        if subspace is None:
            return None
        arr = np.asarray(subspace) if not isinstance(subspace, (set, frozenset)) else None
        if arr is not None and arr.ndim == 2 and arr.dtype.kind == "f":
            if arr.shape != (self.d_model, self.d_model):
                raise EngineError(
                    f"{where}: subspace matrix must be [{self.d_model}, {self.d_model}], "
                    f"got {list(arr.shape)}"
                )
            if not np.all(np.isfinite(arr)):
                raise EngineError(f"{where}: subspace matrix has non-finite entries")
            self.mats.append(np.ascontiguousarray(arr, dtype=np.float32))
            return ("mat", len(self.mats) - 1)
        items = list(subspace)
        mask = np.zeros(self.d_model, dtype=np.float32)
        for item in items:
            if isinstance(item, str):
                if item not in self.label_index:
                    raise EngineError(
                        f"{where}: subspace names residual label {item!r}, which the model lacks"
                    )
                mask[self.label_index[item]] = 1.0
            elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                if not 0 <= int(item) < self.d_model:
                    raise EngineError(f"{where}: subspace direction {int(item)} outside [0, {self.d_model})")
                mask[int(item)] = 1.0
            else:
                raise EngineError(
                    f"{where}: subspace items must be residual labels or direction indices, got {item!r}"
                )
        key = mask.tobytes()
        if key not in self._diag_keys:
            self._diag_keys[key] = len(self.diag)
            self.diag.append(mask)
        return ("diag", self._diag_keys[key])

    def resolve_later(self, ref: tuple[str, int] | None) -> int:
        """-1 whole output, i >= 0 diagonal i, -(2 + k) matrix k (renumbered by `finish`)."""
        if ref is None:
            return -1
        return ref[1] if ref[0] == "diag" else -(2 + ref[1])

    def finish(self, ids: np.ndarray) -> None:
        """Rewrite matrix placeholders in place to their final index (after every diagonal)."""
        is_mat = ids <= -2
        ids[is_mat] = len(self.diag) + (-ids[is_mat] - 2)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The diagonal and matrix projections as contiguous float32 arrays."""
        diag = np.stack(self.diag) if self.diag else np.zeros((0, self.d_model), np.float32)
        mats = np.stack(self.mats) if self.mats else np.zeros((0, self.d_model, self.d_model), np.float32)
        return np.ascontiguousarray(diag, np.float32), np.ascontiguousarray(mats, np.float32)


class PatchEncoder:
    """Resolves and encodes patch sets for one model shape (the engine owns one)."""

    def __init__(self, n_layers: int, n_heads: int, d_model: int, residual_labels: Sequence[str]) -> None:
        self.n_layers, self.n_heads, self.d_model = n_layers, n_heads, d_model
        self.residual_labels = list(residual_labels)
        self._edge_cache: dict[tuple[Any, Any, Any], tuple[int, int, int]] = {}
        self._node_cache: dict[str, int] = {}

    def writer(self, name: Any, where: str) -> int:
        if type(name) is str and name in self._node_cache:
            return self._node_cache[name]
        w = self._writer_uncached(name, where)
        self._node_cache[name] = w
        return w

    def _component(self, name: Any, where: str, role: str) -> tuple[str, int | None, int | None]:
        try:
            names.parse_component(name)
        except names.ComponentNameError:
            writer = "embed, pos_embed, L{l}.H{h} or L{l}.MLP"
            expected = writer if role == "writer" else "L{l}.H{h}, L{l}.MLP or output"
            raise EngineError(f"{where}: {name!r} is not a {role} component (expected {expected})") from None
        try:
            return names.check_component(name, self.n_layers, self.n_heads)
        except names.ComponentNameError as e:
            raise EngineError(f"{where}: {e}") from None

    def _writer_uncached(self, name: Any, where: str) -> int:
        kind, layer, head = self._component(name, where, "writer")
        if kind == names.EMBED:
            return 0
        if kind == names.POS_EMBED:
            return 1
        if kind == "attn":
            return 2 + layer * (self.n_heads + 1) + head
        if kind == "mlp":
            return 2 + layer * (self.n_heads + 1) + self.n_heads
        raise EngineError(f"{where}: {name!r} is not a writer component (the output only reads)")

    def _reader(self, name: Any, inp: Any, where: str) -> tuple[int, int]:
        if inp not in INPUTS:
            raise EngineError(f"{where}: reader input {inp!r} is not one of q, k, v, in")
        kind, layer, head = self._component(name, where, "reader")
        if kind == names.OUTPUT:
            if inp != "in":
                raise EngineError(f"{where}: the output reader takes input 'in', got {inp!r}")
            return self.n_layers * (self.n_heads + 1), INPUTS[inp]
        if kind == "attn":
            if inp == "in":
                raise EngineError(f"{where}: head {name} reads through q, k or v, not 'in'")
            return layer * (self.n_heads + 1) + head, INPUTS[inp]
        if kind == "mlp":
            if inp != "in":
                raise EngineError(f"{where}: MLP {name} reads through 'in', not {inp!r}")
            return layer * (self.n_heads + 1) + self.n_heads, INPUTS[inp]
        raise EngineError(f"{where}: {name!r} is not a reader component")

    @staticmethod
    def _layer_of(component: str) -> int:
        layer = names.parse_component(component)[1]
        return -1 if layer is None else layer

    @staticmethod
    def normalize(patch: Any, where: str) -> NodePatch | EdgePatch:
        if isinstance(patch, (NodePatch, EdgePatch)):
            return patch
        if isinstance(patch, str):
            if "->" in patch:  # an edge name, "w->r<input>"
                try:
                    return EdgePatch(*names.parse_edge(patch))
                except names.ComponentNameError as e:
                    raise EngineError(f"{where}: {e}") from None
            return NodePatch(patch)
        if isinstance(patch, tuple) and len(patch) == 3:
            return EdgePatch(*patch)
        if isinstance(patch, tuple) and len(patch) == 4:
            return EdgePatch(*patch)
        if all(hasattr(patch, a) for a in ("writer", "reader", "input")):  # e.g. verify.Edge
            return EdgePatch(patch.writer, patch.reader, patch.input)
        raise EngineError(
            f"{where}: a patch is a component name, a (writer, reader, input) tuple, an Edge, NodePatch or "
            f"EdgePatch; got {patch!r}"
        )

    def edge_ids(self, writer: Any, reader: Any, inp: Any, where: str) -> tuple[int, int, int]:
        """(writer id, reader id, input id) of a legal edge, memoised; raises EngineError otherwise."""
        key = (writer, reader, inp)
        try:
            return self._edge_cache[key]
        except (KeyError, TypeError):
            pass
        w = self.writer(writer, where)
        r, i = self._reader(reader, inp, where)
        wl = self._layer_of(writer)
        rl = self.n_layers if reader == "output" else self._layer_of(reader)
        if not (wl < rl or (wl == rl and not writer.endswith(".MLP") and reader.endswith(".MLP"))):
            raise EngineError(
                f"{where}: edge {writer} -> {reader} ({inp}): the writer is not upstream of the reader"
            )
        self._edge_cache[key] = (w, r, i)
        return w, r, i

    def encode(self, patch_sets: Sequence[Sequence[Any]]) -> EncodedSets:
        """Check and encode `patch_sets` once, for reuse across `sweep` / `run_patched` calls."""
        if isinstance(patch_sets, EncodedSets):
            self._check_owner(patch_sets)
            return patch_sets
        if isinstance(patch_sets, (str, NodePatch, EdgePatch)):
            raise EngineError("encode: patch_sets must be a list of patch lists")
        sets = list(patch_sets)
        return EncodedSets(len(sets), self.compile_sets(sets), id(self))

    def _check_owner(self, enc: EncodedSets) -> None:
        if enc.owner != id(self):
            raise EngineError("EncodedSets were encoded by another Engine; encode them with this one")

    def flat(self, patch_sets: Any) -> tuple[np.ndarray, ...]:
        if isinstance(patch_sets, EncodedSets):
            self._check_owner(patch_sets)
            return patch_sets.flat
        return self.compile_sets(list(patch_sets))

    def compile_sets(
        self, patch_sets: Sequence[Sequence[Any]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Patch sets -> the flat arrays the C++ sweep takes (every name checked, with its position)."""
        fast = self._single_patch_sets(patch_sets)
        if fast is not None:
            return fast
        # the loop below makes many small lists and tuples: CPython's cyclic GC would scan them
        # repeatedly for nothing (none of them forms a cycle)
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._compile_sets_slow(patch_sets)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _single_patch_sets(self, patch_sets: Sequence[Sequence[Any]]) -> tuple[np.ndarray, ...] | None:
        """Fast path for "every single edge" / "every single node" sweeps of names this engine already
        checked: one whole-array build, no per-patch objects. None when it does not apply."""
        S = len(patch_sets)
        if S == 0 or not all(type(p) is list and len(p) == 1 for p in patch_sets):
            return None
        items = [p[0] for p in patch_sets]
        empty_off = np.zeros(S + 1, dtype=np.int64)
        counts = np.arange(S + 1, dtype=np.int64)
        d = self.d_model
        no_proj = (np.zeros((0, d), np.float32), np.zeros((0, d, d), np.float32))
        if all(type(i) is tuple and len(i) == 3 for i in items):
            cache = self._edge_cache
            try:
                hits = [cache[i] for i in items]
            except (KeyError, TypeError):
                return None
            edge_arr = np.full((S, 4), -1, dtype=np.int32)
            edge_arr[:, :3] = hits
            return (np.zeros((0, 2), np.int32), empty_off, edge_arr, counts, *no_proj)
        if all(type(i) is str for i in items):
            cache = self._node_cache
            try:
                hits = [cache[i] for i in items]
            except KeyError:
                return None
            node_arr = np.full((S, 2), -1, dtype=np.int32)
            node_arr[:, 0] = hits
            return (node_arr, counts, np.zeros((0, 4), np.int32), empty_off, *no_proj)
        return None

    def _compile_sets_slow(
        self, patch_sets: Sequence[Sequence[Any]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        projections = _Projections(self.d_model, self.residual_labels)
        nodes: list[tuple[int, int]] = []
        edges: list[tuple[int, int, int, int]] = []
        node_off, edge_off = [0], [0]
        edge_cache = self._edge_cache
        for s, patches in enumerate(patch_sets):
            if isinstance(patches, (str, NodePatch, EdgePatch)) or (
                isinstance(patches, tuple)
                and len(patches) in (3, 4)
                and isinstance(patches[0], str)
                and isinstance(patches[1], str)
                and patches[2] in INPUTS
            ):
                raise EngineError(
                    f"patch set {s}: expected a list of patches, got a single patch {patches!r}"
                )
            n_nodes, n_edges = len(nodes), len(edges)
            if type(patches) is list and patches:
                # fast path: a set made only of distinct (writer, reader, input) tuples this engine
                # already checked (ACDC's growing sets); anything else goes through the checks below
                try:
                    hits = [edge_cache[raw] for raw in patches]
                except (KeyError, TypeError):
                    hits = None
                if hits is not None and len(set(hits)) == len(hits):
                    edges.extend([(*hit, -1) for hit in hits])
                    node_off.append(len(nodes))
                    edge_off.append(len(edges))
                    continue
            for i, raw in enumerate(patches):
                # fast path: a plain (writer, reader, input) tuple already validated by this engine
                if type(raw) is tuple and len(raw) == 3:
                    try:
                        hit = edge_cache.get(raw)
                    except TypeError:  # unhashable parts: the slow path names the problem
                        hit = None
                    if hit is not None:
                        edges.append((*hit, -1))
                        continue
                where = f"patch set {s}, patch {i}"
                p = self.normalize(raw, where)
                if isinstance(p, NodePatch):
                    w = self.writer(p.node, where)
                    ref = projections.index(p.subspace, f"{where} ({p.node})")
                    nodes.append((w, projections.resolve_later(ref)))
                else:
                    w, r, inp = self.edge_ids(p.writer, p.reader, p.input, where)
                    ref = projections.index(p.subspace, f"{where} ({p.writer}->{p.reader}.{p.input})")
                    edges.append((w, r, inp, projections.resolve_later(ref)))
            # a component or an edge patched twice in one set is a mistake in the caller's set
            if len(nodes) + len(edges) - n_nodes - n_edges <= 1:
                node_off.append(len(nodes))
                edge_off.append(len(edges))
                continue
            set_nodes = [n[0] for n in nodes[n_nodes:]]
            if len(set(set_nodes)) != len(set_nodes):
                dup = next(w for w in set_nodes if set_nodes.count(w) > 1)
                raise EngineError(f"patch set {s}: node {self.writer_name(dup)} is patched twice in one set")
            set_edges = [e[:3] for e in edges[n_edges:]]
            if len(set(set_edges)) != len(set_edges):
                dup = next(e for e in set_edges if set_edges.count(e) > 1)
                raise EngineError(f"patch set {s}: edge {self.edge_name(dup)} is patched twice in one set")
            node_off.append(len(nodes))
            edge_off.append(len(edges))
        node_arr = np.array(nodes, dtype=np.int32).reshape(-1, 2)
        edge_arr = np.array(edges, dtype=np.int32).reshape(-1, 4)
        projections.finish(node_arr[:, 1])
        projections.finish(edge_arr[:, 3])
        diag, mats = projections.arrays()
        return (
            node_arr,
            np.array(node_off, dtype=np.int64),
            edge_arr,
            np.array(edge_off, dtype=np.int64),
            diag,
            mats,
        )

    def edge_name(self, edge: tuple[int, int, int]) -> str:
        w, r, i = edge
        if r == self.n_layers * (self.n_heads + 1):
            reader = "output"
        else:
            layer, slot = divmod(r, self.n_heads + 1)
            reader = names.mlp(layer) if slot == self.n_heads else names.head(layer, slot)
        return names.edge_name(self.writer_name(w), reader, names.INPUTS[i])

    def writer_name(self, w: int) -> str:
        if w < 2:
            return ("embed", "pos_embed")[w]
        layer, slot = divmod(w - 2, self.n_heads + 1)
        return names.mlp(layer) if slot == self.n_heads else names.head(layer, slot)
