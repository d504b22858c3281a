"""Translate one finished LangChain run tree (``langchain_core`` ``Run``) into spans.

Only translation happens here: values become framework-neutral (messages, tool calls,
documents), run types become span kinds, the tags ``seq:step:N`` / ``map:key:K`` say how a
composition passes data, and what LangChain tells explicitly becomes span fields: the
parameters a prompt's run used (by the id stamped in its metadata), the tool descriptions a
model was offered (its invocation params), the tool call a tool run answers
(``tool_call_id``). ``opto_adapters.runs.build_graph`` makes the graph.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from langchain_core.documents import Document as LCDocument
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.prompt_values import ChatPromptValue, PromptValue
from langchain_core.tracers.schemas import Run

from ..runs import Document, Message, Span, ToolCall
from ..runs.usage import call_usage
from ..trace import Parameter
from ..trace.names import safe_name
from .discovery import STAMP_KEY, Discovered
from .writeback import schema_holder

__all__ = ["ERROR_KEY", "Translator", "freeze", "root_input_name"]

ERROR_KEY = "__opto_adapters_error"
"""Where the tracer keeps the exception object of a failed run (``Run.extra``)."""

_STEP = re.compile(r"^seq:step:(\d+)$")
_KINDS = {
    "chain": "chain",
    "prompt": "prompt",
    "llm": "llm",
    "chat_model": "llm",
    "retriever": "retriever",
    "tool": "tool",
    "parser": "parser",
    "embedding": "embedding",
}
_MAX_DEPTH = 8
_MAX_REPR = 2000
_TUPLE_ROLES = {"human": "human", "user": "human", "ai": "ai", "assistant": "ai", "system": "system"}
_ROLES = {"user": "human", "assistant": "ai"}


def _role(role: str) -> str:
    """``user`` -> ``human``, ``assistant`` / ``AIMessageChunk`` -> ``ai``..."""
    if role.endswith("MessageChunk"):
        role = role[: -len("MessageChunk")].lower()
    return _ROLES.get(role, role)


def root_input_name(kind: str, key: str) -> str:
    """The leaf name of a root run's input: ``input``, or ``input.<key>`` for dict inputs."""
    if key == "input" or kind in ("llm", "retriever"):
        return "input"
    return f"input.{safe_name(str(key).replace('.', '_'), default='value')}"


@functools.lru_cache(maxsize=1024)
def _snake(name: str) -> str:
    """A run's name as a node name: ``StrOutputParser`` -> ``str_output_parser``."""
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.split("<", 1)[0])
    return safe_name(text.lower().replace(".", "_"), default="step")


def _op_name(run: Run) -> str:
    name = run.name or (run.serialized or {}).get("name") or run.run_type or "step"
    return str(name).split("<", 1)[0] or "step"


def _step_number(run: Run) -> int | None:
    for tag in run.tags or ():
        match = _STEP.match(tag)
        if match:
            return int(match.group(1))
    return None


def _map_key(run: Run) -> str | None:
    for tag in run.tags or ():
        if tag.startswith("map:key:"):
            return tag[8:]
    return None


def _usage(run: Run) -> dict[str, float]:
    """A model run's reported tokens (its first generation's message, else ``llm_output``)
    and latency."""
    outputs = run.outputs if isinstance(run.outputs, dict) else {}
    generations = outputs.get("generations")
    first = None
    if isinstance(generations, list) and generations and isinstance(generations[0], list) and generations[0]:
        first = generations[0][0]
    start, end = run.start_time, run.end_time
    latency = None
    if isinstance(start, datetime) and isinstance(end, datetime):  # an imported run may hold text
        try:
            latency = (end - start).total_seconds()
        except TypeError:  # one aware, one naive
            latency = None
    return call_usage(first, outputs.get("llm_output"), latency=latency)


def _unwrap(data: Any, key: str) -> Any:
    """Chain runs wrap non-dict values as ``{"input": x}`` / ``{"output": x}``."""
    if isinstance(data, dict) and len(data) == 1 and key in data:
        return data[key]
    return data


class Translator:
    """Translates the runs of one tracer; a fresh ``memo`` per run tree keeps it linear."""

    def __init__(
        self, found: Discovered, by_run_name: Mapping[str, list[tuple[str, Parameter]]]
    ) -> None:
        self.found = found
        self.by_run_name = by_run_name

    def translate(self, root: Run) -> Span:
        return _Tree(self).span(root, None)


