"""Objects named on a command line: `path/to/file.py:name` or `package.module:name`.

One rule for every command that takes user code (a program to compile, a tool to fuzz or evaluate):
a spec whose part before the last colon ends in `.py` or contains a path separator is a file, run as a
fresh module; anything else is imported. Errors name the spec and what would be accepted.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["ObjectLoadError", "is_file_spec", "load_module", "load_object"]


class ObjectLoadError(ValueError):
    """A `file.py:name` or `module:name` spec that does not name a loadable object."""


def is_file_spec(spec: str) -> bool:
    where = spec.rsplit(":", 1)[0]
    return ":" in spec and (where.endswith(".py") or os.sep in where or "/" in where)


def load_module(path: Path) -> ModuleType:
    """Run a Python file as a fresh module (not added to sys.modules)."""
    if not path.is_file():
        raise ObjectLoadError(f"{path} is a directory, not a Python file" if path.is_dir()
                              else f"file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"rasp_user_{abs(hash(str(path.resolve())))}", path)
    if spec is None or spec.loader is None:
        raise ObjectLoadError(f"cannot load {path} as a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file; say what went wrong in it
        raise ObjectLoadError(f"running {path} failed: {type(e).__name__}: {e}") from e
    return module


def load_object(spec: str) -> tuple[Any, ModuleType]:
    """(object, its module) for `path/to/file.py:name` or `package.module:name` (dotted attributes ok)."""
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise ObjectLoadError(f"{spec!r}: expected path/to/file.py:name or package.module:name")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise ObjectLoadError(f"{spec!r}: {attr!r} is not a Python name")
    if is_file_spec(spec):
        module = load_module(Path(where))
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ObjectLoadError(f"{spec!r}: cannot import module {where!r} ({e}); a file is named "
                                  "path/to/file.py:name") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            defined = sorted(n for n, v in vars(module).items() if not n.startswith("_") and callable(v)
                             and getattr(v, "__module__", module.__name__) == module.__name__)
            hint = f" (it defines: {', '.join(defined[:8])})" if defined else ""
            raise ObjectLoadError(f"{spec!r}: {where} does not define {attr!r}{hint}")
        obj = getattr(obj, part)
    return obj, module
