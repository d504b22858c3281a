"""``LLM``: a thin, thread-safe chat client for any OpenAI-compatible endpoint.

Works with OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp server and friends.
Configuration comes from the constructor or the environment:

* ``OPENAI_API_KEY`` - API key (optional for servers on localhost/private hosts),
* ``OPENAI_BASE_URL`` - endpoint, e.g. ``http://localhost:11434/v1`` for Ollama,
* ``OPTO_MODEL`` - model name (default ``gpt-4o-mini``).

The client does its own retries (exponential backoff with jitter on timeouts,
connection errors, 408/409/429 and 5xx), keeps thread-safe usage counters,
enforces an optional :class:`Budget`, and offers :meth:`LLM.complete_json`
which negotiates structured output (``json_schema`` → ``json_object`` →
plain text) and parses the reply leniently.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import openai

__all__ = [
    "DEFAULT_MODEL",
    "LLM",
    "AuthenticationError",
    "Budget",
    "BudgetExceeded",
    "JSONMode",
    "JSONResult",
    "LLMError",
    "LLMRequestError",
    "LLMResponseError",
    "Usage",
    "extract_json",
]

logger = logging.getLogger("opto_adapters.llm")

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_AZURE_API_VERSION = "2024-10-21"
LOCAL_PLACEHOLDER_API_KEY = "sk-no-key-required"
MODEL_ENV = "OPTO_MODEL"

JSONMode = Literal["json_schema", "json_object", "text"]
Messages = str | Sequence[Mapping[str, Any]]

_RETRYABLE_STATUS = frozenset({408, 409, 429})
_FORMAT_HINTS = (
    "response_format",
    "json_schema",
    "json_object",
    "structured output",
    "structured_output",
    "guided",
    "grammar",
)


# --------------------------------------------------------------------------- errors
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


# --------------------------------------------------------------------------- usage & budget
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
    """Spending limit shared by every :class:`LLM` it is given to (thread-safe).

    A call is refused (``BudgetExceeded``, no request sent) once ``max_calls``
    successful calls are used or in flight, or ``max_tokens`` tokens are spent.
    The call that crosses ``max_tokens`` completes; the next one is refused.
    ``None`` means unlimited.
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


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class JSONResult:
    """Result of :meth:`LLM.complete_json`; unpacks as ``data, text = result``."""

    data: dict[str, Any]
    text: str
    mode: JSONMode
    usage: Usage

    def __iter__(self) -> Iterator[Any]:
        yield self.data
        yield self.text


@dataclass(frozen=True)
class _Completion:
    text: str
    finish_reason: str | None
    usage: Usage


# --------------------------------------------------------------------------- JSON parsing
_THINK_RE = re.compile(r"<think>.*?</think>", re.S | re.I)
_FENCE_RE = re.compile(r"```[ \t]*[A-Za-z0-9_+-]*[ \t]*\r?\n?(.*?)```", re.S)
_MAX_OBJECT_STARTS = 64


def _strip_trailing_commas(text: str) -> str:
    """Remove commas directly before ``}``/``]`` (outside string literals)."""
    out: list[str] = []
    in_string = escaped = False
    n = len(text)
    for i, ch in enumerate(text):
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch == ",":
            j = i + 1
            while j < n and text[j].isspace():
                j += 1
            if j < n and text[j] in "}]":
                continue
        out.append(ch)
    return "".join(out)


def _loads_object(text: str) -> dict[str, Any] | None:
    text = text.strip()
    if not text.startswith("{"):
        return None
    for variant in (text, _strip_trailing_commas(text)):
        try:
            value = json.loads(variant)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _balanced_objects(text: str) -> Iterator[str]:
    """Yield ``{...}`` segments with balanced braces (string-aware), left to right."""
    start = text.find("{")
    tried = 0
    while start != -1 and tried < _MAX_OBJECT_STARTS:
        tried += 1
        depth = 0
        in_string = escaped = False
        for i in range(start, len(text)):
            ch = text[i]
            if in_string:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    yield text[start : i + 1]
                    break
        start = text.find("{", start + 1)


