"""LangChain app shapes a new user would build, each made fresh with a recording fake model.

Every factory returns an ``App``: the runnable to trace, the fake model, the input of a run
and the texts the app's trainables start with (``texts``), so tests can find a parameter by
the text it holds whatever the tracer names it. ``ChatModel`` is ``RecordingChatModel`` that
also keeps each reply, so a run's calls can be checked with ``tests.invariants.check_run``.

The apps share nothing: each factory builds its own prompts, tools and model, so an optimizer
step in one test never leaks into another.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from langchain_core.messages import AIMessage, BaseMessage, SystemMessage
from langchain_core.output_parsers import JsonOutputParser, StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, FewShotPromptTemplate, PromptTemplate
from langchain_core.runnables import RunnableLambda, chain
from langchain_core.tools import tool
from pydantic import Field

from tests.invariants import ModelCall
from tests.langchain_fakes import Call, RecordingChatModel

__all__ = [
    "App",
    "ChatModel",
    "agent_with_middleware",
    "agent_with_repeated_tool_arguments",
    "create_agent_with_string_prompt",
    "few_shot_chain",
    "map_reduce",
    "model_calls",
    "parser_chain",
    "react_agent_with_string_prompt",
    "writer_critic_graph",
]


class ChatModel(RecordingChatModel):
    """``RecordingChatModel`` that also keeps its replies (``replies[i]`` answers ``calls[i]``)."""

    replies: list[AIMessage] = Field(default_factory=list)

    def _reply(self, messages: list[BaseMessage], tools: list[dict]) -> AIMessage:
        with self._lock:  # one lock for both lists: batch calls run in threads
            self.calls.append(Call(list(messages), [dict(t) for t in tools]))
            if self.respond is not None:
                reply = self.respond(messages)
            else:
                reply = self.responses[self._next % len(self.responses)]
                self._next += 1
            reply = reply if isinstance(reply, AIMessage) else AIMessage(content=str(reply))
            self.replies.append(reply)
        return reply


def content_text(content: Any) -> str:
    """A message's content as the provider reads it: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
        return "\n".join(parts)
    return str(content)


def received_text(call: Call) -> str:
    """What one call sent: each message's role and text, then each tool's name and
    description."""
    lines = [f"{m.type}: {content_text(m.content)}" for m in call.messages]
    for schema in call.tools:
        fn = schema.get("function", schema)
        lines.append(f"tool {fn.get('name')}: {fn.get('description')}")
    return "\n".join(lines)


def model_calls(model: ChatModel, start: int = 0) -> list[ModelCall]:
    """The model's calls from index ``start`` on, as ``ModelCall``."""
    with model._lock:
        pairs = list(zip(model.calls, model.replies, strict=True))[start:]
    return [
        ModelCall(
            received=received_text(call),
            returned=content_text(reply.content),
            tool_calls=tuple(c["name"] for c in reply.tool_calls),
            tool_args=tuple(dict(c["args"]) for c in reply.tool_calls),
        )
        for call, reply in pairs
    ]


@dataclass
class App:
    """One app shape: what to trace and run, its fake model and its trainable texts."""

    runnable: Any
    model: ChatModel
    input: Any
    texts: dict[str, str] = field(default_factory=dict)
    """Role of a trainable (``"map"``, ``"system"``...) -> the text it starts with."""
    tools: dict[str, Any] = field(default_factory=dict)

    def calls(self, start: int = 0) -> list[ModelCall]:
        return model_calls(self.model, start)


def tool_calls_message(content: str, *calls: tuple[str, str, dict[str, Any]]) -> AIMessage:
    """An AI message with some text and tool calls ``(name, call_id, args)``."""
    return AIMessage(
        content=content,
        tool_calls=[{"name": name, "args": args, "id": call_id} for name, call_id, args in calls],
    )


# -- L1: map-reduce inside a function step ----------------------------------------------------

MAP_SYSTEM = "Summarize the following document in one plain sentence for a newsletter."
REDUCE_SYSTEM = "Combine these one-sentence summaries into a single short paragraph."
DOCS = [
    "Cats purr when they are content and knead soft blankets.",
    "Dogs bark at strangers and wag their tails at friends.",
    "Parrots repeat words they hear often and crack seeds.",
]


