"""Discovery and write-back on more LangChain shapes: few-shot prompts, every way to give an
agent its system prompt, readable descriptions; plus guards on the framework facts they rely
on (docs/framework-notes.md)."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
from langchain_core.messages import SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import (
    ChatPromptTemplate,
    FewShotChatMessagePromptTemplate,
    FewShotPromptTemplate,
    HumanMessagePromptTemplate,
    MessagesPlaceholder,
    PromptTemplate,
)
from langchain_core.runnables import RunnableLambda, RunnableParallel
from langchain_core.tools import tool

from opto_adapters.langchain import OptoTracer
from opto_adapters.trace import ValidationError, apply_updates
from tests.langchain_fakes import RecordingChatModel, RunRecorder, runs_of, tool_call

ASK = {"topic": "math", "question": "2+2"}
USER = {"messages": [{"role": "user", "content": "Weather in Paris?"}]}
BOT = "You are a weather bot."


def few_shot() -> FewShotPromptTemplate:
    return FewShotPromptTemplate(
        prefix="Answer questions about {topic}.",
        suffix="Q: {question}\nA:",
        example_prompt=PromptTemplate.from_template("Q: {q}\nA: {a}"),
        examples=[{"q": "1+1", "a": "2"}],
    )


def calculator_prompt() -> tuple[ChatPromptTemplate, FewShotChatMessagePromptTemplate]:
    block = FewShotChatMessagePromptTemplate(
        example_prompt=ChatPromptTemplate.from_messages([("human", "{input}"), ("ai", "{output}")]),
        examples=[{"input": "2+2", "output": "4"}],
    )
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a calculator."), block, ("human", "{input}")]
    )
    return prompt, block


def get_weather_tool():
    @tool
    def get_weather(city: str) -> str:
        """Get the weather for a city."""
        return f"sunny in {city}"

    return get_weather


def serialized_prompt(chain, inputs) -> str:
    """What callbacks (LangSmith...) report for the prompt of the next run."""
    recorder = RunRecorder()
    chain.invoke(inputs, config={"callbacks": [recorder]})
    return json.dumps(runs_of(recorder.roots[-1], "prompt")[0].serialized)


# -- FewShotPromptTemplate ---------------------------------------------------------------------


def test_few_shot_prompt_parts_are_parameters_of_the_prompt_run():
    model = RecordingChatModel()
    chain = few_shot() | model | StrOutputParser()
    tracer = OptoTracer(chain)
    got = {p.name: (p.kind, p.value) for p in tracer.parameters}
    assert got == {
        "prompt.prefix": ("prompt", "Answer questions about {topic}."),
        "prompt.suffix": ("prompt", "Q: {question}\nA:"),
        "prompt.example_prompt": ("prompt", "Q: {q}\nA: {a}"),
        "prompt.examples": ("json", [{"q": "1+1", "a": "2"}]),
    }
    assert tracer.parameter("prompt.prefix").variables == {"topic"}
    assert tracer.parameter("prompt.example_prompt").variables == {"q", "a"}
    edges = tracer.run(ASK).graph.edges()
    for part in ("prefix", "suffix", "example_prompt", "examples"):
        assert (f"prompt.{part}", part, "prompt") in edges  # attached through the stamp
    assert ("prompt", "messages", "model") in edges


def test_few_shot_updates_reach_the_next_run_and_the_callbacks():
    prompt, model = few_shot(), RecordingChatModel()
    chain = RunnableLambda(lambda x: {**x, "topic": x["topic"].lower()}) | prompt | model
    tracer = OptoTracer(chain)
    assert [p.name for p in tracer.parameters][0] == "prompt.prefix"  # no position prefix needed
    traced = tracer.run({"topic": "Math", "question": "2+2"})
    for p in tracer.parameters:
        p.zero_feedback()
    traced.graph.output.backward("Show the working.")
    assert all(p.feedback for p in tracer.parameters)
    apply_updates(
        {
            tracer.parameter("prompt.prefix"): "Answer briefly about {topic}.",
            tracer.parameter("prompt.suffix"): "Question: {question}\nAnswer:",
            tracer.parameter("prompt.example_prompt"): "Question: {q}\nAnswer: {a}",
            tracer.parameter("prompt.examples"): '[{"q": "3+3", "a": "6"}, {"q": "2*5", "a": "10"}]',
        }
    )
    reported = serialized_prompt(chain, {"topic": "Math", "question": "2+2"})
    assert model.calls[-1].messages[-1].content == (
        "Answer briefly about math.\n\nQuestion: 3+3\nAnswer: 6\n\n"
        "Question: 2*5\nAnswer: 10\n\nQuestion: 2+2\nAnswer:"
    )
    assert "Answer briefly about" in reported and "2*5" in reported  # no stale _serialized
    assert prompt.input_variables == ["question", "topic"]
    assert prompt.example_prompt.input_variables == ["a", "q"]


@pytest.mark.parametrize(
    ("name", "bad", "reason"),
    [
        ("prompt.prefix", "Answer about {subject}.", "drops the variable(s) {topic}"),
        ("prompt.prefix", "About {topic} in {tone}.", "introduces unknown variable(s) {tone}"),
        ("prompt.suffix", "Answer now:", "drops the variable(s) {question}"),
        ("prompt.example_prompt", "Q: {q}", "drops the variable(s) {a}"),
        ("prompt.example_prompt", "Q: {q} {{x}}\nA: {a}", "{x} would be read as an unknown"),
        ("prompt.examples", '{"q": "1", "a": "2"}', "expected a JSON array"),
        ("prompt.examples", '["1+1=2"]', "example 1 is a str"),
        ("prompt.examples", '[{"q": "1+1"}]', "example 1 lacks the key(s) ['a']"),
        ("prompt.examples", "[]", "keep at least one example"),
        # the prompt fills its examples as a template again: braces break or leak variables
        ("prompt.examples", '[{"q": "json?", "a": "{\\"k\\": 1}"}]', "write literal braces"),
        ("prompt.examples", '[{"q": "x", "a": "{question}"}]', "{question} would be read as"),
    ],
)
def test_few_shot_suggestions_that_would_break_the_prompt_are_refused(name, bad, reason):
    prompt, model = few_shot(), RecordingChatModel()
    chain = prompt | model
    tracer = OptoTracer(chain)
    param = tracer.parameter(name)
    before = param.value
    with pytest.raises(ValidationError) as info:
        param.set(bad)
    assert reason in info.value.errors[name]
    assert param.value == before
    chain.invoke(ASK)
    assert model.calls[-1].messages[-1].content.startswith("Answer questions about math.")


def test_doubled_braces_in_an_example_are_the_way_to_show_json():
    prompt, model = few_shot(), RecordingChatModel()
    tracer = OptoTracer(prompt | model)
    tracer.parameter("prompt.examples").set([{"q": "as JSON?", "a": '{{"answer": 4}}'}])
    (prompt | model).invoke(ASK)
    assert 'A: {"answer": 4}' in model.calls[-1].messages[-1].content


def test_examples_chosen_by_a_selector_are_not_a_parameter(caplog):
    from langchain_core.example_selectors import LengthBasedExampleSelector

    example_prompt = PromptTemplate.from_template("Q: {q}\nA: {a}")
    selector = LengthBasedExampleSelector(
        examples=[{"q": "1+1", "a": "2"}], example_prompt=example_prompt
    )
    prompt = FewShotPromptTemplate(
        prefix="About {topic}.",
        suffix="Q: {question}",
        example_prompt=example_prompt,
        example_selector=selector,
    )
    with caplog.at_level(logging.INFO, logger="opto_adapters.langchain"):
        tracer = OptoTracer(prompt | RecordingChatModel())
    assert [p.name for p in tracer.parameters] == [
        "prompt.prefix",
        "prompt.suffix",
        "prompt.example_prompt",
    ]
    assert "example selector (LengthBasedExampleSelector)" in caplog.text


# -- FewShotChatMessagePromptTemplate ----------------------------------------------------------


def test_chat_few_shot_block_inside_a_chat_prompt():
    prompt, block = calculator_prompt()
    model = RecordingChatModel()
    chain = prompt | model | StrOutputParser()
    tracer = OptoTracer(chain)
    assert [p.name for p in tracer.parameters] == [
        "prompt.system",
        "prompt.example_prompt.human",
        "prompt.example_prompt.ai",
        "prompt.examples",
        "prompt.human",
    ]
    edges = tracer.run({"input": "3+3"}).graph.edges()
    assert ("prompt.examples", "examples", "prompt") in edges
    assert ("prompt.example_prompt.ai", "example_prompt.ai", "prompt") in edges

    apply_updates(
        {
            tracer.parameter("prompt.examples"): [
                {"input": "1+1", "output": "2"},
                {"input": "5-3", "output": "2"},
            ],
            tracer.parameter("prompt.example_prompt.human"): "Compute {input}",
        }
    )
    reported = serialized_prompt(chain, {"input": "3+3"})
    assert [(m.type, m.content) for m in model.calls[-1].messages] == [
        ("system", "You are a calculator."),
        ("human", "Compute 1+1"),
        ("ai", "2"),
        ("human", "Compute 5-3"),
        ("ai", "2"),
        ("human", "3+3"),
    ]
    assert "Compute {input}" in reported and "5-3" in reported
    with pytest.raises(ValidationError, match=r"example 1 lacks the key\(s\) \['output'\]"):
        tracer.parameter("prompt.examples").set([{"input": "1"}])
    with pytest.raises(ValidationError, match="drops the variable"):
        tracer.parameter("prompt.example_prompt.ai").set("four")
    assert block.examples[1] == {"input": "5-3", "output": "2"}


def test_standalone_chat_few_shot_with_one_message_template():
    block = FewShotChatMessagePromptTemplate(
        example_prompt=HumanMessagePromptTemplate.from_template("Example: {x}"),
        examples=[{"x": "a"}],
    )
    model = RecordingChatModel()
    tracer = OptoTracer(block | model)
    assert [p.name for p in tracer.parameters] == ["prompt.example_prompt", "prompt.examples"]
    assert ("prompt.examples", "examples", "prompt") in tracer.run({}).graph.edges()
    tracer.parameter("prompt.example_prompt").set("For instance: {x}")
    tracer.parameter("prompt.examples").set([{"x": "b"}, {"x": "c"}])
    (block | model).invoke({})
    assert [m.content for m in model.calls[-1].messages] == ["For instance: b", "For instance: c"]


def test_two_few_shot_blocks_in_one_prompt_are_told_apart():
    def block(word: str) -> FewShotChatMessagePromptTemplate:
        return FewShotChatMessagePromptTemplate(
            example_prompt=ChatPromptTemplate.from_messages([("human", word + " {x}")]),
            examples=[{"x": "1"}],
        )

    prompt = ChatPromptTemplate.from_messages([block("A"), block("B"), ("human", "{q}")])
    names = [p.name for p in OptoTracer(prompt | RecordingChatModel()).parameters]
    assert names == [
        "prompt.example_prompt[0].human",
        "prompt.examples[0]",
        "prompt.example_prompt[1].human",
        "prompt.examples[1]",
        "prompt.human",
    ]


# -- agent system prompts ----------------------------------------------------------------------


def _create_agent(model, prompt):
    from langchain.agents import create_agent

    return create_agent(model, [get_weather_tool()], system_prompt=prompt)


def _react_agent(model, prompt):
    from langgraph.prebuilt import create_react_agent

    with warnings.catch_warnings():  # deprecated in langgraph 1.x, still widely used
        warnings.simplefilter("ignore")
        return create_react_agent(model, [get_weather_tool()], prompt=prompt)


@pytest.mark.parametrize(
    ("factory", "prompt"),
    [
        (_create_agent, BOT),
        (_create_agent, SystemMessage(BOT)),
        (_react_agent, BOT),
        (_react_agent, SystemMessage(BOT)),
    ],
    ids=["create_agent-str", "create_agent-SystemMessage", "react-str", "react-SystemMessage"],
)
def test_agent_system_prompt_however_given(factory, prompt):
    if isinstance(prompt, SystemMessage):
        prompt = SystemMessage(prompt.content)  # a fresh one: the test edits it
    model = RecordingChatModel(responses=[tool_call("get_weather", city="Paris"), "Sunny."])
    agent = factory(model, prompt)
    tracer = OptoTracer(agent)
    system = tracer.parameter("agent.system_prompt")
    assert system.value == BOT and system.description.startswith("System prompt of the agent")
    traced = tracer.run(USER)
    models = [e for e in traced.graph.edges() if e[0] == "agent.system_prompt"]
    assert len(models) == 2  # an input of both model calls
    system.set("You are a weather bot. Always give the temperature.")
    agent.invoke(USER)
    assert model.calls[-1].system == "You are a weather bot. Always give the temperature."


def _weather_prompt_function():
    def weather_prompt(state):
        return [SystemMessage(BOT), *state["messages"]]

    return weather_prompt


def test_a_react_prompt_function_that_builds_its_text_is_reported(caplog):
    model = RecordingChatModel(responses=["Sunny."])
    with caplog.at_level(logging.WARNING, logger="opto_adapters.langchain"):
        tracer = OptoTracer(_react_agent(model, _weather_prompt_function()))
    assert [p.name for p in tracer.parameters] == ["tool.get_weather"]
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "create_react_agent(prompt=<function weather_prompt>)" in record.message
    assert "cannot be trained or written back" in record.message
    assert "Pass prompt= as a str or a SystemMessage" in record.message


def test_a_react_prompt_function_returning_a_held_system_message_is_trained(caplog):
    house_style = SystemMessage(BOT)  # any variable name: what the function returns counts

    def weather_prompt(state):
        return [house_style, *state["messages"]]

    model = RecordingChatModel(responses=["Sunny."])
    agent = _react_agent(model, weather_prompt)
    with caplog.at_level(logging.WARNING, logger="opto_adapters.langchain"):
        tracer = OptoTracer(agent)
    assert caplog.records == []
    param = tracer.parameter("agent.system_prompt")
    assert ("agent.system_prompt", "system", "model") in tracer.run(USER).graph.edges()
    param.set("You are a terse weather bot.")
    agent.invoke(USER)
    assert model.calls[-1].system == "You are a terse weather bot."


def test_create_agent_dynamic_prompt(caplog):
    from langchain.agents import create_agent
    from langchain.agents.middleware import dynamic_prompt

    @dynamic_prompt
    def built(request):
        return BOT + " Today is sunny."

    house_style = SystemMessage(BOT)

    @dynamic_prompt
    def held(request):
        return house_style

    model = RecordingChatModel(responses=["Sunny."])
    with caplog.at_level(logging.WARNING, logger="opto_adapters.langchain"):
        built_tracer = OptoTracer(create_agent(model, [get_weather_tool()], middleware=[built]))
    assert [p.name for p in built_tracer.parameters] == ["tool.get_weather"]
    assert "create_agent(middleware=[@dynamic_prompt built])" in caplog.text
    assert "Pass system_prompt= as a str or a SystemMessage" in caplog.text

    caplog.clear()
    agent = create_agent(model, [get_weather_tool()], middleware=[held])
    with caplog.at_level(logging.WARNING, logger="opto_adapters.langchain"):
        tracer = OptoTracer(agent)
    assert caplog.records == []
    assert ("agent.system_prompt", "system", "model") in tracer.run(USER).graph.edges()
    tracer.parameter("agent.system_prompt").set("You are a terse weather bot.")
    agent.invoke(USER)
    assert model.calls[-1].system == "You are a terse weather bot."


# -- descriptions ------------------------------------------------------------------------------


def _history_chain():
    from langchain_core.chat_history import InMemoryChatMessageHistory
    from langchain_core.runnables.history import RunnableWithMessageHistory

    prompt = ChatPromptTemplate.from_messages(
        [("system", "Be kind about {topic}."), MessagesPlaceholder("history"), ("human", "{q}")]
    )
    store: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RunnableWithMessageHistory(
            prompt | RecordingChatModel(),
            lambda session: store.setdefault(session, InMemoryChatMessageHistory()),
            input_messages_key="q",
            history_messages_key="history",
        )


def _rag_like_chain():
    qa = ChatPromptTemplate.from_messages([("system", "Use {context}."), ("human", "{question}")])
    brief = ChatPromptTemplate.from_messages([("system", "Summarize.")])
    model = RecordingChatModel()
    return RunnableParallel(
        context=brief | model | StrOutputParser(), question=lambda x: x["question"]
    ) | qa | model.bind_tools([get_weather_tool()])


def _descriptions(make) -> dict[str, str]:
    return {p.name: p.description for p in OptoTracer(make()).parameters}


@pytest.mark.parametrize(
    "make",
    [
        _history_chain,
        _rag_like_chain,
        lambda: _react_agent(RecordingChatModel(), BOT),
        lambda: _react_agent(
            RecordingChatModel(),
            ChatPromptTemplate.from_messages([("system", BOT), MessagesPlaceholder("messages")]),
        ),
        lambda: RunnableLambda(lambda x: x) | few_shot() | RecordingChatModel(),
    ],
    ids=["history", "parallel", "react-str", "react-chat-prompt", "few-shot"],
)
def test_descriptions_read_as_text_and_are_stable(make):
    described = _descriptions(make)
    assert described
    internal = ("/", "bound", "runnable_sync", "static_model", "step1", "step2", " at ", "seq:")
    for name, text in described.items():
        assert not any(bit in text for bit in internal), (name, text)
        assert text.endswith(".") and text[0].isupper(), text
    assert _descriptions(make) == described  # the same app gives the same text every time


def test_descriptions_say_what_the_text_is_and_where_it_is_used():
    rag = _descriptions(_rag_like_chain)
    assert rag["step1.prompt.system"] == (
        "The system message template of the chat prompt in step 1 in the 'context' branch in "
        "step 1: it has no variables and is sent to the model as the system message on every run."
    )
    assert rag["step2.prompt.system"].startswith(
        "The system message template of the chat prompt in step 2: filled with {context}"
    )
    assert rag["tool.get_weather"] == (
        "Description of the tool 'get_weather', shown to the model when it chooses a tool: it "
        "decides when the tool is called and with which arguments."
    )
    history = _descriptions(_history_chain)  # the wrapper's own sequence is not mentioned
    assert history["prompt.system"].startswith(
        "The system message template of the chat prompt in step 1: filled with {topic}"
    )
    shot = _descriptions(lambda: RunnableLambda(lambda x: x) | few_shot())
    assert shot["prompt.prefix"] == (
        "The prefix of the few-shot prompt in step 2: the text before the examples, filled with "
        "{topic} on every run."
    )
    assert shot["prompt.examples"].startswith(
        "The examples shown in the few-shot prompt in step 2: a list of objects with the keys a, q"
    )


# -- framework facts (docs/framework-notes.md) -------------------------------------------------


def _closure(func) -> dict:
    return dict(
        zip(func.__code__.co_freevars, (c.cell_contents for c in func.__closure__), strict=True)
    )


def test_fact_create_agent_keeps_its_system_prompt_as_a_system_message_in_the_model_node():
    from langchain.agents import create_agent

    agent = create_agent(RecordingChatModel(), [], system_prompt=BOT)
    node = agent.nodes["model"].bound
    for func in (node.func, node.afunc):
        held = _closure(func)["system_message"]
        assert isinstance(held, SystemMessage) and held.content == BOT
    given = SystemMessage(BOT)
    agent = create_agent(RecordingChatModel(), [], system_prompt=given)
    assert _closure(agent.nodes["model"].bound.func)["system_message"] is given


def test_fact_create_react_agent_keeps_its_prompt_in_the_prompt_step_of_the_agent_node():
    agent = _react_agent(RecordingChatModel(), BOT)
    static_model = _closure(agent.nodes["agent"].bound.func)["static_model"]
    prompt_step = static_model.steps[0]
    assert prompt_step.name == "Prompt"
    held = _closure(prompt_step.func)["_system_message"]
    assert isinstance(held, SystemMessage) and held.content == BOT
    given = SystemMessage(BOT)
    agent = _react_agent(RecordingChatModel(), given)
    step = _closure(agent.nodes["agent"].bound.func)["static_model"].steps[0]
    assert _closure(step.func)["prompt"] is given
    function = _weather_prompt_function()
    step = _closure(_react_agent(RecordingChatModel(), function).nodes["agent"].bound.func)[
        "static_model"
    ].steps[0]
    assert step.name == "Prompt" and step.func is function


def test_fact_dynamic_prompt_middleware_closes_over_the_users_function():
    from langchain.agents.middleware import AgentMiddleware, dynamic_prompt

    def mine(request):
        return BOT

    middleware = dynamic_prompt(mine)
    assert isinstance(middleware, AgentMiddleware) and type(middleware).__name__ == "mine"
    wrapped = type(middleware).__dict__["wrap_model_call"]
    assert wrapped.__qualname__.startswith("dynamic_prompt.")
    assert _closure(wrapped)["func"] is mine


def test_fact_few_shot_prompt_fills_its_examples_as_a_template_again():
    prompt = few_shot()
    prompt.examples = [{"q": "json?", "a": '{"k": 1}'}]
    with pytest.raises(KeyError):
        prompt.format(**ASK)
    prompt.examples = [{"q": "x", "a": "{question}"}]
    assert "A: 2+2" in prompt.format(**ASK)


def test_fact_few_shot_prompts_cache_their_serialization_and_their_variables():
    prompt = few_shot()
    first = json.dumps(prompt._serialized)
    prompt.prefix = "Changed {topic}."
    assert json.dumps(prompt._serialized) == first  # stale until popped
    prompt.__dict__.pop("_serialized")
    assert "Changed" in json.dumps(prompt._serialized)
    prompt.prefix = "About {topic} and {tone}."
    assert prompt.input_variables == ["question", "topic"]  # not recomputed on edit


def test_fact_a_chat_few_shot_block_runs_inside_its_chat_prompt():
    prompt, block = calculator_prompt()
    recorder = RunRecorder()
    (prompt | RecordingChatModel()).invoke({"input": "3+3"}, config={"callbacks": [recorder]})
    assert len(runs_of(recorder.roots[-1], "prompt")) == 1  # one run: the outer prompt's
    assert block.input_variables == []  # only what an example selector would read
