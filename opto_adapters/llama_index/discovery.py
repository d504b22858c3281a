"""Find the trainable parts of a LlamaIndex app and bind a ``Parameter`` to each.

What is found: every prompt ``get_prompts()`` returns (each text of a template: the
completion branch and each chat message of a selector), the templates and system prompts of
chat engines (which are not ``PromptMixin`` objects), an agent's ``system_prompt``, each
tool's description and, when asked, numeric retriever settings such as ``similarity_top_k``.

Writes go through the framework's own doors: ``update_prompts`` for prompts (with a copy of
the template: LlamaIndex's default templates are shared by every engine in the process), the
mutable ``ToolMetadata`` for tools, plain attributes elsewhere.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import MessageRole
from llama_index.core.prompts.base import BasePromptTemplate
from llama_index.core.prompts.mixin import PromptMixin
from llama_index.core.tools.types import BaseTool

from ..trace import Binding, Parameter, safe_name, template_variables
from .recorder import is_workflow
from .templates import (
    STAMP_KEY,
    Path,
    RichPromptTemplate,
    descend,
    inner_templates,
    read_text,
    replace_text,
    stamp,
    text_paths,
    variable_parser_for,
)

__all__ = ["Discovery", "Trainable", "discover", "quiet_call"]

logger = logging.getLogger("opto_adapters.llama_index")

MAX_TOOL_DESCRIPTION = 1024  # ToolMetadata.to_openai_tool refuses longer descriptions

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
    order, in what the LLM received), ``contains`` (its text appears verbatim), ``tool``
    (the tool was offered to the LLM) or ``setting`` (an input of its retriever).
    ``owners`` are the ids of the objects from the tracer's target down to the holder: a
    run that touched none of them cannot have used it.
    """

    parameter: Parameter
    owners: frozenset[int]
    match: str
    holder: Any = None
    stamps: tuple[tuple[str, int | None], ...] = ()
    syntax: str = "llama"  # how its {variables} are written: "llama", "python" or "jinja"


@dataclass
class Discovery:
    """Everything ``discover`` found."""

    trainables: list[Trainable] = field(default_factory=list)
    components: dict[int, Any] = field(default_factory=dict)
    by_stamp: dict[str, list[tuple[Trainable, int | None]]] = field(default_factory=dict)
    by_tool: dict[int, Trainable] = field(default_factory=dict)
    by_tool_name: dict[str, list[Trainable]] = field(default_factory=dict)
    by_retriever: dict[int, list[Trainable]] = field(default_factory=dict)

    @property
    def parameters(self) -> list[Parameter]:
        return [t.parameter for t in self.trainables]


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
    walker.visit(target, "", ())
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


