"""Where a trainable text lives in the live app, and how it is read and written back.

A slot reads and writes a whole template (or text) through the framework's own doors
(``update_prompts``, attributes, a workflow step's held reference); its ``binding(path)`` is
the ``Binding`` of one text inside it. Reads go around the dispatcher (``quiet_call``), so
bindings emit no spans.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

from llama_index.core.prompts.base import BasePromptTemplate

from ..trace import Binding, Parameter
from .steps import Held
from .templates import (
    Path,
    edit_in_place,
    inner_templates,
    read_text,
    replace_text,
)

__all__ = [
    "AgentSystemPromptSlot",
    "AttrSlot",
    "HeldTemplateSlot",
    "HeldTextSlot",
    "PrefixMessageSlot",
    "PromptSlot",
    "Slot",
    "SlotBinding",
    "ValuePlan",
    "framework_templates",
    "probe",
    "quiet_call",
    "setting_binding",
]

logger = logging.getLogger("opto_adapters.llama_index")


def quiet_call(obj: Any, method: str) -> Any:
    """Call ``obj.method()`` without emitting an instrumentation span.

    ``_get_prompts`` and ``_get_prompt_modules`` are wrapped by the dispatcher; bindings read
    them on every ``Parameter.value``, which would otherwise flood every span handler.
    """
    fn = getattr(type(obj), method, None)
    inner = getattr(fn, "__wrapped__", None)
    if inner is not None:
        return inner(obj)
    return getattr(obj, method)()


def probe(obj: Any, attr: str) -> Any:
    """``getattr(obj, attr, None)``, also when a property raises something else."""
    try:
        return getattr(obj, attr, None)
    except Exception:
        logger.debug("reading %s.%s raised; skipped", type(obj).__name__, attr, exc_info=True)
        return None


class Slot:
    """Where a template (or text) lives: ``read``/``write`` the whole object, and the
    binding of the text at one path inside it."""

    def read(self) -> Any:
        raise NotImplementedError

    def write(self, value: Any) -> None:
        raise NotImplementedError

    def set_text(self, path: Path, text: str) -> None:
        self.write(replace_text(self.read(), path, text))

    def binding(self, path: Path) -> Binding:
        """The text at ``path`` of the template in this slot."""

        def get() -> str:
            try:
                return read_text(self.read(), path)
            except LookupError as exc:
                raise LookupError(
                    f"{self} no longer has the shape it had when the tracer was created "
                    f"({exc}); it was replaced outside the tracer: create a new OptoTracer"
                ) from None

        return SlotBinding(get, lambda text: self.set_text(path, text), self, path)


@dataclass(frozen=True)
class SlotBinding(Binding):
    """The binding of the text at ``path`` in ``slot`` (``ValuePlan`` reads many at once)."""

    slot: Slot
    path: Path


class ValuePlan:
    """Reads the values of many parameters at once, as ``peek()`` would one by one, but
    each prompt module's ``_get_prompts`` once and each template once (a tracer reads them
    all at the end of every run)."""

    def __init__(self, parameters: list[Parameter]) -> None:
        # module id -> (module, subkey -> [(parameter id, path)])
        self.modules: dict[int, tuple[Any, dict[str, list[tuple[int, Path]]]]] = {}
        self.others: list[Parameter] = []
        for p in parameters:
            binding = p.binding
            slot = binding.slot if isinstance(binding, SlotBinding) else None
            if isinstance(slot, PromptSlot):
                _, subkeys = self.modules.setdefault(id(slot.module), (slot.module, {}))
                subkeys.setdefault(slot.subkey, []).append((id(p), binding.path))
            else:
                self.others.append(p)

    def read(self) -> dict[int, Any]:
        """Every parameter's value now, by ``id``; one whose object changed shape is left
        out (as ``TracerBase._parameter_values`` does)."""
        values: dict[int, Any] = {}
        for module, subkeys in self.modules.values():
            try:
                prompts = quiet_call(module, "_get_prompts")
            except Exception:
                continue
            for subkey, texts in subkeys.items():
                template = prompts.get(subkey)
                for pid, path in texts:
                    try:
                        values[pid] = read_text(template, path)
                    except Exception:
                        continue
        for p in self.others:
            try:
                values[id(p)] = p.peek()
            except Exception:
                continue
        return values


class PromptSlot(Slot):
    """A prompt of a ``PromptMixin``: read without copying, written with ``update_prompts``."""

    def __init__(self, root: Any, key: str, module: Any, subkey: str) -> None:
        self.root, self.key, self.module, self.subkey = root, key, module, subkey

    def read(self) -> Any:
        return quiet_call(self.module, "_get_prompts")[self.subkey]

    def write(self, value: Any) -> None:
        self.root.update_prompts({self.key: value})

    def __repr__(self) -> str:
        return f"{type(self.root).__name__}.get_prompts()[{self.key!r}]"


class AttrSlot(Slot):
    def __init__(self, obj: Any, attr: str) -> None:
        self.obj, self.attr = obj, attr

    def read(self) -> Any:
        return getattr(self.obj, self.attr)

    def write(self, value: Any) -> None:
        setattr(self.obj, self.attr, value)

    def __repr__(self) -> str:
        return f"{type(self.obj).__name__}.{self.attr}"


class AgentSystemPromptSlot(AttrSlot):
    """An agent's ``system_prompt``. A ``ReActAgent`` copied it into its formatter's
    ``context`` when it was built and drops the system message at run time: the header's
    ``{context}`` is what the LLM receives, so a write updates both."""

    def __init__(self, agent: Any) -> None:
        super().__init__(agent, "system_prompt")

    def write(self, value: Any) -> None:
        old = self.obj.system_prompt
        self.obj.system_prompt = value
        formatter = probe(self.obj, "formatter")
        context = probe(formatter, "context")
        if not isinstance(context, str):
            return
        if context == old or not context.strip():
            formatter.context = value
        elif old and old in context:
            formatter.context = context.replace(old, value, 1)


class PrefixMessageSlot(Slot):
    """The text of one message in a chat engine's prefix messages (copy-on-write list)."""

    def __init__(self, obj: Any, attr: str, index: int) -> None:
        self.obj, self.attr, self.index = obj, attr, index

    def read(self) -> str:
        return getattr(self.obj, self.attr)[self.index].content

    def write(self, value: str) -> None:
        messages = list(getattr(self.obj, self.attr))
        old = messages[self.index]
        messages[self.index] = type(old)(
            role=old.role, content=value, additional_kwargs=dict(old.additional_kwargs)
        )
        setattr(self.obj, self.attr, messages)


