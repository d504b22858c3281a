"""Discovery and write-back on LlamaIndex app shapes beyond a plain query engine: routers,
sub-question engines, custom workflows, agents with unusual texts, hand-added parameters.

Each test also pins down where LlamaIndex keeps the text its LLM receives (see the LlamaIndex
section of docs/framework-notes.md): if a version moves it, these fail.
"""

from __future__ import annotations

import json
import logging

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent, ReActAgent
from llama_index.core.llms import ChatMessage
from llama_index.core.prompts import ChatPromptTemplate, PromptTemplate, RichPromptTemplate
from llama_index.core.prompts.default_prompts import DEFAULT_SUMMARY_PROMPT
from llama_index.core.query_engine import RouterQueryEngine, SubQuestionQueryEngine
from llama_index.core.question_gen import LLMQuestionGenerator
from llama_index.core.selectors import (
    LLMMultiSelector,
    LLMSingleSelector,
    PydanticSingleSelector,
)
from llama_index.core.tools import FunctionTool, QueryEngineTool
from llama_index.core.workflow import StartEvent, StopEvent, Workflow, step

from opto_adapters.llama_index import OptoTracer, discover
from opto_adapters.llama_index.templates import STAMP_KEY, match_template
from opto_adapters.trace import Parameter, ValidationError, apply_updates

from .llama_index_fakes import RecordingLLM, ScriptedToolLLM, WordEmbedding, tool_description

DOCS = ["The sky is blue.", "Paris is the capital of France."]
COLORS = 'Answers questions\nabout "colors" of things, e.g. the sky\'s hue (café au lait).'
GEO = "Answers questions about geography: capitals, countries, rivers."


@pytest.fixture(scope="module")
def index() -> VectorStoreIndex:
    return VectorStoreIndex.from_documents(
        [Document(text=t) for t in DOCS], embed_model=WordEmbedding()
    )


@pytest.fixture
def tracers():
    made: list[OptoTracer] = []
    yield made
    for t in made:
        t.close()


def trainable(tracer: OptoTracer, name: str):
    [t] = [t for t in tracer._discovery.trainables if t.parameter.name == name]
    return t


def selector_reply(choice: int = 1):
    """Picks ``choice`` when asked to select, else answers ``Blue.``."""

    def reply(text: str) -> str:
        if text.startswith("Some choices are given below"):
            return json.dumps([{"choice": choice, "reason": "it fits"}])
        return "Blue."

    return reply


def engines(index, llm):
    colors = index.as_query_engine(llm=llm, similarity_top_k=1)
    geo = index.as_query_engine(llm=llm, similarity_top_k=1)
    return (
        QueryEngineTool.from_defaults(colors, name="colors", description=COLORS),
        QueryEngineTool.from_defaults(geo, name="geo", description=GEO),
    )


# -- RouterQueryEngine ---------------------------------------------------------------------------


def test_router_discovers_each_choice_its_engine_and_the_selector_prompt(index, tracers):
    llm = RecordingLLM(reply=selector_reply())
    colors, geo = engines(index, llm)
    router = RouterQueryEngine(
        selector=LLMSingleSelector.from_defaults(llm=llm), query_engine_tools=[colors, geo], llm=llm
    )
    tracer = OptoTracer(router)
    tracers.append(tracer)
    names = [p.name for p in tracer.parameters]
    assert {
        "selector.prompt",
        "summarizer.summary_template",
        "tool.colors",
        "tool.geo",
        "tool.colors.response_synthesizer.text_qa_template",
        "tool.geo.response_synthesizer.text_qa_template",
    } <= set(names)
    desc = tracer.parameter("tool.colors")
    assert (desc.kind, desc.value) == ("tool_description", COLORS)
    assert trainable(tracer, "tool.colors").match == "contains"
    assert "picks the query engine" in desc.description
    # the routed engines are components: their own runs are traced too
    assert id(colors.query_engine) in tracer._discovery.components
    assert id(geo.query_engine) in tracer._discovery.components

    router.query("What color is the sky?")
    received = llm.prompts[0]
    # the selector joins each description's lines with spaces: the raw text is not in it
    assert COLORS not in received and " ".join(COLORS.splitlines()) in received
    assert any(n in received for n in trainable(tracer, "tool.colors").needles())
    assert any(n in received for n in trainable(tracer, "tool.geo").needles())


