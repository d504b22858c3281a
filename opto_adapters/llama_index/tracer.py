"""``OptoTracer``: every run of a LlamaIndex app becomes an OPTO graph over its prompts.

Attach model. LlamaIndex's instrumentation dispatcher is process-global, so the tracer adds
one span handler and one event handler to the root dispatcher when it is created and removes
them on ``close()``. While attached it builds a graph for

- every run of its target or one of the target's components (retriever, synthesizer,
  sub-query-engine, agent, tool): a span of one of them that is not inside another
  traced run starts a run;
- inside ``with tracer:``, every run in that context (any query engine, retriever, chat
  engine, agent or LLM call), like LangChain's global tracer. The scope is a context variable:
  asyncio tasks created inside inherit it; threads do not unless started with
  ``contextvars.copy_context().run`` (LlamaIndex's own ``Thread`` does this).

LLMs and embedding models are not components: they are usually shared, so a direct
``llm.complete(...)`` is traced only inside ``with tracer:``. Leaving the ``with`` block
closes the tracer; ``attach()`` re-opens it. ``run``/``arun`` keep the tracer attached for
the duration of their run, also when it was closed and when several run at once (threads,
``asyncio.gather``): the handlers come off when the user has closed the tracer and the last
run in flight has ended.

A run is recorded when its root span ends (a streamed query's when its stream has been
consumed: the LLM is called while the caller reads it); its graph is built when first asked
for (``last_graph``, ``graph(id)``, a ``TracedRun``'s ``.graph``), from what was recorded
then and the parameter values of then.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.chat_engine.types import BaseChatEngine
from llama_index.core.instrumentation import get_dispatcher

from .. import runs
from ..trace import Graph, Parameter, TracedRun, TracerBase
from ..trace.tracer import Pending, select_parameters
from .discovery import Discovery, check_used_by, discover
from .found import Links
from .recorder import EventHandler, Recorder, RunRecord, SpanHandler, is_workflow
from .slots import ValuePlan
from .spans import freeze, text_uses, translate

__all__ = ["OptoTracer"]

logger = logging.getLogger("opto_adapters.llama_index")

_SCOPE: ContextVar[tuple[OptoTracer, ...]] = ContextVar(
    "opto_adapters_llama_index_scope", default=()
)


class _Capture:
    """Set by ``run``/``arun``: the first run started in this context is theirs."""

    __slots__ = ("tracer", "run_id")

    def __init__(self, tracer: OptoTracer) -> None:
        self.tracer = tracer
        self.run_id: str | None = None


_CAPTURE: ContextVar[_Capture | None] = ContextVar(
    "opto_adapters_llama_index_capture", default=None
)

# The dispatcher's handler lists are plain lists shared by every thread: every add and remove
# by any tracer goes through this one lock. A tracer's finalizer may be run by the garbage
# collector in a thread that is already inside an update: that removal is deferred to the end
# of the update instead of deadlocking on (or interleaving with) it.
_HANDLERS_LOCK = threading.Lock()
_UPDATING = threading.local()
_DEFERRED: deque[Callable[[], None]] = deque()


def _update_handlers(change: Callable[[], None]) -> None:
    if getattr(_UPDATING, "active", False):  # re-entered from a finalizer in this thread
        _DEFERRED.append(change)
        return
    _UPDATING.active = True  # before taking the lock: no window for a re-entrant deadlock
    try:
        with _HANDLERS_LOCK:
            change()
            while _DEFERRED:
                _DEFERRED.popleft()()
    finally:
        _UPDATING.active = False


class OptoTracer(TracerBase):
    """Trace a LlamaIndex query engine, retriever, chat engine or agent as OPTO graphs.

    ``OptoTracer(engine)`` discovers the trainable texts (see ``discover``), binds a
    ``Parameter`` to each, and attaches to LlamaIndex's instrumentation so every run of
    ``engine`` records a graph (``last_graph``, ``graphs``, ``graph(run_id)``). Writing a
    parameter (``apply_updates``, ``load``) changes what the next run sends to the LLM.

    ``include``/``exclude`` are name patterns (``"*text_qa*"``); excluded texts still appear
    in graphs, as fixed inputs. ``retriever_settings=True`` adds ``similarity_top_k`` of
    each retriever as a ``number`` parameter; pass a list of setting names or a dict of
    name -> ``(min, max)`` for others.
    """

    _logger_name = "opto_adapters.llama_index"

    def __init__(
        self,
        target: Any,
        *,
        include: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
        max_graphs: int = 100,
        retriever_settings: bool
        | Iterable[str]
        | Mapping[str, tuple[float | None, float | None]] = False,
        max_open_runs: int = 1000,
    ) -> None:
        if target is None:
            raise TypeError(
                "OptoTracer needs a query engine, retriever, chat engine or agent, got None"
            )
        self.target = target
        self._discovery: Discovery = discover(target, retriever_settings=retriever_settings)
        selected = select_parameters(self._discovery.parameters, include, exclude)
        chosen = {id(p) for p in selected}
        for t in self._discovery.trainables:
            if id(t.parameter) not in chosen:
                t.parameter.trainable = False  # shown in graphs as a fixed input
        super().__init__(selected, max_graphs=max_graphs)
        self._components = self._discovery.components
        self._uses = text_uses(self._discovery)
        self._plan: tuple[int, ValuePlan] | None = None  # how to read every value at once
        ref = weakref.ref(self)
        self._recorder = Recorder(
            lambda span_id, instance, kind: _call(ref, "_accept", False, span_id, instance, kind),
            lambda run: _call(ref, "_finish", None, run),
            max_open_runs=max_open_runs,
        )
        self._span_handler = SpanHandler(self._recorder)
        self._event_handler = EventHandler(self._recorder)
        self._state_lock = threading.RLock()
        self._finalizer: weakref.finalize | None = None
        self._depth = 0
        self._user_attached = False  # attach() / close() and the with block
        self._runs_in_flight = 0  # run() / arun() calls not finished yet
        self.attach()

    # -- parameters --------------------------------------------------------------------------

    def add_parameter(self, parameter: Parameter, *, used_by: Any = None) -> Parameter:
        """Add a parameter of your own, e.g. a retriever's ``k`` bound to the live object.

        ``used_by`` puts it in the graphs as an input of the spans of that object (a
        retriever, query engine, LLM, tool, chat engine or workflow) or of the spans with
        that name (``"MyFlow.answer"`` for a workflow step). Without it, a text parameter
        is found only where an LLM's input contains its text, and anything else gets no
        feedback (a warning says so).
        """
        check_used_by(used_by)
        TracerBase.add_parameter(self, parameter)
        self._discovery.link(parameter, used_by)
        return parameter

    # -- attach / detach -------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        """Whether the handlers are on LlamaIndex's dispatcher (runs are being traced)."""
        return self._finalizer is not None and self._finalizer.alive

    def attach(self) -> None:
        """Put the handlers (back) on LlamaIndex's dispatcher; idempotent.

        A new tracer is attached already; this re-opens one that was closed.
        """
        with self._state_lock:
            self._user_attached = True
            self._add_handlers()

    def close(self) -> None:
        """Remove the handlers from LlamaIndex's dispatcher and forget unfinished runs.

        Idempotent. Recorded graphs and the parameters stay usable. While ``run``/``arun``
        calls are in flight (in other threads or tasks) the handlers stay until the last of
        them ends, so each still gets its graph.
        """
        with self._state_lock:
            self._user_attached = False
            if self._runs_in_flight == 0:
                self._remove_handlers()

    def _add_handlers(self) -> None:
        """Attach unless attached; call with ``_state_lock`` held."""
        if self.attached:
            return
        span_handler, event_handler = self._span_handler, self._event_handler

        def add() -> None:
            dispatcher = get_dispatcher()
            dispatcher.add_span_handler(span_handler)
            dispatcher.add_event_handler(event_handler)

        _update_handlers(add)
        # detach even if the user never calls close(): the dispatcher is global
        self._finalizer = weakref.finalize(
            self, _detach, span_handler, event_handler, self._recorder
        )

    def _remove_handlers(self) -> None:
        """Detach if attached; call with ``_state_lock`` held."""
        if self._finalizer is not None:
            self._finalizer()

    def _begin_run(self) -> None:
        with self._state_lock:
            self._runs_in_flight += 1
            self._add_handlers()

    def _end_run(self) -> None:
        with self._state_lock:
            self._runs_in_flight -= 1
            if self._runs_in_flight == 0 and not self._user_attached:
                self._remove_handlers()

    def __enter__(self) -> OptoTracer:
        self.attach()
        with self._state_lock:
            self._depth += 1
        _SCOPE.set((*_SCOPE.get(), self))
        return self

    def __exit__(self, *exc_info: object) -> None:
        scope = list(_SCOPE.get())
        for i in range(len(scope) - 1, -1, -1):
            if scope[i] is self:
                del scope[i]
                break
        _SCOPE.set(tuple(scope))
        with self._state_lock:
            self._depth -= 1
            last = self._depth <= 0
        if last:
            self.close()

    async def __aenter__(self) -> OptoTracer:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__(*exc_info)

    # -- running the target ----------------------------------------------------------------

    def run(self, input: Any, **kwargs: Any) -> TracedRun:
        """Run the target once on ``input`` and return its output with exactly that run's graph.

        Never raises the app's exception: it is in ``.error`` and ``graph.output`` is an
        ``ExceptionNode``. Agents and workflows are async: from inside an event loop use
        ``await tracer.arun(...)``.
        """
        if is_workflow(self.target):
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return asyncio.run(self.arun(input, **kwargs))
            raise RuntimeError(
                f"tracer.run() on a {type(self.target).__name__} inside a running event loop: "
                "use `await tracer.arun(...)`"
            )
        call = self._method(sync=True)
        self._begin_run()
        capture = _Capture(self)
        token = _CAPTURE.set(capture)
        try:
            try:
                output, error = call(input, **kwargs), None
            except Exception as exc:
                output, error = None, exc
        finally:
            _CAPTURE.reset(token)
            self._end_run()
        return TracedRun(output, self._graph_of(capture), error)

    async def arun(self, input: Any, **kwargs: Any) -> TracedRun:
        """Async ``run``: ``aquery``/``aretrieve``/``achat``, or ``await agent.run(...)``."""
        self._begin_run()
        capture = _Capture(self)
        token = _CAPTURE.set(capture)
        try:
            try:
                if is_workflow(self.target):
                    output = await self.target.run(user_msg=input, **kwargs)
                else:
                    output = await self._method(sync=False)(input, **kwargs)
                error = None
            except Exception as exc:
                output, error = None, exc
            for _ in range(5):  # a workflow's root span ends in a done-callback: let it run
                if capture.run_id is None or self._has_graph(capture.run_id):
                    break
                await asyncio.sleep(0)
        finally:
            _CAPTURE.reset(token)
            self._end_run()
        return TracedRun(output, self._graph_of(capture), error)

    def _method(self, *, sync: bool) -> Callable[..., Any] | Callable[..., Awaitable[Any]]:
        t = self.target
        if isinstance(t, BaseQueryEngine):
            return t.query if sync else t.aquery
        if isinstance(t, BaseRetriever):
            return t.retrieve if sync else t.aretrieve
        if isinstance(t, BaseChatEngine):
            return t.chat if sync else t.achat
        raise TypeError(
            f"tracer.run() does not know how to run a {type(t).__name__}; call it yourself "
            "(its runs are traced) and read tracer.last_graph"
        )

    def _graph_of(self, capture: _Capture) -> Graph | Pending | None:
        """The run's graph as kept: built when the ``TracedRun``'s ``.graph`` is read."""
        if capture.run_id is None:
            logger.warning(
                "opto_adapters: the run of %s produced no span; no graph",
                type(self.target).__name__,
            )
            return None
        return self._kept(capture.run_id)

    # -- called by the recorder ------------------------------------------------------------

    def _accept(self, span_id: str, instance: Any, kind: str) -> bool:
        capture = _CAPTURE.get()
        if capture is not None and capture.tracer is self and capture.run_id is None:
            capture.run_id = span_id
            return True
        if id(instance) in self._components:
            return True
        return self in _SCOPE.get()

    def _finish(self, run: RunRecord) -> None:
        """Keep a finished run; translate it and build its graph when first asked for.

        The least possible work is done now (most runs are never looked at): ``freeze``
        takes what translation reads from objects the app goes on using (lists it may
        change, the text of what it returned), and the parameter values and ``used_by``
        links of now are kept with it, so a graph built later shows the run as it was."""
        try:
            freeze(run)
            values = self._parameter_values()
            links = self._discovery.links()
        except Exception as exc:
            self._recorder.report_failure("recording the run", exc)
            return
        self._record(run.root.id, lambda: self._build(run, links, values))

    def _parameter_values(self) -> dict[int, Any]:
        """Every parameter's value now, reading each prompt module once (``snapshot``)."""
        if self._plan is None or self._plan[0] != len(self._parameters):
            self._plan = (len(self._parameters), ValuePlan(self._parameters))
        return self._plan[1].read()

    def _build(self, run: RunRecord, links: Links, values: dict[int, Any]) -> Graph | None:
        root = run.root
        metadata = {"run_id": root.id, "span": root.name, "kind": root.kind}
        try:
            span = translate(run, self._discovery, links)
            graph = runs.build_graph(
                span, uses=self._uses, instances=run.instances, metadata=metadata,
                on_unlinked=self._unlinked, values=values,
            )
        except Exception as exc:
            self._recorder.report_failure("building the graph", exc)
            return None
        return graph

    def __repr__(self) -> str:
        return (
            f"OptoTracer(target={type(self.target).__name__}, parameters={[p.name for p in self.parameters]}, "
            f"attached={self.attached})"
        )


def _call(ref: weakref.ref[OptoTracer], method: str, default: Any, *args: Any) -> Any:
    tracer = ref()
    return default if tracer is None else getattr(tracer, method)(*args)


def _detach(span_handler: SpanHandler, event_handler: EventHandler, recorder: Recorder) -> None:
    """Remove exactly these handlers (by identity: pydantic handlers compare by fields)."""

    def remove() -> None:
        dispatcher = get_dispatcher()
        _remove(dispatcher, "span_handlers", span_handler)
        _remove(dispatcher, "event_handlers", event_handler)

    _update_handlers(remove)
    recorder.clear()


def _remove(dispatcher: Any, attr: str, handler: Any) -> None:
    """Replace the list rather than edit it: a thread dispatching a span or event iterates
    the list by index, and an in-place removal would shift it and skip the next handler
    (another tracer's, or another library's) for that span."""
    handlers = getattr(dispatcher, attr)
    if any(h is handler for h in handlers):
        setattr(dispatcher, attr, [h for h in handlers if h is not handler])
