"""What LLM-based optimizers share: asking for ``{"reasoning", "suggestion"}`` and a memory."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..llm import LLM, AuthenticationError, BudgetExceeded, LLMError, LLMResponseError
from ..trace import Parameter, Subgraph
from ..trace.coercion import differs
from ..trace.render import cut, value_text
from .base import Optimizer, Proposal

__all__ = ["LLMOptimizer", "MemoryEntry", "REPLY_SCHEMA"]

REPLY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string"},
        "suggestion": {"type": "object", "additionalProperties": True},
    },
    "required": ["reasoning", "suggestion"],
}

REPLY_FORMAT = (
    'Reply with one JSON object only: {"reasoning": "<what caused the feedback, what to '
    'change>", "suggestion": {"<variable name>": <whole new value in its type>}}. '
    'Leave out variables that should stay; if none should change, give "suggestion": {}.'
)


@dataclass(frozen=True)
class MemoryEntry:
    """Earlier values of the variables and the feedback they got."""

    values: dict[str, Any]
    feedback: str


_REPLY_TOKENS = 1024  # the reasoning and the JSON around the values
_MAX_REPLY_TOKENS = 16_384


class LLMOptimizer(Optimizer):
    """An optimizer that asks an LLM (any OpenAI-compatible endpoint, see ``LLM``).

    ``memory_size`` earlier (values, feedback) pairs are shown with each request; replies are
    limited to ``max_tokens`` (``"auto"``: sized to the values to rewrite, see ``reply_tokens``);
    ``remember`` adds one (the trainer records rejected candidates this way). A missing key
    (``AuthenticationError``) or a spent ``Budget`` (``BudgetExceeded``) is raised.
    """

    fatal_errors = (AuthenticationError, BudgetExceeded)

    def __init__(
        self,
        parameters: Iterable[Parameter],
        llm: LLM | None = None,
        *,
        objective: str | None = None,
        memory_size: int = 5,
        value_budget: int | None = 1000,
        max_tokens: int | None | str = "auto",
    ) -> None:
        super().__init__(parameters)
        if memory_size < 0:
            raise ValueError(f"memory_size must be >= 0, got {memory_size}")
        if not (max_tokens is None or max_tokens == "auto" or (isinstance(max_tokens, int) and max_tokens > 0)):
            raise ValueError(f"max_tokens must be a positive int, 'auto' or None, got {max_tokens!r}")
        self.max_tokens = max_tokens
        self._llm = llm
        self.objective = objective
        self.value_budget = value_budget
        self.memory: deque[MemoryEntry] = deque(maxlen=memory_size or None)
        self.memory_size = memory_size
        self._memory_lock = threading.Lock()

    @property
    def llm(self) -> LLM:
        """The LLM client (created from the environment on first use if none was given)."""
        with self._memory_lock:  # one client, even when first used from several threads
            if self._llm is None:
                self._llm = LLM()
            return self._llm

    @property
    def llm_if_created(self) -> LLM | None:
        """The LLM client if one was given or already created; never creates one."""
        return self._llm

    def remember(self, values: dict[str, Any], feedback: str) -> None:
        """Add earlier values and what happened with them to the memory."""
        if self.memory_size == 0:
            return
        entry = MemoryEntry(dict(values), feedback)
        with self._memory_lock:
            if not self.memory or differs(self.memory[-1], entry):  # n candidates, one entry
                self.memory.append(entry)

    def memory_state(self) -> list[dict[str, Any]]:
        """The memory as plain data (what ``restore_memory`` takes back), oldest first."""
        with self._memory_lock:  # values as [name, value] pairs: JSON writers may sort keys
            return [{"values": [[k, v] for k, v in e.values.items()], "feedback": e.feedback} for e in self.memory]

    def restore_memory(self, entries: list[dict[str, Any]]) -> None:
        """Replace the memory with ``memory_state()``'s output (a resumed run's)."""
        with self._memory_lock:
            self.memory.clear()
            for entry in entries:
                values = entry["values"]
                pairs = values.items() if isinstance(values, dict) else values
                self.memory.append(MemoryEntry({str(k): v for k, v in pairs}, str(entry["feedback"])))

    def memory_text(self) -> str:
        with self._memory_lock:
            entries = list(self.memory)
        blocks = []
        for i, entry in enumerate(entries, 1):
            values = "\n".join(
                f"{name}={cut(value_text(v), self.value_budget)}" for name, v in entry.values.items()
            )
            blocks.append(f"[{i}]\n{values}\nfeedback: {entry.feedback}")
        return "\n".join(blocks)

    def reply_tokens(self) -> int | None:
        """The ``max_tokens`` of a reply: ``max_tokens`` as given, or with ``"auto"`` room for
        the reasoning plus every trainable value written out anew (a weak model that never
        stops cannot fill the endpoint's context); ``None`` sends no limit."""
        if self.max_tokens != "auto":
            return self.max_tokens  # type: ignore[return-value]
        chars = sum(len(str(p.value)) for p in self.parameters if p.trainable)
        return min(_MAX_REPLY_TOKENS, _REPLY_TOKENS + chars // 3)

    @staticmethod
    def feedback_summary(subs: list[Subgraph], budget: int = 500) -> str:
        texts = [cut(str(s.feedback), budget) for s in subs]
        if len(texts) == 1:
            return texts[0]
        return " | ".join(f"run {i}: {t}" for i, t in enumerate(texts, 1))

    def ask(self, messages: list[dict[str, str]]) -> Proposal:
        """Send ``messages``; turn the reply into a checked ``Proposal``.

        Authentication and budget errors are raised (the caller must act); any other failure
        is recorded in ``proposal.error`` and changes nothing.
        """
        proposal = Proposal(messages=messages)
        try:
            extra = {} if self.reply_tokens() is None else {"max_tokens": self.reply_tokens()}
            result = self.llm.complete_json(
                messages, REPLY_SCHEMA, schema_name="optimizer_reply", **extra
            )
        except LLMResponseError as exc:
            proposal.raw = exc.raw_text or ""
            if proposal.raw.strip().strip(".").upper() == "TERMINATE":
                proposal.terminated = True
                proposal.reasoning = "the optimizer replied TERMINATE: no change needed"
                return proposal
            proposal.error = f"the optimizer's reply had no usable JSON: {exc.reason}"
            return proposal
        except (AuthenticationError, BudgetExceeded):
            raise  # the caller must act: set the key, or raise the budget
        except LLMError as exc:
            proposal.error = f"the optimizer request failed: {exc}"
            proposal.unanswered = True
            return proposal
        proposal.raw = result.text
        proposal.usage = {
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
        }
        data = result.data
        reasoning = data.get("reasoning", "")
        proposal.reasoning = reasoning if isinstance(reasoning, str) else json.dumps(reasoning)
        suggestion = data.get("suggestion")
        if suggestion is None and "TERMINATE" in result.text:
            proposal.terminated = True
            return proposal
        if not isinstance(suggestion, dict):
            proposal.error = (
                "the optimizer's reply has no 'suggestion' object "
                f"(got {type(suggestion).__name__}); nothing changed"
            )
            return proposal
        if not suggestion:
            proposal.terminated = True
        self.check(suggestion, proposal)
        return proposal

