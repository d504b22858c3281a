"""Turn one finished run (a tree of significant spans) into an OPTO graph.

Each significant span becomes one computed node. Its inputs are what it consumed: the
user's text (a leaf), trainable parameters it used (a prompt template and its variables,
a system prompt, the tool descriptions offered to an LLM, a retriever setting), and the
outputs of earlier steps, found by *value*: an LLM input equal to an earlier node's output
(a tool result, the previous answer, the query) is wired to that node, and a template
variable holding retrieved text becomes a ``join_context`` node fed by the retrieval.
Children whose output nothing consumed feed their parent directly, so every step stays on a
path to the output.
"""

from __future__ import annotations

import json
import re
import threading
import traceback
from typing import Any

from llama_index.core.prompts import ChatPromptTemplate, PromptTemplate, SelectorPromptTemplate

from ..trace import ExceptionNode, Graph, Node, Op, safe_name
from .discovery import Discovery, Trainable
from .recorder import RunRecord, SpanRecord
from .templates import STAMP_KEY, RichPromptTemplate, match_template

__all__ = ["GraphBuilder", "output_value"]

_DOCS = {
    "query": "Answers the query: retrieves the most similar nodes, then synthesizes a response with the LLM.",
    "retrieve": "Returns the nodes most similar to the query, with their similarity scores.",
    "synthesize": "Fills the prompt with the query and the retrieved context and calls the LLM (several calls when the context does not fit in one); returns the answer.",
    "llm": "Calls the language model with the filled prompt or messages (and the tools offered) and returns its reply.",
    "tool": "Runs the tool with the arguments the LLM chose and returns its output.",
    "chat": "One chat turn: uses the chat history (and retrieved context, if any) to answer the message.",
    "agent": "Runs the agent: calls the LLM, runs the tools it asks for, and repeats until it answers.",
}
_JOIN = Op(
    "join_context",
    "Joins the texts of the retrieved nodes (with their metadata) into the context text the prompt variable is filled with.",
)
_NON_ROOT_NAME = {"query": "query_engine", "chat": "chat_engine", "agent": "agent"}
_PLACEHOLDER = re.compile(r"^\s*\{[A-Za-z_][\w.]*\}\s*$")
_MIN_CONTAINS = 4
_MAX_LINK_TEXTS = 50
_TRACEBACK_LINES = 12


class GraphBuilder:
    """Builds graphs for one tracer's discovered parameters; shares ``Op`` objects."""

    def __init__(self, discovery: Discovery) -> None:
        self.discovery = discovery
        self._ops: dict[tuple[str, str], Op] = {}
        self._lock = threading.Lock()

    def op(self, name: str, kind: str, doc: str | None = None) -> Op:
        key = (name, kind)
        with self._lock:
            op = self._ops.get(key)
            if op is None:
                if len(self._ops) >= 1024:  # bounded: tool names come from user data
                    self._ops.clear()
                op = self._ops[key] = Op(name, doc if doc is not None else _DOCS.get(kind, ""))
        return op

    def build(self, run: RunRecord) -> Graph:
        output = _Build(self, run).node(run.root, root=True)
        root = run.root
        return Graph(output, metadata={"run_id": root.id, "span": root.name, "kind": root.kind})


class _Inputs:
    """Ordered ``argument -> node``; a node is added once, argument names made unique."""

    __slots__ = ("items", "_ids")

    def __init__(self) -> None:
        self.items: dict[str, Node] = {}
        self._ids: set[int] = set()

    def add(self, arg: str, node: Node | None) -> None:
        if node is None or id(node) in self._ids:
            return
        base, n = arg, 1
        while arg in self.items:
            n += 1
            arg = f"{base}_{n}"
        self.items[arg] = node
        self._ids.add(id(node))


