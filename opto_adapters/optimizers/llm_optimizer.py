"""What LLM-based optimizers share: asking for ``{"reasoning", "suggestion"}`` and a memory."""

from __future__ import annotations

import inspect
import json
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..llm import (
    LLM,
    AsyncLLM,
    AuthenticationError,
    BaseLLM,
    BudgetExceeded,
    LLMError,
    LLMResponseError,
)
from ..llm.core import JSONResult
from ..trace import Parameter, Subgraph
from ..trace.coercion import differs
from ..trace.render import cut, value_text
from .base import Optimizer, PendingProposal, Proposal

__all__ = ["LLMOptimizer", "MemoryEntry", "REPLY_SCHEMA", "reply_example", "reply_format"]

REPLY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string"},
        "suggestion": {"type": "object", "additionalProperties": True},
    },
    "required": ["reasoning", "suggestion"],
}

PLACEHOLDER_TEXT = "<new text>"
"""The example reply's stand-in for a new text value (a reply that copies it is refused)."""

_EXAMPLE_VARIABLES = 2  # variables named in the example reply (enough to show the shape)
_SHORT_VALUE = 40  # a non-text value this short is shown as it is (copying it changes nothing)


def example_value(value: Any) -> Any:
    """What the example reply shows for a variable now holding ``value``: the value itself
    when it is a short non-text value (a model that copies it changes nothing), else a
    placeholder the optimizer refuses if it comes back."""
    if isinstance(value, str):
        return PLACEHOLDER_TEXT
    if value is None or isinstance(value, (bool, int, float)):
        return value  # (short: a number's JSON is at most 24 characters)
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return PLACEHOLDER_TEXT
    return value if len(text) <= _SHORT_VALUE else PLACEHOLDER_TEXT


def reply_example(parameters: Iterable[Parameter]) -> dict[str, Any]:
    """A filled-in reply with the real variable names: small models follow an example of the
    reply where they echo a JSON Schema back."""
    trainable = [p for p in parameters if p.trainable][:_EXAMPLE_VARIABLES]
    return {
        "reasoning": "The feedback says ... because ...; changing ... fixes it.",
        "suggestion": {p.name: example_value(p.peek()) for p in trainable},
    }


def reply_format(parameters: Iterable[Parameter]) -> str:
    """The reply instruction that ends the prompt: one JSON object, shown by example."""
    return _format_text(reply_example(parameters))


