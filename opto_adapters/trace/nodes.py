"""Nodes of an OPTO graph: plain and computed values, errors, operations and feedback.

A graph is whatever is reachable from an output node through ``inputs``; there is no
registry, so a run's nodes are freed together with its output. Trainable leaves are
``Parameter`` objects (see ``parameters``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .names import check_name
from .protocols import NodeProtocols

__all__ = ["ExceptionNode", "Feedback", "MessageNode", "Node", "Op"]


@dataclass(frozen=True)
class Op:
    """An operation: its name (as shown in ``#Code``), what it does (``#Documentation``) and,
    for steps of a framework run, what kind of step it is (``llm``, ``tool``, ``retriever``,
    ``prompt``, ``parser``, ``chain``...; see ``opto_adapters.runs.KINDS``)."""

    name: str
    doc: str = ""
    kind: str = ""


@dataclass(frozen=True)
class BundleOp(Op):
    """The operation of a bundled function. ``varargs`` names its ``*args`` parameter (if
    any): inputs ``<varargs>[i]`` were passed positionally and are shown without a keyword.
    ``file`` and ``line`` say where the function is defined (see ``Node.info``)."""

    varargs: str = ""
    file: str = ""
    line: int = 0


@dataclass(frozen=True)
class Feedback:
    """Feedback on an output: a score, a text, or both (empty text is allowed, as in Trace:
    the optimizer then sees the trace and the outputs only)."""

    score: float | None = None
    text: str = ""

    def __post_init__(self) -> None:
        if self.score is not None and (
            isinstance(self.score, bool) or not isinstance(self.score, (int, float))
        ):
            raise TypeError(f"Feedback.score must be a number or None, got {self.score!r}")
        if self.score is not None and not math.isfinite(self.score):
            raise ValueError(f"Feedback.score must be a finite number, got {self.score}")
        if not isinstance(self.text, str):
            raise TypeError(f"Feedback.text must be a str, got {type(self.text).__name__}")

    @classmethod
    def of(cls, feedback: object) -> Feedback:
        """Coerce a str, a number or a ``Feedback`` into a ``Feedback``."""
        if isinstance(feedback, Feedback):
            return feedback
        if isinstance(feedback, str):
            return cls(text=feedback)
        if isinstance(feedback, (int, float)) and not isinstance(feedback, bool):
            return cls(score=float(feedback))
        raise TypeError(
            f"feedback must be a str, a number or Feedback(score=..., text=...), "
            f"got {type(feedback).__name__}: {feedback!r:.80}"
        )

    def __str__(self) -> str:
        if self.score is None:
            return self.text
        score = f"score: {self.score:g}"
        return f"{score}\n{self.text}" if self.text else score


EXTERNAL = "__external"
"""Inputs named ``__external[i]`` are nodes a bundle read without being passed them
(``bundle(allow_external_dependencies=True)``)."""
EXPANDED = "__expanded"
"""The input holding the graph a ``bundle(traceable_code=True)`` function built inside."""


class Node(NodeProtocols):
    """A value in one trace, with the named inputs it was computed from.

    ``op`` is ``None`` for leaves (inputs and parameters). ``inputs`` maps each argument name
    of the operation to the node that filled it, in call order. Python's operators and
    protocols on a node are traced operations (see ``protocols``); hashing is by identity.
    """

    __slots__ = ("name", "_value", "inputs", "op", "description", "__weakref__")

    def __init__(
        self,
        value: Any,
        *,
        name: str = "value",
        inputs: Mapping[str, Node] | None = None,
        op: Op | None = None,
        description: str = "",
    ) -> None:
        self.name = check_name(name)
        self._value = value
        self.inputs: dict[str, Node] = dict(inputs) if inputs else {}
        for arg, parent in self.inputs.items():
            if not isinstance(parent, Node):
                raise TypeError(
                    f"input {arg!r} of node {name!r} must be a Node, got {type(parent).__name__}"
                )
        if self.inputs and op is None:
            raise ValueError(f"node {name!r} has inputs but no op: pass op=Op(name, doc)")
        self.op = op
        self.description = description

    @property
    def value(self) -> Any:
        return self._value

    @property
    def data(self) -> Any:
        """The value (Trace's name for it)."""
        return self.value

    @property
    def _data(self) -> Any:  # Trace programs use it: the value, read without tracing
        return self._value

    @_data.setter
    def _data(self, value: Any) -> None:
        self._value = value

    @property
    def _inputs(self) -> dict[str, Node]:  # Trace's name for inputs
        return self.inputs

    @property
    def info(self) -> dict[str, Any]:
        """Where this node comes from: its operation, the file and line of the function, its
        inputs by argument, and the nodes it read without being passed them."""
        op = self.op
        inputs = {
            a: n for a, n in self.inputs.items() if not a.startswith(EXTERNAL) and a != EXPANDED
        }
        return {
            "name": self.name,
            "op": op.name if op else None,
            "doc": op.doc if op else "",
            "file": getattr(op, "file", ""),
            "line": getattr(op, "line", 0),
            "inputs": inputs,
            "external_dependencies": [
                n for a, n in self.inputs.items() if a.startswith(EXTERNAL)
            ],
            "expanded": self.inputs.get(EXPANDED),
        }

    @property
    def parents(self) -> tuple[Node, ...]:
        """The input nodes, in argument order."""
        return tuple(self.inputs.values())

    @property
    def is_leaf(self) -> bool:
        return self.op is None

    @property
    def trainable(self) -> bool:
        return False

    def backward(
        self,
        feedback: str | float | Feedback = "",
        *,
        retain_graph: bool = True,
        visualize: bool = False,
    ) -> Any:
        """Propagate ``feedback`` on this output to every trainable parameter it depends on;
        returns the ``Subgraph`` (``.to_dot()`` draws it). ``retain_graph`` and ``visualize``
        are accepted for Trace programs: the graph is never consumed, and the returned
        subgraph is the picture."""
        from .graph import backward

        return backward(self, feedback)

    def detach(self) -> Node:
        """A copy of this node without its inputs (``copy.deepcopy`` does the same)."""
        return copy.deepcopy(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> Node:
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.name = self.name
        new._value = copy.deepcopy(self._value, memo)
        new.inputs = {}
        new.op = None
        new.description = self.description
        return new

    def __repr__(self) -> str:
        from .render import short_repr

        kind = "op=" + self.op.name if self.op else "leaf"
        return f"{type(self).__name__}(name={self.name!r}, {kind}, value={short_repr(self.value, 60)})"


MessageNode = Node
"""Trace's name for a computed node (here every node is a ``Node``; ``op`` tells them apart)."""


class ExceptionNode(Node):
    """The output of an operation that raised. Its value reads as the error text, as in
    Trace (``"(ZeroDivisionError) division by zero"``); ``exception`` is the exception."""

    __slots__ = ("traceback",)

    def __init__(
        self,
        exception: BaseException,
        *,
        name: str = "error",
        inputs: Mapping[str, Node] | None = None,
        op: Op | None = None,
        traceback: str = "",
        description: str = "",
    ) -> None:
        if not isinstance(exception, BaseException):
            raise TypeError(f"ExceptionNode needs an exception, got {type(exception).__name__}")
        super().__init__(
            exception, name=name, inputs=inputs, op=op or Op("raise"), description=description
        )
        self.traceback = traceback

    @property
    def value(self) -> str:
        return f"({type(self._value).__name__}) {self._value}"

    @property
    def exception(self) -> BaseException:
        return self._value

    def __deepcopy__(self, memo: dict[int, Any]) -> ExceptionNode:
        new = super().__deepcopy__(memo)
        new.op = self.op
        new.traceback = self.traceback
        return new

    def error_text(self) -> str:
        """``Type: message`` followed by the traceback, as shown to the optimizer."""
        head = f"{type(self._value).__name__}: {self._value}"
        return f"{head}\n{self.traceback}" if self.traceback else head


def __getattr__(name: str) -> Any:
    """Trace's ``opto.trace.nodes`` also holds ``node`` and ``ParameterNode``; they live in
    ``parameters`` here (imported on first use: it builds on this module)."""
    if name in ("node", "ParameterNode", "Parameter"):
        from . import parameters

        return getattr(parameters, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