class HeldTextSlot(Slot):
    """A prompt string a workflow step reads (attribute, global, closure variable): a write
    rebinds it at every place it was found."""

    def __init__(self, held: Held) -> None:
        self.held = held

    def read(self) -> Any:
        return self.held.current()

    def write(self, value: Any) -> None:
        self.held.put(value)

    def __repr__(self) -> str:
        return f"the {self.held.where}"


class HeldTemplateSlot(Slot):
    """A template a workflow step holds by reference: edited in place, so the step's own
    reference sees the new text. A template that belongs to LlamaIndex (one of its shared
    defaults) is never edited: the first write rebinds a copy where the step reads it."""

    def __init__(self, held: Held) -> None:
        self.held = held
        self.shared = id(held.value) in framework_templates()

    def read(self) -> Any:
        return self.held.current()

    def write(self, value: Any) -> None:
        self.held.put(value)

    def set_text(self, path: Path, text: str) -> None:
        current = self.read()
        if self.shared and current is self.held.value:
            self.write(replace_text(current, path, text))
            return
        edit_in_place(current, path, text)

    def __repr__(self) -> str:
        return f"the {self.held.where}"


def framework_templates() -> set[int]:
    """Ids of the prompt templates LlamaIndex's own modules hold (its shared defaults)."""
    out: set[int] = set()
    for name, module in list(sys.modules.items()):
        if not name.startswith("llama_index.") or module is None:
            continue
        try:
            values = list(vars(module).values())
        except TypeError:
            continue
        for value in values:
            if isinstance(value, BasePromptTemplate):
                out.add(id(value))
                out.update(id(t) for t in inner_templates(value))
    return out


def setting_binding(obj: Any, attr: str) -> Binding:
    return Binding(lambda: getattr(obj, attr), lambda v: setattr(obj, attr, v))
