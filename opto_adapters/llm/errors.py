"""The errors :class:`~opto_adapters.llm.LLM` raises; each says what went wrong and what to do."""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "BudgetExceeded",
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
