"""Discovery: walk a live runnable and create one bound Parameter per trainable text.

Trainables: every message template of a ``ChatPromptTemplate``, a ``PromptTemplate``'s
template, a tool's description (also the copies ``bind_tools`` made) and the system prompt of
an agent (``create_agent``) or of any function step that holds a ``SystemMessage``.

Callbacks carry no object identity, so the objects whose runs need their parameters (prompts,
models, retrievers, tools) get an id stamped into their ``metadata``; LangChain merges that
metadata into the object's own run. Names are readable and stable: the object's label
(``prompt.system``, ``tool.search``, ``agent.system_prompt``), prefixed with its position in
the chain (``step2.prompt.system``) only as far as needed to be unique.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseLanguageModel
from langchain_core.messages import BaseMessage
from langchain_core.prompts import (
    AIMessagePromptTemplate,
    BasePromptTemplate,
    ChatMessagePromptTemplate,
    ChatPromptTemplate,
    HumanMessagePromptTemplate,
    MessagesPlaceholder,
    SystemMessagePromptTemplate,
)
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import (
    Runnable,
    RunnableBinding,
    RunnableBranch,
    RunnableLambda,
    RunnableParallel,
    RunnableSequence,
    RunnableWithFallbacks,
)
from langchain_core.runnables.passthrough import RunnableAssign
from langchain_core.tools import BaseTool

from ..trace import Parameter, safe_name
from .writeback import (
    ToolSchemas,
    message_parameter,
    schema_holder,
    template_parameter,
    tool_parameter,
)

__all__ = ["STAMP_KEY", "Discovered", "discover", "object_stamp"]

logger = logging.getLogger("opto_adapters.langchain")

STAMP_KEY = "opto_adapters_id"
"""The metadata key that ties a run to the live object that made it."""
_STAMP_LOCK = threading.Lock()

_ROLES = (
    (SystemMessagePromptTemplate, "system"),
    (HumanMessagePromptTemplate, "human"),
    (AIMessagePromptTemplate, "ai"),
)
_SEGMENT_LENGTH = 64  # one part of a name (a key, a tool name...)
_NAME_LENGTH = 100  # a whole name; room is left for a ``_2`` suffix
_LIBRARY_PREFIXES = ("langchain", "langgraph", "langsmith", "pydantic", "opto_adapters", "openai")
_MAX_FUNCTION_DEPTH = 3
_SYSTEM_VARS = {"system_message", "system_prompt", "system", "prompt"}


@dataclass
class Discovered:
    """What a walk found: the parameters and how runs find theirs."""

    parameters: list[Parameter] = field(default_factory=list)
    by_stamp: dict[str, list[tuple[str, Parameter]]] = field(default_factory=dict)
    """Run-metadata stamp -> the (argument name, parameter) inputs of that object's runs."""
    tools: dict[str, Parameter] = field(default_factory=dict)
    """Tool name -> its description parameter (an input of every model call that sees it)."""
    by_content: list[Parameter] = field(default_factory=list)
    """Literal system prompts, found in a model's input messages by their text."""
    labels: dict[str, str] = field(default_factory=dict)
    """Prompt stamp -> the prompt's label (names its node in the graph)."""


def object_stamp(obj: Any) -> str | None:
    """The id stamped in ``obj.metadata`` (stamping it now if needed), or ``None`` if the
    object has no metadata LangChain would pass to its runs."""
    if not hasattr(obj, "metadata"):
        return None
    with _STAMP_LOCK:  # two tracers over one chain must agree on the stamp
        metadata = obj.metadata
        if metadata is not None and not isinstance(metadata, dict):
            return None
        if metadata and isinstance(metadata.get(STAMP_KEY), str):
            return metadata[STAMP_KEY]
        stamp = uuid.uuid4().hex[:16]
        try:
            obj.metadata = {**(metadata or {}), STAMP_KEY: stamp}
        except Exception:  # frozen or validated models: leave them alone
            logger.debug("could not stamp metadata on %s", type(obj).__name__, exc_info=True)
            return None
        return stamp


