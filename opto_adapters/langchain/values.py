"""LangChain values as the optimizer should read them, and fingerprints to link runs by data.

``readable`` turns messages, prompt values, documents and model results into short text
(``role: content`` lines, page contents) instead of giant reprs. ``atoms`` gives the pieces
of a value (texts, message and tool-call ids) that let the graph builder find which earlier
step produced what a later step consumed.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.prompt_values import ChatPromptValue, PromptValue

__all__ = ["atoms", "message_role", "message_text", "readable", "strong"]

_MAX_DEPTH = 6
_MAX_ATOMS = 20_000  # bounds the work on huge values; long agent histories fit
_MAX_REPR = 2000
_ROLE = {"human": "human", "ai": "ai", "system": "system", "tool": "tool", "function": "function"}
_TUPLE_ROLES = {
    "human": "human",
    "user": "human",
    "ai": "ai",
    "assistant": "ai",
    "system": "system",
}


# -- messages, in any of the shapes LangChain passes them around ------------------------------


def _is_dumped_message(value: dict) -> bool:
    """A message serialized by ``langchain_core.load.dumpd`` (as tracers store them)."""
    return (
        value.get("lc") == 1
        and isinstance(value.get("kwargs"), dict)
        and "content" in value["kwargs"]
    )


def _message_fields(value: Any) -> tuple[str, Any, list, str | None, str | None] | None:
    """``(role, content, tool_calls, id, tool_call_id)`` of a message-like value, else ``None``.

    Message-like: a ``BaseMessage``, a message serialized by ``dumpd``, a ``{"role",
    "content"}`` dict, or a ``("user", "text")`` tuple (LangChain accepts all of them).
    """
    if isinstance(value, tuple) and len(value) == 2 and value[0] in _TUPLE_ROLES:
        if isinstance(value[1], (str, list)):
            return _TUPLE_ROLES[value[0]], value[1], [], None, None
        return None
    if isinstance(value, BaseMessage):
        kind = value.type
        role = getattr(value, "role", None) if kind == "chat" else _ROLE.get(kind, kind)
        # isinstance, not getattr: a missing attribute on a pydantic model is slow to miss
        return (
            str(role or kind),
            value.content,
            value.tool_calls if isinstance(value, AIMessage) else [],
            value.id,
            value.tool_call_id if isinstance(value, ToolMessage) else None,
        )
    if isinstance(value, dict):
        if _is_dumped_message(value):
            kw = value["kwargs"]
            role = kw.get("role") if kw.get("type") == "chat" else kw.get("type")
            if not role:
                cls = value.get("id") or ["message"]
                role = str(cls[-1]).replace("MessageChunk", "").replace("Message", "").lower()
            return (
                _ROLE.get(str(role), str(role)),
                kw.get("content"),
                list(kw.get("tool_calls") or ()),
                kw.get("id"),
                kw.get("tool_call_id"),
            )
        if "content" in value and isinstance(value.get("role") or value.get("type"), str):
            role = value.get("role") or value.get("type")
            return (
                {"user": "human", "assistant": "ai"}.get(role, role),
                value.get("content"),
                list(value.get("tool_calls") or ()),
                value.get("id"),
                value.get("tool_call_id"),
            )
    return None


def _content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text blocks of a block list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict):
                if isinstance(block.get("text"), str):
                    parts.append(block["text"])
                elif block.get("type"):
                    parts.append(f"[{block['type']}]")
        return "\n".join(parts)
    return "" if content is None else str(content)


def _call_text(call: Any) -> str:
    if not isinstance(call, dict):
        return str(call)
    try:
        args = json.dumps(call.get("args", {}), ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        args = str(call.get("args"))
    return f"[tool call] {call.get('name')}({args})"


def message_role(value: Any) -> str | None:
    """``human``, ``ai``, ``system``, ``tool``... of a message-like value, else ``None``."""
    fields = _message_fields(value)
    return fields[0] if fields else None


def message_text(value: Any, *, role: bool = True) -> str | None:
    """``role: content`` of a message (with its tool calls), or ``None`` if not a message."""
    fields = _message_fields(value)
    if fields is None:
        return None
    who, content, calls, _, _ = fields
    lines = [_content_text(content)] if _content_text(content) else []
    lines.extend(_call_text(c) for c in calls)
    text = "\n".join(lines)
    return f"{who}: {text}" if role else text


# -- readable ---------------------------------------------------------------------------------


def readable(value: Any, *, depth: int = 0) -> Any:
    """A compact, readable stand-in for ``value``: text for messages, prompts and documents,
    plain containers of those for lists and dicts, a short repr for anything else."""
    if isinstance(value, str):
        return value if type(value) is str else str(value)  # e.g. the parser's TextAccessor
    if value is None or isinstance(value, (bool, int, float, BaseException)):
        return value
    if depth > _MAX_DEPTH:
        return _short(value)
    text = message_text(value)
    if text is not None:
        return text
    if isinstance(value, ChatPromptValue):
        return "\n".join(message_text(m) or "" for m in value.messages)
    if isinstance(value, PromptValue):
        return value.to_string()
    if isinstance(value, Document):
        return value.page_content
    if isinstance(value, dict):
        if "generations" in value:
            return _generations_text(value["generations"])
        return {str(k): readable(v, depth=depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = list(value)
        if items and all(isinstance(x, Document) for x in items):
            return "\n\n".join(d.page_content for d in items)
        if items and all(_message_fields(x) is not None for x in items):
            return "\n".join(message_text(x) or "" for x in items)
        return [readable(x, depth=depth + 1) for x in items]
    update = getattr(value, "update", None)
    if update is not None and not callable(update):  # langgraph Command(update=...)
        return readable(update, depth=depth + 1)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return readable(dump(), depth=depth + 1)
        except Exception:  # a broken model_dump must not break tracing
            return _short(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: readable(getattr(value, f.name), depth=depth + 1)
            for f in dataclasses.fields(value)
        }
    return _short(value)


def _generations_text(generations: Any) -> str:
    """The text of a model result (``LLMResult`` as a dict): the first generation's message or text."""
    try:
        first = generations[0][0]
    except (IndexError, KeyError, TypeError):
        return ""
    if isinstance(first, dict):
        message = first.get("message")
        if message is not None:
            return message_text(message, role=False) or ""
        return str(first.get("text", ""))
    message = getattr(first, "message", None)
    if message is not None:
        return message_text(message, role=False) or ""
    return str(getattr(first, "text", ""))


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not break tracing
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _MAX_REPR else text[:_MAX_REPR] + "..."


