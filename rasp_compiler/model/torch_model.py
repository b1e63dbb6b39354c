"""PyTorch reference of a compiled model, with TransformerLens hook names (docs/CONTRACTS.md section 4).

Every activation passes through an identity `HookPoint` submodule whose module path is its
TransformerLens name (`blocks.0.attn.hook_result`, ...), so three styles of intervention work:
this module's own `add_hook` / `hooks(...)` / `run_with_cache`, plain
`register_forward_hook` on the submodule, and wrappers such as nnsight that see an ordinary
`nn.Module`. Parameters carry the contract's weight names (`state_dict()` keys equal
`CompiledModel.weights` keys). This module is the reference the C++/CUDA engines are tested against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rasp_compiler.model.config import ModelConfig, expected_weight_shapes
from rasp_compiler.model.errors import ModelError

__all__ = ["HookPoint", "HookedCompiledTransformer"]

HookFn = Callable[..., Any]
NamesFilter = None | str | Sequence[str] | Callable[[str], bool]


class HookPoint(nn.Module):
    """Identity module marking an activation; hooks attached here see (and may replace) it.

    A hook function is called as `fn(activation, hook)` (TransformerLens convention) and may return
    a replacement tensor of the same shape, or None to leave the activation unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""
        self._handles: list[Any] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def add_hook(self, fn: HookFn, dir: str = "fwd") -> Any:  # noqa: A002 - TransformerLens's argument name
        """Attach `fn`; `dir="bwd"` hooks see the gradient of the activation instead."""
        if dir == "fwd":
            def fwd(module: nn.Module, inputs: Any, output: torch.Tensor) -> Any:
                return fn(output, self)

            handle = self.register_forward_hook(fwd)
        elif dir == "bwd":
            def bwd(module: nn.Module, grad_input: Any, grad_output: Any) -> Any:
                fn(grad_output[0], self)
                return None

            handle = self.register_full_backward_hook(bwd)
        else:
            raise ValueError(f"hook direction must be 'fwd' or 'bwd', got {dir!r}")
        self._handles.append(handle)
        return handle

    def remove_hooks(self) -> None:
        """Remove the hooks added through `add_hook` (not those registered directly with torch)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def extra_repr(self) -> str:
        return repr(self.name)


def _param(shape: Sequence[int]) -> nn.Parameter:
    return nn.Parameter(torch.zeros(*shape, dtype=torch.float32))


class Attention(nn.Module):
    """All heads of one layer: softmax attention (bidirectional, or causal when the config says so), no
    1/sqrt(d_head) scaling."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, m, d = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q, self.W_K, self.W_V = _param((h, m, d)), _param((h, m, d)), _param((h, m, d))
        self.b_Q, self.b_K, self.b_V = _param((h, d)), _param((h, d)), _param((h, d))
        self.W_O, self.b_O = _param((h, d, m)), _param((m,))
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern = HookPoint(), HookPoint()
        self.hook_z, self.hook_result = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = self.hook_q(torch.einsum("btm,hmd->bthd", x, self.W_Q) + self.b_Q)
        k = self.hook_k(torch.einsum("btm,hmd->bthd", x, self.W_K) + self.b_K)
        v = self.hook_v(torch.einsum("btm,hmd->bthd", x, self.W_V) + self.b_V)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k)
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        scores = self.hook_attn_scores(scores)
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        result = self.hook_result(torch.einsum("bthd,hdm->bthm", z, self.W_O))
        return result.sum(dim=2) + self.b_O


class MLP(nn.Module):
    """One ReLU MLP: `relu(x @ W_in + b_in) @ W_out + b_out`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.W_in, self.b_in = _param((cfg.d_model, cfg.d_mlp)), _param((cfg.d_mlp,))
        self.W_out, self.b_out = _param((cfg.d_mlp, cfg.d_model)), _param((cfg.d_model,))
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.hook_pre(x @ self.W_in + self.b_in)
        post = self.hook_post(torch.relu(pre))
        return post @ self.W_out + self.b_out


class TransformerBlock(nn.Module):
    """Attention then MLP, each added to the residual stream (no layer norm)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_mid = HookPoint(), HookPoint(), HookPoint()
        self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(x, mask)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(x)))


