"""Trainable code: what a model-written function must look like before it is compiled and run.

A ``code`` parameter holds the source of one function; the optimizer's text becomes Python
that runs in this process. Loading a version runs its top level (decorators, default values,
annotations, and any other statement), so a version is accepted only if it is exactly one
definition of the function with the original's name, decorators and signature: then loading
it runs nothing the original did not run, and only the body (which runs when the function
is called) can change.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import inspect
import linecache
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["FunctionShape", "check_function", "compile_function", "function_source"]

_PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError)


@dataclass(frozen=True)
class FunctionShape:
    """What every version of a trainable function keeps: name, ``async``, decorators and
    signature (argument names, kinds, defaults and annotations, return annotation)."""

    name: str
    is_async: bool
    decorators: tuple[str, ...]
    signature: str
    shown: str  # the ``def`` line as the model should keep it

    @classmethod
    def of(cls, source: str, name: str) -> FunctionShape:
        """The shape of the definition of ``name`` in ``source`` (``ValueError`` if none)."""
        try:
            tree = ast.parse(source)
        except _PARSE_ERRORS as exc:
            raise ValueError(f"cannot read the source of {name!r}: {exc}") from None
        for stmt in tree.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == name:
                return cls._of(stmt)
        raise ValueError(f"the source has no top-level function named {name!r}")

    @classmethod
    def _of(cls, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> FunctionShape:
        is_async = isinstance(fn, ast.AsyncFunctionDef)
        returns = f" -> {ast.unparse(fn.returns)}" if fn.returns is not None else ""
        shown = f"{'async ' if is_async else ''}def {fn.name}({ast.unparse(fn.args)}){returns}:"
        return cls(
            name=fn.name,
            is_async=is_async,
            decorators=tuple(ast.dump(d) for d in fn.decorator_list),
            signature=ast.dump(fn.args) + "->" + (ast.dump(fn.returns) if fn.returns else ""),
            shown=shown,
        )


def function_source(fn: Callable[..., Any], *, drop: Callable[[Any], bool]) -> str:
    """The dedented source of ``fn`` without the decorators for which ``drop(object)`` is true
    (the ``@bundle`` that made it trainable); other decorators stay. ``OSError`` or
    ``TypeError`` if the source is not available."""
    source = textwrap.dedent(inspect.getsource(fn))
    lines = source.splitlines(keepends=True)
    try:
        tree = ast.parse(source)
    except _PARSE_ERRORS:
        return source
    defs = [s for s in tree.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not defs:
        return source
    definition = defs[0]
    scope = getattr(fn, "__globals__", {})
    kept = []
    for deco in definition.decorator_list:
        if not drop(_resolve(deco, scope)) and not _named_bundle(deco):
            end = deco.end_lineno or deco.lineno
            kept.extend(lines[deco.lineno - 1 : end])
    return "".join(kept) + "".join(lines[definition.lineno - 1 :])


def _resolve(expr: ast.expr, scope: dict[str, Any]) -> Any:
    """The object a decorator like ``name``, ``a.b`` or ``a.b(...)`` names in ``scope``."""
    if isinstance(expr, ast.Call):
        expr = expr.func
    path: list[str] = []
    while isinstance(expr, ast.Attribute):
        path.append(expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return None
    obj = scope.get(expr.id, getattr(builtins, expr.id, None))
    for attr in reversed(path):
        obj = getattr(obj, attr, None)
    return obj


def _named_bundle(expr: ast.expr) -> bool:
    target = expr.func if isinstance(expr, ast.Call) else expr
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
    return name == "bundle"


def _describe(stmt: ast.stmt) -> str:
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return "an import (put imports inside the function)"
    if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        return "an assignment"
    if isinstance(stmt, ast.Expr):
        return "an expression"
    if isinstance(stmt, ast.ClassDef):
        return f"a class definition ({stmt.name})"
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return f"another function definition ({stmt.name})"
    kind = type(stmt).__name__.lower()
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} statement"


def check_function(source: str, shape: FunctionShape) -> str | None:
    """Why ``source`` is not an acceptable version of the function, or ``None``.

    Acceptable: exactly one top-level definition of ``shape.name``, nothing else (comments
    are fine), with the same decorators and signature as the original.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return f"code does not compile: {exc.msg} (line {exc.lineno})"
    except _PARSE_ERRORS as exc:
        return f"code cannot be parsed: {type(exc).__name__}: {exc}"
    defs = [
        s for s in tree.body
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name == shape.name
    ]
    if not defs:
        return (
            f"the code must define a top-level function named {shape.name!r} "
            f"(keep `{shape.shown}`)"
        )
    definition = defs[0]
    others = [s for s in tree.body if s is not definition]
    if others:
        found = "; ".join(f"line {s.lineno} is {_describe(s)}" for s in others)
        return (
            f"the code must be exactly one definition of {shape.name}() and nothing else at the "
            f"top level: {found}. Top-level statements run as soon as the code is loaded, so "
            "they are refused"
        )
    got = FunctionShape._of(definition)
    if got.is_async != shape.is_async:
        return f"the function must stay {'async ' if shape.is_async else ''}def: keep `{shape.shown}`"
    if got.decorators != shape.decorators:
        want = "no decorators" if not shape.decorators else "the original decorators"
        return (
            f"the decorators of {shape.name}() must stay as they were ({want}): decorators run "
            "when the code is loaded"
        )
    if got.signature != shape.signature:
        return (
            f"the signature must stay `{shape.shown}` (got `{got.shown}`): argument names, "
            "defaults and annotations are fixed; change the body only"
        )
    return None


def compile_function(source: str, shape: FunctionShape, original: Callable[..., Any]) -> Callable[..., Any]:
    """Check ``source`` (``ValueError`` with the reason if it is refused), then define the
    function in the original's module globals and return it."""
    reason = check_function(source, shape)
    if reason is not None:
        raise ValueError(reason)
    digest = hashlib.sha1(source.encode("utf-8", "backslashreplace")).hexdigest()[:10]
    filename = f"<bundle {shape.name} {digest}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {}
    module_globals = getattr(original, "__globals__", None)
    if module_globals is None:
        module = sys.modules.get(getattr(original, "__module__", ""), None)
        module_globals = vars(module) if module else {}
    exec(compile(source, filename, "exec"), module_globals, namespace)
    return namespace[shape.name]
