"""Torch CUDA tensors in and out of the CUDA engine without a trip through the host.

`Engine(model, device="cuda").run(t)` lands here when `t` is a CUDA tensor: the ids are made int32
and contiguous on the device, the output is allocated there by torch, and the kernel runs on
torch's current stream; only a 4-byte error flag (token ids out of range) comes back to the host.
"""

from __future__ import annotations

from typing import Any

from rasp_compiler.engine.errors import EngineError


def run_cuda_tensor(engine: Any, tokens: Any) -> Any:
    """Forward pass of a CUDA tensor of ids `[B, T]` or `[T]`; returns a CUDA float32 tensor."""
    import torch

    t = tokens.detach()
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise EngineError(f"tokens: token ids must be an integer tensor, got dtype {t.dtype}")
    squeeze = t.dim() == 1
    if squeeze:
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise EngineError(f"tokens: expected ids of shape [batch, seq] or [seq], got {list(tokens.shape)}")
    batch, seq = int(t.shape[0]), int(t.shape[1])
    if seq == 0:
        raise EngineError("tokens: empty sequence (need at least the BOS token)")
    if seq > engine.n_ctx:
        raise EngineError(f"tokens: sequence length {seq} exceeds n_ctx {engine.n_ctx}")
    device_index = engine._core.device()
    if t.device.index != device_index:
        raise EngineError(f"tokens: tensor is on {t.device}, the engine's weights are on cuda:{device_index}")
    if t.numel():  # range and BOS checked on the int64 ids, before narrowing to int32 could wrap them
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= engine.d_vocab:
            bad = lo if lo < 0 else hi
            raise EngineError(f"tokens: token id {bad} outside [0, d_vocab={engine.d_vocab})")
        engine._check_bos(t, "tokens")
    ids = t.to(torch.int32).contiguous()
    out = torch.empty((batch, seq, int(engine.config.d_vocab_out)), device=t.device, dtype=torch.float32)
    if batch:
        stream = torch.cuda.current_stream(t.device).cuda_stream
        try:
            engine._core.forward_ptr(ids.data_ptr(), batch, seq, out.data_ptr(), stream)
        except ValueError as exc:
            raise EngineError(str(exc)) from None
    return out[0] if squeeze else out