def test_router_description_write_back_reaches_the_next_selection(index, tracers):
    llm = RecordingLLM(reply=selector_reply(2))
    colors, geo = engines(index, llm)
    router = RouterQueryEngine(
        selector=LLMSingleSelector.from_defaults(llm=llm), query_engine_tools=[colors, geo], llm=llm
    )
    tracer = OptoTracer(router)
    tracers.append(tracer)
    # the router keeps the tool's own ToolMetadata object, not a copy
    assert router._metadatas[1] is geo.metadata
    apply_updates(
        {
            tracer.parameter("tool.geo"): "Knows capitals of every country.",
            tracer.parameter("tool.geo.response_synthesizer.text_qa_template"): (
                "GEO ENGINE. Context: {context_str}\nQuestion: {query_str}\nAnswer: "
            ),
        }
    )
    assert geo.metadata.description == "Knows capitals of every country."
    router.query("What is the capital of France?")
    selection, answer = llm.prompts[-2:]
    assert "(2) Knows capitals of every country." in selection
    assert GEO not in selection
    assert answer.startswith("GEO ENGINE. Context:")


def test_multi_and_pydantic_selectors_are_discovered_and_written_back(index, tracers):
    answers = RecordingLLM(reply="Blue.")
    colors, geo = engines(index, answers)
    multi_llm = RecordingLLM(reply=json.dumps([{"choice": 1, "reason": "a"}]))
    multi = RouterQueryEngine(
        selector=LLMMultiSelector.from_defaults(llm=multi_llm),
        query_engine_tools=[colors, geo],
        llm=answers,
    )
    tracer = OptoTracer(multi)
    tracers.append(tracer)
    assert trainable(tracer, "selector.prompt").match == "stamp"
    apply_updates({tracer.parameter("tool.colors"): "Sky and grass colors."})
    multi.query("sky?")
    assert "(1) Sky and grass colors." in multi_llm.prompts[-1]

    colors.metadata.description = COLORS
    # a Pydantic selector's prompt lives in its program: get_prompts() returns nothing
    select_llm = ScriptedToolLLM([[("SingleSelection", {"index": 1, "reason": "r"})]] * 2)
    selector = PydanticSingleSelector.from_defaults(llm=select_llm)
    assert selector.get_prompts() == {}
    pydantic = RouterQueryEngine(selector=selector, query_engine_tools=[colors, geo], llm=answers)
    tracer = OptoTracer(pydantic)
    tracers.append(tracer)
    prompt = tracer.parameter("selector.prompt")
    assert prompt.variables == {"num_choices", "context_list", "query_str"}
    assert trainable(tracer, "selector.prompt").match == "template"
    pydantic.query("sky?")
    [(role, text)] = select_llm.calls[0]["messages"]
    assert role == "user" and match_template(prompt.value, text) is not None
    assert "(1) " + " ".join(COLORS.splitlines()) in text
    apply_updates({prompt: "Pick one of {num_choices} for '{query_str}':\n{context_list}"})
    pydantic.query("sky?")
    assert select_llm.calls[1]["messages"][0][1].startswith("Pick one of 2 for 'sky?':\n(1) ")


# -- SubQuestionQueryEngine ----------------------------------------------------------------------


def sub_question_reply(text: str) -> str:
    if "<User Question>" in text:
        items = [{"sub_question": "What color is the sky?", "tool_name": "colors"}]
        return "```json\n" + json.dumps({"items": items}) + "\n```"
    return "Blue."


