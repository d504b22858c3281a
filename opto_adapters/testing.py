"""Offline test helpers: a scripted, OpenAI-compatible HTTP server.

``ScriptedLLMServer`` listens on ``127.0.0.1`` (free port) and answers
``POST /v1/chat/completions`` and ``GET /v1/models`` in the OpenAI wire format,
so the real ``openai`` client (and anything built on it) can be exercised
without network access.  Replies come from a script consumed in order::

    with ScriptedLLMServer(["hello", {"answer": 42}, Reply.error(500)]) as server:
        llm = LLM(base_url=server.base_url, api_key="test")
        ...
        assert "my prompt" in server.prompts()[0]

Script items may be a ``str`` (assistant content), a ``dict``/``list``
(serialised to JSON content), ``None`` (assistant message with ``null``
content) or a :class:`Reply` (errors, delays, token counts, raw bodies).
A callable ``fn(request_body) -> item`` can serve as the default reply used
once the script is exhausted; without a default an exhausted script answers
HTTP 500 with an explanatory error.

``family=`` makes the server answer as one server family's OpenAI-compatible endpoint does
(``"openai"``, ``"vllm"``, ``"llama.cpp"`` for llama-server, ``"llama-cpp-python"``,
``"ollama"``): the structured-output requests it refuses and the exact error bodies it refuses
them with, its answer to a prompt over its context (``context_size``, in ~4-character tokens),
the fields it adds to replies, and where it publishes its context (llama-server ``GET /props``,
vLLM ``max_model_len`` in ``GET /v1/models``)::

    with ScriptedLLMServer(['{"a": 1}'], family="llama-cpp-python") as server:
        ...  # json_schema -> HTTP 500 "Input should be 'text' or 'json_object'"

For pytest, register the :func:`scripted_llm` fixture in a ``conftest.py``::

    from opto_adapters.testing import scripted_llm  # noqa: F401
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "SERVER_FAMILIES",
    "RecordedRequest",
    "Reply",
    "ReplyFunction",
    "ReplySpec",
    "ScriptedLLMServer",
    "scripted_llm",
]

logger = logging.getLogger("opto_adapters.testing")

DEFAULT_MODEL_ID = "scripted-model"
TEST_API_KEY = "sk-scripted-test-key"

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_denied",
    404: "not_found_error",
    408: "timeout",
    409: "conflict",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
}
_ERROR_MESSAGES = {
    400: "Bad request.",
    401: "Incorrect API key provided.",
    403: "You are not allowed to access this resource.",
    404: "The requested resource does not exist.",
    408: "Request timed out.",
    409: "Conflict.",
    422: "Unprocessable entity.",
    429: "Rate limit reached. Please try again later.",
}


SERVER_FAMILIES: tuple[str, ...] = ("openai", "vllm", "llama.cpp", "llama-cpp-python", "ollama")
_DEFAULT_CONTEXT = {"vllm": 8192, "llama.cpp": 4096, "llama-cpp-python": 2048, "ollama": 4096}
_PYDANTIC_LITERAL_ERROR = (
    "[{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
    "'msg': \"Input should be 'text' or 'json_object'\", 'input': '%s', "
    "'ctx': {'expected': \"'text' or 'json_object'\"}}]"
)


def _estimate_tokens(text: str) -> int:
    """Rough token estimate (~4 characters per token, at least 1 for non-empty text)."""
    return math.ceil(len(text) / 4) if text else 0


def _content_text(content: Any) -> str:
    """Flatten a chat message ``content`` (string or list of parts) into plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return str(content)


