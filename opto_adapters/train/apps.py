"""Turn whatever the user trains into a tracer: ``tracer.parameters`` and ``tracer.run(input)``.

``as_tracer`` picks the adapter: a tracer is used as is, a LangChain runnable gets
``opto_adapters.langchain.OptoTracer``, a LlamaIndex object gets
``opto_adapters.llama_index.OptoTracer`` and a plain traced Python callable gets ``PythonApp``.
The frameworks are only looked at when their objects are passed in, so importing this module
imports neither.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
import traceback
import types
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

from ..trace import ExceptionNode, ExecutionError, Graph, Module, Node, Op, Parameter
from ..trace.bundle import Bundle
from ..trace.tracer import TracedRun, TracerBase
from .errors import AppError

__all__ = ["AppTracer", "PythonApp", "adopt_parameters", "as_tracer", "binding_target", "no_parameters_error"]

_APP_OP = Op("app", "The app as a whole (it raised outside any traced operation).")


@runtime_checkable
class AppTracer(Protocol):
    """What the trainer needs from an app: its trainable parameters and one traced run."""

    @property
    def parameters(self) -> list[Parameter]: ...

    def run(self, input: Any) -> TracedRun: ...


class PythonApp(TracerBase):
    """A plain traced Python callable as a tracer.

    ``fn(input)`` is called with one argument and should return a ``Node`` (the output of a
    ``@bundle`` call, so feedback can reach the parameters); an ``ExecutionError`` it raises
    becomes a run whose output is the traced ``ExceptionNode``. Parameters come from
    ``parameters=``, else from ``fn.parameters()`` (a ``Module``), else from a trainable
    bundle, else from the trainable nodes a first run reaches (``discover``).
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        parameters: Iterable[Parameter] | None = None,
        *,
        max_graphs: int = 100,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"PythonApp needs a callable, got {type(fn).__name__}: {fn!r:.80}")
        if parameters is None:
            parameters = _discover(fn)
        super().__init__(list(parameters), max_graphs=max_graphs)
        self.fn = fn

    def run(self, input: Any) -> TracedRun:
        """Call the app once; never raises the app's exception (see ``TracedRun``)."""
        try:
            result = self.fn(input)
            if inspect.isawaitable(result):  # an async app called from sync code
                result = _run_awaitable(result)
        except Exception as exc:
            return self._traced(None, exc)
        return self._traced(result, None)

    async def arun(self, input: Any) -> TracedRun:
        """``run`` on the running event loop: an ``async def`` app (or an async ``@bundle``) is
        awaited there; a sync one runs in a worker thread, so the loop is never blocked."""
        if not _is_async(self.fn):
            return await asyncio.to_thread(self.run, input)
        try:
            result = self.fn(input)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            return self._traced(None, exc)
        return self._traced(result, None)

    def _traced(self, result: Any, exc: Exception | None) -> TracedRun:
        if isinstance(exc, ExecutionError):
            graph = Graph(exc.node)
            error: BaseException | None = exc.exception
            output = None
        elif exc is not None:  # raised outside any bundle: traced as one opaque step
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            graph = Graph(ExceptionNode(exc, name="app_error", op=_APP_OP, traceback=text))
            error, output = exc, None
        else:
            out = result if isinstance(result, Node) else Node(result, name="output")
            graph, error, output = Graph(out), None, out.value
        self._record(uuid.uuid4().hex, graph)
        return TracedRun(output=output, graph=graph, error=error)

    def discover(self, input: Any) -> TracedRun:
        """Run once and adopt the trainable parameters the run's graph reaches."""
        traced = self.run(input)
        known = {id(p) for p in self._parameters}
        if traced.graph is not None:
            for p in traced.graph.parameters:
                if p.trainable and id(p) not in known:
                    self.add_parameter(p)
                    known.add(id(p))
        return traced

    def __repr__(self) -> str:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        return f"PythonApp({name}, parameters={[p.name for p in self._parameters]})"


def _is_async(fn: Any) -> bool:
    """Whether calling ``fn`` gives an awaitable: an ``async def`` function, an async
    ``@bundle``, an object whose ``__call__`` is one, or a ``Module`` with an async ``forward``."""
    if isinstance(fn, Bundle):
        return fn.is_async
    if inspect.iscoroutinefunction(fn):
        return True
    method = vars(type(fn)).get("__call__")  # a class with an async __call__
    return inspect.iscoroutinefunction(method) or inspect.iscoroutinefunction(getattr(fn, "forward", None))


