"""LlamaIndex tracer lifecycle: which runs it traces, concurrency, failures, memory, closing."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import os
import subprocess
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler

from opto_adapters import runs
from opto_adapters.llama_index import OptoTracer

from .llama_index_fakes import RecordingLLM, WordEmbedding

QA_TEMPLATE = "response_synthesizer.text_qa_template"
DOCS = ["The sky is blue.", "Grass is green.", "Paris is in France."]


@pytest.fixture(scope="module")
def index() -> VectorStoreIndex:
    return VectorStoreIndex.from_documents(
        [Document(text=t) for t in DOCS], embed_model=WordEmbedding()
    )


def echo_llm() -> RecordingLLM:
    """Answers with the question it was asked, so each graph can be checked against its input."""
    return RecordingLLM(reply=lambda prompt: "A: " + prompt.rsplit("Query: ", 1)[-1].split("\n")[0])


def handlers() -> tuple[int, int]:
    d = get_dispatcher()
    return len(d.span_handlers), len(d.event_handlers)


def test_close_removes_exactly_its_handlers_and_stops_tracing(index):
    before = handlers()
    engine = index.as_query_engine(llm=echo_llm(), similarity_top_k=1)
    tracer = OptoTracer(engine)
    other = OptoTracer(index.as_retriever())
    assert handlers() == (before[0] + 2, before[1] + 2) and tracer.attached
    tracer.close()
    tracer.close()  # idempotent
    assert handlers() == (before[0] + 1, before[1] + 1) and not tracer.attached
    assert other.attached
    engine.query("What color is the sky?")
    assert tracer.graphs == []
    other.close()
    assert handlers() == before


def test_tracers_attaching_and_closing_in_threads_keep_exactly_their_handlers(index):
    # The dispatcher is process-global: one tracer's close() must never drop the handler
    # another thread's attach() just added, nor leave its own behind.
    d = get_dispatcher()
    span_before, event_before = list(d.span_handlers), list(d.event_handlers)
    tracers = [OptoTracer(index.as_retriever()) for _ in range(16)]
    for t in tracers:
        t.close()

    def churn(mine):
        for _ in range(150):
            for t in mine:
                t.attach()
            for t in mine:
                t.close()
        for t in mine[::2]:
            t.attach()  # end state: every other tracer attached

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often so an unlocked update loses a race
    try:
        threads = [threading.Thread(target=churn, args=(tracers[i::8],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    attached = [t for t in tracers if t.attached]
    try:
        assert len(attached) == 8
        assert ids(d.span_handlers) == ids(span_before + [t._span_handler for t in attached])
        assert ids(d.event_handlers) == ids(event_before + [t._event_handler for t in attached])
    finally:
        for t in tracers:
            t.close()
    assert ids(d.span_handlers) == ids(span_before)
    assert ids(d.event_handlers) == ids(event_before)


def test_closing_a_tracer_while_a_span_is_dispatched_skips_no_other_handler(index):
    # The dispatcher iterates its handler list by index while another thread may close a
    # tracer: removing a handler in place would shift the list and skip the next handler.
    # Closing from inside a handler makes that interleaving deterministic.
    closing = OptoTracer(index.as_retriever())
    closed_during_dispatch = []

    class CloseOnFirstSpan(BaseSpanHandler):
        def span_enter(self, *args, **kwargs):
            if not closed_during_dispatch:
                closing.close()
                closed_during_dispatch.append(True)

        def new_span(self, *args, **kwargs):
            return None

        def prepare_to_exit_span(self, *args, **kwargs):
            return None

        def prepare_to_drop_span(self, *args, **kwargs):
            return None

    d = get_dispatcher()
    closer = CloseOnFirstSpan()
    d.add_span_handler(closer)  # after `closing`'s handler, before `observer`'s
    retriever = index.as_retriever()
    observer = OptoTracer(retriever)
    try:
        retriever.retrieve("What is green?")
        assert closed_during_dispatch and not closing.attached
        [graph] = observer.graphs  # its handler saw the span that started the run
        assert graph.output.op.name == "VectorIndexRetriever.retrieve"
    finally:
        observer.close()
        d.span_handlers = [h for h in d.span_handlers if h is not closer]


_FINALIZED_MID_ATTACH = """
import threading
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.dispatcher import Dispatcher
from opto_adapters.llama_index import OptoTracer
from tests.llama_index_fakes import WordEmbedding

