"""LlamaIndex adapter on chat engines, which keep their prompts outside ``get_prompts``."""

from __future__ import annotations

import pytest
from llama_index.core import Document, VectorStoreIndex

from opto_adapters.llama_index import OptoTracer
from opto_adapters.trace import ValidationError, apply_updates

from .llama_index_fakes import RecordingLLM, WordEmbedding

DOCS = ["The sky is blue.", "Grass is green.", "Paris is in France."]


@pytest.fixture(scope="module")
def index() -> VectorStoreIndex:
    return VectorStoreIndex.from_documents(
        [Document(text=t) for t in DOCS], embed_model=WordEmbedding()
    )


def context_engine(index, llm):
    return index.as_chat_engine(
        chat_mode="context", llm=llm, system_prompt="You are terse.", similarity_top_k=1
    )


def test_context_chat_engine_parameters(index):
    with OptoTracer(context_engine(index, RecordingLLM(chat_model=True))) as tracer:
        names = [p.name for p in tracer.parameters]
        assert names == ["context_template", "context_refine_template", "system_prompt"]
        assert tracer.parameter("context_template").variables == {"context_str"}
        assert tracer.parameter("system_prompt").kind == "text"
        assert "System prompt" in tracer.parameter("system_prompt").description


def test_context_chat_graph_links_template_system_prompt_and_retrieval(index):
    llm = RecordingLLM(reply="Blue.", chat_model=True)
    with OptoTracer(context_engine(index, llm)) as tracer:
        run = tracer.run("What color is the sky?")
    graph = run.graph
    assert str(run.output) == "Blue." and graph.output.value == "Blue."
    edges = set(graph.edges())
    assert {
        ("message", "query", "retrieve"),
        ("context_template", "system", "llm"),
        ("system_prompt", "system_2", "llm"),
        ("retrieve", "context_str", "llm"),
        ("message", "user", "llm"),
        ("llm", "llm", "synthesize"),
        ("synthesize", "synthesize", "response"),
    } <= edges
    assert graph.output.op.name == "ContextChatEngine.chat"


def test_context_chat_write_back_reaches_the_system_message(index):
    llm = RecordingLLM(reply="Blue.", chat_model=True)
    engine = context_engine(index, llm)
    with OptoTracer(engine) as tracer:
        graph = tracer.run("What color is the sky?").graph
        system = tracer.parameter("system_prompt")
        system.zero_feedback()
        graph.output.backward("Say which document you used.")
        assert len(system.feedback) == 1
        apply_updates(
            {
                system: "Always cite the document.",
                tracer.parameter("context_template"): "Documents:\n{context_str}\n",
            }
        )
        tracer.run("What color is the sky?")
    system_message = llm.messages[-1][0]
    assert system_message == ("system", "Documents:\nThe sky is blue.\nAlways cite the document.")
    with pytest.raises(ValidationError, match="drops the variable"):
        apply_updates({tracer.parameter("context_template"): "No context here."})


def test_simple_chat_engine_system_prompt_and_history(index):
    llm = RecordingLLM(reply="Hello!", chat_model=True)
    engine = index.as_chat_engine(chat_mode="simple", llm=llm, system_prompt="Be kind.")
    with OptoTracer(engine) as tracer:
        engine.chat("Hi")
        graph = tracer.run("How are you?").graph
        assert [p.name for p in tracer.parameters] == ["system_prompt"]
        apply_updates({tracer.parameter("system_prompt"): "Be very kind."})
        engine.chat("Bye")
    edges = set(graph.edges())
    assert {
        ("system_prompt", "system", "llm"),
        ("message", "user_2", "llm"),
        ("llm", "llm", "response"),
    } <= edges
    # the earlier turn is an input of this one (history), not part of its graph
    assert {n.value for n in graph.nodes if n.name == "user"} == {"Hi"}
    assert llm.messages[-1][0] == ("system", "Be very kind.")


def test_condense_question_engine_reaches_the_inner_query_engine_prompts(index):
    llm = RecordingLLM(reply=lambda p: "Is the sky blue?" if "standalone" in p.lower() else "Yes.")
    engine = index.as_chat_engine(chat_mode="condense_question", llm=llm, similarity_top_k=1)
    with OptoTracer(engine) as tracer:
        names = [p.name for p in tracer.parameters]
        assert names[:2] == [
            "condense_question_prompt",
            "query_engine.response_synthesizer.text_qa_template",
        ]
        engine.chat("Tell me about colors.")  # with no history there is nothing to condense
        graph = tracer.run("and the sky?").graph
    edges = set(graph.edges())
    assert ("condense_question_prompt", "template", "llm") in edges
    assert ("llm", "query", "retrieve") in edges  # the condensed question drives retrieval
    assert ("query_engine.response_synthesizer.text_qa_template", "template", "llm1") in edges
