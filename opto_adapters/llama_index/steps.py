"""Find the prompts a custom ``Workflow``'s steps read, and where each one is held.

A step such as ``await self.llm.acomplete(QA.format(question=ev.q))`` hands the LLM only
formatted text: the template itself never reaches LlamaIndex's instrumentation. So the
template is found where the step's code reads it: the workflow instance's attributes, its
class attributes, the module globals and closure variables its step functions (and the
helper functions and methods they call, a few levels deep) name. Prompt templates
(``PromptTemplate``, ``ChatPromptTemplate``, ``RichPromptTemplate``, selectors) are found by
type, plain strings only when their name says they are a prompt (``SYSTEM_PROMPT``,
``self.instructions``). One level of ``dict``/``list`` is looked into.

Workflows shipped with LlamaIndex (agents, ``AgentWorkflow``) are not scanned: their steps
live in the framework, and their prompts are found by ``discovery`` itself.
"""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.chat_engine.types import BaseChatEngine
from llama_index.core.prompts.base import BasePromptTemplate
from llama_index.core.tools.types import BaseTool

from .recorder import is_workflow

__all__ = ["Held", "StepScan", "is_framework", "scan_workflow"]

# the methods that call an LLM; a step naming one of them (``llm.acomplete``) calls an LLM
LLM_METHODS = frozenset(
    {
        "complete", "acomplete", "stream_complete", "astream_complete",
        "chat", "achat", "stream_chat", "astream_chat",
        "predict", "apredict", "stream", "astream",
        "structured_predict", "astructured_predict", "predict_and_call", "apredict_and_call",
    }
)  # fmt: skip
# a string is a prompt when its name says so
_PROMPT_NAME = re.compile(r"prompt|instruction|system", re.IGNORECASE)
# how far helper calls are followed from a step: step -> helper -> helper -> helper
_MAX_DEPTH = 3
_COMPONENTS = (BaseQueryEngine, BaseRetriever, BaseChatEngine, BaseTool)
_FRAMEWORK_MODULES = ("llama_index.", "workflows.", "pydantic.", "typing", "builtins")


def is_framework(obj: Any) -> bool:
    """Whether ``obj`` (a function or class) is defined by LlamaIndex or a library below it."""
    module = getattr(obj, "__module__", None) or ""
    return module.startswith(_FRAMEWORK_MODULES) or module in ("workflows", "llama_index")


@dataclass(eq=False)
class Held:
    """One prompt a step reads: its name in the code, the object, where it is held.

    ``places`` are ``(get, put)`` pairs: reading the object at each place, binding a new
    object there (a template held in two places has two).
    """

    name: str
    value: Any
    where: str
    places: list[tuple[Callable[[], Any], Callable[[Any], None]]] = field(default_factory=list)

    def current(self) -> Any:
        """The object now held at the first place (the user may have rebound it)."""
        return self.places[0][0]()

    def put(self, value: Any) -> None:
        """Bind ``value`` at every place."""
        for _, put in self.places:
            put(value)


@dataclass
class StepScan:
    """What the scan of one workflow found."""

    steps: list[str]
    held: list[Held]
    calls_llm: bool
    functions: list[str]  # every function read, for the warning
    #: query engines, retrievers, chat engines, tools and workflows the steps use, by the
    #: name the code reads them under: their own prompts are discovered as theirs
    components: list[tuple[str, Any]] = field(default_factory=list)


def scan_workflow(workflow: Any, *, attributes: bool = True) -> StepScan | None:
    """The prompts the user-written steps of ``workflow`` read; ``None`` without such steps.

    ``attributes=False`` skips the instance and class attributes (an agent subclass: its
    fields, such as ``system_prompt``, are discovered as the agent's own).
    """
    steps = _user_steps(workflow)
    if not steps:
        return None
    scan = _Scan(workflow)
    if attributes:
        scan.attributes()
    for fn in steps.values():
        scan.function(fn, 0)
    return StepScan(
        steps=sorted(steps),
        held=list(scan.held.values()),
        calls_llm=scan.calls_llm,
        functions=scan.function_names,
        components=list(scan.components.values()),
    )


def _user_steps(workflow: Any) -> dict[str, Callable[..., Any]]:
    try:
        steps = type(workflow)._get_steps_from_class()
    except Exception:  # not a workflow class we know how to read
        return {}
    out = {}
    for name, fn in steps.items():
        fn = inspect.unwrap(fn)
        if isinstance(fn, types.FunctionType) and not is_framework(fn):
            out[name] = fn
    return out


def _is_prompt(name: str, value: Any) -> bool:
    if isinstance(value, BasePromptTemplate):
        return True
    return isinstance(value, str) and bool(_PROMPT_NAME.search(name))


