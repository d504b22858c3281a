"""The run model and its one builder, on span trees written by hand (no framework)."""

from __future__ import annotations

import json
import logging
import time

import pytest

from opto_adapters.runs import (
    Document,
    Message,
    Span,
    TextUse,
    ToolCall,
    build_graph,
    match_template,
    tree,
)
from opto_adapters.trace import ExceptionNode, Parameter, backward


def llm(id_: str, messages: list[Message], reply: Message | str, **kw) -> Span:
    out = reply if isinstance(reply, Message) else Message("ai", reply)
    return Span(id_, kind="llm", name="Model", label="model", inputs={"messages": messages}, output=out, **kw)


def kinds(graph) -> list[str]:
    return [n.op.kind for n in graph.nodes if n.op is not None]


def node_named(graph, name):
    return next(n for n in graph.nodes if graph.names()[id(n)] == name)


def ancestors(node) -> set[int]:
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        for p in n.inputs.values():
            if id(p) not in seen:
                seen.add(id(p))
                stack.append(p)
    return seen


# -- provenance ------------------------------------------------------------------------------


def test_a_tool_is_fed_by_the_call_whose_tool_call_it_answers_not_by_the_first_with_that_text():
    # two model calls ask for the same tool with the same argument; each tool run answers one
    first = llm("m1", [Message("human", "look it up")], Message("ai", "", (ToolCall("find", {"q": "API"}, "c1"),)))
    second = llm(
        "m2",
        [Message("human", "look it up"), Message("tool", "API: a", tool_call_id="c1")],
        Message("ai", "", (ToolCall("find", {"q": "API"}, "c2"),)),
    )
    tool1 = Span("t1", kind="tool", name="tool:find", label="find", inputs={"q": "API"}, output="API: a", links={"tool_call_id": "c1"})
    tool2 = Span("t2", kind="tool", name="tool:find", label="find", inputs={"q": "API"}, output="API: b", links={"tool_call_id": "c2"})
    root = Span("r", inputs={"input": "look it up"}, output="API: b", children=[first, tool1, second, tool2])
    graph = build_graph(root)
    m1, m2 = node_named(graph, "model"), node_named(graph, "model1")
    t2 = node_named(graph, "find1")
    assert t2.inputs == {"q": m2} and graph.links[(id(t2), "q")] == "link"
    assert node_named(graph, "find").inputs == {"q": m1}


def test_joined_outputs_feed_the_step_that_reads_the_joined_text():
    docs = ["first document about cats", "second document about dogs", "third about birds"]
    maps = []
    for i, d in enumerate(docs):
        s = Span(f"s{i}", flow="sequence", inputs={"input": d}, output=f"summary {i} of the text")
        s.children = [llm(f"l{i}", [Message("human", f"Summarize: {d}")], f"summary {i} of the text")]
        maps.append(s)
    joined = "\n".join(f"summary {i} of the text" for i in range(3))
    reduce_call = llm("red", [Message("human", f"Combine these: {joined}")], "all combined")
    root = Span("r", inputs={"input": docs}, output="all combined", children=[*maps, reduce_call])
    graph = build_graph(root)
    assert kinds(graph).count("llm") == 4
    final = graph.output
    assert final.value == "all combined"
    combined = final.inputs["messages"]
    assert combined.op.name == "combine" and combined.value == f"Combine these: {joined}"
    assert [p.value for p in combined.inputs.values()] == [f"summary {i} of the text" for i in range(3)]
    assert all(graph.links[(id(combined), arg)] == "containment" for arg in combined.inputs)


def test_a_piece_of_an_earlier_reply_is_credited_to_that_reply():
    reply = 'Thought: look it up.\nAction: lookup\nAction Input: {"term": "quantum entanglement"}'
    call = llm("m", [Message("human", "explain")], reply)
    tool = Span("t", kind="tool", name="tool:lookup", label="lookup", inputs={"term": "quantum entanglement"}, output="a definition")
    root = Span("r", inputs={"input": "explain"}, output="a definition", children=[call, tool])
    graph = build_graph(root)
    assert graph.output.inputs == {"term": node_named(graph, "model")}
    assert graph.links[(id(graph.output), "term")] == "part"


def test_a_step_nothing_explains_is_fed_by_the_step_before_it():
    call = llm("m", [Message("human", "go")], "42")
    tool = Span("t", kind="tool", name="tool:calc", label="calc", inputs={"x": 7}, output="49")
    root = Span("r", inputs={"input": "go"}, output="49", children=[call, tool])
    graph = build_graph(root)
    assert graph.output.inputs == {"call": node_named(graph, "model")}
    assert graph.links[(id(graph.output), "call")] == "structure"


def test_a_model_call_nothing_consumed_is_never_dropped():
    # a guard call whose answer the code only looked at, then a call that produced the output
    guard = llm("g", [Message("human", "is this safe?")], "yes")
    answer = llm("a", [Message("human", "the real question")], "the answer")
    root = Span("r", name="app", label="app", inputs={"input": "the real question"}, output="the answer", children=[guard, answer])
    graph = build_graph(root)
    assert kinds(graph).count("llm") == 2
    guard_node = next(n for n in graph.nodes if n.value == "yes")
    assert id(guard_node) in ancestors(graph.output)


