"""``apply_op``: apply a traced operation element-wise over lists, tuples and dicts of nodes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .nodes import Node

__all__ = ["apply_op"]


def apply_op(op: Callable[..., Any], output: Any, *args: Any, **kwargs: Any) -> Any:
    """Apply ``op`` element by element, as Trace's ``apply_op`` does.

    Arguments that are nodes are passed whole to every application; arguments that are
    containers (of the same type as ``output``: list, tuple or dict) are taken element by
    element, recursively. ``output`` is filled in place (a tuple is rebuilt) and returned.
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
    raise TypeError(
        f"apply_op: the output must be a list, tuple or dict, got {type(output).__name__}"
    )
