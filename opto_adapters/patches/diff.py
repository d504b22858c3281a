"""A unified diff of the user's source files that writes each change's new text where its old
text is a literal (``git apply`` / ``patch -p1`` take it).

Each change's old text is looked up in a ``SourceIndex``; a change is patched when exactly one
literal holds it, and otherwise marked unpatchable with the reason (built at run time, found
at several places, not a text, written differently by two changes). Every patched file is
parsed again before the diff is given, so a diff never breaks the user's code.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass, field
from pathlib import Path

from .literals import RenderError, render
from .patchset import Change
from .sites import Site, SourceIndex

__all__ = ["SourceDiff", "default_root", "source_diff"]


@dataclass
class SourceDiff:
    """The diff text, and the changes with their ``site`` or ``unpatchable`` reason set."""

    text: str
    changes: list[Change]
    files: list[Path] = field(default_factory=list)
    root: Path | None = None
    """The folder the diff's paths are relative to (apply the diff there)."""

    @property
    def patched(self) -> list[Change]:
        return [c for c in self.changes if c.site is not None]

    @property
    def unpatchable(self) -> list[Change]:
        return [c for c in self.changes if c.unpatchable is not None]


def source_diff(changes: list[Change], index: SourceIndex, root: str | Path | None = None) -> SourceDiff:
    """Locate each change's old text in ``index`` and diff the files with the new texts in
    place; paths in the diff are relative to ``root`` (default: the top of the git work tree
    that holds the files, else the current folder if it holds them, else their common folder)."""
    edits: dict[Path, list[tuple[Site, str, Change]]] = {}
    claimed: dict[tuple[Path, int], Change] = {}
    base = Path(root) if root is not None else default_root(index.files)
    for change in changes:
        change.site = change.unpatchable = None
        if not isinstance(change.old, str) or not isinstance(change.new, str):
            change.unpatchable = (
                f"a {change.kind} value, not a text: the source diff writes only string literals; "
                "the patch set carries it (opto_adapters.apply_patch)"
            )
            continue
        sites = index.find_code(change.old) if change.kind == "code" else index.find(change.old)
        if not sites:
            change.unpatchable = (
                f"its source is in none of the {len(index.files)} searched file(s): give the file "
                "that defines the function with --source, or apply the patch set"
                if change.kind == "code" else index.explain_missing(change.old, base)
            )
            continue
        if len(sites) > 1:
            where = ", ".join(s.where(base) for s in sites[:5])
            change.unpatchable = (
                f"its original text is written at {len(sites)} places ({where}); which one made this "
                "prompt cannot be told from the text: patch the right one by hand, or apply the patch set"
            )
            continue
        site = sites[0]
        other = claimed.get((site.path, site.start))
        if other is not None:
            if other.new == change.new:
                change.site = site.where(base)
            else:
                change.unpatchable = (
                    f"its original text is the literal at {site.where(base)}, shared with {other.parameter}, "
                    "which changes it differently; split the literal in two, or apply the patch set"
                )
            continue
        try:
            text = render(site, index.texts[site.path], change.new)
        except RenderError as exc:
            change.unpatchable = f"the literal at {site.where(base)} cannot take the new text: {exc}"
            continue
        claimed[(site.path, site.start)] = change
        change.site = site.where(base)
        edits.setdefault(site.path, []).append((site, text, change))
    out: list[str] = []
    files: list[Path] = []
    for path in sorted(edits, key=str):
        old = index.texts[path]
        new = old
        for site, text, _change in sorted(edits[path], key=lambda e: e[0].start, reverse=True):
            new = new[: site.start] + text + new[site.end :]
        try:
            ast.parse(new, filename=str(path))
        except SyntaxError as exc:  # a bug here must never reach the user's code
            for _site, _text, change in edits[path]:
                change.site = None
                change.unpatchable = f"patching {path} would not parse ({exc.msg}, line {exc.lineno}); apply the patch set"
            continue
        name = _relative(path, base)
        out.append(_unified(old, new, name))
        files.append(path)
    return SourceDiff("".join(out), changes, files, base)


def _unified(old: str, new: str, name: str) -> str:
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    lines = []
    for line in difflib.unified_diff(a, b, f"a/{name}", f"b/{name}", n=3):
        if not line.endswith("\n"):
            line += "\n\\ No newline at end of file\n"
        lines.append(line)
    return f"diff --git a/{name} b/{name}\n" + "".join(lines)


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        raise ValueError(
            f"{path} is not under {base}: give a root that holds every source file (--root)"
        ) from None


def default_root(files: list[Path]) -> Path:
    """Where a diff of ``files`` is applied: their git work tree's top, else the current
    folder when it holds them all, else their common folder."""
    common = _common_folder(files)
    for folder in (common, *common.parents):
        if (folder / ".git").exists():
            return folder
    cwd = Path.cwd().resolve()
    if common == cwd or cwd in common.parents:
        return cwd
    return common


def _common_folder(files: list[Path]) -> Path:
    folders = [f.resolve().parent for f in files]
    if not folders:
        return Path.cwd()
    common = folders[0]
    for folder in folders[1:]:
        while common not in (folder, *folder.parents):
            common = common.parent
    return common
