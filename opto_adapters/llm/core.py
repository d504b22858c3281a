"""What :class:`~.client.LLM` and :class:`~.async_client.AsyncLLM` share: settings, counters,
the request they build, retry decisions, budget accounting, JSON fallbacks and reply handling.

The shared logic is written once as *flows*: generators that ``yield`` the I/O they need
(send a request, sleep before a retry, probe the server's context) and get its result (or its
exception) back. Each client only runs a flow: ``LLM`` with a blocking call and
``time.sleep``, ``AsyncLLM`` with ``await`` and ``asyncio.sleep``. So both retry, count, spend
the budget and fall back between JSON modes in exactly the same way.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import formats, server
from .budget import Budget, Usage
from .endpoint import DEFAULT_MODEL, MODEL_ENV, make_openai_client
from .errors import (
    AuthenticationError,
    ContextOverflow,
    DeadlineExceeded,
    LLMError,
    LLMRequestError,
    LLMResponseError,
)
from .formats import JSON_MODES, JSONMode
from .json_repair import extract_json

if TYPE_CHECKING:
    import openai

__all__ = ["JSON_MODES", "BaseLLM", "JSONMode", "JSONResult", "Messages"]

logger = logging.getLogger("opto_adapters.llm")

Messages = str | Sequence[Mapping[str, Any]]

JSON_MODE_ENV = "OPTO_JSON_MODE"
CHECK_CONTEXT_ENV = "OPTO_CHECK_CONTEXT"
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

# The I/O a flow asks its client for: (SEND, kwargs, timeout) -> the chat completion;
# (SLEEP, seconds) -> None; (PROBE, timeout) -> (context size, family).
SEND, SLEEP, PROBE = "send", "sleep", "probe"
Action = tuple[Any, ...]
Flow = Generator[Action, Any, Any]


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class JSONResult:
    """Result of :meth:`LLM.complete_json`; unpacks as ``data, text = result``.

    ``truncated``: the reply was cut at ``max_tokens`` (``finish_reason == "length"``); its
    ``data`` is then a complete top-level object the reply held before the cut, never one
    mined from inside it.
    """

    data: dict[str, Any]
    text: str
    mode: JSONMode
    usage: Usage
    finish_reason: str | None = None
    truncated: bool = False

    def __iter__(self) -> Iterator[Any]:
        yield self.data
        yield self.text


class _Completion:
    """One chat completion as the flows read it (internal)."""

    __slots__ = ("finish_reason", "text", "usage")

    def __init__(self, text: str, finish_reason: str | None, usage: Usage) -> None:
        self.text, self.finish_reason, self.usage = text, finish_reason, usage


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


def _estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _prompt_chars(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(len(str(m.get("content") or "")) for m in messages)


# --------------------------------------------------------------------------- the shared client
class BaseLLM:
    """Settings, counters and request logic of :class:`LLM` and :class:`AsyncLLM`.

    Not used directly: the subclasses add the transport (a blocking or an awaited call).
    Thread-safe: the counters and the structured-output state are lock-protected, so one
    instance serves many threads (``LLM``) or many tasks (``AsyncLLM``).
    """

    _name = "LLM"
    _asynchronous = False
    _fingerprinted = False  # whether a reply was read for the server's family (see _to_completion)

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        temperature: float | None = None,
        budget: Budget | None = None,
        client: Any = None,
        *,
        json_mode: str | None = None,
        check_context: bool | None = None,
        deadline: float | None = None,
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
        if check_context is None:
            check_context = os.environ.get(CHECK_CONTEXT_ENV, "").strip().lower() in ("1", "true", "yes")
        self.check_context = check_context
        self.deadline = deadline
        if json_mode is None and os.environ.get(JSON_MODE_ENV):
            try:
                json_mode = formats.check_json_mode(os.environ[JSON_MODE_ENV].strip())
            except ValueError as exc:
                raise ValueError(f"${JSON_MODE_ENV}: {exc}") from None
        self._json_mode_choice = formats.check_json_mode(json_mode or "auto")
        if client is not None:
            # A copy with retries off; it shares the caller's connections, which stay theirs.
            self._client = client.with_options(max_retries=0)
            self._owns_client = False
        else:
            self._client = make_openai_client(
                base_url, api_key, timeout, azure_endpoint, api_version,
                asynchronous=self._asynchronous,
            )
            self._owns_client = True
        self.base_url = str(self._client.base_url)
        self._lock = threading.Lock()
        self._calls = self._prompt_tokens = self._completion_tokens = 0
        self._requests = self._retries = 0
        self._unsupported_modes: set[str] = set()
        self._active_mode: JSONMode | None = None
        self._family: str | None = server.family_from_url(self.base_url)
        self._context_size: int | None = None
        self._context_probed = False
        self._closed = False

    def __repr__(self) -> str:
        return f"{self._name}(model={self.model!r}, base_url={self.base_url!r})"

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

    def reset_usage(self) -> None:
        """Zero this instance's counters (a shared :class:`Budget` is not reset)."""
        with self._lock:
            self._calls = self._prompt_tokens = self._completion_tokens = 0
            self._requests = self._retries = 0

    # -- copies: a deep copy shares the HTTP client; a pickle rebuilds it ----------------------

    def __deepcopy__(self, memo: dict[int, Any]) -> BaseLLM:
        import copy

        new = object.__new__(type(self))
        memo[id(self)] = new
        state = {k: v for k, v in self.__dict__.items() if k not in ("_client", "_lock")}
        new.__dict__.update(copy.deepcopy(state, memo))
        new._client, new._owns_client, new._lock = self._client, False, threading.Lock()
        return new

    def __getstate__(self) -> dict[str, Any]:
        """The settings, the endpoint and its API key (a pickle of an LLM holds the key: keep
        it where the key may be)."""
        import openai

        plain = openai.AsyncOpenAI if self._asynchronous else openai.OpenAI
        if type(self._client) is not plain:
            raise TypeError(
                f"cannot pickle an {self._name} over a {type(self._client).__name__} client; "
                "pickle the optimizer with llm=None, or make the LLM from base_url= and api_key="
            )
        state = {k: v for k, v in self.__dict__.items() if k not in ("_client", "_lock")}
        state["_client_args"] = (str(self._client.base_url), self._client.api_key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        base_url, api_key = state.pop("_client_args")
        self.__dict__.update(state)
        self._client = make_openai_client(base_url, api_key, self.timeout, asynchronous=self._asynchronous)
        self._owns_client = True
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ structured output
    @property
    def json_mode(self) -> str:
        """The structured-output choice: ``"auto"`` or one of the modes (settable)."""
        return self._json_mode_choice

    @json_mode.setter
    def json_mode(self, mode: str) -> None:
        self._json_mode_choice = formats.check_json_mode(mode)

    @property
    def active_json_mode(self) -> JSONMode | None:
        """The mode that last worked for ``complete_json`` (``None`` before the first)."""
        with self._lock:
            return self._active_mode

    @property
    def unsupported_modes(self) -> frozenset[str]:
        """Response formats the endpoint rejected; ``"auto"`` skips them from then on."""
        with self._lock:
            return frozenset(self._unsupported_modes)

    @property
    def server_family(self) -> str | None:
        """The endpoint's family as far as it has shown it (``"openai"``, ``"vllm"``,
        ``"llama.cpp"``, ``"llama-cpp-python"``, ``"ollama"``), or ``None``."""
        with self._lock:
            return self._family

    @property
    def context_size(self) -> int | None:
        """The model's context in tokens, when the server has said it (in a refusal or, with
        ``check_context``, in ``/props`` or ``/v1/models``)."""
        with self._lock:
            return self._context_size

    # ------------------------------------------------------------------ flows
    def _complete_flow(self, messages: Messages, params: dict[str, Any], deadline: float | None) -> Flow:
        """``complete``: the assistant text."""
        try:
            completion = yield from self._chat_flow(_normalize_messages(messages), params, deadline)
        except _FormatRefused as refusal:  # a response_format passed by the caller
            raise refusal.error from None
        return completion.text

    def _json_flow(
        self,
        messages: Messages,
        schema: Mapping[str, Any] | type | None,
        schema_name: str | None,
        strict: bool,
        example: Any,
        json_instruction: bool,
        deadline: float | None,
        params: dict[str, Any],
    ) -> Flow:
        """``complete_json``: ask in the endpoint's JSON mode (falling back on a refusal), parse."""
        if schema is not None and hasattr(schema, "model_json_schema"):
            schema = schema.model_json_schema()
        base_messages = _normalize_messages(messages)
        explicit = self._json_mode_choice != "auto"
        mode = self._json_mode_choice if explicit else self._first_auto_mode(schema is not None)
        tried: list[str] = []
        while True:
            request_params = dict(params)
            response_format = formats.request_format(mode, schema, schema_name, strict)
            if response_format is not None:
                request_params["response_format"] = response_format
            request_messages = base_messages
            if json_instruction and formats.needs_instruction(mode, schema):
                request_messages = formats.with_json_instruction(base_messages, schema, example)
            try:
                completion = yield from self._chat_flow(request_messages, request_params, deadline)
            except _FormatRefused as refusal:
                tried.append(mode)
                nxt = None
                if not explicit:
                    with self._lock:
                        self._unsupported_modes.add(mode)
                        skip = frozenset(self._unsupported_modes)
                        family = self._family
                    nxt = formats.next_mode(mode, schema is not None, refusal.message, family, skip)
                if nxt is None:
                    raise self._format_error(refusal.error, mode, tried, explicit) from None
                logger.info(
                    "endpoint %s refused response_format %s (HTTP %s); asking with %s",
                    self.base_url, mode, refusal.error.status_code, nxt,
                )
                mode = nxt
                continue
            break
        with self._lock:
            self._active_mode = mode  # type: ignore[assignment]
        return self._json_result(completion, mode, params)

    def _json_result(self, completion: _Completion, mode: str, params: Mapping[str, Any]) -> JSONResult:
        truncated = completion.finish_reason == "length"
        try:
            data = extract_json(completion.text, nested=not truncated)
        except LLMResponseError as exc:
            reason = exc.reason
            if truncated:
                limit = params.get("max_tokens") or params.get("max_completion_tokens")
                reason = (
                    f"the reply was cut at max_tokens={limit} (finish_reason=length) before its "
                    "JSON object was complete; raise max_tokens (and the server's own limit, "
                    "e.g. llama-server -n) or ask for shorter values"
                    if limit
                    else "the reply was cut (finish_reason=length: the server's token limit or "
                    "its context filled) before its JSON object was complete; set a larger "
                    "max_tokens or a larger context"
                )
            raise LLMResponseError(
                reason, raw_text=completion.text, finish_reason=completion.finish_reason, mode=mode
            ) from None
        return JSONResult(
            data=data,
            text=completion.text,
            mode=mode,  # type: ignore[arg-type]
            usage=completion.usage,
            finish_reason=completion.finish_reason,
            truncated=truncated,
        )

    def _first_auto_mode(self, has_schema: bool) -> str:
        with self._lock:
            active, family, skip = self._active_mode, self._family, self._unsupported_modes
        if active == "json_schema" and family == "ollama" and "ollama" not in skip:
            return "ollama"  # the same request, plus the JSON instruction old Ollama builds need
        if active is not None and (has_schema or not formats.is_schema_mode(active)):
            return active
        if not has_schema:
            return "json_object" if "json_object" not in skip else "text"
        preferred = {"llama-cpp-python": "llama.cpp", "ollama": "ollama"}.get(family or "", "json_schema")
        for mode in (preferred, "json_schema", "llama.cpp", "json_object", "text"):
            if mode not in skip:
                return mode
        return "text"

    def _format_error(
        self, exc: LLMRequestError, mode: str, tried: list[str], explicit: bool
    ) -> LLMRequestError:
        if explicit:
            fix = (
                f"json_mode={mode!r} was refused by {self.base_url}; use json_mode='auto' (finds "
                f"the endpoint's mode) or another of {', '.join(repr(m) for m in JSON_MODES[1:])}"
            )
        else:
            fix = f"every structured-output mode was refused ({', '.join(tried)})"
        return LLMRequestError(
            f"{exc} - {fix}", status_code=exc.status_code, attempts=exc.attempts, body=exc.body
        )

    def _chat_flow(
        self,
        messages: list[dict[str, Any]],
        params: Mapping[str, Any],
        deadline: float | None = None,
    ) -> Flow:
        """One chat completion: context check, budget, retries, counters."""
        if self._closed:
            raise LLMError(
                f"this {self._name} ({self.base_url}) was closed; create a new {self._name} to send requests"
            )
        deadline = self.deadline if deadline is None else deadline
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        kwargs.update(params)
        if self.check_context:
            yield from self._check_context_flow(messages, kwargs.get("max_tokens"), deadline)
        budget = self.budget
        if budget is not None:
            budget._reserve()  # counts as spent while in flight: see Budget
        succeeded, tokens = False, 0
        try:
            response, attempts = yield from self._retry_flow(kwargs, deadline)
            completion = self._to_completion(response, messages, attempts)
            succeeded, tokens = True, completion.usage.total_tokens
            with self._lock:
                self._calls += 1
                self._prompt_tokens += completion.usage.prompt_tokens
                self._completion_tokens += completion.usage.completion_tokens
            return completion
        finally:  # also when the caller's task is cancelled: the reservation is given back
            if budget is not None:
                budget._settle(succeeded=succeeded, tokens=tokens)

    def _note_family(self, family: str | None) -> None:
        if family is None:
            return
        with self._lock:
            if self._family is None:
                self._family = family
                logger.debug("endpoint %s looks like %s", self.base_url, family)

    def _probe_args(self, timeout: float) -> tuple[str, str, str | None, float]:
        return self.base_url, self.model, getattr(self._client, "api_key", None), timeout

    def _check_context_flow(
        self, messages: list[dict[str, Any]], max_tokens: Any, deadline: float | None
    ) -> Flow:
        """Fail fast when the prompt cannot fit the context the server publishes."""
        with self._lock:
            probed = self._context_probed
            self._context_probed = True
        if not probed:
            timeout = min(self.timeout, 10.0)
            if deadline is not None:
                timeout = max(0.1, min(timeout, deadline - time.monotonic()))
            size, family = yield (PROBE, timeout)
            self._note_family(family)
            if size is not None:
                with self._lock:
                    self._context_size = size
        with self._lock:
            size, family = self._context_size, self._family
        if size is None:
            return
        chars = _prompt_chars(messages)
        estimate = server.estimate_prompt_tokens(chars)
        reply = max_tokens if isinstance(max_tokens, int) else 0
        if estimate >= size:
            raise ContextOverflow(
                f"the prompt does not fit the model's context at {self.base_url}: about "
                f"{estimate} tokens ({chars:,} characters, ~{server.CHARS_PER_TOKEN} a token) for a "
                f"context of {size} tokens; not sent. To fix it, "
                + server.context_advice(family),
                prompt_tokens=estimate, context_size=size, prompt_chars=chars,
                max_tokens=reply or None, estimated=True,
            )
        if family == "vllm" and estimate + reply > size:  # vLLM refuses prompt + max_tokens > context
            raise ContextOverflow(
                f"the prompt and its reply do not fit the model's context at {self.base_url}: "
                f"about {estimate} prompt tokens ({chars:,} characters) + max_tokens={reply} for "
                f"a context of {size} tokens; not sent. To fix it, "
                + server.context_advice(family, reply_too_long=True),
                prompt_tokens=estimate, context_size=size, prompt_chars=chars,
                max_tokens=reply, estimated=True,
            )

    def _to_completion(
        self, response: Any, messages: list[dict[str, Any]], attempts: int
    ) -> _Completion:
        choices = getattr(response, "choices", None)
        if not choices:
            raise LLMResponseError(
                f"endpoint {self.base_url} returned no choices",
                raw_text=response if isinstance(response, str) else repr(response),
            )
        if not self._fingerprinted:  # a server's replies all carry the same fields: read one
            self._fingerprinted = True
            self._note_family(server.family_from_reply(response))
        choice = choices[0]
        text = (choice.message.content if choice.message is not None else None) or ""
        usage = getattr(response, "usage", None)
        if usage is not None and usage.prompt_tokens is not None:
            prompt_tokens = int(usage.prompt_tokens or 0)
            completion_tokens = int(usage.completion_tokens or 0)
            if self._family == "ollama":
                self._warn_if_prompt_was_cut(messages, prompt_tokens)
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

    def _warn_if_prompt_was_cut(self, messages: list[dict[str, Any]], prompt_tokens: int) -> None:
        """Ollama cuts a prompt over its context without an error; its token count shows it."""
        if self._family != "ollama" or prompt_tokens <= 0:
            return
        chars = _prompt_chars(messages)
        # text has ~4 characters a token; a cut prompt keeps about a whole context's worth
        # (>= 1,024 tokens), a prompt read from Ollama's cache counts far fewer
        if prompt_tokens >= 1024 and chars / prompt_tokens > 6:
            logger.warning(
                "Ollama at %s counted %d prompt tokens for %d characters: it probably cut the "
                "prompt to its context (it does so silently). Start it with a larger context: "
                "OLLAMA_CONTEXT_LENGTH=8192 ollama serve, or PARAMETER num_ctx 8192 in a Modelfile",
                self.base_url, prompt_tokens, chars,
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

    def _deadline_error(self, deadline: float, attempts: int, last: str | None) -> DeadlineExceeded:
        over = time.monotonic() - deadline
        sent = f"after {attempts} attempt(s)" if attempts else "before any request was sent"
        tail = f"; last error: {last}" if last else ""
        return DeadlineExceeded(
            f"the deadline for requests to {self.base_url} passed {sent} "
            f"({over:.1f}s ago){tail}. Give the run more time (e.g. a larger --time-limit) or "
            f"set {self._name}(timeout=...) lower so one slow request cannot use it all",
            attempts=attempts,
            deadline=deadline,
        )

    def _overflow_error(
        self, exc: openai.APIStatusError, refusal: server.ContextRefusal, kwargs: Mapping[str, Any], attempt: int
    ) -> ContextOverflow:
        family = server.family_from_refusal(exc.body)
        self._note_family(family)
        family = self.server_family
        if refusal.context_size is not None:
            with self._lock:
                self._context_size = refusal.context_size
        chars = _prompt_chars(kwargs.get("messages") or [])
        max_tokens = kwargs.get("max_tokens")
        if refusal.prompt_tokens is not None:
            size = f"{refusal.prompt_tokens} prompt tokens ({chars:,} characters)"
        else:
            size = f"about {server.estimate_prompt_tokens(chars)} prompt tokens ({chars:,} characters)"
        if isinstance(max_tokens, int):
            size += f" + max_tokens={max_tokens} for the reply"
        context = (
            f"the model's context of {refusal.context_size} tokens"
            if refusal.context_size is not None
            else "the model's context (the server did not say its size)"
        )
        return ContextOverflow(
            f"HTTP {exc.status_code} from {self.base_url}: the prompt does not fit: {size} vs "
            f"{context}. Not retried (the same prompt fails again). To fix it, "
            f"{server.context_advice(family, reply_too_long=refusal.reply_too_long)}. "
            f"Server said: {_error_message(exc)}",
            status_code=exc.status_code,
            attempts=attempt,
            body=exc.body,
            prompt_tokens=refusal.prompt_tokens,
            context_size=refusal.context_size,
            prompt_chars=chars,
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        )

    def _status_error(self, exc: openai.APIStatusError, kwargs: Mapping[str, Any], attempt: int) -> Exception | None:
        """The error to raise for an HTTP error answer, or ``None`` when it is worth a retry."""
        status = exc.status_code
        code = _error_code(exc)
        message = _error_message(exc)
        refusal = server.context_refusal(status, exc.body, message)
        if refusal is not None:
            return self._overflow_error(exc, refusal, kwargs, attempt)
        if "response_format" in kwargs and _mentions_response_format(exc):
            # a server refusing the structured-output request (llama-cpp-python answers
            # json_schema with HTTP 500): an answer about the format, not a fault
            self._note_family(server.family_from_refusal(exc.body))
            error = LLMRequestError(
                f"HTTP {status} from {self.base_url}: {message} "
                "(the endpoint refused the response_format; not retried)",
                status_code=status,
                attempts=attempt,
                body=exc.body,
            )
            return _FormatRefused(error, message)
        if (status in _RETRYABLE_STATUS or status >= 500) and code != "insufficient_quota":
            return None
        self._note_family(server.family_from_refusal(exc.body))
        hint = ""
        if status == 404:
            hint = (
                f" (check the model name {self.model!r} / OPTO_MODEL and the base URL"
                + ("; with Ollama: ollama pull " + self.model if self.server_family == "ollama" else "")
                + ")"
            )
        elif code == "insufficient_quota":
            hint = " (quota exhausted; not retried)"
        return LLMRequestError(
            f"HTTP {status} from {self.base_url}: {message}{hint}",
            status_code=status,
            attempts=attempt,
            body=exc.body,
        )

    def _retry_flow(self, kwargs: dict[str, Any], deadline: float | None = None) -> Flow:
        """Send the request, retrying transient failures; returns (response, attempts).

        With a ``deadline`` each attempt's timeout is cut to the time left, no retry waits past
        it, and :class:`DeadlineExceeded` is raised when it passes.
        """
        import openai  # already imported when the client was made

        attempts = self.max_retries + 1
        last: str | None = None
        for attempt in range(1, attempts + 1):
            timeout = self.timeout
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._deadline_error(deadline, attempt - 1, last)
                timeout = min(timeout, left)
            with self._lock:
                self._requests += 1
            logger.debug("chat request model=%s attempt=%d/%d", self.model, attempt, attempts)
            try:
                return (yield (SEND, kwargs, timeout)), attempt
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise self._auth_error(exc) from exc
            except openai.APIStatusError as exc:
                error = self._status_error(exc, kwargs, attempt)
                if error is not None:
                    raise error from exc
                failure: Exception = exc
                what = f"HTTP {exc.status_code}: {_error_message(exc)}"
                status: int | None = exc.status_code
            except openai.APITimeoutError as exc:
                failure, what, status = exc, f"timeout after {timeout:.3g}s", None
                if deadline is not None and time.monotonic() >= deadline:
                    raise self._deadline_error(deadline, attempt, what) from exc
            except openai.APIConnectionError as exc:
                failure, what, status = exc, f"connection error: {exc}", None
            except openai.OpenAIError as exc:
                raise LLMRequestError(
                    f"request to {self.base_url} failed: {exc}", attempts=attempt
                ) from exc
            last = what

            if attempt == attempts:
                raise LLMRequestError(
                    f"request to {self.base_url} failed after {attempts} attempt(s); last error: {what}",
                    status_code=status,
                    attempts=attempt,
                    body=getattr(failure, "body", None),
                ) from failure
            delay = self._backoff(attempt, failure)
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise self._deadline_error(deadline, attempt, what) from failure
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
            yield (SLEEP, delay)
        raise AssertionError("unreachable")  # pragma: no cover


class _FormatRefused(Exception):
    """Internal: the endpoint refused the response_format (carries the error to raise)."""

    def __init__(self, error: LLMRequestError, message: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.message = message
