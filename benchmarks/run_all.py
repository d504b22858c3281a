"""Run every benchmark and write benchmarks/RESULTS.md: a summary table (ours next to
trace-opt measured in the same run, with the aims), the machine it ran on, and each
benchmark's full output.

Run: python benchmarks/run_all.py [--readme]   (about five minutes on a 2-core machine;
     --readme also copies the summary table and machine line into README's Benchmarks section)

The trace-opt columns need the peer library, a benchmark-only dependency (the `bench` extra
of pyproject.toml names it; CI and the tests never install it). Install it with:

    pip install --no-deps "trace-opt==0.1.3.8" graphviz

(``--no-deps``: its litellm, xgboost and scikit-learn are not needed; see benchmarks/peer.py.)
Without it every benchmark still runs our side and says how to install the peer.
bench_search also runs the `gepa` package's engine side by side when it is installed
(`pip install gepa`, also in the `bench` extra).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peer  # noqa: E402

BENCHMARKS = [
    "bench_trace",
    "bench_trace_ops",
    "bench_prompt",
    "bench_step",
    "bench_import",
    "bench_langchain",
    "bench_llama_index",
    "bench_train",
    "bench_faults",
    "bench_search",
    "bench_traces_import",
    "bench_executors",
]
NA = "n/a"
NONE = "-"  # no trace-opt counterpart


def run(name: str) -> tuple[str, float]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(HERE / f"{name}.py")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout, time.monotonic() - start


def find(pattern: str, text: str, group: int = 1) -> str:
    match = re.search(pattern, text, flags=re.M)
    return match.group(group) if match else "?"


def row(text: str, *first: str) -> list[str] | None:
    """The cells of the markdown table row whose first cells are ``first``."""
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[: len(first)] == list(first):
                return cells
    return None


def section(text: str, header: str) -> str:
    """The table whose header line starts with ``header`` (up to the next blank line)."""
    start = text.find("\n" + header)
    if start < 0:
        return ""
    end = text.find("\n\n", start + 1)
    return text[start : end if end > 0 else len(text)]


def cell(text: str, first: tuple[str, ...], col: int) -> str:
    cells = row(text, *first)
    return cells[col] if cells and col < len(cells) and cells[col] else "?"


def number(text: str) -> float | None:
    """The figure in a cell such as '1.04', '87.7 ms', '1.34 s', '12,345', in base units of the
    cell (seconds for times with a unit)."""
    match = re.match(r"^([\d,.]+)\s*(s|ms|us)?$", text.strip())
    if not match:
        return None
    value = float(match.group(1).replace(",", ""))
    scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6, None: 1.0}[match.group(2)]
    return value * scale


def seconds_text(value: float | None) -> str:
    if value is None:
        return "?"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} us"


def tenth(theirs: str) -> str:
    """The '10x faster than trace-opt' aim, from the measured trace-opt figure."""
    value = number(theirs)
    return f"<= {seconds_text(value / 10)} (a tenth of trace-opt's)" if value else NA


def per_op(at_1000: str, at_10000: str) -> str:
    """trace-opt's backward per operation at N=1,000 and N=10,000, from its totals."""
    low, high = number(at_1000), number(at_10000)
    if low is None or high is None:
        return NA
    return f"{low / 1_000 * 1e6:.3g} -> {high / 10_000 * 1e6:.3g} us"


def fewer(theirs: str) -> str:
    return f"< {theirs} (fewer than trace-opt)" if number(theirs) else NA