def _segment(text: Any) -> str:
    """One part of a parameter name from framework text (a key, a tool, node or variable
    name): valid and short. Dots become ``_``: in a name they separate the parts."""
    return safe_name(str(text).replace(".", "_"), default="x", max_length=_SEGMENT_LENGTH)


def _cap(name: str) -> str:
    """A joined name (``step1.prompt.system``), cut to ``_NAME_LENGTH`` characters."""
    return safe_name(name, default="x", max_length=_NAME_LENGTH).rstrip(".") or "x"


@dataclass
class _Candidate:
    """A parameter before it has a name: its label, its position, how to make it."""

    base: tuple[str, ...]
    path: tuple[str, ...]
    make: Callable[[str, str], Parameter]  # (name, where) -> Parameter
    link: Callable[[Parameter], None]
    group: int  # id of the object it belongs to: one prefix per object


class _Walker:
    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.candidates: list[_Candidate] = []
        self.tools: dict[str, ToolSchemas] = {}
        self.agents: set[str] = set()  # owners that are LangGraph graphs (agents)
        self.found = Discovered()

    # -- the walk ---------------------------------------------------------------------------

    def walk(
        self, obj: Any, path: tuple[str, ...], label: str | None = None, owner: str | None = None
    ) -> None:
        if obj is None or id(obj) in self.seen:
            return
        if not isinstance(obj, (Runnable, BaseMessage, BasePromptTemplate)):
            return
        self.seen.add(id(obj))
        if isinstance(obj, BasePromptTemplate):
            self._prompt(obj, path, label)
        elif isinstance(obj, BaseTool):
            self._tool(obj)
        elif isinstance(obj, BaseMessage):
            self._system_message(obj, path, label, owner)
        elif isinstance(obj, (BaseLanguageModel, BaseRetriever)):
            object_stamp(obj)
        elif isinstance(obj, RunnableSequence):
            for i, step in enumerate(obj.steps, 1):
                self.walk(step, (*path, f"step{i}"), owner=owner)
        elif isinstance(obj, RunnableParallel):
            for key, step in obj.steps__.items():
                self.walk(step, (*path, _segment(key)), owner=owner)
        elif isinstance(obj, RunnableAssign):
            self.walk(obj.mapper, path, owner=owner)
        elif isinstance(obj, RunnableBinding):
            self._bound_tools(obj.kwargs.get("tools"))
            self.walk(obj.bound, path, label, owner)
        elif isinstance(obj, RunnableWithFallbacks):
            self.walk(obj.runnable, path, label, owner)
            for i, fallback in enumerate(obj.fallbacks, 1):
                self.walk(fallback, (*path, f"fallback{i}"), owner=owner)
        elif isinstance(obj, RunnableBranch):
            for i, (condition, branch) in enumerate(obj.branches, 1):
                self.walk(condition, (*path, f"branch{i}", "condition"), owner=owner)
                self.walk(branch, (*path, f"branch{i}"), owner=owner)
            self.walk(obj.default, (*path, "default"), owner=owner)
        elif _is_graph(obj):
            self._graph(obj, path)
        elif isinstance(getattr(obj, "tools_by_name", None), dict):  # langgraph ToolNode
            for tool in obj.tools_by_name.values():
                self.walk(tool, path, owner=owner)
        elif isinstance(obj, RunnableLambda) or _is_callable_runnable(obj):
            name = _segment(getattr(obj, "name", None) or "function")
            for func in (getattr(obj, "func", None), getattr(obj, "afunc", None)):
                self._function(func, path, owner or name, 0)
        else:
            self._fields(obj, path, owner)

    def _fields(self, obj: Any, path: tuple[str, ...], owner: str | None) -> None:
        """Unknown runnables: look one level into their attributes for runnables."""
        try:
            items = list(vars(obj).items())
        except TypeError:
            return
        for key, value in items:
            if key.startswith("__"):
                continue
            for item in _members(value):
                if isinstance(item, Runnable):
                    self.walk(item, (*path, _segment(key)), owner=owner)

    def _graph(self, graph: Any, path: tuple[str, ...]) -> None:
        """A compiled LangGraph graph: walk each node's runnable under the node's name."""
        graph_name = getattr(graph, "name", None)
        owner = "agent" if graph_name in (None, "LangGraph") else _segment(graph_name)
        self.agents.add(owner)
        for node_name, node in dict(getattr(graph, "nodes", {}) or {}).items():
            if str(node_name).startswith("__"):
                continue
            self.walk(getattr(node, "bound", None), (*path, _segment(node_name)), owner=owner)

    def _function(self, func: Any, path: tuple[str, ...], owner: str, depth: int) -> None:
        """Objects a step function closes over (and, for user code, the globals it names)."""
        if func is None or depth > _MAX_FUNCTION_DEPTH:
            return
        if isinstance(func, functools.partial):
            for value in (*func.args, *func.keywords.values()):
                self._reference(value, "arg", path, owner, depth)
            func = func.func
        func = inspect.unwrap(func) if callable(func) else func
        owner_obj = None
        if inspect.ismethod(func):
            owner_obj, func = func.__self__, func.__func__
        code = getattr(func, "__code__", None)
        if code is None or id(func) in self.seen:
            return
        self.seen.add(id(func))
        module = getattr(func, "__module__", "") or ""
        user_code = not module.startswith(_LIBRARY_PREFIXES)
        if owner_obj is not None and user_code and hasattr(owner_obj, "__dict__"):
            # a method: the attributes it reads (``self.chain``)
            attributes = vars(owner_obj)
            for var in _global_names(code):
                if var in attributes:
                    self._reference(attributes[var], var, path, owner, depth)
        for var, cell in zip(
            code.co_freevars, getattr(func, "__closure__", None) or (), strict=False
        ):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            self._reference(value, var, path, owner, depth)
        if not user_code:
            return
        namespace = getattr(func, "__globals__", {})
        for var in _global_names(code):
            if var in namespace:
                self._reference(namespace[var], var, path, owner, depth)

    def _reference(
        self, value: Any, var: str, path: tuple[str, ...], owner: str, depth: int
    ) -> None:
        for item in _members(value):
            if isinstance(item, (BasePromptTemplate, BaseMessage)):
                self.walk(item, path, label=var, owner=owner)  # the variable names the prompt
            elif isinstance(item, Runnable):
                self.walk(item, (*path, _segment(var)), owner=owner)
            elif inspect.isfunction(item) or isinstance(item, functools.partial):
                self._function(item, path, owner, depth + 1)

    # -- trainables -------------------------------------------------------------------------

    def _prompt(self, prompt: BasePromptTemplate, path: tuple[str, ...], label: str | None) -> None:
        own = getattr(prompt, "name", None)
        label = _segment(own if isinstance(own, str) and own else label or "prompt")
        stamp = object_stamp(prompt)
        if stamp is not None:
            self.found.labels[stamp] = label
        if isinstance(prompt, ChatPromptTemplate):
            self._chat_prompt(prompt, path, label, stamp)
        elif isinstance(getattr(prompt, "template", None), str):
            variables = ", ".join("{" + v + "}" for v in prompt.input_variables)

            def make(name: str, where: str) -> Parameter:
                return template_parameter(
                    prompt,
                    name=name,
                    description=f"Prompt template{where}: filled with {variables or 'no variables'} "
                    "on every run; the result is what the language model reads.",
                )

            self._add((label, "template"), path, make, self._link_stamp(stamp, "template"))
        else:
            logger.debug("no trainable text found in %s", type(prompt).__name__)

    def _chat_prompt(
        self, chat: ChatPromptTemplate, path: tuple[str, ...], label: str, stamp: str | None
    ) -> None:
        roles = [_role(m) for m in chat.messages]
        repeated = {r for r in roles if r is not None and roles.count(r) > 1}
        for i, (message, role) in enumerate(zip(chat.messages, roles, strict=True)):
            if role is None:
                continue
            arg = f"{role}[{i}]" if role in repeated else role
            if isinstance(message, BaseMessage):
                make = _literal_maker(message, chat, role)
            else:
                inner = message.prompt
                if not isinstance(getattr(inner, "template", None), str):
                    continue
                make = _template_maker(inner, chat, role)
            self._add((label, _segment(arg)), path, make, self._link_stamp(stamp, arg), chat)

    def _system_message(
        self, message: BaseMessage, path: tuple[str, ...], label: str | None, owner: str | None
    ) -> None:
        if message.type != "system" or not isinstance(message.content, str):
            return
        var = label or "system_message"
        base = (owner or "system", "system_prompt") if var in _SYSTEM_VARS else (_segment(var),)
        if owner == "agent":
            who = "the agent"
        elif owner in self.agents:
            who = f"the agent '{owner}'"
        else:
            who = f"the step '{owner}'" if owner else "this step"

        def make(name: str, where: str) -> Parameter:
            return message_parameter(
                message,
                name=name,
                description=f"System prompt of {who}: sent as the first message of every "
                "model call.",
            )

        self._add(base, path, make, self.found.by_content.append)

    def _tool(self, tool: BaseTool) -> None:
        object_stamp(tool)
        self._schemas(tool.name).add_tool(tool)
        # a tool whose function calls a chain: that chain's prompts are trainable too
        for func in (getattr(tool, "func", None), getattr(tool, "coroutine", None)):
            self._function(func, (), _segment(tool.name), 0)

    def _bound_tools(self, schemas: Any) -> None:
        """Tools a model was bound with (``bind_tools`` keeps converted copies)."""
        for schema in schemas if isinstance(schemas, (list, tuple)) else ():
            if isinstance(schema, BaseTool):
                self.walk(schema, ())
                continue
            held = schema_holder(schema)
            if held is not None and isinstance(held[1].get("description"), str):
                self._schemas(held[0]).add_schema(held[1])

    def _schemas(self, name: str) -> ToolSchemas:
        if name not in self.tools:
            self.tools[name] = ToolSchemas(name)

            def make(pname: str, where: str, name: str = name) -> Parameter:
                return tool_parameter(
                    self.tools[name],
                    name=pname,
                    description=f"Description of the tool '{name}': the model reads it to decide "
                    "when to call the tool and with which arguments.",
                )

            def link(param: Parameter, name: str = name) -> None:
                self.found.tools[name] = param

            self._add(("tool", _segment(name)), (), make, link)
        return self.tools[name]

    # -- naming -----------------------------------------------------------------------------

    def _add(
        self, base: tuple[str, ...], path: tuple[str, ...], make: Any, link: Any, group: Any = None
    ) -> None:
        self.candidates.append(
            _Candidate(
                base, path, make, link, id(group) if group is not None else len(self.candidates) + 1
            )
        )

    def _link_stamp(self, stamp: str | None, arg: str) -> Callable[[Parameter], None]:
        def link(param: Parameter) -> None:
            if stamp is not None:
                self.found.by_stamp.setdefault(stamp, []).append((arg, param))

        return link

    def finish(self) -> Discovered:
        names = unique_names([(c.base, c.path, c.group) for c in self.candidates])
        for cand, name in zip(self.candidates, names, strict=True):
            where = f" (at {'/'.join(cand.path)})" if cand.path else ""
            try:
                param = cand.make(name, where)
            except Exception as exc:  # e.g. a template that is invalid already
                logger.warning("skipping trainable %s: %s", name, exc)
                continue
            cand.link(param)
            self.found.parameters.append(param)
        return self.found