class _Tree:
    def __init__(self, translator: Translator) -> None:
        self.t = translator
        self.memo: dict[int, tuple[Any, Any]] = {}
        self.order = 0
        self.last_messages: tuple[list[Any], list[Any]] = ([], [])

    # -- values ----------------------------------------------------------------------------

    def value(self, value: Any, depth: int = 0) -> Any:
        """``value`` as framework-neutral data (messages, documents, tool calls, plain data)."""
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, str):
            return value if type(value) is str else str(value)
        if isinstance(value, BaseException):
            return f"{type(value).__name__}: {value}"
        if depth > _MAX_DEPTH:
            return _short(value)
        if isinstance(value, (BaseMessage, LCDocument)):
            cached = self.memo.get(id(value))
            if cached is not None and cached[0] is value:
                return cached[1]
            out = _message(value) if isinstance(value, BaseMessage) else _document(value)
            self.memo[id(value)] = (value, out)
            return out
        message = _message(value)
        if message is not None:
            return message
        if isinstance(value, ChatPromptValue):
            return [self.value(m, depth + 1) for m in value.messages]
        if isinstance(value, PromptValue):
            return value.to_string()
        if isinstance(value, dict):
            if "generations" in value:
                return _generation(value["generations"])
            return {str(k): self.value(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v, depth + 1) for v in value]
        update = getattr(value, "update", None)
        if update is not None and not callable(update):  # langgraph Command(update=...)
            return self.value(update, depth + 1)
        dump = getattr(value, "model_dump", None)
        if callable(dump):
            try:
                return self.value(dump(), depth + 1)
            except Exception:  # a broken model_dump must not break tracing
                return _short(value)
        if isinstance(value, _NEUTRAL):  # translated already, by ``freeze``
            return value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: self.value(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)}
        return _short(value)

    def messages(self, raw: list[Any]) -> list[Any]:
        """A model call's messages; a history resent from the previous call is reused, so
        a long agent loop costs a comparison per message, not a translation."""
        previous_raw, previous = self.last_messages
        n = len(previous_raw)
        if n <= len(raw) and all(map(operator.is_, raw[:n], previous_raw)):  # (in C)
            same = n
        else:
            same = 0
            for a, b in zip(raw, previous_raw, strict=False):
                if a is not b:
                    break
                same += 1
        out = previous[:same] + [self.value(m) for m in raw[same:]]
        self.last_messages = (raw, out)
        return out

    # -- runs ------------------------------------------------------------------------------

    def span(self, run: Run, parent_id: str | None) -> Span:
        kind = _KINDS.get(run.run_type, "chain")
        name = _op_name(run)
        span = Span(
            id=str(run.id),
            kind=kind,
            name=name,
            parent_id=parent_id,
            # a composition's input is often a whole state or history: made when needed
            inputs=_LazyInputs(lambda: self.inputs(run, kind)) if run.child_runs else self.inputs(run, kind),
            output=self.output(run, kind),
            error=self.error(run),
            order=self.order,
            label=self.label(run, kind, name),
        )
        self.order += 1
        span.parameters = self.parameters(run, kind)
        if kind == "llm":
            span.usage = _usage(run)
        if kind == "tool":
            call_id = (run.extra or {}).get("tool_call_id")
            if isinstance(call_id, str):
                span.links["tool_call_id"] = call_id
        children = sorted(run.child_runs, key=lambda r: r.dotted_order or "")
        if children:
            span.children, span.flow = self.children(children, span.id)
            span.keep = kind in ("tool", "retriever")
        elif kind == "chain" and name == "RunnablePassthrough":
            span.passthrough = True
        return span

    def children(self, runs: list[Run], parent_id: str) -> tuple[list[Span], str]:
        steps = [_step_number(r) for r in runs]
        keys = [_map_key(r) for r in runs]
        if all(s is not None for s in steps):
            flow, groups = "sequence", _groups(runs, steps)
        elif all(k is not None for k in keys):
            flow, groups = "parallel", _groups(runs, keys)
        else:
            return [self.span(r, parent_id) for r in runs], "free"
        spans = []
        for group in groups:
            head = self.span(group[0], parent_id)
            if len(group) > 1:
                # several runs with one step's tag: the first is the step, the others ran
                # inside it but were reported beside it (langchain-ai/langchain#36072)
                head.children = [*head.children, *(self.span(r, head.id) for r in group[1:])]
                head.flow = "free"
            spans.append(head)
        return spans, flow

    def inputs(self, run: Run, kind: str) -> dict[str, Any]:
        data = run.inputs or {}
        if run.run_type == "chat_model":
            batches = data.get("messages") or [[]]
            return {"messages": self.messages(list(batches[0]) if batches else [])}
        if run.run_type == "llm":
            return {"prompt": self.value((data.get("prompts") or [""])[0])}
        if kind == "retriever":
            return {"query": self.value(data.get("query", _unwrap(data, "input")))}
        data = _unwrap(data, "input")
        if isinstance(data, dict) and data and _message(data) is None:
            return {str(k): self.value(v) for k, v in data.items()}
        return {"input": self.value(data)}

    def output(self, run: Run, kind: str) -> Any:
        outputs = run.outputs or {}
        if kind == "llm":
            out = self.value(outputs)
            if run.run_type == "llm" and isinstance(out, Message):
                return out.content
            return out
        if kind == "retriever" and "documents" in outputs:
            return self.value(outputs["documents"])
        return self.value(_unwrap(outputs, "output"))

    @staticmethod
    def error(run: Run) -> BaseException | str | None:
        exc = (run.extra or {}).get(ERROR_KEY)
        if isinstance(exc, BaseException):
            return exc
        return run.error or None

    def label(self, run: Run, kind: str, name: str) -> str:
        if kind == "llm":
            return "model"
        if kind == "prompt":
            return self.t.found.labels.get(_stamp(run) or "") or "prompt"
        if kind == "retriever":
            return "retriever"
        if name == "LangGraph" and run.parent_run_id is None:
            return "agent"
        return _snake(name)

    def parameters(self, run: Run, kind: str) -> list[tuple[str, Parameter]]:
        found = self.t.found
        used: list[tuple[str, Parameter]] = []
        stamp = _stamp(run)
        if stamp:
            used.extend(found.by_stamp.get(stamp, ()))
        used.extend(self.t.by_run_name.get(run.name or "", ()))
        if kind == "llm":
            params = (run.extra or {}).get("invocation_params") or {}
            for schema in params.get("tools") or ():
                held = schema_holder(schema)
                tool_name = held[0] if held else getattr(schema, "name", None)
                param = found.tools.get(tool_name) if isinstance(tool_name, str) else None
                if param is not None:
                    used.append((f"tool:{tool_name}", param))
        return used


