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

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rasp_compiler import _engine
from rasp_compiler.engine.errors import EngineError
from rasp_compiler.engine.patches import EdgePatch, EncodedSets, NodePatch, PatchEncoder
from rasp_compiler.model import names
from rasp_compiler.model.config import expected_weight_shapes

__all__ = ["Engine", "build_info", "cuda_available", "hook_kinds", "torch_patched_run"]

Subspace = Sequence[str] | Sequence[int] | np.ndarray | None

METRICS = ("kl", "logit_diff", "accuracy", "mse")
# TransformerLens hook name suffix -> the engine's record kind (csrc/engine/cpu_forward.h).
_RECORD_KIND = dict(zip(names.BLOCK_HOOKS, (
    "resid_pre", "q", "k", "v", "attn_scores", "pattern", "z", "result", "attn_out", "resid_mid",
    "mlp_pre", "mlp_post", "mlp_out", "resid_post"), strict=True))


def build_info() -> dict[str, Any]:
    """How the extension was built (version, threads backend, CUDA, sanitizers)."""
    return dict(_engine.build_info())


def cuda_available() -> bool:
    """True when CUDA kernels were built and a device is visible."""
    return bool(_engine.cuda_available())


def hook_kinds(n_layers: int) -> list[str]:
    """Every TransformerLens hook name the engine can record for a model with `n_layers` layers."""
    return names.hook_names(n_layers)


