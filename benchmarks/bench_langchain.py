"""Overhead and memory of the LangChain OptoTracer (prints numbers; not a test).

    python benchmarks/bench_langchain.py [--runs 2000] [--memory-runs 10000]

A 5-step chain (function | prompt | fake chat model | parser | function), invoked
repeatedly: with no callbacks, inside LangChain's own ``collect_runs()``, with the tracer as a
callback, inside the tracer's global form, and with the graph read after every run (graphs are
built when first asked for, so that row adds the build). Timings are the best and the median of
several rounds, the order of the variants reversed each round, so machine drift hits every variant
alike. Then memory: tracemalloc (from before the first run) and RSS over 10,000 traced runs with
the default settings (graphs kept: ``max_graphs=100``).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langchain_core.language_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage  # noqa: E402
from langchain_core.output_parsers import StrOutputParser  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402
from langchain_core.runnables import RunnableLambda  # noqa: E402
from langchain_core.tracers.context import collect_runs  # noqa: E402

from opto_adapters.langchain import OptoTracer  # noqa: E402


def make_chain():
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a concise assistant for {topic}."), ("human", "{question}")]
    )
    model = GenericFakeChatModel(messages=itertools.cycle([AIMessage("The answer is 42.")]))
    return (
        RunnableLambda(lambda q: {"topic": "math", "question": q.strip()})
        | prompt
        | model
        | StrOutputParser()
        | RunnableLambda(lambda text: text.upper())
    )


def per_call(fn: Callable[[], object], runs: int) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - start) / runs


def rss_mb() -> float:
    try:
        with open(f"/proc/{os.getpid()}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timing(runs: int, rounds: int) -> dict[str, list[float]]:
    chain = make_chain()
    tracer = OptoTracer(chain)
    question = " What is six times seven? "

    def plain():
        chain.invoke(question)

    def collector():
        with collect_runs():
            chain.invoke(question)

    def traced():
        chain.invoke(question, config={"callbacks": [tracer]})

    def global_form():
        with tracer:
            chain.invoke(question)

    def traced_and_read():
        chain.invoke(question, config={"callbacks": [tracer]})
        assert tracer.last_graph is not None  # built now, as an optimizer step would

    variants = {
        "no callbacks": plain,
        "collect_runs": collector,
        "OptoTracer (callbacks)": traced,
        "OptoTracer (with tracer:)": global_form,
        "OptoTracer + graph read": traced_and_read,
    }
    for fn in variants.values():  # warm up
        per_call(fn, 50)
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for _ in range(rounds):
        for name in order:
            gc.collect()
            times[name].append(per_call(variants[name], runs))
        order.reverse()  # alternate the order, so drift hits every variant alike
    assert tracer.last_graph is not None and tracer.order_map == {} and tracer.run_map == {}
    return times


def build_cost(runs: int) -> float:
    """Seconds to turn one finished run tree into its graph (translation and building)."""
    chain = make_chain()
    kept = []

    class Keep(OptoTracer):
        def _translate(self, run, *args):
            kept.append(run)
            return super()._translate(run, *args)

    tracer = Keep(chain)
    chain.invoke(" What is six times seven? ", config={"callbacks": [tracer]})
    assert tracer.last_graph is not None  # translated when the graph is first asked for
    root = kept[0]
    build = tracer._build_graph
    return min(per_call(lambda: build(root), runs) for _ in range(3))


def agent_loop(iterations: list[int]) -> None:
    """Graph building for a ``create_agent`` loop: every model call resends the whole
    history, so a builder that relinks each message is quadratic in the iterations."""
    from langchain.agents import create_agent
    from langchain_core.tools import tool

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from langchain_fakes import RecordingChatModel, tool_call

    @tool
    def step(n: int) -> str:
        """Do one step of the work."""
        return f"step {n} done"

    print("\ncreate_agent loop: graph building time (min and median of 5 builds of one run tree)")
    print("| iterations | model calls in graph | min ms | median ms | us per iteration |")
    print("|---:|---:|---:|---:|---:|")
    for n in iterations:
        replies = [tool_call("step", f"call_{i}", n=i) for i in range(n)] + ["all done"]
        agent = create_agent(RecordingChatModel(responses=replies), [step], system_prompt="Work.")
        kept: list = []

        class Keep(OptoTracer):
            def _translate(self, run, *args, kept=kept):
                kept.append(run)
                return super()._translate(run, *args)

        tracer = Keep(agent)
        agent.invoke(
            {"messages": [("user", "go")]},
            config={"callbacks": [tracer], "recursion_limit": 2 * n + 10},
        )
        graph = tracer.last_graph
        calls = sum(1 for node in graph.nodes if node.op is not None and node.op.kind == "llm")
        times = []
        for _ in range(5):
            start = time.perf_counter()
            tracer._build_graph(kept[0])
            times.append(time.perf_counter() - start)
        times.sort()
        print(
            f"| {n:,} | {calls:,} | {times[0] * 1e3:.1f} | {times[2] * 1e3:.1f} | "
            f"{times[0] / n * 1e6:.0f} |"
        )


def memory(runs: int, warm_up: int = 200) -> None:
    """tracemalloc from before the first traced run; the figure after ``warm_up`` runs is
    shown too (one-time caches and the first ``max_graphs`` kept graphs land there)."""
    chain = make_chain()
    tracer = OptoTracer(chain)  # default settings
    question = " What is six times seven? "
    gc.collect()
    tracemalloc.start()
    rss_start = rss_mb()
    base, _ = tracemalloc.get_traced_memory()
    marks = sorted({1, tracer.max_graphs, warm_up, *(runs * k // 4 for k in range(1, 5))})
    checkpoints = []
    for i in range(1, runs + 1):
        chain.invoke(question, config={"callbacks": [tracer]})
        if i in marks:
            gc.collect()
            current, _ = tracemalloc.get_traced_memory()
            checkpoints.append((i, (current - base) / 1024))
    tracemalloc.stop()
    at = dict(checkpoints)
    print(
        f"\nmemory over {runs:,} traced runs, counted from before the first run "
        f"(max_graphs={tracer.max_graphs}):"
    )
    for i, kib in checkpoints:
        print(f"  after {i:>6,} runs: tracemalloc {kib:+9.1f} KiB")
    print(f"  growth from the first run to {runs:,} runs: {at[runs]:+.1f} KiB")
    print(
        f"  growth after warm-up, {warm_up:,} to {runs:,} runs: {at[runs] - at[warm_up]:+.1f} KiB "
        f"(the first run pays one-time caches, the first {tracer.max_graphs} fill the kept graphs; "
        "later ones replace them)"
    )
    print(f"  RSS {rss_start:.1f} MB -> {rss_mb():.1f} MB")
    print(
        f"  tracer state: graphs={len(tracer.graphs)}, run_map={len(tracer.run_map)}, "
        f"order_map={len(tracer.order_map)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="invocations per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--memory-runs", type=int, default=10_000)
    parser.add_argument("--agent-iterations", type=int, nargs="+", default=[10, 100, 1000])
    args = parser.parse_args()

    times = timing(args.runs, args.rounds)
    for label, stat in (("best", min), ("median", statistics.median)):
        summary = {name: stat(values) for name, values in times.items()}
        base, collector = summary["no callbacks"], summary["collect_runs"]
        print(
            f"5-step chain, {label} of {args.rounds} rounds x {args.runs} invocations "
            "(order alternated each round):"
        )
        for name, seconds in summary.items():
            print(
                f"  {name:<27} {seconds * 1e6:8.1f} us/run   x{seconds / base:5.2f} vs no callbacks"
                f"   x{seconds / collector:5.2f} vs collect_runs"
            )
    print(
        f"  graph building alone: {build_cost(args.runs) * 1e6:.1f} us/run (6 nodes + 2 parameters)"
    )
    agent_loop(args.agent_iterations)
    memory(args.memory_runs)


if __name__ == "__main__":
    main()
