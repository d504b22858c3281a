"""LangChain graphs are built when first read: ``tracer.run(...)`` hands the graph over
unbuilt, and a run's graph shows the prompt text that run used."""

from __future__ import annotations

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from opto_adapters.langchain import OptoTracer
from opto_adapters.trace import Graph
from tests.langchain_fakes import RecordingChatModel


def make_chain():
    prompt = ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "{question}")])
    return prompt | RecordingChatModel(responses=["Paris."]) | StrOutputParser()


def test_a_traced_runs_graph_is_built_on_first_read(monkeypatch):
    tracer = OptoTracer(make_chain(), max_graphs=1)
    translated: list[object] = []
    translate = tracer._translate
    monkeypatch.setattr(tracer, "_translate", lambda run, *a: translated.append(run) or translate(run, *a))
    first = tracer.run({"question": "Capital of France?"})
    second = tracer.run({"question": "Capital of Peru?"})
    assert first.output == "Paris." and translated == []  # two runs, none translated
    graph = first.graph  # no longer kept by the tracer (max_graphs=1): built from its own record
    assert isinstance(graph, Graph) and len(translated) == 1 and first.graph is graph
    assert second.graph is tracer.last_graph and len(translated) == 2


def test_a_graph_read_after_the_prompt_changed_shows_the_text_the_run_used():
    tracer = OptoTracer(make_chain())
    [system] = [p for p in tracer.parameters if p.name.endswith("system")]
    run = tracer.run({"question": "Capital of France?"})
    system.value = "Answer with one word."
    assert run.graph.value_of(system) == "Be brief."
    assert tracer.run({"question": "Capital of France?"}).graph.value_of(system) == "Answer with one word."
