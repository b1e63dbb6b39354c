"""The C++ engine's Python face: plain, cached and patched forward passes, and patch sweeps.

`Engine(model)` copies a compiled model's weights once into `rasp_compiler._engine` (C++17, threaded,
sparse-aware) and checks every input here, with errors that name the problem, before C++ sees it.

Patches use the circuit vocabulary of docs/CONTRACTS.md section 6:

- node patch: ``"L1.H0"``, ``"L0.MLP"``, ``"embed"``, ``"pos_embed"`` (or `NodePatch(node, subspace)`):
  in the run on `tokens`, that component's output becomes its output on `source_tokens`; everything
  downstream sees the change.
- edge patch: ``("L0.H0", "L1.MLP", "in")`` (or `EdgePatch(writer, reader, input, subspace)`): only the
  reader's chosen input (q, k, v for heads; in for MLPs and ``"output"``, the unembedding) sees the
  writer's source output in place of its current one; every other reader sees the writer unchanged
  (ACDC / auto-circuit semantics). Several edges in one set act together; a writer's "current" output
  is its output in the patched run (it differs from clean when its own inputs were patched).
- `subspace`: restrict a patch to part of the residual stream: a list of residual labels or
  direction indices (a 0/1 mask), or a `[d_model, d_model]` matrix `P` (the patched value is
  `current + (source - current) @ P`).
"""

from __future__ import annotations

import dataclasses
import gc
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rasp_compiler import _engine

__all__ = [
    "EdgePatch",
    "EncodedSets",
    "Engine",
    "EngineError",
    "NodePatch",
    "build_info",
    "cuda_available",
    "hook_kinds",
    "torch_patched_run",
]

Subspace = Sequence[str] | Sequence[int] | np.ndarray | None

METRICS = ("kl", "logit_diff", "accuracy", "mse")
INPUTS = {"q": 0, "k": 1, "v": 2, "in": 3}

# TransformerLens hook name suffix -> engine record kind.
_BLOCK_HOOKS = {
    "hook_resid_pre": "resid_pre",
    "attn.hook_q": "q",
    "attn.hook_k": "k",
    "attn.hook_v": "v",
    "attn.hook_attn_scores": "attn_scores",
    "attn.hook_pattern": "pattern",
    "attn.hook_z": "z",
    "attn.hook_result": "result",
    "hook_attn_out": "attn_out",
    "hook_resid_mid": "resid_mid",
    "mlp.hook_pre": "mlp_pre",
    "mlp.hook_post": "mlp_post",
    "hook_mlp_out": "mlp_out",
    "hook_resid_post": "resid_post",
}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HEAD_RE = re.compile(r"^L(\d+)\.H(\d+)$")
_MLP_RE = re.compile(r"^L(\d+)\.MLP$")


class EngineError(ValueError):
    """An input the engine cannot take: wrong dtype/shape, token out of range, unknown component or hook."""


def build_info() -> dict[str, Any]:
    """How the extension was built (version, threads backend, CUDA, sanitizers)."""
    return dict(_engine.build_info())


def cuda_available() -> bool:
    """True when CUDA kernels were built and a device is visible."""
    return bool(_engine.cuda_available())


