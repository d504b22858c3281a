"""OpenInference spans read into the run model, one trace at a time.

Two shapes: OTLP JSON as an OpenTelemetry file exporter writes it (one
``{"resourceSpans": [{"scopeSpans": [{"spans": [...]}]}]}`` object per line, attributes as
``{"key", "value": {"stringValue": ...}}``), and the flat span dicts Phoenix exports
(``context.span_id``, ``parent_id``, ``span_kind``, ``attributes.<name>`` or a nested
``attributes``). The OpenInference conventions give each span its kind
(``openinference.span.kind``), its values (``input.value``, ``output.value``,
``llm.input_messages.*``, ``llm.output_messages.*``, ``retrieval.documents.*``) and its evidence
(``llm.prompt_template.*``, ``llm.tools.*``, ``tool.name``). ``read_traces`` streams (see
``records.group_traces``); ``to_spans`` makes one trace's span tree.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .attach import Evidence
from .feedback import normal_id
from .records import TraceFormatError, group_traces, read_records, tool_schema_name
from .spans import Span, tree
from .values import Document, Message, ToolCall

__all__ = ["RecordedSpan", "is_otlp", "is_phoenix", "read_traces", "to_spans"]

_KINDS = {
    "LLM": "llm",
    "CHAIN": "chain",
    "RETRIEVER": "retriever",
    "TOOL": "tool",
    "EMBEDDING": "embedding",
    "AGENT": "agent",
    "PROMPT": "prompt",
}
_ROLES = {"user": "human", "assistant": "ai", "model": "ai"}


@dataclass(eq=False)
class RecordedSpan:
    """One exported span: ids (hex, no ``0x``), name, flat attributes, status, start time."""

    span_id: str
    trace_id: str
    parent_id: str | None = None
    name: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    start: str = ""
    line: int = 0


def is_otlp(record: Mapping[str, Any]) -> bool:
    return "resourceSpans" in record or "resource_spans" in record


def is_phoenix(record: Mapping[str, Any]) -> bool:
    if "context.span_id" in record or "span_kind" in record:
        return True
    context = record.get("context")
    return isinstance(context, dict) and "span_id" in context and "attributes" in record


def read_traces(source: Any, *, window: int = 1000) -> Iterator[tuple[str, list[RecordedSpan]]]:
    """``(trace_id, spans)`` per trace of ``source`` (OTLP JSON lines or Phoenix spans)."""

    def spans() -> Iterator[RecordedSpan]:
        for line, record in read_records(source):
            if is_otlp(record):
                yield from _otlp(record, line)
            elif is_phoenix(record):
                yield _phoenix(record, line)
            else:
                raise TraceFormatError(
                    f"line {line}: neither OTLP JSON ('resourceSpans') nor a Phoenix span "
                    f"('context.span_id'); got keys {sorted(record)[:12]}"
                )

    for tid, group, _complete in group_traces(
        spans(), trace_of=lambda s: s.trace_id, is_root=lambda s: s.parent_id is None, window=window
    ):
        yield tid, group


# -- the two shapes -> RecordedSpan ------------------------------------------------------------


def _otlp(record: Mapping[str, Any], line: int) -> Iterator[RecordedSpan]:
    for resource in record.get("resourceSpans") or record.get("resource_spans") or ():
        for scope in resource.get("scopeSpans") or resource.get("scope_spans") or ():
            for raw in scope.get("spans") or ():
                attrs = {str(a.get("key")): _any_value(a.get("value")) for a in raw.get("attributes") or ()}
                status = raw.get("status") or {}
                code = status.get("code")
                failed = code in (2, "STATUS_CODE_ERROR", "ERROR")
                parent = raw.get("parentSpanId") or raw.get("parent_span_id")
                yield RecordedSpan(
                    span_id=_hex_id(raw.get("spanId") or raw.get("span_id"), line),
                    trace_id=_hex_id(raw.get("traceId") or raw.get("trace_id"), line),
                    parent_id=_hex_id(parent, line) if parent else None,
                    name=str(raw.get("name") or ""),
                    attributes=attrs,
                    error=(_exception_message(raw.get("events")) or status.get("message") or "error") if failed else None,
                    start=str(raw.get("startTimeUnixNano") or raw.get("start_time_unix_nano") or "").zfill(24),
                    line=line,
                )


def _phoenix(record: Mapping[str, Any], line: int) -> RecordedSpan:
    attrs: dict[str, Any] = {}
    nested = record.get("attributes")
    if isinstance(nested, dict):
        attrs.update(_flatten(nested))
    for key, value in record.items():
        if key.startswith("attributes.") and value is not None:
            attrs.update(_flatten({key[len("attributes."):]: value}))
    if "span_kind" in record and "openinference.span.kind" not in attrs:
        attrs["openinference.span.kind"] = record["span_kind"]
    context = record.get("context") if isinstance(record.get("context"), dict) else {}
    span_id = record.get("context.span_id") or context.get("span_id")
    trace_id = record.get("context.trace_id") or context.get("trace_id")
    if not span_id or not trace_id:
        raise TraceFormatError(f"line {line}: a Phoenix span needs context.span_id and context.trace_id")
    failed = str(record.get("status_code") or "").upper() == "ERROR"
    parent = record.get("parent_id")
    return RecordedSpan(
        span_id=normal_id(span_id),
        trace_id=normal_id(trace_id),
        parent_id=normal_id(parent) if parent else None,
        name=str(record.get("name") or ""),
        attributes=attrs,
        error=(str(record.get("status_message") or "") or "error") if failed else None,
        start=str(record.get("start_time") or ""),
        line=line,
    )


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested attributes as OpenInference's flat keys (``llm.input_messages.0.message.role``);
    lists of plain values stay lists."""
    out: dict[str, Any] = {}
    for key, v in value.items():
        name = f"{prefix}{key}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        elif isinstance(v, list) and any(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                if isinstance(x, dict):
                    out.update(_flatten(x, f"{name}.{i}."))
        else:
            out[name] = v
    return out


