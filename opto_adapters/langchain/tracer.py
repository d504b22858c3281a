"""``OptoTracer``: a LangChain callback that turns every finished root run into an OPTO graph.

Attach it like any callback (``config={"callbacks": [tracer]}``, ``with_config``), or trace
every LangChain run in a scope with ``with tracer:`` (tracers nest: inside ``with t1: with
t2:`` each traces every run, as it would alone). Each root run becomes one ``Graph``
(``tracer.last_graph``, ``tracer.graph(run_id)``, ``tracer.graphs``); the parameters it
discovered are bound to the live prompts, tools and system prompts, so an optimizer step
changes what the next run sends to the model.

A root run can end before some of its steps: a stream the consumer stopped early (``break``,
``close()``) ends the root while the steps still stream, and an async ``RunnableParallel``
whose branch failed ends with the other branches still running. The graph of a run stopped
early is not recorded: its steps report no output, so it would show the app producing
nothing. The graph of a run that failed (with an ``Exception``) is recorded once its last
step has ended: it is then complete, and its output is the error. Either way the steps that
end late are handled quietly and leave no state behind.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from langchain_core.callbacks import BaseCallbackManager
from langchain_core.runnables import RunnableBinding, RunnableConfig
from langchain_core.tracers.base import BaseTracer
from langchain_core.tracers.context import register_configure_hook
from langchain_core.tracers.schemas import Run

from .. import runs
from ..trace import Graph, Parameter, TracedRun, TracerBase
from ..trace.tracer import Pending, select_parameters
from .discovery import STAMP_KEY, discover, object_stamp
from .spans import ERROR_KEY, Translator, freeze, root_input_name

__all__ = ["OptoTracer"]

logger = logging.getLogger("opto_adapters.langchain")

_MAX_LATE = 1000  # roots waiting for their last steps to end (see the module docstring)

# The global form. LangChain's configure hook adds the handler held in a context variable to
# every run it configures (unless that very handler is there already). One variable holds one
# tracer, so tracers active at the same time (``with t1: with t2:``) each get a slot of their
# own: each is then an ordinary handler of every run, with its own per-run state, exactly as
# if it were active alone. Slots are registered on first use and reused; a slot is free in a
# context when it holds no tracer there.
_SLOTS: list[ContextVar[OptoTracer | None]] = []
_SLOTS_LOCK = threading.Lock()


def _free_slot() -> ContextVar[OptoTracer | None]:
    """A slot holding no tracer in this context (registering a new one if all are taken)."""
    with _SLOTS_LOCK:
        for var in _SLOTS:
            if var.get() is None:
                return var
        var = ContextVar(f"opto_adapters_langchain_tracer_{len(_SLOTS)}", default=None)
        register_configure_hook(var, inheritable=True)
        _SLOTS.append(var)
        return var


class OptoTracer(TracerBase, BaseTracer):
    """Traces a LangChain app into OPTO graphs and holds its trainable parameters.

    ``target`` is the runnable to optimize (a chain, an agent from ``create_agent``, a
    compiled LangGraph graph...). Its prompt templates, tool descriptions and system prompts
    become ``parameters`` (``include``/``exclude`` are name patterns such as ``"tool.*"``;
    excluded ones stay in the graphs as fixed inputs). At most ``max_graphs`` graphs are kept.
    A failure inside the tracer is logged and never reaches the app.
    """

    name = "opto_adapters_tracer"
    _logger_name = "opto_adapters.langchain"
    raise_error = False
    run_inline = True  # async runs call us inline instead of through a thread pool

    def __init__(
        self,
        target: Any = None,
        *,
        include: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
        max_graphs: int = 100,
    ) -> None:
        # "original+chat": chat models report their messages as messages, not flattened text
        BaseTracer.__init__(self, _schema_format="original+chat")
        found = discover([target] if target is not None else [])
        TracerBase.__init__(self, found.parameters, max_graphs=max_graphs)
        selected = {id(p) for p in select_parameters(found.parameters, include, exclude)}
        for param in found.parameters:
            if id(param) not in selected:
                param.trainable = False
        self.target = target
        self._found = found
        self._by_run_name: dict[str, list[tuple[str, Parameter]]] = {}
        self._tokens: ContextVar[tuple[Any, ...]] = ContextVar(
            f"opto_adapters_tokens_{id(self)}", default=()
        )
        # roots that ended before some of their steps -> (root, record its graph when they end)
        self._late: dict[uuid.UUID, tuple[Run, bool]] = {}
        self._late_lock = threading.Lock()

    def __repr__(self) -> str:
        names = [p.name for p in self.parameters]
        return f"OptoTracer(target={type(self.target).__name__}, parameters={names}, graphs={len(self.graphs)})"

    # -- parameters -------------------------------------------------------------------------

    def add_parameter(self, parameter: Parameter, *, used_by: Any = None) -> Parameter:
        """Add a parameter of your own, e.g. a retriever's ``k`` bound to the live object.

        ``used_by`` puts it in the graphs as an input of the runs of that object (a
        retriever, model, prompt or tool) or of the runs with that name (a str); without it,
        the optimizer cannot see what the parameter affects.
        """
        by_run_name: str | None = None
        stamp: str | None = None
        if isinstance(used_by, str):
            by_run_name = used_by
        elif used_by is not None:
            obj = used_by
            while isinstance(obj, RunnableBinding):
                obj = obj.bound
            stamp = object_stamp(obj)
            if stamp is None:
                raise TypeError(
                    f"cannot tie parameter {getattr(parameter, 'name', parameter)!r} to a "
                    f"{type(used_by).__name__}: its runs carry no metadata. Pass the name of its "
                    "runs instead, e.g. used_by='format_docs'"
                )
        TracerBase.add_parameter(self, parameter)
        # copied, not edited: a run recorded before is translated later with the tables of
        # its time (see ``_finish``)
        link = (parameter.name.rsplit(".", 1)[-1], parameter)
        if by_run_name is not None:
            table = self._by_run_name
            self._by_run_name = {**table, by_run_name: [*table.get(by_run_name, ()), link]}
        elif stamp is not None:
            table = self._found.by_stamp
            by_stamp = {**table, stamp: [*table.get(stamp, ()), link]}
            self._found = dataclasses.replace(self._found, by_stamp=by_stamp)
        return parameter

    # -- running ----------------------------------------------------------------------------

    def run(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> TracedRun:
        """Invoke the target once, traced; return its output (or error) and exactly its graph.

        Never raises the app's exception: it is in ``.error`` and ``graph.output`` is an
        ``ExceptionNode``.
        """
        target = self._require_target()
        run_id = uuid.uuid4()
        try:
            output = target.invoke(input, self._config(config, run_id), **kwargs)
        except Exception as exc:
            return TracedRun(None, self._graph_or_none(run_id), exc)
        return TracedRun(output, self._graph_or_none(run_id))

    async def arun(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> TracedRun:
        """``run`` for async apps (``ainvoke``)."""
        target = self._require_target()
        run_id = uuid.uuid4()
        try:
            output = await target.ainvoke(input, self._config(config, run_id), **kwargs)
        except Exception as exc:
            return TracedRun(None, self._graph_or_none(run_id), exc)
        return TracedRun(output, self._graph_or_none(run_id))

    def _require_target(self) -> Any:
        if self.target is None or not hasattr(self.target, "invoke"):
            raise TypeError(
                f"OptoTracer.run needs a runnable target, got {type(self.target).__name__}; "
                "create the tracer with OptoTracer(chain)"
            )
        return self.target

    def _config(self, config: RunnableConfig | None, run_id: uuid.UUID) -> RunnableConfig:
        cfg: dict[str, Any] = dict(config or {})
        callbacks = cfg.get("callbacks")
        if callbacks is None:
            cfg["callbacks"] = [self]
        elif isinstance(callbacks, BaseCallbackManager):
            manager = callbacks.copy()
            if all(h is not self for h in manager.handlers):
                manager.add_handler(self, inherit=True)
            cfg["callbacks"] = manager
        elif all(h is not self for h in callbacks):
            cfg["callbacks"] = [*callbacks, self]
        cfg["run_id"] = run_id
        return RunnableConfig(**cfg)  # type: ignore[typeddict-item]

    def _graph_or_none(self, run_id: uuid.UUID) -> Graph | Pending | None:
        """The run's graph as kept: built when the ``TracedRun``'s ``.graph`` is read."""
        kept = self._kept(str(run_id))
        if kept is not None:
            return kept
        with self._late_lock:
            waiting = run_id in self._late
        if waiting:
            logger.warning(
                "run %s ended before some of its steps (e.g. the other branches of a "
                "failed parallel step); its graph is recorded when they end: "
                "tracer.graph(run_id)",
                run_id,
            )
        else:
            logger.warning(
                "no graph was recorded for run %s (see the errors logged above)", run_id
            )
        return None

    # -- the global form --------------------------------------------------------------------

    def __enter__(self) -> OptoTracer:
        """Trace every LangChain run started in this context (threads need ``copy_context``).

        Tracers nest: inside ``with t1: with t2:`` both trace every run, each as if alone.
        """
        var = _free_slot()
        token = var.set(self)
        self._tokens.set((*self._tokens.get(), (var, token)))
        return self

    def __exit__(self, *exc: object) -> None:
        tokens = self._tokens.get()
        if tokens:
            self._tokens.set(tokens[:-1])
            var, token = tokens[-1]
            var.reset(token)

    async def __aenter__(self) -> OptoTracer:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)

    def close(self) -> None:
        """Stop the global form in this context (what ``with`` does on exit). Idempotent."""
        tokens = self._tokens.get()
        self._tokens.set(())
        for var, token in reversed(tokens):
            try:
                var.reset(token)
            except ValueError:  # set in another context; it ends with that context
                logger.debug("token from another context not reset", exc_info=True)

    # -- BaseTracer hooks -------------------------------------------------------------------

    def _persist_run(self, run: Run) -> None:
        """Called once per finished root run, with the whole tree."""
        # the app failed (recorded once the steps end), or was stopped (a stream closed
        # early ends the root normally, or with GeneratorExit when async: nothing recorded)
        failed = isinstance((run.extra or {}).get(ERROR_KEY), Exception)
        with self._late_lock:
            # in ``_late`` before its steps are checked: a step ending now in another thread
            # either has ended before the check or finds the root there (see ``_late_end``)
            self._late[run.id] = (run, failed)
            waiting = _unfinished(run)
            if not waiting:
                del self._late[run.id]
            elif len(self._late) > _MAX_LATE:
                self._evict(next(iter(self._late)))
        if waiting:
            logger.debug(
                "run %s (%s) ended before its steps %s; %s",
                run.id,
                run.name,
                ", ".join(str(r.name) for r in waiting),
                "it failed: its graph is recorded when they end"
                if failed
                else "it was stopped early (a stream closed by its consumer?): no graph is recorded",
            )
            self._forget(run)
            return
        self._finish(run)

    def _finish(self, root: Run) -> None:
        """Record the graph of a root whose steps have all ended, and forget the run.

        The least possible work is done now: the run tree is kept with its containers
        copied (``spans.freeze``: the app may go on changing the lists and dicts its runs
        hold) and with the parameter values and lookup tables of now; it is translated and
        its graph built when first asked for (``last_graph``, ``graph(id)``...). Most runs
        are never looked at, and translating costs several times what copying does."""
        try:
            freeze(root)
            translator = Translator(self._found, self._by_run_name)  # the tables of now
            values = self._parameter_values()
            metadata = _metadata(root)
            self._record(str(root.id), lambda: self._graph_of(root, translator, metadata, values))
        except Exception:
            logger.exception(
                "opto_adapters could not record run %s (%s); the app is not affected",
                root.id,
                root.name,
            )
        finally:
            self._forget(root)

    def _translate(self, run: Run, translator: Translator | None = None) -> runs.Span:
        return (translator or Translator(self._found, self._by_run_name)).translate(run)

    def _graph_of(
        self,
        root: Run,
        translator: Translator | None,
        metadata: dict[str, Any],
        values: dict[int, Any],
    ) -> Graph | None:
        try:
            span = self._translate(root, translator)
            graph = runs.build_graph(
                span,
                uses=[runs.TextUse(p) for p in self._found.by_content],
                input_name=lambda key: root_input_name(span.kind, key),
                metadata=metadata,
                on_unlinked=self._unlinked,
                values=values,
            )
        except Exception:
            logger.exception(
                "opto_adapters could not build the graph of run %s (%s); the app is not affected",
                metadata.get("run_id"),
                metadata.get("name"),
            )
            return None
        return graph

    def _build_graph(self, run: Run) -> Graph:
        """The graph of a finished run tree, now (with the parameter values of now)."""
        graph = self._graph_of(run, None, _metadata(run), {})
        if graph is None:
            raise RuntimeError(f"no graph for run {run.id}: see the error logged above")
        return graph

    def _forget(self, root: Run) -> None:
        """Drop the ``order_map`` entries (BaseTracer never prunes them) of the runs of this
        tree that have ended. A step still running keeps its entries: its end callback still
        needs them (and ``_late_end`` prunes them then). BaseTracer itself drops each ended
        run from ``run_map``."""
        stack = [root]
        while stack:
            run = stack.pop()
            if run.end_time is not None:
                self.order_map.pop(run.id, None)
            stack.extend(run.child_runs)

    def _late_end(self, run: Run) -> None:
        """A step of a root that has already ended has ended: prune it and, once it was the
        last one, finish the root (record its graph if it failed, see the module docstring).

        Called after every step; nearly always nothing waits, and that is read without the
        lock: a root is put in ``_late`` before its steps are checked, so a step that finds
        ``_late`` empty had ended before its root's check, which then saw it end."""
        if not self._late:
            return
        with self._late_lock:
            item = self._late.get(run.trace_id)
            if item is None:
                return
            self.order_map.pop(run.id, None)
            root, record = item
            if _unfinished(root):
                return
            del self._late[root.id]
        logger.debug("the last step of run %s (%s) has ended", root.id, root.name)
        if record:
            self._finish(root)
        else:
            self._forget(root)

    def _evict(self, root_id: uuid.UUID) -> None:
        """Give up on a root whose steps never ended (bounds ``_late``; under the lock)."""
        root, _ = self._late.pop(root_id)
        logger.debug("run %s still has unfinished steps; no longer waiting for them", root_id)
        stack = [root]
        while stack:
            run = stack.pop()
            self.order_map.pop(run.id, None)
            stack.extend(run.child_runs)

    def _create_chat_model_run(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        run_id: Any,
        tags: list[str] | None = None,
        parent_run_id: Any = None,
        metadata: dict[str, Any] | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> Run:
        """Keep the messages as message objects: BaseTracer would serialize each one with
        ``dumpd`` (slow), and the graph renders them as text anyway."""
        run = self._create_llm_run(
            serialized,
            [],
            run_id,
            tags=tags,
            parent_run_id=parent_run_id,
            metadata=metadata,
            name=name,
            **kwargs,
        )
        run.run_type = "chat_model"
        run.inputs = {"messages": [list(batch) for batch in messages]}
        return run

    def _errored_chain_run(self, error: BaseException, inputs: Any, run_id: Any) -> Run:
        run = super()._errored_chain_run(error, inputs, run_id)
        run.extra[ERROR_KEY] = error
        return run

    def _errored_llm_run(self, error: BaseException, run_id: Any, response: Any = None) -> Run:
        run = super()._errored_llm_run(error, run_id, response)
        run.extra[ERROR_KEY] = error
        return run

    def _errored_tool_run(self, error: BaseException, run_id: Any) -> Run:
        run = super()._errored_tool_run(error, run_id)
        run.extra[ERROR_KEY] = error
        return run

    def _errored_retrieval_run(self, error: BaseException, run_id: Any) -> Run:
        run = super()._errored_retrieval_run(error, run_id)
        run.extra[ERROR_KEY] = error
        return run

    def on_llm_new_token(self, *args: Any, **kwargs: Any) -> None:
        """Tokens are not needed for the graph (the final output arrives on end)."""
        return None


def _metadata(root: Run) -> dict[str, Any]:
    metadata = (root.extra or {}).get("metadata") or {}
    return {
        "run_id": str(root.id),
        "name": root.name,
        "run_type": root.run_type,
        "tags": list(root.tags or ()),
        # what the app passed in its config (e.g. an example id), not LangChain's own
        "metadata": {
            k: v
            for k, v in metadata.items()
            if k != STAMP_KEY and not k.startswith(("ls_", "lc_", "langgraph_", "checkpoint_"))
        },
    }


_CALLBACKS = (
    "on_chat_model_start",
    "on_llm_start",
    "on_llm_end",
    "on_llm_error",
    "on_chain_start",
    "on_chain_end",
    "on_chain_error",
    "on_tool_start",
    "on_tool_end",
    "on_tool_error",
    "on_retriever_start",
    "on_retriever_end",
    "on_retriever_error",
    "on_retry",
)


def _unfinished(root: Run) -> list[Run]:
    """The runs under ``root`` that have not ended."""
    found = []
    stack = list(root.child_runs)
    while stack:
        run = stack.pop()
        if run.end_time is None:
            found.append(run)
        stack.extend(run.child_runs)
    return found


def _guarded(name: str) -> Any:
    base = getattr(BaseTracer, name)
    ends = name.endswith(("_end", "_error"))

    @functools.wraps(base)
    def method(self: OptoTracer, *args: Any, **kwargs: Any) -> Any:
        run = None
        try:
            if ends:
                run = self.run_map.get(str(kwargs.get("run_id")))
            result = base(self, *args, **kwargs)
            if run is not None and run.parent_run_id is not None:
                self._late_end(run)  # a step: did it end after its root?
            return result
        except Exception:
            logger.exception("opto_adapters tracer failed in %s; the app is not affected", name)
            return None

    return method


for _name in _CALLBACKS:
    setattr(OptoTracer, _name, _guarded(_name))
del _name
