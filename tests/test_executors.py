"""The executors of the evaluation engine: the same run on threads and on asyncio, afit() on a
LangChain and a LlamaIndex app through their async entry points, hundreds of runs in flight
on one event loop thread, cancellation, the time limit, endpoint retries and resume."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from llama_index.core import Document, VectorStoreIndex

from opto_adapters import bundle, node
from opto_adapters.optimizers import OptoPrime
from opto_adapters.train import Store, TrainConfig, Trainer, optimize
from opto_adapters.train.executors import AsyncioExecutor, ThreadExecutor, make_executor
from opto_adapters.train.trainer import optimize_async

from .langchain_fakes import AsyncRecordingChatModel
from .llama_index_fakes import RecordingLLM, WordEmbedding
from .test_train_frameworks import FACTS, MARK, TRAIN, VAL, answer_for, guide, optimizer_llm
from .train_apps import data, llm_for, reply
from .train_apps import guide as marker_guide


def lc_chain(delay: float = 0.0):
    model = AsyncRecordingChatModel(
        respond=lambda messages: answer_for("\n".join(str(m.content) for m in messages)), delay=delay,
    )
    prompt = ChatPromptTemplate.from_messages([("system", "You are helpful."), ("human", "{question}")])
    return prompt, model, prompt | model | StrOutputParser()


def stored_outcome(store: Store, run_id: int) -> tuple[dict, list[tuple]]:
    """The best values and every evaluation (by the values it was made with), of a run."""
    run = store.run(run_id)
    values = {v.id: json.dumps(v.values, sort_keys=True) for v in store.versions(run_id)}
    evaluations = sorted(
        (values[e.version_id], e.split, e.index, e.repeat, e.score, e.feedback, e.output)
        for e in store.evaluations(run_id)
    )
    return store.version_values(run.best_version_id), evaluations


async def test_afit_on_a_langchain_chain_runs_ainvoke_on_the_callers_loop(scripted_llm):
    prompt, model, chain = lc_chain(delay=0.01)
    llm = optimizer_llm(scripted_llm, {"prompt.system": f"You are helpful. {MARK}"})
    trainer = Trainer(chain, TRAIN, VAL, guide=guide, llm=llm, input_key=["question"], batch_size=2,
                      progress=False, executor="asyncio", max_concurrency=8)
    result = await trainer.afit()
    assert (result.baseline.val, result.best.val) == (0.5, 1.0)
    assert prompt.messages[0].prompt.template == f"You are helpful. {MARK}"  # written back
    # every model call went through the async path, in this loop's thread: no thread pool
    assert len(model.async_threads) == len(model.calls) > 0
    assert set(model.async_threads) == {threading.get_ident()}


async def test_afit_on_a_llama_index_query_engine_runs_aquery(scripted_llm):
    class AsyncOnly(RecordingLLM):
        def complete(self, prompt, formatted=False, **kwargs):  # the sync path is not taken
            raise AssertionError("complete() called: the async executor must use aquery")

    index = VectorStoreIndex.from_documents(
        [Document(text=f"The {k} is {v}.") for k, v in FACTS.items()], embed_model=WordEmbedding()
    )
    engine = index.as_query_engine(llm=AsyncOnly(reply=answer_for, delay=0.01), similarity_top_k=1)
    qa = "response_synthesizer.text_qa_template"
    template = "Context: {context_str}\nQuestion: {query_str}\n" + MARK + "\nAnswer: "
    llm = optimizer_llm(scripted_llm, {qa: template})
    result = await optimize_async(engine, TRAIN, VAL, guide=guide, llm=llm, input_key="question",
                                  batch_size=2, progress=False, executor="asyncio")
    assert (result.baseline.val, result.best.val) == (0.5, 1.0)
    assert result.status == "completed"
    assert MARK in engine.get_prompts()["response_synthesizer:text_qa_template"].get_template()


@pytest.mark.parametrize("executor", ["asyncio"])
def test_each_executor_stores_the_same_run(scripted_llm, executor):
    """The same scripted replies give the same decisions, best values and evaluations."""
    outcomes = []
    for name in ("threads", executor):
        prompt, _, chain = lc_chain()
        scripted_llm.clear()
        llm = optimizer_llm(scripted_llm, {"prompt.system": f"You are helpful. {MARK}"})
        store = Store()
        result = optimize(chain, TRAIN * 3, VAL, guide=guide, llm=llm, input_key=["question"],
                          batch_size=2, epochs=2, progress=False, store=store, executor=name)
        assert result.status == "completed"
        assert store.run(result.run_id).config["executor"] == name
        outcomes.append((stored_outcome(store, result.run_id), [s.status for s in result.history]))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0][0]["prompt.system"] == f"You are helpful. {MARK}"


async def test_hundreds_of_runs_in_flight_on_one_thread(scripted_llm):
    """256 async app runs at once on the loop's own thread; the semaphore holds the rest."""
    prompt = node("ANSWER {q}!", name="prompt", trainable=True, kind="prompt")
    gate = asyncio.Event()
    flight = {"now": 0, "max": 0, "threads": set()}

    @bundle()
    async def respond(template, q):
        """Fill the question in, after the model's wait."""
        flight["now"] += 1
        flight["max"] = max(flight["max"], flight["now"])
        flight["threads"].add(threading.get_ident())
        if flight["now"] >= 256:
            gate.set()
        await gate.wait()
        flight["now"] -= 1
        return template.format(q=q)

    async def app(q):
        return await respond(prompt, q)

    scripted_llm.set_default(json.dumps(reply("ANSWER {q}!")))
    result = await optimize_async(
        app, data(300), guide=marker_guide, optimizer=OptoPrime([prompt], llm_for(scripted_llm)),
        batch_size=300, max_steps=1, progress=False, executor="asyncio", max_concurrency=256,
    )
    assert result.baseline.train == 1.0
    assert flight["max"] == 256  # exactly max_concurrency in flight, never more
    assert flight["threads"] == {threading.get_ident()}


