"""Records from files, one at a time, and records grouped into traces as they stream by.

Recorded runs come as JSON lines, one JSON list, CSV, or Python iterables of dicts.
``read_records`` yields ``(line, record)`` pairs without loading the file (a JSON list is
decoded one element at a time); ``group_traces`` turns a stream of span records into whole
traces with bounded memory. A file cut short is an error that names the line.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

__all__ = ["TraceFormatError", "group_traces", "read_records", "tool_schema_name"]

logger = logging.getLogger("opto_adapters.runs")

_CHUNK = 1 << 16


class TraceFormatError(ValueError):
    """A trace or feedback file that cannot be read: names the source and the line."""


def _name(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or type(source).__name__


def read_records(source: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, record)`` for each record of ``source``: a path, an open text file, or an
    iterable of dicts (or of JSON strings). Files are JSON lines, one JSON list, or CSV
    (``.csv``); ``line`` is 1-based (the element's index for iterables)."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no trace or feedback file at {path!r}")
        with open(path, encoding="utf-8", newline="") as f:
            if path.lower().endswith(".csv"):
                yield from _csv(f, path)
            else:
                yield from _json_text(f, path)
        return
    if isinstance(source, io.IOBase) or hasattr(source, "read"):
        yield from _json_text(source, _name(source))
        return
    if isinstance(source, dict):
        source = [source]
    for i, item in enumerate(source, 1):
        if isinstance(item, str):
            try:
                item = json.loads(item)
            except json.JSONDecodeError as exc:
                raise TraceFormatError(f"record {i}: not JSON ({exc.msg}): {item[:80]!r}") from None
        if not isinstance(item, dict):
            raise TraceFormatError(
                f"record {i}: expected a dict (one run or span), got {type(item).__name__}"
            )
        yield i, item


def _csv(f: IO[str], path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(f)
    for row in reader:
        yield reader.line_num, {k: v for k, v in row.items() if k is not None}


def _json_text(f: IO[str], path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """JSON lines, or a JSON list decoded element by element (the first character decides)."""
    first = ""
    head = ""
    while not first:
        head = f.read(_CHUNK)
        if not head:
            return  # an empty file: no records
        first = head.lstrip()[:1]
    if first == "[":
        yield from _json_list(f, path, head)
        return
    line = 0
    partial: list[str] = []  # the pieces of a line longer than one read
    chunk = head
    while chunk:
        lines = chunk.split("\n")
        if len(lines) > 1:
            lines[0] = "".join(partial) + lines[0]
            partial = []
            for text in lines[:-1]:
                line += 1
                record = _decode(text, path, line, last=False)
                if record is not None:
                    yield line, record
        partial.append(lines[-1])
        chunk = f.read(_CHUNK)
    rest = "".join(partial)
    if rest.strip():
        line += 1
        record = _decode(rest, path, line, last=True)
        if record is not None:
            yield line, record


def _decode(text: str, path: str, line: int, *, last: bool) -> dict[str, Any] | None:
    text = text.strip()
    if not text:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        cut = "; the file looks cut short" if last else ""
        raise TraceFormatError(
            f"{path}, line {line}: not a JSON record ({exc.msg} at column {exc.colno}){cut}. "
            "Expected JSON lines (one run or span per line) or one JSON list"
        ) from None
    if not isinstance(record, dict):
        raise TraceFormatError(
            f"{path}, line {line}: expected a JSON object (one run or span), got {type(record).__name__}"
        )
    return record


def _json_list(f: IO[str], path: str, head: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The elements of one JSON list, decoded one at a time from a buffer of about one read
    (an index moves along the buffer; it is cut only when more is read, so each character is
    copied a bounded number of times)."""
    decoder = json.JSONDecoder()
    buf = head[head.index("[") + 1 :]
    lines_before = head[: head.index("[")].count("\n")
    pos = 0
    index = 0
    eof = False
    while True:
        start = pos
        while pos < len(buf) and (buf[pos].isspace() or buf[pos] == ","):
            pos += 1
        lines_before += buf.count("\n", start, pos)
        if pos < len(buf) and buf[pos] == "]":
            return
        if pos < len(buf):
            try:
                record, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                if eof:
                    raise TraceFormatError(
                        f"{path}, line {lines_before + exc.lineno - buf.count(chr(10), 0, pos)}: element "
                        f"{index + 1} of the JSON list is not complete ({exc.msg}); the file looks cut short"
                    ) from None
            else:
                index += 1
                if not isinstance(record, dict):
                    raise TraceFormatError(
                        f"{path}, element {index} of the JSON list: expected an object, got "
                        f"{type(record).__name__}"
                    )
                yield lines_before + 1, record
                lines_before += buf.count("\n", pos, end)
                pos = end
                continue
        if eof:
            raise TraceFormatError(f"{path}: the JSON list is not closed with ']'; the file looks cut short")
        more = f.read(max(_CHUNK, len(buf) - pos))  # doubling: a long element is tried log(n) times
        if not more:
            eof = True
        buf = buf[pos:] + more
        pos = 0