def test_parameters_found_in_the_text_a_model_received():
    system = Parameter("You are a careful assistant.", name="agent.system_prompt", kind="text")
    template = Parameter("Answer {question} in one word, please.", name="prompt.qa", kind="prompt")
    # middleware appended to the system prompt; the user filled the template with str.format
    messages = [
        Message("system", "You are a careful assistant.\n\nAlso: keep a todo list."),
        Message("human", "Answer what is blue in one word, please."),
    ]
    root = Span("r", inputs={"input": "what is blue"}, output="sky", children=[llm("m", messages, "sky")])
    graph = build_graph(root, uses=[TextUse(system), TextUse(template, match="template")])
    model = graph.output
    assert model.inputs["system"] is system and model.inputs["human"] is template
    assert model.inputs["question"].name == "input"  # what filled {question}: the run's input
    # the system message as the model got it (with what middleware added) is shown too
    assert node_named(graph, "system").value.endswith("keep a todo list.")


def test_a_resent_conversation_links_to_the_previous_call_and_stays_linear():
    def loop(n: int) -> Span:
        history = [Message("system", "sys"), Message("human", "start", id="h")]
        children = []
        for i in range(n):
            reply = Message("ai", "", (ToolCall("step", {"i": i}, f"c{i}"),), id=f"a{i}")
            children.append(llm(f"m{i}", list(history), reply))
            result = Message("tool", f"result number {i}", tool_call_id=f"c{i}", id=f"t{i}")
            children.append(Span(f"t{i}", kind="tool", name="tool:step", inputs={"i": i}, output=result, links={"tool_call_id": f"c{i}"}))
            history += [reply, result]
        return Span("r", inputs={"messages": history[:2]}, output="done", children=children)

    graph = build_graph(loop(50))
    calls = [n for n in graph.nodes if n.op is not None and n.op.kind == "llm"]
    assert len(calls) == 50
    assert calls[3].inputs["history"] is calls[2]
    assert calls[3].inputs["tool"].op.kind == "tool"
    assert len(calls[3].inputs) == 2  # not one edge per message of the history

    def seconds(n: int) -> float:
        span = loop(n)
        start = time.perf_counter()
        build_graph(span)
        return time.perf_counter() - start

    # per call, 800 calls cost about what 100 do (quadratic would be 8x): allow noise
    small = min(seconds(100) for _ in range(3)) / 100
    large = min(seconds(800) for _ in range(3)) / 800
    assert large < small * 3, (small, large)


def test_a_repeated_input_is_not_a_continuation():
    failed = llm("m1", [Message("human", "q")], "", error=RuntimeError("down"))
    backup = llm("m2", [Message("human", "q")], "fine")
    root = Span("r", inputs={"input": "q"}, output="fine", children=[failed, backup])
    graph = build_graph(root)
    backup_node = next(n for n in graph.nodes if n.value == "fine" and n.op and n.op.kind == "llm")
    assert "history" not in backup_node.inputs
    assert any(isinstance(n, ExceptionNode) for n in graph.nodes)  # the failed attempt is kept


def test_a_step_whose_input_came_from_outside_the_run_is_reported_and_kept():
    # the second call's prompt was produced by no step of this run (a cache, another run)
    first = llm("m1", [Message("human", "draft a title")], "A title")
    second = Span("m2", kind="llm", name="Model", inputs={"prompt": "text fetched from a cache"}, output="done")
    root = Span("r", inputs={"input": "draft a title"}, output="done", children=[first, second])
    reported = []
    graph = build_graph(root, on_unlinked=lambda span, reason: reported.append((span.id, reason)))
    assert reported == [("m2", "none of its input was produced by an earlier step of the run")]
    assert graph.output.inputs["prompt"].value == "text fetched from a cache"  # shown, as a leaf
    assert graph.links[(id(graph.output), "input")] == "structure"  # fed by what ran before
    # the first step of a run, or a step whose input is the run's, is never reported
    reported.clear()
    alone = Span("r", output="done", children=[Span("m", kind="llm", name="Model", inputs={"prompt": "constant"}, output="done")])
    build_graph(alone, on_unlinked=lambda span, reason: reported.append(span.id))
    build_graph(Span("r", inputs={"input": "q"}, output="x", children=[llm("m", [Message("human", "q")], "x")]),
                on_unlinked=lambda span, reason: reported.append(span.id))
    assert reported == []


