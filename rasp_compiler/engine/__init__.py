"""Engine layer: the Python side of the C++/CUDA engine (`rasp_compiler._engine`).

`Engine(model)` runs forward passes, caches, node/edge/subspace patches and sweeps; `patches` turns
patch specifications into the index arrays the C++ core reads; `cuda_io` hands torch CUDA tensors to
the CUDA core without copies.
"""

from rasp_compiler.engine.engine import (
    EdgePatch,
    EncodedSets,
    Engine,
    EngineError,
    NodePatch,
    build_info,
    cuda_available,
    hook_kinds,
    torch_patched_run,
)

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
