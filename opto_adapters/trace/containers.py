"""Containers of nodes: ``apply_op`` (a traced operation element-wise over lists, tuples and
dicts of nodes), ``contain`` (membership by identity), ``to_data`` (the values inside)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .nodes import Node

__all__ = ["Map", "NodeContainer", "Seq", "apply_op", "contain", "to_data"]


class NodeContainer:
    """A marker for objects holding nodes (``Module`` is one), as in Trace."""


class Seq(list, NodeContainer):  # type: ignore[type-arg]
    """A list whose trainable nodes (also in nested containers) are its ``parameters()``, as
    Trace's ``Seq``: ``Seq([a, b])`` or ``Seq(a, b)``."""

    def __init__(self, *items: Any) -> None:
        one = len(items) == 1 and hasattr(items[0], "__len__") and hasattr(items[0], "__getitem__")
        super().__init__(items[0] if one and not isinstance(items[0], (str, Node)) else items)

    def parameters(self) -> list[Any]:
        from .modules import collect_parameters

        return [p for p in collect_parameters(list(self)) if p.trainable]


class Map(dict, NodeContainer):  # type: ignore[type-arg]
    """A dict whose trainable nodes, keys or values (also in nested containers), are its
    ``parameters()``, as Trace's ``Map``."""

    def parameters(self) -> list[Any]:
        from .modules import collect_parameters

        return [p for p in collect_parameters([*self.keys(), *self.values()]) if p.trainable]


def contain(container: Any, node: Node) -> bool:
    """Whether ``node`` itself is in ``container`` (``in`` compares values: ``==`` on nodes is
    a traced operation whose truth is the values' equality)."""
    return any(node is n for n in container)


def to_data(obj: Any) -> Any:
    """``obj`` with every node replaced by its value, inside lists, tuples, sets and dicts."""
    if isinstance(obj, Node):
        return obj.value
    if isinstance(obj, (list, tuple, set, frozenset)):
        return type(obj)(to_data(x) for x in obj)
    if isinstance(obj, dict):
        return {k: to_data(v) for k, v in obj.items()}
    return obj


def apply_op(op: Callable[..., Any], output: Any, *args: Any, **kwargs: Any) -> Any:
    """Apply ``op`` element by element, as Trace's ``apply_op`` does.

    Arguments that are nodes are passed whole to every application; arguments that are
    containers (of the same type as ``output``: list, tuple, dict or a ``NodeContainer``
    object, attribute by attribute) are taken element by element, recursively; plain values
    in the output are kept. ``output`` is filled in place (a tuple is rebuilt) and returned.
    With no container among the arguments, this is ``op(*args, **kwargs)``.
    """
    inputs = [*args, *kwargs.values()]
    if all(isinstance(x, Node) for x in inputs):
        return op(*args, **kwargs)
    for x in inputs:
        if not isinstance(x, Node) and type(x) is not type(output):
            raise TypeError(
                f"apply_op: every argument must be a node or a {type(output).__name__} like the "
                f"output, got a {type(x).__name__}: {x!r:.80}"
            )
    if isinstance(output, (list, tuple)):
        for x in inputs:
            if not isinstance(x, Node) and len(x) != len(output):
                raise ValueError(
                    f"apply_op: the output has {len(output)} items but an argument has {len(x)}"
                )
        items = []
        for k in range(len(output)):
            k_args = [x if isinstance(x, Node) else x[k] for x in args]
            k_kwargs = {n: v if isinstance(v, Node) else v[k] for n, v in kwargs.items()}
            items.append(apply_op(op, output[k], *k_args, **k_kwargs))
        if isinstance(output, list):
            output[:] = items
            return output
        return type(output)(items)
    if isinstance(output, dict):
        for key in output:
            k_args = [x if isinstance(x, Node) else x[key] for x in args]
            k_kwargs = {n: v if isinstance(v, Node) else v[key] for n, v in kwargs.items()}
            output[key] = apply_op(op, output[key], *k_args, **k_kwargs)
        return output
    if isinstance(output, NodeContainer):  # attribute by attribute
        for key, value in list(vars(output).items()):
            k_args = [x if isinstance(x, Node) else getattr(x, key) for x in args]
            k_kwargs = {n: v if isinstance(v, Node) else getattr(v, key) for n, v in kwargs.items()}
            setattr(output, key, apply_op(op, value, *k_args, **k_kwargs))
        return output
    return output  # a plain value among plain values: kept, as in Trace
