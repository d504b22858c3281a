"""Framework-neutral values of a run: messages, tool calls and documents, and their atoms.

Adapters translate their framework's objects into these (plain data: a span can be written
to a file and read back), so one builder can find where a value came from. The *atoms* of a
value are the pieces that identify its origin: texts (strong: they explain a value), and
message, tool-call and document ids (weak: they link steps but explain no text).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Document",
    "Message",
    "ToolCall",
    "atoms",
    "display",
    "from_data",
    "strong",
    "to_data",
]

_MAX_DEPTH = 8
_MAX_ATOMS = 20_000  # bounds the work on huge values; long agent histories fit
_MAX_ROLE_TEXT = 2000


@dataclass(frozen=True)
class ToolCall:
    """A tool call a model asked for: ``id`` ties it to the tool run that answers it."""

    name: str
    args: Any = None
    id: str | None = None

    def text(self) -> str:
        try:
            args = json.dumps(self.args if self.args is not None else {}, ensure_ascii=False, sort_keys=True)
        except (TypeError, ValueError):
            args = str(self.args)
        return f"[tool call] {self.name}({args})"


@dataclass(frozen=True)
class Message:
    """A chat message: ``role`` is ``system``, ``human``, ``ai``, ``tool`` (or another role)."""

    role: str
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    id: str | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def text(self, *, role: bool = True) -> str:
        """``role: content`` with one line per tool call (``role=False``: without the role)."""
        lines = [self.content] if self.content else []
        lines.extend(call.text() for call in self.tool_calls)
        body = "\n".join(lines)
        return f"{self.role}: {body}" if role else body


@dataclass(frozen=True)
class Document:
    """A retrieved document (a LangChain ``Document``, a LlamaIndex node with its score)."""

    text: str
    id: str | None = None
    score: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)


# -- how a value is shown in a graph -----------------------------------------------------------


def display(value: Any) -> Any:
    """The value as the optimizer reads it: text for messages and documents, plain data."""
    if isinstance(value, Message):
        return value.text(role=False)
    if isinstance(value, Document):
        return value.text
    if isinstance(value, ToolCall):
        return value.text()
    if isinstance(value, (list, tuple)):
        items = list(value)
        if items and all(isinstance(x, Message) for x in items):
            return "\n".join(m.text() for m in items)
        if items and all(isinstance(x, Document) for x in items):
            if any(d.score is not None for d in items):
                return [_scored(d) for d in items]
            return "\n\n".join(d.text for d in items)
        return [display(x) for x in items]
    if isinstance(value, dict):
        return {str(k): display(v) for k, v in value.items()}
    return value


def _scored(doc: Document) -> dict[str, Any]:
    entry: dict[str, Any] = {"text": doc.text}
    if doc.score is not None:
        entry["score"] = round(float(doc.score), 4)
    return entry


# -- atoms ------------------------------------------------------------------------------------


def atoms(value: Any, memo: dict[int, tuple[Any, frozenset]] | None = None) -> set:
    """The pieces of ``value`` that identify where it came from (see the module docstring).

    ``memo`` caches the atoms of messages and documents by object (an agent's history is the
    same objects on every call).
    """
    out: set = set()
    _atoms(value, out, 0, memo)
    return out


def strong(found: Iterable[Any]) -> set[str]:
    """The text atoms of a set returned by ``atoms``."""
    return {a for a in found if isinstance(a, str)}


def _atoms(value: Any, out: set, depth: int, memo: dict | None) -> None:
    if len(out) >= _MAX_ATOMS or depth > _MAX_DEPTH or value is None:
        return
    if isinstance(value, str):
        text = value.strip()
        if text:
            out.add(text)
        return
    if isinstance(value, (bool, int, float, BaseException)):
        return
    if isinstance(value, (Message, Document)):
        if memo is not None:
            cached = memo.get(id(value))
            if cached is None or cached[0] is not value:
                mine: set = set()
                _object_atoms(value, mine, depth, None)
                cached = (value, frozenset(mine))
                memo[id(value)] = cached
            out.update(cached[1])
        else:
            _object_atoms(value, out, depth, None)
        return
    if isinstance(value, ToolCall):
        if value.id:
            out.add(("call", value.id))
        _atoms(value.args, out, depth + 1, memo)
        return
    if isinstance(value, Mapping):
        for v in value.values():
            _atoms(v, out, depth + 1, memo)
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _atoms(v, out, depth + 1, memo)


def _object_atoms(value: Message | Document, out: set, depth: int, memo: dict | None) -> None:
    if isinstance(value, Document):
        text = value.text.strip()
        if text:
            out.add(text)
        if value.id:
            out.add(("doc", value.id))
        return
    text = value.content.strip()
    if text:
        out.add(text)
    if value.id:
        out.add(("id", value.id))
    if value.tool_call_id:
        out.add(("call", value.tool_call_id))
    for call in value.tool_calls:
        _atoms(call, out, depth + 1, memo)


# -- plain data (files) -----------------------------------------------------------------------


def to_data(value: Any) -> Any:
    """``value`` as JSON-able data (messages, tool calls and documents tagged by ``_type``)."""
    if isinstance(value, Message):
        data: dict[str, Any] = {"_type": "message", "role": value.role, "content": value.content}
        if value.tool_calls:
            data["tool_calls"] = [to_data(c) for c in value.tool_calls]
        for key in ("id", "tool_call_id", "name"):
            if getattr(value, key):
                data[key] = getattr(value, key)
        return data
    if isinstance(value, ToolCall):
        return {"_type": "tool_call", "name": value.name, "args": to_data(value.args), "id": value.id}
    if isinstance(value, Document):
        data = {"_type": "document", "text": value.text}
        if value.id is not None:
            data["id"] = value.id
        if value.score is not None:
            data["score"] = value.score
        if value.metadata:
            data["metadata"] = to_data(dict(value.metadata))
        return data
    if isinstance(value, Mapping):
        return {str(k): to_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_data(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return str(value)[:_MAX_ROLE_TEXT]


def from_data(data: Any) -> Any:
    """The inverse of ``to_data``."""
    if isinstance(data, list):
        return [from_data(v) for v in data]
    if not isinstance(data, dict):
        return data
    kind = data.get("_type")
    if kind == "message":
        calls = tuple(from_data(c) for c in data.get("tool_calls") or ())
        return Message(
            role=str(data.get("role", "")),
            content=str(data.get("content", "")),
            tool_calls=tuple(c for c in calls if isinstance(c, ToolCall)),
            id=data.get("id"),
            tool_call_id=data.get("tool_call_id"),
            name=data.get("name"),
        )
    if kind == "tool_call":
        return ToolCall(str(data.get("name", "")), from_data(data.get("args")), data.get("id"))
    if kind == "document":
        return Document(
            str(data.get("text", "")),
            data.get("id"),
            data.get("score"),
            from_data(data.get("metadata") or {}),
        )
    return {k: from_data(v) for k, v in data.items()}
