"""LlamaIndex app shapes a new user would build, each made fresh with recording fake models.

Every factory returns an ``App``: the target to trace, its fake LLM, the input of a run and
the texts its trainables start with (``texts``), so tests can find a parameter by the text it
holds whatever the tracer names it. The fakes here keep each reply next to its input, so a
run's calls can be checked with ``tests.invariants.check_run``.

Nothing touches ``Settings`` or the network: every LLM and embedding model is passed in.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llama_index.core import Document, PromptTemplate, VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage, CompletionResponse, ToolCallBlock
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.tools import FunctionTool, QueryEngineTool
from llama_index.core.workflow import Event, StartEvent, StopEvent, Workflow, step
from pydantic import PrivateAttr

from tests.invariants import ModelCall
from tests.llama_index_fakes import RecordingLLM, ScriptedToolLLM, WordEmbedding

__all__ = [
    "App",
    "DRAFT_PROMPT",
    "OUTLINE_PROMPT",
    "EssayFlow",
    "FakeLLM",
    "Script",
    "StreamingLLM",
    "ToolLLM",
    "essay_workflow",
    "react_agent",
    "router",
    "streaming_query_engine",
    "sub_questions",
]


class FakeLLM(RecordingLLM):
    """``RecordingLLM`` that keeps each reply next to its input (``records``)."""

    _records: list[tuple[str, str]] = PrivateAttr(default_factory=list)
    _records_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def _answer(self, text: str) -> str:
        reply = super()._answer(text)
        with self._records_lock:
            self._records.append((text, reply))
        return reply

    def model_calls(self, start: int = 0) -> list[ModelCall]:
        with self._records_lock:
            records = self._records[start:]
        return [ModelCall(received=text, returned=reply) for text, reply in records]

    @property
    def call_count(self) -> int:
        with self._records_lock:
            return len(self._records)


class StreamingLLM(FakeLLM):
    """Streams its reply word by word, as a provider does."""

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        text = self._answer(prompt)

        def gen() -> Any:
            so_far = ""
            for word in re.split(r"(\s+)", text):
                so_far += word
                yield CompletionResponse(text=so_far, delta=word)

        return gen()


class ToolLLM(ScriptedToolLLM):
    """``ScriptedToolLLM`` that keeps each reply next to its call (``model_calls``)."""

    _replies: list[ChatMessage] = PrivateAttr(default_factory=list)

    def _next(self, messages: Sequence[ChatMessage], tools: Any) -> ChatMessage:
        reply = super()._next(messages, tools)
        self._replies.append(reply)
        return reply

    def model_calls(self, start: int = 0) -> list[ModelCall]:
        out = []
        for call, reply in list(zip(self.calls, self._replies, strict=True))[start:]:
            lines = [f"{role}: {text}" for role, text in call["messages"]]
            for spec in call["tools"]:
                fn = spec.get("function", spec)
                lines.append(f"tool {fn.get('name')}: {fn.get('description')}")
            blocks = [b for b in reply.blocks if isinstance(b, ToolCallBlock)]
            out.append(
                ModelCall(
                    received="\n".join(lines),
                    returned=reply.content or "",
                    tool_calls=tuple(b.tool_name for b in blocks),
                    tool_args=tuple(dict(b.tool_kwargs) for b in blocks),
                )
            )
        return out

    @property
    def call_count(self) -> int:
        return len(self.calls)


class Script:
    """A reply function playing ``replies`` in order, again from the start when done (so a
    second run replays the first)."""

    def __init__(self, replies: Sequence[str]) -> None:
        self.replies = list(replies)
        self._next = 0
        self._lock = threading.Lock()

    def __call__(self, _text: str) -> str:
        with self._lock:
            reply = self.replies[self._next % len(self.replies)]
            self._next += 1
        return reply


@dataclass
class App:
    """One app shape: what to trace and run, its fake LLM and its trainable texts."""

    target: Any
    llm: Any
    input: Any
    texts: dict[str, str] = field(default_factory=dict)
    """Role of a trainable (``"dogs_qa"``, ``"system"``...) -> the text it starts with."""
    parts: dict[str, Any] = field(default_factory=dict)

    def calls(self, start: int = 0) -> list[ModelCall]:
        return self.llm.model_calls(start)


def _engine(text: str, llm: Any, qa: str | None = None, **kwargs: Any) -> Any:
    index = VectorStoreIndex.from_documents([Document(text=text)], embed_model=WordEmbedding())
    if qa is not None:
        kwargs["text_qa_template"] = PromptTemplate(qa)
    return index.as_query_engine(llm=llm, **kwargs)


CATS_QA = "You are the cat expert of the shelter. Use these notes:\n{context_str}\nQuestion: {query_str}\nCat answer:"
DOGS_QA = "You are the dog expert of the shelter. Use these notes:\n{context_str}\nQuestion: {query_str}\nDog answer:"
CATS_TOOL = "Answers questions about cats: purring, kneading and sleep."
DOGS_TOOL = "Answers questions about dogs: barking, walks and tricks."
CATS_DOC = "Cats purr when they are content and knead soft blankets."
DOGS_DOC = "Dogs bark at strangers and wag their tails at friends."


def _experts(llm: Any) -> list[QueryEngineTool]:
    return [
        QueryEngineTool.from_defaults(
            _engine(CATS_DOC, llm, CATS_QA), name="cats", description=CATS_TOOL
        ),
        QueryEngineTool.from_defaults(
            _engine(DOGS_DOC, llm, DOGS_QA), name="dogs", description=DOGS_TOOL
        ),
    ]


def _expert_reply(text: str) -> str | None:
    if "dog expert" in text:
        return "Dogs bark at strangers, says the dog expert."
    if "cat expert" in text:
        return "Cats purr when content, says the cat expert."
    return None


# -- I1: router over two query engines --------------------------------------------------------


def router() -> App:
    """``RouterQueryEngine`` (``LLMSingleSelector``) over a cats and a dogs engine, each a
    ``QueryEngineTool`` with its own text_qa template; the selector picks dogs."""
    from llama_index.core.query_engine import RouterQueryEngine
    from llama_index.core.selectors import LLMSingleSelector

    def reply(text: str) -> str:
        if "Using only the choices above" in text:
            return '[{"choice": 2, "reason": "the question is about dogs"}]'
        return _expert_reply(text) or "unexpected prompt"

    llm = FakeLLM(reply=reply)
    tools = _experts(llm)
    engine = RouterQueryEngine(
        selector=LLMSingleSelector.from_defaults(llm=llm), query_engine_tools=tools, llm=llm
    )
    return App(
        engine,
        llm,
        "Why do dogs bark?",
        {"cats_qa": CATS_QA, "dogs_qa": DOGS_QA, "cats_tool": CATS_TOOL, "dogs_tool": DOGS_TOOL},
    )


# -- I2: sub-questions over two engines -------------------------------------------------------

SUB_QUESTIONS = (
    '```json\n{"items": [{"sub_question": "Why do cats purr?", "tool_name": "cats"}, '
    '{"sub_question": "Why do dogs bark?", "tool_name": "dogs"}]}\n```'
)
FINAL_ANSWER = "Cats purr from content, and dogs bark at strangers."


def sub_questions() -> App:
    """``SubQuestionQueryEngine`` over the cats and dogs engines: one question-generation
    call, one call per sub-question, one synthesis call over the sub-answers."""
    from llama_index.core.query_engine import SubQuestionQueryEngine
    from llama_index.core.question_gen import LLMQuestionGenerator

    def reply(text: str) -> str:
        if "<User Question>" in text:
            return SUB_QUESTIONS
        if "Sub question:" in text:  # the synthesis quotes the experts' answers
            return FINAL_ANSWER
        return _expert_reply(text) or "unexpected prompt"

    llm = FakeLLM(reply=reply)
    engine = SubQuestionQueryEngine.from_defaults(
        query_engine_tools=_experts(llm),
        llm=llm,
        question_gen=LLMQuestionGenerator.from_defaults(llm=llm),
        use_async=False,
        verbose=False,
    )
    return App(
        engine,
        llm,
        "Compare why cats purr and why dogs bark.",
        {"cats_qa": CATS_QA, "dogs_qa": DOGS_QA, "cats_tool": CATS_TOOL, "dogs_tool": DOGS_TOOL},
    )


# -- I3: a custom workflow with module-level templates ----------------------------------------

OUTLINE_TEXT = "Write a three point outline for a short essay about {topic}.\nOutline:"
DRAFT_TEXT = "Turn this outline into one paragraph for a general reader:\n{outline}\nParagraph:"
OUTLINE_PROMPT = PromptTemplate(OUTLINE_TEXT)
DRAFT_PROMPT = PromptTemplate(DRAFT_TEXT)
OUTLINE_REPLY = "1. the moon pulls 2. the sea bulges 3. the earth turns"
DRAFT_REPLY = "The moon pulls the sea into a bulge, and as the earth turns we see tides."


class Outlined(Event):
    outline: str


class EssayFlow(Workflow):
    """Outline, then draft: two steps, each one ``llm.complete`` of a module-level template."""

    def __init__(self, llm: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.llm = llm

    @step
    async def outline(self, ev: StartEvent) -> Outlined:
        response = self.llm.complete(OUTLINE_PROMPT.format(topic=ev.topic))
        return Outlined(outline=response.text)

    @step
    async def draft(self, ev: Outlined) -> StopEvent:
        response = self.llm.complete(DRAFT_PROMPT.format(outline=ev.outline))
        return StopEvent(result=response.text)


def essay_workflow() -> App:
    llm = FakeLLM(reply=lambda text: OUTLINE_REPLY if "Outline:" in text else DRAFT_REPLY)
    return App(
        EssayFlow(llm, timeout=10),
        llm,
        {"topic": "tides"},
        {"outline": OUTLINE_TEXT, "draft": DRAFT_TEXT},
    )


# -- I4: ReAct agent with a function tool -----------------------------------------------------

GLOSSARY_SYSTEM = "You are a glossary bot for the company handbook."
LOOKUP_DESCRIPTION = "Look up a term in the company glossary and return its entry."
REACT_ACTION = 'Thought: I need the glossary.\nAction: lookup\nAction Input: {"term": "API"}'
REACT_ANSWER = (
    "Thought: I can answer without using any more tools.\n"
    "Answer: API means application programming interface."
)


def lookup_tool(description: str = LOOKUP_DESCRIPTION) -> FunctionTool:
    entries = iter(range(1, 1_000_000))

    def lookup(term: str) -> str:
        return f"{term}: application programming interface (glossary entry #{next(entries)})"

    return FunctionTool.from_defaults(lookup, name="lookup", description=description)


def react_agent() -> App:
    """``ReActAgent`` with a ``lookup`` ``FunctionTool``: one action, one observation, one
    answer (two LLM calls)."""
    from llama_index.core.agent.workflow import ReActAgent

    llm = FakeLLM(reply=Script([REACT_ACTION, REACT_ANSWER]), chat_model=True)
    tool = lookup_tool()
    agent = ReActAgent(tools=[tool], llm=llm, system_prompt=GLOSSARY_SYSTEM)
    return App(
        agent,
        llm,
        "What is API?",
        {"system": GLOSSARY_SYSTEM, "lookup": LOOKUP_DESCRIPTION},
        {"tool": tool},
    )


def function_agent(tools: Sequence[Any] | None = None, system_prompt: str = GLOSSARY_SYSTEM) -> App:
    """``FunctionAgent`` with a ``lookup`` tool: one tool call, then the answer."""
    from llama_index.core.agent.workflow import FunctionAgent

    script = [[("lookup", {"term": "API"})], "API means application programming interface."]
    llm = ToolLLM(script)
    agent = FunctionAgent(
        tools=list(tools) if tools is not None else [lookup_tool()],
        llm=llm,
        system_prompt=system_prompt,
    )
    return App(agent, llm, "What is API?", {"system": system_prompt}, {"script": script})


# -- I5: streaming query engine ---------------------------------------------------------------

STREAMED_ANSWER = "The sky looks blue because air scatters blue light the most."


def streaming_query_engine() -> App:
    """``index.as_query_engine(streaming=True)``: the LLM streams its answer word by word."""
    llm = StreamingLLM(reply=STREAMED_ANSWER)
    engine = _engine("The sky is blue because air scatters blue sunlight.", llm, streaming=True)
    return App(engine, llm, "Why is the sky blue?")


# -- I6: odd texts a user may start with ------------------------------------------------------

LONG_DESCRIPTION = (
    "Search the employee handbook. " + "It covers leave, travel, expenses and security. " * 25
).strip()


def _handbook(description: str) -> FunctionTool:
    def handbook(topic: str) -> str:
        return f"handbook section on {topic}"

    return FunctionTool.from_defaults(handbook, name="handbook", description=description)


def odd_start(case: str) -> tuple[Any, str, str]:
    """An app whose trainable starts odd: the app, that text, and a name pattern the
    parameter holding it matches. Cases: ``react_long_description``,
    ``function_long_description`` (a tool description over 1,024 characters),
    ``blank_tool_description``, ``empty_system_prompt``, ``empty_template``."""
    from llama_index.core.agent.workflow import FunctionAgent, ReActAgent

    if case == "react_long_description":
        llm = FakeLLM(reply="Answer: ok", chat_model=True)
        agent = ReActAgent(tools=[_handbook(LONG_DESCRIPTION)], llm=llm)
        return agent, LONG_DESCRIPTION, "*handbook*"
    if case == "function_long_description":
        agent = FunctionAgent(tools=[_handbook(LONG_DESCRIPTION)], llm=ToolLLM([]))
        return agent, LONG_DESCRIPTION, "*handbook*"
    if case == "blank_tool_description":
        agent = FunctionAgent(tools=[_handbook("")], llm=ToolLLM([]), system_prompt=GLOSSARY_SYSTEM)
        return agent, "", "*handbook*"
    if case == "empty_system_prompt":
        agent = FunctionAgent(tools=[lookup_tool()], llm=ToolLLM([]), system_prompt="")
        return agent, "", "*system_prompt*"
    if case == "empty_template":
        return _engine("Some text.", FakeLLM(), ""), "", "*text_qa_template"
    raise ValueError(f"unknown case {case!r}")


ODD_CASES = (
    "react_long_description",
    "function_long_description",
    "blank_tool_description",
    "empty_system_prompt",
    "empty_template",
)


def query_engine() -> App:
    """A plain vector-index query engine (default templates)."""
    llm = FakeLLM(reply="Blue, because of Rayleigh scattering.")
    return App(
        _engine("The sky is blue because air scatters blue sunlight.", llm),
        llm,
        "Why is the sky blue?",
    )


ALL_SHAPES: dict[str, Callable[[], App]] = {
    "router": router,
    "sub_questions": sub_questions,
    "essay_workflow": essay_workflow,
    "react_agent": react_agent,
    "function_agent": function_agent,
    "streaming_query_engine": streaming_query_engine,
    "query_engine": query_engine,
}
