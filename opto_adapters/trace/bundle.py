"""``@bundle``: trace a call of a Python function as one operation of the graph."""

from __future__ import annotations

import inspect
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from .code import FunctionShape, check_function, compile_function, function_source
from .names import check_name
from .nodes import ExceptionNode, Node, Op
from .parameters import Parameter, ValidationError

__all__ = ["Bundle", "BundleOp", "ExecutionError", "bundle"]

F = TypeVar("F", bound=Callable[..., Any])


class ExecutionError(Exception):
    """A bundled function raised. ``node`` is the traced error (an ``ExceptionNode``): give
    feedback on it like on any output; ``exception`` is what the function raised."""

    def __init__(self, node: ExceptionNode) -> None:
        self.node = node
        self.exception = node.exception
        op = node.op.name if node.op else "operation"
        super().__init__(
            f"{op}() raised {type(node.exception).__name__}: {node.exception}. "
            "The error is traced as err.node; give feedback on it with err.node.backward(...)"
        )


@dataclass(frozen=True)
class BundleOp(Op):
    """The operation of a bundled function. ``varargs`` names its ``*args`` parameter (if
    any): inputs ``<varargs>[i]`` were passed positionally and are shown without a keyword."""

    varargs: str = ""


def _new_node(cls: type[Node], value: Any, name: str, inputs: dict[str, Node], op: Op | None) -> Any:
    """Build a node without re-validating a name already checked (the per-call hot path)."""
    n = cls.__new__(cls)
    n.name = name
    n._value = value
    n.inputs = inputs
    n.op = op
    n.description = ""
    return n


