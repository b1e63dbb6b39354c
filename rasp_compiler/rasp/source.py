"""Print a RASP program as readable Python source that rebuilds it (same labels, same evaluation).

Used to save fuzzing failures as regression files and to describe a compiled model's program without
pickle. Functions print from, in order of preference:

1. their `__rasp_source__` text (every function `rasp_compiler.testing.generate` makes carries one);
2. a Comparison (`rasp.Comparison.EQ`) or a builtin (`abs`);
3. `inspect` source of a lambda or a `def`, with closure variables and globals it reads bound to their
   current values (literals, other printable functions, modules), e.g.
   ``(lambda k: lambda x: x + k)(3)``.

Anything else (callable objects, functions defined in a REPL, values without a literal form) raises
`SourceError` naming the op, unless `strict=False`, which prints a placeholder that raises when run.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import inspect
import linecache
import math
import re
import textwrap
import types
from collections.abc import Callable
from typing import Any

from rasp_compiler import rasp

__all__ = ["SourceError", "from_source", "function_source", "to_source"]


class SourceError(ValueError):
    """A program (or one of its functions) cannot be printed as source that rebuilds it."""


# ------------------------------------------------------------------------------------------------ literals


def _literal(v: Any, where: str) -> str:
    """Python source for a plain value, checked to read back equal."""
    if isinstance(v, float) and not math.isfinite(v):
        return f"float({str(v)!r})"
    if isinstance(v, (list, tuple)):
        inner = ", ".join(_literal(x, where) for x in v)
        if isinstance(v, tuple):
            return f"({inner},)" if len(v) == 1 else f"({inner})"
        return f"[{inner}]"
    if v is None or isinstance(v, (bool, int, float, str, bytes)):
        text = repr(v)
        try:
            ok = ast.literal_eval(text) == v
        except (ValueError, SyntaxError):
            ok = False
        if ok:
            return text
    raise SourceError(f"{where}: value {v!r} ({type(v).__name__}) has no literal source form")


# ------------------------------------------------------------------------------------------------ functions


class _FunctionPrinter:
    """Turns functions into source expressions; `def` functions go to a preamble of definitions."""

    def __init__(self) -> None:
        self.preamble: list[str] = []
        self._defs: dict[int, str] = {}
        self._visiting: set[int] = set()
        self._names: set[str] = set()

    def expr(self, f: Any, where: str) -> str:
        text = getattr(f, "__rasp_source__", None)
        if isinstance(text, str):
            return text
        if isinstance(f, rasp.Comparison):
            return f"rasp.Comparison.{f.name}"
        if isinstance(f, types.BuiltinFunctionType) and getattr(builtins, f.__name__, None) is f:
            return f.__name__
        if isinstance(f, type) and getattr(builtins, f.__name__, None) is f:
            return f.__name__
        if isinstance(f, types.FunctionType):
            if id(f) in self._visiting:
                raise SourceError(f"{where}: function {f.__qualname__} refers to itself; cannot print it")
            self._visiting.add(id(f))
            try:
                if f.__name__ == "<lambda>":
                    return self._lambda(f, where)
                return self._def(f, where)
            finally:
                self._visiting.discard(id(f))
        raise SourceError(
            f"{where}: cannot print {type(f).__name__} {f!r} as source; give it a `__rasp_source__` text "
            "(e.g. build it with rasp_compiler.testing.generate.make_function) or use a lambda/def"
        )

    # -- free variables -------------------------------------------------------------------------------

    def _bindings(self, f: types.FunctionType, where: str) -> list[tuple[str, str]]:
        """(name, source) for each closure variable and each global the function reads."""
        out: list[tuple[str, str]] = []
        code = f.__code__
        for name, cell in zip(code.co_freevars, f.__closure__ or (), strict=True):
            try:
                value = cell.cell_contents
            except ValueError as e:
                raise SourceError(f"{where}: closure variable {name!r} of {f.__qualname__} is unbound") from e
            out.append((name, self._value(value, f"{where}: closure variable {name!r}")))
        for name in sorted(_global_names(code)):
            if name in f.__globals__:
                value = f.__globals__[name]
                if name == "rasp" and value is rasp:
                    continue  # the printed program imports it
                out.append((name, self._value(value, f"{where}: global {name!r}")))
            elif not hasattr(builtins, name):
                raise SourceError(f"{where}: {f.__qualname__} reads {name!r}, which is not defined")
        return out

    def _value(self, v: Any, where: str) -> str:
        if isinstance(v, types.ModuleType):
            return f"__import__('importlib').import_module({v.__name__!r})"
        if callable(v) and not isinstance(v, type):
            return self.expr(v, where)
        if isinstance(v, rasp.RASPExpr):
            raise SourceError(f"{where}: a function that captures a RASP expression cannot be printed")
        return _literal(v, where)

    # -- lambdas --------------------------------------------------------------------------------------

    def _lambda(self, f: types.FunctionType, where: str) -> str:
        text = _lambda_text(f, where)
        if f.__defaults__ or f.__kwdefaults__:
            text = self._bind_defaults(f, text, where)
        binds = self._bindings(f, where)
        if not binds:
            return text
        names = ", ".join(n for n, _ in binds)
        values = ", ".join(v for _, v in binds)
        return f"(lambda {names}: {text})({values})"

    def _bind_defaults(self, f: types.FunctionType, text: str, where: str) -> str:
        """Replace default-argument expressions (`lambda x, v=v: ...`) by the values they had."""
        node = ast.parse(text, mode="eval").body
        assert isinstance(node, ast.Lambda)

        def value_node(v: Any, name: str) -> ast.expr:
            return ast.parse(self._value(v, f"{where}: default of {name!r}"), mode="eval").body

        positional = node.args.posonlyargs + node.args.args
        defaults = f.__defaults__ or ()
        named = positional[len(positional) - len(defaults):]
        node.args.defaults = [value_node(v, a.arg) for a, v in zip(named, defaults, strict=True)]
        kw = f.__kwdefaults__ or {}
        node.args.kw_defaults = [
            value_node(kw[a.arg], a.arg) if a.arg in kw else None for a in node.args.kwonlyargs
        ]
        return ast.unparse(node)

    # -- defs -----------------------------------------------------------------------------------------

    def _def(self, f: types.FunctionType, where: str) -> str:
        if id(f) in self._defs:
            return self._defs[id(f)]
        try:
            text = textwrap.dedent(inspect.getsource(f))
        except (OSError, TypeError) as e:
            raise SourceError(f"{where}: source of function {f.__qualname__} is not available ({e})") from e
        text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("@"))
        text = _without_annotations(text)
        binds = self._bindings(f, where)
        name = self._fresh(f.__name__)
        if binds:
            maker = self._fresh(f"_make_{f.__name__}")
            body = textwrap.indent(text, "    ")
            args = ", ".join(n for n, _ in binds)
            values = ", ".join(v for _, v in binds)
            self.preamble.append(
                f"def {maker}({args}):\n{body}\n    return {f.__name__}\n\n\n{name} = {maker}({values})"
            )
        elif name != f.__name__:
            self.preamble.append(f"{text}\n\n\n{name} = {f.__name__}")
        else:
            self.preamble.append(text)
        self._defs[id(f)] = name
        return name

    def _fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name


def _global_names(code: types.CodeType) -> set[str]:
    """Names a code object (and nested ones) loads as globals; over-approximated by co_names of loads."""
    names: set[str] = set()
    attrs: set[str] = set()
    import dis

    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            names.add(ins.argval)
        elif ins.opname in ("LOAD_ATTR", "LOAD_METHOD"):
            attrs.add(ins.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _same_code(a: types.CodeType, b: types.CodeType) -> bool:
    if a.co_code != b.co_code or a.co_names != b.co_names or a.co_varnames != b.co_varnames:
        return False
    if len(a.co_consts) != len(b.co_consts):
        return False
    for x, y in zip(a.co_consts, b.co_consts, strict=True):
        if isinstance(x, types.CodeType) and isinstance(y, types.CodeType):
            if not _same_code(x, y):
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True


def _compile_lambda(seg: str, freevars: tuple[str, ...]) -> types.CodeType | None:
    """Code object of the lambda `seg`, compiled inside a function owning `freevars` (so they stay free)."""
    src = f"def _rasp_outer({', '.join(freevars)}):\n    return {seg}\n" if freevars else seg
    try:
        module = compile(src, "<rasp-source>", "exec" if freevars else "eval")
    except SyntaxError:
        return None
    consts = module.co_consts
    if freevars:
        outer = next((c for c in consts if isinstance(c, types.CodeType)), None)
        if outer is None:
            return None
        consts = outer.co_consts
    return next((c for c in consts if isinstance(c, types.CodeType)), None)


def _lambda_text(f: types.FunctionType, where: str) -> str:
    """The source of a lambda, cut out of the lines that define it and checked against its code."""
    try:
        lines, _ = inspect.getsourcelines(f)
    except (OSError, TypeError) as e:
        raise SourceError(
            f"{where}: source of lambda is not available ({e}); give it a `__rasp_source__`"
        ) from e
    text = " ".join(line.strip() for line in lines)
    for m in re.finditer(r"\blambda\b", text):
        start = m.start()
        for end in range(len(text), start, -1):
            seg = text[start:end].strip()
            try:
                node = ast.parse(seg, mode="eval").body
            except SyntaxError:
                continue
            if not isinstance(node, ast.Lambda):
                continue
            code = _compile_lambda(seg, f.__code__.co_freevars)
            if code is not None and _same_code(code, f.__code__):
                return seg
            break  # the longest lambda starting here is not ours: try the next `lambda`
    raise SourceError(
        f"{where}: could not find the source of lambda {f.__qualname__} in {text[:120]!r}; "
        "give it a `__rasp_source__`"
    )


def _without_annotations(text: str) -> str:
    """A `def`'s source without its type annotations: they do not change what it computes, and they may
    name things (`Any`, `Sequence`) the printed program does not import."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if arg is not None:
                    arg.annotation = None
            node.returns = None
    return ast.unparse(tree)