def test_sub_question_engine_discovers_tools_question_gen_and_engines(index, tracers):
    llm = RecordingLLM(reply=sub_question_reply)
    colors, geo = engines(index, llm)
    engine = SubQuestionQueryEngine.from_defaults(
        query_engine_tools=[colors, geo],
        llm=llm,
        question_gen=LLMQuestionGenerator.from_defaults(llm=llm),
        use_async=False,
        verbose=False,
    )
    tracer = OptoTracer(engine)
    tracers.append(tracer)
    names = {p.name for p in tracer.parameters}
    assert {
        "question_gen.question_gen_prompt",
        "response_synthesizer.text_qa_template",
        "tool.colors",
        "tool.geo",
        "tool.colors.response_synthesizer.text_qa_template",
    } <= names
    gen = tracer.parameter("question_gen.question_gen_prompt")
    assert gen.variables == {"tools_str", "query_str"}
    # its update_prompts rebuilds a plain PromptTemplate from the text: no mark survives,
    # so the prompt is recognised by its literal pieces
    assert trainable(tracer, "question_gen.question_gen_prompt").match == "template"
    assert engine._query_engines["colors"] is colors.query_engine  # keyed by tool name
    assert engine._metadatas[0] is colors.metadata
    assert "sub-questions" in gen.description

    engine.query("Compare the sky and Paris")
    received = llm.prompts[0]
    # the question generator sends the descriptions as a JSON object: escaped, not verbatim
    assert COLORS not in received and json.dumps(COLORS)[1:-1] in received
    assert any(n in received for n in trainable(tracer, "tool.colors").needles())
    assert match_template(gen.value, received) is not None

    apply_updates(
        {
            tracer.parameter("tool.colors"): "Colors of the sky and the sea.",
            gen: gen.value.replace("Given a user question", "GIVEN a user question"),
        }
    )
    before = len(llm.prompts)
    engine.query("Compare the sky and Paris")
    received = llm.prompts[before]
    assert received.startswith("GIVEN a user question")
    assert '"colors": "Colors of the sky and the sea."' in received


# -- custom workflows ----------------------------------------------------------------------------

ANSWER_PROMPT = PromptTemplate("Answer in one word.\nQuestion: {question}\nAnswer:")
SYSTEM_PROMPT = "You are a terse assistant that answers in one word."


class GlobalFlow(Workflow):
    """Reads a module-global template and a module-global system prompt string."""

    def __init__(self, llm, **kwargs):
        super().__init__(**kwargs)
        self.llm = llm

    @step
    async def answer(self, ev: StartEvent) -> StopEvent:
        text = ANSWER_PROMPT.format(question=ev.user_msg)
        reply = await self.llm.achat(
            [
                ChatMessage(role="system", content=SYSTEM_PROMPT),
                ChatMessage(role="user", content=text),
            ]
        )
        return StopEvent(result=str(reply.message.content))


class AttributeFlow(Workflow):
    """An instance-attribute chat template, a class-attribute template and a helper method."""

    review_prompt = PromptTemplate("Review this draft and list its mistakes: {draft}")

    def __init__(self, llm, **kwargs):
        super().__init__(**kwargs)
        self.llm = llm
        self.draft_prompt = ChatPromptTemplate.from_messages(
            [("system", "You write first drafts on any topic."), ("user", "Draft about {topic}.")]
        )

    def _review(self, draft: str) -> str:
        return self.llm.complete(self.review_prompt.format(draft=draft)).text

    @step
    async def write(self, ev: StartEvent) -> StopEvent:
        messages = self.draft_prompt.format_messages(topic=ev.user_msg)
        draft = (await self.llm.achat(messages)).message.content
        return StopEvent(result=self._review(draft))


def closure_flow(llm):
    prompt = RichPromptTemplate("Summarize for a child: {{ text }}\nSummary:")

    class ClosureFlow(Workflow):
        @step
        async def summarize(self, ev: StartEvent) -> StopEvent:
            return StopEvent(result=str(await llm.acomplete(prompt.format(text=ev.user_msg))))

    return ClosureFlow(), prompt