def _doc_summary(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n", 1)[0].strip()


class Bundle:
    """A function whose calls are recorded as one operation each (see ``bundle``)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        trainable: bool = False,
        catch_exceptions: bool = True,
        constraint: str = "",
    ) -> None:
        if not callable(fn):
            raise TypeError(
                f"bundle() expects a function to trace, got {type(fn).__name__}: {fn!r:.80}; "
                "use it as @bundle() above a def"
            )
        op_name = check_name(name or getattr(fn, "__name__", type(fn).__name__))
        self.fn = fn
        self.catch_exceptions = catch_exceptions
        self.__name__ = op_name
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            sig = None
        positional: list[str] = []
        self._var_positional = "args"
        if sig is not None:
            for p in sig.parameters.values():
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                    positional.append(p.name)
                elif p.kind is p.VAR_POSITIONAL:
                    self._var_positional = p.name
        self._positional = tuple(positional)
        doc = description if description is not None else _doc_summary(fn)
        self.op: Op = BundleOp(op_name, doc, varargs=self._var_positional)
        self.parameter: Parameter | None = None
        self._shape: FunctionShape | None = None
        self._compiled: tuple[str, Callable[..., Any]] | None = None
        self._compile_lock = threading.Lock()
        if trainable:
            self.parameter = self._code_parameter(constraint)

    # -- trainable code ----------------------------------------------------------------------

    def _code_parameter(self, constraint: str) -> Parameter:
        fname = getattr(self.fn, "__name__", self.__name__)
        try:
            source = function_source(self.fn, drop=lambda obj: obj is bundle or obj is Bundle)
        except (OSError, TypeError) as exc:
            raise TypeError(
                f"bundle(trainable=True) needs the source of {self.__name__!r} ({exc}); "
                "define it in a .py file, not in the interactive prompt or with exec"
            ) from None
        try:
            shape = FunctionShape.of(source, fname)
        except ValueError as exc:
            raise TypeError(
                f"bundle(trainable=True) needs a function defined with def: {exc}"
            ) from None
        self._shape = shape
        self._compiled = (source, self.fn)
        return Parameter(
            source,
            name=f"{fname}_code",
            kind="code",
            description=f"The Python source of {fname}(); a new version is run on the next call.",
            constraint=constraint
            or (
                f"Exactly one function: keep `{shape.shown}` (its name, arguments, defaults and "
                "decorators) and change only the body; nothing else at the top level (imports go "
                "inside the function); only module globals are in scope."
            ),
            validator=lambda src: check_function(src, shape),
        )

    def _function(self) -> Callable[..., Any]:
        if self.parameter is None or self._shape is None:
            return self.fn
        source = self.parameter.value
        compiled = self._compiled
        if compiled is not None and compiled[0] == source:
            return compiled[1]
        with self._compile_lock:
            try:
                fn = compile_function(source, self._shape, self.fn)
            except ValueError as exc:  # a value that bypassed the parameter's validator
                raise ValidationError({self.parameter.name: f"refused to run: {exc}"}) from None
            self._compiled = (source, fn)
        return fn

    # -- calls -------------------------------------------------------------------------------

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return _BoundBundle(self, instance)

    def __call__(self, *args: Any, **kwargs: Any) -> Node:
        return self._call((), args, kwargs)

    def _call(self, bound: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Node:
        inputs: dict[str, Node] = {}
        names = self._positional
        offset = len(bound)
        values: list[Any] = list(bound)
        for i, arg in enumerate(args, offset):
            name = names[i] if i < len(names) else f"{self._var_positional}[{i - len(names)}]"
            values.append(_take(name, arg, inputs))
        kwvalues = {k: _take(k, v, inputs) for k, v in kwargs.items()} if kwargs else kwargs
        if self.parameter is not None:
            inputs["__code"] = self.parameter
        fn = self._function()
        if not self.catch_exceptions:
            result = fn(*values, **kwvalues)
        else:
            try:
                result = fn(*values, **kwvalues)
            except Exception as exc:
                raise ExecutionError(self._error_node(exc, inputs)) from exc
        if isinstance(result, Node):
            result = result.value
        return _new_node(Node, result, self.op.name, inputs, self.op)

    def _error_node(self, exc: Exception, inputs: dict[str, Node]) -> ExceptionNode:
        tb = exc.__traceback__
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next  # drop the frame of _call itself
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        node = ExceptionNode(exc, name=f"{self.op.name}_error", inputs=inputs, op=self.op, traceback=text)
        return node

    def __repr__(self) -> str:
        extra = ", trainable" if self.parameter is not None else ""
        return f"<bundle {self.op.name}{extra}>"


class _BoundBundle:
    """A bundled method bound to an instance; the instance is not recorded as an input."""

    __slots__ = ("_bundle", "_instance")

    def __init__(self, bundle_: Bundle, instance: Any) -> None:
        self._bundle = bundle_
        self._instance = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Node:
        return self._bundle._call((self._instance,), args, kwargs)

    @property
    def parameter(self) -> Parameter | None:
        return self._bundle.parameter


def _take(name: str, arg: Any, inputs: dict[str, Node]) -> Any:
    """Record ``arg`` as the input ``name`` and return the plain value to call with."""
    if isinstance(arg, Node):
        inputs[name] = arg
        return arg.value
    if isinstance(arg, (list, tuple)) and any(isinstance(a, Node) for a in arg):
        items = [_take(f"{name}[{i}]", a, inputs) for i, a in enumerate(arg)]
        return type(arg)(items) if isinstance(arg, list) else tuple(items)
    if isinstance(arg, dict) and any(isinstance(a, Node) for a in arg.values()):
        return {k: _take(f"{name}[{k}]", a, inputs) for k, a in arg.items()}
    try:
        inputs[name] = _new_node(Node, arg, check_name(name), {}, None)
    except ValueError:  # e.g. a dict key that is not a valid name: keep the value, unnamed
        inputs[name] = _new_node(Node, arg, "value", {}, None)
    return arg


@overload
def bundle(fn: F) -> Bundle: ...


@overload
def bundle(
    fn: None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    trainable: bool = False,
    catch_exceptions: bool = True,
    constraint: str = "",
) -> Callable[[Callable[..., Any]], Bundle]: ...


def bundle(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    trainable: bool = False,
    catch_exceptions: bool = True,
    constraint: str = "",
) -> Any:
    """Trace each call of a function as one operation: ``@bundle()`` or ``@bundle``.

    Arguments may be nodes or plain values (recorded as inputs named after the argument); the
    function receives plain values and its result becomes a computed ``Node`` named after the
    operation (renderers add ``1``, ``2``... to repeats, see ``display_names``).
    ``description`` documents the operation (default: the docstring's first paragraph).
    ``trainable=True`` makes the function's own source a ``code`` parameter
    (``.parameter``); the next call runs the current version. With ``catch_exceptions`` (the
    default) an exception becomes an ``ExceptionNode`` raised inside ``ExecutionError``.
    """
    options = dict(
        name=name,
        description=description,
        trainable=trainable,
        catch_exceptions=catch_exceptions,
        constraint=constraint,
    )
    if fn is not None:
        return Bundle(fn, **options)

    def decorate(f: Callable[..., Any]) -> Bundle:
        return Bundle(f, **options)

    return decorate
