"""Find the trainable parts of a LlamaIndex app and bind a ``Parameter`` to each.

What is found: every prompt ``get_prompts()`` returns (each text of a template: the
completion branch and each chat message of a selector), the templates and system prompts of
chat engines (which are not ``PromptMixin`` objects), an agent's system prompt, each tool's
description, the choices of a ``RouterQueryEngine`` / ``SubQuestionQueryEngine`` (their
tools' descriptions and their query engines' prompts), the prompt of a Pydantic selector,
the prompts a custom ``Workflow``'s steps read (see ``steps``) and, when asked, numeric
retriever settings such as ``similarity_top_k``.

Names: a prompt by its ``get_prompts`` key (``response_synthesizer.text_qa_template``), an
agent's system prompt ``agent.system_prompt`` (``agent.<agent name>.system_prompt`` when a
workflow has several agents), a tool's description ``tool.<tool name>`` and the prompts of
the query engine behind a tool under it (``tool.<tool name>.response_synthesizer.
text_qa_template``), a workflow's prompt by the name its code reads it under.

Writes go through the framework's own doors: ``update_prompts`` for prompts (with a copy of
the template: LlamaIndex's default templates are shared by every engine in the process), the
mutable ``ToolMetadata`` for tools (routers keep the very same object), plain attributes
elsewhere. A template a workflow step holds by reference is edited in place.
"""

from __future__ import annotations

import logging
import sys
import types
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.base.llms.types import MessageRole
from llama_index.core.chat_engine.types import BaseChatEngine
from llama_index.core.prompts.base import BasePromptTemplate
from llama_index.core.prompts.mixin import PromptMixin
from llama_index.core.response_synthesizers.base import BaseSynthesizer
from llama_index.core.tools.types import BaseTool, ToolMetadata

from ..runs.matching import renderings
from ..trace import Binding, Parameter
from ..trace.names import safe_name
from ..trace.templates import template_variables
from .recorder import is_workflow
from .steps import Held, scan_workflow
from .templates import (
    STAMP_KEY,
    Path,
    RichPromptTemplate,
    descend,
    edit_in_place,
    inner_templates,
    read_text,
    replace_text,
    stamp,
    text_paths,
    variable_parser_for,
)

try:
    from llama_index.core.agent.workflow.base_agent import BaseWorkflowAgent
except ImportError:  # pragma: no cover - agents ship with llama-index-core 0.12+
    BaseWorkflowAgent = None  # type: ignore[assignment,misc]

__all__ = ["Discovery", "Trainable", "check_used_by", "discover", "quiet_call"]

logger = logging.getLogger("opto_adapters.llama_index")

#: OpenAI-style LLMs refuse a tool whose description is longer (``ToolMetadata.to_openai_tool``)
MAX_TOOL_DESCRIPTION = 1024

_PURPOSE = {
    "text_qa_template": "asks the LLM to answer the question ({query_str}) from the retrieved context ({context_str})",
    "refine_template": "asks the LLM to improve its existing answer ({existing_answer}) with more retrieved context ({context_msg}) when the context does not fit in one call",
    "summary_template": "asks the LLM to answer the question ({query_str}) from a group of retrieved chunks ({context_str}); tree-summarize applies it level by level",
    "simple_template": "asks the LLM to answer the question ({query_str}) without retrieved context",
    "chat_content_qa_template": "is the message-based (jinja) variant of the question-answering prompt, used when the context is passed as messages",
    "chat_content_refine_template": "is the message-based (jinja) variant of the refine prompt",
    "chat_summary_template": "is the message-based (jinja) variant of the summary prompt",
    "react_header": "is the system header of the ReAct agent: how to reason, which tools exist ({tool_desc}, {tool_names}) and the exact output format the agent parses",
    "handoff_prompt": "tells an agent which other agents it may hand the conversation to ({agent_info})",
    "handoff_output_prompt": "is the message an agent receives when the conversation is handed to it ({to_agent}, {reason})",
    "state_prompt": "wraps the user message with the workflow state ({state}, {msg})",
    "context_template": "is the system text that gives the chat LLM the retrieved context ({context_str}); the system prompt is appended to it",
    "context_refine_template": "is the system text used to refine the chat answer ({existing_answer}) with more retrieved context ({context_msg})",
    "context_prompt": "is the system text that gives the chat LLM the retrieved context ({context_str}); the system prompt is prepended to it",
    "context_refine_prompt": "is the system text used to refine the chat answer ({existing_answer}) with more retrieved context ({context_msg})",
    "condense_prompt": "rewrites the chat history ({chat_history}) and the new message ({question}) into one standalone question for retrieval",
    "condense_question_prompt": "rewrites the chat history ({chat_history}) and the new message ({question}) into one standalone question for the query engine",
    "select_prompt": "asks the LLM to pick, for the question ({query_str}), the numbered choice ({context_list}: the description of each query engine it can route to) that fits best",
    "pydantic_select_prompt": "asks the LLM to pick, for the question ({query_str}), the numbered choice ({context_list}: the description of each query engine it can route to) that fits best, as a function call",
    "question_gen_prompt": "asks the LLM to split the question ({query_str}) into sub-questions, each for one of the tools ({tools_str}: each tool's name and description, as JSON)",
}
_CONSTRAINTS = {
    "llama": (
        "LlamaIndex fills each {name} placeholder at run time; keep every one of them. Other "
        "braces are kept literally"
    ),
    "python": (
        "Filled with Python str.format: keep every {name} placeholder and write any literal "
        "brace doubled, as {{ or }}"
    ),
    "jinja": "jinja template (RichPromptTemplate): keep every {{ variable }} and the {% chat %} blocks",
}
# prompts their owner fills with str.format rather than LlamaIndex's own formatter
_PYTHON_FORMAT = frozenset({"react_header"})
# longest parameter name before a "_2" de-duplication suffix: names stay within the 128
# characters a node name may have
_MAX_NAME = 120

