"""How much the LlamaIndex tracer costs: time per query and memory of a long-lived tracer.

    python benchmarks/bench_llama_index.py [--queries 10000] [--blocks 8] [--block-size 200]

Offline: a VectorStoreIndex query engine over 20 documents with LlamaIndex's MockLLM and
MockEmbedding, passed explicitly (``Settings`` is never used). Prints numbers; asserts
nothing.

1. Overhead: the same query, untraced (no tracer attached at all), traced (run recorded; its
   graph is built when first asked for) and traced with the graph read after every query, in
   alternating blocks so machine drift hits both alike; the ratio of the
   medians. Also the cost a tracer imposes on *another* engine's queries while attached.
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
    untraced, traced, read, foreign = [], [], [], []
    for _ in range(blocks):
        untraced.append(per_query_us(engine, size))
        with tracer:  # attached: every run of `engine` is recorded
            traced.append(per_query_us(engine, size))
        with tracer:  # and its graph built, as an optimizer step would
            read.append(per_query_us(engine, size, tracer))
        tracer.attach()  # attached, but `other` is not its target and not in a with block
        foreign.append(per_query_us(other, size))
        tracer.close()
    base = statistics.median(untraced)
    print(f"query engine, {blocks} blocks x {size} queries, median time per query")
    print(f"  untraced (no tracer)           {base:8.0f} us")
    print(
        f"  traced (graph per query)       {statistics.median(traced):8.0f} us   ratio {statistics.median(traced) / base:.2f}x"
    )
    print(
        f"  traced + graph read            {statistics.median(read):8.0f} us   ratio {statistics.median(read) / base:.2f}x"
    )
    print(
        f"  other engine, tracer attached  {statistics.median(foreign):8.0f} us   ratio {statistics.median(foreign) / base:.2f}x"
    )
    graph = tracer.last_graph
    print(f"  graph per query: {len(graph.nodes)} nodes, {len(graph.edges())} edges")


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
