"""LlamaIndex app shapes a new user builds: every LLM call is in the run's graph, every
prompt the LLM saw is a parameter of that graph, and an OptoPrime step on feedback about the
step reaches the next run (issue 10).

Each test: run the app through ``OptoTracer``; ``check_run`` (tests/invariants.py); the
parameters the shape must expose are in ``graph.parameters``; one OptoPrime step through the
scripted server shows the parameter in ``#Variables`` and the next run sends its new text; the
graph recorded before the step still shows the old text; no ``opto_adapters`` warning.
Also: odd starting texts do not break construction, a user's own parameter tied to a
retriever is in the graph, and the same things get the same names in both adapters.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging

import pytest

from opto_adapters.llama_index import OptoTracer
from opto_adapters.trace import Binding, Parameter
from tests import shapes_llama_index as shapes
from tests.invariants import (
    ModelCall,
    assert_ancestor,
    assert_in_graph,
    check_run,
    check_step,
    llm_node_of,
    nodes_of_kind,
    normalize,
    opto_warnings,
    param_holding,
    value_texts,
)


@pytest.fixture
def log(caplog):
    caplog.set_level(logging.WARNING, logger="opto_adapters")
    return caplog


@pytest.fixture
def tracers():
    """Make tracers that are closed after the test (LlamaIndex's dispatcher is global)."""
    made: list[OptoTracer] = []

    def make(target, **kwargs) -> OptoTracer:
        tracer = OptoTracer(target, **kwargs)
        made.append(tracer)
        return tracer

    yield make
    for tracer in made:
        tracer.close()


def traced(app: shapes.App, tracer: OptoTracer) -> tuple[object, list[ModelCall]]:
    start = app.llm.call_count
    run = tracer.run(app.input)
    assert run.error is None, f"the app failed: {run.error!r}"
    return run.graph, app.calls(start)


async def atraced(app: shapes.App, tracer: OptoTracer) -> tuple[object, list[ModelCall]]:
    start = app.llm.call_count
    run = await tracer.arun(app.input)
    assert run.error is None, f"the app failed: {run.error!r}"
    return run.graph, app.calls(start)


def run_workflow(workflow, **kwargs) -> object:
    """Run a workflow (or agent) to its end from sync code: ``workflow.run`` needs a running
    event loop to start."""

    async def go() -> object:
        return await workflow.run(**kwargs)

    return asyncio.run(go())


def no_warnings(log) -> None:
    found = opto_warnings(log)
    assert not found, f"opto_adapters logged warnings: {found}"


def named(tracer: OptoTracer, name: str) -> Parameter:
    names = [p.name for p in tracer.parameters]
    assert name in names, f"no parameter named {name!r}; the tracer's parameters are {names}"
    return next(p for p in tracer.parameters if p.name == name)


def matching(tracer: OptoTracer, pattern: str, graph=None) -> Parameter:
    """The one parameter matching ``pattern`` (among those in ``graph`` when given)."""
    pool = tracer.parameters
    if graph is not None:
        used = {p.name for p in graph.parameters}
        pool = [p for p in pool if p.name in used]
    found = [p for p in pool if fnmatch.fnmatchcase(p.name, pattern)]
    assert len(found) == 1, (
        f"expected one parameter matching {pattern!r}, found {[p.name for p in found]}; "
        f"the tracer's parameters are {[p.name for p in tracer.parameters]}"
    )
    return found[0]


# -- I1 ---------------------------------------------------------------------------------------


def test_router_exposes_both_tool_descriptions_and_the_chosen_engines_template(
    tracers, scripted_llm, log
):
    app = shapes.router()
    tracer = tracers(app.target)
    graph, calls = traced(app, tracer)
    assert len(calls) == 2  # the selector, then the dogs engine
    assert shapes.DOGS_TOOL in calls[0].received and "dog expert" in calls[1].received

    check_run(tracer, graph, calls)
    cats_tool, dogs_tool = named(tracer, "tool.cats"), named(tracer, "tool.dogs")
    assert (cats_tool.value, dogs_tool.value) == (shapes.CATS_TOOL, shapes.DOGS_TOOL)
    dogs_qa = param_holding(tracer, "You are the dog expert of the shelter.")
    assert_in_graph(graph, cats_tool, dogs_tool, dogs_qa)
    assert_ancestor(graph, dogs_tool, llm_node_of(graph, calls[0]), "the selector reads the tools")

    def rerun() -> list[ModelCall]:
        start = app.llm.call_count
        app.target.query(app.input)
        return app.calls(start)

    changes = {dogs_tool: " Also walks.", dogs_qa: "\nKeep it to one sentence."}
    check_step(tracer, graph, changes, scripted_llm, rerun)
    no_warnings(log)


# -- I2 ---------------------------------------------------------------------------------------


def test_sub_questions_link_to_their_generator_and_the_synthesis_to_the_answers(
    tracers, scripted_llm, log
):
    app = shapes.sub_questions()
    tracer = tracers(app.target)
    graph, calls = traced(app, tracer)
    assert len(calls) == 4  # question generation, cats, dogs, synthesis
    assert "<User Question>" in calls[0].received and "Sub question:" in calls[3].received

    check_run(tracer, graph, calls)
    generate, cats, dogs, synthesis = (llm_node_of(graph, c) for c in calls)
    for answer in (cats, dogs):
        assert_ancestor(graph, generate, answer, "a sub-question comes from the question generator")
        assert_ancestor(graph, answer, synthesis, "the synthesis reads each sub-answer")
    question_gen = matching(tracer, "*question_gen*")
    assert_in_graph(graph, question_gen)

    def rerun() -> list[ModelCall]:
        start = app.llm.call_count
        app.target.query(app.input)
        return app.calls(start)

    check_step(
        tracer, graph, {question_gen: "\nAsk at most two sub-questions."}, scripted_llm, rerun
    )
    no_warnings(log)


# -- I3 ---------------------------------------------------------------------------------------


@pytest.fixture
def module_templates():
    """The module-level templates of the essay workflow, restored after the test."""
    saved = {
        "OUTLINE_PROMPT": (shapes.OUTLINE_PROMPT, shapes.OUTLINE_PROMPT.template),
        "DRAFT_PROMPT": (shapes.DRAFT_PROMPT, shapes.DRAFT_PROMPT.template),
    }
    yield
    for attr, (template, text) in saved.items():
        template.template = text
        setattr(shapes, attr, template)


def test_workflow_steps_with_module_level_templates(tracers, scripted_llm, log, module_templates):
    app = shapes.essay_workflow()
    tracer = tracers(app.target)

    def run() -> list[ModelCall]:
        start = app.llm.call_count
        run_workflow(app.target, **app.input)
        return app.calls(start)

    calls = run()
    graph = tracer.last_graph
    assert len(calls) == 2 and shapes.OUTLINE_REPLY in calls[1].received

    check_run(tracer, graph, calls)
    outline = param_holding(tracer, "Write a three point outline")
    draft = param_holding(tracer, "Turn this outline into one paragraph")
    assert_in_graph(graph, outline, draft)
    first, second = llm_node_of(graph, calls[0]), llm_node_of(graph, calls[1])
    assert_ancestor(graph, first, second, "the draft step reads the outline")

    check_step(tracer, graph, {outline: " Use short phrases."}, scripted_llm, run)
    no_warnings(log)


# -- I4 ---------------------------------------------------------------------------------------


def test_react_agent_tool_runs_sit_between_the_action_and_the_observation(
    tracers, scripted_llm, log
):
    app = shapes.react_agent()
    tracer = tracers(app.target)
    graph, calls = traced(app, tracer)  # tracer.run runs the agent workflow to its end
    assert len(calls) == 2 and "Observation:" in calls[1].received

    check_run(tracer, graph, calls)
    action, answer = llm_node_of(graph, calls[0]), llm_node_of(graph, calls[1])
    tools = nodes_of_kind(graph, "tool")
    assert len(tools) == 1, f"expected one tool node, found {len(tools)}\n{graph.to_text()}"
    assert_ancestor(graph, action, tools[0], "the tool runs what the action asked for")
    assert_ancestor(graph, tools[0], answer, "the next call reads the tool's observation")
    lookup = param_holding(tracer, shapes.LOOKUP_DESCRIPTION)
    assert_in_graph(graph, lookup, param_holding(tracer, shapes.GLOSSARY_SYSTEM))

    def rerun() -> list[ModelCall]:
        start = app.llm.call_count
        run_workflow(app.target, user_msg=app.input)
        return app.calls(start)

    check_step(tracer, graph, {lookup: " One term per call."}, scripted_llm, rerun)
    no_warnings(log)


# -- I5 ---------------------------------------------------------------------------------------


def test_streaming_query_graph_has_the_llm_call_once_the_stream_is_consumed(
    tracers, scripted_llm, log
):
    app = shapes.streaming_query_engine()
    tracer = tracers(app.target)

    def run() -> tuple[object, list[ModelCall], str]:
        start = app.llm.call_count
        response = app.target.query(app.input)
        text = "".join(response.response_gen)
        return tracer.last_graph, app.calls(start), text

    graph, calls, text = run()
    assert text == shapes.STREAMED_ANSWER and len(calls) == 1

    check_run(tracer, graph, calls)
    qa = matching(tracer, "*text_qa_template")
    assert qa.value.startswith("Context information is below.")
    assert_in_graph(graph, qa)
    out = [normalize(t) for t in value_texts(graph.output.value)]
    assert normalize(text) in out, (
        f"the graph's output is not the streamed text {text!r}: {graph.output.value!r}"
    )

    check_step(tracer, graph, {qa: "\nAnswer in one sentence."}, scripted_llm, lambda: run()[1])
    no_warnings(log)


# -- I6 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", shapes.ODD_CASES)
def test_odd_starting_texts_do_not_break_construction(case, tracers, log):
    target, text, where = shapes.odd_start(case)
    tracer = tracers(target)  # must not raise
    found = [
        p.name for p in tracer.parameters if p.value == text and fnmatch.fnmatchcase(p.name, where)
    ]
    assert found, (
        f"{case}: no parameter matching {where!r} holds the starting text "
        f"({len(text)} characters); the parameters: "
        f"{[(p.name, len(str(p.value))) for p in tracer.parameters]}"
    )


# -- I7 ---------------------------------------------------------------------------------------


def test_own_parameter_used_by_a_retriever_is_in_the_graph(tracers, log):
    app = shapes.query_engine()
    retriever = app.target.retriever
    tracer = tracers(app.target)
    top_k = Parameter(
        name="retriever.similarity_top_k",
        kind="number",
        bounds=(1, 5),
        description="How many chunks the retriever returns.",
        binding=Binding(
            get=lambda: retriever.similarity_top_k,
            set=lambda k: setattr(retriever, "similarity_top_k", k),
        ),
    )
    tracer.add_parameter(top_k, used_by=retriever)
    graph, calls = traced(app, tracer)

    check_run(tracer, graph, calls)
    assert_in_graph(graph, top_k)
    retrievals = nodes_of_kind(graph, "retriever")
    assert retrievals and any(any(p.name == top_k.name for p in r.parents) for r in retrievals), (
        f"{top_k.name} is not an input of the retriever's node\n{graph.to_text()}"
    )
    no_warnings(log)


# -- both adapters ----------------------------------------------------------------------------


def test_graph_recorded_before_a_step_keeps_the_values_of_its_run(tracers, scripted_llm):
    app = shapes.query_engine()
    tracer = tracers(app.target)
    graph, _ = traced(app, tracer)
    qa = matching(tracer, "*text_qa_template")
    old = qa.value
    before = graph.to_text(value_chars=10_000)
    node = next(p for p in graph.parameters if p.name == qa.name)

    def rerun() -> list[ModelCall]:
        start = app.llm.call_count
        app.target.query(app.input)
        return app.calls(start)

    check_step(tracer, graph, {qa: "\nAnswer in French."}, scripted_llm, rerun)
    assert qa.value.endswith("\nAnswer in French.")  # the live template changed
    # the node is the live parameter (feedback must reach it); the graph remembers its value
    assert graph.value_of(node) == old, (
        f"the graph's node for {qa.name!r} now reads {graph.value_of(node)!r}, not the text its run used"
    )
    assert graph.to_text(value_chars=10_000) == before


@pytest.mark.parametrize("agent", ["function_agent", "react_agent"])
def test_same_names_in_both_adapters(agent, tracers):
    from opto_adapters.langchain import OptoTracer as LangChainTracer
    from tests import shapes_langchain

    lc_app = shapes_langchain.agent_with_repeated_tool_arguments()
    lc = {p.name: p.value for p in LangChainTracer(lc_app.runnable).parameters}
    li_app = shapes.function_agent() if agent == "function_agent" else shapes.react_agent()
    li = {p.name: p.value for p in tracers(li_app.target).parameters}

    for name in ("tool.lookup", "agent.system_prompt"):
        assert name in lc, f"LangChain: no {name!r} in {sorted(lc)}"
        assert name in li, f"LlamaIndex ({agent}): no {name!r} in {sorted(li)}"
    assert shapes.LOOKUP_DESCRIPTION in li["tool.lookup"]
    assert li["agent.system_prompt"] == shapes.GLOSSARY_SYSTEM