class _Build:
    def __init__(self, builder: GraphBuilder, run: RunRecord) -> None:
        self.b = builder
        self.d = builder.discovery
        self.run = run
        self.values: dict[str, Node] = {}  # text -> latest node with that value
        self.retrieved: list[tuple[Node, list[str], set[str]]] = []
        self.consumed: set[int] = set()
        self.last_llm: Node | None = None
        self._candidates: list[Trainable] | None = None

    # -- generic ---------------------------------------------------------------------------

    def node(self, rec: SpanRecord, *, root: bool = False) -> Node:
        inputs = _Inputs()
        own = getattr(self, "_inputs_" + rec.kind)
        own(rec, inputs, root)  # before the children: they may link to these leaves
        children = [(c, self.node(c)) for c in rec.children]
        if rec.kind == "llm":
            self._llm_inputs(rec, inputs)
        for child, n in children:
            if id(n) not in self.consumed:
                inputs.add(self._child_arg(child), n)
        for n in inputs.items.values():
            self.consumed.add(id(n))
        name = self._node_name(rec, root)
        op = self._op(rec)
        if rec.error is not None:
            out: Node = ExceptionNode(
                rec.error, name=name, inputs=inputs.items, op=op, traceback=_traceback(rec.error)
            )
        else:
            out = Node(self._value(rec), name=name, inputs=inputs.items, op=op)
        self._register(out)
        if rec.kind == "llm":
            self.last_llm = out
        elif rec.kind == "retrieve" and rec.error is None:
            texts, ids = _retrieved_texts(rec.result)
            self.retrieved.append((out, texts, ids))
        return out

    def _node_name(self, rec: SpanRecord, root: bool) -> str:
        if rec.kind == "tool":
            return _tool_node_name(rec.instance)
        if rec.kind in _NON_ROOT_NAME:
            return "response" if root else _NON_ROOT_NAME[rec.kind]
        return rec.kind

    def _child_arg(self, rec: SpanRecord) -> str:
        if rec.kind == "tool":
            return _tool_node_name(rec.instance)
        return _NON_ROOT_NAME.get(rec.kind, rec.kind)

    def _op(self, rec: SpanRecord) -> Op:
        if rec.kind == "tool":
            tool = _tool_name(rec.instance) or "tool"
            return self.b.op(
                f"tool:{tool}",
                "tool",
                f"Runs the tool {tool!r} with the arguments the LLM chose and returns its output.",
            )
        return self.b.op(_sync_name(rec.name), rec.kind)

    def _value(self, rec: SpanRecord) -> Any:
        if rec.kind == "llm":
            return _llm_output(rec)
        if rec.kind == "retrieve":
            return _retrieved_value(rec.result)
        return output_value(rec.result)

    def _register(self, node: Node) -> None:
        value = node.value
        if isinstance(value, BaseException):  # an agent passes a tool's error on as text
            value = str(value)
        if isinstance(value, str) and value:
            self.values[value] = node

    def leaf(self, name: str, value: Any) -> Node:
        """The node for an input value: an earlier node with that value, a context built
        from retrieved nodes, or a new leaf."""
        if isinstance(value, str):
            found = self.values.get(value)
            if found is not None:
                return found
            derived = self._derived(name, value)
            if derived is not None:
                return derived
        node = Node(value, name=safe_name(name))
        self._register(node)
        return node

    def _derived(self, name: str, value: str) -> Node | None:
        for node, texts, _ in reversed(self.retrieved):
            if any(len(t) >= _MIN_CONTAINS and t in value for t in texts[:_MAX_LINK_TEXTS]):
                out = Node(value, name=safe_name(name), inputs={"nodes": node}, op=_JOIN)
                self._register(out)
                return out
        return None

    # -- own inputs by kind ----------------------------------------------------------------

    def _inputs_query(self, rec: SpanRecord, inputs: _Inputs, root: bool) -> None:
        text = _query_text(rec.args.get("str_or_query_bundle", rec.args.get("query_bundle")))
        if text is not None:
            inputs.add("query", self.leaf("query", text))

    def _inputs_retrieve(self, rec: SpanRecord, inputs: _Inputs, root: bool) -> None:
        self._inputs_query(rec, inputs, root)
        for t in self.d.by_retriever.get(id(rec.instance), ()):
            inputs.add(t.parameter.name.rpartition(".")[2], t.parameter)

    def _inputs_synthesize(self, rec: SpanRecord, inputs: _Inputs, root: bool) -> None:
        text = _query_text(rec.args.get("query"))
        if text is not None:
            inputs.add("query", self.leaf("query", text))
        nodes = rec.args.get("nodes")
        if nodes:
            ids = {getattr(getattr(n, "node", None), "node_id", None) for n in nodes}
            for node, _, got in reversed(self.retrieved):
                if ids & got:
                    inputs.add("nodes", node)
                    return
            inputs.add("nodes", self.leaf("nodes", _retrieved_value(nodes)))

    def _inputs_chat(self, rec: SpanRecord, inputs: _Inputs, root: bool) -> None:
        message = rec.args.get("message")
        if message is not None:
            inputs.add("message", self.leaf("message", _text(message)))

    def _inputs_agent(self, rec: SpanRecord, inputs: _Inputs, root: bool) -> None:
        start = rec.args.get("start_event")
        msg = getattr(start, "user_msg", None) if start is not None else None
        if msg is None:
            msg = (rec.args.get("kwargs") or {}).get("user_msg")
        if msg is not None:
            inputs.add("user_msg", self.leaf("user_msg", _text(msg)))

    def _inputs_tool(self, rec: SpanRecord, inputs: _Inputs, root: bool) -> None:
        inputs.add("call", self.last_llm)
        arguments = dict(rec.args.get("kwargs") or {})
        positional = rec.args.get("args")
        if positional:
            arguments["args"] = list(positional)
        if "input" in rec.args and not arguments:
            arguments["input"] = rec.args["input"]
        inputs.add("arguments", Node(_jsonable(arguments), name="arguments"))

    def _inputs_llm(self, rec: SpanRecord, inputs: _Inputs, root: bool) -> None:
        """LLM inputs are built after the (absent) children: see ``_llm_inputs``."""

    # -- LLM calls -------------------------------------------------------------------------

    def _llm_inputs(self, rec: SpanRecord, inputs: _Inputs) -> None:
        data = rec.llm or {}
        template = data.get("template")
        if template is None and not data.get("messages") and data.get("prompt") is None:
            # an LLM that emitted no start event: fall back to the call's own arguments
            messages = rec.args.get("messages")
            prompt = rec.args.get("prompt")
            if isinstance(prompt, (PromptTemplate, ChatPromptTemplate, SelectorPromptTemplate)):
                template = prompt
                data = {"template": prompt, "template_args": rec.args.get("prompt_args") or {}}
            elif messages is not None:
                data = {"messages": messages}
            elif isinstance(prompt, str):
                data = {"prompt": prompt}
        if template is not None:
            self._template_inputs(rec, template, data.get("template_args") or {}, inputs)
        elif data.get("messages") is not None:
            for message in data["messages"]:
                role = getattr(getattr(message, "role", None), "value", "message")
                self._text_inputs(role, _message_text(message), inputs)
        elif data.get("prompt") is not None:
            self._text_inputs("prompt", data["prompt"], inputs)
        self._tool_inputs(rec, data, inputs)

    def _template_inputs(
        self, rec: SpanRecord, template: Any, call_args: dict[str, Any], inputs: _Inputs
    ) -> None:
        selected = _select(template, rec.instance)
        token = selected.metadata.get(STAMP_KEY) if hasattr(selected, "metadata") else None
        stamped = self.d.by_stamp.get(token) if token else None
        if isinstance(selected, ChatPromptTemplate):
            for i, message in enumerate(selected.message_templates):
                content = message.content
                if not isinstance(content, str) or not content.strip():
                    continue
                role = message.role.value
                if stamped is not None:
                    params = [t.parameter for t, index in stamped if index == i]
                else:
                    params = [t.parameter for t, _ in self._matches(content, formatted=False)]
                for p in params:
                    inputs.add(role, p)
                if not params and not _PLACEHOLDER.match(content):
                    inputs.add(role, self.leaf(role, content))
        else:
            text = _template_text(selected)
            if stamped is not None:
                params = [t.parameter for t, _ in stamped]
            else:
                params = (
                    [t.parameter for t, _ in self._matches(text, formatted=False)] if text else []
                )
            for p in params:
                inputs.add("template", p)
            if not params and text:
                inputs.add("template", self.leaf("template", text))
        values = {**getattr(selected, "kwargs", {}), **call_args}
        for var in dict.fromkeys(getattr(selected, "template_vars", ()) or ()):
            if var in values:
                inputs.add(var, self.leaf(var, values[var]))

    def _text_inputs(self, role: str, text: str, inputs: _Inputs) -> None:
        """A message (or completion prompt) the LLM received: the parameters found in it and
        the values of their variables, or the text itself."""
        matches = self._matches(text, formatted=True)
        for trainable, variables in matches:
            arg = (
                f"tool[{_tool_node_name(trainable.holder)}]" if trainable.match == "tool" else role
            )
            inputs.add(arg, trainable.parameter)
            for var, value in (variables or {}).items():
                inputs.add(var, self.leaf(var, value))
        if not matches:
            inputs.add(role, self.leaf(role, text))

    def _tool_inputs(self, rec: SpanRecord, data: dict[str, Any], inputs: _Inputs) -> None:
        offered = rec.tools
        if offered is None:
            offered = (data.get("additional_kwargs") or {}).get("tools")
        if not offered:
            return
        candidates = {id(t) for t in self._candidate_list()}
        for tool in offered:
            trainable = self.d.by_tool.get(id(tool)) or self.d.by_tool.get(
                id(getattr(tool, "metadata", None))
            )
            name = _tool_name(tool)
            if trainable is None and name:
                trainable = next(
                    (t for t in self.d.by_tool_name.get(name, ()) if id(t) in candidates), None
                )
            if trainable is not None:
                inputs.add(f"tool[{safe_name(name or '', default='tool')}]", trainable.parameter)

    def _candidate_list(self) -> list[Trainable]:
        """Parameters this run could have used (one of their owners ran in it)."""
        if self._candidates is None:
            seen = self.run.instances
            self._candidates = [
                t
                for t in self.d.trainables
                if t.match in ("template", "contains", "tool") and not t.owners.isdisjoint(seen)
            ]
        return self._candidates

    def _matches(
        self, text: str, *, formatted: bool
    ) -> list[tuple[Trainable, dict[str, str] | None]]:
        found: list[tuple[Trainable, dict[str, str] | None]] = []
        for t in self._candidate_list():
            try:
                value = t.parameter.value
            except Exception:  # a binding whose object changed shape: skip it, say why once
                continue
            if not isinstance(value, str) or len(value.strip()) < _MIN_CONTAINS:
                continue
            if t.match == "template":
                variables = match_template(value, text, syntax=t.syntax)
                if variables is not None:
                    found.append((t, variables if formatted else None))
            elif value in text:
                found.append((t, None))
        return found