def unique_names(items: list[tuple[tuple[str, ...], tuple[str, ...], int]]) -> list[str]:
    """For each ``(label, path, group)``: the label, prefixed by the path segments that tell it
    apart from same-labelled ones (``prompt.system``, ``step2.prompt.system``,
    ``brief.prompt.system``); segments all colliders share are skipped. Parameters of one
    object (one ``group``) get the same prefix. Names are cut to 100 characters; names still
    equal are numbered (``_2``)."""
    chosen: list[set[int]] = [set() for _ in items]  # positions from the end of the path

    def name(i: int) -> str:
        base, path, _ = items[i]
        prefix = tuple(path[-k] for k in sorted(chosen[i], reverse=True))
        return ".".join((*prefix, *base))

    while True:
        groups: dict[str, list[int]] = {}
        for i in range(len(items)):
            groups.setdefault(name(i), []).append(i)
        grew = False
        for members in groups.values():
            if len(members) < 2:
                continue
            longest = max(len(items[i][1]) for i in members)
            for k in range(1, longest + 1):
                segments = {items[i][1][-k] if len(items[i][1]) >= k else None for i in members}
                if len(segments) > 1:
                    for i in members:
                        if len(items[i][1]) >= k and k not in chosen[i]:
                            chosen[i].add(k)
                            grew = True
                    break
        by_object: dict[int, set[int]] = {}
        for i, (_, _, group) in enumerate(items):
            by_object.setdefault(group, set()).update(chosen[i])
        for i, (_, path, group) in enumerate(items):
            extra = {k for k in by_object[group] if k <= len(path)} - chosen[i]
            if extra:
                chosen[i] |= extra
                grew = True
        if not grew:
            break
    # cut long names, then number the ones still equal (cutting can make two equal); a
    # number never takes a name another parameter already has
    capped = [_cap(name(i)) for i in range(len(items))]
    taken = set(capped)
    used: set[str] = set()
    out = []
    for n in capped:
        if n in used:
            k = 2
            while f"{n}_{k}" in taken:
                k += 1
            n = f"{n}_{k}"
            taken.add(n)
        used.add(n)
        out.append(n)
    return out