async def test_cancelling_afit_stores_an_interrupted_run_that_resumes_without_repeats(scripted_llm, tmp_path):
    prompt = node("Reply {q}", name="prompt", trainable=True, kind="prompt")
    calls: list[tuple[str, str]] = []
    third = asyncio.Event()
    block = {"on": True}

    @bundle()
    async def respond(template, q):
        """Fill the question in."""
        calls.append((template, q))
        if len(calls) == 3:
            third.set()
        if block["on"] and len(calls) > 3:
            await asyncio.Event().wait()  # hangs until cancelled
        return template.format(q=q)

    async def app(q):
        return await respond(prompt, q)

    scripted_llm.set_default(json.dumps(reply("ANSWER {q}!")))
    path = str(tmp_path / "runs.sqlite")
    kw = dict(guide=marker_guide, batch_size=2, progress=False, store=path, max_concurrency=4)
    trainer = Trainer(app, data(6), data(2, "v"), optimizer=OptoPrime([prompt], llm_for(scripted_llm)),
                      executor="asyncio", **kw)
    task = asyncio.ensure_future(trainer.afit())
    await third.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with Store(path) as store:
        (run,) = store.runs()
        assert run.status == "interrupted"
        done = {(e.version_id, e.split, e.index) for e in store.evaluations(run.id)}
    assert len(done) == 3  # stored as they completed; the hanging runs were cancelled
    block["on"] = False
    before = len(calls)
    result = optimize(app, data(6), data(2, "v"), optimizer=OptoPrime([prompt], llm_for(scripted_llm)),
                      resume=True, executor="threads", **kw)
    assert result.status == "completed" and result.best.val == 1.0
    with Store(path) as store:
        rows = store.evaluations(run.id)
        baseline = store.run(run.id).baseline_version_id
    keys = [(e.version_id, e.split, e.index, e.repeat) for e in rows]
    assert len(keys) == len(set(keys))
    # the resumed run ran none of the baseline evaluations stored before the cancel
    rerun = [(t, q) for t, q in calls[before:] if t == "Reply {q}"]
    stored_baseline = {f"q{i}" if s == "train" else f"v{i}" for v, s, i in done if v == baseline}
    assert not stored_baseline & {q for _, q in rerun}


def test_the_time_limit_stops_asyncio_runs_in_flight(scripted_llm):
    prompt = node("Reply {q}", name="prompt", trainable=True, kind="prompt")
    started = []

    @bundle()
    async def respond(template, q):
        """Wait for a model that never answers."""
        started.append(q)
        await asyncio.Event().wait()

    async def app(q):
        return await respond(prompt, q)

    result = optimize(app, data(4), guide=marker_guide, optimizer=OptoPrime([prompt], llm_for(scripted_llm)),
                      progress=False, executor="asyncio", time_limit=0.5)
    assert result.status == "time_limit"
    assert started  # they ran, and were cancelled (else optimize would not have returned)