# attribute -> (parameter name, purpose key) for chat engines, which are not PromptMixins
_CHAT_ENGINE_TEMPLATES = {
    "ContextChatEngine": (
        ("_context_template", "context_template"),
        ("_context_refine_template", "context_refine_template"),
    ),
    "CondensePlusContextChatEngine": (
        ("_context_prompt_template", "context_prompt"),
        ("_context_refine_prompt_template", "context_refine_prompt"),
        ("_condense_prompt_template", "condense_prompt"),
    ),
    "CondenseQuestionChatEngine": (("_condense_question_prompt", "condense_question_prompt"),),
}

_DEFAULT_SETTINGS: dict[str, tuple[float | None, float | None]] = {"similarity_top_k": (1, 100)}
_KNOWN_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "similarity_top_k": (1, 100),
    "sparse_top_k": (1, 100),
    "hybrid_top_k": (1, 100),
    "alpha": (0.0, 1.0),
}


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

    def link(self, parameter: Parameter, used_by: Any = None) -> None:
        """Record that ``parameter`` is an input of the spans of ``used_by`` (a live object
        or a span name); check ``used_by`` first with ``check_used_by``.

        Without ``used_by`` a text parameter is recognised by its text (``contains``) in
        what any LLM of the app receives; anything else cannot be linked, and a warning says
        so.
        """
        arg = parameter.name.rsplit(".", 1)[-1]
        used_by = _span_name_of(used_by)
        if isinstance(used_by, str):
            self.by_span_name.setdefault(used_by, []).append((arg, parameter))
            return
        if used_by is not None:
            self.by_instance.setdefault(id(used_by), []).append((arg, parameter))
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


# objects whose work LlamaIndex reports as spans with the object as ``instance``
_SPAN_OWNERS: tuple[type, ...] = (
    BaseQueryEngine,
    BaseRetriever,
    BaseLLM,
    BaseEmbedding,
    BaseTool,
    BaseSynthesizer,
    BaseChatEngine,
)


def _span_name_of(used_by: Any) -> Any:
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
    used_by = _span_name_of(used_by)
    if isinstance(used_by, str):
        if not used_by.strip():
            raise TypeError(
                "used_by='' names no span: pass a span name such as 'MyFlow.answer' or "
                "'RetrieverQueryEngine.query', or the live object"
            )
        return
    if isinstance(used_by, _SPAN_OWNERS) or is_workflow(used_by):
        return
    raise TypeError(
        f"used_by={type(used_by).__name__} object: LlamaIndex reports no spans for it, so no "
        "run could be tied to the parameter. Pass the query engine, retriever, LLM, tool, "
        "chat engine or workflow that uses it, or the name of its spans "
        "('RetrieverQueryEngine.query'; 'MyFlow.answer' for a workflow step, or the step "
        "itself: used_by=MyFlow.answer)"
    )


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


def discover(
    target: Any,
    *,
    retriever_settings: bool
    | Iterable[str]
    | Mapping[str, tuple[float | None, float | None]] = False,
) -> Discovery:
    """Walk ``target`` (query engine, retriever, chat engine, agent, workflow, tool) and bind
    a parameter to each trainable text (and, if asked, each numeric retriever setting)."""
    walker = _Walker(_settings_spec(retriever_settings))
    walker.visit(target, "agent." if _is_agent(target) else "", ())
    walker.check_settings_found()
    return walker.found


def _settings_spec(
    spec: bool | Iterable[str] | Mapping[str, tuple[float | None, float | None]],
) -> tuple[dict[str, tuple[float | None, float | None]], bool]:
    """``(setting -> bounds, explicit)``; explicit settings must exist somewhere."""
    if spec is False or spec is None:
        return {}, False
    if spec is True:
        return dict(_DEFAULT_SETTINGS), False
    if isinstance(spec, str):
        raise TypeError(
            f"retriever_settings={spec!r}: pass True, a list of names such as "
            "['similarity_top_k'], or a dict of name -> (min, max)"
        )
    if isinstance(spec, Mapping):
        out = {}
        for name, bounds in spec.items():
            if not (isinstance(bounds, tuple) and len(bounds) == 2):
                raise TypeError(
                    f"retriever_settings[{name!r}] = {bounds!r}: expected a (min, max) tuple, "
                    "use None for no bound"
                )
            out[str(name)] = bounds
        return out, True
    return {str(n): _KNOWN_BOUNDS.get(str(n), (None, None)) for n in spec}, True


