"""The app's own model usage: tokens and latency of its model calls, per evaluation."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.llms import ChatMessage, ChatResponse, CompletionResponse
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback

from opto_adapters import optimize
from opto_adapters.langchain import OptoTracer as LangChainTracer
from opto_adapters.llama_index import OptoTracer as LlamaIndexTracer
from opto_adapters.optimizers import OptoPrime
from opto_adapters.runs import Span
from opto_adapters.runs.usage import call_usage, reported_tokens, usage
from opto_adapters.train import Store

from .langchain_fakes import RecordingChatModel
from .llama_index_fakes import RecordingLLM, WordEmbedding
from .test_train_frameworks import MARK, TRAIN, VAL, answer_for, guide, optimizer_llm
from .train_apps import data, llm_for, make_app, reply
from .train_apps import guide as toy_guide

# -- fakes that report usage the way providers do --------------------------------------------------


def words(text: str) -> int:
    return len(text.split())


class UsageChatModel(RecordingChatModel):
    """Reports one token per word: on the message (``usage_metadata``, as current LangChain
    chat models do) or, with ``in_llm_output``, only in ``llm_output["token_usage"]``."""

    in_llm_output: bool = False

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        reply = self._reply(messages, kwargs.get("tools") or [])
        prompt = sum(words(str(m.content)) for m in messages)
        completion = words(str(reply.content))
        if self.in_llm_output:
            return ChatResult(
                generations=[ChatGeneration(message=reply)],
                llm_output={"token_usage": {"prompt_tokens": prompt, "completion_tokens": completion}},
            )
        message = AIMessage(
            content=reply.content,
            usage_metadata={"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


class UsageLLM(RecordingLLM):
    """Reports one token per word in the raw provider reply: a dict for completions, an object
    with a ``usage`` attribute (like the ``openai`` client's) for chat."""

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        text = self._answer(prompt)
        raw = {"usage": {"prompt_tokens": words(prompt), "completion_tokens": words(text)}}
        return CompletionResponse(text=text, raw=raw)

    @llm_chat_callback()
    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        joined = "\n".join(m.content or "" for m in messages)
        text = self._answer(joined)
        usage = SimpleNamespace(prompt_tokens=words(joined), completion_tokens=words(text))
        return ChatResponse(message=ChatMessage(role="assistant", content=text), raw=SimpleNamespace(usage=usage))


# -- reading usage ---------------------------------------------------------------------------------


def test_the_providers_spellings_are_read():
    assert reported_tokens({"prompt_tokens": 3, "completion_tokens": 4}) == (3, 4)
    assert reported_tokens({"usage_metadata": {"input_tokens": 5, "output_tokens": 1}}) == (5, 1)
    assert reported_tokens({"usageMetadata": None, "usage": {"prompt_token_count": 2, "candidates_token_count": 9}}) == (2, 9)
    assert reported_tokens({"prompt_eval_count": 7, "eval_count": 8}) == (7, 8)  # Ollama
    assert reported_tokens(SimpleNamespace(raw=SimpleNamespace(usage=SimpleNamespace(prompt_tokens=1, completion_tokens=2)))) == (1, 2)
    assert reported_tokens({"kwargs": {"usage_metadata": {"input_tokens": 4, "output_tokens": 0}}}) == (4, 0)  # a dumped message
    assert reported_tokens({"text": "no usage here"}, None, "text") is None
    assert reported_tokens({"prompt_tokens": True, "completion_tokens": "many"}) is None  # not counts
    assert reported_tokens(None, {"token_usage": {"prompt_tokens": 1, "completion_tokens": 1}}) == (1, 1)  # the first that has any


def test_a_runs_usage_counts_each_model_call_once():
    outer = Span("a", kind="llm", usage={"prompt_tokens": 100, "completion_tokens": 100, "latency": 9.0})
    inner = Span("b", kind="llm", parent_id="a", usage={"prompt_tokens": 10, "completion_tokens": 2, "latency": 0.5})
    outer.children = [inner]
    silent = Span("c", kind="llm", parent_id="r")  # a model that reports nothing still counts as a call
    root = Span("r", kind="chain", children=[outer, Span("t", kind="tool"), silent])
    u = usage(root)
    assert (u.model_calls, u.reported, u.prompt_tokens, u.completion_tokens, u.latency) == (2, 1, 10, 2, 0.5)
    assert usage(Span("x", kind="chain")).to_data() == {
        "model_calls": 0, "prompt_tokens": None, "completion_tokens": None, "latency": None,
    }


def test_span_usage_survives_plain_data():
    span = Span("m", kind="llm", usage=call_usage({"prompt_tokens": 3, "completion_tokens": 1}, latency=0.25))
    again = Span.from_data(span.to_data())
    assert again.usage == {"prompt_tokens": 3, "completion_tokens": 1, "latency": 0.25}
    assert "usage" not in Span("n").to_data()


def test_both_adapters_put_the_usage_of_a_run_on_its_graph():
    chain = ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "{q}")]) | UsageChatModel(responses=["two words"])
    u = LangChainTracer(chain).run({"q": "how are you"}).graph.metadata["usage"]
    assert (u.model_calls, u.prompt_tokens, u.completion_tokens) == (1, 5, 2) and u.latency > 0
    old_style = ChatPromptTemplate.from_messages([("human", "{q}")]) | UsageChatModel(responses=["ok"], in_llm_output=True)
    u = LangChainTracer(old_style).run({"q": "a b c"}).graph.metadata["usage"]
    assert (u.prompt_tokens, u.completion_tokens) == (3, 1)
    silent = ChatPromptTemplate.from_messages([("human", "{q}")]) | RecordingChatModel()
    u = LangChainTracer(silent).run({"q": "a"}).graph.metadata["usage"]
    assert (u.model_calls, u.prompt_tokens, u.reported) == (1, None, 0) and u.latency is not None

    index = VectorStoreIndex.from_documents([Document(text="The capital of Peru is Lima.")], embed_model=WordEmbedding())
    for chat_model in (False, True):
        llm = UsageLLM(reply="Lima", chat_model=chat_model)
        traced = LlamaIndexTracer(index.as_query_engine(llm=llm)).run("What is the capital of Peru?")
        u = traced.graph.metadata["usage"]
        (seen,) = llm.prompts
        assert (u.model_calls, u.prompt_tokens, u.completion_tokens) == (1, words(seen), 1), chat_model
        assert u.latency is not None and u.latency >= 0


