"""``Module`` / ``@model``: programs whose parameters can be collected, saved and loaded."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from .bundle import INSTANCE_STATE, Bundle
from .containers import NodeContainer
from .names import safe_name
from .parameters import Parameter, apply_updates, parameters_by_name

__all__ = [
    "Module",
    "collect_parameters",
    "load_parameters",
    "model",
    "parameter_values",
    "save_parameters",
]

FORMAT = "opto_adapters.parameters"
VERSION = 1
T = TypeVar("T", bound=type)


class Module(NodeContainer):
    """A program with trainable parts: ``parameters()`` finds them in attributes, nested
    modules (also inside lists, tuples and dicts) and trainable bundles of the class (each
    instance's own code parameter; a method a subclass overrides counts once, as the
    subclass's). Calling a module calls its ``forward``, as in Trace."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__} has no forward(): define forward(...) to call the module, "
            "or call its methods directly"
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def parameters(self) -> list[Parameter]:
        """Trainable parameters, in attribute order, each once."""
        return [p for p in collect_parameters(self) if p.trainable]

    def named_parameters(self) -> dict[str, Parameter]:
        """Trainable parameters by name; raises if two share a name."""
        return parameters_by_name(self.parameters())

    def parameters_dict(self) -> dict[str, Parameter]:
        """Trace's name for ``named_parameters``."""
        return self.named_parameters()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the parameter values as JSON (see ``save_parameters``)."""
        return save_parameters(self.parameters(), path)

    def load(self, path: str | os.PathLike[str], *, strict: bool = True) -> None:
        """Load values written by ``save`` (see ``load_parameters``)."""
        load_parameters(self.parameters(), path, strict=strict)


def model(cls: T) -> T:
    """Class decorator: make ``cls`` a ``Module`` (adds ``parameters()``, ``save``, ``load``)."""
    if not isinstance(cls, type):
        raise TypeError(f"@model decorates a class, got {type(cls).__name__}: {cls!r:.80}")
    if issubclass(cls, Module):
        return cls
    namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
    return type(cls.__name__, (cls, Module), namespace)  # type: ignore[return-value]


def collect_parameters(root: Any) -> list[Parameter]:
    """The parameters under ``root``, each once, in attribute order. Where two of them share
    a name (two instances of one class, each with its own ``step_code``), the later ones are
    renamed after where they are (``helper.step_code``), so every name is unique and the
    same in every run of the program."""
    found: list[tuple[Parameter, str]] = []
    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(root, "")]
    while stack:
        obj, where = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Parameter):
            found.append((obj, where))
            continue
        children: list[tuple[Any, str]] = []
        if isinstance(obj, Bundle):
            if obj.parameter is not None:
                children.append((obj.parameter, where))
        elif isinstance(obj, Module):
            children.extend((m, _join(where, name)) for name, m in _methods(obj))
            if hasattr(obj, "__dict__"):
                children.extend((v, _join(where, k)) for k, v in vars(obj).items() if k != INSTANCE_STATE)
        elif isinstance(obj, (list, tuple)):
            children.extend((v, f"{where}[{i}]") for i, v in enumerate(obj))
        elif isinstance(obj, dict):
            children.extend((v, f"{where}[{k}]") for k, v in obj.items())
        stack.extend(reversed(children))
    taken: set[str] = set()
    for p, where in found:
        if p.name in taken:
            owner = where.rpartition(".")[0] if "." in where else where
            name = safe_name(f"{owner}.{p.name}" if owner else p.name, max_length=128)
            base, k = name, 2
            while name in taken:
                name, k = f"{base}_{k}", k + 1
            p.name = name
        taken.add(p.name)
    return [p for p, _ in found]


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _methods(obj: Module) -> list[tuple[str, Bundle]]:
    """The trainable bundled methods of ``obj``'s class as ``obj`` resolves them (a method a
    subclass overrides is the subclass's), each the instance's own copy, base classes first."""
    resolved: dict[str, Any] = {}
    for klass in type(obj).__mro__:
        for name, value in vars(klass).items():
            resolved.setdefault(name, value)
    order: list[str] = []
    for klass in reversed(type(obj).__mro__):
        order.extend(n for n in vars(klass) if n not in order)
    found = []
    for name in order:
        value = resolved[name]
        if isinstance(value, Bundle) and value.parameter is not None:
            found.append((name, value._instance(obj)[0]))
    return found


def parameter_values(parameters: Iterable[Parameter]) -> dict[str, Any]:
    """``{name: value}`` for the parameters."""
    return {name: p.value for name, p in parameters_by_name(parameters).items()}


def save_parameters(parameters: Iterable[Parameter], path: str | os.PathLike[str]) -> Path:
    """Write ``{name: {kind, value}}`` as JSON, atomically (a crash never leaves half a file)."""
    named = parameters_by_name(parameters)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "parameters": {n: {"kind": p.kind, "value": p.value} for n, p in named.items()},
    }
    try:
        text = json.dumps(doc, indent=2, ensure_ascii=False)
    except TypeError as exc:
        raise TypeError(f"parameter values must be JSON-serializable to save: {exc}") from None
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory: give a file path such as {target / 'params.json'}")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {target}: the folder {target.parent} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        # mkstemp makes the file private (0600); keep an existing file's mode, else 0644
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_parameter_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``{name: value}`` stored in a parameter file, checked for format."""
    target = Path(path)
    try:
        doc = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no parameter file at {target}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{target} is not a parameter file (invalid JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("parameters"), dict):
        raise ValueError(f"{target} is not a parameter file written by save_parameters (format {FORMAT!r})")
    version = doc.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{target} has an invalid format version {version!r}; expected an integer")
    if version > VERSION:
        raise ValueError(f"{target} has format version {doc['version']}; this opto_adapters reads up to {VERSION}: upgrade it")
    values = {}
    for name, entry in doc["parameters"].items():
        if not isinstance(entry, dict) or "value" not in entry:
            raise ValueError(f"{target}: entry {name!r} has no 'value'")
        values[name] = entry["value"]
    return values


def load_parameters(
    parameters: Iterable[Parameter], path: str | os.PathLike[str], *, strict: bool = True
) -> dict[str, Any]:
    """Set parameters from a file written by ``save_parameters``, all or nothing.

    Unknown names in the file are an error; so are missing ones unless ``strict=False``.
    Returns the previous values by name.
    """
    named = parameters_by_name(parameters)
    values = read_parameter_file(path)
    unknown = sorted(set(values) - set(named))
    if unknown:
        raise ValueError(
            f"{path} has values for unknown parameter(s) {unknown}; this program's parameters "
            f"are {sorted(named)}. Was the file saved from another program or version?"
        )
    missing = sorted(set(named) - set(values))
    if missing and strict:
        raise ValueError(
            f"{path} has no value for parameter(s) {missing}; pass strict=False to load the "
            "others and keep these as they are"
        )
    previous = apply_updates({named[n]: v for n, v in values.items()})
    return {p.name: v for p, v in previous.items()}
