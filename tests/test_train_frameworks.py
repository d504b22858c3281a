"""optimize() straight on a LangChain chain and a LlamaIndex query engine: the right tracer is
picked, a better prompt is kept and written back into the live object."""

from __future__ import annotations

import json

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from llama_index.core import Document, VectorStoreIndex

from opto_adapters import Feedback, optimize
from opto_adapters.llm import LLM

from .langchain_fakes import RecordingChatModel
from .llama_index_fakes import RecordingLLM, WordEmbedding

MARK = "Reply with the bare answer ONLY."
FACTS = {"capital of France": "Paris", "capital of Italy": "Rome", "capital of Spain": "Madrid", "capital of Peru": "Lima"}
TRAIN = [{"question": f"What is the {k}?", "answer": v} for k, v in list(FACTS.items())[:2]]
VAL = [{"question": f"What is the {k}?", "answer": v} for k, v in list(FACTS.items())[2:]]


def answer_for(text: str) -> str:
    asked = max(FACTS, key=text.rfind)  # the question comes after any retrieved context
    answer = FACTS[asked]
    return answer if MARK in text else f"Well, I believe that the answer is {answer}, most likely."


def guide(example, output):
    text = str(output)
    if text.strip() == example["answer"]:
        return Feedback(score=1.0, text="correct")
    return Feedback(score=0.5 if example["answer"] in text else 0.0, text=f"answer with just {example['answer']!r}")


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
