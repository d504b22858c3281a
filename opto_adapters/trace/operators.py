"""The traced primitives: each is a ``@bundle`` operation, so using it records one node.

Python's operators on nodes call these (``x + y`` is ``add(x, y)``, see ``protocols``); call
them directly for what Python cannot trace (``in_``, ``not_``, ``cond``, ``is_``...). The names
follow Trace's ``opto.trace.operators``. ``call_llm`` asks a model through ``opto_adapters.llm``.
"""

from __future__ import annotations

import builtins
import copy
import functools
import math
from typing import Any

from .bundle import Bundle, bundle
from .nodes import Node

__all__ = [
    "abs", "add", "and_", "call", "call_llm", "call_method", "capitalize", "ceil", "chr_",
    "clone", "concat", "cond", "dict_pop", "dict_update", "divide", "eq", "floor",
    "floor_divide", "format", "ge", "getitem", "gt", "identity", "in_", "invert", "is_",
    "is_not", "join", "keys", "le", "len_", "list_append", "list_clear", "list_extend",
    "list_insert", "list_pop", "list_remove", "list_reverse", "list_sort", "lower", "lshift", "lt",
    "make_dict", "make_list", "make_set", "make_tuple", "mod", "multiply", "ne", "neg",
    "neq", "node_divmod", "node_getattr", "not_", "not_in", "or_", "ord_", "pop", "pos",
    "power", "replace", "round", "rshift", "set_add", "set_clear", "set_discard", "set_remove",
    "set_update", "split", "strip", "subtract", "swapcase", "title",
    "to_dict", "to_list", "to_set", "to_tuple", "trunc", "upper", "values", "xor",
]

# -- unary ---------------------------------------------------------------------------------


@bundle()
def clone(x: Any) -> Any:
    """A copy of x."""
    return copy.deepcopy(x)


def identity(x: Any) -> Any:
    """x itself (not traced: a node stays the same node)."""
    return x


@bundle()
def pos(x: Any) -> Any:
    """+x"""
    return +x


@bundle()
def neg(x: Any) -> Any:
    """-x"""
    return -x


@bundle(name="abs")
def abs(x: Any) -> Any:  # noqa: A001 - Trace's name
    """abs(x)"""
    return builtins.abs(x)


@bundle()
def invert(x: Any) -> Any:
    """~x"""
    return ~x


@bundle(name="round")
def round(x: Any, n: Any = None) -> Any:  # noqa: A001 - Trace's name
    """round(x, n)"""
    return builtins.round(x, n)


@bundle()
def floor(x: Any) -> Any:
    """math.floor(x)"""
    return math.floor(x)


@bundle()
def ceil(x: Any) -> Any:
    """math.ceil(x)"""
    return math.ceil(x)


@bundle()
def trunc(x: Any) -> Any:
    """math.trunc(x)"""
    return math.trunc(x)


# -- arithmetic and bitwise ----------------------------------------------------------------


@bundle()
def add(x: Any, y: Any) -> Any:
    """x + y"""
    return x + y


@bundle()
def subtract(x: Any, y: Any) -> Any:
    """x - y"""
    return x - y


@bundle()
def multiply(x: Any, y: Any) -> Any:
    """x * y"""
    return x * y


@bundle()
def divide(x: Any, y: Any) -> Any:
    """x / y"""
    return x / y


@bundle()
def floor_divide(x: Any, y: Any) -> Any:
    """x // y"""
    return x // y


@bundle()
def mod(x: Any, y: Any) -> Any:
    """x % y"""
    return x % y


@bundle()
def node_divmod(x: Any, y: Any) -> Any:
    """divmod(x, y)"""
    return divmod(x, y)


@bundle()
def power(x: Any, y: Any) -> Any:
    """x ** y"""
    return x**y


@bundle()
def lshift(x: Any, y: Any) -> Any:
    """x << y"""
    return x << y


@bundle()
def rshift(x: Any, y: Any) -> Any:
    """x >> y"""
    return x >> y


@bundle()
def and_(x: Any, y: Any) -> Any:
    """x & y"""
    return x & y


@bundle()
def or_(x: Any, y: Any) -> Any:
    """x | y"""
    return x | y


@bundle()
def xor(x: Any, y: Any) -> Any:
    """x ^ y"""
    return x ^ y


# -- comparisons and logic -----------------------------------------------------------------


