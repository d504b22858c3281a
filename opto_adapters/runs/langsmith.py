"""LangSmith / LangChain runs as LangSmith exports them, read one trace at a time.

An export is JSON lines (or one JSON list) of flat runs: ``id``, ``parent_run_id``,
``trace_id``, ``dotted_order``, ``run_type``, ``name``, ``inputs``, ``outputs``, ``error``,
``serialized``, ``extra`` (``invocation_params``, ``metadata``), ``tags``... ``read_runs``
links them into ``RecordedRun`` trees, shaped like ``langchain_core``'s ``Run`` (the LangChain
adapter's translator reads them as it reads live runs), and yields each tree once its trace is
complete (see ``records.group_traces``: memory holds the traces seen within the last
``window`` runs, never the file). ``evidence`` says what a run tells about the objects that
made it: a prompt's templates (``serialized``), the tools offered to a model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .attach import Evidence
from .feedback import normal_id
from .records import TraceFormatError, group_traces, read_records, tool_schema_name

__all__ = ["RecordedRun", "evidence", "is_run", "read_runs"]

_ROLE_OF_TEMPLATE = {
    "SystemMessagePromptTemplate": "system",
    "HumanMessagePromptTemplate": "human",
    "AIMessagePromptTemplate": "ai",
    "ChatMessagePromptTemplate": "chat",
}


def is_run(record: Mapping[str, Any]) -> bool:
    """Whether ``record`` looks like a LangSmith run."""
    return "run_type" in record and "id" in record


@dataclass(eq=False)
class RecordedRun:
    """One exported run, with the attributes of a ``langchain_core`` ``Run`` the adapters read."""

    id: str
    name: str = ""
    run_type: str = "chain"
    parent_run_id: str | None = None
    trace_id: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] | None = None
    error: str | None = None
    serialized: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    dotted_order: str = ""
    start_time: Any = None
    end_time: Any = None
    child_runs: list[RecordedRun] = field(default_factory=list)
    line: int = 0

    @classmethod
    def from_record(cls, record: Mapping[str, Any], line: int = 0) -> RecordedRun:
        if not is_run(record):
            raise TraceFormatError(
                f"line {line}: not a LangSmith run (needs 'id' and 'run_type'), got keys "
                f"{sorted(record)[:12]}"
            )
        inputs = _object(record.get("inputs"))
        run_type = str(record.get("run_type") or "chain")
        if run_type == "llm" and isinstance(inputs.get("messages"), list):
            run_type = "chat_model"  # LangSmith stores chat model runs as "llm" with messages
        parent = record.get("parent_run_id")
        return cls(
            id=str(record["id"]),
            name=str(record.get("name") or ""),
            run_type=run_type,
            parent_run_id=str(parent) if parent else None,
            trace_id=str(record.get("trace_id") or _trace_of_order(record.get("dotted_order")) or ""),
            inputs=inputs,
            outputs=_object(record.get("outputs")) if record.get("outputs") is not None else None,
            error=record.get("error") or None,
            serialized=record.get("serialized") if isinstance(record.get("serialized"), dict) else None,
            extra=_object(record.get("extra")),
            tags=[str(t) for t in record.get("tags") or ()],
            dotted_order=str(record.get("dotted_order") or record.get("start_time") or ""),
            start_time=record.get("start_time"),
            end_time=record.get("end_time"),
            line=line,
        )

    def walk(self) -> Iterator[RecordedRun]:
        stack = [self]
        while stack:
            run = stack.pop()
            yield run
            stack.extend(reversed(run.child_runs))


def read_runs(source: Any, *, window: int = 1000) -> Iterator[RecordedRun]:
    """The root run of each trace in ``source`` (a path, an open file, or an iterable of run
    dicts), its children linked in ``child_runs``; see the module docstring."""
    parents: dict[str, str] = {}  # run id -> trace id, for runs without trace_id

    def runs() -> Iterator[RecordedRun]:
        for line, record in read_records(source):
            run = RecordedRun.from_record(record, line)
            if not run.trace_id:
                run.trace_id = parents.get(run.parent_run_id or "", "") or (run.id if run.parent_run_id is None else run.parent_run_id)
                if len(parents) < 100_000:
                    parents[run.id] = run.trace_id
            yield run

    for _tid, group, _complete in group_traces(
        runs(), trace_of=lambda r: normal_id(r.trace_id), is_root=lambda r: r.parent_run_id is None,
        window=window,
    ):
        yield link(group)
        for run in group:
            parents.pop(run.id, None)


def link(group: list[RecordedRun]) -> RecordedRun:
    """The root of one trace's runs, children linked (a trace without a root gets a chain
    run standing for the missing one)."""
    by_id = {r.id: r for r in group}
    roots = []
    for run in group:
        run.child_runs = []
    for run in group:
        parent = by_id.get(run.parent_run_id or "")
        if parent is None or parent is run:
            roots.append(run)
        else:
            parent.child_runs.append(run)
    for run in group:
        run.child_runs.sort(key=lambda r: r.dotted_order)
    if len(roots) == 1:
        return roots[0]
    roots.sort(key=lambda r: r.dotted_order)
    missing = RecordedRun(id=f"{group[0].trace_id}:root", name="trace", trace_id=group[0].trace_id)
    missing.child_runs = roots
    return missing


def evidence(run: RecordedRun) -> Evidence:
    """What ``run`` tells about the live objects behind it: the templates of a prompt run
    (from ``serialized``), the tools a model run was offered (``invocation_params``)."""
    ev = Evidence(name=run.name)
    if run.run_type == "prompt" and run.serialized:
        ev.templates = _templates(run.serialized)
        ev.variables = {str(k): v for k, v in (run.inputs or {}).items()}
    if run.run_type in ("llm", "chat_model"):
        params = (run.extra or {}).get("invocation_params") or {}
        for schema in params.get("tools") or ():
            name = tool_schema_name(schema)
            if name:
                ev.tools.append(name)
    if run.run_type == "tool":
        ev.tool = run.name
    return ev


def _templates(serialized: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(role, template, format)`` of each template in a serialized prompt."""
    found: list[tuple[str, str, str]] = []
    stack: list[tuple[Any, str]] = [(serialized, "")]
    while stack:
        node, role = stack.pop()
        if isinstance(node, list):
            stack.extend((x, role) for x in reversed(node))
            continue
        if not isinstance(node, dict):
            continue
        cls = (node.get("id") or [""])[-1] if isinstance(node.get("id"), list) else ""
        role = _ROLE_OF_TEMPLATE.get(str(cls), role)
        kwargs = node.get("kwargs") if isinstance(node.get("kwargs"), dict) else {}
        if isinstance(kwargs.get("template"), str):
            found.append((role or "prompt", kwargs["template"], str(kwargs.get("template_format") or "f-string")))
        for key in ("messages", "prompt", "prompt_template"):
            if key in kwargs:
                stack.append((kwargs[key], role))
    return found


def _object(value: Any) -> dict[str, Any]:
    if isinstance(value, str):  # some exports keep inputs/outputs as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {"input": value}
    return dict(value) if isinstance(value, dict) else ({} if value is None else {"input": value})


def _trace_of_order(order: Any) -> str:
    """The root run id at the start of a ``dotted_order`` (``<time>Z<uuid>.<time>Z<uuid>``)."""
    if not isinstance(order, str) or "Z" not in order:
        return ""
    return order.split(".", 1)[0].split("Z", 1)[1]
