"""The walk over a LlamaIndex app: every object reachable from the target is visited once, and
each trainable text (or retriever setting) it holds becomes a ``Trainable`` bound to its slot.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import MessageRole
from llama_index.core.prompts.base import BasePromptTemplate
from llama_index.core.prompts.mixin import PromptMixin
from llama_index.core.tools.types import BaseTool, ToolMetadata

from .. import rules
from ..trace import Binding, Parameter
from ..trace.names import safe_name
from ..trace.templates import template_variables
from .describe import CONSTRAINTS, describe_prompt, path_suffix, purpose_of
from .found import Discovery, Trainable
from .recorder import is_workflow
from .slots import (
    AgentSystemPromptSlot,
    AttrSlot,
    HeldTemplateSlot,
    HeldTextSlot,
    PrefixMessageSlot,
    PromptSlot,
    Slot,
    probe,
    quiet_call,
    setting_binding,
)
from .steps import Held, scan_workflow
from .templates import (
    STAMP_KEY,
    RichPromptTemplate,
    inner_templates,
    read_text,
    stamp,
    text_paths,
    variable_parser_for,
)

try:
    from llama_index.core.agent.workflow.base_agent import BaseWorkflowAgent
except ImportError:  # pragma: no cover - agents ship with llama-index-core 0.12+
    BaseWorkflowAgent = None  # type: ignore[assignment,misc]

__all__ = ["Walker", "is_agent", "settings_spec"]

logger = logging.getLogger("opto_adapters.llama_index")


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


def settings_spec(
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


def is_agent(obj: Any) -> bool:
    return BaseWorkflowAgent is not None and isinstance(obj, BaseWorkflowAgent)


def _agents_of(obj: Any) -> Mapping[str, Any] | None:
    """The agents of an ``AgentWorkflow`` (name -> agent), else ``None``."""
    agents = probe(obj, "agents")
    if isinstance(agents, Mapping) and is_workflow(obj) and not is_agent(obj):
        return agents
    return None


def _agent_label(agents: Mapping[str, Any], name: str) -> str:
    """``agent`` for the only agent of a workflow, ``agent.<name>`` for one of several."""
    return "agent" if len(agents) == 1 else f"agent.{_segment(name, 'agent')}"


class Walker:
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
            child = probe(obj, attr)
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
        if agents is not None and is_agent(module):
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
            slot = PromptSlot(root, key, module, subkey)
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
        slot: Slot,
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
        purpose = purpose_of(holder, purpose_key)
        multi = len(paths) > 1
        for path, inner in paths:
            name = self.unique(base + path_suffix(path, template) if multi else base)
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
                description=describe_prompt(
                    owner_name, base, purpose, path, template, variables, jinja, lead
                ),
                constraint=CONSTRAINTS[syntax],
                validator=rules.text_validator(text),
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

    def install_stamps(self, slot: Slot, template: Any) -> tuple[Any, bool]:
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
                template = probe(obj, attr)
                if template is not None:
                    slot = AttrSlot(obj, attr)
                    self.template_params(
                        slot, template, prefix + name, name, obj, chain, stampable=False
                    )
        prefix_messages = probe(obj, "_prefix_messages")
        if isinstance(prefix_messages, list) and prefix_messages:
            first = prefix_messages[0]
            if getattr(first, "role", None) == MessageRole.SYSTEM and isinstance(
                first.content, str
            ):
                self.text_param(
                    PrefixMessageSlot(obj, "_prefix_messages", 0),
                    prefix + "system_prompt",
                    f"System prompt of the {type(obj).__name__}: the first message the chat LLM "
                    "receives on every turn.",
                    obj,
                    chain,
                )
        system_prompt = probe(obj, "_system_prompt")
        if (
            isinstance(system_prompt, str)
            and system_prompt.strip()
            and "ChatEngine" in type(obj).__name__
        ):
            self.text_param(
                AttrSlot(obj, "_system_prompt"),
                prefix + "system_prompt",
                f"System prompt of the {type(obj).__name__}, sent with the retrieved context on "
                "every turn.",
                obj,
                chain,
            )

    def text_param(
        self,
        slot: Slot,
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
            constraint=CONSTRAINTS["python"] if variables else "",
            validator=rules.text_validator(original),
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
        if not is_agent(obj):
            return
        system_prompt = probe(obj, "system_prompt")
        formatter = probe(obj, "formatter")
        react = isinstance(probe(formatter, "context"), str)
        # a ReAct agent without a system prompt has no place for one in its header
        if isinstance(system_prompt, str) and not (react and not system_prompt.strip()):
            agent_name = getattr(obj, "name", "") or type(obj).__name__
            self.text_param(
                AgentSystemPromptSlot(obj),
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
        for tool in probe(obj, "tools") or ():
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
        validator = rules.tool_description_validator(original)
        constraint = rules.tool_description_constraint(original)
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
        engine = probe(tool, "query_engine")
        if isinstance(engine, BaseQueryEngine):
            self.visit(engine, trainable.parameter.name + ".", chain)

    def choices(self, obj: Any, prefix: str, chain: tuple[int, ...]) -> None:
        """The tools of a ``RouterQueryEngine`` / ``SubQuestionQueryEngine``: both keep each
        tool's ``ToolMetadata`` (the very object the tool holds) in ``_metadatas`` and its
        query engine in ``_query_engines`` (a list by position, a dict by tool name)."""
        metadatas = probe(obj, "_metadatas")
        if not isinstance(obj, BaseQueryEngine) or not isinstance(metadatas, list):
            return
        engines = probe(obj, "_query_engines")
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
        program = probe(obj, "_selector_program")
        template = probe(program, "prompt")
        if (
            program is None
            or id(program) in self.seen
            or not isinstance(template, BasePromptTemplate)
        ):
            return
        self.seen.add(id(program))
        self.found.components[id(program)] = program
        self.template_params(
            AttrSlot(program, "prompt"),
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
            scan = scan_workflow(obj, attributes=not is_agent(obj))
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
                    HeldTextSlot(held),
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
        slot = HeldTemplateSlot(held)
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
            value = probe(retriever, setting)
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
                binding=setting_binding(retriever, setting),
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
