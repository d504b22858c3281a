"""Where a prompt's original text is written in the user's own source: string literals, found
with ``ast`` by the value they evaluate to.

Why a search of literals and not the objects' construction sites: a prompt object is mostly
built from a name (``ChatPromptTemplate.from_messages([("system", SYSTEM)])``, a tool from
its docstring), so the line that built the object does not hold the text; the literal that
does is wherever ``SYSTEM`` was written, maybe in another module. Comparing what each literal
evaluates to (``ast`` decodes escapes, raw strings, triple quotes, implicit and ``+``
concatenation; ``textwrap.dedent``, ``inspect.cleandoc`` and ``.strip()`` are applied, and
docstrings are read as tools read them) finds it wherever it is, and needs no live app: it
works from the values a store kept. A text no literal holds was built at run time and
``explain_missing`` says how, when it can tell.
"""

from __future__ import annotations

import ast
import inspect
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Site", "SourceIndex", "project_files"]

logger = logging.getLogger("opto_adapters.patches")

_SKIP_DIRS = frozenset({
    ".git", ".hg", ".venv", "venv", "env", ".env", "site-packages", "dist-packages",
    "node_modules", "__pycache__", "build", "dist", ".tox", ".nox", ".mypy_cache", ".pytest_cache",
})
_DEDENTS = {"dedent": textwrap.dedent, "cleandoc": inspect.cleandoc}
_MIN_PIECE = 8  # literal characters an f-string piece needs to be evidence of the text


def _strip(text: str) -> str:
    return text.strip()


def _same(text: str) -> str:
    return text


TRANSFORMS: dict[str, Callable[[str], str]] = {
    "literal": _same,
    "docstring": _strip,  # LangChain's @tool: the docstring, stripped
    "cleandoc": inspect.cleandoc,  # inspect.getdoc, LlamaIndex's FunctionTool
    "dedent": textwrap.dedent,
    "strip": _strip,
    "dedent+strip": lambda t: textwrap.dedent(t).strip(),
    "code": textwrap.dedent,  # a function's source, as a ``code`` parameter holds it
}


@dataclass(frozen=True)
class Site:
    """One string literal (or implicit / ``+`` concatenation of literals) in a source file.

    ``start``/``end`` are character offsets into the file's text; ``raw`` is what the literal
    evaluates to and ``transform`` what the program applies to it before use (see
    ``TRANSFORMS``), so the program's text is ``TRANSFORMS[transform](raw)``."""

    path: Path
    line: int
    start: int
    end: int
    raw: str
    transform: str = "literal"
    docstring: bool = False
    margin: str = ""
    """For ``code`` sites: the indentation of the block in the file."""
    owner: str = ""
    """For docstrings: the function or class they document."""
    prefix: str = ""
    """For ``signature`` sites: the line the program puts before the docstring."""

    @property
    def value(self) -> str:
        return self.text_of(self.raw)

    def text_of(self, raw: str) -> str:
        """The program's text when the literal holds ``raw``."""
        if self.transform == "signature":  # LlamaIndex's FunctionTool: f"{name}{signature}\n{doc}"
            return (self.prefix + raw).strip()
        return TRANSFORMS[self.transform](raw)

    def where(self, root: Path | None = None) -> str:
        return f"{_shown(self.path, root)}:{self.line}"


