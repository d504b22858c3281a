"""The app's own model usage in a run: tokens and latency of its model calls.

Providers report token counts under several spellings (OpenAI's ``prompt_tokens`` /
``completion_tokens``, LangChain's and Anthropic's ``input_tokens`` / ``output_tokens``,
Gemini's ``prompt_token_count`` / ``candidates_token_count``, Ollama's ``prompt_eval_count`` /
``eval_count``) and nest them (``usage``, ``token_usage``, ``usage_metadata``, a raw response).
``call_usage`` reads them from whatever an adapter has of one model call, so both adapters
share the rule; an ``llm`` span keeps the result in ``Span.usage``. ``usage(root)`` sums a run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .spans import Span

__all__ = ["Usage", "call_usage", "reported_tokens", "usage"]

_PAIRS = (
    ("prompt_tokens", "completion_tokens"),
    ("input_tokens", "output_tokens"),
    ("prompt_token_count", "candidates_token_count"),
    ("prompt_eval_count", "eval_count"),
)
_NESTED = (
    "usage_metadata", "usage", "token_usage", "llm_output", "kwargs", "message",
    "response_metadata", "additional_kwargs", "raw",
)  # fmt: skip
_MAX_DEPTH = 4


@dataclass(frozen=True)
class Usage:
    """A run's model usage: ``model_calls`` (innermost ``llm`` spans), the tokens of the calls
    that reported them (``reported`` of them; ``None`` when none did) and ``latency``, the
    seconds spent in model calls (summed; ``None`` when no call was timed)."""

    model_calls: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency: float | None = None
    reported: int = 0

    @property
    def total_tokens(self) -> int | None:
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)

    def to_data(self) -> dict[str, Any]:
        return {
            "model_calls": self.model_calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency": self.latency,
        }


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    try:
        return getattr(obj, name, None)
    except Exception:  # a property that raises: nothing reported there
        return None


def _search(obj: Any, depth: int) -> tuple[int, int] | None:
    if obj is None or isinstance(obj, (str, bytes, int, float, list, tuple)) or depth > _MAX_DEPTH:
        return None
    for a, b in _PAIRS:
        p, c = _field(obj, a), _field(obj, b)
        if (_count(p) or _count(c)) and (p is None or _count(p)) and (c is None or _count(c)):
            return int(p or 0), int(c or 0)
    for name in _NESTED:
        found = _search(_field(obj, name), depth + 1)
        if found is not None:
            return found
    return None


def reported_tokens(*sources: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens of one model call, from the first of ``sources`` (a
    response, its raw provider reply, a message, a dict of them) that reports any."""
    for source in sources:
        found = _search(source, 0)
        if found is not None:
            return found
    return None


def call_usage(*sources: Any, latency: float | None = None) -> dict[str, float]:
    """What ``Span.usage`` holds for one model call: the tokens ``sources`` report (see
    ``reported_tokens``) and its ``latency`` in seconds, each only when known."""
    out: dict[str, float] = {}
    tokens = reported_tokens(*sources)
    if tokens is not None:
        out["prompt_tokens"], out["completion_tokens"] = tokens
    if latency is not None and latency >= 0:
        out["latency"] = float(latency)
    return out


def usage(root: Span) -> Usage:
    """The model usage of the run under ``root``: every ``llm`` span with no ``llm`` span
    below it is one model call (an outer span that wraps a call is not counted twice)."""
    calls = reported = 0
    prompt = completion = 0
    latency = 0.0
    timed = False
    for span in root.walk():
        if span.kind != "llm" or any(s.kind == "llm" for s in span.walk() if s is not span):
            continue
        calls += 1
        u = span.usage
        if "prompt_tokens" in u or "completion_tokens" in u:
            reported += 1
            prompt += int(u.get("prompt_tokens", 0))
            completion += int(u.get("completion_tokens", 0))
        if "latency" in u:
            timed = True
            latency += float(u["latency"])
    return Usage(
        model_calls=calls,
        prompt_tokens=prompt if reported else None,
        completion_tokens=completion if reported else None,
        latency=latency if timed else None,
        reported=reported,
    )
