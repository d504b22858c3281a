"""The errors :class:`~opto_adapters.llm.LLM` raises; each says what went wrong and what to do."""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "BudgetExceeded",
    "ContextOverflow",
    "DeadlineExceeded",
    "LLMError",
    "LLMRequestError",
    "LLMResponseError",
]


class LLMError(Exception):
    """Base class of all errors raised by :class:`LLM`."""


class AuthenticationError(LLMError):
    """The endpoint rejected the credentials (HTTP 401/403) or no API key was configured."""


class BudgetExceeded(LLMError):
    """The :class:`Budget` is spent; no request was sent."""

    def __init__(
        self,
        message: str,
        *,
        calls_used: int,
        tokens_used: int,
        max_calls: int | None,
        max_tokens: int | None,
    ) -> None:
        super().__init__(message)
        self.calls_used = calls_used
        self.tokens_used = tokens_used
        self.max_calls = max_calls
        self.max_tokens = max_tokens


class LLMRequestError(LLMError):
    """A request failed: a non-retryable HTTP error, or retries were exhausted."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        attempts: int = 1,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.attempts = attempts
        self.body = body


class ContextOverflow(LLMRequestError):
    """The prompt (plus the reply's ``max_tokens``) does not fit the model's context.

    Raised when the server says so (never retried: the same prompt fails again) or, with
    ``LLM(check_context=True)``, before sending when the server publishes its context size.
    ``prompt_tokens`` is the server's count when it gives one, else our estimate
    (``estimated=True``); ``context_size`` is the server's context when it says it.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        attempts: int = 0,
        body: Any = None,
        prompt_tokens: int | None = None,
        context_size: int | None = None,
        prompt_chars: int = 0,
        max_tokens: int | None = None,
        estimated: bool = False,
    ) -> None:
        super().__init__(message, status_code=status_code, attempts=attempts, body=body)
        self.prompt_tokens = prompt_tokens
        self.context_size = context_size
        self.prompt_chars = prompt_chars
        self.max_tokens = max_tokens
        self.estimated = estimated


class DeadlineExceeded(LLMRequestError):
    """The caller's deadline (``LLM.deadline`` or ``deadline=``) passed before an answer came.

    ``attempts`` requests were sent (0: the deadline had passed before the first one).
    """

    def __init__(self, message: str, *, attempts: int = 0, deadline: float | None = None) -> None:
        super().__init__(message, attempts=attempts)
        self.deadline = deadline


class LLMResponseError(LLMError):
    """The model answered, but not with what was asked (e.g. no JSON object found).

    ``raw_text`` holds the full reply so callers can record or display it.
    """

    def __init__(
        self,
        message: str,
        *,
        raw_text: str = "",
        finish_reason: str | None = None,
        mode: str | None = None,
    ) -> None:
        preview = raw_text if len(raw_text) <= 300 else raw_text[:300] + "…"
        super().__init__(f"{message}; raw reply: {preview!r}")
        self.reason = message
        self.raw_text = raw_text
        self.finish_reason = finish_reason
        self.mode = mode
