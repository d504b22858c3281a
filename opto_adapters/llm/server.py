"""What an OpenAI-compatible server says about itself: which family it is (OpenAI, vLLM,
llama.cpp's ``llama-server``, ``llama-cpp-python``, Ollama), whether a refusal means the prompt
is over its context, and how large that context is when it publishes it.

Recognised from the servers' own answers (their error bodies and the fields only they add to a
reply), never from the model name, so a renamed or proxied server is still recognised.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "FAMILIES",
    "ContextRefusal",
    "ServerFamily",
    "context_advice",
    "context_refusal",
    "estimate_prompt_tokens",
    "family_from_refusal",
    "family_from_reply",
    "family_from_url",
    "probe_context_size",
]

logger = logging.getLogger("opto_adapters.llm")

ServerFamily = Literal["openai", "vllm", "llama.cpp", "llama-cpp-python", "ollama"]
FAMILIES: tuple[str, ...] = ("openai", "vllm", "llama.cpp", "llama-cpp-python", "ollama")

CHARS_PER_TOKEN = 3.5
"""Characters per token for the context pre-check (errs towards more tokens than English
text has, ~4 characters each, so a prompt it lets through is not cut by the server)."""


def estimate_prompt_tokens(chars: int) -> int:
    """Tokens a prompt of ``chars`` characters probably takes (chars / 3.5, rounded up)."""
    return int(-(-chars // CHARS_PER_TOKEN))


# --------------------------------------------------------------------------- families
def _body_text(body: Any) -> str:
    if isinstance(body, Mapping):
        return json.dumps(body, default=str)
    return "" if body is None else str(body)


def _error_object(body: Any) -> Mapping[str, Any]:
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            return inner
    return {}


def family_from_url(url: str) -> ServerFamily | None:
    """``"openai"`` for api.openai.com; others are not told apart by their URL."""
    host = (urlsplit(url).hostname or "").lower()
    return "openai" if host == "api.openai.com" else None


def family_from_refusal(body: Any) -> ServerFamily | None:
    """The family whose error body this is, when its shape gives it away."""
    error = _error_object(body)
    kind = str(error.get("type") or "")
    if kind == "exceed_context_size_error" or "n_ctx" in error:
        return "llama.cpp"
    if kind == "BadRequestError" or (isinstance(body, Mapping) and body.get("object") == "error"):
        return "vllm"  # FastAPI's exception name as the type: vLLM's error responses
    if kind == "internal_server_error":
        return "llama-cpp-python"  # its route handler wraps every unexpected error so
    if isinstance(error.get("code"), int) and "param" not in error:
        return "llama.cpp"  # llama-server: {"code": 500, "message": ..., "type": "server_error"}
    if kind == "api_error" and error.get("code") is None and "param" in error:
        return "ollama"
    return None


def family_from_reply(reply: Any) -> ServerFamily | None:
    """The family that sent this chat completion, from the fields only it adds."""
    fingerprint = getattr(reply, "system_fingerprint", None) or ""
    if fingerprint == "fp_ollama":
        return "ollama"
    extra = getattr(reply, "model_extra", None) or {}
    if "timings" in extra:
        return "llama.cpp"  # llama-server reports its prompt/predict timings with each reply
    if "prompt_logprobs" in extra:
        return "vllm"
    choices = getattr(reply, "choices", None) or []
    if choices and "stop_reason" in (getattr(choices[0], "model_extra", None) or {}):
        return "vllm"
    return None


# --------------------------------------------------------------------------- context
_OVERFLOW_HINTS = (
    "exceed_context_size_error",
    "exceeds the available context size",
    "exceeds context size",
    "context_length_exceeded",
    "maximum context length",
    "context window",
    "max_model_len",
    "maximum model length",
)
_CONTEXT_PATTERNS = (
    re.compile(r"maximum context length is (\d+)"),
    re.compile(r"context size \((\d+) tokens\)"),
    re.compile(r"context window of (\d+)"),
    re.compile(r"maximum model length of (\d+)"),
)
_PROMPT_PATTERNS = (
    re.compile(r"request \((\d+) tokens\)"),
    re.compile(r"your request has (\d+) input tokens"),
    re.compile(r"\((\d+) in the messages"),
    re.compile(r"messages resulted in (\d+) tokens"),
    re.compile(r"prompt contains at least (\d+) input tokens"),
    re.compile(r"requested tokens \((\d+)\)"),
    re.compile(r"prompt \(length (\d+)\)"),
)
_REPLY_LIMIT = re.compile(r"'max_tokens' or 'max_completion_tokens' is too large: (\d+)")


@dataclass(frozen=True)
class ContextRefusal:
    """A server's "this does not fit my context": the numbers it gave, when it gave them."""

    prompt_tokens: int | None
    context_size: int | None
    reply_too_long: bool  # the prompt fits, the requested max_tokens on top of it does not


