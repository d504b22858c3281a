"""Trainer benchmark: overhead per evaluated example (model time excluded) and store writes/s.

Run: python benchmarks/bench_train.py
Prints a markdown table. The app is a trivial traced function (one @bundle call filling a
prompt parameter), the optimizer OptoPrime against the offline scripted server; 1,000
training examples, batches of 100, each candidate gated on its minibatch. "Overhead" is the
fit's wall time minus the time spent waiting for the optimizer, per app evaluation: tracing,
the guide, graph serialization, the SQLite writes, threads and bookkeeping.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opto_adapters.llm import LLM  # noqa: E402
from opto_adapters.optimizers import OptoPrime  # noqa: E402
from opto_adapters.testing import ScriptedLLMServer  # noqa: E402
from opto_adapters.trace import Feedback, Graph, bundle, node  # noqa: E402
from opto_adapters.train import Store, Trainer  # noqa: E402
from opto_adapters.train.graphs import graph_to_json  # noqa: E402

N = 1_000
REPEAT = 5


@bundle()
def respond(template, q):
    """Fill the question into the template."""
    return template.format(q=q)


def guide(example, output):
    return Feedback(score=float(output.startswith("ANSWER")), text="start with ANSWER")


def alternate(body):
    """Suggest the other template each time (so every step evaluates a new candidate)."""
    text = body["messages"][-1]["content"]
    new = "Reply {q}" if "prompt=ANSWER {q}" in text else "ANSWER {q}"
    return json.dumps({"reasoning": "try", "suggestion": {"prompt": new}})


def trainer_overhead(server: ScriptedLLMServer, concurrency: int, store_path: str) -> dict[str, float]:
    prompt = node("Reply {q}", name="prompt", trainable=True, kind="prompt")
    optimizer = OptoPrime([prompt], LLM(base_url=server.base_url, api_key="k", model="m"))
    waited = [0.0]
    propose = optimizer.propose

    def timed_propose():
        start = time.perf_counter()
        try:
            return propose()
        finally:
            waited[0] += time.perf_counter() - start

    optimizer.propose = timed_propose  # type: ignore[method-assign]
    trainer = Trainer(
        lambda q: respond(prompt, q), [{"input": f"question {i}"} for i in range(N)], guide=guide,
        optimizer=optimizer, batch_size=100, max_concurrency=concurrency, store=store_path,
        progress=False,
    )
    start = time.perf_counter()
    with trainer:
        result = trainer.fit()
        evaluations = len(trainer.store.evaluations(result.run_id))
    total = time.perf_counter() - start
    return {
        "evaluations": evaluations,
        "steps": len(result.history),
        "total_s": total,
        "optimizer_s": waited[0],
        "us_per_eval": (total - waited[0]) / evaluations * 1e6,
    }


def store_throughput(threads: int, store_path: str) -> float:
    """Evaluations (with their graph) written per second, from ``threads`` writers."""
    prompt = node("Reply {q}", name="prompt", trainable=True, kind="prompt")
    graph = graph_to_json(Graph(respond(prompt, "question")))
    with Store(store_path) as store:
        run = store.create_run({})
        version = store.version(run, {"prompt": prompt.value})
        per_thread = N // threads

        def write(worker: int) -> None:
            for i in range(per_thread):
                store.add_evaluation(
                    run, version, "train", worker * per_thread + i, phase="bench", score=1.0,
                    feedback="start with ANSWER", output="ANSWER question", graph=graph,
                )

        workers = [threading.Thread(target=write, args=(w,)) for w in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - start
        assert len(store.evaluations(run)) == per_thread * threads
    return per_thread * threads / elapsed


def main() -> None:
    rows = []
    with ScriptedLLMServer(alternate) as server, tempfile.TemporaryDirectory() as tmp:
        trainer_overhead(server, 4, f"{tmp}/warm-up.sqlite")  # imports, first connections
        for concurrency in (1, 16):
            fits = [
                trainer_overhead(server, concurrency, f"{tmp}/trainer-{concurrency}-{k}.sqlite")
                for k in range(REPEAT)
            ]
            writes = [
                store_throughput(concurrency, f"{tmp}/store-{concurrency}-{k}.sqlite")
                for k in range(REPEAT)
            ]
            rows.append((concurrency, fits, writes))
    print(
        f"Trainer on {N:,} examples (batch 100, 1 epoch), SQLite file store with graphs, WAL; "
        f"each setting run {REPEAT} times (min / median; for writes/s the best is the max)\n"
    )
    print(
        "| concurrency | app evaluations | steps | fit total min / median (s) | optimizer wait "
        "median (s) | overhead per evaluation min / median (us) | store writes max / median "
        "(evaluations/s) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for concurrency, fits, writes in rows:
        total = sorted(f["total_s"] for f in fits)
        wait = statistics.median(f["optimizer_s"] for f in fits)
        per_eval = sorted(f["us_per_eval"] for f in fits)
        print(
            f"| {concurrency} | {fits[0]['evaluations']:,} | {fits[0]['steps']} | "
            f"{total[0]:.2f} / {statistics.median(total):.2f} | {wait:.2f} | "
            f"{per_eval[0]:.0f} / {statistics.median(per_eval):.0f} | "
            f"{max(writes):,.0f} / {statistics.median(writes):,.0f} |"
        )


if __name__ == "__main__":
    main()
