"""LlamaIndex adapter on agents: system prompt and tool descriptions, tool calls in the graph."""

from __future__ import annotations

import pytest
from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent, ReActAgent
from llama_index.core.tools import FunctionTool

from opto_adapters.llama_index import OptoTracer
from opto_adapters.llama_index.templates import literal_chunks
from opto_adapters.trace import ExceptionNode, ValidationError, apply_updates
from opto_adapters.trace.names import check_name, safe_name
from opto_adapters.trace.templates import template_variables

from .llama_index_fakes import ScriptedToolLLM, tool_description


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def mul(a: int, b: int) -> int:
    """Multiply two numbers."""
    return a * b


ADD_DESCRIPTION = FunctionTool.from_defaults(add).metadata.description
SCRIPT = [[("add", {"a": 1, "b": 2})], [("mul", {"a": 3, "b": 4})], "The answer is 12."]


@pytest.fixture
def llm() -> ScriptedToolLLM:
    return ScriptedToolLLM(SCRIPT)


@pytest.fixture
def agent(llm) -> FunctionAgent:
    return FunctionAgent(tools=[add, mul], llm=llm, system_prompt="You are a calculator.")


def test_agent_parameters(agent):
    with OptoTracer(agent) as tracer:
        assert [p.name for p in tracer.parameters] == [
            "agent.system_prompt",
            "tool.add",
            "tool.mul",
        ]
        assert tracer.parameter("tool.add").kind == "tool_description"
        assert tracer.parameter("tool.add").value == ADD_DESCRIPTION
        assert "decide when to call" in tracer.parameter("tool.mul").description


async def test_agent_run_graph_has_llm_calls_and_tool_calls_in_order(agent, llm):
    with OptoTracer(agent) as tracer:
        run = await tracer.arun("what is (1+2)*4?")
    assert run.error is None and str(run.output) == "The answer is 12."
    graph = run.graph
    edges = set(graph.edges())
    for call in ("llm", "llm1", "llm2"):
        assert ("agent.system_prompt", "system", call) in edges
        assert ("tool.add", "tool[add]", call) in edges
        assert ("tool.mul", "tool[mul]", call) in edges
    assert ("user_msg", "user", "llm") in edges
    assert {
        ("llm", "call", "add"),  # the call that asked for the tool (by its tool call id)
        ("add", "tool", "llm1"),  # the tool's output goes back to the model
        ("llm", "history", "llm1"),  # the conversation so far, resent
        ("llm1", "call", "mul"),
        ("mul", "tool", "llm2"),
        ("llm1", "history", "llm2"),
        ("llm2", "llm", "response"),
        ("user_msg", "user_msg", "response"),
    } <= edges
    nodes = {graph.names()[id(n)]: n for n in graph.nodes}
    assert nodes["add"].value == "3" and nodes["mul"].value == "12"
    # the tool is fed by the model call whose tool call it ran, found by the call's id
    assert nodes["add"].inputs == {"call": nodes["llm"]}
    assert graph.links[(id(nodes["add"]), "call")] == "link"
    assert nodes["add"].op.name == "tool:add"
    assert nodes["llm"].value == '[tool call] add({"a": 1, "b": 2})'
    assert graph.output.value == "The answer is 12." and graph.output.op.name == "FunctionAgent.run"
    assert len(llm.calls) == 3


def test_sync_run_on_an_agent_and_write_back_of_prompt_and_tool_description(agent, llm):
    with OptoTracer(agent) as tracer:
        graph = tracer.run("what is (1+2)*4?").graph
        mul_desc = tracer.parameter("tool.mul")
        mul_desc.zero_feedback()
        graph.output.backward("Use mul only for products.")
        [sub] = mul_desc.feedback
        assert {"llm", "llm1", "llm2", "response"} <= {sub.names()[id(n)] for n in sub.nodes}

        apply_updates(
            {
                tracer.parameter(
                    "agent.system_prompt"
                ): "You are a careful calculator. Show no work.",
                mul_desc: "Multiply a by b. Use it for every product.",
            }
        )
        llm.load(SCRIPT)
        run = tracer.run("what is (1+2)*4?")
    assert run.error is None
    last = llm.calls[-1]
    assert last["messages"][0] == ("system", "You are a careful calculator. Show no work.")
    assert tool_description(last, "mul") == "Multiply a by b. Use it for every product."
    assert tool_description(last, "add") == ADD_DESCRIPTION


