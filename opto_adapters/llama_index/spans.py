"""Translate one recorded LlamaIndex run (a tree of significant spans) into spans.

Only translation happens here: the query, retrieval, synthesis, LLM call, tool call, chat
turn or agent run of each recorded span becomes a ``Span`` with framework-neutral inputs and
output (retrieved nodes as documents with their ids, chat messages with their tool calls);
what LlamaIndex tells explicitly becomes span fields: the template an LLM call filled (by
the id stamped in its metadata) and its variables, the tools offered to it, a retriever's
settings, the parameters a user tied to an object. Parameters that only show in the text
an LLM received are handed to the builder as ``TextUse`` s.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from llama_index.core.prompts import ChatPromptTemplate, PromptTemplate, SelectorPromptTemplate

from ..runs import Document, Message, Span, TextUse, ToolCall
from ..runs.usage import call_usage
from ..trace import Parameter
from ..trace.names import safe_name
from .discovery import Discovery
from .found import Links
from .recorder import UNSET, RunRecord, SpanRecord
from .templates import STAMP_KEY, RichPromptTemplate

__all__ = ["freeze", "output_value", "text_uses", "translate"]

_KINDS = {
    "query": "query",
    "retrieve": "retriever",
    "synthesize": "synthesize",
    "llm": "llm",
    "tool": "tool",
    "chat": "chat",
    "agent": "agent",
}
_DOCS = {
    "query": "Answers the query: retrieves the most similar nodes, then synthesizes a response with the LLM.",
    "retrieve": "Returns the nodes most similar to the query, with their similarity scores.",
    "synthesize": "Fills the prompt with the query and the retrieved context and calls the LLM (several calls when the context does not fit in one); returns the answer.",
    "llm": "Calls the language model with the filled prompt or messages (and the tools offered) and returns its reply.",
    "chat": "One chat turn: uses the chat history (and retrieved context, if any) to answer the message.",
    "agent": "Runs the agent: calls the LLM, runs the tools it asks for, and repeats until it answers.",
}
_NON_ROOT_NAME = {"query": "query_engine", "chat": "chat_engine", "agent": "agent"}
_ASYNC = frozenset(
    {
        "aquery", "aretrieve", "asynthesize", "achat", "astream_chat", "apredict", "astream",
        "acomplete", "astream_complete", "astructured_predict", "astream_structured_predict",
        "apredict_and_call", "acall",
    }
)  # fmt: skip


def text_uses(discovery: Discovery) -> list[TextUse]:
    """The parameters to look for in the text LLMs receive (those not linked by a stamp)."""
    uses = []
    for t in discovery.trainables:
        if t.match == "tool":  # a ReAct agent writes the descriptions into its prompt
            name = _tool_node_name(t.holder)
            uses.append(
                TextUse(
                    t.parameter,
                    arg=f"tool[{name}]",
                    owners=frozenset(t.owners),
                    renderings=tuple(getattr(t, "renderings", ())),
                )
            )
        elif t.match in ("template", "contains"):
            uses.append(
                TextUse(
                    t.parameter,
                    match=t.match,
                    syntax="python" if t.syntax == "python" else ("jinja" if t.syntax == "jinja" else "llama"),
                    owners=frozenset(t.owners),
                    renderings=tuple(getattr(t, "renderings", ())),
                )
            )
    return uses


def translate(run: RunRecord, discovery: Discovery, links: Links | None = None) -> Span:
    """The span tree of one recorded run, with the ``used_by`` links of ``links`` (default:
    those of now)."""
    return _Tree(discovery, run, links or discovery.links()).span(run.root, None, root=True)


def freeze(run: RunRecord) -> None:
    """Take now what translating ``run`` reads from objects the app goes on using, so it
    can be translated later: the text of every node (the index's own nodes, shared by every
    query, can be edited) as the run's ``Document`` s and of every chat message an LLM was
    sent as a ``Message`` (each once per run); a copy of each other list and dict
    among a span's arguments and LLM events (a synthesizer's list of nodes is the returned
    response's ``source_nodes``) and of the tools offered; and what each step returned as
    the graph shows it (the app may edit the response it got). The rest is immutable
    (strings), made for this call (the template on an LLM event is a deep copy) or read for
    its identity and name only (instances, tools)."""
    docs: dict[int, tuple[Any, Document]] = {}  # each node read once per run
    taken: dict[int, tuple[Any]] = {}  # a query's response is its synthesizer's: taken once
    messages: dict[int, tuple[Any, Message]] = {}  # each call resends the history: read once
    stack = [run.root]
    while stack:
        rec = stack.pop()
        stack.extend(rec.children)
        rec.args = _frozen_map(rec.args, docs)  # the dispatcher's dict: copied, never edited
        if rec.llm is not None:
            rec.llm = _frozen_map(rec.llm, docs)
        if rec.kind == "llm":
            for data in (rec.llm, rec.args):
                if data and type(data.get("messages")) is list:
                    data["messages"] = [_taken_message(m, messages) for m in data["messages"]]
        if rec.tools is not None:
            rec.tools = _frozen(rec.tools, docs)
        result = rec.result
        if result is None or isinstance(result, (str, int, float, bool)):
            continue
        if type(result) is list:
            rec.result = _frozen(result, docs)
            if rec.result and isinstance(rec.result[0], Document):
                rec.output = rec.result
        elif rec.kind != "llm":  # an LLM call's output comes from its events
            hit = taken.get(id(result))
            if hit is None:
                hit = taken[id(result)] = (output_value(result),)
            rec.output = hit[0]


def _taken_message(m: Any, memo: dict[int, tuple[Any, Message]]) -> Any:
    """A chat message as the neutral ``Message`` it is now (apps edit messages they keep)."""
    hit = memo.get(id(m))
    if hit is None or hit[0] is not m:
        hit = memo[id(m)] = (m, _message(m))
    return hit[1]


def _frozen_map(data: dict[str, Any], docs: dict[int, tuple[Any, Document]]) -> dict[str, Any]:
    """``data`` with its lists and dicts ``_frozen``: a new dict if it holds any, else itself."""
    for value in data.values():
        kind = type(value)
        if kind is list or kind is dict:
            return {k: _frozen(v, docs) for k, v in data.items()}
    return data


def _frozen(value: Any, docs: dict[int, tuple[Any, Document]]) -> Any:
    """A copy of a list (nodes become ``Document`` s, each node once per run) or dict."""
    kind = type(value)
    if kind is dict:
        return dict(value)
    if kind is not list:
        return value
    if not value or not hasattr(value[0], "node"):
        return list(value)
    out = []
    for n in value:
        hit = docs.get(id(n))
        if hit is None or hit[0] is not n:
            hit = docs[id(n)] = (n, _documents((n,))[0])
        out.append(hit[1])
    return out


class _Tree:
    def __init__(self, discovery: Discovery, run: RunRecord, links: Links) -> None:
        self.d = discovery
        self.run = run
        self.order = 0
        self._offered: set[int] | None = None
        self.by_instance = links.by_instance
        self.by_span_name = links.by_span_name
        # a retriever's nodes are usually the synthesizer's too: each node translated once
        self.docs: dict[int, tuple[Any, Document]] = {}

    def span(self, rec: SpanRecord, parent_id: str | None, *, root: bool = False) -> Span:
        kind = _KINDS.get(rec.kind, "chain")
        span = Span(
            id=rec.id,
            kind=kind,
            name=self.op_name(rec),
            parent_id=parent_id,
            error=rec.error,
            order=self.order,
            label=self.label(rec, root),
            doc=self.doc(rec),
            keep=kind in ("query", "synthesize", "chat", "agent"),
        )
        self.order += 1
        getattr(self, "_" + rec.kind, self._generic)(rec, span)
        span.parameters.extend(self.user_parameters(rec))
        span.children = [self.span(c, span.id) for c in rec.children]
        return span

    # -- names -----------------------------------------------------------------------------

    @staticmethod
    def op_name(rec: SpanRecord) -> str:
        if rec.kind == "tool":
            return f"tool:{_tool_name(rec.instance) or 'tool'}"
        cls, _, method = rec.name.rpartition(".")
        return f"{cls}.{method[1:]}" if method in _ASYNC else rec.name  # sync and async share #Code

    @staticmethod
    def label(rec: SpanRecord, root: bool) -> str:
        if rec.kind == "tool":
            return _tool_node_name(rec.instance)
        if rec.kind in _NON_ROOT_NAME:
            return "response" if root else _NON_ROOT_NAME[rec.kind]
        return rec.kind

    @staticmethod
    def doc(rec: SpanRecord) -> str:
        if rec.kind == "tool":
            tool = _tool_name(rec.instance) or "tool"
            return f"Runs the tool {tool!r} with the arguments the LLM chose and returns its output."
        return _DOCS.get(rec.kind, "")

    def user_parameters(self, rec: SpanRecord) -> list[tuple[str, Parameter]]:
        """Parameters a user tied to this object or this kind of span (``used_by=``)."""
        by_instance, by_name = self.by_instance, self.by_span_name
        if not (by_instance or by_name):
            return []
        found = list(by_instance.get(id(rec.instance), ())) if rec.instance is not None else []
        found.extend(by_name.get(rec.name, ()))
        found.extend(by_name.get(rec.name.rpartition(".")[2], ()))
        return found

    # -- inputs and outputs by kind --------------------------------------------------------

    def _generic(self, rec: SpanRecord, span: Span) -> None:
        span.output = _output(rec)

    def _query(self, rec: SpanRecord, span: Span) -> None:
        self._query_input(rec, span)
        span.output = _output(rec)

    @staticmethod
    def _query_input(rec: SpanRecord, span: Span) -> None:
        text = _query_text(rec.args.get("str_or_query_bundle", rec.args.get("query_bundle")))
        if text is not None:
            span.inputs["query"] = text

    def documents(self, nodes: Any) -> list[Document]:
        """``_documents``, translating a node seen before in this run only once."""
        out = []
        memo = self.docs
        for n in nodes or ():
            if isinstance(n, Document):  # read when the run ended (``freeze``)
                out.append(n)
                continue
            hit = memo.get(id(n))
            if hit is None or hit[0] is not n:
                hit = memo[id(n)] = (n, _documents((n,))[0])
            out.append(hit[1])
        return out

    def _retrieve(self, rec: SpanRecord, span: Span) -> None:
        self._query_input(rec, span)
        span.output = self.documents(rec.result) if type(rec.result) is list else _output(rec)
        for t in self.d.by_retriever.get(id(rec.instance), ()):
            span.parameters.append((t.parameter.name.rpartition(".")[2], t.parameter))

    def _synthesize(self, rec: SpanRecord, span: Span) -> None:
        text = _query_text(rec.args.get("query"))
        if text is not None:
            span.inputs["query"] = text
        nodes = rec.args.get("nodes")
        if nodes:
            span.inputs["nodes"] = self.documents(nodes)
        span.output = _output(rec)

    def _chat(self, rec: SpanRecord, span: Span) -> None:
        message = rec.args.get("message")
        if message is not None:
            span.inputs["message"] = _text(message)
        span.output = _output(rec)

    def _agent(self, rec: SpanRecord, span: Span) -> None:
        start = rec.args.get("start_event")
        msg = getattr(start, "user_msg", None) if start is not None else None
        kwargs = rec.args.get("kwargs") or {}
        if msg is None:
            msg = kwargs.get("user_msg")
        if msg is not None:
            span.inputs["user_msg"] = _text(msg)
        else:  # a workflow of the user's: what its StartEvent was given
            fields = dict(start.items()) if hasattr(start, "items") else dict(kwargs)
            for key, value in fields.items():
                span.inputs[str(key)] = _text(value) if hasattr(value, "blocks") else _jsonable(value)
        span.output = _output(rec)

    def _tool(self, rec: SpanRecord, span: Span) -> None:
        arguments = dict(rec.args.get("kwargs") or {})
        positional = rec.args.get("args")
        if positional:
            arguments["args"] = list(positional)
        if "input" in rec.args and not arguments:
            arguments["input"] = rec.args["input"]
        span.inputs = {str(k): _jsonable(v) for k, v in arguments.items()}
        call_id = getattr(rec, "tool_call_id", None)
        if isinstance(call_id, str):
            span.links["tool_call_id"] = call_id
        span.output = _output(rec)

    def _llm(self, rec: SpanRecord, span: Span) -> None:
        data = rec.llm or {}
        template = data.get("template")
        if template is None and not data.get("messages") and data.get("prompt") is None:
            # an LLM that emitted no start event: fall back to the call's own arguments
            prompt = rec.args.get("prompt")
            if isinstance(prompt, (PromptTemplate, ChatPromptTemplate, SelectorPromptTemplate)):
                template = prompt
                data = {"template": prompt, "template_args": rec.args.get("prompt_args") or {}}
            elif rec.args.get("messages") is not None:
                data = {"messages": rec.args["messages"]}
            elif isinstance(prompt, str):
                data = {"prompt": prompt}
        if template is not None:
            self.template_inputs(rec, span, template, data.get("template_args") or {})
        elif data.get("messages") is not None:
            span.inputs["messages"] = [m if isinstance(m, Message) else _message(m) for m in data["messages"]]
        elif data.get("prompt") is not None:
            span.inputs["prompt"] = str(data["prompt"])
        self.tool_parameters(rec, span, data)
        span.output = _llm_output(rec)
        span.usage = _usage(rec.llm or {})

    def template_inputs(self, rec: SpanRecord, span: Span, template: Any, call_args: dict[str, Any]) -> None:
        selected = _select(template, rec.instance)
        token = selected.metadata.get(STAMP_KEY) if hasattr(selected, "metadata") else None
        stamped = self.d.by_stamp.get(token) if token else None
        values = {**getattr(selected, "kwargs", {}), **call_args}
        if stamped is None:
            # not one of ours: what the LLM received, as text; the builder finds parameters
            # (and where the values came from) in it
            try:
                if isinstance(selected, ChatPromptTemplate):
                    span.inputs["messages"] = [_message(m) for m in selected.format_messages(**call_args)]
                else:
                    span.inputs["prompt"] = selected.format(**call_args)
                return
            except Exception:  # a template that cannot be filled here: its raw text
                text = _template_text(selected)
                if text:
                    span.inputs["template"] = text
        elif isinstance(selected, ChatPromptTemplate):
            for i, message in enumerate(selected.message_templates):
                role = message.role.value
                span.parameters.extend((role, t.parameter) for t, index in stamped if index == i)
        else:
            span.parameters.extend(("template", t.parameter) for t, _ in stamped)
        for var in dict.fromkeys(getattr(selected, "template_vars", ()) or ()):
            if var in values:
                span.inputs[var] = _jsonable(values[var])

    def tool_parameters(self, rec: SpanRecord, span: Span, data: dict[str, Any]) -> None:
        offered = rec.tools
        if offered is None:
            offered = (data.get("additional_kwargs") or {}).get("tools")
        for tool in offered or ():
            trainable = self.d.by_tool.get(id(tool)) or self.d.by_tool.get(id(getattr(tool, "metadata", None)))
            name = _tool_name(tool)
            if trainable is None and name:
                trainable = next(
                    (t for t in self.d.by_tool_name.get(name, ()) if not t.owners.isdisjoint(self.run.instances)),
                    None,
                )
            if trainable is not None:
                span.parameters.append((f"tool[{safe_name(name or '', default='tool')}]", trainable.parameter))


# -- values -----------------------------------------------------------------------------------


def _select(template: Any, llm: Any) -> Any:
    """The branch of a selector an LLM call uses (without mutating the template)."""
    if isinstance(template, SelectorPromptTemplate):
        for condition, branch in template.conditionals or ():
            try:
                if condition(llm):
                    return branch
            except Exception:
                continue
        return template.default_template
    return template


def _template_text(template: Any) -> str:
    if isinstance(template, PromptTemplate):
        return template.template
    if RichPromptTemplate is not None and isinstance(template, RichPromptTemplate):
        return template.template_str
    try:
        return template.get_template()
    except Exception:
        return ""


def _query_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    text = getattr(value, "query_str", None)
    return text if isinstance(text, str) else _text(value)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if hasattr(value, "role") and hasattr(value, "blocks"):
        return _message(value).text(role=False)
    return str(value)


def _message(message: Any) -> Message:
    """A LlamaIndex ``ChatMessage`` as a neutral message, with the tool calls it makes."""
    role = getattr(getattr(message, "role", None), "value", None) or "message"
    content = getattr(message, "content", None)
    calls: list[ToolCall] = []
    for block in getattr(message, "blocks", None) or ():
        if type(block).__name__ == "ToolCallBlock":
            calls.append(ToolCall(str(block.tool_name), block.tool_kwargs, getattr(block, "tool_call_id", None)))
    kwargs = getattr(message, "additional_kwargs", None) or {}
    for call in kwargs.get("tool_calls", None) or ():
        function = call.get("function") if isinstance(call, dict) else getattr(call, "function", None)
        call_id = call.get("id") if isinstance(call, dict) else getattr(call, "id", None)
        if isinstance(function, dict):
            name, arguments = function.get("name"), function.get("arguments")
        else:
            name, arguments = getattr(function, "name", None), getattr(function, "arguments", None)
        if name:
            calls.append(ToolCall(str(name), _parsed(arguments), call_id))
    call_id = kwargs.get("tool_call_id")
    return Message(
        role=role,
        content=content if isinstance(content, str) else "",
        tool_calls=tuple(calls),
        tool_call_id=call_id if isinstance(call_id, str) else None,
    )


def _parsed(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def _json(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        text = _json(value)
        if text.startswith(("{", "[")):
            try:
                return json.loads(text)
            except ValueError:
                return text
        return text


def _usage(data: dict[str, Any]) -> dict[str, float]:
    """A model call's reported tokens (its response's raw reply or additional kwargs) and its
    latency (its first start event to its last end event)."""
    response = data.get("chat_response") or data.get("completion_response")
    first, last = data.get("first_event_at"), data.get("last_event_at")
    latency = (last - first).total_seconds() if first is not None and last is not None else None
    return call_usage(
        _field(response, "raw"), _field(response, "additional_kwargs"),
        _field(_field(response, "message"), "additional_kwargs"), latency=latency,
    )


def _field(obj: Any, name: str) -> Any:
    return None if obj is None else getattr(obj, name, None)


def _llm_output(rec: SpanRecord) -> Any:
    data = rec.llm or {}
    if isinstance(data.get("output"), str):
        return data["output"]
    if data.get("output") is not None:
        return output_value(data["output"])
    response = data.get("chat_response")
    if response is not None and getattr(response, "message", None) is not None:
        message = _message(response.message)
        if isinstance(data.get("chat_content"), str):  # as it was when the call ended
            message = dataclasses.replace(message, content=data["chat_content"])
        return message
    response = data.get("completion_response")
    if response is not None and isinstance(getattr(response, "text", None), str):
        return response.text
    return _output(rec)


def _output(rec: SpanRecord) -> Any:
    """What the graph shows a step returned: as taken when the run ended (``freeze``)."""
    return output_value(rec.result) if rec.output is UNSET else rec.output


def _documents(nodes: Any) -> list[Document]:
    out = []
    for n in nodes or ():
        inner = getattr(n, "node", n)
        score = getattr(n, "score", None)
        out.append(
            Document(
                _node_text(inner),
                getattr(inner, "node_id", None),
                float(score) if isinstance(score, (int, float)) else None,
            )
        )
    return out


def _node_text(node: Any) -> str:
    try:
        return node.get_content()
    except Exception:
        return str(getattr(node, "text", ""))


def _tool_node_name(tool: Any) -> str:
    """The node name of a tool: its name, made a valid node name (as in its parameter's)."""
    return safe_name(_tool_name(tool) or "", default="tool")


def _tool_name(tool: Any) -> str | None:
    if isinstance(tool, dict):  # an OpenAI-style tool spec
        function = tool.get("function") or tool
        name = function.get("name") if isinstance(function, dict) else None
        return name if isinstance(name, str) else None
    metadata = getattr(tool, "metadata", None)
    name = getattr(metadata, "name", None)
    return name if isinstance(name, str) else None


def output_value(result: Any) -> Any:
    """A readable value for what a step returned; never consumes a stream."""
    if result is None or isinstance(result, (str, int, float, bool)):
        return result
    kind = type(result).__name__
    if "Streaming" in kind:
        text = getattr(result, "response_txt", None) or getattr(result, "response", None)
        return text if isinstance(text, str) and text else f"<{kind}: streamed to the caller>"
    if kind == "StopEvent":
        return output_value(getattr(result, "result", None))
    if kind == "AgentOutput":
        return _message(result.response).text(role=False)
    response = getattr(result, "response", None)
    if isinstance(response, str):
        return response
    if kind == "Response":
        return response or ""
    message = getattr(result, "message", None)
    if message is not None and hasattr(message, "blocks"):
        return _message(message).text(role=False)
    if kind == "CompletionResponse":
        return result.text
    if kind == "ToolOutput":
        return result.content
    if isinstance(result, list) and result and hasattr(result[0], "node"):
        return _documents(result)
    dump = getattr(result, "model_dump", None)
    if callable(dump):
        try:
            return _jsonable(dump())
        except Exception:
            pass
    return _jsonable(result)