async def test_workflow_global_template_and_system_string_are_found_and_written_in_place(tracers):
    original_template = ANSWER_PROMPT.template
    llm = RecordingLLM(reply="Blue.", chat_model=True)
    flow = GlobalFlow(llm)
    try:
        tracer = OptoTracer(flow)
        tracers.append(tracer)
        assert [p.name for p in tracer.parameters] == ["ANSWER_PROMPT", "SYSTEM_PROMPT"]
        prompt = tracer.parameter("ANSWER_PROMPT")
        assert prompt.kind == "prompt" and prompt.variables == {"question"}
        assert "global 'ANSWER_PROMPT'" in prompt.description
        assert trainable(tracer, "ANSWER_PROMPT").match == "template"
        assert trainable(tracer, "SYSTEM_PROMPT").match == "contains"

        run = await tracer.arun("What color is the sky?")
        assert run.error is None
        [(system, user)] = llm.messages
        assert match_template(prompt.value, user[1]) == {"question": "What color is the sky?"}
        # the graph ties the LLM call to both texts it was built from
        assert {"ANSWER_PROMPT", "SYSTEM_PROMPT"} <= {p.name for p in run.graph.parameters}

        with pytest.raises(ValidationError, match="drops the variable"):
            apply_updates({prompt: "Answer in one word."})
        apply_updates(
            {
                prompt: "One word only.\nQ: {question}\nA:",
                tracer.parameter("SYSTEM_PROMPT"): "Answer with a single word.",
            }
        )
        assert globals()["SYSTEM_PROMPT"] == "Answer with a single word."
        assert ANSWER_PROMPT.template == "One word only.\nQ: {question}\nA:"  # the same object
        await tracer.arun("What color is grass?")
        system, user = llm.messages[-1]
        assert system == ("system", "Answer with a single word.")
        assert user == ("user", "One word only.\nQ: What color is grass?\nA:")
    finally:
        ANSWER_PROMPT.template = original_template
        ANSWER_PROMPT.template_vars = ["question"]
        globals()["SYSTEM_PROMPT"] = "You are a terse assistant that answers in one word."


async def test_workflow_attribute_class_attribute_and_helper_prompts(tracers):
    llm = RecordingLLM(reply="A draft.", chat_model=True)
    flow = AttributeFlow(llm)
    tracer = OptoTracer(flow)
    tracers.append(tracer)
    assert {p.name for p in tracer.parameters} == {
        "draft_prompt.chat[0]",
        "draft_prompt.chat[1]",
        "review_prompt",
    }
    assert trainable(tracer, "draft_prompt.chat[0]").match == "contains"
    assert trainable(tracer, "draft_prompt.chat[1]").match == "template"
    assert (
        "class attribute AttributeFlow.review_prompt"
        in tracer.parameter("review_prompt").description
    )

    await tracer.arun("owls")
    apply_updates(
        {
            tracer.parameter("draft_prompt.chat[1]"): "Write a short draft about {topic}.",
            tracer.parameter("review_prompt"): "Find every mistake in: {draft}",
        }
    )
    assert flow.draft_prompt.template_vars == ["topic"]
    await tracer.arun("owls")
    assert llm.messages[-1] == [
        ("system", "You write first drafts on any topic."),
        ("user", "Write a short draft about owls."),
    ]
    assert llm.prompts[-1] == "Find every mistake in: A draft."


async def test_workflow_closure_variable_rich_template(tracers):
    llm = RecordingLLM(reply="Short.")
    flow, prompt = closure_flow(llm)
    tracer = OptoTracer(flow)
    tracers.append(tracer)
    [param] = tracer.parameters
    assert param.name == "prompt" and param.variables == {"text"}
    assert "closure variable 'prompt'" in param.description
    t = trainable(tracer, "prompt")
    assert (t.match, t.syntax) == ("template", "jinja")
    await tracer.arun("Owls hunt at night.")
    assert match_template(param.value, llm.prompts[-1], syntax="jinja") == {
        "text": "Owls hunt at night."
    }
    with pytest.raises(ValidationError, match="unknown variable"):
        apply_updates({param: "Summarize {{ text }} for {{ reader }}"})
    apply_updates({param: "Explain to a child: {{ text }}"})
    assert prompt.template_str == "Explain to a child: {{ text }}"  # the object the step holds
    await tracer.arun("Owls hunt at night.")
    assert llm.prompts[-1] == "Explain to a child: Owls hunt at night."