def _role(message: Any) -> str | None:
    if isinstance(message, MessagesPlaceholder):
        return None
    if isinstance(message, BaseMessage):
        return "system" if message.type == "system" and isinstance(message.content, str) else None
    for cls, role in _ROLES:
        if isinstance(message, cls):
            return role
    if isinstance(message, ChatMessagePromptTemplate):
        return _segment(message.role)
    return None


def _template_maker(
    inner: Any, chat: ChatPromptTemplate, role: str
) -> Callable[[str, str], Parameter]:
    variables = ", ".join("{" + v + "}" for v in inner.input_variables) or "no variables"

    def make(name: str, where: str) -> Parameter:
        return template_parameter(
            inner,
            top=chat,
            name=name,
            description=f"The {role} message template of the chat prompt{where}: filled with "
            f"{variables} on every run and sent to the model as the {role} message.",
        )

    return make


def _literal_maker(
    message: BaseMessage, chat: ChatPromptTemplate, role: str
) -> Callable[[str, str], Parameter]:
    def make(name: str, where: str) -> Parameter:
        return message_parameter(
            message,
            top=chat,
            name=name,
            description=f"The fixed {role} message of the chat prompt{where}, sent to the model as is.",
        )

    return make


def _members(value: Any) -> Iterable[Any]:
    """``value`` itself, or the items of a list/tuple/dict (one level)."""
    if isinstance(value, (list, tuple)):
        return value
    if isinstance(value, dict):
        return value.values()
    return (value,)


def _global_names(code: Any) -> list[str]:
    """Global and attribute names used by a code object and the functions and lambdas defined
    inside it."""
    names: list[str] = []
    stack = [code]
    while stack:
        current = stack.pop()
        names.extend(current.co_names)
        stack.extend(c for c in current.co_consts if inspect.iscode(c))
    return list(dict.fromkeys(names))


def _is_graph(obj: Any) -> bool:
    """A compiled LangGraph graph (checked by duck type: langgraph is optional)."""
    return isinstance(getattr(obj, "nodes", None), dict) and type(obj).__module__.startswith(
        "langgraph"
    )


def _is_callable_runnable(obj: Any) -> bool:
    """langgraph's ``RunnableCallable`` (node functions), checked by duck type."""
    return callable(getattr(obj, "func", None)) or callable(getattr(obj, "afunc", None))


def discover(targets: Iterable[Any]) -> Discovered:
    """Walk ``targets`` (runnables, tools, prompts, messages) and return their parameters."""
    walker = _Walker()
    for target in targets:
        walker.walk(target, ())
    return walker.finish()
