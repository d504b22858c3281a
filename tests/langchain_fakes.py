"""Offline fakes for the LangChain adapter tests: a chat model that records what it receives
(messages and tool schemas), supports ``bind_tools``, scripted tool calls and streaming, and a
deterministic keyword embedding so retrieval picks the obviously relevant document."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.language_models import FakeListLLM
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.tracers.base import BaseTracer
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, PrivateAttr


@dataclass
class Call:
    """One model call as the provider would see it."""

    messages: list[BaseMessage]
    tools: list[dict] = field(default_factory=list)

    @property
    def text(self) -> str:
        """Every message's text and every tool description, for ``in`` checks."""
        parts = [f"{m.type}: {m.content}" for m in self.messages]
        for schema in self.tools:
            fn = schema.get("function", schema)
            parts.append(f"tool {fn.get('name')}: {fn.get('description')}")
        return "\n".join(parts)

    def tool_description(self, name: str) -> str | None:
        for schema in self.tools:
            fn = schema.get("function", schema)
            if fn.get("name") == name:
                return fn.get("description")
        return None

    @property
    def system(self) -> str | None:
        return next((str(m.content) for m in self.messages if m.type == "system"), None)


class RecordingChatModel(BaseChatModel):
    """Replies from a script (``responses``, cycled) or a function of the messages
    (``respond``), and records every call in ``calls``."""

    responses: list[Any] = Field(default_factory=lambda: ["ok"])
    respond: Any = None  # Callable[[list[BaseMessage]], str | AIMessage] | None
    calls: list[Call] = Field(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _next: int = PrivateAttr(default=0)

    @property
    def _llm_type(self) -> str:
        return "recording-fake"

    def _reply(self, messages: list[BaseMessage], tools: list[dict]) -> AIMessage:
        with self._lock:
            self.calls.append(Call(list(messages), [dict(t) for t in tools]))
            if self.respond is not None:
                reply = self.respond(messages)
            else:
                reply = self.responses[self._next % len(self.responses)]
                self._next += 1
        return reply if isinstance(reply, AIMessage) else AIMessage(content=str(reply))

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        reply = self._reply(messages, kwargs.get("tools") or [])
        return ChatResult(generations=[ChatGeneration(message=reply)])

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        reply = self._reply(messages, kwargs.get("tools") or [])
        words = re.split(r"(\s+)", str(reply.content)) if reply.content else [""]
        for i, word in enumerate(words):
            last = i == len(words) - 1
            chunk = AIMessageChunk(
                content=word,
                tool_call_chunks=[
                    {"name": c["name"], "args": _json(c["args"]), "id": c["id"], "index": j}
                    for j, c in enumerate(reply.tool_calls)
                ]
                if last
                else [],
            )
            if run_manager:
                run_manager.on_llm_new_token(word, chunk=ChatGenerationChunk(message=chunk))
            yield ChatGenerationChunk(message=chunk)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)


def _json(args: dict) -> str:
    import json

    return json.dumps(args)


def tool_call(name: str, call_id: str = "call_1", **args: Any) -> AIMessage:
    """An AI message that calls one tool."""
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": call_id}])


def echo(prefix: str = "answer to") -> Callable[[list[BaseMessage]], str]:
    """A ``respond`` function: the reply names the last human message (ties output to input)."""

    def respond(messages: list[BaseMessage]) -> str:
        last = next((m for m in reversed(messages) if m.type == "human"), None)
        return f"{prefix}: {last.content if last else ''}"

    return respond


class KeywordEmbedding(Embeddings):
    """Bag-of-words over a fixed vocabulary: similar texts share words, so retrieval is
    deterministic and sensible."""

    def __init__(self, vocabulary: Sequence[str]) -> None:
        self.vocabulary = [w.lower() for w in vocabulary]

    def _embed(self, text: str) -> list[float]:
        words = re.findall(r"\w+", text.lower())
        vec = [float(words.count(w)) for w in self.vocabulary]
        return vec if any(vec) else [1e-6] * len(vec)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._embed(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._embed(text)


class RunRecorder(BaseTracer):
    """Keeps finished root runs, to check what LangChain's own callbacks report."""

    def __init__(self) -> None:
        super().__init__(_schema_format="original+chat")
        self.roots: list[Any] = []

    def _persist_run(self, run: Any) -> None:
        self.roots.append(run)


def runs_of(root: Any, run_type: str) -> list[Any]:
    """All runs of a type in a run tree, depth first."""
    found, stack = [], [root]
    while stack:
        run = stack.pop()
        if run.run_type == run_type:
            found.append(run)
        stack.extend(reversed(run.child_runs))
    return found


class RecordingLLM(FakeListLLM):
    """A completion model that records the prompts it receives."""

    prompts: list[str] = Field(default_factory=list)

    def _call(self, prompt: str, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> str:
        self.prompts.append(prompt)
        return super()._call(prompt, stop, run_manager, **kwargs)


class AsyncRecordingChatModel(RecordingChatModel):
    """``RecordingChatModel`` with a native async path: ``ainvoke`` awaits ``delay`` seconds
    on the event loop (no thread pool) and records the thread each async call ran in."""

    delay: float = 0.0
    async_threads: list[int] = Field(default_factory=list)

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        import asyncio

        self.async_threads.append(threading.get_ident())
        await asyncio.sleep(self.delay)
        reply = self._reply(messages, kwargs.get("tools") or [])
        return ChatResult(generations=[ChatGeneration(message=reply)])
