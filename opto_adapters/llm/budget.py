"""Usage counters and the :class:`Budget` that caps calls and tokens across clients."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from .errors import BudgetExceeded

__all__ = ["Budget", "Usage"]


@dataclass(frozen=True)
class Usage:
    """Token and call counters.

    ``calls`` counts successful completions; ``requests`` counts every HTTP
    attempt (including retries and rejected response formats); ``retries``
    counts re-sent requests after transient failures.
    """

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    requests: int = 0
    retries: int = 0


class Budget:
    """Spending limit shared by every :class:`LLM` and :class:`AsyncLLM` it is given to
    (thread-safe, and safe for any number of concurrent tasks).

    A call is refused (``BudgetExceeded``, no request sent) once ``max_calls``
    successful calls are used or in flight, or ``max_tokens`` tokens are spent.
    The call that crosses ``max_tokens`` completes; the next one is refused.
    ``None`` means unlimited.

    Under concurrency the rule is: a call takes its place before its request is sent and
    holds it until it returns (a failed or cancelled call gives it back), so the calls made
    never exceed ``max_calls``, however many run at once; tokens are known only when a call
    returns, so ``max_tokens`` can be exceeded by at most what the calls already in flight
    when it was crossed spend.
    """

    def __init__(self, max_calls: int | None = None, max_tokens: int | None = None) -> None:
        for name, value in (("max_calls", max_calls), ("max_tokens", max_tokens)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {value}")
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self._lock = threading.Lock()
        self._calls = 0
        self._tokens = 0
        self._in_flight = 0

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Budget(max_calls={self.max_calls}, max_tokens={self.max_tokens}; "
            f"used calls={self.calls_used}, tokens={self.tokens_used})"
        )

    @property
    def calls_used(self) -> int:
        """Successful calls charged to this budget."""
        with self._lock:
            return self._calls

    @property
    def tokens_used(self) -> int:
        """Total tokens charged to this budget."""
        with self._lock:
            return self._tokens

    @property
    def remaining_calls(self) -> int | None:
        """Calls left (``None`` when unlimited)."""
        with self._lock:
            if self.max_calls is None:
                return None
            return max(0, self.max_calls - self._calls - self._in_flight)

    @property
    def remaining_tokens(self) -> int | None:
        """Tokens left (``None`` when unlimited)."""
        with self._lock:
            return None if self.max_tokens is None else max(0, self.max_tokens - self._tokens)

    @property
    def exhausted(self) -> bool:
        """True when the next call would be refused."""
        with self._lock:
            return self._exceeded_locked() is not None

    def check(self) -> None:
        """Raise :class:`BudgetExceeded` if the next call would be refused."""
        with self._lock:
            self._raise_if_exceeded_locked()

    def _exceeded_locked(self) -> str | None:
        if self.max_tokens is not None and self._tokens >= self.max_tokens:
            return (
                f"LLM token budget spent: {self._tokens} tokens used of max_tokens="
                f"{self.max_tokens} ({self._calls} calls). Raise it with "
                "Budget(max_tokens=...) or pass budget=None for no limit."
            )
        if self.max_calls is not None and self._calls + self._in_flight >= self.max_calls:
            in_flight = f" (+{self._in_flight} in flight)" if self._in_flight else ""
            return (
                f"LLM call budget spent: {self._calls} calls used{in_flight} of max_calls="
                f"{self.max_calls} ({self._tokens} tokens). Raise it with "
                "Budget(max_calls=...) or pass budget=None for no limit."
            )
        return None

    def _raise_if_exceeded_locked(self) -> None:
        reason = self._exceeded_locked()
        if reason is not None:
            raise BudgetExceeded(
                reason,
                calls_used=self._calls,
                tokens_used=self._tokens,
                max_calls=self.max_calls,
                max_tokens=self.max_tokens,
            )

    def _reserve(self) -> None:
        with self._lock:
            self._raise_if_exceeded_locked()
            self._in_flight += 1

    def _settle(self, *, succeeded: bool, tokens: int) -> None:
        with self._lock:
            self._in_flight -= 1
            if succeeded:
                self._calls += 1
                self._tokens += tokens
