"""The patch set: one JSON file of reviewed changes (parameter, where it lives in the app, old
value, new value, template variables) and ``apply_patch``, which writes them into a live app.

``apply_patch`` checks every entry before writing any: each parameter must exist in the app,
still hold the old value (unless ``force=True``) and accept the new one (the parameter's own
validation: template variables, tool description rules...). One failure and nothing is
written; the error lists every entry that failed and why.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import rules
from ..trace import Parameter, ValidationError
from ..trace.parameters import apply_updates

__all__ = ["FORMAT", "Change", "PatchError", "apply_patch", "changes_between", "read_patch_set", "write_patch_set"]

FORMAT = "opto-adapters-patch-set"
VERSION = 1
_SHOWN = 70


class PatchError(ValueError):
    """A patch set that cannot be applied to this app; nothing was written."""

    def __init__(self, path: str, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        lines = "\n".join(f"  {name}: {why}" for name, why in self.problems.items())
        super().__init__(f"{path} was not applied, nothing was written:\n{lines}")


@dataclass
class Change:
    """One parameter's change: ``old`` -> ``new``, with what a reviewer needs to place it."""

    parameter: str
    old: Any
    new: Any
    kind: str = "text"
    object: str = ""
    """Where the parameter lives in the app, in the app's words (its description)."""
    variables: list[str] = field(default_factory=list)
    """The template variables the text fills (kept by the new value)."""
    site: str | None = None
    """``file:line`` of the source literal the diff patches, if one was found."""
    unpatchable: str | None = None
    """Why the source cannot be patched (the value was built at run time...), if so."""


def _variables(value: Any, kind: str) -> list[str]:
    if kind != "prompt" or not isinstance(value, str):
        return []
    for syntax in ("f-string", "llama"):
        try:
            return sorted(rules.template_variables(value, syntax))
        except ValueError:
            continue
    return []


def changes_between(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    parameters: Iterable[Mapping[str, Any] | Parameter] = (),
) -> list[Change]:
    """The changes from ``old`` to ``new`` values (by name), in ``new``'s order; ``parameters``
    (live ``Parameter`` objects or ``{"name", "kind", "description"}`` records, as a store's
    run config holds them) give each change its kind and where it lives."""
    info: dict[str, tuple[str, str, Any]] = {}
    for p in parameters:
        if isinstance(p, Parameter):
            info[p.name] = (p.kind, p.description, p.variables)
        else:
            info[str(p["name"])] = (str(p.get("kind") or "text"), str(p.get("description") or ""), None)
    out = []
    for name, value in new.items():
        if name not in old or old[name] == value:
            continue
        kind, where, variables = info.get(name, ("prompt" if isinstance(value, str) else "json", "", None))
        names = sorted(variables) if variables is not None else _variables(old[name], kind)
        out.append(Change(name, old[name], value, kind, where, names))
    return out


def write_patch_set(changes: Iterable[Change], path: str | os.PathLike[str], *, origin: Mapping[str, Any] | None = None) -> Path:
    """Write the changes as a patch set (JSON); ``origin`` says where they came from."""
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "origin": dict(origin or {}),
        "patches": [{k: v for k, v in asdict(c).items() if v is not None} for c in changes],
    }
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {target}: the folder {target.parent} does not exist; create it first")
    target.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return target


def read_patch_set(path: str | os.PathLike[str]) -> list[Change]:
    """The changes of a patch set file written by ``write_patch_set``."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no patch set at {os.fspath(path)!r}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{os.fspath(path)} is not JSON ({exc.msg}, line {exc.lineno}): is it a patch set?") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(
            f"{os.fspath(path)} is not an opto-adapters patch set (no \"format\": {FORMAT!r}); write one "
            "with `opto-adapters export STORE --patch-set FILE`"
        )
    if doc.get("version") != VERSION:
        raise ValueError(f"{os.fspath(path)} is a patch set of version {doc.get('version')!r}; this library reads version {VERSION}")
    out = []
    for i, entry in enumerate(doc.get("patches") or (), 1):
        if not isinstance(entry, dict) or not {"parameter", "old", "new"} <= set(entry):
            raise ValueError(f"{os.fspath(path)}, patch {i}: needs 'parameter', 'old' and 'new'")
        known = {k: entry[k] for k in Change.__dataclass_fields__ if k in entry}
        out.append(Change(**known))
    return out


def apply_patch(app: Any, path: str | os.PathLike[str], *, force: bool = False) -> dict[str, Any]:
    """Write the patch set at ``path`` into ``app`` (an app or its tracer): every entry, or
    none. An entry whose parameter no longer holds its ``old`` value is refused unless
    ``force=True``. Returns the previous values by name; raises ``PatchError``."""
    from ..train.apps import as_tracer

    changes = read_patch_set(path)
    tracer = as_tracer(app)
    live = {p.name: p for p in tracer.parameters}
    if tracer is not app and hasattr(tracer, "close"):
        tracer.close()  # made here only to find the parameters; their bindings stay usable
    problems: dict[str, str] = {}
    updates: dict[Parameter, Any] = {}
    for change in changes:
        param = live.get(change.parameter)
        if param is None:
            problems[change.parameter] = (
                f"the app has no such parameter (its parameters: {', '.join(sorted(live)) or 'none'}); "
                "was the patch set made for another app, or were parameters renamed?"
            )
            continue
        current = param.value
        if current != change.old and not force:
            problems[change.parameter] = (
                f"holds {_short(current)!r}, not the patch's old value {_short(change.old)!r}: it changed "
                "since the patch was made; review it, then pass force=True (--force) to overwrite"
            )
            continue
        if param in updates:
            problems[change.parameter] = "named twice in the patch set"
            continue
        updates[param] = change.new
    if not problems:
        try:
            previous = apply_updates(updates)
        except ValidationError as exc:
            problems.update({name: f"the new value is refused: {why}" for name, why in exc.errors.items()})
        else:
            return {p.name: v for p, v in previous.items()}
    raise PatchError(os.fspath(path), problems)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
