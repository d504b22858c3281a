"""Writing an optimized run's changes out for review: a unified diff of the user's source
(where the old texts are literals) and a patch set (every change, patchable or not)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .diff import SourceDiff, source_diff
from .patchset import Change, write_patch_set
from .sites import SourceIndex, project_files

__all__ = ["export_patches"]


def export_patches(
    changes: list[Change],
    *,
    sources: Iterable[str | os.PathLike[str]] = (),
    root: str | os.PathLike[str] | None = None,
    diff: str | os.PathLike[str] | None = None,
    patch_set: str | os.PathLike[str] | None = None,
    origin: Mapping[str, Any] | None = None,
) -> SourceDiff:
    """Locate ``changes`` in ``sources`` (files or folders; the modules they import from the
    project are searched too) and write the diff to ``diff`` and the patch set to
    ``patch_set`` (each if given). The returned ``SourceDiff`` says, per change, the literal
    patched (``site``) or why none could be (``unpatchable``)."""
    sources = list(sources)
    if diff is not None and not sources:
        raise ValueError("a source diff needs the app's source: give the recipe file or the app's folder (--source)")
    if sources:
        result = source_diff(changes, SourceIndex(project_files(sources, root=root)), root)
    else:  # no source to look in: the changes are neither located nor unpatchable
        result = SourceDiff("", changes, root=Path(root) if root is not None else None)
    if diff is not None:
        target = Path(diff)
        if not target.parent.is_dir():
            raise FileNotFoundError(f"cannot write {target}: the folder {target.parent} does not exist; create it first")
        target.write_text(result.text, encoding="utf-8")
    if patch_set is not None:
        write_patch_set(result.changes, patch_set, origin=origin)
    return result
