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

The parts, one idea each: ``found`` (what is found: ``Trainable``, ``Discovery``), ``walk``
(the visit of the app), ``slots`` (where each text lives and how it is written back),
``describe`` (what the optimizer is told about a prompt); the rules a suggestion must keep
are the shared ``opto_adapters.rules``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .found import Discovery, Trainable, check_used_by
from .slots import quiet_call
from .walk import Walker, is_agent, settings_spec

__all__ = ["Discovery", "Trainable", "check_used_by", "discover", "quiet_call"]


def discover(
    target: Any,
    *,
    retriever_settings: bool
    | Iterable[str]
    | Mapping[str, tuple[float | None, float | None]] = False,
) -> Discovery:
    """Walk ``target`` (query engine, retriever, chat engine, agent, workflow, tool) and bind
    a parameter to each trainable text (and, if asked, each numeric retriever setting)."""
    walker = Walker(settings_spec(retriever_settings))
    walker.visit(target, "agent." if is_agent(target) else "", ())
    walker.check_settings_found()
    return walker.found