def function_source(f: Callable[..., Any]) -> str:
    """A Python expression for `f` (lambda, builtin, Comparison or `__rasp_source__`); `def`s are rejected.

    Use `to_source` for whole programs: it also prints `def` functions, as preamble definitions.
    """
    printer = _FunctionPrinter()
    text = printer.expr(f, "function_source")
    if printer.preamble:
        raise SourceError(f"function_source: {f!r} needs definitions; print the whole program with to_source")
    return text


# ------------------------------------------------------------------------------------------------ programs


_SIMPLE = re.compile(r"[^0-9A-Za-z_]")


def to_source(program: Any, *, strict: bool = True, name: str = "program") -> str:
    """Python source that, run, defines `name` as a program equivalent to `program`.

    Each expression becomes one line named after its label (`.named(label)` keeps labels identical), in
    dependency order. `strict=False` prints functions that cannot be printed as a call that raises.
    """
    if not isinstance(program, rasp.RASPExpr):
        raise SourceError(f"to_source: expected a RASP expression, got {type(program).__name__}")
    printer = _FunctionPrinter()
    order = rasp.topological_order(program)
    var: dict[int, str] = {}
    used: set[str] = {"rasp", name}
    lines: list[str] = []

    def fn(f: Any, where: str) -> str:
        try:
            return printer.expr(f, where)
        except SourceError as e:
            if strict:
                raise
            return f"_unprintable({str(e)!r})"

    for e in order:
        where = f"{type(e).__name__} {e.label!r}"
        call = _expr_call(e, var, fn, where)
        call = _with_annotations(e, call, where)
        if isinstance(e, (rasp.TokensType, rasp.IndicesType, rasp.LengthType)) and call.startswith("rasp."):
            if "." not in call[len("rasp."):]:
                var[id(e)] = call
                continue
        v = _var_name(e.label, used)
        var[id(e)] = v
        lines.append(f"{v} = {call}")

    head = ["from rasp_compiler import rasp", ""]
    if not strict and any("_unprintable(" in line for line in lines):
        head += [
            "",
            "def _unprintable(reason):",
            "    def fail(*args):",
            "        raise NotImplementedError(reason)",
            "",
            "    return fail",
            "",
        ]
    pre = []
    for block in printer.preamble:
        pre += ["", block, ""]
    body = head + pre + ([""] if pre else []) + lines + [f"{name} = {var[id(program)]}", ""]
    return "\n".join(body)


