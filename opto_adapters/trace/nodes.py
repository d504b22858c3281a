"""Nodes of an OPTO graph: plain values, computed values, trainable parameters, errors.

A graph is whatever is reachable from an output node through ``inputs``; there is no
registry, so a run's nodes are freed together with its output.
"""

from __future__ import annotations

import json
import math
import re
import string
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KINDS",
    "Binding",
    "ExceptionNode",
    "Feedback",
    "Node",
    "Op",
    "Parameter",
    "ValidationError",
    "apply_updates",
    "node",
    "safe_name",
    "template_fields",
    "template_variables",
]

KINDS = ("text", "prompt", "tool_description", "code", "number", "json")
_TEXT_KINDS = frozenset({"text", "prompt", "tool_description", "code"})
_NAME_RE = re.compile(r"^[A-Za-z_][\w.\-:/\[\]]{0,127}$")
_NAME_BAD = re.compile(r"[^\w.\-:/\[\]]+")
_MISSING: Any = object()


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid node name, else raise ``ValueError`` saying why."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid node name {name!r}: expected 1-128 characters, starting with a letter or "
            "'_', then letters, digits or any of '_.-:/[]' (no spaces), e.g. 'system_prompt'"
        )
    return name


def safe_name(text: object, *, default: str = "value", max_length: int = 100) -> str:
    """A valid node name made from any text (a run name, a tool name, a key): other characters
    become ``_``, a leading digit gets a ``_``, and the result is cut to ``max_length``."""
    if not 1 <= max_length <= 128:
        raise ValueError(f"max_length must be between 1 and 128, got {max_length}")
    name = _NAME_BAD.sub("_", str(text)).strip("_") or default
    if not re.match(r"[A-Za-z_]", name):
        name = "_" + name
    return name[:max_length]


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


@dataclass(frozen=True)
class Binding:
    """How a parameter reads and writes the live object it mirrors (a prompt, a tool...)."""

    get: Callable[[], Any]
    set: Callable[[Any], None]


class ValidationError(ValueError):
    """One or more suggested values were rejected; nothing was written."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        lines = [f"{name}: {reason}" for name, reason in self.errors.items()]
        super().__init__("rejected, nothing written: " + "; ".join(lines))


_FORMATTER = string.Formatter()


def template_fields(template: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The literal pieces of an f-string style template and the variables between them, in
    order, as ``str.format`` reads it: ``"a {x} b"`` -> ``(("a ", " b"), ("x",))``; ``{{`` is a
    literal brace and ``{a.b}`` / ``{a[0]}`` name ``a``. ``ValueError`` if malformed."""
    literals, names = [""], []
    for literal, field, _, _ in _FORMATTER.parse(template):
        literals[-1] += literal
        if field is not None:
            names.append(re.split(r"[.\[!:]", field, maxsplit=1)[0])
            literals.append("")
    return tuple(literals), tuple(names)


def template_variables(template: str) -> frozenset[str]:
    """The ``{variables}`` of an f-string style template (``{{`` escapes are not variables).

    Raises ``ValueError`` for a malformed template (an unmatched brace).
    """
    return frozenset(template_fields(template)[1])


