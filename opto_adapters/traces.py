"""``from_traces``: runs recorded elsewhere (LangSmith, OpenInference, Phoenix) as OPTO graphs
over the live app's parameters, with the feedback users left on them.

The format is detected from the first record; each trace is read, matched to the app's
parameters (``runs.attach``) and built into a graph by the one builder, so an optimizer
step on an imported run changes the live app, exactly as on a run traced here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any

from . import runs
from .runs.attach import Attacher, Evidence, ImportReport
from .runs.feedback import FeedbackRecord, combine, normal_id, read_feedback
from .runs.records import TraceFormatError, read_records
from .runs.stored import StoredMatcher
from .trace import Feedback, Parameter
from .trace.tracer import TracedRun

__all__ = ["ImportMismatchError", "ImportedRun", "ImportedRuns", "TraceStream", "from_traces", "iter_traces"]

logger = logging.getLogger("opto_adapters.traces")

FORMATS = ("langsmith", "otlp", "phoenix", "store")


class ImportMismatchError(ValueError):
    """The imported runs used none of the app's parameters (runs of another app?)."""


@dataclass
class ImportedRun(TracedRun):
    """One imported run: its graph (over the live parameters) and the feedback left on it."""

    feedback: Feedback | None = None
    trace_id: str = ""
    source: str = ""


class ImportedRuns(list):
    """The imported runs, in file order, with ``report`` (what matched and why) and the live
    ``parameters`` their graphs use (give these to the optimizer)."""

    def __init__(self, items: Iterable[ImportedRun], report: ImportReport, parameters: list[Parameter]) -> None:
        super().__init__(items)
        self.report = report
        self.parameters = parameters

    @property
    def with_feedback(self) -> list[ImportedRun]:
        return [r for r in self if r.feedback is not None]


def from_traces(
    app: Any,
    traces: Any,
    feedback: Any = None,
    *,
    format: str | None = None,
    window: int = 1000,
) -> ImportedRuns:
    """Import recorded runs of ``app`` (an app or its tracer) from ``traces``.

    ``traces``: a path, an open file, or an iterable of records (or a list of paths): LangSmith
    runs, OTLP JSON lines or Phoenix spans (``format`` to skip detection), or an opto_adapters
    store (``runs.sqlite``, ``store:runs.sqlite``, ``store:runs.sqlite#RUN`` for one run): its
    stored graphs, with the feedback of their evaluations. ``feedback``: the
    same kinds of source holding LangSmith feedback, span annotations or a
    ``trace_id|span_id|run_id, score, comment`` table. Returns the runs with ``.graph`` and
    ``.feedback``, ready for ``optimizer.backward(run.graph, run.feedback)``. Raises
    ``ImportMismatchError`` when no run used any of the app's parameters. For files too large
    to hold every graph at once, ``iter_traces`` gives the runs one at a time.
    """
    stream = iter_traces(app, traces, feedback, format=format, window=window)
    return ImportedRuns(list(stream), stream.report, stream.parameters)


def iter_traces(
    app: Any,
    traces: Any,
    feedback: Any = None,
    *,
    format: str | None = None,
    window: int = 1000,
) -> TraceStream:
    """``from_traces`` one run at a time: the file is read as the runs are taken, and a run
    is not kept once given (memory holds the traces within ``window`` records, and the
    feedback). ``.report`` is complete, and ``ImportMismatchError`` raised, when the
    iteration ends."""
    return TraceStream(app, traces, feedback, format=format, window=window)


