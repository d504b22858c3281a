"""Which live parameter each parameter of a graph stored by an earlier run is.

A stored graph (``train.graphs.graph_to_json``) names its parameters as the app named them
then and keeps the value each run used. ``StoredMatcher`` finds each one among the live app's
parameters: by name (the same app, maybe with edited prompts: the same template variables),
else by value (the same text
under another name; a value cut for storage is compared by its hash), else by template
variables (a prompt edited since, with the same role); what matched and what did not go into
the ``ImportReport`` as for the other importers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from ..trace import Parameter
from .attach import ImportReport
from .matching import literal_pieces

__all__ = ["StoredMatcher"]

_SHOWN = 60


def _hash(value: Any) -> str:
    """The hash a stored graph keeps of a cut value (as ``train.graphs`` computes it)."""
    from ..trace.render import value_text

    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=value_text)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _variables(text: Any) -> frozenset[str]:
    if not isinstance(text, str):
        return frozenset()
    for syntax in ("fstring", "llama"):
        try:
            return frozenset(n for n in literal_pieces(text, syntax)[1] if n)
        except ValueError:
            continue
    return frozenset()


def _value(p: Parameter) -> Any:
    try:
        return p.value
    except Exception:  # a binding whose object changed shape
        return None


class StoredMatcher:
    """Maps the parameter nodes of stored graphs to ``parameters`` (the live app's)."""

    def __init__(self, parameters: Iterable[Parameter], report: ImportReport) -> None:
        self.report = report
        self.all = list(parameters)
        self.by_name = {p.name: p for p in self.all}
        self.cache: dict[tuple[str, str], tuple[Parameter | None, str]] = {}

    def match(self, data: Mapping[str, Any]) -> dict[str, Parameter]:
        """``{stored parameter name: live parameter}`` for one stored graph; counts the
        graph's steps and model calls in the report."""
        nodes = [n for n in data.get("nodes") or () if isinstance(n, Mapping)]
        self.report.spans += sum(1 for n in nodes if n.get("role") in ("op", "error"))
        self.report.model_calls += sum(1 for n in nodes if n.get("op_kind") == "llm")
        out: dict[str, Parameter] = {}
        taken: set[int] = set()
        for entry in nodes:
            if entry.get("role") != "parameter" or not entry.get("trainable", True):
                continue
            name = str(entry.get("name"))
            key = (name, str(entry.get("value_hash") or _hash(entry.get("value"))))
            if key not in self.cache:
                self.cache[key] = self._find(entry)
            live, how = self.cache[key]
            if live is None:
                self.report.unmatched[how] += 1
                continue
            if id(live) in taken:
                self.report.unmatched[
                    f"stored parameter {name!r} is the same live parameter ({live.name}) as another "
                    "of the run; left read-only"
                ] += 1
                continue
            taken.add(id(live))
            out[name] = live
            self.report.matched[(live.name, how)] += 1
        return out

    def _find(self, entry: Mapping[str, Any]) -> tuple[Parameter | None, str]:
        name, value, kind = str(entry.get("name")), entry.get("value"), entry.get("kind")
        live = self.by_name.get(name)
        if live is not None and (kind is None or live.kind == kind):
            # the same name in another app is no evidence: the text or its variables must agree
            if "cut" in entry or _value(live) == value or _variables(_value(live)) == _variables(value):
                return live, "name"
        whole = entry.get("value_hash")
        same = [p for p in self.all if (_hash(_value(p)) == whole if whole else _value(p) == value)]
        if len(same) == 1:
            return same[0], "value"
        if len(same) > 1:
            return None, (
                f"stored parameter {name!r}: its value is the value of several parameters of the app "
                f"({', '.join(p.name for p in same)}); none chosen"
            )
        wanted = _variables(value) if "cut" not in entry else frozenset()
        role = name.rpartition(".")[2]
        if wanted:
            hits = [p for p in self.all if p.kind == kind and _variables(_value(p)) == wanted]
            if len(hits) > 1:
                hits = [p for p in hits if p.name.rpartition(".")[2] == role] or hits
            if len(hits) == 1:
                return hits[0], "template variables"
        return None, (
            f"stored parameter {name!r} ({_short(value)!r}) is not a parameter of the app (by name, "
            "value or template variables)"
        )

    def finish(self) -> None:
        """Name the live parameters that no stored run used."""
        found = set(self.report.parameters)
        self.report.unused = [p.name for p in self.all if p.name not in found]


def _short(value: Any) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
