"""OptoTracer: each finished root run becomes the OPTO graph a reader would draw."""

from __future__ import annotations

import itertools
import logging

import pytest
from langchain_core.language_models import FakeListLLM, GenericFakeChatModel
from langchain_core.messages import AIMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough
from langchain_core.tools import tool
from langchain_core.vectorstores import InMemoryVectorStore

from opto_adapters.langchain import OptoTracer
from opto_adapters.trace import ExceptionNode, Parameter
from tests.langchain_fakes import KeywordEmbedding, RecordingChatModel, tool_call

DOCS = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "Rome is in Italy."]


def qa_prompt() -> ChatPromptTemplate:
    return ChatPromptTemplate.from_messages(
        [("system", "You answer questions about {topic}."), ("human", "{question}")]
    )


@tool
def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return f"sunny in {city}"


def ops(graph) -> dict[str, str]:
    names = graph.names()
    return {names[id(n)]: n.op.name for n in graph.nodes if n.op is not None}


def test_prompt_model_parser_chain():
    chain = qa_prompt() | RecordingChatModel(responses=["Because."]) | StrOutputParser()
    tracer = OptoTracer(chain)
    out = chain.invoke(
        {"topic": "physics", "question": "Why is the sky blue?"}, config={"callbacks": [tracer]}
    )

    graph = tracer.last_graph
    assert out == "Because."
    assert [p.name for p in graph.parameters] == ["prompt.system", "prompt.human"]
    assert graph.edges() == [
        ("prompt.system", "system", "prompt"),
        ("prompt.human", "human", "prompt"),
        ("input.topic", "topic", "prompt"),
        ("input.question", "question", "prompt"),
        ("prompt", "messages", "model"),
        ("model", "input", "str_output_parser"),
    ]
    assert ops(graph) == {
        "prompt": "ChatPromptTemplate",
        "model": "RecordingChatModel",
        "str_output_parser": "StrOutputParser",
    }
    # values are readable text, not reprs
    by_name = {graph.names()[id(n)]: n for n in graph.nodes}
    assert (
        by_name["prompt"].value
        == "system: You answer questions about physics.\nhuman: Why is the sky blue?"
    )
    assert by_name["model"].value == "Because."
    assert graph.output.value == "Because."
    assert graph.metadata["run_type"] == "chain"


def test_rag_chain_with_parallel_retriever_and_passthrough():
    store = InMemoryVectorStore(
        KeywordEmbedding(["paris", "berlin", "rome", "france", "germany", "italy", "capital"])
    )
    store.add_texts(DOCS)
    retriever = store.as_retriever(search_kwargs={"k": 1})

    def format_docs(docs):
        return "\n\n".join(d.page_content for d in docs)

    prompt = ChatPromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")
    model = RecordingChatModel(responses=["Paris."])
    rag = (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | prompt
        | model
        | StrOutputParser()
    )
    tracer = OptoTracer(rag)
    rag.invoke("What is the capital of France? Paris?", config={"callbacks": [tracer]})

    graph = tracer.last_graph
    edges = graph.edges()
    # both parallel branches start from the same input; the passthrough adds no node
    assert ("input", "query", "retriever") in edges
    assert ("retriever", "input", "format_docs") in edges
    assert ("format_docs", "context", "prompt") in edges
    assert ("input", "question", "prompt") in edges
    assert ("prompt.human", "human", "prompt") in edges
    assert ("prompt", "messages", "model") in edges
    by_name = {graph.names()[id(n)]: n for n in graph.nodes}
    assert (
        by_name["retriever"].value == "Paris is the capital of France."
    )  # page_content, not a repr
    assert "RunnablePassthrough" not in {n.op.name for n in graph.nodes if n.op}


