"""The LLM client the optimizers use: any OpenAI-compatible endpoint, with retries, a shared
budget, a deadline and lenient JSON replies.

One idea a module: :mod:`.errors` (what can go wrong), :mod:`.budget` (usage and limits),
:mod:`.json_repair` (JSON out of a reply), :mod:`.formats` (structured output per server
family), :mod:`.server` (what a server says about itself: family, context), :mod:`.endpoint`
(configuration and the ``openai`` client, imported only when one is made), :mod:`.core`
(what both clients share: requests, retries, budget, JSON fallbacks, counters, written once
as flows that yield their I/O), :mod:`.client` (``LLM``: blocking calls) and
:mod:`.async_client` (``AsyncLLM``: the same, awaited).
"""

from .async_client import AsyncLLM
from .budget import Budget, Usage
from .client import JSON_MODES, LLM, JSONMode, JSONResult
from .core import BaseLLM
from .endpoint import DEFAULT_MODEL
from .errors import (
    AuthenticationError,
    BudgetExceeded,
    ContextOverflow,
    DeadlineExceeded,
    LLMError,
    LLMRequestError,
    LLMResponseError,
)
from .json_repair import extract_json

__all__ = [
    "DEFAULT_MODEL",
    "JSON_MODES",
    "LLM",
    "AsyncLLM",
    "AuthenticationError",
    "BaseLLM",
    "Budget",
    "BudgetExceeded",
    "ContextOverflow",
    "DeadlineExceeded",
    "JSONMode",
    "JSONResult",
    "LLMError",
    "LLMRequestError",
    "LLMResponseError",
    "Usage",
    "extract_json",
]
