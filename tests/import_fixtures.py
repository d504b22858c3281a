"""Recorded runs made offline by real instrumentation, in the shapes exporters write.

LangSmith: LangChain's own run collector (``collect_runs``), each run dumped as LangSmith's
``Run`` schema (``model_dump(mode="json")``) and flattened with its parent id; and, for agents
(``collect_runs`` keeps only the runs of callbacks it is handed, so a ``create_agent`` run
comes out as four parentless runs without its graph nodes), ``langsmith_export``: LangChain's
``LangChainTracer`` itself, posting and patching runs to a recording client. OpenInference:
the OpenInference instrumentors over the OpenTelemetry SDK's in-memory exporter, converted to
the OTLP JSON an OpenTelemetry file exporter writes (one ``resourceSpans`` object per line), or
to Phoenix's flat span dicts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any


def langsmith_runs(fn: Callable[[], Any]) -> list[dict[str, Any]]:
    """The runs ``fn`` made, as a LangSmith export: flat JSON-able dicts, parents first."""
    from langchain_core.tracers.context import collect_runs

    with collect_runs() as cb:
        fn()
    out = []
    for root in cb.traced_runs:
        stack = [root]
        while stack:
            run = stack.pop()
            data = run.model_dump(mode="json", exclude={"child_runs"})
            data["parent_run_id"] = str(run.parent_run_id) if run.parent_run_id else None
            out.append(data)
            stack.extend(reversed(run.child_runs))
    return out


def write_jsonl(path, records) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


class OpenInference:
    """An instrumentor over an in-memory exporter, for the duration of a ``with`` block."""

    def __init__(self, framework: str) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        if framework == "langchain":
            from openinference.instrumentation.langchain import LangChainInstrumentor

            self.instrumentor = LangChainInstrumentor()
        else:
            from openinference.instrumentation.llama_index import LlamaIndexInstrumentor

            self.instrumentor = LlamaIndexInstrumentor()

    def __enter__(self) -> OpenInference:
        self.instrumentor.instrument(tracer_provider=self.provider)
        return self

    def __exit__(self, *exc: object) -> None:
        self.instrumentor.uninstrument()

    @property
    def spans(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())

    def otlp_lines(self) -> Iterator[dict[str, Any]]:
        """OTLP JSON, one export batch (here: one span) per line, as a file exporter writes."""
        for span in self.spans:
            yield {"resourceSpans": [{
                "resource": {"attributes": _attrs(dict(span.resource.attributes))},
                "scopeSpans": [{"scope": {"name": span.instrumentation_scope.name}, "spans": [_otlp_span(span)]}],
            }]}

    def phoenix_rows(self) -> Iterator[dict[str, Any]]:
        """Phoenix's flat span rows (``get_spans_dataframe`` written as JSON records)."""
        for span in self.spans:
            row = {
                "name": span.name,
                "span_kind": span.attributes.get("openinference.span.kind"),
                "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                "start_time": span.start_time,
                "status_code": span.status.status_code.name,
                "status_message": span.status.description or "",
                "context.span_id": f"{span.context.span_id:016x}",
                "context.trace_id": f"{span.context.trace_id:032x}",
            }
            for key, value in span.attributes.items():
                row[f"attributes.{key}"] = list(value) if isinstance(value, tuple) else value
            yield row


def _value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, (list, tuple)):
        return {"arrayValue": {"values": [_value(x) for x in v]}}
    return {"stringValue": str(v)}


def _attrs(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _value(v)} for k, v in attrs.items()]


def _otlp_span(span: Any) -> dict[str, Any]:
    out = {
        "traceId": f"{span.context.trace_id:032x}",
        "spanId": f"{span.context.span_id:016x}",
        "name": span.name,
        "kind": span.kind.value + 1,
        "startTimeUnixNano": str(span.start_time),
        "endTimeUnixNano": str(span.end_time),
        "attributes": _attrs(dict(span.attributes)),
        "status": {"code": span.status.status_code.value, "message": span.status.description or ""},
        "events": [{"name": e.name, "timeUnixNano": str(e.timestamp), "attributes": _attrs(dict(e.attributes))}
                   for e in span.events],
    }
    if span.parent is not None:
        out["parentSpanId"] = f"{span.parent.span_id:016x}"
    return out


class _Recorder:
    """A LangSmith client that keeps what it is sent: each run's create, then its patches."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}

    def create_run(self, **run: Any) -> None:
        self.runs[str(run["id"])] = dict(run)

    def update_run(self, run_id: Any, **change: Any) -> None:
        run = self.runs.setdefault(str(run_id), {"id": run_id})
        run.update({k: v for k, v in change.items() if v is not None})

    def flush(self) -> None:
        pass


def langsmith_export(fn: Callable[[Any], Any]) -> list[dict[str, Any]]:
    """The runs ``fn(callbacks)`` made, as LangSmith stores them: LangChain's own
    ``LangChainTracer`` posts and patches each run to a recording client (no network), and each
    run is written with LangSmith's JSON serializer, in the order the runs started, with the
    ``status`` and ``error`` fields of LangSmith's run export."""
    from langchain_core.tracers.langchain import LangChainTracer
    from langsmith._internal._serde import dumps_json

    client = _Recorder()
    tracer = LangChainTracer(client=client, project_name="fixtures")
    fn([tracer])
    out = []
    for run in client.runs.values():
        data = json.loads(dumps_json(run))
        data.setdefault("parent_run_id", None)
        data.setdefault("error", None)
        data["status"] = "error" if data["error"] else "success"
        out.append(data)
    return out