def group_traces(
    items: Iterable[Any],
    *,
    trace_of: Callable[[Any], str],
    is_root: Callable[[Any], bool],
    window: int = 1000,
    max_open: int = 10_000,
) -> Iterator[tuple[str, list[Any], bool]]:
    """``(trace_id, items, complete)`` per trace, as soon as the trace is complete.

    A trace is complete when its root has been seen and ``window`` further items went by
    without one of it (exports are written trace by trace, or in time order, so a trace's
    items lie close together); the rest are given at the end. Memory holds the open traces
    only: those seen within the last ``window`` items, plus traces still waiting for their
    root (at most ``max_open``; beyond that the oldest is given, ``complete=False``). An item
    of a trace already given is logged and left out; given traces are remembered for
    ``10 * window`` items (so memory stays flat however long the file), an item later than
    that starts a trace of its own, which has no root.
    """
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window!r}")
    open_: OrderedDict[str, tuple[list[Any], int]] = OrderedDict()  # by last item seen
    waiting: OrderedDict[str, list[Any]] = OrderedDict()  # old traces without a root yet
    rooted: set[str] = set()
    done: OrderedDict[str, int] = OrderedDict()  # ids of given traces -> when they were given
    remember = 10 * max(window, 1)
    for i, item in enumerate(items):
        while done and next(iter(done.values())) < i - remember:
            done.popitem(last=False)
        tid = trace_of(item)
        if tid in done:
            logger.warning(
                "a run of trace %s came after the trace was complete (%d items later); it is "
                "left out: sort the export by trace, or raise window=", tid, window
            )
            continue
        entry = open_.pop(tid, None)
        group = entry[0] if entry is not None else waiting.pop(tid, [])
        group.append(item)
        open_[tid] = (group, i)
        if is_root(item):
            rooted.add(tid)
        while open_:
            first, (group, last) = next(iter(open_.items()))
            if i - last < window:
                break
            del open_[first]
            if first in rooted:
                done[first] = i
                rooted.discard(first)
                yield first, group, True
            else:
                waiting[first] = group
                if len(waiting) > max_open:
                    old, old_group = waiting.popitem(last=False)
                    logger.warning("trace %s has no root run; given as it is", old)
                    done[old] = i
                    yield old, old_group, False
    for tid, (group, _) in open_.items():
        yield tid, group, tid in rooted
    for tid, group in waiting.items():
        yield tid, group, False


def tool_schema_name(schema: Any) -> str | None:
    """The tool's name in a recorded tool schema (OpenAI ``{"function": {"name"}}``, a bare
    ``{"name"}``, or a JSON schema's ``title``)."""
    if isinstance(schema, dict):
        fn = schema.get("function")
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return fn["name"]
        for key in ("name", "title"):
            if isinstance(schema.get(key), str):
                return schema[key]
    return None