def _summaries(messages: list[BaseMessage]) -> str:
    system = content_text(messages[0].content)
    human = content_text(messages[-1].content)
    if system.startswith("Combine") or "Combine" in system:
        return f"All together: {len(human.splitlines())} animal habits."
    return "In short: " + human.split(" and ")[0].upper()


def map_reduce(variant: str = "lambda") -> App:
    """``map_chain.batch(docs)`` then ``reduce_chain.invoke`` inside a ``RunnableLambda``
    (``variant="lambda"``) or an ``@chain`` function (``variant="chain"``)."""
    model = ChatModel(respond=_summaries)
    map_prompt = ChatPromptTemplate.from_messages([("system", MAP_SYSTEM), ("human", "{doc}")])
    reduce_prompt = ChatPromptTemplate.from_messages(
        [("system", REDUCE_SYSTEM), ("human", "{text}")]
    )
    map_chain = map_prompt | model | StrOutputParser()
    reduce_chain = reduce_prompt | model | StrOutputParser()

    def summarize_all(docs: list[str]) -> str:
        summaries = map_chain.batch([{"doc": d} for d in docs])
        return reduce_chain.invoke({"text": "\n".join(summaries)})

    if variant == "lambda":
        runnable = RunnableLambda(summarize_all)
    elif variant == "chain":
        runnable = chain(summarize_all)
    else:
        raise ValueError(f"unknown variant {variant!r}: 'lambda' or 'chain'")
    return App(runnable, model, list(DOCS), {"map": MAP_SYSTEM, "reduce": REDUCE_SYSTEM})


# -- L2: create_agent with middleware ---------------------------------------------------------

AGENT_SYSTEM = "You are a glossary assistant. Answer from the company glossary only."
POLICY = "Always cite the glossary entry you used."
TODAY = "Today is Monday."


def _glossary_tool() -> Any:
    entries = itertools.count(1)

    @tool
    def lookup(term: str) -> str:
        """Look up a term in the company glossary and return its entry."""
        return f"{term}: application programming interface (glossary entry #{next(entries)})"

    return lookup


def agent_with_middleware(kind: str) -> App:
    """``create_agent(model, [lookup], system_prompt=SystemMessage(...), middleware=[m])``
    with ``m`` one of ``"todo"`` (``TodoListMiddleware``), ``"wrap"`` (a ``@wrap_model_call``
    appending a policy to the system message) or ``"dynamic"`` (a ``@dynamic_prompt``
    returning the agent's prompt plus the date)."""
    from langchain.agents import create_agent
    from langchain.agents.middleware import TodoListMiddleware, dynamic_prompt, wrap_model_call

    if kind == "todo":
        middleware: Any = TodoListMiddleware()
    elif kind == "wrap":

        @wrap_model_call
        def add_policy(request: Any, handler: Callable[[Any], Any]) -> Any:
            base = request.system_prompt or ""
            return handler(request.override(system_message=SystemMessage(f"{base}\n{POLICY}")))

        middleware = add_policy
    elif kind == "dynamic":

        @dynamic_prompt
        def with_date(request: Any) -> str:
            return f"{request.system_prompt} {TODAY}"

        middleware = with_date
    else:
        raise ValueError(f"unknown middleware {kind!r}: 'todo', 'wrap' or 'dynamic'")
    model = ChatModel(
        responses=[
            tool_calls_message("Let me check the glossary.", ("lookup", "call_1", {"term": "API"})),
            "API means application programming interface.",
        ]
    )
    lookup = _glossary_tool()
    agent = create_agent(
        model, [lookup], system_prompt=SystemMessage(AGENT_SYSTEM), middleware=[middleware]
    )
    return App(
        agent,
        model,
        {"messages": [("user", "What is API?")]},
        {"system": AGENT_SYSTEM, "lookup": lookup.description},
        {"lookup": lookup},
    )


# -- L3: a LangGraph writer / critic loop -----------------------------------------------------