def _code_names(code: types.CodeType) -> Iterator[str]:
    """Every global and attribute name ``code`` and the code nested in it read."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


class _Scan:
    def __init__(self, workflow: Any) -> None:
        self.workflow = workflow
        self.held: dict[Any, Held] = {}  # key: id of a template, or (place) for a string
        self.calls_llm = False
        self.seen_functions: set[int] = set()
        self.function_names: list[str] = []
        self.components: dict[int, tuple[str, Any]] = {}

    def consider(
        self,
        name: str,
        value: Any,
        where: str,
        get: Callable[[], Any],
        put: Callable[[Any], None],
        place: tuple[Any, ...],
    ) -> None:
        if isinstance(value, BaseLLM):
            self.calls_llm = True
            return
        if value is not self.workflow and (isinstance(value, _COMPONENTS) or is_workflow(value)):
            self.components.setdefault(id(value), (name, value))
            return
        if isinstance(value, dict):
            for key, item in list(value.items())[:50]:
                if (
                    _is_prompt(str(key), item)
                    or (isinstance(item, str) and _PROMPT_NAME.search(name))
                    or isinstance(item, _COMPONENTS)
                ):
                    self.consider(
                        f"{name}[{key}]",
                        item,
                        where,
                        lambda d=value, k=key: d[k],
                        lambda v, d=value, k=key: d.__setitem__(k, v),
                        (*place, key),
                    )
            return
        if isinstance(value, list):
            for i, item in enumerate(value[:50]):
                if isinstance(item, (BasePromptTemplate, *_COMPONENTS)) or (
                    isinstance(item, str) and _PROMPT_NAME.search(name)
                ):
                    self.consider(
                        f"{name}[{i}]",
                        item,
                        where,
                        lambda seq=value, i=i: seq[i],
                        lambda v, seq=value, i=i: seq.__setitem__(i, v),
                        (*place, i),
                    )
            return
        if not _is_prompt(name, value):
            return
        key: Any = id(value) if isinstance(value, BasePromptTemplate) else place
        held = self.held.get(key)
        if held is None:
            held = self.held[key] = Held(name, value, where)
        if all(p[0] is not get for p in held.places):
            held.places.append((get, put))

    # -- where prompts are held --------------------------------------------------------------

    def attributes(self) -> None:
        wf = self.workflow
        try:
            items = list(vars(wf).items())
        except TypeError:
            items = []
        for name, value in items:
            if not name.startswith("__"):
                self.consider(
                    name,
                    value,
                    f"attribute {name!r} of the workflow",
                    lambda n=name: getattr(wf, n),
                    lambda v, n=name: setattr(wf, n, v),
                    ("attr", id(wf), name),
                )
        for klass in type(wf).__mro__:
            if is_framework(klass) or klass is object:
                continue
            for name, value in list(vars(klass).items()):
                if name.startswith("__") or isinstance(
                    value, (types.FunctionType, classmethod, staticmethod, property)
                ):
                    continue
                if name in vars(wf):  # shadowed by the instance attribute
                    continue
                self.consider(
                    name,
                    value,
                    f"class attribute {klass.__name__}.{name}",
                    lambda k=klass, n=name: getattr(k, n),
                    lambda v, k=klass, n=name: setattr(k, n, v),
                    ("class", id(klass), name),
                )

    def function(self, fn: Any, depth: int) -> None:
        fn = inspect.unwrap(fn)
        if not isinstance(fn, types.FunctionType) or id(fn) in self.seen_functions:
            return
        if is_framework(fn):
            return
        self.seen_functions.add(id(fn))
        self.function_names.append(fn.__qualname__)
        code = fn.__code__
        names = set(_code_names(code))
        if names & LLM_METHODS:
            self.calls_llm = True
        module_globals = fn.__globals__
        module = module_globals.get("__name__", "?")
        for name in sorted(names):
            if name in module_globals:
                value = module_globals[name]
                if isinstance(value, types.FunctionType):
                    if depth < _MAX_DEPTH:
                        self.function(value, depth + 1)
                    continue
                self.consider(
                    name,
                    value,
                    f"global {name!r} of module {module}",
                    lambda g=module_globals, n=name: g[n],
                    lambda v, g=module_globals, n=name: g.__setitem__(n, v),
                    ("global", id(module_globals), name),
                )
            elif depth < _MAX_DEPTH:  # a helper method called on self
                method = inspect.getattr_static(type(self.workflow), name, None)
                if isinstance(method, (staticmethod, classmethod)):
                    method = method.__func__
                if isinstance(method, types.FunctionType) and not hasattr(method, "_step_config"):
                    self.function(method, depth + 1)
        for var, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if isinstance(value, types.FunctionType):
                if depth < _MAX_DEPTH:
                    self.function(value, depth + 1)
                continue
            self.consider(
                var,
                value,
                f"closure variable {var!r} of {fn.__qualname__}",
                lambda c=cell: c.cell_contents,
                lambda v, c=cell: setattr(c, "cell_contents", v),
                ("cell", id(cell)),
            )
