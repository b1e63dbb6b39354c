"""Type stub of the private C++ extension. Private and checked only for dtypes and shapes: token ranges,
BOS placement, patch names and lengths are checked by its only caller, `rasp_compiler.engine.Engine`."""

from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

def build_info() -> dict[str, Any]: ...
def cuda_available() -> bool: ...
def cuda_smoke_test() -> bool: ...  # only present when the CUDA kernels were built

class EngineCore:
    def __init__(self, dims: dict[str, int | None], weights: list[npt.NDArray[np.float32]]) -> None: ...
    def forward(self, tokens: npt.NDArray[np.int32], threads: int = 0) -> npt.NDArray[np.float32]: ...
    def forward_record(
        self, tokens: npt.NDArray[np.int32], hooks: list[tuple[str, int]], threads: int = 0,
        per_sequence: bool = False,
    ) -> tuple[npt.NDArray[np.float32], list[npt.NDArray[np.float32]]]: ...
    def sweep(
        self,
        tokens: npt.NDArray[np.int32],
        source_tokens: npt.NDArray[np.int32] | None,
        nodes: npt.NDArray[np.int32],
        node_offsets: npt.NDArray[np.int64],
        edges: npt.NDArray[np.int32],
        edge_offsets: npt.NDArray[np.int64],
        proj_diag: npt.NDArray[np.float32],
        proj_mat: npt.NDArray[np.float32],
        metric: str,
        atol: float,
        return_outputs: bool,
        override_ids: npt.NDArray[np.int32],
        override_values: npt.NDArray[np.float32],
        threads: int = 0,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32] | None]: ...
    def stats(self) -> dict[str, int]: ...

class CudaEngineCore(EngineCore):
    """Present only when the CUDA kernels were built; same methods as EngineCore, on a device."""

    def __init__(  # type: ignore[override]
        self, dims: dict[str, int | None], weights: list[npt.NDArray[np.float32]], device: int = 0
    ) -> None: ...
    def forward_ptr(self, tokens_ptr: int, batch: int, seq: int, out_ptr: int, stream: int = 0) -> None: ...
