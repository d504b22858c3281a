"""Guards on the LangChain internals the adapter relies on: fail loudly when they move."""

from __future__ import annotations

import inspect

from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tracers.base import BaseTracer
from langchain_core.tracers.core import _TracerCore

from opto_adapters.langchain import OptoTracer
from tests.langchain_fakes import RecordingChatModel


def params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_tracer_core_hooks_keep_their_signatures():
    assert params(_TracerCore.__init__)[:2] == ["self", "_schema_format"]
    assert params(_TracerCore._create_llm_run)[:4] == ["self", "serialized", "prompts", "run_id"]
    assert params(_TracerCore._create_chat_model_run)[:4] == [
        "self",
        "serialized",
        "messages",
        "run_id",
    ]
    assert params(_TracerCore._errored_chain_run) == ["self", "error", "inputs", "run_id"]
    assert params(_TracerCore._errored_llm_run)[:3] == ["self", "error", "run_id"]
    assert params(_TracerCore._errored_tool_run) == ["self", "error", "run_id"]
    assert params(_TracerCore._errored_retrieval_run) == ["self", "error", "run_id"]
    assert "_persist_run" in BaseTracer.__abstractmethods__
    tracer = OptoTracer()
    assert tracer._schema_format == "original+chat" and tracer.order_map == {}


def test_prompt_serialization_is_a_cached_property_we_can_clear():
    prompt = ChatPromptTemplate.from_messages([("human", "{q}")])
    first = prompt._serialized
    assert "_serialized" in prompt.__dict__ and prompt._serialized is first
    prompt.__dict__.pop("_serialized")
    assert prompt._serialized is not first


def test_chat_model_runs_hold_message_objects():
    from langchain_core.messages import BaseMessage

    seen = []

    class Keep(OptoTracer):
        def _translate(self, run, *args):
            seen.append(run.child_runs[1].inputs["messages"][0])
            return super()._translate(run, *args)

    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | RecordingChatModel()
    tracer = Keep(chain)
    chain.invoke({"q": "hi"}, config={"callbacks": [tracer]})
    assert tracer.last_graph is not None  # runs are translated when their graph is built
    assert all(isinstance(m, BaseMessage) for m in seen[0]) and seen[0][0].content == "hi"