def test_bound_tool_is_a_model_input_and_the_tool_output_follows_the_model():
    model = RecordingChatModel(responses=[tool_call("get_weather", city="Paris")])

    def run_tools(message):
        return [get_weather.invoke(call) for call in message.tool_calls]

    chain = qa_prompt() | model.bind_tools([get_weather]) | RunnableLambda(run_tools)
    tracer = OptoTracer(chain)
    chain.invoke(
        {"topic": "weather", "question": "Weather in Paris?"}, config={"callbacks": [tracer]}
    )

    graph = tracer.last_graph
    assert "tool.get_weather" in [p.name for p in graph.parameters]
    edges = graph.edges()
    assert ("tool.get_weather", "tool:get_weather", "model") in edges
    assert ("model", "city", "get_weather") in edges  # the model chose the argument
    assert graph.output.op.name == "get_weather"
    assert graph.output.value == "sunny in Paris"


def test_create_agent_loop_tool_output_feeds_next_model_call():
    from langchain.agents import create_agent

    model = RecordingChatModel(
        responses=[tool_call("get_weather", city="Paris"), "It is sunny in Paris."]
    )
    agent = create_agent(
        model, [get_weather], system_prompt=SystemMessage("You are a weather bot.")
    )
    tracer = OptoTracer(agent)
    traced = tracer.run({"messages": [{"role": "user", "content": "Weather in Paris?"}]})

    assert traced.error is None
    graph = traced.graph
    assert sorted(p.name for p in graph.parameters) == ["agent.system_prompt", "tool.get_weather"]
    edges = graph.edges()
    # first call: system prompt, user message, tool description
    assert ("agent.system_prompt", "system", "model") in edges
    assert ("input.messages", "human", "model") in edges
    assert ("tool.get_weather", "tool:get_weather", "model") in edges
    # the tool runs on the first call's arguments; its output feeds the second call
    assert ("model", "city", "get_weather") in edges
    assert ("get_weather", "tool", "model1") in edges
    # the second call resends the conversation: linked to the call before it, plus what is new
    assert ("model", "history", "model1") in edges
    assert ("agent.system_prompt", "system", "model1") in edges
    # the final state is made of all the messages
    assert graph.output.op.name == "LangGraph"
    assert "It is sunny in Paris." in graph.output.value["messages"]


def test_prompt_template_completion_chain():
    chain = PromptTemplate.from_template("Q: {q}\nA:") | FakeListLLM(responses=["42"])
    tracer = OptoTracer(chain)
    chain.invoke({"q": "meaning of life"}, config={"callbacks": [tracer]})
    graph = tracer.last_graph
    assert graph.edges() == [
        ("prompt.template", "template", "prompt"),
        ("input.q", "q", "prompt"),
        ("prompt", "prompt", "model"),
    ]
    assert graph.output.value == "42"
    assert ops(graph)["model"] == "FakeListLLM"


def test_exception_in_a_step_is_the_output_and_takes_feedback():
    def check(answer: str) -> str:
        raise ValueError(f"not a number: {answer!r}")

    chain = (
        qa_prompt()
        | RecordingChatModel(responses=["many"])
        | StrOutputParser()
        | RunnableLambda(check)
    )
    tracer = OptoTracer(chain)
    traced = tracer.run({"topic": "math", "question": "How many?"})

    assert isinstance(traced.error, ValueError)
    out = traced.graph.output
    assert isinstance(out, ExceptionNode)
    assert out.exception is traced.error  # the real exception object, not a string
    assert out.op.name == "check"
    assert "check" in out.traceback
    assert ("str_output_parser", "input", "check") in traced.graph.edges()
    out.backward("Answer with digits only.")
    system = tracer.parameter("prompt.system")
    assert (
        len(system.feedback) == 1 and str(system.feedback[0].feedback) == "Answer with digits only."
    )
    assert out in system.feedback[0].nodes


def test_error_inside_the_model_call():
    class Broken(RecordingChatModel):
        def _generate(self, *args, **kwargs):
            raise RuntimeError("provider down")

    chain = qa_prompt() | Broken() | StrOutputParser()
    traced = OptoTracer(chain).run({"topic": "x", "question": "y"})
    out = traced.graph.output
    assert isinstance(out, ExceptionNode) and str(out.exception) == "provider down"
    assert out.name == "model" and ("prompt", "messages", "model") in traced.graph.edges()


