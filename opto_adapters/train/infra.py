"""Infrastructure failures: an endpoint that could not be reached or did not answer.

A connection refused, a timeout, a 5xx or a context overflow says nothing about the values
being tried, so the trainer never stores it as a score or a finished step: it retries a few
times, then stops the run as ``failed`` (resumable). ``failure`` tells such an error from an
app's own bug, looking at the exception, its causes and their class names only (no framework
is imported).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Failure", "failure"]

# class names, anywhere in an exception's class hierarchy or its chain of causes
_CONNECTION = frozenset(
    {
        "APIConnectionError", "ConnectError", "ConnectionError", "ConnectionRefusedError",
        "ConnectionResetError", "RemoteProtocolError", "ServiceUnavailableError", "NewConnectionError",
        "MaxRetryError", "ProtocolError", "ServerDisconnectedError", "ClientConnectorError",
    }
)
_TIMEOUT = frozenset(
    {"APITimeoutError", "TimeoutError", "TimeoutException", "ConnectTimeout", "ReadTimeout", "Timeout"}
)
_LLM_ERRORS = frozenset({"BadRequestError", "LLMRequestError", "ContextOverflow", "ContextWindowExceededError"})
# what servers say when the prompt is longer than the model's context
_CONTEXT = (
    "context length", "context_length", "context window", "maximum context", "context size",
    "exceeds the available context", "n_ctx", "max_model_len", "too many tokens", "prompt is too long",
)


@dataclass(frozen=True)
class Failure:
    """Why no answer came: ``kind`` (``connection``, ``timeout``, ``server``,
    ``context``), the error text, and the URL when the error names one."""

    kind: str
    error: str
    url: str | None = None

    def advice(self) -> str:
        """What to change, for this kind of failure."""
        where = f" at {self.url}" if self.url else ""
        if self.kind == "connection":
            return (
                f"the model endpoint{where} could not be reached: start the server, or check its "
                "URL and key (OPENAI_BASE_URL, OPENAI_API_KEY, or the app's own model settings)"
            )
        if self.kind == "timeout":
            return (
                f"the model endpoint{where} did not answer in time: check that it is not stuck or "
                "overloaded, or raise the client's timeout"
            )
        if self.kind == "context":
            return (
                f"the prompt is longer than the model's context{where}: start the server with a "
                "larger context (llama.cpp -c/--ctx-size, vLLM --max-model-len, Ollama num_ctx), "
                "or train fewer or shorter parameters / a smaller batch_size"
            )
        return f"the model endpoint{where} failed (a server error): check its logs"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen) and len(seen) < 20:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _url(exc: BaseException) -> str | None:
    for attr in ("request", "response"):
        obj = getattr(exc, attr, None)
        try:
            url = getattr(obj, "url", None) if obj is not None else None
        except Exception:  # httpx raises when a request was never attached
            url = None
        if url:
            return str(url)
    return None


def _status(exc: BaseException) -> int | None:
    for attr in ("status_code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    return None


def failure(exc: BaseException | None) -> Failure | None:
    """The infrastructure failure ``exc`` is, or ``None`` for any other error."""
    if exc is None:
        return None
    chain = _chain(exc)
    url = next((u for u in map(_url, chain) if u), None)
    text = f"{type(exc).__name__}: {exc}"
    for e in chain:
        names = {c.__name__ for c in type(e).__mro__}
        message = str(e).lower()
        status = _status(e)
        if any(hint in message for hint in _CONTEXT) and (status in (400, 413, 422, 500) or names & _LLM_ERRORS):
            return Failure("context", text, url)
        if names & _TIMEOUT:
            return Failure("timeout", text, url)
        if names & _CONNECTION:
            return Failure("connection", text, url)
        if status is not None and (status >= 500 or status == 429):
            return Failure("server", text, url)
    return None