_NEUTRAL = (Message, Document, ToolCall)
_ATOMS = frozenset({str, int, float, bool, type(None)})
_AS_IS = (str, int, float, bool, BaseException, BaseMessage, PromptValue)
_FREEZE_DEPTH = _MAX_DEPTH + 2  # deeper than ``value`` ever looks: it cuts off above this


def freeze(root: Run) -> None:
    """Make a finished run tree safe to translate later: what a run holds, as it is now.

    Translating a tree costs far more than collecting it (a message, document or value per
    input and output of every run), and most trees are never looked at, so the tracer
    translates when the graph is first asked for. But the app still holds what its runs
    hold: a LangGraph state dict, the list of messages it keeps appending to, a list of
    documents. So at run end the containers (``dict``, ``list``, ``tuple``) in the inputs
    and outputs of every run are copied, recursively and shallowly: the app's later
    changes to them do not reach the graph. Messages and prompt values are kept as they
    are (LangChain treats them as values: a new message is a new object), strings and
    numbers cannot change; anything else (documents, whose metadata apps edit, pydantic
    models, dataclasses, arbitrary objects) is translated now. A model call's inputs and
    outputs are built by the tracer itself (fresh lists and dicts) and are left alone.
    Cost: a pointer copy per container element, instead of a translation per value.
    """
    tree = _Tree(None)  # type: ignore[arg-type]  # ``value`` needs no translator
    stack = [root]
    while stack:
        run = stack.pop()
        if run.run_type not in ("llm", "chat_model"):
            if run.inputs:
                run.inputs = _freeze(run.inputs, tree, 0)
            if run.outputs:
                run.outputs = _freeze(run.outputs, tree, 0)
        stack.extend(run.child_runs)


