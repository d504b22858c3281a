"""Finding a parameter in the text a model received, when no framework link says it was used.

A system prompt that middleware appended to, a tool description folded into a selector's
prompt, a template a user filled with ``str.format`` before calling the model: the only
evidence is the text. ``TextUse`` says how to look for one parameter; ``find_use`` looks.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

from ..trace import Parameter
from ..trace.templates import template_fields

__all__ = ["MIN_LITERAL", "TextUse", "find_use", "literal_pieces", "match_template"]

MIN_LITERAL = 8
"""Templates with fewer literal characters than this match too easily and are never matched."""

_LLAMA_VAR = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*(?:\.[a-zA-Z_][a-zA-Z0-9_]*)*)\}")
_MUSTACHE_VAR = re.compile(r"\{\{\s*[#/^&]?\s*([a-zA-Z_][\w.]*)\s*\}\}")
_JINJA_BLOCK = re.compile(r"\{\{(.*?)\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_MIN_CONTAINS = 4


@functools.lru_cache(maxsize=1024)
def literal_pieces(text: str, syntax: str = "fstring") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The literal pieces of a template and the variables between them, in order.

    ``syntax``: ``fstring``/``python`` (``str.format``: ``{{`` is a brace), ``llama``
    (LlamaIndex's ``{name}`` regex: other braces stay), ``mustache`` or ``jinja``
    (``{{ x }}``; jinja blocks are gaps). ``ValueError`` for a malformed f-string.
    """
    if syntax in ("fstring", "f-string", "python"):
        return template_fields(text)
    if syntax == "llama":
        pieces = _LLAMA_VAR.split(text)
        return tuple(pieces[0::2]), tuple(pieces[1::2])
    if syntax == "mustache":
        pieces = _MUSTACHE_VAR.split(text)
        return tuple(pieces[0::2]), tuple(pieces[1::2])
    if syntax in ("jinja", "jinja2"):
        return _jinja_pieces(text)
    raise ValueError(f"unknown template syntax {syntax!r}")


def _jinja_pieces(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every ``{{ ... }}``, ``{% ... %}`` and ``{# ... #}`` is a gap, named after its variable
    when it is a plain ``{{ name }}`` and ``""`` otherwise (filters, statements, comments).
    Statements that repeat, drop or reorder text (loops, ``if``) may keep a template from
    being found."""
    literals: list[str] = []
    names: list[str] = []
    pos = 0
    for m in _JINJA_BLOCK.finditer(text):
        literals.append(text[pos : m.start()])
        expr = (m.group(1) or "").strip() if m.group(0).startswith("{{") else ""
        names.append(expr if expr.isidentifier() else "")
        pos = m.end()
    literals.append(text[pos:])
    return tuple(literals), tuple(names)


def match_template(
    template: str, text: str, *, syntax: str = "fstring", min_literal: int = MIN_LITERAL
) -> dict[str, str] | None:
    """Whether ``text`` contains ``template`` with its variables filled in; the values found,
    or ``None``. Linear: each literal piece is searched once, left to right."""
    try:
        literals, names = literal_pieces(template, syntax)
    except ValueError:
        return None
    if sum(len(s.strip()) for s in literals) < min_literal:
        return None
    first = literals[0]
    pos = text.find(first) if first else 0
    if pos < 0:
        return None
    pos += len(first)
    values: dict[str, str] = {}
    last = len(names) - 1
    for i, (name, literal) in enumerate(zip(names, literals[1:], strict=True)):
        if literal:
            end = text.find(literal, pos)
            if end < 0:
                return None
        else:  # the template ends with this variable, or two variables touch
            end = len(text) if i == last else pos
        if name:  # (an unnamed gap: a jinja statement or filter)
            values.setdefault(name, text[pos:end])
        pos = end + len(literal)
    return values


@dataclass(frozen=True, eq=False)
class TextUse:
    """How to recognise ``parameter`` in a model's input.

    ``match``: ``contains`` (its text appears verbatim, e.g. a system prompt, maybe with more
    text around it) or ``template`` (its literal pieces appear in order: it was filled in).
    ``arg`` names the edge (default: the message role it was found in). ``owners``: ids of
    objects of which one must have run for the use to count (empty: any run).
    """

    parameter: Parameter
    match: str = "contains"
    syntax: str = "fstring"
    arg: str = ""
    owners: frozenset[int] = frozenset()
    renderings: tuple[str, ...] = ()
    """How the app may have rewritten the text before the model saw it: ``joined_lines``
    (its lines joined by spaces), ``json`` (inside a JSON string: quotes and newlines escaped)."""


def renderings(text: str, forms: tuple[str, ...]) -> list[str]:
    """``text`` and the forms the app may have turned it into (see ``TextUse.renderings``)."""
    out = [text]
    for form in forms:
        if form == "joined_lines":
            out.append(" ".join(text.splitlines()))
        elif form == "json":
            out.append(json.dumps(text)[1:-1])
            out.append(json.dumps(text, ensure_ascii=False)[1:-1])
    return list(dict.fromkeys(out))


def find_use(use: TextUse, text: str) -> dict[str, str] | None:
    """The variables filled in (``{}`` for a plain text) if ``use`` is found in ``text``."""
    try:
        value = use.parameter.value
    except Exception:  # a binding whose object changed shape: not found
        return None
    if not isinstance(value, str):
        return None
    if use.match == "template":
        return match_template(value, text, syntax=use.syntax)
    for needle in renderings(value.strip(), use.renderings):
        if len(needle) >= _MIN_CONTAINS and needle in text:
            return {}
    return None
