"""The run model: one run of an app as a tree of spans, whatever framework recorded it.

A span is one step: a chain, a prompt, a model call, a retrieval, a tool call, a parser...
with its inputs and output (framework-neutral values, see ``values``), its error, its place
in the tree and what the framework told us explicitly: the trainable parameters it used and
the links it carries (the id of the tool call a tool run answers). Adapters translate their
callbacks or instrumentation events into spans; ``builder.build_graph`` turns a span tree
into an OPTO graph. A span tree can be written to plain data and read back (``to_data`` /
``from_data``), so runs recorded elsewhere can be imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..trace import Parameter
from .values import from_data as value_from_data
from .values import to_data as value_to_data

__all__ = ["FLOWS", "KINDS", "Span", "tree"]

KINDS = (
    "chain",  # a composition of steps, or a function of the user's
    "prompt",  # fills templates with variables
    "llm",  # a chat model or completion model call
    "retriever",  # returns documents for a query
    "tool",  # runs a tool with arguments a model chose
    "parser",  # turns a model's output into the app's value
    "embedding",  # embeds text
    "agent",  # an agent's whole run (a loop of model and tool calls)
    "query",  # a query engine's run
    "synthesize",  # fills a prompt with retrieved context and asks the model
    "chat",  # a chat engine's turn
)
"""The kinds of span; graph nodes made from spans carry theirs as ``node.op.kind``."""

FLOWS = ("free", "sequence", "parallel")
"""How a span's children pass data: ``sequence``: each child gets the previous child's output;
``parallel``: each gets the span's input; ``free``: found from the values (user code)."""


@dataclass(eq=False)
class Span:
    """One step of a run (see the module docstring).

    ``parameters`` are ``(argument, Parameter)`` pairs the step used, known explicitly (a
    prompt's templates, the tools offered to a model). ``links`` holds explicit references:
    ``tool_call_id`` (the model's tool call this tool run answers). ``label`` is the node name
    in the graph, ``name`` the operation's name in ``#Code`` and ``doc`` what it does.
    ``keep``: the step is a node of the graph even when its output is just its children's
    (a query engine, a tool that calls runnables). ``passthrough``: its output is its input.
    ``usage``: for a model call, the tokens its provider reported and its latency
    (``prompt_tokens``, ``completion_tokens``, ``latency`` in seconds, each when known; see
    ``runs.usage``).
    """

    id: str
    kind: str = "chain"
    name: str = ""
    parent_id: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    error: BaseException | str | None = None
    order: int = 0
    parameters: list[tuple[str, Parameter]] = field(default_factory=list)
    links: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    doc: str = ""
    flow: str = "free"
    keep: bool = False
    passthrough: bool = False
    usage: dict[str, float] = field(default_factory=dict)
    children: list[Span] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown span kind {self.kind!r}; expected one of {KINDS}")
        if self.flow not in FLOWS:
            raise ValueError(f"unknown span flow {self.flow!r}; expected one of {FLOWS}")

    def walk(self) -> Iterator[Span]:
        """This span and every span below it, parents before children (no recursion)."""
        stack = [self]
        while stack:
            span = stack.pop()
            yield span
            stack.extend(reversed(span.children))

    def __repr__(self) -> str:
        return f"Span({self.kind}:{self.name or self.label!r}, children={len(self.children)})"

    # -- plain data ------------------------------------------------------------------------

    def to_data(self) -> dict[str, Any]:
        """This span alone as JSON-able data (``parent_id`` ties the tree together);
        parameters by name."""
        data: dict[str, Any] = {"id": self.id, "kind": self.kind, "name": self.name}
        if self.parent_id is not None:
            data["parent_id"] = self.parent_id
        data["order"] = self.order
        data["inputs"] = value_to_data(self.inputs)
        data["output"] = value_to_data(self.output)
        if self.error is not None:
            err = self.error
            data["error"] = f"{type(err).__name__}: {err}" if isinstance(err, BaseException) else err
        if self.parameters:
            data["parameters"] = [[arg, p.name] for arg, p in self.parameters]
        for key in ("links", "label", "doc"):
            if getattr(self, key):
                data[key] = value_to_data(getattr(self, key))
        if self.flow != "free":
            data["flow"] = self.flow
        if self.keep:
            data["keep"] = True
        if self.passthrough:
            data["passthrough"] = True
        if self.usage:
            data["usage"] = dict(self.usage)
        return data

    @classmethod
    def from_data(
        cls, data: Mapping[str, Any], parameters: Mapping[str, Parameter] | None = None
    ) -> Span:
        """A span from ``to_data``'s output; parameter names are looked up in ``parameters``
        (names not found are left out)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("id"), str):
            raise ValueError(f"a span needs a string 'id', got {str(data)[:120]!r}")
        params = parameters or {}
        used = [
            (str(arg), params[name])
            for arg, name in data.get("parameters") or ()
            if name in params
        ]
        return cls(
            id=data["id"],
            kind=str(data.get("kind", "chain")),
            name=str(data.get("name", "")),
            parent_id=data.get("parent_id"),
            inputs=dict(value_from_data(data.get("inputs") or {})),
            output=value_from_data(data.get("output")),
            error=data.get("error"),
            order=int(data.get("order", 0)),
            parameters=used,
            links=dict(data.get("links") or {}),
            label=str(data.get("label", "")),
            doc=str(data.get("doc", "")),
            flow=str(data.get("flow", "free")),
            keep=bool(data.get("keep", False)),
            passthrough=bool(data.get("passthrough", False)),
            usage={
                str(k): float(v) for k, v in (data.get("usage") or {}).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            },
        )


def tree(spans: Iterable[Span], *, on_orphan: Callable[[Span], None] | None = None) -> list[Span]:
    """Link flat spans into trees by ``parent_id``; children in ``order``. Returns the roots.

    A span whose parent is not among ``spans`` is a root (``on_orphan`` is told when it
    names a parent that is missing).
    """
    spans = list(spans)
    by_id = {s.id: s for s in spans}
    roots: list[Span] = []
    for s in spans:
        s.children = []
    for s in spans:
        parent = by_id.get(s.parent_id) if s.parent_id is not None else None
        if parent is None or parent is s:
            if s.parent_id is not None and on_orphan is not None:
                on_orphan(s)
            roots.append(s)
        else:
            parent.children.append(s)
    for s in spans:
        s.children.sort(key=lambda c: c.order)
    roots.sort(key=lambda r: r.order)
    return roots