def test_streaming_builds_the_same_graph_as_invoke():
    chain = (
        qa_prompt()
        | GenericFakeChatModel(messages=itertools.cycle([AIMessage("Blue light scatters more.")]))
        | StrOutputParser()
    )
    tracer = OptoTracer(chain)
    chunks = list(
        chain.stream({"topic": "physics", "question": "Why blue?"}, config={"callbacks": [tracer]})
    )
    assert len(chunks) > 1
    streamed = tracer.last_graph
    chain.invoke({"topic": "physics", "question": "Why blue?"}, config={"callbacks": [tracer]})
    invoked = tracer.last_graph
    assert streamed is not invoked
    assert streamed.edges() == invoked.edges()
    assert streamed.output.value == "Blue light scatters more."
    by_name = {streamed.names()[id(n)]: n for n in streamed.nodes}
    assert by_name["model"].value == "Blue light scatters more."


def test_parallel_output_and_nested_chain_in_a_lambda():
    inner = PromptTemplate.from_template("Summarize: {text}") | FakeListLLM(responses=["short"])

    def summarize(text: str) -> str:
        return inner.invoke({"text": text}).upper()

    chain = RunnableParallel(summary=RunnableLambda(summarize), original=RunnablePassthrough())
    tracer = OptoTracer(chain)
    out = chain.invoke("a long text", config={"callbacks": [tracer]})
    assert out == {"summary": "SHORT", "original": "a long text"}

    graph = tracer.last_graph
    # found through the function's globals, and linked by the prompt's stamp
    assert [p.name for p in tracer.parameters] == ["prompt.template"]
    edges = graph.edges()
    assert ("prompt.template", "template", "prompt") in edges
    assert ("input", "text", "prompt") in edges
    assert ("prompt", "prompt", "model") in edges
    # the function changed the value, so it stays in the graph as a step
    assert ("model", "input", "summarize") in edges
    assert graph.output.op.name == "RunnableParallel"
    assert ("summarize", "summary", "runnable_parallel") in edges
    assert ("input", "original", "runnable_parallel") in edges


def test_user_parameter_used_by_a_retriever():
    store = InMemoryVectorStore(KeywordEmbedding(["paris", "berlin", "rome"]))
    store.add_texts(DOCS)
    retriever = store.as_retriever(search_kwargs={"k": 1})
    chain = retriever | (lambda docs: " ".join(d.page_content for d in docs))
    tracer = OptoTracer(chain)
    from opto_adapters.trace import Binding

    k = tracer.add_parameter(
        Parameter(
            name="retriever_k",
            kind="number",
            bounds=(1, 3),
            binding=Binding(
                lambda: retriever.search_kwargs["k"],
                lambda v: retriever.search_kwargs.__setitem__("k", v),
            ),
        ),
        used_by=retriever,
    )
    chain.invoke("paris", config={"callbacks": [tracer]})
    assert ("retriever_k", "retriever_k", "retriever") in tracer.last_graph.edges()
    k.set(2)
    out = chain.invoke("paris", config={"callbacks": [tracer]})
    assert out.count("capital") + out.count("Italy") == 2  # two documents now
    with pytest.raises(TypeError, match="used_by"):
        tracer.add_parameter(
            Parameter(1, name="other", kind="number"), used_by=RunnableLambda(lambda x: x)
        )


def test_graph_for_run_id_and_bounded_history():
    chain = qa_prompt() | RecordingChatModel() | StrOutputParser()
    tracer = OptoTracer(chain, max_graphs=3)
    ids = []
    for i in range(5):
        traced = tracer.run({"topic": "t", "question": f"q{i}"})
        ids.append(traced.graph.metadata["run_id"])
    assert len(tracer.graphs) == 3
    assert tracer.graph(ids[-1]) is tracer.last_graph
    graph = tracer.graph(ids[2])
    assert {graph.names()[id(n)]: n.value for n in graph.nodes}["input.question"] == "q2"
    with pytest.raises(KeyError, match="older than the last 3"):
        tracer.graph(ids[0])


