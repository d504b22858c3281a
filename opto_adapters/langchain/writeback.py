"""Write-back: Parameters bound to live LangChain objects.

Each factory returns a ``Parameter`` whose ``Binding`` reads the text from the live object and
writes it back so the very next run uses it (and callbacks report it): prompt templates get
their ``input_variables`` recomputed and the cached ``_serialized`` cleared; tool descriptions
are also refreshed in the schemas that ``bind_tools`` snapshotted; message contents (an agent's
system prompt) are edited in place; a few-shot prompt's prefix, suffix and examples are
replaced on the prompt. Validation happens before any write (see ``Parameter``); the rules
themselves (template variables, tool descriptions, empty texts) are ``opto_adapters.rules``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.prompts import (
    BasePromptTemplate,
    ChatPromptTemplate,
    FewShotChatMessagePromptTemplate,
    FewShotPromptTemplate,
    MessagesPlaceholder,
)
from langchain_core.tools import BaseTool

from .. import rules
from ..trace import Binding, Parameter

__all__ = [
    "ToolSchemas",
    "examples_parameter",
    "fewshot_text_parameter",
    "message_parameter",
    "template_parameter",
    "template_variable_parser",
    "tool_parameter",
]

# kept for callers of the old name; the rule lives in ``opto_adapters.rules``
TOOL_DESCRIPTION_LIMIT = rules.TOOL_DESCRIPTION_LIMIT

Check = Callable[[Any], "str | None"]


def template_variable_parser(
    template_format: str, partials: Iterable[str] = frozenset()
) -> Callable[[str], frozenset[str]]:
    """A parser for the variables of a template in ``template_format`` (f-string, mustache,
    jinja2), as LangChain itself reads them. Partial variables count as present."""
    return rules.variable_parser(template_format, partials)


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


def _refresh_fewshot_variables(fewshot: FewShotPromptTemplate) -> None:
    """A few-shot prompt's variables are those of its prefix and suffix (as its validator
    computes them on construction)."""
    partials = set(fewshot.partial_variables or {})
    found = rules.template_variables(fewshot.prefix + fewshot.suffix, fewshot.template_format)
    fewshot.input_variables = sorted(found - partials)


def _refresh(tops: Sequence[Any]) -> None:
    """After an edit inside ``tops`` (innermost first): recompute what LangChain derives from
    the text and forget the cached serializations."""
    for top in tops:
        if isinstance(top, ChatPromptTemplate):
            _refresh_chat_variables(top)
        elif isinstance(top, FewShotPromptTemplate):
            _refresh_fewshot_variables(top)
    _pop_serialized(*tops)


def _all_checks(*checks: Check | None) -> Check | None:
    present = [c for c in checks if c is not None]
    if not present:
        return None

    def check(value: Any) -> str | None:
        for c in present:
            reason = c(value)
            if reason:
                return reason
        return None

    return check


def _tops(top: Any, tops: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(t for t in (top, *tops) if t is not None)


def template_parameter(
    template_owner: BasePromptTemplate,
    *,
    name: str,
    description: str,
    top: BasePromptTemplate | None = None,
    tops: Sequence[Any] = (),
    check: Check | None = None,
) -> Parameter:
    """A ``prompt`` Parameter bound to ``template_owner.template`` (a ``PromptTemplate`` or a
    message template's inner prompt). ``top``/``tops`` are the prompts that hold it, innermost
    first (a ``ChatPromptTemplate``, a few-shot prompt...), whose variables and cached
    serialization are refreshed too. ``check`` is one more rule a suggestion must pass."""
    fmt = getattr(template_owner, "template_format", "f-string") or "f-string"
    partials = frozenset(getattr(template_owner, "partial_variables", None) or {})
    parser = rules.variable_parser(fmt, partials)
    holders = _tops(top, tops)

    def get() -> str:
        return template_owner.template

    def set_(value: str) -> None:
        template_owner.template = value
        template_owner.input_variables = sorted(parser(value) - partials)
        _refresh(holders)
        _pop_serialized(template_owner)

    return Parameter(
        name=name,
        kind="prompt",
        description=description,
        constraint=rules.template_constraint(fmt),
        validator=_all_checks(rules.text_validator(get()), check),
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
        validator=rules.text_validator(get()),
        binding=Binding(get, set_),
        variables=frozenset(),
        variable_parser=lambda _text: frozenset(),
    )


# -- few-shot prompts -------------------------------------------------------------------------


def fewshot_text_parameter(
    fewshot: FewShotPromptTemplate,
    part: str,
    *,
    name: str,
    description: str,
    tops: Sequence[Any] = (),
) -> Parameter:
    """A ``prompt`` Parameter bound to a ``FewShotPromptTemplate``'s ``prefix`` or ``suffix``
    (templates in the prompt's own ``template_format``). The prompt's ``input_variables``
    are recomputed from the new prefix and suffix."""
    if part not in ("prefix", "suffix"):
        raise ValueError(f"part must be 'prefix' or 'suffix', got {part!r}")
    fmt = fewshot.template_format
    parser = rules.variable_parser(fmt, fewshot.partial_variables or {})
    holders = (fewshot, *tops)

    def get() -> str:
        return getattr(fewshot, part)

    def set_(value: str) -> None:
        setattr(fewshot, part, value)
        _refresh(holders)

    return Parameter(
        name=name,
        kind="prompt",
        description=description,
        constraint=rules.template_constraint(fmt),
        validator=_all_checks(
            rules.text_validator(get()), lambda value: fewshot_problem(fewshot, **{part: value})
        ),
        binding=Binding(get, set_),
        variable_parser=parser,
    )


def examples_parameter(
    owner: FewShotPromptTemplate | FewShotChatMessagePromptTemplate,
    *,
    name: str,
    description: str,
    tops: Sequence[Any] = (),
) -> Parameter:
    """A ``json`` Parameter bound to a few-shot prompt's ``examples`` list. A suggestion must
    stay a non-empty list of objects that each give every variable the example prompt reads
    (other keys are allowed and ignored, as LangChain ignores them)."""
    holders = (owner, *tops)

    def get() -> list[dict[str, Any]]:
        return [dict(e) for e in owner.examples or ()]

    def set_(value: list[dict[str, Any]]) -> None:
        owner.examples = [dict(e) for e in value]
        _pop_serialized(*holders)

    def check(value: Any) -> str | None:
        if isinstance(owner, FewShotPromptTemplate):
            return fewshot_problem(owner, examples=value)
        if value == owner.examples:
            return None
        return _examples_problem(value, owner.example_prompt, keep_one=bool(owner.examples))

    keys = ", ".join(sorted(owner.example_prompt.input_variables)) or "no keys"
    return Parameter(
        name=name,
        kind="json",
        description=description,
        constraint=f"a JSON list of objects, each with the keys {keys}",
        validator=check,
        binding=Binding(get, set_),
    )


def _examples_problem(value: Any, example_prompt: Any, *, keep_one: bool) -> str | None:
    """Why ``value`` cannot be the examples of a prompt that writes each with
    ``example_prompt`` (``keep_one``: the list may not become empty)."""
    if not isinstance(value, list):
        return f"expected a list of examples, got {type(value).__name__}"
    if keep_one and not value:
        return "the list of examples is empty; keep at least one example"
    render = getattr(example_prompt, "format_messages", None) or example_prompt.format
    keys = set(example_prompt.input_variables)
    for i, example in enumerate(value, 1):
        if not isinstance(example, Mapping):
            return f"example {i} is a {type(example).__name__}; each example is an object with the keys {sorted(keys)}"
        missing = sorted(keys - set(example))
        if missing:
            return f"example {i} lacks the key(s) {missing}; each example needs {sorted(keys)}"
        try:
            render(**{k: example[k] for k in keys})
        except Exception as exc:  # the prompt itself would fail on it at the next run
            return f"example {i} cannot be written with the example prompt: {type(exc).__name__}: {exc}"
    return None


def fewshot_problem(fewshot: FewShotPromptTemplate, **change: Any) -> str | None:
    """Why ``fewshot`` with ``change`` applied (``prefix``, ``suffix``, ``example_template``
    or ``examples``) would not work: bad examples, or examples whose text adds variables.
    ``FewShotPromptTemplate`` fills the whole text, examples included, a second time, so an
    example reading ``{"a": 1}`` fails every run and one reading ``{question}`` is replaced by
    the question. ``None`` when the change is fine; the prompt as it is always passes."""
    current = {
        "prefix": fewshot.prefix,
        "suffix": fewshot.suffix,
        "example_template": fewshot.example_prompt.template,
        "examples": fewshot.examples,
    }
    if all(change[k] == current[k] for k in change):
        return None
    state = {**current, **change}
    example_prompt = fewshot.example_prompt
    if "example_template" in change:
        fmt = getattr(example_prompt, "template_format", "f-string") or "f-string"
        try:
            found = rules.template_variables(state["example_template"], fmt)
        except ValueError:
            return None  # the template rule reports it
        example_prompt = example_prompt.model_copy(
            update={"template": state["example_template"], "input_variables": sorted(found)}
        )
    if state["examples"] is None:  # an example selector picks them: nothing to check
        return None
    reason = _examples_problem(
        state["examples"], example_prompt, keep_one=bool(current["examples"])
    )
    if reason:
        return reason
    fmt = fewshot.template_format
    want = rules.template_variables(state["prefix"] + state["suffix"], fmt)
    keys = example_prompt.input_variables
    for i, example in enumerate(state["examples"], 1):
        text = example_prompt.format(**{k: example[k] for k in keys})
        problem = _refilled_problem(text, fmt, want)
        if problem:
            return f"example {i} {problem}"
    return None


def _refilled_problem(text: str, fmt: str, allowed: frozenset[str]) -> str | None:
    braces = "{{ and }}" if fmt == "f-string" else "{{ '{{' }} and {{ '}}' }}"
    try:
        found = rules.template_variables(text, fmt)
    except ValueError as exc:
        return (
            f"reads {text[:80]!r}, which breaks the prompt ({exc}): the few-shot prompt fills "
            f"its examples as a template again, so write literal braces in them as {braces}"
        )
    extra = sorted(found - allowed)
    if found:
        names = ", ".join("{" + v + "}" for v in sorted(found))
        what = "an unknown variable" if extra else "a variable"
        return (
            f"reads {text[:80]!r}, and the few-shot prompt fills its examples as a template "
            f"again: {names} would be read as {what}; write literal braces as {braces}"
        )
    return None


# -- tools ------------------------------------------------------------------------------------


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
    """A ``tool_description`` Parameter that writes every copy of the tool's description
    (rules: ``opto_adapters.rules.tool_description_problem``)."""
    initial = schemas.get()
    return Parameter(
        name=name,
        kind="tool_description",
        description=description,
        constraint=rules.tool_description_constraint(initial),
        validator=rules.tool_description_validator(initial),
        binding=Binding(schemas.get, schemas.set),
    )
