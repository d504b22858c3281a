"""Typing a suggested value like the value it replaces: text, a number, or the same JSON type.

Each function returns the typed value or raises ``ValueError`` with the reason (the
parameter turns it into a ``ValidationError``).
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["as_number", "as_text", "differs", "json_type", "like_json", "unencodable"]


def as_text(value: Any) -> str:
    """``value`` if it is a ``str``."""
    if not isinstance(value, str):
        raise ValueError(f"expected text (str), got {type(value).__name__}: {value!r:.80}")
    return value


def as_number(value: Any, like: Any = None) -> int | float:
    """A finite number from a number or its text; whole when ``like`` is an ``int``."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError(f"expected a number, got the text {value!r:.80}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {type(value).__name__}: {value!r:.80}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value}")
    if isinstance(like, int) and not isinstance(like, bool):
        if value != int(value):
            raise ValueError(f"expected a whole number, got {value}")
        value = int(value)
    return value


def like_json(original: Any, value: Any) -> Any:
    """Coerce ``value`` to ``original``'s JSON type; strings are parsed as JSON when needed."""
    try:
        if isinstance(value, str) and not isinstance(original, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not JSON-serializable: {exc}") from None
    except RecursionError:
        raise ValueError("the JSON value is nested too deeply to check; keep it flatter") from None
    if original is not None and value is not None:
        want = json_type(original)
        got = json_type(value)
        if want != got:
            raise ValueError(f"expected a JSON {want}, got a JSON {got}")
    return value


def json_type(value: Any) -> str:
    """The JSON type name of a Python value (``object``, ``array``, ``string``...)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def unencodable(value: Any) -> str | None:
    """Why ``value`` (text, or a JSON value holding text) is not valid Unicode, or ``None``.

    A lone surrogate such as ``"\\udcff"`` (left by decoding bytes with
    ``errors="surrogateescape"``, or by a broken model reply) has no UTF-8 form: it cannot be
    stored, sent to a model or written to a file.
    """
    stack = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                char = item[exc.start]
                context = item[max(exc.start - 20, 0) : exc.start].encode("utf-8", "backslashreplace")
                return (
                    f"the text holds a lone surrogate {char!r} (U+{ord(char):04X}) at position "
                    f"{exc.start} (after {context.decode('ascii', 'backslashreplace')!r}), which "
                    "is not valid Unicode and cannot be stored; write the intended character or "
                    "leave it out"
                )
        elif isinstance(item, (list, tuple, dict)) and id(item) not in seen:
            seen.add(id(item))
            if isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            else:
                stack.extend(item)
    return None


def differs(new: Any, old: Any) -> bool:
    """``new != old``, where values too deeply nested to compare count as different."""
    try:
        return bool(new != old)
    except RecursionError:
        return True