def test_fallbacks_the_model_that_answered_is_in_the_graph():
    class Down(RecordingChatModel):
        def _generate(self, *args, **kwargs):
            raise RuntimeError("rate limited")

    backup = RecordingChatModel(responses=["fine"])
    chain = qa_prompt() | Down().with_fallbacks([backup]) | StrOutputParser()
    traced = OptoTracer(chain).run({"topic": "t", "question": "q"})
    assert traced.output == "fine"
    # langchain-core 1.8.3 reports the attempts beside the fallbacks run (langchain#36072);
    # either way the answer comes from the backup model, fed by the prompt
    graph = traced.graph
    edges = graph.edges()
    assert ("prompt", "messages", "model") in edges
    assert ("model", "input", "runnable_with_fallbacks") in edges
    assert edges[-1] == ("runnable_with_fallbacks", "input", "str_output_parser")
    assert graph.output.value == "fine"
    # the failed attempt is a model call too: in the graph, as the error it raised
    failed = [n for n in graph.nodes if isinstance(n, ExceptionNode)]
    assert [str(n.exception) for n in failed] == ["rate limited"]
    assert ("prompt", "messages", graph.names()[id(failed[0])]) in edges
    assert graph.links[(id(graph.output.inputs["input"]), "error")] == "structure"


def test_assign_and_with_config():
    model = RecordingChatModel(responses=["draft", "grade: B"])
    draft = qa_prompt() | model | StrOutputParser()
    grade = ChatPromptTemplate.from_template("Question: {question}\nAnswer: {answer}\nGrade it.")
    chain = (RunnablePassthrough.assign(answer=draft) | grade | model).with_config(
        run_name="grader"
    )
    tracer = OptoTracer(chain)
    chain.with_config(callbacks=[tracer]).invoke({"topic": "t", "question": "why?"})
    graph = tracer.last_graph
    assert graph.metadata["name"] == "grader"
    edges = graph.edges()
    # the assigned key comes from the first chain's parser
    assert ("str_output_parser", "answer", "prompt1") in edges
    assert ("input.question", "question", "prompt1") in edges
    assert ("step2.prompt.human", "human", "prompt1") in edges
    assert graph.output.value == "grade: B"


def test_prompt_inside_a_tool_function_is_discovered():
    from langchain.agents import create_agent

    expert = qa_prompt() | RecordingChatModel(responses=["expert answer"]) | StrOutputParser()

    @tool
    def ask_expert(question: str) -> str:
        """Ask a human expert."""
        return expert.invoke({"topic": "anything", "question": question})

    model = RecordingChatModel(responses=[tool_call("ask_expert", question="hard one"), "done"])
    agent = create_agent(model, [ask_expert], system_prompt="Delegate hard questions.")
    tracer = OptoTracer(agent)
    assert sorted(p.name for p in tracer.parameters) == [
        "agent.system_prompt",
        "prompt.human",
        "prompt.system",
        "tool.ask_expert",
    ]
    graph = tracer.run({"messages": [("user", "hard one?")]}).graph
    edges = graph.edges()
    assert ("model", "question", "prompt") in edges  # the tool's argument fills the expert prompt
    assert ("model", "question", "ask_expert") in edges
    assert ("model1", "result", "ask_expert") in edges
    assert ("ask_expert", "tool", "model2") in edges


def test_custom_langgraph_state_graph():
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict):
        question: str
        answer: str

    qa = qa_prompt() | RecordingChatModel(responses=["paris"]) | StrOutputParser()

    def answer(state: State) -> dict:
        return {"answer": qa.invoke({"topic": "geography", "question": state["question"]})}

    def polish(state: State) -> dict:
        return {"answer": state["answer"].capitalize() + "."}

    builder = StateGraph(State)
    builder.add_node("answer", answer)
    builder.add_node("polish", polish)
    builder.add_edge(START, "answer")
    builder.add_edge("answer", "polish")
    builder.add_edge("polish", END)
    app = builder.compile()

    tracer = OptoTracer(app)
    assert [p.name for p in tracer.parameters] == ["prompt.system", "prompt.human"]
    traced = tracer.run({"question": "Capital of France?"})
    assert traced.output["answer"] == "Paris."
    edges = traced.graph.edges()
    assert ("input.question", "question", "prompt") in edges
    assert ("str_output_parser", "answer", "polish") in edges
    assert ("polish", "answer", "agent") in edges


