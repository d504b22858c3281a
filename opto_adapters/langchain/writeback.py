"""Write-back: Parameters bound to live LangChain objects.

Each factory returns a ``Parameter`` whose ``Binding`` reads the text from the live object and
writes it back so the very next run uses it (and callbacks report it): prompt templates get
their ``input_variables`` recomputed and the cached ``_serialized`` cleared; tool descriptions
are also refreshed in the schemas that ``bind_tools`` snapshotted; message contents (an agent's
system prompt) are edited in place. Validation happens before any write (see ``Parameter``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.prompts import BasePromptTemplate, ChatPromptTemplate, MessagesPlaceholder
from langchain_core.prompts.string import get_template_variables
from langchain_core.tools import BaseTool

from ..trace import Binding, Parameter

__all__ = [
    "ToolSchemas",
    "message_parameter",
    "template_parameter",
    "template_variable_parser",
    "tool_parameter",
]

# OpenAI rejects function descriptions longer than this; other providers accept it too.
TOOL_DESCRIPTION_LIMIT = 1024


def _not_empty(value: Any) -> str | None:
    if isinstance(value, str) and not value.strip():
        return "the text is empty; give the full text"
    return None


def _emptiness_rule(initial: Any) -> Callable[[Any], str | None] | None:
    """Suggestions may not be empty, unless the text was empty to begin with (an empty
    template or system message is valid, and the optimizer may fill it in)."""
    if isinstance(initial, str) and not initial.strip():
        return None
    return _not_empty


def template_variable_parser(
    template_format: str, partials: frozenset[str] = frozenset()
) -> Callable[[str], frozenset[str]]:
    """A parser for the variables of a template in ``template_format`` (f-string, mustache,
    jinja2), as LangChain itself reads them. Partial variables count as present."""

    def parse(text: str) -> frozenset[str]:
        try:
            found = get_template_variables(text, template_format)
        except ValueError:
            raise
        except Exception as exc:  # jinja2 / mustache syntax errors are not ValueErrors
            raise ValueError(f"{type(exc).__name__}: {exc}") from None
        return frozenset(found) | partials

    return parse


def _pop_serialized(*objects: Any) -> None:
    """Forget the cached serialization that callbacks report (a ``cached_property``)."""
    for obj in objects:
        if obj is not None and hasattr(obj, "__dict__"):
            obj.__dict__.pop("_serialized", None)


def _refresh_chat_variables(chat: ChatPromptTemplate) -> None:
    """Recompute a chat prompt's ``input_variables`` from its messages (as its validator does)."""
    names: set[str] = set()
    optional: set[str] = set()
    for message in chat.messages:
        if isinstance(message, MessagesPlaceholder):
            if message.optional:
                optional.add(message.variable_name)
            else:
                names.add(message.variable_name)
        elif hasattr(message, "input_variables"):
            names.update(message.input_variables)
    names -= set(chat.partial_variables or {})
    names -= optional
    chat.input_variables = sorted(names)


def template_parameter(
    template_owner: BasePromptTemplate,
    *,
    name: str,
    description: str,
    top: BasePromptTemplate | None = None,
) -> Parameter:
    """A ``prompt`` Parameter bound to ``template_owner.template`` (a ``PromptTemplate`` or a
    message template's inner prompt). ``top`` is the prompt that runs (a ``ChatPromptTemplate``
    holding it), whose variables and cached serialization are refreshed too."""
    fmt = getattr(template_owner, "template_format", "f-string") or "f-string"
    partials = frozenset(getattr(template_owner, "partial_variables", None) or {})
    parser = template_variable_parser(fmt, partials)

    def get() -> str:
        return template_owner.template

    def set_(value: str) -> None:
        template_owner.template = value
        template_owner.input_variables = sorted(parser(value) - partials)
        if isinstance(top, ChatPromptTemplate):
            _refresh_chat_variables(top)
        _pop_serialized(template_owner, top)

    if fmt == "f-string":
        constraint = "f-string template: variables in {braces}; write literal braces as {{ and }}"
    else:
        constraint = f"{fmt} template: keep its syntax and its variables"
    return Parameter(
        name=name,
        kind="prompt",
        description=description,
        constraint=constraint,
        validator=_emptiness_rule(get()),
        binding=Binding(get, set_),
        variable_parser=parser,
    )


def message_parameter(
    message: BaseMessage,
    *,
    name: str,
    description: str,
    top: BasePromptTemplate | None = None,
) -> Parameter:
    """A ``prompt`` Parameter bound to a literal message's text content (an agent's
    ``SystemMessage``, or a fixed message inside a chat prompt). The text is not a template:
    braces are literal."""

    def get() -> str:
        return message.content if isinstance(message.content, str) else str(message.content)

    def set_(value: str) -> None:
        message.content = value
        _pop_serialized(top)

    return Parameter(
        name=name,
        kind="prompt",
        description=description,
        constraint="literal text (not a template): braces are kept as written",
        validator=_emptiness_rule(get()),
        binding=Binding(get, set_),
        variables=frozenset(),
        variable_parser=lambda _text: frozenset(),
    )


class ToolSchemas:
    """Every copy of one tool's description: the live tools and the schemas ``bind_tools``
    converted them into (dicts inside a binding's ``kwargs["tools"]``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tools: list[BaseTool] = []
        self.schemas: list[dict] = []  # the dicts that hold "description"

    def add_tool(self, tool: BaseTool) -> None:
        if all(t is not tool for t in self.tools):
            self.tools.append(tool)

    def add_schema(self, holder: dict) -> None:
        if all(s is not holder for s in self.schemas):
            self.schemas.append(holder)

    def get(self) -> str:
        if self.tools:
            return self.tools[0].description
        return str(self.schemas[0].get("description", ""))

    def set(self, value: str) -> None:
        for tool in self.tools:
            tool.description = value
        for holder in self.schemas:
            holder["description"] = value


def schema_holder(schema: Any) -> tuple[str, dict] | None:
    """``(tool name, dict holding its description)`` of a tool schema from ``bind_tools``
    (OpenAI ``{"type": "function", "function": {...}}`` or ``{"name", "description", ...}``)."""
    if not isinstance(schema, dict):
        return None
    function = schema.get("function")
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return function["name"], function
    if isinstance(schema.get("name"), str):
        return schema["name"], schema
    return None


def tool_parameter(schemas: ToolSchemas, *, name: str, description: str) -> Parameter:
    """A ``tool_description`` Parameter that writes every copy of the tool's description.

    Suggestions are at most ``TOOL_DESCRIPTION_LIMIT`` characters, or as long as the
    description was to begin with if it was longer (it may shrink, never grow past that).
    """
    initial = schemas.get()
    limit = max(TOOL_DESCRIPTION_LIMIT, len(initial) if isinstance(initial, str) else 0)
    empty_rule = _emptiness_rule(initial)

    def too_long(value: Any) -> str | None:
        empty = empty_rule(value) if empty_rule else None
        if empty:
            return empty
        if isinstance(value, str) and len(value) > limit:
            return f"{len(value)} characters; this tool's description must be at most {limit}"
        return None

    if limit > TOOL_DESCRIPTION_LIMIT:
        constraint = (
            f"at most {limit} characters (the length it started with; providers such as OpenAI "
            f"accept {TOOL_DESCRIPTION_LIMIT}, so shorter is better)"
        )
    else:
        constraint = f"at most {limit} characters"
    return Parameter(
        name=name,
        kind="tool_description",
        description=description,
        constraint=f"{constraint}; the tool's name and arguments stay the same",
        validator=too_long,
        binding=Binding(schemas.get, schemas.set),
    )
