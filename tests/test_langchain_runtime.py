"""OptoTracer at run time: concurrency, the global form, memory, and never breaking the app."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnableParallel
from langchain_core.tools import tool

from opto_adapters import runs
from opto_adapters.langchain import OptoTracer
from opto_adapters.trace import ExceptionNode
from tests.langchain_fakes import RecordingChatModel, echo, tool_call

QUESTIONS = [f"question number {i}?" for i in range(8)]


def make_chain(model: RecordingChatModel | None = None):
    prompt = ChatPromptTemplate.from_messages([("system", "Be helpful."), ("human", "{question}")])
    model = model or RecordingChatModel(respond=echo())
    return prompt | model | StrOutputParser()


def values(graph) -> dict[str, object]:
    return {graph.names()[id(n)]: n.value for n in graph.nodes}


def assert_one_consistent_graph_per_run(tracer: OptoTracer, questions: list[str]) -> None:
    """Every question has exactly one graph, whose output answers that very question."""
    graphs = tracer.graphs
    assert len(graphs) == len(questions)
    seen = set()
    for graph in graphs:
        v = values(graph)
        question = v["input.question"]
        assert graph.output.value == f"answer to: {question}"
        assert v["prompt"] == f"system: Be helpful.\nhuman: {question}"
        assert [p.name for p in graph.parameters] == ["prompt.system", "prompt.human"]
        seen.add(question)
    assert seen == set(questions)


def assert_pruned(tracer: OptoTracer) -> None:
    assert tracer.run_map == {}
    assert tracer.order_map == {}
    assert tracer._external_run_ids == {}
    assert tracer._late == {}


def test_batch_gives_one_graph_per_input():
    chain = make_chain()
    tracer = OptoTracer(chain)
    chain.batch(
        [{"question": q} for q in QUESTIONS], config={"callbacks": [tracer], "max_concurrency": 4}
    )
    assert_one_consistent_graph_per_run(tracer, QUESTIONS)
    assert_pruned(tracer)


async def test_abatch_and_gathered_ainvoke():
    chain = make_chain()
    tracer = OptoTracer(chain)
    await chain.abatch([{"question": q} for q in QUESTIONS[:4]], config={"callbacks": [tracer]})
    await asyncio.gather(
        *(chain.ainvoke({"question": q}, config={"callbacks": [tracer]}) for q in QUESTIONS[4:])
    )
    assert_one_consistent_graph_per_run(tracer, QUESTIONS)
    assert_pruned(tracer)


async def test_concurrent_arun_returns_each_runs_own_graph():
    tracer = OptoTracer(make_chain())
    traced = await asyncio.gather(*(tracer.arun({"question": q}) for q in QUESTIONS))
    for q, t in zip(QUESTIONS, traced, strict=True):
        assert t.output == f"answer to: {q}"
        assert values(t.graph)["input.question"] == q
        assert t.graph.output.value == t.output


async def test_concurrent_astream():
    chain = make_chain()
    tracer = OptoTracer(chain)

    async def consume(q: str) -> str:
        return "".join(
            [c async for c in chain.astream({"question": q}, config={"callbacks": [tracer]})]
        )

    outs = await asyncio.gather(*(consume(q) for q in QUESTIONS))
    assert outs == [f"answer to: {q}" for q in QUESTIONS]
    assert_one_consistent_graph_per_run(tracer, QUESTIONS)
    assert_pruned(tracer)


def test_threads_each_calling_run():
    tracer = OptoTracer(make_chain())
    with ThreadPoolExecutor(max_workers=8) as pool:
        traced = list(pool.map(lambda q: tracer.run({"question": q}), QUESTIONS * 3))
    for q, t in zip(QUESTIONS * 3, traced, strict=True):
        assert values(t.graph)["input.question"] == q and t.output == f"answer to: {q}"
    assert len(tracer.graphs) == 24
    assert_pruned(tracer)


def test_parallel_branches_get_their_own_inputs():
    model = RecordingChatModel(respond=echo())
    short = ChatPromptTemplate.from_messages(
        [("system", "Answer briefly."), ("human", "{question}")]
    )
    long = ChatPromptTemplate.from_messages(
        [("system", "Answer in detail."), ("human", "Explain: {question}")]
    )
    chain = RunnableParallel(
        brief=short | model | StrOutputParser(), detailed=long | model | StrOutputParser()
    )
    tracer = OptoTracer(chain)
    out = chain.invoke({"question": "why?"}, config={"callbacks": [tracer]})
    assert out == {"brief": "answer to: why?", "detailed": "answer to: Explain: why?"}

    graph = tracer.last_graph
    edges = graph.edges()
    assert ("brief.prompt.system", "system", "prompt") in edges
    assert ("detailed.prompt.system", "system", "prompt1") in edges
    assert ("input.question", "question", "prompt") in edges
    assert ("input.question", "question", "prompt1") in edges
    assert ("prompt", "messages", "model") in edges and ("prompt1", "messages", "model1") in edges
    assert {arg for _, arg, dst in edges if dst == graph.names()[id(graph.output)]} == {
        "brief",
        "detailed",
    }
    # feedback on the whole output reaches both branches' prompts
    graph.output.backward("too long")
    assert (
        tracer.parameter("brief.prompt.system").feedback
        and tracer.parameter("detailed.prompt.system").feedback
    )


def test_agent_batch():
    from langchain.agents import create_agent

    @tool
    def lookup(city: str) -> str:
        """Look up facts about a city."""
        return f"{city} facts"

    def respond(messages):
        if messages[-1].type == "human":
            return tool_call(
                "lookup", call_id=f"call_{messages[-1].content}", city=messages[-1].content
            )
        return f"done with {messages[-1].content}"

    agent = create_agent(
        RecordingChatModel(respond=respond), [lookup], system_prompt="Use the tool."
    )
    tracer = OptoTracer(agent)
    cities = ["Paris", "Rome", "Oslo", "Lima"]
    outs = agent.batch(
        [{"messages": [("user", c)]} for c in cities], config={"callbacks": [tracer]}
    )
    assert [o["messages"][-1].content for o in outs] == [f"done with {c} facts" for c in cities]
    assert len(tracer.graphs) == 4
    for graph in tracer.graphs:
        v = values(graph)
        city = v["input.messages"].removeprefix("human: ")
        assert v["lookup"] == f"{city} facts"
        assert v["model1"] == f"done with {city} facts"
        assert ("lookup", "tool", "model1") in graph.edges()
    assert_pruned(tracer)


# -- the global form --------------------------------------------------------------------------


def test_global_context_manager_traces_untouched_user_code():
    chain = make_chain()
    tracer = OptoTracer(chain)
    chain.invoke({"question": "before"})
    with tracer as active:
        assert active is tracer
        chain.invoke({"question": "inside"})
        chain.batch([{"question": "batch 1"}, {"question": "batch 2"}])
        chain.invoke({"question": "both ways"}, config={"callbacks": [tracer]})  # not twice
    chain.invoke({"question": "after"})
    assert_one_consistent_graph_per_run(tracer, ["inside", "batch 1", "batch 2", "both ways"])


def test_global_form_in_threads_with_copied_context_and_close():
    chain = make_chain()
    tracer = OptoTracer(chain)
    tracer.__enter__()
    try:
        ctx = contextvars.copy_context()
        worker = threading.Thread(target=ctx.run, args=(chain.invoke, {"question": "in a thread"}))
        worker.start()
        worker.join()
        plain = threading.Thread(target=chain.invoke, args=({"question": "no context"},))
        plain.start()
        plain.join()
    finally:
        tracer.close()
        tracer.close()  # idempotent
    chain.invoke({"question": "closed"})
    assert [values(g)["input.question"] for g in tracer.graphs] == ["in a thread"]


async def test_async_global_form():
    chain = make_chain()
    tracer = OptoTracer(chain)
    async with tracer:
        await asyncio.gather(chain.ainvoke({"question": "a"}), chain.ainvoke({"question": "b"}))
    await chain.ainvoke({"question": "c"})
    assert_one_consistent_graph_per_run(tracer, ["a", "b"])


def test_nested_global_tracers_each_trace_as_if_alone():
    """``with t1: with t2:`` used to leave t1 tracing nothing inside t2's block."""
    chain1, chain2 = make_chain(), make_chain()
    outer, inner = OptoTracer(chain1), OptoTracer(chain2)
    with outer:
        chain1.invoke({"question": "1"})
        with inner:
            chain1.invoke({"question": "2"})
            chain2.batch([{"question": "3"}, {"question": "4"}])  # pool threads
            chain2.invoke({"question": "5"}, config={"callbacks": [inner]})  # not twice
        chain2.invoke({"question": "6"})
    chain1.invoke({"question": "7"})

    def questions(tracer):
        return sorted(values(g)["input.question"] for g in tracer.graphs)

    # the global form traces every run in its block, whichever chain
    assert questions(outer) == ["1", "2", "3", "4", "5", "6"]
    assert questions(inner) == ["2", "3", "4", "5"]
    for tracer, own in ((outer, chain1), (inner, chain2)):
        for graph in tracer.graphs:
            question = values(graph)["input.question"]
            assert graph.output.value == f"answer to: {question}"
            # a graph holds its tracer's parameters when the run is of the tracer's own chain
            of_own_chain = (question in ("1", "2")) == (own is chain1)
            assert graph.parameters == (tracer.parameters if of_own_chain else [])
        assert_pruned(tracer)