WRITER_SYSTEM = "You are a concise science writer. Write two sentences for curious children."
CRITIC_SYSTEM = "You are a strict editor. Name the single biggest weakness of the draft."
WRITER_REPLIES = [
    "Draft one: the moon pulls the sea and makes tides.",
    "Draft two: the moon's gravity tugs the oceans, so twice a day the water rises and falls.",
]
CRITIC_REPLIES = ["Critique one: explain why there are two tides.", "Critique two: good enough."]


class Essay(TypedDict, total=False):
    topic: str
    draft: str
    critique: str
    rounds: int


def writer_critic_graph() -> App:
    """``StateGraph``: writer -> critic -> writer (its prompt gets ``"Editor said: " +
    critique``, built in Python) -> critic -> end; four model calls."""
    from langgraph.graph import END, START, StateGraph

    model = ChatModel(
        responses=[WRITER_REPLIES[0], CRITIC_REPLIES[0], WRITER_REPLIES[1], CRITIC_REPLIES[1]]
    )
    writer_prompt = ChatPromptTemplate.from_messages(
        [("system", WRITER_SYSTEM), ("human", "Write about {topic}.\n{notes}")]
    )
    critic_prompt = ChatPromptTemplate.from_messages(
        [("system", CRITIC_SYSTEM), ("human", "Critique this draft:\n{draft}")]
    )
    writer = writer_prompt | model | StrOutputParser()
    critic = critic_prompt | model | StrOutputParser()

    def write(state: Essay) -> Essay:
        critique = state.get("critique")
        notes = "Editor said: " + critique if critique else "This is the first draft."
        draft = writer.invoke({"topic": state["topic"], "notes": notes})
        return {"draft": draft, "rounds": state.get("rounds", 0) + 1}

    def review(state: Essay) -> Essay:
        return {"critique": critic.invoke({"draft": state["draft"]})}

    def again(state: Essay) -> str:
        return "write" if state["rounds"] < 2 else END

    graph = StateGraph(Essay)
    graph.add_node("write", write)
    graph.add_node("review", review)
    graph.add_edge(START, "write")
    graph.add_edge("write", "review")
    graph.add_conditional_edges("review", again, ["write", END])
    return App(
        graph.compile(),
        model,
        {"topic": "tides"},
        {"writer": WRITER_SYSTEM, "critic": CRITIC_SYSTEM},
    )


# -- L4: tool arguments an agent repeats ------------------------------------------------------


def agent_with_repeated_tool_arguments() -> App:
    """``create_agent`` whose first two model calls both call ``lookup(term="API")``; the
    second also calls ``scale(factor=3)`` (a number); the third answers."""
    from langchain.agents import create_agent

    lookup = _glossary_tool()
    scaled = itertools.count(1)

    @tool
    def scale(factor: int) -> str:
        """Multiply the glossary's example value (2) by a whole-number factor."""
        return f"scaled example value: {2 * factor} (scaling #{next(scaled)})"

    model = ChatModel(
        responses=[
            tool_calls_message("First I look up API.", ("lookup", "call_1", {"term": "API"})),
            tool_calls_message(
                "Let me look up API again and scale the example.",
                ("lookup", "call_2", {"term": "API"}),
                ("scale", "call_3", {"factor": 3}),
            ),
            "API means application programming interface; the scaled example is 6.",
        ]
    )
    agent = create_agent(model, [lookup, scale], system_prompt=SystemMessage(AGENT_SYSTEM))
    return App(
        agent,
        model,
        {"messages": [("user", "What is API, and what is the example value times 3?")]},
        {"system": AGENT_SYSTEM, "lookup": lookup.description, "scale": scale.description},
        {"lookup": lookup, "scale": scale},
    )


# -- L5: few-shot prompt ----------------------------------------------------------------------

FEW_SHOT_PREFIX = "You turn each word into its opposite. Reply with a single word."
FEW_SHOT_SUFFIX = "Now the real question.\nInput word: {word}\nIts opposite is:"
FEW_SHOT_EXAMPLE = "Input word: {word}\nIts opposite is: {opposite}"
FEW_SHOT_EXAMPLES = [{"word": "hot", "opposite": "cold"}, {"word": "early", "opposite": "late"}]


