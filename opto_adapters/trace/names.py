"""Node names: what a valid name is, and how to make one from any text."""

from __future__ import annotations

import re

__all__ = ["check_name", "safe_name"]

_NAME_RE = re.compile(r"^[A-Za-z_][\w.\-:/\[\]]{0,127}$")
_NAME_BAD = re.compile(r"[^\w.\-:/\[\]]+")


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid node name, else raise ``ValueError`` saying why."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid node name {name!r}: expected 1-128 characters, starting with a letter or "
            "'_', then letters, digits or any of '_.-:/[]' (no spaces), e.g. 'system_prompt'"
        )
    return name


def safe_name(text: object, *, default: str = "value", max_length: int = 100) -> str:
    """A valid node name made from any text (a run name, a tool name, a key): other characters
    become ``_``, a leading digit gets a ``_``, and the result is cut to ``max_length``."""
    if not 1 <= max_length <= 128:
        raise ValueError(f"max_length must be between 1 and 128, got {max_length}")
    name = _NAME_BAD.sub("_", str(text)).strip("_") or default
    if not re.match(r"[A-Za-z_]", name):
        name = "_" + name
    return name[:max_length]