class HookedCompiledTransformer(nn.Module):
    """The compiled transformer as a hooked `nn.Module`: tokens `[B, T]` -> outputs `[B, T, d_vocab_out]`."""

    def __init__(self, config: ModelConfig, weights: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.cfg = config
        self.W_E = _param((config.d_vocab, config.d_model))
        self.W_pos = _param((config.n_ctx, config.d_model))
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.W_U = _param((config.d_model, config.d_vocab_out))
        self.b_U = _param((config.d_vocab_out,))
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module
        if weights is not None:
            self.load_weights(weights)

    @classmethod
    def from_compiled(cls, model: Any) -> HookedCompiledTransformer:
        return cls(model.config, model.weights)

    # -- weights

    def load_weights(self, weights: dict[str, Any]) -> None:
        """Copy contract-named weights (numpy or torch) into the parameters, checking names and shapes."""
        expected = expected_weight_shapes(self.cfg)
        missing = [n for n in expected if n not in weights]
        extra = sorted(set(weights) - set(expected))
        if missing or extra:
            raise ModelError(f"weights do not match the config: missing {missing[:6]}, "
                             f"unexpected {extra[:6]}")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, shape in expected.items():
                value = torch.as_tensor(np.asarray(weights[name]) if not torch.is_tensor(weights[name])
                                        else weights[name])
                if tuple(value.shape) != shape:
                    raise ModelError(f"weight {name} has shape {list(value.shape)}, "
                                     f"config says {list(shape)}")
                params[name].copy_(value.to(dtype=params[name].dtype))

    def weights_numpy(self) -> dict[str, np.ndarray]:
        """Parameters as contract-named float32 numpy arrays."""
        return {n: p.detach().cpu().numpy().astype(np.float32) for n, p in self.named_parameters()}

    # -- forward

    def _check_tokens(self, tokens: Any) -> torch.Tensor:
        if not torch.is_tensor(tokens):
            tokens = torch.as_tensor(np.asarray(tokens))
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.dtype.is_complex:
            raise ModelError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2:
            raise ModelError(f"tokens must have shape [B, T] or [T], got {list(tokens.shape)}")
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ModelError(f"sequence of length {tokens.shape[1]} exceeds n_ctx {self.cfg.n_ctx} "
                             f"(max_seq_len {self.cfg.max_seq_len} + BOS)")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.d_vocab):
            raise ModelError(f"token ids must lie in [0, d_vocab={self.cfg.d_vocab})")
        return tokens.to(device=self.W_E.device, dtype=torch.long)

    def forward(self, tokens: Any) -> torch.Tensor:
        """Token ids `[B, T]` (or `[T]`, read as B = 1) -> `[B, T, d_vocab_out]`. PAD keys are masked, and
        keys after the query in a causal model."""
        tokens = self._check_tokens(tokens)
        T = tokens.shape[1]
        embed = self.hook_embed(self.W_E[tokens])
        pos = self.hook_pos_embed(self.W_pos[:T].unsqueeze(0).expand(tokens.shape[0], T, -1))
        mask = self._attention_mask(tokens)
        x = embed + pos
        for block in self.blocks:
            x = block(x, mask)
        return x @ self.W_U + self.b_U

    def _attention_mask(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """[B, 1, T, T] True where a query may not attend to a key (as model.compiled.attention_mask)."""
        T = tokens.shape[1]
        mask = torch.zeros((tokens.shape[0], 1, T, T), dtype=torch.bool, device=tokens.device)
        if self.cfg.pad_token_id is not None:
            mask |= (tokens == self.cfg.pad_token_id)[:, None, None, :]
        if self.cfg.causal:
            mask |= torch.ones((T, T), dtype=torch.bool, device=tokens.device).triu(1)
        return mask if bool(mask.any()) else None

    # -- hooks, TransformerLens style

    def _resolve(self, names: NamesFilter) -> list[str]:
        if names is None:
            return list(self.hook_dict)
        if callable(names):
            return [n for n in self.hook_dict if names(n)]
        if isinstance(names, str):
            names = [names]
        unknown = [n for n in names if n not in self.hook_dict]
        if unknown:
            raise KeyError(f"unknown hook name(s) {unknown}; this model has e.g. {list(self.hook_dict)[:4]} "
                           f"and blocks.0..{self.cfg.n_layers - 1}.*")
        return list(names)

    def add_hook(self, name: str | Callable[[str], bool], fn: HookFn, dir: str = "fwd") -> None:  # noqa: A002
        """Attach `fn(activation, hook)` at a hook name (or every name a filter function accepts)."""
        for n in self._resolve(name):
            self.hook_dict[n].add_hook(fn, dir=dir)

    def reset_hooks(self) -> None:
        """Remove every hook added through `add_hook` / `hooks` / `run_with_hooks`."""
        for hp in self.hook_dict.values():
            hp.remove_hooks()

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[Any, HookFn]] = (),
              bwd_hooks: Sequence[tuple[Any, HookFn]] = (), reset_hooks_end: bool = True
              ) -> Iterator[HookedCompiledTransformer]:
        """Context manager: hooks `[(name_or_filter, fn), ...]` active inside the block only."""
        handles = []
        try:
            for direction, pairs in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
                for name, fn in pairs:
                    for n in self._resolve(name):
                        handles.append(self.hook_dict[n].add_hook(fn, dir=direction))
            yield self
        finally:
            if reset_hooks_end:
                for handle in handles:
                    handle.remove()
                for hp in self.hook_dict.values():
                    hp._handles = [h for h in hp._handles if h not in handles]

    def run_with_hooks(self, tokens: Any, fwd_hooks: Sequence[tuple[Any, HookFn]] = (),
                       bwd_hooks: Sequence[tuple[Any, HookFn]] = ()) -> torch.Tensor:
        """Forward with temporary hooks."""
        with self.hooks(fwd_hooks, bwd_hooks):
            return self(tokens)

    def run_with_cache(self, tokens: Any, names_filter: NamesFilter = None, *, detach: bool = True
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward, keeping the activations at the chosen hook names (all by default)."""
        cache: dict[str, torch.Tensor] = {}

        def save(act: torch.Tensor, hook: HookPoint) -> None:
            cache[hook.name] = act.detach() if detach else act

        with self.hooks([(n, save) for n in self._resolve(names_filter)]):
            out = self(tokens)
        return out, cache