def _format_text(example: dict[str, Any]) -> str:
    return (
        "Reply with one JSON object only, like this example: "
        + json.dumps(example)
        + "\nIn \"suggestion\" give the whole new value of each variable to change, in its "
        'type; leave out the others ("suggestion": {} if none should change).'
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
    ``remember`` adds one (the trainer records rejected candidates this way). ``deadline``
    (a ``time.monotonic()`` time, or ``None``) is passed to every request: none runs past it.
    A missing key (``AuthenticationError``) or a spent ``Budget`` (``BudgetExceeded``) is
    raised; any other failure is the proposal's ``error`` (and ``cause``).

    ``llm`` may be an :class:`LLM` or an :class:`AsyncLLM`. ``step``/``propose`` need an
    ``LLM``; ``astep``/``apropose`` take either: an ``AsyncLLM`` is awaited, an ``LLM``'s
    blocking call runs in a worker thread (``asyncio.to_thread``), so the loop goes on.
    Subclasses build the prompt in ``_prompt`` and may look at the proposal in ``_answered``;
    the sync and async paths share both, only the LLM call differs.
    """

    fatal_errors = (AuthenticationError, BudgetExceeded)

    def __init__(
        self,
        parameters: Iterable[Parameter],
        llm: BaseLLM | None = None,
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
        self.deadline: float | None = None
        self._memory_lock = threading.Lock()

    @property
    def llm(self) -> BaseLLM:
        """The LLM client (created from the environment on first use if none was given)."""
        with self._memory_lock:  # one client, even when first used from several threads
            if self._llm is None:
                self._llm = LLM()
            return self._llm

    @property
    def llm_if_created(self) -> BaseLLM | None:
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

    def reply_format(self) -> str:
        """The reply instruction ending the prompt (an example reply with these variables)."""
        example = reply_example(self.parameters)
        key = [(name, type(v), v) for name, v in example["suggestion"].items()]
        cached = getattr(self, "_reply_format", None)  # (an optimizer unpickled from before)
        if cached is not None and cached[0] == key:
            return cached[1]  # the same names and shown values: the same text
        text = _format_text(example)
        self._reply_format = (key, text)  # (one assignment: safe between threads)
        return text

    def reply_tokens(self) -> int | None:
        """The ``max_tokens`` of a reply: ``max_tokens`` as given, or with ``"auto"`` room for
        the reasoning plus every trainable value written out anew (a weak model that never
        stops cannot fill the endpoint's context); ``None`` sends no limit."""
        if self.max_tokens != "auto":
            return self.max_tokens  # type: ignore[return-value]
        chars = sum(len(str(p.peek())) for p in self.parameters if p.trainable)
        return min(_MAX_REPLY_TOKENS, _REPLY_TOKENS + chars // 3)

    @staticmethod
    def feedback_summary(subs: list[Subgraph], budget: int = 500) -> str:
        texts = [cut(str(s.feedback), budget) for s in subs]
        if len(texts) == 1:
            return texts[0]
        return " | ".join(f"run {i}: {t}" for i, t in enumerate(texts, 1))

    # -- proposing: the prompt and the reply's reading are shared; only the call differs -----

    def propose(self) -> Proposal:
        if _awaitable(self._llm):
            raise TypeError(
                f"this optimizer's LLM is an {type(self._llm).__name__}, which must be awaited: "
                "use `await optimizer.astep()` (or apropose()), or give it an LLM for step()"
            )
        return super().propose()

    def _prepare(self) -> PendingProposal:
        """The prompt is made now, from the feedback and values now; the call when sent."""
        subs = self.feedback_subgraphs()
        messages = self._prompt(subs)
        basis = self.current_values()

        def run() -> Proposal:
            return self._answered(self.ask(messages, basis=basis), subs)

        async def arun() -> Proposal:
            return self._answered(await self.aask(messages, basis=basis), subs)

        return PendingProposal(run, arun, fatal=self.fatal_errors)

    def _propose(self) -> Proposal:
        return self._prepare().run()

    async def _apropose(self) -> Proposal:
        return await self._prepare().arun()

    def _prompt(self, subgraphs: list[Subgraph]) -> list[dict[str, str]]:
        """The messages of the next request from the accumulated feedback (and any
        bookkeeping done before it is sent)."""
        raise NotImplementedError

    def _answered(self, proposal: Proposal, subgraphs: list[Subgraph]) -> Proposal:
        """What to do once the reply is read (e.g. remember the values); returns it."""
        return proposal

    def _request(self) -> dict[str, Any]:
        limit = self.reply_tokens()
        request: dict[str, Any] = {
            "schema_name": "optimizer_reply",
            "json_instruction": False,  # the messages end with the reply format, by example
            "deadline": self.deadline,
        }
        if limit is not None:
            request["max_tokens"] = limit
        return request

    def ask(self, messages: list[dict[str, str]], *, basis: dict[str, Any] | None = None) -> Proposal:
        """Send ``messages``; turn the reply into a checked ``Proposal``.

        Authentication and budget errors are raised (the caller must act); any other failure
        is recorded in ``proposal.error`` (the exception in ``proposal.cause``) and changes
        nothing. A reply cut at ``max_tokens`` is flagged ``truncated``; only a complete
        top-level object in it is used. ``basis``: the values the messages were made from
        (what a suggestion must differ from; default: the parameters' values when it returns).
        """
        llm = self.llm
        if _awaitable(llm):
            raise TypeError(f"{type(llm).__name__} must be awaited: use `await optimizer.aask(messages)`")
        proposal = Proposal(messages=messages, basis=basis)
        request = self._request()
        try:
            result = llm.complete_json(messages, REPLY_SCHEMA, **request)
        except (AuthenticationError, BudgetExceeded):
            raise  # the caller must act: set the key, or raise the budget
        except LLMError as exc:
            return self._failed(proposal, exc, request.get("max_tokens"))
        return self._read(proposal, result)

    async def aask(self, messages: list[dict[str, str]], *, basis: dict[str, Any] | None = None) -> Proposal:
        """:meth:`ask`, awaited: an ``AsyncLLM`` is awaited, an ``LLM`` runs in a worker thread."""
        llm = self.llm
        proposal = Proposal(messages=messages, basis=basis)
        request = self._request()
        try:
            if _awaitable(llm):
                result = await llm.complete_json(messages, REPLY_SCHEMA, **request)
            else:
                import asyncio

                result = await asyncio.to_thread(llm.complete_json, messages, REPLY_SCHEMA, **request)
        except (AuthenticationError, BudgetExceeded):
            raise
        except LLMError as exc:
            return self._failed(proposal, exc, request.get("max_tokens"))
        return self._read(proposal, result)

    @staticmethod
    def _failed(proposal: Proposal, exc: LLMError, limit: int | None) -> Proposal:
        """The proposal of a request that brought no usable reply."""
        proposal.cause = exc
        if not isinstance(exc, LLMResponseError):
            proposal.error = f"the optimizer request failed: {exc}"
            proposal.unanswered = True
            return proposal
        proposal.raw = exc.raw_text or ""
        if proposal.raw.strip().strip(".").upper() == "TERMINATE":
            proposal.terminated = True
            proposal.reasoning = "the optimizer replied TERMINATE: no change needed"
            proposal.cause = None
            return proposal
        if exc.finish_reason == "length":
            proposal.truncated = True
            proposal.error = (
                f"the optimizer's reply was cut at max_tokens={limit} before its JSON object "
                "was complete; nothing changed. Raise it (e.g. OptoPrime(max_tokens="
                f"{2 * limit if limit else 4096})) or ask for shorter values"
                if limit
                else f"the optimizer's reply was cut before its JSON object was complete: {exc.reason}"
            )
            return proposal
        proposal.error = f"the optimizer's reply had no usable JSON: {exc.reason}"
        return proposal

    def _read(self, proposal: Proposal, result: JSONResult) -> Proposal:
        """Check a parsed reply's suggestion into ``proposal``."""
        proposal.raw = result.text
        proposal.truncated = result.truncated
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
        copied = [name for name, value in suggestion.items() if value == PLACEHOLDER_TEXT]
        for name in copied:
            proposal.rejected[str(name)] = (
                f"the reply copied the example's placeholder {PLACEHOLDER_TEXT!r} instead of a new value"
            )
        self.check({k: v for k, v in suggestion.items() if k not in copied} if copied else suggestion, proposal)
        return proposal


def _awaitable(llm: object) -> bool:
    """Whether ``llm``'s calls are coroutines (an :class:`AsyncLLM`, or a stand-in like one)."""
    if llm is None or isinstance(llm, LLM):
        return False
    return isinstance(llm, AsyncLLM) or inspect.iscoroutinefunction(getattr(llm, "complete_json", None))