def test_global_tracers_closed_in_any_order():
    chain = make_chain()
    first, second, third = OptoTracer(chain), OptoTracer(chain), OptoTracer(chain)

    def scenario() -> None:
        first.__enter__()
        second.__enter__()
        first.close()  # the first one leaves; the second one stays
        chain.invoke({"question": "a"})
        with third:  # takes the free place of the first
            chain.invoke({"question": "b"})
        with first, first:  # the same tracer twice: still once per run
            chain.invoke({"question": "c"})
        second.__exit__(None, None, None)
        chain.invoke({"question": "d"})

    contextvars.copy_context().run(scenario)  # whatever happens, no tracer stays active here
    assert [values(g)["input.question"] for g in first.graphs] == ["c"]
    assert [values(g)["input.question"] for g in second.graphs] == ["a", "b", "c"]
    assert [values(g)["input.question"] for g in third.graphs] == ["b"]


async def test_nested_async_global_tracers():
    chain1, chain2 = make_chain(), make_chain()
    outer, inner = OptoTracer(chain1), OptoTracer(chain2)
    async with outer:
        async with inner:
            await asyncio.gather(
                chain1.ainvoke({"question": "a"}), chain2.ainvoke({"question": "b"})
            )
        await chain1.ainvoke({"question": "c"})
    assert sorted(values(g)["input.question"] for g in outer.graphs) == ["a", "b", "c"]
    assert sorted(values(g)["input.question"] for g in inner.graphs) == ["a", "b"]


