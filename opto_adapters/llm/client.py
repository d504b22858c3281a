"""``LLM``: a thin, thread-safe chat client for any OpenAI-compatible endpoint.

Works with OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp server and friends.
Configuration comes from the constructor or the environment (see :mod:`.endpoint`):

* ``OPENAI_API_KEY`` - API key (optional for servers on localhost/private hosts),
* ``OPENAI_BASE_URL`` - endpoint, e.g. ``http://localhost:11434/v1`` for Ollama,
* ``OPTO_MODEL`` - model name (default ``gpt-4o-mini``).

The client does its own retries (exponential backoff with jitter on timeouts,
connection errors, 408/409/429 and 5xx), keeps thread-safe usage counters,
enforces an optional :class:`Budget` and an optional deadline, and offers
:meth:`LLM.complete_json` which asks for structured output the way the server's family
accepts it (``json_mode``, see :mod:`.formats`; ``"auto"`` finds it from the first refusal)
and parses the reply leniently.  A prompt over the server's context is a
:class:`ContextOverflow` (see :mod:`.server`), never retried.  All of that lives in
:mod:`.core`, shared with :class:`~.async_client.AsyncLLM`; this module is the blocking
transport only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import server
from .core import JSON_MODES, PROBE, SEND, BaseLLM, Flow, JSONMode, JSONResult, Messages

if TYPE_CHECKING:
    import openai

__all__ = ["JSON_MODES", "LLM", "JSONMode", "JSONResult", "Messages"]


class LLM(BaseLLM):
    """Thread-safe chat client for OpenAI-compatible endpoints (blocking calls).

    Args:
        model: model (or Azure deployment) name; default ``$OPTO_MODEL`` or ``gpt-4o-mini``.
        base_url: endpoint such as ``http://localhost:8000/v1``; default ``$OPENAI_BASE_URL``.
        api_key: default ``$OPENAI_API_KEY``; a placeholder is used for local servers.
        timeout: per-request timeout in seconds.
        max_retries: retries after timeouts, connection errors, 408/409/429 and 5xx.
        temperature: sampling temperature sent with every call (unless overridden).
        budget: optional :class:`Budget` (may be shared between instances, sync and async).
        client: an existing ``openai.OpenAI``/``AzureOpenAI`` (its own retries are disabled).
        json_mode: how :meth:`complete_json` asks for JSON: ``"auto"`` (default: ``json_schema``,
            then what the endpoint's first refusal points to, remembered), ``"json_schema"``
            (OpenAI, vLLM), ``"llama.cpp"`` (llama-server, llama-cpp-python: schema as a
            grammar), ``"ollama"``, ``"json_object"`` or ``"text"``; see :mod:`.formats`.
            Default ``$OPTO_JSON_MODE``, else ``"auto"``.
        check_context: before each request, compare the prompt (~3.5 characters a token) with
            the context the server publishes (llama-server ``/props``, vLLM ``/v1/models``;
            asked once) and raise :class:`ContextOverflow` without sending when it is over.
            Default ``$OPTO_CHECK_CONTEXT`` (``1`` turns it on), else off.
        deadline: a ``time.monotonic()`` time no request or retry runs past (see ``deadline``).
        azure_endpoint: use ``openai.AzureOpenAI`` with this endpoint.
        api_version: Azure API version (default ``$OPENAI_API_VERSION`` or a GA version).
        backoff_base: first retry delay in seconds (doubles per attempt, with jitter).
        max_backoff: cap on a single retry delay (also caps ``Retry-After``).

    For ``asyncio`` code use :class:`AsyncLLM`: the same arguments and behaviour, awaited.
    """

    _client: openai.OpenAI

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

    # ------------------------------------------------------------------ public calls
    def complete(self, messages: Messages, *, deadline: float | None = None, **params: Any) -> str:
        """Return the assistant text for ``messages`` (a string or chat message dicts).

        Extra ``params`` (``max_tokens``, ``stop``, ``seed``, ...) are passed to
        ``chat.completions.create``; ``deadline`` (``time.monotonic()`` time) overrides
        ``LLM.deadline`` for this call.
        """
        return self._run(self._complete_flow(messages, params, deadline))

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
        example: Any = None,
        json_instruction: bool = True,
        deadline: float | None = None,
        **params: Any,
    ) -> JSONResult:
        """Ask for a JSON object and parse it.

        ``schema`` (a JSON Schema dict or a pydantic model class) is sent the way
        ``json_mode`` says. With ``"auto"`` a refusal that names the response format
        (whatever its HTTP status: llama-cpp-python answers ``json_schema`` with 500) is not
        retried: the next mode is asked at once (llama.cpp's schema-as-grammar when the
        refusal says only ``'text' or 'json_object'`` are allowed, then ``json_object``, then
        plain text) and the refused one is skipped from then on.  Modes that do not enforce
        the schema add an instruction to answer in JSON shaped like ``example`` (or an
        example made from the schema; never the schema text, which small models echo);
        ``json_instruction=False`` when the messages already ask for it.  A reply cut at
        ``max_tokens`` is parsed only as a complete top-level object (``truncated=True``).
        Raises :class:`LLMResponseError` when the reply holds no JSON object.
        """
        return self._run(
            self._json_flow(
                messages, schema, schema_name, strict, example, json_instruction, deadline, params
            )
        )

    # ------------------------------------------------------------------ transport
    def _run(self, flow: Flow) -> Any:
        """Run a flow: do the I/O it yields with blocking calls and hand it the results."""
        try:
            action = next(flow)
            while True:
                try:
                    if action[0] is SEND:
                        result: Any = self._client.chat.completions.create(**action[1], timeout=action[2])
                    elif action[0] is PROBE:
                        result = server.probe_context_size(*self._probe_args(action[1]))
                    else:  # SLEEP
                        result = time.sleep(action[1])
                except BaseException as exc:  # noqa: BLE001 - handed to the flow, which decides
                    action = flow.throw(exc)
                else:
                    action = flow.send(result)
        except StopIteration as done:
            return done.value