def test_bad_tool_descriptions_are_rejected(agent):
    with OptoTracer(agent) as tracer:
        desc = tracer.parameter("tool.add")
        with pytest.raises(ValidationError, match="1024"):
            apply_updates({desc: "x" * 1025})
        with pytest.raises(ValidationError, match="empty"):
            apply_updates({desc: " "})
        assert desc.value == ADD_DESCRIPTION


async def test_a_failing_tool_is_reported_to_the_model_and_shows_in_the_graph():
    def divide(a: int, b: int) -> float:
        """Divide a by b."""
        return a / b

    llm = ScriptedToolLLM([[("divide", {"a": 1, "b": 0})], "Cannot divide by zero."])
    agent = FunctionAgent(tools=[divide], llm=llm, system_prompt="Divide.")
    with OptoTracer(agent) as tracer:
        run = await tracer.arun("1/0?")
    graph = run.graph
    nodes = {graph.names()[id(n)]: n for n in graph.nodes}
    assert isinstance(nodes["divide"], ExceptionNode)
    assert "ZeroDivisionError: division by zero" in nodes["divide"].error_text()
    assert ("divide", "tool", "llm1") in set(graph.edges())  # the agent told the model
    assert graph.output.value == "Cannot divide by zero."


def test_react_agent_header_is_recognised_in_the_formatted_system_message():
    llm = ScriptedToolLLM(
        [
            'Thought: I need to add.\nAction: add\nAction Input: {"a": 2, "b": 2}',
            "Thought: Done.\nAnswer: 4",
        ]
    )
    agent = ReActAgent(tools=[add], llm=llm)
    with OptoTracer(agent) as tracer:
        header = tracer.parameter("agent.react_header")
        assert header.variables == {"tool_desc", "tool_names"}
        graph = tracer.run("what is 2+2?").graph
        edges = set(graph.edges())
        assert ("agent.react_header", "system", "llm") in edges
        assert ("tool_names", "tool_names", "llm") in edges
        assert ("tool.add", "tool[add]", "llm") in edges
        # str.format rules: a lone brace would break the agent at run time
        with pytest.raises(ValidationError, match="unknown variable"):
            apply_updates({header: header.value + "\nReply like {'a': 1}"})
        apply_updates(
            {header: "Tools: {tool_desc}\nNames: {tool_names}\nAnswer as 'Answer: ...' {{ok}}"}
        )
        llm.load(["Thought: Done.\nAnswer: 4"])
        tracer.run("what is 2+2?")
    system = llm.calls[-1]["messages"][0][1]
    assert system.startswith("Tools: > Tool Name: add") and system.endswith(
        "Names: add\nAnswer as 'Answer: ...' {ok}"
    )


def test_agent_workflow_parameters_are_named_by_agent():
    calc = FunctionAgent(
        name="calc",
        description="adds",
        tools=[add],
        llm=ScriptedToolLLM(["4"]),
        system_prompt="You add.",
    )
    react = ReActAgent(
        name="thinker",
        description="thinks",
        tools=[mul],
        llm=ScriptedToolLLM(["Thought: x\nAnswer: 1"]),
    )
    workflow = AgentWorkflow(agents=[calc, react], root_agent="calc")
    with OptoTracer(workflow) as tracer:
        names = [p.name for p in tracer.parameters]
        assert {
            "handoff_prompt",
            "agent.thinker.react_header",
            "agent.calc.system_prompt",
            "tool.add",
            "tool.mul",
        } <= set(names)
        graph = tracer.run("what is 2+2?").graph
    edges = set(graph.edges())
    assert ("agent.calc.system_prompt", "system", "llm") in edges
    assert ("tool.add", "tool[add]", "llm") in edges
    assert graph.output.value == "4"


async def test_parallel_tool_calls_both_hang_off_the_call_that_asked_for_them(llm, agent):
    llm.load([[("add", {"a": 1, "b": 2}), ("mul", {"a": 3, "b": 4})], "3 and 12."])
    with OptoTracer(agent) as tracer:
        graph = (await tracer.arun("1+2 and 3*4?")).graph
    edges = set(graph.edges())
    assert {("llm", "call", "add"), ("llm", "call", "mul")} <= edges
    into_second_call = {src for src, _, dst in edges if dst == "llm1"}
    # the conversation so far comes through the first call (its input is the history)
    assert {"add", "mul", "llm", "agent.system_prompt"} <= into_second_call
    assert ("llm", "history", "llm1") in edges
    assert graph.output.value == "3 and 12."