def _any_value(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    if "arrayValue" in value:
        return [_any_value(v) for v in (value["arrayValue"] or {}).get("values") or ()]
    if "kvlistValue" in value:
        return {kv.get("key"): _any_value(kv.get("value")) for kv in (value["kvlistValue"] or {}).get("values") or ()}
    return None


def _hex_id(value: Any, line: int) -> str:
    """OTLP JSON ids are hex; some writers use base64 (protobuf's JSON mapping)."""
    text = str(value or "").strip()
    if not text:
        raise TraceFormatError(f"line {line}: an OTLP span without spanId or traceId")
    low = text.lower().removeprefix("0x")
    if len(low) in (16, 32) and all(c in "0123456789abcdef" for c in low):
        return low
    try:
        return base64.b64decode(text, validate=True).hex()
    except (binascii.Error, ValueError):
        return normal_id(text)


def _exception_message(events: Any) -> str:
    for event in events or ():
        if isinstance(event, dict) and event.get("name") == "exception":
            attrs = {a.get("key"): _any_value(a.get("value")) for a in event.get("attributes") or ()}
            kind, message = attrs.get("exception.type"), attrs.get("exception.message")
            if message:
                return f"{kind}: {message}" if kind else str(message)
    return ""


# -- one trace -> spans ------------------------------------------------------------------------


def to_spans(spans: list[RecordedSpan]) -> tuple[Span, dict[str, Evidence]]:
    """The span tree of one trace and the evidence of each span, by span id."""
    spans = sorted(spans, key=lambda s: s.start)
    ids = {s.span_id for s in spans}
    children: dict[str, list[RecordedSpan]] = {}
    for s in spans:
        if s.parent_id in ids:
            children.setdefault(s.parent_id, []).append(s)
    outer_llm: dict[str, str] = {}  # an LLM span around another (LlamaIndex's predict ->
    for s in spans:  # complete) is one model call: the innermost one, given the outer's evidence
        if _kind(s) == "llm":
            stack = list(children.get(s.span_id, ()))
            while stack:
                c = stack.pop(0)
                if _kind(c) == "llm":
                    outer_llm[s.span_id] = c.span_id
                    break
                stack.extend(children.get(c.span_id, ()))
    made: list[Span] = []
    evidence: dict[str, Evidence] = {}
    for order, s in enumerate(spans):
        kind = "chain" if s.span_id in outer_llm else _kind(s)
        span, ev = _span(s, kind, order)
        span.parent_id = s.parent_id if s.parent_id in ids else None
        made.append(span)
        evidence[span.id] = ev
    for outer in sorted(outer_llm, key=lambda i: -[s.span_id for s in spans].index(i)):
        inner = outer_llm[outer]
        while inner in outer_llm:
            inner = outer_llm[inner]
        evidence[inner].templates[:0] = evidence[outer].templates
        evidence[inner].variables = {**evidence[outer].variables, **evidence[inner].variables}
        evidence[inner].tools.extend(t for t in evidence[outer].tools if t not in evidence[inner].tools)
        evidence[outer] = Evidence(name=evidence[outer].name)
    roots = tree(made)
    if len(roots) == 1:
        return roots[0], evidence
    root = Span(id=f"{spans[0].trace_id}:root", kind="chain", name="trace", children=roots)
    for r in roots:
        r.parent_id = root.id
    return root, evidence


def _kind(s: RecordedSpan) -> str:
    kind = _KINDS.get(str(s.attributes.get("openinference.span.kind") or "").upper(), "chain")
    if kind == "llm" and _helper(s):
        return "chain"
    return kind


_CALL_KEYS = ("llm.input_messages", "llm.output_messages", "llm.prompts")


def _helper(s: RecordedSpan) -> bool:
    """An LLM span that is no model call: a private method of the LLM class (LlamaIndex's
    ``_prepare_chat_with_tools``, which agents call before each ``achat``) that records
    neither messages nor prompts."""
    if not s.name.rpartition(".")[2].startswith("_"):
        return False
    return not any(k.startswith(_CALL_KEYS) for k in s.attributes)


def _span(s: RecordedSpan, kind: str, order: int) -> tuple[Span, Evidence]:
    a = s.attributes
    ev = Evidence(name=s.name)
    span = Span(id=s.span_id, kind=kind, name=s.name, order=order, error=s.error,
                keep=kind in ("tool", "retriever", "agent"))
    template = a.get("llm.prompt_template.template")
    if isinstance(template, str) and template:
        ev.templates.append(("template", template, "f-string"))
        variables = _json(a.get("llm.prompt_template.variables"))
        ev.variables = variables if isinstance(variables, dict) else {}
    if kind == "llm":
        span.label = "model"
        messages = _messages(a, "llm.input_messages")
        prompts = a.get("llm.prompts")
        if messages:
            span.inputs = {"messages": messages}
        elif isinstance(prompts, list) and prompts:
            span.inputs = {"prompt": str(prompts[0])}
        else:
            span.inputs = _inputs(a)
        out = _messages(a, "llm.output_messages")
        span.output = out[0] if out else _text_value(a.get("output.value"))
        i = 0
        while f"llm.tools.{i}.tool.json_schema" in a:
            schema = _json(a[f"llm.tools.{i}.tool.json_schema"])
            name = tool_schema_name(schema)
            if name:
                ev.tools.append(name)
            i += 1
        return span, ev
    span.inputs = _inputs(a)
    if kind == "retriever":
        docs = _documents(a)
        span.output = docs if docs else _value(a.get("output.value"))
        if "input" in span.inputs and len(span.inputs) == 1:
            span.inputs = {"query": span.inputs["input"]}
    else:
        out = _value(a.get("output.value"))
        span.output = out.get("output") if isinstance(out, dict) and set(out) == {"output"} else out
    if kind == "tool":
        ev.tool = str(a.get("tool.name") or s.name)
        call_id = a.get("tool_call.id") or a.get("tool.id")
        if isinstance(call_id, str):
            span.links["tool_call_id"] = call_id
    return span, ev


def _inputs(a: Mapping[str, Any]) -> dict[str, Any]:
    value = _value(a.get("input.value"))
    if isinstance(value, dict) and value and not isinstance(_message(value), Message):
        if set(value) == {"input"}:
            return {"input": value["input"]}
        return {str(k): v for k, v in value.items()}
    return {} if value is None else {"input": value}


def _value(raw: Any) -> Any:
    """An ``input.value`` / ``output.value``: JSON text decoded, messages made neutral."""
    return _neutral(_json(raw))


def _text_value(raw: Any) -> Any:
    value = _value(raw)
    if isinstance(value, dict) and "generations" in value:
        try:
            first = value["generations"][0][0]
            return _message(first.get("message") or {}) or first.get("text", "")
        except (IndexError, KeyError, TypeError, AttributeError):
            return ""
    return value


def _json(raw: Any) -> Any:
    if isinstance(raw, str) and raw[:1] in "{[":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _neutral(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return value
    if isinstance(value, dict):
        message = _message(value)
        if message is not None:
            return message
        return {str(k): _neutral(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_neutral(v, depth + 1) for v in value]
    return value


def _message(value: Mapping[str, Any]) -> Message | None:
    """A message as instrumentors write it in values: LangChain's ``dumpd`` form
    (``kwargs``), ``{"type": "ai", "data": {...}}``, or a role dict."""
    if isinstance(value.get("kwargs"), dict) and value.get("lc") == 1:
        value = value["kwargs"]
    elif isinstance(value.get("data"), dict) and "type" in value:
        value = value["data"]
    role = value.get("role") or value.get("type")
    if not isinstance(role, str) or "content" not in value:
        return None
    if role not in ("human", "user", "ai", "assistant", "system", "tool", "developer", "function"):
        return None
    content = value.get("content")
    if isinstance(content, list):
        content = "\n".join(str(b.get("text", "")) if isinstance(b, dict) else str(b) for b in content)
    calls = tuple(
        ToolCall(str(c.get("name")), c.get("args"), c.get("id"))
        for c in value.get("tool_calls") or () if isinstance(c, dict) and c.get("name")
    )
    return Message(_ROLES.get(role, role), str(content or ""), calls, value.get("id"),
                   value.get("tool_call_id"), value.get("name"))


def _messages(a: Mapping[str, Any], prefix: str) -> list[Message]:
    out = []
    i = 0
    while f"{prefix}.{i}.message.role" in a or f"{prefix}.{i}.message.content" in a:
        p = f"{prefix}.{i}.message"
        content = a.get(f"{p}.content")
        if content is None:  # content as parts
            parts, j = [], 0
            while f"{p}.contents.{j}.message_content.text" in a or f"{p}.contents.{j}.message_content.type" in a:
                parts.append(str(a.get(f"{p}.contents.{j}.message_content.text") or ""))
                j += 1
            content = "\n".join(parts)
        calls, j = [], 0
        while f"{p}.tool_calls.{j}.tool_call.function.name" in a:
            q = f"{p}.tool_calls.{j}.tool_call"
            calls.append(ToolCall(str(a[f"{q}.function.name"]), _json(a.get(f"{q}.function.arguments")), a.get(f"{q}.id")))
            j += 1
        role = str(a.get(f"{p}.role") or "")
        out.append(Message(_ROLES.get(role, role), str(content or ""), tuple(calls),
                           tool_call_id=a.get(f"{p}.tool_call_id"), name=a.get(f"{p}.name")))
        i += 1
    return out


def _documents(a: Mapping[str, Any]) -> list[Document]:
    out = []
    i = 0
    while f"retrieval.documents.{i}.document.content" in a or f"retrieval.documents.{i}.document.id" in a:
        p = f"retrieval.documents.{i}.document"
        score = a.get(f"{p}.score")
        metadata = _json(a.get(f"{p}.metadata"))
        out.append(Document(str(a.get(f"{p}.content") or ""), a.get(f"{p}.id"),
                            float(score) if isinstance(score, (int, float)) else None,
                            metadata if isinstance(metadata, dict) else {}))
        i += 1
    return out