async def test_a_shared_llama_index_default_in_a_workflow_is_never_edited(tracers):
    original = DEFAULT_SUMMARY_PROMPT.template
    llm = RecordingLLM(reply="ok")
    holder = {"summary_prompt": DEFAULT_SUMMARY_PROMPT}

    class DefaultFlow(Workflow):
        @step
        async def go(self, ev: StartEvent) -> StopEvent:
            text = holder["summary_prompt"].format(context_str=ev.user_msg)
            return StopEvent(result=str(await llm.acomplete(text)))

    tracer = OptoTracer(DefaultFlow())
    tracers.append(tracer)
    param = tracer.parameter("holder[summary_prompt]")
    assert STAMP_KEY not in DEFAULT_SUMMARY_PROMPT.metadata
    apply_updates({param: "Summarize: {context_str}"})
    assert DEFAULT_SUMMARY_PROMPT.template == original
    assert holder["summary_prompt"] is not DEFAULT_SUMMARY_PROMPT
    await tracer.arun("Owls hunt at night.")
    assert llm.prompts[-1] == "Summarize: Owls hunt at night."


def test_a_workflow_calling_an_llm_without_a_findable_prompt_warns_once(caplog):
    llm = RecordingLLM()

    class InlineFlow(Workflow):
        @step
        async def go(self, ev: StartEvent) -> StopEvent:
            return StopEvent(result=str(await llm.acomplete(f"Answer: {ev.user_msg}")))

    with caplog.at_level(logging.WARNING, logger="opto_adapters.llama_index"):
        tracer = OptoTracer(InlineFlow())
    tracer.close()
    [record] = [r for r in caplog.records if "no prompt was found" in r.getMessage()]
    message = record.getMessage()
    assert "InlineFlow" in message and "module globals and closure variables" in message
    assert "add_parameter" in message
    assert tracer.parameters == []


def test_a_workflow_without_llm_calls_does_not_warn(caplog):
    class PlainFlow(Workflow):
        @step
        async def go(self, ev: StartEvent) -> StopEvent:
            return StopEvent(result=ev.user_msg.upper())

    with caplog.at_level(logging.WARNING, logger="opto_adapters.llama_index"):
        OptoTracer(PlainFlow()).close()
    assert not [r for r in caplog.records if "no prompt was found" in r.getMessage()]


def test_template_vars_are_not_recomputed_when_a_template_is_assigned():
    # why an in-place write must recompute them: LlamaIndex validates nothing on assignment
    template = PromptTemplate("Hi {name}")
    template.template = "Hi {name}, you are {age}"
    assert template.template_vars == ["name"]
    rich = RichPromptTemplate("Hi {{ name }}")
    rich.template_str = "Hi {{ name }}, you are {{ age }}"
    assert rich.template_vars == ["name"]


async def test_a_workflow_holding_a_query_engine_gets_its_prompts(index, tracers, caplog):
    llm = RecordingLLM(reply="Blue.")

    class RagFlow(Workflow):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.query_engine = index.as_query_engine(llm=llm, similarity_top_k=1)
            self.reply_instructions = 'Reply as {"answer": ...}'  # braces, not a template

        @step
        async def go(self, ev: StartEvent) -> StopEvent:
            answer = await self.query_engine.aquery(ev.user_msg)
            return StopEvent(result=f"{answer} {self.reply_instructions}")

    flow = RagFlow()
    with caplog.at_level(logging.WARNING, logger="opto_adapters.llama_index"):
        tracer = OptoTracer(flow)
    tracers.append(tracer)
    assert not [r for r in caplog.records if "no prompt was found" in r.getMessage()]
    names = {p.name for p in tracer.parameters}
    assert "query_engine.response_synthesizer.text_qa_template" in names
    assert id(flow.query_engine) in tracer._discovery.components
    fmt = tracer.parameter("reply_instructions")
    assert fmt.kind == "text" and trainable(tracer, "reply_instructions").match == "contains"
    apply_updates(
        {
            tracer.parameter("query_engine.response_synthesizer.text_qa_template"): (
                "CTX {context_str} Q {query_str} A"
            )
        }
    )
    run = await tracer.arun("What color is the sky?")
    assert run.output == 'Blue. Reply as {"answer": ...}'
    assert llm.prompts[-1].startswith("CTX ") and llm.prompts[-1].endswith(" A")


