"""Offline fakes for the LlamaIndex adapter tests: models that record what they receive.

Every model here is passed explicitly (``llm=``, ``embed_model=``); nothing touches
``Settings`` or the network.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    LLMMetadata,
    ToolCallBlock,
)
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from pydantic import PrivateAttr


class WordEmbedding(BaseEmbedding):
    """Bag-of-words hashed into 64 dimensions: texts sharing words are similar."""

    dim: int = 64

    def _vector(self, text: str) -> list[float]:
        vec = [0.0] * self.dim
        for word in re.findall(r"[a-z]+", text.lower()):
            vec[zlib.crc32(word.encode()) % self.dim] += 1.0
        return vec if any(vec) else [1.0] + [0.0] * (self.dim - 1)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vector(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vector(text)


class RecordingLLM(CustomLLM):
    """A completion (or, with ``chat_model=True``, chat) LLM that records every input.

    ``reply(text)`` makes the answer from the prompt text (default: ``"ok"``); a prompt
    containing ``fail_on`` raises ``RuntimeError``. ``delay`` seconds are spent in every
    completion call (``time.sleep`` in ``complete``, ``asyncio.sleep`` in ``acomplete``, so
    concurrent async runs really interleave).
    """

    chat_model: bool = False
    fail_on: str | None = None
    delay: float = 0.0
    _reply: Callable[[str], str] = PrivateAttr()
    _prompts: list[str] = PrivateAttr(default_factory=list)
    _messages: list[list[tuple[str, str]]] = PrivateAttr(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, reply: Callable[[str], str] | str = "ok", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._reply = reply if callable(reply) else (lambda _text, r=reply: r)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="recording", is_chat_model=self.chat_model)

    @property
    def prompts(self) -> list[str]:
        """Every input as one text (chat messages joined), oldest first."""
        return list(self._prompts)

    @property
    def messages(self) -> list[list[tuple[str, str]]]:
        """Chat inputs as ``(role, content)`` lists (chat model only)."""
        return list(self._messages)

    def _answer(self, text: str) -> str:
        with self._lock:
            self._prompts.append(text)
        if self.fail_on is not None and self.fail_on in text:
            raise RuntimeError(f"the model refused: prompt contains {self.fail_on!r}")
        return self._reply(text)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        if self.delay:
            time.sleep(self.delay)
        return CompletionResponse(text=self._answer(prompt))

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        await asyncio.sleep(self.delay)
        return CompletionResponse(text=self._answer(prompt))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        text = self._answer(prompt)

        def gen() -> Any:
            yield CompletionResponse(text=text, delta=text)

        return gen()

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        pairs = [(m.role.value, m.content or "") for m in messages]
        with self._lock:
            self._messages.append(pairs)
        text = self._answer("\n".join(f"{r}: {c}" for r, c in pairs))
        return ChatResponse(message=ChatMessage(role="assistant", content=text))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self.chat(messages, **kwargs)


class ScriptedToolLLM(FunctionCallingLLM):
    """A function-calling LLM that plays a script and records what it was sent.

    Each script item is either a final answer (``str``) or a list of tool calls
    ``[(tool_name, {arg: value}), ...]``. ``calls`` holds, per LLM call, the messages as
    ``(role, text)`` and the tool specs exactly as an OpenAI-style LLM would send them.
    """

    _script: list[Any] = PrivateAttr(default_factory=list)
    _calls: list[dict[str, Any]] = PrivateAttr(default_factory=list)

    def __init__(self, script: Sequence[Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._script = list(script)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            model_name="scripted", is_chat_model=True, is_function_calling_model=True
        )

    @property
    def calls(self) -> list[dict[str, Any]]:
        return list(self._calls)

    def load(self, script: Sequence[Any]) -> None:
        self._script = list(script)

    def _next(self, messages: Sequence[ChatMessage], tools: Any) -> ChatMessage:
        self._calls.append(
            {
                "messages": [(m.role.value, m.content or "") for m in messages],
                "tools": list(tools or []),
            }
        )
        item = self._script.pop(0) if self._script else "done"
        if isinstance(item, str):
            return ChatMessage(role="assistant", content=item)
        blocks = [
            ToolCallBlock(
                tool_call_id=f"call_{len(self._calls)}_{i}", tool_name=name, tool_kwargs=args
            )
            for i, (name, args) in enumerate(item)
        ]
        return ChatMessage(role="assistant", blocks=blocks)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return ChatResponse(message=self._next(messages, kwargs.get("tools")))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self.chat(messages, **kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> Any:
        message = self._next(messages, kwargs.get("tools"))

        def gen() -> Any:
            yield ChatResponse(message=message, delta=message.content or "")

        return gen()

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> Any:
        message = self._next(messages, kwargs.get("tools"))

        async def gen() -> Any:
            yield ChatResponse(message=message, delta=message.content or "")

        return gen()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise NotImplementedError("ScriptedToolLLM is chat-only")

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        raise NotImplementedError("ScriptedToolLLM is chat-only")

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError("ScriptedToolLLM is chat-only")

    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError("ScriptedToolLLM is chat-only")

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        messages = list(chat_history or [])
        if user_msg:
            messages.append(
                ChatMessage(role="user", content=user_msg)
                if isinstance(user_msg, str)
                else user_msg
            )
        return {"messages": messages, "tools": [t.metadata.to_openai_tool() for t in tools]}

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        return [
            ToolSelection(
                tool_id=b.tool_call_id or "", tool_name=b.tool_name, tool_kwargs=b.tool_kwargs
            )
            for b in response.message.blocks
            if isinstance(b, ToolCallBlock)
        ]


def tool_description(call: dict[str, Any], name: str) -> str:
    """The description of tool ``name`` in one recorded ``ScriptedToolLLM`` call."""
    for spec in call["tools"]:
        if spec["function"]["name"] == name:
            return spec["function"]["description"]
    raise KeyError(
        f"tool {name!r} was not offered; offered: {[s['function']['name'] for s in call['tools']]}"
    )