@dataclass(frozen=True)
class Reply:
    """One scripted answer of :class:`ScriptedLLMServer`.

    Build instances with the class methods: :meth:`text`, :meth:`json`,
    :meth:`error`, :meth:`delay` and :meth:`raw`.
    """

    content: str | None = ""
    status: int = 200
    error_message: str | None = None
    error_type: str | None = None
    error_code: str | None = None
    error_param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str = "stop"
    raw_body: str | bytes | None = None
    content_type: str = "application/json"

    @classmethod
    def text(
        cls,
        content: str | None,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        finish_reason: str = "stop",
    ) -> Reply:
        """An assistant message with ``content``; token counts default to ~chars/4."""
        return cls(
            content=content,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish_reason,
        )

    @classmethod
    def json(cls, obj: Any, **kwargs: Any) -> Reply:
        """An assistant message whose content is ``obj`` serialised as JSON."""
        return cls.text(json.dumps(obj), **kwargs)

    @classmethod
    def error(
        cls,
        status: int,
        message: str | None = None,
        *,
        type: str | None = None,  # noqa: A002 - mirrors the OpenAI error field name
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """An HTTP error with an OpenAI-style ``{"error": {...}}`` body.

        ``retry_after`` adds a ``Retry-After`` header (seconds).
        """
        if status < 400:
            raise ValueError(f"Reply.error needs an HTTP error status (>= 400), got {status}")
        hdrs = dict(headers or {})
        if retry_after is not None:
            hdrs["retry-after"] = f"{retry_after:g}"
        return cls(
            content=None,
            status=status,
            error_message=message,
            error_type=type,
            error_code=code,
            error_param=param,
            headers=hdrs,
        )

    @classmethod
    def delay(cls, seconds: float, then: ReplySpec = "") -> Reply:
        """Wait ``seconds`` before answering with ``then`` (default: empty content).

        Use a delay longer than the client timeout to provoke a timeout; the
        delayed reply is consumed by the request that timed out.
        """
        if seconds < 0:
            raise ValueError("delay must be >= 0 seconds")
        base = _to_reply(then)
        return replace(base, delay_seconds=base.delay_seconds + seconds)

    @classmethod
    def raw(
        cls,
        body: str | bytes,
        *,
        status: int = 200,
        content_type: str = "application/json",
    ) -> Reply:
        """Send ``body`` verbatim (e.g. malformed JSON) with ``status``."""
        return cls(content=None, status=status, raw_body=body, content_type=content_type)

    @property
    def is_error(self) -> bool:
        """True when this reply answers with an HTTP error status."""
        return self.status >= 400


ReplySpec = str | Mapping[str, Any] | list | Reply | None
"""Anything the script accepts: text, JSON-able dict/list, ``None`` or a :class:`Reply`."""

ReplyFunction = Callable[[dict[str, Any]], ReplySpec]
"""Callback ``fn(request_body) -> ReplySpec`` producing a reply from the request."""


def _to_reply(spec: ReplySpec) -> Reply:
    if isinstance(spec, Reply):
        return spec
    if spec is None:
        return Reply(content=None)
    if isinstance(spec, str):
        return Reply(content=spec)
    if isinstance(spec, (Mapping, list)):
        return Reply(content=json.dumps(spec))
    raise TypeError(
        f"unsupported scripted reply of type {type(spec).__name__}; "
        "use str, dict, list, None or Reply"
    )


@dataclass
class RecordedRequest:
    """A request received by :class:`ScriptedLLMServer` and what was answered."""

    index: int
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    raw_body: str
    received_at: float
    status: int | None = None
    response: Any = None
    error: str | None = None

    @property
    def is_chat(self) -> bool:
        """True for chat-completion requests."""
        return self.method == "POST" and self.path.endswith("/chat/completions")

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The ``messages`` list of a chat request (empty otherwise)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("messages"), list):
            return self.body["messages"]
        return []

    @property
    def prompt(self) -> str:
        """All message contents joined with newlines (handy for ``in`` assertions)."""
        return "\n".join(
            _content_text(m.get("content")) for m in self.messages if isinstance(m, Mapping)
        )

    @property
    def model(self) -> str | None:
        """The ``model`` field of the request body."""
        return self.body.get("model") if isinstance(self.body, dict) else None

    @property
    def response_format(self) -> dict[str, Any] | None:
        """The ``response_format`` sent by the client, if any."""
        if isinstance(self.body, dict) and isinstance(self.body.get("response_format"), dict):
            return self.body["response_format"]
        return None

    @property
    def response_format_type(self) -> str | None:
        """``"json_schema"``, ``"json_object"``, ``"text"`` or ``None`` when absent."""
        rf = self.response_format
        return rf.get("type") if rf else None

    @property
    def reply_text(self) -> str | None:
        """Assistant content sent back for a successful non-streaming chat request."""
        if isinstance(self.response, dict):
            try:
                return self.response["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                return None
        return None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the listen backlog: hundreds of clients connect at once (default 5)
    owner: ScriptedLLMServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ScriptedLLMServer/1.0"
    timeout = 30  # idle keep-alive connections are dropped after this many seconds
    disable_nagle_algorithm = True  # avoid 40 ms delayed-ACK stalls on small replies
    wbufsize = -1  # buffer headers + body so each reply leaves in a single write
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self.server.owner._handle(self, "GET")

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self.server.owner._handle(self, "POST")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s - " + format, self.address_string(), *args)


class ScriptedLLMServer:
    """A scripted OpenAI-compatible server on ``127.0.0.1`` for offline tests.

    Args:
        replies: initial script (consumed in order) or a callback used for every
            chat request (``fn(request_body) -> ReplySpec``).
        default: reply (or callback) used when the script is exhausted; when
            ``None`` an exhausted script answers HTTP 500.
        supports_json_schema: when False, chat requests with
            ``response_format.type == "json_schema"`` are rejected with
            ``unsupported_status`` (or as ``family`` rejects them) without consuming a
            scripted reply; ``None``: as ``family`` does (llama-cpp-python 0.3 refuses it,
            the others accept it).
        supports_json_object: same for ``response_format.type == "json_object"``.
        unsupported_status: HTTP status for rejected response formats (400 or 422) when no
            ``family`` is given.
        family: answer as that server family does (see :data:`SERVER_FAMILIES`).
        context_size: the model's context in tokens (~4 characters each); a longer prompt
            gets the family's refusal (Ollama cuts it silently and counts what it kept).
            Default: the family's usual default, unlimited without a family.
        api_key: when set, requests must carry it (``Authorization: Bearer`` or
            ``api-key`` header); others get 401 without consuming a reply.
        model_ids: model ids listed by ``GET /v1/models``.
    """

    def __init__(
        self,
        replies: Iterable[ReplySpec] | ReplyFunction | None = None,
        *,
        default: ReplySpec | ReplyFunction = None,
        supports_json_schema: bool | None = None,
        supports_json_object: bool = True,
        unsupported_status: int = 400,
        api_key: str | None = None,
        model_ids: Iterable[str] = (DEFAULT_MODEL_ID,),
        family: str | None = None,
        context_size: int | None = None,
    ) -> None:
        if family is not None and family not in SERVER_FAMILIES:
            raise ValueError(f"family must be one of {SERVER_FAMILIES} or None, got {family!r}")
        if supports_json_schema is None:
            supports_json_schema = family != "llama-cpp-python"
        self.family = family
        self.context_size = context_size if context_size is not None else _DEFAULT_CONTEXT.get(family or "")
        self._lock = threading.Lock()
        self._queue: deque[ReplySpec] = deque()
        self._default: ReplySpec | ReplyFunction = default
        if callable(replies):
            if default is not None:
                raise ValueError("pass either a callback as replies or a default, not both")
            self._default = replies
        elif replies is not None:
            self._queue.extend(replies)
        self.supports_json_schema = supports_json_schema
        self.supports_json_object = supports_json_object
        self.unsupported_status = unsupported_status
        self.api_key = api_key
        self.model_ids = list(model_ids)
        self._requests: list[RecordedRequest] = []
        self._served = 0
        self._connections: set[socket.socket] = set()
        self._closing = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ScriptedLLMServer:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        if self._httpd is not None:
            return self
        if self._closing.is_set():
            raise RuntimeError("ScriptedLLMServer cannot be restarted after close()")
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"ScriptedLLMServer:{httpd.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        logger.debug("ScriptedLLMServer listening on %s", self.base_url)
        return self

    def close(self) -> None:
        """Stop serving, drop open connections and join the server thread (idempotent)."""
        self._closing.set()
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ScriptedLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.base_url if self._httpd is not None else "not running"
        return f"<ScriptedLLMServer {where} pending={self.pending} requests={self.request_count}>"

    # ------------------------------------------------------------------ addresses
    @property
    def port(self) -> int:
        """The bound TCP port (server must be started)."""
        if self._httpd is None:
            raise RuntimeError("ScriptedLLMServer is not running; call start() or use `with`")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    def env(self, model: str | None = None, api_key: str | None = None) -> dict[str, str]:
        """Environment variables pointing an ``LLM()``/openai client at this server.

        Returns ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` (plus ``OPTO_MODEL``
        when ``model`` is given); use with ``monkeypatch.setenv`` or ``os.environ.update``.
        """
        env = {
            "OPENAI_BASE_URL": self.base_url,
            "OPENAI_API_KEY": api_key or self.api_key or TEST_API_KEY,
        }
        if model is not None:
            env["OPTO_MODEL"] = model
        return env

    # ------------------------------------------------------------------ script
    def script(self, *replies: ReplySpec) -> ScriptedLLMServer:
        """Queue replies (consumed in order after those already queued)."""
        return self.add_replies(replies)

    def add_replies(self, replies: Iterable[ReplySpec]) -> ScriptedLLMServer:
        """Queue every reply of ``replies``."""
        items = list(replies)
        for item in items:
            if not callable(item):
                _to_reply(item)  # validate early, in the test's thread
        with self._lock:
            self._queue.extend(items)
        return self

    def set_default(self, reply: ReplySpec | ReplyFunction) -> ScriptedLLMServer:
        """Reply (or callback) used once the script is exhausted; ``None`` → HTTP 500."""
        with self._lock:
            self._default = reply
        return self

    def clear(self) -> None:
        """Drop queued replies and recorded requests."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()

    @property
    def pending(self) -> int:
        """Number of scripted replies not consumed yet."""
        with self._lock:
            return len(self._queue)

    # ------------------------------------------------------------------ inspection
    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of all recorded requests, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """Recorded chat-completion requests only."""
        return [r for r in self.requests if r.is_chat]

    @property
    def request_count(self) -> int:
        """Number of requests received (all endpoints)."""
        with self._lock:
            return len(self._requests)

    @property
    def last_request(self) -> RecordedRequest | None:
        """The most recent request, or ``None``."""
        with self._lock:
            return self._requests[-1] if self._requests else None

    def prompts(self) -> list[str]:
        """For each chat request, its message contents joined with newlines."""
        return [r.prompt for r in self.chat_requests]

    # ------------------------------------------------------------------ internals
    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _next_reply(self, body: dict[str, Any]) -> tuple[Reply | None, str | None]:
        """Pop the next scripted reply; returns (reply, None) or (None, error message)."""
        with self._lock:
            if self._queue:
                spec: Any = self._queue.popleft()
                self._served += 1
            elif self._default is not None:
                spec = self._default
            else:
                served = self._served
                return None, (
                    f"ScriptedLLMServer: script exhausted - all {served} scripted replies "
                    "were consumed and no default is set; queue more with server.script(...) "
                    "or pass default=..."
                )
        if callable(spec):
            try:
                spec = spec(body)
            except Exception as exc:  # surfaced to the client as a 500
                logger.exception("ScriptedLLMServer reply callback failed")
                return None, f"ScriptedLLMServer: reply callback raised {exc!r}"
        try:
            return _to_reply(spec), None
        except TypeError as exc:
            return None, f"ScriptedLLMServer: {exc}"

    def _handle(self, handler: _Handler, method: str) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length > 0 else b""
        raw_text = raw.decode("utf-8", errors="replace")
        body: Any = None
        bad_json: str | None = None
        if raw:
            try:
                body = json.loads(raw_text)
            except ValueError as exc:
                bad_json = f"request body is not valid JSON: {exc}"
        with self._lock:
            record = RecordedRequest(
                index=len(self._requests),
                method=method,
                path=parts.path,
                query=parse_qs(parts.query),
                headers={k.lower(): v for k, v in handler.headers.items()},
                body=body,
                raw_body=raw_text,
                received_at=time.time(),
            )
            self._requests.append(record)

        if bad_json is not None:
            reply = self._error_reply(400, bad_json)
        elif self.api_key is not None and not self._authorized(record.headers):
            reply = self._error_reply(401, "Incorrect API key provided.", code="invalid_api_key")
        elif method == "GET" and parts.path.rstrip("/").endswith("/models"):
            self._send_json(handler, record, 200, self._models_body())
            return
        elif method == "GET" and parts.path.rstrip("/") == "/props" and self.family == "llama.cpp":
            self._send_json(handler, record, 200, self._props_body())
            return
        elif record.is_chat:
            reply = self._chat_reply(record)
        else:
            reply = self._error_reply(404, f"Unknown endpoint {method} {parts.path}")
        self._send_reply(handler, record, reply)

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        bearer = headers.get("authorization", "")
        return bearer == f"Bearer {self.api_key}" or headers.get("api-key") == self.api_key

    def _chat_reply(self, record: RecordedRequest) -> Reply:
        body = record.body
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._error_reply(400, "'messages' is a required property", param="messages")
        rf_type = record.response_format_type
        if rf_type == "json_schema" and not self.supports_json_schema:
            refusal = self._family_format_refusal(rf_type)
            if refusal is not None:
                return refusal
            if self.family != "ollama":  # (an Ollama before 0.5 ignores it without a word)
                return self._error_reply(
                    self.unsupported_status,
                    "Invalid parameter: 'response_format' of type 'json_schema' is not supported "
                    "by this server.",
                    param="response_format",
                )
        overflow = self._context_refusal(record)
        if overflow is not None:
            return overflow
        if rf_type == "json_object" and not self.supports_json_object:
            return self._error_reply(
                self.unsupported_status,
                "Invalid parameter: 'response_format' of type 'json_object' is not supported "
                "by this server.",
                param="response_format",
            )
        reply, problem = self._next_reply(body)
        if reply is None:
            logger.warning("%s", problem)
            record.error = problem
            return self._error_reply(
                500, problem or "ScriptedLLMServer error", type_="server_error"
            )
        return reply

    def _family_format_refusal(self, rf_type: str) -> Reply | None:
        """The family's exact refusal of a response_format type it does not know."""
        if self.family == "llama-cpp-python":  # pydantic's literal error, wrapped as a 500
            body: dict[str, Any] = {
                "error": {
                    "message": _PYDANTIC_LITERAL_ERROR % rf_type,
                    "type": "internal_server_error",
                    "param": None,
                    "code": None,
                }
            }
            return Reply.raw(json.dumps(body), status=500)
        if self.family == "llama.cpp":  # llama-server builds before json_schema support
            message = (
                'response_format type must be one of "text" or "json_object", but got: ' + rf_type
            )
            body = {"error": {"code": 500, "message": message, "type": "server_error"}}
            return Reply.raw(json.dumps(body), status=500)
        if self.family == "vllm":  # vLLM before json_schema: FastAPI's validation error
            body = {
                "object": "error",
                "message": _PYDANTIC_LITERAL_ERROR % rf_type,
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            }
            return Reply.raw(json.dumps(body), status=400)
        return None

    def _context_refusal(self, record: RecordedRequest) -> Reply | None:
        """The family's exact answer to a prompt (or prompt + max_tokens) over its context."""
        ctx = self.context_size
        if ctx is None or self.family == "ollama":  # Ollama cuts the prompt, never refuses
            return None
        n = _estimate_tokens(record.prompt)
        body_in = record.body if isinstance(record.body, dict) else {}
        max_tokens = body_in.get("max_tokens") or body_in.get("max_completion_tokens")
        body: dict[str, Any]
        if self.family == "llama.cpp":
            if n < ctx:
                return None
            message = (
                f"request ({n} tokens) exceeds the available context size ({ctx} tokens), "
                "try increasing it"
            )
            body = {
                "error": {
                    "code": 400,
                    "message": message,
                    "type": "exceed_context_size_error",
                    "n_prompt_tokens": n,
                    "n_ctx": ctx,
                }
            }
        elif self.family == "llama-cpp-python":
            if n < ctx:
                return None
            message = (
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{n + (max_tokens or 0)} tokens ({n} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion."
            )
            body = {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            }
        elif self.family == "vllm":
            if n > ctx:
                message = (
                    f"This model's maximum context length is {ctx} tokens. However, your request "
                    f"has {n} input tokens. Please reduce the length of the input messages."
                )
            elif max_tokens and n + max_tokens > ctx:
                message = (
                    f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This "
                    f"model's maximum context length is {ctx} tokens and your request has {n} "
                    f"input tokens ({max_tokens} > {ctx} - {n})."
                )
            else:
                return None
            body = {"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}}
        else:
            if n <= ctx:
                return None
            message = (
                f"This model's maximum context length is {ctx} tokens. However, your messages "
                f"resulted in {n} tokens. Please reduce the length of the messages."
            )
            body = {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            }
        record.error = message
        return Reply.raw(json.dumps(body), status=400)

    def _props_body(self) -> dict[str, Any]:
        """llama-server's ``GET /props`` (the fields a client reads)."""
        return {
            "default_generation_settings": {"n_ctx": self.context_size, "params": {"n_predict": -1}},
            "total_slots": 1,
            "model_path": f"/models/{self.model_ids[0] if self.model_ids else DEFAULT_MODEL_ID}.gguf",
            "build_info": "b6000-scripted",
        }

    @staticmethod
    def _error_reply(
        status: int,
        message: str,
        *,
        type_: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> Reply:
        return Reply.error(status, message, type=type_, code=code, param=param)

    def _models_body(self) -> dict[str, Any]:
        owner = {"vllm": "vllm", "llama.cpp": "llamacpp", "llama-cpp-python": "me", "ollama": "library"}
        data: list[dict[str, Any]] = []
        for m in self.model_ids:
            entry: dict[str, Any] = {
                "id": m, "object": "model", "created": 0, "owned_by": owner.get(self.family or "", "scripted")
            }
            if self.family == "vllm":
                entry.update(root=m, parent=None, max_model_len=self.context_size)
            data.append(entry)
        return {"object": "list", "data": data}

    def _send_reply(self, handler: _Handler, record: RecordedRequest, reply: Reply) -> None:
        if reply.delay_seconds > 0 and self._closing.wait(reply.delay_seconds):
            return  # server closing: drop the request
        if reply.raw_body is not None:
            data = reply.raw_body.encode() if isinstance(reply.raw_body, str) else reply.raw_body
            record.status, record.response = reply.status, reply.raw_body
            self._write(handler, reply.status, data, reply.content_type, reply.headers)
            return
        if reply.is_error:
            status = reply.status
            message = reply.error_message or _ERROR_MESSAGES.get(status, "Internal server error.")
            record.error = record.error or message
            payload = {
                "error": {
                    "message": message,
                    "type": reply.error_type or _ERROR_TYPES.get(status, "server_error"),
                    "param": reply.error_param,
                    "code": reply.error_code,
                }
            }
            self._send_json(handler, record, status, payload, reply.headers)
            return
        body = record.body if isinstance(record.body, dict) else {}
        content = reply.content
        prompt_tokens = (
            reply.prompt_tokens
            if reply.prompt_tokens is not None
            else _estimate_tokens(record.prompt)
        )
        if self.family == "ollama" and self.context_size is not None:
            prompt_tokens = min(prompt_tokens, self.context_size)  # it kept only this much
        completion_tokens = (
            reply.completion_tokens
            if reply.completion_tokens is not None
            else _estimate_tokens(content or "")
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        model = body.get("model") or (self.model_ids[0] if self.model_ids else DEFAULT_MODEL_ID)
        completion_id = f"chatcmpl-scripted-{record.index}"
        created = int(time.time())
        if body.get("stream"):
            self._send_stream(handler, record, reply, completion_id, created, model, usage)
            return
        payload = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": usage,
            "system_fingerprint": None,
        }
        self._add_family_fields(payload, usage)
        self._send_json(handler, record, 200, payload, reply.headers)

    def _add_family_fields(self, payload: dict[str, Any], usage: dict[str, int]) -> None:
        """The fields each family adds to a chat completion (how a client can tell them apart)."""
        if self.family == "ollama":
            payload["system_fingerprint"] = "fp_ollama"
        elif self.family == "llama.cpp":
            payload["system_fingerprint"] = "b6000-scripted"
            payload["timings"] = {"prompt_n": usage["prompt_tokens"], "predicted_n": usage["completion_tokens"]}
        elif self.family == "vllm":
            payload["prompt_logprobs"] = None
            for choice in payload["choices"]:
                choice["stop_reason"] = None

    def _send_stream(
        self,
        handler: _Handler,
        record: RecordedRequest,
        reply: Reply,
        completion_id: str,
        created: int,
        model: str,
        usage: dict[str, int],
    ) -> None:
        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }

        content = reply.content or ""
        pieces = [content[i : i + 16] for i in range(0, len(content), 16)]
        events: list[dict[str, Any]] = [chunk({"role": "assistant", "content": ""}, None)]
        events += [chunk({"content": p}, None) for p in pieces]
        events.append(chunk({}, reply.finish_reason))
        options = record.body.get("stream_options") or {}
        if isinstance(options, dict) and options.get("include_usage"):
            events.append({**chunk({}, None), "choices": [], "usage": usage})
        text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        record.status, record.response = 200, {"stream": events, "usage": usage}
        self._write(handler, 200, text.encode(), "text/event-stream", reply.headers)

    def _send_json(
        self,
        handler: _Handler,
        record: RecordedRequest,
        status: int,
        payload: Any,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        record.status, record.response = status, payload
        self._write(handler, status, json.dumps(payload).encode(), "application/json", headers)

    @staticmethod
    def _write(
        handler: _Handler,
        status: int,
        data: bytes,
        content_type: str,
        headers: Mapping[str, str] | None,
    ) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(data)
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError):
            # The client gave up (e.g. its timeout fired during a scripted delay).
            handler.close_connection = True
            logger.debug("ScriptedLLMServer: client disconnected before the reply was sent")


def _scripted_llm_fixture() -> Iterator[ScriptedLLMServer]:
    """Yield a started :class:`ScriptedLLMServer` with an empty script; closed afterwards."""
    with ScriptedLLMServer() as server:
        yield server


try:  # pytest is a test-time dependency only
    import pytest as _pytest
except ImportError:  # pragma: no cover - exercised only without pytest installed
    scripted_llm = _scripted_llm_fixture
else:
    scripted_llm = _pytest.fixture(name="scripted_llm")(_scripted_llm_fixture)