def _fit(name: str, limit: int = _MAX_NAME) -> str:
    """``name`` cut to ``limit`` characters, keeping its start and its end (the part that says
    what the parameter is, e.g. ``.description``): ``research_agent_wi...web_search.description``.

    A cut valid name stays valid: same first character, only name characters after it.
    """
    if len(name) <= limit:
        return name
    head = limit // 3
    tail = limit - head - 3
    return f"{name[:head]}...{name[-tail:]}"


# -- rules: what an original value may be and what a suggestion must be ------------------------
# Kept together so they can move onto the framework-free ``opto_adapters.rules``.


def text_rule(original: Any) -> Callable[[Any], str | None]:
    """Suggestions for a text (prompt, system prompt) are not blank, unless the original was
    blank (an empty system prompt is valid; the optimizer may fill it in or leave it)."""
    blank_ok = isinstance(original, str) and not original.strip()

    def check(value: Any) -> str | None:
        if isinstance(value, str) and not value.strip() and not blank_ok:
            return "the text is empty: write the full instruction"
        return None

    return check


def tool_description_rule(original: Any) -> tuple[Callable[[Any], str | None], str]:
    """``(validator, constraint)`` for a tool description that started as ``original``.

    The original is accepted as it is (LlamaIndex accepts blank and long descriptions;
    refusing them would break the app's construction). A suggestion is not blank and has at
    most ``MAX_TOOL_DESCRIPTION`` characters, or, when the original was longer, at most as
    many as the original (it may only shrink).
    """
    limit = max(MAX_TOOL_DESCRIPTION, len(original) if isinstance(original, str) else 0)

    def check(value: Any) -> str | None:
        if value == original:
            return None
        if not isinstance(value, str) or not value.strip():
            return "the description is empty: say what the tool does and when to use it"
        if len(value) > limit:
            if limit > MAX_TOOL_DESCRIPTION:
                return (
                    f"the description has {len(value)} characters; it started with {limit}, "
                    f"more than the {MAX_TOOL_DESCRIPTION} OpenAI-style LLMs accept, and may "
                    "only get shorter: shorten it"
                )
            return (
                f"the description has {len(value)} characters; LlamaIndex refuses more than "
                f"{MAX_TOOL_DESCRIPTION} when it sends tools to an OpenAI-style LLM: shorten it"
            )
        return None

    if limit > MAX_TOOL_DESCRIPTION:
        constraint = (
            f"at most {limit} characters, the length it started with (OpenAI-style LLMs "
            f"refuse more than {MAX_TOOL_DESCRIPTION}: shorter is better); not empty"
        )
    else:
        constraint = f"at most {MAX_TOOL_DESCRIPTION} characters (OpenAI's limit); not empty"
    return check, constraint


# -- the walk -----------------------------------------------------------------------------------


def _fit(name: str, limit: int = _MAX_NAME) -> str:
    """``name`` cut to ``limit`` characters, keeping its start and its end (the part that says
    what the parameter is, e.g. ``.system_prompt``): ``agent.research_a...system_prompt``.

    A cut valid name stays valid: same first character, only name characters after it.
    """
    if len(name) <= limit:
        return name
    head = limit // 3
    tail = limit - head - 3
    return f"{name[:head]}...{name[-tail:]}"


def _segment(text: Any, default: str) -> str:
    """One part of a parameter name from a user-chosen name (tool, agent): dots separate
    the parts of a name, so they become ``_``."""
    return safe_name(str(text or "").replace(".", "_"), default=default)


def _is_agent(obj: Any) -> bool:
    return BaseWorkflowAgent is not None and isinstance(obj, BaseWorkflowAgent)


def _agents_of(obj: Any) -> Mapping[str, Any] | None:
    """The agents of an ``AgentWorkflow`` (name -> agent), else ``None``."""
    agents = _probe(obj, "agents")
    if isinstance(agents, Mapping) and is_workflow(obj) and not _is_agent(obj):
        return agents
    return None


def _agent_label(agents: Mapping[str, Any], name: str) -> str:
    """``agent`` for the only agent of a workflow, ``agent.<name>`` for one of several."""
    return "agent" if len(agents) == 1 else f"agent.{_segment(name, 'agent')}"


