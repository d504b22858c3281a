"""Trainable parameters: typed, validated values, optionally bound to a live object.

A ``Parameter`` is a graph leaf the optimizer may change. Every write is typed for its kind,
validated, and goes through its ``Binding`` when it mirrors a live object (a prompt, a tool
description...). ``apply_updates`` writes several at once, all or none.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from .coercion import as_number, as_text, like_json, unencodable
from .nodes import Node
from .templates import template_variables

__all__ = [
    "KINDS",
    "READ_LOG",
    "Binding",
    "Parameter",
    "ParameterNode",
    "RestoreError",
    "ValidationError",
    "apply_updates",
    "iter_parameters",
    "node",
    "parameters_by_name",
]

KINDS = ("text", "prompt", "tool_description", "code", "number", "json")
_TEXT_KINDS = frozenset({"text", "prompt", "tool_description", "code"})
_MISSING: Any = object()
_UNNAMED = itertools.count()
"""Numbers the default names of unnamed trainable nodes (``param0``, ``param1``...)."""


class ReadLog:
    """The parameters whose value was read while a bundled function ran (see ``bundle``):
    ``depth`` counts the calls running in this context, ``reads`` is shared by them (each
    call keeps the part after its own start). A log belongs to the thread that made it: a
    context copied into another thread (``asyncio.to_thread``) does not write to it."""

    __slots__ = ("depth", "reads", "thread", "paused")

    def __init__(self) -> None:
        self.depth = 0
        self.reads: list[Parameter] = []
        self.thread = threading.get_ident()
        self.paused = 0  # inside stop_tracing(): operations record no inputs


READ_LOG: ContextVar[ReadLog | None] = ContextVar("opto_adapters_read_log", default=None)


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
        log = READ_LOG.get()
        if log is not None and log.depth and log.thread == threading.get_ident():
            log.reads.append(self)
        return self.binding.get() if self.binding is not None else self._value

    def peek(self) -> Any:
        """The value, without counting as a read by a running bundle (for the library)."""
        return self.binding.get() if self.binding is not None else self._value

    @value.setter
    def value(self, new: Any) -> None:
        self.set(new)

    @property
    def _data(self) -> Any:  # Trace programs use it; a write is validated like any other
        return self.peek()

    @_data.setter
    def _data(self, value: Any) -> None:
        self.set(value)

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
        reason = unencodable(typed) or self._reason(typed)
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
            return as_text(value)
        if self.kind == "number":
            return as_number(value, like=self.value)
        return like_json(self.value, value)

    def _reason(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable, or ``None``."""
        if self.kind == "code" and isinstance(value, str):
            try:
                compile(value, f"<{self.name}>", "exec")
            except SyntaxError as exc:
                return f"code does not compile: {exc.msg} (line {exc.lineno})"
            except (ValueError, RecursionError, MemoryError) as exc:
                return f"code cannot be compiled: {type(exc).__name__}: {exc}"
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

    # -- copies ------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the lock and the recorded feedback (a copy starts with none)."""
        state = {}
        for klass in type(self).__mro__:
            for slot in getattr(klass, "__slots__", ()):
                if slot not in ("__weakref__", "_lock", "_feedback") and hasattr(self, slot):
                    state[slot] = getattr(self, slot)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for slot, value in state.items():
            object.__setattr__(self, slot, value)
        self._lock = threading.RLock()
        self._feedback = []

    def __deepcopy__(self, memo: dict[int, Any]) -> Parameter:
        """An independent parameter with a copy of the value (a bound one keeps its binding:
        it still mirrors the same live object)."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return new


class RestoreError(RuntimeError):
    """A write failed part way and putting the previous values back failed too: the named
    live objects may hold half-written values. The write's own error is ``__cause__``."""

    def __init__(self, failed: Parameter, error: BaseException, unrestored: Mapping[str, str]) -> None:
        self.unrestored = dict(unrestored)
        lines = "; ".join(f"{name}: {reason}" for name, reason in self.unrestored.items())
        super().__init__(
            f"writing {failed.name!r} failed ({type(error).__name__}: {error}) and restoring the "
            f"previous value failed too for {lines}; these live objects may hold half-written "
            "values: check them, or set them again"
        )


