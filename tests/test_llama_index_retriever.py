"""LlamaIndex adapter on a retriever alone: the run is one retrieve step."""

from __future__ import annotations

import pytest
from llama_index.core import Document, VectorStoreIndex

from opto_adapters.llama_index import OptoTracer
from opto_adapters.trace import apply_updates

from .llama_index_fakes import WordEmbedding

DOCS = ["The sky is blue.", "The sea is blue too.", "Grass is green.", "Paris is in France."]


@pytest.fixture
def retriever():
    index = VectorStoreIndex.from_documents(
        [Document(text=t) for t in DOCS], embed_model=WordEmbedding()
    )
    return index.as_retriever(similarity_top_k=1)


def test_a_retriever_has_only_the_settings_asked_for(retriever):
    with OptoTracer(retriever) as tracer:
        assert tracer.parameters == []
    with OptoTracer(retriever, retriever_settings={"similarity_top_k": (1, 3)}) as tracer:
        [top_k] = tracer.parameters
        assert (top_k.name, top_k.kind, top_k.value, top_k.bounds) == (
            "similarity_top_k",
            "number",
            1,
            (1, 3),
        )


def test_graph_is_one_retrieve_step_fed_by_the_query_and_top_k(retriever):
    with OptoTracer(retriever, retriever_settings=True) as tracer:
        run = tracer.run("Which things are blue?")
    graph = run.graph
    assert [n.text for n in run.output] == ["The sky is blue."]
    assert graph.edges() == [
        ("query", "query", "retrieve"),
        ("similarity_top_k", "similarity_top_k", "retrieve"),
    ]
    assert graph.output.op.name == "VectorIndexRetriever.retrieve"
    assert [hit["text"] for hit in graph.output.value] == ["The sky is blue."]
    top_k = tracer.parameter("similarity_top_k")
    top_k.zero_feedback()
    graph.output.backward("Also return the sea.")
    assert len(top_k.feedback) == 1


def test_writing_top_k_changes_the_next_retrieval(retriever):
    with OptoTracer(retriever, retriever_settings=True) as tracer:
        apply_updates({tracer.parameter("similarity_top_k"): 2})
        run = tracer.run("Which things are blue?")
    assert retriever.similarity_top_k == 2
    assert {hit["text"] for hit in run.graph.output.value} == {
        "The sky is blue.",
        "The sea is blue too.",
    }


async def test_async_retrieval_is_traced_like_sync(retriever):
    with OptoTracer(retriever) as tracer:
        sync = tracer.run("Which things are blue?").graph
        run = await tracer.arun("Which things are blue?")
    assert run.graph is not sync and run.graph.edges() == sync.edges()
    assert run.graph.output.op.name == sync.output.op.name == "VectorIndexRetriever.retrieve"