def hook_kinds(n_layers: int) -> list[str]:
    """Every TransformerLens hook name the engine can record for a model with `n_layers` layers."""
    names = ["hook_embed", "hook_pos_embed"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.{suffix}" for suffix in _BLOCK_HOOKS]
    return names


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


def _config_of(model: Any) -> Any:
    config = getattr(model, "config", None)
    if config is None:
        raise EngineError(f"Engine needs a model with .config and .weights, got {type(model).__name__}")
    return config


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


class Engine:
    """A compiled model loaded into the C++ engine.

    `threads=None` uses every core the runtime offers; pass an int to pin it (benchmarks do).
    Inputs are token ids `[B, T]` (or `[T]`, treated as a batch of one; outputs then drop the batch
    axis), as numpy arrays, torch tensors or nested lists; outputs are numpy float32 arrays, or torch
    tensors when the input was one.
    """

    def __init__(self, model: Any, device: str = "cpu", threads: int | None = None) -> None:
        if device != "cpu":
            if device == "cuda" and not cuda_available():
                info = build_info()
                raise EngineError(
                    "Engine(device='cuda'): the CUDA backend is not available "
                    f"(cuda_built={info['cuda_built']}, cuda_devices={info['cuda_devices']}); "
                    "use device='cpu'"
                )
            if device != "cuda":
                raise EngineError(f"Engine: unknown device {device!r} (expected 'cpu' or 'cuda')")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise EngineError(f"Engine: threads must be a positive int or None, got {threads!r}")
        config = _config_of(model)
        weights = getattr(model, "weights", None)
        if not isinstance(weights, Mapping):
            raise EngineError("Engine: model.weights must be a dict of arrays")
        self.config = config
        self.device = device
        self.threads = 0 if threads is None else threads
        self.n_layers = int(config.n_layers)
        self.n_heads = int(config.n_heads)
        self.d_model = int(config.d_model)
        self.d_vocab = int(config.d_vocab)
        self.n_ctx = int(config.n_ctx)
        self.pad_token_id = getattr(config, "pad_token_id", None)
        self.output_encoding = getattr(config, "output_encoding", "categorical")
        self.residual_labels = list(getattr(config, "residual_labels", [str(i) for i in range(self.d_model)]))
        arrays = [self._weight(weights, name, shape) for name, shape in self._weight_specs()]
        dims = {
            k: int(getattr(config, k))
            for k in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab", "d_vocab_out")
        }
        dims["pad_token_id"] = None if self.pad_token_id is None else int(self.pad_token_id)
        core_class = _engine.CudaEngineCore if device == "cuda" else _engine.EngineCore
        self._core = core_class(dims, arrays)
        self._edge_cache: dict[tuple[Any, Any, Any], tuple[int, int, int]] = {}
        self._node_cache: dict[str, int] = {}

    # ------------------------------------------------------------------------------------ weights

    def _weight_specs(self) -> list[tuple[str, tuple[int, ...]]]:
        c = self.config
        h, m, d, p = int(c.n_heads), int(c.d_model), int(c.d_head), int(c.d_mlp)
        specs: list[tuple[str, tuple[int, ...]]] = [
            ("W_E", (int(c.d_vocab), m)),
            ("W_pos", (int(c.n_ctx), m)),
        ]
        for layer in range(self.n_layers):
            a, b = f"blocks.{layer}.attn.", f"blocks.{layer}.mlp."
            specs += [
                (a + "W_Q", (h, m, d)),
                (a + "W_K", (h, m, d)),
                (a + "W_V", (h, m, d)),
                (a + "b_Q", (h, d)),
                (a + "b_K", (h, d)),
                (a + "b_V", (h, d)),
                (a + "W_O", (h, d, m)),
                (a + "b_O", (m,)),
                (b + "W_in", (m, p)),
                (b + "b_in", (p,)),
                (b + "W_out", (p, m)),
                (b + "b_out", (m,)),
            ]
        specs += [("W_U", (m, int(c.d_vocab_out))), ("b_U", (int(c.d_vocab_out),))]
        return specs

    @staticmethod
    def _weight(weights: Mapping[str, Any], name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in weights:
            raise EngineError(f"Engine: model.weights lacks {name!r}")
        w = weights[name]
        if hasattr(w, "detach"):
            w = w.detach().cpu().numpy()
        w = np.asarray(w)
        if w.dtype.kind != "f":
            raise EngineError(f"Engine: weight {name!r} must be floating point, got dtype {w.dtype}")
        if tuple(w.shape) != shape:
            raise EngineError(f"Engine: weight {name!r} has shape {list(w.shape)}, expected {list(shape)}")
        w = np.ascontiguousarray(w, dtype=np.float32)
        if not np.all(np.isfinite(w)):
            raise EngineError(f"Engine: weight {name!r} has non-finite entries")
        return w

    def stats(self) -> dict[str, Any]:
        """Sparsity of the loaded weights (nonzeros vs entries), active heads, component counts."""
        return dict(self._core.stats())

    # ------------------------------------------------------------------------------------ inputs

    def _tokens(self, tokens: Any, what: str = "tokens") -> tuple[np.ndarray, bool, bool]:
        """ids as int32 [B, T]; also whether the input was 1-D and whether it was a torch tensor."""
        is_torch = hasattr(tokens, "detach") and hasattr(tokens, "cpu")
        if is_torch:
            tokens = tokens.detach().cpu().numpy()
        arr = np.asarray(tokens)
        if arr.dtype == object or arr.dtype.kind not in "iub":
            if arr.dtype.kind == "f" and arr.size and np.all(arr == np.round(arr)):
                raise EngineError(f"{what}: token ids must be integers, got dtype {arr.dtype}")
            raise EngineError(f"{what}: token ids must be an integer array, got dtype {arr.dtype}")
        if arr.dtype.kind == "b":
            raise EngineError(f"{what}: token ids must be integers, got booleans")
        squeeze = arr.ndim == 1
        if squeeze:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise EngineError(f"{what}: expected ids of shape [batch, seq] or [seq], got {list(arr.shape)}")
        if arr.shape[1] == 0:
            raise EngineError(f"{what}: empty sequence (need at least the BOS token)")
        if arr.shape[1] > self.n_ctx:
            raise EngineError(
                f"{what}: sequence length {arr.shape[1]} exceeds n_ctx {self.n_ctx} "
                f"(max_seq_len {self.n_ctx - 1} + BOS)"
            )
        if arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= self.d_vocab:
                bad = lo if lo < 0 else hi
                raise EngineError(f"{what}: token id {bad} outside [0, d_vocab={self.d_vocab})")
        return np.ascontiguousarray(arr, dtype=np.int32), squeeze, is_torch

    @staticmethod
    def _wrap(out: np.ndarray, squeeze: bool, is_torch: bool) -> Any:
        if squeeze:
            out = out[0]
        if is_torch:
            import torch

            return torch.from_numpy(out)
        return out

    # ------------------------------------------------------------------------------------ runs

    def run(self, tokens: Any) -> Any:
        """Forward pass: ids `[B, T]` -> outputs `[B, T, d_vocab_out]` (logits, or the numerical value)."""
        if self.device == "cuda" and getattr(tokens, "is_cuda", False):
            from rasp_compiler.engine.cuda_io import run_cuda_tensor

            return run_cuda_tensor(self, tokens)
        ids, squeeze, is_torch = self._tokens(tokens)
        return self._wrap(self._core.forward(ids, self.threads), squeeze, is_torch)

    def decode_ids(self, out: Any) -> np.ndarray:
        """Argmax class index per position of a categorical output (`[..., d_vocab_out]` -> `[...]`)."""
        arr = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
        return arr.argmax(axis=-1)

    def run_with_cache(
        self, tokens: Any, names: Iterable[str] | Callable[[str], bool] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Forward pass keeping the named activations (TransformerLens names; None = all of them).

        Shapes follow TransformerLens: `hook_q/k/v/z` `[B,T,H,d_head]`, `hook_attn_scores` and
        `hook_pattern` `[B,H,T,T]`, `hook_result` `[B,T,H,d_model]`, `mlp.hook_pre/post` `[B,T,d_mlp]`,
        the others `[B,T,d_model]`.
        """
        ids, squeeze, is_torch = self._tokens(tokens)
        all_names = hook_kinds(self.n_layers)
        if names is None:
            wanted = all_names
        elif callable(names):
            wanted = [n for n in all_names if names(n)]
        else:
            if isinstance(names, str):
                names = [names]
            wanted = list(dict.fromkeys(names))
        hooks = [self._hook(name) for name in wanted]
        out, arrays = self._core.forward_record(ids, hooks, self.threads)
        cache = {name: self._wrap(a, squeeze, is_torch) for name, a in zip(wanted, arrays, strict=True)}
        return self._wrap(out, squeeze, is_torch), cache

    def _hook(self, name: str) -> tuple[str, int]:
        if name == "hook_embed":
            return ("embed", 0)
        if name == "hook_pos_embed":
            return ("pos_embed", 0)
        m = _BLOCK_RE.match(name) if isinstance(name, str) else None
        if m and m.group(2) in _BLOCK_HOOKS:
            layer = int(m.group(1))
            if layer >= self.n_layers:
                raise EngineError(f"hook {name!r}: the model has {self.n_layers} layers")
            return (_BLOCK_HOOKS[m.group(2)], layer)
        raise EngineError(
            f"unknown hook name {name!r}; known: hook_embed, hook_pos_embed, "
            f"blocks.{{l}}.{{{', '.join(_BLOCK_HOOKS)}}}"
        )

    # ------------------------------------------------------------------------------------ patching

    def _writer(self, name: Any, where: str) -> int:
        if type(name) is str and name in self._node_cache:
            return self._node_cache[name]
        w = self._writer_uncached(name, where)
        self._node_cache[name] = w
        return w

    def _writer_uncached(self, name: Any, where: str) -> int:
        if name == "embed":
            return 0
        if name == "pos_embed":
            return 1
        if isinstance(name, str):
            if m := _HEAD_RE.match(name):
                layer, head = int(m.group(1)), int(m.group(2))
                self._check_component(name, layer, head, where)
                return 2 + layer * (self.n_heads + 1) + head
            if m := _MLP_RE.match(name):
                layer = int(m.group(1))
                self._check_component(name, layer, None, where)
                return 2 + layer * (self.n_heads + 1) + self.n_heads
        raise EngineError(
            f"{where}: {name!r} is not a writer component "
            f"(expected embed, pos_embed, L{{l}}.H{{h}} or L{{l}}.MLP)"
        )

    def _reader(self, name: Any, inp: Any, where: str) -> tuple[int, int]:
        if inp not in INPUTS:
            raise EngineError(f"{where}: reader input {inp!r} is not one of q, k, v, in")
        if name == "output":
            if inp != "in":
                raise EngineError(f"{where}: the output reader takes input 'in', got {inp!r}")
            return self.n_layers * (self.n_heads + 1), INPUTS[inp]
        if isinstance(name, str):
            if m := _HEAD_RE.match(name):
                layer, head = int(m.group(1)), int(m.group(2))
                self._check_component(name, layer, head, where)
                if inp == "in":
                    raise EngineError(f"{where}: head {name} reads through q, k or v, not 'in'")
                return layer * (self.n_heads + 1) + head, INPUTS[inp]
            if m := _MLP_RE.match(name):
                layer = int(m.group(1))
                self._check_component(name, layer, None, where)
                if inp != "in":
                    raise EngineError(f"{where}: MLP {name} reads through 'in', not {inp!r}")
                return layer * (self.n_heads + 1) + self.n_heads, INPUTS[inp]
        raise EngineError(
            f"{where}: {name!r} is not a reader component (expected L{{l}}.H{{h}}, L{{l}}.MLP or output)"
        )

    def _check_component(self, name: str, layer: int, head: int | None, where: str) -> None:
        if layer >= self.n_layers:
            raise EngineError(
                f"{where}: component {name} does not exist (the model has {self.n_layers} layers)"
            )
        if head is not None and head >= self.n_heads:
            raise EngineError(
                f"{where}: component {name} does not exist (the model has {self.n_heads} heads per layer)"
            )

    @staticmethod
    def _layer_of(writer_or_reader: str) -> int:
        m = re.match(r"^L(\d+)\.", writer_or_reader)
        return int(m.group(1)) if m else -1

    def _normalize(self, patch: Any, where: str) -> NodePatch | EdgePatch:
        if isinstance(patch, (NodePatch, EdgePatch)):
            return patch
        if isinstance(patch, str):
            return NodePatch(patch)
        if isinstance(patch, tuple) and len(patch) == 3:
            return EdgePatch(*patch)
        if isinstance(patch, tuple) and len(patch) == 4:
            return EdgePatch(*patch)
        raise EngineError(
            f"{where}: a patch is a component name, a (writer, reader, input) tuple, NodePatch or "
            f"EdgePatch; got {patch!r}"
        )

    def _edge_ids(self, writer: Any, reader: Any, inp: Any, where: str) -> tuple[int, int, int]:
        """(writer id, reader id, input id) of a legal edge, memoised; raises EngineError otherwise."""
        key = (writer, reader, inp)
        try:
            return self._edge_cache[key]
        except (KeyError, TypeError):
            pass
        w = self._writer(writer, where)
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
        return EncodedSets(len(sets), self._compile_sets(sets), id(self))

    def _check_owner(self, enc: EncodedSets) -> None:
        if enc.owner != id(self):
            raise EngineError("EncodedSets were encoded by another Engine; encode them with this one")

    def _flat(self, patch_sets: Any) -> tuple[np.ndarray, ...]:
        if isinstance(patch_sets, EncodedSets):
            self._check_owner(patch_sets)
            return patch_sets.flat
        return self._compile_sets(list(patch_sets))

    def _compile_sets(
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
                p = self._normalize(raw, where)
                if isinstance(p, NodePatch):
                    w = self._writer(p.node, where)
                    ref = projections.index(p.subspace, f"{where} ({p.node})")
                    nodes.append((w, projections.resolve_later(ref)))
                else:
                    w, r, inp = self._edge_ids(p.writer, p.reader, p.input, where)
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
                raise EngineError(f"patch set {s}: node {self._writer_name(dup)} is patched twice in one set")
            set_edges = [e[:3] for e in edges[n_edges:]]
            if len(set(set_edges)) != len(set_edges):
                dup = next(e for e in set_edges if set_edges.count(e) > 1)
                raise EngineError(f"patch set {s}: edge {self._edge_name(dup)} is patched twice in one set")
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

    def run_patched(
        self,
        tokens: Any,
        source_tokens: Any,
        patches: Sequence[Any],
        *,
        source_outputs: Mapping[str, Any] | None = None,
    ) -> Any:
        """Forward pass on `tokens` with `patches` taking values from the run on `source_tokens`.

        `source_outputs` `{writer: array [B or 1, T, d_model]}` replaces those writers' source-run
        outputs (mean or zero ablation); `source_tokens` may be None when it names every patched writer.
        """
        ids, squeeze, is_torch = self._tokens(tokens)
        if isinstance(patches, EncodedSets):
            if patches.n_sets != 1:
                raise EngineError(f"run_patched: takes one patch set, got EncodedSets of {patches.n_sets}")
            flat = self._flat(patches)
        else:
            flat = self._compile_sets([patches])
        src, ov_ids, ov_vals = self._source(ids, source_tokens, source_outputs, flat)
        _, _, outs = self._core.sweep(ids, src, *flat, "none", 0.0, True, ov_ids, ov_vals, self.threads)
        return self._wrap(outs[0], squeeze, is_torch)

    def _source(
        self, ids: np.ndarray, source_tokens: Any, source_outputs: Mapping[str, Any] | None, flat: tuple
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """Source token ids (or None) and the writer-output overrides in the C++ layout."""
        B, T = ids.shape
        src = None
        if source_tokens is not None:
            src, _, _ = self._tokens(source_tokens, "source_tokens")
            src = self._match_source(ids, src)
        names = list((source_outputs or {}).keys())
        vals = np.zeros((len(names), B, T, self.d_model), dtype=np.float32)
        id_list = []
        for k, name in enumerate(names):
            where = f"source_outputs[{name!r}]"
            id_list.append(self._writer(name, where))
            v = source_outputs[name]  # type: ignore[index]
            v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
            if v.dtype.kind != "f":
                raise EngineError(f"{where}: expected a float array, got dtype {v.dtype}")
            if v.ndim == 2:
                v = v[None]
            if v.ndim != 3 or v.shape[1:] != (T, self.d_model) or v.shape[0] not in (1, B):
                raise EngineError(
                    f"{where}: expected shape [{B} or 1, {T}, {self.d_model}], got {list(v.shape)}"
                )
            vals[k] = v
        if names and not np.isfinite(vals).all():  # one pass over all of them; then name the culprit
            bad = next(n for k, n in enumerate(names) if not np.isfinite(vals[k]).all())
            raise EngineError(f"source_outputs[{bad!r}]: non-finite values")
        ov_ids = np.array(id_list, dtype=np.int32)
        if src is None:
            node_arr, _, edge_arr = flat[0], flat[1], flat[2]
            used = set(node_arr[:, 0].tolist()) | set(edge_arr[:, 0].tolist())
            missing = sorted(used - set(id_list))
            if missing:
                raise EngineError(
                    f"source_tokens is None, so source_outputs must give every patched writer; missing "
                    f"writer ids {missing} ({', '.join(self._writer_name(w) for w in missing)})"
                )
        return src, ov_ids, vals

    def _edge_name(self, edge: tuple[int, int, int]) -> str:
        w, r, i = edge
        if r == self.n_layers * (self.n_heads + 1):
            reader = "output"
        else:
            layer, slot = divmod(r, self.n_heads + 1)
            reader = f"L{layer}.MLP" if slot == self.n_heads else f"L{layer}.H{slot}"
        return f"{self._writer_name(w)}->{reader}<{('q', 'k', 'v', 'in')[i]}>"

    def _writer_name(self, w: int) -> str:
        if w < 2:
            return ("embed", "pos_embed")[w]
        layer, slot = divmod(w - 2, self.n_heads + 1)
        return f"L{layer}.MLP" if slot == self.n_heads else f"L{layer}.H{slot}"

    def sweep(
        self,
        tokens: Any,
        source_tokens: Any,
        patch_sets: Sequence[Sequence[Any]] | EncodedSets,
        metric: str = "kl",
        *,
        per_example: bool = False,
        atol: float = 1e-3,
        return_outputs: bool = False,
        source_outputs: Mapping[str, Any] | None = None,
    ) -> Any:
        """Evaluate many patch sets in one call; one metric value per set (or per set and example).

        The clean and source runs are computed once. Metrics, averaged over counted positions (not
        BOS, not PAD) of every example, each against the clean (unpatched) run:
        `kl` KL(clean || patched) of the softmaxed outputs; `logit_diff` patched logit of the clean
        answer minus that of the source answer, over positions where those answers differ;
        `accuracy` fraction of positions whose patched answer equals the clean one (numerical
        outputs: within `atol`); `mse` mean squared output difference. A metric with nothing to
        count is NaN. With `return_outputs`, returns `(metric, outputs [S, B, T, d_vocab_out])`.
        `source_outputs` as in `run_patched` (then `logit_diff` needs `source_tokens`).
        `patch_sets` may be an `EncodedSets` from `encode` (checked once, reused).
        """
        if metric not in METRICS:
            raise EngineError(f"sweep: unknown metric {metric!r}; expected one of {METRICS}")
        if self.output_encoding == "numerical" and metric in ("kl", "logit_diff"):
            raise EngineError(
                f"sweep: metric {metric!r} needs a categorical output; this model's output is "
                f"numerical (use 'mse' or 'accuracy')"
            )
        ids, _, _ = self._tokens(tokens)
        if isinstance(patch_sets, (str, NodePatch, EdgePatch)):
            raise EngineError("sweep: patch_sets must be a list of patch lists")
        if source_tokens is None and metric == "logit_diff":
            raise EngineError(
                "sweep: metric 'logit_diff' compares with the source run's answer: give source_tokens"
            )
        flat = self._flat(patch_sets)
        src, ov_ids, ov_vals = self._source(ids, source_tokens, source_outputs, flat)
        sums, counts, outs = self._core.sweep(
            ids, src, *flat, metric, float(atol), bool(return_outputs), ov_ids, ov_vals, self.threads
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            if per_example:
                result = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
            else:
                tot = counts.sum(axis=1)
                result = np.where(tot > 0, sums.sum(axis=1) / np.maximum(tot, 1), np.nan)
        return (result, outs) if return_outputs else result

    def forget_runs(self) -> None:
        """Drop the clean/source runs the engine keeps from its last sweep.

        `sweep` reuses them when called again on exactly the same tokens, source tokens and
        `source_outputs` (compared by content, so results never depend on it); benchmarks call this
        to time full sweeps."""
        forget = getattr(self._core, "forget_runs", None)
        if forget is not None:
            forget()

    def _match_source(self, ids: np.ndarray, src: np.ndarray) -> np.ndarray:
        if src.shape == ids.shape:
            return src
        if src.shape[0] == 1 and src.shape[1] == ids.shape[1]:
            return np.ascontiguousarray(np.broadcast_to(src, ids.shape))
        raise EngineError(
            f"source_tokens shape {list(src.shape)} does not match tokens shape {list(ids.shape)} "
            f"(or [1, T] to share one source)"
        )


def torch_patched_run(
    module: Any,
    tokens: Any,
    source_tokens: Any,
    patches: Sequence[Any],
    source_cache: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """The same patch semantics as `Engine.run_patched`, done with TransformerLens-style hooks on the
    PyTorch reference module (`model.to_torch()`): the reference the engine is tested against, and
    the "hook loop" it is benchmarked against. Subspaces: residual-label lists or `[D, D]` matrices.
    `source_cache` (from `module.run_with_cache(source_tokens)`) saves the source run when looping.
    """
    import torch

    cfg = module.cfg
    n_layers, d_model = cfg.n_layers, cfg.d_model
    labels = {label: i for i, label in enumerate(cfg.residual_labels)}

    def proj(sub: Any) -> torch.Tensor | None:
        if sub is None:
            return None
        arr = np.asarray(sub)
        if arr.ndim == 2 and arr.dtype.kind == "f":
            return torch.as_tensor(arr, dtype=torch.float32)
        p = torch.zeros(d_model, d_model)
        for item in sub:
            i = labels[item] if isinstance(item, str) else int(item)
            p[i, i] = 1.0
        return p

    def apply(cur: torch.Tensor, src: torch.Tensor, p: torch.Tensor | None) -> torch.Tensor:
        return src.clone() if p is None else cur + (src - cur) @ p

    def hook_of(writer: str) -> tuple[str, int | None]:
        if writer in ("embed", "pos_embed"):
            return f"hook_{writer}", None
        layer, rest = writer[1:].split(".", 1)
        if rest == "MLP":
            return f"blocks.{layer}.hook_mlp_out", None
        return f"blocks.{layer}.attn.hook_result", int(rest[1:])

    node_p: dict[str, Any] = {}
    edge_p: dict[tuple[str, str, str], Any] = {}
    for raw in patches:
        p = (
            raw
            if isinstance(raw, (NodePatch, EdgePatch))
            else (NodePatch(raw) if isinstance(raw, str) else EdgePatch(*raw))
        )
        if isinstance(p, NodePatch):
            node_p[p.node] = proj(p.subspace)
        else:
            edge_p[(p.writer, p.reader, p.input)] = proj(p.subspace)
    writers = {w for w in node_p} | {w for w, _, _ in edge_p}
    if source_cache is not None:
        src_cache = source_cache
    else:
        with torch.no_grad():
            _, src_cache = module.run_with_cache(
                torch.as_tensor(np.asarray(source_tokens)),
                names_filter=lambda n: any(n == hook_of(w)[0] for w in writers),
            )
    src_out = {}
    for w in writers:
        name, head = hook_of(w)
        src_out[w] = src_cache[name] if head is None else src_cache[name][:, :, head]
    current: dict[str, torch.Tensor] = {}
    hooks: list[tuple[str, Callable]] = []
    by_hook: dict[str, list[str]] = {}
    for w in writers:
        by_hook.setdefault(hook_of(w)[0], []).append(w)
    for name, ws in by_hook.items():

        def writer_hook(act: torch.Tensor, hook: Any, ws: list[str] = ws) -> torch.Tensor:
            act = act.clone()
            for w in ws:
                head = hook_of(w)[1]
                cur = act if head is None else act[:, :, head]
                new = apply(cur, src_out[w], node_p[w]) if w in node_p else cur
                if head is None:
                    act = new
                else:
                    act[:, :, head] = new
                current[w] = new.clone()
            return act

        hooks.append((name, writer_hook))

    def delta(reader: str, inp: str) -> torch.Tensor | None:
        total = None
        for (w, r, i), p in edge_p.items():
            if r == reader and i == inp:
                d = apply(current[w], src_out[w], p) - current[w]
                total = d if total is None else total + d
        return total

    readers = {(r, i) for _, r, i in edge_p}
    for reader, inp in readers:
        if reader == "output":
            name = f"blocks.{n_layers - 1}.hook_resid_post"

            def out_hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
                return act + delta("output", "in")

            hooks.append((name, out_hook))
            continue
        layer, rest = reader[1:].split(".", 1)
        block = module.blocks[int(layer)]
        if rest == "MLP":

            def mlp_hook(
                act: torch.Tensor, hook: Any, reader: str = reader, block: Any = block
            ) -> torch.Tensor:
                return act + delta(reader, "in") @ block.mlp.W_in

            hooks.append((f"blocks.{layer}.mlp.hook_pre", mlp_hook))
        else:
            head = int(rest[1:])

            def head_hook(
                act: torch.Tensor,
                hook: Any,
                reader: str = reader,
                inp: str = inp,
                head: int = head,
                block: Any = block,
            ) -> torch.Tensor:
                w = getattr(block.attn, f"W_{inp.upper()}")[head]
                act = act.clone()
                act[:, :, head] = act[:, :, head] + delta(reader, inp) @ w
                return act

            hooks.append((f"blocks.{layer}.attn.hook_{inp}", head_hook))
    with torch.no_grad():
        out = module.run_with_hooks(torch.as_tensor(np.asarray(tokens)), fwd_hooks=hooks)
    return out.detach().cpu().numpy()