def _var_name(label: str, used: set[str]) -> str:
    base = _SIMPLE.sub("_", label) or "expr"
    if base[0].isdigit() or base in dir(builtins) or base in ("lambda", "def", "class", "import", "from"):
        base = f"v_{base}"
    v, i = base, 1
    while v in used:
        i += 1
        v = f"{base}_{i}"
    used.add(v)
    return v


def _expr_call(e: Any, var: dict[int, str], fn: Callable[[Any, str], str], where: str) -> str:
    def ref(child: Any) -> str:
        return var[id(child)]

    if isinstance(e, rasp.TokensType):
        return "rasp.tokens"
    if isinstance(e, rasp.IndicesType):
        return "rasp.indices"
    if isinstance(e, rasp.LengthType):
        return "rasp.length"
    if isinstance(e, rasp.Map):
        fns = getattr(e.f, "fns", None)
        if fns is not None and type(e.f).__name__ == "_Composed":
            # a simplified Map(f, Map(g, x)): print the chain; rasp.Map composes it again
            inner = ref(e.inner)
            for i, g in enumerate(fns):
                inner = f"rasp.Map({fn(g, f'{where} (composed function {i})')}, {inner})"
            return inner
        simplify = ", simplify=False" if isinstance(e.inner, rasp.Map) else ""
        return f"rasp.Map({fn(e.f, where)}, {ref(e.inner)}{simplify})"
    if isinstance(e, rasp.LinearSequenceMap):
        return (
            f"rasp.LinearSequenceMap({ref(e.fst)}, {ref(e.snd)}, {_literal(e.fst_fac, where)}, "
            f"{_literal(e.snd_fac, where)})"
        )
    if isinstance(e, rasp.SequenceMap):
        return f"rasp.SequenceMap({fn(e.f, where)}, {ref(e.fst)}, {ref(e.snd)})"
    if isinstance(e, rasp.Full):
        return f"rasp.Full({_literal(e.fill, where)})"
    if isinstance(e, rasp.ConstantSOp):
        check = "" if e.check_length else ", check_length=False"
        return f"rasp.ConstantSOp({_literal(list(e.value), where)}{check})"
    if isinstance(e, rasp.Select):
        return f"rasp.Select({ref(e.keys)}, {ref(e.queries)}, {fn(e.predicate, where)})"
    if isinstance(e, rasp.ConstantSelector):
        check = "" if e.check_length else ", check_length=False"
        rows = [[bool(b) for b in row] for row in e.value]
        return f"rasp.ConstantSelector({_literal(rows, where)}{check})"
    if isinstance(e, rasp.SelectorAnd):
        return f"rasp.SelectorAnd({ref(e.fst)}, {ref(e.snd)})"
    if isinstance(e, rasp.SelectorOr):
        return f"rasp.SelectorOr({ref(e.fst)}, {ref(e.snd)})"
    if isinstance(e, rasp.SelectorNot):
        return f"rasp.SelectorNot({ref(e.inner)})"
    if isinstance(e, rasp.Aggregate):
        default = "" if e.default is None else f", default={_literal(e.default, where)}"
        return f"rasp.Aggregate({ref(e.selector)}, {ref(e.sop)}{default})"
    if isinstance(e, rasp.SelectorWidth):
        return f"rasp.SelectorWidth({ref(e.selector)})"
    raise SourceError(f"{where}: no source form for expression type {type(e).__name__}")