class _Walker:
    def __init__(self, settings: tuple[dict[str, tuple[float | None, float | None]], bool]) -> None:
        self.found = Discovery()
        self.settings, self.settings_explicit = settings
        self.settings_seen: set[str] = set()
        self.seen: set[int] = set()
        self.prompts_covered: set[int] = set()
        self.names: set[str] = set()
        self.warned_workflow = False

    def visit(self, obj: Any, prefix: str, chain: tuple[int, ...]) -> None:
        if obj is None or id(obj) in self.seen:
            return
        self.seen.add(id(obj))
        self.found.components[id(obj)] = obj
        chain = (*chain, id(obj))
        if isinstance(obj, PromptMixin) and id(obj) not in self.prompts_covered:
            self.prompt_slots(obj, obj, prefix, [], [], chain)
        if isinstance(obj, PromptMixin):
            for name, module in self.prompt_modules(obj).items():
                self.visit(module, f"{prefix}{self.module_label(obj, name, module)}.", chain)
        self.chat_engine(obj, prefix, chain)
        self.agent(obj, prefix, chain)
        self.choices(obj, prefix, chain)
        self.program(obj, prefix, chain)
        self.workflow(obj, prefix, chain)
        if isinstance(obj, BaseTool):
            self.tool(obj, prefix, chain)
        if isinstance(obj, BaseRetriever):
            self.retriever(obj, prefix, chain)
        for attr in ("_retriever", "_query_engine", "query_engine"):
            child = _probe(obj, attr)
            if isinstance(child, (BaseRetriever, BaseQueryEngine)):
                self.visit(child, f"{prefix}{attr.lstrip('_')}.", chain)

    def prompt_modules(self, obj: Any) -> dict[str, Any]:
        try:
            return dict(quiet_call(obj, "_get_prompt_modules"))
        except Exception:  # a module that cannot list its sub-modules: skip them
            logger.debug("cannot list prompt modules of %s", type(obj).__name__, exc_info=True)
            return {}

    def module_label(self, parent: Any, name: str, module: Any) -> str:
        """The name part of a prompt sub-module: its key, or ``agent``/``agent.<name>`` for
        the agents of an ``AgentWorkflow``."""
        agents = _agents_of(parent)
        if agents is not None and _is_agent(module):
            return _agent_label(agents, name)
        return safe_name(name, default="module")

    # -- naming ----------------------------------------------------------------------------

    def unique(self, name: str) -> str:
        """``name`` made short enough and not yet used (``_2``, ``_3``... appended)."""
        name = base = _fit(name)
        n = 1
        while name in self.names:
            n += 1
            name = f"{base}_{n}"
        self.names.add(name)
        return name

    def add(self, trainable: Trainable) -> Trainable:
        self.found.trainables.append(trainable)
        for token, index in trainable.stamps:
            self.found.by_stamp.setdefault(token, []).append((trainable, index))
        return trainable

    # -- prompts (PromptMixin) -------------------------------------------------------------

    def prompt_slots(
        self,
        root: Any,
        module: Any,
        prefix: str,
        keypath: list[str],
        labels: list[str],
        chain: tuple[int, ...],
    ) -> None:
        """Every prompt ``root.get_prompts()`` would return, without copying them."""
        self.prompts_covered.add(id(module))
        try:
            prompts = quiet_call(module, "_get_prompts")
            modules = quiet_call(module, "_get_prompt_modules")
        except Exception:
            logger.warning(
                "cannot read the prompts of %s; skipped", type(module).__name__, exc_info=True
            )
            return
        for subkey, template in prompts.items():
            key = ":".join([*keypath, subkey])
            slot = _PromptSlot(root, key, module, subkey)
            name = prefix + ".".join([*labels, safe_name(subkey, default="prompt")])
            self.template_params(slot, template, name, subkey, module, chain, stampable=True)
        for sub_name, sub in modules.items():
            self.prompt_slots(
                root,
                sub,
                prefix,
                [*keypath, sub_name],
                [*labels, self.module_label(module, sub_name, sub)],
                (*chain, id(sub)),
            )

    def template_params(
        self,
        slot: _Slot,
        template: Any,
        base: str,
        purpose_key: str,
        holder: Any,
        chain: tuple[int, ...],
        *,
        stampable: bool,
        marked: bool = False,
        lead: str | None = None,
    ) -> None:
        """One ``prompt`` parameter per text of ``template``. ``stampable``: install tracer
        marks through the slot; ``marked``: the template carries marks already (they link
        ``llm.predict(template)`` calls; formatted text is still matched by its pieces)."""
        if not isinstance(template, (str, BasePromptTemplate)):
            return
        if not text_paths(template):
            logger.debug(
                "prompt %s (%s) has no editable text; skipped", base, type(template).__name__
            )
            return
        stamped = False
        if stampable and not isinstance(template, str):
            template, stamped = self.install_stamps(slot, template)
        paths = text_paths(template)
        owner_name = type(holder).__name__
        purpose = _purpose(holder, purpose_key)
        multi = len(paths) > 1
        for path, inner in paths:
            name = self.unique(base + _suffix(path, template) if multi else base)
            token = (
                inner.metadata.get(STAMP_KEY)
                if (stamped or marked) and not isinstance(inner, str)
                else None
            )
            index = path[-1] if path and path[-2:-1] == ("msg",) else None
            jinja = RichPromptTemplate is not None and isinstance(inner, RichPromptTemplate)
            python = purpose_key in _PYTHON_FORMAT and not jinja
            parser = template_variables if python else variable_parser_for(inner)
            syntax = "jinja" if jinja else "python" if python else "llama"
            text = read_text(template, path)
            try:
                variables = parser(text)
            except ValueError:  # a malformed original: kept as it is, matched by its text
                variables = frozenset()
            param = Parameter(
                name=name,
                kind="prompt",
                description=_describe_prompt(
                    owner_name, base, purpose, path, template, variables, jinja, lead
                ),
                constraint=_CONSTRAINTS[syntax],
                validator=text_rule(text),
                binding=slot.binding(path),
                variable_parser=parser,
                # nothing says which variables an empty template's owner fills: let it gain some
                allow_new_variables=not text.strip(),
            )
            if token is not None and stamped:
                match = "stamp"
            else:
                match = "template" if variables else "contains"
            self.add(
                Trainable(
                    param,
                    frozenset(chain),
                    match,
                    holder=holder,
                    stamps=((token, index),) if token is not None else (),
                    syntax=syntax,
                )
            )

    def install_stamps(self, slot: _Slot, template: Any) -> tuple[Any, bool]:
        """Mark the live template's inner templates so LLM calls can be traced back to it.

        Installs a marked copy through the slot (never edits the possibly shared original).
        Returns the live template and whether the marks survived (a ``get_prompts`` that
        rebuilds its template on every call, like ReAct's header, drops them).
        """
        inners = inner_templates(template)
        if inners and all(STAMP_KEY in t.metadata for t in inners):
            return template, True
        marked = stamp(template, lambda _t: uuid.uuid4().hex[:16])
        try:
            slot.write(marked)
            live = slot.read()
        except Exception:
            logger.debug(
                "cannot mark prompt %s; falling back to text matching", slot, exc_info=True
            )
            return template, False
        ok = bool(inner_templates(live)) and all(
            STAMP_KEY in t.metadata for t in inner_templates(live)
        )
        return live, ok

    # -- chat engines ----------------------------------------------------------------------

    def chat_engine(self, obj: Any, prefix: str, chain: tuple[int, ...]) -> None:
        for klass in type(obj).__mro__:
            for attr, name in _CHAT_ENGINE_TEMPLATES.get(klass.__name__, ()):
                template = _probe(obj, attr)
                if template is not None:
                    slot = _AttrSlot(obj, attr)
                    self.template_params(
                        slot, template, prefix + name, name, obj, chain, stampable=False
                    )
        prefix_messages = _probe(obj, "_prefix_messages")
        if isinstance(prefix_messages, list) and prefix_messages:
            first = prefix_messages[0]
            if getattr(first, "role", None) == MessageRole.SYSTEM and isinstance(
                first.content, str
            ):
                self.text_param(
                    _PrefixMessageSlot(obj, "_prefix_messages", 0),
                    prefix + "system_prompt",
                    f"System prompt of the {type(obj).__name__}: the first message the chat LLM "
                    "receives on every turn.",
                    obj,
                    chain,
                )
        system_prompt = _probe(obj, "_system_prompt")
        if (
            isinstance(system_prompt, str)
            and system_prompt.strip()
            and "ChatEngine" in type(obj).__name__
        ):
            self.text_param(
                _AttrSlot(obj, "_system_prompt"),
                prefix + "system_prompt",
                f"System prompt of the {type(obj).__name__}, sent with the retrieved context on "
                "every turn.",
                obj,
                chain,
            )

    def text_param(
        self,
        slot: _Slot,
        name: str,
        description: str,
        holder: Any,
        chain: tuple[int, ...],
        *,
        syntax: str = "llama",
    ) -> Trainable:
        original = slot.read()
        variables: frozenset[str] = frozenset()
        if syntax == "python" and isinstance(original, str):
            try:
                variables = template_variables(original)
            except ValueError:  # not a str.format template after all: plain text
                variables = frozenset()
            if not all(v.isidentifier() for v in variables):  # braces of a JSON example
                variables = frozenset()
            if not variables:
                syntax = "llama"
        param = Parameter(
            name=self.unique(name),
            kind="prompt" if variables else "text",
            description=description,
            constraint=_CONSTRAINTS["python"] if variables else "",
            validator=text_rule(original),
            binding=Binding(slot.read, slot.write),
            variable_parser=template_variables if variables else None,
        )
        match = "template" if variables else "contains"
        return self.add(Trainable(param, frozenset(chain), match, holder=holder, syntax=syntax))

    # -- agents and tools ------------------------------------------------------------------

    def agent(self, obj: Any, prefix: str, chain: tuple[int, ...]) -> None:
        agents = _agents_of(obj)
        if agents is not None:  # AgentWorkflow
            for name, agent in agents.items():
                self.visit(agent, f"{prefix}{_agent_label(agents, name)}.", chain)
            return
        if not _is_agent(obj):
            return
        system_prompt = _probe(obj, "system_prompt")
        formatter = _probe(obj, "formatter")
        react = isinstance(_probe(formatter, "context"), str)
        # a ReAct agent without a system prompt has no place for one in its header
        if isinstance(system_prompt, str) and not (react and not system_prompt.strip()):
            agent_name = getattr(obj, "name", "") or type(obj).__name__
            self.text_param(
                _AgentSystemPromptSlot(obj),
                prefix + "system_prompt",
                f"System prompt of the agent {agent_name!r}: "
                + (
                    "the context of its ReAct header, sent as the system message of every LLM "
                    "call the agent makes."
                    if react
                    else "the first message of every LLM call the agent makes."
                ),
                obj,
                chain,
            )
        for tool in _probe(obj, "tools") or ():
            if isinstance(tool, BaseTool):
                self.visit(tool, prefix, chain)

    def tool_name(self, tool_name: str | None, prefix: str, fallback: str) -> str:
        """``tool.<name>``; for a second tool of that name inside one of several agents,
        ``agent.<agent>.tool.<name>``; else ``_2``, ``_3``..."""
        name = f"tool.{_segment(tool_name, 'tool') if tool_name else fallback}"
        if _fit(name) in self.names and prefix.startswith("agent.") and prefix != "agent.":
            name = prefix + name
        return self.unique(name)

    def description_param(
        self,
        metadata: ToolMetadata,
        read: Callable[[], Any],
        write: Callable[[Any], None],
        prefix: str,
        chain: tuple[int, ...],
        *,
        match: str,
        holder: Any,
        fallback: str = "tool",
        how: str,
    ) -> Trainable:
        """The ``tool_description`` parameter of ``metadata`` (once, however often it is met)."""
        known = self.found.by_tool.get(id(metadata))
        if known is not None:
            known.owners = known.owners | frozenset(chain)
            return known
        tool_name = metadata.name
        original = read()
        validator, constraint = tool_description_rule(original)
        shown = tool_name or fallback
        param = Parameter(
            name=self.tool_name(tool_name, prefix, fallback),
            kind="tool_description",
            description=f"Description of the tool {shown!r}. {how}",
            constraint=constraint,
            validator=validator,
            binding=Binding(read, write),
        )
        renderings = ("joined_lines", "json") if match == "contains" else ()
        trainable = self.add(
            Trainable(param, frozenset(chain), match, holder=holder, renderings=renderings)
        )
        self.found.by_tool[id(metadata)] = trainable
        if holder is not metadata:
            self.found.by_tool[id(holder)] = trainable
        if tool_name:
            self.found.by_tool_name.setdefault(tool_name, []).append(trainable)
        return trainable

    def tool(self, tool: BaseTool, prefix: str, chain: tuple[int, ...]) -> None:
        metadata = tool.metadata
        if not isinstance(getattr(metadata, "description", None), str):
            return
        trainable = self.description_param(
            metadata,
            lambda: tool.metadata.description,
            lambda v: setattr(tool.metadata, "description", v),
            prefix,
            chain,
            match="tool",
            holder=tool,
            how=(
                "Sent to the LLM with the tool's schema: the model reads it to decide when to "
                "call the tool and with which arguments."
            ),
        )
        engine = _probe(tool, "query_engine")
        if isinstance(engine, BaseQueryEngine):
            self.visit(engine, trainable.parameter.name + ".", chain)

    def choices(self, obj: Any, prefix: str, chain: tuple[int, ...]) -> None:
        """The tools of a ``RouterQueryEngine`` / ``SubQuestionQueryEngine``: both keep each
        tool's ``ToolMetadata`` (the very object the tool holds) in ``_metadatas`` and its
        query engine in ``_query_engines`` (a list by position, a dict by tool name)."""
        metadatas = _probe(obj, "_metadatas")
        if not isinstance(obj, BaseQueryEngine) or not isinstance(metadatas, list):
            return
        engines = _probe(obj, "_query_engines")
        sub_questions = isinstance(engines, Mapping)
        how = (
            "The question generator lists every tool's name and description (as JSON) and "
            "the LLM writes sub-questions, each for the tool that can answer it."
            if sub_questions
            else "The selector lists every choice's description and the LLM picks the query "
            "engine whose description fits the question."
        )
        for i, metadata in enumerate(metadatas):
            if not isinstance(metadata, ToolMetadata) or not isinstance(metadata.description, str):
                continue
            trainable = self.description_param(
                metadata,
                lambda m=metadata: m.description,
                lambda v, m=metadata: setattr(m, "description", v),
                prefix,
                chain,
                match="contains",
                holder=metadata,
                fallback=f"choice{i + 1}",
                how=how,
            )
            if isinstance(engines, Mapping):
                engine = engines.get(metadata.name)
            elif isinstance(engines, list) and i < len(engines):
                engine = engines[i]
            else:
                engine = None
            if isinstance(engine, BaseQueryEngine):
                self.visit(engine, trainable.parameter.name + ".", chain)

    def program(self, obj: Any, prefix: str, chain: tuple[int, ...]) -> None:
        """A Pydantic selector's prompt: held by its program (``FunctionCallingProgram``),
        not returned by ``get_prompts()``."""
        program = _probe(obj, "_selector_program")
        template = _probe(program, "prompt")
        if (
            program is None
            or id(program) in self.seen
            or not isinstance(template, BasePromptTemplate)
        ):
            return
        self.seen.add(id(program))
        self.found.components[id(program)] = program
        self.template_params(
            _AttrSlot(program, "prompt"),
            template,
            prefix + "prompt",
            "pydantic_select_prompt",
            obj,
            (*chain, id(program)),
            stampable=False,
        )

    # -- custom workflows ------------------------------------------------------------------

    def workflow(self, obj: Any, prefix: str, chain: tuple[int, ...]) -> None:
        if not is_workflow(obj):
            return
        try:
            scan = scan_workflow(obj, attributes=not _is_agent(obj))
        except Exception:  # never break the tracer's creation over a scan
            logger.warning(
                "opto_adapters: could not read the steps of %s", type(obj).__name__, exc_info=True
            )
            return
        if scan is None:
            return
        before = len(self.found.trainables)
        for name, component in scan.components:
            self.visit(component, f"{prefix}{safe_name(name, default='component')}.", chain)
        flow = type(obj).__name__
        for held in scan.held:
            if isinstance(held.value, BasePromptTemplate):
                self.held_template(held, flow, prefix, obj, chain)
            elif isinstance(held.value, str):
                self.text_param(
                    _HeldTextSlot(held),
                    prefix + safe_name(held.name, default="prompt"),
                    f"Prompt text of the workflow {flow}, held as the {held.where}; its steps "
                    "put it into what they send to the LLM.",
                    obj,
                    chain,
                    syntax="python",
                )
        found = len(self.found.trainables) > before
        if scan.calls_llm and not found and not self.warned_workflow:
            self.warned_workflow = True
            logger.warning(
                "opto_adapters: the workflow %s calls an LLM, but no prompt was found to "
                "optimize. Searched: its instance and class attributes, and the module globals "
                "and closure variables read by %s, for PromptTemplate, ChatPromptTemplate or "
                "RichPromptTemplate objects and for strings whose name contains 'prompt', "
                "'system' or 'instruction'. Hold the prompt in one of those places (e.g. "
                "self.qa_prompt = PromptTemplate(...), then qa_prompt.format(...) in the step), "
                "or add it with tracer.add_parameter(Parameter(...), used_by=workflow)",
                flow,
                ", ".join(scan.functions) or "its steps",
            )

    def held_template(
        self, held: Held, flow: str, prefix: str, obj: Any, chain: tuple[int, ...]
    ) -> None:
        slot = _HeldTemplateSlot(held)
        marked = not slot.shared  # never mark LlamaIndex's shared defaults
        if marked:  # in place: the step formats this very object
            for inner in inner_templates(held.value):
                if isinstance(inner.metadata, dict) and STAMP_KEY not in inner.metadata:
                    inner.metadata[STAMP_KEY] = uuid.uuid4().hex[:16]
        self.template_params(
            slot,
            held.value,
            prefix + safe_name(held.name, default="prompt"),
            held.name,
            obj,
            chain,
            stampable=False,
            marked=marked,
            lead=f"Prompt {held.name} of the workflow {flow}, held as the {held.where}; its "
            "steps fill it in and send the result to the LLM.",
        )

    # -- retriever settings ----------------------------------------------------------------

    def retriever(self, retriever: Any, prefix: str, chain: tuple[int, ...]) -> None:
        for setting, bounds in self.settings.items():
            value = _probe(retriever, setting)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.settings_seen.add(setting)
            param = Parameter(
                name=self.unique(prefix + setting),
                kind="number",
                description=(
                    f"Retriever setting {setting} of {type(retriever).__name__}"
                    + (
                        ": how many nodes retrieval returns; more nodes give the LLM more "
                        "context (and cost more tokens)."
                        if setting == "similarity_top_k"
                        else "."
                    )
                ),
                bounds=bounds,
                binding=_setting_binding(retriever, setting),
            )
            trainable = self.add(Trainable(param, frozenset(chain), "setting", holder=retriever))
            self.found.by_retriever.setdefault(id(retriever), []).append(trainable)

    def check_settings_found(self) -> None:
        missing = sorted(set(self.settings) - self.settings_seen)
        if self.settings_explicit and missing:
            raise ValueError(
                f"retriever_settings asks for {missing}, but no retriever in the target has a "
                "numeric attribute of that name; check the spelling (e.g. 'similarity_top_k')"
            )