class TraceStream:
    """The runs of an import, as they are read; see ``iter_traces``."""

    def __init__(self, app: Any, traces: Any, feedback: Any, *, format: str | None, window: int) -> None:
        from .train.apps import as_tracer

        tracer = as_tracer(app)
        self.parameters: list[Parameter] = list(tracer.parameters)
        if tracer is not app and hasattr(tracer, "close"):
            tracer.close()  # made here only to find the parameters; their bindings stay usable
        self.report = ImportReport()
        self._syntax = "llama" if type(tracer).__module__.startswith("opto_adapters.llama_index") else "fstring"
        self._traces, self._format, self._window = traces, format, window
        self._wanted = _feedback_index(feedback)
        self._started = False

    def __iter__(self) -> Iterator[ImportedRun]:
        if self._started:
            raise RuntimeError("an import is read once: call iter_traces again to read the traces again")
        self._started = True
        report, wanted, parameters = self.report, self._wanted, self.parameters
        attacher = Attacher(parameters, report, syntax=self._syntax)
        stored: StoredMatcher | None = None
        given = 0
        for source in _sources(self._traces):
            name = source if isinstance(source, (str, os.PathLike)) else type(source).__name__
            store = _store_path(source, self._format)
            if store is not None:
                stored = stored or StoredMatcher(parameters, report)
                for run in _stored_runs(store, stored):
                    report.traces += 1
                    records = wanted.pop(normal_id(run.trace_id), [])
                    if records:  # feedback given since, beside what the evaluation recorded
                        extra = combine(records)
                        if run.feedback is not None:
                            text = "\n".join(t for t in (run.feedback.text, extra.text) if t)
                            extra = Feedback(score=extra.score if extra.score is not None else run.feedback.score, text=text)
                        run.feedback = extra
                        report.feedback += len(records)
                    given += 1
                    yield run
                continue
            for trace_id, root, evidence in _traces(source, self._format, self._window):
                report.traces += 1
                uses = attacher.attach(root, evidence)
                graph = runs.build_graph(
                    root,
                    uses=uses,
                    input_name=_input_name,
                    metadata={"trace_id": trace_id, "source": str(name), "imported": True},
                )
                fb = None
                if wanted:
                    ids = {normal_id(s.id) for s in root.walk()} | {normal_id(trace_id)}
                    records = [r for i in ids for r in wanted.pop(i, ())]
                    if records:
                        steps = {normal_id(s.id): s.name for s in root.walk() if s is not root}
                        fb = combine(records, steps)
                        report.feedback += len(records)
                given += 1
                yield ImportedRun(root.output, graph, _error(root), fb, trace_id, str(name))
        attacher.finish()
        if stored is not None:
            stored.finish()
            report.unused = [n for n in report.unused if n not in report.parameters]
        report.unknown_feedback = [r for records in wanted.values() for r in records]
        if report.unknown_feedback:
            logger.warning(
                "%d feedback record(s) name no imported run (first: %s at line %d): were they "
                "exported with these traces?",
                len(report.unknown_feedback), report.unknown_feedback[0].target, report.unknown_feedback[0].line,
            )
        if given and not report.matched:
            raise ImportMismatchError(
                f"none of the app's parameters ({', '.join(p.name for p in parameters) or 'none'}) was "
                f"used by the {report.traces} imported trace(s): are these runs of this app?\n"
                + report.summary()
            )
        logger.info("opto_adapters: %s", report.summary().replace("\n", "; "))


_SQLITE = b"SQLite format 3\x00"


def _store_path(source: Any, format: str | None) -> tuple[str, int | None] | None:
    """``(path, run id or None)`` when ``source`` names an opto_adapters store."""
    if format not in (None, "store") or not isinstance(source, (str, os.PathLike)):
        return None
    text = os.fspath(source)
    named = text.startswith("store:") or format == "store"
    if text.startswith("store:"):
        text = text[len("store:"):]
    run: int | None = None
    if named and "#" in text:
        text, _, tail = text.rpartition("#")
        try:
            run = int(tail)
        except ValueError:
            raise ValueError(f"store:{text}#{tail}: the run after '#' must be a number (see `opto-adapters runs {text}`)") from None
    if not named:
        try:
            with open(text, "rb") as f:
                named = f.read(len(_SQLITE)) == _SQLITE
        except OSError:
            return None
    return (text, run) if named else None


