"""Graphs of one run, backward propagation of feedback, and ways to look at a trace.

Everything here is linear in the size of the graph: one iterative depth-first walk for the
topological order, sets keyed by ``id`` for membership, no recursion (a 10,000-step chain is
fine).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import Any

from .nodes import ExceptionNode, Feedback, Node
from .parameters import Parameter, iter_parameters

__all__ = [
    "Graph",
    "Subgraph",
    "backward",
    "display_names",
    "topological_order",
    "zero_feedback",
]

logger = logging.getLogger("opto_adapters.trace")

MAX_DRAWN_DEPTH = 64
"""``Graph.to_text`` draws indentation this many levels deep, then marks lines ``[depth N]``."""


def topological_order(output: Node) -> list[Node]:
    """``output`` and all its ancestors, every node after its inputs (in argument order)."""
    if not isinstance(output, Node):
        raise TypeError(f"expected a Node, got {type(output).__name__}: {output!r:.80}")
    order: list[Node] = []
    seen = {id(output)}
    stack = [(output, iter(output.inputs.values()))]
    while stack:
        current, parents = stack[-1]
        for parent in parents:
            if id(parent) not in seen:
                seen.add(id(parent))
                stack.append((parent, iter(parent.inputs.values())))
                break
        else:
            stack.pop()
            order.append(current)
    return order


def display_names(nodes: Iterable[Node]) -> dict[int, str]:
    """Readable names, unique within ``nodes`` (keyed by ``id``).

    Parameters keep their own name; other nodes use theirs, and repeats get a short counter in
    the given order (``add``, ``add1``, ``add2``...; ``_1`` after a name ending in a digit, so
    ``p1`` repeats as ``p1_1``). Runs with the same structure get the same names.
    """
    nodes = list(nodes)
    names: dict[int, str] = {}
    taken: set[str] = set()
    for n in nodes:
        if isinstance(n, Parameter) and n.name not in taken:
            names[id(n)] = n.name
            taken.add(n.name)
    counters: dict[str, int] = {}
    for n in nodes:
        if id(n) in names:
            continue
        base = n.name
        name = base
        if name in taken:
            sep = "_" if base[-1].isdigit() else ""
            count = counters.get(base, 0)
            while name in taken:
                count += 1
                name = f"{base}{sep}{count}"
            counters[base] = count
        names[id(n)] = name
        taken.add(name)
    return names


class Graph:
    """The trace of one run: every node the ``output`` was computed from."""

    def __init__(self, output: Node, *, metadata: Mapping[str, Any] | None = None) -> None:
        if not isinstance(output, Node):
            raise TypeError(f"Graph needs an output Node, got {type(output).__name__}")
        self.output = output
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.values: dict[int, Any] = {}
        """The parameter values the run used, by ``id`` of the parameter (see ``value_of``)."""
        self.links: dict[tuple[int, str], str] = {}
        """How inferred edges were found: ``(id(node), argument) -> "containment"``..."""

    def value_of(self, n: Node) -> Any:
        """``n``'s value in this run: for a parameter, the value it had when the run was
        recorded (it may have been changed by an optimizer step since)."""
        if isinstance(n, Parameter) and id(n) in self.values:
            return self.values[id(n)]
        return n.value

    @cached_property
    def nodes(self) -> list[Node]:
        """All nodes, each after its inputs; the output is last."""
        return topological_order(self.output)

    @property
    def parameters(self) -> list[Parameter]:
        """The parameters (trainable or not) this run used."""
        return [n for n in self.nodes if isinstance(n, Parameter)]

    @property
    def failed(self) -> bool:
        return isinstance(self.output, ExceptionNode)

    def backward(self, feedback: str | float | Feedback) -> Subgraph:
        """Propagate ``feedback`` on this graph's output."""
        return backward(self, feedback)

    def names(self) -> dict[int, str]:
        return display_names(self.nodes)

    def edges(self) -> list[tuple[str, str, str]]:
        """``(input name, argument, node name)`` for every edge, in topological order."""
        names = self.names()
        return [
            (names[id(p)], arg, names[id(n)])
            for n in self.nodes
            if self._expanded(n)
            for arg, p in n.inputs.items()
        ]

    def _expanded(self, n: Node) -> bool:
        """Whether ``n``'s inputs belong to this graph (always, for a whole graph)."""
        return True

    def to_dot(self, *, value_chars: int = 40) -> str:
        """The graph in Graphviz DOT: parameters yellow, errors red, the output bold."""
        from .render import short_repr

        names = self.names()
        index = {id(n): i for i, n in enumerate(self.nodes)}
        lines = ["digraph opto {", "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];']
        for n in self.nodes:
            label = names[id(n)]
            if n.op is not None:
                label += f"\n{n.op.name}()"
            label += "\n" + short_repr(self.value_of(n), value_chars)
            style = []
            if isinstance(n, Parameter):
                style.append('style=filled, fillcolor="#fff3b0"')
            elif isinstance(n, ExceptionNode):
                style.append('style=filled, fillcolor="#f4b6b6"')
            elif n.op is None:
                style.append('style=rounded')
            if n is self.output:
                style.append("penwidth=2")
            extra = (", " + ", ".join(style)) if style else ""
            lines.append(f'  n{index[id(n)]} [label="{_dot_escape(label)}"{extra}];')
        for n in self.nodes:
            if not self._expanded(n):
                continue
            for arg, p in n.inputs.items():
                lines.append(f'  n{index[id(p)]} -> n{index[id(n)]} [label="{_dot_escape(arg)}"];')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_text(self, *, value_chars: int = 60) -> str:
        """A plain-text tree from the output down to the leaves; shared nodes appear once.

        Indentation is drawn for the first ``MAX_DRAWN_DEPTH`` levels; deeper lines keep that
        indentation and start with ``[depth N]``, so the text grows linearly with the graph.
        """
        from .render import short_repr

        names = self.names()
        shown: set[int] = set()
        lines: list[str] = []
        stack: list[tuple[Node, str, str, str, Node | None, int]] = [
            (self.output, "", "", "", None, 0)
        ]
        while stack:
            n, prefix, branch, arg, parent_of, depth = stack.pop()
            how = self.links.get((id(parent_of), arg)) if parent_of is not None else None
            label = f"[depth {depth}] " if depth > MAX_DRAWN_DEPTH else ""
            label += (f"{arg} [by {how}]: " if how else f"{arg}: ") if arg else ""
            label += names[id(n)]
            if id(n) in shown:
                lines.append(f"{prefix}{branch}{label} (shown above)")
                continue
            shown.add(id(n))
            if isinstance(n, Parameter):
                label += f" [{n.kind} parameter]"
            elif isinstance(n, ExceptionNode):
                label += f" = {n.op.name if n.op else 'raise'}(...) RAISED"
            elif n.op is not None:
                label += f" = {n.op.name}(...)"
            lines.append(f"{prefix}{branch}{label} -> {short_repr(self.value_of(n), value_chars)}")
            if not self._expanded(n):
                continue
            if not branch or depth >= MAX_DRAWN_DEPTH:
                child_prefix = prefix
            else:
                child_prefix = prefix + ("    " if branch == "└── " else "│   ")
            items = list(n.inputs.items())
            for i in range(len(items) - 1, -1, -1):
                a, p = items[i]
                stack.append(
                    (p, child_prefix, "└── " if i == len(items) - 1 else "├── ", a, n, depth + 1)
                )
        lines.append("")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(output={self.output.name!r}, nodes={len(self.nodes)})"


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Subgraph(Graph):
    """What ``backward`` hands a parameter: the relevant part of a run, and the feedback.

    ``nodes`` holds the nodes on a path from a reached parameter to the output (``on_path``),
    plus the direct inputs of those nodes, in topological order. Direct inputs off the paths
    are shown as plain inputs: their own inputs are not part of the subgraph.
    """

    def __init__(
        self,
        output: Node,
        feedback: Feedback,
        nodes: list[Node],
        on_path: set[int],
        parameters: list[Parameter],
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(output, metadata=metadata)
        self.feedback = feedback
        self.__dict__["nodes"] = nodes
        self.on_path = frozenset(on_path)
        self.parameters_reached = parameters
        self._restricted: dict[frozenset[int], Subgraph] = {}
        self._lock = threading.Lock()

    def _expanded(self, n: Node) -> bool:
        return id(n) in self.on_path

    def restrict(self, parameters: Iterable[Parameter] | Parameter) -> Subgraph:
        """The minimal subgraph for some of the reached parameters (cached)."""
        wanted = {id(p) for p in iter_parameters(parameters)}
        wanted &= {id(p) for p in self.parameters_reached}
        key = frozenset(wanted)
        if len(key) == len(self.parameters_reached):
            return self
        with self._lock:
            cached = self._restricted.get(key)
        if cached is not None:
            return cached
        marked: set[int] = set()
        for n in self.nodes:
            if id(n) in key or (
                id(n) in self.on_path and any(id(p) in marked for p in n.inputs.values())
            ):
                marked.add(id(n))
        sub = _make_subgraph(self.output, self.feedback, self.nodes, marked, self.metadata)
        sub.values, sub.links = self.values, self.links
        with self._lock:
            self._restricted[key] = sub
        return sub


def _make_subgraph(
    output: Node,
    feedback: Feedback,
    order: list[Node],
    marked: set[int],
    metadata: Mapping[str, Any] | None,
) -> Subgraph:
    keep = set(marked)
    for n in order:
        if id(n) in marked:
            keep.update(id(p) for p in n.inputs.values())
    nodes = [n for n in order if id(n) in keep]
    params = [n for n in nodes if isinstance(n, Parameter) and id(n) in marked]
    return Subgraph(output, feedback, nodes, marked, params, metadata=metadata)


def backward(
    output: Node,
    feedback: str | float | Feedback,
    *,
    metadata: Mapping[str, Any] | None = None,
) -> Subgraph:
    """Give ``feedback`` on ``output`` to every trainable parameter with a path to it.

    Each reached parameter records the subgraph (see ``Subgraph``); calls accumulate until
    ``zero_feedback``. Returns the subgraph; its ``parameters_reached`` may be empty.
    """
    values: dict[int, Any] = {}
    links: dict[tuple[int, str], str] = {}
    if isinstance(output, Graph):
        metadata = {**output.metadata, **(metadata or {})}
        values, links = output.values, output.links
        output = output.output
    if not isinstance(output, Node):
        raise TypeError(
            f"backward needs the output Node of a traced run, got {type(output).__name__}: "
            f"{output!r:.80}; wrap plain values with node(...) or use a bundle's return value"
        )
    fb = Feedback.of(feedback)
    order = topological_order(output)
    marked: set[int] = set()
    for n in order:
        if isinstance(n, Parameter):
            if n.trainable:
                marked.add(id(n))
        elif any(id(p) in marked for p in n.inputs.values()):
            marked.add(id(n))
    sub = _make_subgraph(output, fb, order, marked, metadata)
    sub.values, sub.links = values, links
    if not sub.parameters_reached:
        logger.debug("backward: no trainable parameter leads to %r; nothing recorded", output.name)
    for param in sub.parameters_reached:
        param._receive(sub)
    return sub


def zero_feedback(parameters: Iterable[Parameter] | Parameter) -> None:
    """Forget the feedback accumulated on ``parameters``."""
    for p in iter_parameters(parameters):
        p.zero_feedback()