# -- stored per evaluation, summed up per version --------------------------------------------------


def test_a_langchain_app_s_usage_is_stored_per_evaluation(scripted_llm):
    model = UsageChatModel(respond=lambda messages: answer_for("\n".join(str(m.content) for m in messages)))
    prompt = ChatPromptTemplate.from_messages([("system", "You are helpful."), ("human", "{question}")])
    chain = prompt | model | StrOutputParser()
    store = Store()
    llm = optimizer_llm(scripted_llm, {"prompt.system": f"You are helpful. {MARK}"})
    result = optimize(chain, TRAIN, VAL, guide=guide, llm=llm, input_key=["question"], epochs=1,
                      batch_size=2, progress=False, store=store, max_concurrency=1)
    assert result.best.val == 1.0
    evaluations = store.evaluations(result.run_id)
    assert len(evaluations) == len(model.calls)
    for e, call in zip(sorted(evaluations, key=lambda e: e.id), model.calls, strict=True):
        assert e.prompt_tokens == sum(words(str(m.content)) for m in call.messages)
        assert e.model_calls == 1 and 0 < e.model_latency <= e.duration
    base, best = result.app_usage["baseline"], result.app_usage["best"]
    assert best.prompt_tokens - base.prompt_tokens == words(MARK)  # the longer system prompt
    # "Well, I believe that the answer is Lima, most likely." (10 words) became "Lima"
    assert (base.completion_tokens, best.completion_tokens) == (10, 1)
    assert (base.evaluations, base.reported, best.model_calls) == (len(VAL), len(VAL), 1)


def test_a_llama_index_app_s_usage_is_stored_per_evaluation(scripted_llm):
    index = VectorStoreIndex.from_documents(
        [Document(text=f"The capital of {c} is {a}.") for c, a in (("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima"))],
        embed_model=WordEmbedding(),
    )
    model = UsageLLM(reply=answer_for)
    engine = index.as_query_engine(llm=model, similarity_top_k=1)
    qa = "response_synthesizer.text_qa_template"
    llm = optimizer_llm(scripted_llm, {qa: "Context: {context_str}\nQuestion: {query_str}\n" + MARK + "\nAnswer: "})
    store = Store()
    result = optimize(engine, TRAIN, VAL, guide=guide, llm=llm, input_key="question", epochs=1,
                      batch_size=2, progress=False, store=store, max_concurrency=1)
    assert result.best.val == 1.0
    evaluations = sorted(store.evaluations(result.run_id), key=lambda e: e.id)
    assert [e.prompt_tokens for e in evaluations] == [words(p) for p in model.prompts]
    assert all(e.model_calls == 1 and e.model_latency is not None for e in evaluations)
    assert result.app_usage["best"].completion_tokens == 1 < result.app_usage["baseline"].completion_tokens


def test_a_python_app_records_no_usage(scripted_llm):
    scripted_llm.set_default(json.dumps(reply("ANSWER {q}")))
    app = make_app("Reply {q}")
    store = Store()
    result = optimize(app, data(2), guide=toy_guide, optimizer=OptoPrime([app.prompt], llm_for(scripted_llm)),
                      epochs=1, batch_size=2, progress=False, store=store)
    assert all(e.model_calls is None and e.prompt_tokens is None for e in store.evaluations(result.run_id))
    assert result.app_usage["best"].recorded == 0 and result.app_usage["best"].tokens is None
