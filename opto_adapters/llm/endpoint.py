"""Where the endpoint is and how to reach it: defaults, environment variables, the openai client.

``openai`` is imported here only when a client is made, so importing the library (and the
optimizers) stays cheap.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .errors import AuthenticationError

if TYPE_CHECKING:
    import openai

__all__ = [
    "DEFAULT_AZURE_API_VERSION",
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "LOCAL_PLACEHOLDER_API_KEY",
    "MODEL_ENV",
    "is_local_url",
    "make_openai_client",
]

logger = logging.getLogger("opto_adapters.llm")

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_AZURE_API_VERSION = "2024-10-21"
LOCAL_PLACEHOLDER_API_KEY = "sk-no-key-required"
MODEL_ENV = "OPTO_MODEL"


def is_local_url(url: str) -> bool:
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


def make_openai_client(
    base_url: str | None,
    api_key: str | None,
    timeout: float,
    azure_endpoint: str | None = None,
    api_version: str | None = None,
    *,
    asynchronous: bool = False,
) -> openai.OpenAI | openai.AsyncOpenAI:
    """A new ``openai.OpenAI`` (or ``AzureOpenAI``; with ``asynchronous`` their ``Async``
    twins) with its own retries off, from the arguments or ``$OPENAI_BASE_URL`` /
    ``$OPENAI_API_KEY`` (for Azure also ``$AZURE_OPENAI_API_KEY`` and ``$OPENAI_API_VERSION``).

    A local server needs no key (a placeholder is sent); a remote one without a key raises
    :class:`AuthenticationError` before anything is sent.
    """
    import openai

    if azure_endpoint:
        key = api_key or os.environ.get("AZURE_OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if not key:
            if not is_local_url(azure_endpoint):
                raise AuthenticationError(
                    f"No API key for Azure OpenAI endpoint {azure_endpoint}: pass api_key=... "
                    "or set AZURE_OPENAI_API_KEY (or OPENAI_API_KEY)."
                )
            key = LOCAL_PLACEHOLDER_API_KEY
        azure = openai.AsyncAzureOpenAI if asynchronous else openai.AzureOpenAI
        return azure(
            azure_endpoint=azure_endpoint,
            api_version=(
                api_version or os.environ.get("OPENAI_API_VERSION") or DEFAULT_AZURE_API_VERSION
            ),
            api_key=key,
            timeout=timeout,
            max_retries=0,
        )
    url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    key = api_key or os.environ.get("OPENAI_API_KEY")
    if not key:
        if not is_local_url(url):
            raise AuthenticationError(
                f"No API key for {url}: set OPENAI_API_KEY (or pass api_key=...). For a local "
                "OpenAI-compatible server (vLLM, Ollama, llama.cpp) set OPENAI_BASE_URL to its "
                "/v1 URL and OPTO_MODEL to the served model name instead."
            )
        logger.debug("no API key set; using a placeholder key for local server %s", url)
        key = LOCAL_PLACEHOLDER_API_KEY
    plain = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    return plain(base_url=url, api_key=key, timeout=timeout, max_retries=0)