def _shown(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def _outside_project(path: Path) -> bool:
    """Installed code (site-packages, the standard library) is never the user's to patch."""
    parts = set(path.resolve().parts)
    if parts & {"site-packages", "dist-packages"}:
        return True
    stdlib = Path(sys.base_prefix).resolve() / "lib"
    try:
        path.resolve().relative_to(stdlib)
    except ValueError:
        return False
    return True


def project_files(entries: Iterable[str | os.PathLike[str]], *, root: str | os.PathLike[str] | None = None) -> list[Path]:
    """The Python files to search: each entry file, every ``.py`` under each entry folder, and
    the project modules the files import (found beside the importing file or under ``root``;
    installed packages are never searched)."""
    roots = [Path(root)] if root is not None else []
    found: dict[Path, None] = {}
    todo: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
                todo.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
        elif path.is_file():
            todo.append(path)
        else:
            raise FileNotFoundError(f"no source file or folder at {os.fspath(path)!r}: give the recipe or the app's folder")
    while todo:
        path = todo.pop(0)
        key = path.resolve()
        if key in found or _outside_project(path):
            continue
        found[key] = None
        for module in _imported_modules(path):
            hit = _module_file(module, [path.parent, *roots])
            if hit is not None and hit.resolve() not in found:
                todo.append(hit)
    return list(found)


def _imported_modules(path: Path) -> list[tuple[str, int]]:
    """``(module, level)`` for each import in ``path`` (``from . import x`` gives ``("x", 1)``
    as well as ``("", 1)``)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        logger.warning("not searched for prompt literals: %s does not parse (%s)", path, exc)
        return []
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names, level = [alias.name for alias in node.names], 0
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names = [base] + [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
            level = node.level
        else:
            continue
        for name in names:  # a package's __init__ runs too: ``a.b.c`` imports ``a`` and ``a.b``
            parts = name.split(".")
            out.extend((".".join(parts[: i + 1]), level) for i in range(len(parts)))
    return out


def _module_file(module: tuple[str, int], folders: list[Path]) -> Path | None:
    name, level = module
    if level:
        folders = [folders[0].parents[level - 2] if level > 1 else folders[0]]
    parts = [p for p in name.split(".") if p]
    if not parts:
        return None
    for folder in folders:
        base = folder.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


class SourceIndex:
    """Every string literal of ``files``, looked up by the text the program uses."""

    def __init__(self, files: Iterable[str | os.PathLike[str]]) -> None:
        self.files = [Path(f) for f in files]
        self.texts: dict[Path, str] = {}
        self.sites: list[Site] = []
        self.fstrings: list[tuple[Path, int, list[str]]] = []  # (file, line, literal pieces)
        self.unreadable: dict[Path, str] = {}
        self._by_value: dict[str, list[Site]] = {}
        for path in self.files:
            self._read(path)
        for site in self.sites:
            self._by_value.setdefault(site.value, []).append(site)

    def _read(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text, filename=str(path))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as exc:
            self.unreadable[path] = f"{type(exc).__name__}: {exc}"
            logger.warning("not searched for prompt literals: %s (%s)", path, exc)
            return
        self.texts[path] = text
        offsets = _line_offsets(text)
        lines = text.splitlines(keepends=True)

        def at(line: int, col: int) -> int:  # ast columns count UTF-8 bytes
            row = lines[line - 1] if line - 1 < len(lines) else ""
            return offsets[line - 1] + len(row.encode("utf-8")[:col].decode("utf-8", "replace"))

        def add(node: ast.expr, raw: str, transforms: tuple[str, ...], owner: str | None = None) -> None:
            start, end = at(node.lineno, node.col_offset), at(node.end_lineno or node.lineno, node.end_col_offset or 0)
            for t in transforms:
                self.sites.append(Site(path, node.lineno, start, end, raw, t, owner is not None, owner=owner or ""))

        docstrings: dict[int, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                body = node.body
                if body and isinstance(body[0], ast.Expr) and _string(body[0].value) is not None:
                    docstrings[id(body[0].value)] = getattr(node, "name", "")
        inner: set[int] = set()  # parts of a concatenation already taken whole
        wrapped: dict[int, tuple[str, ...]] = {}  # literal -> transforms a call applies
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                arg = _transformed_argument(node)
                if arg is not None:
                    wrapped.setdefault(id(arg[0]), ())
                    wrapped[id(arg[0])] += (arg[1],)
            if isinstance(node, ast.JoinedStr):
                pieces = [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
                self.fstrings.append((path, node.lineno, pieces))
        for node in ast.walk(tree):
            if id(node) in inner or not isinstance(node, ast.expr):
                continue
            raw = _string(node)
            if raw is None:
                continue
            for part in ast.walk(node):
                if part is not node:
                    inner.add(id(part))
            if id(node) in docstrings:
                add(node, raw, ("literal", "docstring", "cleandoc"), owner=docstrings[id(node)])
            else:
                add(node, raw, ("literal", *wrapped.get(id(node), ())))

    def find(self, value: str) -> list[Site]:
        """The literals whose text (after their transform) is ``value``, one per literal (the
        plainest transform that fits), in file order."""
        hits = self._by_value.get(value, []) or self._signed(value)
        best: dict[tuple[Path, int], Site] = {}
        for site in hits:
            key = (site.path, site.start)
            if key not in best:
                best[key] = site
        return sorted(best.values(), key=lambda s: (self.files.index(s.path) if s.path in self.files else 0, s.start))

    def _signed(self, value: str) -> list[Site]:
        """Docstrings that ``value`` is, after a first line ``name(signature)`` of the function
        they document (how LlamaIndex's ``FunctionTool`` describes a function)."""
        header, sep, _rest = value.partition("\n")
        name = header.partition("(")[0]
        if not sep or not name.isidentifier() or "(" not in header:
            return []
        out = []
        for site in self.sites:
            if site.owner == name and site.transform == "literal":
                signed = Site(site.path, site.line, site.start, site.end, site.raw, "signature", True,
                              owner=name, prefix=header + "\n")
                if signed.value == value:
                    out.append(signed)
        return out

    def find_code(self, code: str) -> list[Site]:
        """The places where ``code`` (a function's source, dedented) is written, at any
        indentation, in file order."""
        lines = code.split("\n")
        first = lines[0].strip()
        if not first:
            return []
        out = []
        for path in self.files:
            text = self.texts.get(path)
            if text is None:
                continue
            pos = text.find(first)
            while pos >= 0:
                line_start = text.rfind("\n", 0, pos) + 1
                margin = text[line_start:pos]
                block = textwrap.indent(code, margin)
                if not margin.strip() and text.startswith(block, line_start):
                    line = text.count("\n", 0, line_start) + 1
                    out.append(Site(path, line, line_start, line_start + len(block), block, "code", margin=margin))
                pos = text.find(first, pos + 1)
        return out

    def explain_missing(self, value: str, root: Path | None = None) -> str:
        """Why no literal holds ``value``: the f-string that builds it, if one does, else the
        files searched."""
        for path, line, pieces in self.fstrings:
            literal = [p for p in pieces if len(p.strip()) >= 1]
            if sum(len(p) for p in literal) < _MIN_PIECE:
                continue
            pos = 0
            for piece in literal:
                pos = value.find(piece, pos)
                if pos < 0:
                    break
                pos += len(piece)
            else:
                return (
                    f"built at run time by the f-string at {_shown(path, root)}:{line}; patch it by "
                    "hand, or apply the patch set to the live app (opto_adapters.apply_patch)"
                )
        words = value.split()
        partial = [s for s in self.sites if s.transform == "literal" and len(s.raw.strip()) >= _MIN_PIECE
                   and s.raw.strip() in value and s.raw.strip() != value.strip() and len(words) > 1]
        if partial:
            s = partial[0]
            return (
                f"built at run time: only a part of it is a literal ({s.where(root)}), the rest "
                "comes from names, calls or formatting; patch it by hand, or apply the patch set"
            )
        shown = ", ".join(_shown(p, root) for p in self.files[:3]) + (" ..." if len(self.files) > 3 else "")
        return (
            f"no string literal in the {len(self.files)} searched file(s) ({shown or 'none'}) holds its "
            "original text: it was built at run time, read from elsewhere (a file, a hub, a "
            "database) or is the framework's default prompt (not in your code: pass it explicitly "
            "to patch it); give the file that writes it with --source, or apply the patch set"
        )


def _line_offsets(text: str) -> list[int]:
    offsets, pos = [], 0
    for line in text.splitlines(keepends=True):
        offsets.append(pos)
        pos += len(line)
    offsets.append(pos)
    return offsets


def _string(node: ast.AST) -> str | None:
    """The value of a string constant or a ``+`` concatenation of them, else ``None``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _string(node.left), _string(node.right)
        if left is not None and right is not None:
            return left + right
    return None


def _transformed_argument(call: ast.Call) -> tuple[ast.expr, str] | None:
    """``(literal, transform)`` when ``call`` is ``dedent(L)``, ``textwrap.dedent(L)``,
    ``inspect.cleandoc(L)``, ``L.strip()`` or ``dedent(L).strip()``."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name in _DEDENTS and len(call.args) == 1 and not call.keywords and _string(call.args[0]) is not None:
        return call.args[0], name
    if name == "strip" and isinstance(func, ast.Attribute) and not call.args and not call.keywords:
        inner = func.value
        if _string(inner) is not None:
            return inner, "strip"
        if isinstance(inner, ast.Call):
            found = _transformed_argument(inner)
            if found is not None and found[1] == "dedent":
                return found[0], "dedent+strip"
    return None