# -- memory and robustness --------------------------------------------------------------------


def test_long_lived_tracer_keeps_no_per_run_state():
    def flaky(text: str) -> str:
        if "3" in text:
            raise ValueError("bad luck")
        return text

    chain = make_chain() | RunnableLambda(flaky)
    tracer = OptoTracer(chain, max_graphs=10)
    for i in range(60):
        tracer.run({"question": f"q{i}"})
    chain.batch(
        [{"question": f"b{i}"} for i in range(20)],
        config={"callbacks": [tracer]},
        return_exceptions=True,
    )
    for _ in chain.stream({"question": "s"}, config={"callbacks": [tracer]}):
        pass
    stream = chain.stream({"question": "abandoned"}, config={"callbacks": [tracer]})
    next(stream)
    stream.close()
    assert_pruned(tracer)
    assert len(tracer.graphs) == 10
    assert sum(isinstance(g.output, ExceptionNode) for g in tracer.graphs) >= 1


def test_a_stream_closed_early_logs_no_error_and_records_no_graph(caplog):
    """The consumer stops a stream: the root ends while its steps still stream. Their late
    ends used to raise TracerException (logged at ERROR) and a graph whose output was {} and
    that had no parameters was recorded."""
    chain = make_chain()
    tracer = OptoTracer(chain)
    with caplog.at_level(logging.DEBUG):
        for _ in chain.stream({"question": "broken off"}, config={"callbacks": [tracer]}):
            break
        stream = chain.stream({"question": "closed"}, config={"callbacks": [tracer]})
        next(stream)
        stream.close()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "stopped early" in caplog.text
    assert tracer.graphs == []
    assert_pruned(tracer)
    # the tracer is fine afterwards: a stream read to the end gives its graph
    assert "".join(chain.stream({"question": "full"}, config={"callbacks": [tracer]}))
    assert_one_consistent_graph_per_run(tracer, ["full"])
    assert_pruned(tracer)


def test_roots_waiting_for_their_steps_are_bounded(monkeypatch, caplog):
    from opto_adapters.langchain import tracer as tracer_module

    monkeypatch.setattr(tracer_module, "_MAX_LATE", 1)
    chain = make_chain()
    tracer = OptoTracer(chain)
    waiting = []

    async def consume() -> None:
        for i in range(3):
            stream = chain.astream({"question": f"q{i}"}, config={"callbacks": [tracer]})
            await anext(stream)
            await stream.aclose()
            await asyncio.sleep(0.01)
            waiting.append(len(tracer._late))

    with caplog.at_level(logging.DEBUG):
        asyncio.run(consume())  # the models' streams end when the loop shuts down
    assert waiting == [1, 1, 1]
    assert caplog.text.count("no longer waiting") == 2
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert tracer.graphs == []
    assert_pruned(tracer)


