"""Instrumentation handlers that group LlamaIndex spans and events into one tree per run.

LlamaIndex's dispatcher is process-global: every span of every app reaches every handler,
from whatever thread or task runs it. The recorder keeps only the *significant* spans of the
runs its tracer accepts (query, retrieve, synthesize, LLM call, tool call, chat turn, agent
run), maps every other span of those runs to its nearest significant ancestor, and hands a
finished tree to ``on_finish`` when the run's root span ends; then it forgets the run.

The dispatcher swallows handler exceptions silently, so every entry point here catches,
logs (once per kind of failure, then at debug level) and returns.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.chat_engine.types import BaseChatEngine
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatStartEvent,
    LLMCompletionEndEvent,
    LLMCompletionStartEvent,
    LLMPredictEndEvent,
    LLMPredictStartEvent,
    LLMStructuredPredictEndEvent,
    LLMStructuredPredictStartEvent,
)
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
from llama_index.core.response_synthesizers.base import BaseSynthesizer
from llama_index.core.tools.types import BaseTool

__all__ = ["UNSET", "EventHandler", "Recorder", "RunRecord", "SpanHandler", "SpanRecord", "is_workflow"]

logger = logging.getLogger("opto_adapters.llama_index")

_LLM_CALLS = frozenset(
    {
        "predict", "apredict", "stream", "astream",
        "complete", "acomplete", "stream_complete", "astream_complete",
        "chat", "achat", "stream_chat", "astream_chat",
        "structured_predict", "astructured_predict",
        "stream_structured_predict", "astream_structured_predict",
        "predict_and_call", "apredict_and_call",
    }
)  # fmt: skip
_OFFER_TOOLS = "offer_tools"
_CALL_TOOL = ".call_tool-"

try:  # the span the dispatcher makes new spans children of
    from llama_index_instrumentation.span import active_span_id
except ImportError:  # pragma: no cover - older llama-index-core keeps it here
    try:
        from llama_index.core.instrumentation.span import active_span_id
    except ImportError:
        active_span_id = None


try:
    from workflows import Workflow as _Workflow
except ImportError:  # pragma: no cover - llama-index-core depends on llama-index-workflows
    _Workflow = None


def is_workflow(obj: Any) -> bool:
    """Whether ``obj`` is a LlamaIndex workflow (agents, ``AgentWorkflow``): async, started
    with ``run(...)``, its steps are spans without an instance."""
    return _Workflow is not None and isinstance(obj, _Workflow)


def classify(cls: type, method: str) -> str | None:
    """The kind of step a span of ``cls.method`` is, or ``None`` for plumbing."""
    if issubclass(cls, BaseLLM):
        if method in _LLM_CALLS:
            return "llm"
        return _OFFER_TOOLS if method == "_prepare_chat_with_tools" else None
    if issubclass(cls, BaseTool):
        return "tool" if method in ("call", "acall", "__call__") else None
    if issubclass(cls, BaseRetriever):
        return "retrieve" if method in ("retrieve", "aretrieve") else None
    if issubclass(cls, BaseSynthesizer):
        return "synthesize" if method in ("synthesize", "asynthesize") else None
    if issubclass(cls, BaseQueryEngine):
        return "query" if method in ("query", "aquery") else None
    if issubclass(cls, BaseChatEngine):
        return "chat" if method in ("chat", "achat", "stream_chat", "astream_chat") else None
    if _Workflow is not None and issubclass(cls, _Workflow):
        return "agent" if method == "run" else None
    return None


_STEP_CLASSES = tuple(
    c for c in (BaseLLM, BaseTool, BaseRetriever, BaseSynthesizer, BaseQueryEngine, BaseChatEngine, _Workflow)
    if c is not None
)


def can_be_step(cls: type) -> bool:
    """Whether any span of ``cls`` can be a step (see ``classify``)."""
    return issubclass(cls, _STEP_CLASSES)


def _span_name(span_id: str) -> str:
    """``Class.method`` from a dispatcher span id (``Class.method-<uuid4>``)."""
    if len(span_id) > 37 and span_id[-37] == "-":
        return span_id[:-37]
    return span_id.rpartition("-")[0] or span_id


UNSET: Any = object()  # ``SpanRecord.output`` not taken yet


class SpanRecord:
    """A significant span of a traced run, with what the graph builder needs."""

    __slots__ = (
        "id", "name", "kind", "instance", "args", "run", "children",
        "result", "error", "done", "llm", "tools", "pending_tools", "tool_call_id", "output",
    )  # fmt: skip

    def __init__(
        self, id_: str, name: str, kind: str, instance: Any, args: dict[str, Any], run: RunRecord
    ) -> None:
        self.id = id_
        self.name = name
        self.kind = kind
        self.instance = instance
        self.args = args
        self.run = run
        self.children: list[SpanRecord] = []
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.llm: dict[str, Any] | None = None  # LLM events: template, messages, output...
        self.tools: Any = None  # tools offered to this LLM call
        self.pending_tools: Any = None  # offered by a sibling span, for the next LLM call
        self.tool_call_id: str | None = None  # the model's tool call this tool span answers
        self.output: Any = UNSET  # what the graph shows as its result, taken at run end

    def __repr__(self) -> str:
        return f"SpanRecord({self.name!r}, kind={self.kind!r}, children={len(self.children)})"


class RunRecord:
    """One traced run: its root span, every span id seen, every object that ran."""

    __slots__ = ("root", "span_ids", "instances", "tool_ids", "streamed")

    def __init__(self) -> None:
        self.root: SpanRecord = None  # type: ignore[assignment]
        self.span_ids: list[str] = []
        self.instances: set[int] = set()
        self.tool_ids: dict[str, str] = {}  # an agent's call_tool step span -> the tool call id
        self.streamed: list[str] | None = None  # the text streamed so far, for a streamed run


class Recorder:
    """Groups spans and events into runs; thread-safe; forgets a run when its root ends.

    ``accept(span_id, instance, kind)`` decides whether a span that is not inside a known
    run starts a new traced run. ``on_finish(run)`` receives each finished run.
    """

    def __init__(
        self,
        accept: Callable[[str, Any, str], bool],
        on_finish: Callable[[RunRecord], None],
        *,
        max_open_runs: int = 1000,
    ) -> None:
        self._accept = accept
        self._on_finish = on_finish
        self.max_open_runs = max_open_runs
        self._index: dict[str, SpanRecord] = {}  # span id -> nearest significant span
        self._runs: OrderedDict[str, RunRecord] = OrderedDict()
        self._lock = threading.Lock()
        # the kind of step by class, then span name: None for a class none of whose spans
        # is a step (a text splitter, an embedding model), so its spans cost one lookup
        self._kinds: dict[type, dict[str, str | None] | None] = {}
        self._reported: set[tuple[str, type]] = set()

    # -- entry points (called by the dispatcher; never raise) ------------------------------

    def span_enter(self, id_: str, bound_args: Any, instance: Any, parent_id: str | None) -> None:
        try:
            self._enter(id_, bound_args, instance, parent_id)
        except Exception as exc:
            self.report_failure("span_enter", exc)

    def span_exit(self, id_: str, result: Any) -> None:
        try:
            self._end(id_, result, None)
        except Exception as exc:
            self.report_failure("span_exit", exc)

    def span_drop(self, id_: str, err: BaseException | None) -> None:
        try:
            self._end(id_, None, err if err is not None else RuntimeError("span dropped"))
        except Exception as exc:
            self.report_failure("span_drop", exc)

    def event(self, event: Any) -> None:
        try:
            self._event(event)
        except Exception as exc:
            self.report_failure("event", exc)

    @property
    def open_runs(self) -> int:
        return len(self._runs)

    @property
    def open_spans(self) -> int:
        return len(self._index)

    def clear(self) -> None:
        """Forget every open run (their graphs will not be built)."""
        with self._lock:
            self._index.clear()
            self._runs.clear()

    # -- internals -------------------------------------------------------------------------

    def report_failure(self, where: str, exc: Exception) -> None:
        key = (where, type(exc))
        if key in self._reported:
            logger.debug("opto_adapters tracer failed in %s (again)", where, exc_info=True)
            return
        self._reported.add(key)
        logger.exception(
            "opto_adapters tracer failed in %s; the app is unaffected but this run's graph may "
            "be missing (further %s errors here are logged at debug level)",
            where,
            type(exc).__name__,
        )

    def _class_kinds(self, cls: type) -> dict[str, str | None] | None:
        by_name = self._kinds[cls] = {} if can_be_step(cls) else None
        return by_name

    def _enter(self, id_: str, bound_args: Any, instance: Any, parent_id: str | None) -> None:
        parent = self._index.get(parent_id) if parent_id is not None else None
        if instance is None:  # workflow steps, plain functions: plumbing of the run
            if parent is not None:
                self._track(id_, parent)
                if id_.startswith(_CALL_TOOL, id_.find(".")):
                    # an agent's call_tool step: its event names the tool call it runs
                    tool_id = getattr(bound_args.arguments.get("ev"), "tool_id", None)
                    if isinstance(tool_id, str):
                        parent.run.tool_ids[id_] = tool_id
            return
        # the kind of step, cached by class then span name (no parsing per span); this is
        # the hottest path of the tracer, hence inlined
        cls = type(instance)
        try:
            by_name = self._kinds[cls]
        except KeyError:
            by_name = self._class_kinds(cls)
        kind: str | None = None
        name = ""
        if by_name is not None:
            name = id_[:-37] if len(id_) > 37 and id_[-37] == "-" else _span_name(id_)
            try:
                kind = by_name[name]
            except KeyError:
                kind = by_name[name] = classify(cls, name.rpartition(".")[2])
        if kind is None:
            if parent is not None:  # plumbing of a traced run (``_track``, inlined)
                run = parent.run
                run.instances.add(id(instance))
                self._index[id_] = parent
                run.span_ids.append(id_)
            return
        if parent is None:
            if kind == _OFFER_TOOLS or not self._accept(id_, instance, kind):
                return
            self._start_run(id_, name, kind, instance, bound_args)
            return
        run = parent.run
        run.instances.add(id(instance))
        if kind == _OFFER_TOOLS:
            tools = bound_args.arguments.get("tools")
            if parent.kind == "llm":
                parent.tools = tools
            else:
                parent.pending_tools = tools
            self._track(id_, parent)
        elif kind == "llm" and _same_streamed_call(parent, instance):
            self._track(id_, parent.children[-1])  # the stream of a call that already returned
        elif (kind == "llm" and parent.kind == "llm") or (
            kind == parent.kind
            and (
                instance is parent.instance
                or getattr(parent.instance, "base_tool", None) is instance
            )
        ):
            self._track(id_, parent)  # the same call seen again one level down
        else:
            record = SpanRecord(id_, name, kind, instance, bound_args.arguments, run)
            if kind == "llm" and parent.pending_tools is not None:
                record.tools, parent.pending_tools = parent.pending_tools, None
            if kind == "tool" and parent_id is not None:
                record.tool_call_id = run.tool_ids.pop(parent_id, None)
            parent.children.append(record)
            self._track(id_, record)

    def _track(self, id_: str, record: SpanRecord) -> None:
        # one dict store, atomic under the GIL: no lock (this runs for every span)
        self._index[id_] = record
        record.run.span_ids.append(id_)

    def _start_run(self, id_: str, name: str, kind: str, instance: Any, bound_args: Any) -> None:
        run = RunRecord()
        run.root = SpanRecord(id_, name, kind, instance, bound_args.arguments, run)
        run.instances.add(id(instance))
        run.span_ids.append(id_)
        evicted: list[RunRecord] = []
        with self._lock:
            self._index[id_] = run.root
            self._runs[id_] = run
            while len(self._runs) > self.max_open_runs:
                evicted.append(self._runs.popitem(last=False)[1])
                for sid in evicted[-1].span_ids:
                    self._index.pop(sid, None)
        if evicted:
            logger.warning(
                "opto_adapters tracer: %d run(s) never finished (over max_open_runs=%d); "
                "dropped the oldest without a graph",
                len(evicted),
                self.max_open_runs,
            )

    def _end(self, id_: str, result: Any, error: BaseException | None) -> None:
        record = self._index.get(id_)
        if record is None or record.id != id_:
            return  # untracked, or plumbing inside a significant span
        record.result = result
        record.error = error
        record.done = True
        run = record.run
        if record is not run.root:
            return
        if error is None and run.streamed is None and self._stream(id_, run, result):
            return  # finished when the stream is consumed
        self._close(id_, run)

    def _stream(self, id_: str, run: RunRecord, result: Any) -> bool:
        """A run that returned a stream (``streaming=True``): the LLM is called while the
        caller consumes it. Wrap the stream so those calls are spans of this run (their
        parent is this run's root span) and the run ends when the stream does."""
        attr = "response_gen" if hasattr(result, "response_gen") else None
        attr = attr or ("async_response_gen" if hasattr(result, "async_response_gen") else None)
        if attr is None or active_span_id is None:
            return False
        source = getattr(result, attr, None)
        if source is None:
            return False
        run.streamed = []
        wrapper = _wrap_async if hasattr(source, "__anext__") else _wrap_sync
        try:
            setattr(result, attr, wrapper(source, id_, run, lambda: self._close(id_, run)))
        except Exception:  # a frozen response object: trace without the stream
            run.streamed = None
            return False
        return True

    def _close(self, id_: str, run: RunRecord) -> None:
        """The run has ended: forget it and hand it on."""
        if run.streamed is not None:
            run.root.result = "".join(run.streamed)
        with self._lock:
            if self._runs.pop(id_, None) is None:
                return  # evicted, or finished twice
            for sid in run.span_ids:
                self._index.pop(sid, None)
        self._on_finish(run)

    def _event(self, event: Any) -> None:
        record = self._index.get(event.span_id)  # None for an event outside any span
        if record is None or record.kind != "llm":
            return
        handler = _EVENTS.get(type(event))
        if handler is not None:
            if record.llm is None:
                record.llm = {}
            handler(record.llm, event)
            # the call's latency: its first start event to its last end event
            record.llm.setdefault("first_event_at", event.timestamp)
            record.llm["last_event_at"] = event.timestamp


def _same_streamed_call(parent: SpanRecord, instance: Any) -> bool:
    """Whether a new LLM span is the body of the previous one: a streaming call
    (``astream_chat``) returns its generator at once, and some LLMs then run the call as a
    sibling span while the stream is read."""
    if not parent.children:
        return False
    previous = parent.children[-1]
    return (
        previous.kind == "llm"
        and previous.instance is instance
        and previous.done
        and previous.error is None
        and (hasattr(previous.result, "__anext__") or hasattr(previous.result, "__next__"))
        and "chat_content" not in (previous.llm or {})
    )


def _chat_end(data: dict[str, Any], ev: Any) -> None:
    data["chat_response"] = ev.response
    # the text now: an agent may rewrite the response object in place later (ReAct does)
    content = getattr(getattr(ev.response, "message", None), "content", None)
    if isinstance(content, str):
        data["chat_content"] = content


def _wrap_sync(source: Any, span_id: str, run: RunRecord, done: Callable[[], None]) -> Any:
    """Yield what ``source`` yields, each step inside the run's root span; then ``done``."""
    finished = False
    try:
        while True:
            token = active_span_id.set(span_id)
            try:
                item = next(source)
            except StopIteration:
                finished = True
                return
            finally:
                active_span_id.reset(token)
            if isinstance(item, str) and run.streamed is not None:
                run.streamed.append(item)
            yield item
    finally:
        if finished:
            done()


async def _wrap_async(source: Any, span_id: str, run: RunRecord, done: Callable[[], None]) -> Any:
    """The async form of ``_wrap_sync``."""
    finished = False
    try:
        while True:
            token = active_span_id.set(span_id)
            try:
                item = await source.__anext__()
            except StopAsyncIteration:
                finished = True
                return
            finally:
                active_span_id.reset(token)
            if isinstance(item, str) and run.streamed is not None:
                run.streamed.append(item)
            yield item
    finally:
        if finished:
            done()


def _predict_start(data: dict[str, Any], ev: Any) -> None:
    data.setdefault("template", ev.template)
    data.setdefault("template_args", ev.template_args)


def _chat_start(data: dict[str, Any], ev: Any) -> None:
    data.setdefault("messages", ev.messages)
    data.setdefault("additional_kwargs", ev.additional_kwargs)


def _completion_start(data: dict[str, Any], ev: Any) -> None:
    data.setdefault("prompt", ev.prompt)


def _output(key: str, attr: str) -> Callable[[dict[str, Any], Any], None]:
    def handle(data: dict[str, Any], ev: Any) -> None:
        data[key] = getattr(ev, attr)

    return handle


_EVENTS: dict[type, Callable[[dict[str, Any], Any], None]] = {
    LLMPredictStartEvent: _predict_start,
    LLMStructuredPredictStartEvent: _predict_start,
    LLMPredictEndEvent: _output("output", "output"),
    LLMStructuredPredictEndEvent: _output("output", "output"),
    LLMChatStartEvent: _chat_start,
    LLMChatEndEvent: _chat_end,
    LLMCompletionStartEvent: _completion_start,
    LLMCompletionEndEvent: _output("completion_response", "response"),
}


class SpanHandler(BaseSpanHandler):
    """Forwards span enter/exit/drop to a ``Recorder``; keeps no spans of its own."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        # A plain instance attribute, not a pydantic PrivateAttr: those are looked up through
        # BaseModel.__getattr__ (~2 us), and this one is read on every span and event.
        object.__setattr__(self, "_recorder", recorder)

    @classmethod
    def class_name(cls) -> str:
        return "OptoSpanHandler"

    def span_enter(
        self,
        id_: str,
        bound_args: Any,
        instance: Any = None,
        parent_id: str | None = None,
        tags: Any = None,
        **kwargs: Any,
    ) -> None:
        recorder = self._recorder  # straight to the recorder's internals: one call less per span
        try:
            recorder._enter(id_, bound_args, instance, parent_id)
        except Exception as exc:
            recorder.report_failure("span_enter", exc)

    def span_exit(
        self, id_: str, bound_args: Any, instance: Any = None, result: Any = None, **kwargs: Any
    ) -> None:
        recorder = self._recorder
        try:
            recorder._end(id_, result, None)
        except Exception as exc:
            recorder.report_failure("span_exit", exc)

    def span_drop(
        self,
        id_: str,
        bound_args: Any,
        instance: Any = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> None:
        self._recorder.span_drop(id_, err)

    def close(self) -> None:  # called by Dispatcher.shutdown()
        self._recorder.clear()

    # required by the abstract base; unused since the three methods above are overridden
    def new_span(self, *args: Any, **kwargs: Any) -> None:
        return None

    def prepare_to_exit_span(self, *args: Any, **kwargs: Any) -> None:
        return None

    def prepare_to_drop_span(self, *args: Any, **kwargs: Any) -> None:
        return None


class EventHandler(BaseEventHandler):
    """Forwards events to a ``Recorder``."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        # A plain instance attribute, not a pydantic PrivateAttr: those are looked up through
        # BaseModel.__getattr__ (~2 us), and this one is read on every span and event.
        object.__setattr__(self, "_recorder", recorder)

    @classmethod
    def class_name(cls) -> str:
        return "OptoEventHandler"

    def handle(self, event: Any, **kwargs: Any) -> None:
        recorder = self._recorder
        try:
            recorder._event(event)
        except Exception as exc:
            recorder.report_failure("event", exc)
