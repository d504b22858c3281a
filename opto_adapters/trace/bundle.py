"""``@bundle``: trace a call of a Python function as one operation of the graph."""

from __future__ import annotations

import functools
import importlib
import inspect
import pickle
import re
import threading
import traceback
from collections.abc import Callable
from typing import Any, TypeVar, overload

from .code import FunctionShape, check_function, compile_function, function_source
from .graph import topological_order
from .names import check_name
from .nodes import EXPANDED, EXTERNAL, BundleOp, ExceptionNode, Node, Op
from .parameters import READ_LOG, Parameter, ReadLog, ValidationError

__all__ = ["INSTANCE_STATE", "Bundle", "BundleOp", "ExecutionError", "ExternalDependencyError", "TraceMissingInputsError", "bundle", "stop_tracing"]

F = TypeVar("F", bound=Callable[..., Any])
_OP_IN_DESCRIPTION = re.compile(r"^\s*\[([A-Za-z_][\w.]*)\]\s*(.*)$", re.S)
"""Trace's descriptions start with the operation's name: ``"[cond] Select x or y."``."""
INSTANCE_STATE = "__opto_trace__"
"""The instance attribute holding a bundled method's per-instance state (see ``Bundle``)."""


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

    @property
    def exception_node(self) -> ExceptionNode:
        """The traced error (Trace's name for ``node``)."""
        return self.node

    def __reduce__(self) -> Any:
        return (type(self), (self.node,))


class ExternalDependencyError(RuntimeError):
    """A bundled function read parameters it was not passed: feedback could not reach them."""


TraceMissingInputsError = ExternalDependencyError
"""Trace's name for ``ExternalDependencyError``."""


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


def _where(fn: Callable[..., Any]) -> tuple[str, int]:
    code = getattr(inspect.unwrap(fn), "__code__", None)
    return (code.co_filename, code.co_firstlineno) if code is not None else ("", 0)


class _Instance:
    """What a bundled method keeps per instance: the node recorded as ``self`` and, for a
    trainable method, the instance's own copy of the bundle (its own code parameter)."""

    __slots__ = ("self_node", "copies")

    def __init__(self, instance: Any) -> None:
        self.self_node = Node(instance, name="self")
        self.copies: dict[str, Bundle] = {}