def _freeze(value: Any, tree: _Tree, depth: int) -> Any:
    cls = type(value)
    if cls in _ATOMS:
        return value
    if depth > _FREEZE_DEPTH:
        return _short(value)
    if cls is dict:
        return {k: v if type(v) in _ATOMS else _freeze(v, tree, depth + 1) for k, v in value.items()}
    if cls is list or cls is tuple:
        return cls([v if type(v) in _ATOMS else _freeze(v, tree, depth + 1) for v in value])
    if isinstance(value, _AS_IS):
        return value
    if isinstance(value, dict):
        return {k: _freeze(v, tree, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return [_freeze(v, tree, depth + 1) for v in value]
    return tree.value(value, max(depth - 1, 0))  # the depth ``value`` would see it at


class _LazyInputs(dict):
    """A span's inputs, translated on first use."""

    def __init__(self, make: Any) -> None:
        super().__init__()
        self._make = make

    def _fill(self) -> None:
        if self._make is not None:
            make, self._make = self._make, None
            self.update(make())

    def __len__(self) -> int:
        self._fill()
        return super().__len__()

    def __iter__(self) -> Any:
        self._fill()
        return super().__iter__()

    def __getitem__(self, key: Any) -> Any:
        self._fill()
        return super().__getitem__(key)

    def __contains__(self, key: Any) -> bool:
        self._fill()
        return super().__contains__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self._fill()
        return super().get(key, default)

    def keys(self) -> Any:
        self._fill()
        return super().keys()

    def items(self) -> Any:
        self._fill()
        return super().items()

    def values(self) -> Any:
        self._fill()
        return super().values()

    def __repr__(self) -> str:
        self._fill()
        return super().__repr__()


def _stamp(run: Run) -> str | None:
    return ((run.extra or {}).get("metadata") or {}).get(STAMP_KEY)


def _groups(children: list[Run], keys: list[Any]) -> list[list[Run]]:
    """Children grouped by key (step number or branch), groups and members by start."""
    by_key: dict[Any, list[Run]] = {}
    for child, key in zip(children, keys, strict=True):
        by_key.setdefault(key, []).append(child)
    if all(isinstance(k, int) for k in by_key):
        return [by_key[k] for k in sorted(by_key)]
    return list(by_key.values())


# -- LangChain values -> neutral values ----------------------------------------------------------


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


def _calls(raw: Any) -> tuple[ToolCall, ...]:
    calls = []
    for call in raw or ():
        if isinstance(call, dict):
            name = call.get("name")
            if name is None and isinstance(call.get("function"), dict):
                name = call["function"].get("name")
            calls.append(ToolCall(str(name), call.get("args"), call.get("id")))
    return tuple(calls)


def _message(value: Any) -> Message | None:
    """A message-like value (a ``BaseMessage``, a ``dumpd`` dict, a role dict, a tuple)."""
    if isinstance(value, BaseMessage):
        kind = value.type
        role = getattr(value, "role", None) if kind == "chat" else kind
        return Message(
            role=_role(str(role or kind)),
            content=_content_text(value.content),
            tool_calls=_calls(value.tool_calls) if isinstance(value, AIMessage) else (),
            id=value.id,
            tool_call_id=value.tool_call_id if isinstance(value, ToolMessage) else None,
            name=value.name,
        )
    if isinstance(value, tuple) and len(value) == 2 and value[0] in _TUPLE_ROLES:
        if isinstance(value[1], (str, list)):
            return Message(_TUPLE_ROLES[value[0]], _content_text(value[1]))
        return None
    if isinstance(value, dict):
        kw = value.get("kwargs")
        if value.get("lc") == 1 and isinstance(kw, dict) and "content" in kw:
            role = kw.get("role") if kw.get("type") == "chat" else kw.get("type")
            if not role:
                cls = value.get("id") or ["message"]
                role = str(cls[-1]).replace("MessageChunk", "").replace("Message", "").lower()
            return Message(
                role=_role(str(role)),
                content=_content_text(kw.get("content")),
                tool_calls=_calls(kw.get("tool_calls")),
                id=kw.get("id"),
                tool_call_id=kw.get("tool_call_id"),
            )
        role = value.get("role") or value.get("type")
        if "content" in value and role in _MESSAGE_ROLES:
            return Message(
                role=_role(role),
                content=_content_text(value.get("content")),
                tool_calls=_calls(value.get("tool_calls")),
                id=value.get("id"),
                tool_call_id=value.get("tool_call_id"),
            )
    return None


_MESSAGE_ROLES = frozenset(
    {"human", "user", "ai", "assistant", "system", "developer", "tool", "function", "chat",
     "AIMessageChunk"}
)


def _document(doc: LCDocument) -> Document:
    return Document(doc.page_content, getattr(doc, "id", None), None, dict(doc.metadata or {}))


def _generation(generations: Any) -> Any:
    """A model result (``LLMResult`` as a dict): the first generation's message or text."""
    try:
        first = generations[0][0]
    except (IndexError, KeyError, TypeError):
        return ""
    message = first.get("message") if isinstance(first, dict) else getattr(first, "message", None)
    if message is not None:
        found = _message(message)
        if found is not None:
            return found
    text = first.get("text", "") if isinstance(first, dict) else getattr(first, "text", "")
    return str(text)


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not break tracing
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _MAX_REPR else text[:_MAX_REPR] + "..."