def _same_type_json(original: Any, value: Any) -> Any:
    """Coerce ``value`` to ``original``'s JSON type; strings are parsed as JSON when needed."""
    if isinstance(value, str) and not isinstance(original, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not JSON-serializable: {exc}") from None
    if original is not None and value is not None:
        want = _json_type(original)
        got = _json_type(value)
        if want != got:
            raise ValueError(f"expected a JSON {want}, got a JSON {got}")
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class Parameter(Node):
    """A trainable leaf: a value the optimizer may change.

    ``kind`` says what the value is (``text``, ``prompt``, ``tool_description``, ``code``,
    ``number``, ``json``) and decides how suggestions are typed and checked. ``constraint`` is
    shown to the optimizer; ``validator(value)`` returns ``None`` when fine or a reason string
    (or raises ``ValueError``). With a ``binding`` the value lives in a live object and every
    write goes through ``binding.set``. A prompt keeps the ``{variables}`` it started with unless
    ``allow_new_variables`` is set (then it may add, never drop); ``variable_parser`` reads
    the variables of a template (f-string style by default).
    """

    __slots__ = (
        "kind",
        "constraint",
        "validator",
        "binding",
        "bounds",
        "variables",
        "allow_new_variables",
        "variable_parser",
        "_trainable",
        "_lock",
        "_feedback",
    )

    def __init__(
        self,
        value: Any = _MISSING,
        *,
        name: str,
        kind: str = "text",
        description: str = "",
        constraint: str = "",
        validator: Callable[[Any], str | None] | None = None,
        binding: Binding | None = None,
        bounds: tuple[float | None, float | None] | None = None,
        variables: frozenset[str] | set[str] | None = None,
        allow_new_variables: bool = False,
        variable_parser: Callable[[str], frozenset[str]] | None = None,
        trainable: bool = True,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown parameter kind {kind!r}: expected one of {', '.join(KINDS)}")
        if binding is not None and value is not _MISSING:
            raise TypeError(
                f"parameter {name!r}: pass either value or binding, not both "
                "(a bound parameter reads its value from the live object)"
            )
        if binding is None and value is _MISSING:
            raise TypeError(f"parameter {name!r} needs a value or a binding")
        super().__init__(None if binding else value, name=name, description=description)
        self.kind = kind
        self.constraint = constraint
        self.validator = validator
        self.binding = binding
        self.bounds = bounds
        self.allow_new_variables = allow_new_variables
        self.variable_parser = variable_parser or template_variables
        self._trainable = trainable
        self._lock = threading.RLock()
        self._feedback: list[Any] = []
        current = self.value
        if variables is None and kind == "prompt" and isinstance(current, str):
            try:
                variables = self.variable_parser(current)
            except ValueError:
                variables = None
        self.variables = frozenset(variables) if variables is not None else None
        reason = self._reason(current)
        if reason is not None:
            raise ValidationError({name: f"initial value is invalid: {reason}"})

    # -- value -------------------------------------------------------------------------------

    @property
    def value(self) -> Any:
        return self.binding.get() if self.binding is not None else self._value

    @value.setter
    def value(self, new: Any) -> None:
        self.set(new)

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, flag: bool) -> None:
        self._trainable = bool(flag)

    def convert(self, value: Any) -> Any:
        """Return ``value`` typed for this parameter's kind, or raise ``ValidationError``."""
        try:
            typed = self._typed(value)
        except ValueError as exc:
            raise ValidationError({self.name: str(exc)}) from None
        reason = self._reason(typed)
        if reason is not None:
            raise ValidationError({self.name: reason})
        return typed

    def set(self, value: Any) -> None:
        """Validate and write ``value`` (through the binding if there is one)."""
        typed = self.convert(value)
        self._write(typed)

    def _write(self, typed: Any) -> None:
        with self._lock:
            if self.binding is not None:
                self.binding.set(typed)
            else:
                self._value = typed

    def _typed(self, value: Any) -> Any:
        if self.kind in _TEXT_KINDS:
            if not isinstance(value, str):
                raise ValueError(f"expected text (str), got {type(value).__name__}: {value!r:.80}")
            return value
        if self.kind == "number":
            return self._number(value)
        return _same_type_json(self.value, value)

    def _number(self, value: Any) -> int | float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError(f"expected a number, got the text {value!r:.80}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {type(value).__name__}: {value!r:.80}")
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value}")
        if isinstance(self.value, int) and not isinstance(self.value, bool):
            if value != int(value):
                raise ValueError(f"expected a whole number, got {value}")
            value = int(value)
        return value

    def _reason(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable, or ``None``."""
        if self.kind == "code" and isinstance(value, str):
            try:
                compile(value, f"<{self.name}>", "exec")
            except SyntaxError as exc:
                return f"code does not compile: {exc.msg} (line {exc.lineno})"
        if self.kind == "number" and self.bounds is not None:
            lo, hi = self.bounds
            if lo is not None and value < lo:
                return f"{value} is below the minimum {lo}"
            if hi is not None and value > hi:
                return f"{value} is above the maximum {hi}"
        if self.variables is not None and isinstance(value, str):
            try:
                got = self.variable_parser(value)
            except ValueError as exc:
                return f"malformed template ({exc}); write literal braces as '{{{{' and '}}}}'"
            missing = sorted(self.variables - got)
            extra = sorted(got - self.variables)
            if missing:
                return f"the template drops the variable(s) {', '.join('{' + v + '}' for v in missing)}; keep every one of {sorted(self.variables)}"
            if extra and not self.allow_new_variables:
                return f"the template introduces unknown variable(s) {', '.join('{' + v + '}' for v in extra)}; only {sorted(self.variables)} are filled in"
        if self.validator is not None:
            try:
                verdict = self.validator(value)
            except ValueError as exc:
                return str(exc) or type(exc).__name__
            if verdict is False:
                return "rejected by the parameter's validator"
            if isinstance(verdict, str):
                return verdict
        return None

    # -- feedback ----------------------------------------------------------------------------

    def _receive(self, subgraph: Any) -> None:
        with self._lock:
            self._feedback.append(subgraph)

    @property
    def feedback(self) -> list[Any]:
        """The subgraphs (with their feedback) propagated to this parameter since the last reset.

        Each is restricted to this parameter: the nodes on its paths to the output, plus their
        direct inputs.
        """
        with self._lock:
            shared = list(self._feedback)
        return [s.restrict([self]) for s in shared]

    def propagated(self) -> list[Any]:
        """The shared subgraphs recorded by ``backward`` (one per call), not restricted."""
        with self._lock:
            return list(self._feedback)

    def zero_feedback(self) -> None:
        with self._lock:
            self._feedback = []


def apply_updates(updates: Mapping[Parameter, Any]) -> dict[Parameter, Any]:
    """Write several new values atomically: all are valid and written, or none is.

    Returns the previous values. Raises ``ValidationError`` listing every rejected value; if a
    binding fails mid-way, the values already written are restored and the error re-raised.
    """
    typed: dict[Parameter, Any] = {}
    errors: dict[str, str] = {}
    for param, value in updates.items():
        if not isinstance(param, Parameter):
            raise TypeError(f"apply_updates expects Parameter keys, got {type(param).__name__}")
        try:
            typed[param] = param.convert(value)
        except ValidationError as exc:
            errors.update(exc.errors)
    if errors:
        raise ValidationError(errors)
    previous = {param: param.value for param in typed}
    written: list[Parameter] = []
    try:
        for param, value in typed.items():
            param._write(value)
            written.append(param)
    except BaseException:
        for param in reversed(written):
            param._write(previous[param])
        raise
    return previous


def node(
    value: Any,
    name: str | None = None,
    *,
    trainable: bool = False,
    description: str = "",
    constraint: str = "",
    kind: str | None = None,
    **parameter_options: Any,
) -> Node:
    """Wrap a value as a graph node; ``trainable=True`` makes it a ``Parameter``.

    A node passed in is returned as is. ``kind`` defaults to ``number`` for numbers, ``json``
    for lists, dicts and booleans, and ``text`` for strings.
    """
    if isinstance(value, Node):
        return value
    if trainable:
        if kind is None:
            kind = _default_kind(value)
        return Parameter(
            value,
            name="param" if name is None else name,
            kind=kind,
            description=description,
            constraint=constraint,
            **parameter_options,
        )
    if constraint or parameter_options or kind:
        raise TypeError("constraint, kind and validators apply to trainable nodes only")
    return Node(value, name="value" if name is None else name, description=description)


def _default_kind(value: Any) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "number"
    return "json"


def iter_parameters(items: Any) -> Iterator[Parameter]:
    """Parameters in ``items`` (one or an iterable), in order, each once."""
    seen: set[int] = set()
    for item in [items] if isinstance(items, Parameter) else items:
        if not isinstance(item, Parameter):
            raise TypeError(f"expected Parameter objects, got {type(item).__name__}")
        if id(item) not in seen:
            seen.add(id(item))
            yield item