# -- values -------------------------------------------------------------------------------------


_ASYNC = frozenset(
    {
        "aquery", "aretrieve", "asynthesize", "achat", "astream_chat", "apredict", "astream",
        "acomplete", "astream_complete", "astructured_predict", "astream_structured_predict",
        "apredict_and_call", "acall",
    }
)  # fmt: skip


def _sync_name(span_name: str) -> str:
    """``Class.aquery`` -> ``Class.query``: sync and async runs share their #Code."""
    cls, _, method = span_name.rpartition(".")
    return f"{cls}.{method[1:]}" if method in _ASYNC else span_name


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
        return _message_text(value)
    return str(value)


def _message_text(message: Any) -> str:
    """A chat message as text: its content, then one line per tool call it makes."""
    parts = []
    content = getattr(message, "content", None)
    if isinstance(content, str) and content:
        parts.append(content)
    for block in getattr(message, "blocks", None) or ():
        if type(block).__name__ == "ToolCallBlock":
            parts.append(f"{block.tool_name}({_json(block.tool_kwargs)})")
    for call in (getattr(message, "additional_kwargs", None) or {}).get("tool_calls", None) or ():
        function = (
            call.get("function") if isinstance(call, dict) else getattr(call, "function", None)
        )
        if isinstance(function, dict):
            name, arguments = function.get("name"), function.get("arguments")
        else:
            name, arguments = getattr(function, "name", None), getattr(function, "arguments", None)
        if name:
            parts.append(f"{name}({_json(arguments)})")
    return "\n".join(parts)