@bundle()
def lt(x: Any, y: Any) -> Any:
    """x < y"""
    return x < y


@bundle()
def le(x: Any, y: Any) -> Any:
    """x <= y"""
    return x <= y


@bundle()
def eq(x: Any, y: Any) -> Any:
    """x == y"""
    return x == y


@bundle()
def neq(x: Any, y: Any) -> Any:
    """x != y"""
    return x != y


ne = neq


@bundle()
def ge(x: Any, y: Any) -> Any:
    """x >= y"""
    return x >= y


@bundle()
def gt(x: Any, y: Any) -> Any:
    """x > y"""
    return x > y


@bundle()
def cond(condition: Any, x: Any, y: Any) -> Any:
    """x if condition else y"""
    return x if condition else y


@bundle()
def not_(x: Any) -> Any:
    """not x"""
    return not x


@bundle()
def is_(x: Any, y: Any) -> Any:
    """x is y"""
    return x is y


@bundle()
def is_not(x: Any, y: Any) -> Any:
    """x is not y"""
    return x is not y


@bundle()
def in_(x: Any, y: Any) -> Any:
    """x in y"""
    return x in y


@bundle()
def not_in(x: Any, y: Any) -> Any:
    """x not in y"""
    return x not in y


# -- containers ----------------------------------------------------------------------------


@bundle()
def getitem(x: Any, index: Any) -> Any:
    """x[index]"""
    return x[index]


@bundle()
def pop(x: Any, index: Any = -1) -> Any:
    """x.pop(index), on a copy of x (the input is not changed)."""
    return copy.copy(x).pop(index)


@bundle(name="len_")
def len_(x: Any) -> Any:
    """len(x)"""
    return len(x)


@bundle()
def ord_(x: Any) -> Any:
    """ord(x)"""
    return ord(x)


@bundle()
def chr_(x: Any) -> Any:
    """chr(x)"""
    return chr(x)


@bundle()
def concat(x: Any, y: Any) -> Any:
    """x + y (concatenation)"""
    return x + y


@bundle()
def keys(x: dict[Any, Any]) -> Any:
    """list(x.keys())"""
    if not isinstance(x, dict):
        raise AttributeError(f"{type(x).__name__} has no keys(): only a dict node has keys")
    return list(x.keys())


@bundle()
def values(x: dict[Any, Any]) -> Any:
    """list(x.values())"""
    if not isinstance(x, dict):
        raise AttributeError(f"{type(x).__name__} has no values(): only a dict node has values")
    return list(x.values())


@bundle()
def dict_update(x: dict[Any, Any], y: dict[Any, Any]) -> Any:
    """A copy of x updated with y."""
    out = dict(x)
    out.update(y)
    return out


@bundle()
def dict_pop(x: dict[Any, Any], key: Any) -> Any:
    """x[key], as dict.pop reads it (the input is not changed)."""
    return dict(x).pop(key)


@bundle()
def list_append(x: Any, y: Any) -> Any:
    """A copy of the list x with y appended."""
    return [*x, y]


@bundle()
def list_extend(x: Any, y: Any) -> Any:
    """A copy of the list x extended with y."""
    return [*x, *y]


@bundle()
def list_insert(x: Any, index: Any, y: Any) -> Any:
    """A copy of the list x with y inserted at index."""
    out = list(x)
    out.insert(index, y)
    return out


@bundle()
def list_pop(x: Any, index: Any = -1) -> Any:
    """x.pop(index), on a copy of the list (the input is not changed)."""
    return list(x).pop(index)


@bundle()
def list_remove(x: Any, y: Any) -> Any:
    """A copy of the list x without its first y."""
    out = list(x)
    out.remove(y)
    return out


@bundle()
def list_reverse(x: Any) -> Any:
    """A reversed copy of the list x."""
    return list(reversed(x))


@bundle()
def list_sort(x: Any, key: Any = None, reverse: Any = False) -> Any:
    """A sorted copy of the list x."""
    return sorted(x, key=key, reverse=reverse)


@bundle()
def list_clear(x: Any) -> Any:
    """An empty list."""
    return []


@bundle()
def set_add(x: Any, y: Any) -> Any:
    """A copy of the set x with y added."""
    return {*x, y}


@bundle()
def set_discard(x: Any, y: Any) -> Any:
    """A copy of the set x without y."""
    return set(x) - {y}


