"""The package's one-way layers (docs/ARCHITECTURE.md), checked by tools rather than by reading.

- import-linter's layers contract in pyproject.toml: nothing imports a higher layer;
- no import cycle anywhere, not even between modules of one layer (function-level imports count);
- no `_private` name imported from another module.

The first check is also run on a copy of the tree with one planted upward import, to show it can fail.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rasp_compiler", "verify")


def _lint_imports(tree: Path) -> subprocess.CompletedProcess:
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))"
    )
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=300)


def _modules(tree: Path) -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (tree / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(tree).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every import statement, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name in mods]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                parts = parts if path.name == "__init__.py" else parts[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            for a in node.names:
                if f"{base}.{a.name}" in mods:
                    out.append((f"{base}.{a.name}", None))
                elif base in mods:
                    out.append((base, a.name))
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _graph(tree: Path) -> dict[str, set[str]]:
    mods = _modules(tree)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for target, _ in _imports(m, p, mods):
            # a package's __init__ re-exporting its own submodules is how a package shows its face
            if target != m and not target.startswith(m + "."):
                graph[m].add(target)
    return graph


def test_layers_contract_is_kept() -> None:
    res = _lint_imports(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 kept, 0 broken" in res.stdout


def test_layers_contract_catches_an_upward_import(tmp_path: Path) -> None:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    low = tmp_path / "rasp_compiler" / "model" / "errors.py"
    planted = "\n\ndef _upward():\n    from rasp_compiler.engine import Engine  # noqa\n"
    low.write_text(low.read_text() + planted)
    res = _lint_imports(tmp_path)
    assert res.returncode != 0
    assert "BROKEN" in res.stdout and "rasp_compiler.model.errors -> rasp_compiler.engine" in res.stdout


def test_no_import_cycles() -> None:
    assert _cycles(_graph(ROOT)) == []


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_private_names_imported_across_modules() -> None:
    mods = _modules(ROOT)
    private = [
        f"{m} imports {target}.{nm}"
        for m, p in mods.items()
        for target, nm in _imports(m, p, mods)
        if nm and nm.startswith("_") and not nm.startswith("__") and target != m
        and not (target == "rasp_compiler" and nm == "_engine")  # the compiled extension's module name
    ]
    assert private == []


@pytest.mark.parametrize("layer", ["rasp_compiler.rasp", "rasp_compiler.model", "rasp_compiler.compiler"])
def test_lower_layers_import_without_torch(layer: str) -> None:
    """The language, model and compiler layers stay usable without importing torch."""
    code = f"import sys, {layer}; sys.exit(1 if 'torch' in sys.modules else 0)"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr or f"importing {layer} imported torch"


def test_ruff_clean() -> None:
    paths = ["rasp_compiler", "verify", "tests", "benchmarks", "examples"]
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *paths], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