def test_a_query_engine_tool_of_an_agent_names_its_engine_prompts_under_the_tool(index):
    engine = index.as_query_engine(llm=RecordingLLM())
    tool = QueryEngineTool.from_defaults(engine, name="docs", description="Searches the docs.")
    found = discover(FunctionAgent(tools=[tool], llm=ScriptedToolLLM(["ok"])))
    names = [p.name for p in found.parameters]
    assert names[:2] == ["tool.docs", "tool.docs.response_synthesizer.text_qa_template"]
    assert found.by_tool[id(tool)].match == "tool"
    assert id(engine) in found.components


# -- texts LlamaIndex accepts must not break the tracer ------------------------------------------


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


LONG = "Adds two integers. " * 70  # 1330 characters


def test_a_long_tool_description_is_accepted_and_may_only_shrink():
    long_tool = FunctionTool.from_defaults(add, name="add", description=LONG)
    blank_tool = FunctionTool.from_defaults(lambda a: a, name="echo", description=" ")
    # LlamaIndex builds such tools and agents; only an OpenAI-style tool spec refuses them
    with pytest.raises(ValueError, match="1024"):
        long_tool.metadata.to_openai_tool()
    for agent in (
        FunctionAgent(tools=[long_tool, blank_tool], llm=ScriptedToolLLM(["ok"]), system_prompt=""),
        ReActAgent(tools=[long_tool, blank_tool], llm=ScriptedToolLLM(["Answer: ok"])),
    ):
        found = discover(agent)
        by_name = {p.name: p for p in found.parameters}
        desc, blank = by_name["tool.add"], by_name["tool.echo"]
        assert desc.value == LONG and blank.value == " "
        assert f"at most {len(LONG)} characters" in desc.constraint
        with pytest.raises(ValidationError, match="may\\s+only get shorter"):
            apply_updates({desc: LONG + "x"})
        apply_updates({desc: LONG[:1100]})  # shorter, still over 1024: allowed
        assert long_tool.metadata.description == LONG[:1100]
        with pytest.raises(ValidationError, match="empty"):
            apply_updates({blank: ""})
        apply_updates({blank: "Returns its input."})
        assert blank_tool.metadata.description == "Returns its input."
        long_tool.metadata.description, blank_tool.metadata.description = LONG, " "
    normal = discover(FunctionAgent(tools=[add], llm=ScriptedToolLLM(["ok"])))
    [desc] = [p for p in normal.parameters if p.name == "tool.add"]
    with pytest.raises(ValidationError, match="1024"):
        apply_updates({desc: "x" * 1025})


async def test_an_empty_system_prompt_and_an_empty_template_are_accepted(index):
    llm = ScriptedToolLLM(["ok", "ok"])
    agent = FunctionAgent(tools=[add], llm=llm, system_prompt="")
    [system] = [p for p in discover(agent).parameters if p.name == "agent.system_prompt"]
    assert system.value == ""
    await agent.run(user_msg="hi")
    assert [role for role, _ in llm.calls[0]["messages"]] == ["user"]  # no system message
    apply_updates({system: "You add numbers."})
    await agent.run(user_msg="hi")
    assert llm.calls[1]["messages"][0] == ("system", "You add numbers.")
    apply_updates({system: ""})  # it was empty to begin with: empty stays allowed

    engine = index.as_query_engine(llm=RecordingLLM())
    engine.update_prompts({"response_synthesizer:text_qa_template": PromptTemplate("")})
    qa = next(
        p for p in discover(engine).parameters if p.name == "response_synthesizer.text_qa_template"
    )
    assert qa.value == ""
    apply_updates({qa: "Context: {context_str}\nQ: {query_str}\nA:"})
    engine.query("What color is the sky?")
    assert engine._response_synthesizer._llm.prompts[-1].startswith("Context: The sky is blue.")


