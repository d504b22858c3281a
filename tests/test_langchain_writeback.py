"""Discovery and write-back: an optimizer step changes what the very next run sends."""

from __future__ import annotations

import json
import logging

import pytest
from langchain_core.messages import SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder, PromptTemplate
from langchain_core.runnables import RunnableBranch, RunnableLambda, RunnablePassthrough
from langchain_core.tools import tool
from langchain_core.vectorstores import InMemoryVectorStore

from opto_adapters.langchain import OptoTracer
from opto_adapters.trace import ValidationError, apply_updates
from tests.langchain_fakes import (
    KeywordEmbedding,
    RecordingChatModel,
    RecordingLLM,
    RunRecorder,
    echo,
    runs_of,
    tool_call,
)

QUESTION = {"topic": "geography", "question": "Capital of France?"}


def qa_prompt() -> ChatPromptTemplate:
    return ChatPromptTemplate.from_messages(
        [("system", "You answer questions about {topic}."), ("human", "{question}")]
    )


def make_tool():
    @tool
    def get_weather(city: str) -> str:
        """Get the weather for a city."""
        return f"sunny in {city}"

    return get_weather


def optimizer_step(tracer: OptoTracer, graph, feedback: str, updates: dict[str, str]) -> None:
    """What OptoPrime does: backward on the output, then write the suggestions atomically."""
    for p in tracer.parameters:
        p.zero_feedback()
    graph.output.backward(feedback)
    for name in updates:
        assert tracer.parameter(name).feedback, f"{name} got no feedback"
    apply_updates({tracer.parameter(name): value for name, value in updates.items()})


# -- discovery --------------------------------------------------------------------------------


def test_discovery_names_kinds_and_descriptions():
    chain = qa_prompt() | RecordingChatModel() | StrOutputParser()
    tracer = OptoTracer(chain)
    system, human = tracer.parameters
    assert (system.name, system.kind, system.value) == (
        "prompt.system",
        "prompt",
        "You answer questions about {topic}.",
    )
    assert system.variables == {"topic"} and human.variables == {"question"}
    assert "system message template" in system.description and "{topic}" in system.description


def test_names_get_a_position_prefix_only_when_needed():
    first = ChatPromptTemplate.from_messages(
        [("system", "Draft an answer about {topic}."), ("human", "{question}")]
    )
    second = ChatPromptTemplate.from_messages(
        [("system", "Improve this draft."), ("human", "{draft}")]
    )
    chain = (
        first
        | RecordingChatModel()
        | StrOutputParser()
        | (lambda draft: {"draft": draft})
        | second
        | RecordingChatModel()
    )
    names = [p.name for p in OptoTracer(chain).parameters]
    assert names == [
        "step1.prompt.system",
        "step1.prompt.human",
        "step5.prompt.system",
        "step5.prompt.human",
    ]


def test_names_inside_branches_and_repeated_roles():
    few_shot = ChatPromptTemplate.from_messages(
        [
            ("system", "Be brief."),
            ("human", "Example: {example}"),
            ("ai", "Short."),
            ("human", "{question}"),
        ]
    )
    branch = RunnableBranch((lambda x: "code" in x["question"], few_shot), qa_prompt())
    names = [p.name for p in OptoTracer(branch | RecordingChatModel()).parameters]
    assert names == [
        "branch1.prompt.system",
        "branch1.prompt.human[1]",
        "branch1.prompt.ai",
        "branch1.prompt.human[3]",
        "default.prompt.system",
        "default.prompt.human",
    ]


def test_include_exclude_keep_excluded_as_fixed_inputs():
    chain = qa_prompt() | RecordingChatModel() | StrOutputParser()
    tracer = OptoTracer(chain, exclude=["*.human"])
    assert [p.name for p in tracer.parameters] == ["prompt.system"]
    traced = tracer.run(QUESTION)
    assert "prompt.human" in [p.name for p in traced.graph.parameters]  # still shown, as an input
    traced.graph.output.backward("be shorter")
    assert tracer.parameter("prompt.human").feedback == []
    assert tracer.parameter("prompt.system").feedback
    with pytest.raises(ValueError, match="matches no parameter"):
        OptoTracer(chain, include=["nope*"])


# -- write-back reaches the next run ----------------------------------------------------------


