"""``LLM``: a thin, thread-safe chat client for any OpenAI-compatible endpoint.

Works with OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp server and friends.
Configuration comes from the constructor or the environment (see :mod:`.endpoint`):

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

import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .budget import Budget, Usage
from .endpoint import DEFAULT_MODEL, MODEL_ENV, make_openai_client
from .errors import AuthenticationError, LLMError, LLMRequestError, LLMResponseError
from .json_repair import extract_json

if TYPE_CHECKING:
    import openai

__all__ = ["LLM", "JSONMode", "JSONResult", "Messages"]

logger = logging.getLogger("opto_adapters.llm")

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


# --------------------------------------------------------------------------- helpers
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


def _mentions_response_format(exc: Exception) -> bool:
    """Whether an error's message or body names the structured-output request."""
    text = str(exc).lower()
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        text += " " + json.dumps(body).lower()
    elif isinstance(body, str):
        text += " " + body.lower()
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
        if client is not None:
            # A copy with retries off; it shares the caller's connections, which stay theirs.
            self._client = client.with_options(max_retries=0)
            self._owns_client = False
        else:
            self._client = make_openai_client(
                base_url, api_key, timeout, azure_endpoint, api_version
            )
            self._owns_client = True
        self.base_url = str(self._client.base_url)
        self._lock = threading.Lock()
        self._calls = self._prompt_tokens = self._completion_tokens = 0
        self._requests = self._retries = 0
        self._unsupported_modes: set[str] = set()
        self._json_mode: JSONMode | None = None
        self._closed = False

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
        """Stop this LLM (also at ``with`` exit): it refuses requests from then on.

        The HTTP connections are closed only when this LLM made its client; a client passed
        as ``client=...`` stays open for its owner.
        """
        self._closed = True
        if self._owns_client:
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
        (an error naming the response format, whatever its HTTP status: llama.cpp answers
        ``json_schema`` with 500) are asked again, at once, with
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
                if is_last or exc.status_code is None or not _mentions_response_format(exc):
                    raise  # (a refusal of the format is a format answer, whatever its status)
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
            raise LLMError(
                f"this LLM ({self.base_url}) was closed; create a new LLM to send requests"
            )
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
        import openai  # already imported when the client was made

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
                if "response_format" in kwargs and _mentions_response_format(exc):
                    # a server refusing the structured-output request (llama.cpp answers
                    # json_schema with HTTP 500): an answer about the format, not a fault
                    raise LLMRequestError(
                        f"HTTP {status} from {self.base_url}: {_error_message(exc)} "
                        "(the endpoint refused the response_format; not retried)",
                        status_code=status,
                        attempts=attempt,
                        body=exc.body,
                    ) from exc
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
