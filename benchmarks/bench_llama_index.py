"""How much the LlamaIndex tracer costs: time per query and memory of a long-lived tracer.

    python benchmarks/bench_llama_index.py [--queries 10000] [--blocks 8] [--block-size 200]

Offline: a VectorStoreIndex query engine over 20 documents with LlamaIndex's MockLLM and
MockEmbedding, passed explicitly (``Settings`` is never used). Prints numbers; asserts
nothing.

1. Overhead: the same query, untraced (no tracer attached at all), traced (run recorded; its
   graph is built when first asked for) and traced with the graph read after every query, in
   blocks whose order is reversed every time, so machine drift hits all alike; the ratios of
   the medians and of the mins. Also the cost a tracer imposes on *another* engine's queries
   while attached, and the tracer's own work per query measured apart (one query's callbacks
   replayed through its handlers).
2. Memory: resident set size and live Python objects while running ``--queries`` traced
   queries with the default ``max_graphs=100``; flat after warm-up means nothing leaks.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from llama_index.core import Document, VectorStoreIndex  # noqa: E402
from llama_index.core.embeddings import MockEmbedding  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402

from opto_adapters.llama_index import OptoTracer  # noqa: E402

QUESTION = "What does document 3 say about topic 3?"


def rss_mb() -> float:
    """Current resident set size in MB (Linux), else peak RSS."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_engine(index: VectorStoreIndex):
    return index.as_query_engine(llm=MockLLM(max_tokens=16), similarity_top_k=2)


def per_query_us(engine, n: int, tracer=None) -> float:
    """Time per query; with ``tracer``, the graph is read after every query (graphs are
    built when first asked for, so this adds the build)."""
    start = time.perf_counter()
    for _ in range(n):
        engine.query(QUESTION)
        if tracer is not None:
            assert tracer.last_graph is not None
    return (time.perf_counter() - start) / n * 1e6


def overhead(index: VectorStoreIndex, blocks: int, size: int) -> None:
    engine, other = make_engine(index), make_engine(index)
    tracer = OptoTracer(engine)
    tracer.close()
    for e in (engine, other):  # warm caches (tokenizer, code paths)
        per_query_us(e, 50)

    def untraced() -> float:
        return per_query_us(engine, size)

    def traced() -> float:
        with tracer:  # attached: every run of `engine` is recorded
            return per_query_us(engine, size)

    def read() -> float:
        with tracer:  # and its graph built, as an optimizer step would
            return per_query_us(engine, size, tracer)

    def foreign() -> float:
        tracer.attach()  # attached, but `other` is not its target and not in a with block
        try:
            return per_query_us(other, size)
        finally:
            tracer.close()

    variants = {
        "untraced (no tracer)": untraced,
        "traced (graph per query)": traced,
        "traced + graph read": read,
        "other engine, tracer attached": foreign,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for _ in range(blocks):
        for name in order:
            gc.collect()
            times[name].append(variants[name]())
        order.reverse()  # alternate the order, so machine drift hits every variant alike
    base = times["untraced (no tracer)"]
    print(
        f"query engine, {blocks} blocks x {size} queries (order alternated each block), "
        "time per query: median and min of the blocks"
    )
    for name, values in times.items():
        med, low = statistics.median(values), min(values)
        ratio = (
            ""
            if values is base
            else f"   ratio {med / statistics.median(base):.2f}x median, {low / min(base):.2f}x min"
        )
        print(f"  {name:<30} {med:8.0f} us {low:8.0f} us{ratio}")
    graph = tracer.last_graph
    print(f"  graph per query: {len(graph.nodes)} nodes, {len(graph.edges())} edges")
    print(f"  tracer's own work per query (its callbacks replayed): {replayed_cost(engine)}")


def replayed_cost(engine) -> str:
    """The tracer's own work per query, without the app's: one query's callbacks (spans and
    events, in order) are recorded, then replayed through a fresh tracer's handlers, so the
    figure is not blurred by the query's own run time. Min and median of 7 rounds."""
    from llama_index.core.instrumentation import get_dispatcher

    calls: list[tuple[str, dict]] = []

    class Log:
        def span_enter(self, **kw):
            calls.append(("span_enter", kw))

        def span_exit(self, **kw):
            calls.append(("span_exit", kw))

        def span_drop(self, **kw):
            calls.append(("span_drop", kw))

        def handle(self, event, **kw):
            calls.append(("handle", {"event": event, **kw}))

    dispatcher, log = get_dispatcher(), Log()
    dispatcher.span_handlers.append(log)
    dispatcher.event_handlers.append(log)
    try:
        engine.query(QUESTION)
    finally:
        dispatcher.span_handlers.remove(log)
        dispatcher.event_handlers.remove(log)
    tracer = OptoTracer(engine)
    tracer.close()  # handlers called directly below
    spans, events = tracer._span_handler, tracer._event_handler
    target = {"span_enter": spans.span_enter, "span_exit": spans.span_exit,
              "span_drop": spans.span_drop, "handle": events.handle}  # fmt: skip
    replay = [(target[method], kw) for method, kw in calls]
    rounds = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(1000):
            for fn, kw in replay:
                fn(**kw)
        rounds.append((time.perf_counter() - start) / 1000 * 1e6)
    assert tracer.last_graph is not None
    return f"{statistics.median(rounds):.0f} us median, {min(rounds):.0f} us min ({len(calls)} callbacks)"


def memory(index: VectorStoreIndex, queries: int) -> None:
    engine = make_engine(index)
    checkpoints = sorted({max(queries // 10, 1) * k for k in range(1, 11)} | {queries})
    with OptoTracer(engine) as tracer:
        per_query_us(engine, 200)  # warm-up, so the first checkpoint is not start-up cost
        gc.collect()
        print(f"\nmemory over {queries} traced queries (max_graphs={tracer.max_graphs})")
        print(
            f"  {'queries':>8} {'RSS MB':>8} {'objects':>9} {'graphs':>7} {'open runs':>9} {'open spans':>10}"
        )
        start_rss, done = rss_mb(), 0
        rows = []
        for mark in checkpoints:
            per_query_us(engine, mark - done)
            done = mark
            gc.collect()
            rows.append((done, rss_mb(), len(gc.get_objects())))
            rec = tracer._recorder
            print(
                f"  {done:>8} {rows[-1][1]:>8.1f} {rows[-1][2]:>9} {len(tracer.graphs):>7} "
                f"{rec.open_runs:>9} {rec.open_spans:>10}"
            )
    half = rows[len(rows) // 2]
    print(
        f"  RSS growth: {rows[-1][1] - start_rss:+.1f} MB overall, {rows[-1][1] - half[1]:+.1f} MB over the second half"
    )
    print(f"  live objects, second half: {rows[-1][2] - half[2]:+d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--queries", type=int, default=10_000, help="traced queries for the memory run"
    )
    parser.add_argument("--blocks", type=int, default=8, help="alternating timing blocks")
    parser.add_argument("--block-size", type=int, default=200, help="queries per timing block")
    args = parser.parse_args()
    docs = [
        Document(text=f"Document {i} is about topic {i % 7}: " + "lorem ipsum " * 20)
        for i in range(20)
    ]
    index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=16))
    overhead(index, args.blocks, args.block_size)
    memory(index, args.queries)


if __name__ == "__main__":
    main()