def test_react_agent_system_prompt_reaches_the_llm_through_the_header_context(tracers):
    llm = ScriptedToolLLM(["Thought: done.\nAnswer: 4"] * 2)
    agent = ReActAgent(tools=[add], llm=llm, system_prompt="Be brief.")
    # ReAct copies the system prompt into its formatter when built, and drops the system
    # message at run time: editing agent.system_prompt alone changes nothing the LLM sees
    assert agent.formatter.context == "Be brief."
    tracer = OptoTracer(agent)
    tracers.append(tracer)
    system = tracer.parameter("agent.system_prompt")
    assert "context of its ReAct header" in system.description
    assert "context" in tracer.parameter("agent.react_header").variables
    tracer.run("2+2?")
    assert "Be brief." in llm.calls[0]["messages"][0][1]
    agent.system_prompt = "Edited directly."
    tracer.run("2+2?")
    assert "Edited directly." not in llm.calls[1]["messages"][0][1]
    agent.system_prompt = "Be brief."
    apply_updates({system: "Be very brief. Use tools."})
    llm.load(["Thought: done.\nAnswer: 4"])
    tracer.run("2+2?")
    sent = llm.calls[2]["messages"][0][1]
    assert "Be very brief. Use tools." in sent and "Be brief." not in sent


def test_tools_with_one_name_in_two_agents_get_readable_distinct_names():
    def search_web(q: str) -> str:
        """Search the web."""
        return q

    def search_docs(q: str) -> str:
        """Search the docs."""
        return q

    web = FunctionAgent(
        name="web",
        description="web",
        tools=[FunctionTool.from_defaults(search_web, name="search")],
        llm=ScriptedToolLLM(["ok"]),
        system_prompt="Search the web.",
    )
    docs = FunctionAgent(
        name="docs",
        description="docs",
        tools=[FunctionTool.from_defaults(search_docs, name="search")],
        llm=ScriptedToolLLM(["ok"]),
        system_prompt="Search the docs.",
    )
    found = discover(AgentWorkflow(agents=[web, docs], root_agent="web"))
    values = {p.name: p.value for p in found.parameters}
    assert values["tool.search"] == web.tools[0].metadata.description
    assert values["agent.docs.tool.search"] == docs.tools[0].metadata.description
    assert "Search the docs." in values["agent.docs.tool.search"]
    assert values["agent.web.system_prompt"] == "Search the web."


async def test_a_function_agent_sends_each_tool_description_from_the_tool_itself():
    tool = FunctionTool.from_defaults(add)
    llm = ScriptedToolLLM(["ok", "ok"])
    agent = FunctionAgent(tools=[tool], llm=llm)
    [desc] = [p for p in discover(agent).parameters if p.name == "tool.add"]
    apply_updates({desc: "Adds a and b exactly."})
    await agent.run(user_msg="1+2?")
    assert tool_description(llm.calls[-1], "add") == "Adds a and b exactly."


# -- add_parameter ------------------------------------------------------------------------------


