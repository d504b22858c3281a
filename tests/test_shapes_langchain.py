"""LangChain app shapes a new user builds: every model call is in the run's graph, every
prompt the model saw is a parameter of that graph, and an OptoPrime step on feedback about
the step reaches the next run (issue 10).

Each test: run the app through ``OptoTracer``; ``check_run`` (tests/invariants.py); the
parameters the shape must expose are in ``graph.parameters``; one OptoPrime step through the
scripted server shows the parameter in ``#Variables`` and the next run sends its new text; the
graph recorded before the step still shows the old text; no ``opto_adapters`` warning.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from types import SimpleNamespace

import pytest

from opto_adapters import Graph
from opto_adapters.langchain import OptoTracer
from opto_adapters.trace import Node, Op, Parameter
from tests import shapes_langchain as shapes
from tests.invariants import (
    ModelCall,
    assert_ancestor,
    assert_in_graph,
    check_run,
    check_step,
    llm_node_of,
    nodes_of_kind,
    opto_warnings,
    param_holding,
    sent_in,
)


@pytest.fixture
def log(caplog):
    caplog.set_level(logging.WARNING, logger="opto_adapters")
    return caplog


def traced(app: shapes.App, tracer: OptoTracer) -> tuple[object, list[ModelCall]]:
    """One traced run of the app: its graph and the model calls it made."""
    start = len(app.model.calls)
    run = tracer.run(app.input)
    assert run.error is None, f"the app failed: {run.error!r}"
    return run.graph, app.calls(start)


def rerun(app: shapes.App):
    """A plain run after the step (no tracer): the model calls it made."""

    def again() -> list[ModelCall]:
        start = len(app.model.calls)
        app.runnable.invoke(app.input)
        return app.calls(start)

    return again


def no_warnings(log) -> None:
    found = opto_warnings(log)
    assert not found, f"opto_adapters logged warnings: {found}"


def named(tracer: OptoTracer, name: str) -> Parameter:
    names = [p.name for p in tracer.parameters]
    assert name in names, f"no parameter named {name!r}; the tracer's parameters are {names}"
    return next(p for p in tracer.parameters if p.name == name)


def matching(tracer: OptoTracer, pattern: str) -> Parameter:
    found = [p for p in tracer.parameters if fnmatch.fnmatchcase(p.name, pattern)]
    assert len(found) == 1, (
        f"expected one parameter matching {pattern!r}, found {[p.name for p in found]}; "
        f"the tracer's parameters are {[p.name for p in tracer.parameters]}"
    )
    return found[0]


# -- L1 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["lambda", "chain"])
def test_map_reduce_in_a_function_step(variant, scripted_llm, log):
    app = shapes.map_reduce(variant)
    tracer = OptoTracer(app.runnable)
    graph, calls = traced(app, tracer)
    assert len(calls) == 4  # three map calls (batch), one reduce call

    check_run(tracer, graph, calls)
    map_prompt = param_holding(tracer, shapes.MAP_SYSTEM)
    reduce_prompt = param_holding(tracer, shapes.REDUCE_SYSTEM)
    assert_in_graph(graph, map_prompt, reduce_prompt)
    reduce_llm = llm_node_of(graph, calls[3])
    for call in calls[:3]:
        assert_ancestor(
            graph, llm_node_of(graph, call), reduce_llm, "a summary feeds the reduce call"
        )

    check_step(tracer, graph, {map_prompt: " Mention the animal first."}, scripted_llm, rerun(app))
    no_warnings(log)


# -- L2 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("middleware", ["todo", "wrap", "dynamic"])
def test_create_agent_with_middleware_keeps_its_system_prompt(middleware, scripted_llm, log):
    app = shapes.agent_with_middleware(middleware)
    tracer = OptoTracer(app.runnable)
    graph, calls = traced(app, tracer)
    assert len(calls) == 2
    assert all(shapes.AGENT_SYSTEM in c.received for c in calls)  # the text reaches the model

    check_run(tracer, graph, calls)
    system = named(tracer, "agent.system_prompt")
    assert_in_graph(graph, system)
    for call in calls:
        assert_ancestor(
            graph, system, llm_node_of(graph, call), "the system prompt feeds each call"
        )

    check_step(tracer, graph, {system: " Quote the entry word for word."}, scripted_llm, rerun(app))
    no_warnings(log)


# -- L3 ---------------------------------------------------------------------------------------


def test_langgraph_writer_critic_loop_links_the_critique_to_the_rewrite(scripted_llm, log):
    app = shapes.writer_critic_graph()
    tracer = OptoTracer(app.runnable)
    graph, calls = traced(app, tracer)
    assert len(calls) == 4  # writer, critic, writer, critic
    assert "Editor said: " + shapes.CRITIC_REPLIES[0] in calls[2].received

    check_run(tracer, graph, calls)
    writer = param_holding(tracer, shapes.WRITER_SYSTEM)
    critic = param_holding(tracer, shapes.CRITIC_SYSTEM)
    assert_in_graph(graph, writer, critic)
    first_draft, first_critique, second_draft = (llm_node_of(graph, c) for c in calls[:3])
    assert_ancestor(graph, first_draft, first_critique, "the critic reads the first draft")
    assert_ancestor(graph, first_critique, second_draft, "the rewrite reads the critique")

    check_step(tracer, graph, {writer: " Use one analogy."}, scripted_llm, rerun(app))
    no_warnings(log)


# -- L4 ---------------------------------------------------------------------------------------


def _near_parents(node: Node) -> list[Node]:
    """The node's parents, and theirs through steps that are no model call or tool run (an
    arguments node between a model call and its tool, say)."""
    near = list(node.parents)
    for parent in node.parents:
        if parent.op is not None and parent.op.kind not in ("llm", "tool"):
            near.extend(parent.parents)
    return near


def test_tool_runs_follow_the_model_call_that_asked_for_them(scripted_llm, log):
    app = shapes.agent_with_repeated_tool_arguments()
    tracer = OptoTracer(app.runnable)
    graph, calls = traced(app, tracer)
    assert [c.tool_calls for c in calls] == [("lookup",), ("lookup", "scale"), ()]
    assert calls[0].tool_args[0] == calls[1].tool_args[0] == {"term": "API"}  # the same string

    check_run(tracer, graph, calls)
    first, second = llm_node_of(graph, calls[0]), llm_node_of(graph, calls[1])
    names = graph.names()

    def name(n: Node) -> str:
        return names.get(id(n), n.name)

    tools = nodes_of_kind(graph, "tool")
    runs = {
        "lookup #1": "glossary entry #1",
        "lookup #2": "glossary entry #2",
        "scale": "scaling #1",
    }
    found = {}
    for label, text in runs.items():
        holding = [t for t in tools if text in str(t.value)]
        assert len(holding) == 1, (
            f"expected one tool node for {label} (value with {text!r}); tool nodes: "
            f"{[(name(t), str(t.value)) for t in tools]}\n{graph.to_text()}"
        )
        found[label] = holding[0]
    for label, caller in [("lookup #1", first), ("lookup #2", second), ("scale", second)]:
        near = _near_parents(found[label])
        assert any(n is caller for n in near), (
            f"the tool run {label} ({name(found[label])!r}) does not take its arguments from "
            f"the model call that asked for it ({name(caller)!r}); its parents: "
            f"{[name(p) for p in found[label].parents]}\n{graph.to_text()}"
        )
    for label in ("lookup #2", "scale"):
        near = _near_parents(found[label])
        assert not any(n is first for n in near), (
            f"the tool run {label} is linked to the FIRST model call ({name(first)!r}), which "
            f"did not ask for it (same argument text?); its parents: "
            f"{[name(p) for p in found[label].parents]}\n{graph.to_text()}"
        )

    lookup = named(tracer, "tool.lookup")
    check_step(tracer, graph, {lookup: " Use it once per term."}, scripted_llm, rerun(app))
    no_warnings(log)


# -- L5 ---------------------------------------------------------------------------------------


def test_few_shot_prompt_exposes_prefix_suffix_example_prompt_and_examples(scripted_llm, log):
    app = shapes.few_shot_chain()
    tracer = OptoTracer(app.runnable)
    graph, calls = traced(app, tracer)
    assert len(calls) == 1 and shapes.FEW_SHOT_PREFIX in calls[0].received

    check_run(tracer, graph, calls)
    parts = {
        pattern: matching(tracer, pattern)
        for pattern in ("*prefix*", "*suffix*", "*example_prompt*", "*examples*")
    }
    assert_in_graph(graph, *parts.values())
    assert parts["*prefix*"].value == shapes.FEW_SHOT_PREFIX
    assert parts["*suffix*"].value == shapes.FEW_SHOT_SUFFIX

    check_step(tracer, graph, {parts["*prefix*"]: " Use lowercase."}, scripted_llm, rerun(app))
    no_warnings(log)


# -- L6 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [shapes.react_agent_with_string_prompt, shapes.create_agent_with_string_prompt],
    ids=["langgraph_create_react_agent", "langchain_create_agent"],
)
def test_string_system_prompt_is_agent_system_prompt(make, scripted_llm, log):
    app = make()
    tracer = OptoTracer(app.runnable)
    graph, calls = traced(app, tracer)
    assert len(calls) == 2 and all(shapes.STRING_SYSTEM in c.received for c in calls)

    check_run(tracer, graph, calls)
    system = named(tracer, "agent.system_prompt")
    assert system.value == shapes.STRING_SYSTEM
    assert_in_graph(graph, system)

    check_step(tracer, graph, {system: " Spell out acronyms."}, scripted_llm, rerun(app))
    no_warnings(log)


# -- L7 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("parser", ["str", "json"])
def test_final_output_parser_is_a_node(parser, scripted_llm, log):
    app = shapes.parser_chain(parser)
    tracer = OptoTracer(app.runnable)
    graph, calls = traced(app, tracer)

    check_run(tracer, graph, calls)
    parsers = nodes_of_kind(graph, "parser")
    assert parsers, (
        f"no node with op.kind 'parser' is the output or an ancestor of it; op kinds: "
        f"{sorted({n.op.kind for n in graph.nodes if n.op})}\n{graph.to_text()}"
    )
    assert graph.output in parsers, f"the parser's result is not the output\n{graph.to_text()}"
    assert_ancestor(graph, llm_node_of(graph, calls[0]), parsers[-1], "the parser reads the reply")
    system = param_holding(tracer, shapes.PARSER_SYSTEM)
    assert_in_graph(graph, system)

    check_step(tracer, graph, {system: " Answer as JSON."}, scripted_llm, rerun(app))
    no_warnings(log)


# -- across shapes ----------------------------------------------------------------------------

INTERNAL_PATH = re.compile(r"\bbound/|\bstep\d+/|/step\d+\b|runnable_sync")


@pytest.mark.parametrize("shape", sorted(shapes.ALL_SHAPES))
def test_parameter_descriptions_name_no_internal_paths(shape):
    tracer = OptoTracer(shapes.ALL_SHAPES[shape]().runnable)
    assert tracer.parameters, f"{shape}: no parameters discovered"
    leaks = {
        p.name: INTERNAL_PATH.findall(p.description)
        for p in tracer.parameters
        if INTERNAL_PATH.search(p.description)
    }
    assert not leaks, (
        f"{shape}: descriptions show the tracer's internal paths {leaks}; e.g. "
        f"{next(p.description for p in tracer.parameters if p.name in leaks)!r}"
    )


def test_graph_recorded_before_a_step_keeps_the_values_of_its_run(scripted_llm):
    app = shapes.parser_chain("str")
    tracer = OptoTracer(app.runnable)
    graph, _ = traced(app, tracer)
    system = param_holding(tracer, shapes.PARSER_SYSTEM)
    before = graph.to_text(value_chars=10_000)
    node = next(p for p in graph.parameters if p.name == system.name)

    check_step(tracer, graph, {system: " Reply in French."}, scripted_llm, rerun(app))
    assert system.value.endswith(" Reply in French.")  # the live prompt changed
    # the node is the live parameter (feedback must reach it); the graph remembers its value
    assert graph.value_of(node) == shapes.PARSER_SYSTEM, (
        f"the graph's node for {system.name!r} now reads {graph.value_of(node)!r}, not the text its run used"
    )
    assert graph.to_text(value_chars=10_000) == before


# -- the checker itself (tests/invariants.py), on hand-built graphs ----------------------------
# (kept here, beside the shapes it serves; these use no framework)

SYSTEM = "You explain tides to curious children."
QUESTION = "Please answer this question about {topic} in two sentences"
REPLY = "The moon pulls the sea."


def hand_built(*, llm_kind: str = "llm", with_system: bool = True, reply_value=REPLY):
    """system + question template -> prompt -> model -> parser (the output)."""
    system = Parameter(SYSTEM, name="prompt.system", kind="prompt")
    question = Parameter(QUESTION, name="prompt.human", kind="prompt")
    unused = Parameter("A text no model receives in this run.", name="other.text")
    topic = Node("tides", name="input.topic")
    inputs = {"system": system} if with_system else {}
    inputs.update(human=question, topic=topic)
    prompt = Node(
        f"system: {SYSTEM}\nhuman: Please answer this question about tides in two sentences",
        name="prompt",
        inputs=inputs,
        op=Op("ChatPromptTemplate", kind="prompt"),
    )
    model = Node(
        reply_value, name="model", inputs={"messages": prompt}, op=Op("ChatModel", kind=llm_kind)
    )
    parser = Node(
        REPLY, name="parser", inputs={"input": model}, op=Op("StrOutputParser", kind="parser")
    )
    tracer = SimpleNamespace(parameters=[system, question, unused])
    return tracer, Graph(parser), model


CALL = ModelCall(
    received=f"system: {SYSTEM}\nhuman: Please answer this question about tides in two sentences",
    returned=REPLY,
)


def test_checker_accepts_a_graph_with_every_call_and_every_sent_parameter():
    tracer, graph, _ = hand_built()
    check_run(tracer, graph, [CALL])  # "other.text" was never sent: not required


def test_checker_names_a_model_call_missing_from_the_graph():
    tracer, graph, _ = hand_built()
    lost = ModelCall(received="human: summarize", returned="A lost summary.")
    with pytest.raises(AssertionError) as err:
        check_run(tracer, graph, [CALL, lost])
    message = str(err.value)
    assert "(a) 1 node(s) with op.kind == 'llm' for 2 model call(s)" in message
    assert (
        "(b) call 2" in message and "A lost summary." in message and "the call is lost" in message
    )
    assert "model = ChatModel(...)" in message  # the graph is shown


def test_checker_fails_when_the_model_node_has_no_llm_kind():
    tracer, graph, _ = hand_built(llm_kind="")
    with pytest.raises(AssertionError) as err:
        check_run(tracer, graph, [CALL])
    assert "(a) 0 node(s)" in str(err.value) and "op.kind not 'llm'?" in str(err.value)


def test_checker_names_a_sent_parameter_missing_from_the_graph():
    tracer, graph, _ = hand_built(with_system=False)
    with pytest.raises(AssertionError) as err:
        check_run(tracer, graph, [CALL])
    message = str(err.value)
    assert "(c) parameter 'prompt.system' was sent" in message
    assert "prompt.human" not in message.split("graph.parameters:")[0]  # that one is there


def test_checker_requires_the_tool_calls_of_a_reply():
    calls = [ModelCall(received=CALL.received, returned="", tool_calls=("lookup",))]
    tool_reply = {"content": "", "tool_calls": [{"name": "lookup", "args": {"term": "API"}}]}
    tracer, graph, _ = hand_built(reply_value=tool_reply)
    check_run(tracer, graph, calls)
    tracer, graph, _ = hand_built(reply_value={"content": "", "tool_calls": []})
    with pytest.raises(AssertionError, match=r"\(b\) call 1: no llm node holds the reply"):
        check_run(tracer, graph, calls)


def test_checker_wants_one_of_several_parameters_with_the_same_text():
    tracer, graph, _ = hand_built()
    twin = Parameter(SYSTEM, name="copy.of.system", kind="prompt")
    check_run(SimpleNamespace(parameters=[*tracer.parameters, twin]), graph, [CALL])
    tracer, graph, _ = hand_built(with_system=False)
    with pytest.raises(AssertionError, match="'prompt.system' / 'copy.of.system' was sent"):
        check_run(SimpleNamespace(parameters=[*tracer.parameters, twin]), graph, [CALL])


def test_checker_refuses_a_run_without_a_graph():
    with pytest.raises(AssertionError, match="no graph was recorded for a run that made 1 model"):
        check_run(SimpleNamespace(parameters=[]), None, [CALL])


def test_sent_in_reads_plain_texts_and_the_long_pieces_of_templates():
    received = [
        "system: Be brief.\nhuman: Summarize the cat story in one sentence for the newsletter."
    ]
    assert sent_in("Be brief.", received)
    assert not sent_in("Be very brief.", received)
    assert sent_in("Summarize the {animal} story in one sentence for the newsletter.", received)
    # both long pieces are there, but not in the template's order
    assert not sent_in("in one sentence for the newsletter. {x} Summarize the cat story", received)
    assert sent_in("{question}", received) is None  # nothing long enough to tell
    assert sent_in("", received) is None and sent_in(3, received) is None
    # LlamaIndex keeps {{ }} as they are, str.format sends one brace: pieces skip both
    assert sent_in(
        'Reply as JSON like {{"answer": "..."}} for the question {query}',
        ['Reply as JSON like {"answer": "..."} for the question why?'],
    )