def test_chat_prompt_update_reaches_the_next_model_call_and_the_callbacks():
    prompt = qa_prompt()
    model = RecordingChatModel(responses=["Paris."])
    chain = prompt | model | StrOutputParser()
    tracer = OptoTracer(chain)
    traced = tracer.run(QUESTION)

    optimizer_step(
        tracer,
        traced.graph,
        "Answer in one word.",
        {"prompt.system": "Answer about {topic} in one word."},
    )

    recorder = RunRecorder()
    chain.invoke(QUESTION, config={"callbacks": [recorder]})
    assert model.calls[-1].system == "Answer about geography in one word."
    # what callbacks report (LangSmith etc.) is the new template too, not a cached serialization
    prompt_run = runs_of(recorder.roots[-1], "prompt")[0]
    assert "Answer about {topic} in one word." in json.dumps(prompt_run.serialized)
    assert prompt.input_variables == ["question", "topic"]


def test_rag_prompt_update():
    store = InMemoryVectorStore(KeywordEmbedding(["paris", "france", "berlin", "germany"]))
    store.add_texts(["Paris is in France.", "Berlin is in Germany."])
    prompt = ChatPromptTemplate.from_template("Context: {context}\nQuestion: {question}")
    model = RecordingChatModel(responses=["Paris."])
    rag = (
        {
            "context": store.as_retriever(search_kwargs={"k": 1})
            | (lambda docs: docs[0].page_content),
            "question": RunnablePassthrough(),
        }
        | prompt
        | model
        | StrOutputParser()
    )
    tracer = OptoTracer(rag)
    traced = tracer.run("Where is Paris? France?")
    optimizer_step(
        tracer,
        traced.graph,
        "Cite the context.",
        {"prompt.human": "Use only this context:\n{context}\n\nQuestion: {question}\nCite it."},
    )
    rag.invoke("Where is Paris? France?")
    last = model.calls[-1].messages[-1].content
    assert last.startswith("Use only this context:\nParis is in France.") and last.endswith(
        "Cite it."
    )


def test_bound_tool_description_reaches_the_model_and_the_tool():
    get_weather = make_tool()
    model = RecordingChatModel(responses=[tool_call("get_weather", city="Paris")])

    def run_tools(message):
        return [get_weather.invoke(call) for call in message.tool_calls]

    chain = qa_prompt() | model.bind_tools([get_weather]) | RunnableLambda(run_tools)
    tracer = OptoTracer(chain)
    traced = tracer.run(QUESTION)
    assert model.calls[-1].tool_description("get_weather") == "Get the weather for a city."

    new = "Current weather (sky, temperature) for a city name, e.g. 'Paris'."
    optimizer_step(
        tracer, traced.graph, "Call the tool with the city only.", {"tool.get_weather": new}
    )

    chain.invoke(QUESTION)
    assert model.calls[-1].tool_description("get_weather") == new  # the bind_tools snapshot
    assert get_weather.description == new  # and the live tool (found through run_tools' globals)
    assert get_weather.tool_call_schema.model_json_schema()["description"] == new


def test_agent_system_prompt_and_tool_description_updates():
    from langchain.agents import create_agent

    get_weather = make_tool()
    model = RecordingChatModel(responses=[tool_call("get_weather", city="Paris"), "Sunny."])
    agent = create_agent(
        model, [get_weather], system_prompt="You are a weather bot."
    )  # a str works too
    tracer = OptoTracer(agent)
    traced = tracer.run({"messages": [{"role": "user", "content": "Weather in Paris?"}]})
    assert [c.system for c in model.calls] == ["You are a weather bot."] * 2

    optimizer_step(
        tracer,
        traced.graph,
        "Give the temperature too.",
        {
            "agent.system_prompt": "You are a weather bot. Always give the temperature.",
            "tool.get_weather": "Weather and temperature for a city.",
        },
    )
    agent.invoke({"messages": [{"role": "user", "content": "Weather in Rome?"}]})
    for call in model.calls[-2:]:
        assert call.system == "You are a weather bot. Always give the temperature."
        assert call.tool_description("get_weather") == "Weather and temperature for a city."


def test_completion_prompt_template_update():
    llm = RecordingLLM(responses=["42"])
    chain = PromptTemplate.from_template("Q: {q}\nA:") | llm
    tracer = OptoTracer(chain)
    traced = tracer.run({"q": "6 x 7?"})
    optimizer_step(
        tracer,
        traced.graph,
        "Show the steps.",
        {"prompt.template": "Question: {q}\nThink step by step.\nAnswer:"},
    )
    chain.invoke({"q": "6 x 7?"})
    assert llm.prompts[-1] == "Question: 6 x 7?\nThink step by step.\nAnswer:"


