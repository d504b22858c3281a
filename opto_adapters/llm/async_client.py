"""``AsyncLLM``: :class:`~.client.LLM` for ``asyncio`` code, over ``openai.AsyncOpenAI``.

The same arguments, retries, :class:`Budget`, deadline, JSON modes and fallbacks, context
checks and usage counters as ``LLM`` (all of it is :mod:`.core`, shared); only the transport
differs: requests are awaited and retries wait with ``asyncio.sleep``, so one event loop can
keep hundreds of requests in flight. ``asyncio`` and ``openai`` are imported on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import server
from .core import PROBE, SEND, BaseLLM, Flow, JSONResult, Messages

if TYPE_CHECKING:
    import openai

__all__ = ["AsyncLLM"]


class AsyncLLM(BaseLLM):
    """Async chat client for OpenAI-compatible endpoints: ``await llm.complete(...)``.

    Takes the arguments of :class:`LLM` (``client`` is then an ``openai.AsyncOpenAI`` or
    ``AsyncAzureOpenAI``). Safe to share between tasks (and threads, each with its own loop
    only if each makes its own ``AsyncLLM``: the HTTP connections belong to one event loop).
    A shared :class:`Budget` counts a call as spent from the moment it is sent, so
    ``max_calls`` is never exceeded however many calls run at once; see :class:`Budget`.
    """

    _name = "AsyncLLM"
    _asynchronous = True
    _client: openai.AsyncOpenAI

    async def close(self) -> None:
        """Stop this client (also at ``async with`` exit): it refuses requests from then on.
        The connections are closed only when it made its own ``openai`` client."""
        self._closed = True
        if self._owns_client:
            await self._client.close()

    async def __aenter__(self) -> AsyncLLM:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ public calls
    async def complete(self, messages: Messages, *, deadline: float | None = None, **params: Any) -> str:
        """The assistant text for ``messages``; as :meth:`LLM.complete`, awaited."""
        return await self._run(self._complete_flow(messages, params, deadline))

    chat = complete

    async def __call__(self, messages: Messages, **params: Any) -> str:
        """Alias of :meth:`complete`."""
        return await self.complete(messages, **params)

    async def complete_json(
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
        """A parsed JSON object; as :meth:`LLM.complete_json` (same modes and fallbacks), awaited."""
        return await self._run(
            self._json_flow(
                messages, schema, schema_name, strict, example, json_instruction, deadline, params
            )
        )

    # ------------------------------------------------------------------ transport
    async def _run(self, flow: Flow) -> Any:
        """Run a flow: await the I/O it yields and hand it the results (a cancellation is
        handed to it too, so its budget reservation is given back)."""
        import asyncio  # (here: importing the library must not load asyncio)

        try:
            action = next(flow)
            while True:
                try:
                    if action[0] is SEND:
                        result: Any = await self._client.chat.completions.create(**action[1], timeout=action[2])
                    elif action[0] is PROBE:  # once per client: the blocking probe in a thread
                        result = await asyncio.to_thread(server.probe_context_size, *self._probe_args(action[1]))
                    else:  # SLEEP
                        result = await asyncio.sleep(action[1])
                except BaseException as exc:  # noqa: BLE001 - handed to the flow, which decides
                    action = flow.throw(exc)
                else:
                    action = flow.send(result)
        except StopIteration as done:
            return done.value