index = VectorStoreIndex.from_documents([Document(text="x")], embed_model=WordEmbedding())
d = get_dispatcher()
span_before, event_before = list(d.span_handlers), list(d.event_handlers)
dropped = OptoTracer(index.as_retriever())
newcomer = OptoTracer(index.as_retriever())
newcomer.close()
original = Dispatcher.add_span_handler

def add_while_the_gc_finalizes(self, handler):
    dropped._finalizer()  # what collecting `dropped` at this moment would run
    original(self, handler)

Dispatcher.add_span_handler = add_while_the_gc_finalizes
attaching = threading.Thread(target=newcomer.attach, daemon=True)
attaching.start()
attaching.join(10)
assert not attaching.is_alive(), "attach() deadlocked"
Dispatcher.add_span_handler = original
ids = lambda hs: sorted(map(id, hs))
assert not dropped.attached and newcomer.attached
assert ids(d.span_handlers) == ids([*span_before, newcomer._span_handler])
assert ids(d.event_handlers) == ids([*event_before, newcomer._event_handler])
newcomer.close()
assert ids(d.span_handlers) == ids(span_before)
print("ok")
"""


def test_a_tracer_finalized_in_the_middle_of_an_attach_neither_deadlocks_nor_lingers():
    # The gc may run a dropped tracer's finalizer (which detaches it) in a thread that is
    # already updating the handler lists under the lock. In a subprocess: a deadlock would
    # hold the lock for the rest of the session.
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", _FINALIZED_MID_ATTACH],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def ids(objects) -> list[int]:
    """Identities, sorted: handlers are pydantic models that compare equal by fields."""
    return sorted(map(id, objects))


def test_with_block_traces_every_run_then_closes(index):
    before = handlers()
    mine = index.as_query_engine(llm=echo_llm(), similarity_top_k=1)
    foreign = index.as_query_engine(llm=echo_llm(), similarity_top_k=1)
    with OptoTracer(mine) as tracer:
        foreign.query("What is green?")  # not the target, but inside the block
        mine.query("What color is the sky?")
    assert handlers() == before and not tracer.attached
    roots = [g.output.op.name for g in tracer.graphs]
    assert roots == ["RetrieverQueryEngine.query", "RetrieverQueryEngine.query"]
    assert [g.output.value for g in tracer.graphs] == [
        "A: What is green?",
        "A: What color is the sky?",
    ]
    foreign.query("What is green?")
    mine.query("What color is the sky?")
    assert len(tracer.graphs) == 2  # closed: nothing more


def test_outside_a_with_block_only_the_target_and_its_components_are_traced(index):
    mine = index.as_query_engine(llm=echo_llm(), similarity_top_k=1)
    foreign = index.as_query_engine(llm=echo_llm(), similarity_top_k=1)
    tracer = OptoTracer(mine)
    try:
        foreign.query("What is green?")
        mine.get_prompts()  # bookkeeping spans of the target are not runs
        assert tracer.graphs == []
        mine.retriever.retrieve("What is green?")  # a component run on its own is traced
        [graph] = tracer.graphs
        assert graph.output.op.name == "VectorIndexRetriever.retrieve"
    finally:
        tracer.close()


def test_run_reattaches_a_closed_tracer_only_for_its_run(index):
    before = handlers()
    engine = index.as_query_engine(llm=echo_llm(), similarity_top_k=1)
    tracer = OptoTracer(engine)
    tracer.close()
    run = tracer.run("What color is the sky?")
    assert run.graph is not None and run.graph.output.value == "A: What color is the sky?"
    assert handlers() == before and not tracer.attached


def slow_echo_llm(delay: float = 0.01) -> RecordingLLM:
    """``echo_llm`` that takes ``delay`` seconds per call, so concurrent runs overlap."""
    llm = echo_llm()
    llm.delay = delay
    return llm


def test_concurrent_runs_on_a_closed_tracer_each_get_their_graph(index):
    # The trainer calls tracer.run from several threads on a tracer closed by `with`: each
    # run attaches it for its own duration, and the first to finish must not detach the
    # handlers under the others.
    before = handlers()
    engine = index.as_query_engine(llm=slow_echo_llm(), similarity_top_k=1)
    tracer = OptoTracer(engine, max_graphs=100)
    with tracer:
        engine.query("warmup")
    assert not tracer.attached
    questions = [f"thread question {i}" for i in range(32)]
    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(tracer.run, questions))
    missing = [q for q, r in zip(questions, runs, strict=True) if r.graph is None]
    assert missing == []
    for question, run in zip(questions, runs, strict=True):
        assert run.graph.output.value == f"A: {question}"
    assert not tracer.attached and handlers() == before


async def test_concurrent_aruns_on_a_closed_tracer_each_get_their_graph(index):
    before = handlers()
    engine = index.as_query_engine(llm=slow_echo_llm(), similarity_top_k=1)
    tracer = OptoTracer(engine, max_graphs=100)
    tracer.close()
    questions = [f"async question {i}" for i in range(16)]
    runs = await asyncio.gather(*(tracer.arun(q) for q in questions))
    missing = [q for q, r in zip(questions, runs, strict=True) if r.graph is None]
    assert missing == []
    for question, run in zip(questions, runs, strict=True):
        assert run.graph.output.value == f"A: {question}"
    assert not tracer.attached and handlers() == before


def _run_in_thread_while(tracer, question, action):
    """Start ``tracer.run(question)`` in a thread, call ``action()`` while its LLM call is
    in flight, let the run finish and return it."""
    entered, release = threading.Event(), threading.Event()
    llm = tracer.target._response_synthesizer._llm

    def reply(prompt):
        entered.set()
        assert release.wait(5)
        return "A: done"

    llm._reply = reply
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(tracer.run, question)
        assert entered.wait(5)
        action()
        release.set()
        return future.result(5)


def test_a_run_never_detaches_a_tracer_the_user_attached_meanwhile(index):
    engine = index.as_query_engine(llm=echo_llm(), similarity_top_k=1)
    tracer = OptoTracer(engine)
    tracer.close()
    run = _run_in_thread_while(tracer, "What is green?", tracer.attach)
    assert run.graph is not None
    assert tracer.attached  # the user's attach() outlives the run's temporary one
    engine.query("traced after the run")
    assert tracer.last_graph.output.value == "A: done"
    assert len(tracer.graphs) == 2
    tracer.close()
    assert not tracer.attached


def test_close_during_a_run_detaches_when_the_run_ends(index):
    before = handlers()
    engine = index.as_query_engine(llm=echo_llm(), similarity_top_k=1)
    tracer = OptoTracer(engine)
    run = _run_in_thread_while(tracer, "What is green?", tracer.close)
    assert run.graph is not None and run.graph.output.value == "A: done"
    assert not tracer.attached and handlers() == before


async def test_concurrent_aquery_calls_get_separate_correct_graphs(index):
    engine = index.as_query_engine(llm=echo_llm(), similarity_top_k=1)
    questions = [f"question {i}: what color is the sky?" for i in range(12)]
    with OptoTracer(engine, max_graphs=50) as tracer:
        runs = await asyncio.gather(*(tracer.arun(q) for q in questions))
        await asyncio.gather(*(engine.aquery(q) for q in questions))
    assert len(tracer.graphs) == 24
    for question, run in zip(questions, runs, strict=True):
        nodes = {run.graph.names()[id(n)]: n for n in run.graph.nodes}
        assert nodes["query"].value == question
        assert run.graph.output.value == f"A: {question}"
        assert len(run.graph.nodes) == 6  # nothing from the other runs leaked in
    for graph in tracer.graphs:
        query = next(n for n in graph.nodes if n.name == "query")
        assert graph.output.value == f"A: {query.value}"


def test_queries_in_threads_get_separate_correct_graphs(index):
    engine = index.as_query_engine(llm=echo_llm(), similarity_top_k=1)
    questions = [f"thread {i}: what is green?" for i in range(8)]
    with OptoTracer(engine) as tracer:
        threads = [threading.Thread(target=engine.query, args=(q,)) for q in questions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert tracer._recorder.open_runs == 0
    outputs = sorted(g.output.value for g in tracer.graphs)
    assert outputs == sorted(f"A: {q}" for q in questions)


def test_with_scope_follows_the_context_into_threads_started_with_it(index):
    foreign = index.as_query_engine(llm=echo_llm(), similarity_top_k=1)
    tracer = OptoTracer(index.as_retriever())
    with tracer:
        plain = threading.Thread(target=foreign.query, args=("plain thread",))
        plain.start()
        plain.join()
        ctx = contextvars.copy_context()
        copied = threading.Thread(target=ctx.run, args=(foreign.query, "copied context"))
        copied.start()
        copied.join()
    assert [g.output.value for g in tracer.graphs] == ["A: copied context"]


def test_a_failure_inside_the_tracer_is_logged_and_never_breaks_the_app(index, caplog, monkeypatch):
    engine = index.as_query_engine(llm=echo_llm(), similarity_top_k=1)
    with OptoTracer(engine) as tracer:
        recorder = tracer._recorder

        def broken(*args, **kwargs):
            raise RuntimeError("tracer bug")

        monkeypatch.setattr(recorder, "_event", broken)
        monkeypatch.setattr(runs, "build_graph", broken)
        with caplog.at_level(logging.DEBUG, logger="opto_adapters.llama_index"):
            for _ in range(3):
                assert str(engine.query("What color is the sky?")) == "A: What color is the sky?"
        assert tracer.graphs == []
        assert recorder.open_runs == 0 and recorder.open_spans == 0  # nothing left behind
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert {r.getMessage().split(";")[0] for r in errors} == {
            "opto_adapters tracer failed in event",
            "opto_adapters tracer failed in building the graph",
        }  # once per kind of failure, not once per event
        assert all(r.exc_info for r in errors)

        monkeypatch.undo()
        engine.query("What color is the sky?")
        assert len(tracer.graphs) == 1  # recovers


def test_memory_stays_bounded_for_a_long_lived_tracer(index):
    engine = index.as_query_engine(llm=echo_llm(), similarity_top_k=1)
    with OptoTracer(engine, max_graphs=5) as tracer:
        engine.query("first")
        first = weakref.ref(tracer.last_graph.output)
        for i in range(60):
            engine.query(f"q{i}")
        assert len(tracer.graphs) == 5
        assert [g.output.value for g in tracer.graphs] == [f"A: q{i}" for i in range(55, 60)]
        assert tracer._recorder.open_runs == 0 and tracer._recorder.open_spans == 0
        gc.collect()
        assert first() is None  # an evicted graph's nodes are freed: nothing else holds them


def test_runs_that_never_finish_are_evicted(index):
    engine = index.as_query_engine(llm=echo_llm(), similarity_top_k=1)
    with OptoTracer(engine, max_open_runs=3) as tracer:
        recorder = tracer._recorder
        handler = next(h for h in get_dispatcher().span_handlers if h is tracer._span_handler)

        class Args:
            arguments: dict = {}

        for i in range(5):  # roots that enter and never exit (e.g. an abandoned stream)
            handler.span_enter(f"RetrieverQueryEngine.query-{i:036d}", Args(), instance=engine)
        assert recorder.open_runs == 3


def test_a_dropped_tracer_detaches_itself(index):
    before = handlers()
    tracer = OptoTracer(index.as_retriever())
    ref = weakref.ref(tracer)
    del tracer
    gc.collect()
    assert ref() is None and handlers() == before


def test_importing_opto_adapters_does_not_import_llama_index():
    code = "import sys, opto_adapters; assert 'llama_index.core' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_on_unknown_target_says_what_to_do():
    class Thing:
        pass

    with OptoTracer(Thing()) as tracer:
        assert tracer.parameters == []
        with pytest.raises(TypeError, match="call it yourself"):
            tracer.run("x")


def test_a_streamed_query_is_one_graph_once_the_stream_is_consumed(index):
    llm = RecordingLLM(reply="Blue it is.")
    engine = index.as_query_engine(llm=llm, similarity_top_k=1, streaming=True)
    with OptoTracer(engine) as tracer:
        response = engine.query("What color is the sky?")
        assert tracer.graphs == [] and llm.prompts == []  # the tracer consumes nothing
        assert "".join(response.response_gen) == "Blue it is."  # the user gets every token
        [graph] = tracer.graphs
    assert graph.output.value == "Blue it is."  # the streamed text
    [call] = [n for n in graph.nodes if n.op is not None and n.op.kind == "llm"]
    assert call.value == "Blue it is." and len(llm.prompts) == 1
    assert [p.name for p in graph.parameters] == [QA_TEMPLATE]
    assert tracer._recorder.open_runs == 0 and tracer._recorder.open_spans == 0


def test_a_stream_never_consumed_leaves_no_graph_and_is_evicted(index):
    engine = index.as_query_engine(
        llm=RecordingLLM(reply="Blue."), similarity_top_k=1, streaming=True
    )
    with OptoTracer(engine, max_open_runs=2) as tracer:
        for _ in range(4):
            engine.query("What color is the sky?")  # never read
        assert tracer.graphs == [] and tracer._recorder.open_runs == 2
        response = engine.query("What color is the sky?")
        assert "".join(response.response_gen) == "Blue."
        assert len(tracer.graphs) == 1 and tracer.last_graph.output.value == "Blue."