def extract_json(text: str | None) -> dict[str, Any]:
    """Parse the first JSON object in a model reply, leniently.

    Accepts bare JSON, JSON in a Markdown code fence, JSON surrounded by prose,
    ``<think>…</think>`` preambles and trailing commas.  Raises
    :class:`LLMResponseError` (carrying the raw text) when no object is found.
    """
    raw = text or ""
    if not raw.strip():
        raise LLMResponseError("empty reply where a JSON object was expected", raw_text=raw)
    cleaned = _THINK_RE.sub("", raw).strip()
    candidates = [cleaned, *(m.group(1) for m in _FENCE_RE.finditer(cleaned))]
    for candidate in candidates:
        obj = _loads_object(candidate)
        if obj is not None:
            return obj
    for segment in _balanced_objects(cleaned):
        obj = _loads_object(segment)
        if obj is not None:
            return obj
    raise LLMResponseError("no JSON object found in the reply", raw_text=raw)


# --------------------------------------------------------------------------- helpers
def _is_local_url(url: str) -> bool:
    """True for loopback, private-network and single-label hosts (local model servers)."""
    host = (urlsplit(url).hostname or "").lower()
    if not host:
        return False
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "." not in host  # e.g. a docker-compose service name such as "vllm"
    return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return getattr(exc, "message", None) or str(exc)


def _error_code(exc: openai.APIStatusError) -> str | None:
    code = getattr(exc, "code", None)
    if code is None and isinstance(exc.body, Mapping):
        inner = exc.body.get("error", exc.body)
        if isinstance(inner, Mapping):
            code = inner.get("code")
    return str(code) if code is not None else None