def _first_int(patterns: tuple[re.Pattern[str], ...], text: str) -> int | None:
    for pattern in patterns:
        match = pattern.search(text)
        if match:
            return int(match.group(1))
    return None


def context_refusal(status: int | None, body: Any, message: str) -> ContextRefusal | None:
    """A :class:`ContextRefusal` when an error answer says the request is over the context."""
    if status is not None and status >= 500 and "exceed_context_size_error" not in _body_text(body):
        return None
    text = f"{message} {_body_text(body)}".lower()
    if not any(hint in text for hint in _OVERFLOW_HINTS):
        return None
    error = _error_object(body)
    prompt = error.get("n_prompt_tokens")
    context = error.get("n_ctx")
    return ContextRefusal(
        prompt_tokens=prompt if isinstance(prompt, int) and prompt > 0 else _first_int(_PROMPT_PATTERNS, text),
        context_size=context if isinstance(context, int) and context > 0 else _first_int(_CONTEXT_PATTERNS, text),
        reply_too_long=bool(_REPLY_LIMIT.search(text)),
    )


_SERVER_FLAGS: dict[str, str] = {
    "llama.cpp": "llama-server -c N / --ctx-size N",
    "llama-cpp-python": "python -m llama_cpp.server --n_ctx N",
    "vllm": "vllm serve ... --max-model-len N",
    "ollama": "OLLAMA_CONTEXT_LENGTH=N ollama serve, or PARAMETER num_ctx N in a Modelfile",
}


def context_advice(family: str | None, *, reply_too_long: bool = False) -> str:
    """What to change when a prompt does not fit: the server's flag, or a shorter prompt."""
    if family == "openai":
        server = "use a model with a larger context"
    elif family in _SERVER_FLAGS:
        server = f"start the server with a larger context ({_SERVER_FLAGS[family]})"
    else:
        server = "start the server with a larger context (" + "; ".join(
            f"{name}: {flag}" for name, flag in _SERVER_FLAGS.items()
        ) + ")"
    send_less = (
        "or send less: fewer or shorter trainable parameters (include=/exclude=), a smaller "
        "batch_size, a smaller value_budget/feedback_budget or memory_size"
    )
    if reply_too_long:
        send_less = "or ask for a shorter reply (a smaller max_tokens), " + send_less[3:]
    return f"{server}, {send_less}"


def _root_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def probe_context_size(
    base_url: str, model: str, api_key: str | None, timeout: float
) -> tuple[int | None, ServerFamily | None]:
    """The context size the server publishes, and its family: llama-server's ``/props``
    (``n_ctx``), then vLLM's ``/v1/models`` (``max_model_len`` of ``model``).
    ``(None, None)`` when it publishes neither (OpenAI, Ollama, llama-cpp-python)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(timeout=timeout, headers=headers) as http:
        try:
            answer = http.get(_root_url(base_url) + "/props")
            if answer.status_code == 200:
                props = answer.json()
                settings = props.get("default_generation_settings") or {}
                n_ctx = props.get("n_ctx") or settings.get("n_ctx")
                if isinstance(n_ctx, int) and n_ctx > 0:
                    return n_ctx, "llama.cpp"
        except (httpx.HTTPError, ValueError, AttributeError):
            logger.debug("no /props at %s", base_url, exc_info=True)
        try:
            answer = http.get(base_url.rstrip("/") + "/models")
            if answer.status_code == 200:
                models = answer.json().get("data") or []
                for entry in models:
                    limit = entry.get("max_model_len")
                    if isinstance(limit, int) and limit > 0 and entry.get("id") in (model, None):
                        return limit, "vllm"
                limits = {e.get("max_model_len") for e in models if isinstance(e.get("max_model_len"), int)}
                if len(limits) == 1:  # one model served under another name
                    return limits.pop(), "vllm"
        except (httpx.HTTPError, ValueError, AttributeError):
            logger.debug("no /v1/models at %s", base_url, exc_info=True)
    return None, None