def summary(out: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(what is compared, opto_adapters, trace-opt in the same run, aim) rows, read from the
    benchmarks' own output."""
    t, ops, p, st, im, lc, li, tr, fa, se, ti, ex = (out[n] for n in BENCHMARKS)
    t, prompts = (
        section(t, "| traced call |") + section(t, "| backward |"),
        section(t, "| prompt |"),
    )
    rows: list[tuple[str, str, str, str]] = []

    call_ours = cell(t, ("opto_adapters",), 1)
    call_theirs = cell(t, ("trace-opt",), 1) if peer.available() else NA
    rows.append(
        (
            "traced call: bundle'd 2-argument function on two nodes (min)",
            f"{call_ours} us",
            f"{call_theirs} us" if call_theirs != NA else NA,
            tenth(f"{call_theirs} us") if call_theirs != NA else "<= a tenth of trace-opt's",
        )
    )
    for shape, n in [
        ("chain", "1,000"),
        ("chain", "4,000"),
        ("chain", "10,000"),
        ("fan-in", "1,000"),
        ("fan-in", "4,000"),
    ]:
        theirs = cell(t, (shape, n), 5)
        rows.append(
            (
                f"backward, {shape} of {n} operations (min)",
                cell(t, (shape, n), 2),
                theirs if number(theirs) else NA,
                tenth(theirs) if number(theirs) else "<= a tenth of trace-opt's",
            )
        )
    rows.append(
        (
            "backward per operation, chain of 1,000 -> 10,000",
            f"{cell(t, ('chain', '1,000'), 4)} -> {cell(t, ('chain', '10,000'), 4)} us",
            per_op(cell(t, ("chain", "1,000"), 5), cell(t, ("chain", "10,000"), 5)),
            "flat in N (linear)",
        )
    )
    op_ours = cell(ops, ("opto_adapters",), 1)
    op_theirs = cell(ops, ("trace-opt",), 1) if peer.available() else NA
    rows.append(
        (
            "traced operator: `x + y` on two nodes (min)",
            f"{op_ours} us",
            f"{op_theirs} us" if op_theirs != NA else NA,
            tenth(f"{op_theirs} us") if op_theirs != NA else "<= a tenth of trace-opt's",
        )
    )
    rows.append(
        (
            "backward per operation, chain of 1,000 -> 10,000 operators (`+`, `*`)",
            f"{cell(ops, ('chain', '1,000'), 4)} -> {cell(ops, ('chain', '10,000'), 4)} us "
            f"(CPU time {cell(ops, ('chain', '1,000'), 5)} -> {cell(ops, ('chain', '10,000'), 5)})",
            NA,
            "flat in N (linear)",
        )
    )
    theirs = cell(prompts, ("fan-in", "1,000"), 7)
    rows.append(
        (
            "OptoPrime prompt build time, fan-in of 1,000 (min)",
            cell(prompts, ("fan-in", "1,000"), 5),
            theirs if number(theirs) else NA,
            tenth(theirs) if number(theirs) else "<= a tenth of trace-opt's",
        )
    )
    for shape in ("chain", "fan-in"):
        theirs = cell(prompts, (shape, "1,000"), 3)
        rows.append(
            (
                f"OptoPrime prompt characters, {shape} of 1,000",
                cell(prompts, (shape, "1,000"), 2),
                theirs if number(theirs) else NA,
                fewer(theirs),
            )
        )
    for label, problem in [
        ("3-parameter toy", "3 parameters (toy)"),
        ("20-step chain", "20-step chain"),
        (
            "minibatch of 8 x 20-step chain, one feedback",
            "minibatch of 8 x 20-step chain, one feedback text",
        ),
    ]:
        theirs = cell(p, (problem,), 4)
        rows.append(
            (
                f"OptoPrime prompt characters, {label}",
                cell(p, (problem,), 1),
                theirs if number(theirs) else NA,
                fewer(theirs),
            )
        )
    theirs = cell(p, ("RAG with 50 KB of documents",), 4)
    rows.append(
        (
            "OptoPrime prompt characters, RAG with 50 KB of documents (ours: 1,000 chars/value)",
            cell(p, ("RAG with 50 KB of documents",), 1),
            theirs if number(theirs) else NA,
            "bounded",
        )
    )
    for label, first in [("short reply", "short reply"), ("32 KB reply", "32 KB reply")]:
        theirs = cell(st, (first,), 4)
        rows.append(
            (
                f"optimizer step, stub LLM, 3-parameter toy, {label} (min)",
                f"{cell(st, (first,), 2)} us",
                f"{theirs} us" if number(theirs) else NA,
                f"<= {theirs} us (trace-opt's)" if number(theirs) else "<= trace-opt's",
            )
        )
    theirs = cell(im, ("import opto_adapters.optimizers",), 4)
    rows.append(
        (
            "import opto_adapters.optimizers vs opto.optimizers (litellm, black stand-ins), -X importtime (min)",
            f"{cell(im, ('import opto_adapters.optimizers',), 1)} ms",
            f"{theirs} ms" if number(theirs) else NA,
            "< 100 ms",
        )
    )
    theirs = cell(im, ("import opto_adapters.trace",), 4)
    rows.append(
        (
            "import opto_adapters.trace vs opto.trace, -X importtime (min)",
            f"{cell(im, ('import opto_adapters.trace',), 1)} ms",
            f"{theirs} ms" if number(theirs) else NA,
            "(measured)",
        )
    )
    rows += [
        (
            "LangChain 5-step chain: OptoTracer (callbacks) / collect_runs",
            find(r"OptoTracer \(callbacks\).*x\s*([\d.]+) vs collect_runs", lc) + "x",
            NONE,
            "<= 1.1x",
        ),
        (
            "LangChain 5-step chain: OptoTracer + graph read every run / collect_runs",
            find(r"OptoTracer \+ graph read.*x\s*([\d.]+) vs collect_runs", lc) + "x",
            NONE,
            "(measured)",
        ),
        (
            "LangChain 5-step chain: OptoTracer (callbacks) / no callbacks",
            find(r"OptoTracer \(callbacks\)\s.*?x\s*([\d.]+) vs no callbacks", lc) + "x",
            NONE,
            "(measured)",
        ),
        (
            "LangChain memory, tracemalloc, first run -> 10,000 runs",
            find(r"growth from the first run to [\d,]+ runs: ([+\-\d.]+ KiB)", lc),
            NONE,
            "(measured: one-time caches and the 100 kept graphs)",
        ),
        (
            "LangChain memory, tracemalloc, after warm-up (200 -> 10,000 runs)",
            find(r"growth after warm-up, [\d,]+ to [\d,]+ runs: ([+\-\d.]+ KiB)", lc),
            NONE,
            "flat",
        ),
        (
            "LangChain create_agent loop: graph build per iteration (min), 10 / 100 / 1,000 iterations",
            " / ".join(cell(lc, (n,), 4) for n in ("10", "100", "1,000")) + " us",
            NONE,
            "flat in iterations (linear)",
        ),
        (
            "LlamaIndex traced query / untraced (median)",
            find(r"traced \(graph per query\).*ratio ([\d.]+)x", li) + "x",
            NONE,
            "<= 1.1x",
        ),
        (
            "LlamaIndex traced query + graph read every query / untraced (median)",
            find(r"traced \+ graph read.*ratio ([\d.]+)x", li) + "x",
            NONE,
            "(measured)",
        ),
        (
            "LlamaIndex memory, RSS, queries 5,000 -> 10,000",
            find(r"RSS growth: .*?([+\-\d.]+ MB) over the second half", li),
            NONE,
            "flat",
        ),
        (
            "trainer overhead per evaluation, concurrency 1 (min / median of 5)",
            cell(tr, ("1",), 5) + " us",
            NONE,
            "(measured)",
        ),
        (
            "trainer overhead per evaluation, concurrency 16 (min / median of 5)",
            cell(tr, ("16",), 5) + " us",
            NONE,
            "(measured)",
        ),
        (
            "store writes with graphs, 16 threads (max / median of 5)",
            cell(tr, ("16",), 6) + " evaluations/s",
            NONE,
            "(measured)",
        ),
        (
            "fault injection, 50 seeds: faults survived",
            find(r"^\| all faults \| (\d+) \| (\d+) \|", fa, 2)
            + " of "
            + find(r"^\| all faults \| (\d+) \|", fa),
            NONE,
            "all (no invalid value, store intact, resume = uninterrupted)",
        ),
    ]
    gepa = cell(se, ("gepa (round-robin component)",), 3)
    for engine in ("greedy (today's search)", "pareto", "pareto + merge", "pareto + merge + repeats"):
        score = cell(se, (engine,), 3)
        rows.append(
            (
                f"simulated search, mean test score at 400 metric calls, 60 seeds: {engine}",
                score if score != "?" else NA,
                NONE,
                f"above gepa's engine ({gepa}) on every budget" if engine != "greedy (today's search)"
                else f"(today's baseline; gepa's engine {gepa})",
            )
        )
    for label in ("LangSmith JSON lines", "OTLP JSON lines"):
        rows += [
            (
                f"import of recorded runs, {label}, 100,000 spans: spans/s (best / median)",
                cell(ti, (label, "100,000"), 3),
                NONE,
                "(measured)",
            ),
            (
                f"import of recorded runs, {label}: peak memory, 10,000 -> 100,000 spans",
                find(rf"^{label}: peak memory ([\d.]+ MiB) at", ti) + " -> "
                + find(rf"^{label}: peak memory .*-> ([\d.]+ MiB) at", ti),
                NONE,
                "flat (streamed, not loaded)",
            ),
        ]
    for label, first, aim in [
        ("threads, 16", ("threads, langchain", "16"), "(measured)"),
        ("asyncio, 256 in flight", ("asyncio, langchain", "256"), "<= 1.2x"),
        ("asyncio, 256 in flight, openai client", ("asyncio, python", "256"), "<= 1.2x"),
        ("Ray, 2 workers x 8", ("ray (2 workers x 8), langchain", "16"), "(overhead per rollout printed)"),
    ]:
        rows.append(
            (
                f"one epoch, 200 examples, app model 200 ms, optimizer 1 s: wall / ideal, {label}",
                cell(ex, first, 5),
                NONE,
                aim,
            )
        )
    return rows


def load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def machine() -> str:
    versions = []
    for dist in ("langchain-core", "langchain", "llama-index-core", "openai", "trace-opt"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; {', '.join(versions)}"
    )


README_START = "Machine: "
README_END = "\nReference figures"


def update_readme(machine_line: str, table: list[str]) -> None:
    """Put the machine line and summary table into README's Benchmarks section."""
    readme = HERE.parent / "README.md"
    text = readme.read_text(encoding="utf-8")
    section = text.index("## Benchmarks")
    start = text.index(README_START, section)
    end = text.index(README_END, start)
    new = machine_line + "\n\n" + "\n".join(table) + "\n"
    readme.write_text(text[:start] + new + text[end:], encoding="utf-8")
    print(f"updated {readme}")


def main() -> None:
    if not peer.available():
        print(peer.missing_note(), flush=True)
    outputs: dict[str, str] = {}
    seconds: dict[str, float] = {}
    load_before = load()
    for name in BENCHMARKS:
        print(f"running {name} ...", flush=True)
        outputs[name], seconds[name] = run(name)
    rows = summary(outputs)
    peer_note = (
        f"trace-opt {peer.version()} measured in the same run, in the same process as ours for "
        "each benchmark, order flipped each repetition"
        if peer.available()
        else f"trace-opt not installed, its column is empty ({peer.INSTALL})"
    )
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {machine()}  ",
        f"Date: {_dt.date.today().isoformat()}; load average (1/5/15 min) {load_before} before, "
        f"{load()} after  ",
        "Command: `python benchmarks/run_all.py`  ",
        f"Peer: {peer_note}",
        "",
        "| what is compared | opto_adapters | trace-opt (same run) | aim |",
        "|---|---:|---:|---|",
        *[f"| {f} | {o} | {th} | {a} |" for f, o, th, a in rows],
        "",
    ]
    table_end = len(lines)
    for name in BENCHMARKS:
        lines += [
            f"## {name} ({seconds[name]:.0f} s)",
            "",
            "```",
            outputs[name].rstrip(),
            "```",
            "",
        ]
    target = HERE / "RESULTS.md"
    target.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines[:table_end]))
    print(f"wrote {target}")
    if "--readme" in sys.argv[1:]:
        table_start = lines.index(
            "| what is compared | opto_adapters | trace-opt (same run) | aim |"
        )
        update_readme(
            f"Machine: {machine()}; load average {load_before} before the run",
            lines[table_start : table_end - 1],
        )


if __name__ == "__main__":
    main()