def apply_updates(
    updates: Mapping[Parameter, Any], *, checked: Iterable[Parameter] = ()
) -> dict[Parameter, Any]:
    """Write several new values atomically: all are valid and written, or none is.

    Returns the previous values. Raises ``ValidationError`` listing every rejected value. If a
    binding fails mid-way, every parameter touched (the failing one too, since its binding may
    have changed the live object before it raised) gets its previous value back and the error
    is re-raised; if a restore fails as well, ``RestoreError`` says which. ``checked``: the
    parameters whose value is what their ``convert`` returned just now (an optimizer's step);
    those are written without being converted and validated a second time.
    """
    typed: dict[Parameter, Any] = {}
    errors: dict[str, str] = {}
    trusted = {id(p) for p in checked}  # (by identity: == on nodes builds a node)
    for param, value in updates.items():
        if not isinstance(param, Parameter):
            raise TypeError(f"apply_updates expects Parameter keys, got {type(param).__name__}")
        if id(param) in trusted:
            typed[param] = value
            continue
        try:
            typed[param] = param.convert(value)
        except ValidationError as exc:
            errors.update(exc.errors)
    if errors:
        raise ValidationError(errors)
    previous = {param: param.value for param in typed}
    touched: list[Parameter] = []
    try:
        for param, value in typed.items():
            touched.append(param)
            param._write(value)
    except BaseException as exc:
        unrestored: dict[str, str] = {}
        for param in reversed(touched):
            try:
                param._write(previous[param])
            except Exception as restore_exc:
                unrestored[param.name] = f"{type(restore_exc).__name__}: {restore_exc}"
        if unrestored:
            raise RestoreError(touched[-1], exc, unrestored) from exc
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

    A node passed in is returned as is, unless ``trainable=True`` asks for a parameter: then a
    trainable parameter is returned as is and any other node gives a new parameter holding
    its value (named after it), as in Trace. ``kind`` defaults to ``number`` for numbers,
    ``json`` for lists, dicts and booleans, and ``text`` for strings. An unnamed trainable
    node is called ``param0``, ``param1``... (unique in the process; name parameters you
    save, so the names are the same in the next run).
    """
    if isinstance(value, Node):
        if not trainable or (isinstance(value, Parameter) and value.trainable):
            return value
        name = value.name if name is None else name
        description = description or value.description
        if isinstance(value, Parameter):
            kind = kind or value.kind
            constraint = constraint or value.constraint
        value = value.value
    if trainable:
        if kind is None:
            kind = _default_kind(value)
        return Parameter(
            value,
            name=f"param{next(_UNNAMED)}" if name is None else name,
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


ParameterNode = Parameter
"""Trace's name for a trainable node."""


def iter_parameters(items: Any) -> Iterator[Parameter]:
    """Parameters in ``items`` (one or an iterable), in order, each once."""
    seen: set[int] = set()
    for item in [items] if isinstance(items, Parameter) else items:
        if not isinstance(item, Parameter):
            raise TypeError(f"expected Parameter objects, got {type(item).__name__}")
        if id(item) not in seen:
            seen.add(id(item))
            yield item


def parameters_by_name(parameters: Iterable[Parameter]) -> dict[str, Parameter]:
    """``{name: parameter}``, each parameter once; raises ``ValueError`` if two share a name
    (names key suggestions, saved files and stored versions)."""
    named: dict[str, Parameter] = {}
    for p in iter_parameters(list(parameters)):
        if p.name in named:
            raise ValueError(
                f"two parameters are named {p.name!r}; give them distinct names to save or load"
            )
        named[p.name] = p
    return named
