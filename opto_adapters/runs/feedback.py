"""Feedback recorded elsewhere: LangSmith feedback, OpenInference / Phoenix span annotations,
or a CSV / JSON lines table of ``trace_id`` or ``span_id`` (or ``run_id``), ``score``, ``comment``.

Each record names the run, span or trace it is about; ``combine`` turns the records about
one imported run into the ``Feedback`` the optimizer reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..trace import Feedback
from .records import TraceFormatError, read_records

__all__ = ["FeedbackRecord", "combine", "read_feedback"]

_TARGETS = ("run_id", "span_id", "context.span_id", "trace_id", "context.trace_id")
_SCORES = ("score", "value", "result.score")
_COMMENTS = ("comment", "explanation", "result.explanation", "correction", "label", "result.label")


@dataclass(frozen=True)
class FeedbackRecord:
    """One piece of feedback about ``target`` (a run, span or trace id, without ``0x``)."""

    target: str
    key: str = ""
    score: float | None = None
    comment: str = ""
    line: int = 0

    def text(self) -> str:
        """``key: comment`` (or ``key = score`` when there is no comment)."""
        label = self.key or "feedback"
        if self.comment:
            return f"{label}: {self.comment}"
        return f"{label} = {self.score:g}" if self.score is not None else label


def normal_id(value: Any) -> str:
    """A run, span or trace id as imports compare them: a string, lower case, no ``0x``,
    no dashes (LangSmith UUIDs and OpenTelemetry hex ids alike)."""
    text = str(value).strip().lower()
    if text.startswith("0x"):
        text = text[2:]
    return text.replace("-", "")


def read_feedback(source: Any) -> Iterator[FeedbackRecord]:
    """The feedback records of ``source`` (a path, an open file or an iterable of dicts)."""
    for line, record in read_records(source):
        flat = _flat(record)
        target = next((flat[k] for k in _TARGETS if flat.get(k) not in (None, "")), None)
        if target is None:
            raise TraceFormatError(
                f"feedback record at line {line} names no run: expected one of {list(_TARGETS)}, "
                f"got keys {sorted(flat)[:12]}"
            )
        score = next((s for s in (_number(flat.get(k)) for k in _SCORES) if s is not None), None)
        comment = next((str(flat[k]).strip() for k in _COMMENTS if _text(flat.get(k))), "")
        if score is None and not comment:
            raise TraceFormatError(
                f"feedback record at line {line} for {target} has neither a score nor a comment"
            )
        key = str(flat.get("key") or flat.get("name") or "")
        yield FeedbackRecord(normal_id(target), key, score, comment, line)


def combine(records: Iterable[FeedbackRecord], step: dict[str, str] | None = None) -> Feedback:
    """One ``Feedback`` from the records about one run: their mean score and one line of
    text each (naming the step a record was about, from ``step``: target id -> step name)."""
    records = list(records)
    scores = [r.score for r in records if r.score is not None]
    lines = []
    for r in records:
        where = (step or {}).get(r.target)
        lines.append(f"{r.text()} (on step {where})" if where else r.text())
    text = "\n".join(lines) if any(r.comment for r in records) or len(records) > 1 else ""
    return Feedback(score=sum(scores) / len(scores) if scores else None, text=text)


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            for k2, v2 in _flat(value).items():
                out[f"{key}.{k2}"] = v2
        else:
            out[str(key)] = value
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str) and value.strip():
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())