def test_add_parameter_links_an_object_or_a_span_name(index, tracers, caplog):
    llm = RecordingLLM()
    engine = index.as_query_engine(llm=llm, similarity_top_k=1)
    tracer = OptoTracer(engine)
    tracers.append(tracer)
    retriever = engine.retriever
    box = {"k": 2}
    k = Parameter(name="my.k", kind="number", value=2)
    assert tracer.add_parameter(k, used_by=retriever) is k
    found = tracer._discovery
    assert found.by_instance[id(retriever)] == [("k", k)]
    assert found.linked[id(retriever)] is retriever
    style = Parameter(name="style", value="Use bullet points.")
    tracer.add_parameter(style, used_by="RetrieverQueryEngine.query")
    tone_rule = Parameter(name="tone_rule", value="Be kind.")
    tracer.add_parameter(tone_rule, used_by=engine.query)  # a bound method: its span name
    assert found.by_span_name["RetrieverQueryEngine.query"] == [
        ("style", style),
        ("tone_rule", tone_rule),
    ]
    assert tracer.parameter("style") is style and k in tracer.parameters

    other_llm = RecordingLLM()
    tracer.add_parameter(Parameter(name="temperature", value=0.5, kind="number"), used_by=other_llm)
    assert id(other_llm) in found.by_instance and id(other_llm) not in found.components

    with pytest.raises(TypeError, match="name of its span"):
        tracer.add_parameter(Parameter(name="bad", value="x"), used_by=box)
    with pytest.raises(KeyError):
        tracer.parameter("bad")  # a refused link adds nothing
    with pytest.raises(ValueError):
        tracer.add_parameter(Parameter(name="style", value="again"), used_by=retriever)
    assert found.by_instance[id(retriever)] == [("k", k)]  # nor does a refused name

    with caplog.at_level(logging.WARNING, logger="opto_adapters.llama_index"):
        tone = tracer.add_parameter(Parameter(name="tone", value="Be formal."))
        tracer.add_parameter(Parameter(name="n", value=3, kind="number"))
    messages = [r.getMessage() for r in caplog.records]
    assert any("'tone'" in m and "contains its text" in m for m in messages)
    assert any("'n'" in m and "no feedback" in m for m in messages)
    [t] = [t for t in found.trainables if t.parameter is tone]
    assert t.match == "contains" and id(engine) in t.owners
    assert not [t for t in found.trainables if t.parameter.name == "n"]


async def test_add_parameter_to_a_workflow_step_by_span_name(tracers):
    llm = RecordingLLM(reply="ok")

    class StepFlow(Workflow):
        @step
        async def go(self, ev: StartEvent) -> StopEvent:
            return StopEvent(result=str(await llm.acomplete(ev.user_msg)))

    flow = StepFlow()
    tracer = OptoTracer(flow)
    tracers.append(tracer)
    p = tracer.add_parameter(Parameter(name="rules", value="x"), used_by=StepFlow.go)
    tracer.add_parameter(Parameter(name="whole", value="y"), used_by=flow)
    span_name = StepFlow.go.__qualname__  # ...<locals>.StepFlow.go: the class is local
    assert tracer._discovery.by_span_name == {span_name: [("rules", p)]}
    assert id(flow) in tracer._discovery.by_instance

    # a step's spans are named after its function's __qualname__, the run after Class.run
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler

    handler = SimpleSpanHandler()
    get_dispatcher().add_span_handler(handler)
    try:
        await flow.run(user_msg="hi")
    finally:
        get_dispatcher().span_handlers.remove(handler)
    names = {span.id_.rsplit("-", 5)[0] for span in handler.completed_spans}
    assert {span_name, "StepFlow.run"} <= names


def test_an_agent_subclass_with_its_own_step_keeps_one_system_prompt():
    extra = PromptTemplate("Check the answer: {answer}")

    class CheckedAgent(FunctionAgent):
        @step
        async def check(self, ev: StopEvent) -> StopEvent:  # never reached; only read
            return StopEvent(result=extra.format(answer=ev.result))

    agent = CheckedAgent(tools=[add], llm=ScriptedToolLLM(["ok"]), system_prompt="You add.")
    names = [p.name for p in discover(agent).parameters]
    assert names.count("agent.system_prompt") == 1 and "agent.system_prompt_2" not in names
    assert "agent.extra" in names


def test_a_router_choice_with_a_multi_line_description_is_in_the_graph(index, tracers):
    """The selector joins a description's lines before the LLM sees it; the graph still
    finds each description, so feedback on the selection reaches it."""
    llm = RecordingLLM(reply=selector_reply())
    colors, geo = engines(index, llm)
    router = RouterQueryEngine(
        selector=LLMSingleSelector.from_defaults(llm=llm), query_engine_tools=[colors, geo], llm=llm
    )
    tracer = OptoTracer(router)
    tracers.append(tracer)
    graph = tracer.run("What color is the sky?").graph
    assert COLORS not in llm.prompts[0] and "\n" in COLORS  # joined, not as written
    assert {"tool.colors", "tool.geo", "selector.prompt"} <= {p.name for p in graph.parameters}