def test_values_are_plain_text_for_the_optimizer():
    from opto_adapters.trace import render

    chain = qa_prompt() | RecordingChatModel(responses=["Because."]) | StrOutputParser()
    tracer = OptoTracer(chain)
    graph = tracer.run({"topic": "physics", "question": "Why?"}).graph
    assert type(graph.output.value) is str  # not the parser's str subclass
    problem = str(render([graph.output.backward("Explain more.")], tracer.parameters))
    assert "(str) str_output_parser=Because." in problem
    assert (
        "prompt = ChatPromptTemplate(system=prompt.system, human=prompt.human, topic=input.topic, question=input.question)"
        in problem
    )
    assert "must keep the template variables {topic}" in problem


def test_graph_metadata_carries_the_run_config():
    chain = qa_prompt() | RecordingChatModel() | StrOutputParser()
    traced = OptoTracer(chain).run(
        {"topic": "t", "question": "q"}, config={"metadata": {"example_id": 7}, "tags": ["eval"]}
    )
    meta = traced.graph.metadata
    assert meta["metadata"] == {"example_id": 7} and meta["tags"] == ["eval"]
    assert meta["run_id"] and meta["name"] == "RunnableSequence"


def test_long_framework_names_still_give_a_graph_with_valid_names():
    """Run, prompt, tool, key and function names longer than a node name may be (128) are cut,
    so the graph is still recorded (a too-long name used to make Node() raise and drop it)."""
    from langchain_core.tools import StructuredTool

    from opto_adapters.trace.names import check_name

    long_tool = StructuredTool.from_function(
        lambda city: f"sunny in {city}", name="t" * 200, description="Weather for a city."
    )
    prompt = qa_prompt().with_config(run_name="p" * 200)
    prompt.bound.name = "q" * 200  # the prompt's own name labels its node and parameters
    model = RecordingChatModel(responses=[tool_call("t" * 200, city="Paris")])

    def run_tools(message):
        return [long_tool.invoke(call) for call in message.tool_calls]

    chain = (
        prompt
        | model.bind_tools([long_tool])
        | RunnableLambda(run_tools)
        | RunnableLambda(lambda out: out[0].content.upper()).with_config(run_name="n" * 200)
    )
    # a second prompt with the same long label: the names get the (cut) keys as prefixes,
    # are cut to 100 characters, and the ones that became equal are numbered
    other = qa_prompt()
    other.name = "q" * 200
    app = RunnableParallel(
        {"k" * 150 + "a": chain, "j" * 150: other | RecordingChatModel(), "plain": qa_prompt()}
    ).with_config(run_name="r" * 200)
    tracer = OptoTracer(app)
    names = [p.name for p in tracer.parameters]
    k, j, q = "k" * 64, "j" * 64, "q" * 35
    assert names == [
        f"{k}.{q}",
        f"{k}.{q}_2",
        "tool." + "t" * 64,
        f"{j}.{q}",
        f"{j}.{q}_2",
        "prompt.system",
        "prompt.human",
    ]
    assert all(check_name(n) for n in names)

    traced = tracer.run({"topic": "weather", "question": "Paris?"})
    assert traced.error is None and traced.output[("k" * 150) + "a"] == "SUNNY IN PARIS"
    graph = traced.graph
    assert graph is not None
    node_names = [n.name for n in graph.nodes]
    assert all(check_name(n) for n in node_names)
    assert "n" * 100 in node_names and "t" * 100 in node_names and "q" * 64 in node_names
    assert graph.output.name == "r" * 100  # the root (its output is made of three branches)
    assert len(graph.parameters) == 7


