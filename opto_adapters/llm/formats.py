"""Structured output per server family: the request each ``json_mode`` sends, the detection
ladder ``"auto"`` climbs down, and the JSON instruction for modes that do not enforce a schema.

What each family's OpenAI-compatible endpoint accepts:

* ``"json_schema"`` - ``response_format={"type": "json_schema", "json_schema": {"name",
  "schema", "strict"}}``: OpenAI, vLLM (guided decoding; its older ``guided_json`` extra field
  is gone since 0.12), llama-server (recent builds).
* ``"llama.cpp"`` - ``response_format={"type": "json_object", "schema": {...}}``: llama-server
  and llama-cpp-python turn the schema into a grammar, so even a small model returns the right
  shape (llama-cpp-python's server refuses ``json_schema`` with HTTP 500).
* ``"ollama"`` - Ollama's ``/v1`` endpoint copies ``response_format.json_schema.schema`` into
  its native ``format`` field (Ollama 0.5 and later; older builds ignore it without an error,
  and it reads no top-level ``format``), so the request is ``json_schema`` without ``strict``,
  and the prompt also asks for JSON.
* ``"json_object"`` - ``response_format={"type": "json_object"}`` (any JSON) + instruction.
* ``"text"`` - no ``response_format``; the instruction alone.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

__all__ = [
    "JSON_MODES",
    "JSONMode",
    "check_json_mode",
    "next_mode",
    "request_format",
    "shape_example",
    "with_json_instruction",
]

JSONMode = Literal["json_schema", "llama.cpp", "ollama", "json_object", "text"]
JSON_MODES: tuple[str, ...] = ("auto", "json_schema", "llama.cpp", "ollama", "json_object", "text")

_SCHEMA_MODES = frozenset({"json_schema", "llama.cpp", "ollama"})
_ONLY_TEXT_OR_JSON_OBJECT = re.compile(r"'text' or 'json_object'|\"text\" or \"json_object\"")


def check_json_mode(mode: object) -> str:
    """``mode`` if it is one of :data:`JSON_MODES`, else a ``ValueError`` naming them."""
    if mode not in JSON_MODES:
        raise ValueError(
            f"json_mode must be one of {', '.join(repr(m) for m in JSON_MODES)}; got {mode!r}. "
            "'auto' finds the endpoint's mode from its first refusal; 'json_schema' suits OpenAI "
            "and vLLM, 'llama.cpp' llama-server and llama-cpp-python, 'ollama' Ollama."
        )
    return str(mode)


def _schema_name(schema: Mapping[str, Any], name: str | None) -> str:
    return _clean_name(name or str(schema.get("title") or "response"))


@functools.lru_cache(maxsize=256)
def _clean_name(raw: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", raw)[:64] or "response"


def request_format(
    mode: str, schema: Mapping[str, Any] | None, name: str | None, strict: bool
) -> dict[str, Any] | None:
    """The ``response_format`` that ``mode`` sends (``None``: none is sent)."""
    if mode == "text":
        return None
    if schema is None or mode == "json_object":
        return {"type": "json_object"}
    if mode == "llama.cpp":
        return {"type": "json_object", "schema": dict(schema)}
    spec: dict[str, Any] = {"name": _schema_name(schema, name), "schema": dict(schema)}
    if mode == "json_schema":
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}


def needs_instruction(mode: str, schema: Mapping[str, Any] | None) -> bool:
    """Whether the prompt must ask for JSON itself (the endpoint does not enforce a schema)."""
    return mode != "json_schema" or schema is None


def next_mode(
    mode: str, has_schema: bool, refusal: str, family: str | None, skip: frozenset[str]
) -> str | None:
    """The mode to try after the endpoint refused ``mode`` (``None``: nothing left)."""
    if mode == "json_schema" and has_schema:
        llama_like = family in ("llama.cpp", "llama-cpp-python") or (
            family is None and _ONLY_TEXT_OR_JSON_OBJECT.search(refusal) is not None
        )
        ladder = ["llama.cpp", "json_object", "text"] if llama_like else ["json_object", "text"]
    elif mode in ("llama.cpp", "ollama"):
        ladder = ["json_object", "text"]
    elif mode == "json_object":
        ladder = ["text"]
    else:
        ladder = []
    return next((m for m in ladder if m not in skip), None)


def shape_example(schema: Mapping[str, Any]) -> Any:
    """A filled-in example of what ``schema`` describes (small models copy an example well,
    and echo a schema back)."""
    kind = schema.get("type")
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: shape_example(v) if isinstance(v, Mapping) else "..." for k, v in props.items()}
    if kind == "array":
        items = schema.get("items")
        return [shape_example(items)] if isinstance(items, Mapping) else []
    return {"string": "...", "number": 0, "integer": 0, "boolean": False, "null": None}.get(
        str(kind), "..."
    )


def with_json_instruction(
    messages: list[dict[str, Any]], schema: Mapping[str, Any] | None, example: Any = None
) -> list[dict[str, Any]]:
    """Ask for one JSON object, shaped like ``example`` (or an example made from ``schema``),
    in the system message; never the schema text itself."""
    hint = "Respond with a single JSON object only, without any other text."
    if example is None and schema is not None:
        example = shape_example(schema)
    if example is not None:
        hint += " Like this: " + (example if isinstance(example, str) else json.dumps(example))
    first = messages[0] if messages else None
    if first is not None and first.get("role") == "system" and isinstance(first.get("content"), str):
        return [{**first, "content": f"{first['content']}\n\n{hint}"}, *messages[1:]]
    return [{"role": "system", "content": hint}, *messages]


def is_schema_mode(mode: str) -> bool:
    """Whether ``mode`` sends the schema to the endpoint."""
    return mode in _SCHEMA_MODES
