"""Node and edge patching with plain PyTorch hooks: the "hook loop" reference the engine is checked against.

This is how circuit-discovery code patches a TransformerLens model today (ACDC, auto-circuit, EAP):
hooks on the writers' outputs (`hook_embed`, `hook_pos_embed`, `attn.hook_result`, `hook_mlp_out`)
record what each component writes, and hooks on the readers' inputs (`attn.hook_q/k/v`,
`mlp.hook_pre`, the final residual) add the change an edge patch makes to that one reader. Because
every reader is linear in its residual input (no layer norm), patching the edge `w -> r<inp>` by
`new_w` adds `(new_w - cur_w) @ W_inp[r]` to the reader's pre-activation, which is exact.

Semantics (the engine's, docs/CONTRACTS.md section 5): a node patch replaces a writer's output for
every reader; an edge patch changes only one reader input; "current" is the writer's output in the
patched run. A patch value may be restricted to a subspace (`[d_model, d_model]` projection `P`:
`cur + (new - cur) @ P`) and to positions (a bool mask over `[B, T]` or `[T]`).

Also gives differentiable runs: `reader_deltas` adds a tensor to a reader input, so the gradient of a
metric with respect to each reader's input (edge attribution patching) is the gradient with respect
to that delta.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from rasp_compiler.model import names

__all__ = ["HookPatcher", "PatchValue", "PatchingError", "ablation_values"]


class PatchingError(names.ComponentNameError):
    """A patch names a component or hook the model lacks, or a value of the wrong shape."""


@dataclasses.dataclass
class PatchValue:
    """What a patched writer contributes: `value` [B or 1, T, d_model], optionally in a subspace/positions."""

    value: torch.Tensor
    projection: torch.Tensor | None = None  # [d_model, d_model]
    positions: torch.Tensor | None = None  # bool [B, T] or [T]

    def apply(self, cur: torch.Tensor) -> torch.Tensor:
        new = self.value.to(cur.dtype).expand_as(cur)
        if self.projection is not None:
            new = cur + (new - cur) @ self.projection
        if self.positions is not None:
            mask = self.positions if self.positions.dim() == 2 else self.positions[None, :]
            new = torch.where(mask[..., None].to(cur.device), new, cur)
        return new


class HookPatcher:
    """Patched forward passes of a compiled model's PyTorch module, through TransformerLens-style hooks.

    `HookPatcher(model)` takes a CompiledModel (or an already built `HookedCompiledTransformer`).
    """

    def __init__(self, model: Any) -> None:
        module = model.to_torch() if hasattr(model, "to_torch") else model
        if not hasattr(module, "run_with_hooks"):
            raise PatchingError(
                f"HookPatcher needs a CompiledModel or HookedCompiledTransformer, got {type(model).__name__}"
            )
        self.module = module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        cfg = module.cfg
        self.n_layers, self.n_heads, self.d_model = int(cfg.n_layers), int(cfg.n_heads), int(cfg.d_model)
        self.writers = names.writers(self.n_layers, self.n_heads)
        self.labels = {lab: i for i, lab in enumerate(cfg.residual_labels)}

    # ------------------------------------------------------------------------------------------ helpers

    def tokens(self, ids: Any) -> torch.Tensor:
        t = ids if torch.is_tensor(ids) else torch.as_tensor(np.asarray(ids))
        return t.long() if t.dim() == 2 else t.long()[None]

    def projection(self, subspace: Any) -> torch.Tensor | None:
        """A `[d_model, d_model]` projection from residual labels / direction indices / a matrix."""
        if subspace is None:
            return None
        arr = np.asarray(subspace) if not isinstance(subspace, (set, frozenset)) else None
        if arr is not None and arr.ndim == 2 and arr.dtype.kind == "f":
            return torch.as_tensor(arr, dtype=torch.float32)
        p = torch.zeros(self.d_model, self.d_model)
        for item in subspace:
            if isinstance(item, str):
                if item not in self.labels:
                    raise PatchingError(f"subspace names residual label {item!r}, which the model lacks")
                i = self.labels[item]
            else:
                i = int(item)
            p[i, i] = 1.0
        return p

    def writer_outputs(self, ids: Any) -> dict[str, torch.Tensor]:
        """Every writer's output `[B, T, d_model]` on a clean run."""
        hooks = {names.writer_hook(w)[0] for w in self.writers}
        with torch.no_grad():
            _, cache = self.module.run_with_cache(self.tokens(ids), names_filter=lambda n: n in hooks)
        out = {}
        for w in self.writers:
            name, head = names.writer_hook(w)
            act = cache[name]
            out[w] = act if head is None else act[:, :, head]
        return out

    # ------------------------------------------------------------------------------------------ runs

    def run(
        self,
        ids: Any,
        *,
        nodes: Mapping[str, PatchValue] | None = None,
        edges: Mapping[Any, PatchValue] | None = None,
        reader_deltas: Mapping[tuple[str, str], torch.Tensor] | None = None,
        grad: bool = False,
    ) -> torch.Tensor:
        """Forward on `ids` with node patches, edge patches and additive reader-input deltas.

        `nodes[w]` replaces writer `w`'s output for all readers; `edges[(w, r, inp)]` replaces what
        reader `r` sees of `w` on input `inp`; `reader_deltas[(r, inp)]` (`[B, T, d_model]`) is added
        to that reader input (use it with `grad=True` to get gradients with respect to reader inputs).
        """
        nodes = dict(nodes or {})
        edge_map = {names.edge_parts(k): v for k, v in (edges or {}).items()}
        deltas = dict(reader_deltas or {})
        for w in list(nodes) + [e[0] for e in edge_map]:
            if w not in self.writers:
                raise PatchingError(
                    f"patch names writer {w!r}, which the model lacks "
                    f"(it has {self.writers[0]} .. {self.writers[-1]})"
                )
        current: dict[str, torch.Tensor] = {}
        tracked = set(nodes) | {e[0] for e in edge_map}
        by_hook: dict[str, list[str]] = {}
        for w in tracked:
            by_hook.setdefault(names.writer_hook(w)[0], []).append(w)
        hooks: list[tuple[str, Any]] = []
        for name, ws in by_hook.items():

            def writer_hook(act: torch.Tensor, hook: Any, ws: list[str] = ws) -> torch.Tensor:
                out = act
                for w in ws:
                    head = names.writer_hook(w)[1]
                    cur = out if head is None else out[:, :, head]
                    new = nodes[w].apply(cur) if w in nodes else cur
                    current[w] = new
                    if w in nodes:
                        if head is None:
                            out = new
                        else:
                            out = torch.cat([out[:, :, :head], new[:, :, None], out[:, :, head + 1 :]], dim=2)
                return out

            hooks.append((name, writer_hook))
        by_reader: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
        for e in edge_map:
            by_reader.setdefault((e[1], e[2]), []).append(e)
        for key in deltas:
            by_reader.setdefault(key, [])

        def delta_of(reader: str, inp: str) -> torch.Tensor | None:
            total = deltas.get((reader, inp))
            for e in by_reader.get((reader, inp), ()):
                d = edge_map[e].apply(current[e[0]]) - current[e[0]]
                total = d if total is None else total + d
            return total

        for reader, inp in by_reader:
            kind, layer, head = names.parse_component(reader)
            if kind == "output":

                def out_hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
                    d = delta_of("output", "in")
                    return act if d is None else act + d

                hooks.append((f"blocks.{self.n_layers - 1}.hook_resid_post", out_hook))
            elif kind == "mlp":
                block = self.module.blocks[layer]

                def mlp_hook(
                    act: torch.Tensor, hook: Any, reader: str = reader, block: Any = block
                ) -> torch.Tensor:
                    d = delta_of(reader, "in")
                    return act if d is None else act + d @ block.mlp.W_in

                hooks.append((f"blocks.{layer}.mlp.hook_pre", mlp_hook))
            elif kind == "attn":
                block = self.module.blocks[layer]

                def head_hook(
                    act: torch.Tensor,
                    hook: Any,
                    reader: str = reader,
                    inp: str = inp,
                    head: int = head,
                    block: Any = block,
                ) -> torch.Tensor:
                    d = delta_of(reader, inp)
                    if d is None:
                        return act
                    w = getattr(block.attn, f"W_{inp.upper()}")[head]
                    add = torch.zeros_like(act)
                    add[:, :, head] = d @ w
                    return act + add

                hooks.append((f"blocks.{layer}.attn.hook_{inp}", head_hook))
            else:
                raise PatchingError(f"{reader!r} does not read the residual stream")
        if self.n_layers == 0 and any(r == "output" for r, _ in by_reader):
            raise PatchingError("output-edge patches need a model with at least one layer")
        tokens = self.tokens(ids)
        if grad:
            return self.module.run_with_hooks(tokens, fwd_hooks=hooks)
        with torch.no_grad():
            return self.module.run_with_hooks(tokens, fwd_hooks=hooks)

    def run_sets(
        self,
        ids: Any,
        ablated: Mapping[str, torch.Tensor],
        patch_sets: Sequence[Iterable[Any]],
    ) -> np.ndarray:
        """Outputs `[S, B, T, d_vocab_out]`, one forward per patch set; each item of a set is an edge
        (that reader sees the writer's `ablated` value) or a node name (every reader does)."""
        outs = []
        for items in patch_sets:
            nodes: dict[str, PatchValue] = {}
            edges: dict[tuple[str, str, str], PatchValue] = {}
            for item in items:
                if isinstance(item, str) and "->" not in item:
                    nodes[item] = PatchValue(ablated[item])
                else:
                    e = names.edge_parts(item)
                    edges[e] = PatchValue(ablated[e[0]])
            outs.append(self.run(ids, nodes=nodes, edges=edges).numpy())
        return np.stack(outs) if outs else np.zeros((0,))


def ablation_values(
    patcher: HookPatcher, clean_ids: Any, corrupt_ids: Any, ablation: str
) -> dict[str, torch.Tensor]:
    """Per writer, the value an ablated edge delivers: its output on the corrupted run ("resample"),
    its per-position mean over the clean dataset ("mean"), or zero ("zero")."""
    if ablation == "resample":
        return patcher.writer_outputs(corrupt_ids)
    clean = patcher.writer_outputs(clean_ids)
    if ablation == "mean":
        return {w: v.mean(dim=0, keepdim=True).expand_as(v).contiguous() for w, v in clean.items()}
    if ablation == "zero":
        return {w: torch.zeros_like(v) for w, v in clean.items()}
    raise PatchingError(f"unknown ablation {ablation!r}; expected 'resample', 'mean' or 'zero'")
