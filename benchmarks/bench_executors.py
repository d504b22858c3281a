"""Executors benchmark: wall-clock of one epoch when the app's model is slow, per executor.

Run: python benchmarks/bench_executors.py [--examples N] [--only threads,asyncio,ray]

The app is a LangChain chain (prompt | ChatOpenAI | StrOutputParser), or a traced Python
callable calling the openai client (``OpenAI``, or ``AsyncOpenAI`` under asyncio), against
the offline scripted server (in its own process), whose every app reply comes after 200 ms
(the ``sleep`` row: an async traced function that awaits 200 ms, no client: the executor's
own cost); the optimizer (OptoPrime) gets its
reply after 1 s from a second scripted server. One epoch: 200 training examples in one
minibatch, gated on itself, so the run makes the baseline's 200 app runs, one optimizer call
and the candidate's 200 app runs (400 rollouts). The ideal is what waiting alone costs:
2 x max(examples x 0.2 s / concurrency, 0.2 s) + 1 s. Printed per executor: the epoch's wall
time, rollouts per second outside the optimizer call, and wall / ideal. Ray runs 2 local
workers (one process each, the app built in each by a factory); its start (cluster, workers)
is timed apart, and its overhead per rollout is (wall - ideal) / 400.

The openai client's default transport (httpx/httpcore) slows down with hundreds of requests
in flight on one connection pool (the scripted server itself answers 256 concurrent delayed
requests in about 0.4 s from aiohttp); the aiohttp rows use openai's aiohttp transport
(``pip install "openai[aiohttp]"``, skipped without it) to show the executor without it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opto_adapters.llm import LLM  # noqa: E402
from opto_adapters.optimizers import OptoPrime  # noqa: E402
from opto_adapters.trace import Feedback, apply_updates, bundle, node  # noqa: E402
from opto_adapters.train import Trainer  # noqa: E402

APP_DELAY = 0.2
OPTIMIZER_DELAY = 1.0


def aiohttp_client():
    """openai's aiohttp transport (``pip install "openai[aiohttp]"``), or ``None``."""
    try:
        import httpx_aiohttp  # noqa: F401
        import openai
    except ImportError:
        return None
    return openai.DefaultAioHttpClient(timeout=60)


def build_chain(base_url: str | None = None, transport: str = "httpx"):
    """prompt | ChatOpenAI | parser against the app server (``BENCH_APP_URL`` in Ray workers)."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI

    url = base_url or os.environ["BENCH_APP_URL"]
    extra = {"http_async_client": aiohttp_client()} if transport == "aiohttp" else {}
    model = ChatOpenAI(base_url=url, api_key="k", model="app", max_retries=0, timeout=60, **extra)
    prompt = ChatPromptTemplate.from_messages([("system", "Answer briefly."), ("human", "{question}")])
    return prompt | model | StrOutputParser()


PROMPT = node("Answer briefly.", name="prompt", trainable=True, kind="prompt")
_CLIENTS: dict[str, object] = {}  # one client of each kind per process (not shared across runs' loops)


def _client(kind: str):
    import openai

    if kind not in _CLIENTS:
        url = os.environ["BENCH_APP_URL"]
        if kind == "sync":
            _CLIENTS[kind] = openai.OpenAI(base_url=url, api_key="k", max_retries=0, timeout=60)
        else:
            extra = {"http_client": aiohttp_client()} if kind == "aiohttp" else {}
            _CLIENTS[kind] = openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0, timeout=60, **extra)
    return _CLIENTS[kind]


@bundle()
def ask(system, question):
    """Ask the app's model (the openai client, sync)."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return _client("sync").chat.completions.create(model="app", messages=messages).choices[0].message.content