def test_long_agent_and_tool_names_give_valid_capped_parameter_names():
    # Names are joined from several user-chosen parts; a node name may have 128 characters.
    tool_name = "lookup_" + "x" * 150
    tool = FunctionTool.from_defaults(add, name=tool_name)
    agent_name = "agent " + "y" * 120
    agent = FunctionAgent(
        name=agent_name,
        description="adds",
        tools=[tool],
        llm=ScriptedToolLLM([[(tool_name, {"a": 1, "b": 2})], "3"]),
        system_prompt="You add.",
    )
    helper = FunctionAgent(
        name="helper",
        description="helps",
        tools=[],
        llm=ScriptedToolLLM(["-"]),
        system_prompt="Help.",
    )
    workflow = AgentWorkflow(agents=[agent, helper], root_agent=agent_name)
    with OptoTracer(workflow) as tracer:  # raised "invalid node name" before
        names = [p.name for p in tracer.parameters]
        for name in names:
            assert check_name(name) == name and len(name) <= 128
        assert len(set(names)) == len(names)
        [description] = [n for n in names if n.startswith("tool.")]
        assert description == "tool." + safe_name(tool_name)
        [system] = [n for n in names if n.startswith("agent.agent_yyy")]
        assert system.endswith(".system_prompt")
        assert tracer.parameter(system).value == "You add."
        assert tracer.parameter("agent.helper.system_prompt").value == "Help."
    graph = tracer.run("what is 1+2?").graph
    assert graph.output.value == "3"
    [tool_node] = [n for n in graph.nodes if n.op is not None and n.op.name.startswith("tool:")]
    assert tool_node.name == safe_name(tool_name) and len(tool_node.name) <= 128
    assert (description, f"tool[{tool_node.name}]", "llm") in set(graph.edges())


def test_a_tool_name_is_made_a_name_the_same_way_in_parameters_and_graphs(llm):
    tool = FunctionTool.from_defaults(add, name="Add numbers (v2)!")
    agent = FunctionAgent(tools=[tool], llm=llm, system_prompt="You add.")
    llm.load([[("Add numbers (v2)!", {"a": 1, "b": 2})], "3"])
    with OptoTracer(agent) as tracer:
        assert [p.name for p in tracer.parameters] == [
            "agent.system_prompt",
            "tool.Add_numbers_v2",
        ]
        graph = tracer.run("1+2?").graph
    edges = set(graph.edges())
    assert ("tool.Add_numbers_v2", "tool[Add_numbers_v2]", "llm") in edges
    assert ("llm", "call", "Add_numbers_v2") in edges
    assert graph.output.value == "3"


@pytest.mark.parametrize(
    "text",
    [
        "Tools: {tool_desc}\nNames: {tool_names}\nAnswer as {{'answer': ...}}",
        "{obj.attr} then {items[0]} then {shown!r} then {padded:>10} then {obj.attr}",
        "{first}{second}",
        "ends with {last}",
        "no variables, {{only braces}}",
        "",
    ],
)
def test_str_format_template_pieces_agree_with_the_core_variable_parser(text):
    # ReAct's header is matched with literal_chunks(syntax="python") and validated with the
    # core's template_variables: they must read the same variables from the same text.
    literals, names = literal_chunks(text, "python")
    assert frozenset(names) == template_variables(text)
    assert len(literals) == len(names) + 1
    if all(name.isidentifier() and "{" + name + "}" in text for name in names):
        values = {name: f"<{name}>" for name in names}
        filled = (
            "".join(lit + values[n] for lit, n in zip(literals[:-1], names, strict=True))
            + literals[-1]
        )
        assert filled == text.format(**values)


@pytest.mark.parametrize("text", ["{unclosed", "stray } brace", "{a!}"])
def test_malformed_str_format_templates_are_rejected_by_both_parsers(text):
    with pytest.raises(ValueError):
        literal_chunks(text, "python")
    with pytest.raises(ValueError):
        template_variables(text)
