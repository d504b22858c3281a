"""Lenient JSON extraction from model replies: fences, prose, ``<think>`` and trailing commas."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

from .errors import LLMResponseError

__all__ = ["extract_json"]

_THINK_RE = re.compile(r"<think>.*?</think>", re.S | re.I)
_FENCE_RE = re.compile(r"```[ \t]*[A-Za-z0-9_+-]*[ \t]*\r?\n?(.*?)```", re.S)
_MAX_OBJECT_STARTS = 64


def _strip_trailing_commas(text: str) -> str:
    """Remove commas directly before ``}``/``]`` (outside string literals)."""
    out: list[str] = []
    in_string = escaped = False
    n = len(text)
    for i, ch in enumerate(text):
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch == ",":
            j = i + 1
            while j < n and text[j].isspace():
                j += 1
            if j < n and text[j] in "}]":
                continue
        out.append(ch)
    return "".join(out)


def _loads_object(text: str) -> dict[str, Any] | None:
    text = text.strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:  # only now try the (slower, pure Python) repair
        try:
            value = json.loads(_strip_trailing_commas(text))
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _balanced_objects(text: str, starts: int = _MAX_OBJECT_STARTS) -> Iterator[str]:
    """Yield ``{...}`` segments with balanced braces (string-aware), left to right, trying at
    most ``starts`` opening braces (1: only the outermost object at the first ``{``)."""
    start = text.find("{")
    tried = 0
    while start != -1 and tried < starts:
        tried += 1
        depth = 0
        in_string = escaped = False
        for i in range(start, len(text)):
            ch = text[i]
            if in_string:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    yield text[start : i + 1]
                    break
        start = text.find("{", start + 1)


def extract_json(text: str | None, *, nested: bool = True) -> dict[str, Any]:
    """Parse the first JSON object in a model reply, leniently.

    Accepts bare JSON, JSON in a Markdown code fence, JSON surrounded by prose,
    ``<think>…</think>`` preambles and trailing commas (a reply that is one JSON object is
    parsed once and taken as it is, ``<think>`` inside its strings included).  ``nested=False`` (for a reply cut
    at ``max_tokens``) accepts only a complete top-level object: an object inside one that
    never closed is not taken for the reply.  Raises :class:`LLMResponseError` (carrying the
    raw text) when no object is found.
    """
    raw = text or ""
    stripped = raw.strip()
    if not stripped:
        raise LLMResponseError("empty reply where a JSON object was expected", raw_text=raw)
    if stripped[0] == "{" and stripped[-1] == "}":  # the usual reply: one parse, no scans
        try:
            value = json.loads(stripped)
        except ValueError:
            pass
        else:
            if isinstance(value, dict):
                return value
    cleaned = _THINK_RE.sub("", raw).strip() if "think>" in raw.lower() else raw.strip()
    first_brace = cleaned.find("{")
    fences = (
        m.group(1)
        for m in _FENCE_RE.finditer(cleaned)
        if nested or m.start() < first_brace  # (cut reply: a fence around the reply, not in it)
    )
    candidates = itertools.chain((cleaned,), fences)
    for candidate in candidates:  # (lazily: a reply that parses at once costs one parse)
        obj = _loads_object(candidate)
        if obj is not None:
            return obj
    for segment in _balanced_objects(cleaned, _MAX_OBJECT_STARTS if nested else 1):
        obj = _loads_object(segment)
        if obj is not None:
            return obj
    raise LLMResponseError("no JSON object found in the reply", raw_text=raw)