def test_long_names_of_a_function_step_and_of_its_error():
    inner = PromptTemplate.from_template("Summarize: {text}") | FakeListLLM(responses=["short"])

    def summarize(text: str) -> str:
        return inner.invoke({"text": text}).upper()

    def check(text: str) -> str:
        inner.invoke({"text": text})
        raise ValueError("too short")

    ok = RunnableLambda(summarize).with_config(run_name="s" * 200)
    traced = OptoTracer(ok).run("a long text")
    assert traced.output == "SHORT"
    assert traced.graph.output.name == "s" * 100 and traced.graph.output.op.name == "s" * 200

    failing = RunnableLambda(check).with_config(run_name="e" * 200)
    traced = OptoTracer(failing).run("a long text")
    assert isinstance(traced.error, ValueError)
    assert isinstance(traced.graph.output, ExceptionNode)
    assert traced.graph.output.name == "e" * 100


def test_a_step_fed_from_outside_the_run_is_warned_about_once_and_kept(caplog):
    """Text that no step of the run produced (here: a cache another run filled) breaks the
    trail: the tracer says which step, once, and keeps the step fed by what ran before it."""
    cache = {"draft": "a draft written by an earlier, separate run"}
    model = RecordingChatModel(responses=["polished"])
    polish = ChatPromptTemplate.from_template("Polish this: {draft}") | model | StrOutputParser()

    def from_cache(topic: str) -> str:
        return polish.invoke({"draft": cache["draft"]})

    chain = RunnableLambda(lambda q: q.strip()) | RunnableLambda(from_cache)
    tracer = OptoTracer(chain)
    with caplog.at_level(logging.WARNING, logger="opto_adapters.langchain"):
        for _ in range(3):
            graph = tracer.run(" cats ").graph
    warnings = [r.getMessage() for r in caplog.records if "could not be linked" in r.getMessage()]
    assert len(warnings) == 1 and "'ChatPromptTemplate'" in warnings[0]
    prompt = next(n for n in graph.nodes if n.op is not None and n.op.kind == "prompt")
    assert prompt.inputs["draft"].value == cache["draft"]  # shown as an input from outside
    assert graph.links[(id(prompt), "input")] == "structure"  # fed by the step before it
    assert sum(1 for n in graph.nodes if n.op is not None and n.op.kind == "llm") == 1


def test_a_graph_built_later_shows_the_run_as_it_was():
    """Graphs are built when first asked for: the app's later changes to the lists and dicts
    its runs held (a message history, a state dict) must not reach the graph."""
    from langchain_core.messages import HumanMessage

    history = [HumanMessage("hi")]
    state = {"messages": history, "notes": {"k": "v"}}
    chain = RunnableLambda(lambda s: s) | RunnableLambda(
        lambda s: s["notes"]["k"] + str(len(s["messages"])), name="count"
    )
    tracer = OptoTracer(chain)
    assert chain.invoke(state, config={"callbacks": [tracer]}) == "v1"
    history.append(AIMessage("later"))  # the app goes on with the objects of the run
    state["notes"]["k"] = "changed"
    state["extra"] = 1

    graph = tracer.last_graph
    values = {graph.names()[id(n)]: n.value for n in graph.nodes}
    assert values["input.messages"] == "human: hi"
    assert values["input.notes"] == {"k": "v"}
    assert "input.extra" not in values
    assert values["runnable_lambda"] == {"messages": "human: hi", "notes": {"k": "v"}}
    assert values["count"] == "v1"


def test_a_graph_built_later_has_the_parameters_of_its_run():
    chain = qa_prompt() | RecordingChatModel(responses=["a", "b"]) | StrOutputParser()
    tracer = OptoTracer(chain)
    first = chain.invoke({"topic": "t", "question": "q"}, config={"callbacks": [tracer]})
    tracer.add_parameter(Parameter(3, name="k", kind="number"), used_by="StrOutputParser")
    chain.invoke({"topic": "t", "question": "q"}, config={"callbacks": [tracer]})
    old, new = tracer.graphs  # both built now
    assert first == "a"
    assert "k" not in [p.name for p in old.parameters]
    assert "k" in [p.name for p in new.parameters]