class _Walker:
    def __init__(self, settings: tuple[dict[str, tuple[float | None, float | None]], bool]) -> None:
        self.found = Discovery()
        self.settings, self.settings_explicit = settings
        self.settings_seen: set[str] = set()
        self.seen: set[int] = set()
        self.prompts_covered: set[int] = set()
        self.names: set[str] = set()

    # -- walking ---------------------------------------------------------------------------

    def visit(self, obj: Any, prefix: str, chain: tuple[int, ...]) -> None:
        if obj is None or id(obj) in self.seen:
            return
        self.seen.add(id(obj))
        self.found.components[id(obj)] = obj
        chain = (*chain, id(obj))
        if isinstance(obj, PromptMixin) and id(obj) not in self.prompts_covered:
            self.prompt_slots(obj, obj, prefix, [], chain)
        if isinstance(obj, PromptMixin):
            try:
                modules = quiet_call(obj, "_get_prompt_modules")
            except Exception:  # a module that cannot list its sub-modules: skip them
                logger.debug("cannot list prompt modules of %s", type(obj).__name__, exc_info=True)
                modules = {}
            for name, module in modules.items():
                self.visit(module, f"{prefix}{safe_name(name, default='module')}.", chain)
        self.chat_engine(obj, prefix, chain)
        self.agent(obj, prefix, chain)
        if isinstance(obj, BaseTool):
            self.tool(obj, prefix, chain)
        if isinstance(obj, BaseRetriever):
            self.retriever(obj, prefix, chain)
        for attr in ("_retriever", "_query_engine", "query_engine"):
            child = _probe(obj, attr)
            if isinstance(child, (BaseRetriever, BaseQueryEngine)):
                self.visit(child, f"{prefix}{attr.lstrip('_')}.", chain)

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
        self, root: Any, module: Any, prefix: str, keypath: list[str], chain: tuple[int, ...]
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
            self.template_params(
                slot,
                template,
                prefix + ".".join(safe_name(k, default="prompt") for k in key.split(":")),
                subkey,
                module,
                chain,
                stampable=True,
            )
        for name, sub in modules.items():
            self.prompt_slots(root, sub, prefix, [*keypath, name], (*chain, id(sub)))

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
    ) -> None:
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
        purpose = _PURPOSE.get(purpose_key)
        multi = len(paths) > 1
        for path, inner in paths:
            name = self.unique(base + _suffix(path, template) if multi else base)
            token = (
                inner.metadata.get(STAMP_KEY) if stamped and not isinstance(inner, str) else None
            )
            index = path[-1] if path and path[-2:-1] == ("msg",) else None
            jinja = RichPromptTemplate is not None and isinstance(inner, RichPromptTemplate)
            python = purpose_key in _PYTHON_FORMAT and not jinja
            parser = template_variables if python else variable_parser_for(inner)
            syntax = "jinja" if jinja else "python" if python else "llama"
            text = read_text(template, path)
            variables = parser(text)
            param = Parameter(
                name=name,
                kind="prompt",
                description=_describe_prompt(
                    owner_name, base, purpose, path, template, variables, jinja
                ),
                constraint=_CONSTRAINTS[syntax],
                validator=_non_empty,
                binding=_template_binding(slot, path),
                variable_parser=parser,
            )
            if token is not None:
                match = "stamp"
            elif jinja:
                match = "none"
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
        self, slot: _Slot, name: str, description: str, holder: Any, chain: tuple[int, ...]
    ) -> Trainable:
        param = Parameter(
            name=self.unique(name),
            kind="text",
            description=description,
            validator=_non_empty,
            binding=Binding(slot.read, slot.write),
        )
        return self.add(Trainable(param, frozenset(chain), "contains", holder=holder))

    # -- agents and tools ------------------------------------------------------------------

    def agent(self, obj: Any, prefix: str, chain: tuple[int, ...]) -> None:
        agents = _probe(obj, "agents")
        if isinstance(agents, Mapping) and is_workflow(obj):  # AgentWorkflow
            for name, agent in agents.items():
                self.visit(agent, f"{prefix}{safe_name(name, default='agent')}.", chain)
            return
        if not is_workflow(obj):
            return
        system_prompt = _probe(obj, "system_prompt")
        if isinstance(system_prompt, str):
            self.text_param(
                _AttrSlot(obj, "system_prompt"),
                prefix + "system_prompt",
                f"System prompt of the agent {getattr(obj, 'name', '') or type(obj).__name__!r}: "
                "the first message of every LLM call the agent makes.",
                obj,
                chain,
            )
        for tool in _probe(obj, "tools") or ():
            if isinstance(tool, BaseTool):
                self.visit(tool, f"{prefix}tools.", chain)

    def tool(self, tool: BaseTool, prefix: str, chain: tuple[int, ...]) -> None:
        metadata = tool.metadata
        if not isinstance(getattr(metadata, "description", None), str):
            return
        tool_name = metadata.name or type(tool).__name__
        param = Parameter(
            name=self.unique(f"{prefix}{safe_name(tool_name, default='tool')}.description"),
            kind="tool_description",
            description=(
                f"Description of the tool {tool_name!r}, sent to the LLM with the tool's "
                "schema: the model reads it to decide when to call the tool and with which "
                "arguments."
            ),
            constraint=f"at most {MAX_TOOL_DESCRIPTION} characters (OpenAI's limit)",
            validator=_tool_description_ok,
            binding=Binding(
                lambda: tool.metadata.description,
                lambda v: setattr(tool.metadata, "description", v),
            ),
        )
        trainable = self.add(Trainable(param, frozenset(chain), "tool", holder=tool))
        self.found.by_tool[id(tool)] = trainable
        self.found.by_tool[id(metadata)] = trainable
        self.found.by_tool_name.setdefault(tool_name, []).append(trainable)
        engine = _probe(tool, "query_engine")
        if isinstance(engine, BaseQueryEngine):
            self.visit(engine, f"{prefix}{safe_name(tool_name, default='tool')}.", chain)

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
    def read(self) -> Any:
        raise NotImplementedError

    def write(self, value: Any) -> None:
        raise NotImplementedError


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


def _template_binding(slot: _Slot, path: Path) -> Binding:
    def get() -> str:
        try:
            return read_text(slot.read(), path)
        except LookupError as exc:
            raise LookupError(
                f"{slot} no longer has the shape it had when the tracer was created ({exc}); "
                "it was replaced outside the tracer: create a new OptoTracer"
            ) from None

    def set_(text: str) -> None:
        slot.write(replace_text(slot.read(), path, text))

    return Binding(get, set_)


def _setting_binding(obj: Any, attr: str) -> Binding:
    return Binding(lambda: getattr(obj, attr), lambda v: setattr(obj, attr, v))


# -- descriptions and checks --------------------------------------------------------------------


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
) -> str:
    what = f"Prompt {name.split('.')[-1]} of the {owner}"
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


def _non_empty(value: Any) -> str | None:
    if isinstance(value, str) and not value.strip():
        return "the text is empty: write the full instruction"
    return None


def _tool_description_ok(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return "the description is empty: say what the tool does and when to use it"
    if len(value) > MAX_TOOL_DESCRIPTION:
        return (
            f"the description has {len(value)} characters; LlamaIndex refuses more than "
            f"{MAX_TOOL_DESCRIPTION} when it sends tools to an OpenAI-style LLM: shorten it"
        )
    return None


def _probe(obj: Any, attr: str) -> Any:
    """``getattr(obj, attr, None)``, also when a property raises something else."""
    try:
        return getattr(obj, attr, None)
    except Exception:
        logger.debug("reading %s.%s raised; skipped", type(obj).__name__, attr, exc_info=True)
        return None