@bundle()
async def aask(system, question):
    """Ask the app's model (the openai client, async)."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    reply = await _client(os.environ.get("BENCH_TRANSPORT", "httpx")).chat.completions.create(model="app", messages=messages)
    return reply.choices[0].message.content


@bundle()
async def asleep(system, question):
    """Wait as the app's model would, without a client (the executor's own cost)."""
    import asyncio

    await asyncio.sleep(APP_DELAY)
    return "Paris"


def python_app(x):
    return ask(PROMPT, x)


async def sleeping_app(x):
    return await asleep(PROMPT, x)


async def apython_app(x):
    return await aask(PROMPT, x)


@contextmanager
def scripted_server(delay: float, reply: str):
    """A scripted server in its own process (its threads do not share our GIL); its URL."""
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); "
        "from opto_adapters.testing import Reply, ScriptedLLMServer; "
        "s = ScriptedLLMServer(default=Reply.delay(float(sys.argv[2]), sys.argv[3])).start(); "
        "print(s.base_url, flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(ROOT), str(delay), reply],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.kill()
        proc.wait()


def guide(example, output):
    return Feedback(score=0.5, text="say it in fewer words")


def one_epoch(
    app_url: str, opt_url: str, n: int, executor, concurrency: int, app: str = "langchain", transport: str = "httpx"
) -> float:
    llm = LLM(base_url=opt_url, api_key="k", model="opt", timeout=60)
    train = [{"question": f"question {i}?"} for i in range(n)]
    common = dict(
        guide=guide, input_key="question", batch_size=n, epochs=1, progress=False,
        executor=executor, max_concurrency=concurrency, guard_copies=None,
    )
    if app == "langchain":
        trainer = Trainer(build_chain(app_url, transport), train, llm=llm, **common)
    else:
        _CLIENTS.clear()  # a client per run: an async one belongs to the run's event loop
        os.environ["BENCH_TRANSPORT"] = transport
        fn = sleeping_app if app == "sleep" else apython_app if executor == "asyncio" else python_app
        trainer = Trainer(fn, train, optimizer=OptoPrime([PROMPT], llm), **common)
    trainer._prepare()
    start = time.perf_counter()
    with trainer:
        result = trainer.fit()
    wall = time.perf_counter() - start
    assert result.status == "completed", result.message
    return wall


def ideal(n: int, concurrency: int) -> float:
    return 2 * max(n * APP_DELAY / concurrency, APP_DELAY) + OPTIMIZER_DELAY


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--only", default="threads,asyncio,ray")
    args = parser.parse_args()
    n, only = args.examples, set(args.only.split(","))
    suggestion = json.dumps({
        "reasoning": "shorter",
        "suggestion": {"prompt.system": "Answer in one word.", "prompt": "Answer in one word."},
    })
    rows = []
    with scripted_server(APP_DELAY, "Paris") as app_url, scripted_server(OPTIMIZER_DELAY, suggestion) as opt_url:
        os.environ["BENCH_APP_URL"] = app_url
        plan = [("threads", c, "langchain", "httpx") for c in (4, 16) if "threads" in only]
        plan += [("asyncio", c, "langchain", "httpx") for c in (16, 64, 256) if "asyncio" in only]
        plan += [("threads", 16, "python", "httpx")] if "threads" in only else []
        plan += [("asyncio", 256, "python", "httpx"), ("asyncio", 256, "sleep", "-")] if "asyncio" in only else []
        if aiohttp_client() is not None and "asyncio" in only:
            plan += [("asyncio", c, app, "aiohttp") for app in ("langchain", "python") for c in (64, 256)]
        else:
            print('openai[aiohttp] is not installed: the aiohttp rows are skipped\n')
        for name, c, app, transport in plan:
            apply_updates({PROMPT: "Answer briefly."})
            wall = one_epoch(app_url, opt_url, n, name, c, app, transport)
            label = f"{name}, {app}" + (", aiohttp" if transport == "aiohttp" else "")
            rows.append((label, str(c), wall, ideal(n, c), None))
        if "ray" in only:
            rows += ray_rows(app_url, opt_url, n)
    print(f"One epoch, {n} examples (2 x {n} rollouts, app model {APP_DELAY * 1000:.0f} ms, "
          f"optimizer {OPTIMIZER_DELAY:.0f} s), {os.cpu_count()} cores\n")
    print("| executor | in flight | wall (s) | ideal (s) | rollouts/s | wall / ideal | overhead / rollout |")
    print("|---|---|---|---|---|---|---|")
    for name, c, wall, best, start in rows:
        rate = 2 * n / max(wall - OPTIMIZER_DELAY, 1e-9)
        over = f"{(wall - best) / (2 * n) * 1000:.1f} ms" if name.startswith("ray") else "-"
        note = f" (+{start:.1f} s start)" if start is not None else ""
        print(f"| {name} | {c} | {wall:.2f}{note} | {best:.2f} | {rate:.1f} | {wall / best:.2f}x | {over} |")


def ray_rows(app_url: str, opt_url: str, n: int) -> list[tuple[str, str, float, float, float | None]]:
    try:
        import ray
    except ImportError:
        print('ray is not installed (pip install "opto-adapters[ray]"): the Ray rows are skipped\n')
        return []
    from opto_adapters.train.ray_executor import RayExecutor

    start = time.perf_counter()
    env = {"BENCH_APP_URL": app_url, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")])}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env})
    cluster = time.perf_counter() - start
    rows = []
    try:
        for per_worker in (1, 8):
            c = 2 * per_worker
            executor = RayExecutor(app_factory=build_chain, workers=2)
            wall_start = time.perf_counter()
            opened = []
            real_open = executor.open

            def timed_open(runner, real_open=real_open, opened=opened):
                t = time.perf_counter()
                real_open(runner)
                opened.append(time.perf_counter() - t)

            executor.open = timed_open  # type: ignore[method-assign]
            wall = one_epoch(app_url, opt_url, n, executor, c)
            assert time.perf_counter() - wall_start >= wall
            workers = opened[0] if opened else 0.0
            rows.append((f"ray (2 workers x {per_worker}), langchain", str(c), wall - workers, ideal(n, c), cluster + workers))
    finally:
        ray.shutdown()
    return rows


if __name__ == "__main__":
    main()