# -- atoms ------------------------------------------------------------------------------------


def atoms(value: Any, memo: dict[int, tuple[Any, frozenset]] | None = None) -> set:
    """The pieces of ``value`` that identify where it came from.

    Strings (non-empty texts: message contents, documents, plain values) are *strong*
    atoms; tuples (``("id", ...)`` for message ids, ``("call", ...)`` for tool-call ids)
    are *weak*: they link steps but a value is covered without them. ``memo`` caches the
    atoms of message objects (an agent's history is the same objects on every call).
    """
    out: set = set()
    _atoms(value, out, 0, memo)
    return out


def strong(found: set) -> set:
    """The strong (text) atoms of a set returned by ``atoms``."""
    return {a for a in found if isinstance(a, str)}


def _atoms(value: Any, out: set, depth: int, memo: dict | None = None) -> None:
    if len(out) >= _MAX_ATOMS or depth > _MAX_DEPTH or value is None:
        return
    if isinstance(value, str):
        text = value.strip()
        if text:
            out.add(text)
        return
    if isinstance(value, (bool, int, float, BaseException)):
        return
    if memo is not None and isinstance(value, BaseMessage):
        cached = memo.get(id(value))
        if cached is None or cached[0] is not value:
            mine: set = set()
            _atoms(value, mine, depth)
            cached = (value, frozenset(mine))
            memo[id(value)] = cached
        out.update(cached[1])
        return
    fields = _message_fields(value)
    if fields is not None:
        _, content, calls, msg_id, call_id = fields
        text = _content_text(content).strip()
        if text:
            out.add(text)
        if msg_id:
            out.add(("id", msg_id))
        if call_id:
            out.add(("call", call_id))
        for call in calls:
            if isinstance(call, dict):
                if call.get("id"):
                    out.add(("call", call["id"]))
                _atoms(call.get("args"), out, depth + 1)
        return
    if isinstance(value, ChatPromptValue):
        for m in value.messages:
            _atoms(m, out, depth + 1, memo)
        return
    if isinstance(value, PromptValue):
        _atoms(value.to_string(), out, depth + 1)
        return
    if isinstance(value, Document):
        _atoms(value.page_content, out, depth + 1)
        return
    if isinstance(value, dict):
        if "generations" in value:
            _generation_atoms(value["generations"], out, depth)
            return
        for v in value.values():
            _atoms(v, out, depth + 1, memo)
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _atoms(v, out, depth + 1, memo)
        return
    update = getattr(value, "update", None)
    if update is not None and not callable(update):  # langgraph Command(update=...)
        _atoms(update, out, depth + 1, memo)


def _generation_atoms(generations: Any, out: set, depth: int) -> None:
    if not isinstance(generations, list):
        return
    for batch in generations:
        for gen in batch if isinstance(batch, list) else ():
            if isinstance(gen, dict):
                if gen.get("message") is not None:
                    _atoms(gen["message"], out, depth + 1)
                else:
                    _atoms(gen.get("text"), out, depth + 1)
