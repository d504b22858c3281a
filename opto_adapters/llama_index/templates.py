"""Reading, rewriting and recognising the text inside LlamaIndex prompt templates.

A trainable text is addressed by a *path* into a template: ``()`` for a ``PromptTemplate``
(or a plain string), ``("msg", i)`` for message ``i`` of a ``ChatPromptTemplate``,
``("default", ...)`` / ``("cond", k, ...)`` for the branches of a ``SelectorPromptTemplate``.
Writes through a framework slot (``update_prompts``, an engine attribute) never mutate a
template: LlamaIndex shares its default templates between every engine in the process, so
each such write builds a copy with the new text (``replace_text``). A template a user's
workflow step holds by reference is edited in place instead (``edit_in_place``): the step
keeps its reference, so only an in-place edit reaches its next run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.prompts import (
    ChatPromptTemplate,
    PromptTemplate,
    SelectorPromptTemplate,
)
from llama_index.core.prompts.base import BasePromptTemplate
from llama_index.core.prompts.utils import get_template_vars

from ..runs.matching import MIN_LITERAL, literal_pieces
from ..runs.matching import match_template as _match

try:  # RichPromptTemplate (jinja, via banks) is optional in some installs
    from llama_index.core.prompts.rich import RichPromptTemplate
except ImportError:  # pragma: no cover - depends on the installed extras
    RichPromptTemplate = None  # type: ignore[assignment,misc]

__all__ = [
    "STAMP_KEY",
    "Path",
    "descend",
    "edit_in_place",
    "fstring_variables",
    "inner_templates",
    "jinja_variables",
    "literal_chunks",
    "match_template",
    "read_text",
    "replace_text",
    "stamp",
    "text_paths",
    "variable_parser_for",
]

Path = tuple[Any, ...]

#: metadata key under which a tracer marks the templates it discovered; LlamaIndex copies
#: templates on every call (``partial_format``) but keeps their metadata, so the mark tells
#: which trainable template an LLM call used.
STAMP_KEY = "opto_adapters.template_id"

# LlamaIndex fills ``{name}`` and ``{a.b}`` with a regex, not ``str.format``: other braces
# (JSON examples, ``{{``) are left as they are. Mirror that exactly.
_VAR_RE = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*(?:\.[a-zA-Z_][a-zA-Z0-9_]*)*)\}")


def fstring_variables(text: str) -> frozenset[str]:
    """The variables LlamaIndex fills in a ``PromptTemplate`` / chat message text."""
    return frozenset(_VAR_RE.findall(text))


def jinja_variables(text: str) -> frozenset[str]:
    """The variables of a ``RichPromptTemplate`` (jinja) text; ``ValueError`` if malformed."""
    from banks import Prompt  # installed with llama-index-core (RichPromptTemplate)

    try:
        return frozenset(Prompt(text).variables)
    except Exception as exc:  # jinja raises its own TemplateSyntaxError
        raise ValueError(f"jinja syntax error: {exc}") from None


def variable_parser_for(template: Any) -> Callable[[str], frozenset[str]]:
    if RichPromptTemplate is not None and isinstance(template, RichPromptTemplate):
        return jinja_variables
    return fstring_variables


# -- paths ------------------------------------------------------------------------------------


def text_paths(template: Any) -> list[tuple[Path, Any]]:
    """Every trainable text in ``template``: ``(path, innermost template holding it)``.

    Chat messages without text content (images, tool calls) are skipped.
    """
    if isinstance(template, str):
        return [((), template)]
    if isinstance(template, SelectorPromptTemplate):
        out = [(("default", *p), t) for p, t in text_paths(template.default_template)]
        for k, (_, branch) in enumerate(template.conditionals or ()):
            out.extend((("cond", k, *p), t) for p, t in text_paths(branch))
        return out
    if isinstance(template, ChatPromptTemplate):
        return [
            (("msg", i), template)
            for i, m in enumerate(template.message_templates)
            if isinstance(m.content, str) and m.content.strip()
        ]
    if isinstance(template, PromptTemplate):
        return [((), template)]
    if RichPromptTemplate is not None and isinstance(template, RichPromptTemplate):
        return [((), template)]
    return []


def inner_templates(template: Any) -> list[Any]:
    """The innermost templates (the ones an LLM call ends up formatting)."""
    if isinstance(template, SelectorPromptTemplate):
        out = inner_templates(template.default_template)
        for _, branch in template.conditionals or ():
            out.extend(inner_templates(branch))
        return out
    return [template] if isinstance(template, BasePromptTemplate) else []


def descend(template: Any, path: Path) -> tuple[Any, Path]:
    """Follow selector steps; return the innermost template and the rest of the path."""
    while path and path[0] in ("default", "cond"):
        if not isinstance(template, SelectorPromptTemplate):
            raise LookupError(f"expected a SelectorPromptTemplate, found {type(template).__name__}")
        if path[0] == "default":
            template, path = template.default_template, path[1:]
        else:
            template, path = list(template.conditionals or ())[path[1]][1], path[2:]
    return template, path


def read_text(template: Any, path: Path) -> str:
    """The text at ``path``; ``LookupError`` if the template no longer has that shape."""
    inner, rest = descend(template, path)
    if not rest:
        if isinstance(inner, str):
            return inner
        if isinstance(inner, PromptTemplate):
            return inner.template
        if RichPromptTemplate is not None and isinstance(inner, RichPromptTemplate):
            return inner.template_str
    elif rest[0] == "msg" and isinstance(inner, ChatPromptTemplate):
        content = inner.message_templates[rest[1]].content
        if isinstance(content, str):
            return content
    raise LookupError(f"no text at {path!r} in a {type(template).__name__}")


def replace_text(template: Any, path: Path, text: str) -> Any:
    """A copy of ``template`` with the text at ``path`` replaced (the original is untouched)."""
    if not path or path[0] == "msg":
        return _replace_inner(template, path, text)
    if not isinstance(template, SelectorPromptTemplate):
        raise LookupError(f"expected a SelectorPromptTemplate, found {type(template).__name__}")
    if path[0] == "default":
        new_default = replace_text(template.default_template, path[1:], text)
        return template.model_copy(update={"default_template": new_default})
    conditionals = list(template.conditionals or ())
    condition, branch = conditionals[path[1]]
    conditionals[path[1]] = (condition, replace_text(branch, path[2:], text))
    return template.model_copy(update={"conditionals": conditionals})


def _replace_inner(template: Any, path: Path, text: str) -> Any:
    if isinstance(template, str):
        return text
    update: dict[str, Any] = {"metadata": dict(template.metadata)}
    if path and path[0] == "msg" and isinstance(template, ChatPromptTemplate):
        messages = list(template.message_templates)
        old: ChatMessage = messages[path[1]]
        messages[path[1]] = ChatMessage(
            role=old.role, content=text, additional_kwargs=dict(old.additional_kwargs)
        )
        update["message_templates"] = messages
    elif not path and isinstance(template, PromptTemplate):
        update["template"] = text
    elif not path and RichPromptTemplate is not None and isinstance(template, RichPromptTemplate):
        update["template_str"] = text
    else:
        raise LookupError(f"no text at {path!r} in a {type(template).__name__}")
    # The variables are validated to be unchanged, so ``template_vars`` stays correct.
    return template.model_copy(update=update)


def edit_in_place(template: Any, path: Path, text: str) -> None:
    """Write ``text`` at ``path`` into ``template`` itself and recompute its ``template_vars``.

    For templates held by user code (a workflow's attribute, a module global, a closure
    variable): the holder keeps its reference, so the next run sees the new text. The caller
    validates the variables first (LlamaIndex would leave an unknown ``{x}`` in the text).
    """
    inner, rest = descend(template, path)
    if not rest and isinstance(inner, PromptTemplate):
        inner.template = text
        inner.template_vars = list(dict.fromkeys(get_template_vars(text)))
    elif not rest and RichPromptTemplate is not None and isinstance(inner, RichPromptTemplate):
        inner.template_str = text
        inner.template_vars = sorted(jinja_variables(text))
    elif rest and rest[0] == "msg" and isinstance(inner, ChatPromptTemplate):
        inner.message_templates[rest[1]].content = text
        names: list[str] = []
        for message in inner.message_templates:
            names.extend(message.get_template_vars())
        inner.template_vars = list(dict.fromkeys(names))
    else:
        raise LookupError(f"no text at {path!r} in a {type(template).__name__}")


def stamp(template: Any, token_for: Callable[[Any], str]) -> Any:
    """A copy of ``template`` whose innermost templates carry ``token_for(inner)`` in their
    metadata (under ``STAMP_KEY``)."""
    if isinstance(template, SelectorPromptTemplate):
        default = stamp(template.default_template, token_for)
        conditionals = [(c, stamp(b, token_for)) for c, b in template.conditionals or ()]
        return template.model_copy(
            update={"default_template": default, "conditionals": conditionals or None}
        )
    if isinstance(template, BasePromptTemplate):
        return template.model_copy(
            update={"metadata": {**template.metadata, STAMP_KEY: token_for(template)}}
        )
    return template


# -- recognising a template in the text an LLM received ---------------------------------------


def literal_chunks(text: str, syntax: str = "llama") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The literal pieces of a template and the variables between them, read as LlamaIndex
    fills it (``syntax``: ``llama``, ``python`` for ``str.format`` or ``jinja``); see
    ``opto_adapters.runs.literal_pieces``. ``ValueError`` if malformed."""
    return literal_pieces(text, syntax)


def match_template(
    template_text: str, text: str, *, syntax: str = "llama", min_literal: int = MIN_LITERAL
) -> dict[str, str] | None:
    """Whether ``text`` contains ``template_text`` filled in; the variable values found, or
    ``None`` (``opto_adapters.runs.match_template`` with LlamaIndex's syntax by default)."""
    return _match(template_text, text, syntax=syntax, min_literal=min_literal)
