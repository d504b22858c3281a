"""Nodes of an OPTO graph: plain and computed values, errors, operations and feedback.

A graph is whatever is reachable from an output node through ``inputs``; there is no
registry, so a run's nodes are freed together with its output. Trainable leaves are
``Parameter`` objects (see ``parameters``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .names import check_name

__all__ = ["ExceptionNode", "Feedback", "Node", "Op"]


@dataclass(frozen=True)
class Op:
    """An operation: its name (as shown in ``#Code``), what it does (``#Documentation``) and,
    for steps of a framework run, what kind of step it is (``llm``, ``tool``, ``retriever``,
    ``prompt``, ``parser``, ``chain``...; see ``opto_adapters.runs.KINDS``)."""

    name: str
    doc: str = ""
    kind: str = ""


@dataclass(frozen=True)
class Feedback:
    """Feedback on an output: a score, a text, or both."""

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
        if self.score is None and not self.text.strip():
            raise ValueError("empty feedback: give a score, a text, or both")

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


class Node:
    """A value in one trace, with the named inputs it was computed from.

    ``op`` is ``None`` for leaves (inputs and parameters). ``inputs`` maps each argument name
    of the operation to the node that filled it, in call order.
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
    def parents(self) -> tuple[Node, ...]:
        """The input nodes, in argument order."""
        return tuple(self.inputs.values())

    @property
    def is_leaf(self) -> bool:
        return self.op is None

    @property
    def trainable(self) -> bool:
        return False

    def backward(self, feedback: str | float | Feedback) -> Any:
        """Propagate ``feedback`` on this output to every trainable parameter it depends on."""
        from .graph import backward

        return backward(self, feedback)

    def __repr__(self) -> str:
        from .render import short_repr

        kind = "op=" + self.op.name if self.op else "leaf"
        return f"{type(self).__name__}(name={self.name!r}, {kind}, value={short_repr(self.value, 60)})"


class ExceptionNode(Node):
    """The output of an operation that raised: its value is the exception."""

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
    def exception(self) -> BaseException:
        return self._value

    def error_text(self) -> str:
        """``Type: message`` followed by the traceback, as shown to the optimizer."""
        head = f"{type(self._value).__name__}: {self._value}"
        return f"{head}\n{self.traceback}" if self.traceback else head