# -- slots: where a template or text lives ------------------------------------------------------


class _Slot:
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

        return Binding(get, lambda text: self.set_text(path, text))


class _PromptSlot(_Slot):
    """A prompt of a ``PromptMixin``: read without copying, written with ``update_prompts``."""

    def __init__(self, root: Any, key: str, module: Any, subkey: str) -> None:
        self.root, self.key, self.module, self.subkey = root, key, module, subkey

    def read(self) -> Any:
        return quiet_call(self.module, "_get_prompts")[self.subkey]

    def write(self, value: Any) -> None:
        self.root.update_prompts({self.key: value})

    def __repr__(self) -> str:
        return f"{type(self.root).__name__}.get_prompts()[{self.key!r}]"


class _AttrSlot(_Slot):
    def __init__(self, obj: Any, attr: str) -> None:
        self.obj, self.attr = obj, attr

    def read(self) -> Any:
        return getattr(self.obj, self.attr)

    def write(self, value: Any) -> None:
        setattr(self.obj, self.attr, value)

    def __repr__(self) -> str:
        return f"{type(self.obj).__name__}.{self.attr}"


class _AgentSystemPromptSlot(_AttrSlot):
    """An agent's ``system_prompt``. A ``ReActAgent`` copied it into its formatter's
    ``context`` when it was built and drops the system message at run time: the header's
    ``{context}`` is what the LLM receives, so a write updates both."""

    def __init__(self, agent: Any) -> None:
        super().__init__(agent, "system_prompt")

    def write(self, value: Any) -> None:
        old = self.obj.system_prompt
        self.obj.system_prompt = value
        formatter = _probe(self.obj, "formatter")
        context = _probe(formatter, "context")
        if not isinstance(context, str):
            return
        if context == old or not context.strip():
            formatter.context = value
        elif old and old in context:
            formatter.context = context.replace(old, value, 1)