def _config_of(model: Any) -> Any:
    config = getattr(model, "config", None)
    if config is None:
        raise EngineError(f"Engine needs a model with .config and .weights, got {type(model).__name__}")
    return config


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
        # more threads than cores only adds contention; results do not depend on the count
        self.threads = 0 if threads is None else min(threads, os.cpu_count() or 1)
        self.n_layers = int(config.n_layers)
        self.n_heads = int(config.n_heads)
        self.d_model = int(config.d_model)
        self.d_vocab = int(config.d_vocab)
        self.n_ctx = int(config.n_ctx)
        self.pad_token_id = getattr(config, "pad_token_id", None)
        bos = getattr(config, "bos_token_id", None)
        self._bos = -1 if bos is None else int(bos)
        self.output_encoding = getattr(config, "output_encoding", "categorical")
        self.residual_labels = list(getattr(config, "residual_labels", [str(i) for i in range(self.d_model)]))
        arrays = [self._weight(weights, name, shape) for name, shape in self._weight_specs()]
        dims = {
            k: int(getattr(config, k))
            for k in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab", "d_vocab_out")
        }
        dims["pad_token_id"] = None if self.pad_token_id is None else int(self.pad_token_id)
        dims["causal"] = bool(getattr(config, "causal", False))
        core_class = _engine.CudaEngineCore if device == "cuda" else _engine.EngineCore
        self._core = core_class(dims, arrays)
        self._patches = PatchEncoder(self.n_layers, self.n_heads, self.d_model, self.residual_labels)

    # ------------------------------------------------------------------------------------ weights

    def _weight_specs(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every weight in the order the C++ core takes them (csrc/engine/model.h):
        per layer q, k, v weights, then their biases, then the rest; shapes from the contract."""
        shapes = expected_weight_shapes(self.config)
        order = ["W_E", "W_pos"]
        for layer in range(self.n_layers):
            a, b = f"blocks.{layer}.attn.", f"blocks.{layer}.mlp."
            order += [a + n for n in ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "W_O", "b_O")]
            order += [b + n for n in ("W_in", "b_in", "W_out", "b_out")]
        return [(n, shapes[n]) for n in order + ["W_U", "b_U"]]

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
        """Sparsity of the loaded weights (nonzeros vs entries), active heads, component counts; on CUDA
        also the device memory of the weights (`weight_bytes`) and how many matrices went up as CSR."""
        return dict(self._core.stats())

    # ------------------------------------------------------------------------------------ inputs

    def _tokens(self, tokens: Any, what: str = "tokens") -> tuple[np.ndarray, bool, bool]:
        """ids as int32 [B, T]; also whether the input was 1-D and whether it was a torch tensor."""
        is_torch = hasattr(tokens, "detach") and hasattr(tokens, "cpu")
        if is_torch:
            tokens = tokens.detach().cpu().numpy()
        arr = np.asarray(tokens)
        if _engine.tokens_valid(arr, self.d_vocab, self.n_ctx, self._bos):  # the common case, in one C++ pass
            return np.ascontiguousarray(arr, dtype=np.int32), False, is_torch
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
            self._check_bos(arr, what)
        return np.ascontiguousarray(arr, dtype=np.int32), squeeze, is_torch

    def _check_bos(self, ids: Any, what: str) -> None:
        """BOS at position 0 of every row and nowhere else (works on numpy arrays and torch tensors)."""
        bos = getattr(self.config, "bos_token_id", None)
        if bos is None:
            return
        if bool((ids[:, 0] == bos).all()) and not bool((ids[:, 1:] == bos).any()):
            return
        arr = np.asarray(ids.cpu()) if hasattr(ids, "cpu") else np.asarray(ids)  # only to name the place
        if (arr[:, 0] != bos).any():
            row = int(np.argmax(arr[:, 0] != bos))
            raise EngineError(f"{what}: row {row} starts with id {int(arr[row, 0])}; every row must start "
                              f"with the BOS token (id {bos}) - encode inputs with model.encode")
        row, pos = (int(x) for x in np.argwhere(arr[:, 1:] == bos)[0])
        raise EngineError(f"{what}: the BOS token (id {bos}) appears at row {row}, position {pos + 1}; "
                          "it belongs at position 0 only")

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
        if self.device == "cpu":  # the common case: ids checked and copied in the same C++ pass
            is_torch = hasattr(tokens, "detach") and hasattr(tokens, "cpu")
            arr = tokens.detach().cpu().numpy() if is_torch else np.asarray(tokens)
            out = self._core.forward_ids(arr, self._bos, self.threads)
            if out is not None:
                return self._wrap(out, False, is_torch)
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
        the others `[B,T,d_model]`. The whole batch runs at once (the batched forward writes every
        record), equal bit for bit to the engine's one-sequence-at-a-time path.
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
        try:
            suffix, layer = names.parse_hook(name, self.n_layers)
        except names.ComponentNameError as e:
            raise EngineError(str(e)) from None
        if layer is None:
            return (suffix[len("hook_"):], 0)
        return (_RECORD_KIND[suffix], layer)

    def encode(self, patch_sets: Sequence[Sequence[Any]]) -> EncodedSets:
        """Check and encode `patch_sets` once, for reuse across `sweep` / `run_patched` calls."""
        return self._patches.encode(patch_sets)

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
            flat = self._patches.flat(patches)
        else:
            flat = self._patches.compile_sets([patches])
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
            id_list.append(self._patches.writer(name, where))
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
                    f"writer ids {missing} ({', '.join(self._patches.writer_name(w) for w in missing)})"
                )
        return src, ov_ids, vals

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
        flat = self._patches.flat(patch_sets)
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
    """`Engine.run_patched`'s semantics done with TransformerLens-style hooks on the PyTorch module
    (`model.to_torch()`), through the one hook reference `rasp_compiler.model.patching.HookPatcher`:
    what the engine is tested against and the "hook loop" it is benchmarked against. `source_cache`
    (from `module.run_with_cache(source_tokens)`) saves the source run when looping.
    """
    import torch

    from rasp_compiler.model.patching import HookPatcher, PatchValue

    hp = HookPatcher(module)
    specs = [PatchEncoder.normalize(raw, f"patch {i}") for i, raw in enumerate(patches)]
    writers = {p.node if isinstance(p, NodePatch) else p.writer for p in specs}
    hooks = {names.writer_hook(w)[0] for w in writers}
    if source_cache is None:
        with torch.no_grad():
            _, source_cache = module.run_with_cache(
                hp.tokens(source_tokens), names_filter=lambda n: n in hooks
            )
    src = {}
    for w in writers:
        hook, head = names.writer_hook(w)
        src[w] = source_cache[hook] if head is None else source_cache[hook][:, :, head]
    nodes = {p.node: PatchValue(src[p.node], hp.projection(p.subspace))
             for p in specs if isinstance(p, NodePatch)}
    edges = {(p.writer, p.reader, p.input): PatchValue(src[p.writer], hp.projection(p.subspace))
             for p in specs if isinstance(p, EdgePatch)}
    return hp.run(tokens, nodes=nodes, edges=edges).detach().cpu().numpy()