def _json(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return json.loads(_json(value)) if _json(value).startswith(("{", "[")) else _json(value)


def _llm_output(rec: SpanRecord) -> Any:
    data = rec.llm or {}
    if isinstance(data.get("output"), str):
        return data["output"]
    if data.get("output") is not None:
        return output_value(data["output"])
    response = data.get("chat_response")
    if response is not None and getattr(response, "message", None) is not None:
        return _message_text(response.message)
    response = data.get("completion_response")
    if response is not None and isinstance(getattr(response, "text", None), str):
        return response.text
    return output_value(rec.result)


def _retrieved_value(nodes: Any) -> Any:
    if not isinstance(nodes, list):
        return output_value(nodes)
    out = []
    for n in nodes:
        inner = getattr(n, "node", n)
        entry: dict[str, Any] = {"text": _node_text(inner)}
        score = getattr(n, "score", None)
        if isinstance(score, (int, float)):
            entry["score"] = round(float(score), 4)
        out.append(entry)
    return out


def _retrieved_texts(nodes: Any) -> tuple[list[str], set[str]]:
    if not isinstance(nodes, list):
        return [], set()
    texts, ids = [], set()
    for n in nodes:
        inner = getattr(n, "node", n)
        texts.append(_node_text(inner))
        node_id = getattr(inner, "node_id", None)
        if node_id is not None:
            ids.add(node_id)
    return texts, ids


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
        return (
            text
            if isinstance(text, str) and text
            else f"<{kind}: not consumed when the run returned>"
        )
    if kind == "StopEvent":
        return output_value(getattr(result, "result", None))
    if kind == "AgentOutput":
        return _message_text(result.response)
    response = getattr(result, "response", None)
    if isinstance(response, str):
        return response
    if kind == "Response":
        return response or ""
    message = getattr(result, "message", None)
    if message is not None and hasattr(message, "blocks"):
        return _message_text(message)
    if kind == "CompletionResponse":
        return result.text
    if kind == "ToolOutput":
        return result.content
    if isinstance(result, list) and result and hasattr(result[0], "node"):
        return _retrieved_value(result)
    dump = getattr(result, "model_dump", None)
    if callable(dump):
        try:
            return _jsonable(dump())
        except Exception:
            pass
    return result


def _traceback(error: BaseException) -> str:
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    text = "".join(lines).rstrip().splitlines()
    if len(text) > _TRACEBACK_LINES:
        text = ["..."] + text[-_TRACEBACK_LINES:]
    return "\n".join(text)
