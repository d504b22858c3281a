"""Which of the live app's parameters each step of an imported run used, and why.

A run recorded elsewhere carries no link to the objects of the app running here. What it
does carry is evidence (``Evidence``): the templates a prompt step filled (LangSmith's
``serialized``, OpenInference's ``llm.prompt_template.template``), the tools a model was
offered, and the text the model received. ``Attacher`` looks for each live parameter in it,
in this order: by template text (equal), by template variables (the same variables: the text
changed since the run), by rendering (the text a step produced or a model received contains
the template's literal parts, ``matching.match_template``), by name (tools). What matched,
what did not and why goes into an ``ImportReport``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..trace import Parameter
from .matching import MIN_LITERAL, TextUse, find_use, literal_pieces
from .spans import Span
from .values import Message, display

__all__ = ["Attacher", "Evidence", "ImportReport"]

logger = logging.getLogger("opto_adapters.runs")

_SHOWN = 60
_MAX_REASONS = 50


@dataclass
class Evidence:
    """What a recorded step tells about the live objects behind it."""

    name: str = ""
    templates: list[tuple[str, str, str]] = field(default_factory=list)
    """``(role, template text, format)`` of the templates the step filled."""
    variables: dict[str, Any] = field(default_factory=dict)
    tools: list[str] = field(default_factory=list)
    """Names of the tools a model step was offered."""
    tool: str = ""
    """The tool a tool step ran."""


@dataclass
class ImportReport:
    """What an import found: counts, the parameters matched and how, what did not match and why."""

    traces: int = 0
    spans: int = 0
    model_calls: int = 0
    matched: Counter = field(default_factory=Counter)  # (parameter name, how) -> steps
    unmatched: Counter = field(default_factory=Counter)  # reason -> steps
    unused: list[str] = field(default_factory=list)  # live parameters no imported step used
    feedback: int = 0  # feedback records attached to an imported run
    unknown_feedback: list[Any] = field(default_factory=list)  # records naming no imported run

    @property
    def parameters(self) -> list[str]:
        """Names of the live parameters found in the imported runs."""
        return sorted({name for name, _ in self.matched})

    def summary(self) -> str:
        """A few lines a person can read."""
        lines = [
            f"imported {self.traces} trace(s), {self.spans} step(s), {self.model_calls} model call(s); "
            f"{len(self.parameters)} parameter(s) matched, {self.feedback} feedback record(s) attached"
        ]
        for (name, how), n in sorted(self.matched.items()):
            lines.append(f"  matched {name} by {how} ({n} step(s))")
        for reason, n in self.unmatched.most_common(_MAX_REASONS):
            lines.append(f"  not matched: {reason} ({n} step(s))")
        if self.unused:
            lines.append(f"  parameters of the app no imported step used: {', '.join(self.unused)}")
        if self.unknown_feedback:
            targets = sorted({r.target for r in self.unknown_feedback})
            lines.append(
                f"  {len(self.unknown_feedback)} feedback record(s) name no imported run: "
                f"{', '.join(targets[:5])}{' ...' if len(targets) > 5 else ''}"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class _Live:
    parameter: Parameter
    text: str
    variables: frozenset[str]
    literal: int  # literal characters: below MIN_LITERAL a rendering cannot be checked
    prefix: str


class Attacher:
    """Matches imported steps to ``parameters`` (the live app's), filling ``report``.

    ``syntax`` is how the app writes template variables (``fstring`` for LangChain,
    ``llama`` for LlamaIndex); templates with ``{%`` are read as jinja.
    """

    def __init__(self, parameters: Iterable[Parameter], report: ImportReport, *, syntax: str = "fstring") -> None:
        self.report = report
        self.syntax = syntax
        self.templates: list[_Live] = []
        self.tools: dict[str, Parameter] = {}
        self.others: list[Parameter] = []
        self.used: set[int] = set()
        self.all = list(parameters)
        for p in self.all:
            value = _value(p)
            if p.kind == "tool_description":
                self.tools[p.name.rsplit("tool.", 1)[-1] if "tool." in p.name else p.name] = p
            elif isinstance(value, str):
                try:
                    literals, names = literal_pieces(value, self._syntax(value))
                except ValueError:
                    literals, names = (value,), ()
                self.templates.append(
                    _Live(p, value.strip(), frozenset(n for n in names if n),
                          sum(len(s.strip()) for s in literals), p.name.rpartition(".")[0])
                )
            else:
                self.others.append(p)

    def _syntax(self, text: str) -> str:
        return "jinja" if "{%" in text else self.syntax

    # -- one trace -------------------------------------------------------------------------

    def attach(self, root: Span, evidence: dict[str, Evidence]) -> list[TextUse]:
        """Add to each span of ``root`` the parameters its evidence shows it used; return the
        uses the builder should look for in what models received (parameters found there)."""
        attached: set[int] = set()  # parameters explicit in this trace
        found_in_text: dict[int, TextUse] = {}
        for span in root.walk():
            self.report.spans += 1
            ev = evidence.get(span.id) or Evidence(name=span.name)
            if span.kind == "llm":
                self.report.model_calls += 1
            if ev.templates or span.kind == "prompt":
                self.prompt(span, ev, attached)
            if span.kind == "llm":
                self.offered(span, ev)
                self.in_text(span, attached, found_in_text)
        for span in root.walk():
            for _, p in span.parameters:
                self.used.add(id(p))
        return list(found_in_text.values())

    def prompt(self, span: Span, ev: Evidence, attached: set[int]) -> None:
        """A step that filled templates: find the live templates it filled."""
        chosen: list[tuple[str, _Live, str]] = []
        rendered = _texts(span.output) if span.kind == "prompt" else _texts(span.inputs)
        for role, text, _fmt in ev.templates:
            live, how = self.by_text(text)
            if live is None:
                live, how = self.by_variables(role, text)
            if live is None:
                self.report.unmatched[
                    f"{span.kind} step {span.name!r}: its template {_short(text)!r} is not a "
                    "template of the app (by text or variables)"
                ] += 1
                continue
            chosen.append((role if role not in ("template", "prompt") else _role_of(live.parameter), live, how))
        if not chosen and span.kind == "prompt":
            for live in self.templates:
                if live.literal >= MIN_LITERAL and any(self._rendered(live, t) for t in rendered):
                    chosen.append((_role_of(live.parameter), live, "rendering"))
        if not chosen:
            if not ev.templates:
                self.report.unmatched[
                    f"{span.kind} step {span.name!r}: records no template, and no template of the "
                    "app is in what it produced"
                ] += 1
            return
        if span.kind == "prompt":  # a prompt fills all its templates: the others of its object
            prefixes = {live.prefix for _, live, _ in chosen if live.prefix}
            have = {id(live.parameter) for _, live, _ in chosen}
            for live in self.templates:
                if live.prefix in prefixes and id(live.parameter) not in have:
                    checkable = live.literal >= MIN_LITERAL
                    if not checkable or any(self._rendered(live, t) for t in rendered):
                        chosen.append((_role_of(live.parameter), live, "its prompt object"))
        for role, live, how in chosen:
            if id(live.parameter) in {id(p) for _, p in span.parameters}:
                continue
            span.parameters.append((role, live.parameter))
            attached.add(id(live.parameter))
            self.report.matched[(live.parameter.name, how)] += 1

    def by_text(self, text: str) -> tuple[_Live | None, str]:
        hits = [live for live in self.templates if live.text == text.strip()]
        return (hits[0], "template text") if hits else (None, "")

    def by_variables(self, role: str, text: str) -> tuple[_Live | None, str]:
        try:
            names = frozenset(n for n in literal_pieces(text, self._syntax(text))[1] if n)
        except ValueError:
            return None, ""
        if not names:
            return None, ""
        hits = [live for live in self.templates if live.variables == names]
        if len(hits) > 1:
            hits = [live for live in hits if _role_of(live.parameter) == role] or hits
        if len(hits) == 1:
            return hits[0], "template variables"
        if len(hits) > 1:
            self.report.unmatched[
                f"template {_short(text)!r}: its variables {sorted(names)} fit several parameters "
                f"({', '.join(h.parameter.name for h in hits)}); none chosen"
            ] += 1
        return None, ""

    def _rendered(self, live: _Live, text: str) -> bool:
        use = TextUse(live.parameter, match="template" if live.variables else "contains",
                      syntax=self._syntax(live.text))
        return find_use(use, text) is not None

    def offered(self, span: Span, ev: Evidence) -> None:
        """The tools a model was offered, by name."""
        have = {id(p) for _, p in span.parameters}
        for name in ev.tools:
            param = self.tools.get(name)
            if param is None:
                self.report.unmatched[f"tool {name!r} offered to the model is not a tool of the app"] += 1
            elif id(param) not in have:
                span.parameters.append((f"tool:{name}", param))
                have.add(id(param))
                self.report.matched[(param.name, "tool name")] += 1

    def in_text(self, span: Span, attached: set[int], found: dict[int, TextUse]) -> None:
        """Templates and system prompts of the app found in what a model received; of several
        with the same text, the one whose siblings were found too (else the first)."""
        texts = _texts(span.inputs)
        if not texts:
            return
        hits: list[tuple[_Live, str]] = []
        explicit = {id(p) for _, p in span.parameters} | attached
        taken = {live.text for live in self.templates if id(live.parameter) in explicit}
        for live in self.templates:
            if id(live.parameter) in explicit or live.text in taken:
                continue  # (a twin of a template the step's evidence named: the same use)
            if live.literal < MIN_LITERAL:
                continue
            for text in texts:
                if self._rendered(live, text):
                    hits.append((live, "rendering" if live.variables else "text"))
                    break
        by_text: dict[str, list[tuple[_Live, str]]] = {}
        for live, how in hits:
            by_text.setdefault(live.text, []).append((live, how))
        prefixes = Counter(live.prefix for live, _ in hits)
        for same in by_text.values():
            best = max(same, key=lambda item: prefixes[item[0].prefix]) if len(same) > 1 else same[0]
            live, how = best
            if len(same) > 1:
                others = ", ".join(o.parameter.name for o, _ in same if o is not live)
                how = f"{how} (same text as {others})"
            self.report.matched[(live.parameter.name, how)] += 1
            if id(live.parameter) not in found:
                found[id(live.parameter)] = TextUse(
                    live.parameter, match="template" if live.variables else "contains",
                    syntax=self._syntax(live.text),
                )
        if not hits and not span.parameters and not attached:
            self.report.unmatched[
                f"model step {span.name!r}: none of the app's prompts is in what it received"
            ] += 1

    def finish(self) -> None:
        """Name the live parameters that no imported step used (after all traces)."""
        found = set(self.report.parameters)
        self.report.unused = [p.name for p in self.all if p.name not in found]


def _value(p: Parameter) -> Any:
    try:
        return p.value
    except Exception:  # a binding whose object changed shape
        return None


def _role_of(p: Parameter) -> str:
    return p.name.rpartition(".")[2] or "template"


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _texts(value: Any) -> list[str]:
    """The texts a step received or produced (each message's content, each string)."""
    out: list[str] = []
    stack = [value]
    while stack and len(out) < 1000:
        v = stack.pop()
        if isinstance(v, str):
            if v.strip():
                out.append(v)
        elif isinstance(v, Message):
            if v.content:
                out.append(v.content)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif v is not None and not isinstance(v, (int, float, bool)):
            shown = display(v)
            if isinstance(shown, str):
                out.append(shown)
    if len(out) > 1:
        out.append("\n".join(out))  # a template spread over several messages
    return out
