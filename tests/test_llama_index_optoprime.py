"""End to end on LlamaIndex: trace a run, OptoPrime step through the scripted server,
the next run's LLM input carries the new text."""

from __future__ import annotations

import json

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.agent.workflow import FunctionAgent

from opto_adapters.llama_index import OptoTracer
from opto_adapters.llm import LLM
from opto_adapters.optimizers import OptoPrime

from .llama_index_fakes import RecordingLLM, ScriptedToolLLM, WordEmbedding, tool_description

QA = "response_synthesizer.text_qa_template"


def optimizer_llm(server) -> LLM:
    return LLM(base_url=server.base_url, api_key="k", model="optimizer", backoff_base=0.01)


def suggestion(values: dict) -> str:
    return json.dumps({"reasoning": "scripted", "suggestion": values})


@pytest.fixture
def engine():
    index = VectorStoreIndex.from_documents(
        [Document(text=t) for t in ["The sky is blue.", "Grass is green."]],
        embed_model=WordEmbedding(),
    )
    llm = RecordingLLM(reply="The sky is blue because of Rayleigh scattering, as is well known.")
    return index.as_query_engine(llm=llm, similarity_top_k=1), llm


def test_query_engine_prompt_improves_through_optoprime(engine, scripted_llm):
    query_engine, app_llm = engine
    with OptoTracer(query_engine) as tracer:
        run = tracer.run("What color is the sky?")
        opt = OptoPrime([tracer.parameter(QA)], optimizer_llm(scripted_llm))
        opt.backward(run, "Answer with one word.")
        new = "Facts:\n{context_str}\nReply with ONE word. Question: {query_str}\nWord:"
        scripted_llm.script(suggestion({QA: new}))
        record = opt.step()
        assert record.applied[QA][1] == new
        tracer.run("What color is the grass?")
    sent = scripted_llm.prompts()[0]
    assert "Answer with one word." in sent
    assert f"(prompt) {QA}=" in sent and "What color is the sky?" in sent
    assert "The sky is blue." in sent  # the retrieved text reached the optimizer
    assert "Reply with ONE word. Question: What color is the grass?" in app_llm.prompts[-1]


def test_rejected_template_keeps_the_engine_running(engine, scripted_llm):
    query_engine, app_llm = engine
    with OptoTracer(query_engine) as tracer:
        run = tracer.run("What color is the sky?")
        before = tracer.parameter(QA).value
        opt = OptoPrime([tracer.parameter(QA)], optimizer_llm(scripted_llm))
        opt.backward(run, "shorter")
        scripted_llm.script(suggestion({QA: "Just answer {query_str}"}))  # drops {context_str}
        record = opt.step()
        assert "context_str" in record.rejected[QA] and not record.changed
        assert tracer.parameter(QA).value == before
        rerun = tracer.run("What color is the grass?")
    assert rerun.error is None and "Grass is green." in app_llm.prompts[-1]


async def test_agent_tool_description_improves_through_optoprime(scripted_llm):
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    script = [[("add", {"a": 1, "b": 2})], "3"]
    app_llm = ScriptedToolLLM(script)
    agent = FunctionAgent(tools=[add], llm=app_llm, system_prompt="You are a calculator.")
    with OptoTracer(agent) as tracer:
        run = await tracer.arun("what is 1+2?")
        params = [tracer.parameter("agent.system_prompt"), tracer.parameter("tool.add")]
        opt = OptoPrime(params, optimizer_llm(scripted_llm))
        opt.backward(run, "Say which tool you used.")
        scripted_llm.script(
            suggestion(
                {
                    "tool.add": "add(a, b): exact integer sum. Always use it for sums.",
                    "agent.system_prompt": "You are a calculator. Name the tool you used.",
                }
            )
        )
        record = opt.step()
        assert set(record.applied) == {"tool.add", "agent.system_prompt"}
        app_llm.load(script)
        await tracer.arun("what is 1+2?")
    last = app_llm.calls[-1]
    assert tool_description(last, "add") == "add(a, b): exact integer sum. Always use it for sums."
    assert ("system", "You are a calculator. Name the tool you used.") in last["messages"]
    sent = scripted_llm.prompts()[0]
    assert "tool.add" in sent and "Say which tool you used." in sent