def _run_awaitable(awaitable: Any) -> Any:
    """The result of an async app's awaitable, from sync code (no loop may be running here)."""
    async def wait_for_it() -> Any:
        return await awaitable

    return asyncio.run(wait_for_it())


def _discover(fn: Any) -> list[Parameter]:
    if isinstance(fn, Module):
        return fn.parameters()
    if isinstance(fn, Bundle) and fn.parameter is not None:
        return [fn.parameter]
    return []


def _is_tracer(app: Any) -> bool:
    if isinstance(app, TracerBase):
        return True
    params = getattr(app, "parameters", None)
    return callable(getattr(app, "run", None)) and params is not None and not callable(params)


def _is_langchain_runnable(app: Any) -> bool:
    module = sys.modules.get("langchain_core.runnables.base")
    if module is None:  # a Runnable instance implies its class module is loaded
        return False
    return isinstance(app, module.Runnable)


def _is_llama_index(app: Any) -> bool:
    return any(
        (getattr(klass, "__module__", "") or "").startswith("llama_index")
        for klass in type(app).__mro__
    )


def _framework_tracer(module_name: str, framework: str, app: Any) -> AppTracer:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppError(
            f"{type(app).__name__} is a {framework} object, but the {framework} adapter "
            f"{module_name} could not be imported ({exc}); install opto_adapters with its "
            f"{framework} support, or pass a tracer you built yourself"
        ) from exc
    return module.OptoTracer(app)


def as_tracer(app: Any, *, parameters: Iterable[Parameter] | None = None) -> AppTracer:
    """The tracer for ``app``: a tracer as is, a LangChain runnable, a LlamaIndex engine or
    agent, or a plain traced callable (wrapped in ``PythonApp``, with ``parameters`` if given).
    """
    if _is_tracer(app):
        if parameters is not None:
            raise TypeError(
                f"parameters= is for plain Python apps; {type(app).__name__} is already a tracer "
                "with its own .parameters (select them with its include/exclude options)"
            )
        return app
    if _is_langchain_runnable(app):
        tracer = _framework_tracer("opto_adapters.langchain", "LangChain", app)
    elif _is_llama_index(app):
        tracer = _framework_tracer("opto_adapters.llama_index", "LlamaIndex", app)
    elif callable(app):
        return PythonApp(app, parameters)
    else:
        raise TypeError(
            f"cannot train {type(app).__name__}: {app!r:.80}; pass a LangChain runnable, a "
            "LlamaIndex query engine/agent, a tracer, or a Python callable whose output is "
            "traced (a @bundle function or a Module)"
        )
    if parameters is not None:
        raise TypeError(
            "parameters= is for plain Python apps; framework apps discover theirs (pass a "
            "tracer built with include=/exclude= to choose)"
        )
    return tracer


# What each adapter's discovery looks for, for the error below.
_SEARCHED = {
    "LangChain": (
        "prompt templates (every message of a ChatPromptTemplate, PromptTemplate, the prefix, "
        "suffix, example template and examples of FewShotPromptTemplate and "
        "FewShotChatMessagePromptTemplate), tool descriptions (tools, tool nodes and the "
        "copies bind_tools made) and system prompts (create_agent, create_react_agent, and "
        "SystemMessages that step functions hold in their closures or module globals)"
    ),
    "LlamaIndex": (
        "prompt templates (get_prompts() of query engines, response synthesizers and their "
        "parts), the system prompts and templates of chat engines and agents, and tool "
        "descriptions (tool metadata); retriever settings such as similarity_top_k only with "
        "OptoTracer(app, retriever_settings=True)"
    ),
}
# A parameter of one's own, bound to a retriever's number of results, per framework.
_EXAMPLE_BINDING = {
    "LangChain": (
        "Binding(lambda: retriever.search_kwargs['k'], "
        "lambda v: retriever.search_kwargs.update(k=v))"
    ),
    "LlamaIndex": (
        "Binding(lambda: retriever.similarity_top_k, "
        "lambda v: setattr(retriever, 'similarity_top_k', v))"
    ),
}


def _framework_of(tracer: Any) -> str | None:
    """``"LangChain"`` / ``"LlamaIndex"`` for the adapters' tracers, else ``None``."""
    module = type(tracer).__module__ or ""
    if module.startswith("opto_adapters.langchain"):
        return "LangChain"
    if module.startswith("opto_adapters.llama_index"):
        return "LlamaIndex"
    return None


