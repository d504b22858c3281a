"""Render accumulated feedback as an OPTO problem instance for an LLM optimizer.

Sections: ``#Instruction #Code #Documentation #Variables #Constraints #Inputs #Others
#Outputs #Feedback``. A minibatch whose runs share structure gets one ``#Code`` and per-run
inputs, outputs and feedback (a feedback text shared by several runs is shown once). Values are cut to a character budget with an explicit marker;
object reprs never show memory addresses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .coercion import differs
from .graph import Subgraph, display_names
from .nodes import ExceptionNode, Node
from .parameters import Parameter, iter_parameters

__all__ = ["ProblemInstance", "format_value", "render", "short_repr", "value_text"]

DEFAULT_INSTRUCTION = "Change the #Variables so that the #Outputs get better #Feedback."
SECTIONS = (
    "Instruction",
    "Code",
    "Documentation",
    "Variables",
    "Constraints",
    "Inputs",
    "Others",
    "Outputs",
    "Feedback",
)
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_DEFAULT_REPR = re.compile(r"^<([\w.]+) object>$")


MAX_NESTING = 100
"""Containers nested deeper than this are shown cut, with a marker (see ``value_text``)."""
_CONTAINERS = (list, tuple, dict)


def value_text(value: Any) -> str:
    """The full text shown for a value: strings as they are, containers as JSON, objects by a
    repr without memory addresses. Containers nested deeper than ``MAX_NESTING`` levels are
    cut there with a ``[cut: ...]`` marker (a deep value never raises ``RecursionError``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {_safe_str(value)}"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, _CONTAINERS):
        nesting = _nesting(value, MAX_NESTING)
        if nesting is not None and nesting > MAX_NESTING:
            value = _cut_nesting(value, MAX_NESTING)
        try:
            return json.dumps(value, ensure_ascii=False, default=_object_text)
        except (TypeError, ValueError, RecursionError):
            pass
    return _object_text(value)


def _safe_str(value: BaseException) -> str:
    try:
        return str(value)
    except Exception:  # a broken or too deep __str__ must not break rendering
        return f"<{type(value).__name__} message not shown>"


def _nesting(value: Any, limit: int) -> int | None:
    """How many container levels ``value`` has, counted up to ``limit + 1`` (then the walk
    stops); ``None`` for a cycle (``json`` refuses those; the repr shows them as ``[...]``).
    Iterative, and each shared container is walked once."""
    heights: dict[int, int] = {}
    on_path = {id(value)}
    stack = [(value, iter(_children(value)))]
    while stack:
        current, children = stack[-1]
        for child in children:
            if not isinstance(child, _CONTAINERS):
                continue
            if id(child) in on_path:
                return None
            known = heights.get(id(child))
            if known is not None:
                if len(stack) + known > limit:
                    return limit + 1
                continue
            if len(stack) >= limit:
                return limit + 1
            on_path.add(id(child))
            stack.append((child, iter(_children(child))))
            break
        else:
            stack.pop()
            on_path.discard(id(current))
            heights[id(current)] = 1 + max(
                (heights[id(c)] for c in _children(current) if isinstance(c, _CONTAINERS)), default=0
            )
    return heights[id(value)]


def _children(value: Any) -> Iterable[Any]:
    return value.values() if isinstance(value, dict) else value


def _cut_nesting(value: Any, limit: int) -> Any:
    """A copy of ``value`` whose containers at level ``limit`` are replaced by a marker."""
    marker = f"...[cut: nested deeper than {limit} levels]"

    def empty(c: Any) -> Any:
        return {} if isinstance(c, dict) else []

    root = empty(value)
    stack = [(value, root, 1)]
    while stack:
        src, dst, level = stack.pop()
        items = src.items() if isinstance(src, dict) else enumerate(src)
        for key, child in items:
            if isinstance(child, _CONTAINERS):
                copy = marker if level >= limit else empty(child)
                if copy is not marker:
                    stack.append((child, copy, level + 1))
            else:
                copy = child
            if isinstance(dst, dict):
                dst[key] = copy
            else:
                dst.append(copy)
    return root


def _object_text(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not break rendering
        text = f"<{type(value).__name__} object>"
    text = _ADDRESS.sub("", text)
    match = _DEFAULT_REPR.match(text)
    if match:
        text = f"<{match.group(1).rsplit('.', 1)[-1]} object>"
    return text


def format_value(value: Any, budget: int | None) -> str:
    """``value_text(value)`` cut to ``budget`` characters, with a marker saying how much."""
    text = value_text(value)
    return cut(text, budget)


def cut(text: str, budget: int | None) -> str:
    if budget is None or len(text) <= budget:
        return text
    return f"{text[:budget]}...[cut: {len(text) - budget} of {len(text)} characters not shown]"


def short_repr(value: Any, limit: int) -> str:
    """One line, at most about ``limit`` characters: for trees, DOT labels and reprs."""
    text = " ".join(value_text(value).split())
    if len(text) > limit:
        text = text[: max(limit - 3, 1)] + "..."
    return text


def _node_line(n: Node, name: str, budget: int | None) -> str:
    """``(type) name=value``: its type label and ``format_value`` in one (a line per node)."""
    if isinstance(n, ExceptionNode):
        return f"({type(n.exception).__name__}) {name}={cut(n.error_text(), budget)}"
    if isinstance(n, Parameter):
        label, value = n.kind, n.peek()
    else:
        value = n.value
        label = type(value).__name__
    text = value if isinstance(value, str) else value_text(value)
    if budget is not None and len(text) > budget:
        text = cut(text, budget)
    return f"({label}) {name}={text}"


@dataclass
class ProblemInstance:
    """A rendered problem: one text per section, and the variables by their shown name."""

    instruction: str
    code: str
    documentation: str
    variables: str
    constraints: str
    inputs: str
    others: str
    outputs: str
    feedback: str
    parameters: dict[str, Parameter] = field(default_factory=dict)
    runs: int = 0

    def __str__(self) -> str:
        return (  # (the sections in the order of SECTIONS)
            f"#Instruction\n{self.instruction or '(none)'}\n\n#Code\n{self.code or '(none)'}\n\n"
            f"#Documentation\n{self.documentation or '(none)'}\n\n"
            f"#Variables\n{self.variables or '(none)'}\n\n#Constraints\n{self.constraints or '(none)'}\n\n"
            f"#Inputs\n{self.inputs or '(none)'}\n\n#Others\n{self.others or '(none)'}\n\n"
            f"#Outputs\n{self.outputs or '(none)'}\n\n#Feedback\n{self.feedback or '(none)'}"
        )


@dataclass
class _Run:
    sub: Subgraph
    names: dict[int, str]
    code: tuple[str, ...]


def render(
    subgraphs: Iterable[Subgraph],
    parameters: Iterable[Parameter] | None = None,
    *,
    instruction: str = DEFAULT_INSTRUCTION,
    value_budget: int | None = 1000,
    variable_budget: int | None = None,
    feedback_budget: int | None = 4000,
) -> ProblemInstance:
    """Render subgraphs (one per ``backward`` call) as one problem instance.

    With ``parameters``, each subgraph is restricted to them and only they are #Variables;
    other parameters show as #Inputs. Runs that reach none of them are left out.
    """
    subs = _unique(subgraphs)
    wanted = list(iter_parameters(parameters)) if parameters is not None else None
    wanted_ids = {id(p) for p in wanted} if wanted is not None else set()
    runs: list[_Run] = []
    for sub in subs:
        if wanted is not None and not all(id(p) in wanted_ids for p in sub.parameters_reached):
            sub = sub.restrict(wanted)  # (a run reaching only wanted ones is already minimal)
        if not sub.parameters_reached:
            continue
        names = display_names(sub.nodes)
        code = tuple(
            _code_line(n, names) for n in sub.nodes if n.op is not None and id(n) in sub.on_path
        )
        runs.append(_Run(sub, names, code))

    variables = _variables(runs)
    shown = {name: p for p, name in variables}
    used = _used_values(runs)
    inputs, others, outputs = _value_sections(runs, value_budget)
    return ProblemInstance(
        instruction=instruction,
        code=_code_section(runs),
        documentation=_documentation(runs),
        variables="\n".join(
            _variable_text(p, name, variable_budget, used.get(id(p), _SAME)) for p, name in variables
        ),
        constraints="\n".join(
            f"{name}: {c}" for p, name in variables for c in [_constraint(p)] if c
        ),
        inputs=inputs,
        others=others,
        outputs=outputs,
        feedback=_feedback(runs, feedback_budget),
        parameters=shown,
        runs=len(runs),
    )


def _code_line(n: Node, names: dict[int, str]) -> str:
    """``name = op(arg=input, ...)``; inputs passed as ``*args`` are shown without a keyword."""
    varargs = getattr(n.op, "varargs", "")
    star = f"{varargs}[" if varargs else None
    args = []
    for arg, p in n.inputs.items():
        if star and arg.startswith(star) and arg[len(star) : -1].isdigit() and arg[-1] == "]":
            args.append(names[id(p)])
        else:
            args.append(f"{arg}={names[id(p)]}")
    return f"{names[id(n)]} = {n.op.name}({', '.join(args)})"


def _unique(subgraphs: Iterable[Subgraph]) -> list[Subgraph]:
    seen: set[int] = set()
    out = []
    for sub in subgraphs:
        if not isinstance(sub, Subgraph):
            raise TypeError(f"render expects Subgraph objects (from backward), got {type(sub).__name__}")
        if id(sub) not in seen:
            seen.add(id(sub))
            out.append(sub)
    return out


def _variables(runs: Sequence[_Run]) -> list[tuple[Parameter, str]]:
    out: list[tuple[Parameter, str]] = []
    seen: set[int] = set()
    for run in runs:
        for p in run.sub.parameters_reached:
            if id(p) not in seen:
                seen.add(id(p))
                out.append((p, run.names[id(p)]))
    return out


_SAME = object()


def _used_values(runs: Sequence[_Run]) -> dict[int, Any]:
    """The value each parameter had in the runs, where it differs from its value now (a
    graph recorded before an earlier step)."""
    used: dict[int, Any] = {}
    for run in runs:
        for p in run.sub.parameters_reached:
            if id(p) in run.sub.values and differs(run.sub.values[id(p)], p.value):
                used.setdefault(id(p), run.sub.values[id(p)])
    return used


def _variable_text(p: Parameter, name: str, budget: int | None, used: Any = _SAME) -> str:
    line = _node_line(p, name, budget)
    if used is not _SAME:
        line += f"\n# (the runs below used an earlier value: {format_value(used, budget)})"
    return f"# {name}: {p.description}\n{line}" if p.description else line


def _constraint(p: Parameter) -> str:
    parts = [p.constraint] if p.constraint else []
    if p.variables:
        keep = ", ".join("{" + v + "}" for v in sorted(p.variables))
        parts.append(f"must keep the template variables {keep}")
    if p.kind == "number" and p.bounds:
        lo, hi = p.bounds
        if lo is not None:
            parts.append(f">= {lo}")
        if hi is not None:
            parts.append(f"<= {hi}")
    return "; ".join(parts)


def _code_section(runs: Sequence[_Run]) -> str:
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, run in enumerate(runs, 1):
        groups.setdefault(run.code, []).append(i)
    if len(groups) <= 1:
        return "\n".join(next(iter(groups), ()))
    blocks = []
    for code, members in groups.items():
        blocks.append(f"# {_runs_label(members)}\n" + "\n".join(code))
    return "\n\n".join(blocks)


def _runs_label(members: list[int]) -> str:
    return ("run " if len(members) == 1 else "runs ") + ", ".join(map(str, members))


def _documentation(runs: Sequence[_Run]) -> str:
    docs: dict[str, str] = {}
    for run in runs:
        for n in run.sub.nodes:
            if n.op is not None and id(n) in run.sub.on_path and n.op.name not in docs:
                docs[n.op.name] = n.op.doc
    return "\n".join(f"[{op}] {doc}" for op, doc in docs.items() if doc)


def _value_sections(runs: Sequence[_Run], budget: int | None) -> tuple[str, str, str]:
    """#Inputs (nodes off the paths), #Others (computed on them) and #Outputs, sorted in one
    pass over each run's nodes (the variables are in none of them)."""
    inputs: list[list[Node]] = []
    others: list[list[Node]] = []
    outputs: list[list[Node]] = []
    for r in runs:
        reached = {id(p) for p in r.sub.parameters_reached}
        on_path, output = r.sub.on_path, r.sub.output
        run_inputs, run_others, run_outputs = [], [], []
        for n in r.sub.nodes:
            if id(n) in reached:
                continue
            if id(n) not in on_path:
                run_inputs.append(n)
            if n is output:
                run_outputs.append(n)
            elif n.op is not None and id(n) in on_path:
                run_others.append(n)
        inputs.append(run_inputs)
        others.append(run_others)
        outputs.append(run_outputs)
    return (
        _values_text(runs, inputs, budget),
        _values_text(runs, others, budget),
        _values_text(runs, outputs, budget),
    )


def _values_text(runs: Sequence[_Run], per_run: list[list[Node]], budget: int | None) -> str:
    """Values of each run's nodes; nodes shared by every run are listed once."""
    if len(runs) == 1:
        return "\n".join(_node_line(n, runs[0].names[id(n)], budget) for n in per_run[0])
    counts: dict[int, int] = {}
    for nodes in per_run:
        for n in nodes:
            counts[id(n)] = counts.get(id(n), 0) + 1
    shared_lines: list[str] = []
    blocks: list[str] = []
    shared_done: set[int] = set()
    for i, (run, nodes) in enumerate(zip(runs, per_run, strict=True), 1):
        lines = []
        for n in nodes:
            line = _node_line(n, run.names[id(n)], budget)
            if counts[id(n)] == len(runs):
                if id(n) not in shared_done:
                    shared_done.add(id(n))
                    shared_lines.append(line)
            else:
                lines.append(line)
        if lines:
            blocks.append(f"[run {i}]\n" + "\n".join(lines))
    if shared_lines:
        blocks.insert(0, "[all runs]\n" + "\n".join(shared_lines))
    return "\n".join(blocks)


def _feedback(runs: Sequence[_Run], budget: int | None) -> str:
    """The feedback text; runs that got the same text share one line."""
    if len(runs) == 1:
        return cut(str(runs[0].sub.feedback), budget)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(runs, 1):
        groups.setdefault(str(r.sub.feedback), []).append(i)
    if len(groups) == 1:
        return f"[all runs] {cut(next(iter(groups)), budget)}"
    return "\n".join(f"[{_runs_label(members)}] {cut(text, budget)}" for text, members in groups.items())