def test_an_async_stream_closed_early_logs_no_error_and_records_no_graph(caplog):
    chain = make_chain()
    tracer = OptoTracer(chain)

    async def consume() -> None:
        stream = chain.astream({"question": "closed"}, config={"callbacks": [tracer]})
        await anext(stream)
        await stream.aclose()

    with caplog.at_level(logging.DEBUG):
        # the model's stream only ends when the event loop shuts its generators down
        asyncio.run(consume())
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "stopped early" in caplog.text
    assert tracer.graphs == []
    assert_pruned(tracer)


async def test_a_failed_async_parallel_is_recorded_when_its_other_branches_end(caplog):
    """``RunnableParallel.ainvoke`` fails as soon as one branch fails, while the others still
    run: the graph is recorded once they have ended, with the failure as its output."""
    finished = asyncio.Event()

    async def slow(text: str) -> str:
        await asyncio.sleep(0.05)
        finished.set()
        return text

    def fail(inputs: dict) -> str:
        raise ValueError("bad branch")

    chain = RunnableParallel(answer=make_chain() | RunnableLambda(slow), check=RunnableLambda(fail))
    tracer = OptoTracer(chain)
    with caplog.at_level(logging.DEBUG):
        traced = await tracer.arun({"question": "why?"})
        assert isinstance(traced.error, ValueError) and traced.graph is None
        assert "it failed: its graph is recorded when they end" in caplog.text
        await asyncio.wait_for(finished.wait(), 5)
        for _ in range(500):  # the branch's end callbacks follow
            if tracer.graphs:
                break
            await asyncio.sleep(0.01)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    graph = tracer.last_graph
    assert graph is not None and isinstance(graph.output, ExceptionNode)
    assert str(graph.output.exception) == "bad branch"
    assert_pruned(tracer)


def test_a_failing_graph_builder_never_breaks_the_chain(monkeypatch, caplog):
    chain = make_chain()
    tracer = OptoTracer(chain)

    def broken(*args, **kwargs):
        raise RuntimeError("builder bug")

    monkeypatch.setattr(runs, "build_graph", broken)
    with caplog.at_level(logging.ERROR, logger="opto_adapters.langchain"):
        assert (
            chain.invoke({"question": "still works?"}, config={"callbacks": [tracer]})
            == "answer to: still works?"
        )
        traced = tracer.run({"question": "and run?"})
    assert traced.output == "answer to: and run?" and traced.graph is None and traced.error is None
    assert "builder bug" in caplog.text and "the app is not affected" in caplog.text
    assert tracer.graphs == []
    assert_pruned(tracer)

    monkeypatch.undo()
    chain.invoke({"question": "fixed"}, config={"callbacks": [tracer]})
    assert values(tracer.last_graph)["input.question"] == "fixed"


def test_a_failing_callback_never_breaks_the_chain(monkeypatch, caplog):
    chain = make_chain()
    tracer = OptoTracer(chain)

    def broken(self, *args, **kwargs):
        raise RuntimeError("start bug")

    monkeypatch.setattr(type(tracer), "_create_chain_run", broken)
    with caplog.at_level(logging.ERROR, logger="opto_adapters.langchain"):
        assert chain.invoke({"question": "ok?"}, config={"callbacks": [tracer]}) == "answer to: ok?"
    assert "start bug" in caplog.text


def test_run_keeps_the_users_callbacks_and_needs_a_target():
    from langchain_core.callbacks import CallbackManager

    from tests.langchain_fakes import RunRecorder

    chain = make_chain()
    tracer = OptoTracer(chain)
    mine = RunRecorder()
    traced = tracer.run({"question": "a"}, config={"callbacks": [mine], "tags": ["x"]})
    assert len(mine.roots) == 1 and str(mine.roots[0].id) == traced.graph.metadata["run_id"]
    other = RunRecorder()
    traced = tracer.run({"question": "b"}, config={"callbacks": CallbackManager(handlers=[other])})
    assert len(other.roots) == 1 and values(traced.graph)["input.question"] == "b"
    with pytest.raises(TypeError, match="OptoTracer\\(chain\\)"):
        OptoTracer().run("x")
