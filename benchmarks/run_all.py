"""Run every benchmark and write benchmarks/RESULTS.md: a summary table of the figures the
issues asked for (with their aims), the machine it ran on, and each benchmark's full output.

Run: python benchmarks/run_all.py          (about three minutes on a 2-core machine)
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
BENCHMARKS = ["bench_trace", "bench_prompt", "bench_langchain", "bench_llama_index", "bench_train", "bench_faults"]


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


def summary(out: dict[str, str]) -> list[tuple[str, str, str]]:
    """(figure, result, aim) rows read from the benchmarks' own output."""
    t, p, lc, li, tr, fa = (out[n] for n in BENCHMARKS)

    def trace_row(shape: str, n: str, col: int) -> str:
        row = find(rf"^\| {shape} \| {n} \|.*$", t, 0)
        return row.split("|")[col].strip() if row != "?" else "?"

    def prompt_row(label: str, budget: str) -> str:
        row = find(rf"^\| {re.escape(label)} \| {re.escape(budget)} \|.*$", p, 0)
        return row.split("|")[3].strip() if row != "?" else "?"

    def train_row(concurrency: str, col: int) -> str:
        row = find(rf"^\| {concurrency} \|.*$", tr, 0)
        return row.split("|")[col].strip() if row != "?" else "?"

    return [
        ("traced call (core)", find(r'traced call: ([\d.]+) us', t) + " us", "<= 4.7 us (10x trace-opt's ~47 us)"),
        ("backward, chain N=1,000", trace_row('chain', '1,000', 4) + " ms", "<= 4.1 ms (10x trace-opt's 41 ms)"),
        ("backward, chain N=4,000", trace_row('chain', '4,000', 4) + " ms", "<= 52 ms (10x trace-opt's 524 ms)"),
        ("backward per node, chain N=10,000", trace_row('chain', '10,000', 5) + " us", "flat in N (linear)"),
        ("render, fan-in N=1,000", trace_row('fan-in', '1,000', 6) + " ms", "<= 700 ms (10x trace-opt's 7 s)"),
        ("OptoPrime prompt, 3-parameter toy", prompt_row('3 parameters (toy)', '1,000 chars/value') + " chars", "< ~3,100 chars (trace-opt)"),
        ("OptoPrime prompt, RAG with 50 KB docs", prompt_row('RAG with 50 KB of documents', '1,000 chars/value') + " chars", "bounded"),
        ("LangChain tracer vs collect_runs", find(r'OptoTracer \(callbacks\).*x ([\d.]+) vs collect_runs', lc) + "x", "<= 1.3x"),
        ("LangChain tracer + graph read every run vs collect_runs", find(r'OptoTracer \+ graph read.*x ([\d.]+) vs collect_runs', lc) + "x", "(measured)"),
        ("create_agent graph build per iteration, 10 / 100 / 1,000 iterations", " / ".join(find(rf'^\| {n} \|.*\| (\d+) \|$', lc) for n in ("10", "100", "1,000")) + " us", "flat (linear)"),
        ("LangChain memory, runs 2,500 -> 10,000", find(r'growth from 2,500 to 10,000 runs: ([+\-\d.]+ KiB)', lc), "flat"),
        ("LlamaIndex traced query vs untraced", find(r'traced \(graph per query\).*ratio ([\d.]+)x', li) + "x", "<= 1.3x"),
        ("LlamaIndex traced query + graph read vs untraced", find(r'traced \+ graph read.*ratio ([\d.]+)x', li) + "x", "(measured)"),
        ("LlamaIndex memory, queries 5,000 -> 10,000", find(r'RSS growth: .*?([+\-\d.]+ MB) over the second half', li), "flat"),
        ("trainer overhead per evaluation, concurrency 1", train_row('1', 6) + " us", "(measured)"),
        ("trainer overhead per evaluation, concurrency 16", train_row('16', 6) + " us", "(measured)"),
        ("store writes, concurrency 16", train_row('16', 7) + " evaluations/s", "(measured)"),
        ("fault injection, 50 seeds: faults survived", find(r'^\| all faults \| (\d+) \| (\d+) \|', fa, 2) + " of "
         + find(r'^\| all faults \| (\d+) \|', fa), "all (no invalid value, store intact, resume = uninterrupted)"),
    ]


def machine() -> str:
    versions = []
    for dist in ("langchain-core", "langchain", "llama-index-core", "openai"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; {', '.join(versions)}"
    )


def main() -> None:
    outputs: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in BENCHMARKS:
        print(f"running {name} ...", flush=True)
        outputs[name], seconds[name] = run(name)
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {machine()}  ",
        f"Date: {_dt.date.today().isoformat()}  ",
        "Command: `python benchmarks/run_all.py`",
        "",
        "| figure | result | aim |",
        "|---|---:|---|",
        *[f"| {f} | {r} | {a} |" for f, r, a in summary(outputs)],
        "",
    ]
    for name in BENCHMARKS:
        lines += [f"## {name} ({seconds[name]:.0f} s)", "", "```", outputs[name].rstrip(), "```", ""]
    target = HERE / "RESULTS.md"
    target.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines[:8 + len(summary(outputs))]))
    print(f"\nwrote {target}")


if __name__ == "__main__":
    main()