def _with_annotations(e: Any, call: str, where: str) -> str:
    explicit = dict(e.annotations)
    encoding = explicit.pop("encoding", None)
    name = explicit.pop("name", None)
    if isinstance(e, rasp.SOp) and not isinstance(e, (rasp.TokensType, rasp.IndicesType, rasp.LengthType)):
        if rasp.is_numerical(e):
            call = f"rasp.numerical({call})"
        elif encoding is not None:
            call = f"rasp.categorical({call})"
    elif encoding is not None:
        call = f"rasp.{encoding.value}({call})"
    if name is not None or not isinstance(e, (rasp.TokensType, rasp.IndicesType, rasp.LengthType)):
        call = f"{call}.named({e.label!r})"
    for key in sorted(explicit):
        value = _literal(explicit[key], f"{where}: annotation {key!r}")
        arg = f"{key}={value}" if key.isidentifier() else f"**{{{key!r}: {value}}}"
        call = f"{call}.annotated({arg})"
    return call


def from_source(text: str, name: str = "program") -> Any:
    """Run program source (as `to_source` prints it) and return the expression it binds to `name`.

    The text is registered with `linecache` under a name derived from its hash, so `inspect` finds the
    source of its lambdas again and the rebuilt program prints back to the same text.
    """
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    filename = f"<rasp-source-{digest}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {"__name__": f"rasp_source_{digest}"}
    try:
        exec(compile(text, filename, "exec"), namespace)  # noqa: S102 - running program source is the point
    except Exception as e:
        raise SourceError(f"from_source: running the program source failed: {type(e).__name__}: {e}") from e
    program = namespace.get(name)
    if not isinstance(program, rasp.RASPExpr):
        raise SourceError(f"from_source: the source does not bind {name!r} to a RASP expression")
    return program
