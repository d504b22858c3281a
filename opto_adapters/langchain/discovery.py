"""Discovery: walk a live runnable and create one bound Parameter per trainable text.

Trainables: every message template of a ``ChatPromptTemplate``, a ``PromptTemplate``'s
template, a few-shot prompt's prefix, suffix, example template and examples, a tool's
description (also the copies ``bind_tools`` made) and the system prompt of an agent
(``create_agent``, ``create_react_agent``) or of any function step that holds a
``SystemMessage``.

Callbacks carry no object identity, so the objects whose runs need their parameters (prompts,
models, retrievers, tools) get an id stamped into their ``metadata``; LangChain merges that
metadata into the object's own run. Names are readable and stable: the object's label
(``prompt.system``, ``tool.search``, ``agent.system_prompt``), prefixed with its position in
the chain (``step2.prompt.system``) only as far as needed to be unique. Descriptions say what
the text is and where it is used, in the words of the chain ("step 2", "the node 'model'"),
never internal attribute paths.
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
    FewShotChatMessagePromptTemplate,
    FewShotPromptTemplate,
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

from .. import rules
from ..trace import Parameter
from .writeback import (
    ToolSchemas,
    examples_parameter,
    fewshot_problem,
    fewshot_text_parameter,
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
_LIBRARY_PREFIXES = ("langchain", "langgraph", "langsmith", "pydantic", "opto_adapters", "openai")
_MAX_FUNCTION_DEPTH = 3  # hops through user functions (closures, globals, attributes)
_MAX_LIBRARY_DEPTH = 8  # hops through library closures (agent factories nest handlers)
_SYSTEM_VARS = {"system_message", "system_prompt", "system", "prompt"}
_PROMPT_STEP = "Prompt"  # langgraph's name for create_react_agent's prompt step

Make = Callable[[str], Parameter]


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


_segment = rules.name_part


@dataclass(frozen=True)
class _At:
    """Where an object sits, in the words of the chain: ``("step 2", "the 'context'
    branch")``, outermost first. ``anchor`` is the last place a user would recognize (the
    top, a graph node, a tool, one of their functions): positions found inside library code
    (a wrapper's own sequence) are dropped when the walk leaves it through a closure."""

    phrases: tuple[str, ...] = ()
    anchor: tuple[str, ...] = ()

    def then(self, phrase: str) -> _At:
        return _At((*self.phrases, phrase), self.anchor)

    def anchored(self, phrase: str | None = None) -> _At:
        phrases = (*self.phrases, phrase) if phrase else self.phrases
        return _At(phrases, phrases)

    def reset(self) -> _At:
        return _At(self.anchor, self.anchor)

    def where(self) -> str:
        """`` in step 1 in the 'context' branch`` (innermost first), or ``""`` at the top."""
        return " in " + " in ".join(reversed(self.phrases)) if self.phrases else ""


_TOP = _At()


@dataclass
class _Candidate:
    """A parameter before it has a name: its label, its position, how to make it."""

    base: tuple[str, ...]
    path: tuple[str, ...]
    make: Make
    link: Callable[[Parameter], None]
    group: int  # id of the object it belongs to: one prefix per object
    system: bool = False  # a literal system message (an agent's prompt function may return it)


class _Walker:
    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.candidates: list[_Candidate] = []
        self.tools: dict[str, ToolSchemas] = {}
        self.agents: set[str] = set()  # owners that are LangGraph graphs (agents)
        # user function id -> the candidates found by walking it (a range of self.candidates)
        self.produced: dict[int, tuple[int, int]] = {}
        self.found = Discovered()

    # -- the walk ---------------------------------------------------------------------------

    def walk(
        self,
        obj: Any,
        path: tuple[str, ...],
        at: _At = _TOP,
        label: str | None = None,
        owner: str | None = None,
    ) -> None:
        if obj is None or id(obj) in self.seen:
            return
        if not isinstance(obj, (Runnable, BaseMessage, BasePromptTemplate)):
            return
        self.seen.add(id(obj))
        if isinstance(obj, BasePromptTemplate):
            self._prompt(obj, path, at, label)
        elif isinstance(obj, BaseTool):
            self._tool(obj)
        elif isinstance(obj, BaseMessage):
            self._system_message(obj, path, label, owner)
        elif isinstance(obj, (BaseLanguageModel, BaseRetriever)):
            object_stamp(obj)
        elif isinstance(obj, RunnableSequence):
            for i, step in enumerate(obj.steps, 1):
                self.walk(step, (*path, f"step{i}"), at.then(f"step {i}"), owner=owner)
        elif isinstance(obj, RunnableParallel):
            for key, step in obj.steps__.items():
                self.walk(step, (*path, _segment(key)), at.then(f"the '{key}' branch"), owner=owner)
        elif isinstance(obj, RunnableAssign):
            self.walk(obj.mapper, path, at, owner=owner)
        elif isinstance(obj, RunnableBinding):
            self._bound_tools(obj.kwargs.get("tools"))
            self.walk(obj.bound, path, at, label, owner)
        elif isinstance(obj, RunnableWithFallbacks):
            self.walk(obj.runnable, path, at, label, owner)
            for i, fallback in enumerate(obj.fallbacks, 1):
                self.walk(fallback, (*path, f"fallback{i}"), at.then(f"fallback {i}"), owner=owner)
        elif isinstance(obj, RunnableBranch):
            for i, (condition, branch) in enumerate(obj.branches, 1):
                self.walk(
                    condition,
                    (*path, f"branch{i}", "condition"),
                    at.then(f"the condition of branch {i}"),
                    owner=owner,
                )
                self.walk(branch, (*path, f"branch{i}"), at.then(f"branch {i}"), owner=owner)
            self.walk(obj.default, (*path, "default"), at.then("the default branch"), owner=owner)
        elif _is_graph(obj):
            self._graph(obj, path, at)
        elif isinstance(getattr(obj, "tools_by_name", None), dict):  # langgraph ToolNode
            for tool in obj.tools_by_name.values():
                self.walk(tool, path, at, owner=owner)
        elif isinstance(obj, RunnableLambda) or _is_callable_runnable(obj):
            self._callable_step(obj, path, at, owner)
        else:
            self._fields(obj, path, at, owner)

    def _fields(self, obj: Any, path: tuple[str, ...], at: _At, owner: str | None) -> None:
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
                    self.walk(item, (*path, _segment(key)), at, owner=owner)

    def _graph(self, graph: Any, path: tuple[str, ...], at: _At) -> None:
        """A compiled LangGraph graph: walk each node's runnable under the node's name."""
        graph_name = getattr(graph, "name", None)
        owner = "agent" if graph_name in (None, "LangGraph") else _segment(graph_name)
        self.agents.add(owner)
        for node_name, node in dict(getattr(graph, "nodes", {}) or {}).items():
            if str(node_name).startswith("__"):
                continue
            self.walk(
                getattr(node, "bound", None),
                (*path, _segment(node_name)),
                at.anchored(f"the node '{node_name}'"),
                owner=owner,
            )

    def _callable_step(self, obj: Any, path: tuple[str, ...], at: _At, owner: str | None) -> None:
        """A function step (``RunnableLambda``, a LangGraph node function)."""
        name = _segment(getattr(obj, "name", None) or "function")
        funcs = (getattr(obj, "func", None), getattr(obj, "afunc", None))
        prompt_fn = _agent_prompt_function(obj)
        if prompt_fn is None:
            for func in funcs:
                self._function(func, path, owner or name, at, 0, 0)
            return
        # create_react_agent(prompt=<function>): what the function returns is the prompt
        for func in funcs:
            self._function(func, path, owner or "agent", at, 0, 0)
        if not self._adopt_prompt_function(prompt_fn, owner or "agent"):
            logger.warning(
                "create_react_agent(prompt=<function %s>): the system prompt is computed by that "
                "function on every call, so it cannot be trained or written back. Pass prompt= "
                "as a str or a SystemMessage, or have the function return a SystemMessage kept "
                "in a module-level variable or in its closure (discovery finds it there).",
                _function_name(prompt_fn),
            )

    def _adopt_prompt_function(self, func: Any, owner: str) -> bool:
        """``func`` builds an agent's prompt: the system messages it holds (found now or, through
        another closure, earlier) are that agent's system prompt. ``False`` if it holds nothing
        trainable."""
        start, end = self.produced.get(id(inspect.unwrap(func)), (0, 0))
        for cand in self.candidates[start:end]:
            if cand.system:
                cand.base = tuple(rules.system_prompt_name(owner).split("."))
        return end > start

    def _function(
        self, func: Any, path: tuple[str, ...], owner: str, at: _At, depth: int, library: int
    ) -> None:
        """Objects a step function closes over (and, for user code, the globals it names)."""
        start = len(self.candidates)
        walked = self._function_body(func, path, owner, at, depth, library)
        if walked is not None:
            self.produced[id(walked)] = (start, len(self.candidates))

    def _function_body(
        self, func: Any, path: tuple[str, ...], owner: str, at: _At, depth: int, library: int
    ) -> Any:
        """``_function``'s walk; returns the function object it walked (``None`` if none)."""
        if func is None or depth > _MAX_FUNCTION_DEPTH or library > _MAX_LIBRARY_DEPTH:
            return None
        if isinstance(func, functools.partial):
            for value in (*func.args, *func.keywords.values()):
                self._reference(value, "arg", path, owner, at, depth, library)
            func = func.func
        func = inspect.unwrap(func) if callable(func) else func
        owner_obj = None
        if inspect.ismethod(func):
            owner_obj, func = func.__self__, func.__func__
            if _is_middleware(owner_obj):
                self._middleware(owner_obj, path, owner, at)
                return None
        code = getattr(func, "__code__", None)
        if code is None or id(func) in self.seen:
            return None
        self.seen.add(id(func))
        module = getattr(func, "__module__", "") or ""
        user_code = not module.startswith(_LIBRARY_PREFIXES)
        if user_code:
            place = f"the function '{_function_name(func)}'"
            if not at.phrases or f"'{_function_name(func)}'" not in at.phrases[-1]:
                at = at.anchored(place)
            depth += 1
        else:  # positions inside library code mean nothing to the user
            at = at.reset()
            library += 1
        if owner_obj is not None and user_code and hasattr(owner_obj, "__dict__"):
            # a method: the attributes it reads (``self.chain``)
            attributes = vars(owner_obj)
            for var in _global_names(code):
                if var in attributes:
                    self._reference(attributes[var], var, path, owner, at, depth, library)
        for var, cell in zip(
            code.co_freevars, getattr(func, "__closure__", None) or (), strict=False
        ):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            self._reference(value, var, path, owner, at, depth, library)
        if user_code:
            namespace = getattr(func, "__globals__", {})
            for var in _global_names(code):
                if var in namespace:
                    self._reference(namespace[var], var, path, owner, at, depth, library)
        return func

    def _reference(
        self,
        value: Any,
        var: str,
        path: tuple[str, ...],
        owner: str,
        at: _At,
        depth: int,
        library: int,
    ) -> None:
        for item in _members(value):
            if isinstance(item, (BasePromptTemplate, BaseMessage)):
                self.walk(item, path, at, label=var, owner=owner)  # the variable names the prompt
            elif isinstance(item, Runnable):
                self.walk(item, (*path, _segment(var)), at, owner=owner)
            elif _is_middleware(item):
                self._middleware(item, path, owner, at)
            elif inspect.ismethod(item) and _is_middleware(item.__self__):
                self._middleware(item.__self__, path, owner, at)
            elif inspect.isfunction(item) or isinstance(item, functools.partial):
                self._function(item, path, owner, at, depth, library)

    def _middleware(self, middleware: Any, path: tuple[str, ...], owner: str, at: _At) -> None:
        """A ``create_agent`` middleware; a ``@dynamic_prompt`` one computes the system prompt
        with the user's function: what that function returns is the prompt."""
        if id(middleware) in self.seen:
            return
        self.seen.add(id(middleware))
        user_fn = _dynamic_prompt_function(middleware)
        if user_fn is None:
            return
        self._function(user_fn, path, owner, at, 0, 0)
        if self._adopt_prompt_function(user_fn, owner):
            return
        code = getattr(user_fn, "__code__", None)
        if code is not None and {"system_prompt", "system_message"} & set(code.co_names):
            # it builds on request.system_prompt: the agent's own prompt is what is trained
            logger.info(
                "create_agent(middleware=[@dynamic_prompt %s]) builds on the agent's system "
                "prompt: the agent's system_prompt is trained, the rest of the function's text "
                "is not",
                _function_name(user_fn),
            )
        else:
            logger.warning(
                "create_agent(middleware=[@dynamic_prompt %s]): the system prompt is computed by "
                "that function on every call, so it cannot be trained or written back. Pass "
                "system_prompt= as a str or a SystemMessage, or have the function return a "
                "SystemMessage kept in a module-level variable or in its closure (discovery "
                "finds it there).",
                _function_name(user_fn),
            )

    # -- trainables -------------------------------------------------------------------------

    def _prompt(
        self, prompt: BasePromptTemplate, path: tuple[str, ...], at: _At, label: str | None
    ) -> None:
        own = getattr(prompt, "name", None)
        label = _segment(own if isinstance(own, str) and own else label or "prompt")
        stamp = object_stamp(prompt)
        if stamp is not None:
            self.found.labels[stamp] = label
        if isinstance(prompt, ChatPromptTemplate):
            self._chat_prompt(prompt, path, at, label, stamp)
        elif isinstance(prompt, FewShotPromptTemplate):
            self._fewshot(prompt, path, at, label, stamp)
        elif isinstance(prompt, FewShotChatMessagePromptTemplate):
            self._fewshot_chat(prompt, path, at, label, stamp, group=prompt, tops=(), suffix="")
        elif isinstance(getattr(prompt, "template", None), str):
            variables = _braced(prompt.input_variables)

            def make(name: str) -> Parameter:
                return template_parameter(
                    prompt,
                    name=name,
                    description=f"The prompt template{at.where()}: filled with {variables} on "
                    "every run; the result is what the language model reads.",
                )

            self._add(
                tuple(rules.prompt_name("template", label).split(".")),
                path,
                make,
                self._link_stamp(stamp, "template"),
            )
        else:
            logger.debug("no trainable text found in %s", type(prompt).__name__)

    def _chat_prompt(
        self,
        chat: ChatPromptTemplate,
        path: tuple[str, ...],
        at: _At,
        label: str,
        stamp: str | None,
    ) -> None:
        few_shots = [m for m in chat.messages if isinstance(m, FewShotChatMessagePromptTemplate)]
        where = f"the chat prompt{at.where()}"
        makers = {i: (arg, make) for i, arg, make in _message_makers(chat, where, tops=(chat,))}
        for i, message in enumerate(chat.messages):  # in the order the model reads them
            if isinstance(message, FewShotChatMessagePromptTemplate):
                suffix = f"[{i}]" if len(few_shots) > 1 else ""
                self._fewshot_chat(
                    message, path, at, label, stamp, group=chat, tops=(chat,), suffix=suffix
                )
            elif i in makers:
                arg, make = makers[i]
                self._add((label, _segment(arg)), path, make, self._link_stamp(stamp, arg), chat)

    def _fewshot(
        self,
        fewshot: FewShotPromptTemplate,
        path: tuple[str, ...],
        at: _At,
        label: str,
        stamp: str | None,
    ) -> None:
        """``FewShotPromptTemplate``: prefix, suffix, the example template and the examples."""
        where = f"the few-shot prompt{at.where()}"
        fmt = fewshot.template_format
        roles = {
            "prefix": "the text before the examples",
            "suffix": "the text after the examples (where the input usually goes)",
        }
        for part, what in roles.items():
            try:
                variables = _braced(rules.template_variables(getattr(fewshot, part), fmt))
            except ValueError:
                variables = "its variables"

            def make(
                name: str, part: str = part, what: str = what, variables: str = variables
            ) -> Parameter:
                return fewshot_text_parameter(
                    fewshot,
                    part,
                    name=name,
                    description=f"The {part} of {where}: {what}, filled with {variables} on "
                    "every run.",
                )

            self._add((label, part), path, make, self._link_stamp(stamp, part), fewshot)
        example_prompt = fewshot.example_prompt
        keys = _braced(example_prompt.input_variables)
        if isinstance(getattr(example_prompt, "template", None), str):

            def make_template(name: str) -> Parameter:
                return template_parameter(
                    example_prompt,
                    tops=(fewshot,),
                    check=lambda value: fewshot_problem(fewshot, example_template=value),
                    name=name,
                    description=f"The template each example of {where} is written with: filled "
                    f"with {keys} from every example.",
                )

            self._add(
                (label, "example_prompt"),
                path,
                make_template,
                self._link_stamp(stamp, "example_prompt"),
                fewshot,
            )
        self._examples(fewshot, path, label, stamp, where, fewshot, tops=(), arg="examples")

    def _fewshot_chat(
        self,
        fewshot: FewShotChatMessagePromptTemplate,
        path: tuple[str, ...],
        at: _At,
        label: str,
        stamp: str | None,
        *,
        group: Any,
        tops: tuple[Any, ...],
        suffix: str,
    ) -> None:
        """``FewShotChatMessagePromptTemplate`` (alone, or one message of a chat prompt):
        the examples and the messages each example is written as."""
        if tops:  # a message of a chat prompt
            where = f"the few-shot block of the chat prompt{at.where()}"
        else:
            where = f"the few-shot chat prompt{at.where()}"
        holders = (fewshot, *tops)
        example_prompt = fewshot.example_prompt
        arg = f"example_prompt{suffix}"
        if isinstance(example_prompt, ChatPromptTemplate):
            for _, role, make in _message_makers(
                example_prompt, where, (example_prompt, *holders), example=True
            ):
                self._add(
                    (label, _segment(arg), _segment(role)),
                    path,
                    make,
                    self._link_stamp(stamp, f"{arg}.{role}"),
                    group,
                )
        else:
            role = _role(example_prompt)
            inner = getattr(example_prompt, "prompt", None)
            if role is not None and isinstance(getattr(inner, "template", None), str):
                make = _template_maker(inner, where, role, holders, example=True)
                self._add((label, _segment(arg)), path, make, self._link_stamp(stamp, arg), group)
        self._examples(
            fewshot, path, label, stamp, where, group, tops=tops, arg=f"examples{suffix}"
        )

    def _examples(
        self,
        owner: Any,
        path: tuple[str, ...],
        label: str,
        stamp: str | None,
        where: str,
        group: Any,
        *,
        tops: tuple[Any, ...],
        arg: str,
    ) -> None:
        if owner.examples is None:
            logger.info(
                "the examples of %s are chosen by an example selector (%s): they are not "
                "trained; the example template and the texts around them are",
                where,
                type(owner.example_selector).__name__,
            )
            return
        keys = ", ".join(sorted(owner.example_prompt.input_variables)) or "no keys"

        def make(name: str) -> Parameter:
            return examples_parameter(
                owner,
                tops=tops,
                name=name,
                description=f"The examples shown in {where}: a list of objects with the keys "
                f"{keys}, each written with the example template, in order.",
            )

        self._add((label, _segment(arg)), path, make, self._link_stamp(stamp, arg), group)

    def _system_message(
        self, message: BaseMessage, path: tuple[str, ...], label: str | None, owner: str | None
    ) -> None:
        if message.type != "system" or not isinstance(message.content, str):
            return
        var = label or "system_message"
        if var.lstrip("_") in _SYSTEM_VARS:
            base = tuple(rules.system_prompt_name(owner or "system").split("."))
        else:
            base = (_segment(var),)
        if owner == "agent":
            who = "the agent"
        elif owner in self.agents:
            who = f"the agent '{owner}'"
        else:
            who = f"the step '{owner}'" if owner else "this step"

        def make(name: str) -> Parameter:
            return message_parameter(
                message, name=name, description=rules.describe_system_prompt(who)
            )

        self._add(base, path, make, self.found.by_content.append, system=True)

    def _tool(self, tool: BaseTool) -> None:
        object_stamp(tool)
        self._schemas(tool.name).add_tool(tool)
        # a tool whose function calls a chain: that chain's prompts are trainable too
        at = _TOP.anchored(f"the tool '{tool.name}'")
        for func in (getattr(tool, "func", None), getattr(tool, "coroutine", None)):
            self._function(func, (), _segment(tool.name), at, 0, 0)

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

            def make(pname: str, name: str = name) -> Parameter:
                return tool_parameter(
                    self.tools[name], name=pname, description=rules.describe_tool(name)
                )

            def link(param: Parameter, name: str = name) -> None:
                self.found.tools[name] = param

            self._add(tuple(rules.tool_name(name).split(".")), (), make, link)
        return self.tools[name]

    # -- naming -----------------------------------------------------------------------------

    def _add(
        self,
        base: tuple[str, ...],
        path: tuple[str, ...],
        make: Make,
        link: Callable[[Parameter], None],
        group: Any = None,
        *,
        system: bool = False,
    ) -> None:
        number = id(group) if group is not None else len(self.candidates) + 1
        self.candidates.append(_Candidate(base, path, make, link, number, system))

    def _link_stamp(self, stamp: str | None, arg: str) -> Callable[[Parameter], None]:
        def link(param: Parameter) -> None:
            if stamp is not None:
                self.found.by_stamp.setdefault(stamp, []).append((arg, param))

        return link

    def finish(self) -> Discovered:
        names = unique_names([(c.base, c.path, c.group) for c in self.candidates])
        for cand, name in zip(self.candidates, names, strict=True):
            try:
                param = cand.make(name)
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
    capped = [rules.join_name(name(i)) for i in range(len(items))]
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


def _message_makers(
    chat: ChatPromptTemplate, where: str, tops: tuple[Any, ...], *, example: bool = False
) -> list[tuple[int, str, Make]]:
    """``(position, argument name, maker)`` for each trainable message of ``chat``: argument
    ``system``, ``human``..., or ``human[3]`` when a role repeats (its position). ``example``:
    ``chat`` is the template every few-shot example is written with."""
    roles = [_role(m) for m in chat.messages]
    repeated = {r for r in roles if r is not None and roles.count(r) > 1}
    out: list[tuple[int, str, Make]] = []
    for i, (message, role) in enumerate(zip(chat.messages, roles, strict=True)):
        if role is None:
            continue
        arg = f"{role}[{i}]" if role in repeated else role
        which = f"{role} message {i + 1} of {len(chat.messages)}" if role in repeated else None
        if isinstance(message, BaseMessage):
            out.append((i, arg, _literal_maker(message, where, which or f"{role} message", tops)))
            continue
        inner = message.prompt
        if isinstance(getattr(inner, "template", None), str):
            out.append((i, arg, _template_maker(inner, where, role, tops, which, example)))
    return out


def _template_maker(
    inner: Any,
    where: str,
    role: str,
    tops: tuple[Any, ...],
    which: str | None = None,
    example: bool = False,
) -> Make:
    which = which or f"{role} message"
    if example:
        text = (
            f"The {which} that each example of {where} is written as: filled with "
            f"{_braced(inner.input_variables)} from every example."
        )
    elif inner.input_variables:
        text = (
            f"The {which} template of {where}: filled with {_braced(inner.input_variables)} on "
            f"every run and sent to the model as the {role} message."
        )
    else:
        text = (
            f"The {which} template of {where}: it has no variables and is sent to the model as "
            f"the {role} message on every run."
        )

    def make(name: str) -> Parameter:
        return template_parameter(inner, tops=tops, name=name, description=text)

    return make


def _literal_maker(message: BaseMessage, where: str, which: str, tops: tuple[Any, ...]) -> Make:
    def make(name: str) -> Parameter:
        return message_parameter(
            message,
            top=tops[-1] if tops else None,
            name=name,
            description=f"The fixed {which} of {where}, sent to the model as is.",
        )

    return make


def _braced(names: Iterable[str]) -> str:
    return ", ".join("{" + v + "}" for v in sorted(names)) or "no variables"


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


def _function_name(func: Any) -> str:
    return getattr(func, "__name__", None) or type(func).__name__


def _is_user_function(func: Any) -> bool:
    module = getattr(inspect.unwrap(func), "__module__", "") or ""
    return callable(func) and not module.startswith(_LIBRARY_PREFIXES)


def _is_graph(obj: Any) -> bool:
    """A compiled LangGraph graph (checked by duck type: langgraph is optional)."""
    return isinstance(getattr(obj, "nodes", None), dict) and type(obj).__module__.startswith(
        "langgraph"
    )


def _is_callable_runnable(obj: Any) -> bool:
    """langgraph's ``RunnableCallable`` (node functions), checked by duck type."""
    return callable(getattr(obj, "func", None)) or callable(getattr(obj, "afunc", None))


def _agent_prompt_function(obj: Any) -> Any:
    """The user's function behind ``create_react_agent(prompt=<function>)``: langgraph wraps
    it in a step named ``Prompt`` (a str or ``SystemMessage`` prompt is a library lambda)."""
    if getattr(obj, "name", None) != _PROMPT_STEP or not type(obj).__module__.startswith(
        "langgraph"
    ):
        return None
    for func in (getattr(obj, "func", None), getattr(obj, "afunc", None)):
        if func is not None and _is_user_function(func):
            return func
    return None


def _is_middleware(obj: Any) -> bool:
    """A ``langchain.agents`` middleware (by duck type: the class or a base is named
    ``AgentMiddleware`` in ``langchain.agents``)."""
    return any(
        k.__name__ == "AgentMiddleware" and k.__module__.startswith("langchain.agents")
        for k in type(obj).__mro__
    )


def _dynamic_prompt_function(middleware: Any) -> Any:
    """The user's function of a ``@dynamic_prompt`` middleware, or ``None``: the decorator
    builds a class whose ``wrap_model_call`` closes over it as ``func``."""
    for attr in ("wrap_model_call", "awrap_model_call"):
        method = type(middleware).__dict__.get(attr)
        code = getattr(method, "__code__", None)
        if code is None or not getattr(method, "__qualname__", "").startswith("dynamic_prompt."):
            continue
        cells = dict(zip(code.co_freevars, method.__closure__ or (), strict=False))
        cell = cells.get("func")
        try:
            func = cell.cell_contents if cell is not None else None
        except ValueError:
            continue
        if func is not None and _is_user_function(func):
            return func
    return None


def discover(targets: Iterable[Any]) -> Discovered:
    """Walk ``targets`` (runnables, tools, prompts, messages) and return their parameters."""
    walker = _Walker()
    for target in targets:
        walker.walk(target, ())
    return walker.finish()