def test_graph_values_are_the_values_of_the_run():
    template = Parameter("Say {x} twice.", name="prompt.say", kind="prompt")
    prompt = Span("p", kind="prompt", name="Prompt", inputs={"x": "hi"}, output=[Message("human", "Say hi twice.")], parameters=[("template", template)])
    call = llm("m", [Message("human", "Say hi twice.")], "hi hi")
    graph = build_graph(Span("r", flow="sequence", inputs={"x": "hi"}, output="hi hi", children=[prompt, call]))
    before = graph.to_text()
    template.value = "Say {x} three times."
    assert graph.value_of(template) == "Say {x} twice." and template.value.endswith("three times.")
    assert graph.to_text() == before
    sub = backward(graph, "more")
    assert sub.value_of(template) == "Say {x} twice."  # the subgraph the optimizer reads too


# -- spans as data ---------------------------------------------------------------------------


def test_spans_round_trip_through_json_and_build_the_same_graph():
    system = Parameter("Be brief.", name="prompt.system", kind="prompt")
    docs = [Document("Paris is in France.", id="d1", score=0.9)]
    spans = [
        Span("r", kind="chain", name="app", inputs={"question": "Where is Paris?"}, output="France.", order=0),
        Span("ret", kind="retriever", name="Retriever", parent_id="r", inputs={"query": "Where is Paris?"}, output=docs, order=1),
        Span(
            "m", kind="llm", name="Model", parent_id="r", order=2,
            inputs={"messages": [Message("system", "Be brief."), Message("human", "Context: Paris is in France.\nWhere is Paris?")]},
            output=Message("ai", "France.", (ToolCall("noop", {"a": 1}, "c1"),)),
            parameters=[("system", system)],
        ),
    ]  # fmt: skip
    text = "\n".join(json.dumps(s.to_data()) for s in spans)
    read = [Span.from_data(json.loads(line), {"prompt.system": system}) for line in text.splitlines()]
    assert read[2].output == spans[2].output and read[1].output == docs
    [root] = tree(reversed(read))  # order, not file order, decides
    graph, again = build_graph(tree(spans)[0]), build_graph(root)
    assert again.edges() == graph.edges() and system in again.parameters
    assert kinds(again) == ["retriever", "chain", "llm"]  # the context text was combined from the retrieval


def test_bad_span_data_says_what_is_wrong():
    with pytest.raises(ValueError, match="string 'id'"):
        Span.from_data({"kind": "llm"})
    with pytest.raises(ValueError, match="unknown span kind 'model'"):
        Span.from_data({"id": "x", "kind": "model"})
    orphans = []
    roots = tree([Span("a", parent_id="missing")], on_orphan=orphans.append)
    assert [r.id for r in roots] == ["a"] and [o.id for o in orphans] == ["a"]


def test_template_matching_per_syntax():
    assert match_template("Hello {name}, you are {age}.", "x Hello Ann, you are 3. y") == {"name": "Ann", "age": "3"}
    assert match_template("Data: {{ item }} is here today", "Data: box is here today", syntax="jinja") == {"item": "box"}
    assert match_template("{a}{b}", "anything") is None  # too little literal text to be evidence
    assert match_template("Hi {x", "Hi {x") is None  # malformed f-string: never matches


def test_framework_tracers_warn_once_per_step_kind(caplog):
    from opto_adapters.langchain import OptoTracer

    tracer = OptoTracer()
    span = Span("o", kind="llm", name="Orphan")
    with caplog.at_level(logging.WARNING, logger="opto_adapters.langchain"):
        for _ in range(3):
            tracer._unlinked(span, "no predecessor")
    warnings = [r for r in caplog.records if "could not be linked" in r.getMessage()]
    assert len(warnings) == 1 and "'Orphan'" in warnings[0].getMessage()


def test_short_outputs_count_inside_later_texts_only_where_they_stand_apart():
    yes = llm("a", [Message("human", "is it blue?")], "Yes.")
    no = llm("b", [Message("human", "is it red?")], "no")  # 2 characters: never looked for
    summary = llm("c", [Message("human", "Answers: Yes.\nknow more")], "done")
    graph = build_graph(Span("r", inputs={"input": "q"}, output="done", children=[yes, no, summary]))
    [combined] = [n for n in graph.nodes if n.op is not None and n.op.name == "combine"]
    assert [p.value for p in combined.inputs.values()] == ["Yes."]  # not "no" inside "know"


def test_a_step_kept_as_its_own_node_takes_its_inputs_before_its_steps_run():
    # a synthesis given a text; its own LLM call later returns text that the input contains
    given = Span("g", kind="retriever", name="Retriever", inputs={"query": "q"}, output=[Document("fact one is here", id="d")])
    call = llm("m", [Message("human", "Context: fact one is here")], "fact one")
    synth = Span("s", kind="synthesize", name="Synth", keep=True, inputs={"nodes": [Document("fact one is here", id="d")]}, output="fact one", children=[call])
    graph = build_graph(Span("r", inputs={"input": "q"}, output="fact one", children=[given, synth]))
    node = next(n for n in graph.nodes if n.op is not None and n.op.kind == "synthesize")
    assert node.inputs["nodes"].op.kind == "retriever"  # what it was given, not its own call
    assert [n.op.kind for n in node.inputs.values()] == ["retriever", "llm"]