class Bundle:
    """A function whose calls are recorded as one operation each (see ``bundle``).

    As a method of a class, the instance is recorded as the input ``self``, and a trainable
    method has one code parameter per instance (made from the class's on first use, kept in
    the instance), so a step on one object never rewrites another's code.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        trainable: bool = False,
        catch_exceptions: bool = True,
        constraint: str = "",
        allow_external_dependencies: bool = False,
        traceable_code: bool = False,
    ) -> None:
        if not callable(fn):
            raise TypeError(
                f"bundle() expects a function to trace, got {type(fn).__name__}: {fn!r:.80}; "
                "use it as @bundle() above a def"
            )
        op_name = check_name(name or getattr(fn, "__name__", type(fn).__name__))
        self.fn = fn
        self.catch_exceptions = catch_exceptions
        self.allow_external_dependencies = allow_external_dependencies
        self.traceable_code = traceable_code
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__name__ = op_name
        self.__qualname__ = getattr(fn, "__qualname__", op_name)
        self.__module__ = getattr(fn, "__module__", None)
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
        file, line = _where(fn)
        self.op: Op = BundleOp(op_name, doc, varargs=self._var_positional, file=file, line=line)
        self.parameter: Parameter | None = None
        self._shape: FunctionShape | None = None
        self._source: str | None = None
        self._compiled: tuple[str, Callable[..., Any]] | None = None
        self._compile_lock = threading.Lock()
        self._key = f"{self.__qualname__}"
        self._origin: Bundle | None = None
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
        self._source = source
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
            validator=functools.partial(check_function, shape=shape),
        )

    def _function(self) -> Callable[..., Any]:
        """The function to run: the current version of the code parameter, compiled once.
        Raises what defining it raised (``ValidationError`` if the version is refused)."""
        if self.parameter is None or self._shape is None:
            return self.fn
        source = self.parameter.peek()
        compiled = self._compiled
        if compiled is not None and compiled[0] == source:
            return compiled[1]
        with self._compile_lock:
            if source == self._source:
                fn = self.fn
            else:
                try:
                    fn = compile_function(source, self._shape, self.fn)
                except ValueError as exc:  # a value that bypassed the parameter's validator
                    raise ValidationError({self.parameter.name: f"refused to run: {exc}"}) from None
            self._compiled = (source, fn)
        return fn

    @property
    def info(self) -> dict[str, Any]:
        """The function's name, source (without ``@bundle``), file and first line."""
        source = self._source
        if source is None:
            try:
                source = function_source(self.fn, drop=lambda obj: obj is bundle or obj is Bundle)
            except (OSError, TypeError):
                source = ""
        op = self.op
        return {
            "name": op.name,
            "doc": op.doc,
            "source": source.rstrip("\n"),
            "file": getattr(op, "file", ""),
            "line_number": getattr(op, "line", 0),
        }

    def parameters(self) -> list[Parameter]:
        """The code parameter, if trainable (Trace's ``fun.parameters()``)."""
        return [self.parameter] if self.parameter is not None else []

    def save(self, path: Any) -> Any:
        """Write the code parameter to a JSON file (see ``save_parameters``)."""
        from .modules import save_parameters

        return save_parameters(self.parameters(), path)

    def load(self, path: Any) -> None:
        """Load the code parameter from a file written by ``save``."""
        from .modules import load_parameters

        load_parameters(self.parameters(), path)

    # -- per instance ------------------------------------------------------------------------

    def __set_name__(self, owner: type, name: str) -> None:
        self._key = f"{owner.__qualname__}.{name}"

    def _instance(self, instance: Any) -> tuple[Bundle, Node]:
        """The bundle to run for ``instance`` (its own copy if trainable) and its ``self``."""
        state = getattr(instance, "__dict__", {}).get(INSTANCE_STATE)
        if state is None:
            try:
                state = vars(instance).setdefault(INSTANCE_STATE, _Instance(instance))
            except TypeError:  # no __dict__ (__slots__): nothing kept per instance
                return self, Node(instance, name="self")
        if self.parameter is None:
            return self, state.self_node
        own = state.copies.get(self._key)
        if own is None:
            own = state.copies.setdefault(self._key, self._copy())
        return own, state.self_node

    def _copy(self, parameter: Parameter | None = None) -> Bundle:
        """A bundle running the same function with its own code parameter (a copy of this
        one's, or ``parameter``)."""
        new = object.__new__(Bundle)
        new.__dict__.update(self.__dict__)
        new._compile_lock = threading.Lock()
        new._origin = self._origin or self
        if parameter is None and self.parameter is not None:
            parameter = Parameter.__deepcopy__(self.parameter, {})
        new.parameter = parameter
        return new

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        own, self_node = self._instance(instance)
        return _BoundBundle(own, instance, self_node)

    # -- copies and pickles ------------------------------------------------------------------

    def __deepcopy__(self, memo: dict[int, Any]) -> Bundle:
        import copy

        param = copy.deepcopy(self.parameter, memo) if self.parameter is not None else None
        new = self._copy(param)
        memo[id(self)] = new
        return new

    def __reduce__(self) -> Any:
        if self._origin is not None:
            return (_restore_copy, (self._origin, self.parameter))
        module, qualname = self.__module__, self.__qualname__
        if not module or "<locals>" in qualname:
            raise pickle.PicklingError(
                f"cannot pickle the bundle {self.__name__!r}: it is defined inside a function; "
                "define it at module level (or as a method of a module-level class)"
            )
        return (_find_bundle, (module, qualname))

    # -- calls -------------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(None, args, kwargs)

    def _call(self, bound: tuple[Any, Node] | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        inputs: dict[str, Node] = {}
        names = self._positional
        values: list[Any] = []
        if bound is not None:
            inputs[names[0] if names else "self"] = bound[1]
            values.append(bound[0])
        for i, arg in enumerate(args, len(values)):
            name = names[i] if i < len(names) else f"{self._var_positional}[{i - len(names)}]"
            if isinstance(arg, Node):  # the common case, inlined
                inputs[name] = arg
                values.append(arg.value)
            else:
                values.append(_take(name, arg, inputs))
        kwvalues = {k: _take(k, v, inputs) for k, v in kwargs.items()} if kwargs else kwargs
        if self.traceable_code:  # the function gets the nodes, so what it does is traced
            offset = len(values) - len(args)
            named = zip(args, self._arg_names(offset, len(args)), strict=True)
            values[offset:] = [_as_node(a, n, inputs) for a, n in named]
            kwvalues = {k: _as_node(v, k, inputs) for k, v in kwargs.items()}
        if self.parameter is not None:
            inputs["__code"] = self.parameter
        if self.is_async:
            return self._acall(values, kwvalues, inputs)
        fn = self.fn if self.parameter is None else self._define(inputs)
        log = READ_LOG.get()
        if log is None or log.thread != threading.get_ident():
            log = ReadLog()
            READ_LOG.set(log)
        reads = log.reads
        start = len(reads)
        log.depth += 1
        try:
            result = fn(*values, **kwvalues)
        except Exception as exc:
            log.depth -= 1
            del reads[start:]
            if not self.catch_exceptions or isinstance(exc, ExternalDependencyError):
                raise  # a mistake in the program, not an error for the optimizer to fix
            raise ExecutionError(self._error_node(exc, inputs)) from exc
        except BaseException:
            log.depth -= 1
            del reads[start:]
            raise
        log.depth -= 1
        if log.paused:  # stop_tracing(): a node with no inputs
            del reads[start:]
            value = result.value if isinstance(result, Node) else result
            return _new_node(Node, value, self.op.name, {}, self.op)
        if len(reads) == start and not isinstance(result, Node):  # the common case
            return _new_node(Node, result, self.op.name, inputs, self.op)
        read = reads[start:]
        del reads[start:]
        return self._output(result, inputs, read)

    async def _acall(self, values: list[Any], kwvalues: dict[str, Any], inputs: dict[str, Node]) -> Node:
        fn = self._define(inputs)
        log = ReadLog()
        log.depth = 1
        token = READ_LOG.set(log)  # this coroutine's own log: other tasks may interleave
        try:
            if not self.catch_exceptions:
                result = await fn(*values, **kwvalues)
            else:
                try:
                    result = await fn(*values, **kwvalues)
                except ExternalDependencyError:
                    raise
                except Exception as exc:
                    raise ExecutionError(self._error_node(exc, inputs)) from exc
        finally:
            READ_LOG.reset(token)
        return self._output(result, inputs, log.reads)

    def _define(self, inputs: dict[str, Node]) -> Callable[..., Any]:
        """The function to run; an error while defining a new version of the code is an
        error of this call (``ExecutionError``, the code parameter among its inputs)."""
        if self.parameter is None:
            return self.fn
        try:
            return self._function()
        except ValidationError:
            raise
        except Exception as exc:
            if not self.catch_exceptions:
                raise
            raise ExecutionError(self._error_node(exc, inputs, defining=True)) from exc

    def _arg_names(self, offset: int, count: int) -> list[str]:
        names = self._positional
        return [
            names[i] if i < len(names) else f"{self._var_positional}[{i - len(names)}]"
            for i in range(offset, offset + count)
        ]

    def _output(self, result: Any, inputs: dict[str, Node], read: list[Parameter]) -> Node:
        if self.traceable_code and isinstance(result, Node):
            # the function's own graph: shown expanded, feedback flows through it
            inside = {id(n) for n in topological_order(result)}
            read = [p for p in read if id(p) not in inside]
            if read:
                self._external(read, inputs)
            inputs[EXPANDED] = result
            return _new_node(Node, result.value, self.op.name, inputs, self.op)
        if isinstance(result, Node):
            if isinstance(result, Parameter) and not any(result is n for n in inputs.values()):
                read = [*read, result]
            result = result.value if not isinstance(result, Parameter) else result.peek()
        if read:
            self._external(read, inputs)
        return _new_node(Node, result, self.op.name, inputs, self.op)

    def _external(self, read: list[Parameter], inputs: dict[str, Node]) -> None:
        """Check the parameters the function read: any not among ``inputs`` is an external
        dependency, refused (feedback could not reach it) or, if allowed, added as an input."""
        known = {id(n) for n in inputs.values()}
        extra: list[Parameter] = []
        for p in read:
            if id(p) not in known:
                known.add(id(p))
                extra.append(p)
        if not extra:
            return
        if not self.allow_external_dependencies:
            names = ", ".join(repr(p.name) for p in extra)
            raise ExternalDependencyError(
                f"{self.op.name}() read the parameter(s) {names} without being passed them, so "
                "feedback on its output could not reach them. Pass them as arguments (e.g. "
                f"{self.op.name}(..., {extra[0].name}=...)), or use "
                "@bundle(allow_external_dependencies=True) to record them as inputs"
            )
        base = sum(1 for a in inputs if a.startswith(EXTERNAL))
        for i, p in enumerate(extra, base):
            inputs[f"{EXTERNAL}[{i}]"] = p

    def _error_node(self, exc: Exception, inputs: dict[str, Node], *, defining: bool = False) -> ExceptionNode:
        tb = exc.__traceback__
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next  # drop the frame of _call itself
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        if defining and self.parameter is not None:
            text = (
                f"defining the new version of {self.parameter.name} raised (its decorators or "
                f"default values):\n{text}"
            )
        return ExceptionNode(exc, name=f"{self.op.name}_error", inputs=inputs, op=self.op, traceback=text)

    def __repr__(self) -> str:
        extra = ", trainable" if self.parameter is not None else ""
        return f"<bundle {self.op.name}{extra}>"


class stop_tracing:  # noqa: N801 - Trace's name
    """``with stop_tracing():`` operations in this thread (and context) return nodes with no
    inputs: their graph is not recorded, as in Trace."""

    def __enter__(self) -> stop_tracing:
        log = READ_LOG.get()
        if log is None or log.thread != threading.get_ident():
            log = ReadLog()
            READ_LOG.set(log)
        self._log = log
        log.paused += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._log.paused -= 1


def _find_bundle(module: str, qualname: str) -> Bundle:
    """The bundle named ``qualname`` in ``module`` (how a bundle is pickled: by reference)."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Bundle):
        raise pickle.UnpicklingError(f"{module}.{qualname} is not a bundle any more")
    return obj


def _restore_copy(origin: Bundle, parameter: Parameter | None) -> Bundle:
    return origin._copy(parameter)


class _BoundBundle:
    """A bundled method bound to an instance (recorded as the input ``self``)."""

    __slots__ = ("_bundle", "_instance", "_self_node")

    def __init__(self, bundle_: Bundle, instance: Any, self_node: Node) -> None:
        self._bundle = bundle_
        self._instance = instance
        self._self_node = self_node

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._bundle._call((self._instance, self._self_node), args, kwargs)

    @property
    def parameter(self) -> Parameter | None:
        return self._bundle.parameter

    def parameters(self) -> list[Parameter]:
        return self._bundle.parameters()

    def __repr__(self) -> str:
        return f"<bound {self._bundle!r} of {type(self._instance).__name__}>"


def _as_node(arg: Any, name: str, inputs: dict[str, Node]) -> Any:
    """What a ``traceable_code`` function gets: the node recorded for the argument (a
    container of nodes as it was passed)."""
    if isinstance(arg, Node):
        return arg
    if isinstance(arg, (list, tuple, dict)) and name not in inputs:
        return arg
    return inputs.get(name, arg)


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
    fn: str | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    trainable: bool = False,
    catch_exceptions: bool = True,
    constraint: str = "",
    allow_external_dependencies: bool = False,
    traceable_code: bool = False,
    catch_execution_error: bool | None = None,
) -> Callable[[Callable[..., Any]], Bundle]: ...


def bundle(
    fn: Callable[..., Any] | str | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    trainable: bool = False,
    catch_exceptions: bool = True,
    constraint: str = "",
    allow_external_dependencies: bool = False,
    traceable_code: bool = False,
    catch_execution_error: bool | None = None,
) -> Any:
    """Trace each call of a function as one operation: ``@bundle()`` or ``@bundle``.

    Arguments may be nodes or plain values (recorded as inputs named after the argument); the
    function receives plain values and its result becomes a computed ``Node`` named after the
    operation (renderers add ``1``, ``2``... to repeats, see ``display_names``). An ``async
    def`` gives an awaitable of the node. ``description`` documents the operation (default:
    the docstring's first paragraph). ``trainable=True`` makes the function's own source a
    ``code`` parameter (``.parameter``); the next call runs the current version. With
    ``catch_exceptions`` (the default) an exception, also one raised while defining a new
    version of the code, becomes an ``ExceptionNode`` raised inside ``ExecutionError``.
    A parameter the function reads without being passed it raises
    ``ExternalDependencyError`` (feedback could not reach it), unless
    ``allow_external_dependencies=True``: then it is recorded as an input too.
    ``catch_execution_error`` is Trace's name for ``catch_exceptions``; as in Trace, the
    description may come first (``@bundle("[op_name] What it does.")``), and a leading
    ``[op_name]`` names the operation.
    ``traceable_code=True`` passes the function the nodes themselves, so the operations it
    does on them are traced too: its result's graph is kept as the input ``__expanded`` of
    the operation's node, shown to the optimizer and reached by feedback.
    """
    if catch_execution_error is not None:  # Trace's name for catch_exceptions
        catch_exceptions = catch_execution_error
    if isinstance(fn, str):  # Trace's first argument is the description: @bundle("[op] ...")
        fn, description = None, fn
    if description is not None and name is None:
        match = _OP_IN_DESCRIPTION.match(description)
        if match:
            name, description = match.group(1), match.group(2).strip()
    options = dict(
        name=name,
        description=description,
        trainable=trainable,
        catch_exceptions=catch_exceptions,
        constraint=constraint,
        allow_external_dependencies=allow_external_dependencies,
        traceable_code=traceable_code,
    )
    if fn is not None:
        return Bundle(fn, **options)

    def decorate(f: Callable[..., Any]) -> Bundle:
        return Bundle(f, **options)

    return decorate