def no_parameters_error(tracer: Any) -> AppError:
    """The error for an app with nothing to train. For a LangChain or LlamaIndex app: what
    discovery searched, what include=/exclude= left out, and how to add a parameter of your
    own; for a plain Python app: how to make a value trainable."""
    if _framework_of(tracer) is None:
        return AppError(
            f"{tracer!r} has no trainable parameters: make a value trainable with "
            "node(value, trainable=True) and pass it to a @bundle operation of the app, pass "
            "parameters=[...], or pass an optimizer"
        )
    framework = _framework_of(tracer) or "framework"
    target = getattr(tracer, "target", None)
    app_name = type(target).__name__ if target is not None else type(tracer).__name__
    # every parameter, trainable or not (TracerBase keeps them all; .parameters are trainable)
    every = list(getattr(tracer, "_parameters", None) or ())
    if every:
        names = sorted(p.name for p in every)
        found = (
            f"discovery found {names}, but include=/exclude= made none of them trainable; "
            "widen the patterns (e.g. include=['prompt.*', 'tool.*'])"
        )
    else:
        found = "discovery found none"
    add = getattr(tracer, "add_parameter", None)
    try:
        takes_used_by = add is not None and "used_by" in inspect.signature(add).parameters
    except (TypeError, ValueError):
        takes_used_by = False
    used_by = ", used_by=retriever" if takes_used_by else ""
    binding = _EXAMPLE_BINDING.get(framework, "Binding(get, set)")
    return AppError(
        f"the {framework} app {app_name} has no trainable parameters: {found}. It searched "
        f"{_SEARCHED.get(framework, 'the objects its adapter knows')}. To train another value, "
        "bind a parameter to the live object and pass the tracer (Parameter and Binding from "
        "opto_adapters.trace): tracer = OptoTracer(app); "
        f"tracer.add_parameter(Parameter(name='retriever.k', kind='number', binding={binding})"
        f"{used_by}); "
        "optimize(tracer, train, ...). To choose among found parameters, use "
        "OptoTracer(app, include=[...], exclude=[...]) with name patterns such as 'prompt.*'."
    )


# -- the same live slot, seen by two tracers ---------------------------------------------------

_PLAIN = (str, bytes, int, float, bool, type(None))
_DEPTH = 8


def binding_target(param: Parameter) -> Any:
    """A key for where ``param``'s binding reads and writes: equal for two parameters bound to
    the same slot of the same live objects (two tracers over one app), different otherwise;
    ``None`` without a binding.

    A binding's functions are compared by their code and what they close over: live objects
    (prompts, messages, tools, engines) by identity, plain values (attribute names, paths) by
    value, and the adapters' own helper objects (slots, holders) by their contents, since each
    tracer makes its own.
    """
    binding = getattr(param, "binding", None)
    if binding is None:
        return None
    return (param.kind, _target(binding.get, 0), _target(binding.set, 0))


def _target(value: Any, depth: int) -> Any:
    if depth > _DEPTH:
        return ("id", id(value))
    if isinstance(value, _PLAIN):
        return ("value", type(value).__name__, value)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_target(v, depth + 1) for v in value))
    if isinstance(value, frozenset) and all(isinstance(v, _PLAIN) for v in value):
        return ("frozenset", value)
    if isinstance(value, types.MethodType):
        return ("method", value.__func__, _target(value.__self__, depth + 1))
    if isinstance(value, types.FunctionType):
        cells = []
        for cell in value.__closure__ or ():
            try:
                cells.append(_target(cell.cell_contents, depth + 1))
            except ValueError:  # an empty cell
                cells.append(("empty",))
        return ("function", value.__code__, tuple(cells))
    module = type(value).__module__ or ""
    if module.startswith("opto_adapters.") and hasattr(value, "__dict__"):
        return (
            "helper",
            type(value),
            tuple((k, _target(v, depth + 1)) for k, v in sorted(vars(value).items())),
        )
    return ("id", id(value))


def adopt_parameters(wanted: Iterable[Parameter], app: Iterable[Parameter]) -> tuple[list[Parameter], int]:
    """``wanted`` with each parameter that is not one of ``app``'s, but is bound to the same
    live slot as exactly one of them, replaced by that one; and how many were replaced."""
    app = list(app)
    mine = {id(p) for p in app}
    by_target: dict[Any, list[Parameter]] = {}
    for p in app:
        key = binding_target(p)
        if key is not None:
            by_target.setdefault(key, []).append(p)
    out, adopted = [], 0
    for p in wanted:
        if id(p) not in mine:
            key = binding_target(p)
            same = by_target.get(key, []) if key is not None else []
            if len(same) == 1:
                out.append(same[0])
                adopted += 1
                continue
        out.append(p)
    return out, adopted
