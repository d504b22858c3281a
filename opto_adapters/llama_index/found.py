"""What discovery finds: each trainable and how a run is recognised to use it
(``Trainable``), and everything found in one app (``Discovery``), with the links added later.
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.chat_engine.types import BaseChatEngine
from llama_index.core.response_synthesizers.base import BaseSynthesizer
from llama_index.core.tools.types import BaseTool

from ..runs.matching import renderings
from ..trace import Parameter
from .recorder import is_workflow

__all__ = ["Discovery", "Links", "SPAN_OWNERS", "Trainable", "check_used_by", "span_name_of"]

logger = logging.getLogger("opto_adapters.llama_index")


@dataclass(eq=False)
class Trainable:
    """A discovered parameter and how to recognise it in a run.

    ``match`` says how an LLM call is found to use it: ``stamp`` (the template carries a
    tracer mark, see ``templates.STAMP_KEY``), ``template`` (its literal pieces appear, in
    order, in what the LLM received), ``contains`` (its text appears verbatim, in one of the
    forms ``needles()`` gives), ``tool`` (the tool was offered to the LLM) or ``setting`` (an
    input of its retriever). A ``template`` or ``contains`` trainable may carry ``stamps`` as
    well: an LLM call given the template itself (``llm.predict(template)``) is then linked by
    the stamp. ``owners`` are the ids of the objects from the tracer's target down to the
    holder: a run that touched none of them cannot have used it.
    """

    parameter: Parameter
    owners: frozenset[int]
    match: str
    holder: Any = None
    stamps: tuple[tuple[str, int | None], ...] = ()
    syntax: str = "llama"  # how its {variables} are written: "llama", "python" or "jinja"
    #: how LlamaIndex rewrites the text before the LLM sees it: "joined_lines" (the LLM
    #: selectors put each choice on one line), "json" (the question generator sends the
    #: descriptions as a JSON object, so quotes, newlines and non-ASCII are escaped)
    renderings: tuple[str, ...] = ()

    def needles(self, value: Any = None) -> tuple[str, ...]:
        """The texts whose presence in an LLM's input means this parameter was used: its
        value (``value``, or the current one) and each of its ``renderings``."""
        text = self.parameter.value if value is None else value
        if not isinstance(text, str):
            return ()
        return tuple(renderings(text, self.renderings))


@dataclass
class Discovery:
    """Everything ``discover`` found, and the links ``OptoTracer.add_parameter`` adds.

    ``by_instance`` maps the id of a live object (retriever, query engine, LLM, tool,
    workflow...) to the ``(argument name, parameter)`` pairs its spans use; ``by_span_name``
    does the same by span name, the part of a dispatcher span id before ``-<uuid>``:
    ``<class of the instance>.<method>`` for a call on an object
    (``RetrieverQueryEngine.query``), the function's ``__qualname__`` for a call without one
    (a workflow step: ``MyFlow.answer``). ``linked`` keeps those objects alive, so their ids
    stay theirs.
    """

    trainables: list[Trainable] = field(default_factory=list)
    components: dict[int, Any] = field(default_factory=dict)
    by_stamp: dict[str, list[tuple[Trainable, int | None]]] = field(default_factory=dict)
    by_tool: dict[int, Trainable] = field(default_factory=dict)
    by_tool_name: dict[str, list[Trainable]] = field(default_factory=dict)
    by_retriever: dict[int, list[Trainable]] = field(default_factory=dict)
    by_instance: dict[int, list[tuple[str, Parameter]]] = field(default_factory=dict)
    by_span_name: dict[str, list[tuple[str, Parameter]]] = field(default_factory=dict)
    linked: dict[int, Any] = field(default_factory=dict)

    @property
    def parameters(self) -> list[Parameter]:
        return [t.parameter for t in self.trainables]

    def links(self) -> Links:
        """The ``used_by`` tables of now; ``link`` replaces them, never edits them, so a
        run kept with these is translated later with the links of its time."""
        return Links(self.by_instance, self.by_span_name)

    def link(self, parameter: Parameter, used_by: Any = None) -> None:
        """Record that ``parameter`` is an input of the spans of ``used_by`` (a live object
        or a span name); check ``used_by`` first with ``check_used_by``.

        Without ``used_by`` a text parameter is recognised by its text (``contains``) in
        what any LLM of the app receives; anything else cannot be linked, and a warning says
        so.
        """
        arg = parameter.name.rsplit(".", 1)[-1]
        used_by = span_name_of(used_by)
        if isinstance(used_by, str):
            table = self.by_span_name
            self.by_span_name = {**table, used_by: [*table.get(used_by, ()), (arg, parameter)]}
            return
        if used_by is not None:
            table = self.by_instance
            key = id(used_by)
            self.by_instance = {**table, key: [*table.get(key, ()), (arg, parameter)]}
            self.linked[id(used_by)] = used_by
            if not isinstance(used_by, (BaseLLM, BaseEmbedding)):  # models are shared
                self.components.setdefault(id(used_by), used_by)
            return
        value = parameter.value
        if isinstance(value, str):
            logger.warning(
                "opto_adapters: parameter %r was added without used_by: it gets feedback only "
                "from LLM calls whose input contains its text verbatim. Pass used_by=<the "
                "object that uses it, or its span name> to tie it to those runs",
                parameter.name,
            )
            self.trainables.append(
                Trainable(parameter, frozenset(self.components), "contains", holder=None)
            )
        else:
            logger.warning(
                "opto_adapters: parameter %r was added without used_by and is not a text: no "
                "run can be tied to it, so it gets no feedback. Pass used_by=<the object that "
                "uses it (e.g. a retriever), or its span name>",
                parameter.name,
            )


class Links(NamedTuple):
    """``Discovery.by_instance`` and ``by_span_name`` as they were at one moment."""

    by_instance: dict[int, list[tuple[str, Parameter]]]
    by_span_name: dict[str, list[tuple[str, Parameter]]]


# objects whose work LlamaIndex reports as spans with the object as ``instance``
SPAN_OWNERS: tuple[type, ...] = (
    BaseQueryEngine,
    BaseRetriever,
    BaseLLM,
    BaseEmbedding,
    BaseTool,
    BaseSynthesizer,
    BaseChatEngine,
)


def span_name_of(used_by: Any) -> Any:
    """A function or bound method stands for its spans, named as the dispatcher names them:
    ``<class of the instance>.<method>`` for a call on an instance (``engine.query`` ->
    ``RetrieverQueryEngine.query``), the function's ``__qualname__`` otherwise (a workflow
    step runs without an instance: ``MyFlow.answer``)."""
    if isinstance(used_by, types.MethodType):
        return f"{type(used_by.__self__).__name__}.{used_by.__func__.__name__}"
    if isinstance(used_by, types.FunctionType):
        return used_by.__qualname__
    return used_by


def check_used_by(used_by: Any) -> None:
    """``TypeError`` unless ``used_by`` is ``None``, a span name (or the function whose
    spans those are, e.g. a workflow step) or an object LlamaIndex reports spans for (query
    engine, retriever, LLM, embedding, tool, synthesizer, chat engine, workflow)."""
    if used_by is None:
        return
    used_by = span_name_of(used_by)
    if isinstance(used_by, str):
        if not used_by.strip():
            raise TypeError(
                "used_by='' names no span: pass a span name such as 'MyFlow.answer' or "
                "'RetrieverQueryEngine.query', or the live object"
            )
        return
    if isinstance(used_by, SPAN_OWNERS) or is_workflow(used_by):
        return
    raise TypeError(
        f"used_by={type(used_by).__name__} object: LlamaIndex reports no spans for it, so no "
        "run could be tied to the parameter. Pass the query engine, retriever, LLM, tool, "
        "chat engine or workflow that uses it, or the name of its spans "
        "('RetrieverQueryEngine.query'; 'MyFlow.answer' for a workflow step, or the step "
        "itself: used_by=MyFlow.answer)"
    )