class _PrefixMessageSlot(_Slot):
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


class _HeldTextSlot(_Slot):
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


class _HeldTemplateSlot(_Slot):
    """A template a workflow step holds by reference: edited in place, so the step's own
    reference sees the new text. A template that belongs to LlamaIndex (one of its shared
    defaults) is never edited: the first write rebinds a copy where the step reads it."""

    def __init__(self, held: Held) -> None:
        self.held = held
        self.shared = id(held.value) in _framework_templates()

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


def _framework_templates() -> set[int]:
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


def _setting_binding(obj: Any, attr: str) -> Binding:
    return Binding(lambda: getattr(obj, attr), lambda v: setattr(obj, attr, v))


# -- descriptions -------------------------------------------------------------------------------


def _purpose(holder: Any, key: str) -> str | None:
    if key == "prompt" and type(holder).__name__.endswith("Selector"):
        return _PURPOSE["select_prompt"]
    return _PURPOSE.get(key)


def _suffix(path: Path, template: Any) -> str:
    out = []
    i = 0
    while i < len(path):
        step = path[i]
        if step == "default":
            # the completion branch keeps the slot's own name; a chat default is "default"
            rest = path[i + 1 :]
            if rest and rest[0] == "msg":
                out.append(".default")
            i += 1
        elif step == "cond":
            if path[i + 1] > 0:
                out.append(f".cond{path[i + 1]}")
            elif not (len(path) > i + 2 and path[i + 2] == "msg"):
                out.append(".chat_branch")
            i += 2
        elif step == "msg":
            out.append(f".chat[{path[i + 1]}]")
            i += 2
        else:  # pragma: no cover - paths only hold the steps above
            i += 1
    return "".join(out)


