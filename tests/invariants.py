"""The invariant every traced app must keep, checked against a recording fake model.

Issue 10, point 3: in one root run, every chat-model / LLM call the framework made is a node
of that run's graph, and every discovered parameter whose text was sent to a model in that run
is an ancestor of the output (``graph.nodes`` is the output and all its ancestors, so "in
``graph.parameters``" is the same thing).

``check_run(tracer, graph, calls)`` asserts it. ``calls`` are the fake's calls of that run as
``ModelCall`` (what it received, what it returned); the adapters' shape factories
(``tests/shapes_langchain.py``, ``tests/shapes_llama_index.py``) turn their fakes' records into
these. Every problem found is listed in one assertion message, with the graph.

Uses the public API only: ``tracer.parameters``, ``graph.nodes`` / ``graph.parameters`` /
``graph.output`` / ``graph.to_text()``, ``node.op.kind``, ``node.parents``, ``node.value``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from opto_adapters.trace import Node, Parameter
from opto_adapters.trace.render import format_value

__all__ = [
    "MIN_PIECE",
    "ModelCall",
    "StepResult",
    "ancestors",
    "assert_ancestor",
    "assert_in_graph",
    "check_step",
    "check_run",
    "is_ancestor",
    "label",
    "llm_node_of",
    "llm_nodes",
    "nodes_of_kind",
    "normalize",
    "opto_warnings",
    "optoprime_step",
    "param_holding",
    "section",
    "sent_in",
    "value_texts",
]

MIN_PIECE = 12
"""A template counts as sent when every literal piece this long (between its variables) is in
one call's input, in order. Shorter pieces ("\\n", ": ") prove nothing."""

# ``{name}`` variables, and the ``{{`` / ``}}`` escapes (sent as one brace by str.format, kept
# as two by LlamaIndex's formatter): both split a template into its literal pieces.
_SPLIT = re.compile(r"\{\{|\}\}|\{[A-Za-z_][\w.\[\]]*\}")
_VARIABLE = re.compile(r"(?<!\{)\{[A-Za-z_][\w.\[\]]*\}(?!\})")


@dataclass(frozen=True)
class ModelCall:
    """One model call as the provider saw it."""

    received: str
    """Every message's text and every tool name and description sent with the call."""
    returned: str
    """The text of the reply (``""`` for a reply that only calls tools)."""
    tool_calls: tuple[str, ...] = ()
    """The names of the tools the reply called."""
    tool_args: tuple[dict[str, Any], ...] = field(default=(), compare=False)
    """The arguments of those tool calls, in the same order."""

    def __str__(self) -> str:
        reply = self.returned or f"tool calls {list(self.tool_calls)}"
        return f"reply {_clip(reply, 80)!r} to input {_clip(self.received, 120)!r}"


def normalize(text: str) -> str:
    """Whitespace collapsed: graphs and renderers may reflow text."""
    return " ".join(str(text).split())


