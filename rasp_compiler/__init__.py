"""rasp_compiler: compile RASP programs into transformers whose circuits are known exactly.

The package is a stack of one-way layers (docs/ARCHITECTURE.md; enforced by the import-linter
contract in pyproject.toml): `rasp` (language) < `model` < `compiler` < `transforms` < `engine` <
`testing` < `verify` (its own top-level package) < `app`.

tracr-style imports keep working: `from rasp_compiler import rasp, compiling, lib` (`compiling` is
`rasp_compiler.compiler.compiling`, `lib` is `rasp_compiler.rasp.lib`), and `rasp_compiler.load(dir)`;
they are resolved on first use so that importing the language alone stays light (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute of it or None for the module itself)
_ALIASES = {
    "compiling": ("rasp_compiler.compiler.compiling", None),
    "lib": ("rasp_compiler.rasp.lib", None),
    "load": ("rasp_compiler.model", "load"),
}


def __getattr__(name: str) -> Any:
    if name in _ALIASES:
        module, attr = _ALIASES[name]
        found = importlib.import_module(module)
        return found if attr is None else getattr(found, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