def test_endpoint_failures_are_retried_on_asyncio(scripted_llm):
    prompt = node("ANSWER {q}!", name="prompt", trainable=True, kind="prompt")
    seen: list[str] = []

    class APIConnectionError(Exception):
        pass

    @bundle(catch_exceptions=False)
    async def respond(template, q):
        """Fill the question in (its endpoint drops the first call of q1)."""
        seen.append(q)
        if q == "q1" and seen.count("q1") == 1:
            raise APIConnectionError("connection refused")
        return template.format(q=q)

    async def app(q):
        return await respond(prompt, q)

    scripted_llm.set_default(json.dumps(reply("ANSWER {q}!")))
    result = optimize(app, data(3), guide=marker_guide, optimizer=OptoPrime([prompt], llm_for(scripted_llm)),
                      progress=False, executor="asyncio", batch_size=3)
    assert result.status == "completed" and result.baseline.train == 1.0
    assert seen.count("q1") >= 2  # tried again, then scored once


def test_the_executor_option_is_checked():
    with pytest.raises(ValueError, match="executor must be one of"):
        TrainConfig(executor="processes")
    assert isinstance(make_executor("threads", max_concurrency=2), ThreadExecutor)
    assert isinstance(make_executor("asyncio", max_concurrency=2), AsyncioExecutor)
    custom = ThreadExecutor(3)
    assert make_executor(custom, max_concurrency=8) is custom


def test_a_schema_2_store_gains_the_attempts_column(tmp_path):
    path = tmp_path / "old.sqlite"
    with Store(str(path)) as store:
        run_id = store.create_run({})
        v = store.version(run_id, {"p": "x"})
        store.add_evaluation(run_id, v, "train", 0, phase="baseline", score=1.0)
    conn = sqlite3.connect(path)
    conn.executescript(
        "BEGIN; ALTER TABLE evaluations DROP COLUMN attempts; "
        "UPDATE meta SET value = '2' WHERE key = 'schema_version'; COMMIT;"
    )
    conn.close()
    with Store(str(path), readonly=True) as old:
        assert [e.attempts for e in old.evaluations(run_id)] == [1]
    with Store(str(path)) as store:
        store.add_evaluation(run_id, v, "train", 1, phase="baseline", score=1.0, attempts=2)
        assert [e.attempts for e in store.evaluations(run_id)] == [1, 2]
        assert store.check() == []
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("3",)
    conn.close()


def ctrl_c_after(store: Store, n: int) -> None:
    """Send this process SIGINT (a real Ctrl-C) once ``n`` evaluations are stored."""
    import os
    import signal

    add = store.add_evaluation
    count = {"n": 0}

    def adding(*args, **kwargs):
        eid = add(*args, **kwargs)
        count["n"] += 1
        if count["n"] == n:
            os.kill(os.getpid(), signal.SIGINT)
        return eid

    store.add_evaluation = adding


def interrupted_then_resumed(app, prompt, scripted_llm, path, executor, **kw):
    """A run stopped by Ctrl-C after 5 stored evaluations, then resumed with threads: the
    stored evaluations (keys) of the interrupted run and of the whole run."""
    from .train_apps import improve_then_worsen

    scripted_llm.set_default(improve_then_worsen)
    store = Store(path)
    ctrl_c_after(store, 5)
    stopped = optimize(app, data(6), data(3, "v"), guide=marker_guide, store=store, batch_size=2,
                       optimizer=OptoPrime([prompt], llm_for(scripted_llm)), progress=False,
                       executor=executor, max_concurrency=4, **kw)
    assert stopped.status == "interrupted"
    before = {(e.version_id, e.split, e.index) for e in store.evaluations(stopped.run_id)}
    store.close()
    resumed = optimize(app, data(6), data(3, "v"), guide=marker_guide, store=path, batch_size=2,
                       optimizer=OptoPrime([prompt], llm_for(scripted_llm)), progress=False,
                       resume=True, max_concurrency=4)
    assert resumed.status == "completed" and prompt.value == "ANSWER {q}!"
    with Store(path) as s:
        after = [(e.version_id, e.split, e.index) for e in s.evaluations(resumed.run_id)]
    return before, after


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="POSIX signals")
def test_ctrl_c_with_asyncio_stores_an_interrupted_run_that_resumes(scripted_llm, tmp_path):
    prompt = node("Reply {q}", name="prompt", trainable=True, kind="prompt")
    calls = []

    @bundle()
    async def respond(template, q):
        """Fill the question in."""
        calls.append(q)
        await asyncio.sleep(0.001)
        return template.format(q=q)

    async def app(q):
        return await respond(prompt, q)

    before, after = interrupted_then_resumed(app, prompt, scripted_llm, str(tmp_path / "r.sqlite"), "asyncio")
    assert len(before) >= 5 and set(before) <= set(after)
    assert len(after) == len(set(after))  # nothing evaluated twice