@bundle()
def set_remove(x: Any, y: Any) -> Any:
    """A copy of the set x without y (KeyError if y is not in it)."""
    out = set(x)
    out.remove(y)
    return out


@bundle()
def set_update(x: Any, y: Any) -> Any:
    """The union of the sets x and y."""
    return set(x) | set(y)


@bundle()
def set_clear(x: Any) -> Any:
    """An empty set."""
    return set()


@bundle()
def to_list(x: Any) -> Any:
    """list(x)"""
    return list(x)


@bundle()
def make_list(*args: Any) -> Any:
    """[args...]"""
    return list(args)


@bundle()
def to_dict(x: Any) -> Any:
    """dict(x)"""
    return dict(x)


@bundle()
def make_dict(**kwargs: Any) -> Any:
    """{key: value...}"""
    return dict(kwargs)


@bundle()
def to_set(x: Any) -> Any:
    """set(x)"""
    return set(x)


@bundle()
def make_set(*args: Any) -> Any:
    """{args...}"""
    return set(args)


@bundle()
def to_tuple(x: Any) -> Any:
    """tuple(x)"""
    return tuple(x)


@bundle()
def make_tuple(*args: Any) -> Any:
    """(args...)"""
    return tuple(args)


# -- strings -------------------------------------------------------------------------------


@bundle(name="format")
def format(x: str, *args: Any, **kwargs: Any) -> Any:  # noqa: A001 - Trace's name
    """x.format(*args, **kwargs)"""
    return x.format(*args, **kwargs)


@bundle()
def capitalize(x: str) -> Any:
    """x.capitalize()"""
    return x.capitalize()


@bundle()
def lower(x: str) -> Any:
    """x.lower()"""
    return x.lower()


@bundle()
def upper(x: str) -> Any:
    """x.upper()"""
    return x.upper()


@bundle()
def swapcase(x: str) -> Any:
    """x.swapcase()"""
    return x.swapcase()


@bundle()
def title(x: str) -> Any:
    """x.title()"""
    return x.title()


@bundle()
def split(x: str, sep: Any = None, maxsplit: Any = -1) -> Any:
    """x.split(sep, maxsplit)"""
    return x.split(sep, maxsplit)


@bundle()
def strip(x: str, chars: Any = None) -> Any:
    """x.strip(chars)"""
    return x.strip(chars)


@bundle()
def replace(x: str, old: Any, new: Any, count: Any = -1) -> Any:
    """x.replace(old, new, count)"""
    return x.replace(old, new, count)


@bundle()
def join(x: str, *y: Any) -> Any:
    """x.join(y)"""
    return x.join(y)


# -- objects -------------------------------------------------------------------------------


@bundle()
def node_getattr(obj: Any, attr: str) -> Any:
    """getattr(obj, attr)"""
    return getattr(obj, attr)


@bundle()
def call_method(obj: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """obj.method(*args, **kwargs)"""
    return getattr(obj, method)(*args, **kwargs)


@bundle()
def call(fun: Any, *args: Any, **kwargs: Any) -> Any:
    """fun(*args, **kwargs)"""
    return fun(*args, **kwargs)


# -- models --------------------------------------------------------------------------------


def call_llm(system_prompt: Any, *user_prompts: Any, llm: Any = None, **kwargs: Any) -> Node:
    """Ask a chat model: one system message, then each user prompt as a user message; the
    reply text is a node computed from the prompts (one ``call_llm`` operation).

    ``llm`` is an ``opto_adapters.llm.LLM`` (default: one made from the environment,
    ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` / ``OPTO_MODEL``); other keyword arguments are
    sent with the request (``temperature=``, ``max_tokens=``...). Errors of the call become
    ``ExecutionError`` like any bundled operation's.
    """
    op = Bundle(functools.partial(_ask, llm), name="call_llm", description=_ASK_DOC)
    return op(system_prompt, *user_prompts, **kwargs)


_ASK_DOC = "Ask the chat model: the system prompt, then the user prompts; returns the reply text."


def _ask(llm: Any, system_prompt: Any, *user_prompts: Any, **kwargs: Any) -> str:
    from ..llm import LLM

    messages = [{"role": "system", "content": str(system_prompt)}]
    messages += [{"role": "user", "content": str(p)} for p in user_prompts]
    if llm is not None:
        return llm.complete(messages, **kwargs)
    with LLM() as client:
        return client.complete(messages, **kwargs)
