"""What the optimizer is told about a LlamaIndex prompt: its purpose, its syntax and where it
sits in its template.
"""

from __future__ import annotations

from typing import Any

from .templates import (
    Path,
    descend,
)

__all__ = ["CONSTRAINTS", "PURPOSE", "describe_prompt", "path_suffix", "purpose_of"]


PURPOSE = {
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
CONSTRAINTS = {
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


def purpose_of(holder: Any, key: str) -> str | None:
    if key == "prompt" and type(holder).__name__.endswith("Selector"):
        return PURPOSE["select_prompt"]
    return PURPOSE.get(key)


def path_suffix(path: Path, template: Any) -> str:
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


def describe_prompt(
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