def few_shot_chain() -> App:
    """``FewShotPromptTemplate(prefix=, suffix=, example_prompt=, examples=) | model | parser``."""
    prompt = FewShotPromptTemplate(
        prefix=FEW_SHOT_PREFIX,
        suffix=FEW_SHOT_SUFFIX,
        example_prompt=PromptTemplate.from_template(FEW_SHOT_EXAMPLE),
        examples=[dict(e) for e in FEW_SHOT_EXAMPLES],
        input_variables=["word"],
    )
    model = ChatModel(responses=["down"])
    return App(
        prompt | model | StrOutputParser(),
        model,
        {"word": "up"},
        {"prefix": FEW_SHOT_PREFIX, "suffix": FEW_SHOT_SUFFIX, "example_prompt": FEW_SHOT_EXAMPLE},
    )


# -- L6: agents given their system prompt as a string -----------------------------------------

STRING_SYSTEM = "You are a glossary bot. Keep every answer under twenty words."


def _string_prompt_agent(make: Callable[..., Any]) -> App:
    lookup = _glossary_tool()
    model = ChatModel(
        responses=[
            tool_calls_message("Checking.", ("lookup", "call_1", {"term": "API"})),
            "API: application programming interface.",
        ]
    )
    return App(
        make(model, [lookup]),
        model,
        {"messages": [("user", "What is API?")]},
        {"system": STRING_SYSTEM, "lookup": lookup.description},
        {"lookup": lookup},
    )


def react_agent_with_string_prompt() -> App:
    """``langgraph.prebuilt.create_react_agent(model, tools, prompt="...")``."""
    import warnings

    from langgraph.prebuilt import create_react_agent

    def make(model: Any, tools: Sequence[Any]) -> Any:
        with warnings.catch_warnings():  # deprecated in favour of create_agent, still used
            warnings.simplefilter("ignore")
            return create_react_agent(model, tools, prompt=STRING_SYSTEM)

    return _string_prompt_agent(make)


def create_agent_with_string_prompt() -> App:
    """``langchain.agents.create_agent(model, tools, system_prompt="...")``."""
    from langchain.agents import create_agent

    return _string_prompt_agent(
        lambda model, tools: create_agent(model, tools, system_prompt=STRING_SYSTEM)
    )


# -- L7: chains ending in an output parser ----------------------------------------------------

PARSER_SYSTEM = "You extract the city and the country from the user's sentence."


def parser_chain(parser: str) -> App:
    """``prompt | model | StrOutputParser()`` (``"str"``) or ``| JsonOutputParser()``
    (``"json"``)."""
    prompt = ChatPromptTemplate.from_messages([("system", PARSER_SYSTEM), ("human", "{sentence}")])
    if parser == "str":
        model = ChatModel(responses=["Paris, France"])
        last: Any = StrOutputParser()
    elif parser == "json":
        model = ChatModel(responses=[json.dumps({"city": "Paris", "country": "France"})])
        last = JsonOutputParser()
    else:
        raise ValueError(f"unknown parser {parser!r}: 'str' or 'json'")
    return App(
        prompt | model | last, model, {"sentence": "I live in Paris."}, {"system": PARSER_SYSTEM}
    )


ALL_SHAPES: dict[str, Callable[[], App]] = {
    "map_reduce_lambda": lambda: map_reduce("lambda"),
    "map_reduce_chain": lambda: map_reduce("chain"),
    "agent_todo": lambda: agent_with_middleware("todo"),
    "agent_wrap_model_call": lambda: agent_with_middleware("wrap"),
    "agent_dynamic_prompt": lambda: agent_with_middleware("dynamic"),
    "writer_critic_graph": writer_critic_graph,
    "agent_tool_arguments": agent_with_repeated_tool_arguments,
    "few_shot": few_shot_chain,
    "react_agent_string_prompt": react_agent_with_string_prompt,
    "create_agent_string_prompt": create_agent_with_string_prompt,
    "str_parser": lambda: parser_chain("str"),
    "json_parser": lambda: parser_chain("json"),
}
"""Every shape by name (for checks that apply to all of them)."""
