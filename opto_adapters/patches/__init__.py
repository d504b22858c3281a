"""Prompt patches out: an optimized run's changes as a unified diff of the user's own source
(where the original texts are string literals) and as a patch set that ``apply_patch`` writes
into a live app, with the parameters' validation.

    sites.py     find the literal that holds a text (``ast``), or say why none does
    literals.py  write a new text at a literal, in the literal's own style
    diff.py      the unified diff of every change that has one literal
    patchset.py  the JSON patch set and ``apply_patch``
    export.py    both files from a list of changes
"""

from .diff import SourceDiff, source_diff
from .export import export_patches
from .patchset import (
    Change,
    PatchError,
    apply_patch,
    changes_between,
    read_patch_set,
    write_patch_set,
)
from .sites import Site, SourceIndex, project_files

__all__ = [
    "Change",
    "PatchError",
    "Site",
    "SourceDiff",
    "SourceIndex",
    "apply_patch",
    "changes_between",
    "export_patches",
    "project_files",
    "read_patch_set",
    "source_diff",
    "write_patch_set",
]