def test_literal_system_message_in_a_chat_prompt():
    prompt = ChatPromptTemplate.from_messages(
        [
            SystemMessage('Reply in JSON like {"a": 1}.'),
            MessagesPlaceholder("history", optional=True),
            ("human", "{question}"),
        ]
    )
    model = RecordingChatModel()
    chain = prompt | model
    tracer = OptoTracer(chain)
    assert [p.name for p in tracer.parameters] == ["prompt.system", "prompt.human"]
    system = tracer.parameter("prompt.system")
    system.set('Reply in JSON only, like {"answer": "..."}.')  # braces are literal here
    chain.invoke({"question": "hi"})
    assert model.calls[-1].system == 'Reply in JSON only, like {"answer": "..."}.'


# -- bad suggestions are rejected, the chain keeps working -----------------------------------


def test_template_missing_a_variable_is_rejected_and_the_chain_still_runs():
    model = RecordingChatModel(responses=["ok"])
    chain = qa_prompt() | model
    tracer = OptoTracer(chain)
    system, human = tracer.parameter("prompt.system"), tracer.parameter("prompt.human")

    with pytest.raises(ValidationError) as info:
        apply_updates({system: "Be concise.", human: "{question} ({tone})"})
    assert "{topic}" in info.value.errors["prompt.system"]
    assert "{tone}" in info.value.errors["prompt.human"]
    # nothing was written, and the chain runs with the old templates
    assert system.value == "You answer questions about {topic}."
    chain.invoke(QUESTION)
    assert model.calls[-1].system == "You answer questions about geography."

    for bad, reason in [
        ("About {topic", "malformed"),
        (123, "expected text"),
        ("{topic.x}", "malformed"),
    ]:
        with pytest.raises(ValidationError, match=reason):
            system.set(bad)
    assert system.value == "You answer questions about {topic}."


@pytest.mark.parametrize(
    ("fmt", "template", "good", "missing"),
    [
        (
            "mustache",
            "Answer {{question}} for {{user}}.",
            "Dear {{user}}: {{question}}",
            "Answer {{question}}.",
        ),
        (
            "jinja2",
            "Answer {{ question }} for {{ user }}.",
            "{% if user %}{{ user }}: {% endif %}{{ question }}",
            "{{ question }}",
        ),
    ],
)
def test_mustache_and_jinja2_variables(fmt, template, good, missing):
    if fmt == "jinja2":
        import jinja2  # noqa: F401  (installed with llama-index-core)
    prompt = ChatPromptTemplate.from_messages([("human", template)], template_format=fmt)
    model = RecordingChatModel()
    chain = prompt | model
    tracer = OptoTracer(chain)
    param = tracer.parameter("prompt.human")
    assert param.variables == {"question", "user"}
    with pytest.raises(ValidationError, match="user"):
        param.set(missing)
    param.set(good)
    chain.invoke({"question": "why?", "user": "Ann"})
    assert (
        model.calls[-1]
        .messages[-1]
        .content.startswith("Ann: why?" if fmt == "jinja2" else "Dear Ann: why?")
    )


def test_tool_description_limits():
    get_weather = make_tool()
    tracer = OptoTracer(RecordingChatModel().bind_tools([get_weather]))
    param = tracer.parameter("tool.get_weather")
    with pytest.raises(ValidationError, match="at most 1024"):
        param.set("x" * 2000)
    with pytest.raises(ValidationError, match="empty"):
        param.set("  ")
    assert param.value == "Get the weather for a city."


def test_a_tool_description_already_too_long_is_kept_and_may_only_shrink(caplog):
    """A description longer than 1024 characters used to be dropped at discovery with only a
    warning: the tool then had no parameter at all."""
    from langchain_core.tools import StructuredTool

    long_text = ("Look up the weather. " * 60).strip()  # 1259 characters
    lookup = StructuredTool.from_function(
        lambda city: f"sunny in {city}", name="lookup", description=long_text
    )
    model = RecordingChatModel()
    chain = qa_prompt() | model.bind_tools([lookup])
    with caplog.at_level(logging.WARNING, logger="opto_adapters.langchain"):
        tracer = OptoTracer(chain)
    assert caplog.records == []
    param = tracer.parameter("tool.lookup")
    assert param.trainable and param.value == long_text
    assert f"at most {len(long_text)} characters" in param.constraint
    with pytest.raises(ValidationError, match=f"must be at most {len(long_text)}"):
        param.set(long_text + "x")  # never grows past its first length
    param.set("y" * len(long_text))  # as long as it was: fine
    param.set("Weather for a city.")  # shorter: fine, and written to the bound copy too
    chain.invoke(QUESTION)
    assert model.calls[-1].tool_description("lookup") == "Weather for a city."
    with pytest.raises(ValidationError, match="empty"):
        param.set(" ")


