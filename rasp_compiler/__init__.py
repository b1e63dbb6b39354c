"""rasp_compiler: compile RASP programs into transformers whose circuits are known exactly.

Submodules are imported lazily so that `from rasp_compiler import rasp` stays light (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {"rasp", "lib", "compiling", "model", "engine", "io", "export", "generate", "torch_model", "cli"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "load":
        from rasp_compiler.io import load

        return load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