def _retry_after_seconds(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None


def _mentions_response_format(exc: LLMRequestError) -> bool:
    text = str(exc).lower()
    if isinstance(exc.body, Mapping):
        text += " " + json.dumps(exc.body).lower()
    return any(hint in text for hint in _FORMAT_HINTS)


def _normalize_messages(messages: Messages) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    result = [dict(m) for m in messages]
    if not result:
        raise ValueError("messages must not be empty")
    return result


def _with_json_instruction(
    messages: list[dict[str, Any]], schema: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """Tell the model to answer in JSON (needed for json_object and plain-text modes)."""
    hint = "Respond with a single JSON object only, without any other text."
    if schema is not None:
        hint += " The object must conform to this JSON Schema:\n" + json.dumps(schema)
    first = messages[0] if messages else None
    if (
        first is not None
        and first.get("role") == "system"
        and isinstance(first.get("content"), str)
    ):
        return [{**first, "content": f"{first['content']}\n\n{hint}"}, *messages[1:]]
    return [{"role": "system", "content": hint}, *messages]


def _schema_name(schema: Mapping[str, Any], name: str | None) -> str:
    raw = name or str(schema.get("title") or "response")
    return re.sub(r"[^A-Za-z0-9_-]", "_", raw)[:64] or "response"


def _estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


# --------------------------------------------------------------------------- client
class LLM:
    """Thread-safe chat client for OpenAI-compatible endpoints.

    Args:
        model: model (or Azure deployment) name; default ``$OPTO_MODEL`` or ``gpt-4o-mini``.
        base_url: endpoint such as ``http://localhost:8000/v1``; default ``$OPENAI_BASE_URL``.
        api_key: default ``$OPENAI_API_KEY``; a placeholder is used for local servers.
        timeout: per-request timeout in seconds.
        max_retries: retries after timeouts, connection errors, 408/409/429 and 5xx.
        temperature: sampling temperature sent with every call (unless overridden).
        budget: optional :class:`Budget` (may be shared between instances).
        client: an existing ``openai.OpenAI``/``AzureOpenAI`` (its own retries are disabled).
        azure_endpoint: use ``openai.AzureOpenAI`` with this endpoint.
        api_version: Azure API version (default ``$OPENAI_API_VERSION`` or a GA version).
        backoff_base: first retry delay in seconds (doubles per attempt, with jitter).
        max_backoff: cap on a single retry delay (also caps ``Retry-After``).
    """

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        temperature: float | None = None,
        budget: Budget | None = None,
        client: openai.OpenAI | None = None,
        *,
        azure_endpoint: str | None = None,
        api_version: str | None = None,
        backoff_base: float = 0.5,
        max_backoff: float = 20.0,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.model = model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
        self.timeout = timeout
        self.max_retries = max_retries
        self.temperature = temperature
        self.budget = budget
        self.backoff_base = backoff_base
        self.max_backoff = max_backoff
        self._client = self._make_client(
            client, base_url, api_key, timeout, azure_endpoint, api_version
        )
        self.base_url = str(self._client.base_url)
        self._lock = threading.Lock()
        self._calls = self._prompt_tokens = self._completion_tokens = 0
        self._requests = self._retries = 0
        self._unsupported_modes: set[str] = set()
        self._json_mode: JSONMode | None = None
        self._closed = False

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _make_client(
        client: openai.OpenAI | None,
        base_url: str | None,
        api_key: str | None,
        timeout: float,
        azure_endpoint: str | None,
        api_version: str | None,
    ) -> openai.OpenAI:
        if client is not None:
            return client.with_options(max_retries=0)
        if azure_endpoint:
            key = (
                api_key
                or os.environ.get("AZURE_OPENAI_API_KEY")
                or os.environ.get("OPENAI_API_KEY")
            )
            if not key:
                if not _is_local_url(azure_endpoint):
                    raise AuthenticationError(
                        f"No API key for Azure OpenAI endpoint {azure_endpoint}: pass api_key=... "
                        "or set AZURE_OPENAI_API_KEY (or OPENAI_API_KEY)."
                    )
                key = LOCAL_PLACEHOLDER_API_KEY
            return openai.AzureOpenAI(
                azure_endpoint=azure_endpoint,
                api_version=api_version
                or os.environ.get("OPENAI_API_VERSION")
                or DEFAULT_AZURE_API_VERSION,
                api_key=key,
                timeout=timeout,
                max_retries=0,
            )
        url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if not _is_local_url(url):
                raise AuthenticationError(
                    f"No API key for {url}: set OPENAI_API_KEY (or pass api_key=...). For a local "
                    "OpenAI-compatible server (vLLM, Ollama, llama.cpp) set OPENAI_BASE_URL to its "
                    "/v1 URL and OPTO_MODEL to the served model name instead."
                )
            logger.debug("no API key set; using a placeholder key for local server %s", url)
            key = LOCAL_PLACEHOLDER_API_KEY
        return openai.OpenAI(base_url=url, api_key=key, timeout=timeout, max_retries=0)

    def __repr__(self) -> str:
        return f"LLM(model={self.model!r}, base_url={self.base_url!r})"

    # ------------------------------------------------------------------ accounting
    @property
    def usage(self) -> Usage:
        """A snapshot of this instance's counters."""
        with self._lock:
            return Usage(
                calls=self._calls,
                prompt_tokens=self._prompt_tokens,
                completion_tokens=self._completion_tokens,
                total_tokens=self._prompt_tokens + self._completion_tokens,
                requests=self._requests,
                retries=self._retries,
            )

    def close(self) -> None:
        """Close the HTTP connections of the underlying client (also at ``with`` exit)."""
        self._closed = True
        self._client.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def reset_usage(self) -> None:
        """Zero this instance's counters (a shared :class:`Budget` is not reset)."""
        with self._lock:
            self._calls = self._prompt_tokens = self._completion_tokens = 0
            self._requests = self._retries = 0

    @property
    def json_mode(self) -> JSONMode | None:
        """Structured-output mode that last worked for :meth:`complete_json`."""
        with self._lock:
            return self._json_mode

    @property
    def unsupported_modes(self) -> frozenset[str]:
        """Response formats the endpoint rejected; they are skipped from then on."""
        with self._lock:
            return frozenset(self._unsupported_modes)

    # ------------------------------------------------------------------ public calls
    def complete(self, messages: Messages, **params: Any) -> str:
        """Return the assistant text for ``messages`` (a string or chat message dicts).

        Extra ``params`` (``max_tokens``, ``stop``, ``seed``, ...) are passed to
        ``chat.completions.create``.
        """
        return self._chat(_normalize_messages(messages), params).text

    chat = complete

    def __call__(self, messages: Messages, **params: Any) -> str:
        """Alias of :meth:`complete`."""
        return self.complete(messages, **params)

    def complete_json(
        self,
        messages: Messages,
        schema: Mapping[str, Any] | type | None = None,
        *,
        schema_name: str | None = None,
        strict: bool = False,
        **params: Any,
    ) -> JSONResult:
        """Ask for a JSON object and parse it.

        With a ``schema`` (a JSON Schema dict, or a pydantic model class) the
        request uses ``response_format`` ``json_schema``; endpoints rejecting it
        (HTTP 400/422 about the response format) are retried with
        ``json_object`` and then plain text with a JSON instruction.  Rejected
        modes are remembered per instance.  Raises :class:`LLMResponseError`
        when the reply holds no JSON object.
        """
        if schema is not None and hasattr(schema, "model_json_schema"):
            schema = schema.model_json_schema()
        base_messages = _normalize_messages(messages)
        modes: list[JSONMode] = ["json_object", "text"]
        if schema is not None:
            modes.insert(0, "json_schema")
        with self._lock:
            modes = [m for m in modes if m not in self._unsupported_modes] or ["text"]

        for position, mode in enumerate(modes):
            request_params = dict(params)
            if mode == "json_schema":
                assert schema is not None
                request_params["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": _schema_name(schema, schema_name),
                        "schema": dict(schema),
                        "strict": strict,
                    },
                }
                request_messages = base_messages
            else:
                if mode == "json_object":
                    request_params["response_format"] = {"type": "json_object"}
                request_messages = _with_json_instruction(base_messages, schema)
            try:
                completion = self._chat(request_messages, request_params)
            except LLMRequestError as exc:
                is_last = position == len(modes) - 1
                if (
                    is_last
                    or exc.status_code not in (400, 422)
                    or not _mentions_response_format(exc)
                ):
                    raise
                with self._lock:
                    self._unsupported_modes.add(mode)
                logger.info(
                    "endpoint %s rejected response_format %s (HTTP %s); falling back to %s",
                    self.base_url,
                    mode,
                    exc.status_code,
                    modes[position + 1],
                )
                continue
            with self._lock:
                self._json_mode = mode
            try:
                data = extract_json(completion.text)
            except LLMResponseError as exc:
                reason = exc.reason
                if completion.finish_reason == "length":
                    reason += " (reply truncated: finish_reason=length; raise max_tokens)"
                raise LLMResponseError(
                    reason,
                    raw_text=completion.text,
                    finish_reason=completion.finish_reason,
                    mode=mode,
                ) from None
            return JSONResult(data=data, text=completion.text, mode=mode, usage=completion.usage)
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ internals
    def _chat(self, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> _Completion:
        if self._closed:
            raise LLMError(f"this LLM ({self.base_url}) was closed; create a new LLM to send requests")
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        kwargs.update(params)
        if self.budget is not None:
            self.budget._reserve()
        succeeded, tokens = False, 0
        try:
            response, attempts = self._create_with_retries(kwargs)
            completion = self._to_completion(response, messages, attempts)
            succeeded, tokens = True, completion.usage.total_tokens
            with self._lock:
                self._calls += 1
                self._prompt_tokens += completion.usage.prompt_tokens
                self._completion_tokens += completion.usage.completion_tokens
            return completion
        finally:
            if self.budget is not None:
                self.budget._settle(succeeded=succeeded, tokens=tokens)

    def _to_completion(
        self, response: Any, messages: list[dict[str, Any]], attempts: int
    ) -> _Completion:
        choices = getattr(response, "choices", None)
        if not choices:
            raise LLMResponseError(
                f"endpoint {self.base_url} returned no choices",
                raw_text=response if isinstance(response, str) else repr(response),
            )
        choice = choices[0]
        text = (choice.message.content if choice.message is not None else None) or ""
        usage = getattr(response, "usage", None)
        if usage is not None and usage.prompt_tokens is not None:
            prompt_tokens = int(usage.prompt_tokens or 0)
            completion_tokens = int(usage.completion_tokens or 0)
        else:  # some local servers omit usage: estimate ~4 characters per token
            prompt_tokens = _estimate_tokens("".join(str(m.get("content") or "") for m in messages))
            completion_tokens = _estimate_tokens(text)
        if not text:
            logger.warning("model %s returned an empty reply", self.model)
        return _Completion(
            text=text,
            finish_reason=getattr(choice, "finish_reason", None),
            usage=Usage(
                calls=1,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
                requests=attempts,
                retries=attempts - 1,
            ),
        )

    def _backoff(self, attempt: int, exc: Exception) -> float:
        delay = min(self.max_backoff, self.backoff_base * (2 ** (attempt - 1)))
        delay *= 0.5 + random.random() / 2  # jitter: 50-100% of the nominal delay
        retry_after = _retry_after_seconds(exc)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        return delay

    def _auth_error(self, exc: openai.APIStatusError) -> AuthenticationError:
        return AuthenticationError(
            f"Authentication failed (HTTP {exc.status_code}) at {self.base_url} for model "
            f"{self.model!r}: {_error_message(exc)}. Set OPENAI_API_KEY to a valid key; for a "
            "local OpenAI-compatible server set OPENAI_BASE_URL to its /v1 URL and OPTO_MODEL "
            "to the served model name."
        )

    def _create_with_retries(self, kwargs: dict[str, Any]) -> tuple[Any, int]:
        """Send the request, retrying transient failures; returns (response, attempts)."""
        attempts = self.max_retries + 1
        for attempt in range(1, attempts + 1):
            with self._lock:
                self._requests += 1
            logger.debug("chat request model=%s attempt=%d/%d", self.model, attempt, attempts)
            try:
                return self._client.chat.completions.create(**kwargs, timeout=self.timeout), attempt
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise self._auth_error(exc) from exc
            except openai.APIStatusError as exc:
                status = exc.status_code
                code = _error_code(exc)
                retryable = (
                    status in _RETRYABLE_STATUS or status >= 500
                ) and code != "insufficient_quota"
                if not retryable:
                    hint = ""
                    if status == 404:
                        hint = (
                            f" (check the model name {self.model!r} / OPTO_MODEL and the base URL)"
                        )
                    elif code == "insufficient_quota":
                        hint = " (quota exhausted; not retried)"
                    raise LLMRequestError(
                        f"HTTP {status} from {self.base_url}: {_error_message(exc)}{hint}",
                        status_code=status,
                        attempts=attempt,
                        body=exc.body,
                    ) from exc
                failure: Exception = exc
                what = f"HTTP {status}: {_error_message(exc)}"
            except openai.APITimeoutError as exc:
                failure, what, status = exc, f"timeout after {self.timeout}s", None
            except openai.APIConnectionError as exc:
                failure, what, status = exc, f"connection error: {exc}", None
            except openai.OpenAIError as exc:
                raise LLMRequestError(
                    f"request to {self.base_url} failed: {exc}", attempts=attempt
                ) from exc

            if attempt == attempts:
                raise LLMRequestError(
                    f"request to {self.base_url} failed after {attempts} attempt(s); last error: {what}",
                    status_code=status,
                    attempts=attempt,
                    body=getattr(failure, "body", None),
                ) from failure
            delay = self._backoff(attempt, failure)
            logger.warning(
                "LLM request to %s failed (%s); retry %d/%d in %.2fs",
                self.base_url,
                what,
                attempt,
                self.max_retries,
                delay,
            )
            with self._lock:
                self._retries += 1
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
