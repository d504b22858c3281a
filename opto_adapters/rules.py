"""Rules both adapters apply to trainable texts: template variables, tool descriptions, names.

Framework-free on purpose (no LangChain, no LlamaIndex): each adapter reads its objects and
asks these functions what a valid suggestion is, so LangChain and LlamaIndex parameters are
checked, described and named the same way. Every check returns a reason (``str``) or
``None``; a reason says what is wrong and what to write instead, and is shown to the
optimizer when its suggestion is refused.

Template syntaxes (``syntax=``), each read exactly as its framework fills it:

- ``"f-string"``: LangChain's f-string templates (``str.format`` fields; ``{{`` is a literal
  brace; ``{a.b}``, ``{a[0]}``, ``{0}`` and nested format specs are refused, as LangChain does).
- ``"mustache"``: LangChain's mustache templates; only top-level names count
  (``{{person.name}}`` is ``person``; names inside a ``{{#section}}`` belong to the section).
- ``"jinja2"``: the undeclared variables of a jinja2 template (needs ``jinja2``).
- ``"llama"``: LlamaIndex's own formatter, a regex over ``{name}`` / ``{a.b}``: ``{{`` is NOT an
  escape and any other brace is literal text, so such templates are never malformed.
- ``"python"``: plain ``str.format`` (``{a.b}`` and ``{a[0]}`` name ``a``; ``{{`` escapes).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable
from typing import Any

from .trace.names import safe_name
from .trace.templates import template_variables as _python_variables

__all__ = [
    "AGENT_SYSTEM_PROMPT",
    "NAME_LENGTH",
    "SYNTAXES",
    "TOOL_DESCRIPTION_LIMIT",
    "describe_system_prompt",
    "describe_tool",
    "join_name",
    "name_part",
    "prompt_name",
    "system_prompt_name",
    "template_constraint",
    "template_problem",
    "template_variables",
    "text_problem",
    "text_validator",
    "tool_description_constraint",
    "tool_description_limit",
    "tool_description_problem",
    "tool_description_validator",
    "tool_name",
    "variable_parser",
]

SYNTAXES = ("f-string", "mustache", "jinja2", "llama", "python")

TOOL_DESCRIPTION_LIMIT = 1024
"""OpenAI refuses function descriptions longer than this; other providers accept it too."""

NAME_LENGTH = 100
"""Longest parameter name the adapters make (room is left for a ``_2`` suffix)."""

_PART_LENGTH = 64  # one part of a name: a key, a tool name...
_EMPTY = "the text is empty; give the full text"

# -- templates ----------------------------------------------------------------------------------

_LLAMA_VAR = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*(?:\.[a-zA-Z_][a-zA-Z0-9_]*)*)\}")
_FORMATTER = string.Formatter()
_MUSTACHE_TAGS = {
    "!": "comment",
    "#": "section",
    "^": "inverted section",
    "/": "end",
    ">": "partial",
    "=": "set delimiter?",
    "{": "no escape?",
    "&": "no escape",
}
_MUSTACHE_VARIABLE_TAGS = frozenset({"variable", "section", "inverted section", "no escape"})


def template_variables(text: str, syntax: str = "f-string") -> frozenset[str]:
    """The variables a template in ``syntax`` fills (see the module docstring for how each
    syntax is read); ``ValueError`` saying why if the template is malformed."""
    if not isinstance(text, str):
        raise ValueError(f"expected template text (str), got {type(text).__name__}")
    if syntax == "f-string":
        return _fstring_variables(text)
    if syntax == "mustache":
        return _mustache_variables(text)
    if syntax == "jinja2":
        return _jinja2_variables(text)
    if syntax == "llama":
        return frozenset(_LLAMA_VAR.findall(text))
    if syntax == "python":
        return _python_variables(text)
    raise ValueError(f"unknown template syntax {syntax!r}: expected one of {', '.join(SYNTAXES)}")


def variable_parser(syntax: str, partials: Iterable[str] = ()) -> Callable[[str], frozenset[str]]:
    """A ``Parameter(variable_parser=...)`` for ``syntax``: the template's variables plus
    ``partials`` (variables filled in advance count as present, used or not)."""
    if syntax not in SYNTAXES:
        raise ValueError(
            f"unknown template syntax {syntax!r}: expected one of {', '.join(SYNTAXES)}"
        )
    extra = frozenset(partials)

    def parse(text: str) -> frozenset[str]:
        return template_variables(text, syntax) | extra

    return parse


def template_problem(
    suggestion: Any, variables: Iterable[str], syntax: str = "f-string"
) -> str | None:
    """Why ``suggestion`` may not replace a template whose variables are ``variables``: it is
    not text, is malformed, or drops or invents a variable (a suggestion keeps exactly the
    original's variables). ``None`` when it may."""
    if not isinstance(suggestion, str):
        return f"expected template text (str), got {type(suggestion).__name__}"
    try:
        got = template_variables(suggestion, syntax)
    except ValueError as exc:
        return f"malformed {syntax} template ({exc}); {_escape_hint(syntax)}"
    want = frozenset(variables)
    missing, extra = sorted(want - got), sorted(got - want)
    if missing:
        return (
            f"the template drops the variable(s) {_braced(missing, syntax)}; keep every one of "
            f"{_braced(sorted(want), syntax)}"
        )
    if extra:
        only = _braced(sorted(want), syntax) if want else "no variables"
        return (
            f"the template introduces unknown variable(s) {_braced(extra, syntax)}; only {only} "
            f"are filled in; {_escape_hint(syntax)}"
        )
    return None


def template_constraint(syntax: str) -> str:
    """The constraint shown to the optimizer for a template in ``syntax``."""
    if syntax == "f-string":
        return "f-string template: variables in {braces}; write literal braces as {{ and }}"
    if syntax == "llama":
        return "template: variables in {braces}; keep every variable, add none"
    if syntax == "python":
        return "str.format template: variables in {braces}; write literal braces as {{ and }}"
    return f"{syntax} template: keep its syntax and its variables"


def _escape_hint(syntax: str) -> str:
    if syntax in ("f-string", "python"):
        return "write literal braces as '{{' and '}}'"
    if syntax == "llama":
        return "only {name} is a variable; other braces are kept as written"
    if syntax == "mustache":
        return "variables are written {{name}}"
    return "variables are written {{ name }}"


def _braced(names: Iterable[str], syntax: str) -> str:
    if syntax in ("mustache", "jinja2"):
        return ", ".join("{{" + n + "}}" for n in names)
    return ", ".join("{" + n + "}" for n in names)


def _fstring_variables(text: str) -> frozenset[str]:
    found = set()
    for _, field, spec, _ in _FORMATTER.parse(text):  # ValueError on an unmatched brace
        if field is None:
            continue
        if "." in field or "[" in field or "]" in field:
            raise ValueError(
                f"{{{field}}}: a variable name cannot use attribute access (.) or indexing ([])"
            )
        if field.isdigit():
            raise ValueError(f"{{{field}}}: a variable name cannot be all digits")
        if spec and ("{" in spec or "}" in spec):
            raise ValueError(f"{{{field}}}: nested replacement fields are not allowed")
        found.add(field)
    return frozenset(found)


def _mustache_variables(text: str) -> frozenset[str]:
    """Top-level names, as LangChain's mustache tokenizer reads them."""
    found: set[str] = set()
    left, right = "{{", "}}"
    sections: list[str] = []
    rest = text
    while True:
        _, sep, rest = rest.partition(left)
        if not sep:
            break
        tag, sep, rest = rest.partition(right)
        if not sep:
            raise ValueError(f"unclosed tag {left}{tag[:40]}")
        if not tag.strip():
            raise ValueError(f"empty tag {left}{tag}{right}")
        kind = _MUSTACHE_TAGS.get(tag[0], "variable")
        if kind != "variable":
            tag = tag[1:]
        if kind == "set delimiter?":
            if not tag.endswith("="):
                raise ValueError(f"unclosed set-delimiter tag {left}={tag}{right}")
            kind, tag = "set delimiter", tag[:-1]
        elif kind == "no escape?" and (left, right) == ("{{", "}}") and rest.startswith("}"):
            kind, rest = "no escape", rest[1:]
        key = tag.strip()
        if kind == "end":
            if not sections:
                raise ValueError(f"{left}/{key}{right} closes a section that was never opened")
            opened = sections.pop()
            if opened != key:
                raise ValueError(f"{left}/{key}{right} closes the open section '{opened}'")
        elif kind in _MUSTACHE_VARIABLE_TAGS and key != "." and not sections:
            found.add(key.split(".")[0])
        if kind in ("section", "inverted section"):
            sections.append(key)
        elif kind == "set delimiter":
            delimiters = key.split(" ")
            left, right = delimiters[0], delimiters[-1]
    if sections:
        raise ValueError(f"the section '{sections[-1]}' is never closed")
    return frozenset(found)


def _jinja2_variables(text: str) -> frozenset[str]:
    try:
        from jinja2 import TemplateError, meta
        from jinja2.sandbox import SandboxedEnvironment
    except ImportError:  # pragma: no cover - jinja2 comes with llama-index-core
        raise ImportError("jinja2 templates need the jinja2 package: pip install jinja2") from None
    try:
        return frozenset(meta.find_undeclared_variables(SandboxedEnvironment().parse(text)))
    except TemplateError as exc:
        raise ValueError(f"jinja2 syntax error: {exc}") from None


# -- plain texts (system prompts, literal messages) ---------------------------------------------


def text_problem(suggestion: Any, original: Any) -> str | None:
    """A text (template, system prompt) may not become empty, unless it was empty to begin
    with (an empty system message is valid, and the optimizer may fill it in)."""
    if isinstance(original, str) and not original.strip():
        return None
    if isinstance(suggestion, str) and not suggestion.strip():
        return _EMPTY
    return None


def text_validator(original: Any) -> Callable[[Any], str | None] | None:
    """``text_problem`` as a ``Parameter(validator=...)`` for a text that starts as
    ``original``; ``None`` (no rule needed) when ``original`` is empty."""
    if isinstance(original, str) and not original.strip():
        return None
    return lambda value: text_problem(value, original)


# -- tool descriptions ------------------------------------------------------------------------


def tool_description_limit(original: Any) -> int:
    """The most characters a suggestion for this tool's description may have:
    ``TOOL_DESCRIPTION_LIMIT``, or the original's length if it was longer (it may shrink)."""
    return max(TOOL_DESCRIPTION_LIMIT, len(original) if isinstance(original, str) else 0)


def tool_description_problem(suggestion: Any, original: Any) -> str | None:
    """Why ``suggestion`` may not replace the tool description ``original``: it is empty or
    longer than ``tool_description_limit(original)``. The original itself is always accepted
    (blank, empty or over-long), so a tool is never dropped and a revert always works."""
    if suggestion == original:
        return None
    if not isinstance(suggestion, str):
        return f"expected text (str), got {type(suggestion).__name__}"
    if not suggestion.strip():
        return _EMPTY
    limit = tool_description_limit(original)
    if len(suggestion) > limit:
        problem = f"{len(suggestion)} characters; this tool's description must be at most {limit}"
        if limit > TOOL_DESCRIPTION_LIMIT:
            problem += ", the length it started with: it may only get shorter"
        return problem
    return None


def tool_description_validator(original: Any) -> Callable[[Any], str | None]:
    """``tool_description_problem`` as a ``Parameter(validator=...)``."""
    return lambda value: tool_description_problem(value, original)


def tool_description_constraint(original: Any) -> str:
    """The constraint shown to the optimizer for a tool description that starts as
    ``original``."""
    limit = tool_description_limit(original)
    if limit > TOOL_DESCRIPTION_LIMIT:
        size = (
            f"at most {limit} characters (the length it started with; providers such as OpenAI "
            f"accept {TOOL_DESCRIPTION_LIMIT}, so shorter is better)"
        )
    else:
        size = f"at most {limit} characters"
    return f"{size}; the tool's name and arguments stay the same"


# -- names and descriptions -------------------------------------------------------------------

AGENT_SYSTEM_PROMPT = "agent.system_prompt"
"""The name of an (unnamed) agent's system prompt, whichever way it was given."""


def name_part(text: Any, default: str = "x") -> str:
    """One part of a parameter name from framework text (a key, a tool, node or variable
    name): valid and short. Dots become ``_``: in a name they separate the parts."""
    return safe_name(str(text).replace(".", "_"), default=default, max_length=_PART_LENGTH)


def join_name(*parts: str) -> str:
    """Parts joined with dots, cut to ``NAME_LENGTH`` characters."""
    return safe_name(".".join(parts), default="x", max_length=NAME_LENGTH).rstrip(".") or "x"


def prompt_name(part: str, label: str = "prompt") -> str:
    """A prompt's text: ``prompt.system``, ``prompt.human``, ``prompt.template``,
    ``prompt.prefix``, ``prompt.examples``... (``label`` is the prompt's own name if it has
    one)."""
    return join_name(name_part(label), *(name_part(p) for p in part.split(".")))


def tool_name(tool: str) -> str:
    """A tool's description: ``tool.<tool name>``."""
    return join_name("tool", name_part(tool))


def system_prompt_name(agent: str | None = None) -> str:
    """An agent's system prompt: ``agent.system_prompt``, or ``<agent>.system_prompt`` for a
    named agent (several agents in one app)."""
    return AGENT_SYSTEM_PROMPT if not agent else join_name(name_part(agent), "system_prompt")


def describe_tool(tool: str) -> str:
    """The description of a tool-description parameter."""
    return (
        f"Description of the tool '{tool}', shown to the model when it chooses a tool: it "
        "decides when the tool is called and with which arguments."
    )


def describe_system_prompt(who: str = "the agent") -> str:
    """The description of a system-prompt parameter (``who``: "the agent", "the agent
    'planner'", "the step 'call'"...)."""
    return f"System prompt of {who}: sent as the first message of every model call it makes."
