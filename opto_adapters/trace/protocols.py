"""Python's operators and protocols on nodes, each traced as an operation (as in Trace).

``x + y``, ``x < y``, ``x == y``, ``x[i]``, ``-x``, ``x.upper()``, ``a, b = pair``... on nodes
return computed nodes, recorded in the graph by the primitives of ``operators``. Python forces
a plain result for a few protocols, so these are not traced: ``bool(x)`` (the truth of the
value, so ``if x == y:`` works), ``len(x)`` (use ``x.len()``) and ``y in x`` (use
``operators.in_(y, x)``). Hashing stays by identity, so nodes still work as dict keys and in
sets whatever ``==`` returns.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NodeProtocols"]

_operators: Any = None


def _ops() -> Any:
    """The ``operators`` module (imported on first use: it is built on ``bundle``)."""
    global _operators
    if _operators is None:
        from . import operators

        _operators = operators
    return _operators


def _text_only(node: Any, method: str) -> None:
    if not isinstance(node.value, str):
        raise AttributeError(
            f"{type(node.value).__name__} node {node.name!r} has no method {method!r} (string "
            f"methods on a node need a str value); use node.call({method!r}, ...) for a method "
            "of another type"
        )


class NodeProtocols:
    """The operator and protocol methods of ``Node`` (a mixin: it holds no data)."""

    __slots__ = ()
    __hash__ = object.__hash__  # by identity, although == returns a node

    # -- plain results (Python requires them) -----------------------------------------------

    def __bool__(self) -> bool:
        return bool(self.value)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.value)  # type: ignore[attr-defined]

    def __contains__(self, item: Any) -> bool:
        from .nodes import Node

        return (item.value if isinstance(item, Node) else item) in self.value  # type: ignore[attr-defined]

    # -- comparisons ------------------------------------------------------------------------

    def __eq__(self, other: object) -> Any:  # type: ignore[override]
        return _ops().eq(self, other)

    def __ne__(self, other: object) -> Any:  # type: ignore[override]
        return _ops().neq(self, other)

    def __lt__(self, other: Any) -> Any:
        return _ops().lt(self, other)

    def __le__(self, other: Any) -> Any:
        return _ops().le(self, other)

    def __gt__(self, other: Any) -> Any:
        return _ops().gt(self, other)

    def __ge__(self, other: Any) -> Any:
        return _ops().ge(self, other)

    def eq(self, other: Any) -> Any:
        """``self == other`` as a node."""
        return _ops().eq(self, other)

    def neq(self, other: Any) -> Any:
        """``self != other`` as a node."""
        return _ops().neq(self, other)

    # -- arithmetic and bitwise -------------------------------------------------------------

    def __add__(self, other: Any) -> Any:
        return _ops().add(self, other)

    def __radd__(self, other: Any) -> Any:
        return _ops().add(other, self)

    def __sub__(self, other: Any) -> Any:
        return _ops().subtract(self, other)

    def __rsub__(self, other: Any) -> Any:
        return _ops().subtract(other, self)

    def __mul__(self, other: Any) -> Any:
        return _ops().multiply(self, other)

    def __rmul__(self, other: Any) -> Any:
        return _ops().multiply(other, self)

    def __truediv__(self, other: Any) -> Any:
        return _ops().divide(self, other)

    def __rtruediv__(self, other: Any) -> Any:
        return _ops().divide(other, self)

    def __floordiv__(self, other: Any) -> Any:
        return _ops().floor_divide(self, other)

    def __rfloordiv__(self, other: Any) -> Any:
        return _ops().floor_divide(other, self)

    def __mod__(self, other: Any) -> Any:
        return _ops().mod(self, other)

    def __rmod__(self, other: Any) -> Any:
        return _ops().mod(other, self)

    def __divmod__(self, other: Any) -> Any:
        return _ops().node_divmod(self, other)

    def __rdivmod__(self, other: Any) -> Any:
        return _ops().node_divmod(other, self)

    def __pow__(self, other: Any) -> Any:
        return _ops().power(self, other)

    def __rpow__(self, other: Any) -> Any:
        return _ops().power(other, self)

    def __lshift__(self, other: Any) -> Any:
        return _ops().lshift(self, other)

    def __rlshift__(self, other: Any) -> Any:
        return _ops().lshift(other, self)

    def __rshift__(self, other: Any) -> Any:
        return _ops().rshift(self, other)

    def __rrshift__(self, other: Any) -> Any:
        return _ops().rshift(other, self)

    def __and__(self, other: Any) -> Any:
        return _ops().and_(self, other)

    def __rand__(self, other: Any) -> Any:
        return _ops().and_(other, self)

    def __or__(self, other: Any) -> Any:
        return _ops().or_(self, other)

    def __ror__(self, other: Any) -> Any:
        return _ops().or_(other, self)

    def __xor__(self, other: Any) -> Any:
        return _ops().xor(self, other)

    def __rxor__(self, other: Any) -> Any:
        return _ops().xor(other, self)

    def __neg__(self) -> Any:
        return _ops().neg(self)

    def __pos__(self) -> Any:
        return _ops().pos(self)

    def __abs__(self) -> Any:
        return _ops().abs(self)

    def __invert__(self) -> Any:
        return _ops().invert(self)

    def __round__(self, n: Any = None) -> Any:
        return _ops().round(self, n)

    def __floor__(self) -> Any:
        return _ops().floor(self)

    def __ceil__(self) -> Any:
        return _ops().ceil(self)

    def __trunc__(self) -> Any:
        return _ops().trunc(self)

    # -- containers -------------------------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        return _ops().getitem(self, key)

    def __iter__(self) -> Any:
        """Items as nodes (``x[0]``, ``x[1]``...): lists, tuples and strings by position, dicts
        by key (like iterating a dict), sets through a list."""
        ops = _ops()
        value = self.value  # type: ignore[attr-defined]
        if isinstance(value, (list, tuple, str)):
            seq: Any = self
        elif isinstance(value, dict):
            seq = ops.keys(self)
        elif isinstance(value, (set, frozenset)):
            seq = ops.to_list(self)
        else:
            raise TypeError(
                f"node {self.name!r} holds a value of type {type(value).__name__}, which cannot be iterated "  # type: ignore[attr-defined]
                "(only lists, tuples, strings, dicts and sets can)"
            )
        return iter([ops.getitem(seq, i) for i in range(len(seq.value))])

    def len(self) -> Any:
        """``len(value)`` as a node (``len(node)`` itself must return an int)."""
        return _ops().len_(self)

    def keys(self) -> Any:
        """The keys of a dict node, as a node of a list."""
        return _ops().keys(self)

    def values(self) -> Any:
        """The values of a dict node, as a node of a list."""
        return _ops().values(self)

    def items(self) -> list[tuple[Any, Any]]:
        """``(key, value)`` pairs of a dict node, each a node."""
        ops = _ops()
        keys = ops.keys(self)
        pairs = []
        for i in range(len(keys.value)):
            key = ops.getitem(keys, i)
            pairs.append((key, ops.getitem(self, key)))
        return pairs

    # -- objects ----------------------------------------------------------------------------

    def getattr(self, key: Any) -> Any:
        """The attribute ``key`` of the value, as a node."""
        return _ops().node_getattr(self, key)

    def call(self, fun: str, *args: Any, **kwargs: Any) -> Any:
        """Call the value's method ``fun`` with ``args``, as one traced operation."""
        return _ops().call_method(self, fun, *args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the value (a function held in a node) as one traced operation."""
        if not callable(self.value):  # type: ignore[attr-defined]
            raise TypeError(
                f"node {self.name!r} holds a value of type {type(self.value).__name__}, which cannot be called"  # type: ignore[attr-defined]
            )
        return _ops().call(self, *args, **kwargs)

    def clone(self) -> Any:
        """A copy of the value, as a node computed from this one."""
        return _ops().clone(self)

    # -- strings ----------------------------------------------------------------------------

    def format(self, *args: Any, **kwargs: Any) -> Any:
        _text_only(self, "format")
        return _ops().format(self, *args, **kwargs)

    def capitalize(self) -> Any:
        _text_only(self, "capitalize")
        return _ops().capitalize(self)

    def lower(self) -> Any:
        _text_only(self, "lower")
        return _ops().lower(self)

    def upper(self) -> Any:
        _text_only(self, "upper")
        return _ops().upper(self)

    def swapcase(self) -> Any:
        _text_only(self, "swapcase")
        return _ops().swapcase(self)

    def title(self) -> Any:
        _text_only(self, "title")
        return _ops().title(self)

    def split(self, sep: Any = None, maxsplit: Any = -1) -> Any:
        _text_only(self, "split")
        return _ops().split(self, sep, maxsplit)

    def strip(self, chars: Any = None) -> Any:
        _text_only(self, "strip")
        return _ops().strip(self, chars)

    def replace(self, old: Any, new: Any, count: Any = -1) -> Any:
        _text_only(self, "replace")
        return _ops().replace(self, old, new, count)

    def join(self, seq: Any) -> Any:
        _text_only(self, "join")
        return _ops().join(self, *seq)
