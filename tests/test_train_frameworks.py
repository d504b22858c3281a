"""optimize() straight on a LangChain chain and a LlamaIndex query engine: the right tracer is
picked, a better prompt is kept and written back into the live object."""

from __future__ import annotations

import json

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from llama_index.core import Document, VectorStoreIndex

from opto_adapters import optimize
from opto_adapters.llm import LLM

from .facts import FACTS, MARK, answer_for, guide  # noqa: F401  (re-exported for other tests)
from .langchain_fakes import RecordingChatModel
from .llama_index_fakes import RecordingLLM, WordEmbedding

TRAIN = [{"question": f"What is the {k}?", "answer": v} for k, v in list(FACTS.items())[:2]]
VAL = [{"question": f"What is the {k}?", "answer": v} for k, v in list(FACTS.items())[2:]]




def optimizer_llm(server, suggestion: dict) -> LLM:
    server.set_default(json.dumps({"reasoning": "terse answers score higher", "suggestion": suggestion}))
    return LLM(base_url=server.base_url, api_key="k", model="opt", backoff_base=0.01)


def test_optimize_a_langchain_chain(scripted_llm):
    model = RecordingChatModel(respond=lambda messages: answer_for("\n".join(str(m.content) for m in messages)))
    prompt = ChatPromptTemplate.from_messages([("system", "You are helpful."), ("human", "{question}")])
    chain = prompt | model | StrOutputParser()
    llm = optimizer_llm(scripted_llm, {"prompt.system": f"You are helpful. {MARK}"})
    result = optimize(chain, TRAIN, VAL, guide=guide, llm=llm, input_key=["question"],
                      epochs=1, batch_size=2, progress=False)
    assert (result.baseline.val, result.best.val) == (0.5, 1.0)
    assert prompt.messages[0].prompt.template == f"You are helpful. {MARK}"  # written back
    assert chain.invoke({"question": "What is the capital of Peru?"}) == "Lima"
    assert "prompt.system" in scripted_llm.prompts()[0]


def test_optimize_a_llama_index_query_engine(scripted_llm):
    index = VectorStoreIndex.from_documents(
        [Document(text=f"The {k} is {v}.") for k, v in FACTS.items()], embed_model=WordEmbedding()
    )
    engine = index.as_query_engine(llm=RecordingLLM(reply=answer_for), similarity_top_k=1)
    qa = "response_synthesizer.text_qa_template"
    template = "Context: {context_str}\nQuestion: {query_str}\n" + MARK + "\nAnswer: "
    llm = optimizer_llm(scripted_llm, {qa: template})
    result = optimize(engine, TRAIN, VAL, guide=guide, llm=llm, input_key="question",
                      epochs=1, batch_size=2, progress=False)
    assert (result.baseline.val, result.best.val) == (0.5, 1.0)
    live = engine.get_prompts()["response_synthesizer:text_qa_template"]
    assert MARK in live.get_template()  # written back through update_prompts
    assert str(engine.query("What is the capital of Peru?")) == "Lima"
