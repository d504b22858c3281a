"""Importing recorded runs: throughput (spans per second) and peak memory, 10,000 vs 100,000 spans.

Run: python benchmarks/bench_traces_import.py [--quick]   (several minutes: 100,000 spans are
imported 4 times per format; --quick: 2,000 and 20,000 spans, one pass)

The files are made from one real run of a LangChain chain (prompt | chat model | parser,
fake model): LangSmith runs as LangChain's run collector records them, and OpenInference spans
from the OpenInference LangChain instrumentor over the OpenTelemetry SDK (the fixtures of
tests/import_fixtures.py), copied with fresh ids to N spans. LangSmith as JSON lines and as
one JSON list; OTLP JSON as an OpenTelemetry file exporter writes it (one export batch of
about 100 spans per line). Each file is imported with ``iter_traces`` against the live chain
(read, grouped into traces, matched to the parameters, built into graphs; each run dropped
once counted), which is what must stream: its peak memory (tracemalloc, a separate pass)
must not grow with the file. "read + group" is the streaming reader alone (records, grouped
into traces, no matching and no graphs). Baseline in the same run: ``json.loads`` of every
line (for the list, ``json.load`` of the whole file), the floor for any reader. Throughput:
best and median over REPEAT passes.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = (10_000, 100_000)
REPEAT = 3
BATCH = 100  # spans per OTLP line


def chain():
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    from tests.langchain_fakes import RecordingChatModel

    prompt = ChatPromptTemplate.from_messages(
        [("system", "You answer questions about {topic} in one short sentence."), ("human", "{question}")]
    )
    return prompt | RecordingChatModel(responses=["Paris."]) | StrOutputParser()


X = {"topic": "geography", "question": "What is the capital of France?"}


def langsmith_trace() -> list[dict]:
    from tests.import_fixtures import langsmith_runs

    app = chain()
    return langsmith_runs(lambda: app.invoke(X))


def otlp_trace() -> tuple[list[dict], dict]:
    """The OTLP span dicts of one run (one ``spans`` entry each)."""
    from tests.import_fixtures import OpenInference

    app = chain()
    with OpenInference("langchain") as oi:
        app.invoke(X)
    out = []
    for line in oi.otlp_lines():
        out.extend(line["resourceSpans"][0]["scopeSpans"][0]["spans"])
    return out, line["resourceSpans"][0]["resource"]


def langsmith_copies(template: list[dict], n_spans: int):
    """Runs of ``n_spans // len(template)`` traces, each ``template`` with fresh ids."""
    for _ in range(n_spans // len(template)):
        ids = {r["id"]: str(uuid.uuid4()) for r in template}
        root = ids[next(r["id"] for r in template if r["parent_run_id"] is None)]
        for r in template:
            copy = dict(r)
            copy["id"] = ids[r["id"]]
            copy["parent_run_id"] = ids.get(r["parent_run_id"]) if r["parent_run_id"] else None
            copy["trace_id"] = root
            copy["dotted_order"] = ""
            yield copy


def write_langsmith(path: Path, template: list[dict], n: int, *, as_list: bool) -> None:
    with open(path, "w", encoding="utf-8") as f:
        if as_list:
            f.write("[\n")
        for i, r in enumerate(langsmith_copies(template, n)):
            if as_list:
                f.write((",\n" if i else "") + json.dumps(r))
            else:
                f.write(json.dumps(r) + "\n")
        if as_list:
            f.write("\n]\n")


def write_otlp(path: Path, spans: list[dict], resource: dict, n: int) -> None:
    batch: list[dict] = []

    def flush(f) -> None:
        line = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": {"name": "bench"}, "spans": batch}]}]}
        f.write(json.dumps(line) + "\n")
        batch.clear()

    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n // len(spans)):
            trace = os.urandom(16).hex()
            ids = {s["spanId"]: os.urandom(8).hex() for s in spans}
            for s in spans:
                copy = dict(s, traceId=trace, spanId=ids[s["spanId"]])
                if "parentSpanId" in s:
                    copy["parentSpanId"] = ids[s["parentSpanId"]]
                batch.append(copy)
                if len(batch) >= BATCH:
                    flush(f)
        if batch:
            flush(f)


def import_once(path: Path) -> tuple[int, int]:
    from opto_adapters.langchain import OptoTracer
    from opto_adapters.traces import iter_traces

    stream = iter_traces(OptoTracer(chain()), path)
    runs = sum(1 for _ in stream)
    return runs, stream.report.spans


def read_once(path: Path, otlp: bool) -> int:
    """Read and group into traces only (no matching, no graphs): the streaming reader."""
    from opto_adapters.runs import langsmith, openinference

    if otlp:
        return sum(len(spans) for _, spans in openinference.read_traces(path))
    return sum(sum(1 for _ in root.walk()) for root in langsmith.read_runs(path))


def parse_once(path: Path, as_list: bool) -> int:
    with open(path, encoding="utf-8") as f:
        if as_list:
            return len(json.load(f))
        return sum(1 for line in f if json.loads(line) is not None)


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def peak(fn, *args) -> int:
    tracemalloc.start()
    try:
        fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    sizes = (2_000, 20_000) if quick else SIZES
    repeat = 1 if quick else REPEAT
    ls_template = langsmith_trace()
    otlp_spans, resource = otlp_trace()
    print("## Importing recorded runs (iter_traces against the live chain)\n")
    print(f"one trace: {len(ls_template)} LangSmith runs, {len(otlp_spans)} OpenInference spans; "
          f"{repeat} pass(es) per figure, peak memory in a separate tracemalloc pass\n")
    print("| format | spans | file MB | import spans/s (best / median) | read + group spans/s (best) "
          "| json.loads spans/s (best) | import / parse time | peak memory |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    peaks: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("LangSmith JSON lines", "LangSmith JSON list", "OTLP JSON lines"):
            for n in sizes:
                path = Path(tmp) / f"{label.replace(' ', '_')}_{n}.json"
                as_list = label == "LangSmith JSON list"
                if label.startswith("LangSmith"):
                    write_langsmith(path, ls_template, n, as_list=as_list)
                else:
                    write_otlp(path, otlp_spans, resource, n)
                size_mb = path.stat().st_size / 1e6
                times, spans = [], 0
                for _ in range(repeat):
                    seconds, (runs, spans) = timed(import_once, path)
                    times.append(seconds)
                base = min(timed(parse_once, path, as_list)[0] for _ in range(repeat))
                otlp = label.startswith("OTLP")
                read = min(timed(read_once, path, otlp)[0] for _ in range(repeat))
                if runs == 0 or spans == 0:
                    raise SystemExit(f"{label}: nothing imported from {path}")
                memory = peak(import_once, path)
                peaks.setdefault(label, []).append(memory)
                print(
                    f"| {label} | {spans:,} | {size_mb:.1f} | {spans / min(times):,.0f} / "
                    f"{spans / statistics.median(times):,.0f} | {spans / read:,.0f} | {spans / base:,.0f} | "
                    f"{min(times) / base:.1f}x | {memory / 2**20:.1f} MiB |"
                )
                path.unlink()
    print()
    for label, (small, large) in peaks.items():
        print(f"{label}: peak memory {small / 2**20:.1f} MiB at {sizes[0]:,} spans -> "
              f"{large / 2**20:.1f} MiB at {sizes[1]:,} spans ({large / small:.2f}x for {sizes[1] // sizes[0]}x the file)")


if __name__ == "__main__":
    main()