def _clip(text: str, limit: int) -> str:
    text = normalize(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def value_texts(value: Any, _depth: int = 0) -> Iterator[str]:
    """Every text a node value holds: the value as the optimizer sees it, and the strings
    inside it (message contents, tool-call names and arguments, response texts)."""
    if _depth > 6:
        return
    if isinstance(value, str):
        yield value
        return
    yield format_value(value, None)
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("name", "content", "text", "args", "arguments", "tool_name"):
                yield from value_texts(item, _depth + 1)
            elif isinstance(item, (dict, list, tuple, str)) or hasattr(item, "content"):
                yield from value_texts(item, _depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from value_texts(item, _depth + 1)
        return
    for attr in ("content", "text", "response", "message", "delta", "blocks", "tool_calls"):
        try:
            item = getattr(value, attr, None)
        except Exception:  # a property that raises on an odd object
            continue
        if item is not None and item is not value:
            yield from value_texts(item, _depth + 1)
    for attr in ("tool_name", "name"):
        item = getattr(value, attr, None)
        if isinstance(item, str):
            yield item
    kwargs = getattr(value, "tool_kwargs", None)
    if isinstance(kwargs, dict):
        yield json.dumps(kwargs)


def _holds(node: Node, text: str) -> bool:
    want = normalize(text)
    return any(want in normalize(t) for t in value_texts(node.value))


def nodes_of_kind(graph: Any, kind: str) -> list[Node]:
    """The graph's nodes whose operation is of this kind (``llm``, ``tool``...), in order."""
    return [n for n in graph.nodes if n.op is not None and n.op.kind == kind]


def llm_nodes(graph: Any) -> list[Node]:
    return nodes_of_kind(graph, "llm")


def llm_node_of(graph: Any, call: ModelCall) -> Node:
    """The one llm node whose value carries this call's reply (replies must be distinct)."""
    found = [n for n in llm_nodes(graph) if _reply_in(n, call)]
    assert len(found) == 1, (
        f"expected exactly one llm node holding the {call}; found {len(found)}: "
        f"{[label(graph, n) for n in found]}\n{graph.to_text()}"
    )
    return found[0]


def _reply_parts(call: ModelCall) -> list[str]:
    parts = [call.returned] if call.returned.strip() else []
    return parts + list(call.tool_calls)


def _reply_in(node: Node, call: ModelCall) -> bool:
    parts = _reply_parts(call)
    return bool(parts) and all(_holds(node, p) for p in parts)


def _reply_is(node: Node, call: ModelCall) -> bool:
    """Whether the node's value is the reply itself (not a text that quotes it)."""
    if not call.returned.strip():
        return _reply_in(node, call)
    want = normalize(call.returned)
    return any(normalize(t) == want for t in value_texts(node.value))


def ancestors(node: Node) -> list[Node]:
    """Every node ``node`` was computed from (not ``node`` itself), nearest first."""
    seen = {id(node)}
    order: list[Node] = []
    frontier = list(node.parents)
    while frontier:
        nxt: list[Node] = []
        for n in frontier:
            if id(n) not in seen:
                seen.add(id(n))
                order.append(n)
                nxt.extend(n.parents)
        frontier = nxt
    return order


def is_ancestor(ancestor: Node, node: Node) -> bool:
    return any(a is ancestor for a in ancestors(node))


def label(graph: Any, node: Node) -> str:
    """The node's name as ``graph.to_text()`` shows it (unique in the graph)."""
    return graph.names().get(id(node), node.name)


def assert_ancestor(graph: Any, ancestor: Node, node: Node, why: str) -> None:
    a, n = label(graph, ancestor), label(graph, node)
    assert is_ancestor(ancestor, node), (
        f"{why}: {a!r} is not an ancestor of {n!r} (parents of {n!r}: "
        f"{[label(graph, p) for p in node.parents]})\n{graph.to_text()}"
    )


def sent_in(value: Any, received: Iterable[str]) -> bool | None:
    """Whether a parameter's text was sent in one of the calls' inputs.

    Plain text: it is a substring of one input. A template with ``{variables}``: every literal
    piece of at least ``MIN_PIECE`` characters between the variables is in one input, in
    order. ``None`` when the text cannot tell (not text, blank, or a template with no piece
    that long, such as ``"{question}"``).
    """
    if not isinstance(value, str) or not value.strip():
        return None
    inputs = [normalize(r) for r in received]
    if not _VARIABLE.search(value):
        plain = normalize(value)
        unescaped = normalize(value.replace("{{", "{").replace("}}", "}"))
        return any(plain in r or unescaped in r for r in inputs)
    pieces = [normalize(p) for p in _SPLIT.split(value)]
    pieces = [p for p in pieces if len(p) >= MIN_PIECE]
    if not pieces:
        return None
    return any(_in_order(pieces, r) for r in inputs)


def _in_order(pieces: Sequence[str], text: str) -> bool:
    at = 0
    for piece in pieces:
        found = text.find(piece, at)
        if found < 0:
            return False
        at = found + len(piece)
    return True


def check_run(tracer: Any, graph: Any, calls: Sequence[ModelCall]) -> None:
    """Assert the invariant for one root run (see the module docstring).

    (a) there are as many ``op.kind == "llm"`` nodes as model calls; (b) each call's reply (its
    text, and the names of the tools it called) is in some llm node's value; (c) each trainable
    parameter of ``tracer`` whose text was sent in one of the calls is in ``graph.parameters``.
    """
    assert graph is not None, (
        f"no graph was recorded for a run that made {len(calls)} model call(s): "
        + "; ".join(f"call {i + 1}: {c}" for i, c in enumerate(calls))
    )
    problems: list[str] = []
    llms = llm_nodes(graph)
    if len(llms) != len(calls):
        kinds = sorted({n.op.kind or "<none>" for n in graph.nodes if n.op is not None})
        problems.append(
            f"(a) {len(llms)} node(s) with op.kind == 'llm' for {len(calls)} model call(s) "
            f"(llm nodes: {[label(graph, n) for n in llms]}; op kinds in the graph: {kinds})"
        )
    for i, call in enumerate(calls, 1):
        if not _reply_parts(call):
            continue
        if any(_reply_in(n, call) for n in llms):
            continue
        exact = [
            f"{label(graph, n)} (op {n.op.name!r}, kind {n.op.kind!r})"
            for n in graph.nodes
            if n.op is not None and _reply_is(n, call)
        ]
        if exact:
            hint = f"; it is the value of non-llm node(s) {exact}: op.kind not 'llm'?"
        elif any(_reply_in(n, call) for n in graph.nodes):
            hint = "; it shows only inside other values (a later step's input): the call is lost"
        else:
            hint = "; no node of the graph holds it: the call is lost"
        problems.append(f"(b) call {i}: no llm node holds the {call}{hint}")
    in_graph = {p.name for p in graph.parameters}
    received = [c.received for c in calls]
    # parameters holding the same text (a template and its chat branch's copy, say) cannot be
    # told apart by what the model received: one of each such group must be in the graph
    groups: dict[str, list[Any]] = {}
    for param in tracer.parameters:
        key = normalize(param.value) if isinstance(param.value, str) else f"<{id(param)}>"
        groups.setdefault(key, []).append(param)
    for same in groups.values():
        if any(p.name in in_graph for p in same) or not sent_in(same[0].value, received):
            continue
        names = " / ".join(repr(p.name) for p in same)
        problems.append(
            f"(c) parameter {names} was sent to the model in this run but is not in "
            f"graph.parameters (value {_clip(str(same[0].value), 80)!r})"
        )
    assert not problems, (
        f"{len(problems)} problem(s) in a run with {len(calls)} model call(s):\n  "
        + "\n  ".join(problems)
        + f"\ngraph.parameters: {sorted(in_graph)}\n{graph.to_text()}"
    )


# -- one OptoPrime step through the scripted server --------------------------------------------


def section(prompt: str, name: str) -> str:
    """The body of ``#name`` in an OPTO problem instance (up to the next ``#Section`` line)."""
    match = re.search(rf"^#{name}\n(.*?)(?=^#[A-Z][a-z]+\n|\Z)", prompt, re.S | re.M)
    assert match, f"no #{name} section in the optimizer request:\n{prompt}"
    return match.group(1)


@dataclass
class StepResult:
    record: Any
    request: str
    variables: str


def optoprime_step(
    parameters: Sequence[Parameter],
    output: Node,
    feedback: str,
    suggestion: dict[str, Any],
    server: Any,
) -> StepResult:
    """Backward ``feedback`` on ``output`` and one OptoPrime step whose reply (scripted on
    ``server``) suggests ``suggestion``; the suggestion must be applied."""
    from opto_adapters.llm import LLM
    from opto_adapters.optimizers import OptoPrime

    llm = LLM(base_url=server.base_url, api_key="k", model="optimizer", backoff_base=0.01)
    opt = OptoPrime(list(parameters), llm)
    opt.zero_feedback()
    opt.backward(output, feedback)
    server.script(json.dumps({"reasoning": "scripted", "suggestion": suggestion}))
    before = len(server.prompts())
    record = opt.step()
    prompts = server.prompts()
    assert len(prompts) == before + 1, "the optimizer sent no request"
    request = prompts[-1]
    variables = section(request, "Variables")
    return StepResult(record, request, variables)


def check_step(
    tracer: Any,
    graph: Any,
    changes: dict[Any, str],
    server: Any,
    rerun: Any,
    feedback: str = "The answer is too vague; be specific.",
) -> StepResult:
    """One OptoPrime step that appends ``changes[param]`` to each parameter, then:

    - the optimizer request's ``#Variables`` section shows each parameter;
    - the next run (``rerun()`` returns its model calls) sends each new text to the model;
    - ``graph`` (recorded before the step) still shows the old values, not the new ones.
    """
    old = {p.name: p.value for p in changes}
    suggestion = {p.name: p.value + suffix for p, suffix in changes.items()}
    result = optoprime_step(tracer.parameters, graph.output, feedback, suggestion, server)
    for param in changes:
        assert param.name in result.variables, (
            f"the optimizer request's #Variables section does not show {param.name!r}; it "
            f"shows:\n{result.variables}\n--- the whole request:\n{result.request}"
        )
    assert set(result.record.applied) == set(suggestion), (
        f"applied {sorted(result.record.applied)}, rejected {result.record.rejected}; "
        f"wanted {sorted(suggestion)}"
    )
    calls = rerun()
    for param, suffix in changes.items():
        assert any(normalize(suffix) in normalize(c.received) for c in calls), (
            f"the run after the step did not send the new text of {param.name!r} "
            f"(...{suffix!r}) to the model; its {len(calls)} call(s) received:\n"
            + "\n---\n".join(c.received for c in calls)
        )
    shown = normalize(graph.to_text(value_chars=100_000))
    for param, suffix in changes.items():
        assert normalize(suffix) not in shown and normalize(old[param.name]) in shown, (
            f"the graph recorded before the step should show the value {param.name!r} had in "
            f"that run ({_clip(old[param.name], 80)!r}), not the new one (with "
            f"{suffix!r}):\n{graph.to_text(value_chars=200)}"
        )
    return result


def param_holding(tracer: Any, text: str) -> Parameter:
    """The tracer's one trainable parameter whose value holds ``text``."""
    found = [
        p
        for p in tracer.parameters
        if isinstance(p.value, str) and normalize(text) in normalize(p.value)
    ]
    assert len(found) == 1, (
        f"expected one parameter holding {_clip(text, 80)!r}, found {[p.name for p in found]}; "
        f"the tracer's parameters: {[(p.name, _clip(str(p.value), 40)) for p in tracer.parameters]}"
    )
    return found[0]


def assert_in_graph(graph: Any, *params: Parameter) -> None:
    names = {p.name for p in graph.parameters}
    missing = [p.name for p in params if p.name not in names]
    assert not missing, (
        f"parameter(s) {missing} not in graph.parameters {sorted(names)}\n{graph.to_text()}"
    )


def opto_warnings(caplog: Any) -> list[str]:
    """Warnings (and worse) logged by ``opto_adapters*`` loggers."""
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("opto_adapters") and r.levelno >= 30
    ]
