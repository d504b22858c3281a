"""optimize() on a framework app with nothing to train: the error says what discovery looked
for and how to add a parameter, not the advice for plain Python functions."""

from __future__ import annotations

import pytest
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

from opto_adapters import node, optimize
from opto_adapters.langchain import OptoTracer
from opto_adapters.train import AppError

DATA = [{"q": "a"}, {"q": "b"}]


def guide(example, output):
    return 1.0


def test_a_langchain_app_without_trainables():
    with pytest.raises(AppError) as info:
        optimize(RunnableLambda(lambda x: x), DATA, guide=guide, progress=False)
    text = str(info.value)
    assert text.startswith("the LangChain app RunnableLambda has no trainable parameters")
    assert "discovery found none" in text
    for searched in ("ChatPromptTemplate", "FewShotPromptTemplate", "bind_tools", "create_agent"):
        assert searched in text
    assert "tracer.add_parameter(Parameter(name='retriever.k'" in text
    assert "used_by=retriever" in text  # LangChain's add_parameter takes used_by
    assert "include=[...], exclude=[...]" in text
    assert "@bundle" not in text  # the plain-Python advice is not given


def test_a_langchain_tracer_whose_parameters_were_all_excluded():
    tracer = OptoTracer(ChatPromptTemplate.from_messages([("human", "{q}")]), exclude=["*"])
    with pytest.raises(AppError, match=r"discovery found \['prompt.human'\], but include=/exclude="):
        optimize(tracer, DATA, guide=guide, progress=False)


def test_a_llama_index_app_without_trainables():
    from llama_index.core import Document, VectorStoreIndex

    from tests.llama_index_fakes import WordEmbedding

    index = VectorStoreIndex.from_documents([Document(text="Paris.")], embed_model=WordEmbedding())
    with pytest.raises(AppError) as info:
        optimize(index.as_retriever(), DATA, guide=guide, progress=False)
    text = str(info.value)
    assert text.startswith("the LlamaIndex app VectorIndexRetriever has no trainable parameters")
    assert "get_prompts()" in text and "retriever_settings=True" in text
    assert "similarity_top_k" in text and "@bundle" not in text


def test_a_plain_function_keeps_its_own_advice():
    prompt = node("Q: {q}", name="prompt")  # not trainable
    with pytest.raises(AppError, match=r"make a value trainable with node\(value, trainable=True\)"):
        optimize(lambda x: prompt, DATA, guide=guide, progress=False)