def _describe_prompt(
    owner: str,
    name: str,
    purpose: str | None,
    path: Path,
    template: Any,
    variables: frozenset[str],
    jinja: bool,
    lead: str | None = None,
) -> str:
    what = f"Prompt {name.split('.')[-1]} of the {owner}"
    if lead is not None:
        text = lead
    else:
        text = f"{what}: it {purpose}." if purpose else f"{what}."
    if path and path[0] in ("default", "cond"):
        if path[0] == "default":
            text += " Completion branch, used when the LLM is not a chat model."
        else:
            text += " Chat branch, used when the LLM is a chat model."
    if "msg" in path:
        index = path[path.index("msg") + 1]
        try:
            role = descend(template, path)[0].message_templates[index].role.value
        except (LookupError, AttributeError, IndexError):
            role = "?"
        text += f" This is message {index} ({role})."
    if variables:
        text += (
            " Filled in at run time: " + ", ".join("{" + v + "}" for v in sorted(variables)) + "."
        )
    if jinja:
        text += " Jinja syntax."
    return text


def _probe(obj: Any, attr: str) -> Any:
    """``getattr(obj, attr, None)``, also when a property raises something else."""
    try:
        return getattr(obj, attr, None)
    except Exception:
        logger.debug("reading %s.%s raised; skipped", type(obj).__name__, attr, exc_info=True)
        return None