def _stored_runs(store: tuple[str, int | None], matcher: StoredMatcher) -> Iterator[ImportedRun]:
    """The stored graphs of the store's runs (or of one), over the live parameters, each with
    the feedback its evaluation recorded."""
    from .train.graphs import graph_from_json
    from .train.store import Store

    path, only = store
    if not os.path.exists(path):
        raise FileNotFoundError(f"no store at {path!r}")
    with Store(path, readonly=True) as db:
        runs_ = [db.run(only)] if only is not None else db.runs()
        for run in runs_:
            skipped = 0
            for e in db.evaluations(run.id):
                data = db.graph(e.id)
                if data is None:
                    skipped += 1
                    continue
                live = matcher.match(data)
                try:
                    graph = graph_from_json(data, live)
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    matcher.report.unmatched[f"a stored graph of run {run.id} cannot be read ({exc})"] += 1
                    continue
                trace_id = f"store:{run.id}:{e.split}:{e.index}:v{e.version_id}"
                graph.metadata.update(trace_id=trace_id, source=path, imported=True)
                feedback = Feedback(score=e.score, text=e.feedback) if e.score is not None or e.feedback.strip() else None
                error = RuntimeError(e.error) if e.error else None
                yield ImportedRun(None if error else graph.value_of(graph.output), graph, error, feedback, trace_id, path)
            if skipped:
                logger.warning("run %d of %s: %d evaluation(s) without a stored graph left out", run.id, path, skipped)


def _sources(traces: Any) -> list[Any]:
    if isinstance(traces, (list, tuple)) and traces and all(isinstance(t, (str, os.PathLike)) for t in traces):
        return list(traces)
    return [traces]


def _feedback_index(feedback: Any) -> dict[str, list[FeedbackRecord]]:
    index: dict[str, list[FeedbackRecord]] = {}
    if feedback is None:
        return index
    for source in _sources(feedback):
        for record in read_feedback(source):
            index.setdefault(record.target, []).append(record)
    return index


def _traces(source: Any, format: str | None, window: int) -> Iterator[tuple[str, runs.Span, dict[str, Evidence]]]:
    records = read_records(source)
    first = next(records, None)
    if first is None:
        return
    kind = format or _detect(first[1], first[0])
    if kind == "store":
        raise ValueError("format='store' reads a store file: give its path (runs.sqlite), not records")
    if kind not in FORMATS:
        raise ValueError(f"unknown trace format {format!r}; expected one of {FORMATS}")
    stream = (record for _, record in chain([first], records))
    if kind == "langsmith":
        yield from _langsmith(stream, window)
    else:
        from .runs import openinference

        for trace_id, spans in openinference.read_traces(stream, window=window):
            root, evidence = openinference.to_spans(spans)
            yield trace_id, root, evidence


def _detect(record: dict[str, Any], line: int) -> str:
    from .runs import langsmith, openinference

    if langsmith.is_run(record):
        return "langsmith"
    if openinference.is_otlp(record):
        return "otlp"
    if openinference.is_phoenix(record):
        return "phoenix"
    raise TraceFormatError(
        f"record {line} is in no format opto_adapters reads: keys {sorted(record)[:12]}. "
        "Expected LangSmith runs ('id', 'run_type', 'parent_run_id'...), OTLP JSON "
        "('resourceSpans') or Phoenix spans ('context.span_id', 'span_kind')"
    )


def _langsmith(records: Iterator[dict[str, Any]], window: int) -> Iterator[tuple[str, runs.Span, dict[str, Evidence]]]:
    from .runs import langsmith

    try:
        from .langchain.discovery import Discovered
        from .langchain.spans import Translator
    except ImportError as exc:
        raise ImportError(f"reading LangSmith runs needs langchain-core: pip install langchain-core ({exc})") from exc
    translator = Translator(Discovered(), {})
    for root in langsmith.read_runs(records, window=window):
        evidence = {str(run.id): langsmith.evidence(run) for run in root.walk()}
        yield root.trace_id or root.id, translator.translate(root), evidence


def _input_name(key: str) -> str:
    return "input" if key == "input" else f"input.{key}"


def _error(root: runs.Span) -> BaseException | None:
    if root.error is None:
        return None
    return root.error if isinstance(root.error, BaseException) else RuntimeError(str(root.error))