def test_an_empty_prompt_is_kept_as_a_parameter(caplog):
    """An empty template or system message is valid: it used to be dropped at discovery
    with only a warning, so the optimizer could never write one."""
    model = RecordingChatModel()
    chat = ChatPromptTemplate.from_messages(
        [("system", ""), SystemMessage(""), ("human", "{question}")]
    )
    completion, llm = PromptTemplate.from_template(""), RecordingLLM(responses=["ok"])
    with caplog.at_level(logging.WARNING, logger="opto_adapters.langchain"):
        tracer = OptoTracer(chat | model)
        completion_tracer = OptoTracer(completion | llm)
    assert caplog.records == []
    assert [p.name for p in tracer.parameters] == [
        "prompt.system[0]",
        "prompt.system[1]",
        "prompt.human",
    ]
    template, literal = tracer.parameter("prompt.system[0]"), tracer.parameter("prompt.system[1]")
    assert template.value == "" and literal.value == "" and template.variables == frozenset()
    completion_tracer.parameter("prompt.template").set("Say hello.")
    completion_tracer.run({})
    assert llm.prompts == ["Say hello."]

    apply_updates({template: "Answer in one word.", literal: "Be polite."})
    graph = tracer.run({"question": "Capital of France?"}).graph
    assert [m.content for m in model.calls[-1].messages] == [
        "Answer in one word.",
        "Be polite.",
        "Capital of France?",
    ]
    assert ("prompt.system[0]", "system[0]", "prompt") in graph.edges()
    template.set("")  # empty to begin with: may be empty again (that is how the app started)
    assert template.value == ""
    # a text that was not empty may not become empty
    brief = OptoTracer(ChatPromptTemplate.from_messages([("system", "Be brief.")]))
    with pytest.raises(ValidationError, match="empty"):
        brief.parameter("prompt.system").set(" ")


# -- save / load ------------------------------------------------------------------------------


def test_save_and_load_restore_an_optimized_chain(tmp_path):
    def build():
        model = RecordingChatModel(respond=echo())
        get_weather = make_tool()
        return qa_prompt() | model.bind_tools([get_weather]) | StrOutputParser(), model

    chain, _ = build()
    tracer = OptoTracer(chain)
    apply_updates(
        {
            tracer.parameter("prompt.system"): "Expert on {topic}. One word answers.",
            tracer.parameter("tool.get_weather"): "Weather for a city.",
        }
    )
    path = tracer.save(tmp_path / "params.json")

    # production: a fresh chain, restored from the file
    fresh, model = build()
    restored = OptoTracer(fresh)
    restored.load(path)
    fresh.invoke(QUESTION)
    assert model.calls[-1].system == "Expert on geography. One word answers."
    assert model.calls[-1].tool_description("get_weather") == "Weather for a city."

    # a file with a bad template is refused as a whole
    doc = json.loads(path.read_text())
    doc["parameters"]["prompt.system"]["value"] = "No variable here."
    path.write_text(json.dumps(doc))
    with pytest.raises(ValidationError, match="topic"):
        restored.load(path)
    assert restored.parameter("tool.get_weather").value == "Weather for a city."


def test_prompts_held_by_a_method_step_and_a_system_message_in_a_function():
    from langchain_core.messages import HumanMessage

    class Answerer:
        def __init__(self) -> None:
            self.model = RecordingChatModel()
            self.prompt = ChatPromptTemplate.from_messages([("human", "Q: {question}")])

        def run(self, question: str) -> str:
            return (self.prompt | self.model | StrOutputParser()).invoke({"question": question})

    answerer = Answerer()
    system_prompt = SystemMessage("You are terse.")
    model = RecordingChatModel()

    def call(question: str):
        return model.invoke([system_prompt, HumanMessage(question)])

    chain = RunnableLambda(answerer.run) | RunnableLambda(call)
    tracer = OptoTracer(chain)
    assert [p.name for p in tracer.parameters] == ["prompt.human", "call.system_prompt"]
    assert "the step 'call'" in tracer.parameter("call.system_prompt").description
    graph = tracer.run("why?").graph
    assert ("call.system_prompt", "system", "model1") in graph.edges()
    apply_updates(
        {
            tracer.parameter("prompt.human"): "Question: {question}",
            tracer.parameter("call.system_prompt"): "You are very terse.",
        }
    )
    chain.invoke("why?")
    assert answerer.model.calls[-1].messages[-1].content == "Question: why?"
    assert model.calls[-1].system == "You are very terse."
